// backend_cpu_impl.h — private to the CPU backend: its context, the thread pool every op runs on, the helpers
// the op files share, and the op entry points each file contributes to the table in src/backend_cpu.c.
//
//   src/backend_cpu.c   context create/destroy, memory, timing marks, the table
//   thread_pool_cpu.c   the thread pool and the progress hook
//   conv_cpu.c          im2col/col2im and convolution (oneDNN plans: src/backend_cpu_dnnl.c)
//   ops_cpu.c           gather, max pooling, dense, softmax cross-entropy, optimizers, scale/add/count_nonfinite/
//                       clip_grad_norm
//   bn_cpu.c            batch normalisation (statistics, apply, the two halves of backward)
//   layer_ops_cpu.c     the ops of [shortcut], [route], [dropout], [avgpool]
//   linalg_cpu.c        gemm and orthogonalize (PowerSGD's products and Gram-Schmidt)
//   ../backend_cpu_store.c  the table's slots of the ops with activations or parameter gradients: float32, or
//                       16-bit activations / bf16 gradients converted around the ops above
//
// The op files call the pool (thread_pool_cpu.c) and this header's inline helpers, never each other; only the
// table files (src/backend_cpu.c, src/backend_cpu_store.c) call them (tests/cli_layering.sh: no cycles).
//
// Threading. Every op splits its work over the batch (or over disjoint columns) and runs the parts on a small
// pool of its own threads; each part calls a single-threaded sgemm (OpenBLAS's own pool is set to 1 thread).
//   - Convs run one im2col + sgemm per image rather than one whole-batch sgemm over a [C*R*S, N*OH*OW]
//     block: per image the block (139 KB for conv2 of the reference CNN) stays in L2 between im2col, sgemm
//     and the activation pass, where the whole-batch block (8.9 MB) streams through memory. Measured on one
//     Zen core: 34 GFLOP/s per image against 14-22 GFLOP/s whole-batch, and OpenBLAS's 2 threads on the
//     whole batch reached only 26 GFLOP/s in all.
//   - The pool instead of OpenMP: no extra runtime to link, and idle workers block after a short spin
//     (POOL_SPIN_NS) instead of libgomp's long default spin, which would take a core from an MPI rank or
//     the comm progress of a second process on the same machine. Interleaved runs measured the same step
//     time for both on 2 threads.
#pragma once
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "backend.h"
#include "backend_cpu_dnnl.h"
#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Thread pool: the calling thread is part 0, workers 1..n-1. One job at a time (the backend is not
// re-entrant, like a CUDA stream).

typedef void (*pool_fn)(void *arg, int part, int parts);

typedef struct cpu_pool {
    int n;  // threads including the caller
    pthread_t *tids;
    int n_started;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    _Atomic uint64_t gen;  // bumped once per job
    _Atomic int remaining;  // workers that have not yet finished with the current job
    _Atomic int stop;
    pool_fn fn;
    void *arg;
    int parts;
} cpu_pool;

typedef struct cpu_scratch {
    float *p;
    size_t cap;  // in floats
} cpu_scratch;
#define CPU_SCRATCH_SLOTS 4

typedef struct cpu_ctx {
    int threads;
    cpu_pool pool;
    conv_dnnl *dnnl;  // oneDNN convolutions (src/backend_cpu_dnnl.h); NULL: im2col for all
    cpu_conv_impl conv;
    void (*progress)(void *arg);
    void *progress_arg;
    int grads16;      // backend_options.grads16: the parameter gradients written bf16 (src/backend_cpu_store.c)
    float *g32;       // their float32 sums before the rounding, grown on demand
    size_t g32_cap;   // in floats
    int act16;        // backend_options.act16: 0 (float32 activations), PREC_BF16 or PREC_FP16 (16-bit storage)
    cpu_scratch s32[CPU_SCRATCH_SLOTS];  // act16: the float32 copies of an op's 16-bit operands, grown on demand
} cpu_ctx;

// Start n threads (the caller counts as one) / stop and join them.
int cpu_pool_start(cpu_pool *p, int n);
void cpu_pool_stop(cpu_pool *p);
// Run fn(arg, part, parts) for part in [0, parts); parts <= p->n. Returns when all parts are done.
void cpu_pool_run(cpu_pool *p, int parts, pool_fn fn, void *arg);

// ---------------------------------------------------------------------------------------------------------
// Work splitting

// [*lo, *hi) is part t of `parts` near-equal parts of [0, total).
static inline void split_range(int64_t total, int parts, int t, int64_t *lo, int64_t *hi) {
    *lo = total * t / parts;
    *hi = total * (t + 1) / parts;
}

// Parts worth running for `work` units when a part should have at least min_work: tiny ops stay on the
// calling thread, where waking a worker would cost more than it saves.
static inline int parts_for(const cpu_ctx *c, double work, double min_work) {
    double t = work / min_work;
    if (t < 1) return 1;
    return t < c->threads ? (int)t : c->threads;
}

// Only the calling thread (part 0) runs the hook: MPI runs with MPI_THREAD_FUNNELED.
static inline void progress_poll(const cpu_ctx *c, int part) {
    if (c->progress && part == 0) c->progress(c->progress_arg);
}

// The project builds for baseline x86-64 (SSE2); the short-row copies of im2col/col2im run twice as fast
// with 256-bit moves, so those get an AVX2 clone picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DDP_VEC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DDP_VEC_CLONES
#endif

// ---------------------------------------------------------------------------------------------------------
// Activations

#include "act_math.h"

static inline void act_inplace(float *restrict y, size_t n, int act) {
    if (act == ACT_RELU)
        for (size_t i = 0; i < n; i++) y[i] = y[i] > 0.0f ? y[i] : 0.0f;
    else if (act != ACT_NONE)
        for (size_t i = 0; i < n; i++) y[i] = act_apply(act, y[i]);
}

// dense's argument check; add_act and act_backward use it for the activation alone.
static inline int dense_check(int n, int in, int out, int act, const char *op) {
    if (n < 1 || in < 1 || out < 1) return ERR(ST_INPUT, "%s: n=%d in=%d out=%d must be positive", op, n, in, out);
    if (!act_from_output(act)) return ERR(ST_INPUT, "%s: activation %d is not one the op fuses", op, act);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Eight-float vectors (GCC vector extensions) of batch norm and the layer ops

typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
// Static inline: their 256-bit arguments and returns have no ABI to keep in the SSE2 build (CMakeLists.txt).

static inline v8f v8_load(const float *p) {
    v8f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void v8_store(float *p, v8f v) { memcpy(p, &v, sizeof v); }

static inline v8f v8_splat(float s) { return (v8f){s, s, s, s, s, s, s, s}; }

static inline double v8_sum(v8f a) {
    return (double)(((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])));
}

// act(v), lane by lane (act is loop-invariant: the branches are resolved per row); sigmoid and the others lane by
// lane through act_apply, so the vector and the scalar tails round alike.
static inline v8f v8_act(int act, v8f v) {
    if (act == ACT_NONE) return v;
    const v8i pos = v > v8_splat(0.0f);
    if (act == ACT_RELU) return (v8f)((v8i)v & pos);
    if (act == ACT_LEAKY) return (v8f)(((v8i)v & pos) | ((v8i)(v * v8_splat(ACT_LEAKY_SLOPE)) & ~pos));
    if (act == ACT_RELU6) {
        const v8i below6 = v < v8_splat(6.0f);
        return (v8f)((((v8i)v & below6) | ((v8i)v8_splat(6.0f) & ~below6)) & pos);
    }
    for (int l = 0; l < 8; l++) v[l] = act_apply(act, v[l]);
    return v;
}

// g * act'(pre-activation), from y (act_from_output: relu, leaky and relu6 keep the sign, so y > 0 exactly when
// the pre-activation is; relu6's y < 6 exactly when the pre-activation is).
static inline v8f v8_act_grad(int act, v8f y, v8f g) {
    if (act == ACT_NONE) return g;
    const v8i pos = y > v8_splat(0.0f);
    if (act == ACT_RELU) return (v8f)((v8i)g & pos);
    if (act == ACT_LEAKY) return (v8f)(((v8i)g & pos) | ((v8i)(g * v8_splat(ACT_LEAKY_SLOPE)) & ~pos));
    if (act == ACT_RELU6) return (v8f)((v8i)g & pos & (y < v8_splat(6.0f)));
    for (int l = 0; l < 8; l++) g[l] = act_grad(act, y[l], g[l]);
    return g;
}

// ---------------------------------------------------------------------------------------------------------
// The ops of each file (static in a file: what only that file uses)

// ---- thread_pool_cpu.c
void cpu_set_progress(void *ctx, void (*fn)(void *arg), void *arg);

// ---- conv_cpu.c
int cpu_conv_prepare(void *ctx, conv_desc *d, size_t *workspace_bytes);
void cpu_conv_release(void *ctx, conv_desc *d);
int cpu_conv_forward(void *ctx, const conv_desc *d, const float *x, const float *w, const float *b,
                     float *y, void *ws);
int cpu_conv_backward(void *ctx, const conv_desc *d, const float *x, const float *w, const float *y,
                      float *dy, float *dx, float *dw, float *db, void *ws);

// ---- ops_cpu.c
int cpu_gather(void *ctx, const uint8_t *images, const int32_t *labels, const int32_t *index, int n,
               int sample_elems, const gather_aug *aug, float *x, int32_t *y);
int cpu_pool_forward(void *ctx, const pool_desc *d, const float *x, float *y, int32_t *argmax);
int cpu_pool_backward(void *ctx, const pool_desc *d, const float *dy, const int32_t *argmax, float *dx);
int cpu_dense_forward(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                      const float *b, float *y);
int cpu_dense_backward(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                       const float *y, float *dy, float *dx, float *dw, float *db);
int cpu_softmax_xent(void *ctx, int n, int classes, const float *logits, const int32_t *labels,
                     float smoothing, float scale, float *dlogits, double *loss_acc, int32_t *correct_acc);
int cpu_adam_step(void *ctx, size_t n, float *p, const float *g, float *m, float *v, const adam_hyper *h);
int cpu_sgd_step(void *ctx, size_t n, float *p, const float *g, float *vel, const sgd_hyper *h);
int cpu_scale(void *ctx, size_t n, float alpha, float *x);
int cpu_count_nonfinite(void *ctx, size_t n, const float *x, int32_t *out);
int cpu_add(void *ctx, size_t n, const float *x, float *y);
int cpu_clip_grad_norm(void *ctx, size_t n, float *g, float max_norm, double *sumsq);
int cpu_round_to(void *ctx, size_t n, int format, const float *x, float *y);  // net.precision's emulation

// ---- bn_cpu.c
int cpu_bn_stats(void *ctx, const bn_desc *d, const float *x, float *stats);
int cpu_bn_apply(void *ctx, const bn_desc *d, const float *x, const float *stats, const float *w,
                 const float *b, float *running, float *save, float *y);
int cpu_bn_grad_stats(void *ctx, const bn_desc *d, const float *x, const float *y, const float *save,
                      float *dy, float *dw, float *db, float *gstats);
int cpu_bn_grad_input(void *ctx, const bn_desc *d, const float *x, const float *save, const float *w,
                      const float *gstats, const float *dz, float *dx);

// ---- layer_ops_cpu.c (layer ops of [shortcut], [route], [dropout] and [avgpool])
int cpu_add_act(void *ctx, size_t n, int act, const float *a, const float *b, float *y);
int cpu_act_backward(void *ctx, size_t n, int act, const float *y, const float *dy, float *dx);
int cpu_act_forward(void *ctx, size_t n, int act, const float *x, float *y);
int cpu_act_backward_input(void *ctx, size_t n, int act, const float *x, const float *dy, float *dx);
int cpu_layout_convert(void *ctx, int n, int c, int hw, int to_nhwc, int elem_bytes, const void *x, void *y);
int cpu_channel_copy(void *ctx, int n, int c, int hw, const float *src, int src_c, int src_off, float *dst,
                     int dst_c, int dst_off);
int cpu_dropout(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const float *x,
                float *y);
int cpu_avgpool_forward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *x,
                        float *y);
int cpu_avgpool_backward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *dy,
                         float *dx);

// ---- src/backend_cpu_store.c: the table's slots of the ops with activations or parameter gradients (float32: the
// op above as it is; act16/grads16: converted around it)
int cpu_slot_grads16(void *ctx, int *on);
int cpu_slot_act16(void *ctx, int *format);
int cpu_slot_gather(void *ctx, const uint8_t *images, const int32_t *labels, const int32_t *index, int n,
                    int sample_elems, const gather_aug *aug, void *x, int32_t *y);
int cpu_slot_conv_forward(void *ctx, const conv_desc *d, const void *x, const float *w, const float *b, void *y,
                          void *ws);
int cpu_slot_conv_backward(void *ctx, const conv_desc *d, const void *x, const float *w, const void *y, void *dy,
                           void *dx, void *dw, void *db, void *ws);
int cpu_slot_pool_forward(void *ctx, const pool_desc *d, const void *x, void *y, int32_t *argmax);
int cpu_slot_pool_backward(void *ctx, const pool_desc *d, const void *dy, const int32_t *argmax, void *dx);
int cpu_slot_dense_forward(void *ctx, int n, int in, int out, int act, const void *x, const float *w, const float *b,
                           void *y);
int cpu_slot_dense_backward(void *ctx, int n, int in, int out, int act, const void *x, const float *w, const void *y,
                            void *dy, void *dx, void *dw, void *db);
int cpu_slot_softmax_xent(void *ctx, int n, int classes, const void *logits, const int32_t *labels, float smoothing,
                          float scale, void *dlogits, double *loss_acc, int32_t *correct_acc);
int cpu_slot_bn_stats(void *ctx, const bn_desc *d, const void *x, float *stats);
int cpu_slot_bn_apply(void *ctx, const bn_desc *d, const void *x, const float *stats, const float *w, const float *b,
                      float *running, float *save, void *y);
int cpu_slot_bn_grad_stats(void *ctx, const bn_desc *d, const void *x, const void *y, const float *save, void *dy,
                           void *dw, void *db, float *gstats);
int cpu_slot_bn_grad_input(void *ctx, const bn_desc *d, const void *x, const float *save, const float *w,
                           const float *gstats, const void *dz, void *dx);
int cpu_slot_add_act(void *ctx, size_t n, int act, const void *a, const void *b, void *y);
int cpu_slot_act_backward(void *ctx, size_t n, int act, const void *y, const void *dy, void *dx);
int cpu_slot_act_forward(void *ctx, size_t n, int act, const void *x, void *y);
int cpu_slot_act_backward_input(void *ctx, size_t n, int act, const void *x, const void *dy, void *dx);
int cpu_slot_channel_copy(void *ctx, int n, int c, int hw, const void *src, int src_c, int src_off, void *dst,
                          int dst_c, int dst_off);
int cpu_slot_dropout(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const void *x,
                     void *y);
int cpu_slot_avgpool_forward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const void *x,
                             void *y);
int cpu_slot_avgpool_backward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const void *dy,
                              void *dx);

// ---- linalg_cpu.c (PowerSGD's dense linear algebra)
int cpu_gemm(void *ctx, int ta, int tb, int m, int n, int k, float alpha, const float *a, const float *b, float beta,
             float *c);
int cpu_orthogonalize(void *ctx, int n, int r, float eps, float *a);
