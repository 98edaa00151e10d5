// backend_cpu_store.c — the CPU table's slots for the ops that read or write activations or parameter gradients:
// how the CPU backend stores what its float32 ops (src/cpu/) compute.
//
//   activations  float32 (the ops run on the buffers as they are), or 16-bit (backend_cpu_opts.act16: bf16 or fp16
//                bit patterns, net.act_storage=compute): each operand is converted into a float32 scratch, the op
//                runs there, and each output is stored rounded to nearest even (src/precision.h) -- the values a
//                GPU holding 16-bit activations writes, at a pass per operand (the CPU's purpose here is to be
//                the reference, and to halve activation memory where that matters more than time)
//   gradients    float32, or bf16 (backend_cpu_opts.grads16): conv_backward, dense_backward and bn_grad_stats
//                compute their float32 sums into a scratch and write them rounded to bf16 where dw and db point --
//                the values a GPU's 16-bit GEMM output holds, which the all-reduce then sends as they are
//
// With act16 the results are bit for bit those of float32 buffers rounded after each op (the model's emulation,
// src/model.c), wherever the op computes the same float32 values from the same inputs: tests/cli_precision.sh.
#include <stdlib.h>

#include "cpu/backend_cpu_impl.h"
#include "precision.h"

// ---------------------------------------------------------------------------------------------------------
// Scratch

static int scratch(cpu_ctx *c, int slot, size_t n, float **out) {
    cpu_scratch *s = &c->s32[slot];
    if (s->cap < n) {
        float *p = realloc(s->p, (n ? n : 1) * sizeof *p);
        if (!p) return ERR(ST_RUNTIME, "cpu backend: out of host memory for %zu float32 values of a 16-bit operand", n);
        s->p = p;
        s->cap = n;
    }
    *out = s->p;
    return ST_OK;
}

// The n 16-bit values at src as float32, in scratch `slot` (*out NULL where src is).
static int load16(cpu_ctx *c, int slot, const void *src, size_t n, float **out) {
    *out = NULL;
    if (!src) return ST_OK;
    TRY(scratch(c, slot, n, out));
    const uint16_t *h = src;
    float *x = *out;
    if (c->act16 == PREC_BF16)
        for (size_t i = 0; i < n; i++) x[i] = precision_from_bits((uint32_t)h[i] << 16);
    else
        for (size_t i = 0; i < n; i++) x[i] = precision_from16(c->act16, h[i]);
    return ST_OK;
}

// n float32 values stored at dst as 16-bit values of `format` (nothing where dst is NULL).
static void store16(int format, const float *x, size_t n, void *dst) {
    uint16_t *y = dst;
    if (y)
        for (size_t i = 0; i < n; i++) y[i] = precision_to16(format, x[i]);
}

// A room of n float32 in scratch `slot` for an output, or NULL where the output is (a nullable dx).
static int room(cpu_ctx *c, int slot, const void *dst, size_t n, float **out) {
    *out = NULL;
    return dst ? scratch(c, slot, n, out) : ST_OK;
}

// An operand's count from the op's sizes; a negative size is left for the op to name (it checks its arguments).
static size_t count_of(int64_t a, int64_t b, int64_t c, int64_t d) {
    return a < 0 || b < 0 || c < 0 || d < 0 ? 0 : (size_t)a * (size_t)b * (size_t)c * (size_t)d;
}

// ---------------------------------------------------------------------------------------------------------
// Parameter gradients in bf16 (grads16)

static int g32_reserve(cpu_ctx *c, size_t n) {
    if (c->g32_cap >= n) return ST_OK;
    float *p = realloc(c->g32, n * sizeof *p);
    if (!p) return ERR(ST_RUNTIME, "cpu backend: out of host memory for %zu gradient values", n);
    c->g32 = p;
    c->g32_cap = n;
    return ST_OK;
}

static int conv_backward32(cpu_ctx *c, const conv_desc *d, const float *x, const float *w, const float *y, float *dy,
                           float *dx, void *dw, void *db, void *ws) {
    if (!c->grads16) return cpu_conv_backward(c, d, x, w, y, dy, dx, dw, db, ws);
    const size_t nw = (size_t)d->k * (d->c / (d->groups > 0 ? d->groups : 1)) * d->r * d->s;
    TRY(g32_reserve(c, nw + (size_t)d->k));
    TRY(cpu_conv_backward(c, d, x, w, y, dy, dx, dw ? c->g32 : NULL, db ? c->g32 + nw : NULL, ws));
    store16(PREC_BF16, c->g32, nw, dw);
    store16(PREC_BF16, c->g32 + nw, (size_t)d->k, db);
    return ST_OK;
}

static int dense_backward32(cpu_ctx *c, int n, int in, int out, int act, const float *x, const float *w,
                            const float *y, float *dy, float *dx, void *dw, void *db) {
    if (!c->grads16) return cpu_dense_backward(c, n, in, out, act, x, w, y, dy, dx, dw, db);
    const size_t nw = count_of(in, out, 1, 1);
    TRY(g32_reserve(c, nw + count_of(out, 1, 1, 1)));
    TRY(cpu_dense_backward(c, n, in, out, act, x, w, y, dy, dx, dw ? c->g32 : NULL, db ? c->g32 + nw : NULL));
    store16(PREC_BF16, c->g32, nw, dw);
    store16(PREC_BF16, c->g32 + nw, (size_t)out, db);
    return ST_OK;
}

static int bn_grad_stats32(cpu_ctx *c, const bn_desc *d, const float *x, const float *y, const float *save,
                           float *dy, void *dw, void *db, float *gstats) {
    if (!c->grads16) return cpu_bn_grad_stats(c, d, x, y, save, dy, dw, db, gstats);
    TRY(g32_reserve(c, count_of(2, d->c, 1, 1)));
    TRY(cpu_bn_grad_stats(c, d, x, y, save, dy, c->g32, c->g32 + d->c, gstats));
    store16(PREC_BF16, c->g32, (size_t)d->c, dw);
    store16(PREC_BF16, c->g32 + d->c, (size_t)d->c, db);
    return ST_OK;
}

int cpu_slot_grads16(void *ctx, int *on) {
    *on = ((const cpu_ctx *)ctx)->grads16;
    return ST_OK;
}

int cpu_slot_act16(void *ctx, int *format) {
    *format = ((const cpu_ctx *)ctx)->act16;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// The activation ops. Scratch slots: 0..3 in the order of the op's activation parameters.

int cpu_slot_gather(void *ctx, const uint8_t *images, const int32_t *labels, const int32_t *index, int n,
                    int sample_elems, const gather_aug *aug, void *x, int32_t *y) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_gather(c, images, labels, index, n, sample_elems, aug, x, y);
    const size_t e = count_of(n, sample_elems, 1, 1);
    float *x32;
    TRY(room(c, 0, x, e, &x32));
    TRY(cpu_gather(c, images, labels, index, n, sample_elems, aug, x32, y));
    store16(c->act16, x32, e, x);
    return ST_OK;
}

int cpu_slot_conv_forward(void *ctx, const conv_desc *d, const void *x, const float *w, const float *b, void *y,
                          void *ws) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_conv_forward(c, d, x, w, b, y, ws);
    const size_t ey = count_of(d->n, d->k, d->oh, d->ow);
    float *x32, *y32;
    TRY(load16(c, 0, x, count_of(d->n, d->c, d->h, d->w), &x32));
    TRY(room(c, 1, y, ey, &y32));
    TRY(cpu_conv_forward(c, d, x32, w, b, y32, ws));
    store16(c->act16, y32, ey, y);
    return ST_OK;
}

int cpu_slot_conv_backward(void *ctx, const conv_desc *d, const void *x, const float *w, const void *y, void *dy,
                           void *dx, void *dw, void *db, void *ws) {
    cpu_ctx *c = ctx;
    if (!c->act16) return conv_backward32(c, d, x, w, y, dy, dx, dw, db, ws);
    const size_t ex = count_of(d->n, d->c, d->h, d->w), ey = count_of(d->n, d->k, d->oh, d->ow);
    float *x32, *y32, *dy32, *dx32;
    TRY(load16(c, 0, x, ex, &x32));
    TRY(load16(c, 1, y, ey, &y32));
    TRY(load16(c, 2, dy, ey, &dy32));
    TRY(room(c, 3, dx, ex, &dx32));
    TRY(conv_backward32(c, d, x32, w, y32, dy32, dx32, dw, db, ws));
    store16(c->act16, dy32, ey, dy);  // overwritten with the pre-activation gradient, as the op says
    store16(c->act16, dx32, ex, dx);
    return ST_OK;
}

int cpu_slot_pool_forward(void *ctx, const pool_desc *d, const void *x, void *y, int32_t *argmax) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_pool_forward(c, d, x, y, argmax);
    const size_t ey = count_of(d->n, d->c, d->oh, d->ow);
    float *x32, *y32;
    TRY(load16(c, 0, x, count_of(d->n, d->c, d->h, d->w), &x32));
    TRY(room(c, 1, y, ey, &y32));
    TRY(cpu_pool_forward(c, d, x32, y32, argmax));
    store16(c->act16, y32, ey, y);
    return ST_OK;
}

int cpu_slot_pool_backward(void *ctx, const pool_desc *d, const void *dy, const int32_t *argmax, void *dx) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_pool_backward(c, d, dy, argmax, dx);
    const size_t ex = count_of(d->n, d->c, d->h, d->w);
    float *dy32, *dx32;
    TRY(load16(c, 0, dy, count_of(d->n, d->c, d->oh, d->ow), &dy32));
    TRY(room(c, 1, dx, ex, &dx32));
    TRY(cpu_pool_backward(c, d, dy32, argmax, dx32));
    store16(c->act16, dx32, ex, dx);
    return ST_OK;
}

int cpu_slot_dense_forward(void *ctx, int n, int in, int out, int act, const void *x, const float *w, const float *b,
                           void *y) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_dense_forward(c, n, in, out, act, x, w, b, y);
    const size_t ey = count_of(n, out, 1, 1);
    float *x32, *y32;
    TRY(load16(c, 0, x, count_of(n, in, 1, 1), &x32));
    TRY(room(c, 1, y, ey, &y32));
    TRY(cpu_dense_forward(c, n, in, out, act, x32, w, b, y32));
    store16(c->act16, y32, ey, y);
    return ST_OK;
}

int cpu_slot_dense_backward(void *ctx, int n, int in, int out, int act, const void *x, const float *w, const void *y,
                            void *dy, void *dx, void *dw, void *db) {
    cpu_ctx *c = ctx;
    if (!c->act16) return dense_backward32(c, n, in, out, act, x, w, y, dy, dx, dw, db);
    const size_t ex = count_of(n, in, 1, 1), ey = count_of(n, out, 1, 1);
    float *x32, *y32, *dy32, *dx32;
    TRY(load16(c, 0, x, ex, &x32));
    TRY(load16(c, 1, y, ey, &y32));
    TRY(load16(c, 2, dy, ey, &dy32));
    TRY(room(c, 3, dx, ex, &dx32));
    TRY(dense_backward32(c, n, in, out, act, x32, w, y32, dy32, dx32, dw, db));
    store16(c->act16, dy32, ey, dy);
    store16(c->act16, dx32, ex, dx);
    return ST_OK;
}

int cpu_slot_softmax_xent(void *ctx, int n, int classes, const void *logits, const int32_t *labels, float smoothing,
                          float scale, void *dlogits, double *loss_acc, int32_t *correct_acc) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_softmax_xent(c, n, classes, logits, labels, smoothing, scale, dlogits, loss_acc,
                                           correct_acc);
    const size_t e = count_of(n, classes, 1, 1);
    float *z32, *g32;
    TRY(load16(c, 0, logits, e, &z32));
    TRY(room(c, 1, dlogits, e, &g32));
    TRY(cpu_softmax_xent(c, n, classes, z32, labels, smoothing, scale, g32, loss_acc, correct_acc));
    store16(c->act16, g32, e, dlogits);
    return ST_OK;
}

static size_t bn_count(const bn_desc *d) { return count_of(d->n, d->c, d->hw, 1); }

int cpu_slot_bn_stats(void *ctx, const bn_desc *d, const void *x, float *stats) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_bn_stats(c, d, x, stats);
    float *x32;
    TRY(load16(c, 0, x, bn_count(d), &x32));
    return cpu_bn_stats(c, d, x32, stats);
}

int cpu_slot_bn_apply(void *ctx, const bn_desc *d, const void *x, const float *stats, const float *w, const float *b,
                      float *running, float *save, void *y) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_bn_apply(c, d, x, stats, w, b, running, save, y);
    float *x32, *y32;
    TRY(load16(c, 0, x, bn_count(d), &x32));
    TRY(room(c, 1, y, bn_count(d), &y32));
    TRY(cpu_bn_apply(c, d, x32, stats, w, b, running, save, y32));
    store16(c->act16, y32, bn_count(d), y);
    return ST_OK;
}

int cpu_slot_bn_grad_stats(void *ctx, const bn_desc *d, const void *x, const void *y, const float *save, void *dy,
                           void *dw, void *db, float *gstats) {
    cpu_ctx *c = ctx;
    if (!c->act16) return bn_grad_stats32(c, d, x, y, save, dy, dw, db, gstats);
    float *x32, *y32, *dy32;
    TRY(load16(c, 0, x, bn_count(d), &x32));
    TRY(load16(c, 1, y, bn_count(d), &y32));
    TRY(load16(c, 2, dy, bn_count(d), &dy32));
    TRY(bn_grad_stats32(c, d, x32, y32, save, dy32, dw, db, gstats));
    store16(c->act16, dy32, bn_count(d), dy);  // dz, which bn_grad_input reads
    return ST_OK;
}

int cpu_slot_bn_grad_input(void *ctx, const bn_desc *d, const void *x, const float *save, const float *w,
                           const float *gstats, const void *dz, void *dx) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_bn_grad_input(c, d, x, save, w, gstats, dz, dx);
    float *x32, *dz32, *dx32;
    TRY(load16(c, 0, x, bn_count(d), &x32));
    TRY(load16(c, 1, dz, bn_count(d), &dz32));
    TRY(room(c, 2, dx, bn_count(d), &dx32));
    TRY(cpu_bn_grad_input(c, d, x32, save, w, gstats, dz32, dx32));
    store16(c->act16, dx32, bn_count(d), dx);
    return ST_OK;
}

// The three elementwise ops of two activation operands (add_act's a + b, act_backward's y and dy, act_backward_input's
// x and dy): each allows its output where its second operand is, so the op writes over that scratch.
typedef int (*binary_op)(void *ctx, size_t n, int act, const float *p, const float *q, float *out);

static int binary16(cpu_ctx *c, binary_op op, size_t n, int act, const void *p, const void *q, void *out) {
    float *p32, *q32;
    TRY(load16(c, 0, p, n, &p32));
    TRY(load16(c, 1, q, n, &q32));
    TRY(op(c, n, act, p32, q32, q32));
    store16(c->act16, q32, n, out);
    return ST_OK;
}

int cpu_slot_add_act(void *ctx, size_t n, int act, const void *a, const void *b, void *y) {
    cpu_ctx *c = ctx;
    return c->act16 ? binary16(c, cpu_add_act, n, act, a, b, y) : cpu_add_act(c, n, act, a, b, y);
}

int cpu_slot_act_backward(void *ctx, size_t n, int act, const void *y, const void *dy, void *dx) {
    cpu_ctx *c = ctx;
    return c->act16 ? binary16(c, cpu_act_backward, n, act, y, dy, dx) : cpu_act_backward(c, n, act, y, dy, dx);
}

int cpu_slot_act_forward(void *ctx, size_t n, int act, const void *x, void *y) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_act_forward(c, n, act, x, y);
    float *x32;
    TRY(load16(c, 0, x, n, &x32));
    TRY(cpu_act_forward(c, n, act, x32, x32));
    store16(c->act16, x32, n, y);
    return ST_OK;
}

int cpu_slot_act_backward_input(void *ctx, size_t n, int act, const void *x, const void *dy, void *dx) {
    cpu_ctx *c = ctx;
    return c->act16 ? binary16(c, cpu_act_backward_input, n, act, x, dy, dx)
                    : cpu_act_backward_input(c, n, act, x, dy, dx);
}

// Values only move: the 16-bit patterns are copied as they are.
int cpu_slot_channel_copy(void *ctx, int n, int c_, int hw, const void *src, int src_c, int src_off, void *dst,
                          int dst_c, int dst_off) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_channel_copy(c, n, c_, hw, src, src_c, src_off, dst, dst_c, dst_off);
    if (n < 0 || c_ < 0 || hw < 0 || src_off < 0 || dst_off < 0 || src_off + c_ > src_c || dst_off + c_ > dst_c)
        return ERR(ST_INPUT, "channel_copy: %d channels at %d of %d to %d of %d (n=%d, hw=%d) do not fit", c_,
                   src_off, src_c, dst_off, dst_c, n, hw);
    const size_t row = (size_t)c_ * hw * sizeof(uint16_t);
    for (int i = 0; i < n; i++)
        memmove((uint16_t *)dst + ((size_t)i * dst_c + dst_off) * hw,
                (const uint16_t *)src + ((size_t)i * src_c + src_off) * hw, row);
    return ST_OK;
}

int cpu_slot_dropout(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const void *x,
                     void *y) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_dropout(c, n, rate, key, stream, x, y);
    float *x32, *y32;
    TRY(load16(c, 0, x, n, &x32));
    TRY(room(c, 1, y, n, &y32));
    TRY(cpu_dropout(c, n, rate, key, stream, x32, y32));
    store16(c->act16, y32, n, y);
    return ST_OK;
}

static size_t avgpool_out(int n, int c, int h, int w, int kh, int kw, int stride) {
    if (stride < 1 || kh < 1 || kw < 1 || h < kh || w < kw) return 0;
    return count_of(n, c, (h - kh) / stride + 1, (w - kw) / stride + 1);
}

int cpu_slot_avgpool_forward(void *ctx, int n, int c_, int h, int w, int kh, int kw, int stride, const void *x,
                             void *y) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_avgpool_forward(c, n, c_, h, w, kh, kw, stride, x, y);
    const size_t ey = avgpool_out(n, c_, h, w, kh, kw, stride);
    float *x32, *y32;
    TRY(load16(c, 0, x, count_of(n, c_, h, w), &x32));
    TRY(room(c, 1, y, ey, &y32));
    TRY(cpu_avgpool_forward(c, n, c_, h, w, kh, kw, stride, x32, y32));
    store16(c->act16, y32, ey, y);
    return ST_OK;
}

int cpu_slot_avgpool_backward(void *ctx, int n, int c_, int h, int w, int kh, int kw, int stride, const void *dy,
                              void *dx) {
    cpu_ctx *c = ctx;
    if (!c->act16) return cpu_avgpool_backward(c, n, c_, h, w, kh, kw, stride, dy, dx);
    const size_t ex = count_of(n, c_, h, w);
    float *dy32, *dx32;
    TRY(load16(c, 0, dy, avgpool_out(n, c_, h, w, kh, kw, stride), &dy32));
    TRY(room(c, 1, dx, ex, &dx32));
    TRY(cpu_avgpool_backward(c, n, c_, h, w, kh, kw, stride, dy32, dx32));
    store16(c->act16, dx32, ex, dx);
    return ST_OK;
}
