// test_checkpoint.c — safetensors round trip, the on-disk format checked by hand, atomic replacement (failed
// saves and a process killed mid-save leave the old file intact), and ST_INPUT naming the file for every kind of
// corrupt or mismatching checkpoint.
//
// A save killed mid-write (the ckpt_set_crash_after hook) leaves a stale "<path>.tmp.<pid>"; the tests
// check it never appears under the final name and that later saves and loads ignore it.
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checkpoint.h"
#include "common.h"
#include "test_util.h"

// ---------------------------------------------------------------------------------------------------------
// Fixtures and helpers

enum { FX_N = 5, FX_META = 3 };

typedef struct fixture {
    float w[32 * 1 * 3 * 3], b[32], d[10 * 24], s[1];
    ckpt_tensor t[FX_N];
    ckpt_kv meta[FX_META];
} fixture;

static void fill(float *x, size_t n, uint64_t seed) {
    rng r;
    rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = 4.0f * rng_uniform(&r) - 2.0f;
}

// Tensors of every rank we write (0..4), one empty, and values whose bytes must survive exactly.
static void fixture_init(fixture *fx, uint64_t seed) {
    memset(fx, 0, sizeof *fx);
    fill(fx->w, 288, seed);
    fill(fx->b, 32, seed + 1);
    fill(fx->d, 240, seed + 2);
    fx->s[0] = (float)seed;
    fx->w[0] = -0.0f;
    fx->w[1] = NAN;
    fx->w[2] = -INFINITY;
    fx->w[3] = 1e-42f;  // subnormal
    fx->t[0] = (ckpt_tensor){"conv1.weight", fx->w, 4, {32, 1, 3, 3}, CKPT_F32};
    fx->t[1] = (ckpt_tensor){"conv1.bias", fx->b, 1, {32}, CKPT_F32};
    fx->t[2] = (ckpt_tensor){"dense1.weight", fx->d, 2, {10, 24}, CKPT_F32};
    fx->t[3] = (ckpt_tensor){"step", fx->s, 0, {0}, CKPT_F32};
    fx->t[4] = (ckpt_tensor){"empty", NULL, 2, {0, 3}, CKPT_F32};
    fx->meta[0] = (ckpt_kv){"format", "ddp-cnn-1"};
    fx->meta[1] = (ckpt_kv){"epoch", "3"};
    fx->meta[2] = (ckpt_kv){"note", "quote \" backslash \\ newline \n utf8 \xc3\xa9"};
}

static size_t tensor_numel(const ckpt_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    return n;
}

static unsigned char *file_read(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    assert_int_equal(fseek(fp, 0, SEEK_END), 0);
    long size = ftell(fp);
    assert_true(size >= 0);
    rewind(fp);
    unsigned char *b = malloc((size_t)size + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)size, fp), (size_t)size);
    fclose(fp);
    *n = (size_t)size;
    return b;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

// Names containing ".tmp." in dir: leftovers of a save.
static int count_temp_files(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static void expect_load_error(const char *path, const char *needle) {
    err_clear();
    ckpt_file *f = (ckpt_file *)1;
    int st = ckpt_load(path, &f);
    if (st != ST_INPUT || !strstr(err_msg(), path) || (needle && !strstr(err_msg(), needle)))
        fail_msg("load of %s: status %d, message '%s' (want ST_INPUT naming the file and '%s')", path, st,
                 err_msg(), needle ? needle : "");
    assert_null(f);
    err_clear();
}

// A safetensors file with the given header text (space padded) and data_n bytes of data.
static void write_safetensors(const char *path, const char *json, size_t data_n) {
    size_t len = strlen(json), n = (len + 7) / 8 * 8;
    unsigned char *b = malloc(8 + n + data_n + 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(b + 8, json, len);
    memset(b + 8 + len, ' ', n - len);
    for (size_t i = 0; i < data_n; i++) b[8 + n + i] = (unsigned char)(i * 7 + 1);
    assert_int_equal(tu_write_file(path, b, 8 + n + data_n, 0), 0);
    free(b);
}

static void write_with_length(const char *path, uint64_t n, const char *rest) {
    unsigned char b[256];
    size_t len = strlen(rest);
    assert_true(len + 8 <= sizeof b);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(n >> (8 * i));
    memcpy(b + 8, rest, len);
    assert_int_equal(tu_write_file(path, b, 8 + len, 0), 0);
}

// Every fixture tensor reads back with identical bytes.
static void expect_fixture(const char *path, const fixture *fx) {
    err_clear();
    ckpt_file *f = NULL;
    if (ckpt_load(path, &f) != ST_OK) fail_msg("load %s: %s", path, err_msg());
    assert_int_equal(ckpt_n_tensors(f), FX_N);
    assert_string_equal(ckpt_path(f), path);
    float buf[512];
    for (int i = 0; i < FX_N; i++) {
        const ckpt_tensor *t = &fx->t[i];
        memset(buf, 0xab, sizeof buf);
        if (ckpt_read_tensor(f, t->name, t->ndim, t->shape, buf) != ST_OK) fail_msg("%s", err_msg());
        size_t n = tensor_numel(t);
        if (n) assert_memory_equal(buf, t->data, n * sizeof(float));
        assert_int_equal(((unsigned char *)buf)[n * sizeof(float)], 0xab);  // nothing written past the end
    }
    for (int i = 0; i < FX_META; i++) assert_string_equal(ckpt_meta(f, fx->meta[i].key), fx->meta[i].value);
    assert_null(ckpt_meta(f, "absent"));
    ckpt_free(f);
}

// ---------------------------------------------------------------------------------------------------------
// Round trip and format

static void test_round_trip_is_exact(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 11);
    const char *path = tu_path("round.safetensors");
    assert_int_equal(ckpt_save(path, fx.t, FX_N, fx.meta, FX_META), ST_OK);
    expect_fixture(path, &fx);
    assert_int_equal(count_temp_files(tu_tmpdir()), 0);
    ckpt_free(NULL);

    // No tensors and no metadata is still a valid file.
    const char *empty = tu_path("nothing.safetensors");
    assert_int_equal(ckpt_save(empty, NULL, 0, NULL, 0), ST_OK);
    ckpt_file *f = NULL;
    assert_int_equal(ckpt_load(empty, &f), ST_OK);
    assert_int_equal(ckpt_n_tensors(f), 0);
    assert_null(ckpt_meta(f, "format"));
    ckpt_free(f);
}

// The file read by hand, as another safetensors reader would.
static void test_file_is_safetensors(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 12);
    const char *path = tu_path("format.safetensors");
    assert_int_equal(ckpt_save(path, fx.t, FX_N, fx.meta, FX_META), ST_OK);
    size_t size;
    unsigned char *b = file_read(path, &size);
    assert_true(size >= 8);
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)b[i] << (8 * i);
    assert_true(8 + n <= size);
    assert_int_equal((8 + n) % 8, 0);
    assert_int_equal(b[8], '{');
    b[size] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)b + 8, (size_t)n, &end, 0);
    assert_non_null(root);
    for (const char *p = end; p < (const char *)b + 8 + n; p++) assert_int_equal(*p, ' ');
    assert_int_equal(cJSON_GetArraySize(root), FX_N + 1);

    const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "__metadata__");
    assert_true(cJSON_IsObject(meta));
    assert_int_equal(cJSON_GetArraySize(meta), FX_META);
    for (int i = 0; i < FX_META; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, fx.meta[i].key);
        assert_true(cJSON_IsString(v));
        assert_string_equal(v->valuestring, fx.meta[i].value);
    }
    uint64_t expect_begin = 0;
    for (int i = 0; i < FX_N; i++) {
        const ckpt_tensor *t = &fx.t[i];
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, t->name);
        assert_true(cJSON_IsObject(e));
        const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        assert_true(cJSON_IsString(dtype));
        assert_string_equal(dtype->valuestring, "F32");
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
        assert_true(cJSON_IsArray(shape));
        assert_int_equal(cJSON_GetArraySize(shape), t->ndim);
        for (int d = 0; d < t->ndim; d++) assert_true(cJSON_GetArrayItem(shape, d)->valuedouble == (double)t->shape[d]);
        const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        assert_true(cJSON_IsArray(offs));
        assert_int_equal(cJSON_GetArraySize(offs), 2);
        uint64_t begin = (uint64_t)cJSON_GetArrayItem(offs, 0)->valuedouble;
        uint64_t endo = (uint64_t)cJSON_GetArrayItem(offs, 1)->valuedouble;
        size_t bytes = tensor_numel(t) * sizeof(float);
        assert_int_equal(begin, expect_begin);  // contiguous, in the order given
        assert_int_equal(endo - begin, bytes);
        if (bytes) assert_memory_equal(b + 8 + n + begin, t->data, bytes);
        expect_begin = endo;
    }
    assert_int_equal(8 + n + expect_begin, size);  // nothing after the last tensor
    cJSON_Delete(root);
    free(b);

    // Without metadata there is no "__metadata__" key.
    assert_int_equal(ckpt_save(path, fx.t, 1, NULL, 0), ST_OK);
    b = file_read(path, &size);
    b[size] = '\0';
    assert_null(strstr((const char *)b + 8, "__metadata__"));
    free(b);
}

// The data area starts on an 8-byte boundary whatever the header's natural length.
static void test_header_is_padded_to_8(void **state) {
    (void)state;
    float x[3] = {1, 2, 3};
    char name[32];
    const char *path = tu_path("align.safetensors");
    for (int len = 1; len <= 17; len++) {
        memset(name, 'a', (size_t)len);
        name[len] = '\0';
        ckpt_tensor t = {name, x, 1, {3}, CKPT_F32};
        assert_int_equal(ckpt_save(path, &t, 1, NULL, 0), ST_OK);
        size_t size;
        unsigned char *b = file_read(path, &size);
        uint64_t n = 0;
        for (int i = 0; i < 8; i++) n |= (uint64_t)b[i] << (8 * i);
        assert_int_equal((8 + n) % 8, 0);
        assert_int_equal(size, 8 + n + sizeof x);
        assert_memory_equal(b + 8 + n, x, sizeof x);
        free(b);
        ckpt_file *f = NULL;
        assert_int_equal(ckpt_load(path, &f), ST_OK);
        float y[3];
        assert_int_equal(ckpt_read_tensor(f, name, 1, t.shape, y), ST_OK);
        assert_memory_equal(x, y, sizeof x);
        ckpt_free(f);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Atomic replacement

static void test_overwrite_replaces_whole_file(void **state) {
    (void)state;
    fixture a, b;
    fixture_init(&a, 21);
    fixture_init(&b, 22);
    b.t[2].shape[0] = 5;  // the new file is shorter
    const char *path = tu_path("over.safetensors");
    assert_int_equal(ckpt_save(path, a.t, FX_N, a.meta, FX_META), ST_OK);
    assert_int_equal(ckpt_save(path, b.t, FX_N, b.meta, FX_META), ST_OK);
    expect_fixture(path, &b);
    assert_int_equal(count_temp_files(tu_tmpdir()), 0);
    mode_t mask = umask(0);
    umask(mask);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0644 & ~mask);

    // A stale temp file of this very pid (from a killed process that had it) is replaced, not an error.
    char stale[600];
    snprintf(stale, sizeof stale, "%s.tmp.%ld", path, (long)getpid());
    assert_int_equal(tu_write_file(stale, "junk", 4, 0), 0);
    assert_int_equal(ckpt_save(path, a.t, FX_N, a.meta, FX_META), ST_OK);
    assert_false(file_exists(stale));
    expect_fixture(path, &a);
}

static void expect_save_fails(const char *path, const fixture *fx, int err) {
    err_clear();
    assert_int_equal(ckpt_save(path, fx->t, FX_N, fx->meta, FX_META), ST_RUNTIME);
    if (!strstr(err_msg(), path) || !strstr(err_msg(), strerror(err)))
        fail_msg("message '%s' should name %s and say '%s'", err_msg(), path, strerror(err));
    err_clear();
}

static void test_failed_save_keeps_old_file(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 31);
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("nodir/x.safetensors"));
    expect_save_fails(path, &fx, ENOENT);

    assert_int_equal(tu_write_file(tu_path("plainfile"), "x", 1, 0), 0);
    snprintf(path, sizeof path, "%s", tu_path("plainfile/x.safetensors"));
    expect_save_fails(path, &fx, ENOTDIR);

    // The final name is a directory: everything succeeds up to the rename, then the temp file must go.
    snprintf(path, sizeof path, "%s", tu_path("adir"));
    assert_int_equal(mkdir(path, 0755), 0);
    expect_save_fails(path, &fx, EISDIR);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    assert_int_equal(count_temp_files(tu_tmpdir()), 0);
}

// The file system refuses the data half-way (RLIMIT_FSIZE gives EFBIG like a full disk gives ENOSPC), in a
// child so the limit does not outlive the test; works as root, unlike a read-only directory.
static void test_write_error_midway_keeps_old_file(void **state) {
    (void)state;
    fixture old, big;
    fixture_init(&old, 41);
    fixture_init(&big, 42);
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("midway.safetensors"));
    assert_int_equal(ckpt_save(path, old.t, FX_N, old.meta, FX_META), ST_OK);
    size_t n_before;
    unsigned char *before = file_read(path, &n_before);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {600, 600};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) _exit(20);
        int st = ckpt_save(path, big.t, FX_N, big.meta, FX_META);
        int ok = st == ST_RUNTIME && strstr(err_msg(), path) && strstr(err_msg(), strerror(EFBIG));
        if (!ok) fprintf(stderr, "child: status %d, message '%s'\n", st, err_msg());
        _exit(ok ? 0 : 21);
    }
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws));
    assert_int_equal(WEXITSTATUS(ws), 0);
    size_t n_after;
    unsigned char *after = file_read(path, &n_after);
    assert_int_equal(n_after, n_before);
    assert_memory_equal(after, before, n_before);
    assert_int_equal(count_temp_files(tu_tmpdir()), 0);
    expect_fixture(path, &old);
    free(before);
    free(after);
}

static void test_read_only_dir(void **state) {
    (void)state;
    if (geteuid() == 0) {
        print_message("running as root, which ignores directory permissions: skipped\n");
        skip();
    }
    fixture old, fresh;
    fixture_init(&old, 51);
    fixture_init(&fresh, 52);
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s", tu_path("readonly"));
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    assert_int_equal(ckpt_save(path, old.t, FX_N, old.meta, FX_META), ST_OK);
    assert_int_equal(chmod(dir, 0555), 0);
    expect_save_fails(path, &fresh, EACCES);
    assert_int_equal(chmod(dir, 0755), 0);
    expect_fixture(path, &old);
    assert_int_equal(count_temp_files(dir), 0);
}

// ---------------------------------------------------------------------------------------------------------
// Crash in the middle of a save (ckpt_set_crash_after)

// Saves fresh over path in a child killed after k bytes; returns the child's pid.
static pid_t save_in_child_killed_at(const char *path, const fixture *fresh, long k) {
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        ckpt_set_crash_after(k);
        int st = ckpt_save(path, fresh->t, FX_N, fresh->meta, FX_META);
        _exit(st == ST_OK ? 0 : 10 + st);
    }
    return pid;
}

static void test_crash_mid_save_keeps_old_file(void **state) {
    (void)state;
    fixture old, fresh;
    fixture_init(&old, 61);
    fixture_init(&fresh, 62);
    char path[512], ref[512], tmp[600];
    snprintf(path, sizeof path, "%s", tu_path("crash.safetensors"));
    snprintf(ref, sizeof ref, "%s", tu_path("crash-ref.safetensors"));
    assert_int_equal(ckpt_save(ref, fresh.t, FX_N, fresh.meta, FX_META), ST_OK);
    size_t n_new, n_old;
    unsigned char *want_new = file_read(ref, &n_new);
    uint64_t head = 0;
    for (int i = 0; i < 8; i++) head |= (uint64_t)want_new[i] << (8 * i);
    head += 8;
    assert_int_equal(ckpt_save(path, old.t, FX_N, old.meta, FX_META), ST_OK);
    unsigned char *want_old = file_read(path, &n_old);

    const long ks[] = {0, 1, 7, 8, 9, 40, (long)head - 1, (long)head, (long)head + 1, (long)head + 1157,
                       (long)n_new - 1, (long)n_new};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        pid_t pid = save_in_child_killed_at(path, &fresh, ks[i]);
        int ws;
        assert_int_equal(waitpid(pid, &ws, 0), pid);
        if (!WIFSIGNALED(ws) || WTERMSIG(ws) != SIGKILL) fail_msg("k=%ld: child was not killed by SIGKILL", ks[i]);
        size_t n;
        unsigned char *now = file_read(path, &n);
        assert_int_equal(n, n_old);
        assert_memory_equal(now, want_old, n_old);
        free(now);
        expect_fixture(path, &old);
        // The partial temp file holds exactly the first k bytes, and only under its own name.
        snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)pid);
        if (file_exists(tmp)) {
            unsigned char *part = file_read(tmp, &n);
            assert_int_equal(n, (size_t)ks[i]);
            if (n) assert_memory_equal(part, want_new, n);
            free(part);
        }
        if (i + 1 < sizeof ks / sizeof ks[0]) unlink(tmp);
    }

    // The last crash left a stale temp file: later saves and loads ignore it.
    assert_true(file_exists(tmp));
    assert_int_equal(ckpt_save(path, fresh.t, FX_N, fresh.meta, FX_META), ST_OK);
    expect_fixture(path, &fresh);
    assert_true(file_exists(tmp));
    unlink(tmp);

    // A count past the end of the file never triggers: the save completes.
    assert_int_equal(ckpt_save(path, old.t, FX_N, old.meta, FX_META), ST_OK);
    pid_t pid = save_in_child_killed_at(path, &fresh, (long)n_new + 1);
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws));
    assert_int_equal(WEXITSTATUS(ws), 0);
    expect_fixture(path, &fresh);
    assert_int_equal(count_temp_files(tu_tmpdir()), 0);

    // (A malformed DDP_CKPT_CRASH_AFTER_BYTES is the test trainer's exit 2: tests/cli_faults.sh.)
    free(want_new);
    free(want_old);
}

// ---------------------------------------------------------------------------------------------------------
// Save argument errors

static void expect_save_input_error(const char *path, const ckpt_tensor *t, int n, const ckpt_kv *m, int nm,
                                    const char *needle) {
    err_clear();
    int st = ckpt_save(path, t, n, m, nm);
    if (st != ST_INPUT || !strstr(err_msg(), path) || !strstr(err_msg(), needle))
        fail_msg("save: status %d, message '%s' (want ST_INPUT naming %s and '%s')", st, err_msg(), path, needle);
    assert_false(file_exists(path));
    assert_int_equal(count_temp_files(tu_tmpdir()), 0);
    err_clear();
}

static void test_save_rejects_bad_tensors(void **state) {
    (void)state;
    float x[4] = {0};
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("bad-args.safetensors"));
    ckpt_tensor dup[2] = {{"a", x, 1, {4}, CKPT_F32}, {"a", x, 1, {2}, CKPT_F32}};
    expect_save_input_error(path, dup, 2, NULL, 0, "'a' appears twice");
    ckpt_tensor rank[1] = {{"r", x, 5, {1, 1, 1, 1}, CKPT_F32}};
    expect_save_input_error(path, rank, 1, NULL, 0, "'r'");
    ckpt_tensor neg[1] = {{"n", x, 2, {2, -2}, CKPT_F32}};
    expect_save_input_error(path, neg, 1, NULL, 0, "'n'");
    ckpt_tensor nodata[1] = {{"z", NULL, 1, {4}, CKPT_F32}};
    expect_save_input_error(path, nodata, 1, NULL, 0, "'z'");
    ckpt_tensor reserved[1] = {{"__metadata__", x, 1, {4}, CKPT_F32}};
    expect_save_input_error(path, reserved, 1, NULL, 0, "__metadata__");
    ckpt_tensor noname[1] = {{NULL, x, 1, {4}, CKPT_F32}};
    expect_save_input_error(path, noname, 1, NULL, 0, "no name");
    ckpt_kv meta[2] = {{"k", "1"}, {"k", "2"}};
    expect_save_input_error(path, dup, 1, meta, 2, "'k' appears twice");
    ckpt_kv nokey[1] = {{NULL, "1"}};
    expect_save_input_error(path, dup, 1, nokey, 1, "no key");
    expect_save_input_error(path, dup, -1, NULL, 0, "-1 tensors");
}

// ---------------------------------------------------------------------------------------------------------
// Corrupt files

static void test_truncated_files_are_rejected(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 71);
    char good[512], cut[512];
    snprintf(good, sizeof good, "%s", tu_path("whole.safetensors"));
    snprintf(cut, sizeof cut, "%s", tu_path("cut.safetensors"));
    assert_int_equal(ckpt_save(good, fx.t, FX_N, fx.meta, FX_META), ST_OK);
    size_t size;
    unsigned char *b = file_read(good, &size);
    uint64_t head = 8;
    for (int i = 0; i < 8; i++) head += (uint64_t)b[i] << (8 * i);
    assert_true(head > 64);  // so the 0..64 sweep stays inside the length field and the header
    size_t cuts[80];
    int n = 0;
    for (size_t k = 0; k <= 64; k++) cuts[n++] = k;
    const size_t more[] = {head - 1, head, head + 1, head + 4, head + 1151, head + 1152, (head + size) / 2,
                           size - 4, size - 1};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) cuts[n++] = more[i];
    for (int i = 0; i < n; i++) {
        assert_true(cuts[i] < size);
        assert_int_equal(tu_write_file(cut, b, cuts[i], 0), 0);
        expect_load_error(cut, NULL);
    }
    free(b);
}

static void test_bad_header_length(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("len.safetensors"));
    write_with_length(path, UINT64_MAX, "{}      ");
    expect_load_error(path, "header length");
    write_with_length(path, (uint64_t)1 << 63, "{}      ");
    expect_load_error(path, "header length");
    write_with_length(path, 9, "{}      ");  // one byte more than the file holds
    expect_load_error(path, "header length");

    // Over the 100 MB limit while inside the file (sparse, so cheap to make).
    uint64_t n = 100000008;
    write_with_length(path, n, "{");
    assert_int_equal(truncate(path, (off_t)(8 + n + 8)), 0);
    expect_load_error(path, "limit");
}

static void test_header_not_json(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("json.safetensors"));
    const struct {
        const char *json, *needle;
    } cases[] = {
        {"not json", "'{'"},
        {"[1, 2]", "'{'"},
        {"", "'{'"},
        {" {}", "'{'"},
        {"{\"a\": ", "JSON"},
        {"{\"a\": {\"dtype\": \"F32\",}}", "JSON"},
        {"{} x", "trailing"},
        {"{}\n", "trailing"},
        {"{}{}", "trailing"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_safetensors(path, cases[i].json, 0);
        expect_load_error(path, cases[i].needle);
    }
    // A NUL byte inside the header.
    static const unsigned char nul[16] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0, ' ', ' ', ' ', ' ', ' '};
    assert_int_equal(tu_write_file(path, nul, sizeof nul, 0), 0);
    expect_load_error(path, "NUL");
}

static void test_bad_entries(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("entries.safetensors"));
    const struct {
        const char *json;
        size_t data_n;
        const char *needle;
    } cases[] = {
        {"{\"a\": 5}", 0, "'a' is not a JSON object"},
        {"{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "'a': 'dtype'"},
        {"{\"a\": {\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "'a': 'dtype'"},
        {"{\"a\": {\"dtype\": \"F33\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "unknown dtype 'F33'"},
        {"{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, "'a': 'shape'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": \"1\", \"data_offsets\": [0, 4]}}", 4, "'a': 'shape'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4, "'a': shape[0]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1, 1.5], \"data_offsets\": [0, 4]}}", 4, "'a': shape[1]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0, 4]}}", 4, "'a': shape[0]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1e300], \"data_offsets\": [0, 4]}}", 4, "'a': shape[0]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}", 4,
         "'a': shape has 9"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "'a': 'data_offsets'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4, "'a': 'data_offsets'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8, "'a': 'data_offsets'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4, "'a': 'data_offsets'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4.5]}}", 8, "'a': 'data_offsets'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 0]}}", 4, "'a': data_offsets [4, 0]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4, "'a': data_offsets [0, 8]"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [1e300, 1e300]}}", 4, "'a': 'data_offsets'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 12]}}", 16,
         "'a': data_offsets span 12"},
        {"{\"a\": {\"dtype\": \"F16\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 16, "'a': data_offsets span 16"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], \"data_offsets\": [0, 16]}}", 16,
         "'a': shape is too large"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
         " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
         24, "tensors 'a' [0, 16] and 'b' [8, 24] overlap"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [6], \"data_offsets\": [0, 24]},"
         " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
         24, "overlap"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
         " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
         8, "'a' appears twice"},
        {"{\"__metadata__\": 5}", 0, "'__metadata__' is not a JSON object"},
        {"{\"__metadata__\": {\"epoch\": 3}}", 0, "value 'epoch' is not a string"},
        {"{\"__metadata__\": {\"k\": \"1\", \"k\": \"2\"}}", 0, "key 'k' appears twice"},
        {"{\"__metadata__\": {}, \"__metadata__\": {}}", 0, "'__metadata__' appears twice"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_safetensors(path, cases[i].json, cases[i].data_n);
        expect_load_error(path, cases[i].needle);
    }
}

// Files from other writers may hold other dtypes, higher ranks, empty tensors and unused bytes between tensors;
// they load, and only the F32 tensors of the requested shape can be read. Bytes after the last tensor do not.
static void test_foreign_file_loads(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("foreign.safetensors"));
    write_safetensors(path,
                      "{\"__metadata__\": {\"format\": \"pt\"},"
                      " \"h\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, 4]},"
                      " \"f\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]},"
                      " \"r\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 1, 2], \"data_offsets\": [8, 16]},"
                      " \"i\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [16, 24]},"
                      " \"bf\": {\"dtype\": \"BF16\", \"shape\": [], \"data_offsets\": [24, 26]},"
                      " \"e\": {\"dtype\": \"F32\", \"shape\": [0, 7], \"data_offsets\": [4, 4]},"
                      " \"extra\": {\"dtype\": \"U8\", \"shape\": [3], \"data_offsets\": [28, 31], \"x\": 1}}",
                      31);
    ckpt_file *f = NULL;
    err_clear();
    if (ckpt_load(path, &f) != ST_OK) fail_msg("%s", err_msg());
    assert_int_equal(ckpt_n_tensors(f), 7);
    assert_string_equal(ckpt_meta(f, "format"), "pt");
    size_t size;
    unsigned char *b = file_read(path, &size);
    float v[2];
    const int64_t one[1] = {1}, two[4] = {1, 1, 1, 2}, e[2] = {0, 7};
    assert_int_equal(ckpt_read_tensor(f, "f", 1, one, v), ST_OK);
    assert_memory_equal(v, b + size - 31 + 4, 4);
    assert_int_equal(ckpt_read_tensor(f, "e", 2, e, NULL), ST_OK);
    free(b);

    char want[700];
    err_clear();
    assert_int_equal(ckpt_read_tensor(f, "h", 1, (const int64_t[]){2}, v), ST_INPUT);
    snprintf(want, sizeof want, "%s: tensor 'h' has dtype F16, expected F32", path);
    assert_string_equal(err_msg(), want);
    err_clear();
    assert_int_equal(ckpt_read_tensor(f, "r", 4, two, v), ST_INPUT);
    snprintf(want, sizeof want, "%s: tensor 'r' has shape [1,1,1,1,2], expected [1,1,1,2]", path);
    assert_string_equal(err_msg(), want);
    err_clear();
    ckpt_free(f);
}

static void test_read_tensor_mismatch(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 81);
    char path[512], want[700];
    snprintf(path, sizeof path, "%s", tu_path("mismatch.safetensors"));
    assert_int_equal(ckpt_save(path, fx.t, FX_N, fx.meta, FX_META), ST_OK);
    ckpt_file *f = NULL;
    assert_int_equal(ckpt_load(path, &f), ST_OK);
    float dst[288];
    memset(dst, 0, sizeof dst);
    const struct {
        const char *name;
        int ndim;
        int64_t shape[4];
        const char *msg;  // after "<path>: "
    } cases[] = {
        {"conv2.weight", 4, {32, 1, 3, 3}, "no tensor 'conv2.weight'"},
        {"conv1.weight", 4, {16, 1, 3, 3}, "tensor 'conv1.weight' has shape [32,1,3,3], expected [16,1,3,3]"},
        {"conv1.weight", 2, {32, 9}, "tensor 'conv1.weight' has shape [32,1,3,3], expected [32,9]"},
        {"conv1.bias", 0, {0}, "tensor 'conv1.bias' has shape [32], expected []"},
        {"step", 1, {1}, "tensor 'step' has shape [], expected [1]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err_clear();
        assert_int_equal(ckpt_read_tensor(f, cases[i].name, cases[i].ndim, cases[i].shape, dst), ST_INPUT);
        snprintf(want, sizeof want, "%s: %s", path, cases[i].msg);
        assert_string_equal(err_msg(), want);
    }
    for (size_t i = 0; i < 288; i++) assert_true(dst[i] == 0.0f);  // failed reads write nothing
    err_clear();
    ckpt_free(f);
}

// I64 (num_batches_tracked: a 0-dim count, as PyTorch saves it): written with dtype I64, read back exactly by
// ckpt_read_tensor_i64, and each reader refuses the other's dtype, naming both.
static void test_i64_round_trip_and_dtype_checked(void **state) {
    (void)state;
    const int64_t count = 1234567890123LL, counts[3] = {-1, 0, INT64_MAX};
    const float w[2] = {1.5f, -2.5f};
    const ckpt_tensor t[3] = {{.name = "bn1.num_batches_tracked", .data = &count, .ndim = 0, .dtype = CKPT_I64},
                              {.name = "bn1.weight", .data = w, .ndim = 1, .shape = {2}},
                              {.name = "counts", .data = counts, .ndim = 1, .shape = {3}, .dtype = CKPT_I64}};
    char path[512], want[700];
    snprintf(path, sizeof path, "%s", tu_path("i64.safetensors"));
    assert_int_equal(ckpt_save(path, t, 3, NULL, 0), ST_OK);
    ckpt_file *f = NULL;
    assert_int_equal(ckpt_load(path, &f), ST_OK);
    int64_t c = 0, cs[3] = {0};
    assert_int_equal(ckpt_read_tensor_i64(f, "bn1.num_batches_tracked", 0, NULL, &c), ST_OK);
    assert_true(c == count);
    const int64_t shape3[1] = {3};
    assert_int_equal(ckpt_read_tensor_i64(f, "counts", 1, shape3, cs), ST_OK);
    assert_memory_equal(cs, counts, sizeof counts);
    float x = 0;
    err_clear();
    assert_int_equal(ckpt_read_tensor(f, "bn1.num_batches_tracked", 0, NULL, &x), ST_INPUT);
    snprintf(want, sizeof want, "%s: tensor 'bn1.num_batches_tracked' has dtype I64, expected F32", path);
    assert_string_equal(err_msg(), want);
    err_clear();
    const int64_t shape2[1] = {2};
    assert_int_equal(ckpt_read_tensor_i64(f, "bn1.weight", 1, shape2, cs), ST_INPUT);
    snprintf(want, sizeof want, "%s: tensor 'bn1.weight' has dtype F32, expected I64", path);
    assert_string_equal(err_msg(), want);
    err_clear();
    assert_int_equal(ckpt_read_tensor_i64(f, "counts", 1, shape2, cs), ST_INPUT);  // shape checked too
    assert_non_null(strstr(err_msg(), "has shape [3], expected [2]"));
    err_clear();
    ckpt_free(f);
    // An unknown dtype code is refused at save.
    const ckpt_tensor bad = {.name = "x", .data = w, .ndim = 1, .shape = {2}, .dtype = 7};
    assert_int_equal(ckpt_save(tu_path("i64bad.safetensors"), &bad, 1, NULL, 0), ST_INPUT);
    err_clear();
}

static void test_unreadable_paths(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("missing.safetensors"));
    expect_load_error(path, strerror(ENOENT));
    snprintf(path, sizeof path, "%s", tu_path("dir.safetensors"));
    assert_int_equal(mkdir(path, 0755), 0);
    expect_load_error(path, "not a regular file");
}

// ---------------------------------------------------------------------------------------------------------
// Bounded input: only regular files are read, the header before the body, and the size must match it

static double seconds_since(double t0) { return now_s() - t0; }

static void test_special_files_refused_without_reading(void **state) {
    (void)state;
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s", tu_path("ck.fifo"));
    assert_int_equal(mkfifo(fifo, 0644), 0);
    const char *paths[] = {fifo, "/dev/zero", "/dev/null", tu_tmpdir()};
    const char *kinds[] = {"a FIFO", "a character device", "a character device", "a directory"};
    for (int i = 0; i < 4; i++) {
        double t0 = now_s();
        expect_load_error(paths[i], kinds[i]);
        assert_true(seconds_since(t0) < 1.0);  // never blocks on the FIFO, never reads the device
    }
    unlink(fifo);
}

// Bytes after the last tensor (an append, a file grown by truncate): refused from the header alone, so a
// 2 GiB sparse file costs no more than a small one.
static void test_trailing_bytes_refused(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 91);
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("trail.safetensors"));
    assert_int_equal(ckpt_save(path, fx.t, FX_N, fx.meta, FX_META), ST_OK);
    size_t size;
    unsigned char *b = file_read(path, &size);
    unsigned char *more = calloc(size + 600, 1);
    assert_non_null(more);
    memcpy(more, b, size);
    assert_int_equal(tu_write_file(path, more, size + 600, 0), 0);
    expect_load_error(path, "600 trailing bytes");
    assert_int_equal(truncate(path, (off_t)2 << 30), 0);  // sparse: 2 GiB
    double t0 = now_s();
    expect_load_error(path, "trailing bytes");
    assert_true(seconds_since(t0) < 1.0);
    assert_int_equal(truncate(path, (off_t)15 << 30), 0);  // 15 GiB: still input, not memory
    expect_load_error(path, "trailing bytes");
    unlink(path);
    free(more);
    free(b);
}

static void test_non_finite_values_refused(void **state) {
    (void)state;
    float v[4] = {1, 2, NAN, 4};
    ckpt_tensor t = {"conv1.weight", v, 1, {4}, CKPT_F32};
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("nan.safetensors"));
    assert_int_equal(ckpt_save(path, &t, 1, NULL, 0), ST_OK);
    ckpt_file *f = NULL;
    assert_int_equal(ckpt_load(path, &f), ST_OK);
    float back[4];
    assert_int_equal(ckpt_read_tensor(f, "conv1.weight", 1, (const int64_t[]){4}, back), ST_OK);
    err_clear();
    assert_int_equal(ckpt_require_finite(f, "conv1.weight", back, 4), ST_INPUT);
    assert_non_null(strstr(err_msg(), "tensor 'conv1.weight' holds 1 non-finite value(s) (first: NaN at element 2)"));
    err_clear();
    v[2] = -INFINITY;
    assert_int_equal(ckpt_require_finite(f, "x", v, 4), ST_INPUT);
    assert_non_null(strstr(err_msg(), "Inf at element 2"));
    err_clear();
    v[2] = 3;
    assert_int_equal(ckpt_require_finite(f, "x", v, 4), ST_OK);
    ckpt_free(f);
}

// --save never replaces a file that is not a checkpoint (a config, a data file given by mistake).
static void test_save_refuses_other_kinds(void **state) {
    (void)state;
    fixture fx;
    fixture_init(&fx, 95);
    char path[512];
    snprintf(path, sizeof path, "%s", tu_path("notackpt.cfg"));
    const char text[] = "[net]\nbatch=64\n";
    assert_int_equal(tu_write_file(path, text, sizeof text - 1, 0), 0);
    err_clear();
    assert_int_equal(ckpt_check_target(path), ST_INPUT);
    assert_non_null(strstr(err_msg(), "not a safetensors checkpoint"));
    err_clear();
    assert_int_equal(ckpt_save(path, fx.t, FX_N, fx.meta, FX_META), ST_INPUT);
    err_clear();
    size_t n;
    unsigned char *b = file_read(path, &n);
    assert_int_equal(n, sizeof text - 1);
    assert_memory_equal(b, text, n);
    free(b);
    // An empty file and an existing checkpoint may be replaced.
    assert_int_equal(tu_write_file(path, "", 0, 0), 0);
    assert_int_equal(ckpt_save(path, fx.t, FX_N, fx.meta, FX_META), ST_OK);
    assert_int_equal(ckpt_save(path, fx.t, FX_N, fx.meta, FX_META), ST_OK);
    expect_fixture(path, &fx);
}

// Temp files of saves that were killed midway (their process is gone) are removed when a run checks its --save
// target; those of a live process, and other files, stay.
static void test_stale_tmp_removed(void **state) {
    (void)state;
    const char *path = tu_path("stale.st");
    pid_t child = fork();
    if (child == 0) _exit(0);
    assert_true(child > 0);
    assert_int_equal(waitpid(child, NULL, 0), child);  // reaped: kill(child, 0) fails with ESRCH
    char dead[4200], live[4200], other[4200];
    snprintf(dead, sizeof dead, "%s.tmp.%ld", path, (long)child);
    snprintf(live, sizeof live, "%s.tmp.%ld", path, (long)getppid());
    snprintf(other, sizeof other, "%s.tmp.notapid", path);
    const char *files[3] = {dead, live, other};
    for (int i = 0; i < 3; i++) assert_int_equal(tu_write_file(files[i], "x", 1, 0), 0);
    err_clear();
    assert_int_equal(ckpt_check_target(path), ST_OK);
    assert_int_equal(access(dead, F_OK), -1);
    assert_int_equal(access(live, F_OK), 0);
    assert_int_equal(access(other, F_OK), 0);
    unlink(live), unlink(other);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stale_tmp_removed),
        cmocka_unit_test(test_round_trip_is_exact),
        cmocka_unit_test(test_file_is_safetensors),
        cmocka_unit_test(test_header_is_padded_to_8),
        cmocka_unit_test(test_overwrite_replaces_whole_file),
        cmocka_unit_test(test_failed_save_keeps_old_file),
        cmocka_unit_test(test_write_error_midway_keeps_old_file),
        cmocka_unit_test(test_read_only_dir),
        cmocka_unit_test(test_crash_mid_save_keeps_old_file),
        cmocka_unit_test(test_save_rejects_bad_tensors),
        cmocka_unit_test(test_truncated_files_are_rejected),
        cmocka_unit_test(test_bad_header_length),
        cmocka_unit_test(test_header_not_json),
        cmocka_unit_test(test_bad_entries),
        cmocka_unit_test(test_foreign_file_loads),
        cmocka_unit_test(test_read_tensor_mismatch),
        cmocka_unit_test(test_i64_round_trip_and_dtype_checked),
        cmocka_unit_test(test_unreadable_paths),
        cmocka_unit_test(test_special_files_refused_without_reading),
        cmocka_unit_test(test_trailing_bytes_refused),
        cmocka_unit_test(test_non_finite_values_refused),
        cmocka_unit_test(test_save_refuses_other_kinds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
