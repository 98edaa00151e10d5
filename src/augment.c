// augment.c — [data] augmentation keys to gather parameters, and the training set's per-channel statistics.
#include "augment.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Statistics

int augment_stats(const dataset *d, double *mean, double *std) {
    const size_t hw = (size_t)d->h * d->w;
    const uint64_t count = (uint64_t)d->n * hw;  // values per channel
    if (count == 0) return ERR(ST_INPUT, "normalize: the training set is empty, no mean and std to compute");
    for (int ch = 0; ch < d->c; ch++) {
        // Exact: Σp < 2^8 · count and Σp² < 2^16 · count fit 64 bits for any data set that fits in memory.
        uint64_t s1 = 0, s2 = 0;
        for (int i = 0; i < d->n; i++) {
            const uint8_t *px = d->images + ((size_t)i * d->c + ch) * hw;
            uint32_t a = 0, b = 0;  // one image plane: at most 2^16 · hw, below 2^32 for hw < 2^16
            if (hw < (1u << 16)) {
                for (size_t k = 0; k < hw; k++) a += px[k], b += (uint32_t)px[k] * px[k];
                s1 += a, s2 += b;
            } else {
                for (size_t k = 0; k < hw; k++) s1 += px[k], s2 += (uint64_t)px[k] * px[k];
            }
        }
        // var · count² = count · Σp² − (Σp)², exact in 128 bits; one rounding to double.
        const unsigned __int128 num = (unsigned __int128)count * s2 - (unsigned __int128)s1 * s1;
        mean[ch] = (double)s1 / ((double)count * 255.0);
        std[ch] = sqrt((double)num) / ((double)count * 255.0);
    }
    return ST_OK;
}

// The shortest of 15..17 significant digits that reads back as v (as config_print writes doubles).
static void append_exact(char *out, size_t size, double v) {
    char num[40];
    for (int prec = 15; prec <= 17; prec++)
        if (snprintf(num, sizeof num, "%.*g", prec, v) > 0 && strtod(num, NULL) == v) break;
    size_t len = strlen(out);
    snprintf(out + len, size - len, "%s%s", len ? "," : "", num);
}

int augment_fill_normalize(net_config *cfg, const dataset *train) {
    if (cfg->normalize != NORM_ON || cfg->mean[0] || cfg->std[0]) return ST_OK;
    if (train->c > CFG_NORM_CHANNELS_MAX)
        return ERR(ST_INPUT, "%s: [data] normalize=1: at most %d channels, the data has %d", cfg->path,
                   CFG_NORM_CHANNELS_MAX, train->c);
    double mean[CFG_NORM_CHANNELS_MAX], std[CFG_NORM_CHANNELS_MAX];
    TRY(augment_stats(train, mean, std));
    for (int ch = 0; ch < train->c; ch++)
        if (!(std[ch] > 0))
            return ERR(ST_INPUT, "%s: [data] normalize=1: channel %d of the training set is constant (std 0); give "
                                 "data.mean and data.std", cfg->path, ch);
    char m[CFG_NORM_TEXT] = "", s[CFG_NORM_TEXT] = "";
    for (int ch = 0; ch < train->c; ch++) append_exact(m, sizeof m, mean[ch]), append_exact(s, sizeof s, std[ch]);
    memcpy(cfg->mean, m, sizeof m);
    memcpy(cfg->std, s, sizeof s);
    return ST_OK;
}

int augment_resolve(net_config *cfg) {
    if (cfg->normalize != NORM_ON || cfg->mean[0] || cfg->std[0]) return ST_OK;
    dataset train = {0};
    const char *name = cfg->train_images;
    if (cfg->data_format == DATA_CIFAR10) {
        char paths[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32];
        config_data_paths(cfg, paths);
        const char *train_p[5];
        for (int i = 0; i < 5; i++) train_p[i] = paths[i];
        name = cfg->cifar_dir;
        TRY(data_load_cifar10(train_p, 5, cfg->train_limit, &train));
    } else if (cfg->data_format == DATA_SYNTHETIC) {
        name = "[data] format=synthetic";
        TRY(data_make_synthetic(cfg->seed, 0, cfg->train_limit ? cfg->train_limit : DATA_SYNTHETIC_TRAIN, cfg->channels,
                                cfg->height, cfg->width, cfg->classes, &train));
    } else {
        TRY(data_load_idx(cfg->train_images, cfg->train_labels, cfg->classes, cfg->train_limit, &train));
    }
    int st = ST_OK;
    if (train.c != cfg->channels || train.h != cfg->height || train.w != cfg->width)
        st = ERR(ST_INPUT, "%s: samples are %dx%dx%d but %s [net] declares channels=%d height=%d width=%d", name,
                 train.c, train.h, train.w, cfg->path, cfg->channels, cfg->height, cfg->width);
    if (st == ST_OK) st = augment_fill_normalize(cfg, &train);
    data_free(&train);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Gather parameters

int augment_params(const net_config *cfg, int training, gather_aug *a, int *active) {
    memset(a, 0, sizeof *a);
    a->seed = cfg->seed;
    a->c = cfg->channels, a->h = cfg->height, a->w = cfg->width;
    // Streamed formats crop and flip in the loader's workers (src/image.h, the same draws on the decoded
    // bytes); the gather then only normalises.
    a->crop_pad = training && !CFG_STREAMED(cfg) ? cfg->crop_pad : 0;
    a->flip = training && !CFG_STREAMED(cfg) ? cfg->flip : 0;
    a->normalize = cfg->normalize != NORM_OFF;
    if (cfg->normalize) {
        double mean[CFG_NORM_CHANNELS_MAX], std[CFG_NORM_CHANNELS_MAX];
        int n = 0;
        TRY(config_norm_values(cfg, mean, std, &n));
        if (n != cfg->channels || n > GATHER_AUG_CHANNELS_MAX)
            return ERR(ST_INPUT, "%s: [data] normalize=1 but no mean and std for its %d channel(s) (augment_resolve "
                                 "was not called)", cfg->path, cfg->channels);
        // torchvision in float32: ToTensor's p / 255, then Normalize's (x - mean) / std (no fused multiply-add).
        for (int ch = 0; ch < n; ch++) {
            const float m = (float)mean[ch], s = (float)std[ch];
            for (int p = 0; p < 256; p++) a->lut[ch][p] = ((float)p / 255.0f - m) / s;
        }
    }
    *active = a->crop_pad > 0 || a->flip || a->normalize;
    return ST_OK;
}
