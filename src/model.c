// model.c — the layer graph built from a config through the layer registry (layer.h): parameters laid out in
// reverse layer order, activations and gradient buffers, forward and backward over the kinds, and the report of
// when gradient prefixes are final (for bucketed all-reduce).
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "layer.h"
#include "precision.h"

static size_t layer_out_elems(const model_layer *l) { return (size_t)l->out_c * l->out_h * l->out_w; }

static int model_set_batch(model *m, int n) {
    if (n < 1 || n > m->max_batch) return ERR(ST_RUNTIME, "batch %d outside [1, %d]", n, m->max_batch);
    if (n == m->cur_batch) return ST_OK;
    m->cur_batch = 0;  // until every layer has switched: after a failure midway no size is trusted
    for (int i = 0; i < m->n_layers; i++) {
        model_layer *l = &m->layers[i];
        if (l->kind->set_batch) TRY(l->kind->set_batch(m, l, n));
    }
    m->cur_batch = n;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Construction

// Layer i from its config: inputs, shapes (the kind's shape rule, as config_validate ran it), tensors.
static int layer_build(model *m, const net_config *cfg, int i, size_t *workspace) {
    const layer_cfg *lc = &cfg->layers[i];
    model_layer *l = &m->layers[i];
    l->type = lc->type;
    l->kind = layer_kind_of(lc->type);
    if (!l->kind) return ERR(ST_INPUT, "%s: unsupported layer type %d", lc->name, lc->type);
    l->act = lc->act;
    snprintf(l->name, sizeof l->name, "%s", lc->name);
    TRY(layer_inputs(cfg, i, l->in_idx, &l->n_in));
    layer_shape in[MODEL_MAX_IN], out = {0};
    for (int j = 0; j < l->n_in; j++) {
        const model_layer *pl = l->in_idx[j] < 0 ? NULL : &m->layers[l->in_idx[j]];
        in[j] = pl ? (layer_shape){pl->out_c, pl->out_h, pl->out_w, pl->out_spatial}
                   : (layer_shape){m->in_c, m->in_h, m->in_w, 1};
    }
    long long n_params = 0;
    TRY(l->kind->shape(cfg, i, in, l->n_in, &out, &n_params));
    l->in_c = in[0].c, l->in_h = in[0].h, l->in_w = in[0].w;
    l->out_c = out.c, l->out_h = out.h, l->out_w = out.w, l->out_spatial = out.spatial;
    size_t ws = 0;
    TRY(l->kind->create(m, l, lc, &ws));
    if (ws > *workspace) *workspace = ws;
    return ST_OK;
}

// An activation or gradient buffer of `bytes`, counted in m->act_bytes.
static int act_alloc(model *m, void **p, size_t bytes) {
    TRY(backend_alloc(m->be, p, bytes));
    m->act_bytes += bytes;
    return ST_OK;
}

// Activation and gradient buffers, and where each layer reads its inputs. The last reader of an output in
// forward order is the first in backward: it overwrites the producer's dy, the earlier readers add into it.
static int layer_buffers(model *m, int i, const int *readers_left) {
    model_layer *l = &m->layers[i];
    for (int j = 0; j < l->n_in; j++) {
        const int p = l->in_idx[j];
        l->x[j] = p < 0 ? m->x : m->layers[p].y;
        l->dx_accumulate[j] = p >= 0 && readers_left[p] > 0;
        for (int k = 0; k < j; k++)  // the same output twice ([shortcut] from=-1): the later slot adds
            if (l->in_idx[k] == p) l->dx_accumulate[j] = p >= 0;
    }
    if (l->kind->flags & LAYER_TERMINAL) return ST_OK;  // the loss keeps no activations
    const size_t bytes = (size_t)m->max_batch * layer_out_elems(l) * m->act_elem;
    if (!act_from_output(l->act)) TRY(act_alloc(m, &l->pre, bytes));
    const int p = l->in_idx[0];
    if ((l->kind->flags & LAYER_ALIAS) || ((l->kind->flags & LAYER_ALIAS_ONE) && l->n_in == 1)) {
        l->y = (void *)l->x[0];
        if (p >= 0 && !l->dx_accumulate[0]) {
            l->dy = m->layers[p].dy;  // its only reader: the gradient is the producer's own
            return ST_OK;
        }
    } else {
        TRY(act_alloc(m, &l->y, bytes));
        l->own_y = 1;
    }
    TRY(act_alloc(m, &l->dy, bytes));
    l->own_dy = 1;
    return ST_OK;
}

// A scratch gradient per input slot, as large as the largest input that another layer reads too.
static int scratch_buffers(model *m) {
    size_t need[MODEL_MAX_IN] = {0};
    for (int i = 0; i < m->n_layers; i++) {
        const model_layer *l = &m->layers[i];
        for (int j = 0; j < l->n_in; j++)
            if (l->dx_accumulate[j]) {
                size_t e = layer_out_elems(&m->layers[l->in_idx[j]]);
                if (e > need[j]) need[j] = e;
            }
    }
    for (int j = 0; j < MODEL_MAX_IN; j++)
        if (need[j])
            TRY(act_alloc(m, &m->dscratch[j], (size_t)m->max_batch * need[j] * m->act_elem));
    return ST_OK;
}

int model_create(model *m, backend *be, const net_config *cfg, int max_batch) {
    memset(m, 0, sizeof *m);
    m->be = be;
    m->max_batch = max_batch;
    m->in_c = cfg->channels, m->in_h = cfg->height, m->in_w = cfg->width;
    m->classes = cfg->classes;
    m->label_smoothing = (float)cfg->label_smoothing;
    m->round_to = precision_emulated(cfg->precision);
    m->act16 = backend_act_format(be);
    m->act_elem = backend_act_bytes(be);
    if (m->act16 && m->act16 != m->round_to)
        return ERR(ST_INPUT, "%s: activations held in %s need net.precision=%s (it is %s)", cfg->path,
                   precision_name(m->act16), precision_name(m->act16), precision_name(cfg->precision));
    m->loss_scale = 1.0f;
    m->rng_host.seed = cfg->seed;
    TRY(act_alloc(m, &m->x, (size_t)max_batch * m->in_c * m->in_h * m->in_w * m->act_elem));
    TRY(backend_alloc(be, (void **)&m->labels, (size_t)max_batch * sizeof(int32_t)));
    TRY(backend_alloc(be, (void **)&m->loss_acc, sizeof(double)));
    TRY(backend_alloc(be, (void **)&m->correct_acc, sizeof(int32_t)));

    size_t ws_max = 0;
    for (int i = 0; i < cfg->n_layers; i++) {
        m->n_layers = i + 1;  // model_destroy releases what the layers made so far
        TRY(layer_build(m, cfg, i, &ws_max));
    }
    if (m->n_layers < 2 || !(m->layers[m->n_layers - 1].kind->flags & LAYER_TERMINAL))
        return ERR(ST_INPUT, "%s: the last layer must be [softmax]", cfg->path);

    int readers_left[CFG_MAX_LAYERS] = {0};
    for (int i = 0; i < m->n_layers; i++)
        for (int j = 0; j < m->layers[i].n_in; j++)
            if (m->layers[i].in_idx[j] >= 0) readers_left[m->layers[i].in_idx[j]]++;
    for (int i = 0; i < m->n_layers; i++) {
        model_layer *l = &m->layers[i];
        for (int j = 0; j < l->n_in; j++)
            if (l->in_idx[j] >= 0) readers_left[l->in_idx[j]]--;
        TRY(layer_buffers(m, i, readers_left));
    }
    TRY(scratch_buffers(m));

    // Reverse layer order: the last layer's gradients come first in the buffer.
    size_t off = 0, soff = 0;
    for (int i = m->n_layers - 1; i >= 0; i--) {
        model_layer *l = &m->layers[i];
        l->w_off = off, off += l->n_w;
        l->b_off = off, off += l->n_b;
    }
    for (int i = 0; i < m->n_layers; i++) m->layers[i].s_off = soff, soff += m->layers[i].n_s;
    m->n_params = off;
    m->n_state = soff;
    TRY(backend_alloc(be, (void **)&m->params, (m->n_params ? m->n_params : 1) * sizeof(float)));
    TRY(backend_alloc(be, (void **)&m->grads, (m->n_params ? m->n_params : 1) * sizeof(float)));
    if (backend_is_grads16(be))
        TRY(backend_alloc(be, (void **)&m->grads16, (m->n_params ? m->n_params : 1) * sizeof(uint16_t)));
    if (m->n_state) TRY(backend_alloc(be, (void **)&m->state, m->n_state * sizeof(float)));
    if (m->round_to) TRY(backend_alloc(be, (void **)&m->params_lp, (m->n_params ? m->n_params : 1) * sizeof(float)));
    // One workspace for all layers; smaller batches need no more than the largest.
    m->workspace_bytes = ws_max;
    if (ws_max) TRY(backend_alloc(be, &m->workspace, ws_max));
    m->cur_batch = max_batch;
    return ST_OK;
}

void model_destroy(model *m) {
    if (!m->be) return;
    for (int i = 0; i < m->n_layers; i++) {
        model_layer *l = &m->layers[i];
        if (l->kind && l->kind->destroy) l->kind->destroy(m, l);
        free(l->priv);
        l->priv = NULL;
        if (l->own_y) backend_free(m->be, l->y);
        if (l->own_dy) backend_free(m->be, l->dy);
        backend_free(m->be, l->pre);
    }
    for (int j = 0; j < MODEL_MAX_IN; j++) backend_free(m->be, m->dscratch[j]);
    backend_free(m->be, m->params);
    backend_free(m->be, m->grads);
    backend_free(m->be, m->grads16);
    backend_free(m->be, m->params_lp);
    backend_free(m->be, m->state);
    backend_free(m->be, m->workspace);
    backend_free(m->be, m->x);
    backend_free(m->be, m->labels);
    backend_free(m->be, m->loss_acc);
    backend_free(m->be, m->correct_acc);
    backend_free(m->be, m->rng_key);
    memset(m, 0, sizeof *m);
}

// ---------------------------------------------------------------------------------------------------------
// Parameters

// Glorot (Xavier) uniform weights from w_shape's fans (conv [k, c, r, s], dense [out, in]), zero biases.
static void init_default(const model_layer *l, rng *r, float *params) {
    if (!l->n_w) return;
    double rs = 1.0;
    for (int d = 2; d < l->w_ndim; d++) rs *= (double)l->w_shape[d];
    const double fan_in = (l->w_ndim > 1 ? (double)l->w_shape[1] : 1.0) * rs, fan_out = (double)l->w_shape[0] * rs;
    const float limit = (float)sqrt(6.0 / (fan_in + fan_out));
    for (size_t k = 0; k < l->n_w; k++) params[l->w_off + k] = (2.0f * rng_uniform(r) - 1.0f) * limit;
    for (size_t k = 0; k < l->n_b; k++) params[l->b_off + k] = 0.0f;
}

int model_init_params(model *m, uint64_t seed) {
    float *host = malloc((m->n_params + m->n_state + 1) * sizeof(float));
    TRY_ALLOC(host);
    float *state = host + m->n_params;
    memset(state, 0, m->n_state * sizeof(float));
    rng r;
    rng_seed(&r, rng_mix(seed, 0x1417));
    // Forward layer order so that the draw sequence does not depend on the buffer layout.
    for (int i = 0; i < m->n_layers; i++) {
        const model_layer *l = &m->layers[i];
        if (l->kind->init) l->kind->init(l, &r, host, state);
        else init_default(l, &r, host);
    }
    int st = backend_upload(m->be, m->params, host, m->n_params * sizeof(float));
    if (st == ST_OK && m->n_state) st = backend_upload(m->be, m->state, state, m->n_state * sizeof(float));
    free(host);
    return st;
}

int model_param_tensor(const model *m, int i, const char **layer_name, int *is_bias, size_t *offset, int *ndim,
                       int64_t shape[4]) {
    int k = 0;
    for (int li = 0; li < m->n_layers; li++) {
        const model_layer *l = &m->layers[li];
        if (!l->n_w) continue;
        for (int b = 0; b < (l->n_b ? 2 : 1); b++, k++) {
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

int model_state_tensor(const model *m, int i, model_state_info *info) {
    int k = 0;
    for (int li = 0; li < m->n_layers; li++) {
        const model_layer *l = &m->layers[li];
        if (!l->kind->state_tensor) continue;
        const int n = l->kind->state_tensor(l, -1, NULL);
        if (i >= k && i < k + n) {
            memset(info, 0, sizeof *info);
            l->kind->state_tensor(l, i - k, info);
            info->layer = l->name;
            return i;
        }
        k += n;
    }
    return k;
}

double model_train_flops_per_sample(const model *m) {
    double f = 0;
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].kind->flops) f += m->layers[i].kind->flops(&m->layers[i]);
    return 3.0 * f;
}

// ---------------------------------------------------------------------------------------------------------
// Forward and backward

// ---- net.precision's emulation (docs/precision.md): where the rule of precision_layer_rule holds a value in the
// compute type, it is rounded to it here, right after the op that made it; the ops compute in fp32. With 16-bit
// activation buffers (m->act16: the backend's ops store their outputs rounded) only the weight copy is rounded here.

static int round_in_place(model *m, void *p, size_t count) {
    return count ? backend_round_to(m->be, count, m->round_to, p, p) : ST_OK;
}

// 1: activations are float32 buffers holding values the model rounds (the emulation); 0: none to round (fp32, or
// the buffers are 16-bit)
static int rounds_activations(const model *m) { return m->round_to && !m->act16; }

// Before a forward: the weight copy the passes read (conv and dense weights and biases rounded, batch norm's as
// they are) and the network input in the compute type.
static int lowp_forward_begin(model *m, int n) {
    TRY(backend_copy(m->be, m->params_lp, m->params, m->n_params * sizeof(float)));
    for (int i = 0; i < m->n_layers; i++) {
        const model_layer *l = &m->layers[i];
        if (l->n_w && (precision_layer_rule(l->type) & PREC_HOLD_WEIGHTS))
            TRY(round_in_place(m, m->params_lp + l->w_off, l->n_w + l->n_b));  // weight, then bias (model.h)
    }
    return rounds_activations(m) ? round_in_place(m, m->x, (size_t)n * m->in_c * m->in_h * m->in_w) : ST_OK;
}

// After layer l's forward: its output (and pre-activation) in the compute type; after the loss of a training
// forward, its gradient (scaled by softmax_xent: fp16 loss scaling) in the compute type.
static int lowp_forward_layer(model *m, model_layer *l, int n) {
    if (!rounds_activations(m)) return ST_OK;
    if (l->kind->flags & LAYER_TERMINAL) {
        if (!m->training) return ST_OK;
        model_layer *in = &m->layers[l->in_idx[0]];
        return round_in_place(m, in->dy, (size_t)n * layer_out_elems(in));
    }
    if (!(precision_layer_rule(l->type) & PREC_HOLD_OUTPUT)) return ST_OK;
    if (l->pre) TRY(round_in_place(m, l->pre, (size_t)n * layer_out_elems(l)));
    return l->own_y ? round_in_place(m, l->y, (size_t)n * layer_out_elems(l)) : ST_OK;  // an alias: rounded already
}

// After layer l's backward: the gradients it wrote for its inputs in the compute type (parameter gradients stay
// fp32: the ops accumulate them in fp32 and write fp32).
static int lowp_backward_layer(model *m, const model_layer *l, int n) {
    if (!rounds_activations(m) || !(precision_layer_rule(l->type) & PREC_HOLD_OUTPUT)) return ST_OK;
    for (int j = 0; j < l->n_in; j++)
        if (l->dx[j]) TRY(round_in_place(m, l->dx[j], (size_t)n * layer_out_elems(&m->layers[l->in_idx[j]])));
    return ST_OK;
}

static int forward_layers(model *m, int n) {
    for (int i = 0; i < m->n_layers; i++) {
        model_layer *l = &m->layers[i];
        if (m->layer_hook) TRY(m->layer_hook(m->layer_hook_arg, 0, i, 1));
        TRY(l->kind->forward(m, l, n, m->training));
        TRY(lowp_forward_layer(m, l, n));
        if (m->layer_hook) TRY(m->layer_hook(m->layer_hook_arg, 0, i, 0));
    }
    return ST_OK;
}

int model_forward(model *m, int n, int training) {
    if (training && n >= 1 && n <= m->max_batch) m->train_batch = n;  // its conv plans stay cached
    TRY(model_set_batch(m, n));
    m->training = training != 0;
    if (m->training) m->micro = m->micro_next++;
    if (!m->round_to) return forward_layers(m, n);
    TRY(lowp_forward_begin(m, n));
    float *master = m->params;  // the kinds read m->params: the rounded copy for the pass, the master again after
    m->params = m->params_lp;
    const int st = forward_layers(m, n);
    m->params = master;
    return st;
}

int model_set_rng(model *m, int rank, int64_t step) {
    m->micro_next = 0;
    m->rng_host.rank = rank;
    m->rng_host.step = step;
    if (!m->rng_key) return ST_OK;
    return backend_upload(m->be, m->rng_key, &m->rng_host, sizeof m->rng_host);
}

static int backward_layers(model *m, int n, grad_ready_fn on_ready, void *arg) {
    for (int i = m->n_layers - 1; i >= 0; i--) {
        model_layer *l = &m->layers[i];
        if (!l->kind->backward) continue;  // the loss: its forward wrote its input's gradient
        for (int j = 0; j < l->n_in; j++) {
            const int p = l->in_idx[j];
            l->dx[j] = p < 0 ? NULL : l->dx_accumulate[j] ? m->dscratch[j] : m->layers[p].dy;
        }
        if (m->layer_hook) TRY(m->layer_hook(m->layer_hook_arg, 1, i, 1));
        TRY(l->kind->backward(m, l, n));
        TRY(lowp_backward_layer(m, l, n));
        for (int j = 0; j < l->n_in; j++)
            if (l->dx[j] && l->dx_accumulate[j]) {
                const model_layer *p = &m->layers[l->in_idx[j]];
                TRY(backend_add_act(m->be, (size_t)n * layer_out_elems(p), ACT_NONE, l->dx[j], p->dy, p->dy));
                if (rounds_activations(m)) TRY(round_in_place(m, p->dy, (size_t)n * layer_out_elems(p)));  // the sum
            }
        if (m->layer_hook) TRY(m->layer_hook(m->layer_hook_arg, 1, i, 0));
        if (l->n_w && on_ready) TRY(on_ready(arg, l->b_off + l->n_b));
    }
    return ST_OK;
}

int model_backward(model *m, int n, grad_ready_fn on_ready, void *arg) {
    if (n != m->cur_batch) return ERR(ST_RUNTIME, "model_backward: batch %d, forward ran %d", n, m->cur_batch);
    if (!m->round_to) return backward_layers(m, n, on_ready, arg);
    float *master = m->params;  // the forward's rounded weight copy, as in model_forward
    m->params = m->params_lp;
    const int st = backward_layers(m, n, on_ready, arg);
    m->params = master;
    return st;
}
