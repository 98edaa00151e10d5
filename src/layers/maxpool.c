// maxpool.c — [maxpool]: max pooling, optionally padded (PyTorch's MaxPool2d padding: implicit -inf, at most half
// the window); the argmax of each window is kept for backward.
#include "../common.h"
#include "../layer.h"

static const layer_key keys[] = {
    {"size", LK_INT, offsetof(layer_cfg, size), 2, 1, 1024, 0, "window size×size"},
    {"stride", LK_INT, offsetof(layer_cfg, stride), 0, 1, 1024, 0, "unset: = size"},
    {"pad", LK_INT, offsetof(layer_cfg, pad), 0, 0, 512, 0, "-inf on each side, never chosen; at most size/2"},
};

typedef struct pool_priv {
    pool_desc d;
    int32_t *argmax;  // backend memory: the window's argmax per output value (max_batch)
} pool_priv;

static int stride_of(const layer_cfg *l) { return l->stride ? l->stride : l->size; }

static int maxpool_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                         long long *n_params) {
    (void)n_in, (void)n_params;
    const layer_cfg *l = &cfg->layers[i];
    if (!in->spatial) return layer_err(cfg, i, NULL, "after a dense layer: the input is no longer spatial");
    if (l->pad > l->size / 2)
        return layer_err(cfg, i, "pad", "%d must be at most half the window (size %d): at most %d", l->pad, l->size,
                         l->size / 2);
    if (in->h + 2 * l->pad < l->size || in->w + 2 * l->pad < l->size)
        return layer_err(cfg, i, NULL, "impossible shape: window %d (pad %d) on a %dx%d input", l->size, l->pad, in->h,
                         in->w);
    *out = *in;
    out->h = (in->h + 2 * l->pad - l->size) / stride_of(l) + 1;
    out->w = (in->w + 2 * l->pad - l->size) / stride_of(l) + 1;
    return ST_OK;
}

static int maxpool_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    (void)workspace;
    pool_desc d = {.n = m->max_batch, .c = l->in_c, .h = l->in_h, .w = l->in_w, .size = lc->size,
                   .stride = stride_of(lc), .pad = lc->pad};
    TRY(pool_desc_init(&d, l->name));
    pool_priv *p = layer_priv_new(l, sizeof *p);
    TRY_ALLOC(p);
    p->d = d;
    return backend_alloc(m->be, (void **)&p->argmax,
                         (size_t)m->max_batch * l->out_c * l->out_h * l->out_w * sizeof(int32_t));
}

static void maxpool_destroy(model *m, model_layer *l) {
    pool_priv *p = l->priv;
    if (!p) return;
    backend_free(m->be, p->argmax);
    p->argmax = NULL;
}

static int maxpool_set_batch(model *m, model_layer *l, int n) {
    (void)m;
    pool_priv *p = l->priv;
    p->d.n = n;
    return pool_desc_init(&p->d, l->name);
}

static int maxpool_forward(model *m, model_layer *l, int n, int training) {
    (void)n, (void)training;
    const pool_priv *p = l->priv;
    return backend_pool_forward(m->be, &p->d, l->x[0], l->y, p->argmax);
}

static int maxpool_backward(model *m, model_layer *l, int n) {
    (void)n;
    if (!l->dx[0]) return ST_OK;
    const pool_priv *p = l->priv;
    return backend_pool_backward(m->be, &p->d, l->dy, p->argmax, l->dx[0]);
}

const layer_kind layer_kind_maxpool = {
    .section = "maxpool",
    .prefix = "pool",
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .doc = "max pooling (PyTorch's MaxPool2d, padding included)",
    // Overlapping padded windows, then the plain 2x2 (the unrolled path); the FD test's 6x6 input: 3x3 pad 1
    // stride 2 gives 3x3, then 2x2 (floor) gives 1x1.
    .example = "[maxpool]\nsize=3\nstride=2\npad=1\n[maxpool]\nsize=2\n",
    .shape = maxpool_shape,
    .create = maxpool_create,
    .destroy = maxpool_destroy,
    .set_batch = maxpool_set_batch,
    .forward = maxpool_forward,
    .backward = maxpool_backward,
};
