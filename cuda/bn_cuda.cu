// bn_cuda.cu — batch normalisation (backend.h bn_* ops): own kernels rather than cuDNN's fused BN, because sync
// BN averages the statistics across ranks between computing and applying them (and the gradient sums between
// the two halves of backward).
//
// x is [n, c, hw], or [n, hw, c] on an NHWC context (cuda_ctx.nhwc: channel innermost). The per-channel
// reductions run one block per channel, each thread over a fixed stride of the channel's n·hw values, then a fixed
// shuffle tree: deterministic, sums in double as on the CPU, in the same order in both layouts (value j of a
// channel is (sample j / hw, pixel j % hw) either way; NHWC reads them c floats apart). Element-wise passes are
// grid-stride loops. The activation masks use `y > 0` as the CPU reference does. Activations are read and written
// through the storage type T (float, or act16's 16-bit types: backend_cuda_impl.h); the sums take the float values.
#include <stdint.h>

#include "backend_cuda_impl.h"

#define BN_THREADS 256

// ---------------------------------------------------------------------------------------------------------
// Kernels

// Sum of v over the block, returned to every thread. sh: 32 doubles of shared memory.
static __device__ double bn_block_sum(double v, double *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    v = sh[0];
    __syncthreads();  // sh is reused by the next call
    return v;
}

static __device__ __forceinline__ size_t bn_index(int j, int c, int hw, int ch, int nhwc) {
    return nhwc ? (size_t)j * c + ch : ((size_t)(j / hw) * c + ch) * hw + (size_t)(j % hw);
}

// The channel of element i of x
static __device__ __forceinline__ int bn_channel(unsigned i, int c, int hw, int nhwc) {
    return nhwc ? (int)(i % (unsigned)c) : (int)((i / (unsigned)hw) % (unsigned)c);
}

// stats[3c] = {mean, biased var (two-pass), mean²}; one block per channel.
template <typename T>
__global__ void bn_stats_kernel(const T *x, float *stats, int n, int c, int hw, int nhwc) {
    __shared__ double sh[32];
    const int ch = blockIdx.x, total = n * hw;
    double s = 0.0;
    for (int j = threadIdx.x; j < total; j += blockDim.x) s += (double)act_load(&x[bn_index(j, c, hw, ch, nhwc)]);
    const double mean = bn_block_sum(s, sh) / total;
    double q = 0.0;
    for (int j = threadIdx.x; j < total; j += blockDim.x) {
        const double t = (double)act_load(&x[bn_index(j, c, hw, ch, nhwc)]) - mean;
        q += t * t;
    }
    q = bn_block_sum(q, sh);
    if (threadIdx.x == 0) {
        const float mf = (float)mean;
        stats[ch] = mf;
        stats[c + ch] = (float)(q / total);
        stats[2 * c + ch] = __fmul_rn(mf, mf);
    }
}

// save[2c] = {mean, invstd} from the batch statistics (updating running) or from running; one thread per channel.
__global__ void bn_finalize_kernel(const float *stats, float *running, float *save, int c, float eps, float momentum,
                                   double unbias) {
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    float mean, var;
    if (stats) {
        mean = stats[ch];
        const float between = __fsub_rn(stats[2 * c + ch], __fmul_rn(mean, mean));  // 0 at one rank, unfused
        var = stats[c + ch] + (between > 0.f ? between : 0.f);
        const float unbiased = (float)((double)var * unbias);
        running[ch] = (1.f - momentum) * running[ch] + momentum * mean;
        running[c + ch] = (1.f - momentum) * running[c + ch] + momentum * unbiased;
        if (ch == 0) running[2 * c] += 1.f;  // num_batches_tracked
    } else {
        mean = running[ch], var = running[c + ch];
    }
    save[ch] = mean;
    save[c + ch] = (float)(1.0 / sqrt((double)var + (double)eps));
}

template <typename T>
__global__ void bn_apply_kernel(const T *x, const float *save, const float *w, const float *b, T *y, unsigned total,
                                int c, int hw, int act, int nhwc) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int ch = bn_channel(i, c, hw, nhwc);
        const float scale = w[ch] * save[c + ch], shift = b[ch] - save[ch] * scale;
        act_store(&y[i], act_apply(act, act_load(&x[i]) * scale + shift));
    }
}

// dy := dz = dy · act'(y) (A: the activations' type: under act16 dz is stored rounded, the sums take the float dz,
// as the CPU's); dw, db = sums of dz·x̂ and dz over the batch (G: float, or uint16_t bf16 bits under grads16, rounded
// from the float the CPU stores); gstats = {db, dw} / (n·hw), always float.
template <typename A, typename G>
__global__ void bn_grad_stats_kernel(const A *x, const A *y, const float *save, A *dy, G *dw, G *db, float *gstats,
                                     int n, int c, int hw, int act, int nhwc) {
    __shared__ double sh[32];
    const int ch = blockIdx.x, total = n * hw;
    const float mean = save[ch], invstd = save[c + ch];
    double sg = 0.0, sgx = 0.0;
    for (int j = threadIdx.x; j < total; j += blockDim.x) {
        const size_t i = bn_index(j, c, hw, ch, nhwc);
        float g = act_load(&dy[i]);
        g = act_grad(act, act_load(&y[i]), g);  // the activations with act_from_output (bn_desc_check)
        act_store(&dy[i], g);
        sg += g;
        sgx += (double)g * ((act_load(&x[i]) - mean) * invstd);
    }
    sg = bn_block_sum(sg, sh);
    sgx = bn_block_sum(sgx, sh);
    if (threadIdx.x == 0) {
        grad_store(&db[ch], (float)sg);
        grad_store(&dw[ch], (float)sgx);
        gstats[ch] = (float)(sg / total);
        gstats[c + ch] = (float)(sgx / total);
    }
}

template <typename T>
__global__ void bn_grad_input_kernel(const T *x, const float *save, const float *w, const float *gstats, const T *dz,
                                     T *dx, unsigned total, int c, int hw, int nhwc) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        const int ch = bn_channel(i, c, hw, nhwc);
        const float mean = save[ch], invstd = save[c + ch];
        const float xh = (act_load(&x[i]) - mean) * invstd;
        act_store(&dx[i], w[ch] * invstd * (act_load(&dz[i]) - gstats[ch] - xh * gstats[c + ch]));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Launchers

// backend.h's check shared with the CPU backend, then this backend's limit: kernels index with 32 bits.
static int bn_check(const bn_desc *d, const char *op) {
    TRY(bn_desc_check(d, op));
    if ((size_t)d->n * d->c * d->hw > (size_t)INT32_MAX)
        return ERR(ST_INPUT, "%s: %d x %d x %d values, more than the CUDA backend's limit %d", op, d->n, d->c, d->hw,
                   INT32_MAX);
    return ST_OK;
}

int cuda_bn_stats(void *ctx, const bn_desc *d, const void *x, float *stats) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(bn_check(d, "bn_stats"));
    CUDA_ACT_DISPATCH(c, T,
                      bn_stats_kernel<T><<<d->c, BN_THREADS, 0, c->stream>>>((const T *)x, stats, d->n, d->c, d->hw,
                                                                             c->nhwc));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_bn_apply(void *ctx, const bn_desc *d, const void *x, const float *stats, const float *w, const float *b,
                  float *running, float *save, void *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(bn_check(d, "bn_apply"));
    if (stats && d->count < 2)
        return ERR(ST_INPUT, "bn_apply: training needs more than one value per channel (count %lld)",
                   (long long)d->count);
    const double unbias = stats ? (double)d->count / (double)(d->count - 1) : 1.0;
    bn_finalize_kernel<<<(d->c + BN_THREADS - 1) / BN_THREADS, BN_THREADS, 0, c->stream>>>(
        stats, running, save, d->c, d->eps, d->momentum, unbias);
    cudaCheckLaunch();
    const size_t total = (size_t)d->n * d->c * d->hw;
    CUDA_ACT_DISPATCH(c, T,
                      bn_apply_kernel<T><<<cuda_blocks(c, total), CUDA_THREADS, 0, c->stream>>>(
                          (const T *)x, save, w, b, (T *)y, (unsigned)total, d->c, d->hw, d->act, c->nhwc));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_bn_grad_stats(void *ctx, const bn_desc *d, const void *x, const void *y, const float *save, void *dy,
                       void *dw, void *db, float *gstats) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(bn_check(d, "bn_grad_stats"));
    if (c->grads16)
        CUDA_ACT_DISPATCH(c, T,
                          bn_grad_stats_kernel<T, uint16_t><<<d->c, BN_THREADS, 0, c->stream>>>(
                              (const T *)x, (const T *)y, save, (T *)dy, (uint16_t *)dw, (uint16_t *)db, gstats, d->n,
                              d->c, d->hw, d->act, c->nhwc));
    else
        CUDA_ACT_DISPATCH(c, T,
                          bn_grad_stats_kernel<T, float><<<d->c, BN_THREADS, 0, c->stream>>>(
                              (const T *)x, (const T *)y, save, (T *)dy, (float *)dw, (float *)db, gstats, d->n, d->c,
                              d->hw, d->act, c->nhwc));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_bn_grad_input(void *ctx, const bn_desc *d, const void *x, const float *save, const float *w,
                       const float *gstats, const void *dz, void *dx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(bn_check(d, "bn_grad_input"));
    const size_t total = (size_t)d->n * d->c * d->hw;
    CUDA_ACT_DISPATCH(c, T,
                      bn_grad_input_kernel<T><<<cuda_blocks(c, total), CUDA_THREADS, 0, c->stream>>>(
                          (const T *)x, save, w, gstats, (const T *)dz, (T *)dx, (unsigned)total, d->c, d->hw,
                          c->nhwc));
    cudaCheckLaunch();
    return ST_OK;
}
