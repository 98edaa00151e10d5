// optim.h — optimizers over the flat parameter buffer (Adam with Keras defaults, AdamW, SGD with momentum or
// Nesterov momentum) and the learning-rate schedule.
//
// The state (Adam m and v, SGD velocity) is flat like the parameters, so one backend call updates a whole
// stretch of the model: the buffer is cut only where weight decay switches on or off (net.no_decay).
// Hyper-parameters for the step are written into backend memory each step (see backend.h: a captured CUDA graph
// reads the current learning rate and step count from there).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "config.h"

// ---- learning-rate schedule (docs/config.md, "Training recipes": the formulas)
typedef struct lr_schedule {
    int kind;                  // SCHED_*
    double peak, min_lr;       // peak: net.lr, times the world size with lr_scaling=linear
    double warmup_steps;       // linear warmup to the peak over these steps (onecycle: 30 % of training if 0)
    double start;              // where the warmup starts: 0, or peak / 25 (onecycle)
    long long total_steps;     // epochs x steps per epoch
    int steps_per_epoch;
    double gamma;              // step: factor at each milestone
    int milestones[CFG_LR_STEPS_MAX], n_milestones;  // step: epochs
} lr_schedule;

int lr_schedule_init(lr_schedule *s, const net_config *cfg, double peak, int steps_per_epoch);
// The learning rate of global step `step` (0-based: the step about to be taken).
double lr_schedule_at(const lr_schedule *s, long long step);

// ---- optimizer
typedef struct optim_segment {
    size_t begin, end;   // floats of the flat buffer
    int decay;           // weight decay applies here (0: net.no_decay)
} optim_segment;

typedef struct optim {
    backend *be;
    int kind;            // OPT_ADAM / OPT_SGD / OPT_ADAMW
    size_t n;
    float *m, *v;        // Adam moments (backend memory); SGD uses m as the velocity
    void *hyper;         // adam_hyper or sgd_hyper in backend memory, with weight decay
    void *hyper_nd;      // the same without weight decay (segments with decay 0)
    int64_t t;           // steps taken
    double beta1, beta2, eps, momentum, weight_decay;
    int nesterov;
    optim_segment *seg;  // cover [0, n) in order; one segment unless some parameters have no decay
    int n_seg;
} optim;

int optim_create(optim *o, backend *be, const net_config *cfg, size_t n);
void optim_destroy(optim *o);
// Exclude [begin[i], begin[i] + len[i]) from weight decay (n ranges, any order, may touch or repeat).
int optim_no_decay(optim *o, const size_t *begin, const size_t *len, int n);
// One step with learning rate lr (schedule applied by the caller): optim_prepare then optim_apply.
int optim_step(optim *o, float *params, const float *grads, double lr);
// The two halves of a step. prepare counts the step and uploads its hyper-parameters (host work: outside a
// graph capture); apply is the update itself (stream work: what a captured step contains).
int optim_prepare(optim *o, double lr);
int optim_apply(optim *o, float *params, const float *grads);
// A prepared step that is not taken (fp16 loss scaling found NaN/Inf gradients): not counted, as PyTorch's
// optimizers count only the steps GradScaler lets them take.
void optim_skip(optim *o);
// Number of state buffers (2 for Adam/AdamW: m, v; 1 for SGD: velocity) and their names for checkpoints.
int optim_n_state(const optim *o);
float *optim_state(const optim *o, int i, const char **name);
const char *optim_name(int kind);  // "adam", "sgd", "adamw"
