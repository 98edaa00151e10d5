// test_cuda_capture.c — the trainer's step on the GPU, whole: the reference CNN (conv 32 → pool → conv 64 → pool →
// dense 64 relu → dense 10 → softmax, Adam) at batch 64, with every op src/train.c's step issues: the batch's
// indices copied from a device permutation to a fixed buffer, gather by index from the device data set, cuDNN
// conv forward/backward with fused bias + ReLU, pooling, cuBLAS dense, softmax cross-entropy, Adam with its
// hyper-parameters uploaded before each step, and timing marks.
//
//   test_step_matches_cpu     one eager step: loss and gradients against the CPU backend
//   test_replay_deterministic net.deterministic=1: STEPS replays of one captured step equal STEPS eager steps bit
//                             for bit; the marks captured in the graph are recorded again by each replay
//   test_replay_default       default algorithms: the same, within what non-deterministic cuDNN kernels allow
//
// The CPU-emulated version of the replay check (no GPU needed) is test_backend_record.c's
// test_training_step_replay and test_train.c's test_graph_replay_matches_eager. Without a usable GPU these
// tests skip, or fail with DDP_REQUIRE_CUDA=1 (tu_cuda_or_skip).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "optim.h"
#include "test_util.h"

#define OK(expr)                                                                                           \
    do {                                                                                                   \
        int st_ = (expr);                                                                                  \
        if (st_ != ST_OK) fail_msg("%s failed (status %d): %s", #expr, st_, err_msg());                   \
    } while (0)

enum { B = 64, DATA = 512, STEPS = 5, ELEMS = 28 * 28, CLASSES = 10 };

// ---------------------------------------------------------------------------------------------------------
// The reference CNN (README: 121,930 parameters on 28x28x1)

static void add_layer(net_config *cfg, int type, const char *name, int filters, int units, int act) {
    layer_cfg *l = &cfg->layers[cfg->n_layers++];
    memset(l, 0, sizeof *l);
    l->type = type;
    snprintf(l->name, sizeof l->name, "%s", name);
    l->filters = filters, l->units = units, l->act = act;
    l->bias = 1;
    l->size = type == LAYER_CONV ? 3 : 2;
    l->stride = type == LAYER_CONV ? 1 : 2;
}

static void reference_cnn(net_config *cfg) {
    config_defaults(cfg);
    snprintf(cfg->path, sizeof cfg->path, "test_cuda_capture");
    cfg->channels = 1, cfg->height = 28, cfg->width = 28, cfg->classes = CLASSES;
    add_layer(cfg, LAYER_CONV, "conv1", 32, 0, ACT_RELU);
    add_layer(cfg, LAYER_MAXPOOL, "pool1", 0, 0, ACT_NONE);
    add_layer(cfg, LAYER_CONV, "conv2", 64, 0, ACT_RELU);
    add_layer(cfg, LAYER_MAXPOOL, "pool2", 0, 0, ACT_NONE);
    add_layer(cfg, LAYER_FLATTEN, "flatten1", 0, 0, ACT_NONE);
    add_layer(cfg, LAYER_DENSE, "dense1", 0, 64, ACT_RELU);
    add_layer(cfg, LAYER_DENSE, "dense2", 0, CLASSES, ACT_NONE);
    add_layer(cfg, LAYER_SOFTMAX, "softmax", 0, 0, ACT_NONE);
}

// ---------------------------------------------------------------------------------------------------------
// A trainer in miniature: backend, model, optimizer, the data set and a permutation of it in backend memory.

typedef struct rig {
    net_config cfg;
    backend be;
    model m;
    optim opt;
    uint8_t *images;
    int32_t *labels;
    int32_t *perm;       // a permutation of the data set; step s takes perm[s*B, (s+1)*B)
    int32_t *batch_idx;  // the step's indices at a fixed address: what a captured graph reads
    void *mk[3];         // step start, after forward, step end
    float *p0;           // initial parameters (host)
} rig;

enum { MK_START, MK_FWD, MK_END };

static void rig_create(rig *r, const char *name, int deterministic) {
    memset(r, 0, sizeof *r);
    reference_cnn(&r->cfg);
    // The options before the model: plans take them when prepared.
    OK(backend_create(&r->be, name, &(backend_options){.tf32 = 0, .deterministic = deterministic}));
    OK(model_create(&r->m, &r->be, &r->cfg, B));
    assert_int_equal(r->m.n_params, 121930);
    OK(model_init_params(&r->m, 42));
    r->p0 = malloc(r->m.n_params * sizeof(float));
    assert_non_null(r->p0);
    OK(r->be.ops->download(r->be.ctx, r->p0, r->m.params, r->m.n_params * sizeof(float)));

    // The same data on every backend: noise with one bright blob per class, and a shuffled order.
    rng g;
    rng_seed(&g, 2024);
    uint8_t *img = malloc((size_t)DATA * ELEMS);
    int32_t lab[DATA];
    int32_t perm[DATA];
    assert_non_null(img);
    for (int i = 0; i < DATA; i++) {
        lab[i] = (int32_t)rng_below(&g, CLASSES);
        uint8_t *p = img + (size_t)i * ELEMS;
        for (int j = 0; j < ELEMS; j++) p[j] = (uint8_t)rng_below(&g, 80);
        const int y0 = 2 + (lab[i] / 5) * 12, x0 = 2 + (lab[i] % 5) * 5;
        for (int y = y0; y < y0 + 6; y++)
            for (int x = x0; x < x0 + 6; x++) p[y * 28 + x] = (uint8_t)(170 + rng_below(&g, 86));
        perm[i] = i;
    }
    for (int i = DATA - 1; i > 0; i--) {
        const int j = (int)rng_below(&g, (uint32_t)i + 1);
        const int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    const backend_ops *o = r->be.ops;
    void *ctx = r->be.ctx;
    OK(o->alloc(ctx, (void **)&r->images, (size_t)DATA * ELEMS));
    OK(o->alloc(ctx, (void **)&r->labels, DATA * sizeof(int32_t)));
    OK(o->alloc(ctx, (void **)&r->perm, sizeof perm));
    OK(o->alloc(ctx, (void **)&r->batch_idx, B * sizeof(int32_t)));
    OK(o->upload(ctx, r->images, img, (size_t)DATA * ELEMS));
    OK(o->upload(ctx, r->labels, lab, sizeof lab));
    OK(o->upload(ctx, r->perm, perm, sizeof perm));
    free(img);
    for (int k = 0; k < 3; k++) OK(o->mark_create(ctx, &r->mk[k]));
}

static void rig_destroy(rig *r) {
    const backend_ops *o = r->be.ops;
    void *ctx = r->be.ctx;
    for (int k = 0; k < 3; k++) o->mark_destroy(ctx, r->mk[k]);
    o->free(ctx, r->images), o->free(ctx, r->labels), o->free(ctx, r->perm), o->free(ctx, r->batch_idx);
    optim_destroy(&r->opt);
    model_destroy(&r->m);
    backend_destroy(&r->be);
    free(r->p0);
}

// Start over from the initial parameters: fresh optimizer state (t = 0), zero loss and hit counters.
static void rig_reset(rig *r) {
    const backend_ops *o = r->be.ops;
    void *ctx = r->be.ctx;
    OK(o->upload(ctx, r->m.params, r->p0, r->m.n_params * sizeof(float)));
    optim_destroy(&r->opt);
    OK(optim_create(&r->opt, &r->be, &r->cfg, r->m.n_params));
    OK(o->zero(ctx, r->m.loss_acc, sizeof(double)));
    OK(o->zero(ctx, r->m.correct_acc, sizeof(int32_t)));
}

// Host work before step s (0-based), outside any capture: the batch's indices to the fixed buffer (a device
// copy, as the trainer does) and the optimizer's hyper-parameters (a new learning rate each step).
static void step_host(rig *r, int s) {
    OK(r->be.ops->copy(r->be.ctx, r->batch_idx, r->perm + (size_t)s * B, B * sizeof(int32_t)));
    OK(optim_prepare(&r->opt, 1e-3 * (1 + s % 3)));
}

// The stream work of one step, in the trainer's order (src/train.c step_issue, without comm).
static void step_issue(rig *r) {
    const backend_ops *o = r->be.ops;
    void *ctx = r->be.ctx;
    OK(o->mark_record(ctx, r->mk[MK_START]));
    OK(o->gather(ctx, r->images, r->labels, r->batch_idx, B, ELEMS, NULL, r->m.x, r->m.labels));
    OK(model_forward(&r->m, B, 1));
    OK(o->mark_record(ctx, r->mk[MK_FWD]));
    OK(model_backward(&r->m, B, NULL, NULL));
    OK(optim_apply(&r->opt, r->m.params, r->m.grads));
    OK(o->mark_record(ctx, r->mk[MK_END]));
}

typedef struct run_result {
    float *params;
    double loss;
    int32_t correct;
} run_result;

static void run_read(rig *r, run_result *res) {
    const backend_ops *o = r->be.ops;
    res->params = malloc(r->m.n_params * sizeof(float));
    assert_non_null(res->params);
    OK(o->sync(r->be.ctx));
    OK(o->download(r->be.ctx, res->params, r->m.params, r->m.n_params * sizeof(float)));
    OK(o->download(r->be.ctx, &res->loss, r->m.loss_acc, sizeof(double)));
    OK(o->download(r->be.ctx, &res->correct, r->m.correct_acc, sizeof(int32_t)));
}

static void run_eager(rig *r, run_result *res) {
    rig_reset(r);
    for (int s = 0; s < STEPS; s++) {
        step_host(r, s);
        step_issue(r);
    }
    run_read(r, res);
}

// One capture, STEPS replays. A mark recorded op by op before the last replay must precede the step-start mark
// that replay records (the graph's event-record nodes record the marks again at every replay).
static void run_graph(rig *r, run_result *res) {
    const backend_ops *o = r->be.ops;
    void *ctx = r->be.ctx;
    void *before_last = NULL;
    OK(o->mark_create(ctx, &before_last));
    rig_reset(r);
    assert_non_null(o->capture_begin);
    OK(o->capture_begin(ctx));
    step_issue(r);  // nothing runs: recorded into the graph
    OK(o->capture_end(ctx));
    for (int s = 0; s < STEPS; s++) {
        step_host(r, s);
        if (s == STEPS - 1) OK(o->mark_record(ctx, before_last));
        OK(o->replay(ctx));
    }
    run_read(r, res);
    double fwd = -1, step = -1, gap = -1;
    OK(o->mark_elapsed(ctx, r->mk[MK_START], r->mk[MK_FWD], &fwd));
    OK(o->mark_elapsed(ctx, r->mk[MK_START], r->mk[MK_END], &step));
    OK(o->mark_elapsed(ctx, before_last, r->mk[MK_START], &gap));
    print_message("replayed step: forward %.3f ms, whole step %.3f ms\n", fwd * 1e3, step * 1e3);
    if (!(isfinite(fwd) && isfinite(step) && fwd >= 0 && step >= fwd))
        fail_msg("marks of the replayed step: forward %g s, step %g s (want finite, 0 <= forward <= step)", fwd, step);
    if (!(isfinite(gap) && gap >= 0)) fail_msg("the last replay did not record the step-start mark again (%g s)", gap);
    o->mark_destroy(ctx, before_last);
}

// ---------------------------------------------------------------------------------------------------------
// Tests

static void test_step_matches_cpu(void **state) {
    (void)state;
    tu_cuda_or_skip(backend_cuda_unusable());
    rig gpu, cpu;
    rig_create(&gpu, "cuda", 0);
    rig_create(&cpu, "cpu", 0);
    assert_memory_equal(gpu.p0, cpu.p0, gpu.m.n_params * sizeof(float));  // the host RNG draws the weights
    rig *rigs[2] = {&gpu, &cpu};
    float *grads[2];
    double loss[2];
    for (int i = 0; i < 2; i++) {
        rig *r = rigs[i];
        rig_reset(r);
        step_host(r, 0);
        step_issue(r);
        grads[i] = malloc(r->m.n_params * sizeof(float));
        assert_non_null(grads[i]);
        OK(r->be.ops->download(r->be.ctx, grads[i], r->m.grads, r->m.n_params * sizeof(float)));
        OK(r->be.ops->download(r->be.ctx, &loss[i], r->m.loss_acc, sizeof(double)));
    }
    // Relative L2 error per parameter tensor. Not the op tests' max-norm: here the forward values are the GPU's
    // own, so a max-pool window whose two largest inputs are within rounding may pick another winner than on
    // the CPU and route one gradient elsewhere (the op tests give both backends the same forward output). That
    // moves a few terms of one channel's sums, a small part of the tensor's norm; a wrong op moves all of it.
    for (int t = 0; t < model_param_tensor(&gpu.m, -1, NULL, NULL, NULL, NULL, NULL); t++) {
        const char *name;
        int is_bias, ndim;
        size_t off;
        int64_t shape[4];
        model_param_tensor(&gpu.m, t, &name, &is_bias, &off, &ndim, shape);
        size_t n = 1;
        for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
        double diff2 = 0, ref2 = 0;
        for (size_t k = 0; k < n; k++) {
            const double g = grads[0][off + k], c = grads[1][off + k];
            if (!isfinite(g)) fail_msg("%s.%s: CUDA gradient %zu is %g", name, is_bias ? "bias" : "weight", k, g);
            diff2 += (g - c) * (g - c), ref2 += c * c;
        }
        const double e = ref2 > 0 ? sqrt(diff2 / ref2) : sqrt(diff2);
        print_message("%s.%s gradient: CUDA vs CPU relative L2 error %.2e\n", name, is_bias ? "bias" : "weight", e);
        if (!(e <= 1e-2)) fail_msg("%s.%s gradient: CUDA vs CPU relative L2 error %.3g > 1e-2", name,
                                  is_bias ? "bias" : "weight", e);
    }
    if (!(fabs(loss[0] - loss[1]) <= 1e-4 * fabs(loss[1])))
        fail_msg("loss of the first batch: CUDA %.9g vs CPU %.9g", loss[0], loss[1]);
    free(grads[0]), free(grads[1]);
    rig_destroy(&gpu);
    rig_destroy(&cpu);
}

static void replay_vs_eager(int deterministic) {
    tu_cuda_or_skip(backend_cuda_unusable());
    rig r;
    rig_create(&r, "cuda", deterministic);
    run_result eager, graph, again;
    run_eager(&r, &eager);  // first: cuDNN and cuBLAS set up lazily, which must not happen inside a capture
    run_graph(&r, &graph);
    const size_t n = r.m.n_params;
    size_t moved = 0, off = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (eager.params[i] != r.p0[i]) moved++;
        const double d = fabs((double)graph.params[i] - eager.params[i]);
        if (d > 1e-5) off++;
        if (!(d <= worst)) worst = d;  // NaN-propagating
    }
    print_message("deterministic=%d: %zu of %zu parameters moved; graph vs eager: max |diff| %.3g, %zu over 1e-5; "
                  "loss %.9g vs %.9g, correct %d vs %d\n",
                  deterministic, moved, n, worst, off, graph.loss, eager.loss, graph.correct, eager.correct);
    assert_true(moved > n / 2);  // the steps trained (and a graph replaying nothing would differ)
    if (!(fabs(graph.loss - eager.loss) <= 1e-5 * fabs(eager.loss)))
        fail_msg("loss summed over %d steps: graph %.9g vs eager %.9g", STEPS, graph.loss, eager.loss);
    if (deterministic) {
        // Bit for bit. So is a second run on a backend and model made afresh, as a second process would: its
        // plans choose their algorithms again (by heuristics, not timing, so the same ones).
        if (memcmp(graph.params, eager.params, n * sizeof(float)) != 0)
            fail_msg("deterministic=1: graph replay and eager steps differ (max |diff| %.3g)", worst);
        assert_int_equal(graph.correct, eager.correct);
        rig r2;
        rig_create(&r2, "cuda", 1);
        run_eager(&r2, &again);
        if (memcmp(again.params, eager.params, n * sizeof(float)) != 0)
            fail_msg("deterministic=1: two runs (fresh backend and plans) differ");
        free(again.params);
        rig_destroy(&r2);
    } else {
        // Non-deterministic kernels (atomics) round differently each run; only a parameter whose gradient is
        // all rounding noise can take another Adam step (of about lr), and such parameters are rare.
        if (!(worst <= 0.1)) fail_msg("graph vs eager: a parameter differs by %.3g", worst);
        if (off > n / 100) fail_msg("graph vs eager: %zu of %zu parameters differ by more than 1e-5", off, n);
    }
    free(eager.params), free(graph.params);
    rig_destroy(&r);
}

static void test_replay_deterministic(void **state) {
    (void)state;
    replay_vs_eager(1);
}

static void test_replay_default(void **state) {
    (void)state;
    replay_vs_eager(0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_matches_cpu),
        cmocka_unit_test(test_replay_deterministic),
        cmocka_unit_test(test_replay_default),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
