// comm.c — the backend-independent part of the communication layer: MPI set-up, request slots and the
// watchdog, host-side collectives, agreement on errors, abort and tear-down.
//
// Every MPI call on our communicators returns a code (MPI_ERRORS_RETURN) so a failure becomes a status with
// rank, host and file:line, and main decides whether to abort the job.
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
// Errors

// Argument-class errors are our own bugs (ST_RUNTIME); anything else means the job's communication failed.
static int mpi_error_status(int rc) {
    int cls = MPI_ERR_OTHER;
    if (MPI_Error_class(rc, &cls) != MPI_SUCCESS) return ST_COMM;
    switch (cls) {
    case MPI_ERR_ARG: case MPI_ERR_BUFFER: case MPI_ERR_COUNT: case MPI_ERR_TYPE: case MPI_ERR_ROOT:
    case MPI_ERR_OP: case MPI_ERR_COMM: case MPI_ERR_REQUEST: case MPI_ERR_RANK: case MPI_ERR_NO_MEM:
        return ST_RUNTIME;
    default:
        return ST_COMM;
    }
}

int comm_mpi_error(int rc, const char *file, int line, const char *call) {
    char text[MPI_MAX_ERROR_STRING] = "unknown MPI error";
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error code %d", rc);
    // Name only the function: the argument list is in the source at file:line.
    int name_len = (int)strcspn(call, "(");
    return err_set(mpi_error_status(rc), file, line, "rank %d (%s): %s:%d: MPI call %.*s failed: %s", g_rank,
                   g_host, file, line, name_len, call, text);
}

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

static void host_name(char *out, size_t size) {
    char name[MPI_MAX_PROCESSOR_NAME] = "";
    int len = 0;
    if (MPI_Get_processor_name(name, &len) != MPI_SUCCESS || len <= 0) {
        if (gethostname(name, sizeof name) != 0) snprintf(name, sizeof name, "unknown-host");
        name[sizeof name - 1] = '\0';
    }
    snprintf(out, size, "%s", name);
}

static int comms_create(comm *c) {
    MPI_TRY(MPI_Comm_dup(MPI_COMM_WORLD, &c->world));
    MPI_TRY(MPI_Comm_set_errhandler(c->world, MPI_ERRORS_RETURN));
    comm_info *ci = &c->info;
    MPI_TRY(MPI_Comm_rank(c->world, &ci->rank));
    MPI_TRY(MPI_Comm_size(c->world, &ci->world));
    MPI_TRY(MPI_Comm_split_type(c->world, MPI_COMM_TYPE_SHARED, ci->rank, MPI_INFO_NULL, &c->node));
    MPI_TRY(MPI_Comm_set_errhandler(c->node, MPI_ERRORS_RETURN));
    MPI_TRY(MPI_Comm_rank(c->node, &ci->local_rank));
    MPI_TRY(MPI_Comm_size(c->node, &ci->local_world));
    return ST_OK;
}

static void comms_free(comm *c) {
    // Best effort: at tear-down there is nobody left to report a failure to.
    if (c->node != MPI_COMM_NULL) MPI_Comm_free(&c->node);
    if (c->world != MPI_COMM_NULL) MPI_Comm_free(&c->world);
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
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (!inited || finalized) return ERR(ST_RUNTIME, "comm_create: MPI is not initialised (call comm_init)");

    comm *c = calloc(1, sizeof *c);
    TRY_ALLOC(c);
    c->world = c->node = MPI_COMM_NULL;
    c->timeout_s = timeout_s;
    host_name(c->info.host, sizeof c->info.host);
    snprintf(g_host, sizeof g_host, "%s", c->info.host);
    int st = comms_create(c);
    if (st == ST_OK) {
        g_rank = c->info.rank;
        g_world = c->info.world;
        st = backend_create(c, backend);
    }
    if (st != ST_OK) {
        comms_free(c);
        free(c);
        return st;
    }
    *out = c;
    return ST_OK;
}

int comm_init(comm **out, int *argc, char ***argv, const char *backend, double timeout_s) {
    *out = NULL;
    int inited = 0, owns = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        // One thread calls MPI; FUNNELED leaves room for helper threads (BLAS) that never touch it.
        int provided = 0;
        if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return ERR(ST_RUNTIME, "rank ? (%s): MPI_Init_thread failed", g_host);
        owns = 1;
    }
    // On failure MPI stays initialised: the caller may still report and MPI_Abort/MPI_Finalize.
    TRY(comm_create(out, backend, timeout_s));
    (*out)->owns_mpi = owns;
    return ST_OK;
}

const comm_info *comm_get_info(const comm *c) { return &c->info; }
const char *comm_backend_name(const comm *c) { return c->ops->name; }

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
    if (n > 0) TRY(c->ops->allreduce_avg_launch(c, r));
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
        if (t - r->t_launch > c->timeout_s)
            return ERR(ST_COMM,
                       "rank %d (%s): all-reduce '%s' did not complete within %g s (a peer rank may have died or be "
                       "stuck)",
                       c->info.rank, c->info.host, r->label, c->timeout_s);
        wait_pause(t - t0, iter);
    }
    r->in_use = 0;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Host-side collectives

int comm_bcast(comm *c, void *buf, size_t bytes, int root) {
    // MPI counts are int: send big buffers in 1 GiB pieces.
    const size_t chunk = (size_t)1 << 30;
    char *p = buf;
    for (size_t off = 0; off < bytes; off += chunk) {
        size_t k = bytes - off < chunk ? bytes - off : chunk;
        MPI_TRY(MPI_Bcast(p + off, (int)k, MPI_BYTE, root, c->world));
    }
    return ST_OK;
}

int comm_allreduce_sum_f64(comm *c, double *buf, int n) {
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, c->world));
    return ST_OK;
}

int comm_allreduce_max_i32(comm *c, int32_t *buf, int n) {
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_INT32_T, MPI_MAX, c->world));
    return ST_OK;
}

int comm_allgather_u64(comm *c, uint64_t value, uint64_t *all) {
    MPI_TRY(MPI_Allgather(&value, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, c->world));
    return ST_OK;
}

int comm_barrier(comm *c) {
    MPI_TRY(MPI_Barrier(c->world));
    return ST_OK;
}

int comm_agree_status(comm *c, int status, int *first_bad) {
    // One reduction for both answers: the max status, and (negated, so MAX gives MIN) the first bad rank.
    int v[2] = {status, status != ST_OK ? -c->info.rank : -INT_MAX};
    *first_bad = -1;
    int rc = MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_INT, MPI_MAX, c->world);
    if (rc != MPI_SUCCESS) {
        // Without agreement we cannot know the others' status: report our own failure to communicate.
        comm_mpi_error(rc, __FILE__, __LINE__, "MPI_Allreduce");
        *first_bad = status != ST_OK ? c->info.rank : -1;
        return ST_COMM;
    }
    if (v[0] != ST_OK) *first_bad = -v[1];
    return v[0];
}

// ---------------------------------------------------------------------------------------------------------
// Tear-down

void comm_abort(comm *c, int code) {
    (void)c;  // MPI_COMM_WORLD, not our dup: the whole job must go even if c is half-built
    fflush(stdout);
    fflush(stderr);
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
    _exit(code);
}

void comm_destroy(comm *c) {
    if (c == NULL) return;
    if (c->ops && c->ops->destroy) c->ops->destroy(c);
    comms_free(c);
    free(c);
}

int comm_finalize(comm *c) {
    comm_destroy(c);
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    // main initialises MPI itself and still hands tear-down to us, so finalise whoever initialised it.
    if (inited && !finalized && MPI_Finalize() != MPI_SUCCESS)
        return ERR(ST_RUNTIME, "rank %d (%s): MPI_Finalize failed", g_rank, g_host);
    return ST_OK;
}
