// test_image_shards.c — WebDataset-style tar shards (image_set_shards): brace patterns (padding, one shard,
// downward and malformed ranges, lists), grouping of members into samples by key, labels, data offsets read
// back byte for byte through image_set_read, ustar prefixes, GNU long names, pax path= and size=, every refusal
// at scan time (with the shard and member named), a shard truncated after the scan, and the digest.
// The tars are written here byte by byte (no tar program), so every case is exact and the same on every host.
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "image_set.h"
#include "test_util.h"

// ---------------------------------------------------------------------------------------------------------
// Paths

// A path from a format, in one of 16 rotating buffers.
static const char *P(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *P(const char *fmt, ...) {
    static char buf[16][8192];
    static int next;
    char *p = buf[next++ % 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p, sizeof buf[0], fmt, ap);
    va_end(ap);
    return p;
}

// A fresh directory under the test's temp directory.
static const char *fresh(const char *name) {
    static char buf[32][4096];
    static int next;
    char *d = buf[next++ % 32];
    snprintf(d, sizeof buf[0], "%s/%s", tu_tmpdir(), name);
    if (mkdir(d, 0755) != 0 && errno != EEXIST) fail_msg("mkdir %s: %s", d, strerror(errno));
    return d;
}

static void put_text(const char *path, const char *text) {
    assert_int_equal(tu_write_file(path, text, strlen(text), 0), 0);
}

// ---------------------------------------------------------------------------------------------------------
// A tar writer: ustar headers (or GNU-magic ones), GNU 'L' long names, pax 'x' records

typedef struct tarw {
    unsigned char *b;
    size_t n, cap;
} tarw;

static void tw_bytes(tarw *t, const void *p, size_t n) {
    if (t->n + n > t->cap) {
        t->cap = (t->n + n) * 2 + 4096;
        t->b = realloc(t->b, t->cap);
        assert_non_null(t->b);
    }
    if (n) memcpy(t->b + t->n, p, n);
    t->n += n;
}

static void tw_pad(tarw *t) {
    static const unsigned char zero[512];
    if (t->n % 512) tw_bytes(t, zero, 512 - t->n % 512);
}

enum { TW_USTAR = 0, TW_GNU_MAGIC = 1, TW_BAD_SUM = 2 };

// One 512-byte header. name: at most 100 bytes (cut when longer, as tar does for a long name's header); prefix:
// NULL or the ustar prefix field (with TW_GNU_MAGIC, the same bytes land there as GNU's other fields would).
static void tw_head(tarw *t, const char *name, const char *prefix, char type, unsigned long long size, int flags) {
    unsigned char h[512];
    memset(h, 0, sizeof h);
    size_t nl = strlen(name);
    memcpy(h, name, nl < 100 ? nl : 100);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0001750", 8);
    memcpy(h + 116, "0001750", 8);
    char num[32];
    snprintf(num, sizeof num, "%011llo", size);
    memcpy(h + 124, num, 12);
    memcpy(h + 136, "14712345670", 12);
    h[156] = (unsigned char)type;
    if (flags & TW_GNU_MAGIC)
        memcpy(h + 257, "ustar  ", 8);
    else
        memcpy(h + 257, "ustar\0" "00", 8);
    memcpy(h + 265, "user", 4);
    memcpy(h + 297, "group", 5);
    if (prefix) memcpy(h + 345, prefix, strlen(prefix) < 155 ? strlen(prefix) : 155);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += h[i];
    if (flags & TW_BAD_SUM) sum += 1;
    snprintf(num, sizeof num, "%06o", sum);
    memcpy(h + 148, num, 7);  // six digits, NUL, and the blank left in place
    tw_bytes(t, h, sizeof h);
}

static void tw_member(tarw *t, const char *name, const void *data, size_t n) {
    tw_head(t, name, NULL, '0', n, 0);
    tw_bytes(t, data, n);
    tw_pad(t);
}

static void tw_text(tarw *t, const char *name, const char *text) { tw_member(t, name, text, strlen(text)); }

// n bytes of image-like data: (i * 13 + seed) % 251
static unsigned char *pattern_bytes(size_t n, int seed) {
    unsigned char *b = malloc(n ? n : 1);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)((i * 13 + (size_t)seed) % 251);
    return b;
}

static void tw_image(tarw *t, const char *name, size_t n, int seed) {
    unsigned char *b = pattern_bytes(n, seed);
    tw_member(t, name, b, n);
    free(b);
}

// A sample: KEY.ext (n pattern bytes) then KEY.cls holding the label.
static void tw_sample(tarw *t, const char *key, const char *ext, size_t n, int seed, int label) {
    tw_image(t, P("%s.%s", key, ext), n, seed);
    tw_text(t, P("%s.cls", key), P("%d", label));
}

// A GNU long name: an 'L' record "././@LongLink" holding the name, then the member with the name cut to 100.
static void tw_gnu_long(tarw *t, const char *name, const void *data, size_t n) {
    tw_head(t, "././@LongLink", NULL, 'L', strlen(name) + 1, TW_GNU_MAGIC);
    tw_bytes(t, name, strlen(name) + 1);
    tw_pad(t);
    tw_head(t, name, NULL, '0', n, TW_GNU_MAGIC);
    tw_bytes(t, data, n);
    tw_pad(t);
}

// A pax record "LEN key=value\n" (LEN counting itself).
static void pax_record(char *out, size_t cap, const char *key, const char *value) {
    size_t body = strlen(key) + strlen(value) + 3;  // ' ', '=', '\n'
    size_t len = body + 1;
    for (;;) {
        int digits = snprintf(NULL, 0, "%zu", len);
        if (body + (size_t)digits == len) break;
        len = body + (size_t)digits;
    }
    snprintf(out, cap, "%zu %s=%s\n", len, key, value);
}

// A pax 'x' header with the given records, then a member whose header holds hname and hsize.
static void tw_pax(tarw *t, const char *records, const char *hname, unsigned long long hsize, const void *data,
                   size_t n) {
    tw_head(t, "PaxHeaders/x", NULL, 'x', strlen(records), 0);
    tw_bytes(t, records, strlen(records));
    tw_pad(t);
    tw_head(t, hname, NULL, '0', hsize, 0);
    tw_bytes(t, data, n);
    tw_pad(t);
}

static void tw_end(tarw *t) {
    static const unsigned char zero[1024];
    tw_bytes(t, zero, sizeof zero);
}

// Writes the archive (end blocks added when end) and frees it.
static void tw_save(tarw *t, const char *path, int end) {
    if (end) tw_end(t);
    assert_int_equal(tu_write_file(path, t->b, t->n, 0), 0);
    free(t->b);
    memset(t, 0, sizeof *t);
}

// A shard of n samples "k<first + i>.png" of 100 + i bytes, labels (first + i) % classes.
static void make_shard(const char *path_in, int first, int n, int classes) {
    char path[4096];  // P()'s buffers turn over below
    snprintf(path, sizeof path, "%s", path_in);
    tarw t = {0};
    for (int i = 0; i < n; i++)
        tw_sample(&t, P("k%04d", first + i), "png", 100 + (size_t)i, first + i, (first + i) % classes);
    tw_save(&t, path, 1);
}

// ---------------------------------------------------------------------------------------------------------
// Checks

static void expect_error(const char *pattern, const char *names, int classes, const char *n1, const char *n2) {
    image_set s;
    err_clear();
    int st = image_set_shards(pattern, names, classes, &s);
    if (st != ST_INPUT || !strstr(err_msg(), n1) || (n2 && !strstr(err_msg(), n2)))
        fail_msg("pattern '%s': status %d, message '%s' (want ST_INPUT naming '%s' and '%s')", pattern, st, err_msg(),
                 n1, n2 ? n2 : "");
    if (strchr(err_msg(), '\n')) fail_msg("a message of two lines: %s", err_msg());
    assert_int_equal(s.n, 0);
    assert_null(s.paths);
    assert_null(s.offsets);
    assert_null(s.shard_first);
    err_clear();
}

static void load(const char *pattern, const char *names, int classes, image_set *s) {
    err_clear();
    if (image_set_shards(pattern, names, classes, s) != ST_OK) fail_msg("pattern '%s': %s", pattern, err_msg());
}

// The shard paths of s, in order, are dir/<names[k]>.
static void expect_shards(const image_set *s, const char *dir, const char *const *names, int n) {
    if (s->n_shards != n) fail_msg("%d shards (want %d)", s->n_shards, n);
    for (int k = 0; k < n; k++) {
        assert_true(s->shard_first[k] < s->shard_first[k + 1]);
        const char *got = image_set_path(s, (int)s->shard_first[k]);
        if (strcmp(got, P("%s/%s", dir, names[k])) != 0) fail_msg("shard %d is %s (want %s/%s)", k, got, dir, names[k]);
        for (uint32_t i = s->shard_first[k]; i < s->shard_first[k + 1]; i++) {
            assert_int_equal(s->shard[i], k);
            assert_ptr_equal(image_set_path(s, (int)i), got);  // one string per shard
        }
    }
    assert_int_equal(s->shard_first[n], s->n);
}

// Sample i reads back as n pattern bytes of seed.
static void expect_bytes(const image_set *s, int i, size_t n, int seed) {
    uint8_t *buf = NULL;
    size_t cap = 0, got = 0;
    char err[512];
    if (image_set_read(s, i, 1 << 20, &buf, &cap, &got, err, sizeof err) != ST_OK) fail_msg("sample %d: %s", i, err);
    assert_int_equal(got, n);
    assert_int_equal(s->sizes[i], n);
    unsigned char *want = pattern_bytes(n, seed);
    assert_memory_equal(buf, want, n);
    free(want);
    free(buf);
}

// ---------------------------------------------------------------------------------------------------------
// Patterns

static void test_patterns(void **state) {
    (void)state;
    const char *D = fresh("patterns");
    for (int k = 0; k < 4; k++) make_shard(P("%s/s-%03d.tar", D, k), 10 * k, 2 + k, 10);
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++) make_shard(P("%s/m-%d-%d.tar", D, a, b), 100 + 10 * (3 * a + b), 1, 10);
    make_shard(P("%s/plain.tar", D), 500, 3, 10);
    image_set s;
    // Zero padding kept as written; samples in shard order, then member order.
    load(P("%s/s-{000..003}.tar", D), NULL, 10, &s);
    const char *four[] = {"s-000.tar", "s-001.tar", "s-002.tar", "s-003.tar"};
    expect_shards(&s, D, four, 4);
    assert_int_equal(s.n, 2 + 3 + 4 + 5);
    assert_int_equal(s.labels[0], 0);
    assert_int_equal(s.labels[2], 0);   // shard 1's first: k0010
    assert_int_equal(s.labels[3], 1);
    assert_int_equal(s.labels[13], 4);  // k0034
    assert_int_equal(s.classes, 10);
    assert_string_equal(s.class_names[9], "9");
    image_set_free(&s);
    // Padding from either bound (braceexpand's rule): {000..3} pads to 3 digits.
    load(P("%s/s-{000..3}.tar", D), NULL, 10, &s);
    expect_shards(&s, D, four, 4);
    image_set_free(&s);
    // One shard; a plain file name; downwards.
    load(P("%s/s-{002..002}.tar", D), NULL, 10, &s);
    expect_shards(&s, D, four + 2, 1);
    image_set_free(&s);
    load(P("%s/plain.tar", D), NULL, 10, &s);
    const char *plain[] = {"plain.tar"};
    expect_shards(&s, D, plain, 1);
    assert_int_equal(s.n, 3);
    image_set_free(&s);
    load(P("%s/s-{003..001}.tar", D), NULL, 10, &s);
    const char *down[] = {"s-003.tar", "s-002.tar", "s-001.tar"};
    expect_shards(&s, D, down, 3);
    image_set_free(&s);
    // A list of patterns; two ranges in one (the leftmost slowest).
    load(P("%s/s-{001..002}.tar,%s/plain.tar,%s/s-000.tar", D, D, D), NULL, 10, &s);
    const char *mix[] = {"s-001.tar", "s-002.tar", "plain.tar", "s-000.tar"};
    expect_shards(&s, D, mix, 4);
    image_set_free(&s);
    load(P("%s/m-{0..1}-{0..2}.tar", D), NULL, 10, &s);
    const char *two[] = {"m-0-0.tar", "m-0-1.tar", "m-0-2.tar", "m-1-0.tar", "m-1-1.tar", "m-1-2.tar"};
    expect_shards(&s, D, two, 6);
    image_set_free(&s);
    // Without a leading zero, no padding: s-0.tar does not exist.
    expect_error(P("%s/s-{0..3}.tar", D), NULL, 10, "s-0.tar", "No such file");
    // Malformed patterns.
    expect_error(P("%s/s-{000..003.tar", D), NULL, 10, "bad shard pattern", "not closed");
    expect_error(P("%s/s-{000..{001}}.tar", D), NULL, 10, "bad shard pattern", "not closed");
    expect_error(P("%s/s-000}.tar", D), NULL, 10, "bad shard pattern", "without a '{'");
    expect_error(P("%s/s-{a..c}.tar", D), NULL, 10, "bad shard pattern", "'{a..c}' is not a range");
    expect_error(P("%s/s-{000,001}.tar", D), NULL, 10, "'{000,001}' is not a range", "lists in braces");
    expect_error(P("%s/s-{..3}.tar", D), NULL, 10, "'{..3}' is not a range", NULL);
    expect_error(P("%s/s-{1..}.tar", D), NULL, 10, "'{1..}' is not a range", NULL);
    expect_error(P("%s/s-{}.tar", D), NULL, 10, "'{}' is not a range", NULL);
    expect_error(P("%s/s-{1...3}.tar", D), NULL, 10, "'{1...3}' is not a range", NULL);
    expect_error(P("%s/s-{1..2..3}.tar", D), NULL, 10, "'{1..2..3}' is not a range", NULL);
    expect_error(P("%s/s-{-1..3}.tar", D), NULL, 10, "'{-1..3}' is not a range", NULL);
    expect_error(P("%s/s-{0000000000000000000..1}.tar", D), NULL, 10, "is not a range", NULL);
    expect_error(P("%s/s-{0..1000000}.tar", D), NULL, 10, "more than 1000000 shards", NULL);
    expect_error(P("%s/s-{0..999}-{0..9999}.tar", D), NULL, 10, "more than 1000000 shards", NULL);
    expect_error(P("%s/s-{0..1}{0..1}{0..1}{0..1}{0..1}{0..1}{0..1}{0..1}{0..1}", D), NULL, 10, "more than 8 ranges",
                 NULL);
    expect_error("", NULL, 10, "the pattern is empty", NULL);
    expect_error(P("%s/s-000.tar,,%s/s-001.tar", D, D), NULL, 10, "an empty pattern", NULL);
    expect_error(P("%s/s-000.tar,", D), NULL, 10, "an empty pattern", NULL);
    expect_error(P(",%s/s-000.tar", D), NULL, 10, "an empty pattern at character 1", NULL);
    // A shard named twice.
    expect_error(P("%s/s-{000..002}.tar,%s/s-001.tar", D, D), NULL, 10, "s-001.tar is named twice", NULL);
    // A path too long once expanded.
    char longp[5000];
    memset(longp, 'a', sizeof longp);
    longp[sizeof longp - 1] = '\0';
    expect_error(longp, NULL, 10, "longer than 4095 bytes", NULL);
}

// ---------------------------------------------------------------------------------------------------------
// Grouping, labels, offsets

static void test_grouping(void **state) {
    (void)state;
    const char *D = fresh("grouping");
    tarw t = {0};
    tw_head(&t, "a/", NULL, '5', 0, 0);                 // a directory: skipped
    tw_text(&t, "a/x1.cls", "3");                       // .cls before the image (tar's sorted order)
    tw_image(&t, "a/x1.jpg", 700, 1);                   // 0: label 3
    tw_image(&t, "x2.png", 512, 2);                     // 1: an exact number of blocks
    tw_text(&t, "x2.cls", " 2\r\n");                    //    blanks around the label
    tw_image(&t, "x3.JPEG", 0, 3);                      // 2: empty image, extension in upper case
    tw_text(&t, "x3.cls", "\n0\n");
    tw_text(&t, "x4.json", "{}");                       // a group without image or .cls: ignored
    tw_image(&t, "x5.seg.png", 33, 4);                  // not the image: its extension is "seg.png"
    tw_image(&t, "x5.jpeg", 1500, 5);                   // 3
    tw_text(&t, "x5.cls", "4");
    tw_text(&t, "x5.txt", "caption");
    tw_head(&t, "x6.jpg", NULL, '2', 0, 0);             // a symlink named like an image: skipped
    tw_text(&t, "noext", "zz");                         // no key
    tw_text(&t, ".hidden.jpg", "zz");                   // no key (base name starts with '.')
    tw_text(&t, "d/.x.cls", "1");                       // no key either
    tw_image(&t, "d.x/y.z.png", 10, 6);                 // key "d.x/y": extension "z.png", not an image
    tw_image(&t, "d.x/y.png", 20, 7);                   // 4: key "d.x/y"
    tw_text(&t, "d.x/y.cls", "1");
    tw_head(&t, "x7.png", NULL, '7', 40, 0);            // '7' (contiguous) is a regular file: 5
    unsigned char *b7 = pattern_bytes(40, 8);
    tw_bytes(&t, b7, 40);
    free(b7);
    tw_pad(&t);
    tw_text(&t, "x7.cls", "0");
    tw_head(&t, "ldir/", NULL, '5', 0, 0);
    tw_save(&t, P("%s/g.tar", D), 1);
    put_text(P("%s/names.txt", D), "zero\none\ntwo\nthree\nfour\n");
    image_set s;
    load(P("%s/g.tar", D), P("%s/names.txt", D), 0, &s);
    assert_int_equal(s.n, 6);
    assert_int_equal(s.classes, 5);
    assert_string_equal(s.class_names[3], "three");
    const int labels[] = {3, 2, 0, 4, 1, 0};
    const size_t sizes[] = {700, 512, 0, 1500, 20, 40};
    const int seeds[] = {1, 2, 3, 5, 7, 8};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(s.labels[i], labels[i]);
        assert_int_equal(s.offsets[i] % 512, 0);
        expect_bytes(&s, i, sizes[i], seeds[i]);
    }
    // The offsets themselves: a directory header, the .cls header and block, then x1.jpg's header.
    assert_int_equal(s.offsets[0], 512 * 4);
    assert_int_equal(s.offsets[1], s.offsets[0] + 1024 + 512);  // 700 bytes take two blocks
    assert_int_equal(s.n_shards, 1);
    assert_int_equal(s.shard_first[0], 0);
    assert_int_equal(s.shard_first[1], 6);
    assert_string_equal(image_set_path(&s, 5), P("%s/g.tar", D));
    image_set_free(&s);
    // A tar without end blocks ends at the last member; one zero block ends it (what follows is not read).
    t = (tarw){0};
    tw_sample(&t, "only", "png", 9, 9, 1);
    tw_save(&t, P("%s/noend.tar", D), 0);
    load(P("%s/noend.tar", D), NULL, 2, &s);
    assert_int_equal(s.n, 1);
    expect_bytes(&s, 0, 9, 9);
    image_set_free(&s);
    t = (tarw){0};
    tw_sample(&t, "first", "png", 9, 9, 1);
    static const unsigned char zero[512];
    tw_bytes(&t, zero, 512);
    tw_bytes(&t, "garbage after the end", 21);
    tw_save(&t, P("%s/oneblock.tar", D), 0);
    load(P("%s/oneblock.tar", D), NULL, 2, &s);
    assert_int_equal(s.n, 1);
    image_set_free(&s);
}

// ---------------------------------------------------------------------------------------------------------
// Long names: ustar prefix, GNU 'L', pax path= and size=

static void test_long_names(void **state) {
    (void)state;
    const char *D = fresh("long");
    char dir[300];
    memset(dir, 'd', 150);
    memcpy(dir + 150, "/sub", 5);  // 154 bytes
    tarw t = {0};
    // ustar: prefix "ddd.../sub", name "p1.png"
    tw_head(&t, "p1.png", dir, '0', 30, 0);
    unsigned char *b = pattern_bytes(30, 1);
    tw_bytes(&t, b, 30);
    free(b);
    tw_pad(&t);
    tw_head(&t, "p1.cls", dir, '0', 1, 0);
    tw_bytes(&t, "1", 1);
    tw_pad(&t);
    // GNU magic: the prefix area is GNU's other fields, never a name
    tw_head(&t, "g1.png", "junk", '0', 5, TW_GNU_MAGIC);
    tw_bytes(&t, "abcde", 5);
    tw_pad(&t);
    tw_head(&t, "g1.cls", "junk", '0', 1, TW_GNU_MAGIC);
    tw_bytes(&t, "0", 1);
    tw_pad(&t);
    // GNU long names of 300 bytes, image and label
    char lname[400];
    memset(lname, 'L', 290);
    memcpy(lname + 290, "/key9.png", 10);
    b = pattern_bytes(2000, 2);
    tw_gnu_long(&t, lname, b, 2000);
    free(b);
    memcpy(lname + 290, "/key9.cls", 10);
    tw_gnu_long(&t, lname, "1", 1);
    // pax path= (the header's own name is a decoy), and pax size= over a header size of 0
    char rec[1024], rec2[512];
    char pname[400];
    memset(pname, 'P', 250);
    memcpy(pname + 250, "/k.png", 7);
    pax_record(rec, sizeof rec, "mtime", "1700000000.5");
    size_t l = strlen(rec);
    pax_record(rec + l, sizeof rec - l, "path", pname);
    b = pattern_bytes(77, 3);
    tw_pax(&t, rec, "decoy.txt", 77, b, 77);
    free(b);
    memcpy(pname + 250, "/k.cls", 7);
    pax_record(rec, sizeof rec, "path", pname);
    l = strlen(rec);
    pax_record(rec2, sizeof rec2, "size", "2");
    snprintf(rec + l, sizeof rec - l, "%s", rec2);
    tw_pax(&t, rec, "decoy2.txt", 0, "0\n", 2);
    tw_save(&t, P("%s/long.tar", D), 1);
    image_set s;
    load(P("%s/long.tar", D), NULL, 2, &s);
    assert_int_equal(s.n, 4);
    const int labels[] = {1, 0, 1, 0};
    for (int i = 0; i < 4; i++) assert_int_equal(s.labels[i], labels[i]);
    expect_bytes(&s, 0, 30, 1);
    expect_bytes(&s, 2, 2000, 2);
    expect_bytes(&s, 3, 77, 3);
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    char err[256];
    assert_int_equal(image_set_read(&s, 1, 100, &buf, &cap, &n, err, sizeof err), ST_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(buf, "abcde", 5);
    free(buf);
    image_set_free(&s);
}

// ---------------------------------------------------------------------------------------------------------
// Refusals at scan time

static void test_errors(void **state) {
    (void)state;
    const char *D = fresh("errors");
    const char *T = P("%s/train-000003.tar", D);
    char tpath[4096];
    snprintf(tpath, sizeof tpath, "%s", T);
    tarw t = {0};
    // Missing, not a regular file.
    expect_error(P("%s/nope-{0..1}.tar", D), NULL, 10, "nope-0.tar", "No such file");
    expect_error(D, NULL, 10, "is a directory", NULL);
    assert_int_equal(mkfifo(P("%s/fifo.tar", D), 0644), 0);
    expect_error(P("%s/fifo.tar", D), NULL, 10, "fifo.tar", "FIFO");
    // An image without its label, a label without its image (each at the end of the shard and before another key).
    tw_sample(&t, "x16", "jpg", 10, 1, 1);
    tw_image(&t, "x17.jpg", 10, 1);
    tw_sample(&t, "x18", "jpg", 10, 1, 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "train-000003.tar: member 'x17.jpg' has no 'x17.cls'", NULL);
    tw_sample(&t, "x16", "jpg", 10, 1, 1);
    tw_image(&t, "x17.jpg", 10, 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "train-000003.tar: member 'x17.jpg' has no 'x17.cls'", NULL);
    tw_text(&t, "x17.cls", "1");
    tw_sample(&t, "x18", "jpg", 10, 1, 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "train-000003.tar: member 'x17.cls' has no image",
                 "'x17.jpg', '.jpeg' or '.png') next to it");
    // Labels: not an integer, too long, out of range.
    const char *bad_labels[] = {"abc", "", "1 2", "1.5", "0x3", "\n"};
    for (int k = 0; k < 6; k++) {
        tw_text(&t, "y.cls", bad_labels[k]);
        tw_image(&t, "y.png", 10, 1);
        tw_save(&t, tpath, 1);
        expect_error(tpath, NULL, 10, "train-000003.tar: member 'y.cls' holds", "not an integer label");
    }
    char spaces[80];
    memset(spaces, ' ', 66);
    memcpy(spaces + 66, "1", 2);
    tw_text(&t, "y.cls", spaces);
    tw_image(&t, "y.png", 10, 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "member 'y.cls' holds 67 bytes", "too many for a label");
    tw_text(&t, "y.cls", "10\n");
    tw_image(&t, "y.png", 10, 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "train-000003.tar: member 'y.cls': label 10 is out of range [0, 10)", NULL);
    tw_text(&t, "y.cls", "-1");
    tw_image(&t, "y.png", 10, 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "label -1 is out of range", NULL);
    // Classes: none given without a names file; a names file that disagrees.
    make_shard(P("%s/ok.tar", D), 0, 3, 3);
    expect_error(P("%s/ok.tar", D), NULL, 0, "classes must be 1 to", NULL);
    put_text(P("%s/names.txt", D), "a\nb\nc\n");
    expect_error(P("%s/ok.tar", D), P("%s/names.txt", D), 4, "3 class names, but 4 classes", NULL);
    image_set s;
    load(P("%s/ok.tar", D), P("%s/names.txt", D), 3, &s);
    image_set_free(&s);
    // Duplicates: two images of one key, two labels, a key in two places.
    tw_image(&t, "z.jpg", 10, 1);
    tw_image(&t, "z.png", 10, 1);
    tw_text(&t, "z.cls", "1");
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "member 'z.png': key 'z' already has an image, 'z.jpg'", NULL);
    tw_text(&t, "z.cls", "1");
    tw_text(&t, "z.cls", "1");
    tw_image(&t, "z.jpg", 10, 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "member 'z.cls': key 'z' already has a label", NULL);
    tw_sample(&t, "a", "jpg", 10, 1, 1);
    tw_sample(&t, "b", "jpg", 10, 1, 1);
    tw_sample(&t, "a", "png", 10, 1, 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "train-000003.tar: duplicate key 'a'", "consecutive");
    // No samples: end blocks only, an empty file, members without keys.
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "train-000003.tar: no samples in the shard", NULL);
    tw_save(&t, tpath, 0);
    expect_error(tpath, NULL, 10, "train-000003.tar: no samples in the shard (0 bytes", NULL);
    tw_text(&t, "readme", "x");
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "no samples", NULL);
    // A bad checksum; a corrupt size field; not a tar at all.
    tw_sample(&t, "c1", "png", 10, 1, 1);
    tw_head(&t, "c2.png", NULL, '0', 10, TW_BAD_SUM);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "train-000003.tar: bad tar header checksum at byte 2048 (member 'c2.png'", NULL);
    tw_sample(&t, "c1", "png", 10, 1, 1);
    tw_save(&t, tpath, 1);
    {
        FILE *f = fopen(tpath, "r+b");
        assert_non_null(f);
        fseek(f, 1024 + 124, SEEK_SET);  // c1.cls's size field: "0000000001x" and a checksum that matches it
        unsigned char h[512];
        fseek(f, 1024, SEEK_SET);
        assert_int_equal(fread(h, 1, 512, f), 512);
        h[124 + 10] = 'x';
        memset(h + 148, ' ', 8);
        unsigned sum = 0;
        for (int i = 0; i < 512; i++) sum += h[i];
        snprintf((char *)h + 148, 8, "%06o", sum);
        fseek(f, 1024, SEEK_SET);
        assert_int_equal(fwrite(h, 1, 512, f), 512);
        fclose(f);
    }
    expect_error(tpath, NULL, 10, "member 'c1.cls' at byte 1024: the size field is not a number", NULL);
    put_text(tpath, "this is a text file, not a tar; it is long enough to hold a header block or so, padded: "
                    "................................................................................................"
                    "................................................................................................"
                    "................................................................................................"
                    "................................................................................................");
    expect_error(tpath, NULL, 10, "train-000003.tar: truncated tar", NULL);
    char junk[1024];
    memset(junk, 'j', sizeof junk);
    assert_int_equal(tu_write_file(tpath, junk, sizeof junk, 0), 0);
    expect_error(tpath, NULL, 10, "bad tar header checksum at byte 0", "not a tar file");
    // Truncated: inside a header, inside a member's data, inside its padding, after a long name record.
    tw_sample(&t, "t1", "png", 600, 1, 1);
    size_t full = t.n;
    tw_save(&t, tpath, 0);
    assert_int_equal(truncate(tpath, (off_t)full - 512 - 100), 0);  // cut inside t1.cls's header
    expect_error(tpath, NULL, 10, "truncated tar: the file ends 412 bytes into the header at byte 1536", NULL);
    assert_int_equal(truncate(tpath, 512 + 300), 0);  // t1.png's data
    expect_error(tpath, NULL, 10, "truncated tar: member 't1.png' (header at byte 0) has 600 bytes of data",
                 "ends 300 bytes after its header");
    assert_int_equal(truncate(tpath, 512 + 700), 0);  // its padding
    expect_error(tpath, NULL, 10, "truncated tar: member 't1.png' (header at byte 0): the file ends inside the padding",
                 NULL);
    tw_sample(&t, "t1", "png", 6, 1, 1);
    tw_head(&t, "././@LongLink", NULL, 'L', 8, TW_GNU_MAGIC);
    tw_bytes(&t, "t2.png", 7);
    tw_pad(&t);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "truncated tar: the long name or pax record at byte 2048 has no member after it",
                 NULL);
    // A long name longer than a path may be; a bad pax record; a pax path too long.
    char huge[5000];
    memset(huge, 'h', sizeof huge);
    memcpy(huge + sizeof huge - 8, ".png", 5);
    tw_gnu_long(&t, huge, "x", 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "GNU long name record at byte 0 holds 4997 bytes", "longer than 4095");
    tw_pax(&t, "12 path=a.png\n", "a.png", 1, "x", 1);  // LEN says 12, the record is 14 bytes
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "a bad pax record at byte 512 of the pax header at byte 0", NULL);
    tw_pax(&t, "14 pathxa.png\n", "a.png", 1, "x", 1);  // no '='
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "a bad pax record", NULL);
    tw_pax(&t, "12 size=12a\n", "a.png", 1, "x", 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "size '12a' is not a number", NULL);
    char rec[6000];
    memset(huge, 'h', sizeof huge);
    huge[4500] = '\0';
    pax_record(rec, sizeof rec, "path", huge);
    tw_pax(&t, rec, "a.png", 1, "x", 1);
    tw_save(&t, tpath, 1);
    expect_error(tpath, NULL, 10, "a path of 4500 bytes", NULL);
    // pax size= pointing past the end of the file.
    tw_pax(&t, "13 size=9999\n", "a.png", 1, "x", 1);
    tw_save(&t, tpath, 0);
    expect_error(tpath, NULL, 10, "truncated tar: member 'a.png' (header at byte 1024) has 9999 bytes", NULL);
    // The error names the shard in a list of several.
    make_shard(P("%s/good.tar", D), 0, 2, 10);
    tw_image(&t, "w.png", 5, 1);
    tw_save(&t, tpath, 1);
    expect_error(P("%s/good.tar,%s", D, tpath), NULL, 10, "train-000003.tar: member 'w.png' has no 'w.cls'", NULL);
}

// ---------------------------------------------------------------------------------------------------------
// Reading after the scan: limits, a truncated shard

static void test_read_truncated(void **state) {
    (void)state;
    const char *D = fresh("read");
    const char *T = P("%s/r.tar", D);
    char tpath[4096];
    snprintf(tpath, sizeof tpath, "%s", T);
    tarw t = {0};
    tw_sample(&t, "r0", "jpg", 1000, 1, 0);
    tw_sample(&t, "r1", "png", 3000, 2, 1);
    tw_sample(&t, "r2", "png", 10, 3, 1);
    tw_save(&t, tpath, 1);
    image_set s;
    load(tpath, NULL, 2, &s);
    assert_int_equal(s.n, 3);
    expect_bytes(&s, 1, 3000, 2);
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    char err[512];
    // Over the limit: named with the member.
    assert_int_equal(image_set_read(&s, 1, 2999, &buf, &cap, &n, err, sizeof err), ST_INPUT);
    if (!strstr(err, "r.tar: member 'r1.png' at byte 3072: 3000 bytes, more than the limit of 2999"))
        fail_msg("%s", err);
    // Cut inside r1.png's data: r0 still reads, r1 names the shard, the member and its offset, and so does r2.
    assert_int_equal(s.offsets[1], 3072);
    assert_int_equal(truncate(tpath, 3072 + 1000), 0);
    expect_bytes(&s, 0, 1000, 1);
    assert_int_equal(image_set_read(&s, 1, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_INPUT);
    if (!strstr(err, "r.tar: member 'r1.png' (3000 bytes at byte 3072) ends past the end of the shard (4072 bytes)"))
        fail_msg("%s", err);
    assert_int_equal(image_set_read(&s, 2, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_INPUT);
    if (!strstr(err, "r.tar: the member (10 bytes at byte 7680)") || !strstr(err, "truncated since it was scanned"))
        fail_msg("%s", err);
    // Gone entirely; replaced by a FIFO.
    unlink(tpath);
    assert_int_equal(image_set_read(&s, 0, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_INPUT);
    assert_non_null(strstr(err, "r.tar: cannot open"));
    assert_int_equal(mkfifo(tpath, 0644), 0);
    assert_int_equal(image_set_read(&s, 0, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_INPUT);
    assert_non_null(strstr(err, "r.tar: is a FIFO"));
    assert_int_equal(image_set_read(&s, 3, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_RUNTIME);
    free(buf);
    image_set_free(&s);
    image_set_free(&s);  // safe twice
}

// ---------------------------------------------------------------------------------------------------------
// Digest

static uint64_t digest_of(const char *pattern, int classes) {
    image_set s;
    load(pattern, NULL, classes, &s);
    uint64_t d = s.digest;
    image_set_free(&s);
    return d;
}

static void test_digest(void **state) {
    (void)state;
    const char *A = fresh("dig-a"), *B = fresh("dig-b");
    tarw t = {0};
    tw_sample(&t, "k1", "png", 50, 1, 1);
    tw_sample(&t, "k2", "jpg", 60, 2, 0);
    tw_save(&t, P("%s/s-0.tar", A), 1);
    tw_sample(&t, "k1", "png", 50, 1, 1);
    tw_sample(&t, "k2", "jpg", 60, 2, 0);
    tw_save(&t, P("%s/s-0.tar", B), 1);
    // The same shards under another directory: the same digest (base names only).
    uint64_t d0 = digest_of(P("%s/s-0.tar", A), 2);
    assert_int_equal(d0, digest_of(P("%s/s-0.tar", B), 2));
    // Image bytes are not in it (only sizes).
    tw_sample(&t, "k1", "png", 50, 9, 1);
    tw_sample(&t, "k2", "jpg", 60, 9, 0);
    tw_save(&t, P("%s/s-0.tar", B), 1);
    assert_int_equal(d0, digest_of(P("%s/s-0.tar", B), 2));
    // A label, a member name, a size, the shard's name, the class count, the order of shards.
    tw_sample(&t, "k1", "png", 50, 1, 0);
    tw_sample(&t, "k2", "jpg", 60, 2, 0);
    tw_save(&t, P("%s/s-0.tar", B), 1);
    assert_true(d0 != digest_of(P("%s/s-0.tar", B), 2));
    tw_sample(&t, "k1", "jpg", 50, 1, 1);
    tw_sample(&t, "k2", "jpg", 60, 2, 0);
    tw_save(&t, P("%s/s-0.tar", B), 1);
    assert_true(d0 != digest_of(P("%s/s-0.tar", B), 2));
    tw_sample(&t, "k1", "png", 51, 1, 1);
    tw_sample(&t, "k2", "jpg", 60, 2, 0);
    tw_save(&t, P("%s/s-0.tar", B), 1);
    assert_true(d0 != digest_of(P("%s/s-0.tar", B), 2));
    tw_sample(&t, "k1", "png", 50, 1, 1);
    tw_sample(&t, "k2", "jpg", 60, 2, 0);
    tw_save(&t, P("%s/s-1.tar", A), 1);
    assert_true(d0 != digest_of(P("%s/s-1.tar", A), 2));
    assert_true(d0 != digest_of(P("%s/s-0.tar", A), 3));
    assert_true(digest_of(P("%s/s-{0..1}.tar", A), 2) != digest_of(P("%s/s-{1..0}.tar", A), 2));
    // Split differently over shards: the same samples, another digest.
    tw_sample(&t, "k1", "png", 50, 1, 1);
    tw_save(&t, P("%s/h-0.tar", A), 1);
    tw_sample(&t, "k2", "jpg", 60, 2, 0);
    tw_save(&t, P("%s/h-1.tar", A), 1);
    tw_sample(&t, "k1", "png", 50, 1, 1);
    tw_sample(&t, "k2", "jpg", 60, 2, 0);
    tw_save(&t, P("%s/h-0.tar", B), 1);
    assert_true(digest_of(P("%s/h-{0..1}.tar", A), 2) != digest_of(P("%s/h-0.tar", B), 2));
}

// ---------------------------------------------------------------------------------------------------------
// Many shards and samples: arrays grow, every offset reads back

static void test_many(void **state) {
    (void)state;
    const char *D = fresh("many");
    int total = 0;
    for (int k = 0; k < 12; k++) {
        make_shard(P("%s/m-%02d.tar", D, k), total, 40 + k, 7);
        total += 40 + k;
    }
    image_set s;
    load(P("%s/m-{00..11}.tar", D), NULL, 7, &s);
    assert_int_equal(s.n, total);
    assert_int_equal(s.n_shards, 12);
    for (int i = 0; i < s.n; i++) {
        assert_int_equal(s.labels[i], i % 7);
        if (i % 13 == 0) expect_bytes(&s, i, 100 + (size_t)(i - (int)s.shard_first[s.shard[i]]), i);
    }
    image_set_free(&s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_patterns),       cmocka_unit_test(test_grouping), cmocka_unit_test(test_long_names),
        cmocka_unit_test(test_errors),         cmocka_unit_test(test_read_truncated),
        cmocka_unit_test(test_digest),         cmocka_unit_test(test_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
