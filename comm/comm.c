// comm.c — the backend-independent part of the communication layer: request slots and the watchdog, the
// host-side collectives, agreement on errors, abort and tear-down, on top of the process group (comm_world.h:
// MPI, or one process without MPI).
//
// Every collective is non-blocking underneath and waited on with the watchdog's deadline, so a peer that never
// arrives is an error naming the collective and the missing ranks, never a hang.
#include "comm_impl.h"

#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Set-up

static int backend_check(const char *backend) {
    if (backend == NULL) return ERR(ST_INPUT, "comm: no backend given (want 'mpi' or 'nccl')");
    if (strcmp(backend, "mpi") == 0) return ST_OK;
    if (strcmp(backend, "nccl") == 0) {
#ifdef DDP_HAVE_CUDA
        return ST_OK;
#else
        return ERR(ST_INPUT, "comm 'nccl' needs a CUDA build (this build has only 'mpi')");
#endif
    }
    return ERR(ST_INPUT, "comm: unknown backend '%s' (want 'mpi' or 'nccl')", backend);
}

// This rank enters the next collective: returns its number and publishes the count.
long long comm_arrive(comm *c) {
    long long k = ++c->n_coll;
    world_publish(c, k);
    return k;
}

// The watchdog's message: what timed out, where (a host collective names the last bucket launched before it,
// which carries the step), and who is missing.
static int watchdog_error(comm *c, long long seq, const char *what, int is_host) {
    char who[600];
    world_describe_missing(c, seq, who, sizeof who);
    char after[100] = "";
    if (is_host && c->last_label[0]) snprintf(after, sizeof after, " (after all-reduce '%s')", c->last_label);
    return ERR(ST_COMM, "rank %d (%s): %s%s did not complete within %g s: %s (a peer rank may have died or be stuck)",
               c->info.rank, c->info.host, what, after, c->timeout_s, who);
}

static int backend_create(comm *c, const char *backend) {
    if (strcmp(backend, "mpi") == 0) return comm_mpi_create(c);
#ifdef DDP_HAVE_CUDA
    return comm_nccl_create(c);
#else
    return ERR(ST_INPUT, "comm 'nccl' needs a CUDA build (this build has only 'mpi')");
#endif
}

int comm_create(comm **out, const char *backend, double timeout_s) {
    *out = NULL;
    TRY(backend_check(backend));
    if (!(timeout_s > 0) || !isfinite(timeout_s))
        return ERR(ST_INPUT, "comm: watchdog timeout %g s must be a positive number of seconds", timeout_s);
    comm *c = calloc(1, sizeof *c);
    TRY_ALLOC(c);
    c->timeout_s = timeout_s;
    int st = world_open(c);
    if (st == ST_OK) {
        g_rank = c->info.rank;
        g_world = c->info.world;
        st = backend_create(c, backend);
    }
    if (st != ST_OK) {
        world_close(c);
        free(c);
        return st;
    }
    *out = c;
    return ST_OK;
}

int comm_world_init(int *argc, char ***argv) {
    int owns = 0;
    return world_init(argc, argv, &owns);
}

int comm_world_finalize(void) { return world_finalize(); }
int comm_world_is_mpi(void) { return world_has_mpi(); }

const comm_info *comm_get_info(const comm *c) { return &c->info; }
const char *comm_backend_name(const comm *c) { return c->ops->name; }
unsigned comm_caps(const comm *c) { return c->ops->caps; }

int comm_bind_stream(comm *c, void *cuda_stream, int buffers_on_device) {
    // Staging buffers and the stream are per request: changing them under one in flight would corrupt it.
    if (comm_outstanding(c) > 0)
        return ERR(ST_RUNTIME, "rank %d (%s): comm_bind_stream with %d all-reduce(s) in flight", c->info.rank,
                   c->info.host, comm_outstanding(c));
    if (c->ops->bind_stream) TRY(c->ops->bind_stream(c, cuda_stream, buffers_on_device));
    c->cuda_stream = cuda_stream;
    c->buffers_on_device = buffers_on_device != 0;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Asynchronous all-reduce: request slots and the watchdog

static int slot_get(comm *c, int req, comm_req_slot **out) {
    if (req < 0 || req >= COMM_MAX_REQS || !c->reqs[req].in_use)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce request %d is not in flight", c->info.rank, c->info.host,
                   req);
    *out = &c->reqs[req];
    return ST_OK;
}

int comm_allreduce_avg_async(comm *c, float *buf, size_t n, const char *label, int *req) {
    *req = -1;
    if (buf == NULL && n > 0)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce '%s' of %zu values on a NULL buffer", c->info.rank,
                   c->info.host, label ? label : "", n);
    int i = 0;
    while (i < COMM_MAX_REQS && c->reqs[i].in_use) i++;
    if (i == COMM_MAX_REQS)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce '%s': all %d request slots in flight (wait on some first)",
                   c->info.rank, c->info.host, label ? label : "", COMM_MAX_REQS);
    comm_req_slot *r = &c->reqs[i];
    void *impl = r->impl;  // backends may keep per-slot state (e.g. a staging buffer) across uses
    memset(r, 0, sizeof *r);
    r->impl = impl;
    r->buf = buf;
    r->n = n;
    r->t_launch = now_s();
    snprintf(r->label, sizeof r->label, "%s", label ? label : "");
    // Nothing to exchange: every rank agrees on n, so every rank skips the collective alike.
    if (n > 0) {
        r->seq = comm_arrive(c);
        snprintf(c->last_label, sizeof c->last_label, "%s", r->label);
        TRY(c->ops->allreduce_avg_launch(c, r));
    }
    r->done = n == 0;
    r->in_use = 1;
    *req = i;
    return ST_OK;
}

static int slot_test(comm *c, comm_req_slot *r, int *done) {
    if (!r->done) TRY(c->ops->allreduce_test(c, r, &r->done));
    *done = r->done;
    return ST_OK;
}

int comm_test(comm *c, int req, int *done) {
    *done = 0;
    comm_req_slot *r = NULL;
    TRY(slot_get(c, req, &r));
    return slot_test(c, r, done);
}

int comm_progress(comm *c) {
    for (int i = 0; i < COMM_MAX_REQS; i++) {
        comm_req_slot *r = &c->reqs[i];
        int done;
        if (r->in_use && !r->done) TRY(slot_test(c, r, &done));
    }
    return ST_OK;
}

int comm_outstanding(const comm *c) {
    int k = 0;
    for (int i = 0; i < COMM_MAX_REQS; i++) k += c->reqs[i].in_use;
    return k;
}

// Waiting: MPI moves a non-blocking collective on only inside our test calls, so never pause for long while
// the data is moving: spin at first, then yield between tests (free on an idle core, fair to oversubscribed
// ranks). Only a wait longer than any healthy all-reduce (a stuck peer) also sleeps, not to burn a core.
#define WAIT_SPIN_S 100e-6
#define WAIT_SLEEP_AFTER_S 1.0

static void wait_pause(double waited_s, long iter) {
    if (waited_s < WAIT_SPIN_S) return;
    if (waited_s < WAIT_SLEEP_AFTER_S || (iter & 1)) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, 50000};
    nanosleep(&ts, NULL);
}

int comm_req_marks(comm *c, int req, void **start, void **end) {
    *start = *end = NULL;
    comm_req_slot *r = NULL;
    TRY(slot_get(c, req, &r));
    if (c->ops->req_marks && r->n > 0) return c->ops->req_marks(c, r, start, end);
    return ST_OK;
}

int comm_check(comm *c) { return c->ops && c->ops->check ? c->ops->check(c) : ST_OK; }

int comm_discard(comm *c, int req) {
    comm_req_slot *r = NULL;
    TRY(slot_get(c, req, &r));
    if (c->ops->discard && r->n > 0) c->ops->discard(c, r);
    r->in_use = 0;
    return ST_OK;
}

int comm_wait(comm *c, int req) {
    comm_req_slot *r = NULL;
    TRY(slot_get(c, req, &r));
    double t0 = now_s();
    for (long iter = 0;; iter++) {
        int done;
        TRY(slot_test(c, r, &done));
        if (done) break;
        double t = now_s();
        // The slot stays in use: the backend may still write into the buffer if the peers arrive late.
        if (t - r->t_launch > c->timeout_s) {
            char what[96];
            snprintf(what, sizeof what, "all-reduce '%s'", r->label);
            return watchdog_error(c, r->seq, what, 0);
        }
        wait_pause(t - t0, iter);
    }
    r->in_use = 0;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Host-side collectives

// Blocking for the caller, but waited on like a bucket: a peer that never arrives is a watchdog error naming
// the collective and the missing ranks, never a hang.
int comm_host_wait(comm *c, world_req *r, long long seq, const char *what) {
    double t0 = now_s();
    for (long iter = 0;; iter++) {
        int done = 0;
        TRY(world_test(c, r, &done));
        if (done) return ST_OK;
        TRY(comm_check(c));
        double t = now_s();
        if (t - t0 > c->timeout_s) return watchdog_error(c, seq, what, 1);
        wait_pause(t - t0, iter);
    }
}

int comm_bcast(comm *c, void *buf, size_t bytes, int root) {
    // Counts are int: send big buffers in 1 GiB pieces.
    const size_t chunk = (size_t)1 << 30;
    char *p = buf;
    for (size_t off = 0; off < bytes; off += chunk) {
        size_t k = bytes - off < chunk ? bytes - off : chunk;
        world_req r;
        long long seq = comm_arrive(c);
        TRY(world_ibcast(c, p + off, (int)k, root, &r));
        TRY(comm_host_wait(c, &r, seq, "broadcast"));
    }
    return ST_OK;
}

static int host_allreduce(comm *c, void *buf, int n, world_type t, world_op op, const char *what) {
    world_req r;
    long long seq = comm_arrive(c);
    TRY(world_iallreduce(c, buf, n, t, op, &r));
    return comm_host_wait(c, &r, seq, what);
}

int comm_allreduce_sum_f64(comm *c, double *buf, int n) {
    return host_allreduce(c, buf, n, WORLD_F64, WORLD_SUM, "all-reduce (sum of doubles)");
}

int comm_allreduce_max_f64(comm *c, double *buf, int n) {
    return host_allreduce(c, buf, n, WORLD_F64, WORLD_MAX, "all-reduce (max of doubles)");
}

int comm_allreduce_max_i32(comm *c, int32_t *buf, int n) {
    return host_allreduce(c, buf, n, WORLD_I32, WORLD_MAX, "all-reduce (max of int32)");
}

int comm_allgather_u64(comm *c, uint64_t value, uint64_t *all) {
    world_req r;
    long long seq = comm_arrive(c);
    TRY(world_iallgather(c, &value, all, 1, WORLD_U64, &r));
    return comm_host_wait(c, &r, seq, "all-gather");
}

int comm_barrier(comm *c) {
    world_req r;
    long long seq = comm_arrive(c);
    TRY(world_ibarrier(c, &r));
    return comm_host_wait(c, &r, seq, "barrier");
}

int comm_agree_status(comm *c, int status, int *first_bad) {
    // One reduction for both answers: the max status, and (negated, so MAX gives MIN) the first bad rank.
    int32_t v[2] = {status, status != ST_OK ? -c->info.rank : -INT_MAX};
    *first_bad = -1;
    world_req r;
    long long seq = comm_arrive(c);
    int st = world_iallreduce(c, v, 2, WORLD_I32, WORLD_MAX, &r);
    if (st != ST_OK || comm_host_wait(c, &r, seq, "agreement on status") != ST_OK) {
        // Without agreement we cannot know the others' status: report our own failure to communicate.
        *first_bad = status != ST_OK ? c->info.rank : -1;
        return ST_COMM;
    }
    if (v[0] != ST_OK) *first_bad = -v[1];
    return v[0];
}

// ---------------------------------------------------------------------------------------------------------
// Tear-down

void comm_abort(comm *c, int code) {
    (void)c;  // the whole job must go even if c is half-built
    world_abort(code);
}

void comm_destroy(comm *c) {
    if (c == NULL) return;
    if (c->ops && c->ops->destroy) c->ops->destroy(c);
    world_close(c);
    free(c);
}

int comm_finalize(comm *c) {
    comm_destroy(c);
    // main initialises the group itself and still hands tear-down to us, so finalise whoever initialised it.
    return world_finalize();
}
