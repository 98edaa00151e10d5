// loss_scale.h — dynamic loss scaling for net.precision=fp16, as PyTorch's GradScaler: the loss gradient is
// multiplied by the scale (so small activation gradients survive fp16), the parameter gradients are divided by
// it again (fp32) before clipping and the optimizer, and a step whose gradients hold a NaN or Inf on any rank is
// skipped on every rank, the scale halved; after growth_interval finite steps in a row it doubles. bf16 has
// fp32's range and needs none; neither does fp32 or tf32 (the scaler is off: scale 1, nothing checked).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "comm.h"
#include "config.h"

#define LOSS_SCALE_GROWTH 2.0   // GradScaler's growth_factor
#define LOSS_SCALE_BACKOFF 0.5  // and backoff_factor
#define LOSS_SCALE_MIN 0x1p-24  // below this every scale has overflowed: the gradients are not finite at all

typedef struct loss_scaler {
    int on;                  // net.precision=fp16
    double scale;            // the scale of the next step (a power of two times net.loss_scale_init)
    int growth_interval;     // net.loss_scale_growth_interval
    long long good;          // finite steps since the scale last changed
    long long skipped;       // steps skipped so far in the run (all ranks alike)
} loss_scaler;

// From the config: on for fp16 (scale net.loss_scale_init), off otherwise (scale 1).
void loss_scale_init(loss_scaler *s, const net_config *cfg);

// After the step's gradients are all-reduced (n floats of backend memory at grads): divides them by the scale,
// counts their non-finite values (scratch: one int32 of backend memory) and agrees over the ranks (c, world) on
// whether any rank saw one. *skip = 1: skip this step's optimizer update (the scale is halved); 0: take it (the
// scale grows after growth_interval such steps). ST_DIVERGED when the scale falls below LOSS_SCALE_MIN.
int loss_scale_unscale_check(loss_scaler *s, const backend *be, comm *c, int world, float *grads, size_t n,
                             int32_t *scratch, int *skip);

// The schedule alone: one step's outcome (found_nonfinite: agreed over the ranks) moves the scale.
void loss_scale_update(loss_scaler *s, int found_nonfinite);
