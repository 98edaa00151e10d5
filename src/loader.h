// loader.h — the streaming input pipeline of one rank: worker threads read and decode the samples of a sequence
// (a training epoch's shard of the global order, or an evaluation range), each into its place in a bounded ring
// of batches, while the consumer (the step) takes the batches in order.
//
// Every sample's bytes depend only on (seed, epoch, sample index) -- image_sample's transforms -- and its place
// in the batch only on the sequence, so the batches are the same for any number of workers and any timing.
// Memory: (prefetch + 1) batches of `batch` samples, plus one file buffer and one decode scratch per worker,
// whatever the data set's size.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "image_set.h"

typedef struct loader_opts {
    const image_set *set;     // the samples (kept by the caller for the loader's lifetime)
    image_tf tf;              // output shape, transforms, seed
    int workers;              // decode threads (>= 1)
    int prefetch;             // batches decoded ahead of the one the consumer holds (>= 1)
    int batch;                // the most samples in one batch
    int skip_bad;             // 1: a sample that cannot be read or decoded is replaced (see loader_next)
    int max_bad;              // with skip_bad: more distinct bad samples than this is an error
    uint64_t max_file_bytes;  // a larger file is bad input
    // Batch memory (pinned host memory for a GPU's copies); NULL: malloc/free.
    void *(*host_alloc)(void *arg, size_t bytes);
    void (*host_free)(void *arg, void *ptr);
    void *alloc_arg;
} loader_opts;

typedef struct loader loader;

int loader_create(loader **out, const loader_opts *o);
// Stops the workers (joining them) and frees everything.
void loader_destroy(loader *l);

// A new sequence: samples indices[0 .. n) (copied), cut into batches of `batch` (the last may be shorter),
// decoded with the training (training=1, epoch's draws) or evaluation transforms. A sequence still running is
// cancelled first.
int loader_start(loader *l, int training, int64_t epoch, const int32_t *indices, long long n, int batch);

// The sequence's next batch, in order (blocks until it is ready): *x holds n samples of c*h*w bytes (CHW), *y
// their labels; valid until the next call of loader_next, loader_start or loader_destroy. ST_INPUT names the
// file and the reason of the first sample that could not be read or decoded (without skip_bad). With skip_bad,
// a bad sample is replaced by the next good one of the data set (index + 1, + 2, ... wrapping), the same on
// every run; more than max_bad distinct bad samples is ST_INPUT. Past the sequence's end: ST_RUNTIME.
int loader_next(loader *l, const uint8_t **x, const int32_t **y, int *n);

// Files read so far (every sample read, bad ones included) and how many distinct samples of the set they were.
void loader_reads(loader *l, long long *reads, long long *distinct);

// Distinct samples found bad so far (skip_bad), and the first one's message ("" when none).
long long loader_bad_count(loader *l);
void loader_first_bad(loader *l, char *msg, size_t len);
