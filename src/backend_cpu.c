// backend_cpu.c — the reference backend: im2col + OpenBLAS sgemm for convolutions, plain loops for the rest.
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
#define _DEFAULT_SOURCE  // MAP_ANONYMOUS
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "backend.h"
#include "backend_cpu_dnnl.h"
#include "common.h"
#include "dropout_hash.h"

// ---------------------------------------------------------------------------------------------------------
// Thread pool: the calling thread is part 0, workers 1..n-1. One job at a time (the backend is not
// re-entrant, like a CUDA stream).

typedef void (*pool_fn)(void *arg, int part, int parts);

#define POOL_SPIN_NS 30000  // a wait shorter than this is spun; longer ones block

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

typedef struct cpu_ctx {
    int threads;
    cpu_pool pool;
    conv_dnnl *dnnl;  // oneDNN convolutions (src/backend_cpu_dnnl.h); NULL: im2col for all
    cpu_conv_impl conv;
    void (*progress)(void *arg);
    void *progress_arg;
} cpu_ctx;

typedef struct worker_arg {
    cpu_pool *p;
    int id;
} worker_arg;

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

// Spin until *gen differs from seen, for at most POOL_SPIN_NS; returns whether it did.
static int spin_for_gen(const cpu_pool *p, uint64_t seen) {
    int64_t t0 = mono_ns();
    for (int i = 0;; i++) {
        if (atomic_load_explicit(&p->gen, memory_order_acquire) != seen) return 1;
        if ((i & 255) == 255 && mono_ns() - t0 > POOL_SPIN_NS) return 0;
        cpu_relax();
    }
}

static void *pool_worker(void *varg) {
    worker_arg *wa = varg;
    cpu_pool *p = wa->p;
    const int id = wa->id;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        if (!spin_for_gen(p, seen)) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->gen) == seen) pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (atomic_load(&p->stop)) return NULL;
        // Every worker acknowledges every job, taking part or not, so that none can still be reading this
        // job's fn/arg/parts when the caller publishes the next one.
        if (id < p->parts) p->fn(p->arg, id, p->parts);
        if (atomic_fetch_sub_explicit(&p->remaining, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

// Run fn(arg, part, parts) for part in [0, parts); parts <= p->n. Returns when all parts are done.
static void pool_run(cpu_pool *p, int parts, pool_fn fn, void *arg) {
    if (parts > p->n) parts = p->n;
    if (parts <= 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->parts = parts;
    atomic_store(&p->remaining, p->n - 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, parts);
    int64_t t0 = mono_ns();
    for (int i = 0; atomic_load_explicit(&p->remaining, memory_order_acquire) > 0; i++) {
        if ((i & 255) == 255 && mono_ns() - t0 > POOL_SPIN_NS) {
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->remaining) > 0) pthread_cond_wait(&p->done, &p->mu);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        cpu_relax();
    }
}

static void pool_stop(cpu_pool *p) {
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->tids[i], NULL);
    free(p->tids);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->mu);
}

static int pool_start(cpu_pool *p, int n) {
    memset(p, 0, sizeof *p);
    p->n = n;
    if (pthread_mutex_init(&p->mu, NULL) != 0) return ERR(ST_RUNTIME, "cpu backend: pthread_mutex_init failed");
    if (pthread_cond_init(&p->wake, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        return ERR(ST_RUNTIME, "cpu backend: pthread_cond_init failed");
    }
    if (pthread_cond_init(&p->done, NULL) != 0) {
        pthread_cond_destroy(&p->wake);
        pthread_mutex_destroy(&p->mu);
        return ERR(ST_RUNTIME, "cpu backend: pthread_cond_init failed");
    }
    p->tids = calloc((size_t)n, sizeof *p->tids);
    int st = p->tids ? ST_OK : ERR(ST_RUNTIME, "cpu backend: out of host memory for %d threads", n);
    for (int i = 1; st == ST_OK && i < n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) {
            st = ERR(ST_RUNTIME, "cpu backend: out of host memory for %d threads", n);
            break;
        }
        wa->p = p, wa->id = i;
        if (pthread_create(&p->tids[p->n_started], NULL, pool_worker, wa) != 0) {
            free(wa);
            st = ERR(ST_RUNTIME, "cpu backend: cannot start thread %d of %d", i + 1, n);
            break;
        }
        p->n_started++;
    }
    if (st != ST_OK) pool_stop(p);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Work splitting

// [*lo, *hi) is part t of `parts` near-equal parts of [0, total).
static void split_range(int64_t total, int parts, int t, int64_t *lo, int64_t *hi) {
    *lo = total * t / parts;
    *hi = total * (t + 1) / parts;
}

// Parts worth running for `work` units when a part should have at least min_work: tiny ops stay on the
// calling thread, where waking a worker would cost more than it saves.
static int parts_for(const cpu_ctx *c, double work, double min_work) {
    double t = work / min_work;
    if (t < 1) return 1;
    return t < c->threads ? (int)t : c->threads;
}

// Only the calling thread (part 0) runs the hook: MPI runs with MPI_THREAD_FUNNELED.
static void progress_poll(const cpu_ctx *c, int part) {
    if (c->progress && part == 0) c->progress(c->progress_arg);
}

#define FLOATS_ALIGNED(n) (((size_t)(n) + 15) & ~(size_t)15)  // keep every workspace slice 64-byte aligned

// ---------------------------------------------------------------------------------------------------------
// Memory

static int cpu_alloc(void *ctx, void **ptr, size_t bytes) {
    (void)ctx;
    *ptr = NULL;
    size_t rounded = (bytes + 63) & ~(size_t)63;
    if (rounded < bytes) return ERR(ST_RUNTIME, "cpu backend: allocation of %zu bytes overflows", bytes);
    if (rounded == 0) rounded = 64;
    void *p = NULL;
    if (posix_memalign(&p, 64, rounded) != 0 || !p)
        return ERR(ST_RUNTIME, "cpu backend: out of host memory allocating %zu bytes", bytes);
    memset(p, 0, rounded);
    *ptr = p;
    return ST_OK;
}

static void cpu_free(void *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

static int cpu_memcpy(const char *op, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return ST_OK;
    if (!dst || !src) return ERR(ST_INPUT, "cpu backend: %s of %zu bytes with a NULL pointer", op, bytes);
    memcpy(dst, src, bytes);
    return ST_OK;
}

static int cpu_upload(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    return cpu_memcpy("upload", dst, src, bytes);
}

static int cpu_download(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    return cpu_memcpy("download", dst, src, bytes);
}

static int cpu_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    (void)ctx;
    return cpu_memcpy("copy", dst, src, bytes);
}

static int cpu_zero(void *ctx, void *ptr, size_t bytes) {
    (void)ctx;
    if (bytes == 0) return ST_OK;
    if (!ptr) return ERR(ST_INPUT, "cpu backend: zero of %zu bytes with a NULL pointer", bytes);
    memset(ptr, 0, bytes);
    return ST_OK;
}

static int cpu_sync(void *ctx) {
    (void)ctx;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Data

typedef struct gather_job {
    const uint8_t *images, *labels;
    const int32_t *index;
    int n, sample_elems;
    const gather_aug *aug;
    float *x;
    int32_t *y;
} gather_job;

// One sample through crop, flip and normalisation (src/gather_aug.h): output pixel (y, x) of channel ch reads
// input (y + dy, x' + dx), x' = w - 1 - x when flipped, 0 outside the image; then the channel's table or / 255.
static void gather_sample_aug(const gather_aug *a, const uint8_t *src, int64_t index, float *dst) {
    const gather_draw d = gather_aug_draw(a, index);
    const int h = a->h, w = a->w;
    for (int ch = 0; ch < a->c; ch++) {
        const uint8_t *plane = src + (size_t)ch * h * w;
        const float *lut = a->normalize ? a->lut[ch] : NULL;
        for (int y = 0; y < h; y++) {
            const int sy = y + d.dy;
            float *row = dst + ((size_t)ch * h + y) * w;
            for (int x = 0; x < w; x++) {
                const int sx = (d.flip ? w - 1 - x : x) + d.dx;
                const uint8_t p = sy >= 0 && sy < h && sx >= 0 && sx < w ? plane[(size_t)sy * w + sx] : 0;
                row[x] = lut ? lut[p] : (float)p / 255.0f;
            }
        }
    }
}

static void gather_part(void *arg, int part, int parts) {
    const gather_job *j = arg;
    int64_t lo, hi;
    split_range(j->n, parts, part, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {
        const uint8_t *src = j->images + (size_t)j->index[i] * j->sample_elems;
        float *dst = j->x + (size_t)i * j->sample_elems;
        if (j->aug) gather_sample_aug(j->aug, src, j->index[i], dst);
        // Division, not a multiply by 1/255: the CUDA backend and the tests expect the exactly rounded value.
        else for (int e = 0; e < j->sample_elems; e++) dst[e] = (float)src[e] / 255.0f;
        j->y[i] = (int32_t)j->labels[j->index[i]];
    }
}

static int cpu_gather(void *ctx, const uint8_t *images, const uint8_t *labels, const int32_t *index, int n,
                      int sample_elems, const gather_aug *aug, float *x, int32_t *y) {
    cpu_ctx *c = ctx;
    if (n < 0 || sample_elems < 1) return ERR(ST_INPUT, "gather: n=%d sample_elems=%d", n, sample_elems);
    for (int i = 0; i < n; i++)
        if (index[i] < 0) return ERR(ST_INPUT, "gather: index[%d] = %d is negative", i, index[i]);
    if (aug && ((int64_t)aug->c * aug->h * aug->w != sample_elems || (aug->normalize && aug->c > GATHER_AUG_CHANNELS_MAX) ||
                aug->crop_pad < 0))
        return ERR(ST_INPUT, "gather: augmentation for %dx%dx%d samples (crop_pad %d), the batch has %d values per "
                             "sample", aug->c, aug->h, aug->w, aug->crop_pad, sample_elems);
    gather_job j = {images, labels, index, n, sample_elems, aug, x, y};
    pool_run(&c->pool, parts_for(c, (double)n * sample_elems, 65536), gather_part, &j);
    return ST_OK;
}

// The project builds for baseline x86-64 (SSE2); the short-row copies of im2col/col2im run twice as fast
// with 256-bit moves, so those get an AVX2 clone picked at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DDP_VEC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DDP_VEC_CLONES
#endif

// ---------------------------------------------------------------------------------------------------------
// im2col / col2im for one image. The block is [C*R*S, OH*OW]; row (c, r, s) holds x[c, oh*stride - pad + r,
// ow*stride - pad + s] for every output pixel, zero where that falls in the padding.

// Output columns [*lo, *hi) whose input column ow*stride - pad + s lies inside [0, w).
static void valid_cols(int w, int ow, int stride, int pad, int s, int *lo, int *hi) {
    int first = pad - s;  // smallest ow*stride that lands inside
    int l = first <= 0 ? 0 : (first + stride - 1) / stride;
    int last = w - 1 + pad - s;  // largest ow*stride that lands inside
    int h = last < 0 ? 0 : last / stride + 1;
    if (h > ow) h = ow;
    if (l > h) l = h;
    *lo = l, *hi = h;
}

// Rows are short (OW floats: 11 and 26 in the reference CNN), so a memcpy call per row costs more than the
// copy. Fixed-size 32-byte moves compile to a couple of vector instructions; the tail overlaps the body.
static inline void copy_row(float *restrict dst, const float *restrict src, int n) {
    if (n < 8) {
        for (int i = 0; i < n; i++) dst[i] = src[i];
        return;
    }
    int i = 0;
    for (; i + 8 <= n; i += 8) memcpy(dst + i, src + i, 32);
    if (i < n) memcpy(dst + n - 8, src + n - 8, 32);
}

// Stride 1, no padding (both convs of the reference CNN): every row is a plain shifted copy, so the
// per-row bookkeeping of the general path (a third of its time) goes.
DDP_VEC_CLONES static void im2col_s1p0(const conv_desc *d, const float *x, float *col) {
    const int OH = d->oh, OW = d->ow, W = d->w, P = OH * OW;
    for (int ch = 0; ch < d->c; ch++)
        for (int r = 0; r < d->r; r++)
            for (int s = 0; s < d->s; s++) {
                float *dst = col + (size_t)((ch * d->r + r) * d->s + s) * P;
                const float *src = x + ((size_t)ch * d->h + r) * W + s;
                for (int oh = 0; oh < OH; oh++) copy_row(dst + oh * OW, src + oh * W, OW);
            }
}

static void im2col(const conv_desc *d, const float *x, float *col) {
    if (d->stride == 1 && d->pad == 0) {
        im2col_s1p0(d, x, col);
        return;
    }
    const int P = d->oh * d->ow, OW = d->ow, st = d->stride;
    for (int ch = 0; ch < d->c; ch++)
        for (int r = 0; r < d->r; r++)
            for (int s = 0; s < d->s; s++) {
                float *row = col + (size_t)((ch * d->r + r) * d->s + s) * P;
                int lo, hi;
                valid_cols(d->w, OW, st, d->pad, s, &lo, &hi);
                for (int oh = 0; oh < d->oh; oh++) {
                    float *dst = row + (size_t)oh * OW;
                    int ih = oh * st - d->pad + r;
                    if (ih < 0 || ih >= d->h || lo == hi) {
                        for (int o = 0; o < OW; o++) dst[o] = 0.0f;
                        continue;
                    }
                    const float *src = x + ((size_t)ch * d->h + ih) * d->w + (s - d->pad);
                    for (int o = 0; o < lo; o++) dst[o] = 0.0f;
                    if (st == 1)
                        copy_row(dst + lo, src + lo, hi - lo);
                    else
                        for (int o = lo; o < hi; o++) dst[o] = src[o * st];
                    for (int o = hi; o < OW; o++) dst[o] = 0.0f;
                }
            }
}

// dx (one image) = the block's entries summed back onto their input pixels; overwrites dx. Loops run over
// input rows so that the R*S contributions to one row are added while it sits in L1.
DDP_VEC_CLONES static void col2im_s1p0(const conv_desc *d, const float *col, float *dx) {
    const int OH = d->oh, OW = d->ow, W = d->w, P = OH * OW;
    for (int ch = 0; ch < d->c; ch++)
        for (int r = 0; r < d->r; r++)
            for (int oh = 0; oh < OH; oh++) {
                float *restrict drow = dx + ((size_t)ch * d->h + oh + r) * W;
                const float *restrict src = col + (size_t)(ch * d->r + r) * d->s * P + (size_t)oh * OW;
                for (int s = 0; s < d->s; s++, src += P)
                    for (int o = 0; o < OW; o++) drow[s + o] += src[o];
            }
}

static void col2im(const conv_desc *d, const float *col, float *dx) {
    const int P = d->oh * d->ow, OW = d->ow, st = d->stride;
    memset(dx, 0, sizeof(float) * (size_t)d->c * d->h * d->w);
    if (st == 1 && d->pad == 0) {
        col2im_s1p0(d, col, dx);
        return;
    }
    for (int ch = 0; ch < d->c; ch++)
        for (int r = 0; r < d->r; r++)
            for (int oh = 0; oh < d->oh; oh++) {
                int ih = oh * st - d->pad + r;
                if (ih < 0 || ih >= d->h) continue;
                float *drow = dx + ((size_t)ch * d->h + ih) * d->w;
                for (int s = 0; s < d->s; s++) {
                    int lo, hi;
                    valid_cols(d->w, OW, st, d->pad, s, &lo, &hi);
                    const float *src = col + (size_t)((ch * d->r + r) * d->s + s) * P + (size_t)oh * OW;
                    float *dst = drow + (s - d->pad);
                    if (st == 1)
                        for (int o = lo; o < hi; o++) dst[o] += src[o];
                    else
                        for (int o = lo; o < hi; o++) dst[o * st] += src[o];
                }
            }
}

// A 1x1 stride-1 unpadded conv's im2col block is the image itself.
static int conv_is_pointwise(const conv_desc *d) {
    return d->r == 1 && d->s == 1 && d->stride == 1 && d->pad == 0;
}

// ---------------------------------------------------------------------------------------------------------
// Convolution
//
// Workspace, per thread: one im2col block [C*R*S, OH*OW] (reused for dcol in backward) and a partial dW
// [K, C*R*S] + db [K] that backward sums at the end. Backward recomputes im2col rather than keeping a
// whole-batch block from forward: the copy is cheap next to the sgemm and stays in L2.

typedef struct conv_ws_layout {
    size_t col, dw, db, per_thread;  // in floats
} conv_ws_layout;

static conv_ws_layout conv_ws(const conv_desc *d) {
    conv_ws_layout l;
    size_t crs = (size_t)d->c * d->r * d->s;
    l.col = FLOATS_ALIGNED(crs * d->oh * d->ow);
    l.dw = FLOATS_ALIGNED(crs * d->k);
    l.db = FLOATS_ALIGNED(d->k);
    l.per_thread = l.col + l.dw + l.db;
    return l;
}

static int conv_check(const conv_desc *d, const char *op) {
    if (d->n < 1 || d->oh < 1 || d->ow < 1 || d->k < 1 || d->c < 1 || d->r < 1 || d->s < 1 || d->stride < 1)
        return ERR(ST_INPUT, "%s: descriptor not initialised (call conv_desc_init)", op);
    return ST_OK;
}

// With oneDNN, a plan splits the batch into one slice per thread (at most one per image); the workspace holds,
// per part, oneDNN's staging buffers and scratchpad, then the part's partial dW and db (parts 1..).
typedef struct conv_dnnl_ws {
    size_t dnnl, dw, db, per_part;  // in bytes
} conv_dnnl_ws;

static conv_dnnl_ws conv_dnnl_layout(const conv_desc *d, size_t dnnl_bytes) {
    conv_dnnl_ws l = {.dnnl = dnnl_bytes};
    l.dw = sizeof(float) * FLOATS_ALIGNED((size_t)d->k * d->c * d->r * d->s);
    l.db = sizeof(float) * FLOATS_ALIGNED(d->k);
    l.per_part = l.dnnl + l.dw + l.db;
    return l;
}

// CPU_CONV_AUTO's rule: oneDNN where it measured faster (forward + backward, 2 threads, AVX2; README,
// Benchmarks): 3x3 convolutions of 16 or more input channels, 1.3-1.8x. One-channel stems (0.5x: oneDNN's
// reorders and kernels for C = 1 cost more than the small im2col) and 1x1 projections (0.6-0.7x) stay on im2col.
// A rule, not a timing at prepare: the choice, hence the rounding, must be the same in every run (exact resume).
static int conv_dnnl_pays(const conv_desc *d) { return d->r * d->s > 1 && d->c >= 16; }

static int cpu_conv_prepare(void *ctx, conv_desc *d, size_t *workspace_bytes) {
    cpu_ctx *c = ctx;
    TRY(conv_check(d, "conv_prepare"));
    d->plan = NULL;
    *workspace_bytes = conv_ws(d).per_thread * sizeof(float) * (size_t)c->threads;
    if (!c->dnnl || (c->conv == CPU_CONV_AUTO && !conv_dnnl_pays(d))) return ST_OK;
    int parts = c->threads < d->n ? c->threads : d->n;
    conv_dnnl_plan *p = NULL;
    size_t per_part = 0;
    TRY(conv_dnnl_plan_create(c->dnnl, d, parts, &p, &per_part));
    d->plan = p;
    *workspace_bytes = conv_dnnl_layout(d, per_part).per_part * (size_t)parts;
    return ST_OK;
}

static void cpu_conv_release(void *ctx, conv_desc *d) {
    cpu_ctx *c = ctx;
    if (c->dnnl) conv_dnnl_plan_destroy(d->plan);
    d->plan = NULL;
}

typedef struct conv_job {
    const cpu_ctx *c;
    const conv_desc *d;
    conv_ws_layout L;
    conv_dnnl_ws DL;         // oneDNN plans
    _Atomic int status;      // oneDNN plans: the first failing part's status
    const float *x, *w, *b, *y;
    float *yo, *dy, *dx, *dw, *db;
    float *ws;
} conv_job;

// The output starts as the bias and the sgemm accumulates onto it (beta = 1): OpenBLAS's own beta = 0 pass
// over C is a separate, slower sweep (a quarter of conv1's forward).
// No bias (b = NULL): zeros.
static void fill_bias(float *restrict y, const float *restrict b, int k, int p) {
    for (int i = 0; i < k; i++) {
        float *row = y + (size_t)i * p;
        const float bi = b ? b[i] : 0.0f;
        for (int j = 0; j < p; j++) row[j] = bi;
    }
}

// The activations of backend.h, and their derivative read from the output (relu and leaky are monotone).
static inline float act_apply(int act, float v) {
    if (act == ACT_RELU) return v > 0.0f ? v : 0.0f;
    if (act == ACT_LEAKY) return v > 0.0f ? v : ACT_LEAKY_SLOPE * v;
    return v;
}

static inline float act_grad(int act, float y, float g) {
    if (act == ACT_RELU) return y > 0.0f ? g : 0.0f;
    if (act == ACT_LEAKY) return y > 0.0f ? g : ACT_LEAKY_SLOPE * g;
    return g;
}

static void act_inplace(float *restrict y, size_t n, int act) {
    if (act == ACT_RELU)
        for (size_t i = 0; i < n; i++) y[i] = y[i] > 0.0f ? y[i] : 0.0f;
    else if (act == ACT_LEAKY)
        for (size_t i = 0; i < n; i++) y[i] = act_apply(ACT_LEAKY, y[i]);
}

static void conv_forward_part(void *arg, int part, int parts) {
    const conv_job *j = arg;
    const conv_desc *d = j->d;
    const int K = d->k, P = d->oh * d->ow, CRS = d->c * d->r * d->s;
    const size_t x_img = (size_t)d->c * d->h * d->w, y_img = (size_t)K * P;
    float *col = j->ws + j->L.per_thread * (size_t)part;
    int64_t lo, hi;
    split_range(d->n, parts, part, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {
        const float *xi = j->x + (size_t)i * x_img;
        float *yi = j->yo + (size_t)i * y_img;
        const float *ci = xi;
        if (!conv_is_pointwise(d)) {
            im2col(d, xi, col);
            ci = col;
        }
        fill_bias(yi, j->b, K, P);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, K, P, CRS, 1.0f, j->w, CRS, ci, P, 1.0f, yi, P);
        act_inplace(yi, y_img, d->act);
    }
}

static void conv_dnnl_forward_part(void *arg, int part, int parts) {
    (void)parts;
    conv_job *j = arg;
    char *ws = (char *)j->ws + j->DL.per_part * (size_t)part;
    int st = conv_dnnl_forward(j->c->dnnl, j->d->plan, part, j->x, j->w, j->b, j->yo, ws);
    if (st != ST_OK) atomic_store(&j->status, st);
}

static int cpu_conv_forward(void *ctx, const conv_desc *d, const float *x, const float *w, const float *b,
                            float *y, void *ws) {
    cpu_ctx *c = ctx;
    TRY(conv_check(d, "conv_forward"));
    if (!ws) return ERR(ST_INPUT, "conv_forward: no workspace given");
    if (c->dnnl && d->plan) {  // a oneDNN plan (im2col has none)
        conv_job j = {.c = c, .d = d, .DL = conv_dnnl_layout(d, conv_dnnl_plan_ws(d->plan)), .x = x, .w = w,
                      .b = b, .yo = y, .ws = ws};
        pool_run(&c->pool, conv_dnnl_plan_parts(d->plan), conv_dnnl_forward_part, &j);
        return atomic_load(&j.status);
    }
    conv_job j = {.c = c, .d = d, .L = conv_ws(d), .x = x, .w = w, .b = b, .yo = y, .ws = ws};
    int parts = parts_for(c, (double)d->n * d->k * d->oh * d->ow * d->c * d->r * d->s, 2e5);
    pool_run(&c->pool, parts < d->n ? parts : d->n, conv_forward_part, &j);
    return ST_OK;
}

// dy *= act'(y) for one image, and its per-filter sums added to db (none when db is NULL). Eight partial sums,
// because a single running sum is a serial chain of adds the compiler may not reorder (it was half of conv1's
// backward).
DDP_VEC_CLONES static void conv_act_grad(const conv_desc *d, const float *y, float *dy, float *db) {
    const int P = d->oh * d->ow;
    for (int k = 0; k < d->k; k++) {
        float *restrict g = dy + (size_t)k * P;
        const float *restrict a = y + (size_t)k * P;
        if (d->act == ACT_RELU)
            for (int q = 0; q < P; q++) g[q] = a[q] > 0.0f ? g[q] : 0.0f;
        else if (d->act == ACT_LEAKY)
            for (int q = 0; q < P; q++) g[q] = act_grad(ACT_LEAKY, a[q], g[q]);
        if (!db) continue;
        float acc[8] = {0};
        int q = 0;
        for (; q + 8 <= P; q += 8)
            for (int l = 0; l < 8; l++) acc[l] += g[q + l];
        float sum = 0.0f;
        for (; q < P; q++) sum += g[q];
        for (int l = 0; l < 8; l++) sum += acc[l];
        db[k] += sum;
    }
}

// One part's images: pre-activation dy in place, partial dW/db, and dx. Part 0 writes dw/db directly.
static void conv_backward_part(void *arg, int part, int parts) {
    const conv_job *j = arg;
    const conv_desc *d = j->d;
    const int K = d->k, P = d->oh * d->ow, CRS = d->c * d->r * d->s;
    const size_t x_img = (size_t)d->c * d->h * d->w, y_img = (size_t)K * P;
    float *col = j->ws + j->L.per_thread * (size_t)part;
    float *dw = part == 0 ? j->dw : col + j->L.col, *db = part == 0 ? j->db : col + j->L.col + j->L.dw;
    if (!j->db) db = NULL;
    int64_t lo, hi;
    split_range(d->n, parts, part, &lo, &hi);
    if (db) memset(db, 0, sizeof(float) * (size_t)K);
    if (lo == hi) memset(dw, 0, sizeof(float) * (size_t)K * CRS);
    for (int64_t i = lo; i < hi; i++) {
        const float *xi = j->x + (size_t)i * x_img;
        float *dyi = j->dy + (size_t)i * y_img;
        conv_act_grad(d, j->y + (size_t)i * y_img, dyi, db);
        const float *ci = xi;
        if (!conv_is_pointwise(d)) {
            im2col(d, xi, col);
            ci = col;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, K, CRS, P, 1.0f, dyi, P, ci, P, i == lo ? 0.0f : 1.0f,
                    dw, CRS);
        if (j->dx) {
            float *dxi = j->dx + (size_t)i * x_img;
            float *dcol = conv_is_pointwise(d) ? dxi : col;  // pointwise: dcol is dx itself
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CRS, P, K, 1.0f, j->w, CRS, dyi, P, 0.0f, dcol, P);
            if (dcol != dxi) col2im(d, dcol, dxi);
        }
        progress_poll(j->c, part);
    }
}

// oneDNN: one part's images: pre-activation dy in place (as for im2col), then oneDNN's dx and the part's dW/db
// (part 0 into dw/db, the others into their workspace, summed by the caller in part order).
static void conv_dnnl_backward_part(void *arg, int part, int parts) {
    conv_job *j = arg;
    const conv_desc *d = j->d;
    const size_t y_img = (size_t)d->k * d->oh * d->ow;
    int64_t lo, hi;
    split_range(d->n, parts, part, &lo, &hi);
    for (int64_t i = lo; i < hi; i++)
        if (d->act != ACT_NONE) conv_act_grad(d, j->y + (size_t)i * y_img, j->dy + (size_t)i * y_img, NULL);
    char *ws = (char *)j->ws + j->DL.per_part * (size_t)part;
    float *dw = part == 0 ? j->dw : (float *)(ws + j->DL.dnnl);
    float *db = !j->db ? NULL : part == 0 ? j->db : (float *)(ws + j->DL.dnnl + j->DL.dw);
    int st = conv_dnnl_backward(j->c->dnnl, d->plan, part, j->x, j->w, j->dy, j->dx, dw, db, ws);
    if (st != ST_OK) atomic_store(&j->status, st);
    progress_poll(j->c, part);
}

static int conv_dnnl_backward_run(cpu_ctx *c, conv_job *j) {
    const conv_desc *d = j->d;
    const int parts = conv_dnnl_plan_parts(d->plan);
    pool_run(&c->pool, parts, conv_dnnl_backward_part, j);
    TRY(atomic_load(&j->status));
    const size_t nw = (size_t)d->k * d->c * d->r * d->s;
    for (int t = 1; t < parts; t++) {
        const char *ws = (const char *)j->ws + j->DL.per_part * (size_t)t;
        const float *pw = (const float *)(ws + j->DL.dnnl), *pb = (const float *)(ws + j->DL.dnnl + j->DL.dw);
        for (size_t e = 0; e < nw; e++) j->dw[e] += pw[e];
        if (j->db)
            for (int k = 0; k < d->k; k++) j->db[k] += pb[k];
    }
    progress_poll(c, 0);
    return ST_OK;
}

static int cpu_conv_backward(void *ctx, const conv_desc *d, const float *x, const float *w, const float *y,
                             float *dy, float *dx, float *dw, float *db, void *ws) {
    cpu_ctx *c = ctx;
    TRY(conv_check(d, "conv_backward"));
    if (!ws) return ERR(ST_INPUT, "conv_backward: no workspace given");
    if (c->dnnl && d->plan) {  // a oneDNN plan (im2col has none)
        conv_job j = {.c = c, .d = d, .DL = conv_dnnl_layout(d, conv_dnnl_plan_ws(d->plan)), .x = x, .w = w,
                      .y = y, .dy = dy, .dx = dx, .dw = dw, .db = db, .ws = ws};
        return conv_dnnl_backward_run(c, &j);
    }
    conv_job j = {.c = c, .d = d, .L = conv_ws(d), .x = x, .w = w, .y = y, .dy = dy, .dx = dx, .dw = dw,
                  .db = db, .ws = ws};
    const int K = d->k, CRS = d->c * d->r * d->s;
    int parts = parts_for(c, (double)d->n * K * d->oh * d->ow * CRS * (dx ? 2 : 1), 2e5);
    if (parts > d->n) parts = d->n;
    if (parts > c->pool.n) parts = c->pool.n;
    pool_run(&c->pool, parts, conv_backward_part, &j);
    // The partial sums are small (K x C*R*S), a serial add beats another round trip through the pool.
    for (int t = 1; t < parts; t++) {
        const float *pw = j.ws + j.L.per_thread * (size_t)t + j.L.col, *pb = pw + j.L.dw;
        for (size_t e = 0; e < (size_t)K * CRS; e++) dw[e] += pw[e];
        if (db)
            for (int k = 0; k < K; k++) db[k] += pb[k];
    }
    progress_poll(c, 0);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Max pooling. argmax holds the winner's index ih*w + iw inside its input plane; ties go to the first.

static int pool_check(const pool_desc *d, const char *op) {
    if (d->n < 1 || d->c < 1 || d->oh < 1 || d->ow < 1 || d->size < 1 || d->stride < 1)
        return ERR(ST_INPUT, "%s: descriptor not initialised (call pool_desc_init)", op);
    return ST_OK;
}

static void pool_plane(const pool_desc *d, const float *x, float *y, int32_t *am) {
    const int W = d->w, st = d->stride, sz = d->size;
    for (int oh = 0; oh < d->oh; oh++)
        for (int ow = 0; ow < d->ow; ow++) {
            int base = oh * st * W + ow * st, best_i = base;
            float best = x[base];
            for (int r = 0; r < sz; r++)
                for (int s = 0; s < sz; s++) {
                    int idx = base + r * W + s;
                    if (x[idx] > best) best = x[idx], best_i = idx;
                }
            y[oh * d->ow + ow] = best;
            am[oh * d->ow + ow] = best_i;
        }
}

// The reference CNN's 2x2 stride-2 window, unrolled.
static void pool_plane_2x2(const pool_desc *d, const float *x, float *y, int32_t *am) {
    const int W = d->w;
    for (int oh = 0; oh < d->oh; oh++) {
        const int r0 = 2 * oh * W;
        for (int ow = 0; ow < d->ow; ow++) {
            int i0 = r0 + 2 * ow, i1 = i0 + 1, i2 = i0 + W, i3 = i2 + 1;
            int bi = i0;
            float b = x[i0];
            if (x[i1] > b) b = x[i1], bi = i1;
            if (x[i2] > b) b = x[i2], bi = i2;
            if (x[i3] > b) b = x[i3], bi = i3;
            y[oh * d->ow + ow] = b;
            am[oh * d->ow + ow] = bi;
        }
    }
}

typedef struct pool_job {
    const pool_desc *d;
    const float *x, *dy;
    float *y, *dx;
    int32_t *am_out;
    const int32_t *am;
} pool_job;

static void pool_forward_part(void *arg, int part, int parts) {
    const pool_job *j = arg;
    const pool_desc *d = j->d;
    const int in_plane = d->h * d->w, out_plane = d->oh * d->ow;
    int64_t lo, hi;
    split_range((int64_t)d->n * d->c, parts, part, &lo, &hi);
    for (int64_t p = lo; p < hi; p++) {
        const float *xp = j->x + (size_t)p * in_plane;
        float *yp = j->y + (size_t)p * out_plane;
        int32_t *ap = j->am_out + (size_t)p * out_plane;
        if (d->size == 2 && d->stride == 2)
            pool_plane_2x2(d, xp, yp, ap);
        else
            pool_plane(d, xp, yp, ap);
    }
}

static void pool_backward_part(void *arg, int part, int parts) {
    const pool_job *j = arg;
    const pool_desc *d = j->d;
    const int in_plane = d->h * d->w, out_plane = d->oh * d->ow;
    int64_t lo, hi;
    split_range((int64_t)d->n * d->c, parts, part, &lo, &hi);
    // Overlapping windows (stride < size) can pick the same input twice, hence += rather than =.
    for (int64_t p = lo; p < hi; p++) {
        float *dxp = j->dx + (size_t)p * in_plane;
        const float *dyp = j->dy + (size_t)p * out_plane;
        const int32_t *ap = j->am + (size_t)p * out_plane;
        memset(dxp, 0, sizeof(float) * (size_t)in_plane);
        for (int o = 0; o < out_plane; o++) dxp[ap[o]] += dyp[o];
    }
}

static int cpu_pool_forward(void *ctx, const pool_desc *d, const float *x, float *y, int32_t *argmax) {
    cpu_ctx *c = ctx;
    TRY(pool_check(d, "pool_forward"));
    pool_job j = {.d = d, .x = x, .y = y, .am_out = argmax};
    double work = (double)d->n * d->c * d->oh * d->ow * d->size * d->size;
    pool_run(&c->pool, parts_for(c, work, 32768), pool_forward_part, &j);
    return ST_OK;
}

static int cpu_pool_backward(void *ctx, const pool_desc *d, const float *dy, const int32_t *argmax, float *dx) {
    cpu_ctx *c = ctx;
    TRY(pool_check(d, "pool_backward"));
    pool_job j = {.d = d, .dy = dy, .dx = dx, .am = argmax};
    pool_run(&c->pool, parts_for(c, (double)d->n * d->c * d->h * d->w, 32768), pool_backward_part, &j);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Dense. y[n,out] = x[n,in] · w[out,in]^T + b. Forward splits the batch rows over threads; backward splits
// the input columns, so that dW[:, cols] and dx[:, cols] of different threads never overlap.

typedef struct dense_job {
    const cpu_ctx *c;
    int n, in, out, act;
    const float *x, *w, *b;
    float *y, *dy, *dx, *dw;
} dense_job;

static int dense_check(int n, int in, int out, int act, const char *op) {
    if (n < 1 || in < 1 || out < 1) return ERR(ST_INPUT, "%s: n=%d in=%d out=%d must be positive", op, n, in, out);
    if (act != ACT_NONE && act != ACT_RELU && act != ACT_LEAKY)
        return ERR(ST_INPUT, "%s: unknown activation %d", op, act);
    return ST_OK;
}

static void dense_forward_part(void *arg, int part, int parts) {
    const dense_job *j = arg;
    int64_t lo, hi;
    split_range(j->n, parts, part, &lo, &hi);
    if (hi == lo) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), j->out, j->in, 1.0f,
                j->x + (size_t)lo * j->in, j->in, j->w, j->in, 0.0f, j->y + (size_t)lo * j->out, j->out);
    for (int64_t i = lo; i < hi; i++) {
        float *row = j->y + (size_t)i * j->out;
        if (j->b)
            for (int o = 0; o < j->out; o++) row[o] += j->b[o];
        act_inplace(row, (size_t)j->out, j->act);
    }
}

static int cpu_dense_forward(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                             const float *b, float *y) {
    cpu_ctx *c = ctx;
    TRY(dense_check(n, in, out, act, "dense_forward"));
    dense_job j = {.c = c, .n = n, .in = in, .out = out, .act = act, .x = x, .w = w, .b = b, .y = y};
    pool_run(&c->pool, parts_for(c, (double)n * in * out, 2e5), dense_forward_part, &j);
    return ST_OK;
}

static void dense_backward_part(void *arg, int part, int parts) {
    const dense_job *j = arg;
    // Column slices in multiples of 16 floats keep every part's rows 64-byte aligned.
    int64_t b0, b1;
    split_range((j->in + 15) / 16, parts, part, &b0, &b1);
    const int c0 = (int)(b0 * 16), c1 = (int)(b1 * 16 < j->in ? b1 * 16 : j->in);
    if (c1 <= c0) return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j->out, c1 - c0, j->n, 1.0f, j->dy, j->out, j->x + c0,
                j->in, 0.0f, j->dw + c0, j->in);
    progress_poll(j->c, part);
    if (j->dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->n, c1 - c0, j->out, 1.0f, j->dy, j->out,
                    j->w + c0, j->in, 0.0f, j->dx + c0, j->in);
}

static int cpu_dense_backward(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                              const float *y, float *dy, float *dx, float *dw, float *db) {
    cpu_ctx *c = ctx;
    TRY(dense_check(n, in, out, act, "dense_backward"));
    const size_t ny = (size_t)n * out;
    if (act != ACT_NONE)
        for (size_t i = 0; i < ny; i++) dy[i] = act_grad(act, y[i], dy[i]);
    if (db) {
        for (int o = 0; o < out; o++) db[o] = 0.0f;
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out; o++) db[o] += dy[(size_t)i * out + o];
    }
    dense_job j = {.c = c, .n = n, .in = in, .out = out, .act = act, .x = x, .w = w, .dy = dy, .dx = dx, .dw = dw};
    pool_run(&c->pool, parts_for(c, (double)n * in * out * (dx ? 2 : 1), 2e5), dense_backward_part, &j);
    progress_poll(c, 0);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Softmax + cross-entropy (small: classes x batch, serial)

static int cpu_softmax_xent(void *ctx, int n, int classes, const float *logits, const int32_t *labels,
                            float smoothing, float *dlogits, double *loss_acc, int32_t *correct_acc) {
    (void)ctx;
    if (n < 1 || classes < 1) return ERR(ST_INPUT, "softmax_xent: n=%d classes=%d must be positive", n, classes);
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return ERR(ST_INPUT, "softmax_xent: label %d of sample %d is outside [0, %d)", labels[i], i, classes);
    double loss = 0.0;
    int32_t correct = 0;
    const float inv_n = 1.0f / (float)n;
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * classes;
        int best = 0;
        for (int k = 1; k < classes; k++)
            if (z[k] > z[best]) best = k;
        const double zmax = z[best];  // subtracted so that exp cannot overflow
        double sum = 0.0;
        for (int k = 0; k < classes; k++) sum += exp((double)z[k] - zmax);
        const int label = labels[i];
        // -sum_k q_k log p_k with q = (1 - s) onehot + s / classes, log p_k = (z_k - zmax) - log(sum)
        double target_z = (double)z[label] - zmax;
        if (smoothing > 0.0f) {
            double zsum = 0.0;
            for (int k = 0; k < classes; k++) zsum += (double)z[k] - zmax;
            target_z = (1.0 - smoothing) * target_z + smoothing * zsum / classes;
        }
        loss += log(sum) - target_z;
        correct += best == label;
        if (dlogits) {
            float *g = dlogits + (size_t)i * classes;
            const double inv_sum = 1.0 / sum;
            const float off = smoothing / (float)classes, on = 1.0f - smoothing + off;
            for (int k = 0; k < classes; k++) {
                float p = (float)(exp((double)z[k] - zmax) * inv_sum);
                g[k] = (p - (k == label ? on : off)) * inv_n;
            }
        }
    }
    *loss_acc += loss;
    *correct_acc += correct;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Batch normalisation: x is [n, c, hw]; every op splits the channels over threads (each channel's sums are one
// thread's, so results do not depend on the thread count). Two passes for the variance. The sums over a
// channel are a double sum of per-image row sums, each row summed in float over 16 lanes (a single running
// double sum is a serial chain of adds: it was three quarters of the batch norm time).

typedef struct bn_job {
    const bn_desc *d;
    const float *x, *y, *stats, *w, *b, *save, *gstats, *dzc;
    float *out, *running, *save_out, *dy, *dw, *db, *dx;
} bn_job;

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

// act(v) for relu/leaky/none, lane by lane (act is loop-invariant: the branches are resolved per row).
static inline v8f v8_act(int act, v8f v) {
    if (act == ACT_NONE) return v;
    const v8i pos = v > v8_splat(0.0f);
    if (act == ACT_RELU) return (v8f)((v8i)v & pos);
    return (v8f)(((v8i)v & pos) | ((v8i)(v * v8_splat(ACT_LEAKY_SLOPE)) & ~pos));
}

// g * act'(pre-activation), from y (relu and leaky keep the sign, so y > 0 exactly when the pre-activation is).
static inline v8f v8_act_grad(int act, v8f y, v8f g) {
    if (act == ACT_NONE) return g;
    const v8i pos = y > v8_splat(0.0f);
    if (act == ACT_RELU) return (v8f)((v8i)g & pos);
    return (v8f)(((v8i)g & pos) | ((v8i)(g * v8_splat(ACT_LEAKY_SLOPE)) & ~pos));
}

static int bn_check(const bn_desc *d, const char *op) {
    if (d->n < 1 || d->c < 1 || d->hw < 1)
        return ERR(ST_INPUT, "%s: n=%d c=%d hw=%d must be positive", op, d->n, d->c, d->hw);
    if (d->act != ACT_NONE && d->act != ACT_RELU && d->act != ACT_LEAKY)
        return ERR(ST_INPUT, "%s: unknown activation %d", op, d->act);
    if (!(d->eps > 0.0f)) return ERR(ST_INPUT, "%s: eps %g must be > 0", op, (double)d->eps);
    return ST_OK;
}

// Parts for a BN op: by the work, at most one per channel.
static int bn_parts(const cpu_ctx *c, const bn_desc *d) {
    const int parts = parts_for(c, (double)d->n * d->c * d->hw, 65536);
    return parts < d->c ? parts : d->c;
}

static void bn_split(const bn_job *j, int part, int parts, int *c0, int *c1) {
    int64_t lo, hi;
    split_range(j->d->c, parts, part, &lo, &hi);
    *c0 = (int)lo, *c1 = (int)hi;
}

// Checks the descriptor, runs fn over the channels; backward ops then give MPI a chance to progress.
static int bn_run(cpu_ctx *c, bn_job *j, pool_fn fn, const char *op, int backward) {
    TRY(bn_check(j->d, op));
    pool_run(&c->pool, bn_parts(c, j->d), fn, j);
    if (backward) progress_poll(c, 0);
    return ST_OK;
}

static inline double bn_row_sum(const float *p, size_t n) {
    v8f a = {0}, b = {0};
    size_t k = 0;
    for (; k + 16 <= n; k += 16) a += v8_load(p + k), b += v8_load(p + k + 8);
    float t = 0.0f;
    for (; k < n; k++) t += p[k];
    return v8_sum(a + b) + t;
}

// sum(p[k] - m) and sum((p[k] - m)^2) over one row
static inline void bn_row_sums(const float *p, size_t n, float m, double *s1, double *s2) {
    const v8f vm = v8_splat(m);
    v8f a = {0}, b = {0}, qa = {0}, qb = {0};
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
        const v8f u = v8_load(p + k) - vm, v = v8_load(p + k + 8) - vm;
        a += u, b += v, qa += u * u, qb += v * v;
    }
    float t = 0.0f, tq = 0.0f;
    for (; k < n; k++) {
        const float u = p[k] - m;
        t += u, tq += u * u;
    }
    *s1 += v8_sum(a + b) + t;
    *s2 += v8_sum(qa + qb) + tq;
}

DDP_VEC_CLONES static void bn_stats_part(void *arg, int part, int parts) {
    const bn_job *j = arg;
    const bn_desc *d = j->d;
    const size_t plane = (size_t)d->hw, stride = (size_t)d->c * plane;
    const double inv = 1.0 / ((double)d->n * d->hw);
    int c0, c1;
    bn_split(j, part, parts, &c0, &c1);
    for (int ch = c0; ch < c1; ch++) {
        double s = 0.0;
        for (int i = 0; i < d->n; i++) s += bn_row_sum(j->x + i * stride + ch * plane, plane);
        const float mf = (float)(s * inv);
        double dev = 0.0, q = 0.0;  // dev: the sum of (x - mean) in float, to correct for mean's rounding
        for (int i = 0; i < d->n; i++) bn_row_sums(j->x + i * stride + ch * plane, plane, mf, &dev, &q);
        const double dm = dev * inv;
        j->out[ch] = mf;
        j->out[d->c + ch] = (float)(q * inv - dm * dm);
        j->out[2 * d->c + ch] = mf * mf;
    }
}

static int cpu_bn_stats(void *ctx, const bn_desc *d, const float *x, float *stats) {
    bn_job j = {.d = d, .x = x, .out = stats};
    return bn_run(ctx, &j, bn_stats_part, "bn_stats", 0);
}

DDP_VEC_CLONES static void bn_apply_part(void *arg, int part, int parts) {
    const bn_job *j = arg;
    const bn_desc *d = j->d;
    const size_t plane = (size_t)d->hw, stride = (size_t)d->c * plane;
    int c0, c1;
    bn_split(j, part, parts, &c0, &c1);
    for (int ch = c0; ch < c1; ch++) {
        float mean, var;
        float *rm = j->running + ch, *rv = j->running + d->c + ch;
        if (j->stats) {
            mean = j->stats[ch];
            // avg(var_r) + (avg(mean_r²) - avg(mean_r)²): the second term is 0 at one rank
            const float between = j->stats[2 * d->c + ch] - mean * mean;
            var = j->stats[d->c + ch] + (between > 0.0f ? between : 0.0f);
            const float unbiased = (float)((double)var * (double)d->count / (double)(d->count - 1));
            *rm = (1.0f - d->momentum) * *rm + d->momentum * mean;
            *rv = (1.0f - d->momentum) * *rv + d->momentum * unbiased;
        } else {
            mean = *rm, var = *rv;
        }
        const float invstd = (float)(1.0 / sqrt((double)var + (double)d->eps));
        j->save_out[ch] = mean;
        j->save_out[d->c + ch] = invstd;
        const float scale = j->w[ch] * invstd, shift = j->b[ch] - mean * scale;
        const v8f vs = v8_splat(scale), vt = v8_splat(shift);
        for (int i = 0; i < d->n; i++) {
            const float *p = j->x + i * stride + ch * plane;
            float *q = j->out + i * stride + ch * plane;
            size_t k = 0;
            for (; k + 8 <= plane; k += 8) v8_store(q + k, v8_act(d->act, v8_load(p + k) * vs + vt));
            for (; k < plane; k++) q[k] = act_apply(d->act, p[k] * scale + shift);
        }
    }
}

static int cpu_bn_apply(void *ctx, const bn_desc *d, const float *x, const float *stats, const float *w,
                        const float *b, float *running, float *save, float *y) {
    cpu_ctx *c = ctx;
    TRY(bn_check(d, "bn_apply"));
    if (stats && d->count < 2)
        return ERR(ST_INPUT, "bn_apply: training needs more than one value per channel (count %lld)",
                   (long long)d->count);
    bn_job j = {.d = d, .x = x, .stats = stats, .w = w, .b = b, .running = running, .save_out = save, .out = y};
    pool_run(&c->pool, bn_parts(c, d), bn_apply_part, &j);
    if (stats) running[2 * d->c] += 1.0f;  // num_batches_tracked
    return ST_OK;
}

// One row of the gradient statistics: dy <- dy * act'(y); adds sum(dy) and sum(dy * (x - mean)).
static inline void bn_grad_row(int act, const float *y, float *dy, const float *x, size_t n, float mean, double *sg,
                               double *sgx) {
    const v8f vm = v8_splat(mean);
    v8f a = {0}, b = {0};
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const v8f g = v8_act_grad(act, v8_load(y + k), v8_load(dy + k));
        v8_store(dy + k, g);
        a += g, b += g * (v8_load(x + k) - vm);
    }
    float t = 0.0f, tx = 0.0f;
    for (; k < n; k++) {
        const float g = act_grad(act, y[k], dy[k]);
        dy[k] = g;
        t += g, tx += g * (x[k] - mean);
    }
    *sg += v8_sum(a) + t;
    *sgx += v8_sum(b) + tx;
}

DDP_VEC_CLONES static void bn_grad_stats_part(void *arg, int part, int parts) {
    const bn_job *j = arg;
    const bn_desc *d = j->d;
    const size_t plane = (size_t)d->hw, stride = (size_t)d->c * plane;
    const double inv = 1.0 / ((double)d->n * d->hw);
    int c0, c1;
    bn_split(j, part, parts, &c0, &c1);
    for (int ch = c0; ch < c1; ch++) {
        const float mean = j->save[ch], invstd = j->save[d->c + ch];
        double sg = 0.0, sgx = 0.0;
        for (int i = 0; i < d->n; i++) {
            const size_t o = i * stride + ch * plane;
            bn_grad_row(d->act, j->y + o, j->dy + o, j->x + o, plane, mean, &sg, &sgx);
        }
        sgx *= invstd;
        j->db[ch] = (float)sg;
        j->dw[ch] = (float)sgx;
        j->out[ch] = (float)(sg * inv);
        j->out[d->c + ch] = (float)(sgx * inv);
    }
}

static int cpu_bn_grad_stats(void *ctx, const bn_desc *d, const float *x, const float *y, const float *save,
                             float *dy, float *dw, float *db, float *gstats) {
    bn_job j = {.d = d, .x = x, .y = y, .save = save, .dy = dy, .dw = dw, .db = db, .out = gstats};
    return bn_run(ctx, &j, bn_grad_stats_part, "bn_grad_stats", 1);
}

DDP_VEC_CLONES static void bn_grad_input_part(void *arg, int part, int parts) {
    const bn_job *j = arg;
    const bn_desc *d = j->d;
    const size_t plane = (size_t)d->hw, stride = (size_t)d->c * plane;
    int c0, c1;
    bn_split(j, part, parts, &c0, &c1);
    for (int ch = c0; ch < c1; ch++) {
        const float mean = j->save[ch], invstd = j->save[d->c + ch];
        const float mg = j->gstats[ch], mgx = j->gstats[d->c + ch], k0 = j->w[ch] * invstd;
        const v8f vm = v8_splat(mean), vi = v8_splat(invstd), vmg = v8_splat(mg), vmgx = v8_splat(mgx),
                  vk0 = v8_splat(k0);
        for (int i = 0; i < d->n; i++) {
            const size_t o = i * stride + ch * plane;
            const float *x = j->x + o, *dz = j->dzc + o;
            float *dx = j->dx + o;
            size_t k = 0;
            for (; k + 8 <= plane; k += 8) {
                const v8f xh = (v8_load(x + k) - vm) * vi;
                v8_store(dx + k, vk0 * (v8_load(dz + k) - vmg - xh * vmgx));
            }
            for (; k < plane; k++) {
                const float xh = (x[k] - mean) * invstd;
                dx[k] = k0 * (dz[k] - mg - xh * mgx);
            }
        }
    }
}

static int cpu_bn_grad_input(void *ctx, const bn_desc *d, const float *x, const float *save, const float *w,
                             const float *gstats, const float *dz, float *dx) {
    bn_job j = {.d = d, .x = x, .save = save, .w = w, .gstats = gstats, .dzc = dz, .dx = dx};
    return bn_run(ctx, &j, bn_grad_input_part, "bn_grad_input", 1);
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise ops over flat buffers: optimizers, scale, non-finite count

typedef struct flat_job {
    size_t n;
    float *p, *m, *v, *x;
    const float *g, *cx;
    float lr, b1, b2, eps, wd, alpha;
    float keep;    // adam: p *= keep first (AdamW's decoupled decay: 1 - lr * decoupled_wd; 1 otherwise)
    int nesterov;  // sgd
    int64_t *bad;  // count_nonfinite: one slot per part, 8 apart (a cache line each)
    double *acc;   // clip_grad_norm: the same, sums of squares
} flat_job;

static void flat_range(const flat_job *j, int part, int parts, size_t *lo, size_t *hi) {
    int64_t l, h;
    split_range((int64_t)j->n, parts, part, &l, &h);
    *lo = (size_t)l, *hi = (size_t)h;
}

// Adam with Keras/TF1 semantics (the bias correction folded into the step size, eps added to sqrt(v) as is):
//   p    = p * (1 - lr * decoupled_wd)               (AdamW only: decoupled weight decay, applied first)
//   g'   = g + weight_decay * p                      (only when weight_decay > 0; L2 folded into the gradient)
//   m    = beta1 * m + (1 - beta1) * g'
//   v    = beta2 * v + (1 - beta2) * g'^2
//   lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
//   p   -= lr_t * m / (sqrt(v) + eps)
static void adam_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    float *restrict p = j->p, *restrict m = j->m, *restrict v = j->v;
    const float *restrict g = j->g;
    const float b1 = j->b1, b2 = j->b2, ob1 = 1.0f - j->b1, ob2 = 1.0f - j->b2, lr_t = j->lr, eps = j->eps;
    const float wd = j->wd, keep = j->keep;
    size_t i = lo;
#ifdef __SSE2__
    // sqrtf may set errno, which keeps GCC from vectorising the scalar loop below (v >= 0, so it never does).
    const __m128 vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2), vob1 = _mm_set1_ps(ob1), vob2 = _mm_set1_ps(ob2);
    const __m128 vlr = _mm_set1_ps(lr_t), veps = _mm_set1_ps(eps), vwd = _mm_set1_ps(wd), vkeep = _mm_set1_ps(keep);
    for (; i + 4 <= hi; i += 4) {
        __m128 pi = _mm_loadu_ps(p + i);
        if (keep != 1.0f) pi = _mm_mul_ps(pi, vkeep);
        __m128 gi = _mm_add_ps(_mm_loadu_ps(g + i), _mm_mul_ps(vwd, pi));
        __m128 mi = _mm_add_ps(_mm_mul_ps(vb1, _mm_loadu_ps(m + i)), _mm_mul_ps(vob1, gi));
        __m128 vi = _mm_add_ps(_mm_mul_ps(vb2, _mm_loadu_ps(v + i)), _mm_mul_ps(_mm_mul_ps(vob2, gi), gi));
        _mm_storeu_ps(m + i, mi);
        _mm_storeu_ps(v + i, vi);
        __m128 step = _mm_div_ps(_mm_mul_ps(vlr, mi), _mm_add_ps(_mm_sqrt_ps(vi), veps));
        _mm_storeu_ps(p + i, _mm_sub_ps(pi, step));
    }
#endif
    for (; i < hi; i++) {
        if (keep != 1.0f) p[i] *= keep;
        const float gi = g[i] + wd * p[i];
        const float mi = b1 * m[i] + ob1 * gi;
        const float vi = b2 * v[i] + ob2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= lr_t * mi / (sqrtf(vi) + eps);
    }
}

static int cpu_adam_step(void *ctx, size_t n, float *p, const float *g, float *m, float *v, const adam_hyper *h) {
    cpu_ctx *c = ctx;
    if (h->t < 1) return ERR(ST_INPUT, "adam_step: step t=%lld must be >= 1", (long long)h->t);
    const double t = (double)h->t;
    flat_job j = {.n = n, .p = p, .m = m, .v = v, .g = g, .b1 = h->beta1, .b2 = h->beta2, .eps = h->eps,
                  .wd = h->weight_decay > 0.0f ? h->weight_decay : 0.0f,
                  .keep = h->decoupled_wd > 0.0f ? 1.0f - h->lr * h->decoupled_wd : 1.0f};
    j.lr = (float)(h->lr * sqrt(1.0 - pow(h->beta2, t)) / (1.0 - pow(h->beta1, t)));
    pool_run(&c->pool, parts_for(c, (double)n, 32768), adam_part, &j);
    return ST_OK;
}

// SGD with momentum: vel = momentum * vel + g'; p -= lr * vel (heavy ball) or p -= lr * (g' + momentum * vel)
// (Nesterov, as PyTorch), with g' as for Adam.
static void sgd_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    float *restrict p = j->p, *restrict vel = j->v;
    const float *restrict g = j->g;
    const float lr = j->lr, mom = j->b1, wd = j->wd;
    if (j->nesterov) {
        for (size_t i = lo; i < hi; i++) {
            const float gi = g[i] + wd * p[i];
            const float vi = mom * vel[i] + gi;
            vel[i] = vi;
            p[i] -= lr * (gi + mom * vi);
        }
        return;
    }
    for (size_t i = lo; i < hi; i++) {
        const float vi = mom * vel[i] + (g[i] + wd * p[i]);
        vel[i] = vi;
        p[i] -= lr * vi;
    }
}

static int cpu_sgd_step(void *ctx, size_t n, float *p, const float *g, float *vel, const sgd_hyper *h) {
    cpu_ctx *c = ctx;
    flat_job j = {.n = n, .p = p, .v = vel, .g = g, .lr = h->lr, .b1 = h->momentum,
                  .wd = h->weight_decay > 0.0f ? h->weight_decay : 0.0f, .nesterov = h->nesterov != 0.0f};
    pool_run(&c->pool, parts_for(c, (double)n, 32768), sgd_part, &j);
    return ST_OK;
}

static void scale_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    for (size_t i = lo; i < hi; i++) j->x[i] *= j->alpha;
}

static int cpu_scale(void *ctx, size_t n, float alpha, float *x) {
    cpu_ctx *c = ctx;
    flat_job j = {.n = n, .x = x, .alpha = alpha};
    pool_run(&c->pool, parts_for(c, (double)n, 65536), scale_part, &j);
    return ST_OK;
}

static void nonfinite_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    int64_t bad = 0;
    for (size_t i = lo; i < hi; i++) bad += !isfinite(j->cx[i]);
    j->bad[8 * part] = bad;
}

static int cpu_count_nonfinite(void *ctx, size_t n, const float *x, int32_t *out) {
    cpu_ctx *c = ctx;
    int parts = parts_for(c, (double)n, 65536);
    int64_t *bad = calloc((size_t)parts * 8, sizeof(int64_t));
    TRY_ALLOC(bad);
    flat_job j = {.n = n, .cx = x, .bad = bad};
    pool_run(&c->pool, parts, nonfinite_part, &j);
    int64_t total = 0;
    for (int t = 0; t < parts; t++) total += bad[8 * t];
    free(bad);
    *out = total > INT32_MAX ? INT32_MAX : (int32_t)total;
    return ST_OK;
}

static void sumsq_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    double s = 0;
    for (size_t i = lo; i < hi; i++) s += (double)j->cx[i] * j->cx[i];
    j->acc[8 * part] = s;
}

DDP_VEC_CLONES static void add_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    float *restrict x = j->x;
    const float *restrict cx = j->cx;
    for (size_t i = lo; i < hi; i++) x[i] += cx[i];
}

static int cpu_add(void *ctx, size_t n, const float *x, float *y) {
    cpu_ctx *c = ctx;
    flat_job j = {.n = n, .cx = x, .x = y};
    pool_run(&c->pool, parts_for(c, (double)n, 65536), add_part, &j);
    return ST_OK;
}

static int cpu_clip_grad_norm(void *ctx, size_t n, float *g, float max_norm, double *sumsq) {
    cpu_ctx *c = ctx;
    int parts = parts_for(c, (double)n, 65536);
    double *acc = calloc((size_t)parts * 8, sizeof(double));
    TRY_ALLOC(acc);
    flat_job j = {.n = n, .cx = g, .x = g, .acc = acc};
    pool_run(&c->pool, parts, sumsq_part, &j);
    double total = 0;
    for (int t = 0; t < parts; t++) total += acc[8 * t];  // in part order: the same sum for the same threads
    free(acc);
    *sumsq = total;
    const double coef = max_norm / (sqrt(total) + 1e-6);
    if (coef < 1.0) {
        j.alpha = (float)coef;
        pool_run(&c->pool, parts, scale_part, &j);
    }
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Layer ops of issue 14 part 3: residual add + activation, activation gradient ([shortcut]), channel slices
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

static int cpu_add_act(void *ctx, size_t n, int act, const float *a, const float *b, float *y) {
    cpu_ctx *c = ctx;
    TRY(dense_check(1, 1, 1, act, "add_act"));
    ew_job j = {.n = n, .act = act, .a = a, .b = b, .y = y};
    pool_run(&c->pool, parts_for(c, (double)n, 65536), add_act_part, &j);
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

static int cpu_act_backward(void *ctx, size_t n, int act, const float *y, const float *dy, float *dx) {
    cpu_ctx *c = ctx;
    TRY(dense_check(1, 1, 1, act, "act_backward"));
    ew_job j = {.n = n, .act = act, .a = y, .b = dy, .y = dx};
    pool_run(&c->pool, parts_for(c, (double)n, 65536), act_backward_part, &j);
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

static int cpu_channel_copy(void *ctx, int n, int c, int hw, const float *src, int src_c, int src_off, float *dst,
                            int dst_c, int dst_off) {
    cpu_ctx *c_ = ctx;
    if (n < 0 || c < 0 || hw < 1 || src_off < 0 || dst_off < 0 || src_off + c > src_c || dst_off + c > dst_c)
        return ERR(ST_INPUT, "channel_copy: %d channels at %d of %d to %d of %d (n=%d, hw=%d)", c, src_off, src_c,
                   dst_off, dst_c, n, hw);
    chan_job j = {.n = n, .c = c, .hw = hw, .src_c = src_c, .src_off = src_off, .dst_c = dst_c, .dst_off = dst_off,
                  .src = src, .dst = dst};
    pool_run(&c_->pool, parts_for(c_, (double)n * c * hw, 65536), channel_copy_part, &j);
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

static int cpu_dropout(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const float *x,
                       float *y) {
    cpu_ctx *c = ctx;
    if (!(rate >= 0.0f && rate < 1.0f)) return ERR(ST_INPUT, "dropout: rate %g outside [0, 1)", (double)rate);
    dropout_job j = {.n = n, .base = dropout_base(key->seed, key->step, key->rank, stream),
                     .threshold = dropout_threshold(rate), .scale = 1.0f / (1.0f - rate), .x = x, .y = y};
    pool_run(&c->pool, parts_for(c, (double)n, 65536), dropout_part, &j);
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
    pool_run(&cc->pool, parts_for(cc, (double)n * c * h * w, 32768), fn, &j);
    return ST_OK;
}

static int cpu_avgpool_forward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *x,
                               float *y) {
    return cpu_avgpool(ctx, n, c, h, w, kh, kw, stride, x, y, avgpool_forward_part, "avgpool_forward");
}

static int cpu_avgpool_backward(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *dy,
                                float *dx) {
    return cpu_avgpool(ctx, n, c, h, w, kh, kw, stride, dy, dx, avgpool_backward_part, "avgpool_backward");
}

static void cpu_set_progress(void *ctx, void (*fn)(void *arg), void *arg) {
    cpu_ctx *c = ctx;
    c->progress = fn;
    c->progress_arg = arg;
}

// ---------------------------------------------------------------------------------------------------------
// Table and constructor

static void cpu_destroy(void *ctx) {
    cpu_ctx *c = ctx;
    if (!c) return;
    pool_stop(&c->pool);
    conv_dnnl_destroy(c->dnnl);
    free(c);
}

// OpenBLAS's sgemm kernel prefetches well past the end of the packing buffer a small product uses. While
// those pages of the (lazily mapped, per thread) buffer were never touched, every such prefetch costs a page
// walk — under virtualisation a two-level one — and the per-image products of a conv ran 3x slower (11
// instead of 34 GFLOP/s on one Zen core) until some larger product had touched them. One larger product on
// every thread of the pool, all at once so that each holds its own buffer, maps them up front.
typedef struct warm_job {
    _Atomic int failed;
} warm_job;

static void blas_warm_up_part(void *arg, int part, int parts) {
    (void)part, (void)parts;
    warm_job *j = arg;
    enum { M = 64, N = 2048, K = 512 };
    float *a = calloc((size_t)M * K, sizeof(float)), *b = calloc((size_t)K * N, sizeof(float));
    float *c = calloc((size_t)M * N, sizeof(float));
    if (a && b && c)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
    else
        atomic_store(&j->failed, 1);
    free(a), free(b), free(c);
}

// ---------------------------------------------------------------------------------------------------------
// Timing marks: every op has finished when it returns, so a mark is the host clock at mark_record.

static int cpu_mark_create(void *ctx, void **mark) {
    (void)ctx;
    double *m = calloc(1, sizeof *m);
    *mark = m;
    TRY_ALLOC(m);
    return ST_OK;
}

static void cpu_mark_destroy(void *ctx, void *mark) {
    (void)ctx;
    free(mark);
}

static int cpu_mark_record(void *ctx, void *mark) {
    (void)ctx;
    *(double *)mark = now_s();
    return ST_OK;
}

static int cpu_mark_query(void *ctx, void *mark, int *done) {
    (void)ctx, (void)mark;
    *done = 1;
    return ST_OK;
}

static int cpu_mark_elapsed(void *ctx, void *a, void *b, double *seconds) {
    (void)ctx;
    *seconds = *(const double *)b - *(const double *)a;
    return ST_OK;
}

static const backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .gather = cpu_gather,
    .conv_prepare = cpu_conv_prepare,
    .conv_release = cpu_conv_release,
    .conv_forward = cpu_conv_forward,
    .conv_backward = cpu_conv_backward,
    .pool_forward = cpu_pool_forward,
    .pool_backward = cpu_pool_backward,
    .dense_forward = cpu_dense_forward,
    .dense_backward = cpu_dense_backward,
    .softmax_xent = cpu_softmax_xent,
    .bn_stats = cpu_bn_stats,
    .bn_apply = cpu_bn_apply,
    .bn_grad_stats = cpu_bn_grad_stats,
    .bn_grad_input = cpu_bn_grad_input,
    .adam_step = cpu_adam_step,
    .sgd_step = cpu_sgd_step,
    .scale = cpu_scale,
    .count_nonfinite = cpu_count_nonfinite,
    .clip_grad_norm = cpu_clip_grad_norm,
    .add = cpu_add,
    .set_progress = cpu_set_progress,
    .stream = NULL,
    .mark_create = cpu_mark_create,
    .mark_destroy = cpu_mark_destroy,
    .mark_record = cpu_mark_record,
    .mark_query = cpu_mark_query,
    .mark_elapsed = cpu_mark_elapsed,
    .capture_begin = NULL,
    .capture_end = NULL,
    .replay = NULL,
    // layer ops of issue 14 part 3
    .add_act = cpu_add_act,
    .act_backward = cpu_act_backward,
    .channel_copy = cpu_channel_copy,
    .dropout = cpu_dropout,
    .avgpool_forward = cpu_avgpool_forward,
    .avgpool_backward = cpu_avgpool_backward,
};

// Every thread that calls sgemm gets a buffer of this size from OpenBLAS (mapped when the thread first calls it;
// measured with strace on Debian 12's OpenBLAS 0.3.21: one 128 MiB anonymous mmap per thread). When the map
// fails, blas_memory_alloc retries forever, so under a memory limit (ulimit -v) the maps are tried here first,
// once, and a failure ends set-up with a message instead of a spin.
#define OPENBLAS_BUFFER_BYTES ((size_t)128 << 20)

static int blas_buffers_check(int threads) {
    struct rlimit as, data;
    int limited = (getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) ||
                  (getrlimit(RLIMIT_DATA, &data) == 0 && data.rlim_cur != RLIM_INFINITY);
    if (!limited) return ST_OK;
    void *maps[1024];
    int n = 0, e = 0;
    for (; n < threads; n++) {
        maps[n] = mmap(NULL, OPENBLAS_BUFFER_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (maps[n] == MAP_FAILED) {
            e = errno;
            break;
        }
    }
    for (int i = 0; i < n; i++) munmap(maps[i], OPENBLAS_BUFFER_BYTES);
    if (e == 0) return ST_OK;
    return ERR(ST_RUNTIME, "cpu backend: out of memory allocating OpenBLAS's GEMM buffers: %d thread(s) x %zu MiB "
                           "of address space (thread %d's failed: %s); raise the memory limit (ulimit -v) or lower "
                           "net.threads", threads, OPENBLAS_BUFFER_BYTES >> 20, n + 1, strerror(e));
}

int backend_cpu_create(backend *be, int threads) {
    backend_cpu_opts o = {.threads = threads, .conv = CPU_CONV_AUTO};
    return backend_cpu_create_opts(be, &o);
}

int backend_cpu_dnnl_available(void) { return conv_dnnl_available(); }

int backend_cpu_create_opts(backend *be, const backend_cpu_opts *o) {
    int threads = o->threads;
    be->ops = NULL;
    be->ctx = NULL;
    if (threads < 0 || threads > 1024) return ERR(ST_INPUT, "cpu backend: threads %d must be in [0, 1024]", threads);
    if (threads == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores > 0 ? (int)(cores < 1024 ? cores : 1024) : 1;
    }
    TRY(blas_buffers_check(threads));
    cpu_ctx *c = calloc(1, sizeof *c);
    TRY_ALLOC(c);
    c->threads = threads;
    c->conv = o->conv;
    int st = pool_start(&c->pool, threads);
    if (st != ST_OK) {
        free(c);
        return st;
    }
    // Every sgemm runs on one pool thread over its share of the work (see the top of this file).
    openblas_set_num_threads(1);
    warm_job wj = {0};
    pool_run(&c->pool, threads, blas_warm_up_part, &wj);
    if (atomic_load(&wj.failed)) {
        cpu_destroy(c);
        return ERR(ST_RUNTIME, "cpu backend: out of host memory warming up OpenBLAS");
    }
    if (o->conv == CPU_CONV_DNNL || (o->conv == CPU_CONV_AUTO && conv_dnnl_available())) {
        st = conv_dnnl_create(&c->dnnl, threads);
        if (st != ST_OK) {
            cpu_destroy(c);
            return st;
        }
    }
    be->ops = &cpu_ops;
    be->ctx = c;
    return ST_OK;
}
