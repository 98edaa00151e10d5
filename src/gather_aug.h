// gather_aug.h — augmentation fused into the backend's gather op: random crop after zero padding, random
// horizontal flip and per-channel normalisation, in torchvision's order RandomCrop(size, padding=N) →
// RandomHorizontalFlip() → ToTensor() → Normalize(mean, std).
//
// The random draw of a sample is a counter-based hash of (seed, epoch, dataset index): no RNG state, no order,
// so it does not depend on the rank, the batch a sample falls in or the world size (np N ≡ np 1 with the same
// global batch), and a resumed run draws what the uninterrupted one drew. The same integer math runs in the
// CPU loop and in the CUDA kernel (this header is compiled by both), so both backends draw identical bits.
// Host-side construction from the configuration (and the training set's statistics): src/augment.h.
#pragma once
#include <stdint.h>

#ifdef __CUDACC__
#define GATHER_AUG_FN static inline __host__ __device__
#else
#define GATHER_AUG_FN static inline
#endif

#define GATHER_AUG_CHANNELS_MAX 16

// Backend memory (like adam_hyper): a captured CUDA graph reads the current epoch from it, so the caller
// writes it with upload before the steps it applies to, never between a capture and its replays.
typedef struct gather_aug {
    uint64_t seed;
    int64_t epoch;          // the draw's epoch: rewritten before each epoch (training); unused without crop/flip
    int32_t c, h, w;        // sample shape; c * h * w must be the gather's sample_elems
    int32_t crop_pad;       // 0: no crop; N: offsets dy, dx uniform in [-N, N], zeros outside the image
    int32_t flip;           // 1: mirror left-right with probability 1/2
    int32_t normalize;      // 1: x = lut[channel][pixel]; 0: x = pixel / 255 (as the plain gather)
    // normalize: lut[ch][p] = ((float)p / 255 - mean) / std in float32, as torchvision computes it (a padded
    // pixel is p = 0, so it becomes -mean / std, as Normalize makes of RandomCrop's zero padding).
    float lut[GATHER_AUG_CHANNELS_MAX][256];
} gather_aug;

// One sample's draw: output pixel (y, x) reads input pixel (y + dy, (flip ? w - 1 - x : x) + dx).
typedef struct gather_draw {
    int dy, dx, flip;
} gather_draw;

// splitmix64's finaliser (with its increment): a bijection of 64-bit words with full avalanche.
GATHER_AUG_FN uint64_t gather_aug_mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// The 64 random bits of sample `index` in `epoch`. The seed is first mixed with a constant ("augment!") so the
// draws are unrelated to the sample order drawn from the same net.seed.
GATHER_AUG_FN uint64_t gather_aug_hash(uint64_t seed, int64_t epoch, int64_t index) {
    uint64_t h = gather_aug_mix(seed ^ 0x6175676d656e7421ull);
    h = gather_aug_mix(h ^ (uint64_t)epoch);
    return gather_aug_mix(h ^ (uint64_t)index);
}

// Crop offsets from bits 0-23 and 24-47 (multiply-shift onto [0, 2N], bias below 2^-9 for N < 16384), the
// flip from bit 63. Crop and flip use separate bits, so turning one on does not change the other's draws.
GATHER_AUG_FN gather_draw gather_aug_draw(const gather_aug *a, int64_t index) {
    const uint64_t r = gather_aug_hash(a->seed, a->epoch, index);
    const uint64_t span = 2 * (uint64_t)a->crop_pad + 1;
    gather_draw d;
    d.dy = (int)(((r & 0xffffffull) * span) >> 24) - a->crop_pad;
    d.dx = (int)((((r >> 24) & 0xffffffull) * span) >> 24) - a->crop_pad;
    d.flip = a->flip ? (int)(r >> 63) : 0;
    return d;
}
