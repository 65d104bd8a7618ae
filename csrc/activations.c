/* Activation functions and their derivatives (the CPU loops; the formulas are in elementwise.h). */
#include <math.h>
#include <string.h>

#include "elementwise.h"
#include "internal.h"

/* elementwise.h (shared with CUDA) numbers the activations itself: the two lists must agree. */
_Static_assert((int)ACT_LOGISTIC == DN_ACT_LOGISTIC && (int)ACT_RELU == DN_ACT_RELU &&
               (int)ACT_LINEAR == DN_ACT_LINEAR && (int)ACT_LEAKY == DN_ACT_LEAKY && (int)ACT_MISH == DN_ACT_MISH &&
               (int)ACT_SWISH == DN_ACT_SWISH && (int)ACT_TANH == DN_ACT_TANH,
               "activation codes of internal.h and elementwise.h differ");

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

/* The loops stay one per activation so that each vectorises; the formulas are elementwise.h's (shared with
 * the CUDA kernels). The leaky/relu selects are vector code only thanks to -fno-trapping-math (Makefile): as
 * branches, mispredicted on random signs, each direction cost 8% of yolov3-tiny's training time. */
void activate_array(float *x, size_t n, dn_activation a)
{
    switch (a) {
    case ACT_LINEAR: return;
    case ACT_LEAKY:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = dn_leaky(x[i]);
        return;
    case ACT_RELU:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = dn_relu(x[i]);
        return;
    case ACT_LOGISTIC:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = dn_logistic(x[i]);
        return;
    case ACT_TANH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = tanhf(x[i]);
        return;
    case ACT_MISH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = dn_mish(x[i]);
        return;
    case ACT_SWISH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) x[i] = dn_swish(x[i]);
        return;
    default: return;
    }
}

void gradient_array(const float *y, const float *x_raw, size_t n, dn_activation a, float *delta)
{
    switch (a) {
    case ACT_LINEAR: return;
    case ACT_LEAKY:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= dn_leaky_gradient(y[i]);
        return;
    case ACT_RELU:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= dn_relu_gradient(y[i]);
        return;
    case ACT_LOGISTIC:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= dn_logistic_gradient(y[i]);
        return;
    case ACT_TANH:
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= dn_tanh_gradient(y[i]);
        return;
    case ACT_MISH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= dn_mish_gradient(x_raw[i]);
        return;
    case ACT_SWISH:
#pragma omp parallel for schedule(static) if (n > 65536)
        for (size_t i = 0; i < n; i++) delta[i] *= dn_swish_gradient(x_raw[i]);
        return;
    default: return;
    }
}
