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

// The activations' config names (PyTorch's, but linear; leaky is Darknet's), one place.
static const char *const act_names[ACT_COUNT] = {
    [ACT_NONE] = "linear", [ACT_RELU] = "relu",   [ACT_LEAKY] = "leaky",         [ACT_RELU6] = "relu6",
    [ACT_SIGMOID] = "sigmoid", [ACT_SILU] = "silu", [ACT_HARDSWISH] = "hardswish", [ACT_GELU] = "gelu",
};

const char *layer_act_name(int act) { return act_known(act) ? act_names[act] : act_names[ACT_NONE]; }

int layer_act_find(const char *name) {
    for (int a = 0; a < ACT_COUNT; a++)
        if (strcmp(act_names[a], name) == 0) return a;
    return -1;
}

const char *layer_act_names(void) {
    static char buf[128];
    if (!buf[0]) {
        size_t used = 0;
        for (int a = 0; a < ACT_COUNT && used < sizeof buf; a++)
            used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%s", a ? ", " : "", act_names[a]);
    }
    return buf;
}

// ---------------------------------------------------------------------------------------------------------
// The registry printed (--list-layers)

static const char *inputs_name(int rule) {
    return rule == LAYER_IN_REFS ? "refs" : rule == LAYER_IN_PREV_REFS ? "previous+refs" : "previous";
}

static const char *key_type_name(int type) {
    return type == LK_DOUBLE ? "double" : type == LK_ACT ? "activation" : type == LK_REFS ? "refs" : "int";
}

// One key as people read it: `name` (default; range): doc
static void key_text(FILE *f, const layer_key *k, int markdown) {
    const char *q = markdown ? "`" : "";
    fprintf(f, "%s%s%s (", q, k->name, q);
    if (k->required) fprintf(f, "required");
    else if (k->type == LK_ACT) fprintf(f, "%s", layer_act_name((int)k->def));
    else if (k->type != LK_REFS && k->def < k->lo) fprintf(f, "unset");
    else fprintf(f, "%.10g", k->def);
    if (k->type == LK_ACT) fprintf(f, "; %s", layer_act_names());
    else if (k->type == LK_REFS && k->lo == k->hi) fprintf(f, "; %.10g earlier layer", k->lo);
    else if (k->type == LK_REFS) fprintf(f, "; %.10g to %.10g earlier layers", k->lo, k->hi);
    else fprintf(f, "; %.10g to %.10g", k->lo, k->hi);
    fprintf(f, ")%s%s", k->doc ? ": " : "", k->doc ? k->doc : "");
}

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void kind_json(FILE *f, const layer_kind *k) {
    fprintf(f, "{\"section\":");
    json_string(f, k->section);
    fprintf(f, ",\"prefix\":");
    json_string(f, k->prefix ? k->prefix : k->section);
    fprintf(f, ",\"terminal\":%s,\"inputs\":\"%s\",\"doc\":", k->flags & LAYER_TERMINAL ? "true" : "false",
            inputs_name(k->inputs));
    json_string(f, k->doc);
    fprintf(f, ",\"keys\":[");
    for (int j = 0; j < k->n_keys; j++) {
        const layer_key *key = &k->keys[j];
        fprintf(f, "%s{\"name\":", j ? "," : "");
        json_string(f, key->name);
        fprintf(f, ",\"type\":\"%s\",\"required\":%s,\"default\":", key_type_name(key->type),
                key->required ? "true" : "false");
        if (key->required || (key->type != LK_REFS && key->type != LK_ACT && key->def < key->lo)) fprintf(f, "null");
        else if (key->type == LK_ACT) json_string(f, layer_act_name((int)key->def));
        else fprintf(f, "%.17g", key->def);
        fprintf(f, ",\"min\":%.17g,\"max\":%.17g,\"doc\":", key->lo, key->hi);
        json_string(f, key->doc);
        fprintf(f, "}");
    }
    fprintf(f, "]}");
}

void layer_kinds_print(FILE *f, int format) {
    if (format == LAYER_LIST_JSON) fprintf(f, "[");
    if (format == LAYER_LIST_MARKDOWN)
        fprintf(f, "| section | names | what it is | keys (default; range): meaning |\n|---|---|---|---|\n");
    for (int t = 1; t < LAYER_KIND_COUNT; t++) {
        const layer_kind *k = g_kinds[t];
        const char *prefix = k->prefix ? k->prefix : k->section;
        if (format == LAYER_LIST_JSON) {
            fprintf(f, "%s\n", t > 1 ? "," : "");
            kind_json(f, k);
            continue;
        }
        if (format == LAYER_LIST_MARKDOWN) {
            fprintf(f, "| `[%s]` | ", k->section);
            if (k->flags & LAYER_TERMINAL) fprintf(f, "`%s` | ", k->section);
            else fprintf(f, "`%s1`, `%s2`, … | ", prefix, prefix);
            fprintf(f, "%s | ", k->doc);
            for (int j = 0; j < k->n_keys; j++) {
                fprintf(f, "%s", j ? "; " : "");
                key_text(f, &k->keys[j], 1);
            }
            fprintf(f, "%s |\n", k->n_keys ? "" : "—");
            continue;
        }
        fprintf(f, "[%s]  names %s%s; input: %s\n  %s\n", k->section, k->flags & LAYER_TERMINAL ? "" : prefix,
                k->flags & LAYER_TERMINAL ? k->section : "1, 2, ...", inputs_name(k->inputs), k->doc);
        for (int j = 0; j < k->n_keys; j++) {
            fprintf(f, "  ");
            key_text(f, &k->keys[j], 0);
            fprintf(f, "\n");
        }
    }
    if (format == LAYER_LIST_JSON) fprintf(f, "\n]\n");
}
