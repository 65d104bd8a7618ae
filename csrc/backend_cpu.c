/* The CPU backend: buffers are plain host memory and the kernels are kernels_cpu.c's. One shared, stateless
 * instance; dn_backend_create also hands out CUDA backends in a GPU build. */
#include <pthread.h>
#include <stdint.h>
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

/* Large buffers (training zeroes every layer's delta before each chunk) are split across the threads: one core
 * zeroes memory at about half the bandwidth two do. */
static dn_status cpu_memset0(dn_backend *be, void *p, size_t bytes)
{
    (void)be;
    enum { PIECE = 1 << 20 };
    const size_t pieces = (bytes + PIECE - 1) / PIECE;
#pragma omp parallel for schedule(static) if (pieces > 4)
    for (size_t i = 0; i < pieces; i++) {
        const size_t at = i * PIECE;
        memset((char *)p + at, 0, bytes - at < PIECE ? bytes - at : PIECE);
    }
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
    .from_host_start = cpu_copy,
    .from_host_finish = cpu_sync,
    .copy = cpu_copy,
    .memset0 = cpu_memset0,
    .sync = cpu_sync,
    .destroy = cpu_destroy,
};

dn_backend *dn_backend_cpu(void) { return &cpu_backend; }

/* The CPU kernels less the optional fused ones the CUDA backend lacks (bn_act_*), so that the staged device
 * runs the separate kernels a CUDA network runs, and staged-vs-cpu compares the two. */
static dn_kernels staged_kernels;
static pthread_once_t staged_kernels_once = PTHREAD_ONCE_INIT;

static void staged_kernels_init(void)
{
    staged_kernels = dn_cpu_kernels;
    staged_kernels.bn_act_forward = NULL;
    staged_kernels.bn_act_backward = NULL;
}

/* The same memory and kernels presented as a device backend (host_memory = 0): a network on it takes every
 * path a CUDA network takes (inputs staged in, the [yolo] loss through host staging, outputs, parameters
 * and weights copied in and out, no Winograd, no fused batch norm), so the CPU tests cover those paths too. */
static dn_backend staged_backend = {
    .name = "cpu-staged",
    .device = DN_DEVICE_CPU_STAGED,
    .host_memory = 0,
    .ctx = NULL,
    .k = &staged_kernels,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .to_host = cpu_copy,
    .from_host = cpu_copy,
    .from_host_start = cpu_copy,
    .from_host_finish = cpu_sync,
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
        pthread_once(&staged_kernels_once, staged_kernels_init);
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

/* ---- pinned host memory ---- */

/* The staged test device keeps the ranges "pinned" on it and applies the driver's rules to them (a range is
 * pinned once, unpinned by its start address), so that CPU tests catch a loader that breaks them. */
#define STAGED_PIN_MAX 64
static struct { uintptr_t start, end; } staged_pins[STAGED_PIN_MAX];
static int staged_pin_count;
static pthread_mutex_t staged_pin_lock = PTHREAD_MUTEX_INITIALIZER;

static dn_status staged_pin(void *host, size_t bytes)
{
    const uintptr_t start = (uintptr_t)host, end = start + bytes;
    dn_status st = DN_OK;
    pthread_mutex_lock(&staged_pin_lock);
    for (int i = 0; i < staged_pin_count && !st; i++)
        if (start < staged_pins[i].end && staged_pins[i].start < end)
            st = dn_fail(DN_E_CUDA, "pinning %zu bytes at %p on the staged device: part of it is already pinned",
                         bytes, host);
    if (!st && staged_pin_count == STAGED_PIN_MAX)
        st = dn_fail(DN_E_CUDA, "pinning %zu bytes at %p on the staged device: %d ranges pinned already", bytes, host,
                     STAGED_PIN_MAX);
    if (!st) {
        staged_pins[staged_pin_count].start = start;
        staged_pins[staged_pin_count++].end = end;
    }
    pthread_mutex_unlock(&staged_pin_lock);
    return st;
}

static dn_status staged_unpin(void *host)
{
    int found = 0;
    pthread_mutex_lock(&staged_pin_lock);
    for (int i = 0; i < staged_pin_count && !found; i++)
        if (staged_pins[i].start == (uintptr_t)host) {
            staged_pins[i] = staged_pins[--staged_pin_count];
            found = 1;
        }
    pthread_mutex_unlock(&staged_pin_lock);
    return found ? DN_OK : dn_fail(DN_E_CUDA, "unpinning %p on the staged device: no pinned range starts there", host);
}

DN_EXPORT dn_status dn_host_pin(int device, void *host, size_t bytes, int *pinned)
{
    if (pinned) *pinned = 0;
    if (!host || !bytes) return dn_fail(DN_E_ARG, "host memory to pin is NULL or empty (%zu bytes)", bytes);
    if (device == -1) return DN_OK;
    dn_status st;
    if (device == DN_DEVICE_CPU_STAGED) {
        st = staged_pin(host, bytes);
    } else if (device < 0) {
        return dn_fail(DN_E_ARG, "device must be -1 (CPU) or a CUDA device index, got %d", device);
    } else {
#ifdef DN_GPU
        st = dn_cuda_pin_host(device, host, bytes);
#else
        return dn_fail(DN_E_CUDA, "pinning memory for cuda:%d, but this libdarknet.so was built without CUDA "
                       "(rebuild with `make GPU=1`)", device);
#endif
    }
    if (!st && pinned) *pinned = 1;
    return st;
}

DN_EXPORT dn_status dn_host_unpin(int device, void *host)
{
    if (!host) return dn_fail(DN_E_ARG, "host memory to unpin is NULL");
    if (device == -1) return DN_OK;
    if (device == DN_DEVICE_CPU_STAGED) return staged_unpin(host);
    if (device < 0) return dn_fail(DN_E_ARG, "device must be -1 (CPU) or a CUDA device index, got %d", device);
#ifdef DN_GPU
    return dn_cuda_unpin_host(device, host);
#else
    return dn_fail(DN_E_CUDA, "unpinning memory for cuda:%d, but this libdarknet.so was built without CUDA", device);
#endif
}
