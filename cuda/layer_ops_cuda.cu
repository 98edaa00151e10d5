// layer_ops_cuda.cu — the CUDA backend's ops for the layer kinds [shortcut], [route], [dropout] and [avgpool]: residual add + activation
// and the activation gradient ([shortcut]), channel slices ([route]), dropout masks from a counter-based hash,
// average pooling ([avgpool]); and layout_convert (NCHW <-> NHWC, [dense]'s weight on an NHWC backend).
// Channel slices and pooling follow the context's layout (cuda_ctx.nhwc).
//
// Semantics are those of the CPU reference (src/backend_cpu.c, documented in backend.h); tests/test_backend_cuda.c
// compares the two. Kernels first, launchers (stream last) after; element-wise kernels use grid-stride loops. The
// activation kernels are templated on the storage type T (float, or act16's 16-bit types: backend_cuda_impl.h); each
// value is read, computed in float and stored once (rounded under act16). channel_copy moves the stored bits.
#include <stdint.h>

#include "backend_cuda_impl.h"
#include "dropout_hash.h"

// ---------------------------------------------------------------------------------------------------------
// Kernels

// In place allowed (y may be a or b, dx may be dy): each value is read before it is written, by the same thread.
template <typename T>
__global__ void add_act_kernel(size_t n, int act, const T *a, const T *b, T *y) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        act_store(&y[i], act_apply(act, act_load(&a[i]) + act_load(&b[i])));
}

template <typename T>
__global__ void act_backward_kernel(size_t n, int act, const T *y, const T *dy, T *dx) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        act_store(&dx[i], act_grad(act, act_load(&y[i]), act_load(&dy[i])));
}

// An activation on its own (the layers' unfused ones): y = act(x), and dx = dy · act'(x) at the pre-activation.
template <typename T>
__global__ void act_forward_kernel(size_t n, int act, const T *x, T *y) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        act_store(&y[i], act_apply(act, act_load(&x[i])));
}

template <typename T>
__global__ void act_backward_input_kernel(size_t n, int act, const T *x, const T *dy, T *dx) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        act_store(&dx[i], act_grad_input(act, act_load(&x[i]), act_load(&dy[i])));
}

// The key is read from device memory at run time: a replayed graph draws the step the host wrote before it.
template <typename T>
__global__ void dropout_kernel(size_t n, const dropout_key *key, uint32_t stream, uint32_t threshold, float scale,
                               const T *x, T *y) {
    const uint64_t base = dropout_base(key->seed, key->step, key->rank, stream);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        act_store(&y[i], dropout_keep(base, (uint64_t)i, threshold) ? act_load(&x[i]) * scale : 0.f);
}

// Average pooling, one thread per output: the window's sum in row-major order, times inv (as the CPU). c: channels,
// used by the NHWC indexing only (nhwc = 0: planes of h·w, as NCHW).
template <typename T>
__global__ void avgpool_fwd_kernel(const T *x, T *y, unsigned total, int c, int h, int w, int oh, int ow, int kh,
                                   int kw, int stride, float inv, int nhwc) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        unsigned t = i;
        int ch = 0;
        if (nhwc) ch = (int)(t % (unsigned)c), t /= (unsigned)c;
        const int ox = (int)(t % ow);
        t /= ow;
        const int oy = (int)(t % oh);
        const unsigned img = t / oh;  // NCHW: the plane (sample, channel)
        // element (r, q) of the window at x[base + (r * w + q) * step]
        const size_t step = nhwc ? (size_t)c : 1;
        const size_t base = nhwc ? (size_t)img * h * w * c + ((size_t)oy * stride * w + (size_t)ox * stride) * c + ch
                                 : (size_t)img * h * w + (size_t)oy * stride * w + ox * stride;
        float s = 0.f;
        for (int r = 0; r < kh; r++)
            for (int q = 0; q < kw; q++) s += act_ldg(&x[base + ((size_t)r * w + q) * step]);
        act_store(&y[i], s * inv);
    }
}

// One thread per input: the sum of dy over the windows containing it, in ascending output order, times inv.
template <typename T>
__global__ void avgpool_bwd_kernel(const T *dy, T *dx, unsigned total, int c, int h, int w, int oh, int ow, int kh,
                                   int kw, int stride, float inv, int nhwc) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        unsigned t = i;
        int ch = 0;
        if (nhwc) ch = (int)(t % (unsigned)c), t /= (unsigned)c;
        const int ix = (int)(t % w);
        t /= w;
        const int iy = (int)(t % h);
        const unsigned img = t / h;
        const size_t step = nhwc ? (size_t)c : 1;
        const size_t base = nhwc ? (size_t)img * oh * ow * c + ch : (size_t)img * oh * ow;
        const int oy_lo = iy < kh ? 0 : (iy - kh) / stride + 1, oy_hi = min(iy / stride, oh - 1);
        const int ox_lo = ix < kw ? 0 : (ix - kw) / stride + 1, ox_hi = min(ix / stride, ow - 1);
        float g = 0.f;
        for (int oy = oy_lo; oy <= oy_hi; oy++)
            for (int ox = ox_lo; ox <= ox_hi; ox++) g += act_ldg(&dy[base + ((size_t)oy * ow + ox) * step]);
        act_store(&dx[i], g * inv);
    }
}

// layout_convert: one thread per output value, x [b][c][hw] <-> y [b][hw][c]; T: float, or the 16 bits of a bf16/fp16
// value (moved, never read as a number).
template <typename T>
__global__ void layout_convert_kernel(const T *x, T *y, unsigned total, int c, int hw, int to_nhwc) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        if (to_nhwc) {  // i = (b, q, ch)
            const unsigned ch = i % (unsigned)c, t = i / (unsigned)c, q = t % (unsigned)hw, b = t / (unsigned)hw;
            y[i] = __ldg(&x[((size_t)b * c + ch) * hw + q]);
        } else {  // i = (b, ch, q)
            const unsigned q = i % (unsigned)hw, t = i / (unsigned)hw, ch = t % (unsigned)c, b = t / (unsigned)c;
            y[i] = __ldg(&x[((size_t)b * hw + q) * c + ch]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Launchers

// The fused ops take the activations with act_from_output; act_forward and act_backward_input take any.
static int act_valid(int act, const char *op) {
    if (!act_from_output(act)) return ERR(ST_INPUT, "%s: activation %d is not one the op fuses", op, act);
    return ST_OK;
}

static int act_known_check(int act, const char *op) {
    if (!act_known(act)) return ERR(ST_INPUT, "%s: unknown activation %d", op, act);
    return ST_OK;
}

int cuda_add_act(void *ctx, size_t n, int act, const void *a, const void *b, void *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(act_valid(act, "add_act"));
    if (n == 0) return ST_OK;
    CUDA_ACT_DISPATCH(c, T,
                      add_act_kernel<T><<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(
                          n, act, (const T *)a, (const T *)b, (T *)y));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_act_backward(void *ctx, size_t n, int act, const void *y, const void *dy, void *dx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(act_valid(act, "act_backward"));
    if (n == 0) return ST_OK;
    CUDA_ACT_DISPATCH(c, T,
                      act_backward_kernel<T><<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(
                          n, act, (const T *)y, (const T *)dy, (T *)dx));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_act_forward(void *ctx, size_t n, int act, const void *x, void *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(act_known_check(act, "act_forward"));
    if (n == 0) return ST_OK;
    CUDA_ACT_DISPATCH(c, T,
                      act_forward_kernel<T><<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, act, (const T *)x,
                                                                                               (T *)y));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_act_backward_input(void *ctx, size_t n, int act, const void *x, const void *dy, void *dx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(act_known_check(act, "act_backward_input"));
    if (n == 0) return ST_OK;
    CUDA_ACT_DISPATCH(c, T,
                      act_backward_input_kernel<T><<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(
                          n, act, (const T *)x, (const T *)dy, (T *)dx));
    cudaCheckLaunch();
    return ST_OK;
}

// One strided 2-D copy on the stream: n rows (samples) of c·hw values; NHWC: n·hw rows (pixels) of c values (f bytes
// each: 4, or 2 under act16, whose bits are copied as they are).
int cuda_channel_copy(void *ctx, int n, int c, int hw, const void *src, int src_c, int src_off, void *dst, int dst_c,
                      int dst_off) {
    cuda_ctx *cx = (cuda_ctx *)ctx;
    if (n < 0 || c < 0 || hw < 1 || src_off < 0 || dst_off < 0 || src_off + c > src_c || dst_off + c > dst_c)
        return ERR(ST_INPUT, "channel_copy: %d channels at %d of %d to %d of %d (n=%d, hw=%d)", c, src_off, src_c,
                   dst_off, dst_c, n, hw);
    if (n == 0 || c == 0) return ST_OK;
    const size_t f = cuda_act_elem(cx);
    char *d = (char *)dst;
    const char *s = (const char *)src;
    if (cx->nhwc) {
        cudaCheck(cudaMemcpy2DAsync(d + (size_t)dst_off * f, (size_t)dst_c * f, s + (size_t)src_off * f,
                                    (size_t)src_c * f, (size_t)c * f, (size_t)n * hw, cudaMemcpyDeviceToDevice,
                                    cx->stream));
        return ST_OK;
    }
    cudaCheck(cudaMemcpy2DAsync(d + (size_t)dst_off * hw * f, (size_t)dst_c * hw * f, s + (size_t)src_off * hw * f,
                                (size_t)src_c * hw * f, (size_t)c * hw * f, (size_t)n, cudaMemcpyDeviceToDevice,
                                cx->stream));
    return ST_OK;
}

// threshold and scale are computed here, on the host, exactly as the CPU backend computes them.
int cuda_dropout(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const void *x, void *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!(rate >= 0.f && rate < 1.f)) return ERR(ST_INPUT, "dropout: rate %g outside [0, 1)", (double)rate);
    if (n == 0) return ST_OK;
    const float scale = 1.0f / (1.0f - rate);
    CUDA_ACT_DISPATCH(c, T,
                      dropout_kernel<T><<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(
                          n, key, stream, dropout_threshold(rate), scale, (const T *)x, (T *)y));
    cudaCheckLaunch();
    return ST_OK;
}

static int avgpool_args_check(int n, int c, int h, int w, int kh, int kw, int stride, const char *op) {
    if (n < 0 || c < 1 || kh < 1 || kw < 1 || stride < 1 || kh > h || kw > w)
        return ERR(ST_INPUT, "%s: window %dx%d (stride %d) on %d x %dx%dx%d", op, kh, kw, stride, n, c, h, w);
    if ((size_t)n * c * h * w > (size_t)INT32_MAX)
        return ERR(ST_INPUT, "%s: %d x %dx%dx%d values, more than the CUDA backend's limit", op, n, c, h, w);
    return ST_OK;
}

int cuda_avgpool_forward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const void *x, void *y) {
    cuda_ctx *cx = (cuda_ctx *)ctx;
    TRY(avgpool_args_check(n, c, h, w, kh, kw, stride, "avgpool_forward"));
    const int oh = (h - kh) / stride + 1, ow = (w - kw) / stride + 1;
    const size_t total = (size_t)n * c * oh * ow;
    if (total == 0) return ST_OK;
    CUDA_ACT_DISPATCH(cx, T,
                      avgpool_fwd_kernel<T><<<cuda_blocks(cx, total), CUDA_THREADS, 0, cx->stream>>>(
                          (const T *)x, (T *)y, (unsigned)total, c, h, w, oh, ow, kh, kw, stride,
                          1.0f / (float)(kh * kw), cx->nhwc));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_avgpool_backward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const void *dy,
                          void *dx) {
    cuda_ctx *cx = (cuda_ctx *)ctx;
    TRY(avgpool_args_check(n, c, h, w, kh, kw, stride, "avgpool_backward"));
    const int oh = (h - kh) / stride + 1, ow = (w - kw) / stride + 1;
    const size_t total = (size_t)n * c * h * w;
    if (total == 0) return ST_OK;
    CUDA_ACT_DISPATCH(cx, T,
                      avgpool_bwd_kernel<T><<<cuda_blocks(cx, total), CUDA_THREADS, 0, cx->stream>>>(
                          (const T *)dy, (T *)dx, (unsigned)total, c, h, w, oh, ow, kh, kw, stride,
                          1.0f / (float)(kh * kw), cx->nhwc));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_layout_convert(void *ctx, int n, int c, int hw, int to_nhwc, int elem_bytes, const void *x, void *y) {
    cuda_ctx *cx = (cuda_ctx *)ctx;
    if (n < 0 || c < 1 || hw < 1) return ERR(ST_INPUT, "layout_convert: bad shape n=%d c=%d hw=%d", n, c, hw);
    if (elem_bytes != 4 && elem_bytes != 2)
        return ERR(ST_INPUT, "layout_convert: elem_bytes %d (want 4 or 2)", elem_bytes);
    const size_t total = (size_t)n * c * hw;
    if (total > (size_t)INT32_MAX)
        return ERR(ST_INPUT, "layout_convert: %zu values, more than the CUDA backend's limit %d", total, INT32_MAX);
    if (total == 0) return ST_OK;
    const unsigned blocks = cuda_blocks(cx, total);
    if (elem_bytes == 4)
        layout_convert_kernel<float><<<blocks, CUDA_THREADS, 0, cx->stream>>>((const float *)x, (float *)y,
                                                                              (unsigned)total, c, hw, to_nhwc != 0);
    else
        layout_convert_kernel<uint16_t><<<blocks, CUDA_THREADS, 0, cx->stream>>>(
            (const uint16_t *)x, (uint16_t *)y, (unsigned)total, c, hw, to_nhwc != 0);
    cudaCheckLaunch();
    return ST_OK;
}
