// train_stream.c — streamed data sets (data.format=folder|list): the image sets (training, validation, test), the
// loaders that decode them batch by batch, and the staged batch in backend memory that the step's gather reads.
//
// The in-memory formats (idx, cifar10) gather a batch from the whole set in backend memory by index. A streamed
// set instead has the loader write the step's K x B samples (decoded, cropped, flipped: src/image.h) into pinned
// host memory; stage_upload copies them into a fixed staging buffer, and the gather reads it with the identity
// index. So the step (and a captured graph of it) is the same code, the draws depend on (seed, epoch, sample
// index) only, and memory does not grow with the data set.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "train_state.h"

// ---------------------------------------------------------------------------------------------------------
// Set-up

static int set_load(const net_config *cfg, int which, const image_set *train, image_set *out) {
    const char *dirs[3] = {cfg->train_dir, cfg->val_dir, cfg->test_dir};
    const char *lists[3] = {cfg->train_list, cfg->val_list, cfg->test_list};
    const char *shards[3] = {cfg->train_shards, cfg->val_shards, cfg->test_shards};
    if (cfg->data_format == DATA_SHARDS)
        return image_set_shards(shards[which], cfg->names[0] ? cfg->names : NULL, cfg->classes, out);
    if (cfg->data_format == DATA_FOLDER)
        return image_set_folder(dirs[which], train ? train->class_names : NULL, train ? train->classes : 0, out);
    return image_set_list(lists[which], cfg->names[0] ? cfg->names : NULL, cfg->classes, out);
}

// The number of decode threads: data.workers, or a share of this rank's cores (CPU backend: half of them, the
// other half computes; a GPU rank: all but one, which issues the steps).
static int workers_default(const trainer *t) {
    if (t->cfg->workers > 0) return t->cfg->workers;
    const comm_info *ci = comm_get_info(t->c);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int share = (int)(cores / (ci->local_world > 0 ? ci->local_world : 1));
    int w = backend_uses_host_cores(t->cfg->backend) ? share / 2 : share - 1;
    return w < 1 ? 1 : w;
}

// The loader's batches in the backend's host memory (pinned for a GPU). Called on the main thread (loader_create).
static void *stage_alloc(void *arg, size_t bytes) {
    void *p = NULL;
    return backend_host_alloc((const backend *)arg, &p, bytes) == ST_OK ? p : NULL;
}

static void stage_free(void *arg, void *p) { backend_host_free((const backend *)arg, p); }

static int loader_make(trainer *t, const image_set *set, int batch, loader **out) {
    const net_config *cfg = t->cfg;
    loader_opts o = {
        .set = set,
        .tf = {.channels = cfg->channels,
               .out_h = cfg->height,
               .out_w = cfg->width,
               .max_pixels = cfg->max_pixels,
               .dct_scaling = cfg->dct_scaling,
               .rrc = cfg->random_resized_crop,
               .resize = cfg->resize,
               .flip = cfg->flip,
               .crop_pad = cfg->crop_pad,
               .seed = cfg->seed},
        .workers = t->data_workers,
        .prefetch = cfg->prefetch,
        .batch = batch,
        .skip_bad = cfg->skip_bad,
        .max_bad = cfg->max_bad,
        .max_file_bytes = (uint64_t)1 << 31,
        .host_alloc = stage_alloc,
        .host_free = stage_free,
        .alloc_arg = &t->be,
    };
    TRY(config_rrc_ranges(cfg, o.tf.rrc_scale, o.tf.rrc_ratio));
    return loader_create(out, &o);
}

// val_fraction: a deterministic split of the training set (from net.seed, the same on every rank and run): the
// first round(n * f) of a permutation are held out, each part in the set's order.
static int split_setup(trainer *t) {
    const int n = t->sets[0].n;
    const int n_val = (int)(n * t->cfg->val_fraction + 0.5);
    if (n_val < 1) return ST_OK;
    if (n - n_val < 1)
        return ERR(ST_INPUT, "%s: [data] val_fraction=%g leaves no training image of %d", t->cfg->path,
                   t->cfg->val_fraction, n);
    int32_t *perm = malloc((size_t)n * sizeof *perm);
    unsigned char *held = calloc((size_t)n, 1);
    t->train_map = malloc((size_t)(n - n_val) * sizeof *t->train_map);
    t->val_map = malloc((size_t)n_val * sizeof *t->val_map);
    int st = perm && held && t->train_map && t->val_map ? ST_OK : ERR(ST_RUNTIME, "out of host memory");
    if (st == ST_OK) {
        data_permutation(t->cfg->seed ^ 0x76616c6964617465ull, 0, n, perm);  // "validate"
        for (int i = 0; i < n_val; i++) held[perm[i]] = 1;
        int a = 0, b = 0;
        for (int i = 0; i < n; i++) {
            if (held[i]) t->val_map[b++] = i;
            else t->train_map[a++] = i;
        }
        t->n_train_view = n - n_val, t->n_val_view = n_val;
    }
    free(perm);
    free(held);
    return st;
}

// The staged evaluation batch and its loader over sets[2] (batches of eb); h_perm sized for `most` indices.
static int eval_staging(trainer *t, int eb, int most) {
    const backend *be = &t->be;
    t->sample_elems = t->cfg->channels * t->cfg->height * t->cfg->width;
    TRY(backend_mark_create(be, &t->mk_stage));
    TRY(backend_mark_record(be, t->mk_stage));
    t->eval_cap = eb;
    TRY(loader_make(t, &t->sets[2], eb, &t->ld_eval));
    t->ld_eval_set = &t->sets[2];
    TRY(backend_alloc(be, (void **)&t->d_test_x, (size_t)eb * t->sample_elems));
    TRY(backend_alloc(be, (void **)&t->d_test_y, (size_t)eb * sizeof(int32_t)));
    TRY(backend_alloc(be, (void **)&t->d_test_index, (size_t)eb * sizeof(int32_t)));
    if (most < eb) most = eb;
    t->h_perm = malloc((size_t)most * sizeof(int32_t));
    TRY_ALLOC(t->h_perm);
    for (int i = 0; i < eb; i++) t->h_perm[i] = i;
    return backend_upload(be, t->d_test_index, t->h_perm, (size_t)eb * sizeof(int32_t));
}

int train_stream_setup(trainer *t, int training) {
    const net_config *cfg = t->cfg;
    t->sets = calloc(3, sizeof *t->sets);
    TRY_ALLOC(t->sets);
    TRY(set_load(cfg, 0, NULL, &t->sets[0]));
    if (cfg->data_format == DATA_FOLDER && t->sets[0].classes != cfg->classes)
        return ERR(ST_INPUT, "%s has %d class director%s but %s net.classes=%d", t->sets[0].origin, t->sets[0].classes,
                   t->sets[0].classes == 1 ? "y" : "ies", cfg->path, cfg->classes);
    const char *val = cfg->data_format == DATA_FOLDER ? cfg->val_dir
                      : cfg->data_format == DATA_SHARDS ? cfg->val_shards : cfg->val_list;
    if (training && val[0]) TRY(set_load(cfg, 1, &t->sets[0], &t->sets[1]));
    TRY(set_load(cfg, 2, &t->sets[0], &t->sets[2]));
    // train_limit / test_limit: the first N samples, as for the in-memory formats
    if (cfg->train_limit > 0 && cfg->train_limit < t->sets[0].n) t->sets[0].n = cfg->train_limit;
    if (cfg->test_limit > 0 && cfg->test_limit < t->sets[2].n) t->sets[2].n = cfg->test_limit;
    t->n_train_view = t->sets[0].n;
    if (training && cfg->val_fraction > 0) TRY(split_setup(t));
    t->n_val_view = t->val_map ? t->n_val_view : t->sets[1].n;

    t->data_workers = workers_default(t);
    // the larger of the sets evaluated (validation each epoch, test at the end)
    const int n_eval = t->n_val_view > t->sets[2].n ? t->n_val_view : t->sets[2].n;
    TRY(eval_staging(t, data_eval_batch(n_eval, t->world, cfg->eval_batch), t->n_train_view));
    if (!training) return ST_OK;
    const backend *be = &t->be;

    const int kb = t->K * t->B;
    TRY(loader_make(t, &t->sets[0], kb, &t->ld_train));
    TRY(backend_alloc(be, (void **)&t->d_train_x, (size_t)kb * t->sample_elems));
    TRY(backend_alloc(be, (void **)&t->d_train_y, (size_t)kb * sizeof(int32_t)));
    LOG0("data: %s: %d training images (%d classes)%s%s, %d test images; %d decode thread(s) per rank, %d batch(es) "
         "ahead\n", t->sets[0].origin, t->n_train_view, t->sets[0].classes, t->n_val_view ? ", validation " : "",
         t->n_val_view ? (t->val_map ? "held out by val_fraction" : t->sets[1].origin) : "", t->sets[2].n,
         t->data_workers, cfg->prefetch);
    return ST_OK;
}

int train_stream_predict_setup(trainer *t, const char *const *paths, int n_paths) {
    t->sets = calloc(3, sizeof *t->sets);
    TRY_ALLOC(t->sets);
    TRY(image_set_inputs(paths, n_paths, &t->sets[2]));
    t->data_workers = workers_default(t);
    return eval_staging(t, data_eval_batch(t->sets[2].n, 1, t->cfg->eval_batch), 0);
}

// ---------------------------------------------------------------------------------------------------------
// Sequences and staged batches

// shards with shuffle_buffer = S > 0, WebDataset's way: the shards in a per-epoch order (seed, epoch), shard k of
// that order read by rank k mod world, each shard's samples in their order (held-out ones skipped) through a buffer
// of S samples: once it is full, each new sample takes the place of a random one, which goes out; at the end the
// buffer empties in random order. A sample thus moves at most about S places, and the order depends on the number
// of ranks. Each rank produces the epoch's steps x K x B samples, reading its shards again from the first when they
// hold fewer (as WebDataset's resampled epochs do; a rank whose shards hold more leaves their last ones out). Drawn from (seed, epoch, rank) only, so a resumed epoch is the
// same: the whole epoch is generated, and the steps done skipped.
static uint64_t stream_rand(uint64_t *ctr, uint64_t key) { return gather_aug_mix(key ^ gather_aug_mix((*ctr)++)); }

static int shard_sequence(trainer *t, int32_t *out, size_t need) {
    const image_set *s = &t->sets[0];
    const int ns = s->n_shards, S = t->cfg->shuffle_buffer;
    int32_t *order = malloc((size_t)ns * sizeof *order), *buf = malloc((size_t)S * sizeof *buf);
    unsigned char *held = t->val_map ? calloc((size_t)s->n, 1) : NULL;
    if (!order || !buf || (t->val_map && !held)) {
        free(order), free(buf), free(held);
        return ERR(ST_RUNTIME, "out of host memory for the shard order");
    }
    for (int i = 0; t->val_map && i < t->n_val_view; i++) held[t->val_map[i]] = 1;
    data_permutation(t->cfg->seed ^ 0x7368617264736f72ull, t->epoch, ns, order);  // "shardsor"
    const uint64_t key = gather_aug_hash(t->cfg->seed ^ 0x6275666665727321ull, t->epoch, t->rank);  // "buffers!"
    uint64_t ctr = 0;
    size_t got = 0;
    int fill = 0, any = 0;
    while (got < need) {
        int mine = 0;
        for (int k = t->rank; k < ns && got < need; k += t->world) {
            const int sh = order[k];
            mine = 1;
            for (uint32_t i = s->shard_first[sh]; i < s->shard_first[sh + 1] && got < need && (int)i < s->n; i++) {
                if (held && held[i]) continue;
                any = 1;
                if (fill < S) {
                    buf[fill++] = (int32_t)i;
                    continue;
                }
                const int r = (int)(stream_rand(&ctr, key) % (uint64_t)S);
                out[got++] = buf[r];
                buf[r] = (int32_t)i;
            }
        }
        if (!mine || !any) {  // fewer shards than ranks, or only held-out samples in this rank's shards
            free(order), free(buf), free(held);
            return ERR(ST_INPUT, "%s: %d shard(s) for %d ranks: rank %d has no training sample in epoch %d (more "
                                 "shards than ranks are needed)", t->cfg->train_shards, ns, t->world, t->rank,
                       t->epoch + 1);
        }
        while (got < need && fill > 0) {  // the shards are done: the buffer empties in random order
            const int r = (int)(stream_rand(&ctr, key) % (uint64_t)fill);
            out[got++] = buf[r];
            buf[r] = buf[--fill];
        }
    }
    free(order), free(buf), free(held);
    return ST_OK;
}

// The epoch's remaining steps (from t->step_in_epoch) of this rank, in order: micro-batch j of step s is the
// global batch s K + j of the epoch's order (h_perm, over the training view), as the in-memory path.
int train_stream_epoch(trainer *t) {
    const int kb = t->K * t->B, steps = t->steps_per_epoch - t->step_in_epoch;
    if (steps <= 0) return ST_OK;
    const size_t n = (size_t)steps * kb;
    const size_t whole = (size_t)t->steps_per_epoch * kb;
    const size_t cap = t->cfg->shuffle_buffer ? whole : n;
    if (cap > t->seq_cap) {
        int32_t *p = realloc(t->h_seq, cap * sizeof *p);
        TRY_ALLOC(p);
        t->h_seq = p, t->seq_cap = cap;
    }
    if (t->cfg->shuffle_buffer) {
        TRY(shard_sequence(t, t->h_seq, whole));
        return loader_start(t->ld_train, 1, t->epoch, t->h_seq + (whole - n), (long long)n, kb);
    }
    for (int s = 0; s < steps; s++)
        for (int j = 0; j < t->K; j++) {
            const int32_t *idx = data_shard_batch(t->h_perm, (t->step_in_epoch + s) * t->K + j, t->B, t->world, t->rank);
            int32_t *dst = t->h_seq + (size_t)s * kb + (size_t)j * t->B;
            for (int i = 0; i < t->B; i++) dst[i] = t->train_map ? t->train_map[idx[i]] : idx[i];
        }
    return loader_start(t->ld_train, 1, t->epoch, t->h_seq, (long long)n, kb);
}

// The loader's next batch into backend memory (x, y). The host batch it replaces is released by loader_next, so
// the previous copy must be done first (its mark); on the CPU it always is. Training batches' waits count in
// t->data_wait_s (the metrics' data_wait_s); evaluation's do not.
static int stage_next(trainer *t, loader *l, uint8_t *x, int32_t *y, int want, const int32_t **h_labels) {
    TRY(train_mark_wait(t, t->mk_stage));
    const double t0 = now_s();
    const uint8_t *hx;
    const int32_t *hy;
    int n = 0;
    const int st = loader_next(l, &hx, &hy, &n);
    if (l == t->ld_train) t->data_wait_s += now_s() - t0;
    TRY(st);
    if (n != want) return ERR(ST_RUNTIME, "loader: a batch of %d samples where %d were due", n, want);
    TRY(backend_stage_upload(&t->be, x, hx, (size_t)n * t->sample_elems, t->mk_stage));
    TRY(backend_stage_upload(&t->be, y, hy, (size_t)n * sizeof(int32_t), t->mk_stage));
    if (h_labels) *h_labels = hy;
    return ST_OK;
}

int train_stream_step(trainer *t) {
    return stage_next(t, t->ld_train, t->d_train_x, t->d_train_y, t->K * t->B, NULL);
}

// Evaluation over this rank's samples [begin, end) of the evaluated set (validation when there is one and
// `val`, else test), in batches of eb.
int train_stream_eval_start(trainer *t, int val, int begin, int end, int eb) {
    const int32_t *map = val ? t->val_map : NULL;
    const image_set *set = val && !map ? &t->sets[1] : &t->sets[val ? 0 : 2];
    if (!t->ld_eval_set || t->ld_eval_set != set) {  // the evaluation loader reads one set; another needs its own
        loader_destroy(t->ld_eval);
        t->ld_eval = NULL;
        TRY(loader_make(t, set, t->eval_cap, &t->ld_eval));
    }
    t->ld_eval_set = set;
    const int n = end - begin;
    if ((size_t)n > t->seq_cap) {
        int32_t *p = realloc(t->h_seq, (size_t)(n ? n : 1) * sizeof *p);
        TRY_ALLOC(p);
        t->h_seq = p, t->seq_cap = (size_t)(n ? n : 1);
    }
    for (int i = 0; i < n; i++) t->h_seq[i] = map ? map[begin + i] : begin + i;
    // eb beyond the loader's batches only happens when this rank's whole range fits in one of them
    return loader_start(t->ld_eval, 0, 0, t->h_seq, n, eb < t->eval_cap ? eb : t->eval_cap);
}

int train_stream_eval_batch(trainer *t, int n, const int32_t **h_labels) {
    return stage_next(t, t->ld_eval, t->d_test_x, t->d_test_y, n, h_labels);
}

// Samples in the evaluated set (see train_stream_eval_start).
int train_stream_eval_n(const trainer *t, int val) {
    return val ? t->n_val_view : t->sets[2].n;
}

// Every rank's line (it is a per-rank fact): the training images this rank read, of how many, so a job log shows
// that each rank read only its share.
void train_stream_report(trainer *t) {
    if (!t->ld_train || g_quiet) return;
    long long reads = 0, distinct = 0;
    loader_reads(t->ld_train, &reads, &distinct);
    printf("data: rank %d (%s) read %lld training image files (%lld distinct) of %d\n", t->rank, g_host, reads, distinct,
           t->n_train_view);
    fflush(stdout);
}

// Bad images skipped so far (data.skip_bad), training and evaluation loaders together.
long long train_stream_bad(const trainer *t) {
    return (t->ld_train ? loader_bad_count(t->ld_train) : 0) + (t->ld_eval ? loader_bad_count(t->ld_eval) : 0);
}
