// test_loader.c — the streaming loader (src/loader.h) over a folder of PNGs written here: batches in sequence
// order, identical for any number of workers and any prefetch depth, a partial last batch, a sequence restarted
// while workers are busy, training draws that depend on (seed, epoch, index) only, a bad image's error (naming
// it) and, with skip_bad, its deterministic replacement and the count.
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "common.h"
#include "loader.h"

#define N_IMG 40
#define SIDE 12

static char g_root[256];

static void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = (uint8_t)v; }

// A gray 8-bit PNG of SIDE x SIDE whose pixels depend on `seed`.
static void write_png(const char *path, int seed) {
    uint8_t raw[SIDE * (SIDE + 1)];
    for (int y = 0; y < SIDE; y++) {
        raw[y * (SIDE + 1)] = 0;
        for (int x = 0; x < SIDE; x++) raw[y * (SIDE + 1) + 1 + x] = (uint8_t)(seed * 37 + x * 11 + y * 5);
    }
    uLongf zn = compressBound(sizeof raw);
    uint8_t z[512];
    assert_true(zn <= sizeof z);
    assert_int_equal(compress(z, &zn, raw, sizeof raw), Z_OK);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    fwrite(sig, 1, 8, f);
    uint8_t ihdr[4 + 4 + 13 + 4];
    put32(ihdr, 13);
    memcpy(ihdr + 4, "IHDR", 4);
    put32(ihdr + 8, SIDE), put32(ihdr + 12, SIDE);
    ihdr[16] = 8, ihdr[17] = 0, ihdr[18] = 0, ihdr[19] = 0, ihdr[20] = 0;
    put32(ihdr + 21, (uint32_t)crc32(0, ihdr + 4, 17));
    fwrite(ihdr, 1, sizeof ihdr, f);
    uint8_t hd[8];
    put32(hd, (uint32_t)zn);
    memcpy(hd + 4, "IDAT", 4);
    fwrite(hd, 1, 8, f);
    fwrite(z, 1, zn, f);
    uint8_t crc[4];
    put32(crc, (uint32_t)crc32(crc32(0, hd + 4, 4), z, (uInt)zn));
    fwrite(crc, 1, 4, f);
    static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
    fwrite(iend, 1, 12, f);
    fclose(f);
}

static int setup(void **state) {
    (void)state;
    snprintf(g_root, sizeof g_root, "/tmp/test_loader.XXXXXX");
    assert_non_null(mkdtemp(g_root));
    char p[512];
    for (int c = 0; c < 2; c++) {
        snprintf(p, sizeof p, "%s/k%d", g_root, c);
        mkdir(p, 0755);
        for (int i = 0; i < N_IMG / 2; i++) {
            snprintf(p, sizeof p, "%s/k%d/%02d.png", g_root, c, i);
            write_png(p, c * 100 + i);
        }
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

static loader_opts opts(const image_set *s, int workers, int prefetch, int batch) {
    loader_opts o = {.set = s, .workers = workers, .prefetch = prefetch, .batch = batch, .max_bad = 3,
                     .max_file_bytes = 1 << 20};
    o.tf = (image_tf){.channels = 1, .out_h = SIDE, .out_w = SIDE, .max_pixels = 1 << 20, .flip = 1, .crop_pad = 2,
                      .seed = 9, .rrc_scale = {0.08, 1}, .rrc_ratio = {0.75, 4.0 / 3}};
    return o;
}

// Every batch of the sequence, concatenated (x then labels per batch).
static uint8_t *run_all(loader *l, int training, int64_t epoch, const int32_t *idx, int n, int batch, size_t *bytes) {
    assert_int_equal(loader_start(l, training, epoch, idx, n, batch), ST_OK);
    const size_t per = SIDE * SIDE;
    uint8_t *out = malloc((size_t)n * (per + 4));
    size_t at = 0;
    for (int done = 0; done < n;) {
        const uint8_t *x;
        const int32_t *y;
        int got = 0;
        assert_int_equal(loader_next(l, &x, &y, &got), ST_OK);
        assert_int_equal(got, n - done < batch ? n - done : batch);
        memcpy(out + at, x, (size_t)got * per), at += (size_t)got * per;
        memcpy(out + at, y, (size_t)got * 4), at += (size_t)got * 4;
        done += got;
    }
    *bytes = at;
    return out;
}

static void test_same_for_any_workers(void **state) {
    (void)state;
    image_set s;
    assert_int_equal(image_set_folder(g_root, NULL, 0, &s), ST_OK);
    int32_t idx[N_IMG];
    for (int i = 0; i < N_IMG; i++) idx[i] = (i * 7) % N_IMG;  // a permutation
    uint8_t *ref = NULL;
    size_t ref_n = 0;
    const int shapes[4][2] = {{1, 1}, {2, 1}, {4, 3}, {3, 6}};
    for (int k = 0; k < 4; k++) {
        loader_opts o = opts(&s, shapes[k][0], shapes[k][1], 6);
        loader *l = NULL;
        assert_int_equal(loader_create(&l, &o), ST_OK);
        size_t n = 0;
        uint8_t *all = run_all(l, 1, 3, idx, N_IMG, 6, &n);  // 6 batches of 6 and one of 4
        if (!ref) ref = all, ref_n = n;
        else {
            assert_int_equal(n, ref_n);
            assert_memory_equal(all, ref, n);
            free(all);
        }
        loader_destroy(l);
    }
    // Labels follow the samples: sample idx[0] = 0 is class k0, idx[3] = 21 is class k1.
    const int32_t *y0 = (const int32_t *)(ref + 6 * SIDE * SIDE);
    assert_int_equal(y0[0], 0);
    assert_int_equal(y0[3], 1);
    free(ref);
    image_set_free(&s);
}

// A sample's training bytes depend on (seed, epoch, index), not on its place in the sequence; other epochs draw
// otherwise; evaluation has no draws.
static void test_draws(void **state) {
    (void)state;
    image_set s;
    assert_int_equal(image_set_folder(g_root, NULL, 0, &s), ST_OK);
    loader_opts o = opts(&s, 2, 2, 4);
    loader *l = NULL;
    assert_int_equal(loader_create(&l, &o), ST_OK);
    int32_t a[4] = {5, 6, 7, 8}, b[4] = {8, 1, 2, 5};
    size_t n;
    uint8_t *ra = run_all(l, 1, 0, a, 4, 4, &n), *rb = run_all(l, 1, 0, b, 4, 4, &n);
    const size_t per = SIDE * SIDE;
    assert_memory_equal(ra + 0 * per, rb + 3 * per, per);  // sample 5
    assert_memory_equal(ra + 3 * per, rb + 0 * per, per);  // sample 8
    uint8_t *rc = run_all(l, 1, 1, a, 4, 4, &n);
    assert_true(memcmp(ra, rc, 4 * per) != 0);  // epoch 1 draws differently (4 samples: not all equal by chance)
    uint8_t *e0 = run_all(l, 0, 0, a, 4, 4, &n), *e1 = run_all(l, 0, 7, a, 4, 4, &n);
    assert_memory_equal(e0, e1, 4 * per);
    free(ra), free(rb), free(rc), free(e0), free(e1);
    loader_destroy(l);
    image_set_free(&s);
}

// loader_start while the workers are filling the ring: the new sequence comes out whole and right.
static void test_restart(void **state) {
    (void)state;
    image_set s;
    assert_int_equal(image_set_folder(g_root, NULL, 0, &s), ST_OK);
    loader_opts o = opts(&s, 3, 4, 5);
    loader *l = NULL;
    assert_int_equal(loader_create(&l, &o), ST_OK);
    int32_t idx[N_IMG];
    for (int i = 0; i < N_IMG; i++) idx[i] = N_IMG - 1 - i;
    size_t n_ref;
    uint8_t *ref = run_all(l, 1, 2, idx, N_IMG, 5, &n_ref);
    for (int k = 0; k < 5; k++) {
        assert_int_equal(loader_start(l, 1, 9, idx, N_IMG, 5), ST_OK);  // abandoned at once or after a batch
        if (k & 1) {
            const uint8_t *x;
            const int32_t *y;
            int got;
            assert_int_equal(loader_next(l, &x, &y, &got), ST_OK);
        }
        size_t n;
        uint8_t *again = run_all(l, 1, 2, idx, N_IMG, 5, &n);
        assert_int_equal(n, n_ref);
        assert_memory_equal(again, ref, n);
        free(again);
    }
    free(ref);
    loader_destroy(l);
    image_set_free(&s);
}

// A bad image: an error naming it; with skip_bad the next good sample instead, counted once however often it
// comes; more than max_bad distinct bad images is an error.
static void test_bad_images(void **state) {
    (void)state;
    char bad1[512], bad2[512];
    snprintf(bad1, sizeof bad1, "%s/k0/03.png", g_root);
    snprintf(bad2, sizeof bad2, "%s/k0/04.png", g_root);
    FILE *f = fopen(bad1, "wb");
    fputs("not a png", f);
    fclose(f);
    image_set s;
    assert_int_equal(image_set_folder(g_root, NULL, 0, &s), ST_OK);
    int32_t idx[6] = {0, 3, 1, 3, 2, 4};
    loader_opts o = opts(&s, 2, 1, 3);
    loader *l = NULL;
    assert_int_equal(loader_create(&l, &o), ST_OK);
    assert_int_equal(loader_start(l, 0, 0, idx, 6, 3), ST_OK);
    const uint8_t *x;
    const int32_t *y;
    int got;
    assert_int_equal(loader_next(l, &x, &y, &got), ST_INPUT);
    assert_non_null(strstr(err_msg(), "03.png"));
    err_clear();
    loader_destroy(l);

    o.skip_bad = 1;
    assert_int_equal(loader_create(&l, &o), ST_OK);
    size_t n;
    uint8_t *all = run_all(l, 0, 0, idx, 6, 3, &n);
    const size_t per = SIDE * SIDE;
    // sample 3 is replaced by sample 4, whose bytes are batch 2's last sample (idx[5] = 4)
    assert_memory_equal(all + 1 * per, all + (3 * per + 3 * 4) + 2 * per, per);
    assert_int_equal(loader_bad_count(l), 1);
    free(all);
    loader_destroy(l);

    f = fopen(bad2, "wb");
    fputs("also not a png", f);
    fclose(f);
    o.max_bad = 1;
    assert_int_equal(loader_create(&l, &o), ST_OK);
    assert_int_equal(loader_start(l, 0, 0, idx, 6, 3), ST_OK);
    int st = loader_next(l, &x, &y, &got);
    if (st == ST_OK) st = loader_next(l, &x, &y, &got);
    assert_int_equal(st, ST_INPUT);
    assert_non_null(strstr(err_msg(), "max_bad=1"));
    err_clear();
    loader_destroy(l);
    image_set_free(&s);
    write_png(bad1, 3), write_png(bad2, 4);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_for_any_workers),
        cmocka_unit_test(test_draws),
        cmocka_unit_test(test_restart),
        cmocka_unit_test(test_bad_images),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
