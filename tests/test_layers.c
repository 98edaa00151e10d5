// test_layers.c — every kind in the layer registry, found by iterating it (a new kind is tested without editing
// this file): its example network's gradients against central finite differences, its config round trip
// (--print-config reads back the same layers), and no empty slot in the CPU backend's table.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "config.h"
#include "layer.h"
#include "model.h"
#include "test_util.h"

#define BATCH 4

// Layer sections between a linear [conv] (so their input gradient reaches a parameter) and the head.
static void sections_config(const char *sections, const char *what, net_config *cfg) {
    char text[4096];
    tu_layer_example_text(sections, BATCH, text, sizeof text);
    int st = config_load_text(text, what, cfg);
    if (st == ST_OK) st = config_validate(cfg);
    if (st != ST_OK) fail_msg("%s: %s", what, err_msg());
}

static void example_config(int type, net_config *cfg) {
    const layer_kind *k = layer_kind_of(type);
    char origin[64];
    snprintf(origin, sizeof origin, "example of [%s]", k->section);
    sections_config(k->example, origin, cfg);
}

typedef struct net {
    backend be;
    model m;
    net_config cfg;
} net;

// The network of cfg (already loaded) with perturbed parameters and inputs.
static void net_open_config(net *t) {
    assert_int_equal(backend_create(&t->be, "cpu", &(backend_options){.threads = 1}), ST_OK);
    assert_int_equal(model_create(&t->m, &t->be, &t->cfg, BATCH), ST_OK);
    assert_int_equal(model_init_params(&t->m, 11), ST_OK);
    rng r;
    rng_seed(&r, 5);
    // Non-zero biases move relu kinks apart; inputs in [-1, 1] give every activation both signs.
    for (size_t i = 0; i < t->m.n_params; i++) t->m.params[i] += 0.1f * (rng_uniform(&r) - 0.5f);
    for (int i = 0; i < BATCH * 2 * 36; i++) ((float *)t->m.x)[i] = 2.0f * rng_uniform(&r) - 1.0f;
    for (int i = 0; i < BATCH; i++) t->m.labels[i] = i % 3;
}

static void net_open(net *t, int type) {
    example_config(type, &t->cfg);
    net_open_config(t);
}

static void net_close(net *t) {
    model_destroy(&t->m);
    backend_destroy(&t->be);
}

// The training objective (training mode: batch statistics; the same dropout masks at every call: the key is
// set again, as the trainer sets it before each step).
static double loss_of(net *t) {
    *t->m.loss_acc = 0;
    assert_int_equal(model_set_rng(&t->m, 1, 5), ST_OK);
    assert_int_equal(model_forward(&t->m, BATCH, 1), ST_OK);
    return *t->m.loss_acc / BATCH;
}

// Every parameter's gradient against central differences of the loss (t open).
static void check_gradients(net *t, const char *what) {
    model *m = &t->m;
    (void)loss_of(t);
    assert_int_equal(model_backward(m, BATCH, NULL, NULL), ST_OK);
    float *g = malloc(m->n_params * sizeof(float));
    assert_non_null(g);
    memcpy(g, m->grads, m->n_params * sizeof(float));
    double num = 0, den = 0;
    int bad = 0;
    const float eps = 1e-3f;
    for (size_t i = 0; i < m->n_params; i++) {
        const float p = m->params[i];
        m->params[i] = p + eps;
        const double lp = loss_of(t);
        m->params[i] = p - eps;
        const double lm = loss_of(t);
        m->params[i] = p;
        const double fd = (lp - lm) / (2.0 * eps), d = fabs(fd - g[i]);
        num += d * d, den += fd * fd;
        if (d > 2e-3 + 2e-2 * fabs(fd)) bad++;
    }
    const double rel = sqrt(num / (den > 0 ? den : 1));
    print_message("%-13s %5zu params: gradient relative L2 error %.2e, %d outside tolerance\n", what,
                  m->n_params, rel, bad);
    assert_true(den > 0);
    assert_true(rel < 1e-2);
    assert_true(bad <= (int)(m->n_params / 50));  // a relu/max kink inside ±eps may flip a few
    free(g);
}

static void check_kind_gradients(int type) {
    static net t;
    char what[64];
    snprintf(what, sizeof what, "[%s]", layer_kind_of(type)->section);
    net_open(&t, type);
    check_gradients(&t, what);
    net_close(&t);
}

static void test_gradients_every_kind(void **state) {
    (void)state;
    for (int type = 1; type < LAYER_KIND_COUNT; type++) check_kind_gradients(type);
}

// Every activation in every kind that has one: [conv], [batchnorm], [shortcut] and [dense] (the fused ones
// differentiated from the output, silu/hardswish/gelu through the kept pre-activation), in training and in a
// second forward of evaluation mode (the pre-activation buffer reused).
static void test_gradients_every_activation(void **state) {
    (void)state;
    for (int act = ACT_NONE; act < ACT_COUNT; act++) {
        const char *a = layer_act_name(act);
        char sections[512], what[64];
        snprintf(sections, sizeof sections,
                 "[conv]\nfilters=3\nsize=3\npad=1\nactivation=%s\n[batchnorm]\nactivation=%s\n"
                 "[shortcut]\nfrom=-3\nactivation=%s\n[dense]\nunits=5\nactivation=%s\n",
                 a, a, a, a);
        snprintf(what, sizeof what, "act=%s", a);
        static net t;
        sections_config(sections, what, &t.cfg);
        net_open_config(&t);
        for (int i = 0; i < t.m.n_layers; i++)  // the buffer exactly where act' needs the pre-activation
            assert_true((t.m.layers[i].pre != NULL) == (t.m.layers[i].act != ACT_NONE && !act_from_output(act)));
        check_gradients(&t, what);
        // Evaluation: the same layers (running statistics), finite.
        *t.m.loss_acc = 0;
        assert_int_equal(model_forward(&t.m, BATCH, 0), ST_OK);
        assert_true(isfinite(*t.m.loss_acc));
        net_close(&t);
    }
}

static void test_round_trip_every_kind(void **state) {
    (void)state;
    for (int type = 1; type < LAYER_KIND_COUNT; type++) {
        static net_config a, b;
        example_config(type, &a);
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        assert_non_null(f);
        config_print(&a, f);
        fclose(f);
        if (config_load_text(text, "printed", &b) != ST_OK) fail_msg("[%s] printed config: %s", layer_kind_of(type)->section, err_msg());
        assert_int_equal(config_validate(&b), ST_OK);
        assert_int_equal(a.n_layers, b.n_layers);
        for (int i = 0; i < a.n_layers; i++) {
            layer_cfg la = a.layers[i], lb = b.layers[i];
            la.line = lb.line = 0;
            if (memcmp(&la, &lb, sizeof la) != 0)
                fail_msg("[%s] example: layer '%s' differs after print and reload", layer_kind_of(type)->section, la.name);
        }
        free(text);
    }
}

// Every kind has what the model calls unconditionally, and names itself.
static void test_registry_complete(void **state) {
    (void)state;
    for (int type = 1; type < LAYER_KIND_COUNT; type++) {
        const layer_kind *k = layer_kind_of(type);
        assert_non_null(k);
        assert_non_null(k->section);
        assert_int_equal(layer_kind_find(k->section), type);
        assert_non_null(k->shape);
        assert_non_null(k->create);
        assert_non_null(k->forward);
        assert_non_null(k->example);
        assert_non_null(k->doc);
        assert_true(k->backward || (k->flags & LAYER_TERMINAL));
        for (int j = 0; j < k->n_keys; j++) assert_true(k->keys[j].type >= LK_INT && k->keys[j].type <= LK_REFS);
    }
    assert_null(layer_kind_of(0));
    assert_null(layer_kind_of(LAYER_KIND_COUNT));
}

// Every slot of the CPU backend's table is filled but the optional ones (backend_ops_missing; the CUDA table is
// checked the same way in test_backend_cuda.c).
static void test_cpu_backend_table_full(void **state) {
    (void)state;
    backend be;
    assert_int_equal(backend_create(&be, "cpu", &(backend_options){.threads = 1}), ST_OK);
    const char *first = NULL;
    const int missing = backend_ops_missing(be.ops, &first);
    if (missing) print_message("cpu backend: %d empty slots, the first is %s\n", missing, first);
    assert_int_equal(missing, 0);
    // The check reads the slot column of src/backend_ops.def: required slots count, optional ones do not.
    backend_ops holes = *be.ops;
    holes.conv_forward = NULL;
    holes.replay = NULL;
    holes.avgpool_backward = NULL;
    assert_int_equal(backend_ops_missing(&holes, &first), 2);
    assert_string_equal(first, "conv_forward");
    backend_destroy(&be);
}

// A grouped conv's FLOPs (model_train_flops_per_sample, the GFLOP/s figures): each filter sees c/groups channels.
// On the stem's 3x6x6: 6 filters 3x3, dilation 2, stride 2, pad 2 -> 3x3; 2·6·(3/groups)·9 per output pixel.
static void test_grouped_conv_flops(void **state) {
    (void)state;
    double f[2];
    for (int groups = 1, i = 0; groups <= 3; groups += 2, i++) {
        char sections[256];
        snprintf(sections, sizeof sections,
                 "[conv]\nfilters=6\nsize=3\nstride=2\npad=2\ndilation=2\ngroups=%d\nactivation=linear\n", groups);
        static net t;
        sections_config(sections, "grouped flops", &t.cfg);
        net_open_config(&t);
        assert_int_equal(t.m.layers[1].w_shape[1], 3 / groups);
        f[i] = model_train_flops_per_sample(&t.m);
        net_close(&t);
    }
    const double conv_fwd = 2.0 * 6 * 3 * 9 * 3 * 3;  // groups=1
    assert_true(fabs((f[0] - f[1]) - 3.0 * conv_fwd * (1.0 - 1.0 / 3)) < 1e-6);
}

// The ResNet configs build, with the parameter counts PyTorch's equivalent modules have (launch/torch_model.py:
// 309,162 and 272,474), and one training step runs through every layer.
static void test_resnet_configs(void **state) {
    (void)state;
    const struct { const char *file; size_t params; int layers; } want[] = {
        {"fashion_resnet.cfg", 309162, 29},
        {"cifar10_resnet.cfg", 272474, 56},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        static net_config cfg;
        char path[1024];
        snprintf(path, sizeof path, "%s/configs/%s", DDP_SOURCE_DIR, want[i].file);
        err_clear();
        if (config_load(path, &cfg) != ST_OK || config_validate(&cfg) != ST_OK) fail_msg("%s: %s", path, err_msg());
        assert_int_equal(cfg.n_layers, want[i].layers);
        backend be;
        model m;
        const int n = 2;
        assert_int_equal(backend_create(&be, "cpu", &(backend_options){.threads = 1}), ST_OK);
        if (model_create(&m, &be, &cfg, n) != ST_OK) fail_msg("%s: %s", path, err_msg());
        assert_int_equal(m.n_params, want[i].params);
        assert_int_equal(model_init_params(&m, 1), ST_OK);
        rng r;
        rng_seed(&r, 2);
        for (int k = 0; k < n * m.in_c * m.in_h * m.in_w; k++) ((float *)m.x)[k] = rng_uniform(&r);
        for (int k = 0; k < n; k++) m.labels[k] = k;
        *m.loss_acc = 0;
        assert_int_equal(model_forward(&m, n, 1), ST_OK);
        assert_int_equal(model_backward(&m, n, NULL, NULL), ST_OK);
        assert_true(isfinite(*m.loss_acc) && *m.loss_acc > 0);
        model_destroy(&m);
        backend_destroy(&be);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_complete),
        cmocka_unit_test(test_cpu_backend_table_full),
        cmocka_unit_test(test_round_trip_every_kind),
        cmocka_unit_test(test_gradients_every_kind),
        cmocka_unit_test(test_gradients_every_activation),
        cmocka_unit_test(test_resnet_configs),
        cmocka_unit_test(test_grouped_conv_flops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
