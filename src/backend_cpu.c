// backend_cpu.c — the reference backend: im2col + OpenBLAS sgemm for convolutions, plain loops for the rest.
// This file holds the context (create, destroy), memory, timing marks and the table; the ops live in src/cpu/
// by family (the map and the threading design: src/cpu/backend_cpu_impl.h).
#define _DEFAULT_SOURCE  // MAP_ANONYMOUS
#include <cblas.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cpu/backend_cpu_impl.h"
#include "precision.h"

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
// Table and constructor

static void cpu_destroy(void *ctx) {
    cpu_ctx *c = ctx;
    if (!c) return;
    cpu_pool_stop(&c->pool);
    conv_dnnl_destroy(c->dnnl);
    free(c->g32);
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

static int cpu_host_alloc(void *ctx, void **ptr, size_t bytes) {
    (void)ctx;
    *ptr = malloc(bytes ? bytes : 1);
    if (!*ptr) return ERR(ST_RUNTIME, "out of host memory allocating %zu bytes", bytes);
    return ST_OK;
}

static void cpu_host_free(void *ctx, void *ptr) {
    (void)ctx;
    free(ptr);
}

// Ops run on the host in issue order: the copy is just a copy, done when it returns.
static int cpu_stage_upload(void *ctx, void *dst, const void *src, size_t bytes, void *done) {
    (void)ctx;
    if (bytes) memcpy(dst, src, bytes);
    *(double *)done = now_s();
    return ST_OK;
}

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

// ---------------------------------------------------------------------------------------------------------
// Parameter gradients in bf16 (backend_options.grads16): conv_backward, dense_backward and bn_grad_stats compute
// their float32 sums as always, into the context's scratch, and write them rounded to bf16 (round-to-nearest-even,
// precision.h) where dw and db point -- the values a GPU's 16-bit GEMM output holds, which the all-reduce then sends
// as they are. The rounding is this backend's emulation, not a saving: it costs the CPU a pass.

static int g32_reserve(cpu_ctx *c, size_t n) {
    if (c->g32_cap >= n) return ST_OK;
    float *p = realloc(c->g32, n * sizeof *p);
    if (!p) return ERR(ST_RUNTIME, "cpu backend: out of host memory for %zu gradient values", n);
    c->g32 = p;
    c->g32_cap = n;
    return ST_OK;
}

static void g16_store(const float *x, size_t n, void *dst) {
    uint16_t *y = dst;
    if (y)
        for (size_t i = 0; i < n; i++) y[i] = (uint16_t)(precision_bits(precision_round_bf16(x[i])) >> 16);
}

static int cpu_conv_backward_g(void *ctx, const conv_desc *d, const float *x, const float *w, const float *y,
                               float *dy, float *dx, void *dw, void *db, void *ws) {
    cpu_ctx *c = ctx;
    if (!c->grads16) return cpu_conv_backward(ctx, d, x, w, y, dy, dx, dw, db, ws);
    const size_t nw = (size_t)d->k * (d->c / (d->groups > 0 ? d->groups : 1)) * d->r * d->s;
    TRY(g32_reserve(c, nw + (size_t)d->k));
    TRY(cpu_conv_backward(ctx, d, x, w, y, dy, dx, dw ? c->g32 : NULL, db ? c->g32 + nw : NULL, ws));
    g16_store(c->g32, nw, dw);
    g16_store(c->g32 + nw, (size_t)d->k, db);
    return ST_OK;
}

static int cpu_dense_backward_g(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                                const float *y, float *dy, float *dx, void *dw, void *db) {
    cpu_ctx *c = ctx;
    if (!c->grads16) return cpu_dense_backward(ctx, n, in, out, act, x, w, y, dy, dx, dw, db);
    const size_t nw = (size_t)in * out;
    TRY(g32_reserve(c, nw + (size_t)out));
    TRY(cpu_dense_backward(ctx, n, in, out, act, x, w, y, dy, dx, dw ? c->g32 : NULL, db ? c->g32 + nw : NULL));
    g16_store(c->g32, nw, dw);
    g16_store(c->g32 + nw, (size_t)out, db);
    return ST_OK;
}

static int cpu_bn_grad_stats_g(void *ctx, const bn_desc *d, const float *x, const float *y, const float *save,
                               float *dy, void *dw, void *db, float *gstats) {
    cpu_ctx *c = ctx;
    if (!c->grads16) return cpu_bn_grad_stats(ctx, d, x, y, save, dy, dw, db, gstats);
    TRY(g32_reserve(c, 2 * (size_t)d->c));
    TRY(cpu_bn_grad_stats(ctx, d, x, y, save, dy, c->g32, c->g32 + d->c, gstats));
    g16_store(c->g32, (size_t)d->c, dw);
    g16_store(c->g32 + d->c, (size_t)d->c, db);
    return ST_OK;
}

static int cpu_grads16(void *ctx, int *on) {
    *on = ((const cpu_ctx *)ctx)->grads16;
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
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_host_free,
    .stage_upload = cpu_stage_upload,
    .gather = cpu_gather,
    .conv_prepare = cpu_conv_prepare,
    .conv_release = cpu_conv_release,
    .conv_forward = cpu_conv_forward,
    .conv_backward = cpu_conv_backward_g,
    .pool_forward = cpu_pool_forward,
    .pool_backward = cpu_pool_backward,
    .dense_forward = cpu_dense_forward,
    .dense_backward = cpu_dense_backward_g,
    .softmax_xent = cpu_softmax_xent,
    .bn_stats = cpu_bn_stats,
    .bn_apply = cpu_bn_apply,
    .bn_grad_stats = cpu_bn_grad_stats_g,
    .bn_grad_input = cpu_bn_grad_input,
    .adam_step = cpu_adam_step,
    .sgd_step = cpu_sgd_step,
    .scale = cpu_scale,
    .count_nonfinite = cpu_count_nonfinite,
    .clip_grad_norm = cpu_clip_grad_norm,
    .round_to = cpu_round_to,
    .add = cpu_add,
    .set_progress = cpu_set_progress,
    .grads16 = cpu_grads16,
    .stream = NULL,
    .mark_create = cpu_mark_create,
    .mark_destroy = cpu_mark_destroy,
    .mark_record = cpu_mark_record,
    .mark_query = cpu_mark_query,
    .mark_elapsed = cpu_mark_elapsed,
    .capture_begin = NULL,
    .capture_end = NULL,
    .replay = NULL,
    // layer ops of [shortcut], [route], [dropout] and [avgpool]
    .add_act = cpu_add_act,
    .act_backward = cpu_act_backward,
    .channel_copy = cpu_channel_copy,
    .layout_convert = cpu_layout_convert,
    .dropout = cpu_dropout,
    .avgpool_forward = cpu_avgpool_forward,
    .avgpool_backward = cpu_avgpool_backward,
    // activations on their own (layer_ops_cpu.c)
    .act_forward = cpu_act_forward,
    .act_backward_input = cpu_act_backward_input,
    // PowerSGD's dense linear algebra (linalg_cpu.c)
    .gemm = cpu_gemm,
    .orthogonalize = cpu_orthogonalize,
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
    c->grads16 = o->grads16 != 0;
    int st = cpu_pool_start(&c->pool, threads);
    if (st != ST_OK) {
        free(c);
        return st;
    }
    // Every sgemm runs on one pool thread over its share of the work (see cpu/backend_cpu_impl.h).
    openblas_set_num_threads(1);
    warm_job wj = {0};
    cpu_pool_run(&c->pool, threads, blas_warm_up_part, &wj);
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
