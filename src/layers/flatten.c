// flatten.c — [flatten]: C×H×W per sample seen as one vector. NCHW is already contiguous per sample, so the
// output is the input itself (LAYER_ALIAS: no buffer, no op); optional, as [dense] flattens its input anyway.
#include <stddef.h>

#include "../common.h"
#include "../layer.h"

static int flatten_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                         long long *n_params) {
    (void)n_in, (void)n_params;
    if (!in->spatial) return layer_err(cfg, i, NULL, "after a dense layer: the input is no longer spatial");
    *out = *in;
    return ST_OK;
}

static int flatten_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    (void)m, (void)l, (void)lc, (void)workspace;
    return ST_OK;
}

static int flatten_forward(model *m, model_layer *l, int n, int training) {
    (void)m, (void)l, (void)n, (void)training;
    return ST_OK;
}

// dy is the producer's dy when this is its only reader (the model aliases it); else pass it on.
static int flatten_backward(model *m, model_layer *l, int n) {
    if (!l->dx[0] || l->dx[0] == l->dy) return ST_OK;
    return backend_copy(m->be, l->dx[0], l->dy,
                        (size_t)n * l->out_c * l->out_h * l->out_w * m->act_elem);
}

const layer_kind layer_kind_flatten = {
    .section = "flatten",
    .flags = LAYER_ALIAS,
    .doc = "C×H×W as one vector (optional: a [dense] flattens its input)",
    .example = "[flatten]\n",
    .shape = flatten_shape,
    .create = flatten_create,
    .forward = flatten_forward,
    .backward = flatten_backward,
};
