// test_backend_cuda_nhwc.c — net.layout=nhwc on the CUDA backend (docs/precision.md): every op that has a channel,
// on a CUDA backend created with layout=nhwc, against the CPU op run in NCHW on the same values, the test
// transposing inputs and outputs itself (tu_to_nhwc / tu_to_nchw); convolutions in fp32 and at bf16/fp16 with the
// 16-bit tests' tolerance (test_backend_cuda.c), and with bf16 parameter gradients (grads16, as [dense] after a
// spatial input) against the grads16 CPU, and with 16-bit activations (act16: batch norm, pooling, the gather and
// channel_copy too) against the act16 CPU; then one training step of a conv + batch norm + pool + route +
// dense model at nhwc against nchw on the GPU (loss, every gradient, the running statistics), and the layer nhwc
// refuses.
//
// Without a CUDA device these skip (tu_cuda_or_skip; they fail with DDP_REQUIRE_CUDA=1). The layout_convert op of
// the CPU backend and the test's transposes (with the KCRS -> KRSC index math of the conv filter copy), and
// [dense]'s permuted-weight scheme on the CPU's ops, run everywhere.
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "precision.h"
#include "test_util.h"

static const char *g_no_cuda;
static backend g_cpu, g_nhwc;  // g_nhwc: CUDA with layout=nhwc (only when CUDA is usable)
// The grads16 pair (dw and db written bf16): the CPU created with grads16, and CUDA with layout=nhwc, precision bf16
// and grads16 (only when CUDA is usable)
static backend g_cpu16, g_nhwc16;
// The act16 pairs (activations stored in 16 bits, backend_options.act16): [0] bf16, [1] fp16, [2] bf16 with grads16;
// the CPU (NCHW) always, CUDA with layout=nhwc and precision = act16 when usable
static backend g_cpu_act[3], g_nhwc_act[3];
static const int k_act_format[3] = {PREC_BF16, PREC_FP16, PREC_BF16};

#define OK(expr)                                                                                           \
    do {                                                                                                   \
        int st_ = (expr);                                                                                  \
        if (st_ != ST_OK) fail_msg("%s failed (status %d): %s", #expr, st_, err_msg());                   \
    } while (0)

#define NEED_CUDA() tu_cuda_or_skip(g_no_cuda)

// The tolerances of test_backend_cuda.c (normalised error; the 16-bit ones per value: tu_expect_lp).
#define TOL_CONV 1e-4
#define TOL_DENSE 1e-5
#define TOL_EXACTISH 1e-6

// ---------------------------------------------------------------------------------------------------------
// Helpers: host arrays in, backend buffers out

static float *rand_floats(rng *r, size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) p[i] = scale * (2.f * rng_uniform(r) - 1.f);
    return p;
}

// format 0: fp32 values; PREC_BF16/PREC_FP16: values of the format, as the model hands them to conv
static float *rand_fmt(rng *r, size_t n, float scale, int format) {
    float *p = rand_floats(r, n, scale);
    if (format) precision_round_array(format, n, p, p);
    return p;
}

static void *dev_put(const backend *be, const void *host, size_t bytes) {
    void *p = NULL;
    OK(backend_alloc(be, &p, bytes ? bytes : 4));
    if (host && bytes) OK(backend_upload(be, p, host, bytes));
    return p;
}

static float *dev_get(const backend *be, const void *p, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(h);
    if (n) OK(backend_download(be, h, p, n * sizeof *h));
    return h;
}

// n activations of `format` on be from host floats (values of the format: rand_fmt), and back as floats: float32
// (format 0), or the 16-bit patterns an act16 backend holds (PREC_BF16/PREC_FP16), converted exactly both ways.
static void *act_put(const backend *be, const float *v, size_t n, int format) {
    if (!format) return dev_put(be, v, n * sizeof(float));
    uint16_t *bits = NULL;
    if (v) {
        bits = malloc(n * sizeof *bits + 2);
        assert_non_null(bits);
        for (size_t i = 0; i < n; i++) bits[i] = precision_to16(format, v[i]);
    }
    void *p = dev_put(be, bits, n * sizeof(uint16_t));
    free(bits);
    return p;
}

static float *act_get(const backend *be, const void *p, size_t n, int format) {
    if (!format) return dev_get(be, p, n);
    uint16_t *bits = malloc((n ? n : 1) * sizeof *bits);
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(bits);
    assert_non_null(h);
    if (n) OK(backend_download(be, bits, p, n * sizeof *bits));
    for (size_t i = 0; i < n; i++) h[i] = precision_from16(format, bits[i]);
    free(bits);
    return h;
}

// NCHW host values [n, c, hw] into an NHWC device buffer, and an NHWC device buffer back as NCHW host values.
static void *act_put_nhwc(const backend *be, const float *nchw, int n, int c, int hw, int format) {
    const size_t count = (size_t)n * c * hw;
    float *t = malloc((count ? count : 1) * sizeof *t);
    assert_non_null(t);
    tu_to_nhwc(nchw, t, n, c, hw);
    void *p = act_put(be, t, count, format);
    free(t);
    return p;
}

static float *act_get_nchw(const backend *be, const void *p, int n, int c, int hw, int format) {
    float *t = act_get(be, p, (size_t)n * c * hw, format), *h = malloc(((size_t)n * c * hw + 1) * sizeof *h);
    assert_non_null(h);
    tu_to_nchw(t, h, n, c, hw);
    free(t);
    return h;
}

static float *dev_put_nhwc(const backend *be, const float *nchw, int n, int c, int hw) {
    return act_put_nhwc(be, nchw, n, c, hw, 0);
}

// n bf16 values (a grads16 backend's dw, db) as the floats they stand for.
static float *dev_get_bf16(const backend *be, const void *p, size_t n) {
    uint16_t *bits = malloc((n ? n : 1) * sizeof *bits);
    float *h = malloc((n ? n : 1) * sizeof *h);
    assert_non_null(bits);
    assert_non_null(h);
    if (n) OK(backend_download(be, bits, p, n * sizeof *bits));
    for (size_t i = 0; i < n; i++) h[i] = precision_from_bits((uint32_t)bits[i] << 16);
    free(bits);
    return h;
}

// A parameter gradient of n values: float32, or bf16 (grads16) read as floats.
static float *dev_get_grad(const backend *be, const void *p, size_t n, int grads16) {
    return grads16 ? dev_get_bf16(be, p, n) : dev_get(be, p, n);
}

static float *dev_get_nchw(const backend *be, const float *p, int n, int c, int hw) {
    return act_get_nchw(be, p, n, c, hw, 0);
}

// max |got - ref| / max |ref| (absolute when ref is all zeros); infinity when either has a NaN/Inf.
static double norm_err(const float *got, const float *ref, size_t n) {
    double diff = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i])) return INFINITY;
        const double d = fabs((double)got[i] - ref[i]);
        if (d > diff) diff = d;
        if (fabs(ref[i]) > scale) scale = fabs(ref[i]);
    }
    return scale > 0 ? diff / scale : diff;
}

static void expect_close(const char *what, const float *got, const float *ref, size_t n, double tol) {
    const double e = norm_err(got, ref, n);
    if (!(e <= tol)) fail_msg("%s: nhwc vs the CPU's nchw, normalised error %.3g > %.3g", what, e, tol);
}

static void expect_same(const char *what, const void *got, const void *ref, size_t bytes) {
    if (memcmp(got, ref, bytes) != 0) fail_msg("%s: CUDA (nhwc) and CPU differ", what);
}

// test_backend_cuda.c's per-value rule for 16-bit results (tu_expect_lp), its messages tagged nhwc.
static void expect_lp(const char *what, int format, float *got, float *ref, const float *s, size_t n, int held,
                      const float *bias, int channels, int inner) {
    tu_expect_lp(what, ", nhwc", format, got, ref, s, n, held, bias, channels, inner);
}

static float *abs_copy(const float *p, size_t n) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    assert_non_null(a);
    for (size_t i = 0; i < n; i++) a[i] = fabsf(p[i]);
    return a;
}

static void set_precision(int format) {
    const backend_cuda_options o = {.tf32 = 0, .deterministic = 0, .precision = format};
    OK(backend_cuda_set_options(&g_nhwc, &o));
}

// ---------------------------------------------------------------------------------------------------------
// Without a GPU: the CPU's layout_convert and the test's transposes agree, both ways, and are each other's
// inverse; a conv weight KCRS -> KRSC (n = k, c = c/groups, hw = r·s) lands where cuDNN's NHWC filter expects it.

static void test_layout_convert_cpu(void **state) {
    (void)state;
    rng r;
    rng_seed(&r, 301);
    const int shapes[][3] = {{3, 5, 7}, {1, 1, 9}, {4, 16, 1}, {2, 3, 64}, {0, 2, 2}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int n = shapes[k][0], c = shapes[k][1], hw = shapes[k][2];
        const size_t count = (size_t)n * c * hw;
        float *x = rand_floats(&r, count, 1.f), *want = malloc((count + 1) * 4), *back = malloc((count + 1) * 4);
        assert_non_null(want);
        assert_non_null(back);
        float *dx = dev_put(&g_cpu, x, count * 4), *dy = dev_put(&g_cpu, NULL, count * 4);
        float *dz = dev_put(&g_cpu, NULL, count * 4);
        OK(backend_layout_convert(&g_cpu, n, c, hw, 1, 4, dx, dy));
        float *got = dev_get(&g_cpu, dy, count);
        tu_to_nhwc(x, want, n, c, hw);
        expect_same("layout_convert to nhwc (cpu)", got, want, count * 4);
        OK(backend_layout_convert(&g_cpu, n, c, hw, 0, 4, dy, dz));
        float *round = dev_get(&g_cpu, dz, count);
        expect_same("layout_convert there and back (cpu)", round, x, count * 4);
        tu_to_nchw(want, back, n, c, hw);
        expect_same("tu_to_nchw after tu_to_nhwc", back, x, count * 4);
        backend_free(&g_cpu, dx), backend_free(&g_cpu, dy), backend_free(&g_cpu, dz);
        free(x), free(want), free(back), free(got), free(round);
    }
    // KCRS [k=2][c=3][r=2][s=2] -> KRSC: element (k, c, r, s) at ((k·R + r)·S + s)·C + c
    enum { K = 2, C = 3, R = 2, S = 2 };
    float w[K * C * R * S], t[K * C * R * S];
    for (int i = 0; i < K * C * R * S; i++) w[i] = (float)i;
    float *dw = dev_put(&g_cpu, w, sizeof w), *dt = dev_put(&g_cpu, NULL, sizeof t);
    OK(backend_layout_convert(&g_cpu, K, C, R * S, 1, 4, dw, dt));
    OK(backend_download(&g_cpu, t, dt, sizeof t));
    for (int k = 0; k < K; k++)
        for (int c = 0; c < C; c++)
            for (int rr = 0; rr < R; rr++)
                for (int s = 0; s < S; s++)
                    assert_true(t[((k * R + rr) * S + s) * C + c] == w[((k * C + c) * R + rr) * S + s]);
    assert_int_equal(backend_layout_convert(&g_cpu, 1, 0, 4, 1, 4, dw, dt), ST_INPUT);
    err_clear();
    backend_free(&g_cpu, dw), backend_free(&g_cpu, dt);
    // The CPU computes NCHW whatever net.layout says: it has no nhwc slot.
    assert_int_equal(backend_is_nhwc(&g_cpu), 0);
}

// Without a GPU: [dense]'s NHWC scheme (src/layers/dense.c) on the CPU's ops. Its input H·W·C-ordered and its weight
// permuted to [out, H·W·C] give the NCHW pass's y, dx (H·W·C-ordered) and, permuted back, dw: the same products,
// summed in another order (backward from the NCHW y on both, so that the ReLU masks agree).
static void test_dense_permuted_cpu(void **state) {
    (void)state;
    rng r;
    rng_seed(&r, 310);
    enum { N = 5, C = 6, HW = 12, IN = C * HW, OUT = 7 };
    float *hx = rand_floats(&r, N * IN, 1.f), *hw = rand_floats(&r, OUT * IN, 0.5f), *hb = rand_floats(&r, OUT, 0.5f);
    float *hdy = rand_floats(&r, N * OUT, 1.f);
    float *x = dev_put(&g_cpu, hx, sizeof(float) * N * IN), *w = dev_put(&g_cpu, hw, sizeof(float) * OUT * IN);
    float *b = dev_put(&g_cpu, hb, sizeof(float) * OUT), *y = dev_put(&g_cpu, NULL, sizeof(float) * N * OUT);
    float *dy = dev_put(&g_cpu, hdy, sizeof(float) * N * OUT), *dx = dev_put(&g_cpu, NULL, sizeof(float) * N * IN);
    float *dw = dev_put(&g_cpu, NULL, sizeof(float) * OUT * IN), *db = dev_put(&g_cpu, NULL, sizeof(float) * OUT);
    float *xt = dev_put(&g_cpu, NULL, sizeof(float) * N * IN), *wt = dev_put(&g_cpu, NULL, sizeof(float) * OUT * IN);
    float *yt = dev_put(&g_cpu, NULL, sizeof(float) * N * OUT), *dyt = dev_put(&g_cpu, hdy, sizeof(float) * N * OUT);
    float *dxt = dev_put(&g_cpu, NULL, sizeof(float) * N * IN), *dwt = dev_put(&g_cpu, NULL, sizeof(float) * OUT * IN);
    float *dwb = dev_put(&g_cpu, NULL, sizeof(float) * OUT * IN), *dbt = dev_put(&g_cpu, NULL, sizeof(float) * OUT);
    // NCHW: as the CPU always runs it
    OK(backend_dense_forward(&g_cpu, N, IN, OUT, ACT_RELU, x, w, b, y));
    OK(backend_dense_backward(&g_cpu, N, IN, OUT, ACT_RELU, x, w, y, dy, dx, dw, db));
    // NHWC: the input permuted (as an NHWC backend holds it), the weight permuted per forward, dw back
    OK(backend_layout_convert(&g_cpu, N, C, HW, 1, 4, x, xt));
    OK(backend_layout_convert(&g_cpu, OUT, C, HW, 1, 4, w, wt));
    OK(backend_dense_forward(&g_cpu, N, IN, OUT, ACT_RELU, xt, wt, b, yt));
    float *a = dev_get(&g_cpu, y, N * OUT), *t = dev_get(&g_cpu, yt, N * OUT);
    expect_close("dense y (weight permuted)", t, a, N * OUT, TOL_DENSE);
    free(a), free(t);
    OK(backend_copy(&g_cpu, yt, y, sizeof(float) * N * OUT));
    OK(backend_dense_backward(&g_cpu, N, IN, OUT, ACT_RELU, xt, wt, yt, dyt, dxt, dwt, dbt));
    OK(backend_layout_convert(&g_cpu, OUT, C, HW, 0, 4, dwt, dwb));
    a = dev_get(&g_cpu, dw, OUT * IN), t = dev_get(&g_cpu, dwb, OUT * IN);
    expect_close("dense dw (permuted back)", t, a, OUT * IN, TOL_DENSE);
    free(a), free(t);
    a = dev_get(&g_cpu, db, OUT), t = dev_get(&g_cpu, dbt, OUT);
    expect_close("dense db", t, a, OUT, TOL_DENSE);
    free(a), free(t);
    {
        float *ref = dev_get(&g_cpu, dx, N * IN), *got_t = dev_get(&g_cpu, dxt, N * IN), *got = malloc(sizeof(float) * N * IN);
        assert_non_null(got);
        tu_to_nchw(got_t, got, N, C, HW);
        expect_close("dense dx (H·W·C-ordered)", got, ref, N * IN, TOL_DENSE);
        free(ref), free(got_t), free(got);
    }
    float *bufs[] = {x, w, b, y, dy, dx, dw, db, xt, wt, yt, dyt, dxt, dwt, dwb, dbt};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) backend_free(&g_cpu, bufs[i]);
    free(hx), free(hw), free(hb), free(hdy);
}

// ---------------------------------------------------------------------------------------------------------
// layout_convert on the GPU, and what the NHWC backend says of itself

static void test_layout_convert(void **state) {
    (void)state;
    NEED_CUDA();
    assert_int_equal(backend_is_nhwc(&g_nhwc), 1);
    rng r;
    rng_seed(&r, 302);
    const int shapes[][3] = {{3, 5, 7}, {64, 3, 9}, {8, 64, 49}, {1, 1, 1}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        const int n = shapes[k][0], c = shapes[k][1], hw = shapes[k][2];
        const size_t count = (size_t)n * c * hw;
        float *x = rand_floats(&r, count, 1.f);
        for (int to = 0; to < 2; to++) {
            float *cx = dev_put(&g_cpu, x, count * 4), *cy = dev_put(&g_cpu, NULL, count * 4);
            float *gx = dev_put(&g_nhwc, x, count * 4), *gy = dev_put(&g_nhwc, NULL, count * 4);
            OK(backend_layout_convert(&g_cpu, n, c, hw, to, 4, cx, cy));
            OK(backend_layout_convert(&g_nhwc, n, c, hw, to, 4, gx, gy));
            float *a = dev_get(&g_cpu, cy, count), *b = dev_get(&g_nhwc, gy, count);
            expect_same(to ? "layout_convert to nhwc" : "layout_convert to nchw", b, a, count * 4);
            free(a), free(b);
            backend_free(&g_cpu, cx), backend_free(&g_cpu, cy), backend_free(&g_nhwc, gx), backend_free(&g_nhwc, gy);
        }
        free(x);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Convolution: forward, backward-data, backward-filter (and the bias), fp32 and 16-bit

typedef struct conv_case {
    int n, c, h, w, k, r, s, stride, pad, act;
    int no_bias;
    int groups, dilation;  // 0: 1
} conv_case;

// grads16: on the grads16 pair (format bf16; the CUDA backend holds that precision from its creation), whose dw and db
// are bf16, compared with one more bf16 ulp (held in the format). act16: on the act16 pair of the format (and
// grads16), x, y, dy and dx 16-bit on both.
static void conv_nhwc_run(const conv_case *cc, int format, int grads16, int act16, rng *r) {
    const backend *bc = grads16 ? &g_cpu16 : &g_cpu, *bg = grads16 ? &g_nhwc16 : &g_nhwc;
    if (act16) {
        const int k = grads16 ? 2 : format == PREC_FP16;
        bc = &g_cpu_act[k], bg = &g_nhwc_act[k];
    }
    const int fa = act16 ? format : 0;  // the activations' format (0: float32)
    conv_desc d = {.n = cc->n, .c = cc->c, .h = cc->h, .w = cc->w, .k = cc->k, .r = cc->r, .s = cc->s,
                   .stride = cc->stride, .pad = cc->pad, .groups = cc->groups, .dilation = cc->dilation,
                   .act = cc->act};
    OK(conv_desc_init(&d, "nhwc conv"));
    conv_desc dc = d, dg = d, da = d;  // da: the fp32 CPU's linear twin for the sums of |terms| (16-bit)
    da.act = ACT_NONE;
    size_t wsc = 0, wsg = 0, wsa = 0;
    if (!grads16 && !act16) set_precision(format);  // the plan takes it at conv_prepare
    OK(backend_conv_prepare(bc, &dc, &wsc));
    OK(backend_conv_prepare(bg, &dg, &wsg));
    OK(backend_conv_prepare(&g_cpu, &da, &wsa));
    if (!grads16 && !act16) set_precision(0);
    if (wsa > wsc) wsc = wsa;
    void *wc = wsc ? dev_put(bc, NULL, wsc) : NULL, *wg = wsg ? dev_put(bg, NULL, wsg) : NULL;
    const int hw_in = d.h * d.w, hw_out = d.oh * d.ow;
    const size_t nx = (size_t)d.n * d.c * hw_in, nw = (size_t)d.k * (d.c / d.groups) * d.r * d.s;
    const size_t ny = (size_t)d.n * d.k * hw_out, gbytes = grads16 ? sizeof(uint16_t) : sizeof(float);
    float *hx = rand_fmt(r, nx, 1.f, format), *hw = rand_fmt(r, nw, 0.5f, format);
    float *hb = rand_fmt(r, (size_t)d.k, 0.5f, format), *hdy = rand_fmt(r, ny, 1.f, format);
    const int bias = !cc->no_bias;
    void *cx = act_put(bc, hx, nx, fa), *cy = act_put(bc, NULL, ny, fa), *cdy = act_put(bc, hdy, ny, fa);
    void *cdx = act_put(bc, NULL, nx, fa);
    float *cw = dev_put(bc, hw, nw * 4), *cb = dev_put(bc, hb, d.k * 4);
    void *cdw = dev_put(bc, NULL, nw * gbytes), *cdb = dev_put(bc, NULL, d.k * gbytes);
    void *gx = act_put_nhwc(bg, hx, d.n, d.c, hw_in, fa), *gy = act_put(bg, NULL, ny, fa);
    void *gdy = act_put_nhwc(bg, hdy, d.n, d.k, hw_out, fa), *gdx = act_put(bg, NULL, nx, fa);
    float *gw = dev_put(bg, hw, nw * 4), *gb = dev_put(bg, hb, d.k * 4);
    void *gdw = dev_put(bg, NULL, nw * gbytes), *gdb = dev_put(bg, NULL, d.k * gbytes);

    OK(backend_conv_forward(bc, &dc, cx, cw, bias ? cb : NULL, cy, wc));
    OK(backend_conv_forward(bg, &dg, gx, gw, bias ? gb : NULL, gy, wg));
    float *ref = act_get(bc, cy, ny, fa), *got = act_get_nchw(bg, gy, d.n, d.k, hw_out, fa);
    // 16-bit: the sums of |terms| from the CPU's linear twin on |x|, |w|
    float *ax = abs_copy(hx, nx), *aw = abs_copy(hw, nw), *ady = abs_copy(hdy, ny);
    float *cax = dev_put(&g_cpu, ax, nx * 4), *caw = dev_put(&g_cpu, aw, nw * 4), *cady = dev_put(&g_cpu, ady, ny * 4);
    float *csy = dev_put(&g_cpu, NULL, ny * 4), *csdx = dev_put(&g_cpu, NULL, nx * 4);
    float *csdw = dev_put(&g_cpu, NULL, nw * 4), *csdb = dev_put(&g_cpu, NULL, d.k * 4);
    if (format) {
        OK(backend_conv_forward(&g_cpu, &da, cax, caw, NULL, csy, wc));
        float *s = dev_get(&g_cpu, csy, ny);
        expect_lp("conv forward y", format, got, ref, s, ny, 1, bias ? hb : NULL, d.k, hw_out);
        free(s);
    } else {
        expect_close("conv forward y", got, ref, ny, TOL_CONV);
    }
    // Backward from the CPU's y on both (held in the format under 16 bits), as test_backend_cuda.c does.
    if (format) precision_round_array(format, ny, ref, ref);
    backend_free(bc, cy), backend_free(bg, gy);
    cy = act_put(bc, ref, ny, fa), gy = act_put_nhwc(bg, ref, d.n, d.k, hw_out, fa);
    free(ref), free(got);
    OK(backend_conv_backward(bc, &dc, cx, cw, cy, cdy, cdx, cdw, bias ? cdb : NULL, wc));
    OK(backend_conv_backward(bg, &dg, gx, gw, gy, gdy, gdx, gdw, bias ? gdb : NULL, wg));
    ref = act_get(bc, cdy, ny, fa), got = act_get_nchw(bg, gdy, d.n, d.k, hw_out, fa);
    expect_close("conv backward dy (pre-activation)", got, ref, ny, TOL_EXACTISH);  // the same float, stored alike
    free(ref), free(got);
    float *rdx = act_get(bc, cdx, nx, fa), *gdx_h = act_get_nchw(bg, gdx, d.n, d.c, hw_in, fa);
    float *rdw = dev_get_grad(bc, cdw, nw, grads16), *gdw_h = dev_get_grad(bg, gdw, nw, grads16);  // both KCRS
    float *rdb = dev_get_grad(bc, cdb, d.k, grads16), *gdb_h = dev_get_grad(bg, gdb, d.k, grads16);
    float *sdw = NULL;  // the sums of |terms| of dw (16-bit), for the pass without dx too
    if (format) {
        OK(backend_conv_backward(&g_cpu, &da, cax, caw, csy, cady, csdx, csdw, csdb, wc));
        float *sdx = dev_get(&g_cpu, csdx, nx), *sdb = dev_get(&g_cpu, csdb, d.k);
        sdw = dev_get(&g_cpu, csdw, nw);
        if (tu_mask_rounds(cc->act)) tu_widen_for_mask(sdx, nx, format), tu_widen_for_mask(sdw, nw, format);
        expect_lp("conv backward dx", format, gdx_h, rdx, sdx, nx, 1, NULL, 1, 1);
        expect_lp("conv backward dw", format, gdw_h, rdw, sdw, nw, grads16, NULL, 1, 1);
        if (bias) expect_lp("conv backward db", format, gdb_h, rdb, sdb, d.k, grads16, NULL, 1, 1);
        free(sdx), free(sdb);
    } else {
        expect_close("conv backward dx", gdx_h, rdx, nx, TOL_CONV);
        expect_close("conv backward dw", gdw_h, rdw, nw, TOL_CONV);
        if (bias) expect_close("conv backward db", gdb_h, rdb, d.k, TOL_CONV);
    }
    free(rdx), free(gdx_h), free(rdw), free(gdw_h), free(rdb), free(gdb_h);
    // First layer: no dx (dy is masked already; masking again is the same on both). Under grads16 backward-filter
    // then makes dy's bf16 copy itself (act16: reads dy, or its fp32 copy). dw zeroed first: it must be written again.
    if (!format || grads16 || act16) {
        OK(backend_zero(bc, cdw, nw * gbytes));
        OK(backend_zero(bg, gdw, nw * gbytes));
        OK(backend_conv_backward(bc, &dc, cx, cw, cy, cdy, NULL, cdw, bias ? cdb : NULL, wc));
        OK(backend_conv_backward(bg, &dg, gx, gw, gy, gdy, NULL, gdw, bias ? gdb : NULL, wg));
        rdw = dev_get_grad(bc, cdw, nw, grads16), gdw_h = dev_get_grad(bg, gdw, nw, grads16);
        if (format)
            expect_lp("conv backward dw (no dx)", format, gdw_h, rdw, sdw, nw, grads16, NULL, 1, 1);
        else
            expect_close("conv backward dw (no dx)", gdw_h, rdw, nw, TOL_CONV);
        free(rdw), free(gdw_h);
    }
    free(sdw);
    void *cbufs[] = {cx, cw, cb, cy, cdy, cdx, cdw, cdb}, *gbufs[] = {gx, gw, gb, gy, gdy, gdx, gdw, gdb};
    float *abufs[] = {cax, caw, cady, csy, csdx, csdw, csdb};
    for (size_t i = 0; i < sizeof cbufs / sizeof cbufs[0]; i++) backend_free(bc, cbufs[i]);
    for (size_t i = 0; i < sizeof gbufs / sizeof gbufs[0]; i++) backend_free(bg, gbufs[i]);
    for (size_t i = 0; i < sizeof abufs / sizeof abufs[0]; i++) backend_free(&g_cpu, abufs[i]);
    backend_free(bc, wc), backend_free(bg, wg);
    free(hx), free(hw), free(hb), free(hdy), free(ax), free(aw), free(ady);
    backend_conv_release(bc, &dc), backend_conv_release(&g_cpu, &da), backend_conv_release(bg, &dg);
}

// Plain, strided and padded, 1x1, grouped, depthwise, dilated, with and without a bias.
static const conv_case k_conv_cases[] = {
    {3, 2, 9, 7, 4, 3, 3, 1, 1, ACT_RELU, 0, 0, 0},
    {2, 3, 11, 10, 5, 5, 3, 2, 2, ACT_NONE, 0, 0, 0},
    {4, 8, 6, 6, 16, 1, 1, 1, 0, ACT_RELU, 0, 0, 0},
    {16, 3, 32, 32, 8, 3, 3, 1, 1, ACT_LEAKY, 1, 0, 0},  // several blocks in the bias-gradient rows; no bias
    {4, 16, 12, 12, 32, 3, 3, 2, 1, ACT_RELU6, 0, 0, 0},
    {2, 4, 6, 7, 6, 3, 3, 1, 1, ACT_RELU, 0, 2, 0},       // grouped
    {3, 6, 5, 6, 6, 3, 3, 1, 1, ACT_RELU6, 0, 6, 0},      // depthwise
    {3, 4, 9, 8, 6, 3, 3, 2, 2, ACT_LEAKY, 0, 2, 2},      // grouped, strided, padded, dilated
    {8, 32, 14, 14, 32, 3, 3, 2, 1, ACT_RELU6, 1, 32, 0}, // MobileNet's strided depthwise
    {4, 64, 7, 7, 40, 3, 3, 1, 1, ACT_SIGMOID, 0, 0, 0},  // more than 32 channels in the bias gradient's blocks
};

static void test_conv_nhwc(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 303);
    for (size_t i = 0; i < sizeof k_conv_cases / sizeof k_conv_cases[0]; i++) conv_nhwc_run(&k_conv_cases[i], 0, 0, 0, &r);
}

// 16-bit: activations whose masks are 0 or 1, as test_backend_cuda.c's 16-bit cases (after leaky or sigmoid the
// GPU rounds the masked gradient to the format before backward-data, which the per-value rule does not cover).
static const conv_case k_conv_lp_cases[] = {
    {3, 2, 9, 7, 4, 3, 3, 1, 1, ACT_RELU, 0, 0, 0},
    {2, 3, 11, 10, 5, 5, 3, 2, 2, ACT_NONE, 0, 0, 0},
    {4, 16, 12, 12, 32, 3, 3, 2, 1, ACT_RELU6, 0, 0, 0},
    {8, 3, 28, 28, 16, 3, 3, 1, 1, ACT_RELU6, 0, 0, 0},   // 3 input channels: no tensor-core-friendly shape
    {16, 64, 7, 7, 64, 3, 3, 1, 1, ACT_NONE, 1, 0, 0},
    {2, 4, 6, 7, 6, 3, 3, 1, 1, ACT_RELU, 0, 2, 0},       // grouped
    {3, 6, 5, 6, 6, 3, 3, 1, 1, ACT_RELU6, 0, 6, 0},      // depthwise
    {3, 4, 9, 8, 6, 3, 3, 2, 2, ACT_NONE, 0, 2, 2},       // grouped, strided, padded, dilated
    {8, 32, 14, 14, 32, 3, 3, 2, 1, ACT_RELU6, 1, 32, 0},
};

static void test_conv_nhwc_lp(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 304);
    const int formats[2] = {PREC_BF16, PREC_FP16};
    const int cc = backend_cuda_compute_capability(&g_nhwc);
    for (int f = 0; f < 2; f++) {
        if (tu_lp_conv_skipped(cc, formats[f], "bf16")) continue;
        for (size_t i = 0; i < sizeof k_conv_lp_cases / sizeof k_conv_lp_cases[0]; i++)
            conv_nhwc_run(&k_conv_lp_cases[i], formats[f], 0, 0, &r);
    }
}

// grads16 (bf16 dw and db): cuDNN's bf16 KRSC dw in the workspace, permuted into the caller's KCRS buffer by
// layout_convert's 16-bit kernel, and the bias sums stored bf16, against the grads16 CPU in NCHW.
static void test_conv_nhwc_grads16(void **state) {
    (void)state;
    NEED_CUDA();
    const int cc = backend_cuda_compute_capability(&g_nhwc16);
    if (tu_lp_conv_skipped(cc, PREC_BF16, "grads16")) return;
    rng r;
    rng_seed(&r, 305);
    for (size_t i = 0; i < sizeof k_conv_lp_cases / sizeof k_conv_lp_cases[0]; i++)
        conv_nhwc_run(&k_conv_lp_cases[i], PREC_BF16, 1, 0, &r);
}

// [dense] after a spatial input on an NHWC grads16 backend (src/layers/dense.c's scheme, test_dense_permuted_cpu):
// the input H·W·C-ordered, the weight permuted per forward, the bf16 weight gradient permuted back by
// layout_convert's 16-bit kernel; against the grads16 CPU's dense on the NCHW values (backward from the CPU's y,
// held in bf16).
static void test_dense_nhwc_grads16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 311);
    enum { N = 6, C = 16, HW = 9, IN = C * HW, OUT = 10 };
    const size_t nx = (size_t)N * IN, nw = (size_t)OUT * IN, ny = (size_t)N * OUT;
    float *hx = rand_fmt(&r, nx, 1.f, PREC_BF16), *hw = rand_fmt(&r, nw, 0.5f, PREC_BF16);
    float *hb = rand_fmt(&r, OUT, 0.5f, PREC_BF16), *hdy = rand_fmt(&r, ny, 1.f, PREC_BF16);
    // the grads16 CPU, NCHW
    float *cx = dev_put(&g_cpu16, hx, nx * 4), *cw = dev_put(&g_cpu16, hw, nw * 4);
    float *cb = dev_put(&g_cpu16, hb, OUT * 4), *cy = dev_put(&g_cpu16, NULL, ny * 4);
    float *cdy = dev_put(&g_cpu16, hdy, ny * 4), *cdx = dev_put(&g_cpu16, NULL, nx * 4);
    void *cdw = dev_put(&g_cpu16, NULL, nw * 2), *cdb = dev_put(&g_cpu16, NULL, OUT * 2);
    OK(backend_dense_forward(&g_cpu16, N, IN, OUT, ACT_RELU, cx, cw, cb, cy));
    float *hy = dev_get(&g_cpu16, cy, ny);
    precision_round_array(PREC_BF16, ny, hy, hy);
    OK(backend_upload(&g_cpu16, cy, hy, ny * 4));
    OK(backend_dense_backward(&g_cpu16, N, IN, OUT, ACT_RELU, cx, cw, cy, cdy, cdx, cdw, cdb));
    // the NHWC grads16 GPU: x H·W·C-ordered, w permuted, dw permuted back
    float *gx = dev_put_nhwc(&g_nhwc16, hx, N, C, HW), *gw = dev_put(&g_nhwc16, hw, nw * 4);
    float *gwt = dev_put(&g_nhwc16, NULL, nw * 4), *gy = dev_put(&g_nhwc16, hy, ny * 4);
    float *gdy = dev_put(&g_nhwc16, hdy, ny * 4), *gdx = dev_put(&g_nhwc16, NULL, nx * 4);
    void *gdwt = dev_put(&g_nhwc16, NULL, nw * 2), *gdw = dev_put(&g_nhwc16, NULL, nw * 2);
    void *gdb = dev_put(&g_nhwc16, NULL, OUT * 2);
    OK(backend_layout_convert(&g_nhwc16, OUT, C, HW, 1, 4, gw, gwt));
    OK(backend_dense_backward(&g_nhwc16, N, IN, OUT, ACT_RELU, gx, gwt, gy, gdy, gdx, gdwt, gdb));
    OK(backend_layout_convert(&g_nhwc16, OUT, C, HW, 0, 2, gdwt, gdw));
    // the sums of |terms|: the fp32 CPU's linear dense on |x|, |w| and the masked |dy|
    float *dz = dev_get(&g_cpu16, cdy, ny), *ax = abs_copy(hx, nx), *aw = abs_copy(hw, nw), *adz = abs_copy(dz, ny);
    float *sx = dev_put(&g_cpu, ax, nx * 4), *sw = dev_put(&g_cpu, aw, nw * 4), *sdz = dev_put(&g_cpu, adz, ny * 4);
    float *sdx = dev_put(&g_cpu, NULL, nx * 4), *sdw = dev_put(&g_cpu, NULL, nw * 4);
    float *sdb = dev_put(&g_cpu, NULL, OUT * 4);
    OK(backend_dense_backward(&g_cpu, N, IN, OUT, ACT_NONE, sx, sw, cy, sdz, sdx, sdw, sdb));
    float *s = dev_get(&g_cpu, sdx, nx), *ref = dev_get(&g_cpu16, cdx, nx);
    float *got = dev_get_nchw(&g_nhwc16, gdx, N, C, HW);
    expect_lp("dense dx (H·W·C-ordered)", PREC_BF16, got, ref, s, nx, 1, NULL, 1, 1);
    free(s), free(ref), free(got);
    s = dev_get(&g_cpu, sdw, nw), ref = dev_get_bf16(&g_cpu16, cdw, nw), got = dev_get_bf16(&g_nhwc16, gdw, nw);
    expect_lp("dense dw (grads16, permuted back)", PREC_BF16, got, ref, s, nw, 1, NULL, 1, 1);
    free(s), free(ref), free(got);
    s = dev_get(&g_cpu, sdb, OUT), ref = dev_get_bf16(&g_cpu16, cdb, OUT), got = dev_get_bf16(&g_nhwc16, gdb, OUT);
    expect_lp("dense db (grads16)", PREC_BF16, got, ref, s, OUT, 1, NULL, 1, 1);
    free(s), free(ref), free(got);
    void *cbufs[] = {cx, cw, cb, cy, cdy, cdx, cdw, cdb}, *gbufs[] = {gx, gw, gwt, gy, gdy, gdx, gdwt, gdw, gdb};
    void *sbufs[] = {sx, sw, sdz, sdx, sdw, sdb};
    for (size_t i = 0; i < sizeof cbufs / sizeof cbufs[0]; i++) backend_free(&g_cpu16, cbufs[i]);
    for (size_t i = 0; i < sizeof gbufs / sizeof gbufs[0]; i++) backend_free(&g_nhwc16, gbufs[i]);
    for (size_t i = 0; i < sizeof sbufs / sizeof sbufs[0]; i++) backend_free(&g_cpu, sbufs[i]);
    free(hx), free(hw), free(hb), free(hdy), free(hy), free(dz), free(ax), free(aw), free(adz);
}

// ---------------------------------------------------------------------------------------------------------
// Batch normalisation: the four ops, training and evaluation (backward from the CPU's forward values)

// bc: the CPU (NCHW), bg: CUDA at nhwc; fmt: the activations' format (0: float32, normalised errors; bf16/fp16: an
// act16 pair, per value, dw and db bf16 on the grads16 one).
static void bn_nhwc_run(const backend *bc, const backend *bg, int fmt, int n, int c, int hw, int act, rng *r) {
    const size_t nx = (size_t)n * c * hw;
    float *hx = rand_floats(r, nx, 2.f), *hw_ = rand_floats(r, (size_t)c, 1.f), *hb = rand_floats(r, (size_t)c, 0.5f);
    float *hdy = rand_fmt(r, nx, 1.f, fmt), *hrun = malloc((2 * (size_t)c + 1) * sizeof(float));
    float *sy = malloc(nx * 4 + 4), *sdx = malloc(nx * 4 + 4);
    assert_non_null(hrun), assert_non_null(sy), assert_non_null(sdx);
    for (size_t i = 0; i < nx; i++) hx[i] += 3.f;
    if (fmt) precision_round_array(fmt, nx, hx, hx);
    for (int k = 0; k < c; k++) hrun[k] = 0.5f, hrun[c + k] = 1.5f;
    hrun[2 * c] = 7.f;
    const bn_desc d = {.n = n, .c = c, .hw = hw, .act = act, .eps = 1e-5f, .momentum = 0.1f, .count = (int64_t)n * hw};
    const size_t cb = (size_t)c * 4;
    const int grads16 = backend_is_grads16(bg);
    const size_t gb = grads16 ? (size_t)c * 2 : cb;
    void *cx = act_put(bc, hx, nx, fmt), *cy = act_put(bc, NULL, nx, fmt), *cdy = act_put(bc, hdy, nx, fmt);
    void *cdx = act_put(bc, NULL, nx, fmt);
    float *cw = dev_put(bc, hw_, cb), *cbb = dev_put(bc, hb, cb), *crun = dev_put(bc, hrun, cb * 2 + 4);
    float *cst = dev_put(bc, NULL, 3 * cb), *csave = dev_put(bc, NULL, 2 * cb), *cgs = dev_put(bc, NULL, 2 * cb);
    void *cdw = dev_put(bc, NULL, gb), *cdb = dev_put(bc, NULL, gb);
    void *gx = act_put_nhwc(bg, hx, n, c, hw, fmt), *gy = act_put(bg, NULL, nx, fmt);
    void *gdy = act_put_nhwc(bg, hdy, n, c, hw, fmt), *gdx = act_put(bg, NULL, nx, fmt);
    float *gw = dev_put(bg, hw_, cb), *gbb = dev_put(bg, hb, cb), *grun = dev_put(bg, hrun, cb * 2 + 4);
    float *gst = dev_put(bg, NULL, 3 * cb), *gsave = dev_put(bg, NULL, 2 * cb), *ggs = dev_put(bg, NULL, 2 * cb);
    void *gdw = dev_put(bg, NULL, gb), *gdb = dev_put(bg, NULL, gb);
    float *a, *b;
#define SAME_VEC(what, cp, gp, count, tol)                                                                 \
    do {                                                                                                   \
        a = dev_get(bc, cp, count), b = dev_get(bg, gp, count);                                            \
        expect_close(what, b, a, count, tol);                                                              \
        free(a), free(b);                                                                                  \
    } while (0)
    // fp32: the normalised error tol; 16-bit: per value, s the sums of |terms| (NULL: the one ulp alone)
#define SAME_ACT(what, cp, gp, tol, s)                                                                     \
    do {                                                                                                   \
        a = act_get(bc, cp, nx, fmt), b = act_get_nchw(bg, gp, n, c, hw, fmt);                             \
        if (fmt) {                                                                                         \
            float *z_ = calloc(nx + 1, sizeof(float));                                                     \
            assert_non_null(z_);                                                                           \
            expect_lp(what, fmt, b, a, (s) ? (s) : z_, nx, 1, NULL, 1, 1);                                 \
            free(z_);                                                                                      \
        } else {                                                                                           \
            expect_close(what, b, a, nx, tol);                                                             \
        }                                                                                                  \
        free(a), free(b);                                                                                  \
    } while (0)
    OK(backend_bn_stats(bc, &d, cx, cst));
    OK(backend_bn_stats(bg, &d, gx, gst));
    SAME_VEC("bn_stats", cst, gst, 3 * (size_t)c, TOL_EXACTISH);
    OK(backend_bn_apply(bc, &d, cx, cst, cw, cbb, crun, csave, cy));
    OK(backend_bn_apply(bg, &d, gx, gst, gw, gbb, grun, gsave, gy));
    float *hsave = dev_get(bc, csave, 2 * (size_t)c);
    tu_bn_act_sums(nx, d.c, d.hw, hx, hsave, hw_, hb, NULL, NULL, sy, NULL);
    SAME_ACT("bn_apply (training) y", cy, gy, TOL_DENSE, sy);
    SAME_VEC("bn_apply save", csave, gsave, 2 * (size_t)c, TOL_DENSE);
    SAME_VEC("bn_apply running statistics", crun, grun, 2 * (size_t)c + 1, TOL_DENSE);
    // backward from the CPU's y and save on both
    a = act_get(bc, cy, nx, fmt);
    backend_free(bg, gy);
    gy = act_put_nhwc(bg, a, n, c, hw, fmt);
    free(a);
    OK(backend_upload(bg, gsave, hsave, 2 * cb));
    OK(backend_bn_grad_stats(bc, &d, cx, cy, csave, cdy, cdw, cdb, cgs));
    OK(backend_bn_grad_stats(bg, &d, gx, gy, gsave, gdy, gdw, gdb, ggs));
    SAME_ACT("bn_grad_stats dz", cdy, gdy, TOL_EXACTISH, NULL);
    float *dz = act_get(bc, cdy, nx, fmt);
    if (grads16) {  // bf16 dw and db: the sums of |dz| and |dz·x̂| per channel (test_backend_cuda.c's g16_bn_run)
        float *sdw = calloc((size_t)c, sizeof *sdw), *sdb = calloc((size_t)c, sizeof *sdb);
        assert_non_null(sdw), assert_non_null(sdb);
        for (size_t i = 0; i < nx; i++) {
            const int ch = (int)((i / (size_t)hw) % (size_t)c);
            sdb[ch] += fabsf(dz[i]);
            sdw[ch] += fabsf(dz[i] * ((hx[i] - hsave[ch]) * hsave[c + ch]));
        }
        a = dev_get_bf16(bc, cdw, (size_t)c), b = dev_get_bf16(bg, gdw, (size_t)c);
        expect_lp("bn_grad_stats dw (grads16)", PREC_BF16, b, a, sdw, (size_t)c, 1, NULL, 1, 1);
        free(a), free(b);
        a = dev_get_bf16(bc, cdb, (size_t)c), b = dev_get_bf16(bg, gdb, (size_t)c);
        expect_lp("bn_grad_stats db (grads16)", PREC_BF16, b, a, sdb, (size_t)c, 1, NULL, 1, 1);
        free(a), free(b), free(sdw), free(sdb);
    } else {
        SAME_VEC("bn_grad_stats dw", cdw, gdw, (size_t)c, TOL_DENSE);
        SAME_VEC("bn_grad_stats db", cdb, gdb, (size_t)c, TOL_DENSE);
    }
    SAME_VEC("bn_grad_stats gstats", cgs, ggs, 2 * (size_t)c, TOL_DENSE);
    float *hgs = dev_get(bc, cgs, 2 * (size_t)c);
    OK(backend_upload(bg, ggs, hgs, 2 * cb));
    if (fmt) {  // from the CPU's dz on both (the same float, stored alike: a guard, not a change)
        backend_free(bg, gdy);
        gdy = act_put_nhwc(bg, dz, n, c, hw, fmt);
    }
    OK(backend_bn_grad_input(bc, &d, cx, csave, cw, cgs, cdy, cdx));
    OK(backend_bn_grad_input(bg, &d, gx, gsave, gw, ggs, gdy, gdx));
    tu_bn_act_sums(nx, d.c, d.hw, hx, hsave, hw_, hb, dz, hgs, sy, sdx);
    SAME_ACT("bn_grad_input dx", cdx, gdx, TOL_DENSE, sdx);
    a = dev_get(bc, crun, 2 * (size_t)c + 1);
    OK(backend_upload(bg, grun, a, 2 * cb + 4));
    free(a);
    OK(backend_bn_apply(bc, &d, cx, NULL, cw, cbb, crun, csave, cy));
    OK(backend_bn_apply(bg, &d, gx, NULL, gw, gbb, grun, gsave, gy));
    free(hsave);
    hsave = dev_get(bc, csave, 2 * (size_t)c);
    tu_bn_act_sums(nx, d.c, d.hw, hx, hsave, hw_, hb, NULL, NULL, sy, NULL);
    SAME_ACT("bn_apply (evaluation) y", cy, gy, TOL_DENSE, sy);
#undef SAME_VEC
#undef SAME_ACT
    void *cbufs[] = {cx, cw, cbb, crun, cst, csave, cy, cdy, cdx, cdw, cdb, cgs};
    void *gbufs[] = {gx, gw, gbb, grun, gst, gsave, gy, gdy, gdx, gdw, gdb, ggs};
    for (size_t i = 0; i < sizeof cbufs / sizeof cbufs[0]; i++) backend_free(bc, cbufs[i]);
    for (size_t i = 0; i < sizeof gbufs / sizeof gbufs[0]; i++) backend_free(bg, gbufs[i]);
    free(hx), free(hw_), free(hb), free(hdy), free(hrun), free(sy), free(sdx), free(hsave), free(dz), free(hgs);
}

static void test_batchnorm_nhwc(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 305);
    bn_nhwc_run(&g_cpu, &g_nhwc, 0, 4, 3, 25, ACT_NONE, &r);
    bn_nhwc_run(&g_cpu, &g_nhwc, 0, 16, 32, 196, ACT_RELU, &r);  // more values per channel than one block's threads
    bn_nhwc_run(&g_cpu, &g_nhwc, 0, 64, 100, 1, ACT_LEAKY, &r);  // per feature, after a dense (hw = 1: both layouts)
    bn_nhwc_run(&g_cpu, &g_nhwc, 0, 8, 5, 49, ACT_RELU6, &r);
    bn_nhwc_run(&g_cpu, &g_nhwc, 0, 16, 40, 9, ACT_SIGMOID, &r);
}

// ---------------------------------------------------------------------------------------------------------
// Pooling: max (padded, strided, overlapping) and average (windows and global)

// bc: the CPU (NCHW), bg: CUDA at nhwc, fmt: the activations' format (0: float32; bf16/fp16: an act16 pair, dx per
// value against the CPU's sums of |dy| over the windows).
static void pool_nhwc_run(const backend *bc, const backend *bg, int fmt, int n, int c, int h, int w, int size,
                          int stride, int pad, rng *r) {
    pool_desc d = {.n = n, .c = c, .h = h, .w = w, .size = size, .stride = stride, .pad = pad};
    OK(pool_desc_init(&d, "nhwc pool"));
    const int ohw = d.oh * d.ow;
    const size_t nx = (size_t)n * c * h * w, ny = (size_t)n * c * ohw;
    float *hx = rand_fmt(r, nx, 1.f, fmt), *hdy = rand_fmt(r, ny, 1.f, fmt);
    void *cx = act_put(bc, hx, nx, fmt), *cy = act_put(bc, NULL, ny, fmt), *cdy = act_put(bc, hdy, ny, fmt);
    void *cdx = act_put(bc, NULL, nx, fmt);
    int32_t *cam = dev_put(bc, NULL, ny * 4), *gam = dev_put(bg, NULL, ny * 4);
    void *gx = act_put_nhwc(bg, hx, n, c, h * w, fmt), *gy = act_put(bg, NULL, ny, fmt);
    void *gdy = act_put_nhwc(bg, hdy, n, c, ohw, fmt), *gdx = act_put_nhwc(bg, hx, n, c, h * w, fmt);  // dirty
    OK(backend_pool_forward(bc, &d, cx, cy, cam));
    OK(backend_pool_forward(bg, &d, gx, gy, gam));
    float *a = act_get(bc, cy, ny, fmt), *b = act_get_nchw(bg, gy, n, c, ohw, fmt);
    expect_same("maxpool forward y", b, a, ny * 4);
    free(a), free(b);
    OK(backend_pool_backward(bc, &d, cdy, cam, cdx));
    OK(backend_pool_backward(bg, &d, gdy, gam, gdx));
    a = act_get(bc, cdx, nx, fmt), b = act_get_nchw(bg, gdx, n, c, h * w, fmt);
    if (fmt) {
        float *ady = abs_copy(hdy, ny), *sa = dev_put(&g_cpu, ady, ny * 4), *so = dev_put(&g_cpu, NULL, nx * 4);
        OK(backend_pool_backward(&g_cpu, &d, sa, cam, so));  // the CPU's winners (host memory)
        float *s = dev_get(&g_cpu, so, nx);
        expect_lp("maxpool backward dx", fmt, b, a, s, nx, 1, NULL, 1, 1);
        backend_free(&g_cpu, sa), backend_free(&g_cpu, so);
        free(ady), free(s);
    } else {
        expect_close("maxpool backward dx", b, a, nx, TOL_EXACTISH);
    }
    free(a), free(b);
    void *cbufs[] = {cx, cy, cdy, cdx, cam}, *gbufs[] = {gx, gy, gdy, gdx, gam};
    for (int i = 0; i < 5; i++) backend_free(bc, cbufs[i]), backend_free(bg, gbufs[i]);
    free(hx), free(hdy);
}

// As pool_nhwc_run; 16-bit: y and dx per value against the CPU's window sums of |x| and |dy|.
static void avgpool_nhwc_run(const backend *bc, const backend *bg, int fmt, int n, int c, int h, int w, int kh, int kw,
                             int stride, rng *r) {
    const int oh = (h - kh) / stride + 1, ow = (w - kw) / stride + 1;
    const size_t nx = (size_t)n * c * h * w, ny = (size_t)n * c * oh * ow;
    float *hx = rand_fmt(r, nx, 1.f, fmt), *hdy = rand_fmt(r, ny, 1.f, fmt);
    void *cx = act_put(bc, hx, nx, fmt), *cy = act_put(bc, NULL, ny, fmt), *cdy = act_put(bc, hdy, ny, fmt);
    void *cdx = act_put(bc, NULL, nx, fmt);
    void *gx = act_put_nhwc(bg, hx, n, c, h * w, fmt), *gy = act_put(bg, NULL, ny, fmt);
    void *gdy = act_put_nhwc(bg, hdy, n, c, oh * ow, fmt), *gdx = act_put(bg, NULL, nx, fmt);
    float *s = NULL;
    OK(backend_avgpool_forward(bc, n, c, h, w, kh, kw, stride, cx, cy));
    OK(backend_avgpool_forward(bg, n, c, h, w, kh, kw, stride, gx, gy));
    float *a = act_get(bc, cy, ny, fmt), *b = act_get_nchw(bg, gy, n, c, oh * ow, fmt);
    if (fmt) {
        float *ax = abs_copy(hx, nx), *sa = dev_put(&g_cpu, ax, nx * 4), *so = dev_put(&g_cpu, NULL, ny * 4);
        OK(backend_avgpool_forward(&g_cpu, n, c, h, w, kh, kw, stride, sa, so));
        s = dev_get(&g_cpu, so, ny);
        expect_lp("avgpool y", fmt, b, a, s, ny, 1, NULL, 1, 1);
        backend_free(&g_cpu, sa), backend_free(&g_cpu, so);
        free(ax), free(s);
    } else {
        expect_close("avgpool y", b, a, ny, TOL_EXACTISH);
    }
    free(a), free(b);
    OK(backend_avgpool_backward(bc, n, c, h, w, kh, kw, stride, cdy, cdx));
    OK(backend_avgpool_backward(bg, n, c, h, w, kh, kw, stride, gdy, gdx));
    a = act_get(bc, cdx, nx, fmt), b = act_get_nchw(bg, gdx, n, c, h * w, fmt);
    if (fmt) {
        float *ady = abs_copy(hdy, ny), *sa = dev_put(&g_cpu, ady, ny * 4), *so = dev_put(&g_cpu, NULL, nx * 4);
        OK(backend_avgpool_backward(&g_cpu, n, c, h, w, kh, kw, stride, sa, so));
        s = dev_get(&g_cpu, so, nx);
        expect_lp("avgpool dx", fmt, b, a, s, nx, 1, NULL, 1, 1);
        backend_free(&g_cpu, sa), backend_free(&g_cpu, so);
        free(ady), free(s);
    } else {
        expect_close("avgpool dx", b, a, nx, TOL_EXACTISH);
    }
    free(a), free(b);
    void *cbufs[] = {cx, cy, cdy, cdx}, *gbufs[] = {gx, gy, gdy, gdx};
    for (int i = 0; i < 4; i++) backend_free(bc, cbufs[i]), backend_free(bg, gbufs[i]);
    free(hx), free(hdy);
}

static void pool_cases_run(const backend *bc, const backend *bg, int fmt, rng *r) {
    pool_nhwc_run(bc, bg, fmt, 2, 3, 8, 8, 2, 2, 0, r);
    pool_nhwc_run(bc, bg, fmt, 2, 2, 9, 7, 3, 2, 0, r);    // overlapping windows: dx sums
    pool_nhwc_run(bc, bg, fmt, 1, 2, 10, 10, 2, 3, 0, r);  // gaps
    pool_nhwc_run(bc, bg, fmt, 2, 3, 16, 15, 3, 2, 1, r);  // padded
    pool_nhwc_run(bc, bg, fmt, 2, 64, 7, 9, 2, 2, 1, r);
    pool_nhwc_run(bc, bg, fmt, 1, 4, 6, 6, 3, 1, 1, r);
    avgpool_nhwc_run(bc, bg, fmt, 4, 8, 8, 8, 2, 2, 2, r);
    avgpool_nhwc_run(bc, bg, fmt, 3, 5, 9, 7, 3, 3, 2, r);    // overlapping windows
    avgpool_nhwc_run(bc, bg, fmt, 2, 3, 10, 10, 2, 2, 3, r);  // gaps
    avgpool_nhwc_run(bc, bg, fmt, 64, 32, 7, 5, 7, 5, 1, r);  // global, non-square
}

static void test_pool_nhwc(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 306);
    pool_cases_run(&g_cpu, &g_nhwc, 0, &r);
}

// ---------------------------------------------------------------------------------------------------------
// The gather (with crop, flip, normalisation, and with every transform off: the plain gather's values) and
// route's channel_copy

// bc: the CPU, bg: CUDA at nhwc, fmt: the activations' format (0: float32; bf16/fp16: an act16 pair). Bit for bit:
// the same float per value, stored alike.
static void gather_nhwc_run(const backend *bc, const backend *bg, int fmt, rng *r) {
    enum { TOTAL = 50, C = 3, H = 11, W = 9, ELEMS = C * H * W, N = 33 };
    uint8_t images[TOTAL * ELEMS];
    int32_t labels[TOTAL], index[N];
    for (int i = 0; i < TOTAL * ELEMS; i++) images[i] = (uint8_t)rng_below(r, 256);
    for (int i = 0; i < TOTAL; i++) labels[i] = (int32_t)rng_below(r, 10);
    for (int i = 0; i < N; i++) index[i] = (int32_t)rng_below(r, TOTAL);
    gather_aug a;
    memset(&a, 0, sizeof a);
    a.seed = 99, a.epoch = 2, a.c = C, a.h = H, a.w = W, a.crop_pad = 4, a.flip = 1, a.normalize = 1;
    for (int c = 0; c < C; c++)
        for (int p = 0; p < 256; p++) a.lut[c][p] = ((float)p / 255.0f - 0.3f + 0.1f * c) / (0.25f + 0.05f * c);
    void *ci = dev_put(bc, images, sizeof images), *cl = dev_put(bc, labels, sizeof labels);
    void *cidx = dev_put(bc, index, sizeof index), *ca = dev_put(bc, &a, sizeof a);
    void *gi = dev_put(bg, images, sizeof images), *gl = dev_put(bg, labels, sizeof labels);
    void *gidx = dev_put(bg, index, sizeof index), *ga = dev_put(bg, &a, sizeof a);
    void *cx = act_put(bc, NULL, N * ELEMS, fmt), *gx = act_put(bg, NULL, N * ELEMS, fmt);
    int32_t *cy = dev_put(bc, NULL, N * 4), *gy = dev_put(bg, NULL, N * 4);
    for (int pass = 0; pass < 2; pass++) {  // 0: crop, flip, normalize; 1: all off (the CPU's plain gather)
        if (pass) {
            a.crop_pad = 0, a.flip = 0, a.normalize = 0;
            OK(backend_upload(bg, ga, &a, sizeof a));
        }
        OK(backend_gather(bc, ci, cl, cidx, N, ELEMS, pass ? NULL : ca, cx, cy));
        OK(backend_gather(bg, gi, gl, gidx, N, ELEMS, ga, gx, gy));
        float *ref = act_get(bc, cx, N * ELEMS, fmt), *got = act_get_nchw(bg, gx, N, C, H * W, fmt);
        expect_same(pass ? "gather (transforms off) x" : "gather (crop, flip, normalize) x", got, ref, N * ELEMS * 4);
        free(ref), free(got);
        int32_t yc[N], yg[N];
        OK(backend_download(bc, yc, cy, sizeof yc));
        OK(backend_download(bg, yg, gy, sizeof yg));
        expect_same("gather y", yg, yc, sizeof yc);
    }
    // No shape, no NHWC: the plain gather is refused
    assert_int_equal(backend_gather(bg, gi, gl, gidx, N, ELEMS, NULL, gx, gy), ST_INPUT);
    assert_non_null(strstr(err_msg(), "NHWC"));
    err_clear();
    void *cb[] = {ci, cl, cidx, ca, cx, cy}, *gb[] = {gi, gl, gidx, ga, gx, gy};
    for (int i = 0; i < 6; i++) backend_free(bc, cb[i]), backend_free(bg, gb[i]);
}

static void test_gather_nhwc(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 307);
    gather_nhwc_run(&g_cpu, &g_nhwc, 0, &r);
}

// As gather_nhwc_run: the values (16-bit: their patterns) move as they are.
static void channel_copy_nhwc_run(const backend *bc, const backend *bg, int fmt, rng *r) {
    enum { N = 9, HW = 35, SRC_C = 5, DST_C = 12 };
    float *hs = rand_fmt(r, N * SRC_C * HW, 1.f, fmt), *hd = rand_fmt(r, N * DST_C * HW, 1.f, fmt);
    void *cs = act_put(bc, hs, N * SRC_C * HW, fmt), *cd = act_put(bc, hd, N * DST_C * HW, fmt);
    void *cback = act_put(bc, NULL, N * 3 * HW, fmt);
    void *gs = act_put_nhwc(bg, hs, N, SRC_C, HW, fmt), *gd = act_put_nhwc(bg, hd, N, DST_C, HW, fmt);
    void *gback = act_put(bg, NULL, N * 3 * HW, fmt);
    OK(backend_channel_copy(bc, N, SRC_C, HW, cs, SRC_C, 0, cd, DST_C, 4));
    OK(backend_channel_copy(bg, N, SRC_C, HW, gs, SRC_C, 0, gd, DST_C, 4));
    float *a = act_get(bc, cd, N * DST_C * HW, fmt), *b = act_get_nchw(bg, gd, N, DST_C, HW, fmt);
    expect_same("channel_copy into a slice", b, a, sizeof(float) * N * DST_C * HW);
    free(a), free(b);
    OK(backend_channel_copy(bc, N, 3, HW, cd, DST_C, 5, cback, 3, 0));
    OK(backend_channel_copy(bg, N, 3, HW, gd, DST_C, 5, gback, 3, 0));
    a = act_get(bc, cback, N * 3 * HW, fmt), b = act_get_nchw(bg, gback, N, 3, HW, fmt);
    expect_same("channel_copy out of a slice", b, a, sizeof(float) * N * 3 * HW);
    free(a), free(b);
    backend_free(bc, cs), backend_free(bc, cd), backend_free(bc, cback);
    backend_free(bg, gs), backend_free(bg, gd), backend_free(bg, gback);
    free(hs), free(hd);
}

static void test_channel_copy_nhwc(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 308);
    channel_copy_nhwc_run(&g_cpu, &g_nhwc, 0, &r);
}

// ---------------------------------------------------------------------------------------------------------
// 16-bit activations (backend_options.act16) at nhwc: the act16 CUDA backend against the act16 CPU (NCHW) on the same
// 16-bit values, per value with the 16-bit tests' rule (tu_expect_lp), bit for bit where values only move.

static void test_conv_nhwc_act16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 320);
    const conv_case leaky[] = {
        {3, 4, 9, 8, 6, 3, 3, 2, 2, ACT_LEAKY, 0, 2, 2},   // leaky: its masked dy rounds (widen_for_mask)
        {8, 3, 28, 28, 16, 3, 3, 1, 1, ACT_LEAKY, 0, 0, 0},
    };
    const int formats[2] = {PREC_BF16, PREC_FP16};
    const int cc = backend_cuda_compute_capability(&g_nhwc_act[0]);
    for (int f = 0; f < 2; f++) {
        if (tu_lp_conv_skipped(cc, formats[f], "act16 bf16")) continue;
        for (size_t i = 0; i < sizeof k_conv_lp_cases / sizeof k_conv_lp_cases[0]; i++)
            conv_nhwc_run(&k_conv_lp_cases[i], formats[f], 0, 1, &r);
        for (size_t i = 0; i < sizeof leaky / sizeof leaky[0]; i++) conv_nhwc_run(&leaky[i], formats[f], 0, 1, &r);
    }
    if (cc >= 80)  // with bf16 parameter gradients too: backward-filter on the bf16 x and dy where they are
        for (size_t i = 0; i < sizeof k_conv_lp_cases / sizeof k_conv_lp_cases[0]; i++)
            conv_nhwc_run(&k_conv_lp_cases[i], PREC_BF16, 1, 1, &r);
}

static void test_layer_ops_nhwc_act16(void **state) {
    (void)state;
    NEED_CUDA();
    rng r;
    rng_seed(&r, 321);
    for (int k = 0; k < 3; k++) {
        const backend *bc = &g_cpu_act[k], *bg = &g_nhwc_act[k];
        const int fmt = k_act_format[k];
        bn_nhwc_run(bc, bg, fmt, 4, 3, 25, ACT_NONE, &r);
        bn_nhwc_run(bc, bg, fmt, 16, 32, 196, ACT_RELU, &r);
        bn_nhwc_run(bc, bg, fmt, 8, 5, 49, ACT_RELU6, &r);
        bn_nhwc_run(bc, bg, fmt, 16, 40, 9, ACT_LEAKY, &r);
        if (k == 2) continue;  // grads16 changes batch norm's dw and db only
        pool_cases_run(bc, bg, fmt, &r);
        gather_nhwc_run(bc, bg, fmt, &r);
        channel_copy_nhwc_run(bc, bg, fmt, &r);
    }
}

// ---------------------------------------------------------------------------------------------------------
// The whole model: one training step at nhwc against nchw on the GPU, from the same weights and batch

static const char k_model_cfg[] =
    "[net]\nchannels=3\nheight=8\nwidth=8\nclasses=4\nbatch=6\n"
    "[conv]\nname=conv1\nfilters=8\nsize=3\npad=1\nactivation=relu\n"
    "[batchnorm]\nname=bn1\nactivation=relu\n"
    "[maxpool]\nname=pool1\nsize=2\n"
    "[conv]\nname=conv2\nfilters=6\nsize=3\npad=1\ngroups=2\nactivation=leaky\n"
    "[route]\nname=cat\nlayers=-1,-2\n"
    "[dense]\nname=fc1\nunits=10\nactivation=relu\n"
    "[dense]\nname=fc2\nunits=4\n"
    "[softmax]\n";

typedef struct step_result {
    double loss;
    float *grads, *state;
    size_t n_params, n_state;
} step_result;

static void model_step(const net_config *cfg, int nhwc, const float *x, const int32_t *labels, int n,
                       step_result *out) {
    backend be;
    OK(backend_cuda_create(&be, &(backend_options){.layout = nhwc ? LAYOUT_NHWC : LAYOUT_NCHW}));
    assert_int_equal(backend_is_nhwc(&be), nhwc);
    model m;
    OK(model_create(&m, &be, cfg, n));
    OK(model_init_params(&m, 7));
    const size_t count = (size_t)n * cfg->channels * cfg->height * cfg->width;
    float *t = malloc(count * sizeof *t);
    assert_non_null(t);
    if (nhwc) tu_to_nhwc(x, t, n, cfg->channels, cfg->height * cfg->width);
    else memcpy(t, x, count * sizeof *t);
    OK(backend_upload(&be, m.x, t, count * sizeof *t));
    OK(backend_upload(&be, m.labels, labels, (size_t)n * sizeof *labels));
    free(t);
    OK(model_forward(&m, n, 1));
    OK(model_backward(&m, n, NULL, NULL));
    OK(backend_download(&be, &out->loss, m.loss_acc, sizeof out->loss));
    out->n_params = m.n_params, out->n_state = m.n_state;
    out->grads = dev_get(&be, m.grads, m.n_params);
    out->state = dev_get(&be, m.state, m.n_state);
    model_destroy(&m);
    backend_destroy(&be);
}

static void test_model_step_nhwc(void **state) {
    (void)state;
    NEED_CUDA();
    static net_config cfg;
    OK(config_load_text(k_model_cfg, "nhwc model", &cfg));
    OK(config_validate(&cfg));
    enum { N = 6 };
    rng r;
    rng_seed(&r, 309);
    float *x = rand_floats(&r, (size_t)N * 3 * 8 * 8, 1.f);
    int32_t labels[N];
    for (int i = 0; i < N; i++) labels[i] = i % 4;
    step_result a, b;
    model_step(&cfg, 0, x, labels, N, &a);
    model_step(&cfg, 1, x, labels, N, &b);
    assert_int_equal(a.n_params, b.n_params);
    const double rel = fabs(b.loss - a.loss) / fabs(a.loss);
    print_message("one step, nhwc vs nchw: loss %.9g vs %.9g (relative %.3g), gradient error %.3g\n", b.loss, a.loss,
                  rel, norm_err(b.grads, a.grads, a.n_params));
    if (!(rel <= 1e-5)) fail_msg("loss: nhwc %.9g, nchw %.9g (relative %.3g > 1e-5)", b.loss, a.loss, rel);
    // every tensor on its own: a permuted dense weight or conv filter shows in its own slice
    model fake;  // model_param_tensor reads the layers only: rebuild them on the CPU for the names and offsets
    backend cpu;
    OK(backend_cpu_create(&cpu, 1));
    OK(model_create(&fake, &cpu, &cfg, N));
    const int tensors = model_param_tensor(&fake, -1, NULL, NULL, NULL, NULL, NULL);
    for (int i = 0; i < tensors; i++) {
        const char *layer;
        int is_bias, ndim;
        size_t off;
        int64_t shape[4];
        model_param_tensor(&fake, i, &layer, &is_bias, &off, &ndim, shape);
        size_t n = 1;
        for (int k = 0; k < ndim; k++) n *= (size_t)shape[k];
        char what[96];
        snprintf(what, sizeof what, "gradient of %s.%s", layer, is_bias ? "bias" : "weight");
        expect_close(what, b.grads + off, a.grads + off, n, TOL_CONV);
    }
    expect_close("running statistics", b.state, a.state, a.n_state, TOL_DENSE);
    model_destroy(&fake);
    backend_destroy(&cpu);
    free(a.grads), free(a.state), free(b.grads), free(b.state), free(x);
}

// What nhwc cannot express is refused when the model is built, naming net.layout and the layer; nchw builds it.
static void test_model_nhwc_refuses(void **state) {
    (void)state;
    NEED_CUDA();
    static net_config cfg;
    OK(config_load_text("[net]\nchannels=2\nheight=6\nwidth=6\nclasses=3\nbatch=4\n"
                        "[conv]\nname=c1\nfilters=3\nsize=3\npad=1\n[flatten]\nname=flat\n"
                        "[batchnorm]\nname=bnflat\n[dense]\nname=head\nunits=3\n[softmax]\n",
                        "nhwc refusal", &cfg));
    OK(config_validate(&cfg));  // the CPU computes it (NCHW): only an NHWC backend refuses
    model m;
    assert_int_equal(model_create(&m, &g_nhwc, &cfg, 4), ST_INPUT);
    assert_non_null(strstr(err_msg(), "net.layout=nhwc"));
    assert_non_null(strstr(err_msg(), "bnflat"));
    err_clear();
    model_destroy(&m);
    backend nchw;
    OK(backend_cuda_create(&nchw, NULL));
    OK(model_create(&m, &nchw, &cfg, 4));
    model_destroy(&m);
    backend_destroy(&nchw);
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
    if (!g_no_cuda && backend_cuda_create(&g_nhwc, &(backend_options){.layout = LAYOUT_NHWC}) != ST_OK) {
        fprintf(stderr, "cuda backend (layout=nhwc): %s\n", err_msg());
        return -1;
    }
    if (!g_no_cuda &&
        backend_cuda_create(&g_nhwc16, &(backend_options){.layout = LAYOUT_NHWC, .precision = PREC_BF16,
                                                          .grads16 = 1}) != ST_OK) {
        fprintf(stderr, "cuda backend (layout=nhwc, grads16): %s\n", err_msg());
        return -1;
    }
    for (int k = 0; k < 3; k++) {
        const int f = k_act_format[k], g16 = k == 2;
        if (backend_cpu_create_opts(&g_cpu_act[k], &(backend_cpu_opts){.threads = 1, .grads16 = g16, .act16 = f}) !=
                ST_OK ||
            (!g_no_cuda &&
             backend_cuda_create(&g_nhwc_act[k], &(backend_options){.layout = LAYOUT_NHWC, .precision = f,
                                                                    .grads16 = g16, .act16 = f}) != ST_OK)) {
            fprintf(stderr, "act16 backends (%s%s): %s\n", f == PREC_BF16 ? "bf16" : "fp16", g16 ? ", grads16" : "",
                    err_msg());
            return -1;
        }
    }
    if (g_no_cuda) printf("CUDA is not usable (%s): the CUDA comparisons skip (fail with DDP_REQUIRE_CUDA=1)\n", g_no_cuda);
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    for (int k = 0; k < 3; k++) backend_destroy(&g_nhwc_act[k]), backend_destroy(&g_cpu_act[k]);
    backend_destroy(&g_nhwc16);
    backend_destroy(&g_nhwc);
    backend_destroy(&g_cpu16);
    backend_destroy(&g_cpu);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_convert_cpu),
        cmocka_unit_test(test_dense_permuted_cpu),
        cmocka_unit_test(test_layout_convert),
        cmocka_unit_test(test_conv_nhwc),
        cmocka_unit_test(test_conv_nhwc_lp),
        cmocka_unit_test(test_conv_nhwc_grads16),
        cmocka_unit_test(test_dense_nhwc_grads16),
        cmocka_unit_test(test_batchnorm_nhwc),
        cmocka_unit_test(test_pool_nhwc),
        cmocka_unit_test(test_gather_nhwc),
        cmocka_unit_test(test_channel_copy_nhwc),
        cmocka_unit_test(test_conv_nhwc_act16),
        cmocka_unit_test(test_layer_ops_nhwc_act16),
        cmocka_unit_test(test_model_step_nhwc),
        cmocka_unit_test(test_model_nhwc_refuses),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
