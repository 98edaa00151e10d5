// layer_ops_cpu.c — the CPU backend's ops for the layer kinds [shortcut], [route], [dropout] and [avgpool]: residual add + activation and
// the activation gradient ([shortcut]), channel slices ([route]), dropout masks from a counter-based hash
// (src/dropout_hash.h, the same draw as on CUDA), average pooling ([avgpool]).
#include <stdint.h>
#include <string.h>

#include "backend_cpu_impl.h"
#include "dropout_hash.h"

// ---------------------------------------------------------------------------------------------------------
// Layer ops of [shortcut], [route], [dropout] and [avgpool]: residual add + activation, activation gradient ([shortcut]), channel slices
// ([route]), dropout, average pooling

typedef struct ew_job {
    size_t n;
    int act;
    const float *a, *b;
    float *y;
} ew_job;

// The activation is chosen once per part, eight lanes at a time.
DDP_VEC_CLONES static void add_act_part(void *arg, int part, int parts) {
    const ew_job *j = arg;
    int64_t lo, hi;
    split_range((int64_t)j->n, parts, part, &lo, &hi);
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) v8_store(j->y + i, v8_act(j->act, v8_load(j->a + i) + v8_load(j->b + i)));
    for (; i < hi; i++) j->y[i] = act_apply(j->act, j->a[i] + j->b[i]);
}

int cpu_add_act(void *ctx, size_t n, int act, const float *a, const float *b, float *y) {
    cpu_ctx *c = ctx;
    TRY(dense_check(1, 1, 1, act, "add_act"));
    ew_job j = {.n = n, .act = act, .a = a, .b = b, .y = y};
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 65536), add_act_part, &j);
    return ST_OK;
}

// a = y, b = dy
DDP_VEC_CLONES static void act_backward_part(void *arg, int part, int parts) {
    const ew_job *j = arg;
    int64_t lo, hi;
    split_range((int64_t)j->n, parts, part, &lo, &hi);
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) v8_store(j->y + i, v8_act_grad(j->act, v8_load(j->a + i), v8_load(j->b + i)));
    for (; i < hi; i++) j->y[i] = act_grad(j->act, j->a[i], j->b[i]);
}

int cpu_act_backward(void *ctx, size_t n, int act, const float *y, const float *dy, float *dx) {
    cpu_ctx *c = ctx;
    TRY(dense_check(1, 1, 1, act, "act_backward"));
    ew_job j = {.n = n, .act = act, .a = y, .b = dy, .y = dx};
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 65536), act_backward_part, &j);
    return ST_OK;
}

// An activation on its own (act_forward: a = x; act_backward_input: a = x, b = dy), for the layers' unfused
// activations; any activation, value by value.
static void act_forward_part(void *arg, int part, int parts) {
    const ew_job *j = arg;
    int64_t lo, hi;
    split_range((int64_t)j->n, parts, part, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) j->y[i] = act_apply(j->act, j->a[i]);
}

static void act_backward_input_part(void *arg, int part, int parts) {
    const ew_job *j = arg;
    int64_t lo, hi;
    split_range((int64_t)j->n, parts, part, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) j->y[i] = act_grad_input(j->act, j->a[i], j->b[i]);
}

static int act_known_check(int act, const char *op) {
    if (!act_known(act)) return ERR(ST_INPUT, "%s: unknown activation %d", op, act);
    return ST_OK;
}

int cpu_act_forward(void *ctx, size_t n, int act, const float *x, float *y) {
    cpu_ctx *c = ctx;
    TRY(act_known_check(act, "act_forward"));
    ew_job j = {.n = n, .act = act, .a = x, .y = y};
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 16384), act_forward_part, &j);
    return ST_OK;
}

int cpu_act_backward_input(void *ctx, size_t n, int act, const float *x, const float *dy, float *dx) {
    cpu_ctx *c = ctx;
    TRY(act_known_check(act, "act_backward_input"));
    ew_job j = {.n = n, .act = act, .a = x, .b = dy, .y = dx};
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 16384), act_backward_input_part, &j);
    return ST_OK;
}

// Channel slices ([route]): one block of c·hw contiguous values per sample.
typedef struct chan_job {
    int n, c, hw, src_c, src_off, dst_c, dst_off;
    const float *src;
    float *dst;
} chan_job;

static void channel_copy_part(void *arg, int part, int parts) {
    const chan_job *j = arg;
    int64_t lo, hi;
    split_range(j->n, parts, part, &lo, &hi);
    const size_t block = (size_t)j->c * j->hw;
    for (int64_t i = lo; i < hi; i++)
        memcpy(j->dst + ((size_t)i * j->dst_c + j->dst_off) * j->hw,
               j->src + ((size_t)i * j->src_c + j->src_off) * j->hw, block * sizeof(float));
}

int cpu_channel_copy(void *ctx, int n, int c, int hw, const float *src, int src_c, int src_off, float *dst,
                     int dst_c, int dst_off) {
    cpu_ctx *c_ = ctx;
    if (n < 0 || c < 0 || hw < 1 || src_off < 0 || dst_off < 0 || src_off + c > src_c || dst_off + c > dst_c)
        return ERR(ST_INPUT, "channel_copy: %d channels at %d of %d to %d of %d (n=%d, hw=%d)", c, src_off, src_c,
                   dst_off, dst_c, n, hw);
    chan_job j = {.n = n, .c = c, .hw = hw, .src_c = src_c, .src_off = src_off, .dst_c = dst_c, .dst_off = dst_off,
                  .src = src, .dst = dst};
    cpu_pool_run(&c_->pool, parts_for(c_, (double)n * c * hw, 65536), channel_copy_part, &j);
    return ST_OK;
}

// Layout change, one block (sample, or filter) per part: reads x in order, writes y with stride c or hw. The
// values are moved, never read as numbers: float32 or 16-bit.
typedef struct layout_job {
    int n, c, hw, to_nhwc;
    const void *x;
    void *y;
} layout_job;

#define LAYOUT_BLOCKS(T)                                                                          \
    for (int64_t b = lo; b < hi; b++) {                                                          \
        const T *x = (const T *)j->x + (size_t)b * block;                                        \
        T *y = (T *)j->y + (size_t)b * block;                                                    \
        for (int ch = 0; ch < j->c; ch++)                                                        \
            for (int q = 0; q < j->hw; q++) {                                                    \
                const size_t chw = (size_t)ch * j->hw + q, hwc = (size_t)q * j->c + ch;          \
                if (j->to_nhwc) y[hwc] = x[chw];                                                 \
                else y[chw] = x[hwc];                                                            \
            }                                                                                    \
    }

static void layout_convert_part(void *arg, int part, int parts) {
    const layout_job *j = arg;
    int64_t lo, hi;
    split_range(j->n, parts, part, &lo, &hi);
    const size_t block = (size_t)j->c * j->hw;
    LAYOUT_BLOCKS(float)
}

static void layout_convert16_part(void *arg, int part, int parts) {
    const layout_job *j = arg;
    int64_t lo, hi;
    split_range(j->n, parts, part, &lo, &hi);
    const size_t block = (size_t)j->c * j->hw;
    LAYOUT_BLOCKS(uint16_t)
}

int cpu_layout_convert(void *ctx, int n, int c, int hw, int to_nhwc, int elem_bytes, const void *x, void *y) {
    cpu_ctx *c_ = ctx;
    if (n < 0 || c < 1 || hw < 1)
        return ERR(ST_INPUT, "layout_convert: bad shape n=%d c=%d hw=%d", n, c, hw);
    if (elem_bytes != 4 && elem_bytes != 2)
        return ERR(ST_INPUT, "layout_convert: elem_bytes %d (want 4 or 2)", elem_bytes);
    layout_job j = {.n = n, .c = c, .hw = hw, .to_nhwc = to_nhwc != 0, .x = x, .y = y};
    cpu_pool_run(&c_->pool, parts_for(c_, (double)n * c * hw, 65536),
                 elem_bytes == 4 ? layout_convert_part : layout_convert16_part, &j);
    return ST_OK;
}

// Dropout: the mask is recomputed from the key for every call (forward x -> y, backward dy -> dx).
typedef struct dropout_job {
    size_t n;
    uint64_t base;
    uint32_t threshold;
    float scale;
    const float *x;
    float *y;
} dropout_job;

static void dropout_part(void *arg, int part, int parts) {
    const dropout_job *j = arg;
    int64_t lo, hi;
    split_range((int64_t)j->n, parts, part, &lo, &hi);
    for (int64_t i = lo; i < hi; i++)
        j->y[i] = dropout_keep(j->base, (uint64_t)i, j->threshold) ? j->x[i] * j->scale : 0.0f;
}

int cpu_dropout(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const float *x,
                float *y) {
    cpu_ctx *c = ctx;
    if (!(rate >= 0.0f && rate < 1.0f)) return ERR(ST_INPUT, "dropout: rate %g outside [0, 1)", (double)rate);
    dropout_job j = {.n = n, .base = dropout_base(key->seed, key->step, key->rank, stream),
                     .threshold = dropout_threshold(rate), .scale = 1.0f / (1.0f - rate), .x = x, .y = y};
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 65536), dropout_part, &j);
    return ST_OK;
}

// Average pooling. Backward gathers (per input, the windows containing it, in ascending output order) rather than
// scattering, so that its sums are added in the order of the CUDA kernel.
typedef struct avgpool_job {
    int n, c, h, w, kh, kw, stride, oh, ow;
    float inv;
    const float *x;
    float *y;
} avgpool_job;

static int avgpool_check(int n, int c, int h, int w, int kh, int kw, int stride, const char *op) {
    if (n < 0 || c < 1 || kh < 1 || kw < 1 || stride < 1 || kh > h || kw > w)
        return ERR(ST_INPUT, "%s: window %dx%d (stride %d) on %d x %dx%dx%d", op, kh, kw, stride, n, c, h, w);
    return ST_OK;
}

static void avgpool_forward_part(void *arg, int part, int parts) {
    const avgpool_job *j = arg;
    int64_t lo, hi;
    split_range((int64_t)j->n * j->c, parts, part, &lo, &hi);
    for (int64_t p = lo; p < hi; p++) {
        const float *xp = j->x + (size_t)p * j->h * j->w;
        float *yp = j->y + (size_t)p * j->oh * j->ow;
        for (int oy = 0; oy < j->oh; oy++)
            for (int ox = 0; ox < j->ow; ox++) {
                float s = 0.0f;
                for (int r = 0; r < j->kh; r++)
                    for (int q = 0; q < j->kw; q++) s += xp[(size_t)(oy * j->stride + r) * j->w + ox * j->stride + q];
                yp[oy * j->ow + ox] = s * j->inv;
            }
    }
}

// x is dy [n, c, oh, ow], y is dx [n, c, h, w]
static void avgpool_backward_part(void *arg, int part, int parts) {
    const avgpool_job *j = arg;
    int64_t lo, hi;
    split_range((int64_t)j->n * j->c, parts, part, &lo, &hi);
    for (int64_t p = lo; p < hi; p++) {
        const float *dyp = j->x + (size_t)p * j->oh * j->ow;
        float *dxp = j->y + (size_t)p * j->h * j->w;
        for (int iy = 0; iy < j->h; iy++) {
            const int oy_lo = iy < j->kh ? 0 : (iy - j->kh) / j->stride + 1;
            const int oy_hi = iy / j->stride < j->oh - 1 ? iy / j->stride : j->oh - 1;
            for (int ix = 0; ix < j->w; ix++) {
                const int ox_lo = ix < j->kw ? 0 : (ix - j->kw) / j->stride + 1;
                const int ox_hi = ix / j->stride < j->ow - 1 ? ix / j->stride : j->ow - 1;
                float g = 0.0f;
                for (int oy = oy_lo; oy <= oy_hi; oy++)
                    for (int ox = ox_lo; ox <= ox_hi; ox++) g += dyp[oy * j->ow + ox];
                dxp[(size_t)iy * j->w + ix] = g * j->inv;
            }
        }
    }
}

static int cpu_avgpool(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *in, float *out,
                       pool_fn fn, const char *op) {
    cpu_ctx *cc = ctx;
    TRY(avgpool_check(n, c, h, w, kh, kw, stride, op));
    avgpool_job j = {.n = n, .c = c, .h = h, .w = w, .kh = kh, .kw = kw, .stride = stride,
                     .oh = (h - kh) / stride + 1, .ow = (w - kw) / stride + 1, .inv = 1.0f / (float)(kh * kw),
                     .x = in, .y = out};
    cpu_pool_run(&cc->pool, parts_for(cc, (double)n * c * h * w, 32768), fn, &j);
    return ST_OK;
}

int cpu_avgpool_forward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *x,
                        float *y) {
    return cpu_avgpool(ctx, n, c, h, w, kh, kw, stride, x, y, avgpool_forward_part, "avgpool_forward");
}

int cpu_avgpool_backward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *dy,
                         float *dx) {
    return cpu_avgpool(ctx, n, c, h, w, kh, kw, stride, dy, dx, avgpool_backward_part, "avgpool_backward");
}
