// backend.c — shape descriptors and the backend factory: the parts of the backend table that no single
// implementation owns.
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
// Table completeness (tests: a new op left out of a backend fails them)

int backend_ops_missing(const backend_ops *ops, size_t *first) {
    const size_t optional[] = {offsetof(backend_ops, set_progress), offsetof(backend_ops, stream),
                               offsetof(backend_ops, capture_begin), offsetof(backend_ops, capture_end),
                               offsetof(backend_ops, replay)};
    typedef void (*slot_fn)(void);
    int missing = 0;
    for (size_t off = offsetof(backend_ops, destroy); off + sizeof(slot_fn) <= sizeof *ops; off += sizeof(slot_fn)) {
        int opt = 0;
        for (size_t i = 0; i < sizeof optional / sizeof optional[0]; i++) opt |= optional[i] == off;
        slot_fn fn;
        memcpy(&fn, (const char *)ops + off, sizeof fn);
        if (!fn && !opt && missing++ == 0 && first) *first = off;
    }
    return missing;
}

// ---------------------------------------------------------------------------------------------------------
// Factory

int backend_create(backend *be, const char *name, int threads, int device) {
    memset(be, 0, sizeof *be);
    if (!name) return ERR(ST_INPUT, "backend: no name given (want cpu or cuda)");
    if (strcmp(name, "cpu") == 0) return backend_cpu_create(be, threads);
    if (strcmp(name, "cuda") == 0) return backend_cuda_create(be, device);
    return ERR(ST_INPUT, "backend \"%s\": unknown (want cpu or cuda)", name);
}

void backend_destroy(backend *be) {
    if (!be) return;
    if (be->ops && be->ops->destroy) be->ops->destroy(be->ctx);
    be->ops = NULL;
    be->ctx = NULL;
}

#ifndef DDP_HAVE_CUDA
int backend_cuda_create(backend *be, int device) {
    (void)device;
    memset(be, 0, sizeof *be);
    return ERR(ST_RUNTIME, "this build has no CUDA backend (configure with -DTRAINER_CUDA=ON on a machine with nvcc)");
}

int backend_cuda_available(void) { return 0; }
#endif
