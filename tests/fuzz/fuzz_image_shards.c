// fuzz_image_shards.c — libFuzzer target: the tar shard index (image_set_shards: ustar / GNU / pax headers,
// grouping by key, .cls labels) and the reads by offset. Input: [classes u8, 0 read as 1][the shard's bytes], a
// memfd named /proc/self/fd/N (no braces: one shard). A loaded set must be consistent (labels in range, offsets
// and sizes within the shard, shard_first increasing) and every sample must read back exactly its bytes; a bad
// shard gives ST_INPUT with a one-line message.
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fuzz_util.h"
#include "image_set.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fuzz_file shard;
    if (size < 1) return 0;
    const int classes = data[0] ? data[0] : 1;
    const uint8_t *tar = data + 1;
    const size_t n_tar = size - 1;
    fuzz_file_set(&shard, tar, n_tar);
    err_clear();
    image_set s;
    int st = image_set_shards(shard.path, NULL, classes, &s);
    if (st == ST_OK) {
        FUZZ_CHECK(s.n >= 1 && s.classes == classes && s.n_shards == 1 && s.offsets && s.shard_first);
        FUZZ_CHECK(s.shard_first[0] == 0 && s.shard_first[1] == (uint32_t)s.n);
        uint8_t *buf = NULL;
        size_t cap = 0, n = 0;
        char err[512];
        for (int i = 0; i < s.n; i++) {
            FUZZ_CHECK(s.labels[i] >= 0 && s.labels[i] < classes && s.shard[i] == 0);
            FUZZ_CHECK(s.offsets[i] <= n_tar && s.sizes[i] <= n_tar - s.offsets[i]);
            FUZZ_CHECK(image_set_read(&s, i, 1 << 30, &buf, &cap, &n, err, sizeof err) == ST_OK);
            FUZZ_CHECK(n == s.sizes[i] && (n == 0 || memcmp(buf, tar + s.offsets[i], n) == 0));
        }
        free(buf);
    } else {
        FUZZ_CHECK(err_status() == st && err_msg()[0] != '\0' && strchr(err_msg(), '\n') == NULL);
    }
    image_set_free(&s);
    err_clear();
    return 0;
}
