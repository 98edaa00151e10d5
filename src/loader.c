// loader.c — worker threads fill a ring of prefetch + 1 batches in sequence order; the consumer takes them in order.
//
// The sequence is cut into positions 0 .. n-1; position p belongs to batch p / batch, which lives in ring slot
// (p / batch) % slots. A worker claims the next position under the lock, but only while its batch is fewer than
// `slots` batches ahead of the one the consumer holds, so it never writes into a batch still in use. Work is per
// sample (not per batch), so one slow image does not stall the other workers.
#include "loader.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

typedef struct slot {
    uint8_t *x;
    int32_t *y;
    int done;          // samples written
    int st;            // first failure of a sample of this batch (without skip_bad)
    char err[512];
} slot;

struct loader {
    loader_opts o;
    size_t sample_bytes;
    int n_slots;
    slot *slots;
    pthread_t *threads;
    int n_threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    int quit;
    // the sequence
    int32_t *seq;
    long long seq_n, seq_cap;
    int batch;
    int training;
    int64_t epoch;
    long long next_pos;   // next position to claim
    long long head;       // the batch the consumer takes next; head - 1 is the one it holds (if held)
    int held;             // the consumer holds batch head - 1
    long long gen;        // bumped by loader_start: work of an older sequence is dropped
    int busy;             // workers inside a sample
    // bad samples (skip_bad)
    uint8_t *bad_bits;    // one bit per sample of the set
    long long n_bad;
    uint8_t *read_bits;   // one bit per sample of the set: read at least once
    long long reads, n_read;
    char first_bad[512];
};

static long long batch_size(const loader *l, long long b) {
    const long long left = l->seq_n - b * l->batch;
    return left < l->batch ? left : l->batch;
}

// ---------------------------------------------------------------------------------------------------------
// One sample

typedef struct worker_buf {
    image_ctx *ctx;
    uint8_t *file;
    size_t cap;
} worker_buf;

static void read_count(loader *l, int32_t i) {
    pthread_mutex_lock(&l->mu);
    l->reads++;
    if (!((l->read_bits[i >> 3] >> (i & 7)) & 1)) l->read_bits[i >> 3] |= (uint8_t)(1u << (i & 7)), l->n_read++;
    pthread_mutex_unlock(&l->mu);
}

static int decode_one(loader *l, worker_buf *w, int training, int64_t epoch, int32_t index, uint8_t *out, char *err,
                      size_t len) {
    size_t n = 0;
    read_count(l, index);
    int st = image_set_read(l->o.set, index, l->o.max_file_bytes, &w->file, &w->cap, &n, err, len);
    if (st != ST_OK) return st;
    return image_sample(w->ctx, &l->o.tf, training, image_set_path(l->o.set, index), w->file, n, epoch, index, out, err,
                        len);
}

static int bad_marked(loader *l, int32_t i) {
    pthread_mutex_lock(&l->mu);
    const int bad = (l->bad_bits[i >> 3] >> (i & 7)) & 1;
    pthread_mutex_unlock(&l->mu);
    return bad;
}

static void bad_mark(loader *l, int32_t i, const char *msg) {
    pthread_mutex_lock(&l->mu);
    if (!((l->bad_bits[i >> 3] >> (i & 7)) & 1)) {
        l->bad_bits[i >> 3] |= (uint8_t)(1u << (i & 7));
        if (l->n_bad++ == 0) snprintf(l->first_bad, sizeof l->first_bad, "%s", msg);
    }
    pthread_mutex_unlock(&l->mu);
}

// The sample at `index`, or with skip_bad the first good one after it; *label is the one of the sample used.
static int load_sample(loader *l, worker_buf *w, int training, int64_t epoch, int32_t index, uint8_t *out,
                       int32_t *label, char *err, size_t len) {
    const int n = l->o.set->n;
    for (int tries = 0; tries < n; tries++) {
        const int32_t i = (int32_t)(((long long)index + tries) % n);
        if (l->o.skip_bad && bad_marked(l, i)) continue;
        const int st = decode_one(l, w, training, epoch, i, out, err, len);
        if (st == ST_OK) {
            *label = l->o.set->labels[i];
            return ST_OK;
        }
        if (st != ST_INPUT || !l->o.skip_bad) return st;
        bad_mark(l, i, err);
        if (loader_bad_count(l) > l->o.max_bad) {
            char first[512];
            loader_first_bad(l, first, sizeof first);
            snprintf(err, len, "more than data.max_bad=%d images could not be read (the first: %.400s)", l->o.max_bad,
                     first);
            return ST_INPUT;
        }
    }
    char first[512];
    loader_first_bad(l, first, sizeof first);
    snprintf(err, len, "no image of %.150s could be read (the first failure: %.250s)", l->o.set->origin, first);
    return ST_INPUT;
}

// ---------------------------------------------------------------------------------------------------------
// Workers

static void *worker_main(void *arg) {
    loader *l = arg;
    worker_buf w = {image_ctx_create(), NULL, 0};
    char err[512];
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->quit && (l->next_pos >= l->seq_n || l->next_pos / l->batch >= l->head - l->held + l->n_slots))
            pthread_cond_wait(&l->cv_work, &l->mu);
        if (l->quit) break;
        const long long pos = l->next_pos++, b = pos / l->batch, gen = l->gen;
        const int training = l->training;
        const int64_t epoch = l->epoch;
        const int32_t index = l->seq[pos];
        slot *s = &l->slots[b % l->n_slots];
        const size_t k = (size_t)(pos - b * l->batch);
        l->busy++;
        pthread_mutex_unlock(&l->mu);

        int32_t label = 0;
        err[0] = '\0';
        int st = w.ctx ? load_sample(l, &w, training, epoch, index, s->x + k * l->sample_bytes, &label, err, sizeof err)
                       : ST_RUNTIME;
        if (!w.ctx) snprintf(err, sizeof err, "out of host memory creating a decoder");

        pthread_mutex_lock(&l->mu);
        l->busy--;
        if (gen == l->gen) {
            s->y[k] = label;
            if (st != ST_OK && s->st == ST_OK) {
                s->st = st;
                snprintf(s->err, sizeof s->err, "%s", err);
            }
            if (++s->done == batch_size(l, b)) pthread_cond_broadcast(&l->cv_done);
        }
        if (l->busy == 0) pthread_cond_broadcast(&l->cv_done);  // loader_start waits for in-flight work
    }
    pthread_mutex_unlock(&l->mu);
    free(w.file);
    image_ctx_free(w.ctx);
    return NULL;
}

// ---------------------------------------------------------------------------------------------------------
// Life cycle

static void *plain_alloc(void *arg, size_t bytes) {
    (void)arg;
    return malloc(bytes);
}

static void plain_free(void *arg, void *p) {
    (void)arg;
    free(p);
}

int loader_create(loader **out, const loader_opts *o) {
    *out = NULL;
    if (o->workers < 1 || o->prefetch < 1 || o->batch < 1 || !o->set || o->set->n < 1)
        return ERR(ST_INPUT, "loader: workers %d, prefetch %d, batch %d", o->workers, o->prefetch, o->batch);
    loader *l = calloc(1, sizeof *l);
    TRY_ALLOC(l);
    l->o = *o;
    if (!l->o.host_alloc) l->o.host_alloc = plain_alloc, l->o.host_free = plain_free;
    l->sample_bytes = (size_t)o->tf.channels * o->tf.out_h * o->tf.out_w;
    l->n_slots = o->prefetch + 1;
    l->batch = o->batch;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv_work, NULL);
    pthread_cond_init(&l->cv_done, NULL);
    l->slots = calloc((size_t)l->n_slots, sizeof *l->slots);
    l->bad_bits = calloc((size_t)o->set->n / 8 + 1, 1);
    l->read_bits = calloc((size_t)o->set->n / 8 + 1, 1);
    int st = l->slots && l->bad_bits && l->read_bits ? ST_OK : ERR(ST_RUNTIME, "out of host memory for the loader");
    for (int i = 0; st == ST_OK && i < l->n_slots; i++) {
        l->slots[i].x = l->o.host_alloc(l->o.alloc_arg, (size_t)o->batch * l->sample_bytes);
        l->slots[i].y = l->o.host_alloc(l->o.alloc_arg, (size_t)o->batch * sizeof(int32_t));
        if (!l->slots[i].x || !l->slots[i].y)
            st = ERR(ST_RUNTIME, "out of host memory for %d batches of %d images of %zu bytes", l->n_slots, o->batch,
                     l->sample_bytes);
    }
    if (st == ST_OK) {
        l->threads = calloc((size_t)o->workers, sizeof *l->threads);
        if (!l->threads) st = ERR(ST_RUNTIME, "out of host memory for the loader");
    }
    for (int i = 0; st == ST_OK && i < o->workers; i++) {
        if (pthread_create(&l->threads[i], NULL, worker_main, l) != 0)
            st = ERR(ST_RUNTIME, "cannot start data worker thread %d of %d", i + 1, o->workers);
        else l->n_threads++;
    }
    if (st != ST_OK) {
        loader_destroy(l);
        return st;
    }
    *out = l;
    return ST_OK;
}

void loader_destroy(loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->quit = 1;
    pthread_cond_broadcast(&l->cv_work);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->n_threads; i++) pthread_join(l->threads[i], NULL);
    for (int i = 0; l->slots && i < l->n_slots; i++) {
        if (l->slots[i].x) l->o.host_free(l->o.alloc_arg, l->slots[i].x);
        if (l->slots[i].y) l->o.host_free(l->o.alloc_arg, l->slots[i].y);
    }
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv_work);
    pthread_cond_destroy(&l->cv_done);
    free(l->slots);
    free(l->threads);
    free(l->seq);
    free(l->bad_bits);
    free(l->read_bits);
    free(l);
}

int loader_start(loader *l, int training, int64_t epoch, const int32_t *indices, long long n, int batch) {
    if (batch < 1 || batch > l->o.batch || n < 0)
        return ERR(ST_RUNTIME, "loader: batch %d (at most %d), %lld samples", batch, l->o.batch, n);
    for (long long i = 0; i < n; i++)
        if (indices[i] < 0 || indices[i] >= l->o.set->n)
            return ERR(ST_RUNTIME, "loader: sample index %d outside the set's %d", indices[i], l->o.set->n);
    pthread_mutex_lock(&l->mu);
    l->gen++;
    l->seq_n = 0;  // no new claims; then wait for the samples in flight (they write into the slots)
    while (l->busy > 0) pthread_cond_wait(&l->cv_done, &l->mu);
    int st = ST_OK;
    if (n > l->seq_cap) {
        int32_t *p = realloc(l->seq, (size_t)n * sizeof *p);
        if (p) l->seq = p, l->seq_cap = n;
        else st = ERR(ST_RUNTIME, "out of host memory for a sequence of %lld samples", n);
    }
    if (st == ST_OK) {
        if (n) memcpy(l->seq, indices, (size_t)n * sizeof *indices);
        l->seq_n = n;
        l->batch = batch;
        l->training = training;
        l->epoch = epoch;
        l->next_pos = 0;
        l->head = 0;
        l->held = 0;
        for (int i = 0; i < l->n_slots; i++) l->slots[i].done = 0, l->slots[i].st = ST_OK, l->slots[i].err[0] = '\0';
        pthread_cond_broadcast(&l->cv_work);
    }
    pthread_mutex_unlock(&l->mu);
    return st;
}

int loader_next(loader *l, const uint8_t **x, const int32_t **y, int *n) {
    pthread_mutex_lock(&l->mu);
    if (l->held) {  // the batch handed out last is free again
        slot *prev = &l->slots[(l->head - 1) % l->n_slots];
        prev->done = 0, prev->st = ST_OK, prev->err[0] = '\0';
        l->held = 0;
        pthread_cond_broadcast(&l->cv_work);
    }
    const long long b = l->head;
    if (b * l->batch >= l->seq_n) {
        pthread_mutex_unlock(&l->mu);
        return ERR(ST_RUNTIME, "loader: a batch past the end of the sequence");
    }
    slot *s = &l->slots[b % l->n_slots];
    const long long size = batch_size(l, b);
    while (s->done < size) pthread_cond_wait(&l->cv_done, &l->mu);
    l->head++;
    l->held = 1;
    const int st = s->st;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", s->err);
    pthread_mutex_unlock(&l->mu);
    if (st != ST_OK) return ERR(st, "%s", msg);
    *x = s->x, *y = s->y, *n = (int)size;
    return ST_OK;
}

void loader_reads(loader *l, long long *reads, long long *distinct) {
    pthread_mutex_lock(&l->mu);
    *reads = l->reads, *distinct = l->n_read;
    pthread_mutex_unlock(&l->mu);
}

long long loader_bad_count(loader *l) {
    pthread_mutex_lock(&l->mu);
    const long long n = l->n_bad;
    pthread_mutex_unlock(&l->mu);
    return n;
}

void loader_first_bad(loader *l, char *msg, size_t len) {
    pthread_mutex_lock(&l->mu);
    snprintf(msg, len, "%s", l->first_bad);
    pthread_mutex_unlock(&l->mu);
}
