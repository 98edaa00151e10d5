// backend.h — the compute backend: a table of function pointers plus an opaque context (ggml-backend style).
//
// The CPU backend (src/backend_cpu.c, im2col + OpenBLAS) is the reference; the CUDA backend (cuda/) implements
// the same table and is tested op by op against it. The ops, their parameters and their documentation are in
// src/backend_ops.def (one line per op); model and trainer code call them only through the backend_<op>()
// wrappers declared here, which also handle the optional slots.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "gather_aug.h"

// Activations (PyTorch's formulas; docs/config.md). leaky: slope 0.1 below zero (Darknet's); relu6: min(max(v, 0), 6);
// silu: v·sigmoid(v); hardswish: v·relu6(v + 3)/6; gelu: the exact erf form, 0.5·v·(1 + erf(v/√2)). Up to
// ACT_SIGMOID the derivative can be read from the output (relu, leaky, relu6 and sigmoid are monotone): the ops
// with an `act` argument or field fuse those. silu, hardswish and gelu need the pre-activation: a layer runs its
// op linear, keeps the op's output and applies act_forward / act_backward_input to it (backend_ops.def).
enum { ACT_NONE = 0, ACT_RELU, ACT_LEAKY, ACT_RELU6, ACT_SIGMOID, ACT_SILU, ACT_HARDSWISH, ACT_GELU, ACT_COUNT };
#define ACT_LEAKY_SLOPE 0.1f
// 1: act' is a function of act's output (the activations the conv, dense, bn and add_act ops fuse)
static inline int act_from_output(int act) { return act >= ACT_NONE && act <= ACT_SIGMOID; }
static inline int act_known(int act) { return act >= ACT_NONE && act < ACT_COUNT; }

// Convolution shape for one layer and one batch size n (PyTorch's Conv2d): out = floor((h + 2*pad -
// dilation*(r - 1) - 1)/stride) + 1. groups: the c input channels and k filters split into that many groups, each
// filter seeing only its group's c/groups channels (depthwise: groups = c); weights [k, c/groups, r, s].
typedef struct conv_desc {
    int n, c, h, w;     // input
    int k, r, s;        // filters, kernel height, kernel width
    int stride, pad;
    int groups;         // 0 (read as 1, which conv_desc_init writes) or a divisor of both c and k
    int dilation;       // 0 (read as 1) or the spacing of the kernel's taps
    int oh, ow;         // output spatial size (filled by conv_desc_init)
    int act;            // fused after the bias add (if any): an activation with act_from_output
    void *plan;         // backend-private (cuDNN descriptors, chosen algorithms); made by conv_prepare
} conv_desc;

// Max pooling. pad: implicit -inf on each side (PyTorch's MaxPool2d padding), at most size/2, so every window
// holds an input value. out = floor((h + 2*pad - size)/stride) + 1.
typedef struct pool_desc {
    int n, c, h, w;
    int size, stride, pad;
    int oh, ow;
    void *plan;
} pool_desc;

// Batch normalisation of x viewed as [n, c, hw] (hw = 1 after a [dense]): statistics per channel c over n·hw
// values (over all ranks' batches with sync BN, whose caller averages the stats buffers across ranks between ops).
typedef struct bn_desc {
    int n, c, hw;       // this rank's batch
    int act;            // after the affine: an activation with act_from_output
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

// [dropout]'s mask key, in BACKEND memory: written by the model before each training step
// (model_set_rng), so that a captured CUDA graph draws the current step's masks. src/dropout_hash.h hashes it.
typedef struct dropout_key {
    uint64_t seed;
    int64_t step;
    int32_t rank;
    int32_t unused;
} dropout_key;

// Return types of backend_ops.def (one token each) and how a wrapper passes a result on.
#define BE_RET_int int
#define BE_RET_void void
#define BE_RET_ptr void *
#define BE_RETURN_int return
#define BE_RETURN_void
#define BE_RETURN_ptr return

// The table a backend fills: one slot per line of backend_ops.def, in its order, each taking the backend's
// context first. Callers never reach into it: they call the backend_<op>() wrappers below.
typedef struct backend_ops {
    const char *name;  // "cpu" or "cuda": backend_name
#define BE_SELF void *ctx
#define BACKEND_OP(ret, name, slot, capture, params, args) BE_RET_##ret (*name) params;
#include "backend_ops.def"
#undef BACKEND_OP
#undef BE_SELF
} backend_ops;

typedef struct backend {
    const backend_ops *ops;
    void *ctx;
} backend;

// ---------------------------------------------------------------------------------------------------------
// The ops: backend_<op>(const backend *be, <the op's parameters>) for every op of backend_ops.def but destroy
// (backend_destroy), e.g. backend_conv_forward(be, d, x, w, b, y, ws). An absent optional slot: backend_stream
// returns NULL, backend_set_progress does nothing, backend_capture_begin/_end/backend_replay return ST_RUNTIME.
#define BE_SELF const backend *be
#define BE_WRAP_DECL_REQUIRED(ret, name, params) BE_RET_##ret backend_##name params;
#define BE_WRAP_DECL_OPTIONAL(ret, name, params) BE_RET_##ret backend_##name params;
#define BE_WRAP_DECL_INTERNAL(ret, name, params)
#define BACKEND_OP(ret, name, slot, capture, params, args) BE_WRAP_DECL_##slot(ret, name, params)
#include "backend_ops.def"
#undef BACKEND_OP
#undef BE_WRAP_DECL_REQUIRED
#undef BE_WRAP_DECL_OPTIONAL
#undef BE_WRAP_DECL_INTERNAL
#undef BE_SELF

// Queries on a created backend.
const char *backend_name(const backend *be);   // "cpu" or "cuda" (a wrapped backend: the one that computes)
int backend_can_capture(const backend *be);    // 1: capture_begin, capture_end and replay are there (CUDA graphs)
int backend_is_async(const backend *be);       // 1: ops run on a device stream (backend_stream), not on the host
int backend_is_nhwc(const backend *be);        // 1: activations are N,H,W,C (the `nhwc` slot; absent: NCHW)
int backend_is_grads16(const backend *be);     // 1: parameter gradients are written bf16 (the `grads16` slot)
int backend_act_format(const backend *be);     // PREC_BF16/PREC_FP16: activations are held in 16 bits; 0: float32
size_t backend_act_bytes(const backend *be);   // bytes per activation value: 2 or 4 (backend_act_format)

// The number of REQUIRED slots of ops left NULL (backend_ops.def's slot column); *first (nullable) = the name
// of the first such slot.
int backend_ops_missing(const backend_ops *ops, const char **first);

// Fill oh/ow; returns ST_INPUT with a message when the shape is impossible (names the layer).
int conv_desc_init(conv_desc *d, const char *layer_name);
int pool_desc_init(pool_desc *d, const char *layer_name);
// ST_INPUT with a message naming op unless n, c, hw are positive, act is known and eps > 0 (every backend's bn_*
// ops check this; a backend adds its own limits after it).
int bn_desc_check(const bn_desc *d, const char *op);

// ---------------------------------------------------------------------------------------------------------
// Creation

// What backend_create passes to the backend it makes; each backend reads the fields it has a use for.
typedef struct backend_options {
    int threads;        // cpu: threads (0 = all cores)
    int device;         // cuda: device index
    int tf32;           // cuda: TF32 tensor-core math for cuBLAS and cuDNN (ST_INPUT on a backend without it)
    int deterministic;  // cuda: deterministic algorithms only (the CPU backend is, for a fixed thread count)
    int precision;      // cuda: net.precision (PREC_* of config.h): bf16/fp16 run conv and dense on 16-bit copies
                        // (backend_cuda.h); the CPU ignores it (the model's round_to emulates the formats)
    int layout;         // cuda: net.layout (LAYOUT_* of config.h), fixed at creation: LAYOUT_NHWC lays every
                        // activation out N,H,W,C (cuDNN NHWC descriptors); the CPU ignores it (it computes NCHW)
    int grads16;        // cpu, cuda: conv_backward, dense_backward and bn_grad_stats write dw and db in bf16 (the
                        // trainer: net.precision=bf16 with compress=bf16 and all-reduces; cuda needs precision bf16)
    int act16;          // cpu, cuda: activations held in 16 bits of this format (PREC_BF16 or PREC_FP16; 0: float32;
                        // the trainer: net.act_storage, docs/precision.md); cuda needs precision set to the same
} backend_options;

// Create a backend by name ("cpu", "cuda"); opt NULL: all zero (all cores, device 0, FP32, fastest algorithms).
int backend_create(backend *be, const char *name, const backend_options *opt);
void backend_destroy(backend *be);
// 1 when the named backend computes on the host's cores (the trainer gives each rank of a node its share of
// them as threads), 0 when it computes elsewhere (a GPU) or is unknown.
int backend_uses_host_cores(const char *name);

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
    int grads16;        // backend_options.grads16
    int act16;          // backend_options.act16 (the conversions cost the CPU a pass per operand: src/backend_cpu_store.c)
} backend_cpu_opts;
int backend_cpu_create_opts(backend *be, const backend_cpu_opts *o);
int backend_cpu_dnnl_available(void);  // 1 when built with oneDNN
// ST_RUNTIME "built without CUDA" when not compiled in. Reads device, tf32, deterministic, precision, layout,
// grads16 and act16 (opt NULL: all 0).
int backend_cuda_create(backend *be, const backend_options *opt);
int backend_cuda_available(void);                   // 1 when compiled in and a device is present
