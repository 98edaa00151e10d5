// test_backend_record.c — the capture-emulating wrapper (src/backend_record.c) around a real CPU backend:
// forwarding outside a capture, recording without running inside one, arguments by value and pointed-to
// data read at replay, the calls a capture forbids, and a whole captured training step replayed against eager
// steps on a plain CPU backend (bit-identical: both run the same CPU ops on one thread).
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "backend_record.h"
#include "common.h"
#include "test_util.h"

// ---------------------------------------------------------------------------------------------------------
// Helpers

#define OK(expr)                                                                                           \
    do {                                                                                                   \
        int st_ = (expr);                                                                                  \
        if (st_ != ST_OK) fail_msg("%s failed (status %d): %s", #expr, st_, err_msg());                   \
    } while (0)

// expr fails with ST_RUNTIME and a message containing needle.
#define FAILS(expr, needle)                                                                                \
    do {                                                                                                   \
        err_clear();                                                                                       \
        int st_ = (expr);                                                                                  \
        if (st_ != ST_RUNTIME) fail_msg("%s: status %d, want ST_RUNTIME", #expr, st_);                     \
        if (!strstr(err_msg(), needle)) fail_msg("%s: message \"%s\" lacks \"%s\"", #expr, err_msg(), needle); \
        err_clear();                                                                                       \
    } while (0)

static backend g_cpu;  // the plain reference backend

static backend make_rec(void) {
    backend be;
    err_clear();
    OK(backend_cpu_create(&be, 1));
    OK(backend_record_wrap(&be));
    return be;
}

// Backend memory holding a copy of host (zeros when host is NULL).
static void *put(backend *be, const void *host, size_t bytes) {
    void *p = NULL;
    OK(be->ops->alloc(be->ctx, &p, bytes));
    if (host) OK(be->ops->upload(be->ctx, p, host, bytes));
    return p;
}

static void get(backend *be, void *host, const void *p, size_t bytes) {
    OK(be->ops->download(be->ctx, host, p, bytes));
}

static void fill(rng *r, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * (2 * rng_uniform(r) - 1);
}

static void sleep_ms(int ms) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

// The recorder wraps every op of the backend table: a new op left out of backend_record.c fails here (the
// trainer's CPU capture emulation would call a NULL slot).
static void test_table_full(void **state) {
    (void)state;
    backend rb = make_rec();
    const char *first = NULL;
    const int missing = backend_ops_missing(rb.ops, &first);
    if (missing) fail_msg("record backend: %d empty slots, the first is %s", missing, first);
    backend_destroy(&rb);
}

// ---------------------------------------------------------------------------------------------------------
// Outside a capture

static void test_forwards_outside_capture(void **state) {
    (void)state;
    backend rb = make_rec();
    assert_string_equal(rb.ops->name, g_cpu.ops->name);
    assert_null(rb.ops->stream);
    assert_non_null(rb.ops->set_progress);
    assert_non_null(rb.ops->capture_begin);
    rng r;
    rng_seed(&r, 1);
    enum { N = 6, IN = 7, OUT = 3 };
    float hx[N * IN], hw[OUT * IN], hb[OUT], yr[N * OUT], yc[N * OUT], sr[N * IN], sc[N * IN];
    fill(&r, hx, N * IN, 1), fill(&r, hw, OUT * IN, 1), fill(&r, hb, OUT, 1);
    float *x[2], *w[2], *b[2], *y[2];
    backend *bes[2] = {&rb, &g_cpu};
    for (int i = 0; i < 2; i++) {
        x[i] = put(bes[i], hx, sizeof hx), w[i] = put(bes[i], hw, sizeof hw), b[i] = put(bes[i], hb, sizeof hb);
        y[i] = put(bes[i], NULL, sizeof yr);
        OK(bes[i]->ops->dense_forward(bes[i]->ctx, N, IN, OUT, ACT_RELU, x[i], w[i], b[i], y[i]));
        OK(bes[i]->ops->scale(bes[i]->ctx, N * IN, -1.5f, x[i]));
    }
    get(&rb, yr, y[0], sizeof yr), get(&g_cpu, yc, y[1], sizeof yc);
    get(&rb, sr, x[0], sizeof sr), get(&g_cpu, sc, x[1], sizeof sc);
    assert_memory_equal(yr, yc, sizeof yr);
    assert_memory_equal(sr, sc, sizeof sr);
    assert_true(sr[0] == -1.5f * hx[0]);
    for (int i = 0; i < 2; i++) {
        void *all[] = {x[i], w[i], b[i], y[i]};
        for (int k = 0; k < 4; k++) bes[i]->ops->free(bes[i]->ctx, all[k]);
    }
    backend_destroy(&rb);
}

// ---------------------------------------------------------------------------------------------------------
// Capture and replay

static void test_capture_records_not_runs(void **state) {
    (void)state;
    backend rb = make_rec();
    const float h[4] = {1, 2, 3, -4};
    float got[4];
    float *x = put(&rb, h, sizeof h);
    OK(rb.ops->capture_begin(rb.ctx));
    OK(rb.ops->scale(rb.ctx, 4, 2.f, x));
    OK(rb.ops->capture_end(rb.ctx));
    get(&rb, got, x, sizeof got);
    assert_memory_equal(got, h, sizeof h);  // not run during the capture
    for (int rep = 1; rep <= 2; rep++) {
        OK(rb.ops->replay(rb.ctx));
        get(&rb, got, x, sizeof got);
        for (int i = 0; i < 4; i++) assert_true(got[i] == h[i] * (float)(2 << (rep - 1)));
    }
    rb.ops->free(rb.ctx, x);
    backend_destroy(&rb);
}

// The hyper-parameters live in backend memory and are uploaded between replays: each replay must read the
// current ones, like a graph's kernel reads device memory when it runs.
static void test_pointers_read_at_replay(void **state) {
    (void)state;
    backend rb = make_rec();
    enum { N = 33 };
    rng r;
    rng_seed(&r, 3);
    float hp[N], hg[N], pr[N], pc[N], vr[N], vc[N];
    fill(&r, hp, N, 1), fill(&r, hg, N, 1);
    float *p[2], *g[2], *vel[2];
    sgd_hyper *hy[2];
    backend *bes[2] = {&rb, &g_cpu};
    const sgd_hyper stale = {.lr = 1.0f, .momentum = 0.5f, .weight_decay = 0.1f};
    for (int i = 0; i < 2; i++) {
        p[i] = put(bes[i], hp, sizeof hp), g[i] = put(bes[i], hg, sizeof hg), vel[i] = put(bes[i], NULL, sizeof hp);
        hy[i] = put(bes[i], &stale, sizeof stale);  // what the hyper holds at capture time: must not be used
    }
    OK(rb.ops->capture_begin(rb.ctx));
    OK(rb.ops->sgd_step(rb.ctx, N, p[0], g[0], vel[0], hy[0]));
    OK(rb.ops->capture_end(rb.ctx));
    const float lrs[3] = {0.1f, 0.03f, 0.2f};
    for (int s = 0; s < 3; s++) {
        sgd_hyper h = {.lr = lrs[s], .momentum = 0.9f, .weight_decay = 1e-3f};
        OK(rb.ops->upload(rb.ctx, hy[0], &h, sizeof h));
        OK(rb.ops->replay(rb.ctx));
        OK(g_cpu.ops->upload(g_cpu.ctx, hy[1], &h, sizeof h));
        OK(g_cpu.ops->sgd_step(g_cpu.ctx, N, p[1], g[1], vel[1], hy[1]));
    }
    get(&rb, pr, p[0], sizeof pr), get(&g_cpu, pc, p[1], sizeof pc);
    get(&rb, vr, vel[0], sizeof vr), get(&g_cpu, vc, vel[1], sizeof vc);
    assert_memory_equal(pr, pc, sizeof pr);
    assert_memory_equal(vr, vc, sizeof vr);
    assert_memory_not_equal(pr, hp, sizeof pr);
    for (int i = 0; i < 2; i++) {
        void *all[] = {p[i], g[i], vel[i], hy[i]};
        for (int k = 0; k < 4; k++) bes[i]->ops->free(bes[i]->ctx, all[k]);
    }
    backend_destroy(&rb);
}

// The gather's augmentation is read at replay, as the CUDA kernel reads it from device memory: a graph captured
// in epoch 0 draws epoch 1's crops and flips once the trainer has uploaded the new epoch.
static void test_gather_aug_epoch_read_at_replay(void **state) {
    (void)state;
    backend rb = make_rec();
    enum { M = 12, H = 6, W = 5, E = H * W };
    uint8_t images[M * E];
    int32_t labels[M];
    for (int i = 0; i < M * E; i++) images[i] = (uint8_t)(i * 7 + 3);
    for (int i = 0; i < M; i++) labels[i] = i;
    int32_t index[M];
    for (int i = 0; i < M; i++) index[i] = M - 1 - i;
    gather_aug a;
    memset(&a, 0, sizeof a);
    a.seed = 5, a.c = 1, a.h = H, a.w = W, a.crop_pad = 2, a.flip = 1;
    uint8_t *im = put(&rb, images, sizeof images);
    int32_t *lb = put(&rb, labels, sizeof labels);
    int32_t *ix = put(&rb, index, sizeof index), *y = put(&rb, NULL, sizeof index);
    gather_aug *ag = put(&rb, &a, sizeof a);
    float *x = put(&rb, NULL, M * E * sizeof(float));
    OK(rb.ops->capture_begin(rb.ctx));
    OK(rb.ops->gather(rb.ctx, im, lb, ix, M, E, ag, x, y));
    OK(rb.ops->capture_end(rb.ctx));
    float got[M * E], want[M * E], epoch0[M * E];
    int32_t yy[M];
    OK(g_cpu.ops->gather(g_cpu.ctx, images, labels, index, M, E, &a, epoch0, yy));
    for (int64_t epoch = 1; epoch < 3; epoch++) {
        OK(rb.ops->upload(rb.ctx, (char *)ag + offsetof(gather_aug, epoch), &epoch, sizeof epoch));
        OK(rb.ops->replay(rb.ctx));
        get(&rb, got, x, sizeof got);
        a.epoch = epoch;
        OK(g_cpu.ops->gather(g_cpu.ctx, images, labels, index, M, E, &a, want, yy));
        assert_memory_equal(got, want, sizeof got);
        assert_memory_not_equal(got, epoch0, sizeof got);
    }
    void *all[] = {im, lb, ix, y, ag, x};
    for (int k = 0; k < 6; k++) rb.ops->free(rb.ctx, all[k]);
    backend_destroy(&rb);
}

// Descriptors are baked in at capture (as cuDNN's are): changing the caller's struct afterwards is not seen.
static void test_descriptors_by_value(void **state) {
    (void)state;
    backend rb = make_rec();
    conv_desc d = {.n = 2, .c = 3, .h = 7, .w = 6, .k = 4, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_RELU};
    OK(conv_desc_init(&d, "test"));
    const conv_desc d0 = d;
    size_t nx = (size_t)d.n * d.c * d.h * d.w, nw = (size_t)d.k * d.c * d.r * d.s;
    size_t ny = (size_t)d.n * d.k * d.oh * d.ow;
    rng r;
    rng_seed(&r, 4);
    float *hx = malloc(nx * 4), *hw = malloc(nw * 4), hb[4], *yr = malloc(ny * 4), *yc = malloc(ny * 4);
    assert_non_null(hx), assert_non_null(hw), assert_non_null(yr), assert_non_null(yc);
    fill(&r, hx, nx, 1), fill(&r, hw, nw, 0.5f), fill(&r, hb, 4, 0.5f);
    backend *bes[2] = {&rb, &g_cpu};
    float *x[2], *w[2], *b[2], *y[2];
    void *ws[2];
    for (int i = 0; i < 2; i++) {
        conv_desc di = d0;
        size_t wsb = 0;
        OK(bes[i]->ops->conv_prepare(bes[i]->ctx, &di, &wsb));
        if (i == 0) d = di;
        ws[i] = put(bes[i], NULL, wsb ? wsb : 4);
        x[i] = put(bes[i], hx, nx * 4), w[i] = put(bes[i], hw, nw * 4), b[i] = put(bes[i], hb, sizeof hb);
        y[i] = put(bes[i], NULL, ny * 4);
    }
    OK(rb.ops->capture_begin(rb.ctx));
    OK(rb.ops->conv_forward(rb.ctx, &d, x[0], w[0], b[0], y[0], ws[0]));
    OK(rb.ops->capture_end(rb.ctx));
    d.n = 1, d.act = ACT_NONE, d.k = 2;  // after the capture: must not change what the replay computes
    OK(rb.ops->replay(rb.ctx));
    OK(g_cpu.ops->conv_forward(g_cpu.ctx, &d0, x[1], w[1], b[1], y[1], ws[1]));
    get(&rb, yr, y[0], ny * 4), get(&g_cpu, yc, y[1], ny * 4);
    assert_memory_equal(yr, yc, ny * 4);
    for (int i = 0; i < 2; i++) {
        void *all[] = {x[i], w[i], b[i], y[i], ws[i]};
        for (int k = 0; k < 5; k++) bes[i]->ops->free(bes[i]->ctx, all[k]);
    }
    free(hx), free(hw), free(yr), free(yc);
    backend_destroy(&rb);
}

// ---------------------------------------------------------------------------------------------------------
// Calls a capture forbids

enum {
    F_UPLOAD, F_DOWNLOAD, F_SYNC, F_ALLOC, F_FREE, F_CONV_PREPARE, F_CONV_RELEASE, F_MARK_CREATE,
    F_MARK_DESTROY, F_MARK_QUERY, F_MARK_ELAPSED, F_REPLAY, F_COUNT
};
static const char *const forbidden_name[F_COUNT] = {
    "upload", "download", "sync", "alloc", "free", "conv_prepare", "conv_release", "mark_create",
    "mark_destroy", "mark_query", "mark_elapsed", "replay",
};

// One forbidden call inside a capture; returns its status (ST_RUNTIME expected; void calls report ST_OK).
static int forbidden_call(backend *be, int which, float *x, void *victim, void *mark) {
    const backend_ops *o = be->ops;
    float h[4] = {0};
    void *p = (void *)1;
    int done = 1;
    double s = 1;
    conv_desc d = {.n = 1, .c = 1, .h = 4, .w = 4, .k = 1, .r = 3, .s = 3, .stride = 1, .pad = 1};
    size_t wsb = 0;
    int st = ST_OK;
    switch (which) {
    case F_UPLOAD: return o->upload(be->ctx, x, h, sizeof h);
    case F_DOWNLOAD: return o->download(be->ctx, h, x, sizeof h);
    case F_SYNC: return o->sync(be->ctx);
    case F_ALLOC:
        st = o->alloc(be->ctx, &p, 16);
        assert_null(p);
        return st;
    case F_FREE: o->free(be->ctx, victim); return ST_OK;
    case F_CONV_PREPARE: OK(conv_desc_init(&d, "t")); return o->conv_prepare(be->ctx, &d, &wsb);
    case F_CONV_RELEASE: o->conv_release(be->ctx, &d); return ST_OK;
    case F_MARK_CREATE:
        st = o->mark_create(be->ctx, &p);
        assert_null(p);
        return st;
    case F_MARK_DESTROY: o->mark_destroy(be->ctx, mark); return ST_OK;
    case F_MARK_QUERY: return o->mark_query(be->ctx, mark, &done);
    case F_MARK_ELAPSED: return o->mark_elapsed(be->ctx, mark, mark, &s);
    case F_REPLAY: return o->replay(be->ctx);
    }
    return ST_OK;
}

static void test_forbidden_call_invalidates(void **state) {
    (void)state;
    for (int which = 0; which < F_COUNT; which++) {
        backend rb = make_rec();
        const backend_ops *o = rb.ops;
        const float h[4] = {1, 2, 3, 4};
        float got[4];
        float *x = put(&rb, h, sizeof h);
        void *victim = put(&rb, NULL, 64), *mark = NULL;
        OK(o->mark_create(rb.ctx, &mark));
        OK(o->mark_record(rb.ctx, mark));
        // A good graph first: the failed capture below must leave none.
        OK(o->capture_begin(rb.ctx));
        OK(o->scale(rb.ctx, 4, 2.f, x));
        OK(o->capture_end(rb.ctx));

        OK(o->capture_begin(rb.ctx));
        OK(o->scale(rb.ctx, 4, 3.f, x));
        err_clear();
        int st = forbidden_call(&rb, which, x, victim, mark);
        if (which != F_FREE && which != F_CONV_RELEASE && which != F_MARK_DESTROY) {
            if (st != ST_RUNTIME) fail_msg("%s during capture: status %d", forbidden_name[which], st);
            if (!strstr(err_msg(), "not allowed during") || !strstr(err_msg(), "capture"))
                fail_msg("%s during capture: message \"%s\"", forbidden_name[which], err_msg());
        }
        err_clear();
        FAILS(o->scale(rb.ctx, 4, 5.f, x), "invalidated");  // stream work after the breach is refused too
        FAILS(o->capture_end(rb.ctx), "invalidated");
        FAILS(o->replay(rb.ctx), "graph");
        get(&rb, got, x, sizeof got);
        assert_memory_equal(got, h, sizeof h);
        // The next capture starts clean.
        OK(o->capture_begin(rb.ctx));
        OK(o->scale(rb.ctx, 4, 2.f, x));
        OK(o->capture_end(rb.ctx));
        OK(o->replay(rb.ctx));
        get(&rb, got, x, sizeof got);
        assert_true(got[3] == 8.f);
        // free / mark_destroy inside the capture released nothing: releasing now is no double free.
        o->free(rb.ctx, victim);
        o->mark_destroy(rb.ctx, mark);
        o->free(rb.ctx, x);
        backend_destroy(&rb);
    }
}

static void test_misuse(void **state) {
    (void)state;
    backend rb = make_rec();
    const backend_ops *o = rb.ops;
    FAILS(o->replay(rb.ctx), "graph");
    FAILS(o->capture_end(rb.ctx), "capture_begin");
    OK(o->capture_begin(rb.ctx));
    FAILS(o->capture_begin(rb.ctx), "capture");
    OK(o->capture_end(rb.ctx));  // the open capture survived the refused begin; an empty graph is valid
    OK(o->replay(rb.ctx));
    FAILS(o->capture_end(rb.ctx), "capture_begin");
    backend_destroy(&rb);
}

// A mark recorded in the capture is recorded again by every replay (as a CUDA event-record node is).
static void test_marks_recorded_by_replay(void **state) {
    (void)state;
    backend rb = make_rec();
    const backend_ops *o = rb.ops;
    void *a, *b, *out;
    double s;
    OK(o->mark_create(rb.ctx, &a));
    OK(o->mark_create(rb.ctx, &b));
    OK(o->mark_create(rb.ctx, &out));
    float *x = put(&rb, NULL, 1024 * 4);
    OK(o->mark_record(rb.ctx, a));
    OK(o->mark_record(rb.ctx, b));
    sleep_ms(20);
    OK(o->mark_record(rb.ctx, out));
    OK(o->capture_begin(rb.ctx));
    OK(o->mark_record(rb.ctx, a));
    OK(o->scale(rb.ctx, 1024, 0.5f, x));
    OK(o->mark_record(rb.ctx, b));
    OK(o->capture_end(rb.ctx));
    OK(o->mark_elapsed(rb.ctx, out, a, &s));
    assert_true(s < 0);  // not recorded by the capture
    for (int rep = 0; rep < 2; rep++) {
        OK(o->mark_record(rb.ctx, out));
        sleep_ms(20);
        OK(o->replay(rb.ctx));
        OK(o->mark_elapsed(rb.ctx, out, a, &s));
        if (!(s >= 0.019)) fail_msg("replay %d: mark a is %.4f s after the outside mark, want >= 0.019", rep, s);
        OK(o->mark_elapsed(rb.ctx, a, b, &s));
        assert_true(s >= 0);  // b after a, both from this replay
    }
    o->mark_destroy(rb.ctx, a), o->mark_destroy(rb.ctx, b), o->mark_destroy(rb.ctx, out);
    o->free(rb.ctx, x);
    backend_destroy(&rb);
}

// ---------------------------------------------------------------------------------------------------------
// A whole training step: gather -> conv -> pool -> dense -> softmax_xent -> backward -> Adam, with zero, copy,
// scale and count_nonfinite on the way, captured once and replayed with new batch indices and a new lr and t
// uploaded before each replay, against the same steps run eagerly on the plain CPU backend.

enum { SN = 4, SIMG = 6, SK = 3, SCLS = 5, SDATA = 12, SSTEPS = 4 };
enum { SPOOL = SK * (SIMG / 2) * (SIMG / 2) };
enum { SW_CONV = SK * 9, SB_CONV = SK, SW_DENSE = SCLS * SPOOL, SB_DENSE = SCLS };
enum { SPARAMS = SW_CONV + SB_CONV + SW_DENSE + SB_DENSE };

typedef struct step_bufs {
    conv_desc conv;
    pool_desc pool;
    uint8_t *images;
    int32_t *labels;
    int32_t *index, *y, *argmax, *correct, *bad;
    float *x, *cy, *py, *logits, *params, *grads, *m, *v, *snap;
    double *loss;
    adam_hyper *h;
    void *ws;
} step_bufs;

static void step_alloc(backend *be, step_bufs *s, const uint8_t *img, const int32_t *lab, const float *params) {
    memset(s, 0, sizeof *s);
    s->conv = (conv_desc){.n = SN, .c = 1, .h = SIMG, .w = SIMG, .k = SK, .r = 3, .s = 3, .stride = 1, .pad = 1,
                          .act = ACT_RELU};
    s->pool = (pool_desc){.n = SN, .c = SK, .h = SIMG, .w = SIMG, .size = 2, .stride = 2};
    OK(conv_desc_init(&s->conv, "conv"));
    OK(pool_desc_init(&s->pool, "pool"));
    size_t wsb = 0;
    OK(be->ops->conv_prepare(be->ctx, &s->conv, &wsb));
    s->ws = put(be, NULL, wsb ? wsb : 4);
    s->images = put(be, img, SDATA * SIMG * SIMG), s->labels = put(be, lab, SDATA * sizeof(int32_t));
    s->index = put(be, NULL, SN * 4), s->y = put(be, NULL, SN * 4);
    const int32_t junk = 7;  // count_nonfinite must overwrite it
    s->argmax = put(be, NULL, SN * SPOOL * 4), s->correct = put(be, NULL, 4), s->bad = put(be, &junk, 4);
    s->x = put(be, NULL, SN * SIMG * SIMG * 4), s->cy = put(be, NULL, 2 * SN * SK * SIMG * SIMG * 4);
    s->py = put(be, NULL, 2 * SN * SPOOL * 4), s->logits = put(be, NULL, 2 * SN * SCLS * 4);
    s->params = put(be, params, SPARAMS * 4), s->grads = put(be, NULL, SPARAMS * 4);
    s->m = put(be, NULL, SPARAMS * 4), s->v = put(be, NULL, SPARAMS * 4), s->snap = put(be, NULL, SPARAMS * 4);
    s->loss = put(be, NULL, 8), s->h = put(be, NULL, sizeof(adam_hyper));
}

static void step_free(backend *be, step_bufs *s) {
    void *all[] = {s->ws, s->images, s->labels, s->index, s->y, s->argmax, s->correct, s->bad, s->x, s->cy,
                   s->py, s->logits, s->params, s->grads, s->m, s->v, s->snap, s->loss, s->h};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->ops->free(be->ctx, all[i]);
    be->ops->conv_release(be->ctx, &s->conv);
}

// The stream work of one step. Activations and their gradients share a buffer pair: [0, half) forward,
// [half, 2*half) gradient.
static void step_issue(backend *be, step_bufs *s) {
    const backend_ops *o = be->ops;
    void *c = be->ctx;
    float *wc = s->params, *bc = wc + SW_CONV, *wd = bc + SB_CONV, *bd = wd + SW_DENSE;
    float *gwc = s->grads, *gbc = gwc + SW_CONV, *gwd = gbc + SB_CONV, *gbd = gwd + SW_DENSE;
    float *dcy = s->cy + SN * SK * SIMG * SIMG, *dpy = s->py + SN * SPOOL, *dlog = s->logits + SN * SCLS;
    OK(o->zero(c, s->grads, SPARAMS * 4));
    OK(o->gather(c, s->images, s->labels, s->index, SN, SIMG * SIMG, NULL, s->x, s->y));
    OK(o->conv_forward(c, &s->conv, s->x, wc, bc, s->cy, s->ws));
    OK(o->pool_forward(c, &s->pool, s->cy, s->py, s->argmax));
    OK(o->dense_forward(c, SN, SPOOL, SCLS, ACT_NONE, s->py, wd, bd, s->logits));
    OK(o->softmax_xent(c, SN, SCLS, s->logits, s->y, 0.0f, 1.0f, dlog, s->loss, s->correct));
    OK(o->dense_backward(c, SN, SPOOL, SCLS, ACT_NONE, s->py, wd, s->logits, dlog, dpy, gwd, gbd));
    OK(o->pool_backward(c, &s->pool, dpy, s->argmax, dcy));
    OK(o->conv_backward(c, &s->conv, s->x, wc, s->cy, dcy, NULL, gwc, gbc, s->ws));
    OK(o->scale(c, SPARAMS, 0.5f, s->grads));
    OK(o->count_nonfinite(c, SPARAMS, s->grads, s->bad));
    OK(o->copy(c, s->snap, s->params, SPARAMS * 4));
    OK(o->adam_step(c, SPARAMS, s->params, s->grads, s->m, s->v, s->h));
}

// Host work before step t (1-based): this step's batch indices and hyper-parameters.
static void step_host(backend *be, step_bufs *s, int t) {
    int32_t idx[SN];
    for (int i = 0; i < SN; i++) idx[i] = (int32_t)((t * 5 + i * 7) % SDATA);
    adam_hyper h = {.lr = 0.01f / (float)t, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 1e-4f,
                    .t = t};
    OK(be->ops->upload(be->ctx, s->index, idx, sizeof idx));
    OK(be->ops->upload(be->ctx, s->h, &h, sizeof h));
}

static void test_training_step_replay(void **state) {
    (void)state;
    rng r;
    rng_seed(&r, 8);
    uint8_t img[SDATA * SIMG * SIMG];
    int32_t lab[SDATA];
    for (size_t i = 0; i < sizeof img; i++) img[i] = (uint8_t)rng_below(&r, 256);
    for (int i = 0; i < SDATA; i++) lab[i] = (int32_t)rng_below(&r, SCLS);
    float p0[SPARAMS];
    fill(&r, p0, SPARAMS, 0.3f);

    backend rb = make_rec();
    step_bufs eager, graph;
    step_alloc(&g_cpu, &eager, img, lab, p0);
    step_alloc(&rb, &graph, img, lab, p0);
    OK(rb.ops->capture_begin(rb.ctx));
    step_issue(&rb, &graph);
    OK(rb.ops->capture_end(rb.ctx));
    for (int t = 1; t <= SSTEPS; t++) {
        step_host(&g_cpu, &eager, t);
        step_issue(&g_cpu, &eager);
        step_host(&rb, &graph, t);
        OK(rb.ops->replay(rb.ctx));
    }

    float pe[SPARAMS], pg[SPARAMS], me[SPARAMS], mg[SPARAMS], ve[SPARAMS], vg[SPARAMS], se[SPARAMS], sg[SPARAMS];
    double le, lg;
    int32_t ce, cg, be_, bg;
    get(&g_cpu, pe, eager.params, sizeof pe), get(&rb, pg, graph.params, sizeof pg);
    get(&g_cpu, me, eager.m, sizeof me), get(&rb, mg, graph.m, sizeof mg);
    get(&g_cpu, ve, eager.v, sizeof ve), get(&rb, vg, graph.v, sizeof vg);
    get(&g_cpu, se, eager.snap, sizeof se), get(&rb, sg, graph.snap, sizeof sg);
    get(&g_cpu, &le, eager.loss, 8), get(&rb, &lg, graph.loss, 8);
    get(&g_cpu, &ce, eager.correct, 4), get(&rb, &cg, graph.correct, 4);
    get(&g_cpu, &be_, eager.bad, 4), get(&rb, &bg, graph.bad, 4);
    assert_memory_equal(pg, pe, sizeof pe);
    assert_memory_equal(mg, me, sizeof me);
    assert_memory_equal(vg, ve, sizeof ve);
    assert_memory_equal(sg, se, sizeof se);
    assert_memory_equal(&lg, &le, sizeof le);
    assert_int_equal(cg, ce);
    assert_int_equal(bg, 0), assert_int_equal(be_, 0);
    assert_true(le > 0);                               // SSTEPS batches of loss were accumulated
    assert_memory_not_equal(pg, p0, sizeof p0);        // the steps moved the weights
    assert_memory_not_equal(pg, sg, sizeof pg);        // and the last one moved them again
    step_free(&g_cpu, &eager);
    step_free(&rb, &graph);
    backend_destroy(&rb);
}

// ---------------------------------------------------------------------------------------------------------

static int group_setup(void **state) {
    (void)state;
    return backend_cpu_create(&g_cpu, 1) == ST_OK ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    backend_destroy(&g_cpu);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_full),
        cmocka_unit_test(test_forwards_outside_capture),
        cmocka_unit_test(test_capture_records_not_runs),
        cmocka_unit_test(test_pointers_read_at_replay),
        cmocka_unit_test(test_gather_aug_epoch_read_at_replay),
        cmocka_unit_test(test_descriptors_by_value),
        cmocka_unit_test(test_forbidden_call_invalidates),
        cmocka_unit_test(test_misuse),
        cmocka_unit_test(test_marks_recorded_by_replay),
        cmocka_unit_test(test_training_step_replay),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
