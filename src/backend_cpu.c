// backend_cpu.c — the reference backend: im2col + OpenBLAS sgemm for convolutions, plain loops for the rest.
// This file holds the context (create, destroy), memory, timing marks and the table; the ops live in src/cpu/
// by family (the map and the threading design: src/cpu/backend_cpu_impl.h), the slots of the ops that read or write
// activations or parameter gradients in src/backend_cpu_store.c (float32 or 16-bit storage).
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
#include "config.h"  // PREC_BF16, PREC_FP16

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
    for (int i = 0; i < CPU_SCRATCH_SLOTS; i++) free(c->s32[i].p);
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
    .gather = cpu_slot_gather,
    .conv_prepare = cpu_conv_prepare,
    .conv_release = cpu_conv_release,
    .conv_forward = cpu_slot_conv_forward,
    .conv_backward = cpu_slot_conv_backward,
    .pool_forward = cpu_slot_pool_forward,
    .pool_backward = cpu_slot_pool_backward,
    .dense_forward = cpu_slot_dense_forward,
    .dense_backward = cpu_slot_dense_backward,
    .softmax_xent = cpu_slot_softmax_xent,
    .bn_stats = cpu_slot_bn_stats,
    .bn_apply = cpu_slot_bn_apply,
    .bn_grad_stats = cpu_slot_bn_grad_stats,
    .bn_grad_input = cpu_slot_bn_grad_input,
    .adam_step = cpu_adam_step,
    .sgd_step = cpu_sgd_step,
    .scale = cpu_scale,
    .count_nonfinite = cpu_count_nonfinite,
    .clip_grad_norm = cpu_clip_grad_norm,
    .round_to = cpu_round_to,
    .add = cpu_add,
    .set_progress = cpu_set_progress,
    .grads16 = cpu_slot_grads16,
    .act16 = cpu_slot_act16,
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
    .add_act = cpu_slot_add_act,
    .act_backward = cpu_slot_act_backward,
    .channel_copy = cpu_slot_channel_copy,
    .layout_convert = cpu_layout_convert,
    .dropout = cpu_slot_dropout,
    .avgpool_forward = cpu_slot_avgpool_forward,
    .avgpool_backward = cpu_slot_avgpool_backward,
    // activations on their own (layer_ops_cpu.c)
    .act_forward = cpu_slot_act_forward,
    .act_backward_input = cpu_slot_act_backward_input,
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
    if (o->act16 && o->act16 != PREC_BF16 && o->act16 != PREC_FP16) {
        free(c);
        return ERR(ST_INPUT, "cpu backend: act16 format %d is neither bf16 nor fp16", o->act16);
    }
    c->act16 = o->act16;
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
