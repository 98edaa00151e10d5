// layer_ops_cuda.cu — the CUDA backend's ops for the layer kinds of issue 14 part 3: residual add + activation
// and the activation gradient ([shortcut]).
//
// Semantics are those of the CPU reference (src/backend_cpu.c, documented in backend.h); tests/test_backend_cuda.c
// compares the two. Kernels first, launchers (stream last) after; element-wise kernels use grid-stride loops.
#include <stdint.h>

#include "backend_cuda_impl.h"

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
