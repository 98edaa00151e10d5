// test_backend_cpu.c — the reference backend against naive double-precision references and central finite
// differences, the optimizers against hand-computed steps, and the shape/factory checks.
//
// Finite differences run on the double reference of each op: conv, pool and dense are piecewise linear, so a
// central difference there is exact up to rounding, and since the backend's forward matches the reference to
// 1e-5 this checks the backend's backward against the derivative of its own forward. Linear cases also get a
// float finite difference straight through the backend on a few coordinates.
//
// DDP_BENCH_CPU=1 (optionally DDP_BENCH_THREADS=n) makes test_bench_reference_cnn time one training step of
// the reference CNN at batch 64 and print images/s; otherwise it returns at once.
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "common.h"
#include "dropout_hash.h"
#include "test_util.h"

// ---------------------------------------------------------------------------------------------------------
// Helpers

static backend make_cpu(int threads) {
    backend be;
    err_clear();
    assert_int_equal(backend_cpu_create(&be, threads), ST_OK);
    return be;
}

static float *fbuf(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

static double *dbuf(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    assert_non_null(p);
    return p;
}

static void fill_uniform(rng *r, float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * rng_uniform(r);
}

static void to_double(const float *x, double *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i];
}

static void to_float(const double *x, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = (float)x[i];
}

// Central differences of f with respect to every entry of param.
typedef double (*objective_fn)(void *arg);
static void fd_grad(double *param, size_t n, double eps, objective_fn f, void *arg, double *grad) {
    for (size_t i = 0; i < n; i++) {
        double keep = param[i];
        param[i] = keep + eps;
        double lp = f(arg);
        param[i] = keep - eps;
        double lm = f(arg);
        param[i] = keep;
        grad[i] = (lp - lm) / (2 * eps);
    }
}

static void assert_close(const float *got, const double *want, size_t n, double tol, const char *what) {
    float *w = fbuf(n);
    to_float(want, w, n);
    double e = tu_max_rel_err(got, w, n);
    if (e > tol) fail_msg("%s: max rel err %g > %g", what, e, tol);
    free(w);
}

static double dot_fd(const float *y, const float *r, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)y[i] * r[i];
    return s;
}

// ---------------------------------------------------------------------------------------------------------
// Convolution

typedef struct conv_case {
    int n, c, h, w, k, r, s, stride, pad, act;
    int no_bias;             // b = db = NULL
    int groups, dilation;    // 0: 1
} conv_case;

static int conv_case_groups(const conv_case *cc) { return cc->groups ? cc->groups : 1; }
static int conv_case_dilation(const conv_case *cc) { return cc->dilation ? cc->dilation : 1; }

// The activations in double (PyTorch's formulas), and their derivative at the pre-activation v (PyTorch's
// conventions at the kinks: relu6 passes the gradient for 0 < v < 6 only; hardswish's is v/3 + 1/2 on [-3, 3]).
static double act_ref(int act, double v) {
    switch (act) {
    case ACT_RELU: return v > 0 ? v : 0;
    case ACT_LEAKY: return v > 0 ? v : 0.1 * v;
    case ACT_RELU6: return v > 0 ? (v < 6 ? v : 6) : 0;
    case ACT_SIGMOID: return 1 / (1 + exp(-v));
    case ACT_SILU: return v / (1 + exp(-v));
    case ACT_HARDSWISH: return v * fmin(fmax(v + 3, 0), 6) / 6;
    case ACT_GELU: return 0.5 * v * (1 + erf(v / sqrt(2.0)));
    default: return v;
    }
}

static double act_ref_grad(int act, double v) {
    const double s = 1 / (1 + exp(-v));
    switch (act) {
    case ACT_RELU: return v > 0 ? 1 : 0;
    case ACT_LEAKY: return v > 0 ? 1 : 0.1;
    case ACT_RELU6: return v > 0 && v < 6 ? 1 : 0;
    case ACT_SIGMOID: return s * (1 - s);
    case ACT_SILU: return s * (1 + v * (1 - s));
    case ACT_HARDSWISH: return v < -3 ? 0 : v <= 3 ? v / 3 + 0.5 : 1;
    case ACT_GELU: return 0.5 * (1 + erf(v / sqrt(2.0))) + v * exp(-0.5 * v * v) / sqrt(2 * 3.14159265358979323846);
    default: return 1;
    }
}

// g · act'(pre-activation) read from the output y, for the activations the ops fuse (act_from_output).
static float act_grad_from_y(int act, float y, float g) {
    switch (act) {
    case ACT_RELU: return y > 0 ? g : 0;
    case ACT_LEAKY: return y > 0 ? g : 0.1f * g;
    case ACT_RELU6: return y > 0 && y < 6 ? g : 0;
    case ACT_SIGMOID: return g * (1 - y) * y;
    default: return g;
    }
}

typedef struct conv_ref_args {
    const conv_desc *d;
    double *x, *w, *b;
    const double *rr;  // objective weights
    double *y;
} conv_ref_args;

// PyTorch's Conv2d, written out: filter k sees the channels of its group, k / (K/groups), taps dilation apart.
static void conv_ref(const conv_desc *d, const double *x, const double *w, const double *b, double *y) {
    const int cg = d->c / d->groups, kg = d->k / d->groups, dil = d->dilation;
    for (int n = 0; n < d->n; n++)
        for (int k = 0; k < d->k; k++)
            for (int oy = 0; oy < d->oh; oy++)
                for (int ox = 0; ox < d->ow; ox++) {
                    double s = b[k];
                    for (int c = 0; c < cg; c++)
                        for (int r = 0; r < d->r; r++)
                            for (int q = 0; q < d->s; q++) {
                                int ih = oy * d->stride - d->pad + r * dil, iw = ox * d->stride - d->pad + q * dil;
                                if (ih < 0 || ih >= d->h || iw < 0 || iw >= d->w) continue;
                                s += w[((k * cg + c) * d->r + r) * d->s + q] *
                                     x[((size_t)(n * d->c + (k / kg) * cg + c) * d->h + ih) * d->w + iw];
                            }
                    y[((size_t)(n * d->k + k) * d->oh + oy) * d->ow + ox] = act_ref(d->act, s);
                }
}

static double conv_ref_objective(void *arg) {
    conv_ref_args *a = arg;
    conv_ref(a->d, a->x, a->w, a->b, a->y);
    size_t ny = (size_t)a->d->n * a->d->k * a->d->oh * a->d->ow;
    double s = 0;
    for (size_t i = 0; i < ny; i++) s += a->y[i] * a->rr[i];
    return s;
}

// Float objective straight through the backend: sum(conv(x, w, b) * r).
typedef struct conv_be_args {
    backend *be;
    const conv_desc *d;
    float *x, *w, *b, *y, *r;
    void *ws;
} conv_be_args;

static double conv_be_objective(conv_be_args *a) {
    assert_int_equal(a->be->ops->conv_forward(a->be->ctx, a->d, a->x, a->w, a->b, a->y, a->ws), ST_OK);
    return dot_fd(a->y, a->r, (size_t)a->d->n * a->d->k * a->d->oh * a->d->ow);
}

// A few coordinates of p, float central difference through the backend against the backend's gradient.
static void conv_float_fd(conv_be_args *a, float *p, size_t n, const float *grad, rng *g, const char *what) {
    const float eps = 1e-2f;
    for (int t = 0; t < 6; t++) {
        size_t i = rng_below(g, (uint32_t)n);
        float keep = p[i];
        p[i] = keep + eps;
        double lp = conv_be_objective(a);
        p[i] = keep - eps;
        double lm = conv_be_objective(a);
        p[i] = keep;
        double fd = (lp - lm) / (2 * eps);
        double err = fabs(fd - grad[i]) / fmax(1.0, fabs(fd));
        if (err > 1e-2) fail_msg("%s[%zu]: float fd %g vs backward %g", what, i, fd, grad[i]);
    }
}

static void check_conv_case(const conv_case *cc, int threads, uint64_t seed) {
    backend be = make_cpu(threads);
    const backend_ops *o = be.ops;
    conv_desc d = {.n = cc->n, .c = cc->c, .h = cc->h, .w = cc->w, .k = cc->k, .r = cc->r, .s = cc->s,
                   .stride = cc->stride, .pad = cc->pad, .groups = cc->groups, .dilation = cc->dilation,
                   .act = cc->act};
    assert_int_equal(conv_desc_init(&d, "conv_test"), ST_OK);
    size_t nx = (size_t)d.n * d.c * d.h * d.w, nw = (size_t)d.k * (d.c / d.groups) * d.r * d.s, nb = (size_t)d.k;
    size_t ny = (size_t)d.n * d.k * d.oh * d.ow;
    size_t ws_bytes = 0;
    assert_int_equal(o->conv_prepare(be.ctx, &d, &ws_bytes), ST_OK);
    void *ws = NULL;
    assert_int_equal(o->alloc(be.ctx, &ws, ws_bytes), ST_OK);

    rng g;
    rng_seed(&g, seed);
    float *x = fbuf(nx), *w = fbuf(nw), *b = fbuf(nb), *y = fbuf(ny), *r = fbuf(ny), *dy = fbuf(ny);
    float *dx = fbuf(nx), *dw = fbuf(nw), *db = fbuf(nb), *dw2 = fbuf(nw), *db2 = fbuf(nb);
    fill_uniform(&g, x, nx, -1, 1);
    fill_uniform(&g, w, nw, -1, 1);
    fill_uniform(&g, b, nb, -0.5f, 0.5f);
    fill_uniform(&g, r, ny, -1, 1);
    if (cc->no_bias) memset(b, 0, nb * sizeof(float));  // the reference's bias; the backend gets NULL
    float *bb = cc->no_bias ? NULL : b, *dbb = cc->no_bias ? NULL : db, *db2b = cc->no_bias ? NULL : db2;

    // Forward against the naive direct convolution.
    double *xd = dbuf(nx), *wd = dbuf(nw), *bd = dbuf(nb), *yd = dbuf(ny), *rd = dbuf(ny);
    to_double(x, xd, nx), to_double(w, wd, nw), to_double(b, bd, nb), to_double(r, rd, ny);
    assert_int_equal(o->conv_forward(be.ctx, &d, x, w, bb, y, ws), ST_OK);
    conv_ref(&d, xd, wd, bd, yd);
    assert_close(y, yd, ny, 1e-5, "conv forward");

    // Backward against finite differences of the reference.
    memcpy(dy, r, ny * sizeof(float));
    memset(dx, 0x7f, nx * sizeof(float));  // garbage: backward must overwrite
    memset(dw, 0x7f, nw * sizeof(float));
    assert_int_equal(o->conv_backward(be.ctx, &d, x, w, y, dy, dx, dw, dbb, ws), ST_OK);
    conv_ref_args a = {.d = &d, .x = xd, .w = wd, .b = bd, .rr = rd, .y = yd};
    double *gx = dbuf(nx), *gw = dbuf(nw), *gb = dbuf(nb);
    fd_grad(xd, nx, 1e-6, conv_ref_objective, &a, gx);
    fd_grad(wd, nw, 1e-6, conv_ref_objective, &a, gw);
    fd_grad(bd, nb, 1e-6, conv_ref_objective, &a, gb);
    assert_close(dx, gx, nx, 1e-4, "conv dx");
    assert_close(dw, gw, nw, 1e-4, "conv dw");
    if (!cc->no_bias) assert_close(db, gb, nb, 1e-4, "conv db");
    // dy now holds the pre-activation gradient: r times act' read from the output.
    for (size_t i = 0; i < ny; i++) assert_true(fabsf(dy[i] - act_grad_from_y(cc->act, y[i], r[i])) <= 1e-6f);

    // The first layer's path: no dx, same weight gradients.
    memcpy(dy, r, ny * sizeof(float));
    assert_int_equal(o->conv_backward(be.ctx, &d, x, w, y, dy, NULL, dw2, db2b, ws), ST_OK);
    assert_true(tu_max_rel_err(dw2, dw, nw) < 1e-6);
    assert_true(tu_max_rel_err(db2, db, nb) < 1e-6);

    if (cc->act == ACT_NONE) {
        conv_be_args ba = {.be = &be, .d = &d, .x = x, .w = w, .b = bb, .y = y, .r = r, .ws = ws};
        conv_float_fd(&ba, x, nx, dx, &g, "conv dx");
        conv_float_fd(&ba, w, nw, dw, &g, "conv dw");
        if (bb) conv_float_fd(&ba, b, nb, db, &g, "conv db");
    }

    free(x), free(w), free(b), free(y), free(r), free(dy), free(dx), free(dw), free(db), free(dw2), free(db2);
    free(xd), free(wd), free(bd), free(yd), free(rd), free(gx), free(gw), free(gb);
    o->free(be.ctx, ws);
    backend_destroy(&be);
}

static const conv_case conv_cases[] = {
    {.n = 2, .c = 3, .h = 7, .w = 6, .k = 4, .r = 3, .s = 3, .stride = 1, .pad = 0, .act = ACT_RELU},
    {.n = 2, .c = 2, .h = 8, .w = 7, .k = 3, .r = 3, .s = 3, .stride = 2, .pad = 1, .act = ACT_RELU},
    {.n = 3, .c = 2, .h = 5, .w = 9, .k = 1, .r = 2, .s = 3, .stride = 1, .pad = 1, .act = ACT_NONE},
    {.n = 2, .c = 4, .h = 5, .w = 5, .k = 3, .r = 1, .s = 1, .stride = 1, .pad = 0, .act = ACT_RELU},
    {.n = 1, .c = 1, .h = 6, .w = 6, .k = 2, .r = 3, .s = 3, .stride = 3, .pad = 0, .act = ACT_NONE},
    {.n = 5, .c = 2, .h = 6, .w = 5, .k = 3, .r = 3, .s = 2, .stride = 2, .pad = 0, .act = ACT_NONE},
    {.n = 3, .c = 3, .h = 4, .w = 10, .k = 2, .r = 3, .s = 3, .stride = 2, .pad = 2, .act = ACT_RELU},
    // Stride 1, no padding, rows of 11 and 8 outputs: the vector row copies of the fast im2col/col2im.
    {.n = 2, .c = 2, .h = 5, .w = 13, .k = 3, .r = 3, .s = 3, .stride = 1, .pad = 0, .act = ACT_RELU},
    {.n = 2, .c = 1, .h = 4, .w = 10, .k = 2, .r = 2, .s = 3, .stride = 1, .pad = 0, .act = ACT_NONE},
    // relu6 (some outputs past the cap: sums of 72 products of values in [-1, 1]) and sigmoid, fused like relu
    {.n = 2, .c = 8, .h = 6, .w = 6, .k = 3, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_RELU6},
    {.n = 2, .c = 3, .h = 5, .w = 6, .k = 2, .r = 3, .s = 3, .stride = 2, .pad = 1, .act = ACT_SIGMOID},
    // Leaky activation, and convolutions without a bias (b = db = NULL).
    {.n = 2, .c = 3, .h = 7, .w = 6, .k = 4, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_LEAKY},
    {.n = 3, .c = 2, .h = 6, .w = 6, .k = 3, .r = 3, .s = 3, .stride = 2, .pad = 1, .act = ACT_LEAKY, .no_bias = 1},
    {.n = 2, .c = 2, .h = 5, .w = 5, .k = 2, .r = 1, .s = 1, .stride = 1, .pad = 0, .act = ACT_NONE, .no_bias = 1},
    // Grouped (per-group sgemms), depthwise (the direct loop; with a channel multiplier of 2 too), dilated, and
    // all of them with stride and padding; a grouped 1x1 (the pointwise path per group).
    {.n = 2, .c = 4, .h = 6, .w = 7, .k = 6, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_RELU, .groups = 2},
    {.n = 3, .c = 6, .h = 5, .w = 6, .k = 6, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_RELU6, .groups = 6},
    {.n = 2, .c = 3, .h = 7, .w = 6, .k = 6, .r = 3, .s = 2, .stride = 2, .pad = 1, .act = ACT_NONE, .groups = 3},
    {.n = 2, .c = 4, .h = 11, .w = 13, .k = 4, .r = 3, .s = 3, .stride = 1, .pad = 0, .act = ACT_NONE, .groups = 4,
     .dilation = 2, .no_bias = 1},
    {.n = 2, .c = 2, .h = 8, .w = 9, .k = 3, .r = 3, .s = 3, .stride = 1, .pad = 0, .act = ACT_RELU, .dilation = 2},
    {.n = 2, .c = 3, .h = 9, .w = 10, .k = 2, .r = 3, .s = 2, .stride = 2, .pad = 2, .act = ACT_NONE, .dilation = 3},
    {.n = 3, .c = 4, .h = 9, .w = 8, .k = 6, .r = 3, .s = 3, .stride = 2, .pad = 2, .act = ACT_LEAKY, .groups = 2,
     .dilation = 2},
    {.n = 2, .c = 6, .h = 10, .w = 9, .k = 6, .r = 3, .s = 3, .stride = 2, .pad = 3, .act = ACT_NONE, .groups = 6,
     .dilation = 2},
    {.n = 2, .c = 4, .h = 5, .w = 5, .k = 6, .r = 1, .s = 1, .stride = 1, .pad = 0, .act = ACT_NONE, .groups = 2},
};

static void test_conv_matches_reference_and_finite_differences(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++) {
        check_conv_case(&conv_cases[i], 1, 100 + i);
        check_conv_case(&conv_cases[i], 2, 200 + i);
        check_conv_case(&conv_cases[i], 3, 300 + i);  // more threads than images for some cases
    }
}

// oneDNN against im2col (both in one build: backend_cpu_create_opts picks the convolution). Normalised error:
// max |a - b| over max |b|, the scale of the tensor, per output. Then a second run must repeat every bit.

static double norm_err(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= worst)) worst = d;
        if (fabs((double)b[i]) > scale) scale = fabs((double)b[i]);
    }
    return worst / scale;
}

typedef struct conv_run {
    float *y, *dz, *dx, *dw, *db;
} conv_run;

static conv_run conv_run_once(cpu_conv_impl impl, int threads, const conv_case *cc, const float *x, const float *w,
                              const float *b, const float *dy) {
    backend be;
    backend_cpu_opts opts = {.threads = threads, .conv = impl};
    err_clear();
    assert_int_equal(backend_cpu_create_opts(&be, &opts), ST_OK);
    const backend_ops *o = be.ops;
    conv_desc d = {.n = cc->n, .c = cc->c, .h = cc->h, .w = cc->w, .k = cc->k, .r = cc->r, .s = cc->s,
                   .stride = cc->stride, .pad = cc->pad, .groups = cc->groups, .dilation = cc->dilation,
                   .act = cc->act};
    assert_int_equal(conv_desc_init(&d, "conv_dnnl"), ST_OK);
    size_t ws_bytes = 0;
    assert_int_equal(o->conv_prepare(be.ctx, &d, &ws_bytes), ST_OK);
    void *ws = NULL;
    assert_int_equal(o->alloc(be.ctx, &ws, ws_bytes ? ws_bytes : 1), ST_OK);
    size_t nx = (size_t)d.n * d.c * d.h * d.w, ny = (size_t)d.n * d.k * d.oh * d.ow;
    size_t nw = (size_t)d.k * (d.c / d.groups) * d.r * d.s;
    conv_run r = {fbuf(ny), fbuf(ny), fbuf(nx), fbuf(nw), fbuf((size_t)d.k)};
    assert_int_equal(o->conv_forward(be.ctx, &d, x, w, cc->no_bias ? NULL : b, r.y, ws), ST_OK);
    memcpy(r.dz, dy, ny * sizeof(float));
    assert_int_equal(o->conv_backward(be.ctx, &d, x, w, r.y, r.dz, r.dx, r.dw, cc->no_bias ? NULL : r.db, ws), ST_OK);
    o->conv_release(be.ctx, &d);
    o->free(be.ctx, ws);
    backend_destroy(&be);
    return r;
}

static void conv_run_free(conv_run *r) { free(r->y), free(r->dz), free(r->dx), free(r->dw), free(r->db); }

static void check_conv_dnnl_case(const conv_case *cc, int threads, uint64_t seed) {
    rng g;
    rng_seed(&g, seed);
    const int dil = conv_case_dilation(cc);
    int oh = (cc->h + 2 * cc->pad - dil * (cc->r - 1) - 1) / cc->stride + 1;
    int ow = (cc->w + 2 * cc->pad - dil * (cc->s - 1) - 1) / cc->stride + 1;
    size_t nx = (size_t)cc->n * cc->c * cc->h * cc->w, ny = (size_t)cc->n * cc->k * oh * ow;
    size_t nw = (size_t)cc->k * (cc->c / conv_case_groups(cc)) * cc->r * cc->s;
    float *x = fbuf(nx), *w = fbuf(nw), *b = fbuf((size_t)cc->k), *dy = fbuf(ny);
    fill_uniform(&g, x, nx, -1, 1);
    fill_uniform(&g, w, nw, -0.5f, 0.5f);
    fill_uniform(&g, b, (size_t)cc->k, -0.5f, 0.5f);
    fill_uniform(&g, dy, ny, -1, 1);
    conv_run ref = conv_run_once(CPU_CONV_IM2COL, threads, cc, x, w, b, dy);
    conv_run got = conv_run_once(CPU_CONV_DNNL, threads, cc, x, w, b, dy);
    conv_run again = conv_run_once(CPU_CONV_DNNL, threads, cc, x, w, b, dy);
    double e[5] = {norm_err(got.y, ref.y, ny), norm_err(got.dz, ref.dz, ny), norm_err(got.dx, ref.dx, nx),
                   norm_err(got.dw, ref.dw, nw), cc->no_bias ? 0 : norm_err(got.db, ref.db, (size_t)cc->k)};
    const char *what[5] = {"y", "dz", "dx", "dw", "db"};
    for (int i = 0; i < 5; i++)
        if (!(e[i] <= 1e-5)) {
            fprintf(stderr, "oneDNN conv n%d c%d %dx%d k%d %dx%d stride %d pad %d groups %d dilation %d act %d "
                    "threads %d: %s error %.3g\n", cc->n, cc->c, cc->h, cc->w, cc->k, cc->r, cc->s, cc->stride,
                    cc->pad, conv_case_groups(cc), dil, cc->act, threads, what[i], e[i]);
            fail();
        }
    assert_memory_equal(got.y, again.y, ny * sizeof(float));
    assert_memory_equal(got.dx, again.dx, nx * sizeof(float));
    assert_memory_equal(got.dw, again.dw, nw * sizeof(float));
    assert_memory_equal(got.db, again.db, (size_t)cc->k * sizeof(float));
    conv_run_free(&ref), conv_run_free(&got), conv_run_free(&again);
    free(x), free(w), free(b), free(dy);
}

// ResNet shapes (configs/fashion_resnet.cfg's, its earlier 16/32/64 layout's) at a batch split unevenly over
// threads, and LeNet's.
static const conv_case conv_dnnl_cases[] = {
    {.n = 9, .c = 1, .h = 28, .w = 28, .k = 32, .r = 3, .s = 3, .stride = 1, .pad = 1, .no_bias = 1},
    {.n = 9, .c = 32, .h = 28, .w = 28, .k = 32, .r = 3, .s = 3, .stride = 2, .pad = 1, .no_bias = 1},
    {.n = 9, .c = 64, .h = 7, .w = 7, .k = 128, .r = 3, .s = 3, .stride = 2, .pad = 1, .no_bias = 1},
    {.n = 9, .c = 128, .h = 4, .w = 4, .k = 128, .r = 3, .s = 3, .stride = 1, .pad = 1, .no_bias = 1},
    {.n = 9, .c = 64, .h = 7, .w = 7, .k = 128, .r = 1, .s = 1, .stride = 2, .pad = 0, .no_bias = 1},
    {.n = 9, .c = 1, .h = 28, .w = 28, .k = 16, .r = 3, .s = 3, .stride = 1, .pad = 1, .no_bias = 1},
    {.n = 9, .c = 16, .h = 28, .w = 28, .k = 16, .r = 3, .s = 3, .stride = 1, .pad = 1, .no_bias = 1},
    {.n = 9, .c = 16, .h = 28, .w = 28, .k = 32, .r = 3, .s = 3, .stride = 2, .pad = 1, .no_bias = 1},
    {.n = 9, .c = 32, .h = 14, .w = 14, .k = 32, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_RELU},
    {.n = 9, .c = 16, .h = 28, .w = 28, .k = 32, .r = 1, .s = 1, .stride = 2, .pad = 0, .no_bias = 1},
    {.n = 9, .c = 32, .h = 14, .w = 14, .k = 64, .r = 3, .s = 3, .stride = 2, .pad = 1, .act = ACT_LEAKY},
    {.n = 9, .c = 64, .h = 7, .w = 7, .k = 64, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_LEAKY, .no_bias = 1},
    {.n = 8, .c = 1, .h = 28, .w = 28, .k = 32, .r = 3, .s = 3, .stride = 1, .pad = 0, .act = ACT_RELU},
    {.n = 8, .c = 32, .h = 13, .w = 13, .k = 64, .r = 3, .s = 3, .stride = 1, .pad = 0, .act = ACT_RELU},
    // oneDNN's clip and logistic post-ops
    {.n = 9, .c = 32, .h = 14, .w = 14, .k = 32, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_RELU6},
    {.n = 9, .c = 16, .h = 14, .w = 14, .k = 32, .r = 3, .s = 3, .stride = 2, .pad = 1, .act = ACT_SIGMOID, .no_bias = 1},
    // MobileNetV2's depthwise 3x3s (stride 1 and 2), a grouped and a dilated 3x3
    {.n = 9, .c = 32, .h = 14, .w = 14, .k = 32, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_RELU6, .groups = 32,
     .no_bias = 1},
    {.n = 9, .c = 48, .h = 13, .w = 13, .k = 48, .r = 3, .s = 3, .stride = 2, .pad = 1, .groups = 48, .no_bias = 1},
    {.n = 9, .c = 32, .h = 14, .w = 14, .k = 64, .r = 3, .s = 3, .stride = 1, .pad = 1, .act = ACT_RELU, .groups = 4},
    {.n = 9, .c = 16, .h = 15, .w = 15, .k = 32, .r = 3, .s = 3, .stride = 1, .pad = 2, .dilation = 2},
};

static void test_conv_dnnl_matches_im2col(void **state) {
    (void)state;
    if (!backend_cpu_dnnl_available()) {
        backend be;
        backend_cpu_opts opts = {.threads = 1, .conv = CPU_CONV_DNNL};
        assert_int_equal(backend_cpu_create_opts(&be, &opts), ST_RUNTIME);
        skip();
    }
    for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++)
        for (int t = 1; t <= 3; t++) check_conv_dnnl_case(&conv_cases[i], t, 400 + 10 * i + t);
    for (size_t i = 0; i < sizeof conv_dnnl_cases / sizeof conv_dnnl_cases[0]; i++)
        for (int t = 1; t <= 2; t++) check_conv_dnnl_case(&conv_dnnl_cases[i], t, 600 + 10 * i + t);
}

// ---------------------------------------------------------------------------------------------------------
// Max pooling

typedef struct pool_ref_args {
    const pool_desc *d;
    double *x;
    const double *rr;
} pool_ref_args;

static double pool_ref_objective(void *arg) {
    pool_ref_args *a = arg;
    const pool_desc *d = a->d;
    double s = 0;
    for (int p = 0; p < d->n * d->c; p++)
        for (int oy = 0; oy < d->oh; oy++)
            for (int ox = 0; ox < d->ow; ox++) {
                double m = -INFINITY;  // the padding: -inf outside the input
                for (int r = 0; r < d->size; r++)
                    for (int q = 0; q < d->size; q++) {
                        const int iy = oy * d->stride - d->pad + r, ix = ox * d->stride - d->pad + q;
                        if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w) continue;
                        double v = a->x[((size_t)p * d->h + iy) * d->w + ix];
                        if (v > m) m = v;
                    }
                s += m * a->rr[((size_t)p * d->oh + oy) * d->ow + ox];
            }
    return s;
}

static void check_pool_case(int n, int c, int h, int w, int size, int stride, int pad, uint64_t seed) {
    backend be = make_cpu(2);
    const backend_ops *o = be.ops;
    pool_desc d = {.n = n, .c = c, .h = h, .w = w, .size = size, .stride = stride, .pad = pad};
    assert_int_equal(pool_desc_init(&d, "pool_test"), ST_OK);
    size_t nx = (size_t)n * c * h * w, ny = (size_t)n * c * d.oh * d.ow;
    rng g;
    rng_seed(&g, seed);
    float *x = fbuf(nx), *y = fbuf(ny), *r = fbuf(ny), *dx = fbuf(nx);
    int32_t *am = calloc(ny, sizeof(int32_t));
    assert_non_null(am);
    fill_uniform(&g, x, nx, -1, 1);
    fill_uniform(&g, r, ny, -1, 1);
    assert_int_equal(o->pool_forward(be.ctx, &d, x, y, am), ST_OK);
    for (int p = 0; p < n * c; p++)
        for (int oy = 0; oy < d.oh; oy++)
            for (int ox = 0; ox < d.ow; ox++) {
                size_t oi = ((size_t)p * d.oh + oy) * d.ow + ox;
                int ih = am[oi] / w, iw = am[oi] % w;
                assert_true(ih >= oy * stride - pad && ih < oy * stride - pad + size);
                assert_true(iw >= ox * stride - pad && iw < ox * stride - pad + size);
                float m = -INFINITY;
                for (int q = 0; q < size * size; q++) {
                    const int iy = oy * stride - pad + q / size, ix = ox * stride - pad + q % size;
                    if (iy >= 0 && iy < h && ix >= 0 && ix < w) m = fmaxf(m, x[((size_t)p * h + iy) * w + ix]);
                }
                assert_true(y[oi] == m);
                assert_true(x[(size_t)p * h * w + am[oi]] == m);
            }
    memset(dx, 0x7f, nx * sizeof(float));
    assert_int_equal(o->pool_backward(be.ctx, &d, r, am, dx), ST_OK);
    double *xd = dbuf(nx), *rd = dbuf(ny), *gx = dbuf(nx);
    to_double(x, xd, nx), to_double(r, rd, ny);
    pool_ref_args a = {.d = &d, .x = xd, .rr = rd};
    fd_grad(xd, nx, 1e-7, pool_ref_objective, &a, gx);
    assert_close(dx, gx, nx, 1e-5, "pool dx");
    free(x), free(y), free(r), free(dx), free(am), free(xd), free(rd), free(gx);
    backend_destroy(&be);
}

static void test_pool_matches_reference_and_finite_differences(void **state) {
    (void)state;
    check_pool_case(2, 3, 6, 6, 2, 2, 0, 1);  // the reference CNN's pool
    check_pool_case(2, 2, 5, 5, 2, 2, 0, 2);  // odd input: last row/column dropped
    check_pool_case(1, 2, 7, 5, 3, 2, 0, 3);  // overlapping windows
    check_pool_case(2, 1, 6, 7, 2, 1, 0, 4);  // stride 1, heavy overlap
    check_pool_case(1, 2, 8, 8, 2, 3, 0, 5);  // gaps between windows
    // Padding (-inf): ResNet's stem pool 3x3 stride 2 pad 1, 2x2 pad 1, stride 1 "same", the most padding allowed
    check_pool_case(2, 2, 7, 6, 3, 2, 1, 6);
    check_pool_case(1, 3, 5, 5, 2, 2, 1, 7);
    check_pool_case(2, 1, 6, 5, 3, 1, 1, 8);
    check_pool_case(1, 2, 4, 9, 5, 2, 2, 9);
    check_pool_case(1, 1, 1, 1, 3, 1, 1, 10);  // one input value: every window holds it
}

static void test_pool_ties_pick_first(void **state) {
    (void)state;
    backend be = make_cpu(1);
    pool_desc d = {.n = 1, .c = 1, .h = 2, .w = 4, .size = 2, .stride = 2};
    assert_int_equal(pool_desc_init(&d, "p"), ST_OK);
    float x[8] = {1, 1, 0, 0, 1, 1, 0, 0}, y[2];
    int32_t am[2];
    assert_int_equal(be.ops->pool_forward(be.ctx, &d, x, y, am), ST_OK);
    assert_int_equal(am[0], 0);
    assert_int_equal(am[1], 2);
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// Dense

typedef struct dense_ref_args {
    int n, in, out, act;
    double *x, *w, *b;
    const double *rr;
} dense_ref_args;

static double dense_ref_objective(void *arg) {
    dense_ref_args *a = arg;
    double s = 0;
    for (int i = 0; i < a->n; i++)
        for (int j = 0; j < a->out; j++) {
            double v = a->b[j];
            for (int k = 0; k < a->in; k++) v += a->x[(size_t)i * a->in + k] * a->w[(size_t)j * a->in + k];
            s += act_ref(a->act, v) * a->rr[(size_t)i * a->out + j];
        }
    return s;
}

static void check_dense_case(int n, int in, int out, int act, int threads, uint64_t seed, int no_bias) {
    backend be = make_cpu(threads);
    const backend_ops *o = be.ops;
    size_t nx = (size_t)n * in, nw = (size_t)out * in, ny = (size_t)n * out;
    rng g;
    rng_seed(&g, seed);
    float *x = fbuf(nx), *w = fbuf(nw), *b = fbuf(out), *y = fbuf(ny), *r = fbuf(ny), *dy = fbuf(ny);
    float *dx = fbuf(nx), *dw = fbuf(nw), *db = fbuf(out), *dw2 = fbuf(nw), *db2 = fbuf(out);
    fill_uniform(&g, x, nx, -1, 1);
    fill_uniform(&g, w, nw, -1, 1);
    fill_uniform(&g, b, out, -0.5f, 0.5f);
    fill_uniform(&g, r, ny, -1, 1);
    if (no_bias) memset(b, 0, out * sizeof(float));  // the reference's bias; the backend gets NULL
    float *bb = no_bias ? NULL : b, *dbb = no_bias ? NULL : db, *db2b = no_bias ? NULL : db2;
    assert_int_equal(o->dense_forward(be.ctx, n, in, out, act, x, w, bb, y), ST_OK);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < out; j++) {
            double v = b[j];
            for (int k = 0; k < in; k++) v += (double)x[(size_t)i * in + k] * w[(size_t)j * in + k];
            v = act_ref(act, v);
            assert_true(fabs(y[(size_t)i * out + j] - v) <= 1e-5 * fmax(1.0, fabs(v)));
        }
    memcpy(dy, r, ny * sizeof(float));
    memset(dx, 0x7f, nx * sizeof(float));
    assert_int_equal(o->dense_backward(be.ctx, n, in, out, act, x, w, y, dy, dx, dw, dbb), ST_OK);
    double *xd = dbuf(nx), *wd = dbuf(nw), *bd = dbuf(out), *rd = dbuf(ny);
    double *gx = dbuf(nx), *gw = dbuf(nw), *gb = dbuf(out);
    to_double(x, xd, nx), to_double(w, wd, nw), to_double(b, bd, out), to_double(r, rd, ny);
    dense_ref_args a = {.n = n, .in = in, .out = out, .act = act, .x = xd, .w = wd, .b = bd, .rr = rd};
    fd_grad(xd, nx, 1e-6, dense_ref_objective, &a, gx);
    fd_grad(wd, nw, 1e-6, dense_ref_objective, &a, gw);
    fd_grad(bd, out, 1e-6, dense_ref_objective, &a, gb);
    assert_close(dx, gx, nx, 1e-4, "dense dx");
    assert_close(dw, gw, nw, 1e-4, "dense dw");
    if (!no_bias) assert_close(db, gb, out, 1e-4, "dense db");

    memcpy(dy, r, ny * sizeof(float));
    assert_int_equal(o->dense_backward(be.ctx, n, in, out, act, x, w, y, dy, NULL, dw2, db2b), ST_OK);
    assert_true(tu_max_rel_err(dw2, dw, nw) < 1e-6);
    assert_true(tu_max_rel_err(db2, db, out) < 1e-6);

    if (act == ACT_NONE) {  // float central difference through the backend on a few weights
        for (int t = 0; t < 6; t++) {
            size_t i = rng_below(&g, (uint32_t)nw);
            float keep = w[i];
            w[i] = keep + 1e-2f;
            assert_int_equal(o->dense_forward(be.ctx, n, in, out, act, x, w, bb, y), ST_OK);
            double lp = dot_fd(y, r, ny);
            w[i] = keep - 1e-2f;
            assert_int_equal(o->dense_forward(be.ctx, n, in, out, act, x, w, bb, y), ST_OK);
            double lm = dot_fd(y, r, ny);
            w[i] = keep;
            double fd = (lp - lm) / 2e-2;
            assert_true(fabs(fd - dw[i]) <= 1e-2 * fmax(1.0, fabs(fd)));
        }
    }
    free(x), free(w), free(b), free(y), free(r), free(dy), free(dx), free(dw), free(db), free(dw2), free(db2);
    free(xd), free(wd), free(bd), free(rd), free(gx), free(gw), free(gb);
    backend_destroy(&be);
}

static void test_dense_matches_reference_and_finite_differences(void **state) {
    (void)state;
    check_dense_case(3, 7, 5, ACT_RELU, 1, 11, 0);
    check_dense_case(4, 37, 6, ACT_NONE, 2, 12, 0);  // columns split unevenly over threads
    check_dense_case(1, 5, 1, ACT_RELU, 2, 13, 0);
    check_dense_case(9, 40, 10, ACT_RELU, 3, 14, 0);
    check_dense_case(5, 9, 4, ACT_LEAKY, 2, 15, 0);
    check_dense_case(4, 6, 3, ACT_LEAKY, 1, 16, 1);  // no bias: b = db = NULL
    check_dense_case(3, 5, 2, ACT_NONE, 2, 17, 1);
    check_dense_case(6, 256, 9, ACT_RELU6, 2, 18, 0);  // pre-activations well past 6 and below 0
    check_dense_case(5, 30, 7, ACT_SIGMOID, 3, 19, 1);
}

// ---------------------------------------------------------------------------------------------------------
// Batch normalisation: the four ops against a double reference of training-mode BN (batch statistics), its
// central differences, the running statistics, evaluation, and the rank-average combination of statistics.

typedef struct bn_ref_args {
    int n, c, hw, act;
    double eps;
    double *x, *w, *b;
    const double *rr;
} bn_ref_args;

static double bn_ref_act(int act, double v) { return act_ref(act, v); }

// y (optional) and sum y·rr of training-mode BN; mean/var (optional) per channel.
static double bn_ref(const bn_ref_args *a, double *y, double *mean_out, double *var_out) {
    const size_t plane = (size_t)a->hw, m = (size_t)a->n * a->hw;
    double obj = 0;
    for (int ch = 0; ch < a->c; ch++) {
        double s = 0, q = 0;
        for (int i = 0; i < a->n; i++)
            for (size_t k = 0; k < plane; k++) s += a->x[((size_t)i * a->c + ch) * plane + k];
        const double mean = s / m;
        for (int i = 0; i < a->n; i++)
            for (size_t k = 0; k < plane; k++) {
                const double t = a->x[((size_t)i * a->c + ch) * plane + k] - mean;
                q += t * t;
            }
        const double var = q / m, inv = 1 / sqrt(var + a->eps);
        if (mean_out) mean_out[ch] = mean, var_out[ch] = var;
        for (int i = 0; i < a->n; i++)
            for (size_t k = 0; k < plane; k++) {
                const size_t o = ((size_t)i * a->c + ch) * plane + k;
                const double v = bn_ref_act(a->act, a->w[ch] * (a->x[o] - mean) * inv + a->b[ch]);
                if (y) y[o] = v;
                obj += v * a->rr[o];
            }
    }
    return obj;
}

static double bn_ref_objective(void *arg) { return bn_ref(arg, NULL, NULL, NULL); }

static void check_bn_case(int n, int c, int hw, int act, int threads, uint64_t seed) {
    backend be = make_cpu(threads);
    const backend_ops *o = be.ops;
    const size_t nx = (size_t)n * c * hw;
    rng g;
    rng_seed(&g, seed);
    float *x = fbuf(nx), *w = fbuf(c), *b = fbuf(c), *y = fbuf(nx), *r = fbuf(nx), *dy = fbuf(nx), *dx = fbuf(nx);
    float *stats = fbuf(3 * c), *save = fbuf(2 * c), *gst = fbuf(2 * c), *dw = fbuf(c), *db = fbuf(c);
    float *running = fbuf(2 * c + 1);
    fill_uniform(&g, x, nx, -1, 3);  // mean far from 0: the variance must not come from E[x²] - E[x]²
    fill_uniform(&g, w, c, 0.5f, 1.5f);
    fill_uniform(&g, b, c, -0.5f, 0.5f);
    fill_uniform(&g, r, nx, -1, 1);
    for (int k = 0; k < c; k++) running[k] = 0.25f, running[c + k] = 2.0f;
    const bn_desc d = {.n = n, .c = c, .hw = hw, .act = act, .eps = 1e-5f, .momentum = 0.1f,
                       .count = (int64_t)n * hw};
    assert_int_equal(o->bn_stats(be.ctx, &d, x, stats), ST_OK);
    assert_int_equal(o->bn_apply(be.ctx, &d, x, stats, w, b, running, save, y), ST_OK);

    double *xd = dbuf(nx), *wd = dbuf(c), *bd = dbuf(c), *rd = dbuf(nx), *yd = dbuf(nx);
    double *mean = dbuf(c), *var = dbuf(c), *gx = dbuf(nx), *gw = dbuf(c), *gb = dbuf(c);
    to_double(x, xd, nx), to_double(w, wd, c), to_double(b, bd, c), to_double(r, rd, nx);
    bn_ref_args a = {.n = n, .c = c, .hw = hw, .act = act, .eps = 1e-5, .x = xd, .w = wd, .b = bd, .rr = rd};
    bn_ref(&a, yd, mean, var);
    assert_close(y, yd, nx, 1e-5, "bn y");
    const double m = (double)n * hw;
    for (int k = 0; k < c; k++) {
        assert_true(fabs(stats[k] - mean[k]) <= 1e-6 * fmax(1, fabs(mean[k])));
        assert_true(fabs(stats[c + k] - var[k]) <= 1e-6 * fmax(1, var[k]));
        assert_true(fabs(running[k] - (0.9 * 0.25 + 0.1 * mean[k])) <= 1e-6);
        assert_true(fabs(running[c + k] - (0.9 * 2.0 + 0.1 * var[k] * m / (m - 1))) <= 1e-5);
        assert_true(fabs(save[c + k] - 1 / sqrt(var[k] + 1e-5)) <= 1e-5 / sqrt(var[k] + 1e-5));
    }
    assert_true(running[2 * c] == 1.0f);  // num_batches_tracked

    memcpy(dy, r, nx * sizeof(float));
    assert_int_equal(o->bn_grad_stats(be.ctx, &d, x, y, save, dy, dw, db, gst), ST_OK);
    assert_int_equal(o->bn_grad_input(be.ctx, &d, x, save, w, gst, dy, dx), ST_OK);
    for (int k = 0; k < c; k++) {
        assert_true(fabs(gst[k] - db[k] / m) <= 1e-6 * fmax(1, fabs(gst[k])));
        assert_true(fabs(gst[c + k] - dw[k] / m) <= 1e-6 * fmax(1, fabs(gst[c + k])));
    }
    fd_grad(xd, nx, 1e-6, bn_ref_objective, &a, gx);
    fd_grad(wd, c, 1e-6, bn_ref_objective, &a, gw);
    fd_grad(bd, c, 1e-6, bn_ref_objective, &a, gb);
    assert_close(dx, gx, nx, 2e-4, "bn dx");
    assert_close(dw, gw, c, 1e-4, "bn dw");
    assert_close(db, gb, c, 1e-4, "bn db");

    // Evaluation: the running statistics, unchanged.
    float *rcopy = fbuf(2 * c + 1);
    memcpy(rcopy, running, (2 * c + 1) * sizeof(float));
    assert_int_equal(o->bn_apply(be.ctx, &d, x, NULL, w, b, running, save, y), ST_OK);
    assert_memory_equal(rcopy, running, (2 * c + 1) * sizeof(float));
    for (int i = 0; i < n; i++)
        for (int k = 0; k < c; k++)
            for (int p = 0; p < hw; p++) {
                const size_t at = ((size_t)i * c + k) * hw + p;
                const double v = bn_ref_act(act, w[k] * (x[at] - running[k]) / sqrt(running[c + k] + 1e-5) + b[k]);
                assert_true(fabs(y[at] - v) <= 1e-5 * fmax(1, fabs(v)));
            }

    free(x), free(w), free(b), free(y), free(r), free(dy), free(dx), free(stats), free(save), free(gst), free(dw);
    free(db), free(running), free(rcopy), free(xd), free(wd), free(bd), free(rd), free(yd), free(mean), free(var);
    free(gx), free(gw), free(gb);
    backend_destroy(&be);
}

// Sync BN at the op level: the statistics of two equal halves, averaged, give the whole batch's normalisation,
// and the averaged gradient means its dx (what two ranks compute for their halves).
static void test_bn_halves_average_to_the_whole(void **state) {
    (void)state;
    backend be = make_cpu(2);
    const backend_ops *o = be.ops;
    const int n = 6, c = 3, hw = 5, half = n / 2;
    const size_t nx = (size_t)n * c * hw, nh = nx / 2;
    rng g;
    rng_seed(&g, 77);
    float *x = fbuf(nx), *w = fbuf(c), *b = fbuf(c), *r = fbuf(nx), *y = fbuf(nx), *yh = fbuf(nx), *dy = fbuf(nx);
    float *dyh = fbuf(nx), *dx = fbuf(nx), *dxh = fbuf(nx), *st = fbuf(3 * c), *s0 = fbuf(3 * c), *s1 = fbuf(3 * c);
    float *save = fbuf(2 * c), *gst = fbuf(2 * c), *g0 = fbuf(2 * c), *g1 = fbuf(2 * c), *dw = fbuf(c);
    float *db = fbuf(c), *dwh = fbuf(2 * c), *dbh = fbuf(2 * c), *run = fbuf(2 * c + 1), *runh = fbuf(2 * c + 1);
    float *runh2 = fbuf(2 * c + 1);
    fill_uniform(&g, x, nh, -1, 1);
    fill_uniform(&g, x + nh, nh, 2, 5);  // halves with different means: the between-rank term matters
    fill_uniform(&g, w, c, 0.5f, 1.5f);
    fill_uniform(&g, b, c, -0.5f, 0.5f);
    fill_uniform(&g, r, nx, -1, 1);
    bn_desc d = {.n = n, .c = c, .hw = hw, .act = ACT_RELU, .eps = 1e-5f, .momentum = 0.1f, .count = (int64_t)n * hw};
    assert_int_equal(o->bn_stats(be.ctx, &d, x, st), ST_OK);
    assert_int_equal(o->bn_apply(be.ctx, &d, x, st, w, b, run, save, y), ST_OK);
    memcpy(dy, r, nx * sizeof(float));
    assert_int_equal(o->bn_grad_stats(be.ctx, &d, x, y, save, dy, dw, db, gst), ST_OK);
    assert_int_equal(o->bn_grad_input(be.ctx, &d, x, save, w, gst, dy, dx), ST_OK);

    bn_desc dh = d;
    dh.n = half;  // count stays the whole batch's: the running variance is unbiased over both halves
    assert_int_equal(o->bn_stats(be.ctx, &dh, x, s0), ST_OK);
    assert_int_equal(o->bn_stats(be.ctx, &dh, x + nh, s1), ST_OK);
    for (int k = 0; k < 3 * c; k++) s0[k] = 0.5f * (s0[k] + s1[k]);
    assert_int_equal(o->bn_apply(be.ctx, &dh, x, s0, w, b, runh, save, yh), ST_OK);
    assert_true(tu_max_rel_err(runh, run, 2 * c + 1) < 1e-6);  // each rank's running statistics: the whole's
    assert_int_equal(o->bn_apply(be.ctx, &dh, x + nh, s0, w, b, runh2, save, yh + nh), ST_OK);
    assert_true(tu_max_rel_err(yh, y, nx) < 1e-5);
    memcpy(dyh, r, nx * sizeof(float));
    assert_int_equal(o->bn_grad_stats(be.ctx, &dh, x, yh, save, dyh, dwh, dbh, g0), ST_OK);
    assert_int_equal(o->bn_grad_stats(be.ctx, &dh, x + nh, yh + nh, save, dyh + nh, dwh + c, dbh + c, g1), ST_OK);
    for (int k = 0; k < 2 * c; k++) g0[k] = 0.5f * (g0[k] + g1[k]);
    assert_int_equal(o->bn_grad_input(be.ctx, &dh, x, save, w, g0, dyh, dxh), ST_OK);
    assert_int_equal(o->bn_grad_input(be.ctx, &dh, x + nh, save, w, g0, dyh + nh, dxh + nh), ST_OK);
    assert_true(tu_max_rel_err(dxh, dx, nx) < 1e-5);
    for (int k = 0; k < c; k++) {  // parameter gradients: per-rank sums, whose sum is the whole batch's
        assert_true(fabs(dwh[k] + dwh[c + k] - dw[k]) <= 1e-5 * fmax(1, fabs(dw[k])));
        assert_true(fabs(dbh[k] + dbh[c + k] - db[k]) <= 1e-5 * fmax(1, fabs(db[k])));
    }
    free(x), free(w), free(b), free(r), free(y), free(yh), free(dy), free(dyh), free(dx), free(dxh), free(st);
    free(s0), free(s1), free(save), free(gst), free(g0), free(g1), free(dw), free(db), free(dwh), free(dbh);
    free(run), free(runh), free(runh2);
    backend_destroy(&be);
}

static void test_bn_matches_reference_and_finite_differences(void **state) {
    (void)state;
    check_bn_case(4, 3, 5, ACT_NONE, 1, 21);
    check_bn_case(5, 6, 7, ACT_RELU, 2, 22);   // channels split over threads
    check_bn_case(8, 5, 1, ACT_LEAKY, 3, 23);  // per feature (after a dense)
    check_bn_case(2, 1, 9, ACT_NONE, 2, 24);
    check_bn_case(4, 3, 11, ACT_RELU6, 2, 25);  // 11: the vector rows and their scalar tails
    check_bn_case(3, 4, 13, ACT_SIGMOID, 1, 26);
}

static void test_bn_bad_input(void **state) {
    (void)state;
    backend be = make_cpu(1);
    float buf[64] = {0}, run[8] = {0};
    bn_desc d = {.n = 1, .c = 2, .hw = 1, .act = ACT_NONE, .eps = 1e-5f, .momentum = 0.1f, .count = 1};
    assert_int_equal(be.ops->bn_stats(be.ctx, &d, buf, buf + 8), ST_OK);
    assert_int_equal(be.ops->bn_apply(be.ctx, &d, buf, buf + 8, buf, buf, run, buf + 16, buf + 24), ST_INPUT);
    d.count = 2, d.eps = 0;
    assert_int_equal(be.ops->bn_stats(be.ctx, &d, buf, buf + 8), ST_INPUT);
    d.eps = 1e-5f, d.act = 99;
    assert_int_equal(be.ops->bn_stats(be.ctx, &d, buf, buf + 8), ST_INPUT);
    d.act = ACT_SILU;  // needs the pre-activation: the layer runs it on its own (act_forward)
    assert_int_equal(be.ops->bn_stats(be.ctx, &d, buf, buf + 8), ST_INPUT);
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// Softmax cross-entropy

typedef struct xent_args {
    int n, classes;
    double *z;
    const int32_t *labels;
    double smoothing;  // target (1 - s) onehot + s / classes
} xent_args;

static double xent_mean(void *arg) {
    xent_args *a = arg;
    double total = 0;
    for (int i = 0; i < a->n; i++) {
        const double *z = a->z + (size_t)i * a->classes;
        double s = 0;
        double zsum = 0;
        for (int j = 0; j < a->classes; j++) s += exp(z[j]), zsum += z[j];
        total += log(s) - ((1 - a->smoothing) * z[a->labels[i]] + a->smoothing * zsum / a->classes);
    }
    return total / a->n;
}

static void test_softmax_xent(void **state) {
    (void)state;
    backend be = make_cpu(2);
    const backend_ops *o = be.ops;
    enum { N = 5, C = 6 };
    rng g;
    rng_seed(&g, 77);
    float z[N * C], dz[N * C];
    fill_uniform(&g, z, N * C, -3, 3);
    z[3 * C + 5] = 80.0f;  // large logit: a naive exp would overflow float
    // Sample 4: a tie between classes 1 and 4 goes to 1 (the first), which is its label.
    for (int j = 0; j < C; j++) z[4 * C + j] = j == 1 || j == 4 ? 2.0f : 0.0f;
    int32_t labels[N] = {0, 5, 2, 5, 1};
    double loss = 1.5;
    int32_t correct = 3;
    assert_int_equal(o->softmax_xent(be.ctx, N, C, z, labels, 0.0f, 1.0f, dz, &loss, &correct), ST_OK);

    double zd[N * C], gz[N * C];
    to_double(z, zd, N * C);
    xent_args a = {.n = N, .classes = C, .z = zd, .labels = labels};
    double want_loss = xent_mean(&a) * N;
    assert_true(fabs((loss - 1.5) - want_loss) < 1e-5 * want_loss);
    int want_correct = 0;
    for (int i = 0; i < N; i++) {
        int best = 0;
        for (int j = 1; j < C; j++)
            if (z[i * C + j] > z[i * C + best]) best = j;
        want_correct += best == labels[i];
    }
    assert_int_equal(correct - 3, want_correct);
    assert_true(want_correct >= 2);  // samples 3 and 4 by construction
    fd_grad(zd, N * C, 1e-6, xent_mean, &a, gz);
    assert_close(dz, gz, N * C, 1e-5, "softmax dlogits");

    // Without dlogits only the accumulators move.
    double loss2 = 0;
    int32_t correct2 = 0;
    assert_int_equal(o->softmax_xent(be.ctx, N, C, z, labels, 0.0f, 1.0f, NULL, &loss2, &correct2), ST_OK);
    assert_true(fabs(loss2 - (loss - 1.5)) < 1e-9);
    assert_int_equal(correct2, correct - 3);

    // Label smoothing 0.1: loss and gradient against the smoothed target, by finite differences.
    double loss_s = 0;
    int32_t correct_s = 0;
    assert_int_equal(o->softmax_xent(be.ctx, N, C, z, labels, 0.1f, 1.0f, dz, &loss_s, &correct_s), ST_OK);
    xent_args as = {.n = N, .classes = C, .z = zd, .labels = labels, .smoothing = 0.1};
    const double want_s = xent_mean(&as) * N;
    if (fabs(loss_s - want_s) > 1e-5 * want_s) fail_msg("smoothed loss %.9g, reference %.9g", loss_s, want_s);
    assert_true(fabs(loss_s - want_loss) > 1e-3);  // smoothing changes the loss
    assert_int_equal(correct_s, want_correct);
    fd_grad(zd, N * C, 1e-6, xent_mean, &as, gz);
    assert_close(dz, gz, N * C, 1e-5, "smoothed softmax dlogits");

    int32_t bad_hi[N] = {0, 1, 6, 0, 0}, bad_lo[N] = {0, -1, 0, 0, 0};
    err_clear();
    assert_int_equal(o->softmax_xent(be.ctx, N, C, z, bad_hi, 0.0f, 1.0f, dz, &loss, &correct), ST_INPUT);
    assert_non_null(strstr(err_msg(), "softmax_xent"));
    assert_non_null(strstr(err_msg(), "6"));
    err_clear();
    assert_int_equal(o->softmax_xent(be.ctx, N, C, z, bad_lo, 0.0f, 1.0f, dz, &loss, &correct), ST_INPUT);
    err_clear();
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// Optimizers: expected values computed separately (by hand / a few lines of Python), not by this formula.

static void test_adam_steps(void **state) {
    (void)state;
    backend be = make_cpu(2);
    float p[2] = {1.0f, -0.5f}, m[2] = {0}, v[2] = {0};
    const float g[3][2] = {{0.5f, -0.2f}, {-0.3f, 0.1f}, {0.2f, 0.4f}};
    const double want_p[3][2] = {{0.905948349, -0.413652706}, {0.887784007, -0.390320057},
                                 {0.85473779, -0.433100475}};
    const double want_m3[2] = {0.0335, 0.0328}, want_v3[2] = {0.00037941025, 0.00020991004};
    adam_hyper h = {.lr = 0.1f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-3f, .weight_decay = 0.0f};
    for (int t = 0; t < 3; t++) {
        h.t = t + 1;
        assert_int_equal(be.ops->adam_step(be.ctx, 2, p, g[t], m, v, &h), ST_OK);
        for (int i = 0; i < 2; i++) assert_true(fabs(p[i] - want_p[t][i]) < 2e-6);
    }
    for (int i = 0; i < 2; i++) {
        assert_true(fabs(m[i] - want_m3[i]) < 1e-5 * want_m3[i]);
        assert_true(fabs(v[i] - want_v3[i]) < 1e-4 * want_v3[i]);  // float 1 - beta2 is off by 1.3e-5
    }

    // Weight decay is added to the gradient.
    float q[2] = {1.0f, -0.5f}, m2[2] = {0}, v2[2] = {0};
    const double want_wd[2][2] = {{0.905838524, -0.413364215}, {0.885620619, -0.387783985}};
    h.weight_decay = 0.01f;
    for (int t = 0; t < 2; t++) {
        h.t = t + 1;
        assert_int_equal(be.ops->adam_step(be.ctx, 2, q, g[t], m2, v2, &h), ST_OK);
        for (int i = 0; i < 2; i++) assert_true(fabs(q[i] - want_wd[t][i]) < 2e-6);
    }

    // A long buffer (threaded path) gives the same step as the short one, element by element.
    enum { BIG = 300001 };
    float *bp = fbuf(BIG), *bg = fbuf(BIG), *bm = fbuf(BIG), *bv = fbuf(BIG);
    for (size_t i = 0; i < BIG; i++) bp[i] = 1.0f, bg[i] = 0.5f;
    h.weight_decay = 0.0f, h.t = 1;
    assert_int_equal(be.ops->adam_step(be.ctx, BIG, bp, bg, bm, bv, &h), ST_OK);
    for (size_t i = 0; i < BIG; i++) assert_true(fabs(bp[i] - 0.905948349) < 2e-6);
    free(bp), free(bg), free(bm), free(bv);

    err_clear();
    h.t = 0;
    assert_int_equal(be.ops->adam_step(be.ctx, 2, p, g[0], m, v, &h), ST_INPUT);
    assert_non_null(strstr(err_msg(), "adam_step"));
    err_clear();
    backend_destroy(&be);
}

static void test_sgd_steps(void **state) {
    (void)state;
    backend be = make_cpu(2);
    // By hand, lr 0.1, momentum 0.9, weight decay 0.1, p0 = 1:
    //   g' = 0.5 + 0.1       = 0.6;     vel = 0.6;                 p = 1 - 0.06          = 0.94
    //   g' = -0.2 + 0.094    = -0.106;  vel = 0.54 - 0.106 = 0.434; p = 0.94 - 0.0434     = 0.8966
    //   g' = 0.3 + 0.08966   = 0.38966; vel = 0.3906 + 0.38966 = 0.78026; p = 0.8966 - 0.078026 = 0.818574
    float p[1] = {1.0f}, vel[1] = {0};
    const float g[3] = {0.5f, -0.2f, 0.3f};
    const double want_p[3] = {0.94, 0.8966, 0.818574}, want_vel[3] = {0.6, 0.434, 0.78026};
    sgd_hyper h = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.1f};
    for (int t = 0; t < 3; t++) {
        assert_int_equal(be.ops->sgd_step(be.ctx, 1, p, &g[t], vel, &h), ST_OK);
        assert_true(fabs(p[0] - want_p[t]) < 1e-6);
        assert_true(fabs(vel[0] - want_vel[t]) < 1e-6);
    }
    // Plain SGD: p -= lr * g.
    float q[2] = {2.0f, -1.0f}, vq[2] = {0}, gq[2] = {1.0f, -4.0f};
    sgd_hyper plain = {.lr = 0.25f};
    assert_int_equal(be.ops->sgd_step(be.ctx, 2, q, gq, vq, &plain), ST_OK);
    assert_true(q[0] == 1.75f && q[1] == 0.0f);
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// Data, utilities, memory

static void test_gather(void **state) {
    (void)state;
    backend be = make_cpu(2);
    enum { S = 4, M = 5 };
    uint8_t images[M * S];
    int32_t labels[M] = {9, 8, 7, 6, 5};
    for (int i = 0; i < M * S; i++) images[i] = (uint8_t)(i * 13 + 1);
    images[3 * S + 0] = 255, images[3 * S + 1] = 0;
    int32_t index[3] = {3, 0, 3};
    float x[3 * S];
    int32_t y[3];
    assert_int_equal(be.ops->gather(be.ctx, images, labels, index, 3, S, NULL, x, y), ST_OK);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(y[i], labels[index[i]]);
        for (int j = 0; j < S; j++) assert_true(x[i * S + j] == (float)images[index[i] * S + j] / 255.0f);
    }
    assert_true(x[0] == 1.0f && x[1] == 0.0f);
    assert_true(x[S + 1] == 14.0f / 255.0f);
    backend_destroy(&be);
}

// ---- augmentation fused into gather (src/gather_aug.h)

// The draw is part of the checkpoint format's meaning (a resumed run must draw what the first one drew), so its
// bits are pinned: a change of the hash shows here, not as a silently different resumed run.
static void test_gather_aug_hash_pinned(void **state) {
    (void)state;
    assert_true(gather_aug_hash(42, 0, 0) == 0x848413b4de2d7c0bull);
    assert_true(gather_aug_hash(7, 3, 12345) == 0x004618df6412379aull);
}

static gather_aug aug_4x4(int crop_pad, int flip, int normalize) {
    gather_aug a;
    memset(&a, 0, sizeof a);
    a.seed = 7, a.epoch = 3, a.c = 1, a.h = 4, a.w = 4;
    a.crop_pad = crop_pad, a.flip = flip, a.normalize = normalize;
    for (int p = 0; p < 256; p++) a.lut[0][p] = ((float)p / 255.0f - 0.25f) / 0.5f;  // mean 0.25, std 0.5
    return a;
}

// A known 4x4 image (img[y][x] = 10 (y + 1) + x) through a known draw gives the output torchvision's
// RandomCrop(4, padding=1) -> RandomHorizontalFlip -> ToTensor -> Normalize(0.25, 0.5) gives for it.
static void test_gather_aug_known_image(void **state) {
    (void)state;
    backend be = make_cpu(2);
    enum { M = 32 };
    uint8_t images[M * 16];
    int32_t labels[M];
    for (int i = 0; i < M; i++) {
        labels[i] = i % 10;
        for (int y = 0; y < 4; y++)
            for (int x = 0; x < 4; x++) images[i * 16 + y * 4 + x] = (uint8_t)(10 * (y + 1) + x);
    }
    gather_aug a = aug_4x4(1, 1, 1);
    // Sample 17 draws dy = +1, dx = -1, flipped: the padded 6x6 image cropped at top 2, left 0, then mirrored.
    // Sample 23 draws dy = -1, dx = +1, not flipped: cropped at top 0, left 2.
    gather_draw d17 = gather_aug_draw(&a, 17), d23 = gather_aug_draw(&a, 23);
    assert_true(d17.dy == 1 && d17.dx == -1 && d17.flip == 1);
    assert_true(d23.dy == -1 && d23.dx == 1 && d23.flip == 0);
    static const uint8_t want17[16] = {22, 21, 20, 0, 32, 31, 30, 0, 42, 41, 40, 0, 0, 0, 0, 0};
    static const uint8_t want23[16] = {0, 0, 0, 0, 11, 12, 13, 0, 21, 22, 23, 0, 31, 32, 33, 0};
    int32_t index[2] = {17, 23}, y[2];
    float x[32];
    assert_int_equal(be.ops->gather(be.ctx, images, labels, index, 2, 16, &a, x, y), ST_OK);
    for (int k = 0; k < 16; k++) {
        assert_true(x[k] == ((float)want17[k] / 255.0f - 0.25f) / 0.5f);
        assert_true(x[16 + k] == ((float)want23[k] / 255.0f - 0.25f) / 0.5f);
    }
    assert_true(x[3] == -0.5f);  // a padded pixel: (0 - mean) / std
    assert_int_equal(y[0], 7), assert_int_equal(y[1], 3);
    // Without normalisation the same pixels / 255, exactly as the plain gather rounds them.
    a.normalize = 0;
    assert_int_equal(be.ops->gather(be.ctx, images, labels, index, 2, 16, &a, x, y), ST_OK);
    for (int k = 0; k < 16; k++) assert_true(x[k] == (float)want17[k] / 255.0f);
    // Neither crop nor flip nor normalize: the plain gather's bits.
    gather_aug none = aug_4x4(0, 0, 0);
    float plain[32];
    assert_int_equal(be.ops->gather(be.ctx, images, labels, index, 2, 16, NULL, plain, y), ST_OK);
    assert_int_equal(be.ops->gather(be.ctx, images, labels, index, 2, 16, &none, x, y), ST_OK);
    assert_memory_equal(x, plain, sizeof x);
    // A shape that is not the batch's is refused.
    a.w = 5;
    assert_int_equal(be.ops->gather(be.ctx, images, labels, index, 2, 16, &a, x, y), ST_INPUT);
    backend_destroy(&be);
}

// Same (seed, epoch, index) -> same output, whatever the batch it is in and the thread count; another epoch
// draws again. The draws over many samples: flips near one half, crop offsets covering [-pad, pad] evenly.
static void test_gather_aug_determinism_and_spread(void **state) {
    (void)state;
    backend b1 = make_cpu(1), b3 = make_cpu(3);
    enum { M = 64, C = 3, H = 9, W = 7, E = C * H * W };
    uint8_t *images = malloc(M * E);
    int32_t labels[M];
    rng r;
    rng_seed(&r, 3);
    for (int i = 0; i < M * E; i++) images[i] = (uint8_t)rng_below(&r, 256);
    for (int i = 0; i < M; i++) labels[i] = i % 10;
    gather_aug a;
    memset(&a, 0, sizeof a);
    a.seed = 11, a.epoch = 0, a.c = C, a.h = H, a.w = W, a.crop_pad = 2, a.flip = 1, a.normalize = 1;
    for (int c = 0; c < C; c++)
        for (int p = 0; p < 256; p++) a.lut[c][p] = ((float)p / 255.0f - 0.1f * c) / (0.2f + 0.1f * c);
    int32_t index[M], rev[M], y[M];
    for (int i = 0; i < M; i++) index[i] = i, rev[i] = M - 1 - i;
    float *x1 = fbuf(M * E), *x2 = fbuf(M * E), *x3 = fbuf(M * E);
    assert_int_equal(b1.ops->gather(b1.ctx, images, labels, index, M, E, &a, x1, y), ST_OK);
    assert_int_equal(b3.ops->gather(b3.ctx, images, labels, rev, M, E, &a, x2, y), ST_OK);
    for (int i = 0; i < M; i++) assert_memory_equal(x1 + (size_t)i * E, x2 + (size_t)(M - 1 - i) * E, E * sizeof(float));
    a.epoch = 1;
    assert_int_equal(b1.ops->gather(b1.ctx, images, labels, index, M, E, &a, x3, y), ST_OK);
    int differ = 0;
    for (int i = 0; i < M; i++) differ += memcmp(x1 + (size_t)i * E, x3 + (size_t)i * E, E * sizeof(float)) != 0;
    print_message("epoch 0 vs 1: %d of %d samples transformed differently\n", differ, M);
    assert_true(differ > M / 2);

    enum { N = 100000, PAD = 3 };
    a.crop_pad = PAD;
    long flips = 0, dy[2 * PAD + 1] = {0}, dx[2 * PAD + 1] = {0};
    for (int i = 0; i < N; i++) {
        gather_draw d = gather_aug_draw(&a, i);
        assert_true(d.dy >= -PAD && d.dy <= PAD && d.dx >= -PAD && d.dx <= PAD);
        flips += d.flip, dy[d.dy + PAD]++, dx[d.dx + PAD]++;
    }
    const double expect = (double)N / (2 * PAD + 1);
    print_message("over %d samples: flipped %.4f; crop offsets -%d..%d:", N, (double)flips / N, PAD, PAD);
    for (int k = 0; k <= 2 * PAD; k++) {
        print_message(" %ld/%ld", dy[k], dx[k]);
        assert_true(fabs(dy[k] - expect) < 0.05 * expect && fabs(dx[k] - expect) < 0.05 * expect);
    }
    print_message("\n");
    assert_true(fabs((double)flips / N - 0.5) < 0.01);
    // Crop and flip draw from separate bits: turning the flip off leaves every crop offset as it was.
    gather_aug nf = a;
    nf.flip = 0;
    for (int i = 0; i < 1000; i++) {
        gather_draw d = gather_aug_draw(&a, i), e = gather_aug_draw(&nf, i);
        assert_true(d.dy == e.dy && d.dx == e.dx && e.flip == 0);
    }
    free(images), free(x1), free(x2), free(x3);
    backend_destroy(&b1), backend_destroy(&b3);
}

// Clipping by global L2 norm against a double-precision reference: below the limit nothing changes, above it
// every value is scaled by max_norm / (norm + 1e-6); *sumsq is the sum of squares before clipping.
static void test_clip_grad_norm(void **state) {
    (void)state;
    backend be = make_cpu(3);
    enum { N = 150001 };
    float *g = fbuf(N), *ref = fbuf(N);
    rng r;
    rng_seed(&r, 5);
    double ss = 0;
    for (int i = 0; i < N; i++) {
        g[i] = ref[i] = rng_uniform(&r) - 0.5f;
        ss += (double)g[i] * g[i];
    }
    double got = -1;
    const float loose = (float)(sqrt(ss) * 2);
    assert_int_equal(be.ops->clip_grad_norm(be.ctx, N, g, loose, &got), ST_OK);
    assert_true(fabs(got - ss) <= 1e-9 * ss);
    assert_memory_equal(g, ref, N * sizeof(float));  // under the limit: untouched
    const float tight = 0.5f;
    assert_int_equal(be.ops->clip_grad_norm(be.ctx, N, g, tight, &got), ST_OK);
    const double coef = tight / (sqrt(ss) + 1e-6);
    double after = 0;
    for (int i = 0; i < N; i++) {
        assert_true(fabs(g[i] - ref[i] * coef) <= 1e-6 * fabs(ref[i] * coef) + 1e-12);
        after += (double)g[i] * g[i];
    }
    assert_true(fabs(sqrt(after) - tight) < 1e-5);
    free(g), free(ref);
    backend_destroy(&be);
}

static void test_scale_and_count_nonfinite(void **state) {
    (void)state;
    backend be = make_cpu(2);
    float x[8] = {1, -2, FLT_MAX, NAN, INFINITY, -INFINITY, 0, 1e-30f};
    int32_t bad = -1;
    assert_int_equal(be.ops->count_nonfinite(be.ctx, 8, x, &bad), ST_OK);
    assert_int_equal(bad, 3);
    assert_int_equal(be.ops->count_nonfinite(be.ctx, 3, x, &bad), ST_OK);
    assert_int_equal(bad, 0);
    float s[3] = {1, -2, 4};
    assert_int_equal(be.ops->scale(be.ctx, 3, 0.5f, s), ST_OK);
    assert_true(s[0] == 0.5f && s[1] == -1.0f && s[2] == 2.0f);
    const float inc[3] = {0.25f, 1.0f, -3.0f};
    assert_int_equal(be.ops->add(be.ctx, 3, inc, s), ST_OK);
    assert_true(s[0] == 0.75f && s[1] == 0.0f && s[2] == -1.0f);

    enum { BIG = 200003 };
    float *big = fbuf(BIG);
    for (int i = 0; i < BIG; i += 1000) big[i] = NAN;
    assert_int_equal(be.ops->count_nonfinite(be.ctx, BIG, big, &bad), ST_OK);
    assert_int_equal(bad, (BIG + 999) / 1000);
    backend_destroy(&be);

    // Many short jobs back to back on more threads than cores: no part may be lost or run twice.
    backend b3 = make_cpu(3);
    for (int rep = 0; rep < 300; rep++) {
        bad = -1;
        assert_int_equal(b3.ops->count_nonfinite(b3.ctx, BIG, big, &bad), ST_OK);
        assert_int_equal(bad, (BIG + 999) / 1000);
    }
    free(big);
    backend_destroy(&b3);
}

static void test_memory_ops(void **state) {
    (void)state;
    backend be = make_cpu(0);
    const backend_ops *o = be.ops;
    assert_string_equal(o->name, "cpu");
    assert_null(o->stream);
    assert_null(o->capture_begin);
    assert_null(o->replay);
    float *a = NULL, *b = NULL;
    assert_int_equal(o->alloc(be.ctx, (void **)&a, 1000 * sizeof(float)), ST_OK);
    assert_int_equal(o->alloc(be.ctx, (void **)&b, 1000 * sizeof(float)), ST_OK);
    assert_true((uintptr_t)a % 64 == 0 && (uintptr_t)b % 64 == 0);
    for (int i = 0; i < 1000; i++) assert_true(a[i] == 0.0f);
    float host[1000], back[1000];
    for (int i = 0; i < 1000; i++) host[i] = (float)i;
    assert_int_equal(o->upload(be.ctx, a, host, sizeof host), ST_OK);
    assert_int_equal(o->copy(be.ctx, b, a, sizeof host), ST_OK);
    assert_int_equal(o->zero(be.ctx, a, sizeof host), ST_OK);
    assert_int_equal(o->sync(be.ctx), ST_OK);
    assert_int_equal(o->download(be.ctx, back, b, sizeof back), ST_OK);
    assert_memory_equal(back, host, sizeof host);
    assert_int_equal(o->download(be.ctx, back, a, sizeof back), ST_OK);
    for (int i = 0; i < 1000; i++) assert_true(back[i] == 0.0f);
    void *z = NULL;
    assert_int_equal(o->alloc(be.ctx, &z, 0), ST_OK);
    o->free(be.ctx, z);
    o->free(be.ctx, a);
    o->free(be.ctx, b);
    o->free(be.ctx, NULL);
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// Shapes, factory, progress hook

static void test_desc_init(void **state) {
    (void)state;
    conv_desc d = {.n = 64, .c = 1, .h = 28, .w = 28, .k = 32, .r = 3, .s = 3, .stride = 1, .pad = 0};
    err_clear();
    assert_int_equal(conv_desc_init(&d, "conv1"), ST_OK);
    assert_int_equal(d.oh, 26);
    assert_int_equal(d.ow, 26);
    conv_desc e = {.n = 1, .c = 1, .h = 8, .w = 7, .k = 1, .r = 3, .s = 3, .stride = 2, .pad = 1};
    assert_int_equal(conv_desc_init(&e, "conv2"), ST_OK);
    assert_int_equal(e.oh, 4);
    assert_int_equal(e.ow, 4);
    assert_int_equal(e.groups, 1);  // 0 reads as 1
    assert_int_equal(e.dilation, 1);
    // PyTorch's rule: floor((h + 2p - d(k - 1) - 1)/s) + 1; a pad up to the dilated extent
    conv_desc f = {.n = 1, .c = 4, .h = 9, .w = 8, .k = 6, .r = 3, .s = 3, .stride = 2, .pad = 4, .groups = 2,
                   .dilation = 3};
    assert_int_equal(conv_desc_init(&f, "conv3"), ST_OK);
    assert_int_equal(f.oh, 6);
    assert_int_equal(f.ow, 5);

    conv_desc bad[] = {
        {.n = 1, .c = 1, .h = 8, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 0, .pad = 0},   // stride < 1
        {.n = 1, .c = 1, .h = 8, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 1, .pad = 3},   // pad >= kernel
        {.n = 1, .c = 1, .h = 2, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 1, .pad = 0},   // output < 1
        {.n = 0, .c = 1, .h = 8, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 1, .pad = 0},   // no batch
        {.n = 1, .c = 1, .h = 8, .w = 8, .k = 0, .r = 3, .s = 3, .stride = 1, .pad = 0},   // no filters
        {.n = 1, .c = 1, .h = 8, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 1, .pad = -1},  // negative pad
        {.n = 1, .c = 1, .h = 8, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 1, .act = 99},  // unknown act
        {.n = 1, .c = 1, .h = 8, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 1, .act = ACT_GELU},  // not fused
        {.n = 1, .c = 6, .h = 8, .w = 8, .k = 6, .r = 3, .s = 3, .stride = 1, .groups = 4},       // 6 % 4
        {.n = 1, .c = 4, .h = 8, .w = 8, .k = 6, .r = 3, .s = 3, .stride = 1, .groups = 4},       // filters % 4
        {.n = 1, .c = 4, .h = 8, .w = 8, .k = 4, .r = 3, .s = 3, .stride = 1, .groups = -2},      // negative
        {.n = 1, .c = 1, .h = 8, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 1, .dilation = -1},    // negative
        {.n = 1, .c = 1, .h = 8, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 1, .pad = 5, .dilation = 2},  // pad >= 5
        {.n = 1, .c = 1, .h = 4, .w = 8, .k = 1, .r = 3, .s = 3, .stride = 1, .dilation = 3},     // extent 7 > 4
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err_clear();
        assert_int_equal(conv_desc_init(&bad[i], "conv9"), ST_INPUT);
        assert_non_null(strstr(err_msg(), "conv9"));
    }

    pool_desc p = {.n = 2, .c = 3, .h = 11, .w = 11, .size = 2, .stride = 2};
    err_clear();
    assert_int_equal(pool_desc_init(&p, "pool2"), ST_OK);
    assert_int_equal(p.oh, 5);
    assert_int_equal(p.ow, 5);
    pool_desc pp = {.n = 1, .c = 1, .h = 7, .w = 6, .size = 3, .stride = 2, .pad = 1};  // PyTorch: 4x3
    assert_int_equal(pool_desc_init(&pp, "pool3"), ST_OK);
    assert_int_equal(pp.oh, 4);
    assert_int_equal(pp.ow, 3);
    pool_desc pbad[] = {
        {.n = 1, .c = 1, .h = 1, .w = 8, .size = 2, .stride = 2},  // output < 1
        {.n = 1, .c = 1, .h = 8, .w = 8, .size = 3, .stride = 1, .pad = 2},  // pad > size/2 (PyTorch's rule)
        {.n = 1, .c = 1, .h = 8, .w = 8, .size = 2, .stride = 1, .pad = -1},
        {.n = 1, .c = 1, .h = 8, .w = 8, .size = 2, .stride = 0},
        {.n = 1, .c = 1, .h = 8, .w = 8, .size = 0, .stride = 1},
        {.n = 1, .c = 0, .h = 8, .w = 8, .size = 2, .stride = 2},
    };
    for (size_t i = 0; i < sizeof pbad / sizeof pbad[0]; i++) {
        err_clear();
        assert_int_equal(pool_desc_init(&pbad[i], "pool7"), ST_INPUT);
        assert_non_null(strstr(err_msg(), "pool7"));
    }
    err_clear();
}

static void test_backend_create(void **state) {
    (void)state;
    backend be;
    err_clear();
    assert_int_equal(backend_create(&be, "cpu", &(backend_options){.threads = 2}), ST_OK);
    assert_string_equal(backend_name(&be), "cpu");
    assert_false(backend_can_capture(&be));
    assert_false(backend_is_async(&be));
    assert_null(backend_stream(&be));
    assert_int_equal(backend_capture_begin(&be), ST_RUNTIME);  // no slot: the wrapper says so
    assert_non_null(strstr(err_msg(), "capture_begin"));
    err_clear();
    backend_destroy(&be);
    assert_null(be.ops);
    backend_destroy(&be);  // twice is harmless
    assert_int_equal(backend_create(&be, "cpu", NULL), ST_OK);  // no options: all cores
    backend_destroy(&be);
    assert_int_equal(backend_create(&be, "cpu", &(backend_options){.threads = 1, .deterministic = 1}), ST_OK);
    backend_destroy(&be);
    assert_int_equal(backend_create(&be, "cpu", &(backend_options){.threads = 1, .tf32 = 1}), ST_INPUT);
    assert_non_null(strstr(err_msg(), "tf32"));
    assert_null(be.ops);
    err_clear();
    assert_true(backend_uses_host_cores("cpu"));
    assert_false(backend_uses_host_cores("cuda"));
    assert_false(backend_uses_host_cores("tpu"));
    assert_false(backend_uses_host_cores(NULL));

    assert_int_equal(backend_create(&be, "tpu", &(backend_options){.threads = 1}), ST_INPUT);
    assert_non_null(strstr(err_msg(), "tpu"));
    err_clear();
    assert_int_equal(backend_create(&be, NULL, &(backend_options){.threads = 1}), ST_INPUT);
    err_clear();
    assert_int_equal(backend_cpu_create(&be, -1), ST_INPUT);
    err_clear();
#ifndef DDP_HAVE_CUDA
    assert_int_equal(backend_create(&be, "cuda", &(backend_options){.threads = 1}), ST_RUNTIME);
    assert_non_null(strstr(err_msg(), "TRAINER_CUDA=ON"));
    assert_int_equal(backend_cuda_available(), 0);
    err_clear();
#endif
}

// Marks on the CPU are the host clock at mark_record: always done, and elapsed measures what ran between.
static void test_marks(void **state) {
    (void)state;
    backend be = make_cpu(1);
    const backend_ops *o = be.ops;
    void *a = NULL, *b = NULL;
    assert_int_equal(o->mark_create(be.ctx, &a), ST_OK);
    assert_int_equal(o->mark_create(be.ctx, &b), ST_OK);
    assert_int_equal(o->mark_record(be.ctx, a), ST_OK);
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL);
    assert_int_equal(o->mark_record(be.ctx, b), ST_OK);
    int done = 0;
    assert_int_equal(o->mark_query(be.ctx, b, &done), ST_OK);
    assert_int_equal(done, 1);
    double dt = -1, back = 1;
    assert_int_equal(o->mark_elapsed(be.ctx, a, b, &dt), ST_OK);
    assert_int_equal(o->mark_elapsed(be.ctx, b, a, &back), ST_OK);
    assert_true(dt >= 0.019 && dt < 1.0);
    assert_true(back == -dt);
    o->mark_destroy(be.ctx, a);
    o->mark_destroy(be.ctx, b);
    backend_destroy(&be);
}

static void count_calls(void *arg) { (*(int *)arg)++; }

static void test_progress_hook_runs_during_backward(void **state) {
    (void)state;
    backend be = make_cpu(2);
    const backend_ops *o = be.ops;
    int calls = 0;
    o->set_progress(be.ctx, count_calls, &calls);
    conv_desc d = {.n = 4, .c = 2, .h = 6, .w = 6, .k = 3, .r = 3, .s = 3, .stride = 1, .pad = 0, .act = ACT_RELU};
    assert_int_equal(conv_desc_init(&d, "c"), ST_OK);
    size_t ws_bytes;
    assert_int_equal(o->conv_prepare(be.ctx, &d, &ws_bytes), ST_OK);
    void *ws;
    assert_int_equal(o->alloc(be.ctx, &ws, ws_bytes), ST_OK);
    float x[4 * 2 * 36] = {0}, w[3 * 2 * 9] = {0}, y[4 * 3 * 16] = {0}, dy[4 * 3 * 16] = {0};
    float dx[4 * 2 * 36], dw[3 * 2 * 9], db[3];
    assert_int_equal(o->conv_backward(be.ctx, &d, x, w, y, dy, dx, dw, db, ws), ST_OK);
    assert_true(calls >= 2);
    int before = calls;
    float dx2[4 * 5], dy2[4 * 3], w2[3 * 5] = {0}, x2[4 * 5] = {0}, y2[4 * 3] = {0}, dw2[15], db2[3];
    memset(dy2, 0, sizeof dy2);
    assert_int_equal(o->dense_backward(be.ctx, 4, 5, 3, ACT_RELU, x2, w2, y2, dy2, dx2, dw2, db2), ST_OK);
    assert_true(calls > before);
    o->set_progress(be.ctx, NULL, NULL);
    before = calls;
    assert_int_equal(o->conv_backward(be.ctx, &d, x, w, y, dy, dx, dw, db, ws), ST_OK);
    assert_int_equal(calls, before);
    o->free(be.ctx, ws);
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// Timing harness (opt-in, never fails): one training step of the reference CNN at batch 64.

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_bench_reference_cnn(void **state) {
    (void)state;
    if (!getenv("DDP_BENCH_CPU")) return;
    int threads = getenv("DDP_BENCH_THREADS") ? atoi(getenv("DDP_BENCH_THREADS")) : 2;
    backend be = make_cpu(threads);
    const backend_ops *o = be.ops;
    void *ctx = be.ctx;
    enum { N = 64 };
    conv_desc c1 = {.n = N, .c = 1, .h = 28, .w = 28, .k = 32, .r = 3, .s = 3, .stride = 1, .act = ACT_RELU};
    conv_desc c2 = {.n = N, .c = 32, .h = 13, .w = 13, .k = 64, .r = 3, .s = 3, .stride = 1, .act = ACT_RELU};
    pool_desc p1 = {.n = N, .c = 32, .h = 26, .w = 26, .size = 2, .stride = 2};
    pool_desc p2 = {.n = N, .c = 64, .h = 11, .w = 11, .size = 2, .stride = 2};
    assert_int_equal(conv_desc_init(&c1, "conv1"), ST_OK);
    assert_int_equal(conv_desc_init(&c2, "conv2"), ST_OK);
    assert_int_equal(pool_desc_init(&p1, "pool1"), ST_OK);
    assert_int_equal(pool_desc_init(&p2, "pool2"), ST_OK);
    size_t ws1, ws2;
    assert_int_equal(o->conv_prepare(ctx, &c1, &ws1), ST_OK);
    assert_int_equal(o->conv_prepare(ctx, &c2, &ws2), ST_OK);
    size_t n_w1 = 32 * 9, n_w2 = 64 * 32 * 9, n_w3 = 64 * 1600, n_w4 = 10 * 64;
    size_t n_params = n_w1 + 32 + n_w2 + 64 + n_w3 + 64 + n_w4 + 10;
    size_t a_x = N * 784, a_c1 = N * 32 * 676, a_p1 = N * 32 * 169, a_c2 = N * 64 * 121, a_p2 = N * 1600;
    float *params = fbuf(n_params), *grads = fbuf(n_params), *m = fbuf(n_params), *v = fbuf(n_params);
    float *x = fbuf(a_x), *y1 = fbuf(a_c1), *d1 = fbuf(a_c1), *y2 = fbuf(a_p1), *d2 = fbuf(a_p1);
    float *y3 = fbuf(a_c2), *d3 = fbuf(a_c2), *y4 = fbuf(a_p2), *d4 = fbuf(a_p2);
    float *y5 = fbuf(N * 64), *d5 = fbuf(N * 64), *y6 = fbuf(N * 10), *d6 = fbuf(N * 10);
    int32_t *am1 = calloc(a_p1, 4), *am2 = calloc(a_p2, 4), labels[N];
    void *ws = NULL;
    assert_int_equal(o->alloc(ctx, &ws, ws1 > ws2 ? ws1 : ws2), ST_OK);
    rng g;
    rng_seed(&g, 5);
    fill_uniform(&g, params, n_params, -0.1f, 0.1f);
    fill_uniform(&g, x, a_x, 0, 1);
    for (int i = 0; i < N; i++) labels[i] = (int32_t)rng_below(&g, 10);
    float *w1 = params, *b1 = w1 + n_w1, *w2 = b1 + 32, *b2 = w2 + n_w2, *w3 = b2 + 64, *b3 = w3 + n_w3;
    float *w4 = b3 + 64, *b4 = w4 + n_w4;
    float *g1 = grads, *gb1 = g1 + n_w1, *g2 = gb1 + 32, *gb2 = g2 + n_w2, *g3 = gb2 + 64, *gb3 = g3 + n_w3;
    float *g4 = gb3 + 64, *gb4 = g4 + n_w4;
    double loss = 0;
    int32_t correct = 0;
    adam_hyper h = {.lr = 1e-3f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-7f};
    enum { PH = 9 };
    double phase[PH] = {0};
    const char *names[PH] = {"conv1 fwd", "pool+conv2 fwd", "pool2+dense fwd", "softmax", "dense bwd",
                             "pool2 bwd+conv2 bwd", "pool1 bwd", "conv1 bwd", "adam"};
    const int warm = 20, iters = 200;
    double best = 1e9, total = 0, step[200];
    for (int it = 0; it < warm + iters; it++) {
        double t[PH + 1];
        t[0] = now_s();
        o->conv_forward(ctx, &c1, x, w1, b1, y1, ws);
        t[1] = now_s();
        o->pool_forward(ctx, &p1, y1, y2, am1);
        o->conv_forward(ctx, &c2, y2, w2, b2, y3, ws);
        t[2] = now_s();
        o->pool_forward(ctx, &p2, y3, y4, am2);
        o->dense_forward(ctx, N, 1600, 64, ACT_RELU, y4, w3, b3, y5);
        o->dense_forward(ctx, N, 64, 10, ACT_NONE, y5, w4, b4, y6);
        t[3] = now_s();
        o->softmax_xent(ctx, N, 10, y6, labels, 0.0f, 1.0f, d6, &loss, &correct);
        t[4] = now_s();
        o->dense_backward(ctx, N, 64, 10, ACT_NONE, y5, w4, y6, d6, d5, g4, gb4);
        o->dense_backward(ctx, N, 1600, 64, ACT_RELU, y4, w3, y5, d5, d4, g3, gb3);
        t[5] = now_s();
        o->pool_backward(ctx, &p2, d4, am2, d3);
        o->conv_backward(ctx, &c2, y2, w2, y3, d3, d2, g2, gb2, ws);
        t[6] = now_s();
        o->pool_backward(ctx, &p1, d2, am1, d1);
        t[7] = now_s();
        o->conv_backward(ctx, &c1, x, w1, y1, d1, NULL, g1, gb1, ws);
        t[8] = now_s();
        h.t = it + 1;
        o->adam_step(ctx, n_params, params, grads, m, v, &h);
        t[9] = now_s();
        if (it < warm) continue;
        for (int p = 0; p < PH; p++) phase[p] += t[p + 1] - t[p];
        total += t[PH] - t[0];
        step[it - warm] = t[PH] - t[0];
        if (t[PH] - t[0] < best) best = t[PH] - t[0];
    }
    qsort(step, iters, sizeof step[0], cmp_double);
    double med = step[iters / 2];
    printf("[ bench    ] reference CNN, batch %d, %d thread(s): %.3f ms/step mean, %.3f median, %.3f best -> "
           "%.0f img/s (mean), %.0f (median), %.0f (best)\n",
           N, threads, 1e3 * total / iters, 1e3 * med, 1e3 * best, N * iters / total, N / med, N / best);
    for (int p = 0; p < PH; p++) printf("[ bench    ]   %-22s %.3f ms\n", names[p], 1e3 * phase[p] / iters);
    o->free(ctx, ws);
    free(params), free(grads), free(m), free(v), free(x), free(y1), free(d1), free(y2), free(d2), free(y3);
    free(d3), free(y4), free(d4), free(y5), free(d5), free(y6), free(d6), free(am1), free(am2);
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// Layer ops ([shortcut], [route], [dropout], [avgpool]), against direct computation

static float act_direct(int act, float v) {
    if (act == ACT_RELU) return v > 0 ? v : 0;
    if (act == ACT_LEAKY) return v > 0 ? v : 0.1f * v;
    return v;
}

static void test_add_act_and_act_backward(void **state) {
    (void)state;
    enum { N = 100003 };  // several parts on 3 threads
    backend be = make_cpu(3);
    rng g;
    rng_seed(&g, 5);
    float *a = fbuf(N), *b = fbuf(N), *y = fbuf(N), *dy = fbuf(N), *dx = fbuf(N);
    fill_uniform(&g, a, N, -1, 1);
    fill_uniform(&g, b, N, -1, 1);
    fill_uniform(&g, dy, N, -1, 1);
    const int acts[] = {ACT_NONE, ACT_RELU, ACT_LEAKY};
    for (int t = 0; t < 3; t++) {
        const int act = acts[t];
        assert_int_equal(be.ops->add_act(be.ctx, N, act, a, b, y), ST_OK);
        for (int i = 0; i < N; i++) assert_true(y[i] == act_direct(act, a[i] + b[i]));
        assert_int_equal(be.ops->act_backward(be.ctx, N, act, y, dy, dx), ST_OK);
        for (int i = 0; i < N; i++) {
            const float want = act == ACT_NONE || y[i] > 0 ? dy[i] : act == ACT_LEAKY ? 0.1f * dy[i] : 0.0f;
            assert_true(dx[i] == want);
        }
    }
    // In place: y may be an input, dx may be dy.
    memcpy(y, a, N * sizeof(float));
    assert_int_equal(be.ops->add_act(be.ctx, N, ACT_LEAKY, y, b, y), ST_OK);
    for (int i = 0; i < N; i++) assert_true(y[i] == act_direct(ACT_LEAKY, a[i] + b[i]));
    memcpy(dx, dy, N * sizeof(float));
    assert_int_equal(be.ops->act_backward(be.ctx, N, ACT_RELU, y, dx, dx), ST_OK);
    for (int i = 0; i < N; i++) assert_true(dx[i] == (y[i] > 0 ? dy[i] : 0.0f));
    err_clear();
    assert_int_equal(be.ops->add_act(be.ctx, N, 99, a, b, y), ST_INPUT);
    err_clear();
    assert_int_equal(be.ops->add_act(be.ctx, N, ACT_GELU, a, b, y), ST_INPUT);  // not fused: act_forward
    err_clear();
    free(a), free(b), free(y), free(dy), free(dx);
    backend_destroy(&be);
}

// Every activation on its own (act_forward, act_backward_input): against the double formulas, the derivative
// against central differences of the op's own forward, PyTorch's values at the kinks, and the fused ops
// (add_act, act_backward) agreeing with them for the activations they take.
static void test_activations(void **state) {
    (void)state;
    enum { N = 40000 };  // several parts on 3 threads
    backend be = make_cpu(3);
    rng g;
    rng_seed(&g, 9);
    float *x = fbuf(N), *y = fbuf(N), *dy = fbuf(N), *dx = fbuf(N), *zero = fbuf(N), *y2 = fbuf(N), *dx2 = fbuf(N);
    fill_uniform(&g, x, N, -9, 9);  // past every kink: 0, ±3, 6
    fill_uniform(&g, dy, N, -1, 1);
    const float kinks[] = {0.0f, -3.0f, 3.0f, 6.0f, -6.0f};
    for (int i = 0; i < 5; i++) x[i] = kinks[i];
    for (int act = ACT_NONE; act < ACT_COUNT; act++) {
        assert_int_equal(be.ops->act_forward(be.ctx, N, act, x, y), ST_OK);
        assert_int_equal(be.ops->act_backward_input(be.ctx, N, act, x, dy, dx), ST_OK);
        int fd_checked = 0;
        for (int i = 0; i < N; i++) {
            const double want = act_ref(act, x[i]), dwant = dy[i] * act_ref_grad(act, x[i]);
            if (fabs(y[i] - want) > 2e-6 * fmax(1.0, fabs(want)))
                fail_msg("act %d forward at %g: %.9g, want %.9g", act, x[i], y[i], want);
            if (fabs(dx[i] - dwant) > 2e-6 * fmax(1.0, fabs(dwant)))
                fail_msg("act %d backward at %g: %.9g, want %.9g", act, x[i], dx[i], dwant);
            // Central difference of the float op, away from the kinks.
            const float h = 1e-2f, xv = x[i];
            if (i % 97 || fabsf(xv) < 2 * h || fabsf(fabsf(xv) - 3) < 2 * h || fabsf(xv - 6) < 2 * h) continue;
            float p[2] = {xv + h, xv - h}, q[2];
            assert_int_equal(be.ops->act_forward(be.ctx, 2, act, p, q), ST_OK);
            const double fd = dy[i] * ((double)q[0] - q[1]) / ((double)p[0] - p[1]);
            if (fabs(fd - dx[i]) > 2e-3 * fmax(1.0, fabs(fd)))
                fail_msg("act %d at %g: central difference %.6g, backward %.6g", act, xv, fd, dx[i]);
            fd_checked++;
        }
        assert_true(fd_checked > 300);
        // The kinks (x[0..4] = 0, -3, 3, 6, -6): PyTorch's conventions.
        const float d0 = dy[0], dm3 = dy[1], d3 = dy[2];
        if (act == ACT_RELU6) assert_true(dx[0] == 0 && dx[3] == 0 && y[3] == 6 && dx[2] == d3);
        if (act == ACT_HARDSWISH) {
            assert_true(y[1] == 0 && y[2] == 3 && dx[4] == 0);
            assert_true(dx[1] == dm3 * -0.5f && dx[2] == d3 * 1.5f);
        }
        if (act == ACT_GELU) assert_true(y[0] == 0 && dx[0] == d0 * 0.5f);
        if (!act_from_output(act)) continue;
        // The fused ops: the same values (add_act with b = 0) and the same derivative read from the output.
        assert_int_equal(be.ops->add_act(be.ctx, N, act, x, zero, y2), ST_OK);
        assert_int_equal(memcmp(y, y2, N * sizeof(float)), 0);
        assert_int_equal(be.ops->act_backward(be.ctx, N, act, y, dy, dx2), ST_OK);
        assert_true(tu_max_rel_err(dx2, dx, N) < 1e-6);
    }
    // In place (dx may be dy, y may be x), and unknown activations refused.
    memcpy(y2, x, N * sizeof(float));
    memcpy(dx2, dy, N * sizeof(float));
    assert_int_equal(be.ops->act_backward_input(be.ctx, N, ACT_GELU, y2, dx2, dx2), ST_OK);
    assert_int_equal(be.ops->act_backward_input(be.ctx, N, ACT_GELU, x, dy, dx), ST_OK);
    assert_int_equal(memcmp(dx, dx2, N * sizeof(float)), 0);
    assert_int_equal(be.ops->act_forward(be.ctx, N, ACT_SILU, y2, y2), ST_OK);
    assert_int_equal(be.ops->act_forward(be.ctx, N, ACT_SILU, x, y), ST_OK);
    assert_int_equal(memcmp(y, y2, N * sizeof(float)), 0);
    err_clear();
    assert_int_equal(be.ops->act_forward(be.ctx, N, ACT_COUNT, x, y), ST_INPUT);
    err_clear();
    assert_int_equal(be.ops->act_backward_input(be.ctx, N, -1, x, dy, dx), ST_INPUT);
    err_clear();
    free(x), free(y), free(dy), free(dx), free(zero), free(y2), free(dx2);
    backend_destroy(&be);
}

// Channel slices: a block of c channels into a wider tensor at an offset, and back out, against index arithmetic.
static void test_channel_copy(void **state) {
    (void)state;
    enum { N = 5, HW = 6, SRC_C = 3, DST_C = 7, OFF = 2 };
    backend be = make_cpu(2);
    rng g;
    rng_seed(&g, 8);
    float *src = fbuf(N * SRC_C * HW), *dst = fbuf(N * DST_C * HW), *back = fbuf(N * SRC_C * HW);
    fill_uniform(&g, src, N * SRC_C * HW, -1, 1);
    for (int i = 0; i < N * DST_C * HW; i++) dst[i] = 42.0f;
    assert_int_equal(be.ops->channel_copy(be.ctx, N, SRC_C, HW, src, SRC_C, 0, dst, DST_C, OFF), ST_OK);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < DST_C; c++)
            for (int q = 0; q < HW; q++) {
                const float want = c >= OFF && c < OFF + SRC_C ? src[(n * SRC_C + c - OFF) * HW + q] : 42.0f;
                assert_true(dst[(n * DST_C + c) * HW + q] == want);
            }
    // Two channels out of the middle of the wide tensor (backward of a route).
    assert_int_equal(be.ops->channel_copy(be.ctx, N, 2, HW, dst, DST_C, OFF + 1, back, 2, 0), ST_OK);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < 2; c++)
            for (int q = 0; q < HW; q++) assert_true(back[(n * 2 + c) * HW + q] == src[(n * SRC_C + c + 1) * HW + q]);
    err_clear();
    assert_int_equal(be.ops->channel_copy(be.ctx, N, SRC_C, HW, src, SRC_C, 0, dst, DST_C, 5), ST_INPUT);
    err_clear();
    free(src), free(dst), free(back);
    backend_destroy(&be);
}

// Dropout against the hash it is defined by: kept values scaled by 1/(1 - rate), dropped ones 0, about rate of
// them dropped; the same key and stream give the same mask (backward), another step or stream another one.
static void test_dropout(void **state) {
    (void)state;
    enum { N = 200003 };
    backend be = make_cpu(3);
    rng g;
    rng_seed(&g, 9);
    float *x = fbuf(N), *y = fbuf(N), *y2 = fbuf(N), *ones = fbuf(N);
    fill_uniform(&g, x, N, -1, 1);
    for (int i = 0; i < N; i++) ones[i] = 1.0f;
    dropout_key key = {.seed = 42, .step = 7, .rank = 1};
    const float rates[] = {0.1f, 0.5f, 0.9f};
    for (int t = 0; t < 3; t++) {
        const float rate = rates[t], scale = 1.0f / (1.0f - rate);
        assert_int_equal(be.ops->dropout(be.ctx, N, rate, &key, 3, x, y), ST_OK);
        const uint64_t base = dropout_base(42, 7, 1, 3);
        long dropped = 0;
        for (int i = 0; i < N; i++) {
            const int keep = dropout_keep(base, (uint64_t)i, dropout_threshold(rate));
            assert_true(y[i] == (keep ? x[i] * scale : 0.0f));
            dropped += !keep;
        }
        const double frac = (double)dropped / N;
        print_message("dropout rate %.1f: %.4f of %d dropped\n", rate, frac, N);
        assert_true(fabs(frac - rate) < 0.005);
        // Backward: the same mask on another buffer.
        assert_int_equal(be.ops->dropout(be.ctx, N, rate, &key, 3, ones, y2), ST_OK);
        for (int i = 0; i < N; i++) assert_true((y2[i] != 0) == (y[i] != 0 || x[i] == 0));
    }
    // Another step, rank or stream: another mask (about half the decisions differ at rate 0.5).
    assert_int_equal(be.ops->dropout(be.ctx, N, 0.5f, &key, 3, ones, y), ST_OK);
    const dropout_key others[] = {{.seed = 42, .step = 8, .rank = 1}, {.seed = 42, .step = 7, .rank = 0},
                                  {.seed = 43, .step = 7, .rank = 1}};
    for (int k = 0; k < 4; k++) {
        assert_int_equal(be.ops->dropout(be.ctx, N, 0.5f, k < 3 ? &others[k] : &key, k < 3 ? 3 : 4, ones, y2), ST_OK);
        long differ = 0;
        for (int i = 0; i < N; i++) differ += (y[i] != 0) != (y2[i] != 0);
        assert_true(differ > N / 2 - N / 50 && differ < N / 2 + N / 50);
    }
    // rate 0: the identity; rate 1 or below 0: refused.
    assert_int_equal(be.ops->dropout(be.ctx, N, 0.0f, &key, 3, x, y), ST_OK);
    assert_memory_equal(x, y, N * sizeof(float));
    err_clear();
    assert_int_equal(be.ops->dropout(be.ctx, N, 1.0f, &key, 3, x, y), ST_INPUT);
    assert_int_equal(be.ops->dropout(be.ctx, N, -0.5f, &key, 3, x, y), ST_INPUT);
    err_clear();
    free(x), free(y), free(y2), free(ones);
    backend_destroy(&be);
}

// Average pooling against the direct computation in double: forward means, backward the adjoint (each window
// spreads dy/(kh·kw) over its inputs, scattered here).
static void check_avgpool_case(int n, int c, int h, int w, int kh, int kw, int stride, uint64_t seed) {
    backend be = make_cpu(2);
    const int oh = (h - kh) / stride + 1, ow = (w - kw) / stride + 1;
    const size_t nx = (size_t)n * c * h * w, ny = (size_t)n * c * oh * ow;
    rng g;
    rng_seed(&g, seed);
    float *x = fbuf(nx), *y = fbuf(ny), *dy = fbuf(ny), *dx = fbuf(nx);
    double *yd = dbuf(ny), *dxd = dbuf(nx);
    fill_uniform(&g, x, nx, -1, 1);
    fill_uniform(&g, dy, ny, -1, 1);
    for (int p = 0; p < n * c; p++)
        for (int oy = 0; oy < oh; oy++)
            for (int ox = 0; ox < ow; ox++) {
                double s = 0;
                for (int r = 0; r < kh; r++)
                    for (int q = 0; q < kw; q++) {
                        const size_t xi = ((size_t)p * h + oy * stride + r) * w + ox * stride + q;
                        s += x[xi];
                        dxd[xi] += dy[((size_t)p * oh + oy) * ow + ox] / (kh * kw);
                    }
                yd[((size_t)p * oh + oy) * ow + ox] = s / (kh * kw);
            }
    assert_int_equal(be.ops->avgpool_forward(be.ctx, n, c, h, w, kh, kw, stride, x, y), ST_OK);
    assert_close(y, yd, ny, 1e-5, "avgpool y");
    memset(dx, 0x7f, nx * sizeof(float));  // garbage: backward overwrites
    assert_int_equal(be.ops->avgpool_backward(be.ctx, n, c, h, w, kh, kw, stride, dy, dx), ST_OK);
    assert_close(dx, dxd, nx, 1e-5, "avgpool dx");
    free(x), free(y), free(dy), free(dx), free(yd), free(dxd);
    backend_destroy(&be);
}

static void test_avgpool(void **state) {
    (void)state;
    check_avgpool_case(3, 4, 6, 6, 2, 2, 2, 1);   // tiling windows
    check_avgpool_case(2, 3, 7, 9, 3, 3, 2, 2);   // overlapping windows, odd sizes
    check_avgpool_case(2, 2, 10, 10, 2, 2, 3, 3);  // gaps: some inputs in no window (dx 0)
    check_avgpool_case(4, 5, 7, 5, 7, 5, 1, 4);   // global pooling of a non-square plane
    check_avgpool_case(1, 1, 1, 1, 1, 1, 1, 5);
    backend be = make_cpu(1);
    float v[4] = {0};
    err_clear();
    assert_int_equal(be.ops->avgpool_forward(be.ctx, 1, 1, 2, 2, 3, 3, 1, v, v), ST_INPUT);
    err_clear();
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// PowerSGD's linear algebra: gemm against a double triple loop (every transpose, alpha and beta, more rows than one
// block), the same bits at any thread count; orthogonalize against modified Gram-Schmidt in double.

static void gemm_ref(int ta, int tb, int m, int n, int k, double alpha, const float *a, const float *b, double beta,
                     const float *c0, double *c) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int l = 0; l < k; l++)
                acc += (double)(ta ? a[(size_t)l * m + i] : a[(size_t)i * k + l]) *
                       (tb ? b[(size_t)j * k + l] : b[(size_t)l * n + j]);
            c[(size_t)i * n + j] = alpha * acc + (beta != 0 ? beta * c0[(size_t)i * n + j] : 0);
        }
}

static void test_gemm(void **state) {
    (void)state;
    backend b1 = make_cpu(1), b2 = make_cpu(2);
    rng r;
    rng_seed(&r, 11);
    const int shapes[][3] = {{150, 7, 33}, {5, 130, 3}, {70, 2, 200}, {1, 1, 1}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                const int m = shapes[sh][0], n = shapes[sh][1], k = shapes[sh][2];
                float *a = fbuf((size_t)m * k), *b = fbuf((size_t)k * n), *c0 = fbuf((size_t)m * n);
                float *c1 = fbuf((size_t)m * n), *c2 = fbuf((size_t)m * n);
                double *ref = dbuf((size_t)m * n);
                fill_uniform(&r, a, (size_t)m * k, -1, 1);
                fill_uniform(&r, b, (size_t)k * n, -1, 1);
                fill_uniform(&r, c0, (size_t)m * n, -1, 1);
                const float alpha = ta ? -0.5f : 1.0f, beta = tb ? 0.25f : 0.0f;
                memcpy(c1, c0, (size_t)m * n * sizeof(float));
                if (beta == 0) c1[0] = NAN;  // beta 0 never reads c
                memcpy(c2, c1, (size_t)m * n * sizeof(float));
                assert_int_equal(backend_gemm(&b1, ta, tb, m, n, k, alpha, a, b, beta, c1), ST_OK);
                assert_int_equal(backend_gemm(&b2, ta, tb, m, n, k, alpha, a, b, beta, c2), ST_OK);
                gemm_ref(ta, tb, m, n, k, alpha, a, b, beta, c0, ref);
                double worst = 0;
                for (size_t i = 0; i < (size_t)m * n; i++) worst = fmax(worst, fabs(c1[i] - ref[i]));
                if (!(worst < 1e-5 * k)) fail_msg("gemm ta=%d tb=%d %dx%dx%d: max error %g", ta, tb, m, n, k, worst);
                assert_memory_equal(c1, c2, (size_t)m * n * sizeof(float));  // thread count changes nothing
                free(a), free(b), free(c0), free(c1), free(c2), free(ref);
            }
    float z = 5;
    assert_int_equal(backend_gemm(&b1, 0, 0, 1, 1, 0, 1.0f, &z, &z, 0.0f, &z), ST_OK);  // k = 0: c = 0
    assert_true(z == 0.0f);
    assert_int_equal(backend_gemm(&b1, 0, 0, -1, 1, 1, 1.0f, &z, &z, 0.0f, &z), ST_INPUT);
    backend_destroy(&b1);
    backend_destroy(&b2);
}

static void mgs_ref(int n, int r, double eps, double *a) {
    for (int i = 0; i < r; i++) {
        double ss = 0;
        for (int row = 0; row < n; row++) ss += a[row * r + i] * a[row * r + i];
        const double den = sqrt(ss) + eps;
        for (int row = 0; row < n; row++) a[row * r + i] = den > 0 ? a[row * r + i] / den : 0;
        for (int j = i + 1; j < r; j++) {
            double dot = 0;
            for (int row = 0; row < n; row++) dot += a[row * r + i] * a[row * r + j];
            for (int row = 0; row < n; row++) a[row * r + j] -= dot * a[row * r + i];
        }
    }
}

static void test_orthogonalize(void **state) {
    (void)state;
    backend be = make_cpu(1);
    rng r;
    rng_seed(&r, 12);
    const int shapes[][2] = {{40, 1}, {40, 2}, {300, 5}, {4, 4}};
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
        const int n = shapes[sh][0], k = shapes[sh][1];
        float *a = fbuf((size_t)n * k);
        double *ref = dbuf((size_t)n * k);
        fill_uniform(&r, a, (size_t)n * k, -1, 1);
        to_double(a, ref, (size_t)n * k);
        assert_int_equal(backend_orthogonalize(&be, n, k, 0.0f, a), ST_OK);
        mgs_ref(n, k, 0, ref);
        for (size_t i = 0; i < (size_t)n * k; i++) assert_true(fabs(a[i] - ref[i]) < 1e-5);
        for (int i = 0; i < k; i++)  // orthonormal columns
            for (int j = 0; j < k; j++) {
                double dot = 0;
                for (int row = 0; row < n; row++) dot += (double)a[row * k + i] * a[row * k + j];
                if (fabs(dot - (i == j)) > 1e-5) fail_msg("%dx%d: column %d . column %d = %g", n, k, i, j, dot);
            }
        free(a), free(ref);
    }
    // A zero column stays zero (eps 0), and eps scales a column to norm |c| / (|c| + eps).
    float z[6] = {0, 3, 0, 4, 0, 0};  // [3, 2]: column 0 zero, column 1 (3, 4, 0)
    assert_int_equal(backend_orthogonalize(&be, 3, 2, 0.0f, z), ST_OK);
    assert_true(z[0] == 0 && z[2] == 0 && z[4] == 0);
    assert_true(fabsf(z[1] - 0.6f) < 1e-7f && fabsf(z[3] - 0.8f) < 1e-7f);
    float e[2] = {3, 4};
    assert_int_equal(backend_orthogonalize(&be, 2, 1, 5.0f, e), ST_OK);
    assert_true(fabsf(e[0] - 0.3f) < 1e-7f && fabsf(e[1] - 0.4f) < 1e-7f);
    assert_int_equal(backend_orthogonalize(&be, 2, 3, 0.0f, e), ST_INPUT);  // r > n
    backend_destroy(&be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv_matches_reference_and_finite_differences),
        cmocka_unit_test(test_conv_dnnl_matches_im2col),
        cmocka_unit_test(test_pool_matches_reference_and_finite_differences),
        cmocka_unit_test(test_pool_ties_pick_first),
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_dense_matches_reference_and_finite_differences),
        cmocka_unit_test(test_bn_matches_reference_and_finite_differences),
        cmocka_unit_test(test_bn_halves_average_to_the_whole),
        cmocka_unit_test(test_bn_bad_input),
        cmocka_unit_test(test_softmax_xent),
        cmocka_unit_test(test_adam_steps),
        cmocka_unit_test(test_sgd_steps),
        cmocka_unit_test(test_gather),
        cmocka_unit_test(test_gather_aug_hash_pinned),
        cmocka_unit_test(test_gather_aug_known_image),
        cmocka_unit_test(test_gather_aug_determinism_and_spread),
        cmocka_unit_test(test_scale_and_count_nonfinite),
        cmocka_unit_test(test_clip_grad_norm),
        cmocka_unit_test(test_memory_ops),
        cmocka_unit_test(test_desc_init),
        cmocka_unit_test(test_backend_create),
        cmocka_unit_test(test_marks),
        cmocka_unit_test(test_progress_hook_runs_during_backward),
        cmocka_unit_test(test_bench_reference_cnn),
        cmocka_unit_test(test_add_act_and_act_backward),
        cmocka_unit_test(test_channel_copy),
        cmocka_unit_test(test_dropout),
        cmocka_unit_test(test_avgpool),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_orthogonalize),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
