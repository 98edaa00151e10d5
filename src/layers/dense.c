// dense.c — [dense]: fully connected, y = act(x · Wᵀ + b) (PyTorch nn.Linear layout; bias=0: no b); flattens a
// spatial input.
#include "../common.h"
#include "../layer.h"

static const layer_key keys[] = {
    {"units", LK_INT, offsetof(layer_cfg, units), 0, 1, 1 << 24, 1, NULL},
    {"activation", LK_ACT, offsetof(layer_cfg, act), ACT_NONE, 0, 0, 0, NULL},
    {"bias", LK_INT, offsetof(layer_cfg, bias), 1, 0, 1, 0, "0: no bias"},
};

static int dense_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                       long long *n_params) {
    (void)n_in;
    const layer_cfg *l = &cfg->layers[i];
    *n_params = (long long)l->units * in->c * in->h * in->w + (l->bias ? l->units : 0);
    out->c = l->units, out->h = 1, out->w = 1, out->spatial = 0;
    return ST_OK;
}

static int dense_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    (void)m, (void)workspace;
    const int in = l->in_c * l->in_h * l->in_w;
    l->in_c = in, l->in_h = 1, l->in_w = 1;  // NCHW is already C·H·W-contiguous per sample
    l->n_w = (size_t)lc->units * in;
    l->n_b = lc->bias ? (size_t)lc->units : 0;
    l->w_ndim = 2;
    l->w_shape[0] = lc->units, l->w_shape[1] = in;
    return ST_OK;
}

static int dense_forward(model *m, model_layer *l, int n, int training) {
    (void)training;
    TRY(backend_dense_forward(m->be, n, l->in_c, l->out_c, layer_act_fused(l), l->x[0], m->params + l->w_off,
                              l->n_b ? m->params + l->b_off : NULL, layer_act_out(l)));
    return layer_act_forward(m, l, n);
}

static int dense_backward(model *m, model_layer *l, int n) {
    TRY(layer_act_backward(m, l, n));
    return backend_dense_backward(m->be, n, l->in_c, l->out_c, layer_act_fused(l), l->x[0], m->params + l->w_off,
                                  layer_act_out(l), l->dy, l->dx[0], m->grads + l->w_off,
                                  l->n_b ? m->grads + l->b_off : NULL);
}

static double dense_flops(const model_layer *l) { return 2.0 * l->in_c * l->out_c; }

const layer_kind layer_kind_dense = {
    .section = "dense",
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .doc = "fully connected, bias and activation fused (PyTorch's Linear); flattens a spatial input itself",
    .example = "[dense]\nunits=5\nactivation=relu\n",
    .shape = dense_shape,
    .create = dense_create,
    .forward = dense_forward,
    .backward = dense_backward,
    .flops = dense_flops,
};
