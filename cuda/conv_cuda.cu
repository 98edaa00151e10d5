// conv_cuda.cu — convolution for the CUDA backend: cuDNN (legacy API) for the three convolutions, our own
// kernels for the fused bias + activation forward and for the activation mask + bias gradient backward.
//
// Algorithm choice happens once per conv_prepare (one plan per layer and batch size): cudnnFind*AlgorithmEx
// times every algorithm on scratch buffers and we take the fastest whose workspace fits WS_CAP. For the two
// backward convolutions a deterministic algorithm is preferred when it is within 10% of the fastest, so that
// runs repeat bit for bit where it costs little (dgrad ALGO_0 and wgrad ALGO_0/ALGO_3 use atomics); backward-filter
// into a bf16 dw (grads16, below) takes deterministic algorithms only.
// net.deterministic (c->deterministic): only algorithms cuDNN reports as deterministic, in every direction,
// ranked by cuDNN's heuristics (cudnnGet*Algorithm_v7) instead of by timing: two runs then pick the same
// algorithms (a timed choice may not; different algorithms round differently), so they repeat bit for bit.
// The fallbacks (fwd IMPLICIT_GEMM, dgrad ALGO_1, wgrad ALGO_1) are deterministic algorithms.
// Math: with TF32 off (the default) every descriptor is set to CUDNN_FMA_MATH, which cuDNN 8+ honours in Find
// and execution; CUDNN_DEFAULT_MATH would allow TF32 on Ampere and later. With TF32 on, the math type Find
// reports for the chosen algorithm is used.
// Workspace: the model sizes one workspace to the largest need of its layers at the training batch, and later
// prepares the same layers for smaller (evaluation) batches, expecting no more. Find could pick a hungrier
// algorithm for a smaller batch, so a plan for a batch below the largest seen may use at most the largest
// workspace reported so far (the training plans' need).
// Groups and dilation: on the convolution descriptors (cudnnSetConvolutionGroupCount; the filter descriptor is
// [k, c/groups, r, s], PyTorch's layout). An algorithm without support for such a shape comes back from Find or
// the heuristics with a failed status and rank_results skips it; the fallbacks support both.
// net.precision=bf16/fp16 (c->precision when the plan is made: p->lp): forward and backward-data run on 16-bit
// copies in the workspace (cuDNN's PSEUDO_BFLOAT16/PSEUDO_HALF configurations: 16-bit x, w, y descriptors, a
// CUDNN_DATA_FLOAT convolution descriptor, tensor-core math), their 16-bit outputs cast back into the fp32 buffers
// (rounded once by cuDNN, so the model's round_to is then a no-op; a conv with a bias rounds twice: the conv's
// output, then after the bias add). Backward-filter has no configuration with 16-bit inputs and an fp32 dw, so
// where the weight gradient is fp32 (the default, docs/precision.md) it runs on the fp32 buffers, whose values are
// rounded to the format and so exact in TF32, with TF32 math allowed but no FFT or Winograd algorithm (those
// transform the inputs first, and the transformed values would be rounded to TF32): the same products, fp32
// accumulation. Parameter gradients in bf16 (c->grads16, net.precision=bf16 with compress=bf16: p->grads16, always
// with p->lp == PREC_BF16): backward-filter runs in the PSEUDO_BFLOAT16 configuration as well, on the bf16 copies
// of x and of the masked dy (one dy copy, read by backward-data too) with a bf16 filter descriptor and tensor-core
// math; cuDNN rounds its fp32 sums once into the caller's bf16 dw, the value the CPU stores after its fp32 sums.
// Only algorithms cuDNN reports deterministic are taken there: the others add partial sums into dw with atomics,
// which into a bf16 dw would round at every addition. The bias gradient is summed in fp32 as always and stored as
// bf16 (grad_store).
// 16-bit activations (c->act16 when the plan is made, always equal to the precision: p->act16): x, y, dx and dy are
// bf16/fp16 buffers, so forward and backward-data run the same configurations on them directly, with no copies but
// the filter's: forward writes y in 16 bits (cuDNN's rounding), then the bias + activation kernel reads it and stores
// it rounded again (as at precision without act16, a conv with a bias rounds twice); backward-data writes dx in 16
// bits. The mask kernel stores the masked dy rounded (the bias gradient sums its float products, as the CPU's).
// Backward-filter under grads16 reads x and the masked dy where they are; for an fp32 dw it reads fp32 copies of
// them in the workspace (exact; sized at conv_prepare), keeping the numerics above (fp32 operands, TF32 allowed on
// exact inputs, no FFT/Winograd).
// net.layout=nhwc (c->nhwc when the plan is made: p->nhwc): x, y, dx, dy are N,H,W,C (CUDNN_TENSOR_NHWC tensor
// descriptors, what tensor-core kernels read without a transpose of their own) and the filter descriptors NHWC too,
// i.e. KRSC. The model's weights stay KCRS (PyTorch's layout, checkpoints unchanged): each call permutes them into
// a KRSC copy in the workspace (fp32: layout_convert's kernel; 16-bit: the cast writes the copy permuted, one pass),
// and backward-filter writes its KRSC dw there (bf16 under grads16), permuted back into the caller's KCRS dw. NCHW
// filters with NHWC tensors would leave cuDNN few algorithms and none on tensor cores, hence the copy (k·c/groups·r·s
// values a call, small next to the activations). The bias and its gradient index channels innermost.
// Bias + ReLU: our kernel after cudnnConvolutionForward, not cudnnConvolutionBiasActivationForward, which
// supports ReLU only with IMPLICIT_PRECOMP_GEMM and would tie the algorithm choice to the activation.
#include <math.h>
#include <stdlib.h>

#include "backend_cuda_impl.h"

#define WS_CAP ((size_t)256 << 20)
#define DETERMINISTIC_SLACK 1.10f

typedef struct conv_plan {
    int n, c, h, w, k, r, s, stride, pad, groups, dilation, oh, ow;  // the shape the plan was made for
    cudnnTensorDescriptor_t x_desc, y_desc;
    cudnnFilterDescriptor_t w_desc;
    // precision (PREC_BF16/PREC_FP16, 0: fp32): the 16-bit descriptors forward and backward-data use, and where
    // the 16-bit copies start in the workspace (after what cuDNN and the bias reduction use): x | w | y, each
    // cuda_lp_bytes long (backward-data puts dx where x goes and dy where y goes)
    int lp;
    cudnnTensorDescriptor_t x16_desc, y16_desc;
    cudnnFilterDescriptor_t w16_desc;
    size_t lp_off;
    // grads16 (only with lp == PREC_BF16): backward-filter reads the bf16 copies of x and dy and writes a bf16 dw
    // (x16_desc, y16_desc, w16_desc); the bias gradient is stored bf16
    int grads16;
    // act16 (only with lp == act16): x, y, dx, dy are 16-bit buffers the 16-bit descriptors describe, read and written
    // where they are; the workspace copies (lp_off) are then w's 16-bit copy | (fp32 dw only) x and the masked dy cast
    // to fp32 for backward-filter, cuda_f32_bytes each (lp_copies_at)
    int act16;
    // layout=nhwc: tensors N,H,W,C and filters KRSC; wt_off: where the KRSC filter (krsc_bytes: fp32 forward/
    // backward-data's w and backward-filter's dw, or under grads16 the bf16 dw alone) starts in the workspace,
    // after the 16-bit copies
    int nhwc;
    size_t wt_off;
    // One convolution descriptor per direction: the chosen algorithms may need different math types.
    cudnnConvolutionDescriptor_t fwd_desc, bwd_data_desc, bwd_filter_desc;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    size_t ws_fwd, ws_bwd_data, ws_bwd_filter;
    int bias_splits;  // blocks per channel of the bias-gradient reduction (partial sums live in the workspace)
} conv_plan;

// Scratch tensors for cudnnFind*Ex (it runs every algorithm for real), freed after the plan is made.
typedef struct find_scratch {
    void *x, *w, *y, *ws;
    size_t ws_bytes;
} find_scratch;

// ---------------------------------------------------------------------------------------------------------
// Kernels

// dy times act'(y) in place and the per-channel sum of dy over (n, oh, ow), in two deterministic passes:
// grid (splits, k) partial sums, then one thread per channel adds its splits in order. A: the activations' type
// (act16: dy stored rounded, the sums take the float products, as the CPU's). T: float (the partial sums, or db), or
// uint16_t (a bf16 db written directly, one split); the sums are float either way.
template <typename A, typename T>
__global__ void conv_bias_grad_kernel(A *dy, const A *y, T *out, int k, int hw, int per, int chunk, int act) {
    const int ch = blockIdx.y, part = blockIdx.x;
    const int start = part * chunk, end = min(per, start + chunk);
    float sum = 0.f;
    for (int j = start + threadIdx.x; j < end; j += blockDim.x) {
        const int img = j / hw, q = j - img * hw;
        const size_t idx = ((size_t)img * k + ch) * hw + q;
        float g = act_load(&dy[idx]);
        if (act != ACT_NONE) {
            g = act_grad(act, act_load(&y[idx]), g);
            act_store(&dy[idx], g);
        }
        sum += g;
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0 && out) grad_store(&out[(size_t)ch * gridDim.x + part], sum);
}

// The same for NHWC dy [rows = n·oh·ow, k]: grid (splits, ceil(k / 32)), block (32, 8): 32 adjacent channels
// (coalesced rows), 8 row phases over the part's rows, reduced in shared memory in a fixed order. out[ch * splits
// + part] as above (out NULL: the mask only; A, T as above).
template <typename A, typename T>
__global__ void conv_bias_grad_nhwc_kernel(A *dy, const A *y, T *out, int k, int rows, int chunk, int act) {
    __shared__ float sh[8][33];
    const int ch = blockIdx.y * 32 + threadIdx.x, part = blockIdx.x;
    const int start = part * chunk, end = min(rows, start + chunk);
    float sum = 0.f;
    if (ch < k)
        for (int j = start + threadIdx.y; j < end; j += 8) {
            const size_t idx = (size_t)j * k + ch;
            float g = act_load(&dy[idx]);
            if (act != ACT_NONE) {
                g = act_grad(act, act_load(&y[idx]), g);
                act_store(&dy[idx], g);
            }
            sum += g;
        }
    sh[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && ch < k && out) {
        float t = 0.f;
        for (int r = 0; r < 8; r++) t += sh[r][threadIdx.x];
        grad_store(&out[(size_t)ch * gridDim.x + part], t);
    }
}

// db (T: float, or uint16_t bf16 bits) from the float partial sums.
template <typename T>
__global__ void sum_splits_kernel(const float *partial, T *db, int k, int splits) {
    const int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= k) return;
    float s = 0.f;
    for (int i = 0; i < splits; i++) s += partial[(size_t)ch * splits + i];
    grad_store(&db[ch], s);
}

// ---------------------------------------------------------------------------------------------------------
// Plans: descriptors

static void plan_free(conv_plan *p) {
    if (p == NULL) return;
    if (p->x_desc) cudnnDestroyTensorDescriptor(p->x_desc);
    if (p->y_desc) cudnnDestroyTensorDescriptor(p->y_desc);
    if (p->w_desc) cudnnDestroyFilterDescriptor(p->w_desc);
    if (p->x16_desc) cudnnDestroyTensorDescriptor(p->x16_desc);
    if (p->y16_desc) cudnnDestroyTensorDescriptor(p->y16_desc);
    if (p->w16_desc) cudnnDestroyFilterDescriptor(p->w16_desc);
    if (p->fwd_desc) cudnnDestroyConvolutionDescriptor(p->fwd_desc);
    if (p->bwd_data_desc) cudnnDestroyConvolutionDescriptor(p->bwd_data_desc);
    if (p->bwd_filter_desc) cudnnDestroyConvolutionDescriptor(p->bwd_filter_desc);
    free(p);
}

static int conv_shape_check(const conv_desc *d) {
    if (d->n <= 0 || d->c <= 0 || d->h <= 0 || d->w <= 0 || d->k <= 0 || d->r <= 0 || d->s <= 0 || d->stride <= 0 ||
        d->pad < 0 || d->groups <= 0 || d->dilation <= 0 || d->c % d->groups || d->k % d->groups)
        return ERR(ST_INPUT, "conv_prepare: bad shape n=%d c=%d h=%d w=%d k=%d r=%d s=%d stride=%d pad=%d groups=%d "
                             "dilation=%d (conv_desc_init not called?)",
                   d->n, d->c, d->h, d->w, d->k, d->r, d->s, d->stride, d->pad, d->groups, d->dilation);
    const int er = (d->r - 1) * d->dilation + 1, es = (d->s - 1) * d->dilation + 1;  // the kernel's extent
    const int oh = (d->h + 2 * d->pad - er) / d->stride + 1, ow = (d->w + 2 * d->pad - es) / d->stride + 1;
    if (d->h + 2 * d->pad < er || d->w + 2 * d->pad < es || d->oh != oh || d->ow != ow)
        return ERR(ST_INPUT, "conv_prepare: output %dx%d does not match input %dx%d, kernel %dx%d, stride %d, pad %d, "
                             "dilation %d (conv_desc_init not called?)",
                   d->oh, d->ow, d->h, d->w, d->r, d->s, d->stride, d->pad, d->dilation);
    if (!act_from_output(d->act)) return ERR(ST_INPUT, "conv_prepare: activation %d is not one conv fuses", d->act);
    if ((size_t)d->n * d->k * oh * ow > (size_t)INT32_MAX || (size_t)d->n * d->c * d->h * d->w > (size_t)INT32_MAX)
        return ERR(ST_INPUT, "conv_prepare: layer too large for the CUDA backend (n=%d c=%d %dx%d k=%d)", d->n, d->c,
                   d->h, d->w, d->k);
    if (d->k > 65535) return ERR(ST_INPUT, "conv_prepare: %d filters, the CUDA backend takes at most 65535", d->k);
    return ST_OK;
}

static int plan_descriptors(const cuda_ctx *c, const conv_desc *d, conv_plan *p) {
    // NCHW, or NHWC (filters KRSC: the format applies to the filter descriptor too); the sizes stay n, c, h, w
    const cudnnTensorFormat_t f = p->nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    cudnnCheck(cudnnCreateTensorDescriptor(&p->x_desc));
    cudnnCheck(cudnnCreateTensorDescriptor(&p->y_desc));
    cudnnCheck(cudnnCreateFilterDescriptor(&p->w_desc));
    cudnnCheck(cudnnSetTensor4dDescriptor(p->x_desc, f, CUDNN_DATA_FLOAT, d->n, d->c, d->h, d->w));
    cudnnCheck(cudnnSetTensor4dDescriptor(p->y_desc, f, CUDNN_DATA_FLOAT, d->n, d->k, d->oh, d->ow));
    // Grouped: [k, c/groups, r, s], PyTorch's layout; the group count goes on the convolution descriptors.
    cudnnCheck(cudnnSetFilter4dDescriptor(p->w_desc, CUDNN_DATA_FLOAT, f, d->k, d->c / d->groups, d->r, d->s));
    if (p->lp) {
        const cudnnDataType_t t = p->lp == PREC_BF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
        cudnnCheck(cudnnCreateTensorDescriptor(&p->x16_desc));
        cudnnCheck(cudnnCreateTensorDescriptor(&p->y16_desc));
        cudnnCheck(cudnnCreateFilterDescriptor(&p->w16_desc));
        cudnnCheck(cudnnSetTensor4dDescriptor(p->x16_desc, f, t, d->n, d->c, d->h, d->w));
        cudnnCheck(cudnnSetTensor4dDescriptor(p->y16_desc, f, t, d->n, d->k, d->oh, d->ow));
        cudnnCheck(cudnnSetFilter4dDescriptor(p->w16_desc, t, f, d->k, d->c / d->groups, d->r, d->s));
    }
    cudnnConvolutionDescriptor_t *descs[3] = {&p->fwd_desc, &p->bwd_data_desc, &p->bwd_filter_desc};
    // 16-bit data: tensor cores; backward-filter under precision: TF32 allowed (its fp32 inputs are exact in TF32),
    // or tensor cores as well where it reads the 16-bit copies (grads16)
    const cudnnMathType_t lp_math[3] = {CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH,
                                        p->grads16 ? CUDNN_TENSOR_OP_MATH : CUDNN_DEFAULT_MATH};
    for (int i = 0; i < 3; i++) {
        cudnnCheck(cudnnCreateConvolutionDescriptor(descs[i]));
        // Cross-correlation (no kernel flip), as PyTorch and the CPU reference compute it.
        cudnnCheck(cudnnSetConvolution2dDescriptor(*descs[i], d->pad, d->pad, d->stride, d->stride, d->dilation,
                                                   d->dilation, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
        cudnnCheck(cudnnSetConvolutionGroupCount(*descs[i], d->groups));
        cudnnCheck(cudnnSetConvolutionMathType(*descs[i], p->lp ? lp_math[i] : c->tf32 ? CUDNN_DEFAULT_MATH
                                                                                        : CUDNN_FMA_MATH));
    }
    int on = 0, oc = 0, oh = 0, ow = 0;
    cudnnCheck(cudnnGetConvolution2dForwardOutputDim(p->fwd_desc, p->x_desc, p->w_desc, &on, &oc, &oh, &ow));
    (void)c;
    if (on != d->n || oc != d->k || oh != d->oh || ow != d->ow)
        return ERR(ST_RUNTIME, "conv_prepare: cuDNN output shape %dx%dx%dx%d differs from ours %dx%dx%dx%d", on, oc, oh,
                   ow, d->n, d->k, d->oh, d->ow);
    return ST_OK;
}

// ---------------------------------------------------------------------------------------------------------
// Plans: algorithm choice

// The descriptors of forward and backward-data: 16-bit under precision, else the fp32 ones.
static cudnnTensorDescriptor_t xd(const conv_plan *p) { return p->lp ? p->x16_desc : p->x_desc; }
static cudnnTensorDescriptor_t yd(const conv_plan *p) { return p->lp ? p->y16_desc : p->y_desc; }
static cudnnFilterDescriptor_t wd(const conv_plan *p) { return p->lp ? p->w16_desc : p->w_desc; }
// Backward-filter's: the 16-bit ones (bf16 x, dy and dw) under grads16, else the fp32 ones (under precision too).
static cudnnTensorDescriptor_t bf_xd(const conv_plan *p) { return p->grads16 ? p->x16_desc : p->x_desc; }
static cudnnTensorDescriptor_t bf_yd(const conv_plan *p) { return p->grads16 ? p->y16_desc : p->y_desc; }
static cudnnFilterDescriptor_t bf_wd(const conv_plan *p) { return p->grads16 ? p->w16_desc : p->w_desc; }

// Which math a direction's candidates may use: FMA only (fp32, the tests' reference), any (tf32=1, or 16-bit
// data), or any but the transforming algorithms (backward-filter on fp32 data under precision: TF32 on exact
// inputs).
enum math_policy { MATH_FMA, MATH_ANY, MATH_EXACT_TF32 };

// What differs between the three directions: cuDNN's types and calls, the plan fields a choice fills, the
// fallback algorithm, whether backward's preference for deterministic algorithms applies, and whether only
// deterministic ones may be taken (det_only). The workspace survey and choose_algo below are written once over
// these. Each cuDNN call is spelled as it was in the per-direction choosers so that cudnnCheck names the same call
// when it fails.
struct dir_fwd {
    typedef cudnnConvolutionFwdAlgoPerf_t perf_t;
    typedef cudnnConvolutionFwdAlgo_t algo_t;
    enum { n_algos = CUDNN_CONVOLUTION_FWD_ALGO_COUNT, backward = 0 };
    static const char *name() { return "forward"; }
    static algo_t fallback() { return CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM; }
    static math_policy policy(const cuda_ctx *c, const conv_plan *p) { return p->lp || c->tf32 ? MATH_ANY : MATH_FMA; }
    static int transforms(algo_t) { return 0; }
    static int det_only(const conv_plan *) { return 0; }
    static cudnnConvolutionDescriptor_t desc(const conv_plan *p) { return p->fwd_desc; }
    static void set(conv_plan *p, algo_t algo, size_t ws) { p->fwd = algo, p->ws_fwd = ws; }
    static cudnnStatus_t workspace(const cuda_ctx *c, const conv_plan *p, algo_t algo, size_t *ws) {
        return cudnnGetConvolutionForwardWorkspaceSize(c->cudnn, xd(p), wd(p), p->fwd_desc, yd(p), algo, ws);
    }
    static int heuristic(const cuda_ctx *c, const conv_plan *p, int &count, perf_t *perf) {
        cudnnCheck(cudnnGetConvolutionForwardAlgorithm_v7(c->cudnn, xd(p), wd(p), p->fwd_desc, yd(p),
                                                          CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf));
        return ST_OK;
    }
    static int find(const cuda_ctx *c, const conv_plan *p, const find_scratch *s, int &count, perf_t *perf) {
        cudnnCheck(cudnnFindConvolutionForwardAlgorithmEx(c->cudnn, xd(p), s->x, wd(p), s->w, p->fwd_desc, yd(p),
                                                          s->y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf, s->ws,
                                                          s->ws_bytes));
        return ST_OK;
    }
};

struct dir_bwd_data {
    typedef cudnnConvolutionBwdDataAlgoPerf_t perf_t;
    typedef cudnnConvolutionBwdDataAlgo_t algo_t;
    enum { n_algos = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, backward = 1 };
    static const char *name() { return "backward-data"; }
    static algo_t fallback() { return CUDNN_CONVOLUTION_BWD_DATA_ALGO_1; }
    static math_policy policy(const cuda_ctx *c, const conv_plan *p) { return p->lp || c->tf32 ? MATH_ANY : MATH_FMA; }
    static int transforms(algo_t) { return 0; }
    // A 16-bit dx (precision bf16/fp16): as backward-filter's bf16 dw, an algorithm that adds partial sums into dx
    // with atomics (ALGO_0) would round at each addition; the deterministic ones (ALGO_1, the fallback, among them)
    // round the fp32 sum once.
    static int det_only(const conv_plan *p) { return p->lp != 0; }
    static cudnnConvolutionDescriptor_t desc(const conv_plan *p) { return p->bwd_data_desc; }
    static void set(conv_plan *p, algo_t algo, size_t ws) { p->bwd_data = algo, p->ws_bwd_data = ws; }
    static cudnnStatus_t workspace(const cuda_ctx *c, const conv_plan *p, algo_t algo, size_t *ws) {
        return cudnnGetConvolutionBackwardDataWorkspaceSize(c->cudnn, wd(p), yd(p), p->bwd_data_desc, xd(p), algo,
                                                            ws);
    }
    static int heuristic(const cuda_ctx *c, const conv_plan *p, int &count, perf_t *perf) {
        cudnnCheck(cudnnGetConvolutionBackwardDataAlgorithm_v7(c->cudnn, wd(p), yd(p), p->bwd_data_desc, xd(p),
                                                               CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf));
        return ST_OK;
    }
    // dx goes to the x scratch (x itself is not an input of this direction).
    static int find(const cuda_ctx *c, const conv_plan *p, const find_scratch *s, int &count, perf_t *perf) {
        cudnnCheck(cudnnFindConvolutionBackwardDataAlgorithmEx(c->cudnn, wd(p), s->w, yd(p), s->y,
                                                               p->bwd_data_desc, xd(p), s->x,
                                                               CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, perf,
                                                               s->ws, s->ws_bytes));
        return ST_OK;
    }
};

struct dir_bwd_filter {
    typedef cudnnConvolutionBwdFilterAlgoPerf_t perf_t;
    typedef cudnnConvolutionBwdFilterAlgo_t algo_t;
    enum { n_algos = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, backward = 1 };
    static const char *name() { return "backward-filter"; }
    static algo_t fallback() { return CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1; }
    // grads16: bf16 data, tensor cores, as forward
    static math_policy policy(const cuda_ctx *c, const conv_plan *p) {
        return p->grads16 ? MATH_ANY : p->lp ? MATH_EXACT_TF32 : c->tf32 ? MATH_ANY : MATH_FMA;
    }
    static int transforms(algo_t a) {
        return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING ||
               a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
    }
    // A bf16 dw: an algorithm that is not deterministic adds partial sums into dw with atomics, and in bf16 each
    // addition would round (several roundings of partial sums, not one of the fp32 total: further from the CPU's
    // value than an ulp); the deterministic ones reduce in fp32 and round once.
    static int det_only(const conv_plan *p) { return p->grads16; }
    static cudnnConvolutionDescriptor_t desc(const conv_plan *p) { return p->bwd_filter_desc; }
    static void set(conv_plan *p, algo_t algo, size_t ws) { p->bwd_filter = algo, p->ws_bwd_filter = ws; }
    static cudnnStatus_t workspace(const cuda_ctx *c, const conv_plan *p, algo_t algo, size_t *ws) {
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(c->cudnn, bf_xd(p), bf_yd(p), p->bwd_filter_desc,
                                                              bf_wd(p), algo, ws);
    }
    static int heuristic(const cuda_ctx *c, const conv_plan *p, int &count, perf_t *perf) {
        cudnnCheck(cudnnGetConvolutionBackwardFilterAlgorithm_v7(c->cudnn, bf_xd(p), bf_yd(p), p->bwd_filter_desc,
                                                                 bf_wd(p), CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
                                                                 &count, perf));
        return ST_OK;
    }
    // dw goes to the w scratch (w is not an input of this direction; the scratches hold fp32 values, room for
    // the bf16 ones of grads16 too).
    static int find(const cuda_ctx *c, const conv_plan *p, const find_scratch *s, int &count, perf_t *perf) {
        cudnnCheck(cudnnFindConvolutionBackwardFilterAlgorithmEx(c->cudnn, bf_xd(p), s->x, bf_yd(p), s->y,
                                                                 p->bwd_filter_desc, bf_wd(p), s->w,
                                                                 CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count,
                                                                 perf, s->ws, s->ws_bytes));
        return ST_OK;
    }
};

// The largest workspace any algorithm of direction Dir asks for, up to cap, folded into *need.
template <typename Dir>
static void dir_workspace_need(const cuda_ctx *c, const conv_plan *p, size_t cap, size_t *need) {
    size_t sz = 0;
    for (int a = 0; a < Dir::n_algos; a++)
        if (Dir::workspace(c, p, (typename Dir::algo_t)a, &sz) == CUDNN_STATUS_SUCCESS && sz <= cap && sz > *need)
            *need = sz;
}

// The largest workspace any algorithm of any direction asks for, up to cap (those above are never chosen).
static size_t find_workspace_need(const cuda_ctx *c, const conv_plan *p, size_t cap) {
    size_t need = 0;
    dir_workspace_need<dir_fwd>(c, p, cap, &need);
    dir_workspace_need<dir_bwd_data>(c, p, cap, &need);
    dir_workspace_need<dir_bwd_filter>(c, p, cap, &need);
    return need;
}

static void scratch_free(find_scratch *s) {
    if (s->x) cudaFree(s->x);
    if (s->w) cudaFree(s->w);
    if (s->y) cudaFree(s->y);
    if (s->ws) cudaFree(s->ws);
    (void)cudaGetLastError();
}

static int scratch_alloc(cuda_ctx *c, const conv_desc *d, const conv_plan *p, size_t cap, find_scratch *s) {
    const size_t xb = (size_t)d->n * d->c * d->h * d->w * sizeof(float);
    const size_t wb = (size_t)d->k * (d->c / d->groups) * d->r * d->s * sizeof(float);
    const size_t yb = (size_t)d->n * d->k * d->oh * d->ow * sizeof(float);
    cudaCheck(cudaMalloc(&s->x, xb));
    cudaCheck(cudaMalloc(&s->w, wb));
    cudaCheck(cudaMalloc(&s->y, yb));
    // Zeros, not garbage: NaN or denormal patterns could skew the timings.
    cudaCheck(cudaMemsetAsync(s->x, 0, xb, c->stream));
    cudaCheck(cudaMemsetAsync(s->w, 0, wb, c->stream));
    cudaCheck(cudaMemsetAsync(s->y, 0, yb, c->stream));
    // Short of memory, time the algorithms that fit in what there is (down to none: workspace-free ones).
    for (size_t want = find_workspace_need(c, p, cap); want > 0; want /= 2) {
        if (cudaMalloc(&s->ws, want) == cudaSuccess) {
            s->ws_bytes = want;
            break;
        }
        (void)cudaGetLastError();
        s->ws = NULL;
    }
    return ST_OK;
}

// How a direction's candidates are ordered: by measured time (Find), moving deterministic ones within the
// slack of the fastest to the front (PREFER_DET), by measured time among the deterministic ones only
// (FASTEST_DET: a direction's det_only), or only deterministic ones in cuDNN's heuristic order (ONLY_DET:
// net.deterministic).
enum rank_mode { RANK_FASTEST, RANK_PREFER_DET, RANK_FASTEST_DET, RANK_ONLY_DET };

// Indices of the usable results in the order to try them (see rank_mode).
template <typename Dir, typename Perf>
static int rank_results(const Perf *perf, int count, size_t ws_cap, math_policy math, rank_mode mode, int *order) {
    const int timed = mode != RANK_ONLY_DET;  // heuristic results carry no time
    int n = 0;
    for (int i = 0; i < count; i++) {
        const Perf &q = perf[i];
        const int math_ok = (math != MATH_FMA || q.mathType == CUDNN_FMA_MATH || q.mathType == CUDNN_DEFAULT_MATH) &&
                            !(math == MATH_EXACT_TF32 && Dir::transforms(q.algo));
        const int det_ok = (mode != RANK_ONLY_DET && mode != RANK_FASTEST_DET) || q.determinism == CUDNN_DETERMINISTIC;
        const int time_ok = !timed || q.time >= 0.f;
        if (q.status == CUDNN_STATUS_SUCCESS && q.memory <= ws_cap && time_ok && math_ok && det_ok) order[n++] = i;
    }
    for (int i = 1; timed && i < n; i++)  // insertion sort: at most 8 entries
        for (int j = i; j > 0 && perf[order[j]].time < perf[order[j - 1]].time; j--) {
            const int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    if (mode == RANK_PREFER_DET && n > 1) {
        const float limit = perf[order[0]].time * DETERMINISTIC_SLACK;
        int tmp[16], m = 0;
        for (int i = 0; i < n; i++)
            if (perf[order[i]].determinism == CUDNN_DETERMINISTIC && perf[order[i]].time <= limit) tmp[m++] = order[i];
        for (int i = 0; i < n; i++)
            if (!(perf[order[i]].determinism == CUDNN_DETERMINISTIC && perf[order[i]].time <= limit))
                tmp[m++] = order[i];
        for (int i = 0; i < n; i++) order[i] = tmp[i];
    }
    return n;
}

// The mode of a direction: forward has no preference of its own (cuDNN's forward algorithms use no atomics).
static rank_mode rank_mode_for(const cuda_ctx *c, int backward, int det_only) {
    return c->deterministic ? RANK_ONLY_DET : det_only ? RANK_FASTEST_DET : backward ? RANK_PREFER_DET : RANK_FASTEST;
}

// Candidates may use this much workspace: what the scratch has for Find (those were timed), cap otherwise.
static size_t candidate_ws_cap(const cuda_ctx *c, const find_scratch *s, size_t cap) {
    return c->deterministic ? cap : s->ws_bytes;
}

static cudnnMathType_t math_for(math_policy math, cudnnMathType_t found) {
    return math == MATH_FMA ? CUDNN_FMA_MATH : found;
}

// Accept an algorithm only when cuDNN confirms it for the math type we will run it with.
template <typename Dir>
static int try_algo(const cuda_ctx *c, conv_plan *p, typename Dir::algo_t algo, cudnnMathType_t math,
                    size_t found_ws, size_t cap) {
    size_t ws = 0;
    if (cudnnSetConvolutionMathType(Dir::desc(p), math) != CUDNN_STATUS_SUCCESS ||
        Dir::workspace(c, p, algo, &ws) != CUDNN_STATUS_SUCCESS)
        return 0;
    const size_t need = ws > found_ws ? ws : found_ws;
    Dir::set(p, algo, need);
    return need <= cap;
}

static int no_algo(const conv_desc *d, const char *dir) {
    return ERR(ST_RUNTIME, "rank %d (%s): conv_prepare: no cuDNN %s algorithm for n=%d c=%d %dx%d k=%d %dx%d "
                           "stride %d pad %d groups %d dilation %d",
               g_rank, g_host, dir, d->n, d->c, d->h, d->w, d->k, d->r, d->s, d->stride, d->pad, d->groups,
               d->dilation);
}

// Heuristics (deterministic) or Find (timed) lists the candidates; the first that rank_results keeps and
// try_algo accepts wins, else the direction's fallback within cap, else within WS_CAP (the fallbacks are
// deterministic: det_only holds for them too).
template <typename Dir>
static int choose_algo(const cuda_ctx *c, const conv_desc *d, conv_plan *p, const find_scratch *s, size_t cap) {
    typename Dir::perf_t perf[Dir::n_algos];
    int count = 0, order[Dir::n_algos];
    if (c->deterministic)
        TRY(Dir::heuristic(c, p, count, perf));
    else
        TRY(Dir::find(c, p, s, count, perf));
    const math_policy math = Dir::policy(c, p);
    const int m = rank_results<Dir>(perf, count, candidate_ws_cap(c, s, cap), math,
                                    rank_mode_for(c, Dir::backward, Dir::det_only(p)), order);
    for (int i = 0; i < m; i++) {
        const typename Dir::perf_t &q = perf[order[i]];
        if (try_algo<Dir>(c, p, q.algo, math_for(math, q.mathType), q.memory, cap)) return ST_OK;
    }
    // 16-bit data: tensor-core math for the fallback as well (cuDNN runs it on FMA if it has no such kernel)
    const cudnnMathType_t fb = p->lp && math == MATH_ANY ? CUDNN_TENSOR_OP_MATH : CUDNN_DEFAULT_MATH;
    if (try_algo<Dir>(c, p, Dir::fallback(), math_for(math, fb), 0, cap)) return ST_OK;
    if (try_algo<Dir>(c, p, Dir::fallback(), math_for(math, fb), 0, WS_CAP)) return ST_OK;
    return no_algo(d, Dir::name());
}

// Fallbacks may exceed cap (never WS_CAP): the caller then sees a larger need than it planned for.
static int plan_algorithms(cuda_ctx *c, const conv_desc *d, conv_plan *p, size_t cap) {
    find_scratch s = {};
    int st = c->deterministic ? ST_OK : scratch_alloc(c, d, p, cap, &s);  // heuristics run nothing
    if (st == ST_OK) st = choose_algo<dir_fwd>(c, d, p, &s, cap);
    if (st == ST_OK) st = choose_algo<dir_bwd_data>(c, d, p, &s, cap);
    if (st == ST_OK) st = choose_algo<dir_bwd_filter>(c, d, p, &s, cap);
    scratch_free(&s);  // cudaFree waits for the timing runs
    return st;
}

// Values of the filter: k · c/groups · r · s.
static size_t filter_count(const conv_desc *d) { return (size_t)d->k * (d->c / d->groups) * d->r * d->s; }

// The KRSC filter copy under NHWC (plan's wt_off): fp32 (forward/backward-data's w, backward-filter's dw), or under
// grads16 the bf16 dw alone (forward and backward-data read the 16-bit w copy then).
static size_t krsc_bytes(const conv_desc *d, const conv_plan *p) {
    return p->grads16 ? cuda_lp_bytes(filter_count(d)) : filter_count(d) * sizeof(float);
}

// The copies under precision (plan's lp_off): the 16-bit copies of x, w and y; under act16 w's 16-bit copy and, for
// an fp32 dw, the fp32 copies of x and dy (lp_copies_at).
static size_t lp_copies_bytes(const conv_desc *d, const conv_plan *p) {
    const size_t nx = (size_t)d->n * d->c * d->h * d->w, ny = (size_t)d->n * d->k * d->oh * d->ow;
    if (p->act16) return cuda_lp_bytes(filter_count(d)) + (p->grads16 ? 0 : cuda_f32_bytes(nx) + cuda_f32_bytes(ny));
    return cuda_lp_bytes(nx) + cuda_lp_bytes(filter_count(d)) + cuda_lp_bytes(ny);
}

// Enough blocks per channel that the reduction fills the GPU; each block still sums >= 4096 values.
static int bias_splits(const conv_desc *d) {
    const long per = (long)d->n * d->oh * d->ow;
    long s = (per + 4095) / 4096;
    return (int)(s < 1 ? 1 : s > 64 ? 64 : s);
}

// ---------------------------------------------------------------------------------------------------------
// Ops

void cuda_conv_release(void *ctx, conv_desc *d) {
    (void)ctx;
    plan_free((conv_plan *)d->plan);
    d->plan = NULL;
}

int cuda_conv_prepare(void *ctx, conv_desc *d, size_t *workspace_bytes) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    *workspace_bytes = 0;
    if (c->capturing) return ERR(ST_RUNTIME, "cuda backend: conv_prepare is not allowed during CUDA graph capture");
    TRY(conv_shape_check(d));
    // d->plan is overwritten, never freed here: descs are copied around (the model keeps aliases of its
    // plans), so freeing what d points to could pull a plan from under another copy. conv_release frees.
    conv_plan *p = (conv_plan *)calloc(1, sizeof *p);
    TRY_ALLOC(p);
    p->n = d->n, p->c = d->c, p->h = d->h, p->w = d->w, p->k = d->k, p->r = d->r, p->s = d->s;
    p->stride = d->stride, p->pad = d->pad, p->groups = d->groups, p->dilation = d->dilation;
    p->oh = d->oh, p->ow = d->ow;
    p->bias_splits = bias_splits(d);
    p->lp = c->precision;
    p->grads16 = c->grads16;  // backend_cuda_set_options keeps precision bf16 with it
    p->act16 = c->act16;      // and precision equal to act16 with act16
    p->nhwc = c->nhwc;
    if (p->lp == PREC_BF16 && c->cc < 80) {
        free(p);
        return ERR(ST_INPUT, "conv_prepare: net.precision=bf16 needs a GPU of compute capability 8.0 or later (this "
                             "one is %d.%d); use fp16 or fp32", c->cc / 10, c->cc % 10);
    }
    // what follows cuDNN's workspace: the 16-bit copies, the KRSC filter, each after up to 255 bytes of alignment
    // (a plan's extra need beyond cap)
    const size_t extra = (p->lp ? lp_copies_bytes(d, p) + 256 : 0) + (p->nhwc ? krsc_bytes(d, p) + 256 : 0);
    size_t cap = WS_CAP;
    if (d->n < c->conv_max_n && c->conv_ws_high < cap + extra)  // the whole need stays within the high mark
        cap = c->conv_ws_high > extra ? c->conv_ws_high - extra : 0;
    int st = plan_descriptors(c, d, p);
    if (st == ST_OK) st = plan_algorithms(c, d, p, cap);
    if (st != ST_OK) {
        plan_free(p);
        return st;
    }
    d->plan = p;
    size_t need = p->ws_fwd;
    if (p->ws_bwd_data > need) need = p->ws_bwd_data;
    if (p->ws_bwd_filter > need) need = p->ws_bwd_filter;
    const size_t partial = p->bias_splits > 1 ? (size_t)d->k * p->bias_splits * sizeof(float) : 0;
    if (partial > need) need = partial;
    if (p->lp) {
        p->lp_off = (need + 255) & ~(size_t)255;
        need = p->lp_off + lp_copies_bytes(d, p);
    }
    if (p->nhwc) {
        p->wt_off = (need + 255) & ~(size_t)255;
        need = p->wt_off + krsc_bytes(d, p);
    }
    *workspace_bytes = need;
    if (d->n > c->conv_max_n) c->conv_max_n = d->n;
    if (need > c->conv_ws_high) c->conv_ws_high = need;
    return ST_OK;
}

static int plan_get(const conv_desc *d, const char *op, const conv_plan **out) {
    const conv_plan *p = (const conv_plan *)d->plan;
    if (p == NULL) return ERR(ST_RUNTIME, "%s: layer not prepared (conv_prepare first)", op);
    if (p->n != d->n || p->c != d->c || p->h != d->h || p->w != d->w || p->k != d->k || p->r != d->r ||
        p->s != d->s || p->stride != d->stride || p->pad != d->pad || p->groups != d->groups ||
        p->dilation != d->dilation)
        return ERR(ST_RUNTIME, "%s: layer prepared for n=%d c=%d %dx%d k=%d, called with n=%d c=%d %dx%d k=%d", op,
                   p->n, p->c, p->h, p->w, p->k, d->n, d->c, d->h, d->w, d->k);
    *out = p;
    return ST_OK;
}

static int ws_check(size_t need, const void *ws, const char *op) {
    if (need > 0 && ws == NULL)
        return ERR(ST_RUNTIME, "%s: needs a workspace of %zu bytes but got none", op, need);
    return ST_OK;
}

// Where the copies are in the workspace (lp_copies_bytes' layout) and their value counts: the 16-bit copies of x, w
// and y (dy); under act16 w's 16-bit copy, then x and dy in fp32 (x, y; with an fp32 dw only).
typedef struct lp_copies {
    void *x, *w, *y;
    size_t nx, nw, ny;
} lp_copies;

static lp_copies lp_copies_at(const conv_desc *d, const conv_plan *p, void *ws) {
    lp_copies cp;
    cp.nx = (size_t)d->n * d->c * d->h * d->w;
    cp.nw = filter_count(d);
    cp.ny = (size_t)d->n * d->k * d->oh * d->ow;
    char *base = (char *)ws + p->lp_off;
    if (p->act16) {
        cp.w = base;
        cp.x = base + cuda_lp_bytes(cp.nw);
        cp.y = (char *)cp.x + cuda_f32_bytes(cp.nx);
        return cp;
    }
    cp.x = base;
    cp.w = (char *)cp.x + cuda_lp_bytes(cp.nx);
    cp.y = (char *)cp.w + cuda_lp_bytes(cp.nw);
    return cp;
}

// The filter forward and backward-data read: KCRS w itself, or (NHWC) its KRSC copy made in the workspace.
static const float *filter_for(cuda_ctx *c, const conv_desc *d, const conv_plan *p, const float *w, void *ws,
                               int *st) {
    *st = ST_OK;
    if (!p->nhwc) return w;
    float *wt = (float *)((char *)ws + p->wt_off);
    *st = cuda_layout_convert(c, d->k, d->c / d->groups, d->r * d->s, 1, 4, w, wt);
    return wt;
}

// The 16-bit filter copy (KRSC under NHWC) into cp->w.
static int filter_lp(cuda_ctx *c, const conv_desc *d, const conv_plan *p, const float *w, const lp_copies *cp) {
    if (!p->nhwc) return cuda_lp_cast_in(c, p->lp, cp->nw, w, cp->w);
    return cuda_lp_cast_in_nhwc(c, p->lp, d->k, d->c / d->groups, d->r * d->s, w, cp->w);
}

// Bias + activation over y (the context's activation type): channels outermost-but-one (NCHW, inner = oh·ow) or
// innermost (NHWC, inner = 1).
static int conv_bias_act(cuda_ctx *c, const conv_desc *d, const conv_plan *p, void *y, const float *b) {
    const int hw = d->oh * d->ow;
    return cuda_bias_act(c, y, b, d->n * d->k * hw, d->k, p->nhwc ? 1 : hw, d->act);
}

int cuda_conv_forward(void *ctx, const conv_desc *d, const void *x, const float *w, const float *b, void *y,
                      void *ws) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    const conv_plan *p = NULL;
    TRY(plan_get(d, "conv_forward", &p));
    // lp and nhwc: the copies always need room
    TRY(ws_check(p->nhwc ? p->wt_off + 1 : p->lp ? p->lp_off + 1 : p->ws_fwd, ws, "conv_forward"));
    const float one = 1.f, zero = 0.f;
    if (p->act16) {  // x and y are 16-bit: cuDNN reads and writes them where they are
        const lp_copies cp = lp_copies_at(d, p, ws);
        TRY(filter_lp(c, d, p, w, &cp));
        cudnnCheck(cudnnConvolutionForward(c->cudnn, &one, p->x16_desc, x, p->w16_desc, cp.w, p->fwd_desc, p->fwd, ws,
                                           p->ws_fwd, &zero, p->y16_desc, y));
        return conv_bias_act(c, d, p, y, b);
    }
    if (p->lp) {
        const lp_copies cp = lp_copies_at(d, p, ws);
        TRY(cuda_lp_cast_in(c, p->lp, cp.nx, (const float *)x, cp.x));
        TRY(filter_lp(c, d, p, w, &cp));
        cudnnCheck(cudnnConvolutionForward(c->cudnn, &one, p->x16_desc, cp.x, p->w16_desc, cp.w, p->fwd_desc, p->fwd,
                                           ws, p->ws_fwd, &zero, p->y16_desc, cp.y));
        TRY(cuda_lp_cast_out(c, p->lp, cp.ny, cp.y, (float *)y));
        return conv_bias_act(c, d, p, y, b);
    }
    int st = ST_OK;
    const float *wf = filter_for(c, d, p, w, ws, &st);
    TRY(st);
    cudnnCheck(cudnnConvolutionForward(c->cudnn, &one, p->x_desc, x, p->w_desc, wf, p->fwd_desc, p->fwd, ws, p->ws_fwd,
                                       &zero, p->y_desc, y));
    return conv_bias_act(c, d, p, y, b);
}

// The mask and the per-channel sums, p->bias_splits blocks per channel, into out (T: float partial sums, or db's
// own type where one block per channel writes db directly; NULL: the mask only).
template <typename T>
static int bias_grad_pass(cuda_ctx *c, const conv_desc *d, const conv_plan *p, void *dy, const void *y, T *out) {
    const int hw = d->oh * d->ow, per = d->n * hw, splits = p->bias_splits;
    const int chunk = (per + splits - 1) / splits;
    if (p->nhwc) {
        dim3 grid((unsigned)splits, (unsigned)((d->k + 31) / 32)), block(32, 8);
        CUDA_ACT_DISPATCH(c, A,
                          conv_bias_grad_nhwc_kernel<A, T><<<grid, block, 0, c->stream>>>(
                              (A *)dy, (const A *)y, out, d->k, per, chunk, d->act));
    } else {
        dim3 grid((unsigned)splits, (unsigned)d->k);
        CUDA_ACT_DISPATCH(c, A,
                          conv_bias_grad_kernel<A, T><<<grid, CUDA_THREADS, 0, c->stream>>>(
                              (A *)dy, (const A *)y, out, d->k, hw, per, chunk, d->act));
    }
    cudaCheckLaunch();
    return ST_OK;
}

// db of type T (float, or uint16_t bf16 bits under grads16): from one split directly, or summed from the splits'
// float partial sums in ws.
template <typename T>
static int conv_bias_grad_into(cuda_ctx *c, const conv_desc *d, const conv_plan *p, void *dy, const void *y, T *db,
                               void *ws) {
    const int splits = p->bias_splits;
    if (db == NULL || splits == 1) return bias_grad_pass(c, d, p, dy, y, db);
    TRY(ws_check((size_t)d->k * splits * sizeof(float), ws, "conv_backward"));
    float *partial = (float *)ws;
    TRY(bias_grad_pass(c, d, p, dy, y, partial));
    sum_splits_kernel<T><<<(d->k + CUDA_THREADS - 1) / CUDA_THREADS, CUDA_THREADS, 0, c->stream>>>(partial, db, d->k,
                                                                                                      splits);
    cudaCheckLaunch();
    return ST_OK;
}

static int conv_bias_grad(cuda_ctx *c, const conv_desc *d, const conv_plan *p, void *dy, const void *y, void *db,
                          void *ws) {
    if (d->act == ACT_NONE && db == NULL) return ST_OK;
    if (p->grads16) return conv_bias_grad_into(c, d, p, dy, y, (uint16_t *)db, ws);
    return conv_bias_grad_into(c, d, p, dy, y, (float *)db, ws);
}

// Backward-filter from xs and dys (what bf_xd and bf_yd describe: fp32, or bf16 under grads16) into the caller's dw.
// NHWC: the KRSC gradient goes to the workspace's filter copy and is permuted into the caller's KCRS dw.
static int conv_filter_grad(cuda_ctx *c, const conv_desc *d, const conv_plan *p, const void *xs, const void *dys,
                            void *dw, void *ws) {
    TRY(ws_check(p->ws_bwd_filter, ws, "conv_backward"));
    void *dwk = p->nhwc ? (char *)ws + p->wt_off : dw;
    const float one = 1.f, zero = 0.f;  // float scaling factors: the PSEUDO_BFLOAT16 configuration's too
    cudnnCheck(cudnnConvolutionBackwardFilter(c->cudnn, &one, bf_xd(p), xs, bf_yd(p), dys, p->bwd_filter_desc,
                                              p->bwd_filter, ws, p->ws_bwd_filter, &zero, bf_wd(p), dwk));
    if (p->nhwc) TRY(cuda_layout_convert(c, d->k, d->c / d->groups, d->r * d->s, 0, p->grads16 ? 2 : 4, dwk, dw));
    return ST_OK;
}

// act16: dy (masked in place by conv_bias_grad, stored rounded) and x are 16-bit. Backward-filter reads them where they
// are under grads16 (PSEUDO_BFLOAT16, bf16 dw); for an fp32 dw it reads their fp32 copies (exact), as at precision
// without act16 (fp32 operands, TF32 allowed on exact inputs, no FFT/Winograd). Backward-data writes dx in 16 bits
// (cuDNN rounds its fp32 sums once).
static int conv_backward_act16(cuda_ctx *c, const conv_desc *d, const conv_plan *p, const void *x, const float *w,
                               const void *dy, void *dx, void *dw, void *ws) {
    TRY(ws_check(p->lp_off + 1, ws, "conv_backward"));
    const lp_copies cp = lp_copies_at(d, p, ws);
    if (dw) {
        const void *xs = x, *dys = dy;
        if (!p->grads16) {
            TRY(cuda_lp_cast_out(c, p->lp, cp.nx, x, (float *)cp.x));
            TRY(cuda_lp_cast_out(c, p->lp, cp.ny, dy, (float *)cp.y));
            xs = cp.x, dys = cp.y;
        }
        TRY(conv_filter_grad(c, d, p, xs, dys, dw, ws));
    }
    if (dx) {
        TRY(filter_lp(c, d, p, w, &cp));
        const float one = 1.f, zero = 0.f;
        cudnnCheck(cudnnConvolutionBackwardData(c->cudnn, &one, p->w16_desc, cp.w, p->y16_desc, dy, p->bwd_data_desc,
                                                p->bwd_data, ws, p->ws_bwd_data, &zero, p->x16_desc, dx));
    }
    return ST_OK;
}

int cuda_conv_backward(void *ctx, const conv_desc *d, const void *x, const float *w, const void *y, void *dy,
                       void *dx, void *dw, void *db, void *ws) {
    cuda_ctx *c = (cuda_ctx *)ctx;
    const conv_plan *p = NULL;
    TRY(plan_get(d, "conv_backward", &p));
    // Stream order: the mask is applied before either convolution reads dy, and the partial sums in ws are
    // consumed before cuDNN reuses ws.
    TRY(conv_bias_grad(c, d, p, dy, y, db, ws));
    const float one = 1.f, zero = 0.f;
    if (p->nhwc) TRY(ws_check(p->wt_off + 1, ws, "conv_backward"));
    if (p->act16) return conv_backward_act16(c, d, p, x, w, dy, dx, dw, ws);
    // dy (masked) to 16 bits once, for each direction that reads it so (backward-data under precision,
    // backward-filter under grads16): exact for relu/relu6/none, whose masks are 0 or 1.
    lp_copies cp = {};
    if (p->lp && (dx || (dw && p->grads16))) {
        TRY(ws_check(p->lp_off + 1, ws, "conv_backward"));
        cp = lp_copies_at(d, p, ws);
        TRY(cuda_lp_cast_in(c, p->lp, cp.ny, (const float *)dy, cp.y));
    }
    if (dw) {  // under grads16 from the bf16 copies of x (cast here) and dy, else from the fp32 buffers
        const void *xs = x, *dys = dy;
        if (p->grads16) {
            TRY(cuda_lp_cast_in(c, p->lp, cp.nx, (const float *)x, cp.x));
            xs = cp.x, dys = cp.y;
        }
        TRY(conv_filter_grad(c, d, p, xs, dys, dw, ws));
    }
    if (dx && p->lp) {  // dx16 overwrites backward-filter's x16 copy, after it in stream order
        TRY(filter_lp(c, d, p, w, &cp));
        cudnnCheck(cudnnConvolutionBackwardData(c->cudnn, &one, p->w16_desc, cp.w, p->y16_desc, cp.y, p->bwd_data_desc,
                                                p->bwd_data, ws, p->ws_bwd_data, &zero, p->x16_desc, cp.x));
        TRY(cuda_lp_cast_out(c, p->lp, cp.nx, cp.x, (float *)dx));
    } else if (dx) {
        TRY(ws_check(p->ws_bwd_data, ws, "conv_backward"));
        int st = ST_OK;
        const float *wf = filter_for(c, d, p, w, ws, &st);  // after backward-filter has read its own copy out
        TRY(st);
        cudnnCheck(cudnnConvolutionBackwardData(c->cudnn, &one, p->w_desc, wf, p->y_desc, dy, p->bwd_data_desc,
                                                p->bwd_data, ws, p->ws_bwd_data, &zero, p->x_desc, dx));
    }
    return ST_OK;
}
