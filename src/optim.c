// optim.c — Adam, AdamW and SGD steps over the flat parameter buffer, through the backend table; the
// learning-rate schedule.
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Schedule

int lr_schedule_init(lr_schedule *s, const net_config *cfg, double peak, int steps_per_epoch) {
    memset(s, 0, sizeof *s);
    s->kind = cfg->schedule;
    s->peak = peak;
    s->min_lr = cfg->min_lr;
    s->steps_per_epoch = steps_per_epoch;
    s->total_steps = (long long)cfg->epochs * steps_per_epoch;
    s->warmup_steps = cfg->warmup_epochs * steps_per_epoch;
    if (s->kind == SCHED_ONECYCLE) {
        if (s->warmup_steps <= 0) s->warmup_steps = 0.3 * (double)s->total_steps;
        s->start = peak / 25.0;  // PyTorch's OneCycleLR: div_factor 25
    }
    s->gamma = cfg->gamma;
    return config_lr_steps(cfg, s->milestones, &s->n_milestones);
}

double lr_schedule_at(const lr_schedule *s, long long step) {
    const double st = (double)step;
    if (st < s->warmup_steps) {
        const double f = (st + 1.0) / s->warmup_steps;
        return s->start + (s->peak - s->start) * (f < 1.0 ? f : 1.0);
    }
    if (s->kind == SCHED_STEP) {
        const long long epoch = s->steps_per_epoch > 0 ? step / s->steps_per_epoch : 0;
        double lr = s->peak;
        for (int i = 0; i < s->n_milestones && epoch >= s->milestones[i]; i++) lr *= s->gamma;
        return lr;
    }
    if (s->kind == SCHED_COSINE || s->kind == SCHED_ONECYCLE) {
        const double pi = 3.14159265358979323846;
        const double span = (double)s->total_steps - s->warmup_steps;
        double p = span > 0 ? (st - s->warmup_steps) / span : 1.0;
        if (p > 1.0) p = 1.0;
        return s->min_lr + (s->peak - s->min_lr) * 0.5 * (1.0 + cos(pi * p));
    }
    return s->peak;
}

// ---------------------------------------------------------------------------------------------------------
// Optimizer

const char *optim_name(int kind) { return kind == OPT_SGD ? "sgd" : kind == OPT_ADAMW ? "adamw" : "adam"; }

static int is_adam(const optim *o) { return o->kind == OPT_ADAM || o->kind == OPT_ADAMW; }

int optim_create(optim *o, backend *be, const net_config *cfg, size_t n) {
    memset(o, 0, sizeof *o);
    o->be = be;
    o->kind = cfg->optimizer;
    o->n = n;
    o->beta1 = cfg->beta1, o->beta2 = cfg->beta2, o->eps = cfg->eps;
    o->momentum = cfg->momentum, o->weight_decay = cfg->weight_decay, o->nesterov = cfg->nesterov;
    o->seg = malloc(sizeof *o->seg);
    TRY_ALLOC(o->seg);
    o->seg[0] = (optim_segment){0, n, 1};
    o->n_seg = 1;
    TRY(backend_alloc(be, (void **)&o->m, n * sizeof(float)));
    if (is_adam(o)) TRY(backend_alloc(be, (void **)&o->v, n * sizeof(float)));
    size_t hb = is_adam(o) ? sizeof(adam_hyper) : sizeof(sgd_hyper);
    TRY(backend_alloc(be, &o->hyper, hb));
    TRY(backend_alloc(be, &o->hyper_nd, hb));
    return ST_OK;
}

void optim_destroy(optim *o) {
    if (!o->be) return;
    backend_free(o->be, o->m);
    backend_free(o->be, o->v);
    backend_free(o->be, o->hyper);
    backend_free(o->be, o->hyper_nd);
    free(o->seg);
    memset(o, 0, sizeof *o);
}

int optim_no_decay(optim *o, const size_t *begin, const size_t *len, int n) {
    // A per-float flag, then runs of equal flags: simple, and done once.
    unsigned char *decay = malloc(o->n ? o->n : 1);
    TRY_ALLOC(decay);
    memset(decay, 1, o->n);
    for (int i = 0; i < n; i++)
        for (size_t k = begin[i]; k < begin[i] + len[i] && k < o->n; k++) decay[k] = 0;
    int runs = 0;
    for (size_t k = 0; k < o->n; k++) runs += k == 0 || decay[k] != decay[k - 1];
    optim_segment *seg = malloc((size_t)(runs ? runs : 1) * sizeof *seg);
    if (!seg) {
        free(decay);
        return ERR(ST_RUNTIME, "out of host memory");
    }
    int s = 0;
    for (size_t k = 0; k < o->n; k++) {
        if (k == 0 || decay[k] != decay[k - 1]) seg[s++] = (optim_segment){k, k, decay[k]};
        seg[s - 1].end = k + 1;
    }
    if (o->n == 0) seg[s++] = (optim_segment){0, 0, 1};
    free(decay);
    free(o->seg);
    o->seg = seg;
    o->n_seg = s;
    return ST_OK;
}

int optim_prepare(optim *o, double lr) {
    o->t++;
    const float wd = (float)o->weight_decay;
    if (is_adam(o)) {
        const int decoupled = o->kind == OPT_ADAMW;
        adam_hyper h = {.lr = (float)lr, .beta1 = (float)o->beta1, .beta2 = (float)o->beta2, .eps = (float)o->eps,
                        .weight_decay = decoupled ? 0.0f : wd, .decoupled_wd = decoupled ? wd : 0.0f, .t = o->t};
        TRY(backend_upload(o->be, o->hyper, &h, sizeof h));
        h.weight_decay = h.decoupled_wd = 0.0f;
        return backend_upload(o->be, o->hyper_nd, &h, sizeof h);
    }
    sgd_hyper h = {.lr = (float)lr, .momentum = (float)o->momentum, .weight_decay = wd, .nesterov = (float)o->nesterov};
    TRY(backend_upload(o->be, o->hyper, &h, sizeof h));
    h.weight_decay = 0.0f;
    return backend_upload(o->be, o->hyper_nd, &h, sizeof h);
}

int optim_apply(optim *o, float *params, const float *grads) {
    for (int i = 0; i < o->n_seg; i++) {
        const optim_segment *s = &o->seg[i];
        const size_t b = s->begin, n = s->end - s->begin;
        const void *h = s->decay ? o->hyper : o->hyper_nd;
        if (is_adam(o)) TRY(backend_adam_step(o->be, n, params + b, grads + b, o->m + b, o->v + b, h));
        else TRY(backend_sgd_step(o->be, n, params + b, grads + b, o->m + b, h));
    }
    return ST_OK;
}

void optim_skip(optim *o) {
    if (o->t > 0) o->t--;  // the next optim_prepare uploads this t again
}

int optim_step(optim *o, float *params, const float *grads, double lr) {
    TRY(optim_prepare(o, lr));
    return optim_apply(o, params, grads);
}

int optim_n_state(const optim *o) { return is_adam(o) ? 2 : 1; }

float *optim_state(const optim *o, int i, const char **name) {
    if (is_adam(o)) {
        *name = i == 0 ? "adam_m" : "adam_v";
        return i == 0 ? o->m : o->v;
    }
    *name = "sgd_velocity";
    return o->m;
}
