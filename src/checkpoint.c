// checkpoint.c — safetensors checkpoints: atomic save, fully validated load.
//
// Save writes "<path>.tmp.<pid>" next to the final file, fsyncs it, renames it over the final name and fsyncs
// the directory, so the final name only ever holds a complete file. A process killed mid-save can leave a stale
// "<path>.tmp.<pid>"; nothing ever reads those, and a later save by a process with the same pid replaces it.
#include "checkpoint.h"

#include <cJSON.h>
#include <errno.h>
#include <libgen.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "fileio.h"

// Tensor bytes are memcpy'd between the file and host floats, which is only right on a little-endian host.
#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "checkpoint.c assumes a little-endian host");
#endif

#define CKPT_HEADER_MAX 100000000ULL          // the safetensors reference implementation's limit
#define CKPT_FILE_MAX (16ULL << 30)           // the whole file is read into memory
#define CKPT_LOAD_MAX_DIMS 8                  // other writers' files may hold higher ranks than we write
#define CKPT_JSON_INT_MAX 9007199254740992.0  // 2^53: larger JSON numbers are not exact integers in a double
#define CKPT_IO_CHUNK (1u << 30)              // stay below Linux's per-call read/write cap
#define CKPT_META_KEY "__metadata__"

typedef struct ckpt_entry {
    const char *name;  // points into the parsed header
    const char *dtype;
    int ndim;
    int64_t shape[CKPT_LOAD_MAX_DIMS];
    uint64_t begin, end;  // relative to the data area
} ckpt_entry;

struct ckpt_file {
    char *path;
    int fd;              // open for ckpt_read_tensor
    uint64_t size;       // of the whole file
    uint64_t data_start;  // the data area's offset: 8 + header length
    uint64_t data_size;
    cJSON *header;
    ckpt_entry *entries;  // sorted by name
    int n_entries;
    ckpt_kv *meta;  // points into the parsed header
    int n_meta;
};

static int host_check_little_endian(void) {
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    if (first != 1) return ERR(ST_RUNTIME, "checkpoints need a little-endian host");
    return ST_OK;
}

// a * b, or -1 when it does not fit in 63 bits (sizes are kept signed-safe).
static int64_t mul_checked(int64_t a, int64_t b) {
    if (a < 0 || b < 0) return -1;
    if (b != 0 && a > INT64_MAX / b) return -1;
    return a * b;
}

// ---------------------------------------------------------------------------------------------------------
// Save: argument checks

static const char *dtype_name(int dtype) { return dtype == CKPT_I64 ? "I64" : "F32"; }

static int64_t tensor_bytes(const ckpt_tensor *t) {
    int64_t n = t->dtype == CKPT_I64 ? (int64_t)sizeof(int64_t) : (int64_t)sizeof(float);
    for (int d = 0; d < t->ndim && n >= 0; d++) n = mul_checked(n, t->shape[d]);
    return n;
}

static int save_check_tensor(const char *path, const ckpt_tensor *t, int i) {
    if (t->name == NULL || t->name[0] == '\0') return ERR(ST_INPUT, "%s: tensor #%d has no name", path, i);
    if (strcmp(t->name, CKPT_META_KEY) == 0)
        return ERR(ST_INPUT, "%s: tensor name '%s' is reserved for metadata", path, t->name);
    if (t->dtype != CKPT_F32 && t->dtype != CKPT_I64)
        return ERR(ST_INPUT, "%s: tensor '%s' has unknown dtype code %d", path, t->name, t->dtype);
    if (t->ndim < 0 || t->ndim > CKPT_MAX_DIMS)
        return ERR(ST_INPUT, "%s: tensor '%s' has rank %d (0..%d allowed)", path, t->name, t->ndim, CKPT_MAX_DIMS);
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0 || (double)t->shape[d] > CKPT_JSON_INT_MAX)
            return ERR(ST_INPUT, "%s: tensor '%s' has dimension %d of size %lld", path, t->name, d,
                       (long long)t->shape[d]);
    int64_t bytes = tensor_bytes(t);
    if (bytes < 0) return ERR(ST_INPUT, "%s: tensor '%s' is too large", path, t->name);
    if (bytes > 0 && t->data == NULL) return ERR(ST_INPUT, "%s: tensor '%s' has no data", path, t->name);
    return ST_OK;
}

// Quadratic duplicate checks: a model has tens of tensors.
static int save_check_args(const char *path, const ckpt_tensor *tensors, int n_tensors, const ckpt_kv *meta,
                           int n_meta) {
    if (n_tensors < 0 || n_meta < 0 || (n_tensors > 0 && !tensors) || (n_meta > 0 && !meta))
        return ERR(ST_INPUT, "%s: bad tensor/metadata list (%d tensors, %d metadata entries)", path, n_tensors,
                   n_meta);
    uint64_t total = 0;
    for (int i = 0; i < n_tensors; i++) {
        TRY(save_check_tensor(path, &tensors[i], i));
        for (int j = 0; j < i; j++)
            if (strcmp(tensors[i].name, tensors[j].name) == 0)
                return ERR(ST_INPUT, "%s: tensor name '%s' appears twice", path, tensors[i].name);
        total += (uint64_t)tensor_bytes(&tensors[i]);
        if ((double)total > CKPT_JSON_INT_MAX) return ERR(ST_INPUT, "%s: tensors are too large in total", path);
    }
    for (int i = 0; i < n_meta; i++) {
        if (meta[i].key == NULL || meta[i].key[0] == '\0' || meta[i].value == NULL)
            return ERR(ST_INPUT, "%s: metadata entry #%d has no key or no value", path, i);
        for (int j = 0; j < i; j++)
            if (strcmp(meta[i].key, meta[j].key) == 0)
                return ERR(ST_INPUT, "%s: metadata key '%s' appears twice", path, meta[i].key);
    }
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Save: header

static cJSON *header_tensor_json(const ckpt_tensor *t, uint64_t begin, uint64_t end) {
    cJSON *o = cJSON_CreateObject(), *shape = cJSON_CreateArray(), *offs = cJSON_CreateArray();
    int ok = o && shape && offs;
    for (int d = 0; ok && d < t->ndim; d++) ok = cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
    ok = ok && cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)begin));
    ok = ok && cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)end));
    ok = ok && cJSON_AddStringToObject(o, "dtype", dtype_name(t->dtype)) != NULL;
    if (ok && cJSON_AddItemToObject(o, "shape", shape)) shape = NULL;  // owned by o from here
    else ok = 0;
    if (ok && cJSON_AddItemToObject(o, "data_offsets", offs)) offs = NULL;
    else ok = 0;
    cJSON_Delete(shape);
    cJSON_Delete(offs);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *header_json(const ckpt_tensor *tensors, int n_tensors, const ckpt_kv *meta, int n_meta) {
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    if (ok && n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, CKPT_META_KEY);
        ok = m != NULL;
        for (int i = 0; ok && i < n_meta; i++) ok = cJSON_AddStringToObject(m, meta[i].key, meta[i].value) != NULL;
    }
    uint64_t offset = 0;
    for (int i = 0; ok && i < n_tensors; i++) {
        uint64_t end = offset + (uint64_t)tensor_bytes(&tensors[i]);
        cJSON *t = header_tensor_json(&tensors[i], offset, end);
        ok = t && cJSON_AddItemToObject(root, tensors[i].name, t);
        if (!ok) cJSON_Delete(t);
        offset = end;
    }
    if (!ok) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

// The first bytes of the file: u64 LE length, JSON, spaces up to a multiple of 8 so the data area is aligned.
static int header_bytes(const char *path, const ckpt_tensor *tensors, int n_tensors, const ckpt_kv *meta,
                        int n_meta, unsigned char **out, size_t *out_n) {
    cJSON *root = header_json(tensors, n_tensors, meta, n_meta);
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    if (!text) return ERR(ST_RUNTIME, "%s: out of host memory building the header", path);
    size_t len = strlen(text), n = (len + 7) / 8 * 8;
    if (n > CKPT_HEADER_MAX) {
        free(text);
        return ERR(ST_INPUT, "%s: header of %zu bytes exceeds the %llu-byte limit", path, n, CKPT_HEADER_MAX);
    }
    unsigned char *b = malloc(8 + n);
    if (!b) {
        free(text);
        return ERR(ST_RUNTIME, "%s: out of host memory building the header", path);
    }
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(b + 8, text, len);
    memset(b + 8 + len, ' ', n - len);
    free(text);
    *out = b;
    *out_n = 8 + n;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Save: writing the temp file

typedef struct ckpt_writer {
    int fd;
    uint64_t written;
    long long crash_after;  // the crash hook (ckpt_set_crash_after), -1 when off
} ckpt_writer;

// The crash hook (tests only): the test trainer sets it from DDP_CKPT_CRASH_AFTER_BYTES; -1: off.
static long long g_crash_after = -1;

void ckpt_set_crash_after(long long bytes) { g_crash_after = bytes < 0 ? -1 : bytes; }

static void writer_maybe_crash(const ckpt_writer *w) {
    if (w->crash_after >= 0 && w->written == (uint64_t)w->crash_after) raise(SIGKILL);
}

// Writes all n bytes; 0 or an errno. Pieces stop exactly at the crash-hook byte count.
static int writer_put(ckpt_writer *w, const void *p, size_t n) {
    const unsigned char *b = p;
    while (n > 0) {
        writer_maybe_crash(w);
        size_t chunk = n < CKPT_IO_CHUNK ? n : CKPT_IO_CHUNK;
        if (w->crash_after >= 0 && w->written + chunk > (uint64_t)w->crash_after &&
            w->written < (uint64_t)w->crash_after)
            chunk = (size_t)((uint64_t)w->crash_after - w->written);
        ssize_t r = write(w->fd, b, chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return errno;
        if (r == 0) return EIO;  // a regular file never accepts zero bytes of a non-empty write
        b += r;
        n -= (size_t)r;
        w->written += (uint64_t)r;
    }
    writer_maybe_crash(w);
    return 0;
}

static int fsync_retry(int fd) {
    int r = fsync(fd);
    while (r != 0 && errno == EINTR) r = fsync(fd);
    return r;
}

// A file with our pid in its name cannot belong to a live save (one per process), so an existing one is stale
// (left by a killed process that had the same pid) and is replaced.
static int tmp_create(const char *tmp) {
    int fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST && unlink(tmp) == 0) fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    return fd;
}

static int tmp_write(ckpt_writer *w, const unsigned char *head, size_t head_n, const ckpt_tensor *tensors,
                     int n_tensors) {
    int e = writer_put(w, head, head_n);
    for (int i = 0; e == 0 && i < n_tensors; i++) e = writer_put(w, tensors[i].data, (size_t)tensor_bytes(&tensors[i]));
    return e;
}

// After the rename the new file is in place; this makes the rename itself durable.
static int dir_sync(const char *path) {
    const char *slash = strrchr(path, '/');
    size_t n = slash == NULL ? 1 : slash == path ? 1 : (size_t)(slash - path);
    char *dir = malloc(n + 1);
    if (!dir) return ERR(ST_RUNTIME, "%s: out of host memory", path);
    memcpy(dir, slash == NULL ? "." : path, n);
    dir[n] = '\0';
    int st = ST_OK, fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    // Some file systems cannot fsync a directory (EINVAL); the rename is then as durable as they allow.
    if (fd < 0 || (fsync_retry(fd) != 0 && errno != EINVAL))
        st = ERR(ST_RUNTIME, "%s: written, but syncing directory %s failed: %s", path, dir, strerror(errno));
    if (fd >= 0) close(fd);
    free(dir);
    return st;
}

static int save_atomic(const char *path, const char *tmp, const unsigned char *head, size_t head_n,
                       const ckpt_tensor *tensors, int n_tensors, long long crash_after) {
    int fd = tmp_create(tmp);
    if (fd < 0) return ERR(ST_RUNTIME, "%s: cannot create temp file %s: %s", path, tmp, strerror(errno));
    ckpt_writer w = {fd, 0, crash_after};
    const char *what = "write";
    int e = tmp_write(&w, head, head_n, tensors, n_tensors);
    if (e == 0 && fsync_retry(fd) != 0) {
        e = errno;
        what = "fsync";
    }
    // Linux releases the descriptor even when close reports EINTR, and the data is already synced.
    if (close(fd) != 0 && e == 0 && errno != EINTR) {
        e = errno;
        what = "close";
    }
    if (e == 0 && rename(tmp, path) != 0) {
        e = errno;
        what = "rename";
    }
    if (e != 0) {
        unlink(tmp);
        return ERR(ST_RUNTIME, "%s: cannot save checkpoint (%s of %s failed): %s", path, what, tmp, strerror(e));
    }
    return dir_sync(path);
}

// rename() replaces whatever has the final name; as root that could be a device node (/dev/full) or a FIFO.
// Only a regular file (or nothing) may be replaced by a checkpoint; a directory is refused by rename itself.
// An existing regular file is replaced only when it is itself a checkpoint (or empty): --save pointed at a data
// file or a config by mistake must not destroy it.
static int target_check(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0 || S_ISDIR(sb.st_mode)) return ST_OK;  // a directory: rename refuses it
    if (!S_ISREG(sb.st_mode))
        return ERR(ST_INPUT, "%s: exists and is not a regular file: refusing to replace it with a checkpoint", path);
    return output_check_kind(path, "--save", ckpt_is_safetensors_head, "a safetensors checkpoint", 0);
}

int ckpt_is_safetensors_head(const unsigned char *head, size_t n) {
    if (n < 9) return 0;
    uint64_t len = 0;
    for (int i = 0; i < 8; i++) len |= (uint64_t)head[i] << (8 * i);
    return len >= 2 && len <= CKPT_HEADER_MAX && head[8] == '{';
}

static char *tmp_path(const char *path) {
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (tmp) snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    return tmp;
}

// "<path>.tmp.<pid>" files that a save killed midway left behind (a rank aborted while writing): the process is
// gone (on this host), so nothing will finish or remove them. Best effort.
static void stale_tmp_remove(const char *path) {
    char *copy = strdup(path), *copy2 = strdup(path);
    if (!copy || !copy2) {
        free(copy), free(copy2);
        return;
    }
    const char *dir = dirname(copy), *base = basename(copy2);
    size_t blen = strlen(base);
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        const char *n = e->d_name;
        if (strncmp(n, base, blen) != 0 || strncmp(n + blen, ".tmp.", 5) != 0) continue;
        char *end = NULL;
        long pid = strtol(n + blen + 5, &end, 10);
        if (end == n + blen + 5 || *end || pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;  // alive (or not ours to judge)
        char full[4096];
        if (snprintf(full, sizeof full, "%s/%s", dir, n) < (int)sizeof full) unlink(full);
    }
    if (d) closedir(d);
    free(copy), free(copy2);
}

int ckpt_check_target(const char *path) {
    if (path == NULL || path[0] == '\0') return ERR(ST_INPUT, "checkpoint path is empty");
    TRY(target_check(path));
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        return ERR(ST_INPUT, "%s: is a directory, not a checkpoint file", path);
    char *tmp = tmp_path(path);
    if (!tmp) return ERR(ST_RUNTIME, "%s: out of host memory", path);
    int st = ST_OK, fd = tmp_create(tmp);
    if (fd < 0)
        st = ERR(ST_INPUT, "%s: cannot write a checkpoint there (creating %s failed: %s)", path, tmp, strerror(errno));
    else close(fd), unlink(tmp);
    free(tmp);
    if (st == ST_OK) stale_tmp_remove(path);
    return st;
}

int ckpt_save(const char *path, const ckpt_tensor *tensors, int n_tensors, const ckpt_kv *meta, int n_meta) {
    if (path == NULL || path[0] == '\0') return ERR(ST_INPUT, "checkpoint path is empty");
    TRY(host_check_little_endian());
    const long long crash_after = g_crash_after;
    TRY(save_check_args(path, tensors, n_tensors, meta, n_meta));
    TRY(target_check(path));
    unsigned char *head = NULL;
    size_t head_n = 0;
    TRY(header_bytes(path, tensors, n_tensors, meta, n_meta, &head, &head_n));
    char *tmp = tmp_path(path);
    if (!tmp) {
        free(head);
        return ERR(ST_RUNTIME, "%s: out of host memory", path);
    }
    int st = save_atomic(path, tmp, head, head_n, tensors, n_tensors, crash_after);
    free(tmp);
    free(head);
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// Load: the length field and the header. Only the header is read here; a tensor's bytes are read when it is
// asked for (ckpt_read_tensor), so memory stays bounded by what the caller reads, whatever the file says.

static int load_open(ckpt_file *f) {
    uint64_t size;
    TRY(input_open(f->path, "checkpoint", &f->fd, &size));
    if (size > CKPT_FILE_MAX)
        return ERR(ST_INPUT, "%s: file is %llu bytes, larger than the 16 GiB limit", f->path, (unsigned long long)size);
    if (size < 8)
        return ERR(ST_INPUT, "%s: file is %llu bytes, shorter than the 8-byte header length", f->path,
                   (unsigned long long)size);
    f->size = size;
    return ST_OK;
}

static int load_header(ckpt_file *f) {
    unsigned char len[8];
    TRY(input_pread(f->fd, f->path, len, 8, 0));
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)len[i] << (8 * i);
    if (n > f->size - 8)
        return ERR(ST_INPUT, "%s: header length %llu exceeds the %llu bytes after the length field", f->path,
                   (unsigned long long)n, (unsigned long long)(f->size - 8));
    if (n > CKPT_HEADER_MAX)
        return ERR(ST_INPUT, "%s: header length %llu exceeds the %llu-byte limit", f->path, (unsigned long long)n,
                   CKPT_HEADER_MAX);
    if (n == 0) return ERR(ST_INPUT, "%s: header does not start with '{'", f->path);
    char *text = malloc((size_t)n + 1);
    if (!text) return ERR(ST_RUNTIME, "%s: out of host memory for its %llu-byte header", f->path, (unsigned long long)n);
    int st = input_pread(f->fd, f->path, text, (size_t)n, 8);
    const char *end = NULL;
    if (st == ST_OK && text[0] != '{') st = ERR(ST_INPUT, "%s: header does not start with '{'", f->path);
    if (st == ST_OK && memchr(text, '\0', (size_t)n)) st = ERR(ST_INPUT, "%s: header contains a NUL byte", f->path);
    if (st == ST_OK) {
        f->header = cJSON_ParseWithLengthOpts(text, (size_t)n, &end, 0);
        if (!f->header)
            st = ERR(ST_INPUT, "%s: header is not valid JSON (error at header byte %td)", f->path,
                     end ? end - text : (ptrdiff_t)0);
    }
    if (st == ST_OK && !cJSON_IsObject(f->header)) st = ERR(ST_INPUT, "%s: header is not a JSON object", f->path);
    for (const char *p = end; st == ST_OK && p < text + n; p++)
        if (*p != ' ')
            st = ERR(ST_INPUT, "%s: header has trailing byte 0x%02x after the JSON (only space padding allowed)",
                     f->path, (unsigned char)*p);
    free(text);
    f->data_start = 8 + n;
    f->data_size = f->size - 8 - n;
    return st;
}

// The data area must end where the last tensor ends: bytes after it are not part of any checkpoint we wrote
// (an append, a file grown by truncate), and a header that promises more than the file holds was caught per
// tensor (entry_offsets).
static int load_check_size(ckpt_file *f) {
    uint64_t end = 0;
    for (int i = 0; i < f->n_entries; i++)
        if (f->entries[i].end > end) end = f->entries[i].end;
    if (f->data_size != end)
        return ERR(ST_INPUT, "%s: %llu trailing bytes: the file is %llu bytes, its header's tensors end at byte %llu",
                   f->path, (unsigned long long)(f->data_size - end), (unsigned long long)f->size,
                   (unsigned long long)(f->data_start + end));
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Load: header validation

static int dtype_size(const char *dtype) {
    static const struct {
        const char *name;
        int size;
    } table[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E5M2", 1}, {"F8_E4M3", 1},
                 {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},   {"U64", 8},     {"U32", 4},
                 {"U16", 2}, {"U8", 1},  {"BOOL", 1}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(dtype, table[i].name) == 0) return table[i].size;
    return 0;
}

// A JSON number that is an exact non-negative integer; 0 on success.
static int json_uint(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double v = item->valuedouble;
    if (!(v >= 0 && v <= CKPT_JSON_INT_MAX) || (double)(uint64_t)v != v) return -1;
    *out = (uint64_t)v;
    return 0;
}

static int entry_shape(const ckpt_file *f, const cJSON *item, ckpt_entry *e) {
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!cJSON_IsArray(shape))
        return ERR(ST_INPUT, "%s: tensor '%s': 'shape' missing or not an array", f->path, e->name);
    int nd = cJSON_GetArraySize(shape);
    if (nd > CKPT_LOAD_MAX_DIMS)
        return ERR(ST_INPUT, "%s: tensor '%s': shape has %d dimensions (at most %d)", f->path, e->name, nd,
                   CKPT_LOAD_MAX_DIMS);
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        uint64_t v;
        if (json_uint(dim, &v) != 0)
            return ERR(ST_INPUT, "%s: tensor '%s': shape[%d] is not a non-negative integer", f->path, e->name, d);
        e->shape[d++] = (int64_t)v;
    }
    e->ndim = nd;
    return ST_OK;
}

static int entry_offsets(const ckpt_file *f, const cJSON *item, ckpt_entry *e) {
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || json_uint(cJSON_GetArrayItem(offs, 0), &e->begin) ||
        json_uint(cJSON_GetArrayItem(offs, 1), &e->end))
        return ERR(ST_INPUT, "%s: tensor '%s': 'data_offsets' is not [begin, end] of non-negative integers", f->path,
                   e->name);
    if (e->begin > e->end || e->end > f->data_size)
        return ERR(ST_INPUT, "%s: tensor '%s': data_offsets [%llu, %llu] outside the %llu-byte data area", f->path,
                   e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                   (unsigned long long)f->data_size);
    return ST_OK;
}

static int entry_parse(const ckpt_file *f, const cJSON *item, ckpt_entry *e) {
    e->name = item->string;
    if (!cJSON_IsObject(item)) return ERR(ST_INPUT, "%s: tensor '%s' is not a JSON object", f->path, e->name);
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dtype))
        return ERR(ST_INPUT, "%s: tensor '%s': 'dtype' missing or not a string", f->path, e->name);
    e->dtype = dtype->valuestring;
    int dsize = dtype_size(e->dtype);
    if (dsize == 0) return ERR(ST_INPUT, "%s: tensor '%s' has unknown dtype '%s'", f->path, e->name, e->dtype);
    TRY(entry_shape(f, item, e));
    TRY(entry_offsets(f, item, e));
    int64_t bytes = dsize;
    for (int d = 0; d < e->ndim && bytes >= 0; d++) bytes = mul_checked(bytes, e->shape[d]);
    if (bytes < 0) return ERR(ST_INPUT, "%s: tensor '%s': shape is too large", f->path, e->name);
    if ((uint64_t)bytes != e->end - e->begin)
        return ERR(ST_INPUT, "%s: tensor '%s': data_offsets span %llu bytes, but its %s shape needs %lld", f->path,
                   e->name, (unsigned long long)(e->end - e->begin), e->dtype, (long long)bytes);
    return ST_OK;
}

static int meta_parse(ckpt_file *f, const cJSON *m) {
    if (!cJSON_IsObject(m)) return ERR(ST_INPUT, "%s: '%s' is not a JSON object", f->path, CKPT_META_KEY);
    f->meta = malloc(sizeof *f->meta * (size_t)(cJSON_GetArraySize(m) + 1));
    if (!f->meta) return ERR(ST_RUNTIME, "%s: out of host memory", f->path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, m) {
        if (!cJSON_IsString(kv))
            return ERR(ST_INPUT, "%s: %s value '%s' is not a string", f->path, CKPT_META_KEY, kv->string);
        for (int j = 0; j < f->n_meta; j++)
            if (strcmp(f->meta[j].key, kv->string) == 0)
                return ERR(ST_INPUT, "%s: %s key '%s' appears twice", f->path, CKPT_META_KEY, kv->string);
        f->meta[f->n_meta++] = (ckpt_kv){kv->string, kv->valuestring};
    }
    return ST_OK;
}

static int entry_cmp_name(const void *a, const void *b) {
    return strcmp(((const ckpt_entry *)a)->name, ((const ckpt_entry *)b)->name);
}

static int load_entries(ckpt_file *f) {
    f->entries = malloc(sizeof *f->entries * (size_t)(cJSON_GetArraySize(f->header) + 1));
    if (!f->entries) return ERR(ST_RUNTIME, "%s: out of host memory", f->path);
    int seen_meta = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, f->header) {
        if (strcmp(item->string, CKPT_META_KEY) == 0) {
            if (seen_meta++) return ERR(ST_INPUT, "%s: '%s' appears twice", f->path, CKPT_META_KEY);
            TRY(meta_parse(f, item));
            continue;
        }
        ckpt_entry *e = &f->entries[f->n_entries];
        memset(e, 0, sizeof *e);
        TRY(entry_parse(f, item, e));
        f->n_entries++;
    }
    qsort(f->entries, (size_t)f->n_entries, sizeof *f->entries, entry_cmp_name);
    for (int i = 1; i < f->n_entries; i++)
        if (strcmp(f->entries[i - 1].name, f->entries[i].name) == 0)
            return ERR(ST_INPUT, "%s: tensor '%s' appears twice", f->path, f->entries[i].name);
    return ST_OK;
}

static int entry_cmp_begin(const void *a, const void *b) {
    const ckpt_entry *x = *(const ckpt_entry *const *)a, *y = *(const ckpt_entry *const *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

// Empty tensors occupy no bytes, so they cannot overlap anything.
static int load_check_overlap(ckpt_file *f) {
    const ckpt_entry **by_begin = malloc(sizeof *by_begin * (size_t)(f->n_entries + 1));
    if (!by_begin) return ERR(ST_RUNTIME, "%s: out of host memory", f->path);
    int n = 0, st = ST_OK;
    for (int i = 0; i < f->n_entries; i++)
        if (f->entries[i].end > f->entries[i].begin) by_begin[n++] = &f->entries[i];
    qsort(by_begin, (size_t)n, sizeof *by_begin, entry_cmp_begin);
    const ckpt_entry *reach = NULL;  // the range ending furthest so far
    for (int i = 0; i < n && st == ST_OK; i++) {
        const ckpt_entry *e = by_begin[i];
        if (reach && e->begin < reach->end)
            st = ERR(ST_INPUT, "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap", f->path, reach->name,
                     (unsigned long long)reach->begin, (unsigned long long)reach->end, e->name,
                     (unsigned long long)e->begin, (unsigned long long)e->end);
        if (!reach || e->end > reach->end) reach = e;
    }
    free(by_begin);
    return st;
}

int ckpt_load(const char *path, ckpt_file **out) {
    *out = NULL;
    if (path == NULL || path[0] == '\0') return ERR(ST_INPUT, "checkpoint path is empty");
    ckpt_file *f = calloc(1, sizeof *f);
    if (!f) return ERR(ST_RUNTIME, "%s: out of host memory", path);
    f->path = strdup(path);
    int st = f->path ? ST_OK : ERR(ST_RUNTIME, "%s: out of host memory", path);
    f->fd = -1;
    if (st == ST_OK) st = load_open(f);
    if (st == ST_OK) st = load_header(f);
    if (st == ST_OK) st = load_entries(f);
    if (st == ST_OK) st = load_check_size(f);
    if (st == ST_OK) st = load_check_overlap(f);
    if (st != ST_OK) {
        ckpt_free(f);
        return st;
    }
    *out = f;
    return ST_OK;
}

void ckpt_free(ckpt_file *f) {
    if (!f) return;
    cJSON_Delete(f->header);
    free(f->entries);
    free(f->meta);
    if (f->fd >= 0) close(f->fd);
    free(f->path);
    free(f);
}

// ---------------------------------------------------------------------------------------------------------
// Load: queries

static void shape_format(char *buf, size_t n, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && used < n; d++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

int ckpt_require_finite(const ckpt_file *f, const char *name, const float *v, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]) && bad++ == 0) first = i;
    if (bad)
        return ERR(ST_INPUT, "%s: tensor '%s' holds %zu non-finite value(s) (first: %s at element %zu); refusing it",
                   f->path, name, bad, isnan(v[first]) ? "NaN" : "Inf", first);
    return ST_OK;
}

// A tensor of the given dtype and exact shape into dst (its bytes as they are).
static int read_typed(const ckpt_file *f, const char *name, const char *dtype, int ndim, const int64_t *shape,
                      void *dst) {
    TRY(host_check_little_endian());
    ckpt_entry key = {.name = name};
    const ckpt_entry *e = name ? bsearch(&key, f->entries, (size_t)f->n_entries, sizeof *f->entries,
                                         entry_cmp_name)
                               : NULL;
    if (!e) return ERR(ST_INPUT, "%s: no tensor '%s'", f->path, name ? name : "(null)");
    if (ndim < 0 || ndim > CKPT_MAX_DIMS || (ndim > 0 && !shape))
        return ERR(ST_INPUT, "%s: tensor '%s': requested rank %d (0..%d allowed)", f->path, name, ndim,
                   CKPT_MAX_DIMS);
    if (strcmp(e->dtype, dtype) != 0)
        return ERR(ST_INPUT, "%s: tensor '%s' has dtype %s, expected %s", f->path, name, e->dtype, dtype);
    int same = e->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = e->shape[d] == shape[d];
    if (!same) {
        char have[256], want[256];
        shape_format(have, sizeof have, e->ndim, e->shape);
        shape_format(want, sizeof want, ndim, shape);
        return ERR(ST_INPUT, "%s: tensor '%s' has shape %s, expected %s", f->path, name, have, want);
    }
    if (e->end == e->begin) return ST_OK;
    return input_pread(f->fd, f->path, dst, (size_t)(e->end - e->begin), f->data_start + e->begin);
}

int ckpt_read_tensor(const ckpt_file *f, const char *name, int ndim, const int64_t *shape, float *dst) {
    return read_typed(f, name, "F32", ndim, shape, dst);
}

int ckpt_read_tensor_i64(const ckpt_file *f, const char *name, int ndim, const int64_t *shape, int64_t *dst) {
    return read_typed(f, name, "I64", ndim, shape, dst);
}

int ckpt_has_tensor(const ckpt_file *f, const char *name) {
    if (!f || !name) return 0;
    ckpt_entry key = {.name = name};
    return bsearch(&key, f->entries, (size_t)f->n_entries, sizeof *f->entries, entry_cmp_name) != NULL;
}

const char *ckpt_meta(const ckpt_file *f, const char *key) {
    if (!f || !key) return NULL;
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[i].key, key) == 0) return f->meta[i].value;
    return NULL;
}

int ckpt_n_tensors(const ckpt_file *f) { return f ? f->n_entries : 0; }

const char *ckpt_tensor_name(const ckpt_file *f, int i) {
    return f && i >= 0 && i < f->n_entries ? f->entries[i].name : NULL;
}

const char *ckpt_path(const ckpt_file *f) { return f ? f->path : ""; }
