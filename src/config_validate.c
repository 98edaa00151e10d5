// config_validate.c — a configuration checked as a whole, after parsing and --set: values that depend on each
// other (the schedule's keys, no_decay's names, data.mean/std per channel, augmentation against the input) and
// every layer's shape rule through the network. Errors name the file, the section and the key (src/config.h).
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "config.h"
#include "layer.h"
#include "precision.h"

// ---------------------------------------------------------------------------------------------------------
// Values that depend on each other, and shapes through the layers.

int config_lr_steps(const net_config *cfg, int *epochs, int *n) {
    *n = 0;
    const char *s = cfg->lr_steps;
    while (*s) {
        char *end = NULL;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 1 || v > 100000 || (*end && *end != ','))
            return ERR(ST_INPUT, "%s: net.steps='%s': want epochs as positive integers, e.g. steps=30,60", cfg->path,
                       cfg->lr_steps);
        if (*n > 0 && v <= epochs[*n - 1])
            return ERR(ST_INPUT, "%s: net.steps='%s': the epochs must increase", cfg->path, cfg->lr_steps);
        if (*n == CFG_LR_STEPS_MAX)
            return ERR(ST_INPUT, "%s: net.steps: at most %d epochs", cfg->path, CFG_LR_STEPS_MAX);
        epochs[(*n)++] = (int)v;
        s = *end ? end + 1 : end;
        if (*end && !*s) return ERR(ST_INPUT, "%s: net.steps='%s' ends with a comma", cfg->path, cfg->lr_steps);
    }
    return ST_OK;
}

// net.no_decay's items, read here only: the next item from *s (*item, *len: not NUL-terminated; *s moves past
// it and its comma), what kind it is, or ND_END after the last.
enum { ND_END, ND_BIAS, ND_BATCHNORM, ND_NAME };

static int item_is(const char *item, size_t len, const char *word) {
    return strlen(word) == len && strncmp(item, word, len) == 0;
}

static int no_decay_next(const char **s, const char **item, size_t *len) {
    if (!**s) return ND_END;
    *item = *s, *len = strcspn(*s, ",");
    *s += *len + ((*s)[*len] == ',');
    return item_is(*item, *len, "bias") ? ND_BIAS : item_is(*item, *len, "batchnorm") ? ND_BATCHNORM : ND_NAME;
}

void config_no_decay_layer(const char *list, const char *layer_name, int is_batchnorm, int *whole, int *bias) {
    *whole = *bias = 0;
    const char *item = NULL;
    size_t len = 0;
    for (int kind; (kind = no_decay_next(&list, &item, &len)) != ND_END;) {
        if (kind == ND_BIAS) *bias = 1;
        else if (kind == ND_BATCHNORM && is_batchnorm) *whole = 1;
        else if (item_is(item, len, layer_name)) *whole = 1;
    }
}

// Recipe keys: the schedule's own keys only with that schedule, no_decay names that exist.
static int validate_recipe(const net_config *cfg) {
    const char *p = cfg->path;
    int steps[CFG_LR_STEPS_MAX], n = 0;
    TRY(config_lr_steps(cfg, steps, &n));
    if (cfg->schedule == SCHED_STEP && n == 0)
        return ERR(ST_INPUT, "%s: net.schedule=step needs net.steps (epochs at which lr is multiplied by gamma)", p);
    if (cfg->schedule != SCHED_STEP && n > 0)
        return ERR(ST_INPUT, "%s: net.steps is for schedule=step (schedule is %s)", p,
                   cfg->schedule == SCHED_COSINE ? "cosine" : cfg->schedule == SCHED_ONECYCLE ? "onecycle" : "constant");
    if ((cfg->schedule == SCHED_COSINE || cfg->schedule == SCHED_ONECYCLE) && cfg->min_lr >= cfg->lr)
        return ERR(ST_INPUT, "%s: net.min_lr=%g must be below net.lr=%g", p, cfg->min_lr, cfg->lr);
    if (cfg->nesterov && cfg->optimizer != OPT_SGD)
        return ERR(ST_INPUT, "%s: net.nesterov=1 needs net.optimizer=sgd", p);
    if (cfg->nesterov && cfg->momentum <= 0)
        return ERR(ST_INPUT, "%s: net.nesterov=1 needs net.momentum > 0", p);
    const char *list = cfg->no_decay, *item = NULL;
    size_t len = 0;
    for (int kind; (kind = no_decay_next(&list, &item, &len)) != ND_END;) {
        int known = kind != ND_NAME;
        for (int i = 0; !known && i < cfg->n_layers; i++) known = item_is(item, len, cfg->layers[i].name);
        if (!known)
            return ERR(ST_INPUT, "%s: net.no_decay: '%.*s' is not 'bias', 'batchnorm' or a layer's name", p, (int)len,
                       item);
    }
    return ST_OK;
}

// Keys a layer must be given, then its kind's shape rule on its inputs' shapes.
static int layer_validate(const net_config *cfg, int i, const layer_shape *shapes, layer_shape *out,
                          long long *n_params) {
    const layer_cfg *l = &cfg->layers[i];
    const layer_kind *k = layer_kind_of(l->type);
    if (!k) return ERR(ST_INPUT, "%s: layer %d: bad type %d", cfg->path, i + 1, l->type);
    for (int j = 0; j < k->n_keys; j++) {
        const layer_key *key = &k->keys[j];
        if (key->required && key->type == LK_INT && *(const int *)((const char *)l + key->off) < key->lo)
            return layer_err(cfg, i, NULL, "missing required key '%s'", key->name);
    }
    int idx[CFG_MAX_REFS + 1], n_in = 0;
    TRY(layer_inputs(cfg, i, idx, &n_in));
    layer_shape in[CFG_MAX_REFS + 1];
    for (int j = 0; j < n_in; j++) in[j] = shapes[idx[j] + 1];
    *n_params = 0;
    return k->shape(cfg, i, in, n_in, out, n_params);
}

// shapes[i + 1]: layer i's output ([0]: the input); params[i]: the parameters it adds (either may be NULL).
static int validate_layers(const net_config *cfg, layer_shape *shapes_out, long long *params_out) {
    const char *p = cfg->path;
    layer_shape shapes[CFG_MAX_LAYERS + 1];  // [0]: the network input, [i + 1]: layer i's output
    shapes[0] = (layer_shape){cfg->channels, cfg->height, cfg->width, 1};
    int readers[CFG_MAX_LAYERS] = {0};
    long long total = 0;
    for (int i = 0; i < cfg->n_layers; i++) {
        const layer_cfg *l = &cfg->layers[i];
        const layer_kind *k = layer_kind_of(l->type);
        if (k && (k->flags & LAYER_TERMINAL) && i != cfg->n_layers - 1)
            return ERR(ST_INPUT, "%s:%d: [%s] '%s' must be the last layer", p, l->line, k->section, l->name);
        long long n_params = 0;
        TRY(layer_validate(cfg, i, shapes, &shapes[i + 1], &n_params));
        int idx[CFG_MAX_REFS + 1], n_in = 0;
        TRY(layer_inputs(cfg, i, idx, &n_in));
        for (int j = 0; j < n_in; j++)
            if (idx[j] >= 0) readers[idx[j]]++;
        const layer_shape *o = &shapes[i + 1];
        total += n_params;
        if (params_out) params_out[i] = n_params;
        if (shapes_out) shapes_out[i + 1] = *o, shapes_out[0] = shapes[0];
        if ((long long)o->c * o->h * o->w > (1LL << 28))
            return ERR(ST_INPUT, "%s:%d: [%s] '%s': output %dx%dx%d is too large", p, l->line, k->section, l->name,
                       o->c, o->h, o->w);
        if (total > (1LL << 31))
            return ERR(ST_INPUT, "%s:%d: [%s] '%s': more than 2^31 parameters", p, l->line, k->section, l->name);
    }
    const layer_cfg *last = &cfg->layers[cfg->n_layers - 1];
    if (!(layer_kind_of(last->type)->flags & LAYER_TERMINAL))
        return ERR(ST_INPUT, "%s: the last layer must be [softmax]", p);
    // Every output but the loss's is read by a later layer (a dead branch would get no gradient).
    for (int i = 0; i < cfg->n_layers - 1; i++)
        if (!readers[i])
            return layer_err(cfg, i, NULL, "its output is read by no later layer (a [route] skips it?)");
    return ST_OK;
}

// One comma-separated list of data.mean or data.std: exactly `want` finite numbers (std: each > 0).
static int norm_list(const net_config *cfg, const char *key, const char *text, int want, double *out) {
    int n = 0;
    for (const char *s = text; *s;) {
        size_t len = strcspn(s, ",");
        char num[64];
        double v;
        const int is_std = strcmp(key, "std") == 0;
        if (len == 0 || len >= sizeof num)
            return ERR(ST_INPUT, "%s: [data] %s='%s': want %d comma-separated number(s), one per channel", cfg->path,
                       key, text, want);
        memcpy(num, s, len), num[len] = '\0';
        if (parse_float(num, -1e30, 1e30, &v))
            return ERR(ST_INPUT, "%s: [data] %s: '%s' is not a number", cfg->path, key, num);
        if (is_std && !(v > 0))
            return ERR(ST_INPUT, "%s: [data] std: %s (channel %d) must be > 0", cfg->path, num, n);
        if (n == want)
            return ERR(ST_INPUT, "%s: [data] %s='%s' has more than %d value(s): net.channels=%d wants one per channel",
                       cfg->path, key, text, want, cfg->channels);
        out[n++] = v;
        s += len;
        if (*s == ',' && !*++s)
            return ERR(ST_INPUT, "%s: [data] %s='%s' ends with a comma", cfg->path, key, text);
    }
    if (n != want)
        return ERR(ST_INPUT, "%s: [data] %s='%s' has %d value(s): net.channels=%d wants one per channel", cfg->path,
                   key, text, n, cfg->channels);
    return ST_OK;
}

// torchvision's ImageNet statistics (transforms.Normalize in its reference recipes), RGB.
static const double g_imagenet_mean[3] = {0.485, 0.456, 0.406}, g_imagenet_std[3] = {0.229, 0.224, 0.225};

int config_norm_values(const net_config *cfg, double *mean, double *std, int *n) {
    *n = 0;
    const char *p = cfg->path;
    if (cfg->normalize == NORM_IMAGENET) {
        if (cfg->mean[0] || cfg->std[0])
            return ERR(ST_INPUT, "%s: [data] normalize=imagenet sets mean and std: remove data.%s (or use normalize=1)",
                       p, cfg->mean[0] ? "mean" : "std");
        if (cfg->channels != 3)
            return ERR(ST_INPUT, "%s: [data] normalize=imagenet is for 3 channels (net.channels=%d)", p, cfg->channels);
        for (int c = 0; c < 3; c++) mean[c] = g_imagenet_mean[c], std[c] = g_imagenet_std[c];
        *n = 3;
        return ST_OK;
    }
    if (!cfg->mean[0] && !cfg->std[0]) return ST_OK;
    if (!cfg->mean[0] || !cfg->std[0])
        return ERR(ST_INPUT, "%s: [data] %s is given without %s: give both (one value per channel) or neither", p,
                   cfg->mean[0] ? "mean" : "std", cfg->mean[0] ? "std" : "mean");
    if (cfg->channels > CFG_NORM_CHANNELS_MAX)
        return ERR(ST_INPUT, "%s: [data] mean/std: at most %d channels (net.channels=%d)", p, CFG_NORM_CHANNELS_MAX,
                   cfg->channels);
    TRY(norm_list(cfg, "mean", cfg->mean, cfg->channels, mean));
    TRY(norm_list(cfg, "std", cfg->std, cfg->channels, std));
    *n = cfg->channels;
    return ST_OK;
}

// [data] augmentation: a crop within the image, mean/std only with normalize=1 and one per channel.
static int validate_augment(const net_config *cfg) {
    const char *p = cfg->path;
    if (cfg->crop_pad >= cfg->height || cfg->crop_pad >= cfg->width)
        return ERR(ST_INPUT, "%s: [data] crop_pad=%d must be smaller than the image (%dx%d)", p, cfg->crop_pad,
                   cfg->height, cfg->width);
    if (cfg->normalize && cfg->channels > CFG_NORM_CHANNELS_MAX)
        return ERR(ST_INPUT, "%s: [data] normalize=1: at most %d channels (net.channels=%d)", p,
                   CFG_NORM_CHANNELS_MAX, cfg->channels);
    if (!cfg->normalize && (cfg->mean[0] || cfg->std[0]))
        return ERR(ST_INPUT, "%s: [data] %s is given but normalize=0 (set normalize=1 to use it)", p,
                   cfg->mean[0] ? "mean" : "std");
    double mean[CFG_NORM_CHANNELS_MAX], std[CFG_NORM_CHANNELS_MAX];
    int n;
    return config_norm_values(cfg, mean, std, &n);
}

// Two comma-separated numbers lo,hi with lo <= hi within [min, max] (min exclusive when open_min).
static int range_pair(const net_config *cfg, const char *key, const char *text, double min, double max, double out[2]) {
    char *end = NULL;
    errno = 0;
    out[0] = strtod(text, &end);
    int ok = end != text && *end == ',' && !errno;
    if (ok) {
        const char *s = end + 1;
        out[1] = strtod(s, &end);
        ok = end != s && !*end && !errno && out[0] > min && out[1] <= max && out[0] <= out[1] && isfinite(out[1]);
    }
    if (!ok)
        return ERR(ST_INPUT, "%s: [data] %s='%s': want two numbers lo,hi with %g < lo <= hi <= %g", cfg->path, key, text,
                   min, max);
    return ST_OK;
}

int config_rrc_ranges(const net_config *cfg, double scale[2], double ratio[2]) {
    TRY(range_pair(cfg, "rrc_scale", cfg->rrc_scale, 0, 1, scale));
    return range_pair(cfg, "rrc_ratio", cfg->rrc_ratio, 0, 1e6, ratio);
}

// [data]: each format's paths, and the keys that only streamed formats (folder, list) use.
static int validate_data(const net_config *cfg) {
    const char *p = cfg->path;
    double scale[2], ratio[2];
    TRY(config_rrc_ranges(cfg, scale, ratio));
    // synthetic: made at the net's size from net.seed; the other formats' paths and their decode-time transforms
    // (resize, random_resized_crop, val_fraction) are ignored, so `--set data.format=synthetic` runs any config.
    if (cfg->data_format == DATA_SYNTHETIC) return ST_OK;
    const int streamed = CFG_STREAMED(cfg);
    if (cfg->data_format == DATA_FOLDER && (!cfg->train_dir[0] || !cfg->test_dir[0]))
        return ERR(ST_INPUT, "%s: [data] format=folder needs %s (a directory of one sub-directory per class)", p,
                   cfg->train_dir[0] ? "test_dir" : "train_dir");
    if (cfg->data_format == DATA_LIST && (!cfg->train_list[0] || !cfg->test_list[0]))
        return ERR(ST_INPUT, "%s: [data] format=list needs %s (a file of `path label` lines)", p,
                   cfg->train_list[0] ? "test_list" : "train_list");
    if (cfg->data_format == DATA_SHARDS && (!cfg->train_shards[0] || !cfg->test_shards[0]))
        return ERR(ST_INPUT, "%s: [data] format=shards needs %s (tar shards, e.g. train-{000000..000127}.tar)", p,
                   cfg->train_shards[0] ? "test_shards" : "train_shards");
    const char *val = cfg->data_format == DATA_FOLDER ? cfg->val_dir
                      : cfg->data_format == DATA_SHARDS ? cfg->val_shards : cfg->val_list;
    if (val[0] && cfg->val_fraction > 0)
        return ERR(ST_INPUT, "%s: [data] val_fraction and val_%s both give a validation set: keep one", p,
                   cfg->data_format == DATA_FOLDER ? "dir" : cfg->data_format == DATA_SHARDS ? "shards" : "list");
    if (cfg->shuffle_buffer && cfg->data_format != DATA_SHARDS)
        return ERR(ST_INPUT, "%s: [data] shuffle_buffer is for format=shards", p);
    if (!streamed) {
        const char *only = cfg->train_dir[0] || cfg->val_dir[0] || cfg->test_dir[0] ? "train_dir/val_dir/test_dir"
                           : cfg->train_list[0] || cfg->val_list[0] || cfg->test_list[0] || cfg->names[0]
                               ? "train_list/val_list/test_list/names"
                           : cfg->train_shards[0] || cfg->val_shards[0] || cfg->test_shards[0]
                               ? "train_shards/val_shards/test_shards"
                           : cfg->resize ? "resize"
                           : cfg->random_resized_crop ? "random_resized_crop"
                           : cfg->val_fraction > 0 ? "val_fraction"
                                                   : NULL;
        if (only)
            return ERR(ST_INPUT, "%s: [data] %s is for format=folder, list or shards (format is %s)", p, only,
                       cfg->data_format == DATA_CIFAR10 ? "cifar10" : "idx");
        return ST_OK;
    }
    if (cfg->normalize == NORM_ON && (!cfg->mean[0] || !cfg->std[0]))
        return ERR(ST_INPUT, "%s: [data] normalize=1 with format=%s needs data.mean and data.std (the set is streamed, "
                             "not loaded whole to measure them), or normalize=imagenet", p,
                   cfg->data_format == DATA_FOLDER ? "folder" : cfg->data_format == DATA_SHARDS ? "shards" : "list");
    if (cfg->channels != 1 && cfg->channels != 3)
        return ERR(ST_INPUT, "%s: [net] channels=%d: images decode to 1 (gray) or 3 (RGB) channels", p, cfg->channels);
    return ST_OK;
}

// net.precision and net.layout (docs/precision.md): the CPU backend emulates every precision and computes NCHW
// whatever the layout; the CUDA backend has every precision (bf16/fp16 on tensor cores) in both layouts (what
// nhwc cannot express, a per-feature [batchnorm] after a spatial [flatten], the model refuses when it builds it).
static int validate_precision(const net_config *cfg) {
    const char *p = cfg->path, *prec = precision_name(cfg->precision);
    if (cfg->tf32 && (cfg->precision == PREC_BF16 || cfg->precision == PREC_FP16))
        return ERR(ST_INPUT, "%s: net.tf32=1 with net.precision=%s: tf32 is an fp32 GEMM mode, %s has no fp32 GEMMs "
                             "(set one of the two)", p, prec, prec);
    return ST_OK;
}

int config_validate(const net_config *cfg) {
    const char *p = cfg->path;
    TRY(validate_recipe(cfg));
    if (cfg->channels < 1 || cfg->height < 1 || cfg->width < 1)
        return ERR(ST_INPUT, "%s: [net]: missing required key '%s'", p,
                   cfg->channels < 1 ? "channels" : cfg->height < 1 ? "height" : "width");
    TRY(validate_augment(cfg));
    TRY(validate_data(cfg));
    if (cfg->n_layers < 1) return ERR(ST_INPUT, "%s: no layers", p);
    if (cfg->beta1 >= 1 || cfg->beta2 >= 1) return ERR(ST_INPUT, "%s: net.beta1/beta2 must be < 1", p);
    if (strcmp(cfg->comm, "nccl") == 0 && strcmp(cfg->backend, "cuda") != 0)
        return ERR(ST_INPUT, "%s: parallel.comm=nccl needs net.backend=cuda", p);
    if (cfg->tf32 && strcmp(cfg->backend, "cuda") != 0)
        return ERR(ST_INPUT, "%s: net.tf32=1 needs net.backend=cuda (backend is '%s')", p, cfg->backend);
    TRY(validate_precision(cfg));
    size_t sample = (size_t)cfg->channels * cfg->height * cfg->width;
    if (sample > (1u << 28)) return ERR(ST_INPUT, "%s: [net]: input %dx%dx%d is too large", p, cfg->channels,
                                        cfg->height, cfg->width);
    return validate_layers(cfg, NULL, NULL);
}

int config_layer_shapes(const net_config *cfg, layer_shape shapes[CFG_MAX_LAYERS + 1], long long params[CFG_MAX_LAYERS]) {
    return validate_layers(cfg, shapes, params);
}

