// model.h — the layer list of a CNN built from a config, its parameter/gradient buffers and forward/backward.
//
// All parameters live in one contiguous backend buffer and all gradients in another with the same layout:
// layers in REVERSE order (the last layer's weight, then its bias, first), so the gradients that backward
// produces first form a prefix of the buffer and an all-reduce bucket is one contiguous slice.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "config.h"

struct layer_kind;

#define MODEL_MAX_PLANS 4  // conv plans per layer (batch sizes), src/layers/conv.c

#define MODEL_MAX_IN (CFG_MAX_REFS + 1)

typedef struct model_layer {
    int type;                  // enum layer_type
    const struct layer_kind *kind;  // its entry in the registry (layer.h)
    char name[CFG_NAME_MAX];
    int act;
    // input (first input) and output shape per sample (c, h, w); dense: (units, 1, 1), its input (c·h·w, 1, 1)
    int in_c, in_h, in_w, out_c, out_h, out_w;
    int out_spatial;           // 0 once a [dense] has run
    // inputs: producer layer indices (-1: the network input), their outputs, and the gradient buffers backward
    // overwrites for them (set by model_backward: NULL for the network input)
    int n_in;
    int in_idx[MODEL_MAX_IN];
    const void *x[MODEL_MAX_IN];  // activations: float32, or 16-bit where m->act16 says (backend_ops.def)
    void *dx[MODEL_MAX_IN];
    int dx_accumulate[MODEL_MAX_IN];  // 1: another later layer also reads that input: dx is scratch, added after
    // parameters: offsets (in floats) into the flat buffers; n_w = 0 for layers without parameters, n_b = 0
    // without a bias. The layer's slice of the buffer is [w_off, b_off + n_b) (weight first, then bias).
    size_t w_off, n_w, b_off, n_b;
    int w_ndim;
    int64_t w_shape[4];        // PyTorch layout: conv [k, c, r, s], dense [out, in]
    // non-trained state (running statistics): offset and count in the model's state buffer
    size_t s_off, n_s;
    // batch statistics in training: the values per channel each sample gives (0: the layer keeps none), so a batch
    // that gives a channel a single value is refused at set-up (train.c), not at the first step
    int stat_values;
    int stat_sync;             // the statistics are averaged over the ranks (sync=1)
    // activations (backend memory, sized for max_batch): output y and its gradient dy
    void *y, *dy;
    int own_y, own_dy;         // 0: aliases another buffer (LAYER_ALIAS kinds)
    // the pre-activation (backend memory, max_batch) where act' needs it (!act_from_output: silu, hardswish,
    // gelu): the kind's op writes it linear, layer_act_forward makes y; NULL otherwise
    void *pre;
    void *priv;                // kind-private (layer_priv_new; model_destroy frees it after the kind's destroy)
} model_layer;

// Called by model_backward after each layer's gradients are complete: grads[0 .. ready) are final.
typedef int (*grad_ready_fn)(void *arg, size_t ready_floats);  // non-OK: backward stops with it
// Optional per-layer hook (--trace): called just before (begin = 1) and just after (begin = 0) the ops of
// layer i are issued, in forward (backward = 0) and backward (backward = 1). A non-OK return stops the pass.
typedef int (*layer_hook_fn)(void *arg, int backward, int layer, int begin);

typedef struct model {
    backend *be;
    int n_layers;
    model_layer layers[CFG_MAX_LAYERS];
    int in_c, in_h, in_w, classes;
    int max_batch;
    size_t n_params;
    float *params, *grads;     // backend memory, n_params each
    // On a backend whose parameter gradients are bf16 (backend_is_grads16: net.precision=bf16 with compress=bf16),
    // backward writes them here (n_params bf16 values, the same layout) and the all-reduce casts their average into
    // grads; NULL otherwise (backward writes grads). model_grad says where layer gradients go.
    uint16_t *grads16;
    size_t n_state;
    float *state;              // backend memory: non-trained state (running statistics), n_state floats
    void *dscratch[MODEL_MAX_IN];  // gradients for inputs read by more than one layer (then added)
    int training;              // the mode of the last forward: 1 training, 0 evaluation
    void *workspace;           // one, sized to the largest layer's need
    size_t workspace_bytes;
    size_t act_bytes;          // activation and gradient buffers (input, outputs, gradients, scratch) at max_batch
    // The type activations and their gradients are held in (the backend's: backend_act_format): 0 float32, or
    // PREC_BF16/PREC_FP16 (net.act_storage=compute: 16-bit buffers, each op storing its outputs rounded);
    // act_elem: bytes per value (4 or 2).
    int act16;
    size_t act_elem;
    void *x;                   // input batch [max_batch, c, h, w]
    int32_t *labels;           // [max_batch]
    float label_smoothing;     // net.label_smoothing: training steps only
    double *loss_acc;          // device scalars accumulated by softmax_xent
    int32_t *correct_acc;
    int cur_batch;             // batch size the conv descriptors are prepared for
    int train_batch;           // batch of the last forward with backward: its conv plans are never evicted
    // Sync BN: average n floats of backend memory over the ranks, in stream order (the result visible to the
    // next op issued). NULL (default): one rank, every [batchnorm] sync=1 normalises over its own batch. world
    // is the number of ranks it averages over (the unbiased running variance counts their values).
    int (*allreduce_avg)(void *arg, float *buf, size_t n);
    void *allreduce_arg;
    int world;
    layer_hook_fn layer_hook;  // NULL (default): none
    void *layer_hook_arg;
    // Random masks ([dropout]): the key in backend memory (allocated by the first kind that draws, NULL if none)
    // and its host values; `micro` is the micro-batch index of the last training forward since model_set_rng.
    dropout_key *rng_key;
    dropout_key rng_host;
    int micro, micro_next;
    // net.precision emulated on the CPU backend (docs/precision.md). round_to: PREC_BF16 or PREC_FP16, the format of
    // the values the rule holds in the compute type (0: every value fp32); params_lp: the weights forward and
    // backward read, a copy of the fp32 master weights (m->params) made at each forward with the conv and dense
    // weights rounded; loss_scale: the loss gradient is multiplied by it (fp16's dynamic loss scaling, set by the
    // trainer before each step; 1: none).
    int round_to;
    float *params_lp;
    float loss_scale;
} model;

// Build from a validated config; allocates everything for batches up to max_batch.
int model_create(model *m, backend *be, const net_config *cfg, int max_batch);
void model_destroy(model *m);

// Glorot-uniform weights, zero biases, from the seed (host RNG, then uploaded: identical on every backend).
int model_init_params(model *m, uint64_t seed);

// Forward on m->x / m->labels for n samples (n <= max_batch). Accumulates loss and correct counts into
// m->loss_acc / m->correct_acc. training != 0: training mode (batch statistics, dropout, label smoothing) and
// the loss gradient for model_backward; 0: evaluation.
int model_forward(model *m, int n, int training);
// Before each training step, outside any CUDA graph capture: the masks of the training forwards that follow are
// those of step `step` on rank `rank` (with the config's seed), micro-batch 0, 1, ... in order. Uploads the key
// only when the model draws masks. Without a call the key is (seed, 0, 0).
int model_set_rng(model *m, int rank, int64_t step);
// Backward after model_forward(m, n, 1). Calls on_ready(arg, k) each time grads[0..k) are final (may be NULL).
int model_backward(model *m, int n, grad_ready_fn on_ready, void *arg);

// Where backward writes the parameter gradient at offset `off` (in values) of the flat layout: grads16 + off on a
// grads16 backend, grads + off otherwise (the backend ops' dw and db).
static inline void *model_grad(const model *m, size_t off) {
    return m->grads16 ? (void *)(m->grads16 + off) : (void *)(m->grads + off);
}

// A non-trained state tensor (running statistics): "<layer>.<suffix>", n floats at offset in m->state.
typedef struct model_state_info {
    const char *layer, *suffix;
    size_t offset;      // floats into m->state
    int ndim;           // 0: a scalar (PyTorch's num_batches_tracked)
    int64_t shape[4];
    int is_count;       // an integer count held as a float (exact below 2^24): I64 in checkpoints
} model_state_info;

// The i-th state tensor in forward layer order (the kinds' state_tensor). Returns the number of state tensors
// when i < 0 or past the end.
int model_state_tensor(const model *m, int i, model_state_info *info);

// Floating-point operations of one training sample: forward + backward, counted as 3x the forward's (backward
// computes the gradients of both the inputs and the weights) over the kinds that report arithmetic (conv, dense).
double model_train_flops_per_sample(const model *m);

// Names/shapes for checkpoints: the i-th parameter tensor (weights and biases in FORWARD layer order, names
// "<layer>.weight", "<layer>.bias"; a layer without a bias has no bias tensor). Returns the number of tensors
// when i < 0.
int model_param_tensor(const model *m, int i, const char **layer_name, int *is_bias, size_t *offset,
                       int *ndim, int64_t shape[4]);
