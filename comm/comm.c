// comm.c — the backend-independent part of the communication layer: request slots and the watchdog, the
// host-side collectives, agreement on errors, abort and tear-down, on top of the process group (comm_world.h:
// MPI, or one process without MPI).
//
// Every collective is non-blocking underneath and waited on with the watchdog's deadline, so a peer that never
// arrives is an error naming the collective and the missing ranks, never a hang.
#include "comm_impl.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Set-up

// This rank enters the next collective: returns its number and publishes the count.
//
// Lane 1's all-reduces (comm_allreduce_avg_async_lane) are numbered here too, in the order this rank launches
// them, and that order among lane 0's collectives is each rank's own. The trainer launches the same collectives on
// every rank in a step, lane 1's included, and waits for all of them before the step ends, so the counts agree
// again at every step's end: a rank stuck in an earlier step is always named. Within a step a count may run ahead
// of or behind the others' by lane 1's launches so far; the missing-rank message may then name a rank that is only
// late on the other lane, or say that every rank has entered the collective. The label (which all-reduce, which
// step) stays exact.
long long comm_arrive(comm *c) {
    long long k = ++c->n_coll;
    world_publish(c, k);
    return k;
}

// The watchdog's message: what timed out, where (a host collective names the last bucket launched before it,
// which carries the step), and who is missing.
static int watchdog_error(comm *c, long long seq, const char *what, int is_host, double timeout_s) {
    char who[2200];
    world_describe_missing(c, seq, who, sizeof who);
    char after[100] = "";
    if (is_host && c->last_label[0]) snprintf(after, sizeof after, " (after all-reduce '%s')", c->last_label);
    return ERR(ST_COMM, "rank %d (%s): %s%s did not complete within %g s: %s (a peer rank may have died or be stuck)",
               c->info.rank, c->info.host, what, after, timeout_s, who);
}

int comm_open(comm **out, double timeout_s) {
    *out = NULL;
    if (!(timeout_s > 0) || !isfinite(timeout_s))
        return ERR(ST_INPUT, "comm: watchdog timeout %g s must be a positive number of seconds", timeout_s);
    comm *c = calloc(1, sizeof *c);
    TRY_ALLOC(c);
    c->timeout_s = timeout_s;
    // Creating communicators is a blocking collective: a rank that never gets here must not hold the others.
    comm_deadline_arm(timeout_s, "creating the communicators (MPI_Comm_dup, MPI_Comm_split_type, MPI_Win_allocate)");
    int st = world_open(c);
    comm_deadline_disarm();
    if (st != ST_OK) {
        world_close(c);
        free(c);
        return st;
    }
    g_rank = c->info.rank;
    g_world = c->info.world;
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
const char *comm_backend_name(const comm *c) { return c->ops ? c->ops->name : "none"; }
unsigned comm_caps(const comm *c) { return c->ops ? c->ops->caps : 0; }

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

const char *comm_compress_name(int mode) {
    return mode == COMM_COMPRESS_BF16 ? "bf16" : mode == COMM_COMPRESS_FP16 ? "fp16" : "none";
}

int comm_get_compress(const comm *c) { return c->compress; }

int comm_set_compress(comm *c, int mode) {
    if (mode != COMM_COMPRESS_NONE && mode != COMM_COMPRESS_BF16 && mode != COMM_COMPRESS_FP16)
        return ERR(ST_RUNTIME, "rank %d (%s): comm_set_compress: unknown mode %d", c->info.rank, c->info.host, mode);
    if (mode != COMM_COMPRESS_NONE && !(comm_caps(c) & COMM_CAP_COMPRESS16))
        return ERR(ST_INPUT, "comm '%s' cannot send 16-bit gradients (compress=%s)", comm_backend_name(c),
                   comm_compress_name(mode));
    // Each request keeps the format it was launched with; the ranks must switch at the same point of their
    // programs (the trainer does it at start-up), so that every all-reduce has one format on all of them.
    c->compress = mode;
    return ST_OK;
}

// src16: a bf16 request's values (comm_allreduce_avg_bf16_async; compress is then bf16), or NULL.
static int allreduce_launch(comm *c, float *buf, uint16_t *src16, size_t n, const char *label, int compress, int hier,
                            int lane, int *req) {
    *req = -1;
    if (c->stopped)
        return ERR(ST_COMM, "rank %d (%s): all-reduce '%s' after the communicator was stopped by an earlier failure",
                   c->info.rank, c->info.host, label ? label : "");
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
    r->src16 = src16;
    r->n = n;
    r->compress = compress;
    r->hier = hier;
    r->lane = lane;
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

int comm_allreduce_avg_async(comm *c, float *buf, size_t n, const char *label, int *req) {
    return allreduce_launch(c, buf, NULL, n, label, c->compress, c->hier, 0, req);
}

int comm_allreduce_avg_bf16_async(comm *c, uint16_t *wire, float *out, size_t n, const char *label, int *req) {
    *req = -1;
    if (!(comm_caps(c) & COMM_CAP_COMPRESS16))
        return ERR(ST_INPUT, "comm '%s' cannot send 16-bit gradients (all-reduce '%s' of bf16 values)",
                   comm_backend_name(c), label ? label : "");
    if (wire == NULL && n > 0)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce '%s' of %zu bf16 values from a NULL buffer", c->info.rank,
                   c->info.host, label ? label : "", n);
    return allreduce_launch(c, out, wire, n, label, COMM_COMPRESS_BF16, c->hier, 0, req);
}

int comm_lanes(const comm *c) { return (comm_caps(c) & COMM_CAP_LANES) && !c->hier ? 2 : 1; }

int comm_allreduce_avg_async_lane(comm *c, int lane, float *buf, size_t n, const char *label, int *req) {
    *req = -1;
    if (lane < 0 || lane >= COMM_LANES)
        return ERR(ST_RUNTIME, "rank %d (%s): all-reduce '%s' on lane %d (want 0 to %d)", c->info.rank, c->info.host,
                   label ? label : "", lane, COMM_LANES - 1);
    // Without lanes apart, lane 1 is lane 0 (comm.h): the backend never sees it.
    return allreduce_launch(c, buf, NULL, n, label, c->compress, c->hier, comm_lanes(c) > 1 ? lane : 0, req);
}

// ---------------------------------------------------------------------------------------------------------
// Hierarchical all-reduce: which ranks form a node, and whether grouping by node is worth it

int comm_hierarchy(const comm *c) { return c->hier ? COMM_HIERARCHY_NODE : COMM_HIERARCHY_FLAT; }
const char *comm_hierarchy_line(const comm *c) { return c->hier_line; }

static void hierarchy_describe(comm *c, int mode, int fake_nodes, const world_nodes *n) {
    const char *asked = mode == COMM_HIERARCHY_AUTO ? "auto" : "node";
    char sizes[48];
    if (n->size_min == n->size_max) snprintf(sizes, sizeof sizes, "x %d rank%s", n->size_max, n->size_max > 1 ? "s" : "");
    else snprintf(sizes, sizeof sizes, "of %d to %d ranks", n->size_min, n->size_max);
    if (c->hier)
        snprintf(c->hier_line, sizeof c->hier_line, "hierarchy: node (%d nodes %s; leaders all-reduce across nodes%s%s)",
                 n->nodes, sizes, mode == COMM_HIERARCHY_AUTO ? "; auto" : "",
                 fake_nodes > 0 ? "; fake nodes: a test hook" : "");
    else
        snprintf(c->hier_line, sizeof c->hier_line, "hierarchy=%s with %s: flat all-reduce%s", asked,
                 n->nodes == 1 ? "all ranks on one node" : "one rank per node",
                 fake_nodes > 0 ? " (fake nodes: a test hook)" : "");
}

int comm_set_hierarchy(comm *c, int mode, int fake_nodes) {
    if (mode != COMM_HIERARCHY_FLAT && mode != COMM_HIERARCHY_NODE && mode != COMM_HIERARCHY_AUTO)
        return ERR(ST_RUNTIME, "rank %d (%s): comm_set_hierarchy: unknown mode %d", c->info.rank, c->info.host, mode);
    if (c->hier_set || comm_outstanding(c) > 0)
        return ERR(ST_RUNTIME, "rank %d (%s): comm_set_hierarchy: %s", c->info.rank, c->info.host,
                   c->hier_set ? "called twice" : "all-reduces in flight");
    if (fake_nodes < 0 || fake_nodes > c->info.world)
        return ERR(ST_INPUT, "fake nodes: %d for %d ranks (want 1 to %d)", fake_nodes, c->info.world, c->info.world);
    c->hier_set = 1;
    c->hier_line[0] = '\0';
    if (mode == COMM_HIERARCHY_FLAT) return ST_OK;
    // Splitting communicators blocks inside MPI: a rank that never gets here must not hold the others.
    comm_deadline_arm(c->timeout_s, "grouping the ranks by node (MPI_Comm_split)");
    world_nodes n;
    int st = world_nodes_open(c, fake_nodes, &n);
    comm_deadline_disarm();
    if (st != ST_OK) {
        world_nodes_close(c);
        return st;
    }
    // Every rank computes the same answer from the same numbers (nodes and ranks per node are agreed above).
    c->hier = n.nodes > 1 && n.size_max > 1;
    c->nodes = n;
    if (c->hier && c->ops && c->ops->hierarchy_start) st = c->ops->hierarchy_start(c);
    if (!c->hier || st != ST_OK) world_nodes_close(c);
    if (st != ST_OK) {
        c->hier = 0;
        return st;
    }
    hierarchy_describe(c, mode, fake_nodes, &n);
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
            return watchdog_error(c, r->seq, what, 0, c->timeout_s);
        }
        wait_pause(t - t0, iter);
    }
    r->in_use = 0;
    return ST_OK;
}

int comm_allreduce_avg(comm *c, float *buf, size_t n, const char *label) {
    int req = -1;
    // Statistics, not gradients: float32, and flat (one small all-reduce, waited on at once).
    TRY(allreduce_launch(c, buf, NULL, n, label, COMM_COMPRESS_NONE, 0, 0, &req));
    return comm_wait(c, req);
}

// ---------------------------------------------------------------------------------------------------------
// Host-side collectives

// Blocking for the caller, but waited on like a bucket: a peer that never arrives is a watchdog error naming
// the collective and the missing ranks, never a hang.
static int host_wait_within(comm *c, world_req *r, long long seq, const char *what, double timeout_s) {
    double t0 = now_s();
    for (long iter = 0;; iter++) {
        int done = 0;
        TRY(world_test(c, r, &done));
        if (done) return ST_OK;
        TRY(comm_check(c));
        double t = now_s();
        if (t - t0 > timeout_s) return watchdog_error(c, seq, what, 1, timeout_s);
        wait_pause(t - t0, iter);
    }
}

int comm_host_wait(comm *c, world_req *r, long long seq, const char *what) {
    return host_wait_within(c, r, seq, what, c->timeout_s);
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

int comm_barrier_within(comm *c, double timeout_s, const char *what) {
    world_req r;
    long long seq = comm_arrive(c);
    TRY(world_ibarrier(c, &r));
    return host_wait_within(c, &r, seq, what, timeout_s);
}

int comm_agree_status(comm *c, int status, int *first_bad) {
    // One reduction for both answers: the max status, and (negated, so MAX gives MIN) the first bad rank.
    int32_t v[2] = {status, status != ST_OK ? -c->info.rank : -INT_MAX};
    *first_bad = -1;
    world_req r;
    long long seq = comm_arrive(c);
    int st = world_iallreduce(c, v, 2, WORLD_I32, WORLD_MAX, &r);
    if (st != ST_OK || comm_host_wait(c, &r, seq, "agreement on status") != ST_OK) {
        // Without agreement we cannot know the others' status: a local failure to communicate (first_bad -1).
        return ST_COMM;
    }
    if (v[0] != ST_OK) *first_bad = -v[1];
    return v[0];
}

int comm_agree(comm *c, int st, const char *during) {
    int first_bad = -1;
    const int all = comm_agree_status(c, st, &first_bad);
    if (all == ST_OK) return ST_OK;
    if (first_bad < 0) return all;    // the agreement itself failed (a peer is stuck): local
    if (err_collective()) return st;  // agreed before: keep who reports it
    if (st == ST_OK) st = ERR(all, "rank %d failed during %s (see its message)", first_bad, during);
    err_mark_collective(first_bad == c->info.rank);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Agreement on a text (the effective configuration)

// Next line of *p that is not a comment or blank; NULL at the end. *len: its length without the newline.
static const char *text_line(const char **p, size_t *len) {
    while (**p) {
        const char *line = *p;
        size_t n = strcspn(line, "\n");
        *p = line[n] ? line + n + 1 : line + n;
        if (n > 0 && line[0] != '#') {
            *len = n;
            return line;
        }
    }
    return NULL;
}

// The first line where mine differs from ref, as "sect.key=value where rank 0 has sect.key=value"; 0 if none.
// sect is the INI section, or a layer's name once its name= line has been read.
static int text_first_difference(const char *ref, const char *mine, char *out, size_t n) {
    char sect[64] = "";
    for (;;) {
        size_t la = 0, lb = 0;
        const char *a = text_line(&ref, &la), *b = text_line(&mine, &lb);
        if (!a && !b) return 0;
        if (a && b && la == lb && memcmp(a, b, la) == 0) {
            if (a[0] == '[') snprintf(sect, sizeof sect, "%.*s", (int)(la > 2 ? la - 2 : 0), a + 1);
            else if (la > 5 && memcmp(a, "name=", 5) == 0) snprintf(sect, sizeof sect, "%.*s", (int)(la - 5), a + 5);
            continue;
        }
        const char *dot = sect[0] ? "." : "";
        if (!b)
            snprintf(out, n, "no line where rank 0 has %s%s%.*s", sect, dot, (int)(la > 200 ? 200 : la), a);
        else if (!a)
            snprintf(out, n, "%s%s%.*s where rank 0 has nothing more", sect, dot, (int)(lb > 200 ? 200 : lb), b);
        else
            snprintf(out, n, "%s%s%.*s where rank 0 has %s%s%.*s", sect, dot, (int)(lb > 200 ? 200 : lb), b, sect,
                     dot, (int)(la > 200 ? 200 : la), a);
        return 1;
    }
}

#define AGREE_TEXT_MAX ((uint64_t)1 << 20)

int comm_agree_text(comm *c, const char *text, const char *what) {
    const int me = c->info.rank, w = c->info.world;
    uint64_t len = me == 0 ? strlen(text) : 0;
    if (len > AGREE_TEXT_MAX) len = AGREE_TEXT_MAX;  // a longer text is compared by its first MiB
    TRY(comm_bcast(c, &len, sizeof len, 0));
    // Local failures below return without agreement: main aborts the job on them (never a hang).
    char *ref = malloc((size_t)len + 1);
    TRY_ALLOC(ref);
    if (me == 0) memcpy(ref, text, (size_t)len);
    ref[len] = '\0';
    int st = comm_bcast(c, ref, (size_t)len, 0);
    char mine[600] = "";
    const int differs = st == ST_OK && text_first_difference(ref, text, mine, sizeof mine);
    free(ref);
    TRY(st);
    int first_bad = -1;
    const int all = comm_agree_status(c, differs ? ST_INPUT : ST_OK, &first_bad);
    if (all == ST_OK) return ST_OK;
    if (first_bad < 0) return all;  // the agreement itself failed: local
    char msg[600];
    snprintf(msg, sizeof msg, "%s", mine);
    TRY(comm_bcast(c, msg, sizeof msg, first_bad));
    msg[sizeof msg - 1] = '\0';
    uint64_t *flags = malloc((size_t)w * sizeof *flags);
    TRY_ALLOC(flags);
    st = comm_allgather_u64(c, (uint64_t)differs, flags);
    char list[160] = "";
    int listed = 0;
    for (int p = 0; st == ST_OK && p < w; p++) {
        if (!flags[p]) continue;
        size_t used = strlen(list);
        if (listed < 16) snprintf(list + used, sizeof list - used, "%s%d", listed ? ", " : "", p);
        else if (listed == 16) snprintf(list + used, sizeof list - used, ", ...");
        listed++;
    }
    free(flags);
    TRY(st);
    st = ERR(ST_INPUT, "%s differs across ranks (every rank must run the same): rank %d has %s; %s from rank 0: %s",
             what, first_bad, msg, listed > 1 ? "ranks that differ" : "the rank that differs", list);
    err_mark_collective(me == 0);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Tear-down

void comm_stop(comm *c) {
    if (c == NULL || c->stopped) return;
    c->stopped = 1;
    if (c->ops && c->ops->stop) c->ops->stop(c);
    for (int i = 0; i < COMM_MAX_REQS; i++) c->reqs[i].in_use = 0;  // nothing in flight can complete now
}

int comm_stopped(const comm *c) { return c && c->stopped; }

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
    double timeout_s = COMM_DEFAULT_TIMEOUT_S;
    if (c) {
        // Every rank arrives here before anything blocking: a peer that does not is the watchdog's error (the
        // caller aborts the job) rather than a wait without end in MPI_Win_free or MPI_Finalize.
        TRY(comm_barrier(c));
        timeout_s = c->timeout_s;
    }
    comm_deadline_arm(timeout_s, "shut-down (freeing the communicators, MPI_Finalize)");
    comm_destroy(c);
    // main initialises the group itself and still hands tear-down to us, so finalise whoever initialised it.
    int st = world_finalize();
    comm_deadline_disarm();
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Deadline: a guard thread for the few calls that block inside MPI and cannot be polled (creating and freeing
// communicators, MPI_Init's peers, MPI_Finalize). When one outlives its deadline the process reports it and
// exits ST_COMM; the launcher then ends the rest of the job.

static pthread_mutex_t dl_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t dl_cv;
static int dl_started, dl_armed;
static unsigned long dl_gen;   // arm/disarm count: a wake-up for an older arming does nothing
static double dl_at, dl_secs;
static char dl_what[160];

static void *deadline_main(void *arg) {
    (void)arg;
    pthread_mutex_lock(&dl_mu);
    for (;;) {
        while (!dl_armed) pthread_cond_wait(&dl_cv, &dl_mu);
        unsigned long gen = dl_gen;
        double left = dl_at - now_s();
        if (left <= 0) {
            fprintf(stderr, "%s: error: rank %d (%s): %s did not complete within %g s (a peer rank may have died or "
                            "be stuck; parallel.comm_timeout_s)\n",
                    g_prog, g_rank, g_host, dl_what, dl_secs);
            fflush(stderr);
            _exit(ST_COMM);
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        double at = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec + left;
        ts.tv_sec = (time_t)at;
        ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
        while (dl_armed && dl_gen == gen && pthread_cond_timedwait(&dl_cv, &dl_mu, &ts) == 0) {
        }
    }
    return NULL;
}

void comm_deadline_arm(double seconds, const char *what) {
    pthread_mutex_lock(&dl_mu);
    if (!dl_started) {
        pthread_condattr_t a;
        pthread_condattr_init(&a);
        pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
        pthread_cond_init(&dl_cv, &a);
        pthread_condattr_destroy(&a);
        pthread_t th;
        // Best effort: without the thread the calls it guards are merely unbounded, as they were.
        if (pthread_create(&th, NULL, deadline_main, NULL) == 0) {
            pthread_detach(th);
            dl_started = 1;
        }
    }
    dl_armed = 1;
    dl_gen++;
    dl_secs = seconds;
    dl_at = now_s() + seconds;
    snprintf(dl_what, sizeof dl_what, "%s", what);
    pthread_cond_signal(&dl_cv);
    pthread_mutex_unlock(&dl_mu);
}

void comm_deadline_disarm(void) {
    pthread_mutex_lock(&dl_mu);
    dl_armed = 0;
    dl_gen++;
    if (dl_started) pthread_cond_signal(&dl_cv);
    pthread_mutex_unlock(&dl_mu);
}
