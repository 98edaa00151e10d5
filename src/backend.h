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

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_LEAKY = 2 };  // leaky: slope 0.1 below zero (Darknet's)
#define ACT_LEAKY_SLOPE 0.1f

// Convolution shape for one layer and one batch size n. out = floor((h + 2*pad - r)/stride) + 1.
typedef struct conv_desc {
    int n, c, h, w;     // input
    int k, r, s;        // filters, kernel height, kernel width
    int stride, pad;
    int oh, ow;         // output spatial size (filled by conv_desc_init)
    int act;            // ACT_NONE, ACT_RELU or ACT_LEAKY, fused after the bias add (if any)
    void *plan;         // backend-private (cuDNN descriptors, chosen algorithms); made by conv_prepare
} conv_desc;

// Max pooling, no padding. out = floor((h - size)/stride) + 1.
typedef struct pool_desc {
    int n, c, h, w;
    int size, stride;
    int oh, ow;
    void *plan;
} pool_desc;

// Batch normalisation of x viewed as [n, c, hw] (hw = 1 after a [dense]): statistics per channel c over n·hw
// values (over all ranks' batches with sync BN, whose caller averages the stats buffers across ranks between ops).
typedef struct bn_desc {
    int n, c, hw;       // this rank's batch
    int act;            // ACT_NONE / ACT_RELU / ACT_LEAKY after the affine
    float eps;          // y = act(w (x - mean) / sqrt(var + eps) + b)
    float momentum;     // running = (1 - momentum) running + momentum batch (PyTorch's convention)
    int64_t count;      // values per channel the batch statistics cover (n·hw, times the ranks with sync BN):
                        // running_var gets the unbiased var·count/(count - 1); must be >= 2 when training
} bn_desc;

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

// [dropout]'s mask key (issue 14 part 3), in BACKEND memory: written by the model before each training step
// (model_set_rng), so that a captured CUDA graph draws the current step's masks. src/dropout_hash.h hashes it.
typedef struct dropout_key {
    uint64_t seed;
    int64_t step;
    int32_t rank;
    int32_t unused;
} dropout_key;

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
    // b = NULL (and db = NULL in backward): no bias. Activations are differentiated from the output y (relu and
    // leaky are monotone: y > 0 exactly where the pre-activation is).
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

    // ---- dense: y[n,out] = act(x[n,in] · w[out,in]^T + b). Backward as for conv (dy overwritten, dx nullable,
    // b and db NULL together: no bias).
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

    // ---- batch normalisation (bn_desc). Split into statistics and apply so that sync BN can average the
    // statistics across ranks in between; every per-channel sum is accumulated in double.
    // bn_stats: stats[3c] = {mean, biased var, mean²} of this rank's batch per channel. The var is two-pass
    // (sum of (x - mean)² after the mean), never E[x²] - E[x]²; mean² lets bn_apply recover the variance of
    // the union of equal-sized batches from rank averages: var = avg(var_r) + (avg(mean_r²) - avg(mean_r)²),
    // where only the between-rank term cancels (exactly 0 at one rank).
    int (*bn_stats)(void *ctx, const bn_desc *d, const float *x, float *stats);
    // bn_apply: training (stats != NULL, possibly rank-averaged): mean and var from stats, save[2c] = {mean,
    // invstd}, running[2c + 1] = {running_mean, running_var, num_batches_tracked} updated (momentum, unbiased
    // var by d->count, num_batches_tracked += 1). Evaluation (stats == NULL): mean and var from running
    // (unchanged); save written the same way. y = act(w (x - mean) invstd + b).
    int (*bn_apply)(void *ctx, const bn_desc *d, const float *x, const float *stats, const float *w, const float *b,
                    float *running, float *save, float *y);
    // bn_grad_stats: dy is overwritten with dz = dy · act'(y) (the sign of y is the sign of the pre-activation);
    // dw = sum dz·x̂ and db = sum dz over this rank's batch (overwritten: the parameter gradients), x̂ = (x -
    // save.mean) save.invstd; gstats[2c] = {db, dw} / (n·hw), the per-value means sync BN averages across ranks.
    int (*bn_grad_stats)(void *ctx, const bn_desc *d, const float *x, const float *y, const float *save, float *dy,
                         float *dw, float *db, float *gstats);
    // bn_grad_input: dx = w invstd (dz - gstats.mean_dz - x̂ gstats.mean_dz_xhat) (overwritten).
    int (*bn_grad_input)(void *ctx, const bn_desc *d, const float *x, const float *save, const float *w,
                         const float *gstats, const float *dz, float *dx);

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

    // ---- layer ops of issue 14 part 3 ([shortcut], [route], [dropout], [avgpool]); stream work, capturable.
    // y[0..n) = act(a + b) ([shortcut]'s residual add; y may be a or b)
    int (*add_act)(void *ctx, size_t n, int act, const float *a, const float *b, float *y);
    // dx[0..n) = dy * act'(y), the derivative read from the output y as in conv/dense backward (dx may be dy)
    int (*act_backward)(void *ctx, size_t n, int act, const float *y, const float *dy, float *dx);
    // For each of n samples, the c channels of hw values at channel src_off of src (src_c channels per sample) to
    // channel dst_off of dst (dst_c channels per sample): [route]'s concatenation, and its backward.
    int (*channel_copy)(void *ctx, int n, int c, int hw, const float *src, int src_c, int src_off, float *dst,
                        int dst_c, int dst_off);
    // Inverted dropout: y[i] = x[i] / (1 - rate) where element i is kept, else 0, i in [0, n); kept by the hash
    // of (*key, stream, i) (dropout_keep, src/dropout_hash.h: the same draw on every backend). key is backend
    // memory. The backward is the same call on dy -> dx with the same key and stream. rate in [0, 1).
    int (*dropout)(void *ctx, size_t n, float rate, const dropout_key *key, uint32_t stream, const float *x,
                   float *y);
    // Average pooling over kh x kw windows at `stride`, no padding (out = (h - kh)/stride + 1; global pooling is
    // kh = h, kw = w): y = the window's sum (row-major order) times 1/(kh·kw). Backward overwrites dx with, per
    // input, the sum of dy over the windows containing it (ascending output order) times 1/(kh·kw).
    int (*avgpool_forward)(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *x,
                           float *y);
    int (*avgpool_backward)(void *ctx, int n, int c, int h, int w, int kh, int kw, int stride, const float *dy,
                            float *dx);
} backend_ops;

typedef struct backend {
    const backend_ops *ops;
    void *ctx;
} backend;

// Fill oh/ow; returns ST_INPUT with a message when the shape is impossible (names the layer).
int conv_desc_init(conv_desc *d, const char *layer_name);
int pool_desc_init(pool_desc *d, const char *layer_name);

// The number of required slots of ops left NULL (every slot but the ones documented optional: set_progress,
// stream, capture_begin, capture_end, replay); *first (nullable) = the byte offset of the first such slot.
int backend_ops_missing(const backend_ops *ops, size_t *first);

// Create a backend by name ("cpu", "cuda"). threads: CPU threads (0 = all cores). device: CUDA device.
int backend_create(backend *be, const char *name, int threads, int device);
void backend_destroy(backend *be);

int backend_cpu_create(backend *be, int threads);  // backend_cpu_create_opts with CPU_CONV_AUTO

// The CPU backend's convolutions: oneDNN (built with TRAINER_DNNL, src/backend_cpu_dnnl.h) or im2col + OpenBLAS
// (always built: the reference the oneDNN path is tested against).
typedef enum cpu_conv_impl {
    CPU_CONV_AUTO = 0,  // oneDNN when built with it, else im2col
    CPU_CONV_IM2COL,
    CPU_CONV_DNNL,      // ST_RUNTIME when built without oneDNN
} cpu_conv_impl;
typedef struct backend_cpu_opts {
    int threads;        // 0: all cores
    cpu_conv_impl conv;
} backend_cpu_opts;
int backend_cpu_create_opts(backend *be, const backend_cpu_opts *o);
int backend_cpu_dnnl_available(void);  // 1 when built with oneDNN
int backend_cuda_create(backend *be, int device);  // ST_RUNTIME "built without CUDA" when not compiled in
int backend_cuda_available(void);                   // 1 when compiled in and a device is present
