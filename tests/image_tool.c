// image_tool.c — one image file through src/image.h, the raw CHW bytes to stdout, for the PIL/torchvision
// parity check (tests/image_parity.py, run by cli_image_parity.sh).
//
//   image_tool FILE CHANNELS OUT_H OUT_W MODE [ARGS]
//     resize W H                 resize to W x H (PIL bilinear), then center crop to OUT_H x OUT_W
//     center_crop                center crop to OUT_H x OUT_W (zero padding where smaller)
//     eval RESIZE                image_sample's evaluation path: shorter side to RESIZE, center crop
//     resized_crop T L H W       crop (top T, left L, H x W), resize to OUT_H x OUT_W (torchvision resized_crop)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "image.h"

static int usage(void) {
    fprintf(stderr, "usage: image_tool FILE CHANNELS OUT_H OUT_W resize W H | center_crop | eval RESIZE | "
                    "resized_crop TOP LEFT H W\n");
    return 2;
}

static int arg(const char *s, long lo, long hi, int *out) {
    long v;
    if (parse_int(s, lo, hi, &v) != 0) {
        fprintf(stderr, "image_tool: bad number '%s'\n", s);
        return 0;
    }
    *out = (int)v;
    return 1;
}

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t cap = 1 << 16, len = 0;
    uint8_t *b = malloc(cap);
    size_t got;
    while (b && (got = fread(b + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            uint8_t *q = realloc(b, cap *= 2);
            if (q == NULL) free(b);
            b = q;
        }
    }
    fclose(f);
    *n = len;
    return b;
}

// HWC image → CHW bytes on stdout.
static int write_chw(const image_u8 *im) {
    for (int ch = 0; ch < im->c; ch++)
        for (size_t i = 0; i < (size_t)im->w * im->h; i++)
            if (putchar(im->data[i * im->c + ch]) == EOF) return 1;
    return fflush(stdout) != 0;
}

int main(int argc, char **argv) {
    if (argc < 6) return usage();
    const char *path = argv[1], *mode = argv[5];
    int channels, oh, ow;
    if (!arg(argv[2], 1, 3, &channels) || !arg(argv[3], 1, 1 << 20, &oh) || !arg(argv[4], 1, 1 << 20, &ow)) return 2;
    size_t n = 0;
    uint8_t *buf = read_all(path, &n);
    if (buf == NULL) {
        perror(path);
        return 1;
    }
    image_ctx *ctx = image_ctx_create();
    if (ctx == NULL) return 1;
    char err[512] = "";
    image_u8 a = {0}, b = {0};
    int st = ST_OK;
    if (strcmp(mode, "eval") == 0 && argc == 7) {
        image_tf tf = {.channels = channels, .out_h = oh, .out_w = ow, .max_pixels = 1LL << 30};
        if (!arg(argv[6], 0, 1 << 20, &tf.resize)) return 2;
        uint8_t *out = malloc((size_t)channels * oh * ow);
        st = out ? image_sample(ctx, &tf, 0, path, buf, n, 0, 0, out, err, sizeof err) : ST_RUNTIME;
        if (st == ST_OK) fwrite(out, 1, (size_t)channels * oh * ow, stdout);
        free(out);
    } else {
        st = image_decode(ctx, path, buf, n, channels, 1LL << 30, 1, &a, err, sizeof err);
        int v[4];
        if (st != ST_OK) {
        } else if (strcmp(mode, "resize") == 0 && argc == 8) {
            if (!arg(argv[6], 1, 1 << 20, &v[0]) || !arg(argv[7], 1, 1 << 20, &v[1])) return 2;
            st = image_resize(&a, v[0], v[1], &b);
            if (st == ST_OK) st = image_center_crop(&b, oh, ow, &a);
            if (st == ST_OK) st = write_chw(&a);
        } else if (strcmp(mode, "center_crop") == 0 && argc == 6) {
            st = image_center_crop(&a, oh, ow, &b);
            if (st == ST_OK) st = write_chw(&b);
        } else if (strcmp(mode, "resized_crop") == 0 && argc == 10) {
            for (int i = 0; i < 4; i++)
                if (!arg(argv[6 + i], i < 2 ? -(1 << 20) : 1, 1 << 20, &v[i])) return 2;
            st = image_crop(&a, v[0], v[1], v[2], v[3], &b);
            if (st == ST_OK) st = image_resize(&b, ow, oh, &a);
            if (st == ST_OK) st = write_chw(&a);
        } else {
            return usage();
        }
    }
    if (st != ST_OK) fprintf(stderr, "image_tool: %s\n", err[0] ? err : "failed");
    image_free(&a);
    image_free(&b);
    image_ctx_free(ctx);
    free(buf);
    return st == ST_OK ? 0 : 1;
}
