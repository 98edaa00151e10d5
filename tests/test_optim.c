// test_optim.c — optim_step (Adam with Keras defaults, SGD with momentum) through the CPU backend against
// references written in the Keras form, in double precision, over several steps with changing gradients.
#include <math.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "config.h"
#include "optim.h"
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adam_matches_keras),
        cmocka_unit_test(test_sgd_momentum_matches_keras),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
