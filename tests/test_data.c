// test_data.c — IDX (raw and gzip) and CIFAR-10 loaders on good and bad files, the real Fashion-MNIST files when
// installed, and the sharding sampler (one permutation per (seed, epoch), disjoint equal shards, eval ranges).
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "data.h"
#include "test_util.h"

// An IDX file from a header and a payload of `payload` bytes (value i % 251); extra appended bytes, gzip optional.
static const char *write_idx(const char *name, uint32_t magic, const uint32_t *dims, int rank, long payload,
                             int extra, int gz, int label_mod) {
    size_t n = 4 + 4 * (size_t)rank + (size_t)(payload + extra);
    unsigned char *b = calloc(n, 1);
    assert_non_null(b);
    for (int k = 0; k < 4; k++) b[k] = (unsigned char)(magic >> (24 - 8 * k));
    for (int i = 0; i < rank; i++)
        for (int k = 0; k < 4; k++) b[4 + 4 * i + k] = (unsigned char)(dims[i] >> (24 - 8 * k));
    for (long i = 0; i < payload + extra; i++) b[4 + 4 * rank + i] = (unsigned char)(label_mod ? (i * 3) % label_mod : i % 251);
    // tu_path rotates 8 buffers; these paths live for the whole test, so keep our own copies.
    static char paths[64][512];
    static int next;
    char *p = paths[next++ % 64];
    snprintf(p, sizeof paths[0], "%s", tu_path(name));
    assert_int_equal(tu_write_file(p, b, n, gz), 0);
    free(b);
    return p;
}

static void expect_idx_error(const char *img, const char *lab, const char *needle_path, const char *needle) {
    dataset d;
    err_clear();
    int st = data_load_idx(img, lab, 10, 0, &d);
    if (st != ST_INPUT || !strstr(err_msg(), needle_path) || !strstr(err_msg(), needle))
        fail_msg("status %d, message '%s' (want ST_INPUT naming '%s' and '%s')", st, err_msg(), needle_path, needle);
    assert_null(d.images);
    assert_int_equal(d.n, 0);
    err_clear();
}

static void test_idx_good_raw_and_gzip(void **state) {
    (void)state;
    for (int gz = 0; gz <= 1; gz++) {
        const uint32_t idims[3] = {5, 3, 4}, ldims[1] = {5};
        const char *img = write_idx(gz ? "g-img.gz" : "g-img", 0x803, idims, 3, 60, 0, gz, 0);
        const char *lab = write_idx(gz ? "g-lab.gz" : "g-lab", 0x801, ldims, 1, 5, 0, gz, 10);
        dataset d;
        assert_int_equal(data_load_idx(img, lab, 10, 0, &d), ST_OK);
        assert_int_equal(d.n, 5);
        assert_int_equal(d.c, 1);
        assert_int_equal(d.h, 3);
        assert_int_equal(d.w, 4);
        for (int i = 0; i < 60; i++) assert_int_equal(d.images[i], i % 251);
        for (int i = 0; i < 5; i++) assert_int_equal(d.labels[i], (i * 3) % 10);
        data_free(&d);
        assert_int_equal(data_load_idx(img, lab, 10, 2, &d), ST_OK);  // limit
        assert_int_equal(d.n, 2);
        data_free(&d);
    }
}

static void test_idx_bad_files(void **state) {
    (void)state;
    const uint32_t idims[3] = {5, 3, 4}, ldims[1] = {5}, ldims4[1] = {4};
    const char *img = write_idx("img", 0x803, idims, 3, 60, 0, 0, 0);
    const char *lab = write_idx("lab", 0x801, ldims, 1, 5, 0, 0, 10);
    expect_idx_error(tu_path("missing"), lab, "missing", "cannot open");
    expect_idx_error(write_idx("bad-magic", 0x903, idims, 3, 60, 0, 0, 0), lab, "bad-magic", "magic");
    expect_idx_error(write_idx("f32", 0xD03, idims, 3, 60, 0, 0, 0), lab, "f32", "magic");
    expect_idx_error(img, img, "img", "magic");  // images where labels belong
    expect_idx_error(write_idx("trunc", 0x803, idims, 3, 59, 0, 0, 0), lab, "trunc", "truncated");
    expect_idx_error(write_idx("trail", 0x803, idims, 3, 60, 3, 0, 0), lab, "trail", "trailing");
    expect_idx_error(write_idx("trunc-gz", 0x803, idims, 3, 59, 0, 1, 0), lab, "trunc-gz", "truncated");
    expect_idx_error(img, write_idx("lab4", 0x801, ldims4, 1, 4, 0, 0, 10), "lab4", "4 labels");
    expect_idx_error(img, write_idx("lab-big", 0x801, ldims, 1, 5, 0, 0, 13), "lab-big", "label 12");
    const uint32_t zero[3] = {0, 3, 4};
    expect_idx_error(write_idx("zero", 0x803, zero, 3, 0, 0, 0, 0), lab, "zero", "dimension 0");
    const uint32_t huge[3] = {0xFFFFFFFF, 0xFFFF, 0xFFFF};
    expect_idx_error(write_idx("huge", 0x803, huge, 3, 16, 0, 0, 0), lab, "huge", "too large");
    expect_idx_error(write_idx("short", 0x803, idims, 0, 0, 0, 0, 0), lab, "short", "header");

    // A gzip stream cut in the middle, and one with a corrupted body.
    const char *gz = write_idx("full.gz", 0x803, idims, 3, 60, 0, 1, 0);
    FILE *f = fopen(gz, "rb");
    assert_non_null(f);
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_true(n > 30);
    const char *cut = tu_path("cut.gz");
    assert_int_equal(tu_write_file(cut, buf, n - 10, 0), 0);
    expect_idx_error(cut, lab, "cut.gz", "gzip");
    buf[n / 2] ^= 0xFF, buf[n / 2 + 1] ^= 0x55;
    const char *bad = tu_path("bad.gz");
    assert_int_equal(tu_write_file(bad, buf, n, 0), 0);
    expect_idx_error(bad, lab, "bad.gz", "gzip");
    // An empty file.
    const char *empty = tu_path("empty");
    assert_int_equal(tu_write_file(empty, "", 0, 0), 0);
    expect_idx_error(empty, lab, "empty", "too short");
}

static void test_real_fashion_mnist(void **state) {
    (void)state;
    const char *dir = "/usr/share/datasets/fashion-mnist";
    char img[256], lab[256];
    snprintf(img, sizeof img, "%s/t10k-images-idx3-ubyte.gz", dir);
    snprintf(lab, sizeof lab, "%s/t10k-labels-idx1-ubyte.gz", dir);
    FILE *f = fopen(img, "rb");
    if (!f) skip();
    fclose(f);
    dataset d;
    assert_int_equal(data_load_idx(img, lab, 10, 0, &d), ST_OK);
    assert_int_equal(d.n, 10000);
    assert_int_equal(d.h, 28);
    assert_int_equal(d.w, 28);
    int hist[10] = {0};
    for (int i = 0; i < d.n; i++) hist[d.labels[i]]++;
    for (int k = 0; k < 10; k++) assert_int_equal(hist[k], 1000);  // the test set is balanced
    data_free(&d);
}

static void test_cifar10(void **state) {
    (void)state;
    enum { REC = 3073 };
    unsigned char *b = calloc(3 * REC, 1);
    assert_non_null(b);
    for (int r = 0; r < 3; r++) {
        b[r * REC] = (unsigned char)(r * 3);
        for (int i = 0; i < 3072; i++) b[r * REC + 1 + i] = (unsigned char)((i + r) % 256);
    }
    const char *p1 = tu_path("c1.bin"), *p2 = tu_path("c2.bin");
    assert_int_equal(tu_write_file(p1, b, 2 * REC, 0), 0);
    assert_int_equal(tu_write_file(p2, b + 2 * REC, REC, 0), 0);
    const char *paths[2] = {p1, p2};
    dataset d;
    assert_int_equal(data_load_cifar10(paths, 2, 0, &d), ST_OK);
    assert_int_equal(d.n, 3);
    assert_int_equal(d.c, 3);
    assert_int_equal(d.h, 32);
    assert_int_equal(d.labels[2], 6);
    assert_int_equal(d.images[2 * 3072 + 5], 7);
    data_free(&d);

    const char *odd = tu_path("odd.bin");
    assert_int_equal(tu_write_file(odd, b, REC + 7, 0), 0);
    const char *bad_paths[2] = {p1, odd};
    err_clear();
    assert_int_equal(data_load_cifar10(bad_paths, 2, 0, &d), ST_INPUT);
    assert_non_null(strstr(err_msg(), "odd.bin"));
    b[0] = 10;
    const char *lab = tu_path("lab.bin");
    assert_int_equal(tu_write_file(lab, b, REC, 0), 0);
    err_clear();
    assert_int_equal(data_load_cifar10(&lab, 1, 0, &d), ST_INPUT);
    assert_non_null(strstr(err_msg(), "label 10"));
    err_clear();
    free(b);
}

// --predict's images: an IDX images file alone (raw or gzip) or a CIFAR-10 batch, told apart by the IDX magic;
// labels all 0; a labels file or a torn record is refused naming the file.
static void test_images_only(void **state) {
    (void)state;
    const uint32_t dims[3] = {3, 5, 4};
    for (int gz = 0; gz <= 1; gz++) {
        const char *p = write_idx(gz ? "only.idx.gz" : "only.idx", 0x803, dims, 3, 60, 0, gz, 0);
        dataset d;
        assert_int_equal(data_load_images(p, &d), ST_OK);
        assert_int_equal(d.n, 3);
        assert_int_equal(d.c, 1);
        assert_int_equal(d.h, 5);
        assert_int_equal(d.w, 4);
        assert_int_equal(d.images[59], 59);
        assert_int_equal(d.labels[2], 0);
        data_free(&d);
    }
    enum { REC = 3073 };
    unsigned char *b = calloc(2 * REC, 1);
    assert_non_null(b);
    b[0] = 7, b[REC] = 3, b[REC + 1] = 200;
    const char *c = tu_path("images.bin");
    assert_int_equal(tu_write_file(c, b, 2 * REC, 0), 0);
    dataset d;
    assert_int_equal(data_load_images(c, &d), ST_OK);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.c, 3);
    assert_int_equal(d.images[3072], 200);
    assert_int_equal(d.labels[0], 0);
    data_free(&d);
    assert_int_equal(tu_write_file(c, b, REC + 5, 0), 0);
    err_clear();
    assert_int_equal(data_load_images(c, &d), ST_INPUT);
    assert_non_null(strstr(err_msg(), "images.bin"));
    free(b);
    const uint32_t ldims[1] = {3};
    const char *lab = write_idx("labels.idx", 0x801, ldims, 1, 3, 0, 0, 10);
    err_clear();
    assert_int_equal(data_load_images(lab, &d), ST_INPUT);
    assert_non_null(strstr(err_msg(), "bad IDX magic"));
    err_clear();
}

static void test_permutation_and_shards(void **state) {
    (void)state;
    enum { N = 1000 };
    static int32_t a[N], b[N], c[N];
    data_permutation(42, 0, N, a);
    data_permutation(42, 0, N, b);
    data_permutation(42, 1, N, c);
    assert_memory_equal(a, b, sizeof a);     // same (seed, epoch): identical on every rank
    assert_memory_not_equal(a, c, sizeof a); // new epoch: new order
    static int seen[N];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < N; i++) seen[a[i]]++;
    for (int i = 0; i < N; i++) assert_int_equal(seen[i], 1);  // a permutation

    // 4 ranks x batch 32: 7 steps, every index at most once, the 104 leftovers dropped.
    int B = 32, W = 4;
    int steps = data_steps_per_epoch(N, B, W);
    assert_int_equal(steps, 7);
    memset(seen, 0, sizeof seen);
    for (int s = 0; s < steps; s++)
        for (int r = 0; r < W; r++) {
            const int32_t *idx = data_shard_batch(a, s, B, W, r);
            // rank r's slice of the global batch s: contiguous in the permutation
            assert_ptr_equal(idx, a + s * B * W + r * B);
            for (int i = 0; i < B; i++) seen[idx[i]]++;
        }
    int used = 0;
    for (int i = 0; i < N; i++) {
        assert_true(seen[i] <= 1);
        used += seen[i];
    }
    assert_int_equal(used, steps * B * W);

    // Eval ranges cover [0, n) exactly once.
    for (int w = 1; w <= 7; w++) {
        int next = 0;
        for (int r = 0; r < w; r++) {
            int lo, hi;
            data_eval_range(1003, w, r, &lo, &hi);
            assert_int_equal(lo, next);
            assert_true(hi - lo == 1003 / w || hi - lo == 1003 / w + 1);
            next = hi;
        }
        assert_int_equal(next, 1003);
    }
}

// Bounded input: FIFOs, devices and directories are refused before any read (and without blocking); a file
// whose header promises more (or less) than it holds is refused from the header, before its body is read.
static void test_unbounded_inputs_refused(void **state) {
    (void)state;
    const uint32_t ldims[1] = {5};
    const char *lab = write_idx("u-lab", 0x801, ldims, 1, 5, 0, 0, 10);
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s", tu_path("u.fifo"));
    assert_int_equal(mkfifo(fifo, 0644), 0);
    const char *paths[] = {fifo, "/dev/zero", tu_tmpdir()};
    const char *kinds[] = {"a FIFO", "a character device", "a directory"};
    for (int i = 0; i < 3; i++) {
        double t0 = now_s();
        expect_idx_error(paths[i], lab, paths[i], kinds[i]);
        assert_true(now_s() - t0 < 1.0);
        const char *cifar[1] = {paths[i]};
        dataset d;
        assert_int_equal(data_load_cifar10(cifar, 1, 0, &d), ST_INPUT);
        assert_non_null(strstr(err_msg(), kinds[i]));
        err_clear();
    }
    unlink(fifo);
    // A raw file grown to 2 GiB (sparse) behind a 5-image header: refused from its size, not read.
    const uint32_t idims[3] = {5, 3, 4};
    const char *img = write_idx("u-img", 0x803, idims, 3, 60, 0, 0, 0);
    assert_int_equal(truncate(img, (off_t)2 << 30), 0);
    double t0 = now_s();
    expect_idx_error(img, lab, "u-img", "trailing bytes");
    assert_true(now_s() - t0 < 1.0);
    unlink(img);
    // A small gzip file whose header promises 4 GB: more than its compressed bytes can hold.
    const uint32_t huge[3] = {1000000, 64, 64};
    img = write_idx("u-huge.gz", 0x803, huge, 3, 100, 0, 1, 0);
    t0 = now_s();
    expect_idx_error(img, lab, "u-huge.gz", "more than");
    assert_true(now_s() - t0 < 1.0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idx_good_raw_and_gzip), cmocka_unit_test(test_idx_bad_files),
        cmocka_unit_test(test_real_fashion_mnist),    cmocka_unit_test(test_cifar10),
        cmocka_unit_test(test_permutation_and_shards), cmocka_unit_test(test_unbounded_inputs_refused),
        cmocka_unit_test(test_images_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
