// linalg_cuda.cu — the CUDA backend's dense linear algebra for gradient compression (PowerSGD, src/powersgd.c):
// gemm on cuBLAS and the column orthogonalisation (modified Gram-Schmidt) as one kernel per matrix.
//
// Semantics are those of the CPU reference (src/cpu/linalg_cpu.c, documented in src/backend_ops.def);
// tests/test_backend_cuda.c compares the two. Kernels first, launchers (stream last) after.
#include <stdint.h>

#include "backend_cuda_impl.h"

// ---------------------------------------------------------------------------------------------------------
// Kernels

// One block per [n, r] matrix (r is small: the approximation's rank): for each column in order, its norm and
// then its dot product with every later column are block sums in double; s_val hands each sum to every thread.
// block_sum reuses its shared partials, so each sum is followed by a barrier before the next one starts.
__global__ void orthogonalize_kernel(int n, int r, float eps, float *a) {
    __shared__ double s_val;
    for (int i = 0; i < r; i++) {
        double ss = 0;
        for (int row = threadIdx.x; row < n; row += blockDim.x) {
            const double v = a[(size_t)row * r + i];
            ss += v * v;
        }
        ss = block_sum(ss);
        if (threadIdx.x == 0) s_val = ss;
        __syncthreads();
        const float den = (float)sqrt(s_val) + eps;
        __syncthreads();
        // Each thread reads back only the rows it wrote itself: no barrier needed before the dot products.
        for (int row = threadIdx.x; row < n; row += blockDim.x) {
            float *p = &a[(size_t)row * r + i];
            *p = den > 0.0f ? *p / den : 0.0f;
        }
        for (int j = i + 1; j < r; j++) {
            double dot = 0;
            for (int row = threadIdx.x; row < n; row += blockDim.x)
                dot += (double)a[(size_t)row * r + i] * a[(size_t)row * r + j];
            dot = block_sum(dot);
            if (threadIdx.x == 0) s_val = dot;
            __syncthreads();
            const float d = (float)s_val;
            __syncthreads();
            for (int row = threadIdx.x; row < n; row += blockDim.x)
                a[(size_t)row * r + j] -= d * a[(size_t)row * r + i];
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Launchers

// Row-major c[m,n] is, read column-major, c^T [n x m] (ld n) = op(b)^T op(a)^T: the product with the operands
// swapped. b stored [k,n] is op(b)^T as it is (N, ld n), stored [n,k] (tb) its transpose (T, ld k); a stored
// [m,k] is op(a)^T as it is (N, ld k), stored [k,m] (ta) its transpose (T, ld m).
int cuda_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, const float *a, const float *b,
              float beta, float *c) {
    cuda_ctx *cc = (cuda_ctx *)ctx;
    if (m < 0 || n < 0 || k < 0) return ERR(ST_INPUT, "gemm: m=%d n=%d k=%d must not be negative", m, n, k);
    if (m == 0 || n == 0) return ST_OK;
    if (k == 0 && beta == 0.0f) {  // as the CPU op: c = 0 (cuBLAS with k = 0 would also give beta c)
        cudaCheck(cudaMemsetAsync(c, 0, (size_t)m * n * sizeof(float), cc->stream));
        return ST_OK;
    }
    cublasCheck(cublasSgemm(cc->cublas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha,
                            b, tb ? k : n, a, ta ? m : k, &beta, c, n));
    return ST_OK;
}

int cuda_orthogonalize(void *ctx, int n, int r, float eps, float *a) {
    cuda_ctx *cc = (cuda_ctx *)ctx;
    if (n < 1 || r < 1 || r > n) return ERR(ST_INPUT, "orthogonalize: n=%d r=%d (need 1 <= r <= n)", n, r);
    if (!(eps >= 0.0f)) return ERR(ST_INPUT, "orthogonalize: eps %g must be >= 0", (double)eps);
    orthogonalize_kernel<<<1, CUDA_THREADS, 0, cc->stream>>>(n, r, eps, a);
    cudaCheckLaunch();
    return ST_OK;
}
