// softmax.c — [softmax]: softmax + sparse categorical cross-entropy, the loss. Last layer; its input is the
// logits of a linear [dense] with net.classes units. A training forward writes the loss gradient (with
// net.label_smoothing) into its input's dy; evaluation reports the plain cross-entropy.
#include "../common.h"
#include "../layer.h"

static int softmax_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                         long long *n_params) {
    (void)n_in, (void)n_params;
    const layer_cfg *l = &cfg->layers[i];
    const layer_cfg *prev = i > 0 ? &cfg->layers[i - 1] : NULL;
    if (i != cfg->n_layers - 1) return ERR(ST_INPUT, "%s:%d: [softmax] '%s' must be the last layer", cfg->path, l->line, l->name);
    if (!prev || prev->type != LAYER_DENSE)
        return ERR(ST_INPUT, "%s:%d: [softmax] '%s' must follow a [dense] layer", cfg->path, l->line, l->name);
    if (prev->act != ACT_NONE)
        return ERR(ST_INPUT, "%s:%d: [dense] '%s' before [softmax] must have activation=linear", cfg->path, prev->line,
                   prev->name);
    if (in->c != cfg->classes)
        return ERR(ST_INPUT, "%s:%d: [dense] '%s': units=%d before [softmax] must equal net.classes=%d", cfg->path,
                   prev->line, prev->name, in->c, cfg->classes);
    *out = *in;
    return ST_OK;
}

static int softmax_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    (void)m, (void)l, (void)lc, (void)workspace;
    return ST_OK;
}

static int softmax_forward(model *m, model_layer *l, int n, int training) {
    model_layer *in = &m->layers[l->in_idx[0]];
    void *dlogits = training ? in->dy : NULL;
    const float smoothing = training ? m->label_smoothing : 0.0f;
    return backend_softmax_xent(m->be, n, m->classes, l->x[0], m->labels, smoothing, m->loss_scale, dlogits,
                                m->loss_acc, m->correct_acc);
}

const layer_kind layer_kind_softmax = {
    .section = "softmax",
    .flags = LAYER_TERMINAL,
    .doc = "softmax + sparse categorical cross-entropy, the loss: last, after a linear [dense] with net.classes "
           "units",
    .example = "",
    .shape = softmax_shape,
    .create = softmax_create,
    .forward = softmax_forward,
};
