/* The CPU backend: buffers are plain host memory and the kernels are kernels_cpu.c's. One shared, stateless
 * instance; dn_backend_create also hands out CUDA backends in a GPU build. */
#include <string.h>

#include "backend.h"
#include "internal.h"

static dn_status cpu_alloc(dn_backend *be, size_t bytes, void **out)
{
    (void)be;
    *out = dn_calloc(bytes, 1);
    if (!*out) return dn_fail(DN_E_NOMEM, "out of memory allocating %zu bytes", bytes);
    return DN_OK;
}

static void cpu_release(dn_backend *be, void *p)
{
    (void)be;
    free(p);
}

static dn_status cpu_copy(dn_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes && dst != src) memmove(dst, src, bytes);
    return DN_OK;
}

static dn_status cpu_memset0(dn_backend *be, void *p, size_t bytes)
{
    (void)be;
    if (bytes) memset(p, 0, bytes);
    return DN_OK;
}

static dn_status cpu_sync(dn_backend *be)
{
    (void)be;
    return DN_OK;
}

static void cpu_destroy(dn_backend *be) { (void)be; /* shared and static: nothing to free */ }

static dn_backend cpu_backend = {
    .name = "cpu",
    .device = -1,
    .host_memory = 1,
    .ctx = NULL,
    .k = &dn_cpu_kernels,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .to_host = cpu_copy,
    .from_host = cpu_copy,
    .copy = cpu_copy,
    .memset0 = cpu_memset0,
    .sync = cpu_sync,
    .destroy = cpu_destroy,
};

dn_backend *dn_backend_cpu(void) { return &cpu_backend; }

/* The same memory and kernels presented as a device backend (host_memory = 0): a network on it takes every
 * path a CUDA network takes (inputs staged in, the [yolo] loss through host staging, outputs, parameters
 * and weights copied in and out, no Winograd), so the CPU tests cover those paths too. */
static dn_backend staged_backend = {
    .name = "cpu-staged",
    .device = DN_DEVICE_CPU_STAGED,
    .host_memory = 0,
    .ctx = NULL,
    .k = &dn_cpu_kernels,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .to_host = cpu_copy,
    .from_host = cpu_copy,
    .copy = cpu_copy,
    .memset0 = cpu_memset0,
    .sync = cpu_sync,
    .destroy = cpu_destroy,
};

dn_status dn_backend_create(int device, int allow_tf32, dn_backend **out)
{
    *out = NULL;
    if (device < DN_DEVICE_CPU_STAGED)
        return dn_fail(DN_E_ARG, "device must be -1 (CPU) or a CUDA device index, got %d", device);
    if (device == -1 || device == DN_DEVICE_CPU_STAGED) {
        *out = device == -1 ? dn_backend_cpu() : &staged_backend;
        return DN_OK;
    }
#ifdef DN_GPU
    return dn_backend_cuda_create(device, allow_tf32, out);
#else
    (void)allow_tf32;
    return dn_fail(DN_E_CUDA, "device cuda:%d asked for, but this libdarknet.so was built without CUDA "
                   "(rebuild with `make GPU=1`)", device);
#endif
}

void dn_backend_destroy(dn_backend *be)
{
    if (be && be->destroy) be->destroy(be);
}
