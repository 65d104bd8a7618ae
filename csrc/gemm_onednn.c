/* Matrix products in bfloat16 for training with precision bf16 (dn_gemm_bf16, see internal.h): oneDNN's matmul on
 * the float32 operands with fpmath mode bf16, which lets it round them to bfloat16 as it loads them and multiply
 * on AMX (or AVX512_BF16) with float32 accumulation; C stays float32. Measured on this project's 2-vCPU
 * AMX machine against OpenBLAS's float32 SGEMM (GFLOP/s): yolov3-tiny's 13x13 layer 505 vs 158 (forward), 337
 * vs 151 (weight gradient), 371 vs 137 (input gradient); but 80 vs 165 for an input gradient with K = 64, where
 * the conversion outweighs the products, hence the size rule in dn_gemm.
 *
 * Primitives are cached per thread (the calls of one network come from one thread at a time, and oneDNN's
 * primitives are not to be executed from two threads at once), keyed by the whole product signature; a
 * layer's per-image products share one. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#ifndef DN_ONEDNN

int dn_gemm_bf16(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc)
{
    (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)beta, (void)C;
    (void)ldc;
    return 1;
}

#else
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#define CACHE_SIZE 32

typedef struct gemm_key {
    int ta, tb, M, N, K, lda, ldb, ldc, accumulate;
    int threads; /* oneDNN splits a primitive's work for the team size it was made with */
} gemm_key;

typedef struct gemm_entry {
    gemm_key key;
    dnnl_primitive_t prim; /* NULL: oneDNN had no implementation (remembered, so not asked again) */
    dnnl_memory_t a, b, c;
} gemm_entry;

typedef struct gemm_cache {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    gemm_entry entries[CACHE_SIZE];
    int used, next; /* entries filled; the one replaced next when full */
} gemm_cache;

static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void entry_free(gemm_entry *e)
{
    dnnl_primitive_destroy(e->prim);
    dnnl_memory_destroy(e->a);
    dnnl_memory_destroy(e->b);
    dnnl_memory_destroy(e->c);
    *e = (gemm_entry){0};
}

/* At the thread's exit. */
static void cache_free(void *p)
{
    gemm_cache *c = p;
    if (!c) return;
    for (int i = 0; i < c->used; i++) entry_free(&c->entries[i]);
    dnnl_stream_destroy(c->stream);
    dnnl_engine_destroy(c->engine);
    free(c);
}

static void cache_key_init(void) { pthread_key_create(&cache_key, cache_free); }

static gemm_cache *thread_cache(void)
{
    pthread_once(&cache_once, cache_key_init);
    gemm_cache *c = pthread_getspecific(cache_key);
    if (c) return c;
    c = calloc(1, sizeof *c);
    if (!c) return NULL;
    if (dnnl_engine_create(&c->engine, dnnl_cpu, 0) != dnnl_success ||
        dnnl_stream_create(&c->stream, c->engine, dnnl_stream_default_flags) != dnnl_success ||
        pthread_setspecific(cache_key, c)) {
        cache_free(c);
        return NULL;
    }
    return c;
}

/* A row-major rows x cols matrix with leading dimension ld, read transposed when trans. */
static dnnl_status_t matrix_md(dnnl_memory_desc_t *md, int rows, int cols, int ld, int trans)
{
    const dnnl_dims_t dims = {rows, cols};
    const dnnl_dims_t strides = {trans ? 1 : ld, trans ? ld : 1};
    return dnnl_memory_desc_create_with_strides(md, 2, dims, dnnl_f32, strides);
}

static void build(gemm_cache *c, gemm_entry *e)
{
    const gemm_key *k = &e->key;
    dnnl_memory_desc_t a = NULL, b = NULL, d = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_status_t s = matrix_md(&a, k->M, k->K, k->lda, k->ta);
    if (s == dnnl_success) s = matrix_md(&b, k->K, k->N, k->ldb, k->tb);
    if (s == dnnl_success) s = matrix_md(&d, k->M, k->N, k->ldc, 0);
    if (s == dnnl_success) s = dnnl_primitive_attr_create(&attr);
    if (s == dnnl_success) s = dnnl_primitive_attr_set_fpmath_mode(attr, dnnl_fpmath_mode_bf16);
    if (s == dnnl_success && k->accumulate) {
        s = dnnl_post_ops_create(&post);
        if (s == dnnl_success) s = dnnl_post_ops_append_sum(post, 1.f, 0, dnnl_data_type_undef);
        if (s == dnnl_success) s = dnnl_primitive_attr_set_post_ops(attr, post);
    }
    if (s == dnnl_success) s = dnnl_matmul_primitive_desc_create(&pd, c->engine, a, b, NULL, d, attr);
    if (s == dnnl_success) {
        /* only a kernel that really multiplies in bfloat16 is worth it: not the reference one, not float32 */
        const char *impl = NULL;
        dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
        if (!impl || strncmp(impl, "ref", 3) == 0 || !(strstr(impl, "amx") || strstr(impl, "bf16")))
            s = dnnl_unimplemented;
    }
    if (s == dnnl_success) s = dnnl_primitive_create(&e->prim, pd);
    if (s == dnnl_success) s = dnnl_memory_create(&e->a, a, c->engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success) s = dnnl_memory_create(&e->b, b, c->engine, DNNL_MEMORY_NONE);
    if (s == dnnl_success) s = dnnl_memory_create(&e->c, d, c->engine, DNNL_MEMORY_NONE);
    if (s != dnnl_success) {
        const gemm_key key = e->key;
        entry_free(e);
        e->key = key; /* remembered as declined */
    }
    dnnl_primitive_desc_destroy(pd);
    dnnl_post_ops_destroy(post);
    dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_destroy(a);
    dnnl_memory_desc_destroy(b);
    dnnl_memory_desc_destroy(d);
}

int dn_gemm_bf16(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc)
{
    if (beta != 0.f && beta != 1.f) return 1;
    gemm_cache *c = thread_cache();
    if (!c) return 1;
    const gemm_key key = {ta, tb, M, N, K, lda, ldb, ldc, beta != 0.f, omp_get_max_threads()};
    gemm_entry *e = NULL;
    for (int i = 0; i < c->used && !e; i++)
        if (!memcmp(&c->entries[i].key, &key, sizeof key)) e = &c->entries[i];
    if (!e) {
        if (c->used < CACHE_SIZE) {
            e = &c->entries[c->used++];
        } else {
            e = &c->entries[c->next];
            c->next = (c->next + 1) % CACHE_SIZE;
            entry_free(e);
        }
        e->key = key;
        build(c, e);
    }
    if (!e->prim) return 1;
    if (dnnl_memory_set_data_handle(e->a, (void *)A) != dnnl_success ||
        dnnl_memory_set_data_handle(e->b, (void *)B) != dnnl_success ||
        dnnl_memory_set_data_handle(e->c, C) != dnnl_success)
        return 1;
    const dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, e->a}, {DNNL_ARG_WEIGHTS, e->b}, {DNNL_ARG_DST, e->c}};
    /* the arguments were checked when the primitive was made: execution failing is not expected (and would be
     * reported as a float32 product) */
    if (dnnl_primitive_execute(e->prim, c->stream, 3, args) != dnnl_success) return 1;
    return dnnl_stream_wait(c->stream) == dnnl_success ? 0 : 1;
}
#endif
