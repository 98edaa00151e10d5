// backend_cuda.cu — the CUDA backend: its context (device, compute stream, cuBLAS and cuDNN handles bound to
// that stream), memory ops, CUDA Graph capture/replay of one training step, and the op table.
//
// Every op is enqueued on the one non-blocking compute stream and returns without waiting, except download and
// sync (and upload of large buffers). The NCCL comm backend orders its own stream against this one with events.
// The ops themselves live in conv_cuda.cu (cuDNN), bn_cuda.cu (batch normalisation) and ops_cuda.cu (the rest).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda_impl.h"

extern "C" {
#include "backend_cuda.h"
}

// ---------------------------------------------------------------------------------------------------------
// Context

// Tolerates a half-built context (every field is checked), so it is also the clean-up of a failed create.
static void ctx_free(cuda_ctx *c) {
    if (c == NULL) return;
    if (c->capturing) {
        cudaGraph_t g = NULL;
        cudaStreamEndCapture(c->stream, &g);
        if (g) cudaGraphDestroy(g);
    }
    // Work still queued may read buffers the caller frees next; and the graph must not be running.
    if (c->stream) cudaStreamSynchronize(c->stream);
    if (c->exec) cudaGraphExecDestroy(c->exec);
    for (int i = 0; i < STAGE_SLOTS; i++)
        if (c->stage_ev[i]) cudaEventDestroy(c->stage_ev[i]);
    if (c->stage) cudaFreeHost(c->stage);
    if (c->copy_stream) cudaStreamSynchronize(c->copy_stream), cudaStreamDestroy(c->copy_stream);
    if (c->copy_after) cudaEventDestroy(c->copy_after);
    if (c->cudnn) cudnnDestroy(c->cudnn);
    if (c->cublas) cublasDestroy(c->cublas);
    if (c->cublas_ws) cudaFree(c->cublas_ws);
    if (c->partials) cudaFree(c->partials);
    if (c->lp_scratch) cudaFree(c->lp_scratch);
    for (int i = 0; i < c->n_lp_retired; i++) cudaFree(c->lp_retired[i]);
    if (c->stream) cudaStreamDestroy(c->stream);
    (void)cudaGetLastError();  // nothing to report at tear-down; do not leak an error into a later check
    free(c);
}

static int ctx_init(cuda_ctx *c, int device) {
    c->device = device;
    cudaCheck(cudaSetDevice(device));
    cudaCheck(cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, device));
    int major = 0, minor = 0;
    cudaCheck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    cudaCheck(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    c->cc = major * 10 + minor;
    cudaCheck(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));

    cublasCheck(cublasCreate(&c->cublas));
    cublasCheck(cublasSetStream(c->cublas, c->stream));
    // After cublasSetStream, which resets the workspace to cuBLAS's own pool.
    cudaCheck(cudaMalloc(&c->cublas_ws, CUBLAS_WS_BYTES));
    cudaCheck(cudaMalloc(&c->partials, (size_t)c->sm_count * 32 * sizeof(double)));  // cuda_blocks' cap
    cublasCheck(cublasSetWorkspace(c->cublas, c->cublas_ws, CUBLAS_WS_BYTES));
    // Default math is full FP32 for SGEMM (TF32 only through backend_options.tf32 or backend_cuda_set_options).
    cublasCheck(cublasSetMathMode(c->cublas, CUBLAS_DEFAULT_MATH));
    // No atomics in cuBLAS: with one stream and a fixed workspace, a GEMM then gives the same bits at every
    // run on the same GPU model (cuBLAS's default, stated so that net.deterministic can rely on it).
    cublasCheck(cublasSetAtomicsMode(c->cublas, CUBLAS_ATOMICS_NOT_ALLOWED));

    cudnnCheck(cudnnCreate(&c->cudnn));
    cudnnCheck(cudnnSetStream(c->cudnn, c->stream));

    void *stage = NULL;
    cudaCheck(cudaMallocHost(&stage, STAGE_SLOTS * STAGE_BYTES));
    c->stage = (char *)stage;
    for (int i = 0; i < STAGE_SLOTS; i++) cudaCheck(cudaEventCreateWithFlags(&c->stage_ev[i], cudaEventDisableTiming));
    return ST_OK;
}

static void cuda_destroy(void *ctx) { ctx_free((cuda_ctx *)ctx); }

// Calls that would block on the GPU or allocate are not stream work: inside a capture they would either
// invalidate it or silently not be replayed.
static int not_capturing(const cuda_ctx *c, const char *op) {
    if (c->capturing)
        return ERR(ST_RUNTIME, "cuda backend: %s is not allowed during CUDA graph capture (only stream work is)", op);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Memory

static int cuda_alloc(void *ctx, void **ptr, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    *ptr = NULL;
    TRY(not_capturing(c, "alloc"));
    if (bytes == 0) return ST_OK;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return ERR(ST_RUNTIME, "rank %d (%s): cuda backend: cudaMalloc of %zu bytes failed: %s", g_rank, g_host, bytes,
                   cudaGetErrorString(e));
    }
    // Zeroed in stream order: every later op on the compute stream (and the comm stream, which waits on it)
    // sees zeros.
    e = cudaMemsetAsync(p, 0, bytes, c->stream);
    if (e != cudaSuccess) {
        cudaFree(p);
        (void)cudaGetLastError();
        return ERR(ST_RUNTIME, "rank %d (%s): cuda backend: zeroing %zu new bytes failed: %s", g_rank, g_host, bytes,
                   cudaGetErrorString(e));
    }
    *ptr = p;
    return ST_OK;
}

static void cuda_free(void *ctx, void *ptr) {
    (void)ctx;
    if (ptr) cudaFree(ptr);  // synchronises the device: no op still in flight reads the buffer
}

// Small uploads are copied into a pinned staging slot and sent asynchronously, so the host may reuse src at
// once and need not wait for the GPU; the slot is reused only after the GPU has read it (its event).
// Large uploads (the data set, the initial weights) are rare: copy and wait.
static int cuda_upload(void *ctx, void *dst, const void *src, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(not_capturing(c, "upload"));
    if (bytes == 0) return ST_OK;
    if (bytes <= STAGE_BYTES) {
        const int k = c->stage_next;
        c->stage_next = (k + 1) % STAGE_SLOTS;
        char *slot = c->stage + (size_t)k * STAGE_BYTES;
        cudaCheck(cudaEventSynchronize(c->stage_ev[k]));
        memcpy(slot, src, bytes);
        cudaCheck(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, c->stream));
        cudaCheck(cudaEventRecord(c->stage_ev[k], c->stream));
        return ST_OK;
    }
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream));
    cudaCheck(cudaStreamSynchronize(c->stream));
    return ST_OK;
}

static int cuda_host_alloc(void *ctx, void **ptr, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    *ptr = NULL;
    TRY(not_capturing(c, "host_alloc"));
    cudaError_t e = cudaHostAlloc(ptr, bytes ? bytes : 1, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        *ptr = NULL;
        return ERR(ST_RUNTIME, "rank %d (%s): cuda backend: cudaHostAlloc of %zu pinned bytes failed: %s", g_rank, g_host,
                   bytes, cudaGetErrorString(e));
    }
    return ST_OK;
}

static void cuda_host_free(void *ctx, void *ptr) {
    (void)ctx;
    if (ptr) cudaFreeHost(ptr);
}

// The copy stream waits for the compute stream's work so far (the previous step still reads dst), copies, and
// records `done`; the compute stream waits for `done` before anything issued later. No host wait anywhere, and a
// replayed graph issued after it reads the new batch.
static int cuda_stage_upload(void *ctx, void *dst, const void *src, size_t bytes, void *done) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(not_capturing(c, "stage_upload"));
    if (!c->copy_stream) {
        cudaCheck(cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking));
        cudaCheck(cudaEventCreateWithFlags(&c->copy_after, cudaEventDisableTiming));
    }
    cudaCheck(cudaEventRecord(c->copy_after, c->stream));
    cudaCheck(cudaStreamWaitEvent(c->copy_stream, c->copy_after, 0));
    if (bytes) cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->copy_stream));
    cudaCheck(cudaEventRecord((cudaEvent_t)done, c->copy_stream));
    cudaCheck(cudaStreamWaitEvent(c->stream, (cudaEvent_t)done, 0));
    return ST_OK;
}

static int cuda_download(void *ctx, void *dst, const void *src, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(not_capturing(c, "download"));
    if (bytes == 0) return ST_OK;
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
    cudaCheck(cudaStreamSynchronize(c->stream));
    return ST_OK;
}

static int cuda_copy(void *ctx, void *dst, const void *src, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (bytes == 0) return ST_OK;
    cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    return ST_OK;
}

static int cuda_zero(void *ctx, void *ptr, size_t bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (bytes == 0) return ST_OK;
    cudaCheck(cudaMemsetAsync(ptr, 0, bytes, c->stream));
    return ST_OK;
}

static int cuda_sync(void *ctx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(not_capturing(c, "sync"));
    cudaCheck(cudaStreamSynchronize(c->stream));
    return ST_OK;
}

static void *cuda_stream(void *ctx) { return (void *)((cuda_ctx *)ctx)->stream; }

static int cuda_nhwc(void *ctx, int *nhwc) {
    *nhwc = ((const cuda_ctx *)ctx)->nhwc;
    return ST_OK;
}

static int cuda_grads16(void *ctx, int *on) {
    *on = ((const cuda_ctx *)ctx)->grads16;
    return ST_OK;
}

static int cuda_act16(void *ctx, int *format) {
    *format = ((const cuda_ctx *)ctx)->act16;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Timing marks: timing-enabled events on the compute stream. Inside a capture the record is an external
// event-record node, so every replay of the graph records the event again and the timings of the replayed
// step can be read like an eager one's.

static int cuda_mark_create(void *ctx, void **mark) {
    (void)ctx;
    *mark = NULL;
    cudaEvent_t e = NULL;
    cudaCheck(cudaEventCreateWithFlags(&e, cudaEventDefault));
    *mark = (void *)e;
    return ST_OK;
}

static void cuda_mark_destroy(void *ctx, void *mark) {
    (void)ctx;
    if (mark) cudaEventDestroy((cudaEvent_t)mark);
}

static int cuda_mark_record(void *ctx, void *mark) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    cudaCheck(cudaEventRecordWithFlags((cudaEvent_t)mark, c->stream,
                                       c->capturing ? cudaEventRecordExternal : cudaEventRecordDefault));
    return ST_OK;
}

static int cuda_mark_query(void *ctx, void *mark, int *done) {
    (void)ctx;
    *done = 0;
    cudaError_t e = cudaEventQuery((cudaEvent_t)mark);
    if (e == cudaErrorNotReady) {
        (void)cudaGetLastError();  // "not ready" is an answer, not a failure
        return ST_OK;
    }
    cudaCheck(e);
    *done = 1;
    return ST_OK;
}

static int cuda_mark_elapsed(void *ctx, void *a, void *b, double *seconds) {
    (void)ctx;
    float ms = 0;
    cudaCheck(cudaEventElapsedTime(&ms, (cudaEvent_t)a, (cudaEvent_t)b));
    *seconds = ms * 1e-3;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// CUDA Graph of one training step
//
// Capture mode ThreadLocal: only this thread is barred from unsafe calls (cudaMalloc, synchronisation) during
// the capture. Global would also fail unrelated CUDA calls made meanwhile by other threads of the process,
// e.g. NCCL's proxy thread. The NCCL launches join the capture through the events the comm backend records
// (fork onto the comm stream, join back before capture_end).
// Capture after one eager step: cuDNN and cuBLAS may load kernels or set up state on first use.

static void graph_drop(cuda_ctx *c) {
    if (c->exec == NULL) return;
    cudaStreamSynchronize(c->stream);  // a launch of the old graph may still be running
    cudaGraphExecDestroy(c->exec);
    c->exec = NULL;
}

static int cuda_capture_begin(void *ctx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (c->capturing) return ERR(ST_RUNTIME, "cuda backend: capture_begin while a capture is already open");
    graph_drop(c);
    cudaCheck(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = 1;
    return ST_OK;
}

static int cuda_capture_end(void *ctx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    if (!c->capturing) return ERR(ST_RUNTIME, "cuda backend: capture_end without capture_begin");
    cudaGraph_t g = NULL;
    // Fails (and returns no graph) when an op during the capture broke the rules of stream capture, or when work
    // forked onto another stream was not joined back. Either way the stream must leave capture mode, or the
    // op-by-op fall-back would fail in exactly the case it exists for: checked, not assumed.
    const cudaError_t e_end = cudaStreamEndCapture(c->stream, &g);
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(c->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) {
        cudaGraph_t g2 = NULL;
        (void)cudaStreamEndCapture(c->stream, &g2);
        if (g2) cudaGraphDestroy(g2);
        if (cudaStreamIsCapturing(c->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) {
            (void)cudaGetLastError();
            if (g) cudaGraphDestroy(g);
            return ERR(ST_RUNTIME, "rank %d (%s): cuda backend: the compute stream is still capturing after "
                                   "cudaStreamEndCapture (%s): no op-by-op fall-back is possible", g_rank, g_host,
                       cudaGetErrorString(e_end));
        }
    }
    c->capturing = 0;
    if (e_end != cudaSuccess || g == NULL) {
        (void)cudaGetLastError();  // the capture error is reported here; the stream is usable again
        if (g) cudaGraphDestroy(g);
        return ERR(ST_RUNTIME, "cuda backend: CUDA graph capture failed (%s): no graph captured",
                   cudaGetErrorString(e_end));
    }
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
    cudaGraphDestroy(g);  // the executable graph is independent of the template
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return ERR(ST_RUNTIME, "rank %d (%s): cuda backend: cudaGraphInstantiate failed: %s", g_rank, g_host,
                   cudaGetErrorString(e));
    }
    c->exec = exec;
    return ST_OK;
}

static int cuda_replay(void *ctx) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    TRY(not_capturing(c, "replay"));
    if (c->exec == NULL) return ERR(ST_RUNTIME, "cuda backend: replay without a captured graph (capture_end first)");
    cudaCheck(cudaGraphLaunch(c->exec, c->stream));
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// The table and the public entry points

static const backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .copy = cuda_copy,
    .zero = cuda_zero,
    .sync = cuda_sync,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .stage_upload = cuda_stage_upload,
    .gather = cuda_gather,
    .conv_prepare = cuda_conv_prepare,
    .conv_release = cuda_conv_release,
    .conv_forward = cuda_conv_forward,
    .conv_backward = cuda_conv_backward,
    .pool_forward = cuda_pool_forward,
    .pool_backward = cuda_pool_backward,
    .dense_forward = cuda_dense_forward,
    .dense_backward = cuda_dense_backward,
    .softmax_xent = cuda_softmax_xent,
    .bn_stats = cuda_bn_stats,
    .bn_apply = cuda_bn_apply,
    .bn_grad_stats = cuda_bn_grad_stats,
    .bn_grad_input = cuda_bn_grad_input,
    .adam_step = cuda_adam_step,
    .sgd_step = cuda_sgd_step,
    .scale = cuda_scale,
    .add = cuda_add,
    .count_nonfinite = cuda_count_nonfinite,
    .clip_grad_norm = cuda_clip_grad_norm,
    .round_to = cuda_round_to,  // precision_cuda.cu
    .set_progress = NULL,  // NCCL progresses on its own; nothing to poll between chunks
    .nhwc = cuda_nhwc,
    .grads16 = cuda_grads16,
    .act16 = cuda_act16,
    .stream = cuda_stream,
    .mark_create = cuda_mark_create,
    .mark_destroy = cuda_mark_destroy,
    .mark_record = cuda_mark_record,
    .mark_query = cuda_mark_query,
    .mark_elapsed = cuda_mark_elapsed,
    .capture_begin = cuda_capture_begin,
    .capture_end = cuda_capture_end,
    .replay = cuda_replay,
    // layer ops of [shortcut], [route], [dropout] and [avgpool] (layer_ops_cuda.cu)
    .add_act = cuda_add_act,
    .act_backward = cuda_act_backward,
    .channel_copy = cuda_channel_copy,
    .dropout = cuda_dropout,
    .avgpool_forward = cuda_avgpool_forward,
    .avgpool_backward = cuda_avgpool_backward,
    .layout_convert = cuda_layout_convert,
    // activations on their own (layer_ops_cuda.cu)
    .act_forward = cuda_act_forward,
    .act_backward_input = cuda_act_backward_input,
    // PowerSGD's dense linear algebra (linalg_cuda.cu)
    .gemm = cuda_gemm,
    .orthogonalize = cuda_orthogonalize,
};

extern "C" const char *backend_cuda_unusable(void) {
    static char why[256];
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();  // no driver or no device: an answer, not an error to carry on
        snprintf(why, sizeof why, "cudaGetDeviceCount failed: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
        return why;
    }
    return count > 0 ? NULL : "no CUDA device (cudaGetDeviceCount found 0)";
}

extern "C" int backend_cuda_available(void) { return backend_cuda_unusable() == NULL; }

extern "C" int backend_cuda_create(backend *be, const backend_options *opt) {
    be->ops = NULL;
    be->ctx = NULL;
    const backend_options none = {};
    if (opt == NULL) opt = &none;
    const int device = opt->device;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        (void)cudaGetLastError();
        return ERR(ST_INPUT, "backend 'cuda': no usable CUDA device on %s (%s); use backend=cpu", g_host,
                   e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    }
    if (device < 0 || device >= count)
        return ERR(ST_INPUT, "backend 'cuda': device %d does not exist (%s has %d CUDA device%s)", device, g_host, count,
                   count == 1 ? "" : "s");
    if (opt->act16 != 0 && opt->act16 != PREC_BF16 && opt->act16 != PREC_FP16)
        return ERR(ST_INPUT, "backend 'cuda': act16 is %d: activations are held in bf16 (%d), fp16 (%d) or float32 (0)",
                   opt->act16, PREC_BF16, PREC_FP16);
    cuda_ctx *c = (cuda_ctx *)calloc(1, sizeof *c);
    TRY_ALLOC(c);
    int st = ctx_init(c, device);
    if (st != ST_OK) {
        ctx_free(c);
        return st;
    }
    c->nhwc = opt->layout == LAYOUT_NHWC;  // before any plan: conv_prepare makes NHWC descriptors
    c->grads16 = opt->grads16 != 0;        // likewise (backward-filter's bf16 dw); set_options checks the precision
    c->act16 = opt->act16;                 // likewise (16-bit x, y descriptors); set_options checks the precision
    be->ops = &cuda_ops;
    be->ctx = c;
    // Before any plan: cuDNN plans fix their math mode and algorithms when conv_prepare makes them.
    const backend_cuda_options cuda_opt = {opt->tf32, opt->deterministic, opt->precision};
    st = backend_cuda_set_options(be, &cuda_opt);
    if (st != ST_OK) {
        ctx_free(c);
        be->ops = NULL;
        be->ctx = NULL;
    }
    return st;
}

extern "C" int backend_cuda_set_options(backend *be, const backend_cuda_options *opt) {
    if (be == NULL || be->ops != &cuda_ops)
        return opt->tf32 ? ERR(ST_INPUT, "tf32=1 needs backend=cuda (backend is '%s')",
                               be && be->ops ? be->ops->name : "none")
                         : ST_OK;  // deterministic: the CPU backend already is (for a fixed thread count)
    cuda_ctx *c = (cuda_ctx *)be->ctx;
    // The bf16 gradients are the outputs of the 16-bit GEMMs and convolutions (an fp32 op would write float32 into
    // the caller's bf16 buffers): checked at creation and at every later change.
    if (c->grads16 && opt->precision != PREC_BF16)
        return ERR(ST_INPUT, "backend 'cuda': grads16 needs net.precision=bf16");
    // 16-bit activations are of the compute type: the 16-bit descriptors, GEMM types and casts follow the precision.
    if (c->act16 && opt->precision != c->act16)
        return ERR(ST_INPUT, "backend 'cuda': activations held in %s (act16) need net.precision=%s",
                   c->act16 == PREC_BF16 ? "bf16" : "fp16", c->act16 == PREC_BF16 ? "bf16" : "fp16");
    // A GEMM with a 16-bit output (act16's dx, grads16's dw) may otherwise reduce its split-K partial sums in the
    // output type, rounding several times: the flag keeps every reduction in fp32, so the output is rounded once.
    const int math = (opt->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH) |
                     CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION;
    cublasCheck(cublasSetMathMode(c->cublas, (cublasMath_t)math));
    c->tf32 = opt->tf32 != 0;
    c->deterministic = opt->deterministic != 0;  // read by conv_prepare (conv_cuda.cu)
    // fp32 and tf32: 0 (tf32 is the field above); bf16/fp16: read by conv_prepare and by dense at once
    c->precision = opt->precision == PREC_BF16 || opt->precision == PREC_FP16 ? opt->precision : 0;
    return ST_OK;
}

extern "C" int backend_cuda_set_tf32(backend *be, int on) {
    backend_cuda_options opt = {on, 0, 0};
    if (be && be->ops == &cuda_ops) {
        opt.deterministic = ((const cuda_ctx *)be->ctx)->deterministic;
        opt.precision = ((const cuda_ctx *)be->ctx)->precision;
    }
    return backend_cuda_set_options(be, &opt);
}

extern "C" int backend_cuda_compute_capability(const backend *be) {
    return be && be->ops == &cuda_ops ? ((const cuda_ctx *)be->ctx)->cc : 0;
}
