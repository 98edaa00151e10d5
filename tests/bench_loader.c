// bench_loader.c — the streaming loader's throughput on an image set (launch/bench_data.sh, a benchmark, not a test).
//
//   bench_loader --dir ROOT | --list FILE [--workers W] [--batch B] [--batches N] [--warmup K] [--size S]
//                [--prefetch P] [--dct 0|1] [--normalize 0|1] [--seed N]
//
// Runs src/loader.h over the set as the trainer's training path does: W decode threads, each sample read from its
// file, decoded (libjpeg-turbo / libspng), RandomResizedCrop(S) (scale 0.08..1, ratio 3/4..4/3), horizontal flip,
// u8 CHW into a ring of P + 1 batches. The set's samples are taken in a fixed random order (one permutation per
// pass, the pass number as the loader's epoch, so every pass draws new crops). --normalize 1 (the default) adds
// what the trainer's gather does after the loader, on this (the consumer) thread: ToTensor + Normalize(ImageNet
// mean, std), u8 -> float32 CHW through a 256-entry table per channel, into one float batch buffer — the same
// pipeline as torchvision's Compose([RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize]).
//
// K warm-up batches (threads starting, files into the page cache) are not timed; then N batches of B samples.
// Prints one line of key=value pairs: images, seconds, img_s, img_s_per_worker, normalize_ms_per_img (time the
// consumer spent normalising) and wait_ms_per_batch (time it waited in loader_next).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "image_set.h"
#include "loader.h"

static int usage(void) {
    fprintf(stderr, "usage: bench_loader --dir ROOT | --list FILE [--workers W] [--batch B] [--batches N] "
                    "[--warmup K] [--size S] [--prefetch P] [--dct 0|1] [--normalize 0|1] [--seed N]\n");
    return 2;
}

static int num(const char *opt, const char *s, long lo, long hi, long *out) {
    if (s && parse_int(s, lo, hi, out) == 0) return 1;
    fprintf(stderr, "bench_loader: %s: bad value '%s' (want %ld..%ld)\n", opt, s ? s : "", lo, hi);
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *list = NULL;
    long workers = 1, batch = 32, batches = 40, warmup = 4, size = 224, prefetch = 4, dct = 0, normalize = 1, seed = 42;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (strcmp(a, "--dir") == 0 && v) dir = v;
        else if (strcmp(a, "--list") == 0 && v) list = v;
        else if (strcmp(a, "--workers") == 0) ok = num(a, v, 1, 256, &workers);
        else if (strcmp(a, "--batch") == 0) ok = num(a, v, 1, 4096, &batch);
        else if (strcmp(a, "--batches") == 0) ok = num(a, v, 1, 1000000, &batches);
        else if (strcmp(a, "--warmup") == 0) ok = num(a, v, 0, 1000000, &warmup);
        else if (strcmp(a, "--size") == 0) ok = num(a, v, 1, 4096, &size);
        else if (strcmp(a, "--prefetch") == 0) ok = num(a, v, 1, 64, &prefetch);
        else if (strcmp(a, "--dct") == 0) ok = num(a, v, 0, 1, &dct);
        else if (strcmp(a, "--normalize") == 0) ok = num(a, v, 0, 1, &normalize);
        else if (strcmp(a, "--seed") == 0) ok = num(a, v, 0, 1L << 40, &seed);
        else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) return usage(), 0;
        else return usage();
        if (!ok) return 2;
        i++;
    }
    if (!dir == !list) return usage();

    image_set set = {0};
    int st = dir ? image_set_folder(dir, NULL, 0, &set) : image_set_list(list, NULL, 0, &set);
    if (st != ST_OK) {
        fprintf(stderr, "bench_loader: %s\n", err_msg());
        return st;
    }
    loader_opts o = {
        .set = &set,
        .tf = {.channels = 3, .out_h = (int)size, .out_w = (int)size, .max_pixels = 100000000, .dct_scaling = (int)dct,
               .rrc = 1, .rrc_scale = {0.08, 1.0}, .rrc_ratio = {3.0 / 4.0, 4.0 / 3.0}, .flip = 1, .seed = (uint64_t)seed},
        .workers = (int)workers,
        .prefetch = (int)prefetch,
        .batch = (int)batch,
        .max_file_bytes = (uint64_t)1 << 31,
    };
    loader *ld = NULL;
    if ((st = loader_create(&ld, &o)) != ST_OK) {
        fprintf(stderr, "bench_loader: %s\n", err_msg());
        image_set_free(&set);
        return st;
    }

    // The sequence: passes over the set, each in its own random order, as many as the batches need.
    const long long total = (warmup + batches) * batch;
    int32_t *seq = malloc((size_t)total * sizeof *seq);
    const size_t plane = (size_t)size * size, elems = 3 * plane;
    float *xf = malloc((size_t)batch * elems * sizeof *xf);
    if (!seq || !xf) {
        fprintf(stderr, "bench_loader: out of memory\n");
        return 1;
    }
    rng r;
    rng_seed(&r, (uint64_t)seed);
    for (long long p = 0; p < total; p++) seq[p] = (int32_t)(p % set.n);
    for (long long b = 0; b < total; b += set.n) {  // Fisher-Yates per pass
        const long long n = total - b < set.n ? total - b : set.n;
        for (long long i = n - 1; i > 0; i--) {
            const long long j = rng_below(&r, (uint32_t)(i + 1));
            int32_t t = seq[b + i];
            seq[b + i] = seq[b + j], seq[b + j] = t;
        }
    }
    // ToTensor + Normalize(mean, std) as the gather computes it: (p / 255 - mean) / std, a table per channel.
    static const double mean[3] = {0.485, 0.456, 0.406}, std_[3] = {0.229, 0.224, 0.225};
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) lut[c][v] = (float)(((float)v / 255.0f - (float)mean[c]) / (float)std_[c]);

    if ((st = loader_start(ld, 1, 0, seq, total, (int)batch)) != ST_OK) {
        fprintf(stderr, "bench_loader: %s\n", err_msg());
        return st;
    }
    double t0 = 0, wait = 0, norm = 0, sink = 0;
    long long images = 0;
    for (long long b = 0; b < warmup + batches; b++) {
        if (b == warmup) t0 = now_s(), wait = 0, norm = 0;
        const uint8_t *x;
        const int32_t *y;
        int n = 0;
        const double w0 = now_s();
        if ((st = loader_next(ld, &x, &y, &n)) != ST_OK) {
            fprintf(stderr, "bench_loader: %s\n", err_msg());
            return st;
        }
        const double w1 = now_s();
        wait += w1 - w0;
        if (normalize) {
            for (int i = 0; i < n; i++)
                for (int c = 0; c < 3; c++) {
                    const uint8_t *src = x + (size_t)i * elems + c * plane;
                    float *dst = xf + (size_t)i * elems + c * plane;
                    const float *t = lut[c];
                    for (size_t k = 0; k < plane; k++) dst[k] = t[src[k]];
                }
            sink += xf[(size_t)(n - 1) * elems];  // keep the pass
            norm += now_s() - w1;
        }
        if (b >= warmup) images += n;
    }
    const double secs = now_s() - t0;
    printf("images=%lld seconds=%.3f img_s=%.1f img_s_per_worker=%.1f workers=%ld batch=%ld normalize=%ld "
           "normalize_ms_per_img=%.3f wait_ms_per_batch=%.2f dct=%ld set=%d%s\n",
           images, secs, images / secs, images / secs / (double)workers, workers, batch, normalize,
           images ? 1e3 * norm / (double)images : 0.0, batches ? 1e3 * wait / (double)batches : 0.0, dct, set.n,
           sink == 12345.678 ? " " : "");
    loader_destroy(ld);
    free(seq);
    free(xf);
    image_set_free(&set);
    return 0;
}
