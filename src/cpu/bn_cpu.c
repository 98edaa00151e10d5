// bn_cpu.c — batch normalisation on the CPU (backend.h bn_* ops): statistics, apply, and the two halves of
// backward, split so that sync BN can average across ranks in between.
#include <math.h>
#include <stdint.h>

#include "backend_cpu_impl.h"

// ---------------------------------------------------------------------------------------------------------
// Batch normalisation: x is [n, c, hw]; every op splits the channels over threads (each channel's sums are one
// thread's, so results do not depend on the thread count). Two passes for the variance. The sums over a
// channel are a double sum of per-image row sums, each row summed in float over 16 lanes (a single running
// double sum is a serial chain of adds: it was three quarters of the batch norm time).

typedef struct bn_job {
    const bn_desc *d;
    const float *x, *y, *stats, *w, *b, *save, *gstats, *dzc;
    float *out, *running, *save_out, *dy, *dw, *db, *dx;
} bn_job;

// Parts for a BN op: by the work, at most one per channel.
static int bn_parts(const cpu_ctx *c, const bn_desc *d) {
    const int parts = parts_for(c, (double)d->n * d->c * d->hw, 65536);
    return parts < d->c ? parts : d->c;
}

static void bn_split(const bn_job *j, int part, int parts, int *c0, int *c1) {
    int64_t lo, hi;
    split_range(j->d->c, parts, part, &lo, &hi);
    *c0 = (int)lo, *c1 = (int)hi;
}

// Checks the descriptor, runs fn over the channels; backward ops then give MPI a chance to progress.
static int bn_run(cpu_ctx *c, bn_job *j, pool_fn fn, const char *op, int backward) {
    TRY(bn_desc_check(j->d, op));
    cpu_pool_run(&c->pool, bn_parts(c, j->d), fn, j);
    if (backward) progress_poll(c, 0);
    return ST_OK;
}

static inline double bn_row_sum(const float *p, size_t n) {
    v8f a = {0}, b = {0};
    size_t k = 0;
    for (; k + 16 <= n; k += 16) a += v8_load(p + k), b += v8_load(p + k + 8);
    float t = 0.0f;
    for (; k < n; k++) t += p[k];
    return v8_sum(a + b) + t;
}

// sum(p[k] - m) and sum((p[k] - m)^2) over one row
static inline void bn_row_sums(const float *p, size_t n, float m, double *s1, double *s2) {
    const v8f vm = v8_splat(m);
    v8f a = {0}, b = {0}, qa = {0}, qb = {0};
    size_t k = 0;
    for (; k + 16 <= n; k += 16) {
        const v8f u = v8_load(p + k) - vm, v = v8_load(p + k + 8) - vm;
        a += u, b += v, qa += u * u, qb += v * v;
    }
    float t = 0.0f, tq = 0.0f;
    for (; k < n; k++) {
        const float u = p[k] - m;
        t += u, tq += u * u;
    }
    *s1 += v8_sum(a + b) + t;
    *s2 += v8_sum(qa + qb) + tq;
}

DDP_VEC_CLONES static void bn_stats_part(void *arg, int part, int parts) {
    const bn_job *j = arg;
    const bn_desc *d = j->d;
    const size_t plane = (size_t)d->hw, stride = (size_t)d->c * plane;
    const double inv = 1.0 / ((double)d->n * d->hw);
    int c0, c1;
    bn_split(j, part, parts, &c0, &c1);
    for (int ch = c0; ch < c1; ch++) {
        double s = 0.0;
        for (int i = 0; i < d->n; i++) s += bn_row_sum(j->x + i * stride + ch * plane, plane);
        const float mf = (float)(s * inv);
        double dev = 0.0, q = 0.0;  // dev: the sum of (x - mean) in float, to correct for mean's rounding
        for (int i = 0; i < d->n; i++) bn_row_sums(j->x + i * stride + ch * plane, plane, mf, &dev, &q);
        const double dm = dev * inv;
        j->out[ch] = mf;
        j->out[d->c + ch] = (float)(q * inv - dm * dm);
        j->out[2 * d->c + ch] = mf * mf;
    }
}

int cpu_bn_stats(void *ctx, const bn_desc *d, const float *x, float *stats) {
    bn_job j = {.d = d, .x = x, .out = stats};
    return bn_run(ctx, &j, bn_stats_part, "bn_stats", 0);
}

DDP_VEC_CLONES static void bn_apply_part(void *arg, int part, int parts) {
    const bn_job *j = arg;
    const bn_desc *d = j->d;
    const size_t plane = (size_t)d->hw, stride = (size_t)d->c * plane;
    int c0, c1;
    bn_split(j, part, parts, &c0, &c1);
    for (int ch = c0; ch < c1; ch++) {
        float mean, var;
        float *rm = j->running + ch, *rv = j->running + d->c + ch;
        if (j->stats) {
            mean = j->stats[ch];
            // avg(var_r) + (avg(mean_r²) - avg(mean_r)²): the second term is 0 at one rank
            const float between = j->stats[2 * d->c + ch] - mean * mean;
            var = j->stats[d->c + ch] + (between > 0.0f ? between : 0.0f);
            const float unbiased = (float)((double)var * (double)d->count / (double)(d->count - 1));
            *rm = (1.0f - d->momentum) * *rm + d->momentum * mean;
            *rv = (1.0f - d->momentum) * *rv + d->momentum * unbiased;
        } else {
            mean = *rm, var = *rv;
        }
        const float invstd = (float)(1.0 / sqrt((double)var + (double)d->eps));
        j->save_out[ch] = mean;
        j->save_out[d->c + ch] = invstd;
        const float scale = j->w[ch] * invstd, shift = j->b[ch] - mean * scale;
        const v8f vs = v8_splat(scale), vt = v8_splat(shift);
        for (int i = 0; i < d->n; i++) {
            const float *p = j->x + i * stride + ch * plane;
            float *q = j->out + i * stride + ch * plane;
            size_t k = 0;
            for (; k + 8 <= plane; k += 8) v8_store(q + k, v8_act(d->act, v8_load(p + k) * vs + vt));
            for (; k < plane; k++) q[k] = act_apply(d->act, p[k] * scale + shift);
        }
    }
}

int cpu_bn_apply(void *ctx, const bn_desc *d, const float *x, const float *stats, const float *w,
                 const float *b, float *running, float *save, float *y) {
    cpu_ctx *c = ctx;
    TRY(bn_desc_check(d, "bn_apply"));
    if (stats && d->count < 2)
        return ERR(ST_INPUT, "bn_apply: training needs more than one value per channel (count %lld)",
                   (long long)d->count);
    bn_job j = {.d = d, .x = x, .stats = stats, .w = w, .b = b, .running = running, .save_out = save, .out = y};
    cpu_pool_run(&c->pool, bn_parts(c, d), bn_apply_part, &j);
    if (stats) running[2 * d->c] += 1.0f;  // num_batches_tracked
    return ST_OK;
}

// One row of the gradient statistics: dy <- dy * act'(y); adds sum(dy) and sum(dy * (x - mean)).
static inline void bn_grad_row(int act, const float *y, float *dy, const float *x, size_t n, float mean, double *sg,
                               double *sgx) {
    const v8f vm = v8_splat(mean);
    v8f a = {0}, b = {0};
    size_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const v8f g = v8_act_grad(act, v8_load(y + k), v8_load(dy + k));
        v8_store(dy + k, g);
        a += g, b += g * (v8_load(x + k) - vm);
    }
    float t = 0.0f, tx = 0.0f;
    for (; k < n; k++) {
        const float g = act_grad(act, y[k], dy[k]);
        dy[k] = g;
        t += g, tx += g * (x[k] - mean);
    }
    *sg += v8_sum(a) + t;
    *sgx += v8_sum(b) + tx;
}

DDP_VEC_CLONES static void bn_grad_stats_part(void *arg, int part, int parts) {
    const bn_job *j = arg;
    const bn_desc *d = j->d;
    const size_t plane = (size_t)d->hw, stride = (size_t)d->c * plane;
    const double inv = 1.0 / ((double)d->n * d->hw);
    int c0, c1;
    bn_split(j, part, parts, &c0, &c1);
    for (int ch = c0; ch < c1; ch++) {
        const float mean = j->save[ch], invstd = j->save[d->c + ch];
        double sg = 0.0, sgx = 0.0;
        for (int i = 0; i < d->n; i++) {
            const size_t o = i * stride + ch * plane;
            bn_grad_row(d->act, j->y + o, j->dy + o, j->x + o, plane, mean, &sg, &sgx);
        }
        sgx *= invstd;
        j->db[ch] = (float)sg;
        j->dw[ch] = (float)sgx;
        j->out[ch] = (float)(sg * inv);
        j->out[d->c + ch] = (float)(sgx * inv);
    }
}

int cpu_bn_grad_stats(void *ctx, const bn_desc *d, const float *x, const float *y, const float *save,
                      float *dy, float *dw, float *db, float *gstats) {
    bn_job j = {.d = d, .x = x, .y = y, .save = save, .dy = dy, .dw = dw, .db = db, .out = gstats};
    return bn_run(ctx, &j, bn_grad_stats_part, "bn_grad_stats", 1);
}

DDP_VEC_CLONES static void bn_grad_input_part(void *arg, int part, int parts) {
    const bn_job *j = arg;
    const bn_desc *d = j->d;
    const size_t plane = (size_t)d->hw, stride = (size_t)d->c * plane;
    int c0, c1;
    bn_split(j, part, parts, &c0, &c1);
    for (int ch = c0; ch < c1; ch++) {
        const float mean = j->save[ch], invstd = j->save[d->c + ch];
        const float mg = j->gstats[ch], mgx = j->gstats[d->c + ch], k0 = j->w[ch] * invstd;
        const v8f vm = v8_splat(mean), vi = v8_splat(invstd), vmg = v8_splat(mg), vmgx = v8_splat(mgx),
                  vk0 = v8_splat(k0);
        for (int i = 0; i < d->n; i++) {
            const size_t o = i * stride + ch * plane;
            const float *x = j->x + o, *dz = j->dzc + o;
            float *dx = j->dx + o;
            size_t k = 0;
            for (; k + 8 <= plane; k += 8) {
                const v8f xh = (v8_load(x + k) - vm) * vi;
                v8_store(dx + k, vk0 * (v8_load(dz + k) - vmg - xh * vmgx));
            }
            for (; k < plane; k++) {
                const float xh = (x[k] - mean) * invstd;
                dx[k] = k0 * (dz[k] - mg - xh * mgx);
            }
        }
    }
}

int cpu_bn_grad_input(void *ctx, const bn_desc *d, const float *x, const float *save, const float *w,
                      const float *gstats, const float *dz, float *dx) {
    bn_job j = {.d = d, .x = x, .save = save, .w = w, .gstats = gstats, .dzc = dz, .dx = dx};
    return bn_run(ctx, &j, bn_grad_input_part, "bn_grad_input", 1);
}
