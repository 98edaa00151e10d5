// train.h — the trainer's entry points: training (data-parallel steps with bucketed, overlapped gradient
// all-reduce, evaluation, metrics, checkpoints and resume), using a trained model (--eval, --predict), and the
// output plan checked before either. main.c chooses between them.
#pragma once
#include "comm.h"
#include "config.h"
#include "train_opts.h"

// The output plan (src/train_outputs.c): every file this run may write (--save and its copies, --metrics, --trace,
// --out), checked before any work against the run's inputs, each other, their kind and length. ST_INPUT naming
// both paths of a clash. Each rank checks the files it writes (rank 0: all but the other ranks' traces).
int train_outputs_check(const net_config *cfg, const train_opts *o, int rank);

// Train: the whole job on this rank (src/train.c). Collective: every rank of c calls it with the same cfg and opts.
int train_run(const net_config *cfg, const train_opts *o, comm *c, train_result *res);

// Use a trained model instead (src/train_use.c): --eval (o->eval_path) or --predict (o->predict_path).
// Collective like train_run; res->used is set.
int train_use_run(const net_config *cfg, const train_opts *o, comm *c, train_result *res);
