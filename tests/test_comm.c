// test_comm.c — the comm layer under mpirun (registered as NP 1, 2, 4): set-up and rank info, the averaging
// all-reduce for edge sizes, many requests in flight waited in any order, progress without waiting, host
// collectives, status agreement, bad input, the watchdog naming the stuck request, and compression: the 16-bit
// conversions against an independent reference, bf16/fp16 all-reduces within the documented rounding bound and
// identical on every rank, fp16 beyond half's range, sync BN's blocking all-reduce staying float32, and (with a
// GPU per rank) the nccl backend's casts and 16-bit all-reduces against the CPU's. Hierarchical all-reduces
// (comm_set_hierarchy) with nodes made by the fake split (at np 4: 2 nodes x 2 ranks, and uneven 2+1+1): equal to
// the flat result within float32 summation-order rounding, identical on every rank, waited in any order per rank
// with slots reused, compressed within the same bound as flat; one rank per node and one node run flat. Lanes:
// all-reduces on lane 0 and lane 1 launched interleaved differently on different ranks all arrive. bf16 input
// (comm_allreduce_avg_bf16_async): bit for bit the compressed path's average of the float32 values (zeros, ties,
// cancellations), within its bound, flat and by node, the sum left in the wire, in flight among float32 requests
// waited in any order, refused without a buffer or a 16-bit transport, and (with a GPU) staged by mpi and on nccl.
//
// Every rank runs every test in the same order, so the collectives inside them match.
#include <float.h>
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "comm_half.h"
#include "common.h"
#include "test_util.h"

#ifdef DDP_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "backend_cuda.h"
#endif

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

// ---------------------------------------------------------------------------------------------------------
// Compression (parallel.compress=bf16|fp16)

// The nearest value with `bits` significand bits (ties to even) and exponents down to emin (subnormals below),
// by double arithmetic (rint rounds ties to even): a reference independent of comm_half.h's bit manipulation.
static double round_ref(double x, int bits, int emin) {
    if (x == 0.0 || !isfinite(x)) return x;
    int e = 0;
    (void)frexp(x, &e);  // |x| in [2^(e-1), 2^e)
    int lead = e - 1 < emin ? emin : e - 1;
    double ulp = ldexp(1.0, lead - (bits - 1));
    return rint(x / ulp) * ulp;
}

static void test_half_conversions(void **state) {
    (void)state;
    if (g_rank != 0) skip();  // local arithmetic: one rank checks it
    // Every 16-bit code goes to float32 and back unchanged (NaNs stay NaNs).
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = half_f16_to_f32((uint16_t)h), g = half_bf16_to_f32((uint16_t)h);
        if (isnan(f)) assert_true(isnan(half_f16_to_f32(half_f16_from_f32(f))));
        else if (half_f16_from_f32(f) != h) fail_msg("fp16 %#x -> %g -> %#x", h, f, half_f16_from_f32(f));
        if (isnan(g)) assert_true(isnan(half_bf16_to_f32(half_bf16_from_f32(g))));
        else if (half_bf16_from_f32(g) != h) fail_msg("bf16 %#x -> %g -> %#x", h, g, half_bf16_from_f32(g));
    }
    // Rounding of float32 to the nearest, ties to even: every 4099th float32 pattern (all exponents), and the
    // edges -- ties at half's largest finite, the smallest subnormal, between subnormals.
    const float edges[] = {65504.0f, 65519.996f, 65520.0f, 0x1p-24f, 0x1p-25f, 0x1.000002p-25f, 0x1.8p-24f,
                           0x1.4p-23f, 0x1.fffp-15f, 0x1p-14f, 3.0e38f, 0x1.ff0000p127f, 0x1.fe8p127f};
    for (uint64_t u = 0; u < ((uint64_t)1 << 32) + 13 * 4099; u += 4099) {
        float x;
        if (u < ((uint64_t)1 << 32)) {
            uint32_t bits = (uint32_t)u;
            memcpy(&x, &bits, sizeof x);
        } else {
            x = edges[(u - ((uint64_t)1 << 32)) / 4099];
        }
        if (isnan(x)) {
            assert_true(isnan(half_f16_to_f32(half_f16_from_f32(x))) && isnan(half_bf16_to_f32(half_bf16_from_f32(x))));
            continue;
        }
        double want = round_ref(x, 11, -14);
        if (fabs(want) > 65504.0) want = copysign(INFINITY, x);
        const float got = half_f16_to_f32(half_f16_from_f32(x));
        if (!(got == (float)want && signbit(got) == signbit(x))) fail_msg("fp16(%a) = %a, want %a", x, got, want);
        want = round_ref(x, 8, -126);
        if (fabs(want) > FLT_MAX) want = copysign(INFINITY, x);
        const float gb = half_bf16_to_f32(half_bf16_from_f32(x));
        if (!(gb == (float)want && signbit(gb) == signbit(x))) fail_msg("bf16(%a) = %a, want %a", x, gb, want);
    }
}

// Inputs with a spread of magnitudes inside every block (5 decades) and across ranks, none exact in 16 bits.
static float wide_at(int rank, size_t i) {
    const double mag = pow(10.0, (double)(int)(i % 11) / 2.0 - 3.0);
    return (float)((1.0 + 0.318309886 * (double)(rank + 1) + 1e-3 * (double)(i % 997)) * mag * (i % 3 ? 1 : -1));
}

// The bound of docs/parallelism.md: |got - mean| <= N·(u·mean_r|x_r| + 2^-39·M), u = 2^-8 (bf16) or 2^-11 (fp16),
// M the largest |x| of the element's block on any rank (fp16's scaled subnormals; 0 for bf16); 1 % slack.
static double bound_at(int mode, int world, size_t i, size_t n, float (*at)(int, size_t)) {
    static size_t block = SIZE_MAX;  // M of the last block asked for (callers go through blocks in order)
    static double M;
    static float (*block_at)(int, size_t);
    if (mode == COMM_COMPRESS_FP16 && (i / HALF_BLOCK != block || at != block_at)) {
        block = i / HALF_BLOCK, block_at = at, M = 0;
        for (int r = 0; r < world; r++)
            for (size_t j = block * HALF_BLOCK; j < (block + 1) * HALF_BLOCK && j < n; j++) M = fmax(M, fabs(at(r, j)));
    }
    double mean_abs = 0;
    for (int r = 0; r < world; r++) mean_abs += fabs(at(r, i)) / world;
    const double u = mode == COMM_COMPRESS_BF16 ? 0x1p-8 : 0x1p-11;
    return 1.01 * world * (u * mean_abs + 0x1p-39 * (mode == COMM_COMPRESS_FP16 ? M : 0)) + 1e-30;
}

static uint64_t hash_floats(const float *x, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    const unsigned char *p = (const unsigned char *)x;
    for (size_t i = 0; i < n * sizeof *x; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

// Every rank holds the same n values (compared by hash).
static void check_identical_on_ranks(const float *x, size_t n) {
    uint64_t *all = calloc((size_t)g_world, sizeof *all);
    assert_non_null(all);
    assert_int_equal(comm_allgather_u64(g_c, hash_floats(x, n), all), ST_OK);
    for (int r = 1; r < g_world; r++)
        if (all[r] != all[0]) fail_msg("rank %d's result differs from rank 0's (%zu values)", r, n);
    free(all);
}

// got against the float32 mean within the bound; returns how many elements differ from that mean at all.
static size_t check_within_bound(int mode, const float *got, size_t n, float (*at)(int, size_t)) {
    size_t differ = 0;
    for (size_t i = 0; i < n; i++) {
        double want = 0;
        for (int r = 0; r < g_world; r++) want += (double)at(r, i) / g_world;
        const double err = fabs(got[i] - want), tol = bound_at(mode, g_world, i, n, at);
        if (!(err <= tol))
            fail_msg("%s, rank %d: x[%zu] = %.9g, want %.9g (error %.3g > bound %.3g)", comm_compress_name(mode), g_rank,
                     i, got[i], want, err, tol);
        differ += (float)want != got[i];
    }
    return differ;
}

static void test_compress_allreduce_within_bound(void **state) {
    (void)state;
    const size_t sizes[] = {1, 255, 256, 257, 1001, 65537};
    const int modes[] = {COMM_COMPRESS_BF16, COMM_COMPRESS_FP16};
    for (int m = 0; m < 2; m++) {
        assert_int_equal(comm_set_compress(g_c, modes[m]), ST_OK);
        assert_int_equal(comm_get_compress(g_c), modes[m]);
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            const size_t n = sizes[k];
            float *x = malloc((n + 1) * sizeof *x);
            assert_non_null(x);
            for (size_t i = 0; i < n; i++) x[i] = wide_at(g_rank, i);
            x[n] = -12345.0f;
            int req = -1;
            assert_int_equal(comm_allreduce_avg_async(g_c, x, n, "compressed", &req), ST_OK);
            assert_int_equal(comm_wait(g_c, req), ST_OK);
            const size_t differ = check_within_bound(modes[m], x, n, wide_at);
            // The values really went through 16 bits: most of them cannot come back exact.
            if (n >= 255 && differ < n / 2)
                fail_msg("%s: only %zu of %zu values differ from the float32 mean", comm_compress_name(modes[m]), differ, n);
            assert_true(x[n] == -12345.0f);
            check_identical_on_ranks(x, n);
            free(x);
        }
    }
    assert_int_equal(comm_set_compress(g_c, COMM_COMPRESS_NONE), ST_OK);
}

// Beyond half's range (65504), the largest gradient 3e30, and values 30 decades apart in other blocks: fp16's
// scales keep every sum finite and within the bound. A NaN or Inf input stays one, on every rank.
static float huge_at(int rank, size_t i) {
    const size_t block = i / HALF_BLOCK;
    const float big = block == 0 ? 7.0e4f : block == 1 ? 3.0e30f : block == 2 ? 1.0e-20f : 1.0f;
    return big * (0.75f + 0.25f * (float)rank + 1e-3f * (float)(i % 101)) * (i % 2 ? -1.0f : 1.0f);
}

static void test_compress_fp16_beyond_half_range(void **state) {
    (void)state;
    enum { N = 4 * HALF_BLOCK };
    float x[N + 1];
    for (int m = 0; m < 2; m++) {
        const int mode = m ? COMM_COMPRESS_BF16 : COMM_COMPRESS_FP16;
        assert_int_equal(comm_set_compress(g_c, mode), ST_OK);
        for (size_t i = 0; i < N; i++) x[i] = huge_at(g_rank, i);
        int req = -1;
        assert_int_equal(comm_allreduce_avg_async(g_c, x, N, "huge", &req), ST_OK);
        assert_int_equal(comm_wait(g_c, req), ST_OK);
        for (size_t i = 0; i < N; i++) assert_true(isfinite(x[i]));
        check_within_bound(mode, x, N, huge_at);
        check_identical_on_ranks(x, N);
    }
    // Non-finite inputs: rank 0 has a NaN at 3 and an Inf at HALF_BLOCK + 5; the last block has neither.
    assert_int_equal(comm_set_compress(g_c, COMM_COMPRESS_FP16), ST_OK);
    for (size_t i = 0; i < N; i++) x[i] = huge_at(g_rank, i);
    if (g_rank == 0) x[3] = NAN, x[HALF_BLOCK + 5] = INFINITY;
    int req = -1;
    assert_int_equal(comm_allreduce_avg_async(g_c, x, N, "nan", &req), ST_OK);
    assert_int_equal(comm_wait(g_c, req), ST_OK);
    assert_true(isnan(x[3]));
    assert_true(isinf(x[HALF_BLOCK + 5]) && x[HALF_BLOCK + 5] > 0);
    for (size_t i = 3 * HALF_BLOCK; i < N; i++) {
        double want = 0;
        for (int r = 0; r < g_world; r++) want += (double)huge_at(r, i) / g_world;
        assert_true(fabs(x[i] - want) <= bound_at(COMM_COMPRESS_FP16, g_world, i, N, huge_at));
    }
    uint64_t *all = calloc((size_t)g_world, sizeof *all);
    assert_non_null(all);
    x[3] = 0.0f;  // NaN payloads may differ; the rest must not
    assert_int_equal(comm_allgather_u64(g_c, hash_floats(x, N), all), ST_OK);
    for (int r = 1; r < g_world; r++) assert_true(all[r] == all[0]);
    free(all);
    assert_int_equal(comm_set_compress(g_c, COMM_COMPRESS_NONE), ST_OK);
}

// Sync batch norm's statistics (the blocking all-reduce) stay float32 while the buckets are compressed; a
// bucket keeps the format it was launched with; a bad mode is refused.
static void test_compress_blocking_stays_fp32(void **state) {
    (void)state;
    float *y = filled(1001), *z = filled(1001);
    for (size_t i = 0; i < 1001; i++) y[i] = z[i] = value_at(g_rank, i) * (1.0f + 1e-4f * (float)i);
    int req = -1;
    assert_int_equal(comm_set_compress(g_c, COMM_COMPRESS_BF16), ST_OK);
    assert_int_equal(comm_allreduce_avg_async(g_c, y, 1001, "bucket", &req), ST_OK);
    assert_int_equal(comm_set_compress(g_c, COMM_COMPRESS_NONE), ST_OK);  // y stays bf16
    assert_int_equal(comm_set_compress(g_c, COMM_COMPRESS_FP16), ST_OK);
    assert_int_equal(comm_allreduce_avg(g_c, z, 1001, "bn stats"), ST_OK);
    assert_int_equal(comm_wait(g_c, req), ST_OK);
    size_t y_off = 0;
    for (size_t i = 0; i < 1001; i++) {
        double want = 0;
        for (int r = 0; r < g_world; r++) want += (double)(value_at(r, i) * (1.0f + 1e-4f * (float)i)) / g_world;
        if (fabs(z[i] - want) > 1e-6 * fabs(want)) fail_msg("bn stats: z[%zu] = %.9g, want %.9g", i, z[i], want);
        y_off += fabs(y[i] - want) > 1e-6 * fabs(want);
        assert_true(fabs(y[i] - want) <= 1.01 * g_world * 0x1p-8 * fabs(want) + 1e-30);
    }
    assert_true(y_off > 500);  // the bucket went as bf16
    assert_int_equal(comm_set_compress(g_c, 7), ST_RUNTIME);
    err_clear();
    assert_int_equal(comm_set_compress(g_c, COMM_COMPRESS_NONE), ST_OK);
    free(y), free(z);
}

#ifdef DDP_HAVE_CUDA
// Agreed over the ranks, so that all of them run a GPU test or none: skips the calling test on every rank when some
// rank has no usable CUDA device (tu_cuda_or_skip: a failure under DDP_REQUIRE_CUDA). Returns 1 when every host has
// a GPU per rank (nccl: device = local rank), 0 when some host has fewer (not a broken machine).
static int cuda_on_every_rank_or_skip(void) {
    const char *why = backend_cuda_unusable();
    int count = 0;
    if (!why && cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
    int32_t lacking[2] = {why != NULL, !why && count < comm_get_info(g_c)->local_world};
    assert_int_equal(comm_allreduce_max_i32(g_c, lacking, 2), ST_OK);
    if (lacking[0]) tu_cuda_or_skip(why ? why : "a CUDA device is unusable on another rank");
    if (lacking[0]) skip();
    return !lacking[1];
}

// The nccl backend's compressed all-reduce on device buffers against the CPU: within the same bound as the mpi
// backend's, identical on every rank, and at one rank bit for bit the CPU's casts (CUDA's __float2bfloat16_rn and
// __float2half_rn against comm_half.h). Needs a GPU per rank on every host: skipped on every rank otherwise.
static void test_nccl_compress_matches_cpu(void **state) {
    (void)state;
    if (!cuda_on_every_rank_or_skip()) skip();
    comm *nc = NULL;
    assert_int_equal(comm_create(&nc, "nccl", 30.0), ST_OK);
    assert_true(comm_caps(nc) & COMM_CAP_COMPRESS16);
    assert_int_equal(comm_bind_stream(nc, NULL, 1), ST_OK);
    enum { N = 65537 };
    float *x = malloc(N * sizeof *x), *got = malloc(N * sizeof *got);
    assert_non_null(x), assert_non_null(got);
    float *d = NULL;
    assert_int_equal(cudaMalloc((void **)&d, N * sizeof *d), cudaSuccess);
    double M_all = 0;  // the bucket's largest |x| on any rank
    for (int r = 0; r < g_world; r++)
        for (size_t i = 0; i < N; i++) M_all = fmax(M_all, fabs(wide_at(r, i)));
    const int modes[] = {COMM_COMPRESS_BF16, COMM_COMPRESS_FP16};
    for (int m = 0; m < 2; m++) {
        assert_int_equal(comm_set_compress(nc, modes[m]), ST_OK);
        for (size_t i = 0; i < N; i++) x[i] = wide_at(g_rank, i);
        assert_int_equal(cudaMemcpy(d, x, N * sizeof *d, cudaMemcpyHostToDevice), cudaSuccess);
        int req = -1;
        assert_int_equal(comm_allreduce_avg_async(nc, d, N, "nccl compressed", &req), ST_OK);
        assert_int_equal(comm_wait(nc, req), ST_OK);
        assert_int_equal(cudaMemcpy(got, d, N * sizeof *d, cudaMemcpyDeviceToHost), cudaSuccess);
        // nccl's fp16 scale is one per bucket (its largest |x| over ranks), so the bound takes the bucket's M.
        for (size_t i = 0; i < N; i++) {
            double want = 0, mean_abs = 0;
            for (int r = 0; r < g_world; r++) want += (double)wide_at(r, i) / g_world, mean_abs += fabs(wide_at(r, i)) / g_world;
            const double M = modes[m] == COMM_COMPRESS_FP16 ? M_all : 0, u = modes[m] == COMM_COMPRESS_BF16 ? 0x1p-8 : 0x1p-11;
            const double tol = 1.01 * g_world * (u * mean_abs + 0x1p-39 * M) + 1e-30;
            if (!(fabs(got[i] - want) <= tol))
                fail_msg("nccl %s: x[%zu] = %.9g, want %.9g (bound %.3g)", comm_compress_name(modes[m]), i, got[i], want, tol);
        }
        check_identical_on_ranks(got, N);
        if (g_world == 1) {  // one rank: the sum is the cast itself; compare the casts bit for bit
            float M = 0;
            for (size_t i = 0; i < N; i++) M = fmaxf(M, fabsf(x[i]));
            const int k = half_scale_exp(M);
            for (size_t i = 0; i < N; i++) {
                const float want = modes[m] == COMM_COMPRESS_BF16
                                       ? half_bf16_to_f32(half_bf16_from_f32(x[i]))
                                       : half_f16_to_f32(half_f16_from_f32(x[i] * ldexpf(1.0f, k))) * ldexpf(1.0f, -k);
                if (memcmp(&want, &got[i], sizeof want) != 0)
                    fail_msg("nccl %s cast: x[%zu] = %a -> %a, the CPU's %a", comm_compress_name(modes[m]), i, x[i],
                             got[i], want);
            }
        }
    }
    cudaFree(d);
    free(x), free(got);
    comm_destroy(nc);
}
#endif

// ---------------------------------------------------------------------------------------------------------
// Hierarchical all-reduce (nodes from the fake split: one host runs them all)

static comm *hier_comm(int mode, int fake_nodes) {
    comm *hc = NULL;
    assert_int_equal(comm_create(&hc, "mpi", 30.0), ST_OK);
    assert_int_equal(comm_set_hierarchy(hc, mode, fake_nodes), ST_OK);
    return hc;
}

// The fake split's nodes at this np: 2 nodes (of 2 ranks at np 4), or as many as ranks below np 4.
static int fake_nodes_for(int world) { return world >= 4 ? 2 : world; }

static void test_hierarchy_modes_and_lines(void **state) {
    (void)state;
    comm *hc = hier_comm(COMM_HIERARCHY_FLAT, 0);
    assert_int_equal(comm_hierarchy(hc), COMM_HIERARCHY_FLAT);
    assert_string_equal(comm_hierarchy_line(hc), "");
    assert_int_equal(comm_set_hierarchy(hc, COMM_HIERARCHY_NODE, 0), ST_RUNTIME);  // once
    comm_destroy(hc);
    assert_int_equal(comm_create(&hc, "mpi", 30.0), ST_OK);
    assert_int_equal(comm_set_hierarchy(hc, COMM_HIERARCHY_NODE, g_world + 1), ST_INPUT);
    comm_destroy(hc);
    // One node (this host, no fake split): flat, with the note.
    hc = hier_comm(COMM_HIERARCHY_NODE, 0);
    assert_int_equal(comm_hierarchy(hc), COMM_HIERARCHY_FLAT);
    assert_string_equal(comm_hierarchy_line(hc), "hierarchy=node with all ranks on one node: flat all-reduce");
    comm_destroy(hc);
    // One rank per node: flat, with the note (np 1: one node of one rank).
    hc = hier_comm(COMM_HIERARCHY_NODE, g_world);
    assert_int_equal(comm_hierarchy(hc), COMM_HIERARCHY_FLAT);
    assert_string_equal(comm_hierarchy_line(hc), g_world > 1 ? "hierarchy=node with one rank per node: flat all-reduce "
                                                               "(fake nodes: a test hook)"
                                                             : "hierarchy=node with all ranks on one node: flat "
                                                               "all-reduce (fake nodes: a test hook)");
    comm_destroy(hc);
    hc = hier_comm(COMM_HIERARCHY_AUTO, fake_nodes_for(g_world));
    if (g_world >= 4) {
        assert_int_equal(comm_hierarchy(hc), COMM_HIERARCHY_NODE);
        char want[160];
        snprintf(want, sizeof want, "hierarchy: node (2 nodes x %d ranks; leaders all-reduce across nodes; auto; fake "
                 "nodes: a test hook)", g_world / 2);
        assert_string_equal(comm_hierarchy_line(hc), want);
    } else {
        assert_int_equal(comm_hierarchy(hc), COMM_HIERARCHY_FLAT);
    }
    comm_destroy(hc);
    if (g_world == 4) {  // uneven nodes: ranks 0-1, 2, 3
        hc = hier_comm(COMM_HIERARCHY_NODE, 3);
        assert_int_equal(comm_hierarchy(hc), COMM_HIERARCHY_NODE);
        assert_string_equal(comm_hierarchy_line(hc), "hierarchy: node (3 nodes of 1 to 2 ranks; leaders all-reduce "
                                                     "across nodes; fake nodes: a test hook)");
        comm_destroy(hc);
    }
}

// x (hierarchical) against ref (flat, the same inputs): float32 sums of the same values in another order differ
// by at most (world - 1) roundings of the partial sums, each <= 2^-24 of the sum of |x_r|; then the same scale.
static void check_near_flat(const float *x, const float *ref, size_t n, float (*at)(int, size_t), const char *what) {
    for (size_t i = 0; i < n; i++) {
        double sum_abs = 0;
        for (int r = 0; r < g_world; r++) sum_abs += fabs((double)at(r, i));
        const double tol = 2.0 * (g_world - 1) * 0x1p-24 * sum_abs / g_world + 1e-38;
        if (!(fabs((double)x[i] - (double)ref[i]) <= tol))
            fail_msg("%s, rank %d: x[%zu] = %.9g, flat %.9g (difference %.3g > %.3g)", what, g_rank, i, x[i], ref[i],
                     fabs((double)x[i] - (double)ref[i]), tol);
    }
}

static float *filled_with(size_t n, float (*at)(int, size_t)) {
    float *x = malloc((n + 1) * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = at(g_rank, i);
    x[n] = -12345.0f;
    return x;
}

// Each node arrangement at this np: 2 even nodes (np 4), uneven 2+1+1 (np 4), one rank per node (np 2).
static void test_hierarchy_matches_flat(void **state) {
    (void)state;
    const int fakes[] = {fake_nodes_for(g_world), 3};
    const size_t sizes[] = {1, 7, 1000, 65537, 300001};
    for (int f = 0; f < (g_world == 4 ? 2 : 1); f++) {
        comm *hc = hier_comm(COMM_HIERARCHY_NODE, fakes[f]);
        assert_int_equal(comm_hierarchy(hc), g_world >= 4 ? COMM_HIERARCHY_NODE : COMM_HIERARCHY_FLAT);
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            const size_t n = sizes[k];
            float *x = filled_with(n, wide_at), *ref = filled_with(n, wide_at);
            int req = -1;
            assert_int_equal(comm_allreduce_avg_async(hc, x, n, "hier", &req), ST_OK);
            assert_int_equal(comm_wait(hc, req), ST_OK);
            assert_int_equal(comm_allreduce_avg_async(g_c, ref, n, "flat", &req), ST_OK);
            assert_int_equal(comm_wait(g_c, req), ST_OK);
            check_near_flat(x, ref, n, wide_at, "hierarchical");
            assert_true(x[n] == -12345.0f);
            check_identical_on_ranks(x, n);
            free(x), free(ref);
        }
        // Sync batch norm's blocking all-reduce stays flat: bit for bit the flat result.
        float *x = filled_with(1001, wide_at), *ref = filled_with(1001, wide_at);
        assert_int_equal(comm_allreduce_avg(hc, x, 1001, "sync bn"), ST_OK);
        assert_int_equal(comm_allreduce_avg(g_c, ref, 1001, "sync bn flat"), ST_OK);
        assert_memory_equal(x, ref, 1001 * sizeof *x);
        free(x), free(ref);
        comm_destroy(hc);
    }
}

// Many buckets in flight, each rank testing and waiting in its own order, slots freed and reused in between (so
// slot order is not launch order), a blocking flat all-reduce among them: every stage still starts in the same
// order on every rank (or this deadlocks or mixes buckets up), and every bucket gets its own mean.
static void test_hierarchy_any_wait_order(void **state) {
    (void)state;
    enum { K = 12 };
    const size_t sizes[K] = {3, 100003, 0, 4096, 17, 250000, 1, 999, 65536, 5, 70000, 2};
    comm *hc = hier_comm(COMM_HIERARCHY_NODE, fake_nodes_for(g_world));
    float *x[K];
    int req[K];
    for (int round = 0; round < 2; round++) {
        const int half = round == 0 ? K / 2 : K;  // round 0: launch half, wait some; round 1: the rest into freed slots
        for (int k = round == 0 ? 0 : K / 2; k < half; k++) {
            x[k] = filled(sizes[k]);
            char label[32];
            snprintf(label, sizeof label, "bucket %d", k);
            assert_int_equal(comm_allreduce_avg_async(hc, x[k], sizes[k], label, &req[k]), ST_OK);
            if (k % 3 == g_rank % 3) assert_int_equal(comm_progress(hc), ST_OK);
        }
        if (round == 0) {
            float s[5] = {1, 2, 3, 4, 5};
            assert_int_equal(comm_allreduce_avg(hc, s, 5, "blocking among buckets"), ST_OK);
            for (int k = 0; k < K / 2; k += 1 + (g_rank % 2)) {  // some of them, per rank
                assert_int_equal(comm_wait(hc, req[k]), ST_OK);
                check_mean(x[k], sizes[k]);
                req[k] = -1;
            }
        }
    }
    for (int j = 0; j < K; j++) {
        const int k = (g_rank * 5 + j * (g_rank % 2 ? 5 : 7)) % K;
        if (req[k] < 0) continue;
        assert_int_equal(comm_wait(hc, req[k]), ST_OK);
        check_mean(x[k], sizes[k]);
    }
    assert_int_equal(comm_outstanding(hc), 0);
    for (int k = 0; k < K; k++) free(x[k]);
    comm_destroy(hc);
}

static void test_hierarchy_compressed_within_bound(void **state) {
    (void)state;
    const size_t sizes[] = {1, 257, 1001, 65537};
    const int modes[] = {COMM_COMPRESS_BF16, COMM_COMPRESS_FP16};
    comm *hc = hier_comm(COMM_HIERARCHY_NODE, fake_nodes_for(g_world));
    for (int m = 0; m < 2; m++) {
        assert_int_equal(comm_set_compress(hc, modes[m]), ST_OK);
        for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
            const size_t n = sizes[k];
            float *x = filled_with(n, wide_at);
            int req = -1;
            assert_int_equal(comm_allreduce_avg_async(hc, x, n, "hier compressed", &req), ST_OK);
            assert_int_equal(comm_wait(hc, req), ST_OK);
            const size_t differ = check_within_bound(modes[m], x, n, wide_at);
            if (n >= 257 && differ < n / 2)
                fail_msg("%s: only %zu of %zu values differ from the float32 mean", comm_compress_name(modes[m]), differ, n);
            assert_true(x[n] == -12345.0f);
            check_identical_on_ranks(x, n);
            free(x);
        }
    }
    comm_destroy(hc);
}

// ---------------------------------------------------------------------------------------------------------
// Lanes (comm_allreduce_avg_async_lane): each rank launches its all-reduces of lane 0 and of lane 1 interleaved in
// its own way -- even ranks a0 b0 a1 b1 a2 b2, odd ranks b0 b1 b2 a0 a1 a2 (a on lane 0, b on lane 1), as the
// trainer launches PowerSGD's Q's when its own view says their P's are done -- and waits in its own order. Each
// lane is in one order on every rank, so all arrive; on one communicator MPI would match an even rank's a0 with an
// odd rank's b0 (other sizes: an MPI error, the watchdog, or wrong sums). Float32 and both 16-bit wire formats;
// bad lanes; a hierarchical comm has one lane (lane 1 is lane 0 there).

static void test_lanes_any_order_across_lanes(void **state) {
    (void)state;
    assert_int_equal(comm_caps(g_c) & COMM_CAP_LANES, COMM_CAP_LANES);
    assert_int_equal(comm_lanes(g_c), 2);
    comm *lc = NULL;
    assert_int_equal(comm_create(&lc, "mpi", 10.0), ST_OK);
    enum { K = 3 };
    const size_t na[K] = {1000, 3, 65537}, nb[K] = {250000, 17, 1};
    const int modes[] = {COMM_COMPRESS_NONE, COMM_COMPRESS_BF16, COMM_COMPRESS_FP16};
    for (int m = 0; m < 3; m++) {
        assert_int_equal(comm_set_compress(lc, modes[m]), ST_OK);
        float *a[K], *b[K];
        int ra[K], rb[K];
        for (int k = 0; k < K; k++) a[k] = filled(na[k]), b[k] = filled(nb[k]);
        for (int j = 0; j < 2 * K; j++) {
            const int odd = g_rank % 2, lane = odd ? j < K : j % 2, k = odd ? j % K : j / 2;
            char label[32];
            snprintf(label, sizeof label, "lane %d #%d", lane, k);
            if (lane) assert_int_equal(comm_allreduce_avg_async_lane(lc, 1, b[k], nb[k], label, &rb[k]), ST_OK);
            else assert_int_equal(comm_allreduce_avg_async_lane(lc, 0, a[k], na[k], label, &ra[k]), ST_OK);
            if (j == 1 && odd) assert_int_equal(comm_progress(lc), ST_OK);
        }
        for (int j = 0; j < K; j++) {  // even ranks wait in launch order, odd ranks from the last
            const int k = g_rank % 2 ? K - 1 - j : j;
            assert_int_equal(comm_wait(lc, g_rank % 2 ? rb[k] : ra[k]), ST_OK);
            assert_int_equal(comm_wait(lc, g_rank % 2 ? ra[k] : rb[k]), ST_OK);
        }
        for (int k = 0; k < K; k++) {
            check_mean(a[k], na[k]), check_mean(b[k], nb[k]);
            free(a[k]), free(b[k]);
        }
    }
    assert_int_equal(comm_outstanding(lc), 0);
    float x = 1;
    int r = 0;
    for (int lane = -1; lane <= COMM_LANES; lane += COMM_LANES + 1) {
        assert_int_equal(comm_allreduce_avg_async_lane(lc, lane, &x, 1, "bad lane", &r), ST_RUNTIME);
        assert_int_equal(r, -1);
        assert_non_null(strstr(err_msg(), "bad lane"));
        err_clear();
    }
    comm_destroy(lc);
    // Hierarchical requests order their stages over all requests by launch: no lane apart, lane 1 runs as lane 0.
    comm *hc = hier_comm(COMM_HIERARCHY_NODE, fake_nodes_for(g_world));
    assert_int_equal(comm_lanes(hc), comm_hierarchy(hc) == COMM_HIERARCHY_NODE ? 1 : 2);
    float *y = filled(4099);
    assert_int_equal(comm_allreduce_avg_async_lane(hc, 1, y, 4099, "hier lane 1", &r), ST_OK);
    assert_int_equal(comm_wait(hc, r), ST_OK);
    check_mean(y, 4099);
    free(y);
    comm_destroy(hc);
}

// ---------------------------------------------------------------------------------------------------------
// bf16 input (comm_allreduce_avg_bf16_async): gradients that are bf16 already go on the wire without a cast, and
// come out bit for bit as the compressed path's (COMM_COMPRESS_BF16) of the float32 values they were rounded from:
// 1/world = 2^-k at every np ctest runs (1, 2, 4), so rounding x/world to bf16 is rounding x and scaling, and so is
// every rounding of a partial sum; summing the rounded x and scaling once at the end gives the same bits.

static uint32_t mix32(uint32_t h) {
    h ^= h >> 16, h *= 0x7feb352du, h ^= h >> 15, h *= 0x846ca68bu, h ^= h >> 16;
    return h;
}

// Rank r's gradient at i, a function of (r, i) alone (the bound regenerates every rank's): magnitudes 2^-60 to 2^60
// that vary with i, within a factor 16 of each other across ranks at one i (so that the roundings of the sums
// matter), away from bf16's subnormals and overflow, where the equivalence above holds; both signs; zeros on every
// rank at every 13th i (-0 on odd ranks, and on all at every 26th) and on single ranks elsewhere; at i % 7 == 3 ranks
// 2j and 2j+1 hold x and -x (a sum that cancels exactly); at every 5th i a float32 value exactly halfway between two
// bf16 values (low 16 bits 0x8000), rounding down or up to even.
static float bf16_grad_at(int rank, size_t i) {
    if (i % 13 == 0) return (rank % 2 || i % 26 == 0) ? -0.0f : 0.0f;
    const int pair = i % 7 == 3;
    const uint32_t h = mix32((uint32_t)i * 0x9e3779b9u ^ mix32((uint32_t)(pair ? rank / 2 : rank) + 1u));
    if (!pair && h % 11 == 0) return 0.0f;
    uint32_t bits = (uint32_t)(67 + (i * 37) % 117 + (h >> 8) % 4) << 23 | (mix32(h) & 0x7fffffu);
    if (i % 5 == 0) bits = (bits & 0xffff0000u) | 0x8000u;
    if (pair ? (uint32_t)rank % 2 : h >> 31) bits |= 0x80000000u;
    return half_float_of(bits);
}

// x rounded to bf16, as the backward writes its gradients under precision=bf16, with a guard at n.
static uint16_t *bf16_rounded(const float *x, size_t n) {
    uint16_t *h = malloc((n + 1) * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++) h[i] = half_bf16_from_f32(x[i]);
    h[n] = 0x7bad;
    return h;
}

// The test's host array where c's all-reduces want it: itself, or (on_device) a device copy.
static void *placed(void *host, size_t bytes, int on_device) {
#ifdef DDP_HAVE_CUDA
    if (on_device) {
        void *d = NULL;
        assert_int_equal(cudaMalloc(&d, bytes), cudaSuccess);
        assert_int_equal(cudaMemcpy(d, host, bytes, cudaMemcpyHostToDevice), cudaSuccess);
        return d;
    }
#endif
    (void)bytes, (void)on_device;
    return host;
}

// Back from placed(): the device copy's values into the host array, and the copy freed.
static void unplaced(void *host, void *p, size_t bytes, int on_device) {
#ifdef DDP_HAVE_CUDA
    if (on_device) {
        assert_int_equal(cudaMemcpy(host, p, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
        assert_int_equal(cudaFree(p), cudaSuccess);
    }
#endif
    (void)host, (void)p, (void)bytes, (void)on_device;
}

// 1/world is 2^-k: the bf16 input's sum then scaled equals the compressed path's sum of scaled values bit for bit
// (scaling by a power of two commutes with rounding); at other worlds the two round differently (docs/precision.md).
static int world_pow2(void) { return (g_world & (g_world - 1)) == 0; }

static void check_bits_equal(const float *got, const float *want, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof *got) != 0)
            fail_msg("%s, rank %d: x[%zu] = %a, the reference's %a (from %a)", what, g_rank, i, got[i], want[i],
                     bf16_grad_at(g_rank, i));
}

// The bf16 sum is what the average was made of: out = sum · 1/world, exactly.
static void check_wire_holds_sum(const uint16_t *wire, const float *out, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        const float avg = half_bf16_to_f32(wire[i]) * (1.0f / (float)g_world);
        if (memcmp(&avg, &out[i], sizeof avg) != 0)
            fail_msg("%s, rank %d: wire[%zu] = %#x (%a / %d) is not the sum of the average %a", what, g_rank, i,
                     wire[i], half_bf16_to_f32(wire[i]), g_world, out[i]);
    }
}

// One bf16-input all-reduce of bf16_grad_at's values on c alone (host buffers): what one among others must give.
static float *bf16_input_alone(comm *c, size_t n) {
    float *x = filled_with(n, bf16_grad_at);
    uint16_t *wire = bf16_rounded(x, n);
    int req = -1;
    assert_int_equal(comm_allreduce_avg_bf16_async(c, wire, x, n, "bf16 input alone", &req), ST_OK);
    assert_int_equal(comm_wait(c, req), ST_OK);
    free(wire);
    return x;
}

// One bf16-input all-reduce of bf16_grad_at's values on c, launched while c's mode is fp16 (a bf16 request keeps
// bf16 whatever the mode), against the compressed path's on the same comm and memory: bit for bit (a power-of-two
// world; world_pow2); within the bound of docs/parallelism.md around the exact float32 mean (an independent
// reference: both paths share the transport's bf16 sum); mostly different from that mean (the values really went as
// bf16); identical on every rank; wire holding the bf16 sum (mpi's staging sums a host copy: the device's wire stays
// as it was); nothing written past n.
static void check_bf16_input(comm *c, int on_device, size_t n, const char *what) {
    float *x = filled_with(n, bf16_grad_at), *out = filled_with(n, bf16_grad_at);
    uint16_t *wire = bf16_rounded(x, n), *wire0 = bf16_rounded(x, n);
    float *dx = placed(x, (n + 1) * sizeof *x, on_device), *dout = placed(out, (n + 1) * sizeof *out, on_device);
    uint16_t *dwire = placed(wire, (n + 1) * sizeof *wire, on_device);
    const int mode = comm_get_compress(c);
    int req = -1;
    assert_int_equal(comm_set_compress(c, COMM_COMPRESS_FP16), ST_OK);
    assert_int_equal(comm_allreduce_avg_bf16_async(c, dwire, dout, n, what, &req), ST_OK);
    assert_int_equal(comm_wait(c, req), ST_OK);
    assert_int_equal(comm_set_compress(c, COMM_COMPRESS_BF16), ST_OK);
    assert_int_equal(comm_allreduce_avg_async(c, dx, n, what, &req), ST_OK);
    assert_int_equal(comm_wait(c, req), ST_OK);
    assert_int_equal(comm_set_compress(c, mode), ST_OK);
    unplaced(x, dx, (n + 1) * sizeof *x, on_device);
    unplaced(out, dout, (n + 1) * sizeof *out, on_device);
    unplaced(wire, dwire, (n + 1) * sizeof *wire, on_device);
    if (world_pow2()) check_bits_equal(out, x, n, what);
    const size_t differ = check_within_bound(COMM_COMPRESS_BF16, out, n, bf16_grad_at);
    if (n >= 1001 && differ < n / 2)
        fail_msg("%s: only %zu of %zu values differ from the float32 mean", what, differ, n);
    if (on_device && strcmp(comm_backend_name(c), "mpi") == 0) assert_memory_equal(wire, wire0, n * sizeof *wire);
    else check_wire_holds_sum(wire, out, n, what);
    assert_true(out[n] == -12345.0f && x[n] == -12345.0f);
    assert_int_equal(wire[n], wire0[n]);
    check_identical_on_ranks(out, n);
    free(x), free(out), free(wire), free(wire0);
}

static void test_bf16_input_matches_compressed(void **state) {
    (void)state;
    const size_t sizes[] = {1, 2, 255, 1001, 65537, 300001};
    comm *hc = hier_comm(COMM_HIERARCHY_NODE, fake_nodes_for(g_world));
    assert_int_equal(comm_hierarchy(hc), g_world >= 4 ? COMM_HIERARCHY_NODE : COMM_HIERARCHY_FLAT);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        check_bf16_input(g_c, 0, sizes[k], "bf16 input flat");
        check_bf16_input(hc, 0, sizes[k], "bf16 input by node");
    }
    comm_destroy(hc);
}

// bf16-input all-reduces in flight among float32 ones, flat and by node: launched in one order with progress in
// between and a blocking all-reduce among them, waited in each rank's own order (by node, every stage must still
// start in launch order on every rank, or this deadlocks or mixes buckets up). Each bf16 one gets what it gets
// alone, bit for bit, with its sum left in its wire; each float32 one its mean.
static void test_bf16_input_in_flight_with_float32(void **state) {
    (void)state;
    enum { K = 8 };
    const size_t sizes[K] = {1001, 5, 65537, 1, 4096, 250000, 17, 3000};
    comm *hc = hier_comm(COMM_HIERARCHY_NODE, fake_nodes_for(g_world));
    comm *comms[2] = {g_c, hc};
    for (int h = 0; h < 2; h++) {
        comm *c = comms[h];
        float *x[K];
        uint16_t *wire[K] = {NULL};
        int req[K];
        for (int k = 0; k < K; k++) {
            char label[32];
            snprintf(label, sizeof label, "%s bucket %d", k % 2 ? "fp32" : "bf16", k);
            if (k % 2) {
                x[k] = filled(sizes[k]);
                assert_int_equal(comm_allreduce_avg_async(c, x[k], sizes[k], label, &req[k]), ST_OK);
            } else {
                float *g = filled_with(sizes[k], bf16_grad_at);
                wire[k] = bf16_rounded(g, sizes[k]);
                x[k] = g;  // its values are overwritten by the average (the guard stays)
                assert_int_equal(comm_allreduce_avg_bf16_async(c, wire[k], x[k], sizes[k], label, &req[k]), ST_OK);
            }
            if (k % 3 == g_rank % 3) assert_int_equal(comm_progress(c), ST_OK);
            if (k == 4) {
                float s[5] = {1, 2, 3, 4, 5};
                assert_int_equal(comm_allreduce_avg(c, s, 5, "blocking among buckets"), ST_OK);
                for (int i = 0; i < 5; i++) assert_true(s[i] == (float)(i + 1));
            }
        }
        for (int j = 0; j < K; j++) {  // strides 3 and 5 are coprime with K
            const int k = (g_rank * 3 + j * (g_rank % 2 ? 3 : 5)) % K;
            assert_int_equal(comm_wait(c, req[k]), ST_OK);
        }
        assert_int_equal(comm_outstanding(c), 0);
        for (int k = 0; k < K; k++) {
            if (k % 2) {
                check_mean(x[k], sizes[k]);
            } else {
                float *ref = bf16_input_alone(c, sizes[k]);
                check_bits_equal(x[k], ref, sizes[k], "bf16 input in flight");
                check_wire_holds_sum(wire[k], x[k], sizes[k], "bf16 input in flight");
                assert_true(x[k][sizes[k]] == -12345.0f);
                assert_int_equal(wire[k][sizes[k]], 0x7bad);
                free(ref);
            }
            free(x[k]), free(wire[k]);
        }
    }
    comm_destroy(hc);
}

// Nothing to reduce is done at once (NULL buffers are fine); a NULL wire or output with values is an error, not a
// crash; a comm without a 16-bit transport (no backend started) and a stopped one refuse it.
static void test_bf16_input_edges(void **state) {
    (void)state;
    int req = -1, done = 0;
    assert_int_equal(comm_allreduce_avg_bf16_async(g_c, NULL, NULL, 0, "empty bf16", &req), ST_OK);
    assert_true(req >= 0 && req < COMM_MAX_REQS);
    assert_int_equal(comm_test(g_c, req, &done), ST_OK);
    assert_int_equal(done, 1);
    assert_int_equal(comm_wait(g_c, req), ST_OK);
    uint16_t w[3] = {0x3f80, 0x4000, 0xc040};
    float o[3] = {0};
    assert_int_equal(comm_allreduce_avg_bf16_async(g_c, NULL, o, 3, "null wire", &req), ST_RUNTIME);
    assert_int_equal(req, -1);
    assert_non_null(strstr(err_msg(), "'null wire' of 3 bf16 values from a NULL buffer"));
    err_clear();
    assert_int_equal(comm_allreduce_avg_bf16_async(g_c, w, NULL, 3, "null out", &req), ST_RUNTIME);
    assert_int_equal(req, -1);
    assert_non_null(strstr(err_msg(), "'null out' of 3 values on a NULL buffer"));
    err_clear();
    assert_int_equal(comm_outstanding(g_c), 0);
    comm *oc = NULL;
    assert_int_equal(comm_open(&oc, 30.0), ST_OK);
    assert_int_equal(comm_allreduce_avg_bf16_async(oc, w, o, 3, "no backend", &req), ST_INPUT);
    assert_int_equal(req, -1);
    assert_non_null(strstr(err_msg(), "cannot send 16-bit gradients (all-reduce 'no backend'"));
    err_clear();
    comm_destroy(oc);
    comm *sc = NULL;
    assert_int_equal(comm_create(&sc, "mpi", 30.0), ST_OK);
    comm_stop(sc);
    assert_int_equal(comm_allreduce_avg_bf16_async(sc, w, o, 3, "after stop", &req), ST_COMM);
    assert_int_equal(req, -1);
    err_clear();
    comm_destroy(sc);
    // The inputs are untouched by the refusals.
    assert_true(w[0] == 0x3f80 && w[1] == 0x4000 && w[2] == 0xc040 && o[0] == 0.0f);
}

#ifdef DDP_HAVE_CUDA
// On device buffers: mpi's staged path (2n bytes down, summed in the staging buffer, decoded in place from its end,
// n floats up), flat and by node, and nccl's (summed in place on the caller's buffer, scaled by a kernel into the
// output), each checked as on the host against its own compressed path on the same memory. Skipped on every rank
// without a usable GPU on each; nccl's part needs a GPU per rank.
static void test_bf16_input_on_device(void **state) {
    (void)state;
    const int gpu_per_rank = cuda_on_every_rank_or_skip();
    const size_t sizes[] = {1, 255, 65537, 300001};
    comm *mc = NULL;
    assert_int_equal(comm_create(&mc, "mpi", 30.0), ST_OK);
    assert_int_equal(comm_bind_stream(mc, NULL, 1), ST_OK);
    comm *hc = hier_comm(COMM_HIERARCHY_NODE, fake_nodes_for(g_world));
    assert_int_equal(comm_bind_stream(hc, NULL, 1), ST_OK);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        check_bf16_input(mc, 1, sizes[k], "bf16 input, mpi staged flat");
        check_bf16_input(hc, 1, sizes[k], "bf16 input, mpi staged by node");
    }
    comm_destroy(mc), comm_destroy(hc);
    if (!gpu_per_rank) skip();
    comm *nc = NULL;
    assert_int_equal(comm_create(&nc, "nccl", 30.0), ST_OK);  // (sets the device: the buffers are made after)
    assert_int_equal(comm_bind_stream(nc, NULL, 1), ST_OK);
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) check_bf16_input(nc, 1, sizes[k], "bf16 input, nccl");
    comm_destroy(nc);
}
#endif

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
        cmocka_unit_test_setup_teardown(test_half_conversions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compress_allreduce_within_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compress_fp16_beyond_half_range, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compress_blocking_stays_fp32, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hierarchy_modes_and_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hierarchy_matches_flat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hierarchy_any_wait_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hierarchy_compressed_within_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lanes_any_order_across_lanes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bf16_input_matches_compressed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bf16_input_in_flight_with_float32, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bf16_input_edges, setup, teardown),
#ifdef DDP_HAVE_CUDA
        cmocka_unit_test_setup_teardown(test_nccl_compress_matches_cpu, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bf16_input_on_device, setup, teardown),
#endif
    };
    int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
    MPI_Finalize();
    return failed;
}
