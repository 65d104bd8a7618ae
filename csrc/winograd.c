/* Inference path of [convolutional]: one OpenMP team does the whole layer (transforms, GEMMs, folded batch
 * norm and activation), calling the BLAS single-threaded from each member.
 *
 * Why one team: at inference the layers alternate GEMMs (OpenBLAS's own pthread pool) with elementwise passes
 * (libgomp's team). Both pools spin-wait after their work, so on a machine with as many cores as threads
 * each pool's spinning workers steal the cores the other pool needs; measured on 2 cores this made yolov3
 * 2-4x slower than its GEMMs alone. Here OpenBLAS is set to one thread for the duration of the layer and every
 * GEMM is issued from inside the team, on a part of the matrix that member owns.
 *
 * 3x3 stride-1 layers (groups 1) use Winograd's minimal filtering F(m x m, 3 x 3), m = 2 or 4, alpha = m + 2:
 *   Y = A^T [ (G g G^T) (.) (B^T d B) ] A   per alpha x alpha input tile d (stride m) and filter g,
 * done as alpha^2 independent GEMMs U[xi] (filters x c) * V[xi] (c x tiles). The transformed filters U are
 * cached per layer and recomputed when a checksum of the layer's weights changes (weights are loaded, trained
 * or set from Python without this file being told). Everything else uses im2col (skipped for 1x1 stride-1)
 * on the columns a team member owns, then one GEMM per member. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "conv_fast.h"

#if defined(DN_BLAS_SCIPY)
void scipy_openblas_set_num_threads(int);
int scipy_openblas_get_num_threads(void);
#define BLAS_SET_THREADS scipy_openblas_set_num_threads
#define BLAS_GET_THREADS scipy_openblas_get_num_threads
#elif defined(DN_BLAS_OPENBLAS)
void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
#define BLAS_SET_THREADS openblas_set_num_threads
#define BLAS_GET_THREADS openblas_get_num_threads
#endif

#define LANES 16 /* tiles transformed together: one AVX-512 register, two AVX2 ones */

/* Functions whose inner loops run over LANES floats get AVX-512 / AVX2 clones (internal.h). */
#define VEC_CLONES DN_VEC_CLONES
#define INLINE static inline __attribute__((always_inline))

struct conv_fast_cache {
    /* Winograd: U[xi][f][c] for tile size m, valid for these weights at this version (a checksum of them
     * cost 5% of a yolov3 forward). */
    int m, filters, c;
    const float *weights;
    uint64_t version;
    float *U;
    /* Scratch when the network's workspace is too small. */
    float *scratch;
    size_t scratch_floats;
};

void conv_fast_free(conv_fast_cache *cache)
{
    if (!cache) return;
    free(cache->U);
    free(cache->scratch);
    free(cache);
}

static int team_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int member(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int team(void)
{
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* [lo, hi) of `part` out of `parts` equal pieces of n, piece boundaries rounded to `align`. */
static void split_range(int n, int parts, int part, int align, int *lo, int *hi)
{
    int per = (n + parts - 1) / parts;
    per = (per + align - 1) / align * align;
    *lo = part * per < n ? part * per : n;
    *hi = (part + 1) * per < n ? (part + 1) * per : n;
}

/* ---- post-op: folded batch norm / bias, then the activation ------------------------------------------- */
INLINE float act1(float y, dn_activation a)
{
    switch (a) {
    case ACT_LEAKY: return y > 0 ? y : .1f * y;
    case ACT_RELU: return y > 0 ? y : 0;
    case ACT_LOGISTIC: return 1.f / (1.f + expf(-y));
    default: return y;
    }
}

static int act_inline(dn_activation a)
{
    return a == ACT_LINEAR || a == ACT_LEAKY || a == ACT_RELU || a == ACT_LOGISTIC;
}

/* rows [r0, r1) (filters), columns [n0, n1) of an out matrix with row length ld. */
VEC_CLONES
static void post_block(float *out, int ld, int r0, int r1, int n0, int n1, const float *mul, const float *add,
                       dn_activation act)
{
    for (int r = r0; r < r1; r++) {
        float *x = out + (size_t)r * ld + n0;
        const float mm = mul[r], aa = add[r];
        const int n = n1 - n0;
        switch (act) {
        case ACT_LEAKY:
            for (int i = 0; i < n; i++) { float y = x[i] * mm + aa; x[i] = y > 0 ? y : .1f * y; }
            break;
        case ACT_LINEAR:
            for (int i = 0; i < n; i++) x[i] = x[i] * mm + aa;
            break;
        default:
            for (int i = 0; i < n; i++) x[i] = x[i] * mm + aa;
            if (act_inline(act)) for (int i = 0; i < n; i++) x[i] = act1(x[i], act);
            else activate_array(x, (size_t)n, act); /* nested: runs on this member alone */
        }
    }
}

/* ---- im2col for a range of output positions -------------------------------------------------------- */
/* col[r * ncols + (p - p0)] for rows r = (ch, ky, kx) and output positions p in [p0, p1). */
static void im2col_range(const float *im, int channels, int h, int w, int ksize, int stride, int pad, int ow,
                         int p0, int p1, float *col)
{
    const int ncols = p1 - p0;
    const int rows = channels * ksize * ksize;
    for (int r = 0; r < rows; r++) {
        const int kx = r % ksize, ky = (r / ksize) % ksize, ch = r / (ksize * ksize);
        const float *src = im + (size_t)ch * h * w;
        float *dst = col + (size_t)r * ncols;
        int p = p0;
        while (p < p1) {
            const int y = p / ow, x0 = p % ow;
            int x1 = ow;
            if (x1 - x0 > p1 - p) x1 = x0 + (p1 - p);
            float *d = dst + (p - p0);
            const int iy = y * stride - pad + ky;
            if (iy < 0 || iy >= h) {
                memset(d, 0, sizeof(float) * (size_t)(x1 - x0));
            } else {
                const float *s = src + (size_t)iy * w;
                if (stride == 1) {
                    for (int x = x0; x < x1; x++) {
                        const int ix = x - pad + kx;
                        d[x - x0] = (ix >= 0 && ix < w) ? s[ix] : 0.f;
                    }
                } else {
                    for (int x = x0; x < x1; x++) {
                        const int ix = x * stride - pad + kx;
                        d[x - x0] = (ix >= 0 && ix < w) ? s[ix] : 0.f;
                    }
                }
            }
            p += x1 - x0;
        }
    }
}

/* ---- im2col (or direct) + GEMM, one part per team member --------------------------------------------- */
static void direct_forward(const conv_fast_desc *d, const float *in, float *out, int batch, float *col)
{
    const int cg = d->c / d->groups, mg = d->filters / d->groups;
    const int k = cg * d->size * d->size;
    const int N = d->out_h * d->out_w;
    const int plain = d->size == 1 && d->stride == 1 && d->pad == 0;
    const size_t inputs = (size_t)d->c * d->h * d->w, outputs = (size_t)d->filters * N;
    const int nt = team_threads();
    /* Columns split when each member gets enough of them; otherwise filters split (small late layers,
     * where the weights are the big operand and are then read once). */
    const int split_cols = nt == 1 || N >= 128 * nt || mg < 8 * nt;
#pragma omp parallel
    {
        const int t = member(), T = team();
        for (int b = 0; b < batch; b++) {
            for (int g = 0; g < d->groups; g++) {
                const float *im = in + b * inputs + (size_t)g * cg * d->h * d->w;
                float *o = out + b * outputs + (size_t)g * mg * N;
                const float *a = d->weights + (size_t)g * mg * k;
                const float *mul = d->mul + g * mg, *add = d->add + g * mg;
                if (split_cols) {
                    int n0, n1;
                    split_range(N, T, t, 16, &n0, &n1);
                    if (n1 > n0) {
                        const float *bm = im + n0;
                        int ldb = N;
                        if (!plain) {
                            float *mycol = col + (size_t)k * n0;
                            im2col_range(im, cg, d->h, d->w, d->size, d->stride, d->pad, d->out_w, n0, n1, mycol);
                            bm = mycol;
                            ldb = n1 - n0;
                        }
                        dn_gemm(0, 0, mg, n1 - n0, k, 1.f, a, k, bm, ldb, 0.f, o + n0, N);
                        post_block(o, N, 0, mg, n0, n1, mul, add, d->activation);
                    }
                } else {
                    const float *bm = im;
                    if (!plain) {
                        /* Every member needs all columns: build them together. */
                        int r0, r1;
                        split_range(cg, T, t, 1, &r0, &r1);
                        if (r1 > r0)
                            im2col_range(im + (size_t)r0 * d->h * d->w, r1 - r0, d->h, d->w, d->size, d->stride,
                                         d->pad, d->out_w, 0, N, col + (size_t)r0 * d->size * d->size * N);
                        bm = col;
#pragma omp barrier
                    }
                    int m0, m1;
                    split_range(mg, T, t, 4, &m0, &m1);
                    if (m1 > m0) {
                        dn_gemm(0, 0, m1 - m0, N, k, 1.f, a + (size_t)m0 * k, k, bm, N, 0.f, o + (size_t)m0 * N, N);
                        post_block(o, N, m0, m1, 0, N, mul, add, d->activation);
                    }
#pragma omp barrier
                }
            }
        }
    }
}

/* ---- Winograd ----------------------------------------------------------------------------------------- */
/* The 1-D transforms, over LANES tiles at once. in[k * si], out[k * so] are LANES-float vectors. */
typedef float lanes[LANES];

INLINE void bt_2(const lanes *x, int si, lanes *o, int so)
{
    for (int l = 0; l < LANES; l++) {
        const float d0 = x[0][l], d1 = x[si][l], d2 = x[2 * si][l], d3 = x[3 * si][l];
        o[0][l] = d0 - d2;
        o[so][l] = d1 + d2;
        o[2 * so][l] = d2 - d1;
        o[3 * so][l] = d1 - d3;
    }
}

INLINE void at_2(const lanes *x, int si, lanes *o, int so)
{
    for (int l = 0; l < LANES; l++) {
        const float m0 = x[0][l], m1 = x[si][l], m2 = x[2 * si][l], m3 = x[3 * si][l];
        o[0][l] = m0 + m1 + m2;
        o[so][l] = m1 - m2 - m3;
    }
}

INLINE void bt_4(const lanes *x, int si, lanes *o, int so)
{
    for (int l = 0; l < LANES; l++) {
        const float d0 = x[0][l], d1 = x[si][l], d2 = x[2 * si][l], d3 = x[3 * si][l], d4 = x[4 * si][l],
                    d5 = x[5 * si][l];
        const float a = d4 - 4.f * d2, b = d3 - 4.f * d1; /* shared by rows 1, 2 */
        const float c = d4 - d2, e = 2.f * (d3 - d1);      /* shared by rows 3, 4 */
        o[0][l] = 4.f * d0 - 5.f * d2 + d4;
        o[so][l] = a + b;
        o[2 * so][l] = a - b;
        o[3 * so][l] = c + e;
        o[4 * so][l] = c - e;
        o[5 * so][l] = 4.f * d1 - 5.f * d3 + d5;
    }
}

INLINE void at_4(const lanes *x, int si, lanes *o, int so)
{
    for (int l = 0; l < LANES; l++) {
        const float m0 = x[0][l], m1 = x[si][l], m2 = x[2 * si][l], m3 = x[3 * si][l], m4 = x[4 * si][l],
                    m5 = x[5 * si][l];
        const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
        o[0][l] = m0 + s12 + s34;
        o[so][l] = d12 + 2.f * d34;
        o[2 * so][l] = s12 + 4.f * s34;
        o[3 * so][l] = d12 + 8.f * d34 + m5;
    }
}

/* G (alpha x 3) for m = 2 and m = 4 (interpolation points 0, 1, -1 [, 2, -2] and infinity). */
static const double G2[4][3] = {{1, 0, 0}, {.5, .5, .5}, {.5, -.5, .5}, {0, 0, 1}};
static const double G4[6][3] = {{1. / 4, 0, 0},           {-1. / 6, -1. / 6, -1. / 6}, {-1. / 6, 1. / 6, -1. / 6},
                                {1. / 24, 1. / 12, 1. / 6}, {1. / 24, -1. / 12, 1. / 6}, {0, 0, 1}};

/* U[xi][f][c] = (G g G^T)[xi] for every filter f and channel c. */
static void transform_weights(const float *w, int filters, int c, int m, float *U)
{
    const int A = m + 2;
    const double(*G)[3] = m == 2 ? G2 : G4;
    const size_t fc = (size_t)filters * c;
#pragma omp parallel for schedule(static)
    for (int f = 0; f < filters; f++) {
        for (int ch = 0; ch < c; ch++) {
            const float *g = w + ((size_t)f * c + ch) * 9;
            double tmp[6][3];
            for (int i = 0; i < A; i++)
                for (int j = 0; j < 3; j++) tmp[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
            for (int i = 0; i < A; i++)
                for (int j = 0; j < A; j++)
                    U[(size_t)(i * A + j) * fc + (size_t)f * c + ch] =
                        (float)(tmp[i][0] * G[j][0] + tmp[i][1] * G[j][1] + tmp[i][2] * G[j][2]);
        }
    }
}

/* V[xi][ch][t] for channels [c0, c1) of one image, tiles of tile row ty. */
INLINE void input_row(const float *im, int h, int w, int pad, int m, int tiles_x, int T, int c, int ch, int ty,
                      float *V)
{
    const int A = m + 2;
    const float *src = im + (size_t)ch * h * w;
    const int iy0 = ty * m - pad;
    for (int tx0 = 0; tx0 < tiles_x; tx0 += LANES) {
        const int nl = tiles_x - tx0 < LANES ? tiles_x - tx0 : LANES;
        lanes dd[36], tt[36];
        const int ix0 = tx0 * m - pad;
        const int interior = iy0 >= 0 && iy0 + A <= h && ix0 >= 0 && ix0 + (LANES - 1) * m + A <= w;
        for (int i = 0; i < A; i++) {
            const int iy = iy0 + i;
            const int row_inside = iy >= 0 && iy < h;
            /* Only form the row pointer for a row that exists: src + (size_t)-1 * w would wrap (UB). */
            const float *row = row_inside ? src + (size_t)iy * w : src;
            if (interior) {
                for (int j = 0; j < A; j++)
                    for (int l = 0; l < LANES; l++) dd[i * A + j][l] = row[ix0 + l * m + j];
            } else if (!row_inside) {
                for (int j = 0; j < A; j++) memset(dd[i * A + j], 0, sizeof(lanes));
            } else {
                for (int j = 0; j < A; j++)
                    for (int l = 0; l < LANES; l++) {
                        const int ix = ix0 + l * m + j;
                        dd[i * A + j][l] = (l < nl && ix >= 0 && ix < w) ? row[ix] : 0.f;
                    }
            }
        }
        /* rows: tt = B^T d (column by column), then columns: V = tt B */
        if (m == 2) {
            for (int j = 0; j < A; j++) bt_2(dd + j, A, tt + j, A);
            for (int i = 0; i < A; i++) bt_2(tt + i * A, 1, dd + i * A, 1);
        } else {
            for (int j = 0; j < A; j++) bt_4(dd + j, A, tt + j, A);
            for (int i = 0; i < A; i++) bt_4(tt + i * A, 1, dd + i * A, 1);
        }
        const size_t t0 = (size_t)ty * tiles_x + tx0;
        for (int xi = 0; xi < A * A; xi++) {
            float *dst = V + ((size_t)xi * c + ch) * T + t0;
            /* a plain loop, not memcpy: gcc makes a 64-byte memcpy a slow `rep movs` */
            if (nl == LANES) for (int l = 0; l < LANES; l++) dst[l] = dd[xi][l];
            else memcpy(dst, dd[xi], sizeof(float) * (size_t)nl);
        }
    }
}

VEC_CLONES
static void input_transform_m2(const float *im, int h, int w, int pad, int tiles_x, int T, int c, int ch, int ty,
                               float *V)
{
    input_row(im, h, w, pad, 2, tiles_x, T, c, ch, ty, V);
}

VEC_CLONES
static void input_transform_m4(const float *im, int h, int w, int pad, int tiles_x, int T, int c, int ch, int ty,
                               float *V)
{
    input_row(im, h, w, pad, 4, tiles_x, T, c, ch, ty, V);
}

/* Output tiles of filter f, tile row ty: Y = A^T M A, then mul/add/activation, written where inside. */
INLINE void output_row(const float *Mb, int filters, int T, int m, int tiles_x, int f, int ty, float mul, float add,
                       dn_activation act, float *o, int oh, int ow)
{
    const int A = m + 2;
    for (int tx0 = 0; tx0 < tiles_x; tx0 += LANES) {
        const int nl = tiles_x - tx0 < LANES ? tiles_x - tx0 : LANES;
        lanes mm[36], tt[24], yy[16];
        const size_t t0 = (size_t)ty * tiles_x + tx0;
        for (int xi = 0; xi < A * A; xi++) {
            const float *src = Mb + ((size_t)xi * filters + f) * T + t0;
            if (nl == LANES) for (int l = 0; l < LANES; l++) mm[xi][l] = src[l];  /* not memcpy: see above */
            else {
                memcpy(mm[xi], src, sizeof(float) * (size_t)nl);
                memset(mm[xi] + nl, 0, sizeof(float) * (size_t)(LANES - nl));
            }
        }
        /* tt (m x A) = A^T M, yy (m x m) = tt A */
        if (m == 2) {
            for (int j = 0; j < A; j++) at_2(mm + j, A, tt + j, A);
            for (int i = 0; i < m; i++) at_2(tt + i * A, 1, yy + i * m, 1);
        } else {
            for (int j = 0; j < A; j++) at_4(mm + j, A, tt + j, A);
            for (int i = 0; i < m; i++) at_4(tt + i * A, 1, yy + i * m, 1);
        }
        /* the activation chosen outside the loops, so that each loop is vector code */
        if (act == ACT_LEAKY) {
            for (int i = 0; i < m * m; i++)
                for (int l = 0; l < LANES; l++) {
                    const float y = yy[i][l] * mul + add;
                    yy[i][l] = y > 0 ? y : .1f * y;
                }
        } else if (act_inline(act)) {
            for (int i = 0; i < m * m; i++)
                for (int l = 0; l < LANES; l++) yy[i][l] = act1(yy[i][l] * mul + add, act);
        } else {
            for (int i = 0; i < m * m; i++)
                for (int l = 0; l < LANES; l++) yy[i][l] = yy[i][l] * mul + add;
        }
        for (int i = 0; i < m; i++) {
            const int y = ty * m + i;
            if (y >= oh) break;
            float *row = o + (size_t)y * ow;
            const int x0 = tx0 * m;
            if (x0 + nl * m <= ow) {
                for (int l = 0; l < nl; l++)
                    for (int j = 0; j < m; j++) row[x0 + l * m + j] = yy[i * m + j][l];
            } else {
                for (int l = 0; l < nl; l++)
                    for (int j = 0; j < m; j++)
                        if (x0 + l * m + j < ow) row[x0 + l * m + j] = yy[i * m + j][l];
            }
        }
    }
}

VEC_CLONES
static void output_transform_m2(const float *Mb, int filters, int T, int tiles_x, int f, int ty, float mul, float add,
                                dn_activation act, float *o, int oh, int ow)
{
    output_row(Mb, filters, T, 2, tiles_x, f, ty, mul, add, act, o, oh, ow);
}

VEC_CLONES
static void output_transform_m4(const float *Mb, int filters, int T, int tiles_x, int f, int ty, float mul, float add,
                                dn_activation act, float *o, int oh, int ow)
{
    output_row(Mb, filters, T, 4, tiles_x, f, ty, mul, add, act, o, oh, ow);
}

static void winograd_forward(const conv_fast_desc *d, const float *U, int m, const float *in, float *out, int batch,
                             float *V, float *Mb)
{
    const int A = m + 2, AA = A * A;
    const int c = d->c, F = d->filters, oh = d->out_h, ow = d->out_w;
    const int tiles_x = (ow + m - 1) / m, tiles_y = (oh + m - 1) / m, T = tiles_x * tiles_y;
    const size_t inputs = (size_t)c * d->h * d->w, outputs = (size_t)F * oh * ow;
    /* GEMM work items: (xi, column chunk); chunks keep the B and C panels of one call near the cache size. */
    const int nt = team_threads();
    int chunk = T;
    if (AA < 2 * nt || T > 1024) {
        int parts = (T + 511) / 512;
        if (parts * AA < 2 * nt) parts = (2 * nt + AA - 1) / AA;
        chunk = (T + parts - 1) / parts;
        chunk = (chunk + 15) / 16 * 16;
    }
    const int n_chunks = (T + chunk - 1) / chunk;
    const int items = AA * n_chunks;
#pragma omp parallel
    {
        for (int b = 0; b < batch; b++) {
            const float *im = in + b * inputs;
            float *o = out + b * outputs;
#pragma omp for collapse(2) schedule(static)
            for (int ch = 0; ch < c; ch++)
                for (int ty = 0; ty < tiles_y; ty++) {
                    if (m == 2) input_transform_m2(im, d->h, d->w, d->pad, tiles_x, T, c, ch, ty, V);
                    else input_transform_m4(im, d->h, d->w, d->pad, tiles_x, T, c, ch, ty, V);
                }
            /* implicit barrier */
#pragma omp for schedule(static)
            for (int it = 0; it < items; it++) {
                const int xi = it / n_chunks, t0 = (it % n_chunks) * chunk;
                const int nc = T - t0 < chunk ? T - t0 : chunk;
                dn_gemm(0, 0, F, nc, c, 1.f, U + (size_t)xi * F * c, c, V + (size_t)xi * c * T + t0, T, 0.f,
                        Mb + (size_t)xi * F * T + t0, T);
            }
#pragma omp for collapse(2) schedule(static)
            for (int f = 0; f < F; f++)
                for (int ty = 0; ty < tiles_y; ty++) {
                    float *of = o + (size_t)f * oh * ow;
                    if (m == 2)
                        output_transform_m2(Mb, F, T, tiles_x, f, ty, d->mul[f], d->add[f], d->activation, of, oh, ow);
                    else
                        output_transform_m4(Mb, F, T, tiles_x, f, ty, d->mul[f], d->add[f], d->activation, of, oh, ow);
                    if (!act_inline(d->activation)) {
                        const int y0 = ty * m, y1 = y0 + m < oh ? y0 + m : oh;
                        activate_array(of + (size_t)y0 * ow, (size_t)(y1 - y0) * ow, d->activation);
                    }
                }
        }
    }
}

/* The tile size for a 3x3 stride-1 layer, 0 for none. F(4x4) does 4x fewer multiplies than direct, F(2x2)
 * 2.25x; F(4x4) wastes more on partial tiles of small maps and needs 36/16 more transformed weights. */
static int winograd_tile(const conv_fast_desc *d)
{
    if (d->size != 3 || d->stride != 1 || d->groups != 1 || d->c < 8 || d->filters < 8) return 0;
    if (d->out_h < 2 || d->out_w < 2) return 0;
    if (d->algo == DN_CONV_GEMM) return 0;
    if (d->algo == DN_CONV_WINOGRAD_F2) return 2;
    if (d->algo == DN_CONV_WINOGRAD_F4) return 4;
    return d->out_h * d->out_w >= 24 * 24 ? 4 : 2;
}

/* Floats of a Winograd layer with tile m: transformed weights U, and the scratch V (inputs) then M (products). */
static void winograd_floats(const conv_fast_desc *d, int m, size_t *nu, size_t *nv, size_t *nm)
{
    const size_t A = (size_t)m + 2;
    const size_t T = (size_t)((d->out_w + m - 1) / m) * ((d->out_h + m - 1) / m);
    *nu = A * A * d->filters * d->c;
    *nv = A * A * d->c * T;
    *nm = A * A * d->filters * T;
}

/* Floats of the im2col matrix of one image (0 for a 1x1 stride-1 layer, which reads its input directly). */
static size_t col_floats(const conv_fast_desc *d)
{
    const int plain = d->size == 1 && d->stride == 1 && d->pad == 0;
    return plain ? 0 : (size_t)(d->c / d->groups) * d->size * d->size * d->out_h * d->out_w;
}

size_t conv_fast_cache_floats(const conv_fast_desc *d, size_t workspace_floats)
{
    if (d->algo == DN_CONV_PLAIN) return 0;
    const int m = winograd_tile(d);
    size_t kept = 0, nv = 0, nm = 0, need = col_floats(d);
    if (m) {
        winograd_floats(d, m, &kept, &nv, &nm);
        need = nv + nm;
    }
    return kept + (need > workspace_floats ? need : 0);
}

static float *scratch(conv_fast_cache *cache, float *ws, size_t ws_floats, size_t need)
{
    if (need <= ws_floats) return ws;
    if (need > cache->scratch_floats) {
        float *p = realloc(cache->scratch, sizeof(float) * need);
        if (!p) return NULL;
        cache->scratch = p;
        cache->scratch_floats = need;
    }
    return cache->scratch;
}

int conv_fast_forward(conv_fast_cache **cachep, const conv_fast_desc *d, float *workspace, size_t workspace_floats,
                      const float *in, float *out, int batch)
{
    if (d->algo == DN_CONV_PLAIN) return 1;
    if (!*cachep) {
        *cachep = calloc(1, sizeof **cachep);
        if (!*cachep) return 1;
    }
    conv_fast_cache *cache = *cachep;
    int m = winograd_tile(d);
    float *V = NULL, *Mb = NULL;
    if (m) {
        size_t nu, nv, nm;
        winograd_floats(d, m, &nu, &nv, &nm);
        if (!cache->U || cache->m != m || cache->filters != d->filters || cache->c != d->c ||
            cache->weights != d->weights || cache->version != d->weights_version) {
            float *U = realloc(cache->U, sizeof(float) * nu);
            if (U) {
                cache->U = U;
                transform_weights(d->weights, d->filters, d->c, m, U);
                cache->m = m;
                cache->filters = d->filters;
                cache->c = d->c;
                cache->weights = d->weights;
                cache->version = d->weights_version;
            } else {
                m = 0;
            }
        }
        if (m) {
            V = scratch(cache, workspace, workspace_floats, nv + nm);
            if (V) Mb = V + nv;
            else m = 0;
        }
    }
    float *col = NULL;
    if (!m) {
        const size_t need = col_floats(d);
        col = need ? scratch(cache, workspace, workspace_floats, need) : workspace;
        if (need && !col) return 1;
    }

#ifdef BLAS_SET_THREADS
    /* The GEMMs below run inside the OpenMP team, one per member: the BLAS must not start its own pool. */
    const int blas_threads = BLAS_GET_THREADS();
    if (blas_threads != 1) BLAS_SET_THREADS(1);
#endif
    if (m) winograd_forward(d, cache->U, m, in, out, batch, V, Mb);
    else direct_forward(d, in, out, batch, col);
#ifdef BLAS_SET_THREADS
    if (blas_threads != 1) BLAS_SET_THREADS(blas_threads);
#endif
    return 0;
}
