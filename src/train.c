// train.c — data-parallel training: per-rank shards of a global permutation, forward/backward on the backend,
// gradient buckets all-reduced as soon as backward has produced them (overlap), optimizer, evaluation split
// over ranks, per-epoch metrics and scaling efficiency, checkpoints and exact resume.
#include "train.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "augment.h"
#include "backend.h"
#include "backend_cuda.h"
#include "backend_record.h"
#include "checkpoint.h"
#include "common.h"
#include "data.h"
#include "fileio.h"
#include "metrics.h"
#include "model.h"
#include "optim.h"
#include "placement.h"
#include "trace.h"

volatile sig_atomic_t g_stop_requested = 0;

#define CKPT_FORMAT "ddp-cnn-1"

typedef struct bucket {
    size_t begin, end;          // float offsets into the gradient buffer
    int req;                    // comm request while in flight, -1 otherwise
    double t_launch, t_done;    // host clock: launch, completion seen (comm=mpi)
    void *m_start, *m_end;      // device marks of the all-reduce (comm=nccl; NULL for mpi), see comm_req_marks
    void *g_start, *g_end;      // the same, as captured into the CUDA graph (what a replay records)
} bucket;

// The host issues at most AHEAD steps beyond the last one the GPU finished. More would only queue work, and a
// step stuck in an all-reduce must be seen by a bounded wait (mark_wait) before the host blocks elsewhere.
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
    comm *c;
    int rank, world;
    backend be;
    model m;
    optim opt;
    lr_schedule sched;
    dataset train, test;
    uint8_t *d_train_x, *d_train_y, *d_test_x, *d_test_y;  // data sets in backend memory
    int32_t *d_perm, *d_test_index, *h_perm;
    gather_aug *d_aug_train, *d_aug_eval;  // [data] augmentation, backend memory (NULL: the plain gather)
    gather_aug h_aug_train;                // its host copy; the epoch is uploaded before each epoch
    int B, G, steps_per_epoch, sample_elems;
    // buckets
    bucket *buckets;
    int n_buckets, next_bucket, use_comm, overlap;
    int host_comm;              // the all-reduces progress on the host (comm=mpi): poll them during backward
    int cb_status;              // first error raised inside the grad-ready callback
    // position
    int epoch, step_in_epoch;
    long long global_step;
    double loss_carry, correct_carry;  // partial epoch sums restored from a checkpoint
    uint64_t data_hash;                // train_data_hash, computed once when a checkpoint needs it
    int data_hashed;
    // per-epoch timing accumulators
    step_times acc;
    int timed;
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
    double *d_sumsq;            // clip_grad_norm: the step's sum of squared gradients (before clipping)
    double grad_norm_sum;       // sum over the epoch's timed steps of the norm before clipping
    double ckpt_test_loss, ckpt_test_acc;  // the epoch's test figures, for the checkpoint saved at its end
    int ckpt_has_test;
    double best_acc;            // --keep-best: the best test accuracy so far (have_best: one was seen)
    int have_best;
    double *confusion;          // --eval: [true][predicted] counts over the test set; NULL otherwise
    float *h_logits;            // --eval, --predict: one evaluation batch of logits on the host
    trace *tr;                  // --trace; NULL when off (every use is behind one test of this pointer)
    void *mk_origin;            // trace: recorded when the trace's origin was taken
    double origin_s;
    layer_mark *lm;             // trace: per-layer marks of the current step
    int n_lm, cap_lm, in_step;
} trainer;

// On a GPU the phase split is read from every TIMING_EVERY_ASYNC-th step: reading marks waits for the step to
// finish, which would otherwise leave the GPU idle between steps. Throughput comes from the wall clock.
#define TIMING_EVERY_ASYNC 16

// ---------------------------------------------------------------------------------------------------------
// Buckets: contiguous slices of the gradient buffer, launched as soon as backward has finished them.

// Gradient accumulation: the last micro-batch's gradients plus the earlier ones' sum, averaged over the K
// micro-batches -- for [begin, end) of the buffer, just before that slice is all-reduced (or stepped on).
static int grads_finalize(trainer *t, size_t begin, size_t end) {
    if (t->K == 1 || end <= begin) return ST_OK;
    TRY(t->be.ops->add(t->be.ctx, end - begin, t->acc_grads + begin, t->m.grads + begin));
    return t->be.ops->scale(t->be.ctx, end - begin, 1.0f / (float)t->K, t->m.grads + begin);
}

static int bucket_launch(trainer *t, int i) {
    bucket *b = &t->buckets[i];
    TRY(grads_finalize(t, b->begin, b->end));
    t->launches++;
    char label[64];
    snprintf(label, sizeof label, "step %lld bucket %d", t->global_step + 1, i);  // 1-based, as in messages
    b->t_launch = now_s();
    b->t_done = 0;
    TRY(comm_allreduce_avg_async(t->c, t->m.grads + b->begin, b->end - b->begin, label, &b->req));
    return comm_req_marks(t->c, b->req, &b->m_start, &b->m_end);
}

// Move in-flight all-reduces on and note when each completes (for comm_s).
static void buckets_poll(trainer *t) {
    if (comm_progress(t->c) != ST_OK && t->cb_status == ST_OK) t->cb_status = err_status();
    for (int i = 0; i < t->next_bucket; i++) {
        bucket *b = &t->buckets[i];
        if (b->req < 0 || b->t_done > 0) continue;
        int done = 0;
        if (comm_test(t->c, b->req, &done) != ST_OK) {
            if (t->cb_status == ST_OK) t->cb_status = err_status();
            return;
        }
        if (done) b->t_done = now_s();
    }
}

static void progress_hook(void *arg) { buckets_poll((trainer *)arg); }

static void on_grads_ready(void *arg, size_t ready) {
    trainer *t = arg;
    if (t->cb_status != ST_OK) return;
    while (t->next_bucket < t->n_buckets && t->buckets[t->next_bucket].end <= ready) {
        int st = bucket_launch(t, t->next_bucket++);
        if (st != ST_OK) {
            t->cb_status = st;
            return;
        }
    }
    // MPI reduces on the host and advances only when tested. NCCL must not be tested here: its test joins the
    // compute stream to the all-reduce, which would hold the rest of backward behind it (no overlap).
    if (t->host_comm) buckets_poll(t);
}

// Launch what is left, then wait for every bucket (comm=nccl: make the compute stream wait).
static int buckets_finish(trainer *t) {
    while (t->next_bucket < t->n_buckets) TRY(bucket_launch(t, t->next_bucket++));
    for (int i = 0; i < t->n_buckets; i++) {
        bucket *b = &t->buckets[i];
        TRY(comm_wait(t->c, b->req));
        if (b->t_done == 0) b->t_done = now_s();
        b->req = -1;
    }
    t->next_bucket = 0;
    return ST_OK;
}

// Buckets close at layer boundaries, as PyTorch DDP never splits a parameter: a bucket is ready as soon as
// backward has finished its last layer, so a slice of the cap that cut a layer in two would leave the rest of that
// layer waiting for the next boundary -- for the first layers, the end of backward. Layers (in the buffer's
// reverse order) are gathered into a bucket while it stays within bucket_kb; a layer larger than the cap is split
// into equal parts no larger than it, all ready together.
static int buckets_create(trainer *t) {
    size_t per = (size_t)t->cfg->bucket_kb * 1024 / sizeof(float);
    if (per == 0) per = 1;
    // Each layer's span [begin, end) in the flat buffer, in buffer order (the last layer's first).
    size_t span_b[CFG_MAX_LAYERS], span_e[CFG_MAX_LAYERS];
    int n_spans = 0;
    for (int l = t->m.n_layers - 1; l >= 0; l--) {
        const model_layer *ly = &t->m.layers[l];
        if (ly->n_w + ly->n_b == 0) continue;
        size_t b = ly->w_off < ly->b_off ? ly->w_off : ly->b_off;
        size_t e = ly->w_off + ly->n_w > ly->b_off + ly->n_b ? ly->w_off + ly->n_w : ly->b_off + ly->n_b;
        span_b[n_spans] = b, span_e[n_spans] = e, n_spans++;
    }
    // Two passes over the same rule: count, then fill.
    for (int pass = 0; pass < 2; pass++) {
        int n = 0;
        size_t open = 0;  // start of the bucket being filled (== the next span's begin when empty)
        for (int i = 0; i < n_spans; i++) {
            size_t b = span_b[i], e = span_e[i], size = e - b;
            if (open < b && (size > per || e - open > per)) {  // close what is open before this layer
                if (pass) t->buckets[n].begin = open, t->buckets[n].end = b;
                n++, open = b;
            }
            if (size > per) {
                size_t parts = (size + per - 1) / per;
                for (size_t k = 0; k < parts; k++) {
                    if (pass) t->buckets[n].begin = b + size * k / parts, t->buckets[n].end = b + size * (k + 1) / parts;
                    n++;
                }
                open = e;
            }
        }
        if (open < t->m.n_params) {
            if (pass) t->buckets[n].begin = open, t->buckets[n].end = t->m.n_params;
            n++;
        }
        if (!pass) {
            if (n > COMM_MAX_REQS)
                return ERR(ST_INPUT, "%s: [parallel] bucket_kb=%d gives %d buckets for %zu parameters (at most %d)",
                           t->cfg->path, t->cfg->bucket_kb, n, t->m.n_params, COMM_MAX_REQS);
            t->n_buckets = n;
            t->buckets = calloc((size_t)n, sizeof *t->buckets);
            TRY_ALLOC(t->buckets);
        }
    }
    for (int i = 0; i < t->n_buckets; i++) t->buckets[i].req = -1;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Set-up

// [data] augmentation as gather parameters in backend memory: normalisation for evaluation (and predict), crop,
// flip and normalisation for training batches. Left NULL when off, so such runs gather exactly as before.
static int augment_setup(trainer *t, int training) {
    const backend_ops *o = t->be.ops;
    gather_aug eval;
    int active = 0;
    TRY(augment_params(t->cfg, 0, &eval, &active));
    if (active) {
        TRY(o->alloc(t->be.ctx, (void **)&t->d_aug_eval, sizeof eval));
        TRY(o->upload(t->be.ctx, t->d_aug_eval, &eval, sizeof eval));
    }
    if (!training) return ST_OK;
    TRY(augment_params(t->cfg, 1, &t->h_aug_train, &active));
    if (active) {
        TRY(o->alloc(t->be.ctx, (void **)&t->d_aug_train, sizeof t->h_aug_train));
        TRY(o->upload(t->be.ctx, t->d_aug_train, &t->h_aug_train, sizeof t->h_aug_train));
    }
    return ST_OK;
}

// The training draws depend on the epoch: written before its first step, outside any capture, where the
// gather (also a replayed graph's) reads it.
static int augment_epoch(trainer *t) {
    if (!t->d_aug_train) return ST_OK;
    t->h_aug_train.epoch = t->epoch;
    return t->be.ops->upload(t->be.ctx, (char *)t->d_aug_train + offsetof(gather_aug, epoch), &t->h_aug_train.epoch,
                             sizeof t->h_aug_train.epoch);
}

// The test set (or --predict's images) into backend memory, with the identity index evaluation gathers by.
static int test_upload(trainer *t) {
    const backend_ops *o = t->be.ops;
    void *ctx = t->be.ctx;
    t->sample_elems = t->cfg->channels * t->cfg->height * t->cfg->width;
    size_t ex = (size_t)t->test.n * t->sample_elems;
    TRY(o->alloc(ctx, (void **)&t->d_test_x, ex ? ex : 1));
    TRY(o->alloc(ctx, (void **)&t->d_test_y, t->test.n ? (size_t)t->test.n : 1));
    if (t->test.n) {
        TRY(o->upload(ctx, t->d_test_x, t->test.images, ex));
        TRY(o->upload(ctx, t->d_test_y, t->test.labels, (size_t)t->test.n));
    }
    TRY(o->alloc(ctx, (void **)&t->d_test_index, (size_t)(t->test.n ? t->test.n : 1) * sizeof(int32_t)));
    int most = t->train.n > t->test.n ? t->train.n : t->test.n;
    t->h_perm = malloc((size_t)(most ? most : 1) * sizeof(int32_t));
    TRY_ALLOC(t->h_perm);
    for (int i = 0; i < t->test.n; i++) t->h_perm[i] = i;
    if (t->test.n) TRY(o->upload(ctx, t->d_test_index, t->h_perm, (size_t)t->test.n * sizeof(int32_t)));
    return ST_OK;
}

static int data_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    if (cfg->data_format == DATA_CIFAR10) {
        char paths[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32];
        config_data_paths(cfg, paths);
        const char *train_p[5], *test_p[1] = {paths[5]};
        for (int i = 0; i < 5; i++) train_p[i] = paths[i];
        TRY(data_load_cifar10(train_p, 5, cfg->train_limit, &t->train));
        TRY(data_load_cifar10(test_p, 1, cfg->test_limit, &t->test));
    } else {
        TRY(data_load_idx(cfg->train_images, cfg->train_labels, cfg->classes, cfg->train_limit, &t->train));
        TRY(data_load_idx(cfg->test_images, cfg->test_labels, cfg->classes, cfg->test_limit, &t->test));
    }
    const dataset *sets[2] = {&t->train, &t->test};
    const char *names[2] = {cfg->data_format == DATA_CIFAR10 ? cfg->cifar_dir : cfg->train_images,
                            cfg->data_format == DATA_CIFAR10 ? cfg->cifar_dir : cfg->test_images};
    for (int i = 0; i < 2; i++) {
        const dataset *d = sets[i];
        if (d->c != cfg->channels || d->h != cfg->height || d->w != cfg->width)
            return ERR(ST_INPUT, "%s: samples are %dx%dx%d but %s [net] declares channels=%d height=%d width=%d",
                       names[i], d->c, d->h, d->w, cfg->path, cfg->channels, cfg->height, cfg->width);
    }
    TRY(augment_fill_normalize(&t->cfg_eff, &t->train));  // normalize=1 without mean/std: this set's
    t->sample_elems = cfg->channels * cfg->height * cfg->width;
    t->steps_per_epoch = data_steps_per_epoch(t->train.n, t->B * t->K, t->world);
    if (t->steps_per_epoch < 1)
        return ERR(ST_INPUT, "%s: %d training samples cannot fill one global batch of %d (%d ranks x %d x %d "
                             "micro-batches)",
                   names[0], t->train.n, t->G, t->world, t->B, t->K);

    const backend_ops *o = t->be.ops;
    void *ctx = t->be.ctx;
    size_t tx = (size_t)t->train.n * t->sample_elems;
    TRY(o->alloc(ctx, (void **)&t->d_train_x, tx));
    TRY(o->alloc(ctx, (void **)&t->d_train_y, (size_t)t->train.n));
    TRY(o->upload(ctx, t->d_train_x, t->train.images, tx));
    TRY(o->upload(ctx, t->d_train_y, t->train.labels, (size_t)t->train.n));
    TRY(o->alloc(ctx, (void **)&t->d_perm, (size_t)t->train.n * sizeof(int32_t)));
    TRY(augment_setup(t, 1));
    return test_upload(t);
}

static int batch_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    if (cfg->scaling == SCALING_STRONG) {
        if (cfg->batch % t->world != 0)
            return ERR(ST_INPUT, "%s: [net] batch=%d (global, scaling=strong) is not divisible by %d ranks",
                       cfg->path, cfg->batch, t->world);
        t->G = cfg->batch;
        t->B = cfg->batch / t->world;
    } else {
        t->B = cfg->batch;
        t->G = cfg->batch * t->world;
    }
    // net.accum_steps: K micro-batches of B per rank make one optimizer step over G = B x ranks x K samples.
    t->K = cfg->accum_steps > 1 ? cfg->accum_steps : 1;
    t->G *= t->K;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Checkpoints: model tensors under PyTorch names, optimizer state under "optim.<state>.<tensor>", position
// and provenance in __metadata__.

typedef struct tensor_list {
    ckpt_tensor t[3 * 2 * CFG_MAX_LAYERS];
    char names[3 * 2 * CFG_MAX_LAYERS][96];
    int n;
} tensor_list;

// List every tensor (model, then optimizer state) with host pointers into `host` (the flat buffers
// concatenated: params, then each optimizer state).
static void tensors_list(const trainer *t, const float *host, tensor_list *tl) {
    tl->n = 0;
    int n_states = optim_n_state(&t->opt);
    int nt = model_param_tensor(&t->m, -1, NULL, NULL, NULL, NULL, NULL);
    for (int s = -1; s < n_states; s++) {
        const char *state_name = NULL;
        if (s >= 0) optim_state(&t->opt, s, &state_name);
        const float *base = host + (size_t)(s + 1) * t->m.n_params;
        for (int i = 0; i < nt; i++) {
            const char *lname;
            int is_bias, ndim;
            size_t off;
            int64_t shape[4];
            model_param_tensor(&t->m, i, &lname, &is_bias, &off, &ndim, shape);
            char *nm = tl->names[tl->n];
            if (s < 0) snprintf(nm, 96, "%s.%s", lname, is_bias ? "bias" : "weight");
            else snprintf(nm, 96, "optim.%s.%s.%s", state_name, lname, is_bias ? "bias" : "weight");
            ckpt_tensor *ct = &tl->t[tl->n++];
            ct->name = nm;
            ct->data = base + off;
            ct->ndim = ndim;
            memcpy(ct->shape, shape, sizeof shape);
        }
    }
}

static int host_state(const trainer *t, float **out) {
    int n_states = optim_n_state(&t->opt);
    size_t n = t->m.n_params;
    float *host = malloc((size_t)(n_states + 1) * n * sizeof(float));
    TRY_ALLOC(host);
    int st = t->be.ops->download(t->be.ctx, host, t->m.params, n * sizeof(float));
    for (int s = 0; s < n_states && st == ST_OK; s++) {
        const char *name;
        st = t->be.ops->download(t->be.ctx, host + (size_t)(s + 1) * n, optim_state(&t->opt, s, &name),
                                 n * sizeof(float));
    }
    if (st != ST_OK) {
        free(host);
        return st;
    }
    *out = host;
    return ST_OK;
}

static uint64_t fnv1a(const void *p, size_t n);

// What the run trains on, as one number: the training images and labels after train_limit (so another data
// file, another train_limit or another data format all change it). Resume compares it with the checkpoint's.
static uint64_t dataset_hash(const dataset *d) {
    uint64_t h[2] = {fnv1a(d->images, (size_t)d->n * (size_t)d->c * (size_t)d->h * (size_t)d->w),
                     fnv1a(d->labels, (size_t)d->n)};
    return fnv1a(h, sizeof h);
}

static uint64_t train_data_hash(trainer *t) {
    if (!t->data_hashed) {
        t->data_hash = dataset_hash(&t->train);
        t->data_hashed = 1;
    }
    return t->data_hash;
}

// The effective configuration as --print-config writes it (malloc'd), or NULL when out of memory.
static char *config_text(const net_config *cfg) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    if (!f) return NULL;
    config_print(cfg, f);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

static int checkpoint_save(trainer *t, const char *path, double loss_sum, double correct_sum) {
    if (t->rank != 0) return ST_OK;
    // Test hook (reliability tests): DDP_TEST_SLOW_SAVE=SECONDS holds rank 0 before it writes, as a slow file
    // system would. Inert unless set.
    const char *slow = getenv("DDP_TEST_SLOW_SAVE");
    if (slow) sleep((unsigned)atoi(slow));
    float *host = NULL;
    TRY(host_state(t, &host));
    tensor_list *tl = malloc(sizeof *tl);
    if (!tl) {
        free(host);
        return ERR(ST_RUNTIME, "out of host memory for the checkpoint's tensor list");
    }
    tensors_list(t, host, tl);
    char v[16][64];
    snprintf(v[0], 64, "%d", t->epoch);
    snprintf(v[1], 64, "%d", t->step_in_epoch);
    snprintf(v[2], 64, "%lld", t->global_step);
    snprintf(v[3], 64, "%" PRId64, t->opt.t);
    snprintf(v[4], 64, "%" PRIu64, (uint64_t)t->cfg->seed);
    snprintf(v[5], 64, "%d", t->G);
    snprintf(v[6], 64, "%d", t->world);
    snprintf(v[7], 64, "%.17g", loss_sum);
    snprintf(v[8], 64, "%.17g", correct_sum);
    snprintf(v[9], 64, "%s", optim_name(t->opt.kind));
    snprintf(v[10], 64, "%d", t->train.n);
    snprintf(v[11], 64, "%016" PRIx64, train_data_hash(t));
    snprintf(v[12], 64, "%.17g", t->ckpt_test_loss);
    snprintf(v[13], 64, "%.17g", t->ckpt_test_acc);
    snprintf(v[14], 64, "%.17g", t->best_acc);
    // The effective configuration travels with the weights: --eval, --predict, --init-from and --resume
    // need no --config (config_load_text reads it back).
    char *ini = config_text(t->cfg);
    if (!ini) {
        free(tl);
        free(host);
        return ERR(ST_RUNTIME, "out of host memory for the checkpoint's configuration text");
    }
    ckpt_kv meta[20] = {{"format", CKPT_FORMAT},     {"epoch", v[0]},          {"step_in_epoch", v[1]},
                        {"global_step", v[2]},       {"optim_t", v[3]},        {"seed", v[4]},
                        {"global_batch", v[5]},      {"world_size", v[6]},     {"epoch_loss_sum", v[7]},
                        {"epoch_correct_sum", v[8]}, {"optimizer", v[9]},      {"config", t->cfg->path},
                        {"train_samples", v[10]},    {"train_data_hash", v[11]}, {"config_ini", ini}};
    int n_meta = 15;
    if (t->ckpt_has_test) {  // saved at an epoch's end: what that epoch's evaluation printed, exactly
        meta[n_meta++] = (ckpt_kv){"test_loss", v[12]};
        meta[n_meta++] = (ckpt_kv){"test_acc", v[13]};
    }
    if (t->have_best) meta[n_meta++] = (ckpt_kv){"best_test_acc", v[14]};
    int st = ckpt_save(path, tl->t, tl->n, meta, n_meta);
    free(ini);
    free(tl);
    free(host);
    return st;
}

// Rank 0 writes the checkpoint while the others wait for it at a barrier whose deadline allows for the write
// (parallel.save_timeout_s: a large checkpoint on a slow file system takes longer than any collective may), and
// whose timeout says that it was the save. A write that fails on rank 0 is its local error (the job is aborted).
static int checkpoint_save_agreed(trainer *t, const char *path, double loss_sum, double correct_sum) {
    TRY(checkpoint_save(t, path, loss_sum, correct_sum));
    if (t->world == 1) return ST_OK;
    char what[CFG_PATH_MAX + 160];
    snprintf(what, sizeof what, "waiting for rank 0 to write checkpoint '%s'", path);
    const double timeout_s = fmax(t->cfg->comm_timeout_s, t->cfg->save_timeout_s);
    return comm_barrier_within(t->c, timeout_s, what);
}

// Metadata values are strings; each one resume uses is parsed whole and range-checked, naming the key.
static int meta_int(const ckpt_file *f, const char *key, long long lo, long long hi, long long *out) {
    const char *s = ckpt_meta(f, key);
    char *end = NULL;
    errno = 0;
    long long v = s ? strtoll(s, &end, 10) : 0;
    if (!s || *s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi)
        return ERR(ST_INPUT, "%s: metadata '%s' is %s%s%s, not an integer in [%lld, %lld] (not a ddp-cnn checkpoint?)",
                   ckpt_path(f), key, s ? "'" : "missing", s ? s : "", s ? "'" : "", lo, hi);
    *out = v;
    return ST_OK;
}

static int meta_double(const ckpt_file *f, const char *key, double lo, double hi, double *out) {
    const char *s = ckpt_meta(f, key);
    if (!s || parse_float(s, lo, hi, out) != 0)
        return ERR(ST_INPUT, "%s: metadata '%s' is %s%s%s, not a finite number in [%g, %g]", ckpt_path(f), key,
                   s ? "'" : "missing", s ? s : "", s ? "'" : "", lo, hi);
    return ST_OK;
}

// The checkpoint's own record of what it was trained on must be this run's, or the resumed run would not be
// the uninterrupted one (README: bit-identical).
static int meta_same(const ckpt_file *f, const char *key, const char *have, const char *what) {
    const char *s = ckpt_meta(f, key);
    if (!s) return ERR(ST_INPUT, "%s: metadata '%s' missing (written by an older ddp-cnn?)", ckpt_path(f), key);
    if (strcmp(s, have) != 0)
        return ERR(ST_INPUT, "%s: metadata '%s' is %s, this run has %s (%s; resuming would not continue the same run)",
                   ckpt_path(f), key, s, have, what);
    return ST_OK;
}

typedef struct ckpt_position {
    long long epoch, step, gstep, ot;
    double loss_sum, correct_sum;
} ckpt_position;

static int checkpoint_check_meta(trainer *t, const ckpt_file *f, ckpt_position *p) {
    const char *path = ckpt_path(f);
    const char *fmt = ckpt_meta(f, "format");
    if (!fmt || strcmp(fmt, CKPT_FORMAT) != 0)
        return ERR(ST_INPUT, "%s: not a ddp-cnn training checkpoint (metadata format is '%s', want '%s')", path,
                   fmt ? fmt : "", CKPT_FORMAT);
    long long gb = 0;
    TRY(meta_int(f, "epoch", 0, 1000000, &p->epoch));
    TRY(meta_int(f, "step_in_epoch", 0, INT32_MAX, &p->step));
    TRY(meta_int(f, "global_step", 0, INT64_MAX / 2, &p->gstep));
    TRY(meta_int(f, "optim_t", 0, INT64_MAX / 2, &p->ot));
    TRY(meta_int(f, "global_batch", 1, INT32_MAX, &gb));
    if (gb != t->G)
        return ERR(ST_INPUT, "%s: trained with global batch %lld, this run has %d (the sample order would differ)",
                   path, gb, t->G);
    const char *opt_name = ckpt_meta(f, "optimizer");
    if (!opt_name || strcmp(opt_name, optim_name(t->opt.kind)) != 0)
        return ERR(ST_INPUT, "%s: optimizer '%s' differs from the config's", path, opt_name ? opt_name : "");
    char have[64];
    snprintf(have, sizeof have, "%" PRIu64, (uint64_t)t->cfg->seed);
    TRY(meta_same(f, "seed", have, "net.seed / --seed"));
    snprintf(have, sizeof have, "%d", t->train.n);
    TRY(meta_same(f, "train_samples", have, "training samples after data.train_limit"));
    snprintf(have, sizeof have, "%016" PRIx64, train_data_hash(t));
    TRY(meta_same(f, "train_data_hash", have, "the training data differ: another data file or data.train_limit"));
    if (p->step >= t->steps_per_epoch)
        return ERR(ST_INPUT, "%s: step_in_epoch %lld >= %d steps per epoch of this run", path, p->step,
                   t->steps_per_epoch);
    // Every epoch runs steps_per_epoch steps and the optimizer counts one per step.
    if (p->gstep != p->epoch * t->steps_per_epoch + p->step)
        return ERR(ST_INPUT, "%s: metadata 'global_step' is %lld, but epoch %lld x %d steps + step_in_epoch %lld is %lld",
                   path, p->gstep, p->epoch, t->steps_per_epoch, p->step, p->epoch * t->steps_per_epoch + p->step);
    if (p->ot != p->gstep)
        return ERR(ST_INPUT, "%s: metadata 'optim_t' is %lld, but the optimizer takes one step per global step (%lld)",
                   path, p->ot, p->gstep);
    // The partial epoch's sums: a loss sum is >= 0, a count of correct samples at most the samples seen.
    double seen = (double)p->step * t->G;
    TRY(meta_double(f, "epoch_loss_sum", 0, p->step ? 1e300 : 0, &p->loss_sum));
    TRY(meta_double(f, "epoch_correct_sum", 0, seen, &p->correct_sum));
    if (p->correct_sum != floor(p->correct_sum))
        return ERR(ST_INPUT, "%s: metadata 'epoch_correct_sum' is %s, not a whole count", path,
                   ckpt_meta(f, "epoch_correct_sum"));
    return ST_OK;
}

static int checkpoint_resume(trainer *t, const char *path) {
    ckpt_file *f = NULL;
    TRY(ckpt_load(path, &f));
    float *host = NULL;
    tensor_list *tl = NULL;
    ckpt_position p = {0};
    int st = checkpoint_check_meta(t, f, &p);
    if (st) goto done;
    int n_states = optim_n_state(&t->opt);
    size_t n = t->m.n_params;
    host = malloc((size_t)(n_states + 1) * n * sizeof(float));
    tl = malloc(sizeof *tl);
    if (!host || !tl) {
        st = ERR(ST_RUNTIME, "out of host memory for the checkpoint's %zu parameters and optimizer state", n);
        goto done;
    }
    tensors_list(t, host, tl);
    for (int i = 0; i < tl->n && st == ST_OK; i++) {
        const ckpt_tensor *ct = &tl->t[i];
        size_t count = 1;
        for (int d = 0; d < ct->ndim; d++) count *= (size_t)ct->shape[d];
        st = ckpt_read_tensor(f, ct->name, ct->ndim, ct->shape, (float *)ct->data);
        if (st == ST_OK) st = ckpt_require_finite(f, ct->name, ct->data, count);
    }
    if (st) goto done;
    if ((st = t->be.ops->upload(t->be.ctx, t->m.params, host, n * sizeof(float)))) goto done;
    for (int s = 0; s < n_states && st == ST_OK; s++) {
        const char *name;
        st = t->be.ops->upload(t->be.ctx, optim_state(&t->opt, s, &name), host + (size_t)(s + 1) * n,
                               n * sizeof(float));
    }
    t->epoch = (int)p.epoch;
    t->step_in_epoch = (int)p.step;
    t->global_step = p.gstep;
    t->opt.t = p.ot;
    t->loss_carry = p.loss_sum;
    t->correct_carry = p.correct_sum;
    if (ckpt_meta(f, "best_test_acc")) {  // --keep-best: the best so far travels with the run
        st = meta_double(f, "best_test_acc", 0, 1, &t->best_acc);
        t->have_best = st == ST_OK;
    }
done:
    free(tl);
    free(host);
    ckpt_free(f);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Weights only (--init-from, --eval, --predict): the model's tensors from a checkpoint (ours, or a PyTorch state
// dict saved as safetensors), no optimizer state, position or schedule.

// Model tensor i: its PyTorch name, layer name, shape and offset in the flat parameter buffer.
typedef struct tensor_info {
    char name[96];
    const char *layer;
    int ndim;
    int64_t shape[4];
    size_t off;
} tensor_info;

static void model_tensor(const trainer *t, int i, tensor_info *ti) {
    int is_bias;
    model_param_tensor(&t->m, i, &ti->layer, &is_bias, &ti->off, &ti->ndim, ti->shape);
    snprintf(ti->name, sizeof ti->name, "%s.%s", ti->layer, is_bias ? "bias" : "weight");
}

// Entry [s, s + k) of a comma-separated list is the layer or the tensor.
static int entry_is(const char *s, size_t k, const char *layer, const char *tensor) {
    return (strlen(layer) == k && strncmp(s, layer, k) == 0) || (strlen(tensor) == k && strncmp(s, tensor, k) == 0);
}

static int listed(const char *list, const char *layer, const char *tensor) {
    for (const char *s = list; s && *s;) {
        size_t k = strcspn(s, ",");
        if (entry_is(s, k, layer, tensor)) return 1;
        s += k + (s[k] == ',');
    }
    return 0;
}

// The model's tensor names, for messages ("conv1.weight, conv1.bias, ..."), cut to fit.
static void model_tensor_names(const trainer *t, char *buf, size_t n) {
    int nt = model_param_tensor(&t->m, -1, NULL, NULL, NULL, NULL, NULL);
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < nt && used + 1 < n; i++) {
        tensor_info ti;
        model_tensor(t, i, &ti);
        int w = snprintf(buf + used, n - used, "%s%s", i ? ", " : "", ti.name);
        used = w < 0 ? n : used + (size_t)w;
    }
}

// Every entry of --init-exclude names a layer with tensors, or one tensor, of this model.
static int exclude_check(const trainer *t, const char *list) {
    int nt = model_param_tensor(&t->m, -1, NULL, NULL, NULL, NULL, NULL);
    for (const char *s = list; *s || s == list;) {
        size_t k = strcspn(s, ",");
        int found = 0;
        for (int i = 0; i < nt && !found; i++) {
            tensor_info ti;
            model_tensor(t, i, &ti);
            found = entry_is(s, k, ti.layer, ti.name);
        }
        if (!found) {
            char names[1024];
            model_tensor_names(t, names, sizeof names);
            return ERR(ST_INPUT, "--init-exclude: '%.*s' names no layer or tensor of the model of %s (its tensors: %s)",
                       (int)k, s, t->cfg->path, names);
        }
        if (!s[k]) break;
        s += k + 1;
    }
    return ST_OK;
}

// Every model tensor not excluded must be in the file with the same shape (else ST_INPUT naming the tensor and
// both shapes); a file holding none of them is "nothing matching". Excluded tensors keep their initial values.
static int weights_load(trainer *t, const char *path, const char *exclude, int *loaded, int *total) {
    if (exclude) TRY(exclude_check(t, exclude));
    ckpt_file *f = NULL;
    TRY(ckpt_load(path, &f));
    const size_t n = t->m.n_params;
    const int nt = model_param_tensor(&t->m, -1, NULL, NULL, NULL, NULL, NULL);
    float *host = malloc(n * sizeof(float));
    int st = host ? t->be.ops->download(t->be.ctx, host, t->m.params, n * sizeof(float))
                  : ERR(ST_RUNTIME, "out of host memory for %zu parameters", n);
    int wanted = 0, present = 0;
    for (int i = 0; i < nt; i++) {
        tensor_info ti;
        model_tensor(t, i, &ti);
        if (listed(exclude, ti.layer, ti.name)) continue;
        wanted++;
        present += ckpt_has_tensor(f, ti.name);
    }
    char names[1024];
    if (st == ST_OK && wanted == 0) st = ERR(ST_INPUT, "--init-exclude %s leaves no tensor of the model to load", exclude);
    if (st == ST_OK && present == 0) {
        model_tensor_names(t, names, sizeof names);
        st = ERR(ST_INPUT, "%s: none of the model's tensors (%s) is in this file: nothing matching to load "
                           "(a checkpoint of another model?)", path, names);
    }
    for (int i = 0; i < nt && st == ST_OK; i++) {
        tensor_info ti;
        size_t count = 1;
        model_tensor(t, i, &ti);
        if (listed(exclude, ti.layer, ti.name)) continue;
        for (int d = 0; d < ti.ndim; d++) count *= (size_t)ti.shape[d];
        st = ckpt_read_tensor(f, ti.name, ti.ndim, ti.shape, host + ti.off);
        if (st == ST_OK) st = ckpt_require_finite(f, ti.name, host + ti.off, count);
    }
    if (st == ST_OK) st = t->be.ops->upload(t->be.ctx, t->m.params, host, n * sizeof(float));
    free(host);
    ckpt_free(f);
    *loaded = wanted, *total = nt;
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Replica consistency: every rank hashes its parameters; all hashes must agree.

static uint64_t fnv1a(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

// Every rank must train on the same data: the loaded sets' shapes and a fingerprint of their bytes (the same
// paths may hold other files on other hosts). Compared like the configuration (comm_agree_text).
static int data_agree(trainer *t) {
    const dataset *tr = &t->train, *te = &t->test;
    char text[256];
    snprintf(text, sizeof text, "train=%d samples of %dx%dx%d, hash %016" PRIx64 "\ntest=%d samples, hash %016" PRIx64 "\n",
             tr->n, tr->c, tr->h, tr->w, train_data_hash(t), te->n, dataset_hash(te));
    return comm_agree_text(t->c, text, "the data");
}

static int replicas_check(trainer *t) {
    size_t n = t->m.n_params;
    float *host = malloc(n * sizeof(float));
    TRY_ALLOC(host);
    int st = t->be.ops->download(t->be.ctx, host, t->m.params, n * sizeof(float));
    // Test hook (reliability tests): flip one parameter on one rank to prove the check catches it.
    const char *corrupt = getenv("DDP_TEST_CORRUPT_RANK");
    if (corrupt && atoi(corrupt) == t->rank && t->world > 1) host[0] += 1.0f;
    uint64_t h = fnv1a(host, n * sizeof(float));
    free(host);
    TRY(st);
    uint64_t *all = malloc((size_t)t->world * sizeof *all);
    TRY_ALLOC(all);
    st = comm_allgather_u64(t->c, h, all);
    // Every rank sees the same hashes, so a mismatch is collective; a timeout of the gather is not.
    for (int r = 1; st == ST_OK && r < t->world; r++)
        if (all[r] != all[0]) {
            st = ERR(ST_COMM, "replica mismatch after epoch %d: parameters of rank %d (hash %016" PRIx64
                              ") differ from rank 0 (hash %016" PRIx64 ")",
                     t->epoch + 1, r, all[r], all[0]);
            err_mark_collective(0);
        }
    free(all);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// NaN/Inf: name the first layer whose averaged gradients are not finite.

static int drain(trainer *t);

static int divergence_check(trainer *t, int32_t *scratch) {
    TRY(drain(t));  // the reads below block: wait with the watchdog's bound first
    const backend_ops *o = t->be.ops;
    int32_t bad = 0;
    TRY(o->count_nonfinite(t->be.ctx, t->m.n_params, t->m.grads, scratch));
    TRY(o->download(t->be.ctx, &bad, scratch, sizeof bad));
    if (!bad) return ST_OK;
    for (int i = t->m.n_layers - 1; i >= 0; i--) {
        const model_layer *l = &t->m.layers[i];
        if (!l->n_w) continue;
        TRY(o->count_nonfinite(t->be.ctx, l->n_w + l->n_b, t->m.grads + l->w_off, scratch));
        TRY(o->download(t->be.ctx, &bad, scratch, sizeof bad));
        if (bad) err_mark_collective(0);  // the gradients are averaged: every rank sees the same
        if (bad)
            return ERR(ST_DIVERGED, "training diverged at step %lld (epoch %d): %d non-finite gradient values in "
                                    "layer '%s' (lower the learning rate)",
                       t->global_step + 1, t->epoch + 1, bad, l->name);
    }
    return ERR(ST_DIVERGED, "training diverged at step %lld: non-finite gradients", t->global_step + 1);
}

// ---------------------------------------------------------------------------------------------------------
// One step and one epoch

// The learning rate of the step about to be taken (net.schedule; lr_scaling=linear scales its peak).
static double lr_at(const trainer *t) { return lr_schedule_at(&t->sched, t->global_step); }

static int schedule_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    const double peak = cfg->lr * (cfg->lr_scaling == LR_SCALING_LINEAR ? t->world : 1);
    return lr_schedule_init(&t->sched, cfg, peak, t->steps_per_epoch);
}

// net.no_decay: the biases, the named layers (and, by kind, batch norm layers: none yet) keep no weight decay.
static int no_decay_setup(trainer *t) {
    const char *list = t->cfg->no_decay;
    if (!*list || t->cfg->weight_decay <= 0) return ST_OK;
    size_t *begin = calloc((size_t)t->m.n_layers * 2, sizeof *begin), *len = calloc((size_t)t->m.n_layers * 2, sizeof *len);
    if (!begin || !len) {
        free(begin), free(len);
        return ERR(ST_RUNTIME, "out of host memory");
    }
    int n = 0;
    for (int i = 0; i < t->m.n_layers; i++) {
        const model_layer *l = &t->m.layers[i];
        int whole = 0, bias = 0;
        for (const char *s = list; *s;) {
            size_t k = strcspn(s, ",");
            if (k == 4 && strncmp(s, "bias", 4) == 0) bias = 1;
            else if (strlen(l->name) == k && strncmp(l->name, s, k) == 0) whole = 1;
            s += k + (s[k] == ',');
        }
        if (whole && l->n_w) begin[n] = l->w_off, len[n++] = l->n_w;
        if ((whole || bias) && l->n_b) begin[n] = l->b_off, len[n++] = l->n_b;
    }
    int st = optim_no_decay(&t->opt, begin, len, n);
    free(begin), free(len);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Timing: marks in stream order, read back on timed steps

static int mark(trainer *t, int k) { return t->marks_on ? t->be.ops->mark_record(t->be.ctx, t->mk[k]) : ST_OK; }

// Wait until the work before mark mk has finished, bounded by comm_timeout_s: on a GPU a step that never ends
// is an all-reduce waiting for a peer that stopped (the host-side watchdog cannot see into the stream).
static int mark_wait(trainer *t, void *mk) {
    const backend_ops *o = t->be.ops;
    int done = 0;
    // A peer that died under a replayed graph shows up first as NCCL's asynchronous error.
    if (t->use_comm) TRY(comm_check(t->c));
    TRY(o->mark_query(t->be.ctx, mk, &done));
    double t0 = now_s();
    while (!done) {
        double waited = now_s() - t0;
        if (t->use_comm) TRY(comm_check(t->c));
        if (waited > t->cfg->comm_timeout_s)
            return ERR(ST_COMM, "rank %d (%s): step %lld: the GPU has not finished the step after %.0f s "
                                "(comm_timeout_s): an all-reduce waiting for a peer that stopped?",
                       t->rank, g_host, t->global_step + 1, waited);
        if (waited < 0.005) {
            sched_yield();  // a step is 0.1-10 ms: spin first, the GPU idles while we sleep
        } else {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        TRY(o->mark_query(t->be.ctx, mk, &done));
    }
    return ST_OK;
}

// Everything issued so far has finished (bounded, as mark_wait), so a blocking read that follows returns at once.
static int drain(trainer *t) {
    TRY(t->be.ops->mark_record(t->be.ctx, t->mk_sync));
    return mark_wait(t, t->mk_sync);
}

// The device marks of bucket i's last all-reduce: those captured into the graph when the step was replayed,
// else those of the eager launch (NULL, NULL for comm=mpi: host clock).
static void bucket_marks(const bucket *b, int replayed, void **m0, void **m1) {
    *m0 = replayed ? b->g_start : b->m_start;
    *m1 = replayed ? b->g_end : b->m_end;
}

// A mark's time on the trace's clock (now_s() at trace set-up plus the device time since).
static int mark_abs(trainer *t, void *mk, double *out) {
    double dt = 0;
    TRY(t->be.ops->mark_elapsed(t->be.ctx, t->mk_origin, mk, &dt));
    *out = t->origin_s + dt;
    return ST_OK;
}

// --trace: the step's phases and layers on the main lane, each bucket's all-reduce on its own lane -- all
// from marks, so on a GPU they are device time (the comm stream's own events for comm=nccl).
static int step_trace(trainer *t, int replayed) {
    trace *tr = t->tr;
    double ts[MK_N];
    for (int k = 0; k < MK_N; k++) TRY(mark_abs(t, t->mk[k], &ts[k]));
    trace_span(tr, TRACE_TID_MAIN, "step", "step", ts[MK_START], ts[MK_END], -1, 0);
    trace_span(tr, TRACE_TID_MAIN, "data", "data", ts[MK_START], ts[MK_DATA], -1, 0);
    trace_span(tr, TRACE_TID_MAIN, "forward", "forward", ts[MK_DATA], ts[MK_FWD], -1, 0);
    trace_span(tr, TRACE_TID_MAIN, "backward", "backward", ts[MK_FWD], ts[MK_BWD], -1, 0);
    if (t->use_comm) trace_span(tr, TRACE_TID_MAIN, "wait", "allreduce wait", ts[MK_BWD], ts[MK_WAIT], -1, 0);
    trace_span(tr, TRACE_TID_MAIN, "optimizer", "optimizer", ts[MK_WAIT], ts[MK_END], -1, 0);
    for (int i = 0; i + 1 < t->n_lm; i += 2) {
        const layer_mark *a = &t->lm[i];
        double t0, t1;
        TRY(mark_abs(t, a->mk, &t0));
        TRY(mark_abs(t, t->lm[i + 1].mk, &t1));
        const char *phase = a->backward ? "backward" : "forward";
        char name[64];
        snprintf(name, sizeof name, "%s %s", phase, t->m.layers[a->layer].name);
        trace_span(tr, TRACE_TID_MAIN, phase, name, t0, t1, a->layer, 0);
    }
    for (int i = 0; t->use_comm && i < t->n_buckets; i++) {
        const bucket *b = &t->buckets[i];
        void *m0, *m1;
        bucket_marks(b, replayed, &m0, &m1);
        double t0 = b->t_launch, t1 = b->t_done;
        if (m0) TRY(mark_abs(t, m0, &t0));
        if (m1) TRY(mark_abs(t, m1, &t1));
        char name[48];
        snprintf(name, sizeof name, "allreduce bucket %d", i);
        trace_span(tr, TRACE_TID_BUCKET0 + i, "comm", name, t0, t1, i, (long long)((b->end - b->begin) * sizeof(float)));
    }
    return ST_OK;
}

// After a timed step: wait for it, add its phases to the epoch's means (and its spans to the trace).
static int step_timing(trainer *t, int replayed) {
    const backend_ops *o = t->be.ops;
    void *ctx = t->be.ctx;
    TRY(mark_wait(t, t->mk[MK_END]));
    double ph[MK_N - 1], comm_s = 0;
    for (int k = 0; k + 1 < MK_N; k++) TRY(o->mark_elapsed(ctx, t->mk[k], t->mk[k + 1], &ph[k]));
    for (int i = 0; t->use_comm && i < t->n_buckets; i++) {
        const bucket *b = &t->buckets[i];
        void *m0, *m1;
        bucket_marks(b, replayed, &m0, &m1);
        double dt = b->t_done - b->t_launch;
        if (m0 && m1) TRY(o->mark_elapsed(ctx, m0, m1, &dt));
        comm_s += dt;
    }
    step_times *a = &t->acc;
    a->data_s += ph[MK_START];
    a->forward_s += ph[MK_DATA];
    a->backward_s += ph[MK_FWD];
    a->exposed_comm_s += t->use_comm ? ph[MK_BWD] : 0;
    a->comm_s += comm_s;
    a->optimizer_s += ph[MK_WAIT];
    a->step_s += ph[MK_START] + ph[MK_DATA] + ph[MK_FWD] + ph[MK_BWD] + ph[MK_WAIT];
    if (t->d_sumsq) {  // the step has finished (mark_wait above): this read does not wait
        double ss = 0;
        TRY(o->download(ctx, &ss, t->d_sumsq, sizeof ss));
        t->grad_norm_sum += sqrt(ss);
    }
    t->timed++;
    if (t->tr) TRY(step_trace(t, replayed));
    return ST_OK;
}

// --trace: model.c calls this around each layer of a training step.
static int layer_hook(void *arg, int backward, int layer, int begin) {
    trainer *t = arg;
    if (!t->in_step || t->n_lm >= t->cap_lm) return ST_OK;  // evaluation: its own single span
    layer_mark *x = &t->lm[t->n_lm++];
    (void)begin;  // begin and end alternate
    x->backward = backward, x->layer = layer;
    return t->be.ops->mark_record(t->be.ctx, x->mk);
}

// Opened on every rank after set-up; the origin is taken right after a barrier so that the ranks' timelines
// line up when merged, and a mark recorded then ties the device clock to it.
static int trace_setup(trainer *t) {
    const backend_ops *o = t->be.ops;
    trace_name_lane(t->tr, TRACE_TID_MAIN, "compute");
    for (int i = 0; t->use_comm && i < t->n_buckets; i++) {
        char name[48];
        snprintf(name, sizeof name, "allreduce bucket %d", i);
        trace_name_lane(t->tr, TRACE_TID_BUCKET0 + i, name);
    }
    t->cap_lm = 4 * t->m.n_layers;  // forward and backward, begin and end
    t->lm = calloc((size_t)t->cap_lm, sizeof *t->lm);
    TRY_ALLOC(t->lm);
    for (int i = 0; i < t->cap_lm; i++) TRY(o->mark_create(t->be.ctx, &t->lm[i].mk));
    TRY(o->mark_create(t->be.ctx, &t->mk_origin));
    t->m.layer_hook = layer_hook;
    t->m.layer_hook_arg = t;
    TRY(drain(t));  // an idle stream: the origin mark is recorded at (about) origin_s
    if (t->world > 1) TRY(comm_barrier(t->c));
    t->origin_s = now_s();
    trace_set_origin(t->tr, t->origin_s);
    return o->mark_record(t->be.ctx, t->mk_origin);
}

// ---------------------------------------------------------------------------------------------------------
// One step

// Test hook (reliability tests): DDP_TEST_STALL=RANK:WHERE:SECONDS makes rank RANK sleep, as a stuck peer would,
// so the others' watchdog must fire. WHERE is a global step (1-based: before that step), `replicas` (before the
// end-of-epoch replica check's gather) or `end` (after training, before the job's shut-down). Inert unless set.
static void test_stall_at(const trainer *t, const char *where) {
    const char *s = getenv("DDP_TEST_STALL");
    int rank = -1, secs = 0;
    char at[32] = "";
    if (!s || sscanf(s, "%d:%31[^:]:%d", &rank, at, &secs) != 3 || rank != t->rank) return;
    char step[32];
    snprintf(step, sizeof step, "%lld", t->global_step + 1);
    if (strcmp(at, where ? where : step) == 0) sleep((unsigned)secs);
}
static void test_stall_maybe(const trainer *t) { test_stall_at(t, NULL); }

// The stream work of one training step, in order -- exactly what a CUDA graph of the step contains. The batch
// indices (t->d_batch_idx) and the optimizer's hyper-parameters are written before, by the host.
static int step_issue(trainer *t, int32_t *scratch, int check_finite) {
    const backend_ops *o = t->be.ops;
    void *ctx = t->be.ctx;
    TRY(mark(t, MK_START));
    // net.accum_steps: the first K - 1 micro-batches only sum their gradients (no all-reduce: DDP's no_sync);
    // their time counts as the step's data phase.
    const size_t np = t->m.n_params;
    for (int j = 0; j + 1 < t->K; j++) {
        TRY(o->gather(ctx, t->d_train_x, t->d_train_y, t->d_batch_idx + (size_t)j * t->B, t->B, t->sample_elems,
                      t->d_aug_train, t->m.x, t->m.labels));
        TRY(model_forward(&t->m, t->B, 1));
        TRY(model_backward(&t->m, t->B, NULL, t));
        if (j == 0) TRY(o->copy(ctx, t->acc_grads, t->m.grads, np * sizeof(float)));
        else TRY(o->add(ctx, np, t->m.grads, t->acc_grads));
    }
    const int32_t *last_idx = t->d_batch_idx + (size_t)(t->K - 1) * t->B;
    TRY(o->gather(ctx, t->d_train_x, t->d_train_y, last_idx, t->B, t->sample_elems, t->d_aug_train, t->m.x,
                  t->m.labels));
    TRY(mark(t, MK_DATA));
    TRY(model_forward(&t->m, t->B, 1));
    TRY(mark(t, MK_FWD));
    t->cb_status = ST_OK;
    t->next_bucket = 0;
    TRY(model_backward(&t->m, t->B, t->use_comm && t->overlap ? on_grads_ready : NULL, t));
    TRY(t->cb_status);
    if (!t->use_comm) TRY(grads_finalize(t, 0, np));  // (with comm each bucket is finalised at its launch)
    TRY(mark(t, MK_BWD));
    if (t->use_comm) TRY(buckets_finish(t));
    TRY(mark(t, MK_WAIT));
    // After the all-reduce: every rank holds the same averaged gradients, so every rank clips alike.
    if (t->cfg->clip_grad_norm > 0)
        TRY(t->be.ops->clip_grad_norm(t->be.ctx, t->m.n_params, t->m.grads, (float)t->cfg->clip_grad_norm, t->d_sumsq));
    if (check_finite) TRY(divergence_check(t, scratch));
    TRY(optim_apply(&t->opt, t->m.params, t->m.grads));
    return mark(t, MK_END);
}

// Capture one step into the backend's graph. Nothing runs during a capture: the caller replays it next.
static int graph_capture(trainer *t) {
    const backend_ops *o = t->be.ops;
    TRY(o->capture_begin(t->be.ctx));
    t->marks_on = 1;  // in the graph the marks are device-side nodes: free, recorded at every replay
    int st = step_issue(t, NULL, 0);
    int end = o->capture_end(t->be.ctx);  // close the capture also after a failure (the first error is kept)
    TRY(st);
    TRY(end);
    for (int i = 0; t->use_comm && i < t->n_buckets; i++) {
        t->buckets[i].g_start = t->buckets[i].m_start;
        t->buckets[i].g_end = t->buckets[i].m_end;
    }
    t->graph_ready = 1;
    return ST_OK;
}

// A capture that failed (an op the driver would not capture, say) captured nothing and ran nothing: forget its
// all-reduce launches and go on op by op. A communication failure is not a capture problem: that one stays.
static int graph_fall_back(trainer *t, int st) {
    if (st == ST_COMM) return st;
    LOG0("note: CUDA graph off: capturing the training step failed (%s); continuing op by op\n", err_msg());
    for (int i = 0; t->use_comm && i < t->n_buckets; i++) {
        bucket *b = &t->buckets[i];
        if (b->req >= 0) TRY(comm_discard(t->c, b->req));
        b->req = -1;
    }
    t->next_bucket = 0;
    t->use_graph = 0;
    t->graph_fell_back = 1;
    return ST_OK;
}

// Host work (the batch's indices, the optimizer's hyper-parameters), then the step: replayed from the graph
// when there is one, issued op by op otherwise (the first step, which warms up the libraries before a
// capture, and the steps that check gradients for NaN/Inf, which read them back midway).
static int train_step(trainer *t, int32_t *scratch, int check_finite) {
    const backend_ops *o = t->be.ops;
    void *ctx = t->be.ctx;
    test_stall_maybe(t);
    if (t->tr) trace_set_step(t->tr, t->global_step);
    void **ahead = &t->mk_ahead[t->global_step % (AHEAD + 1)];  // recorded AHEAD + 1 steps ago, if at all
    if (t->global_step >= AHEAD + 1) TRY(mark_wait(t, *ahead));
    // Micro-batch j of step s is the global batch s K + j of the epoch's order: K = 1 is the plain sharding, and
    // K micro-batches of B cover exactly the samples of one batch of K B.
    for (int j = 0; j < t->K; j++) {
        const int32_t *idx = data_shard_batch(t->d_perm, t->step_in_epoch * t->K + j, t->B, t->world, t->rank);
        TRY(o->copy(ctx, t->d_batch_idx + (size_t)j * t->B, idx, (size_t)t->B * sizeof(int32_t)));
    }
    TRY(optim_prepare(&t->opt, lr_at(t)));
    const int timed = t->tr != NULL || t->global_step % t->timing_every == 0;
    int replay = t->use_graph && !check_finite && t->eager_steps > 0;
    t->n_lm = 0;
    t->in_step = 1;
    if (replay && !t->graph_ready) {
        const int st = graph_capture(t);
        if (st != ST_OK) {
            TRY(graph_fall_back(t, st));
            replay = 0;
        }
    }
    if (replay) {
        TRY(o->replay(ctx));
    } else {
        t->marks_on = timed;
        TRY(step_issue(t, scratch, check_finite));
        t->eager_steps++;
    }
    t->in_step = 0;
    TRY(o->mark_record(ctx, *ahead));
    if (timed) TRY(step_timing(t, replay));
    return ST_OK;
}

// The logits of the last forward's n samples on the host (the [dense] before [softmax] holds them).
static int logits_download(trainer *t, int n) {
    const model_layer *last = &t->m.layers[t->m.n_layers - 2];
    return t->be.ops->download(t->be.ctx, t->h_logits, last->y, (size_t)n * t->m.classes * sizeof(float));
}

// The class a row of logits predicts: the first largest, as softmax_xent counts a correct prediction (CPU and
// CUDA alike), so the confusion matrix's diagonal is the accuracy's count.
static int logits_argmax(const float *z, int classes) {
    int best = 0;
    for (int k = 1; k < classes; k++)
        if (z[k] > z[best]) best = k;
    return best;
}

// --eval: test samples [first, first + n) just went forward; count them as (true class, predicted class).
static int confusion_add(trainer *t, int first, int n) {
    TRY(logits_download(t, n));
    const int k = t->m.classes;
    for (int j = 0; j < n; j++) {
        int truth = t->test.labels[first + j], pred = logits_argmax(t->h_logits + (size_t)j * k, k);
        t->confusion[(size_t)truth * k + pred] += 1;
    }
    return ST_OK;
}

// The test loss is a double sum in a fixed order: per sample within a batch (softmax_xent), batch after batch
// over this rank's range, then over ranks (one all-reduce). So the same checkpoint, eval_batch, world size and
// backend (CPU: also threads, which fix the GEMMs' order) give the same bits: --eval equals the epoch's figures.
static int evaluate(trainer *t, double *loss, double *acc) {
    const backend_ops *o = t->be.ops;
    void *ctx = t->be.ctx;
    TRY(o->zero(ctx, t->m.loss_acc, sizeof(double)));
    TRY(o->zero(ctx, t->m.correct_acc, sizeof(int32_t)));
    int begin, end;
    data_eval_range(t->test.n, t->world, t->rank, &begin, &end);
    int eb = t->cfg->eval_batch < t->m.max_batch ? t->cfg->eval_batch : t->m.max_batch;
    for (int i = begin; i < end; i += eb) {
        int n = end - i < eb ? end - i : eb;
        TRY(o->gather(ctx, t->d_test_x, t->d_test_y, t->d_test_index + i, n, t->sample_elems, t->d_aug_eval, t->m.x,
                      t->m.labels));
        TRY(model_forward(&t->m, n, 0));
        if (t->confusion) TRY(confusion_add(t, i, n));
    }
    // Each rank's counts, summed: whole numbers, exact in a double.
    if (t->confusion) TRY(comm_allreduce_sum_f64(t->c, t->confusion, t->m.classes * t->m.classes));
    double sums[2];
    int32_t correct = 0;
    TRY(o->download(ctx, &sums[0], t->m.loss_acc, sizeof(double)));
    TRY(o->download(ctx, &correct, t->m.correct_acc, sizeof(int32_t)));
    sums[1] = correct;
    TRY(comm_allreduce_sum_f64(t->c, sums, 2));
    *loss = t->test.n ? sums[0] / t->test.n : 0;
    *acc = t->test.n ? sums[1] / t->test.n : 0;
    return ST_OK;
}

// Time left in the run at the pace of this process's steps so far ("3m12s").
static void eta_text(const trainer *t, long long steps_here, double secs_here, char *out, size_t n) {
    long long total = (long long)t->cfg->epochs * t->steps_per_epoch;
    if (t->o->max_steps > 0 && t->o->max_steps < total) total = t->o->max_steps;
    const long long left = total - t->global_step;
    if (steps_here <= 0 || secs_here <= 0 || left < 0) {
        snprintf(out, n, "?");
        return;
    }
    const long s = (long)((double)left * secs_here / (double)steps_here + 0.5);
    if (s >= 3600) snprintf(out, n, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(out, n, "%ldm%02lds", s / 60, s % 60);
    else snprintf(out, n, "%lds", s);
}

// On a terminal: a bar redrawn in place. In a log (no terminal: a Slurm job's output): one line every
// --log-every seconds. Both with the epoch's mean loss so far, images/s and the ETA of the whole run.
// step: the epoch's step; run: steps run in this epoch by this process (for images/s), in elapsed seconds.
static void progress_show(const trainer *t, int bar, int step, double loss_sum, int run, double elapsed,
                          long long steps_here, double secs_here) {
    const double ips = elapsed > 0 ? (double)run * t->G / elapsed : 0;
    const double loss = step ? loss_sum / ((double)step * t->B * t->K) : 0.0;
    char eta[32];
    eta_text(t, steps_here, secs_here, eta, sizeof eta);
    if (bar) {
        int width = 30, done = (int)((double)step / t->steps_per_epoch * width);
        char b[64];
        for (int i = 0; i < width; i++) b[i] = i < done ? '#' : '.';
        b[width] = '\0';
        printf("\r  epoch %d/%d [%s] %d/%d loss %.4f %.0f img/s ETA %s ", t->epoch + 1, t->cfg->epochs, b, step,
               t->steps_per_epoch, loss, ips, eta);
    } else {
        printf("  step %lld (epoch %d/%d, %d/%d) loss %.4f %.0f img/s ETA %s\n", t->global_step, t->epoch + 1,
               t->cfg->epochs, step, t->steps_per_epoch, loss, ips, eta);
    }
    fflush(stdout);
}

// Sums over ranks of the epoch's training loss and correct counts (each rank holds its own shard's).
static int epoch_train_sums(trainer *t, double *loss_sum, double *correct_sum) {
    double s[2];
    int32_t correct = 0;
    TRY(t->be.ops->download(t->be.ctx, &s[0], t->m.loss_acc, sizeof(double)));
    TRY(t->be.ops->download(t->be.ctx, &correct, t->m.correct_acc, sizeof(int32_t)));
    s[1] = correct;
    TRY(comm_allreduce_sum_f64(t->c, s, 2));
    *loss_sum = s[0] + t->loss_carry;
    *correct_sum = s[1] + t->correct_carry;
    return ST_OK;
}

// --save-every and --keep-best keep copies beside the --save file: its path without a trailing ".safetensors"
// (the stem), then the suffix and ".safetensors".
static int save_copy_path(const char *save, const char *suffix, char *out, size_t n) {
    const char *ext = ".safetensors";
    size_t len = strlen(save), el = strlen(ext);
    size_t stem = len > el && strcmp(save + len - el, ext) == 0 ? len - el : len;
    int w = snprintf(out, n, "%.*s%s%s", (int)stem, save, suffix, ext);
    if (w < 0 || (size_t)w >= n) return ERR(ST_INPUT, "--save %s: path too long for its copies", save);
    return ST_OK;
}

// At an epoch's end (t->epoch already counts it): the --save checkpoint with the epoch's test figures, then
// the copies --save-every and --keep-best ask for. Each is a whole checkpoint, written atomically.
static int checkpoint_save_epoch(trainer *t, double test_loss, double test_acc) {
    const train_opts *o = t->o;
    t->ckpt_test_loss = test_loss, t->ckpt_test_acc = test_acc, t->ckpt_has_test = 1;
    const int best = o->keep_best && (!t->have_best || test_acc > t->best_acc);
    if (best) t->best_acc = test_acc, t->have_best = 1;
    char path[CFG_PATH_MAX + 64], suffix[32];
    int st = checkpoint_save_agreed(t, o->save_path, 0, 0);
    if (st == ST_OK && o->save_every > 0 && t->epoch % o->save_every == 0) {
        snprintf(suffix, sizeof suffix, "-e%d", t->epoch);
        st = save_copy_path(o->save_path, suffix, path, sizeof path);
        if (st == ST_OK) st = checkpoint_save_agreed(t, path, 0, 0);
    }
    if (st == ST_OK && best) {
        st = save_copy_path(o->save_path, "-best", path, sizeof path);
        if (st == ST_OK) st = checkpoint_save_agreed(t, path, 0, 0);
        if (st == ST_OK) LOG0("  best test accuracy so far (%.4f): kept as %s\n", test_acc, path);
    }
    t->ckpt_has_test = 0;
    return st;
}

// A failure to agree is a communication error (the watchdog's), not a stop request.
// Ranks agree on a stop only every STOP_CHECK_EVERY global steps: the same steps on every rank (so the
// collective always matches), and no host collective on the hot path of the steps in between.
#define STOP_CHECK_EVERY 8

static int stop_agreed(trainer *t, int *stop) {
    int32_t flag = g_stop_requested ? 1 : 0;
    if (t->world > 1) {
        if (t->global_step % STOP_CHECK_EVERY != 0) {
            *stop = 0;
            return ST_OK;
        }
        TRY(comm_allreduce_max_i32(t->c, &flag, 1));
    }
    *stop = flag;
    return ST_OK;
}

static int run_epochs(trainer *t, const baseline *bl, int metrics, train_result *res) {
    const net_config *cfg = t->cfg;
    const backend_ops *o = t->be.ops;
    void *ctx = t->be.ctx;
    int32_t *scratch = NULL;
    TRY(o->alloc(ctx, (void **)&scratch, sizeof(int32_t)));
    int st = ST_OK;
    // The divergence check reads gradients back to the host midway through a step: every step on the CPU
    // (free), every 50 on a GPU or with a graph (those steps run op by op, not from the graph).
    int check_every = t->async_backend || t->use_graph ? 50 : 1;
    long long steps_here = 0;  // steps this process has run (the ETA's pace)
    for (; t->epoch < cfg->epochs && st == ST_OK; t->epoch++) {
        data_permutation(cfg->seed, t->epoch, t->train.n, t->h_perm);
        if ((st = o->upload(ctx, t->d_perm, t->h_perm, (size_t)t->train.n * sizeof(int32_t)))) break;
        if ((st = augment_epoch(t))) break;
        if ((st = o->zero(ctx, t->m.loss_acc, sizeof(double))) || (st = o->zero(ctx, t->m.correct_acc, 4))) break;
        memset(&t->acc, 0, sizeof t->acc);
        t->timed = 0;
        t->launches = 0;
        t->grad_norm_sum = 0;
        int first_step = t->step_in_epoch;
        double e0 = now_s(), last_bar = e0;
        int stopped = 0;
        while (t->step_in_epoch < t->steps_per_epoch) {
            if (t->o->max_steps > 0 && t->global_step >= t->o->max_steps) {
                stopped = 1;
                break;
            }
            int stop = 0;
            if ((st = stop_agreed(t, &stop))) break;
            if (stop) {
                stopped = 2;
                break;
            }
            st = train_step(t, scratch, (t->global_step + 1) % check_every == 0);
            if (st) break;
            t->step_in_epoch++;
            t->global_step++;
            steps_here++;
            const double every = t->o->progress ? 0.2 : t->o->log_every_s;
            if (t->rank == 0 && !g_quiet && every > 0 && now_s() - last_bar > every) {
                last_bar = now_s();
                double ls = 0;
                if ((st = drain(t)) || (st = o->download(ctx, &ls, t->m.loss_acc, sizeof ls))) break;
                progress_show(t, t->o->progress, t->step_in_epoch, ls, t->step_in_epoch - first_step, last_bar - e0,
                              steps_here, res->train_s + (last_bar - e0));
            }
        }
        if (st) break;
        // Bounded wait for the GPU: a stalled peer's all-reduce must not hang us (nccl joins its stream into
        // the compute stream, so this covers all the step's work).
        if ((st = drain(t))) break;
        double epoch_s = now_s() - e0;
        if (t->o->progress && t->rank == 0 && !g_quiet) printf("\r%*s\r", 90, "");
        res->train_s += epoch_s;
        double loss_sum, correct_sum;
        if ((st = epoch_train_sums(t, &loss_sum, &correct_sum))) break;
        // Between the sampled gradient checks (GPU, graph), a diverged epoch still ends here. The sums are
        // all-reduced: every rank sees the same.
        if (!isfinite(loss_sum)) {
            st = ERR(ST_DIVERGED, "training diverged in epoch %d (by step %lld): the training loss is not finite "
                                  "(lower the learning rate)", t->epoch + 1, t->global_step);
            err_mark_collective(0);
            break;
        }
        if (stopped) {
            // Mid-epoch: keep the partial sums so a resumed run reports the same epoch figures.
            if (t->o->save_path) st = checkpoint_save_agreed(t, t->o->save_path, loss_sum, correct_sum);
            if (st == ST_OK && stopped == 2) {
                st = ERR(ST_INTERRUPTED, "stopped by signal at step %lld%s", t->global_step,
                         t->o->save_path ? " (checkpoint saved)" : "");
                err_mark_collective(0);
            }
            break;
        }
        int steps_run = t->step_in_epoch - first_step;
        double ev0 = now_s(), test_loss = 0, test_acc = 0;
        if (t->tr) trace_set_step(t->tr, -1);
        if ((st = evaluate(t, &test_loss, &test_acc))) break;
        double eval_s = now_s() - ev0;
        if (t->tr) trace_span(t->tr, TRACE_TID_MAIN, "eval", "eval", ev0, ev0 + eval_s, t->epoch + 1, 0);
        test_stall_at(t, "replicas");
        if ((st = replicas_check(t))) break;
        epoch_metrics em = {0};
        em.epoch = t->epoch + 1;
        em.step = t->global_step;
        double seen = (double)t->steps_per_epoch * t->G;
        em.train_loss = loss_sum / seen;
        em.train_acc = correct_sum / seen;
        em.test_loss = test_loss, em.test_acc = test_acc;
        em.epoch_s = epoch_s, em.eval_s = eval_s;
        em.images_per_s = epoch_s > 0 ? (double)steps_run * t->G / epoch_s : 0;
        em.images_per_s_per_rank = em.images_per_s / t->world;
        if (t->timed) {
            step_times *a = &t->acc;
            double k = 1.0 / t->timed;
            em.t = (step_times){a->data_s * k, a->forward_s * k, a->backward_s * k, a->exposed_comm_s * k,
                                a->comm_s * k, a->optimizer_s * k, a->step_s * k};
        }
        em.lr = lr_schedule_at(&t->sched, t->global_step - 1);  // the epoch's last step
        em.grad_norm = t->d_sumsq && t->timed ? t->grad_norm_sum / t->timed : NAN;
        em.world = t->world, em.batch = t->B, em.global_batch = t->G;
        em.n_buckets = t->use_comm ? t->n_buckets : 0;
        em.bucket_kb = cfg->bucket_kb, em.overlap = t->overlap, em.scaling = cfg->scaling;
        em.backend = o->name, em.comm = comm_backend_name(t->c);
        em.cuda_graph = t->use_graph;
        em.timed_steps = t->timed;
        em.accum_steps = t->K;
        em.allreduces_per_step = steps_run > 0 ? (double)t->launches / steps_run : 0;
        em.scaling_efficiency = scaling_efficiency(&em, bl, &em.efficiency_kind);
        LOG0("epoch %d/%d  loss %.4f acc %.4f | test loss %.4f acc %.4f | %.2f s %.0f img/s\n", em.epoch, cfg->epochs,
             em.train_loss, em.train_acc, em.test_loss, em.test_acc, em.epoch_s, em.images_per_s);
        if (t->o->verbose)
            LOG0("  step %.2f ms: fwd %.2f bwd %.2f comm %.2f exposed %.2f opt %.2f | %.0f img/s per rank | "
                 "efficiency %.3f (%s)\n",
                 em.t.step_s * 1e3, em.t.forward_s * 1e3, em.t.backward_s * 1e3, em.t.comm_s * 1e3,
                 em.t.exposed_comm_s * 1e3, em.t.optimizer_s * 1e3, em.images_per_s_per_rank, em.scaling_efficiency,
                 em.efficiency_kind);
        // Written now (one write per line), so a full disk shows at this epoch, not at the end of the run.
        if (metrics >= 0 && t->rank == 0 && (st = metrics_write_jsonl(metrics, t->o->metrics_path, &em))) break;
        res->epochs_done++;
        res->train_loss = em.train_loss, res->test_loss = test_loss, res->test_acc = test_acc;
        t->step_in_epoch = 0;
        t->loss_carry = t->correct_carry = 0;
        if (t->o->save_path) {
            t->epoch++;  // the checkpoint's position is the start of the next epoch
            st = checkpoint_save_epoch(t, test_loss, test_acc);
            t->epoch--;
        }
    }
    o->free(ctx, scratch);
    res->steps = t->global_step;
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Entry

static void trainer_free(trainer *t) {
    if (t->be.ops) {
        const backend_ops *o = t->be.ops;
        void *ctx = t->be.ctx;
        o->free(ctx, t->d_train_x);
        o->free(ctx, t->d_train_y);
        o->free(ctx, t->d_test_x);
        o->free(ctx, t->d_test_y);
        o->free(ctx, t->d_perm);
        o->free(ctx, t->d_test_index);
        o->free(ctx, t->d_batch_idx);
        o->free(ctx, t->d_sumsq);
        o->free(ctx, t->acc_grads);
        o->free(ctx, t->d_aug_train);
        o->free(ctx, t->d_aug_eval);
        for (int k = 0; k < MK_N; k++) o->mark_destroy(ctx, t->mk[k]);
        o->mark_destroy(ctx, t->mk_sync);
        for (int k = 0; k <= AHEAD; k++) o->mark_destroy(ctx, t->mk_ahead[k]);
        o->mark_destroy(ctx, t->mk_origin);
        for (int i = 0; t->lm && i < t->cap_lm; i++) o->mark_destroy(ctx, t->lm[i].mk);
        optim_destroy(&t->opt);
        model_destroy(&t->m);
        backend_destroy(&t->be);
    }
    free(t->h_perm);
    free(t->confusion);
    free(t->h_logits);
    free(t->buckets);
    free(t->lm);
    data_free(&t->train);
    data_free(&t->test);
}

// Set-up is collective: a failure on any rank (bad file on one node, out of memory) is agreed on, so every
// rank returns an error instead of leaving the others waiting in a collective.
static int agree(trainer *t, int st) { return comm_agree(t->c, st, "set-up"); }

// Evaluation never needs a batch larger than this rank's share of the test set (data_eval_range gives at most
// ceil(n / world) samples), so eval_batch=30000 with 500 test samples allocates for 500.
static int eval_batch_capped(const trainer *t) {
    int shard = (t->test.n + t->world - 1) / t->world;
    int eb = t->cfg->eval_batch < shard ? t->cfg->eval_batch : shard;
    return eb > 0 ? eb : 1;
}

// Outputs never overwrite one of the run's inputs (same device and inode: links and other spellings of a path
// included), and never replace an existing file of another kind. --save onto the --resume file is the normal
// way to continue a run and stays allowed.
static int outputs_check(const trainer *t) {
    const train_opts *o = t->o;
    file_set in = {0};
    char data[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32];
    int n_data = config_data_paths(t->cfg, data);
    file_set_add(&in, t->cfg->path, "config");
    for (int i = 0; i < n_data; i++) file_set_add(&in, data[i], "data file");
    file_set_add(&in, o->resume_path, "--resume checkpoint");
    if (!o->resume_path) file_set_add(&in, o->init_from, "--init-from checkpoint");  // the weights fine-tuned from
    file_set_add(&in, o->baseline_path, "--baseline file");
    if (o->save_path) TRY(output_not_input(o->save_path, "--save", &in, o->resume_path));
    if (o->metrics_path) {
        TRY(output_not_input(o->metrics_path, "--metrics", &in, NULL));
        TRY(output_check_kind(o->metrics_path, "--metrics", metrics_is_jsonl_head, "a JSON Lines metrics file", 1));
    }
    if (o->trace_dir) {
        char path[4096];
        if (trace_file_path(path, sizeof path, o->trace_dir, t->rank) != 0)
            return ERR(ST_INPUT, "--trace %s: path too long", o->trace_dir);
        TRY(output_not_input(path, "--trace", &in, NULL));
    }
    return ST_OK;
}

// The backend with this rank's share of the host's cores (CPU) or its GPU, and the step's timing marks.
static int backend_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    const comm_info *ci = comm_get_info(t->c);
    int threads = cfg->threads;
    if (strcmp(cfg->backend, "cpu") == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        int share = (int)(cores / (ci->local_world > 0 ? ci->local_world : 1));
        if (share < 1) share = 1;
        // mpirun binds each rank to one core by default for small np: more threads than the rank may run on
        // would only take turns there, so cap them and say how to give the rank more cores.
        int allowed = cpus_allowed();
        int want = threads ? threads : share;
        if (allowed < want)
            LOG0("note: each rank may run on %d CPU(s) only (launcher binding), so %d thread(s) per rank instead "
                 "of %d; mpirun --bind-to none (or --map-by slot:PE=%d) lets a rank use %d cores\n",
                 allowed, allowed, want, want, want);
        threads = want < allowed ? want : allowed;
    }
    int device;
    TRY(placement_device(ci, cfg->backend, &device));  // node-local rank -> GPU
    TRY(backend_create(&t->be, cfg->backend, threads, device));
    // Before the model: cuDNN plans fix their math mode and algorithms when prepared. tf32=1 without CUDA is an
    // error; deterministic=1 on the CPU changes nothing (the CPU backend is deterministic already).
    const backend_cuda_options cuda_opt = {.tf32 = cfg->tf32, .deterministic = cfg->deterministic};
    TRY(backend_cuda_set_options(&t->be, &cuda_opt));
    // Test hook (graph tests): emulate CUDA stream capture on the CPU backend (src/backend_record.h);
    // DDP_TEST_CPU_GRAPH=refuse makes every capture fail (the fall-back to op-by-op steps).
    const char *cpu_graph = getenv("DDP_TEST_CPU_GRAPH");
    if (cpu_graph && !t->be.ops->capture_begin) {
        TRY(backend_record_wrap(&t->be));
        if (strcmp(cpu_graph, "refuse") == 0) TRY(backend_record_refuse_captures(&t->be));
    }
    t->async_backend = t->be.ops->stream != NULL;
    t->timing_every = t->async_backend ? TIMING_EVERY_ASYNC : 1;
    for (int k = 0; k < MK_N; k++) TRY(t->be.ops->mark_create(t->be.ctx, &t->mk[k]));
    TRY(t->be.ops->mark_create(t->be.ctx, &t->mk_sync));
    for (int k = 0; k <= AHEAD; k++) TRY(t->be.ops->mark_create(t->be.ctx, &t->mk_ahead[k]));
    return ST_OK;
}

static int setup(trainer *t, baseline *bl) {
    const net_config *cfg = t->cfg;
    TRY(batch_setup(t));
    if (t->o->baseline_path) TRY(baseline_load(t->o->baseline_path, bl));
    TRY(outputs_check(t));
    if (t->o->save_path && t->rank == 0) TRY(ckpt_check_target(t->o->save_path));
    TRY(backend_setup(t));
    TRY(data_setup(t));
    int eval_local = eval_batch_capped(t);
    int max_batch = t->B > eval_local ? t->B : eval_local;
    TRY(model_create(&t->m, &t->be, cfg, max_batch));
    TRY(model_init_params(&t->m, cfg->seed));
    TRY(optim_create(&t->opt, &t->be, cfg, t->m.n_params));
    TRY(no_decay_setup(t));
    TRY(schedule_setup(t));
    TRY(buckets_create(t));
    TRY(t->be.ops->alloc(t->be.ctx, (void **)&t->d_batch_idx, (size_t)t->K * t->B * sizeof(int32_t)));
    if (t->K > 1) TRY(t->be.ops->alloc(t->be.ctx, (void **)&t->acc_grads, t->m.n_params * sizeof(float)));
    if (cfg->clip_grad_norm > 0) TRY(t->be.ops->alloc(t->be.ctx, (void **)&t->d_sumsq, sizeof(double)));
    // A graph holds the whole step, all-reduces included: those must be stream work (nccl), not host MPI.
    int graph_ok = t->be.ops->capture_begin != NULL;
    int comm_on_stream = !t->use_comm || (comm_caps(t->c) & COMM_CAP_CAPTURE);
    t->use_graph = cfg->cuda_graph && graph_ok && comm_on_stream && !t->o->trace_dir;
    if (cfg->cuda_graph && graph_ok && !t->use_graph)
        LOG0("note: CUDA graph off: %s\n", t->o->trace_dir ? "--trace marks each layer from the host"
                                                             : "comm=mpi all-reduces run on the host, outside any graph");
    if (t->o->resume_path) {
        TRY(checkpoint_resume(t, t->o->resume_path));
        if (t->o->init_from)  // --resume-if-exists found its checkpoint: that run was already fine-tuning
            LOG0("note: --init-from %s not used: resuming from %s\n", t->o->init_from, t->o->resume_path);
    } else if (t->o->init_from) {
        int loaded = 0, total = 0;
        TRY(weights_load(t, t->o->init_from, t->o->init_exclude, &loaded, &total));
        LOG0("init-from %s: %d of the model's %d tensors loaded%s%s (weights only: fresh optimizer state, "
             "schedule from step 0)\n", t->o->init_from, loaded, total, t->o->init_exclude ? ", excluded: " : "",
             t->o->init_exclude ? t->o->init_exclude : "");
    }
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Using a trained model: --eval and --predict. No training data, no optimizer: the backend, the test set (or
// --predict's images), the model and its weights, then the same evaluation code as an epoch's end.

static int csv_is_head(const unsigned char *head, size_t n) { return n >= 11 && memcmp(head, "index,class", 11) == 0; }

// --out and --metrics never replace an input of this use (the checkpoint, the config, the images or test data)
// nor an existing file of another kind (src/fileio.h).
static int use_outputs_check(const trainer *t) {
    const train_opts *o = t->o;
    file_set in = {0};
    file_set_add(&in, t->cfg->path, "config");
    file_set_add(&in, o->eval_path ? o->eval_path : o->predict_path, "checkpoint");
    if (o->images_path) file_set_add(&in, o->images_path, "--images file");
    char data[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32];
    int n_data = o->eval_path ? config_data_paths(t->cfg, data) : 0;
    for (int i = 0; i < n_data; i++) file_set_add(&in, data[i], "data file");
    if (o->metrics_path) {
        TRY(output_not_input(o->metrics_path, "--metrics", &in, NULL));
        TRY(output_check_kind(o->metrics_path, "--metrics", metrics_is_jsonl_head, "a JSON metrics file", 1));
    }
    if (o->out_path) {
        TRY(output_not_input(o->out_path, "--out", &in, NULL));
        TRY(output_check_kind(o->out_path, "--out", csv_is_head, "a predictions CSV file (header index,class,...)", 0));
    }
    return ST_OK;
}

static int use_data_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    const char *name;
    if (t->o->predict_path) {
        name = t->o->images_path;
        TRY(data_load_images(name, &t->test));
    } else if (cfg->data_format == DATA_CIFAR10) {
        char paths[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32];
        config_data_paths(cfg, paths);
        const char *test_p[1] = {paths[5]};
        name = cfg->cifar_dir;
        TRY(data_load_cifar10(test_p, 1, cfg->test_limit, &t->test));
    } else {
        name = cfg->test_images;
        TRY(data_load_idx(cfg->test_images, cfg->test_labels, cfg->classes, cfg->test_limit, &t->test));
    }
    const dataset *d = &t->test;
    if (d->c != cfg->channels || d->h != cfg->height || d->w != cfg->width)
        return ERR(ST_INPUT, "%s: images are %dx%dx%d (channels x height x width), but the model of %s takes %dx%dx%d",
                   name, d->c, d->h, d->w, cfg->path, cfg->channels, cfg->height, cfg->width);
    return test_upload(t);
}

static int use_setup(trainer *t) {
    const char *ckpt = t->o->eval_path ? t->o->eval_path : t->o->predict_path;
    TRY(use_outputs_check(t));
    TRY(augment_resolve(&t->cfg_eff));  // normalize=1 with a --config that lacks mean/std: the training set's
    TRY(backend_setup(t));
    TRY(use_data_setup(t));
    TRY(augment_setup(t, 0));
    const int eb = eval_batch_capped(t);
    TRY(model_create(&t->m, &t->be, t->cfg, eb));
    int loaded = 0, total = 0;
    TRY(weights_load(t, ckpt, NULL, &loaded, &total));
    t->h_logits = malloc((size_t)eb * t->m.classes * sizeof(float));
    TRY_ALLOC(t->h_logits);
    if (t->o->eval_path) {
        t->confusion = calloc((size_t)t->m.classes * t->m.classes, sizeof *t->confusion);
        TRY_ALLOC(t->confusion);
    }
    return ST_OK;
}

// What the checkpoint says of the run that wrote it (each "" when absent).
typedef struct ckpt_origin {
    char epoch[32], test_loss[64], test_acc[64], world[32];
} ckpt_origin;

static void ckpt_origin_read(const char *path, ckpt_origin *co) {
    memset(co, 0, sizeof *co);
    ckpt_file *f = NULL;
    if (ckpt_load(path, &f) != ST_OK) {  // loaded once already: only a file changed meanwhile fails here
        err_clear();
        return;
    }
    const char *keys[4] = {"epoch", "test_loss", "test_acc", "world_size"};
    char *dst[4] = {co->epoch, co->test_loss, co->test_acc, co->world};
    size_t size[4] = {sizeof co->epoch, sizeof co->test_loss, sizeof co->test_acc, sizeof co->world};
    for (int i = 0; i < 4; i++) {
        const char *v = ckpt_meta(f, keys[i]);
        if (v && strlen(v) < size[i]) snprintf(dst[i], size[i], "%s", v);
    }
    ckpt_free(f);
}

static void eval_print(const trainer *t, const eval_report *r) {
    const int k = r->classes;
    ALWAYS0("eval %s: %d test samples, %d rank(s), eval_batch %d, %s backend\n", r->checkpoint, r->samples, r->world,
            r->eval_batch, r->backend);
    ALWAYS0("test loss %.6f acc %.6f\n", r->test_loss, r->test_acc);
    if (r->train_test_loss)
        ALWAYS0("the training run printed for epoch %s: test loss %.6f acc %.6f -- %s\n", r->train_epoch,
                strtod(r->train_test_loss, NULL), strtod(r->train_test_acc, NULL),
                r->same_as_training ? "identical (every bit)"
                                    : "different (another eval_batch, world size, thread count, backend or test set?)");
    ALWAYS0("per-class accuracy (class: accuracy of its samples, count):\n");
    for (int a = 0; a < k; a++) {
        double n = 0;
        for (int b = 0; b < k; b++) n += r->confusion[(size_t)a * k + b];
        if (n > 0) ALWAYS0("  %3d: %.4f %6.0f\n", a, r->confusion[(size_t)a * k + a] / n, n);
        else ALWAYS0("  %3d:      - %6.0f\n", a, n);
    }
    ALWAYS0("confusion matrix (rows: true class, columns: predicted class):\n     ");
    for (int b = 0; b < k; b++) ALWAYS0(" %6d", b);
    ALWAYS0("\n");
    for (int a = 0; a < k; a++) {
        ALWAYS0("  %3d", a);
        for (int b = 0; b < k; b++) ALWAYS0(" %6.0f", r->confusion[(size_t)a * k + b]);
        ALWAYS0("\n");
    }
    (void)t;
}

static int use_eval(trainer *t, train_result *res) {
    double loss = 0, acc = 0;
    TRY(evaluate(t, &loss, &acc));
    ckpt_origin co;
    ckpt_origin_read(t->o->eval_path, &co);
    char mine[2][64];
    snprintf(mine[0], 64, "%.17g", loss);
    snprintf(mine[1], 64, "%.17g", acc);
    const int have = co.test_loss[0] && co.test_acc[0];
    eval_report r = {.checkpoint = t->o->eval_path, .samples = t->test.n, .classes = t->m.classes, .world = t->world,
                     .eval_batch = t->cfg->eval_batch < t->m.max_batch ? t->cfg->eval_batch : t->m.max_batch,
                     .backend = t->be.ops->name, .test_loss = loss, .test_acc = acc, .confusion = t->confusion,
                     .train_epoch = co.epoch[0] ? co.epoch : NULL, .train_test_loss = have ? co.test_loss : NULL,
                     .train_test_acc = have ? co.test_acc : NULL,
                     .same_as_training = have && strcmp(mine[0], co.test_loss) == 0 && strcmp(mine[1], co.test_acc) == 0};
    if (t->rank == 0) eval_print(t, &r);
    if (t->rank == 0 && t->o->metrics_path) TRY(metrics_write_eval(t->o->metrics_path, &r));
    res->test_loss = loss, res->test_acc = acc;
    return ST_OK;
}

// One CSV row per image: index, top class (the first largest logit, as evaluation counts), then the softmax
// probabilities. The backend's softmax op yields the loss and its gradient, not the probabilities, so they are
// computed here from the backend's logits, in double, with the same max shift.
static int predict_rows(trainer *t, FILE *f) {
    const backend_ops *o = t->be.ops;
    const int k = t->m.classes, n = t->test.n, eb = t->m.max_batch;
    fprintf(f, "index,class");
    for (int c = 0; c < k; c++) fprintf(f, ",p%d", c);
    fprintf(f, "\n");
    for (int i = 0; i < n; i += eb) {
        int cnt = n - i < eb ? n - i : eb;
        TRY(o->gather(t->be.ctx, t->d_test_x, t->d_test_y, t->d_test_index + i, cnt, t->sample_elems, t->d_aug_eval,
                      t->m.x, t->m.labels));
        TRY(model_forward(&t->m, cnt, 0));
        TRY(logits_download(t, cnt));
        for (int j = 0; j < cnt; j++) {
            const float *z = t->h_logits + (size_t)j * k;
            const int best = logits_argmax(z, k);
            double sum = 0;
            for (int c = 0; c < k; c++) sum += exp((double)z[c] - z[best]);
            fprintf(f, "%d,%d", i + j, best);
            for (int c = 0; c < k; c++) fprintf(f, ",%.9g", exp((double)z[c] - z[best]) / sum);
            if (fprintf(f, "\n") < 0) return ERR(ST_RUNTIME, "writing the predictions failed: %s", strerror(errno));
        }
    }
    return ST_OK;
}

// To --out through a temp file in the same directory and a rename: a failure leaves no partial CSV (and an
// existing one as it was). Without --out, to stdout (main prints nothing else there).
static int use_predict(trainer *t) {
    const char *out = t->o->out_path;
    if (!out) {
        TRY(predict_rows(t, stdout));
        if (fflush(stdout) != 0) return ERR(ST_RUNTIME, "stdout: writing the predictions failed: %s", strerror(errno));
        return ST_OK;
    }
    char tmp[CFG_PATH_MAX + 64];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%d", out, (int)getpid()) >= (int)sizeof tmp)
        return ERR(ST_INPUT, "--out %s: path too long", out);
    unlink(tmp);  // our pid: a leftover of a killed process that had it
    FILE *f = fopen(tmp, "wx");
    if (!f) return ERR(ST_INPUT, "--out: cannot create %s: %s", tmp, strerror(errno));
    int st = predict_rows(t, f);
    int e = 0;
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) e = errno;
    if (fclose(f) != 0 && !e) e = errno;
    if (st == ST_OK && e) st = ERR(ST_RUNTIME, "--out %s: cannot write the predictions: %s (nothing written)", out, strerror(e));
    if (st == ST_OK && rename(tmp, out) != 0)
        st = ERR(ST_RUNTIME, "--out %s: cannot rename %s into place: %s", out, tmp, strerror(errno));
    if (st != ST_OK) unlink(tmp);
    else LOG0("predict %s: %d images of %s -> %s\n", t->o->predict_path, t->test.n, t->o->images_path, out);
    return st;
}

static int use_run(trainer *t, train_result *res) {
    res->used = 1;
    if (t->o->predict_path && t->world > 1) {  // every rank sees it: reported once
        int st = ERR(ST_INPUT, "--predict runs as one process (np 1), this job has %d ranks: run it without mpirun",
                     t->world);
        err_mark_collective(0);
        return st;
    }
    int st = agree(t, use_setup(t));
    if (st == ST_OK) st = t->o->eval_path ? use_eval(t, res) : use_predict(t);
    // One process: its failure is the job's (reported once, no MPI_Abort needed).
    if (st != ST_OK && t->o->predict_path && !err_collective()) err_mark_collective(0);
    return st;
}

int train_run(const net_config *cfg, const train_opts *o, comm *c, train_result *res) {
    memset(res, 0, sizeof *res);
    trainer *t = calloc(1, sizeof *t);
    TRY_ALLOC(t);
    t->cfg_eff = *cfg;
    t->cfg = &t->cfg_eff, t->o = o, t->c = c;
    const comm_info *ci = comm_get_info(c);
    t->rank = ci->rank, t->world = ci->world;
    t->overlap = cfg->overlap;
    // One rank has nothing to average, unless asked to run the all-reduce path anyway (parallel.force_allreduce,
    // so that one GPU exercises the buckets, the comm stream and its fork/join inside a CUDA graph).
    t->use_comm = t->world > 1 || cfg->force_allreduce;
    t->host_comm = (comm_caps(c) & COMM_CAP_HOST_PROGRESS) != 0;
    if (o->eval_path || o->predict_path) {
        int st = use_run(t, res);
        trainer_free(t);
        free(t);
        return st;
    }
    baseline bl = {0};
    int metrics = -1;
    int st = agree(t, setup(t, &bl));
    if (st == ST_OK && t->world > 1) st = data_agree(t);
    if (st == ST_OK && t->use_comm) {
        // Every replica starts from rank 0's parameters and optimizer state.
        st = comm_bind_stream(c, t->be.ops->stream ? t->be.ops->stream(t->be.ctx) : NULL, t->async_backend);
        size_t n = t->m.n_params;
        float *host = NULL;
        if (st == ST_OK) st = host_state(t, &host);
        if (st == ST_OK) st = comm_bcast(c, host, (size_t)(optim_n_state(&t->opt) + 1) * n * sizeof(float), 0);
        if (st == ST_OK) st = t->be.ops->upload(t->be.ctx, t->m.params, host, n * sizeof(float));
        for (int s = 0; st == ST_OK && s < optim_n_state(&t->opt); s++) {
            const char *name;
            st = t->be.ops->upload(t->be.ctx, optim_state(&t->opt, s, &name), host + (size_t)(s + 1) * n,
                                   n * sizeof(float));
        }
        free(host);
        if (st == ST_OK && t->be.ops->set_progress && t->host_comm && t->overlap)
            t->be.ops->set_progress(t->be.ctx, progress_hook, t);
        st = agree(t, st);
    }
    if (st == ST_OK && o->metrics_path && t->rank == 0) st = metrics_open(o->metrics_path, o->resume_path != NULL, &metrics);
    if (st == ST_OK && o->trace_dir) st = trace_open(&t->tr, o->trace_dir, t->rank, ci->host);
    st = agree(t, st);  // every rank is here with an agreed status, so this collective is safe
    if (st == ST_OK && t->tr) st = agree(t, trace_setup(t));
    if (st == ST_OK) {
        LOG0("ddp-cnn %s: %s backend, %d rank(s) x batch %d = global batch %d (%s scaling), %zu parameters, "
             "%d steps/epoch, %d bucket(s) of %d KiB, overlap %s, comm %s%s\n",
             DDP_VERSION, t->be.ops->name, t->world, t->B, t->G, cfg->scaling == SCALING_STRONG ? "strong" : "weak",
             t->m.n_params, t->steps_per_epoch, t->use_comm ? t->n_buckets : 0, cfg->bucket_kb,
             t->overlap ? "on" : "off", comm_backend_name(c), t->use_graph ? ", CUDA graph" : "");
        st = run_epochs(t, &bl, metrics, res);
    }
    if (metrics >= 0 && close(metrics) != 0 && st == ST_OK)
        st = ERR(ST_RUNTIME, "%s: error writing metrics: %s", o->metrics_path, strerror(errno));
    int trace_st = trace_close(t->tr);  // also after a failure: the timeline up to it is what one wants to see
    if (st == ST_OK) st = trace_st;
    if (st == ST_OK && o->keep_params) {
        res->n_params = t->m.n_params;
        res->params = malloc(t->m.n_params * sizeof(float));
        if (!res->params) st = ERR(ST_RUNTIME, "out of host memory");
        else st = t->be.ops->download(t->be.ctx, res->params, t->m.params, t->m.n_params * sizeof(float));
    }
    test_stall_at(t, "end");
    trainer_free(t);
    free(t);
    return st;
}

void train_result_free(train_result *r) {
    free(r->params);
    r->params = NULL;
}
