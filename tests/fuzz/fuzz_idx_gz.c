// fuzz_idx_gz.c — libFuzzer target: the IDX loader's gzip path. The fuzzer mutates the decompressed IDX bytes
// (mutating compressed bytes rarely gets past the CRC), the harness gzips them, and the flags byte damages the
// stream the way real downloads are damaged: cut short, trailing garbage, a second member.
// Input: [flags u8][limit u8][classes u8][image length u32 LE][image bytes][label bytes].
//   flags bit 0/1: gzip the image/label file; bit 2: cut 1..16 bytes (bits 4-7) off the image stream;
//   bit 3: append those bytes of garbage to the image stream instead.
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common.h"
#include "data.h"
#include "fuzz_util.h"

// A gzip member of src (deflateInit2 with windowBits 15 + 16). The caller frees *out.
static void gzip_bytes(const uint8_t *src, size_t n, uint8_t **out, size_t *out_n) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        fuzz_fail(__FILE__, __LINE__, "deflateInit2");
    size_t cap = deflateBound(&z, (uLong)n) + 64;
    uint8_t *buf = malloc(cap);
    if (!buf) fuzz_fail(__FILE__, __LINE__, "malloc");
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)n;
    z.next_out = buf;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) fuzz_fail(__FILE__, __LINE__, "deflate");
    *out_n = cap - z.avail_out;
    deflateEnd(&z);
    *out = buf;
}

static void set_file(fuzz_file *f, const uint8_t *p, size_t n, int gz, int cut, int garbage) {
    if (!gz) {
        fuzz_file_set(f, p, n);
        return;
    }
    uint8_t *z = NULL;
    size_t zn = 0;
    gzip_bytes(p, n, &z, &zn);
    if (cut) zn = zn > (size_t)cut ? zn - (size_t)cut : 0;
    if (garbage) {
        uint8_t *g = realloc(z, zn + (size_t)garbage);
        if (!g) fuzz_fail(__FILE__, __LINE__, "realloc");
        z = g;
        for (int i = 0; i < garbage; i++) z[zn + (size_t)i] = (uint8_t)(n ? p[(size_t)i % n] ^ i : 0x1f + i);
        zn += (size_t)garbage;
    }
    fuzz_file_set(f, z, zn);
    free(z);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fuzz_file img, lab;
    if (size < 7) return 0;
    int flags = data[0], limit = data[1], classes = 2 + data[2] % 255;
    size_t n_img = fuzz_le32(data + 3);
    data += 7, size -= 7;
    if (n_img > size) n_img = size;
    int k = 1 + (flags >> 4);
    set_file(&img, data, n_img, flags & 1, flags & 4 ? k : 0, flags & 8 ? k : 0);
    set_file(&lab, data + n_img, size - n_img, flags & 2, 0, 0);
    err_clear();
    dataset d;
    int st = data_load_idx(img.path, lab.path, classes, limit, &d);
    if (st == ST_OK) {
        FUZZ_CHECK(d.n >= 1 && d.c == 1 && d.images && d.labels);
        // A gzip stream cut short must never load (unless garbage was appended after the cut: it may happen to
        // restore the cut bytes, e.g. a trailer's last ISIZE byte 0x00); any stream that loads gives exactly the
        // bytes compressed.
        FUZZ_CHECK(!((flags & 1) && (flags & 4) && !(flags & 8)));
        FUZZ_CHECK(memcmp(d.images, data + 16, (size_t)d.n * d.h * d.w) == 0);
        for (int i = 0; i < d.n; i++) FUZZ_CHECK(d.labels[i] < classes);
    } else {
        FUZZ_CHECK(err_status() == st && err_msg()[0] != '\0');
    }
    data_free(&d);
    return 0;
}
