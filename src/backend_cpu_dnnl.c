// backend_cpu_dnnl.c — oneDNN convolutions for the CPU backend, one batch slice per pool thread (see the header).
#include "backend_cpu_dnnl.h"

#include "common.h"

#ifndef DDP_HAVE_DNNL

int conv_dnnl_available(void) { return 0; }
int conv_dnnl_create(conv_dnnl **out, int threads) {
    (void)threads;
    *out = NULL;
    return ERR(ST_RUNTIME, "cpu backend: built without oneDNN (TRAINER_DNNL=OFF or libdnnl-dev not installed)");
}
void conv_dnnl_destroy(conv_dnnl *e) { (void)e; }
int conv_dnnl_plan_create(conv_dnnl *e, const conv_desc *d, int parts, conv_dnnl_plan **out, size_t *ws_per_part) {
    (void)e, (void)d, (void)parts, (void)ws_per_part;
    *out = NULL;
    return ERR(ST_RUNTIME, "cpu backend: built without oneDNN");
}
void conv_dnnl_plan_destroy(conv_dnnl_plan *p) { (void)p; }
int conv_dnnl_plan_parts(const conv_dnnl_plan *p) { (void)p; return 0; }
size_t conv_dnnl_plan_ws(const conv_dnnl_plan *p) { (void)p; return 0; }
int conv_dnnl_forward(conv_dnnl *e, const conv_dnnl_plan *p, int part, const float *x, const float *w,
                      const float *b, float *y, void *ws) {
    (void)e, (void)p, (void)part, (void)x, (void)w, (void)b, (void)y, (void)ws;
    return ERR(ST_RUNTIME, "cpu backend: built without oneDNN");
}
int conv_dnnl_backward(conv_dnnl *e, const conv_dnnl_plan *p, int part, const float *x, const float *w,
                       const float *dz, float *dx, float *dw, float *db, void *ws) {
    (void)e, (void)p, (void)part, (void)x, (void)w, (void)dz, (void)dx, (void)dw, (void)db, (void)ws;
    return ERR(ST_RUNTIME, "cpu backend: built without oneDNN");
}

#else

#include <dnnl.h>
#include <stdlib.h>
#include <string.h>

// libgomp's, which libdnnl (Debian's build: OpenMP threading) loads: the thread count oneDNN sees in this thread.
extern void omp_set_num_threads(int n);

#define N_OF(a) ((int)(sizeof(a) / sizeof((a)[0])))

#define DN(call)                                                                                           \
    do {                                                                                                   \
        dnnl_status_t dn_st_ = (call);                                                                     \
        if (dn_st_ != dnnl_success) return ERR(ST_RUNTIME, "oneDNN: %s failed (status %d)", #call, (int)dn_st_); \
    } while (0)

#define ALIGN64(n) (((size_t)(n) + 63) & ~(size_t)63)

// ---------------------------------------------------------------------------------------------------------
// Plan: user tensors, staging slots, primitives

// The user's tensors of one call, in plain layouts (NCHW, OIHW, a).
enum { T_X, T_W, T_B, T_Y, T_DZ, T_DX, T_DW, T_DB, T_COUNT };

#define MAX_SLOTS 8
#define MAX_ARGS 6

typedef struct dn_arg {
    int arg;          // DNNL_ARG_*
    int t;            // user tensor T_*
    int out;          // written by the primitive
    int slot;         // -1: the primitive uses the user memory; else its staging slot
    int staged;       // input sharing the slot of an earlier primitive's input (same tensor, same format)
    dnnl_primitive_t reorder;  // user -> slot (inputs) or slot -> user (outputs); NULL when slot is -1
} dn_arg;

typedef struct dn_op {
    dnnl_primitive_t prim;
    int nargs;
    dn_arg a[MAX_ARGS];
} dn_op;

enum { OP_FWD, OP_BWD_DATA, OP_BWD_WEIGHTS, OP_COUNT };

// The primitives for slices of n images; memory objects per part (a part's calls never run concurrently).
typedef struct dn_shape {
    int n;
    dnnl_memory_desc_t user_md[T_COUNT];
    dnnl_memory_desc_t slot_md[MAX_SLOTS];
    int slot_tensor[MAX_SLOTS];
    int slot_op[MAX_SLOTS];      // the primitive that made it
    size_t slot_off[MAX_SLOTS];  // bytes into the part's workspace
    int nslots;
    dn_op op[OP_COUNT];
    dnnl_memory_t *mem;          // per part: T_COUNT user memories, then nslots slot memories, then scratchpad
} dn_shape;

struct conv_dnnl {
    int threads;
    dnnl_engine_t engine;
    dnnl_stream_t *streams;  // one per pool thread
};

struct conv_dnnl_plan {
    conv_desc d;
    int parts;
    dn_shape shape[2];       // slices of n / parts and n / parts + 1 images
    int nshapes;
    size_t scratch_off, zero_off, dbias_off, ws_per_part;  // bytes into each part's workspace
    dnnl_memory_desc_t scratch_md;
};

int conv_dnnl_available(void) { return 1; }

int conv_dnnl_create(conv_dnnl **out, int threads) {
    *out = NULL;
    conv_dnnl *e = calloc(1, sizeof *e);
    TRY_ALLOC(e);
    e->threads = threads;
    e->streams = calloc((size_t)threads, sizeof *e->streams);
    int st = ST_OK;
    if (!e->streams) st = ERR(ST_RUNTIME, "out of host memory for oneDNN streams");
    if (st == ST_OK && dnnl_engine_create(&e->engine, dnnl_cpu, 0) != dnnl_success)
        st = ERR(ST_RUNTIME, "oneDNN: cannot create the CPU engine");
    for (int i = 0; st == ST_OK && i < threads; i++)
        if (dnnl_stream_create(&e->streams[i], e->engine, dnnl_stream_default_flags) != dnnl_success)
            st = ERR(ST_RUNTIME, "oneDNN: cannot create stream %d", i);
    if (st != ST_OK) {
        conv_dnnl_destroy(e);
        return st;
    }
    *out = e;
    return ST_OK;
}

void conv_dnnl_destroy(conv_dnnl *e) {
    if (!e) return;
    for (int i = 0; e->streams && i < e->threads; i++)
        if (e->streams[i]) dnnl_stream_destroy(e->streams[i]);
    free(e->streams);
    if (e->engine) dnnl_engine_destroy(e->engine);
    free(e);
}

static void shape_destroy(dn_shape *s, int parts) {
    for (int o = 0; o < OP_COUNT; o++) {
        if (s->op[o].prim) dnnl_primitive_destroy(s->op[o].prim);
        for (int i = 0; i < s->op[o].nargs; i++)
            if (s->op[o].a[i].reorder) dnnl_primitive_destroy(s->op[o].a[i].reorder);
    }
    if (s->mem) {
        int per = T_COUNT + s->nslots + 1;
        for (int i = 0; i < per * parts; i++)
            if (s->mem[i]) dnnl_memory_destroy(s->mem[i]);
        free(s->mem);
    }
    memset(s, 0, sizeof *s);
}

void conv_dnnl_plan_destroy(conv_dnnl_plan *p) {
    if (!p) return;
    for (int i = 0; i < p->nshapes; i++) shape_destroy(&p->shape[i], p->parts);
    free(p);
}

int conv_dnnl_plan_parts(const conv_dnnl_plan *p) { return p->parts; }
size_t conv_dnnl_plan_ws(const conv_dnnl_plan *p) { return p->ws_per_part; }

static int attr_user_scratchpad(dnnl_primitive_attr_t *attr, int act) {
    DN(dnnl_primitive_attr_create(attr));
    dnnl_status_t st = dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user);
    if (st == dnnl_success && act != ACT_NONE) {
        dnnl_post_ops_t po;
        st = dnnl_post_ops_create(&po);
        if (st == dnnl_success) {
            // relu6 = clip to [0, 6]; sigmoid = logistic (act_from_output: conv_desc_init refused the others)
            const dnnl_alg_kind_t alg = act == ACT_RELU6     ? dnnl_eltwise_clip
                                        : act == ACT_SIGMOID ? dnnl_eltwise_logistic
                                                             : dnnl_eltwise_relu;
            st = dnnl_post_ops_append_eltwise(po, 1.0f, alg, act == ACT_LEAKY ? ACT_LEAKY_SLOPE : 0.0f,
                                              act == ACT_RELU6 ? 6.0f : 0.0f);
            if (st == dnnl_success) st = dnnl_primitive_attr_set_post_ops(*attr, po);
            dnnl_post_ops_destroy(po);
        }
    }
    if (st != dnnl_success) {
        dnnl_primitive_attr_destroy(*attr);
        return ERR(ST_RUNTIME, "oneDNN: scratchpad and activation attributes (status %d)", (int)st);
    }
    return ST_OK;
}

// Grow the scratchpad to hold pd's.
static void scratch_need(const_dnnl_primitive_desc_t pd, size_t *bytes) {
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    size_t b = md ? dnnl_memory_desc_get_size(md) : 0;
    if (b > *bytes) *bytes = b;
}

// Add argument `arg` (user tensor t, the primitive's md `want`) to op; stages it in a slot when the formats
// differ. An input of backward weights shares backward data's slot of the same tensor and format.
static int op_add_arg(conv_dnnl *e, dn_shape *s, dn_op *op, int arg, int t, int out, const dnnl_memory_desc_t *want,
                      size_t *ws_bytes, size_t *scratch_bytes) {
    const int op_index = (int)(op - s->op);
    dn_arg *a = &op->a[op->nargs++];
    memset(a, 0, sizeof *a);
    a->arg = arg, a->t = t, a->out = out, a->slot = -1;
    if (dnnl_memory_desc_equal(want, &s->user_md[t])) return ST_OK;
    for (int i = 0; i < s->nslots && !out && op_index == OP_BWD_WEIGHTS; i++)
        if (s->slot_op[i] == OP_BWD_DATA && s->slot_tensor[i] == t && dnnl_memory_desc_equal(want, &s->slot_md[i]))
            a->slot = i, a->staged = 1;
    if (!a->staged) {
        if (s->nslots == MAX_SLOTS) return ERR(ST_RUNTIME, "oneDNN conv: too many staging buffers");
        a->slot = s->nslots++;
        s->slot_md[a->slot] = *want;
        s->slot_tensor[a->slot] = t;
        s->slot_op[a->slot] = op_index;
        s->slot_off[a->slot] = *ws_bytes;
        *ws_bytes += ALIGN64(dnnl_memory_desc_get_size(want));
    }
    dnnl_primitive_attr_t attr;
    DN(dnnl_primitive_attr_create(&attr));
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t st = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
    if (st == dnnl_success)
        st = out ? dnnl_reorder_primitive_desc_create(&pd, want, e->engine, &s->user_md[t], e->engine, attr)
                 : dnnl_reorder_primitive_desc_create(&pd, &s->user_md[t], e->engine, want, e->engine, attr);
    dnnl_primitive_attr_destroy(attr);
    DN(st);
    scratch_need(pd, scratch_bytes);
    st = dnnl_primitive_create(&a->reorder, pd);
    dnnl_primitive_desc_destroy(pd);
    DN(st);
    return ST_OK;
}

static int op_finish(dn_op *op, const_dnnl_primitive_desc_t pd, size_t *scratch_bytes) {
    scratch_need(pd, scratch_bytes);
    DN(dnnl_primitive_create(&op->prim, pd));
    return ST_OK;
}

static const dnnl_memory_desc_t *q(const_dnnl_primitive_desc_t pd, dnnl_query_t what) {
    return dnnl_primitive_desc_query_md(pd, what, 0);
}

// A convolution primitive descriptor (cd: forward, backward data or backward weights) with a user scratchpad
// and, when act != ACT_NONE, the activation fused; hint: the forward one, for the backward ones.
static int pd_create(conv_dnnl *e, dnnl_primitive_desc_t *pd, const dnnl_convolution_desc_t *cd, int act,
                     const_dnnl_primitive_desc_t hint, const char *what) {
    dnnl_primitive_attr_t attr;
    *pd = NULL;
    TRY(attr_user_scratchpad(&attr, act));
    dnnl_status_t st = dnnl_primitive_desc_create(pd, cd, attr, e->engine, hint);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success) return ERR(ST_RUNTIME, "oneDNN: convolution %s primitive (status %d)", what, (int)st);
    return ST_OK;
}

typedef struct arg_spec {
    int arg, t, out;   // the primitive's argument, our tensor, 1 when the primitive writes it
    dnnl_query_t want; // the primitive's layout for it, or dnnl_query_undef: ours
} arg_spec;

// op's arguments (staged where the layouts differ) and its primitive.
static int op_build(conv_dnnl *e, dn_shape *s, dn_op *op, const_dnnl_primitive_desc_t pd, const arg_spec *args,
                    int n, size_t *ws_bytes, size_t *scratch_bytes) {
    for (int i = 0; i < n; i++) {
        const dnnl_memory_desc_t *md = args[i].want == dnnl_query_undef ? &s->user_md[args[i].t] : q(pd, args[i].want);
        TRY(op_add_arg(e, s, op, args[i].arg, args[i].t, args[i].out, md, ws_bytes, scratch_bytes));
    }
    return op_finish(op, pd, scratch_bytes);
}

// The three primitives for slices of n images; *ws_bytes grows by the staging slots.
static int shape_build(conv_dnnl *e, const conv_desc *d, dn_shape *s, int n, size_t *ws_bytes,
                       size_t *scratch_bytes) {
    s->n = n;
    dnnl_dims_t x_dims = {n, d->c, d->h, d->w}, y_dims = {n, d->k, d->oh, d->ow}, b_dims = {d->k};
    // Grouped: weights [G, K/G, C/G, R, S] (goihw), the same bytes as our [K, C/G, R, S]. oneDNN counts the
    // dilation from 0 (the taps' gap), PyTorch and we from 1 (their spacing).
    const int g = d->groups, wn = g > 1 ? 5 : 4;
    dnnl_dims_t w_dims = {d->k, d->c, d->r, d->s}, w_dims_g = {g, d->k / g, d->c / g, d->r, d->s};
    dnnl_dims_t strides = {d->stride, d->stride}, pad = {d->pad, d->pad};
    dnnl_dims_t dilates = {d->dilation - 1, d->dilation - 1};
    dnnl_dim_t *wd = g > 1 ? w_dims_g : w_dims;
    DN(dnnl_memory_desc_init_by_tag(&s->user_md[T_X], 4, x_dims, dnnl_f32, dnnl_nchw));
    DN(dnnl_memory_desc_init_by_tag(&s->user_md[T_W], wn, wd, dnnl_f32, g > 1 ? dnnl_goihw : dnnl_oihw));
    DN(dnnl_memory_desc_init_by_tag(&s->user_md[T_B], 1, b_dims, dnnl_f32, dnnl_a));
    DN(dnnl_memory_desc_init_by_tag(&s->user_md[T_Y], 4, y_dims, dnnl_f32, dnnl_nchw));
    s->user_md[T_DZ] = s->user_md[T_Y];
    s->user_md[T_DX] = s->user_md[T_X];
    s->user_md[T_DW] = s->user_md[T_W];
    s->user_md[T_DB] = s->user_md[T_B];
    dnnl_memory_desc_t x_any, w_any, y_any;
    DN(dnnl_memory_desc_init_by_tag(&x_any, 4, x_dims, dnnl_f32, dnnl_format_tag_any));
    DN(dnnl_memory_desc_init_by_tag(&w_any, wn, wd, dnnl_f32, dnnl_format_tag_any));
    DN(dnnl_memory_desc_init_by_tag(&y_any, 4, y_dims, dnnl_f32, dnnl_format_tag_any));

    // Forward (training), bias and activation fused; backward data, whose slots backward weights reuses where
    // the formats agree (dz, mostly); backward weights and bias. Each arg_spec: which user tensor goes to which
    // primitive argument, in the primitive's layout (query) or ours (dnnl_query_undef).
    static const arg_spec fwd[] = {{DNNL_ARG_SRC, T_X, 0, dnnl_query_src_md},
                                   {DNNL_ARG_WEIGHTS, T_W, 0, dnnl_query_weights_md},
                                   {DNNL_ARG_BIAS, T_B, 0, dnnl_query_undef},
                                   {DNNL_ARG_DST, T_Y, 1, dnnl_query_dst_md}};
    static const arg_spec bwd_data[] = {{DNNL_ARG_DIFF_DST, T_DZ, 0, dnnl_query_diff_dst_md},
                                        {DNNL_ARG_WEIGHTS, T_W, 0, dnnl_query_weights_md},
                                        {DNNL_ARG_DIFF_SRC, T_DX, 1, dnnl_query_diff_src_md}};
    static const arg_spec bwd_weights[] = {{DNNL_ARG_DIFF_DST, T_DZ, 0, dnnl_query_diff_dst_md},
                                           {DNNL_ARG_SRC, T_X, 0, dnnl_query_src_md},
                                           {DNNL_ARG_DIFF_WEIGHTS, T_DW, 1, dnnl_query_diff_weights_md},
                                           {DNNL_ARG_DIFF_BIAS, T_DB, 1, dnnl_query_undef}};
    dnnl_convolution_desc_t cd;
    dnnl_primitive_desc_t fwd_pd = NULL, bd_pd = NULL, bw_pd = NULL;
    DN(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training, dnnl_convolution_direct, &x_any, &w_any,
                                                  &s->user_md[T_B], &y_any, strides, dilates, pad, pad));
    int st = pd_create(e, &fwd_pd, &cd, d->act, NULL, "forward");
    if (st == ST_OK) st = op_build(e, s, &s->op[OP_FWD], fwd_pd, fwd, N_OF(fwd), ws_bytes, scratch_bytes);
    if (st == ST_OK && dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &x_any, &w_any,
                                                                        &y_any, strides, dilates, pad,
                                                                        pad) != dnnl_success)
        st = ERR(ST_RUNTIME, "oneDNN: convolution backward data desc");
    if (st == ST_OK) st = pd_create(e, &bd_pd, &cd, ACT_NONE, fwd_pd, "backward data");
    if (st == ST_OK)
        st = op_build(e, s, &s->op[OP_BWD_DATA], bd_pd, bwd_data, N_OF(bwd_data), ws_bytes, scratch_bytes);
    if (st == ST_OK && dnnl_dilated_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &x_any,
                                                                           &w_any, &s->user_md[T_DB], &y_any,
                                                                           strides, dilates, pad,
                                                                           pad) != dnnl_success)
        st = ERR(ST_RUNTIME, "oneDNN: convolution backward weights desc");
    if (st == ST_OK) st = pd_create(e, &bw_pd, &cd, ACT_NONE, fwd_pd, "backward weights");
    if (st == ST_OK)
        st = op_build(e, s, &s->op[OP_BWD_WEIGHTS], bw_pd, bwd_weights, N_OF(bwd_weights), ws_bytes,
                      scratch_bytes);
    if (fwd_pd) dnnl_primitive_desc_destroy(fwd_pd);
    if (bd_pd) dnnl_primitive_desc_destroy(bd_pd);
    if (bw_pd) dnnl_primitive_desc_destroy(bw_pd);
    return st;
}

static int shape_memories(conv_dnnl *e, dn_shape *s, int parts, const dnnl_memory_desc_t *scratch_md) {
    int per = T_COUNT + s->nslots + 1;
    s->mem = calloc((size_t)per * parts, sizeof *s->mem);
    TRY_ALLOC(s->mem);
    for (int p = 0; p < parts; p++) {
        dnnl_memory_t *m = s->mem + (size_t)per * p;
        for (int t = 0; t < T_COUNT; t++) DN(dnnl_memory_create(&m[t], &s->user_md[t], e->engine, DNNL_MEMORY_NONE));
        for (int i = 0; i < s->nslots; i++)
            DN(dnnl_memory_create(&m[T_COUNT + i], &s->slot_md[i], e->engine, DNNL_MEMORY_NONE));
        DN(dnnl_memory_create(&m[T_COUNT + s->nslots], scratch_md, e->engine, DNNL_MEMORY_NONE));
    }
    return ST_OK;
}

int conv_dnnl_plan_create(conv_dnnl *e, const conv_desc *d, int parts, conv_dnnl_plan **out, size_t *ws_per_part) {
    *out = NULL;
    if (parts < 1 || parts > d->n || parts > e->threads)
        return ERR(ST_INPUT, "oneDNN conv: %d parts for %d images and %d threads", parts, d->n, e->threads);
    conv_dnnl_plan *p = calloc(1, sizeof *p);
    TRY_ALLOC(p);
    p->d = *d;
    p->parts = parts;
    omp_set_num_threads(1);  // the kernels are chosen for the threads they will run on: one per slice
    size_t ws = 0, scratch = 0;
    int sizes[2] = {d->n / parts, d->n / parts + 1};
    int st = ST_OK;
    for (int i = 0; i < 2 && st == ST_OK; i++) {
        if (i == 1 && d->n % parts == 0) break;
        // The two shapes' slots never live at once (a call runs one shape): both start at 0; the larger wins.
        size_t slots = 0;
        st = shape_build(e, d, &p->shape[i], sizes[i], &slots, &scratch);
        p->nshapes = i + 1;
        if (slots > ws) ws = slots;
    }
    if (st == ST_OK) {
        p->scratch_off = ws;
        ws += ALIGN64(scratch);
        p->zero_off = ws;
        ws += ALIGN64(sizeof(float) * (size_t)d->k);
        p->dbias_off = ws;
        ws += ALIGN64(sizeof(float) * (size_t)d->k);
        p->ws_per_part = ws;
        dnnl_dims_t sd = {(dnnl_dim_t)(scratch ? scratch : 1)};
        if (dnnl_memory_desc_init_by_tag(&p->scratch_md, 1, sd, dnnl_u8, dnnl_a) != dnnl_success)
            st = ERR(ST_RUNTIME, "oneDNN: scratchpad memory descriptor");
    }
    for (int i = 0; i < p->nshapes && st == ST_OK; i++) st = shape_memories(e, &p->shape[i], parts, &p->scratch_md);
    if (st != ST_OK) {
        conv_dnnl_plan_destroy(p);
        return st;
    }
    *ws_per_part = p->ws_per_part;
    *out = p;
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Execution

// skip_staged: the inputs shared with an earlier primitive of this call are in their slots already.
static int op_run(conv_dnnl *e, const dn_shape *s, const dn_op *op, int part, int skip_staged) {
    dnnl_stream_t strm = e->streams[part];
    dnnl_memory_t *m = s->mem + (size_t)(T_COUNT + s->nslots + 1) * part;
    dnnl_memory_t scratch = m[T_COUNT + s->nslots];
    dnnl_exec_arg_t args[MAX_ARGS + 1];
    for (int i = 0; i < op->nargs; i++) {
        const dn_arg *a = &op->a[i];
        args[i].arg = a->arg;
        args[i].memory = a->slot < 0 ? m[a->t] : m[T_COUNT + a->slot];
        if (a->reorder && !a->out && !(a->staged && skip_staged)) {
            dnnl_exec_arg_t r[3] = {{DNNL_ARG_FROM, m[a->t]}, {DNNL_ARG_TO, m[T_COUNT + a->slot]},
                                    {DNNL_ARG_SCRATCHPAD, scratch}};
            DN(dnnl_primitive_execute(a->reorder, strm, 3, r));
        }
    }
    args[op->nargs].arg = DNNL_ARG_SCRATCHPAD;
    args[op->nargs].memory = scratch;
    DN(dnnl_primitive_execute(op->prim, strm, op->nargs + 1, args));
    for (int i = 0; i < op->nargs; i++) {
        const dn_arg *a = &op->a[i];
        if (a->reorder && a->out) {
            dnnl_exec_arg_t r[3] = {{DNNL_ARG_FROM, m[T_COUNT + a->slot]}, {DNNL_ARG_TO, m[a->t]},
                                    {DNNL_ARG_SCRATCHPAD, scratch}};
            DN(dnnl_primitive_execute(a->reorder, strm, 3, r));
        }
    }
    return ST_OK;
}

// Bind this part's memories: user tensors (NULL pointers stay unbound), slots and scratchpad in ws.
static int bind(const conv_dnnl_plan *p, const dn_shape *s, int part, void *const user[T_COUNT], char *ws) {
    dnnl_memory_t *m = s->mem + (size_t)(T_COUNT + s->nslots + 1) * part;
    for (int t = 0; t < T_COUNT; t++)
        if (user[t]) DN(dnnl_memory_set_data_handle(m[t], user[t]));
    for (int i = 0; i < s->nslots; i++) DN(dnnl_memory_set_data_handle(m[T_COUNT + i], ws + s->slot_off[i]));
    DN(dnnl_memory_set_data_handle(m[T_COUNT + s->nslots], ws + p->scratch_off));
    return ST_OK;
}

// The slice of `part` and its shape; *lo = its first image.
static const dn_shape *slice(const conv_dnnl_plan *p, int part, int64_t *lo) {
    int64_t n = p->d.n;
    *lo = n * part / p->parts;
    int64_t hi = n * (part + 1) / p->parts;
    for (int i = 0; i < p->nshapes; i++)
        if (p->shape[i].n == hi - *lo) return &p->shape[i];
    return NULL;
}

int conv_dnnl_forward(conv_dnnl *e, const conv_dnnl_plan *p, int part, const float *x, const float *w,
                      const float *b, float *y, void *ws) {
    int64_t lo;
    const dn_shape *s = slice(p, part, &lo);
    if (!s) return ERR(ST_RUNTIME, "oneDNN conv: no primitive for part %d", part);
    omp_set_num_threads(1);
    const conv_desc *d = &p->d;
    char *wsc = ws;
    if (!b) {
        memset(wsc + p->zero_off, 0, sizeof(float) * (size_t)d->k);
        b = (const float *)(wsc + p->zero_off);
    }
    void *user[T_COUNT] = {0};
    user[T_X] = (void *)(x + (size_t)lo * d->c * d->h * d->w);
    user[T_W] = (void *)w;
    user[T_B] = (void *)b;
    user[T_Y] = y + (size_t)lo * d->k * d->oh * d->ow;
    TRY(bind(p, s, part, user, wsc));
    TRY(op_run(e, s, &s->op[OP_FWD], part, 0));
    DN(dnnl_stream_wait(e->streams[part]));
    return ST_OK;
}

int conv_dnnl_backward(conv_dnnl *e, const conv_dnnl_plan *p, int part, const float *x, const float *w,
                       const float *dz, float *dx, float *dw, float *db, void *ws) {
    int64_t lo;
    const dn_shape *s = slice(p, part, &lo);
    if (!s) return ERR(ST_RUNTIME, "oneDNN conv: no primitive for part %d", part);
    omp_set_num_threads(1);
    const conv_desc *d = &p->d;
    char *wsc = ws;
    if (!db) db = (float *)(wsc + p->dbias_off);
    void *user[T_COUNT] = {0};
    user[T_X] = (void *)(x + (size_t)lo * d->c * d->h * d->w);
    user[T_W] = (void *)w;
    user[T_DZ] = (void *)(dz + (size_t)lo * d->k * d->oh * d->ow);
    user[T_DX] = dx ? dx + (size_t)lo * d->c * d->h * d->w : NULL;
    user[T_DW] = dw;
    user[T_DB] = db;
    TRY(bind(p, s, part, user, wsc));
    // Backward data first when it runs: backward weights may reuse its staged dz.
    if (dx) TRY(op_run(e, s, &s->op[OP_BWD_DATA], part, 0));
    // Backward weights reads dz from backward data's staging slot when the formats agree and that ran.
    TRY(op_run(e, s, &s->op[OP_BWD_WEIGHTS], part, dx != NULL));
    DN(dnnl_stream_wait(e->streams[part]));
    return ST_OK;
}

#endif
