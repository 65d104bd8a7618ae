/* The first convolution and the 2x2 max pool after it, in one pass: see conv_stem.h.
 *
 * Each output pixel's 16 filters are one AVX-512 vector. A block of STEM_PIXELS convolution pixels of the two
 * rows under one pooled row keeps its accumulators in registers (2 x 12 of them) while the taps go by: each
 * input value of a row of taps is broadcast once and multiplied by the weights of the two output rows it
 * belongs to. The block's maxima over 2x2 are then biased, activated and stored (max commutes with adding the
 * bias and with the monotone activations taken here, rounding included). Pooled pixels whose windows cross
 * the left or right edge go one convolution pixel at a time with the taps outside skipped; input rows above
 * or below the input are skipped, as zero padding does. */
#include <math.h> /* INFINITY */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conv_stem.h"

struct conv_stem {
    int c, h, w, filters, size, pad, out_h, out_w, activation;  /* the convolution's (stride 1) */
    int pool_h, pool_w;                                          /* the pooled output: out_h / 2, out_w / 2 */
    float *weights;  /* [c][size][size][filters] folded (times mul), 64-byte aligned */
    float *bias;     /* [filters] (the folded add) */
};

void conv_stem_free(conv_stem *s)
{
    if (!s) return;
    free(s->weights);
    free(s->bias);
    free(s);
}

static void *aligned_floats(size_t n)
{
    const size_t bytes = (sizeof(float) * n + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

dn_status conv_stem_create(conv_stem **out, const conv_fast_desc *d)
{
    conv_stem *s = calloc(1, sizeof *s);
    const int taps = d->c * d->size * d->size;
    *out = NULL;
    if (!s) return dn_fail(DN_E_NOMEM, "out of memory");
    *s = (conv_stem){.c = d->c, .h = d->h, .w = d->w, .filters = d->filters, .size = d->size, .pad = d->pad,
                     .out_h = d->out_h, .out_w = d->out_w, .activation = (int)d->activation,
                     .pool_h = d->out_h / 2, .pool_w = d->out_w / 2};
    s->weights = aligned_floats((size_t)taps * d->filters);
    s->bias = aligned_floats((size_t)d->filters);
    if (!s->weights || !s->bias) {
        conv_stem_free(s);
        return dn_fail(DN_E_NOMEM, "out of memory");
    }
    for (int f = 0; f < d->filters; f++) {
        for (int t = 0; t < taps; t++)
            s->weights[(size_t)t * d->filters + f] = d->weights[(size_t)f * taps + t] * d->mul[f];
        s->bias[f] = d->add[f];
    }
    *out = s;
    return DN_OK;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)

#include <immintrin.h>

int conv_stem_supported(const conv_fast_desc *d, int bf16)
{
    const int act_ok = d->activation == ACT_LINEAR || d->activation == ACT_LEAKY || d->activation == ACT_RELU;
    const int shape_ok = d->groups == 1 && d->c >= 1 && d->c <= CONV_STEM_MAX_CHANNELS && d->filters % 16 == 0 &&
                         d->stride == 1 && d->pad >= 0 && d->pad < d->size && d->out_h % 2 == 0 &&
                         d->out_w % 2 == 0 && d->out_h >= 2 && d->out_w >= 2;
    __builtin_cpu_init();
    return act_ok && shape_ok && __builtin_cpu_supports("avx512f") &&
           (!bf16 || __builtin_cpu_supports("avx512bf16"));
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

#define STEM_PIXELS 12 /* convolution pixels per block: 2 x 12 accumulators, 2 weights and a broadcast */
/* (the rows' ends go through pool_pixel, the inside's remainder through blocks of 2) */

static inline __attribute__((always_inline)) __m512 activate16(__m512 v, int activation)
{
    const __mmask16 positive = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GT_OQ);
    if (activation == ACT_LEAKY) return _mm512_mask_mov_ps(_mm512_mul_ps(v, _mm512_set1_ps(.1f)), positive, v);
    if (activation == ACT_RELU) return _mm512_maskz_mov_ps(positive, v);
    return v;
}

static inline __attribute__((always_inline)) void store16(void *out, size_t at, __m512 v, const int bf16)
{
    if (bf16)
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), (__m256i)_mm512_cvtneps_pbh(v));
    else
        _mm512_storeu_ps((float *)out + at, v);
}

static inline __attribute__((always_inline)) int max_int(int a, int b) { return a > b ? a : b; }
static inline __attribute__((always_inline)) int min_int(int a, int b) { return a < b ? a : b; }

/* One row of taps (channel ch, kernel row ky0 for the upper output row and ky0 - 1 for the lower; `upper` and
 * `lower` say which exist) over `pixels` pixels whose windows lie inside the row. S is the kernel size (a
 * constant where it is inlined for 3). */
static inline __attribute__((always_inline)) void tap_row(const conv_stem *s, const float *row, int ch, int ky0,
                                                          int fb, const int S, const int pixels, const int upper,
                                                          const int lower, __m512 *acc0, __m512 *acc1)
{
    const int F = s->filters;
    const float *w0 = s->weights + (size_t)((ch * S + ky0) * S) * F + fb;
    const float *w1 = lower ? w0 - (size_t)S * F : w0;
#pragma GCC unroll 1
    for (int kx = 0; kx < S; kx++) {
        const __m512 a = upper ? _mm512_load_ps(w0 + (size_t)kx * F) : _mm512_setzero_ps();
        const __m512 b = lower ? _mm512_load_ps(w1 + (size_t)kx * F) : _mm512_setzero_ps();
#pragma GCC unroll 16
        for (int p = 0; p < pixels; p++) {
            __m512 x; /* a broadcast from memory (a load, no shuffle), so that the compiler keeps no scalars */
            __asm__("vbroadcastss %1, %0" : "=v"(x) : "m"(row[p + kx]));
            if (upper) acc0[p] = _mm512_fmadd_ps(a, x, acc0[p]);
            if (lower) acc1[p] = _mm512_fmadd_ps(b, x, acc1[p]);
        }
    }
}

/* pixels / 2 pooled pixels from convolution rows oy, oy + 1 (input origin iy0 = oy - pad) and columns ox0...
 * (input origin ix0 = ox0 - pad, windows inside the row), stored at out[at...]. */
static inline __attribute__((always_inline)) void pool_block(const conv_stem *s, const float *img, int iy0,
                                                             int ix0, void *out, size_t at, const int S,
                                                             const int pixels, const int bf16)
{
    const int F = s->filters;
    for (int fb = 0; fb < F; fb += 16) {
        __m512 acc0[STEM_PIXELS], acc1[STEM_PIXELS];
#pragma GCC unroll 16
        for (int p = 0; p < pixels; p++) acc0[p] = acc1[p] = _mm512_setzero_ps();
        for (int ch = 0; ch < s->c; ch++)
            for (int r = 0; r <= S; r++) { /* input row iy0 + r: kernel row r of the upper, r - 1 of the lower */
                const int iy = iy0 + r;
                if (iy < 0 || iy >= s->h) continue;
                const float *row = img + ((size_t)ch * s->h + iy) * s->w + ix0;
                if (r == 0)
                    tap_row(s, row, ch, r, fb, S, pixels, 1, 0, acc0, acc1);
                else if (r == S)
                    tap_row(s, row, ch, r, fb, S, pixels, 0, 1, acc0, acc1);
                else
                    tap_row(s, row, ch, r, fb, S, pixels, 1, 1, acc0, acc1);
            }
        const __m512 bias = _mm512_load_ps(s->bias + fb);
#pragma GCC unroll 8
        for (int q = 0; q < pixels / 2; q++) {
            const __m512 m = _mm512_max_ps(_mm512_max_ps(acc0[2 * q], acc0[2 * q + 1]),
                                           _mm512_max_ps(acc1[2 * q], acc1[2 * q + 1]));
            store16(out, at + (size_t)q * F + fb, activate16(_mm512_add_ps(m, bias), s->activation), bf16);
        }
    }
}

/* The pooled pixel px of pooled row py, its four convolution pixels side by side (four independent sums), the
 * taps outside the input skipped: the pixels at the row's ends. */
static inline __attribute__((always_inline)) void pool_pixel(const conv_stem *s, const float *img, int py, int px,
                                                             void *out, size_t at, const int bf16)
{
    const int F = s->filters, S = s->size;
    const int iy0 = 2 * py - s->pad, ix0 = 2 * px - s->pad; /* the window origin of the upper left pixel */
    for (int fb = 0; fb < F; fb += 16) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int ch = 0; ch < s->c; ch++)
            for (int ky = 0; ky < S; ky++)
                for (int kx = 0; kx < S; kx++) {
                    const __m512 wv = _mm512_load_ps(s->weights + (size_t)((ch * S + ky) * S + kx) * F + fb);
                    for (int k = 0; k < 4; k++) {
                        const int iy = iy0 + (k >> 1) + ky, ix = ix0 + (k & 1) + kx;
                        if (iy >= 0 && iy < s->h && ix >= 0 && ix < s->w)
                            acc[k] = _mm512_fmadd_ps(wv, _mm512_set1_ps(img[((size_t)ch * s->h + iy) * s->w + ix]),
                                                     acc[k]);
                    }
                }
        const __m512 m = _mm512_max_ps(_mm512_max_ps(acc[0], acc[1]), _mm512_max_ps(acc[2], acc[3]));
        store16(out, at + fb, activate16(_mm512_add_ps(m, _mm512_load_ps(s->bias + fb)), s->activation), bf16);
    }
}

/* Pooled row r (image r / pool_h) of `batch` images; with keep, a share of the input rows copied there too and
 * *finite cleared when one of them holds NaN or infinity. */
static inline __attribute__((always_inline)) void pooled_row(const conv_stem *s, const float *in, long r, void *out,
                                                             float *keep, int *finite, const int bf16)
{
    const int py = (int)(r % s->pool_h), F = s->filters, S = s->size;
    const size_t image = (size_t)s->c * s->h * s->w;
    const float *img = in + (size_t)(r / s->pool_h) * image;
    if (keep) /* this row's share of the input rows, while they are in the cache; and whether they are finite */
        for (int ch = 0; ch < s->c; ch++) {
            const int y0 = (int)((long)py * s->h / s->pool_h), y1 = (int)((long)(py + 1) * s->h / s->pool_h);
            const size_t at = (size_t)(r / s->pool_h) * image + ((size_t)ch * s->h + y0) * s->w;
            const size_t count = (size_t)(y1 - y0) * s->w;
            memcpy(keep + at, in + at, sizeof(float) * count);
            if (!dn_span_finite(in + at, count)) *finite = 0;
        }
    const size_t at = (size_t)r * s->pool_w * F;
    /* pooled pixels whose four convolution pixels have their windows inside the row: 2 px - pad >= 0 and
     * 2 px + 1 - pad + S <= w */
    const int lo = min_int((s->pad + 1) / 2, s->pool_w);
    const int hi = max_int(lo, min_int(s->w - S + s->pad - 1 >= 0 ? (s->w - S + s->pad - 1) / 2 + 1 : 0, s->pool_w));
    int px = 0;
    for (; px < lo; px++) pool_pixel(s, img, py, px, out, at + (size_t)px * F, bf16);
    for (; px + STEM_PIXELS / 2 <= hi; px += STEM_PIXELS / 2)
        if (S == 3)
            pool_block(s, img, 2 * py - s->pad, 2 * px - s->pad, out, at + (size_t)px * F, 3, STEM_PIXELS, bf16);
        else
            pool_block(s, img, 2 * py - s->pad, 2 * px - s->pad, out, at + (size_t)px * F, S, STEM_PIXELS, bf16);
    for (; px < hi; px++) /* the rest of the inside one pooled pixel at a time */
        pool_block(s, img, 2 * py - s->pad, 2 * px - s->pad, out, at + (size_t)px * F, S, 2, bf16);
    for (; px < s->pool_w; px++) pool_pixel(s, img, py, px, out, at + (size_t)px * F, bf16);
}

int conv_stem_forward(const conv_stem *s, const float *in, void *out, int bf16, float *keep, int batch)
{
    int finite = 1;
#pragma omp parallel for schedule(static) reduction(&& : finite)
    for (long r = 0; r < (long)batch * s->pool_h; r++) {
        if (bf16) /* each with its own constant, so that the stores are chosen at compile time */
            pooled_row(s, in, r, out, keep, &finite, 1);
        else
            pooled_row(s, in, r, out, keep, &finite, 0);
    }
    return finite;
}

#pragma GCC pop_options

#else /* not x86-64 GCC: never chosen */

int conv_stem_supported(const conv_fast_desc *d, int bf16) { return 0; }
int conv_stem_forward(const conv_stem *s, const float *in, void *out, int bf16, float *keep, int batch) { return 0; }

#endif
