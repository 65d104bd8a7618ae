/* Per-element arithmetic shared by the CPU loops (kernels_cpu.c, activations.c, yolo_loss.c) and their CUDA
 * twins (cuda/kernels.cu): one definition of each formula, compiled for the host by the C compiler and for
 * both host and device by nvcc, so the CPU tests cover the math and the GPU tests cover the indexing.
 * Only static inline functions of plain floats and ints: no state, no allocation, no includes but math.h and float.h. */
#ifndef DN_ELEMENTWISE_H
#define DN_ELEMENTWISE_H

#include <float.h>
#include <math.h>

#ifdef __CUDACC__
#define DN_HD __host__ __device__ __forceinline__
#else
#define DN_HD static inline
#endif

/* Activation codes (internal.h's dn_activation): kept in this order everywhere. */
enum { DN_ACT_LOGISTIC = 0, DN_ACT_RELU, DN_ACT_LINEAR, DN_ACT_LEAKY, DN_ACT_MISH, DN_ACT_SWISH, DN_ACT_TANH };

/* Darknet normalises with sqrt(var) + 1e-6 (not sqrt(var + eps)); kept so pretrained weights give its numbers. */
#define DN_BN_EPS .000001f

DN_HD float dn_logistic(float x) { return 1.f / (1.f + expf(-x)); }

/* Numerically stable log(1 + e^x). */
DN_HD float dn_softplus(float x) { return x > 20.f ? x : (x < -20.f ? expf(x) : log1pf(expf(x))); }

DN_HD float dn_leaky(float x) { return x > 0 ? x : .1f * x; }
DN_HD float dn_relu(float x) { return x > 0 ? x : 0.f; }
DN_HD float dn_mish(float x) { return x * tanhf(dn_softplus(x)); }
DN_HD float dn_swish(float x) { return x * dn_logistic(x); }

DN_HD float dn_activate_one(float x, int a)
{
    switch (a) {
    case DN_ACT_LOGISTIC: return dn_logistic(x);
    case DN_ACT_RELU: return dn_relu(x);
    case DN_ACT_LEAKY: return dn_leaky(x);
    case DN_ACT_MISH: return dn_mish(x);
    case DN_ACT_SWISH: return dn_swish(x);
    case DN_ACT_TANH: return tanhf(x);
    default: return x;
    }
}

/* The derivative factor of an activation, from its output y (and its input x_raw for mish and swish). */
DN_HD float dn_leaky_gradient(float y) { return y > 0 ? 1.f : .1f; }
DN_HD float dn_relu_gradient(float y) { return y > 0 ? 1.f : 0.f; }
DN_HD float dn_logistic_gradient(float y) { return y * (1.f - y); }
DN_HD float dn_tanh_gradient(float y) { return 1.f - y * y; }
DN_HD float dn_mish_gradient(float x)
{
    const float t = tanhf(dn_softplus(x)), sig = dn_logistic(x);
    return t + x * (1.f - t * t) * sig;
}
DN_HD float dn_swish_gradient(float x)
{
    const float sig = dn_logistic(x);
    return sig + x * sig * (1.f - sig);
}

DN_HD float dn_gradient_one(float y, float x_raw, int a)
{
    switch (a) {
    case DN_ACT_LOGISTIC: return dn_logistic_gradient(y);
    case DN_ACT_RELU: return dn_relu_gradient(y);
    case DN_ACT_LEAKY: return dn_leaky_gradient(y);
    case DN_ACT_MISH: return dn_mish_gradient(x_raw);
    case DN_ACT_SWISH: return dn_swish_gradient(x_raw);
    case DN_ACT_TANH: return dn_tanh_gradient(y);
    default: return 1.f;
    }
}

/* One parameter's SGD step (SPEC §3): u -= decay_b * w; w += lr_over_b * u; u *= momentum. */
DN_HD void dn_sgd_one(float *w, float *u, float lr_over_b, float momentum, float decay_b)
{
    float uu = *u - decay_b * *w;
    *w += lr_over_b * uu;
    *u = uu * momentum;
}

/* Bias and batch norm at inference folded into y = x * mul + add; without batch norm (has_bn = 0) mul = 1 and
 * add = bias. */
DN_HD void dn_bn_fold(int has_bn, float bias, float scale, float rolling_mean, float rolling_variance, float *mul,
                      float *add)
{
    if (has_bn) {
        *mul = scale / (sqrtf(rolling_variance) + DN_BN_EPS);
        *add = bias - rolling_mean * *mul;
    } else {
        *mul = 1.f;
        *add = bias;
    }
}

/* [yolo] activation of one value: entry is its index within the anchor's 5 + classes entries (0 x, 1 y, 2 w,
 * 3 h, 4 objectness, 5.. classes). lin: raw w/h <= 0 become e^value (the reference's behaviour). */
DN_HD float dn_yolo_activate_one(float v, int entry, int representation_lin)
{
    if (entry == 2 || entry == 3) return (representation_lin && v <= 0) ? expf(v) : v;
    return dn_logistic(v);
}

/* Max pooling of one window whose top-left cell is (y0, x0) of a height x width plane: cells outside the plane are
 * skipped, the first maximum in scan order wins (strict >); -FLT_MAX and *best_i = -1 when none is inside. */
DN_HD float dn_maxpool_window(const float *plane, int height, int width, int y0, int x0, int size, int *best_i)
{
    float best = -FLT_MAX;
    *best_i = -1;
    for (int ky = 0; ky < size; ky++) {
        const int iy = y0 + ky;
        if (iy < 0 || iy >= height) continue;
        for (int kx = 0; kx < size; kx++) {
            const int ix = x0 + kx;
            if (ix < 0 || ix >= width) continue;
            const float v = plane[iy * width + ix];
            if (v > best) {
                best = v;
                *best_i = iy * width + ix;
            }
        }
    }
    return best;
}

#endif
