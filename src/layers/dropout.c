// dropout.c — [dropout]: inverted dropout. Training: each value kept with probability 1 − rate and scaled by
// 1/(1 − rate), else 0; evaluation: the identity (a copy into its own output). The mask is a pure function of
// (seed, step, rank, layer, micro-batch, element) through a counter-based hash (src/dropout_hash.h), the same on
// every backend: backward recomputes it instead of storing it, CPU and GPU draw the same masks, a resumed run
// draws the masks of the run it continues, and a CUDA graph reads the step from the model's key in backend memory.
#include "../common.h"
#include "../layer.h"

static const layer_key keys[] = {
    {"rate", LK_DOUBLE, offsetof(layer_cfg, rate), 0.5, 0, 1, 0, "below 1: each value kept with probability 1 − rate"},
};

typedef struct dropout_priv {
    float rate;
} dropout_priv;

static float rate_of(const model_layer *l) { return ((const dropout_priv *)l->priv)->rate; }

static int dropout_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                         long long *n_params) {
    (void)n_in, (void)n_params;
    const double rate = cfg->layers[i].rate;
    if (!(rate >= 0 && rate < 1))
        return layer_err(cfg, i, "rate", "%g is outside [0, 1): the fraction of values dropped while training", rate);
    *out = *in;
    return ST_OK;
}

static int dropout_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    (void)workspace;
    dropout_priv *p = layer_priv_new(l, sizeof *p);
    TRY_ALLOC(p);
    p->rate = (float)lc->rate;
    if (m->rng_key) return ST_OK;
    TRY(backend_alloc(m->be, (void **)&m->rng_key, sizeof *m->rng_key));
    return backend_upload(m->be, m->rng_key, &m->rng_host, sizeof m->rng_host);
}

static size_t out_elems(const model_layer *l, int n) { return (size_t)n * l->out_c * l->out_h * l->out_w; }

// layer index | micro-batch << 16: each layer and each micro-batch of a step draws its own mask.
static uint32_t mask_stream(const model *m, const model_layer *l) {
    return (uint32_t)(l - m->layers) | (uint32_t)m->micro << 16;
}

static int dropout_forward(model *m, model_layer *l, int n, int training) {
    const size_t e = out_elems(l, n);
    const float rate = rate_of(l);
    if (!training || rate == 0.0f) return backend_copy(m->be, l->y, l->x[0], e * m->act_elem);
    return backend_dropout(m->be, e, rate, m->rng_key, mask_stream(m, l), l->x[0], l->y);
}

static int dropout_backward(model *m, model_layer *l, int n) {
    const size_t e = out_elems(l, n);
    if (!l->dx[0]) return ST_OK;
    const float rate = rate_of(l);
    if (rate == 0.0f) return backend_copy(m->be, l->dx[0], l->dy, e * m->act_elem);
    return backend_dropout(m->be, e, rate, m->rng_key, mask_stream(m, l), l->dy, l->dx[0]);
}

const layer_kind layer_kind_dropout = {
    .section = "dropout",
    .prefix = "drop",
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .doc = "inverted dropout while training (kept values scaled by 1/(1 − rate), the rest 0), the identity in "
           "evaluation; the mask is a hash of (seed, step, rank, layer, micro-batch, element): the same on CPU "
           "and GPU, after a resume and in a replayed CUDA graph",
    .example = "[dropout]\nrate=0.3\n",
    .shape = dropout_shape,
    .create = dropout_create,
    .forward = dropout_forward,
    .backward = dropout_backward,
};
