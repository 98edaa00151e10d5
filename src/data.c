// data.c — IDX (raw or gzip) and CIFAR-10 binary loaders, fully validated, and the sharding sampler.
//
// A file is read whole into memory (gzip through zlib's gz* API, which also reads raw files as they are), then
// parsed from the buffer, so every length check is against the real byte count.
#include "data.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common.h"

// Data sets larger than this are refused (a corrupt header cannot make us allocate without bound).
#define DATA_MAX_BYTES ((size_t)8 << 30)

// ---------------------------------------------------------------------------------------------------------
// Whole-file reading (raw or gzip)

static int read_whole(const char *path, uint8_t **out, size_t *out_n) {
    *out = NULL, *out_n = 0;
    FILE *probe = fopen(path, "rb");
    if (!probe) return ERR(ST_INPUT, "%s: cannot open: %s", path, strerror(errno));
    unsigned char magic[2] = {0, 0};
    size_t got = fread(magic, 1, 2, probe);
    fclose(probe);
    int is_gz = got == 2 && magic[0] == 0x1f && magic[1] == 0x8b;

    gzFile gz = gzopen(path, "rb");
    if (!gz) return ERR(ST_INPUT, "%s: cannot open: %s", path, strerror(errno ? errno : ENOMEM));
    gzbuffer(gz, 1 << 17);
    size_t cap = 1 << 20, n = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        gzclose(gz);
        return ERR(ST_RUNTIME, "%s: out of host memory", path);
    }
    for (;;) {
        if (n == cap) {
            if (cap >= DATA_MAX_BYTES) {
                free(buf);
                gzclose(gz);
                return ERR(ST_INPUT, "%s: larger than %zu bytes", path, DATA_MAX_BYTES);
            }
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                gzclose(gz);
                return ERR(ST_RUNTIME, "%s: out of host memory", path);
            }
            buf = nb, cap *= 2;
        }
        size_t want = cap - n;
        if (want > (1u << 30)) want = 1u << 30;
        int r = gzread(gz, buf + n, (unsigned)want);
        if (r < 0) {
            int errnum = 0;
            const char *msg = gzerror(gz, &errnum);
            int st = ERR(ST_INPUT, "%s: %s: %s", path, is_gz ? "corrupt gzip data" : "read error",
                         errnum == Z_ERRNO ? strerror(errno) : msg);
            free(buf);
            gzclose(gz);
            return st;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    // zlib reports a gzip stream cut short only as a short read at EOF with an error state.
    int errnum = 0;
    const char *msg = gzerror(gz, &errnum);
    if (errnum != Z_OK && errnum != Z_STREAM_END) {
        int st = ERR(ST_INPUT, "%s: %s: %s", path, is_gz ? "truncated or corrupt gzip data" : "read error", msg);
        free(buf);
        gzclose(gz);
        return st;
    }
    int cr = gzclose(gz);
    if (cr != Z_OK) {
        free(buf);
        return ERR(ST_INPUT, "%s: %s", path, is_gz ? "truncated or corrupt gzip data (bad trailer)" : "read error");
    }
    *out = buf, *out_n = n;
    return ST_OK;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

// ---------------------------------------------------------------------------------------------------------
// IDX

// Parse an IDX u8 file of the given rank; dims[0..rank) filled; *payload points into buf.
static int idx_parse(const char *path, const uint8_t *buf, size_t n, int rank, uint32_t dims[3],
                     const uint8_t **payload) {
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
    if (n - hdr < total)
        return ERR(ST_INPUT, "%s: truncated: %zu data bytes, header says %llu", path, n - hdr, total);
    if (n - hdr > total)
        return ERR(ST_INPUT, "%s: %zu trailing bytes after the %llu data bytes the header declares", path,
                   n - hdr - (size_t)total, total);
    *payload = buf + hdr;
    return ST_OK;
}

int data_load_idx(const char *images_path, const char *labels_path, int classes, int limit, dataset *out) {
    memset(out, 0, sizeof *out);
    uint8_t *ib = NULL, *lb = NULL;
    size_t in_ = 0, ln = 0;
    int st = read_whole(images_path, &ib, &in_);
    if (st == ST_OK) st = read_whole(labels_path, &lb, &ln);
    uint32_t idims[3] = {0}, ldims[3] = {0};
    const uint8_t *ip = NULL, *lp = NULL;
    if (st == ST_OK) st = idx_parse(images_path, ib, in_, 3, idims, &ip);
    if (st == ST_OK) st = idx_parse(labels_path, lb, ln, 1, ldims, &lp);
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
        out->labels = malloc((size_t)n);
        if (!out->images || !out->labels) {
            st = ERR(ST_RUNTIME, "out of host memory loading %s", images_path);
        } else {
            memcpy(out->images, ip, (size_t)n * per);
            memcpy(out->labels, lp, (size_t)n);
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
        st = read_whole(paths[i], &bufs[i], &lens[i]);
        if (st != ST_OK) break;
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
        out->labels = malloc((size_t)n);
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
