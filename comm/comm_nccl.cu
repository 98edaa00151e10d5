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
#include "comm_impl.h"  // first: C linkage for comm.h, comm_world.h and common.h

#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_common.h"

typedef struct nccl_req {
    cudaEvent_t ready;  // on the compute stream: the gradients are written
    cudaEvent_t done;   // on the comm stream: the average is in place
    cudaEvent_t t0, t1; // timing (comm_req_marks): the comm stream starts / ends this all-reduce
} nccl_req;

typedef struct nccl_backend {
    int device;
    ncclComm_t comm;
    cudaStream_t stream;   // comm stream (ours)
    cudaStream_t compute;  // the backend's compute stream (bound, not ours)
    int bound;             // comm_bind_stream was called (compute may be the legacy stream, NULL)
    int failed;            // an asynchronous NCCL error was seen: abort instead of destroy
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

static void nccl_destroy(comm *c) {
    nccl_backend *b = (nccl_backend *)c->impl;
    if (b == NULL) return;
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
static int async_error_check(comm *c, nccl_backend *b, const char *label) {
    if (b->comm == NULL) return ST_OK;  // still being set up: nccl_settle watches that
    ncclResult_t async = ncclSuccess;
    ncclCheck(ncclCommGetAsyncError(b->comm, &async));
    if (async == ncclSuccess || async == ncclInProgress) return ST_OK;
    b->failed = 1;
    const char *detail = ncclGetLastError(b->comm);
    return ERR(ST_COMM, "rank %d (%s): %s%sNCCL reported an asynchronous error: %s%s%s", c->info.rank, c->info.host,
               label ? label : "", label ? ": " : "", ncclGetErrorString(async), detail && *detail ? ": " : "",
               detail ? detail : "");
}

static int nccl_check(comm *c) { return async_error_check(c, (nccl_backend *)c->impl, NULL); }

// Launches captured into a discarded graph never ran: there is nothing of theirs to undo.
static void nccl_discard(comm *c, comm_req_slot *r) { (void)c, (void)r; }

// After a communication failure: kernels of collectives waiting for a dead peer spin until the communicator is
// aborted, and a device sync or cudaFree would wait for them. Abort first; destroy then has nothing to do.
static void nccl_stop(comm *c) {
    nccl_backend *b = (nccl_backend *)c->impl;
    if (b == NULL || b->comm == NULL) return;
    ncclCommAbort(b->comm);
    b->comm = NULL;
    b->failed = 1;
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
    const ncclResult_t rc = ncclAllReduce(r->buf, r->buf, r->n, ncclFloat, ncclAvg, b->comm, b->stream);
    if (rc == ncclInProgress) TRY(nccl_settle(c, b->comm, label));  // enqueued in the background
    else ncclCheck(rc);
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

static const comm_ops nccl_ops = {
    .name = "nccl",
    .caps = COMM_CAP_CAPTURE,
    .allreduce_avg_launch = nccl_launch,
    .allreduce_test = nccl_test,
    .req_marks = nccl_req_marks,
    .bind_stream = nccl_bind_stream,
    .check = nccl_check,
    .discard = nccl_discard,
    .stop = nccl_stop,
    .destroy = nccl_destroy,
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
