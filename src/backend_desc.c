// backend_desc.c — the ops' shape descriptors, checked once for every backend: conv_desc_init and pool_desc_init
// (the layers call them), bn_desc_check (each backend's batch-norm ops call it). Below backend.c and every
// backend implementation, which all call it, so no call cycle runs through the factory.
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
    if (d->groups == 0) d->groups = 1;
    if (d->dilation == 0) d->dilation = 1;
    if (d->n < 1 || d->c < 1 || d->h < 1 || d->w < 1)
        return ERR(ST_INPUT, "%s: input shape n=%d c=%d h=%d w=%d must be positive", ln, d->n, d->c, d->h, d->w);
    if (d->k < 1 || d->r < 1 || d->s < 1)
        return ERR(ST_INPUT, "%s: filters=%d and kernel %dx%d must be positive", ln, d->k, d->r, d->s);
    if (d->stride < 1) return ERR(ST_INPUT, "%s: stride %d must be >= 1", ln, d->stride);
    if (d->pad < 0) return ERR(ST_INPUT, "%s: pad %d must be >= 0", ln, d->pad);
    if (d->groups < 1 || d->c % d->groups || d->k % d->groups)
        return ERR(ST_INPUT, "%s: groups %d must divide both the %d input channels and the %d filters", ln,
                   d->groups, d->c, d->k);
    if (d->dilation < 1 || d->dilation > 1024)
        return ERR(ST_INPUT, "%s: dilation %d must be in [1, 1024]", ln, d->dilation);
    // The kernel's extent with its taps spread by the dilation.
    const int64_t er = (int64_t)(d->r - 1) * d->dilation + 1, es = (int64_t)(d->s - 1) * d->dilation + 1;
    // A pad as large as the kernel makes border outputs that see only padding: almost surely a typo.
    if (d->pad >= er || d->pad >= es)
        return ERR(ST_INPUT, "%s: pad %d must be smaller than the kernel %dx%d (dilation %d)", ln, d->pad, d->r, d->s,
                   d->dilation);
    if (!act_from_output(d->act)) return ERR(ST_INPUT, "%s: activation %d is not one conv fuses", ln, d->act);
    int64_t ph = (int64_t)d->h + 2 * (int64_t)d->pad - er, pw = (int64_t)d->w + 2 * (int64_t)d->pad - es;
    if (ph < 0 || pw < 0)
        return ERR(ST_INPUT, "%s: kernel %dx%d (dilation %d, pad %d) is larger than the %dx%d input", ln, d->r, d->s,
                   d->dilation, d->pad, d->h, d->w);
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
    // PyTorch's rule: a window then always holds an input value (the padding never wins).
    if (d->pad < 0 || d->pad > d->size / 2)
        return ERR(ST_INPUT, "%s: pad %d must be in [0, size/2 = %d]", ln, d->pad, d->size / 2);
    if (d->size > d->h + 2LL * d->pad || d->size > d->w + 2LL * d->pad)
        return ERR(ST_INPUT, "%s: window %d is larger than the %dx%d input (pad %d)", ln, d->size, d->h, d->w, d->pad);
    if (!fits_int((int64_t)d->h * d->w) || !fits_int((int64_t)d->c * d->h * d->w))
        return ERR(ST_INPUT, "%s: one sample (c=%d %dx%d) is too large", ln, d->c, d->h, d->w);
    d->oh = (int)((d->h + 2LL * d->pad - d->size) / d->stride + 1);
    d->ow = (int)((d->w + 2LL * d->pad - d->size) / d->stride + 1);
    return ST_OK;
}

int bn_desc_check(const bn_desc *d, const char *op) {
    if (d->n < 1 || d->c < 1 || d->hw < 1)
        return ERR(ST_INPUT, "%s: n=%d c=%d hw=%d must be positive", op, d->n, d->c, d->hw);
    if (!act_from_output(d->act)) return ERR(ST_INPUT, "%s: activation %d is not one bn fuses", op, d->act);
    if (!(d->eps > 0.0f)) return ERR(ST_INPUT, "%s: eps %g must be > 0", op, (double)d->eps);
    return ST_OK;
}

