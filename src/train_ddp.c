// train_ddp.c — the data-parallel mechanics of training: gradient buckets all-reduced as soon as backward has
// produced them (overlap, gradient accumulation's finalisation at each launch), the start (comm on the compute
// stream, every replica from rank 0's state), the ranks' agreement on the data and the end-of-epoch replica check.
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bucket_plan.h"
#include "common.h"
#include "train_state.h"

// ---------------------------------------------------------------------------------------------------------
// Buckets: contiguous slices of the gradient buffer, launched as soon as backward has finished them.

// Gradient accumulation: the last micro-batch's gradients plus the earlier ones' sum, averaged over the K
// micro-batches -- for [begin, end) of the buffer, just before that slice is all-reduced (or stepped on).
int train_grads_finalize(trainer *t, size_t begin, size_t end) {
    if (t->K == 1 || end <= begin) return ST_OK;
    TRY(backend_add(&t->be, end - begin, t->acc_grads + begin, t->m.grads + begin));
    return backend_scale(&t->be, end - begin, 1.0f / (float)t->K, t->m.grads + begin);
}

// ---------------------------------------------------------------------------------------------------------
// PowerSGD (parallel.compress=powersgd, src/powersgd.h): past powersgd_start_step a bucket is two all-reduces,
// [P's | uncompressed values] launched where the plain one would be (so it overlaps backward as that one does),
// then its Q's, which need the all-reduced P's. Every rank must issue the collectives of one communicator in the
// same order, and when a P has finished is each rank's own view. So the Q's go on lane 1 (comm.h), a communicator
// of their own, whenever the comm has one (comm_lanes: mpi, flat): each rank launches bucket i's Q's as soon as it
// sees bucket i's P's done during backward (buckets_poll from train_on_grads_ready), provided buckets 0..i-1 had
// theirs launched. Lane 0 then holds the P's in bucket order and lane 1 the Q's in bucket order on every rank,
// whatever the timing, and Q's transfer (most of PowerSGD's bytes) overlaps the rest of backward. psgd_finish
// launches, in bucket order, the Q's still unlaunched when backward ends, then waits for every Q and decompresses.
// Without a second lane (nccl, which is never tested during backward; hierarchy=node, whose stages are ordered by
// launch over all requests) every Q is launched after backward, bucket by bucket, on lane 0 as before. Only the
// time of Q's launch differs: the same values are summed in the same way, so the results are bit for bit the same.

static int psgd_launch(trainer *t, int i, const char *label) {
    bucket *b = &t->buckets[i];
    float *buf;
    size_t n;
    TRY(powersgd_compress(t->psgd, i, t->m.grads, &buf, &n));
    TRY(comm_allreduce_avg_async(t->c, buf, n, label, &b->req));
    b->psgd_stage = 1;
    return comm_req_marks(t->c, b->req, &b->m_start, &b->m_end);
}

// The lane of the Q's: 1 when it is apart from the P's (then every Q of a step goes there, in bucket order), else 0.
static int psgd_q_lane(const trainer *t) { return comm_lanes(t->c) > 1 ? 1 : 0; }

// Wait for bucket i's all-reduce in flight, then its next stage: the Q's launched (1), or the gradient (2).
static int psgd_advance(trainer *t, int i) {
    bucket *b = &t->buckets[i];
    TRY(comm_wait(t->c, b->req));
    b->req = -1;
    if (b->psgd_stage == 1) {
        float *buf;
        size_t n;
        char label[64];
        snprintf(label, sizeof label, "step %lld bucket %d (PowerSGD Q)", t->global_step + 1, i);
        TRY(powersgd_project(t->psgd, i, t->m.grads, &buf, &n));
        b->t_q_launch = now_s();
        TRY(comm_allreduce_avg_async_lane(t->c, psgd_q_lane(t), buf, n, label, &b->req));
        b->psgd_stage = 2;
        void *q_start;  // the bucket's communication spans P's launch to Q's end
        return comm_req_marks(t->c, b->req, &q_start, &b->m_end);
    }
    TRY(powersgd_decompress(t->psgd, i, t->m.grads));
    b->psgd_stage = 0;
    b->t_done = now_s();
    return ST_OK;
}

// After backward: the Q's not yet launched (bucket order; the poll launched a prefix of the buckets' Q's), then
// every bucket's gradient.
static int psgd_finish(trainer *t) {
    for (int stage = 1; stage <= 2; stage++)
        for (int i = 0; i < t->n_buckets; i++)
            if (t->buckets[i].psgd_stage == stage) TRY(psgd_advance(t, i));
    t->next_bucket = 0;
    return ST_OK;
}

// The buckets' layout once they exist (bucket_kb=auto makes them at the start), what is compressed (one line), and
// a resumed run's state when the layout is the checkpoint's. No matrix to compress is bad input.
static int psgd_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    if (cfg->compress != COMPRESS_POWERSGD) return ST_OK;
    size_t *begin = malloc(2 * (size_t)(t->n_buckets + 1) * sizeof *begin);
    TRY_ALLOC(begin);
    size_t *end = begin + t->n_buckets + 1;
    for (int i = 0; i < t->n_buckets; i++) begin[i] = t->buckets[i].begin, end[i] = t->buckets[i].end;
    const powersgd_opts o = {.rank = cfg->powersgd_rank, .start_step = cfg->powersgd_start_step, .seed = cfg->seed};
    const int st = powersgd_create(&t->psgd, &t->be, &t->m, t->n_buckets, begin, end, &o);
    free(begin);
    TRY(st);
    powersgd_stats s;
    powersgd_get_stats(t->psgd, &s);
    if (s.compressed == 0) {
        if (s.max_rank > 0)
            return ERR(ST_INPUT, "%s: [parallel] powersgd_rank=%d compresses none of the model's %d weight matrices (an "
                                 "n x m matrix is compressed at rank r = min(n, m, powersgd_rank) when 2 (n + m) r < n m); "
                                 "at most %d compresses one", cfg->path, cfg->powersgd_rank, s.matrix_tensors, s.max_rank);
        return ERR(ST_INPUT, "%s: [parallel] compress=powersgd: none of the model's %d weight matrices is large enough to "
                             "compress even at powersgd_rank=1 (2 (n + m) < n m); use compress=none, bf16 or fp16",
                   cfg->path, s.matrix_tensors);
    }
    LOG0("powersgd: rank %d from step %d: %d of the %d weight matrices compressed (%d matrices: tensors split over "
         "buckets give one per part), the rest of the %d parameter tensors all-reduced as they are; %zu floats "
         "all-reduced per step instead of %zu (%.1fx less)\n", cfg->powersgd_rank, cfg->powersgd_start_step,
         s.compressed, s.matrix_tensors, s.pieces, s.tensors, s.floats_sent, s.floats_plain,
         s.floats_sent ? (double)s.floats_plain / (double)s.floats_sent : 0.0);
    psgd_saved *r = &t->psgd_resume;
    if (r->q) {
        if (r->layout == powersgd_layout_hash(t->psgd) && r->nq == powersgd_q_floats(t->psgd) &&
            r->nerr == powersgd_error_floats(t->psgd))
            TRY(powersgd_state_upload(t->psgd, r->q, r->err));
        else
            LOG0("note: --resume: the checkpoint's PowerSGD state is not used (its buckets or matrices differ: "
                 "bucket_kb, powersgd_rank or the model changed); Q is drawn again and the error starts at zero\n");
    }
    free(r->q), free(r->err);
    r->q = r->err = NULL;
    return ST_OK;
}

// Every rank's error to rank 0 (one broadcast per rank: the host collectives have no gather), Q from rank 0's.
int train_psgd_gather(trainer *t, float **q, float **err) {
    *q = *err = NULL;
    if (!t->psgd || !powersgd_started(t->psgd)) return ST_OK;
    const size_t nq = powersgd_q_floats(t->psgd), ne = powersgd_error_floats(t->psgd);
    float *mine = malloc((ne + 1) * sizeof *mine);
    float *all = t->rank == 0 ? malloc(((size_t)t->world * ne + 1) * sizeof *all) : NULL;
    float *hq = t->rank == 0 ? malloc((nq + 1) * sizeof *hq) : NULL;
    int st = mine && (t->rank != 0 || (all && hq)) ? ST_OK : ERR(ST_RUNTIME, "out of host memory for PowerSGD's state");
    if (st == ST_OK) st = powersgd_state_download(t->psgd, hq, mine);
    for (int r = 0; r < t->world && st == ST_OK; r++) {
        st = comm_bcast(t->c, mine, ne * sizeof *mine, r);  // root r sends its own; the others receive it
        if (st == ST_OK && t->rank == 0) memcpy(all + (size_t)r * ne, mine, ne * sizeof *mine);
        if (st == ST_OK && r + 1 < t->world) st = powersgd_state_download(t->psgd, NULL, mine);
    }
    free(mine);
    if (st != ST_OK) {
        free(all), free(hq);
        return st;
    }
    *q = hq, *err = all;
    return ST_OK;
}

static int bucket_launch(trainer *t, int i) {
    bucket *b = &t->buckets[i];
    TRY(train_grads_finalize(t, b->begin, b->end));
    t->launches++;
    char label[64];
    snprintf(label, sizeof label, "step %lld bucket %d", t->global_step + 1, i);  // 1-based, as in messages
    b->t_launch = now_s();
    b->t_done = b->t_q_launch = 0;
    if (powersgd_active(t->psgd, t->global_step)) return psgd_launch(t, i, label);
    if (t->m.grads16)  // bf16 from backward: sent as they are, the average cast into grads
        TRY(comm_allreduce_avg_bf16_async(t->c, t->m.grads16 + b->begin, t->m.grads + b->begin, b->end - b->begin,
                                          label, &b->req));
    else
        TRY(comm_allreduce_avg_async(t->c, t->m.grads + b->begin, b->end - b->begin, label, &b->req));
    return comm_req_marks(t->c, b->req, &b->m_start, &b->m_end);
}

// Move in-flight all-reduces on and note when each completes (for comm_s). One test of the oldest bucket not
// yet done runs MPI's progress engine once, which advances every non-blocking collective in flight; testing
// each of them (and comm_progress before) ran it twice per bucket in flight, each run walking all of them: at
// 63 buckets of 8 KiB that made backward 24 ms instead of 16. Buckets complete about in launch order, so one
// that finished behind an older one is seen at the next poll.
//
// PowerSGD with a lane for the Q's (advance_q): a bucket whose P's are done has its Q's launched at once when every
// bucket before it has had its Q's launched (the walk stops at the first P not done, so that holds: lane 1 sees
// the Q's in bucket order). A bucket whose Q's are in flight does not stop the walk (the next P may be done); they
// are tested after the P's, oldest first, when every P is done -- one test per poll, as above. advance_q is 0 in
// the progress hook: it runs inside a backend op (part 0 of a job of the CPU backend's thread pool), where
// projecting (gemms on the same backend and pool) must not start; a P found done there waits, and so do the
// buckets after it, for train_on_grads_ready, which runs between layers.
static void buckets_poll(trainer *t, int advance_q) {
    const int lane = psgd_q_lane(t);
    int q_first = -1;  // the oldest bucket whose Q's are in flight
    for (int i = 0; i < t->next_bucket; i++) {
        bucket *b = &t->buckets[i];
        if (b->req < 0 || b->t_done > 0) continue;
        if (lane && b->psgd_stage == 2) {
            if (q_first < 0) q_first = i;
            continue;
        }
        int done = 0;
        int st = comm_test(t->c, b->req, &done);
        if (st == ST_OK && done && lane && b->psgd_stage == 1) {
            if (!advance_q) continue;  // launched by the next train_on_grads_ready, in order; test the later ones
            st = psgd_advance(t, i);   // P's done: no wait; the Q's are launched on lane 1
            if (st == ST_OK && q_first < 0) q_first = i;
            if (st == ST_OK) continue;
        }
        if (st != ST_OK) {
            if (t->cb_status == ST_OK) t->cb_status = err_status();
            return;
        }
        if (!done) return;
        b->t_done = now_s();
    }
    for (int i = q_first; i >= 0 && i < t->next_bucket; i++) {
        bucket *b = &t->buckets[i];
        if (b->req < 0 || b->t_done > 0 || b->psgd_stage != 2) continue;
        int done = 0;
        if (comm_test(t->c, b->req, &done) != ST_OK) {
            if (t->cb_status == ST_OK) t->cb_status = err_status();
            return;
        }
        if (!done) return;
        b->t_done = now_s();  // the Q's have arrived (psgd_advance notes the time again once decompressed)
    }
}

static void progress_hook(void *arg) { buckets_poll((trainer *)arg, 0); }

int train_on_grads_ready(void *arg, size_t ready) {
    trainer *t = arg;
    while (t->next_bucket < t->n_buckets && t->buckets[t->next_bucket].end <= ready)
        TRY(bucket_launch(t, t->next_bucket++));
    // MPI reduces on the host and advances only when tested. NCCL must not be tested here: its test joins the
    // compute stream to the all-reduce, which would hold the rest of backward behind it (no overlap).
    if (t->host_comm) buckets_poll(t, 1);
    return t->cb_status;  // a failure the progress hook saw meanwhile
}

// Launch what is left, then wait for every bucket (comm=nccl: make the compute stream wait).
int train_buckets_finish(trainer *t) {
    while (t->next_bucket < t->n_buckets) TRY(bucket_launch(t, t->next_bucket++));
    if (powersgd_active(t->psgd, t->global_step)) return psgd_finish(t);
    for (int i = 0; i < t->n_buckets; i++) {
        bucket *b = &t->buckets[i];
        TRY(comm_wait(t->c, b->req));
        if (b->t_done == 0) b->t_done = now_s();
        b->req = -1;
    }
    t->next_bucket = 0;
    return ST_OK;
}

// The model's layers for the bucket rule. Under PowerSGD none is split: it compresses a layer's weight matrix
// whole, and parts of a few rows cut by the cap would rarely compress at all (they are all ready together anyway).
// bucket_kb=auto then plans for what a compressed step sends: each layer's P's and Q's (its compressed steps are
// all but the first powersgd_start_step).
static int plan_layers(const trainer *t, double backward_s, bucket_layer *out) {
    const int n = bucket_plan_layers(&t->m, backward_s, out);
    const int psgd = t->cfg->compress == COMPRESS_POWERSGD;
    for (int i = 0; i < n; i++) {
        out[i].whole = psgd;
        if (psgd) powersgd_span_floats(&t->m, t->cfg->powersgd_rank, out[i].begin, out[i].end, &out[i].p_floats,
                                       &out[i].q_floats);
    }
    return n;
}

// Buckets close at layer boundaries, as PyTorch DDP never splits a parameter: a bucket is ready as soon as
// backward has finished its last layer, so a slice of the cap that cut a layer in two would leave the rest of that
// layer waiting for the next boundary -- for the first layers, the end of backward. Layers (in the buffer's
// reverse order) are gathered into a bucket while it stays within bucket_kb; a layer larger than the cap is split
// into equal parts no larger than it, all ready together (bucket_plan_form, which bucket_kb=auto's model plans with).
// bucket_kb=auto with all-reduces: sized in train_ddp_start, once the link can be probed.
int train_buckets_create(trainer *t) {
    if (t->cfg->bucket_kb == 0) return ST_OK;  // auto: at one rank without all-reduces there are none
    size_t per = (size_t)t->cfg->bucket_kb * 1024 / sizeof(float);
    bucket_layer layers[CFG_MAX_LAYERS];
    const int n_layers = plan_layers(t, 0, layers);
    const int n = bucket_plan_form(layers, n_layers, t->m.n_params, per, NULL);
    if (n > COMM_MAX_REQS - COMM_RESERVED_REQS)  // (sync batch norm's all-reduces need free slots too)
        return ERR(ST_INPUT, "%s: [parallel] bucket_kb=%d gives %d buckets for %zu parameters (at most %d)",
                   t->cfg->path, t->cfg->bucket_kb, n, t->m.n_params, COMM_MAX_REQS - COMM_RESERVED_REQS);
    bucket_span *spans = malloc((size_t)(n ? n : 1) * sizeof *spans);
    TRY_ALLOC(spans);
    bucket_plan_form(layers, n_layers, t->m.n_params, per, spans);
    free(t->buckets), free(t->bucket_bytes);
    t->n_buckets = n;
    t->buckets = calloc((size_t)n + 1, sizeof *t->buckets);
    t->bucket_bytes = calloc((size_t)n + 1, sizeof *t->bucket_bytes);
    if (!t->buckets || !t->bucket_bytes) free(spans);
    TRY_ALLOC(t->buckets);
    TRY_ALLOC(t->bucket_bytes);
    for (int i = 0; i < n; i++) {
        t->buckets[i].begin = spans[i].begin, t->buckets[i].end = spans[i].end;
        t->buckets[i].req = -1;
        t->bucket_bytes[i] = (long long)((spans[i].end - spans[i].begin) * sizeof(float));
    }
    free(spans);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// parallel.bucket_kb=auto: the cap from a probe of the link and the model's layers (src/bucket_plan.h)

// The median time of reps all-reduces of `bytes` of buf through the buckets' path (launch, wait, the backend
// drained), after one unmeasured (warm: 1) that also brings the ranks together; *launch_s: the median host time
// of the launch call alone.
static int probe_allreduce(trainer *t, float *buf, size_t bytes, int warm, int reps, double *s, double *launch_s) {
    double took[8], launch[8];
    if (reps > 8) reps = 8;
    for (int r = -warm; r < reps; r++) {
        TRY(train_drain(t));
        int req = -1;
        const double t0 = now_s();
        TRY(comm_allreduce_avg_async(t->c, buf, bytes / sizeof(float), "the bucket_kb=auto probe", &req));
        const double t1 = now_s();
        TRY(comm_wait(t->c, req));
        TRY(train_drain(t));
        if (r >= 0) took[r] = now_s() - t0, launch[r] = t1 - t0;
    }
    *s = bucket_plan_median(took, reps);
    *launch_s = bucket_plan_median(launch, reps);
    return ST_OK;
}

// The link: all-reduces of 4 KiB, 16 KiB, ... (bucket_plan.h) until one takes BUCKET_PROBE_ENOUGH_S, holds all
// the gradients or is 4 MiB; each figure the slowest rank's, so every rank decides alike and plans the same
// buckets.
static int probe_link(trainer *t, float *buf, bucket_link *link) {
    double bytes[BUCKET_LINK_MAX], took[BUCKET_LINK_MAX], launch = 0;
    int n = 0;
    for (size_t size = BUCKET_PROBE_FIRST_BYTES; n < BUCKET_LINK_MAX && size <= BUCKET_PROBE_LAST_BYTES; size *= 4) {
        const int slow = n > 0 && took[n - 1] >= BUCKET_PROBE_SLOW_S;
        double v[2];  // time, launch
        TRY(probe_allreduce(t, buf, size, !slow, n == 0 ? 7 : slow ? 1 : 3, &v[0], &v[1]));
        TRY(comm_allreduce_max_f64(t->c, v, 2));
        if (n == 0) launch = v[1];
        bytes[n] = (double)size, took[n] = v[0], n++;
        if (v[0] >= BUCKET_PROBE_ENOUGH_S || size >= t->m.n_params * sizeof(float)) break;
    }
    *link = bucket_plan_fit(bytes, took, n, launch);
    return ST_OK;
}

// Backward's time, estimated as twice an evaluation forward of one training batch of zeros (backward computes
// the gradients of the inputs and of the weights): no state changes, and the batch's plans are made for the
// first step anyway. Timed twice when the first is short (it sets the plans up); the slowest rank's.
static int estimate_backward(trainer *t, double *s) {
    const size_t in = (size_t)t->B * t->m.in_c * t->m.in_h * t->m.in_w * t->m.act_elem;
    TRY(backend_zero(&t->be, t->m.x, in));
    TRY(backend_zero(&t->be, t->m.labels, (size_t)t->B * sizeof(int32_t)));
    double fwd = 0;
    for (int k = 0; k < 2 && (k == 0 || fwd < 1.0); k++) {
        TRY(train_drain(t));
        const double t0 = now_s();
        TRY(model_forward(&t->m, t->B, 0));
        TRY(train_drain(t));
        fwd = now_s() - t0;
    }
    TRY(backend_zero(&t->be, t->m.loss_acc, sizeof(double)));
    TRY(backend_zero(&t->be, t->m.correct_acc, sizeof(int32_t)));
    *s = 2 * fwd;
    return comm_allreduce_max_f64(t->c, s, 1);
}

// Collective, after the start's broadcasts: probe, plan, build the buckets; one line says what was chosen.
static int buckets_auto(trainer *t) {
    float *buf = NULL;
    TRY(backend_alloc(&t->be, (void **)&buf, BUCKET_PROBE_LAST_BYTES));
    bucket_link link;
    int st = probe_link(t, buf, &link);
    backend_free(&t->be, buf);
    TRY(st);
    double backward_s;
    TRY(estimate_backward(t, &backward_s));
    bucket_layer layers[CFG_MAX_LAYERS];
    const int n_layers = plan_layers(t, backward_s, layers);
    bucket_choice c;
    const int most = COMM_MAX_REQS - COMM_RESERVED_REQS;
    TRY(bucket_plan_choose(layers, n_layers, t->m.n_params, backward_s, &link, t->overlap, most, &c));
    if (c.kb == 0)
        return ERR(ST_INPUT, "%s: [parallel] bucket_kb=auto: %zu parameters need more than %d buckets even at %d KiB",
                   t->cfg->path, t->m.n_params, most, BUCKET_PLAN_MAX_KB);
    t->cfg_eff.bucket_kb = c.kb;
    TRY(train_buckets_create(t));
    if (t->o->verbose) {  // every cap the model weighed: KiB, buckets, predicted ms
        char all[1024];
        int len = 0;
        for (long kb = BUCKET_PLAN_MIN_KB; kb <= BUCKET_PLAN_MAX_KB && len < (int)sizeof all - 40; kb *= 2) {
            const size_t per = (size_t)kb * 1024 / sizeof(float);
            int nb = bucket_plan_form(layers, n_layers, t->m.n_params, per, NULL);
            if (nb > most) continue;
            const double x = bucket_plan_simulate(layers, n_layers, t->m.n_params, backward_s, per, &link, t->overlap, &nb);
            len += snprintf(all + len, sizeof all - (size_t)len, " %ld:%d:%.3f", kb, nb, x * 1e3);
        }
        LOG0("buckets: auto weighed (cap KiB:buckets:predicted ms)%s\n", all);
        len = 0;
        for (int i = 0; i < link.n; i++)
            len += snprintf(all + len, sizeof all - (size_t)len, " %.0f:%.3f", link.bytes[i] / 1024, link.s[i] * 1e3);
        LOG0("buckets: auto probe (all-reduce KiB:ms, the slowest rank's medians)%s\n", all);
    }
    LOG0("buckets: auto -> cap %d KiB, %d buckets, predicted exposed comm %.3f ms%s (link alpha %.1f us, beta %.3f "
         "GB/s, launch %.1f us; backward ~%.2f ms, twice a timed forward)\n", c.kb, t->n_buckets, c.exposed_s * 1e3,
         t->cfg->compress == COMPRESS_POWERSGD ? " for PowerSGD's P and Q" : "", link.alpha_s * 1e6,
         1e-9 / link.beta_s, link.launch_s * 1e6, backward_s * 1e3);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Start: the comm on the compute stream, every replica from rank 0's state

// Batch norm's running statistics (the model's state) from rank 0 to every rank, as PyTorch DDP's
// broadcast_buffers: each rank updates them from its own batches (sync=0), so before an evaluation and before a
// checkpoint every rank takes rank 0's, and the replica check compares them. Collective; nothing without state.
int train_state_broadcast(trainer *t) {
    if (t->world == 1 || t->m.n_state == 0) return ST_OK;
    const size_t bytes = t->m.n_state * sizeof(float);
    float *host = malloc(bytes);
    TRY_ALLOC(host);
    int st = backend_download(&t->be, host, t->m.state, bytes);
    if (st == ST_OK) st = comm_bcast(t->c, host, bytes, 0);
    if (st == ST_OK) st = backend_upload(&t->be, t->m.state, host, bytes);
    free(host);
    return st;
}

// Every replica starts from rank 0's parameters, optimizer state and running statistics; with the all-reduces progressing on the
// host (comm=mpi) and overlap on, the backend calls back during backward to move them on. bucket_kb=auto: the
// buckets are planned here, every rank present.
// parallel.compress=bf16|fp16: the gradient buckets go through the comm in 16 bits (comm_set_compress; sync batch
// norm's statistics stay float32). powersgd is not a wire format: its buckets reach the comm as float32.
static int compress_start(trainer *t) {
    const int mode = t->cfg->compress == COMPRESS_BF16   ? COMM_COMPRESS_BF16
                     : t->cfg->compress == COMPRESS_FP16 ? COMM_COMPRESS_FP16
                                                         : COMM_COMPRESS_NONE;
    if (mode == COMM_COMPRESS_NONE) return comm_set_compress(t->c, mode);
    if (!(comm_caps(t->c) & COMM_CAP_COMPRESS16))
        return ERR(ST_INPUT, "%s: [parallel] compress=%s: comm %s cannot all-reduce 16-bit gradients (use compress=none)",
                   t->cfg->path, comm_compress_name(mode), comm_backend_name(t->c));
    TRY(comm_set_compress(t->c, mode));
    LOG0("compression: gradient buckets all-reduced as %s (%s), cast back to float32 after; sync batch norm in "
         "float32\n", comm_compress_name(mode),
         t->m.grads16                ? "bfloat16 as written by backward, precision=bf16: no cast before sending"
         : mode == COMM_COMPRESS_BF16 ? "bfloat16, float32's range"
                                      : "fp16 with power-of-two scales: no overflow, see docs/parallelism.md");
    return ST_OK;
}

// parallel.hierarchy=node|auto: the buckets reduce within each node, across the nodes' leaders, and back
// (comm_set_hierarchy); one line says what runs, or why it is flat.
static int hierarchy_start(trainer *t) {
    const int mode = t->cfg->hierarchy == HIERARCHY_NODE   ? COMM_HIERARCHY_NODE
                     : t->cfg->hierarchy == HIERARCHY_AUTO ? COMM_HIERARCHY_AUTO
                                                           : COMM_HIERARCHY_FLAT;
    if (mode == COMM_HIERARCHY_FLAT || t->world == 1) return ST_OK;
    TRY(comm_set_hierarchy(t->c, mode, t->hooks->fake_nodes));
    LOG0("%s\n", comm_hierarchy_line(t->c));
    return ST_OK;
}

int train_ddp_start(trainer *t) {
    int st = comm_bind_stream(t->c, backend_stream(&t->be), t->async_backend);
    if (st == ST_OK) st = hierarchy_start(t);
    if (st == ST_OK) st = compress_start(t);
    float *host = NULL;
    if (st == ST_OK) st = train_host_state(t, &host);
    if (st == ST_OK)
        st = comm_bcast(t->c, host, (size_t)(optim_n_state(&t->opt) + 1) * t->m.n_params * sizeof(float), 0);
    if (st == ST_OK) st = train_host_state_upload(t, host);
    free(host);
    if (st == ST_OK) st = train_state_broadcast(t);
    if (st == ST_OK && t->cfg->bucket_kb == 0) st = buckets_auto(t);
    if (st == ST_OK) st = psgd_setup(t);
    if (st == ST_OK && t->host_comm && t->overlap) backend_set_progress(&t->be, progress_hook, t);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Agreement: every rank trains on the same data and holds the same parameters (hashes compared).

// Every rank must train on the same data: the loaded sets' shapes and a fingerprint of their bytes (the same
// paths may hold other files on other hosts). Compared like the configuration (comm_agree_text).
int train_data_agree(trainer *t) {
    const dataset *tr = &t->train, *te = &t->test;
    char text[256];
    snprintf(text, sizeof text, "train=%d samples of %dx%dx%d, hash %016" PRIx64 "\ntest=%d samples, hash %016" PRIx64 "\n",
             tr->n, tr->c, tr->h, tr->w, train_data_hash(t), te->n, t->sets ? t->sets[2].digest : train_dataset_hash(te));
    return comm_agree_text(t->c, text, "the data");
}

// The hash of n floats of backend memory (0 floats: the empty hash); `bump` adds 1 to the first (test hook).
static int backend_hash(trainer *t, const float *buf, size_t n, int bump, uint64_t *h) {
    float *host = malloc((n ? n : 1) * sizeof(float));
    TRY_ALLOC(host);
    int st = n ? backend_download(&t->be, host, buf, n * sizeof(float)) : ST_OK;
    if (bump && n) host[0] += 1.0f;
    *h = train_fnv1a(host, n * sizeof(float));
    free(host);
    return st;
}

// Every rank holds the same parameters and the same running statistics (after train_state_broadcast).
int train_replicas_check(trainer *t) {
    // Test hook (reliability tests): change one parameter (or running statistic) on one rank to prove the check
    // catches it.
    const int bump = t->hooks->corrupt_rank == t->rank && t->world > 1;
    uint64_t h[2];
    TRY(backend_hash(t, t->m.params, t->m.n_params, bump && !t->hooks->corrupt_state, &h[0]));
    TRY(backend_hash(t, t->m.state, t->m.n_state, bump && t->hooks->corrupt_state, &h[1]));
    static const char *const what[2] = {"parameters", "running statistics"};
    uint64_t *all = malloc((size_t)t->world * sizeof *all);
    TRY_ALLOC(all);
    int st = ST_OK;
    for (int k = 0; k < 2 && st == ST_OK; k++) {
        st = comm_allgather_u64(t->c, h[k], all);
        // Every rank sees the same hashes, so a mismatch is collective; a timeout of the gather is not.
        for (int r = 1; st == ST_OK && r < t->world; r++)
            if (all[r] != all[0]) {
                st = ERR(ST_COMM, "replica mismatch after epoch %d: %s of rank %d (hash %016" PRIx64
                                  ") differ from rank 0 (hash %016" PRIx64 ")",
                         t->epoch + 1, what[k], r, all[r], all[0]);
                err_mark_collective(0);
            }
    }
    free(all);
    return st;
}
