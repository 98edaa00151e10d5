// metrics.h — the numbers a user reads: per-step time breakdown, throughput, scaling efficiency.
//
// Every number is defined once here and in docs/outputs.md ("Metrics"), and computed in one function.
#pragma once
#include <stdio.h>

#include "config.h"

// Per-step wall-time breakdown, averaged over the steps of an epoch (seconds).
typedef struct step_times {
    double data_s;          // gather the batch
    double forward_s;
    double backward_s;      // including launching buckets and polling comm between layers
    double exposed_comm_s;  // waiting for all-reduces after backward finished: comm NOT hidden by compute
    double comm_s;          // time with at least one bucket's all-reduce in flight (metrics_busy_s of the
                            // buckets' launch -> completion-observed intervals): comm in flight, <= the step
    double optimizer_s;
    double step_s;          // whole step
    double skew_s;          // the part of exposed_comm_s spent waiting for a peer still in backward: this rank's
                            // wait minus the shortest wait of any rank in the same step (see train_timing_skew)
} step_times;

typedef struct baseline {
    int present;
    double images_per_s;    // global throughput of the np 1 run
    double step_s;          // its mean step time
    int global_batch;
} baseline;

typedef struct epoch_metrics {
    int epoch;              // 1-based
    long long step;         // global step count at the end of the epoch
    double train_loss, train_acc, test_loss, test_acc;
    double epoch_s;         // wall time of the training steps of the epoch (no eval)
    double eval_s;
    double images_per_s;    // global: world * per-rank batch * steps / epoch_s
    double images_per_s_per_rank;
    double gflop_per_s;     // images_per_s × the model's training FLOPs per image (conv, dense) / 1e9
    step_times t;
    double lr;
    double grad_norm;       // mean global L2 norm of the averaged gradients before clipping, over the timed
                            // steps (net.clip_grad_norm > 0); NaN when not clipping (written as null)
    int world, batch, global_batch, n_buckets, bucket_kb, overlap, scaling;
    const long long *bucket_bytes;  // n_buckets sizes in launch order (buckets close at layer boundaries)
    const char *backend, *comm;
    int cuda_graph;         // the steps were replayed from a CUDA graph
    int accum_steps;        // micro-batches per optimizer step (net.accum_steps)
    double allreduces_per_step;  // bucket all-reduces launched per optimizer step by the host (0: none or a
                                 // replayed graph, which launches them inside it)
    int timed_steps;        // steps the breakdown t averages over (every step on the CPU, every 16th on a GPU)
    step_times ab[2];       // parallel.overlap=2 (overlap == 2): t over the timed steps without ([0]) and with
    int ab_steps[2];        // ([1]) overlap, and how many of each (JSONL ab_off, ab_on)
    double scaling_efficiency;
    const char *efficiency_kind;  // "baseline" (measured against --baseline) or "estimate" (compute/step)
    const char *eval_set;   // what test_loss / test_acc were measured on: "test", or "val" (a validation set)
    double data_wait_s;     // streamed data: rank 0's host time waiting for the loader's batches, per step
    long long bad_images;   // streamed data with data.skip_bad: distinct images skipped so far on rank 0
    const char *precision;  // net.precision ("fp32", "tf32", "bf16", "fp16")
    double loss_scale;      // fp16: the loss scale at the epoch's end (1 otherwise)
    long long skipped_steps;  // fp16: steps of the epoch skipped for NaN/Inf gradients, on every rank (0 otherwise)
    double time;            // wall clock at the epoch's end, seconds since 1970 (UTC)
} epoch_metrics;

// Scaling efficiency, the one place it is computed (see docs/outputs.md, "Metrics"):
//   weak   (per-rank batch fixed):  E = throughput(N) / (N * throughput(1))
//   strong (global batch fixed):    E = time(1) / (N * time(N)), time = step time for the same global batch
// With no baseline: E_est = (step_s - exposed_comm_s) / step_s, labelled "estimate".
double scaling_efficiency(const epoch_metrics *m, const baseline *b, const char **kind);

// The length of the union of the intervals [t0[i], t1[i]) (any order, overlapping or not; an empty or reversed
// one counts nothing): the time during which at least one of them was under way. comm_s is this over a step's
// bucket all-reduces -- a sum would count concurrent all-reduces once each (18 buckets in flight together
// during one 3 ms wait read as 52 ms).
double metrics_busy_s(int n, const double *t0, const double *t1);

// Read the last JSON line of an np 1 metrics file. ST_INPUT naming the file when it is not one.
int baseline_load(const char *path, baseline *b);

// --metrics FILE opened for writing (appending on resume); never blocks on a FIFO without a reader.
int metrics_open(const char *path, int append, int *fd);
// One JSON object on one line (JSON Lines), written with one write; on a failure the partial line is removed
// again and the status is ST_RUNTIME with the errno's text.
int metrics_write_jsonl(int fd, const char *path, const epoch_metrics *m);

// Per-step records, every --log-every seconds while an epoch trains, in a file beside the epoch records: the
// --metrics path with its ".jsonl" (if any) replaced by ".steps.jsonl" (docs/outputs.md, "Metrics").
int metrics_steps_path(const char *metrics, char *out, size_t n);
typedef struct step_record {
    int epoch;              // 1-based, the epoch in progress
    long long step;         // global steps done
    double time;            // wall clock, seconds since 1970 (UTC)
    double elapsed_s;       // since the run started training
    double loss;            // rank 0's mean training loss over the epoch's samples so far
    double lr;              // of the last step
    double images_per_s;    // global, over the epoch so far
    double grad_norm;       // mean norm before clipping over the epoch's timed steps (NaN: not clipping)
    double step_s, comm_s, exposed_comm_s, data_wait_s;  // means over the epoch's timed steps so far
} step_record;
int metrics_write_step(int fd, const char *path, const step_record *r);
// The first bytes of an existing file look like a metrics file (what --metrics may replace).
int metrics_is_jsonl_head(const unsigned char *head, size_t n);

// --eval: one JSON object (docs/outputs.md, "Using a trained model"). confusion is classes x classes, [true][predicted].
typedef struct eval_report {
    const char *checkpoint;
    int samples, classes, world, eval_batch;
    const char *backend;
    double test_loss, test_acc;
    const double *confusion;
    // From the checkpoint's metadata (NULL when absent): the epoch its weights belong to (1-based: the epoch it was
    // saved at the end of, or the one it was saved in the middle of), its global step, and the test figures the
    // training run printed then (%.17g); same_as_training: this evaluation's figures are those, bit for bit.
    const char *train_epoch, *train_step, *train_test_loss, *train_test_acc;
    int train_mid_epoch;        // saved in the middle of train_epoch (its test figures were never computed)
    int same_as_training;
} eval_report;

// Written whole (one write, truncating the file first); a failed write leaves the file empty.
int metrics_write_eval(const char *path, const eval_report *r);
