// precision_cuda.cu — net.precision=bf16/fp16 on the CUDA backend (docs/precision.md): the round_to op, bit for bit
// the CPU's precision_round_bf16/_fp16 (src/precision.h: the same formulas on the bits, so NaN payloads, overflow to
// Inf and fp16's subnormals come out the same); the casts between the fp32 buffers that hold rounded values and the
// 16-bit copies cuDNN and cuBLAS read (exact: the values are representable; the cast rounds first, so a value that
// was not rounded gets the op's rounding, never a second one; under act16 the cast out also gives conv's
// backward-filter its fp32 copies of the 16-bit x and dy); and the scratch that dense's 16-bit copies live in.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "backend_cuda_impl.h"

// ---------------------------------------------------------------------------------------------------------
// Kernels

// round_bf16_dev, bf16_bits_dev and round_fp16_dev: backend_cuda_impl.h (the bf16 parameter gradients and the 16-bit
// activations (act16) round with them too).

__global__ void round_to_kernel(size_t n, int format, const float *x, float *y) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = format == PREC_BF16 ? round_bf16_dev(x[i]) : round_fp16_dev(x[i]);
}

// fp32 -> 16 bits: rounded as round_to, then stored (bf16: the top half of the rounded bits; fp16: the conversion of
// a representable value, exact, NaN staying a NaN).
__global__ void cast_in_bf16_kernel(size_t n, const float *x, __nv_bfloat16 *y) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __ushort_as_bfloat16(bf16_bits_dev(x[i]));
}

__global__ void cast_in_fp16_kernel(size_t n, const float *x, __half *y) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(round_fp16_dev(x[i]));
}

// The casts in, written permuted: x [n][c][hw] to y [n][hw][c] (conv weights KCRS to KRSC), one thread per value.
static __device__ __forceinline__ void cast_in_one(float v, __nv_bfloat16 *y) {
    *y = __ushort_as_bfloat16(bf16_bits_dev(v));
}
static __device__ __forceinline__ void cast_in_one(float v, __half *y) { *y = __float2half_rn(round_fp16_dev(v)); }

template <typename T>
__global__ void cast_in_nhwc_kernel(unsigned total, int c, int hw, const float *x, T *y) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const unsigned ch = i % (unsigned)c, t = i / (unsigned)c, q = t % (unsigned)hw, b = t / (unsigned)hw;
        cast_in_one(x[((size_t)b * c + ch) * hw + q], &y[i]);
    }
}

__global__ void cast_out_bf16_kernel(size_t n, const __nv_bfloat16 *x, float *y) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __uint_as_float((uint32_t)__bfloat16_as_ushort(x[i]) << 16);
}

__global__ void cast_out_fp16_kernel(size_t n, const __half *x, float *y) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = __half2float(x[i]);
}

// ---------------------------------------------------------------------------------------------------------
// Launchers

static int format_check(int format, const char *op) {
    if (format != PREC_BF16 && format != PREC_FP16)
        return ERR(ST_RUNTIME, "%s: format %d is neither bf16 (%d) nor fp16 (%d)", op, format, PREC_BF16, PREC_FP16);
    return ST_OK;
}

int cuda_round_to(void *ctx, size_t n, int format, const float *x, float *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(format_check(format, "round_to"));
    if (n == 0) return ST_OK;
    round_to_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, format, x, y);
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_lp_cast_in(cuda_ctx *c, int format, size_t n, const float *x, void *y16) {
    TRY(format_check(format, "cast to 16 bits"));
    if (n == 0) return ST_OK;
    if (format == PREC_BF16)
        cast_in_bf16_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, x, (__nv_bfloat16 *)y16);
    else
        cast_in_fp16_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, x, (__half *)y16);
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_lp_cast_in_nhwc(cuda_ctx *c, int format, int n, int ch, int hw, const float *x, void *y16) {
    TRY(format_check(format, "cast to 16 bits"));
    const size_t total = (size_t)n * ch * hw;
    if (total == 0) return ST_OK;
    if (total > (size_t)UINT32_MAX) return ERR(ST_INPUT, "cast to 16 bits: %zu values, more than 2^32", total);
    if (format == PREC_BF16)
        cast_in_nhwc_kernel<__nv_bfloat16><<<cuda_blocks(c, total), CUDA_THREADS, 0, c->stream>>>(
            (unsigned)total, ch, hw, x, (__nv_bfloat16 *)y16);
    else
        cast_in_nhwc_kernel<__half><<<cuda_blocks(c, total), CUDA_THREADS, 0, c->stream>>>((unsigned)total, ch, hw, x,
                                                                                           (__half *)y16);
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_lp_cast_out(cuda_ctx *c, int format, size_t n, const void *x16, float *y) {
    TRY(format_check(format, "cast from 16 bits"));
    if (n == 0) return ST_OK;
    if (format == PREC_BF16)
        cast_out_bf16_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, (const __nv_bfloat16 *)x16, y);
    else
        cast_out_fp16_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, (const __half *)x16, y);
    cudaCheckLaunch();
    return ST_OK;
}

// Grown outside a capture only (cudaMalloc cannot be captured): the first, eager training step sizes it for the
// step a graph captures later; a larger need inside a capture is an error the capture's fall-back reports. The old
// buffer is retired, not freed: a graph captured before (the training step's, when a larger evaluation batch grows
// the scratch) still reads it at every replay. ctx_free frees them all.
int cuda_lp_scratch(cuda_ctx *c, size_t bytes, void **out) {
    if (bytes > c->lp_scratch_bytes) {
        if (c->capturing)
            return ERR(ST_RUNTIME, "cuda backend: the 16-bit scratch must grow to %zu bytes inside a CUDA graph "
                                   "capture (an eager step sizes it first)", bytes);
        if (c->lp_scratch && c->n_lp_retired == LP_RETIRED_MAX)
            return ERR(ST_RUNTIME, "cuda backend: the 16-bit scratch grew %d times", LP_RETIRED_MAX);
        size_t want = 2 * c->lp_scratch_bytes > bytes ? 2 * c->lp_scratch_bytes : bytes;
        void *p = NULL;
        cudaCheck(cudaMalloc(&p, want));
        if (c->lp_scratch) c->lp_retired[c->n_lp_retired++] = c->lp_scratch;
        c->lp_scratch = p;
        c->lp_scratch_bytes = want;
    }
    *out = c->lp_scratch;
    return ST_OK;
}
