// train_setup.c — what training and using a model (--eval, --predict) both set up and run: the backend with
// this rank's cores or GPU and the step's marks, the [data] augmentation's gather parameters, the test set in
// backend memory, the evaluation over the ranks (with --eval's confusion matrix and the logits on the host),
// the parameters' finiteness check, and the message of a use stopped by a signal.
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "augment.h"
#include "common.h"
#include "placement.h"
#include "precision.h"
#include "train_state.h"

// ---------------------------------------------------------------------------------------------------------
// Set-up

// The test set (or --predict's images) into backend memory, with the identity index evaluation gathers by.
// [data] augmentation as gather parameters in backend memory: normalisation for evaluation (and predict), crop,
// flip and normalisation for training batches. Left NULL when off, so such runs gather exactly as before.
int train_augment_setup(trainer *t, int training) {
    const backend *be = &t->be;
    gather_aug eval;
    int active = 0;
    TRY(augment_params(t->cfg, 0, &eval, &active));
    // An NHWC backend's gather needs the sample's shape, which only the parameters carry (backend_ops.def): they
    // are passed with every transform off too, the plain gather's values.
    const int nhwc = backend_is_nhwc(be);
    if (active || nhwc) {
        TRY(backend_alloc(be, (void **)&t->d_aug_eval, sizeof eval));
        TRY(backend_upload(be, t->d_aug_eval, &eval, sizeof eval));
    }
    if (!training) return ST_OK;
    TRY(augment_params(t->cfg, 1, &t->h_aug_train, &active));
    if (active || nhwc) {
        TRY(backend_alloc(be, (void **)&t->d_aug_train, sizeof t->h_aug_train));
        TRY(backend_upload(be, t->d_aug_train, &t->h_aug_train, sizeof t->h_aug_train));
    }
    return ST_OK;
}

int train_test_upload(trainer *t) {
    const backend *be = &t->be;
    t->sample_elems = t->cfg->channels * t->cfg->height * t->cfg->width;
    size_t ex = (size_t)t->test.n * t->sample_elems;
    TRY(backend_alloc(be, (void **)&t->d_test_x, ex ? ex : 1));
    TRY(backend_alloc(be, (void **)&t->d_test_y, (t->test.n ? (size_t)t->test.n : 1) * sizeof(int32_t)));
    if (t->test.n) {
        TRY(backend_upload(be, t->d_test_x, t->test.images, ex));
        TRY(backend_upload(be, t->d_test_y, t->test.labels, (size_t)t->test.n * sizeof(int32_t)));
    }
    TRY(backend_alloc(be, (void **)&t->d_test_index, (size_t)(t->test.n ? t->test.n : 1) * sizeof(int32_t)));
    int most = t->train.n > t->test.n ? t->train.n : t->test.n;
    t->h_perm = malloc((size_t)(most ? most : 1) * sizeof(int32_t));
    TRY_ALLOC(t->h_perm);
    for (int i = 0; i < t->test.n; i++) t->h_perm[i] = i;
    if (t->test.n) TRY(backend_upload(be, t->d_test_index, t->h_perm, (size_t)t->test.n * sizeof(int32_t)));
    return ST_OK;
}

// Evaluation never needs a batch larger than this rank's share of the test set (data_eval_range gives at most
// ceil(n / world) samples), so eval_batch=30000 with 500 test samples allocates for 500.
int train_eval_batch_capped(const trainer *t) { return data_eval_batch(t->test.n, t->world, t->cfg->eval_batch); }

// The backend with this rank's share of the host's cores (CPU) or its GPU, and the step's timing marks.
int train_backend_setup(trainer *t) {
    const net_config *cfg = t->cfg;
    const comm_info *ci = comm_get_info(t->c);
    int threads = cfg->threads;
    if (backend_uses_host_cores(cfg->backend)) {
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
    TRY(placement_device(ci, cfg->backend, t->hooks->fake_gpus, &device));  // node-local rank -> GPU
    // tf32=1 without CUDA is an error; deterministic=1 on the CPU changes nothing (it is deterministic already).
    // net.precision=tf32 is tf32=1 on the GPU and fp32 on the CPU (docs/precision.md).
    const int tf32 = cfg->tf32 || (cfg->precision == PREC_TF32 && strcmp(cfg->backend, "cuda") == 0);
    // precision=bf16 with compress=bf16: backward writes the parameter gradients in bf16 and the buckets go on the
    // wire as they are (no cast pass). Not with accumulation, whose micro-batches sum their gradients in float32.
    const int grads16 = cfg->precision == PREC_BF16 && cfg->compress == COMPRESS_BF16 && t->use_comm && t->K == 1 &&
                        !t->hooks->grads32;
    // net.act_storage: activations in 16-bit buffers of the compute type (auto: on a GPU; the CPU's conversions cost
    // a pass per operand for the same values).
    const int lowp = cfg->precision == PREC_BF16 || cfg->precision == PREC_FP16;
    const int act16 = lowp && (cfg->act_storage == ACT_STORE_COMPUTE ||
                               (cfg->act_storage == ACT_STORE_AUTO && !backend_uses_host_cores(cfg->backend)))
                          ? cfg->precision
                          : 0;
    const backend_options opt = {.threads = threads, .device = device, .tf32 = tf32,
                                 .deterministic = cfg->deterministic, .precision = cfg->precision,
                                 .layout = cfg->layout, .grads16 = grads16, .act16 = act16};
    TRY(backend_create(&t->be, cfg->backend, &opt));
    // Test aid (graph tests, src/test_hooks.h): the test build's wrapper emulates CUDA stream capture on the CPU
    // backend, or refuses every capture (the fall-back to op-by-op steps). The release trainer has no wrapper.
    if (t->hooks->cpu_graph != TEST_CPU_GRAPH_OFF && t->hooks->wrap_backend && !backend_can_capture(&t->be))
        TRY(t->hooks->wrap_backend(&t->be, t->hooks->cpu_graph));
    t->async_backend = backend_is_async(&t->be);
    t->timing_every = t->async_backend ? TIMING_EVERY_ASYNC : 1;
    for (int k = 0; k < MK_N; k++) TRY(backend_mark_create(&t->be, &t->mk[k]));
    TRY(backend_mark_create(&t->be, &t->mk_sync));
    for (int k = 0; k <= AHEAD; k++) TRY(backend_mark_create(&t->be, &t->mk_ahead[k]));
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Finiteness and stops

int train_use_stopped(const trainer *t, int done, int total) {
    int st = ERR(ST_INTERRUPTED, "%s stopped by signal after about %d of %d images; nothing written",
                 t->o->eval_path ? "--eval" : "--predict", done < total ? done : total, total);
    err_mark_collective(0);
    return st;
}

int train_params_check(trainer *t) {
    TRY(train_drain(t));
    const backend *be = &t->be;
    int32_t bad = 0;
    TRY(backend_download(be, &bad, t->d_param_bad, sizeof bad));
    if (!bad) return ST_OK;
    const char *layer = "?";
    int in_layer = 0;
    for (int i = t->m.n_layers - 1; i >= 0 && !in_layer; i--) {
        const model_layer *l = &t->m.layers[i];
        if (!l->n_w) continue;
        TRY(backend_count_nonfinite(be, l->n_w + l->n_b, t->m.params + l->w_off, t->d_param_bad + 1));
        TRY(backend_download(be, &in_layer, t->d_param_bad + 1, sizeof in_layer));
        if (in_layer) layer = l->name;
    }
    char kept[CFG_PATH_MAX + 64] = "";
    if (t->o->save_path) snprintf(kept, sizeof kept, "; %s was not replaced", t->o->save_path);
    int st = ERR(ST_DIVERGED, "training diverged %s step %lld (epoch %d): the update left %d non-finite parameter "
                              "values, %d in layer '%s' (lower the learning rate)%s",
                 t->async_backend ? "by" : "at", t->global_step, t->epoch + 1, bad, in_layer, layer, kept);
    err_mark_collective(0);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Evaluation

// The test loss is a double sum in a fixed order: per sample within a batch (softmax_xent), batch after batch
// over this rank's range, then over ranks (one all-reduce). So the same checkpoint, eval_batch, world size and
// backend (CPU: also threads, which fix the GEMMs' order) give the same bits: --eval equals the epoch's figures.
int train_evaluate(trainer *t, int val, double *loss, double *acc) {
    const backend *be = &t->be;
    TRY(backend_zero(be, t->m.loss_acc, sizeof(double)));
    TRY(backend_zero(be, t->m.correct_acc, sizeof(int32_t)));
    const int total = t->sets ? train_stream_eval_n(t, val) : t->test.n;
    int begin, end;
    data_eval_range(total, t->world, t->rank, &begin, &end);
    int eb = t->cfg->eval_batch < t->m.max_batch ? t->cfg->eval_batch : t->m.max_batch;
    // --eval stops between batches on a signal, every rank at the same batch: the ranks' shares differ by one
    // sample at most, so every rank loops over the largest share's batch count.
    const int stoppable = t->o->eval_path != NULL;
    const int shard_max = (total + t->world - 1) / t->world;
    const int batches = stoppable ? (shard_max + eb - 1) / eb : (end - begin + eb - 1) / eb;
    if (t->sets) TRY(train_stream_eval_start(t, val, begin, end, eb));
    for (int b = 0; b < batches; b++) {
        if (stoppable) {
            int32_t stop = g_stop_requested ? 1 : 0;
            if (t->world > 1) TRY(comm_allreduce_max_i32(t->c, &stop, 1));
            if (stop) return train_use_stopped(t, b * eb * t->world, total);
        }
        const int i = begin + b * eb;
        if (i >= end) continue;
        int n = end - i < eb ? end - i : eb;
        // in memory: the test set by index; streamed: the loader's batch, staged, read in order
        const int32_t *idx = t->d_test_index + i, *labels = t->test.labels ? t->test.labels + i : NULL;
        if (t->sets) {
            TRY(train_stream_eval_batch(t, n, &labels));
            idx = t->d_test_index;
        }
        TRY(backend_gather(be, t->d_test_x, t->d_test_y, idx, n, t->sample_elems, t->d_aug_eval, t->m.x, t->m.labels));
        TRY(model_forward(&t->m, n, 0));
        if (t->confusion) TRY(train_confusion_add(t, labels, n));
    }
    // Each rank's counts, summed: whole numbers, exact in a double.
    if (t->confusion) TRY(comm_allreduce_sum_f64(t->c, t->confusion, t->m.classes * t->m.classes));
    double sums[2];
    int32_t correct = 0;
    TRY(backend_download(be, &sums[0], t->m.loss_acc, sizeof(double)));
    TRY(backend_download(be, &correct, t->m.correct_acc, sizeof(int32_t)));
    sums[1] = correct;
    TRY(comm_allreduce_sum_f64(t->c, sums, 2));
    *loss = total ? sums[0] / total : 0;
    *acc = total ? sums[1] / total : 0;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Logits on the host (--eval's confusion matrix, --predict's rows)

// The logits of the last forward's n samples on the host (the [dense] before [softmax] holds them).
int train_logits_download(trainer *t, int n) {
    const model_layer *last = &t->m.layers[t->m.n_layers - 2];
    const size_t count = (size_t)n * t->m.classes;
    if (!t->m.act16) return backend_download(&t->be, t->h_logits, last->y, count * sizeof(float));
    // 16-bit logits: their bits into the upper half of the host buffer, then widened in place from the front
    uint16_t *h16 = (uint16_t *)(t->h_logits + count) - count;
    TRY(backend_download(&t->be, h16, last->y, count * sizeof(uint16_t)));
    for (size_t i = 0; i < count; i++) t->h_logits[i] = precision_from16(t->m.act16, h16[i]);
    return ST_OK;
}

// The class a row of logits predicts: the first largest, as softmax_xent counts a correct prediction (CPU and
// CUDA alike), so the confusion matrix's diagonal is the accuracy's count.
int train_logits_argmax(const float *z, int classes) {
    int best = 0;
    for (int k = 1; k < classes; k++)
        if (z[k] > z[best]) best = k;
    return best;
}

// --eval: n test samples with these labels just went forward; count them as (true class, predicted class).
int train_confusion_add(trainer *t, const int32_t *labels, int n) {
    TRY(train_logits_download(t, n));
    const int k = t->m.classes;
    for (int j = 0; j < n; j++) {
        int truth = labels[j], pred = train_logits_argmax(t->h_logits + (size_t)j * k, k);
        t->confusion[(size_t)truth * k + pred] += 1;
    }
    return ST_OK;
}
