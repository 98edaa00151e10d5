// test_powersgd.c — PowerSGD (src/powersgd.c) on the CPU backend, two ranks simulated in one process (the
// all-reduce is the average of the two ranks' buffers): the math against a double-precision re-implementation of
// PyTorch's powerSGD_hook step, exact recovery of an exactly low-rank average, error feedback's invariant, the
// uncompressed part, and the layout (vectors, small matrices, a tensor split over buckets, the rank cap).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "model.h"
#include "powersgd.h"
#include "test_util.h"

#define OKS(expr) assert_int_equal((expr), ST_OK)

// A model of dense-like layers only, enough for model_param_tensor: layer l has a [rows[l], cols[l]] weight (cols 0:
// a vector of rows[l]) and a bias of nb[l] (0: none); the buffer in reverse layer order, weight then bias.
static model *fake_model(int n, const int *rows, const int *cols, const int *nb) {
    model *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->n_layers = n;
    size_t off = 0;
    for (int l = n - 1; l >= 0; l--) {
        model_layer *ly = &m->layers[l];
        snprintf(ly->name, sizeof ly->name, "l%d", l);
        ly->w_ndim = cols[l] ? 2 : 1;
        ly->w_shape[0] = rows[l], ly->w_shape[1] = cols[l];
        ly->n_w = (size_t)rows[l] * (cols[l] ? cols[l] : 1);
        ly->w_off = off, off += ly->n_w;
        ly->n_b = (size_t)nb[l];
        ly->b_off = off, off += ly->n_b;
    }
    m->n_params = off;
    return m;
}

static void avg2(float *a, float *b, size_t n) {
    for (size_t i = 0; i < n; i++) a[i] = b[i] = (a[i] + b[i]) * 0.5f;
}

// One compressed step of every bucket on both ranks; the all-reduces are avg2.
static void step2(powersgd *ps[2], int n_buckets, float *g[2]) {
    for (int i = 0; i < n_buckets; i++) {
        float *buf[2];
        size_t n[2];
        for (int r = 0; r < 2; r++) OKS(powersgd_compress(ps[r], i, g[r], &buf[r], &n[r]));
        assert_int_equal(n[0], n[1]);
        avg2(buf[0], buf[1], n[0]);
        for (int r = 0; r < 2; r++) OKS(powersgd_project(ps[r], i, g[r], &buf[r], &n[r]));
        avg2(buf[0], buf[1], n[0]);
        for (int r = 0; r < 2; r++) OKS(powersgd_decompress(ps[r], i, g[r]));
    }
}

static float *frand(rng *r, size_t n) {
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) p[i] = 2 * rng_uniform(r) - 1;
    return p;
}

static void mgs(int n, int k, double *a) {
    for (int i = 0; i < k; i++) {
        double ss = 0;
        for (int row = 0; row < n; row++) ss += a[row * k + i] * a[row * k + i];
        for (int row = 0; row < n; row++) a[row * k + i] /= sqrt(ss);
        for (int j = i + 1; j < k; j++) {
            double d = 0;
            for (int row = 0; row < n; row++) d += a[row * k + i] * a[row * k + j];
            for (int row = 0; row < n; row++) a[row * k + j] -= d * a[row * k + i];
        }
    }
}

// PyTorch's hook for one matrix at two ranks, in double: Q orthogonalised, P = avg(M_r Q) orthogonalised (a sum in
// PyTorch: the same after orthogonalisation), Q = avg(M_r^T P), out = P Q^T. q: [cols, k], in and out.
static void hook_ref(int rows, int cols, int k, const double *m0, const double *m1, double *q, double *out) {
    double *p = calloc((size_t)rows * k, sizeof *p), *q2 = calloc((size_t)cols * k, sizeof *q2);
    mgs(cols, k, q);
    const double *ms[2] = {m0, m1};
    for (int r = 0; r < 2; r++)
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < k; j++)
                for (int l = 0; l < cols; l++) p[i * k + j] += 0.5 * ms[r][i * cols + l] * q[l * k + j];
    mgs(rows, k, p);
    for (int r = 0; r < 2; r++)
        for (int l = 0; l < cols; l++)
            for (int j = 0; j < k; j++)
                for (int i = 0; i < rows; i++) q2[l * k + j] += 0.5 * ms[r][i * cols + l] * p[i * k + j];
    for (int i = 0; i < rows; i++)
        for (int l = 0; l < cols; l++) {
            double s = 0;
            for (int j = 0; j < k; j++) s += p[i * k + j] * q2[l * k + j];
            out[i * cols + l] = s;
        }
    memcpy(q, q2, (size_t)cols * k * sizeof *q);
    free(p), free(q2);
}

// ---------------------------------------------------------------------------------------------------------

// Three steps of a [24, 20] matrix and a bias of 24 at rank 2, from a known Q, against hook_ref with error feedback:
// every output within 1e-5 of the reference's, on both ranks alike.
static void test_matches_reference(void **state) {
    (void)state;
    backend be;
    OKS(backend_cpu_create(&be, 1));
    const int R = 24, C = 20, K = 2;
    model *m = fake_model(1, (int[]){R}, (int[]){C}, (int[]){R});
    const size_t np = m->n_params, begin = 0, end = np;
    powersgd *ps[2];
    const powersgd_opts o = {.rank = K, .start_step = 0, .seed = 3};
    for (int r = 0; r < 2; r++) OKS(powersgd_create(&ps[r], &be, m, 1, &begin, &end, &o));
    assert_int_equal(powersgd_q_floats(ps[0]), (size_t)C * K);
    rng g;
    rng_seed(&g, 5);
    float *q0 = frand(&g, (size_t)C * K);
    for (int r = 0; r < 2; r++) OKS(powersgd_state_upload(ps[r], q0, NULL));
    double *q = malloc((size_t)C * K * sizeof *q), *err[2], *in[2], *out = malloc((size_t)R * C * sizeof *out);
    for (int j = 0; j < C * K; j++) q[j] = q0[j];
    for (int r = 0; r < 2; r++) err[r] = calloc(np, sizeof(double)), in[r] = calloc(np, sizeof(double));
    for (int step = 0; step < 3; step++) {
        float *gr[2];
        for (int r = 0; r < 2; r++) {
            gr[r] = frand(&g, np);
            for (size_t i = 0; i < np; i++) in[r][i] = gr[r][i] + err[r][i];
        }
        step2(ps, 1, gr);
        // the matrix is the buffer's [0, R C), the bias [R C, np)
        hook_ref(R, C, K, in[0], in[1], q, out);
        for (int r = 0; r < 2; r++) {
            for (int i = 0; i < R * C; i++)
                if (fabs(gr[r][i] - out[i]) > 1e-5) fail_msg("step %d rank %d: out[%d] %g, reference %g", step, r, i, gr[r][i], out[i]);
            for (size_t i = (size_t)R * C; i < np; i++) assert_true(fabs(gr[r][i] - 0.5 * (in[0][i] + in[1][i])) < 1e-6);
            for (size_t i = 0; i < np; i++) err[r][i] = in[r][i] - gr[r][i];
        }
        assert_memory_equal(gr[0], gr[1], np * sizeof(float));  // every rank steps on the same gradient
        free(gr[0]), free(gr[1]);
    }
    float *e = malloc(np * sizeof *e);
    OKS(powersgd_state_download(ps[1], NULL, e));  // the error is the input less the output, per rank
    for (size_t i = 0; i < np; i++) assert_true(fabs(e[i] - err[1][i]) < 1e-5);
    free(e), free(q0), free(q), free(out);
    for (int r = 0; r < 2; r++) free(err[r]), free(in[r]), powersgd_destroy(ps[r]);
    free(m);
    backend_destroy(&be);
}

// The ranks' average is exactly rank 2 (each rank's own matrix is not): rank-2 PowerSGD gives it back at the first
// step; the errors are then each rank's deviation, which average to zero, so the next step (zero gradients, error
// fed back) sends zero: a zero P is orthogonalised to zeros, not NaN.
static void test_exact_low_rank(void **state) {
    (void)state;
    backend be;
    OKS(backend_cpu_create(&be, 1));
    const int R = 30, C = 16;
    model *m = fake_model(1, (int[]){R}, (int[]){C}, (int[]){0});
    const size_t np = m->n_params, begin = 0, end = np;
    powersgd *ps[2];
    const powersgd_opts o = {.rank = 2, .start_step = 0, .seed = 9};
    for (int r = 0; r < 2; r++) OKS(powersgd_create(&ps[r], &be, m, 1, &begin, &end, &o));
    rng g;
    rng_seed(&g, 6);
    float *u = frand(&g, R * 2), *v = frand(&g, C * 2), *d = frand(&g, np), *a = malloc(np * sizeof *a);
    float *gr[2] = {malloc(np * sizeof(float)), malloc(np * sizeof(float))};
    for (int i = 0; i < R; i++)
        for (int j = 0; j < C; j++) a[i * C + j] = u[i * 2] * v[j * 2] + u[i * 2 + 1] * v[j * 2 + 1];
    for (size_t i = 0; i < np; i++) gr[0][i] = a[i] + d[i], gr[1][i] = a[i] - d[i];
    step2(ps, 1, gr);
    for (size_t i = 0; i < np; i++)
        if (fabs(gr[0][i] - a[i]) > 1e-5) fail_msg("out[%zu] = %g, the average is %g", i, gr[0][i], a[i]);
    memset(gr[0], 0, np * sizeof(float)), memset(gr[1], 0, np * sizeof(float));
    step2(ps, 1, gr);
    for (size_t i = 0; i < np; i++) assert_true(isfinite(gr[0][i]) && fabs(gr[0][i]) < 1e-5);
    free(u), free(v), free(d), free(a), free(gr[0]), free(gr[1]);
    for (int r = 0; r < 2; r++) powersgd_destroy(ps[r]);
    free(m);
    backend_destroy(&be);
}

// Error feedback: with the same gradient A every step, the outputs sum to T A less the last error (each step's input
// is A plus the last error, and the new error is the input less the output), and the mean output approaches A
// although each output is only rank 1. Without the feedback the sum would miss A's other directions entirely.
static void test_error_feedback(void **state) {
    (void)state;
    backend be;
    OKS(backend_cpu_create(&be, 1));
    const int R = 12, C = 10, T = 60;
    model *m = fake_model(1, (int[]){R}, (int[]){C}, (int[]){0});
    const size_t np = m->n_params, begin = 0, end = np;
    powersgd *ps[2];
    const powersgd_opts o = {.rank = 1, .start_step = 0, .seed = 4};
    for (int r = 0; r < 2; r++) OKS(powersgd_create(&ps[r], &be, m, 1, &begin, &end, &o));
    rng g;
    rng_seed(&g, 7);
    float *a = frand(&g, np), *gr[2] = {malloc(np * sizeof(float)), malloc(np * sizeof(float))}, *e = malloc(np * sizeof(float));
    double *sum = calloc(np, sizeof *sum), first = 0, last = 0;
    for (int t = 1; t <= T; t++) {
        memcpy(gr[0], a, np * sizeof(float)), memcpy(gr[1], a, np * sizeof(float));
        step2(ps, 1, gr);
        double dev = 0;
        for (size_t i = 0; i < np; i++) sum[i] += gr[0][i], dev = fmax(dev, fabs(sum[i] / t - a[i]));
        if (t == 1) first = dev;
        last = dev;
    }
    OKS(powersgd_state_download(ps[0], NULL, e));
    for (size_t i = 0; i < np; i++)
        if (fabs(sum[i] + e[i] - (double)T * a[i]) > 1e-3) fail_msg("sum of outputs + error != T A at %zu", i);
    if (!(last < first / 5)) fail_msg("mean output off A by %g after 1 step, %g after %d", first, last, T);
    free(a), free(gr[0]), free(gr[1]), free(e), free(sum);
    for (int r = 0; r < 2; r++) powersgd_destroy(ps[r]);
    free(m);
    backend_destroy(&be);
}

// Which pieces are matrices: a [64, 48] weight (compressed), its bias and a 1-D weight (vectors), a [4, 3] weight
// (too small: 2 (4 + 3) > 12), and the [64, 48] weight cut by a bucket boundary inside a row: each part's whole rows
// are matrices of their own, the cut row travels uncompressed; the floats sent are counted from that.
static void test_layout(void **state) {
    (void)state;
    backend be;
    OKS(backend_cpu_create(&be, 1));
    model *m = fake_model(3, (int[]){64, 4, 8}, (int[]){48, 3, 0}, (int[]){64, 0, 0});
    const size_t np = m->n_params;  // 8 + 12 + 3072 + 64
    assert_int_equal(np, 3156);
    powersgd *ps;
    powersgd_stats s;
    const powersgd_opts o = {.rank = 2, .start_step = 5, .seed = 1};
    size_t begin = 0, end = np;
    OKS(powersgd_create(&ps, &be, m, 1, &begin, &end, &o));
    powersgd_get_stats(ps, &s);
    assert_int_equal(s.tensors, 4);
    assert_int_equal(s.matrix_tensors, 2);
    assert_int_equal(s.compressed, 1);
    assert_int_equal(s.pieces, 1);
    assert_int_equal(s.floats_plain, np);
    assert_int_equal(s.floats_sent, (64 + 48) * 2 + (np - 64 * 48));
    // the planner's count (powersgd_span_floats) agrees: P's and the rest, then the Q's
    size_t sp, sq;
    powersgd_span_floats(m, 2, 0, np, &sp, &sq);
    assert_int_equal(sp, 64 * 2 + (np - 64 * 48));
    assert_int_equal(sq, 48 * 2);
    assert_int_equal(sp + sq, s.floats_sent);
    // a span that cuts the big weight counts it uncompressed; one of the small layers alone: all of it in P
    powersgd_span_floats(m, 2, 0, 100, &sp, &sq);
    assert_int_equal(sp, 100);
    assert_int_equal(sq, 0);
    assert_false(powersgd_active(ps, 4));
    assert_true(powersgd_active(ps, 5));
    assert_false(powersgd_started(ps));
    powersgd_destroy(ps);
    // Two buckets cutting the big weight (at offset 20) 10 floats into its row 30: rows 0-29 | row 30 | rows 31-63.
    const size_t cut = 20 + 30 * 48 + 10, b2[2] = {0, cut}, e2[2] = {cut, np};
    OKS(powersgd_create(&ps, &be, m, 2, b2, e2, &o));
    powersgd_get_stats(ps, &s);
    assert_int_equal(s.compressed, 1);
    assert_int_equal(s.pieces, 2);
    assert_int_equal(s.floats_sent, (30 + 48) * 2 + (33 + 48) * 2 + 20 + 48 + 64);
    assert_int_equal(powersgd_q_floats(ps), 2 * 48 * 2);
    const uint64_t h2 = powersgd_layout_hash(ps);
    powersgd_destroy(ps);
    // The rank above what any matrix can take: none compressed, and the largest that compresses one is reported.
    const powersgd_opts big = {.rank = 100, .start_step = 0, .seed = 1};
    OKS(powersgd_create(&ps, &be, m, 1, &begin, &end, &big));
    powersgd_get_stats(ps, &s);
    assert_int_equal(s.compressed, 0);
    assert_int_equal(s.max_rank, 13);  // 2 (64 + 48) r < 3072: r <= 13
    assert_true(powersgd_layout_hash(ps) != h2);
    powersgd_destroy(ps);
    free(m);
    backend_destroy(&be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_reference),
        cmocka_unit_test(test_exact_low_rank),
        cmocka_unit_test(test_error_feedback),
        cmocka_unit_test(test_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
