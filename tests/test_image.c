// test_image.c — src/image.c on images encoded here (libspng, TurboJPEG): PNG round trips of every color type
// and depth, the channel rules, JPEG decoding at full and DCT scale, the resampler against a double-precision
// restatement of PIL's algorithm and (bit for bit, SIMD and plain paths) against its fixed-point loops,
// torchvision's crop rounding and padding, the random resized crop's box, flip/crop_pad against the gather's
// draws, and every bad file refused with its name.
#include <math.h>
#include <spng.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "common.h"
#include "gather_aug.h"
#include "image.h"
#include "test_util.h"

// ---------------------------------------------------------------------------------------------------------
// Encoders and helpers

static int png_samples(int ct) { return ct == 0 || ct == 3 ? 1 : ct == 2 ? 3 : ct == 4 ? 2 : 4; }
static size_t png_rowbytes(int w, int ct, int depth) { return ((size_t)w * depth * png_samples(ct) + 7) / 8; }

// A PNG from raw rows (big-endian samples, packed below 8 bits); free() the result.
static uint8_t *png_encode(int w, int h, int ct, int depth, const uint8_t *raw, const uint8_t (*pal)[3], int npal,
                           size_t *len) {
    spng_ctx *e = spng_ctx_new(SPNG_CTX_ENCODER);
    assert_non_null(e);
    assert_int_equal(spng_set_option(e, SPNG_ENCODE_TO_BUFFER, 1), 0);
    struct spng_ihdr ih = {.width = (uint32_t)w, .height = (uint32_t)h, .bit_depth = (uint8_t)depth, .color_type = (uint8_t)ct};
    assert_int_equal(spng_set_ihdr(e, &ih), 0);
    if (pal) {
        struct spng_plte p;
        memset(&p, 0, sizeof p);
        p.n_entries = (uint32_t)npal;
        for (int i = 0; i < npal; i++) {
            p.entries[i].red = pal[i][0];
            p.entries[i].green = pal[i][1];
            p.entries[i].blue = pal[i][2];
        }
        assert_int_equal(spng_set_plte(e, &p), 0);
    }
    int r = spng_encode_image(e, raw, png_rowbytes(w, ct, depth) * h, SPNG_FMT_RAW, SPNG_ENCODE_FINALIZE);
    if (r) fail_msg("spng_encode_image: %s", spng_strerror(r));
    int error = 0;
    uint8_t *png = spng_get_png_buffer(e, len, &error);
    assert_int_equal(error, 0);
    assert_non_null(png);
    spng_ctx_free(e);
    return png;
}

// A JPEG of w x h pixels in format pf; tjFree() the result.
static uint8_t *jpeg_encode(const uint8_t *px, int w, int h, int pf, int subsamp, int quality, size_t *len) {
    tjhandle t = tjInitCompress();
    assert_non_null(t);
    unsigned char *jpeg = NULL;
    unsigned long n = 0;
    if (tjCompress2(t, px, w, 0, h, pf, &jpeg, &n, subsamp, quality, 0) != 0) fail_msg("tjCompress2: %s", tjGetErrorStr2(t));
    tjDestroy(t);
    *len = n;
    return jpeg;
}

// TurboJPEG's own decode (the reference for what image_decode must return at scale 1/denom).
static uint8_t *jpeg_decode_ref(const uint8_t *jpeg, size_t n, int pf, int denom, int *w, int *h) {
    tjhandle t = tjInitDecompress();
    int fw, fh, ss, cs;
    assert_int_equal(tjDecompressHeader3(t, jpeg, n, &fw, &fh, &ss, &cs), 0);
    tjscalingfactor sf = {1, denom};
    *w = TJSCALED(fw, sf);
    *h = TJSCALED(fh, sf);
    uint8_t *px = malloc((size_t)*w * *h * tjPixelSize[pf]);
    assert_int_equal(tjDecompress2(t, jpeg, n, px, *w, 0, *h, pf, 0), 0);
    tjDestroy(t);
    return px;
}

static uint32_t lcg(uint32_t *s) { return *s = *s * 1664525u + 1013904223u; }

static uint8_t *noise(size_t n, uint32_t seed) {
    uint8_t *p = malloc(n);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(lcg(&seed) >> 24);
    return p;
}

// A smooth image with some noise (JPEG and resampling tests): w x h x c interleaved.
static uint8_t *smooth(int w, int h, int c, uint32_t seed) {
    uint8_t *p = malloc((size_t)w * h * c);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++)
                p[((size_t)y * w + x) * c + k] = (uint8_t)((x * (3 + k) + y * (5 - k) + (lcg(&seed) >> 28)) & 255);
    return p;
}

static unsigned luma(unsigned r, unsigned g, unsigned b) { return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16; }

static image_ctx *ctx;
static char err[512];

static void decode_ok(const uint8_t *buf, size_t n, int channels, int denom, image_u8 *out) {
    int st = image_decode(ctx, "t.img", buf, n, channels, 0, denom, out, err, sizeof err);
    if (st != ST_OK) fail_msg("image_decode: %d %s", st, err);
}

static int setup(void **state) {
    (void)state;
    ctx = image_ctx_create();
    return ctx ? 0 : -1;
}
static int teardown(void **state) {
    (void)state;
    image_ctx_free(ctx);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------
// PNG decoding and the channel rules

// Every PNG color type and depth: the decode equals the rule applied to the stored samples, for 3 and 1 channels.
static void test_png_round_trip(void **state) {
    (void)state;
    const int w = 7, h = 5;
    static const struct { int ct, depth; } kinds[] = {
        {0, 1}, {0, 2}, {0, 4}, {0, 8}, {0, 16}, {2, 8}, {2, 16}, {3, 1}, {3, 2}, {3, 4}, {3, 8}, {4, 8}, {4, 16}, {6, 8}, {6, 16},
    };
    uint8_t pal[200][3];
    for (int i = 0; i < 200; i++) pal[i][0] = (uint8_t)(i * 7), pal[i][1] = (uint8_t)(255 - i), pal[i][2] = (uint8_t)(i * 3);
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        const int ct = kinds[k].ct, d = kinds[k].depth, ns = png_samples(ct);
        const size_t rb = png_rowbytes(w, ct, d);
        uint8_t *raw = noise(rb * h, 100 + (uint32_t)k);
        const int npal = d == 8 ? 200 : 1 << d;  // 8-bit indices may pass the 200 entries: PIL's gray ramp
        size_t n;
        uint8_t *png = png_encode(w, h, ct, d, raw, ct == 3 ? (const uint8_t(*)[3])pal : NULL, npal, &n);
        for (int channels = 1; channels <= 3; channels += 2) {
            image_u8 im = {0};
            decode_ok(png, n, channels, 1, &im);
            assert_int_equal(im.w, w);
            assert_int_equal(im.h, h);
            assert_int_equal(im.c, channels);
            for (int y = 0; y < h; y++) {
                for (int x = 0; x < w; x++) {
                    unsigned s[4] = {0};
                    for (int j = 0; j < ns; j++) {  // the stored samples
                        const size_t i = (size_t)x * ns + j;
                        const uint8_t *row = raw + (size_t)y * rb;
                        s[j] = d == 16 ? (unsigned)row[2 * i] << 8 | row[2 * i + 1]
                             : d == 8  ? row[i]
                                       : (row[i * d / 8] >> (8 - d - (int)(i * d % 8))) & ((1u << d) - 1);
                    }
                    unsigned rgb[3], gray = 0;
                    int is_gray = 0;
                    if (ct == 0) {
                        is_gray = 1;
                        gray = d == 16 ? (s[0] > 255 ? 255 : s[0]) : s[0] * (255 / ((1u << d) - 1));
                    } else if (ct == 4) {
                        is_gray = 1;
                        gray = d == 16 ? s[0] >> 8 : s[0];
                    } else if (ct == 3) {
                        for (int j = 0; j < 3; j++) rgb[j] = (int)s[0] < npal ? pal[s[0]][j] : s[0];
                    } else {
                        for (int j = 0; j < 3; j++) rgb[j] = d == 16 ? s[j] >> 8 : s[j];
                    }
                    const uint8_t *px = im.data + ((size_t)y * w + x) * channels;
                    for (int j = 0; j < channels; j++) {
                        const unsigned want = is_gray ? gray : channels == 1 ? luma(rgb[0], rgb[1], rgb[2]) : rgb[j];
                        if (px[j] != want)
                            fail_msg("PNG type %d depth %d, %d channels, (%d,%d)[%d]: %u, want %u", ct, d, channels, y, x, j,
                                     px[j], want);
                    }
                }
            }
            image_free(&im);
        }
        free(png);
        free(raw);
    }
}

// Interlaced (Adam7) PNGs decode to the same pixels.
static void test_png_interlaced(void **state) {
    (void)state;
    const int w = 13, h = 9;
    uint8_t *raw = noise((size_t)w * h * 3, 5);
    spng_ctx *e = spng_ctx_new(SPNG_CTX_ENCODER);
    spng_set_option(e, SPNG_ENCODE_TO_BUFFER, 1);
    struct spng_ihdr ih = {.width = w, .height = h, .bit_depth = 8, .color_type = 2, .interlace_method = 1};
    spng_set_ihdr(e, &ih);
    assert_int_equal(spng_encode_image(e, raw, (size_t)w * h * 3, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE), 0);
    size_t n;
    int error;
    uint8_t *png = spng_get_png_buffer(e, &n, &error);
    spng_ctx_free(e);
    image_u8 im = {0};
    decode_ok(png, n, 3, 1, &im);
    assert_memory_equal(im.data, raw, (size_t)w * h * 3);
    image_free(&im);
    free(png);
    free(raw);
}

// ---------------------------------------------------------------------------------------------------------
// JPEG

static void test_jpeg_decode_and_channels(void **state) {
    (void)state;
    const int w = 45, h = 31;
    uint8_t *px = smooth(w, h, 3, 1);
    size_t n;
    uint8_t *jpeg = jpeg_encode(px, w, h, TJPF_RGB, TJSAMP_420, 90, &n);
    for (int denom = 1; denom <= 8; denom *= 2) {
        int rw, rh;
        uint8_t *ref = jpeg_decode_ref(jpeg, n, TJPF_RGB, denom, &rw, &rh);
        image_u8 rgb = {0}, gray = {0};
        decode_ok(jpeg, n, 3, denom, &rgb);
        decode_ok(jpeg, n, 1, denom, &gray);
        assert_int_equal(rgb.w, (w + denom - 1) / denom);
        assert_int_equal(rgb.h, (h + denom - 1) / denom);
        assert_memory_equal(rgb.data, ref, (size_t)rw * rh * 3);
        for (int i = 0; i < rw * rh; i++) assert_int_equal(gray.data[i], luma(ref[3 * i], ref[3 * i + 1], ref[3 * i + 2]));
        image_free(&rgb);
        image_free(&gray);
        free(ref);
    }
    tjFree(jpeg);
    // A gray JPEG: its luma as is, replicated for 3 channels.
    uint8_t *g = smooth(w, h, 1, 2);
    jpeg = jpeg_encode(g, w, h, TJPF_GRAY, TJSAMP_GRAY, 90, &n);
    int rw, rh;
    uint8_t *ref = jpeg_decode_ref(jpeg, n, TJPF_GRAY, 1, &rw, &rh);
    image_u8 im = {0};
    decode_ok(jpeg, n, 3, 1, &im);
    for (int i = 0; i < w * h; i++)
        for (int k = 0; k < 3; k++) assert_int_equal(im.data[3 * i + k], ref[i]);
    decode_ok(jpeg, n, 1, 1, &im);
    assert_memory_equal(im.data, ref, (size_t)w * h);
    image_free(&im);
    free(ref);
    tjFree(jpeg);
    free(g);
    // CMYK (TurboJPEG writes YCCK with an Adobe marker): PIL's inverted reading and cmyk2rgb.
    uint8_t *cmyk = noise((size_t)w * h * 4, 3);
    jpeg = jpeg_encode(cmyk, w, h, TJPF_CMYK, TJSAMP_444, 95, &n);
    ref = jpeg_decode_ref(jpeg, n, TJPF_CMYK, 1, &rw, &rh);
    image_u8 c3 = {0}, c1 = {0};
    decode_ok(jpeg, n, 3, 1, &c3);
    decode_ok(jpeg, n, 1, 1, &c1);
    for (int i = 0; i < w * h; i++) {
        const int nk = ref[4 * i + 3];
        unsigned v[3];
        for (int k = 0; k < 3; k++) {
            const int t = (255 - ref[4 * i + k]) * nk + 128;
            const int x = nk - (((t >> 8) + t) >> 8);
            v[k] = (unsigned)(x < 0 ? 0 : x > 255 ? 255 : x);
            assert_int_equal(c3.data[3 * i + k], v[k]);
        }
        assert_int_equal(c1.data[i], luma(v[0], v[1], v[2]));
    }
    image_free(&c3);
    image_free(&c1);
    free(ref);
    tjFree(jpeg);
    free(cmyk);
    free(px);
}

static void test_dct_denom(void **state) {
    (void)state;
    assert_int_equal(image_dct_denom(200, 200, 100, 100), 1);
    assert_int_equal(image_dct_denom(399, 400, 100, 100), 1);
    assert_int_equal(image_dct_denom(400, 400, 100, 100), 2);
    assert_int_equal(image_dct_denom(1000, 1000, 100, 100), 4);
    assert_int_equal(image_dct_denom(1600, 1600, 100, 100), 8);
    assert_int_equal(image_dct_denom(100000, 1600, 100, 100), 8);  // never below 1/8
    assert_int_equal(image_dct_denom(1600, 300, 100, 100), 1);     // each side must have the margin
    assert_int_equal(image_dct_denom(1600, 900, 100, 100), 4);
}

// dct_scaling=0 is the full decode's pipeline; dct_scaling=1 decodes smaller and stays close to it.
static void test_dct_scaling_sample(void **state) {
    (void)state;
    const int w = 640, h = 480;
    uint8_t *px = smooth(w, h, 3, 9);
    size_t n;
    uint8_t *jpeg = jpeg_encode(px, w, h, TJPF_RGB, TJSAMP_420, 92, &n);
    image_tf tf = {.channels = 3, .out_h = 32, .out_w = 32, .max_pixels = 1 << 24, .resize = 36};
    uint8_t full[3 * 32 * 32], scaled[3 * 32 * 32], manual[3 * 32 * 32];
    assert_int_equal(image_sample(ctx, &tf, 0, "a.jpg", jpeg, n, 0, 0, full, err, sizeof err), ST_OK);
    // The same by the pieces at full scale.
    image_u8 a = {0}, b = {0}, c = {0};
    decode_ok(jpeg, n, 3, 1, &a);
    int rw, rh;
    image_resize_dims(w, h, 36, &rw, &rh);
    assert_int_equal(rw, 48);
    assert_int_equal(rh, 36);
    assert_int_equal(image_resize(&a, rw, rh, &b), ST_OK);
    assert_int_equal(image_center_crop(&b, 32, 32, &c), ST_OK);
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 32 * 32; i++) manual[k * 1024 + i] = c.data[3 * i + k];
    assert_memory_equal(full, manual, sizeof full);
    tf.dct_scaling = 1;  // 640x480 → 48x36: 1/4 keeps 160x120 >= 2x
    assert_int_equal(image_sample(ctx, &tf, 0, "a.jpg", jpeg, n, 0, 0, scaled, err, sizeof err), ST_OK);
    double mad = 0;
    int maxd = 0;
    for (size_t i = 0; i < sizeof full; i++) {
        const int d = abs(full[i] - scaled[i]);
        mad += d;
        maxd = d > maxd ? d : maxd;
    }
    mad /= sizeof full;
    print_message("dct_scaling 1/4 vs full decode (640x480 -> 48x36 -> 32x32): mean abs diff %.3f, max %d\n", mad, maxd);
    assert_true(mad < 3.0);
    // Random resized crops too: the scaled path maps the box into the smaller image.
    tf.rrc = 1;
    tf.rrc_scale[0] = 0.08, tf.rrc_scale[1] = 1.0, tf.rrc_ratio[0] = 0.75, tf.rrc_ratio[1] = 4.0 / 3;
    double worst = 0;
    for (int idx = 0; idx < 20; idx++) {
        tf.dct_scaling = 0;
        assert_int_equal(image_sample(ctx, &tf, 1, "a.jpg", jpeg, n, 1, idx, full, err, sizeof err), ST_OK);
        tf.dct_scaling = 1;
        assert_int_equal(image_sample(ctx, &tf, 1, "a.jpg", jpeg, n, 1, idx, scaled, err, sizeof err), ST_OK);
        double m = 0;
        for (size_t i = 0; i < sizeof full; i++) m += abs(full[i] - scaled[i]);
        m /= sizeof full;
        worst = m > worst ? m : worst;
    }
    print_message("dct_scaling, random resized crops: worst mean abs diff %.3f over 20 crops\n", worst);
    assert_true(worst < 4.0);
    image_free(&a);
    image_free(&b);
    image_free(&c);
    tjFree(jpeg);
    free(px);
}

// ---------------------------------------------------------------------------------------------------------
// Resampling

// PIL's algorithm in doubles: the same windows and normalised weights, each pass rounded to u8 (no fixed point).
static void ref_axis(int in_size, int out_size, int *xmin_out, int *count_out, double *k) {
    const double scale = (double)in_size / out_size, fs = scale < 1 ? 1 : scale, support = fs;
    const int ks = (int)ceil(support) * 2 + 1;
    for (int xx = 0; xx < out_size; xx++) {
        const double center = (xx + 0.5) * scale;
        int xmin = (int)floor(center - support + 0.5), xmax = (int)floor(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        double ww = 0;
        for (int x = xmin; x < xmax; x++) {
            const double t = fabs((x - center + 0.5) / fs);
            k[xx * ks + x - xmin] = t < 1 ? 1 - t : 0;
            ww += k[xx * ks + x - xmin];
        }
        for (int x = xmin; x < xmax; x++) k[xx * ks + x - xmin] /= ww;
        xmin_out[xx] = xmin;
        count_out[xx] = xmax - xmin;
    }
}

static uint8_t round_clip(double v) {
    const double r = floor(v + 0.5);
    return (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
}

static void ref_resize(const uint8_t *in, int w, int h, int c, int ow, int oh, uint8_t *out) {
    const int ksx = (int)ceil(w > ow ? (double)w / ow : 1) * 2 + 1, ksy = (int)ceil(h > oh ? (double)h / oh : 1) * 2 + 1;
    double *kx = calloc((size_t)ow * ksx, sizeof *kx), *ky = calloc((size_t)oh * ksy, sizeof *ky);
    int *x0 = malloc(ow * sizeof *x0), *xn = malloc(ow * sizeof *xn), *y0 = malloc(oh * sizeof *y0), *yn = malloc(oh * sizeof *yn);
    ref_axis(w, ow, x0, xn, kx);
    ref_axis(h, oh, y0, yn, ky);
    uint8_t *tmp = malloc((size_t)ow * h * c);
    for (int y = 0; y < h; y++)
        for (int xx = 0; xx < ow; xx++)
            for (int k = 0; k < c; k++) {
                double s = 0;
                for (int i = 0; i < xn[xx]; i++) s += in[((size_t)y * w + x0[xx] + i) * c + k] * kx[xx * ksx + i];
                tmp[((size_t)y * ow + xx) * c + k] = ow == w ? in[((size_t)y * w + xx) * c + k] : round_clip(s);
            }
    for (int yy = 0; yy < oh; yy++)
        for (int xx = 0; xx < ow; xx++)
            for (int k = 0; k < c; k++) {
                double s = 0;
                for (int i = 0; i < yn[yy]; i++) s += tmp[((size_t)(y0[yy] + i) * ow + xx) * c + k] * ky[yy * ksy + i];
                out[((size_t)yy * ow + xx) * c + k] = oh == h ? tmp[((size_t)yy * ow + xx) * c + k] : round_clip(s);
            }
    free(kx), free(ky), free(x0), free(xn), free(y0), free(yn), free(tmp);
}

static void test_resize_reference(void **state) {
    (void)state;
    static const int sizes[][4] = {
        {37, 23, 16, 10}, {37, 23, 50, 31}, {10, 10, 3, 7},  {1, 1, 5, 4},  {5, 1, 1, 1},    {200, 150, 7, 5},
        {64, 64, 64, 32}, {64, 64, 17, 64}, {3, 40, 40, 3}, {99, 77, 98, 76}, {8, 8, 24, 24}, {1000, 3, 13, 3},
    };
    int worst = 0;
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        for (int c = 1; c <= 3; c += 2) {
            const int w = sizes[t][0], h = sizes[t][1], ow = sizes[t][2], oh = sizes[t][3];
            uint8_t *px = t % 2 ? noise((size_t)w * h * c, (uint32_t)t) : smooth(w, h, c, (uint32_t)t);
            image_u8 src = {w, h, c, px, (size_t)w * h * c}, dst = {0};
            assert_int_equal(image_resize(&src, ow, oh, &dst), ST_OK);
            assert_int_equal(dst.w, ow);
            assert_int_equal(dst.h, oh);
            uint8_t *ref = malloc((size_t)ow * oh * c);
            ref_resize(px, w, h, c, ow, oh, ref);
            for (size_t i = 0; i < (size_t)ow * oh * c; i++) {
                const int d = abs(dst.data[i] - ref[i]);
                if (d > 1) fail_msg("%dx%d -> %dx%d, c %d, byte %zu: %d vs reference %d", w, h, ow, oh, c, i, dst.data[i], ref[i]);
                worst = d > worst ? d : worst;
            }
            // The same size is an exact copy.
            assert_int_equal(image_resize(&src, w, h, &dst), ST_OK);
            assert_memory_equal(dst.data, px, (size_t)w * h * c);
            image_free(&dst);
            free(ref);
            free(px);
        }
    }
    print_message("resize vs double-precision PIL restatement: max abs diff %d\n", worst);
    // A constant image stays constant at every size (weights sum to one in fixed point).
    uint8_t flat[6 * 4 * 3];
    memset(flat, 201, sizeof flat);
    image_u8 src = {6, 4, 3, flat, sizeof flat}, dst = {0};
    for (int s = 1; s < 40; s += 3) {
        assert_int_equal(image_resize(&src, s, 41 - s, &dst), ST_OK);
        for (int i = 0; i < s * (41 - s) * 3; i++) assert_int_equal(dst.data[i], 201);
    }
    image_free(&dst);
}

// PIL's Resample.c for 8-bit images restated as plainly as it is written (precompute_coeffs,
// normalize_coeffs_8bpc, ImagingResampleHorizontal_8bpc / Vertical_8bpc: int32 sums, clip8), the horizontal
// pass over every row: image_resize must equal it bit for bit, on the SIMD path and on the plain loops.
#define PIL_PRECISION_BITS (32 - 8 - 2)

static int pil_coeffs(int in_size, int out_size, int **bounds, int32_t **kk) {
    double filterscale, scale;
    filterscale = scale = (double)in_size / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    const double support = filterscale;
    const int ksize = (int)ceil(support) * 2 + 1;
    double *prekk = malloc((size_t)out_size * ksize * sizeof *prekk);
    *bounds = malloc((size_t)out_size * 2 * sizeof **bounds);
    *kk = malloc((size_t)out_size * ksize * sizeof **kk);
    for (int xx = 0; xx < out_size; xx++) {
        const double center = (xx + 0.5) * scale;
        double ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5);
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = &prekk[xx * ksize];
        int x;
        for (x = 0; x < xmax; x++) {
            const double t = fabs((x + xmin - center + 0.5) * ss), w = t < 1.0 ? 1.0 - t : 0.0;
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        (*bounds)[xx * 2 + 0] = xmin;
        (*bounds)[xx * 2 + 1] = xmax;
    }
    for (int i = 0; i < out_size * ksize; i++)
        (*kk)[i] = prekk[i] < 0 ? (int32_t)(-0.5 + prekk[i] * (1 << PIL_PRECISION_BITS))
                                : (int32_t)(0.5 + prekk[i] * (1 << PIL_PRECISION_BITS));
    free(prekk);
    return ksize;
}

static uint8_t pil_clip8(int32_t in) {
    if (in >= (1 << PIL_PRECISION_BITS << 8)) return 255;
    if (in <= 0) return 0;
    return (uint8_t)(in >> PIL_PRECISION_BITS);
}

static void pil_resize(const uint8_t *in, int w, int h, int c, int ow, int oh, uint8_t *out) {
    int *bx, *by;
    int32_t *kx, *ky;
    const int ksx = pil_coeffs(w, ow, &bx, &kx), ksy = pil_coeffs(h, oh, &by, &ky);
    uint8_t *tmp = malloc((size_t)ow * h * c);
    if (ow == w) memcpy(tmp, in, (size_t)w * h * c);
    else
        for (int yy = 0; yy < h; yy++)
            for (int xx = 0; xx < ow; xx++)
                for (int b = 0; b < c; b++) {
                    int32_t ss = 1 << (PIL_PRECISION_BITS - 1);
                    for (int x = 0; x < bx[xx * 2 + 1]; x++)
                        ss += in[((size_t)yy * w + x + bx[xx * 2]) * c + b] * kx[xx * ksx + x];
                    tmp[((size_t)yy * ow + xx) * c + b] = pil_clip8(ss);
                }
    if (oh == h) memcpy(out, tmp, (size_t)ow * h * c);
    else
        for (int yy = 0; yy < oh; yy++)
            for (int xx = 0; xx < ow; xx++)
                for (int b = 0; b < c; b++) {
                    int32_t ss = 1 << (PIL_PRECISION_BITS - 1);
                    for (int y = 0; y < by[yy * 2 + 1]; y++)
                        ss += tmp[((size_t)(y + by[yy * 2]) * ow + xx) * c + b] * ky[yy * ksy + y];
                    out[((size_t)yy * ow + xx) * c + b] = pil_clip8(ss);
                }
    free(bx), free(by), free(kx), free(ky), free(tmp);
}

int image_resample_simd(int enable);  // src/image.c's test hook: 0 forces the plain loops

static void test_resize_paths(void **state) {
    (void)state;
    uint32_t seed = 2024;
    int cases = 0;
    for (int t = 0; t < 160; t++) {
        const int c = t % 2 ? 1 : 3;
        // sizes 1..300, some cases from far larger or far smaller (heavy antialiasing, strong upscales)
        int w = 1 + (int)(lcg(&seed) >> 8) % 300, h = 1 + (int)(lcg(&seed) >> 8) % 300;
        int ow = 1 + (int)(lcg(&seed) >> 8) % 300, oh = 1 + (int)(lcg(&seed) >> 8) % 300;
        if (t % 7 == 0) w = 600 + (int)(lcg(&seed) >> 8) % 900, ow = 1 + ow % 40;
        if (t % 11 == 0) oh = h + (int)(lcg(&seed) >> 8) % 5;  // near the same size
        if (t % 13 == 0) ow = w;                                // one pass only
        const size_t n = (size_t)w * h * c;
        uint8_t *px = t % 3 ? noise(n, seed) : smooth(w, h, c, seed);  // exactly n bytes: ASan sees any overread
        uint8_t *want = malloc((size_t)ow * oh * c);
        pil_resize(px, w, h, c, ow, oh, want);
        image_u8 src = {w, h, c, px, n}, dst = {0};
        for (int simd = 1; simd >= 0; simd--) {
            const int old = image_resample_simd(simd);
            assert_int_equal(image_resize(&src, ow, oh, &dst), ST_OK);
            image_resample_simd(old);
            assert_int_equal(dst.w, ow);
            assert_int_equal(dst.h, oh);
            if (memcmp(dst.data, want, (size_t)ow * oh * c) != 0)
                fail_msg("%dx%dx%d -> %dx%d (simd %d) differs from PIL's fixed-point loops", w, h, c, ow, oh, simd);
            cases++;
        }
        image_free(&dst);
        free(want);
        free(px);
    }
    print_message("%d resizes equal to PIL's fixed-point loops\n", cases);
}


// ---------------------------------------------------------------------------------------------------------
// Crops

static void test_center_crop(void **state) {
    (void)state;
    // A 1-row image whose pixel is its column: the crop's first pixel is its left offset.
    static const int cases[][3] = {  // width, crop, left = round((W - w) / 2) half to even
        {5, 2, 2}, {7, 2, 2}, {4, 1, 2}, {6, 1, 2}, {6, 3, 2}, {9, 2, 4}, {10, 4, 3}, {3, 2, 0}, {8, 8, 0},
    };
    uint8_t row[16];
    for (int i = 0; i < 16; i++) row[i] = (uint8_t)(i + 1);
    for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
        image_u8 src = {cases[t][0], 1, 1, row, 16}, dst = {0};
        assert_int_equal(image_center_crop(&src, 1, cases[t][1], &dst), ST_OK);
        if (dst.data[0] != cases[t][2] + 1) fail_msg("W=%d crop %d: left %d, want %d", cases[t][0], cases[t][1], dst.data[0] - 1, cases[t][2]);
        image_free(&dst);
    }
    // Padding: a 3x3 image in a 6x5 crop sits at top (6-3)//2 = 1, left (5-3)//2 = 1; zeros around it.
    uint8_t px[9];
    for (int i = 0; i < 9; i++) px[i] = (uint8_t)(10 + i);
    image_u8 src = {3, 3, 1, px, 9}, dst = {0};
    assert_int_equal(image_center_crop(&src, 6, 5, &dst), ST_OK);
    for (int y = 0; y < 6; y++)
        for (int x = 0; x < 5; x++) {
            const int in = y >= 1 && y < 4 && x >= 1 && x < 4;
            assert_int_equal(dst.data[y * 5 + x], in ? px[(y - 1) * 3 + x - 1] : 0);
        }
    // Wider crop, shorter height: pad left/right (7-3)//2 = 2, then the rows by rounding: round((3-2)/2) = 0.
    assert_int_equal(image_center_crop(&src, 2, 7, &dst), ST_OK);
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 7; x++) assert_int_equal(dst.data[y * 7 + x], x >= 2 && x < 5 ? px[y * 3 + x - 2] : 0);
    // image_crop: PIL's crop box reaching outside reads zeros.
    assert_int_equal(image_crop(&src, -1, 2, 3, 3, &dst), ST_OK);
    const uint8_t want[9] = {0, 0, 0, 12, 0, 0, 15, 0, 0};
    assert_memory_equal(dst.data, want, 9);
    image_free(&dst);
    int ow, oh;
    image_resize_dims(640, 480, 256, &ow, &oh);
    assert_int_equal(ow, 341);  // int(256 * 640 / 480) = int(341.33)
    assert_int_equal(oh, 256);
    image_resize_dims(333, 500, 224, &ow, &oh);
    assert_int_equal(ow, 224);
    assert_int_equal(oh, 336);  // int(224 * 500 / 333) = int(336.33)
    image_resize_dims(100, 100, 7, &ow, &oh);
    assert_int_equal(ow, 7);
    assert_int_equal(oh, 7);
}

static void test_rrc_params(void **state) {
    (void)state;
    const double scale[2] = {0.08, 1.0}, ratio[2] = {3.0 / 4, 4.0 / 3};
    static const int dims[][2] = {{1, 1}, {2, 7}, {500, 375}, {31, 1000}, {4000, 3}, {224, 224}};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        const int w = dims[d][0], h = dims[d][1];
        for (int i = 0; i < 2000; i++) {
            int t, l, ch, cw;
            image_rrc_params(42, 3, i, w, h, scale, ratio, &t, &l, &ch, &cw);
            if (!(t >= 0 && l >= 0 && ch >= 1 && cw >= 1 && t + ch <= h && l + cw <= w))
                fail_msg("%dx%d index %d: box top %d left %d %dx%d outside", w, h, i, t, l, ch, cw);
        }
    }
    // Fallback (no try fits: scale > 1): the central crop with the ratio clamped.
    const double big[2] = {5, 5};
    int t, l, ch, cw;
    image_rrc_params(1, 0, 0, 100, 20, big, ratio, &t, &l, &ch, &cw);  // 5.0 > 4/3: h = 20, w = round(20 * 4/3)
    assert_true(t == 0 && ch == 20 && cw == 27 && l == 36);
    image_rrc_params(1, 0, 0, 20, 100, big, ratio, &t, &l, &ch, &cw);  // 0.2 < 3/4: w = 20, h = round(20 / 0.75)
    assert_true(l == 0 && cw == 20 && ch == 27 && t == 36);
    image_rrc_params(1, 0, 0, 50, 45, big, ratio, &t, &l, &ch, &cw);  // within the range: the whole image
    assert_true(t == 0 && l == 0 && ch == 45 && cw == 50);
    // Determinism: a function of (seed, epoch, index) only; other indices, epochs, seeds draw otherwise.
    int a[4], b[4], same_index = 0, same_epoch = 0, same_seed = 0;
    for (int i = 0; i < 100; i++) {
        image_rrc_params(7, 2, i, 640, 480, scale, ratio, &a[0], &a[1], &a[2], &a[3]);
        image_rrc_params(7, 2, i, 640, 480, scale, ratio, &b[0], &b[1], &b[2], &b[3]);
        assert_memory_equal(a, b, sizeof a);
        image_rrc_params(7, 2, i + 1, 640, 480, scale, ratio, &b[0], &b[1], &b[2], &b[3]);
        same_index += memcmp(a, b, sizeof a) == 0;
        image_rrc_params(7, 3, i, 640, 480, scale, ratio, &b[0], &b[1], &b[2], &b[3]);
        same_epoch += memcmp(a, b, sizeof a) == 0;
        image_rrc_params(8, 2, i, 640, 480, scale, ratio, &b[0], &b[1], &b[2], &b[3]);
        same_seed += memcmp(a, b, sizeof a) == 0;
    }
    assert_true(same_index < 3 && same_epoch < 3 && same_seed < 3);
    // Distribution: on a large square image a try fits when its area fraction f <= exp(-|log aspect|), so the
    // accepted f is U(0.08, 1) under that bound: mean 0.4778 (numerical integral over the log aspect, which is
    // U(log 3/4, log 4/3), mean 0); boxes reach both ends of the range.
    double sum = 0, lsum = 0, lo = 1, hi = 0;
    const int N = 20000;
    for (int i = 0; i < N; i++) {
        image_rrc_params(3, 0, i, 2000, 2000, scale, ratio, &t, &l, &ch, &cw);
        const double f = (double)ch * cw / (2000.0 * 2000.0);
        sum += f;
        lsum += log((double)cw / ch);
        lo = f < lo ? f : lo;
        hi = f > hi ? f : hi;
    }
    print_message("rrc area fraction: mean %.4f (expected 0.4778), min %.4f, max %.4f; mean log aspect %.4f\n", sum / N,
                  lo, hi, lsum / N);
    assert_true(fabs(sum / N - 0.4778) < 0.01);
    assert_true(fabs(lsum / N) < 0.01);
    assert_true(lo < 0.085 && lo > 0.075 && hi > 0.95 && hi <= 1.0);
}

// ---------------------------------------------------------------------------------------------------------
// image_sample

static uint8_t *rgb_png(int w, int h, uint32_t seed, size_t *n, uint8_t **pixels) {
    uint8_t *px = noise((size_t)w * h * 3, seed);
    uint8_t *png = png_encode(w, h, 2, 8, px, NULL, 0, n);
    *pixels = px;
    return png;
}

// flip and crop_pad: image_sample's training output equals its evaluation output moved as the backend's gather
// moves a stored sample (src/cpu/ops_cpu.c: output (y, x) reads (y + dy, (flip ? w-1-x : x) + dx), zero outside),
// with gather_aug_draw's bits for the same seed, epoch and index.
static void test_flip_crop_pad_match_gather(void **state) {
    (void)state;
    const int w = 11, h = 9;
    size_t n;
    uint8_t *px, *png = rgb_png(w, h, 77, &n, &px);
    image_tf tf = {.channels = 3, .out_h = h, .out_w = w, .max_pixels = 1000, .flip = 1, .crop_pad = 3, .seed = 1234};
    uint8_t plain[3 * 11 * 9], aug[3 * 11 * 9];
    assert_int_equal(image_sample(ctx, &tf, 0, "f.png", png, n, 5, 0, plain, err, sizeof err), ST_OK);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < w * h; i++) assert_int_equal(plain[c * w * h + i], px[3 * i + c]);  // CHW of the file
    int flips = 0, moved = 0;
    for (int64_t index = 0; index < 64; index++) {
        assert_int_equal(image_sample(ctx, &tf, 1, "f.png", png, n, 5, index, aug, err, sizeof err), ST_OK);
        gather_aug a = {0};
        a.seed = 1234, a.epoch = 5, a.c = 3, a.h = h, a.w = w, a.crop_pad = 3, a.flip = 1;
        const gather_draw d = gather_aug_draw(&a, index);
        flips += d.flip;
        moved += d.dx != 0 || d.dy != 0;
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++) {
                    const int sy = y + d.dy, sx = (d.flip ? w - 1 - x : x) + d.dx;
                    const uint8_t want = sy >= 0 && sy < h && sx >= 0 && sx < w ? plain[(c * h + sy) * w + sx] : 0;
                    assert_int_equal(aug[(c * h + y) * w + x], want);
                }
    }
    assert_true(flips > 10 && flips < 54 && moved > 40);
    // Evaluation ignores flip and crop_pad.
    assert_int_equal(image_sample(ctx, &tf, 0, "f.png", png, n, 5, 3, aug, err, sizeof err), ST_OK);
    assert_memory_equal(aug, plain, sizeof plain);
    free(png);
    free(px);
}

// The training path with a random resized crop is crop → resize of the file's pixels; deterministic.
static void test_sample_rrc_pieces(void **state) {
    (void)state;
    const int w = 60, h = 41;
    size_t n;
    uint8_t *px, *png = rgb_png(w, h, 3, &n, &px);
    image_tf tf = {.channels = 3, .out_h = 12, .out_w = 14, .max_pixels = 1 << 20, .rrc = 1, .seed = 99,
                   .rrc_scale = {0.08, 1.0}, .rrc_ratio = {0.75, 4.0 / 3}};
    image_u8 src = {w, h, 3, px, (size_t)w * h * 3}, crop = {0}, res = {0};
    uint8_t out[3 * 12 * 14], again[3 * 12 * 14];
    for (int64_t index = 0; index < 10; index++) {
        assert_int_equal(image_sample(ctx, &tf, 1, "r.png", png, n, 2, index, out, err, sizeof err), ST_OK);
        int t, l, ch, cw;
        image_rrc_params(99, 2, index, w, h, tf.rrc_scale, tf.rrc_ratio, &t, &l, &ch, &cw);
        assert_int_equal(image_crop(&src, t, l, ch, cw, &crop), ST_OK);
        assert_int_equal(image_resize(&crop, 14, 12, &res), ST_OK);
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 12 * 14; i++) assert_int_equal(out[c * 168 + i], res.data[3 * i + c]);
        assert_int_equal(image_sample(ctx, &tf, 1, "r.png", png, n, 2, index, again, err, sizeof err), ST_OK);
        assert_memory_equal(out, again, sizeof out);
    }
    image_free(&crop);
    image_free(&res);
    free(png);
    free(px);
}

// The training path through image_sample, both resample paths: random resized crops (a box inside the decoded
// image, read through its row stride) equal crop -> resize; Resize -> center crop (with padding) -> flip and
// padded crop equal image_resize, image_center_crop and the gather's reading of the result.
static void test_sample_paths(void **state) {
    (void)state;
    static const int sizes[][2] = {{60, 41}, {97, 130}, {333, 250}, {7, 300}, {224, 224}, {500, 375}};
    for (size_t t = 0; t < sizeof sizes / sizeof sizes[0]; t++) {
        const int w = sizes[t][0], h = sizes[t][1];
        size_t n;
        uint8_t *px, *png = rgb_png(w, h, 40 + (uint32_t)t, &n, &px);
        image_u8 src = {w, h, 3, px, (size_t)w * h * 3}, crop = {0}, res = {0}, cc = {0};
        for (int simd = 1; simd >= 0; simd--) {
            const int old = image_resample_simd(simd);
            // random resized crop to 33 x 29, no flip
            image_tf tf = {.channels = 3, .out_h = 29, .out_w = 33, .max_pixels = 1 << 20, .rrc = 1, .seed = 7,
                           .rrc_scale = {0.08, 1.0}, .rrc_ratio = {0.75, 4.0 / 3}};
            uint8_t out[3 * 64 * 64];
            for (int64_t index = 0; index < 12; index++) {
                assert_int_equal(image_sample(ctx, &tf, 1, "p.png", png, n, 1, index, out, err, sizeof err), ST_OK);
                int tp, l, ch, cw;
                image_rrc_params(7, 1, index, w, h, tf.rrc_scale, tf.rrc_ratio, &tp, &l, &ch, &cw);
                assert_int_equal(image_crop(&src, tp, l, ch, cw, &crop), ST_OK);
                assert_int_equal(image_resize(&crop, 33, 29, &res), ST_OK);
                for (int c = 0; c < 3; c++)
                    for (int i = 0; i < 33 * 29; i++)
                        if (out[c * 33 * 29 + i] != res.data[3 * i + c])
                            fail_msg("%dx%d rrc index %d simd %d: channel %d pixel %d", w, h, (int)index, simd, c, i);
            }
            // Resize(s) -> center crop 40 x 36 -> crop_pad 5 + flip, for 3 channels
            for (int s = 20; s <= 60; s += 20) {
                image_tf te = {.channels = 3, .out_h = 36, .out_w = 40, .max_pixels = 1 << 20, .resize = s, .flip = 1,
                               .crop_pad = 5, .seed = 11};
                int rw, rh;
                image_resize_dims(w, h, s, &rw, &rh);
                assert_int_equal(image_resize(&src, rw, rh, &res), ST_OK);
                assert_int_equal(image_center_crop(&res, 36, 40, &cc), ST_OK);
                for (int64_t index = 0; index < 8; index++) {
                    assert_int_equal(image_sample(ctx, &te, 1, "p.png", png, n, 3, index, out, err, sizeof err), ST_OK);
                    gather_aug a = {0};
                    a.seed = 11, a.epoch = 3, a.c = 3, a.h = 36, a.w = 40, a.crop_pad = 5, a.flip = 1;
                    const gather_draw d = gather_aug_draw(&a, index);
                    for (int c = 0; c < 3; c++)
                        for (int y = 0; y < 36; y++)
                            for (int x = 0; x < 40; x++) {
                                const int sy = y + d.dy, sx = (d.flip ? 40 - 1 - x : x) + d.dx;
                                const uint8_t want = sy >= 0 && sy < 36 && sx >= 0 && sx < 40 ? cc.data[(sy * 40 + sx) * 3 + c] : 0;
                                if (out[(c * 36 + y) * 40 + x] != want)
                                    fail_msg("%dx%d resize %d index %d simd %d: (%d, %d, %d)", w, h, s, (int)index, simd, c, y, x);
                            }
                }
            }
            image_resample_simd(old);
        }
        image_free(&crop);
        image_free(&res);
        image_free(&cc);
        free(png);
        free(px);
    }
}

static void test_one_pixel(void **state) {
    (void)state;
    const uint8_t rgb[3] = {200, 100, 50};
    size_t n;
    uint8_t *png = png_encode(1, 1, 2, 8, rgb, NULL, 0, &n);
    size_t jn;
    uint8_t *jpeg = jpeg_encode(rgb, 1, 1, TJPF_RGB, TJSAMP_444, 100, &jn);
    image_tf tf = {.channels = 3, .out_h = 4, .out_w = 4, .max_pixels = 1, .resize = 8, .dct_scaling = 1, .rrc = 0,
                   .rrc_scale = {0.08, 1}, .rrc_ratio = {0.75, 4.0 / 3}};
    uint8_t out[3 * 5 * 5];
    assert_int_equal(image_sample(ctx, &tf, 0, "one.png", png, n, 0, 0, out, err, sizeof err), ST_OK);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 16; i++) assert_int_equal(out[c * 16 + i], rgb[c]);
    tf.rrc = 1;
    tf.out_h = tf.out_w = 5;
    assert_int_equal(image_sample(ctx, &tf, 1, "one.png", png, n, 0, 0, out, err, sizeof err), ST_OK);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 25; i++) assert_int_equal(out[c * 25 + i], rgb[c]);
    assert_int_equal(image_sample(ctx, &tf, 1, "one.jpg", jpeg, jn, 0, 0, out, err, sizeof err), ST_OK);
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < 25; i++) assert_true(abs(out[c * 25 + i] - rgb[c]) <= 3);
    free(png);
    tjFree(jpeg);
}

// ---------------------------------------------------------------------------------------------------------
// Bad files

static const uint8_t *good_jpeg;
static size_t good_jpeg_n;

static void expect_bad(const char *name, const uint8_t *buf, size_t n, long long max_pixels, const char *needle) {
    image_tf tf = {.channels = 3, .out_h = 4, .out_w = 4, .max_pixels = max_pixels, .resize = 4};
    uint8_t out[48];
    err[0] = '\0';
    const double t0 = now_s();
    const int st = image_sample(ctx, &tf, 0, name, buf, n, 0, 0, out, err, sizeof err);
    if (st != ST_INPUT || strncmp(err, name, strlen(name)) != 0 || err[strlen(name)] != ':' || !strstr(err, needle) ||
        strchr(err, '\n'))
        fail_msg("%s: status %d, message '%s' (want ST_INPUT, \"%s: ...%s...\")", name, st, err, name, needle);
    assert_true(now_s() - t0 < 0.5);
    print_message("  %s\n", err);
    // The context still decodes a good file (libjpeg-turbo 2.1 leaves some failed handles unusable).
    image_u8 im = {0};
    decode_ok(good_jpeg, good_jpeg_n, 3, 1, &im);
    image_free(&im);
}

// A PNG signature and IHDR (valid CRC) of any size, then IEND: no pixel data at all.
static size_t png_header_only(uint8_t *b, uint32_t w, uint32_t h) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(b, sig, 8);
    const uint8_t ihdr[4 + 4 + 13] = {0, 0, 0, 13, 'I', 'H', 'D', 'R', (uint8_t)(w >> 24), (uint8_t)(w >> 16), (uint8_t)(w >> 8),
                                      (uint8_t)w, (uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8), (uint8_t)h, 8, 2, 0, 0, 0};
    memcpy(b + 8, ihdr, sizeof ihdr);
    const uint32_t crc = (uint32_t)crc32(0, ihdr + 4, 17);
    const uint8_t c[4] = {(uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8), (uint8_t)crc};
    memcpy(b + 29, c, 4);
    static const uint8_t iend[12] = {0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
    memcpy(b + 33, iend, 12);
    return 45;
}

// The JPEG's SOF0 size fields set to w x h (walking the marker segments: table bytes may look like markers).
static void jpeg_patch_size(uint8_t *j, size_t n, int w, int h) {
    for (size_t i = 2; i + 9 < n && j[i] == 0xff; i += 2 + ((size_t)j[i + 2] << 8 | j[i + 3])) {
        if (j[i + 1] == 0xc0) {
            j[i + 5] = (uint8_t)(h >> 8), j[i + 6] = (uint8_t)h, j[i + 7] = (uint8_t)(w >> 8), j[i + 8] = (uint8_t)w;
            return;
        }
    }
    fail_msg("no SOF0 marker");
}

static void test_bad_files(void **state) {
    (void)state;
    const int w = 32, h = 24;
    uint8_t *px = smooth(w, h, 3, 4);
    size_t pn, jn;
    uint8_t *png = png_encode(w, h, 2, 8, px, NULL, 0, &pn);
    uint8_t *jpeg = jpeg_encode(px, w, h, TJPF_RGB, TJSAMP_420, 90, &jn);
    uint8_t *b = malloc(pn > jn ? pn : jn);
    good_jpeg = jpeg, good_jpeg_n = jn;
    // Cut inside the entropy-coded data: libjpeg's "premature end" warning is an error here.
    uint8_t *noisy = noise(256 * 192 * 3, 8);
    size_t nn;
    uint8_t *big = jpeg_encode(noisy, 256, 192, TJPF_RGB, TJSAMP_420, 90, &nn);
    expect_bad("trunc.jpg", big, nn / 2, 0, "corrupt JPEG: Premature end");
    tjFree(big);
    free(noisy);
    expect_bad("trunc-header.jpg", jpeg, 300, 0, "corrupt JPEG header");
    memcpy(b, jpeg, jn);
    memset(b + 3, 0, 20);  // the markers after SOI
    expect_bad("header.jpg", b, jn, 0, "corrupt JPEG header");
    memcpy(b, jpeg, jn);
    jpeg_patch_size(b, jn, 20000, 20000);
    expect_bad("bomb.jpg", b, jn, 100000000, "20000x20000 = 400000000 pixels exceeds data.max_pixels=100000000");
    jpeg_patch_size(b, jn, 32, 0);
    expect_bad("zero.jpg", b, jn, 0, "JPEG");
    expect_bad("trunc.png", png, pn / 2, 0, "corrupt PNG");
    memcpy(b, png, pn);
    b[pn - 20] ^= 0x55;  // inside IDAT: its CRC no longer matches
    expect_bad("crc.png", b, pn, 0, "corrupt PNG");
    expect_bad("short.png", png, 20, 0, "truncated PNG");
    const uint8_t gif[] = "GIF89a\x01\x00\x01\x00";
    expect_bad("not-an-image.jpg", gif, sizeof gif - 1, 0, "not a JPEG or PNG (starts with bytes 47 49 46 38)");
    expect_bad("empty.png", gif, 0, 0, "empty file");
    uint8_t hdr[64];
    size_t hn = png_header_only(hdr, 0, 5);
    expect_bad("zero.png", hdr, hn, 0, "zero-size image (0x5)");
    hn = png_header_only(hdr, 20000, 20000);
    expect_bad("bomb.png", hdr, hn, 100000000, "20000x20000 = 400000000 pixels exceeds data.max_pixels=100000000");
    // The bomb's header is fine: with the limit lifted, decoding starts and finds no image data (still ST_INPUT).
    expect_bad("nodata.png", hdr, 45, 0, "corrupt PNG");
    // Image sizes of the same files are read from the header alone.
    int iw, ih, isj;
    assert_int_equal(image_info(ctx, "x", jpeg, jn, &iw, &ih, &isj, err, sizeof err), ST_OK);
    assert_true(iw == w && ih == h && isj);
    assert_int_equal(image_info(ctx, "x", png, pn, &iw, &ih, &isj, err, sizeof err), ST_OK);
    assert_true(iw == w && ih == h && !isj);
    free(b);
    free(png);
    tjFree(jpeg);
    free(px);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_round_trip),        cmocka_unit_test(test_png_interlaced),
        cmocka_unit_test(test_jpeg_decode_and_channels), cmocka_unit_test(test_dct_denom),
        cmocka_unit_test(test_dct_scaling_sample),    cmocka_unit_test(test_resize_reference),
        cmocka_unit_test(test_center_crop),           cmocka_unit_test(test_rrc_params),
        cmocka_unit_test(test_flip_crop_pad_match_gather), cmocka_unit_test(test_sample_rrc_pieces),
        cmocka_unit_test(test_one_pixel),             cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_resize_paths),          cmocka_unit_test(test_sample_paths),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
