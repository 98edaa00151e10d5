// precision.h — net.precision: the formats a value may be held in, the rounding of an fp32 value to bf16 or fp16
// (kept in fp32 storage: the CPU backend's emulation of what a GPU holds in those formats), and the rule saying
// which tensors of which layer kind are held in the compute type (docs/precision.md has the table).
//
// The rounding is IEEE round-to-nearest-even on the bits, so it is exact and the same on every machine:
//   bf16  8 exponent bits, 7 mantissa bits: fp32's range; values past the largest finite bf16 (0x7F7F, about
//         3.39e38) by half an ulp or more become ±Inf; fp32 subnormals round like any other value
//   fp16  5 exponent bits, 10 mantissa bits: |x| >= 65520 (the midpoint past 65504) becomes ±Inf, below 2^-14 the
//         subnormal quantum 2^-24 applies, and |x| <= 2^-25 becomes ±0 (the tie goes to the even 0)
// Infinities stay; a NaN stays a (quiet) NaN with its payload cut to the format's mantissa.
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "config.h"

static inline uint32_t precision_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float precision_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

// x rounded to the nearest bf16 value (ties to even), as a float.
static inline float precision_round_bf16(float x) {
    const uint32_t u = precision_bits(x);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;  // a carry into the exponent (up to Inf) is right
    const uint32_t nan = (u | 0x00400000u) & 0xffff0000u;
    return precision_from_bits((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
}

// x rounded to the nearest fp16 value (ties to even), as a float.
static inline float precision_round_fp16(float x) {
    const uint32_t u = precision_bits(x), sign = u & 0x80000000u, a = u & 0x7fffffffu;
    uint32_t r = (a + 0x0fffu + ((a >> 13) & 1u)) & 0xffffe000u;  // normal: 13 mantissa bits dropped
    // Below 2^-14, fp16's subnormals are the multiples of 2^-24: |x| + 0.5 has an ulp of 2^-24, so the addition
    // (round-to-nearest-even) does the rounding, and subtracting 0.5 again is exact. (IEEE arithmetic: no compiler
    // may fold the pair away without -ffast-math.)
    const float sub = (precision_from_bits(a) + 0.5f) - 0.5f;
    // The cases chosen with masks rather than branches, so that the loops vectorise.
    const uint32_t is_sub = 0u - (uint32_t)(a < 0x38800000u), is_inf = 0u - (uint32_t)(a >= 0x477ff000u);
    const uint32_t is_nan = 0u - (uint32_t)(a > 0x7f800000u);
    r = (precision_bits(sub) & is_sub) | (r & ~is_sub);
    r = (0x7f800000u & is_inf) | (r & ~is_inf);                               // >= 65520 (65504 + half an ulp): Inf
    r = (((a | 0x00400000u) & 0xffffe000u) & is_nan) | (r & ~is_nan);        // NaN: quiet, payload cut
    return precision_from_bits(sign | r);
}

// n values of x rounded to `format` (PREC_BF16, PREC_FP16; anything else copies) into y (y may be x).
static inline void precision_round_array(int format, size_t n, const float *x, float *y) {
    if (format == PREC_BF16) {
        for (size_t i = 0; i < n; i++) y[i] = precision_round_bf16(x[i]);
    } else if (format == PREC_FP16) {
        for (size_t i = 0; i < n; i++) y[i] = precision_round_fp16(x[i]);
    } else if (y != x) {
        memmove(y, x, n * sizeof *y);
    }
}

// ---- 16-bit storage (net.act_storage, docs/precision.md): a value held in bf16 or fp16 as its bit pattern.

// The bits of x rounded to `format` (PREC_BF16, PREC_FP16): precision_round_* then the format's encoding, so NaN
// payloads, overflow to Inf and fp16's subnormals come out as the rounding gives them.
static inline uint16_t precision_to16(int format, float x) {
    if (format == PREC_BF16) return (uint16_t)(precision_bits(precision_round_bf16(x)) >> 16);
    const uint32_t r = precision_bits(precision_round_fp16(x)), sign = (r >> 16) & 0x8000u, a = r & 0x7fffffffu;
    if (a >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | ((a >> 13) & 0x3ffu));       // Inf, NaN (payload cut)
    if (a >= 0x38800000u) return (uint16_t)(sign | (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu));  // normal
    return (uint16_t)(sign | (uint32_t)(precision_from_bits(a) * 16777216.0f));  // subnormal or 0: a multiple of 2^-24
}

// The value of the bits h of `format`, exactly.
static inline float precision_from16(int format, uint16_t h) {
    if (format == PREC_BF16) return precision_from_bits((uint32_t)h << 16);
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return precision_from_bits(sign | 0x7f800000u | (m << 13));
    if (e) return precision_from_bits(sign | ((e + 112u) << 23) | (m << 13));
    return precision_from_bits(sign | precision_bits((float)m * (1.0f / 16777216.0f)));
}

// The format values held in the compute type are rounded to under `precision` on the CPU backend: PREC_BF16 or
// PREC_FP16, or PREC_FP32 for none (fp32, and tf32, which only changes the GPU's GEMM inputs: the CPU computes
// those in fp32, a tighter reference).
int precision_emulated(int precision);
// "fp32", "tf32", "bf16", "fp16"
const char *precision_name(int precision);

// What a layer kind holds in the compute type (docs/precision.md, "The rule per layer kind"): the model rounds
// there. PREC_HOLD_OUTPUT: its output and the gradient it passes to its inputs; PREC_HOLD_WEIGHTS: the copy of its
// weights and bias that forward and backward read (conv, dense); the loss (its input is already in the compute
// type; the loss and its gradient are computed in fp32, the gradient then stored in the compute type) has none.
enum { PREC_HOLD_OUTPUT = 1, PREC_HOLD_WEIGHTS = 2 };
unsigned precision_layer_rule(int layer_type);
