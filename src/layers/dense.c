// dense.c — [dense]: fully connected, y = act(x · Wᵀ + b) (PyTorch nn.Linear layout; bias=0: no b); flattens a
// spatial input.
//
// On an NHWC backend (backend_is_nhwc) a spatial input with more than one pixel arrives H·W·C-ordered, while the
// weight's columns are PyTorch's C·H·W (checkpoints, flatten). Each forward permutes the weight into [out, H·W·C]
// (layout_convert: out blocks of C x H·W), the pass reads that copy, and backward permutes its weight gradient
// back into the C·H·W-ordered gradient buffer: the weight is out·in values, usually far fewer than the batch's
// activations a permutation of the input would move.
#include "../common.h"
#include "../layer.h"

typedef struct dense_priv {
    int c, hw;         // the spatial input's channels and pixels when the weight is permuted (hw > 1), else 0
    float *w_perm;     // backend memory, n_w each: the permuted weight of the last forward, and backward's gradient
    float *dw_perm;
} dense_priv;

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
    (void)workspace;
    const int in = l->in_c * l->in_h * l->in_w, c = l->in_c, hw = l->in_h * l->in_w;
    l->in_c = in, l->in_h = 1, l->in_w = 1;  // NCHW is already C·H·W-contiguous per sample
    l->n_w = (size_t)lc->units * in;
    l->n_b = lc->bias ? (size_t)lc->units : 0;
    l->w_ndim = 2;
    l->w_shape[0] = lc->units, l->w_shape[1] = in;
    dense_priv *p = layer_priv_new(l, sizeof *p);
    TRY_ALLOC(p);
    if (hw > 1 && backend_is_nhwc(m->be)) {  // H·W·C-ordered input (the file's comment)
        p->c = c, p->hw = hw;
        TRY(backend_alloc(m->be, (void **)&p->w_perm, l->n_w * sizeof(float)));
        TRY(backend_alloc(m->be, (void **)&p->dw_perm, l->n_w * sizeof(float)));
    }
    return ST_OK;
}

static void dense_destroy(model *m, model_layer *l) {
    dense_priv *p = l->priv;
    if (!p) return;
    backend_free(m->be, p->w_perm);
    backend_free(m->be, p->dw_perm);
    p->w_perm = p->dw_perm = NULL;
}

static int dense_forward(model *m, model_layer *l, int n, int training) {
    (void)training;
    const dense_priv *p = l->priv;
    const float *w = m->params + l->w_off;
    if (p->w_perm) {
        TRY(backend_layout_convert(m->be, l->out_c, p->c, p->hw, 1, 4, w, p->w_perm));
        w = p->w_perm;
    }
    TRY(backend_dense_forward(m->be, n, l->in_c, l->out_c, layer_act_fused(l), l->x[0], w,
                              l->n_b ? m->params + l->b_off : NULL, layer_act_out(l)));
    return layer_act_forward(m, l, n);
}

// The permuted weight is the forward's (the parameters do not change between a forward and its backward).
static int dense_backward(model *m, model_layer *l, int n) {
    const dense_priv *p = l->priv;
    TRY(layer_act_backward(m, l, n));
    void *dw = model_grad(m, l->w_off);
    TRY(backend_dense_backward(m->be, n, l->in_c, l->out_c, layer_act_fused(l), l->x[0],
                               p->w_perm ? p->w_perm : m->params + l->w_off, layer_act_out(l), l->dy, l->dx[0],
                               p->dw_perm ? p->dw_perm : dw, l->n_b ? model_grad(m, l->b_off) : NULL));
    // (dw_perm has room for float32 values: bf16 ones on a grads16 backend use half of it)
    return p->dw_perm ? backend_layout_convert(m->be, l->out_c, p->c, p->hw, 0, m->grads16 ? 2 : 4, p->dw_perm, dw)
                      : ST_OK;
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
    .destroy = dense_destroy,
    .forward = dense_forward,
    .backward = dense_backward,
    .flops = dense_flops,
};
