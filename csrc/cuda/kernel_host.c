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

/* k_filter_partials: block (f, chunk) adds its threads' partials in thread order (the device adds them pairwise;
 * either way a double sum of float values). mean == NULL: sums of x, else of (x - mean[f])^2. */
static void filter_partials(const float *x, const float *mean, int batch, int filters, size_t spatial, int chunks,
                            double *partial)
{
    const size_t threads = (size_t)chunks * DN_CUDA_BLOCK;
    for (int f = 0; f < filters; f++)
        for (int chunk = 0; chunk < chunks; chunk++) {
            double block = 0;
            for (int tid = 0; tid < DN_CUDA_BLOCK; tid++) {
                const size_t t = (size_t)chunk * DN_CUDA_BLOCK + tid;
                block += mean ? dn_filter_partial_sq(x, mean[f], f, batch, filters, spatial, t, threads)
                              : dn_filter_partial_sum(x, f, batch, filters, spatial, t, threads);
            }
            partial[(size_t)f * chunks + chunk] = block;
        }
}

/* 0, or -1 when the partial sums cannot be allocated. */
HK_EXPORT int hk_batchnorm_forward(const float *x, int batch, int filters, size_t spatial, const float *scales,
                                   const float *biases, float *mean, float *variance, float *rolling_mean,
                                   float *rolling_variance, int update_rolling, float *x_norm, float *out)
{
    const size_t count = (size_t)batch * spatial;
    const int chunks = dn_reduce_chunks(spatial);
    double *sums = malloc(sizeof(double) * 2 * (size_t)filters * chunks);
    if (!sums) return -1;
    double *squares = sums + (size_t)filters * chunks;
    filter_partials(x, NULL, batch, filters, spatial, chunks, sums);
    for (int f = 0; f < filters; f++) mean[f] = dn_bn_mean(dn_chunk_total(sums, f, chunks), (double)count);
    filter_partials(x, mean, batch, filters, spatial, chunks, squares);
    for (int f = 0; f < filters; f++) {
        dn_bn_stats(dn_chunk_total(sums, f, chunks), dn_chunk_total(squares, f, chunks), (double)count, &mean[f],
                    &variance[f]);
        if (update_rolling) dn_bn_rolling(&rolling_mean[f], &rolling_variance[f], mean[f], variance[f]);
    }
    for (size_t i = 0; i < count * filters; i++)
        dn_bn_normalize_one(x, mean, variance, scales, biases, filters, spatial, i, x_norm, out);
    free(sums);
    return 0;
}

HK_EXPORT int hk_bias_gradient(const float *delta, int batch, int filters, size_t spatial, float *bias_updates)
{
    const int chunks = dn_reduce_chunks(spatial);
    double *sums = malloc(sizeof(double) * (size_t)filters * chunks);
    if (!sums) return -1;
    filter_partials(delta, NULL, batch, filters, spatial, chunks, sums);
    for (int f = 0; f < filters; f++) bias_updates[f] += (float)dn_chunk_total(sums, f, chunks);
    free(sums);
    return 0;
}

HK_EXPORT int hk_batchnorm_backward(float *delta, const float *x, const float *x_norm, const float *mean,
                                    const float *variance, const float *scales, int batch, int filters,
                                    size_t spatial, float *scale_updates)
{
    const size_t count = (size_t)batch * spatial;
    const int chunks = dn_reduce_chunks(spatial);
    const size_t threads = (size_t)chunks * DN_CUDA_BLOCK;
    double *partial = malloc(sizeof(double) * 3 * (size_t)filters * chunks);
    float *coef = malloc(sizeof(float) * 3 * (size_t)filters);
    if (!partial || !coef) {
        free(partial);
        free(coef);
        return -1;
    }
    for (int f = 0; f < filters; f++) /* k_bn_back_partials */
        for (int chunk = 0; chunk < chunks; chunk++) {
            double *p = partial + 3 * ((size_t)f * chunks + chunk);
            p[0] = p[1] = p[2] = 0;
            for (int tid = 0; tid < DN_CUDA_BLOCK; tid++) {
                const dn_bn_back_sums s = dn_bn_back_partial(delta, x, x_norm, mean[f], scales[f], f, batch, filters,
                                                             spatial, (size_t)chunk * DN_CUDA_BLOCK + tid, threads);
                p[0] += s.dscale;
                p[1] += s.sum_g;
                p[2] += s.sum_gx;
            }
        }
    for (int f = 0; f < filters; f++) { /* k_bn_back_finish */
        const dn_bn_back_sums s = dn_bn_back_total(partial, f, chunks);
        scale_updates[f] += (float)s.dscale;
        dn_bn_back_coefficients(s, variance[f], (double)count, coef + 3 * f);
    }
    for (size_t i = 0; i < count * filters; i++) { /* k_bn_back_apply */
        const int f = dn_filter_of(i, filters, spatial);
        delta[i] = dn_bn_back_one(delta[i], x[i], mean[f], scales[f], coef + 3 * f);
    }
    free(partial);
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
