// conv_cpu.c — the CPU backend's convolutions: im2col/col2im + one single-threaded OpenBLAS sgemm per image (and
// per group) on the pool's threads, a direct loop for depthwise convolutions, or a oneDNN plan
// (src/backend_cpu_dnnl.c) where CPU_CONV_AUTO's rule or CPU_CONV_DNNL picks it. Why one image at a time:
// backend_cpu_impl.h.
#include <cblas.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "backend_cpu_impl.h"

#define FLOATS_ALIGNED(n) (((size_t)(n) + 15) & ~(size_t)15)  // keep every workspace slice 64-byte aligned

// ---------------------------------------------------------------------------------------------------------
// im2col / col2im for one image and one group. The block is [Cg*R*S, OH*OW] (Cg = C/groups, the group's
// channels; x points at the group's first one); row (c, r, s) holds x[c, oh*stride - pad + r*dil,
// ow*stride - pad + s*dil] for every output pixel, zero where that falls in the padding.

// Output columns [*lo, *hi) whose input column ow*stride - pad + off lies inside [0, w) (off = s*dil).
static void valid_cols(int w, int ow, int stride, int pad, int off, int *lo, int *hi) {
    int first = pad - off;  // smallest ow*stride that lands inside
    int l = first <= 0 ? 0 : (first + stride - 1) / stride;
    int last = w - 1 + pad - off;  // largest ow*stride that lands inside
    int h = last < 0 ? 0 : last / stride + 1;
    if (h > ow) h = ow;
    if (l > h) l = h;
    *lo = l, *hi = h;
}

static int conv_group_channels(const conv_desc *d) { return d->c / d->groups; }

// Rows are short (OW floats: 11 and 26 in the reference CNN), so a memcpy call per row costs more than the
// copy. Fixed-size 32-byte moves compile to a couple of vector instructions; the tail overlaps the body.
static inline void copy_row(float *restrict dst, const float *restrict src, int n) {
    if (n < 8) {
        for (int i = 0; i < n; i++) dst[i] = src[i];
        return;
    }
    int i = 0;
    for (; i + 8 <= n; i += 8) memcpy(dst + i, src + i, 32);
    if (i < n) memcpy(dst + n - 8, src + n - 8, 32);
}

// Stride 1, no padding (both convs of the reference CNN): every row is a plain shifted copy, so the
// per-row bookkeeping of the general path (a third of its time) goes.
DDP_VEC_CLONES static void im2col_s1p0(const conv_desc *d, const float *x, float *col) {
    const int OH = d->oh, OW = d->ow, W = d->w, P = OH * OW, dil = d->dilation, C = conv_group_channels(d);
    for (int ch = 0; ch < C; ch++)
        for (int r = 0; r < d->r; r++)
            for (int s = 0; s < d->s; s++) {
                float *dst = col + (size_t)((ch * d->r + r) * d->s + s) * P;
                const float *src = x + ((size_t)ch * d->h + r * dil) * W + s * dil;
                for (int oh = 0; oh < OH; oh++) copy_row(dst + oh * OW, src + oh * W, OW);
            }
}

static void im2col(const conv_desc *d, const float *x, float *col) {
    if (d->stride == 1 && d->pad == 0) {
        im2col_s1p0(d, x, col);
        return;
    }
    const int P = d->oh * d->ow, OW = d->ow, st = d->stride, dil = d->dilation, C = conv_group_channels(d);
    for (int ch = 0; ch < C; ch++)
        for (int r = 0; r < d->r; r++)
            for (int s = 0; s < d->s; s++) {
                float *row = col + (size_t)((ch * d->r + r) * d->s + s) * P;
                int lo, hi;
                valid_cols(d->w, OW, st, d->pad, s * dil, &lo, &hi);
                for (int oh = 0; oh < d->oh; oh++) {
                    float *dst = row + (size_t)oh * OW;
                    int ih = oh * st - d->pad + r * dil;
                    if (ih < 0 || ih >= d->h || lo == hi) {
                        for (int o = 0; o < OW; o++) dst[o] = 0.0f;
                        continue;
                    }
                    const float *src = x + ((size_t)ch * d->h + ih) * d->w + (s * dil - d->pad);
                    for (int o = 0; o < lo; o++) dst[o] = 0.0f;
                    if (st == 1)
                        copy_row(dst + lo, src + lo, hi - lo);
                    else
                        for (int o = lo; o < hi; o++) dst[o] = src[o * st];
                    for (int o = hi; o < OW; o++) dst[o] = 0.0f;
                }
            }
}

// dx (one image, one group) = the block's entries summed back onto their input pixels; overwrites dx. Loops
// run over input rows so that the R*S contributions to one row are added while it sits in L1.
DDP_VEC_CLONES static void col2im_s1p0(const conv_desc *d, const float *col, float *dx) {
    const int OH = d->oh, OW = d->ow, W = d->w, P = OH * OW, dil = d->dilation, C = conv_group_channels(d);
    for (int ch = 0; ch < C; ch++)
        for (int r = 0; r < d->r; r++)
            for (int oh = 0; oh < OH; oh++) {
                float *restrict drow = dx + ((size_t)ch * d->h + oh + r * dil) * W;
                const float *restrict src = col + (size_t)(ch * d->r + r) * d->s * P + (size_t)oh * OW;
                for (int s = 0; s < d->s; s++, src += P)
                    for (int o = 0; o < OW; o++) drow[s * dil + o] += src[o];
            }
}

static void col2im(const conv_desc *d, const float *col, float *dx) {
    const int P = d->oh * d->ow, OW = d->ow, st = d->stride, dil = d->dilation, C = conv_group_channels(d);
    memset(dx, 0, sizeof(float) * (size_t)C * d->h * d->w);
    if (st == 1 && d->pad == 0) {
        col2im_s1p0(d, col, dx);
        return;
    }
    for (int ch = 0; ch < C; ch++)
        for (int r = 0; r < d->r; r++)
            for (int oh = 0; oh < d->oh; oh++) {
                int ih = oh * st - d->pad + r * dil;
                if (ih < 0 || ih >= d->h) continue;
                float *drow = dx + ((size_t)ch * d->h + ih) * d->w;
                for (int s = 0; s < d->s; s++) {
                    int lo, hi;
                    valid_cols(d->w, OW, st, d->pad, s * dil, &lo, &hi);
                    const float *src = col + (size_t)((ch * d->r + r) * d->s + s) * P + (size_t)oh * OW;
                    float *dst = drow + (s * dil - d->pad);
                    if (st == 1)
                        for (int o = lo; o < hi; o++) dst[o] += src[o];
                    else
                        for (int o = lo; o < hi; o++) dst[o * st] += src[o];
                }
            }
}

// ---------------------------------------------------------------------------------------------------------
// Depthwise (one input channel per group: MobileNet's 3x3s): a direct loop. Per-group im2col + sgemm would run
// C GEMMs of [K/C x R*S] x [R*S x OH*OW] per image, too thin for BLAS; the direct loop runs over each output
// row once per tap and vectorises along it.

static int conv_is_depthwise(const conv_desc *d) { return conv_group_channels(d) == 1 && d->groups > 1; }

// y (one image, already holding the bias) += the depthwise convolution of x. Filter k reads channel k / (K/C).
DDP_VEC_CLONES static void depthwise_forward(const conv_desc *d, const float *x, const float *w, float *y) {
    const int OH = d->oh, OW = d->ow, st = d->stride, dil = d->dilation, mult = d->k / d->groups;
    for (int k = 0; k < d->k; k++) {
        const float *xc = x + (size_t)(k / mult) * d->h * d->w;
        float *yk = y + (size_t)k * OH * OW;
        for (int r = 0; r < d->r; r++)
            for (int s = 0; s < d->s; s++) {
                const float wv = w[((size_t)k * d->r + r) * d->s + s];
                int lo, hi;
                valid_cols(d->w, OW, st, d->pad, s * dil, &lo, &hi);
                for (int oh = 0; oh < OH; oh++) {
                    const int ih = oh * st - d->pad + r * dil;
                    if (ih < 0 || ih >= d->h) continue;
                    const float *restrict src = xc + (size_t)ih * d->w + (s * dil - d->pad);
                    float *restrict dst = yk + (size_t)oh * OW;
                    if (st == 1)
                        for (int o = lo; o < hi; o++) dst[o] += wv * src[o];
                    else
                        for (int o = lo; o < hi; o++) dst[o] += wv * src[o * st];
                }
            }
    }
}

// dw (K x R*S) += the weight gradient of one image, and dx (one image, nullable) = its input gradient
// (overwritten), from dz, the pre-activation gradient. Eight partial sums per tap, as in conv_act_grad.
DDP_VEC_CLONES static void depthwise_backward(const conv_desc *d, const float *x, const float *w, const float *dz,
                                              float *dx, float *dw) {
    const int OH = d->oh, OW = d->ow, st = d->stride, dil = d->dilation, mult = d->k / d->groups;
    if (dx) memset(dx, 0, sizeof(float) * (size_t)d->c * d->h * d->w);
    for (int k = 0; k < d->k; k++) {
        const size_t plane = (size_t)(k / mult) * d->h * d->w;
        const float *xc = x + plane;
        float *dxc = dx ? dx + plane : NULL;
        const float *dzk = dz + (size_t)k * OH * OW;
        for (int r = 0; r < d->r; r++)
            for (int s = 0; s < d->s; s++) {
                const size_t wi = ((size_t)k * d->r + r) * d->s + s;
                const float wv = w[wi];
                int lo, hi;
                valid_cols(d->w, OW, st, d->pad, s * dil, &lo, &hi);
                float acc[8] = {0}, sum = 0.0f;
                for (int oh = 0; oh < OH; oh++) {
                    const int ih = oh * st - d->pad + r * dil;
                    if (ih < 0 || ih >= d->h) continue;
                    const size_t off = (size_t)ih * d->w + (s * dil - d->pad);
                    const float *restrict src = xc + off;
                    const float *restrict g = dzk + (size_t)oh * OW;
                    if (st == 1) {
                        int o = lo;
                        for (; o + 8 <= hi; o += 8)
                            for (int l = 0; l < 8; l++) acc[l] += g[o + l] * src[o + l];
                        for (; o < hi; o++) sum += g[o] * src[o];
                        if (dxc) {
                            float *restrict dst = dxc + off;
                            for (o = lo; o < hi; o++) dst[o] += wv * g[o];
                        }
                    } else {
                        for (int o = lo; o < hi; o++) sum += g[o] * src[o * st];
                        if (dxc) {
                            float *dst = dxc + off;
                            for (int o = lo; o < hi; o++) dst[o * st] += wv * g[o];
                        }
                    }
                }
                for (int l = 0; l < 8; l++) sum += acc[l];
                dw[wi] += sum;
            }
    }
}

// A 1x1 stride-1 unpadded conv's im2col block is the image itself.
static int conv_is_pointwise(const conv_desc *d) {
    return d->r == 1 && d->s == 1 && d->stride == 1 && d->pad == 0;
}

// ---------------------------------------------------------------------------------------------------------
// Convolution
//
// Workspace, per thread: one group's im2col block [Cg*R*S, OH*OW] (reused for dcol in backward) and a partial
// dW [K, Cg*R*S] + db [K] that backward sums at the end (Cg = C/groups). A grouped conv runs one sgemm per group
// on that group's slices of x, w and y. Backward recomputes im2col rather than keeping a
// whole-batch block from forward: the copy is cheap next to the sgemm and stays in L2.

typedef struct conv_ws_layout {
    size_t col, dw, db, per_thread;  // in floats
} conv_ws_layout;

static conv_ws_layout conv_ws(const conv_desc *d) {
    conv_ws_layout l;
    size_t crs = (size_t)conv_group_channels(d) * d->r * d->s;
    l.col = conv_is_depthwise(d) ? 0 : FLOATS_ALIGNED(crs * d->oh * d->ow);
    l.dw = FLOATS_ALIGNED(crs * d->k);
    l.db = FLOATS_ALIGNED(d->k);
    l.per_thread = l.col + l.dw + l.db;
    return l;
}

static int conv_check(const conv_desc *d, const char *op) {
    if (d->n < 1 || d->oh < 1 || d->ow < 1 || d->k < 1 || d->c < 1 || d->r < 1 || d->s < 1 || d->stride < 1 ||
        d->groups < 1 || d->dilation < 1 || d->c % d->groups || d->k % d->groups)
        return ERR(ST_INPUT, "%s: descriptor not initialised (call conv_desc_init)", op);
    return ST_OK;
}

// With oneDNN, a plan splits the batch into one slice per thread (at most one per image); the workspace holds,
// per part, oneDNN's staging buffers and scratchpad, then the part's partial dW and db (parts 1..).
typedef struct conv_dnnl_ws {
    size_t dnnl, dw, db, per_part;  // in bytes
} conv_dnnl_ws;

static conv_dnnl_ws conv_dnnl_layout(const conv_desc *d, size_t dnnl_bytes) {
    conv_dnnl_ws l = {.dnnl = dnnl_bytes};
    l.dw = sizeof(float) * FLOATS_ALIGNED((size_t)d->k * conv_group_channels(d) * d->r * d->s);
    l.db = sizeof(float) * FLOATS_ALIGNED(d->k);
    l.per_part = l.dnnl + l.dw + l.db;
    return l;
}

// CPU_CONV_AUTO's rule: oneDNN where it measured faster (forward + backward, 2 threads, AVX2; README,
// Benchmarks): 3x3 convolutions of 16 or more input channels, 1.3-1.8x. One-channel stems (0.5x: oneDNN's
// reorders and kernels for C = 1 cost more than the small im2col) and 1x1 projections (0.6-0.7x) stay on im2col.
// Grouped and dilated convolutions follow the same rule: oneDNN's depthwise 3x3 (MobileNetV2's, 32 channels at
// 56x56, batch 32, relu6) ran forward + backward in 17.4 ms against the direct loop's 32.6 ms (1 thread; 1.5x
// on 2 threads), groups 2 and 8 on 64 channels at 28x28 1.5-1.6x, dilation 2 1.05x.
// A rule, not a timing at prepare: the choice, hence the rounding, must be the same in every run (exact resume).
static int conv_dnnl_pays(const conv_desc *d) { return d->r * d->s > 1 && d->c >= 16; }

int cpu_conv_prepare(void *ctx, conv_desc *d, size_t *workspace_bytes) {
    cpu_ctx *c = ctx;
    TRY(conv_check(d, "conv_prepare"));
    d->plan = NULL;
    *workspace_bytes = conv_ws(d).per_thread * sizeof(float) * (size_t)c->threads;
    if (!c->dnnl || (c->conv == CPU_CONV_AUTO && !conv_dnnl_pays(d))) return ST_OK;
    int parts = c->threads < d->n ? c->threads : d->n;
    conv_dnnl_plan *p = NULL;
    size_t per_part = 0;
    TRY(conv_dnnl_plan_create(c->dnnl, d, parts, &p, &per_part));
    d->plan = p;
    *workspace_bytes = conv_dnnl_layout(d, per_part).per_part * (size_t)parts;
    return ST_OK;
}

void cpu_conv_release(void *ctx, conv_desc *d) {
    cpu_ctx *c = ctx;
    if (c->dnnl) conv_dnnl_plan_destroy(d->plan);
    d->plan = NULL;
}

typedef struct conv_job {
    const cpu_ctx *c;
    const conv_desc *d;
    conv_ws_layout L;
    conv_dnnl_ws DL;         // oneDNN plans
    _Atomic int status;      // oneDNN plans: the first failing part's status
    const float *x, *w, *b, *y;
    float *yo, *dy, *dx, *dw, *db;
    float *ws;
} conv_job;

// The output starts as the bias and the sgemm accumulates onto it (beta = 1): OpenBLAS's own beta = 0 pass
// over C is a separate, slower sweep (a quarter of conv1's forward).
// No bias (b = NULL): zeros.
static void fill_bias(float *restrict y, const float *restrict b, int k, int p) {
    for (int i = 0; i < k; i++) {
        float *row = y + (size_t)i * p;
        const float bi = b ? b[i] : 0.0f;
        for (int j = 0; j < p; j++) row[j] = bi;
    }
}

static void conv_forward_part(void *arg, int part, int parts) {
    const conv_job *j = arg;
    const conv_desc *d = j->d;
    const int K = d->k, P = d->oh * d->ow, G = d->groups, KG = K / G, CRS = conv_group_channels(d) * d->r * d->s;
    const size_t x_img = (size_t)d->c * d->h * d->w, y_img = (size_t)K * P;
    const size_t x_grp = x_img / (size_t)G, y_grp = (size_t)KG * P, w_grp = (size_t)KG * CRS;
    float *col = j->ws + j->L.per_thread * (size_t)part;
    int64_t lo, hi;
    split_range(d->n, parts, part, &lo, &hi);
    for (int64_t i = lo; i < hi; i++) {
        const float *xi = j->x + (size_t)i * x_img;
        float *yi = j->yo + (size_t)i * y_img;
        fill_bias(yi, j->b, K, P);
        if (conv_is_depthwise(d)) {
            depthwise_forward(d, xi, j->w, yi);
        } else {
            for (int g = 0; g < G; g++) {
                const float *ci = xi + g * x_grp;
                if (!conv_is_pointwise(d)) {
                    im2col(d, ci, col);
                    ci = col;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, KG, P, CRS, 1.0f, j->w + g * w_grp, CRS, ci,
                            P, 1.0f, yi + g * y_grp, P);
            }
        }
        act_inplace(yi, y_img, d->act);
    }
}

static void conv_dnnl_forward_part(void *arg, int part, int parts) {
    (void)parts;
    conv_job *j = arg;
    char *ws = (char *)j->ws + j->DL.per_part * (size_t)part;
    int st = conv_dnnl_forward(j->c->dnnl, j->d->plan, part, j->x, j->w, j->b, j->yo, ws);
    if (st != ST_OK) atomic_store(&j->status, st);
}

int cpu_conv_forward(void *ctx, const conv_desc *d, const float *x, const float *w, const float *b,
                     float *y, void *ws) {
    cpu_ctx *c = ctx;
    TRY(conv_check(d, "conv_forward"));
    if (!ws) return ERR(ST_INPUT, "conv_forward: no workspace given");
    if (c->dnnl && d->plan) {  // a oneDNN plan (im2col has none)
        conv_job j = {.c = c, .d = d, .DL = conv_dnnl_layout(d, conv_dnnl_plan_ws(d->plan)), .x = x, .w = w,
                      .b = b, .yo = y, .ws = ws};
        cpu_pool_run(&c->pool, conv_dnnl_plan_parts(d->plan), conv_dnnl_forward_part, &j);
        return atomic_load(&j.status);
    }
    conv_job j = {.c = c, .d = d, .L = conv_ws(d), .x = x, .w = w, .b = b, .yo = y, .ws = ws};
    int parts = parts_for(c, (double)d->n * d->k * d->oh * d->ow * conv_group_channels(d) * d->r * d->s, 2e5);
    cpu_pool_run(&c->pool, parts < d->n ? parts : d->n, conv_forward_part, &j);
    return ST_OK;
}

// dy *= act'(y) for one image, and its per-filter sums added to db (none when db is NULL). Eight partial sums,
// because a single running sum is a serial chain of adds the compiler may not reorder (it was half of conv1's
// backward).
DDP_VEC_CLONES static void conv_act_grad(const conv_desc *d, const float *y, float *dy, float *db) {
    const int P = d->oh * d->ow;
    for (int k = 0; k < d->k; k++) {
        float *restrict g = dy + (size_t)k * P;
        const float *restrict a = y + (size_t)k * P;
        if (d->act == ACT_RELU)
            for (int q = 0; q < P; q++) g[q] = a[q] > 0.0f ? g[q] : 0.0f;
        else if (d->act == ACT_LEAKY)
            for (int q = 0; q < P; q++) g[q] = act_grad(ACT_LEAKY, a[q], g[q]);
        else if (d->act != ACT_NONE)
            for (int q = 0; q < P; q++) g[q] = act_grad(d->act, a[q], g[q]);
        if (!db) continue;
        float acc[8] = {0};
        int q = 0;
        for (; q + 8 <= P; q += 8)
            for (int l = 0; l < 8; l++) acc[l] += g[q + l];
        float sum = 0.0f;
        for (; q < P; q++) sum += g[q];
        for (int l = 0; l < 8; l++) sum += acc[l];
        db[k] += sum;
    }
}

// One image's dW (beta 0: overwritten, 1: added to) and dx (nullable) by one pair of sgemms per group.
static void conv_backward_gemms(const conv_job *j, const float *xi, const float *dyi, float *dxi, float *dw,
                                float beta, float *col) {
    const conv_desc *d = j->d;
    const int P = d->oh * d->ow, G = d->groups, KG = d->k / G, CRS = conv_group_channels(d) * d->r * d->s;
    const size_t x_grp = (size_t)d->c * d->h * d->w / (size_t)G, y_grp = (size_t)KG * P, w_grp = (size_t)KG * CRS;
    for (int g = 0; g < G; g++) {
        const float *ci = xi + g * x_grp, *dyg = dyi + g * y_grp;
        if (!conv_is_pointwise(d)) {
            im2col(d, ci, col);
            ci = col;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, KG, CRS, P, 1.0f, dyg, P, ci, P, beta, dw + g * w_grp,
                    CRS);
        if (!dxi) continue;
        float *dxg = dxi + g * x_grp;
        float *dcol = conv_is_pointwise(d) ? dxg : col;  // pointwise: dcol is dx itself
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, CRS, P, KG, 1.0f, j->w + g * w_grp, CRS, dyg, P, 0.0f,
                    dcol, P);
        if (dcol != dxg) col2im(d, dcol, dxg);
    }
}

// One part's images: pre-activation dy in place, partial dW/db, and dx. Part 0 writes dw/db directly.
static void conv_backward_part(void *arg, int part, int parts) {
    const conv_job *j = arg;
    const conv_desc *d = j->d;
    const int K = d->k, P = d->oh * d->ow, CRS = conv_group_channels(d) * d->r * d->s;
    const size_t x_img = (size_t)d->c * d->h * d->w, y_img = (size_t)K * P;
    float *col = j->ws + j->L.per_thread * (size_t)part;
    float *dw = part == 0 ? j->dw : col + j->L.col, *db = part == 0 ? j->db : col + j->L.col + j->L.dw;
    if (!j->db) db = NULL;
    int64_t lo, hi;
    split_range(d->n, parts, part, &lo, &hi);
    if (db) memset(db, 0, sizeof(float) * (size_t)K);
    if (lo == hi || conv_is_depthwise(d)) memset(dw, 0, sizeof(float) * (size_t)K * CRS);
    for (int64_t i = lo; i < hi; i++) {
        const float *xi = j->x + (size_t)i * x_img;
        float *dyi = j->dy + (size_t)i * y_img, *dxi = j->dx ? j->dx + (size_t)i * x_img : NULL;
        conv_act_grad(d, j->y + (size_t)i * y_img, dyi, db);
        if (conv_is_depthwise(d))
            depthwise_backward(d, xi, j->w, dyi, dxi, dw);
        else
            conv_backward_gemms(j, xi, dyi, dxi, dw, i == lo ? 0.0f : 1.0f, col);
        progress_poll(j->c, part);
    }
}

// oneDNN: one part's images: pre-activation dy in place (as for im2col), then oneDNN's dx and the part's dW/db
// (part 0 into dw/db, the others into their workspace, summed by the caller in part order).
static void conv_dnnl_backward_part(void *arg, int part, int parts) {
    conv_job *j = arg;
    const conv_desc *d = j->d;
    const size_t y_img = (size_t)d->k * d->oh * d->ow;
    int64_t lo, hi;
    split_range(d->n, parts, part, &lo, &hi);
    for (int64_t i = lo; i < hi; i++)
        if (d->act != ACT_NONE) conv_act_grad(d, j->y + (size_t)i * y_img, j->dy + (size_t)i * y_img, NULL);
    char *ws = (char *)j->ws + j->DL.per_part * (size_t)part;
    float *dw = part == 0 ? j->dw : (float *)(ws + j->DL.dnnl);
    float *db = !j->db ? NULL : part == 0 ? j->db : (float *)(ws + j->DL.dnnl + j->DL.dw);
    int st = conv_dnnl_backward(j->c->dnnl, d->plan, part, j->x, j->w, j->dy, j->dx, dw, db, ws);
    if (st != ST_OK) atomic_store(&j->status, st);
    progress_poll(j->c, part);
}

static int conv_dnnl_backward_run(cpu_ctx *c, conv_job *j) {
    const conv_desc *d = j->d;
    const int parts = conv_dnnl_plan_parts(d->plan);
    cpu_pool_run(&c->pool, parts, conv_dnnl_backward_part, j);
    TRY(atomic_load(&j->status));
    const size_t nw = (size_t)d->k * conv_group_channels(d) * d->r * d->s;
    for (int t = 1; t < parts; t++) {
        const char *ws = (const char *)j->ws + j->DL.per_part * (size_t)t;
        const float *pw = (const float *)(ws + j->DL.dnnl), *pb = (const float *)(ws + j->DL.dnnl + j->DL.dw);
        for (size_t e = 0; e < nw; e++) j->dw[e] += pw[e];
        if (j->db)
            for (int k = 0; k < d->k; k++) j->db[k] += pb[k];
    }
    progress_poll(c, 0);
    return ST_OK;
}

int cpu_conv_backward(void *ctx, const conv_desc *d, const float *x, const float *w, const float *y,
                      float *dy, float *dx, float *dw, float *db, void *ws) {
    cpu_ctx *c = ctx;
    TRY(conv_check(d, "conv_backward"));
    if (!ws) return ERR(ST_INPUT, "conv_backward: no workspace given");
    if (c->dnnl && d->plan) {  // a oneDNN plan (im2col has none)
        conv_job j = {.c = c, .d = d, .DL = conv_dnnl_layout(d, conv_dnnl_plan_ws(d->plan)), .x = x, .w = w,
                      .y = y, .dy = dy, .dx = dx, .dw = dw, .db = db, .ws = ws};
        return conv_dnnl_backward_run(c, &j);
    }
    conv_job j = {.c = c, .d = d, .L = conv_ws(d), .x = x, .w = w, .y = y, .dy = dy, .dx = dx, .dw = dw,
                  .db = db, .ws = ws};
    const int K = d->k, CRS = conv_group_channels(d) * d->r * d->s;
    int parts = parts_for(c, (double)d->n * K * d->oh * d->ow * CRS * (dx ? 2 : 1), 2e5);
    if (parts > d->n) parts = d->n;
    if (parts > c->pool.n) parts = c->pool.n;
    cpu_pool_run(&c->pool, parts, conv_backward_part, &j);
    // The partial sums are small (K x C*R*S), a serial add beats another round trip through the pool.
    for (int t = 1; t < parts; t++) {
        const float *pw = j.ws + j.L.per_thread * (size_t)t + j.L.col, *pb = pw + j.L.dw;
        for (size_t e = 0; e < (size_t)K * CRS; e++) dw[e] += pw[e];
        if (db)
            for (int k = 0; k < K; k++) db[k] += pb[k];
    }
    progress_poll(c, 0);
    return ST_OK;
}
