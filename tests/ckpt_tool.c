// ckpt_tool.c — checkpoint checks for the whole-program fault tests (tests/cli_faults.sh), through the same
// reader the trainer uses (ckpt_load + ckpt_read_tensor):
//   ckpt_tool check FILE       load it and read every F32 and I64 tensor; prints "N tensors, epoch E, global_step S"
//   ckpt_tool same FILE FILE   exit 0 when both hold the same tensors, bit for bit (metadata may differ)
//   ckpt_tool meta FILE KEY    print one __metadata__ value
//   ckpt_tool reldiff FILE FILE  print the largest |a - b| / max(|a|, 1e-2) over the F32 tensors outside "optim."
//                              (as tests/test_ddp.c measures np 2 vs np 1) and where it is: "3.795e-06 NAME"
// Exit 0 on success, 1 on a difference, 2 when a file does not load (the reader's message on stderr).
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "common.h"

typedef struct tensor {
    const char *name;
    int ndim;
    int64_t shape[CKPT_MAX_DIMS];
    size_t count, bytes;
    void *data;
} tensor;

typedef struct loaded {
    ckpt_file *f;
    cJSON *header;
    tensor *t;
    int n;
} loaded;

// The reader has no listing call, so the names and shapes come from the header, parsed here independently.
static cJSON *header_parse(const char *path) {
    FILE *fp = fopen(path, "rb");
    unsigned char len[8];
    if (!fp || fread(len, 1, 8, fp) != 8) {
        if (fp) fclose(fp);
        return NULL;
    }
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)len[i] << (8 * i);
    char *text = n < (1u << 30) ? malloc(n + 1) : NULL;
    cJSON *h = NULL;
    if (text && fread(text, 1, n, fp) == n) h = cJSON_ParseWithLength(text, n);
    free(text);
    fclose(fp);
    return h;
}

static int load(const char *path, loaded *l) {
    memset(l, 0, sizeof *l);
    if (ckpt_load(path, &l->f) != ST_OK) {
        fprintf(stderr, "ckpt_tool: %s\n", err_msg());
        return 2;
    }
    l->header = header_parse(path);
    if (!l->header) return 2;
    l->t = calloc((size_t)cJSON_GetArraySize(l->header) + 1, sizeof *l->t);
    const cJSON *item;
    cJSON_ArrayForEach(item, l->header) {
        const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
        if (strcmp(item->string, "__metadata__") == 0 || !cJSON_IsString(dtype)) continue;
        const int i64 = strcmp(dtype->valuestring, "I64") == 0;  // num_batches_tracked
        if (!i64 && strcmp(dtype->valuestring, "F32")) continue;
        tensor *t = &l->t[l->n++];
        t->name = item->string;
        t->ndim = cJSON_GetArraySize(shape);
        t->count = 1;
        for (int d = 0; d < t->ndim && d < CKPT_MAX_DIMS; d++) {
            t->shape[d] = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
            t->count *= (size_t)t->shape[d];
        }
        t->bytes = t->count * (i64 ? sizeof(int64_t) : sizeof(float));
        t->data = malloc(t->bytes + 1);
        if (!t->data || (i64 ? ckpt_read_tensor_i64(l->f, t->name, t->ndim, t->shape, t->data)
                             : ckpt_read_tensor(l->f, t->name, t->ndim, t->shape, t->data)) != ST_OK) {
            fprintf(stderr, "ckpt_tool: %s: %s\n", path, err_msg());
            return 2;
        }
    }
    return 0;
}

static void unload(loaded *l) {
    for (int i = 0; i < l->n; i++) free(l->t[i].data);
    free(l->t);
    cJSON_Delete(l->header);
    ckpt_free(l->f);
}

static const tensor *find(const loaded *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->t[i].name, name) == 0) return &l->t[i];
    return NULL;
}

static int same(const loaded *a, const loaded *b) {
    if (a->n != b->n) {
        printf("different: %d vs %d tensors\n", a->n, b->n);
        return 1;
    }
    for (int i = 0; i < a->n; i++) {
        const tensor *x = &a->t[i], *y = find(b, x->name);
        if (!y || y->bytes != x->bytes || memcmp(x->data, y->data, x->bytes) != 0) {
            printf("different: tensor %s\n", x->name);
            return 1;
        }
    }
    printf("same: %d tensors, bit-identical\n", a->n);
    return 0;
}

// The np-comparison metric of the tests: model tensors and running statistics, not the optimizer's state.
static int reldiff(const loaded *a, const loaded *b) {
    double worst = 0;
    const char *where = "-";
    for (int i = 0; i < a->n; i++) {
        const tensor *x = &a->t[i], *y = find(b, x->name);
        if (strncmp(x->name, "optim.", 6) == 0 || x->bytes != x->count * sizeof(float)) continue;
        if (!y || y->bytes != x->bytes) {
            printf("different: tensor %s\n", x->name);
            return 1;
        }
        const float *p = x->data, *q = y->data;
        for (size_t k = 0; k < x->count; k++) {
            const double d = fabs((double)p[k] - q[k]) / fmax(fabs((double)p[k]), 1e-2);
            if (d > worst || d != d) worst = d, where = x->name;
        }
    }
    printf("%.3e %s\n", worst, where);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: ckpt_tool check FILE | same FILE FILE | reldiff FILE FILE | meta FILE KEY\n");
        return 2;
    }
    loaded a, b;
    int rc = load(argv[2], &a);
    if (rc == 0 && strcmp(argv[1], "check") == 0) {
        const char *e = ckpt_meta(a.f, "epoch"), *s = ckpt_meta(a.f, "global_step");
        printf("%d tensors, epoch %s, global_step %s\n", a.n, e ? e : "?", s ? s : "?");
    } else if (rc == 0 && strcmp(argv[1], "same") == 0 && argc == 4) {
        rc = load(argv[3], &b);
        if (rc == 0) rc = same(&a, &b);
        unload(&b);
    } else if (rc == 0 && strcmp(argv[1], "reldiff") == 0 && argc == 4) {
        rc = load(argv[3], &b);
        if (rc == 0) rc = reldiff(&a, &b);
        unload(&b);
    } else if (rc == 0 && strcmp(argv[1], "meta") == 0 && argc == 4) {
        const char *v = ckpt_meta(a.f, argv[3]);
        if (v) printf("%s\n", v);
        rc = v ? 0 : 1;
    } else if (rc == 0) {
        fprintf(stderr, "ckpt_tool: bad command\n");
        rc = 2;
    }
    unload(&a);
    return rc;
}
