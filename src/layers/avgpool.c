// avgpool.c — [avgpool]: average pooling without padding. size=0 (the default, Darknet's [avgpool]) is global
// average pooling: each channel's H×W plane to one value (C×1×1); size=k averages k×k windows at `stride`
// (default: size).
#include "../common.h"
#include "../layer.h"

static const layer_key keys[] = {
    {"size", LK_INT, offsetof(layer_cfg, size), 0, 0, 1024, 0, "0: global average pooling, C×H×W → C×1×1 (Darknet's); k: k×k windows"},
    {"stride", LK_INT, offsetof(layer_cfg, stride), 0, 1, 1024, 0, "unset: = size; only with size > 0"},
};

typedef struct avgpool_priv {
    int win_h, win_w, stride;  // the window (the whole plane for global pooling)
} avgpool_priv;

static int avgpool_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                         long long *n_params) {
    (void)n_in, (void)n_params;
    const layer_cfg *l = &cfg->layers[i];
    if (!in->spatial) return layer_err(cfg, i, NULL, "after a dense layer: the input is no longer spatial");
    *out = *in;
    if (l->size == 0) {
        if (l->stride) return layer_err(cfg, i, "stride", "only with a window (size > 0); size=0 pools globally");
        out->h = out->w = 1;
        return ST_OK;
    }
    if (in->h < l->size || in->w < l->size)
        return layer_err(cfg, i, "size", "impossible shape: window %d on a %dx%d input", l->size, in->h, in->w);
    const int stride = l->stride ? l->stride : l->size;
    out->h = (in->h - l->size) / stride + 1;
    out->w = (in->w - l->size) / stride + 1;
    return ST_OK;
}

static int avgpool_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    (void)m, (void)workspace;
    avgpool_priv *p = layer_priv_new(l, sizeof *p);
    TRY_ALLOC(p);
    p->win_h = lc->size ? lc->size : l->in_h;
    p->win_w = lc->size ? lc->size : l->in_w;
    p->stride = lc->size ? (lc->stride ? lc->stride : lc->size) : 1;
    return ST_OK;
}

static int avgpool_forward(model *m, model_layer *l, int n, int training) {
    (void)training;
    const avgpool_priv *p = l->priv;
    return backend_avgpool_forward(m->be, n, l->in_c, l->in_h, l->in_w, p->win_h, p->win_w, p->stride,
                                   l->x[0], l->y);
}

static int avgpool_backward(model *m, model_layer *l, int n) {
    if (!l->dx[0]) return ST_OK;
    const avgpool_priv *p = l->priv;
    return backend_avgpool_backward(m->be, n, l->in_c, l->in_h, l->in_w, p->win_h, p->win_w, p->stride,
                                    l->dy, l->dx[0]);
}

const layer_kind layer_kind_avgpool = {
    .section = "avgpool",
    .prefix = "avgpool",
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .doc = "average pooling, no padding",
    .example = "[avgpool]\nsize=2\n",
    .shape = avgpool_shape,
    .create = avgpool_create,
    .forward = avgpool_forward,
    .backward = avgpool_backward,
};
