// train_state.c — the trainer's state and what every trainer file shares about it: the struct's life (new,
// free), its host copy (parameters and optimizer state) and the hashes of data and replicas, and the agreement
// of a set-up status over the ranks. Below every other train_*.c file: it calls none of them.
#include "train_state.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

volatile sig_atomic_t g_stop_requested = 0;

// FNV-1a, 64 bits: the data and replica hashes.
uint64_t train_fnv1a(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

// Params, then each optimizer state, on the host (malloc'd): what a checkpoint saves and the replica check hashes.
int train_host_state(const trainer *t, float **out) {
    int n_states = optim_n_state(&t->opt);
    size_t n = t->m.n_params;
    float *host = malloc((size_t)(n_states + 1) * n * sizeof(float));
    TRY_ALLOC(host);
    int st = backend_download(&t->be, host, t->m.params, n * sizeof(float));
    for (int s = 0; s < n_states && st == ST_OK; s++) {
        const char *name;
        st = backend_download(&t->be, host + (size_t)(s + 1) * n, optim_state(&t->opt, s, &name),
                              n * sizeof(float));
    }
    if (st != ST_OK) {
        free(host);
        return st;
    }
    *out = host;
    return ST_OK;
}

// The inverse of train_host_state: params, then each optimizer state, from `host` into backend memory.
int train_host_state_upload(trainer *t, const float *host) {
    const size_t n = t->m.n_params;
    TRY(backend_upload(&t->be, t->m.params, host, n * sizeof(float)));
    for (int s = 0; s < optim_n_state(&t->opt); s++) {
        const char *name;
        TRY(backend_upload(&t->be, optim_state(&t->opt, s, &name), host + (size_t)(s + 1) * n,
                           n * sizeof(float)));
    }
    return ST_OK;
}

// FNV-1a of the labels, one byte per label below 256 (the hash that u8 labels gave, so checkpoints written before
// labels were int32 still resume), four little-endian bytes after a 0xff marker otherwise.
static uint64_t labels_fnv1a(const int32_t *labels, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        const uint32_t v = (uint32_t)labels[i];
        if (v < 256) {
            h = (h ^ v) * 0x100000001b3ULL;
            continue;
        }
        h = (h ^ 0xffu) * 0x100000001b3ULL;
        for (int k = 0; k < 4; k++) h = (h ^ ((v >> (8 * k)) & 0xffu)) * 0x100000001b3ULL;
    }
    return h;
}

// What the run trains on, as one number: the training images and labels after train_limit (so another data
// file, another train_limit or another data format all change it). Resume compares it with the checkpoint's.
uint64_t train_dataset_hash(const dataset *d) {
    uint64_t h[2] = {train_fnv1a(d->images, (size_t)d->n * (size_t)d->c * (size_t)d->h * (size_t)d->w),
                     labels_fnv1a(d->labels, (size_t)d->n)};
    return train_fnv1a(h, sizeof h);
}

uint64_t train_data_hash(trainer *t) {
    if (!t->data_hashed && t->sets) {  // streamed: the sets' file lists (names, sizes, labels) and the split
        uint64_t h[5] = {t->sets[0].digest, t->sets[1].digest, t->sets[2].digest, (uint64_t)t->n_train_view,
                         train_fnv1a(t->train_map, t->train_map ? (size_t)t->n_train_view * sizeof(int32_t) : 0)};
        t->data_hash = train_fnv1a(h, sizeof h);
        t->data_hashed = 1;
    }
    if (!t->data_hashed) {
        t->data_hash = train_dataset_hash(&t->train);
        t->data_hashed = 1;
    }
    return t->data_hash;
}

// Set-up is collective: a failure on any rank (bad file on one node, out of memory) is agreed on, so every
// rank returns an error instead of leaving the others waiting in a collective.
int train_agree(trainer *t, int st) { return comm_agree(t->c, st, "set-up"); }

int train_state_new(const net_config *cfg, const train_opts *o, comm *c, trainer **out) {
    *out = NULL;
    trainer *t = calloc(1, sizeof *t);
    TRY_ALLOC(t);
    static const test_hooks hooks_off = {.stall_rank = -1, .corrupt_rank = -1};
    t->cfg_eff = *cfg;
    t->cfg = &t->cfg_eff, t->o = o, t->c = c;
    t->hooks = o->hooks ? o->hooks : &hooks_off;
    const comm_info *ci = comm_get_info(c);
    t->rank = ci->rank, t->world = ci->world;
    t->overlap = cfg->overlap != 0;  // 2: set per step (step_issue)
    t->steps_fd = -1;
    t->overlap_ab = cfg->overlap == 2;
    // One rank has nothing to average, unless asked to run the all-reduce path anyway (parallel.force_allreduce,
    // so that one GPU exercises the buckets, the comm stream and its fork/join inside a CUDA graph).
    t->use_comm = t->world > 1 || cfg->force_allreduce;
    t->host_comm = (comm_caps(c) & COMM_CAP_HOST_PROGRESS) != 0;
    *out = t;
    return ST_OK;
}

// The streamed sets' loaders (pinned memory: before the backend goes), mark and lists.
static void stream_free(trainer *t) {
    loader_destroy(t->ld_train);
    loader_destroy(t->ld_eval);
    t->ld_train = t->ld_eval = NULL;
    if (t->mk_stage) backend_mark_destroy(&t->be, t->mk_stage);
    t->mk_stage = NULL;
    for (int i = 0; t->sets && i < 3; i++) image_set_free(&t->sets[i]);
    free(t->sets);
    t->sets = NULL;
    free(t->train_map);
    free(t->val_map);
    free(t->h_seq);
    t->train_map = t->val_map = t->h_seq = NULL;
}

// Everything train_state_new and the set-up made, in backend memory and on the host; t itself too.
void train_state_free(trainer *t) {
    if (!t) return;
    if (t->be.ops) {
        const backend *be = &t->be;
        stream_free(t);
        backend_free(be, t->d_train_x);
        backend_free(be, t->d_train_y);
        backend_free(be, t->d_test_x);
        backend_free(be, t->d_test_y);
        backend_free(be, t->d_perm);
        backend_free(be, t->d_test_index);
        backend_free(be, t->d_batch_idx);
        backend_free(be, t->d_sumsq);
        backend_free(be, t->d_param_bad);
        backend_free(be, t->acc_grads);
        backend_free(be, t->d_aug_train);
        backend_free(be, t->d_aug_eval);
        for (int k = 0; k < MK_N; k++) backend_mark_destroy(be, t->mk[k]);
        backend_mark_destroy(be, t->mk_sync);
        for (int k = 0; k <= AHEAD; k++) backend_mark_destroy(be, t->mk_ahead[k]);
        backend_mark_destroy(be, t->mk_origin);
        for (int i = 0; t->lm && i < t->cap_lm; i++) backend_mark_destroy(be, t->lm[i].mk);
        powersgd_destroy(t->psgd);
        optim_destroy(&t->opt);
        model_destroy(&t->m);
        backend_destroy(&t->be);
    }
    free(t->h_perm);
    free(t->psgd_resume.q);
    free(t->psgd_resume.err);
    free(t->confusion);
    free(t->h_logits);
    free(t->buckets);
    free(t->bucket_bytes);
    free(t->lm);
    free(t->step_wait);
    free(t->step_ov);
    data_free(&t->train);
    data_free(&t->test);
    free(t);
}

void train_result_free(train_result *r) {
    free(r->params);
    r->params = NULL;
}
