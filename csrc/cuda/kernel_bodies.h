/* The per-index bodies of the CUDA kernels (cuda/kernels.cu): what one thread computes for one index, as plain
 * host/device inline functions. nvcc compiles them into the kernels; gcc compiles them for the host in
 * kernel_host.c, which loops over every index so the tests (tests/test_kernel_host.py) check the indexing
 * against numpy twins of the CPU loops without a GPU. Only what needs shared memory or barriers (the block
 * reductions) stays in kernels.cu; the per-thread part of those reductions is here too.
 *
 * Formulas and layouts are those of the CPU loops (blas.c im2col/col2im_add, layer_*.c, yolo_loss.c); each
 * body says which. Sizes: int for image geometry, size_t for flat indices. */
#ifndef DN_CUDA_KERNEL_BODIES_H
#define DN_CUDA_KERNEL_BODIES_H

#include <float.h>
#include <stddef.h>

#include "../elementwise.h"

/* Threads per block of the kernels. */
#define DN_CUDA_BLOCK 256
/* A per-filter reduction runs on up to this many blocks per filter (grid: chunks x filters), each writing one
 * partial sum; a second kernel adds a filter's partials in chunk order (deterministic, no atomics). */
#define DN_REDUCE_MAX_CHUNKS 64

/* Index arithmetic in 32 bits when both operands fit (64-bit division is several times slower on a GPU). */
DN_HD size_t dn_div(size_t a, size_t b)
{
    return ((a | b) >> 32) ? a / b : (size_t)((unsigned)a / (unsigned)b);
}
DN_HD size_t dn_mod(size_t a, size_t b)
{
    return ((a | b) >> 32) ? a % b : (size_t)((unsigned)a % (unsigned)b);
}

/* Blocks per filter of a reduction over `spatial` positions of each image: about 8 values per thread of a
 * row, between 1 and DN_REDUCE_MAX_CHUNKS. */
DN_HD int dn_reduce_chunks(size_t spatial)
{
    const size_t per_block = (size_t)DN_CUDA_BLOCK * 8;
    const size_t chunks = (spatial + per_block - 1) / per_block;
    return chunks < 1 ? 1 : (chunks > DN_REDUCE_MAX_CHUNKS ? DN_REDUCE_MAX_CHUNKS : (int)chunks);
}

/* ---- im2col / col2im (blas.c) ---- */

/* col[(c*k*k + ky*k + kx) * (oh*ow) + y*ow + x] = im[c][y*stride - pad + ky][x*stride - pad + kx] or 0. */
DN_HD float dn_im2col_at(const float *im, int height, int width, int ksize, int stride, int pad, int oh, int ow,
                         size_t i)
{
    const size_t row = dn_div(i, (size_t)ow), r = dn_div(row, (size_t)oh);
    const int x = (int)(i - row * ow), y = (int)(row - r * oh);
    const size_t rk = dn_div(r, (size_t)ksize), c = dn_div(rk, (size_t)ksize);
    const int kx = (int)(r - rk * ksize), ky = (int)(rk - c * ksize);
    const int iy = y * stride - pad + ky, ix = x * stride - pad + kx;
    if (iy < 0 || iy >= height || ix < 0 || ix >= width) return 0.f;
    return im[(c * height + iy) * width + ix];
}

/* col2im_add gathered per image cell i = (c, iy, ix): the column entries that im2col took from this cell, added
 * in the order the CPU loop adds them (ky, then kx), so the result is the CPU's to the bit. */
DN_HD float dn_col2im_cell(const float *col, const float *im, int height, int width, int ksize, int stride, int pad,
                           int oh, int ow, size_t i)
{
    const size_t row = dn_div(i, (size_t)width), c = dn_div(row, (size_t)height);
    const int ix = (int)(i - row * width), iy = (int)(row - c * height);
    float acc = im[i];
    for (int ky = 0; ky < ksize; ky++) {
        const int ty = iy + pad - ky; /* = y * stride */
        if (ty < 0 || ty % stride) continue;
        const int y = ty / stride;
        if (y >= oh) continue;
        for (int kx = 0; kx < ksize; kx++) {
            const int tx = ix + pad - kx;
            if (tx < 0 || tx % stride) continue;
            const int x = tx / stride;
            if (x >= ow) continue;
            acc += col[((c * ksize + ky) * ksize + kx) * oh * ow + (size_t)y * ow + x];
        }
    }
    return acc;
}

/* ---- bias and batch norm (layer_convolutional.c), x: batch x filters x spatial ---- */

DN_HD int dn_filter_of(size_t i, int filters, size_t spatial)
{
    return (int)dn_mod(dn_div(i, spatial), (size_t)filters);
}

/* One thread's share of a per-filter reduction: positions t, t + threads, ... of every image's row of filter f
 * (t numbers the threads of all the filter's blocks). */
DN_HD double dn_filter_partial_sum(const float *x, int f, int batch, int filters, size_t spatial, size_t t,
                                   size_t threads)
{
    double s = 0;
    for (int b = 0; b < batch; b++) {
        const float *row = x + ((size_t)b * filters + f) * spatial;
        for (size_t i = t; i < spatial; i += threads) s += row[i];
    }
    return s;
}

DN_HD double dn_filter_partial_sq(const float *x, float mean, int f, int batch, int filters, size_t spatial,
                                  size_t t, size_t threads)
{
    double s = 0;
    for (int b = 0; b < batch; b++) {
        const float *row = x + ((size_t)b * filters + f) * spatial;
        for (size_t i = t; i < spatial; i += threads) {
            const float d = row[i] - mean;
            s += (double)(d * d);
        }
    }
    return s;
}

/* A filter's total from its blocks' partial sums (partial[f * chunks + chunk]), added in chunk order. */
DN_HD double dn_chunk_total(const double *partial, int f, int chunks)
{
    double s = 0;
    for (int k = 0; k < chunks; k++) s += partial[(size_t)f * chunks + k];
    return s;
}

/* Batch statistics from the sums (the CPU's: mean in double then float, unbiased variance). */
DN_HD void dn_bn_stats(double sum, double sq, double count, float *mean, float *variance)
{
    *mean = (float)(sum / count);
    *variance = count > 1 ? (float)(sq / (count - 1)) : 0.f;
}
/* The float mean that the variance pass subtracts (same rounding as dn_bn_stats). */
DN_HD float dn_bn_mean(double sum, double count) { return (float)(sum / count); }

DN_HD void dn_bn_rolling(float *rolling_mean, float *rolling_variance, float mean, float variance)
{
    *rolling_mean = .99f * *rolling_mean + .01f * mean;
    *rolling_variance = .99f * *rolling_variance + .01f * variance;
}

/* x_norm = (x - mean) / (sqrt(var) + eps); out = x_norm * scale + bias. */
DN_HD void dn_bn_normalize_one(const float *x, const float *mean, const float *variance, const float *scales,
                               const float *biases, int filters, size_t spatial, size_t i, float *x_norm, float *out)
{
    const int f = dn_filter_of(i, filters, spatial);
    const float inv = 1.f / (sqrtf(variance[f]) + DN_BN_EPS);
    const float xn = (x[i] - mean[f]) * inv;
    x_norm[i] = xn;
    out[i] = xn * scales[f] + biases[f];
}

DN_HD float dn_affine_one(float v, const float *biases, const float *scales, const float *rolling_mean,
                          const float *rolling_variance, int filters, size_t spatial, size_t i)
{
    const int f = dn_filter_of(i, filters, spatial);
    float mul, add;
    dn_bn_fold(scales != NULL, biases[f], scales ? scales[f] : 1.f, scales ? rolling_mean[f] : 0.f,
               scales ? rolling_variance[f] : 1.f, &mul, &add);
    return v * mul + add;
}

/* Batch norm's backward: the three per-filter sums of one thread (sum d*x_norm, sum g, sum g*(x - mean) with
 * g = d * scale), then the per-element step from them (conv_backward of layer_convolutional.c). */
typedef struct dn_bn_back_sums { double dscale, sum_g, sum_gx; } dn_bn_back_sums;

DN_HD dn_bn_back_sums dn_bn_back_partial(const float *delta, const float *x, const float *x_norm, float mean,
                                         float scale, int f, int batch, int filters, size_t spatial, size_t t,
                                         size_t threads)
{
    dn_bn_back_sums s = {0, 0, 0};
    for (int b = 0; b < batch; b++) {
        const size_t base = ((size_t)b * filters + f) * spatial;
        for (size_t i = base + t; i < base + spatial; i += threads) {
            const float d = delta[i];
            const float g = d * scale;
            s.dscale += (double)(d * x_norm[i]);
            s.sum_g += (double)g;
            s.sum_gx += (double)(g * (x[i] - mean));
        }
    }
    return s;
}

/* A filter's three totals from its blocks' partials (partial[3 * (f * chunks + chunk) + 0, 1, 2]). */
DN_HD dn_bn_back_sums dn_bn_back_total(const double *partial, int f, int chunks)
{
    dn_bn_back_sums s = {0, 0, 0};
    for (int k = 0; k < chunks; k++) {
        const double *p = partial + 3 * ((size_t)f * chunks + k);
        s.dscale += p[0];
        s.sum_g += p[1];
        s.sum_gx += p[2];
    }
    return s;
}

/* From the sums of filter f: coef[0] = mean of g, coef[1] = 1/(sigma + eps), coef[2] = the variance term k. */
DN_HD void dn_bn_back_coefficients(dn_bn_back_sums s, float variance, double count, float coef[3])
{
    const float sigma = sqrtf(variance);
    const float sd = sigma + DN_BN_EPS;
    const double dsigma = -s.sum_gx / ((double)sd * sd);
    coef[0] = (float)(s.sum_g / count);
    coef[1] = 1.f / sd;
    coef[2] = (float)((sigma > 0 && count > 1) ? dsigma / (sigma * (count - 1)) : 0.0);
}

DN_HD float dn_bn_back_one(float d, float x, float mean, float scale, const float coef[3])
{
    return (d * scale - coef[0]) * coef[1] + coef[2] * (x - mean);
}

/* ---- maxpool (layer_maxpool.c): the window starts at offset = -padding/2, cells outside are skipped, the
 * first maximum in scan order wins (strict >), best starts at -FLT_MAX and the index at -1. ---- */
DN_HD float dn_maxpool_one(const float *in, int channels, int height, int width, int size, int stride, int offset,
                           int out_h, int out_w, size_t o, int *argmax_out)
{
    const size_t row = dn_div(o, (size_t)out_w), bc = dn_div(row, (size_t)out_h); /* bc: image * channels + c */
    const int x = (int)(o - row * out_w), y = (int)(row - bc * out_h);
    const int c = (int)dn_mod(bc, (size_t)channels);
    int best_i;
    const float best = dn_maxpool_window(in + bc * height * width, height, width, offset + y * stride,
                                         offset + x * stride, size, &best_i);
    *argmax_out = best_i < 0 ? -1 : c * height * width + best_i;
    return best;
}

/* Where output o's delta goes in the batch's input delta (-1: nowhere). */
DN_HD long long dn_maxpool_target(const int *argmax, size_t outputs, size_t inputs, size_t o)
{
    const int j = argmax[o];
    return j < 0 ? -1 : (long long)(dn_div(o, outputs) * inputs + (size_t)j);
}

/* ---- upsample (layer_upsample.c) ---- */
DN_HD float dn_upsample_one(const float *in, int height, int width, int stride, float scale, size_t o)
{
    const int ow = width * stride, oh = height * stride;
    const size_t row = dn_div(o, (size_t)ow), bc = dn_div(row, (size_t)oh);
    const int x = (int)(o - row * ow), y = (int)(row - bc * oh);
    return scale * in[(bc * height + y / stride) * width + x / stride];
}

/* Backward gathered per input cell, adding the stride x stride outputs in the CPU's order (rows, then columns). */
DN_HD float dn_upsample_back_cell(const float *delta, const float *in_delta, int height, int width, int stride,
                                  float scale, size_t i)
{
    const int ow = width * stride, oh = height * stride;
    const size_t row = dn_div(i, (size_t)width), bc = dn_div(row, (size_t)height);
    const int ix = (int)(i - row * width), iy = (int)(row - bc * height);
    const float *src = delta + bc * oh * ow;
    float acc = in_delta[i];
    for (int dy = 0; dy < stride; dy++)
        for (int dx = 0; dx < stride; dx++) acc += scale * src[(size_t)(iy * stride + dy) * ow + ix * stride + dx];
    return acc;
}

/* ---- [yolo] (yolo_loss.c yolo_activate): value i of layout [batch][anchor][entry][h*w] ---- */
DN_HD float dn_yolo_activate_at(const float *in, int entries, int hw, int representation_lin, size_t i)
{
    const int entry = (int)dn_mod(dn_div(i, (size_t)hw), (size_t)entries);
    return dn_yolo_activate_one(in[i], entry, representation_lin);
}

/* ---- copy_rows ---- */
DN_HD void dn_copy_rows_one(size_t cols, const float *src, size_t src_stride, float *dst, size_t dst_stride,
                            int accumulate, size_t i)
{
    const size_t r = dn_div(i, cols), k = i - r * cols;
    const float v = src[r * src_stride + k];
    float *d = dst + r * dst_stride + k;
    *d = accumulate ? *d + v : v;
}

#endif
