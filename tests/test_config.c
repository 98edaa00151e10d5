// test_config.c — the INI parser: the ready configs, defaults, layers, --set, and every class of bad input
// (unknown section/key, repeated key, missing key, bad value, impossible shape) with file/section/key named.
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend.h"
#include "common.h"
#include "config.h"
#include "test_util.h"

static const char *write_cfg(const char *name, const char *text) {
    const char *p = tu_path(name);
    assert_int_equal(tu_write_file(p, text, strlen(text), 0), 0);
    return p;
}

#define NET "[net]\nchannels=1\nheight=28\nwidth=28\n"
#define LAYERS                                                                                                 \
    "[conv]\nfilters=32\nsize=3\nactivation=relu\n[maxpool]\nsize=2\n[conv]\nfilters=64\n[maxpool]\n"         \
    "[flatten]\n[dense]\nunits=64\nactivation=relu\n[dense]\nunits=10\n[softmax]\n"

static void expect_load_error(const char *name, const char *text, const char *needle1, const char *needle2) {
    static net_config cfg;
    const char *p = write_cfg(name, text);
    err_clear();
    int st = config_load(p, &cfg);
    if (st == ST_OK) st = config_validate(&cfg);
    if (st != ST_INPUT || !strstr(err_msg(), needle1) || (needle2 && !strstr(err_msg(), needle2)))
        fail_msg("%s: status %d, message '%s' (want ST_INPUT naming '%s' and '%s')", name, st, err_msg(), needle1,
                 needle2 ? needle2 : "");
    // Every message is one line and names the file.
    assert_null(strchr(err_msg(), '\n'));
    assert_non_null(strstr(err_msg(), name));
    err_clear();
}

static void test_ready_configs_parse(void **state) {
    (void)state;
    const char *names[] = {"fashion_mnist_cnn.cfg", "mnist_cnn.cfg", "cifar10_cnn.cfg", "fashion_mnist_cnn_cuda.cfg"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        static net_config cfg;
        char path[1024];
        snprintf(path, sizeof path, "%s/configs/%s", DDP_SOURCE_DIR, names[i]);
        err_clear();
        if (config_load(path, &cfg) != ST_OK || config_validate(&cfg) != ST_OK) fail_msg("%s: %s", path, err_msg());
        assert_int_equal(cfg.n_layers, 8);
        assert_string_equal(cfg.layers[0].name, "conv1");
        assert_string_equal(cfg.layers[1].name, "pool1");
        assert_string_equal(cfg.layers[2].name, "conv2");
        assert_string_equal(cfg.layers[5].name, "dense1");
        assert_string_equal(cfg.layers[6].name, "dense2");
        assert_string_equal(cfg.layers[7].name, "softmax");
        assert_int_equal(cfg.layers[3].type, LAYER_MAXPOOL);
        assert_int_equal(cfg.layers[6].act, ACT_NONE);
    }
}

static void test_defaults_and_values(void **state) {
    (void)state;
    static net_config cfg;
    const char *p = write_cfg("d.cfg", "; comment\n# another\n" NET "lr = 0.01 ; inline comment\nseed=7\n"
                                       "[parallel]\nscaling=strong\nlr_scaling=linear\nbucket_kb=64\n" LAYERS);
    assert_int_equal(config_load(p, &cfg), ST_OK);
    assert_int_equal(config_validate(&cfg), ST_OK);
    assert_int_equal(cfg.batch, 64);
    assert_int_equal(cfg.epochs, 5);
    assert_int_equal(cfg.optimizer, OPT_ADAM);
    assert_true(cfg.lr == 0.01);
    assert_true(cfg.beta1 == 0.9 && cfg.beta2 == 0.999 && cfg.eps == 1e-7);  // Keras defaults
    assert_true(cfg.seed == 7);
    assert_int_equal(cfg.scaling, SCALING_STRONG);
    assert_int_equal(cfg.lr_scaling, LR_SCALING_LINEAR);
    assert_int_equal(cfg.bucket_kb, 64);
    assert_string_equal(cfg.backend, "cpu");
    assert_string_equal(cfg.comm, "mpi");
    assert_non_null(strstr(cfg.train_images, "fashion-mnist"));
    // conv defaults: size 3, stride 1, pad 0, relu; maxpool stride = size; dense default linear
    assert_int_equal(cfg.layers[2].size, 3);
    assert_int_equal(cfg.layers[2].stride, 1);
    assert_int_equal(cfg.layers[2].act, ACT_RELU);
    assert_int_equal(cfg.layers[3].size, 2);
    assert_int_equal(cfg.layers[5].act, ACT_RELU);
    assert_int_equal(cfg.layers[6].act, ACT_NONE);
    assert_int_equal(cfg.layers[4].type, LAYER_FLATTEN);
}

static void test_set_overrides(void **state) {
    (void)state;
    static net_config cfg;
    const char *p = write_cfg("s.cfg", NET "[conv]\nname=stem\nfilters=8\n[maxpool]\n[dense]\nunits=10\n[softmax]\n");
    assert_int_equal(config_load(p, &cfg), ST_OK);
    assert_int_equal(config_set(&cfg, "net.batch=128"), ST_OK);
    assert_int_equal(cfg.batch, 128);
    assert_int_equal(config_set(&cfg, "stem.filters=16"), ST_OK);
    assert_int_equal(cfg.layers[0].filters, 16);
    assert_int_equal(config_set(&cfg, "pool1.stride=1"), ST_OK);
    assert_int_equal(config_set(&cfg, "parallel.overlap=2"), ST_OK);  // alternating (a measurement)
    assert_int_equal(cfg.overlap, 2);
    assert_int_equal(config_set(&cfg, "parallel.overlap=0"), ST_OK);
    assert_int_equal(cfg.overlap, 0);
    assert_int_equal(config_set(&cfg, "data.train_limit=100"), ST_OK);
    assert_int_equal(config_validate(&cfg), ST_OK);

    struct { const char *a, *needle; } bad[] = {
        {"net.batch=0", "net.batch"},          {"net.batch=12x", "net.batch"},
        {"net.nosuch=1", "nosuch"},            {"nolayer.units=3", "nolayer"},
        {"stem.units=3", "units"},             {"net.optimizer=rmsprop", "optimizer"},
        {"net.backend=tpu", "backend"},        {"parallel.comm=gloo", "comm"},
        {"batch=3", "SECTION.KEY=VALUE"},      {"net.lr=-1", "net.lr"},
        {"net.lr=nan", "net.lr"},              {"stem.activation=tanh", "activation"},
        {"net.seed=-5", "net.seed"},           {"parallel.scaling=both", "scaling"},
        {"net.schedule=linear", "schedule"},   {"net.gamma=-1", "net.gamma"},
        {"net.optimizer=adamx", "optimizer"},  {"net.nesterov=2", "net.nesterov"},
        {"net.label_smoothing=1", "net.label_smoothing"}, {"net.label_smoothing=-0.1", "net.label_smoothing"},
        {"net.accum_steps=0", "net.accum_steps"}, {"net.accum_steps=-2", "net.accum_steps"},
        {"net.clip_grad_norm=0", "net.clip_grad_norm"}, {"net.clip_grad_norm=-1", "net.clip_grad_norm"},
        {"parallel.overlap=3", "parallel.overlap"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err_clear();
        int st = config_set(&cfg, bad[i].a);
        if (st != ST_INPUT || !strstr(err_msg(), bad[i].needle))
            fail_msg("--set %s: status %d, message '%s'", bad[i].a, st, err_msg());
    }
    err_clear();
}

static void test_bad_files(void **state) {
    (void)state;
    expect_load_error("unknown_key.cfg", NET "[conv]\nfiltres=3\n[dense]\nunits=10\n[softmax]\n", "filtres", "conv");
    expect_load_error("unknown_net_key.cfg", NET "colour=1\n" LAYERS, "colour", "[net]");
    expect_load_error("unknown_sect.cfg", NET "[maxpooling]\nsize=2\n" LAYERS, "maxpooling", ":5");
    expect_load_error("repeated.cfg", NET "batch=3\nbatch=4\n" LAYERS, "repeated", "batch");
    expect_load_error("repeated_layer_key.cfg", NET "[conv]\nfilters=3\nfilters=4\n[dense]\nunits=10\n[softmax]\n",
                      "repeated", "filters");
    expect_load_error("repeated_net.cfg", NET "[net]\nbatch=3\n" LAYERS, "[net] repeated", NULL);
    expect_load_error("no_filters.cfg", NET "[conv]\nsize=3\n[dense]\nunits=10\n[softmax]\n", "filters", "conv1");
    expect_load_error("no_units.cfg", NET "[conv]\nfilters=3\n[dense]\n[softmax]\n", "units", "dense1");
    expect_load_error("no_width.cfg", "[net]\nchannels=1\nheight=28\n" LAYERS, "width", NULL);
    expect_load_error("no_net.cfg", LAYERS, "[net]", NULL);
    expect_load_error("no_layers.cfg", NET, "layer", NULL);
    expect_load_error("bad_value.cfg", NET "epochs=five\n" LAYERS, "epochs", "five");
    expect_load_error("bad_act.cfg", NET "[conv]\nfilters=3\nactivation=tanh\n[dense]\nunits=10\n[softmax]\n",
                      "activation", "tanh");
    expect_load_error("garbage.cfg", "this is not ini\n", "not an INI line", NULL);
    expect_load_error("key_before.cfg", "batch=3\n" NET LAYERS, "before any section", NULL);
    expect_load_error("huge_kernel.cfg", NET "[conv]\nfilters=3\nsize=29\n[dense]\nunits=10\n[softmax]\n",
                      "impossible shape", "conv1");
    expect_load_error("pool_too_big.cfg", "[net]\nchannels=1\nheight=4\nwidth=4\n[conv]\nfilters=2\n[maxpool]\nsize=3\n"
                                          "[dense]\nunits=10\n[softmax]\n",
                      "impossible shape", "pool1");
    expect_load_error("units_vs_classes.cfg", NET "[conv]\nfilters=3\n[dense]\nunits=7\n[softmax]\n", "units=7",
                      "classes=10");
    expect_load_error("relu_before_softmax.cfg", NET "[conv]\nfilters=3\n[dense]\nunits=10\nactivation=relu\n[softmax]\n",
                      "linear", "dense1");
    expect_load_error("softmax_not_last.cfg", NET "[dense]\nunits=10\n[softmax]\n[dense]\nunits=10\n", "last", NULL);
    expect_load_error("no_softmax.cfg", NET "[dense]\nunits=10\n", "softmax", NULL);
    expect_load_error("conv_after_dense.cfg", NET "[dense]\nunits=10\n[conv]\nfilters=2\n[dense]\nunits=10\n[softmax]\n",
                      "after a dense", "conv1");
    expect_load_error("dup_name.cfg", NET "[conv]\nname=a\nfilters=2\n[conv]\nname=a\nfilters=2\n[dense]\nunits=10\n"
                                      "[softmax]\n",
                      "already", "'a'");
    expect_load_error("nccl_cpu.cfg", NET "[parallel]\ncomm=nccl\n" LAYERS, "nccl", NULL);
    expect_load_error("tf32_cpu.cfg", "[net]\nchannels=1\nheight=28\nwidth=28\ntf32=1\n" LAYERS, "tf32", "backend=cuda");
    expect_load_error("net_after_layers.cfg", NET "[conv]\nfilters=2\n[parallel]\nbucket_kb=4\n[dense]\nunits=10\n"
                                              "[softmax]\n",
                      "before the layer", NULL);
    // training recipes: a schedule's keys with that schedule only, in range; names that exist
    expect_load_error("step_no_steps.cfg", NET "schedule=step\n" LAYERS, "schedule=step needs net.steps", NULL);
    expect_load_error("steps_cosine.cfg", NET "schedule=cosine\nsteps=3\n" LAYERS, "net.steps", "cosine");
    expect_load_error("steps_bad.cfg", NET "schedule=step\nsteps=3,a\n" LAYERS, "net.steps='3,a'", NULL);
    expect_load_error("steps_down.cfg", NET "schedule=step\nsteps=5,3\n" LAYERS, "increase", NULL);
    expect_load_error("steps_comma.cfg", NET "schedule=step\nsteps=3,\n" LAYERS, "comma", NULL);
    expect_load_error("min_lr.cfg", NET "schedule=cosine\nmin_lr=0.01\n" LAYERS, "net.min_lr", "net.lr");
    expect_load_error("nesterov_adam.cfg", NET "nesterov=1\n" LAYERS, "nesterov", "optimizer=sgd");
    expect_load_error("no_decay_name.cfg", NET "no_decay=bias,dense9\n" LAYERS, "no_decay", "'dense9'");
    // [batchnorm]: keys in range (file:line, section, key named), something to normalise
#define BN_NET "[net]\nchannels=1\nheight=4\nwidth=4\nclasses=2\n[conv]\nfilters=2\nactivation=linear\n"
#define BN_HEAD "[dense]\nunits=2\n[softmax]\n"
    expect_load_error("bn_eps0.cfg", BN_NET "[batchnorm]\neps=0\n" BN_HEAD, "bn_eps0.cfg:9: [batchnorm] 'bn1': eps",
                      "> 0");
    expect_load_error("bn_eps_neg.cfg", BN_NET "[batchnorm]\neps=-1e-5\n" BN_HEAD, "bn1.eps", ":10");
    expect_load_error("bn_mom0.cfg", BN_NET "[batchnorm]\nmomentum=0\n" BN_HEAD, "momentum", "(0, 1]");
    expect_load_error("bn_mom_big.cfg", BN_NET "[batchnorm]\nmomentum=1.5\n" BN_HEAD, "bn1.momentum", "1.5");
    expect_load_error("bn_sync.cfg", BN_NET "[batchnorm]\nsync=2\n" BN_HEAD, "bn1.sync", NULL);
    expect_load_error("bn_act.cfg", BN_NET "[batchnorm]\nactivation=tanh\n" BN_HEAD, "activation", "tanh");
    expect_load_error("bn_one_value.cfg", BN_NET "[dense]\nunits=1\n[batchnorm]\n" BN_HEAD, "nothing to normalise",
                      "bn_one_value.cfg:11: [batchnorm] 'bn1'");
#undef BN_NET
#undef BN_HEAD
    char longline[600];
    memset(longline, 'x', sizeof longline);
    memcpy(longline, "[net]\nlr=", 9);
    memcpy(longline + sizeof longline - 2, "\n", 2);
    expect_load_error("long_line.cfg", longline, "longer than", NULL);

    static net_config cfg;
    err_clear();
    assert_int_equal(config_load(tu_path("does_not_exist.cfg"), &cfg), ST_INPUT);
    assert_non_null(strstr(err_msg(), "does_not_exist.cfg"));
    err_clear();
}

// [data] augmentation keys: defaults, values, and every bad value named by file, [data] and key.
static void test_augment_keys(void **state) {
    (void)state;
    static net_config cfg;
    const char *p = write_cfg("aug.cfg", "[net]\nchannels=3\nheight=16\nwidth=12\n[data]\ncrop_pad=2\nflip=1\n"
                                         "normalize=1\nmean=0.5,0.25,0\nstd=0.2, 0.3,1e-3\n" LAYERS);
    assert_int_equal(config_load(p, &cfg), ST_OK);
    assert_int_equal(config_validate(&cfg), ST_OK);
    assert_int_equal(cfg.crop_pad, 2), assert_int_equal(cfg.flip, 1), assert_int_equal(cfg.normalize, 1);
    double mean[CFG_NORM_CHANNELS_MAX], std[CFG_NORM_CHANNELS_MAX];
    int n = -1;
    assert_int_equal(config_norm_values(&cfg, mean, std, &n), ST_OK);
    assert_int_equal(n, 3);
    assert_true(mean[0] == 0.5 && mean[1] == 0.25 && mean[2] == 0 && std[0] == 0.2 && std[1] == 0.3 && std[2] == 1e-3);
    static net_config def;
    config_defaults(&def);
    assert_true(def.crop_pad == 0 && def.flip == 0 && def.normalize == 0 && !def.mean[0] && !def.std[0]);

#define AUG(data) "[net]\nchannels=3\nheight=16\nwidth=12\n[data]\n" data LAYERS
    expect_load_error("a1.cfg", AUG("crop_pad=-1\n"), "data.crop_pad", "a1.cfg:6");
    expect_load_error("a2.cfg", AUG("crop_pad=12\n"), "[data] crop_pad=12 must be smaller than the image (16x12)", NULL);
    expect_load_error("a3.cfg", AUG("flip=2\n"), "data.flip", "not an integer in [0, 1]");
    expect_load_error("a4.cfg", AUG("flip=yes\n"), "data.flip", NULL);
    expect_load_error("a5.cfg", AUG("normalize=2\n"), "data.normalize", NULL);
    expect_load_error("a6.cfg", AUG("normalize=1\nmean=0.5,0.5\nstd=1,1,1\n"), "[data] mean='0.5,0.5' has 2 value(s)",
                      "net.channels=3");
    expect_load_error("a7.cfg", AUG("normalize=1\nmean=0.5,0.5,0.5,0.5\nstd=1,1,1\n"), "[data] mean", "more than 3");
    expect_load_error("a8.cfg", AUG("normalize=1\nmean=0.5,0.5,0.5\nstd=1,0,1\n"), "[data] std: 0 (channel 1) must be > 0",
                      NULL);
    expect_load_error("a9.cfg", AUG("normalize=1\nmean=0.5,0.5,0.5\nstd=1,-2,1\n"), "[data] std: -2", NULL);
    expect_load_error("a10.cfg", AUG("normalize=1\nmean=0.5,x,0.5\nstd=1,1,1\n"), "[data] mean: 'x' is not a number",
                      NULL);
    expect_load_error("a11.cfg", AUG("normalize=1\nmean=0.5,0.5,0.5\n"), "[data] mean is given without std", NULL);
    expect_load_error("a12.cfg", AUG("mean=0.5,0.5,0.5\nstd=1,1,1\n"), "[data] mean is given but normalize=0", NULL);
    expect_load_error("a13.cfg", AUG("normalize=1\nmean=0.5,0.5,0.5,\nstd=1,1,1\n"), "[data] mean", "ends with a comma");
    expect_load_error("a14.cfg", AUG("normalize=1\nmean=0.5,,0.5\nstd=1,1,1\n"), "[data] mean", "one per channel");
    expect_load_error("a15.cfg", AUG("crop=2\n"), "unknown key 'crop' in [data]", NULL);
    expect_load_error("a16.cfg", AUG("normalize=1\nmean=nan,0,0\nstd=1,1,1\n"), "[data] mean: 'nan'", NULL);
#undef AUG
    // --set reaches them too.
    assert_int_equal(config_set(&cfg, "data.crop_pad=3"), ST_OK);
    assert_int_equal(cfg.crop_pad, 3);
    assert_int_equal(config_set(&cfg, "data.flip=-1"), ST_INPUT);
    assert_non_null(strstr(err_msg(), "data.flip"));
    err_clear();
}

static void test_print_round_trips(void **state) {
    (void)state;
    static net_config a, b;
    const char *p = write_cfg("rt.cfg", NET "batch=99\nschedule=step\nsteps=2,4\ngamma=0.5\noptimizer=adamw\n"
                                        "no_decay=bias\nwarmup_epochs=0.5\n[data]\ntrain_limit=5\n[parallel]\n"
                                        "comm_timeout_s=12.5\nlr_scaling=linear\n" LAYERS);
    assert_int_equal(config_load(p, &a), ST_OK);
    FILE *f = fopen(tu_path("printed.cfg"), "w");
    assert_non_null(f);
    config_print(&a, f);
    fclose(f);
    assert_int_equal(config_load(tu_path("printed.cfg"), &b), ST_OK);
    assert_int_equal(config_validate(&b), ST_OK);
    assert_int_equal(b.batch, 99);
    assert_int_equal(b.train_limit, 5);
    assert_true(b.comm_timeout_s == 12.5);
    assert_int_equal(b.lr_scaling, LR_SCALING_LINEAR);
    assert_int_equal(b.schedule, SCHED_STEP);
    assert_string_equal(b.lr_steps, "2,4");
    assert_true(b.gamma == 0.5 && b.warmup_epochs == 0.5);
    assert_int_equal(b.optimizer, OPT_ADAMW);
    assert_string_equal(b.no_decay, "bias");
    assert_int_equal(b.n_layers, a.n_layers);
    for (int i = 0; i < a.n_layers; i++) {
        assert_string_equal(a.layers[i].name, b.layers[i].name);
        assert_int_equal(a.layers[i].type, b.layers[i].type);
        assert_int_equal(a.layers[i].filters, b.layers[i].filters);
        assert_int_equal(a.layers[i].units, b.layers[i].units);
        assert_int_equal(a.layers[i].act, b.layers[i].act);
    }
}

// A checkpoint's stored configuration: config_print's text read back with config_load_text prints the same text
// again (every key round-trips), and a bad line in it is named with the origin and line.
static void test_text_round_trips(void **state) {
    (void)state;
    static net_config a, b;
    const char *p = write_cfg("text.cfg", NET "batch=32\nschedule=cosine\nmin_lr=1e-5\nclip_grad_norm=2.5\n"
                                          "[data]\ntest_limit=7\n[parallel]\nbucket_kb=64\n" LAYERS);
    assert_int_equal(config_load(p, &a), ST_OK);
    assert_int_equal(config_set(&a, "conv1.filters=8"), ST_OK);
    char *t1 = NULL, *t2 = NULL;
    size_t n1 = 0, n2 = 0;
    FILE *f = open_memstream(&t1, &n1);
    config_print(&a, f);
    fclose(f);
    assert_int_equal(config_load_text(t1, "ck.safetensors (its stored config)", &b), ST_OK);
    assert_int_equal(config_validate(&b), ST_OK);
    assert_string_equal(b.path, "ck.safetensors (its stored config)");
    assert_int_equal(b.layers[0].filters, 8);
    assert_true(b.clip_grad_norm == 2.5 && b.min_lr == 1e-5);
    snprintf(b.path, sizeof b.path, "%s", a.path);  // the first line names the origin; the rest must be equal
    f = open_memstream(&t2, &n2);
    config_print(&b, f);
    fclose(f);
    assert_string_equal(t1, t2);
    free(t1);
    free(t2);
    err_clear();
    assert_int_equal(config_load_text("[net]\nchannels=1\nbogus=2\n[softmax]\n", "ck (its stored config)", &b), ST_INPUT);
    assert_non_null(strstr(err_msg(), "ck (its stored config):3: unknown key 'bogus' in [net]"));
    err_clear();
    assert_int_equal(config_load_text("", "ck (its stored config)", &b), ST_INPUT);
    err_clear();
}

// ---------------------------------------------------------------------------------------------------------
// String values in a checkpoint's stored configuration: any bytes, any length a field holds, and a config path
// of any length, come back byte for byte from config_print -> config_load_text.

static char *print_text(const net_config *cfg) {
    char *t = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&t, &n);
    assert_non_null(f);
    config_print(cfg, f);
    fclose(f);
    return t;
}

// Every line of printed text stays well inside the reader's 198 characters.
static void expect_short_lines(const char *text) {
    for (const char *s = text; *s;) {
        size_t len = strcspn(s, "\n");
        if (len >= 160) fail_msg("a printed line of %zu characters: %.60s...", len, s);
        s += len + (s[len] == '\n');
    }
}

// The string fields of net_config (backend and comm are choices: never arbitrary).
static const struct {
    const char *key;
    size_t off, size;
} g_str_fields[] = {
#define STR_FIELD(k, f) {k, offsetof(net_config, f), sizeof(((net_config *)0)->f)}
    STR_FIELD("train_images", train_images), STR_FIELD("train_labels", train_labels),
    STR_FIELD("test_images", test_images),   STR_FIELD("test_labels", test_labels),
    STR_FIELD("cifar_dir", cifar_dir),       STR_FIELD("steps", lr_steps),
    STR_FIELD("no_decay", no_decay),         STR_FIELD("mean", mean),
    STR_FIELD("std", std),                   STR_FIELD("path", path),
#undef STR_FIELD
};
#define N_STR_FIELDS (sizeof g_str_fields / sizeof g_str_fields[0])

static uint64_t rng_next(uint64_t *s) {  // splitmix64
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Random text of 0..max bytes, heavy in what the INI rules treat specially: blanks at either end, " ;", '#',
// '=', quotes, backslashes, '[', control bytes, UTF-8, any byte 1..255.
static void random_text(uint64_t *rng, char *out, size_t max) {
    static const char special[] = " ;#=\"\\[]:\t\n\r\v\f";
    static const char *utf8[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xc2\xa0"};
    uint64_t mode = rng_next(rng) % 4;
    size_t len = mode == 0   ? rng_next(rng) % 9
                 : mode == 1 ? rng_next(rng) % 200
                 : mode == 2 ? rng_next(rng) % (max + 1)
                             : max;
    size_t i = 0;
    while (i < len) {
        uint64_t r = rng_next(rng);
        switch (r % 8) {
        case 3: out[i++] = special[(r >> 8) % (sizeof special - 1)]; break;
        case 4: out[i++] = (char)(1 + (r >> 8) % 255); break;
        case 5:
            for (const char *u = utf8[(r >> 8) % 4]; *u && i < len; u++) out[i++] = *u;
            break;
        case 6:
            out[i++] = ' ';
            if (i < len) out[i++] = ';';
            break;
        case 7: out[i++] = ' '; break;
        default: out[i++] = "abcxyz019/_.-"[(r >> 8) % 13]; break;
        }
    }
    out[len] = '\0';
    uint64_t edge = rng_next(rng) % 4;
    if (len && edge == 1) out[0] = ' ';
    if (len && edge == 2) out[len - 1] = ' ';
}

// print -> load_text (same origin) -> print: the same text, and every string field as it was set.
static void expect_strings_round_trip(const net_config *a, const char *what) {
    static net_config b;
    char *t1 = print_text(a);
    expect_short_lines(t1);
    err_clear();
    if (config_load_text(t1, a->path, &b) != ST_OK) fail_msg("%s: %s\n--\n%s--", what, err_msg(), t1);
    char *t2 = print_text(&b);
    if (strcmp(t1, t2) != 0) fail_msg("%s: printed text changes when read back:\n--\n%s--\n%s--", what, t1, t2);
    for (size_t i = 0; i < N_STR_FIELDS; i++) {
        const char *x = (const char *)a + g_str_fields[i].off, *y = (const char *)&b + g_str_fields[i].off;
        if (strcmp(x, y) != 0) fail_msg("%s: %s changes (%zu -> %zu bytes)", what, g_str_fields[i].key, strlen(x),
                                        strlen(y));
    }
    free(t1);
    free(t2);
}

static void load_ready_config(net_config *cfg) {
    char path[1024];
    snprintf(path, sizeof path, "%s/configs/fashion_mnist_cnn.cfg", DDP_SOURCE_DIR);
    err_clear();
    if (config_load(path, cfg) != ST_OK) fail_msg("%s: %s", path, err_msg());
}

static void test_string_values_round_trip(void **state) {
    (void)state;
    static net_config base, a;
    load_ready_config(&base);
    uint64_t rng = 20240611;
    for (int it = 0; it < 400; it++) {
        a = base;
        for (size_t i = 0; i < N_STR_FIELDS; i++) {
            size_t max = g_str_fields[i].size - 1;
            random_text(&rng, (char *)&a + g_str_fields[i].off, max < 4095 ? max : 4095);
        }
        char what[32];
        snprintf(what, sizeof what, "iteration %d", it);
        expect_strings_round_trip(&a, what);
    }
}

static void test_string_values_explicit(void **state) {
    (void)state;
    static net_config a, b;
    load_ready_config(&a);
    // A 4000-character data path and config path: split over lines, every line short.
    size_t n = 0;
    for (; n < 4000; n++) a.cifar_dir[n] = "/data/deep/0123456789"[n % 21];
    a.cifar_dir[n] = '\0';
    memcpy(a.path, a.cifar_dir, n + 1);
    a.path[7] = ' ';
    expect_strings_round_trip(&a, "4000-character paths");
    char *t = print_text(&a);
    assert_non_null(strstr(t, "\ncifar_dir=\"/data/deep/"));
    assert_non_null(strstr(t, "\n#   "));
    free(t);
    // " ;" (libinih's inline comment), a newline, blanks at both ends, '[' first, an emptied data path.
    load_ready_config(&a);
    snprintf(a.train_images, sizeof a.train_images, "/data/train images ;comment");
    snprintf(a.test_images, sizeof a.test_images, "line one\nline two");
    snprintf(a.test_labels, sizeof a.test_labels, " [x] # y ");
    a.train_labels[0] = '\0';
    expect_strings_round_trip(&a, "odd values");
    t = print_text(&a);
    assert_non_null(strstr(t, "\ntrain_images=\"/data/train images \\x3bcomment\"\n"));
    assert_non_null(strstr(t, "\ntest_images=\"line one\\nline two\"\n"));
    assert_non_null(strstr(t, "\ntest_labels=\" [x] \\x23 y \"\n"));
    assert_non_null(strstr(t, "\ntrain_labels=\"\"\n"));
    free(t);
    // Written by hand: escapes, continuation lines, escaped blanks at a line's edges, a quoted layer name.
    const char *text = NET "[data]\ntrain_images=\"/x/\\x3b y\\\\z\\t\"\ntest_images=\"/long/\n  part2\n"
                           "  \\x20part3 \\x5b\" ; a comment\n[conv]\nname=\"stem\"\nfilters=2\n[dense]\nunits=10\n"
                           "[softmax]\n";
    err_clear();
    if (config_load_text(text, "hand (its stored config)", &b) != ST_OK) fail_msg("%s", err_msg());
    assert_string_equal(b.train_images, "/x/; y\\z\t");
    assert_string_equal(b.test_images, "/long/part2 part3 [");
    assert_string_equal(b.layers[0].name, "stem");
    // Unquoted values are as before: taken as they are, an empty one refused.
    assert_int_equal(config_load_text(NET "[data]\ntrain_images=a\\x3b\n" LAYERS, "t", &b), ST_OK);
    assert_string_equal(b.train_images, "a\\x3b");
    expect_load_error("q_empty.cfg", NET "[data]\ntrain_images=\n" LAYERS, "q_empty.cfg:6", "empty value");
}

// Quoted values that are wrong: named by file, line and key.
static void test_quoted_value_errors(void **state) {
    (void)state;
    expect_load_error("q_next_key.cfg", NET "[data]\ntrain_images=\"/abc\n  def\nflip=1\n" LAYERS,
                      "q_next_key.cfg:6: key 'train_images': quoted value not closed", "next key at line 8");
    expect_load_error("q_header.cfg", NET "[data]\ntrain_images=\"/abc\n[parallel]\n" LAYERS,
                      "q_header.cfg:6: key 'train_images': quoted value not closed", "section header at line 7");
    expect_load_error("q_end.cfg", NET LAYERS "name=\"abc\n  def\n", "q_end.cfg:", "key 'name': quoted value not "
                      "closed before the end of the text");
    expect_load_error("q_escape.cfg", NET "[data]\ntrain_images=\"a\\qb\"\n" LAYERS,
                      "q_escape.cfg:6: key 'train_images': unknown escape \\q", NULL);
    expect_load_error("q_escape2.cfg", NET "[data]\ntrain_images=\"abc\n  d\\x4g\"\n" LAYERS,
                      "q_escape2.cfg:7: key 'train_images': bad \\x escape", NULL);
    expect_load_error("q_nul.cfg", NET "[data]\ntrain_images=\"a\\x00\"\n" LAYERS, "q_nul.cfg:6", "bad \\x escape");
    expect_load_error("q_backslash.cfg", NET "[data]\ntrain_images=\"abc\\\n  def\"\n" LAYERS, "q_backslash.cfg:6",
                      "ends in a backslash");
    expect_load_error("q_after.cfg", NET "[data]\ntrain_images=\"a\"b\n" LAYERS, "q_after.cfg:6",
                      "text after the closing quote");
    expect_load_error("q_after2.cfg", NET "[data]\ntrain_images=\"a\n  b\";c\n" LAYERS, "q_after2.cfg:7",
                      "text after the closing quote");
    char big[600];  // 260 characters over two lines: longer than net.steps holds
    snprintf(big, sizeof big, NET "steps=\"%0130d\n  %0130d\"\n" LAYERS, 1, 2);
    expect_load_error("q_size.cfg", big, "q_size.cfg:5: net.steps: value longer than 255", NULL);
    // Decoded values meet the same checks as plain ones.
    expect_load_error("q_choice.cfg", NET "backend=\"tpu\"\n" LAYERS, "q_choice.cfg:5: net.backend: 'tpu'", NULL);
    expect_load_error("q_name.cfg", NET "[conv]\nname=\"a b\"\nfilters=2\n[dense]\nunits=10\n[softmax]\n",
                      "q_name.cfg:6: [conv] name: 'a b' is not a name", NULL);
    // A continuation line that continues no quoted value: the same key again, as before.
    expect_load_error("q_cont.cfg", NET "batch=3\n  4\n" LAYERS, "q_cont.cfg:6: key 'batch' repeated", NULL);
    expect_load_error("q_cont2.cfg", NET "[data]\ntrain_images=\"a\"\n  \"b\"\n" LAYERS,
                      "q_cont2.cfg:7: key 'train_images' repeated", NULL);
}

// The ready configs print plainly, as they always did: no quotes, no continuation lines.
static void test_ready_configs_print_plainly(void **state) {
    (void)state;
    const char *names[] = {"fashion_mnist_cnn.cfg", "mnist_cnn.cfg", "cifar10_cnn.cfg", "fashion_mnist_cnn_cuda.cfg",
                           "cifar10_resnet.cfg", "fashion_resnet.cfg", "resnet_small.cfg", "resnet_small_bn.cfg"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        static net_config cfg;
        char path[1024];
        snprintf(path, sizeof path, "%s/configs/%s", DDP_SOURCE_DIR, names[i]);
        err_clear();
        if (config_load(path, &cfg) != ST_OK) fail_msg("%s: %s", path, err_msg());
        char *t = print_text(&cfg);
        if (strchr(t, '"') || strstr(t, "\n ")) fail_msg("%s prints a quoted value:\n%s", names[i], t);
        char first[1100];
        snprintf(first, sizeof first, "# effective configuration of %s\n[net]\n", path);
        assert_int_equal(strncmp(t, first, strlen(first)), 0);
        if (i == 0) {
            assert_non_null(strstr(t, "\nbatch=64\n"));
            assert_non_null(strstr(t, "\ntrain_images=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz\n"));
            assert_non_null(strstr(t, "\n[conv]\nname=conv1\n"));
        }
        free(t);
    }
}

// Config text with the layer kinds [shortcut], [route], [dropout], [avgpool]: it validates, and print -> load_text -> print is the same
// text (every key of every kind round-trips).
static void expect_text_round_trip(const char *what, const char *ini) {
    static net_config a, b;
    err_clear();
    if (config_load_text(ini, what, &a) != ST_OK || config_validate(&a) != ST_OK) fail_msg("%s: %s", what, err_msg());
    char *t1 = NULL, *t2 = NULL;
    size_t n1 = 0, n2 = 0;
    FILE *f = open_memstream(&t1, &n1);
    config_print(&a, f);
    fclose(f);
    if (config_load_text(t1, what, &b) != ST_OK || config_validate(&b) != ST_OK)
        fail_msg("%s (printed): %s", what, err_msg());
    f = open_memstream(&t2, &n2);
    config_print(&b, f);
    fclose(f);
    assert_string_equal(t1, t2);
    for (int i = 0; i < a.n_layers; i++) {  // every field but the line it came from
        layer_cfg la = a.layers[i], lb = b.layers[i];
        la.line = lb.line = 0;
        assert_int_equal(memcmp(&la, &lb, sizeof la), 0);
    }
    free(t1);
    free(t2);
}

#define NET8 "[net]\nchannels=3\nheight=8\nwidth=8\n"

static void test_leaky_and_bias(void **state) {
    (void)state;
    expect_text_round_trip("leaky.cfg", NET8 "[conv]\nfilters=4\nactivation=leaky\nbias=0\n"
                                             "[dense]\nunits=6\nactivation=leaky\nbias=0\n[dense]\nunits=10\n[softmax]\n");
    static net_config cfg;
    const char *p = write_cfg("defaults.cfg", NET8 "[conv]\nfilters=4\n[dense]\nunits=10\n[softmax]\n");
    assert_int_equal(config_load(p, &cfg), ST_OK);
    assert_int_equal(cfg.layers[0].bias, 1);
    assert_int_equal(cfg.layers[1].bias, 1);
    expect_load_error("bias2.cfg", NET8 "[conv]\nfilters=4\nbias=2\n[dense]\nunits=10\n[softmax]\n", "bias2.cfg:7",
                      "[conv] conv1.bias");
    expect_load_error("act.cfg", NET8 "[conv]\nfilters=4\nactivation=tanh\n[dense]\nunits=10\n[softmax]\n",
                      "act.cfg:7", "[conv] conv1.activation");
}

#define RES_BLOCK                                                                                              \
    "[conv]\nfilters=4\nstride=2\npad=1\n[conv]\nfilters=4\npad=1\nbias=0\nactivation=leaky\n"                 \
    "[conv]\nfilters=4\nsize=1\nactivation=linear\n"

static void test_shortcut(void **state) {
    (void)state;
    expect_text_round_trip("shortcut.cfg", NET8 RES_BLOCK "[shortcut]\nfrom=-3\nactivation=leaky\n[shortcut]\nfrom=1\n"
                                                  "[dense]\nunits=10\n[softmax]\n");
    static net_config cfg;
    assert_int_equal(config_load_text(NET8 RES_BLOCK "[shortcut]\nfrom=-3\n[dense]\nunits=10\n[softmax]\n", "t", &cfg),
                     ST_OK);
    assert_string_equal(cfg.layers[3].name, "shortcut1");
    assert_int_equal(cfg.layers[3].act, ACT_NONE);  // Darknet's default: linear
    assert_int_equal(cfg.layers[3].n_refs, 1);
    assert_int_equal(cfg.layers[3].refs[0], -3);
    // Shapes must match exactly: the message names both layers and shapes.
    expect_load_error("sc_shape.cfg", NET8 RES_BLOCK "[maxpool]\n[shortcut]\nfrom=-2\n[dense]\nunits=10\n[softmax]\n",
                      "sc_shape.cfg:19: [shortcut] 'shortcut1': from: layer 2 ('conv3') gives 4x4x4", "('pool1') 4x2x2");
    expect_load_error("sc_shape2.cfg", NET8 RES_BLOCK "[conv]\nfilters=5\nsize=1\n[shortcut]\nfrom=-2\n[dense]\nunits=10\n"
                      "[softmax]\n", "[shortcut] 'shortcut1': from: layer 2 ('conv3') gives 4x4x4", "5x4x4");
    // Out of range, pointing forward or at itself, several, none, not a number.
    expect_load_error("sc_range.cfg", NET8 RES_BLOCK "[shortcut]\nfrom=-9\n[dense]\nunits=10\n[softmax]\n",
                      "sc_range.cfg:18: [shortcut] 'shortcut1': from: -9 does not name an earlier layer", NULL);
    expect_load_error("sc_fwd.cfg", NET8 RES_BLOCK "[shortcut]\nfrom=4\n[dense]\nunits=10\n[softmax]\n",
                      "sc_fwd.cfg:18: [shortcut] 'shortcut1': from: 4 does not name an earlier layer", NULL);
    expect_load_error("sc_self.cfg", NET8 RES_BLOCK "[shortcut]\nfrom=3\n[dense]\nunits=10\n[softmax]\n",
                      "sc_self.cfg:18", "from: 3 does not name an earlier layer");
    expect_load_error("sc_two.cfg", NET8 RES_BLOCK "[shortcut]\nfrom=-1,-3\n[dense]\nunits=10\n[softmax]\n",
                      "sc_two.cfg:19: [shortcut] shortcut1.from", "at most 1 index");
    expect_load_error("sc_none.cfg", NET8 RES_BLOCK "[shortcut]\n[dense]\nunits=10\n[softmax]\n",
                      "sc_none.cfg:18: [shortcut] 'shortcut1'", "missing required key 'from'");
    expect_load_error("sc_nan.cfg", NET8 RES_BLOCK "[shortcut]\nfrom=x\n[dense]\nunits=10\n[softmax]\n",
                      "sc_nan.cfg:19: [shortcut] shortcut1.from", "not a list of layer indices");
}

static void test_route(void **state) {
    (void)state;
    expect_text_round_trip("route.cfg", NET8 RES_BLOCK "[route]\nlayers=-1,-3,1\n[route]\nlayers=-1\n[dense]\nunits=10\n"
                                               "[softmax]\n");
    // Spatial sizes must match: both layers and shapes named.
    expect_load_error("rt_shape.cfg", NET8 "[conv]\nfilters=4\n[conv]\nfilters=2\n[route]\nlayers=-1,-2\n[dense]\n"
                      "units=10\n[softmax]\n", "rt_shape.cfg:9: [route] 'route1': layers: layer 1 ('conv2') gives 2x4x4",
                      "layer 0 ('conv1') 4x6x6");
    expect_load_error("rt_range.cfg", NET8 RES_BLOCK "[route]\nlayers=-1,-5\n[dense]\nunits=10\n[softmax]\n",
                      "rt_range.cfg:18: [route] 'route1': layers: -5 does not name an earlier layer", NULL);
    expect_load_error("rt_fwd.cfg", NET8 RES_BLOCK "[route]\nlayers=-1,5\n[dense]\nunits=10\n[softmax]\n",
                      "rt_fwd.cfg:18: [route] 'route1': layers: 5 does not name an earlier layer", NULL);
    expect_load_error("rt_many.cfg", NET8 RES_BLOCK "[route]\nlayers=-1,-1,-1,-1,-1\n[dense]\nunits=10\n[softmax]\n",
                      "rt_many.cfg:19: [route] route1.layers", "at most 4 indices");
    expect_load_error("rt_none.cfg", NET8 RES_BLOCK "[route]\n[dense]\nunits=10\n[softmax]\n",
                      "rt_none.cfg:18: [route] 'route1'", "missing required key 'layers'");
    // A route that skips a layer leaves that layer's output unread: refused.
    expect_load_error("rt_dead.cfg", NET8 RES_BLOCK "[route]\nlayers=-2\n[dense]\nunits=10\n[softmax]\n",
                      "rt_dead.cfg:14: [conv] 'conv3'", "read by no later layer");
}

static void test_dropout(void **state) {
    (void)state;
    expect_text_round_trip("dropout.cfg", NET8 "[conv]\nfilters=4\n[dropout]\nrate=0.25\n[dense]\nunits=8\n[dropout]\n"
                                                 "[dense]\nunits=10\n[softmax]\n");
    static net_config cfg;
    assert_int_equal(config_load_text(NET8 "[conv]\nfilters=4\n[dropout]\n[dense]\nunits=10\n[softmax]\n", "t", &cfg),
                     ST_OK);
    assert_string_equal(cfg.layers[1].name, "drop1");
    assert_true(cfg.layers[1].rate == 0.5);
    expect_load_error("dr_one.cfg", NET8 "[conv]\nfilters=4\n[dropout]\nrate=1\n[dense]\nunits=10\n[softmax]\n",
                      "dr_one.cfg:7: [dropout] 'drop1': rate: 1 is outside [0, 1)", NULL);
    expect_load_error("dr_neg.cfg", NET8 "[conv]\nfilters=4\n[dropout]\nrate=-0.1\n[dense]\nunits=10\n[softmax]\n",
                      "dr_neg.cfg:8: [dropout] drop1.rate: '-0.1' is not a number in [0, 1]", NULL);
    expect_load_error("dr_big.cfg", NET8 "[conv]\nfilters=4\n[dropout]\nrate=1.5\n[dense]\nunits=10\n[softmax]\n",
                      "dr_big.cfg:8: [dropout] drop1.rate", NULL);
    expect_load_error("dr_nan.cfg", NET8 "[conv]\nfilters=4\n[dropout]\nrate=nan\n[dense]\nunits=10\n[softmax]\n",
                      "dr_nan.cfg:8: [dropout] drop1.rate", NULL);
}

static void test_avgpool(void **state) {
    (void)state;
    expect_text_round_trip("avgpool.cfg", NET8 "[conv]\nfilters=4\n[avgpool]\nsize=2\n[avgpool]\nsize=2\nstride=1\n"
                                                 "[conv]\nfilters=5\nsize=1\n[avgpool]\n[dense]\nunits=10\n[softmax]\n");
    static net_config cfg;
    assert_int_equal(config_load_text(NET8 "[conv]\nfilters=4\n[avgpool]\n[dense]\nunits=10\n[softmax]\n", "t", &cfg),
                     ST_OK);
    assert_string_equal(cfg.layers[1].name, "avgpool1");
    assert_int_equal(cfg.layers[1].size, 0);  // global
    expect_load_error("ap_stride.cfg", NET8 "[conv]\nfilters=4\n[avgpool]\nstride=2\n[dense]\nunits=10\n[softmax]\n",
                      "ap_stride.cfg:7: [avgpool] 'avgpool1': stride: only with a window", NULL);
    expect_load_error("ap_size.cfg", NET8 "[conv]\nfilters=4\n[avgpool]\nsize=7\n[dense]\nunits=10\n[softmax]\n",
                      "ap_size.cfg:7: [avgpool] 'avgpool1': size: impossible shape: window 7 on a 6x6 input", NULL);
    expect_load_error("ap_dense.cfg", NET8 "[dense]\nunits=4\n[avgpool]\n[dense]\nunits=10\n[softmax]\n",
                      "ap_dense.cfg:7: [avgpool] 'avgpool1'", "no longer spatial");
    expect_load_error("ap_neg.cfg", NET8 "[conv]\nfilters=4\n[avgpool]\nsize=-1\n[dense]\nunits=10\n[softmax]\n",
                      "ap_neg.cfg:8: [avgpool] avgpool1.size", NULL);
}

// Bounded input: a FIFO, a device or a directory as the config is refused before any read (never blocks), and
// a regular file over 1 MiB is refused from its size.
static void test_unbounded_configs_refused(void **state) {
    (void)state;
    static net_config cfg;
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s", tu_path("c.fifo"));
    assert_int_equal(mkfifo(fifo, 0644), 0);
    const char *paths[] = {fifo, "/dev/zero", tu_tmpdir()};
    const char *kinds[] = {"a FIFO", "a character device", "a directory"};
    for (int i = 0; i < 3; i++) {
        err_clear();
        double t0 = now_s();
        assert_int_equal(config_load(paths[i], &cfg), ST_INPUT);
        assert_true(now_s() - t0 < 1.0);
        if (!strstr(err_msg(), kinds[i]) || !strstr(err_msg(), paths[i])) fail_msg("message '%s'", err_msg());
    }
    unlink(fifo);
    const char *big = tu_path("big.cfg");
    size_t n = (1u << 20) + 1;
    char *text = malloc(n);
    assert_non_null(text);
    memset(text, '\n', n);
    assert_int_equal(tu_write_file(big, text, n, 0), 0);
    free(text);
    err_clear();
    assert_int_equal(config_load(big, &cfg), ST_INPUT);
    assert_non_null(strstr(err_msg(), "limit"));
    err_clear();
}

// [repeat] count=N start=S ... [end]: the block's sections N times with {i} = S, S+1, ...; dotted names (PyTorch's
// module paths) and --set through them; every misuse a line-numbered error.
static void test_repeat_and_dotted_names(void **state) {
    (void)state;
    net_config *c = malloc(sizeof *c);
    assert_non_null(c);
    const char *text = "[net]\nchannels=1\nheight=8\nwidth=8\nclasses=2\n"
                       "[conv]\nname=stem\nfilters=4\npad=1\n"
                       "[repeat]\ncount=3\nstart=1\n; comment\n"
                       "[conv]\nname=layer1.{i}.conv1\nfilters=4\npad=1\n"
                       "[shortcut]\nfrom=-2\n[end]\n"
                       "[flatten]\n[dense]\nunits=2\n[softmax]\n";
    assert_int_equal(config_load_text(text, "r.cfg", c), ST_OK);
    assert_int_equal(c->n_layers, 1 + 3 * 2 + 3);
    assert_string_equal(c->layers[1].name, "layer1.1.conv1");
    assert_string_equal(c->layers[5].name, "layer1.3.conv1");
    assert_int_equal(c->layers[1].line, 14);  // the copies name the line in the file
    assert_int_equal(c->layers[5].line, 14);
    assert_int_equal(config_validate(c), ST_OK);
    assert_int_equal(config_set(c, "layer1.2.conv1.filters=4"), ST_OK);
    assert_int_equal(config_set(c, "layer1.9.conv1.filters=4"), ST_INPUT);
    assert_non_null(strstr(err_msg(), "layer1.9.conv1"));
    err_clear();
    // the printed config (the copies written out) reads back the same
    char *t1 = config_text(c);
    net_config *d = malloc(sizeof *d);
    assert_int_equal(config_load_text(t1, "r.cfg", d), ST_OK);
    assert_int_equal(d->n_layers, c->n_layers);
    assert_string_equal(d->layers[3].name, "layer1.2.conv1");
    free(t1);
    static const struct { const char *text, *want; } bad[] = {
        {"[net]\nchannels=1\n[repeat]\ncount=2\n[conv]\n", "r.cfg:3: [repeat] without its [end]"},
        {"[net]\nchannels=1\n[conv]\n[end]\n", "r.cfg:4: [end] without a [repeat]"},
        {"[net]\nchannels=1\n[repeat]\ncount=0\n[conv]\n[end]\n", "r.cfg:4: [repeat]: count must be 1 to 1000"},
        {"[net]\nchannels=1\n[repeat]\ncount=1001\n[conv]\n[end]\n", "r.cfg:4: [repeat]"},
        {"[net]\nchannels=1\n[repeat]\n[conv]\n[end]\n", "r.cfg:3: [repeat] without count"},
        {"[net]\nchannels=1\n[repeat]\ncount=2\n[end]\n", "no layer section"},
        {"[net]\nchannels=1\n[repeat]\ncount=2\n[conv]\n[repeat]\n[end]\n", "r.cfg:6: [repeat] inside"},
        {"[net]\nchannels=1\n[conv]\nname=a..b\n", "is not a name"},
        {"[net]\nchannels=1\n[conv]\nname=.a\n", "is not a name"},
        {"[net]\nchannels=1\n[conv]\nname=a.\n", "is not a name"},
        {"[net]\nchannels=1\n[repeat]\ncount=2\n[conv]\nname=x\n[end]\n", "already the name of another layer"},
        {"[net]\nchannels=1\n[include]\ncount=2\n[conv]\n", "r.cfg:3: [include] without file=PATH"},
        {"[net]\nchannels=1\n[include]\nfile=/nonexistent/block.cfg\n[conv]\n", "r.cfg:3: [include]: "},
        {"[net]\nchannels=1\n[repeat]\ncount=1\n[conv]\nname=a{k}\n[end]\n", "{k} is not {i} or a variable"},
        {"[net]\nchannels=1\n[repeat]\ncount=1\nfile=x\n[conv]\n[end]\n", "'file' is not a variable name"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(config_load_text(bad[i].text, "r.cfg", d), ST_INPUT);
        if (!strstr(err_msg(), bad[i].want)) fail_msg("case %zu: '%s' lacks '%s'", i, err_msg(), bad[i].want);
        err_clear();
    }
    free(c), free(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ready_configs_parse), cmocka_unit_test(test_defaults_and_values),
        cmocka_unit_test(test_set_overrides),       cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_print_round_trips),   cmocka_unit_test(test_unbounded_configs_refused),
        cmocka_unit_test(test_text_round_trips),    cmocka_unit_test(test_leaky_and_bias),
        cmocka_unit_test(test_shortcut),           cmocka_unit_test(test_route),
        cmocka_unit_test(test_dropout),            cmocka_unit_test(test_avgpool),
        cmocka_unit_test(test_augment_keys),       cmocka_unit_test(test_string_values_round_trip),
        cmocka_unit_test(test_string_values_explicit), cmocka_unit_test(test_quoted_value_errors),
        cmocka_unit_test(test_ready_configs_print_plainly),
        cmocka_unit_test(test_repeat_and_dotted_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
