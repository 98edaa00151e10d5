// test_train.c — the training loop at np 1 on a small generated data set: it learns, checkpoints carry
// PyTorch names and shapes, resume is bit-identical to an uninterrupted run, metrics lines have every field,
// and divergence stops training with the step and layer named.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "comm.h"
#include "common.h"
#include "config.h"
#include "metrics.h"
#include "test_env.h"
#include "test_hooks.h"
#include "test_util.h"
#include "train.h"

static comm *g_comm;

// The CPU backend's emulation of CUDA stream capture (src/test_hooks.h): run_steps and run_steps_cfg pass
// g_hooks to the trainer; a test points it at one of these and back to NULL.
static const test_hooks k_cpu_graph = {.stall_rank = -1, .corrupt_rank = -1, .cpu_graph = TEST_CPU_GRAPH_EMULATE,
                                      .wrap_backend = test_aids_wrap_backend};
static const test_hooks k_cpu_graph_refuse = {.stall_rank = -1, .corrupt_rank = -1,
                                              .cpu_graph = TEST_CPU_GRAPH_REFUSE, .wrap_backend = test_aids_wrap_backend};
static const test_hooks *g_hooks;

static void tiny_config(net_config *cfg, const char *extra) {
    const char *dir = tu_tmpdir();
    char text[4096];
    // extra may override batch/epochs (a repeated key is an error, so the default is left out then).
    const char *batch = strstr(extra, "batch=") ? "" : "batch=32\n";
    const char *epochs = strstr(extra, "epochs=") ? "" : "epochs=2\n";
    snprintf(text, sizeof text,
             "[net]\n%s%schannels=1\nheight=28\nwidth=28\nseed=5\neval_batch=100\nthreads=1\n%s\n"
             "[data]\ntrain_images=%s/train-images.idx\ntrain_labels=%s/train-labels.idx\n"
             "test_images=%s/test-images.idx\ntest_labels=%s/test-labels.idx\n"
             "[conv]\nfilters=4\nsize=3\n[maxpool]\nsize=2\n[conv]\nfilters=8\nsize=3\nstride=2\n[maxpool]\nsize=2\n"
             "[dense]\nunits=16\nactivation=relu\n[dense]\nunits=10\n[softmax]\n",
             batch, epochs, extra, dir, dir, dir, dir);
    const char *path = tu_path("tiny.cfg");
    assert_int_equal(tu_write_file(path, text, strlen(text), 0), 0);
    err_clear();
    assert_int_equal(config_load(path, cfg), ST_OK);
    assert_int_equal(config_validate(cfg), ST_OK);
}

static int group_setup(void **state) {
    (void)state;
    if (tu_make_idx_dataset(tu_tmpdir(), 512, 200, 1, 0) != 0) return -1;
    return 0;
}

static void test_learns(void **state) {
    (void)state;
    static net_config cfg;
    tiny_config(&cfg, "epochs=3\nlr=0.01");
    train_opts o = {.metrics_path = tu_path("m.jsonl")};
    train_result r;
    assert_int_equal(train_run(&cfg, &o, g_comm, &r), ST_OK);
    print_message("tiny model: test acc %.3f loss %.3f after %d epochs\n", r.test_acc, r.test_loss, r.epochs_done);
    assert_int_equal(r.epochs_done, 3);
    assert_int_equal(r.steps, 3 * (512 / 32));
    assert_true(r.test_acc > 0.9);
    train_result_free(&r);

    FILE *f = fopen(tu_path("m.jsonl"), "r");
    assert_non_null(f);
    char line[4096];
    int lines = 0;
    const char *keys[] = {"\"epoch\":", "\"train_loss\":", "\"test_loss\":", "\"test_acc\":", "\"images_per_s\":",
                          "\"epoch_s\":", "\"world_size\":1", "\"batch\":32", "\"scaling_efficiency\":",
                          "\"exposed_comm_s\":", "\"comm_s\":", "\"skew_s\":0,"};
    while (fgets(line, sizeof line, f)) {
        lines++;
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) assert_non_null(strstr(line, keys[k]));
    }
    fclose(f);
    assert_int_equal(lines, 3);
}

static void run_steps(long long steps, const char *save, const char *resume, float **params, size_t *n) {
    static net_config cfg;
    tiny_config(&cfg, "");
    train_opts o = {.max_steps = steps, .save_path = save, .resume_path = resume, .keep_params = 1, .hooks = g_hooks};
    train_result r;
    int st = train_run(&cfg, &o, g_comm, &r);
    if (st != ST_OK) print_message("train_run: %s\n", err_msg());
    assert_int_equal(st, ST_OK);
    *params = r.params;
    *n = r.n_params;
}

static void test_resume_is_bit_identical(void **state) {
    (void)state;
    float *full, *part, *resumed;
    size_t n1, n2, n3;
    // 16 steps per epoch: stop inside epoch 1, resume across the epoch boundary to step 27.
    run_steps(27, NULL, NULL, &full, &n1);
    run_steps(9, tu_path("ck.safetensors"), NULL, &part, &n2);
    run_steps(27, NULL, tu_path("ck.safetensors"), &resumed, &n3);
    assert_int_equal(n1, n3);
    assert_memory_equal(full, resumed, n1 * sizeof(float));
    assert_memory_not_equal(full, part, n1 * sizeof(float));
    free(full), free(part), free(resumed);
}

// The CUDA graph path, checked on the CPU: the cpu_graph test hook (DDP_TEST_CPU_GRAPH) wraps the CPU backend in
// src/backend_record.c, which records the ops of a capture without running them and runs them on replay, as CUDA
// does. A step that handed the graph a per-step pointer (the batch's indices) or uploaded its hyper-parameters
// inside the capture would train differently from eager steps (or fail); across epoch boundaries, evaluations and
// a resume the parameters must stay bit-identical.
static void test_graph_replay_matches_eager(void **state) {
    (void)state;
    float *eager, *graph, *part, *resumed;
    size_t n1, n2, n3, n4;
    run_steps(40, NULL, NULL, &eager, &n1);
    g_hooks = &k_cpu_graph;
    run_steps(40, NULL, NULL, &graph, &n2);
    run_steps(9, tu_path("gk.safetensors"), NULL, &part, &n3);
    run_steps(40, NULL, tu_path("gk.safetensors"), &resumed, &n4);
    g_hooks = NULL;
    assert_int_equal(n1, n2);
    assert_memory_equal(eager, graph, n1 * sizeof(float));
    assert_memory_equal(eager, resumed, n1 * sizeof(float));
    assert_memory_not_equal(eager, part, n1 * sizeof(float));
    free(eager), free(graph), free(part), free(resumed);
}

// run_steps with extra config text (tiny_config's `extra`; a [parallel] section may follow the [net] keys).
static void run_steps_cfg(const char *extra, long long steps, const char *metrics, float **params, size_t *n) {
    static net_config cfg;
    tiny_config(&cfg, extra);
    train_opts o = {.max_steps = steps, .metrics_path = metrics, .keep_params = 1, .hooks = g_hooks};
    train_result r;
    int st = train_run(&cfg, &o, g_comm, &r);
    if (st != ST_OK) print_message("train_run: %s\n", err_msg());
    assert_int_equal(st, ST_OK);
    *params = r.params;
    *n = r.n_params;
}

static void first_line(const char *path, char *line, size_t size) {
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(line, (int)size, f));
    fclose(f);
}

// A capture that fails (here: every capture is refused, as a driver that cannot capture cuDNN would) is not
// the end of the run: a note, then op-by-op steps with the same result, and metrics say cuda_graph 0.
static void test_graph_capture_failure_falls_back(void **state) {
    (void)state;
    float *eager, *fallback;
    size_t n1, n2;
    run_steps(40, NULL, NULL, &eager, &n1);
    g_hooks = &k_cpu_graph_refuse;
    run_steps_cfg("", 40, tu_path("fb.jsonl"), &fallback, &n2);
    g_hooks = NULL;
    assert_int_equal(n1, n2);
    assert_memory_equal(eager, fallback, n1 * sizeof(float));
    char line[4096] = "";
    first_line(tu_path("fb.jsonl"), line, sizeof line);
    assert_non_null(strstr(line, "\"cuda_graph\":0"));
    free(eager), free(fallback);
}

// parallel.force_allreduce=1 runs the bucketed all-reduce at one rank (what a single GPU uses to check the
// comm path): the average over one rank changes nothing, so training is bit-identical; the buckets are real.
static void test_force_allreduce_at_one_rank(void **state) {
    (void)state;
    float *plain, *forced;
    size_t n1, n2;
    run_steps(40, NULL, NULL, &plain, &n1);
    run_steps_cfg("\n[parallel]\nforce_allreduce=1\nbucket_kb=4", 40, tu_path("fa.jsonl"), &forced, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(plain, forced, n1 * sizeof(float));
    char line[4096] = "";
    first_line(tu_path("fa.jsonl"), line, sizeof line);
    assert_true(tu_json_number(line, "n_buckets") > 1);
    assert_non_null(strstr(line, "\"grad_norm\":null"));  // not clipping: null (JSON has no NaN), never nan
    assert_true(tu_json_number(line, "comm_s") > 0);
    free(plain), free(forced);
}

// net.clip_grad_norm: a limit above every norm changes nothing (bit-identical); a tight one changes training;
// the norm before clipping is in the metrics; a replayed (CPU-emulated) graph clips exactly as eager steps do.
static void test_clip_grad_norm(void **state) {
    (void)state;
    float *plain, *loose, *tight, *tight_graph;
    size_t n1, n2, n3, n4;
    run_steps(40, NULL, NULL, &plain, &n1);
    run_steps_cfg("clip_grad_norm=1e6", 40, tu_path("cl.jsonl"), &loose, &n2);
    run_steps_cfg("clip_grad_norm=0.05", 40, tu_path("ct.jsonl"), &tight, &n3);
    g_hooks = &k_cpu_graph;
    run_steps_cfg("clip_grad_norm=0.05", 40, NULL, &tight_graph, &n4);
    g_hooks = NULL;
    assert_memory_equal(plain, loose, n1 * sizeof(float));
    assert_memory_not_equal(plain, tight, n1 * sizeof(float));
    assert_memory_equal(tight, tight_graph, n1 * sizeof(float));
    char line[4096] = "";
    first_line(tu_path("ct.jsonl"), line, sizeof line);
    double gn = tu_json_number(line, "grad_norm");
    print_message("grad_norm before clipping (epoch 1 mean): %g\n", gn);
    assert_true(gn > 0.05 && isfinite(gn));
    free(plain), free(loose), free(tight), free(tight_graph);
    (void)n2, (void)n3, (void)n4;
}

// net.accum_steps=2 at batch 32 takes the same samples per optimizer step as batch 64, averaged the same way:
// parameters within 1e-5, and (forced all-reduce at one rank) one all-reduce per bucket per optimizer step --
// never per micro-batch; replayed from a (CPU-emulated) graph, identical to eager.
static void test_gradient_accumulation(void **state) {
    (void)state;
    float *big, *acc, *acc_graph;
    size_t n1, n2, n3;
    run_steps_cfg("batch=64\n[parallel]\nforce_allreduce=1\nbucket_kb=4", 40, tu_path("b64.jsonl"), &big, &n1);
    run_steps_cfg("batch=32\naccum_steps=2\n[parallel]\nforce_allreduce=1\nbucket_kb=4", 40, tu_path("acc.jsonl"),
                  &acc, &n2);
    // (without the all-reduce: a host all-reduce keeps the graph off)
    g_hooks = &k_cpu_graph;
    run_steps_cfg("batch=32\naccum_steps=2", 40, tu_path("accg.jsonl"), &acc_graph, &n3);
    g_hooks = NULL;
    assert_int_equal(n1, n2);
    double worst = 0;
    for (size_t i = 0; i < n1; i++) {
        const double d = fabs((double)big[i] - acc[i]);
        if (d > worst) worst = d;
    }
    print_message("accum_steps=2 x batch 32 vs batch 64 after 16 steps: max |diff| %.3g\n", worst);
    assert_true(worst <= 1e-5);
    assert_memory_equal(acc, acc_graph, n1 * sizeof(float));
    char a[4096] = "", b[4096] = "";
    first_line(tu_path("b64.jsonl"), b, sizeof b);
    first_line(tu_path("acc.jsonl"), a, sizeof a);
    const double buckets = tu_json_number(a, "n_buckets");
    assert_true(buckets > 1);
    assert_true(tu_json_number(a, "allreduces_per_step") == buckets);  // not 2 x buckets
    assert_true(tu_json_number(b, "allreduces_per_step") == buckets);
    assert_true(tu_json_number(a, "global_batch") == 64 && tu_json_number(a, "accum_steps") == 2);
    first_line(tu_path("accg.jsonl"), a, sizeof a);
    assert_non_null(strstr(a, "\"cuda_graph\":1"));
    free(big), free(acc), free(acc_graph);
}

// [data] crop_pad, flip, normalize (mean/std from the training set): run_steps with them on.
static void run_steps_aug(long long steps, const char *save, const char *resume, float **params, size_t *n) {
    static net_config cfg;
    tiny_config(&cfg, "");
    const char *sets[] = {"data.crop_pad=2", "data.flip=1", "data.normalize=1"};
    for (int i = 0; i < 3; i++) assert_int_equal(config_set(&cfg, sets[i]), ST_OK);
    assert_int_equal(config_validate(&cfg), ST_OK);
    train_opts o = {.max_steps = steps, .save_path = save, .resume_path = resume, .keep_params = 1};
    train_result r;
    int st = train_run(&cfg, &o, g_comm, &r);
    if (st != ST_OK) print_message("train_run: %s\n", err_msg());
    assert_int_equal(st, ST_OK);
    *params = r.params;
    *n = r.n_params;
}

// The draws depend on (seed, epoch, sample) only: a resumed run -- mid-epoch, across the epoch boundary -- is
// bit-identical to the uninterrupted one; a replayed (CPU-emulated) graph, which reads the epoch from backend
// memory, equals eager steps across two epoch boundaries; the checkpoint's configuration carries the computed
// mean and std; and augmentation does change training.
static void test_augmentation_resume_and_graph(void **state) {
    (void)state;
    float *plain, *full, *part, *resumed, *eager, *graph;
    size_t n[6];
    run_steps(40, NULL, NULL, &plain, &n[0]);
    run_steps_aug(27, NULL, NULL, &full, &n[1]);
    run_steps_aug(9, tu_path("aug.safetensors"), NULL, &part, &n[2]);
    run_steps_aug(27, NULL, tu_path("aug.safetensors"), &resumed, &n[3]);
    assert_memory_equal(full, resumed, n[1] * sizeof(float));
    assert_memory_not_equal(full, part, n[1] * sizeof(float));
    run_steps_aug(40, NULL, NULL, &eager, &n[4]);
    setenv("DDP_TEST_CPU_GRAPH", "1", 1);
    run_steps_aug(40, NULL, NULL, &graph, &n[5]);
    unsetenv("DDP_TEST_CPU_GRAPH");
    assert_memory_equal(eager, graph, n[4] * sizeof(float));
    assert_memory_not_equal(plain, eager, n[0] * sizeof(float));
    ckpt_file *f = NULL;
    assert_int_equal(ckpt_load(tu_path("aug.safetensors"), &f), ST_OK);
    const char *ini = ckpt_meta(f, "config_ini");
    assert_non_null(ini);
    assert_non_null(strstr(ini, "\ncrop_pad=2\nflip=1\nnormalize=1\nmean=0."));
    assert_non_null(strstr(ini, "\nstd=0."));
    ckpt_free(f);
    free(plain), free(full), free(part), free(resumed), free(eager), free(graph);
}

static void test_graph_metrics(void **state) {
    (void)state;
    static net_config cfg;
    tiny_config(&cfg, "epochs=1");
    train_opts o = {.metrics_path = tu_path("g.jsonl"), .hooks = &k_cpu_graph};
    train_result r;
    int st = train_run(&cfg, &o, g_comm, &r);
    assert_int_equal(st, ST_OK);
    train_result_free(&r);
    char line[4096] = "";
    FILE *f = fopen(tu_path("g.jsonl"), "r");
    assert_non_null(f);
    assert_non_null(fgets(line, sizeof line, f));
    fclose(f);
    assert_non_null(strstr(line, "\"cuda_graph\":1"));
    assert_non_null(strstr(line, "\"timed_steps\":16"));  // every step on a synchronous backend
    // Phase times come from marks recorded by the replayed graph: present and adding up to the step.
    double fwd = tu_json_number(line, "forward_s"), bwd = tu_json_number(line, "backward_s");
    double step = tu_json_number(line, "step_s");
    assert_true(fwd > 0 && bwd > 0 && step >= fwd + bwd);
}

// After a communication failure of its own (a watchdog timeout, here injected before step 5) the trainer stops
// the communicator before it frees or syncs anything on the device: with NCCL, kernels waiting for a dead peer
// spin until ncclCommAbort, and a cudaFree before it would hang. The run returns ST_COMM, the comm is stopped,
// and a later launch on it is refused.
static void test_comm_failure_stops_the_comm(void **state) {
    (void)state;
    comm *c = NULL;
    assert_int_equal(comm_create(&c, "mpi", 60), ST_OK);
    static net_config cfg;
    tiny_config(&cfg, "epochs=1\n[parallel]\nforce_allreduce=1\nbucket_kb=4");
    static const test_hooks fail5 = {.stall_rank = -1, .corrupt_rank = -1, .comm_fail_step = 5};
    train_opts o = {.hooks = &fail5};
    train_result r;
    err_clear();
    assert_int_equal(train_run(&cfg, &o, c, &r), ST_COMM);
    assert_non_null(strstr(err_msg(), "step 5"));
    assert_int_equal(r.steps, 4);  // the steps before the failure
    assert_true(comm_stopped(c));
    err_clear();
    float x = 1;
    int req = -1;
    assert_int_equal(comm_allreduce_avg_async(c, &x, 1, "after", &req), ST_COMM);
    err_clear();
    train_result_free(&r);
    comm_destroy(c);
}

static void test_checkpoint_is_a_pytorch_state_dict(void **state) {
    (void)state;
    float *p;
    size_t n;
    run_steps(3, tu_path("pt.safetensors"), NULL, &p, &n);
    ckpt_file *f = NULL;
    assert_int_equal(ckpt_load(tu_path("pt.safetensors"), &f), ST_OK);
    // PyTorch layouts: Conv2d [out, in, kh, kw], Linear [out, in], flatten of (8, 3, 3) = 72 inputs.
    float buf[16 * 72];
    assert_int_equal(ckpt_read_tensor(f, "conv1.weight", 4, (int64_t[]){4, 1, 3, 3}, buf), ST_OK);
    assert_int_equal(ckpt_read_tensor(f, "conv1.bias", 1, (int64_t[]){4}, buf), ST_OK);
    assert_int_equal(ckpt_read_tensor(f, "conv2.weight", 4, (int64_t[]){8, 4, 3, 3}, buf), ST_OK);
    assert_int_equal(ckpt_read_tensor(f, "dense1.weight", 2, (int64_t[]){16, 72}, buf), ST_OK);
    assert_int_equal(ckpt_read_tensor(f, "dense2.weight", 2, (int64_t[]){10, 16}, buf), ST_OK);
    assert_int_equal(ckpt_read_tensor(f, "dense2.bias", 1, (int64_t[]){10}, buf), ST_OK);
    // The model's last layer is first in the flat buffer: dense2.weight is params[0 .. 160).
    assert_memory_equal(buf, p + 160, 10 * sizeof(float));
    assert_int_equal(ckpt_read_tensor(f, "optim.adam_m.dense2.bias", 1, (int64_t[]){10}, buf), ST_OK);
    assert_string_equal(ckpt_meta(f, "global_step"), "3");
    assert_string_equal(ckpt_meta(f, "format"), "ddp-cnn-1");
    ckpt_free(f);
    free(p);
}

static void test_resume_rejects_other_global_batch(void **state) {
    (void)state;
    static net_config cfg;
    tiny_config(&cfg, "batch=16");
    train_opts o = {.max_steps = 2, .resume_path = tu_path("pt.safetensors")};
    train_result r;
    err_clear();
    assert_int_equal(train_run(&cfg, &o, g_comm, &r), ST_INPUT);
    assert_non_null(strstr(err_msg(), "pt.safetensors"));
    assert_non_null(strstr(err_msg(), "global batch"));
    err_clear();
}

static void test_divergence_names_step_and_layer(void **state) {
    (void)state;
    static net_config cfg;
    tiny_config(&cfg, "optimizer=sgd\nlr=1e30\nmomentum=0");
    train_opts o = {0};
    train_result r;
    err_clear();
    assert_int_equal(train_run(&cfg, &o, g_comm, &r), ST_DIVERGED);
    print_message("divergence message: %s\n", err_msg());
    assert_non_null(strstr(err_msg(), "step"));
    assert_non_null(strstr(err_msg(), "layer"));
    // With a graph the gradients are checked every 50 steps only (32 steps here): the epoch's loss catches it.
    err_clear();
    o.hooks = &k_cpu_graph;
    int st = train_run(&cfg, &o, g_comm, &r);
    print_message("divergence message (graph): %s\n", err_msg());
    assert_int_equal(st, ST_DIVERGED);
    assert_non_null(strstr(err_msg(), "epoch 1"));
    assert_non_null(strstr(err_msg(), "not finite"));
    err_clear();
}

// comm_s is the time with an all-reduce in flight: concurrent buckets count once (the sum over buckets read 52 ms
// for 18 buckets in flight together during one 3 ms wait).
static void test_busy_is_the_union(void **state) {
    (void)state;
    const double a0[] = {0, 1, 2}, a1[] = {3, 3, 3};  // nested/overlapping: 0..3
    assert_true(fabs(metrics_busy_s(3, a0, a1) - 3) < 1e-12);
    const double b0[] = {5, 0, 1}, b1[] = {6, 1, 2};  // disjoint and touching, out of order: 1 + 1 + 1
    assert_true(fabs(metrics_busy_s(3, b0, b1) - 3) < 1e-12);
    const double c0[] = {0, 4, 1}, c1[] = {2, 4, 10};  // an empty one inside another: 0..10
    assert_true(fabs(metrics_busy_s(3, c0, c1) - 10) < 1e-12);
    const double d0[] = {2, 2}, d1[] = {1, 3};  // a reversed one counts nothing; equal starts
    assert_true(fabs(metrics_busy_s(2, d0, d1) - 1) < 1e-12);
    assert_true(metrics_busy_s(0, NULL, NULL) == 0);
}

int main(int argc, char **argv) {
    if (comm_world_init(&argc, &argv) != ST_OK) return 1;
    if (comm_create(&g_comm, "mpi", 60) != ST_OK) {
        fprintf(stderr, "comm_create: %s\n", err_msg());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_busy_is_the_union),
        cmocka_unit_test(test_learns),
        cmocka_unit_test(test_resume_is_bit_identical),
        cmocka_unit_test(test_augmentation_resume_and_graph),
        cmocka_unit_test(test_graph_replay_matches_eager),
        cmocka_unit_test(test_graph_capture_failure_falls_back),
        cmocka_unit_test(test_force_allreduce_at_one_rank),
        cmocka_unit_test(test_clip_grad_norm),
        cmocka_unit_test(test_gradient_accumulation),
        cmocka_unit_test(test_graph_metrics),
        cmocka_unit_test(test_comm_failure_stops_the_comm),
        cmocka_unit_test(test_checkpoint_is_a_pytorch_state_dict),
        cmocka_unit_test(test_resume_rejects_other_global_batch),
        cmocka_unit_test(test_divergence_names_step_and_layer),
    };
    int rc = cmocka_run_group_tests(tests, group_setup, NULL);
    comm_destroy(g_comm);
    comm_world_finalize();
    return rc;
}
