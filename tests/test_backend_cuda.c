// test_backend_cuda.c — every op of the CUDA backend against the CPU reference, on random inputs, with a
// normalised error per op: max |cuda - cpu| / max |cpu| (TF32 off, so both compute in FP32); at bf16/fp16
// (net.precision, grads16, and activations stored in 16 bits: act16) per value, by tu_expect_lp's rule.
//
// Without a CUDA device (or in a build without CUDA) the comparisons skip, or fail with DDP_REQUIRE_CUDA=1
// (tu_cuda_or_skip); the creation error paths still run. backend_cuda.h gives stubs of the CUDA-only calls for
// builds without CUDA, so nothing here is #ifdef'd.
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "common.h"
#include "precision.h"
#include "test_util.h"

static int g_have_cuda;
static const char *g_no_cuda;  // why CUDA is not usable (NULL when it is)
static backend g_cpu, g_gpu;
// The grads16 pair (backend_options.grads16: dw and db written as bf16): the CPU always, CUDA (precision bf16) when
// usable.
static backend g_cpu16, g_gpu16;
// The act16 pairs (backend_options.act16: activations stored in 16 bits): [0] bf16, [1] fp16, [2] bf16 with grads16;
// the CPU always, CUDA (precision = act16) when usable.
static backend g_cpu_act[3], g_gpu_act[3];
static const int k_act_format[3] = {PREC_BF16, PREC_FP16, PREC_BF16};

static void act_pair(int format, int grads16, const backend **bc, const backend **bg) {
    const int k = grads16 ? 2 : format == PREC_FP16;
    *bc = &g_cpu_act[k];
    *bg = &g_gpu_act[k];
}

#define OK(expr)                                                                                           \
    do {                                                                                                   \
        int st_ = (expr);                                                                                  \
        if (st_ != ST_OK) fail_msg("%s failed (status %d): %s", #expr, st_, err_msg());                   \
    } while (0)

#define NEED_CUDA() tu_cuda_or_skip(g_no_cuda)

// Tolerances (normalised). Convolutions: cuDNN may pick FFT/Winograd, which round differently from im2col.
#define TOL_CONV 1e-4
#define TOL_DENSE 1e-5
#define TOL_EXACTISH 1e-6

// ---------------------------------------------------------------------------------------------------------
// Helpers: one buffer on each backend ("twin"), filled from the same host data.

typedef struct twin {
    void *c, *g;
    size_t bytes;
    const backend *bc, *bg;  // where c and g live: g_cpu and g_gpu, or the grads16 pair (a GPU buffer is read and
                             // written on its own backend's stream)
    int fmt16;               // 0: float32 values; PREC_BF16/PREC_FP16: 16-bit activations of an act16 pair (twin_act)
} twin;

static twin twin_make_on(const backend *bc, const backend *bg, const void *host, size_t bytes) {
    twin t = {NULL, NULL, bytes, bc, bg, 0};
    OK(bc->ops->alloc(bc->ctx, &t.c, bytes));
    OK(bg->ops->alloc(bg->ctx, &t.g, bytes));
    if (host) {
        OK(bc->ops->upload(bc->ctx, t.c, host, bytes));
        OK(bg->ops->upload(bg->ctx, t.g, host, bytes));
    }
    return t;
}

static twin twin_make(const void *host, size_t bytes) { return twin_make_on(&g_cpu, &g_gpu, host, bytes); }

static void twin_set(const twin *t, const void *host) {
    OK(t->bc->ops->upload(t->bc->ctx, t->c, host, t->bytes));
    OK(t->bg->ops->upload(t->bg->ctx, t->g, host, t->bytes));
}

static void twin_free(twin *t) {
    t->bc->ops->free(t->bc->ctx, t->c);
    t->bg->ops->free(t->bg->ctx, t->g);
    t->c = t->g = NULL;
}

static void twin_read(const twin *t, void *cpu_out, void *gpu_out) {
    OK(t->bc->ops->download(t->bc->ctx, cpu_out, t->c, t->bytes));
    OK(t->bg->ops->download(t->bg->ctx, gpu_out, t->g, t->bytes));
}

// The number of values a twin holds (float32, or 16-bit under fmt16).
static size_t twin_count(const twin *t) { return t->bytes / (t->fmt16 ? sizeof(uint16_t) : sizeof(float)); }

// A twin of n activations of `format` (0: float32) from the host floats v, rounded to the format in place first
// (precision_to16): both backends get the same bits, and v then holds their values. v NULL: zeros.
static twin twin_act_on(const backend *bc, const backend *bg, float *v, size_t n, int format) {
    if (!format) return twin_make_on(bc, bg, v, n * sizeof(float));
    uint16_t *bits = NULL;
    if (v) {
        bits = malloc(n * sizeof *bits + 2);
        assert_non_null(bits);
        for (size_t i = 0; i < n; i++) {
            bits[i] = precision_to16(format, v[i]);
            v[i] = precision_from16(format, bits[i]);
        }
    }
    twin t = twin_make_on(bc, bg, bits, n * sizeof(uint16_t));
    t.fmt16 = format;
    free(bits);
    return t;
}

// Give the GPU copy the CPU's values. Backward tests start from the same forward output y: a pre-activation
// within rounding of 0 would otherwise pass the ReLU mask on one backend and not on the other.
static void twin_copy_cpu_to_gpu(const twin *t) {
    void *h = malloc(t->bytes);
    assert_non_null(h);
    OK(t->bc->ops->download(t->bc->ctx, h, t->c, t->bytes));
    OK(t->bg->ops->upload(t->bg->ctx, t->g, h, t->bytes));
    free(h);
}

// max |got - ref| / max |ref| (absolute when ref is all zeros); infinity when either has a NaN/Inf.
static double norm_err(const float *got, const float *ref, size_t n) {
    double diff = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i])) return INFINITY;
        double d = fabs((double)got[i] - ref[i]);
        if (d > diff) diff = d;
        if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
    }
    return scale > 0 ? diff / scale : diff;
}

static void expect_close(const char *what, const twin *t, double tol) {
    size_t n = t->bytes / sizeof(float);
    float *ref = malloc(t->bytes), *got = malloc(t->bytes);
    assert_non_null(ref);
    assert_non_null(got);
    twin_read(t, ref, got);
    double e = norm_err(got, ref, n);
    free(ref);
    free(got);
    if (!(e <= tol)) fail_msg("%s: CUDA vs CPU normalised error %.3g > %.3g", what, e, tol);
}

static void expect_equal_bytes(const char *what, const twin *t) {
    char *ref = malloc(t->bytes), *got = malloc(t->bytes);
    assert_non_null(ref);
    assert_non_null(got);
    twin_read(t, ref, got);
    int same = memcmp(ref, got, t->bytes) == 0;
    free(ref);
    free(got);
    if (!same) fail_msg("%s: CUDA and CPU differ", what);
}

static float *rand_floats(rng *r, size_t n, float scale) {
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) p[i] = scale * (2.f * rng_uniform(r) - 1.f);
    return p;
}

// ---------------------------------------------------------------------------------------------------------
// Creation and configuration (these run without a GPU too)

static void test_create_errors(void **state) {
    (void)state;
    backend be;
    if (!g_have_cuda) {
        // No device (or no CUDA in this build): a clear error naming CUDA, never a crash.
        assert_int_not_equal(backend_cuda_create(&be, NULL), ST_OK);
        assert_non_null(strstr(err_msg(), "CUDA"));
        assert_null(be.ops);
        err_clear();
        return;
    }
    assert_int_equal(backend_cuda_create(&be, &(backend_options){.device = 4096}), ST_INPUT);
    assert_non_null(strstr(err_msg(), "device 4096"));
    err_clear();
}

static void test_tf32_needs_cuda(void **state) {
    (void)state;
    assert_int_equal(backend_cuda_set_tf32(&g_cpu, 1), ST_INPUT);
    assert_non_null(strstr(err_msg(), "tf32"));
    err_clear();
    assert_int_equal(backend_cuda_set_tf32(&g_cpu, 0), ST_OK);
}

// The grads16 CPU backend, the reference of the CUDA one's bf16 parameter gradients: its dw and db are the bf16 bits
// of the float32 op's (precision_round_bf16), its other outputs the float32 op's bit for bit, and its `grads16` slot
// says so. Runs without a GPU (CPU memory is host memory: the results are read in place).

static void *cpu_put(const void *host, size_t bytes) {
    void *p = NULL;
    OK(g_cpu.ops->alloc(g_cpu.ctx, &p, bytes ? bytes : 4));
    if (host && bytes) OK(g_cpu.ops->upload(g_cpu.ctx, p, host, bytes));
    return p;
}

static void cpu_free_all(void **bufs, size_t n) {
    for (size_t i = 0; i < n; i++) g_cpu.ops->free(g_cpu.ctx, bufs[i]);
}

static void expect_bf16_of(const char *what, const uint16_t *got, const float *f32, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const uint16_t want = (uint16_t)(precision_bits(precision_round_bf16(f32[i])) >> 16);
        if (got[i] != want)
            fail_msg("%s: value %zu is 0x%04x, the bf16 of the float32 op's %.9g is 0x%04x", what, i, got[i], f32[i],
                     want);
    }
}

static void g16_cpu_conv(conv_desc d, int bias, rng *r) {
    OK(conv_desc_init(&d, "grads16 cpu conv"));
    conv_desc d32 = d, d16 = d;
    size_t ws32 = 0, ws16 = 0;
    OK(g_cpu.ops->conv_prepare(g_cpu.ctx, &d32, &ws32));
    OK(g_cpu16.ops->conv_prepare(g_cpu16.ctx, &d16, &ws16));
    const size_t nx = (size_t)d.n * d.c * d.h * d.w, nw = (size_t)d.k * (d.c / d.groups) * d.r * d.s;
    const size_t ny = (size_t)d.n * d.k * d.oh * d.ow, nb = (size_t)d.k;
    float *hx = rand_floats(r, nx, 1.f), *hw = rand_floats(r, nw, 0.5f), *hb = rand_floats(r, nb, 0.5f);
    float *hdy = rand_floats(r, ny, 1.f);
    float *x = cpu_put(hx, nx * 4), *w = cpu_put(hw, nw * 4), *b = cpu_put(hb, nb * 4), *y = cpu_put(NULL, ny * 4);
    float *dy32 = cpu_put(hdy, ny * 4), *dy16 = cpu_put(hdy, ny * 4), *dx32 = cpu_put(NULL, nx * 4);
    float *dx16 = cpu_put(NULL, nx * 4), *dw32 = cpu_put(NULL, nw * 4), *db32 = cpu_put(NULL, nb * 4);
    uint16_t *dw16 = cpu_put(NULL, nw * 2), *db16 = cpu_put(NULL, nb * 2);
    void *ws = cpu_put(NULL, ws32 > ws16 ? ws32 : ws16);
    OK(g_cpu.ops->conv_forward(g_cpu.ctx, &d32, x, w, bias ? b : NULL, y, ws));
    OK(g_cpu.ops->conv_backward(g_cpu.ctx, &d32, x, w, y, dy32, dx32, dw32, bias ? db32 : NULL, ws));
    OK(g_cpu16.ops->conv_backward(g_cpu16.ctx, &d16, x, w, y, dy16, dx16, dw16, bias ? db16 : NULL, ws));
    assert_memory_equal(dy16, dy32, ny * 4);
    assert_memory_equal(dx16, dx32, nx * 4);
    expect_bf16_of("grads16 cpu conv dw", dw16, dw32, nw);
    if (bias) expect_bf16_of("grads16 cpu conv db", db16, db32, nb);
    void *bufs[] = {x, w, b, y, dy32, dy16, dx32, dx16, dw32, db32, dw16, db16, ws};
    cpu_free_all(bufs, sizeof bufs / sizeof bufs[0]);
    free(hx), free(hw), free(hb), free(hdy);
    g_cpu.ops->conv_release(g_cpu.ctx, &d32);
    g_cpu16.ops->conv_release(g_cpu16.ctx, &d16);
}

static void g16_cpu_dense(int n, int in, int out, int act, int bias, rng *r) {
    const size_t nx = (size_t)n * in, nw = (size_t)out * in, ny = (size_t)n * out;
    float *hx = rand_floats(r, nx, 1.f), *hw = rand_floats(r, nw, 0.5f), *hb = rand_floats(r, out, 0.5f);
    float *hdy = rand_floats(r, ny, 1.f);
    float *x = cpu_put(hx, nx * 4), *w = cpu_put(hw, nw * 4), *b = cpu_put(hb, out * 4), *y = cpu_put(NULL, ny * 4);
    float *dy32 = cpu_put(hdy, ny * 4), *dy16 = cpu_put(hdy, ny * 4), *dx32 = cpu_put(NULL, nx * 4);
    float *dx16 = cpu_put(NULL, nx * 4), *dw32 = cpu_put(NULL, nw * 4), *db32 = cpu_put(NULL, out * 4);
    uint16_t *dw16 = cpu_put(NULL, nw * 2), *db16 = cpu_put(NULL, out * 2);
    OK(g_cpu.ops->dense_forward(g_cpu.ctx, n, in, out, act, x, w, bias ? b : NULL, y));
    OK(g_cpu.ops->dense_backward(g_cpu.ctx, n, in, out, act, x, w, y, dy32, dx32, dw32, bias ? db32 : NULL));
    OK(g_cpu16.ops->dense_backward(g_cpu16.ctx, n, in, out, act, x, w, y, dy16, dx16, dw16, bias ? db16 : NULL));
    assert_memory_equal(dy16, dy32, ny * 4);
    assert_memory_equal(dx16, dx32, nx * 4);
    expect_bf16_of("grads16 cpu dense dw", dw16, dw32, nw);
    if (bias) expect_bf16_of("grads16 cpu dense db", db16, db32, (size_t)out);
    void *bufs[] = {x, w, b, y, dy32, dy16, dx32, dx16, dw32, db32, dw16, db16};
    cpu_free_all(bufs, sizeof bufs / sizeof bufs[0]);
    free(hx), free(hw), free(hb), free(hdy);
}

static void g16_cpu_bn(int n, int c, int hw, int act, rng *r) {
    const size_t nx = (size_t)n * c * hw, nc = (size_t)c;
    const bn_desc d = {.n = n, .c = c, .hw = hw, .act = act, .eps = 1e-5f, .momentum = 0.1f,
                       .count = (int64_t)n * hw};
    float *hx = rand_floats(r, nx, 2.f), *hw_ = rand_floats(r, nc, 1.f), *hb = rand_floats(r, nc, 0.5f);
    float *hdy = rand_floats(r, nx, 1.f);
    float *x = cpu_put(hx, nx * 4), *w = cpu_put(hw_, nc * 4), *b = cpu_put(hb, nc * 4), *y = cpu_put(NULL, nx * 4);
    float *st = cpu_put(NULL, 3 * nc * 4), *run = cpu_put(NULL, (2 * nc + 1) * 4), *save = cpu_put(NULL, 2 * nc * 4);
    float *dy32 = cpu_put(hdy, nx * 4), *dy16 = cpu_put(hdy, nx * 4), *dw32 = cpu_put(NULL, nc * 4);
    float *db32 = cpu_put(NULL, nc * 4), *gs32 = cpu_put(NULL, 2 * nc * 4), *gs16 = cpu_put(NULL, 2 * nc * 4);
    uint16_t *dw16 = cpu_put(NULL, nc * 2), *db16 = cpu_put(NULL, nc * 2);
    OK(g_cpu.ops->bn_stats(g_cpu.ctx, &d, x, st));
    OK(g_cpu.ops->bn_apply(g_cpu.ctx, &d, x, st, w, b, run, save, y));
    OK(g_cpu.ops->bn_grad_stats(g_cpu.ctx, &d, x, y, save, dy32, dw32, db32, gs32));
    OK(g_cpu16.ops->bn_grad_stats(g_cpu16.ctx, &d, x, y, save, dy16, dw16, db16, gs16));
    assert_memory_equal(dy16, dy32, nx * 4);
    assert_memory_equal(gs16, gs32, 2 * nc * 4);  // float32 on both
    expect_bf16_of("grads16 cpu bn dw", dw16, dw32, nc);
    expect_bf16_of("grads16 cpu bn db", db16, db32, nc);
    void *bufs[] = {x, w, b, y, st, run, save, dy32, dy16, dw32, db32, gs32, gs16, dw16, db16};
    cpu_free_all(bufs, sizeof bufs / sizeof bufs[0]);
    free(hx), free(hw_), free(hb), free(hdy);
}

static void test_grads16_cpu(void **state) {
    (void)state;
    assert_int_equal(backend_is_grads16(&g_cpu16), 1);
    assert_int_equal(backend_is_grads16(&g_cpu), 0);
    rng r;
    rng_seed(&r, 2632);
    g16_cpu_conv((conv_desc){.n = 3, .c = 4, .h = 9, .w = 9, .k = 6, .r = 3, .s = 3, .stride = 1, .pad = 1,
                             .act = ACT_RELU}, 1, &r);
    g16_cpu_conv((conv_desc){.n = 16, .c = 3, .h = 32, .w = 32, .k = 8, .r = 3, .s = 3, .stride = 1, .pad = 1,
                             .act = ACT_NONE}, 1, &r);
    g16_cpu_conv((conv_desc){.n = 2, .c = 4, .h = 8, .w = 9, .k = 6, .r = 3, .s = 3, .stride = 2, .pad = 2,
                             .groups = 2, .dilation = 2, .act = ACT_LEAKY}, 0, &r);  // db NULL
    g16_cpu_dense(7, 19, 11, ACT_RELU, 1, &r);
    g16_cpu_dense(6, 12, 7, ACT_LEAKY, 0, &r);
    g16_cpu_bn(4, 3, 25, ACT_RELU, &r);
    g16_cpu_bn(64, 10, 1, ACT_NONE, &r);
}

// Every required slot of the CUDA table is filled (a new op added to the CPU backend only fails here).
static void test_table_full(void **state) {
    (void)state;
    NEED_CUDA();
    const char *first = NULL;
    const int missing = backend_ops_missing(g_gpu.ops, &first);
    if (missing) fail_msg("cuda backend: %d empty slots, the first is %s", missing, first);
}

// ---------------------------------------------------------------------------------------------------------
// Memory

static void test_memory(void **state) {
    (void)state;
    NEED_CUDA();
    const backend_ops *o = g_gpu.ops;
    void *ctx = g_gpu.ctx;
    // alloc is zeroed
    enum { SMALL = 1000, LARGE = 1 << 20, BUFS = 20 };
    unsigned char *host = malloc(LARGE), *back = malloc(LARGE);
    assert_non_null(host);
    assert_non_null(back);
    void *big = NULL;
    OK(o->alloc(ctx, &big, LARGE));
    OK(o->download(ctx, back, big, LARGE));
    for (int i = 0; i < LARGE; i++)
        if (back[i] != 0) fail_msg("alloc: byte %d is %d, not zero", i, back[i]);
    // large upload (direct path) round trip
    for (int i = 0; i < LARGE; i++) host[i] = (unsigned char)(i * 7 + 3);
    OK(o->upload(ctx, big, host, LARGE));
    OK(o->download(ctx, back, big, LARGE));
    assert_memory_equal(host, back, LARGE);
    // many small uploads through the staging ring, the host buffer rewritten right after each one
    void *small[BUFS];
    for (int b = 0; b < BUFS; b++) {
        OK(o->alloc(ctx, &small[b], SMALL));
        memset(host, b + 1, SMALL);
        OK(o->upload(ctx, small[b], host, SMALL));
        memset(host, 0xee, SMALL);
    }
    for (int b = 0; b < BUFS; b++) {
        OK(o->download(ctx, back, small[b], SMALL));
        for (int i = 0; i < SMALL; i++)
            if (back[i] != b + 1) fail_msg("staged upload %d: byte %d is %d, want %d", b, i, back[i], b + 1);
    }
    // copy and zero (a part)
    OK(o->copy(ctx, small[0], small[1], SMALL));
    OK(o->zero(ctx, (char *)small[0] + 100, 50));
    OK(o->sync(ctx));
    OK(o->download(ctx, back, small[0], SMALL));
    for (int i = 0; i < SMALL; i++) {
        int want = (i >= 100 && i < 150) ? 0 : 2;
        if (back[i] != want) fail_msg("copy/zero: byte %d is %d, want %d", i, back[i], want);
    }
    for (int b = 0; b < BUFS; b++) o->free(ctx, small[b]);
    o->free(ctx, big);
    free(host);
    free(back);
    assert_non_null(o->stream(ctx));
}

// ---------------------------------------------------------------------------------------------------------
// Data

static void test_gather(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 11);
    enum { TOTAL = 40, ELEMS = 50, N = 17 };
    uint8_t images[TOTAL * ELEMS];
    int32_t labels[TOTAL];
    int32_t index[N];
    for (int i = 0; i < TOTAL * ELEMS; i++) images[i] = (uint8_t)rng_below(&r, 256);
    for (int i = 0; i < TOTAL; i++) labels[i] = (int32_t)rng_below(&r, 10);
    for (int i = 0; i < N; i++) index[i] = (int32_t)rng_below(&r, TOTAL);  // repeats allowed
    twin ti = twin_make(images, sizeof images), tl = twin_make(labels, sizeof labels), tx = twin_make(index, sizeof index);
    twin x = twin_make(NULL, N * ELEMS * sizeof(float)), y = twin_make(NULL, N * sizeof(int32_t));
    OK(g_cpu.ops->gather(g_cpu.ctx, ti.c, tl.c, tx.c, N, ELEMS, NULL, x.c, y.c));
    OK(g_gpu.ops->gather(g_gpu.ctx, ti.g, tl.g, tx.g, N, ELEMS, NULL, x.g, y.g));
    expect_close("gather x", &x, TOL_EXACTISH);
    expect_equal_bytes("gather y", &y);
    twin_free(&ti), twin_free(&tl), twin_free(&tx), twin_free(&x), twin_free(&y);
}

// Crop, flip and normalisation fused into the gather kernel: bit-identical to the CPU loop (the same hash and
// table, src/gather_aug.h), for several epochs written by an upload of the epoch alone, as the trainer does
// before each epoch, and with and without normalisation.
static void test_gather_aug(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 12);
    enum { TOTAL = 50, C = 3, H = 11, W = 9, ELEMS = C * H * W, N = 33 };
    uint8_t images[TOTAL * ELEMS];
    int32_t labels[TOTAL];
    int32_t index[N];
    for (int i = 0; i < TOTAL * ELEMS; i++) images[i] = (uint8_t)rng_below(&r, 256);
    for (int i = 0; i < TOTAL; i++) labels[i] = (int32_t)rng_below(&r, 10);
    for (int i = 0; i < N; i++) index[i] = (int32_t)rng_below(&r, TOTAL);
    gather_aug a;
    memset(&a, 0, sizeof a);
    a.seed = 99, a.c = C, a.h = H, a.w = W, a.crop_pad = 4, a.flip = 1, a.normalize = 1;
    for (int c = 0; c < C; c++)
        for (int p = 0; p < 256; p++) a.lut[c][p] = ((float)p / 255.0f - 0.3f + 0.1f * c) / (0.25f + 0.05f * c);
    twin ti = twin_make(images, sizeof images), tl = twin_make(labels, sizeof labels), tx = twin_make(index, sizeof index);
    twin ta = twin_make(&a, sizeof a);
    twin x = twin_make(NULL, N * ELEMS * sizeof(float)), y = twin_make(NULL, N * sizeof(int32_t));
    for (int64_t epoch = 0; epoch < 3; epoch++) {
        OK(g_cpu.ops->upload(g_cpu.ctx, (char *)ta.c + offsetof(gather_aug, epoch), &epoch, sizeof epoch));
        OK(g_gpu.ops->upload(g_gpu.ctx, (char *)ta.g + offsetof(gather_aug, epoch), &epoch, sizeof epoch));
        OK(g_cpu.ops->gather(g_cpu.ctx, ti.c, tl.c, tx.c, N, ELEMS, ta.c, x.c, y.c));
        OK(g_gpu.ops->gather(g_gpu.ctx, ti.g, tl.g, tx.g, N, ELEMS, ta.g, x.g, y.g));
        expect_equal_bytes("gather_aug x", &x);
        expect_equal_bytes("gather_aug y", &y);
    }
    a.normalize = 0;
    twin_set(&ta, &a);
    OK(g_cpu.ops->gather(g_cpu.ctx, ti.c, tl.c, tx.c, N, ELEMS, ta.c, x.c, y.c));
    OK(g_gpu.ops->gather(g_gpu.ctx, ti.g, tl.g, tx.g, N, ELEMS, ta.g, x.g, y.g));
    expect_equal_bytes("gather_aug x (no normalize)", &x);
    twin_free(&ti), twin_free(&tl), twin_free(&tx), twin_free(&ta), twin_free(&x), twin_free(&y);
}

// ---------------------------------------------------------------------------------------------------------
// Convolution

typedef struct conv_case {
    int n, c, h, w, k, r, s, stride, pad, act;
    int no_bias;           // b = db = NULL
    int groups, dilation;  // 0: 1
} conv_case;

static void conv_case_run(const conv_case *cc, rng *r) {
    conv_desc d = {.n = cc->n, .c = cc->c, .h = cc->h, .w = cc->w, .k = cc->k, .r = cc->r, .s = cc->s,
                   .stride = cc->stride, .pad = cc->pad, .groups = cc->groups, .dilation = cc->dilation,
                   .act = cc->act};
    OK(conv_desc_init(&d, "test conv"));
    conv_desc dc = d, dg = d;
    size_t wsc = 0, wsg = 0;
    OK(g_cpu.ops->conv_prepare(g_cpu.ctx, &dc, &wsc));
    OK(g_gpu.ops->conv_prepare(g_gpu.ctx, &dg, &wsg));
    void *wc = NULL, *wg = NULL;
    if (wsc) OK(g_cpu.ops->alloc(g_cpu.ctx, &wc, wsc));
    if (wsg) OK(g_gpu.ops->alloc(g_gpu.ctx, &wg, wsg));

    const size_t xn = (size_t)d.n * d.c * d.h * d.w, wn = (size_t)d.k * (d.c / d.groups) * d.r * d.s;
    const size_t yn = (size_t)d.n * d.k * d.oh * d.ow;
    float *hx = rand_floats(r, xn, 1.f), *hw = rand_floats(r, wn, 0.5f), *hb = rand_floats(r, d.k, 0.5f);
    float *hdy = rand_floats(r, yn, 1.f);
    twin x = twin_make(hx, xn * 4), w = twin_make(hw, wn * 4), b = twin_make(hb, d.k * 4);
    twin y = twin_make(NULL, yn * 4), dy = twin_make(hdy, yn * 4), dx = twin_make(NULL, xn * 4);
    twin dw = twin_make(NULL, wn * 4), db = twin_make(NULL, d.k * 4);

    float *bc = cc->no_bias ? NULL : (float *)b.c, *bg = cc->no_bias ? NULL : (float *)b.g;
    float *dbc = cc->no_bias ? NULL : (float *)db.c, *dbg = cc->no_bias ? NULL : (float *)db.g;
    OK(g_cpu.ops->conv_forward(g_cpu.ctx, &dc, x.c, w.c, bc, y.c, wc));
    OK(g_gpu.ops->conv_forward(g_gpu.ctx, &dg, x.g, w.g, bg, y.g, wg));
    expect_close("conv forward y", &y, TOL_CONV);
    twin_copy_cpu_to_gpu(&y);

    OK(g_cpu.ops->conv_backward(g_cpu.ctx, &dc, x.c, w.c, y.c, dy.c, dx.c, dw.c, dbc, wc));
    OK(g_gpu.ops->conv_backward(g_gpu.ctx, &dg, x.g, w.g, y.g, dy.g, dx.g, dw.g, dbg, wg));
    expect_close("conv backward dy (pre-activation)", &dy, TOL_EXACTISH);
    expect_close("conv backward dx", &dx, TOL_CONV);
    expect_close("conv backward dw", &dw, TOL_CONV);
    if (!cc->no_bias) expect_close("conv backward db", &db, TOL_CONV);

    // First layer: no dx. dy is already masked; masking again (relu: no change, leaky: 0.1 again) is the same
    // on both backends.
    OK(g_cpu.ops->zero(g_cpu.ctx, dw.c, dw.bytes));
    OK(g_gpu.ops->zero(g_gpu.ctx, dw.g, dw.bytes));
    OK(g_cpu.ops->conv_backward(g_cpu.ctx, &dc, x.c, w.c, y.c, dy.c, NULL, dw.c, dbc, wc));
    OK(g_gpu.ops->conv_backward(g_gpu.ctx, &dg, x.g, w.g, y.g, dy.g, NULL, dw.g, dbg, wg));
    expect_close("conv backward dw (no dx)", &dw, TOL_CONV);
    if (!cc->no_bias) expect_close("conv backward db (no dx)", &db, TOL_CONV);

    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&y), twin_free(&dy), twin_free(&dx), twin_free(&dw);
    twin_free(&db);
    free(hx), free(hw), free(hb), free(hdy);
    g_cpu.ops->free(g_cpu.ctx, wc);
    g_gpu.ops->free(g_gpu.ctx, wg);
    g_cpu.ops->conv_release(g_cpu.ctx, &dc);
    g_gpu.ops->conv_release(g_gpu.ctx, &dg);
    assert_null(dg.plan);
}

static void test_conv(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 21);
    const conv_case cases[] = {
        {3, 2, 9, 7, 4, 3, 3, 1, 1, ACT_RELU, 0, 0, 0},
        {2, 3, 11, 10, 5, 5, 3, 2, 2, ACT_NONE, 0, 0, 0},
        {4, 8, 6, 6, 16, 1, 1, 1, 0, ACT_RELU, 0, 0, 0},
        {16, 3, 32, 32, 8, 3, 3, 1, 1, ACT_RELU, 0, 0, 0},  // several blocks per channel in the bias gradient
        {5, 6, 14, 14, 12, 5, 5, 1, 2, ACT_RELU, 0, 0, 0},
        {3, 4, 9, 9, 6, 3, 3, 1, 1, ACT_LEAKY, 0, 0, 0},
        {16, 3, 32, 32, 8, 3, 3, 1, 1, ACT_LEAKY, 1, 0, 0},  // no bias (b = db = NULL)
        {2, 5, 8, 8, 4, 1, 1, 1, 0, ACT_NONE, 1, 0, 0},
        {4, 16, 10, 10, 8, 5, 5, 1, 2, ACT_RELU6, 0, 0, 0},  // 400 products a sum: some past the cap
        {3, 4, 9, 9, 6, 3, 3, 2, 1, ACT_SIGMOID, 0, 0, 0},
        {2, 16, 8, 8, 4, 3, 3, 1, 1, ACT_SIGMOID, 1, 0, 0},
        // grouped, depthwise (with two filters per channel too), dilated, and together with stride and padding:
        // tests/test_backend_cpu.c's shapes, then MobileNetV2's depthwise 3x3s (stride 1 and 2)
        {2, 4, 6, 7, 6, 3, 3, 1, 1, ACT_RELU, 0, 2, 0},
        {3, 6, 5, 6, 6, 3, 3, 1, 1, ACT_RELU6, 0, 6, 0},
        {2, 3, 7, 6, 6, 3, 2, 2, 1, ACT_NONE, 0, 3, 0},
        {2, 4, 11, 13, 4, 3, 3, 1, 0, ACT_NONE, 1, 4, 2},
        {2, 2, 8, 9, 3, 3, 3, 1, 0, ACT_RELU, 0, 0, 2},
        {2, 3, 9, 10, 2, 3, 2, 2, 2, ACT_NONE, 0, 0, 3},
        {3, 4, 9, 8, 6, 3, 3, 2, 2, ACT_LEAKY, 0, 2, 2},
        {2, 6, 10, 9, 6, 3, 3, 2, 3, ACT_NONE, 0, 6, 2},
        {2, 4, 5, 5, 6, 1, 1, 1, 0, ACT_NONE, 0, 2, 0},
        {8, 32, 28, 28, 32, 3, 3, 1, 1, ACT_RELU6, 1, 32, 0},
        {8, 96, 28, 28, 96, 3, 3, 2, 1, ACT_RELU6, 1, 96, 0},
        {4, 32, 14, 14, 64, 3, 3, 1, 2, ACT_RELU, 0, 4, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) conv_case_run(&cases[i], &r);
}

// The reference CNN's convolutions at the trainer's batch sizes (training 64, evaluation 1000): conv1 1->32 3x3
// on 28x28 and conv2 32->64 3x3 on 13x13 (after the 2x2 pool), forward and both backward passes. The CPU
// reference runs on every core here (the shapes are large for one thread); its summation order changes, which
// the tolerance covers.
static void test_conv_model_shapes(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 41);
    const conv_case cases[] = {
        {64, 1, 28, 28, 32, 3, 3, 1, 0, ACT_RELU, 0, 0, 0},
        {64, 32, 13, 13, 64, 3, 3, 1, 0, ACT_RELU, 0, 0, 0},
        {1000, 1, 28, 28, 32, 3, 3, 1, 0, ACT_RELU, 0, 0, 0},
        {1000, 32, 13, 13, 64, 3, 3, 1, 0, ACT_RELU, 0, 0, 0},
    };
    backend one_thread = g_cpu;
    OK(backend_cpu_create(&g_cpu, 0));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) conv_case_run(&cases[i], &r);
    backend_destroy(&g_cpu);
    g_cpu = one_thread;
}

// Grouped and dilated convolutions with net.deterministic: the algorithms come from cuDNN's heuristics, only
// deterministic ones (choose_algo's other branch), and must support those shapes too.
static void test_conv_grouped_deterministic(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 51);
    const conv_case cases[] = {
        {8, 32, 28, 28, 32, 3, 3, 1, 1, ACT_RELU6, 1, 32, 0},
        {4, 48, 15, 15, 48, 3, 3, 2, 1, ACT_NONE, 0, 48, 0},
        {3, 4, 9, 8, 6, 3, 3, 2, 2, ACT_LEAKY, 0, 2, 2},
        {2, 3, 9, 10, 2, 3, 2, 2, 2, ACT_NONE, 0, 0, 3},
    };
    backend fastest = g_gpu;
    const backend_options det = {.deterministic = 1};
    OK(backend_cuda_create(&g_gpu, &det));
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) conv_case_run(&cases[i], &r);
    backend_destroy(&g_gpu);
    g_gpu = fastest;
}

// One layer prepared for two batch sizes (training and a smaller last eval batch): each plan runs its own n,
// and a desc whose n differs from its plan is refused.
static void test_conv_batch_sizes(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 31);
    const backend_ops *o = g_gpu.ops;
    void *ctx = g_gpu.ctx;
    conv_desc big = {.n = 4, .c = 3, .h = 8, .w = 8, .k = 5, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_RELU};
    OK(conv_desc_init(&big, "test conv"));
    conv_desc small = big;
    small.n = 2;
    small.plan = NULL;
    OK(conv_desc_init(&small, "test conv"));
    size_t ws_big = 0, ws_small = 0;
    OK(o->conv_prepare(ctx, &big, &ws_big));
    OK(o->conv_prepare(ctx, &small, &ws_small));
    o->conv_release(ctx, &small);
    OK(o->conv_prepare(ctx, &small, &ws_small));  // released and prepared again
    size_t ws_bytes = ws_big > ws_small ? ws_big : ws_small;
    void *ws = NULL;
    if (ws_bytes) OK(o->alloc(ctx, &ws, ws_bytes));

    const size_t xn = 4 * 3 * 8 * 8, yn = 4 * 5 * 8 * 8, half_y = yn / 2;
    float *hx = rand_floats(&r, xn, 1.f), *hw = rand_floats(&r, 5 * 3 * 9, 0.5f), *hb = rand_floats(&r, 5, 0.5f);
    void *x, *w, *b, *y4, *y2;
    OK(o->alloc(ctx, &x, xn * 4));
    OK(o->alloc(ctx, &w, 5 * 3 * 9 * 4));
    OK(o->alloc(ctx, &b, 5 * 4));
    OK(o->alloc(ctx, &y4, yn * 4));
    OK(o->alloc(ctx, &y2, half_y * 4));
    OK(o->upload(ctx, x, hx, xn * 4));
    OK(o->upload(ctx, w, hw, 5 * 3 * 9 * 4));
    OK(o->upload(ctx, b, hb, 5 * 4));
    OK(o->conv_forward(ctx, &big, x, w, b, y4, ws));
    OK(o->conv_forward(ctx, &small, x, w, b, y2, ws));  // the first two samples
    float *a = malloc(yn * 4), *c = malloc(half_y * 4);
    assert_non_null(a);
    assert_non_null(c);
    OK(o->download(ctx, a, y4, yn * 4));
    OK(o->download(ctx, c, y2, half_y * 4));
    double e = norm_err(c, a, half_y);
    if (!(e <= TOL_CONV)) fail_msg("conv n=2 plan vs n=4 plan: normalised error %.3g", e);

    conv_desc wrong = small;
    wrong.n = 3;
    assert_int_equal(o->conv_forward(ctx, &wrong, x, w, b, y4, ws), ST_RUNTIME);
    assert_non_null(strstr(err_msg(), "conv_forward"));
    err_clear();
    conv_desc unprepared = big;
    unprepared.plan = NULL;
    assert_int_equal(o->conv_forward(ctx, &unprepared, x, w, b, y4, ws), ST_RUNTIME);
    assert_non_null(strstr(err_msg(), "not prepared"));
    err_clear();

    o->conv_release(ctx, &big);
    o->conv_release(ctx, &small);
    o->conv_release(ctx, &small);  // twice is harmless
    o->free(ctx, x), o->free(ctx, w), o->free(ctx, b), o->free(ctx, y4), o->free(ctx, y2), o->free(ctx, ws);
    free(hx), free(hw), free(hb), free(a), free(c);
}

// ---------------------------------------------------------------------------------------------------------
// Pooling

static void pool_case_run(int n, int c, int h, int w, int size, int stride, int pad, rng *r) {
    pool_desc d = {.n = n, .c = c, .h = h, .w = w, .size = size, .stride = stride, .pad = pad};
    OK(pool_desc_init(&d, "test pool"));
    const size_t xn = (size_t)n * c * h * w, yn = (size_t)n * c * d.oh * d.ow;
    float *hx = rand_floats(r, xn, 1.f), *hdy = rand_floats(r, yn, 1.f);
    twin x = twin_make(hx, xn * 4), y = twin_make(NULL, yn * 4), am = twin_make(NULL, yn * 4);
    twin dy = twin_make(hdy, yn * 4), dx = twin_make(hx, xn * 4);  // dx starts dirty: it must be overwritten
    OK(g_cpu.ops->pool_forward(g_cpu.ctx, &d, x.c, y.c, am.c));
    OK(g_gpu.ops->pool_forward(g_gpu.ctx, &d, x.g, y.g, am.g));
    expect_close("pool forward y", &y, 0.0);
    // argmax is each backend's private hand-over from forward to backward; dx checks it in effect.
    OK(g_cpu.ops->pool_backward(g_cpu.ctx, &d, dy.c, am.c, dx.c));
    OK(g_gpu.ops->pool_backward(g_gpu.ctx, &d, dy.g, am.g, dx.g));
    expect_close("pool backward dx", &dx, TOL_EXACTISH);
    twin_free(&x), twin_free(&y), twin_free(&am), twin_free(&dy), twin_free(&dx);
    free(hx), free(hdy);
}

static void test_pool(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 41);
    pool_case_run(2, 3, 8, 8, 2, 2, 0, &r);    // tiling windows
    pool_case_run(2, 2, 9, 7, 3, 2, 0, &r);    // overlapping windows: dx sums
    pool_case_run(1, 2, 10, 10, 2, 3, 0, &r);  // gaps: some inputs in no window
    pool_case_run(3, 4, 7, 7, 2, 2, 0, &r);    // odd size: last row/column unused
    // Padding (-inf, windows clipped to the input): ResNet's stem pool, 2x2 pad 1, stride 1 "same", the most
    pool_case_run(2, 3, 16, 15, 3, 2, 1, &r);
    pool_case_run(2, 2, 7, 9, 2, 2, 1, &r);
    pool_case_run(1, 4, 6, 6, 3, 1, 1, &r);
    pool_case_run(2, 2, 5, 11, 5, 2, 2, &r);
    pool_case_run(1, 1, 1, 1, 3, 1, 1, &r);    // one value: every window holds it
}

// ---------------------------------------------------------------------------------------------------------
// Dense

static void dense_case_run(int n, int in, int out, int act, rng *r, int no_bias) {
    float *hx = rand_floats(r, (size_t)n * in, 1.f), *hw = rand_floats(r, (size_t)out * in, 0.5f);
    float *hb = rand_floats(r, out, 0.5f), *hdy = rand_floats(r, (size_t)n * out, 1.f);
    twin x = twin_make(hx, (size_t)n * in * 4), w = twin_make(hw, (size_t)out * in * 4), b = twin_make(hb, out * 4);
    twin y = twin_make(NULL, (size_t)n * out * 4), dy = twin_make(hdy, (size_t)n * out * 4);
    twin dx = twin_make(NULL, (size_t)n * in * 4), dw = twin_make(NULL, (size_t)out * in * 4), db = twin_make(NULL, out * 4);
    float *bc = no_bias ? NULL : (float *)b.c, *bg = no_bias ? NULL : (float *)b.g;
    float *dbc = no_bias ? NULL : (float *)db.c, *dbg = no_bias ? NULL : (float *)db.g;
    OK(g_cpu.ops->dense_forward(g_cpu.ctx, n, in, out, act, x.c, w.c, bc, y.c));
    OK(g_gpu.ops->dense_forward(g_gpu.ctx, n, in, out, act, x.g, w.g, bg, y.g));
    expect_close("dense forward y", &y, TOL_DENSE);
    twin_copy_cpu_to_gpu(&y);
    OK(g_cpu.ops->dense_backward(g_cpu.ctx, n, in, out, act, x.c, w.c, y.c, dy.c, dx.c, dw.c, dbc));
    OK(g_gpu.ops->dense_backward(g_gpu.ctx, n, in, out, act, x.g, w.g, y.g, dy.g, dx.g, dw.g, dbg));
    expect_close("dense backward dy", &dy, TOL_EXACTISH);
    expect_close("dense backward dx", &dx, TOL_DENSE);
    expect_close("dense backward dw", &dw, TOL_DENSE);
    if (!no_bias) expect_close("dense backward db", &db, TOL_DENSE);
    OK(g_cpu.ops->dense_backward(g_cpu.ctx, n, in, out, act, x.c, w.c, y.c, dy.c, NULL, dw.c, dbc));
    OK(g_gpu.ops->dense_backward(g_gpu.ctx, n, in, out, act, x.g, w.g, y.g, dy.g, NULL, dw.g, dbg));
    expect_close("dense backward dw (no dx)", &dw, TOL_DENSE);
    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&y), twin_free(&dy), twin_free(&dx), twin_free(&dw);
    twin_free(&db);
    free(hx), free(hw), free(hb), free(hdy);
}

static void test_dense(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 51);
    dense_case_run(7, 19, 11, ACT_RELU, &r, 0);
    dense_case_run(5, 3, 40, ACT_NONE, &r, 0);     // more columns than one bias-gradient block
    dense_case_run(64, 256, 100, ACT_RELU, &r, 0);
    dense_case_run(1, 10, 1, ACT_NONE, &r, 0);
    dense_case_run(9, 17, 13, ACT_LEAKY, &r, 0);
    dense_case_run(6, 12, 7, ACT_LEAKY, &r, 1);    // no bias (b = db = NULL)
    dense_case_run(4, 8, 5, ACT_NONE, &r, 1);
    dense_case_run(8, 512, 30, ACT_RELU6, &r, 0);  // pre-activations past 6 and below 0
    dense_case_run(7, 33, 12, ACT_SIGMOID, &r, 1);
}

// ---------------------------------------------------------------------------------------------------------
// Batch normalisation: the four ops, training and evaluation. Backward starts from the CPU's forward output on
// both backends (twin_copy_cpu_to_gpu), as for the dense ReLU mask.

static void bn_case_run(int n, int c, int hw, int act, rng *r) {
    const size_t nx = (size_t)n * c * hw;
    float *hx = rand_floats(r, nx, 2.f), *hw_ = rand_floats(r, (size_t)c, 1.f), *hb = rand_floats(r, (size_t)c, 0.5f);
    float *hdy = rand_floats(r, nx, 1.f), *hrun = malloc((2 * (size_t)c + 1) * sizeof(float));
    assert_non_null(hrun);
    for (size_t i = 0; i < nx; i++) hx[i] += 3.f;  // a mean far from 0
    for (int k = 0; k < c; k++) hrun[k] = 0.5f, hrun[c + k] = 1.5f;
    hrun[2 * c] = 7.f;
    const bn_desc d = {.n = n, .c = c, .hw = hw, .act = act, .eps = 1e-5f, .momentum = 0.1f,
                       .count = (int64_t)n * hw};
    twin x = twin_make(hx, nx * 4), w = twin_make(hw_, (size_t)c * 4), b = twin_make(hb, (size_t)c * 4);
    twin run = twin_make(hrun, (2 * (size_t)c + 1) * 4), st = twin_make(NULL, 3 * (size_t)c * 4);
    twin save = twin_make(NULL, 2 * (size_t)c * 4), y = twin_make(NULL, nx * 4), dy = twin_make(hdy, nx * 4);
    twin dx = twin_make(NULL, nx * 4), dw = twin_make(NULL, (size_t)c * 4), db = twin_make(NULL, (size_t)c * 4);
    twin gst = twin_make(NULL, 2 * (size_t)c * 4);
    OK(g_cpu.ops->bn_stats(g_cpu.ctx, &d, x.c, st.c));
    OK(g_gpu.ops->bn_stats(g_gpu.ctx, &d, x.g, st.g));
    expect_close("bn_stats", &st, TOL_EXACTISH);
    OK(g_cpu.ops->bn_apply(g_cpu.ctx, &d, x.c, st.c, w.c, b.c, run.c, save.c, y.c));
    OK(g_gpu.ops->bn_apply(g_gpu.ctx, &d, x.g, st.g, w.g, b.g, run.g, save.g, y.g));
    expect_close("bn_apply (training) y", &y, TOL_DENSE);
    expect_close("bn_apply save", &save, TOL_DENSE);
    expect_close("bn_apply running statistics", &run, TOL_DENSE);
    twin_copy_cpu_to_gpu(&y), twin_copy_cpu_to_gpu(&save);
    OK(g_cpu.ops->bn_grad_stats(g_cpu.ctx, &d, x.c, y.c, save.c, dy.c, dw.c, db.c, gst.c));
    OK(g_gpu.ops->bn_grad_stats(g_gpu.ctx, &d, x.g, y.g, save.g, dy.g, dw.g, db.g, gst.g));
    expect_close("bn_grad_stats dz", &dy, TOL_EXACTISH);
    expect_close("bn_grad_stats dw", &dw, TOL_DENSE);
    expect_close("bn_grad_stats db", &db, TOL_DENSE);
    expect_close("bn_grad_stats gstats", &gst, TOL_DENSE);
    twin_copy_cpu_to_gpu(&gst);
    OK(g_cpu.ops->bn_grad_input(g_cpu.ctx, &d, x.c, save.c, w.c, gst.c, dy.c, dx.c));
    OK(g_gpu.ops->bn_grad_input(g_gpu.ctx, &d, x.g, save.g, w.g, gst.g, dy.g, dx.g));
    expect_close("bn_grad_input dx", &dx, TOL_DENSE);
    twin_copy_cpu_to_gpu(&run);
    OK(g_cpu.ops->bn_apply(g_cpu.ctx, &d, x.c, NULL, w.c, b.c, run.c, save.c, y.c));
    OK(g_gpu.ops->bn_apply(g_gpu.ctx, &d, x.g, NULL, w.g, b.g, run.g, save.g, y.g));
    expect_close("bn_apply (evaluation) y", &y, TOL_DENSE);
    expect_equal_bytes("bn_apply (evaluation) leaves running", &run);
    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&run), twin_free(&st), twin_free(&save), twin_free(&y);
    twin_free(&dy), twin_free(&dx), twin_free(&dw), twin_free(&db), twin_free(&gst);
    free(hx), free(hw_), free(hb), free(hdy), free(hrun);
}

static void test_batchnorm(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 61);
    bn_case_run(4, 3, 25, ACT_NONE, &r);
    bn_case_run(16, 32, 196, ACT_RELU, &r);  // more values per channel than one block's threads
    bn_case_run(64, 100, 1, ACT_LEAKY, &r);  // per feature, after a dense
    bn_case_run(2, 1, 3, ACT_RELU, &r);
    bn_case_run(8, 5, 49, ACT_RELU6, &r);
    bn_case_run(16, 40, 1, ACT_SIGMOID, &r);
}

// ---------------------------------------------------------------------------------------------------------
// Softmax cross-entropy

static void xent_case_run(int n, int classes, float smoothing, rng *r) {
    float *hz = rand_floats(r, (size_t)n * classes, 4.f);
    int32_t *hl = malloc(n * sizeof *hl);
    assert_non_null(hl);
    for (int i = 0; i < n; i++) hl[i] = (int32_t)rng_below(r, (uint32_t)classes);
    // Make some predictions right, so that the count is not trivially zero.
    for (int i = 0; i < n; i += 2) hz[(size_t)i * classes + hl[i]] = 9.f;
    const double loss0 = 1.25;
    const int32_t correct0 = 3;
    twin z = twin_make(hz, (size_t)n * classes * 4), l = twin_make(hl, n * 4);
    twin dz = twin_make(NULL, (size_t)n * classes * 4), loss = twin_make(&loss0, 8), cor = twin_make(&correct0, 4);
    for (int pass = 0; pass < 2; pass++) {  // the second pass accumulates, without dlogits
        float *dzc = pass ? NULL : dz.c, *dzg = pass ? NULL : dz.g;
        OK(g_cpu.ops->softmax_xent(g_cpu.ctx, n, classes, z.c, l.c, smoothing, 1.0f, dzc, loss.c, cor.c));
        OK(g_gpu.ops->softmax_xent(g_gpu.ctx, n, classes, z.g, l.g, smoothing, 1.0f, dzg, loss.g, cor.g));
    }
    expect_close("softmax_xent dlogits", &dz, TOL_DENSE);
    double lc, lg;
    twin_read(&loss, &lc, &lg);
    if (!(fabs(lg - lc) <= 1e-5 * fabs(lc))) fail_msg("softmax_xent loss: CUDA %.9g vs CPU %.9g", lg, lc);
    assert_true(lc > loss0);
    int32_t cc, cg;
    twin_read(&cor, &cc, &cg);
    assert_int_equal(cg, cc);
    assert_true(cc >= correct0 + 2 * ((n + 1) / 2));
    twin_free(&z), twin_free(&l), twin_free(&dz), twin_free(&loss), twin_free(&cor);
    free(hz), free(hl);
}

static void test_softmax_xent(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 61);
    xent_case_run(9, 10, 0.0f, &r);
    xent_case_run(20, 37, 0.0f, &r);   // more classes than a warp has lanes
    xent_case_run(3, 1000, 0.0f, &r);
    xent_case_run(100, 2, 0.0f, &r);   // several blocks
    xent_case_run(20, 37, 0.1f, &r);   // label smoothing
    xent_case_run(100, 10, 0.2f, &r);
}

// ---------------------------------------------------------------------------------------------------------
// Optimizers (offset 1 makes the buffers 4-byte aligned only: the scalar path)

static void adam_case_run(size_t n, size_t off, float wd, float dwd, rng *r) {
    const size_t tot = n + off;
    float *hp = rand_floats(r, tot, 1.f);
    twin p = twin_make(hp, tot * 4), g = twin_make(NULL, tot * 4), m = twin_make(NULL, tot * 4);
    twin v = twin_make(NULL, tot * 4), h = twin_make(NULL, sizeof(adam_hyper));
    for (int t = 1; t <= 3; t++) {
        adam_hyper hh = {.lr = 1e-3f * (float)t, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-7f, .weight_decay = wd,
                         .decoupled_wd = dwd, .t = t};
        float *hg = rand_floats(r, tot, 1.f);
        twin_set(&g, hg);
        twin_set(&h, &hh);
        free(hg);
        OK(g_cpu.ops->adam_step(g_cpu.ctx, n, (float *)p.c + off, (float *)g.c + off, (float *)m.c + off,
                                (float *)v.c + off, h.c));
        OK(g_gpu.ops->adam_step(g_gpu.ctx, n, (float *)p.g + off, (float *)g.g + off, (float *)m.g + off,
                                (float *)v.g + off, h.g));
    }
    expect_close("adam p", &p, TOL_DENSE);
    expect_close("adam m", &m, TOL_DENSE);
    expect_close("adam v", &v, TOL_DENSE);
    twin_free(&p), twin_free(&g), twin_free(&m), twin_free(&v), twin_free(&h);
    free(hp);
}

static void test_adam(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 71);
    adam_case_run(1003, 0, 0.f, 0.f, &r);
    adam_case_run(1003, 1, 0.01f, 0.f, &r);
    adam_case_run(4096, 0, 0.01f, 0.f, &r);
    adam_case_run(3, 0, 0.f, 0.f, &r);
    adam_case_run(4096, 0, 0.f, 0.05f, &r);  // AdamW
    adam_case_run(1003, 1, 0.f, 0.05f, &r);
}

static void sgd_case_run(size_t n, size_t off, float wd, float nesterov, rng *r) {
    const size_t tot = n + off;
    float *hp = rand_floats(r, tot, 1.f);
    twin p = twin_make(hp, tot * 4), g = twin_make(NULL, tot * 4), vel = twin_make(NULL, tot * 4);
    twin h = twin_make(NULL, sizeof(sgd_hyper));
    for (int t = 1; t <= 3; t++) {
        sgd_hyper hh = {.lr = 0.05f / (float)t, .momentum = 0.9f, .weight_decay = wd, .nesterov = nesterov};
        float *hg = rand_floats(r, tot, 1.f);
        twin_set(&g, hg);
        twin_set(&h, &hh);
        free(hg);
        OK(g_cpu.ops->sgd_step(g_cpu.ctx, n, (float *)p.c + off, (float *)g.c + off, (float *)vel.c + off, h.c));
        OK(g_gpu.ops->sgd_step(g_gpu.ctx, n, (float *)p.g + off, (float *)g.g + off, (float *)vel.g + off, h.g));
    }
    expect_close("sgd p", &p, TOL_DENSE);
    expect_close("sgd velocity", &vel, TOL_DENSE);
    twin_free(&p), twin_free(&g), twin_free(&vel), twin_free(&h);
    free(hp);
}

static void test_sgd(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 81);
    sgd_case_run(1003, 0, 5e-4f, 0.f, &r);
    sgd_case_run(1003, 3, 0.f, 0.f, &r);
    sgd_case_run(2, 0, 0.f, 0.f, &r);
    sgd_case_run(4096, 0, 5e-4f, 1.f, &r);  // Nesterov
    sgd_case_run(1003, 3, 0.f, 1.f, &r);
}

// ---------------------------------------------------------------------------------------------------------
// Utilities

static void test_scale_and_count_nonfinite(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 91);
    enum { N = 100001 };
    float *hx = rand_floats(&r, N, 3.f);
    twin x = twin_make(hx, N * 4), cnt = twin_make(NULL, 4);
    OK(g_cpu.ops->scale(g_cpu.ctx, N, -0.37f, x.c));
    OK(g_gpu.ops->scale(g_gpu.ctx, N, -0.37f, x.g));
    expect_close("scale", &x, TOL_EXACTISH);
    float *hy = rand_floats(&r, N, 2.f);
    twin y = twin_make(hy, N * 4);
    OK(g_cpu.ops->add(g_cpu.ctx, N, x.c, y.c));
    OK(g_gpu.ops->add(g_gpu.ctx, N, x.g, y.g));
    expect_close("add", &y, TOL_EXACTISH);
    twin_free(&y);
    free(hy);
    OK(g_cpu.ops->count_nonfinite(g_cpu.ctx, N, x.c, cnt.c));
    OK(g_gpu.ops->count_nonfinite(g_gpu.ctx, N, x.g, cnt.g));
    int32_t cc, cg;
    twin_read(&cnt, &cc, &cg);
    assert_int_equal(cc, 0);
    assert_int_equal(cg, 0);
    hx[5] = NAN, hx[100] = INFINITY, hx[N - 1] = -INFINITY, hx[77777] = NAN;
    twin_set(&x, hx);
    OK(g_cpu.ops->count_nonfinite(g_cpu.ctx, N, x.c, cnt.c));
    OK(g_gpu.ops->count_nonfinite(g_gpu.ctx, N, x.g, cnt.g));  // overwrites the previous count
    twin_read(&cnt, &cc, &cg);
    assert_int_equal(cc, 4);
    assert_int_equal(cg, 4);
    twin_free(&x), twin_free(&cnt);
    free(hx);
}

static void test_clip_grad_norm(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 93);
    enum { N = 100003 };
    float *hx = rand_floats(&r, N, 1.f);
    twin x = twin_make(hx, N * 4), ss = twin_make(NULL, sizeof(double));
    for (int k = 0; k < 2; k++) {
        const float max_norm = k == 0 ? 1e6f : 0.25f;  // untouched, then clipped
        OK(g_cpu.ops->clip_grad_norm(g_cpu.ctx, N, x.c, max_norm, ss.c));
        OK(g_gpu.ops->clip_grad_norm(g_gpu.ctx, N, x.g, max_norm, ss.g));
        expect_close("clip_grad_norm g", &x, TOL_DENSE);
        double sc, sg;
        twin_read(&ss, &sc, &sg);
        if (fabs(sc - sg) > 1e-6 * sc) fail_msg("sum of squares: CPU %.12g, CUDA %.12g", sc, sg);
    }
    // The norm is an ordered two-pass reduction: the same input gives the same bits every time (a double
    // atomicAdd across blocks would not, so net.deterministic=1 with clipping would not be bit-identical).
    double first = 0;
    for (int rep = 0; rep < 20; rep++) {
        OK(g_gpu.ops->clip_grad_norm(g_gpu.ctx, N, x.g, 1e30f, ss.g));
        double v;
        OK(g_gpu.ops->download(g_gpu.ctx, &v, ss.g, sizeof v));
        if (rep == 0) first = v;
        else if (memcmp(&v, &first, sizeof v) != 0) fail_msg("sum of squares run %d: %.17g, first run %.17g", rep, v, first);
    }
    twin_free(&x), twin_free(&ss);
    free(hx);
}

// ---------------------------------------------------------------------------------------------------------
// CUDA Graph: a captured step (dense -> softmax_xent -> dense backward -> SGD) replayed twice with different
// learning rates equals the same two steps run eagerly, on the GPU and on the CPU.

enum { CAP_N = 8, CAP_IN = 12, CAP_OUT = 5 };

typedef struct step_bufs {
    void *x, *lab, *w, *b, *vw, *vb, *y, *dy, *dw, *db, *loss, *cor, *h;
} step_bufs;

static void step_alloc(backend *be, step_bufs *s, const float *x, const int32_t *lab, const float *w,
                       const float *b) {
    void **all[] = {&s->x, &s->lab, &s->w, &s->b, &s->vw, &s->vb, &s->y, &s->dy, &s->dw, &s->db, &s->loss, &s->cor, &s->h};
    size_t bytes[] = {CAP_N * CAP_IN * 4, CAP_N * 4, CAP_OUT * CAP_IN * 4, CAP_OUT * 4, CAP_OUT * CAP_IN * 4,
                      CAP_OUT * 4, CAP_N * CAP_OUT * 4, CAP_N * CAP_OUT * 4, CAP_OUT * CAP_IN * 4, CAP_OUT * 4, 8, 4,
                      sizeof(sgd_hyper)};
    for (size_t i = 0; i < sizeof bytes / sizeof bytes[0]; i++) OK(be->ops->alloc(be->ctx, all[i], bytes[i]));
    OK(be->ops->upload(be->ctx, s->x, x, bytes[0]));
    OK(be->ops->upload(be->ctx, s->lab, lab, bytes[1]));
    OK(be->ops->upload(be->ctx, s->w, w, bytes[2]));
    OK(be->ops->upload(be->ctx, s->b, b, bytes[3]));
}

static void step_free(backend *be, step_bufs *s) {
    void *all[] = {s->x, s->lab, s->w, s->b, s->vw, s->vb, s->y, s->dy, s->dw, s->db, s->loss, s->cor, s->h};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) be->ops->free(be->ctx, all[i]);
}

static void step_run(backend *be, const step_bufs *s) {
    const backend_ops *o = be->ops;
    OK(o->dense_forward(be->ctx, CAP_N, CAP_IN, CAP_OUT, ACT_NONE, s->x, s->w, s->b, s->y));
    OK(o->softmax_xent(be->ctx, CAP_N, CAP_OUT, s->y, s->lab, 0.0f, 1.0f, s->dy, s->loss, s->cor));
    OK(o->dense_backward(be->ctx, CAP_N, CAP_IN, CAP_OUT, ACT_NONE, s->x, s->w, s->y, s->dy, NULL, s->dw, s->db));
    OK(o->sgd_step(be->ctx, CAP_OUT * CAP_IN, s->w, s->dw, s->vw, s->h));
    OK(o->sgd_step(be->ctx, CAP_OUT, s->b, s->db, s->vb, s->h));
}

static void step_result(backend *be, const step_bufs *s, float *w, float *b, double *loss) {
    OK(be->ops->download(be->ctx, w, s->w, CAP_OUT * CAP_IN * 4));
    OK(be->ops->download(be->ctx, b, s->b, CAP_OUT * 4));
    OK(be->ops->download(be->ctx, loss, s->loss, 8));
}

static void test_capture_replay(void **state) {
    (void)state;
    NEED_CUDA();
    const backend_ops *o = g_gpu.ops;
    void *ctx = g_gpu.ctx;
    assert_non_null(o->capture_begin);
    // Misuse is refused with a message.
    assert_int_equal(o->replay(ctx), ST_RUNTIME);
    err_clear();
    assert_int_equal(o->capture_end(ctx), ST_RUNTIME);
    err_clear();

    rng r;
    rng_seed(&r, 101);
    float *hx = rand_floats(&r, CAP_N * CAP_IN, 1.f), *hw = rand_floats(&r, CAP_OUT * CAP_IN, 0.5f);
    float *hb = rand_floats(&r, CAP_OUT, 0.5f);
    int32_t lab[CAP_N];
    for (int i = 0; i < CAP_N; i++) lab[i] = (int32_t)rng_below(&r, CAP_OUT);
    const float lrs[2] = {0.1f, 0.05f};
    step_bufs cpu, eager, graph;
    step_alloc(&g_cpu, &cpu, hx, lab, hw, hb);
    step_alloc(&g_gpu, &eager, hx, lab, hw, hb);
    step_alloc(&g_gpu, &graph, hx, lab, hw, hb);

    // Eager first: libraries set up lazily on first use, which must not happen inside a capture.
    for (int i = 0; i < 2; i++) {
        sgd_hyper h = {.lr = lrs[i], .momentum = 0.9f, .weight_decay = 1e-3f};
        OK(g_cpu.ops->upload(g_cpu.ctx, cpu.h, &h, sizeof h));
        step_run(&g_cpu, &cpu);
        OK(o->upload(ctx, eager.h, &h, sizeof h));
        step_run(&g_gpu, &eager);
    }

    OK(o->capture_begin(ctx));
    assert_int_equal(o->capture_begin(ctx), ST_RUNTIME);  // already open
    err_clear();
    sgd_hyper junk = {0};
    assert_int_equal(o->upload(ctx, graph.h, &junk, sizeof junk), ST_RUNTIME);  // not stream work
    assert_non_null(strstr(err_msg(), "capture"));
    err_clear();
    assert_int_equal(o->sync(ctx), ST_RUNTIME);
    err_clear();
    step_run(&g_gpu, &graph);
    OK(o->capture_end(ctx));
    for (int i = 0; i < 2; i++) {
        sgd_hyper h = {.lr = lrs[i], .momentum = 0.9f, .weight_decay = 1e-3f};
        OK(o->upload(ctx, graph.h, &h, sizeof h));  // read by the graph at replay time
        OK(o->replay(ctx));
    }
    OK(o->sync(ctx));

    float wc[CAP_OUT * CAP_IN], we[CAP_OUT * CAP_IN], wg[CAP_OUT * CAP_IN], bc[CAP_OUT], be[CAP_OUT], bg[CAP_OUT];
    double lc, le, lg;
    step_result(&g_cpu, &cpu, wc, bc, &lc);
    step_result(&g_gpu, &eager, we, be, &le);
    step_result(&g_gpu, &graph, wg, bg, &lg);
    double e;
    if (!((e = norm_err(wg, we, CAP_OUT * CAP_IN)) <= TOL_EXACTISH)) fail_msg("graph vs eager w: %.3g", e);
    if (!((e = norm_err(bg, be, CAP_OUT)) <= TOL_EXACTISH)) fail_msg("graph vs eager b: %.3g", e);
    if (!(fabs(lg - le) <= 1e-9 * fabs(le))) fail_msg("graph vs eager loss: %.9g vs %.9g", lg, le);
    if (!((e = norm_err(we, wc, CAP_OUT * CAP_IN)) <= TOL_DENSE)) fail_msg("eager CUDA vs CPU w: %.3g", e);
    if (!(fabs(le - lc) <= 1e-5 * fabs(lc))) fail_msg("eager CUDA vs CPU loss: %.9g vs %.9g", le, lc);
    // The weights moved: the second replay used the second learning rate, not a stale first one.
    assert_true(norm_err(wg, hw, CAP_OUT * CAP_IN) > 1e-4);

    step_free(&g_cpu, &cpu);
    step_free(&g_gpu, &eager);
    step_free(&g_gpu, &graph);
    free(hx), free(hw), free(hb);
}

// Timing marks: events on the compute stream. Eager: a mark after a long op is later than one before it.
// Captured: the marks are graph nodes, so each replay records them again (the second replay's times are
// later than a mark recorded, eagerly, between the two replays).
static void test_marks(void **state) {
    (void)state;
    NEED_CUDA();
    const backend_ops *o = g_gpu.ops;
    void *ctx = g_gpu.ctx;
    void *a = NULL, *b = NULL, *between = NULL;
    OK(o->mark_create(ctx, &a));
    OK(o->mark_create(ctx, &b));
    OK(o->mark_create(ctx, &between));
    const size_t n = (size_t)16 << 20;
    float *x = NULL;
    OK(o->alloc(ctx, (void **)&x, n * sizeof(float)));
    OK(o->mark_record(ctx, a));
    for (int i = 0; i < 20; i++) OK(o->scale(ctx, n, 1.0f, x));
    OK(o->mark_record(ctx, b));
    int done = 0;
    for (int i = 0; i < 1000000 && !done; i++) OK(o->mark_query(ctx, b, &done));
    OK(o->sync(ctx));
    OK(o->mark_query(ctx, b, &done));
    assert_int_equal(done, 1);
    double dt = -1;
    OK(o->mark_elapsed(ctx, a, b, &dt));
    print_message("20 scales of 64 MiB: %.3f ms between marks\n", dt * 1e3);
    assert_true(dt > 0 && dt < 10);

    OK(o->capture_begin(ctx));
    OK(o->mark_record(ctx, a));
    OK(o->scale(ctx, n, 1.0f, x));
    OK(o->mark_record(ctx, b));
    OK(o->capture_end(ctx));
    OK(o->replay(ctx));
    OK(o->mark_record(ctx, between));
    OK(o->replay(ctx));
    OK(o->sync(ctx));
    double ab = -1, after = -1;
    OK(o->mark_elapsed(ctx, a, b, &ab));
    OK(o->mark_elapsed(ctx, between, a, &after));
    assert_true(ab > 0);
    assert_true(after >= 0);  // a was recorded again by the second replay
    o->free(ctx, x);
    o->mark_destroy(ctx, a);
    o->mark_destroy(ctx, b);
    o->mark_destroy(ctx, between);
}

// TF32 must do what it says, and off must really be off. Inputs whose products lose bits in TF32 (10 mantissa
// bits): x = ±(1 + 2^-12), w = ±1. Every partial sum of FP32 products is then k·(1 + 2^-12) with |k| <= in <=
// 2^12, exact in FP32 whatever the order, so FP32 math gives the exact result (CPU and GPU alike), while
// TF32 rounds x to ±1 and gives the integer k: most outputs differ, each by at most |k|·2^-12. A switch that
// did nothing fails the tf32=1 check; one that left TF32 on fails the tf32=0 checks. TF32 needs sm_80+.
static void tf32_gemm(const twin *x, const twin *w, const twin *y, int n, int in, int out, float *got) {
    OK(g_gpu.ops->zero(g_gpu.ctx, y->g, y->bytes));
    OK(g_gpu.ops->dense_forward(g_gpu.ctx, n, in, out, ACT_NONE, x->g, w->g, NULL, y->g));
    OK(g_gpu.ops->download(g_gpu.ctx, got, y->g, y->bytes));
}

// Outputs that are not equal as values (+0 and -0 are equal: a sum that cancels may come out either way).
static size_t count_unequal(const float *a, const float *b, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += !(a[i] == b[i]);
    return k;
}

static void test_tf32(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 111);
    const int n = 512, in = 1024, out = 512;
    const size_t nx = (size_t)n * in, nw = (size_t)out * in, ny = (size_t)n * out;
    float *hx = malloc(nx * 4), *hw = malloc(nw * 4), *ref = malloc(ny * 4), *got = malloc(ny * 4);
    assert_non_null(hx), assert_non_null(hw), assert_non_null(ref), assert_non_null(got);
    for (size_t i = 0; i < nx; i++) hx[i] = (rng_below(&r, 2) ? 1.f : -1.f) * (1.f + 0x1p-12f);
    for (size_t i = 0; i < nw; i++) hw[i] = rng_below(&r, 2) ? 1.f : -1.f;
    twin x = twin_make(hx, nx * 4), w = twin_make(hw, nw * 4), y = twin_make(NULL, ny * 4);
    OK(g_cpu.ops->dense_forward(g_cpu.ctx, n, in, out, ACT_NONE, x.c, w.c, NULL, y.c));
    OK(g_cpu.ops->download(g_cpu.ctx, ref, y.c, ny * 4));

    OK(backend_cuda_set_tf32(&g_gpu, 0));
    tf32_gemm(&x, &w, &y, n, in, out, got);
    size_t differ = count_unequal(got, ref, ny);
    if (differ) fail_msg("tf32=0: %zu of %zu GEMM outputs differ from the exact FP32 result", differ, ny);

    const int cc = backend_cuda_compute_capability(&g_gpu);
    if (cc >= 80) {
        OK(backend_cuda_set_tf32(&g_gpu, 1));
        tf32_gemm(&x, &w, &y, n, in, out, got);
        differ = count_unequal(got, ref, ny);
        for (size_t i = 0; i < ny; i++) {
            const double k = rint(ref[i] / (1.0 + 0x1p-12));  // the TF32 result
            if (!(fabs(got[i] - ref[i]) <= fabs(k) * 0x1p-12 + 1e-6))
                fail_msg("tf32=1: output %zu is %.9g, exact %.9g: more than TF32 rounding", i, got[i], ref[i]);
        }
        print_message("tf32=1 on sm_%d: %zu of %zu outputs differ from FP32\n", cc, differ, ny);
        // Outputs with k = 0 agree (about 2.5% for in = 1024); any working TF32 changes nearly all the others.
        if (differ < ny / 2)
            fail_msg("tf32=1 changed only %zu of %zu outputs: TF32 is not in effect (NVIDIA_TF32_OVERRIDE=%s)", differ,
                     ny, getenv("NVIDIA_TF32_OVERRIDE") ? getenv("NVIDIA_TF32_OVERRIDE") : "unset");
        OK(backend_cuda_set_tf32(&g_gpu, 0));
        tf32_gemm(&x, &w, &y, n, in, out, got);
        differ = count_unequal(got, ref, ny);
        if (differ) fail_msg("tf32 back to 0: %zu GEMM outputs still differ from FP32", differ);
    } else {
        print_message("sm_%d has no TF32: only tf32=0 checked\n", cc);
    }
    twin_free(&x), twin_free(&w), twin_free(&y);
    free(hx), free(hw), free(ref), free(got);

    // Convolutions with TF32 on (plans take the math at conv_prepare): close to FP32, within TF32's precision.
    if (cc >= 80) {
        OK(backend_cuda_set_tf32(&g_gpu, 1));
        conv_desc d = {.n = 64, .c = 32, .h = 13, .w = 13, .k = 64, .r = 3, .s = 3, .stride = 1, .pad = 0,
                       .act = ACT_NONE};
        OK(conv_desc_init(&d, "tf32 conv"));
        conv_desc dc = d, dg = d;
        size_t wsc = 0, wsg = 0;
        OK(g_cpu.ops->conv_prepare(g_cpu.ctx, &dc, &wsc));
        OK(g_gpu.ops->conv_prepare(g_gpu.ctx, &dg, &wsg));
        OK(backend_cuda_set_tf32(&g_gpu, 0));  // the plan keeps TF32; later tests get FP32 again
        void *wc = NULL, *wg = NULL;
        if (wsc) OK(g_cpu.ops->alloc(g_cpu.ctx, &wc, wsc));
        if (wsg) OK(g_gpu.ops->alloc(g_gpu.ctx, &wg, wsg));
        const size_t cx = (size_t)d.n * d.c * d.h * d.w, cw = (size_t)d.k * d.c * 9, cy = (size_t)d.n * d.k * d.oh * d.ow;
        float *hcx = rand_floats(&r, cx, 1.f), *hcw = rand_floats(&r, cw, 0.5f), *hcb = rand_floats(&r, d.k, 0.5f);
        twin tx = twin_make(hcx, cx * 4), tw = twin_make(hcw, cw * 4), tb = twin_make(hcb, d.k * 4);
        twin ty = twin_make(NULL, cy * 4);
        OK(g_cpu.ops->conv_forward(g_cpu.ctx, &dc, tx.c, tw.c, tb.c, ty.c, wc));
        OK(g_gpu.ops->conv_forward(g_gpu.ctx, &dg, tx.g, tw.g, tb.g, ty.g, wg));
        expect_close("conv forward y (tf32)", &ty, 1e-2);
        twin_free(&tx), twin_free(&tw), twin_free(&tb), twin_free(&ty);
        free(hcx), free(hcw), free(hcb);
        g_cpu.ops->free(g_cpu.ctx, wc);
        g_gpu.ops->free(g_gpu.ctx, wg);
        g_cpu.ops->conv_release(g_cpu.ctx, &dc);
        g_gpu.ops->conv_release(g_gpu.ctx, &dg);
    }
}

// ---------------------------------------------------------------------------------------------------------
// net.precision=bf16/fp16 (docs/precision.md): round_to bit for bit, then conv and dense on 16-bit copies against
// the CPU op on the same pre-rounded inputs, its result rounded by the rule (outputs and input gradients held in
// the format, weight and bias gradients fp32); then the grads16 pair (bf16 weight and bias gradients, batch norm's
// too) against the grads16 CPU.

static void set_precision(int format) {
    const backend_cuda_options o = {.tf32 = 0, .deterministic = 0, .precision = format};
    OK(backend_cuda_set_options(&g_gpu, &o));
}

// Special values: bit equality with the CPU's precision_round_* (NaN payloads included), and a sweep of patterns.
static void test_round_to(void **state) {
    (void)state;
    NEED_CUDA();
    const uint32_t special[] = {
        0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,  // ±0, ±Inf
        0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fa5a5a5u, 0xffbfffffu, 0x7fffffffu,  // NaNs, quiet and signalling
        0x7f7fffffu, 0x7f7f7fffu, 0x7f7f8000u, 0x7f7f8001u, 0xff7f8000u,  // bf16: the largest finite, ties to Inf
        0x477fe000u, 0x477fefffu, 0x477ff000u, 0x477ff001u, 0xc77ff000u,  // fp16: 65504, just below/at 65520
        0x38800000u, 0x387fffffu, 0x38000000u, 0x33800000u, 0x33000000u, 0x33000001u, 0x32ffffffu,  // fp16 subnormals
        0x33c00000u, 0x34200000u, 0xb3400000u,  // fp16 subnormal ties: 1.5, 2.5 and -0.75 quanta
        0x00000001u, 0x807fffffu, 0x00400000u,  // fp32 subnormals
        0x3f808000u, 0x3f818000u, 0x3f800001u, 0x3f807fffu,  // bf16 ties to even (down, up) and near ties
        0x3f801000u, 0x3f803000u, 0x3f800fffu,  // fp16 ties to even (down, up) and a near tie
    };
    enum { N_RAND = 1 << 20 };
    const size_t ns = sizeof special / sizeof special[0], n = ns + N_RAND;
    uint32_t *h = malloc(n * 4);
    assert_non_null(h);
    memcpy(h, special, sizeof special);
    rng r;
    rng_seed(&r, 2626);
    for (size_t i = ns; i < n; i++) h[i] = (uint32_t)rng_u64(&r);
    twin x = twin_make(h, n * 4), y = twin_make(NULL, n * 4);
    const int formats[2] = {PREC_BF16, PREC_FP16};
    for (int f = 0; f < 2; f++) {
        OK(g_cpu.ops->round_to(g_cpu.ctx, n, formats[f], x.c, y.c));
        OK(g_gpu.ops->round_to(g_gpu.ctx, n, formats[f], x.g, y.g));
        expect_equal_bytes(formats[f] == PREC_BF16 ? "round_to bf16" : "round_to fp16", &y);
        // in place, as the model calls it
        OK(g_cpu.ops->round_to(g_cpu.ctx, n, formats[f], x.c, x.c));
        OK(g_gpu.ops->round_to(g_gpu.ctx, n, formats[f], x.g, x.g));
        expect_equal_bytes("round_to in place", &x);
        twin_set(&x, h);
    }
    assert_int_not_equal(g_gpu.ops->round_to(g_gpu.ctx, n, PREC_FP32, x.g, y.g), ST_OK);
    err_clear();
    twin_free(&x), twin_free(&y);
    free(h);
}

// Random values already of the format, as the model hands them to conv and dense.
static float *rand_lp(rng *r, size_t n, float scale, int format) {
    float *p = rand_floats(r, n, scale);
    precision_round_array(format, n, p, p);
    return p;
}

static float *abs_copy(const float *p, size_t n) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    assert_non_null(a);
    for (size_t i = 0; i < n; i++) a[i] = fabsf(p[i]);
    return a;
}

// A twin's values as floats (16-bit ones converted exactly).
static float *twin_host(const twin *t, int gpu) {
    const size_t n = twin_count(t);
    float *h = malloc((n ? n : 1) * sizeof *h);
    uint16_t *bits = t->fmt16 ? malloc(t->bytes ? t->bytes : 2) : NULL;
    assert_non_null(h);
    void *raw = t->fmt16 ? (void *)bits : (void *)h;
    assert_non_null(raw);
    if (gpu)
        OK(t->bg->ops->download(t->bg->ctx, raw, t->g, t->bytes));
    else
        OK(t->bc->ops->download(t->bc->ctx, raw, t->c, t->bytes));
    for (size_t i = 0; t->fmt16 && i < n; i++) h[i] = precision_from16(t->fmt16, bits[i]);
    free(bits);
    return h;
}

// A twin of bf16 values (a grads16 pair's dw, db; 2 bytes each) read back as the floats they stand for.
static float *twin_host_bf16(const twin *t, int gpu) {
    const size_t n = t->bytes / sizeof(uint16_t);
    uint16_t *bits = malloc(t->bytes ? t->bytes : 2);
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(bits);
    assert_non_null(h);
    if (gpu)
        OK(t->bg->ops->download(t->bg->ctx, bits, t->g, t->bytes));
    else
        OK(t->bc->ops->download(t->bc->ctx, bits, t->c, t->bytes));
    for (size_t i = 0; i < n; i++) h[i] = precision_from_bits((uint32_t)bits[i] << 16);
    free(bits);
    return h;
}

static void expect_lp(const char *what, int format, const twin *t, const twin *sum_abs, int held, const float *bias,
                      int channels, int inner) {
    float *ref = twin_host(t, 0), *got = twin_host(t, 1), *s = twin_host(sum_abs, 0);
    tu_expect_lp(what, t->fmt16 ? ", act16" : "", format, got, ref, s, twin_count(t), held, bias, channels, inner);
    free(ref), free(got), free(s);
}

// A parameter gradient (dw, db): float32 and compared as the other sums (not held in the format), or on the grads16
// pair bf16 on both sides, compared as floats within the same summation-order tolerance plus one bf16 ulp (the two
// fp32 sums, a little apart, may round to neighbouring bf16 values).
static void expect_lp_grad(const char *what, int format, const twin *t, const twin *sum_abs, int grads16) {
    if (!grads16) {
        expect_lp(what, format, t, sum_abs, 0, NULL, 1, 1);
        return;
    }
    float *ref = twin_host_bf16(t, 0), *got = twin_host_bf16(t, 1), *s = twin_host(sum_abs, 0);
    tu_expect_lp(what, "", PREC_BF16, got, ref, s, t->bytes / sizeof(uint16_t), 1, NULL, 1, 1);
    free(ref), free(got), free(s);
}

// An lp "twin" of |values| on the CPU only, float32 (for the sums of |terms|).
static twin twin_abs_cpu(const twin *t) {
    const size_t n = twin_count(t);
    float *h = twin_host(t, 0), *a = abs_copy(h, n);
    twin r = {NULL, NULL, n * sizeof(float), &g_cpu, NULL, 0};
    OK(g_cpu.ops->alloc(g_cpu.ctx, &r.c, r.bytes));
    OK(g_cpu.ops->upload(g_cpu.ctx, r.c, a, r.bytes));
    free(h), free(a);
    return r;
}

// The sums of |terms| of a CPU-only twin s widened for a mask that rounds (tu_widen_for_mask).
static void widen_for_mask(const twin *s, int format) {
    const size_t n = twin_count(s);
    float *h = twin_host(s, 0);
    tu_widen_for_mask(h, n, format);
    OK(g_cpu.ops->upload(g_cpu.ctx, s->c, h, s->bytes));
    free(h);
}

static void cpu_free(twin *t) {
    g_cpu.ops->free(g_cpu.ctx, t->c);
    t->c = NULL;
}

typedef struct lp_conv_case {
    int n, c, h, w, k, r, stride, pad, act, bias;
    int groups, dilation;  // 0: 1
} lp_conv_case;

// grads16: on the grads16 pair (bf16 only: the CUDA backend holds precision bf16 from its creation), whose dw and db
// are bf16; otherwise on g_cpu and g_gpu, the precision set for the plan. act16: on the act16 pair of the format (and
// grads16), whose x, y, dy and dx are 16-bit buffers (act_pair).
static void lp_conv_run(const lp_conv_case *cc, int format, int grads16, int act16, rng *r) {
    const backend *bc = grads16 ? &g_cpu16 : &g_cpu, *bg = grads16 ? &g_gpu16 : &g_gpu;
    if (act16) act_pair(format, grads16, &bc, &bg);
    const int fa = act16 ? format : 0;  // the activations' format (0: float32)
    conv_desc d = {.n = cc->n, .c = cc->c, .h = cc->h, .w = cc->w, .k = cc->k, .r = cc->r, .s = cc->r,
                   .stride = cc->stride, .pad = cc->pad, .groups = cc->groups, .dilation = cc->dilation,
                   .act = cc->act};
    OK(conv_desc_init(&d, "lp conv"));
    conv_desc dc = d, dg = d, da = d;  // da: the fp32 CPU's linear twin, for the sums of |terms|
    da.act = ACT_NONE;
    size_t wsc = 0, wsg = 0, wsa = 0;
    if (!grads16 && !act16) set_precision(format);  // the plan takes it at conv_prepare
    OK(bc->ops->conv_prepare(bc->ctx, &dc, &wsc));
    OK(bg->ops->conv_prepare(bg->ctx, &dg, &wsg));
    OK(g_cpu.ops->conv_prepare(g_cpu.ctx, &da, &wsa));
    if (!grads16 && !act16) set_precision(0);
    if (wsa > wsc) wsc = wsa;
    void *wc = NULL, *wg = NULL;
    if (wsc) OK(bc->ops->alloc(bc->ctx, &wc, wsc));
    if (wsg) OK(bg->ops->alloc(bg->ctx, &wg, wsg));
    const size_t nx = (size_t)d.n * d.c * d.h * d.w, nw = (size_t)d.k * (d.c / d.groups) * d.r * d.s;
    const size_t ny = (size_t)d.n * d.k * d.oh * d.ow, gbytes = grads16 ? sizeof(uint16_t) : sizeof(float);
    float *hx = rand_lp(r, nx, 1.f, format), *hw = rand_lp(r, nw, 0.5f, format), *hb = rand_lp(r, d.k, 0.5f, format);
    float *hdy = rand_lp(r, ny, 1.f, format);
    twin x = twin_act_on(bc, bg, hx, nx, fa), w = twin_make_on(bc, bg, hw, nw * 4);
    twin b = twin_make_on(bc, bg, hb, d.k * 4);
    twin y = twin_act_on(bc, bg, NULL, ny, fa), dy = twin_act_on(bc, bg, hdy, ny, fa);
    twin dx = twin_act_on(bc, bg, NULL, nx, fa), dw = twin_make_on(bc, bg, NULL, nw * gbytes);
    twin db = twin_make_on(bc, bg, NULL, d.k * gbytes);
    const int hw_ = d.oh * d.ow;
    // forward: y held in the format
    OK(bc->ops->conv_forward(bc->ctx, &dc, x.c, w.c, cc->bias ? b.c : NULL, y.c, wc));
    OK(bg->ops->conv_forward(bg->ctx, &dg, x.g, w.g, cc->bias ? b.g : NULL, y.g, wg));
    twin ax = twin_abs_cpu(&x), aw = twin_abs_cpu(&w), sy = twin_make(NULL, ny * 4);
    OK(g_cpu.ops->conv_forward(g_cpu.ctx, &da, ax.c, aw.c, NULL, sy.c, wc));
    expect_lp("conv forward y", format, &y, &sy, 1, cc->bias ? hb : NULL, d.k, hw_);
    // backward from the same (rounded) y, as the model holds it; dx held, dw and db fp32 (bf16 under grads16)
    if (act16) {
        twin_copy_cpu_to_gpu(&y);  // 16-bit on both: rounded already
    } else {
        float *hy = twin_host(&y, 0);
        precision_round_array(format, ny, hy, hy);
        twin_set(&y, hy);
        free(hy);
    }
    OK(bc->ops->conv_backward(bc->ctx, &dc, x.c, w.c, y.c, dy.c, dx.c, dw.c, cc->bias ? db.c : NULL, wc));
    OK(bg->ops->conv_backward(bg->ctx, &dg, x.g, w.g, y.g, dy.g, dx.g, dw.g, cc->bias ? db.g : NULL, wg));
    twin ady = twin_abs_cpu(&dy), sdx = twin_make(NULL, nx * 4), sdw = twin_make(NULL, nw * 4);
    twin sdb = twin_make(NULL, d.k * 4);
    OK(g_cpu.ops->conv_backward(g_cpu.ctx, &da, ax.c, aw.c, sy.c, ady.c, sdx.c, sdw.c, sdb.c, wc));
    if (tu_mask_rounds(cc->act)) widen_for_mask(&sdx, format), widen_for_mask(&sdw, format);
    // 0/1 masks: exact; leaky: the same float product on both (stored rounded under act16)
    expect_lp("conv backward dy (masked)", format, &dy, &ady, act16, NULL, 1, 1);
    expect_lp("conv backward dx", format, &dx, &sdx, 1, NULL, 1, 1);
    expect_lp_grad("conv backward dw", format, &dw, &sdw, grads16);
    if (cc->bias) expect_lp_grad("conv backward db", format, &db, &sdb, grads16);
    // First layer: no dx (then nothing else needs dy's 16-bit copy but backward-filter under grads16). dy is
    // masked already; masking again changes nothing (0/1 masks; leaky: 0.1 again on both, within the widened sums).
    // dw zeroed first: it must be written again.
    if (act16) twin_copy_cpu_to_gpu(&dy);
    OK(bc->ops->zero(bc->ctx, dw.c, dw.bytes));
    OK(bg->ops->zero(bg->ctx, dw.g, dw.bytes));
    OK(bc->ops->conv_backward(bc->ctx, &dc, x.c, w.c, y.c, dy.c, NULL, dw.c, cc->bias ? db.c : NULL, wc));
    OK(bg->ops->conv_backward(bg->ctx, &dg, x.g, w.g, y.g, dy.g, NULL, dw.g, cc->bias ? db.g : NULL, wg));
    expect_lp_grad("conv backward dw (no dx)", format, &dw, &sdw, grads16);
    if (cc->bias) expect_lp_grad("conv backward db (no dx)", format, &db, &sdb, grads16);
    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&y), twin_free(&dy), twin_free(&dx), twin_free(&dw);
    twin_free(&db), twin_free(&sy), twin_free(&sdx), twin_free(&sdw), twin_free(&sdb);
    cpu_free(&ax), cpu_free(&aw), cpu_free(&ady);
    free(hx), free(hw), free(hb), free(hdy);
    bc->ops->free(bc->ctx, wc);
    bg->ops->free(bg->ctx, wg);
    bc->ops->conv_release(bc->ctx, &dc);
    g_cpu.ops->conv_release(g_cpu.ctx, &da);
    bg->ops->conv_release(bg->ctx, &dg);
}

static void test_conv_lp(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2627);
    const lp_conv_case cases[] = {
        {4, 16, 12, 12, 32, 3, 1, 1, ACT_RELU, 1, 0, 0},
        {2, 8, 9, 9, 16, 1, 1, 0, ACT_NONE, 0, 0, 0},
        {3, 32, 14, 14, 64, 3, 2, 1, ACT_RELU, 0, 0, 0},
        {8, 3, 28, 28, 16, 3, 1, 1, ACT_RELU6, 1, 0, 0},  // 3 input channels: no tensor-core-friendly shape
        {16, 64, 7, 7, 64, 3, 1, 1, ACT_NONE, 0, 0, 0},
    };
    const int formats[2] = {PREC_BF16, PREC_FP16};
    const int cc = backend_cuda_compute_capability(&g_gpu);
    for (int f = 0; f < 2; f++) {
        if (tu_lp_conv_skipped(cc, formats[f], "bf16")) continue;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) lp_conv_run(&cases[i], formats[f], 0, 0, &r);
    }
}

// grads16 (backend_options.grads16): dw and db written bf16 by the CUDA backend (cuDNN's PSEUDO_BFLOAT16
// backward-filter, the bias sums stored bf16) against the grads16 CPU on the same bf16 values.
static void test_conv_grads16(void **state) {
    (void)state;
    NEED_CUDA();
    const int cc = backend_cuda_compute_capability(&g_gpu16);
    if (tu_lp_conv_skipped(cc, PREC_BF16, "grads16 conv")) return;
    rng r;
    rng_seed(&r, 2629);
    const lp_conv_case cases[] = {
        {4, 16, 12, 12, 32, 3, 1, 1, ACT_RELU, 1, 0, 0},
        {2, 8, 9, 9, 16, 1, 1, 0, ACT_NONE, 0, 0, 0},     // 1x1, no bias
        {3, 32, 14, 14, 64, 3, 2, 1, ACT_RELU, 0, 0, 0},  // strided
        {2, 3, 11, 10, 5, 5, 2, 2, ACT_NONE, 1, 0, 0},    // strided and padded, odd sizes
        {8, 3, 28, 28, 16, 3, 1, 1, ACT_RELU6, 1, 0, 0},  // the bias gradient in 2 blocks per channel (sum_splits)
        {16, 3, 32, 32, 8, 3, 1, 1, ACT_RELU, 1, 0, 0},   // ... in 4
        {2, 4, 6, 7, 6, 3, 1, 1, ACT_RELU, 1, 2, 0},      // grouped
        {3, 6, 5, 6, 6, 3, 1, 1, ACT_RELU6, 1, 6, 0},     // depthwise
        {8, 32, 14, 14, 32, 3, 2, 1, ACT_RELU6, 0, 32, 0},  // MobileNet's strided depthwise
        {2, 2, 8, 9, 3, 3, 1, 0, ACT_RELU, 1, 0, 2},      // dilated
        {3, 4, 9, 8, 6, 3, 2, 2, ACT_NONE, 1, 2, 2},      // grouped, strided, padded, dilated
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) lp_conv_run(&cases[i], PREC_BF16, 1, 0, &r);
}

// grads16 and act16 as for lp_conv_run.
static void lp_dense_run(int n, int in, int out, int act, int bias, int format, int grads16, int act16, rng *r) {
    const backend *bc = grads16 ? &g_cpu16 : &g_cpu, *bg = grads16 ? &g_gpu16 : &g_gpu;
    if (act16) act_pair(format, grads16, &bc, &bg);
    const int fa = act16 ? format : 0;  // the activations' format (0: float32)
    const size_t nx = (size_t)n * in, nw = (size_t)out * in, ny = (size_t)n * out;
    const size_t gbytes = grads16 ? sizeof(uint16_t) : sizeof(float);
    float *hx = rand_lp(r, nx, 1.f, format), *hw = rand_lp(r, nw, 0.5f, format), *hb = rand_lp(r, out, 0.5f, format);
    float *hdy = rand_lp(r, ny, 1.f, format);
    twin x = twin_act_on(bc, bg, hx, nx, fa), w = twin_make_on(bc, bg, hw, nw * 4);
    twin b = twin_make_on(bc, bg, hb, out * 4);
    twin y = twin_act_on(bc, bg, NULL, ny, fa), dy = twin_act_on(bc, bg, hdy, ny, fa);
    twin dx = twin_act_on(bc, bg, NULL, nx, fa), dw = twin_make_on(bc, bg, NULL, nw * gbytes);
    twin db = twin_make_on(bc, bg, NULL, out * gbytes);
    if (!grads16 && !act16) set_precision(format);  // dense reads it at each call
    OK(bc->ops->dense_forward(bc->ctx, n, in, out, act, x.c, w.c, bias ? b.c : NULL, y.c));
    OK(bg->ops->dense_forward(bg->ctx, n, in, out, act, x.g, w.g, bias ? b.g : NULL, y.g));
    twin ax = twin_abs_cpu(&x), aw = twin_abs_cpu(&w), sy = twin_make(NULL, ny * 4);
    twin ab = twin_abs_cpu(&b);
    OK(g_cpu.ops->dense_forward(g_cpu.ctx, n, in, out, ACT_NONE, ax.c, aw.c, bias ? ab.c : NULL, sy.c));
    // fp32 output of the GEMM plus the bias, rounded once (by the model, or under act16 by the op; here by the
    // test): one ulp
    expect_lp("dense forward y", format, &y, &sy, 1, NULL, 1, 1);
    if (act16) {
        twin_copy_cpu_to_gpu(&y);
    } else {
        float *hy = twin_host(&y, 0);
        precision_round_array(format, ny, hy, hy);
        twin_set(&y, hy);
        free(hy);
    }
    OK(bc->ops->dense_backward(bc->ctx, n, in, out, act, x.c, w.c, y.c, dy.c, dx.c, dw.c, bias ? db.c : NULL));
    OK(bg->ops->dense_backward(bg->ctx, n, in, out, act, x.g, w.g, y.g, dy.g, dx.g, dw.g, bias ? db.g : NULL));
    twin ady = twin_abs_cpu(&dy), sdx = twin_make(NULL, nx * 4), sdw = twin_make(NULL, nw * 4);
    twin sdb = twin_make(NULL, out * 4);
    OK(g_cpu.ops->dense_backward(g_cpu.ctx, n, in, out, ACT_NONE, ax.c, aw.c, sy.c, ady.c, sdx.c, sdw.c, sdb.c));
    if (tu_mask_rounds(act)) widen_for_mask(&sdx, format), widen_for_mask(&sdw, format);
    if (act16) expect_lp("dense backward dy (masked)", format, &dy, &ady, 1, NULL, 1, 1);
    expect_lp("dense backward dx", format, &dx, &sdx, 1, NULL, 1, 1);
    expect_lp_grad("dense backward dw", format, &dw, &sdw, grads16);
    if (bias) expect_lp_grad("dense backward db", format, &db, &sdb, grads16);
    // No dx (dy masked already: masking again changes nothing for 0/1 masks; leaky: within the widened sums); dw
    // zeroed first
    if (act16) twin_copy_cpu_to_gpu(&dy);
    OK(bc->ops->zero(bc->ctx, dw.c, dw.bytes));
    OK(bg->ops->zero(bg->ctx, dw.g, dw.bytes));
    OK(bc->ops->dense_backward(bc->ctx, n, in, out, act, x.c, w.c, y.c, dy.c, NULL, dw.c, bias ? db.c : NULL));
    OK(bg->ops->dense_backward(bg->ctx, n, in, out, act, x.g, w.g, y.g, dy.g, NULL, dw.g, bias ? db.g : NULL));
    if (!grads16 && !act16) set_precision(0);
    expect_lp_grad("dense backward dw (no dx)", format, &dw, &sdw, grads16);
    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&y), twin_free(&dy), twin_free(&dx), twin_free(&dw);
    twin_free(&db), twin_free(&sy), twin_free(&sdx), twin_free(&sdw), twin_free(&sdb);
    cpu_free(&ax), cpu_free(&aw), cpu_free(&ab), cpu_free(&ady);
    free(hx), free(hw), free(hb), free(hdy);
}

static void test_dense_lp(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2628);
    const int formats[2] = {PREC_BF16, PREC_FP16};
    for (int f = 0; f < 2; f++) {
        lp_dense_run(64, 512, 10, ACT_NONE, 1, formats[f], 0, 0, &r);
        lp_dense_run(33, 100, 37, ACT_RELU, 1, formats[f], 0, 0, &r);  // odd sizes: no tensor-core alignment
        lp_dense_run(128, 1024, 256, ACT_RELU, 0, formats[f], 0, 0, &r);
    }
    // n = 0: nothing computed, the gradients zero (as at fp32)
    set_precision(PREC_BF16);
    twin w = twin_make(NULL, 4 * 4), dw = twin_make(NULL, 4 * 4);
    OK(g_gpu.ops->dense_backward(g_gpu.ctx, 0, 2, 2, ACT_NONE, NULL, w.g, NULL, NULL, NULL, dw.g, NULL));
    set_precision(0);
    twin_free(&w), twin_free(&dw);
}

// grads16: dw (cublasGemmEx with a bf16 C) and db (stored bf16) against the grads16 CPU.
static void test_dense_grads16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2630);
    lp_dense_run(64, 512, 10, ACT_NONE, 1, PREC_BF16, 1, 0, &r);
    lp_dense_run(33, 100, 37, ACT_RELU, 1, PREC_BF16, 1, 0, &r);  // odd sizes; more columns than one db block
    lp_dense_run(128, 1024, 256, ACT_RELU, 0, PREC_BF16, 1, 0, &r);
    lp_dense_run(7, 19, 11, ACT_RELU6, 1, PREC_BF16, 1, 0, &r);
    // n = 0: the gradients zeroed, bf16-sized: the 2-byte values past them (a larger buffer) stay as they were
    enum { IN = 5, OUT = 3, NW = IN * OUT };
    uint16_t fill[2 * NW], back[2 * NW];
    for (int i = 0; i < 2 * NW; i++) fill[i] = 0x3f80;  // 1.0
    twin w = twin_make_on(&g_cpu16, &g_gpu16, NULL, NW * 4), dw = twin_make_on(&g_cpu16, &g_gpu16, fill, sizeof fill);
    twin db = twin_make_on(&g_cpu16, &g_gpu16, fill, 2 * OUT * sizeof(uint16_t));
    OK(g_gpu16.ops->dense_backward(g_gpu16.ctx, 0, IN, OUT, ACT_NONE, NULL, w.g, NULL, NULL, NULL, dw.g, db.g));
    OK(g_gpu16.ops->download(g_gpu16.ctx, back, dw.g, sizeof back));
    for (int i = 0; i < 2 * NW; i++) assert_int_equal(back[i], i < NW ? 0 : 0x3f80);
    OK(g_gpu16.ops->download(g_gpu16.ctx, back, db.g, 2 * OUT * sizeof(uint16_t)));
    for (int i = 0; i < 2 * OUT; i++) assert_int_equal(back[i], i < OUT ? 0 : 0x3f80);
    twin_free(&w), twin_free(&dw), twin_free(&db);
}

// grads16: bn_grad_stats's dw and db stored bf16 (gstats float32), against the grads16 CPU from the CPU's forward
// values. Both sum in double, so the float sums agree to far below the tolerance (computed here on the host: the
// sums of |dz| and |dz·x̂| per channel) and bf16 rounding may still pick neighbours.
static void g16_bn_run(int n, int c, int hw, int act, rng *r) {
    const size_t nx = (size_t)n * c * hw;
    float *hx = rand_floats(r, nx, 2.f), *hw_ = rand_lp(r, (size_t)c, 1.f, PREC_BF16);
    float *hb = rand_lp(r, (size_t)c, 0.5f, PREC_BF16), *hdy = rand_lp(r, nx, 1.f, PREC_BF16);
    float *hrun = malloc((2 * (size_t)c + 1) * sizeof(float));
    assert_non_null(hrun);
    for (size_t i = 0; i < nx; i++) hx[i] += 3.f;  // a mean far from 0
    precision_round_array(PREC_BF16, nx, hx, hx);  // held in bf16, as the model hands it over
    for (int k = 0; k < c; k++) hrun[k] = 0.5f, hrun[c + k] = 1.5f;
    hrun[2 * c] = 0.f;
    const bn_desc d = {.n = n, .c = c, .hw = hw, .act = act, .eps = 1e-5f, .momentum = 0.1f,
                       .count = (int64_t)n * hw};
    const backend *bc = &g_cpu16, *bg = &g_gpu16;
    twin x = twin_make_on(bc, bg, hx, nx * 4), w = twin_make_on(bc, bg, hw_, (size_t)c * 4);
    twin b = twin_make_on(bc, bg, hb, (size_t)c * 4), run = twin_make_on(bc, bg, hrun, (2 * (size_t)c + 1) * 4);
    twin st = twin_make_on(bc, bg, NULL, 3 * (size_t)c * 4), save = twin_make_on(bc, bg, NULL, 2 * (size_t)c * 4);
    twin y = twin_make_on(bc, bg, NULL, nx * 4), dy = twin_make_on(bc, bg, hdy, nx * 4);
    twin dw = twin_make_on(bc, bg, NULL, (size_t)c * 2), db = twin_make_on(bc, bg, NULL, (size_t)c * 2);
    twin gst = twin_make_on(bc, bg, NULL, 2 * (size_t)c * 4);
    OK(bc->ops->bn_stats(bc->ctx, &d, x.c, st.c));
    OK(bc->ops->bn_apply(bc->ctx, &d, x.c, st.c, w.c, b.c, run.c, save.c, y.c));
    {
        float *hy = twin_host(&y, 0);
        precision_round_array(PREC_BF16, nx, hy, hy);
        twin_set(&y, hy);
        free(hy);
    }
    twin_copy_cpu_to_gpu(&save);
    OK(bc->ops->bn_grad_stats(bc->ctx, &d, x.c, y.c, save.c, dy.c, dw.c, db.c, gst.c));
    OK(bg->ops->bn_grad_stats(bg->ctx, &d, x.g, y.g, save.g, dy.g, dw.g, db.g, gst.g));
    expect_close("bn_grad_stats dz (grads16)", &dy, TOL_EXACTISH);
    expect_close("bn_grad_stats gstats (grads16)", &gst, TOL_DENSE);
    float *dz = twin_host(&dy, 0), *hsave = twin_host(&save, 0);
    float *sdw = calloc((size_t)c, sizeof *sdw), *sdb = calloc((size_t)c, sizeof *sdb);
    assert_non_null(sdw);
    assert_non_null(sdb);
    for (size_t i = 0; i < nx; i++) {
        const int ch = (int)((i / (size_t)hw) % (size_t)c);
        sdb[ch] += fabsf(dz[i]);
        sdw[ch] += fabsf(dz[i] * ((hx[i] - hsave[ch]) * hsave[c + ch]));
    }
    float *ref = twin_host_bf16(&dw, 0), *got = twin_host_bf16(&dw, 1);
    tu_expect_lp("bn_grad_stats dw (grads16)", "", PREC_BF16, got, ref, sdw, (size_t)c, 1, NULL, 1, 1);
    free(ref), free(got);
    ref = twin_host_bf16(&db, 0), got = twin_host_bf16(&db, 1);
    tu_expect_lp("bn_grad_stats db (grads16)", "", PREC_BF16, got, ref, sdb, (size_t)c, 1, NULL, 1, 1);
    free(ref), free(got), free(dz), free(hsave), free(sdw), free(sdb);
    twin_free(&x), twin_free(&w), twin_free(&b), twin_free(&run), twin_free(&st), twin_free(&save), twin_free(&y);
    twin_free(&dy), twin_free(&dw), twin_free(&db), twin_free(&gst);
    free(hx), free(hw_), free(hb), free(hdy), free(hrun);
}

static void test_batchnorm_grads16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2631);
    g16_bn_run(4, 3, 25, ACT_NONE, &r);
    g16_bn_run(16, 32, 196, ACT_RELU, &r);  // more values per channel than one block's threads
    g16_bn_run(64, 100, 1, ACT_LEAKY, &r);  // per feature, after a dense
    g16_bn_run(8, 5, 49, ACT_RELU6, &r);
}

// What the grads16 CUDA backend says of itself, and what it refuses: another precision, at creation or later.
static void test_grads16_create(void **state) {
    (void)state;
    NEED_CUDA();
    assert_int_equal(backend_is_grads16(&g_gpu16), 1);
    assert_int_equal(backend_is_grads16(&g_gpu), 0);
    const int precisions[] = {PREC_FP32, PREC_FP16, PREC_TF32};
    for (size_t i = 0; i < sizeof precisions / sizeof precisions[0]; i++) {
        backend be;
        assert_int_equal(backend_cuda_create(&be, &(backend_options){.precision = precisions[i], .grads16 = 1}),
                         ST_INPUT);
        assert_non_null(strstr(err_msg(), "grads16 needs net.precision=bf16"));
        assert_null(be.ops);
        err_clear();
    }
    const backend_cuda_options fp32 = {.tf32 = 0, .deterministic = 0, .precision = 0};
    assert_int_equal(backend_cuda_set_options(&g_gpu16, &fp32), ST_INPUT);
    err_clear();
    OK(backend_cuda_set_tf32(&g_gpu16, 0));  // keeps its precision
}

// ---------------------------------------------------------------------------------------------------------
// 16-bit activations (backend_options.act16): every activation op of the act16 CUDA backend against the act16 CPU
// (src/backend_cpu_store.c: the float32 op on the converted operands, each output stored rounded) on the same 16-bit
// inputs, per value with tu_expect_lp (one ulp of the format where a value is stored, two for a conv with a bias), or
// bit for bit where the op only moves, selects or rounds the same float values. Conv and dense: lp_conv_run and
// lp_dense_run with act16 = 1.

static const int k_formats[2] = {PREC_BF16, PREC_FP16};

// The GPU's 16-bit values of t against the CPU's, per value; s: the sums of |terms| (twin_count(t) floats; NULL:
// none, the one ulp alone).
static void expect_act(const char *what, const twin *t, const float *s) {
    const size_t n = twin_count(t);
    float *ref = twin_host(t, 0), *got = twin_host(t, 1), *zeros = calloc(n ? n : 1, sizeof(float));
    assert_non_null(zeros);
    tu_expect_lp(what, ", act16", t->fmt16, got, ref, s ? s : zeros, n, 1, NULL, 1, 1);
    free(ref), free(got), free(zeros);
}

// |values| of t's CPU side as float32 in g_cpu's memory (host memory: a g_cpu op's output is read in place).
static float *cpu_abs_of(const twin *t) {
    const size_t n = twin_count(t);
    float *h = twin_host(t, 0);
    for (size_t i = 0; i < n; i++) h[i] = fabsf(h[i]);
    float *p = cpu_put(h, n * sizeof(float));
    free(h);
    return p;
}

// What the act16 CUDA backend says of itself, and what it refuses: an act16 other than its precision (at creation or
// later), and a format that is not 16-bit.
static void test_act16_create(void **state) {
    (void)state;
    NEED_CUDA();
    for (int k = 0; k < 3; k++) {
        assert_int_equal(backend_act_format(&g_gpu_act[k]), k_act_format[k]);
        assert_int_equal(backend_act_bytes(&g_gpu_act[k]), 2);
        assert_int_equal(backend_act_format(&g_cpu_act[k]), k_act_format[k]);
    }
    assert_int_equal(backend_is_grads16(&g_gpu_act[2]), 1);
    assert_int_equal(backend_act_format(&g_gpu), 0);
    assert_int_equal(backend_act_bytes(&g_gpu), sizeof(float));
    const backend_options bad[] = {
        {.precision = PREC_FP16, .act16 = PREC_BF16}, {.precision = PREC_BF16, .act16 = PREC_FP16},
        {.precision = PREC_FP32, .act16 = PREC_FP16}, {.precision = PREC_TF32, .act16 = PREC_BF16},
        {.precision = PREC_TF32, .act16 = PREC_TF32},  // not a 16-bit format
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        backend be;
        assert_int_equal(backend_cuda_create(&be, &bad[i]), ST_INPUT);
        assert_non_null(strstr(err_msg(), "act16"));
        assert_null(be.ops);
        err_clear();
    }
    const backend_cuda_options fp32 = {.tf32 = 0, .deterministic = 0, .precision = 0};
    const backend_cuda_options fp16 = {.tf32 = 0, .deterministic = 0, .precision = PREC_FP16};
    assert_int_equal(backend_cuda_set_options(&g_gpu_act[0], &fp32), ST_INPUT);
    err_clear();
    assert_int_equal(backend_cuda_set_options(&g_gpu_act[0], &fp16), ST_INPUT);
    err_clear();
    OK(backend_cuda_set_tf32(&g_gpu_act[1], 0));  // keeps its precision
}

// The loads and stores themselves, bit for bit with the CPU's precision_from16/precision_to16: every 16-bit pattern
// through act_forward(none) (no arithmetic: NaNs quieted with their payload cut as the CPU does), and sums of pairs
// of patterns through add_act(none): rounding to nearest even, ties, overflow to Inf, fp16's subnormals. A sum that is
// NaN need only be NaN on both (GPU arithmetic makes its own NaN payload).
static void act16_special_run(int k) {
    const backend *bc = &g_cpu_act[k], *bg = &g_gpu_act[k];
    const int fmt = k_act_format[k];
    enum { N = 1 << 16 };
    uint16_t *ha = malloc(N * sizeof *ha), *hb = malloc(N * sizeof *hb), *rc = malloc(N * 2), *rg = malloc(N * 2);
    assert_non_null(ha), assert_non_null(hb), assert_non_null(rc), assert_non_null(rg);
    for (uint32_t i = 0; i < N; i++) ha[i] = (uint16_t)i, hb[i] = (uint16_t)((i * 7919u + 12345u) & 0xffffu);
    twin a = twin_make_on(bc, bg, ha, N * 2), b = twin_make_on(bc, bg, hb, N * 2);
    twin y = twin_make_on(bc, bg, NULL, N * 2);
    a.fmt16 = b.fmt16 = y.fmt16 = fmt;
    OK(bc->ops->act_forward(bc->ctx, N, ACT_NONE, a.c, y.c));
    OK(bg->ops->act_forward(bg->ctx, N, ACT_NONE, a.g, y.g));
    expect_equal_bytes("act16 store of every 16-bit pattern", &y);
    OK(bc->ops->add_act(bc->ctx, N, ACT_NONE, a.c, b.c, y.c));
    OK(bg->ops->add_act(bg->ctx, N, ACT_NONE, a.g, b.g, y.g));
    twin_read(&y, rc, rg);
    const uint16_t inf = fmt == PREC_BF16 ? 0x7f80 : 0x7c00;
    for (uint32_t i = 0; i < N; i++) {
        const int nan_c = (rc[i] & 0x7fff) > inf, nan_g = (rg[i] & 0x7fff) > inf;
        if (nan_c ? !nan_g : rc[i] != rg[i])
            fail_msg("act16 add_act (%s) of 0x%04x and 0x%04x: CUDA 0x%04x, CPU 0x%04x",
                     fmt == PREC_BF16 ? "bf16" : "fp16", ha[i], hb[i], rg[i], rc[i]);
    }
    twin_free(&a), twin_free(&b), twin_free(&y);
    free(ha), free(hb), free(rc), free(rg);
}

static void test_act16_special_values(void **state) {
    (void)state;
    NEED_CUDA();
    for (int k = 0; k < 2; k++) act16_special_run(k);
}

static void test_conv_act16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2640);
    const lp_conv_case cases[] = {
        {4, 16, 12, 12, 32, 3, 1, 1, ACT_RELU, 1, 0, 0},
        {2, 8, 9, 9, 16, 1, 1, 0, ACT_NONE, 0, 0, 0},       // 1x1, no bias
        {3, 32, 14, 14, 64, 3, 2, 1, ACT_LEAKY, 0, 0, 0},   // strided, leaky (its mask rounds: tu_mask_rounds)
        {2, 3, 11, 10, 5, 5, 2, 2, ACT_NONE, 1, 0, 0},      // strided and padded, odd sizes
        {8, 3, 28, 28, 16, 3, 1, 1, ACT_LEAKY, 1, 0, 0},    // the bias gradient in 2 blocks per channel
        {16, 3, 32, 32, 8, 3, 1, 1, ACT_RELU, 1, 0, 0},     // ... in 4
        {2, 4, 6, 7, 6, 3, 1, 1, ACT_RELU, 1, 2, 0},        // grouped
        {3, 6, 5, 6, 6, 3, 1, 1, ACT_RELU6, 1, 6, 0},       // depthwise
        {8, 32, 14, 14, 32, 3, 2, 1, ACT_LEAKY, 0, 32, 0},  // strided depthwise
        {3, 4, 9, 8, 6, 3, 2, 2, ACT_NONE, 1, 2, 2},        // grouped, strided, padded, dilated
        {16, 64, 7, 7, 64, 3, 1, 1, ACT_NONE, 0, 0, 0},
    };
    const int cc = backend_cuda_compute_capability(&g_gpu);
    for (int f = 0; f < 2; f++) {
        if (tu_lp_conv_skipped(cc, k_formats[f], "act16 bf16 conv")) continue;
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) lp_conv_run(&cases[i], k_formats[f], 0, 1, &r);
    }
}

static void test_dense_act16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2641);
    for (int f = 0; f < 2; f++) {
        lp_dense_run(64, 512, 10, ACT_NONE, 1, k_formats[f], 0, 1, &r);
        lp_dense_run(33, 100, 37, ACT_RELU, 1, k_formats[f], 0, 1, &r);  // odd sizes; more columns than one db block
        lp_dense_run(7, 19, 11, ACT_LEAKY, 0, k_formats[f], 0, 1, &r);
        lp_dense_run(128, 256, 64, ACT_RELU6, 1, k_formats[f], 0, 1, &r);
    }
}

// The four ops, training and evaluation, on act16 pair k (2: with bf16 parameter gradients); backward from the CPU's
// forward values on both, as bn_case_run.
static void act16_bn_run(int k, int n, int c, int hw, int act, rng *r) {
    const backend *bc = &g_cpu_act[k], *bg = &g_gpu_act[k];
    const int fmt = k_act_format[k], grads16 = k == 2;
    const size_t nx = (size_t)n * c * hw, cb = (size_t)c * 4, gb = (size_t)c * (grads16 ? 2 : 4);
    float *hx = rand_floats(r, nx, 2.f), *hw_ = rand_floats(r, (size_t)c, 1.f), *hb = rand_floats(r, (size_t)c, 0.5f);
    float *hdy = rand_floats(r, nx, 1.f), *hrun = malloc(2 * cb + 4), *sy = malloc(nx * 4), *sdx = malloc(nx * 4);
    assert_non_null(hrun), assert_non_null(sy), assert_non_null(sdx);
    for (size_t i = 0; i < nx; i++) hx[i] += 3.f;  // a mean far from 0
    for (int j = 0; j < c; j++) hrun[j] = 0.5f, hrun[c + j] = 1.5f;
    hrun[2 * c] = 7.f;
    const bn_desc d = {.n = n, .c = c, .hw = hw, .act = act, .eps = 1e-5f, .momentum = 0.1f,
                       .count = (int64_t)n * hw};
    twin x = twin_act_on(bc, bg, hx, nx, fmt), y = twin_act_on(bc, bg, NULL, nx, fmt);
    twin dy = twin_act_on(bc, bg, hdy, nx, fmt), dx = twin_act_on(bc, bg, NULL, nx, fmt);
    twin w = twin_make_on(bc, bg, hw_, cb), b = twin_make_on(bc, bg, hb, cb);
    twin run = twin_make_on(bc, bg, hrun, 2 * cb + 4);
    twin st = twin_make_on(bc, bg, NULL, 3 * cb), save = twin_make_on(bc, bg, NULL, 2 * cb);
    twin dw = twin_make_on(bc, bg, NULL, gb), db = twin_make_on(bc, bg, NULL, gb);
    twin gst = twin_make_on(bc, bg, NULL, 2 * cb);
    OK(bc->ops->bn_stats(bc->ctx, &d, x.c, st.c));
    OK(bg->ops->bn_stats(bg->ctx, &d, x.g, st.g));
    expect_close("bn_stats (act16)", &st, TOL_EXACTISH);
    OK(bc->ops->bn_apply(bc->ctx, &d, x.c, st.c, w.c, b.c, run.c, save.c, y.c));
    OK(bg->ops->bn_apply(bg->ctx, &d, x.g, st.g, w.g, b.g, run.g, save.g, y.g));
    float *hsave = twin_host(&save, 0);
    tu_bn_act_sums(nx, d.c, d.hw, hx, hsave, hw_, hb, NULL, NULL, sy, NULL);
    expect_act("bn_apply (training) y", &y, sy);
    expect_close("bn_apply save (act16)", &save, TOL_DENSE);
    expect_close("bn_apply running statistics (act16)", &run, TOL_DENSE);
    twin_copy_cpu_to_gpu(&y), twin_copy_cpu_to_gpu(&save);
    OK(bc->ops->bn_grad_stats(bc->ctx, &d, x.c, y.c, save.c, dy.c, dw.c, db.c, gst.c));
    OK(bg->ops->bn_grad_stats(bg->ctx, &d, x.g, y.g, save.g, dy.g, dw.g, db.g, gst.g));
    expect_act("bn_grad_stats dz", &dy, NULL);  // act'(y) of the same values: the same float, stored rounded
    expect_close("bn_grad_stats gstats (act16)", &gst, TOL_DENSE);
    float *dz = twin_host(&dy, 0);
    if (grads16) {  // bf16 dw and db: the sums of |dz| and |dz·x̂| per channel, as g16_bn_run
        float *sdw = calloc((size_t)c, sizeof *sdw), *sdb = calloc((size_t)c, sizeof *sdb);
        assert_non_null(sdw), assert_non_null(sdb);
        for (size_t i = 0; i < nx; i++) {
            const int ch = (int)((i / (size_t)hw) % (size_t)c);
            sdb[ch] += fabsf(dz[i]);
            sdw[ch] += fabsf(dz[i] * ((hx[i] - hsave[ch]) * hsave[c + ch]));
        }
        float *ref = twin_host_bf16(&dw, 0), *got = twin_host_bf16(&dw, 1);
        tu_expect_lp("bn_grad_stats dw (grads16)", ", act16", PREC_BF16, got, ref, sdw, (size_t)c, 1, NULL, 1, 1);
        free(ref), free(got);
        ref = twin_host_bf16(&db, 0), got = twin_host_bf16(&db, 1);
        tu_expect_lp("bn_grad_stats db (grads16)", ", act16", PREC_BF16, got, ref, sdb, (size_t)c, 1, NULL, 1, 1);
        free(ref), free(got), free(sdw), free(sdb);
    } else {
        expect_close("bn_grad_stats dw (act16)", &dw, TOL_DENSE);
        expect_close("bn_grad_stats db (act16)", &db, TOL_DENSE);
    }
    twin_copy_cpu_to_gpu(&gst), twin_copy_cpu_to_gpu(&dy);
    OK(bc->ops->bn_grad_input(bc->ctx, &d, x.c, save.c, w.c, gst.c, dy.c, dx.c));
    OK(bg->ops->bn_grad_input(bg->ctx, &d, x.g, save.g, w.g, gst.g, dy.g, dx.g));
    float *hgs = twin_host(&gst, 0);
    tu_bn_act_sums(nx, d.c, d.hw, hx, hsave, hw_, hb, dz, hgs, sy, sdx);
    expect_act("bn_grad_input dx", &dx, sdx);
    twin_copy_cpu_to_gpu(&run);
    OK(bc->ops->bn_apply(bc->ctx, &d, x.c, NULL, w.c, b.c, run.c, save.c, y.c));
    OK(bg->ops->bn_apply(bg->ctx, &d, x.g, NULL, w.g, b.g, run.g, save.g, y.g));
    free(hsave);
    hsave = twin_host(&save, 0);
    tu_bn_act_sums(nx, d.c, d.hw, hx, hsave, hw_, hb, NULL, NULL, sy, NULL);
    expect_act("bn_apply (evaluation) y", &y, sy);
    expect_equal_bytes("bn_apply (evaluation, act16) leaves running", &run);
    twin_free(&x), twin_free(&y), twin_free(&dy), twin_free(&dx), twin_free(&w), twin_free(&b), twin_free(&run);
    twin_free(&st), twin_free(&save), twin_free(&dw), twin_free(&db), twin_free(&gst);
    free(hx), free(hw_), free(hb), free(hdy), free(hrun), free(sy), free(sdx), free(hsave), free(dz), free(hgs);
}

static void test_batchnorm_act16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2642);
    for (int k = 0; k < 2; k++) {
        act16_bn_run(k, 4, 3, 25, ACT_NONE, &r);
        act16_bn_run(k, 16, 32, 196, ACT_RELU, &r);  // more values per channel than one block's threads
        act16_bn_run(k, 64, 100, 1, ACT_LEAKY, &r);  // per feature, after a dense
        act16_bn_run(k, 8, 5, 49, ACT_RELU6, &r);
        act16_bn_run(k, 16, 40, 1, ACT_SIGMOID, &r);
    }
}

// grads16 with act16 (bf16 both): conv's backward-filter on the bf16 x and masked dy where they are, dense's dw GEMM
// on them, batch norm's bf16 sums, against the CPU with both options.
static void test_act16_grads16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2643);
    if (backend_cuda_compute_capability(&g_gpu_act[2]) >= 80) {
        const lp_conv_case cases[] = {
            {4, 16, 12, 12, 32, 3, 1, 1, ACT_RELU, 1, 0, 0},
            {2, 8, 9, 9, 16, 1, 1, 0, ACT_NONE, 0, 0, 0},       // 1x1, no bias
            {2, 3, 11, 10, 5, 5, 2, 2, ACT_LEAKY, 1, 0, 0},     // strided and padded
            {16, 3, 32, 32, 8, 3, 1, 1, ACT_RELU, 1, 0, 0},     // the bias gradient in 4 blocks per channel
            {3, 6, 5, 6, 6, 3, 1, 1, ACT_RELU6, 1, 6, 0},       // depthwise
            {3, 4, 9, 8, 6, 3, 2, 2, ACT_NONE, 1, 2, 2},        // grouped, strided, padded, dilated
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) lp_conv_run(&cases[i], PREC_BF16, 1, 1, &r);
    } else {
        print_message("sm_%d has no bf16 convolutions: act16 grads16 conv skipped\n",
                      backend_cuda_compute_capability(&g_gpu_act[2]));
    }
    lp_dense_run(64, 512, 10, ACT_NONE, 1, PREC_BF16, 1, 1, &r);
    lp_dense_run(33, 100, 37, ACT_RELU, 1, PREC_BF16, 1, 1, &r);
    lp_dense_run(7, 19, 11, ACT_LEAKY, 1, PREC_BF16, 1, 1, &r);
    act16_bn_run(2, 16, 32, 196, ACT_RELU, &r);
    act16_bn_run(2, 64, 100, 1, ACT_LEAKY, &r);
}

// Max pooling: y (a value of x) and the winners bit for bit, ties among the 16-bit values included (the first in
// row-major order on both); dx against the sums of |dy| over the windows.
static void act16_pool_run(int k, int n, int c, int h, int w, int size, int stride, int pad, rng *r) {
    const backend *bc = &g_cpu_act[k], *bg = &g_gpu_act[k];
    const int fmt = k_act_format[k];
    pool_desc d = {.n = n, .c = c, .h = h, .w = w, .size = size, .stride = stride, .pad = pad};
    OK(pool_desc_init(&d, "act16 pool"));
    const size_t xn = (size_t)n * c * h * w, yn = (size_t)n * c * d.oh * d.ow;
    float *hx = rand_floats(r, xn, 1.f), *hdy = rand_floats(r, yn, 1.f), *dirty = rand_floats(r, xn, 1.f);
    twin x = twin_act_on(bc, bg, hx, xn, fmt), y = twin_act_on(bc, bg, NULL, yn, fmt);
    twin am = twin_make_on(bc, bg, NULL, yn * 4), dy = twin_act_on(bc, bg, hdy, yn, fmt);
    twin dx = twin_act_on(bc, bg, dirty, xn, fmt);  // dirty: it must be overwritten
    OK(bc->ops->pool_forward(bc->ctx, &d, x.c, y.c, am.c));
    OK(bg->ops->pool_forward(bg->ctx, &d, x.g, y.g, am.g));
    expect_equal_bytes("pool forward y (act16)", &y);
    expect_equal_bytes("pool forward argmax (act16)", &am);
    OK(bc->ops->pool_backward(bc->ctx, &d, dy.c, am.c, dx.c));
    OK(bg->ops->pool_backward(bg->ctx, &d, dy.g, am.g, dx.g));
    float *ady = cpu_abs_of(&dy), *s = cpu_put(NULL, xn * 4);
    OK(g_cpu.ops->pool_backward(g_cpu.ctx, &d, ady, am.c, s));  // the act16 CPU's argmax: host memory too
    expect_act("pool backward dx", &dx, s);
    void *bufs[] = {ady, s};
    cpu_free_all(bufs, 2);
    twin_free(&x), twin_free(&y), twin_free(&am), twin_free(&dy), twin_free(&dx);
    free(hx), free(hdy), free(dirty);
}

static void act16_avgpool_run(int k, int n, int c, int h, int w, int kh, int kw, int stride, rng *r) {
    const backend *bc = &g_cpu_act[k], *bg = &g_gpu_act[k];
    const int fmt = k_act_format[k], oh = (h - kh) / stride + 1, ow = (w - kw) / stride + 1;
    const size_t nx = (size_t)n * c * h * w, ny = (size_t)n * c * oh * ow;
    float *hx = rand_floats(r, nx, 1.f), *hdy = rand_floats(r, ny, 1.f);
    twin x = twin_act_on(bc, bg, hx, nx, fmt), y = twin_act_on(bc, bg, NULL, ny, fmt);
    twin dy = twin_act_on(bc, bg, hdy, ny, fmt), dx = twin_act_on(bc, bg, NULL, nx, fmt);
    OK(bc->ops->avgpool_forward(bc->ctx, n, c, h, w, kh, kw, stride, x.c, y.c));
    OK(bg->ops->avgpool_forward(bg->ctx, n, c, h, w, kh, kw, stride, x.g, y.g));
    float *ax = cpu_abs_of(&x), *sy = cpu_put(NULL, ny * 4), *ady = cpu_abs_of(&dy), *sdx = cpu_put(NULL, nx * 4);
    OK(g_cpu.ops->avgpool_forward(g_cpu.ctx, n, c, h, w, kh, kw, stride, ax, sy));
    expect_act("avgpool y", &y, sy);
    OK(bc->ops->avgpool_backward(bc->ctx, n, c, h, w, kh, kw, stride, dy.c, dx.c));
    OK(bg->ops->avgpool_backward(bg->ctx, n, c, h, w, kh, kw, stride, dy.g, dx.g));
    OK(g_cpu.ops->avgpool_backward(g_cpu.ctx, n, c, h, w, kh, kw, stride, ady, sdx));
    expect_act("avgpool dx", &dx, sdx);
    void *bufs[] = {ax, sy, ady, sdx};
    cpu_free_all(bufs, 4);
    twin_free(&x), twin_free(&y), twin_free(&dy), twin_free(&dx);
    free(hx), free(hdy);
}

static void test_pool_act16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2644);
    for (int k = 0; k < 2; k++) {
        act16_pool_run(k, 2, 3, 8, 8, 2, 2, 0, &r);    // tiling windows (the CPU's unrolled 2x2)
        act16_pool_run(k, 2, 2, 9, 7, 3, 2, 0, &r);    // overlapping windows: dx sums
        act16_pool_run(k, 1, 2, 10, 10, 2, 3, 0, &r);  // gaps
        act16_pool_run(k, 2, 3, 16, 15, 3, 2, 1, &r);  // padded
        act16_pool_run(k, 1, 4, 6, 6, 3, 1, 1, &r);
        act16_avgpool_run(k, 4, 8, 8, 8, 2, 2, 2, &r);
        act16_avgpool_run(k, 3, 5, 9, 7, 3, 3, 2, &r);    // overlapping windows
        act16_avgpool_run(k, 2, 3, 10, 10, 2, 2, 3, &r);  // gaps
        act16_avgpool_run(k, 64, 32, 7, 5, 7, 5, 1, &r);  // global, non-square
    }
}

// add_act and act_backward (the fused activations), act_forward and act_backward_input (every activation, past every
// kink), in place as the model calls them, and dropout (bit for bit: the same float product, the same rounding).
static void act16_elementwise_run(int k, rng *r) {
    const backend *bc = &g_cpu_act[k], *bg = &g_gpu_act[k];
    const int fmt = k_act_format[k];
    enum { N = 100003 };
    float *ha = rand_floats(r, N, 4.f), *hb = rand_floats(r, N, 4.f), *hdy = rand_floats(r, N, 1.f);
    float *hx = rand_floats(r, N, 9.f), *s = malloc(N * sizeof *s);
    assert_non_null(s);
    const float kinks[] = {0.f, -3.f, 3.f, 6.f, -6.f};
    for (int i = 0; i < 5; i++) hx[i] = kinks[i];
    twin a = twin_act_on(bc, bg, ha, N, fmt), b = twin_act_on(bc, bg, hb, N, fmt);
    twin y = twin_act_on(bc, bg, NULL, N, fmt);
    twin dy = twin_act_on(bc, bg, hdy, N, fmt), dx = twin_act_on(bc, bg, NULL, N, fmt);
    twin x = twin_act_on(bc, bg, hx, N, fmt);
    const int acts[] = {ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_RELU6, ACT_SIGMOID};
    for (int t = 0; t < 5; t++) {
        OK(bc->ops->add_act(bc->ctx, N, acts[t], a.c, b.c, y.c));
        OK(bg->ops->add_act(bg->ctx, N, acts[t], a.g, b.g, y.g));
        for (size_t i = 0; i < N; i++) s[i] = fabsf(ha[i]) + fabsf(hb[i]);
        expect_act("add_act y", &y, s);
        twin_copy_cpu_to_gpu(&y);  // sigmoid: expf may differ in the last bit
        OK(bc->ops->act_backward(bc->ctx, N, acts[t], y.c, dy.c, dx.c));
        OK(bg->ops->act_backward(bg->ctx, N, acts[t], y.g, dy.g, dx.g));
        for (size_t i = 0; i < N; i++) s[i] = fabsf(hdy[i]);
        expect_act("act_backward dx", &dx, s);
    }
    for (int act = ACT_NONE; act < ACT_COUNT; act++) {
        OK(bc->ops->act_forward(bc->ctx, N, act, x.c, y.c));
        OK(bg->ops->act_forward(bg->ctx, N, act, x.g, y.g));
        for (size_t i = 0; i < N; i++) s[i] = fabsf(hx[i]);
        expect_act("act_forward y", &y, s);
        OK(bc->ops->act_backward_input(bc->ctx, N, act, x.c, dy.c, dx.c));
        OK(bg->ops->act_backward_input(bg->ctx, N, act, x.g, dy.g, dx.g));
        for (size_t i = 0; i < N; i++) s[i] = fabsf(hdy[i]) * (1.f + fabsf(hx[i]));
        expect_act("act_backward_input dx", &dx, s);
    }
    // In place on both: the model's sum of a two-reader gradient, add_act(none, dx, dy, dy), and an unfused
    // activation's backward into its own gradient.
    OK(bc->ops->add_act(bc->ctx, N, ACT_NONE, a.c, b.c, b.c));
    OK(bg->ops->add_act(bg->ctx, N, ACT_NONE, a.g, b.g, b.g));
    for (size_t i = 0; i < N; i++) s[i] = fabsf(ha[i]) + fabsf(hb[i]);
    expect_act("add_act in place", &b, s);
    OK(bc->ops->act_backward_input(bc->ctx, N, ACT_GELU, x.c, dy.c, dy.c));
    OK(bg->ops->act_backward_input(bg->ctx, N, ACT_GELU, x.g, dy.g, dy.g));
    for (size_t i = 0; i < N; i++) s[i] = fabsf(hdy[i]) * (1.f + fabsf(hx[i]));
    expect_act("act_backward_input in place", &dy, s);
    // Dropout: the same masks (the key in each backend's memory), the kept values scaled and stored alike.
    const dropout_key k1 = {.seed = 42, .step = 123456789012LL, .rank = 3};
    twin key = twin_make_on(bc, bg, &k1, sizeof k1);
    const float rates[] = {0.f, 0.25f, 0.5f, 0.9f};
    for (int t = 0; t < 4; t++) {
        OK(bc->ops->dropout(bc->ctx, N, rates[t], key.c, 5 | 2 << 16, x.c, y.c));
        OK(bg->ops->dropout(bg->ctx, N, rates[t], key.g, 5 | 2 << 16, x.g, y.g));
        expect_equal_bytes("dropout y (act16)", &y);
    }
    twin_free(&a), twin_free(&b), twin_free(&y), twin_free(&dy), twin_free(&dx), twin_free(&x), twin_free(&key);
    free(ha), free(hb), free(hdy), free(hx), free(s);
}

static void test_elementwise_act16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2645);
    for (int k = 0; k < 2; k++) act16_elementwise_run(k, &r);
}

// channel_copy moves the 16-bit patterns (bit for bit); the gather stores each value rounded once, plain and with
// crop, flip and normalisation (bit for bit: the same float, the same rounding).
static void test_copy_gather_act16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2646);
    for (int k = 0; k < 2; k++) {
        const backend *bc = &g_cpu_act[k], *bg = &g_gpu_act[k];
        const int fmt = k_act_format[k];
        enum { N = 9, HW = 35, SRC_C = 5, DST_C = 12 };
        float *hs = rand_floats(&r, N * SRC_C * HW, 1.f), *hd = rand_floats(&r, N * DST_C * HW, 1.f);
        twin src = twin_act_on(bc, bg, hs, N * SRC_C * HW, fmt), dst = twin_act_on(bc, bg, hd, N * DST_C * HW, fmt);
        twin back = twin_act_on(bc, bg, NULL, N * 3 * HW, fmt);
        OK(bc->ops->channel_copy(bc->ctx, N, SRC_C, HW, src.c, SRC_C, 0, dst.c, DST_C, 4));
        OK(bg->ops->channel_copy(bg->ctx, N, SRC_C, HW, src.g, SRC_C, 0, dst.g, DST_C, 4));
        expect_equal_bytes("channel_copy into a slice (act16)", &dst);
        OK(bc->ops->channel_copy(bc->ctx, N, 3, HW, dst.c, DST_C, 5, back.c, 3, 0));
        OK(bg->ops->channel_copy(bg->ctx, N, 3, HW, dst.g, DST_C, 5, back.g, 3, 0));
        expect_equal_bytes("channel_copy out of a slice (act16)", &back);
        twin_free(&src), twin_free(&dst), twin_free(&back);
        free(hs), free(hd);

        enum { TOTAL = 50, C = 3, H = 11, W = 9, ELEMS = C * H * W, B = 33 };
        uint8_t images[TOTAL * ELEMS];
        int32_t labels[TOTAL], index[B];
        for (int i = 0; i < TOTAL * ELEMS; i++) images[i] = (uint8_t)rng_below(&r, 256);
        for (int i = 0; i < TOTAL; i++) labels[i] = (int32_t)rng_below(&r, 10);
        for (int i = 0; i < B; i++) index[i] = (int32_t)rng_below(&r, TOTAL);
        gather_aug a;
        memset(&a, 0, sizeof a);
        a.seed = 99, a.epoch = 1, a.c = C, a.h = H, a.w = W, a.crop_pad = 4, a.flip = 1, a.normalize = 1;
        for (int ch = 0; ch < C; ch++)
            for (int p = 0; p < 256; p++) a.lut[ch][p] = ((float)p / 255.0f - 0.3f + 0.1f * ch) / (0.25f + 0.05f * ch);
        twin ti = twin_make_on(bc, bg, images, sizeof images), tl = twin_make_on(bc, bg, labels, sizeof labels);
        twin tx = twin_make_on(bc, bg, index, sizeof index), ta = twin_make_on(bc, bg, &a, sizeof a);
        twin x = twin_act_on(bc, bg, NULL, B * ELEMS, fmt), y = twin_make_on(bc, bg, NULL, B * sizeof(int32_t));
        OK(bc->ops->gather(bc->ctx, ti.c, tl.c, tx.c, B, ELEMS, NULL, x.c, y.c));
        OK(bg->ops->gather(bg->ctx, ti.g, tl.g, tx.g, B, ELEMS, NULL, x.g, y.g));
        expect_equal_bytes("gather x (act16)", &x);
        expect_equal_bytes("gather y (act16)", &y);
        OK(bc->ops->gather(bc->ctx, ti.c, tl.c, tx.c, B, ELEMS, ta.c, x.c, y.c));
        OK(bg->ops->gather(bg->ctx, ti.g, tl.g, tx.g, B, ELEMS, ta.g, x.g, y.g));
        expect_equal_bytes("gather_aug x (act16)", &x);
        twin_free(&ti), twin_free(&tl), twin_free(&tx), twin_free(&ta), twin_free(&x), twin_free(&y);
    }
}

// Softmax cross-entropy on 16-bit logits, dlogits stored in 16 bits: scale 1, and fp16's loss scaling (1024). The
// terms of a dlogit are at most scale/n each (p and the target in [0, 1]).
static void act16_xent_run(int k, int n, int classes, float smoothing, float scale, rng *r) {
    const backend *bc = &g_cpu_act[k], *bg = &g_gpu_act[k];
    const int fmt = k_act_format[k];
    const size_t nz = (size_t)n * classes;
    float *hz = rand_floats(r, nz, 4.f), *s = malloc(nz * sizeof *s);
    int32_t *hl = malloc(n * sizeof *hl);
    assert_non_null(s), assert_non_null(hl);
    for (int i = 0; i < n; i++) hl[i] = (int32_t)rng_below(r, (uint32_t)classes);
    for (int i = 0; i < n; i += 2) hz[(size_t)i * classes + hl[i]] = 9.f;
    for (size_t i = 0; i < nz; i++) s[i] = 2.f * scale / (float)n;
    const double loss0 = 1.25;
    const int32_t correct0 = 3;
    twin z = twin_act_on(bc, bg, hz, nz, fmt), l = twin_make_on(bc, bg, hl, n * 4);
    twin dz = twin_act_on(bc, bg, NULL, nz, fmt);
    twin loss = twin_make_on(bc, bg, &loss0, 8), cor = twin_make_on(bc, bg, &correct0, 4);
    OK(bc->ops->softmax_xent(bc->ctx, n, classes, z.c, l.c, smoothing, scale, dz.c, loss.c, cor.c));
    OK(bg->ops->softmax_xent(bg->ctx, n, classes, z.g, l.g, smoothing, scale, dz.g, loss.g, cor.g));
    expect_act(scale == 1.f ? "softmax_xent dlogits" : "softmax_xent dlogits (loss scale 1024)", &dz, s);
    double lc, lg;
    twin_read(&loss, &lc, &lg);
    if (!(fabs(lg - lc) <= 1e-5 * fabs(lc))) fail_msg("softmax_xent loss (act16): CUDA %.9g vs CPU %.9g", lg, lc);
    int32_t cc, cg;
    twin_read(&cor, &cc, &cg);
    assert_int_equal(cg, cc);
    twin_free(&z), twin_free(&l), twin_free(&dz), twin_free(&loss), twin_free(&cor);
    free(hz), free(s), free(hl);
}

static void test_softmax_xent_act16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 2647);
    for (int k = 0; k < 2; k++) {
        act16_xent_run(k, 9, 10, 0.0f, 1.0f, &r);
        act16_xent_run(k, 20, 37, 0.1f, 1.0f, &r);  // more classes than a warp has lanes; label smoothing
        act16_xent_run(k, 3, 1000, 0.0f, 1.0f, &r);
    }
    act16_xent_run(1, 9, 10, 0.0f, 1024.0f, &r);  // fp16 loss scaling
    act16_xent_run(1, 100, 37, 0.1f, 1024.0f, &r);
}

// ---------------------------------------------------------------------------------------------------------

static int group_setup(void **state) {
    (void)state;
    if (backend_cpu_create(&g_cpu, 1) != ST_OK ||
        backend_cpu_create_opts(&g_cpu16, &(backend_cpu_opts){.threads = 1, .conv = CPU_CONV_AUTO, .grads16 = 1}) !=
            ST_OK) {
        fprintf(stderr, "cpu backend: %s\n", err_msg());
        return -1;
    }
    g_no_cuda = backend_cuda_unusable();
    g_have_cuda = g_no_cuda == NULL;
    if (g_have_cuda && backend_cuda_create(&g_gpu, NULL) != ST_OK) {
        fprintf(stderr, "cuda backend: %s\n", err_msg());
        return -1;
    }
    if (g_have_cuda &&
        backend_cuda_create(&g_gpu16, &(backend_options){.precision = PREC_BF16, .grads16 = 1}) != ST_OK) {
        fprintf(stderr, "cuda backend (grads16): %s\n", err_msg());
        return -1;
    }
    for (int k = 0; k < 3; k++) {
        const int f = k_act_format[k], g16 = k == 2;
        if (backend_cpu_create_opts(&g_cpu_act[k], &(backend_cpu_opts){.threads = 1, .grads16 = g16, .act16 = f}) !=
                ST_OK ||
            (g_have_cuda &&
             backend_cuda_create(&g_gpu_act[k], &(backend_options){.precision = f, .grads16 = g16, .act16 = f}) !=
                 ST_OK)) {
            fprintf(stderr, "act16 backends (%s%s): %s\n", f == PREC_BF16 ? "bf16" : "fp16", g16 ? ", grads16" : "",
                    err_msg());
            return -1;
        }
    }
    if (!g_have_cuda) printf("CUDA is not usable (%s): the CUDA comparisons skip (fail with DDP_REQUIRE_CUDA=1)\n", g_no_cuda);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    for (int k = 0; k < 3; k++) backend_destroy(&g_gpu_act[k]), backend_destroy(&g_cpu_act[k]);
    backend_destroy(&g_gpu16);
    backend_destroy(&g_gpu);
    backend_destroy(&g_cpu16);
    backend_destroy(&g_cpu);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// Layer ops ([shortcut], [route], [dropout], [avgpool])

static void test_add_act_and_act_backward(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 61);
    enum { N = 300007 };
    float *ha = rand_floats(&r, N, 1.f), *hb = rand_floats(&r, N, 1.f), *hdy = rand_floats(&r, N, 1.f);
    twin a = twin_make(ha, N * 4), b = twin_make(hb, N * 4), y = twin_make(NULL, N * 4), dy = twin_make(hdy, N * 4);
    twin dx = twin_make(NULL, N * 4);
    const int acts[] = {ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_RELU6, ACT_SIGMOID};
    for (int t = 0; t < 5; t++) {
        OK(g_cpu.ops->add_act(g_cpu.ctx, N, acts[t], a.c, b.c, y.c));
        OK(g_gpu.ops->add_act(g_gpu.ctx, N, acts[t], a.g, b.g, y.g));
        if (acts[t] == ACT_SIGMOID) {  // expf: the CUDA library's and glibc's may differ in the last bit
            expect_close("add_act y (sigmoid)", &y, TOL_EXACTISH);
            twin_copy_cpu_to_gpu(&y);
        } else {
            expect_equal_bytes("add_act y", &y);
        }
        OK(g_cpu.ops->act_backward(g_cpu.ctx, N, acts[t], y.c, dy.c, dx.c));
        OK(g_gpu.ops->act_backward(g_gpu.ctx, N, acts[t], y.g, dy.g, dx.g));
        expect_close("act_backward dx", &dx, acts[t] == ACT_SIGMOID ? TOL_EXACTISH : 0.0);
    }
    twin_free(&a), twin_free(&b), twin_free(&y), twin_free(&dy), twin_free(&dx);
    free(ha), free(hb), free(hdy);
}

// Every activation on its own (the layers' silu, hardswish and gelu, and any other): forward and the derivative
// at the pre-activation, over inputs past every kink (0, ±3, 6), and in place.
static void test_act_forward_backward_input(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 67);
    enum { N = 200003 };
    float *hx = rand_floats(&r, N, 9.f), *hdy = rand_floats(&r, N, 1.f);
    const float kinks[] = {0.f, -3.f, 3.f, 6.f, -6.f};
    for (int i = 0; i < 5; i++) hx[i] = kinks[i];
    twin x = twin_make(hx, N * 4), dy = twin_make(hdy, N * 4), y = twin_make(NULL, N * 4), dx = twin_make(NULL, N * 4);
    for (int act = ACT_NONE; act < ACT_COUNT; act++) {
        OK(g_cpu.ops->act_forward(g_cpu.ctx, N, act, x.c, y.c));
        OK(g_gpu.ops->act_forward(g_gpu.ctx, N, act, x.g, y.g));
        expect_close("act_forward y", &y, TOL_EXACTISH);
        OK(g_cpu.ops->act_backward_input(g_cpu.ctx, N, act, x.c, dy.c, dx.c));
        OK(g_gpu.ops->act_backward_input(g_gpu.ctx, N, act, x.g, dy.g, dx.g));
        expect_close("act_backward_input dx", &dx, TOL_EXACTISH);
    }
    // In place (dx = dy, y = x) on the GPU gives what the out-of-place CPU ops gave.
    OK(g_cpu.ops->act_backward_input(g_cpu.ctx, N, ACT_GELU, x.c, dy.c, dx.c));
    OK(g_gpu.ops->act_backward_input(g_gpu.ctx, N, ACT_GELU, x.g, dy.g, dy.g));
    OK(g_gpu.ops->copy(g_gpu.ctx, dx.g, dy.g, N * 4));
    expect_close("act_backward_input in place", &dx, TOL_EXACTISH);
    OK(g_cpu.ops->act_forward(g_cpu.ctx, N, ACT_HARDSWISH, x.c, y.c));
    OK(g_gpu.ops->act_forward(g_gpu.ctx, N, ACT_HARDSWISH, x.g, x.g));
    OK(g_gpu.ops->copy(g_gpu.ctx, y.g, x.g, N * 4));
    expect_close("act_forward in place", &y, TOL_EXACTISH);
    err_clear();
    assert_int_equal(g_gpu.ops->act_forward(g_gpu.ctx, N, ACT_COUNT, x.g, y.g), ST_INPUT);
    err_clear();
    assert_int_equal(g_gpu.ops->add_act(g_gpu.ctx, N, ACT_SILU, x.g, x.g, y.g), ST_INPUT);  // not fused
    err_clear();
    twin_free(&x), twin_free(&dy), twin_free(&y), twin_free(&dx);
    free(hx), free(hdy);
}

static void test_channel_copy(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 62);
    enum { N = 9, HW = 35, SRC_C = 5, DST_C = 12 };
    float *hs = rand_floats(&r, N * SRC_C * HW, 1.f), *hd = rand_floats(&r, N * DST_C * HW, 1.f);
    twin src = twin_make(hs, sizeof(float) * N * SRC_C * HW), dst = twin_make(hd, sizeof(float) * N * DST_C * HW);
    twin back = twin_make(NULL, sizeof(float) * N * 3 * HW);
    OK(g_cpu.ops->channel_copy(g_cpu.ctx, N, SRC_C, HW, src.c, SRC_C, 0, dst.c, DST_C, 4));
    OK(g_gpu.ops->channel_copy(g_gpu.ctx, N, SRC_C, HW, src.g, SRC_C, 0, dst.g, DST_C, 4));
    expect_equal_bytes("channel_copy into a slice", &dst);
    OK(g_cpu.ops->channel_copy(g_cpu.ctx, N, 3, HW, dst.c, DST_C, 5, back.c, 3, 0));
    OK(g_gpu.ops->channel_copy(g_gpu.ctx, N, 3, HW, dst.g, DST_C, 5, back.g, 3, 0));
    expect_equal_bytes("channel_copy out of a slice", &back);
    twin_free(&src), twin_free(&dst), twin_free(&back);
    free(hs), free(hd);
}

// The same masks on both backends: the key lives in each backend's memory.
static void test_dropout(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 63);
    enum { N = 500009 };
    float *hx = rand_floats(&r, N, 1.f);
    const dropout_key k1 = {.seed = 42, .step = 123456789012LL, .rank = 3}, k2 = {.seed = 7, .step = 0, .rank = 0};
    twin x = twin_make(hx, N * 4), y = twin_make(NULL, N * 4), key = twin_make(&k1, sizeof k1);
    const float rates[] = {0.f, 0.25f, 0.5f, 0.9f};
    for (int t = 0; t < 4; t++) {
        OK(g_cpu.ops->dropout(g_cpu.ctx, N, rates[t], key.c, 5 | 2 << 16, x.c, y.c));
        OK(g_gpu.ops->dropout(g_gpu.ctx, N, rates[t], key.g, 5 | 2 << 16, x.g, y.g));
        expect_equal_bytes("dropout y", &y);
    }
    twin_set(&key, &k2);
    OK(g_cpu.ops->dropout(g_cpu.ctx, N, 0.5f, key.c, 0, x.c, y.c));
    OK(g_gpu.ops->dropout(g_gpu.ctx, N, 0.5f, key.g, 0, x.g, y.g));
    expect_equal_bytes("dropout y (another key)", &y);
    twin_free(&x), twin_free(&y), twin_free(&key);
    free(hx);
}

static void avgpool_case_run(int n, int c, int h, int w, int kh, int kw, int stride, rng *r) {
    const int oh = (h - kh) / stride + 1, ow = (w - kw) / stride + 1;
    const size_t nx = (size_t)n * c * h * w, ny = (size_t)n * c * oh * ow;
    float *hx = rand_floats(r, nx, 1.f), *hdy = rand_floats(r, ny, 1.f);
    twin x = twin_make(hx, nx * 4), y = twin_make(NULL, ny * 4), dy = twin_make(hdy, ny * 4), dx = twin_make(NULL, nx * 4);
    OK(g_cpu.ops->avgpool_forward(g_cpu.ctx, n, c, h, w, kh, kw, stride, x.c, y.c));
    OK(g_gpu.ops->avgpool_forward(g_gpu.ctx, n, c, h, w, kh, kw, stride, x.g, y.g));
    expect_close("avgpool y", &y, TOL_EXACTISH);
    OK(g_cpu.ops->avgpool_backward(g_cpu.ctx, n, c, h, w, kh, kw, stride, dy.c, dx.c));
    OK(g_gpu.ops->avgpool_backward(g_gpu.ctx, n, c, h, w, kh, kw, stride, dy.g, dx.g));
    expect_close("avgpool dx", &dx, TOL_EXACTISH);
    twin_free(&x), twin_free(&y), twin_free(&dy), twin_free(&dx);
    free(hx), free(hdy);
}

static void test_avgpool(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 64);
    avgpool_case_run(4, 8, 8, 8, 2, 2, 2, &r);
    avgpool_case_run(3, 5, 9, 7, 3, 3, 2, &r);      // overlapping windows
    avgpool_case_run(2, 3, 10, 10, 2, 2, 3, &r);    // gaps
    avgpool_case_run(64, 32, 7, 5, 7, 5, 1, &r);    // global, non-square
}

// PowerSGD's linear algebra: gemm (cuBLAS) in every transpose with alpha and beta, and the orthogonalisation
// (one block per matrix) against the CPU's, including a product of PowerSGD's shapes (M^T P, P Q^T).
static void test_gemm_orthogonalize(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 65);
    const int shapes[][3] = {{150, 7, 33}, {5, 130, 3}, {300, 2, 1000}, {1000, 300, 2}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                const int m = shapes[sh][0], n = shapes[sh][1], k = shapes[sh][2];
                float *ha = rand_floats(&r, (size_t)m * k, 1), *hb = rand_floats(&r, (size_t)k * n, 1);
                float *hc = rand_floats(&r, (size_t)m * n, 1);
                twin a = twin_make(ha, (size_t)m * k * sizeof(float)), b = twin_make(hb, (size_t)k * n * sizeof(float));
                twin c = twin_make(hc, (size_t)m * n * sizeof(float));
                const float alpha = ta ? -0.5f : 1.0f, beta = tb ? 0.25f : 0.0f;
                OK(g_cpu.ops->gemm(g_cpu.ctx, ta, tb, m, n, k, alpha, (float *)a.c, (float *)b.c, beta, (float *)c.c));
                OK(g_gpu.ops->gemm(g_gpu.ctx, ta, tb, m, n, k, alpha, (float *)a.g, (float *)b.g, beta, (float *)c.g));
                char what[64];
                snprintf(what, sizeof what, "gemm ta=%d tb=%d %dx%dx%d", ta, tb, m, n, k);
                expect_close(what, &c, TOL_DENSE);
                twin_free(&a), twin_free(&b), twin_free(&c);
                free(ha), free(hb), free(hc);
            }
    const int os[][2] = {{40, 1}, {1000, 2}, {300, 7}, {5000, 4}};
    for (size_t sh = 0; sh < sizeof os / sizeof os[0]; sh++) {
        const int n = os[sh][0], k = os[sh][1];
        float *h = rand_floats(&r, (size_t)n * k, 1);
        twin a = twin_make(h, (size_t)n * k * sizeof(float));
        for (int e = 0; e < 2; e++) {
            OK(g_cpu.ops->orthogonalize(g_cpu.ctx, n, k, e ? 1e-3f : 0.0f, (float *)a.c));
            OK(g_gpu.ops->orthogonalize(g_gpu.ctx, n, k, e ? 1e-3f : 0.0f, (float *)a.g));
            char what[64];
            snprintf(what, sizeof what, "orthogonalize %dx%d eps %d", n, k, e);
            expect_close(what, &a, TOL_DENSE);
        }
        twin_free(&a);
        free(h);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_tf32_needs_cuda),
        cmocka_unit_test(test_grads16_cpu),
        cmocka_unit_test(test_table_full),
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_gather),
        cmocka_unit_test(test_gather_aug),
        cmocka_unit_test(test_conv),
        cmocka_unit_test(test_conv_model_shapes),
        cmocka_unit_test(test_conv_batch_sizes),
        cmocka_unit_test(test_conv_grouped_deterministic),
        cmocka_unit_test(test_pool),
        cmocka_unit_test(test_dense),
        cmocka_unit_test(test_batchnorm),
        cmocka_unit_test(test_softmax_xent),
        cmocka_unit_test(test_adam),
        cmocka_unit_test(test_sgd),
        cmocka_unit_test(test_scale_and_count_nonfinite),
        cmocka_unit_test(test_clip_grad_norm),
        cmocka_unit_test(test_capture_replay),
        cmocka_unit_test(test_marks),
        cmocka_unit_test(test_tf32),
        cmocka_unit_test(test_add_act_and_act_backward),
        cmocka_unit_test(test_act_forward_backward_input),
        cmocka_unit_test(test_channel_copy),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_avgpool),
        cmocka_unit_test(test_gemm_orthogonalize),
        cmocka_unit_test(test_round_to),
        cmocka_unit_test(test_conv_lp),
        cmocka_unit_test(test_dense_lp),
        cmocka_unit_test(test_grads16_create),
        cmocka_unit_test(test_conv_grads16),
        cmocka_unit_test(test_dense_grads16),
        cmocka_unit_test(test_batchnorm_grads16),
        cmocka_unit_test(test_act16_create),
        cmocka_unit_test(test_act16_special_values),
        cmocka_unit_test(test_conv_act16),
        cmocka_unit_test(test_dense_act16),
        cmocka_unit_test(test_batchnorm_act16),
        cmocka_unit_test(test_act16_grads16),
        cmocka_unit_test(test_pool_act16),
        cmocka_unit_test(test_elementwise_act16),
        cmocka_unit_test(test_copy_gather_act16),
        cmocka_unit_test(test_softmax_xent_act16),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
