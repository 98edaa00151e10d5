// test_image_set.c — image data sets as file lists: ImageFolder trees (class and file order as torchvision's,
// labels, the class filter, symlinks followed, loops and FIFOs refused, empty classes), list files (parsing,
// names files, every error with its line), the digest, and image_set_read (regular files, FIFOs, limits,
// vanished files, several threads at once), and --predict's inputs (directories, files and lists in order; every
// refusal). File contents are arbitrary bytes: nothing here decodes.
#include <errno.h>
#include <limits.h>
#include <pthread.h>
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
// Tree helpers

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

// mkdir -p
static void mkdirs(const char *path) {
    char tmp[8192];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST) fail_msg("mkdir %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) fail_msg("mkdir %s: %s", tmp, strerror(errno));
}

// A file of n bytes (value (i * 7 + seed) % 251), its directories created.
static void put(const char *path, size_t n, int seed) {
    char dir[8192];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = '\0';
        mkdirs(dir);
    }
    unsigned char *b = malloc(n ? n : 1);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)((i * 7 + (size_t)seed) % 251);
    assert_int_equal(tu_write_file(path, b, n, 0), 0);
    free(b);
}

static void put_text(const char *path, const char *text) { assert_int_equal(tu_write_file(path, text, strlen(text), 0), 0); }

// A fresh directory under the test's temp directory (mkdtemp); its own ring of buffers, so it outlives many P().
static const char *fresh(const char *name) {
    static char buf[32][4096];
    static int next;
    char *d = buf[next++ % 32];
    snprintf(d, sizeof buf[0], "%s/%s", tu_tmpdir(), name);
    mkdirs(d);
    return d;
}

static void expect_folder_error(const char *root, char *const *filter, int nf, const char *n1, const char *n2) {
    image_set s;
    err_clear();
    int st = image_set_folder(root, filter, nf, &s);
    if (st != ST_INPUT || !strstr(err_msg(), n1) || (n2 && !strstr(err_msg(), n2)))
        fail_msg("status %d, message '%s' (want ST_INPUT naming '%s' and '%s')", st, err_msg(), n1, n2 ? n2 : "");
    assert_null(strchr(err_msg(), '\n'));
    assert_int_equal(s.n, 0);
    assert_null(s.paths);
    assert_null(s.class_names);
    err_clear();
}

static void expect_list_error(const char *list, const char *names, int classes, const char *n1, const char *n2) {
    image_set s;
    err_clear();
    int st = image_set_list(list, names, classes, &s);
    if (st != ST_INPUT || !strstr(err_msg(), n1) || (n2 && !strstr(err_msg(), n2)))
        fail_msg("status %d, message '%s' (want ST_INPUT naming '%s' and '%s')", st, err_msg(), n1, n2 ? n2 : "");
    assert_int_equal(s.n, 0);
    assert_null(s.paths);
    err_clear();
}

// The sample paths relative to root (after "root/").
static void expect_samples(const image_set *s, const char *root, const char *const *rel, const int *labels, int n) {
    size_t rl = strlen(root);
    if (s->n != n) {
        for (int i = 0; i < s->n; i++) print_message("  %d: %s\n", i, image_set_path(s, i));
        fail_msg("%d samples, want %d", s->n, n);
    }
    for (int i = 0; i < n; i++) {
        const char *p = image_set_path(s, i);
        if (strncmp(p, root, rl) != 0 || p[rl] != '/' || strcmp(p + rl + 1, rel[i]) != 0 || s->labels[i] != labels[i]) {
            for (int k = 0; k < s->n; k++) print_message("  %d: %s (label %d)\n", k, image_set_path(s, k), s->labels[k]);
            fail_msg("sample %d is %s (label %d), want %s/%s (label %d)", i, p, s->labels[i], root, rel[i], labels[i]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// ImageFolder

// Class order (byte order: "A" < "B_" < "a" < "b" < "é"), file order (sorted(os.walk) sorts directories by
// whole path, so "d b" comes before "d/x"; names in byte order: upper case first), ignored extensions, labels.
static void test_folder_order(void **state) {
    (void)state;
    const char *r = fresh("order");
    put(P("%s/a/x.jpg", r), 10, 1);
    put(P("%s/a/B.PNG", r), 11, 2);
    put(P("%s/a/a.jpeg", r), 12, 3);
    put(P("%s/a/_y.JpG", r), 13, 4);
    put(P("%s/a/\xc3\xa9.jpg", r), 14, 5);  // "é.jpg": after every ASCII name
    put(P("%s/a/notes.txt", r), 15, 6);     // ignored
    put(P("%s/a/pic.gif", r), 15, 6);       // ignored (torchvision takes .bmp/.gif-like only from its own list)
    put(P("%s/a/pic.bmp", r), 15, 6);       // ignored here: not decodable by this trainer
    put(P("%s/a/jpg", r), 15, 6);           // no dot: ignored
    put(P("%s/a/d/z.jpg", r), 16, 7);
    put(P("%s/a/d/x/0.jpg", r), 17, 8);
    put(P("%s/a/d b/m.png", r), 18, 9);
    put(P("%s/a/d/x/deep/er/1.png", r), 19, 10);
    put(P("%s/b/only.png", r), 20, 11);
    put(P("%s/A/up.jpg", r), 21, 12);
    put(P("%s/B_/u.jpg", r), 22, 13);
    put(P("%s/\xc3\xa9t\xc3\xa9/e.jpg", r), 23, 14);  // "été"
    put(P("%s/file.jpg", r), 24, 15);                   // a file in the root: not a class, ignored
    image_set s;
    assert_int_equal(image_set_folder(r, NULL, 0, &s), ST_OK);
    assert_int_equal(s.classes, 5);
    const char *cls[5] = {"A", "B_", "a", "b", "\xc3\xa9t\xc3\xa9"};
    for (int c = 0; c < 5; c++) assert_string_equal(s.class_names[c], cls[c]);
    const char *rel[] = {"A/up.jpg",   "B_/u.jpg",   "a/B.PNG",  "a/_y.JpG",   "a/a.jpeg",
                         "a/x.jpg",    "a/\xc3\xa9.jpg", "a/d/z.jpg", "a/d b/m.png", "a/d/x/0.jpg",
                         "a/d/x/deep/er/1.png", "b/only.png", "\xc3\xa9t\xc3\xa9/e.jpg"};
    const int lab[] = {0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 4};
    expect_samples(&s, r, rel, lab, 13);
    assert_int_equal(s.sizes[0], 21);
    assert_int_equal(s.sizes[2], 11);
    assert_int_equal(s.sizes[12], 23);
    assert_string_equal(s.origin, r);
    // A root given with trailing slashes joins the same paths.
    image_set t;
    assert_int_equal(image_set_folder(P("%s//", r), NULL, 0, &t), ST_OK);
    expect_samples(&t, r, rel, lab, 13);
    assert_true(t.digest == s.digest);
    image_set_free(&t);
    image_set_free(&s);
    assert_null(s.paths);
    image_set_free(&s);  // twice: harmless
}

static void test_folder_class_filter(void **state) {
    (void)state;
    const char *r = fresh("val");
    put(P("%s/cat/1.jpg", r), 5, 1);
    put(P("%s/dog/1.jpg", r), 6, 2);
    put(P("%s/dog/2.jpg", r), 7, 3);
    char *train[] = {"ant", "cat", "cow", "dog"};
    image_set s;
    assert_int_equal(image_set_folder(r, train, 4, &s), ST_OK);
    assert_int_equal(s.classes, 4);  // the training set's numbering, "ant" and "cow" missing here
    for (int c = 0; c < 4; c++) assert_string_equal(s.class_names[c], train[c]);
    const char *rel[] = {"cat/1.jpg", "dog/1.jpg", "dog/2.jpg"};
    const int lab[] = {1, 3, 3};
    expect_samples(&s, r, rel, lab, 3);
    // The filter in another order: labels are positions in it.
    char *train2[] = {"dog", "zebra", "cat"};
    image_set t;
    assert_int_equal(image_set_folder(r, train2, 3, &t), ST_OK);
    const int lab2[] = {2, 0, 0};
    expect_samples(&t, r, rel, lab2, 3);
    assert_true(t.digest != s.digest);  // other class names, other labels
    image_set_free(&t);
    image_set_free(&s);
    // A class here that training does not have.
    put(P("%s/emu/1.jpg", r), 5, 1);
    expect_folder_error(r, train, 4, "class 'emu'", "not in the training set");
    char *dup[] = {"cat", "dog", "cat"};
    expect_folder_error(r, dup, 3, "'cat'", "twice");
}

static void test_folder_symlinks(void **state) {
    (void)state;
    const char *r = fresh("links");
    const char *ext = fresh("links-outside");
    put(P("%s/real.bin", ext), 30, 1);
    put(P("%s/dir/l.png", ext), 31, 2);
    put(P("%s/cls/dir/k.png", ext), 32, 3);
    put(P("%s/a/own.jpg", r), 33, 4);
    assert_int_equal(symlink(P("%s/real.bin", ext), P("%s/a/link.jpg", r)), 0);  // a symlink to a file
    assert_int_equal(symlink(P("%s/dir", ext), P("%s/a/linkdir", r)), 0);        // to a directory: walked
    assert_int_equal(symlink(P("%s/cls", ext), P("%s/b", r)), 0);                // a class directory symlink
    assert_int_equal(symlink("a", P("%s/b2", r)), 0);                           // a class aliasing class a: fine
    image_set s;
    assert_int_equal(image_set_folder(r, NULL, 0, &s), ST_OK);
    assert_int_equal(s.classes, 3);
    const char *rel[] = {"a/link.jpg", "a/own.jpg", "a/linkdir/l.png", "b/dir/k.png",
                         "b2/link.jpg", "b2/own.jpg", "b2/linkdir/l.png"};
    const int lab[] = {0, 0, 0, 1, 2, 2, 2};
    expect_samples(&s, r, rel, lab, 7);
    assert_int_equal(s.sizes[0], 30);  // the target's size
    image_set_free(&s);
    // A dangling symlink with an image name is refused; one with another name is ignored.
    assert_int_equal(symlink(P("%s/nothing", ext), P("%s/a/notes", r)), 0);
    assert_int_equal(image_set_folder(r, NULL, 0, &s), ST_OK);
    image_set_free(&s);
    assert_int_equal(symlink(P("%s/nothing", ext), P("%s/a/gone.png", r)), 0);
    expect_folder_error(r, NULL, 0, "a/gone.png", "dangling");
}

static void test_folder_symlink_loops(void **state) {
    (void)state;
    alarm(60);  // a walk that followed the loop would not end
    const char *r = fresh("loop");
    put(P("%s/a/1.jpg", r), 3, 1);
    put(P("%s/a/sub/2.jpg", r), 3, 1);
    assert_int_equal(symlink("..", P("%s/a/sub/up", r)), 0);  // back to the class directory
    expect_folder_error(r, NULL, 0, "a/sub/up", "symlink loop");
    const char *r2 = fresh("loop2");
    put(P("%s/a/1.jpg", r2), 3, 1);
    assert_int_equal(symlink(r2, P("%s/a/root", r2)), 0);  // back to the root
    expect_folder_error(r2, NULL, 0, "a/root", "symlink loop");
    const char *r3 = fresh("loop3");
    put(P("%s/a/1.jpg", r3), 3, 1);
    assert_int_equal(symlink(".", P("%s/a/self", r3)), 0);
    expect_folder_error(r3, NULL, 0, "a/self", "loop");
    alarm(0);
}

static void test_folder_special_files(void **state) {
    (void)state;
    alarm(30);  // never open a FIFO blocking
    const char *r = fresh("fifo");
    put(P("%s/a/1.jpg", r), 3, 1);
    assert_int_equal(mkfifo(P("%s/a/x.png", r), 0644), 0);
    expect_folder_error(r, NULL, 0, "a/x.png", "FIFO");
    unlink(P("%s/a/x.png", r));
    assert_int_equal(mkfifo(P("%s/a/pipe", r), 0644), 0);  // not an image name: ignored
    image_set s;
    assert_int_equal(image_set_folder(r, NULL, 0, &s), ST_OK);
    assert_int_equal(s.n, 1);
    image_set_free(&s);
    alarm(0);
}

static void test_folder_bad_roots(void **state) {
    (void)state;
    const char *r = fresh("empty-root");
    expect_folder_error(r, NULL, 0, r, "no class directories");
    put(P("%s/1.jpg", r), 3, 1);  // files in the root are not classes
    expect_folder_error(r, NULL, 0, r, "no class directories");
    mkdirs(P("%s/a", r));
    mkdirs(P("%s/b/sub", r));
    put(P("%s/b/sub/readme.txt", r), 3, 1);
    expect_folder_error(r, NULL, 0, r, "no image files");
    put(P("%s/b/sub/ok.jpg", r), 3, 1);
    expect_folder_error(r, NULL, 0, P("%s/a", r), "empty class directory");
    expect_folder_error(P("%s/missing", r), NULL, 0, "missing", "No such file");
    expect_folder_error(P("%s/1.jpg", r), NULL, 0, "1.jpg", "not a directory");
    expect_folder_error("", NULL, 0, "empty", NULL);
    if (geteuid() != 0) {  // root reads any directory
        const char *u = fresh("unreadable");
        put(P("%s/a/1.jpg", u), 3, 1);
        put(P("%s/a/s/2.jpg", u), 3, 1);
        assert_int_equal(chmod(P("%s/a/s", u), 0), 0);
        expect_folder_error(u, NULL, 0, "a/s", "cannot open directory");
        assert_int_equal(chmod(P("%s/a/s", u), 0755), 0);
        assert_int_equal(chmod(u, 0), 0);
        expect_folder_error(u, NULL, 0, u, "cannot open");
        assert_int_equal(chmod(u, 0755), 0);
    }
}

// Two identical trees under different roots agree; a changed size, name or class changes the digest.
static void test_folder_digest(void **state) {
    (void)state;
    uint64_t d[6];
    for (int k = 0; k < 6; k++) {
        const char *r = fresh(P("digest%d", k));
        put(P("%s/a/1.jpg", r), 100, 1);
        put(P("%s/a/s/2.jpg", r), k == 2 ? 101 : 100, 2);  // k 2: one byte more
        put(P("%s/%s/3.png", r, k == 4 ? "c" : "b"), 50, 3);  // k 4: class renamed
        if (k == 3) put(P("%s/a/s/2b.jpg", r), 100, 2);      // k 3: a file more
        if (k == 5) {  // k 5: a file renamed
            unlink(P("%s/a/1.jpg", r));
            put(P("%s/a/0.jpg", r), 100, 1);
        }
        image_set s;
        assert_int_equal(image_set_folder(r, NULL, 0, &s), ST_OK);
        d[k] = s.digest;
        image_set_free(&s);
    }
    assert_true(d[0] == d[1]);
    for (int k = 2; k < 6; k++)
        for (int j = 0; j < k; j++)
            if (d[k] == d[j]) fail_msg("digest of tree %d equals tree %d's", k, j);
}

// ---------------------------------------------------------------------------------------------------------
// List files

static void test_list_good(void **state) {
    (void)state;
    const char *L = fresh("list");
    const char *abs_dir = fresh("list-abs");
    put(P("%s/imgs/a b.jpg", L), 10, 1);
    put(P("%s/imgs/c.jpg", L), 11, 2);
    put(P("%s/d.png", abs_dir), 12, 3);
    put(P("%s/any.bin", L), 13, 4);  // any name: the list says what is an image
    put_text(P("%s/train.txt", L), P("# comment line\n"
                                      "imgs/a b.jpg 0\n"
                                      "\n"
                                      "   \t\n"
                                      "  imgs/c.jpg\t 1  \n"
                                      "   # indented comment\n"
                                      "%s/d.png 2\r\n"
                                      "any.bin +1\n"
                                      "imgs/a b.jpg 2",  // no final newline; repeated paths are fine
                                      abs_dir));
    put_text(P("%s/names.txt", L), "cat\nsea lion \r\ndog\n");
    image_set s;
    assert_int_equal(image_set_list(P("%s/train.txt", L), P("%s/names.txt", L), 0, &s), ST_OK);
    assert_int_equal(s.n, 5);
    assert_int_equal(s.classes, 3);
    assert_string_equal(s.class_names[0], "cat");
    assert_string_equal(s.class_names[1], "sea lion");
    assert_string_equal(s.class_names[2], "dog");
    assert_string_equal(image_set_path(&s, 0), P("%s/imgs/a b.jpg", L));
    assert_string_equal(image_set_path(&s, 1), P("%s/imgs/c.jpg", L));
    assert_string_equal(image_set_path(&s, 2), P("%s/d.png", abs_dir));
    assert_string_equal(image_set_path(&s, 3), P("%s/any.bin", L));
    assert_string_equal(image_set_path(&s, 4), P("%s/imgs/a b.jpg", L));
    const int lab[] = {0, 1, 2, 1, 2};
    const uint64_t sz[] = {10, 11, 12, 13, 10};
    for (int i = 0; i < 5; i++) {
        assert_int_equal(s.labels[i], lab[i]);
        assert_int_equal(s.sizes[i], sz[i]);
    }
    assert_string_equal(s.origin, P("%s/train.txt", L));
    // The same names given with a matching count; without a names file the names are the numbers.
    image_set t;
    assert_int_equal(image_set_list(P("%s/train.txt", L), P("%s/names.txt", L), 3, &t), ST_OK);
    assert_true(t.digest == s.digest);
    image_set_free(&t);
    assert_int_equal(image_set_list(P("%s/train.txt", L), NULL, 5, &t), ST_OK);
    assert_int_equal(t.classes, 5);
    for (int c = 0; c < 5; c++) assert_string_equal(t.class_names[c], P("%d", c));
    assert_true(t.digest != s.digest);
    image_set_free(&t);
    image_set_free(&s);
    // A list path without a directory: relative to the working directory.
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(L), 0);
    put_text("rel.txt", "imgs/c.jpg 0\n");
    assert_int_equal(image_set_list("rel.txt", NULL, 1, &t), ST_OK);
    assert_string_equal(image_set_path(&t, 0), "imgs/c.jpg");
    image_set_free(&t);
    assert_int_equal(chdir(cwd), 0);
}

static void test_list_digest(void **state) {
    (void)state;
    uint64_t d[4];
    for (int k = 0; k < 4; k++) {
        const char *L = fresh(P("list-digest%d", k));
        put(P("%s/x/1.jpg", L), k == 2 ? 9 : 8, 1);
        put(P("%s/x/2.jpg", L), 8, 1);
        put_text(P("%s/l.txt", L), k == 3 ? "x/1.jpg 0\nx/2.jpg 0\n" : "x/1.jpg 0\nx/2.jpg 1\n");
        image_set s;
        assert_int_equal(image_set_list(P("%s/l.txt", L), NULL, 2, &s), ST_OK);
        d[k] = s.digest;
        image_set_free(&s);
    }
    assert_true(d[0] == d[1]);  // other directory, same list
    assert_true(d[2] != d[0]);  // a size
    assert_true(d[3] != d[0]);  // a label
}

static void test_list_errors(void **state) {
    (void)state;
    alarm(30);
    const char *L = fresh("list-bad");
    put(P("%s/ok.jpg", L), 10, 1);
    mkdirs(P("%s/adir", L));
    const char *list = P("%s/l.txt", L);
    char *lst = strdup(list);
    put_text(lst, "ok.jpg 1\n# c\nmissing.jpg 0\n");
    expect_list_error(lst, NULL, 10, "l.txt:3:", "missing.jpg: No such file");
    put_text(lst, "ok.jpg 1\nadir 0\n");
    expect_list_error(lst, NULL, 10, "l.txt:2:", "is a directory, not a regular file");
    put_text(lst, "\nok.jpg\n");
    expect_list_error(lst, NULL, 10, "l.txt:2:", "no label");
    put_text(lst, "ok.jpg x1\n");
    expect_list_error(lst, NULL, 10, "l.txt:1:", "label 'x1' is not an integer");
    put_text(lst, "ok.jpg 1.5\n");
    expect_list_error(lst, NULL, 10, "l.txt:1:", "not an integer");
    put_text(lst, "ok.jpg 3\nok.jpg 12\n");
    expect_list_error(lst, NULL, 10, "l.txt:2: label 12 is out of range [0, 10)", NULL);
    put_text(lst, "ok.jpg -1\n");
    expect_list_error(lst, NULL, 10, "l.txt:1: label -1 is out of range [0, 10)", NULL);
    put_text(lst, "ok.jpg 99999999999999999999999\n");
    expect_list_error(lst, NULL, 10, "l.txt:1: label 99999999999999999999999 is out of range", NULL);
    put_text(lst, "# only comments\n\n");
    expect_list_error(lst, NULL, 10, "l.txt", "no samples");
    put_text(lst, "");
    expect_list_error(lst, NULL, 10, "l.txt", "no samples");
    assert_int_equal(tu_write_file(lst, "ok.jpg 1\nok\0.jpg 1\n", 19, 0), 0);
    expect_list_error(lst, NULL, 10, "l.txt:2:", "NUL");
    // A path longer than 4095 bytes.
    size_t long_n = 5000;
    char *longl = malloc(long_n + 8);
    assert_non_null(longl);
    memset(longl, 'a', long_n);
    memcpy(longl + long_n, " 0\n", 4);
    put_text(lst, longl);
    free(longl);
    expect_list_error(lst, NULL, 10, "l.txt:1:", "longer than 4095");
    // Class counts and names files.
    put_text(lst, "ok.jpg 1\n");
    expect_list_error(lst, NULL, 0, "l.txt", "classes must be");
    expect_list_error(lst, NULL, IMAGE_SET_MAX_CLASSES + 1, "l.txt", "classes must be");
    const char *names = P("%s/n.txt", L);
    char *nm = strdup(names);
    put_text(nm, "cat\n\ndog\n");
    expect_list_error(lst, nm, 0, "n.txt:2:", "empty class name");
    put_text(nm, "cat\n  \t\ndog\n");
    expect_list_error(lst, nm, 0, "n.txt:2:", "empty class name");
    put_text(nm, "cat\ndog\ncat\n");
    expect_list_error(lst, nm, 0, "n.txt:3: duplicate class name 'cat' (also on line 1)", NULL);
    put_text(nm, "");
    expect_list_error(lst, nm, 0, "n.txt", "no class names");
    put_text(nm, "cat\n");  // one class: label 1 out of range
    expect_list_error(lst, nm, 0, "l.txt:1: label 1 is out of range [0, 1)", NULL);
    put_text(nm, "cat\ndog\n");
    expect_list_error(lst, nm, 5, "n.txt", "2 class names, but 5");
    expect_list_error(lst, P("%s/nope.txt", L), 0, "nope.txt", "cannot open");
    // The list itself: missing, a directory, a FIFO (refused without blocking).
    expect_list_error(P("%s/none.txt", L), NULL, 10, "none.txt", "cannot open");
    expect_list_error(P("%s/adir", L), NULL, 10, "adir", "directory");
    assert_int_equal(mkfifo(P("%s/fifo.txt", L), 0644), 0);
    expect_list_error(P("%s/fifo.txt", L), NULL, 10, "fifo.txt", "FIFO");
    expect_list_error("", NULL, 10, "empty", NULL);
    // A FIFO named in the list: stat only, refused.
    put_text(lst, "fifo.txt 1\n");
    expect_list_error(lst, NULL, 10, "l.txt:1:", "FIFO");
    free(lst);
    free(nm);
    alarm(0);
}

// 200,000 samples (one file listed again and again): one path pool, offsets in order, quickly.
static void test_list_large(void **state) {
    (void)state;
    const char *L = fresh("list-large");
    put(P("%s/train/n01440764/n01440764_10026.JPEG", L), 1000, 1);
    const int n = 200000;
    const char *line = "train/n01440764/n01440764_10026.JPEG 7\n";
    size_t ll = strlen(line);
    char *text = malloc((size_t)n * ll + 1);
    assert_non_null(text);
    for (int i = 0; i < n; i++) memcpy(text + (size_t)i * ll, line, ll);
    char *lst = strdup(P("%s/big.txt", L));
    assert_int_equal(tu_write_file(lst, text, (size_t)n * ll, 0), 0);
    free(text);
    double t0 = now_s();
    image_set s;
    assert_int_equal(image_set_list(lst, NULL, 1000, &s), ST_OK);
    double dt = now_s() - t0;
    print_message("200000-line list: %.3f s\n", dt);
    assert_int_equal(s.n, n);
    size_t plen = strlen(image_set_path(&s, 0)) + 1;
    for (int i = 0; i < n; i++) {
        assert_true(s.path_off[i] == (size_t)i * plen);
        assert_int_equal(s.labels[i], 7);
    }
    assert_string_equal(image_set_path(&s, n - 1), P("%s/train/n01440764/n01440764_10026.JPEG", L));
    image_set_free(&s);
    free(lst);
}

// ---------------------------------------------------------------------------------------------------------
// Reading samples

static void test_read(void **state) {
    (void)state;
    alarm(30);
    const char *L = fresh("read");
    put(P("%s/a.jpg", L), 5000, 1);
    put(P("%s/b.jpg", L), 0, 2);
    put(P("%s/c.jpg", L), 300, 3);
    put(P("%s/d.jpg", L), 10, 4);
    put(P("%s/e.jpg", L), 10, 4);
    put(P("%s/f.jpg", L), 10, 4);
    put(P("%s/target.jpg", L), 77, 5);
    assert_int_equal(symlink("target.jpg", P("%s/g.jpg", L)), 0);
    put_text(P("%s/l.txt", L), "a.jpg 0\nb.jpg 0\nc.jpg 0\nd.jpg 0\ne.jpg 0\nf.jpg 0\ng.jpg 0\n");
    image_set s;
    assert_int_equal(image_set_list(P("%s/l.txt", L), NULL, 1, &s), ST_OK);
    uint8_t *buf = NULL;
    size_t cap = 0, n = 99;
    char err[256];
    // Regular files, the buffer grown once and reused; an empty file; a symlink to a file.
    assert_int_equal(image_set_read(&s, 2, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_OK);
    assert_int_equal(n, 300);
    for (size_t i = 0; i < n; i++) assert_int_equal(buf[i], (i * 7 + 3) % 251);
    assert_int_equal(image_set_read(&s, 0, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_OK);
    assert_int_equal(n, 5000);
    assert_true(cap >= 5000);
    for (size_t i = 0; i < n; i++) assert_int_equal(buf[i], (i * 7 + 1) % 251);
    uint8_t *same = buf;
    assert_int_equal(image_set_read(&s, 2, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_OK);
    assert_ptr_equal(buf, same);
    assert_int_equal(image_set_read(&s, 1, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_OK);
    assert_int_equal(n, 0);
    assert_int_equal(image_set_read(&s, 6, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_OK);
    assert_int_equal(n, 77);
    // Too large.
    assert_int_equal(image_set_read(&s, 0, 4999, &buf, &cap, &n, err, sizeof err), ST_INPUT);
    assert_non_null(strstr(err, "a.jpg: 5000 bytes, more than the limit of 4999"));
    // A FIFO put where an image was (after the scan): refused, not blocking.
    unlink(P("%s/d.jpg", L));
    assert_int_equal(mkfifo(P("%s/d.jpg", L), 0644), 0);
    assert_int_equal(image_set_read(&s, 3, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_INPUT);
    assert_non_null(strstr(err, "d.jpg: is a FIFO"));
    // Vanished; replaced by a directory.
    unlink(P("%s/e.jpg", L));
    assert_int_equal(image_set_read(&s, 4, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_INPUT);
    assert_non_null(strstr(err, "e.jpg: cannot open: No such file"));
    unlink(P("%s/f.jpg", L));
    mkdirs(P("%s/f.jpg", L));
    assert_int_equal(image_set_read(&s, 5, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_INPUT);
    assert_non_null(strstr(err, "f.jpg: is a directory"));
    // Index out of range; no error buffer.
    assert_int_equal(image_set_read(&s, 7, 1 << 20, &buf, &cap, &n, err, sizeof err), ST_RUNTIME);
    assert_int_equal(image_set_read(&s, -1, 1 << 20, &buf, &cap, &n, NULL, 0), ST_RUNTIME);
    assert_int_equal(err_status(), ST_OK);  // the global error state is untouched
    free(buf);
    image_set_free(&s);
    alarm(0);
}

// Several threads read every sample at once, each with its own buffer.
typedef struct reader_arg {
    const image_set *s;
    int bad;
} reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    char err[256];
    for (int rep = 0; rep < 20; rep++)
        for (int i = 0; i < a->s->n; i++) {
            if (image_set_read(a->s, i, 1 << 20, &buf, &cap, &n, err, sizeof err) != ST_OK || n != a->s->sizes[i]) {
                a->bad++;
                continue;
            }
            for (size_t k = 0; k < n; k++)
                if (buf[k] != (k * 7 + (size_t)i) % 251) a->bad++;
        }
    free(buf);
    return NULL;
}

static void test_read_threads(void **state) {
    (void)state;
    const char *r = fresh("threads");
    for (int i = 0; i < 40; i++) put(P("%s/c%d/%03d.jpg", r, i % 4, i), (size_t)(100 + 37 * i), 0);
    image_set s;
    assert_int_equal(image_set_folder(r, NULL, 0, &s), ST_OK);
    assert_int_equal(s.n, 40);
    // The seed of each file is 0; rewrite so that sample i holds seed i (its position in the set).
    for (int i = 0; i < s.n; i++) put(image_set_path(&s, i), (size_t)s.sizes[i], i);
    pthread_t th[4];
    reader_arg a[4];
    for (int t = 0; t < 4; t++) {
        a[t] = (reader_arg){&s, 0};
        assert_int_equal(pthread_create(&th[t], NULL, reader, &a[t]), 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(a[t].bad, 0);
    }
    image_set_free(&s);
}

// ---------------------------------------------------------------------------------------------------------
// --predict's inputs

// A path from a format that must outlive many P() calls: a ring of 128 buffers (a test keeps fewer).
static const char *S(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *S(const char *fmt, ...) {
    static char buf[128][4096];
    static int next;
    char *p = buf[next++ % 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p, sizeof buf[0], fmt, ap);
    va_end(ap);
    return p;
}

// The full sample paths, all labels 0, no classes.
static void expect_inputs(const image_set *s, const char *const *full, int n) {
    if (s->n != n) {
        for (int i = 0; i < s->n; i++) print_message("  %d: %s\n", i, image_set_path(s, i));
        fail_msg("%d samples, want %d", s->n, n);
    }
    for (int i = 0; i < n; i++) {
        if (strcmp(image_set_path(s, i), full[i]) != 0) {
            for (int k = 0; k < s->n; k++) print_message("  %d: %s\n", k, image_set_path(s, k));
            fail_msg("sample %d is %s, want %s", i, image_set_path(s, i), full[i]);
        }
        assert_int_equal(s->labels[i], 0);
    }
    assert_int_equal(s->classes, 0);
    assert_null(s->class_names);
}

static void expect_inputs_error(const char *const *paths, int n, const char *n1, const char *n2) {
    image_set s;
    err_clear();
    int st = image_set_inputs(paths, n, &s);
    if (st != ST_INPUT || !strstr(err_msg(), n1) || (n2 && !strstr(err_msg(), n2)))
        fail_msg("status %d, message '%s' (want ST_INPUT naming '%s' and '%s')", st, err_msg(), n1, n2 ? n2 : "");
    assert_null(strchr(err_msg(), '\n'));
    assert_int_equal(s.n, 0);
    assert_null(s.paths);
    assert_null(s.labels);
    err_clear();
}

// A directory (walked as one class directory of a folder set), a single file and a list, in the order given.
static void test_inputs_mix(void **state) {
    (void)state;
    const char *r = fresh("inputs");
    const char *D = S("%s/dir", r);
    put(S("%s/b.jpg", D), 10, 1);
    put(S("%s/A.PNG", D), 11, 2);
    put(S("%s/sub/c.jpeg", D), 12, 3);
    put(S("%s/sub b/m.png", D), 13, 4);  // sorted(os.walk): "sub" < "sub b" < "sub/deep" (whole paths)
    put(S("%s/sub/deep/d.jpg", D), 14, 5);
    put(S("%s/notes.txt", D), 15, 6);      // ignored
    put(S("%s/sub/pic.gif", D), 15, 6);    // ignored
    mkdirs(S("%s/empty/deeper", D));       // no images: nothing
    const char *F = S("%s/other/one.JPG", r);
    put(F, 20, 7);
    const char *abs_file = S("%s/abs/z.bin", r);
    put(abs_file, 21, 8);
    put(S("%s/lists/imgs/x.bin", r), 22, 9);  // any name in a list
    put(S("%s/lists/imgs/a b.jpg", r), 23, 10);
    put(S("%s/lists/imgs/y.png", r), 24, 11);
    put(S("%s/lists/imgs/n 7.png", r), 25, 12);
    const char *L = S("%s/lists/l.txt", r);
    put_text(L, S("# a comment\n"
                  "imgs/x.bin\n"
                  "imgs/a b.jpg\n"     // no label: the last field is not an integer, the whole line is the path
                  "\n"
                  "   # indented comment\n"
                  "  imgs/y.png\t 3 \r\n"  // a label: read and ignored
                  "%s -1\n"             // absolute, a negative label: ignored too
                  "imgs/n 7.png 0\n",   // a name ending in a number needs the label
                  abs_file));
    const char *in[] = {F, D, L};
    image_set s;
    assert_int_equal(image_set_inputs(in, 3, &s), ST_OK);
    const char *want[] = {F,
                          S("%s/A.PNG", D),
                          S("%s/b.jpg", D),
                          S("%s/sub/c.jpeg", D),
                          S("%s/sub b/m.png", D),
                          S("%s/sub/deep/d.jpg", D),
                          S("%s/lists/imgs/x.bin", r),
                          S("%s/lists/imgs/a b.jpg", r),
                          S("%s/lists/imgs/y.png", r),
                          abs_file,
                          S("%s/lists/imgs/n 7.png", r)};
    expect_inputs(&s, want, 11);
    const uint64_t sizes[] = {20, 11, 10, 12, 13, 14, 22, 23, 24, 21, 25};
    for (int i = 0; i < 11; i++) assert_int_equal(s.sizes[i], sizes[i]);
    assert_string_equal(s.origin, S("%s and 2 more", F));
    // The same inputs again: the same digest; a directory given with trailing slashes joins the same paths.
    const char *in_slash[] = {F, S("%s//", D), L};
    image_set t;
    assert_int_equal(image_set_inputs(in_slash, 3, &t), ST_OK);
    expect_inputs(&t, want, 11);
    assert_true(t.digest == s.digest);
    image_set_free(&t);
    // Another order: the samples follow it, and the digest differs.
    const char *in2[] = {L, F};
    assert_int_equal(image_set_inputs(in2, 2, &t), ST_OK);
    const char *want2[] = {want[6], want[7], want[8], want[9], want[10], F};
    expect_inputs(&t, want2, 6);
    assert_true(t.digest != s.digest);
    image_set_free(&t);
    // One file: origin is its path; the same file twice is two samples.
    const char *one[] = {F};
    assert_int_equal(image_set_inputs(one, 1, &t), ST_OK);
    expect_inputs(&t, one, 1);
    assert_string_equal(t.origin, F);
    uint64_t d1 = t.digest;
    image_set_free(&t);
    const char *twice[] = {F, F};
    assert_int_equal(image_set_inputs(twice, 2, &t), ST_OK);
    expect_inputs(&t, twice, 2);
    assert_true(t.digest != d1);
    image_set_free(&t);
    // A changed size changes the digest.
    put(F, 19, 7);
    assert_int_equal(image_set_inputs(in, 3, &t), ST_OK);
    assert_true(t.digest != s.digest);
    image_set_free(&t);
    // A directory without images among others is fine.
    const char *with_empty[] = {S("%s/empty", D), F};
    assert_int_equal(image_set_inputs(with_empty, 2, &t), ST_OK);
    expect_inputs(&t, one, 1);
    image_set_free(&t);
    image_set_free(&s);
    assert_null(s.paths);
}

static void test_inputs_errors(void **state) {
    (void)state;
    alarm(30);  // a FIFO must never be opened blocking
    const char *r = fresh("inputs-bad");
    const char *ok = S("%s/ok.jpg", r);
    put(ok, 5, 1);
    const char *missing[] = {ok, S("%s/missing.jpg", r)};
    expect_inputs_error(missing, 2, "missing.jpg", "No such file");
    // No images at all: named paths.
    const char *E1 = S("%s/e1", r), *E2 = S("%s/e2", r);
    put(S("%s/readme.txt", E1), 3, 1);
    mkdirs(S("%s/sub", E2));
    const char *empty1[] = {E1};
    expect_inputs_error(empty1, 1, E1, "no images");
    const char *empty2[] = {E1, E2};
    expect_inputs_error(empty2, 2, S("%s, %s", E1, E2), "no images");
    const char *C = S("%s/comments.txt", r);
    put_text(C, "# nothing\n\n");
    const char *empty3[] = {C, E1};
    expect_inputs_error(empty3, 2, C, "no images");
    // A FIFO named like an image, given directly or found in a directory; one named like a list.
    const char *fifo = S("%s/x.png", r);
    assert_int_equal(mkfifo(fifo, 0644), 0);
    const char *f1[] = {ok, fifo};
    expect_inputs_error(f1, 2, "x.png", "FIFO");
    const char *pipe = S("%s/pipe", r);
    assert_int_equal(mkfifo(pipe, 0644), 0);
    const char *f2[] = {pipe};
    expect_inputs_error(f2, 1, "pipe", "FIFO");
    const char *FD = S("%s/fifo-dir", r);
    put(S("%s/1.jpg", FD), 3, 1);
    mkdirs(S("%s/sub", FD));
    assert_int_equal(mkfifo(S("%s/sub/y.jpg", FD), 0644), 0);
    const char *f3[] = {FD};
    expect_inputs_error(f3, 1, "sub/y.jpg", "FIFO");
    // A list entry: a FIFO, a missing file, a directory; a NUL byte.
    const char *LF = S("%s/lf.txt", r);
    put_text(LF, "ok.jpg\nx.png 0\n");
    const char *l1[] = {LF};
    expect_inputs_error(l1, 1, "lf.txt:2", "FIFO");
    put_text(LF, "ok.jpg\n# c\nnope.jpg\n");
    expect_inputs_error(l1, 1, "lf.txt:3", "nope.jpg");
    put_text(LF, "e1\n");
    expect_inputs_error(l1, 1, "lf.txt:1", "directory");
    assert_int_equal(tu_write_file(LF, "ok.jpg\nbad\0.jpg\n", 16, 0), 0);
    expect_inputs_error(l1, 1, "lf.txt:2", "NUL");
    // A dangling symlink; an empty path; no paths.
    const char *dangling = S("%s/gone.jpg", r);
    assert_int_equal(symlink(S("%s/nothing", r), dangling), 0);
    const char *d1[] = {dangling};
    expect_inputs_error(d1, 1, "gone.jpg", "No such file");
    const char *e[] = {ok, ""};
    expect_inputs_error(e, 2, "input 2 of 2", "empty");
    expect_inputs_error(NULL, 0, "no inputs", NULL);
    // A symlink loop inside a directory given.
    const char *LD = S("%s/loopdir", r);
    put(S("%s/a.jpg", LD), 3, 1);
    mkdirs(S("%s/sub", LD));
    assert_int_equal(symlink("..", S("%s/sub/up", LD)), 0);
    const char *l2[] = {LD};
    expect_inputs_error(l2, 1, "sub/up", "symlink loop");
    alarm(0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_folder_order),         cmocka_unit_test(test_folder_class_filter),
        cmocka_unit_test(test_folder_symlinks),      cmocka_unit_test(test_folder_symlink_loops),
        cmocka_unit_test(test_folder_special_files), cmocka_unit_test(test_folder_bad_roots),
        cmocka_unit_test(test_folder_digest),        cmocka_unit_test(test_list_good),
        cmocka_unit_test(test_list_digest),          cmocka_unit_test(test_list_errors),
        cmocka_unit_test(test_list_large),           cmocka_unit_test(test_read),
        cmocka_unit_test(test_read_threads),         cmocka_unit_test(test_inputs_mix),
        cmocka_unit_test(test_inputs_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
