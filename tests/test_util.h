// test_util.h — helpers shared by the cmocka tests: temp files, small generated data sets, tolerances.
#pragma once
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

// A fresh temp directory for this test process (removed at exit); returns its path.
const char *tu_tmpdir(void);
// Path inside tu_tmpdir() (static buffer rotation of 8).
const char *tu_path(const char *name);
// Write bytes to a file (raw) or gzip them (gz=1). Returns 0 on success.
int tu_write_file(const char *path, const void *data, size_t n, int gz);
// Max of |a-b| / max(1, |b|) over n values.
double tu_max_rel_err(const float *a, const float *b, size_t n);

// A small learnable IDX data set (28x28x1, 10 classes: class k is a bright 6x6 blob at one of 10 positions,
// plus noise), written as raw or gzip IDX files into dir: train-images.idx, train-labels.idx, test-images.idx,
// test-labels.idx (".gz" appended when gz). Returns 0 on success.
int tu_make_idx_dataset(const char *dir, int n_train, int n_test, unsigned seed, int gz);
// The number after "key": in a one-line JSON object (a metrics line); fails the test when the key is absent.
double tu_json_number(const char *line, const char *key);
// Run a shell command; returns its exit status (or -1 when it did not exit normally).
int tu_run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
// GPU tests call this first, with backend_cuda_unusable() (cuda/backend_cuda.h): NULL when CUDA is usable, else
// why not. Returns when usable; otherwise skips the calling test, or, when DDP_REQUIRE_CUDA is set (and not
// "0"), fails it with the reason: on a GPU machine a broken driver must not pass as a clean skip.
void tu_cuda_or_skip(const char *why);

// The small network around a layer kind's `example` (layer.h): [net] 2x6x6, 3 classes, label smoothing 0.1,
// a linear [conv] "stem", the example's sections, a [dense] "head" with 3 units and [softmax]. Used by
// test_layers.c and grad_dump.c (the PyTorch parity check), so both see the same networks.
void tu_layer_example_text(const char *example, int batch, char *buf, size_t n);

// 16-bit results of the CUDA backend against the CPU's (test_backend_cuda.c, test_backend_cuda_nhwc.c), per value:
// the two backends sum the same products of the same values in fp32 in different orders, which moves a sum by at
// most TU_TOL_SUM of the sum of its terms' magnitudes (s[i]: the CPU op run on |inputs|; about 1e-7 per term would be
// the worst case of a long serial sum, cuDNN and cuBLAS sum in blocks and trees, so that 2e-5 covers sums of up to
// ~10^4 terms with room); where the result is held in the format (`held`: got and ref are rounded to it first, in
// place, as the model's round_to), the two roundings may then pick neighbouring values: one ulp of the format,
// bounded by |v| 2^-p (p = 7 bf16, 10 fp16) plus fp16's subnormal quantum 2^-24. A conv with a bias rounds its
// output twice on the GPU (cuDNN's 16-bit output, then after the bias add): one more ulp of the conv output,
// |v| + |bias| bounding it (bias, nullable, per channel over [outer, channels, inner]). format: PREC_BF16 or
// PREC_FP16 (config.h). Fails naming what (and tag, e.g. ", nhwc") and the value; prints the worst error as a
// fraction of its tolerance.
#define TU_TOL_SUM 2e-5
void tu_expect_lp(const char *what, const char *tag, int format, float *got, float *ref, const float *s, size_t n,
                  int held, const float *bias, int channels, int inner);

// 1 (after printing "sm_CC has no bf16 convolutions: WHAT skipped") when a device of compute capability cc (major *
// 10 + minor) has no bf16 convolutions and format is PREC_BF16 (cuDNN needs 8.0); else 0.
int tu_lp_conv_skipped(int cc, int format, const char *what);

// Masks that are not 0 or 1 (leaky, sigmoid: tu_mask_rounds): the GPU's products read the masked gradient as stored in
// the format (rounded: at most half an ulp, 2^-8 of each term's magnitude in bf16, 2^-11 in fp16), the CPU's read its
// float32 value. tu_widen_for_mask widens n sums of |terms| s so that tu_expect_lp's TU_TOL_SUM * s covers that too.
int tu_mask_rounds(int act);
void tu_widen_for_mask(float *s, size_t n, int format);

// Per value bounds of bn_apply's y and bn_grad_input's dx (NCHW [n, c, hw], nx values; from the CPU's save {mean[c],
// invstd[c]}, and gstats gs {mean_dz[c], mean_dz_xhat[c]} for dx; dz NULL: y's alone): the sums of |terms|
// tu_expect_lp scales (the backends' float statistics and products may differ in their last bits).
void tu_bn_act_sums(size_t nx, int c, int hw, const float *x, const float *save, const float *w, const float *b,
                    const float *dz, const float *gs, float *s_y, float *s_dx);

// Layout changes of n blocks of c x hw floats, written as plain loops (the tests' own, independent of the backend
// op layout_convert): to NHWC y[b][q][ch] = x[b][ch][q], and back to NCHW. y must not overlap x.
void tu_to_nhwc(const float *x, float *y, int n, int c, int hw);
void tu_to_nchw(const float *x, float *y, int n, int c, int hw);
