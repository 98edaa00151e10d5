// model.c — build the layer list from a config, lay out parameters in reverse layer order, run forward and
// backward through the backend table, and report when gradient prefixes are final (for bucketed all-reduce).
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Conv plans per batch size. Training uses one batch size and evaluation usually others (eval_batch and each
// rank's smaller last batch); preparing a conv (cuDNN algorithm search on the GPU) is too slow to redo at every
// switch, so each size keeps its plan, up to MODEL_MAX_PLANS per layer. Slot 0 is max_batch, made by
// model_create (its need sized the workspace): the training batch or eval_batch, whichever is larger. When the
// cache is full, the least recently used plan goes, never slot 0 nor the training batch's (m->train_batch):
// losing that would re-plan at the next eager training step, and a fresh search may pick another algorithm than
// the one a captured CUDA graph replays (or, if it fell just before a capture, run conv_prepare inside it,
// which is refused). Slots 1.. are kept most recently used first.
_Static_assert(MODEL_MAX_PLANS >= 3, "slot 0, the training batch's plan and one more");

static int conv_plan_slot(const model_layer *l, int n) {
    for (int i = 0; i < l->n_conv_plans; i++)
        if (l->conv_plans[i].n == n) return i;
    return -1;
}

// A free slot, else the least recently used plan other than slot 0 and the training batch's (released).
static int conv_plan_evict(model *m, model_layer *l) {
    if (l->n_conv_plans < MODEL_MAX_PLANS) return l->n_conv_plans++;
    int i = MODEL_MAX_PLANS - 1;
    if (l->conv_plans[i].n == m->train_batch) i--;
    m->be->ops->conv_release(m->be->ctx, &l->conv_plans[i]);
    return i;
}

static int conv_plan_for(model *m, model_layer *l, int n) {
    int i = conv_plan_slot(l, n);
    if (i < 0) {
        conv_desc d = l->conv_plans[0];
        d.n = n;
        d.plan = NULL;
        TRY(conv_desc_init(&d, l->name));
        size_t ws = 0;
        TRY(m->be->ops->conv_prepare(m->be->ctx, &d, &ws));
        if (ws > m->workspace_bytes) {
            m->be->ops->conv_release(m->be->ctx, &d);  // in no slot: nothing else would release it
            return ERR(ST_RUNTIME, "%s: batch %d needs %zu workspace bytes, only %zu allocated", l->name, n, ws,
                       m->workspace_bytes);
        }
        i = conv_plan_evict(m, l);
        l->conv_plans[i] = d;
    }
    if (i > 1) {  // most recently used first (after slot 0)
        const conv_desc d = l->conv_plans[i];
        memmove(&l->conv_plans[2], &l->conv_plans[1], (size_t)(i - 1) * sizeof d);
        l->conv_plans[1] = d;
        i = 1;
    }
    l->conv = l->conv_plans[i];
    return ST_OK;
}

static int model_set_batch(model *m, int n) {
    if (n < 1 || n > m->max_batch) return ERR(ST_RUNTIME, "batch %d outside [1, %d]", n, m->max_batch);
    if (n == m->cur_batch) return ST_OK;
    m->cur_batch = 0;  // until every layer has switched: after a failure midway no size is trusted
    for (int i = 0; i < m->n_layers; i++) {
        model_layer *l = &m->layers[i];
        if (l->type == LAYER_CONV) TRY(conv_plan_for(m, l, n));
        if (l->type == LAYER_MAXPOOL) {
            l->pool.n = n;
            TRY(pool_desc_init(&l->pool, l->name));
        }
    }
    m->cur_batch = n;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Construction

static int layer_shape(model *m, model_layer *l, const layer_cfg *lc, int c, int h, int w) {
    l->type = lc->type;
    l->act = lc->act;
    snprintf(l->name, sizeof l->name, "%s", lc->name);
    l->in_c = c, l->in_h = h, l->in_w = w;
    l->out_c = c, l->out_h = h, l->out_w = w;
    switch (lc->type) {
    case LAYER_CONV: {
        conv_desc d = {.n = m->max_batch, .c = c, .h = h, .w = w, .k = lc->filters, .r = lc->size, .s = lc->size,
                       .stride = lc->stride, .pad = lc->pad, .act = lc->act};
        TRY(conv_desc_init(&d, l->name));
        l->conv_plans[0] = d;
        l->n_conv_plans = 1;
        l->conv = d;
        l->out_c = d.k, l->out_h = d.oh, l->out_w = d.ow;
        l->n_w = (size_t)d.k * c * d.r * d.s;
        l->n_b = (size_t)d.k;
        l->w_ndim = 4;
        l->w_shape[0] = d.k, l->w_shape[1] = c, l->w_shape[2] = d.r, l->w_shape[3] = d.s;
        break;
    }
    case LAYER_MAXPOOL: {
        pool_desc d = {.n = m->max_batch, .c = c, .h = h, .w = w, .size = lc->size,
                       .stride = lc->stride ? lc->stride : lc->size};  // stride 0 in a config means = size
        TRY(pool_desc_init(&d, l->name));
        l->pool = d;
        l->out_h = d.oh, l->out_w = d.ow;
        break;
    }
    case LAYER_DENSE: {
        int in = c * h * w;
        l->in_c = in, l->in_h = 1, l->in_w = 1;
        l->out_c = lc->units, l->out_h = 1, l->out_w = 1;
        l->n_w = (size_t)lc->units * in;
        l->n_b = (size_t)lc->units;
        l->w_ndim = 2;
        l->w_shape[0] = lc->units, l->w_shape[1] = in;
        break;
    }
    case LAYER_SOFTMAX: break;
    default: return ERR(ST_INPUT, "%s: unsupported layer type %d", lc->name, lc->type);
    }
    return ST_OK;
}

static size_t layer_out_elems(const model_layer *l) { return (size_t)l->out_c * l->out_h * l->out_w; }

int model_create(model *m, backend *be, const net_config *cfg, int max_batch) {
    memset(m, 0, sizeof *m);
    m->be = be;
    m->max_batch = max_batch;
    m->in_c = cfg->channels, m->in_h = cfg->height, m->in_w = cfg->width;
    m->classes = cfg->classes;
    m->label_smoothing = (float)cfg->label_smoothing;
    int c = cfg->channels, h = cfg->height, w = cfg->width;
    for (int i = 0; i < cfg->n_layers; i++) {
        if (cfg->layers[i].type == LAYER_FLATTEN) continue;  // NCHW is already C·H·W-contiguous per sample
        model_layer *l = &m->layers[m->n_layers++];
        TRY(layer_shape(m, l, &cfg->layers[i], c, h, w));
        c = l->out_c, h = l->out_h, w = l->out_w;
    }
    if (m->n_layers < 2 || m->layers[m->n_layers - 1].type != LAYER_SOFTMAX)
        return ERR(ST_INPUT, "%s: the last layer must be [softmax]", cfg->path);

    // Reverse layer order: the last layer's gradients come first in the buffer.
    size_t off = 0;
    for (int i = m->n_layers - 1; i >= 0; i--) {
        model_layer *l = &m->layers[i];
        l->w_off = off, off += l->n_w;
        l->b_off = off, off += l->n_b;
    }
    m->n_params = off;

    const backend_ops *o = be->ops;
    void *ctx = be->ctx;
    TRY(o->alloc(ctx, (void **)&m->params, m->n_params * sizeof(float)));
    TRY(o->alloc(ctx, (void **)&m->grads, m->n_params * sizeof(float)));
    TRY(o->alloc(ctx, (void **)&m->x, (size_t)max_batch * m->in_c * m->in_h * m->in_w * sizeof(float)));
    TRY(o->alloc(ctx, (void **)&m->labels, (size_t)max_batch * sizeof(int32_t)));
    TRY(o->alloc(ctx, (void **)&m->loss_acc, sizeof(double)));
    TRY(o->alloc(ctx, (void **)&m->correct_acc, sizeof(int32_t)));
    size_t ws_max = 0;
    for (int i = 0; i < m->n_layers; i++) {
        model_layer *l = &m->layers[i];
        if (l->type == LAYER_SOFTMAX) continue;
        size_t bytes = (size_t)max_batch * layer_out_elems(l) * sizeof(float);
        TRY(o->alloc(ctx, (void **)&l->y, bytes));
        TRY(o->alloc(ctx, (void **)&l->dy, bytes));
        if (l->type == LAYER_MAXPOOL)
            TRY(o->alloc(ctx, (void **)&l->argmax, (size_t)max_batch * layer_out_elems(l) * sizeof(int32_t)));
        if (l->type == LAYER_CONV) {
            size_t ws = 0;
            TRY(o->conv_prepare(ctx, &l->conv_plans[0], &ws));
            l->conv = l->conv_plans[0];
            if (ws > ws_max) ws_max = ws;
        }
    }
    // One workspace for all layers; smaller batches need no more than the largest.
    m->workspace_bytes = ws_max;
    if (ws_max) TRY(o->alloc(ctx, &m->workspace, ws_max));
    m->cur_batch = max_batch;
    return ST_OK;
}

void model_destroy(model *m) {
    if (!m->be) return;
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    for (int i = 0; i < m->n_layers; i++) {
        model_layer *l = &m->layers[i];
        for (int p = 0; p < l->n_conv_plans; p++) o->conv_release(ctx, &l->conv_plans[p]);
        o->free(ctx, l->y);
        o->free(ctx, l->dy);
        o->free(ctx, l->argmax);
    }
    o->free(ctx, m->params);
    o->free(ctx, m->grads);
    o->free(ctx, m->workspace);
    o->free(ctx, m->x);
    o->free(ctx, m->labels);
    o->free(ctx, m->loss_acc);
    o->free(ctx, m->correct_acc);
    memset(m, 0, sizeof *m);
}

// ---------------------------------------------------------------------------------------------------------
// Parameters

int model_init_params(model *m, uint64_t seed) {
    float *host = malloc(m->n_params * sizeof(float));
    TRY_ALLOC(host);
    rng r;
    rng_seed(&r, rng_mix(seed, 0x1417));
    // Forward layer order so that the draw sequence does not depend on the buffer layout.
    for (int i = 0; i < m->n_layers; i++) {
        model_layer *l = &m->layers[i];
        if (!l->n_w) continue;
        double fan_in, fan_out;
        if (l->type == LAYER_CONV) {
            double rs = (double)l->w_shape[2] * l->w_shape[3];
            fan_in = l->w_shape[1] * rs, fan_out = l->w_shape[0] * rs;
        } else {
            fan_in = (double)l->w_shape[1], fan_out = (double)l->w_shape[0];
        }
        float limit = (float)sqrt(6.0 / (fan_in + fan_out));  // Glorot (Xavier) uniform
        for (size_t k = 0; k < l->n_w; k++) host[l->w_off + k] = (2.0f * rng_uniform(&r) - 1.0f) * limit;
        for (size_t k = 0; k < l->n_b; k++) host[l->b_off + k] = 0.0f;
    }
    int st = m->be->ops->upload(m->be->ctx, m->params, host, m->n_params * sizeof(float));
    free(host);
    return st;
}

int model_param_tensor(const model *m, int i, const char **layer_name, int *is_bias, size_t *offset, int *ndim,
                       int64_t shape[4]) {
    int k = 0;
    for (int li = 0; li < m->n_layers; li++) {
        const model_layer *l = &m->layers[li];
        if (!l->n_w) continue;
        for (int b = 0; b < 2; b++, k++) {
            if (k != i) continue;
            *layer_name = l->name;
            *is_bias = b;
            *offset = b ? l->b_off : l->w_off;
            if (b) {
                *ndim = 1;
                shape[0] = (int64_t)l->n_b;
            } else {
                *ndim = l->w_ndim;
                for (int d = 0; d < l->w_ndim; d++) shape[d] = l->w_shape[d];
            }
            return k;
        }
    }
    return k;  // i < 0 or past the end: the number of tensors
}

// ---------------------------------------------------------------------------------------------------------
// Forward and backward

int model_forward(model *m, int n, int backward) {
    if (backward && n >= 1 && n <= m->max_batch) m->train_batch = n;  // its conv plans stay cached
    TRY(model_set_batch(m, n));
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    const float *in = m->x;
    for (int i = 0; i < m->n_layers; i++) {
        model_layer *l = &m->layers[i];
        const float *w = m->params + l->w_off, *b = m->params + l->b_off;
        if (m->layer_hook) TRY(m->layer_hook(m->layer_hook_arg, 0, i, 1));
        switch (l->type) {
        case LAYER_CONV: TRY(o->conv_forward(ctx, &l->conv, in, w, b, l->y, m->workspace)); break;
        case LAYER_MAXPOOL: TRY(o->pool_forward(ctx, &l->pool, in, l->y, l->argmax)); break;
        case LAYER_DENSE: TRY(o->dense_forward(ctx, n, l->in_c, l->out_c, l->act, in, w, b, l->y)); break;
        case LAYER_SOFTMAX: {
            // Label smoothing is a training objective: evaluation reports the plain cross-entropy.
            float *dlogits = backward ? m->layers[i - 1].dy : NULL;
            const float smoothing = backward ? m->label_smoothing : 0.0f;
            TRY(o->softmax_xent(ctx, n, m->classes, in, m->labels, smoothing, dlogits, m->loss_acc, m->correct_acc));
            break;
        }
        }
        if (m->layer_hook) TRY(m->layer_hook(m->layer_hook_arg, 0, i, 0));
        in = l->y;
    }
    return ST_OK;
}

int model_backward(model *m, int n, grad_ready_fn on_ready, void *arg) {
    if (n != m->cur_batch) return ERR(ST_RUNTIME, "model_backward: batch %d, forward ran %d", n, m->cur_batch);
    const backend_ops *o = m->be->ops;
    void *ctx = m->be->ctx;
    for (int i = m->n_layers - 2; i >= 0; i--) {  // the softmax layer already wrote dlogits
        model_layer *l = &m->layers[i];
        const float *in = i > 0 ? m->layers[i - 1].y : m->x;
        float *din = i > 0 ? m->layers[i - 1].dy : NULL;
        const float *w = m->params + l->w_off;
        float *gw = m->grads + l->w_off, *gb = m->grads + l->b_off;
        if (m->layer_hook) TRY(m->layer_hook(m->layer_hook_arg, 1, i, 1));
        switch (l->type) {
        case LAYER_CONV: TRY(o->conv_backward(ctx, &l->conv, in, w, l->y, l->dy, din, gw, gb, m->workspace)); break;
        case LAYER_MAXPOOL:
            if (din) TRY(o->pool_backward(ctx, &l->pool, l->dy, l->argmax, din));
            break;
        case LAYER_DENSE:
            TRY(o->dense_backward(ctx, n, l->in_c, l->out_c, l->act, in, w, l->y, l->dy, din, gw, gb));
            break;
        }
        if (m->layer_hook) TRY(m->layer_hook(m->layer_hook_arg, 1, i, 0));
        if (l->n_w && on_ready) on_ready(arg, l->b_off + l->n_b);
    }
    return ST_OK;
}
