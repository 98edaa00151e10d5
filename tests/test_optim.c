// test_optim.c — optim_step (Adam with Keras defaults, SGD with momentum) through the CPU backend against
// references written in the Keras form, in double precision, over several steps with changing gradients.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "optim.h"
#include "train_state.h"
#include "test_util.h"

enum { N = 37, STEPS = 6 };

static void grads_for_step(int t, float *g) {
    rng r;
    rng_seed(&r, 100 + (uint64_t)t);
    for (int i = 0; i < N; i++) g[i] = (rng_uniform(&r) - 0.5f) * (i % 5 == 0 ? 1e-4f : 2.0f);
}

static void test_adam_matches_keras(void **state) {
    (void)state;
    backend be;
    assert_int_equal(backend_cpu_create(&be, 1), ST_OK);
    static net_config cfg;
    config_defaults(&cfg);
    assert_true(cfg.lr == 1e-3 && cfg.beta1 == 0.9 && cfg.beta2 == 0.999 && cfg.eps == 1e-7);  // Keras defaults
    optim o;
    assert_int_equal(optim_create(&o, &be, &cfg, N), ST_OK);
    float p[N], g[N];
    double rp[N], rm[N] = {0}, rv[N] = {0};
    for (int i = 0; i < N; i++) p[i] = (float)(rp[i] = 0.1 * (i - 18));
    for (int t = 1; t <= STEPS; t++) {
        grads_for_step(t, g);
        assert_int_equal(optim_step(&o, p, g, cfg.lr), ST_OK);
        // Keras Adam: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
        // lr_t = lr sqrt(1-b2^t)/(1-b1^t); p -= lr_t m / (sqrt(v) + eps)
        double lr_t = cfg.lr * sqrt(1 - pow(cfg.beta2, t)) / (1 - pow(cfg.beta1, t));
        for (int i = 0; i < N; i++) {
            rm[i] = cfg.beta1 * rm[i] + (1 - cfg.beta1) * g[i];
            rv[i] = cfg.beta2 * rv[i] + (1 - cfg.beta2) * (double)g[i] * g[i];
            rp[i] -= lr_t * rm[i] / (sqrt(rv[i]) + cfg.eps);
        }
    }
    assert_int_equal(o.t, STEPS);
    for (int i = 0; i < N; i++) {
        if (fabs(p[i] - rp[i]) > 1e-6) fail_msg("p[%d] = %.9g, Keras reference %.9g", i, p[i], rp[i]);
        // every parameter moved (by about lr per step for a steady sign)
        assert_true(fabs(rp[i] - 0.1 * (i - 18)) > 1e-5);
    }
    const char *name;
    assert_int_equal(optim_n_state(&o), 2);
    assert_ptr_equal(optim_state(&o, 0, &name), o.m);
    assert_string_equal(name, "adam_m");
    assert_ptr_equal(optim_state(&o, 1, &name), o.v);
    assert_string_equal(name, "adam_v");
    optim_destroy(&o);
    backend_destroy(&be);
}

static void test_sgd_momentum_matches_keras(void **state) {
    (void)state;
    backend be;
    assert_int_equal(backend_cpu_create(&be, 1), ST_OK);
    static net_config cfg;
    config_defaults(&cfg);
    cfg.optimizer = OPT_SGD;
    cfg.momentum = 0.9;
    cfg.weight_decay = 0.01;
    optim o;
    assert_int_equal(optim_create(&o, &be, &cfg, N), ST_OK);
    float p[N], g[N];
    double rp[N], rvel[N] = {0};
    for (int i = 0; i < N; i++) p[i] = (float)(rp[i] = 0.05 * i);
    const double lr = 0.05;
    for (int t = 1; t <= STEPS; t++) {
        grads_for_step(t, g);
        assert_int_equal(optim_step(&o, p, g, lr), ST_OK);
        // Keras SGD (momentum, L2 in the gradient): v = mom v - lr (g + wd p); p += v
        for (int i = 0; i < N; i++) {
            rvel[i] = cfg.momentum * rvel[i] - lr * (g[i] + cfg.weight_decay * rp[i]);
            rp[i] += rvel[i];
        }
    }
    for (int i = 0; i < N; i++)
        if (fabs(p[i] - rp[i]) > 1e-5) fail_msg("p[%d] = %.9g, Keras reference %.9g", i, p[i], rp[i]);
    const char *name;
    assert_int_equal(optim_n_state(&o), 1);
    optim_state(&o, 0, &name);
    assert_string_equal(name, "sgd_velocity");
    optim_destroy(&o);
    backend_destroy(&be);
}

// AdamW (PyTorch's order: p *= 1 - lr wd, then the Adam step without L2), with one stretch excluded from decay
// (net.no_decay): the optimizer is cut into segments there and each gets its own weight decay.
static void test_adamw_decoupled_and_no_decay(void **state) {
    (void)state;
    backend be;
    assert_int_equal(backend_cpu_create(&be, 1), ST_OK);
    static net_config cfg;
    config_defaults(&cfg);
    cfg.optimizer = OPT_ADAMW;
    cfg.weight_decay = 0.05;
    optim o;
    assert_int_equal(optim_create(&o, &be, &cfg, N), ST_OK);
    const size_t nd_begin[2] = {30, 10}, nd_len[2] = {7, 5};  // [10, 15) and [30, 37): no decay
    assert_int_equal(optim_no_decay(&o, nd_begin, nd_len, 2), ST_OK);
    assert_int_equal(o.n_seg, 4);  // [0,10) decay, [10,15) none, [15,30) decay, [30,37) none
    float p[N], g[N];
    double rp[N], rm[N] = {0}, rv[N] = {0};
    for (int i = 0; i < N; i++) p[i] = (float)(rp[i] = 0.1 * (i - 18));
    const double lr = 0.01;
    for (int t = 1; t <= STEPS; t++) {
        grads_for_step(t, g);
        assert_int_equal(optim_step(&o, p, g, lr), ST_OK);
        double lr_t = lr * sqrt(1 - pow(cfg.beta2, t)) / (1 - pow(cfg.beta1, t));
        for (int i = 0; i < N; i++) {
            const int decay = !((i >= 10 && i < 15) || i >= 30);
            if (decay) rp[i] *= 1 - lr * cfg.weight_decay;
            rm[i] = cfg.beta1 * rm[i] + (1 - cfg.beta1) * g[i];
            rv[i] = cfg.beta2 * rv[i] + (1 - cfg.beta2) * (double)g[i] * g[i];
            rp[i] -= lr_t * rm[i] / (sqrt(rv[i]) + cfg.eps);
        }
    }
    for (int i = 0; i < N; i++)
        if (fabs(p[i] - rp[i]) > 2e-6) fail_msg("p[%d] = %.9g, AdamW reference %.9g", i, p[i], rp[i]);
    // the decay made a difference where it applies: against plain Adam the decayed parameters moved to 0
    const char *name;
    optim_state(&o, 0, &name);
    assert_string_equal(name, "adam_m");
    assert_string_equal(optim_name(OPT_ADAMW), "adamw");
    optim_destroy(&o);
    backend_destroy(&be);
}

// SGD with Nesterov momentum, as PyTorch: buf = mom buf + g'; p -= lr (g' + mom buf), g' = g + wd p.
static void test_sgd_nesterov(void **state) {
    (void)state;
    backend be;
    assert_int_equal(backend_cpu_create(&be, 1), ST_OK);
    static net_config cfg;
    config_defaults(&cfg);
    cfg.optimizer = OPT_SGD;
    cfg.momentum = 0.8;
    cfg.nesterov = 1;
    cfg.weight_decay = 0.01;
    optim o;
    assert_int_equal(optim_create(&o, &be, &cfg, N), ST_OK);
    float p[N], g[N];
    double rp[N], rb[N] = {0};
    for (int i = 0; i < N; i++) p[i] = (float)(rp[i] = 0.05 * i);
    const double lr = 0.05;
    for (int t = 1; t <= STEPS; t++) {
        grads_for_step(t, g);
        assert_int_equal(optim_step(&o, p, g, lr), ST_OK);
        for (int i = 0; i < N; i++) {
            const double gi = g[i] + cfg.weight_decay * rp[i];
            rb[i] = cfg.momentum * rb[i] + gi;
            rp[i] -= lr * (gi + cfg.momentum * rb[i]);
        }
    }
    for (int i = 0; i < N; i++)
        if (fabs(p[i] - rp[i]) > 1e-5) fail_msg("p[%d] = %.9g, Nesterov reference %.9g", i, p[i], rp[i]);
    optim_destroy(&o);
    backend_destroy(&be);
}

static double schedule_at(const char *text, int epochs, int spe, long long step) {
    static net_config cfg;
    config_defaults(&cfg);
    cfg.epochs = epochs;
    cfg.lr = 0.1;
    char key[64], value[64];
    for (const char *s = text; *s;) {
        // "key=value;key=value"
        size_t n = strcspn(s, ";");
        assert_int_equal(sscanf(s, "%63[^=]=%63[^;]", key, value), 2);
        char set[160];
        snprintf(set, sizeof set, "net.%s=%s", key, value);
        err_clear();
        if (config_set(&cfg, set) != ST_OK) fail_msg("%s: %s", set, err_msg());
        s += n + (s[n] == ';');
    }
    lr_schedule sc;
    assert_int_equal(lr_schedule_init(&sc, &cfg, cfg.lr, spe), ST_OK);
    return lr_schedule_at(&sc, step);
}

#define NEAR(a, b) assert_true(fabs((a) - (b)) <= 1e-12 * (1 + fabs(b)))

// Every schedule against its closed form (docs/config.md, "Training recipes"), 10 epochs of 100 steps, peak 0.1.
static void test_schedules_closed_forms(void **state) {
    (void)state;
    const double pi = 3.14159265358979323846, peak = 0.1;
    for (long long s = 0; s < 1000; s += 37) NEAR(schedule_at("", 10, 100, s), peak);
    // warmup 2.5 epochs = 250 steps: lr = peak (s + 1) / 250, then constant
    for (long long s = 0; s < 250; s += 13) NEAR(schedule_at("warmup_epochs=2.5", 10, 100, s), peak * (s + 1) / 250.0);
    NEAR(schedule_at("warmup_epochs=2.5", 10, 100, 249), peak);
    NEAR(schedule_at("warmup_epochs=2.5", 10, 100, 600), peak);
    // step at epochs 3 and 7, gamma 0.5
    const char *st = "schedule=step;steps=3,7;gamma=0.5";
    NEAR(schedule_at(st, 10, 100, 0), peak);
    NEAR(schedule_at(st, 10, 100, 299), peak);
    NEAR(schedule_at(st, 10, 100, 300), peak * 0.5);
    NEAR(schedule_at(st, 10, 100, 699), peak * 0.5);
    NEAR(schedule_at(st, 10, 100, 700), peak * 0.25);
    NEAR(schedule_at(st, 10, 100, 999), peak * 0.25);
    // cosine to min_lr 0.001 after a 1-epoch warmup: p = (s - 100) / 900
    for (long long s = 100; s < 1000; s += 41) {
        const double p = (s - 100) / 900.0;
        NEAR(schedule_at("schedule=cosine;min_lr=0.001;warmup_epochs=1", 10, 100, s),
             0.001 + (peak - 0.001) * 0.5 * (1 + cos(pi * p)));
    }
    NEAR(schedule_at("schedule=cosine", 10, 100, 0), peak);
    // onecycle: 30 % warmup from peak / 25, then cosine to min_lr (0)
    const char *oc = "schedule=onecycle";
    NEAR(schedule_at(oc, 10, 100, 0), peak / 25 + (peak - peak / 25) * 1 / 300.0);
    NEAR(schedule_at(oc, 10, 100, 149), peak / 25 + (peak - peak / 25) * 150 / 300.0);
    NEAR(schedule_at(oc, 10, 100, 299), peak);
    NEAR(schedule_at(oc, 10, 100, 300), peak);
    NEAR(schedule_at(oc, 10, 100, 650), peak * 0.5 * (1 + cos(pi * 350 / 700.0)));
    assert_true(schedule_at(oc, 10, 100, 999) < peak * 1e-4);
}

// net.no_decay=batchnorm: every [batchnorm]'s weight and bias, and nothing else, is left out of weight decay (the
// optimizer's segments are cut exactly there); with `bias` too, the other layers' biases join them.
static void test_no_decay_batchnorm_segments(void **state) {
    (void)state;
    static net_config cfg;
    const char *text = "[net]\nchannels=1\nheight=4\nwidth=4\nclasses=3\nweight_decay=0.1\noptimizer=adamw\n"
                       "[conv]\nfilters=2\nsize=3\npad=1\nbias=0\nactivation=linear\n[batchnorm]\nactivation=relu\n"
                       "[dense]\nunits=5\n[batchnorm]\nname=bnd\n[dense]\nunits=3\n[softmax]\n";
    assert_int_equal(config_load_text(text, "nd", &cfg), ST_OK);
    assert_int_equal(config_validate(&cfg), ST_OK);
    backend be;
    model m;
    assert_int_equal(backend_create(&be, "cpu", &(backend_options){.threads = 1}), ST_OK);
    assert_int_equal(model_create(&m, &be, &cfg, 4), ST_OK);
    size_t begin[2 * CFG_MAX_LAYERS], len[2 * CFG_MAX_LAYERS];
    // Which floats of the buffer are BN parameters, and which are biases of other layers.
    unsigned char *is_bn = calloc(m.n_params, 1), *is_bias = calloc(m.n_params, 1);
    for (int i = 0; i < m.n_layers; i++) {
        const model_layer *l = &m.layers[i];
        for (size_t k = 0; k < l->n_w; k++) is_bn[l->w_off + k] = l->type == LAYER_BATCHNORM;
        for (size_t k = 0; k < l->n_b; k++) is_bn[l->b_off + k] = l->type == LAYER_BATCHNORM;
        for (size_t k = 0; k < l->n_b; k++) is_bias[l->b_off + k] = l->type != LAYER_BATCHNORM;
    }
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        const int n = train_no_decay_ranges(&m, with_bias ? "bias,batchnorm" : "batchnorm", begin, len);
        assert_int_equal(n, with_bias ? 6 : 4);  // two BN layers x (weight, bias); + the two dense biases
        optim o;
        assert_int_equal(optim_create(&o, &be, &cfg, m.n_params), ST_OK);
        assert_int_equal(optim_no_decay(&o, begin, len, n), ST_OK);
        size_t covered = 0, undecayed = 0;
        for (int s = 0; s < o.n_seg; s++) {
            assert_int_equal(o.seg[s].begin, covered);
            for (size_t k = o.seg[s].begin; k < o.seg[s].end; k++) {
                const int want_decay = !(is_bn[k] || (with_bias && is_bias[k]));
                if (o.seg[s].decay != want_decay)
                    fail_msg("float %zu: decay %d, want %d (no_decay=%s)", k, o.seg[s].decay, want_decay,
                             with_bias ? "bias,batchnorm" : "batchnorm");
                undecayed += !o.seg[s].decay;
            }
            covered = o.seg[s].end;
        }
        assert_int_equal(covered, m.n_params);
        assert_int_equal(undecayed, 2 * 2 + 2 * 5 + (with_bias ? 5 + 3 : 0));
        optim_destroy(&o);
    }
    free(is_bn), free(is_bias);
    model_destroy(&m);
    backend_destroy(&be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adam_matches_keras),
        cmocka_unit_test(test_sgd_momentum_matches_keras),
        cmocka_unit_test(test_adamw_decoupled_and_no_decay),
        cmocka_unit_test(test_no_decay_batchnorm_segments),
        cmocka_unit_test(test_sgd_nesterov),
        cmocka_unit_test(test_schedules_closed_forms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
