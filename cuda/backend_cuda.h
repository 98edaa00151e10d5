// backend_cuda.h — what the CUDA backend offers beyond the backend table (plain C, includable everywhere).
#pragma once
#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"
#include "common.h"

#ifdef DDP_HAVE_CUDA
// TF32 tensor-core math for cuBLAS (dense) and cuDNN (conv). Off by default: plain FP32 (FMA) math, which the
// tests compare against the CPU backend. cuBLAS follows at once; conv layers pick their algorithms in
// conv_prepare, so call this before preparing them (plans made earlier keep the math they were made with).
// ST_INPUT when be is not a CUDA backend and on=1.
int backend_cuda_set_tf32(backend *be, int on);
#else
static inline int backend_cuda_set_tf32(backend *be, int on) {
    (void)be;
    return on ? ERR(ST_INPUT, "tf32: this build has no CUDA backend") : ST_OK;
}
#endif

#ifdef __cplusplus
}
#endif
