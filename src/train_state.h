// train_state.h — private to the trainer's files: the trainer struct and what one of them calls in another.
// Each file stands on the ones listed below it and calls none above it (tests/check_cycles.sh keeps it so):
//   train.c         training: set-up, the step (issued or replayed from a graph), the epoch loop, train_run
//   train_use.c     using a trained model: --eval and --predict (train_use_run)
//   train_ckpt.c    the checkpoint schema: tensor list, save, resume, weights only (--init-from, --eval)
//   train_ddp.c     data-parallel mechanics: gradient buckets and their all-reduce, the initial broadcast,
//                   running statistics from rank 0, agreement on the data, the replica check
//   train_setup.c   what training and use share: backend, augmentation, test set, evaluation, finiteness
//   train_stream.c  streamed data sets (folder, list): image sets, loaders, the staged batch
//   train_timing.c  phase marks, the epoch's step-time means, --trace, progress and ETA
//   train_outputs.c the run's output plan, checked at start-up against its inputs and itself
//   train_state.c   the struct's life, its host copy and hashes, agreement on a set-up status
// Callers of the trainer include train.h only.
#pragma once
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "comm.h"
#include "config.h"
#include "data.h"
#include "loader.h"
#include "loss_scale.h"
#include "metrics.h"
#include "model.h"
#include "optim.h"
#include "powersgd.h"
#include "test_hooks.h"
#include "tensorboard.h"
#include "trace.h"
#include "train_opts.h"

typedef struct bucket {
    size_t begin, end;          // float offsets into the gradient buffer
    int req;                    // comm request while in flight, -1 otherwise
    double t_launch, t_done;    // host clock: launch, completion seen (comm=mpi)
    void *m_start, *m_end;      // device marks of the all-reduce (comm=nccl; NULL for mpi), see comm_req_marks
    void *g_start, *g_end;      // the same, as captured into the CUDA graph (what a replay records)
    int psgd_stage;             // PowerSGD: 1 [P's | uncompressed] in flight, 2 the Q's in flight, 0 neither
    double t_q_launch;          // PowerSGD: host clock when its Q's were launched this step (0: not yet), for --trace
} bucket;

// --resume of a PowerSGD run: the checkpoint's state, held until the buckets exist (bucket_kb=auto makes them at
// the start) and applied there if the layout is the same (train_ddp.c).
typedef struct psgd_saved {
    float *q, *err;             // malloc'd; NULL when the file had none
    size_t nq, nerr;
    uint64_t layout;            // powersgd_layout_hash of the run that saved it
} psgd_saved;

// The host issues at most AHEAD steps beyond the last one the GPU finished. More would only queue work, and a
// step stuck in an all-reduce must be seen by a bounded wait (train_mark_wait) before the host blocks elsewhere.
#define AHEAD 2

// Phase marks of a step (backend marks: host clock on the CPU, events on the GPU compute stream).
enum { MK_START, MK_DATA, MK_FWD, MK_BWD, MK_WAIT, MK_END, MK_N };

// --trace: a mark before and after each layer's ops (model.c's layer hook).
// Entries come in pairs (begin, end) per layer, in issue order.
typedef struct layer_mark {
    void *mk;
    int backward, layer;
} layer_mark;

typedef struct trainer {
    const net_config *cfg;      // = &cfg_eff
    net_config cfg_eff;         // the caller's configuration plus what set-up computes (data.mean, data.std)
    const train_opts *o;
    const test_hooks *hooks;    // o->hooks, or all off (never NULL)
    comm *c;
    int rank, world;
    backend be;
    model m;
    optim opt;
    lr_schedule sched;
    dataset train, test;
    uint8_t *d_train_x, *d_test_x;  // data sets in backend memory (streamed: the step's staged batch)
    int32_t *d_train_y, *d_test_y;
    int32_t *d_perm, *d_test_index, *h_perm;
    gather_aug *d_aug_train, *d_aug_eval;  // [data] augmentation, backend memory (NULL: the plain gather)
    gather_aug h_aug_train;                // its host copy; the epoch is uploaded before each epoch
    // Streamed formats (train_stream.c); sets NULL otherwise. train.n / test.n count the training view and the
    // test set (their images stay NULL).
    image_set *sets;            // [0] training, [1] validation (val_dir/val_list), [2] test
    int32_t *train_map, *val_map;  // val_fraction: the training view's and the held-out part's set indices
    int n_train_view, n_val_view;
    loader *ld_train, *ld_eval;
    const image_set *ld_eval_set;  // the set ld_eval reads
    int eval_cap;               // ld_eval's batch
    int data_workers;
    int32_t *h_seq;             // a loader's sequence of sample indices
    size_t seq_cap;
    void *mk_stage;             // the last staged batch's copy has finished
    double data_wait_s;         // host time waiting for the loader (the epoch's data_wait_s)
    int B, G, steps_per_epoch, sample_elems;
    // buckets
    bucket *buckets;
    long long *bucket_bytes;    // each bucket's size in bytes, launch order (metrics bucket_bytes)
    int n_buckets, next_bucket, use_comm, overlap;
    int host_comm;              // the all-reduces progress on the host (comm=mpi): poll them during backward
    int cb_status;              // first error the backend's progress hook (a void callback) saw polling buckets
    powersgd *psgd;             // parallel.compress=powersgd with all-reduces (src/powersgd.h); NULL otherwise
    psgd_saved psgd_resume;     // --resume: its PowerSGD state until train_ddp_start applies it
    // position
    int epoch, step_in_epoch;
    long long global_step;
    double loss_carry, correct_carry;  // partial epoch sums restored from a checkpoint
    uint64_t data_hash;                // train_data_hash, computed once when a checkpoint needs it
    int data_hashed;
    // per-epoch timing accumulators
    step_times acc;
    int timed;
    double *step_wait;          // this epoch's timed steps' waits after backward (skew_s), steps_per_epoch of them
    // parallel.overlap=2: overlap off on even steps and on on odd ones; the timed steps' phases also per half
    int overlap_ab;
    step_times ab[2];           // sums over the timed steps without ([0]) and with ([1]) overlap
    int ab_timed[2];
    unsigned char *step_ov;     // each timed step's overlap (0/1), beside step_wait
    int async_backend;          // ops run on a GPU stream: reading a step's marks waits for the step
    int timing_every;           // time every k-th step (1 on the CPU, TIMING_EVERY_ASYNC on a GPU)
    int marks_on;               // the step being issued records its phase marks
    void *mk[MK_N], *mk_sync;
    void *mk_ahead[AHEAD + 1];  // recorded after each step is issued: the host waits for step k-AHEAD
    // CUDA graph of the step (backend capture/replay)
    int use_graph, graph_ready;
    int graph_fell_back;        // the capture failed: steps run op by op (a note said why)
    long long eager_steps;
    int32_t *d_batch_idx;       // the step's sample indices (K micro-batches) at a fixed address, where a graph reads them
    int K;                      // net.accum_steps: micro-batches per optimizer step
    float *acc_grads;           // K > 1: the sum of the first K - 1 micro-batches' gradients
    long long launches;         // bucket all-reduces launched this epoch (metrics allreduces_per_step)
    int32_t *d_param_bad;       // [0]: non-finite parameters after the step's update (counted inside the step, also
                                // in a graph); [1]: scratch for naming the layer (train_params_check)
    double *d_sumsq;            // clip_grad_norm: the step's sum of squared gradients (before clipping)
    loss_scaler ls;             // net.precision=fp16: dynamic loss scaling (off otherwise)
    long long ls_skipped0;      // ls.skipped when the epoch began (the epoch's skipped_steps)
    double grad_norm_sum;       // sum over the epoch's timed steps of the norm before clipping
    double ckpt_test_loss, ckpt_test_acc;  // the epoch's test figures, for the checkpoint saved at its end
    int ckpt_has_test;
    double best_acc;            // --keep-best: the best test accuracy so far (have_best: one was seen)
    int have_best;
    double *confusion;          // --eval: [true][predicted] counts over the test set; NULL otherwise
    float *h_logits;            // --eval, --predict: one evaluation batch of logits on the host
    trace *tr;                  // --trace; NULL when off (every use is behind one test of this pointer)
    tboard *tb;                 // --tensorboard on rank 0; NULL otherwise
    int steps_fd;               // --metrics on rank 0: the per-step records' file (metrics_steps_path); -1 otherwise
    char steps_path[CFG_PATH_MAX + 32];
    double run_t0;              // when the first epoch began (the step records' elapsed_s)
    void *mk_origin;            // trace: recorded when the trace's origin was taken
    double origin_s;
    layer_mark *lm;             // trace: per-layer marks of the current step
    int n_lm, cap_lm, in_step;
} trainer;

// On a GPU the phase split is read from every TIMING_EVERY_ASYNC-th step: reading marks waits for the step to
// finish, which would otherwise leave the GPU idle between steps. Throughput comes from the wall clock.
#define TIMING_EVERY_ASYNC 16

// ---------------------------------------------------------------------------------------------------------
// train_state.c

int train_state_new(const net_config *cfg, const train_opts *o, comm *c, trainer **out);  // before any set-up
void train_state_free(trainer *t);            // backend memory, host buffers and t itself (NULL: nothing)
int train_agree(trainer *t, int st);          // a set-up status agreed over ranks
int train_host_state(const trainer *t, float **out);     // params, then each optimizer state (malloc'd)
int train_host_state_upload(trainer *t, const float *host);
uint64_t train_dataset_hash(const dataset *d);
uint64_t train_data_hash(trainer *t);         // the training set's, computed once
uint64_t train_fnv1a(const void *p, size_t n);

// ---------------------------------------------------------------------------------------------------------
// train_timing.c

int train_mark(trainer *t, int k);            // phase mark k of the step being issued (when marks_on)
int train_mark_wait(trainer *t, void *mk);    // the work before mk has finished, bounded by comm_timeout_s
int train_drain(trainer *t);                  // everything issued so far has finished (bounded)
int train_step_timing(trainer *t, int replayed);  // after a timed step: its phases into the epoch's sums
int train_trace_setup(trainer *t);            // --trace: lanes, layer marks, the origin (collective)
void train_timing_reset(trainer *t);          // at an epoch's start
int train_timing_skew(trainer *t);            // after an epoch's steps (collective): skew_s from every rank's waits
void train_timing_means(const trainer *t, step_times *means, double *grad_norm);
void train_timing_ab(const trainer *t, step_times means[2], int steps[2]);  // parallel.overlap=2: per half
void train_progress_show(const trainer *t, int bar, int step, double loss_sum, int run, double elapsed,
                         long long steps_here, double secs_here);

// ---------------------------------------------------------------------------------------------------------
// train_outputs.c

// --save-every / --keep-best copies: the --save path's stem + suffix + ".safetensors" (ST_INPUT when too long).
int train_copy_path(const char *save, const char *suffix, char *out, size_t n);

// ---------------------------------------------------------------------------------------------------------
// train_stream.c

int train_stream_setup(trainer *t, int training);  // sets, loaders, staging
// --predict on image files, folders and lists: their set as sets[2], and its loader (evaluation transforms).
int train_stream_predict_setup(trainer *t, const char *const *paths, int n_paths);
int train_stream_epoch(trainer *t);           // the loader starts on this rank's rest of the epoch
int train_stream_step(trainer *t);            // the step's K x B samples staged into d_train_x / d_train_y
int train_stream_eval_start(trainer *t, int val, int begin, int end, int eb);  // this rank's evaluation range
int train_stream_eval_batch(trainer *t, int n, const int32_t **h_labels);     // the next n into d_test_x / y
int train_stream_eval_n(const trainer *t, int val);  // samples in the evaluated set
long long train_stream_bad(const trainer *t); // images skipped (data.skip_bad)
void train_stream_report(trainer *t);         // every rank: the training files it read (distinct), of how many

// ---------------------------------------------------------------------------------------------------------
// train_setup.c

int train_backend_setup(trainer *t);          // the backend (this rank's cores or GPU) and the step's marks
int train_augment_setup(trainer *t, int training);  // [data] augmentation: gather parameters in backend memory
int train_test_upload(trainer *t);            // the test set into backend memory, with the identity index
int train_eval_batch_capped(const trainer *t);  // eval_batch, at most this rank's share of the test set
// Loss and accuracy over all ranks: of the test set, or (val, streamed sets) of the validation set.
int train_evaluate(trainer *t, int val, double *loss, double *acc);
int train_confusion_add(trainer *t, const int32_t *labels, int n);  // --eval: the last forward's samples, counted
int train_logits_download(trainer *t, int n); // the last forward's n rows of logits into t->h_logits
int train_logits_argmax(const float *z, int classes);  // the first largest (as evaluation counts a hit)
// The parameters after the last update are all finite; else ST_DIVERGED (collective: the replicas are equal)
// naming the step and the first layer with non-finite values. Before every save and after each checked step.
int train_params_check(trainer *t);
// --eval / --predict stopped by a signal after `done` of `total` samples: ST_INTERRUPTED, agreed (exit 5).
int train_use_stopped(const trainer *t, int done, int total);

// ---------------------------------------------------------------------------------------------------------
// train_ddp.c

int train_buckets_create(trainer *t);         // buckets closed at layer boundaries, each within bucket_kb
int train_grads_finalize(trainer *t, size_t begin, size_t end);  // K > 1: sum and average the micro-batches
int train_on_grads_ready(void *arg, size_t ready);  // model_backward's callback: launch the ready buckets
int train_buckets_finish(trainer *t);         // launch the rest, wait for all (comm=nccl: the stream waits)
int train_ddp_start(trainer *t);              // bind the comm to the stream, broadcast rank 0's state
int train_data_agree(trainer *t);             // every rank loaded the same data (collective)
int train_state_broadcast(trainer *t);        // running statistics from rank 0 (collective; before eval, save)
int train_replicas_check(trainer *t);         // same parameters and running statistics everywhere (collective)
// PowerSGD's state for a checkpoint: Q (the same everywhere) and every rank's error on rank 0 (collective; *err:
// world x powersgd_error_floats floats, rank-major, malloc'd on rank 0, NULL elsewhere). Nothing (NULLs) when
// PowerSGD is off or has not started.
int train_psgd_gather(trainer *t, float **q, float **err);

// ---------------------------------------------------------------------------------------------------------
// train_ckpt.c

int train_ckpt_save_agreed(trainer *t, const char *path, double loss_sum, double correct_sum);  // collective
int train_ckpt_save_epoch(trainer *t, double test_loss, double test_acc);  // --save and its copies (collective)
int train_ckpt_resume(trainer *t, const char *path);  // parameters, optimizer state and position
// Model weights only (--init-from, --eval, --predict); exclude: --init-exclude's list or NULL.
int train_weights_load(trainer *t, const char *path, const char *exclude, int *loaded, int *total);

// ---------------------------------------------------------------------------------------------------------
// train.c

// net.no_decay's ranges of the parameter buffer (begin/len: 2 per layer at most); returns how many.
int train_no_decay_ranges(const model *m, const char *list, size_t *begin, size_t *len);
