// layer_ops_cuda.cu — the CUDA backend's ops for the layer kinds of issue 14 part 3: residual add + activation
// and the activation gradient ([shortcut]), channel slices ([route]), dropout masks from a counter-based hash.
//
// Semantics are those of the CPU reference (src/backend_cpu.c, documented in backend.h); tests/test_backend_cuda.c
// compares the two. Kernels first, launchers (stream last) after; element-wise kernels use grid-stride loops.
#include <stdint.h>

#include "backend_cuda_impl.h"
#include "dropout_hash.h"

// ---------------------------------------------------------------------------------------------------------
// Kernels

__global__ void add_act_kernel(size_t n, int act, const float *a, const float *b, float *y) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = act_apply(act, a[i] + b[i]);
}

__global__ void act_backward_kernel(size_t n, int act, const float *y, const float *dy, float *dx) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dx[i] = act_grad(act, y[i], dy[i]);
}

// The key is read from device memory at run time: a replayed graph draws the step the host wrote before it.
__global__ void dropout_kernel(size_t n, const dropout_key *key, uint32_t stream, uint32_t threshold, float scale,
                               const float *x, float *y) {
    const uint64_t base = dropout_base(key->seed, key->step, key->rank, stream);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] = dropout_keep(base, (uint64_t)i, threshold) ? x[i] * scale : 0.f;
}

// ---------------------------------------------------------------------------------------------------------
// Launchers

static int act_valid(int act, const char *op) {
    if (act != ACT_NONE && act != ACT_RELU && act != ACT_LEAKY)
        return ERR(ST_INPUT, "%s: unknown activation %d", op, act);
    return ST_OK;
}

int cuda_add_act(void *ctx, size_t n, int act, const float *a, const float *b, float *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(act_valid(act, "add_act"));
    if (n == 0) return ST_OK;
    add_act_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, act, a, b, y);
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_act_backward(void *ctx, size_t n, int act, const float *y, const float *dy, float *dx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(act_valid(act, "act_backward"));
    if (n == 0) return ST_OK;
    act_backward_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, act, y, dy, dx);
    cudaCheckLaunch();
    return ST_OK;
}

// One strided 2-D copy on the stream: n rows (samples) of c·hw floats.
int cuda_channel_copy(void *ctx, int n, int c, int hw, const float *src, int src_c, int src_off, float *dst, int dst_c,
                      int dst_off) {
    cuda_ctx *cx = (cuda_ctx *)ctx;
    if (n < 0 || c < 0 || hw < 1 || src_off < 0 || dst_off < 0 || src_off + c > src_c || dst_off + c > dst_c)
        return ERR(ST_INPUT, "channel_copy: %d channels at %d of %d to %d of %d (n=%d, hw=%d)", c, src_off, src_c,
                   dst_off, dst_c, n, hw);
    if (n == 0 || c == 0) return ST_OK;
    const size_t f = sizeof(float);
    cudaCheck(cudaMemcpy2DAsync(dst + (size_t)dst_off * hw, (size_t)dst_c * hw * f, src + (size_t)src_off * hw,
                                (size_t)src_c * hw * f, (size_t)c * hw * f, (size_t)n, cudaMemcpyDeviceToDevice,
                                cx->stream));
    return ST_OK;
}

// threshold and scale are computed here, on the host, exactly as the CPU backend computes them.
int cuda_dropout(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const float *x, float *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!(rate >= 0.f && rate < 1.f)) return ERR(ST_INPUT, "dropout: rate %g outside [0, 1)", (double)rate);
    if (n == 0) return ST_OK;
    const float scale = 1.0f / (1.0f - rate);
    dropout_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, key, stream, dropout_threshold(rate), scale,
                                                                      x, y);
    cudaCheckLaunch();
    return ST_OK;
}
