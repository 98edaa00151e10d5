// fuzz_safetensors.c — libFuzzer target: the safetensors reader (ckpt_load, ckpt_read_tensor, ckpt_meta).
// Input: the file's bytes. When a file loads, the harness lists its tensors from the header itself (cJSON) and
// reads each one back: an F32 tensor of rank <= 4 must read with its own shape and give exactly the bytes
// at its data_offsets; a wrong shape and any other dtype must be refused.
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "common.h"
#include "fuzz_util.h"

static void check_tensor(const ckpt_file *f, const cJSON *t, const uint8_t *data_area) {
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(t, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
    FUZZ_CHECK(cJSON_IsString(dtype) && cJSON_IsArray(shape) && cJSON_IsArray(offs));
    int ndim = cJSON_GetArraySize(shape);
    int64_t dims[CKPT_MAX_DIMS + 1] = {0};
    size_t count = 1;
    if (ndim > CKPT_MAX_DIMS) {
        FUZZ_CHECK(ckpt_read_tensor(f, t->string, CKPT_MAX_DIMS, dims, NULL) == ST_INPUT);
        err_clear();
        return;
    }
    for (int d = 0; d < ndim; d++) {
        dims[d] = (int64_t)cJSON_GetArrayItem(shape, d)->valuedouble;
        count *= (size_t)dims[d];
    }
    size_t begin = (size_t)cJSON_GetArrayItem(offs, 0)->valuedouble;
    int is_f32 = strcmp(dtype->valuestring, "F32") == 0;
    // The loader checked that shape x dtype size equals the byte range, and that the range is in the file.
    float *dst = malloc(count * sizeof(float) + 1);
    FUZZ_CHECK(dst != NULL);
    err_clear();
    int st = ckpt_read_tensor(f, t->string, ndim, dims, dst);
    if (is_f32) {
        FUZZ_CHECK(st == ST_OK);
        FUZZ_CHECK(memcmp(dst, data_area + begin, count * sizeof(float)) == 0);
        dims[ndim] = 3;  // one more dimension: not its shape
        FUZZ_CHECK(ckpt_read_tensor(f, t->string, ndim + 1 <= CKPT_MAX_DIMS ? ndim + 1 : 0, dims, dst) == ST_INPUT);
    } else {
        FUZZ_CHECK(st == ST_INPUT);
    }
    err_clear();
    free(dst);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static fuzz_file file;
    fuzz_file_set(&file, data, size);
    err_clear();
    ckpt_file *f = NULL;
    int st = ckpt_load(file.path, &f);
    if (st != ST_OK) {
        FUZZ_CHECK(f == NULL && err_status() == st && err_msg()[0] != '\0');
        return 0;
    }
    // It loaded, so the length field and the JSON are valid: parse the header independently.
    uint64_t n = 0;
    for (int i = 0; i < 8; i++) n |= (uint64_t)data[i] << (8 * i);
    FUZZ_CHECK(n <= size - 8);
    cJSON *h = cJSON_ParseWithLength((const char *)data + 8, (size_t)n);
    FUZZ_CHECK(cJSON_IsObject(h));
    int tensors = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, h) {
        if (strcmp(t->string, "__metadata__") == 0) {
            const cJSON *kv;
            cJSON_ArrayForEach(kv, t) {
                const char *v = ckpt_meta(f, kv->string);
                FUZZ_CHECK(v != NULL && strcmp(v, kv->valuestring) == 0);
            }
            continue;
        }
        tensors++;
        check_tensor(f, t, data + 8 + n);
    }
    FUZZ_CHECK(tensors == ckpt_n_tensors(f));
    FUZZ_CHECK(ckpt_read_tensor(f, "\x01no such tensor", 0, NULL, NULL) == ST_INPUT);
    err_clear();
    cJSON_Delete(h);
    ckpt_free(f);
    return 0;
}
