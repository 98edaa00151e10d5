// backend_record.c — CUDA stream capture emulated on a synchronous backend (normally the CPU one).
//
// Why: a CUDA Graph replays exactly the kernels issued during its capture, with the arguments they had then,
// and nothing else. A training step is only correct under a graph when it keeps that discipline: every
// buffer at a fixed address, every host -> device upload (the batch indices, the optimizer's lr and t) made
// outside the capture and read from backend memory by the ops, and nothing run, waited on or allocated
// inside the capture. On a GPU a breach shows as stale learning rates or a failed capture; this wrapper makes
// the same breaches visible on a CPU-only machine, where the tests and the CI run:
//   - Inside a capture the stream ops (capture column STREAM or STREAM_DESC in src/backend_ops.def: copy, zero,
//     gather, the layer ops' forward and backward, the optimizers, the utilities, mark_record) are recorded, NOT
//     executed. A record keeps the op's arguments by value: shape descriptors are copied (cuDNN bakes them in at
//     capture), pointers stay pointers, so the data behind them (hyper-parameters, index buffers) is read
//     when the graph is replayed, as a kernel reads device memory when it runs.
//   - Every other op (HOST: free, upload, download, sync, conv_prepare/release, mark_destroy; and by hand here:
//     alloc, mark_create/query/elapsed, replay) fails with ST_RUNTIME inside a capture and invalidates it, as an
//     illegal call invalidates a CUDA capture: later stream ops and capture_end then fail and no graph is left.
//     free, conv_release and mark_destroy cannot report an error: they only invalidate, and do NOT release
//     (a leak on an error path, rather than a use-after-free at replay).
//   - capture_end turns the records into the graph (an empty capture is a valid empty graph); replay runs
//     them in order through the inner backend and returns the first error.
// Outside a capture every op forwards unchanged. The table keeps the inner backend's name, so the trainer's
// output does not change; set_progress and stream (PASS) forward, and stay NULL where the inner backend's are.
// The records, their replay and the table are made from src/backend_ops.def: a new stream op needs nothing here.
// This is stricter than the CUDA backend in one respect: its upload/download/sync/alloc refuse before
// calling CUDA, which leaves the capture valid; here any refused call invalidates it.
#include "backend_record.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Generating from backend_ops.def: REC_EACH(m, sep, a, b, ...) is m(a) sep() m(b) ... for 1 to 12 items (a
// recorded op with a 13th parameter fails to compile here: add REC_EACH_13 and a count to REC_NARGS).

#define REC_CAT_(a, b) a##b
#define REC_CAT(a, b) REC_CAT_(a, b)
#define REC_NARGS_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, count, ...) count
#define REC_NARGS(...) REC_NARGS_(__VA_ARGS__, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define REC_EACH(m, sep, ...) REC_CAT(REC_EACH_, REC_NARGS(__VA_ARGS__))(m, sep, __VA_ARGS__)
#define REC_EACH_1(m, sep, x) m(x)
#define REC_EACH_2(m, sep, x, ...) m(x) sep() REC_EACH_1(m, sep, __VA_ARGS__)
#define REC_EACH_3(m, sep, x, ...) m(x) sep() REC_EACH_2(m, sep, __VA_ARGS__)
#define REC_EACH_4(m, sep, x, ...) m(x) sep() REC_EACH_3(m, sep, __VA_ARGS__)
#define REC_EACH_5(m, sep, x, ...) m(x) sep() REC_EACH_4(m, sep, __VA_ARGS__)
#define REC_EACH_6(m, sep, x, ...) m(x) sep() REC_EACH_5(m, sep, __VA_ARGS__)
#define REC_EACH_7(m, sep, x, ...) m(x) sep() REC_EACH_6(m, sep, __VA_ARGS__)
#define REC_EACH_8(m, sep, x, ...) m(x) sep() REC_EACH_7(m, sep, __VA_ARGS__)
#define REC_EACH_9(m, sep, x, ...) m(x) sep() REC_EACH_8(m, sep, __VA_ARGS__)
#define REC_EACH_10(m, sep, x, ...) m(x) sep() REC_EACH_9(m, sep, __VA_ARGS__)
#define REC_EACH_11(m, sep, x, ...) m(x) sep() REC_EACH_10(m, sep, __VA_ARGS__)
#define REC_EACH_12(m, sep, x, ...) m(x) sep() REC_EACH_11(m, sep, __VA_ARGS__)
#define REC_COMMA() ,
#define REC_NOTHING()
// The parameter (or argument) list of a .def line without its first item, BE_SELF (BE_ARG).
#define REC_TAIL_(self, ...) __VA_ARGS__
#define REC_TAIL(list) REC_TAIL_ list
// REC_IF_STREAM_<capture>(code): code for the ops a capture records, nothing for the others.
#define REC_IF_STREAM_STREAM(...) __VA_ARGS__
#define REC_IF_STREAM_STREAM_DESC(...) __VA_ARGS__
#define REC_IF_STREAM_HOST(...)
#define REC_IF_STREAM_PASS(...)
#define REC_IF_STREAM_OWN(...)

// ---------------------------------------------------------------------------------------------------------
// Records: one tagged union of the stream ops' arguments

#define REC_FIELD(param) param;
#define BE_SELF void *ctx
#define BACKEND_OP(ret, name, slot, capture, params, args) \
    REC_IF_STREAM_##capture(struct name##_args { REC_EACH(REC_FIELD, REC_NOTHING, REC_TAIL(params)) };)
#include "backend_ops.def"
#undef BACKEND_OP

typedef enum rec_op {
#define BACKEND_OP(ret, name, slot, capture, params, args) REC_IF_STREAM_##capture(REC_##name, )
#include "backend_ops.def"
#undef BACKEND_OP
} rec_op;

typedef struct rec {
    rec_op op;
    union {
#define BACKEND_OP(ret, name, slot, capture, params, args) REC_IF_STREAM_##capture(struct name##_args name;)
#include "backend_ops.def"
#undef BACKEND_OP
    } u;
    // STREAM_DESC ops: *d as it was at capture (u's d is then unused: replay passes this copy).
    union {
        conv_desc conv;
        pool_desc pool;
        bn_desc bn;
    } desc;
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
#define REC_ARG(arg) a_.arg
#define REC_RUN_STREAM(name, args)                                                                         \
    case REC_##name: {                                                                                     \
        struct name##_args a_ = r->u.name;                                                                 \
        return backend_##name(be, REC_EACH(REC_ARG, REC_COMMA, REC_TAIL(args)));                           \
    }
#define REC_RUN_STREAM_DESC(name, args)                                                                    \
    case REC_##name: {                                                                                     \
        struct name##_args a_ = r->u.name;                                                                 \
        a_.d = (const void *)&r->desc;                                                                     \
        return backend_##name(be, REC_EACH(REC_ARG, REC_COMMA, REC_TAIL(args)));                           \
    }
#define REC_RUN_HOST(name, args)
#define REC_RUN_PASS(name, args)
#define REC_RUN_OWN(name, args)
static int rec_run(const backend *be, const rec *r) {
    switch (r->op) {
#define BACKEND_OP(ret, name, slot, capture, params, args) REC_RUN_##capture(name, args)
#include "backend_ops.def"
#undef BACKEND_OP
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
// The ops of the table, r_<op>: stream ops build their record and issue it; HOST ops are refused inside a
// capture and forwarded outside; PASS ops are forwarded. Inside a capture a CUDA mark is an event-record node,
// recorded again by every replay: mark_record is a stream op.

#define INNER(ctx) (&((rec_ctx *)(ctx))->inner)
#define BE_ARG INNER(ctx)
#define REC_OP_STREAM(ret, name, params, args)                                                            \
    static int r_##name params {                                                                           \
        const rec r_ = {.op = REC_##name, .u.name = {REC_TAIL(args)}};                                    \
        return rec_issue(ctx, &r_);                                                                        \
    }
#define REC_OP_STREAM_DESC(ret, name, params, args)                                                       \
    static int r_##name params {                                                                           \
        rec r_ = {.op = REC_##name, .u.name = {REC_TAIL(args)}};                                           \
        _Static_assert(sizeof *r_.u.name.d <= sizeof r_.desc, "rec.desc lacks this descriptor type");      \
        memcpy(&r_.desc, r_.u.name.d, sizeof *r_.u.name.d);                                                \
        return rec_issue(ctx, &r_);                                                                        \
    }
#define REC_HOST_int(name, args)         \
    TRY(rec_forbid(ctx, #name));         \
    return backend_##name args;
#define REC_HOST_void(name, args) \
    if (rec_forbid(ctx, #name) == ST_OK) backend_##name args;
#define REC_OP_HOST(ret, name, params, args) \
    static BE_RET_##ret r_##name params { REC_HOST_##ret(name, args) }
#define REC_OP_PASS(ret, name, params, args) \
    static BE_RET_##ret r_##name params { BE_RETURN_##ret backend_##name args; }
#define REC_OP_OWN(ret, name, params, args)  // below
#define BACKEND_OP(ret, name, slot, capture, params, args) REC_OP_##capture(ret, name, params, args)
#include "backend_ops.def"
#undef BACKEND_OP

// ---------------------------------------------------------------------------------------------------------
// Ops written by hand: refused inside a capture with their outputs cleared (the caller sees no stale handle)

static int r_alloc(void *ctx, void **ptr, size_t bytes) {
    *ptr = NULL;
    TRY(rec_forbid(ctx, "alloc"));
    return backend_alloc(INNER(ctx), ptr, bytes);
}

static int r_mark_create(void *ctx, void **mark) {
    *mark = NULL;
    TRY(rec_forbid(ctx, "mark_create"));
    return backend_mark_create(INNER(ctx), mark);
}

static int r_mark_query(void *ctx, void *mark, int *done) {
    *done = 0;
    TRY(rec_forbid(ctx, "mark_query"));
    return backend_mark_query(INNER(ctx), mark, done);
}

static int r_mark_elapsed(void *ctx, void *a, void *b, double *seconds) {
    *seconds = 0;
    TRY(rec_forbid(ctx, "mark_elapsed"));
    return backend_mark_elapsed(INNER(ctx), a, b, seconds);
}

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
#define BACKEND_OP(ret, name, slot, capture, params, args) .name = r_##name,
#include "backend_ops.def"
#undef BACKEND_OP
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
#define REC_IF_PASS_PASS(...) __VA_ARGS__
#define REC_IF_PASS_STREAM(...)
#define REC_IF_PASS_STREAM_DESC(...)
#define REC_IF_PASS_HOST(...)
#define REC_IF_PASS_OWN(...)
#define BACKEND_OP(ret, name, slot, capture, params, args) \
    REC_IF_PASS_##capture(if (!be->ops->name) c->ops.name = NULL;)
#include "backend_ops.def"
#undef BACKEND_OP
    be->ops = &c->ops;
    be->ctx = c;
    return ST_OK;
}
