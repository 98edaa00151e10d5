// test_model.c — the whole model on the CPU backend: gradient of the loss w.r.t. every parameter against
// central finite differences, the reverse-layer parameter layout, and the grad-ready prefixes.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "test_util.h"

static void add_layer(net_config *cfg, int type, const char *name, int filters, int size, int stride, int pad,
                      int units, int act) {
    layer_cfg *l = &cfg->layers[cfg->n_layers++];
    memset(l, 0, sizeof *l);
    l->type = type;
    snprintf(l->name, sizeof l->name, "%s", name);
    l->filters = filters, l->size = size, l->stride = stride, l->pad = pad, l->units = units, l->act = act;
    l->bias = 1;
}

// conv(3, pad 1) → pool → conv(4, stride 1) → flatten → dense(6, relu) → dense(3) → softmax on 1x8x8.
static void small_config(net_config *cfg) {
    config_defaults(cfg);
    snprintf(cfg->path, sizeof cfg->path, "test_model");
    cfg->channels = 2, cfg->height = 8, cfg->width = 8, cfg->classes = 3;
    add_layer(cfg, LAYER_CONV, "conv1", 3, 3, 1, 1, 0, ACT_RELU);
    add_layer(cfg, LAYER_MAXPOOL, "pool1", 0, 2, 2, 0, 0, ACT_NONE);
    add_layer(cfg, LAYER_CONV, "conv2", 4, 3, 1, 0, 0, ACT_RELU);
    add_layer(cfg, LAYER_FLATTEN, "flatten1", 0, 0, 0, 0, 0, ACT_NONE);
    add_layer(cfg, LAYER_DENSE, "dense1", 0, 0, 0, 0, 6, ACT_RELU);
    add_layer(cfg, LAYER_DENSE, "dense2", 0, 0, 0, 0, 3, ACT_NONE);
    add_layer(cfg, LAYER_SOFTMAX, "softmax", 0, 0, 0, 0, 0, ACT_NONE);
}

typedef struct fixture {
    backend be;
    model m;
    int n;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    static net_config cfg;
    small_config(&cfg);
    f->n = 5;
    assert_int_equal(backend_create(&f->be, "cpu", &(backend_options){.threads = 1}), ST_OK);
    assert_int_equal(model_create(&f->m, &f->be, &cfg, f->n), ST_OK);
    assert_int_equal(model_init_params(&f->m, 7), ST_OK);
    // Biases non-zero so that relu kinks are not all at the same place.
    rng r;
    rng_seed(&r, 99);
    for (size_t i = 0; i < f->m.n_params; i++) f->m.params[i] += 0.05f * (rng_uniform(&r) - 0.5f);
    for (int i = 0; i < f->n * 2 * 64; i++) ((float *)f->m.x)[i] = rng_uniform(&r);
    for (int i = 0; i < f->n; i++) f->m.labels[i] = i % 3;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    model_destroy(&f->m);
    backend_destroy(&f->be);
    free(f);
    return 0;
}

static double loss_of(fixture *f) {
    *f->m.loss_acc = 0;
    assert_int_equal(model_forward(&f->m, f->n, 0), ST_OK);
    return *f->m.loss_acc / f->n;
}

static size_t ready_calls[16];
static int n_ready_calls;
static int on_ready(void *arg, size_t k) {
    (void)arg;
    ready_calls[n_ready_calls++] = k;
    return ST_OK;
}

static void test_gradient_matches_finite_differences(void **state) {
    fixture *f = *state;
    model *m = &f->m;
    *m->loss_acc = 0;
    assert_int_equal(model_forward(m, f->n, 1), ST_OK);
    n_ready_calls = 0;
    assert_int_equal(model_backward(m, f->n, on_ready, NULL), ST_OK);
    float *g = malloc(m->n_params * sizeof(float));
    memcpy(g, m->grads, m->n_params * sizeof(float));
    double num = 0, den = 0;
    int bad = 0;
    const float eps = 1e-3f;
    for (size_t i = 0; i < m->n_params; i++) {
        float p = m->params[i];
        m->params[i] = p + eps;
        double lp = loss_of(f);
        m->params[i] = p - eps;
        double lm = loss_of(f);
        m->params[i] = p;
        double fd = (lp - lm) / (2.0 * eps);
        double d = fabs(fd - g[i]);
        num += d * d, den += fd * fd;
        if (d > 2e-3 + 2e-2 * fabs(fd)) bad++;
    }
    double rel = sqrt(num / (den > 0 ? den : 1));
    print_message("model gradient: %zu params, relative L2 error %.2e, %d outside tolerance\n", m->n_params, rel, bad);
    assert_true(rel < 1e-2);
    assert_true(bad <= (int)(m->n_params / 100));  // a relu/maxpool kink inside ±eps may flip a few
    free(g);
}

static void test_reverse_layout_and_ready_prefixes(void **state) {
    fixture *f = *state;
    model *m = &f->m;
    // Parameter layers in forward order: conv1, conv2, dense1, dense2 → buffer order dense2, dense1, conv2, conv1.
    const model_layer *conv1 = &m->layers[0], *dense2 = &m->layers[m->n_layers - 2];
    assert_string_equal(dense2->name, "dense2");
    assert_int_equal(dense2->w_off, 0);
    assert_int_equal(dense2->b_off, dense2->n_w);
    assert_int_equal(conv1->b_off + conv1->n_b, m->n_params);
    assert_int_equal(m->n_params, (3 * 2 * 9 + 3) + (4 * 3 * 9 + 4) + (6 * 16 + 6) + (3 * 6 + 3));
    *m->loss_acc = 0;
    assert_int_equal(model_forward(m, f->n, 1), ST_OK);
    n_ready_calls = 0;
    assert_int_equal(model_backward(m, f->n, on_ready, NULL), ST_OK);
    assert_int_equal(n_ready_calls, 4);
    for (int i = 1; i < n_ready_calls; i++) assert_true(ready_calls[i] > ready_calls[i - 1]);
    assert_int_equal(ready_calls[0], dense2->n_w + dense2->n_b);
    assert_int_equal(ready_calls[3], m->n_params);
}

static void test_tensor_names_and_pytorch_shapes(void **state) {
    fixture *f = *state;
    int nt = model_param_tensor(&f->m, -1, NULL, NULL, NULL, NULL, NULL);
    assert_int_equal(nt, 8);
    const char *name;
    int is_bias, ndim;
    size_t off;
    int64_t shape[4];
    model_param_tensor(&f->m, 0, &name, &is_bias, &off, &ndim, shape);
    assert_string_equal(name, "conv1");
    assert_int_equal(is_bias, 0);
    assert_int_equal(ndim, 4);
    assert_int_equal(shape[0], 3), assert_int_equal(shape[1], 2), assert_int_equal(shape[2], 3);
    model_param_tensor(&f->m, 5, &name, &is_bias, &off, &ndim, shape);  // dense1.bias
    assert_string_equal(name, "dense1");
    assert_int_equal(is_bias, 1);
    model_param_tensor(&f->m, 4, &name, &is_bias, &off, &ndim, shape);  // dense1.weight [out, in]
    assert_int_equal(ndim, 2);
    assert_int_equal(shape[0], 6);
    assert_int_equal(shape[1], 4 * 2 * 2);
}

static void test_smaller_batch_uses_own_plan(void **state) {
    fixture *f = *state;
    // Forward with n=2 must equal the first two samples of the n=5 forward.
    *f->m.loss_acc = 0;
    assert_int_equal(model_forward(&f->m, 2, 0), ST_OK);
    double l2 = *f->m.loss_acc;
    float logits2[6];
    memcpy(logits2, f->m.layers[f->m.n_layers - 2].y, sizeof logits2);
    *f->m.loss_acc = 0;
    assert_int_equal(model_forward(&f->m, f->n, 0), ST_OK);
    assert_true(tu_max_rel_err(logits2, f->m.layers[f->m.n_layers - 2].y, 6) < 1e-6);
    assert_true(l2 < *f->m.loss_acc);
}

static void test_impossible_batch_rejected(void **state) {
    fixture *f = *state;
    err_clear();
    assert_int_not_equal(model_forward(&f->m, f->n + 1, 0), ST_OK);
    err_clear();
}

// ---------------------------------------------------------------------------------------------------------
// [batchnorm] in a model: state tensors named as PyTorch's buffers; training forwards update the running
// statistics and count, evaluation reads them and leaves them; a training forward of one sample per feature is
// refused; sync=1 without the model's allreduce_avg normalises over the own batch.

static void test_batchnorm_state_and_modes(void **state) {
    (void)state;
    static net_config cfg;
    const char *text = "[net]\nchannels=1\nheight=4\nwidth=4\nclasses=3\n"
                       "[conv]\nfilters=2\nsize=3\npad=1\nactivation=linear\n[batchnorm]\nactivation=relu\nsync=1\n"
                       "[dense]\nunits=5\n[batchnorm]\nname=bnd\nmomentum=0.5\n[dense]\nunits=3\n[softmax]\n";
    assert_int_equal(config_load_text(text, "bn", &cfg), ST_OK);
    assert_int_equal(config_validate(&cfg), ST_OK);
    backend be;
    model m;
    assert_int_equal(backend_create(&be, "cpu", &(backend_options){.threads = 1}), ST_OK);
    assert_int_equal(model_create(&m, &be, &cfg, 4), ST_OK);
    assert_int_equal(model_init_params(&m, 3), ST_OK);
    assert_int_equal(model_state_tensor(&m, -1, NULL), 6);
    assert_int_equal(m.n_state, (2 * 2 + 1) + (2 * 5 + 1));
    model_state_info si;
    model_state_tensor(&m, 0, &si);
    assert_string_equal(si.layer, "bn1");
    assert_string_equal(si.suffix, "running_mean");
    assert_int_equal(si.ndim, 1);
    assert_int_equal(si.shape[0], 2);
    model_state_tensor(&m, 5, &si);
    assert_string_equal(si.layer, "bnd");
    assert_string_equal(si.suffix, "num_batches_tracked");
    assert_int_equal(si.ndim, 0);
    assert_true(si.is_count);
    assert_int_equal(si.offset, 5 + 2 * 5);
    for (int k = 0; k < 5; k++) assert_true(m.state[5 + k] == 0.0f && m.state[10 + k] == 1.0f);
    rng r;
    rng_seed(&r, 4);
    for (int i = 0; i < 4 * 16; i++) ((float *)m.x)[i] = rng_uniform(&r);
    for (int i = 0; i < 4; i++) m.labels[i] = i % 3;
    assert_int_equal(model_forward(&m, 4, 1), ST_OK);
    assert_int_equal(model_forward(&m, 4, 1), ST_OK);
    assert_true(m.state[4] == 2.0f && m.state[15] == 2.0f);  // num_batches_tracked
    float *before = malloc(m.n_state * sizeof(float));
    memcpy(before, m.state, m.n_state * sizeof(float));
    assert_int_equal(model_forward(&m, 4, 0), ST_OK);
    assert_memory_equal(before, m.state, m.n_state * sizeof(float));
    // Evaluation of one sample = that sample in a batch of four: the running statistics, not the batch's.
    float y1[5];
    memcpy(y1, m.layers[3].y, sizeof y1);
    assert_int_equal(model_forward(&m, 1, 0), ST_OK);
    assert_true(tu_max_rel_err(m.layers[3].y, y1, 5) < 1e-6);
    err_clear();
    assert_int_equal(model_forward(&m, 1, 1), ST_RUNTIME);  // bnd: one value per feature
    assert_non_null(strstr(err_msg(), "bnd"));
    err_clear();
    free(before);
    model_destroy(&m);
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// Finite differences on models written as config text (leaky, bias=0, shortcut,
// route, dropout, avgpool): every parameter's gradient against central differences of the training loss.

#define NET_HEAD "[net]\nchannels=2\nheight=8\nwidth=8\nclasses=3\n"

// The loss of a training forward (dropout masks are a function of the model's key, fixed here).
static double train_loss_of(model *m, int n) {
    *m->loss_acc = 0;
    assert_int_equal(model_set_rng(m, 1, 5), ST_OK);  // the same masks at every evaluation
    assert_int_equal(model_forward(m, n, 1), ST_OK);
    return *m->loss_acc / n;
}

// Build the model of `ini` on the CPU backend, with perturbed parameters and random inputs.
static void model_from_text(const char *ini, backend *be, model *m, int n) {
    static net_config cfg;
    err_clear();
    if (config_load_text(ini, "fd_config", &cfg) != ST_OK || config_validate(&cfg) != ST_OK)
        fail_msg("config: %s", err_msg());
    assert_int_equal(backend_create(be, "cpu", &(backend_options){.threads = 1}), ST_OK);
    if (model_create(m, be, &cfg, n) != ST_OK) fail_msg("model_create: %s", err_msg());
    assert_int_equal(model_init_params(m, 7), ST_OK);
    rng r;
    rng_seed(&r, 99);
    for (size_t i = 0; i < m->n_params; i++) m->params[i] += 0.05f * (rng_uniform(&r) - 0.5f);
    for (int i = 0; i < n * m->in_c * m->in_h * m->in_w; i++) ((float *)m->x)[i] = rng_uniform(&r);
    for (int i = 0; i < n; i++) m->labels[i] = i % m->classes;
}

// Relative L2 error of the backward's parameter gradient against central differences, printed as `what`.
static void fd_check_text(const char *what, const char *ini, size_t want_params) {
    backend be;
    model m;
    const int n = 4;
    model_from_text(ini, &be, &m, n);
    if (want_params) assert_int_equal(m.n_params, want_params);
    train_loss_of(&m, n);
    assert_int_equal(model_backward(&m, n, NULL, NULL), ST_OK);
    float *g = malloc(m.n_params * sizeof(float));
    assert_non_null(g);
    memcpy(g, m.grads, m.n_params * sizeof(float));
    double num = 0, den = 0;
    int bad = 0;
    const float eps = 1e-3f;
    for (size_t i = 0; i < m.n_params; i++) {
        const float p = m.params[i];
        m.params[i] = p + eps;
        const double lp = train_loss_of(&m, n);
        m.params[i] = p - eps;
        const double lm = train_loss_of(&m, n);
        m.params[i] = p;
        const double fd = (lp - lm) / (2.0 * eps), d = fabs(fd - g[i]);
        num += d * d, den += fd * fd;
        if (d > 2e-3 + 2e-2 * fabs(fd)) bad++;
    }
    const double rel = sqrt(num / (den > 0 ? den : 1));
    print_message("%s: %zu params, relative L2 error %.2e, %d outside tolerance\n", what, m.n_params, rel, bad);
    assert_true(den > 0);
    assert_true(rel < 1e-2);
    assert_true(bad <= (int)(m.n_params / 100));
    free(g);
    model_destroy(&m);
    backend_destroy(&be);
}

static void test_fd_leaky_and_no_bias(void **state) {
    (void)state;
    // Strided convs keep the activations few: a kink of relu/leaky crossed within ±eps spoils a difference.
    fd_check_text("leaky, bias=0", NET_HEAD
                  "[conv]\nfilters=3\nsize=3\nstride=2\npad=1\nactivation=leaky\nbias=0\n"
                  "[conv]\nfilters=4\nsize=3\nstride=2\nactivation=leaky\n"
                  "[dense]\nunits=5\nactivation=leaky\nbias=0\n"
                  "[dense]\nunits=3\n[softmax]\n",
                  (3 * 2 * 9) + (4 * 3 * 9 + 4) + (5 * 4) + (3 * 5 + 3));
}

// A residual block: conv (bias=0) → conv → shortcut from=-3 (to the block's input), then a shortcut from=-1
// (the same output twice: the model sums both gradients).
static void test_fd_shortcut(void **state) {
    (void)state;
    fd_check_text("shortcut", NET_HEAD
                  "[conv]\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
                  "[conv]\nfilters=4\nsize=3\npad=1\nactivation=linear\nbias=0\n"
                  "[conv]\nfilters=4\nsize=1\nactivation=linear\n"
                  "[shortcut]\nfrom=-3\nactivation=leaky\n"
                  "[shortcut]\nfrom=-1\n"
                  "[dense]\nunits=3\n[softmax]\n",
                  (4 * 2 * 9 + 4) + (4 * 4 * 9) + (4 * 4 + 4) + (3 * 64 + 3));
}

// Concatenation of two branches, an identity route, and a route back to the first layer (read three times).
static void test_fd_route(void **state) {
    (void)state;
    fd_check_text("route", NET_HEAD
                  "[conv]\nfilters=3\nsize=3\nstride=2\npad=1\nactivation=linear\n"
                  "[conv]\nfilters=2\nsize=1\nactivation=leaky\n"
                  "[route]\nlayers=-2,-1\n"
                  "[conv]\nfilters=2\nsize=1\nactivation=linear\n"
                  "[route]\nlayers=-1\n"
                  "[route]\nlayers=4,0\n"
                  "[dense]\nunits=3\n[softmax]\n",
                  (3 * 2 * 9 + 3) + (2 * 3 + 2) + (2 * 5 + 2) + (3 * 5 * 16 + 3));
}

// Dropout in two places; the loss is differentiated for the fixed masks of one key.
static void test_fd_dropout(void **state) {
    (void)state;
    fd_check_text("dropout", NET_HEAD
                  "[conv]\nfilters=3\nsize=3\nstride=2\npad=1\nactivation=linear\n"
                  "[dropout]\nrate=0.3\n"
                  "[dense]\nunits=5\nactivation=linear\n"
                  "[dropout]\n"
                  "[dense]\nunits=3\n[softmax]\n",
                  (3 * 2 * 9 + 3) + (5 * 48 + 5) + (3 * 5 + 3));
}

// Windowed and global average pooling.
static void test_fd_avgpool(void **state) {
    (void)state;
    fd_check_text("avgpool", NET_HEAD
                  "[conv]\nfilters=3\nsize=3\npad=1\nactivation=linear\n"
                  "[avgpool]\nsize=3\nstride=2\n"
                  "[conv]\nfilters=4\nsize=1\nactivation=leaky\n"
                  "[avgpool]\n"
                  "[dense]\nunits=3\n[softmax]\n",
                  (3 * 2 * 9 + 3) + (4 * 3 + 4) + (3 * 4 + 3));
}

// Masks: identity in evaluation; in training a function of (seed, step, rank, micro-batch), each layer its own.
static void test_dropout_masks(void **state) {
    (void)state;
    backend be;
    model m;
    const int n = 4;
    model_from_text(NET_HEAD "[conv]\nfilters=3\nsize=3\nactivation=linear\n[dropout]\nrate=0.5\n[dropout]\n"
                    "rate=0.5\n[dense]\nunits=3\n[softmax]\n", &be, &m, n);
    const model_layer *conv = &m.layers[0], *d1 = &m.layers[1], *d2 = &m.layers[2];
    const size_t e = (size_t)n * 3 * 6 * 6;
    float *a = malloc(e * sizeof(float)), *b = malloc(e * sizeof(float));
    assert_non_null(a), assert_non_null(b);
    assert_int_equal(model_forward(&m, n, 0), ST_OK);
    assert_memory_equal(d1->y, conv->y, e * sizeof(float));
    // draws the mask of layer 1 at (rank, step), micro-batch `micro`, into out (1 kept, 0 dropped)
#define MASK(rank, step, micro, out)                                                                          \
    do {                                                                                                   \
        assert_int_equal(model_set_rng(&m, rank, step), ST_OK);                                            \
        for (int k = 0; k <= (micro); k++) assert_int_equal(model_forward(&m, n, 1), ST_OK);                \
        for (size_t i = 0; i < e; i++) (out)[i] = ((float *)d1->y)[i] != 0.0f || ((float *)conv->y)[i] == 0.0f;                  \
    } while (0)
    MASK(0, 10, 0, a);
    MASK(0, 10, 0, b);
    assert_memory_equal(a, b, e * sizeof(float));
    size_t kept = 0;
    for (size_t i = 0; i < e; i++) kept += a[i] != 0;
    assert_true(kept > e / 4 && kept < 3 * e / 4);
    const int other[3][3] = {{0, 11, 0}, {1, 10, 0}, {0, 10, 1}};  // another step, rank, micro-batch
    for (int t = 0; t < 3; t++) {
        MASK(other[t][0], other[t][1], other[t][2], b);
        assert_true(memcmp(a, b, e * sizeof(float)) != 0);
    }
    // The second dropout layer draws another mask than the first on the same input.
    MASK(0, 10, 0, a);
    size_t same = 0;
    for (size_t i = 0; i < e; i++) same += (((float *)d2->y)[i] != 0) == (((float *)d1->y)[i] != 0);
    assert_true(same < e);
#undef MASK
    free(a), free(b);
    model_destroy(&m);
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// The conv plan cache (model.c), through a CPU backend whose conv_prepare hands out a counted token as the plan
// (the CPU ops ignore plans) and can claim a huge workspace for one batch size.

static backend_ops g_counting_ops;
static const backend_ops *g_cpu_ops;
static int g_live_plans, g_prepares, g_greedy_n;

static int counting_prepare(void *ctx, conv_desc *d, size_t *ws) {
    TRY(g_cpu_ops->conv_prepare(ctx, d, ws));
    d->plan = malloc(1);  // a leak shows in g_live_plans (and to LeakSanitizer)
    assert_non_null(d->plan);
    g_live_plans++, g_prepares++;
    if (d->n == g_greedy_n) *ws = (size_t)1 << 40;
    return ST_OK;
}

static void counting_release(void *ctx, conv_desc *d) {
    if (d->plan) g_live_plans--;
    free(d->plan);
    d->plan = NULL;
    g_cpu_ops->conv_release(ctx, d);
}

// Forward (and backward when train) at batch n; returns how many conv plans that had to prepare.
static int prepares_for(model *m, int n, int train) {
    const int before = g_prepares;
    *m->loss_acc = 0;
    assert_int_equal(model_forward(m, n, train), ST_OK);
    if (train) assert_int_equal(model_backward(m, n, NULL, NULL), ST_OK);
    return g_prepares - before;
}

static void test_conv_plan_cache(void **state) {
    (void)state;
    static net_config cfg;
    small_config(&cfg);  // two conv layers
    backend be;
    model m;
    // im2col: the counting hook stands in its own pointer for the plan, which only a NULL CPU plan allows
    // (oneDNN's plans are real ones).
    backend_cpu_opts opts = {.threads = 1, .conv = CPU_CONV_IM2COL};
    assert_int_equal(backend_cpu_create_opts(&be, &opts), ST_OK);
    g_cpu_ops = be.ops;
    g_counting_ops = *be.ops;
    g_counting_ops.conv_prepare = counting_prepare;
    g_counting_ops.conv_release = counting_release;
    be.ops = &g_counting_ops;
    g_live_plans = g_prepares = 0;
    g_greedy_n = -1;
    enum { MAXB = 9, TRAIN = 3 };
    assert_int_equal(model_create(&m, &be, &cfg, MAXB), ST_OK);
    assert_int_equal(model_init_params(&m, 7), ST_OK);
    assert_int_equal(g_live_plans, 2);  // max_batch's plan per conv layer
    // Evaluation sizes first, then the training batch fills the cache (slot 0 + 3).
    assert_int_equal(prepares_for(&m, 5, 0), 2);
    assert_int_equal(prepares_for(&m, 6, 0), 2);
    assert_int_equal(prepares_for(&m, TRAIN, 1), 2);
    assert_int_equal(g_live_plans, 2 * MODEL_MAX_PLANS);
    // More evaluation sizes than the cache holds: each evicts another plan, never the training batch's (the
    // next training step prepares nothing) nor max_batch's.
    for (int n = 1; n <= 8; n++) {
        if (n == TRAIN) continue;
        prepares_for(&m, n, 0);
        assert_int_equal(g_live_plans, 2 * MODEL_MAX_PLANS);
        if (prepares_for(&m, TRAIN, 1) != 0) fail_msg("evaluation at batch %d evicted the training batch's plan", n);
    }
    assert_int_equal(prepares_for(&m, MAXB, 0), 0);
    // The least recently used plan goes: 7 and 8 were used last (with TRAIN), so both are still there.
    assert_int_equal(prepares_for(&m, 8, 0), 0);
    assert_int_equal(prepares_for(&m, 7, 0), 0);
    // A batch whose plan needs more workspace than the model has: an error naming it, and the plan made for
    // it is released (nothing leaks, nothing cached).
    g_greedy_n = 2;
    err_clear();
    assert_int_equal(model_forward(&m, 2, 0), ST_RUNTIME);
    assert_non_null(strstr(err_msg(), "workspace"));
    err_clear();
    assert_int_equal(g_live_plans, 2 * MODEL_MAX_PLANS);
    g_greedy_n = -1;
    // The training batch changes (a test or tool may do that): the new one is kept, the old one may go.
    assert_int_equal(prepares_for(&m, 4, 1), 2);
    assert_int_equal(prepares_for(&m, 5, 0), 2);
    assert_int_equal(prepares_for(&m, 6, 0), 2);
    assert_int_equal(prepares_for(&m, 4, 1), 0);
    model_destroy(&m);
    assert_int_equal(g_live_plans, 0);
    backend_destroy(&be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_gradient_matches_finite_differences, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reverse_layout_and_ready_prefixes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tensor_names_and_pytorch_shapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_smaller_batch_uses_own_plan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_impossible_batch_rejected, setup, teardown),
        cmocka_unit_test(test_conv_plan_cache),
        cmocka_unit_test(test_batchnorm_state_and_modes),
        cmocka_unit_test(test_fd_leaky_and_no_bias),
        cmocka_unit_test(test_fd_shortcut),
        cmocka_unit_test(test_fd_route),
        cmocka_unit_test(test_fd_dropout),
        cmocka_unit_test(test_dropout_masks),
        cmocka_unit_test(test_fd_avgpool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
