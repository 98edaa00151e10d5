// ops_cuda.cu — the CUDA backend's ops other than convolution: bias + activation, max pooling, dense layers
// (cuBLAS), softmax cross-entropy, the optimizers, batch gathering and small utilities. Pooling and the gather
// follow the context's layout (cuda_ctx.nhwc: N,H,W,C activations).
//
// Semantics are those of the CPU reference (src/backend_cpu.c, documented in backend.h); the tests compare the
// two op by op. Kernels first, launchers (stream last) after. Element-wise kernels use grid-stride loops.
// Activations and their derivatives (act_apply, act_grad in backend_cuda_impl.h) use `v > 0`, as on the CPU.
// The activation kernels are templated on the storage type T (float, or act16's act_bf16/act_fp16: loaded exactly,
// stored rounded once, backend_cuda_impl.h); what they compute is float32 either way.
#include <stdint.h>

#include "backend_cuda_impl.h"

// ---------------------------------------------------------------------------------------------------------
// Kernels: bias + activation

// y = act(x + b) laid out [outer, channels, inner]: conv (inner = oh*ow) and dense (inner = 1) alike. X: the type of
// x (y itself in place, or dense's float32 GEMM output), T: y's.
template <typename X, typename T>
__global__ void bias_act_kernel(const X *x, T *y, const float *b, unsigned total, unsigned channels, unsigned inner,
                                int act) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        float v = act_load(&x[i]);
        if (b) v += __ldg(&b[(i / inner) % channels]);
        act_store(&y[i], act_apply(act, v));
    }
}

// Dense backward of bias + activation: dy[n, out] times act'(y) in place (A: the activations' type), db[j] = sum
// over rows of dy[., j] (db NULL: none; G: float, or uint16_t bf16 bits under grads16). The sum takes the float
// products, as the CPU's (under act16 dy is then stored rounded). Block (32, 8): 32 adjacent columns (coalesced
// rows), 8 row phases, reduced in shared memory. Deterministic.
template <typename A, typename G>
__global__ void dense_bias_grad_kernel(A *dy, const A *y, G *db, int n, int out, int act) {
    __shared__ float part[8][33];
    const int j = blockIdx.x * 32 + threadIdx.x;
    float sum = 0.f;
    if (j < out) {
        for (int i = threadIdx.y; i < n; i += 8) {
            const size_t idx = (size_t)i * out + j;
            float g = act_load(&dy[idx]);
            if (act != ACT_NONE) {
                g = act_grad(act, act_load(&y[idx]), g);
                act_store(&dy[idx], g);
            }
            sum += g;
        }
    }
    part[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && j < out && db) {
        float t = 0.f;
        for (int r = 0; r < 8; r++) t += part[r][threadIdx.x];
        grad_store(&db[j], t);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Kernels: max pooling (pad: -inf padding, each window clipped to the input; pad <= size/2 leaves it non-empty)

// One thread per output; argmax is the index of the max within its input plane (h*w), first max in row-major
// order on ties. nhwc: outputs and inputs N,H,W,C (c channels; the argmax is still the pixel's index r*w + s).
template <typename T>
__global__ void pool_fwd_kernel(const T *x, T *y, int32_t *argmax, unsigned total, int c, int h, int w, int oh, int ow,
                                int size, int stride, int pad, int nhwc) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        unsigned t = i;
        int ch = 0;
        if (nhwc) ch = (int)(t % (unsigned)c), t /= (unsigned)c;
        const int ox = (int)(t % ow);
        t /= ow;
        const int oy = (int)(t % oh);
        const unsigned plane = t / oh;  // NCHW: (sample, channel); NHWC: the sample
        // pixel j of the plane at xp[j * step]
        const size_t step = nhwc ? (size_t)c : 1;
        const T *xp = nhwc ? x + (size_t)plane * h * w * c + ch : x + (size_t)plane * h * w;
        const int y0 = oy * stride - pad, x0 = ox * stride - pad;
        const int r0 = max(y0, 0), r1 = min(y0 + size, h), c0 = max(x0, 0), c1 = min(x0 + size, w);
        int best_j = r0 * w + c0;
        float best = act_ldg(&xp[(size_t)best_j * step]);
        for (int r = r0; r < r1; r++)
            for (int s = c0; s < c1; s++) {
                const int j = r * w + s;
                const float v = act_ldg(&xp[(size_t)j * step]);
                if (v > best) {
                    best = v;
                    best_j = j;
                }
            }
        act_store(&y[i], best);  // a value of x: exact in x's type
        if (argmax) argmax[i] = best_j;
    }
}

// Gather formulation: one thread per input element sums dy over the (few) windows that contain it and chose
// it, in ascending output order (the order a CPU scatter adds them). Writes every dx: no zeroing, no atomics.
template <typename T>
__global__ void pool_bwd_kernel(const T *dy, const int32_t *argmax, T *dx, unsigned total, int c, int h, int w, int oh,
                                int ow, int size, int stride, int pad, int nhwc) {
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
        unsigned t = i;
        int ch = 0;
        if (nhwc) ch = (int)(t % (unsigned)c), t /= (unsigned)c;
        const int ix = (int)(t % w);
        t /= w;
        const int iy = (int)(t % h);
        const unsigned plane = t / h;
        const int j = iy * w + ix;
        // Windows o with o*stride - pad <= i < o*stride - pad + size (in padded coordinates p = i + pad).
        const int py = iy + pad, px = ix + pad;
        const int oy_lo = py < size ? 0 : (py - size) / stride + 1;
        const int oy_hi = min(py / stride, oh - 1);
        const int ox_lo = px < size ? 0 : (px - size) / stride + 1;
        const int ox_hi = min(px / stride, ow - 1);
        const size_t step = nhwc ? (size_t)c : 1;
        const size_t base = nhwc ? (size_t)plane * oh * ow * c + ch : (size_t)plane * oh * ow;
        float g = 0.f;
        for (int oy = oy_lo; oy <= oy_hi; oy++)
            for (int ox = ox_lo; ox <= ox_hi; ox++) {
                const size_t o = base + ((size_t)oy * ow + ox) * step;
                if (__ldg(&argmax[o]) == j) g += act_ldg(&dy[o]);
            }
        act_store(&dx[i], g);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Kernels: softmax + sparse categorical cross-entropy

#define XENT_WARPS 8

// One warp per sample: max (and first argmax), sum of exp, loss = log(sum) - (z[label] - max).
// A label outside [0, classes) yields a NaN loss, so the divergence check stops the run rather than the
// kernel reading out of bounds. One double and one int atomic per block. dlogits = ((p - target) / n) · scale, the
// two products rounded in float in that order (the CPU's), then stored (T).
template <typename T>
__global__ void softmax_xent_kernel(int n, int classes, const T *logits, const int32_t *labels, float smoothing,
                                    float scale, T *dlogits, double *loss_acc, int32_t *correct_acc) {
    __shared__ double s_loss[XENT_WARPS];
    __shared__ int s_correct[XENT_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int i = blockIdx.x * XENT_WARPS + warp;
    double loss = 0.0;
    int correct = 0;
    if (i < n) {
        const T *z = logits + (size_t)i * classes;
        float m = -INFINITY;
        int am = classes;  // lanes with no class lose every tie
        for (int j = lane; j < classes; j += 32) {
            const float v = act_load(&z[j]);
            if (v > m) {
                m = v;
                am = j;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, o);
            const int a2 = __shfl_xor_sync(0xffffffffu, am, o);
            if (m2 > m || (m2 == m && a2 < am)) {
                m = m2;
                am = a2;
            }
        }
        float s = 0.f, zs = 0.f;  // zs: sum of z - m, for label smoothing
        for (int j = lane; j < classes; j += 32) {
            const float v = act_load(&z[j]);
            s += expf(v - m);
            zs += v - m;
        }
        s = warp_sum(s);
        if (smoothing > 0.f) zs = warp_sum(zs);
        const int label = labels[i];
        const bool valid = label >= 0 && label < classes;
        if (dlogits) {
            const float inv_s = 1.f / s, inv_n = 1.f / (float)n;
            const float off = smoothing / (float)classes, on = 1.f - smoothing + off;
            T *d = dlogits + (size_t)i * classes;
            for (int j = lane; j < classes; j += 32) {
                const float p = expf(act_load(&z[j]) - m) * inv_s;
                const float g = (p - (j == label ? on : off)) * inv_n;
                act_store(&d[j], __fmul_rn(g, scale));
            }
        }
        if (lane == 0) {
            double target_z = valid ? (double)act_load(&z[label]) - (double)m : 0.0;
            if (smoothing > 0.f) target_z = (1.0 - smoothing) * target_z + (double)smoothing * zs / classes;
            loss = valid ? (double)logf(s) - target_z : (double)NAN;
            correct = valid && am == label;
        }
    }
    if (lane == 0) {
        s_loss[warp] = loss;
        s_correct[warp] = correct;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double l = 0.0;
        int k = 0;
        for (int w = 0; w < XENT_WARPS; w++) {
            l += s_loss[w];
            k += s_correct[w];
        }
        atomicAdd(loss_acc, l);
        if (k) atomicAdd(correct_acc, k);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Kernels: optimizers. The hyper-parameters are read from device memory at run time, so a captured graph
// uses the values uploaded before each replay. Vector variants need p, g and state 16-byte aligned.

struct adam_coef {
    float lr_t, b1, b2, eps, wd, keep;
};

// Keras/TF Adam: lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t), in double: 1 - b^t cancels badly in float.
static __device__ __forceinline__ adam_coef adam_coef_load(const adam_hyper *h) {
    const double t = (double)h->t;
    const double bc1 = 1.0 - pow((double)h->beta1, t), bc2 = 1.0 - pow((double)h->beta2, t);
    adam_coef k;
    k.lr_t = (float)((double)h->lr * sqrt(bc2) / bc1);
    k.b1 = h->beta1;
    k.b2 = h->beta2;
    k.eps = h->eps;
    k.wd = h->weight_decay;
    k.keep = h->decoupled_wd > 0.f ? 1.f - h->lr * h->decoupled_wd : 1.f;  // AdamW: decay first (PyTorch's order)
    return k;
}

static __device__ __forceinline__ void adam_one(float &p, float g, float &m, float &v, const adam_coef &k) {
    if (k.keep != 1.f) p *= k.keep;
    if (k.wd > 0.f) g += k.wd * p;
    m = k.b1 * m + (1.f - k.b1) * g;
    v = k.b2 * v + (1.f - k.b2) * g * g;
    p -= k.lr_t * m / (sqrtf(v) + k.eps);
}

template <bool VEC>
__global__ void adam_kernel(size_t n, float *p, const float *g, float *m, float *v, const adam_hyper *h) {
    const adam_coef k = adam_coef_load(h);
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (VEC) {
        const size_t n4 = n / 4;
        float4 *p4 = (float4 *)p, *m4 = (float4 *)m, *v4 = (float4 *)v;
        const float4 *g4 = (const float4 *)g;
        for (size_t i = tid; i < n4; i += step) {
            float4 pp = p4[i], mm = m4[i], vv = v4[i];
            const float4 gg = g4[i];
            adam_one(pp.x, gg.x, mm.x, vv.x, k);
            adam_one(pp.y, gg.y, mm.y, vv.y, k);
            adam_one(pp.z, gg.z, mm.z, vv.z, k);
            adam_one(pp.w, gg.w, mm.w, vv.w, k);
            p4[i] = pp;
            m4[i] = mm;
            v4[i] = vv;
        }
        done = n4 * 4;
    }
    for (size_t i = done + tid; i < n; i += step) adam_one(p[i], g[i], m[i], v[i], k);
}

// Heavy ball: p -= lr * vel; Nesterov (as PyTorch): p -= lr * (g' + mom * vel).
static __device__ __forceinline__ void sgd_one(float &p, float g, float &vel, float lr, float mom, float wd,
                                               bool nesterov) {
    if (wd > 0.f) g += wd * p;
    vel = mom * vel + g;
    p -= lr * (nesterov ? g + mom * vel : vel);
}

template <bool VEC>
__global__ void sgd_kernel(size_t n, float *p, const float *g, float *vel, const sgd_hyper *h) {
    const float lr = h->lr, mom = h->momentum, wd = h->weight_decay;
    const bool nest = h->nesterov != 0.f;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    size_t done = 0;
    if (VEC) {
        const size_t n4 = n / 4;
        float4 *p4 = (float4 *)p, *v4 = (float4 *)vel;
        const float4 *g4 = (const float4 *)g;
        for (size_t i = tid; i < n4; i += step) {
            float4 pp = p4[i], vv = v4[i];
            const float4 gg = g4[i];
            sgd_one(pp.x, gg.x, vv.x, lr, mom, wd, nest);
            sgd_one(pp.y, gg.y, vv.y, lr, mom, wd, nest);
            sgd_one(pp.z, gg.z, vv.z, lr, mom, wd, nest);
            sgd_one(pp.w, gg.w, vv.w, lr, mom, wd, nest);
            p4[i] = pp;
            v4[i] = vv;
        }
        done = n4 * 4;
    }
    for (size_t i = done + tid; i < n; i += step) sgd_one(p[i], g[i], vel[i], lr, mom, wd, nest);
}

// ---------------------------------------------------------------------------------------------------------
// Kernels: data and utilities

// x[s, j] = images[index[s], j] / 255 (rounded as the CPU's float division), y[s] = labels[index[s]].
template <typename T>
__global__ void gather_kernel(const uint8_t *images, const int32_t *labels, const int32_t *index, int n, int elems,
                              T *x, int32_t *y) {
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x, step = (size_t)gridDim.x * blockDim.x;
    const size_t total = (size_t)n * elems;
    for (size_t i = tid; i < total; i += step) {
        const size_t s = i / elems, j = i - s * elems;
        const size_t src = (size_t)__ldg(&index[s]) * elems + j;
        act_store(&x[i], __fdiv_rn((float)__ldg(&images[src]), 255.0f));
    }
    if (y)
        for (size_t s = tid; s < (size_t)n; s += step) y[s] = labels[index[s]];
}

// The gather with crop, flip and normalisation fused (src/gather_aug.h), one thread per output value: each
// evaluates its sample's draw from (seed, epoch, index) -- the same integer math as the CPU loop -- and reads
// one input byte (0 outside the image), then the channel's table or the division. The epoch is read here, from
// device memory, so a replayed graph uses the value uploaded before it. Indices fit in 32 bits (size_check).
// nhwc: x is written N,H,W,C (the images stay C,H,W: each thread reads the byte of its channel).
template <typename T>
__global__ void gather_aug_kernel(const uint8_t *images, const int32_t *labels, const int32_t *index, int n,
                                  int elems, const gather_aug *a, T *x, int32_t *y, int nhwc) {
    const unsigned tid = blockIdx.x * blockDim.x + threadIdx.x, step = gridDim.x * blockDim.x;
    const unsigned total = (unsigned)n * (unsigned)elems;
    const int c = a->c, h = a->h, w = a->w, hw = h * w, normalize = a->normalize;
    for (unsigned i = tid; i < total; i += step) {
        const unsigned s = i / (unsigned)elems, j = i - s * (unsigned)elems;
        const int ch = nhwc ? (int)(j % (unsigned)c) : (int)(j / (unsigned)hw);
        const int rem = nhwc ? (int)(j / (unsigned)c) : (int)j - ch * hw, oy = rem / w, ox = rem - oy * w;
        const int32_t idx = __ldg(&index[s]);
        const gather_draw d = gather_aug_draw(a, idx);
        const int sy = oy + d.dy, sx = (d.flip ? w - 1 - ox : ox) + d.dx;
        const unsigned p = sy >= 0 && sy < h && sx >= 0 && sx < w
                               ? __ldg(&images[(size_t)idx * elems + (size_t)ch * hw + (size_t)sy * w + sx])
                               : 0u;
        act_store(&x[i], normalize ? a->lut[ch][p] : __fdiv_rn((float)p, 255.0f));
    }
    if (y)
        for (unsigned s = tid; s < (unsigned)n; s += step) y[s] = labels[index[s]];
}

__global__ void scale_kernel(size_t n, float alpha, float *x) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] *= alpha;
}

// Exponent bits all ones is Inf or NaN; a bit test is immune to fast-math assumptions about finiteness.
__global__ void count_nonfinite_kernel(size_t n, const float *x, int32_t *out) {
    int k = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        k += (__float_as_uint(__ldg(&x[i])) & 0x7f800000u) == 0x7f800000u;
    k = block_sum(k);
    if (threadIdx.x == 0 && k) atomicAdd(out, k);
}

__global__ void add_kernel(size_t n, const float *x, float *y) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        y[i] += __ldg(&x[i]);
}

// Gradient clipping: the sum of squares in two ordered passes -- each block's partial sum (a fixed grid-stride
// order and a fixed tree within the block) into partials[blockIdx.x], then one block adds the partials in a fixed
// order -- so the norm, and so clipping, is bit-identical run to run (no atomics, net.deterministic holds with
// clip_grad_norm). Then the scale read from device memory, so the three kernels are stream work a captured
// graph replays with each step's own norm.
__global__ void sumsq_partial_kernel(size_t n, const float *x, double *partials) {
    double s = 0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const double v = __ldg(&x[i]);
        s += v * v;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void sum_partials_kernel(unsigned n, const double *partials, double *out) {
    double s = 0;
    for (unsigned i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = s;
}

__global__ void clip_scale_kernel(size_t n, float *x, const double *sumsq, float max_norm) {
    const double coef = (double)max_norm / (sqrt(*sumsq) + 1e-6);
    if (coef >= 1.0) return;
    const float a = (float)coef;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) x[i] *= a;
}

// ---------------------------------------------------------------------------------------------------------
// Launchers

static int act_check(int act, const char *op) {
    if (!act_from_output(act)) return ERR(ST_INPUT, "%s: activation %d is not one the op fuses", op, act);
    return ST_OK;
}

// Index arithmetic in the kernels is 32-bit; the layers of this trainer are far below the limit.
static int size_check(size_t total, const char *op, const char *what) {
    if (total > (size_t)INT32_MAX)
        return ERR(ST_INPUT, "%s: %s has %zu values, more than the CUDA backend's limit %d", op, what, total,
                   INT32_MAX);
    return ST_OK;
}

int cuda_bias_act(cuda_ctx *c, void *y, const float *b, int total, int channels, int inner, int act) {
    if (total <= 0 || (b == NULL && act == ACT_NONE)) return ST_OK;
    CUDA_ACT_DISPATCH(c, T,
                      bias_act_kernel<T, T><<<cuda_blocks(c, (size_t)total), CUDA_THREADS, 0, c->stream>>>(
                          (const T *)y, (T *)y, b, (unsigned)total, (unsigned)channels, (unsigned)inner, act));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_bias_act_store(cuda_ctx *c, const float *x, void *y, const float *b, int total, int channels, int inner,
                        int act) {
    if (total <= 0) return ST_OK;
    CUDA_ACT_DISPATCH(c, T,
                      bias_act_kernel<float, T><<<cuda_blocks(c, (size_t)total), CUDA_THREADS, 0, c->stream>>>(
                          x, (T *)y, b, (unsigned)total, (unsigned)channels, (unsigned)inner, act));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_gather(void *ctx, const uint8_t *images, const int32_t *labels, const int32_t *index, int n,
                int sample_elems, const gather_aug *aug, void *x, int32_t *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n < 0 || sample_elems <= 0)
        return ERR(ST_INPUT, "gather: bad batch shape (%d samples of %d values)", n, sample_elems);
    if (n == 0) return ST_OK;
    if (aug) {  // device memory: its shape is the caller's to match (the CPU backend checks it)
        TRY(size_check((size_t)n * sample_elems, "gather", "the batch"));
        const unsigned blocks = cuda_blocks(c, (size_t)n * sample_elems);
        CUDA_ACT_DISPATCH(c, T,
                          gather_aug_kernel<T><<<blocks, CUDA_THREADS, 0, c->stream>>>(images, labels, index, n,
                                                                                       sample_elems, aug, (T *)x, y,
                                                                                       c->nhwc));
        cudaCheckLaunch();
        return ST_OK;
    }
    if (c->nhwc)  // the plain gather knows no channel count (backend_ops.def)
        return ERR(ST_INPUT, "gather: the NHWC layout needs the sample's shape: pass gather parameters (aug), with "
                             "every transform off for a plain gather");
    CUDA_ACT_DISPATCH(c, T,
                      gather_kernel<T><<<cuda_blocks(c, (size_t)n * sample_elems), CUDA_THREADS, 0, c->stream>>>(
                          images, labels, index, n, sample_elems, (T *)x, y));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_pool_forward(void *ctx, const pool_desc *d, const void *x, void *y, int32_t *argmax) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    const size_t total = (size_t)d->n * d->c * d->oh * d->ow;
    TRY(size_check((size_t)d->n * d->c * d->h * d->w, "pool_forward", "the input"));
    if (total == 0) return ST_OK;
    CUDA_ACT_DISPATCH(c, T,
                      pool_fwd_kernel<T><<<cuda_blocks(c, total), CUDA_THREADS, 0, c->stream>>>(
                          (const T *)x, (T *)y, argmax, (unsigned)total, d->c, d->h, d->w, d->oh, d->ow, d->size,
                          d->stride, d->pad, c->nhwc));
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_pool_backward(void *ctx, const pool_desc *d, const void *dy, const int32_t *argmax, void *dx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    const size_t total = (size_t)d->n * d->c * d->h * d->w;
    TRY(size_check(total, "pool_backward", "the input"));
    if (total == 0) return ST_OK;
    CUDA_ACT_DISPATCH(c, T,
                      pool_bwd_kernel<T><<<cuda_blocks(c, total), CUDA_THREADS, 0, c->stream>>>(
                          (const T *)dy, argmax, (T *)dx, (unsigned)total, d->c, d->h, d->w, d->oh, d->ow, d->size,
                          d->stride, d->pad, c->nhwc));
    cudaCheckLaunch();
    return ST_OK;
}

// cuBLAS is column-major. A row-major [r, c] matrix is, read column-major, its transpose [c x r] with leading
// dimension c. So with x[n,in], w[out,in], y[n,out] row-major:
//   forward  y^T[out x n]  = W[out x in] · x^T[in x n]:   A = w read as W^T[in x out] (ld in), op T;
//                                                          B = x read as x^T[in x n]   (ld in), op N.
//   dW       dW^T[in x out] = x^T[in x n] · dy[n x out]:   A = x as x^T (ld in), op N; B = dy read as dy^T
//                                                          [out x n] (ld out), op T.
//   dx       dx^T[in x n]  = W^T[in x out] · dy^T[out x n]: A = w as W^T (ld in), op N; B = dy as dy^T (ld out),
//                                                          op N.
// net.precision=bf16/fp16 (c->precision): the same products on 16-bit copies of the operands in the context's
// scratch (cuBLAS's tensor cores), accumulated in fp32 (CUBLAS_COMPUTE_32F) and written as fp32 (Ctype
// CUDA_R_32F), so y, dx and dw are rounded only where the model rounds them, as in the CPU emulation. grads16
// (bf16 only): dw is written bf16 (Ctype CUDA_R_16BF: cuBLAS rounds the fp32 accumulator once, to nearest even),
// the value the CPU stores after its fp32 GEMM.
// act16 (16-bit activations, always of the precision's format): the GEMMs read x and the masked dy where they are
// (only the weight is cast to a 16-bit copy, as above). Forward writes the fp32 product into the scratch and the
// bias + activation kernel stores y from it, rounded once, as the CPU stores its fp32 op's y. Backward-data writes dx
// in 16 bits directly (Ctype the format: cuBLAS rounds the fp32 accumulator once, to nearest even); dw as above.
static cudaDataType lp_type(int format) { return format == PREC_BF16 ? CUDA_R_16BF : CUDA_R_16F; }

static int dense_lp_forward(cuda_ctx *c, int n, int in, int out, const float *x, const float *w, float *y) {
    const size_t wb = cuda_lp_bytes((size_t)out * in);
    char *s = NULL;
    TRY(cuda_lp_scratch(c, wb + cuda_lp_bytes((size_t)n * in), (void **)&s));
    TRY(cuda_lp_cast_in(c, c->precision, (size_t)out * in, w, s));
    TRY(cuda_lp_cast_in(c, c->precision, (size_t)n * in, x, s + wb));
    const float one = 1.f, zero = 0.f;
    const cudaDataType t = lp_type(c->precision);
    cublasCheck(cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, s, t, in, s + wb, t, in, &zero, y,
                             CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return ST_OK;
}

// act16: the fp32 product in the scratch (after the weight's copy), then y = act(product + b) stored once.
static int dense_act16_forward(cuda_ctx *c, int n, int in, int out, int act, const void *x, const float *w,
                               const float *b, void *y) {
    const size_t wb = cuda_lp_bytes((size_t)out * in);
    char *s = NULL;
    TRY(cuda_lp_scratch(c, wb + (size_t)n * out * sizeof(float), (void **)&s));
    TRY(cuda_lp_cast_in(c, c->act16, (size_t)out * in, w, s));
    float *y32 = (float *)(s + wb);
    const float one = 1.f, zero = 0.f;
    const cudaDataType t = lp_type(c->act16);
    cublasCheck(cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, s, t, in, x, t, in, &zero, y32,
                             CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return cuda_bias_act_store(c, y32, y, b, n * out, out, 1, act);
}

// The two backward products from the 16-bit x16 and dy16 (act16: the activation buffers themselves; else copies),
// dx of type dx_type (fp32, or act16's format).
static int dense_lp_products(cuda_ctx *c, int n, int in, int out, const void *x16, const float *w, const void *dy16,
                             void *dx, cudaDataType dx_type, void *dw, void *w16) {
    const float one = 1.f, zero = 0.f;
    const cudaDataType t = lp_type(c->precision);
    if (dw)
        cublasCheck(cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, &one, x16, t, in, dy16, t, out, &zero,
                                 dw, c->grads16 ? CUDA_R_16BF : CUDA_R_32F, in, CUBLAS_COMPUTE_32F,
                                 CUBLAS_GEMM_DEFAULT));
    if (dx) {
        TRY(cuda_lp_cast_in(c, c->precision, (size_t)out * in, w, w16));
        cublasCheck(cublasGemmEx(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, &one, w16, t, in, dy16, t, out, &zero,
                                 dx, dx_type, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    return ST_OK;
}

// dy (already masked by act') is cast as well: exact for relu/relu6/none, whose masks are 0 or 1.
static int dense_lp_backward(cuda_ctx *c, int n, int in, int out, const float *x, const float *w, const float *dy,
                             float *dx, void *dw) {
    const size_t wb = cuda_lp_bytes((size_t)out * in), xb = cuda_lp_bytes((size_t)n * in);
    char *s = NULL;
    TRY(cuda_lp_scratch(c, wb + xb + cuda_lp_bytes((size_t)n * out), (void **)&s));
    char *w16 = s, *x16 = s + wb, *dy16 = s + wb + xb;
    TRY(cuda_lp_cast_in(c, c->precision, (size_t)n * out, dy, dy16));
    if (dw) TRY(cuda_lp_cast_in(c, c->precision, (size_t)n * in, x, x16));
    return dense_lp_products(c, n, in, out, x16, w, dy16, dx, CUDA_R_32F, dw, w16);
}

// act16: x and the masked dy (stored rounded by the mask kernel: exact for relu/relu6/none) as they are; only the
// weight's copy in the scratch, for dx.
static int dense_act16_backward(cuda_ctx *c, int n, int in, int out, const void *x, const float *w, const void *dy,
                                void *dx, void *dw) {
    void *w16 = NULL;
    if (dx) TRY(cuda_lp_scratch(c, cuda_lp_bytes((size_t)out * in), &w16));
    return dense_lp_products(c, n, in, out, x, w, dy, dx, lp_type(c->act16), dw, w16);
}

int cuda_dense_forward(void *ctx, int n, int in, int out, int act, const void *x, const float *w, const float *b,
                       void *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(act_check(act, "dense_forward"));
    if (n < 0 || in <= 0 || out <= 0) return ERR(ST_INPUT, "dense_forward: bad shape n=%d in=%d out=%d", n, in, out);
    TRY(size_check((size_t)n * out, "dense_forward", "the output"));
    if (n == 0) return ST_OK;
    if (c->act16) return dense_act16_forward(c, n, in, out, act, x, w, b, y);
    const float one = 1.f, zero = 0.f;
    if (c->precision)
        TRY(dense_lp_forward(c, n, in, out, (const float *)x, w, (float *)y));
    else
        cublasCheck(cublasSgemm(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, w, in, (const float *)x, in,
                                &zero, (float *)y, out));
    return cuda_bias_act(c, y, b, n * out, out, 1, act);
}

int cuda_dense_backward(void *ctx, int n, int in, int out, int act, const void *x, const float *w, const void *y,
                        void *dy, void *dx, void *dw, void *db) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(act_check(act, "dense_backward"));
    if (n < 0 || in <= 0 || out <= 0) return ERR(ST_INPUT, "dense_backward: bad shape n=%d in=%d out=%d", n, in, out);
    TRY(size_check((size_t)n * out, "dense_backward", "the output"));
    const float one = 1.f, zero = 0.f;
    if (n == 0) {
        // No samples: the gradients are zero (overwritten, as always; bf16 zero is all-zero bits too).
        const size_t g = c->grads16 ? sizeof(uint16_t) : sizeof(float);
        if (dw) cudaCheck(cudaMemsetAsync(dw, 0, (size_t)out * in * g, c->stream));
        if (db) cudaCheck(cudaMemsetAsync(db, 0, (size_t)out * g, c->stream));
        return ST_OK;
    }
    // The mask must be applied to dy before both products use it.
    if (act != ACT_NONE || db) {
        const dim3 grid((unsigned)((out + 31) / 32)), block(32, 8);
        if (c->grads16)
            CUDA_ACT_DISPATCH(c, T,
                              dense_bias_grad_kernel<T, uint16_t><<<grid, block, 0, c->stream>>>(
                                  (T *)dy, (const T *)y, (uint16_t *)db, n, out, act));
        else
            CUDA_ACT_DISPATCH(c, T,
                              dense_bias_grad_kernel<T, float><<<grid, block, 0, c->stream>>>(
                                  (T *)dy, (const T *)y, (float *)db, n, out, act));
        cudaCheckLaunch();
    }
    if (c->act16) return dense_act16_backward(c, n, in, out, x, w, dy, dx, dw);
    // grads16 implies precision bf16 (backend_cuda_set_options): its dw is always the 16-bit GEMM's
    if (c->precision)
        return dense_lp_backward(c, n, in, out, (const float *)x, w, (const float *)dy, (float *)dx, dw);
    if (dw)
        cublasCheck(cublasSgemm(c->cublas, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, &one, (const float *)x, in,
                                (const float *)dy, out, &zero, (float *)dw, in));
    if (dx)
        cublasCheck(cublasSgemm(c->cublas, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, &one, w, in, (const float *)dy, out,
                                &zero, (float *)dx, in));
    return ST_OK;
}

int cuda_softmax_xent(void *ctx, int n, int classes, const void *logits, const int32_t *labels, float smoothing,
                      float scale, void *dlogits, double *loss_acc, int32_t *correct_acc) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n < 0 || classes <= 0) return ERR(ST_INPUT, "softmax_xent: bad shape n=%d classes=%d", n, classes);
    TRY(size_check((size_t)n * classes, "softmax_xent", "the logits"));
    if (n == 0) return ST_OK;
    const unsigned blocks = (unsigned)((n + XENT_WARPS - 1) / XENT_WARPS);
    CUDA_ACT_DISPATCH(c, T,
                      softmax_xent_kernel<T><<<blocks, XENT_WARPS * 32, 0, c->stream>>>(
                          n, classes, (const T *)logits, labels, smoothing, scale, (T *)dlogits, loss_acc,
                          correct_acc));
    cudaCheckLaunch();
    return ST_OK;
}

static int aligned16(const void *a, const void *b, const void *c, const void *d) {
    return (((uintptr_t)a | (uintptr_t)b | (uintptr_t)c | (uintptr_t)d) & 15u) == 0;
}

int cuda_adam_step(void *ctx, size_t n, float *p, const float *g, float *m, float *v, const adam_hyper *h) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n == 0) return ST_OK;
    if (aligned16(p, g, m, v))
        adam_kernel<true><<<cuda_blocks(c, (n + 3) / 4), CUDA_THREADS, 0, c->stream>>>(n, p, g, m, v, h);
    else
        adam_kernel<false><<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, p, g, m, v, h);
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_sgd_step(void *ctx, size_t n, float *p, const float *g, float *vel, const sgd_hyper *h) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n == 0) return ST_OK;
    if (aligned16(p, g, vel, vel))
        sgd_kernel<true><<<cuda_blocks(c, (n + 3) / 4), CUDA_THREADS, 0, c->stream>>>(n, p, g, vel, h);
    else
        sgd_kernel<false><<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, p, g, vel, h);
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_scale(void *ctx, size_t n, float alpha, float *x) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n == 0) return ST_OK;
    scale_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, alpha, x);
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_add(void *ctx, size_t n, const float *x, float *y) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (n == 0) return ST_OK;
    add_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, x, y);
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_clip_grad_norm(void *ctx, size_t n, float *g, float max_norm, double *sumsq) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    cudaCheck(cudaMemsetAsync(sumsq, 0, sizeof *sumsq, c->stream));
    if (n == 0) return ST_OK;
    const unsigned blocks = cuda_blocks(c, n);
    sumsq_partial_kernel<<<blocks, CUDA_THREADS, 0, c->stream>>>(n, g, c->partials);
    cudaCheckLaunch();
    sum_partials_kernel<<<1, CUDA_THREADS, 0, c->stream>>>(blocks, c->partials, sumsq);
    cudaCheckLaunch();
    clip_scale_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, g, sumsq, max_norm);
    cudaCheckLaunch();
    return ST_OK;
}

int cuda_count_nonfinite(void *ctx, size_t n, const float *x, int32_t *out) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    cudaCheck(cudaMemsetAsync(out, 0, sizeof *out, c->stream));
    if (n == 0) return ST_OK;
    count_nonfinite_kernel<<<cuda_blocks(c, n), CUDA_THREADS, 0, c->stream>>>(n, x, out);
    cudaCheckLaunch();
    return ST_OK;
}
