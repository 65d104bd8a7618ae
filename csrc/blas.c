/* Matrix products (OpenBLAS when available, a portable blocked loop otherwise), im2col/col2im, threads. */
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal.h"

#if defined(DN_BLAS_SCIPY)
/* The scipy-openblas32 wheel prefixes every symbol with scipy_. */
#include <cblas.h>
#define DN_SGEMM scipy_cblas_sgemm
#define DN_BLAS_SET_THREADS scipy_openblas_set_num_threads
#define DN_BLAS_NAME "OpenBLAS (scipy-openblas32)"
#elif defined(DN_BLAS_OPENBLAS)
#include <cblas.h>
#define DN_SGEMM cblas_sgemm
#define DN_BLAS_SET_THREADS openblas_set_num_threads
#define DN_BLAS_NAME "OpenBLAS (system)"
#else
#define DN_BLAS_NAME "portable C (no BLAS found at build time)"
#endif

/* The process setting (dn_set_threads; 0 = every core), and the thread count of the compute call the calling
 * thread is in (dn_threads_enter), which dn_gemm splits its products by. */
static _Atomic int process_threads;
static _Thread_local int call_threads;
static _Thread_local int call_bf16;

void dn_gemm_bf16_enter(int bf16) { call_bf16 = bf16; }

DN_EXPORT const char *dn_blas_name(void) { return DN_BLAS_NAME; }

static int resolve_threads(int n)
{
#ifdef _OPENMP
    return n > 0 ? n : omp_get_num_procs();
#else
    (void)n;
    return 1;
#endif
}

/* One thread pool: OpenMP's. OpenBLAS runs single-threaded inside it and dn_gemm splits large products
 * across the OpenMP threads itself; two pools (OpenBLAS pthreads + OpenMP) would spin against each other
 * on the same cores between every GEMM and element-wise loop (measured: a third of training time).
 * (OpenBLAS's thread count is process-wide: set once.) */
static void blas_single_threaded(void)
{
#ifdef DN_BLAS_SET_THREADS
    static _Atomic int done;
    if (!done) {
        DN_BLAS_SET_THREADS(1);
        done = 1;
    }
#endif
}

/* OpenMP's thread count is an attribute of the calling thread (its nthreads ICV): a network driven from a
 * thread other than the one that called dn_set_threads would otherwise run with OpenMP's default. So every
 * compute call applies its count here, on the thread that makes it. */
int dn_threads_enter(int threads)
{
    const int n = resolve_threads(threads > 0 ? threads : process_threads);
    blas_single_threaded();
    call_threads = n;
#ifdef _OPENMP
    if (omp_get_max_threads() != n) omp_set_num_threads(n);
    /* What every parallel loop of the call will ask for (read back, not assumed). */
    return omp_get_max_threads();
#else
    return 1;
#endif
}

DN_EXPORT void dn_set_threads(int n)
{
    process_threads = n > 0 ? n : 0;
    dn_threads_enter(0);
}

DN_EXPORT int dn_get_threads(void) { return resolve_threads(process_threads); }

#ifndef DN_SGEMM
/* Portable fallback: C = alpha*op(A)*op(B) + beta*C with the i-k-j order so the inner loop is contiguous. */
static void gemm_portable(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                          const float *B, int ldb, float beta, float *C, int ldc)
{
#pragma omp parallel for schedule(static) if ((long)M * N * K > 100000)
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.f) memset(c, 0, sizeof(float) * (size_t)N);
        else if (beta != 1.f) for (int j = 0; j < N; j++) c[j] *= beta;
        for (int k = 0; k < K; k++) {
            float a = alpha * (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
            if (a == 0.f) continue;
            if (!tb) {
                const float *b = B + (size_t)k * ldb;
                for (int j = 0; j < N; j++) c[j] += a * b[j];
            } else {
                for (int j = 0; j < N; j++) c[j] += a * B[(size_t)j * ldb + k];
            }
        }
    }
}
#endif

#ifdef DN_SGEMM
static void sgemm_block(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                        int ldb, float beta, float *C, int ldc)
{
    DN_SGEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda,
             B, ldb, beta, C, ldc);
}
#endif

#if defined(DN_SGEMM) && defined(_OPENMP)
/* C = alpha op(A) op(B) + beta C with the threads splitting K: each multiplies its slice of K into a partial
 * product of its own (thread 0 into C itself), then each adds the partials into its share of C's rows. For a
 * small C over a long K, a convolution's weight gradient over a large map: splitting M or N left each thread a
 * sliver (yolov3-tiny's first layer, 16 x 27 over 173056 positions: 17 GFLOP/s on two threads against 23 on
 * one). 1 when out of memory for the partials (the caller then splits M or N). */
static int gemm_split_k(int threads, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc)
{
    const size_t mn = (size_t)M * N;
    float *partial = malloc(sizeof(float) * mn * (size_t)(threads - 1));
    if (!partial) return 1;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int step = (K + nt - 1) / nt, lo = t * step, hi = lo + step < K ? lo + step : K;
        float *c = t ? partial + (size_t)(t - 1) * mn : C;
        const int ldc_t = t ? N : ldc;
        if (lo < hi) {
            const float *a = ta ? A + (size_t)lo * lda : A + lo;
            const float *b = tb ? B + lo : B + (size_t)lo * ldb;
            sgemm_block(ta, tb, M, N, hi - lo, alpha, a, lda, b, ldb, t ? 0.f : beta, c, ldc_t);
        } else if (t) {
            memset(c, 0, sizeof(float) * mn);
        }
#pragma omp barrier
        const int rows = (M + nt - 1) / nt, r0 = t * rows, r1 = r0 + rows < M ? r0 + rows : M;
        for (int j = 1; j < nt; j++)
            for (int i = r0; i < r1; i++) {
                const float *p = partial + (size_t)(j - 1) * mn + (size_t)i * N;
                float *row = C + (size_t)i * ldc;
                for (int n = 0; n < N; n++) row[n] += p[n];
            }
    }
    free(partial);
    return 0;
}
#endif

void dn_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc)
{
#ifdef DN_SGEMM
#ifdef _OPENMP
    /* bfloat16 where it pays (gemm_onednn.c): enough depth (K) for the conversion to be worth it, and not
     * from inside a parallel region */
    if (call_bf16 && alpha == 1.f && K >= 128 && M >= 16 && N >= 16 && !omp_in_parallel() &&
        !dn_gemm_bf16(trans_a, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc))
        return;
    /* Inside a parallel region (the Winograd path calls from every team member) each call stays on its thread. */
    const int threads = omp_in_parallel() ? 1 : (call_threads > 0 ? call_threads : 1);
#else
    const int threads = 1;
#endif
    if (threads == 1 || (double)M * N * K < 4e5) {
        sgemm_block(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#ifdef _OPENMP
    if ((double)M * N <= 65536 && K >= 2048 && K >= 4 * (M > N ? M : N) &&
        !gemm_split_k(threads, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        return;
#endif
    /* Split the larger of M and N into one block per thread (N blocks rounded to 16 columns). */
    const int split_n = N >= M;
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
        const int t = 0, nt = 1;
#endif
        const int extent = split_n ? N : M;
        int step = (extent + nt - 1) / nt;
        if (split_n) step = (step + 15) / 16 * 16;
        const int lo = t * step, hi = lo + step < extent ? lo + step : extent;
        if (lo < hi) {
            if (split_n) {
                const float *b = trans_b ? B + (size_t)lo * ldb : B + lo;
                sgemm_block(trans_a, trans_b, M, hi - lo, K, alpha, A, lda, b, ldb, beta, C + lo, ldc);
            } else {
                const float *a = trans_a ? A + lo : A + (size_t)lo * lda;
                sgemm_block(trans_a, trans_b, hi - lo, N, K, alpha, a, lda, B, ldb, beta, C + (size_t)lo * ldc, ldc);
            }
        }
    }
#else
    gemm_portable(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
#endif
}

/* col[(c*k*k + ky*k + kx) * (oh*ow) + y*ow + x] = im[c][y*stride - pad + ky][x*stride - pad + kx] or 0. */
void im2col(const float *im, int channels, int height, int width, int ksize, int stride, int pad, float *col)
{
    const int oh = (height + 2 * pad - ksize) / stride + 1;
    const int ow = (width + 2 * pad - ksize) / stride + 1;
    const int rows = channels * ksize * ksize;
#pragma omp parallel for schedule(static) if ((long)rows * oh * ow > 65536)
    for (int r = 0; r < rows; r++) {
        const int kx = r % ksize, ky = (r / ksize) % ksize, c = r / (ksize * ksize);
        float *dst = col + (size_t)r * oh * ow;
        const float *src = im + (size_t)c * height * width;
        for (int y = 0; y < oh; y++) {
            const int iy = y * stride - pad + ky;
            float *d = dst + (size_t)y * ow;
            if (iy < 0 || iy >= height) {
                memset(d, 0, sizeof(float) * (size_t)ow);
                continue;
            }
            const float *s = src + (size_t)iy * width;
            if (stride == 1) {
                /* Contiguous middle part, zeros at the borders. */
                int x0 = pad - kx; if (x0 < 0) x0 = 0;
                int x1 = width + pad - kx; if (x1 > ow) x1 = ow;
                for (int x = 0; x < x0 && x < ow; x++) d[x] = 0;
                if (x1 > x0) memcpy(d + x0, s + x0 - pad + kx, sizeof(float) * (size_t)(x1 - x0));
                for (int x = (x1 > x0 ? x1 : x0); x < ow; x++) d[x] = 0;
            } else {
                for (int x = 0; x < ow; x++) {
                    const int ix = x * stride - pad + kx;
                    d[x] = (ix >= 0 && ix < width) ? s[ix] : 0.f;
                }
            }
        }
    }
}

/* The adjoint of im2col: adds every column entry back to the image cell it came from. */
void col2im_add(const float *col, int channels, int height, int width, int ksize, int stride, int pad, float *im)
{
    const int oh = (height + 2 * pad - ksize) / stride + 1;
    const int ow = (width + 2 * pad - ksize) / stride + 1;
    /* Parallel over channels: rows of different channels never write the same image cell. */
#pragma omp parallel for schedule(static) if ((long)channels * height * width > 65536)
    for (int c = 0; c < channels; c++) {
        float *dst = im + (size_t)c * height * width;
        for (int ky = 0; ky < ksize; ky++) {
            for (int kx = 0; kx < ksize; kx++) {
                const float *src = col + ((size_t)(c * ksize + ky) * ksize + kx) * oh * ow;
                /* Output columns whose image column lies inside: x in [x0, x1), so the loop needs no test. */
                const int x0 = pad - kx > 0 ? (pad - kx + stride - 1) / stride : 0;
                int x1 = (width - 1 + pad - kx) / stride + 1;
                if (width - 1 + pad - kx < 0) x1 = 0;
                if (x1 > ow) x1 = ow;
                for (int y = 0; y < oh; y++) {
                    const int iy = y * stride - pad + ky;
                    if (iy < 0 || iy >= height) continue;
                    float *row = dst + (size_t)iy * width;
                    const float *s = src + (size_t)y * ow;
                    const int shift = kx - pad;
                    if (stride == 1) {
                        for (int x = x0; x < x1; x++) row[x + shift] += s[x];
                    } else {
                        for (int x = x0; x < x1; x++) row[x * stride + shift] += s[x];
                    }
                }
            }
        }
    }
}
