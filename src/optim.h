// optim.h — optimizers over the flat parameter buffer: Adam (Keras defaults) and SGD with momentum.
//
// The state (Adam m and v, SGD velocity) is flat like the parameters, so one backend call updates the whole
// model. Hyper-parameters for the step are written into backend memory each step (see backend.h: a captured
// CUDA graph reads the current learning rate and step count from there).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "config.h"

typedef struct optim {
    backend *be;
    int kind;            // OPT_ADAM / OPT_SGD
    size_t n;
    float *m, *v;        // Adam moments (backend memory); SGD uses m as the velocity
    void *hyper;         // adam_hyper or sgd_hyper in backend memory
    int64_t t;           // steps taken
    double beta1, beta2, eps, momentum, weight_decay;
} optim;

int optim_create(optim *o, backend *be, const net_config *cfg, size_t n);
void optim_destroy(optim *o);
// One step with learning rate lr (schedule applied by the caller): optim_prepare then optim_apply.
int optim_step(optim *o, float *params, const float *grads, double lr);
// The two halves of a step. prepare counts the step and uploads its hyper-parameters (host work: outside a
// graph capture); apply is the update itself (stream work: what a captured step contains).
int optim_prepare(optim *o, double lr);
int optim_apply(optim *o, float *params, const float *grads);
// Number of state buffers (2 for Adam: m, v; 1 for SGD: velocity) and their names for checkpoints.
int optim_n_state(const optim *o);
float *optim_state(const optim *o, int i, const char **name);
