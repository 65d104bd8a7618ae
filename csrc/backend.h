/* Backends: where a network's buffers live and the primitives its layers are made of.
 *
 * A network chooses its backend once, at load, from dn_options.device (-1 = CPU, k = CUDA device k).
 * Every buffer a layer owns (outputs, deltas, parameters, update buffers, workspace, training caches) is
 * allocated through the backend, and every arithmetic step of a layer's forward, backward and update is one
 * of the kernels below, called through the network's backend. The CPU kernels (kernels_cpu.c) are the
 * reference; the CUDA kernels (cuda/kernels.cu) are their twins with the same signatures, and tests compare
 * the two. Per-element formulas that both share live in elementwise.h.
 *
 * Conventions
 *  - Every pointer argument of a kernel is in the backend's memory (device memory for CUDA), except where a
 *    comment says "host". Sizes are in elements unless named *_bytes.
 *  - Kernels are enqueued in order on the backend's one stream; a to_host copy waits for what came before.
 *  - Kernels return DN_OK or an error with its message set (CUDA: DN_E_CUDA naming the call).
 *  - Sign convention of deltas as in darknet.h: delta = -dLoss/d(output); update buffers accumulate
 *    -dLoss/d(parameter).
 *  - Layouts: NCHW, images of `per_image` floats one after the other.
 *
 * Internal: not installed, not seen by cffi.
 */
#ifndef DN_BACKEND_H
#define DN_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "darknet.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dn_backend dn_backend;

struct pack_layout; /* layout_pack.h */

/* The shape of one convolution, for the kernels that take a whole convolution (cuDNN). */
typedef struct dn_conv_shape {
    int batch;                 /* images */
    int c, h, w;               /* input */
    int filters, size, stride, pad, groups;
    int out_h, out_w;
} dn_conv_shape;

typedef struct dn_kernels {
    /* ---- dense algebra ---- */
    /* C[M x N] = alpha * op(A) * op(B) + beta * C, row-major (as dn_gemm). */
    dn_status (*gemm)(dn_backend *be, int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A,
                      int lda, const float *B, int ldb, float beta, float *C, int ldc);
    /* One image: col[(c*ksize*ksize) x (out_h*out_w)] from im[c][h][w] (zero padding). */
    dn_status (*im2col)(dn_backend *be, const float *im, int channels, int height, int width, int ksize, int stride,
                        int pad, float *col);
    /* One image: im += the columns folded back (the adjoint of im2col). */
    dn_status (*col2im_add)(dn_backend *be, const float *col, int channels, int height, int width, int ksize,
                            int stride, int pad, float *im);

    /* ---- element-wise ---- */
    /* x[i] = act(x[i]) (dn_activation codes of internal.h). */
    dn_status (*activate)(dn_backend *be, float *x, size_t n, int activation);
    /* delta[i] *= act'(.) from the activated output y (x_raw: the input before the activation, needed by
     * mish and swish, else may be NULL). */
    dn_status (*gradient)(dn_backend *be, const float *y, const float *x_raw, size_t n, int activation,
                          float *delta);
    /* out[i] = a[i] + b[i] (out may be a or b). */
    dn_status (*add)(dn_backend *be, size_t n, const float *a, const float *b, float *out);
    /* y[i] += alpha * x[i]. */
    dn_status (*axpy)(dn_backend *be, size_t n, float alpha, const float *x, float *y);
    /* For r in 0..rows-1: dst[r*dst_stride + i] (=, or += when accumulate) src[r*src_stride + i], i < cols.
     * (route: one row per image; its backward accumulates). */
    dn_status (*copy_rows)(dn_backend *be, size_t rows, size_t cols, const float *src, size_t src_stride, float *dst,
                           size_t dst_stride, int accumulate);

    /* ---- convolution's bias and batch norm (x: batch x filters x spatial) ---- */
    /* Inference: x = x * mul + add per filter, with mul = scales/(sqrt(rolling_variance)+1e-6) and
     * add = biases - rolling_mean*mul when scales != NULL (batch norm), else mul = 1, add = biases. */
    dn_status (*affine_inference)(dn_backend *be, float *x, int batch, int filters, size_t spatial,
                                  const float *biases, const float *scales, const float *rolling_mean,
                                  const float *rolling_variance);
    /* Training: batch statistics of x (mean, unbiased variance, per filter), optionally the rolling averages
     * (.99/.01), then x_norm = (x - mean)/(sqrt(var)+1e-6) and out = x_norm*scales + biases. */
    dn_status (*batchnorm_forward)(dn_backend *be, const float *x, int batch, int filters, size_t spatial,
                                   const float *scales, const float *biases, float *mean, float *variance,
                                   float *rolling_mean, float *rolling_variance, int update_rolling, float *x_norm,
                                   float *out);
    /* bias_updates[f] += sum of delta over the batch and spatial positions of filter f. */
    dn_status (*bias_gradient)(dn_backend *be, const float *delta, int batch, int filters, size_t spatial,
                               float *bias_updates);
    /* Batch norm's backward, in place on delta (from d(out) to d(x)); scale_updates[f] += sum delta*x_norm. */
    dn_status (*batchnorm_backward)(dn_backend *be, float *delta, const float *x, const float *x_norm,
                                    const float *mean, const float *variance, const float *scales, int batch,
                                    int filters, size_t spatial, float *scale_updates);
    /* SGD step of SPEC §3 on one array: u -= decay_b * w; w += lr_over_b * u; u *= momentum (decay_b = 0 for
     * biases and scales). */
    dn_status (*sgd_update)(dn_backend *be, float *w, float *u, size_t n, float lr_over_b, float momentum,
                            float decay_b);

    /* ---- pooling, upsampling ---- */
    /* Window starts at -padding/2; cells outside count as -inf; argmax (may be NULL) receives, per output, the
     * index of its maximum within the image (c*h*w + y*w + x), -1 when the window is empty. */
    dn_status (*maxpool_forward)(dn_backend *be, const float *in, int batch, int channels, int height, int width,
                                 int size, int stride, int padding, int out_h, int out_w, float *out, int *argmax);
    /* in_delta[image][argmax[o]] += delta[o]. */
    dn_status (*maxpool_backward)(dn_backend *be, const float *delta, const int *argmax, int batch, size_t outputs,
                                  size_t inputs, float *in_delta);
    /* Nearest neighbour: out[y][x] = scale * in[y/stride][x/stride]. */
    dn_status (*upsample_forward)(dn_backend *be, const float *in, int batch, int channels, int height, int width,
                                  int stride, float scale, float *out);
    /* in_delta[y/stride][x/stride] += scale * delta[y][x]. */
    dn_status (*upsample_backward)(dn_backend *be, const float *delta, int batch, int channels, int height,
                                   int width, int stride, float scale, float *in_delta);

    /* ---- [yolo] ---- */
    /* out = in with the logistic applied to x, y, objectness and classes of every anchor; for representation
     * lin, raw tw/th <= 0 become e^value (as the reference). n anchors, entries = 5 + classes. */
    dn_status (*yolo_activate)(dn_backend *be, const float *in, int batch, int n, int classes, int h, int w,
                               int representation, float *out);

    /* ---- whole convolutions (optional: NULL = im2col + gemm) ---- */
    /* out = W (x) in for every image. */
    dn_status (*conv_forward)(dn_backend *be, const dn_conv_shape *s, const float *in, const float *weights,
                              float *out);
    /* in_delta += W^T (x) delta. */
    dn_status (*conv_backward_data)(dn_backend *be, const dn_conv_shape *s, const float *delta,
                                    const float *weights, float *in_delta);
    /* weight_updates += delta (x) in. */
    dn_status (*conv_backward_filter)(dn_backend *be, const dn_conv_shape *s, const float *in, const float *delta,
                                      float *weight_updates);
    /* ---- fused batch norm, optional (last: the CUDA backend's positional initialiser leaves them NULL; the
     * layer then runs batchnorm_forward, activate, then gradient, bias_gradient and batchnorm_backward) ----
     * Training batch norm and an activation whose gradient reads only its output, fused:
     * bn_act_forward makes the statistics (and rolling averages) as batchnorm_forward does and
     * out = act(x_norm*scales + biases) in one pass, keeping no x_norm; bn_act_backward goes from d(out) to d(x)
     * in place on delta through the activation and the batch norm, adding to bias_updates and scale_updates
     * (x_norm made again from x, mean and variance). The same results as the separate kernels up to the order
     * of the sums. */
    dn_status (*bn_act_forward)(dn_backend *be, const float *x, int batch, int filters, size_t spatial,
                                const float *scales, const float *biases, float *mean, float *variance,
                                float *rolling_mean, float *rolling_variance, int update_rolling, int activation,
                                float *out);
    /* With packed (a leaky, relu or linear activation; host backends whose layout_pack_available(0)), d(x) goes
     * there in `layout` (layout_pack.h) and delta keeps d(out). */
    dn_status (*bn_act_backward)(dn_backend *be, float *delta, const float *out, const float *x, const float *mean,
                                 const float *variance, const float *scales, const float *biases, int activation,
                                 int batch, int filters, size_t spatial, float *bias_updates, float *scale_updates,
                                 float *packed, const struct pack_layout *layout);
    /* Optional (NULL on CUDA): maxpool_backward that sets in_delta, every element (zero where no maximum came
     * from), for a layer_sets_in_delta layer; each channel plane is zeroed while it is in the cache. */
    dn_status (*maxpool_backward_set)(dn_backend *be, const float *delta, const int *argmax, int batch, int channels,
                                      size_t outputs, size_t inputs, float *in_delta);
} dn_kernels;

struct dn_backend {
    const char *name;          /* "cpu" or "cuda" */
    int device;                /* -1 for the CPU, else the CUDA device index */
    int host_memory;           /* 1 when its buffers are plain host memory (the CPU backend) */
    void *ctx;                 /* the backend's own state (CUDA: stream, cuBLAS and cuDNN handles, caches) */
    const dn_kernels *k;
    /* Memory. alloc returns zeroed memory or DN_E_NOMEM/DN_E_CUDA naming the size asked. */
    dn_status (*alloc)(dn_backend *be, size_t bytes, void **out);
    void (*release)(dn_backend *be, void *p);
    dn_status (*to_host)(dn_backend *be, void *host_dst, const void *src, size_t bytes);
    dn_status (*from_host)(dn_backend *be, void *dst, const void *host_src, size_t bytes);
    /* from_host_start begins a copy that may go on reading host_src after it returns (from pinned memory,
     * the CUDA backend queues it behind the work in flight); from_host_finish waits until every copy started
     * has read its source, so that the caller may change it. */
    dn_status (*from_host_start)(dn_backend *be, void *dst, const void *host_src, size_t bytes);
    dn_status (*from_host_finish)(dn_backend *be);
    dn_status (*copy)(dn_backend *be, void *dst, const void *src, size_t bytes);
    dn_status (*memset0)(dn_backend *be, void *p, size_t bytes);
    dn_status (*sync)(dn_backend *be);
    void (*destroy)(dn_backend *be);
};

/* The CPU backend (one shared, stateless instance). */
dn_backend *dn_backend_cpu(void);
/* A backend for options->device: the CPU one for -1; with a CUDA build, a new CUDA backend on that device
 * (DN_E_CUDA naming the device when there is no driver, no device or the index is out of range). */
dn_status dn_backend_create(int device, int allow_tf32, dn_backend **out);
void dn_backend_destroy(dn_backend *be);

/* Provided by csrc/cuda/ in a GPU build (DN_GPU defined). allow_tf32: dn_options.allow_tf32 (cuBLAS and cuDNN
 * may use TensorFloat-32 tensor cores; else plain FP32). dn_cuda_device_count_internal: 0 without a driver.
 * dn_cuda_build_description: "key=value" lines (cuda, cudnn, cublas versions, cuda_archs) into out. */
dn_status dn_backend_cuda_create(int device, int allow_tf32, dn_backend **out);
/* cudaHostRegister / cudaHostUnregister for dn_host_pin and dn_host_unpin (portable: every device's copies
 * see the range as pinned). */
dn_status dn_cuda_pin_host(int device, void *host, size_t bytes);
dn_status dn_cuda_unpin_host(int device, void *host);
int dn_cuda_device_count_internal(void);
void dn_cuda_build_description(char *out, size_t size);

#ifdef __cplusplus
}
#endif
#endif
