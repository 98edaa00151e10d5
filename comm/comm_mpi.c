// comm_mpi.c — the "mpi" backend: MPI_Iallreduce(SUM) in place, scaled by 1/world when it completes.
//
// Device buffers (CUDA builds, comm_bind_stream(.., 1)) are staged through a pinned host buffer per request
// slot: copied down after the compute stream has produced them, reduced on the host, copied back up.
#include <limits.h>
#include <stdlib.h>

#include "comm_impl.h"
#include "common.h"

#ifdef DDP_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

typedef struct mpi_req {
    MPI_Request req;
    float *host;       // the buffer MPI reduces: the user's, or the staging buffer for device memory
    float *stage;      // pinned staging buffer (CUDA builds), kept across uses of the slot
    size_t stage_cap;  // in floats
    int scaled;        // MPI finished and the sum is scaled (a failed copy back must not scale twice)
} mpi_req;

typedef struct mpi_backend {
    mpi_req reqs[COMM_MAX_REQS];
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

static int stage_reserve(comm *c, mpi_req *q, size_t n) {
    if (q->stage_cap >= n) return ST_OK;
    if (q->stage) CUDA_TRY(c, cudaFreeHost(q->stage));
    q->stage = NULL;
    q->stage_cap = 0;
    void *p = NULL;
    CUDA_TRY(c, cudaMallocHost(&p, n * sizeof(float)));
    q->stage = p;
    q->stage_cap = n;
    return ST_OK;
}

// The compute stream wrote the gradients: copy them down in its order, then wait so MPI reads final values.
static int stage_down(comm *c, comm_req_slot *r, mpi_req *q) {
    TRY(stage_reserve(c, q, r->n));
    cudaStream_t s = (cudaStream_t)c->cuda_stream;
    CUDA_TRY(c, cudaMemcpyAsync(q->stage, r->buf, r->n * sizeof(float), cudaMemcpyDeviceToHost, s));
    CUDA_TRY(c, cudaStreamSynchronize(s));
    q->host = q->stage;
    return ST_OK;
}

// From pinned memory cudaMemcpy returns only when the data is on the device.
static int stage_up(comm *c, comm_req_slot *r, mpi_req *q) {
    CUDA_TRY(c, cudaMemcpy(r->buf, q->stage, r->n * sizeof(float), cudaMemcpyHostToDevice));
    return ST_OK;
}
#endif

// ---------------------------------------------------------------------------------------------------------
// Backend ops

static int mpi_launch(comm *c, comm_req_slot *r) {
    if (r->n > INT_MAX)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce '%s' of %zu values: the mpi backend takes at most %d",
                   c->info.rank, c->info.host, r->label, r->n, INT_MAX);
    mpi_backend *b = c->impl;
    mpi_req *q = &b->reqs[r - c->reqs];
    r->impl = q;
    q->req = MPI_REQUEST_NULL;
    q->host = r->buf;
    q->scaled = 0;
#ifdef DDP_HAVE_CUDA
    if (c->buffers_on_device) TRY(stage_down(c, r, q));
#endif
    MPI_TRY(MPI_Iallreduce(MPI_IN_PLACE, q->host, (int)r->n, MPI_FLOAT, MPI_SUM, c->world, &q->req));
    return ST_OK;
}

static int mpi_test(comm *c, comm_req_slot *r, int *done) {
    mpi_req *q = r->impl;
    *done = 0;
    if (!q->scaled) {
        int flag = 0;
        MPI_TRY(MPI_Test(&q->req, &flag, MPI_STATUS_IGNORE));
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
    *done = 1;
    return ST_OK;
}

static int mpi_bind_stream(comm *c, void *cuda_stream, int buffers_on_device) {
    (void)cuda_stream;
#ifdef DDP_HAVE_CUDA
    (void)c;
    (void)buffers_on_device;
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
        // A request still in flight (a timed-out peer) may yet write into its staging buffer: leak that one.
        int in_flight = c->reqs[i].in_use && !c->reqs[i].done;
        if (b->reqs[i].stage && !in_flight) cudaFreeHost(b->reqs[i].stage);
    }
#endif
    free(b);
    c->impl = NULL;
}

static const comm_ops mpi_ops = {
    .name = "mpi",
    .allreduce_avg_launch = mpi_launch,
    .allreduce_test = mpi_test,
    .bind_stream = mpi_bind_stream,
    .destroy = mpi_destroy,
};

int comm_mpi_create(comm *c) {
    mpi_backend *b = calloc(1, sizeof *b);
    TRY_ALLOC(b);
    for (int i = 0; i < COMM_MAX_REQS; i++) b->reqs[i].req = MPI_REQUEST_NULL;
    c->impl = b;
    c->ops = &mpi_ops;
    return ST_OK;
}
