// batchnorm.c — [batchnorm]: batch normalisation with a learned affine and an optional activation (PyTorch's
// BatchNorm1d/2d, then the activation): y = act(weight (x - mean) / sqrt(var + eps) + bias).
//
// Per channel over (N, H, W) after a spatial layer; per feature over N after a [dense] or a [flatten] (as
// nn.Flatten then BatchNorm1d: each of the C·H·W values is a feature). Training normalises with the batch's
// statistics and updates the running ones (running = (1 - momentum) running + momentum batch, the variance
// unbiased); evaluation uses the running ones. weight/bias are the layer's parameters (init 1, 0); the running
// statistics and num_batches_tracked live in the model's state buffer (`<name>.running_mean`, `.running_var`,
// `.num_batches_tracked`; the count kept as a float, exact up to 2^24 steps).
//
// sync=1: the statistics (and, in backward, the two gradient means) are averaged over the ranks through the
// model's allreduce_avg callback between the backend ops, so every rank normalises with the global batch's
// statistics (PyTorch's SyncBatchNorm). This needs equal per-rank batches, which the trainer enforces.
#include <stdlib.h>

#include "../common.h"
#include "../layer.h"

static const layer_key keys[] = {
    {"eps", LK_DOUBLE, offsetof(layer_cfg, eps), 1e-5, 0, 1, 0, "> 0"},
    {"momentum", LK_DOUBLE, offsetof(layer_cfg, momentum), 0.1, 0, 1, 0, "> 0: running = (1 − momentum)·running + momentum·batch"},
    {"sync", LK_INT, offsetof(layer_cfg, sync), 0, 0, 1, 0, "1: statistics averaged over the ranks (PyTorch's SyncBatchNorm)"},
    {"activation", LK_ACT, offsetof(layer_cfg, act), ACT_NONE, 0, 0, 0, NULL},
};

typedef struct bn_priv {
    bn_desc d;     // n set per call
    int sync;
    float *stats;  // backend: [3c] batch statistics, then [2c] save {mean, invstd}, then [2c] gradient means
    float *save, *gstats;
} bn_priv;

// Per feature (not per channel) after a non-spatial layer or a [flatten].
static int bn_per_feature(const net_config *cfg, int i, const layer_shape *in) {
    const int p = i - 1;  // [batchnorm] reads the previous layer's output
    return !in->spatial || (p >= 0 && cfg->layers[p].type == LAYER_FLATTEN);
}

static int batchnorm_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                           long long *n_params) {
    (void)n_in;
    const layer_cfg *l = &cfg->layers[i];
    if (!(l->eps > 0)) return layer_err(cfg, i, "eps", "%g must be > 0", l->eps);
    if (!(l->momentum > 0)) return layer_err(cfg, i, "momentum", "%g must be in (0, 1]", l->momentum);
    const long long per_sample = (long long)in->c * in->h * in->w;
    if (per_sample < 2)
        return layer_err(cfg, i, NULL, "nothing to normalise: its input has one value per sample");
    const long long channels = bn_per_feature(cfg, i, in) ? per_sample : in->c;
    *out = *in;
    *n_params = 2 * channels;
    return ST_OK;
}

static int batchnorm_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    (void)workspace;
    const int p = l->in_idx[0];
    const int spatial = p < 0 || m->layers[p].out_spatial;
    const int per_feature = !spatial || (p >= 0 && m->layers[p].type == LAYER_FLATTEN);  // as the shape rule
    // Per feature after a [flatten]: the features are C·H·W-ordered (PyTorch's BatchNorm1d after nn.Flatten, and the
    // checkpoint's order), an NHWC backend's values H·W·C-ordered: refused rather than mismatched.
    if (per_feature && l->in_h * l->in_w > 1 && backend_is_nhwc(m->be))
        return ERR(ST_INPUT, "net.layout=nhwc: [batchnorm] '%s' normalises the C·H·W features of a [flatten] per "
                             "feature, which the CUDA backend's NHWC activations hold in another order; use "
                             "net.layout=nchw, or normalise before the [flatten]", l->name);
    bn_priv *b = layer_priv_new(l, sizeof *b);
    TRY_ALLOC(b);
    const int c = per_feature ? l->in_c * l->in_h * l->in_w : l->in_c, hw = per_feature ? 1 : l->in_h * l->in_w;
    b->d = (bn_desc){.n = m->max_batch, .c = c, .hw = hw, .act = layer_act_fused(l), .eps = (float)lc->eps,
                     .momentum = (float)lc->momentum};
    b->sync = lc->sync;
    l->stat_values = hw;
    l->stat_sync = lc->sync;
    l->n_w = (size_t)c;
    l->n_b = (size_t)c;
    l->w_ndim = 1;
    l->w_shape[0] = c;
    l->n_s = 2 * (size_t)c + 1;  // running_mean [c], running_var [c], num_batches_tracked
    TRY(backend_alloc(m->be, (void **)&b->stats, 7 * (size_t)c * sizeof(float)));
    b->save = b->stats + 3 * (size_t)c;
    b->gstats = b->save + 2 * (size_t)c;
    return ST_OK;
}

static void batchnorm_destroy(model *m, model_layer *l) {
    bn_priv *b = l->priv;
    if (!b) return;
    backend_free(m->be, b->stats);
    b->stats = NULL;
}

static void batchnorm_init(const model_layer *l, rng *r, float *params, float *state) {
    (void)r;
    const size_t c = l->n_w;
    for (size_t k = 0; k < c; k++) {
        params[l->w_off + k] = 1.0f;
        params[l->b_off + k] = 0.0f;
        state[l->s_off + k] = 0.0f;      // running_mean
        state[l->s_off + c + k] = 1.0f;  // running_var
    }
    state[l->s_off + 2 * c] = 0.0f;      // num_batches_tracked
}

// PyTorch's buffers: running_mean [c], running_var [c], num_batches_tracked (a scalar count).
static int batchnorm_state_tensor(const model_layer *l, int k, model_state_info *t) {
    static const char *const suffix[] = {"running_mean", "running_var", "num_batches_tracked"};
    if (k < 0 || k > 2) return 3;
    const size_t c = l->n_w;
    t->suffix = suffix[k];
    t->offset = l->s_off + (size_t)k * c;
    t->ndim = k < 2;
    t->shape[0] = (int64_t)c;
    t->is_count = k == 2;
    return 3;
}

// The ranks this layer's statistics cover: all of them with sync=1 and the model's callback set.
static int bn_ranks(const model *m, const bn_priv *b) {
    return b->sync && m->allreduce_avg && m->world > 1 ? m->world : 1;
}

static int batchnorm_forward(model *m, model_layer *l, int n, int training) {
    bn_priv *b = l->priv;
    bn_desc d = b->d;
    d.n = n;
    const int ranks = bn_ranks(m, b);
    d.count = (int64_t)n * d.hw * ranks;
    float *running = m->state + l->s_off;
    if (!training) {
        TRY(backend_bn_apply(m->be, &d, l->x[0], NULL, m->params + l->w_off, m->params + l->b_off, running, b->save,
                             layer_act_out(l)));
        return layer_act_forward(m, l, n);
    }
    if (d.count < 2)
        return ERR(ST_RUNTIME, "%s: batch statistics need more than one value per channel (batch %d x %d)", l->name,
                   n, d.hw);
    TRY(backend_bn_stats(m->be, &d, l->x[0], b->stats));
    if (ranks > 1) TRY(m->allreduce_avg(m->allreduce_arg, b->stats, 3 * (size_t)d.c));
    TRY(backend_bn_apply(m->be, &d, l->x[0], b->stats, m->params + l->w_off, m->params + l->b_off, running,
                         b->save, layer_act_out(l)));
    return layer_act_forward(m, l, n);
}

static int batchnorm_backward(model *m, model_layer *l, int n) {
    bn_priv *b = l->priv;
    bn_desc d = b->d;
    d.n = n;
    d.count = (int64_t)n * d.hw * bn_ranks(m, b);
    TRY(layer_act_backward(m, l, n));
    TRY(backend_bn_grad_stats(m->be, &d, l->x[0], layer_act_out(l), b->save, l->dy, model_grad(m, l->w_off),
                              model_grad(m, l->b_off), b->gstats));
    if (!l->dx[0]) return ST_OK;  // the same on every rank: no rank waits in the all-reduce alone
    if (bn_ranks(m, b) > 1) TRY(m->allreduce_avg(m->allreduce_arg, b->gstats, 2 * (size_t)d.c));
    return backend_bn_grad_input(m->be, &d, l->x[0], b->save, m->params + l->w_off, b->gstats, l->dy, l->dx[0]);
}

const layer_kind layer_kind_batchnorm = {
    .section = "batchnorm",
    .prefix = "bn",
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .doc = "batch normalisation, affine, then the activation: BatchNorm2d per channel after a spatial layer, "
           "BatchNorm1d per feature after [dense]/[flatten]",
    // After a relu [conv]: a bias followed by BN only shifts what BN subtracts, so the linear stem's bias would have
    // an exactly zero gradient, rounding noise that the PyTorch parity check cannot normalise. Per channel only:
    // per feature over a batch of 4 (the FD test's) has near-constant features whose curvature defeats ±1e-3 FD.
    .example = "[conv]\nfilters=4\nsize=3\npad=1\nactivation=relu\n[batchnorm]\nactivation=relu\nmomentum=0.2\n"
               "[maxpool]\n[batchnorm]\nactivation=leaky\neps=0.001\n",
    .shape = batchnorm_shape,
    .create = batchnorm_create,
    .destroy = batchnorm_destroy,
    .init = batchnorm_init,
    .state_tensor = batchnorm_state_tensor,
    .forward = batchnorm_forward,
    .backward = batchnorm_backward,
};
