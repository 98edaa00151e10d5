// config.c — INI configuration (libinih), Darknet-like: [net], [data], [parallel], then one section per layer.
//
// libinih reports keys, not section headers, and layer sections repeat ([conv] twice). So the file is fed to
// ini_parse_stream through our own line reader, which sees every header first: it opens a new layer (with its
// defaults) for each layer header, so even a section without keys ([softmax], [maxpool]) becomes a layer, and
// it rejects over-long lines instead of letting libinih split them silently.
#include "config.h"
#include "layer.h"

#include <ctype.h>
#include <stdarg.h>
#include <stddef.h>
#include <errno.h>
#include <ini.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "common.h"
#include "fileio.h"

// ---------------------------------------------------------------------------------------------------------
// Keys. One table says, for every key, its section, type, range and where it lives in net_config; parsing,
// --set and printing all go through it, so a key exists in one place.

enum key_type { K_INT, K_DOUBLE, K_U64, K_STR, K_ENUM };
enum sect_kind { S_NET = 1, S_DATA, S_PARALLEL };

typedef struct key_def {
    int sect;
    const char *name;
    int type;
    size_t off;           // offset in net_config
    size_t size;          // K_STR: buffer size
    double lo, hi;        // numeric range (inclusive)
    const char *choices;  // K_ENUM: "a|b|c", stored as 1-based index unless `enum_base0`; K_INT: a word taken
                          // instead of a number, stored as 0 (outside the range): bucket_kb=auto
    int enum_base0;
} key_def;

#define OFF(f) offsetof(net_config, f)
#define SZ(f) sizeof(((net_config *)0)->f)
static const key_def g_keys[] = {
    {S_NET, "batch", K_INT, OFF(batch), 0, 1, 1 << 20, NULL, 0},
    {S_NET, "epochs", K_INT, OFF(epochs), 0, 1, 100000, NULL, 0},
    {S_NET, "optimizer", K_ENUM, OFF(optimizer), 0, 0, 0, "adam|sgd|adamw", 0},
    {S_NET, "lr", K_DOUBLE, OFF(lr), 0, 1e-30, 1e30, NULL, 0},
    {S_NET, "schedule", K_ENUM, OFF(schedule), 0, 0, 0, "constant|step|cosine|onecycle", 0},
    {S_NET, "warmup_epochs", K_DOUBLE, OFF(warmup_epochs), 0, 0, 100000, NULL, 0},
    {S_NET, "min_lr", K_DOUBLE, OFF(min_lr), 0, 0, 1e30, NULL, 0},
    {S_NET, "steps", K_STR, OFF(lr_steps), SZ(lr_steps), 0, 0, NULL, 0},
    {S_NET, "gamma", K_DOUBLE, OFF(gamma), 0, 0, 1e6, NULL, 0},
    {S_NET, "beta1", K_DOUBLE, OFF(beta1), 0, 0, 0.999999, NULL, 0},
    {S_NET, "beta2", K_DOUBLE, OFF(beta2), 0, 0, 0.999999999, NULL, 0},
    {S_NET, "eps", K_DOUBLE, OFF(eps), 0, 1e-30, 1, NULL, 0},
    {S_NET, "momentum", K_DOUBLE, OFF(momentum), 0, 0, 0.999999, NULL, 0},
    {S_NET, "nesterov", K_INT, OFF(nesterov), 0, 0, 1, NULL, 0},
    {S_NET, "weight_decay", K_DOUBLE, OFF(weight_decay), 0, 0, 1, NULL, 0},
    {S_NET, "no_decay", K_STR, OFF(no_decay), SZ(no_decay), 0, 0, NULL, 0},
    {S_NET, "accum_steps", K_INT, OFF(accum_steps), 0, 1, 1024, NULL, 0},
    {S_NET, "label_smoothing", K_DOUBLE, OFF(label_smoothing), 0, 0, 0.999, NULL, 0},
    {S_NET, "clip_grad_norm", K_DOUBLE, OFF(clip_grad_norm), 0, 1e-30, 1e30, NULL, 0},
    {S_NET, "seed", K_U64, OFF(seed), 0, 0, 0, NULL, 0},
    {S_NET, "channels", K_INT, OFF(channels), 0, 1, 4096, NULL, 0},
    {S_NET, "height", K_INT, OFF(height), 0, 1, 16384, NULL, 0},
    {S_NET, "width", K_INT, OFF(width), 0, 1, 16384, NULL, 0},
    {S_NET, "classes", K_INT, OFF(classes), 0, 2, 100000, NULL, 0},
    {S_NET, "backend", K_STR, OFF(backend), SZ(backend), 0, 0, "cpu|cuda", 0},
    {S_NET, "threads", K_INT, OFF(threads), 0, 0, 1024, NULL, 0},
    {S_NET, "tf32", K_INT, OFF(tf32), 0, 0, 1, NULL, 0},
    {S_NET, "precision", K_ENUM, OFF(precision), 0, 0, 0, "fp32|tf32|bf16|fp16", 1},
    {S_NET, "layout", K_ENUM, OFF(layout), 0, 0, 0, "nchw|nhwc", 1},
    {S_NET, "act_storage", K_ENUM, OFF(act_storage), 0, 0, 0, "auto|fp32|compute", 1},
    {S_NET, "loss_scale_init", K_DOUBLE, OFF(loss_scale_init), 0, 1.0 / 65536, 16777216, NULL, 0},
    {S_NET, "loss_scale_growth_interval", K_INT, OFF(loss_scale_growth_interval), 0, 1, 1 << 30, NULL, 0},
    {S_NET, "deterministic", K_INT, OFF(deterministic), 0, 0, 1, NULL, 0},
    {S_NET, "cuda_graph", K_INT, OFF(cuda_graph), 0, 0, 1, NULL, 0},
    {S_NET, "eval_batch", K_INT, OFF(eval_batch), 0, 1, 1 << 20, NULL, 0},
    {S_DATA, "format", K_ENUM, OFF(data_format), 0, 0, 0, "idx|cifar10|synthetic|folder|list|shards", 0},
    {S_DATA, "train_images", K_STR, OFF(train_images), SZ(train_images), 0, 0, NULL, 0},
    {S_DATA, "train_labels", K_STR, OFF(train_labels), SZ(train_labels), 0, 0, NULL, 0},
    {S_DATA, "test_images", K_STR, OFF(test_images), SZ(test_images), 0, 0, NULL, 0},
    {S_DATA, "test_labels", K_STR, OFF(test_labels), SZ(test_labels), 0, 0, NULL, 0},
    {S_DATA, "cifar_dir", K_STR, OFF(cifar_dir), SZ(cifar_dir), 0, 0, NULL, 0},
    {S_DATA, "train_limit", K_INT, OFF(train_limit), 0, 0, 1 << 30, NULL, 0},
    {S_DATA, "test_limit", K_INT, OFF(test_limit), 0, 0, 1 << 30, NULL, 0},
    {S_DATA, "train_dir", K_STR, OFF(train_dir), SZ(train_dir), 0, 0, NULL, 0},
    {S_DATA, "val_dir", K_STR, OFF(val_dir), SZ(val_dir), 0, 0, NULL, 0},
    {S_DATA, "test_dir", K_STR, OFF(test_dir), SZ(test_dir), 0, 0, NULL, 0},
    {S_DATA, "train_list", K_STR, OFF(train_list), SZ(train_list), 0, 0, NULL, 0},
    {S_DATA, "val_list", K_STR, OFF(val_list), SZ(val_list), 0, 0, NULL, 0},
    {S_DATA, "test_list", K_STR, OFF(test_list), SZ(test_list), 0, 0, NULL, 0},
    {S_DATA, "names", K_STR, OFF(names), SZ(names), 0, 0, NULL, 0},
    {S_DATA, "train_shards", K_STR, OFF(train_shards), SZ(train_shards), 0, 0, NULL, 0},
    {S_DATA, "val_shards", K_STR, OFF(val_shards), SZ(val_shards), 0, 0, NULL, 0},
    {S_DATA, "test_shards", K_STR, OFF(test_shards), SZ(test_shards), 0, 0, NULL, 0},
    {S_DATA, "shuffle_buffer", K_INT, OFF(shuffle_buffer), 0, 0, 1 << 24, NULL, 0},
    {S_DATA, "val_fraction", K_DOUBLE, OFF(val_fraction), 0, 0, 0.9, NULL, 0},
    {S_DATA, "workers", K_INT, OFF(workers), 0, 0, 1024, NULL, 0},
    {S_DATA, "prefetch", K_INT, OFF(prefetch), 0, 1, 64, NULL, 0},
    {S_DATA, "max_pixels", K_INT, OFF(max_pixels), 0, 1, 2147483647, NULL, 0},
    {S_DATA, "skip_bad", K_INT, OFF(skip_bad), 0, 0, 1, NULL, 0},
    {S_DATA, "max_bad", K_INT, OFF(max_bad), 0, 0, 1 << 30, NULL, 0},
    {S_DATA, "resize", K_INT, OFF(resize), 0, 0, 65536, NULL, 0},
    {S_DATA, "random_resized_crop", K_INT, OFF(random_resized_crop), 0, 0, 1, NULL, 0},
    {S_DATA, "rrc_scale", K_STR, OFF(rrc_scale), SZ(rrc_scale), 0, 0, NULL, 0},
    {S_DATA, "rrc_ratio", K_STR, OFF(rrc_ratio), SZ(rrc_ratio), 0, 0, NULL, 0},
    {S_DATA, "dct_scaling", K_INT, OFF(dct_scaling), 0, 0, 1, NULL, 0},
    {S_DATA, "crop_pad", K_INT, OFF(crop_pad), 0, 0, 16383, NULL, 0},
    {S_DATA, "flip", K_INT, OFF(flip), 0, 0, 1, NULL, 0},
    {S_DATA, "normalize", K_ENUM, OFF(normalize), 0, 0, 0, "0|1|imagenet", 1},
    {S_DATA, "mean", K_STR, OFF(mean), SZ(mean), 0, 0, NULL, 0},
    {S_DATA, "std", K_STR, OFF(std), SZ(std), 0, 0, NULL, 0},
    {S_PARALLEL, "comm", K_STR, OFF(comm), SZ(comm), 0, 0, "mpi|nccl", 0},
    {S_PARALLEL, "bucket_kb", K_INT, OFF(bucket_kb), 0, 1, 1 << 20, "auto", 0},
    {S_PARALLEL, "overlap", K_INT, OFF(overlap), 0, 0, 2, NULL, 0},
    {S_PARALLEL, "compress", K_ENUM, OFF(compress), 0, 0, 0, "none|bf16|fp16|powersgd", 1},
    {S_PARALLEL, "powersgd_rank", K_INT, OFF(powersgd_rank), 0, 1, 1024, NULL, 0},
    {S_PARALLEL, "powersgd_start_step", K_INT, OFF(powersgd_start_step), 0, 0, 1 << 30, NULL, 0},
    {S_PARALLEL, "hierarchy", K_ENUM, OFF(hierarchy), 0, 0, 0, "flat|node|auto", 1},
    {S_PARALLEL, "force_allreduce", K_INT, OFF(force_allreduce), 0, 0, 1, NULL, 0},
    {S_PARALLEL, "scaling", K_ENUM, OFF(scaling), 0, 0, 0, "weak|strong", 0},
    {S_PARALLEL, "lr_scaling", K_ENUM, OFF(lr_scaling), 0, 0, 0, "none|linear", 1},
    {S_PARALLEL, "comm_timeout_s", K_DOUBLE, OFF(comm_timeout_s), 0, 0.1, 1e6, NULL, 0},
    {S_PARALLEL, "save_timeout_s", K_DOUBLE, OFF(save_timeout_s), 0, 0.1, 1e6, NULL, 0},
};
#define N_KEYS (int)(sizeof g_keys / sizeof g_keys[0])

static const char *g_sect_names[] = {"", "net", "data", "parallel"};

// ---------------------------------------------------------------------------------------------------------
// Defaults

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"

void config_defaults(net_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->batch = 64;
    cfg->epochs = 5;
    cfg->optimizer = OPT_ADAM;
    cfg->lr = 1e-3;
    cfg->beta1 = 0.9, cfg->beta2 = 0.999, cfg->eps = 1e-7;
    cfg->momentum = 0.9;
    cfg->schedule = SCHED_CONSTANT;
    cfg->accum_steps = 1;
    cfg->gamma = 0.1;
    cfg->seed = 42;
    cfg->classes = 10;
    snprintf(cfg->backend, sizeof cfg->backend, "cpu");
    cfg->cuda_graph = 1;
    cfg->loss_scale_init = 65536;            // PyTorch GradScaler: init_scale 2^16,
    cfg->loss_scale_growth_interval = 2000;  // growth_interval 2000
    cfg->eval_batch = 1000;
    cfg->data_format = DATA_IDX;
    cfg->prefetch = 2;
    cfg->max_pixels = 89478485;
    cfg->max_bad = 100;
    cfg->dct_scaling = 1;
    snprintf(cfg->rrc_scale, sizeof cfg->rrc_scale, "0.08,1");
    snprintf(cfg->rrc_ratio, sizeof cfg->rrc_ratio, "0.75,1.3333333333333333");
    snprintf(cfg->train_images, sizeof cfg->train_images, "%s/train-images-idx3-ubyte.gz", FMNIST_DIR);
    snprintf(cfg->train_labels, sizeof cfg->train_labels, "%s/train-labels-idx1-ubyte.gz", FMNIST_DIR);
    snprintf(cfg->test_images, sizeof cfg->test_images, "%s/t10k-images-idx3-ubyte.gz", FMNIST_DIR);
    snprintf(cfg->test_labels, sizeof cfg->test_labels, "%s/t10k-labels-idx1-ubyte.gz", FMNIST_DIR);
    snprintf(cfg->cifar_dir, sizeof cfg->cifar_dir, "data/cifar-10-batches-bin");
    snprintf(cfg->comm, sizeof cfg->comm, "mpi");
    cfg->bucket_kb = 32;
    cfg->overlap = 1;
    cfg->compress = COMPRESS_NONE;
    cfg->powersgd_rank = 1;           // PyTorch's PowerSGDState defaults: matrix_approximation_rank=1,
    cfg->powersgd_start_step = 1000;  // start_powerSGD_iter=1000
    cfg->hierarchy = HIERARCHY_FLAT;
    cfg->scaling = SCALING_WEAK;
    cfg->lr_scaling = LR_SCALING_NONE;
    cfg->comm_timeout_s = 300;
    cfg->save_timeout_s = 600;
}

// A layer's fields at its kind's defaults.
static void layer_defaults(layer_cfg *l, int type) {
    memset(l, 0, sizeof *l);
    l->type = type;
    const layer_kind *k = layer_kind_of(type);
    for (int i = 0; i < k->n_keys; i++) {
        const layer_key *key = &k->keys[i];
        char *f = (char *)l + key->off;
        if (key->type == LK_DOUBLE) *(double *)f = key->def;
        else if (key->type != LK_REFS) *(int *)f = (int)key->def;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Setting one value. `where` names the origin for messages: "file:line [section]" or "--set".

static int choice_index(const char *choices, const char *value) {
    int idx = 0;
    const char *p = choices;
    size_t vl = strlen(value);
    while (*p) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == vl && strncmp(p, value, len) == 0) return idx;
        idx++;
        if (!bar) break;
        p = bar + 1;
    }
    return -1;
}

static int set_key(net_config *cfg, const key_def *k, const char *value, const char *where) {
    char *base = (char *)cfg + k->off;
    const char *sect = g_sect_names[k->sect];
    switch (k->type) {
    case K_INT: {
        long v;
        if (k->choices && strcmp(value, k->choices) == 0) v = 0;
        else if (parse_int(value, (long)k->lo, (long)k->hi, &v))
            return ERR(ST_INPUT, "%s: %s.%s: '%s' is not an integer in [%.0f, %.0f]%s%s", where, sect, k->name, value,
                       k->lo, k->hi, k->choices ? " or " : "", k->choices ? k->choices : "");
        *(int *)base = (int)v;
        return ST_OK;
    }
    case K_DOUBLE: {
        double v;
        if (parse_float(value, k->lo, k->hi, &v))
            return ERR(ST_INPUT, "%s: %s.%s: '%s' is not a number in [%g, %g]", where, sect, k->name, value, k->lo,
                       k->hi);
        *(double *)base = v;
        return ST_OK;
    }
    case K_U64: {
        char *end;
        errno = 0;
        if (value[0] == '-' || value[0] == '\0') goto bad_u64;
        unsigned long long v = strtoull(value, &end, 10);
        if (errno || *end) goto bad_u64;
        *(uint64_t *)base = (uint64_t)v;
        return ST_OK;
    bad_u64:
        return ERR(ST_INPUT, "%s: %s.%s: '%s' is not a non-negative integer", where, sect, k->name, value);
    }
    case K_ENUM: {
        int i = choice_index(k->choices, value);
        if (i < 0) return ERR(ST_INPUT, "%s: %s.%s: '%s' is not one of %s", where, sect, k->name, value, k->choices);
        *(int *)base = k->enum_base0 ? i : i + 1;
        return ST_OK;
    }
    case K_STR:
        if (k->choices && choice_index(k->choices, value) < 0)
            return ERR(ST_INPUT, "%s: %s.%s: '%s' is not one of %s", where, sect, k->name, value, k->choices);
        if (strlen(value) >= k->size)
            return ERR(ST_INPUT, "%s: %s.%s: value longer than %zu characters", where, sect, k->name, k->size - 1);
        if (!k->choices && value[0] == '\0') return ERR(ST_INPUT, "%s: %s.%s: empty value", where, sect, k->name);
        memcpy(base, value, strlen(value) + 1);
        return ST_OK;
    }
    return ERR(ST_INPUT, "%s: %s.%s: internal: bad key type", where, sect, k->name);
}

static int find_key(int sect, const char *name) {
    for (int i = 0; i < N_KEYS; i++)
        if (g_keys[i].sect == sect && strcmp(g_keys[i].name, name) == 0) return i;
    return -1;
}

// The key of a layer's kind called name: index into its keys, LAYER_KEY_NAME for `name`, -1 when it has none.
#define LAYER_KEY_NAME (-2)
static int find_layer_key(const layer_cfg *l, const char *name) {
    if (strcmp(name, "name") == 0) return LAYER_KEY_NAME;
    const layer_kind *k = layer_kind_of(l->type);
    for (int i = 0; i < k->n_keys; i++)
        if (strcmp(k->keys[i].name, name) == 0) return i;
    return -1;
}

// Letters, digits and '_' in parts joined by single dots, each part non-empty, the first starting with a letter or
// '_': PyTorch's module paths (layer1.0.conv1, features.3.conv.0.1), so tensor names are torchvision's.
static int valid_name(const char *s) {
    if (!*s || strlen(s) >= CFG_NAME_MAX) return 0;
    if (!isalpha((unsigned char)s[0]) && s[0] != '_') return 0;
    for (const char *p = s; *p; p++) {
        if (*p == '.' && p[1] && p[1] != '.') continue;
        if (!isalnum((unsigned char)*p) && *p != '_') return 0;
    }
    return 1;
}

static int set_layer_refs(layer_cfg *l, const layer_key *k, const char *value, const char *where) {
    const char *sect = layer_kind_of(l->type)->section;
    int n = 0;
    for (const char *s = value;;) {
        char *end = NULL;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < -CFG_MAX_LAYERS || v > CFG_MAX_LAYERS || (*end && *end != ',' && *end != ' '))
            return ERR(ST_INPUT, "%s: [%s] %s.%s: '%s' is not a list of layer indices (e.g. -3 or -1,-4)", where,
                       sect, l->name, k->name, value);
        if (n == (int)k->hi)
            return ERR(ST_INPUT, "%s: [%s] %s.%s: '%s': at most %d %s", where, sect, l->name, k->name, value,
                       (int)k->hi, k->hi == 1 ? "index" : "indices");
        l->refs[n++] = (int)v;
        while (*end == ' ') end++;
        if (!*end) break;
        s = end + 1;
    }
    l->n_refs = n;
    return ST_OK;
}

static int set_layer_key(net_config *cfg, layer_cfg *l, int ki, const char *value, const char *where) {
    const char *sect = layer_kind_of(l->type)->section;
    if (ki == LAYER_KEY_NAME) {
        if (!valid_name(value))
            return ERR(ST_INPUT, "%s: [%s] name: '%s' is not a name (letters, digits, _ and single dots between them, "
                                 "as layer1.0.conv1; at most %d characters)",
                       where, sect, value, CFG_NAME_MAX - 1);
        static const char *reserved[] = {"net", "data", "parallel", "optim"};
        for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
            if (strcmp(value, reserved[i]) == 0)
                return ERR(ST_INPUT, "%s: [%s] name: '%s' is reserved", where, sect, value);
        for (int i = 0; i < cfg->n_layers; i++)
            if (&cfg->layers[i] != l && strcmp(cfg->layers[i].name, value) == 0)
                return ERR(ST_INPUT, "%s: [%s] name: '%s' is already the name of another layer", where, sect, value);
        snprintf(l->name, sizeof l->name, "%s", value);
        return ST_OK;
    }
    const layer_key *k = &layer_kind_of(l->type)->keys[ki];
    char *f = (char *)l + k->off;
    switch (k->type) {
    case LK_ACT: {
        const int a = layer_act_find(value);
        if (a < 0)
            return ERR(ST_INPUT, "%s: [%s] %s.%s: '%s' is not one of: %s", where, sect, l->name, k->name, value,
                       layer_act_names());
        *(int *)f = a;
        return ST_OK;
    }
    case LK_REFS: return set_layer_refs(l, k, value, where);
    case LK_DOUBLE: {
        double v;
        if (parse_float(value, k->lo, k->hi, &v))
            return ERR(ST_INPUT, "%s: [%s] %s.%s: '%s' is not a number in [%g, %g]", where, sect, l->name, k->name,
                       value, k->lo, k->hi);
        *(double *)f = v;
        return ST_OK;
    }
    default: {
        long v;
        if (parse_int(value, (long)k->lo, (long)k->hi, &v))
            return ERR(ST_INPUT, "%s: [%s] %s.%s: '%s' is not an integer in [%.0f, %.0f]", where, sect, l->name,
                       k->name, value, k->lo, k->hi);
        *(int *)f = (int)v;
        return ST_OK;
    }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Parsing a file

typedef struct parse_state {
    net_config *cfg;
    FILE *f;
    int line;            // line number of the last line handed to libinih
    int sect;            // S_NET.. for global sections, 0 for a layer, -1 before any section
    int layer;           // index into cfg->layers for a layer section
    int sect_line;
    int counters[LAYER_KIND_COUNT];  // per layer kind, for default names
    int err;             // first error status (message already set)
    // repeated-key detection: bit per key of the current section
    unsigned char seen_key[N_KEYS];  // [net]/[data]/[parallel] keys given (each key is in one section)
    unsigned seen_layer;
    int seen_sect[4];    // line where [net]/[data]/[parallel] appeared (0: not yet)
    int cont;            // the reader's last line continues the value before it (starts with blanks, not blank)
    struct {             // [repeat] ... [end] / [include]: the block's lines, recorded, then handed to libinih
        int open;        // recording (the line of its header)
        int include;     // an [include] (its lines from file=)
        // from here to file_line: zeroed at each block's header
        int count, start, body;  // count= and start= ({i} of the first copy); body: a section header was seen
        int n_vars;
        char vars[8][32], vals[8][64];
        char file[CFG_PATH_MAX];
        int replay, rep, idx;  // replaying copy `rep`, line `idx`
        int file_line;   // lines read from the file so far
        char **lines;
        int *line_no;
        int n, cap;
        char *pending;   // the header line that ended an [include]'s keys, handed on after its copies
    } rpt;
    struct {             // a quoted value whose closing quote is on a later line (config_print splits long ones)
        int open;
        int ki, line;    // its key (as key_lookup found it) and the line of that key
        char key[64];
        char *buf;       // decoded so far
        size_t len, cap;
    } quote;
} parse_state;

static int fail(parse_state *ps, int st) {
    if (!ps->err) ps->err = st;
    return 0;
}

// <prefix><n> per kind: conv1, pool1, dense2; the loss is "softmax" (there is one).
static void default_name(parse_state *ps, layer_cfg *l) {
    const layer_kind *k = layer_kind_of(l->type);
    int n = ++ps->counters[l->type];
    if ((k->flags & LAYER_TERMINAL) && n == 1) snprintf(l->name, sizeof l->name, "%s", k->section);
    else snprintf(l->name, sizeof l->name, "%s%d", k->prefix ? k->prefix : k->section, n);
}

// A section header seen by the reader: open it.
static void open_section(parse_state *ps, const char *name) {
    net_config *cfg = ps->cfg;
    ps->sect_line = ps->line;
    ps->seen_layer = 0;
    for (int s = S_NET; s <= S_PARALLEL; s++)
        if (strcmp(name, g_sect_names[s]) == 0) {
            if (ps->seen_sect[s]) {
                ERR(ST_INPUT, "%s:%d: section [%s] repeated (first at line %d)", cfg->path, ps->line, name,
                    ps->seen_sect[s]);
                fail(ps, ST_INPUT);
            }
            if (cfg->n_layers > 0) {
                ERR(ST_INPUT, "%s:%d: section [%s] must come before the layer sections", cfg->path, ps->line, name);
                fail(ps, ST_INPUT);
            }
            ps->seen_sect[s] = ps->line;
            ps->sect = s;
            return;
        }
    int t = layer_kind_find(name);
    if (t) {
        if (cfg->n_layers >= CFG_MAX_LAYERS) {
            ERR(ST_INPUT, "%s:%d: too many layers (at most %d)", cfg->path, ps->line, CFG_MAX_LAYERS);
            fail(ps, ST_INPUT);
            ps->sect = -2;
            return;
        }
        layer_cfg *l = &cfg->layers[cfg->n_layers];
        layer_defaults(l, t);
        l->line = ps->line;
        default_name(ps, l);
        ps->layer = cfg->n_layers++;
        ps->sect = 0;
        return;
    }
    ERR(ST_INPUT, "%s:%d: unknown section [%s] (known: net, data, parallel, %s)", cfg->path, ps->line, name,
        layer_kind_sections());
    fail(ps, ST_INPUT);
    ps->sect = -2;
}

// The key `name` of the section being read: its index in g_keys (global sections) or in the layer kind's keys,
// after the checks that need no value (a section first, a known key, not repeated).
static int key_lookup(parse_state *ps, const char *name, const char *where, int *ki) {
    if (ps->sect == -1) return ERR(ST_INPUT, "%s: key '%s' before any section", where, name);
    if (ps->sect > 0) {
        *ki = find_key(ps->sect, name);
        if (*ki < 0) return ERR(ST_INPUT, "%s: unknown key '%s' in [%s]", where, name, g_sect_names[ps->sect]);
        if (ps->seen_key[*ki])
            return ERR(ST_INPUT, "%s: key '%s' repeated in [%s]", where, name, g_sect_names[ps->sect]);
        ps->seen_key[*ki] = 1;
        return ST_OK;
    }
    const layer_cfg *l = &ps->cfg->layers[ps->layer];
    const char *sect = layer_kind_of(l->type)->section;
    *ki = find_layer_key(l, name);
    if (*ki == -1) return ERR(ST_INPUT, "%s: unknown key '%s' in [%s] (layer '%s')", where, name, sect, l->name);
    unsigned bit = 1u << (*ki + 2);  // name is -2
    if (ps->seen_layer & bit)
        return ERR(ST_INPUT, "%s: key '%s' repeated in [%s] (layer '%s')", where, name, sect, l->name);
    ps->seen_layer |= bit;
    return ST_OK;
}

// The value of the key key_lookup found. A quoted "" empties a string key (config_print writes an emptied data
// path so); an empty value without quotes is refused as before.
static int key_assign(parse_state *ps, int ki, const char *value, int quoted, const char *where) {
    net_config *cfg = ps->cfg;
    if (ps->sect == 0) return set_layer_key(cfg, &cfg->layers[ps->layer], ki, value, where);
    const key_def *k = &g_keys[ki];
    if (quoted && !*value && k->type == K_STR && !k->choices) {
        *((char *)cfg + k->off) = '\0';
        return ST_OK;
    }
    return set_key(cfg, k, value, where);
}

// ---------------------------------------------------------------------------------------------------------
// Quoted values: "..." with the escapes \\ \" \n \t \xHH, continued over lines that start with blanks until
// the closing quote (config_print writes them; a plain value is taken as it is).

static int quote_unclosed(parse_state *ps, const char *before) {
    return ERR(ST_INPUT, "%s:%d: key '%s': quoted value not closed before %s (a closing \" is missing)",
               ps->cfg->path, ps->quote.line, ps->quote.key, before);
}

static int quote_append(parse_state *ps, char c) {
    if (ps->quote.len == ps->quote.cap) {
        size_t cap = ps->quote.cap ? 2 * ps->quote.cap : 256;
        char *buf = realloc(ps->quote.buf, cap);
        if (!buf) return ERR(ST_RUNTIME, "%s: out of memory reading a quoted value", ps->cfg->path);
        ps->quote.buf = buf, ps->quote.cap = cap;
    }
    ps->quote.buf[ps->quote.len++] = c;
    return ST_OK;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

// One line's piece of the open quoted value, decoded onto what came before; *closed when it ends with the
// closing quote.
static int quote_decode(parse_state *ps, const char *s, const char *where, int *closed) {
    const char *key = ps->quote.key;
    *closed = 0;
    for (; *s; s++) {
        char c = *s;
        if (c == '"') {  // then nothing, or a comment (libinih leaves " ;..." on a continuation line)
            const char *t = s + 1;
            while (isspace((unsigned char)*t)) t++;
            if (*t && !(*t == ';' && t > s + 1))
                return ERR(ST_INPUT, "%s: key '%s': text after the closing quote", where, key);
            *closed = 1;
            return ST_OK;
        }
        if (c == '\\') {
            c = *++s;
            if (c == 'x') {
                int hi = s[1] ? hex_digit(s[1]) : -1, lo = hi >= 0 ? hex_digit(s[2]) : -1;
                if (hi < 0 || lo < 0 || (hi | lo) == 0)
                    return ERR(ST_INPUT, "%s: key '%s': bad \\x escape in a quoted value (two hex digits, not 00)",
                               where, key);
                c = (char)(hi * 16 + lo), s += 2;
            } else if (c == 'n' || c == 't' || c == '\\' || c == '"') {
                c = c == 'n' ? '\n' : c == 't' ? '\t' : c;
            } else if (!c) {
                return ERR(ST_INPUT, "%s: key '%s': a quoted value's line ends in a backslash", where, key);
            } else if (isprint((unsigned char)c)) {
                return ERR(ST_INPUT, "%s: key '%s': unknown escape \\%c in a quoted value (known: %s)", where, key, c,
                           "\\\\ \\\" \\n \\t \\xHH");
            } else {
                return ERR(ST_INPUT, "%s: key '%s': unknown escape (a backslash before byte 0x%02x) in a quoted value",
                           where, key, (unsigned char)c);
            }
        }
        TRY(quote_append(ps, c));
    }
    return ST_OK;
}

// The next piece of the open quoted value; at its closing quote, the key is set to the whole.
static int quote_continue(parse_state *ps, const char *piece, const char *where) {
    int closed = 0;
    TRY(quote_decode(ps, piece, where, &closed));
    if (!closed) return ST_OK;
    ps->quote.open = 0;
    TRY(quote_append(ps, '\0'));
    char key_where[CFG_PATH_MAX + 32];
    snprintf(key_where, sizeof key_where, "%s:%d", ps->cfg->path, ps->quote.line);
    return key_assign(ps, ps->quote.ki, ps->quote.buf, 1, key_where);
}

static int quote_start(parse_state *ps, const char *name, int ki, const char *rest, const char *where) {
    ps->quote.open = 1;
    ps->quote.ki = ki, ps->quote.line = ps->line, ps->quote.len = 0;
    snprintf(ps->quote.key, sizeof ps->quote.key, "%s", name);
    return quote_continue(ps, rest, where);
}

// ---------------------------------------------------------------------------------------------------------
// libinih's callbacks

// ---- Repeated and shared blocks of layer sections, expanded before libinih sees them:
//   [repeat] count=N [start=S] [VAR=VALUE...]  the layer sections up to [end], N times
//   [include] file=PATH [count=N] [start=S] [VAR=VALUE...]  the layer sections of PATH (relative to this config's
//            directory), N times (default once); no [end]
// In the copied lines "{i}" is S, S+1, ... (default S = 0) and "{VAR}" the value given (name=layer{layer}.{i}.conv1).
// One level: no block inside another. Messages name the line in this file (a copy's line, or the [include]'s).

#define REPEAT_MAX 1000
#define BLOCK_VARS 8

static void repeat_free(parse_state *ps) {
    for (int i = 0; i < ps->rpt.n; i++) free(ps->rpt.lines[i]);
    free(ps->rpt.lines);
    free(ps->rpt.line_no);
    ps->rpt.lines = NULL, ps->rpt.line_no = NULL, ps->rpt.n = ps->rpt.cap = 0;
}

static int repeat_err(parse_state *ps, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int repeat_err(parse_state *ps, int line, const char *fmt, ...) {
    if (!ps->err) {
        char what[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof what, fmt, ap);
        va_end(ap);
        ERR(ST_INPUT, "%s:%d: %s", ps->cfg->path, line, what);
        ps->err = ST_INPUT;
    }
    return ST_INPUT;
}

// The header name of a "[name]" line (blanks around it allowed), or "" when the line is not one.
static void header_name(const char *line, char *name, size_t n) {
    name[0] = '\0';
    while (*line == ' ' || *line == '\t') line++;
    if (*line != '[') return;
    const char *end = strchr(line, ']');
    if (!end) return;
    const char *b = line + 1;
    while (b < end && isspace((unsigned char)*b)) b++;
    const char *e = end;
    while (e > b && isspace((unsigned char)e[-1])) e--;
    snprintf(name, n, "%.*s", (int)(e - b), b);
}

// A line of the block header's own (count=, start=, file=, VAR=VALUE, blank or comment).
static void block_key(parse_state *ps, const char *line) {
    const char *sect = ps->rpt.include ? "[include]" : "[repeat]";
    while (isspace((unsigned char)*line)) line++;
    if (!*line || *line == ';' || *line == '#') return;
    char key[32] = "", val[CFG_PATH_MAX] = "";
    if (sscanf(line, " %31[A-Za-z0-9_] = %4159[^;#\r\n]", key, val) != 2) {
        repeat_err(ps, ps->line, "%s: want KEY=VALUE lines (count, start, %sor a variable) before its first section",
                   sect, ps->rpt.include ? "file, " : "");
        return;
    }
    for (size_t k = strlen(val); k > 0 && isspace((unsigned char)val[k - 1]); k--) val[k - 1] = '\0';
    long v = 0;
    if (strcmp(key, "count") == 0 || strcmp(key, "start") == 0) {
        const int is_count = key[0] == 'c';
        if (parse_int(val, is_count, REPEAT_MAX, &v))
            repeat_err(ps, ps->line, "%s: %s must be %d to %d", sect, key, is_count, REPEAT_MAX);
        else if (is_count) ps->rpt.count = (int)v;
        else ps->rpt.start = (int)v;
    } else if (strcmp(key, "file") == 0 && ps->rpt.include) {
        snprintf(ps->rpt.file, sizeof ps->rpt.file, "%s", val);
    } else if (strcmp(key, "i") == 0 || strcmp(key, "file") == 0) {
        repeat_err(ps, ps->line, "%s: '%s' is not a variable name ({i} is the copy's number)", sect, key);
    } else if (ps->rpt.n_vars == BLOCK_VARS || strlen(val) >= sizeof ps->rpt.vals[0]) {
        repeat_err(ps, ps->line, "%s: at most %d variables of at most %zu characters", sect, BLOCK_VARS,
                   sizeof ps->rpt.vals[0] - 1);
    } else {
        snprintf(ps->rpt.vars[ps->rpt.n_vars], sizeof ps->rpt.vars[0], "%s", key);
        snprintf(ps->rpt.vals[ps->rpt.n_vars++], sizeof ps->rpt.vals[0], "%s", val);
    }
}

static int block_record(parse_state *ps, const char *line, int line_no) {
    if (ps->rpt.n == ps->rpt.cap) {
        int cap2 = ps->rpt.cap ? 2 * ps->rpt.cap : 64;
        char **l = realloc(ps->rpt.lines, (size_t)cap2 * sizeof *l);
        if (l) ps->rpt.lines = l;
        int *no = l ? realloc(ps->rpt.line_no, (size_t)cap2 * sizeof *no) : NULL;
        if (!l || !no) return repeat_err(ps, line_no, "out of memory recording a block of sections");
        ps->rpt.line_no = no, ps->rpt.cap = cap2;
    }
    if (!(ps->rpt.lines[ps->rpt.n] = strdup(line))) return repeat_err(ps, line_no, "out of memory");
    ps->rpt.line_no[ps->rpt.n++] = line_no;
    return ST_OK;
}

// The block is recorded: check it and replay it from the next line on.
static void block_close(parse_state *ps) {
    const int at = ps->rpt.open;
    const char *sect = ps->rpt.include ? "[include]" : "[repeat]";
    ps->rpt.open = 0;
    if (ps->err) return;
    if (ps->rpt.include && !ps->rpt.file[0]) {
        repeat_err(ps, at, "[include] without file=PATH");
        return;
    }
    if (ps->rpt.include) {  // the file's lines, each copy naming the [include]'s line
        char path[2 * CFG_PATH_MAX];
        const char *slash = strrchr(ps->cfg->path, '/');
        if (ps->rpt.file[0] == '/' || !slash) snprintf(path, sizeof path, "%s", ps->rpt.file);
        else snprintf(path, sizeof path, "%.*s/%s", (int)(slash - ps->cfg->path), ps->cfg->path, ps->rpt.file);
        int fd = -1;
        uint64_t size = 0;
        FILE *f = NULL;
        if (input_open(path, "[include] file", &fd, &size) != ST_OK || !(f = fdopen(fd, "r"))) {
            if (fd >= 0 && !f) close(fd);
            char msg[600];
            snprintf(msg, sizeof msg, "%s", err_msg());
            err_clear();
            repeat_err(ps, at, "[include]: %s", msg);
            return;
        }
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, f) >= 0 && !ps->err) {
            char name[32];
            header_name(line, name, sizeof name);
            if (!strcmp(name, "repeat") || !strcmp(name, "include") || !strcmp(name, "end"))
                repeat_err(ps, at, "[include] %s: [%s] inside an included file (one level only)", path, name);
            else if (size > (1u << 20)) repeat_err(ps, at, "[include] %s: more than 1 MiB", path);
            else block_record(ps, line, at);
        }
        free(line);
        fclose(f);
    }
    if (ps->err) return;
    int body = 0;
    for (int i = 0; i < ps->rpt.n && !body; i++) {
        char name[32];
        header_name(ps->rpt.lines[i], name, sizeof name);
        body = name[0] != '\0';
    }
    if (!ps->rpt.count) repeat_err(ps, at, "%s without count=N (1 to %d)", sect, REPEAT_MAX);
    else if (!body) repeat_err(ps, at, "%s with no layer section%s", sect, ps->rpt.include ? " in its file" : " before its [end]");
    else ps->rpt.replay = 1, ps->rpt.rep = 0, ps->rpt.idx = 0;
}

// A recorded line with {i} and the block's {VAR}s filled in; NULL (with the error set) on an unknown {name}.
static char *block_expand(parse_state *ps, const char *src, int line_no) {
    size_t cap = strlen(src) + 16, len = 0;
    char *out = malloc(cap);
    for (const char *p = src; out && *p;) {
        const char *val = NULL, *close = NULL;
        char num[16];
        if (*p == '{' && (close = strchr(p, '}')) && close - p < 33) {
            const size_t k = (size_t)(close - p - 1);
            if (k == 1 && p[1] == 'i') snprintf(num, sizeof num, "%d", ps->rpt.start + ps->rpt.rep), val = num;
            for (int v = 0; !val && v < ps->rpt.n_vars; v++)
                if (strlen(ps->rpt.vars[v]) == k && strncmp(ps->rpt.vars[v], p + 1, k) == 0) val = ps->rpt.vals[v];
            if (!val) {
                repeat_err(ps, line_no, "{%.*s} is not {i} or a variable of the block", (int)k, p + 1);
                free(out);
                return NULL;
            }
        }
        const size_t add = val ? strlen(val) : 1;
        if (len + add + 1 > cap) {
            char *o = realloc(out, cap = 2 * (len + add + 1));
            if (!o) free(out);
            out = o;
            if (!out) break;
        }
        if (val) memcpy(out + len, val, add), len += add, p = close + 1;
        else out[len++] = *p++;
    }
    if (out) out[len] = '\0';
    return out;
}

// The next line of the text: the file's, or a copy of a block's line (ps->line its line in the file). NULL at the
// end (or on an error, which is set).
static char *next_line(parse_state *ps, ssize_t *n) {
    if (ps->rpt.replay) {
        const int idx = ps->rpt.idx;
        ps->line = ps->rpt.line_no[idx];
        char *out = block_expand(ps, ps->rpt.lines[idx], ps->line);
        if (!out) return NULL;
        if (++ps->rpt.idx == ps->rpt.n) {
            ps->rpt.idx = 0;
            if (++ps->rpt.rep == ps->rpt.count) {
                ps->rpt.replay = 0;
                repeat_free(ps);
            }
        }
        *n = (ssize_t)strlen(out);
        return out;
    }
    char *buf = NULL;
    size_t cap = 0;
    if (ps->rpt.pending) {  // the header that ended an [include]'s keys, after the include's copies
        buf = ps->rpt.pending, ps->rpt.pending = NULL;
        *n = (ssize_t)strlen(buf);
    } else {
        *n = getline(&buf, &cap, ps->f);
        ps->rpt.file_line += *n >= 0;
    }
    if (*n < 0) {
        free(buf);
        if (ps->rpt.open && ps->rpt.include) {  // an [include] at the end of the file
            block_close(ps);
            if (ps->rpt.replay) return next_line(ps, n);
        } else if (ps->rpt.open) {
            repeat_err(ps, ps->rpt.open, "[repeat] without its [end]");
        }
        return NULL;
    }
    ps->line = ps->rpt.file_line;
    // The block markers and the lines recorded go to libinih as blank lines.
    char name[32];
    header_name(buf, name, sizeof name);
    const int is_block = strcmp(name, "repeat") == 0 || strcmp(name, "include") == 0;
    if (ps->rpt.open && ps->rpt.include && name[0]) {  // an [include]'s keys end at the next section
        block_close(ps);
        if (ps->rpt.replay) {
            ps->rpt.pending = buf;
            return next_line(ps, n);
        }
    }
    if (is_block) {
        if (ps->rpt.open) repeat_err(ps, ps->line, "[%s] inside a [repeat] (one level only)", name);
        memset(&ps->rpt.count, 0, offsetof(__typeof__(ps->rpt), file_line) - offsetof(__typeof__(ps->rpt), count));
        ps->rpt.open = ps->line, ps->rpt.include = name[0] == 'i', ps->rpt.count = ps->rpt.include;
        buf[0] = '\0', *n = 0;
    } else if (strcmp(name, "end") == 0) {
        if (!ps->rpt.open) repeat_err(ps, ps->line, "[end] without a [repeat] before it");
        else block_close(ps);
        buf[0] = '\0', *n = 0;
    } else if (ps->rpt.open) {
        if (name[0]) ps->rpt.body = 1;
        if (!ps->rpt.body) block_key(ps, buf);
        else if (block_record(ps, buf, ps->line) != ST_OK) {
            free(buf);
            return NULL;
        }
        buf[0] = '\0', *n = 0;
    }
    return buf;
}

// libinih's reader: one line at a time; we see headers before libinih does.
static char *reader(char *str, int num, void *stream) {
    parse_state *ps = stream;
    ssize_t n = 0;
    char *buf = next_line(ps, &n);
    if (!buf) return NULL;
    if (n >= num - 1) {
        if (!ps->err) {
            ERR(ST_INPUT, "%s:%d: line longer than %d characters", ps->cfg->path, ps->line, num - 2);
            ps->err = ST_INPUT;
        }
        buf[0] = '\0';
        n = 0;
    }
    if (memchr(buf, '\0', (size_t)n)) {
        if (!ps->err) {
            ERR(ST_INPUT, "%s:%d: NUL byte in a text file", ps->cfg->path, ps->line);
            ps->err = ST_INPUT;
        }
        buf[0] = '\0';
        n = 0;
    }
    memcpy(str, buf, (size_t)n + 1);
    free(buf);
    // libinih's continuation rule: after leading blanks, anything but a comment.
    const char *c = str;
    while (isspace((unsigned char)*c)) c++;
    ps->cont = c > str && *c && *c != ';' && *c != '#';
    // A header: "[name]" after optional spaces, with an optional comment after it.
    const char *p = str;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '[') {
        const char *end = strchr(p, ']');
        if (end && ps->quote.open && !ps->err) {
            char before[48];
            snprintf(before, sizeof before, "the section header at line %d", ps->line);
            ps->err = quote_unclosed(ps, before);
        } else if (end) {
            char name[64];
            const char *b = p + 1;
            while (b < end && isspace((unsigned char)*b)) b++;
            const char *e = end;
            while (e > b && isspace((unsigned char)e[-1])) e--;
            size_t len = (size_t)(e - b);
            if (len >= sizeof name) len = sizeof name - 1;
            memcpy(name, b, len);
            name[len] = '\0';
            if (!ps->err) open_section(ps, name);
        }
    }
    return str;
}

// libinih calls this for key=value lines, and for continuation lines with the key before them.
static int handler(void *user, const char *section, const char *name, const char *value) {
    (void)section;
    parse_state *ps = user;
    if (ps->err) return 1;  // keep the first error only
    char where[CFG_PATH_MAX + 32];
    snprintf(where, sizeof where, "%s:%d", ps->cfg->path, ps->line);
    int st, ki = -1;
    if (ps->quote.open && ps->cont) {
        st = quote_continue(ps, value, where);
    } else if (ps->quote.open) {
        char before[48];
        snprintf(before, sizeof before, "the next key at line %d", ps->line);
        st = quote_unclosed(ps, before);
    } else {
        st = key_lookup(ps, name, where, &ki);
        if (st == ST_OK) st = value[0] == '"' ? quote_start(ps, name, ki, value + 1, where)
                                              : key_assign(ps, ki, value, 0, where);
    }
    return st == ST_OK ? 1 : fail(ps, st);
}

// A config is a regular file of at most CFG_FILE_MAX bytes (src/fileio.h): a FIFO or /dev/zero is refused
// before anything is read.
#define CFG_FILE_MAX (1u << 20)
static int config_open(const char *path, FILE **out) {
    int fd = -1;
    uint64_t size = 0;
    TRY(input_open(path, "config", &fd, &size));
    if (size > CFG_FILE_MAX) {
        close(fd);
        return ERR(ST_INPUT, "%s: config is %llu bytes, more than the %u-byte limit", path, (unsigned long long)size,
                   CFG_FILE_MAX);
    }
    *out = fdopen(fd, "r");
    if (!*out) {
        close(fd);
        return ERR(ST_RUNTIME, "%s: cannot open config: %s", path, strerror(errno));
    }
    return ST_OK;
}

// The INI text of f (a file or a string) into cfg, whose defaults and path (for messages) are set.
static int config_parse(net_config *cfg, FILE *f) {
    const char *path = cfg->path;
    parse_state ps = {.cfg = cfg, .f = f, .sect = -1};
    int r = ini_parse_stream(reader, &ps, handler, &ps);
    int read_err = ferror(f);
    fclose(f);
    free(ps.quote.buf);
    repeat_free(&ps);
    free(ps.rpt.pending);
    if (ps.err) return ps.err;
    if (ps.quote.open) return quote_unclosed(&ps, "the end of the text");
    if (read_err) return ERR(ST_INPUT, "%s: read error", path);
    if (r > 0) return ERR(ST_INPUT, "%s:%d: not an INI line (expected [section] or key=value)", path, r);
    if (r < 0) return ERR(ST_RUNTIME, "%s: config parser failed (%d)", path, r);
    if (!ps.seen_sect[S_NET]) return ERR(ST_INPUT, "%s: missing [net] section", path);
    if (cfg->n_layers == 0) return ERR(ST_INPUT, "%s: no layer sections ([conv], [dense], ..., [softmax])", path);
    return ST_OK;  // required keys are checked by config_validate, after --set had its chance to give them
}

int config_load(const char *path, net_config *cfg) {
    config_defaults(cfg);
    if (strlen(path) >= sizeof cfg->path) return ERR(ST_INPUT, "config path too long: %s", path);
    snprintf(cfg->path, sizeof cfg->path, "%s", path);
    FILE *f = NULL;
    TRY(config_open(path, &f));
    return config_parse(cfg, f);
}

int config_load_text(const char *text, const char *origin, net_config *cfg) {
    config_defaults(cfg);
    if (strlen(origin) >= sizeof cfg->path) return ERR(ST_INPUT, "config origin too long: %s", origin);
    snprintf(cfg->path, sizeof cfg->path, "%s", origin);
    size_t n = strlen(text);
    if (n == 0) return ERR(ST_INPUT, "%s: the configuration text is empty", origin);
    if (n > CFG_FILE_MAX)
        return ERR(ST_INPUT, "%s: the configuration text is %zu bytes, more than the %u-byte limit", origin, n,
                   CFG_FILE_MAX);
    FILE *f = fmemopen((void *)text, n, "r");
    if (!f) return ERR(ST_RUNTIME, "%s: cannot read the configuration text: %s", origin, strerror(errno));
    return config_parse(cfg, f);
}

// ---------------------------------------------------------------------------------------------------------
// --set section.key=value

int config_set(net_config *cfg, const char *assignment) {
    // SECTION.KEY=VALUE: keys have no dots, layer names may (layer1.0.conv1.filters=64): the last dot before '='.
    const char *eq = strchr(assignment, '=');
    const char *dot = NULL;
    for (const char *p = assignment; eq && p < eq; p++)
        if (*p == '.') dot = p;
    if (!dot || !eq || dot > eq || dot == assignment || eq == dot + 1)
        return ERR(ST_INPUT, "--set '%s': expected SECTION.KEY=VALUE (e.g. net.batch=128)", assignment);
    char sect[CFG_NAME_MAX + 1], key[64];
    size_t sl = (size_t)(dot - assignment), kl = (size_t)(eq - dot - 1);
    if (sl >= sizeof sect || kl >= sizeof key) return ERR(ST_INPUT, "--set '%s': unknown section or key", assignment);
    memcpy(sect, assignment, sl), sect[sl] = '\0';
    memcpy(key, dot + 1, kl), key[kl] = '\0';
    const char *value = eq + 1;
    const char *where = "--set";  // set_key names section and key itself
    for (int s = S_NET; s <= S_PARALLEL; s++)
        if (strcmp(sect, g_sect_names[s]) == 0) {
            int ki = find_key(s, key);
            if (ki < 0) return ERR(ST_INPUT, "%s: unknown key '%s' in [%s]", where, key, sect);
            return set_key(cfg, &g_keys[ki], value, where);
        }
    for (int i = 0; i < cfg->n_layers; i++)
        if (strcmp(cfg->layers[i].name, sect) == 0) {
            layer_cfg *l = &cfg->layers[i];
            int ki = find_layer_key(l, key);
            if (ki == -1)
                return ERR(ST_INPUT, "%s: unknown key '%s' for [%s] layer '%s'", where, key,
                           layer_kind_of(l->type)->section, sect);
            return set_layer_key(cfg, l, ki, value, where);
        }
    return ERR(ST_INPUT, "%s: unknown section '%s' (net, data, parallel, or a layer name)", where, sect);
}

// ---------------------------------------------------------------------------------------------------------
// Printing

// A checkpoint stores config_print's text and reads it back, so every string value must survive the INI line
// rules: the reader refuses lines over 198 characters, libinih strips blanks at both ends, cuts at " ;", and
// a line starting with '#' or ';' is a comment, with '[' a header. A value clear of all that is written as it
// is (so ordinary configs print as before); any other goes in double quotes with C escapes, split over
// continuation lines (a line starting with blanks continues the value) when long.
#define PLAIN_LINE_MAX 160  // a key=value line written verbatim is at most this long
#define PIECE_MAX 120       // escaped characters of a quoted value per line (+ 3 per escaped line edge)

// Characters that may appear verbatim in a plain value (and in a quoted one, with bytes >= 0x80, but for
// its line edges).
static int char_plain(unsigned char c) {
    return c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != ';' && c != '#';
}

static int text_plain(const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++)
        if (!char_plain((unsigned char)s[i])) return 0;
    return n == 0 || (s[0] != ' ' && s[0] != '[' && s[n - 1] != ' ');
}

// c as it stands in a quoted value, into out (at most 4 characters); returns the length. At the edge of a line
// a blank would be stripped and '[' read as a header, and bytes >= 0x80 are escaped there too (so no line
// starts or ends inside a UTF-8 sequence, whatever the locale's isspace says of them).
static int char_escape(unsigned char c, int edge, char out[5]) {
    const char *named = c == '\\' ? "\\\\" : c == '"' ? "\\\"" : c == '\n' ? "\\n" : c == '\t' ? "\\t" : NULL;
    if (named) return snprintf(out, 5, "%s", named);
    int raw = c >= 0x80 ? !edge : char_plain(c) && !(edge && (c == ' ' || c == '['));
    if (!raw) return snprintf(out, 5, "\\x%02x", c);
    return snprintf(out, 5, "%c", c);
}

// s in double quotes; when long, each further line of it starts with `cont` ("  " for a value, "#   " in a
// comment). An escape is never split between lines.
static void quoted_write(FILE *f, const char *s, const char *cont) {
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), len = 0;  // len: characters on the current line of the value
    char esc[5];
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        int first = i > 0 && len == 0;
        len += (size_t)char_escape(u[i], 0, esc);
        int last = i + 1 < n && len + (size_t)char_escape(u[i + 1], 0, esc) > PIECE_MAX;
        char_escape(u[i], first || last, esc);
        fputs(esc, f);
        if (last) fprintf(f, "\n%s", cont), len = 0;
    }
    fputc('"', f);
}

// name=value for a string key: verbatim when it reads back the same, else quoted.
static void print_string(FILE *f, const char *name, const char *v) {
    if (*v && text_plain(v) && strlen(name) + 1 + strlen(v) <= PLAIN_LINE_MAX) {
        fprintf(f, "%s=%s\n", name, v);
        return;
    }
    fprintf(f, "%s=", name);
    quoted_write(f, v, "  ");
    fputc('\n', f);
}

// The first line names the file; it is a comment (never read back), but a long or odd name must not break
// the lines after it.
static void print_origin(FILE *f, const char *path) {
    static const char head[] = "# effective configuration of ";
    if (text_plain(path) && sizeof head - 1 + strlen(path) <= PLAIN_LINE_MAX) {
        fprintf(f, "%s%s\n", head, path);
        return;
    }
    fputs(head, f);
    quoted_write(f, path, "#   ");
    fputc('\n', f);
}

// The shortest of 15..17 digits that reads back as the same double: a printed config reruns exactly.
static void print_double(FILE *f, const char *name, double v) {
    char num[40];
    for (int prec = 15; prec <= 17; prec++)
        if (snprintf(num, sizeof num, "%.*g", prec, v) > 0 && strtod(num, NULL) == v) break;
    fprintf(f, "%s=%s\n", name, num);
}

void config_print(const net_config *cfg, FILE *f) {
    print_origin(f, cfg->path);
    // An empty string is left out when that reads back as the same (its default is empty: an unset net.steps);
    // one whose default is not (a data path) is written as "". Without memory for the defaults: "" always.
    net_config *def = malloc(sizeof *def);
    if (def) config_defaults(def);
    int cur = 0;
    for (int i = 0; i < N_KEYS; i++) {
        const key_def *k = &g_keys[i];
        if (k->sect != cur) {
            fprintf(f, "%s[%s]\n", cur ? "\n" : "", g_sect_names[k->sect]);
            cur = k->sect;
        }
        const char *base = (const char *)cfg + k->off;
        switch (k->type) {
        case K_INT:
            if (k->choices && *(const int *)base == 0) fprintf(f, "%s=%s\n", k->name, k->choices);
            else fprintf(f, "%s=%d\n", k->name, *(const int *)base);
            break;
        case K_DOUBLE: {
            double v = *(const double *)base;
            if (v < k->lo) break;  // an optional key left unset (its default is outside its range: clip_grad_norm)
            print_double(f, k->name, v);
            break;
        }
        case K_U64: fprintf(f, "%s=%llu\n", k->name, (unsigned long long)*(const uint64_t *)base); break;
        case K_STR:
            if (*base || (!k->choices && (!def || *((const char *)def + k->off)))) print_string(f, k->name, base);
            break;
        case K_ENUM: {
            int idx = *(const int *)base - (k->enum_base0 ? 0 : 1);
            const char *ch = k->choices;
            for (int j = 0; j < idx && ch; j++) {
                ch = strchr(ch, '|');
                if (ch) ch++;
            }
            int len = ch ? (int)(strchr(ch, '|') ? strchr(ch, '|') - ch : (long)strlen(ch)) : 0;
            fprintf(f, "%s=%.*s\n", k->name, len, ch ? ch : "");
            break;
        }
        }
    }
    free(def);
    for (int i = 0; i < cfg->n_layers; i++) {
        const layer_cfg *l = &cfg->layers[i];
        const layer_kind *k = layer_kind_of(l->type);
        fprintf(f, "\n[%s]\n", k->section);
        print_string(f, "name", l->name);
        for (int j = 0; j < k->n_keys; j++) {
            const layer_key *key = &k->keys[j];
            const char *fld = (const char *)l + key->off;
            switch (key->type) {
            case LK_ACT: fprintf(f, "%s=%s\n", key->name, layer_act_name(*(const int *)fld)); break;
            case LK_DOUBLE: print_double(f, key->name, *(const double *)fld); break;
            case LK_REFS:
                fprintf(f, "%s=", key->name);
                for (int r = 0; r < l->n_refs; r++) fprintf(f, "%s%d", r ? "," : "", l->refs[r]);
                fprintf(f, "\n");
                break;
            default:
                if (*(const int *)fld >= key->lo) fprintf(f, "%s=%d\n", key->name, *(const int *)fld);  // else unset
                break;
            }
        }
    }
}

char *config_text(const net_config *cfg) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    if (!f) return NULL;
    config_print(cfg, f);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

// ---------------------------------------------------------------------------------------------------------
// Data file names

int config_data_paths(const net_config *cfg, char paths[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32]) {
    if (cfg->data_format == DATA_CIFAR10) {
        for (int i = 0; i < 5; i++) snprintf(paths[i], sizeof paths[i], "%s/data_batch_%d.bin", cfg->cifar_dir, i + 1);
        snprintf(paths[5], sizeof paths[5], "%s/test_batch.bin", cfg->cifar_dir);
        return 6;
    }
    if (CFG_STREAMED(cfg)) {  // the trees or lists read (not all given; shard patterns are not file names)
        const char *s[4] = {cfg->train_dir, cfg->val_dir, cfg->test_dir, ""};
        if (cfg->data_format == DATA_LIST) s[0] = cfg->train_list, s[1] = cfg->val_list, s[2] = cfg->test_list, s[3] = cfg->names;
        if (cfg->data_format == DATA_SHARDS) s[0] = s[1] = s[2] = "", s[3] = cfg->names;
        int n = 0;
        for (int i = 0; i < 4; i++)
            if (s[i][0]) snprintf(paths[n++], sizeof paths[0], "%s", s[i]);
        return n;
    }
    const char *idx[4] = {cfg->train_images, cfg->train_labels, cfg->test_images, cfg->test_labels};
    for (int i = 0; i < 4; i++) snprintf(paths[i], sizeof paths[i], "%s", idx[i]);
    return 4;
}
