// bucket_plan.c — the buckets' rule and, for parallel.bucket_kb=auto, the pipeline model that picks their cap
// (bucket_plan.h). The trainer's buckets and the model's come from the same bucket_plan_form, so the simulation
// plans exactly the buckets a run will launch.
#include "bucket_plan.h"

#include <math.h>
#include <stdlib.h>

#include "common.h"
#include "layer.h"

// ---------------------------------------------------------------------------------------------------------
// The layers and the buckets

int bucket_plan_layers(const model *m, double backward_s, bucket_layer *out) {
    double total = 0;
    for (int l = 0; l < m->n_layers; l++)
        if (m->layers[l].kind->flops) total += m->layers[l].kind->flops(&m->layers[l]);
    double t = 0;
    int n = 0;
    for (int l = m->n_layers - 1; l >= 0; l--) {  // backward's order, which is the buffer's
        const model_layer *ly = &m->layers[l];
        const double f = ly->kind->flops ? ly->kind->flops(ly) : 0;
        // A model without arithmetic the kinds report: backward's time spread evenly over its layers.
        t += total > 0 ? backward_s * f / total : backward_s / m->n_layers;
        if (ly->n_w + ly->n_b == 0) continue;
        const size_t b = ly->w_off < ly->b_off ? ly->w_off : ly->b_off;
        const size_t e = ly->w_off + ly->n_w > ly->b_off + ly->n_b ? ly->w_off + ly->n_w : ly->b_off + ly->n_b;
        out[n++] = (bucket_layer){.begin = b, .end = e, .ready_s = t < backward_s ? t : backward_s};
    }
    return n;
}

int bucket_plan_form(const bucket_layer *layers, int n_layers, size_t n_params, size_t per, bucket_span *out) {
    if (per == 0) per = 1;
    int n = 0;
    size_t open = 0;  // start of the bucket being filled (== the next layer's begin when empty)
    for (int i = 0; i < n_layers; i++) {
        const size_t b = layers[i].begin, e = layers[i].end, size = e - b;
        if (open < b && (size > per || e - open > per)) {  // close what is open before this layer
            if (out) out[n] = (bucket_span){open, b};
            n++, open = b;
        }
        if (size > per) {
            const size_t parts = layers[i].whole ? 1 : (size + per - 1) / per;
            for (size_t k = 0; k < parts; k++) {
                if (out) out[n] = (bucket_span){b + size * k / parts, b + size * (k + 1) / parts};
                n++;
            }
            open = e;
        }
    }
    if (open < n_params) {
        if (out) out[n] = (bucket_span){open, n_params};
        n++;
    }
    return n;
}

// ---------------------------------------------------------------------------------------------------------
// The pipeline model

// One bucket's all-reduce(s) on the link: its floats, or under PowerSGD (layers carry p_floats/q_floats) the P's
// and then the Q's of the layers inside it (PowerSGD never splits a layer; a part of one counts its share).
static double bucket_comm_s(const bucket_layer *layers, int n_layers, const bucket_span *b, const bucket_link *link) {
    double p = 0, q = 0;
    int psgd = 0;
    for (int j = 0; j < n_layers; j++) {
        const bucket_layer *l = &layers[j];
        if (l->p_floats + l->q_floats == 0) continue;
        psgd = 1;
        const size_t lo = l->begin > b->begin ? l->begin : b->begin, hi = l->end < b->end ? l->end : b->end;
        if (lo >= hi) continue;
        const double share = (double)(hi - lo) / (double)(l->end - l->begin);
        p += share * (double)l->p_floats, q += share * (double)l->q_floats;
    }
    if (!psgd) return bucket_plan_allreduce_s(link, (double)(b->end - b->begin) * sizeof(float));
    // the buffer's floats outside every layer (none in practice) go with P, uncompressed
    double in_layers = 0;
    for (int j = 0; j < n_layers; j++) {
        const size_t lo = layers[j].begin > b->begin ? layers[j].begin : b->begin;
        const size_t hi = layers[j].end < b->end ? layers[j].end : b->end;
        if (lo < hi) in_layers += (double)(hi - lo);
    }
    p += (double)(b->end - b->begin) - in_layers;
    return bucket_plan_allreduce_s(link, p * sizeof(float)) + (q > 0 ? bucket_plan_allreduce_s(link, q * sizeof(float)) : 0);
}

double bucket_plan_simulate(const bucket_layer *layers, int n_layers, size_t n_params, double backward_s,
                            size_t per, const bucket_link *link, int overlap, int *n_buckets) {
    const int n = bucket_plan_form(layers, n_layers, n_params, per, NULL);
    if (n_buckets) *n_buckets = n;
    bucket_span *bk = malloc((size_t)(n ? n : 1) * sizeof *bk);
    if (!bk) return -1;
    bucket_plan_form(layers, n_layers, n_params, per, bk);
    double shift = 0;      // host time the launches so far took from backward
    double comm_free = 0;  // when the previous all-reduce ends
    int j = 0;             // the layer that completes bucket i: the first that ends at or after its end
    for (int i = 0; i < n; i++) {
        while (j < n_layers && layers[j].end < bk[i].end) j++;
        const double ready = (overlap && j < n_layers ? layers[j].ready_s : backward_s) + shift;
        shift += link->launch_s;
        const double start = ready + link->launch_s > comm_free ? ready + link->launch_s : comm_free;
        comm_free = start + bucket_comm_s(layers, n_layers, &bk[i], link);
    }
    free(bk);
    const double end = comm_free > backward_s + shift ? comm_free : backward_s + shift;
    return end - backward_s;
}

int bucket_plan_choose(const bucket_layer *layers, int n_layers, size_t n_params, double backward_s,
                       const bucket_link *link, int overlap, int max_buckets, bucket_choice *out) {
    enum { N_CAPS = 32 };
    bucket_choice c[N_CAPS];
    int nc = 0;
    double best = INFINITY;
    for (long kb = BUCKET_PLAN_MIN_KB; kb <= BUCKET_PLAN_MAX_KB && nc < N_CAPS; kb *= 2) {
        const size_t per = (size_t)kb * 1024 / sizeof(float);
        if (bucket_plan_form(layers, n_layers, n_params, per, NULL) > max_buckets) continue;
        c[nc].kb = (int)kb;
        c[nc].exposed_s = bucket_plan_simulate(layers, n_layers, n_params, backward_s, per, link, overlap,
                                               &c[nc].n_buckets);
        if (c[nc].exposed_s < 0) return ERR(ST_RUNTIME, "out of host memory planning the gradient buckets");
        if (c[nc].exposed_s < best) best = c[nc].exposed_s;
        nc++;
    }
    *out = (bucket_choice){0};
    if (nc == 0) return ST_OK;
    // Within the model's noise of the best, fewer buckets: fewer launches and polls than it counts. Caps are tried
    // from the smallest, so of caps that give as many buckets the first (smallest) is kept.
    const double tol = fmax(1e-6, 0.01 * best);
    int pick = -1;
    for (int i = 0; i < nc; i++)
        if (c[i].exposed_s <= best + tol && (pick < 0 || c[i].n_buckets < c[pick].n_buckets)) pick = i;
    *out = c[pick];
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// The probe's arithmetic

bucket_link bucket_plan_fit(const double *bytes, const double *s, int n, double launch_s) {
    bucket_link l = {.launch_s = launch_s > 0 ? launch_s : 0};
    if (n > BUCKET_LINK_MAX) n = BUCKET_LINK_MAX;
    for (int i = 0; i < n; i++) {
        l.bytes[i] = bytes[i];
        l.s[i] = i > 0 && s[i] < l.s[i - 1] ? l.s[i - 1] : s[i];  // no faster for more bytes: noise
    }
    l.n = n;
    // Noise can make the largest all-reduce look no slower than the smallest: a link far faster than the probe
    // can tell, 1 TB/s.
    double beta = n > 1 ? (l.s[n - 1] - l.s[0]) / (l.bytes[n - 1] - l.bytes[0]) : 0;
    if (!(beta > 1e-12)) beta = 1e-12;
    double alpha = n > 0 ? l.s[0] - l.bytes[0] * beta : 0;
    l.alpha_s = alpha > 0 ? alpha : 0;
    l.beta_s = beta;
    return l;
}

double bucket_plan_allreduce_s(const bucket_link *l, double bytes) {
    if (l->n <= 0) return l->alpha_s + bytes * l->beta_s;
    if (bytes <= l->bytes[0]) return l->s[0];
    for (int i = 1; i < l->n; i++)
        if (bytes <= l->bytes[i])
            return l->s[i - 1] + (bytes - l->bytes[i - 1]) * (l->s[i] - l->s[i - 1]) / (l->bytes[i] - l->bytes[i - 1]);
    const int k = l->n - 1;
    double slope = k > 0 ? (l->s[k] - l->s[k - 1]) / (l->bytes[k] - l->bytes[k - 1]) : l->beta_s;
    if (slope < l->beta_s) slope = l->beta_s;
    return l->s[k] + (bytes - l->bytes[k]) * slope;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bucket_plan_median(double *v, int n) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
