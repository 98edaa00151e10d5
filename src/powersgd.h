// powersgd.h — PowerSGD gradient compression (Vogels et al., 2019), the math of PyTorch's powerSGD_hook
// (torch/distributed/algorithms/ddp_comm_hooks/powerSGD_hook.py), per gradient bucket. docs/parallelism.md.
//
// A bucket (a slice [begin, end) of the flat gradient buffer) is cut into its parameter tensors. A tensor of >= 2
// dimensions is viewed as a matrix M [shape[0], rest]; it is compressed at rank r = min(rows, cols, powersgd_rank)
// when 2 (rows + cols) r < rows cols (PyTorch's min_compression_rate 2); the rest (biases, batch norm's vectors,
// matrices too small to gain) is all-reduced as it is. A step past powersgd_start_step runs, per bucket:
//
//   compress    g += error (error feedback); error = g (kept to make the next error); per matrix Q
//               orthogonalised (drawn once, N(0, 1) from the seed, identically on every rank; warm-started after)
//               and P = M Q; returns [P's | uncompressed values] to be all-reduced (averaged)
//   project     the averaged uncompressed values back into g; per matrix P orthogonalised and Q = M^T P; returns
//               the Q's to be all-reduced (averaged)
//   decompress  per matrix M = P Q^T into g; error = error - g (the input less what the ranks agreed on)
//
// Every op goes through the backend (gemm, orthogonalize, copy, add, scale), so on the GPU all of it runs on the
// device. The caller owns the all-reduces between the stages (src/train_ddp.c). State: Q per matrix (the same on
// every rank) and the error (this rank's own), both in backend memory, saved by the checkpoint.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "model.h"

typedef struct powersgd powersgd;

typedef struct powersgd_opts {
    int rank;              // parallel.powersgd_rank (>= 1)
    long long start_step;  // parallel.powersgd_start_step: optimizer steps (0-based) before it are all-reduced plainly
    uint64_t seed;         // Q's first draw (net.seed): the same on every rank
    float eps;             // orthogonalisation epsilon (PyTorch's orthogonalization_epsilon, default 0)
} powersgd_opts;

typedef struct powersgd_stats {
    int tensors;           // parameter tensors in the buckets
    int matrix_tensors;    // of those, with >= 2 dimensions
    int compressed;        // weight tensors compressed (wholly, or in parts where buckets split it)
    int pieces;            // matrices compressed: one per tensor, one per part of a split tensor
    size_t floats_plain;   // floats one uncompressed step all-reduces (the gradient)
    size_t floats_sent;    // floats one compressed step all-reduces: P's, Q's and the uncompressed rest
    int max_rank;          // the largest powersgd_rank at which some matrix compresses (0: none even at rank 1)
} powersgd_stats;

// The buckets' layout from the model's parameter tensors (model_param_tensor); begin/end: n_buckets slices that
// cover the gradient buffer. Allocates P/Q/error/scratch buffers in backend memory.
int powersgd_create(powersgd **out, const backend *be, const model *m, int n_buckets, const size_t *begin,
                    const size_t *end, const powersgd_opts *o);
void powersgd_destroy(powersgd *ps);   // NULL: nothing
// What a compressed step all-reduces for the whole tensors inside floats [begin, end) of the gradient buffer, at
// powersgd_rank `rank` (the rule above; a tensor cut by begin or end is counted as uncompressed): *p the first
// all-reduce (P's and the uncompressed values), *q the second (Q's). For the bucket planner (src/bucket_plan.h).
void powersgd_span_floats(const model *m, int rank, size_t begin, size_t end, size_t *p, size_t *q);
void powersgd_get_stats(const powersgd *ps, powersgd_stats *st);
int powersgd_active(const powersgd *ps, long long step);  // 1: optimizer step `step` (0-based) is compressed

// The three stages of bucket i on the gradient buffer `grads` (backend memory). compress and project return the
// backend buffer to all-reduce (average over ranks, in place) before the next stage, and its length in floats
// (0: nothing to exchange).
int powersgd_compress(powersgd *ps, int i, float *grads, float **buf, size_t *n);
int powersgd_project(powersgd *ps, int i, float *grads, float **buf, size_t *n);
int powersgd_decompress(powersgd *ps, int i, float *grads);

// ---- state (checkpoints)
// 1 once every bucket has run a compressed step (Q drawn): the state worth saving.
int powersgd_started(const powersgd *ps);
size_t powersgd_q_floats(const powersgd *ps);      // all buckets' Q's, concatenated in bucket order
size_t powersgd_error_floats(const powersgd *ps);  // the error buffer: the gradient buffer's size
// A number that changes with anything the state's meaning depends on: the buckets, their matrices and ranks.
uint64_t powersgd_layout_hash(const powersgd *ps);
// Host copies of the state (q: powersgd_q_floats, err: powersgd_error_floats; either may be NULL).
int powersgd_state_download(const powersgd *ps, float *q, float *err);
// Restore a saved state (started from then on); err NULL: this rank's error starts at zero.
int powersgd_state_upload(powersgd *ps, const float *q, const float *err);
