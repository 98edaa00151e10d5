// act_math.h — the activations of backend.h, one copy for both backends (compiled by the CPU files and by nvcc,
// as src/gather_aug.h): act_apply, the derivative read from the output y (act_grad, for the kinds act_from_output
// allows: PyTorch's relu6 passes the gradient for 0 < y < 6, sigmoid's is g·(1 − y)·y) and at the
// pre-activation x (act_grad_input, every activation; PyTorch's backward formulas: hardswish's is 0 below -3,
// g above 3 and g·(x/3 + 1/2) on [-3, 3]; gelu's g·(Φ(x) + x·φ(x))). `v > 0`: a NaN becomes 0 under relu,
// leaky and relu6. The CPU backend is the reference the CUDA ops are tested against; here they are one text.
#pragma once
#include <math.h>

#include "backend.h"

#ifdef __CUDACC__
#define ACT_FN static __host__ __device__ __forceinline__
#else
#define ACT_FN static inline
#endif

#define ACT_SQRT1_2 0.70710678118654752440f       // 1/√2
#define ACT_INV_SQRT_2PI 0.39894228040143267794f  // 1/√(2π): the normal density's factor

ACT_FN float act_sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

ACT_FN float act_apply(int act, float v) {
    switch (act) {
    case ACT_RELU: return v > 0.0f ? v : 0.0f;
    case ACT_LEAKY: return v > 0.0f ? v : ACT_LEAKY_SLOPE * v;
    case ACT_RELU6: return v > 0.0f ? (v < 6.0f ? v : 6.0f) : 0.0f;
    case ACT_SIGMOID: return act_sigmoid(v);
    case ACT_SILU: return v / (1.0f + expf(-v));
    case ACT_HARDSWISH: {
        const float r = v + 3.0f > 0.0f ? (v + 3.0f < 6.0f ? v + 3.0f : 6.0f) : 0.0f;
        return v * r / 6.0f;
    }
    case ACT_GELU: return v * 0.5f * (1.0f + erff(v * ACT_SQRT1_2));
    default: return v;
    }
}

ACT_FN float act_grad(int act, float y, float g) {
    switch (act) {
    case ACT_RELU: return y > 0.0f ? g : 0.0f;
    case ACT_LEAKY: return y > 0.0f ? g : ACT_LEAKY_SLOPE * g;
    case ACT_RELU6: return y > 0.0f && y < 6.0f ? g : 0.0f;
    case ACT_SIGMOID: return g * (1.0f - y) * y;
    default: return g;
    }
}

// g · act'(x) at the pre-activation x, for every activation (PyTorch's backward formulas: hardswish's is 0 below
// -3, g above 3 and g·(x/3 + 1/2) on [-3, 3]; gelu's g·(Φ(x) + x·φ(x))).
ACT_FN float act_grad_input(int act, float x, float g) {
    switch (act) {
    case ACT_RELU: return x > 0.0f ? g : 0.0f;
    case ACT_LEAKY: return x > 0.0f ? g : ACT_LEAKY_SLOPE * g;
    case ACT_RELU6: return x > 0.0f && x < 6.0f ? g : 0.0f;
    case ACT_SIGMOID: {
        const float s = act_sigmoid(x);
        return g * (1.0f - s) * s;
    }
    case ACT_SILU: {
        const float s = act_sigmoid(x);
        return g * s * (1.0f + x * (1.0f - s));
    }
    case ACT_HARDSWISH: return x < -3.0f ? 0.0f : x <= 3.0f ? g * (x / 3.0f + 0.5f) : g;
    case ACT_GELU: {
        const float cdf = 0.5f * (1.0f + erff(x * ACT_SQRT1_2));
        const float pdf = expf(-0.5f * x * x) * ACT_INV_SQRT_2PI;
        return g * (cdf + x * pdf);
    }
    default: return g;
    }
}
