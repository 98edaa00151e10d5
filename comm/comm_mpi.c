// comm_mpi.c — the "mpi" backend: the process group's non-blocking all-reduce (MPI_Iallreduce SUM) in place on
// host memory, scaled by 1/world when it completes.
//
// Device buffers (CUDA builds, comm_bind_stream(.., 1)) are staged through a pinned host buffer per request
// slot without ever blocking the host or the compute stream:
//
//   launch: record ready on compute -> copy stream waits on ready -> copy down on the copy stream -> record down
//   test:   down not yet reached: not done (nothing blocks)
//           down reached, reduction not started: start the all-reduce on the staging buffer
//           reduction finished: scale, copy up on the compute stream (asynchronous, in its order), done
//
// so backward keeps running while a bucket is copied down and reduced, and the optimizer (later on the compute
// stream) reads the copied-up average. The next copy down into the same staging buffer waits (on the GPU) for
// the copy up that reads it.
#include <limits.h>
#include <stdlib.h>

#include "comm_impl.h"
#include "common.h"

#ifdef DDP_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

enum { PHASE_STAGING, PHASE_REDUCING, PHASE_DONE };

typedef struct mpi_req {
    world_req req;
    float *host;       // the buffer that is reduced: the user's, or the staging buffer for device memory
    int phase;
    int scaled;        // the sum is scaled (a failed copy back must not scale twice)
#ifdef DDP_HAVE_CUDA
    float *stage;      // pinned staging buffer, kept across uses of the slot
    size_t stage_cap;  // in floats
    cudaEvent_t ready; // compute stream: the gradients are written
    cudaEvent_t down;  // copy stream: the gradients are in the staging buffer
    cudaEvent_t up;    // compute stream: the average has been copied back (the staging buffer is free again)
#endif
} mpi_req;

typedef struct mpi_backend {
    mpi_req reqs[COMM_MAX_REQS];
#ifdef DDP_HAVE_CUDA
    cudaStream_t copy;  // device-to-host copies, off the compute stream (created at the first device bind)
#endif
} mpi_backend;

// ---------------------------------------------------------------------------------------------------------
// Staging (CUDA builds only)

#ifdef DDP_HAVE_CUDA
// A failed call also sets CUDA's "last error": clear it (as cuda_common.h's cudaCheck does), or the CUDA
// backend's next launch check would report this failure again under a kernel's name.
#define CUDA_TRY(c, call)                                                                                  \
    do {                                                                                                   \
        cudaError_t e__ = (call);                                                                          \
        if (e__ != cudaSuccess) {                                                                          \
            (void)cudaGetLastError();                                                                      \
            return ERR(ST_RUNTIME, "rank %d (%s): %s:%d: CUDA call %s failed: %s", (c)->info.rank,           \
                       (c)->info.host, __FILE__, __LINE__, #call, cudaGetErrorString(e__));               \
        }                                                                                                  \
    } while (0)

static int events_create(comm *c, mpi_req *q) {
    if (q->ready) return ST_OK;
    CUDA_TRY(c, cudaEventCreateWithFlags(&q->ready, cudaEventDisableTiming));
    CUDA_TRY(c, cudaEventCreateWithFlags(&q->down, cudaEventDisableTiming));
    CUDA_TRY(c, cudaEventCreateWithFlags(&q->up, cudaEventDisableTiming));
    // "up" starts out reached, so the first copy down into a new staging buffer waits for nothing.
    CUDA_TRY(c, cudaEventRecord(q->up, (cudaStream_t)c->cuda_stream));
    return ST_OK;
}

static int stage_reserve(comm *c, mpi_req *q, size_t n) {
    if (q->stage_cap >= n) return ST_OK;
    if (q->stage) {
        // The last copy up from the old buffer may still be reading it.
        CUDA_TRY(c, cudaEventSynchronize(q->up));
        CUDA_TRY(c, cudaFreeHost(q->stage));
    }
    q->stage = NULL;
    q->stage_cap = 0;
    void *p = NULL;
    CUDA_TRY(c, cudaMallocHost(&p, n * sizeof(float)));
    q->stage = p;
    q->stage_cap = n;
    return ST_OK;
}

// Copy the bucket down on the copy stream, after the compute stream has written it. Nothing waits here.
static int stage_down(comm *c, mpi_backend *b, comm_req_slot *r, mpi_req *q) {
    TRY(events_create(c, q));
    TRY(stage_reserve(c, q, r->n));
    cudaStream_t compute = (cudaStream_t)c->cuda_stream;
    CUDA_TRY(c, cudaEventRecord(q->ready, compute));
    CUDA_TRY(c, cudaStreamWaitEvent(b->copy, q->ready, 0));
    CUDA_TRY(c, cudaStreamWaitEvent(b->copy, q->up, 0));  // the previous copy up from this buffer is done
    CUDA_TRY(c, cudaMemcpyAsync(q->stage, r->buf, r->n * sizeof(float), cudaMemcpyDeviceToHost, b->copy));
    CUDA_TRY(c, cudaEventRecord(q->down, b->copy));
    q->host = q->stage;
    return ST_OK;
}

// Has the copy down arrived? (never blocks)
static int stage_arrived(comm *c, mpi_req *q, int *arrived) {
    cudaError_t e = cudaEventQuery(q->down);
    *arrived = e == cudaSuccess;
    if (e == cudaErrorNotReady) {
        (void)cudaGetLastError();
        return ST_OK;
    }
    CUDA_TRY(c, e);
    return ST_OK;
}

// Copy the average back in the compute stream's order: asynchronous from pinned memory.
static int stage_up(comm *c, comm_req_slot *r, mpi_req *q) {
    cudaStream_t compute = (cudaStream_t)c->cuda_stream;
    CUDA_TRY(c, cudaMemcpyAsync(r->buf, q->stage, r->n * sizeof(float), cudaMemcpyHostToDevice, compute));
    CUDA_TRY(c, cudaEventRecord(q->up, compute));
    return ST_OK;
}
#endif

// ---------------------------------------------------------------------------------------------------------
// Backend ops

static int reduce_start(comm *c, comm_req_slot *r, mpi_req *q) {
    TRY(world_iallreduce(c, q->host, (int)r->n, WORLD_F32, WORLD_SUM, &q->req));
    q->phase = PHASE_REDUCING;
    return ST_OK;
}

static int mpi_launch(comm *c, comm_req_slot *r) {
    if (r->n > INT_MAX)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce '%s' of %zu values: the mpi backend takes at most %d",
                   c->info.rank, c->info.host, r->label, r->n, INT_MAX);
    mpi_backend *b = c->impl;
    mpi_req *q = &b->reqs[r - c->reqs];
    r->impl = q;
    q->host = r->buf;
    q->scaled = 0;
    q->phase = PHASE_STAGING;
#ifdef DDP_HAVE_CUDA
    if (c->buffers_on_device) return stage_down(c, b, r, q);
#else
    (void)b;
#endif
    return reduce_start(c, r, q);
}

static int mpi_test(comm *c, comm_req_slot *r, int *done) {
    mpi_req *q = r->impl;
    *done = 0;
    if (q->phase == PHASE_STAGING) {
#ifdef DDP_HAVE_CUDA
        int arrived = 0;
        TRY(stage_arrived(c, q, &arrived));
        if (!arrived) return ST_OK;
#endif
        TRY(reduce_start(c, r, q));
    }
    if (q->phase == PHASE_REDUCING && !q->scaled) {
        int flag = 0;
        TRY(world_test(c, &q->req, &flag));
        if (!flag) return ST_OK;
        q->scaled = 1;
        const float scale = 1.0f / (float)c->info.world;
        float *x = q->host;
        if (c->info.world > 1)
            for (size_t i = 0; i < r->n; i++) x[i] *= scale;
    }
#ifdef DDP_HAVE_CUDA
    if (c->buffers_on_device) TRY(stage_up(c, r, q));
#endif
    q->phase = PHASE_DONE;
    *done = 1;
    return ST_OK;
}

static int mpi_bind_stream(comm *c, void *cuda_stream, int buffers_on_device) {
    (void)cuda_stream;
#ifdef DDP_HAVE_CUDA
    mpi_backend *b = c->impl;
    if (buffers_on_device && b->copy == NULL) CUDA_TRY(c, cudaStreamCreateWithFlags(&b->copy, cudaStreamNonBlocking));
    return ST_OK;
#else
    if (buffers_on_device)
        return ERR(ST_RUNTIME, "rank %d (%s): comm 'mpi' was given device buffers, but this build has no CUDA",
                   c->info.rank, c->info.host);
    return ST_OK;
#endif
}

static void mpi_destroy(comm *c) {
    mpi_backend *b = c->impl;
    if (b == NULL) return;
#ifdef DDP_HAVE_CUDA
    for (int i = 0; i < COMM_MAX_REQS; i++) {
        mpi_req *q = &b->reqs[i];
        // A request still in flight (a timed-out peer) may yet write into its staging buffer: leak that one.
        int in_flight = c->reqs[i].in_use && !c->reqs[i].done;
        // So may a copy up that has not finished (a stuck GPU): never wait for it at tear-down.
        if (q->stage && !in_flight && (!q->up || cudaEventQuery(q->up) == cudaSuccess)) cudaFreeHost(q->stage);
        if (q->ready) cudaEventDestroy(q->ready);
        if (q->down) cudaEventDestroy(q->down);
        if (q->up) cudaEventDestroy(q->up);
    }
    if (b->copy) cudaStreamDestroy(b->copy);
    (void)cudaGetLastError();
#endif
    free(b);
    c->impl = NULL;
}

static const comm_ops mpi_ops = {
    .name = "mpi",
    .caps = COMM_CAP_HOST_PROGRESS,
    .allreduce_avg_launch = mpi_launch,
    .allreduce_test = mpi_test,
    .bind_stream = mpi_bind_stream,
    .destroy = mpi_destroy,
};

int comm_mpi_create(comm *c) {
    mpi_backend *b = calloc(1, sizeof *b);
    TRY_ALLOC(b);
    c->impl = b;
    c->ops = &mpi_ops;
    return ST_OK;
}
