// train.c — data-parallel training: set-up, one step (per-rank shards of a global permutation, forward/backward
// on the backend, optimizer; issued op by op or replayed from a graph), the epoch loop with its metrics, and
// train_run. The rest of the trainer, by concern, is listed in train_state.h.
#include "train_state.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "augment.h"
#include "backend.h"
#include "checkpoint.h"
#include "common.h"
#include "data.h"
#include "layer.h"
#include "metrics.h"
#include "model.h"
#include "optim.h"
#include "precision.h"
#include "test_hooks.h"
#include "trace.h"

// ---------------------------------------------------------------------------------------------------------
// Set-up

// The training draws depend on the epoch: written before its first step, outside any capture, where the
// gather (also a replayed graph's) reads it.
static int augment_epoch(trainer *t) {
    if (!t->d_aug_train) return ST_OK;
    t->h_aug_train.epoch = t->epoch;
    return backend_upload(&t->be, (char *)t->d_aug_train + offsetof(gather_aug, epoch), &t->h_aug_train.epoch,
                          sizeof t->h_aug_train.epoch);
}

// A streamed set (folder, list): its lists and loaders; the counts stand in train and test (no images).
static int stream_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    t->train = (dataset){.c = cfg->channels, .h = cfg->height, .w = cfg->width, .classes = cfg->classes};
    t->test = t->train;
    TRY(train_stream_setup(t, 1));
    t->train.n = t->n_train_view;
    t->test.n = t->sets[2].n;
    t->steps_per_epoch = data_steps_per_epoch(t->train.n, t->B * t->K, t->world);
    if (t->steps_per_epoch < 1)
        return ERR(ST_INPUT, "%s: %d training images cannot fill one global batch of %d (%d ranks x %d x %d "
                             "micro-batches)", t->sets[0].origin, t->train.n, t->G, t->world, t->B, t->K);
    return train_augment_setup(t, 1);
}

static int data_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    if (CFG_STREAMED(cfg)) return stream_setup(t);
    if (cfg->data_format == DATA_CIFAR10) {
        char paths[CFG_DATA_FILES_MAX][CFG_PATH_MAX + 32];
        config_data_paths(cfg, paths);
        const char *train_p[5], *test_p[1] = {paths[5]};
        for (int i = 0; i < 5; i++) train_p[i] = paths[i];
        TRY(data_load_cifar10(train_p, 5, cfg->train_limit, &t->train));
        TRY(data_load_cifar10(test_p, 1, cfg->test_limit, &t->test));
    } else if (cfg->data_format == DATA_SYNTHETIC) {
        TRY(data_make_synthetic(cfg->seed, 0, cfg->train_limit ? cfg->train_limit : DATA_SYNTHETIC_TRAIN, cfg->channels,
                                cfg->height, cfg->width, cfg->classes, &t->train));
        TRY(data_make_synthetic(cfg->seed, 1, cfg->test_limit ? cfg->test_limit : DATA_SYNTHETIC_TEST, cfg->channels,
                                cfg->height, cfg->width, cfg->classes, &t->test));
    } else {
        TRY(data_load_idx(cfg->train_images, cfg->train_labels, cfg->classes, cfg->train_limit, &t->train));
        TRY(data_load_idx(cfg->test_images, cfg->test_labels, cfg->classes, cfg->test_limit, &t->test));
    }
    const dataset *sets[2] = {&t->train, &t->test};
    const char *names[2] = {cfg->data_format == DATA_CIFAR10     ? cfg->cifar_dir
                            : cfg->data_format == DATA_SYNTHETIC ? "[data] format=synthetic (train_limit)"
                                                                 : cfg->train_images,
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

    const backend *be = &t->be;
    size_t tx = (size_t)t->train.n * t->sample_elems;
    TRY(backend_alloc(be, (void **)&t->d_train_x, tx));
    TRY(backend_alloc(be, (void **)&t->d_train_y, (size_t)t->train.n * sizeof(int32_t)));
    TRY(backend_upload(be, t->d_train_x, t->train.images, tx));
    TRY(backend_upload(be, t->d_train_y, t->train.labels, (size_t)t->train.n * sizeof(int32_t)));
    TRY(backend_alloc(be, (void **)&t->d_perm, (size_t)t->train.n * sizeof(int32_t)));
    TRY(train_augment_setup(t, 1));
    return train_test_upload(t);
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

static int schedule_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    const double peak = cfg->lr * (cfg->lr_scaling == LR_SCALING_LINEAR ? t->world : 1);
    return lr_schedule_init(&t->sched, cfg, peak, t->steps_per_epoch);
}

// net.no_decay as ranges of the parameter buffer: what config_no_decay_layer says of each layer's weights and
// bias. begin/len hold up to 2 per layer; returns how many ranges.
int train_no_decay_ranges(const model *m, const char *list, size_t *begin, size_t *len) {
    int n = 0;
    for (int i = 0; i < m->n_layers; i++) {
        const model_layer *l = &m->layers[i];
        int whole, bias;
        config_no_decay_layer(list, l->name, l->type == LAYER_BATCHNORM, &whole, &bias);
        if (whole && l->n_w) begin[n] = l->w_off, len[n++] = l->n_w;
        if ((whole || bias) && l->n_b) begin[n] = l->b_off, len[n++] = l->n_b;
    }
    return n;
}

static int no_decay_setup(trainer *t) {
    const char *list = t->cfg->no_decay;
    if (!*list || t->cfg->weight_decay <= 0) return ST_OK;
    size_t *begin = calloc((size_t)t->m.n_layers * 2, sizeof *begin), *len = calloc((size_t)t->m.n_layers * 2, sizeof *len);
    if (!begin || !len) {
        free(begin), free(len);
        return ERR(ST_RUNTIME, "out of host memory");
    }
    int st = optim_no_decay(&t->opt, begin, len, train_no_decay_ranges(&t->m, list, begin, len));
    free(begin), free(len);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Sync batch norm

// The model's sync BN hook: the statistics averaged over the ranks in stream order (comm=nccl: the compute
// stream waits, capturable; comm=mpi: on the host, so no CUDA graph -- setup turns it off with a note).
static int sync_bn_allreduce(void *arg, float *buf, size_t n) {
    trainer *t = arg;
    char label[64];
    snprintf(label, sizeof label, "step %lld sync batchnorm", t->global_step + 1);  // 1-based, as in messages
    return comm_allreduce_avg(t->c, buf, n, label);
}

// [batchnorm] sync=1 with more than one rank: the model calls back into the comm between the ops. Every rank
// must then run the same forwards with the same batch size, which training does: strong scaling refuses a global
// batch that does not divide by the ranks (batch_setup), an epoch has only full steps (data_steps_per_epoch
// drops the remainder) and accumulation's micro-batches are all B. Evaluation uses the running statistics and
// never calls the hook (its last batch may be partial and differ between ranks).
static int sync_bn_setup(trainer *t) {
    int any = 0;
    for (int i = 0; i < t->cfg->n_layers; i++) any |= t->cfg->layers[i].type == LAYER_BATCHNORM && t->cfg->layers[i].sync;
    if (!any || t->world == 1) return 0;
    t->m.allreduce_avg = sync_bn_allreduce;
    t->m.allreduce_arg = t;
    t->m.world = t->world;
    return 1;
}

// A layer with batch statistics (batch norm) needs more than one value per channel in each training batch: batch
// norm after a [dense] at batch 1 per rank (and no sync over ranks) is bad input, refused before the first step.
static int batch_stats_check(const trainer *t) {
    for (int i = 0; i < t->m.n_layers; i++) {
        const model_layer *l = &t->m.layers[i];
        const long long ranks = l->stat_sync ? t->world : 1;
        if (l->stat_values > 0 && (long long)t->B * l->stat_values * ranks < 2)
            return ERR(ST_INPUT, "%s: layer '%s' (line %d) normalises with batch statistics, but a batch of %d per rank "
                                 "gives each channel %lld value(s); it needs at least 2 (net.batch >= 2 per rank, or "
                                 "[%s] sync=1 over ranks)", t->cfg->path, l->name, t->cfg->layers[i].line, t->B,
                       (long long)t->B * l->stat_values * ranks, l->kind->section);
    }
    return ST_OK;
}

// net.precision (docs/precision.md): fp16's loss scaler, and what the CPU backend makes of the settings.
static int precision_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    loss_scale_init(&t->ls, cfg);
    static const char *const storage[] = {"auto", "fp32", "compute"};
    if (t->m.round_to)
        LOG0("note: activations held in %s %s%s (net.act_storage=%s), %.1f MiB of them per rank\n",
             t->m.act16 ? "16-bit" : "float32 buffers of", precision_name(cfg->precision),
             t->m.act16 ? " buffers" : " values", storage[cfg->act_storage], (double)t->m.act_bytes / (1 << 20));
    else if (cfg->act_storage == ACT_STORE_COMPUTE)
        LOG0("note: net.act_storage=compute changes nothing under net.precision=%s (the compute type is fp32)\n",
             precision_name(cfg->precision));
    if (backend_is_async(&t->be)) return ST_OK;  // (config_validate refused what the CUDA backend lacks)
    if (t->m.round_to)
        LOG0("note: net.precision=%s emulated on the CPU: values the GPU would hold in %s are rounded to it "
             "(round-to-nearest-even), the arithmetic is fp32%s\n", precision_name(cfg->precision),
             precision_name(cfg->precision), t->ls.on ? "; dynamic loss scaling" : "");
    else if (cfg->precision == PREC_TF32)
        LOG0("note: net.precision=tf32 changes only a GPU's GEMM inputs; the CPU computes in fp32\n");
    if (cfg->layout == LAYOUT_NHWC)
        LOG0("note: net.layout=nhwc matters only on a GPU; the CPU backend computes NCHW (the results are the same)\n");
    return ST_OK;
}

static int setup(trainer *t, baseline *bl) {
    const net_config *cfg = t->cfg;
    TRY(batch_setup(t));
    if (t->o->baseline_path) TRY(baseline_load(t->o->baseline_path, bl));
    TRY(train_backend_setup(t));
    TRY(data_setup(t));
    int eval_local = train_eval_batch_capped(t);
    int max_batch = t->B > eval_local ? t->B : eval_local;
    TRY(model_create(&t->m, &t->be, cfg, max_batch));
    TRY(model_init_params(&t->m, cfg->seed));
    TRY(optim_create(&t->opt, &t->be, cfg, t->m.n_params));
    TRY(precision_setup(t));
    const int sync_bn = sync_bn_setup(t);
    TRY(batch_stats_check(t));
    TRY(no_decay_setup(t));
    TRY(schedule_setup(t));
    TRY(train_buckets_create(t));
    TRY(backend_alloc(&t->be, (void **)&t->d_batch_idx, (size_t)t->K * t->B * sizeof(int32_t)));
    if (t->sets) {  // streamed: the staged batch is read in order
        int32_t *ident = malloc((size_t)t->K * t->B * sizeof *ident);
        TRY_ALLOC(ident);
        for (int i = 0; i < t->K * t->B; i++) ident[i] = i;
        const int st = backend_upload(&t->be, t->d_batch_idx, ident, (size_t)t->K * t->B * sizeof *ident);
        free(ident);
        TRY(st);
    }
    if (t->K > 1) TRY(backend_alloc(&t->be, (void **)&t->acc_grads, t->m.n_params * sizeof(float)));
    if (cfg->clip_grad_norm > 0) TRY(backend_alloc(&t->be, (void **)&t->d_sumsq, sizeof(double)));
    TRY(backend_alloc(&t->be, (void **)&t->d_param_bad, 2 * sizeof(int32_t)));
    TRY(backend_zero(&t->be, t->d_param_bad, 2 * sizeof(int32_t)));
    // A graph holds the whole step, all-reduces included (the buckets', sync BN's inside forward and backward):
    // those must be stream work (nccl), not host MPI.
    int graph_ok = backend_can_capture(&t->be);
    int comm_on_stream = !(t->use_comm || sync_bn) || (comm_caps(t->c) & COMM_CAP_CAPTURE);
    // PowerSGD changes the step at powersgd_start_step and draws Q from the host at its first compressed step.
    const int psgd = cfg->compress == COMPRESS_POWERSGD && t->use_comm;
    t->use_graph = cfg->cuda_graph && graph_ok && comm_on_stream && !t->o->trace_dir && !t->overlap_ab && !t->ls.on && !psgd;
    if (cfg->cuda_graph && graph_ok && !t->use_graph)
        LOG0("note: CUDA graph off: %s\n",
             t->o->trace_dir ? "--trace marks each layer from the host"
             : t->ls.on      ? "net.precision=fp16's loss scaler decides on the host, mid-step, whether to take the step"
             : t->overlap_ab ? "parallel.overlap=2 changes the step every other step"
             : psgd          ? "parallel.compress=powersgd changes the step at powersgd_start_step (and is host-driven)"
             : sync_bn       ? "comm=mpi all-reduces (gradients, sync batch norm's statistics) run on the host, outside any graph"
                             : "comm=mpi all-reduces run on the host, outside any graph");
    if (t->o->resume_path) {
        TRY(train_ckpt_resume(t, t->o->resume_path));
        if (t->o->init_from)  // --resume-if-exists found its checkpoint: that run was already fine-tuning
            LOG0("note: --init-from %s not used: resuming from %s\n", t->o->init_from, t->o->resume_path);
    } else if (t->o->init_from) {
        int loaded = 0, total = 0;
        TRY(train_weights_load(t, t->o->init_from, t->o->init_exclude, &loaded, &total));
        LOG0("init-from %s: %d of the model's %d tensors loaded%s%s (weights only: fresh optimizer state, "
             "schedule from step 0)\n", t->o->init_from, loaded, total, t->o->init_exclude ? ", excluded: " : "",
             t->o->init_exclude ? t->o->init_exclude : "");
    }
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// One step

// The learning rate of the step about to be taken (net.schedule; lr_scaling=linear scales its peak).
static double lr_at(const trainer *t) { return lr_schedule_at(&t->sched, t->global_step); }

// NaN/Inf: name the first layer whose averaged gradients are not finite.

static int divergence_check(trainer *t, int32_t *scratch) {
    TRY(train_drain(t));  // the reads below block: wait with the watchdog's bound first
    const backend *be = &t->be;
    int32_t bad = 0;
    TRY(backend_count_nonfinite(be, t->m.n_params, t->m.grads, scratch));
    TRY(backend_download(be, &bad, scratch, sizeof bad));
    if (!bad) return ST_OK;
    for (int i = t->m.n_layers - 1; i >= 0; i--) {
        const model_layer *l = &t->m.layers[i];
        if (!l->n_w) continue;
        TRY(backend_count_nonfinite(be, l->n_w + l->n_b, t->m.grads + l->w_off, scratch));
        TRY(backend_download(be, &bad, scratch, sizeof bad));
        if (bad) err_mark_collective(0);  // the gradients are averaged: every rank sees the same
        if (bad)
            return ERR(ST_DIVERGED, "training diverged at step %lld (epoch %d): %d non-finite gradient values in "
                                    "layer '%s' (lower the learning rate)",
                       t->global_step + 1, t->epoch + 1, bad, l->name);
    }
    return ERR(ST_DIVERGED, "training diverged at step %lld: non-finite gradients", t->global_step + 1);
}


// Test hooks (reliability tests, src/test_hooks.h): a stuck peer, or a failed all-reduce, before this step
// (1-based, as in messages).
static int test_stall_maybe(const trainer *t) {
    char step[32];
    snprintf(step, sizeof step, "%lld", t->global_step + 1);
    test_hooks_stall(t->hooks, t->rank, step);
    if (t->hooks->comm_fail_step == t->global_step + 1)  // DDP_TEST_COMM_FAIL: as a watchdog timeout would
        return ERR(ST_COMM, "rank %d (%s): all-reduce 'step %lld' failed (injected by a test hook)", t->rank,
                   g_host, t->global_step + 1);
    return ST_OK;
}

// DDP_TEST_NONFINITE_GRAD (src/test_hooks.h): an Inf in this rank's loss gradient at the step named (1-based), as
// an fp16 overflow in backward would make; every parameter's gradient follows it.
static int test_nonfinite_maybe(const trainer *t) {
    if (t->hooks->nonfinite_rank != t->rank || t->hooks->nonfinite_step != t->global_step + 1) return ST_OK;
    const model_layer *loss = &t->m.layers[t->m.n_layers - 1];
    void *dy = t->m.layers[loss->in_idx[0]].dy;
    const float inf = INFINITY;
    if (!t->m.act16) return backend_upload(&t->be, dy, &inf, sizeof inf);
    const uint16_t inf16 = precision_to16(t->m.act16, inf);  // a 16-bit activation buffer
    return backend_upload(&t->be, dy, &inf16, sizeof inf16);
}

// The stream work of one training step, in order -- exactly what a CUDA graph of the step contains. The batch
// indices (t->d_batch_idx) and the optimizer's hyper-parameters are written before, by the host.
static int step_issue(trainer *t, int32_t *scratch, int check_finite) {
    const backend *be = &t->be;
    TRY(train_mark(t, MK_START));
    // net.accum_steps: the first K - 1 micro-batches only sum their gradients (no all-reduce: DDP's no_sync);
    // their time counts as the step's data phase.
    const size_t np = t->m.n_params;
    for (int j = 0; j + 1 < t->K; j++) {
        TRY(backend_gather(be, t->d_train_x, t->d_train_y, t->d_batch_idx + (size_t)j * t->B, t->B, t->sample_elems,
                           t->d_aug_train, t->m.x, t->m.labels));
        TRY(model_forward(&t->m, t->B, 1));
        TRY(model_backward(&t->m, t->B, NULL, t));
        if (j == 0) TRY(backend_copy(be, t->acc_grads, t->m.grads, np * sizeof(float)));
        else TRY(backend_add(be, np, t->m.grads, t->acc_grads));
    }
    const int32_t *last_idx = t->d_batch_idx + (size_t)(t->K - 1) * t->B;
    TRY(backend_gather(be, t->d_train_x, t->d_train_y, last_idx, t->B, t->sample_elems, t->d_aug_train, t->m.x,
                       t->m.labels));
    TRY(train_mark(t, MK_DATA));
    TRY(model_forward(&t->m, t->B, 1));
    TRY(test_nonfinite_maybe(t));
    TRY(train_mark(t, MK_FWD));
    t->cb_status = ST_OK;
    t->next_bucket = 0;
    if (t->overlap_ab) t->overlap = (int)(t->global_step & 1);
    TRY(model_backward(&t->m, t->B, t->use_comm && t->overlap ? train_on_grads_ready : NULL, t));
    TRY(t->cb_status);
    if (!t->use_comm) TRY(train_grads_finalize(t, 0, np));  // (with comm each bucket is finalised at its launch)
    TRY(train_mark(t, MK_BWD));
    if (t->use_comm) TRY(train_buckets_finish(t));
    TRY(train_mark(t, MK_WAIT));
    // fp16: the gradients unscaled, and a step with NaN/Inf on any rank skipped on every rank (src/loss_scale.h).
    int skip = 0;
    TRY(loss_scale_unscale_check(&t->ls, be, t->c, t->world, t->m.grads, np, scratch, &skip));
    if (skip) {
        optim_skip(&t->opt);
        return train_mark(t, MK_END);
    }
    // After the all-reduce: every rank holds the same averaged gradients, so every rank clips alike.
    if (t->cfg->clip_grad_norm > 0)
        TRY(backend_clip_grad_norm(be, t->m.n_params, t->m.grads, (float)t->cfg->clip_grad_norm, t->d_sumsq));
    if (check_finite) TRY(divergence_check(t, scratch));
    TRY(optim_apply(&t->opt, t->m.params, t->m.grads));
    // Finite gradients can still give non-finite parameters (an update that overflows): counted here, in the
    // step's own stream work, and read by train_params_check.
    TRY(backend_count_nonfinite(be, t->m.n_params, t->m.params, t->d_param_bad));
    return train_mark(t, MK_END);
}

// A capture that failed midway (in backward, say) may have launched buckets whose work was forked onto the
// comm stream and never joined back: join each of them (the compute stream waits on it, in stream order)
// before the capture ends, so that ending it neither reports unjoined work nor leaves a stream capturing. The
// first error stays the one reported.
static void capture_join_buckets(trainer *t) {
    for (int i = 0; t->use_comm && i < t->n_buckets; i++) {
        bucket *b = &t->buckets[i];
        if (b->req >= 0 && comm_wait(t->c, b->req) == ST_OK) b->req = -1;  // (err_set keeps the first error)
    }
}

// Capture one step into the backend's graph. Nothing runs during a capture: the caller replays it next.
static int graph_capture(trainer *t) {
    const backend *be = &t->be;
    TRY(backend_capture_begin(be));
    t->marks_on = 1;  // in the graph the marks are device-side nodes: free, recorded at every replay
    int st = step_issue(t, NULL, 0);
    if (st != ST_OK) capture_join_buckets(t);
    int end = backend_capture_end(be);  // close the capture also after a failure (the first error is kept)
    TRY(st);
    TRY(end);
    for (int i = 0; t->use_comm && i < t->n_buckets; i++) {
        t->buckets[i].g_start = t->buckets[i].m_start;
        t->buckets[i].g_end = t->buckets[i].m_end;
    }
    t->graph_ready = 1;
    return ST_OK;
}

// The capture's outcome over all ranks: a rank whose own capture worked falls back too when another's failed
// (its graph is never replayed). A communication failure stays this rank's error.
static int capture_agree(trainer *t, int st) {
    if (t->world == 1 || st == ST_COMM) return st;
    int32_t failed = st != ST_OK;
    TRY(comm_allreduce_max_i32(t->c, &failed, 1));
    if (!failed || st != ST_OK) return st;
    t->graph_ready = 0;
    return ERR(ST_RUNTIME, "another rank's capture of the training step failed");
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
    err_clear();  // reported as a note: a later error must not be hidden behind this one
    return ST_OK;
}

// Host work (the batch's indices, the optimizer's hyper-parameters), then the step: replayed from the graph
// when there is one, issued op by op otherwise (the first step, which warms up the libraries before a
// capture, and the steps that check gradients for NaN/Inf, which read them back midway).
static int train_step(trainer *t, int32_t *scratch, int check_finite) {
    const backend *be = &t->be;
    TRY(test_stall_maybe(t));
    if (t->tr) trace_set_step(t->tr, t->global_step);
    void **ahead = &t->mk_ahead[t->global_step % (AHEAD + 1)];  // recorded AHEAD + 1 steps ago, if at all
    if (t->global_step >= AHEAD + 1) TRY(train_mark_wait(t, *ahead));
    // Micro-batch j of step s is the global batch s K + j of the epoch's order: K = 1 is the plain sharding, and
    // K micro-batches of B cover exactly the samples of one batch of K B.
    // Streamed: the loader's batch is staged where the gather reads it with the identity index.
    if (t->sets) TRY(train_stream_step(t));
    for (int j = 0; !t->sets && j < t->K; j++) {
        const int32_t *idx = data_shard_batch(t->d_perm, t->step_in_epoch * t->K + j, t->B, t->world, t->rank);
        TRY(backend_copy(be, t->d_batch_idx + (size_t)j * t->B, idx, (size_t)t->B * sizeof(int32_t)));
    }
    TRY(optim_prepare(&t->opt, lr_at(t)));
    t->m.loss_scale = (float)t->ls.scale;  // fp16's loss scale (1 otherwise), read by the step's forward
    TRY(model_set_rng(&t->m, t->rank, t->global_step));  // [dropout] masks: read by the graph from backend memory
    // parallel.overlap=2 times pairs of steps (one without overlap, one with) where others time one.
    const int timed = t->tr != NULL || t->global_step % t->timing_every < (t->overlap_ab ? 2 : 1);
    int replay = t->use_graph && !check_finite && t->eager_steps > 0;
    t->n_lm = 0;
    t->in_step = 1;
    if (replay && !t->graph_ready) {
        const long long launched = t->launches;  // a capture runs nothing: its launches are not the step's
        int st = graph_capture(t);
        t->launches = launched;
        // Every rank replays or every rank steps op by op: a graph on some ranks and eager steps on others would
        // order their NCCL calls differently (a hang). So the ranks agree on the capture before the first replay.
        st = capture_agree(t, st);
        if (st != ST_OK) {
            TRY(graph_fall_back(t, st));
            replay = 0;
        }
    }
    if (replay) {
        TRY(backend_replay(be));
        t->launches += t->use_comm ? t->n_buckets : 0;  // the graph launches every bucket, the host none
    } else {
        t->marks_on = timed;
        TRY(step_issue(t, scratch, check_finite));
        t->eager_steps++;
    }
    if (check_finite && !replay) {  // global_step counts this step in the message
        t->global_step++;
        const int st = train_params_check(t);
        t->global_step--;
        TRY(st);
    }
    t->in_step = 0;
    TRY(backend_mark_record(be, *ahead));
    if (timed) TRY(train_step_timing(t, replay));
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Evaluation

// ---------------------------------------------------------------------------------------------------------
// One epoch

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

// One epoch's figures as they are gathered, for its line, its metrics record and the run's result.
typedef struct epoch_totals {
    int steps_run;                 // steps this process ran in the epoch (fewer when resumed mid-epoch)
    int stopped;                   // the epoch ended early: 1 at --steps, 2 at an agreed stop request
    double epoch_s, eval_s;        // wall time of the steps (after a bounded drain), of the evaluation
    double loss_sum, correct_sum;  // over ranks, with the carry of a resumed epoch
    double test_loss, test_acc;
} epoch_totals;

// The epoch's sample order on the device, its loss and accuracy sums and its timing zeroed.
static int epoch_begin(trainer *t) {
    const backend *be = &t->be;
    data_permutation(t->cfg->seed, t->epoch, t->train.n, t->h_perm);
    if (t->sets) TRY(train_stream_epoch(t));
    else TRY(backend_upload(be, t->d_perm, t->h_perm, (size_t)t->train.n * sizeof(int32_t)));
    t->data_wait_s = 0;
    TRY(augment_epoch(t));
    TRY(backend_zero(be, t->m.loss_acc, sizeof(double)));
    TRY(backend_zero(be, t->m.correct_acc, 4));
    train_timing_reset(t);
    t->launches = 0;
    t->ls_skipped0 = t->ls.skipped;
    return ST_OK;
}

// The epoch's steps from t->step_in_epoch to its end, or to --steps or an agreed stop (e->stopped), with the
// progress bar; then a bounded wait for the GPU, so e->epoch_s is the steps' whole time. steps_here: steps this
// process has run (the ETA's pace), train_s: its training time before this epoch.
static int epoch_train(trainer *t, int32_t *scratch, int check_every, long long *steps_here, double train_s,
                       epoch_totals *e) {
    const int first_step = t->step_in_epoch;
    double e0 = now_s(), last_bar = e0, last_tb = e0;
    if (t->run_t0 == 0) t->run_t0 = e0;
    while (t->step_in_epoch < t->steps_per_epoch) {
        if (t->o->max_steps > 0 && t->global_step >= t->o->max_steps) {
            e->stopped = 1;
            break;
        }
        int stop = 0;
        TRY(stop_agreed(t, &stop));
        if (stop) {
            e->stopped = 2;
            break;
        }
        TRY(train_step(t, scratch, (t->global_step + 1) % check_every == 0));
        t->step_in_epoch++;
        t->global_step++;
        (*steps_here)++;
        // Rank 0's live view: the progress line (a bar at a terminal, a line every --log-every seconds in a log)
        // and the TensorBoard curves (every --log-every seconds, 10 when 0), from one read of the loss sum.
        const double every = t->o->progress ? 0.2 : t->o->log_every_s;
        const double now = now_s(), tb_every = t->o->log_every_s > 0 ? t->o->log_every_s : 10;
        const int bar = t->rank == 0 && !g_quiet && every > 0 && now - last_bar > every;
        const int tb = (t->tb || t->steps_fd >= 0) && now - last_tb > tb_every;
        if (bar || tb) {
            double ls = 0;
            TRY(train_drain(t));
            TRY(backend_download(&t->be, &ls, t->m.loss_acc, sizeof ls));
            if (bar) {
                last_bar = now;
                train_progress_show(t, t->o->progress, t->step_in_epoch, ls, t->step_in_epoch - first_step,
                                    last_bar - e0, *steps_here, train_s + (last_bar - e0));
            }
            if (tb) {  // the epoch so far: mean loss over its samples, throughput since the epoch began
                const int run = t->step_in_epoch - first_step;
                step_record r = {.epoch = t->epoch + 1, .step = t->global_step, .time = wall_s(),
                                 .elapsed_s = now - t->run_t0, .loss = ls / ((double)t->step_in_epoch * t->G),
                                 .lr = lr_schedule_at(&t->sched, t->global_step - 1),
                                 .images_per_s = now > e0 ? (double)run * t->G / (now - e0) : 0,
                                 .data_wait_s = run > 0 ? t->data_wait_s / run : 0};
                step_times means;
                train_timing_means(t, &means, &r.grad_norm);
                r.step_s = means.step_s, r.comm_s = means.comm_s, r.exposed_comm_s = means.exposed_comm_s;
                const tb_scalar v[] = {{"train/loss", r.loss}, {"train/lr", r.lr}, {"train/images_per_s", r.images_per_s}};
                TRY(tb_scalars(t->tb, t->global_step, v, (int)(sizeof v / sizeof v[0])));
                if (t->steps_fd >= 0) TRY(metrics_write_step(t->steps_fd, t->steps_path, &r));
                last_tb = now;
            }
        }
    }
    // Bounded wait for the GPU: a stalled peer's all-reduce must not hang us (nccl joins its stream into
    // the compute stream, so this covers all the step's work).
    TRY(train_drain(t));
    e->epoch_s = now_s() - e0;
    e->steps_run = t->step_in_epoch - first_step;
    return ST_OK;
}

// Sums over ranks of the epoch's training loss and correct counts (each rank holds its own shard's). Between
// the sampled gradient checks (GPU, graph), a diverged epoch still ends here. The sums are all-reduced: every
// rank sees the same.
static int epoch_train_sums(trainer *t, epoch_totals *e) {
    double s[2];
    int32_t correct = 0;
    TRY(backend_download(&t->be, &s[0], t->m.loss_acc, sizeof(double)));
    TRY(backend_download(&t->be, &correct, t->m.correct_acc, sizeof(int32_t)));
    s[1] = correct;
    TRY(comm_allreduce_sum_f64(t->c, s, 2));
    e->loss_sum = s[0] + t->loss_carry;
    e->correct_sum = s[1] + t->correct_carry;
    if (!isfinite(e->loss_sum)) {
        int st = ERR(ST_DIVERGED, "training diverged in epoch %d (by step %lld): the training loss is not finite "
                                  "(lower the learning rate)", t->epoch + 1, t->global_step);
        err_mark_collective(0);
        return st;
    }
    return ST_OK;
}

// Stopped mid-epoch: keep the partial sums so a resumed run reports the same epoch figures. A stop request is
// the run's end (ST_INTERRUPTED), --steps is not.
static int epoch_stopped(trainer *t, const epoch_totals *e) {
    if (t->o->save_path) TRY(train_ckpt_save_agreed(t, t->o->save_path, e->loss_sum, e->correct_sum));
    if (e->stopped == 2) {
        int st = ERR(ST_INTERRUPTED, "stopped by signal at step %lld%s", t->global_step,
                     t->o->save_path ? " (checkpoint saved)" : "");
        err_mark_collective(0);
        return st;
    }
    return ST_OK;
}

// The test figures (and their span on the trace).
static int epoch_evaluate(trainer *t, epoch_totals *e) {
    double ev0 = now_s();
    if (t->tr) trace_set_step(t->tr, -1);
    TRY(train_state_broadcast(t));  // every rank evaluates with rank 0's running statistics
    TRY(train_evaluate(t, t->sets && t->n_val_view > 0, &e->test_loss, &e->test_acc));
    e->eval_s = now_s() - ev0;
    if (!isfinite(e->test_loss)) {  // the sums are all-reduced: every rank sees the same
        int st = ERR(ST_DIVERGED, "training diverged in epoch %d (by step %lld): the test loss is not finite (lower the "
                                  "learning rate)%s%s%s", t->epoch + 1, t->global_step,
                     t->o->save_path ? "; " : "", t->o->save_path ? t->o->save_path : "",
                     t->o->save_path ? " was not replaced" : "");
        err_mark_collective(0);
        return st;
    }
    if (t->tr) trace_span(t->tr, TRACE_TID_MAIN, "eval", "eval", ev0, ev0 + e->eval_s, t->epoch + 1, 0);
    return ST_OK;
}

// Every figure of the epoch's line and metrics record (docs/outputs.md, "Metrics"), in one epoch_metrics.
static void epoch_figures(const trainer *t, const baseline *bl, const epoch_totals *e, epoch_metrics *em) {
    const net_config *cfg = t->cfg;
    *em = (epoch_metrics){0};
    em->epoch = t->epoch + 1;
    em->step = t->global_step;
    double seen = (double)t->steps_per_epoch * t->G;
    em->train_loss = e->loss_sum / seen;
    em->train_acc = e->correct_sum / seen;
    em->test_loss = e->test_loss, em->test_acc = e->test_acc;
    em->epoch_s = e->epoch_s, em->eval_s = e->eval_s;
    em->images_per_s = e->epoch_s > 0 ? (double)e->steps_run * t->G / e->epoch_s : 0;
    em->images_per_s_per_rank = em->images_per_s / t->world;
    em->gflop_per_s = em->images_per_s * model_train_flops_per_sample(&t->m) / 1e9;
    train_timing_means(t, &em->t, &em->grad_norm);
    em->lr = lr_schedule_at(&t->sched, t->global_step - 1);  // the epoch's last step
    em->world = t->world, em->batch = t->B, em->global_batch = t->G;
    em->n_buckets = t->use_comm ? t->n_buckets : 0;
    em->bucket_bytes = t->bucket_bytes;
    em->bucket_kb = cfg->bucket_kb, em->overlap = cfg->overlap, em->scaling = cfg->scaling;
    if (t->overlap_ab) train_timing_ab(t, em->ab, em->ab_steps);
    em->backend = backend_name(&t->be), em->comm = comm_backend_name(t->c);
    em->cuda_graph = t->use_graph;
    em->timed_steps = t->timed;
    em->accum_steps = t->K;
    em->allreduces_per_step = e->steps_run > 0 ? (double)t->launches / e->steps_run : 0;
    em->scaling_efficiency = scaling_efficiency(em, bl, &em->efficiency_kind);
    em->eval_set = t->sets && t->n_val_view > 0 ? "val" : "test";
    em->data_wait_s = e->steps_run > 0 ? t->data_wait_s / e->steps_run : 0;
    em->bad_images = t->sets ? train_stream_bad(t) : 0;
    em->precision = precision_name(cfg->precision);
    em->loss_scale = t->ls.scale;
    em->skipped_steps = t->ls.skipped - t->ls_skipped0;
    em->time = wall_s();
}

// The epoch's line (and with --verbose its step-time breakdown) on rank 0, and its metrics record.
static int epoch_report(const trainer *t, int metrics, const epoch_metrics *em) {
    LOG0("epoch %d/%d  loss %.4f acc %.4f | %s loss %.4f acc %.4f | %.2f s %.0f img/s\n", em->epoch,
         t->cfg->epochs, em->train_loss, em->train_acc, em->eval_set, em->test_loss, em->test_acc, em->epoch_s,
         em->images_per_s);
    if (em->bad_images > 0) LOG0("  data: %lld unreadable image(s) skipped so far (data.skip_bad)\n", em->bad_images);
    if (em->skipped_steps > 0)
        LOG0("  fp16 loss scaling: %lld step(s) skipped for NaN/Inf gradients, scale now %g\n", em->skipped_steps,
             em->loss_scale);
    if (t->o->verbose)
        LOG0("  step %.2f ms: fwd %.2f bwd %.2f comm %.2f exposed %.2f (skew %.2f) opt %.2f | %.0f img/s per rank | "
             "efficiency %.3f (%s)\n",
             em->t.step_s * 1e3, em->t.forward_s * 1e3, em->t.backward_s * 1e3, em->t.comm_s * 1e3,
             em->t.exposed_comm_s * 1e3, em->t.skew_s * 1e3, em->t.optimizer_s * 1e3, em->images_per_s_per_rank, em->scaling_efficiency,
             em->efficiency_kind);
    if (t->o->verbose && t->overlap_ab)
        LOG0("  overlap off / on, alternate steps (%d / %d): step %.2f / %.2f ms, bwd %.2f / %.2f, exposed %.3f / %.3f "
             "(skew %.3f / %.3f)\n", em->ab_steps[0], em->ab_steps[1], em->ab[0].step_s * 1e3, em->ab[1].step_s * 1e3,
             em->ab[0].backward_s * 1e3, em->ab[1].backward_s * 1e3, em->ab[0].exposed_comm_s * 1e3,
             em->ab[1].exposed_comm_s * 1e3, em->ab[0].skew_s * 1e3, em->ab[1].skew_s * 1e3);
    // Written now (one write per line), so a full disk shows at this epoch, not at the end of the run.
    if (metrics >= 0 && t->rank == 0) TRY(metrics_write_jsonl(metrics, t->o->metrics_path, em));
    const tb_scalar v[] = {{"epoch/train_loss", em->train_loss},       {"epoch/train_acc", em->train_acc},
                           {"epoch/test_loss", em->test_loss},         {"epoch/test_acc", em->test_acc},
                           {"epoch/images_per_s", em->images_per_s},   {"epoch/lr", em->lr},
                           {"time/step_ms", em->t.step_s * 1e3},      {"time/comm_ms", em->t.comm_s * 1e3},
                           {"time/exposed_comm_ms", em->t.exposed_comm_s * 1e3},
                           {"epoch/scaling_efficiency", em->scaling_efficiency}};
    TRY(tb_scalars(t->tb, em->step, v, (int)(sizeof v / sizeof v[0])));
    return ST_OK;
}

// One epoch after another from the current position: train, sum, evaluate, check the replicas, report, save.
static int run_epochs(trainer *t, const baseline *bl, int metrics, train_result *res) {
    const backend *be = &t->be;
    int32_t *scratch = NULL;
    TRY(backend_alloc(be, (void **)&scratch, sizeof(int32_t)));
    int st = ST_OK;
    // The divergence check reads gradients back to the host midway through a step: every step on the CPU
    // (free), every 50 on a GPU or with a graph (those steps run op by op, not from the graph).
    int check_every = t->async_backend || t->use_graph ? 50 : 1;
    long long steps_here = 0;  // steps this process has run (the ETA's pace)
    const long long max_steps = t->o->max_steps;
    // Resumed at or past the end (a finished run requeued, --epochs lowered): nothing to train, nothing saved.
    if (t->epoch >= t->cfg->epochs || (max_steps > 0 && t->global_step >= max_steps)) {
        res->nothing_left = 1;
        res->epoch = t->epoch;
    }
    for (; t->epoch < t->cfg->epochs && st == ST_OK && !res->nothing_left; t->epoch++) {
        // --steps reached at an epoch's end: that epoch's checkpoint (with its test figures) is the last one.
        if (max_steps > 0 && t->global_step >= max_steps && t->step_in_epoch == 0) break;
        epoch_totals e = {0};
        if ((st = epoch_begin(t))) break;
        if ((st = epoch_train(t, scratch, check_every, &steps_here, res->train_s, &e))) break;
        if (t->o->progress && t->rank == 0 && !g_quiet) printf("\r%*s\r", 90, "");
        res->train_s += e.epoch_s;
        if ((st = epoch_train_sums(t, &e))) break;
        if ((st = train_timing_skew(t))) break;
        if (e.stopped) {
            st = epoch_stopped(t, &e);
            break;
        }
        if ((st = epoch_evaluate(t, &e))) break;
        test_hooks_stall(t->hooks, t->rank, "replicas");
        if ((st = train_replicas_check(t))) break;
        epoch_metrics em;
        epoch_figures(t, bl, &e, &em);
        if ((st = epoch_report(t, metrics, &em))) break;
        res->epochs_done++;
        res->train_loss = em.train_loss, res->test_loss = e.test_loss, res->test_acc = e.test_acc;
        t->step_in_epoch = 0;
        t->loss_carry = t->correct_carry = 0;
        if (t->o->save_path) {
            t->epoch++;  // the checkpoint's position is the start of the next epoch
            st = train_ckpt_save_epoch(t, e.test_loss, e.test_acc);
            t->epoch--;
        }
    }
    // With a validation set the epochs measured on it; the test set is measured once, at the end.
    if (st == ST_OK && t->sets && t->n_val_view > 0 && res->epochs_done > 0) {
        double ev0 = now_s();
        st = train_state_broadcast(t);
        if (st == ST_OK) st = train_evaluate(t, 0, &res->test_loss, &res->test_acc);
        if (st == ST_OK)
            LOG0("final test: loss %.4f acc %.4f (%d images, %.2f s)\n", res->test_loss, res->test_acc, t->test.n,
                 now_s() - ev0);
    }
    if (st == ST_OK && t->sets) train_stream_report(t);
    backend_free(be, scratch);
    res->steps = t->global_step;
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Entry

// A stop signal that came during start-up (loading data, building the model): ranks agree, and the run ends
// before its first step with exit 5 (nothing trained, nothing saved).
static int startup_stop_check(trainer *t) {
    int32_t stop = g_stop_requested ? 1 : 0;
    if (t->world > 1) TRY(comm_allreduce_max_i32(t->c, &stop, 1));
    if (!stop) return ST_OK;
    int st = ERR(ST_INTERRUPTED, "stopped by signal during start-up, before step %lld (nothing trained or saved)",
                 t->global_step + 1);
    err_mark_collective(0);
    return st;
}

int train_run(const net_config *cfg, const train_opts *o, comm *c, train_result *res) {
    memset(res, 0, sizeof *res);
    trainer *t = NULL;
    TRY(train_state_new(cfg, o, c, &t));
    const comm_info *ci = comm_get_info(c);
    baseline bl = {0};
    int metrics = -1;
    int st = train_agree(t, setup(t, &bl));
    if (st == ST_OK && t->world > 1) st = train_data_agree(t);
    if (st == ST_OK && t->use_comm) st = train_agree(t, train_ddp_start(t));
    if (st == ST_OK && o->metrics_path && t->rank == 0) st = metrics_open(o->metrics_path, o->resume_path != NULL, &metrics);
    if (st == ST_OK && o->metrics_path && t->rank == 0) st = metrics_steps_path(o->metrics_path, t->steps_path, sizeof t->steps_path);
    if (st == ST_OK && o->metrics_path && t->rank == 0) st = metrics_open(t->steps_path, o->resume_path != NULL, &t->steps_fd);
    if (st == ST_OK && o->trace_dir) st = trace_open(&t->tr, o->trace_dir, t->rank, ci->host);
    if (st == ST_OK && o->tensorboard_dir && t->rank == 0) st = tb_open(&t->tb, o->tensorboard_dir, ci->host);
    st = train_agree(t, st);  // every rank is here with an agreed status, so this collective is safe
    if (st == ST_OK && t->tr) st = train_agree(t, train_trace_setup(t));
    if (st == ST_OK) st = startup_stop_check(t);
    if (st == ST_OK) {
        LOG0("ddp-cnn %s: %s backend, %d rank(s) x batch %d = global batch %d (%s scaling), %zu parameters, "
             "%d steps/epoch, %d bucket(s) of %d KiB, overlap %s, comm %s%s\n",
             DDP_VERSION, backend_name(&t->be), t->world, t->B, t->G,
             cfg->scaling == SCALING_STRONG ? "strong" : "weak", t->m.n_params, t->steps_per_epoch, t->use_comm ? t->n_buckets : 0, t->cfg->bucket_kb,
             t->overlap_ab ? "alternating" : t->overlap ? "on" : "off", comm_backend_name(c), t->use_graph ? ", CUDA graph" : "");
        if (o->verbose) {  // where a rank's memory goes (activations grow with the batch, the rest with the model)
            const double mib = 1024.0 * 1024.0, p = (double)t->m.n_params * sizeof(float) / mib;
            LOG0("memory per rank: parameters %.1f MiB, gradients %.1f, optimizer state %.1f, activations and their "
                 "gradients %.1f for batches of up to %d (%.2f MiB per image), workspace %.1f\n", p, p,
                 p * optim_n_state(&t->opt), (double)t->m.act_bytes / mib, t->m.max_batch,
                 (double)t->m.act_bytes / mib / t->m.max_batch, (double)t->m.workspace_bytes / mib);
        }
        st = run_epochs(t, &bl, metrics, res);
    }
    if (metrics >= 0 && close(metrics) != 0 && st == ST_OK)
        st = ERR(ST_RUNTIME, "%s: error writing metrics: %s", o->metrics_path, strerror(errno));
    if (t->steps_fd >= 0 && close(t->steps_fd) != 0 && st == ST_OK)
        st = ERR(ST_RUNTIME, "%s: error writing metrics: %s", t->steps_path, strerror(errno));
    t->steps_fd = -1;
    const int tb_st = tb_close(t->tb);
    t->tb = NULL;
    if (st == ST_OK) st = tb_st;
    // A failure of this rank's own (a watchdog timeout, a dead peer) may leave collectives in flight on the
    // device that wait for the peer: retire the communicator before anything below frees or syncs device memory.
    if (st != ST_OK && !err_collective() && t->use_comm) comm_stop(c);
    int trace_st = trace_close(t->tr);  // also after a failure: the timeline up to it is what one wants to see
    if (st == ST_OK) st = trace_st;
    if (st == ST_OK && o->keep_params) {
        res->n_params = t->m.n_params;
        res->params = malloc(t->m.n_params * sizeof(float));
        if (!res->params) st = ERR(ST_RUNTIME, "out of host memory");
        else st = backend_download(&t->be, res->params, t->m.params, t->m.n_params * sizeof(float));
    }
    test_hooks_stall(t->hooks, t->rank, "end");
    train_state_free(t);
    return st;
}
