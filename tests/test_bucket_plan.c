// test_bucket_plan.c — parallel.bucket_kb=auto's planning (src/bucket_plan.c): the buckets' rule on hand-made
// layers, the pipeline model against timelines worked out by hand, the cap it chooses for known links and layer
// times (a known best; many small layers on a slow-latency link choose larger buckets, a fast link smaller ones),
// the probe's fit and its table of sizes (a link dearer per byte for large messages keeps buckets small), and the
// layers of a real model (the reference CNN).
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bucket_plan.h"
#include "common.h"
#include "config.h"
#include "model.h"
#include "test_util.h"

#define KB (1024 / sizeof(float))  // floats per KiB

// n layers of `floats` gradients each, back to back from offset 0, ready at i+1 ms (backward: n ms).
static void uniform_layers(bucket_layer *ly, int n, size_t floats) {
    for (int i = 0; i < n; i++) ly[i] = (bucket_layer){i * floats, (i + 1) * floats, (i + 1) * 1e-3, 0, 0, 0};
}

static void test_form_closes_at_layer_boundaries(void **state) {
    (void)state;
    // layers of 10, 3, 30 and 2 floats; cap 12: [10] | [3] (10+3 > 12) | 30 in 3 parts of 10 | [2]
    bucket_layer ly[4] = {{0, 10, 0, 0, 0, 0}, {10, 13, 0, 0, 0, 0}, {13, 43, 0, 0, 0, 0}, {43, 45, 0, 0, 0, 0}};
    bucket_span b[16];
    int n = bucket_plan_form(ly, 4, 45, 12, b);
    assert_int_equal(n, bucket_plan_form(ly, 4, 45, 12, NULL));
    assert_int_equal(n, 6);
    const size_t want[6][2] = {{0, 10}, {10, 13}, {13, 23}, {23, 33}, {33, 43}, {43, 45}};
    for (int i = 0; i < n; i++) {
        assert_int_equal(b[i].begin, want[i][0]);
        assert_int_equal(b[i].end, want[i][1]);
    }
    // cap 15: 10 and 3 together, the 30 in two parts, the 2 alone
    assert_int_equal(bucket_plan_form(ly, 4, 45, 15, b), 4);
    assert_int_equal(b[0].end, 13);
    assert_int_equal(b[2].end, 43);
    // a cap above everything: one bucket
    assert_int_equal(bucket_plan_form(ly, 4, 45, 1000, b), 1);
    assert_int_equal(b[0].end, 45);
    // PowerSGD's rule: the 30 marked whole is one bucket of its own at cap 12: [10] | [3] | [30] | [2]
    ly[2].whole = 1;
    assert_int_equal(bucket_plan_form(ly, 4, 45, 12, b), 4);
    assert_int_equal(b[2].begin, 13);
    assert_int_equal(b[2].end, 43);
    assert_int_equal(b[3].end, 45);
}

static void test_simulate_by_hand(void **state) {
    (void)state;
    // 4 layers of 1 KiB ready at 1, 2, 3, 4 ms; each all-reduce 0.5 ms + 1 KiB / (1 KiB/ms).
    bucket_layer ly[4];
    uniform_layers(ly, 4, KB);
    const bucket_link link = {.alpha_s = 0.5e-3, .beta_s = 1e-3 / 1024, .launch_s = 0};
    int nb = 0;
    // one bucket per layer: each takes 1.5 ms, starting at 1, 2.5, 4, 5.5 ms: the last ends at 7 ms, 3 after backward
    double x = bucket_plan_simulate(ly, 4, 4 * KB, 4e-3, KB, &link, 1, &nb);
    assert_int_equal(nb, 4);
    assert_true(fabs(x - 3e-3) < 1e-12);
    // two buckets of 2 KiB: ready at 2 and 4 ms, 2.5 ms each: 2 -> 4.5, 4.5 -> 7 ms again
    x = bucket_plan_simulate(ly, 4, 4 * KB, 4e-3, 2 * KB, &link, 1, &nb);
    assert_int_equal(nb, 2);
    assert_true(fabs(x - 3e-3) < 1e-12);
    // one bucket: ready at 4 ms, 4.5 ms long
    x = bucket_plan_simulate(ly, 4, 4 * KB, 4e-3, 4 * KB, &link, 1, &nb);
    assert_int_equal(nb, 1);
    assert_true(fabs(x - 4.5e-3) < 1e-12);
    // overlap off: everything after backward, one after the other: 4 x 1.5 ms
    x = bucket_plan_simulate(ly, 4, 4 * KB, 4e-3, KB, &link, 0, &nb);
    assert_true(fabs(x - 6e-3) < 1e-12);
    // a launch's host time delays the rest of backward: 4 launches of 0.1 ms, one bucket per layer:
    // starts at 1.1, 2.6 (ready 2.1), 4.1 (3.2), 5.6 (4.3); ends at 7.1 ms, 3.1 after backward
    const bucket_link slow_launch = {.alpha_s = 0.5e-3, .beta_s = 1e-3 / 1024, .launch_s = 0.1e-3};
    x = bucket_plan_simulate(ly, 4, 4 * KB, 4e-3, KB, &slow_launch, 1, &nb);
    assert_true(fabs(x - 3.1e-3) < 1e-12);
    // a fast link: each all-reduce done before the next layer; only the last one shows (0.01 + 0.001 ms)
    const bucket_link fast = {.alpha_s = 1e-5, .beta_s = 1e-6 / 1024, .launch_s = 0};
    x = bucket_plan_simulate(ly, 4, 4 * KB, 4e-3, KB, &fast, 1, &nb);
    assert_true(fabs(x - 1.1e-5) < 1e-12);
}

static void test_simulate_powersgd(void **state) {
    (void)state;
    // The 4 layers above under PowerSGD: each sends 64 floats of P then 192 of Q (a quarter of its KiB): one
    // bucket per layer is 2 all-reduces of 0.5 ms + 0.25 / 0.75 ms = 2 ms each: starts at 1, 3, 5, 7 ms, the last
    // ends at 9 ms, 5 after backward (the same buckets unmarked: 3 ms, test_simulate_by_hand).
    bucket_layer ly[4];
    uniform_layers(ly, 4, KB);
    for (int i = 0; i < 4; i++) ly[i].p_floats = 64, ly[i].q_floats = 192;
    const bucket_link link = {.alpha_s = 0.5e-3, .beta_s = 1e-3 / 1024, .launch_s = 0};
    int nb = 0;
    double x = bucket_plan_simulate(ly, 4, 4 * KB, 4e-3, KB, &link, 1, &nb);
    assert_int_equal(nb, 4);
    assert_true(fabs(x - 5e-3) < 1e-12);
    // one bucket: P of 256 floats (0.5 + 1 ms), Q of 768 (0.5 + 3 ms) from 4 ms: 5 ms after backward; two of
    // 2 layers: 1 + 2 ms each, from 2 and 5 ms: 4 ms after. A compressed link favours fewer buckets than the plain
    // one, whose best here is one per layer.
    x = bucket_plan_simulate(ly, 4, 4 * KB, 4e-3, 4 * KB, &link, 1, &nb);
    assert_true(fabs(x - 5e-3) < 1e-12);
    x = bucket_plan_simulate(ly, 4, 4 * KB, 4e-3, 2 * KB, &link, 1, &nb);
    assert_int_equal(nb, 2);
    assert_true(fabs(x - 4e-3) < 1e-12);
}

static void test_choose_known_best(void **state) {
    (void)state;
    // 8 layers of 64 KiB, 1 ms of backward each; all-reduce 0.1 ms + 64 KiB per 0.5 ms. Per-layer buckets (64 KiB)
    // each finish 0.6 ms after their layer: 0.6 ms exposed; larger caps leave more in the last bucket
    // (128 KiB: 1.1 ms), smaller ones only add latency (32 KiB: two of 0.35 ms: 0.7 ms).
    enum { N = 8 };
    bucket_layer ly[N];
    uniform_layers(ly, N, 64 * KB);
    const bucket_link link = {.alpha_s = 0.1e-3, .beta_s = 0.5e-3 / (64 * 1024), .launch_s = 0};
    bucket_choice c;
    assert_int_equal(bucket_plan_choose(ly, N, N * 64 * KB, N * 1e-3, &link, 1, 248, &c), ST_OK);
    assert_int_equal(c.kb, 64);
    assert_int_equal(c.n_buckets, N);
    assert_true(fabs(c.exposed_s - 0.6e-3) < 1e-12);
    // the bucket limit rules out the small caps: at most 4 buckets -> 128 KiB (1.1 ms)
    assert_int_equal(bucket_plan_choose(ly, N, N * 64 * KB, N * 1e-3, &link, 1, 4, &c), ST_OK);
    assert_int_equal(c.kb, 128);
    assert_true(fabs(c.exposed_s - 1.1e-3) < 1e-12);
    // no cap fits in 0 buckets
    assert_int_equal(bucket_plan_choose(ly, N, N * 64 * KB, N * 1e-3, &link, 1, 0, &c), ST_OK);
    assert_int_equal(c.kb, 0);
    // overlap off: everything waits for backward, so fewer buckets (less latency) always win: one bucket
    assert_int_equal(bucket_plan_choose(ly, N, N * 64 * KB, N * 1e-3, &link, 0, 248, &c), ST_OK);
    assert_int_equal(c.n_buckets, 1);
    assert_int_equal(c.kb, 512);  // the smallest cap that holds all 512 KiB
}

static void test_latency_prefers_big_fast_link_small(void **state) {
    (void)state;
    // 200 small layers of 4 KiB, 10 us of backward each (2 ms): 800 KiB.
    enum { N = 200 };
    bucket_layer ly[N];
    for (int i = 0; i < N; i++) ly[i] = (bucket_layer){i * 4 * KB, (i + 1) * 4 * KB, (i + 1) * 1e-5, 0, 0, 0};
    const size_t np = N * 4 * KB;
    bucket_choice slow, fast;
    // high latency (1 ms per all-reduce), 1 GB/s: per-layer buckets would queue 200 ms of latency
    const bucket_link high = {.alpha_s = 1e-3, .beta_s = 1e-9, .launch_s = 0};
    assert_int_equal(bucket_plan_choose(ly, N, np, 2e-3, &high, 1, 248, &slow), ST_OK);
    // a fast link: 2 us latency, 10 GB/s (4 KiB buckets leave 2.4 us, 8 KiB ones 2.8 us, within the 1 us of a tie)
    const bucket_link low = {.alpha_s = 2e-6, .beta_s = 1e-10, .launch_s = 0};
    assert_int_equal(bucket_plan_choose(ly, N, np, 2e-3, &low, 1, 248, &fast), ST_OK);
    assert_int_equal(slow.n_buckets, 1);  // 1.82 ms; two buckets (512 KiB) would end 2.1 ms after backward
    assert_int_equal(slow.kb, 1024);
    assert_int_equal(fast.kb, 8);
    assert_int_equal(fast.n_buckets, 100);
    assert_true(slow.kb > fast.kb);
    // each choice is no worse than the other's cap under its own link
    int nb;
    assert_true(slow.exposed_s <= bucket_plan_simulate(ly, N, np, 2e-3, (size_t)fast.kb * KB, &high, 1, &nb));
    assert_true(fast.exposed_s <= bucket_plan_simulate(ly, N, np, 2e-3, (size_t)slow.kb * KB, &low, 1, &nb));
}

static void test_fit_and_median(void **state) {
    (void)state;
    // 4 KiB in 30 us, 4 MiB in 4.03 ms: beta = 4 ms / (4 MiB - 4 KiB), alpha what is left of the 30 us
    const double b2[2] = {4096, 4 << 20}, s2[2] = {30e-6, 30e-6 + 4e-3};
    bucket_link l = bucket_plan_fit(b2, s2, 2, 2e-6);
    assert_true(fabs(l.beta_s - 4e-3 / ((4 << 20) - 4096)) < 1e-18);
    assert_true(fabs(l.alpha_s - (30e-6 - 4096 * l.beta_s)) < 1e-15);
    assert_true(l.launch_s == 2e-6);
    // noise: the large one no slower -> a very fast link, latency from the small one; its time is the small one's
    const double n2[2] = {4096, 65536}, t2[2] = {30e-6, 29e-6};
    l = bucket_plan_fit(n2, t2, 2, -1);
    assert_true(l.beta_s > 0 && l.beta_s <= 1e-12);
    assert_true(l.alpha_s > 29e-6 && l.alpha_s <= 30e-6);
    assert_true(l.launch_s == 0);
    assert_true(l.s[1] == 30e-6);
    double v[5] = {5, 1, 4, 2, 3}, w[4] = {4, 1, 3, 2};
    assert_true(bucket_plan_median(v, 5) == 3);
    assert_true(bucket_plan_median(w, 4) == 2.5);
    assert_true(bucket_plan_median(v, 0) == 0);
}

// A link whose cost per byte doubles above 64 KiB (as MPI's 2-rank all-reduce of a large vector over TCP, which
// sends it one way and then back): 0.5 ms at 4 KiB, 1e-7 s/B to 64 KiB, 2e-7 s/B on to 256 KiB.
static bucket_link kinked_link(void) {
    const double b[3] = {4096, 65536, 262144};
    const double s[3] = {0.5e-3, 0.5e-3 + 61440 * 1e-7, 0.5e-3 + 61440 * 1e-7 + 196608 * 2e-7};
    return bucket_plan_fit(b, s, 3, 0);
}

static void test_table_between_and_beyond(void **state) {
    (void)state;
    const bucket_link l = kinked_link();
    assert_int_equal(l.n, 3);
    assert_true(fabs(bucket_plan_allreduce_s(&l, 1024) - 0.5e-3) < 1e-15);             // below: the first
    assert_true(fabs(bucket_plan_allreduce_s(&l, 65536) - l.s[1]) < 1e-15);            // on a point
    assert_true(fabs(bucket_plan_allreduce_s(&l, 32768) - (0.5e-3 + 28672 * 1e-7)) < 1e-12);
    assert_true(fabs(bucket_plan_allreduce_s(&l, 131072) - (l.s[1] + 65536 * 2e-7)) < 1e-12);
    assert_true(fabs(bucket_plan_allreduce_s(&l, 1 << 20) - (l.s[2] + 786432 * 2e-7)) < 1e-12);  // the last slope
    // the line through the first and last points prices 1 MiB at its own (lower) slope
    const bucket_link line = {.alpha_s = l.alpha_s, .beta_s = l.beta_s};
    assert_true(bucket_plan_allreduce_s(&line, 1 << 20) < bucket_plan_allreduce_s(&l, 1 << 20));
}

// The reference CNN's shape: dense2 2 KiB, dense1 400 KiB (both done early), conv2 72 KiB, conv1 1 KiB last, 10 ms
// of backward. On the kinked link buckets of up to 64 KiB carry dense1 at the lower cost per byte; the line
// through the same two end points sees no difference between caps up to 256 KiB and takes the fewest buckets.
static void test_kinked_link_prefers_small_buckets(void **state) {
    (void)state;
    bucket_layer ly[4] = {{0, 2 * KB, 0.5e-3, 0, 0, 0}, {2 * KB, 402 * KB, 1e-3, 0, 0, 0},
                          {402 * KB, 474 * KB, 9e-3, 0, 0, 0}, {474 * KB, 475 * KB, 10e-3, 0, 0, 0}};
    const size_t np = 475 * KB;
    const bucket_link kinked = kinked_link();
    const bucket_link line = {.alpha_s = kinked.alpha_s, .beta_s = kinked.beta_s};
    bucket_choice ck, cl;
    assert_int_equal(bucket_plan_choose(ly, 4, np, 10e-3, &kinked, 1, 248, &ck), ST_OK);
    assert_int_equal(bucket_plan_choose(ly, 4, np, 10e-3, &line, 1, 248, &cl), ST_OK);
    assert_true(ck.kb <= 64);
    assert_int_equal(cl.kb, 256);
    int nb;
    const double at256 = bucket_plan_simulate(ly, 4, np, 10e-3, 256 * KB, &kinked, 1, &nb);
    assert_true(ck.exposed_s < 0.8 * at256);
}

// The reference CNN's layers: buffer order, contiguous, the last at n_params; backward's time split by arithmetic
// (conv2 takes the most); the buckets at 32 KiB are the trainer's documented 18 (docs/parallelism.md).
static void test_reference_cnn_layers(void **state) {
    (void)state;
    static net_config cfg;
    assert_int_equal(config_load(DDP_SOURCE_DIR "/configs/fashion_mnist_cnn.cfg", &cfg), ST_OK);
    assert_int_equal(config_validate(&cfg), ST_OK);
    backend be;
    assert_int_equal(backend_cpu_create(&be, 1), ST_OK);
    static model m;
    assert_int_equal(model_create(&m, &be, &cfg, 4), ST_OK);
    bucket_layer ly[CFG_MAX_LAYERS];
    const int n = bucket_plan_layers(&m, 10e-3, ly);
    assert_int_equal(n, 4);  // dense2, dense1, conv2, conv1
    assert_int_equal(ly[0].begin, 0);
    for (int i = 1; i < n; i++) {
        assert_int_equal(ly[i].begin, ly[i - 1].end);
        assert_true(ly[i].ready_s >= ly[i - 1].ready_s);
    }
    assert_int_equal(ly[n - 1].end, m.n_params);
    assert_true(fabs(ly[n - 1].ready_s - 10e-3) < 1e-12);
    double dt[4];
    for (int i = 0; i < n; i++) dt[i] = ly[i].ready_s - (i ? ly[i - 1].ready_s : 0);
    assert_true(dt[2] > dt[0] && dt[2] > dt[1] && dt[2] > dt[3]);
    assert_int_equal(bucket_plan_form(ly, n, m.n_params, 32 * KB, NULL), 18);
    model_destroy(&m);
    backend_destroy(&be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_closes_at_layer_boundaries),
        cmocka_unit_test(test_simulate_by_hand),
        cmocka_unit_test(test_simulate_powersgd),
        cmocka_unit_test(test_choose_known_best),
        cmocka_unit_test(test_latency_prefers_big_fast_link_small),
        cmocka_unit_test(test_fit_and_median),
        cmocka_unit_test(test_table_between_and_beyond),
        cmocka_unit_test(test_kinked_link_prefers_small_buckets),
        cmocka_unit_test(test_reference_cnn_layers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
