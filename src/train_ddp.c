// train_ddp.c — the data-parallel mechanics of training: gradient buckets all-reduced as soon as backward has
// produced them (overlap, gradient accumulation's finalisation at each launch), the start (comm on the compute
// stream, every replica from rank 0's state), the ranks' agreement on the data and the end-of-epoch replica check.
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "common.h"
#include "train_state.h"

// ---------------------------------------------------------------------------------------------------------
// Buckets: contiguous slices of the gradient buffer, launched as soon as backward has finished them.

// Gradient accumulation: the last micro-batch's gradients plus the earlier ones' sum, averaged over the K
// micro-batches -- for [begin, end) of the buffer, just before that slice is all-reduced (or stepped on).
int train_grads_finalize(trainer *t, size_t begin, size_t end) {
    if (t->K == 1 || end <= begin) return ST_OK;
    TRY(backend_add(&t->be, end - begin, t->acc_grads + begin, t->m.grads + begin));
    return backend_scale(&t->be, end - begin, 1.0f / (float)t->K, t->m.grads + begin);
}

static int bucket_launch(trainer *t, int i) {
    bucket *b = &t->buckets[i];
    TRY(train_grads_finalize(t, b->begin, b->end));
    t->launches++;
    char label[64];
    snprintf(label, sizeof label, "step %lld bucket %d", t->global_step + 1, i);  // 1-based, as in messages
    b->t_launch = now_s();
    b->t_done = 0;
    TRY(comm_allreduce_avg_async(t->c, t->m.grads + b->begin, b->end - b->begin, label, &b->req));
    return comm_req_marks(t->c, b->req, &b->m_start, &b->m_end);
}

// Move in-flight all-reduces on and note when each completes (for comm_s). One test of the oldest bucket not
// yet done runs MPI's progress engine once, which advances every non-blocking collective in flight; testing
// each of them (and comm_progress before) ran it twice per bucket in flight, each run walking all of them: at
// 63 buckets of 8 KiB that made backward 24 ms instead of 16. Buckets complete about in launch order, so one
// that finished behind an older one is seen at the next poll.
static void buckets_poll(trainer *t) {
    for (int i = 0; i < t->next_bucket; i++) {
        bucket *b = &t->buckets[i];
        if (b->req < 0 || b->t_done > 0) continue;
        int done = 0;
        if (comm_test(t->c, b->req, &done) != ST_OK) {
            if (t->cb_status == ST_OK) t->cb_status = err_status();
            return;
        }
        if (!done) return;
        b->t_done = now_s();
    }
}

static void progress_hook(void *arg) { buckets_poll((trainer *)arg); }

int train_on_grads_ready(void *arg, size_t ready) {
    trainer *t = arg;
    while (t->next_bucket < t->n_buckets && t->buckets[t->next_bucket].end <= ready)
        TRY(bucket_launch(t, t->next_bucket++));
    // MPI reduces on the host and advances only when tested. NCCL must not be tested here: its test joins the
    // compute stream to the all-reduce, which would hold the rest of backward behind it (no overlap).
    if (t->host_comm) buckets_poll(t);
    return t->cb_status;  // a failure the progress hook saw meanwhile
}

// Launch what is left, then wait for every bucket (comm=nccl: make the compute stream wait).
int train_buckets_finish(trainer *t) {
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
int train_buckets_create(trainer *t) {
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
            if (n > COMM_MAX_REQS - COMM_RESERVED_REQS)  // (sync batch norm's all-reduces need free slots too)
                return ERR(ST_INPUT, "%s: [parallel] bucket_kb=%d gives %d buckets for %zu parameters (at most %d)",
                           t->cfg->path, t->cfg->bucket_kb, n, t->m.n_params, COMM_MAX_REQS - COMM_RESERVED_REQS);
            t->n_buckets = n;
            t->buckets = calloc((size_t)n, sizeof *t->buckets);
            TRY_ALLOC(t->buckets);
        }
    }
    t->bucket_bytes = calloc((size_t)t->n_buckets + 1, sizeof *t->bucket_bytes);
    TRY_ALLOC(t->bucket_bytes);
    for (int i = 0; i < t->n_buckets; i++) {
        t->buckets[i].req = -1;
        t->bucket_bytes[i] = (long long)((t->buckets[i].end - t->buckets[i].begin) * sizeof(float));
    }
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Start: the comm on the compute stream, every replica from rank 0's state

// Batch norm's running statistics (the model's state) from rank 0 to every rank, as PyTorch DDP's
// broadcast_buffers: each rank updates them from its own batches (sync=0), so before an evaluation and before a
// checkpoint every rank takes rank 0's, and the replica check compares them. Collective; nothing without state.
int train_state_broadcast(trainer *t) {
    if (t->world == 1 || t->m.n_state == 0) return ST_OK;
    const size_t bytes = t->m.n_state * sizeof(float);
    float *host = malloc(bytes);
    TRY_ALLOC(host);
    int st = backend_download(&t->be, host, t->m.state, bytes);
    if (st == ST_OK) st = comm_bcast(t->c, host, bytes, 0);
    if (st == ST_OK) st = backend_upload(&t->be, t->m.state, host, bytes);
    free(host);
    return st;
}

// Every replica starts from rank 0's parameters, optimizer state and running statistics; with the all-reduces progressing on the
// host (comm=mpi) and overlap on, the backend calls back during backward to move them on.
int train_ddp_start(trainer *t) {
    int st = comm_bind_stream(t->c, backend_stream(&t->be), t->async_backend);
    float *host = NULL;
    if (st == ST_OK) st = train_host_state(t, &host);
    if (st == ST_OK)
        st = comm_bcast(t->c, host, (size_t)(optim_n_state(&t->opt) + 1) * t->m.n_params * sizeof(float), 0);
    if (st == ST_OK) st = train_host_state_upload(t, host);
    free(host);
    if (st == ST_OK) st = train_state_broadcast(t);
    if (st == ST_OK && t->host_comm && t->overlap) backend_set_progress(&t->be, progress_hook, t);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Agreement: every rank trains on the same data and holds the same parameters (hashes compared).

// Every rank must train on the same data: the loaded sets' shapes and a fingerprint of their bytes (the same
// paths may hold other files on other hosts). Compared like the configuration (comm_agree_text).
int train_data_agree(trainer *t) {
    const dataset *tr = &t->train, *te = &t->test;
    char text[256];
    snprintf(text, sizeof text, "train=%d samples of %dx%dx%d, hash %016" PRIx64 "\ntest=%d samples, hash %016" PRIx64 "\n",
             tr->n, tr->c, tr->h, tr->w, train_data_hash(t), te->n, t->sets ? t->sets[2].digest : train_dataset_hash(te));
    return comm_agree_text(t->c, text, "the data");
}

// The hash of n floats of backend memory (0 floats: the empty hash); `bump` adds 1 to the first (test hook).
static int backend_hash(trainer *t, const float *buf, size_t n, int bump, uint64_t *h) {
    float *host = malloc((n ? n : 1) * sizeof(float));
    TRY_ALLOC(host);
    int st = n ? backend_download(&t->be, host, buf, n * sizeof(float)) : ST_OK;
    if (bump && n) host[0] += 1.0f;
    *h = train_fnv1a(host, n * sizeof(float));
    free(host);
    return st;
}

// Every rank holds the same parameters and the same running statistics (after train_state_broadcast).
int train_replicas_check(trainer *t) {
    // Test hook (reliability tests): change one parameter (or running statistic) on one rank to prove the check
    // catches it.
    const int bump = t->hooks->corrupt_rank == t->rank && t->world > 1;
    uint64_t h[2];
    TRY(backend_hash(t, t->m.params, t->m.n_params, bump && !t->hooks->corrupt_state, &h[0]));
    TRY(backend_hash(t, t->m.state, t->m.n_state, bump && t->hooks->corrupt_state, &h[1]));
    static const char *const what[2] = {"parameters", "running statistics"};
    uint64_t *all = malloc((size_t)t->world * sizeof *all);
    TRY_ALLOC(all);
    int st = ST_OK;
    for (int k = 0; k < 2 && st == ST_OK; k++) {
        st = comm_allgather_u64(t->c, h[k], all);
        // Every rank sees the same hashes, so a mismatch is collective; a timeout of the gather is not.
        for (int r = 1; st == ST_OK && r < t->world; r++)
            if (all[r] != all[0]) {
                st = ERR(ST_COMM, "replica mismatch after epoch %d: %s of rank %d (hash %016" PRIx64
                                  ") differ from rank 0 (hash %016" PRIx64 ")",
                         t->epoch + 1, what[k], r, all[r], all[0]);
                err_mark_collective(0);
            }
    }
    free(all);
    return st;
}
