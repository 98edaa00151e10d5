// fuzz_image.c — libFuzzer target: JPEG/PNG decoding and the transforms (image_sample), the code every streamed
// image of a data set goes through. Input: [flags u8][bytes of the file]. flags: bit 0 training (random resized
// crop, flip, crop_pad 2) or evaluation (resize 20, center crop); bit 1 three channels, else one; bit 2 no DCT
// scaling. A bad file must give ST_INPUT with a one-line message naming it; a good one fills every output byte,
// and decodes to the same bytes again (one context, reused as a worker thread reuses it).
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "fuzz_util.h"
#include "image.h"

#define OUT_SIDE 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static image_ctx *ctx;
    if (!ctx) ctx = image_ctx_create();
    FUZZ_CHECK(ctx != NULL);
    if (size < 1) return 0;
    const int flags = data[0], training = flags & 1;
    image_tf tf = {.channels = flags & 2 ? 3 : 1, .out_h = OUT_SIDE, .out_w = OUT_SIDE, .max_pixels = 1 << 22,
                   .dct_scaling = !(flags & 4), .rrc = training, .rrc_scale = {0.08, 1}, .rrc_ratio = {0.75, 4.0 / 3},
                   .resize = training ? 0 : 20, .flip = training, .crop_pad = training ? 2 : 0, .seed = 7};
    static uint8_t out[3 * OUT_SIDE * OUT_SIDE], again[3 * OUT_SIDE * OUT_SIDE];
    char err[512] = "";
    const size_t n_out = (size_t)tf.channels * OUT_SIDE * OUT_SIDE;
    memset(out, 0xa5, sizeof out);
    int st = image_sample(ctx, &tf, training, "fuzz.img", data + 1, size - 1, 3, 11, out, err, sizeof err);
    if (st == ST_OK) {
        FUZZ_CHECK(image_sample(ctx, &tf, training, "fuzz.img", data + 1, size - 1, 3, 11, again, err, sizeof err) ==
                   ST_OK);
        FUZZ_CHECK(memcmp(out, again, n_out) == 0);
    } else {
        FUZZ_CHECK(st == ST_INPUT || st == ST_RUNTIME);
        FUZZ_CHECK(strncmp(err, "fuzz.img: ", 10) == 0 && strchr(err, '\n') == NULL);
    }
    return 0;
}
