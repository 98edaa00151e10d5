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
    // Best effort: without it the watchdog names ranks without their hosts.
    c->hosts = calloc((size_t)ci->world, sizeof *c->hosts);
    if (c->hosts && MPI_Allgather(ci->host, sizeof *c->hosts, MPI_CHAR, c->hosts, sizeof *c->hosts, MPI_CHAR,
                                  c->world) != MPI_SUCCESS) {
        free(c->hosts);
        c->hosts = NULL;
    }
    return ST_OK;
}

static void comms_free(comm *c) {
    // Best effort: at tear-down there is nobody left to report a failure to.
    // A board read that never completed holds the window in an access epoch: freeing it would block.
    if (c->arrive_win != MPI_WIN_NULL && !c->arrive_stuck) MPI_Win_free(&c->arrive_win);
    if (c->node != MPI_COMM_NULL) MPI_Comm_free(&c->node);
    if (c->world != MPI_COMM_NULL) MPI_Comm_free(&c->world);
    free(c->hosts);
    c->hosts = NULL;
}

// ---------------------------------------------------------------------------------------------------------
// Arrival board (see comm_impl.h): collective k has been entered by rank p iff p's published count >= k.

static void arrivals_create(comm *c) {
    long long *base = NULL;
    // Best effort: without RMA the watchdog still fires; its message then cannot name the missing ranks.
    if (MPI_Win_allocate((MPI_Aint)sizeof *base, (int)sizeof *base, MPI_INFO_NULL, c->world, &base,
                         &c->arrive_win) != MPI_SUCCESS) {
        c->arrive_win = MPI_WIN_NULL;
        return;
    }
    MPI_Win_set_errhandler(c->arrive_win, MPI_ERRORS_RETURN);
    *(volatile long long *)base = 0;
    c->arrive = base;
}

// This rank enters the next collective: returns its number and publishes the count.
static long long arrive(comm *c) {
    long long k = ++c->n_coll;
    if (c->arrive) *(volatile long long *)c->arrive = k;
    return k;
}

#define ARRIVALS_READ_S 2.0   // a rank whose count cannot be read within this is reported as not answering
#define ARRIVALS_LIST_MAX 16  // ranks named in a message; then a count

static void rank_list_add(char *out, size_t n, int *listed, int rank) {
    size_t used = strlen(out);
    if (*listed < ARRIVALS_LIST_MAX && used < n)
        snprintf(out + used, n - used, "%s%d", *listed ? ", " : "", rank);
    else if (*listed == ARRIVALS_LIST_MAX && used < n)
        snprintf(out + used, n - used, ", ...");
    ++*listed;
}

// " (on host n2)", " (on hosts n2, n3)": where the listed ranks run, in the same order.
static void hosts_list_add(const comm *c, char *out, size_t n, int listed, int rank) {
    size_t used = strlen(out);
    if (!c->hosts || listed > ARRIVALS_LIST_MAX || used + 2 >= n) return;
    if (listed == ARRIVALS_LIST_MAX) {
        snprintf(out + used - 1, n - used + 1, ", ...)");
        return;
    }
    if (listed == 0) snprintf(out, n, " (on host %.40s)", c->hosts[rank]);
    else {
        if (listed == 1) {  // "host" -> "hosts"
            char *h = strstr(out, " host ");
            if (h) memmove(h + 6, h + 5, strlen(h + 5) + 1), h[5] = 's';
            used = strlen(out);
        }
        snprintf(out + used - 1, n - used + 1, ", %.40s)", c->hosts[rank]);
    }
}

// Read every rank's count (passive-target gets, which need nothing from the owner on shared memory or RDMA
// networks) and describe who has not entered collective seq. Bounded: a get that does not complete within
// ARRIVALS_READ_S leaves its rank named as not answering.
static void arrivals_describe(comm *c, long long seq, char *out, size_t n) {
    int w = c->info.world, me = c->info.rank;
    long long *vals = calloc((size_t)w, sizeof *vals);
    MPI_Request *reqs = malloc((size_t)w * sizeof *reqs);
    int ok = vals && reqs && c->arrive_win != MPI_WIN_NULL && !c->arrive_stuck &&
             MPI_Win_lock_all(MPI_MODE_NOCHECK, c->arrive_win) == MPI_SUCCESS;
    if (!ok) {
        snprintf(out, n, "which ranks did not arrive is unknown (no RMA window)");
        free(vals), free(reqs);
        return;
    }
    int pending = 0;
    for (int p = 0; p < w; p++) {
        reqs[p] = MPI_REQUEST_NULL;
        if (p == me) vals[p] = c->n_coll;
        else if (MPI_Rget(&vals[p], 1, MPI_LONG_LONG, p, 0, 1, MPI_LONG_LONG, c->arrive_win, &reqs[p]) == MPI_SUCCESS)
            pending++;
        else
            vals[p] = -1, reqs[p] = MPI_REQUEST_NULL;
    }
    double t0 = now_s();
    while (pending > 0 && now_s() - t0 < ARRIVALS_READ_S) {
        for (int p = 0; p < w; p++) {
            int flag = 0;
            if (reqs[p] != MPI_REQUEST_NULL && MPI_Test(&reqs[p], &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag)
                pending--;
        }
        if (pending > 0) sched_yield();
    }
    if (pending == 0) MPI_Win_unlock_all(c->arrive_win);
    else c->arrive_stuck = 1;
    char missing[256] = "", silent[256] = "", missing_at[1024] = "", silent_at[1024] = "";
    int n_missing = 0, n_silent = 0;
    for (int p = 0; p < w; p++) {
        if (reqs[p] != MPI_REQUEST_NULL || vals[p] < 0) {
            hosts_list_add(c, silent_at, sizeof silent_at, n_silent, p);
            rank_list_add(silent, sizeof silent, &n_silent, p);
        } else if (vals[p] < seq) {
            hosts_list_add(c, missing_at, sizeof missing_at, n_missing, p);
            rank_list_add(missing, sizeof missing, &n_missing, p);
        }
    }
    if (n_missing == 0 && n_silent == 0) snprintf(out, n, "every rank has entered it (the network or MPI is stuck)");
    int used = n_missing ? snprintf(out, n, "%s %s did not arrive%s", n_missing > 1 ? "ranks" : "rank", missing,
                                    missing_at) : 0;
    if (n_silent && used >= 0 && (size_t)used < n)
        snprintf(out + used, n - (size_t)used, "%s%s %s did not answer%s", used ? "; " : "",
                 n_silent > 1 ? "ranks" : "rank", silent, silent_at);
    free(vals), free(reqs);
}

// The watchdog's message: what timed out, where (a host collective names the last bucket launched before it,
// which carries the step), and who is missing.
static int watchdog_error(comm *c, long long seq, const char *what, int is_host) {
    char who[2200];
    arrivals_describe(c, seq, who, sizeof who);
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
    c->arrive_win = MPI_WIN_NULL;
    int st = comms_create(c);
    if (st == ST_OK) {
        g_rank = c->info.rank;
        g_world = c->info.world;
        arrivals_create(c);
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
    if (n > 0) {
        r->seq = arrive(c);
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
static int host_wait(comm *c, MPI_Request *req, long long seq, const char *what) {
    double t0 = now_s();
    for (long iter = 0;; iter++) {
        int flag = 0;
        MPI_TRY(MPI_Test(req, &flag, MPI_STATUS_IGNORE));
        if (flag) return ST_OK;
        double t = now_s();
        if (t - t0 > c->timeout_s) return watchdog_error(c, seq, what, 1);
        wait_pause(t - t0, iter);
    }
}

int comm_bcast(comm *c, void *buf, size_t bytes, int root) {
    // MPI counts are int: send big buffers in 1 GiB pieces.
    const size_t chunk = (size_t)1 << 30;
    char *p = buf;
    for (size_t off = 0; off < bytes; off += chunk) {
        size_t k = bytes - off < chunk ? bytes - off : chunk;
        MPI_Request req;
        long long seq = arrive(c);
        MPI_TRY(MPI_Ibcast(p + off, (int)k, MPI_BYTE, root, c->world, &req));
        TRY(host_wait(c, &req, seq, "broadcast"));
    }
    return ST_OK;
}

int comm_allreduce_sum_f64(comm *c, double *buf, int n) {
    MPI_Request req;
    long long seq = arrive(c);
    MPI_TRY(MPI_Iallreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, c->world, &req));
    return host_wait(c, &req, seq, "all-reduce (sum of doubles)");
}

int comm_allreduce_max_i32(comm *c, int32_t *buf, int n) {
    MPI_Request req;
    long long seq = arrive(c);
    MPI_TRY(MPI_Iallreduce(MPI_IN_PLACE, buf, n, MPI_INT32_T, MPI_MAX, c->world, &req));
    return host_wait(c, &req, seq, "all-reduce (max of int32)");
}

int comm_allgather_u64(comm *c, uint64_t value, uint64_t *all) {
    MPI_Request req;
    long long seq = arrive(c);
    MPI_TRY(MPI_Iallgather(&value, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, c->world, &req));
    return host_wait(c, &req, seq, "all-gather");
}

int comm_barrier(comm *c) {
    MPI_Request req;
    long long seq = arrive(c);
    MPI_TRY(MPI_Ibarrier(c->world, &req));
    return host_wait(c, &req, seq, "barrier");
}

int comm_agree_status(comm *c, int status, int *first_bad) {
    // One reduction for both answers: the max status, and (negated, so MAX gives MIN) the first bad rank.
    int v[2] = {status, status != ST_OK ? -c->info.rank : -INT_MAX};
    *first_bad = -1;
    MPI_Request req;
    long long seq = arrive(c);
    int rc = MPI_Iallreduce(MPI_IN_PLACE, v, 2, MPI_INT, MPI_MAX, c->world, &req);
    if (rc != MPI_SUCCESS) comm_mpi_error(rc, __FILE__, __LINE__, "MPI_Iallreduce");
    if (rc != MPI_SUCCESS || host_wait(c, &req, seq, "agreement on status") != ST_OK) {
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
