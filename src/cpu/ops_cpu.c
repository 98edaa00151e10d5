// ops_cpu.c — the CPU backend's ops other than convolution, batch norm and the layer ops: batch gathering, max
// pooling, dense layers (OpenBLAS), softmax cross-entropy, the optimizers and the element-wise utilities (scale,
// add, count_nonfinite, clip_grad_norm). Each splits its work over the pool (backend_cpu_impl.h).
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "backend_cpu_impl.h"
#include "precision.h"

// ---------------------------------------------------------------------------------------------------------
// Data

typedef struct gather_job {
    const uint8_t *images;
    const int32_t *labels;
    const int32_t *index;
    int n, sample_elems;
    const gather_aug *aug;
    float *x;
    int32_t *y;
} gather_job;

// One sample through crop, flip and normalisation (src/gather_aug.h): output pixel (y, x) of channel ch reads
// input (y + dy, x' + dx), x' = w - 1 - x when flipped, 0 outside the image; then the channel's table or / 255.
static void gather_sample_aug(const gather_aug *a, const uint8_t *src, int64_t index, float *dst) {
    const gather_draw d = gather_aug_draw(a, index);
    const int h = a->h, w = a->w;
    for (int ch = 0; ch < a->c; ch++) {
        const uint8_t *plane = src + (size_t)ch * h * w;
        const float *lut = a->normalize ? a->lut[ch] : NULL;
        for (int y = 0; y < h; y++) {
            const int sy = y + d.dy;
            float *row = dst + ((size_t)ch * h + y) * w;
            for (int x = 0; x < w; x++) {
                const int sx = (d.flip ? w - 1 - x : x) + d.dx;
                const uint8_t p = sy >= 0 && sy < h && sx >= 0 && sx < w ? plane[(size_t)sy * w + sx] : 0;
                row[x] = lut ? lut[p] : (float)p / 255.0f;
            }
        }
    }
}

static void gather_part(void *arg, int part, int parts) {
    const gather_job *j = arg;
    int64_t lo, hi;
    split_range(j->n, parts, part, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {
        const uint8_t *src = j->images + (size_t)j->index[i] * j->sample_elems;
        float *dst = j->x + (size_t)i * j->sample_elems;
        if (j->aug) gather_sample_aug(j->aug, src, j->index[i], dst);
        // Division, not a multiply by 1/255: the CUDA backend and the tests expect the exactly rounded value.
        else for (int e = 0; e < j->sample_elems; e++) dst[e] = (float)src[e] / 255.0f;
        j->y[i] = j->labels[j->index[i]];
    }
}

int cpu_gather(void *ctx, const uint8_t *images, const int32_t *labels, const int32_t *index, int n,
               int sample_elems, const gather_aug *aug, float *x, int32_t *y) {
    cpu_ctx *c = ctx;
    if (n < 0 || sample_elems < 1) return ERR(ST_INPUT, "gather: n=%d sample_elems=%d", n, sample_elems);
    for (int i = 0; i < n; i++)
        if (index[i] < 0) return ERR(ST_INPUT, "gather: index[%d] = %d is negative", i, index[i]);
    if (aug && ((int64_t)aug->c * aug->h * aug->w != sample_elems || (aug->normalize && aug->c > GATHER_AUG_CHANNELS_MAX) ||
                aug->crop_pad < 0))
        return ERR(ST_INPUT, "gather: augmentation for %dx%dx%d samples (crop_pad %d), the batch has %d values per "
                             "sample", aug->c, aug->h, aug->w, aug->crop_pad, sample_elems);
    gather_job j = {images, labels, index, n, sample_elems, aug, x, y};
    cpu_pool_run(&c->pool, parts_for(c, (double)n * sample_elems, 65536), gather_part, &j);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Max pooling. argmax holds the winner's index ih*w + iw inside its input plane; ties go to the first in
// row-major order. Padding is -inf: a window is clipped to the input (pad <= size/2 leaves it non-empty).

static int pool_check(const pool_desc *d, const char *op) {
    if (d->n < 1 || d->c < 1 || d->oh < 1 || d->ow < 1 || d->size < 1 || d->stride < 1 || d->pad < 0 ||
        d->pad > d->size / 2)
        return ERR(ST_INPUT, "%s: descriptor not initialised (call pool_desc_init)", op);
    return ST_OK;
}

static void pool_plane(const pool_desc *d, const float *x, float *y, int32_t *am) {
    const int H = d->h, W = d->w, st = d->stride, sz = d->size, pad = d->pad;
    for (int oh = 0; oh < d->oh; oh++) {
        const int h0 = oh * st - pad, r0 = h0 > 0 ? h0 : 0, r1 = h0 + sz < H ? h0 + sz : H;
        for (int ow = 0; ow < d->ow; ow++) {
            const int w0 = ow * st - pad, c0 = w0 > 0 ? w0 : 0, c1 = w0 + sz < W ? w0 + sz : W;
            int best_i = r0 * W + c0;
            float best = x[best_i];
            for (int r = r0; r < r1; r++)
                for (int s = c0; s < c1; s++) {
                    int idx = r * W + s;
                    if (x[idx] > best) best = x[idx], best_i = idx;
                }
            y[oh * d->ow + ow] = best;
            am[oh * d->ow + ow] = best_i;
        }
    }
}

// The reference CNN's 2x2 stride-2 window, unrolled.
static void pool_plane_2x2(const pool_desc *d, const float *x, float *y, int32_t *am) {
    const int W = d->w;
    for (int oh = 0; oh < d->oh; oh++) {
        const int r0 = 2 * oh * W;
        for (int ow = 0; ow < d->ow; ow++) {
            int i0 = r0 + 2 * ow, i1 = i0 + 1, i2 = i0 + W, i3 = i2 + 1;
            int bi = i0;
            float b = x[i0];
            if (x[i1] > b) b = x[i1], bi = i1;
            if (x[i2] > b) b = x[i2], bi = i2;
            if (x[i3] > b) b = x[i3], bi = i3;
            y[oh * d->ow + ow] = b;
            am[oh * d->ow + ow] = bi;
        }
    }
}

typedef struct pool_job {
    const pool_desc *d;
    const float *x, *dy;
    float *y, *dx;
    int32_t *am_out;
    const int32_t *am;
} pool_job;

static void pool_forward_part(void *arg, int part, int parts) {
    const pool_job *j = arg;
    const pool_desc *d = j->d;
    const int in_plane = d->h * d->w, out_plane = d->oh * d->ow;
    int64_t lo, hi;
    split_range((int64_t)d->n * d->c, parts, part, &lo, &hi);
    for (int64_t p = lo; p < hi; p++) {
        const float *xp = j->x + (size_t)p * in_plane;
        float *yp = j->y + (size_t)p * out_plane;
        int32_t *ap = j->am_out + (size_t)p * out_plane;
        if (d->size == 2 && d->stride == 2 && d->pad == 0)
            pool_plane_2x2(d, xp, yp, ap);
        else
            pool_plane(d, xp, yp, ap);
    }
}

static void pool_backward_part(void *arg, int part, int parts) {
    const pool_job *j = arg;
    const pool_desc *d = j->d;
    const int in_plane = d->h * d->w, out_plane = d->oh * d->ow;
    int64_t lo, hi;
    split_range((int64_t)d->n * d->c, parts, part, &lo, &hi);
    // Overlapping windows (stride < size) can pick the same input twice, hence += rather than =.
    for (int64_t p = lo; p < hi; p++) {
        float *dxp = j->dx + (size_t)p * in_plane;
        const float *dyp = j->dy + (size_t)p * out_plane;
        const int32_t *ap = j->am + (size_t)p * out_plane;
        memset(dxp, 0, sizeof(float) * (size_t)in_plane);
        for (int o = 0; o < out_plane; o++) dxp[ap[o]] += dyp[o];
    }
}

int cpu_pool_forward(void *ctx, const pool_desc *d, const float *x, float *y, int32_t *argmax) {
    cpu_ctx *c = ctx;
    TRY(pool_check(d, "pool_forward"));
    pool_job j = {.d = d, .x = x, .y = y, .am_out = argmax};
    double work = (double)d->n * d->c * d->oh * d->ow * d->size * d->size;
    cpu_pool_run(&c->pool, parts_for(c, work, 32768), pool_forward_part, &j);
    return ST_OK;
}

int cpu_pool_backward(void *ctx, const pool_desc *d, const float *dy, const int32_t *argmax, float *dx) {
    cpu_ctx *c = ctx;
    TRY(pool_check(d, "pool_backward"));
    pool_job j = {.d = d, .dy = dy, .dx = dx, .am = argmax};
    cpu_pool_run(&c->pool, parts_for(c, (double)d->n * d->c * d->h * d->w, 32768), pool_backward_part, &j);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Dense. y[n,out] = x[n,in] · w[out,in]^T + b. Forward splits the batch rows over threads; backward splits
// the input columns, so that dW[:, cols] and dx[:, cols] of different threads never overlap.

typedef struct dense_job {
    const cpu_ctx *c;
    int n, in, out, act;
    const float *x, *w, *b;
    float *y, *dy, *dx, *dw;
} dense_job;

static void dense_forward_part(void *arg, int part, int parts) {
    const dense_job *j = arg;
    int64_t lo, hi;
    split_range(j->n, parts, part, &lo, &hi);
    if (hi == lo) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(hi - lo), j->out, j->in, 1.0f,
                j->x + (size_t)lo * j->in, j->in, j->w, j->in, 0.0f, j->y + (size_t)lo * j->out, j->out);
    for (int64_t i = lo; i < hi; i++) {
        float *row = j->y + (size_t)i * j->out;
        if (j->b)
            for (int o = 0; o < j->out; o++) row[o] += j->b[o];
        act_inplace(row, (size_t)j->out, j->act);
    }
}

int cpu_dense_forward(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                      const float *b, float *y) {
    cpu_ctx *c = ctx;
    TRY(dense_check(n, in, out, act, "dense_forward"));
    dense_job j = {.c = c, .n = n, .in = in, .out = out, .act = act, .x = x, .w = w, .b = b, .y = y};
    cpu_pool_run(&c->pool, parts_for(c, (double)n * in * out, 2e5), dense_forward_part, &j);
    return ST_OK;
}

static void dense_backward_part(void *arg, int part, int parts) {
    const dense_job *j = arg;
    // Column slices in multiples of 16 floats keep every part's rows 64-byte aligned.
    int64_t b0, b1;
    split_range((j->in + 15) / 16, parts, part, &b0, &b1);
    const int c0 = (int)(b0 * 16), c1 = (int)(b1 * 16 < j->in ? b1 * 16 : j->in);
    if (c1 <= c0) return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, j->out, c1 - c0, j->n, 1.0f, j->dy, j->out, j->x + c0,
                j->in, 0.0f, j->dw + c0, j->in);
    progress_poll(j->c, part);
    if (j->dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->n, c1 - c0, j->out, 1.0f, j->dy, j->out,
                    j->w + c0, j->in, 0.0f, j->dx + c0, j->in);
}

int cpu_dense_backward(void *ctx, int n, int in, int out, int act, const float *x, const float *w,
                       const float *y, float *dy, float *dx, float *dw, float *db) {
    cpu_ctx *c = ctx;
    TRY(dense_check(n, in, out, act, "dense_backward"));
    const size_t ny = (size_t)n * out;
    if (act != ACT_NONE)
        for (size_t i = 0; i < ny; i++) dy[i] = act_grad(act, y[i], dy[i]);
    if (db) {
        for (int o = 0; o < out; o++) db[o] = 0.0f;
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out; o++) db[o] += dy[(size_t)i * out + o];
    }
    dense_job j = {.c = c, .n = n, .in = in, .out = out, .act = act, .x = x, .w = w, .dy = dy, .dx = dx, .dw = dw};
    cpu_pool_run(&c->pool, parts_for(c, (double)n * in * out * (dx ? 2 : 1), 2e5), dense_backward_part, &j);
    progress_poll(c, 0);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Softmax + cross-entropy (small: classes x batch, serial)

int cpu_softmax_xent(void *ctx, int n, int classes, const float *logits, const int32_t *labels,
                     float smoothing, float scale, float *dlogits, double *loss_acc, int32_t *correct_acc) {
    (void)ctx;
    if (n < 1 || classes < 1) return ERR(ST_INPUT, "softmax_xent: n=%d classes=%d must be positive", n, classes);
    for (int i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return ERR(ST_INPUT, "softmax_xent: label %d of sample %d is outside [0, %d)", labels[i], i, classes);
    double loss = 0.0;
    int32_t correct = 0;
    const float inv_n = 1.0f / (float)n;
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * classes;
        int best = 0;
        for (int k = 1; k < classes; k++)
            if (z[k] > z[best]) best = k;
        const double zmax = z[best];  // subtracted so that exp cannot overflow
        double sum = 0.0;
        for (int k = 0; k < classes; k++) sum += exp((double)z[k] - zmax);
        const int label = labels[i];
        // -sum_k q_k log p_k with q = (1 - s) onehot + s / classes, log p_k = (z_k - zmax) - log(sum)
        double target_z = (double)z[label] - zmax;
        if (smoothing > 0.0f) {
            double zsum = 0.0;
            for (int k = 0; k < classes; k++) zsum += (double)z[k] - zmax;
            target_z = (1.0 - smoothing) * target_z + smoothing * zsum / classes;
        }
        loss += log(sum) - target_z;
        correct += best == label;
        if (dlogits) {
            float *g = dlogits + (size_t)i * classes;
            const double inv_sum = 1.0 / sum;
            const float off = smoothing / (float)classes, on = 1.0f - smoothing + off;
            for (int k = 0; k < classes; k++) {
                float p = (float)(exp((double)z[k] - zmax) * inv_sum);
                const float gk = (p - (k == label ? on : off)) * inv_n;
                g[k] = gk * scale;  // two products, each rounded (the order the model took before scale came in)
            }
        }
    }
    *loss_acc += loss;
    *correct_acc += correct;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise ops over flat buffers: optimizers, scale, non-finite count

typedef struct flat_job {
    size_t n;
    float *p, *m, *v, *x;
    const float *g, *cx;
    float lr, b1, b2, eps, wd, alpha;
    float keep;    // adam: p *= keep first (AdamW's decoupled decay: 1 - lr * decoupled_wd; 1 otherwise)
    int nesterov;  // sgd
    int64_t *bad;  // count_nonfinite: one slot per part, 8 apart (a cache line each)
    double *acc;   // clip_grad_norm: the same, sums of squares
} flat_job;

static void flat_range(const flat_job *j, int part, int parts, size_t *lo, size_t *hi) {
    int64_t l, h;
    split_range((int64_t)j->n, parts, part, &l, &h);
    *lo = (size_t)l, *hi = (size_t)h;
}

// Adam with Keras/TF1 semantics (the bias correction folded into the step size, eps added to sqrt(v) as is):
//   p    = p * (1 - lr * decoupled_wd)               (AdamW only: decoupled weight decay, applied first)
//   g'   = g + weight_decay * p                      (only when weight_decay > 0; L2 folded into the gradient)
//   m    = beta1 * m + (1 - beta1) * g'
//   v    = beta2 * v + (1 - beta2) * g'^2
//   lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
//   p   -= lr_t * m / (sqrt(v) + eps)
static void adam_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    float *restrict p = j->p, *restrict m = j->m, *restrict v = j->v;
    const float *restrict g = j->g;
    const float b1 = j->b1, b2 = j->b2, ob1 = 1.0f - j->b1, ob2 = 1.0f - j->b2, lr_t = j->lr, eps = j->eps;
    const float wd = j->wd, keep = j->keep;
    size_t i = lo;
#ifdef __SSE2__
    // sqrtf may set errno, which keeps GCC from vectorising the scalar loop below (v >= 0, so it never does).
    const __m128 vb1 = _mm_set1_ps(b1), vb2 = _mm_set1_ps(b2), vob1 = _mm_set1_ps(ob1), vob2 = _mm_set1_ps(ob2);
    const __m128 vlr = _mm_set1_ps(lr_t), veps = _mm_set1_ps(eps), vwd = _mm_set1_ps(wd), vkeep = _mm_set1_ps(keep);
    for (; i + 4 <= hi; i += 4) {
        __m128 pi = _mm_loadu_ps(p + i);
        if (keep != 1.0f) pi = _mm_mul_ps(pi, vkeep);
        __m128 gi = _mm_add_ps(_mm_loadu_ps(g + i), _mm_mul_ps(vwd, pi));
        __m128 mi = _mm_add_ps(_mm_mul_ps(vb1, _mm_loadu_ps(m + i)), _mm_mul_ps(vob1, gi));
        __m128 vi = _mm_add_ps(_mm_mul_ps(vb2, _mm_loadu_ps(v + i)), _mm_mul_ps(_mm_mul_ps(vob2, gi), gi));
        _mm_storeu_ps(m + i, mi);
        _mm_storeu_ps(v + i, vi);
        __m128 step = _mm_div_ps(_mm_mul_ps(vlr, mi), _mm_add_ps(_mm_sqrt_ps(vi), veps));
        _mm_storeu_ps(p + i, _mm_sub_ps(pi, step));
    }
#endif
    for (; i < hi; i++) {
        if (keep != 1.0f) p[i] *= keep;
        const float gi = g[i] + wd * p[i];
        const float mi = b1 * m[i] + ob1 * gi;
        const float vi = b2 * v[i] + ob2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] -= lr_t * mi / (sqrtf(vi) + eps);
    }
}

int cpu_adam_step(void *ctx, size_t n, float *p, const float *g, float *m, float *v, const adam_hyper *h) {
    cpu_ctx *c = ctx;
    if (h->t < 1) return ERR(ST_INPUT, "adam_step: step t=%lld must be >= 1", (long long)h->t);
    const double t = (double)h->t;
    flat_job j = {.n = n, .p = p, .m = m, .v = v, .g = g, .b1 = h->beta1, .b2 = h->beta2, .eps = h->eps,
                  .wd = h->weight_decay > 0.0f ? h->weight_decay : 0.0f,
                  .keep = h->decoupled_wd > 0.0f ? 1.0f - h->lr * h->decoupled_wd : 1.0f};
    j.lr = (float)(h->lr * sqrt(1.0 - pow(h->beta2, t)) / (1.0 - pow(h->beta1, t)));
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 32768), adam_part, &j);
    return ST_OK;
}

// SGD with momentum: vel = momentum * vel + g'; p -= lr * vel (heavy ball) or p -= lr * (g' + momentum * vel)
// (Nesterov, as PyTorch), with g' as for Adam.
static void sgd_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    float *restrict p = j->p, *restrict vel = j->v;
    const float *restrict g = j->g;
    const float lr = j->lr, mom = j->b1, wd = j->wd;
    if (j->nesterov) {
        for (size_t i = lo; i < hi; i++) {
            const float gi = g[i] + wd * p[i];
            const float vi = mom * vel[i] + gi;
            vel[i] = vi;
            p[i] -= lr * (gi + mom * vi);
        }
        return;
    }
    for (size_t i = lo; i < hi; i++) {
        const float vi = mom * vel[i] + (g[i] + wd * p[i]);
        vel[i] = vi;
        p[i] -= lr * vi;
    }
}

int cpu_sgd_step(void *ctx, size_t n, float *p, const float *g, float *vel, const sgd_hyper *h) {
    cpu_ctx *c = ctx;
    flat_job j = {.n = n, .p = p, .v = vel, .g = g, .lr = h->lr, .b1 = h->momentum,
                  .wd = h->weight_decay > 0.0f ? h->weight_decay : 0.0f, .nesterov = h->nesterov != 0.0f};
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 32768), sgd_part, &j);
    return ST_OK;
}

static void scale_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    for (size_t i = lo; i < hi; i++) j->x[i] *= j->alpha;
}

int cpu_scale(void *ctx, size_t n, float alpha, float *x) {
    cpu_ctx *c = ctx;
    flat_job j = {.n = n, .x = x, .alpha = alpha};
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 65536), scale_part, &j);
    return ST_OK;
}

static void nonfinite_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    int64_t bad = 0;
    for (size_t i = lo; i < hi; i++) bad += !isfinite(j->cx[i]);
    j->bad[8 * part] = bad;
}

int cpu_count_nonfinite(void *ctx, size_t n, const float *x, int32_t *out) {
    cpu_ctx *c = ctx;
    int parts = parts_for(c, (double)n, 65536);
    int64_t *bad = calloc((size_t)parts * 8, sizeof(int64_t));
    TRY_ALLOC(bad);
    flat_job j = {.n = n, .cx = x, .bad = bad};
    cpu_pool_run(&c->pool, parts, nonfinite_part, &j);
    int64_t total = 0;
    for (int t = 0; t < parts; t++) total += bad[8 * t];
    free(bad);
    *out = total > INT32_MAX ? INT32_MAX : (int32_t)total;
    return ST_OK;
}

static void sumsq_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    double s = 0;
    for (size_t i = lo; i < hi; i++) s += (double)j->cx[i] * j->cx[i];
    j->acc[8 * part] = s;
}

DDP_VEC_CLONES static void add_part(void *arg, int part, int parts) {
    const flat_job *j = arg;
    size_t lo, hi;
    flat_range(j, part, parts, &lo, &hi);
    float *restrict x = j->x;
    const float *restrict cx = j->cx;
    for (size_t i = lo; i < hi; i++) x[i] += cx[i];
}

int cpu_add(void *ctx, size_t n, const float *x, float *y) {
    cpu_ctx *c = ctx;
    flat_job j = {.n = n, .cx = x, .x = y};
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 65536), add_part, &j);
    return ST_OK;
}

int cpu_clip_grad_norm(void *ctx, size_t n, float *g, float max_norm, double *sumsq) {
    cpu_ctx *c = ctx;
    int parts = parts_for(c, (double)n, 65536);
    double *acc = calloc((size_t)parts * 8, sizeof(double));
    TRY_ALLOC(acc);
    flat_job j = {.n = n, .cx = g, .x = g, .acc = acc};
    cpu_pool_run(&c->pool, parts, sumsq_part, &j);
    double total = 0;
    for (int t = 0; t < parts; t++) total += acc[8 * t];  // in part order: the same sum for the same threads
    free(acc);
    *sumsq = total;
    const double coef = max_norm / (sqrt(total) + 1e-6);
    if (coef < 1.0) {
        j.alpha = (float)coef;
        cpu_pool_run(&c->pool, parts, scale_part, &j);
    }
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// net.precision's emulation: values rounded to bf16/fp16, kept in fp32 (src/precision.h)

typedef struct round_job {
    size_t n;
    int format;
    const float *x;
    float *y;
} round_job;

static void round_part(void *arg, int part, int parts) {
    const round_job *j = arg;
    int64_t lo, hi;
    split_range((int64_t)j->n, parts, part, &lo, &hi);
    precision_round_array(j->format, (size_t)(hi - lo), j->x + lo, j->y + lo);
}

int cpu_round_to(void *ctx, size_t n, int format, const float *x, float *y) {
    cpu_ctx *c = ctx;
    if (format != PREC_BF16 && format != PREC_FP16)
        return ERR(ST_RUNTIME, "round_to: format %d is neither bf16 (%d) nor fp16 (%d)", format, PREC_BF16, PREC_FP16);
    round_job j = {.n = n, .format = format, .x = x, .y = y};
    cpu_pool_run(&c->pool, parts_for(c, (double)n, 65536), round_part, &j);
    return ST_OK;
}
