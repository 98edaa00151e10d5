// data.c — IDX (raw or gzip) and CIFAR-10 binary loaders, fully validated, synthetic sets, and the sharding sampler.
//
// A file must be a regular file (src/fileio.h); its header is read first and the body only as far as the header
// promises (gzip through zlib's gz* API, which also reads raw files as they are); then it is parsed from the
// buffer, so every length check is against the real byte count.
#include "data.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "common.h"
#include "fileio.h"

// Data sets larger than this are refused (a corrupt header cannot make us allocate without bound).
#define DATA_MAX_BYTES ((size_t)8 << 30)

// ---------------------------------------------------------------------------------------------------------
// Reading a data file (raw or gzip): opened through input_open (a regular file, never a FIFO or a device), and
// read only as far as its header promises.

// Deflate's largest expansion is 1032:1, so a gzip file of S bytes holds at most this many bytes.
#define GZ_MAX_RATIO 1032

typedef struct data_file {
    const char *path;
    gzFile gz;  // zlib's gz* API reads a raw file as it is
    int is_gz;
    uint64_t size;  // on disk
} data_file;

static int df_open(data_file *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->path = path;
    int fd = -1;
    TRY(input_open(path, "data file", &fd, &f->size));
    unsigned char magic[2] = {0, 0};
    f->is_gz = pread(fd, magic, 2, 0) == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
    f->gz = gzdopen(fd, "rb");
    if (!f->gz) {
        close(fd);
        return ERR(ST_RUNTIME, "%s: out of host memory opening it", path);
    }
    gzbuffer(f->gz, 1 << 17);
    return ST_OK;
}

// The most bytes the file can hold once decompressed.
static uint64_t df_max_bytes(const data_file *f) { return f->is_gz ? f->size * GZ_MAX_RATIO + 1024 : f->size; }

// Up to n bytes; *got < n only at the end of the data.
static int df_read(data_file *f, void *buf, size_t n, size_t *got) {
    *got = 0;
    while (*got < n) {
        size_t want = n - *got < (1u << 30) ? n - *got : (1u << 30);
        int r = gzread(f->gz, (uint8_t *)buf + *got, (unsigned)want);
        if (r < 0) {
            int errnum = 0;
            const char *msg = gzerror(f->gz, &errnum);
            return ERR(ST_INPUT, "%s: %s: %s", f->path, f->is_gz ? "corrupt gzip data" : "read error",
                       errnum == Z_ERRNO ? strerror(errno) : msg);
        }
        if (r == 0) break;
        *got += (size_t)r;
    }
    return ST_OK;
}

// Closes the file; when st is ST_OK, also checks that a gzip stream ended properly.
static int df_close(data_file *f, int st) {
    if (!f->gz) return st;  // closed already
    // zlib reports a gzip stream cut short only as a short read at EOF with an error state.
    int errnum = 0;
    const char *msg = gzerror(f->gz, &errnum);
    if (st == ST_OK && errnum != Z_OK && errnum != Z_STREAM_END)
        st = ERR(ST_INPUT, "%s: %s: %s", f->path, f->is_gz ? "truncated or corrupt gzip data" : "read error", msg);
    int cr = gzclose(f->gz);
    if (st == ST_OK && cr != Z_OK)
        st = ERR(ST_INPUT, "%s: %s", f->path, f->is_gz ? "truncated or corrupt gzip data (bad trailer)" : "read error");
    return st;
}

// The whole (decompressed) file, at most DATA_MAX_BYTES.
static int df_read_all(data_file *f, uint8_t **out, size_t *out_n) {
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) return ERR(ST_RUNTIME, "%s: out of host memory", f->path);
    for (;;) {
        if (n == cap) {
            if (cap >= DATA_MAX_BYTES) {
                free(buf);
                return ERR(ST_INPUT, "%s: larger than %zu bytes", f->path, DATA_MAX_BYTES);
            }
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return ERR(ST_RUNTIME, "%s: out of host memory", f->path);
            }
            buf = nb, cap *= 2;
        }
        size_t got = 0;
        int st = df_read(f, buf + n, cap - n, &got);
        if (st != ST_OK) {
            free(buf);
            return st;
        }
        n += got;
        if (n < cap) break;
    }
    *out = buf, *out_n = n;
    return ST_OK;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

// ---------------------------------------------------------------------------------------------------------
// IDX

// The header of an IDX u8 file of the given rank (n bytes of it available): dims[0..rank) and the payload size.
static int idx_header(const char *path, const uint8_t *buf, size_t n, int rank, uint32_t dims[3],
                      unsigned long long *total_out) {
    if (n < 4) return ERR(ST_INPUT, "%s: too short for an IDX file (%zu bytes)", path, n);
    uint32_t magic = be32(buf);
    uint32_t want = 0x00000800u | (uint32_t)rank;
    if (magic != want)
        return ERR(ST_INPUT, "%s: bad IDX magic 0x%08x (want 0x%08x: unsigned bytes, %d dimension%s)", path, magic,
                   want, rank, rank > 1 ? "s" : "");
    size_t hdr = 4 + 4 * (size_t)rank;
    if (n < hdr) return ERR(ST_INPUT, "%s: truncated IDX header (%zu of %zu bytes)", path, n, hdr);
    unsigned long long total = 1;
    for (int i = 0; i < rank; i++) {
        dims[i] = be32(buf + 4 + 4 * i);
        if (dims[i] == 0) return ERR(ST_INPUT, "%s: IDX dimension %d is 0", path, i);
        total *= dims[i];
        if (total > DATA_MAX_BYTES) return ERR(ST_INPUT, "%s: IDX dimensions too large", path);
    }
    *total_out = total;
    return ST_OK;
}

static int idx_length_check(const char *path, unsigned long long have, unsigned long long total) {
    if (have < total) return ERR(ST_INPUT, "%s: truncated: %llu data bytes, header says %llu", path, have, total);
    if (have > total)
        return ERR(ST_INPUT, "%s: %llu trailing bytes after the %llu data bytes the header declares", path,
                   have - total, total);
    return ST_OK;
}

// An IDX file read as far as its header promises: a raw file's size is checked against the header before its
// body is read; a gzip file is read up to the promised size plus one byte (to see trailing data), never more.
static int idx_read(const char *path, int rank, uint32_t dims[3], uint8_t **out, const uint8_t **payload) {
    *out = NULL;
    data_file f;
    TRY(df_open(&f, path));
    uint8_t head[16];
    size_t hn = 4 + 4 * (size_t)rank, got = 0;
    unsigned long long total = 0;
    int st = df_read(&f, head, hn, &got);
    if (st == ST_OK) st = idx_header(path, head, got, rank, dims, &total);
    if (st == ST_OK && !f.is_gz) st = idx_length_check(path, f.size - hn, total);
    if (st == ST_OK && hn + total > df_max_bytes(&f))
        st = ERR(ST_INPUT, "%s: truncated: the header says %llu data bytes, more than %llu compressed bytes can hold",
                 path, total, (unsigned long long)f.size);
    uint8_t *buf = NULL;
    if (st == ST_OK && (buf = malloc(hn + (size_t)total + 1)) == NULL)
        st = ERR(ST_RUNTIME, "%s: out of host memory for its %llu data bytes", path, total);
    if (st == ST_OK) {
        memcpy(buf, head, hn);
        st = df_read(&f, buf + hn, (size_t)total + 1, &got);  // one more: trailing data shows
    }
    if (st == ST_OK && got < total && f.is_gz) st = df_close(&f, ST_OK), f.gz = NULL;  // names a cut gzip stream
    if (st == ST_OK && got != total) {
        if (got < total) st = idx_length_check(path, got, total);
        else st = ERR(ST_INPUT, "%s: trailing bytes after the %llu data bytes the header declares", path, total);
    }
    st = df_close(&f, st);
    if (st != ST_OK) {
        free(buf);
        return st;
    }
    *out = buf;
    *payload = buf + hn;
    return ST_OK;
}

int data_load_idx(const char *images_path, const char *labels_path, int classes, int limit, dataset *out) {
    memset(out, 0, sizeof *out);
    uint8_t *ib = NULL, *lb = NULL;
    uint32_t idims[3] = {0}, ldims[3] = {0};
    const uint8_t *ip = NULL, *lp = NULL;
    int st = idx_read(images_path, 3, idims, &ib, &ip);
    if (st == ST_OK) st = idx_read(labels_path, 1, ldims, &lb, &lp);
    if (st == ST_OK && idims[0] != ldims[0])
        st = ERR(ST_INPUT, "%s: %u labels, but %s has %u images", labels_path, ldims[0], images_path, idims[0]);
    if (st == ST_OK && (idims[1] > 16384 || idims[2] > 16384))
        st = ERR(ST_INPUT, "%s: image size %ux%u is too large", images_path, idims[1], idims[2]);
    int n = 0;
    if (st == ST_OK) {
        n = (int)idims[0];
        if (limit > 0 && limit < n) n = limit;
        for (int i = 0; i < n; i++)
            if (lp[i] >= classes) {
                st = ERR(ST_INPUT, "%s: label %u of sample %d is not < classes (%d)", labels_path, lp[i], i, classes);
                break;
            }
    }
    if (st == ST_OK) {
        size_t per = (size_t)idims[1] * idims[2];
        out->images = malloc((size_t)n * per);
        out->labels = malloc((size_t)n * sizeof(int32_t));
        if (!out->images || !out->labels) {
            st = ERR(ST_RUNTIME, "out of host memory loading %s", images_path);
        } else {
            memcpy(out->images, ip, (size_t)n * per);
            for (int i = 0; i < n; i++) out->labels[i] = lp[i];
            out->n = n, out->c = 1, out->h = (int)idims[1], out->w = (int)idims[2], out->classes = classes;
        }
    }
    free(ib);
    free(lb);
    if (st != ST_OK) data_free(out);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// CIFAR-10: records of 1 label byte + 3072 pixel bytes (R plane, G plane, B plane: already NCHW).

#define CIFAR_PIX 3072
#define CIFAR_REC (1 + CIFAR_PIX)

int data_load_cifar10(const char *const *paths, int n_paths, int limit, dataset *out) {
    memset(out, 0, sizeof *out);
    uint8_t *bufs[16] = {0};
    size_t lens[16] = {0};
    if (n_paths < 1 || n_paths > 16) return ERR(ST_INPUT, "cifar10: %d files (1 to 16)", n_paths);
    int st = ST_OK;
    size_t total = 0;
    for (int i = 0; i < n_paths && st == ST_OK; i++) {
        data_file f;
        if ((st = df_open(&f, paths[i])) != ST_OK) break;
        // A raw file's size is checked before it is read.
        if (!f.is_gz && (f.size == 0 || f.size % CIFAR_REC != 0))
            st = ERR(ST_INPUT, "%s: %llu bytes is not a whole number of %d-byte CIFAR-10 records", paths[i],
                     (unsigned long long)f.size, CIFAR_REC);
        if (st == ST_OK) st = df_read_all(&f, &bufs[i], &lens[i]);
        if ((st = df_close(&f, st)) != ST_OK) break;
        if (lens[i] == 0 || lens[i] % CIFAR_REC != 0)
            st = ERR(ST_INPUT, "%s: %zu bytes is not a whole number of %d-byte CIFAR-10 records", paths[i], lens[i],
                     CIFAR_REC);
        total += lens[i] / CIFAR_REC;
    }
    int n = 0;
    if (st == ST_OK) {
        if (total > (size_t)1 << 30) st = ERR(ST_INPUT, "%s: too many records", paths[0]);
        n = (int)total;
        if (limit > 0 && limit < n) n = limit;
    }
    if (st == ST_OK) {
        out->images = malloc((size_t)n * CIFAR_PIX);
        out->labels = malloc((size_t)n * sizeof(int32_t));
        if (!out->images || !out->labels) st = ERR(ST_RUNTIME, "out of host memory loading %s", paths[0]);
    }
    int k = 0;
    for (int i = 0; i < n_paths && st == ST_OK && k < n; i++) {
        size_t recs = lens[i] / CIFAR_REC;
        for (size_t r = 0; r < recs && k < n; r++, k++) {
            const uint8_t *rec = bufs[i] + r * CIFAR_REC;
            if (rec[0] >= 10) {
                st = ERR(ST_INPUT, "%s: record %zu: label %u is not < 10", paths[i], r, rec[0]);
                break;
            }
            out->labels[k] = rec[0];
            memcpy(out->images + (size_t)k * CIFAR_PIX, rec + 1, CIFAR_PIX);
        }
    }
    for (int i = 0; i < n_paths; i++) free(bufs[i]);
    if (st == ST_OK) {
        out->n = n, out->c = 3, out->h = 32, out->w = 32, out->classes = 10;
    } else {
        data_free(out);
    }
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Images without labels (--predict): an IDX images file (raw or gzip; magic 0x00000803) or CIFAR-10 records
// (their label bytes are read and ignored), told apart by the first four (decompressed) bytes.

static int idx_images_only(const char *path, dataset *out) {
    uint32_t dims[3] = {0};
    uint8_t *buf = NULL;
    const uint8_t *payload = NULL;
    TRY(idx_read(path, 3, dims, &buf, &payload));
    int st = ST_OK;
    if (dims[1] > 16384 || dims[2] > 16384)
        st = ERR(ST_INPUT, "%s: image size %ux%u is too large", path, dims[1], dims[2]);
    else if (dims[0] > (1u << 30))
        st = ERR(ST_INPUT, "%s: %u images is too many", path, dims[0]);
    size_t per = (size_t)dims[1] * dims[2];
    if (st == ST_OK) {
        out->images = malloc((size_t)dims[0] * per);
        out->labels = calloc(dims[0], sizeof(int32_t));
        if (!out->images || !out->labels) st = ERR(ST_RUNTIME, "out of host memory loading %s", path);
    }
    if (st == ST_OK) {
        memcpy(out->images, payload, (size_t)dims[0] * per);
        out->n = (int)dims[0], out->c = 1, out->h = (int)dims[1], out->w = (int)dims[2], out->classes = 0;
    }
    free(buf);
    if (st != ST_OK) data_free(out);
    return st;
}

int data_load_images(const char *path, dataset *out) {
    memset(out, 0, sizeof *out);
    data_file f;
    TRY(df_open(&f, path));
    uint8_t head[4] = {0};
    size_t got = 0;
    int st = df_read(&f, head, sizeof head, &got);
    int cr = gzclose(f.gz);  // only the first bytes were wanted: the loaders below check the whole file
    TRY(st);
    if (cr != Z_OK && cr != Z_BUF_ERROR) return ERR(ST_INPUT, "%s: read error", path);
    // IDX magic: two zero bytes, 0x08 (unsigned bytes), the rank. A CIFAR-10 record starts with its label (< 10).
    if (got >= 3 && head[0] == 0 && head[1] == 0 && head[2] == 0x08) return idx_images_only(path, out);
    const char *paths[1] = {path};
    st = data_load_cifar10(paths, 1, 0, out);
    if (st == ST_OK) memset(out->labels, 0, (size_t)out->n * sizeof(int32_t));
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Synthetic: counter-based, so sample i is the same whatever is made before it (any rank, any limit)

int data_make_synthetic(uint64_t seed, int set, int n, int c, int h, int w, int classes, dataset *out) {
    memset(out, 0, sizeof *out);
    const size_t per = (size_t)c * (size_t)h * (size_t)w;
    if (n < 1 || per == 0 || classes < 1) return ERR(ST_INPUT, "synthetic data: %d samples of %dx%dx%d", n, c, h, w);
    if ((size_t)n * per > DATA_MAX_BYTES)
        return ERR(ST_INPUT, "synthetic data: %d samples of %zu bytes exceed %zu bytes", n, per, DATA_MAX_BYTES);
    *out = (dataset){.n = n, .c = c, .h = h, .w = w, .classes = classes};
    out->images = malloc((size_t)n * per);
    out->labels = malloc((size_t)n * sizeof(int32_t));
    if (!out->images || !out->labels) {
        data_free(out);
        return ERR(ST_RUNTIME, "synthetic data: out of host memory for %d samples", n);
    }
    const uint64_t base = rng_mix(seed, 0x5717e71c0000ULL + (uint64_t)set);
    for (int i = 0; i < n; i++) {
        rng r;
        rng_seed(&r, rng_mix(base, (uint64_t)i));
        const int32_t label = (int32_t)rng_below(&r, (uint32_t)classes);
        out->labels[i] = label;
        uint8_t *img = out->images + (size_t)i * per;
        const size_t plane = (size_t)h * (size_t)w;
        for (int ch = 0; ch < c; ch++) {
            // the same tones in the training and the test set: what is learnt carries over
            const unsigned tone = (unsigned)(rng_mix(seed ^ 0x70e5ULL, (uint64_t)label * 4099u + (uint64_t)ch) & 0xff);
            uint8_t *p = img + (size_t)ch * plane;
            size_t j = 0;
            for (; j + 8 <= plane; j += 8) {  // 8 bytes of noise per draw
                uint64_t v = rng_u64(&r);
                for (int k = 0; k < 8; k++, v >>= 8) p[j + k] = (uint8_t)(((v & 0xff) + tone) >> 1);
            }
            for (uint64_t v = rng_u64(&r); j < plane; j++, v >>= 8) p[j] = (uint8_t)(((v & 0xff) + tone) >> 1);
        }
    }
    return ST_OK;
}

void data_free(dataset *d) {
    free(d->images);
    free(d->labels);
    memset(d, 0, sizeof *d);
}

// ---------------------------------------------------------------------------------------------------------
// Sampler

void data_permutation(uint64_t seed, int epoch, int n, int32_t *perm) {
    rng r;
    rng_seed(&r, rng_mix(seed, (uint64_t)epoch + 0x5eed));
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {  // Fisher–Yates
        int j = (int)rng_below(&r, (uint32_t)i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
}

int data_steps_per_epoch(int n, int per_rank_batch, int world) {
    long long g = (long long)per_rank_batch * world;
    return g > 0 ? (int)(n / g) : 0;
}

const int32_t *data_shard_batch(const int32_t *perm, int step, int per_rank_batch, int world, int rank) {
    size_t g = (size_t)per_rank_batch * world;
    return perm + (size_t)step * g + (size_t)rank * per_rank_batch;
}

void data_eval_range(int n, int world, int rank, int *begin, int *end) {
    int base = n / world, extra = n % world;
    *begin = rank * base + (rank < extra ? rank : extra);
    *end = *begin + base + (rank < extra ? 1 : 0);
}

int data_eval_batch(int n, int world, int eval_batch) {
    const int shard = (n + world - 1) / world;
    const int eb = eval_batch < shard ? eval_batch : shard;
    return eb > 0 ? eb : 1;
}
