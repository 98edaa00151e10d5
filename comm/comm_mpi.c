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
//
// Lane 1 (comm_allreduce_avg_async_lane) is the flat all-reduce on the world's second communicator
// (world_iallreduce_lane): staging and compression are the same; only the communicator that matches it differs.
//
// Compressed requests (comm_set_compress) reduce a 16-bit copy instead: when the reduction starts, the float32
// values (the user's, or the staged ones), divided by the world size, are cast into a wire buffer per slot --
// bfloat16 values, or fp16 in scaled blocks (comm_half.h) -- which MPI sums with a user-defined operator; when
// it completes, the sum is cast back into the float32 buffer (nothing to scale: the values were pre-divided).
//
// bf16 requests (comm_allreduce_avg_bf16_async) are bf16 already: no cast, the transport sums the caller's 16-bit
// buffer in place with the same operator (flat, or the three stages below), and the sum, decoded, times 1/world
// goes into the float32 output. Staged, the 2n bytes go down into the staging buffer (sized for n floats), are
// summed there, decoded in place into n floats (from the end: value i's 2 bytes lie inside the 4 it becomes, or
// after them), and copied up to the output as a float32 request's average is.
//
// Hierarchical requests (comm_set_hierarchy grouped the ranks by node) run three stages instead of the one
// all-reduce, on the same buffer (float32, or the 16-bit wire values with the same operator):
//
//   node reduce (MPI_Ireduce to the node's leader) -> leaders' all-reduce (leaders only) -> node broadcast
//
// MPI needs the collectives of a communicator started in one order on all its ranks, but when a rank's own
// previous stage completes is timing. So each stage has its own communicator (the node's reduce and broadcast
// are two) and starts in launch order: request k starts stage s only when its stage s-1 has completed here and
// request k-1 has started stage s (hier_pump walks the requests in launch order at every test). Every rank then
// starts every communicator's collectives in bucket order, whatever the timing. (So hierarchical requests have no
// lane 1: comm.c launches them all on lane 0, whose launch order is one on every rank.) Rounding: float32 sums in MPI's
// order within the node and among the leaders, scaled by 1/world at the end (flat: one sum, then the same
// scale); compressed, the cast of x/world to 16 bits and one rounding to 16 bits per addition in the two sums
// (the broadcast copies).
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "comm_half.h"
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
    void *wire;        // compressed requests: the 16-bit values on the wire, kept across uses of the slot
    uint16_t *src16;   // bf16 requests: the values summed in place (the caller's, or the staging buffer)
    // hierarchical requests
    int hier;          // in the chain of stages (until done)
    int step;          // STAGE_*: the stage this request is in
    int started;       // that stage has been started (or skipped: the leaders' stage on other ranks)
    int skipped;
    long long ord;     // its number among hierarchical requests in launch order (the same on every rank)
    size_t wire_cap;   // in bytes
#ifdef DDP_HAVE_CUDA
    float *stage;      // pinned staging buffer, kept across uses of the slot
    size_t stage_cap;  // in floats
    cudaEvent_t ready; // compute stream: the gradients are written
    cudaEvent_t down;  // copy stream: the gradients are in the staging buffer
    cudaEvent_t up;    // compute stream: the average has been copied back (the staging buffer is free again)
#endif
} mpi_req;

enum { STAGE_NODE_REDUCE, STAGE_LEADERS, STAGE_NODE_BCAST, N_STAGES };

typedef struct mpi_backend {
    mpi_req reqs[COMM_MAX_REQS];
    long long hier_launched;            // hierarchical requests launched
    long long stage_started[N_STAGES];  // how many of them (the first ones, in launch order) started each stage
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
    const void *src = r->src16 ? (const void *)r->src16 : (const void *)r->buf;
    const size_t bytes = r->n * (r->src16 ? sizeof(uint16_t) : sizeof(float));
    CUDA_TRY(c, cudaMemcpyAsync(q->stage, src, bytes, cudaMemcpyDeviceToHost, b->copy));
    CUDA_TRY(c, cudaEventRecord(q->down, b->copy));
    q->host = q->stage;
    q->src16 = r->src16 ? (uint16_t *)q->stage : NULL;
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
// The values summed: float32, or 16 bits on the wire

static int wire_reserve(mpi_req *q, size_t bytes) {
    if (q->wire_cap >= bytes) return ST_OK;
    void *p = realloc(q->wire, bytes);
    TRY_ALLOC(p);
    q->wire = p;
    q->wire_cap = bytes;
    return ST_OK;
}

// Compressed requests: cast q->host / world into the wire buffer (bfloat16 values, or scaled fp16 blocks).
static int wire_encode(comm *c, comm_req_slot *r, mpi_req *q) {
    if (r->src16) return ST_OK;  // bf16 already: summed where it is
    const float inv = 1.0f / (float)c->info.world;
    const float *x = q->host;
    if (r->compress == COMM_COMPRESS_BF16) {
        TRY(wire_reserve(q, r->n * sizeof(uint16_t)));
        uint16_t *h = q->wire;
        for (size_t i = 0; i < r->n; i++) h[i] = half_bf16_from_f32(x[i] * inv);
        return ST_OK;
    }
    const size_t nb = half_blocks(r->n);
    TRY(wire_reserve(q, nb * sizeof(half_block)));
    half_block *b = q->wire;
    for (size_t k = 0; k < nb; k++) {
        const size_t off = k * HALF_BLOCK, len = r->n - off < HALF_BLOCK ? r->n - off : HALF_BLOCK;
        half_block_encode(&b[k], x + off, len, inv);
    }
    return ST_OK;
}

// What the transport sums: the float32 values, or the 16-bit ones (the wire buffer's, or a bf16 request's own; the
// count in their units).
static void wire_view(comm_req_slot *r, mpi_req *q, void **buf, int *n, world_type *t) {
    if (r->compress == COMM_COMPRESS_NONE) *buf = q->host, *n = (int)r->n, *t = WORLD_F32;
    else if (r->compress == COMM_COMPRESS_BF16)
        *buf = r->src16 ? (void *)q->src16 : q->wire, *n = (int)r->n, *t = WORLD_BF16;
    else *buf = q->wire, *n = (int)half_blocks(r->n), *t = WORLD_F16_BLOCKS;
}

// bf16 requests: x[i] = bf16 h[i] · scale, i from n-1 down to 0, so that x may be h itself (the staging buffer):
// value i's bytes [2i, 2i+2) lie in [4i, 4i+4) or after it. memcpy, because the two views of one buffer alias.
static void bf16_decode_scaled(const void *h, void *x, size_t n, float scale) {
    for (size_t i = n; i-- > 0;) {
        uint16_t v;
        memcpy(&v, (const char *)h + i * sizeof v, sizeof v);
        const float f = half_bf16_to_f32(v) * scale;
        memcpy((char *)x + i * sizeof f, &f, sizeof f);
    }
}

// The reduced 16-bit values back into the float32 buffer: already the average, or (bf16 requests) the sum.
static void reduce_finish_compressed(comm *c, comm_req_slot *r, mpi_req *q) {
    float *x = q->host;
    if (r->src16) {
        bf16_decode_scaled(q->src16, x, r->n, 1.0f / (float)c->info.world);
        return;
    }
    if (r->compress == COMM_COMPRESS_BF16) {
        const uint16_t *h = q->wire;
        for (size_t i = 0; i < r->n; i++) x[i] = half_bf16_to_f32(h[i]);
        return;
    }
    const half_block *b = q->wire;
    for (size_t k = 0; k * HALF_BLOCK < r->n; k++) {
        const size_t off = k * HALF_BLOCK, len = r->n - off < HALF_BLOCK ? r->n - off : HALF_BLOCK;
        half_block_decode(&b[k], x + off, len);
    }
}

// The flat all-reduce: one sum over the world.
static int reduce_start(comm *c, comm_req_slot *r, mpi_req *q) {
    if (r->compress != COMM_COMPRESS_NONE) TRY(wire_encode(c, r, q));
    void *buf;
    int n;
    world_type t;
    wire_view(r, q, &buf, &n, &t);
    TRY(world_iallreduce_lane(c, r->lane, buf, n, t, WORLD_SUM, &q->req));
    q->phase = PHASE_REDUCING;
    return ST_OK;
}

// The sum is complete: the average into the float32 values (and, staged, back to the device). Then done.
static int reduce_finish(comm *c, comm_req_slot *r, mpi_req *q) {
    if (!q->scaled) {
        q->scaled = 1;
        const float scale = 1.0f / (float)c->info.world;
        float *x = q->host;
        if (r->compress != COMM_COMPRESS_NONE)
            reduce_finish_compressed(c, r, q);
        else if (c->info.world > 1)
            for (size_t i = 0; i < r->n; i++) x[i] *= scale;
    }
#ifdef DDP_HAVE_CUDA
    if (c->buffers_on_device) TRY(stage_up(c, r, q));
#endif
    q->phase = PHASE_DONE;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Hierarchical requests: stages started in launch order (see the top of the file)

static int stage_start(comm *c, comm_req_slot *r, mpi_req *q) {
    if (q->step == STAGE_NODE_REDUCE && r->compress != COMM_COMPRESS_NONE) TRY(wire_encode(c, r, q));
    void *buf;
    int n;
    world_type t;
    wire_view(r, q, &buf, &n, &t);
    q->skipped = 0;
    switch (q->step) {
    case STAGE_NODE_REDUCE: return world_ireduce_node(c, buf, n, t, &q->req);
    case STAGE_LEADERS:
        if (c->nodes.node_rank != 0) q->skipped = 1;  // leaders only
        return q->skipped ? ST_OK : world_iallreduce_leaders(c, buf, n, t, &q->req);
    default: return world_ibcast_node(c, buf, n, t, &q->req);
    }
}

// Move one request on as far as it goes now: start its next stage when its turn has come, test it, finish.
static int hier_advance(comm *c, comm_req_slot *r, mpi_req *q) {
    mpi_backend *b = c->impl;
    if (q->phase == PHASE_STAGING) {
#ifdef DDP_HAVE_CUDA
        int arrived = 1;  // host buffers: nothing was staged (and a CUDA build may run where no GPU is)
        if (c->buffers_on_device) TRY(stage_arrived(c, q, &arrived));
        if (!arrived) return ST_OK;
#endif
        q->phase = PHASE_REDUCING;
    }
    while (q->phase == PHASE_REDUCING) {
        if (!q->started) {
            if (b->stage_started[q->step] != q->ord) return ST_OK;  // an earlier request starts this stage first
            TRY(stage_start(c, r, q));
            q->started = 1;
            b->stage_started[q->step]++;
        }
        int flag = q->skipped;
        if (!flag) TRY(world_test(c, &q->req, &flag));
        if (!flag) return ST_OK;
        q->started = 0;
        if (++q->step == N_STAGES) {
            q->hier = 0;
            TRY(reduce_finish(c, r, q));
        }
    }
    return ST_OK;
}

// Every hierarchical request in flight, moved on in launch order (a later one may wait on an earlier one's start).
static int hier_pump(comm *c) {
    mpi_backend *b = c->impl;
    int idx[COMM_MAX_REQS], k = 0;
    for (int i = 0; i < COMM_MAX_REQS; i++) {
        if (!b->reqs[i].hier) continue;
        int j = k++;  // insertion by ord: a handful of buckets
        while (j > 0 && b->reqs[idx[j - 1]].ord > b->reqs[i].ord) idx[j] = idx[j - 1], j--;
        idx[j] = i;
    }
    for (int j = 0; j < k; j++) TRY(hier_advance(c, &c->reqs[idx[j]], &b->reqs[idx[j]]));
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Backend ops

static int mpi_launch(comm *c, comm_req_slot *r) {
    if (r->n > INT_MAX)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce '%s' of %zu values: the mpi backend takes at most %d",
                   c->info.rank, c->info.host, r->label, r->n, INT_MAX);
    mpi_backend *b = c->impl;
    mpi_req *q = &b->reqs[r - c->reqs];
    r->impl = q;
    q->host = r->buf;
    q->src16 = r->src16;
    q->scaled = 0;
    q->phase = PHASE_STAGING;
    q->hier = r->hier;
    if (q->hier) {
        q->ord = b->hier_launched++;
        q->step = STAGE_NODE_REDUCE;
        q->started = q->skipped = 0;
    }
#ifdef DDP_HAVE_CUDA
    if (c->buffers_on_device) TRY(stage_down(c, b, r, q));
    if (c->buffers_on_device && !q->hier) return ST_OK;
#endif
    return q->hier ? hier_pump(c) : reduce_start(c, r, q);
}

static int mpi_test(comm *c, comm_req_slot *r, int *done) {
    mpi_req *q = r->impl;
    *done = 0;
    if (r->hier) {
        TRY(hier_pump(c));
        *done = q->phase == PHASE_DONE;
        return ST_OK;
    }
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
    }
    TRY(reduce_finish(c, r, q));
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
    // A reduction still in flight (a timed-out peer) may yet write into its wire buffer: leak that one.
    for (int i = 0; i < COMM_MAX_REQS; i++)
        if (!(c->reqs[i].in_use && !c->reqs[i].done)) free(b->reqs[i].wire);
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
    .caps = COMM_CAP_HOST_PROGRESS | COMM_CAP_COMPRESS16 | COMM_CAP_LANES,
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
