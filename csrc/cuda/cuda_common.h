/* State of a CUDA backend and the helpers its two files (backend_cuda.cu, kernels.cu) share. nvcc only. */
#ifndef DN_CUDA_COMMON_H
#define DN_CUDA_COMMON_H

#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#ifdef DN_CUDNN
#include <cudnn.h>
#endif

#include "../backend.h"

extern "C" {
/* util.c */
dn_status dn_fail(dn_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dn_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
}

#ifdef DN_CUDNN
/* cuDNN descriptors and algorithms of one convolution shape, chosen once and kept. */
struct dn_cudnn_plan {
    dn_conv_shape shape;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    size_t fwd_bytes, bwd_data_bytes, bwd_filter_bytes;
};
#endif

struct dn_cuda_ctx {
    int device;
    int allow_tf32;
    cudaStream_t stream;
    cudaEvent_t input_copied; /* recorded after each from_host_start copy */
    cublasHandle_t blas;
    /* partial sums of the per-filter reductions and batch norm's backward coefficients; grown on demand */
    void *scratch;
    size_t scratch_bytes;
#ifdef DN_CUDNN
    cudnnHandle_t dnn;
    dn_cudnn_plan *plans;
    int n_plans, cap_plans;
    void *workspace;
    size_t workspace_bytes;
#endif
};

static inline dn_cuda_ctx *dn_cuda_ctx_of(dn_backend *be) { return static_cast<dn_cuda_ctx *>(be->ctx); }

/* DN_E_CUDA naming the call and the device; clears the runtime's error state so later calls start clean
 * (a fault inside a kernel leaves the context unusable; the message then says so through the error name). */
dn_status dn_cuda_error(const dn_cuda_ctx *ctx, cudaError_t e, const char *what);
dn_status dn_cublas_error(const dn_cuda_ctx *ctx, cublasStatus_t s, const char *what);
#ifdef DN_CUDNN
dn_status dn_cudnn_error(const dn_cuda_ctx *ctx, cudnnStatus_t s, const char *what);
void dn_cudnn_plans_free(dn_cuda_ctx *ctx);
#endif
/* Makes the backend's device current for the calling thread (networks on other devices may share it). */
dn_status dn_cuda_enter(dn_cuda_ctx *ctx);
/* A device buffer of at least `bytes` kept in the context (*slot, *slot_bytes), grown when needed. */
dn_status dn_cuda_grow(dn_cuda_ctx *ctx, void **slot, size_t *slot_bytes, size_t bytes, const char *what);

extern const dn_kernels dn_cuda_kernels;

#endif
