// optim.c — Adam and SGD steps over the flat parameter buffer, through the backend table.
#include "optim.h"

#include <string.h>

#include "common.h"

int optim_create(optim *o, backend *be, const net_config *cfg, size_t n) {
    memset(o, 0, sizeof *o);
    o->be = be;
    o->kind = cfg->optimizer;
    o->n = n;
    o->beta1 = cfg->beta1, o->beta2 = cfg->beta2, o->eps = cfg->eps;
    o->momentum = cfg->momentum, o->weight_decay = cfg->weight_decay;
    const backend_ops *ops = be->ops;
    TRY(ops->alloc(be->ctx, (void **)&o->m, n * sizeof(float)));
    if (o->kind == OPT_ADAM) TRY(ops->alloc(be->ctx, (void **)&o->v, n * sizeof(float)));
    size_t hb = o->kind == OPT_ADAM ? sizeof(adam_hyper) : sizeof(sgd_hyper);
    TRY(ops->alloc(be->ctx, &o->hyper, hb));
    return ST_OK;
}

void optim_destroy(optim *o) {
    if (!o->be) return;
    o->be->ops->free(o->be->ctx, o->m);
    o->be->ops->free(o->be->ctx, o->v);
    o->be->ops->free(o->be->ctx, o->hyper);
    memset(o, 0, sizeof *o);
}

int optim_prepare(optim *o, double lr) {
    const backend_ops *ops = o->be->ops;
    o->t++;
    if (o->kind == OPT_ADAM) {
        adam_hyper h = {.lr = (float)lr, .beta1 = (float)o->beta1, .beta2 = (float)o->beta2, .eps = (float)o->eps,
                        .weight_decay = (float)o->weight_decay, .t = o->t};
        return ops->upload(o->be->ctx, o->hyper, &h, sizeof h);
    }
    sgd_hyper h = {.lr = (float)lr, .momentum = (float)o->momentum, .weight_decay = (float)o->weight_decay};
    return ops->upload(o->be->ctx, o->hyper, &h, sizeof h);
}

int optim_apply(optim *o, float *params, const float *grads) {
    const backend_ops *ops = o->be->ops;
    if (o->kind == OPT_ADAM) return ops->adam_step(o->be->ctx, o->n, params, grads, o->m, o->v, o->hyper);
    return ops->sgd_step(o->be->ctx, o->n, params, grads, o->m, o->hyper);
}

int optim_step(optim *o, float *params, const float *grads, double lr) {
    TRY(optim_prepare(o, lr));
    return optim_apply(o, params, grads);
}

int optim_n_state(const optim *o) { return o->kind == OPT_ADAM ? 2 : 1; }

float *optim_state(const optim *o, int i, const char **name) {
    if (o->kind == OPT_ADAM) {
        *name = i == 0 ? "adam_m" : "adam_v";
        return i == 0 ? o->m : o->v;
    }
    *name = "sgd_velocity";
    return o->m;
}
