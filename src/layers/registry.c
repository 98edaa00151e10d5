// registry.c — the table of layer kinds (from kinds.def): lookup by type and by section, a layer's inputs, the
// activation names. What the kinds themselves call is in kind_common.c, below them.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common.h"
#include "../layer.h"

#define LAYER_KIND(E, s) extern const layer_kind layer_kind_##s;
#include "kinds.def"
#undef LAYER_KIND

static const layer_kind *const g_kinds[LAYER_KIND_COUNT] = {
#define LAYER_KIND(E, s) [LAYER_##E] = &layer_kind_##s,
#include "kinds.def"
#undef LAYER_KIND
};

const layer_kind *layer_kind_of(int type) { return type > 0 && type < LAYER_KIND_COUNT ? g_kinds[type] : NULL; }

int layer_kind_find(const char *section) {
    for (int t = 1; t < LAYER_KIND_COUNT; t++)
        if (strcmp(g_kinds[t]->section, section) == 0) return t;
    return 0;
}

const char *layer_kind_sections(void) {
    static char buf[256];
    if (!buf[0]) {
        size_t used = 0;
        for (int t = 1; t < LAYER_KIND_COUNT && used < sizeof buf; t++)
            used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s", t > 1 ? ", " : "", g_kinds[t]->section);
    }
    return buf;
}

int layer_inputs(const net_config *cfg, int i, int idx[CFG_MAX_REFS + 1], int *n) {
    const layer_cfg *l = &cfg->layers[i];
    const layer_kind *k = layer_kind_of(l->type);
    *n = 0;
    if (k->inputs != LAYER_IN_REFS) idx[(*n)++] = i - 1;  // -1 for the first layer: the network input
    if (k->inputs == LAYER_IN_PREV) return ST_OK;
    const char *key = NULL;
    for (int j = 0; j < k->n_keys; j++)
        if (k->keys[j].type == LK_REFS) key = k->keys[j].name;
    if (l->n_refs < 1) return layer_err(cfg, i, NULL, "missing required key '%s'", key ? key : "layers");
    for (int r = 0; r < l->n_refs; r++) {
        int v = l->refs[r], at = v < 0 ? i + v : v;
        if (v >= 0 ? v >= i : at < 0)
            return layer_err(cfg, i, key, "%d does not name an earlier layer (%s; this is layer %d, counting from 0)",
                             v, v < 0 ? "-1 is the previous layer" : "an absolute index must be smaller", i);
        idx[(*n)++] = at;
    }
    return ST_OK;
}

const char *layer_act_name(int act) {
    switch (act) {
    case ACT_RELU: return "relu";
    case ACT_LEAKY: return "leaky";
    default: return "linear";
    }
}
