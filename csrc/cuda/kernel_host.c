/* A host build of the CUDA kernels' per-index bodies (kernel_bodies.h), for tests on machines without a GPU:
 * each function below does what its kernel in kernels.cu launches, one index after the other, and the block
 * reductions add the DN_CUDA_BLOCK threads' partial sums in thread order. tests/test_kernel_host.py compiles
 * this file with the C compiler into its own library (never part of libdarknet.so) and compares the results
 * with the CPU engine's and with numpy. Arguments as in backend.h's dn_kernels, without the backend. */
#include <stdlib.h>

#include "../darknet.h"
#include "kernel_bodies.h"

#define HK_EXPORT __attribute__((visibility("default")))

static int conv_out(int n, int ksize, int stride, int pad) { return (n + 2 * pad - ksize) / stride + 1; }

HK_EXPORT void hk_im2col(const float *im, int channels, int height, int width, int ksize, int stride, int pad,
                         float *col)
{
    const int oh = conv_out(height, ksize, stride, pad), ow = conv_out(width, ksize, stride, pad);
    const size_t n = (size_t)channels * ksize * ksize * oh * ow;
    for (size_t i = 0; i < n; i++) col[i] = dn_im2col_at(im, height, width, ksize, stride, pad, oh, ow, i);
}

HK_EXPORT void hk_col2im_add(const float *col, int channels, int height, int width, int ksize, int stride, int pad,
                             float *im)
{
    const int oh = conv_out(height, ksize, stride, pad), ow = conv_out(width, ksize, stride, pad);
    const size_t n = (size_t)channels * height * width;
    for (size_t i = 0; i < n; i++) im[i] = dn_col2im_cell(col, im, height, width, ksize, stride, pad, oh, ow, i);
}

HK_EXPORT void hk_activate(float *x, size_t n, int activation)
{
    for (size_t i = 0; i < n; i++) x[i] = dn_activate_one(x[i], activation);
}

HK_EXPORT void hk_gradient(const float *y, const float *x_raw, size_t n, int activation, float *delta)
{
    for (size_t i = 0; i < n; i++) delta[i] *= dn_gradient_one(y[i], x_raw ? x_raw[i] : 0.f, activation);
}

HK_EXPORT void hk_copy_rows(size_t rows, size_t cols, const float *src, size_t src_stride, float *dst,
                            size_t dst_stride, int accumulate)
{
    for (size_t i = 0; i < rows * cols; i++) dn_copy_rows_one(cols, src, src_stride, dst, dst_stride, accumulate, i);
}

HK_EXPORT void hk_affine_inference(float *x, int batch, int filters, size_t spatial, const float *biases,
                                   const float *scales, const float *rolling_mean, const float *rolling_variance)
{
    const size_t n = (size_t)batch * filters * spatial;
    for (size_t i = 0; i < n; i++)
        x[i] = dn_affine_one(x[i], biases, scales, rolling_mean, rolling_variance, filters, spatial, i);
}

HK_EXPORT void hk_batchnorm_forward(const float *x, int batch, int filters, size_t spatial, const float *scales,
                                    const float *biases, float *mean, float *variance, float *rolling_mean,
                                    float *rolling_variance, int update_rolling, float *x_norm, float *out)
{
    const size_t count = (size_t)batch * spatial;
    for (int f = 0; f < filters; f++) { /* k_bn_stats: one block per filter */
        double sum = 0, sq = 0;
        for (int t = 0; t < DN_CUDA_BLOCK; t++)
            sum += dn_filter_partial_sum(x, f, filters, spatial, count, t, DN_CUDA_BLOCK);
        const float mean_f = dn_bn_mean(sum, (double)count);
        for (int t = 0; t < DN_CUDA_BLOCK; t++)
            sq += dn_filter_partial_sq(x, mean_f, f, filters, spatial, count, t, DN_CUDA_BLOCK);
        dn_bn_stats(sum, sq, (double)count, &mean[f], &variance[f]);
        if (update_rolling) dn_bn_rolling(&rolling_mean[f], &rolling_variance[f], mean[f], variance[f]);
    }
    for (size_t i = 0; i < count * filters; i++)
        dn_bn_normalize_one(x, mean, variance, scales, biases, filters, spatial, i, x_norm, out);
}

HK_EXPORT void hk_bias_gradient(const float *delta, int batch, int filters, size_t spatial, float *bias_updates)
{
    for (int f = 0; f < filters; f++) {
        double sum = 0;
        for (int t = 0; t < DN_CUDA_BLOCK; t++)
            sum += dn_filter_partial_sum(delta, f, filters, spatial, (size_t)batch * spatial, t, DN_CUDA_BLOCK);
        bias_updates[f] += (float)sum;
    }
}

/* 0, or -1 when the coefficients' scratch cannot be allocated. */
HK_EXPORT int hk_batchnorm_backward(float *delta, const float *x, const float *x_norm, const float *mean,
                                    const float *variance, const float *scales, int batch, int filters,
                                    size_t spatial, float *scale_updates)
{
    const size_t count = (size_t)batch * spatial;
    float *coef = malloc(sizeof(float) * 3 * (size_t)filters);
    if (!coef) return -1;
    for (int f = 0; f < filters; f++) { /* k_bn_back_sums */
        dn_bn_back_sums s = {0, 0, 0};
        for (int t = 0; t < DN_CUDA_BLOCK; t++) {
            const dn_bn_back_sums p = dn_bn_back_partial(delta, x, x_norm, mean[f], scales[f], f, filters, spatial,
                                                         count, t, DN_CUDA_BLOCK);
            s.dscale += p.dscale;
            s.sum_g += p.sum_g;
            s.sum_gx += p.sum_gx;
        }
        scale_updates[f] += (float)s.dscale;
        dn_bn_back_coefficients(s, variance[f], (double)count, coef + 3 * f);
    }
    for (size_t i = 0; i < count * filters; i++) { /* k_bn_back_apply */
        const int f = dn_filter_of(i, filters, spatial);
        delta[i] = dn_bn_back_one(delta[i], x[i], mean[f], scales[f], coef + 3 * f);
    }
    free(coef);
    return 0;
}

HK_EXPORT void hk_sgd_update(float *w, float *u, size_t n, float lr_over_b, float momentum, float decay_b)
{
    for (size_t i = 0; i < n; i++) dn_sgd_one(&w[i], &u[i], lr_over_b, momentum, decay_b);
}

HK_EXPORT void hk_maxpool_forward(const float *in, int batch, int channels, int height, int width, int size,
                                  int stride, int padding, int out_h, int out_w, float *out, int *argmax)
{
    const size_t n = (size_t)batch * channels * out_h * out_w;
    for (size_t o = 0; o < n; o++) {
        int a;
        out[o] = dn_maxpool_one(in, channels, height, width, size, stride, -padding / 2, out_h, out_w, o, &a);
        if (argmax) argmax[o] = a;
    }
}

HK_EXPORT void hk_maxpool_backward(const float *delta, const int *argmax, int batch, size_t outputs, size_t inputs,
                                   float *in_delta)
{
    for (size_t o = 0; o < (size_t)batch * outputs; o++) {
        const long long t = dn_maxpool_target(argmax, outputs, inputs, o);
        if (t >= 0) in_delta[t] += delta[o];
    }
}

HK_EXPORT void hk_upsample_forward(const float *in, int batch, int channels, int height, int width, int stride,
                                   float scale, float *out)
{
    const size_t n = (size_t)batch * channels * height * stride * width * stride;
    for (size_t o = 0; o < n; o++) out[o] = dn_upsample_one(in, height, width, stride, scale, o);
}

HK_EXPORT void hk_upsample_backward(const float *delta, int batch, int channels, int height, int width, int stride,
                                    float scale, float *in_delta)
{
    const size_t n = (size_t)batch * channels * height * width;
    for (size_t i = 0; i < n; i++) in_delta[i] = dn_upsample_back_cell(delta, in_delta, height, width, stride, scale, i);
}

HK_EXPORT void hk_yolo_activate(const float *in, int batch, int n, int classes, int h, int w, int representation,
                                float *out)
{
    const int entries = 5 + classes;
    const size_t total = (size_t)batch * n * entries * h * w;
    for (size_t i = 0; i < total; i++) out[i] = dn_yolo_activate_at(in, entries, h * w, representation == DN_REPR_LIN, i);
}
