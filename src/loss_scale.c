// loss_scale.c — fp16's dynamic loss scaling (see loss_scale.h): unscale, the agreed non-finite check, the
// grow / back-off schedule.
#include "loss_scale.h"

#include "common.h"

void loss_scale_init(loss_scaler *s, const net_config *cfg) {
    s->on = cfg->precision == PREC_FP16;
    s->scale = s->on ? cfg->loss_scale_init : 1.0;
    s->growth_interval = cfg->loss_scale_growth_interval > 0 ? cfg->loss_scale_growth_interval : 2000;
    s->good = 0;
    s->skipped = 0;
}

void loss_scale_update(loss_scaler *s, int found_nonfinite) {
    if (found_nonfinite) {
        s->scale *= LOSS_SCALE_BACKOFF;
        s->good = 0;
        s->skipped++;
        return;
    }
    if (++s->good >= s->growth_interval) {
        s->scale *= LOSS_SCALE_GROWTH;
        s->good = 0;
    }
}

int loss_scale_unscale_check(loss_scaler *s, const backend *be, comm *c, int world, float *grads, size_t n,
                             int32_t *scratch, int *skip) {
    *skip = 0;
    if (!s->on) return ST_OK;
    TRY(backend_scale(be, n, (float)(1.0 / s->scale), grads));  // a power of two: exact
    TRY(backend_count_nonfinite(be, n, grads, scratch));
    int32_t bad = 0;
    TRY(backend_download(be, &bad, scratch, sizeof bad));
    bad = bad > 0;
    // The gradients are averaged, so every rank counts the same; agreeing anyway keeps the ranks in step should a
    // rank's own arithmetic (a compressed all-reduce's decoding, say) have made a value that the others did not.
    if (world > 1) TRY(comm_allreduce_max_i32(c, &bad, 1));
    loss_scale_update(s, bad);
    *skip = bad;
    if (bad && s->scale < LOSS_SCALE_MIN) {
        int st = ERR(ST_DIVERGED, "training diverged: the gradients hold NaN or Inf at every loss scale down to %g "
                                  "(%lld steps skipped; lower the learning rate)", s->scale / LOSS_SCALE_BACKOFF,
                     s->skipped);
        err_mark_collective(0);
        return st;
    }
    return ST_OK;
}
