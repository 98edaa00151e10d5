// linalg_cpu.c — the CPU backend's dense linear algebra for gradient compression (PowerSGD, src/powersgd.c):
// gemm (OpenBLAS) and the column orthogonalisation (modified Gram-Schmidt).
//
// Both give results that do not depend on the thread count: PowerSGD decompresses the same averaged factors on
// every rank into the gradient every replica steps on, and ranks on different nodes may run different thread
// counts. gemm cuts c into fixed blocks of GEMM_ROWS rows (one sgemm each, whatever the number of parts), and
// the orthogonalisation runs serially (its matrices are n x r with r small).
#include <cblas.h>
#include <math.h>
#include <stdint.h>

#include "backend_cpu_impl.h"

// ---------------------------------------------------------------------------------------------------------
// gemm

#define GEMM_ROWS 64

typedef struct gemm_job {
    int ta, tb, m, n, k;
    float alpha, beta;
    const float *a, *b;
    float *c;
} gemm_job;

static void gemm_part(void *arg, int part, int parts) {
    const gemm_job *j = arg;
    const int64_t blocks = (j->m + GEMM_ROWS - 1) / GEMM_ROWS;
    int64_t lo, hi;
    split_range(blocks, parts, part, &lo, &hi);
    for (int64_t blk = lo; blk < hi; blk++) {
        const int r0 = (int)(blk * GEMM_ROWS), rows = j->m - r0 < GEMM_ROWS ? j->m - r0 : GEMM_ROWS;
        // op(a)'s rows r0..: a stored [m,k] starts at row r0; stored [k,m] (ta) at column r0, leading dim m.
        const float *a = j->ta ? j->a + r0 : j->a + (size_t)r0 * j->k;
        cblas_sgemm(CblasRowMajor, j->ta ? CblasTrans : CblasNoTrans, j->tb ? CblasTrans : CblasNoTrans, rows, j->n,
                    j->k, j->alpha, a, j->ta ? j->m : j->k, j->b, j->tb ? j->k : j->n, j->beta,
                    j->c + (size_t)r0 * j->n, j->n);
    }
}

int cpu_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, const float *a, const float *b, float beta,
             float *c) {
    cpu_ctx *cc = ctx;
    if (m < 0 || n < 0 || k < 0) return ERR(ST_INPUT, "gemm: m=%d n=%d k=%d must not be negative", m, n, k);
    if (m == 0 || n == 0) return ST_OK;
    if (k == 0) {  // op(a) op(b) is zero: c = beta c (beta 0 overwrites, NaN included)
        for (size_t i = 0; i < (size_t)m * n; i++) c[i] = beta == 0.0f ? 0.0f : beta * c[i];
        return ST_OK;
    }
    gemm_job j = {.ta = ta != 0, .tb = tb != 0, .m = m, .n = n, .k = k, .alpha = alpha, .beta = beta, .a = a, .b = b, .c = c};
    const int blocks = (m + GEMM_ROWS - 1) / GEMM_ROWS;
    int parts = parts_for(cc, (double)m * n * k, 2e5);
    if (parts > blocks) parts = blocks;
    cpu_pool_run(&cc->pool, parts, gemm_part, &j);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Orthogonalisation: PyTorch's _orthogonalize_gram_schmidt on one [n, r] matrix (backend_ops.def).

int cpu_orthogonalize(void *ctx, int n, int r, float eps, float *a) {
    (void)ctx;
    if (n < 1 || r < 1 || r > n) return ERR(ST_INPUT, "orthogonalize: n=%d r=%d (need 1 <= r <= n)", n, r);
    if (!(eps >= 0.0f)) return ERR(ST_INPUT, "orthogonalize: eps %g must be >= 0", (double)eps);
    for (int i = 0; i < r; i++) {
        double ss = 0;
        for (int64_t row = 0; row < n; row++) ss += (double)a[row * r + i] * a[row * r + i];
        const float norm = (float)sqrt(ss);
        const float den = norm + eps;
        for (int64_t row = 0; row < n; row++) a[row * r + i] = den > 0.0f ? a[row * r + i] / den : 0.0f;
        for (int j = i + 1; j < r; j++) {
            double dot = 0;
            for (int64_t row = 0; row < n; row++) dot += (double)a[row * r + i] * a[row * r + j];
            const float d = (float)dot;
            for (int64_t row = 0; row < n; row++) a[row * r + j] -= d * a[row * r + i];
        }
    }
    return ST_OK;
}
