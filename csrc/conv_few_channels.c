/* The training forward of a convolution with few input channels: see conv_few_channels.h.
 *
 * 16 output pixels of one row are a vector; 16 filters keep 16 accumulators in registers while the taps
 * (channel, kernel row, kernel column) go by: each tap loads the 16 input values under it once and multiplies
 * them by each filter's weight, broadcast from memory. Per output, the taps are summed in that order. The
 * weights are first copied tap-major (each tap's 16 weights of a block of filters side by side), so that the
 * 16 broadcasts of a tap read consecutive addresses: with Darknet's filter-major order gcc kept the 16 filter
 * offsets on the stack and reloaded them at every tap.
 * Pixels whose taps fall outside the row load zeros (masked loads; at the left edge an expanding load, so that
 * nothing before the row is addressed); rows above or below the input are skipped, as zero padding does. */
#include <stdlib.h>

#include "conv_few_channels.h"
#include "internal.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)

#include <immintrin.h>

int conv_few_channels_supported(const dn_conv_shape *s)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && s->groups == 1 && s->c >= 1 && s->c <= CONV_FEW_CHANNELS_MAX &&
           s->filters % 16 == 0 && s->stride == 1 && s->pad >= 0 && s->pad < s->size && s->out_w >= 1 &&
           s->out_h >= 1;
}

#pragma GCC push_options
#pragma GCC target("avx512f")

/* Of `lanes`, those whose input column first + lane lies in [0, width) (first: lane 0's column). */
static inline __mmask16 inside(int first, int width, __mmask16 lanes)
{
    if (first >= width || first <= -16) return 0;
    __mmask16 m = lanes;
    if (first < 0) m &= (__mmask16)(0xFFFFu << -first);
    if (width - first < 16) m &= (__mmask16)((1u << (width - first)) - 1);
    return m;
}

/* Output row y of image `img` (c planes) for filters fb..fb+15 into out (the filters' planes, row y); wb: the
 * block's weights, tap-major (taps x 16). */
static void row_block(const dn_conv_shape *s, const float *img, const float *wb, int fb, int y, float *out)
{
    const int C = s->c, K = s->size, P = s->pad, W = s->w, OW = s->out_w;
    const size_t in_plane = (size_t)s->h * W, out_plane = (size_t)s->out_h * OW;
    for (int x0 = 0; x0 < OW; x0 += 16) {
        const __mmask16 lanes = OW - x0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (OW - x0)) - 1);
        __m512 acc[16];
        for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
        for (int c = 0; c < C; c++)
            for (int ky = 0; ky < K; ky++) {
                const int iy = y + ky - P;
                if (iy < 0 || iy >= s->h) continue;
                const float *row = img + c * in_plane + (size_t)iy * W;
                const float *w = wb + ((size_t)c * K + ky) * K * 16;
                for (int kx = 0; kx < K; kx++) {
                    const int first = x0 + kx - P;
                    const __mmask16 m = inside(first, W, lanes);
                    if (!m) continue;
                    /* at the left edge lane -first takes row[0]: an expanding load reads from row[0] on */
                    const __m512 v =
                        first < 0 ? _mm512_maskz_expandloadu_ps(m, row) : _mm512_maskz_loadu_ps(m, row + first);
                    const float *wk = w + (size_t)kx * 16;
#pragma GCC unroll 16
                    for (int j = 0; j < 16; j++) acc[j] = _mm512_fmadd_ps(v, _mm512_set1_ps(wk[j]), acc[j]);
                }
            }
        for (int j = 0; j < 16; j++) _mm512_mask_storeu_ps(out + (size_t)(fb + j) * out_plane + x0, lanes, acc[j]);
    }
}

dn_status conv_few_channels_forward(const dn_conv_shape *s, const float *in, const float *weights, float *out)
{
    const size_t in_image = (size_t)s->c * s->h * s->w, out_image = (size_t)s->filters * s->out_h * s->out_w;
    const size_t taps = (size_t)s->c * s->size * s->size;
    float *tap_major = malloc(sizeof(float) * taps * s->filters);
    if (!tap_major) return dn_fail(DN_E_NOMEM, "out of memory for %zu weights", taps * s->filters);
    for (int f = 0; f < s->filters; f++)
        for (size_t t = 0; t < taps; t++)
            tap_major[((size_t)(f / 16) * taps + t) * 16 + f % 16] = weights[(size_t)f * taps + t];
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < s->batch; b++)
        for (int y = 0; y < s->out_h; y++)
            for (int fb = 0; fb < s->filters; fb += 16)
                row_block(s, in + b * in_image, tap_major + (size_t)fb * taps, fb, y,
                          out + b * out_image + (size_t)y * s->out_w);
    free(tap_major);
    return DN_OK;
}

#pragma GCC pop_options

#else

int conv_few_channels_supported(const dn_conv_shape *s) { (void)s; return 0; }
dn_status conv_few_channels_forward(const dn_conv_shape *s, const float *in, const float *weights, float *out)
{
    (void)s, (void)in, (void)weights, (void)out;
    return dn_fail(DN_E_NOTFOUND, "the few-channel convolution kernel needs x86-64 and gcc");
}

#endif
