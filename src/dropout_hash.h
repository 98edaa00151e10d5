// dropout_hash.h — the counter-based generator of dropout masks, one integer hash for every backend (host C and
// CUDA device code alike), so that the CPU and the GPU draw identical masks and a resumed run draws the masks it
// would have drawn. A mask bit is a pure function of (seed, step, rank, stream, element index): nothing is
// stored between forward and backward, and a captured CUDA graph draws fresh masks at each replay because the
// step is read from backend memory (dropout_key, backend.h).
#pragma once
#include <stdint.h>

#ifdef __CUDACC__
#define DROPOUT_HD static __host__ __device__ __forceinline__
#else
#define DROPOUT_HD static inline
#endif

// splitmix64's finaliser: a bijection of 64-bit integers with full avalanche.
DROPOUT_HD uint64_t dropout_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// One value per (seed, step, rank, stream); stream = layer index | micro-batch << 16 (the model's choice).
DROPOUT_HD uint64_t dropout_base(uint64_t seed, int64_t step, int32_t rank, uint32_t stream) {
    uint64_t h = dropout_mix64(seed ^ 0x9e3779b97f4a7c15ULL);
    h = dropout_mix64(h ^ (uint64_t)step);
    return dropout_mix64(h ^ ((uint64_t)(uint32_t)rank << 32 | stream));
}

// Elements whose 24-bit uniform draw falls below threshold = floor(rate · 2^24) are dropped.
DROPOUT_HD uint32_t dropout_threshold(float rate) { return (uint32_t)((double)rate * 16777216.0); }

DROPOUT_HD int dropout_keep(uint64_t base, uint64_t i, uint32_t threshold) {
    return (uint32_t)(dropout_mix64(base + i * 0x9e3779b97f4a7c15ULL) >> 40) >= threshold;
}
