// backend.h — the compute backend: a table of function pointers plus an opaque context (ggml-backend style).
//
// The CPU backend (src/backend_cpu.c, im2col + OpenBLAS) is the reference; the CUDA backend (cuda/) implements
// the same table and is tested op by op against it. Model code calls only this table.
//
// Conventions for every op:
//   - Pointers are backend memory (host memory for CPU, device memory for CUDA), from be->ops->alloc.
//   - Activations are NCHW float32. Conv weights are [K, C, R, S] (PyTorch layout), dense weights are
//     [out, in] (PyTorch nn.Linear layout), so checkpoints are PyTorch state dicts as they are.
//   - Ops are asynchronous with respect to the host where the backend can be (CUDA: on its compute stream);
//     ops->sync waits for all of them.
//   - Every op returns ST_OK or an error status with err_set called.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "gather_aug.h"

enum { ACT_NONE = 0, ACT_RELU = 1 };

// Convolution shape for one layer and one batch size n. out = floor((h + 2*pad - r)/stride) + 1.
typedef struct conv_desc {
    int n, c, h, w;     // input
    int k, r, s;        // filters, kernel height, kernel width
    int stride, pad;
    int oh, ow;         // output spatial size (filled by conv_desc_init)
    int act;            // ACT_NONE or ACT_RELU, fused after the bias add
    void *plan;         // backend-private (cuDNN descriptors, chosen algorithms); made by conv_prepare
} conv_desc;

// Max pooling, no padding. out = floor((h - size)/stride) + 1.
typedef struct pool_desc {
    int n, c, h, w;
    int size, stride;
    int oh, ow;
    void *plan;
} pool_desc;

typedef struct adam_hyper {
    float lr;           // already includes any schedule (warmup/scaling) for this step
    float beta1, beta2, eps;
    float weight_decay; // L2: added to the gradient (adam)
    float decoupled_wd; // AdamW: p -= lr * decoupled_wd * p before the update (PyTorch's order)
    int64_t t;          // step number after increment: 1 for the first step
} adam_hyper;

typedef struct sgd_hyper {
    float lr, momentum, weight_decay;
    float nesterov;     // 1: Nesterov momentum (the step is g' + momentum * vel instead of vel), 0: heavy ball
} sgd_hyper;

typedef struct backend_ops {
    const char *name;  // "cpu" or "cuda"
    void (*destroy)(void *ctx);

    // ---- memory
    int (*alloc)(void *ctx, void **ptr, size_t bytes);  // zero-initialised
    void (*free)(void *ctx, void *ptr);
    int (*upload)(void *ctx, void *dst, const void *src, size_t bytes);    // host -> backend
    int (*download)(void *ctx, void *dst, const void *src, size_t bytes);  // backend -> host (synchronous)
    int (*copy)(void *ctx, void *dst, const void *src, size_t bytes);      // backend -> backend
    int (*zero)(void *ctx, void *ptr, size_t bytes);
    int (*sync)(void *ctx);

    // ---- data: x[i] = images[index[i]] / 255 as float (sample_elems values each), y[i] = labels[index[i]].
    // images, labels and index are backend memory (the data set is uploaded once; u8 on the GPU).
    // aug (nullable) is BACKEND memory: crop, flip and normalisation fused in (src/gather_aug.h), drawn per
    // (seed, epoch, index[i]); its epoch is read when the op runs, so a captured graph sees each upload of it.
    int (*gather)(void *ctx, const uint8_t *images, const uint8_t *labels, const int32_t *index, int n,
                  int sample_elems, const gather_aug *aug, float *x, int32_t *y);

    // ---- convolution with fused bias + activation. conv_prepare fills d->plan (may be NULL for CPU) and
    // reports the workspace this layer needs; the model allocates one workspace sized to the largest need.
    int (*conv_prepare)(void *ctx, conv_desc *d, size_t *workspace_bytes);
    void (*conv_release)(void *ctx, conv_desc *d);
    int (*conv_forward)(void *ctx, const conv_desc *d, const float *x, const float *w, const float *b, float *y,
                        void *ws);
    // dy is the gradient w.r.t. the activation output y; it is overwritten with the pre-activation gradient.
    // dx may be NULL (first layer). dw, db are overwritten (not accumulated).
    int (*conv_backward)(void *ctx, const conv_desc *d, const float *x, const float *w, const float *y,
                         float *dy, float *dx, float *dw, float *db, void *ws);

    // ---- max pooling. argmax (one int32 per output) is written by forward and read by backward.
    int (*pool_forward)(void *ctx, const pool_desc *d, const float *x, float *y, int32_t *argmax);
    int (*pool_backward)(void *ctx, const pool_desc *d, const float *dy, const int32_t *argmax, float *dx);

    // ---- dense: y[n,out] = act(x[n,in] · w[out,in]^T + b). Backward as for conv (dy overwritten, dx nullable).
    int (*dense_forward)(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                         const float *b, float *y);
    int (*dense_backward)(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                          const float *y, float *dy, float *dx, float *dw, float *db);

    // ---- softmax + sparse categorical cross-entropy, mean over the n samples, with label smoothing s in [0, 1)
    // (the target is (1 - s) onehot + s / classes; 0: plain). dlogits (nullable) = (softmax - target) / n.
    // Adds the batch's summed loss to *loss_acc and the number of correct argmax predictions to *correct_acc
    // (both backend memory, accumulated across calls).
    int (*softmax_xent)(void *ctx, int n, int classes, const float *logits, const int32_t *labels, float smoothing,
                        float *dlogits, double *loss_acc, int32_t *correct_acc);

    // ---- optimizers over flat buffers (the whole parameter buffer in one call). h is BACKEND memory, written
    // by the caller with upload before each step, so that a captured CUDA graph reads the current lr and t.
    int (*adam_step)(void *ctx, size_t n, float *p, const float *g, float *m, float *v, const adam_hyper *h);
    int (*sgd_step)(void *ctx, size_t n, float *p, const float *g, float *vel, const sgd_hyper *h);

    // ---- utilities
    int (*scale)(void *ctx, size_t n, float alpha, float *x);
    // y[0..n) += x[0..n) (gradient accumulation over micro-batches)
    int (*add)(void *ctx, size_t n, const float *x, float *y);
    // *out = number of non-finite values in x[0..n) (backend memory, overwritten)
    int (*count_nonfinite)(void *ctx, size_t n, const float *x, int32_t *out);
    // Gradient clipping by global L2 norm (PyTorch's clip_grad_norm_): *sumsq (backend memory, overwritten) =
    // sum of g^2 before clipping, then g *= min(1, max_norm / (sqrt(sumsq) + 1e-6)). Stream work (capturable).
    int (*clip_grad_norm)(void *ctx, size_t n, float *g, float max_norm, double *sumsq);

    // Optional (may be NULL): a hook that long ops call between chunks of work, so that asynchronous host
    // communication progresses during backward (MPI needs MPI_Test calls to move a non-blocking reduce).
    void (*set_progress)(void *ctx, void (*fn)(void *arg), void *arg);

    // Optional (NULL on CPU): the CUDA compute stream (cudaStream_t) every op runs on, for the NCCL comm
    // backend to order its stream against with events.
    void *(*stream)(void *ctx);
    // ---- timing marks (required). A mark stands for "the point the op stream has reached": CPU ops are
    // synchronous, so a CPU mark is the host clock at mark_record; a CUDA mark is a cudaEvent_t recorded on
    // the compute stream (inside a capture an event-record node, recorded again by every replay), so timings
    // are device time and cost no synchronisation. Marks of the CUDA backend and of the NCCL comm backend
    // (comm_req_marks) are the same kind of object and can be measured against each other.
    int (*mark_create)(void *ctx, void **mark);
    void (*mark_destroy)(void *ctx, void *mark);
    int (*mark_record)(void *ctx, void *mark);
    // *done = 1 once the work issued before the mark's last record has finished (never blocks).
    int (*mark_query)(void *ctx, void *mark, int *done);
    // *seconds = time from mark a to mark b; both recorded and finished (mark_query reported done).
    int (*mark_elapsed)(void *ctx, void *a, void *b, double *seconds);

    // Optional (NULL on CPU): CUDA Graph of one training step. capture_begin/capture_end bracket the ops of
    // one step issued on the compute stream (including NCCL launches on forked streams, joined back before
    // capture_end); replay launches the instantiated graph. One graph per backend; capture_begin replaces it.
    int (*capture_begin)(void *ctx);
    int (*capture_end)(void *ctx);
    int (*replay)(void *ctx);
} backend_ops;

typedef struct backend {
    const backend_ops *ops;
    void *ctx;
} backend;

// Fill oh/ow; returns ST_INPUT with a message when the shape is impossible (names the layer).
int conv_desc_init(conv_desc *d, const char *layer_name);
int pool_desc_init(pool_desc *d, const char *layer_name);

// Create a backend by name ("cpu", "cuda"). threads: CPU threads (0 = all cores). device: CUDA device.
int backend_create(backend *be, const char *name, int threads, int device);
void backend_destroy(backend *be);

int backend_cpu_create(backend *be, int threads);
int backend_cuda_create(backend *be, int device);  // ST_RUNTIME "built without CUDA" when not compiled in
int backend_cuda_available(void);                   // 1 when compiled in and a device is present
