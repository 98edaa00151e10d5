// nvtx.h — NVTX ranges for Nsight Systems, in CUDA builds only: nvtx_phase(k) closes the previous phase of the
// step being issued and opens phase k (data, forward, backward, all-reduce wait, optimizer), so a profile shows
// each step's phases on the host timeline beside the GPU's kernels. NVTX v3 is header-only and costs a function
// pointer test per call when no profiler is attached; without CUDA everything here compiles to nothing.
#pragma once

#if defined(DDP_HAVE_CUDA) && defined(__has_include)
#if __has_include(<nvtx3/nvToolsExt.h>)
#include <nvtx3/nvToolsExt.h>
#define DDP_NVTX 1
#endif
#endif

// Phase k of the step (train_state.h's MK_* order): MK_START opens "data", MK_END only closes.
static inline void nvtx_phase(int k, int last) {
#ifdef DDP_NVTX
    static const char *const names[] = {"data", "forward", "backward", "all-reduce wait", "optimizer"};
    if (k > 0) nvtxRangePop();
    if (k < last) nvtxRangePushA(names[k]);
#else
    (void)k, (void)last;
#endif
}
