// test_comm.c — the comm layer under mpirun (registered as NP 1, 2, 4): set-up and rank info, the averaging
// all-reduce for edge sizes, many requests in flight waited in any order, progress without waiting, host
// collectives, status agreement, bad input, and the watchdog naming the stuck request.
//
// Every rank runs every test in the same order, so the collectives inside them match.
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "common.h"
#include "test_util.h"

static comm *g_c;

// ---------------------------------------------------------------------------------------------------------
// Helpers

// The value rank r puts at index i, and the mean over ranks the all-reduce must produce.
static float value_at(int rank, size_t i) { return (float)(rank + 1 + (int)(i % 7)); }
static double mean_at(int world, size_t i) { return (world + 1) / 2.0 + (double)(i % 7); }

static float *filled(size_t n) {
    // One extra element as a guard: the all-reduce must not write past n.
    float *x = malloc((n + 1) * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = value_at(g_rank, i);
    x[n] = -12345.0f;
    return x;
}

static void check_mean(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double want = mean_at(g_world, i);
        if (fabs(x[i] - want) > 1e-6 * want) fail_msg("rank %d: x[%zu] = %.9g, want %.9g", g_rank, i, x[i], want);
    }
    assert_true(x[n] == -12345.0f);
}

static int setup(void **state) {
    (void)state;
    err_clear();
    return 0;
}

// A failed assertion on one rank ends its test early, and the others may then wait in a collective forever:
// turn that into a prompt failure instead of a ctest timeout.
static int teardown(void **state) {
    (void)state;
    if (comm_outstanding(g_c) != 0) {
        fprintf(stderr, "test_comm: rank %d: a test left %d all-reduce(s) in flight; aborting the job\n", g_rank,
                comm_outstanding(g_c));
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return 0;
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "test_comm: no progress for 120 s (a rank may be stuck in a collective)\n";
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) _exit(1);
    _exit(1);
}

static int group_setup(void **state) {
    (void)state;
    return comm_create(&g_c, "mpi", 30.0) == ST_OK ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    comm_destroy(g_c);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// Set-up

static void test_create_sets_rank_info(void **state) {
    (void)state;
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    const comm_info *ci = comm_get_info(g_c);
    assert_int_equal(ci->rank, rank);
    assert_int_equal(ci->world, world);
    assert_int_equal(g_rank, rank);
    assert_int_equal(g_world, world);
    assert_true(ci->host[0] != '\0');
    assert_string_equal(g_host, ci->host);
    assert_string_equal(comm_backend_name(g_c), "mpi");
    assert_true(ci->local_rank >= 0 && ci->local_rank < ci->local_world && ci->local_world <= world);

    // Ranks on one host: the same local_world, and local ranks 0..local_world-1 each exactly once.
    uint64_t host_hash = 1469598103934665603ULL;
    for (const char *p = ci->host; *p; p++) host_hash = (host_hash ^ (unsigned char)*p) * 1099511628211ULL;
    uint64_t mine = (host_hash & 0xffffffff00000000ULL) | (uint64_t)ci->local_world << 16 | (uint64_t)ci->local_rank;
    uint64_t *all = calloc((size_t)world, sizeof *all);
    assert_non_null(all);
    assert_int_equal(comm_allgather_u64(g_c, mine, all), ST_OK);
    int seen = 0;
    for (int r = 0; r < world; r++) {
        if ((all[r] >> 32) != (mine >> 32)) continue;
        assert_int_equal((int)((all[r] >> 16) & 0xffff), ci->local_world);
        seen |= 1 << (all[r] & 0xffff);
    }
    assert_int_equal(seen, (1 << ci->local_world) - 1);
    free(all);
}

static void test_create_rejects_bad_input(void **state) {
    (void)state;
    comm *c = (comm *)&c;
    assert_int_equal(comm_create(&c, "bogus", 1.0), ST_INPUT);
    assert_null(c);
    assert_non_null(strstr(err_msg(), "'bogus'"));
    err_clear();
    assert_int_equal(comm_create(&c, NULL, 1.0), ST_INPUT);
    err_clear();
#ifndef DDP_HAVE_CUDA
    assert_int_equal(comm_create(&c, "nccl", 1.0), ST_INPUT);
    assert_non_null(strstr(err_msg(), "comm 'nccl' needs a CUDA build"));
    err_clear();
#endif
    const double bad_timeouts[] = {0.0, -1.0, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(comm_create(&c, "mpi", bad_timeouts[i]), ST_INPUT);
        assert_non_null(strstr(err_msg(), "timeout"));
        err_clear();
    }
}

static void test_bind_stream(void **state) {
    (void)state;
    assert_int_equal(comm_bind_stream(g_c, NULL, 0), ST_OK);
#ifndef DDP_HAVE_CUDA
    assert_int_equal(comm_bind_stream(g_c, NULL, 1), ST_RUNTIME);
    assert_non_null(strstr(err_msg(), "no CUDA"));
    err_clear();
    assert_int_equal(comm_bind_stream(g_c, NULL, 0), ST_OK);
#endif
}

// ---------------------------------------------------------------------------------------------------------
// Asynchronous averaging all-reduce

static void test_allreduce_avg_sizes(void **state) {
    (void)state;
    const size_t sizes[] = {0, 1, 2, 7, 1001, 65537, (size_t)1 << 20};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        float *x = filled(sizes[k]);
        int req = -1;
        assert_int_equal(comm_allreduce_avg_async(g_c, x, sizes[k], "sizes", &req), ST_OK);
        assert_true(req >= 0 && req < COMM_MAX_REQS);
        assert_int_equal(comm_outstanding(g_c), 1);
        assert_int_equal(comm_wait(g_c, req), ST_OK);
        assert_int_equal(comm_outstanding(g_c), 0);
        check_mean(x, sizes[k]);
        free(x);
    }
    // Blocking: one call, with another request outstanding (a gradient bucket in flight during sync BN).
    float *y = filled(1001), *z = filled(7);
    int pending = -1;
    assert_int_equal(comm_allreduce_avg_async(g_c, y, 1001, "bucket", &pending), ST_OK);
    assert_int_equal(comm_allreduce_avg(g_c, z, 7, "bn stats"), ST_OK);
    check_mean(z, 7);
    assert_int_equal(comm_wait(g_c, pending), ST_OK);
    check_mean(y, 1001);
    assert_int_equal(comm_outstanding(g_c), 0);
    free(y), free(z);
    // Nothing to reduce: a NULL buffer is fine.
    int req;
    assert_int_equal(comm_allreduce_avg_async(g_c, NULL, 0, "empty", &req), ST_OK);
    assert_int_equal(comm_wait(g_c, req), ST_OK);
}

static void test_many_outstanding_any_wait_order(void **state) {
    (void)state;
    enum { K = 9 };
    const size_t sizes[K] = {1, 0, 1000, 3, 100003, 17, 0, 4096, 250000};
    float *x[K];
    int req[K];
    for (int k = 0; k < K; k++) {
        x[k] = filled(sizes[k]);
        char label[32];
        snprintf(label, sizeof label, "bucket %d", k);
        assert_int_equal(comm_allreduce_avg_async(g_c, x[k], sizes[k], label, &req[k]), ST_OK);
    }
    assert_int_equal(comm_outstanding(g_c), K);
    // Each rank waits in its own order (a stride coprime with K, offset by rank).
    for (int j = 0; j < K; j++) {
        int k = (g_rank * 4 + j * (g_rank % 2 ? 2 : 7)) % K;
        assert_int_equal(comm_wait(g_c, req[k]), ST_OK);
        check_mean(x[k], sizes[k]);
    }
    assert_int_equal(comm_outstanding(g_c), 0);
    for (int k = 0; k < K; k++) free(x[k]);
}

static void test_slots_and_bad_requests(void **state) {
    (void)state;
    float x[COMM_MAX_REQS];
    int req[COMM_MAX_REQS];
    for (int k = 0; k < COMM_MAX_REQS; k++) {
        x[k] = value_at(g_rank, (size_t)k);
        assert_int_equal(comm_allreduce_avg_async(g_c, &x[k], 1, "slot", &req[k]), ST_OK);
    }
    float extra = 1;
    int r = 0;
    assert_int_equal(comm_allreduce_avg_async(g_c, &extra, 1, "one too many", &r), ST_RUNTIME);
    assert_int_equal(r, -1);
    assert_non_null(strstr(err_msg(), "one too many"));
    assert_non_null(strstr(err_msg(), "slots"));
    err_clear();
    for (int k = COMM_MAX_REQS - 1; k >= 0; k--) assert_int_equal(comm_wait(g_c, req[k]), ST_OK);
    for (int k = 0; k < COMM_MAX_REQS; k++) assert_true(fabs(x[k] - mean_at(g_world, (size_t)k)) < 1e-6);

    int done = 1;
    const int bad[] = {-1, COMM_MAX_REQS, req[0]};  // req[0] is no longer in flight
    for (int i = 0; i < 3; i++) {
        assert_int_equal(comm_test(g_c, bad[i], &done), ST_RUNTIME);
        assert_int_equal(done, 0);
        assert_non_null(strstr(err_msg(), "not in flight"));
        err_clear();
        assert_int_equal(comm_wait(g_c, bad[i]), ST_RUNTIME);
        err_clear();
    }
    assert_int_equal(comm_allreduce_avg_async(g_c, NULL, 5, "null", &r), ST_RUNTIME);
    err_clear();
}

static void test_progress_completes_without_wait(void **state) {
    (void)state;
    enum { K = 3 };
    const size_t sizes[K] = {1, 1000, (size_t)1 << 18};
    float *x[K];
    int req[K], done[K] = {0};
    for (int k = 0; k < K; k++) {
        x[k] = filled(sizes[k]);
        assert_int_equal(comm_allreduce_avg_async(g_c, x[k], sizes[k], "progress", &req[k]), ST_OK);
    }
    assert_int_equal(comm_progress(g_c), ST_OK);
    double t0 = now_s();
    int n_done = 0;
    for (long it = 0; n_done < K && now_s() - t0 < 20.0; it++) {
        assert_int_equal(comm_progress(g_c), ST_OK);
        n_done = 0;
        for (int k = 0; k < K; k++) {
            assert_int_equal(comm_test(g_c, req[k], &done[k]), ST_OK);
            n_done += done[k];
        }
    }
    assert_int_equal(n_done, K);
    for (int k = 0; k < K; k++) check_mean(x[k], sizes[k]);
    // Done but not yet waited: the slot stays taken until comm_wait hands it back.
    assert_int_equal(comm_outstanding(g_c), K);
    for (int k = 0; k < K; k++) assert_int_equal(comm_wait(g_c, req[k]), ST_OK);
    assert_int_equal(comm_outstanding(g_c), 0);
    assert_int_equal(comm_progress(g_c), ST_OK);
    for (int k = 0; k < K; k++) free(x[k]);
}

// ---------------------------------------------------------------------------------------------------------
// Host collectives

static void test_bcast(void **state) {
    (void)state;
    enum { N = 10007 };
    unsigned char *b = malloc(N);
    assert_non_null(b);
    int root = g_world - 1;
    for (int i = 0; i < N; i++) b[i] = (unsigned char)(g_rank == root ? i * 31 + 5 : 0);
    assert_int_equal(comm_bcast(g_c, b, N, root), ST_OK);
    for (int i = 0; i < N; i++) assert_int_equal(b[i], (unsigned char)(i * 31 + 5));
    assert_int_equal(comm_bcast(g_c, b, 0, 0), ST_OK);
    // MPI rejects the root; the message names the call, the rank and where it was made.
    assert_int_equal(comm_bcast(g_c, b, 1, g_world), ST_RUNTIME);
    assert_non_null(strstr(err_msg(), "MPI call MPI_Ibcast failed"));
    assert_non_null(strstr(err_msg(), "comm_world_mpi.c:"));
    char who[96];
    snprintf(who, sizeof who, "rank %d (%s)", g_rank, g_host);
    assert_non_null(strstr(err_msg(), who));
    err_clear();
    free(b);
}

static void test_sum_max_allgather(void **state) {
    (void)state;
    int w = g_world;
    double s[2] = {g_rank, 1.5};
    assert_int_equal(comm_allreduce_sum_f64(g_c, s, 2), ST_OK);
    assert_true(s[0] == w * (w - 1) / 2.0 && s[1] == 1.5 * w);
    int32_t m[3] = {g_rank, -g_rank, g_rank == 0 ? 100 : 7};
    assert_int_equal(comm_allreduce_max_i32(g_c, m, 3), ST_OK);
    assert_int_equal(m[0], w - 1);
    assert_int_equal(m[1], 0);
    assert_int_equal(m[2], 100);
    uint64_t *all = calloc((size_t)w, sizeof *all);
    assert_non_null(all);
    assert_int_equal(comm_allgather_u64(g_c, ((uint64_t)g_rank << 40) + 7, all), ST_OK);
    for (int r = 0; r < w; r++) assert_true(all[r] == ((uint64_t)r << 40) + 7);
    free(all);
    assert_int_equal(comm_barrier(g_c), ST_OK);
}

static void test_agree_status(void **state) {
    (void)state;
    int first_bad = 99;
    assert_int_equal(comm_agree_status(g_c, ST_OK, &first_bad), ST_OK);
    assert_int_equal(first_bad, -1);
    // The last rank fails with ST_INPUT: everyone sees it.
    int last = g_world - 1;
    assert_int_equal(comm_agree_status(g_c, g_rank == last ? ST_INPUT : ST_OK, &first_bad), ST_INPUT);
    assert_int_equal(first_bad, last);
    // Several ranks fail differently: the worst status wins, the lowest failing rank is named.
    int mine = g_rank % 2 ? ST_COMM : (g_rank == last ? ST_INPUT : ST_OK);
    int want = g_world > 1 ? ST_COMM : ST_INPUT;
    assert_int_equal(comm_agree_status(g_c, mine, &first_bad), want);
    assert_int_equal(first_bad, g_world > 1 ? 1 : 0);
}

// ---------------------------------------------------------------------------------------------------------
// Watchdog: rank 0 launches an all-reduce the others join only after its watchdog fired. Joining late lets
// the request finish cleanly, so the timeout comm is destroyed with nothing in flight.

static void test_watchdog_names_the_stuck_request(void **state) {
    (void)state;
    if (g_world < 2) skip();
    comm *tc = NULL;
    assert_int_equal(comm_create(&tc, "mpi", 0.5), ST_OK);
    float x = value_at(g_rank, 0);
    int req = -1;
    if (g_rank == 0) {
        double t0 = now_s();  // before the launch: the watchdog counts from the launch
        assert_int_equal(comm_allreduce_avg_async(tc, &x, 1, "step 7 bucket 3", &req), ST_OK);
        assert_int_equal(comm_wait(tc, req), ST_COMM);
        double dt = now_s() - t0;
        assert_true(dt >= 0.5 && dt < 2.0);
        assert_non_null(strstr(err_msg(), "all-reduce 'step 7 bucket 3' did not complete within 0.5 s"));
        assert_non_null(strstr(err_msg(), "rank 0 ("));
        print_message("watchdog: %s\n", err_msg());
        assert_non_null(strstr(err_msg(), g_world == 2 ? "rank 1 did not arrive" : "ranks 1, 2"));
        err_clear();
        assert_int_equal(comm_outstanding(tc), 1);
    }
    assert_int_equal(comm_barrier(g_c), ST_OK);
    if (g_rank != 0) assert_int_equal(comm_allreduce_avg_async(tc, &x, 1, "late", &req), ST_OK);
    // Bounded loop: the watchdog of rank 0's request has long expired, so wait by testing.
    int done = 0;
    double t0 = now_s();
    while (!done && now_s() - t0 < 20.0) assert_int_equal(comm_test(tc, req, &done), ST_OK);
    assert_true(done);
    assert_int_equal(comm_wait(tc, req), ST_OK);
    assert_true(fabs(x - mean_at(g_world, 0)) < 1e-6);
    assert_int_equal(comm_outstanding(tc), 0);
    comm_destroy(tc);
}

int main(int argc, char **argv) {
    if (MPI_Init(&argc, &argv) != MPI_SUCCESS) return 1;
    signal(SIGALRM, on_alarm);
    alarm(120);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_sets_rank_info, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_rejects_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bind_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_allreduce_avg_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_outstanding_any_wait_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slots_and_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_progress_completes_without_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bcast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sum_max_allgather, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agree_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watchdog_names_the_stuck_request, setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    MPI_Finalize();
    return failed;
}
