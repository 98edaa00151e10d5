// fuzz_cifar10.c — libFuzzer target: the CIFAR-10 binary loader (data_load_cifar10) on 1 to 3 files.
// Input: [files-1 (bits 0-1, 3 means 3) | limit (bits 2-7)][length of file 1 u32 LE][length of file 2 u32 LE]
// [file 1][file 2][file 3 = the rest].
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "data.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fuzz_file files[3];
    if (size < 9) return 0;
    int n_files = 1 + (data[0] & 3);
    if (n_files > 3) n_files = 3;
    int limit = data[0] >> 2;
    size_t len[3] = {fuzz_le32(data + 1), fuzz_le32(data + 5), 0};
    data += 9, size -= 9;
    const char *paths[3];
    const uint8_t *first = data;  // file 1, for the content check
    for (int i = 0; i < n_files; i++) {
        size_t n = i == n_files - 1 || len[i] > size ? size : len[i];
        fuzz_file_set(&files[i], data, n);
        paths[i] = files[i].path;
        data += n, size -= n;
    }
    err_clear();
    dataset d;
    int st = data_load_cifar10(paths, n_files, limit, &d);
    if (st == ST_OK) {
        FUZZ_CHECK(d.n >= 1 && (limit == 0 || d.n <= limit));
        FUZZ_CHECK(d.c == 3 && d.h == 32 && d.w == 32 && d.classes == 10 && d.images && d.labels);
        unsigned sum = 0;
        for (size_t i = 0; i < (size_t)d.n * 3072; i++) sum += d.images[i];
        for (int i = 0; i < d.n; i++) FUZZ_CHECK(d.labels[i] < 10);
        (void)sum;
        // A raw first file: its first record is sample 0 (label byte, then the 3072 pixels).
        if (!(first[0] == 0x1f && first[1] == 0x8b))
            FUZZ_CHECK(d.labels[0] == first[0] && memcmp(d.images, first + 1, 3072) == 0);
    } else {
        FUZZ_CHECK(err_status() == st && err_msg()[0] != '\0');
        FUZZ_CHECK(d.images == NULL && d.labels == NULL && d.n == 0);
    }
    data_free(&d);
    return 0;
}
