// layer.h — the layer registry: one `layer_kind` per kind of layer (src/layers/<kind>.c), listed once in
// src/layers/kinds.def. A kind declares its config section and keys (defaults and ranges), its shape rule
// (used by config_validate and by the model: one rule, one place), and how the model builds it, runs it forward
// and backward through the backend table, and which parameter and state tensors it owns.
//
// Graph: layer i reads the previous layer's output (the network input for the first layer), and kinds with
// references (`from=`, `layers=`) read earlier outputs too. An output read by several layers receives the sum of
// their gradients: the model hands each reader a gradient buffer to OVERWRITE (the producer's dy for the last
// reader, a scratch buffer added into it for the others), so no kind needs to know who else reads its input.
#pragma once
#include <stddef.h>
#include <stdio.h>

#include "common.h"
#include "config.h"
#include "model.h"

// Shape of a layer's output per sample. spatial = 0 once a [dense] has run (c = units, h = w = 1).
typedef struct layer_shape {
    int c, h, w;
    int spatial;
} layer_shape;

enum layer_key_type {
    LK_INT = 1,  // int field; values outside [lo, hi] rejected
    LK_DOUBLE,   // double field
    LK_ACT,      // int field: an activation name (layer_act_names: ACT_*)
    LK_REFS,     // layer_cfg.refs/n_refs: comma-separated layer indices, negative = relative (Darknet's -k)
};

typedef struct layer_key {
    const char *name;
    int type;
    size_t off;        // offset of the field in layer_cfg (LK_REFS: unused)
    double def;        // default
    double lo, hi;     // accepted range (LK_INT, LK_DOUBLE; LK_REFS: how many entries); a default below lo = unset
    int required;      // 1: no default, config_validate says "missing required key"
    const char *doc;   // what a value means where the default and range do not say it (NULL: nothing)
} layer_key;

enum layer_inputs_rule {
    LAYER_IN_PREV = 0,   // the previous layer's output
    LAYER_IN_PREV_REFS,  // the previous layer's output, then the referenced ones ([shortcut])
    LAYER_IN_REFS,       // only the referenced ones ([route])
};

enum layer_flags {
    LAYER_ALIAS = 1u,     // the output is the input itself (no copy): [flatten]
    LAYER_TERMINAL = 2u,  // the loss: must be last; writes the gradient of its input during a training forward
    LAYER_ALIAS_ONE = 4u, // LAYER_ALIAS when it reads one input: [route] of a single layer
};

typedef struct layer_kind {
    const char *section;   // [conv]
    const char *prefix;    // default names: <prefix>1, <prefix>2, ... (NULL: the section name)
    const layer_key *keys; // besides `name`, which every kind has
    int n_keys;
    int inputs;            // enum layer_inputs_rule
    unsigned flags;        // enum layer_flags
    const char *doc;       // what the kind is, for --list-layers (and so docs/config.md)
    // Sections that put this kind in a small network (tests/test_layers.c: after a linear [conv] on 2x6x6,
    // before [dense] units=3 and [softmax]): finite differences and a config round trip for every kind.
    const char *example;

    // Output shape from the input shapes, and the number of parameters it adds. Errors name the layer through
    // layer_err. Called by config_validate and by model_create.
    int (*shape)(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                 long long *n_params);
    // Fill the layer's tensors (n_w, w_ndim, w_shape, n_b, state) and descriptors from its config; report the
    // workspace it needs at max_batch. Activation buffers are the model's.
    int (*create)(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace);
    void (*destroy)(model *m, model_layer *l);          // optional
    // Initial parameters and state into host copies of the whole buffers (at l->w_off, l->b_off, l->s_off).
    // Optional: the default is Glorot-uniform weights (fans from w_shape) and zero biases and state.
    void (*init)(const model_layer *l, rng *r, float *params, float *state);
    // Optional: the layer's state tensors (in its slice l->s_off .. + l->n_s of the model's state buffer): fills
    // the k-th one's suffix, offset (absolute, in floats), shape, is_count (info->layer is the model's); returns
    // how many the layer has (for any k, so k < 0 counts them).
    int (*state_tensor)(const model_layer *l, int k, model_state_info *info);
    int (*set_batch)(model *m, model_layer *l, int n);  // optional: descriptors for batch n
    // Forward: inputs l->x[k], output l->y (training: batch statistics, dropout masks, loss gradient).
    int (*forward)(model *m, model_layer *l, int n, int training);
    // Backward: from l->dy (may be overwritten) to l->dx[k] (overwritten; NULL = no gradient wanted) and this
    // layer's parameter gradients. Optional: NULL for a kind with nothing to pass back (the loss).
    int (*backward)(model *m, model_layer *l, int n);
    // Floating-point operations of one sample's forward (multiply-add = 2), for GFLOP/s figures. Optional: NULL
    // for kinds whose cost is memory traffic, not arithmetic (counted as 0).
    double (*flops)(const model_layer *l);
} layer_kind;

const layer_kind *layer_kind_of(int type);  // NULL for a bad type
int layer_kind_find(const char *section);   // enum layer_type, or 0 when no kind has that section
// "conv, maxpool, ..." for messages
const char *layer_kind_sections(void);

// The indices of layer i's inputs (-1: the network input), in order. ST_INPUT naming the key when a reference is
// out of range or does not point back.
int layer_inputs(const net_config *cfg, int i, int idx[CFG_MAX_REFS + 1], int *n);

// ST_INPUT with "file:line: [section] 'name': " (and "key: " when key != NULL) before the message.
// The validated network's shapes (shapes[i + 1]: layer i's output, [0]: the input) and each layer's parameter
// count (--print-model); the errors of config_validate's layer checks.
int config_layer_shapes(const net_config *cfg, layer_shape shapes[CFG_MAX_LAYERS + 1], long long params[CFG_MAX_LAYERS]);
int layer_err(const net_config *cfg, int i, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

// Helpers for kinds
const char *layer_act_name(int act);   // "linear" for ACT_NONE (and any unknown value)
int layer_act_find(const char *name);  // ACT_*, or -1 when no activation has that name
const char *layer_act_names(void);     // "linear, relu, leaky, ..." for messages and --list-layers

// A layer's activation, fused into its own op where act' can be read from the output (act_from_output), else
// run on its own: the op runs linear into l->pre (model.c allocates it), then layer_act_forward makes l->y, and
// layer_act_backward turns l->dy into the pre-activation gradient before the op's backward.
int layer_act_fused(const model_layer *l);  // the act the op fuses: l->act or ACT_NONE
void *layer_act_out(model_layer *l);         // where the op writes: l->pre or l->y
int layer_act_forward(model *m, model_layer *l, int n);   // nothing when fused
int layer_act_backward(model *m, model_layer *l, int n);  // nothing when fused

// The registry for people and programs: every kind's section, default name prefix, inputs, doc and keys with
// defaults and ranges. LAYER_LIST_TEXT for --list-layers, LAYER_LIST_JSON for --list-layers --json (the PyTorch
// builder, launch/torch_model.py, takes its names from it), LAYER_LIST_MARKDOWN for the layer table of docs/config.md
// (tests/cli_layers.sh holds the document to it).
enum { LAYER_LIST_TEXT, LAYER_LIST_JSON, LAYER_LIST_MARKDOWN };
void layer_kinds_print(FILE *f, int format);
// A zeroed kind-private struct of `size` bytes as l->priv (NULL when out of memory); model_destroy frees it
// after the kind's destroy.
void *layer_priv_new(model_layer *l, size_t size);
