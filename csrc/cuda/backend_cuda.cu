/* The CUDA backend: one device, one stream, a cuBLAS handle on it (and a cuDNN one with CUDNN=1), device memory.
 * Nothing here aborts: every CUDA, cuBLAS and cuDNN failure becomes DN_E_CUDA with a message naming the call
 * and the device, and the runtime's error state is cleared so the process (and its other networks) live on. */
#include <stdio.h>

#include "cuda_common.h"

#ifndef DN_CUDA_ARCHS
#define DN_CUDA_ARCHS "unknown"
#endif

dn_status dn_cuda_error(const dn_cuda_ctx *ctx, cudaError_t e, const char *what)
{
    cudaGetLastError(); /* clear the (non-sticky) error so the next call starts clean */
    return dn_fail(DN_E_CUDA, "CUDA on cuda:%d: %s failed: %s (%s)", ctx ? ctx->device : -1, what,
                   cudaGetErrorString(e), cudaGetErrorName(e));
}

dn_status dn_cublas_error(const dn_cuda_ctx *ctx, cublasStatus_t s, const char *what)
{
    return dn_fail(DN_E_CUDA, "cuBLAS on cuda:%d: %s failed: %s", ctx ? ctx->device : -1, what,
                   cublasGetStatusString(s));
}

#ifdef DN_CUDNN
dn_status dn_cudnn_error(const dn_cuda_ctx *ctx, cudnnStatus_t s, const char *what)
{
    return dn_fail(DN_E_CUDA, "cuDNN on cuda:%d: %s failed: %s", ctx ? ctx->device : -1, what,
                   cudnnGetErrorString(s));
}
#endif

dn_status dn_cuda_enter(dn_cuda_ctx *ctx)
{
    cudaError_t e = cudaSetDevice(ctx->device);
    return e == cudaSuccess ? DN_OK : dn_cuda_error(ctx, e, "cudaSetDevice");
}

static dn_status out_of_memory(const dn_cuda_ctx *ctx, cudaError_t e, size_t bytes, const char *what)
{
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) cudaGetLastError();
    return dn_fail(DN_E_CUDA, "CUDA on cuda:%d: cannot allocate %zu bytes (%.1f MiB) for %s: %s (%.1f MiB free of "
                   "%.1f MiB)", ctx->device, bytes, bytes / 1048576.0, what, cudaGetErrorString(e),
                   free_b / 1048576.0, total_b / 1048576.0);
}

dn_status dn_cuda_grow(dn_cuda_ctx *ctx, void **slot, size_t *slot_bytes, size_t bytes, const char *what)
{
    if (bytes <= *slot_bytes) return DN_OK;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) return out_of_memory(ctx, e, bytes, what);
    /* cudaFree waits for the kernels that may still use the old buffer. */
    if (*slot) cudaFree(*slot);
    *slot = p;
    *slot_bytes = bytes;
    return DN_OK;
}

/* ---- memory ---- */

static dn_status cu_alloc(dn_backend *be, size_t bytes, void **out)
{
    dn_cuda_ctx *ctx = dn_cuda_ctx_of(be);
    *out = NULL;
    dn_status st = dn_cuda_enter(ctx);
    if (st) return st;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) return out_of_memory(ctx, e, bytes, "a network buffer");
    if ((e = cudaMemsetAsync(p, 0, bytes ? bytes : 1, ctx->stream)) != cudaSuccess) {
        cudaFree(p);
        return dn_cuda_error(ctx, e, "cudaMemsetAsync (zeroing a new buffer)");
    }
    *out = p;
    return DN_OK;
}

static void cu_release(dn_backend *be, void *p)
{
    if (!p) return;
    dn_cuda_ctx *ctx = dn_cuda_ctx_of(be);
    if (dn_cuda_enter(ctx) == DN_OK && cudaFree(p) != cudaSuccess) cudaGetLastError();
}

/* A copy queued on the stream (nothing to do for 0 bytes). */
static dn_status queue_copy(dn_cuda_ctx *ctx, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            const char *what)
{
    if (!bytes) return DN_OK;
    dn_status st = dn_cuda_enter(ctx);
    if (st) return st;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, ctx->stream);
    return e == cudaSuccess ? DN_OK : dn_cuda_error(ctx, e, what);
}

static dn_status copy_and_wait(dn_cuda_ctx *ctx, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                               const char *what)
{
    dn_status st = queue_copy(ctx, dst, src, bytes, kind, what);
    if (st || !bytes) return st;
    /* The host buffer is the caller's: it may be read or freed as soon as we return. */
    cudaError_t e = cudaStreamSynchronize(ctx->stream);
    return e == cudaSuccess ? DN_OK : dn_cuda_error(ctx, e, what);
}

static dn_status cu_to_host(dn_backend *be, void *host_dst, const void *src, size_t bytes)
{
    return copy_and_wait(dn_cuda_ctx_of(be), host_dst, src, bytes, cudaMemcpyDeviceToHost,
                         "cudaMemcpyAsync (device to host)");
}

static dn_status cu_from_host(dn_backend *be, void *dst, const void *host_src, size_t bytes)
{
    return copy_and_wait(dn_cuda_ctx_of(be), dst, host_src, bytes, cudaMemcpyHostToDevice,
                         "cudaMemcpyAsync (host to device)");
}

/* Queued behind the work in flight: from pinned memory the host goes on at once (from pageable memory the
 * runtime still waits for the stream and stages the data before returning). */
static dn_status cu_from_host_start(dn_backend *be, void *dst, const void *host_src, size_t bytes)
{
    dn_cuda_ctx *ctx = dn_cuda_ctx_of(be);
    dn_status st = queue_copy(ctx, dst, host_src, bytes, cudaMemcpyHostToDevice,
                              "cudaMemcpyAsync (input, host to device)");
    if (st || !bytes) return st;
    cudaError_t e = cudaEventRecord(ctx->input_copied, ctx->stream);
    return e == cudaSuccess ? DN_OK : dn_cuda_error(ctx, e, "cudaEventRecord (input copied)");
}

static dn_status cu_from_host_finish(dn_backend *be)
{
    dn_cuda_ctx *ctx = dn_cuda_ctx_of(be);
    dn_status st = dn_cuda_enter(ctx);
    if (st) return st;
    cudaError_t e = cudaEventSynchronize(ctx->input_copied);
    return e == cudaSuccess ? DN_OK : dn_cuda_error(ctx, e, "cudaEventSynchronize (input copied)");
}

static dn_status cu_copy(dn_backend *be, void *dst, const void *src, size_t bytes)
{
    return queue_copy(dn_cuda_ctx_of(be), dst, src, bytes, cudaMemcpyDeviceToDevice,
                      "cudaMemcpyAsync (device to device)");
}

static dn_status cu_memset0(dn_backend *be, void *p, size_t bytes)
{
    dn_cuda_ctx *ctx = dn_cuda_ctx_of(be);
    if (!bytes) return DN_OK;
    dn_status st = dn_cuda_enter(ctx);
    if (st) return st;
    cudaError_t e = cudaMemsetAsync(p, 0, bytes, ctx->stream);
    return e == cudaSuccess ? DN_OK : dn_cuda_error(ctx, e, "cudaMemsetAsync");
}

static dn_status cu_sync(dn_backend *be)
{
    dn_cuda_ctx *ctx = dn_cuda_ctx_of(be);
    dn_status st = dn_cuda_enter(ctx);
    if (st) return st;
    cudaError_t e = cudaStreamSynchronize(ctx->stream);
    return e == cudaSuccess ? DN_OK : dn_cuda_error(ctx, e, "cudaStreamSynchronize");
}

static void ctx_free(dn_cuda_ctx *ctx)
{
    if (!ctx) return;
    if (cudaSetDevice(ctx->device) == cudaSuccess) {
        if (ctx->stream) cudaStreamSynchronize(ctx->stream);
#ifdef DN_CUDNN
        dn_cudnn_plans_free(ctx);
        if (ctx->dnn) cudnnDestroy(ctx->dnn);
        if (ctx->workspace) cudaFree(ctx->workspace);
#endif
        if (ctx->scratch) cudaFree(ctx->scratch);
        if (ctx->blas) cublasDestroy(ctx->blas);
        if (ctx->input_copied) cudaEventDestroy(ctx->input_copied);
        if (ctx->stream) cudaStreamDestroy(ctx->stream);
    }
    cudaGetLastError();
    free(ctx);
}

static void cu_destroy(dn_backend *be)
{
    if (!be) return;
    ctx_free(dn_cuda_ctx_of(be));
    free(be);
}

/* ---- devices ---- */

/* Why there is no usable device, as a message naming `device` (DN_OK when it can be used). */
static dn_status check_device(int device)
{
    int driver = 0, runtime = 0;
    cudaRuntimeGetVersion(&runtime);
    if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0) {
        cudaGetLastError();
        return dn_fail(DN_E_CUDA, "device cuda:%d asked for, but no CUDA driver is installed (libcuda.so not found; "
                       "this build needs one for CUDA runtime %d.%d)", device, runtime / 1000, runtime % 1000 / 10);
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e == cudaErrorInsufficientDriver) {
        cudaGetLastError();
        return dn_fail(DN_E_CUDA, "device cuda:%d asked for, but the CUDA driver (%d.%d) is older than this build's "
                       "CUDA runtime (%d.%d): update the driver", device, driver / 1000, driver % 1000 / 10,
                       runtime / 1000, runtime % 1000 / 10);
    }
    if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
        cudaGetLastError();
        return dn_fail(DN_E_CUDA, "device cuda:%d asked for, but no CUDA device was found (driver %d.%d)", device,
                       driver / 1000, driver % 1000 / 10);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        return dn_fail(DN_E_CUDA, "device cuda:%d asked for, but counting the CUDA devices failed: %s (%s)", device,
                       cudaGetErrorString(e), cudaGetErrorName(e));
    }
    if (device < 0 || device >= count)
        return dn_fail(DN_E_CUDA, "device cuda:%d is out of range: %d CUDA device%s found (cuda:0 to cuda:%d)", device,
                       count, count == 1 ? "" : "s", count - 1);
    return DN_OK;
}

extern "C" int dn_cuda_device_count_internal(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return count;
}

extern "C" dn_status dn_backend_cuda_create(int device, int allow_tf32, dn_backend **out)
{
    if (!out) return dn_fail(DN_E_ARG, "out pointer is NULL");
    *out = NULL;
    dn_status st = check_device(device);
    if (st) return st;
    dn_backend *be = (dn_backend *)calloc(1, sizeof *be);
    dn_cuda_ctx *ctx = (dn_cuda_ctx *)calloc(1, sizeof *ctx);
    cudaError_t e;
    cublasStatus_t bs;
    if (!be || !ctx) {
        st = dn_fail(DN_E_NOMEM, "out of memory (CUDA backend)");
        goto fail;
    }
    ctx->device = device;
    ctx->allow_tf32 = allow_tf32 != 0;
    if ((e = cudaSetDevice(device)) != cudaSuccess) {
        st = dn_cuda_error(ctx, e, "cudaSetDevice");
        goto fail;
    }
    if ((e = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        st = dn_cuda_error(ctx, e, "cudaStreamCreate");
        goto fail;
    }
    if ((e = cudaEventCreateWithFlags(&ctx->input_copied, cudaEventDisableTiming)) != cudaSuccess) {
        ctx->input_copied = NULL;
        st = dn_cuda_error(ctx, e, "cudaEventCreate");
        goto fail;
    }
    if ((bs = cublasCreate(&ctx->blas)) != CUBLAS_STATUS_SUCCESS) {
        ctx->blas = NULL;
        st = dn_cublas_error(ctx, bs, "cublasCreate");
        goto fail;
    }
    if ((bs = cublasSetStream(ctx->blas, ctx->stream)) != CUBLAS_STATUS_SUCCESS) {
        st = dn_cublas_error(ctx, bs, "cublasSetStream");
        goto fail;
    }
    /* Plain FP32 unless TensorFloat-32 is allowed (then about 1e-3 relative, outside the FP32 parity tests). */
    if ((bs = cublasSetMathMode(ctx->blas, ctx->allow_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH)) !=
        CUBLAS_STATUS_SUCCESS) {
        st = dn_cublas_error(ctx, bs, "cublasSetMathMode");
        goto fail;
    }
#ifdef DN_CUDNN
    {
        cudnnStatus_t ds = cudnnCreate(&ctx->dnn);
        if (ds != CUDNN_STATUS_SUCCESS) {
            ctx->dnn = NULL;
            st = dn_cudnn_error(ctx, ds, "cudnnCreate");
            goto fail;
        }
        if ((ds = cudnnSetStream(ctx->dnn, ctx->stream)) != CUDNN_STATUS_SUCCESS) {
            st = dn_cudnn_error(ctx, ds, "cudnnSetStream");
            goto fail;
        }
    }
#endif
    be->name = "cuda";
    be->device = device;
    be->host_memory = 0;
    be->ctx = ctx;
    be->k = &dn_cuda_kernels;
    be->alloc = cu_alloc;
    be->release = cu_release;
    be->to_host = cu_to_host;
    be->from_host = cu_from_host;
    be->from_host_start = cu_from_host_start;
    be->from_host_finish = cu_from_host_finish;
    be->copy = cu_copy;
    be->memset0 = cu_memset0;
    be->sync = cu_sync;
    be->destroy = cu_destroy;
    *out = be;
    return DN_OK;
fail:
    ctx_free(ctx);
    free(be);
    return st;
}

/* ---- pinned host memory (dn_host_pin) ---- */

extern "C" dn_status dn_cuda_pin_host(int device, void *host, size_t bytes)
{
    dn_status st = check_device(device);
    if (st) return st;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaHostRegister(host, bytes, cudaHostRegisterPortable);
    if (e == cudaSuccess) return DN_OK;
    cudaGetLastError();
    return dn_fail(DN_E_CUDA, "CUDA on cuda:%d: cudaHostRegister of %zu bytes (%.1f MiB) at %p failed: %s (%s)", device,
                   bytes, bytes / 1048576.0, host, cudaGetErrorString(e), cudaGetErrorName(e));
}

extern "C" dn_status dn_cuda_unpin_host(int device, void *host)
{
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaHostUnregister(host);
    if (e == cudaSuccess) return DN_OK;
    cudaGetLastError();
    return dn_fail(DN_E_CUDA, "CUDA on cuda:%d: cudaHostUnregister at %p failed: %s (%s)", device, host,
                   cudaGetErrorString(e), cudaGetErrorName(e));
}

/* What this build was made with, as key=value lines (build_info.c adds its own). */
extern "C" void dn_cuda_build_description(char *out, size_t size)
{
#ifdef DN_CUDNN
    const int cudnn = CUDNN_VERSION;
#else
    const int cudnn = 0;
#endif
    snprintf(out, size, "cuda=%d\ncudnn=%d\ncublas=%d\ncuda_archs=%s\n", CUDART_VERSION, cudnn, CUBLAS_VERSION,
             DN_CUDA_ARCHS);
}
