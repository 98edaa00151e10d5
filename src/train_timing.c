// train_timing.c — where a training step's time goes: phase marks in stream order (read back on timed steps,
// every wait under the watchdog's bound), the epoch's per-phase means, the --trace timeline of steps, layers
// and bucket all-reduces, and the progress bar / log line with its ETA.
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "layer.h"
#include "nvtx.h"
#include "train_state.h"

// ---------------------------------------------------------------------------------------------------------
// Marks in stream order, read back on timed steps

int train_mark(trainer *t, int k) {
    nvtx_phase(k, MK_END);  // every step, timed or not (nothing without CUDA or a profiler)
    return t->marks_on ? backend_mark_record(&t->be, t->mk[k]) : ST_OK;
}

// Wait until the work before mark mk has finished, bounded by comm_timeout_s: on a GPU a step that never ends
// is an all-reduce waiting for a peer that stopped (the host-side watchdog cannot see into the stream).
int train_mark_wait(trainer *t, void *mk) {
    const backend *be = &t->be;
    int done = 0;
    // A peer that died under a replayed graph shows up first as NCCL's asynchronous error.
    if (t->use_comm) TRY(comm_check(t->c));
    TRY(backend_mark_query(be, mk, &done));
    double t0 = now_s();
    while (!done) {
        double waited = now_s() - t0;
        if (t->use_comm) TRY(comm_check(t->c));
        if (waited > t->cfg->comm_timeout_s)
            return ERR(ST_COMM, "rank %d (%s): step %lld: the GPU has not finished the step after %.0f s "
                                "(comm_timeout_s): an all-reduce waiting for a peer that stopped?",
                       t->rank, g_host, t->global_step + 1, waited);
        if (waited < 0.005) {
            sched_yield();  // a step is 0.1-10 ms: spin first, the GPU idles while we sleep
        } else {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        TRY(backend_mark_query(be, mk, &done));
    }
    return ST_OK;
}

// Everything issued so far has finished (bounded, as train_mark_wait), so a blocking read that follows returns at once.
int train_drain(trainer *t) {
    TRY(backend_mark_record(&t->be, t->mk_sync));
    return train_mark_wait(t, t->mk_sync);
}

// The device marks of bucket i's last all-reduce: those captured into the graph when the step was replayed,
// else those of the eager launch (NULL, NULL for comm=mpi: host clock).
static void bucket_marks(const bucket *b, int replayed, void **m0, void **m1) {
    *m0 = replayed ? b->g_start : b->m_start;
    *m1 = replayed ? b->g_end : b->m_end;
}

// A mark's time on the trace's clock (now_s() at trace set-up plus the device time since).
static int mark_abs(trainer *t, void *mk, double *out) {
    double dt = 0;
    TRY(backend_mark_elapsed(&t->be, t->mk_origin, mk, &dt));
    *out = t->origin_s + dt;
    return ST_OK;
}

// --trace: the step's phases and layers on the main lane, each bucket's all-reduce on its own lane -- all
// from marks, so on a GPU they are device time (the comm stream's own events for comm=nccl).
static int step_trace(trainer *t, int replayed) {
    trace *tr = t->tr;
    double ts[MK_N];
    for (int k = 0; k < MK_N; k++) TRY(mark_abs(t, t->mk[k], &ts[k]));
    trace_span(tr, TRACE_TID_MAIN, "step", "step", ts[MK_START], ts[MK_END], -1, 0);
    trace_span(tr, TRACE_TID_MAIN, "data", "data", ts[MK_START], ts[MK_DATA], -1, 0);
    trace_span(tr, TRACE_TID_MAIN, "forward", "forward", ts[MK_DATA], ts[MK_FWD], -1, 0);
    trace_span(tr, TRACE_TID_MAIN, "backward", "backward", ts[MK_FWD], ts[MK_BWD], -1, 0);
    if (t->use_comm) trace_span(tr, TRACE_TID_MAIN, "wait", "allreduce wait", ts[MK_BWD], ts[MK_WAIT], -1, 0);
    trace_span(tr, TRACE_TID_MAIN, "optimizer", "optimizer", ts[MK_WAIT], ts[MK_END], -1, 0);
    for (int i = 0; i + 1 < t->n_lm; i += 2) {
        const layer_mark *a = &t->lm[i];
        double t0, t1;
        TRY(mark_abs(t, a->mk, &t0));
        TRY(mark_abs(t, t->lm[i + 1].mk, &t1));
        const char *phase = a->backward ? "backward" : "forward";
        char name[64];
        snprintf(name, sizeof name, "%s %s", phase, t->m.layers[a->layer].name);
        trace_span(tr, TRACE_TID_MAIN, phase, name, t0, t1, a->layer, 0);
    }
    for (int i = 0; t->use_comm && i < t->n_buckets; i++) {
        const bucket *b = &t->buckets[i];
        void *m0, *m1;
        bucket_marks(b, replayed, &m0, &m1);
        double t0 = b->t_launch, t1 = b->t_done;
        if (m0) TRY(mark_abs(t, m0, &t0));
        if (m1) TRY(mark_abs(t, m1, &t1));
        char name[48];
        snprintf(name, sizeof name, "allreduce bucket %d", i);
        trace_span(tr, TRACE_TID_BUCKET0 + i, "comm", name, t0, t1, i, (long long)((b->end - b->begin) * sizeof(float)));
        // PowerSGD: its Q's, inside the bucket's span (launched during backward when the comm has a lane for them).
        if (b->t_q_launch > 0) {
            snprintf(name, sizeof name, "PowerSGD Q bucket %d", i);
            trace_span(tr, TRACE_TID_BUCKET0 + i, "comm", name, b->t_q_launch, t1, i, 0);
        }
    }
    return ST_OK;
}

static void times_add(step_times *a, const step_times *x) {
    a->data_s += x->data_s, a->forward_s += x->forward_s, a->backward_s += x->backward_s;
    a->exposed_comm_s += x->exposed_comm_s, a->comm_s += x->comm_s, a->optimizer_s += x->optimizer_s;
    a->step_s += x->step_s, a->skew_s += x->skew_s;
}

// After a timed step: wait for it, add its phases to the epoch's means (and its spans to the trace).
int train_step_timing(trainer *t, int replayed) {
    const backend *be = &t->be;
    TRY(train_mark_wait(t, t->mk[MK_END]));
    double ph[MK_N - 1];
    for (int k = 0; k + 1 < MK_N; k++) TRY(backend_mark_elapsed(be, t->mk[k], t->mk[k + 1], &ph[k]));
    // comm_s: the union of the buckets' intervals, on the host clock or (device marks) from the step's start.
    double c0[COMM_MAX_REQS], c1[COMM_MAX_REQS];
    const int nb = t->use_comm ? t->n_buckets : 0;
    for (int i = 0; i < nb; i++) {
        const bucket *b = &t->buckets[i];
        void *m0, *m1;
        bucket_marks(b, replayed, &m0, &m1);
        c0[i] = b->t_launch, c1[i] = b->t_done;
        if (m0 && m1) {
            TRY(backend_mark_elapsed(be, t->mk[MK_START], m0, &c0[i]));
            TRY(backend_mark_elapsed(be, t->mk[MK_START], m1, &c1[i]));
        }
    }
    // This step's phases, added to the epoch's sums (and, parallel.overlap=2, to its half's).
    const step_times x = {.data_s = ph[MK_START], .forward_s = ph[MK_DATA], .backward_s = ph[MK_FWD],
                          .exposed_comm_s = t->use_comm ? ph[MK_BWD] : 0, .comm_s = metrics_busy_s(nb, c0, c1),
                          .optimizer_s = ph[MK_WAIT],
                          .step_s = ph[MK_START] + ph[MK_DATA] + ph[MK_FWD] + ph[MK_BWD] + ph[MK_WAIT]};
    times_add(&t->acc, &x);
    if (t->use_comm) {
        if (!t->step_wait) t->step_wait = calloc((size_t)t->steps_per_epoch, sizeof *t->step_wait);
        TRY_ALLOC(t->step_wait);
        if (t->timed < t->steps_per_epoch) t->step_wait[t->timed] = ph[MK_BWD];
    }
    if (t->overlap_ab) {
        if (!t->step_ov) t->step_ov = calloc((size_t)t->steps_per_epoch, 1);
        TRY_ALLOC(t->step_ov);
        if (t->timed < t->steps_per_epoch) t->step_ov[t->timed] = (unsigned char)t->overlap;
        times_add(&t->ab[t->overlap], &x);
        t->ab_timed[t->overlap]++;
    }
    if (t->d_sumsq) {  // the step has finished (train_mark_wait above): this read does not wait
        double ss = 0;
        TRY(backend_download(be, &ss, t->d_sumsq, sizeof ss));
        t->grad_norm_sum += sqrt(ss);
    }
    t->timed++;
    if (t->tr) TRY(step_trace(t, replayed));
    return ST_OK;
}

// --trace: model.c calls this around each layer of a training step.
static int layer_hook(void *arg, int backward, int layer, int begin) {
    trainer *t = arg;
    if (!t->in_step || t->n_lm >= t->cap_lm) return ST_OK;  // evaluation: its own single span
    layer_mark *x = &t->lm[t->n_lm++];
    (void)begin;  // begin and end alternate
    x->backward = backward, x->layer = layer;
    return backend_mark_record(&t->be, x->mk);
}

// Opened on every rank after set-up; the origin is taken right after a barrier so that the ranks' timelines
// line up when merged, and a mark recorded then ties the device clock to it.
int train_trace_setup(trainer *t) {
    const backend *be = &t->be;
    trace_name_lane(t->tr, TRACE_TID_MAIN, "compute");
    for (int i = 0; i < t->m.n_layers; i++) trace_set_layer(t->tr, i, t->m.layers[i].name, t->m.layers[i].kind->section);
    for (int i = 0; t->use_comm && i < t->n_buckets; i++) {
        char name[48];
        snprintf(name, sizeof name, "allreduce bucket %d", i);
        trace_name_lane(t->tr, TRACE_TID_BUCKET0 + i, name);
    }
    t->cap_lm = 4 * t->m.n_layers;  // forward and backward, begin and end
    t->lm = calloc((size_t)t->cap_lm, sizeof *t->lm);
    TRY_ALLOC(t->lm);
    for (int i = 0; i < t->cap_lm; i++) TRY(backend_mark_create(be, &t->lm[i].mk));
    TRY(backend_mark_create(be, &t->mk_origin));
    t->m.layer_hook = layer_hook;
    t->m.layer_hook_arg = t;
    TRY(train_drain(t));  // an idle stream: the origin mark is recorded at (about) origin_s
    if (t->world > 1) TRY(comm_barrier(t->c));
    t->origin_s = now_s();
    trace_set_origin(t->tr, t->origin_s);
    return backend_mark_record(be, t->mk_origin);
}

// ---------------------------------------------------------------------------------------------------------
// The epoch's means over its timed steps

void train_timing_reset(trainer *t) {
    memset(&t->acc, 0, sizeof t->acc);
    memset(t->ab, 0, sizeof t->ab);
    t->ab_timed[0] = t->ab_timed[1] = 0;
    t->timed = 0;
    t->grad_norm_sum = 0;
}

// Skew: in each step the all-reduce completes at about the same moment on every rank (the last exchange reaches
// all of them), so the rank that finished backward last waited the least, and only for communication; any
// other rank waited that long plus the time it was ahead of it. skew_s is the mean over the epoch's timed steps of
// (this rank's wait - the shortest wait of any rank in that step): no barrier and no common clock, one
// all-reduce of the per-step waits after the epoch (every rank times the same steps).
int train_timing_skew(trainer *t) {
    const int n = t->timed < t->steps_per_epoch ? t->timed : t->steps_per_epoch;
    t->acc.skew_s = 0;
    if (t->world == 1 || !t->use_comm || n == 0 || !t->step_wait) return ST_OK;
    double *least = malloc((size_t)n * sizeof *least);
    TRY_ALLOC(least);
    for (int i = 0; i < n; i++) least[i] = -t->step_wait[i];  // max of the negated: the least wait
    int st = comm_allreduce_max_f64(t->c, least, n);
    for (int i = 0; st == ST_OK && i < n; i++) {
        const double skew = t->step_wait[i] + least[i];
        t->acc.skew_s += skew;
        if (t->overlap_ab && t->step_ov) t->ab[t->step_ov[i]].skew_s += skew;
    }
    free(least);
    return st;
}

static step_times times_scaled(const step_times *a, double k) {
    return (step_times){a->data_s * k, a->forward_s * k, a->backward_s * k, a->exposed_comm_s * k,
                        a->comm_s * k, a->optimizer_s * k, a->step_s * k, a->skew_s * k};
}

// The phases' means (all 0 when no step was timed) and the mean gradient norm before clipping (NaN when not
// clipping or nothing was timed).
void train_timing_means(const trainer *t, step_times *means, double *grad_norm) {
    *means = t->timed ? times_scaled(&t->acc, 1.0 / t->timed) : (step_times){0};
    *grad_norm = t->d_sumsq && t->timed ? t->grad_norm_sum / t->timed : NAN;
}

// parallel.overlap=2: the means over the timed steps without overlap ([0]) and with it ([1]), and their counts.
// Both halves ran under the same conditions, interleaved step by step, so their difference is overlap's alone.
void train_timing_ab(const trainer *t, step_times means[2], int steps[2]) {
    for (int h = 0; h < 2; h++) {
        steps[h] = t->ab_timed[h];
        means[h] = steps[h] ? times_scaled(&t->ab[h], 1.0 / steps[h]) : (step_times){0};
    }
}

// ---------------------------------------------------------------------------------------------------------
// Progress: a bar on a terminal, a line every --log-every seconds in a log

// Time left in the run at the pace of this process's steps so far ("3m12s").
static void eta_text(const trainer *t, long long steps_here, double secs_here, char *out, size_t n) {
    long long total = (long long)t->cfg->epochs * t->steps_per_epoch;
    if (t->o->max_steps > 0 && t->o->max_steps < total) total = t->o->max_steps;
    const long long left = total - t->global_step;
    if (steps_here <= 0 || secs_here <= 0 || left < 0) {
        snprintf(out, n, "?");
        return;
    }
    const long s = (long)((double)left * secs_here / (double)steps_here + 0.5);
    if (s >= 3600) snprintf(out, n, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(out, n, "%ldm%02lds", s / 60, s % 60);
    else snprintf(out, n, "%lds", s);
}

// On a terminal: a bar redrawn in place. In a log (no terminal: a Slurm job's output): one line every
// --log-every seconds. Both with the epoch's mean loss so far, images/s and the ETA of the whole run.
// step: the epoch's step; run: steps run in this epoch by this process (for images/s), in elapsed seconds.
void train_progress_show(const trainer *t, int bar, int step, double loss_sum, int run, double elapsed,
                         long long steps_here, double secs_here) {
    const double ips = elapsed > 0 ? (double)run * t->G / elapsed : 0;
    const double loss = step ? loss_sum / ((double)step * t->B * t->K) : 0.0;
    char eta[32];
    eta_text(t, steps_here, secs_here, eta, sizeof eta);
    if (bar) {
        int width = 30, done = (int)((double)step / t->steps_per_epoch * width);
        char b[64];
        for (int i = 0; i < width; i++) b[i] = i < done ? '#' : '.';
        b[width] = '\0';
        printf("\r  epoch %d/%d [%s] %d/%d loss %.4f %.0f img/s ETA %s ", t->epoch + 1, t->cfg->epochs, b, step,
               t->steps_per_epoch, loss, ips, eta);
    } else {
        printf("  step %lld (epoch %d/%d, %d/%d) loss %.4f %.0f img/s ETA %s\n", t->global_step, t->epoch + 1,
               t->cfg->epochs, step, t->steps_per_epoch, loss, ips, eta);
    }
    fflush(stdout);
}
