// fuzz_image_list.c — libFuzzer target: the list-file parser (image_set_list) with or without a class names file.
// Input: [classes u8: 0 = take them from the names file][names file length u32 LE][names file][list file].
// The list is a memfd (/proc/self/fd/N), so its relative paths resolve under /proc/self/fd/: "N 0" names the
// list itself, a regular file; absolute paths are only stat()ed ("/proc/self/exe 0" is a regular file).
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fuzz_util.h"
#include "image_set.h"

static void check_loaded(const image_set *s, int classes) {
    FUZZ_CHECK(s->n >= 1 && s->classes >= 1 && s->classes <= IMAGE_SET_MAX_CLASSES);
    FUZZ_CHECK(classes == 0 || s->classes == classes);
    FUZZ_CHECK(s->labels && s->sizes && s->path_off && s->paths && s->class_names);
    for (int c = 0; c < s->classes; c++) FUZZ_CHECK(s->class_names[c] && s->class_names[c][0] != '\0');
    size_t end = 0;
    for (int i = 0; i < s->n; i++) {
        FUZZ_CHECK(s->labels[i] >= 0 && s->labels[i] < s->classes);
        FUZZ_CHECK(s->path_off[i] == end);  // one pool, in order
        size_t l = strlen(image_set_path(s, i));
        FUZZ_CHECK(l >= 1 && l <= IMAGE_SET_MAX_PATH);
        end += l + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fuzz_file list, names;  // list first: its fd is the lower one
    if (size < 5) return 0;
    int classes = data[0];
    size_t n_names = fuzz_le32(data + 1);
    data += 5, size -= 5;
    if (n_names > size) n_names = size;
    fuzz_file_set(&list, data + n_names, size - n_names);
    fuzz_file_set(&names, data, n_names);
    const char *names_path = classes == 0 ? names.path : NULL;
    err_clear();
    image_set s;
    int st = image_set_list(list.path, names_path, classes, &s);
    if (st == ST_OK) {
        check_loaded(&s, classes);
        image_set t;  // the same input, the same set and digest
        FUZZ_CHECK(image_set_list(list.path, names_path, classes, &t) == ST_OK);
        FUZZ_CHECK(t.n == s.n && t.classes == s.classes && t.digest == s.digest);
        image_set_free(&t);
    } else {
        FUZZ_CHECK(err_status() == st && err_msg()[0] != '\0' && strchr(err_msg(), '\n') == NULL);
        FUZZ_CHECK(s.n == 0 && s.paths == NULL && s.labels == NULL && s.class_names == NULL);
    }
    image_set_free(&s);
    err_clear();
    return 0;
}
