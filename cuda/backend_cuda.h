// backend_cuda.h — what the CUDA backend offers beyond the backend table (plain C, includable everywhere).
#pragma once
#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"
#include "common.h"

// Options of the CUDA backend (config keys net.tf32 and net.deterministic). backend_create takes them in
// backend_options; backend_cuda_set_options changes them later (tests): conv layers choose their algorithms in
// conv_prepare, so plans made earlier keep the options they were made with (cuBLAS follows at once).
typedef struct backend_cuda_options {
    // TF32 tensor-core math for cuBLAS (dense) and cuDNN (conv). Off: plain FP32 (FMA) math, which the tests
    // compare against the CPU backend.
    int tf32;
    // Only deterministic cuDNN algorithms, chosen by cuDNN's heuristics instead of by timing them (a timed
    // choice may differ from run to run), and cuBLAS without atomics: two runs, and a replayed CUDA graph vs
    // eager steps, give bit-identical parameters. Off: the fastest algorithm (deterministic when it costs
    // little). The training loss sum (one atomic per block) may still differ in its last bits.
    int deterministic;
    // net.precision (docs/precision.md): PREC_BF16 or PREC_FP16 of config.h: convolutions and dense layers read
    // 16-bit copies of their (already rounded) inputs and run on tensor cores with fp32 accumulation; parameter
    // gradients stay fp32, or are written bf16 on a backend created with backend_options.grads16 (which needs
    // PREC_BF16 here: any other precision is ST_INPUT on such a backend). Anything else: fp32 (tf32 is the field
    // above). A backend created with backend_options.act16 (activations stored in 16 bits) keeps precision equal to
    // it: any other is ST_INPUT.
    int precision;
} backend_cuda_options;

#ifdef DDP_HAVE_CUDA
// ST_INPUT when be is not a CUDA backend and tf32=1; deterministic=1 is accepted there and changes nothing
// (the CPU backend is deterministic for a fixed thread count).
int backend_cuda_set_options(backend *be, const backend_cuda_options *opt);
// backend_cuda_set_options with only tf32 changed.
int backend_cuda_set_tf32(backend *be, int on);
// NULL when a CUDA device is usable; otherwise why not (no device, or cudaGetDeviceCount's error, e.g. a
// driver too old for this runtime). A static string.
const char *backend_cuda_unusable(void);
// Compute capability of the backend's device as major * 10 + minor (90 for sm_90); 0 when be is not CUDA.
int backend_cuda_compute_capability(const backend *be);
#else
static inline int backend_cuda_set_options(backend *be, const backend_cuda_options *opt) {
    (void)be;
    return opt->tf32 ? ERR(ST_INPUT, "tf32: this build has no CUDA backend") : ST_OK;
}
static inline int backend_cuda_set_tf32(backend *be, int on) {
    const backend_cuda_options opt = {.tf32 = on};
    return backend_cuda_set_options(be, &opt);
}
static inline const char *backend_cuda_unusable(void) { return "this build has no CUDA backend"; }
static inline int backend_cuda_compute_capability(const backend *be) {
    (void)be;
    return 0;
}
#endif

#ifdef __cplusplus
}
#endif
