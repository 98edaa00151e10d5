// test_util.c — helpers shared by the cmocka tests.
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <zlib.h>

#include "backend.h"  // ACT_LEAKY, ACT_SIGMOID
#include "precision.h"

static char tmpdir[256];

static void remove_tmpdir(void) {
    if (tmpdir[0] == '\0') return;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmpdir);
}

const char *tu_tmpdir(void) {
    if (tmpdir[0] == '\0') {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/ddp-test-XXXXXX", base && *base ? base : "/tmp");
        if (mkdtemp(tmpdir) == NULL) {
            perror("mkdtemp");
            abort();
        }
        atexit(remove_tmpdir);
    }
    return tmpdir;
}

const char *tu_path(const char *name) {
    static char buf[8][512];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 512, "%s/%s", tu_tmpdir(), name);
    return p;
}

int tu_write_file(const char *path, const void *data, size_t n, int gz) {
    if (gz) {
        gzFile f = gzopen(path, "wb");
        if (!f) return -1;
        int ok = n == 0 || gzwrite(f, data, (unsigned)n) == (int)n;
        return (gzclose(f) == Z_OK && ok) ? 0 : -1;
    }
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = n ? fwrite(data, 1, n, f) : 0;
    return (fclose(f) == 0 && w == n) ? 0 : -1;
}

double tu_max_rel_err(const float *a, const float *b, size_t n) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]) / fmax(1.0, fabs((double)b[i]));
        if (!(d <= worst)) worst = d;  // NaN-propagating
    }
    return worst;
}

// ---------------------------------------------------------------------------------------------------------
// Synthetic data

static unsigned lcg(unsigned *s) { return (*s = *s * 1103515245u + 12345u) >> 8; }

static int write_idx_pair(const char *dir, const char *prefix, int n, unsigned *seed, int gz) {
    size_t img_bytes = 16 + (size_t)n * 784, lab_bytes = 8 + (size_t)n;
    unsigned char *img = calloc(img_bytes, 1), *lab = calloc(lab_bytes, 1);
    if (!img || !lab) return -1;
    const unsigned char ih[16] = {0, 0, 8, 3, n >> 24, n >> 16, n >> 8, n, 0, 0, 0, 28, 0, 0, 0, 28};
    const unsigned char lh[8] = {0, 0, 8, 1, n >> 24, n >> 16, n >> 8, n};
    memcpy(img, ih, 16);
    memcpy(lab, lh, 8);
    for (int i = 0; i < n; i++) {
        int k = (int)(lcg(seed) % 10);
        lab[8 + i] = (unsigned char)k;
        unsigned char *p = img + 16 + (size_t)i * 784;
        for (int j = 0; j < 784; j++) p[j] = (unsigned char)(lcg(seed) % 60);
        int y0 = 2 + (k / 5) * 12 + (int)(lcg(seed) % 3), x0 = 2 + (k % 5) * 5 + (int)(lcg(seed) % 2);
        for (int y = y0; y < y0 + 6 && y < 28; y++)
            for (int x = x0; x < x0 + 6 && x < 28; x++) p[y * 28 + x] = (unsigned char)(180 + lcg(seed) % 76);
    }
    char path[600];
    int rc = 0;
    snprintf(path, sizeof path, "%s/%s-images.idx%s", dir, prefix, gz ? ".gz" : "");
    rc |= tu_write_file(path, img, img_bytes, gz);
    snprintf(path, sizeof path, "%s/%s-labels.idx%s", dir, prefix, gz ? ".gz" : "");
    rc |= tu_write_file(path, lab, lab_bytes, gz);
    free(img);
    free(lab);
    return rc;
}

int tu_make_idx_dataset(const char *dir, int n_train, int n_test, unsigned seed, int gz) {
    unsigned s = seed * 2654435761u + 1;
    if (write_idx_pair(dir, "train", n_train, &s, gz)) return -1;
    return write_idx_pair(dir, "test", n_test, &s, gz);
}

int tu_run(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc == -1 || !WIFEXITED(rc)) return -1;
    return WEXITSTATUS(rc);
}

double tu_json_number(const char *line, const char *key) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (!p) fail_msg("metrics line has no \"%s\": %s", key, line);
    return atof(p + strlen(pat));
}

// ---------------------------------------------------------------------------------------------------------
// GPU tests

void tu_cuda_or_skip(const char *why) {
    if (why == NULL) return;
    const char *req = getenv("DDP_REQUIRE_CUDA");
    if (req && *req && strcmp(req, "0") != 0) fail_msg("DDP_REQUIRE_CUDA=%s but CUDA is not usable: %s", req, why);
    skip();
}

void tu_layer_example_text(const char *example, int batch, char *buf, size_t n) {
    snprintf(buf, n,
             "[net]\nchannels=2\nheight=6\nwidth=6\nclasses=3\nbatch=%d\nlabel_smoothing=0.1\n"
             "[conv]\nname=stem\nfilters=3\nsize=3\npad=1\nactivation=linear\n"
             "%s"
             "[dense]\nname=head\nunits=3\n[softmax]\n",
             batch, example);
}

void tu_to_nhwc(const float *x, float *y, int n, int c, int hw) {
    for (int b = 0; b < n; b++)
        for (int ch = 0; ch < c; ch++)
            for (int q = 0; q < hw; q++) y[((size_t)b * hw + q) * c + ch] = x[((size_t)b * c + ch) * hw + q];
}

void tu_to_nchw(const float *x, float *y, int n, int c, int hw) {
    for (int b = 0; b < n; b++)
        for (int ch = 0; ch < c; ch++)
            for (int q = 0; q < hw; q++) y[((size_t)b * c + ch) * hw + q] = x[((size_t)b * hw + q) * c + ch];
}

// ---------------------------------------------------------------------------------------------------------
// 16-bit results against the CPU's (test_util.h)

static double ulp_bound(int format, double v) {
    return format == PREC_BF16 ? fabs(v) * 0x1p-7 : fabs(v) * 0x1p-10 + 0x1p-24;
}

void tu_expect_lp(const char *what, const char *tag, int format, float *got, float *ref, const float *s, size_t n,
                  int held, const float *bias, int channels, int inner) {
    const char *fmt = format == PREC_BF16 ? "bf16" : "fp16";
    if (held) {
        precision_round_array(format, n, ref, ref);
        precision_round_array(format, n, got, got);
    }
    double worst = 0;
    size_t worst_i = 0;
    for (size_t i = 0; i < n; i++) {
        double tol = TU_TOL_SUM * s[i];
        if (held) tol += ulp_bound(format, ref[i]);
        if (held && bias) tol += ulp_bound(format, fabs(ref[i]) + fabs(bias[(i / inner) % channels]));
        const double e = fabs((double)got[i] - ref[i]);
        if (!isfinite(got[i]) || !(e <= tol))
            fail_msg("%s (%s%s): value %zu is %.9g, CPU %.9g, sum of |terms| %.6g: error %.3g > tolerance %.3g", what,
                     fmt, tag, i, got[i], ref[i], s[i], e, tol);
        if (tol > 0 && e / tol > worst) worst = e / tol, worst_i = i;
    }
    print_message("%s (%s%s): worst error %.2f of its tolerance (value %zu)\n", what, fmt, tag, worst, worst_i);
}

int tu_lp_conv_skipped(int cc, int format, const char *what) {
    if (format != PREC_BF16 || cc >= 80) return 0;
    print_message("sm_%d has no bf16 convolutions: %s skipped\n", cc, what);
    return 1;
}

int tu_mask_rounds(int act) { return act == ACT_LEAKY || act == ACT_SIGMOID; }

void tu_widen_for_mask(float *s, size_t n, int format) {
    const double f = 1.0 + (format == PREC_BF16 ? 0x1p-8 : 0x1p-11) / TU_TOL_SUM;
    for (size_t i = 0; i < n; i++) s[i] = (float)(s[i] * f);
}

void tu_bn_act_sums(size_t nx, int c, int hw, const float *x, const float *save, const float *w, const float *b,
                    const float *dz, const float *gs, float *s_y, float *s_dx) {
    for (size_t i = 0; i < nx; i++) {
        const int ch = (int)((i / (size_t)hw) % (size_t)c);
        const float mean = save[ch], invstd = save[c + ch], sc = fabsf(w[ch] * invstd);
        s_y[i] = fabsf(x[i]) * sc + fabsf(b[ch]) + fabsf(mean) * sc;
        if (dz) s_dx[i] = sc * (fabsf(dz[i]) + fabsf(gs[ch]) + (fabsf(x[i]) + fabsf(mean)) * invstd * fabsf(gs[c + ch]));
    }
}
