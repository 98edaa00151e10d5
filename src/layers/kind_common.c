// kind_common.c — what every layer kind's file calls: messages naming the layer (layer_err), its private
// state (layer_priv_new) and its activation where the op cannot fuse it (layer_act_*). Below the kinds and the
// registry (it refers to neither), so no file of src/layers/ depends on another in a loop: the registry refers
// to each kind, each kind to this file.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "../common.h"
#include "../layer.h"

// The config section of each kind: the second name of its kinds.def line (the kind's own .section).
static const char *section_of(int type) {
    static const char *const sections[LAYER_KIND_COUNT] = {
#define LAYER_KIND(E, s) [LAYER_##E] = #s,
#include "kinds.def"
#undef LAYER_KIND
    };
    return type > 0 && type < LAYER_KIND_COUNT ? sections[type] : "?";
}

int layer_err(const net_config *cfg, int i, const char *key, const char *fmt, ...) {
    const layer_cfg *l = &cfg->layers[i];
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (key)
        return ERR(ST_INPUT, "%s:%d: [%s] '%s': %s: %s", cfg->path, l->line, section_of(l->type), l->name, key, msg);
    return ERR(ST_INPUT, "%s:%d: [%s] '%s': %s", cfg->path, l->line, section_of(l->type), l->name, msg);
}

void *layer_priv_new(model_layer *l, size_t size) {
    free(l->priv);
    l->priv = calloc(1, size);
    return l->priv;
}

// ---------------------------------------------------------------------------------------------------------
// Activations a layer's op cannot fuse

static size_t out_elems(const model_layer *l, int n) { return (size_t)n * l->out_c * l->out_h * l->out_w; }

int layer_act_fused(const model_layer *l) { return act_from_output(l->act) ? l->act : ACT_NONE; }

void *layer_act_out(model_layer *l) { return l->pre ? l->pre : l->y; }

int layer_act_forward(model *m, model_layer *l, int n) {
    if (!l->pre) return ST_OK;
    return backend_act_forward(m->be, out_elems(l, n), l->act, l->pre, l->y);
}

int layer_act_backward(model *m, model_layer *l, int n) {
    if (!l->pre) return ST_OK;
    return backend_act_backward_input(m->be, out_elems(l, n), l->act, l->pre, l->dy, l->dy);
}
