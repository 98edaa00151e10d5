// data.h — data sets (IDX raw or gzip, CIFAR-10 binary, synthetic) and the sharding sampler.
//
// A data set is kept as u8 pixels (NCHW, c*h*w bytes per sample) and u8 labels; the backend's gather op
// turns a batch of indices into float NCHW in [0,1] and int32 labels.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct dataset {
    int n;              // samples
    int c, h, w;        // sample shape
    int classes;        // labels are < classes (checked on load)
    uint8_t *images;    // n * c * h * w
    int32_t *labels;    // n, each < classes
} dataset;

// IDX pair: images (magic 0x00000803, u8, rank 3: n, rows, cols) and labels (magic 0x00000801, rank 1: n).
// Each file may be raw or gzip (detected by the 1f 8b magic, not by the name). Fully validated: magic,
// rank, dims, image and label counts equal, exact file length (no trailing bytes), label < classes.
// limit > 0 keeps only the first `limit` samples. Errors are ST_INPUT naming the file.
int data_load_idx(const char *images_path, const char *labels_path, int classes, int limit, dataset *out);

// CIFAR-10 binary batches: records of 1 label byte + 3072 pixel bytes (3x32x32, channel-major).
// Each file's length must be a whole number of records. limit as above.
int data_load_cifar10(const char *const *paths, int n_paths, int limit, dataset *out);

// Images without labels (--predict): an IDX images file (raw or gzip) or a CIFAR-10 batch file, told apart by
// the IDX magic. Validated as above; labels are all 0 and classes is 0.
int data_load_images(const char *path, dataset *out);

// Synthetic (format=synthetic; torchvision's FakeData): n samples of c x h x w, made in memory from (seed, set),
// set 0 = training, 1 = test. Sample i depends only on (seed, set, i), so every rank makes the same set and a run
// is deterministic. Label i is uniform in [0, classes); pixel = (noise + tone) / 2 with uniform byte noise and a
// tone per (class, channel), so the set is learnable from its colours (loss falls) while every image differs.
// data.train_limit / test_limit give the sizes; 0 means these (small: n x c x h x w bytes are held per rank).
#define DATA_SYNTHETIC_TRAIN 1024
#define DATA_SYNTHETIC_TEST 256
int data_make_synthetic(uint64_t seed, int set, int n, int c, int h, int w, int classes, dataset *out);

void data_free(dataset *d);

// ---------------------------------------------------------------------------------------------------------
// Sampler. One global permutation of [0, n) per (seed, epoch), identical on every rank. Step s of an epoch
// uses the global batch perm[s*G .. s*G+G) where G = per_rank_batch * world; rank r takes the contiguous
// slice perm[s*G + r*B .. s*G + r*B + B). The remainder n mod G is dropped, so every rank runs the same
// number of steps: steps_per_epoch = n / G.
void data_permutation(uint64_t seed, int epoch, int n, int32_t *perm);
int data_steps_per_epoch(int n, int per_rank_batch, int world);
// Pointer to rank r's B indices for step s inside perm.
const int32_t *data_shard_batch(const int32_t *perm, int step, int per_rank_batch, int world, int rank);

// Evaluation split: rank r evaluates samples [begin, end) of the test set; the ranges of all ranks cover
// [0, n) exactly once (the first n % world ranks take one extra sample).
void data_eval_range(int n, int world, int rank, int *begin, int *end);
// The evaluation batch a rank needs at most: eval_batch, but never more than the largest share (ceil(n / world)).
int data_eval_batch(int n, int world, int eval_batch);
