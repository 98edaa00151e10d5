// comm_nccl.cu — the "nccl" backend: ncclAllReduce(ncclAvg) in place on device buffers, on a high-priority
// comm stream of its own, ordered after the compute stream by events (llm.c style):
//
//   launch: record ready on compute -> comm stream waits on ready -> ncclAllReduce on comm -> record done on comm
//   test:   compute stream waits on done, report done at once
//
// The host never blocks on the GPU: "done" means the all-reduce is enqueued and everything later on the compute
// stream (the optimizer) runs after it. The sequence is a fork/join of streams through events, so it can be
// captured into the training step's CUDA graph. One process per GPU: device = local rank.
//
// The communicator is non-blocking (ncclConfig_t.blocking = 0): its creation, a collective that NCCL enqueues in
// the background (ncclInProgress) and its tear-down are polled with the watchdog's deadline, so a peer that
// never joins is an error (exit 4) naming this rank and host, never a hang; asynchronous errors (a peer that
// died while a replayed graph runs) are polled in every bounded wait through comm_check.
//
// Compressed requests (comm_set_compress) run, all on the comm stream: [fp16: the bucket's largest |x| into a
// device scalar, ncclAllReduce(ncclMax) of it, so that every rank uses the scale 2^k of comm_half.h's
// half_scale_exp] -> a kernel casts x / world (· 2^k) into a 16-bit buffer of the slot -> ncclAllReduce(ncclSum)
// with ncclBfloat16 / ncclFloat16 (NCCL sums in float32 and rounds to 16 bits at each hop) -> a kernel casts the
// sum (· 2^-k) back into x. Still stream work only: capturable, and the host never waits.
//
// bf16 requests (comm_allreduce_avg_bf16_async) skip the first cast: the same ncclBfloat16 sum runs in place on the
// caller's 16-bit buffer, and a kernel writes the sum · 1/world into the float32 output. They need no buffer of the
// slot, so nothing is ever allocated for them, inside a capture or out.
//
// Hierarchical requests (comm_set_hierarchy grouped the ranks by node) enqueue, on the comm stream in launch
// order, ncclReduce to the node's leader on a node communicator -> ncclAllReduce among the leaders on theirs ->
// ncclBroadcast on the node communicator. Float32 reduces with a pre-multiplied sum (ncclRedOpCreatePreMulSum,
// 1/world: the average taken once, before the first addition); 16-bit requests send their cast values (already
// divided by world) through the same three calls with ncclSum. Both communicators are split from the world's
// (ncclCommSplit) when the hierarchy is set, so every rank's NCCL calls follow one stream order.
//
// No COMM_CAP_LANES: comm.c launches lane 1's all-reduces (comm_allreduce_avg_async_lane) as lane 0's, on the one
// communicator and stream. The trainer never tests NCCL during backward, so its launches follow the program's
// order on every rank anyway (PowerSGD's Q after backward, src/train_ddp.c).
#include "comm_impl.h"  // first: C linkage for comm.h, comm_world.h and common.h

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_half.h"
#include "cuda_common.h"

typedef struct nccl_req {
    cudaEvent_t ready;  // on the compute stream: the gradients are written
    cudaEvent_t done;   // on the comm stream: the average is in place
    cudaEvent_t t0, t1; // timing (comm_req_marks): the comm stream starts / ends this all-reduce
    void *wire;         // compressed requests: the 16-bit values (device), kept across uses of the slot
    size_t wire_cap;    // in values
    float *max_abs;     // fp16: the bucket's largest |x| over all ranks (device scalar)
} nccl_req;

// ---------------------------------------------------------------------------------------------------------
// Kernels: the casts of compressed requests (grid-stride loops)

// Largest |x[i]| as the bits of a non-negative float (those order as unsigned ints; a NaN's lie above Inf's).
__global__ void max_abs_kernel(const float *x, size_t n, unsigned int *out) {
    unsigned int m = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        m = max(m, __float_as_uint(fabsf(x[i])));
    for (int d = 16; d > 0; d >>= 1) m = max(m, __shfl_down_sync(0xffffffffu, m, d));
    if ((threadIdx.x & 31) == 0) atomicMax(out, m);
}

__global__ void to_bf16_kernel(const float *x, size_t n, float pre, __nv_bfloat16 *y) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i] * pre);
}

// post: 1 when the values were divided before the sum, 1/world for a bf16 request's plain sum.
__global__ void from_bf16_kernel(const __nv_bfloat16 *y, size_t n, float post, float *x) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __bfloat162float(y[i]) * post;
}

// max_abs: the largest |x| over all ranks, from which every rank takes the same scale 2^k.
__global__ void to_f16_kernel(const float *x, size_t n, float pre, const float *max_abs, __half *y) {
    const float s = ldexpf(pre, half_scale_exp(*max_abs));
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(x[i] * s);
}

__global__ void from_f16_kernel(const __half *y, size_t n, const float *max_abs, float *x) {
    const float s = ldexpf(1.0f, -half_scale_exp(*max_abs));
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = __half2float(y[i]) * s;
}

static unsigned int grid_for(size_t n) {
    const size_t blocks = (n + 255) / 256;
    return (unsigned int)(blocks < 1024 ? blocks : 1024);
}

typedef struct nccl_backend {
    int device;
    ncclComm_t comm;
    cudaStream_t stream;   // comm stream (ours)
    cudaStream_t compute;  // the backend's compute stream (bound, not ours)
    int bound;             // comm_bind_stream was called (compute may be the legacy stream, NULL)
    int failed;            // an asynchronous NCCL error was seen: abort instead of destroy
    ncclComm_t node;       // hierarchical: this rank's node (NULL when flat)
    ncclComm_t leaders;    // hierarchical: the nodes' leaders (NULL on the other ranks, and when flat)
    ncclRedOp_t node_avg;  // on node: the sum of x · (1/world)
    int node_avg_made;
    nccl_req reqs[COMM_MAX_REQS];
} nccl_backend;

// ---------------------------------------------------------------------------------------------------------
// Set-up

// Local checks and resources: enough GPUs, the device, the comm stream and the events.
static int local_setup(comm *c, nccl_backend *b) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();
        count = 0;
    }
    if (c->info.local_world > count)
        return ERR(ST_INPUT,
                   "comm=nccl needs one GPU per rank: %d ranks on host %s but %d GPU%s (run at most one rank per GPU)",
                   c->info.local_world, c->info.host, count, count == 1 ? "" : "s");
    b->device = c->info.local_rank;
    cudaCheck(cudaSetDevice(b->device));
    int least = 0, greatest = 0;
    cudaCheck(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    // High priority: the all-reduce kernels get SMs ahead of the backward kernels they overlap with.
    cudaCheck(cudaStreamCreateWithPriority(&b->stream, cudaStreamNonBlocking, greatest));
    for (int i = 0; i < COMM_MAX_REQS; i++) {
        cudaCheck(cudaEventCreateWithFlags(&b->reqs[i].ready, cudaEventDisableTiming));
        cudaCheck(cudaEventCreateWithFlags(&b->reqs[i].done, cudaEventDisableTiming));
        cudaCheck(cudaEventCreateWithFlags(&b->reqs[i].t0, cudaEventDefault));
        cudaCheck(cudaEventCreateWithFlags(&b->reqs[i].t1, cudaEventDefault));
    }
    return ST_OK;
}

// Every rank learns whether every other could set up, before anyone enters a collective that would wait
// forever for a rank that gave up.
static int agree_setup(comm *c, int st, const char *what) {
    int first_bad = -1;
    const int agreed = comm_agree_status(c, st, &first_bad);
    if (agreed == ST_OK) return ST_OK;
    if (first_bad < 0) return agreed;  // the agreement itself failed: local (the job is aborted)
    if (st == ST_OK)
        ERR(agreed, "rank %d (%s): comm=nccl: %s failed on rank %d", c->info.rank, c->info.host, what, first_bad);
    err_mark_collective(st != ST_OK);
    return agreed;
}

// Rank 0 makes the unique id; its status travels with it so that a failure there stops every rank.
typedef struct id_msg {
    int status;
    ncclUniqueId id;
} id_msg;

static int unique_id_share(comm *c, ncclUniqueId *id) {
    id_msg msg;
    memset(&msg, 0, sizeof msg);
    if (c->info.rank == 0) {
        ncclResult_t rc = ncclGetUniqueId(&msg.id);
        msg.status = rc == ncclSuccess ? ST_OK : ST_RUNTIME;
        if (rc != ncclSuccess)
            ERR(ST_RUNTIME, "rank 0 (%s): ncclGetUniqueId failed: %s", c->info.host, ncclGetErrorString(rc));
    }
    TRY(comm_bcast(c, &msg, sizeof msg, 0));
    if (msg.status != ST_OK) {
        if (c->info.rank != 0)
            ERR(msg.status, "rank %d (%s): comm=nccl: rank 0 could not create the NCCL id", c->info.rank, c->info.host);
        err_mark_collective(c->info.rank == 0);
        return msg.status;
    }
    *id = msg.id;
    return ST_OK;
}

// Wait until the non-blocking communicator has finished what it is doing in the background (creation, an
// enqueue, finalisation), bounded by the watchdog's timeout. ST_COMM on a timeout or an error.
static int nccl_settle(comm *c, ncclComm_t nc, const char *what) {
    const double t0 = now_s();
    for (long iter = 0;; iter++) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t rc = ncclCommGetAsyncError(nc, &state);
        if (rc != ncclSuccess) state = rc;
        if (state == ncclSuccess) return ST_OK;
        if (state != ncclInProgress) {
            const char *detail = ncclGetLastError(nc);
            return ERR(ST_COMM, "rank %d (%s): %s failed: %s%s%s", c->info.rank, c->info.host, what,
                       ncclGetErrorString(state), detail && *detail ? ": " : "", detail ? detail : "");
        }
        if (now_s() - t0 > c->timeout_s)
            return ERR(ST_COMM, "rank %d (%s): %s did not complete within %g s (a peer rank may have died or be "
                                "stuck; parallel.comm_timeout_s)",
                       c->info.rank, c->info.host, what, c->timeout_s);
        if (iter > 100) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
    }
}

static int nccl_setup(comm *c, nccl_backend *b) {
    TRY(agree_setup(c, local_setup(c, b), "GPU set-up"));
    ncclUniqueId id;
    TRY(unique_id_share(c, &id));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t nc = NULL;
    const ncclResult_t rc = ncclCommInitRankConfig(&nc, c->info.world, id, c->info.rank, &config);
    if (rc != ncclSuccess && rc != ncclInProgress) {
        if (nc) ncclCommAbort(nc);
        return ERR(rc == ncclRemoteError || rc == ncclSystemError ? ST_COMM : ST_RUNTIME,
                   "rank %d (%s): ncclCommInitRankConfig failed: %s", c->info.rank, c->info.host,
                   ncclGetErrorString(rc));
    }
    const int st = nccl_settle(c, nc, "NCCL communicator set-up (ncclCommInitRankConfig)");
    if (st != ST_OK) {
        ncclCommAbort(nc);  // also ends the set-up still running in the background
        return st;
    }
    b->comm = nc;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Tear-down

// Wait (bounded by the watchdog timeout) for the comm stream to drain; 0 when it did not.
static int comm_stream_drain(comm *c, nccl_backend *b) {
    const double t0 = now_s();
    for (;;) {
        const cudaError_t e = cudaStreamQuery(b->stream);
        if (e == cudaSuccess) return 1;
        if (e != cudaErrorNotReady) {
            (void)cudaGetLastError();
            return 0;
        }
        if (now_s() - t0 > c->timeout_s) return 0;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

// A child communicator (node, leaders): destroyed when healthy and idle, else aborted (as the world's below).
static void sub_comm_end(comm *c, ncclComm_t *nc, int healthy) {
    if (*nc == NULL) return;
    ncclResult_t async = ncclSuccess;
    healthy = healthy && ncclCommGetAsyncError(*nc, &async) == ncclSuccess &&
              (async == ncclSuccess || async == ncclInProgress);
    if (healthy) {
        const ncclResult_t rc = ncclCommFinalize(*nc);
        healthy = (rc == ncclSuccess || rc == ncclInProgress) && nccl_settle(c, *nc, "NCCL communicator tear-down") == ST_OK;
    }
    if (healthy) ncclCommDestroy(*nc);
    else ncclCommAbort(*nc);
    *nc = NULL;
}

static void nccl_destroy(comm *c) {
    nccl_backend *b = (nccl_backend *)c->impl;
    if (b == NULL) return;
    {
        const int healthy = !b->failed && (!b->stream || comm_stream_drain(c, b));
        if (b->node_avg_made && b->node && healthy) ncclRedOpDestroy(b->node_avg, b->node);
        b->node_avg_made = 0;
        sub_comm_end(c, &b->leaders, healthy);
        sub_comm_end(c, &b->node, healthy);
    }
    if (b->comm) {
        ncclResult_t async = ncclSuccess;
        int healthy = !b->failed && ncclCommGetAsyncError(b->comm, &async) == ncclSuccess &&
                      (async == ncclSuccess || async == ncclInProgress);
        // A collective still waiting for a dead peer would make ncclCommDestroy wait forever: abort it.
        if (healthy && b->stream) healthy = comm_stream_drain(c, b);
        // Non-blocking: finalise (flushes outstanding work, in the background), then destroy what is idle.
        if (healthy) {
            const ncclResult_t rc = ncclCommFinalize(b->comm);
            healthy = (rc == ncclSuccess || rc == ncclInProgress) &&
                      nccl_settle(c, b->comm, "NCCL communicator tear-down") == ST_OK;
        }
        if (healthy)
            ncclCommDestroy(b->comm);
        else
            ncclCommAbort(b->comm);
    }
    for (int i = 0; i < COMM_MAX_REQS; i++) {
        if (b->reqs[i].ready) cudaEventDestroy(b->reqs[i].ready);
        if (b->reqs[i].done) cudaEventDestroy(b->reqs[i].done);
        if (b->reqs[i].t0) cudaEventDestroy(b->reqs[i].t0);
        if (b->reqs[i].t1) cudaEventDestroy(b->reqs[i].t1);
        if (b->reqs[i].wire) cudaFree(b->reqs[i].wire);
        if (b->reqs[i].max_abs) cudaFree(b->reqs[i].max_abs);
    }
    if (b->stream) cudaStreamDestroy(b->stream);
    (void)cudaGetLastError();
    free(b);
    c->impl = NULL;
}

// ---------------------------------------------------------------------------------------------------------
// Backend ops

static int nccl_bind_stream(comm *c, void *cuda_stream, int buffers_on_device) {
    nccl_backend *b = (nccl_backend *)c->impl;
    if (!buffers_on_device)
        return ERR(ST_INPUT, "rank %d (%s): comm=nccl needs the gradients in GPU memory (backend=cuda); use comm=mpi "
                             "with backend=cpu",
                   c->info.rank, c->info.host);
    // NULL is CUDA's legacy default stream: tools that work on it (bench_allreduce) may bind it.
    b->compute = (cudaStream_t)cuda_stream;
    b->bound = 1;
    return ST_OK;
}

// label: what was being done when the error was seen ("all-reduce 'step 3 bucket 0'"), or NULL.
static int async_error_check_on(comm *c, nccl_backend *b, ncclComm_t nc, const char *label) {
    if (nc == NULL) return ST_OK;  // still being set up (nccl_settle watches that), or not used
    ncclResult_t async = ncclSuccess;
    ncclCheck(ncclCommGetAsyncError(nc, &async));
    if (async == ncclSuccess || async == ncclInProgress) return ST_OK;
    b->failed = 1;
    const char *detail = ncclGetLastError(nc);
    return ERR(ST_COMM, "rank %d (%s): %s%sNCCL reported an asynchronous error: %s%s%s", c->info.rank, c->info.host,
               label ? label : "", label ? ": " : "", ncclGetErrorString(async), detail && *detail ? ": " : "",
               detail ? detail : "");
}

static int async_error_check(comm *c, nccl_backend *b, const char *label) {
    TRY(async_error_check_on(c, b, b->comm, label));
    TRY(async_error_check_on(c, b, b->node, label));
    return async_error_check_on(c, b, b->leaders, label);
}

static int nccl_check(comm *c) { return async_error_check(c, (nccl_backend *)c->impl, NULL); }

// Launches captured into a discarded graph never ran: there is nothing of theirs to undo.
static void nccl_discard(comm *c, comm_req_slot *r) { (void)c, (void)r; }

// After a communication failure: kernels of collectives waiting for a dead peer spin until the communicator is
// aborted, and a device sync or cudaFree would wait for them. Abort first; destroy then has nothing to do.
static void nccl_stop(comm *c) {
    nccl_backend *b = (nccl_backend *)c->impl;
    if (b == NULL) return;
    if (b->leaders) ncclCommAbort(b->leaders);
    if (b->node) ncclCommAbort(b->node);
    b->leaders = b->node = NULL;
    b->node_avg_made = 0;
    if (b->comm == NULL) return;
    ncclCommAbort(b->comm);
    b->comm = NULL;
    b->failed = 1;
}

// The result of an NCCL call on the non-blocking communicator: ncclInProgress is enqueued in the background.
static int nccl_enqueued_on(comm *c, ncclComm_t nc, ncclResult_t rc, const char *label) {
    if (rc == ncclInProgress) return nccl_settle(c, nc, label);
    ncclCheck(rc);
    return ST_OK;
}

static int nccl_enqueued(comm *c, nccl_backend *b, ncclResult_t rc, const char *label) {
    return nccl_enqueued_on(c, b->comm, rc, label);
}

// The hierarchical sum of buf[0..n) in place on the comm stream: reduce to the node's leader (node_op), sum
// among the leaders, broadcast from the leader.
static int hier_chain(comm *c, nccl_backend *b, void *buf, size_t n, ncclDataType_t t, ncclRedOp_t node_op,
                      const char *label) {
    cudaStream_t s = b->stream;
    TRY(nccl_enqueued_on(c, b->node, ncclReduce(buf, buf, n, t, node_op, 0, b->node, s), label));
    if (b->leaders) TRY(nccl_enqueued_on(c, b->leaders, ncclAllReduce(buf, buf, n, t, ncclSum, b->leaders, s), label));
    return nccl_enqueued_on(c, b->node, ncclBroadcast(buf, buf, n, t, 0, b->node, s), label);
}

// The sum of the 16-bit values (already divided by world, or a bf16 request's own): flat, or through the node's
// chain.
static int sum16(comm *c, nccl_backend *b, comm_req_slot *r, void *y, ncclDataType_t t, const char *label) {
    if (r->hier) return hier_chain(c, b, y, r->n, t, ncclSum, label);
    return nccl_enqueued(c, b, ncclAllReduce(y, y, r->n, t, ncclSum, b->comm, b->stream), label);
}

// The slot's 16-bit buffer (and fp16's scalar), grown outside a capture only: the eager first step sizes them.
static int wire_reserve(comm *c, comm_req_slot *r, nccl_req *q, int capturing) {
    if (q->wire_cap >= r->n && q->max_abs) return ST_OK;
    if (capturing)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce '%s': its 16-bit buffer must grow to %zu values inside a "
                               "CUDA graph capture", c->info.rank, c->info.host, r->label, r->n);
    if (q->wire) cudaCheck(cudaFree(q->wire));  // (waits for the device: the old one may still be in use)
    q->wire = NULL;
    q->wire_cap = 0;
    cudaCheck(cudaMalloc(&q->wire, r->n * sizeof(uint16_t)));
    q->wire_cap = r->n;
    if (!q->max_abs) cudaCheck(cudaMalloc((void **)&q->max_abs, sizeof(float)));
    return ST_OK;
}

// Cast, reduce in 16 bits, cast back: on the comm stream, after it has waited for the compute stream. bf16
// requests start from their own 16-bit values, sum them where they are and scale on the way back.
static int allreduce_compressed(comm *c, nccl_backend *b, comm_req_slot *r, nccl_req *q, int capturing,
                                const char *label) {
    const float pre = 1.0f / (float)c->info.world;
    const unsigned int grid = grid_for(r->n);
    cudaStream_t s = b->stream;
    if (r->src16) {
        __nv_bfloat16 *y = (__nv_bfloat16 *)r->src16;
        TRY(sum16(c, b, r, y, ncclBfloat16, label));
        from_bf16_kernel<<<grid, 256, 0, s>>>(y, r->n, pre, r->buf);
        cudaCheckLaunch();
        return ST_OK;
    }
    TRY(wire_reserve(c, r, q, capturing));
    if (r->compress == COMM_COMPRESS_BF16) {
        __nv_bfloat16 *y = (__nv_bfloat16 *)q->wire;
        to_bf16_kernel<<<grid, 256, 0, s>>>(r->buf, r->n, pre, y);
        cudaCheckLaunch();
        TRY(sum16(c, b, r, y, ncclBfloat16, label));
        from_bf16_kernel<<<grid, 256, 0, s>>>(y, r->n, 1.0f, r->buf);
        cudaCheckLaunch();
        return ST_OK;
    }
    __half *y = (__half *)q->wire;
    cudaCheck(cudaMemsetAsync(q->max_abs, 0, sizeof(float), s));
    max_abs_kernel<<<grid, 256, 0, s>>>(r->buf, r->n, (unsigned int *)q->max_abs);
    cudaCheckLaunch();
    TRY(nccl_enqueued(c, b, ncclAllReduce(q->max_abs, q->max_abs, 1, ncclFloat, ncclMax, b->comm, s), label));
    to_f16_kernel<<<grid, 256, 0, s>>>(r->buf, r->n, pre, q->max_abs, y);
    cudaCheckLaunch();
    TRY(sum16(c, b, r, y, ncclFloat16, label));
    from_f16_kernel<<<grid, 256, 0, s>>>(y, r->n, q->max_abs, r->buf);
    cudaCheckLaunch();
    return ST_OK;
}

static int nccl_launch(comm *c, comm_req_slot *r) {
    nccl_backend *b = (nccl_backend *)c->impl;
    if (!b->bound)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce '%s': comm=nccl has no compute stream (comm_bind_stream first)",
                   c->info.rank, c->info.host, r->label);
    char label[96];
    snprintf(label, sizeof label, "all-reduce '%s'", r->label);
    TRY(async_error_check(c, b, label));
    nccl_req *q = &b->reqs[r - c->reqs];
    r->impl = q;
    cudaCheck(cudaEventRecord(q->ready, b->compute));
    cudaCheck(cudaStreamWaitEvent(b->stream, q->ready, 0));
    // Timing events: inside a capture they must be event-record nodes (External), or they would only be
    // dependencies of the graph and never recorded at replay.
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    cudaCheck(cudaStreamIsCapturing(b->stream, &cap));
    const unsigned flags = cap == cudaStreamCaptureStatusActive ? cudaEventRecordExternal : cudaEventRecordDefault;
    cudaCheck(cudaEventRecordWithFlags(q->t0, b->stream, flags));
    if (r->compress != COMM_COMPRESS_NONE) {
        TRY(allreduce_compressed(c, b, r, q, cap == cudaStreamCaptureStatusActive, label));
    } else if (r->hier) {
        TRY(hier_chain(c, b, r->buf, r->n, ncclFloat, b->node_avg, label));
    } else {
        const ncclResult_t rc = ncclAllReduce(r->buf, r->buf, r->n, ncclFloat, ncclAvg, b->comm, b->stream);
        TRY(nccl_enqueued(c, b, rc, label));
    }
    cudaCheck(cudaEventRecordWithFlags(q->t1, b->stream, flags));
    cudaCheck(cudaEventRecord(q->done, b->stream));
    return ST_OK;
}

static int nccl_req_marks(comm *c, comm_req_slot *r, void **start, void **end) {
    (void)c;
    const nccl_req *q = (const nccl_req *)r->impl;
    *start = (void *)q->t0;
    *end = (void *)q->t1;
    return ST_OK;
}

static int nccl_test(comm *c, comm_req_slot *r, int *done) {
    nccl_backend *b = (nccl_backend *)c->impl;
    nccl_req *q = (nccl_req *)r->impl;
    *done = 0;
    char label[96];
    snprintf(label, sizeof label, "all-reduce '%s'", r->label);
    TRY(async_error_check(c, b, label));
    // Join: the compute stream (the optimizer next) waits for the average; the host does not.
    cudaCheck(cudaStreamWaitEvent(b->compute, q->done, 0));
    *done = 1;
    return ST_OK;
}

// Split the node and leader communicators from the world's (collective over it, in the background: settled
// with the watchdog's deadline), and make the node's pre-multiplied sum.
static int nccl_hierarchy_start(comm *c) {
    nccl_backend *b = (nccl_backend *)c->impl;
    const world_nodes *n = &c->nodes;
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t node = NULL, leaders = NULL;
    ncclResult_t rc = ncclCommSplit(b->comm, n->node, n->node_rank, &node, &config);
    if (rc != ncclSuccess && rc != ncclInProgress)
        return ERR(ST_COMM, "rank %d (%s): ncclCommSplit (node %d) failed: %s", c->info.rank, c->info.host, n->node,
                   ncclGetErrorString(rc));
    TRY(nccl_settle(c, b->comm, "NCCL node communicator (ncclCommSplit)"));
    if (node) b->node = node;
    if (node) TRY(nccl_settle(c, node, "NCCL node communicator (ncclCommSplit)"));
    rc = ncclCommSplit(b->comm, n->node_rank == 0 ? 0 : NCCL_SPLIT_NOCOLOR, n->node, &leaders, &config);
    if (rc != ncclSuccess && rc != ncclInProgress)
        return ERR(ST_COMM, "rank %d (%s): ncclCommSplit (leaders) failed: %s", c->info.rank, c->info.host,
                   ncclGetErrorString(rc));
    TRY(nccl_settle(c, b->comm, "NCCL leaders' communicator (ncclCommSplit)"));
    if (leaders) b->leaders = leaders;
    if (leaders) TRY(nccl_settle(c, leaders, "NCCL leaders' communicator (ncclCommSplit)"));
    if (b->node == NULL || (n->node_rank == 0) != (b->leaders != NULL))
        return ERR(ST_RUNTIME, "rank %d (%s): ncclCommSplit gave no %s communicator", c->info.rank, c->info.host,
                   b->node == NULL ? "node" : "leaders'");
    float inv = 1.0f / (float)c->info.world;
    ncclCheck(ncclRedOpCreatePreMulSum(&b->node_avg, &inv, ncclFloat, ncclScalarHostImmediate, b->node));
    b->node_avg_made = 1;
    return ST_OK;
}

static const comm_ops nccl_ops = {
    .name = "nccl",
    .caps = COMM_CAP_CAPTURE | COMM_CAP_COMPRESS16,
    .allreduce_avg_launch = nccl_launch,
    .allreduce_test = nccl_test,
    .req_marks = nccl_req_marks,
    .bind_stream = nccl_bind_stream,
    .check = nccl_check,
    .discard = nccl_discard,
    .stop = nccl_stop,
    .destroy = nccl_destroy,
    .hierarchy_start = nccl_hierarchy_start,
};

int comm_nccl_create(comm *c) {
    nccl_backend *b = (nccl_backend *)calloc(1, sizeof *b);
    TRY_ALLOC(b);
    c->impl = b;
    c->ops = &nccl_ops;
    const int st = nccl_setup(c, b);
    if (st != ST_OK) {
        nccl_destroy(c);
        c->ops = NULL;
        return st;
    }
    return ST_OK;
}
