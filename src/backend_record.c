// backend_record.c — CUDA stream capture emulated on a synchronous backend (normally the CPU one).
//
// Why: a CUDA Graph replays exactly the kernels issued during its capture, with the arguments they had then,
// and nothing else. A training step is only correct under a graph when it keeps that discipline: every
// buffer at a fixed address, every host -> device upload (the batch indices, the optimizer's lr and t) made
// outside the capture and read from backend memory by the ops, and nothing run, waited on or allocated
// inside the capture. On a GPU a breach shows as stale learning rates or a failed capture; this wrapper makes
// the same breaches visible on a CPU-only machine, where the tests and the CI run:
//   - Inside a capture the stream ops (copy, zero, gather, conv/pool/dense forward and backward,
//     softmax_xent, bn_stats/apply/grad_stats/grad_input, adam_step, sgd_step, scale, count_nonfinite, clip_grad_norm, add, mark_record) are recorded, NOT executed.
//     A record keeps the op's arguments by value: shape descriptors are copied (cuDNN bakes them in at
//     capture), pointers stay pointers, so the data behind them (hyper-parameters, index buffers) is read
//     when the graph is replayed, as a kernel reads device memory when it runs.
//   - Every other op (alloc, free, upload, download, sync, conv_prepare/release, the mark_* calls other
//     than mark_record, replay) fails with ST_RUNTIME inside a capture and invalidates it, as an illegal
//     call invalidates a CUDA capture: later stream ops and capture_end then fail and no graph is left.
//     free, conv_release and mark_destroy cannot report an error: they only invalidate, and do NOT release
//     (a leak on an error path, rather than a use-after-free at replay).
//   - capture_end turns the records into the graph (an empty capture is a valid empty graph); replay runs
//     them in order through the inner backend and returns the first error.
// Outside a capture every op forwards unchanged. The table keeps the inner backend's name, so the trainer's
// output does not change; stream is NULL (the inner CPU backend has none), set_progress forwards.
// This is stricter than the CUDA backend in one respect: its upload/download/sync/alloc refuse before
// calling CUDA, which leaves the capture valid; here any refused call invalidates it.
#include "backend_record.h"

#include <stdlib.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Records: one tagged union per stream op

typedef enum rec_op {
    OP_COPY, OP_ZERO, OP_GATHER, OP_CONV_FWD, OP_CONV_BWD, OP_POOL_FWD, OP_POOL_BWD, OP_DENSE_FWD,
    OP_DENSE_BWD, OP_XENT, OP_BN_STATS, OP_BN_APPLY, OP_BN_GSTATS, OP_BN_GINPUT, OP_ADAM, OP_SGD, OP_SCALE, OP_NONFINITE, OP_CLIP, OP_ADD, OP_MARK,
    // layer ops of issue 14 part 3
    OP_ADD_ACT, OP_ACT_BWD, OP_CHAN_COPY, OP_DROPOUT, OP_AVGPOOL_FWD, OP_AVGPOOL_BWD,
} rec_op;

typedef struct rec {
    rec_op op;
    union {
        struct { void *dst; const void *src; size_t bytes; } copy;
        struct { void *ptr; size_t bytes; } zero;
        struct gather_args {
            const uint8_t *images, *labels;
            const int32_t *index;
            int n, sample_elems;
            const gather_aug *aug;
            float *x;
            int32_t *y;
        } gather;
        struct conv_fwd_args { conv_desc d; const float *x, *w, *b; float *y; void *ws; } conv_fwd;
        struct conv_bwd_args { conv_desc d; const float *x, *w, *y; float *dy, *dx, *dw, *db; void *ws; } conv_bwd;
        struct pool_fwd_args { pool_desc d; const float *x; float *y; int32_t *argmax; } pool_fwd;
        struct pool_bwd_args { pool_desc d; const float *dy; const int32_t *argmax; float *dx; } pool_bwd;
        struct dense_fwd_args { int n, in, out, act; const float *x, *w, *b; float *y; } dense_fwd;
        struct dense_bwd_args { int n, in, out, act; const float *x, *w, *y; float *dy, *dx, *dw, *db; } dense_bwd;
        struct xent_args {
            int n, classes;
            const float *logits;
            const int32_t *labels;
            float smoothing;
            float *dlogits;
            double *loss_acc;
            int32_t *correct_acc;
        } xent;
        struct { bn_desc d; const float *x; float *stats; } bn_stats;
        struct bn_apply_args { bn_desc d; const float *x, *stats, *w, *b; float *running, *save, *y; } bn_apply;
        struct bn_gstats_args { bn_desc d; const float *x, *y, *save; float *dy, *dw, *db, *gstats; } bn_gstats;
        struct bn_ginput_args { bn_desc d; const float *x, *save, *w, *gstats, *dz; float *dx; } bn_ginput;
        struct adam_args { size_t n; float *p; const float *g; float *m, *v; const adam_hyper *h; } adam;
        struct { size_t n; float *p; const float *g; float *vel; const sgd_hyper *h; } sgd;
        struct { size_t n; float alpha; float *x; } scale;
        struct { size_t n; const float *x; int32_t *out; } nonfinite;
        struct { size_t n; float *g; float max_norm; double *sumsq; } clip;
        struct { size_t n; const float *x; float *y; } add;
        struct { void *mark; } mark;
        // layer ops of issue 14 part 3
        struct { size_t n; int act; const float *a, *b; float *y; } add_act;
        struct { size_t n; int act; const float *y, *dy; float *dx; } act_bwd;
        struct chan_args { int n, c, hw; const float *src; int src_c, src_off; float *dst; int dst_c, dst_off; } chan;
        struct { size_t n; float rate; const dropout_key *key; uint32_t stream; const float *x; float *y; } dropout;
        struct avgpool_args { int n, c, h, w, kh, kw, stride; const float *in; float *out; } avgpool;
    } u;
} rec;

typedef struct rec_ctx {
    backend inner;
    backend_ops ops;         // this wrapper's table: the template below with the inner backend's name
    int capturing;           // between capture_begin and capture_end
    const char *invalid_by;  // the forbidden call that invalidated the open capture, NULL while valid
    int have_graph;          // recs[0..n) is a finished capture
    int refuse;              // test aid: every capture is invalidated at once (backend_record_refuse_captures)
    rec *recs;
    size_t n, cap;
} rec_ctx;

// Runs one record on the inner backend: the whole op at replay, and outside a capture the op as issued.
static int rec_run(const backend *be, const rec *r) {
    const backend_ops *o = be->ops;
    void *x = be->ctx;
    switch (r->op) {
    case OP_COPY: return o->copy(x, r->u.copy.dst, r->u.copy.src, r->u.copy.bytes);
    case OP_ZERO: return o->zero(x, r->u.zero.ptr, r->u.zero.bytes);
    case OP_GATHER: {
        const struct gather_args *a = &r->u.gather;
        return o->gather(x, a->images, a->labels, a->index, a->n, a->sample_elems, a->aug, a->x, a->y);
    }
    case OP_CONV_FWD: {
        const struct conv_fwd_args *a = &r->u.conv_fwd;
        return o->conv_forward(x, &a->d, a->x, a->w, a->b, a->y, a->ws);
    }
    case OP_CONV_BWD: {
        const struct conv_bwd_args *a = &r->u.conv_bwd;
        return o->conv_backward(x, &a->d, a->x, a->w, a->y, a->dy, a->dx, a->dw, a->db, a->ws);
    }
    case OP_POOL_FWD: {
        const struct pool_fwd_args *a = &r->u.pool_fwd;
        return o->pool_forward(x, &a->d, a->x, a->y, a->argmax);
    }
    case OP_POOL_BWD: {
        const struct pool_bwd_args *a = &r->u.pool_bwd;
        return o->pool_backward(x, &a->d, a->dy, a->argmax, a->dx);
    }
    case OP_DENSE_FWD: {
        const struct dense_fwd_args *a = &r->u.dense_fwd;
        return o->dense_forward(x, a->n, a->in, a->out, a->act, a->x, a->w, a->b, a->y);
    }
    case OP_DENSE_BWD: {
        const struct dense_bwd_args *a = &r->u.dense_bwd;
        return o->dense_backward(x, a->n, a->in, a->out, a->act, a->x, a->w, a->y, a->dy, a->dx, a->dw, a->db);
    }
    case OP_XENT: {
        const struct xent_args *a = &r->u.xent;
        return o->softmax_xent(x, a->n, a->classes, a->logits, a->labels, a->smoothing, a->dlogits, a->loss_acc,
                               a->correct_acc);
    }
    case OP_BN_STATS: return o->bn_stats(x, &r->u.bn_stats.d, r->u.bn_stats.x, r->u.bn_stats.stats);
    case OP_BN_APPLY: {
        const struct bn_apply_args *a = &r->u.bn_apply;
        return o->bn_apply(x, &a->d, a->x, a->stats, a->w, a->b, a->running, a->save, a->y);
    }
    case OP_BN_GSTATS: {
        const struct bn_gstats_args *a = &r->u.bn_gstats;
        return o->bn_grad_stats(x, &a->d, a->x, a->y, a->save, a->dy, a->dw, a->db, a->gstats);
    }
    case OP_BN_GINPUT: {
        const struct bn_ginput_args *a = &r->u.bn_ginput;
        return o->bn_grad_input(x, &a->d, a->x, a->save, a->w, a->gstats, a->dz, a->dx);
    }
    case OP_ADAM: {
        const struct adam_args *a = &r->u.adam;
        return o->adam_step(x, a->n, a->p, a->g, a->m, a->v, a->h);
    }
    case OP_SGD: return o->sgd_step(x, r->u.sgd.n, r->u.sgd.p, r->u.sgd.g, r->u.sgd.vel, r->u.sgd.h);
    case OP_SCALE: return o->scale(x, r->u.scale.n, r->u.scale.alpha, r->u.scale.x);
    case OP_NONFINITE: return o->count_nonfinite(x, r->u.nonfinite.n, r->u.nonfinite.x, r->u.nonfinite.out);
    case OP_CLIP: return o->clip_grad_norm(x, r->u.clip.n, r->u.clip.g, r->u.clip.max_norm, r->u.clip.sumsq);
    case OP_ADD: return o->add(x, r->u.add.n, r->u.add.x, r->u.add.y);
    case OP_MARK: return o->mark_record(x, r->u.mark.mark);
    // layer ops of issue 14 part 3
    case OP_ADD_ACT: return o->add_act(x, r->u.add_act.n, r->u.add_act.act, r->u.add_act.a, r->u.add_act.b,
                                       r->u.add_act.y);
    case OP_ACT_BWD: return o->act_backward(x, r->u.act_bwd.n, r->u.act_bwd.act, r->u.act_bwd.y, r->u.act_bwd.dy,
                                            r->u.act_bwd.dx);
    case OP_CHAN_COPY: {
        const struct chan_args *a = &r->u.chan;
        return o->channel_copy(x, a->n, a->c, a->hw, a->src, a->src_c, a->src_off, a->dst, a->dst_c, a->dst_off);
    }
    case OP_DROPOUT: return o->dropout(x, r->u.dropout.n, r->u.dropout.rate, r->u.dropout.key, r->u.dropout.stream,
                                       r->u.dropout.x, r->u.dropout.y);
    case OP_AVGPOOL_FWD:
    case OP_AVGPOOL_BWD: {
        const struct avgpool_args *a = &r->u.avgpool;
        return (r->op == OP_AVGPOOL_FWD ? o->avgpool_forward : o->avgpool_backward)(x, a->n, a->c, a->h, a->w, a->kh,
                                                                                   a->kw, a->stride, a->in, a->out);
    }
    }
    return ERR(ST_RUNTIME, "record backend: unknown record op %d", (int)r->op);
}

// Every stream op goes through here: recorded inside a capture, run at once outside.
static int rec_issue(rec_ctx *c, const rec *r) {
    if (!c->capturing) return rec_run(&c->inner, r);
    if (c->invalid_by)
        return ERR(ST_RUNTIME, "record backend: the capture was invalidated by %s; no stream work until capture_end",
                   c->invalid_by);
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 64;
        rec *grown = realloc(c->recs, cap * sizeof *grown);
        TRY_ALLOC(grown);
        c->recs = grown;
        c->cap = cap;
    }
    c->recs[c->n++] = *r;
    return ST_OK;
}

// Calls that are not stream work: refused inside a capture, which they invalidate (as CUDA does).
static int rec_forbid(rec_ctx *c, const char *op) {
    if (!c->capturing) return ST_OK;
    if (!c->invalid_by) c->invalid_by = op;
    return ERR(ST_RUNTIME, "record backend: %s is not allowed during a capture (only stream work is); the capture "
                           "is invalidated", op);
}

// ---------------------------------------------------------------------------------------------------------
// Stream ops: build the record, then issue it

#define ISSUE(kind, member, ...) rec_issue(ctx, &(rec){.op = (kind), .u.member = {__VA_ARGS__}})

static int r_copy(void *ctx, void *dst, const void *src, size_t bytes) { return ISSUE(OP_COPY, copy, dst, src, bytes); }
static int r_zero(void *ctx, void *ptr, size_t bytes) { return ISSUE(OP_ZERO, zero, ptr, bytes); }

static int r_gather(void *ctx, const uint8_t *images, const uint8_t *labels, const int32_t *index, int n,
                    int sample_elems, const gather_aug *aug, float *x, int32_t *y) {
    return ISSUE(OP_GATHER, gather, images, labels, index, n, sample_elems, aug, x, y);
}

static int r_conv_forward(void *ctx, const conv_desc *d, const float *x, const float *w, const float *b, float *y,
                          void *ws) {
    return ISSUE(OP_CONV_FWD, conv_fwd, *d, x, w, b, y, ws);
}

static int r_conv_backward(void *ctx, const conv_desc *d, const float *x, const float *w, const float *y, float *dy,
                           float *dx, float *dw, float *db, void *ws) {
    return ISSUE(OP_CONV_BWD, conv_bwd, *d, x, w, y, dy, dx, dw, db, ws);
}

static int r_pool_forward(void *ctx, const pool_desc *d, const float *x, float *y, int32_t *argmax) {
    return ISSUE(OP_POOL_FWD, pool_fwd, *d, x, y, argmax);
}

static int r_pool_backward(void *ctx, const pool_desc *d, const float *dy, const int32_t *argmax, float *dx) {
    return ISSUE(OP_POOL_BWD, pool_bwd, *d, dy, argmax, dx);
}

static int r_dense_forward(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                           const float *b, float *y) {
    return ISSUE(OP_DENSE_FWD, dense_fwd, n, in, out, act, x, w, b, y);
}

static int r_dense_backward(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                            const float *y, float *dy, float *dx, float *dw, float *db) {
    return ISSUE(OP_DENSE_BWD, dense_bwd, n, in, out, act, x, w, y, dy, dx, dw, db);
}

static int r_softmax_xent(void *ctx, int n, int classes, const float *logits, const int32_t *labels,
                          float smoothing, float *dlogits, double *loss_acc, int32_t *correct_acc) {
    return ISSUE(OP_XENT, xent, n, classes, logits, labels, smoothing, dlogits, loss_acc, correct_acc);
}

static int r_bn_stats(void *ctx, const bn_desc *d, const float *x, float *stats) {
    return ISSUE(OP_BN_STATS, bn_stats, *d, x, stats);
}

static int r_bn_apply(void *ctx, const bn_desc *d, const float *x, const float *stats, const float *w, const float *b,
                      float *running, float *save, float *y) {
    return ISSUE(OP_BN_APPLY, bn_apply, *d, x, stats, w, b, running, save, y);
}

static int r_bn_grad_stats(void *ctx, const bn_desc *d, const float *x, const float *y, const float *save, float *dy,
                           float *dw, float *db, float *gstats) {
    return ISSUE(OP_BN_GSTATS, bn_gstats, *d, x, y, save, dy, dw, db, gstats);
}

static int r_bn_grad_input(void *ctx, const bn_desc *d, const float *x, const float *save, const float *w,
                           const float *gstats, const float *dz, float *dx) {
    return ISSUE(OP_BN_GINPUT, bn_ginput, *d, x, save, w, gstats, dz, dx);
}

static int r_adam_step(void *ctx, size_t n, float *p, const float *g, float *m, float *v, const adam_hyper *h) {
    return ISSUE(OP_ADAM, adam, n, p, g, m, v, h);
}

static int r_sgd_step(void *ctx, size_t n, float *p, const float *g, float *vel, const sgd_hyper *h) {
    return ISSUE(OP_SGD, sgd, n, p, g, vel, h);
}

static int r_scale(void *ctx, size_t n, float alpha, float *x) { return ISSUE(OP_SCALE, scale, n, alpha, x); }

static int r_count_nonfinite(void *ctx, size_t n, const float *x, int32_t *out) {
    return ISSUE(OP_NONFINITE, nonfinite, n, x, out);
}

static int r_clip_grad_norm(void *ctx, size_t n, float *g, float max_norm, double *sumsq) {
    return ISSUE(OP_CLIP, clip, n, g, max_norm, sumsq);
}

static int r_add(void *ctx, size_t n, const float *x, float *y) { return ISSUE(OP_ADD, add, n, x, y); }

// Inside a capture a CUDA mark is an event-record node: every replay records it again.
static int r_mark_record(void *ctx, void *mark) { return ISSUE(OP_MARK, mark, mark); }

// Layer ops of issue 14 part 3
static int r_add_act(void *ctx, size_t n, int act, const float *a, const float *b, float *y) {
    return ISSUE(OP_ADD_ACT, add_act, n, act, a, b, y);
}

static int r_act_backward(void *ctx, size_t n, int act, const float *y, const float *dy, float *dx) {
    return ISSUE(OP_ACT_BWD, act_bwd, n, act, y, dy, dx);
}

static int r_channel_copy(void *ctx, int n, int c, int hw, const float *src, int src_c, int src_off, float *dst,
                          int dst_c, int dst_off) {
    return ISSUE(OP_CHAN_COPY, chan, n, c, hw, src, src_c, src_off, dst, dst_c, dst_off);
}

// The key is a pointer: its step is read at replay, as a kernel reads device memory.
static int r_dropout(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const float *x,
                     float *y) {
    return ISSUE(OP_DROPOUT, dropout, n, rate, key, stream, x, y);
}

static int r_avgpool_forward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *x,
                             float *y) {
    return ISSUE(OP_AVGPOOL_FWD, avgpool, n, c, h, w, kh, kw, stride, x, y);
}

static int r_avgpool_backward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *dy,
                              float *dx) {
    return ISSUE(OP_AVGPOOL_BWD, avgpool, n, c, h, w, kh, kw, stride, dy, dx);
}

// ---------------------------------------------------------------------------------------------------------
// Other ops: forwarded outside a capture, refused (and the capture invalidated) inside one

#define INNER(c) ((rec_ctx *)(c))->inner
#define CALL(c, op, ...) INNER(c).ops->op(INNER(c).ctx, __VA_ARGS__)

static int r_alloc(void *ctx, void **ptr, size_t bytes) {
    *ptr = NULL;
    TRY(rec_forbid(ctx, "alloc"));
    return CALL(ctx, alloc, ptr, bytes);
}

static void r_free(void *ctx, void *ptr) {
    if (rec_forbid(ctx, "free") == ST_OK) CALL(ctx, free, ptr);
}

static int r_upload(void *ctx, void *dst, const void *src, size_t bytes) {
    TRY(rec_forbid(ctx, "upload"));
    return CALL(ctx, upload, dst, src, bytes);
}

static int r_download(void *ctx, void *dst, const void *src, size_t bytes) {
    TRY(rec_forbid(ctx, "download"));
    return CALL(ctx, download, dst, src, bytes);
}

static int r_sync(void *ctx) {
    TRY(rec_forbid(ctx, "sync"));
    return INNER(ctx).ops->sync(INNER(ctx).ctx);
}

static int r_conv_prepare(void *ctx, conv_desc *d, size_t *workspace_bytes) {
    TRY(rec_forbid(ctx, "conv_prepare"));
    return CALL(ctx, conv_prepare, d, workspace_bytes);
}

static void r_conv_release(void *ctx, conv_desc *d) {
    if (rec_forbid(ctx, "conv_release") == ST_OK) CALL(ctx, conv_release, d);
}

static int r_mark_create(void *ctx, void **mark) {
    *mark = NULL;
    TRY(rec_forbid(ctx, "mark_create"));
    return CALL(ctx, mark_create, mark);
}

static void r_mark_destroy(void *ctx, void *mark) {
    if (rec_forbid(ctx, "mark_destroy") == ST_OK) CALL(ctx, mark_destroy, mark);
}

static int r_mark_query(void *ctx, void *mark, int *done) {
    *done = 0;
    TRY(rec_forbid(ctx, "mark_query"));
    return CALL(ctx, mark_query, mark, done);
}

static int r_mark_elapsed(void *ctx, void *a, void *b, double *seconds) {
    *seconds = 0;
    TRY(rec_forbid(ctx, "mark_elapsed"));
    return CALL(ctx, mark_elapsed, a, b, seconds);
}

static void r_set_progress(void *ctx, void (*fn)(void *arg), void *arg) { CALL(ctx, set_progress, fn, arg); }

// ---------------------------------------------------------------------------------------------------------
// Capture and replay

static int r_capture_begin(void *ctx) {
    rec_ctx *c = ctx;
    if (c->capturing) return ERR(ST_RUNTIME, "record backend: capture_begin while a capture is already open");
    c->have_graph = 0;  // capture_begin replaces the graph
    c->n = 0;
    c->invalid_by = c->refuse ? "an op the test made refuse capture" : NULL;
    c->capturing = 1;
    return ST_OK;
}

static int r_capture_end(void *ctx) {
    rec_ctx *c = ctx;
    if (!c->capturing) return ERR(ST_RUNTIME, "record backend: capture_end without capture_begin");
    c->capturing = 0;
    if (c->invalid_by) {
        c->n = 0;
        return ERR(ST_RUNTIME, "record backend: the capture was invalidated by %s during it (no graph captured)",
                   c->invalid_by);
    }
    c->have_graph = 1;
    return ST_OK;
}

static int r_replay(void *ctx) {
    rec_ctx *c = ctx;
    TRY(rec_forbid(c, "replay"));
    if (!c->have_graph) return ERR(ST_RUNTIME, "record backend: replay without a captured graph (capture_end first)");
    for (size_t i = 0; i < c->n; i++) TRY(rec_run(&c->inner, &c->recs[i]));
    return ST_OK;
}

static void r_destroy(void *ctx) {
    rec_ctx *c = ctx;
    if (!c) return;
    free(c->recs);
    backend_destroy(&c->inner);
    free(c);
}

// ---------------------------------------------------------------------------------------------------------
// Table and constructor

static const backend_ops record_ops = {
    .destroy = r_destroy,
    .alloc = r_alloc,
    .free = r_free,
    .upload = r_upload,
    .download = r_download,
    .copy = r_copy,
    .zero = r_zero,
    .sync = r_sync,
    .gather = r_gather,
    .conv_prepare = r_conv_prepare,
    .conv_release = r_conv_release,
    .conv_forward = r_conv_forward,
    .conv_backward = r_conv_backward,
    .pool_forward = r_pool_forward,
    .pool_backward = r_pool_backward,
    .dense_forward = r_dense_forward,
    .dense_backward = r_dense_backward,
    .softmax_xent = r_softmax_xent,
    .bn_stats = r_bn_stats,
    .bn_apply = r_bn_apply,
    .bn_grad_stats = r_bn_grad_stats,
    .bn_grad_input = r_bn_grad_input,
    .adam_step = r_adam_step,
    .sgd_step = r_sgd_step,
    .scale = r_scale,
    .count_nonfinite = r_count_nonfinite,
    .clip_grad_norm = r_clip_grad_norm,
    .add = r_add,
    .set_progress = r_set_progress,
    .mark_create = r_mark_create,
    .mark_destroy = r_mark_destroy,
    .mark_record = r_mark_record,
    .mark_query = r_mark_query,
    .mark_elapsed = r_mark_elapsed,
    .stream = NULL,  // no stream to order a comm stream against: ops run on the host at replay
    .capture_begin = r_capture_begin,
    .capture_end = r_capture_end,
    .replay = r_replay,
    // layer ops of issue 14 part 3
    .add_act = r_add_act,
    .act_backward = r_act_backward,
    .channel_copy = r_channel_copy,
    .dropout = r_dropout,
    .avgpool_forward = r_avgpool_forward,
    .avgpool_backward = r_avgpool_backward,
};

int backend_record_refuse_captures(backend *be) {
    if (!be || !be->ops || be->ops->capture_begin != r_capture_begin)
        return ERR(ST_RUNTIME, "record backend: refuse_captures on a backend that is not the record wrapper");
    ((rec_ctx *)be->ctx)->refuse = 1;
    return ST_OK;
}

int backend_record_wrap(backend *be) {
    if (!be || !be->ops) return ERR(ST_INPUT, "record backend: no backend to wrap");
    rec_ctx *c = calloc(1, sizeof *c);
    TRY_ALLOC(c);
    c->inner = *be;
    c->ops = record_ops;
    c->ops.name = be->ops->name;  // the trainer reports the backend that computes
    if (!be->ops->set_progress) c->ops.set_progress = NULL;
    be->ops = &c->ops;
    be->ctx = c;
    return ST_OK;
}
