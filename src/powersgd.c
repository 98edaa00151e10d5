// powersgd.c — PowerSGD gradient compression per bucket: the layout (which pieces of a bucket are matrices), the
// three stages around the all-reduces, the state for checkpoints. The math and its order are PyTorch's
// powerSGD_hook (src/powersgd.h has the stages; docs/parallelism.md what differs and why).
#include "powersgd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

// ---------------------------------------------------------------------------------------------------------
// Layout

// A compressed matrix of a bucket: rows x cols floats at `off` of the gradient buffer (row-major: PyTorch's
// tensor.view(shape[0], -1)), its rank r, its P in the bucket's scratch and its Q in the Q buffer.
typedef struct psgd_matrix {
    size_t off;
    int rows, cols, r;
    size_t p_off;  // floats into the bucket's scratch
    size_t q_off;  // floats into ps->q
} psgd_matrix;

// A run of values all-reduced as they are: len floats at `off` of the gradient buffer, at s_off of the scratch.
typedef struct psgd_range {
    size_t off, len, s_off;
} psgd_range;

typedef struct psgd_bucket {
    size_t begin, end;
    psgd_matrix *mat;
    int n_mat;
    psgd_range *unc;
    int n_unc;
    size_t n_p, n_u, n_q;  // floats of its P's, of its uncompressed values, of its Q's
    size_t s_off;          // its scratch [P's | uncompressed] in ps->scratch
    size_t q_off;          // its Q's in ps->q
    int q_ready;           // Q drawn (the bucket has run a compressed step)
} psgd_bucket;

struct powersgd {
    const backend *be;
    powersgd_opts o;
    psgd_bucket *b;
    int n_buckets;
    size_t n_params, n_q, n_scratch;
    float *q, *err, *scratch;  // backend memory
    powersgd_stats stats;
};

// A parameter tensor of the flat buffer: [off, off + len), a matrix of rows x (len / rows) when ndim >= 2.
typedef struct psgd_tensor {
    size_t off, len;
    int rows;  // 0: a vector (ndim <= 1)
    int compressed;  // some piece of it is
} psgd_tensor;

static int tensor_cmp(const void *a, const void *b) {
    const psgd_tensor *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

// PyTorch's _should_compress with min_compression_rate 2, at r = min(rows, cols, rank).
static int matrix_rank(long long rows, long long cols, int rank) {
    long long r = rows < cols ? rows : cols;
    if (r > rank) r = rank;
    return 2 * (rows + cols) * r < rows * cols ? (int)r : 0;
}

// The largest rank that compresses a rows x cols matrix (0: none).
static int matrix_max_rank(long long rows, long long cols) {
    long long r = (rows * cols - 1) / (2 * (rows + cols)), lim = rows < cols ? rows : cols;
    if (r > lim) r = lim;
    return (int)(r < 1 ? 0 : r > (1 << 20) ? (1 << 20) : r);
}

void powersgd_span_floats(const model *m, int rank, size_t begin, size_t end, size_t *p, size_t *q) {
    *p = *q = 0;
    const int nt = model_param_tensor(m, -1, NULL, NULL, NULL, NULL, NULL);
    for (int i = 0; i < nt; i++) {
        const char *name;
        int is_bias, ndim;
        size_t off;
        int64_t shape[4];
        model_param_tensor(m, i, &name, &is_bias, &off, &ndim, shape);
        size_t len = 1;
        for (int d = 0; d < ndim; d++) len *= (size_t)shape[d];
        const size_t lo = off > begin ? off : begin, hi = off + len < end ? off + len : end;
        if (lo >= hi) continue;
        const int r = ndim >= 2 && lo == off && hi == off + len && len > 0
                          ? matrix_rank(shape[0], (long long)(len / (size_t)shape[0]), rank) : 0;
        if (r > 0)
            *p += (size_t)shape[0] * (size_t)r, *q += len / (size_t)shape[0] * (size_t)r;
        else
            *p += hi - lo;
    }
}

// Append an uncompressed run, merged with the previous one when they touch.
static void range_add(psgd_bucket *b, size_t off, size_t len) {
    if (len == 0) return;
    if (b->n_unc > 0 && b->unc[b->n_unc - 1].off + b->unc[b->n_unc - 1].len == off) {
        b->unc[b->n_unc - 1].len += len;
        return;
    }
    b->unc[b->n_unc++] = (psgd_range){.off = off, .len = len};
}

// The piece [lo, hi) of tensor t inside bucket b. A tensor split over buckets (a layer larger than bucket_kb) gives
// each part the whole rows it holds as a matrix of its own, the partial rows at a cut uncompressed; a tensor inside
// one bucket is PyTorch's matrix exactly.
static int piece_add(powersgd *ps, psgd_bucket *b, const psgd_tensor *t, size_t lo, size_t hi) {
    if (t->rows > 0) {
        const size_t cols = t->len / (size_t)t->rows;
        const size_t r0 = (lo - t->off + cols - 1) / cols, r1 = (hi - t->off) / cols;
        const int r = r1 > r0 ? matrix_rank((long long)(r1 - r0), (long long)cols, ps->o.rank) : 0;
        if (r1 > r0) {
            const int mr = matrix_max_rank((long long)(r1 - r0), (long long)cols);
            if (mr > ps->stats.max_rank) ps->stats.max_rank = mr;
        }
        if (r > 0) {
            const size_t m0 = t->off + r0 * cols, m1 = t->off + r1 * cols;
            range_add(b, lo, m0 - lo);
            b->mat[b->n_mat++] = (psgd_matrix){.off = m0, .rows = (int)(r1 - r0), .cols = (int)cols, .r = r};
            range_add(b, m1, hi - m1);
            ps->stats.pieces++;
            return 1;
        }
    }
    range_add(b, lo, hi - lo);
    return 0;
}

static int layout_build(powersgd *ps, const model *m, const size_t *begin, const size_t *end) {
    const int nt = model_param_tensor(m, -1, NULL, NULL, NULL, NULL, NULL);
    psgd_tensor *ts = calloc((size_t)(nt > 0 ? nt : 1), sizeof *ts);
    TRY_ALLOC(ts);
    for (int i = 0; i < nt; i++) {
        const char *name;
        int is_bias, ndim;
        int64_t shape[4];
        model_param_tensor(m, i, &name, &is_bias, &ts[i].off, &ndim, shape);
        ts[i].len = 1;
        for (int d = 0; d < ndim; d++) ts[i].len *= (size_t)shape[d];
        ts[i].rows = ndim >= 2 && ts[i].len > 0 ? (int)shape[0] : 0;
        ps->stats.matrix_tensors += ts[i].rows > 0;
    }
    ps->stats.tensors = nt;
    qsort(ts, (size_t)nt, sizeof *ts, tensor_cmp);
    for (int k = 0; k < ps->n_buckets; k++) {
        psgd_bucket *b = &ps->b[k];
        b->begin = begin[k], b->end = end[k];
        int pieces = 0;
        for (int i = 0; i < nt; i++) pieces += ts[i].off < b->end && ts[i].off + ts[i].len > b->begin;
        // each piece: at most one matrix and two runs
        b->mat = calloc((size_t)pieces + 1, sizeof *b->mat);
        b->unc = calloc(2 * (size_t)pieces + 1, sizeof *b->unc);
        if (!b->mat || !b->unc) {
            free(ts);
            return ERR(ST_RUNTIME, "out of host memory for PowerSGD's layout");
        }
        for (int i = 0; i < nt; i++) {
            const size_t lo = ts[i].off > b->begin ? ts[i].off : b->begin;
            const size_t hi = ts[i].off + ts[i].len < b->end ? ts[i].off + ts[i].len : b->end;
            if (lo < hi) ts[i].compressed |= piece_add(ps, b, &ts[i], lo, hi);
        }
        for (int j = 0; j < b->n_mat; j++) {
            psgd_matrix *x = &b->mat[j];
            x->p_off = b->n_p;
            x->q_off = ps->n_q + b->n_q;
            b->n_p += (size_t)x->rows * x->r;
            b->n_q += (size_t)x->cols * x->r;
        }
        for (int j = 0; j < b->n_unc; j++) {
            b->unc[j].s_off = b->n_p + b->n_u;
            b->n_u += b->unc[j].len;
        }
        b->s_off = ps->n_scratch;
        b->q_off = ps->n_q;
        ps->n_scratch += b->n_p + b->n_u;
        ps->n_q += b->n_q;
        ps->stats.floats_plain += b->end - b->begin;
        ps->stats.floats_sent += b->n_p + b->n_u + b->n_q;
    }
    for (int i = 0; i < nt; i++) ps->stats.compressed += ts[i].compressed;
    free(ts);
    return ST_OK;
}

int powersgd_create(powersgd **out, const backend *be, const model *m, int n_buckets, const size_t *begin,
                    const size_t *end, const powersgd_opts *o) {
    *out = NULL;
    if (o->rank < 1) return ERR(ST_INPUT, "PowerSGD: rank %d must be >= 1", o->rank);
    powersgd *ps = calloc(1, sizeof *ps);
    TRY_ALLOC(ps);
    ps->be = be;
    ps->o = *o;
    ps->n_buckets = n_buckets;
    ps->n_params = m->n_params;
    ps->b = calloc((size_t)(n_buckets > 0 ? n_buckets : 1), sizeof *ps->b);
    int st = ps->b ? layout_build(ps, m, begin, end) : ERR(ST_RUNTIME, "out of host memory for PowerSGD's buckets");
    if (st == ST_OK) st = backend_alloc(be, (void **)&ps->err, (ps->n_params ? ps->n_params : 1) * sizeof(float));
    if (st == ST_OK) st = backend_alloc(be, (void **)&ps->q, (ps->n_q ? ps->n_q : 1) * sizeof(float));
    if (st == ST_OK) st = backend_alloc(be, (void **)&ps->scratch, (ps->n_scratch ? ps->n_scratch : 1) * sizeof(float));
    if (st != ST_OK) {
        powersgd_destroy(ps);
        return st;
    }
    *out = ps;
    return ST_OK;
}

void powersgd_destroy(powersgd *ps) {
    if (!ps) return;
    backend_free(ps->be, ps->err);
    backend_free(ps->be, ps->q);
    backend_free(ps->be, ps->scratch);
    for (int k = 0; ps->b && k < ps->n_buckets; k++) free(ps->b[k].mat), free(ps->b[k].unc);
    free(ps->b);
    free(ps);
}

void powersgd_get_stats(const powersgd *ps, powersgd_stats *st) { *st = ps->stats; }

int powersgd_active(const powersgd *ps, long long step) { return ps && step >= ps->o.start_step; }

// ---------------------------------------------------------------------------------------------------------
// Q's first draw: N(0, 1) from a counter-based generator (splitmix64, Box-Muller), a function of the seed, the
// bucket and the index only: the same on every rank, backend and thread count. (PyTorch draws from torch.randn
// seeded per bucket; the values differ, the distribution is the same.)

static uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static int q_draw(powersgd *ps, int i) {
    psgd_bucket *b = &ps->b[i];
    if (b->n_q == 0) return ST_OK;
    float *h = malloc(b->n_q * sizeof *h);
    TRY_ALLOC(h);
    const uint64_t key = splitmix64(ps->o.seed ^ 0x50534744ULL) ^ splitmix64((uint64_t)i + 1);
    for (size_t k = 0; k < b->n_q; k += 2) {
        const uint64_t u = splitmix64(key + k), v = splitmix64(~key + k);
        const double u1 = ((double)(u >> 11) + 1.0) / 9007199254740992.0;  // (0, 1]
        const double u2 = (double)(v >> 11) / 9007199254740992.0;          // [0, 1)
        const double rad = sqrt(-2.0 * log(u1)), ang = 6.283185307179586 * u2;
        h[k] = (float)(rad * cos(ang));
        if (k + 1 < b->n_q) h[k + 1] = (float)(rad * sin(ang));
    }
    const int st = backend_upload(ps->be, ps->q + b->q_off, h, b->n_q * sizeof *h);
    free(h);
    b->q_ready = st == ST_OK;
    return st;
}

// ---------------------------------------------------------------------------------------------------------
// The stages

int powersgd_compress(powersgd *ps, int i, float *grads, float **buf, size_t *n) {
    const backend *be = ps->be;
    psgd_bucket *b = &ps->b[i];
    const size_t len = b->end - b->begin;
    float *g = grads + b->begin, *e = ps->err + b->begin, *s = ps->scratch + b->s_off;
    // Error feedback: the input is the gradient plus the last step's error (zero before the first compressed step);
    // `e` keeps the input until decompress turns it into the new error.
    TRY(backend_add(be, len, e, g));
    TRY(backend_copy(be, e, g, len * sizeof(float)));
    if (!b->q_ready) TRY(q_draw(ps, i));
    for (int j = 0; j < b->n_mat; j++) {  // warm start: last step's averaged Q, orthogonalised again
        const psgd_matrix *x = &b->mat[j];
        float *q = ps->q + x->q_off;
        TRY(backend_orthogonalize(be, x->cols, x->r, ps->o.eps, q));
        TRY(backend_gemm(be, 0, 0, x->rows, x->r, x->cols, 1.0f, grads + x->off, q, 0.0f, s + x->p_off));
    }
    for (int j = 0; j < b->n_unc; j++)
        TRY(backend_copy(be, s + b->unc[j].s_off, grads + b->unc[j].off, b->unc[j].len * sizeof(float)));
    *buf = s;
    *n = b->n_p + b->n_u;
    return ST_OK;
}

// PyTorch all-reduces P as a sum and Q as a sum divided by the world size; P is orthogonalised next, which a
// common factor does not change (up to rounding), so both are averaged here.
int powersgd_project(powersgd *ps, int i, float *grads, float **buf, size_t *n) {
    const backend *be = ps->be;
    psgd_bucket *b = &ps->b[i];
    float *s = ps->scratch + b->s_off;
    for (int j = 0; j < b->n_unc; j++)
        TRY(backend_copy(be, grads + b->unc[j].off, s + b->unc[j].s_off, b->unc[j].len * sizeof(float)));
    for (int j = 0; j < b->n_mat; j++) {
        const psgd_matrix *x = &b->mat[j];
        TRY(backend_orthogonalize(be, x->rows, x->r, ps->o.eps, s + x->p_off));
        TRY(backend_gemm(be, 1, 0, x->cols, x->r, x->rows, 1.0f, grads + x->off, s + x->p_off, 0.0f, ps->q + x->q_off));
    }
    *buf = ps->q + b->q_off;
    *n = b->n_q;
    return ST_OK;
}

int powersgd_decompress(powersgd *ps, int i, float *grads) {
    const backend *be = ps->be;
    psgd_bucket *b = &ps->b[i];
    const size_t len = b->end - b->begin;
    const float *s = ps->scratch + b->s_off;
    for (int j = 0; j < b->n_mat; j++) {
        const psgd_matrix *x = &b->mat[j];
        TRY(backend_gemm(be, 0, 1, x->rows, x->cols, x->r, 1.0f, s + x->p_off, ps->q + x->q_off, 0.0f, grads + x->off));
    }
    // error = input - output, PyTorch's input_tensor_cp - input_tensor, as -((-input) + output): negation is exact,
    // so this is the same rounding as one subtraction.
    float *e = ps->err + b->begin;
    TRY(backend_scale(be, len, -1.0f, e));
    TRY(backend_add(be, len, grads + b->begin, e));
    return backend_scale(be, len, -1.0f, e);
}

// ---------------------------------------------------------------------------------------------------------
// State

int powersgd_started(const powersgd *ps) {
    for (int k = 0; k < ps->n_buckets; k++)
        if (!ps->b[k].q_ready) return 0;
    return ps->n_buckets > 0;
}

size_t powersgd_q_floats(const powersgd *ps) { return ps->n_q; }
size_t powersgd_error_floats(const powersgd *ps) { return ps->n_params; }

uint64_t powersgd_layout_hash(const powersgd *ps) {
    uint64_t h = 0xcbf29ce484222325ULL;
#define MIX(v) (h = splitmix64(h ^ (uint64_t)(v)))
    MIX(ps->n_buckets);
    MIX(ps->n_params);
    for (int k = 0; k < ps->n_buckets; k++) {
        const psgd_bucket *b = &ps->b[k];
        MIX(b->begin), MIX(b->end), MIX(b->n_mat);
        for (int j = 0; j < b->n_mat; j++) MIX(b->mat[j].off), MIX(b->mat[j].rows), MIX(b->mat[j].cols), MIX(b->mat[j].r);
    }
#undef MIX
    return h;
}

int powersgd_state_download(const powersgd *ps, float *q, float *err) {
    if (q && ps->n_q) TRY(backend_download(ps->be, q, ps->q, ps->n_q * sizeof(float)));
    if (err && ps->n_params) TRY(backend_download(ps->be, err, ps->err, ps->n_params * sizeof(float)));
    return ST_OK;
}

int powersgd_state_upload(powersgd *ps, const float *q, const float *err) {
    if (ps->n_q) TRY(backend_upload(ps->be, ps->q, q, ps->n_q * sizeof(float)));
    if (err) TRY(backend_upload(ps->be, ps->err, err, ps->n_params * sizeof(float)));
    else TRY(backend_zero(ps->be, ps->err, ps->n_params * sizeof(float)));
    for (int k = 0; k < ps->n_buckets; k++) ps->b[k].q_ready = 1;
    return ST_OK;
}
