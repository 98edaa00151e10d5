// conv.c — [conv]: 2-D convolution with fused bias (optional: bias=0) and activation (backend conv_* ops; cuDNN
// on CUDA).
//
// Conv plans per batch size. Training uses one batch size and evaluation usually others (eval_batch and each
// rank's smaller last batch); preparing a conv (cuDNN algorithm search on the GPU) is too slow to redo at every
// switch, so each size keeps its plan, up to MODEL_MAX_PLANS per layer. Slot 0 is max_batch, made by create (its
// need sized the workspace): the training batch or eval_batch, whichever is larger. When the cache is full, the
// least recently used plan goes, never slot 0 nor the training batch's (m->train_batch): losing that would
// re-plan at the next eager training step, and a fresh search may pick another algorithm than the one a captured
// CUDA graph replays (or, if it fell just before a capture, run conv_prepare inside it, which is refused).
// Slots 1.. are kept most recently used first.
#include <string.h>

#include "../common.h"
#include "../layer.h"

_Static_assert(MODEL_MAX_PLANS >= 3, "slot 0, the training batch's plan and one more");

typedef struct conv_priv {
    int cur;                           // plans[cur]: the plan of the current batch size
    conv_desc plans[MODEL_MAX_PLANS];  // prepared plans per batch size; [0] is max_batch
    int n_plans;
} conv_priv;

static const layer_key keys[] = {
    {"filters", LK_INT, offsetof(layer_cfg, filters), 0, 1, 65536, 1, NULL},
    {"size", LK_INT, offsetof(layer_cfg, size), 3, 1, 1024, 0, "kernel size×size"},
    {"stride", LK_INT, offsetof(layer_cfg, stride), 1, 1, 1024, 0, NULL},
    {"pad", LK_INT, offsetof(layer_cfg, pad), 0, 0, 1024, 0, "zeros on each side"},
    {"groups", LK_INT, offsetof(layer_cfg, groups), 1, 1, 65536, 0,
     "input channels and filters split into this many groups, a filter seeing only its group's channels (both "
     "divisible by it; groups = input channels: depthwise); weights [filters, channels/groups, size, size]"},
    {"dilation", LK_INT, offsetof(layer_cfg, dilation), 1, 1, 1024, 0,
     "spacing of the kernel's taps: it spans (size - 1)·dilation + 1 pixels"},
    {"activation", LK_ACT, offsetof(layer_cfg, act), ACT_RELU, 0, 0, 0, NULL},
    {"bias", LK_INT, offsetof(layer_cfg, bias), 1, 0, 1, 0, "0: no bias and no `<name>.bias` tensor (PyTorch's bias=False), for a conv followed by a normalisation"},
};

// A layer_cfg built in code rather than parsed may leave them 0: read as 1, as conv_desc_init does.
static int conv_groups(const layer_cfg *l) { return l->groups > 0 ? l->groups : 1; }
static int conv_dilation(const layer_cfg *l) { return l->dilation > 0 ? l->dilation : 1; }

static int conv_shape(const net_config *cfg, int i, const layer_shape *in, int n_in, layer_shape *out,
                      long long *n_params) {
    (void)n_in;
    const layer_cfg *l = &cfg->layers[i];
    if (!in->spatial) return layer_err(cfg, i, NULL, "after a dense layer: the input is no longer spatial");
    long long h = in->h, w = in->w;
    const int groups = conv_groups(l), dil = conv_dilation(l);
    if (in->c % groups)
        return layer_err(cfg, i, "groups", "the %d input channels are not divisible by groups=%d", in->c, groups);
    if (l->filters % groups)
        return layer_err(cfg, i, "groups", "filters=%d is not divisible by groups=%d", l->filters, groups);
    const long long span = (long long)(l->size - 1) * dil + 1;  // the kernel's extent
    if (h + 2LL * l->pad < span || w + 2LL * l->pad < span)
        return layer_err(cfg, i, NULL, "impossible shape: kernel %dx%d (dilation %d, pad %d) on a %lldx%lld input",
                         l->size, l->size, dil, l->pad, h, w);
    if (l->pad >= span)
        return layer_err(cfg, i, NULL, "pad %d must be smaller than the kernel's extent %lld (size %d, dilation %d)",
                         l->pad, span, l->size, dil);
    out->c = l->filters;
    out->h = (int)((h + 2LL * l->pad - span) / l->stride + 1);
    out->w = (int)((w + 2LL * l->pad - span) / l->stride + 1);
    out->spatial = 1;
    *n_params = (long long)l->filters * (in->c / groups) * l->size * l->size + (l->bias ? l->filters : 0);
    return ST_OK;
}

static int conv_create(model *m, model_layer *l, const layer_cfg *lc, size_t *workspace) {
    conv_desc d = {.n = m->max_batch, .c = l->in_c, .h = l->in_h, .w = l->in_w, .k = lc->filters, .r = lc->size,
                   .s = lc->size, .stride = lc->stride, .pad = lc->pad, .groups = lc->groups,
                   .dilation = lc->dilation, .act = layer_act_fused(l)};
    TRY(conv_desc_init(&d, l->name));
    conv_priv *p = layer_priv_new(l, sizeof *p);
    TRY_ALLOC(p);
    p->plans[0] = d;
    p->n_plans = 1;
    const int cg = d.c / d.groups;  // each filter's input channels
    l->n_w = (size_t)d.k * cg * d.r * d.s;
    l->n_b = lc->bias ? (size_t)d.k : 0;
    l->w_ndim = 4;
    l->w_shape[0] = d.k, l->w_shape[1] = cg, l->w_shape[2] = d.r, l->w_shape[3] = d.s;
    TRY(backend_conv_prepare(m->be, &p->plans[0], workspace));
    p->cur = 0;
    return ST_OK;
}

static void conv_destroy(model *m, model_layer *l) {
    conv_priv *p = l->priv;
    if (!p) return;
    for (int i = 0; i < p->n_plans; i++) backend_conv_release(m->be, &p->plans[i]);
    p->n_plans = 0;
}

static int conv_plan_slot(const conv_priv *p, int n) {
    for (int i = 0; i < p->n_plans; i++)
        if (p->plans[i].n == n) return i;
    return -1;
}

// A free slot, else the least recently used plan other than slot 0 and the training batch's (released).
static int conv_plan_evict(model *m, conv_priv *p) {
    if (p->n_plans < MODEL_MAX_PLANS) return p->n_plans++;
    int i = MODEL_MAX_PLANS - 1;
    if (p->plans[i].n == m->train_batch) i--;
    backend_conv_release(m->be, &p->plans[i]);
    return i;
}

static int conv_set_batch(model *m, model_layer *l, int n) {
    conv_priv *p = l->priv;
    int i = conv_plan_slot(p, n);
    if (i < 0) {
        conv_desc d = p->plans[0];
        d.n = n;
        d.plan = NULL;
        TRY(conv_desc_init(&d, l->name));
        size_t ws = 0;
        TRY(backend_conv_prepare(m->be, &d, &ws));
        if (ws > m->workspace_bytes) {
            backend_conv_release(m->be, &d);  // in no slot: nothing else would release it
            return ERR(ST_RUNTIME, "%s: batch %d needs %zu workspace bytes, only %zu allocated", l->name, n, ws,
                       m->workspace_bytes);
        }
        i = conv_plan_evict(m, p);
        p->plans[i] = d;
    }
    if (i > 1) {  // most recently used first (after slot 0)
        const conv_desc d = p->plans[i];
        memmove(&p->plans[2], &p->plans[1], (size_t)(i - 1) * sizeof d);
        p->plans[1] = d;
        i = 1;
    }
    p->cur = i;
    return ST_OK;
}

static int conv_forward(model *m, model_layer *l, int n, int training) {
    (void)training;
    const conv_priv *p = l->priv;
    TRY(backend_conv_forward(m->be, &p->plans[p->cur], l->x[0], m->params + l->w_off,
                             l->n_b ? m->params + l->b_off : NULL, layer_act_out(l), m->workspace));
    return layer_act_forward(m, l, n);
}

static int conv_backward(model *m, model_layer *l, int n) {
    const conv_priv *p = l->priv;
    TRY(layer_act_backward(m, l, n));
    return backend_conv_backward(m->be, &p->plans[p->cur], l->x[0], m->params + l->w_off, layer_act_out(l), l->dy,
                                 l->dx[0], model_grad(m, l->w_off), l->n_b ? model_grad(m, l->b_off) : NULL,
                                 m->workspace);
}

static double conv_flops(const model_layer *l) {
    const conv_priv *p = l->priv;
    const conv_desc *d = &p->plans[p->cur];
    return 2.0 * d->k * (d->c / d->groups) * d->r * d->s * d->oh * d->ow;  // a filter sees c/groups channels
}

const layer_kind layer_kind_conv = {
    .section = "conv",
    .keys = keys,
    .n_keys = sizeof keys / sizeof keys[0],
    .doc = "2-D convolution with its bias and activation fused (PyTorch's Conv2d), grouped and dilated too",
    // a depthwise conv with two filters per channel, dilated and strided, then a grouped one
    .example = "[conv]\nfilters=6\nsize=3\nstride=2\npad=2\ndilation=2\ngroups=3\nactivation=linear\n"
               "[conv]\nfilters=4\nsize=3\npad=1\ngroups=2\nactivation=relu\n",
    .shape = conv_shape,
    .create = conv_create,
    .destroy = conv_destroy,
    .set_batch = conv_set_batch,
    .forward = conv_forward,
    .backward = conv_backward,
    .flops = conv_flops,
};
