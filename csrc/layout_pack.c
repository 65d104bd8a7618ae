/* NCHW <-> channel-blocked activations for the training convolutions (see layout_pack.h).
 *
 * One 16 x 16 tile at a time: 16 rows of the source (16 channels' runs of 16 pixels when packing, 16 pixels'
 * 16 channels when unpacking) are loaded, transposed in registers, and stored as the 16 rows of the other side.
 * Partial tiles (the last pixels of an image, the last channels of a count that is not a multiple of 16) go
 * through the same code with masked loads and stores, so there is no scalar path. Threads take runs of
 * pixels (pixels_per_task) of one image, all their channels: each writes whole NHWC rows. */
#include "layout_pack.h"

#include <stdint.h>

#include "elementwise.h"

pack_layout pack_layout_nhwc(int channels, size_t pixels, int bf16)
{
    return (pack_layout){.image = (size_t)channels * pixels, .block = 16, .pixel = (size_t)channels, .bf16 = bf16};
}

pack_layout pack_layout_nchw16c(int channels, size_t pixels)
{
    const size_t blocks = ((size_t)channels + 15) / 16;
    return (pack_layout){.image = blocks * 16 * pixels, .block = 16 * pixels, .pixel = 16, .bf16 = 0};
}

/* Weights: one (16 outputs x 16 inputs) block of ABcd16b16a holds kernel_pixels tiles of [input][output],
 * contiguous; its part of OIHW is 16 rows (outputs) of 16 x kernel_pixels contiguous floats. Scalar loops over a
 * block that stays in L1 (9 KB for 3x3): compilers vectorise the inner run; threads take blocks. */
void layout_unpack_weights_16b16a(const float *src, int outputs, int inputs, int kernel_pixels, float *dst, int add)
{
    const int out_blocks = (outputs + 15) / 16, in_blocks = (inputs + 15) / 16;
    const long blocks = (long)out_blocks * in_blocks;
    const size_t block_floats = (size_t)256 * kernel_pixels;
    const int parallel = (size_t)outputs * inputs * kernel_pixels > 65536;
    (void)parallel; /* without OpenMP */
#pragma omp parallel for schedule(static) if (parallel)
    for (long b = 0; b < blocks; b++) {
        const int ob = (int)(b / in_blocks), ib = (int)(b % in_blocks);
        const float *blk = src + (size_t)b * block_floats;
        const int o_n = outputs - ob * 16 < 16 ? outputs - ob * 16 : 16;
        const int i_n = inputs - ib * 16 < 16 ? inputs - ib * 16 : 16;
        for (int o = 0; o < o_n; o++) {
            float *row = dst + ((size_t)(ob * 16 + o) * inputs + (size_t)ib * 16) * kernel_pixels;
            for (int i = 0; i < i_n; i++) {
                float *out = row + (size_t)i * kernel_pixels;
                const float *in = blk + i * 16 + o;
                if (add)
                    for (int k = 0; k < kernel_pixels; k++) out[k] += in[(size_t)k * 256];
                else
                    for (int k = 0; k < kernel_pixels; k++) out[k] = in[(size_t)k * 256];
            }
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)

#include <immintrin.h>

/* Tasks take runs of about TASK_BYTES of the channel-first side (64 to 4096 pixels): each of its 16 rows per tile
 * is then a run of consecutive cache lines the hardware prefetcher follows. With 64-pixel runs the batch norm
 * pass below ran at 6-7 GB/s for 32 and 128 channels (8 images of 208x208 and 52x52 pixels, 2 threads on Xeon
 * Ice Lake), with these runs and one tile of software prefetch at 15-18 GB/s; plain packing and unpacking ran 5-15%
 * faster (a noisy microbenchmark). */
#define TASK_BYTES 65536
#define MIN_TASK_PIXELS 64
#define MAX_TASK_PIXELS 4096

static size_t pixels_per_task(int channels)
{
    size_t run = TASK_BYTES / ((size_t)channels * sizeof(float)) / 16 * 16;
    if (run < MIN_TASK_PIXELS) run = MIN_TASK_PIXELS;
    if (run > MAX_TASK_PIXELS) run = MAX_TASK_PIXELS;
    return run;
}

int layout_pack_available(int bf16)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && (!bf16 || __builtin_cpu_supports("avx512bf16"));
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")

/* r[j] = column j of the 16 x 16 matrix whose rows were r[0..15]. */
static inline __attribute__((always_inline)) void transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
    for (int k = 0; k < 8; k++) { /* pairs of rows interleaved element by element, within 128-bit lanes */
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    for (int g = 0; g < 4; g++) { /* u[4g + m], lane L: column 4L + m of rows 4g..4g+3 */
        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int m = 0; m < 4; m++) { /* the lanes gathered: column 4L + m = lane L of u[m], u[4+m], u[8+m], u[12+m] */
        const __m512 va = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), vb = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xdd);
        const __m512 wa = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88);
        const __m512 wb = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xdd);
        r[m] = _mm512_shuffle_f32x4(va, wa, 0x88);
        r[8 + m] = _mm512_shuffle_f32x4(va, wa, 0xdd);
        r[4 + m] = _mm512_shuffle_f32x4(vb, wb, 0x88);
        r[12 + m] = _mm512_shuffle_f32x4(vb, wb, 0xdd);
    }
}

static inline __mmask16 first_lanes(int count)
{
    return count >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << count) - 1);
}

/* Row i of a batch-norm backward tile (layout_pack_bn_backward): channel fc's d(x) for the 16 pixels at delta and
 * x (px: those that exist). */
static inline __m512 bn_backward_row(const float *delta, const float *x, __mmask16 px, const bn_back_channel *fc,
                                     int activation)
{
    const __m512 zero = _mm512_setzero_ps();
    const __m512 d = _mm512_maskz_loadu_ps(px, delta);
    const __m512 vm = _mm512_sub_ps(_mm512_maskz_loadu_ps(px, x), _mm512_set1_ps(fc->mean));
    const __m512 scale = _mm512_set1_ps(fc->scale);
    __m512 d0 = d;
    if (activation != DN_ACT_LINEAR) { /* act' from the sign of z, as the forward's output has it */
        const __m512 z = _mm512_fmadd_ps(_mm512_mul_ps(vm, _mm512_set1_ps(fc->inv)), scale, _mm512_set1_ps(fc->bias));
        const __mmask16 pos = _mm512_cmp_ps_mask(z, zero, _CMP_GT_OQ);
        const __m512 other = _mm512_mul_ps(d, activation == DN_ACT_LEAKY ? _mm512_set1_ps(.1f) : zero);
        d0 = _mm512_mask_blend_ps(pos, other, d);
    }
    const __m512 g = _mm512_sub_ps(_mm512_mul_ps(d0, scale), _mm512_set1_ps(fc->mean_g));
    return _mm512_fmadd_ps(g, _mm512_set1_ps(fc->inv_s), _mm512_mul_ps(_mm512_set1_ps(fc->k), vm));
}

/* The pixels [p0, p0 + np) of image img, all channels, from NCHW src to layout L. With bn (layout_pack_bn_backward)
 * each row is made from src = delta and x before the transpose instead of copied. Inlined into the two callers
 * below, so that each is compiled for its own case (one function for both made plain packing about 20% slower). */
static inline __attribute__((always_inline)) void pack_tiles(const float *src, const float *x,
                                                             const bn_back_channel *bn, int activation, int channels,
                                                             size_t pixels, const pack_layout *L, void *dst, int img,
                                                             size_t p0, size_t np)
{
    /* nChw16c's padding lanes are written (zeros); NHWC's lanes past the channels belong to the next pixel */
    const int padded = L->pixel == 16;
    for (int c0 = 0; c0 < channels; c0 += 16) {
        const int valid = channels - c0 < 16 ? channels - c0 : 16;
        const __mmask16 lanes = padded ? (__mmask16)0xffff : first_lanes(valid);
        const size_t in0 = ((size_t)img * channels + c0) * pixels;
        const size_t out0 = img * L->image + (size_t)(c0 / 16) * L->block;
        for (size_t p = p0; p < p0 + np; p += 16) {
            const int count = p0 + np - p < 16 ? (int)(p0 + np - p) : 16;
            const __mmask16 px = first_lanes(count);
            __m512 r[16];
            if (p + 16 < p0 + np) /* the next tile's rows */
                for (int i = 0; i < valid; i++) {
                    const size_t next = in0 + (size_t)i * pixels + p + 16;
                    _mm_prefetch((const char *)(src + next), _MM_HINT_T0);
                    if (bn) _mm_prefetch((const char *)(x + next), _MM_HINT_T0);
                }
            for (int i = 0; i < 16; i++) {
                const size_t at = in0 + (size_t)i * pixels + p;
                if (i >= valid)
                    r[i] = _mm512_setzero_ps();
                else if (bn)
                    r[i] = bn_backward_row(src + at, x + at, px, &bn[c0 + i], activation);
                else
                    r[i] = _mm512_maskz_loadu_ps(px, src + at);
            }
            transpose16(r);
            for (int j = 0; j < count; j++) {
                const size_t at = out0 + (p + j) * L->pixel;
                if (L->bf16)
                    _mm256_mask_storeu_epi16((uint16_t *)dst + at, lanes, (__m256i)_mm512_cvtneps_pbh(r[j]));
                else
                    _mm512_mask_storeu_ps((float *)dst + at, lanes, r[j]);
            }
        }
    }
}

static void pack_run(const float *src, int channels, size_t pixels, const pack_layout *L, void *dst, int img,
                     size_t p0, size_t np)
{
    pack_tiles(src, NULL, NULL, 0, channels, pixels, L, dst, img, p0, np);
}

static void pack_bn_backward_run(const float *delta, const float *x, const bn_back_channel *bn, int activation,
                                 int channels, size_t pixels, const pack_layout *L, void *dst, int img, size_t p0,
                                 size_t np)
{
    pack_tiles(delta, x, bn, activation, channels, pixels, L, dst, img, p0, np);
}

static void unpack_run(const float *src, const pack_layout *L, int channels, size_t pixels, float *dst, int add,
                       int img, size_t p0, size_t np)
{
    for (int c0 = 0; c0 < channels; c0 += 16) {
        const int valid = channels - c0 < 16 ? channels - c0 : 16;
        const __mmask16 lanes = first_lanes(valid);
        const float *in = src + img * L->image + (size_t)(c0 / 16) * L->block;
        float *out = dst + ((size_t)img * channels + c0) * pixels;
        for (size_t p = p0; p < p0 + np; p += 16) {
            const int count = p0 + np - p < 16 ? (int)(p0 + np - p) : 16;
            const __mmask16 px = first_lanes(count);
            __m512 r[16];
            for (int j = 0; j < 16; j++)
                r[j] = j < count ? _mm512_maskz_loadu_ps(lanes, in + (p + j) * L->pixel) : _mm512_setzero_ps();
            transpose16(r);
            for (int i = 0; i < valid; i++) {
                float *o = out + (size_t)i * pixels + p;
                const __m512 v = add ? _mm512_add_ps(_mm512_maskz_loadu_ps(px, o), r[i]) : r[i];
                _mm512_mask_storeu_ps(o, px, v);
            }
        }
    }
}

/* One copy: pack (src NCHW, dst layout L) or unpack (src layout L, dst NCHW, added to when add); or, with bn
 * set, layout_pack_bn_backward (src delta, src2 x). */
typedef struct copy_job {
    const void *src, *src2;
    void *dst;
    const pack_layout *L;
    int n, channels;
    size_t pixels;
    int unpack, add;
    const bn_back_channel *bn;
    int activation;
} copy_job;

/* The (image, pixel run) tasks of the job, in parallel unless it is small. */
static void run_tasks(const copy_job *j)
{
    const size_t run = pixels_per_task(j->channels);
    const size_t runs = (j->pixels + run - 1) / run;
    const long tasks = (long)j->n * (long)runs;
    const int parallel = tasks > 1 && (size_t)j->n * j->channels * j->pixels > 32768;
#pragma omp parallel for schedule(static) if (parallel)
    for (long t = 0; t < tasks; t++) {
        const int img = (int)(t / (long)runs);
        const size_t p0 = (size_t)(t % (long)runs) * run;
        const size_t np = j->pixels - p0 < run ? j->pixels - p0 : run;
        if (j->unpack)
            unpack_run(j->src, j->L, j->channels, j->pixels, j->dst, j->add, img, p0, np);
        else if (j->bn)
            pack_bn_backward_run(j->src, j->src2, j->bn, j->activation, j->channels, j->pixels, j->L, j->dst, img, p0,
                                 np);
        else
            pack_run(j->src, j->channels, j->pixels, j->L, j->dst, img, p0, np);
    }
}

void layout_pack(const float *src, int n, int channels, size_t pixels, const pack_layout *L, void *dst)
{
    const copy_job j = {.src = src, .dst = dst, .L = L, .n = n, .channels = channels, .pixels = pixels};
    run_tasks(&j);
}

void layout_unpack(const void *src, const pack_layout *L, int n, int channels, size_t pixels, float *dst, int add)
{
    const copy_job j = {.src = src, .dst = dst, .L = L, .n = n, .channels = channels, .pixels = pixels,
                        .unpack = 1, .add = add};
    run_tasks(&j);
}

void layout_pack_bn_backward(const float *delta, const float *x, const bn_back_channel *f, int activation, int n,
                             int channels, size_t pixels, const pack_layout *L, float *dst)
{
    const copy_job j = {.src = delta, .src2 = x, .dst = dst, .L = L, .n = n, .channels = channels, .pixels = pixels,
                        .bn = f, .activation = activation};
    run_tasks(&j);
}

#pragma GCC pop_options

#else /* no AVX-512 code: the callers keep oneDNN's reorders */

int layout_pack_available(int bf16)
{
    (void)bf16;
    return 0;
}

void layout_pack(const float *src, int n, int channels, size_t pixels, const pack_layout *L, void *dst)
{
    (void)src, (void)n, (void)channels, (void)pixels, (void)L, (void)dst;
}

void layout_unpack(const void *src, const pack_layout *L, int n, int channels, size_t pixels, float *dst, int add)
{
    (void)src, (void)L, (void)n, (void)channels, (void)pixels, (void)dst, (void)add;
}

void layout_pack_bn_backward(const float *delta, const float *x, const bn_back_channel *f, int activation, int n,
                             int channels, size_t pixels, const pack_layout *L, float *dst)
{
    (void)delta, (void)x, (void)f, (void)activation, (void)n, (void)channels, (void)pixels, (void)L, (void)dst;
}

#endif
