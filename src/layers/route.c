// route.c — [route]: Darknet's route, reading earlier outputs only. One reference is that output itself
// (LAYER_ALIAS_ONE: no buffer, no copy); several are concatenated along channels (their H×W must match), in the
// order listed. Backward hands each input its channel slice of dy.
#include "../common.h"
#include "../layer.h"

static const layer_key keys[] = {
    {"layers", LK_REFS, 0, 0, 1, CFG_MAX_REFS, 1, "comma-separated, -k or absolute; concatenated along channels in the order listed (their H×W must match)"},
};

static int ref_index(const layer_cfg *l, int i, int r) { return l->refs[r] < 0 ? i + l->refs[r] : l->refs[r]; }

static int route_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                       long long *n_params) {
    (void)n_params;
    const layer_cfg *l = &cfg->layers[i];
    *out = in[0];
    for (int k = 1; k < n_in; k++) {
        if (in[k].h != in[0].h || in[k].w != in[0].w || in[k].spatial != in[0].spatial) {
            const int a = ref_index(l, i, 0), b = ref_index(l, i, k);
            return layer_err(cfg, i, "layers",
                             "layer %d ('%s') gives %dx%dx%d, layer %d ('%s') %dx%dx%d: a route concatenates the "
                             "channels of outputs with the same HxW",
                             a, cfg->layers[a].name, in[0].c, in[0].h, in[0].w, b, cfg->layers[b].name, in[k].c,
                             in[k].h, in[k].w);
        }
        out->c += in[k].c;
    }
    return ST_OK;
}

static int route_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    (void)m, (void)l, (void)lc, (void)workspace;
    return ST_OK;
}

static int route_forward(model *m, model_layer *l, int n, int training) {
    (void)training;
    if (l->y == l->x[0]) return ST_OK;  // one input: aliased
    const int hw = l->out_h * l->out_w;
    for (int k = 0, off = 0; k < l->n_in; k++) {
        const int c = m->layers[l->in_idx[k]].out_c;
        TRY(backend_channel_copy(m->be, n, c, hw, l->x[k], c, 0, l->y, l->out_c, off));
        off += c;
    }
    return ST_OK;
}

static int route_backward(model *m, model_layer *l, int n) {
    const int hw = l->out_h * l->out_w;
    if (l->n_in == 1 && l->dx[0] == l->dy) return ST_OK;  // one input, its only reader left: the same gradient
    for (int k = 0, off = 0; k < l->n_in; k++) {
        const int c = m->layers[l->in_idx[k]].out_c;
        if (l->dx[k]) TRY(backend_channel_copy(m->be, n, c, hw, l->dy, l->out_c, off, l->dx[k], c, 0));
        off += c;
    }
    return ST_OK;
}

const layer_kind layer_kind_route = {
    .section = "route",
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .flags = LAYER_ALIAS_ONE,
    .inputs = LAYER_IN_REFS,
    .doc = "earlier outputs (Darknet's route): one copied, or several concatenated along channels; the previous "
           "layer is an input only when listed",
    .example = "[conv]\nfilters=2\nsize=3\npad=1\n[route]\nlayers=-1,-2\n",
    .shape = route_shape,
    .create = route_create,
    .forward = route_forward,
    .backward = route_backward,
};
