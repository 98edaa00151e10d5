// test_precision.c — net.precision's CPU emulation (docs/precision.md): the bf16 and fp16 rounding against exact
// bit patterns and against independent references (a two-candidate nearest search; the compiler's _Float16), the
// CPU backend's round_to op, every layer kind's gradients under bf16 and fp16 emulation against central finite
// differences (of the fp32 network: the emulated function is piecewise constant in steps of the format's ulp, so
// its own differences would measure the rounding, not the derivative), where the rule holds values in the compute
// type, the loss scale's exactness, and the loss scaler's schedule, unscale and skip.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "common.h"
#include "config.h"
#include "layer.h"
#include "loss_scale.h"
#include "model.h"
#include "precision.h"
#include "test_util.h"

#define BATCH 4

static float f_of(uint32_t u) { return precision_from_bits(u); }

// ---------------------------------------------------------------------------------------------------------
// Rounding: exact bit patterns

typedef struct case32 {
    uint32_t in, want;
    const char *what;
} case32;

static void check_cases(const char *fmt, float (*round)(float), const case32 *c, int n) {
    for (int i = 0; i < n; i++) {
        const uint32_t got = precision_bits(round(f_of(c[i].in)));
        if (got != c[i].want)
            fail_msg("%s(0x%08x) %s: got 0x%08x, want 0x%08x", fmt, c[i].in, c[i].what, got, c[i].want);
    }
}

static void test_bf16_bit_patterns(void **state) {
    (void)state;
    static const case32 c[] = {
        {0x3f800000, 0x3f800000, "1 stays"},
        {0x3f808000, 0x3f800000, "tie, even below"},
        {0x3f818000, 0x3f820000, "tie, odd below: up"},
        {0x3f808001, 0x3f810000, "past the tie: up"},
        {0x3f807fff, 0x3f800000, "below the tie: down"},
        {0xbf818000, 0xbf820000, "negative tie: away from zero to even"},
        {0x7f7f0000, 0x7f7f0000, "largest finite bf16 stays"},
        {0x7f7f7fff, 0x7f7f0000, "just below the overflow midpoint"},
        {0x7f7f8000, 0x7f800000, "the midpoint past the largest: +Inf"},
        {0x7f7fffff, 0x7f800000, "FLT_MAX: +Inf"},
        {0xff7f8000, 0xff800000, "-Inf"},
        {0x7f800000, 0x7f800000, "+Inf stays"},
        {0xff800000, 0xff800000, "-Inf stays"},
        {0x7fc00001, 0x7fc00000, "quiet NaN, payload cut"},
        {0x7f800001, 0x7fc00000, "signalling NaN: a quiet NaN, not Inf"},
        {0xffc12345, 0xffc10000, "negative NaN keeps its sign"},
        {0x00000000, 0x00000000, "+0"},
        {0x80000000, 0x80000000, "-0"},
        {0x00000001, 0x00000000, "smallest subnormal: 0"},
        {0x00008000, 0x00000000, "subnormal tie, even below"},
        {0x00018000, 0x00020000, "subnormal tie, odd below: up"},
        {0x007fffff, 0x00800000, "largest subnormal: up to FLT_MIN"},
        {0x80018000, 0x80020000, "negative subnormal tie"},
    };
    check_cases("bf16", precision_round_bf16, c, (int)(sizeof c / sizeof c[0]));
}

static void test_fp16_bit_patterns(void **state) {
    (void)state;
    static const case32 c[] = {
        {0x3f800000, 0x3f800000, "1 stays"},
        {0x3f801000, 0x3f800000, "1 + 2^-11: tie, even below"},
        {0x3f803000, 0x3f804000, "1 + 3 2^-11: tie, odd below: up"},
        {0x3f801001, 0x3f802000, "past the tie: up"},
        {0x477fe000, 0x477fe000, "65504, the largest finite, stays"},
        {0x477fefff, 0x477fe000, "65519.99: 65504"},
        {0x477ff000, 0x7f800000, "65520, the midpoint past 65504: +Inf"},
        {0x47800000, 0x7f800000, "65536: +Inf"},
        {0xc77ff000, 0xff800000, "-65520: -Inf"},
        {0x7f7fffff, 0x7f800000, "FLT_MAX: +Inf"},
        {0x7f800000, 0x7f800000, "+Inf stays"},
        {0xff800000, 0xff800000, "-Inf stays"},
        {0x7fc00001, 0x7fc00000, "NaN payload cut (below fp16's 10 bits)"},
        {0x7f800001, 0x7fc00000, "signalling NaN: a quiet NaN, not Inf"},
        {0x38800000, 0x38800000, "2^-14, the smallest normal, stays"},
        {0x387fffff, 0x38800000, "just below 2^-14: up to it"},
        {0x38000000, 0x38000000, "2^-15, a subnormal, stays"},
        {0x33800000, 0x33800000, "2^-24, the smallest subnormal, stays"},
        {0x33000000, 0x00000000, "2^-25: tie, to the even 0"},
        {0x33000001, 0x33800000, "just past 2^-25: 2^-24"},
        {0x33c00000, 0x34000000, "3 2^-25: tie between 2^-24 (odd) and 2^-23 (even)"},
        {0x34200000, 0x34000000, "5 2^-25: tie between 2^-23 (even) and 3 2^-24"},
        {0xb2800000, 0x80000000, "-2^-26: -0"},
        {0x00000001, 0x00000000, "fp32 subnormal: 0"},
        {0x80000000, 0x80000000, "-0"},
    };
    check_cases("fp16", precision_round_fp16, c, (int)(sizeof c / sizeof c[0]));
}

// ---------------------------------------------------------------------------------------------------------
// Rounding: independent references over a sweep of all 2^32 bit patterns

// The nearest bf16 of x by search: the two bf16 values around it (truncation and the next one up), the nearer in
// double, the even one on a tie. NaN and Inf as documented.
static uint32_t ref_bf16(uint32_t u) {
    const float x = f_of(u);
    if (isnan(x)) return (u | 0x00400000u) & 0xffff0000u;
    if (isinf(x)) return u;
    const uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;  // |hi| > |lo| (hi may be Inf: the overflow case)
    // Past the largest finite bf16 the next value up would be 2^128 (with an unbounded exponent): IEEE's overflow
    // rule rounds to Inf from half an ulp past the largest, so hi stands for 2^128 there.
    const double hv = (hi & 0x7fffffffu) == 0x7f800000u ? copysign(0x1p128, (double)x) : (double)f_of(hi);
    const double dl = fabs((double)x - f_of(lo)), dh = fabs(hv - x);
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo >> 16) & 1u ? hi : lo;
}

static void test_bf16_against_reference(void **state) {
    (void)state;
    long long checked = 0;
    for (uint64_t k = 0; k < (1ull << 32); k += 509) {  // every 509th pattern: all exponents, signs and low bits
        const uint32_t u = (uint32_t)k, got = precision_bits(precision_round_bf16(f_of(u))), want = ref_bf16(u);
        if (got != want) fail_msg("bf16(0x%08x): got 0x%08x, reference 0x%08x", u, got, want);
        checked++;
    }
    print_message("bf16: %lld bit patterns agree with the nearest-candidate reference\n", checked);
}

static void test_fp16_against_compiler(void **state) {
    (void)state;
#ifdef __FLT16_MAX__
    long long checked = 0;
    for (uint64_t k = 0; k < (1ull << 32); k += 509) {
        const uint32_t u = (uint32_t)k;
        const float x = f_of(u), got = precision_round_fp16(x);
        const volatile _Float16 h = (_Float16)x;  // the compiler's IEEE conversion (round to nearest even)
        const float want = (float)h;
        if (isnan(want) ? !isnan(got) : precision_bits(got) != precision_bits(want))
            fail_msg("fp16(0x%08x = %a): got %a, _Float16 gives %a", u, (double)x, (double)got, (double)want);
        checked++;
    }
    print_message("fp16: %lld bit patterns agree with the compiler's _Float16\n", checked);
#else
    skip();
#endif
}

static float round_fmt(int fmt, float v) { return fmt == PREC_BF16 ? precision_round_bf16(v) : precision_round_fp16(v); }

// 16-bit storage: every one of the 2^16 patterns of each format decodes exactly and encodes back to itself (a NaN
// to a quiet NaN of the same sign); precision_to16 is the rounding's bits over the sweep (fp16: the compiler's
// _Float16 bits too).
static void test_16bit_encoding(void **state) {
    (void)state;
    for (int fmt = PREC_BF16; fmt <= PREC_FP16; fmt++) {
        const uint16_t quiet = fmt == PREC_BF16 ? 0x0040u : 0x0200u, exp_mask = fmt == PREC_BF16 ? 0x7f80u : 0x7c00u;
        for (uint32_t h = 0; h < 65536; h++) {
            const float v = precision_from16(fmt, (uint16_t)h);
            const uint16_t back = precision_to16(fmt, v);
            const int is_nan = (h & exp_mask) == exp_mask && (h & (exp_mask ^ 0x7fffu));
            if (is_nan ? !(isnan(v) && back == (h | quiet)) : back != h)
                fail_msg("%s 0x%04x: decodes to %a, encodes back to 0x%04x", precision_name(fmt), h, (double)v, back);
            if (!is_nan && precision_bits(v) != precision_bits(round_fmt(fmt, v)))
                fail_msg("%s 0x%04x decodes to %a, not a value of the format", precision_name(fmt), h, (double)v);
        }
    }
    long long checked = 0;
    for (uint64_t k = 0; k < (1ull << 32); k += 4099) {
        const float x = f_of((uint32_t)k);
        for (int fmt = PREC_BF16; fmt <= PREC_FP16; fmt++) {
            const float r = round_fmt(fmt, x), back = precision_from16(fmt, precision_to16(fmt, x));
            if (isnan(x) ? !isnan(back) : precision_bits(back) != precision_bits(r))
                fail_msg("%s: 0x%08x stored and loaded gives %a, the rounding %a", precision_name(fmt), (uint32_t)k,
                         (double)back, (double)r);
        }
#ifdef __FLT16_MAX__
        const volatile _Float16 h = (_Float16)x;
        uint16_t hb;
        memcpy(&hb, (const void *)&h, sizeof hb);
        if (!isnan(x) && precision_to16(PREC_FP16, x) != hb)
            fail_msg("fp16 bits of %a: 0x%04x, _Float16 0x%04x", (double)x, precision_to16(PREC_FP16, x), hb);
#endif
        checked++;
    }
    print_message("16-bit storage: all 2^16 patterns of bf16 and fp16 round-trip; %lld float patterns stored as "
                  "their rounding\n", checked);
}

// The CPU backend's op (split over its threads) is the inline rounding, value for value; y may be x.
static void test_backend_round_to(void **state) {
    (void)state;
    backend be;
    assert_int_equal(backend_create(&be, "cpu", &(backend_options){.threads = 2}), ST_OK);
    const size_t n = 300001;
    float *x = NULL, *y = NULL;
    assert_int_equal(backend_alloc(&be, (void **)&x, n * sizeof(float)), ST_OK);
    assert_int_equal(backend_alloc(&be, (void **)&y, n * sizeof(float)), ST_OK);
    rng r;
    rng_seed(&r, 3);
    for (int fmt = PREC_BF16; fmt <= PREC_FP16; fmt++) {
        for (size_t i = 0; i < n; i++) x[i] = f_of((uint32_t)(rng_u64(&r) >> 32));
        assert_int_equal(backend_round_to(&be, n, fmt, x, y), ST_OK);
        for (size_t i = 0; i < n; i++) {
            const float want = fmt == PREC_BF16 ? precision_round_bf16(x[i]) : precision_round_fp16(x[i]);
            if (precision_bits(y[i]) != precision_bits(want)) fail_msg("round_to %d [%zu]", fmt, i);
        }
        assert_int_equal(backend_round_to(&be, n, fmt, x, x), ST_OK);
        assert_memory_equal(x, y, n * sizeof(float));
    }
    assert_int_equal(backend_round_to(&be, n, PREC_TF32, x, y), ST_RUNTIME);  // no such emulation
    backend_free(&be, x);
    backend_free(&be, y);
    backend_destroy(&be);
}

// ---------------------------------------------------------------------------------------------------------
// Every layer kind under emulation

typedef struct net {
    backend be;
    model m;
    net_config cfg;
} net;

// The network input from r: float32, or the 16-bit bits of the rounded values where the buffer is 16-bit (an
// emulated forward rounds a float32 input in place, so both hold the same values).
static void net_input_values(net *t, rng *r) {
    for (int i = 0; i < BATCH * 2 * 36; i++) {
        const float v = 2.0f * rng_uniform(r) - 1.0f;
        if (t->m.act16) ((uint16_t *)t->m.x)[i] = precision_to16(t->m.act16, v);
        else ((float *)t->m.x)[i] = v;
    }
}

// act16: 0, or the format of 16-bit activation buffers (the CPU backend's act16, net.act_storage=compute)
static void net_open_store(net *t, const char *example, const char *what, int precision, int act16) {
    char text[4096];
    tu_layer_example_text(example, BATCH, text, sizeof text);
    int st = config_load_text(text, what, &t->cfg);
    t->cfg.precision = precision;
    if (st == ST_OK) st = config_validate(&t->cfg);
    if (st != ST_OK) fail_msg("%s: %s", what, err_msg());
    assert_int_equal(backend_create(&t->be, "cpu", &(backend_options){.threads = 1, .act16 = act16}), ST_OK);
    assert_int_equal(model_create(&t->m, &t->be, &t->cfg, BATCH), ST_OK);
    assert_int_equal((int)t->m.act_elem, act16 ? 2 : 4);
    assert_int_equal(model_init_params(&t->m, 11), ST_OK);
    rng r;
    rng_seed(&r, 5);
    for (size_t i = 0; i < t->m.n_params; i++) t->m.params[i] += 0.1f * (rng_uniform(&r) - 0.5f);
    net_input_values(t, &r);
    for (int i = 0; i < BATCH; i++) t->m.labels[i] = i % 3;
}

static void net_open(net *t, const char *example, const char *what, int precision) {
    net_open_store(t, example, what, precision, 0);
}

static void net_close(net *t) {
    model_destroy(&t->m);
    backend_destroy(&t->be);
}

// The network input again (an emulated forward rounds it in place).
static void net_input(net *t) {
    rng r;
    rng_seed(&r, 5);
    for (size_t i = 0; i < t->m.n_params; i++) (void)rng_uniform(&r);
    net_input_values(t, &r);
}

static double loss_of(net *t) {
    *t->m.loss_acc = 0;
    net_input(t);
    assert_int_equal(model_set_rng(&t->m, 1, 5), ST_OK);
    assert_int_equal(model_forward(&t->m, BATCH, 1), ST_OK);
    return *t->m.loss_acc / BATCH;
}

// Analytic gradients (malloc'd) after one training forward and backward.
static float *grads_of(net *t) {
    (void)loss_of(t);
    assert_int_equal(model_backward(&t->m, BATCH, NULL, NULL), ST_OK);
    float *g = malloc(t->m.n_params * sizeof(float));
    assert_non_null(g);
    memcpy(g, t->m.grads, t->m.n_params * sizeof(float));
    return g;
}

// Central differences of the fp32 network's loss.
static double *finite_differences(net *t) {
    double *fd = malloc(t->m.n_params * sizeof(double));
    assert_non_null(fd);
    const float eps = 1e-3f;
    for (size_t i = 0; i < t->m.n_params; i++) {
        const float p = t->m.params[i];
        t->m.params[i] = p + eps;
        const double lp = loss_of(t);
        t->m.params[i] = p - eps;
        const double lm = loss_of(t);
        t->m.params[i] = p;
        fd[i] = (lp - lm) / (2.0 * eps);
    }
    return fd;
}


// Where the rule holds values in the compute type, the last forward left them there: the outputs of the kinds
// that hold theirs, and the conv and dense weights of the copy the passes read (batch norm's: the master's, fp32).
static void check_held(const net *t, int fmt, const char *what) {
    const model *m = &t->m;
    for (int i = 0; i < m->n_layers; i++) {
        const model_layer *l = &m->layers[i];
        const unsigned rule = precision_layer_rule(l->type);
        if ((rule & PREC_HOLD_OUTPUT) && !(l->kind->flags & LAYER_TERMINAL)) {
            const size_t count = (size_t)BATCH * l->out_c * l->out_h * l->out_w;
            const float *y = l->y;
            for (size_t k = 0; k < count; k++)
                if (precision_bits(y[k]) != precision_bits(round_fmt(fmt, y[k])))
                    fail_msg("%s: layer %s output [%zu] = %a is not a %s value", what, l->name, k, (double)y[k],
                             precision_name(fmt));
        }
        for (size_t k = l->w_off; k < l->b_off + l->n_b; k++) {
            const float want = rule & PREC_HOLD_WEIGHTS ? round_fmt(fmt, m->params[k]) : m->params[k];
            if (precision_bits(m->params_lp[k]) != precision_bits(want))
                fail_msg("%s: layer %s weight copy [%zu] = %a, want %a", what, l->name, k, (double)m->params_lp[k],
                         (double)want);
        }
    }
}

// The same network with 16-bit activation buffers (the CPU backend's act16: each op stores its outputs rounded)
// against the emulation's float32 buffers rounded after each op (lp, whose gradients glp are): the same loss and
// gradients bit for bit where every activation is none, relu or relu6 (their derivatives multiply by 0 or 1, so a
// gradient stored rounded between two ops is the one the emulation passes on unrounded); otherwise (leaky, sigmoid
// through batch norm or a shortcut, whose dz crosses an op boundary; silu, gelu, hardswish applied to the rounded
// pre-activation) one rounding apart, within the emulation's own tolerance.
static void check_stored(const char *example, const char *w, int fmt, const net *lp, const float *glp, double tol) {
    static net st;
    net_open_store(&st, example, w, fmt, fmt);
    assert_int_equal(st.m.n_params, lp->m.n_params);
    memcpy(st.m.params, lp->m.params, lp->m.n_params * sizeof(float));
    const double loss_lp = *lp->m.loss_acc;
    float *gst = grads_of(&st);
    int exact = 1;
    for (int i = 0; i < st.m.n_layers; i++)
        exact &= st.m.layers[i].act == ACT_NONE || st.m.layers[i].act == ACT_RELU || st.m.layers[i].act == ACT_RELU6;
    double num = 0, den = 0;
    for (size_t i = 0; i < st.m.n_params; i++) {
        num += ((double)gst[i] - glp[i]) * ((double)gst[i] - glp[i]);
        den += (double)glp[i] * glp[i];
    }
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    print_message("%-22s 16-bit buffers vs the emulation: loss %s, gradients %s (relative L2 %.2e)\n", w,
                  *st.m.loss_acc == loss_lp ? "equal" : "differ", num == 0 ? "bit for bit" : "differ", rel);
    if (exact) {
        assert_true(*st.m.loss_acc == loss_lp);
        assert_memory_equal(gst, glp, st.m.n_params * sizeof(float));
    } else {
        assert_true(rel < tol);
    }
    free(gst);
    net_close(&st);
}

// The emulated gradients against the fp32 network's central differences: within the fp32 gradients' own distance
// from them plus the format's error (its relative rounding, 2^-9 for bf16 and 2^-12 for fp16, compounded over a
// few layers and amplified where a residual add cancels: measured up to 2.8e-2 and 7.6e-4), not equal to the fp32
// gradients (the emulation did round), and every held value a value of the format.
static void check_emulated(const char *example, const char *what, int fmt, double tol, double *worst) {
    static net f32, lp;
    char w[96];
    snprintf(w, sizeof w, "%s %s", what, precision_name(fmt));
    net_open(&f32, example, w, PREC_FP32);
    net_open(&lp, example, w, fmt);
    assert_int_equal(lp.m.n_params, f32.m.n_params);
    memcpy(lp.m.params, f32.m.params, f32.m.n_params * sizeof(float));
    double *fd = finite_differences(&f32);
    float *g32 = grads_of(&f32), *glp = grads_of(&lp);
    check_held(&lp, fmt, w);
    double num = 0, den = 0, num32 = 0;
    for (size_t i = 0; i < lp.m.n_params; i++) {
        num += (glp[i] - fd[i]) * (glp[i] - fd[i]);
        num32 += (g32[i] - fd[i]) * (g32[i] - fd[i]);
        den += fd[i] * fd[i];
    }
    const double rel = sqrt(num / den), rel32 = sqrt(num32 / den);
    print_message("%-22s %5zu params: gradient vs finite differences, relative L2 %.2e (fp32: %.2e)\n", w,
                  lp.m.n_params, rel, rel32);
    assert_true(den > 0);
    assert_true(rel < rel32 + tol);  // the differences' own error (kinks of relu and max inside ±eps) plus the format's
    assert_memory_not_equal(glp, g32, lp.m.n_params * sizeof(float));
    if (rel > *worst) *worst = rel;
    check_stored(example, w, fmt, &lp, glp, tol);
    free(fd), free(g32), free(glp);
    net_close(&f32);
    net_close(&lp);
}

static void check_every_kind(int fmt, double tol) {
    double worst = 0;
    for (int type = 1; type < LAYER_KIND_COUNT; type++) {
        const layer_kind *k = layer_kind_of(type);
        char what[64];
        snprintf(what, sizeof what, "[%s]", k->section);
        check_emulated(k->example, what, fmt, tol, &worst);
    }
    // The fused and the separate activations, batch norm and a residual add in one network.
    check_emulated("[conv]\nfilters=3\nsize=3\npad=1\nactivation=silu\n[batchnorm]\nactivation=relu\n"
                   "[shortcut]\nfrom=-3\nactivation=gelu\n[dense]\nunits=5\nactivation=leaky\n",
                   "conv-bn-shortcut", fmt, tol, &worst);
    print_message("%s: worst relative L2 error %.2e (tolerance: fp32's + %.0e)\n", precision_name(fmt), worst, tol);
}

static void test_gradients_bf16(void **state) {
    (void)state;
    check_every_kind(PREC_BF16, 6e-2);
}

static void test_gradients_fp16(void **state) {
    (void)state;
    check_every_kind(PREC_FP16, 5e-3);
}

// The loss scale multiplies the loss gradient before it is held in the compute type: under bf16 (fp32's range, so
// no underflow) scaling by 2^10 scales every gradient by exactly 2^10.
static void test_loss_scale_exact(void **state) {
    (void)state;
    static net t;
    net_open(&t, "[conv]\nfilters=3\nsize=3\npad=1\nactivation=relu\n[maxpool]\nsize=2\n", "scale", PREC_BF16);
    float *g1 = grads_of(&t);
    t.m.loss_scale = 1024.0f;
    float *g2 = grads_of(&t);
    for (size_t i = 0; i < t.m.n_params; i++)
        if (g2[i] != 1024.0f * g1[i]) fail_msg("param %zu: scaled gradient %a, want 1024 x %a", i, (double)g2[i], (double)g1[i]);
    free(g1), free(g2);
    net_close(&t);
}

// ---------------------------------------------------------------------------------------------------------
// The loss scaler

static void test_loss_scaler_schedule(void **state) {
    (void)state;
    net_config cfg;
    config_defaults(&cfg);
    loss_scaler s;
    loss_scale_init(&s, &cfg);
    assert_int_equal(s.on, 0);  // fp32: off
    assert_true(s.scale == 1.0);
    cfg.precision = PREC_BF16;
    loss_scale_init(&s, &cfg);
    assert_int_equal(s.on, 0);  // bf16 needs none
    cfg.precision = PREC_FP16;
    loss_scale_init(&s, &cfg);
    assert_int_equal(s.on, 1);
    assert_true(s.scale == 65536.0);  // GradScaler's defaults
    assert_int_equal(s.growth_interval, 2000);
    cfg.loss_scale_growth_interval = 3;
    loss_scale_init(&s, &cfg);
    for (int i = 0; i < 2; i++) loss_scale_update(&s, 0);
    assert_true(s.scale == 65536.0);
    loss_scale_update(&s, 0);  // the third finite step in a row: doubled
    assert_true(s.scale == 131072.0);
    loss_scale_update(&s, 0);
    loss_scale_update(&s, 1);  // an overflow: halved, the count of good steps restarts
    assert_true(s.scale == 65536.0);
    assert_int_equal(s.skipped, 1);
    loss_scale_update(&s, 0), loss_scale_update(&s, 0);
    assert_true(s.scale == 65536.0);
    loss_scale_update(&s, 0);
    assert_true(s.scale == 131072.0);
}

static void test_loss_scaler_unscale_check(void **state) {
    (void)state;
    backend be;
    assert_int_equal(backend_create(&be, "cpu", &(backend_options){.threads = 1}), ST_OK);
    float *g = NULL;
    int32_t *scratch = NULL;
    assert_int_equal(backend_alloc(&be, (void **)&g, 3 * sizeof(float)), ST_OK);
    assert_int_equal(backend_alloc(&be, (void **)&scratch, sizeof(int32_t)), ST_OK);
    net_config cfg;
    config_defaults(&cfg);
    cfg.precision = PREC_FP16;
    cfg.loss_scale_init = 4;
    loss_scaler s;
    loss_scale_init(&s, &cfg);
    g[0] = 4, g[1] = -8, g[2] = 0.5f;
    int skip = -1;
    assert_int_equal(loss_scale_unscale_check(&s, &be, NULL, 1, g, 3, scratch, &skip), ST_OK);
    assert_int_equal(skip, 0);
    assert_true(g[0] == 1 && g[1] == -2 && g[2] == 0.125f);  // divided by the scale
    assert_true(s.scale == 4);
    g[1] = INFINITY;
    assert_int_equal(loss_scale_unscale_check(&s, &be, NULL, 1, g, 3, scratch, &skip), ST_OK);
    assert_int_equal(skip, 1);
    assert_true(s.scale == 2);
    assert_int_equal(s.skipped, 1);
    g[1] = NAN;
    assert_int_equal(loss_scale_unscale_check(&s, &be, NULL, 1, g, 3, scratch, &skip), ST_OK);
    assert_int_equal(skip, 1);
    assert_true(s.scale == 1);
    // Non-finite at every scale: the run has diverged.
    s.scale = LOSS_SCALE_MIN;
    err_clear();
    assert_int_equal(loss_scale_unscale_check(&s, &be, NULL, 1, g, 3, scratch, &skip), ST_DIVERGED);
    assert_non_null(strstr(err_msg(), "every loss scale"));
    backend_free(&be, g);
    backend_free(&be, scratch);
    backend_destroy(&be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_bit_patterns),
        cmocka_unit_test(test_fp16_bit_patterns),
        cmocka_unit_test(test_bf16_against_reference),
        cmocka_unit_test(test_fp16_against_compiler),
        cmocka_unit_test(test_backend_round_to),
        cmocka_unit_test(test_16bit_encoding),
        cmocka_unit_test(test_gradients_bf16),
        cmocka_unit_test(test_gradients_fp16),
        cmocka_unit_test(test_loss_scale_exact),
        cmocka_unit_test(test_loss_scaler_schedule),
        cmocka_unit_test(test_loss_scaler_unscale_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
