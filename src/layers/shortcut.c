// shortcut.c — [shortcut]: Darknet's residual add, y = act(previous output + output of layer `from`). The two
// outputs must have the same shape. Backward: dz = dy·act'(y) goes to both inputs unchanged (the model sums the
// gradients of an output read twice).
#include "../common.h"
#include "../layer.h"

static const layer_key keys[] = {
    {"from", LK_REFS, 0, 0, 1, 1, 1, "-k: k layers back (Darknet's), or an absolute index from 0; same C×H×W as the previous output"},
    {"activation", LK_ACT, offsetof(layer_cfg, act), ACT_NONE, 0, 0, 0, NULL},
};

static int shortcut_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                          long long *n_params) {
    (void)n_in, (void)n_params;
    const layer_cfg *l = &cfg->layers[i];
    const int from = l->refs[0] < 0 ? i + l->refs[0] : l->refs[0];  // layer_inputs checked it
    if (in[1].c != in[0].c || in[1].h != in[0].h || in[1].w != in[0].w || in[1].spatial != in[0].spatial)
        return layer_err(cfg, i, "from",
                         "layer %d ('%s') gives %dx%dx%d, the previous layer ('%s') %dx%dx%d: a shortcut adds "
                         "outputs of the same shape (CxHxW)",
                         from, cfg->layers[from].name, in[1].c, in[1].h, in[1].w, cfg->layers[i - 1].name, in[0].c,
                         in[0].h, in[0].w);
    *out = in[0];
    return ST_OK;
}

static int shortcut_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    (void)m, (void)l, (void)lc, (void)workspace;
    return ST_OK;
}

static size_t out_elems(const model_layer *l, int n) { return (size_t)n * l->out_c * l->out_h * l->out_w; }

static int shortcut_forward(model *m, model_layer *l, int n, int training) {
    (void)training;
    TRY(backend_add_act(m->be, out_elems(l, n), layer_act_fused(l), l->x[0], l->x[1], layer_act_out(l)));
    return layer_act_forward(m, l, n);
}

static int shortcut_backward(model *m, model_layer *l, int n) {
    const size_t e = out_elems(l, n);
    TRY(layer_act_backward(m, l, n));
    if (layer_act_fused(l) != ACT_NONE) TRY(backend_act_backward(m->be, e, l->act, l->y, l->dy, l->dy));
    for (int k = 0; k < 2; k++)
        if (l->dx[k]) TRY(backend_copy(m->be, l->dx[k], l->dy, e * m->act_elem));
    return ST_OK;
}

const layer_kind layer_kind_shortcut = {
    .section = "shortcut",
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .inputs = LAYER_IN_PREV_REFS,
    .doc = "residual add (Darknet's): y = act(previous output + output of `from`)",
    .example = "[conv]\nfilters=3\nsize=3\npad=1\nactivation=relu\n[shortcut]\nfrom=-2\nactivation=linear\n",
    .shape = shortcut_shape,
    .create = shortcut_create,
    .forward = shortcut_forward,
    .backward = shortcut_backward,
};
