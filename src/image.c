// image.c — JPEG (TurboJPEG) and PNG (libspng) decoding with PIL's channel rules, PIL's bilinear resampling
// and torchvision's crops, composed into one sample by image_sample (image.h says what each reproduces).
//
// Errors go to the caller's buffer ("NAME: reason"), never to err_set: the loader runs this on many threads.
#include "image.h"

#include <math.h>
#include <spng.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "common.h"
#include "gather_aug.h"

struct image_ctx {
    tjhandle tj;
    image_u8 decoded, resized;  // image_sample's stages, reused across samples
    image_u8 hrows;             // the resampler's horizontal pass (resample's tmp)
    uint8_t *raw;               // the decoder's native pixels when they need converting (PNG rows, CMYK)
    size_t raw_cap;
};

// A read-only window of an image (a crop box without copying it).
typedef struct view {
    const uint8_t *p;
    int w, h, c;
    size_t stride;  // bytes from one row to the next
} view;

// ---------------------------------------------------------------------------------------------------------
// Errors and buffers

// "NAME: reason" on one line: library messages (libjpeg's) may carry newlines.
static int fail(char *err, size_t len, int st, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(char *err, size_t len, int st, const char *name, const char *fmt, ...) {
    if (err == NULL || len == 0) return st;
    int k = snprintf(err, len, "%s: ", name && *name ? name : "(image)");
    if (k >= 0 && (size_t)k < len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + k, len - (size_t)k, fmt, ap);
        va_end(ap);
    }
    for (char *s = err; *s; s++)
        if (*s == '\n' || *s == '\r') *s = ' ';
    for (size_t e = strlen(err); e > 0 && err[e - 1] == ' '; e--) err[e - 1] = '\0';
    return st;
}

static int grow(uint8_t **p, size_t *cap, size_t need) {
    if (need <= *cap) return ST_OK;
    uint8_t *q = malloc(need ? need : 1);
    if (q == NULL) return ST_RUNTIME;
    free(*p);
    *p = q;
    *cap = need;
    return ST_OK;
}

static int image_alloc(image_u8 *im, int w, int h, int c) {
    if (grow(&im->data, &im->cap, (size_t)w * (size_t)h * (size_t)c) != ST_OK) return ST_RUNTIME;
    im->w = w;
    im->h = h;
    im->c = c;
    return ST_OK;
}

void image_free(image_u8 *im) {
    if (im == NULL) return;
    free(im->data);
    memset(im, 0, sizeof *im);
}

image_ctx *image_ctx_create(void) {
    image_ctx *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->tj = tjInitDecompress();
    if (c->tj == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

void image_ctx_free(image_ctx *c) {
    if (c == NULL) return;
    tjDestroy(c->tj);
    image_free(&c->decoded);
    image_free(&c->resized);
    image_free(&c->hrows);
    free(c->raw);
    free(c);
}

// ---------------------------------------------------------------------------------------------------------
// Headers

static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static int magic_jpeg(const uint8_t *b, size_t n) { return n >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff; }
static int magic_png(const uint8_t *b, size_t n) { return n >= 8 && memcmp(b, png_signature, 8) == 0; }
static uint32_t be32(const uint8_t *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}

// The PNG's size from its IHDR, read here so a bomb or a zero size is named before libspng allocates anything.
static int png_header(const char *name, const uint8_t *b, size_t n, int *w, int *h, char *err, size_t len) {
    if (n < 8 + 8 + 13 + 4) return fail(err, len, ST_INPUT, name, "truncated PNG (%zu bytes, no complete IHDR)", n);
    if (be32(b + 8) != 13 || memcmp(b + 12, "IHDR", 4) != 0)
        return fail(err, len, ST_INPUT, name, "corrupt PNG: the first chunk is not a 13-byte IHDR");
    const uint32_t pw = be32(b + 16), ph = be32(b + 20);
    if (pw == 0 || ph == 0) return fail(err, len, ST_INPUT, name, "zero-size image (%ux%u)", pw, ph);
    if (pw > INT32_MAX || ph > INT32_MAX) return fail(err, len, ST_INPUT, name, "corrupt PNG: size %ux%u", pw, ph);
    *w = (int)pw;
    *h = (int)ph;
    return ST_OK;
}

// A fresh TurboJPEG handle after every failure: libjpeg-turbo 2.1 leaves some failed handles unusable (after
// "Empty JPEG image", every later header is "Bogus marker length"), and one bad file must not fail the rest.
static int tj_reset(image_ctx *c, int st) {
    tjDestroy(c->tj);
    c->tj = tjInitDecompress();
    return st;
}

static int jpeg_header(image_ctx *c, const char *name, const uint8_t *buf, size_t n, int *w, int *h, int *cs, char *err,
                       size_t len) {
    if (c->tj == NULL && (c->tj = tjInitDecompress()) == NULL)
        return fail(err, len, ST_RUNTIME, name, "out of memory creating a JPEG decoder");
    int subsamp;
    if (tjDecompressHeader3(c->tj, buf, (unsigned long)n, w, h, &subsamp, cs) != 0)
        return tj_reset(c, fail(err, len, ST_INPUT, name, "corrupt JPEG header: %s", tjGetErrorStr2(c->tj)));
    // TurboJPEG answers 0x0 for a stream of tables without a frame (an "abbreviated" JPEG): no image in it.
    if (*w <= 0 || *h <= 0)
        return tj_reset(c, fail(err, len, ST_INPUT, name, "corrupt JPEG header: no frame (size %dx%d)", *w, *h));
    return ST_OK;
}

int image_info(image_ctx *c, const char *name, const uint8_t *buf, size_t n, int *w, int *h, int *is_jpeg, char *err,
               size_t err_len) {
    *w = *h = 0;
    *is_jpeg = magic_jpeg(buf, n);
    int cs;
    if (*is_jpeg) return jpeg_header(c, name, buf, n, w, h, &cs, err, err_len);
    if (magic_png(buf, n)) return png_header(name, buf, n, w, h, err, err_len);
    if (n == 0) return fail(err, err_len, ST_INPUT, name, "empty file (not a JPEG or PNG)");
    char start[16] = "";
    for (size_t i = 0, k = 0; i < n && i < 4; i++)
        k += (size_t)snprintf(start + k, sizeof start - k, &" %02x"[!i], buf[i]);
    return fail(err, err_len, ST_INPUT, name, "not a JPEG or PNG (starts with bytes %s)", start);
}

static int check_pixels(const char *name, int w, int h, long long max_pixels, char *err, size_t len) {
    const long long px = (long long)w * h;
    if (max_pixels > 0 && px > max_pixels)
        return fail(err, len, ST_INPUT, name, "%dx%d = %lld pixels exceeds data.max_pixels=%lld", w, h, px, max_pixels);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Channel conversion (PIL's Convert.c)

// PIL's L24: ITU-R 601-2 luma in 16-bit fixed point, rounded.
static inline uint8_t luma(unsigned r, unsigned g, unsigned b) {
    return (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

static inline void put_gray(uint8_t *d, int channels, unsigned v) {
    d[0] = (uint8_t)v;
    if (channels == 3) d[1] = d[2] = (uint8_t)v;
}

static inline void put_rgb(uint8_t *d, int channels, unsigned r, unsigned g, unsigned b) {
    if (channels == 1) {
        d[0] = luma(r, g, b);
    } else {
        d[0] = (uint8_t)r;
        d[1] = (uint8_t)g;
        d[2] = (uint8_t)b;
    }
}

// PIL's MULDIV255: a * b / 255 rounded, in integers.
static inline int muldiv255(int a, int b) {
    const int t = a * b + 128;
    return ((t >> 8) + t) >> 8;
}

// Adobe CMYK (stored inverted: PIL's rawmode "CMYK;I") through PIL's cmyk2rgb.
static void cmyk_convert(const uint8_t *in, size_t pixels, int channels, uint8_t *out) {
    for (size_t i = 0; i < pixels; i++, in += 4, out += channels) {
        const int nk = in[3];  // 255 - K with K = 255 - stored k
        unsigned v[3];
        for (int k = 0; k < 3; k++) {
            const int x = nk - muldiv255(255 - in[k], nk);
            v[k] = (unsigned)(x < 0 ? 0 : x > 255 ? 255 : x);
        }
        put_rgb(out, channels, v[0], v[1], v[2]);
    }
}

// ---------------------------------------------------------------------------------------------------------
// JPEG

static int scale_supported(int denom) {
    if (denom == 1) return 1;
    int n = 0;
    const tjscalingfactor *f = tjGetScalingFactors(&n);
    for (int i = 0; f && i < n; i++)
        if (f[i].num * denom == f[i].denom) return 1;
    return 0;
}

static int decode_jpeg(image_ctx *c, const char *name, const uint8_t *buf, size_t n, int channels, long long max_pixels,
                       int denom, image_u8 *out, char *err, size_t len) {
    int w, h, cs;
    int st = jpeg_header(c, name, buf, n, &w, &h, &cs, err, len);
    if (st == ST_OK) st = check_pixels(name, w, h, max_pixels, err, len);
    if (st != ST_OK) return st;
    if (!scale_supported(denom)) return fail(err, len, ST_RUNTIME, name, "DCT scale 1/%d is not supported", denom);
    const tjscalingfactor sf = {1, denom};
    const int sw = TJSCALED(w, sf), sh = TJSCALED(h, sf);
    // libjpeg's own conversion where PIL's is the same (YCbCr → RGB, gray); CMYK and RGB → L by PIL's rules.
    const int pf = cs == TJCS_GRAY ? TJPF_GRAY : cs == TJCS_CMYK || cs == TJCS_YCCK ? TJPF_CMYK : TJPF_RGB;
    const int native = tjPixelSize[pf];
    const int direct = (pf == TJPF_GRAY && channels == 1) || (pf == TJPF_RGB && channels == 3);
    if (image_alloc(out, sw, sh, channels) != ST_OK ||
        (!direct && grow(&c->raw, &c->raw_cap, (size_t)sw * sh * native) != ST_OK))
        return fail(err, len, ST_RUNTIME, name, "out of memory decoding a %dx%d JPEG", sw, sh);
    uint8_t *dst = direct ? out->data : c->raw;
    // Warnings (premature end of data, corrupt entropy data) are errors: PIL refuses truncated files too.
    int flags = TJFLAG_STOPONWARNING;
#ifdef TJFLAG_LIMITSCANS
    flags |= TJFLAG_LIMITSCANS;  // a progressive JPEG of thousands of scans is an attack, not a photo
#endif
    if (tjDecompress2(c->tj, buf, (unsigned long)n, dst, sw, sw * native, sh, pf, flags) != 0)
        return tj_reset(c, fail(err, len, ST_INPUT, name, "corrupt JPEG: %s", tjGetErrorStr2(c->tj)));
    if (direct) return ST_OK;
    const size_t px = (size_t)sw * sh;
    if (pf == TJPF_CMYK) {
        cmyk_convert(c->raw, px, channels, out->data);
    } else if (pf == TJPF_GRAY) {
        for (size_t i = 0; i < px; i++) put_gray(out->data + 3 * i, 3, c->raw[i]);
    } else {
        for (size_t i = 0; i < px; i++) out->data[i] = luma(c->raw[3 * i], c->raw[3 * i + 1], c->raw[3 * i + 2]);
    }
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// PNG: libspng's raw rows (big-endian, packed below 8 bits), converted here by PIL's rules.

static inline unsigned png_sample(const uint8_t *row, size_t i, int depth) {
    if (depth == 8) return row[i];
    if (depth == 16) return (unsigned)row[2 * i] << 8 | row[2 * i + 1];
    const size_t bit = i * (size_t)depth;
    return (row[bit >> 3] >> (8 - depth - (int)(bit & 7))) & ((1u << depth) - 1);
}

static void png_row(const uint8_t *row, const struct spng_ihdr *ih, const uint8_t (*pal)[3], int channels,
                    uint8_t *out) {
    const int d = ih->bit_depth;
    for (size_t x = 0; x < ih->width; x++, out += channels) {
        switch (ih->color_type) {
        case SPNG_COLOR_TYPE_GRAYSCALE: {
            const unsigned s = png_sample(row, x, d);
            // PIL: "1" is 0/255, "L;2"/"L;4" scale by 0x55/0x11, 16 bits open as "I" and clip to 255.
            const unsigned v = d == 1 ? s * 255 : d == 2 ? s * 0x55 : d == 4 ? s * 0x11 : d == 8 ? s : s > 255 ? 255 : s;
            put_gray(out, channels, v);
            break;
        }
        case SPNG_COLOR_TYPE_GRAYSCALE_ALPHA:
            put_gray(out, channels, d == 16 ? png_sample(row, 2 * x, d) >> 8 : png_sample(row, 2 * x, d));
            break;
        case SPNG_COLOR_TYPE_TRUECOLOR:
        case SPNG_COLOR_TYPE_TRUECOLOR_ALPHA: {
            const size_t k = ih->color_type == SPNG_COLOR_TYPE_TRUECOLOR ? 3 : 4;
            const int shift = d == 16 ? 8 : 0;
            put_rgb(out, channels, png_sample(row, k * x, d) >> shift, png_sample(row, k * x + 1, d) >> shift,
                    png_sample(row, k * x + 2, d) >> shift);
            break;
        }
        default: {  // SPNG_COLOR_TYPE_INDEXED
            const uint8_t *p = pal[png_sample(row, x, d)];
            put_rgb(out, channels, p[0], p[1], p[2]);
            break;
        }
        }
    }
}

static int png_error(spng_ctx *ctx, int r, const char *name, char *err, size_t len) {
    spng_ctx_free(ctx);
    // libspng reports its chunk limits as out of memory: a file that trips them is a bad file.
    return fail(err, len, ST_INPUT, name, "corrupt PNG: %s", spng_strerror(r));
}

static int decode_png(image_ctx *c, const char *name, const uint8_t *buf, size_t n, int channels, long long max_pixels,
                      image_u8 *out, char *err, size_t len) {
    int w = 0, h = 0;
    int st = png_header(name, buf, n, &w, &h, err, len);
    if (st == ST_OK) st = check_pixels(name, w, h, max_pixels, err, len);
    if (st != ST_OK) return st;
    spng_ctx *ctx = spng_ctx_new(0);
    if (ctx == NULL) return fail(err, len, ST_RUNTIME, name, "out of memory creating a PNG decoder");
    int r = spng_set_png_buffer(ctx, buf, n);
    if (r == 0) r = spng_set_chunk_limits(ctx, (size_t)64 << 20, (size_t)256 << 20);  // text, ICC: metadata only
    struct spng_ihdr ih;
    if (r == 0) r = spng_get_ihdr(ctx, &ih);
    size_t raw_size = 0;
    if (r == 0) r = spng_decoded_image_size(ctx, SPNG_FMT_RAW, &raw_size);
    if (r != 0) return png_error(ctx, r, name, err, len);
    if (grow(&c->raw, &c->raw_cap, raw_size) != ST_OK || image_alloc(out, w, h, channels) != ST_OK) {
        spng_ctx_free(ctx);
        return fail(err, len, ST_RUNTIME, name, "out of memory decoding a %dx%d PNG", w, h);
    }
    r = spng_decode_image(ctx, c->raw, raw_size, SPNG_FMT_RAW, 0);
    // PIL's palette: a gray ramp under the PLTE's entries (an index past them reads (i, i, i)).
    uint8_t pal[256][3];
    if (r == 0 && ih.color_type == SPNG_COLOR_TYPE_INDEXED) {
        for (int i = 0; i < 256; i++) pal[i][0] = pal[i][1] = pal[i][2] = (uint8_t)i;
        struct spng_plte plte;
        r = spng_get_plte(ctx, &plte);
        for (uint32_t i = 0; r == 0 && i < plte.n_entries && i < 256; i++) {
            pal[i][0] = plte.entries[i].red;
            pal[i][1] = plte.entries[i].green;
            pal[i][2] = plte.entries[i].blue;
        }
    }
    if (r != 0) return png_error(ctx, r, name, err, len);
    spng_ctx_free(ctx);
    const size_t stride = raw_size / (size_t)h;
    for (int y = 0; y < h; y++)
        png_row(c->raw + (size_t)y * stride, &ih, (const uint8_t(*)[3])pal, channels,
                out->data + (size_t)y * w * channels);
    return ST_OK;
}

int image_decode(image_ctx *c, const char *name, const uint8_t *buf, size_t n, int channels, long long max_pixels,
                 int scale_denom, image_u8 *out, char *err, size_t err_len) {
    if (channels != 1 && channels != 3)
        return fail(err, err_len, ST_INPUT, name, "%d output channels (want 1 or 3)", channels);
    if (magic_jpeg(buf, n)) return decode_jpeg(c, name, buf, n, channels, max_pixels, scale_denom, out, err, err_len);
    if (magic_png(buf, n)) return decode_png(c, name, buf, n, channels, max_pixels, out, err, err_len);
    int w, h, jpeg;
    return image_info(c, name, buf, n, &w, &h, &jpeg, err, err_len);  // names what it is not
}

// ---------------------------------------------------------------------------------------------------------
// Resampling: PIL's libImaging/Resample.c (ImagingResampleInner with the BILINEAR filter, 8 bits per sample)

#define PRECISION_BITS (32 - 8 - 2)

// The AVX2 passes (x86 with GCC or clang: compiled for AVX2 by a function attribute, chosen at run time by
// __builtin_cpu_supports) compute the same int32 sums as the scalar ones: products u8 x int32 weight, added in
// int32 (exact: the weights are non-negative and sum to about 1 << PRECISION_BITS, so no sum overflows), then
// PIL's clip8. Integer addition is associative, so the order of the terms changes no bit; test_resize_paths
// compares both paths with a plain restatement of PIL's fixed-point loops.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define IMAGE_AVX2 1
#include <immintrin.h>
#define AVX2_FN __attribute__((target("avx2")))
#else
#define IMAGE_AVX2 0
#endif

static int simd_enabled = 1;

// The tests' switch between the two paths (test_image.c): 0 forces the scalar loops. Not thread-safe; returns
// the previous setting. Not in image.h: a test hook, not an interface.
int image_resample_simd(int enable);
int image_resample_simd(int enable) {
    const int old = simd_enabled;
    simd_enabled = enable;
    return old;
}

#if IMAGE_AVX2
static int use_avx2(void) { return simd_enabled && __builtin_cpu_supports("avx2"); }
#endif

typedef struct axis {
    int ksize;
    int *bounds;  // per output pixel: first input pixel, count
    int32_t *k;   // per output pixel: ksize fixed-point weights
} axis;

static double bilinear_filter(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

// precompute_coeffs + normalize_coeffs_8bpc: the same double arithmetic in the same order, then the same
// rounding to fixed point, so every weight is PIL's bit for bit.
static int axis_coeffs(int in_size, float in0, float in1, int out_size, axis *a) {
    double filterscale, scale;
    filterscale = scale = (double)(in1 - in0) / out_size;
    if (filterscale < 1.0) filterscale = 1.0;
    const double support = 1.0 * filterscale;  // the bilinear filter's support, widened when downscaling
    a->ksize = (int)ceil(support) * 2 + 1;
    a->bounds = malloc((size_t)out_size * 2 * sizeof *a->bounds);
    a->k = malloc((size_t)out_size * a->ksize * sizeof *a->k);
    double *pre = malloc((size_t)a->ksize * sizeof *pre);
    if (a->bounds == NULL || a->k == NULL || pre == NULL) {
        free(pre);
        return ST_RUNTIME;
    }
    const double ss = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        const double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        int x;
        for (x = 0; x < xmax; x++) {
            const double w = bilinear_filter((x + xmin - center + 0.5) * ss);
            pre[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) pre[x] /= ww;
        int32_t *k = a->k + (size_t)xx * a->ksize;
        for (x = 0; x < xmax; x++)
            k[x] = pre[x] < 0 ? (int32_t)(-0.5 + pre[x] * (1 << PRECISION_BITS))
                              : (int32_t)(0.5 + pre[x] * (1 << PRECISION_BITS));
        for (; x < a->ksize; x++) k[x] = 0;
        a->bounds[2 * xx] = xmin;
        a->bounds[2 * xx + 1] = xmax < 0 ? 0 : xmax;
    }
    free(pre);
    return ST_OK;
}

static void axis_free(axis *a) {
    free(a->bounds);
    free(a->k);
}

// PIL's clip8: the rounded sum's integer part, clipped to 0..255.
static inline uint8_t clip8(int32_t ss) {
    if (ss < 0) return 0;
    const int32_t v = ss >> PRECISION_BITS;
    return (uint8_t)(v > 255 ? 255 : v);
}

// One output pixel of the horizontal pass (PIL's inner loop), C (1 or 3) channels.
static inline __attribute__((always_inline)) void hpixel(const uint8_t *restrict line, const axis *a, int xx, int C,
                                                         uint8_t *restrict o) {
    const int xmin = a->bounds[2 * xx], n = a->bounds[2 * xx + 1];
    const int32_t *k = a->k + (size_t)xx * a->ksize;
    const uint8_t *p = line + (size_t)xmin * C;
    if (C == 3) {  // the three sums in one loop over the taps, as PIL's ss0, ss1, ss2
        int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
        for (int x = 0; x < n; x++, p += 3) {
            s0 += p[0] * k[x];
            s1 += p[1] * k[x];
            s2 += p[2] * k[x];
        }
        o[0] = clip8(s0), o[1] = clip8(s1), o[2] = clip8(s2);
    } else {
        int32_t ss = 1 << (PRECISION_BITS - 1);
        for (int x = 0; x < n; x++) ss += p[x] * k[x];
        o[0] = clip8(ss);
    }
}

static inline __attribute__((always_inline)) void hpass_rows(const view *in, int row0, int rows, const axis *a,
                                                             int out_w, int C, uint8_t *restrict out) {
    for (int yy = 0; yy < rows; yy++) {
        const uint8_t *line = in->p + (size_t)(yy + row0) * in->stride;
        uint8_t *o = out + (size_t)yy * out_w * C;
        for (int xx = 0; xx < out_w; xx++) hpixel(line, a, xx, C, o + (size_t)xx * C);
    }
}

// Rows row0 .. row0 + rows - 1 of in, resampled to out_w pixels each (the channel count a constant in each copy).
static void resample_horizontal(const view *in, int row0, int rows, const axis *a, int out_w, uint8_t *out) {
    if (in->c == 3) hpass_rows(in, row0, rows, a, out_w, 3, out);
    else hpass_rows(in, row0, rows, a, out_w, 1, out);
}

// Row by row into int32 sums: the same integer sums as PIL's column loops (integer addition is exact).
static int resample_vertical(const view *in, const axis *a, int out_h, uint8_t *out) {
    const size_t cols = (size_t)in->w * in->c;
    int32_t *acc = malloc(cols * sizeof *acc);
    if (acc == NULL) return ST_RUNTIME;
    for (int yy = 0; yy < out_h; yy++) {
        const int ymin = a->bounds[2 * yy], ymax = a->bounds[2 * yy + 1];
        const int32_t *k = a->k + (size_t)yy * a->ksize;
        for (size_t i = 0; i < cols; i++) acc[i] = 1 << (PRECISION_BITS - 1);
        for (int y = 0; y < ymax; y++) {
            const uint8_t *line = in->p + (size_t)(y + ymin) * in->stride;
            const int32_t ky = k[y];
            for (size_t i = 0; i < cols; i++) acc[i] += line[i] * ky;
        }
        uint8_t *o = out + (size_t)yy * cols;
        for (size_t i = 0; i < cols; i++) o[i] = clip8(acc[i]);
    }
    free(acc);
    return ST_OK;
}

#if IMAGE_AVX2
// The horizontal weights laid out for the AVX2 pass. Taps go in groups (2 for 3 channels, 8 for 1), every output
// pixel with as many groups as the widest needs, padded with zero weights (a fixed trip count: the tap count
// varies from pixel to pixel, and a loop on it mispredicts). 3 channels: per group 8 int32, each tap's weight four
// times (one per int32 lane of an (R, G, B, 0) pixel); 1 channel: per group the 8 weights. reach: how many bytes
// from the row's start the pixel's 8-byte loads touch; a pixel whose loads would pass the view's last byte takes
// the plain loop.
typedef struct hpack {
    int32_t *k;
    int stride;  // int32 per output pixel
    int groups;
    int *reach;
} hpack;

static void hpack_free(hpack *h) {
    free(h->k);
    free(h->reach);
}

static int hpack_make(const axis *a, int out_w, int C, hpack *h) {
    const int per = C == 3 ? 2 : 8;
    int G = 1;
    for (int xx = 0; xx < out_w; xx++) {
        const int g = (a->bounds[2 * xx + 1] + per - 1) / per;
        G = g > G ? g : G;
    }
    h->groups = G;
    h->stride = G * 8;
    h->k = calloc((size_t)out_w * h->stride, sizeof *h->k);
    h->reach = malloc((size_t)out_w * sizeof *h->reach);
    if (h->k == NULL || h->reach == NULL) return ST_RUNTIME;
    for (int xx = 0; xx < out_w; xx++) {
        const int xmin = a->bounds[2 * xx], n = a->bounds[2 * xx + 1];
        const int32_t *k = a->k + (size_t)xx * a->ksize;
        int32_t *d = h->k + (size_t)xx * h->stride;
        for (int x = 0; x < n; x++)
            if (C == 3)
                for (int l = 0; l < 4; l++) d[4 * x + l] = k[x];
            else
                d[x] = k[x];
        h->reach[xx] = C == 3 ? (xmin + 2 * (G - 1)) * 3 + 8 : xmin + 8 * G;
    }
    return ST_OK;
}

// One output pixel of 3 channels from G groups of 2 taps (G a constant in each copy: no branch on the tap count).
AVX2_FN static inline __attribute__((always_inline)) uint32_t hpixel3_avx2(const uint8_t *p, const int32_t *k, int G) {
    // pshufb: taps 0 and 1 of an 8-byte load, one per 128-bit lane, each as (R, G, B, 0) in int32
    const __m256i m01 = _mm256_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, -1, -1, -1, -1,  //
                                         3, -1, -1, -1, 4, -1, -1, -1, 5, -1, -1, -1, -1, -1, -1, -1);
    const int half = 1 << (PRECISION_BITS - 1);
    __m256i acc = _mm256_setr_epi32(half, half, half, 0, 0, 0, 0, 0);
    for (int g = 0; g < G; g++, p += 6, k += 8) {
        const __m256i v = _mm256_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)p));
        const __m256i w = _mm256_loadu_si256((const __m256i *)k);
        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(_mm256_shuffle_epi8(v, m01), w));
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_srai_epi32(s, PRECISION_BITS);  // clip8: negative -> 0 and > 255 -> 255 by the saturating packs
    s = _mm_packus_epi16(_mm_packs_epi32(s, s), s);
    return (uint32_t)_mm_cvtsi128_si32(s);  // R, G, B, 0
}

AVX2_FN static inline __attribute__((always_inline)) void hrow3_avx2(const uint8_t *line, const axis *a, const hpack *h,
                                                                     int n_fast, int out_w, uint8_t *restrict o,
                                                                     int G) {
    int xx = 0;
    for (; xx < n_fast && xx + 1 < out_w; xx++) {  // 4-byte stores: the 4th byte is the next pixel's, rewritten
        const uint32_t v = hpixel3_avx2(line + (size_t)a->bounds[2 * xx] * 3, h->k + (size_t)xx * h->stride, G);
        memcpy(o + (size_t)xx * 3, &v, 4);
    }
    for (; xx < out_w; xx++) {
        if (xx < n_fast) {
            const uint32_t v = hpixel3_avx2(line + (size_t)a->bounds[2 * xx] * 3, h->k + (size_t)xx * h->stride, G);
            memcpy(o + (size_t)xx * 3, &v, 3);
        } else {  // the loads would pass the view's end: the plain loop
            hpixel(line, a, xx, 3, o + (size_t)xx * 3);
        }
    }
}

AVX2_FN static void hpass3_avx2(const view *in, int row0, int rows, const axis *a, const hpack *h, int out_w,
                                uint8_t *restrict out) {
    const uint8_t *end = in->p + (size_t)(in->h - 1) * in->stride + (size_t)in->w * 3;  // past the view's last byte
    for (int yy = 0; yy < rows; yy++) {
        const uint8_t *line = in->p + (size_t)(yy + row0) * in->stride;
        int n_fast = out_w;  // pixels whose loads stay inside the view (reach grows with xx)
        while (n_fast > 0 && h->reach[n_fast - 1] > end - line) n_fast--;
        uint8_t *o = out + (size_t)yy * out_w * 3;
        switch (h->groups) {
        case 1: hrow3_avx2(line, a, h, n_fast, out_w, o, 1); break;
        case 2: hrow3_avx2(line, a, h, n_fast, out_w, o, 2); break;
        case 3: hrow3_avx2(line, a, h, n_fast, out_w, o, 3); break;
        default: hrow3_avx2(line, a, h, n_fast, out_w, o, h->groups); break;
        }
    }
}

AVX2_FN static void hpass1_avx2(const view *in, int row0, int rows, const axis *a, const hpack *h, int out_w,
                                uint8_t *restrict out) {
    const uint8_t *end = in->p + (size_t)(in->h - 1) * in->stride + (size_t)in->w;
    for (int yy = 0; yy < rows; yy++) {
        const uint8_t *line = in->p + (size_t)(yy + row0) * in->stride;
        int n_fast = out_w;
        while (n_fast > 0 && h->reach[n_fast - 1] > end - line) n_fast--;
        uint8_t *o = out + (size_t)yy * out_w;
        for (int xx = 0; xx < out_w; xx++) {
            if (xx >= n_fast) {
                hpixel(line, a, xx, 1, o + xx);
                continue;
            }
            const uint8_t *p = line + a->bounds[2 * xx];
            const int32_t *k = h->k + (size_t)xx * h->stride;
            __m256i acc = _mm256_setzero_si256();
            for (int g = h->groups; g > 0; g--, p += 8, k += 8) {
                const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
                acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(v, _mm256_loadu_si256((const __m256i *)k)));
            }
            __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
            s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
            o[xx] = clip8((int32_t)((uint32_t)_mm_cvtsi128_si32(s) + (1u << (PRECISION_BITS - 1))));
        }
    }
}

// 8 int32 sums to 8 bytes by clip8.
AVX2_FN static inline __m128i clip8x8(__m256i a) {
    a = _mm256_srai_epi32(a, PRECISION_BITS);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    return _mm_packus_epi16(w, w);
}

#define LOAD8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p)))

// The vertical pass 32 (then 8) columns at a time, the sums held in registers across the taps.
AVX2_FN static void vpass_avx2(const view *in, const axis *a, int out_h, uint8_t *restrict out) {
    const size_t cols = (size_t)in->w * in->c, stride = in->stride;
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int yy = 0; yy < out_h; yy++) {
        const int n = a->bounds[2 * yy + 1];
        const int32_t *k = a->k + (size_t)yy * a->ksize;
        const uint8_t *base = in->p + (size_t)a->bounds[2 * yy] * stride;
        uint8_t *o = out + (size_t)yy * cols;
        size_t i = 0;
        for (; i + 32 <= cols; i += 32) {
            __m256i s0 = half, s1 = half, s2 = half, s3 = half;
            const uint8_t *p = base + i;
            for (int y = 0; y < n; y++, p += stride) {
                const __m256i ky = _mm256_set1_epi32(k[y]);
                s0 = _mm256_add_epi32(s0, _mm256_mullo_epi32(LOAD8(p), ky));
                s1 = _mm256_add_epi32(s1, _mm256_mullo_epi32(LOAD8(p + 8), ky));
                s2 = _mm256_add_epi32(s2, _mm256_mullo_epi32(LOAD8(p + 16), ky));
                s3 = _mm256_add_epi32(s3, _mm256_mullo_epi32(LOAD8(p + 24), ky));
            }
            s0 = _mm256_srai_epi32(s0, PRECISION_BITS);
            s1 = _mm256_srai_epi32(s1, PRECISION_BITS);
            s2 = _mm256_srai_epi32(s2, PRECISION_BITS);
            s3 = _mm256_srai_epi32(s3, PRECISION_BITS);
            // packs/packus work per 128-bit lane: 4-byte groups come out as s0 s1 s2 s3 (low halves), then the
            // high halves; the permute puts them back in column order.
            const __m256i b = _mm256_packus_epi16(_mm256_packs_epi32(s0, s1), _mm256_packs_epi32(s2, s3));
            _mm256_storeu_si256((__m256i *)(o + i), _mm256_permutevar8x32_epi32(b, order));
        }
        for (; i + 8 <= cols; i += 8) {
            __m256i s = half;
            const uint8_t *p = base + i;
            for (int y = 0; y < n; y++, p += stride)
                s = _mm256_add_epi32(s, _mm256_mullo_epi32(LOAD8(p), _mm256_set1_epi32(k[y])));
            _mm_storel_epi64((__m128i *)(o + i), clip8x8(s));
        }
        for (; i < cols; i++) {
            int32_t ss = 1 << (PRECISION_BITS - 1);
            const uint8_t *p = base + i;
            for (int y = 0; y < n; y++, p += stride) ss += *p * k[y];
            o[i] = clip8(ss);
        }
    }
}
#undef LOAD8
#endif

// Rows of in to out_w pixels: the AVX2 pass where the CPU has it, else the plain loops.
static int hpass(const view *in, int row0, int rows, const axis *a, int out_w, uint8_t *out) {
#if IMAGE_AVX2
    if (use_avx2()) {
        hpack h = {0};
        int st = hpack_make(a, out_w, in->c, &h);
        if (st == ST_OK) {
            if (in->c == 3) hpass3_avx2(in, row0, rows, a, &h, out_w, out);
            else hpass1_avx2(in, row0, rows, a, &h, out_w, out);
        }
        hpack_free(&h);
        return st;
    }
#endif
    resample_horizontal(in, row0, rows, a, out_w, out);
    return ST_OK;
}

static int vpass(const view *in, const axis *a, int out_h, uint8_t *out) {
#if IMAGE_AVX2
    if (use_avx2()) {
        vpass_avx2(in, a, out_h, out);
        return ST_OK;
    }
#endif
    return resample_vertical(in, a, out_h, out);
}

// ImagingResampleInner: the horizontal pass over only the rows the vertical pass reads, each pass skipped
// when it would be the identity (PIL's need_horizontal / need_vertical, box included). tmp holds the horizontal
// pass's rows (grown as needed, kept by the caller for the next call).
static int resample(const view *src, const float box[4], int out_w, int out_h, image_u8 *dst, image_u8 *tmp) {
    const int need_h = out_w != src->w || box[0] != 0 || box[2] != out_w;
    const int need_v = out_h != src->h || box[1] != 0 || box[3] != out_h;
    axis ax = {0}, ay = {0};
    int st = axis_coeffs(src->w, box[0], box[2], out_w, &ax);
    if (st == ST_OK) st = axis_coeffs(src->h, box[1], box[3], out_h, &ay);
    if (st != ST_OK) goto done;
    const int y_first = ay.bounds[0], y_last = ay.bounds[2 * (out_h - 1)] + ay.bounds[2 * (out_h - 1) + 1];
    view in = *src;
    if (need_h) {
        const int rows = y_last - y_first;
        if (!need_v) {  // the horizontal pass is the result
            if ((st = image_alloc(dst, out_w, rows, src->c)) == ST_OK)
                st = hpass(src, y_first, rows, &ax, out_w, dst->data);
            goto done;
        }
        if ((st = image_alloc(tmp, out_w, rows > 0 ? rows : 1, src->c)) != ST_OK) goto done;
        if ((st = hpass(src, y_first, rows, &ax, out_w, tmp->data)) != ST_OK) goto done;
        for (int i = 0; i < out_h; i++) ay.bounds[2 * i] -= y_first;
        in = (view){tmp->data, out_w, rows, src->c, (size_t)out_w * src->c};
    }
    if ((st = image_alloc(dst, in.w, need_v ? out_h : in.h, src->c)) != ST_OK) goto done;
    if (need_v) {
        st = vpass(&in, &ay, out_h, dst->data);
    } else {
        const size_t row = (size_t)in.w * in.c;
        for (int y = 0; y < in.h; y++) memcpy(dst->data + (size_t)y * row, in.p + (size_t)y * in.stride, row);
    }
done:
    axis_free(&ax);
    axis_free(&ay);
    return st;
}

static view whole(const image_u8 *im) { return (view){im->data, im->w, im->h, im->c, (size_t)im->w * im->c}; }

int image_resize(const image_u8 *src, int w, int h, image_u8 *dst) {
    if (w < 1 || h < 1 || src->w < 1 || src->h < 1 || src == dst) return ST_RUNTIME;
    const view v = whole(src);
    const float box[4] = {0, 0, (float)src->w, (float)src->h};
    image_u8 tmp = {0};
    const int st = resample(&v, box, w, h, dst, &tmp);
    image_free(&tmp);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Crops

// dst(y, x) = src(y + top, x + left), zero outside src.
static int crop_copy(const image_u8 *src, int top, int left, int h, int w, image_u8 *dst) {
    if (h < 1 || w < 1 || src == dst) return ST_RUNTIME;
    if (image_alloc(dst, w, h, src->c) != ST_OK) return ST_RUNTIME;
    const int C = src->c;
    memset(dst->data, 0, (size_t)w * h * C);
    const int x0 = left < 0 ? -left : 0, x1 = src->w - left < w ? src->w - left : w;
    for (int y = 0; y < h && x1 > x0; y++) {
        const int sy = y + top;
        if (sy < 0 || sy >= src->h) continue;
        memcpy(dst->data + ((size_t)y * w + x0) * C, src->data + ((size_t)sy * src->w + x0 + left) * C,
               (size_t)(x1 - x0) * C);
    }
    return ST_OK;
}

int image_crop(const image_u8 *src, int top, int left, int h, int w, image_u8 *dst) {
    return crop_copy(src, top, left, h, w, dst);
}

// Python's round(d / 2.0) for d >= 0: halves go to the even neighbour.
static int half_round_even(int d) {
    const int q = d / 2;
    return d % 2 == 0 || q % 2 == 0 ? q : q + 1;
}

// torchvision's center_crop as an offset into the unpadded image: output (y, x) reads (y + *oy, x + *ox).
static void center_offsets(int in_h, int in_w, int h, int w, int *oy, int *ox) {
    const int pad_t = h > in_h ? (h - in_h) / 2 : 0, pad_b = h > in_h ? (h - in_h + 1) / 2 : 0;
    const int pad_l = w > in_w ? (w - in_w) / 2 : 0, pad_r = w > in_w ? (w - in_w + 1) / 2 : 0;
    *oy = half_round_even(in_h + pad_t + pad_b - h) - pad_t;
    *ox = half_round_even(in_w + pad_l + pad_r - w) - pad_l;
}

int image_center_crop(const image_u8 *src, int h, int w, image_u8 *dst) {
    int oy, ox;
    center_offsets(src->h, src->w, h, w, &oy, &ox);
    return crop_copy(src, oy, ox, h, w, dst);
}

void image_resize_dims(int w, int h, int size, int *out_w, int *out_h) {
    const int s = w <= h ? w : h, l = w <= h ? h : w;
    const int nl = (int)((double)((long long)size * l) / s);  // Python: int(size * long / short)
    *out_w = w <= h ? size : nl;
    *out_h = w <= h ? nl : size;
}

// ---------------------------------------------------------------------------------------------------------
// RandomResizedCrop

#define RRC_STREAM 0x7272632d63726f70ull  // "rrc-crop": unrelated to gather_aug_draw's bits of the same hash

static double rrc_uniform(uint64_t base, uint64_t k) { return (double)(gather_aug_mix(base + k) >> 11) * 0x1p-53; }

static int rrc_randint(double u, int n) {  // uniform in [0, n)
    const int v = (int)(u * n);
    return v < n ? v : n - 1;
}

void image_rrc_params(uint64_t seed, int64_t epoch, int64_t index, int w, int h, const double scale[2],
                      const double ratio[2], int *top, int *left, int *crop_h, int *crop_w) {
    const uint64_t base = gather_aug_mix(gather_aug_hash(seed, epoch, index) ^ RRC_STREAM);
    const double area = (double)w * h, lr0 = log(ratio[0]), lr1 = log(ratio[1]);
    for (int t = 0; t < 10; t++) {
        const uint64_t k = 4 * (uint64_t)t;
        const double target = area * (scale[0] + (scale[1] - scale[0]) * rrc_uniform(base, k));
        const double aspect = exp(lr0 + (lr1 - lr0) * rrc_uniform(base, k + 1));
        const double cw = nearbyint(sqrt(target * aspect)), ch = nearbyint(sqrt(target / aspect));  // Python round
        if (cw > 0 && cw <= w && ch > 0 && ch <= h) {
            *crop_w = (int)cw;
            *crop_h = (int)ch;
            *top = rrc_randint(rrc_uniform(base, k + 2), h - *crop_h + 1);
            *left = rrc_randint(rrc_uniform(base, k + 3), w - *crop_w + 1);
            return;
        }
    }
    // Fallback: the central crop with the aspect ratio clamped to the range.
    const double in_ratio = (double)w / h, rmin = fmin(ratio[0], ratio[1]), rmax = fmax(ratio[0], ratio[1]);
    int cw = w, ch = h;
    if (in_ratio < rmin) {
        ch = (int)nearbyint(cw / rmin);
    } else if (in_ratio > rmax) {
        cw = (int)nearbyint(ch * rmax);
    }
    if (cw < 1) cw = 1;
    if (ch < 1) ch = 1;
    *crop_w = cw;
    *crop_h = ch;
    *top = (h - ch) / 2;
    *left = (w - cw) / 2;
}

int image_dct_denom(int region_w, int region_h, int target_w, int target_h) {
    for (int d = 8; d > 1; d /= 2)
        if ((long long)region_w >= 2LL * target_w * d && (long long)region_h >= 2LL * target_h * d && scale_supported(d))
            return d;
    return 1;
}

// ---------------------------------------------------------------------------------------------------------
// One sample

// Center crop (with torchvision's padding), then the gather's flip and padded crop, straight into CHW:
// output (y, x) reads the cropped image at (y + dy, (flip ? w - 1 - x : x) + dx), zero outside it, exactly as
// the backend's gather reads a stored sample (src/cpu/ops_cpu.c). Each row is a run of n pixels read left to
// right (or right to left when flipped) with zeros either side.
static inline __attribute__((always_inline)) void emit_run3(const uint8_t *restrict p, int n, int flip,
                                                            uint8_t *restrict r, uint8_t *restrict g,
                                                            uint8_t *restrict b) {
    if (flip) {  // source pixel j (from the run's left end) to output n - 1 - j
        const uint8_t *q = p - 3 * (n - 1);
        for (int j = 0; j < n; j++) {
            r[n - 1 - j] = q[3 * j];
            g[n - 1 - j] = q[3 * j + 1];
            b[n - 1 - j] = q[3 * j + 2];
        }
    } else {
        for (int i = 0; i < n; i++) {
            r[i] = p[3 * i];
            g[i] = p[3 * i + 1];
            b[i] = p[3 * i + 2];
        }
    }
}

static void emit_run3_plain(const uint8_t *p, int n, int flip, uint8_t *r, uint8_t *g, uint8_t *b) {
    emit_run3(p, n, flip, r, g, b);
}

#if IMAGE_AVX2
AVX2_FN static void emit_run3_avx2(const uint8_t *p, int n, int flip, uint8_t *r, uint8_t *g, uint8_t *b) {
    emit_run3(p, n, flip, r, g, b);
}
#endif

static void sample_emit(const image_u8 *s, const image_tf *tf, int training, int64_t epoch, int64_t index, uint8_t *out) {
    const int oh = tf->out_h, ow = tf->out_w, C = s->c;
    int oy, ox;
    center_offsets(s->h, s->w, oh, ow, &oy, &ox);
    gather_draw d = {0, 0, 0};
    if (training && (tf->flip || tf->crop_pad > 0)) {
        gather_aug a = {0};
        a.seed = tf->seed;
        a.epoch = epoch;
        a.c = C;
        a.h = oh;
        a.w = ow;
        a.crop_pad = tf->crop_pad;
        a.flip = tf->flip;
        d = gather_aug_draw(&a, index);
    }
    void (*run3)(const uint8_t *, int, int, uint8_t *, uint8_t *, uint8_t *) = emit_run3_plain;
#if IMAGE_AVX2
    if (use_avx2()) run3 = emit_run3_avx2;
#endif
    // Source column sx = (flip ? ow - 1 - x : x) + dx is inside for sx in [sx0, sx1) (the crop and the image);
    // the outputs x that read those: [x0, x1).
    const int sx0 = ox < 0 ? -ox : 0, sx1 = s->w - ox < ow ? s->w - ox : ow;
    int x0 = d.flip ? ow + d.dx - sx1 : sx0 - d.dx, x1 = d.flip ? ow + d.dx - sx0 : sx1 - d.dx;
    if (x0 < 0) x0 = 0;
    if (x1 > ow) x1 = ow;
    if (x1 < x0) x1 = x0;
    const size_t plane = (size_t)oh * ow;
    for (int y = 0; y < oh; y++) {
        uint8_t *row = out + (size_t)y * ow;
        const int sy = y + d.dy, ry = sy + oy;
        if (!(sy >= 0 && sy < oh && ry >= 0 && ry < s->h) || x0 == x1) {
            for (int ch = 0; ch < C; ch++) memset(row + ch * plane, 0, (size_t)ow);
            continue;
        }
        for (int ch = 0; ch < C; ch++) {
            memset(row + ch * plane, 0, (size_t)x0);
            memset(row + ch * plane + x1, 0, (size_t)(ow - x1));
        }
        const int rx = (d.flip ? ow - 1 - x0 : x0) + d.dx + ox;  // the source column of output x0
        const uint8_t *p = s->data + ((size_t)ry * s->w + rx) * C;
        const int n = x1 - x0;
        if (C == 3) {
            run3(p, n, d.flip, row + x0, row + plane + x0, row + 2 * plane + x0);
        } else if (!d.flip) {
            memcpy(row + x0, p, (size_t)n);
        } else {
            for (int i = 0; i < n; i++) row[x0 + i] = p[-i];
        }
    }
}

static int tf_check(const image_tf *tf, int training, const char *name, char *err, size_t len) {
    if (tf->channels != 1 && tf->channels != 3)
        return fail(err, len, ST_INPUT, name, "%d output channels (want 1 or 3)", tf->channels);
    if (tf->out_h < 1 || tf->out_w < 1 || tf->resize < 0 || tf->crop_pad < 0)
        return fail(err, len, ST_INPUT, name, "bad transform: out %dx%d, resize %d, crop_pad %d", tf->out_h, tf->out_w,
                    tf->resize, tf->crop_pad);
    if (training && tf->rrc &&
        !(tf->rrc_scale[0] > 0 && tf->rrc_scale[0] <= tf->rrc_scale[1] && tf->rrc_ratio[0] > 0 && tf->rrc_ratio[1] > 0))
        return fail(err, len, ST_INPUT, name, "bad random resized crop: scale (%g, %g), ratio (%g, %g)", tf->rrc_scale[0],
                    tf->rrc_scale[1], tf->rrc_ratio[0], tf->rrc_ratio[1]);
    return ST_OK;
}

int image_sample(image_ctx *c, const image_tf *tf, int training, const char *name, const uint8_t *buf, size_t n,
                 int64_t epoch, int64_t index, uint8_t *out, char *err, size_t err_len) {
    int st = tf_check(tf, training, name, err, err_len);
    int W, H, jpeg;
    if (st == ST_OK) st = image_info(c, name, buf, n, &W, &H, &jpeg, err, err_len);
    if (st == ST_OK) st = check_pixels(name, W, H, tf->max_pixels, err, err_len);
    if (st != ST_OK) return st;
    // The region of the full-size image to resample (top, left, rh x rw) and the size it becomes (tw x th).
    int top = 0, left = 0, rh = H, rw = W, tw = 0, th = 0;
    if (training && tf->rrc) {
        image_rrc_params(tf->seed, epoch, index, W, H, tf->rrc_scale, tf->rrc_ratio, &top, &left, &rh, &rw);
        tw = tf->out_w;
        th = tf->out_h;
    } else if (tf->resize > 0) {
        image_resize_dims(W, H, tf->resize, &tw, &th);
        if (tw == W && th == H) tw = th = 0;  // PIL returns a copy: nothing to resample
    }
    const int denom = tf->dct_scaling && jpeg && tw > 0 ? image_dct_denom(rw, rh, tw, th) : 1;
    st = image_decode(c, name, buf, n, tf->channels, tf->max_pixels, denom, &c->decoded, err, err_len);
    if (st != ST_OK) return st;
    const image_u8 *s = &c->decoded;
    if (tw > 0) {
        // The region in decoded pixels: exact at full scale (PIL crops, then resizes the crop alone); at 1/denom
        // the fractional box inside the whole pixels that hold it.
        const double x0 = (double)left / denom, y0 = (double)top / denom;
        const double x1 = fmin((double)(left + rw) / denom, s->w), y1 = fmin((double)(top + rh) / denom, s->h);
        const int ix0 = (int)floor(x0), iy0 = (int)floor(y0);
        const int ix1 = (int)fmin(ceil(x1), s->w), iy1 = (int)fmin(ceil(y1), s->h);
        const view v = {s->data + ((size_t)iy0 * s->w + ix0) * s->c, ix1 - ix0, iy1 - iy0, s->c, (size_t)s->w * s->c};
        const float box[4] = {(float)(x0 - ix0), (float)(y0 - iy0), (float)(x1 - ix0), (float)(y1 - iy0)};
        if (resample(&v, box, tw, th, &c->resized, &c->hrows) != ST_OK)
            return fail(err, err_len, ST_RUNTIME, name, "out of memory resizing %dx%d to %dx%d", v.w, v.h, tw, th);
        s = &c->resized;
    }
    sample_emit(s, tf, training, epoch, index, out);
    return ST_OK;
}
