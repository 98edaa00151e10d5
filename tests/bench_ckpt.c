// bench_ckpt.c — the checkpoint API's save and load timed on a real tensor set (launch/bench_ckpt.sh runs it):
//   bench_ckpt save IN OUT REPEATS   read IN's tensors once, then ckpt_save them to OUT (temp file, fsync, rename,
//                                    directory fsync) REPEATS times; then the same bytes as ONE tensor, to
//                                    separate the per-tensor cost from the bytes
//   bench_ckpt load FILE REPEATS     ckpt_load + ckpt_read_tensor of every tensor, REPEATS times
// One line per measurement: "save|save1|load N_TENSORS BYTES BEST_S MEDIAN_S". Exit 0, or 2 with the reader's
// or writer's message.
#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "common.h"

typedef struct set {
    ckpt_tensor *t;
    void **data;
    int n;
    size_t bytes;
} set;

// The names, dtypes and shapes from the header (the reader has no listing call), the data through the reader.
static int set_read(const char *path, set *s) {
    memset(s, 0, sizeof *s);
    FILE *fp = fopen(path, "rb");
    unsigned char len[8];
    if (!fp || fread(len, 1, 8, fp) != 8) {
        if (fp) fclose(fp);
        return ERR(ST_INPUT, "%s: cannot read its header length", path);
    }
    uint64_t hn = 0;
    for (int i = 0; i < 8; i++) hn |= (uint64_t)len[i] << (8 * i);
    char *text = hn < (1u << 30) ? malloc(hn) : NULL;
    const int got = text && fread(text, 1, hn, fp) == hn;
    fclose(fp);
    cJSON *h = got ? cJSON_ParseWithLength(text, hn) : NULL;
    free(text);
    if (!h) return ERR(ST_INPUT, "%s: cannot parse its header", path);
    ckpt_file *f;
    int st = ckpt_load(path, &f);
    const int cap = cJSON_GetArraySize(h);
    s->t = calloc((size_t)cap + 1, sizeof *s->t);
    s->data = calloc((size_t)cap + 1, sizeof *s->data);
    if (st == ST_OK && (!s->t || !s->data)) st = ERR(ST_RUNTIME, "out of host memory");
    const cJSON *item;
    cJSON_ArrayForEach(item, h) {
        const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
        if (st != ST_OK || strcmp(item->string, "__metadata__") == 0 || !cJSON_IsString(dtype)) continue;
        const int i64 = strcmp(dtype->valuestring, "I64") == 0;
        ckpt_tensor *t = &s->t[s->n];
        t->name = strdup(item->string);
        t->dtype = i64 ? CKPT_I64 : CKPT_F32;
        t->ndim = cJSON_GetArraySize(shape);
        size_t count = 1;
        for (int d = 0; d < t->ndim && d < CKPT_MAX_DIMS; d++) {
            t->shape[d] = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
            count *= (size_t)t->shape[d];
        }
        const size_t bytes = count * (i64 ? sizeof(int64_t) : sizeof(float));
        void *p = malloc(bytes + 1);
        if (!p || !t->name) {
            free(p);
            st = ERR(ST_RUNTIME, "out of host memory");
            continue;
        }
        s->data[s->n] = p;
        t->data = p;
        s->n++;
        s->bytes += bytes;
        st = i64 ? ckpt_read_tensor_i64(f, t->name, t->ndim, t->shape, p) : ckpt_read_tensor(f, t->name, t->ndim, t->shape, p);
    }
    if (f) ckpt_free(f);
    cJSON_Delete(h);
    return st;
}

static void set_free(set *s) {
    for (int i = 0; i < s->n; i++) free((void *)s->t[i].name), free(s->data[i]);
    free(s->t), free(s->data);
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const char *what, int n, size_t bytes, double *secs, int r) {
    qsort(secs, (size_t)r, sizeof *secs, cmp_double);
    printf("%s %d %zu %.6f %.6f\n", what, n, bytes, secs[0], secs[r / 2]);
}

static int bench_save(const char *in, const char *out, int r) {
    set s;
    TRY(set_read(in, &s));
    double *secs = calloc((size_t)r, sizeof *secs);
    TRY_ALLOC(secs);
    int st = ST_OK;
    for (int k = 0; st == ST_OK && k < r; k++) {
        const double t0 = now_s();
        st = ckpt_save(out, s.t, s.n, NULL, 0);
        secs[k] = now_s() - t0;
    }
    if (st == ST_OK) report("save", s.n, s.bytes, secs, r);
    // The same bytes as one F32 tensor: what the file system charges for the bytes alone.
    float *one = st == ST_OK ? malloc(s.bytes) : NULL;
    if (st == ST_OK && !one) st = ERR(ST_RUNTIME, "out of host memory");
    if (st == ST_OK) {
        size_t off = 0;
        for (int i = 0; i < s.n; i++) {
            size_t count = 1;
            for (int d = 0; d < s.t[i].ndim; d++) count *= (size_t)s.t[i].shape[d];
            const size_t bytes = count * (s.t[i].dtype == CKPT_I64 ? sizeof(int64_t) : sizeof(float));
            memcpy((char *)one + off, s.data[i], bytes);
            off += bytes;
        }
        const ckpt_tensor whole = {.name = "all", .data = one, .ndim = 1, .shape = {(int64_t)(s.bytes / sizeof(float))}};
        for (int k = 0; st == ST_OK && k < r; k++) {
            const double t0 = now_s();
            st = ckpt_save(out, &whole, 1, NULL, 0);
            secs[k] = now_s() - t0;
        }
        if (st == ST_OK) report("save1", 1, s.bytes, secs, r);
        if (st == ST_OK) st = ckpt_save(out, s.t, s.n, NULL, 0);  // leave the real tensor set for `load`
    }
    free(one);
    free(secs);
    set_free(&s);
    return st;
}

static int bench_load(const char *path, int r) {
    double *secs = calloc((size_t)r, sizeof *secs);
    TRY_ALLOC(secs);
    int st = ST_OK, n = 0;
    size_t bytes = 0;
    for (int k = 0; st == ST_OK && k < r; k++) {
        set s;
        const double t0 = now_s();
        st = set_read(path, &s);
        secs[k] = now_s() - t0;
        n = s.n, bytes = s.bytes;
        set_free(&s);
    }
    if (st == ST_OK) report("load", n, bytes, secs, r);
    free(secs);
    return st;
}

int main(int argc, char **argv) {
    const int r = argc >= 4 ? atoi(argv[argc - 1]) : 0;
    int st;
    if (argc == 5 && strcmp(argv[1], "save") == 0 && r > 0) st = bench_save(argv[2], argv[3], r);
    else if (argc == 4 && strcmp(argv[1], "load") == 0 && r > 0) st = bench_load(argv[2], r);
    else {
        fprintf(stderr, "usage: bench_ckpt save IN OUT REPEATS | load FILE REPEATS\n");
        return 2;
    }
    if (st != ST_OK) {
        fprintf(stderr, "bench_ckpt: %s\n", err_msg());
        return 2;
    }
    return 0;
}
