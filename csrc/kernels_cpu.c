/* The CPU kernels of backend.h: the reference every other backend's kernels are tested against.
 *
 * These are the engine's tuned loops (moved here from the layer files): batch-norm sums vectorised in float over
 * blocks of a plane (double totals), maxpool windows inside the image without bounds tests or branches, the
 * activation selects of activations.c, dn_gemm's threading. Per-element formulas come from elementwise.h,
 * which the CUDA kernels share. All pointers are host memory. */
#include <float.h>
#include <string.h>

#include "elementwise.h"
#include "internal.h"
#include "layout_pack.h"
#include "yolo_loss.h"

static dn_status cpu_gemm(dn_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                          int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    (void)be;
    dn_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return DN_OK;
}

static dn_status cpu_im2col(dn_backend *be, const float *im, int channels, int height, int width, int ksize,
                            int stride, int pad, float *col)
{
    (void)be;
    im2col(im, channels, height, width, ksize, stride, pad, col);
    return DN_OK;
}

static dn_status cpu_col2im_add(dn_backend *be, const float *col, int channels, int height, int width, int ksize,
                                int stride, int pad, float *im)
{
    (void)be;
    col2im_add(col, channels, height, width, ksize, stride, pad, im);
    return DN_OK;
}

static dn_status cpu_activate(dn_backend *be, float *x, size_t n, int activation)
{
    (void)be;
    activate_array(x, n, (dn_activation)activation);
    return DN_OK;
}

static dn_status cpu_gradient(dn_backend *be, const float *y, const float *x_raw, size_t n, int activation,
                              float *delta)
{
    (void)be;
    gradient_array(y, x_raw, n, (dn_activation)activation, delta);
    return DN_OK;
}

static dn_status cpu_add(dn_backend *be, size_t n, const float *a, const float *b, float *out)
{
    (void)be;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
    return DN_OK;
}

static dn_status cpu_axpy(dn_backend *be, size_t n, float alpha, const float *x, float *y)
{
    (void)be;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) y[i] += alpha * x[i];
    return DN_OK;
}

static dn_status cpu_copy_rows(dn_backend *be, size_t rows, size_t cols, const float *src, size_t src_stride,
                               float *dst, size_t dst_stride, int accumulate)
{
    (void)be;
    for (size_t r = 0; r < rows; r++) {
        const float *s = src + r * src_stride;
        float *d = dst + r * dst_stride;
        if (accumulate) {
            for (size_t i = 0; i < cols; i++) d[i] += s[i];
        } else {
            memcpy(d, s, sizeof(float) * cols);
        }
    }
    return DN_OK;
}

static dn_status cpu_affine_inference(dn_backend *be, float *x, int batch, int filters, size_t spatial,
                                      const float *biases, const float *scales, const float *rolling_mean,
                                      const float *rolling_variance)
{
    (void)be;
    const size_t outputs = (size_t)filters * spatial;
    /* Normalisation, scale and bias fused into one multiply-add per value. */
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++) {
        for (int c = 0; c < filters; c++) {
            float *v = x + b * outputs + c * spatial;
            float mul, add;
            if (scales) dn_bn_fold(1, biases[c], scales[c], rolling_mean[c], rolling_variance[c], &mul, &add);
            else dn_bn_fold(0, biases[c], 0.f, 0.f, 0.f, &mul, &add);
            for (size_t i = 0; i < spatial; i++) v[i] = v[i] * mul + add;
        }
    }
    return DN_OK;
}

/* Sums of one plane: of v, and of (v - m)^2. Vectorised in float over blocks of SUM_BLOCK values, the blocks added
 * in double: a whole plane in float (416x416 values) put the batch statistics of yolov3-tiny's first layer about
 * 1e-5 off, and its outputs up to 9e-5 of their largest (against float64); blocks keep them within float's
 * rounding. */
#define SUM_BLOCK 1024

static DN_VEC_CLONES double plane_sum(const float *v, size_t n)
{
    double total = 0;
    for (size_t i0 = 0; i0 < n; i0 += SUM_BLOCK) {
        const size_t end = n - i0 < SUM_BLOCK ? n : i0 + SUM_BLOCK;
        float r = 0;
#pragma omp simd reduction(+:r)
        for (size_t i = i0; i < end; i++) r += v[i];
        total += r;
    }
    return total;
}

static DN_VEC_CLONES double plane_sq_dev(const float *v, size_t n, float m)
{
    double total = 0;
    for (size_t i0 = 0; i0 < n; i0 += SUM_BLOCK) {
        const size_t end = n - i0 < SUM_BLOCK ? n : i0 + SUM_BLOCK;
        float r = 0;
#pragma omp simd reduction(+:r)
        for (size_t i = i0; i < end; i++) r += (v[i] - m) * (v[i] - m);
        total += r;
    }
    return total;
}

/* Batch statistics (Darknet: unbiased variance), two passes: the mean, then the squares about it. */
static void bn_batch_stats(const float *x, int batch, int filters, size_t spatial, float *mean, float *variance)
{
    const size_t outputs = (size_t)filters * spatial;
    const double count = (double)batch * spatial;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < filters; c++) {
        double sum = 0, sq = 0;
        for (int b = 0; b < batch; b++) sum += plane_sum(x + b * outputs + c * spatial, spatial);
        const float mean_f = (float)(sum / count);
        for (int b = 0; b < batch; b++) sq += plane_sq_dev(x + b * outputs + c * spatial, spatial, mean_f);
        mean[c] = mean_f;
        variance[c] = count > 1 ? (float)(sq / (count - 1)) : 0.f;
    }
}

static void bn_rolling_update(int filters, const float *mean, const float *variance, float *rolling_mean,
                              float *rolling_variance)
{
    for (int c = 0; c < filters; c++) {
        rolling_mean[c] = .99f * rolling_mean[c] + .01f * mean[c];
        rolling_variance[c] = .99f * rolling_variance[c] + .01f * variance[c];
    }
}

/* Batch norm's output before the activation, z = x_norm * scale + bias, as the fused forward rounds it (the
 * fused backward makes it again, to take the activation's gradient from its sign). */
static inline float bn_pre_act(float v, float m, float inv, float scale, float bias)
{
    return (v - m) * inv * scale + bias;
}

/* One plane of out = act(z), the activation a compile-time constant where inlined. */
static inline void bn_act_plane(const float *v, float *o, size_t n, float m, float inv, float scale, float bias, int a)
{
    for (size_t i = 0; i < n; i++) o[i] = dn_activate_one(bn_pre_act(v[i], m, inv, scale, bias), a);
}

/* One plane of the training forward: x_norm kept (xn given) and out = x_norm * scale + bias, or out = act(z). */
static DN_VEC_CLONES void bn_forward_plane(const float *v, float *xn, float *o, size_t n, float m, float inv,
                                           float scale, float bias, int a)
{
    if (xn) {
        for (size_t i = 0; i < n; i++) {
            xn[i] = (v[i] - m) * inv;
            o[i] = xn[i] * scale + bias;
        }
        return;
    }
    switch (a) { /* the common ones with the activation inlined as a constant */
    case DN_ACT_LEAKY: bn_act_plane(v, o, n, m, inv, scale, bias, DN_ACT_LEAKY); break;
    case DN_ACT_LINEAR: bn_act_plane(v, o, n, m, inv, scale, bias, DN_ACT_LINEAR); break;
    case DN_ACT_RELU: bn_act_plane(v, o, n, m, inv, scale, bias, DN_ACT_RELU); break;
    default: bn_act_plane(v, o, n, m, inv, scale, bias, a); break;
    }
}

/* Training batch norm: the batch statistics (and rolling averages), then per plane either x_norm and
 * out = x_norm * scale + bias (x_norm given: batchnorm_forward), or out = act(that) without keeping x_norm
 * (bn_act_forward). (v - m) * inv rounds to x_norm's float either way, so out has the same bits. */
static void bn_forward(const float *x, int batch, int filters, size_t spatial, const float *scales,
                       const float *biases, float *mean, float *variance, float *rolling_mean,
                       float *rolling_variance, int update_rolling, float *x_norm, int activation, float *out)
{
    const size_t outputs = (size_t)filters * spatial;
    bn_batch_stats(x, batch, filters, spatial, mean, variance);
    if (update_rolling) bn_rolling_update(filters, mean, variance, rolling_mean, rolling_variance);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++) {
        for (int c = 0; c < filters; c++) {
            const size_t at = b * outputs + c * spatial;
            const float inv = 1.f / (sqrtf(variance[c]) + DN_BN_EPS);
            bn_forward_plane(x + at, x_norm ? x_norm + at : NULL, out + at, spatial, mean[c], inv, scales[c],
                             biases[c], activation);
        }
    }
}

static dn_status cpu_batchnorm_forward(dn_backend *be, const float *x, int batch, int filters, size_t spatial,
                                       const float *scales, const float *biases, float *mean, float *variance,
                                       float *rolling_mean, float *rolling_variance, int update_rolling,
                                       float *x_norm, float *out)
{
    (void)be;
    bn_forward(x, batch, filters, spatial, scales, biases, mean, variance, rolling_mean, rolling_variance,
               update_rolling, x_norm, DN_ACT_LINEAR, out);
    return DN_OK;
}

static dn_status cpu_bn_act_forward(dn_backend *be, const float *x, int batch, int filters, size_t spatial,
                                    const float *scales, const float *biases, float *mean, float *variance,
                                    float *rolling_mean, float *rolling_variance, int update_rolling, int activation,
                                    float *out)
{
    (void)be;
    bn_forward(x, batch, filters, spatial, scales, biases, mean, variance, rolling_mean, rolling_variance,
               update_rolling, NULL, activation, out);
    return DN_OK;
}

static dn_status cpu_bias_gradient(dn_backend *be, const float *delta, int batch, int filters, size_t spatial,
                                   float *bias_updates)
{
    (void)be;
    const size_t outputs = (size_t)filters * spatial;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < filters; c++) {
        double sum = 0;
        for (int b = 0; b < batch; b++) sum += plane_sum(delta + b * outputs + c * spatial, spatial);
        bias_updates[c] += (float)sum;
    }
    return DN_OK;
}

/* Batch norm's backward after its sums, for a filter: through x_norm = (x - mean) / (sigma + eps), g = d(out) *
 * scale becomes d(x) = (g - mean_g) * inv_s + k * (x - mean); the factors from the sums of g and g * (x - mean). */
static void bn_back_factors(float sigma, double sum_g, double sum_gx, double count, float *mean_g, float *inv_s,
                            float *k)
{
    const float s = sigma + DN_BN_EPS;
    const double dsigma = -sum_gx / ((double)s * s);
    *mean_g = (float)(sum_g / count);
    *inv_s = 1.f / s;
    *k = (float)((sigma > 0 && count > 1) ? dsigma / (sigma * (count - 1)) : 0.0);
}

/* That for filter c, delta holding g. */
static void bn_back_apply(float *delta, const float *x, int batch, size_t outputs, size_t spatial, int c, float m,
                          float sigma, double sum_g, double sum_gx, double count)
{
    float mean_g, inv_s, k;
    bn_back_factors(sigma, sum_g, sum_gx, count, &mean_g, &inv_s, &k);
    for (int b = 0; b < batch; b++) {
        float *d = delta + b * outputs + c * spatial;
        const float *v = x + b * outputs + c * spatial;
        for (size_t i = 0; i < spatial; i++) d[i] = (d[i] - mean_g) * inv_s + k * (v[i] - m);
    }
}

static dn_status cpu_batchnorm_backward(dn_backend *be, float *delta, const float *x, const float *x_norm,
                                        const float *mean, const float *variance, const float *scales, int batch,
                                        int filters, size_t spatial, float *scale_updates)
{
    (void)be;
    const size_t outputs = (size_t)filters * spatial;
    const double count = (double)batch * spatial;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < filters; c++) {
        /* d(out)/d(x_norm) = scale; then through x_norm = (x - mean) / (sqrt(var) + eps). Summed in float over
         * SUM_BLOCK values (vectorised), the blocks in double. */
        double dscale = 0, sum_g = 0, sum_gx = 0;
        const float sigma = sqrtf(variance[c]);
        const float scale = scales[c], m = mean[c];
        for (int b = 0; b < batch; b++) {
            float *d = delta + b * outputs + c * spatial;
            const float *xn = x_norm + b * outputs + c * spatial;
            const float *v = x + b * outputs + c * spatial;
            for (size_t i0 = 0; i0 < spatial; i0 += SUM_BLOCK) {
                const size_t end = spatial - i0 < SUM_BLOCK ? spatial : i0 + SUM_BLOCK;
                float r_scale = 0, r_g = 0, r_gx = 0;
#pragma omp simd reduction(+:r_scale, r_g, r_gx)
                for (size_t i = i0; i < end; i++) {
                    r_scale += d[i] * xn[i];
                    const float g = d[i] * scale;
                    d[i] = g;
                    r_g += g;
                    r_gx += g * (v[i] - m);
                }
                dscale += r_scale;
                sum_g += r_g;
                sum_gx += r_gx;
            }
        }
        scale_updates[c] += (float)dscale;
        bn_back_apply(delta, x, batch, outputs, spatial, c, m, sigma, sum_g, sum_gx, count);
    }
    return DN_OK;
}

/* One plane of bn_act_backward: d(out) through the activation, d0 = d * act'. For leaky, relu and linear act' is
 * taken from the pre-activation z, made again from x as the forward made it (bn_pre_act; z > 0 exactly when the
 * output is), so the output need not be read; for the others from the output y. */
static inline float bn_act_back_d0(float d, const float *y, float v, size_t i, float m, float inv, float scale,
                                   float bias, int a)
{
    if (a == DN_ACT_LEAKY || a == DN_ACT_RELU || a == DN_ACT_LINEAR)
        return d * dn_gradient_one(bn_pre_act(v, m, inv, scale, bias), 0.f, a);
    return d * dn_gradient_one(y[i], 0.f, a);
}

/* The first pass over a plane: its four sums (in float over SUM_BLOCK values, the blocks in double), delta
 * unchanged (the second pass makes d0 again). */
typedef struct bn_act_sums { double bias, scale, g, gx; } bn_act_sums;

static inline bn_act_sums bn_act_back_sums(const float *d, const float *y, const float *v, size_t n, float m,
                                           float inv, float scale, float bias, int a)
{
    bn_act_sums total = {0, 0, 0, 0};
    for (size_t i0 = 0; i0 < n; i0 += SUM_BLOCK) {
        const size_t end = n - i0 < SUM_BLOCK ? n : i0 + SUM_BLOCK;
        float r_bias = 0, r_scale = 0, r_g = 0, r_gx = 0;
#pragma omp simd reduction(+:r_bias, r_scale, r_g, r_gx)
        for (size_t i = i0; i < end; i++) {
            const float d0 = bn_act_back_d0(d[i], y, v[i], i, m, inv, scale, bias, a);
            const float xn = (v[i] - m) * inv; /* x_norm's float, as the forward rounded it */
            const float g = d0 * scale;
            r_bias += d0;
            r_scale += d0 * xn;
            r_g += g;
            r_gx += g * (v[i] - m);
        }
        total.bias += r_bias, total.scale += r_scale, total.g += r_g, total.gx += r_gx;
    }
    return total;
}

/* The second pass: d(x) = (g - mean_g) / (sigma + eps) + k (x - mean), g = d0 * scale (bn_back_apply's formula). */
static inline void bn_act_back_apply(float *d, const float *y, const float *v, size_t n, float m, float inv,
                                     float scale, float bias, int a, float mean_g, float inv_s, float k)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        const float g = bn_act_back_d0(d[i], y, v[i], i, m, inv, scale, bias, a) * scale;
        d[i] = (g - mean_g) * inv_s + k * (v[i] - m);
    }
}

/* bn_act_back_sums or bn_act_back_apply (apply: sums NULL) over a plane, the common activations inlined as
 * constants. */
static DN_VEC_CLONES void bn_act_back_plane(float *d, const float *y, const float *v, size_t n, float m, float inv,
                                            float scale, float bias, int a, bn_act_sums *sums, float mean_g,
                                            float inv_s, float k)
{
#define BN_ACT_BACK_CASE(A)                                                                                    \
    if (sums) *sums = bn_act_back_sums(d, y, v, n, m, inv, scale, bias, A);                                      \
    else bn_act_back_apply(d, y, v, n, m, inv, scale, bias, A, mean_g, inv_s, k);                               \
    break;
    switch (a) {
    case DN_ACT_LEAKY: BN_ACT_BACK_CASE(DN_ACT_LEAKY)
    case DN_ACT_LINEAR: BN_ACT_BACK_CASE(DN_ACT_LINEAR)
    case DN_ACT_RELU: BN_ACT_BACK_CASE(DN_ACT_RELU)
    default: BN_ACT_BACK_CASE(a)
    }
#undef BN_ACT_BACK_CASE
}

static dn_status cpu_bn_act_backward(dn_backend *be, float *delta, const float *out, const float *x, const float *mean,
                                     const float *variance, const float *scales, const float *biases, int activation,
                                     int batch, int filters, size_t spatial, float *bias_updates,
                                     float *scale_updates, float *packed, const pack_layout *layout)
{
    (void)be;
    const size_t outputs = (size_t)filters * spatial;
    const double count = (double)batch * spatial;
    bn_back_channel *f = malloc(sizeof *f * (size_t)filters);
    if (!f) return dn_fail(DN_E_NOMEM, "out of memory for batch norm's backward (%d filters)", filters);
    /* as cpu_gradient, cpu_bias_gradient and cpu_batchnorm_backward in a row: two passes instead of five, the
     * first reading delta and x (and, for other activations, the output) for the sums, the second making d(x) */
#pragma omp parallel for schedule(static)
    for (int c = 0; c < filters; c++) {
        bn_back_channel *fc = &f[c];
        const float sigma = sqrtf(variance[c]);
        fc->inv = 1.f / (sigma + DN_BN_EPS); /* the forward's, bit for bit */
        fc->scale = scales[c], fc->bias = biases[c], fc->mean = mean[c];
        double dbias = 0, dscale = 0, sum_g = 0, sum_gx = 0;
        for (int b = 0; b < batch; b++) {
            const size_t at = b * outputs + c * spatial;
            bn_act_sums r;
            bn_act_back_plane(delta + at, out + at, x + at, spatial, fc->mean, fc->inv, fc->scale, fc->bias,
                              activation, &r, 0, 0, 0);
            dbias += r.bias;
            dscale += r.scale;
            sum_g += r.g;
            sum_gx += r.gx;
        }
        bias_updates[c] += (float)dbias;
        scale_updates[c] += (float)dscale;
        bn_back_factors(sigma, sum_g, sum_gx, count, &fc->mean_g, &fc->inv_s, &fc->k);
    }
    if (packed) {
        layout_pack_bn_backward(delta, x, f, activation, batch, filters, spatial, layout, packed);
    } else {
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < batch; b++)
            for (int c = 0; c < filters; c++) {
                const bn_back_channel *fc = &f[c];
                const size_t at = b * outputs + c * spatial;
                bn_act_back_plane(delta + at, out + at, x + at, spatial, fc->mean, fc->inv, fc->scale, fc->bias,
                                  activation, NULL, fc->mean_g, fc->inv_s, fc->k);
            }
    }
    free(f);
    return DN_OK;
}

static dn_status cpu_sgd_update(dn_backend *be, float *w, float *u, size_t n, float lr_over_b, float momentum,
                                float decay_b)
{
    (void)be;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) dn_sgd_one(&w[i], &u[i], lr_over_b, momentum, decay_b);
    return DN_OK;
}

/* First output index whose window starts at or after 0, and one past the last whose window ends inside n. */
static void inner_range(int offset, int stride, int size, int n, int out_n, int *lo, int *hi)
{
    int a = offset < 0 ? (-offset + stride - 1) / stride : 0;
    int b = n - size - offset >= 0 ? (n - size - offset) / stride + 1 : 0;
    if (b > out_n) b = out_n;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

/* out[x] = the largest of the size x size window at column x*stride of the rows from r (row stride `width`), for
 * x in [lo, hi) whose windows lie wholly inside: inference (no argmax). The same scan order, strict > and
 * -FLT_MAX start as the general loop, so the same result bits (NaN skipped alike); the 2x2 windows of YOLO get
 * their own loops, which gcc vectorises (maxpool was a fifth of yolov3-tiny's bf16 forward in perf). */
static void maxpool_row_inner(const float *r, int width, int size, int stride, int lo, int hi, float *out)
{
    const float *r1 = r + width;
    if (size == 2 && stride == 2) {
        for (int x = lo; x < hi; x++) {
            float m = -FLT_MAX;
            m = r[2 * x] > m ? r[2 * x] : m;
            m = r[2 * x + 1] > m ? r[2 * x + 1] : m;
            m = r1[2 * x] > m ? r1[2 * x] : m;
            m = r1[2 * x + 1] > m ? r1[2 * x + 1] : m;
            out[x] = m;
        }
    } else if (size == 2 && stride == 1) {
        for (int x = lo; x < hi; x++) {
            float m = -FLT_MAX;
            m = r[x] > m ? r[x] : m;
            m = r[x + 1] > m ? r[x + 1] : m;
            m = r1[x] > m ? r1[x] : m;
            m = r1[x + 1] > m ? r1[x + 1] : m;
            out[x] = m;
        }
    } else {
        for (int x = lo; x < hi; x++) {
            float m = -FLT_MAX;
            for (int ky = 0; ky < size; ky++)
                for (int kx = 0; kx < size; kx++) {
                    const float v = r[ky * width + x * stride + kx];
                    m = v > m ? v : m;
                }
            out[x] = m;
        }
    }
}

/* One window cell of maxpool_row_inner_argmax: strict >, so the first of equal maxima (in scan order) wins. */
#define ARGMAX_CELL(v, index)                                                                                          \
    do {                                                                                                               \
        const int better_ = (v) > m;                                                                                   \
        at = better_ ? (index) : at;                                                                                   \
        m = better_ ? (v) : m;                                                                                         \
    } while (0)

/* maxpool_row_inner for training: also the argmax, as the index (first + offset within the row's windows) of
 * the winning input cell. One select per window cell in scan order, as the general loop does. The 2x2 windows
 * have a loop per stride with the stride a constant: with a variable one gcc gathered each cell into 4-wide
 * vectors one by one (this loop was 2.3% of a yolov3-tiny training iteration in perf). */
static DN_VEC_CLONES void maxpool_row_inner_argmax(const float *r, int width, int size, int stride, int lo, int hi,
                                                   int first, float *out, int *argmax)
{
    const float *r1 = r + width;
    if (size == 2 && stride == 2) {
        for (int x = lo; x < hi; x++) {
            float m = -FLT_MAX;
            int at = -1;
            ARGMAX_CELL(r[2 * x], first + 2 * x);
            ARGMAX_CELL(r[2 * x + 1], first + 2 * x + 1);
            ARGMAX_CELL(r1[2 * x], first + width + 2 * x);
            ARGMAX_CELL(r1[2 * x + 1], first + width + 2 * x + 1);
            out[x] = m;
            argmax[x] = at;
        }
        return;
    }
    if (size == 2 && stride == 1) {
        for (int x = lo; x < hi; x++) {
            float m = -FLT_MAX;
            int at = -1;
            ARGMAX_CELL(r[x], first + x);
            ARGMAX_CELL(r[x + 1], first + x + 1);
            ARGMAX_CELL(r1[x], first + width + x);
            ARGMAX_CELL(r1[x + 1], first + width + x + 1);
            out[x] = m;
            argmax[x] = at;
        }
        return;
    }
    for (int x = lo; x < hi; x++) {
        float m = -FLT_MAX;
        int at = -1;
        for (int ky = 0; ky < size; ky++)
            for (int kx = 0; kx < size; kx++) {
                const int i = ky * width + x * stride + kx;
                ARGMAX_CELL(r[i], first + i);
            }
        out[x] = m;
        argmax[x] = at;
    }
}
#undef ARGMAX_CELL

static dn_status cpu_maxpool_forward(dn_backend *be, const float *in, int batch, int channels, int height, int width,
                                     int size, int stride, int padding, int out_h, int out_w, float *out,
                                     int *argmax)
{
    (void)be;
    const int offset = -padding / 2;
    const size_t inputs = (size_t)channels * height * width, outputs = (size_t)channels * out_h * out_w;
    int y_lo, y_hi, x_lo, x_hi;
    inner_range(offset, stride, size, height, out_h, &y_lo, &y_hi);
    inner_range(offset, stride, size, width, out_w, &x_lo, &x_hi);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++) {
        for (int c = 0; c < channels; c++) {
            const float *src = in + b * inputs + (size_t)c * width * height;
            for (int y = 0; y < out_h; y++) {
                const int inner_y = y >= y_lo && y < y_hi;
                const size_t row_o = b * outputs + ((size_t)c * out_h + y) * out_w;
                if (inner_y) {
                    /* the windows lying inside: no bounds tests (same scan order and strict > as below) */
                    const int first = (offset + y * stride) * width + offset;
                    if (argmax)
                        maxpool_row_inner_argmax(src + first, width, size, stride, x_lo, x_hi,
                                                 (int)((size_t)c * width * height) + first, out + row_o, argmax + row_o);
                    else
                        maxpool_row_inner(src + first, width, size, stride, x_lo, x_hi, out + row_o);
                }
                for (int x = 0; x < out_w; x++) {
                    if (inner_y && x == x_lo && x_hi > x_lo) { /* done above */
                        x = x_hi - 1;
                        continue;
                    }
                    int best_i;
                    const float best = dn_maxpool_window(src, height, width, offset + y * stride, offset + x * stride,
                                                         size, &best_i);
                    out[row_o + x] = best;
                    if (argmax) argmax[row_o + x] = best_i < 0 ? -1 : (int)((size_t)c * width * height + best_i);
                }
            }
        }
    }
    return DN_OK;
}

static dn_status cpu_maxpool_backward(dn_backend *be, const float *delta, const int *argmax, int batch,
                                      size_t outputs, size_t inputs, float *in_delta)
{
    (void)be;
    /* Parallel over images only: overlapping windows of one image may share their maximum. */
#pragma omp parallel for schedule(static) if ((size_t)batch * outputs > 65536)
    for (int b = 0; b < batch; b++)
        for (size_t i = 0; i < outputs; i++) {
            const int j = argmax[b * outputs + i];
            if (j >= 0) in_delta[b * inputs + j] += delta[b * outputs + i];
        }
    return DN_OK;
}

static dn_status cpu_maxpool_backward_set(dn_backend *be, const float *delta, const int *argmax, int batch,
                                          int channels, size_t outputs, size_t inputs, float *in_delta)
{
    (void)be;
    /* a channel's maxima come from its own input plane: planes are independent */
    const size_t out_plane = outputs / channels, in_plane = inputs / channels;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)batch * outputs > 65536)
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < channels; c++) {
            float *d_in = in_delta + (size_t)b * inputs;
            memset(d_in + c * in_plane, 0, sizeof(float) * in_plane);
            const size_t o0 = (size_t)b * outputs + c * out_plane;
            for (size_t i = o0; i < o0 + out_plane; i++) {
                const int j = argmax[i];
                if (j >= 0) d_in[j] += delta[i];
            }
        }
    return DN_OK;
}

static dn_status cpu_upsample_forward(dn_backend *be, const float *in, int batch, int channels, int height, int width,
                                      int stride, float scale, float *out)
{
    (void)be;
    const int out_h = height * stride, out_w = width * stride;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < channels; c++) {
            const size_t plane = (size_t)b * channels + c;
            const float *src = in + plane * width * height;
            float *dst = out + plane * out_w * out_h;
            for (int y = 0; y < out_h; y++)
                for (int x = 0; x < out_w; x++) dst[y * out_w + x] = scale * src[(y / stride) * width + x / stride];
        }
    return DN_OK;
}

static dn_status cpu_upsample_backward(dn_backend *be, const float *delta, int batch, int channels, int height,
                                       int width, int stride, float scale, float *in_delta)
{
    (void)be;
    const int out_h = height * stride, out_w = width * stride;
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < channels; c++) {
            const size_t plane = (size_t)b * channels + c;
            float *dst = in_delta + plane * width * height;
            const float *src = delta + plane * out_w * out_h;
            for (int y = 0; y < out_h; y++)
                for (int x = 0; x < out_w; x++) dst[(y / stride) * width + x / stride] += scale * src[y * out_w + x];
        }
    return DN_OK;
}

static dn_status cpu_yolo_activate(dn_backend *be, const float *in, int batch, int n, int classes, int h, int w,
                                   int representation, float *out)
{
    (void)be;
    const dn_yolo_config cfg = {.classes = classes, .n = n, .representation = representation};
    yolo_activate(&cfg, batch, h, w, in, out);
    return DN_OK;
}

const dn_kernels dn_cpu_kernels = {
    .gemm = cpu_gemm,
    .im2col = cpu_im2col,
    .col2im_add = cpu_col2im_add,
    .activate = cpu_activate,
    .gradient = cpu_gradient,
    .add = cpu_add,
    .axpy = cpu_axpy,
    .copy_rows = cpu_copy_rows,
    .affine_inference = cpu_affine_inference,
    .batchnorm_forward = cpu_batchnorm_forward,
    .bias_gradient = cpu_bias_gradient,
    .batchnorm_backward = cpu_batchnorm_backward,
    .bn_act_forward = cpu_bn_act_forward,
    .bn_act_backward = cpu_bn_act_backward,
    .maxpool_backward_set = cpu_maxpool_backward_set,
    .sgd_update = cpu_sgd_update,
    .maxpool_forward = cpu_maxpool_forward,
    .maxpool_backward = cpu_maxpool_backward,
    .upsample_forward = cpu_upsample_forward,
    .upsample_backward = cpu_upsample_backward,
    .yolo_activate = cpu_yolo_activate,
    /* conv_forward, conv_backward_data, conv_backward_filter: NULL (im2col + gemm) */
};
