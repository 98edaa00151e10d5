// test_augment.c — [data] augmentation from the configuration: the training set's per-channel mean and std
// against a direct computation, the values written into the effective config (exact round trip), the gather
// parameters (torchvision's float32 normalisation; crop and flip for training only; off means NULL).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "augment.h"
#include "common.h"
#include "config.h"
#include "test_util.h"

static void random_set(dataset *d, int n, int c, int h, int w, unsigned seed) {
    memset(d, 0, sizeof *d);
    d->n = n, d->c = c, d->h = h, d->w = w, d->classes = 10;
    d->images = malloc((size_t)n * c * h * w);
    d->labels = calloc((size_t)n, sizeof(int32_t));
    assert_non_null(d->images);
    rng r;
    rng_seed(&r, seed);
    // Channel ch is brighter by 40 ch on average, so the channels' statistics differ.
    for (int i = 0; i < n; i++)
        for (int ch = 0; ch < c; ch++)
            for (int k = 0; k < h * w; k++) {
                int v = (int)rng_below(&r, 160) + 40 * ch;
                d->images[((size_t)i * c + ch) * h * w + k] = (uint8_t)(v > 255 ? 255 : v);
            }
}

static void test_stats_against_direct(void **state) {
    (void)state;
    dataset d;
    random_set(&d, 300, 3, 17, 13, 4);
    double mean[3], std[3];
    assert_int_equal(augment_stats(&d, mean, std), ST_OK);
    for (int ch = 0; ch < 3; ch++) {
        // Two passes in double, the textbook way.
        double s = 0, q = 0;
        size_t cnt = 0;
        for (int i = 0; i < d.n; i++)
            for (int k = 0; k < 17 * 13; k++, cnt++) s += d.images[((size_t)i * 3 + ch) * 17 * 13 + k] / 255.0;
        const double m = s / cnt;
        for (int i = 0; i < d.n; i++)
            for (int k = 0; k < 17 * 13; k++) {
                const double v = d.images[((size_t)i * 3 + ch) * 17 * 13 + k] / 255.0 - m;
                q += v * v;
            }
        const double sd = sqrt(q / cnt);
        print_message("channel %d: mean %.17g (direct %.17g), std %.17g (direct %.17g)\n", ch, mean[ch], m, std[ch], sd);
        // The sequential double sum of 66,000 values carries ~1e-13 of rounding; the integer sums none.
        assert_true(fabs(mean[ch] - m) < 1e-12 && fabs(std[ch] - sd) < 1e-12);
    }
    data_free(&d);
}

static void tiny_cfg(net_config *cfg, int c, int h, int w) {
    config_defaults(cfg);
    snprintf(cfg->path, sizeof cfg->path, "t.cfg");
    cfg->channels = c, cfg->height = h, cfg->width = w;
}

static void test_fill_writes_exact_values(void **state) {
    (void)state;
    dataset d;
    random_set(&d, 50, 3, 8, 8, 9);
    static net_config cfg;
    tiny_cfg(&cfg, 3, 8, 8);
    assert_int_equal(augment_fill_normalize(&cfg, &d), ST_OK);  // normalize=0: nothing
    assert_true(!cfg.mean[0] && !cfg.std[0]);
    cfg.normalize = 1;
    assert_int_equal(augment_fill_normalize(&cfg, &d), ST_OK);
    print_message("mean=%s std=%s\n", cfg.mean, cfg.std);
    double mean[CFG_NORM_CHANNELS_MAX], std[CFG_NORM_CHANNELS_MAX], m[3], s[3];
    int n = 0;
    assert_int_equal(config_norm_values(&cfg, mean, std, &n), ST_OK);
    assert_int_equal(n, 3);
    assert_int_equal(augment_stats(&d, m, s), ST_OK);
    for (int ch = 0; ch < 3; ch++) assert_true(mean[ch] == m[ch] && std[ch] == s[ch]);  // read back bit-exact
    // Given values are kept.
    snprintf(cfg.mean, sizeof cfg.mean, "0.5,0.5,0.5");
    snprintf(cfg.std, sizeof cfg.std, "1,1,1");
    assert_int_equal(augment_fill_normalize(&cfg, &d), ST_OK);
    assert_string_equal(cfg.mean, "0.5,0.5,0.5");
    // A constant channel has no std to divide by.
    memset(d.images, 7, (size_t)50 * 3 * 64);
    cfg.mean[0] = cfg.std[0] = '\0';
    assert_int_equal(augment_fill_normalize(&cfg, &d), ST_INPUT);
    assert_non_null(strstr(err_msg(), "constant"));
    err_clear();
    data_free(&d);
}

static void test_params(void **state) {
    (void)state;
    static net_config cfg;
    tiny_cfg(&cfg, 2, 10, 12);
    gather_aug a;
    int active = -1;
    assert_int_equal(augment_params(&cfg, 1, &a, &active), ST_OK);
    assert_int_equal(active, 0);  // nothing configured: the plain gather
    cfg.crop_pad = 2, cfg.flip = 1;
    assert_int_equal(augment_params(&cfg, 1, &a, &active), ST_OK);
    assert_true(active == 1 && a.crop_pad == 2 && a.flip == 1 && a.normalize == 0 && a.seed == cfg.seed);
    assert_true(a.c == 2 && a.h == 10 && a.w == 12 && a.epoch == 0);
    assert_int_equal(augment_params(&cfg, 0, &a, &active), ST_OK);
    assert_int_equal(active, 0);  // evaluation: no crop, no flip
    cfg.normalize = 1;
    assert_int_equal(augment_params(&cfg, 0, &a, &active), ST_INPUT);  // mean/std not resolved
    err_clear();
    snprintf(cfg.mean, sizeof cfg.mean, "0.2860405969887955,0.5");
    snprintf(cfg.std, sizeof cfg.std, "0.35302424451492254,0.125");
    assert_int_equal(augment_params(&cfg, 0, &a, &active), ST_OK);
    assert_true(active == 1 && a.crop_pad == 0 && a.flip == 0 && a.normalize == 1);
    // torchvision: ToTensor (p / 255 in float32), Normalize ((x - mean) / std with float32 mean and std).
    const float m0 = 0.2860405969887955f, s0 = 0.35302424451492254f;
    for (int p = 0; p < 256; p++) {
        volatile float x = (float)p / 255.0f;
        volatile float y0 = (x - m0) / s0, y1 = (x - 0.5f) / 0.125f;
        assert_true(a.lut[0][p] == y0 && a.lut[1][p] == y1);
    }
    print_message("lut[0][0] = %.9g (a padded pixel), lut[0][255] = %.9g\n", a.lut[0][0], a.lut[0][255]);
}

// Where the training set is not loaded yet (--print-config, --eval with a --config lacking them).
static void test_resolve_loads_the_training_set(void **state) {
    (void)state;
    const char *dir = tu_tmpdir();
    assert_int_equal(tu_make_idx_dataset(dir, 200, 20, 5, 1), 0);
    static net_config cfg;
    tiny_cfg(&cfg, 1, 28, 28);
    snprintf(cfg.train_images, sizeof cfg.train_images, "%s/train-images.idx.gz", dir);
    snprintf(cfg.train_labels, sizeof cfg.train_labels, "%s/train-labels.idx.gz", dir);
    cfg.normalize = 1;
    cfg.train_limit = 150;
    assert_int_equal(augment_resolve(&cfg), ST_OK);
    dataset d;
    assert_int_equal(data_load_idx(cfg.train_images, cfg.train_labels, 10, 150, &d), ST_OK);
    static net_config direct;
    tiny_cfg(&direct, 1, 28, 28);
    direct.normalize = 1;
    assert_int_equal(augment_fill_normalize(&direct, &d), ST_OK);
    assert_string_equal(cfg.mean, direct.mean);
    assert_string_equal(cfg.std, direct.std);
    data_free(&d);
    // A shape the data does not have: named.
    cfg.mean[0] = cfg.std[0] = '\0';
    cfg.height = 14;
    assert_int_equal(augment_resolve(&cfg), ST_INPUT);
    assert_non_null(strstr(err_msg(), "train-images.idx.gz"));
    err_clear();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats_against_direct),
        cmocka_unit_test(test_fill_writes_exact_values),
        cmocka_unit_test(test_params),
        cmocka_unit_test(test_resolve_loads_the_training_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
