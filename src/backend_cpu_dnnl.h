// backend_cpu_dnnl.h — the CPU backend's oneDNN convolution (built with TRAINER_DNNL; src/backend_cpu_dnnl.c).
//
// Private to the CPU backend (src/backend_cpu.c), which keeps its own threading: the batch is split into one
// slice per pool thread, as for im2col, and each thread runs single-threaded oneDNN primitives on its slice with
// its own stream, scratchpad and staging buffers. So no OpenMP team runs next to the pool (libgomp's workers
// spin for milliseconds after each region, which on a small machine takes the core our pool needs next), and
// the weight gradient is the fixed-order sum of the slices' partial sums: deterministic for a given thread count.
//
// Each primitive gets the memory formats oneDNN prefers (format `any`, blocked for the direct JIT kernels);
// the user's NCHW/OIHW tensors are reordered into per-thread staging buffers in the workspace where they differ.
#pragma once
#include <stddef.h>

#include "backend.h"

typedef struct conv_dnnl conv_dnnl;            // one engine, one stream per thread
typedef struct conv_dnnl_plan conv_dnnl_plan;  // the primitives for one conv_desc split into `parts` slices

// 1 when built with oneDNN.
int conv_dnnl_available(void);

int conv_dnnl_create(conv_dnnl **out, int threads);
void conv_dnnl_destroy(conv_dnnl *e);

// Primitives for d's batch split into `parts` near-equal slices (parts <= d->n and <= the threads of e);
// *ws_per_part = the workspace bytes each part needs (staging buffers and scratchpad), 64-byte multiples.
int conv_dnnl_plan_create(conv_dnnl *e, const conv_desc *d, int parts, conv_dnnl_plan **out, size_t *ws_per_part);
void conv_dnnl_plan_destroy(conv_dnnl_plan *p);
int conv_dnnl_plan_parts(const conv_dnnl_plan *p);
size_t conv_dnnl_plan_ws(const conv_dnnl_plan *p);  // *ws_per_part of conv_dnnl_plan_create

// Slice `part`: images [lo, hi) of the batch as split_range splits it; the pointers are the batch's (the
// slice is found in them). ws is this part's workspace. Run on the pool thread of the same part index, at most
// one call per part at a time.
// Forward: y = act(conv(x, w) + b), b nullable.
int conv_dnnl_forward(conv_dnnl *e, const conv_dnnl_plan *p, int part, const float *x, const float *w,
                      const float *b, float *y, void *ws);
// Backward from dz (the pre-activation gradient, already dy · act'(y)): dx (nullable) for the slice, and the
// slice's dw and db (overwritten; db nullable). The primitives always have a bias: b = NULL runs a zero bias
// from the workspace and db = NULL a discarded one (a conv_desc does not say whether the layer has a bias).
int conv_dnnl_backward(conv_dnnl *e, const conv_dnnl_plan *p, int part, const float *x, const float *w,
                       const float *dz, float *dx, float *dw, float *db, void *ws);
