// precision.c — net.precision's names and the per-kind rule of what is held in the compute type (the rounding
// itself is inline in precision.h, shared by the CPU backend's op and the tests).
#include "precision.h"

int precision_emulated(int precision) {
    return precision == PREC_BF16 || precision == PREC_FP16 ? precision : PREC_FP32;
}

const char *precision_name(int precision) {
    switch (precision) {
    case PREC_TF32: return "tf32";
    case PREC_BF16: return "bf16";
    case PREC_FP16: return "fp16";
    default: return "fp32";
    }
}

// As PyTorch's autocast lists: convolutions and GEMMs run in the compute type (inputs, weight copy, output);
// batch norm normalises in fp32 (statistics, parameters, their gradients) and stores its output in the compute
// type; the memory-bound kinds compute in fp32 from compute-type inputs and store in the compute type (max pooling,
// concatenation and flatten only move values, so that rounding changes nothing); the loss is fp32.
unsigned precision_layer_rule(int layer_type) {
    switch (layer_type) {
    case LAYER_CONV:
    case LAYER_DENSE: return PREC_HOLD_OUTPUT | PREC_HOLD_WEIGHTS;
    case LAYER_SOFTMAX: return 0;
    default: return PREC_HOLD_OUTPUT;  // batchnorm, maxpool, avgpool, shortcut, route, dropout, flatten
    }
}
