/* Activation functions and their derivatives. */
#include <math.h>
#include <string.h>

#include "internal.h"

static const char *const activation_names[ACT_COUNT] = {
    "logistic", "relu", "linear", "leaky", "mish", "swish", "tanh"};

DN_EXPORT const char *dn_activation_name(int code)
{
    return (code >= 0 && code < ACT_COUNT) ? activation_names[code] : "?";
}

int activation_from_name(const char *name, dn_activation *out)
{
    for (int i = 0; i < ACT_COUNT; i++) {
        if (strcmp(name, activation_names[i]) == 0) {
            *out = (dn_activation)i;
            return 1;
        }
    }
    return 0;
}

int activation_needs_input(dn_activation a) { return a == ACT_MISH || a == ACT_SWISH; }

static inline float softplus(float x)
{
    /* Numerically stable log(1 + e^x). */
    return x > 20.f ? x : (x < -20.f ? expf(x) : log1pf(expf(x)));
}

void activate_array(float *x, size_t n, dn_activation a)
{
    switch (a) {
    case ACT_LINEAR: return;
    case ACT_LEAKY:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : .1f * x[i];
        return;
    case ACT_RELU:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0;
        return;
    case ACT_LOGISTIC:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = 1.f / (1.f + expf(-x[i]));
        return;
    case ACT_TANH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = tanhf(x[i]);
        return;
    case ACT_MISH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = x[i] * tanhf(softplus(x[i]));
        return;
    case ACT_SWISH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = x[i] / (1.f + expf(-x[i]));
        return;
    default: return;
    }
}

/* The leaky/relu selects below are vectorised only thanks to -fno-trapping-math (Makefile): as branches,
 * mispredicted on random signs, each direction cost 8% of yolov3-tiny's training time. */
void gradient_array(const float *y, const float *x_raw, size_t n, dn_activation a, float *delta)
{
    switch (a) {
    case ACT_LINEAR: return;
    case ACT_LEAKY:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= y[i] > 0 ? 1.f : .1f;
        return;
    case ACT_RELU:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= y[i] > 0 ? 1.f : 0.f;
        return;
    case ACT_LOGISTIC:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= y[i] * (1.f - y[i]);
        return;
    case ACT_TANH:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= 1.f - y[i] * y[i];
        return;
    case ACT_MISH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float x = x_raw[i], sp = softplus(x), t = tanhf(sp), sig = 1.f / (1.f + expf(-x));
            delta[i] *= t + x * (1.f - t * t) * sig;
        }
        return;
    case ACT_SWISH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) {
            float sig = 1.f / (1.f + expf(-x_raw[i]));
            delta[i] *= sig + x_raw[i] * sig * (1.f - sig);
        }
        return;
    default: return;
    }
}
