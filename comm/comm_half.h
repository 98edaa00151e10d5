// comm_half.h — 16-bit floats on the wire (parallel.compress): the host's conversions between float32 and
// bfloat16 / IEEE half (round to nearest, ties to even; Inf stays Inf, NaN stays NaN), and the scaled half blocks
// the mpi backend sends for fp16.
//
// A scaled half block is HALF_BLOCK values that share a power-of-two scale 2^k, chosen from the block's largest
// magnitude M so that M·2^k < 2^15: no finite float32 ever overflows half's range (65504), and small values keep
// their precision relative to the block's largest. The reduction of two blocks (the MPI operator) decodes both to
// float32, adds, and encodes the sum again with the sum's own scale: one rounding to 16 bits per hop, never an
// overflow, and the same result whichever operand comes first (float32 addition is commutative). The nccl backend
// scales a whole bucket by half_scale_exp of its largest |x| over the ranks and converts with CUDA's own
// intrinsics (tested against these in tests/test_comm.c). Host and device (nvcc), as src/act_math.h.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define HALF_FN static __host__ __device__ __forceinline__
#else
#define HALF_FN static inline
#endif

#define HALF_BLOCK 256
#define HALF_SCALE_MAX_EXP 120  // |k| is clamped so that 2^k and 2^-k are normal floats (exact multiplications)

typedef struct half_block {
    int32_t k;                 // the values are the halves times 2^-k
    uint16_t v[HALF_BLOCK];
} half_block;

HALF_FN uint32_t half_bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

HALF_FN float half_float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

// ---- bfloat16: float32's exponent, 8 bits of significand

HALF_FN uint16_t half_bf16_from_f32(float f) {
    uint32_t u = half_bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // NaN: stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                              // ties to even; may round to Inf
    return (uint16_t)(u >> 16);
}

HALF_FN float half_bf16_to_f32(uint16_t h) { return half_float_of((uint32_t)h << 16); }

// ---- IEEE half: 5 bits of exponent, 11 of significand, largest finite 65504, subnormals down to 2^-24

HALF_FN uint16_t half_f16_from_f32(float f) {
    const uint32_t x = half_bits_of(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // 65520 and above round to Inf
    if (ax <= 0x33000000u) return (uint16_t)sign;              // up to 2^-25 (a tie with 0): zero
    if (ax < 0x38800000u) {                                    // below 2^-14: a subnormal half, h·2^-24
        const uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u, shift = 126u - e;
        uint32_t h = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u), tie = 1u << (shift - 1u);
        if (rem > tie || (rem == tie && (h & 1u))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = (ax - 0x38000000u) >> 13;  // rebias the exponent (127 -> 15), keep 10 bits of significand
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // a carry moves into the exponent, as it should
    return (uint16_t)(sign | h);
}

HALF_FN float half_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f) return half_float_of(sign | 0x7f800000u | (m << 13));
    if (e) return half_float_of(sign | ((e + 112u) << 23) | (m << 13));
    const float f = (float)m * 0x1p-24f;  // zero or a subnormal: exact in float32
    return sign ? -f : f;
}

// ---- the scale of a block (or, on the GPU, of a whole bucket) from its largest magnitude M: the k with
// M·2^k < 2^15 (M = 0 or not finite: 0; the values then go as they are, Inf and NaN included)

HALF_FN int half_scale_exp(float M) {
    if (!(M > 0.0f) || !isfinite(M)) return 0;
    int e = 0;
    (void)frexpf(M, &e);  // M < 2^e
    int k = 15 - e;
    return k > HALF_SCALE_MAX_EXP ? HALF_SCALE_MAX_EXP : k < -HALF_SCALE_MAX_EXP ? -HALF_SCALE_MAX_EXP : k;
}

// Encode x[0..n) · pre (n <= HALF_BLOCK; the rest of the block is zero) with the block's own scale.
HALF_FN void half_block_encode(half_block *b, const float *x, size_t n, float pre) {
    float M = 0.0f;
    for (size_t i = 0; i < n; i++) {
        const float a = fabsf(x[i] * pre);
        if (!(a <= M)) M = a;  // a NaN wins (then no scale)
    }
    b->k = half_scale_exp(M);
    const float s = ldexpf(pre, b->k);
    size_t i = 0;
    for (; i < n; i++) b->v[i] = half_f16_from_f32(x[i] * s);
    for (; i < HALF_BLOCK; i++) b->v[i] = 0;
}

HALF_FN void half_block_decode(const half_block *b, float *x, size_t n) {
    const float s = ldexpf(1.0f, -b->k);
    for (size_t i = 0; i < n; i++) x[i] = half_f16_to_f32(b->v[i]) * s;
}

// The reduction: inout = in + inout, one block (what the MPI operator runs for each pair of blocks).
HALF_FN void half_block_add(const half_block *in, half_block *inout) {
    float a[HALF_BLOCK], b[HALF_BLOCK];
    half_block_decode(in, a, HALF_BLOCK);
    half_block_decode(inout, b, HALF_BLOCK);
    for (int i = 0; i < HALF_BLOCK; i++) a[i] += b[i];
    half_block_encode(inout, a, HALF_BLOCK, 1.0f);
}

HALF_FN size_t half_blocks(size_t n) { return (n + HALF_BLOCK - 1) / HALF_BLOCK; }
