/* The CUDA twins of the CPU kernels (backend.h's dn_kernels): same signatures, same formulas, same layouts.
 * Per-index work is in kernel_bodies.h (also compiled for the host by the tests); what is here is the launch
 * geometry, the block reductions and the cuBLAS/cuDNN calls. Every entry makes the backend's device current,
 * enqueues on its stream and reports a failed launch as DN_E_CUDA naming the kernel. */
#include "cuda_common.h"
#include "kernel_bodies.h"

#define DN_THREADS DN_CUDA_BLOCK
#define DN_MAX_BLOCKS (1u << 20)

static unsigned blocks_for(size_t n)
{
    size_t b = (n + DN_THREADS - 1) / DN_THREADS;
    if (b > DN_MAX_BLOCKS) b = DN_MAX_BLOCKS;
    return b ? (unsigned)b : 1u;
}

/* Grid-stride loop over 0..n-1. */
#define DN_FOR_EACH(i, n) for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

static dn_status launched(dn_cuda_ctx *ctx, const char *kernel)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? DN_OK : dn_cuda_error(ctx, e, kernel);
}

#define DN_ENTER(be)                                   \
    dn_cuda_ctx *ctx = dn_cuda_ctx_of(be);             \
    do {                                               \
        dn_status st_ = dn_cuda_enter(ctx);            \
        if (st_) return st_;                           \
    } while (0)

/* ---- dense algebra ---- */

static dn_status cu_gemm(dn_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                         int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    DN_ENTER(be);
    if (M <= 0 || N <= 0) return DN_OK;
    /* Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands, keep the flags. */
    cublasStatus_t s = cublasSgemm(ctx->blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc);
    return s == CUBLAS_STATUS_SUCCESS ? DN_OK : dn_cublas_error(ctx, s, "cublasSgemm");
}

static int conv_out(int n, int ksize, int stride, int pad) { return (n + 2 * pad - ksize) / stride + 1; }

__global__ void k_im2col(const float *im, int height, int width, int ksize, int stride, int pad, int oh, int ow,
                         size_t n, float *col)
{
    DN_FOR_EACH(i, n) col[i] = dn_im2col_at(im, height, width, ksize, stride, pad, oh, ow, i);
}

static dn_status cu_im2col(dn_backend *be, const float *im, int channels, int height, int width, int ksize, int stride,
                           int pad, float *col)
{
    DN_ENTER(be);
    const int oh = conv_out(height, ksize, stride, pad), ow = conv_out(width, ksize, stride, pad);
    const size_t n = (size_t)channels * ksize * ksize * oh * ow;
    if (!n) return DN_OK;
    k_im2col<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(im, height, width, ksize, stride, pad, oh, ow, n, col);
    return launched(ctx, "im2col");
}

__global__ void k_col2im(const float *col, int height, int width, int ksize, int stride, int pad, int oh, int ow,
                         size_t n, float *im)
{
    DN_FOR_EACH(i, n) im[i] = dn_col2im_cell(col, im, height, width, ksize, stride, pad, oh, ow, i);
}

static dn_status cu_col2im_add(dn_backend *be, const float *col, int channels, int height, int width, int ksize,
                               int stride, int pad, float *im)
{
    DN_ENTER(be);
    const int oh = conv_out(height, ksize, stride, pad), ow = conv_out(width, ksize, stride, pad);
    const size_t n = (size_t)channels * height * width;
    if (!n) return DN_OK;
    k_col2im<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(col, height, width, ksize, stride, pad, oh, ow, n, im);
    return launched(ctx, "col2im_add");
}

/* ---- element-wise ---- */

__global__ void k_activate(float *x, size_t n, int a)
{
    DN_FOR_EACH(i, n) x[i] = dn_activate_one(x[i], a);
}

static dn_status cu_activate(dn_backend *be, float *x, size_t n, int activation)
{
    DN_ENTER(be);
    if (!n || activation == DN_ACT_LINEAR) return DN_OK;
    k_activate<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(x, n, activation);
    return launched(ctx, "activate");
}

__global__ void k_gradient(const float *y, const float *x_raw, size_t n, int a, float *delta)
{
    DN_FOR_EACH(i, n) delta[i] *= dn_gradient_one(y[i], x_raw ? x_raw[i] : 0.f, a);
}

static dn_status cu_gradient(dn_backend *be, const float *y, const float *x_raw, size_t n, int activation,
                             float *delta)
{
    DN_ENTER(be);
    if (!n || activation == DN_ACT_LINEAR) return DN_OK;
    if ((activation == DN_ACT_MISH || activation == DN_ACT_SWISH) && !x_raw)
        return dn_fail(DN_E_ARG, "CUDA gradient: activation %d needs the input before the activation", activation);
    k_gradient<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(y, x_raw, n, activation, delta);
    return launched(ctx, "gradient");
}

__global__ void k_add(size_t n, const float *a, const float *b, float *out)
{
    DN_FOR_EACH(i, n) out[i] = a[i] + b[i];
}

static dn_status cu_add(dn_backend *be, size_t n, const float *a, const float *b, float *out)
{
    DN_ENTER(be);
    if (!n) return DN_OK;
    k_add<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(n, a, b, out);
    return launched(ctx, "add");
}

__global__ void k_axpy(size_t n, float alpha, const float *x, float *y)
{
    DN_FOR_EACH(i, n) y[i] += alpha * x[i];
}

static dn_status cu_axpy(dn_backend *be, size_t n, float alpha, const float *x, float *y)
{
    DN_ENTER(be);
    if (!n) return DN_OK;
    k_axpy<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(n, alpha, x, y);
    return launched(ctx, "axpy");
}

__global__ void k_copy_rows(size_t n, size_t cols, const float *src, size_t src_stride, float *dst, size_t dst_stride,
                            int accumulate)
{
    DN_FOR_EACH(i, n) dn_copy_rows_one(cols, src, src_stride, dst, dst_stride, accumulate, i);
}

static dn_status cu_copy_rows(dn_backend *be, size_t rows, size_t cols, const float *src, size_t src_stride, float *dst,
                              size_t dst_stride, int accumulate)
{
    DN_ENTER(be);
    const size_t n = rows * cols;
    if (!n) return DN_OK;
    if (!accumulate && src_stride == cols && dst_stride == cols) {
        cudaError_t e = cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, ctx->stream);
        return e == cudaSuccess ? DN_OK : dn_cuda_error(ctx, e, "cudaMemcpyAsync (copy_rows)");
    }
    k_copy_rows<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(n, cols, src, src_stride, dst, dst_stride, accumulate);
    return launched(ctx, "copy_rows");
}

/* ---- bias and batch norm ---- */

__global__ void k_affine(float *x, size_t n, int filters, size_t spatial, const float *biases, const float *scales,
                         const float *rolling_mean, const float *rolling_variance)
{
    DN_FOR_EACH(i, n) x[i] = dn_affine_one(x[i], biases, scales, rolling_mean, rolling_variance, filters, spatial, i);
}

static dn_status cu_affine_inference(dn_backend *be, float *x, int batch, int filters, size_t spatial,
                                     const float *biases, const float *scales, const float *rolling_mean,
                                     const float *rolling_variance)
{
    DN_ENTER(be);
    const size_t n = (size_t)batch * filters * spatial;
    if (!n) return DN_OK;
    k_affine<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(x, n, filters, spatial, biases, scales, rolling_mean,
                                                            rolling_variance);
    return launched(ctx, "affine_inference");
}

/* Sum of v over the block (blockDim.x = DN_THREADS, a power of two); every thread gets it. */
__device__ double block_sum(double v, double *red)
{
    red[threadIdx.x] = v;
    __syncthreads();
    for (unsigned half = DN_THREADS / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
        __syncthreads();
    }
    const double total = red[0];
    __syncthreads(); /* red may be reused right after */
    return total;
}

/* The per-filter reductions run on a grid of filters x chunks blocks (blockIdx.x = filter, blockIdx.y = chunk);
 * thread t of all a filter's blocks is chunk * DN_THREADS + threadIdx.x. */
#define DN_REDUCE_THREAD ((size_t)blockIdx.y * DN_THREADS + threadIdx.x)
#define DN_REDUCE_THREADS ((size_t)gridDim.y * DN_THREADS)

/* Partial sums of x (mean == NULL) or of (x - mean[f])^2 per filter and chunk. */
__global__ void k_filter_partials(const float *x, const float *mean, int batch, int filters, size_t spatial,
                                  double *partial)
{
    __shared__ double red[DN_THREADS];
    const int f = blockIdx.x;
    const double v = mean ? dn_filter_partial_sq(x, mean[f], f, batch, filters, spatial, DN_REDUCE_THREAD,
                                                 DN_REDUCE_THREADS)
                          : dn_filter_partial_sum(x, f, batch, filters, spatial, DN_REDUCE_THREAD, DN_REDUCE_THREADS);
    const double total = block_sum(v, red);
    if (threadIdx.x == 0) partial[(size_t)f * gridDim.y + blockIdx.y] = total;
}

static dn_status filter_partials(dn_cuda_ctx *ctx, const float *x, const float *mean, int batch, int filters,
                                 size_t spatial, int chunks, double *partial, const char *what)
{
    k_filter_partials<<<dim3(filters, chunks), DN_THREADS, 0, ctx->stream>>>(x, mean, batch, filters, spatial,
                                                                              partial);
    return launched(ctx, what);
}

__global__ void k_bn_mean(const double *sums, int filters, int chunks, double count, float *mean)
{
    DN_FOR_EACH(f, (size_t)filters) mean[f] = dn_bn_mean(dn_chunk_total(sums, (int)f, chunks), count);
}

__global__ void k_bn_variance(const double *sums, const double *squares, int filters, int chunks, double count,
                              float *mean, float *variance, float *rolling_mean, float *rolling_variance,
                              int update_rolling)
{
    DN_FOR_EACH(f, (size_t)filters)
    {
        dn_bn_stats(dn_chunk_total(sums, (int)f, chunks), dn_chunk_total(squares, (int)f, chunks), count, &mean[f],
                    &variance[f]);
        if (update_rolling) dn_bn_rolling(&rolling_mean[f], &rolling_variance[f], mean[f], variance[f]);
    }
}

__global__ void k_bn_normalize(const float *x, size_t n, int filters, size_t spatial, const float *mean,
                               const float *variance, const float *scales, const float *biases, float *x_norm,
                               float *out)
{
    DN_FOR_EACH(i, n) dn_bn_normalize_one(x, mean, variance, scales, biases, filters, spatial, i, x_norm, out);
}

/* The scratch for the reductions of `filters` filters: 3 doubles per filter and chunk, then 3 floats per filter. */
static dn_status reduce_scratch(dn_cuda_ctx *ctx, int filters, int chunks, double **partial, float **coef)
{
    const size_t doubles = 3 * (size_t)filters * chunks;
    dn_status st = dn_cuda_grow(ctx, &ctx->scratch, &ctx->scratch_bytes,
                                doubles * sizeof(double) + 3 * (size_t)filters * sizeof(float), "reduction scratch");
    if (st) return st;
    *partial = static_cast<double *>(ctx->scratch);
    *coef = reinterpret_cast<float *>(*partial + doubles);
    return DN_OK;
}

static dn_status cu_batchnorm_forward(dn_backend *be, const float *x, int batch, int filters, size_t spatial,
                                      const float *scales, const float *biases, float *mean, float *variance,
                                      float *rolling_mean, float *rolling_variance, int update_rolling,
                                      float *x_norm, float *out)
{
    DN_ENTER(be);
    const size_t count = (size_t)batch * spatial, n = count * filters;
    if (!n) return DN_OK;
    const int chunks = dn_reduce_chunks(spatial);
    double *sums;
    float *unused;
    dn_status st = reduce_scratch(ctx, filters, chunks, &sums, &unused);
    if (st) return st;
    double *squares = sums + (size_t)filters * chunks;
    /* sums, then the mean, then squares about that (float) mean, then mean and variance as the CPU rounds them */
    if ((st = filter_partials(ctx, x, NULL, batch, filters, spatial, chunks, sums, "batchnorm_forward (sums)")))
        return st;
    k_bn_mean<<<blocks_for(filters), DN_THREADS, 0, ctx->stream>>>(sums, filters, chunks, (double)count, mean);
    if ((st = launched(ctx, "batchnorm_forward (mean)"))) return st;
    if ((st = filter_partials(ctx, x, mean, batch, filters, spatial, chunks, squares, "batchnorm_forward (squares)")))
        return st;
    k_bn_variance<<<blocks_for(filters), DN_THREADS, 0, ctx->stream>>>(sums, squares, filters, chunks, (double)count,
                                                                       mean, variance, rolling_mean, rolling_variance,
                                                                       update_rolling);
    if ((st = launched(ctx, "batchnorm_forward (variance)"))) return st;
    k_bn_normalize<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(x, n, filters, spatial, mean, variance, scales,
                                                                  biases, x_norm, out);
    return launched(ctx, "batchnorm_forward (normalise)");
}

__global__ void k_bias_finish(const double *sums, int filters, int chunks, float *bias_updates)
{
    DN_FOR_EACH(f, (size_t)filters) bias_updates[f] += (float)dn_chunk_total(sums, (int)f, chunks);
}

static dn_status cu_bias_gradient(dn_backend *be, const float *delta, int batch, int filters, size_t spatial,
                                  float *bias_updates)
{
    DN_ENTER(be);
    if (filters <= 0) return DN_OK;
    const int chunks = dn_reduce_chunks(spatial);
    double *sums;
    float *unused;
    dn_status st = reduce_scratch(ctx, filters, chunks, &sums, &unused);
    if (st || (st = filter_partials(ctx, delta, NULL, batch, filters, spatial, chunks, sums, "bias_gradient (sums)")))
        return st;
    k_bias_finish<<<blocks_for(filters), DN_THREADS, 0, ctx->stream>>>(sums, filters, chunks, bias_updates);
    return launched(ctx, "bias_gradient");
}

/* Batch norm's backward: the three sums per filter and chunk, then per filter scale_updates and the coefficients,
 * then the per-element step. */
__global__ void k_bn_back_partials(const float *delta, const float *x, const float *x_norm, const float *mean,
                                   const float *scales, int batch, int filters, size_t spatial, double *partial)
{
    __shared__ double red[DN_THREADS];
    const int f = blockIdx.x;
    const dn_bn_back_sums p = dn_bn_back_partial(delta, x, x_norm, mean[f], scales[f], f, batch, filters, spatial,
                                                 DN_REDUCE_THREAD, DN_REDUCE_THREADS);
    const double dscale = block_sum(p.dscale, red), sum_g = block_sum(p.sum_g, red),
                 sum_gx = block_sum(p.sum_gx, red);
    if (threadIdx.x == 0) {
        double *out = partial + 3 * ((size_t)f * gridDim.y + blockIdx.y);
        out[0] = dscale;
        out[1] = sum_g;
        out[2] = sum_gx;
    }
}

__global__ void k_bn_back_finish(const double *partial, const float *variance, int filters, int chunks, double count,
                                 float *scale_updates, float *coef)
{
    DN_FOR_EACH(f, (size_t)filters)
    {
        const dn_bn_back_sums s = dn_bn_back_total(partial, (int)f, chunks);
        scale_updates[f] += (float)s.dscale;
        dn_bn_back_coefficients(s, variance[f], count, coef + 3 * f);
    }
}

__global__ void k_bn_back_apply(float *delta, const float *x, const float *mean, const float *scales, const float *coef,
                                size_t n, int filters, size_t spatial)
{
    DN_FOR_EACH(i, n)
    {
        const int f = dn_filter_of(i, filters, spatial);
        delta[i] = dn_bn_back_one(delta[i], x[i], mean[f], scales[f], coef + 3 * f);
    }
}

static dn_status cu_batchnorm_backward(dn_backend *be, float *delta, const float *x, const float *x_norm,
                                       const float *mean, const float *variance, const float *scales, int batch,
                                       int filters, size_t spatial, float *scale_updates)
{
    DN_ENTER(be);
    const size_t count = (size_t)batch * spatial, n = count * filters;
    if (!n) return DN_OK;
    const int chunks = dn_reduce_chunks(spatial);
    double *partial;
    float *coef;
    dn_status st = reduce_scratch(ctx, filters, chunks, &partial, &coef);
    if (st) return st;
    k_bn_back_partials<<<dim3(filters, chunks), DN_THREADS, 0, ctx->stream>>>(delta, x, x_norm, mean, scales, batch,
                                                                               filters, spatial, partial);
    if ((st = launched(ctx, "batchnorm_backward (sums)"))) return st;
    k_bn_back_finish<<<blocks_for(filters), DN_THREADS, 0, ctx->stream>>>(partial, variance, filters, chunks,
                                                                          (double)count, scale_updates, coef);
    if ((st = launched(ctx, "batchnorm_backward (coefficients)"))) return st;
    k_bn_back_apply<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(delta, x, mean, scales, coef, n, filters, spatial);
    return launched(ctx, "batchnorm_backward (apply)");
}

__global__ void k_sgd(float *w, float *u, size_t n, float lr_over_b, float momentum, float decay_b)
{
    DN_FOR_EACH(i, n) dn_sgd_one(&w[i], &u[i], lr_over_b, momentum, decay_b);
}

static dn_status cu_sgd_update(dn_backend *be, float *w, float *u, size_t n, float lr_over_b, float momentum,
                               float decay_b)
{
    DN_ENTER(be);
    if (!n) return DN_OK;
    k_sgd<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(w, u, n, lr_over_b, momentum, decay_b);
    return launched(ctx, "sgd_update");
}

/* ---- pooling, upsampling ---- */

__global__ void k_maxpool(const float *in, int channels, int height, int width, int size, int stride, int offset,
                          int out_h, int out_w, size_t n, float *out, int *argmax)
{
    DN_FOR_EACH(o, n)
    {
        int a;
        out[o] = dn_maxpool_one(in, channels, height, width, size, stride, offset, out_h, out_w, o, &a);
        if (argmax) argmax[o] = a;
    }
}

static dn_status cu_maxpool_forward(dn_backend *be, const float *in, int batch, int channels, int height, int width,
                                    int size, int stride, int padding, int out_h, int out_w, float *out, int *argmax)
{
    DN_ENTER(be);
    const size_t n = (size_t)batch * channels * out_h * out_w;
    if (!n) return DN_OK;
    k_maxpool<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(in, channels, height, width, size, stride, -padding / 2,
                                                             out_h, out_w, n, out, argmax);
    return launched(ctx, "maxpool_forward");
}

/* Windows overlap when stride < size, so several outputs may send their delta to one input cell. */
__global__ void k_maxpool_back(const float *delta, const int *argmax, size_t n, size_t outputs, size_t inputs,
                               float *in_delta)
{
    DN_FOR_EACH(o, n)
    {
        const long long t = dn_maxpool_target(argmax, outputs, inputs, o);
        if (t >= 0) atomicAdd(&in_delta[t], delta[o]);
    }
}

static dn_status cu_maxpool_backward(dn_backend *be, const float *delta, const int *argmax, int batch, size_t outputs,
                                     size_t inputs, float *in_delta)
{
    DN_ENTER(be);
    const size_t n = (size_t)batch * outputs;
    if (!n) return DN_OK;
    k_maxpool_back<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(delta, argmax, n, outputs, inputs, in_delta);
    return launched(ctx, "maxpool_backward");
}

__global__ void k_upsample(const float *in, int height, int width, int stride, float scale, size_t n, float *out)
{
    DN_FOR_EACH(o, n) out[o] = dn_upsample_one(in, height, width, stride, scale, o);
}

static dn_status cu_upsample_forward(dn_backend *be, const float *in, int batch, int channels, int height, int width,
                                     int stride, float scale, float *out)
{
    DN_ENTER(be);
    const size_t n = (size_t)batch * channels * height * stride * width * stride;
    if (!n) return DN_OK;
    k_upsample<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(in, height, width, stride, scale, n, out);
    return launched(ctx, "upsample_forward");
}

__global__ void k_upsample_back(const float *delta, int height, int width, int stride, float scale, size_t n,
                                float *in_delta)
{
    DN_FOR_EACH(i, n) in_delta[i] = dn_upsample_back_cell(delta, in_delta, height, width, stride, scale, i);
}

static dn_status cu_upsample_backward(dn_backend *be, const float *delta, int batch, int channels, int height,
                                      int width, int stride, float scale, float *in_delta)
{
    DN_ENTER(be);
    const size_t n = (size_t)batch * channels * height * width;
    if (!n) return DN_OK;
    k_upsample_back<<<blocks_for(n), DN_THREADS, 0, ctx->stream>>>(delta, height, width, stride, scale, n, in_delta);
    return launched(ctx, "upsample_backward");
}

/* ---- [yolo] ---- */

__global__ void k_yolo_activate(const float *in, int entries, int hw, int lin, size_t n, float *out)
{
    DN_FOR_EACH(i, n) out[i] = dn_yolo_activate_at(in, entries, hw, lin, i);
}

static dn_status cu_yolo_activate(dn_backend *be, const float *in, int batch, int n, int classes, int h, int w,
                                  int representation, float *out)
{
    DN_ENTER(be);
    const int entries = 5 + classes;
    const size_t total = (size_t)batch * n * entries * h * w;
    if (!total) return DN_OK;
    k_yolo_activate<<<blocks_for(total), DN_THREADS, 0, ctx->stream>>>(in, entries, h * w,
                                                                       representation == DN_REPR_LIN, total, out);
    return launched(ctx, "yolo_activate");
}

/* ---- whole convolutions through cuDNN ---- */
#ifdef DN_CUDNN

#define DNN_TRY(call, what)                                              \
    do {                                                                 \
        cudnnStatus_t s_ = (call);                                       \
        if (s_ != CUDNN_STATUS_SUCCESS) return dn_cudnn_error(ctx, s_, what); \
    } while (0)

/* Workspace cap when choosing algorithms: one that needs more is passed over for the next best. */
#define DN_CUDNN_WORKSPACE_CAP ((size_t)1 << 30)

static bool same_shape(const dn_conv_shape *a, const dn_conv_shape *b)
{
    return a->batch == b->batch && a->c == b->c && a->h == b->h && a->w == b->w && a->filters == b->filters &&
           a->size == b->size && a->stride == b->stride && a->pad == b->pad && a->groups == b->groups &&
           a->out_h == b->out_h && a->out_w == b->out_w;
}

static void plan_destroy(dn_cudnn_plan *p)
{
    if (p->x) cudnnDestroyTensorDescriptor(p->x);
    if (p->y) cudnnDestroyTensorDescriptor(p->y);
    if (p->w) cudnnDestroyFilterDescriptor(p->w);
    if (p->conv) cudnnDestroyConvolutionDescriptor(p->conv);
}

void dn_cudnn_plans_free(dn_cuda_ctx *ctx)
{
    for (int i = 0; i < ctx->n_plans; i++) plan_destroy(&ctx->plans[i]);
    free(ctx->plans);
    ctx->plans = NULL;
    ctx->n_plans = ctx->cap_plans = 0;
}

static dn_status plan_describe(dn_cuda_ctx *ctx, const dn_conv_shape *s, dn_cudnn_plan *p)
{
    DNN_TRY(cudnnCreateTensorDescriptor(&p->x), "cudnnCreateTensorDescriptor");
    DNN_TRY(cudnnCreateTensorDescriptor(&p->y), "cudnnCreateTensorDescriptor");
    DNN_TRY(cudnnCreateFilterDescriptor(&p->w), "cudnnCreateFilterDescriptor");
    DNN_TRY(cudnnCreateConvolutionDescriptor(&p->conv), "cudnnCreateConvolutionDescriptor");
    DNN_TRY(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s->batch, s->c, s->h, s->w),
            "cudnnSetTensor4dDescriptor (input)");
    DNN_TRY(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, s->batch, s->filters, s->out_h,
                                       s->out_w), "cudnnSetTensor4dDescriptor (output)");
    DNN_TRY(cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, s->filters, s->c / s->groups,
                                       s->size, s->size), "cudnnSetFilter4dDescriptor");
    DNN_TRY(cudnnSetConvolution2dDescriptor(p->conv, s->pad, s->pad, s->stride, s->stride, 1, 1,
                                            CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
            "cudnnSetConvolution2dDescriptor");
    DNN_TRY(cudnnSetConvolutionGroupCount(p->conv, s->groups), "cudnnSetConvolutionGroupCount");
    /* FMA math keeps cuDNN off TensorFloat-32 unless the network allows it. */
    DNN_TRY(cudnnSetConvolutionMathType(p->conv, ctx->allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH),
            "cudnnSetConvolutionMathType");
    int n, c, h, w;
    DNN_TRY(cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->w, &n, &c, &h, &w),
            "cudnnGetConvolution2dForwardOutputDim");
    if (n != s->batch || c != s->filters || h != s->out_h || w != s->out_w)
        return dn_fail(DN_E_ARG, "cuDNN convolution: output %dx%dx%dx%d, the layer expects %dx%dx%dx%d", n, c, h, w,
                       s->batch, s->filters, s->out_h, s->out_w);
    return DN_OK;
}

/* The heuristics' first algorithm (they come best first) that succeeds, fits the workspace cap and, unless the
 * network allows TensorFloat-32, does not use tensor-core math. */
template <typename Perf, typename Algo>
static dn_status pick(const dn_cuda_ctx *ctx, const Perf *perf, int returned, Algo *algo, size_t *bytes,
                      const char *what)
{
    for (int i = 0; i < returned; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > DN_CUDNN_WORKSPACE_CAP) continue;
        if (!ctx->allow_tf32 && perf[i].mathType == CUDNN_TENSOR_OP_MATH) continue;
        *algo = perf[i].algo;
        *bytes = perf[i].memory;
        return DN_OK;
    }
    return dn_fail(DN_E_CUDA, "cuDNN on cuda:%d: no %s algorithm for this convolution fits", ctx->device, what);
}

static dn_status plan_choose(dn_cuda_ctx *ctx, dn_cudnn_plan *p)
{
    int returned = 0;
    cudnnConvolutionFwdAlgoPerf_t fwd[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    DNN_TRY(cudnnGetConvolutionForwardAlgorithm_v7(ctx->dnn, p->x, p->w, p->conv, p->y,
                                                   CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, fwd),
            "cudnnGetConvolutionForwardAlgorithm_v7");
    dn_status st = pick(ctx, fwd, returned, &p->fwd, &p->fwd_bytes, "forward");
    if (st) return st;
    cudnnConvolutionBwdDataAlgoPerf_t data[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    DNN_TRY(cudnnGetConvolutionBackwardDataAlgorithm_v7(ctx->dnn, p->w, p->y, p->conv, p->x,
                                                        CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, data),
            "cudnnGetConvolutionBackwardDataAlgorithm_v7");
    if ((st = pick(ctx, data, returned, &p->bwd_data, &p->bwd_data_bytes, "backward-data"))) return st;
    cudnnConvolutionBwdFilterAlgoPerf_t filter[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    DNN_TRY(cudnnGetConvolutionBackwardFilterAlgorithm_v7(ctx->dnn, p->x, p->y, p->conv, p->w,
                                                          CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, filter),
            "cudnnGetConvolutionBackwardFilterAlgorithm_v7");
    return pick(ctx, filter, returned, &p->bwd_filter, &p->bwd_filter_bytes, "backward-filter");
}

/* The plan of a shape: found in the cache, or described, chosen and added once. */
static dn_status plan_for(dn_cuda_ctx *ctx, const dn_conv_shape *s, dn_cudnn_plan **out)
{
    for (int i = 0; i < ctx->n_plans; i++)
        if (same_shape(&ctx->plans[i].shape, s)) {
            *out = &ctx->plans[i];
            return DN_OK;
        }
    if (ctx->n_plans == ctx->cap_plans) {
        const int cap = ctx->cap_plans ? 2 * ctx->cap_plans : 16;
        dn_cudnn_plan *grown = (dn_cudnn_plan *)realloc(ctx->plans, sizeof(dn_cudnn_plan) * (size_t)cap);
        if (!grown) return dn_fail(DN_E_NOMEM, "out of memory (cuDNN plan cache)");
        ctx->plans = grown;
        ctx->cap_plans = cap;
    }
    dn_cudnn_plan *p = &ctx->plans[ctx->n_plans];
    memset(p, 0, sizeof *p);
    p->shape = *s;
    dn_status st = plan_describe(ctx, s, p);
    if (!st) st = plan_choose(ctx, p);
    if (st) {
        plan_destroy(p);
        return st;
    }
    ctx->n_plans++;
    *out = p;
    return DN_OK;
}

static dn_status workspace(dn_cuda_ctx *ctx, size_t bytes)
{
    return dn_cuda_grow(ctx, &ctx->workspace, &ctx->workspace_bytes, bytes, "cuDNN workspace");
}

static dn_status cu_conv_forward(dn_backend *be, const dn_conv_shape *s, const float *in, const float *weights,
                                 float *out)
{
    DN_ENTER(be);
    dn_cudnn_plan *p;
    dn_status st = plan_for(ctx, s, &p);
    if (st || (st = workspace(ctx, p->fwd_bytes))) return st;
    const float one = 1.f, zero = 0.f;
    DNN_TRY(cudnnConvolutionForward(ctx->dnn, &one, p->x, in, p->w, weights, p->conv, p->fwd, ctx->workspace,
                                    p->fwd_bytes, &zero, p->y, out), "cudnnConvolutionForward");
    return DN_OK;
}

static dn_status cu_conv_backward_data(dn_backend *be, const dn_conv_shape *s, const float *delta,
                                       const float *weights, float *in_delta)
{
    DN_ENTER(be);
    dn_cudnn_plan *p;
    dn_status st = plan_for(ctx, s, &p);
    if (st || (st = workspace(ctx, p->bwd_data_bytes))) return st;
    const float one = 1.f;
    DNN_TRY(cudnnConvolutionBackwardData(ctx->dnn, &one, p->w, weights, p->y, delta, p->conv, p->bwd_data,
                                         ctx->workspace, p->bwd_data_bytes, &one, p->x, in_delta),
            "cudnnConvolutionBackwardData");
    return DN_OK;
}

static dn_status cu_conv_backward_filter(dn_backend *be, const dn_conv_shape *s, const float *in, const float *delta,
                                         float *weight_updates)
{
    DN_ENTER(be);
    dn_cudnn_plan *p;
    dn_status st = plan_for(ctx, s, &p);
    if (st || (st = workspace(ctx, p->bwd_filter_bytes))) return st;
    const float one = 1.f;
    DNN_TRY(cudnnConvolutionBackwardFilter(ctx->dnn, &one, p->x, in, p->y, delta, p->conv, p->bwd_filter,
                                           ctx->workspace, p->bwd_filter_bytes, &one, p->w, weight_updates),
            "cudnnConvolutionBackwardFilter");
    return DN_OK;
}
#define DN_CONV_ENTRIES cu_conv_forward, cu_conv_backward_data, cu_conv_backward_filter
#else
#define DN_CONV_ENTRIES NULL, NULL, NULL
#endif

const dn_kernels dn_cuda_kernels = {
    cu_gemm, cu_im2col, cu_col2im_add,
    cu_activate, cu_gradient, cu_add, cu_axpy, cu_copy_rows,
    cu_affine_inference, cu_batchnorm_forward, cu_bias_gradient, cu_batchnorm_backward, cu_sgd_update,
    cu_maxpool_forward, cu_maxpool_backward, cu_upsample_forward, cu_upsample_backward,
    cu_yolo_activate,
    DN_CONV_ENTRIES,
    NULL, NULL, /* bn_act_forward, bn_act_backward: the separate batch-norm and activation kernels run */
    NULL,       /* maxpool_backward_set: deltas are zeroed and added to on the GPU (mark_delta_writers) */
};
