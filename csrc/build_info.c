/* What the library was built with (dn_build_info) and the CUDA devices it sees (dn_cuda_device_count). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "internal.h"

static char build_text[2048];
static pthread_once_t build_once = PTHREAD_ONCE_INIT;

static void describe_build(void)
{
    size_t used = 0;
#define ADD(...) used += (size_t)snprintf(build_text + used, used < sizeof build_text ? sizeof build_text - used : 0, __VA_ARGS__)
    ADD("abi=%d\n", DN_ABI_VERSION);
    ADD("blas=%s\n", dn_blas_name());
#ifdef _OPENMP
    ADD("openmp=%d\n", _OPENMP);
#else
    ADD("openmp=0\n");
#endif
#ifdef DN_GPU
    if (used < sizeof build_text) dn_cuda_build_description(build_text + used, sizeof build_text - used);
#else
    ADD("cuda=0\ncudnn=0\ncublas=0\ncuda_archs=\n");
#endif
#undef ADD
}

DN_EXPORT const char *dn_build_info(void)
{
    pthread_once(&build_once, describe_build);
    return build_text;
}

DN_EXPORT int dn_cuda_device_count(void)
{
#ifdef DN_GPU
    return dn_cuda_device_count_internal();
#else
    return 0;
#endif
}
