// backend.c — the parts of the backend that no single implementation owns: the backend_<op>() wrappers and the
// table check (both made from src/backend_ops.def), shape descriptors, and the factory.
#include "backend.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Shapes

// Backends index one sample (and one im2col block) with int; reject shapes where that would overflow.
static int fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

int conv_desc_init(conv_desc *d, const char *layer_name) {
    const char *ln = layer_name ? layer_name : "conv";
    if (d->n < 1 || d->c < 1 || d->h < 1 || d->w < 1)
        return ERR(ST_INPUT, "%s: input shape n=%d c=%d h=%d w=%d must be positive", ln, d->n, d->c, d->h, d->w);
    if (d->k < 1 || d->r < 1 || d->s < 1)
        return ERR(ST_INPUT, "%s: filters=%d and kernel %dx%d must be positive", ln, d->k, d->r, d->s);
    if (d->stride < 1) return ERR(ST_INPUT, "%s: stride %d must be >= 1", ln, d->stride);
    if (d->pad < 0) return ERR(ST_INPUT, "%s: pad %d must be >= 0", ln, d->pad);
    // A pad as large as the kernel makes border outputs that see only padding: almost surely a typo.
    if (d->pad >= d->r || d->pad >= d->s)
        return ERR(ST_INPUT, "%s: pad %d must be smaller than the kernel %dx%d", ln, d->pad, d->r, d->s);
    if (d->act != ACT_NONE && d->act != ACT_RELU && d->act != ACT_LEAKY)
        return ERR(ST_INPUT, "%s: unknown activation %d", ln, d->act);
    int64_t ph = (int64_t)d->h + 2 * (int64_t)d->pad - d->r, pw = (int64_t)d->w + 2 * (int64_t)d->pad - d->s;
    if (ph < 0 || pw < 0)
        return ERR(ST_INPUT, "%s: kernel %dx%d (pad %d) is larger than the %dx%d input", ln, d->r, d->s, d->pad,
                   d->h, d->w);
    d->oh = (int)(ph / d->stride + 1);
    d->ow = (int)(pw / d->stride + 1);
    int64_t plane = (int64_t)d->oh * d->ow;
    if (!fits_int((int64_t)d->c * d->h * d->w) || !fits_int((int64_t)d->k * plane) ||
        !fits_int((int64_t)d->c * d->r * d->s * plane))
        return ERR(ST_INPUT, "%s: one sample's tensors are too large (c=%d %dx%d, k=%d, kernel %dx%d)", ln, d->c,
                   d->h, d->w, d->k, d->r, d->s);
    return ST_OK;
}

int pool_desc_init(pool_desc *d, const char *layer_name) {
    const char *ln = layer_name ? layer_name : "maxpool";
    if (d->n < 1 || d->c < 1 || d->h < 1 || d->w < 1)
        return ERR(ST_INPUT, "%s: input shape n=%d c=%d h=%d w=%d must be positive", ln, d->n, d->c, d->h, d->w);
    if (d->size < 1) return ERR(ST_INPUT, "%s: size %d must be >= 1", ln, d->size);
    if (d->stride < 1) return ERR(ST_INPUT, "%s: stride %d must be >= 1", ln, d->stride);
    if (d->size > d->h || d->size > d->w)
        return ERR(ST_INPUT, "%s: window %d is larger than the %dx%d input", ln, d->size, d->h, d->w);
    if (!fits_int((int64_t)d->h * d->w) || !fits_int((int64_t)d->c * d->h * d->w))
        return ERR(ST_INPUT, "%s: one sample (c=%d %dx%d) is too large", ln, d->c, d->h, d->w);
    d->oh = (d->h - d->size) / d->stride + 1;
    d->ow = (d->w - d->size) / d->stride + 1;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Wrappers: backend_<op>(be, ...) calls the slot with be->ctx; an absent OPTIONAL slot gives ST_RUNTIME naming
// the op (int), nothing (void) or NULL (ptr).

#define BE_SELF const backend *be
#define BE_ARG be->ctx
#define BE_ABSENT_int(op) return ERR(ST_RUNTIME, "backend '%s' does not offer %s", backend_name(be), op)
#define BE_ABSENT_void(op) return
#define BE_ABSENT_ptr(op) return NULL
#define BE_WRAP_REQUIRED(ret, name, params, args) \
    BE_RET_##ret backend_##name params { BE_RETURN_##ret be->ops->name args; }
#define BE_WRAP_OPTIONAL(ret, name, params, args)          \
    BE_RET_##ret backend_##name params {                   \
        if (!be->ops->name) BE_ABSENT_##ret(#name);        \
        BE_RETURN_##ret be->ops->name args;                \
    }
#define BE_WRAP_INTERNAL(ret, name, params, args)
#define BACKEND_OP(ret, name, slot, capture, params, args) BE_WRAP_##slot(ret, name, params, args)
#include "backend_ops.def"
#undef BACKEND_OP

const char *backend_name(const backend *be) { return be->ops->name; }

int backend_can_capture(const backend *be) {
    return be->ops->capture_begin && be->ops->capture_end && be->ops->replay;
}

int backend_is_async(const backend *be) { return be->ops->stream != NULL; }

// ---------------------------------------------------------------------------------------------------------
// Table completeness (tests: a new op left out of a backend fails them)

#define BE_REQUIRED_REQUIRED 1
#define BE_REQUIRED_OPTIONAL 0
#define BE_REQUIRED_INTERNAL 1

int backend_ops_missing(const backend_ops *ops, const char **first) {
    int missing = 0;
#define BACKEND_OP(ret, name, slot, capture, params, args) \
    if (BE_REQUIRED_##slot && !ops->name && missing++ == 0 && first) *first = #name;
#include "backend_ops.def"
#undef BACKEND_OP
    return missing;
}

// ---------------------------------------------------------------------------------------------------------
// Factory

// tf32 is CUDA's; deterministic=1 changes nothing (the CPU backend is deterministic for a fixed thread count).
static int cpu_create(backend *be, const backend_options *o) {
    if (o->tf32) return ERR(ST_INPUT, "tf32=1 needs backend=cuda (backend is 'cpu')");
    return backend_cpu_create(be, o->threads);
}

static const struct backend_kind {
    const char *name;
    int (*create)(backend *be, const backend_options *o);
    int host_cores;  // backend_uses_host_cores
} kinds[] = {
    {"cpu", cpu_create, 1},
    {"cuda", backend_cuda_create, 0},
};

static const struct backend_kind *kind_find(const char *name) {
    for (size_t i = 0; name && i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(name, kinds[i].name) == 0) return &kinds[i];
    return NULL;
}

int backend_create(backend *be, const char *name, const backend_options *opt) {
    memset(be, 0, sizeof *be);
    const backend_options none = {0};
    if (!name) return ERR(ST_INPUT, "backend: no name given (want cpu or cuda)");
    const struct backend_kind *k = kind_find(name);
    if (!k) return ERR(ST_INPUT, "backend \"%s\": unknown (want cpu or cuda)", name);
    return k->create(be, opt ? opt : &none);
}

int backend_uses_host_cores(const char *name) {
    const struct backend_kind *k = kind_find(name);
    return k && k->host_cores;
}

void backend_destroy(backend *be) {
    if (!be) return;
    if (be->ops && be->ops->destroy) be->ops->destroy(be->ctx);
    be->ops = NULL;
    be->ctx = NULL;
}

#ifndef DDP_HAVE_CUDA
int backend_cuda_create(backend *be, const backend_options *opt) {
    (void)opt;
    memset(be, 0, sizeof *be);
    return ERR(ST_RUNTIME, "this build has no CUDA backend (configure with -DTRAINER_CUDA=ON on a machine with nvcc)");
}

int backend_cuda_available(void) { return 0; }
#endif
