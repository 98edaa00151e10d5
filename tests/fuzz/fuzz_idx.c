// fuzz_idx.c — libFuzzer target: the IDX loader (data_load_idx) on an image file and a label file, each raw
// or gzip (detected by content, as for real files: corrupt gzip members are fuzzed here too).
// Input: [limit u8][classes u8][image file length u32 LE][image file][label file].
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "data.h"
#include "fuzz_util.h"

static void check_loaded(const dataset *d, int classes, int limit) {
    FUZZ_CHECK(d->n >= 1 && (limit == 0 || d->n <= limit));
    FUZZ_CHECK(d->c == 1 && d->h >= 1 && d->w >= 1 && d->classes == classes);
    FUZZ_CHECK(d->images != NULL && d->labels != NULL);
    unsigned sum = 0;
    size_t bytes = (size_t)d->n * (size_t)d->h * (size_t)d->w;
    for (size_t i = 0; i < bytes; i++) sum += d->images[i];  // every byte must be addressable
    for (int i = 0; i < d->n; i++) FUZZ_CHECK(d->labels[i] < classes);
    (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fuzz_file img, lab;
    if (size < 6) return 0;
    int limit = data[0];
    int classes = 2 + data[1] % 255;
    size_t n_img = fuzz_le32(data + 2);
    data += 6, size -= 6;
    if (n_img > size) n_img = size;
    fuzz_file_set(&img, data, n_img);
    fuzz_file_set(&lab, data + n_img, size - n_img);
    err_clear();
    dataset d;
    int st = data_load_idx(img.path, lab.path, classes, limit, &d);
    if (st == ST_OK) {
        check_loaded(&d, classes, limit);
        // Raw files: the samples are exactly the bytes after the headers (16 and 8 bytes).
        const uint8_t *im = data, *lb = data + n_img;
        if (!(im[0] == 0x1f && im[1] == 0x8b)) FUZZ_CHECK(memcmp(d.images, im + 16, (size_t)d.n * d.h * d.w) == 0);
        if (!(lb[0] == 0x1f && lb[1] == 0x8b))
            for (int i = 0; i < d.n; i++) FUZZ_CHECK(d.labels[i] == lb[8 + i]);
    } else {
        FUZZ_CHECK(err_status() == st && err_msg()[0] != '\0');
        FUZZ_CHECK(d.images == NULL && d.labels == NULL && d.n == 0);
    }
    data_free(&d);
    return 0;
}
