// checkpoint.h — safetensors files (https://github.com/huggingface/safetensors format):
//   u64 little-endian header length N, N bytes of JSON header (padded with spaces to a multiple of 8),
//   then the raw little-endian tensor bytes. Header: {"name": {"dtype": "F32", "shape": [...],
//   "data_offsets": [begin, end]}, ..., "__metadata__": {"key": "value", ...}}.
//
// Writes are atomic: a temp file in the same directory, fsync, rename, fsync of the directory. A crash at any
// point leaves either the old file or the new one, never a partial file under the final name.
// Reads validate everything (a regular file, header length vs file size, JSON, dtypes, shapes vs byte ranges,
// ranges inside the data area and non-overlapping, no bytes after the last tensor) and fail
// with ST_INPUT naming the file and the tensor/field. The header is parsed before any tensor byte is read.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define CKPT_MAX_DIMS 4

// Dtypes we write: F32 for every float tensor, I64 for counts (PyTorch's num_batches_tracked is a 0-dim int64,
// and load_state_dict(strict=True) wants that dtype).
enum ckpt_dtype { CKPT_F32 = 0, CKPT_I64 };

typedef struct ckpt_tensor {
    const char *name;
    const void *data;       // host memory: float32 (CKPT_F32) or int64 (CKPT_I64) values
    int ndim;
    int64_t shape[CKPT_MAX_DIMS];
    int dtype;              // enum ckpt_dtype (0, the default: F32)
} ckpt_tensor;

typedef struct ckpt_kv {
    const char *key;
    const char *value;
} ckpt_kv;

int ckpt_save(const char *path, const ckpt_tensor *tensors, int n_tensors, const ckpt_kv *meta, int n_meta);
// Before a long run: ST_INPUT when ckpt_save(path) could not work (path is not a regular file, or no file can
// be created in its directory), so the error comes at start-up and not after the first epoch.
int ckpt_check_target(const char *path);

// The first bytes of a file (n of them) look like a safetensors file: a plausible header length, then '{'.
int ckpt_is_safetensors_head(const unsigned char *head, size_t n);

typedef struct ckpt_file ckpt_file;  // a loaded file: its header parsed, its tensors read on demand

int ckpt_load(const char *path, ckpt_file **out);
void ckpt_free(ckpt_file *f);
// Copy tensor `name` into dst, checking that its dtype is F32 and its shape is exactly (ndim, shape);
// ST_INPUT naming the file and tensor when missing or different (dst untouched). The bytes are copied as they
// are (NaN included: the format round-trips any float).
int ckpt_read_tensor(const ckpt_file *f, const char *name, int ndim, const int64_t *shape, float *dst);
// The same for an I64 tensor (dtype checked to be I64).
int ckpt_read_tensor_i64(const ckpt_file *f, const char *name, int ndim, const int64_t *shape, int64_t *dst);
// A training checkpoint must hold finite values only: a NaN or Inf would be trained on and saved again (ReLU can
// hide it from the divergence check). ST_INPUT naming the file, the tensor, the first bad element and the count.
int ckpt_require_finite(const ckpt_file *f, const char *name, const float *v, size_t n);
// 1 when the file holds a tensor of that name (of any dtype and shape), else 0.
int ckpt_has_tensor(const ckpt_file *f, const char *name);
// Metadata value for key, or NULL when absent.
const char *ckpt_meta(const ckpt_file *f, const char *key);
int ckpt_n_tensors(const ckpt_file *f);
// The name of tensor i (0 <= i < ckpt_n_tensors, in name order), or NULL.
const char *ckpt_tensor_name(const ckpt_file *f, int i);
const char *ckpt_path(const ckpt_file *f);

// Test hook (reliability tests): ckpt_save raises SIGKILL on itself after writing `bytes` bytes of the temp file
// (-1: off, the default). The product never sets it; the test trainer sets it from DDP_CKPT_CRASH_AFTER_BYTES.
void ckpt_set_crash_after(long long bytes);
