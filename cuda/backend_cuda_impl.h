// backend_cuda_impl.h — private to cuda/: the CUDA backend's context and the op entry points each .cu file
// contributes to the table in backend_cuda.cu.
//
//   backend_cuda.cu  context, memory, CUDA Graph capture/replay, the table
//   conv_cuda.cu     convolution (cuDNN) with fused bias + activation kernels
//   bn_cuda.cu       batch normalisation (statistics, apply, the two halves of backward)
//   ops_cuda.cu      pooling, dense (cuBLAS), softmax cross-entropy, optimizers, gather, utilities
//   layer_ops_cuda.cu  the ops of [shortcut], [route], [dropout], [avgpool], and layout_convert
//   linalg_cuda.cu   gemm (cuBLAS) and orthogonalize: PowerSGD's products and Gram-Schmidt
//   precision_cuda.cu  net.precision=bf16/fp16: round_to, the casts to and from 16 bits, dense's 16-bit scratch
//
// Activations (backend_ops.def) are float32, or on a context created with backend_options.act16 the 16-bit bit
// patterns of bf16 or fp16 (cuda_ctx.act16, fixed at creation, always the compute precision): every activation
// kernel is templated on the storage type (float, act_bf16, act_fp16 below; CUDA_ACT_DISPATCH picks it), loads
// convert exactly to float, the kernel computes in float, and stores round to nearest even bit for bit as the CPU's
// precision_to16 (src/precision.h). cuDNN and cuBLAS read and write the 16-bit buffers directly.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include "cuda_common.h"

extern "C" {
#include "backend.h"
#include "config.h"  // PREC_BF16, PREC_FP16, LAYOUT_NHWC
}

#define CUDA_THREADS 256
// Host-to-device uploads up to this size go through a pinned staging ring, so that the per-step uploads
// (optimizer hyper-parameters, batch indices) never make the host wait for the GPU.
#define STAGE_SLOTS 8
#define STAGE_BYTES ((size_t)64 << 10)
// cuBLAS workspace, set explicitly so that graph capture never sees cuBLAS allocate one.
#define CUBLAS_WS_BYTES ((size_t)32 << 20)
// Old 16-bit scratch buffers kept (it grows at least twofold each time: a few are ever retired).
#define LP_RETIRED_MAX 32

typedef struct cuda_ctx {
    int device;
    int sm_count;
    int cc;             // compute capability, major * 10 + minor
    int tf32;           // backend_cuda_options (backend_cuda.h)
    int deterministic;
    int precision;      // PREC_BF16 or PREC_FP16: conv and dense read 16-bit copies (tensor cores); 0: fp32
    int nhwc;           // backend_options.layout == LAYOUT_NHWC (fixed at creation): activations N,H,W,C
    int grads16;        // backend_options.grads16 (fixed at creation; needs precision PREC_BF16, which
                        // backend_cuda_set_options then keeps): conv_backward, dense_backward and bn_grad_stats write
                        // dw and db as bf16 bits, rounded once from their fp32 sums
    int act16;          // backend_options.act16 (fixed at creation; PREC_BF16 or PREC_FP16, equal to precision, which
                        // backend_cuda_set_options then keeps; 0: float32): activations are stored in 16 bits
    cudaStream_t stream;  // every op runs here; never the legacy default stream
    cublasHandle_t cublas;
    cudnnHandle_t cudnn;
    void *cublas_ws;
    double *partials;   // per-block partial sums of ordered two-pass reductions (sm_count * 32 of them)
    // Convolution plans made so far: the largest batch and the largest workspace reported (conv_cuda.cu).
    int conv_max_n;
    size_t conv_ws_high;
    // Graph of one training step.
    int capturing;
    cudaGraphExec_t exec;
    // Pinned staging ring for small uploads; ev[i] marks when slot i has been read by the GPU.
    char *stage;
    cudaEvent_t stage_ev[STAGE_SLOTS];
    int stage_next;
    // stage_upload: its copy stream (made at the first use) and the event the copy waits on.
    cudaStream_t copy_stream;
    cudaEvent_t copy_after;
    // dense's 16-bit copies of its operands under precision, and under act16 its fp32 product (precision_cuda.cu,
    // ops_cuda.cu; conv's copies live in the workspace).
    // A grown scratch's old buffer is kept until destroy: a captured graph may still read it.
    void *lp_scratch;
    size_t lp_scratch_bytes;
    void *lp_retired[LP_RETIRED_MAX];
    int n_lp_retired;
} cuda_ctx;

// Blocks for a grid-stride loop over n items: enough to fill the GPU a few times over, never more than needed.
static inline unsigned cuda_blocks(const cuda_ctx *c, size_t n) {
    size_t want = (n + CUDA_THREADS - 1) / CUDA_THREADS;
    size_t cap = (size_t)c->sm_count * 32;
    if (want > cap) want = cap;
    return want ? (unsigned)want : 1u;
}

// ---- conv_cuda.cu
int cuda_conv_prepare(void *ctx, conv_desc *d, size_t *workspace_bytes);
void cuda_conv_release(void *ctx, conv_desc *d);
int cuda_conv_forward(void *ctx, const conv_desc *d, const void *x, const float *w, const float *b, void *y,
                      void *ws);
int cuda_conv_backward(void *ctx, const conv_desc *d, const void *x, const float *w, const void *y, void *dy,
                       void *dx, void *dw, void *db, void *ws);

// ---- bn_cuda.cu
int cuda_bn_stats(void *ctx, const bn_desc *d, const void *x, float *stats);
int cuda_bn_apply(void *ctx, const bn_desc *d, const void *x, const float *stats, const float *w, const float *b,
                  float *running, float *save, void *y);
int cuda_bn_grad_stats(void *ctx, const bn_desc *d, const void *x, const void *y, const float *save, void *dy,
                       void *dw, void *db, float *gstats);
int cuda_bn_grad_input(void *ctx, const bn_desc *d, const void *x, const float *save, const float *w,
                       const float *gstats, const void *dz, void *dx);

// ---- ops_cuda.cu
// y = act(y + b[channel]) in place over `total` activations (the context's storage type) laid out [outer, channels,
// inner] (b may be NULL).
int cuda_bias_act(cuda_ctx *c, void *y, const float *b, int total, int channels, int inner, int act);
// The same from the float32 x into the activations y (stored once, rounded under act16; x may not be y).
int cuda_bias_act_store(cuda_ctx *c, const float *x, void *y, const float *b, int total, int channels, int inner,
                        int act);
int cuda_gather(void *ctx, const uint8_t *images, const int32_t *labels, const int32_t *index, int n,
                int sample_elems, const gather_aug *aug, void *x, int32_t *y);
int cuda_pool_forward(void *ctx, const pool_desc *d, const void *x, void *y, int32_t *argmax);
int cuda_pool_backward(void *ctx, const pool_desc *d, const void *dy, const int32_t *argmax, void *dx);
int cuda_dense_forward(void *ctx, int n, int in, int out, int act, const void *x, const float *w, const float *b,
                       void *y);
int cuda_dense_backward(void *ctx, int n, int in, int out, int act, const void *x, const float *w, const void *y,
                        void *dy, void *dx, void *dw, void *db);
int cuda_softmax_xent(void *ctx, int n, int classes, const void *logits, const int32_t *labels, float smoothing,
                      float scale, void *dlogits, double *loss_acc, int32_t *correct_acc);
int cuda_adam_step(void *ctx, size_t n, float *p, const float *g, float *m, float *v, const adam_hyper *h);
int cuda_sgd_step(void *ctx, size_t n, float *p, const float *g, float *vel, const sgd_hyper *h);
int cuda_scale(void *ctx, size_t n, float alpha, float *x);
int cuda_count_nonfinite(void *ctx, size_t n, const float *x, int32_t *out);
int cuda_add(void *ctx, size_t n, const float *x, float *y);
int cuda_clip_grad_norm(void *ctx, size_t n, float *g, float max_norm, double *sumsq);

// ---- layer_ops_cuda.cu (layer ops of [shortcut], [route], [dropout] and [avgpool])
int cuda_add_act(void *ctx, size_t n, int act, const void *a, const void *b, void *y);
int cuda_act_backward(void *ctx, size_t n, int act, const void *y, const void *dy, void *dx);
int cuda_act_forward(void *ctx, size_t n, int act, const void *x, void *y);
int cuda_act_backward_input(void *ctx, size_t n, int act, const void *x, const void *dy, void *dx);
int cuda_layout_convert(void *ctx, int n, int c, int hw, int to_nhwc, int elem_bytes, const void *x, void *y);
int cuda_channel_copy(void *ctx, int n, int c, int hw, const void *src, int src_c, int src_off, void *dst, int dst_c,
                      int dst_off);
int cuda_dropout(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const void *x, void *y);
int cuda_avgpool_forward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const void *x, void *y);
int cuda_avgpool_backward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const void *dy,
                          void *dx);

// ---- linalg_cuda.cu (PowerSGD's dense linear algebra)
int cuda_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, const float *a, const float *b,
              float beta, float *c);
int cuda_orthogonalize(void *ctx, int n, int r, float eps, float *a);

// ---- precision_cuda.cu (net.precision=bf16/fp16; format: PREC_BF16 or PREC_FP16)
int cuda_round_to(void *ctx, size_t n, int format, const float *x, float *y);
// x rounded to format (as round_to) into the 16-bit y16; and back, exactly
int cuda_lp_cast_in(cuda_ctx *c, int format, size_t n, const float *x, void *y16);
int cuda_lp_cast_out(cuda_ctx *c, int format, size_t n, const void *x16, float *y);
// cuda_lp_cast_in of n blocks of c x hw values, permuted as layout_convert to_nhwc (conv weights KCRS -> KRSC)
int cuda_lp_cast_in_nhwc(cuda_ctx *c, int format, int n, int ch, int hw, const float *x, void *y16);
// *out = the context's 16-bit scratch of at least `bytes` (grown outside a capture only)
int cuda_lp_scratch(cuda_ctx *c, size_t bytes, void **out);
// Bytes of a 16-bit copy of n values, rounded up so that the next copy placed after it stays 256-byte aligned.
static inline size_t cuda_lp_bytes(size_t n) { return (n * 2 + 255) & ~(size_t)255; }
// The same for a float32 copy.
static inline size_t cuda_f32_bytes(size_t n) { return (n * 4 + 255) & ~(size_t)255; }
// Bytes of one activation value: 2 under act16, else 4.
static inline size_t cuda_act_elem(const cuda_ctx *c) { return c->act16 ? 2 : sizeof(float); }

// Runs the statements after T (a kernel launch) with T the type the context's activations are stored in: act_bf16,
// act_fp16 (below) or float, by c->act16. The activation kernels are templated on it.
#define CUDA_ACT_DISPATCH(c, T, ...)                                                                       \
    do {                                                                                                   \
        if ((c)->act16 == PREC_BF16) {                                                                     \
            typedef act_bf16 T;                                                                            \
            __VA_ARGS__;                                                                                   \
        } else if ((c)->act16 == PREC_FP16) {                                                              \
            typedef act_fp16 T;                                                                            \
            __VA_ARGS__;                                                                                   \
        } else {                                                                                           \
            typedef float T;                                                                               \
            __VA_ARGS__;                                                                                   \
        }                                                                                                  \
    } while (0)

// ---------------------------------------------------------------------------------------------------------
// Device helpers shared by the kernels (each .cu is its own translation unit: no separable compilation).
#ifdef __CUDACC__
// The activations: src/act_math.h (one text with the CPU backend's).
#include "act_math.h"

// x rounded to the nearest bf16 value (ties to even), as a float: src/precision.h's precision_round_bf16 on the bits,
// so NaN payloads (quieted, cut) and overflow to Inf come out as the CPU's. __float2bfloat16_rn rounds finite values
// the same way but turns every NaN into one canonical NaN, sign and payload lost.
static __device__ __forceinline__ float round_bf16_dev(float x) {
    const uint32_t u = __float_as_uint(x);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    const uint32_t nan = (u | 0x00400000u) & 0xffff0000u;
    return __uint_as_float((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
}

// The bf16 bit pattern of x (round_bf16_dev's value: its low 16 bits are zero).
static __device__ __forceinline__ uint16_t bf16_bits_dev(float x) {
    return (uint16_t)(__float_as_uint(round_bf16_dev(x)) >> 16);
}

// x rounded to the nearest fp16 value (ties to even), as a float: precision_round_fp16 on the bits.
static __device__ __forceinline__ float round_fp16_dev(float x) {
    const uint32_t u = __float_as_uint(x), sign = u & 0x80000000u, a = u & 0x7fffffffu;
    uint32_t r = (a + 0x0fffu + ((a >> 13) & 1u)) & 0xffffe000u;
    // below 2^-14: the subnormal quantum 2^-24 by the addition's own rounding (__fadd_rn: no contraction, no flush of
    // the sum; an fp32 subnormal input gives 0.5 + tiny = 0.5 either way)
    if (a < 0x38800000u)
        r = __float_as_uint(__fadd_rn(__fadd_rn(__uint_as_float(a), 0.5f), -0.5f));
    if (a >= 0x477ff000u) r = 0x7f800000u;                          // >= 65520: Inf
    if (a > 0x7f800000u) r = (a | 0x00400000u) & 0xffffe000u;       // NaN: quiet, payload cut
    return __uint_as_float(sign | r);
}

// The fp16 bit pattern of x: precision_to16(PREC_FP16, x), round_fp16_dev's value encoded (Inf, a quiet NaN with its
// payload cut, subnormals as multiples of 2^-24). __float2half_rn rounds finite values the same way but makes every
// NaN one canonical NaN.
static __device__ __forceinline__ uint16_t fp16_bits_dev(float x) {
    const uint32_t r = __float_as_uint(round_fp16_dev(x)), sign = (r >> 16) & 0x8000u, a = r & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x38800000u) return (uint16_t)(sign | (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu));
    return (uint16_t)(sign | __float2uint_rz(__fmul_rn(__uint_as_float(a), 16777216.0f)));  // exact: < 1024
}

// The values of 16-bit patterns, exactly (precision_from16).
static __device__ __forceinline__ float bf16_value_dev(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }
static __device__ __forceinline__ float fp16_value_dev(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e) return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
    return __uint_as_float(sign | __float_as_uint(__fmul_rn(__uint2float_rn(m), 1.0f / 16777216.0f)));
}

// Activation storage types (CUDA_ACT_DISPATCH): a bf16 or fp16 value as its bits, never read as a number but through
// act_load/act_ldg (exact) and written through act_store (rounded to nearest even, as precision_to16); float as it is.
struct act_bf16 {
    uint16_t bits;
};
struct act_fp16 {
    uint16_t bits;
};
static __device__ __forceinline__ float act_load(const float *p) { return *p; }
static __device__ __forceinline__ float act_load(const act_bf16 *p) { return bf16_value_dev(p->bits); }
static __device__ __forceinline__ float act_load(const act_fp16 *p) { return fp16_value_dev(p->bits); }
// The same through the read-only cache (__ldg): for buffers the kernel does not write.
static __device__ __forceinline__ float act_ldg(const float *p) { return __ldg(p); }
static __device__ __forceinline__ float act_ldg(const act_bf16 *p) { return bf16_value_dev(__ldg(&p->bits)); }
static __device__ __forceinline__ float act_ldg(const act_fp16 *p) { return fp16_value_dev(__ldg(&p->bits)); }
static __device__ __forceinline__ void act_store(float *p, float v) { *p = v; }
static __device__ __forceinline__ void act_store(act_bf16 *p, float v) { p->bits = bf16_bits_dev(v); }
static __device__ __forceinline__ void act_store(act_fp16 *p, float v) { p->bits = fp16_bits_dev(v); }

// A parameter gradient's fp32 sum stored where the op writes it: float32, or (grads16) its bf16 bits. The kernels
// that write dw/db are templated on the pointer type; their sums stay float (or double).
static __device__ __forceinline__ void grad_store(float *p, float v) { *p = v; }
static __device__ __forceinline__ void grad_store(uint16_t *p, float v) { *p = bf16_bits_dev(v); }

template <typename T>
static __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); the result is valid in thread 0.
// Every thread of the block must call it (it synchronises).
template <typename T>
static __device__ __forceinline__ T block_sum(T v) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = (T)0;
    if (warp == 0) {
        if (lane < (int)(blockDim.x >> 5)) v = partial[lane];
        v = warp_sum(v);
    }
    return v;
}
#endif
