/* [convolutional] inference through oneDNN (see conv_onednn.h).
 *
 * Per layer and input shape: one convolution primitive whose source, weights and destination layouts are
 * left to oneDNN (format "any": the blocked nChw16c / OIhw16i16o family its AVX-512 and AMX kernels want),
 * the bias and batch norm folded into the weights (w * mul) and the bias (add), and the activation as an
 * eltwise post-op. The network's NCHW input is reordered into the primitive's layout (and to bfloat16 in bf16
 * mode) and the result reordered back, each only when the layouts differ. The folded weights are reordered
 * once and again whenever the network's parameters version changes.
 *
 * Threads: this oneDNN build uses GNU OpenMP, the same runtime as the rest of the library; its primitives are
 * called from outside any parallel region, so they run on the team size the network set (dn_threads_enter),
 * and OpenBLAS is not involved. */
#include <stdlib.h>
#include <string.h>

#include "conv_onednn.h"

#ifndef DN_ONEDNN

int conv_onednn_built(void) { return 0; }
int conv_onednn_runs_bf16(const conv_fast_desc *d, int bf16) { return 0; }
int conv_onednn_bf16_supported(const char **isa_name)
{
    if (isa_name) *isa_name = "none (built without oneDNN)";
    return 0;
}
const char *conv_onednn_version(void) { return ""; }
dn_status conv_onednn_forward(conv_onednn **state, const conv_fast_desc *d, int bf16, const float *in, float *out,
                              int batch)
{
    return dn_fail(DN_E_NOTFOUND, "this library was built without oneDNN");
}
void conv_onednn_free(conv_onednn *state) {}

#else

#include <stdio.h>

#include <oneapi/dnnl/dnnl.h>

struct conv_onednn {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    /* what the primitives below were made for */
    int ready, unsupported;
    int batch, c, h, w, filters, size, stride, pad, groups, out_h, out_w, activation, bf16;
    dnnl_primitive_t conv, src_reorder, dst_reorder;  /* reorders NULL when the layouts already match */
    dnnl_memory_t user_src, user_dst;                 /* NCHW float32, pointing at the caller's buffers */
    dnnl_memory_t src, dst;                           /* the primitive's (the user ones when no reorder) */
    dnnl_memory_t weights, bias;
    const float *weights_from;                        /* weights and version the folded copy was made from */
    uint64_t version;
    int weights_ready;
};

int conv_onednn_built(void) { return 1; }

int conv_onednn_runs_bf16(const conv_fast_desc *d, int bf16) { return bf16 && d->c / d->groups >= 16; }

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_avx512_core_fp16: return "avx512_core_fp16";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx2_vnni_2: return "avx2_vnni_2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_sse41: return "sse41";
    default: return "unknown";
    }
}

int conv_onednn_bf16_supported(const char **name)
{
    const dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    if (name) *name = isa_name(isa);
    /* The ISA values are bit sets, each including the ones below it. */
    return ((unsigned)isa & (unsigned)dnnl_cpu_isa_avx512_core_bf16) == (unsigned)dnnl_cpu_isa_avx512_core_bf16;
}

const char *conv_onednn_version(void)
{
    static char text[32];
    const dnnl_version_t *v = dnnl_version();
    snprintf(text, sizeof text, "%d.%d.%d", v->major, v->minor, v->patch);
    return text;
}

int onednn_is_reference(const_dnnl_primitive_desc_t pd)
{
    const char *impl = NULL;
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    return impl && strncmp(impl, "ref", 3) == 0;
}

dn_status onednn_error(const char *what, dnnl_status_t s)
{
    if (s == dnnl_out_of_memory) return dn_fail(DN_E_NOMEM, "oneDNN: out of memory in %s", what);
    if (s == dnnl_unimplemented) return dn_fail(DN_E_NOTFOUND, "oneDNN: no implementation for %s", what);
    return dn_fail(DN_E_ARG, "oneDNN: %s failed (dnnl_status %d)", what, (int)s);
}

#define TRY ONEDNN_TRY

static void destroy_primitives(conv_onednn *s)
{
    dnnl_primitive_destroy(s->conv);
    dnnl_primitive_destroy(s->src_reorder);
    dnnl_primitive_destroy(s->dst_reorder);
    if (s->src != s->user_src) dnnl_memory_destroy(s->src);
    if (s->dst != s->user_dst) dnnl_memory_destroy(s->dst);
    dnnl_memory_destroy(s->user_src);
    dnnl_memory_destroy(s->user_dst);
    dnnl_memory_destroy(s->weights);
    dnnl_memory_destroy(s->bias);
    s->conv = s->src_reorder = s->dst_reorder = NULL;
    s->src = s->dst = s->user_src = s->user_dst = s->weights = s->bias = NULL;
    s->ready = s->unsupported = s->weights_ready = 0;
}

void conv_onednn_free(conv_onednn *s)
{
    if (!s) return;
    destroy_primitives(s);
    if (s->stream) dnnl_stream_destroy(s->stream);
    if (s->engine) dnnl_engine_destroy(s->engine);
    free(s);
}

dnnl_alg_kind_t onednn_eltwise_of(dn_activation a, float *alpha)
{
    *alpha = 0.f;
    switch (a) {
    case ACT_LEAKY: *alpha = 0.1f; return dnnl_eltwise_relu;
    case ACT_RELU: return dnnl_eltwise_relu;
    case ACT_LOGISTIC: return dnnl_eltwise_logistic;
    case ACT_TANH: return dnnl_eltwise_tanh;
    case ACT_MISH: return dnnl_eltwise_mish;
    case ACT_SWISH: *alpha = 1.f; return dnnl_eltwise_swish;
    default: return dnnl_alg_kind_undef; /* linear */
    }
}

/* A reorder primitive from `from` to `to` and the memory of `to` (allocated by oneDNN); *prim = NULL and *mem
 * = user when the descriptors are equal. */
static dn_status make_reorder(conv_onednn *s, const_dnnl_memory_desc_t from, const_dnnl_memory_desc_t to,
                              dnnl_memory_t user, int user_is_source, dnnl_primitive_t *prim, dnnl_memory_t *mem)
{
    dn_status st = DN_OK;
    dnnl_primitive_desc_t pd = NULL;
    *prim = NULL;
    *mem = user;
    if (dnnl_memory_desc_equal(from, to)) return DN_OK;
    TRY(dnnl_memory_create(mem, user_is_source ? to : from, s->engine, DNNL_MEMORY_ALLOCATE));
    TRY(dnnl_reorder_primitive_desc_create(&pd, from, s->engine, to, s->engine, NULL));
    TRY(dnnl_primitive_create(prim, pd));
fail:
    dnnl_primitive_desc_destroy(pd);
    return st;
}

/* d's weights as oneDNN sees them: (groups,) filters, channels, size, size; `any` leaves the layout to the
 * primitive, else plain (g)oihw. */
static dnnl_status_t weights_md(dnnl_memory_desc_t *md, const conv_fast_desc *d, dnnl_data_type_t type, int any)
{
    const int g = d->groups;
    const dnnl_dims_t grouped = {g, d->filters / g, d->c / g, d->size, d->size};
    const dnnl_dims_t plain = {d->filters, d->c, d->size, d->size};
    if (g > 1) return dnnl_memory_desc_create_with_tag(md, 5, grouped, type, any ? dnnl_format_tag_any : dnnl_goihw);
    return dnnl_memory_desc_create_with_tag(md, 4, plain, type, any ? dnnl_format_tag_any : dnnl_oihw);
}

dnnl_status_t onednn_conv_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t engine, const conv_fast_desc *d,
                             const_dnnl_memory_desc_t src, const_dnnl_memory_desc_t dst, dnnl_data_type_t mul_type,
                             const_dnnl_primitive_attr_t attr)
{
    const dnnl_dims_t bias_dims = {d->filters};
    const dnnl_dims_t strides = {d->stride, d->stride}, dilates = {0, 0}, pad = {d->pad, d->pad};
    dnnl_memory_desc_t wei_md = NULL, bias_md = NULL;
    dnnl_status_t s = weights_md(&wei_md, d, mul_type, 1);
    if (s == dnnl_success) s = dnnl_memory_desc_create_with_tag(&bias_md, 1, bias_dims, dnnl_f32, dnnl_x);
    if (s == dnnl_success)
        s = dnnl_convolution_forward_primitive_desc_create(pd, engine, dnnl_forward_inference, dnnl_convolution_direct,
                                                           src, wei_md, bias_md, dst, strides, dilates, pad, pad,
                                                           attr);
    dnnl_memory_desc_destroy(wei_md);
    dnnl_memory_desc_destroy(bias_md);
    return s;
}

/* The primitives for this shape. DN_E_NOTFOUND when oneDNN has no convolution for it. */
static dn_status build(conv_onednn *s, const conv_fast_desc *d, int bf16, int batch)
{
    dn_status st = DN_OK;
    dnnl_memory_desc_t user_src_md = NULL, user_dst_md = NULL, src_md = NULL, dst_md = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post = NULL;
    dnnl_primitive_desc_t pd = NULL;
    const dnnl_data_type_t mul_type = conv_onednn_runs_bf16(d, bf16) ? dnnl_bf16 : dnnl_f32;
    const dnnl_dims_t src_dims = {batch, d->c, d->h, d->w};
    const dnnl_dims_t dst_dims = {batch, d->filters, d->out_h, d->out_w};

    TRY(dnnl_memory_desc_create_with_tag(&user_src_md, 4, src_dims, dnnl_f32, dnnl_nchw));
    TRY(dnnl_memory_desc_create_with_tag(&user_dst_md, 4, dst_dims, dnnl_f32, dnnl_nchw));
    TRY(dnnl_memory_desc_create_with_tag(&src_md, 4, src_dims, mul_type, dnnl_format_tag_any));
    TRY(dnnl_memory_desc_create_with_tag(&dst_md, 4, dst_dims, dnnl_f32, dnnl_format_tag_any));

    TRY(dnnl_primitive_attr_create(&attr));
    float alpha;
    const dnnl_alg_kind_t act = onednn_eltwise_of((dn_activation)d->activation, &alpha);
    if (act != dnnl_alg_kind_undef) {
        TRY(dnnl_post_ops_create(&post));
        TRY(dnnl_post_ops_append_eltwise(post, act, alpha, 0.f));
        TRY(dnnl_primitive_attr_set_post_ops(attr, post));
    }
    TRY(onednn_conv_pd(&pd, s->engine, d, src_md, dst_md, mul_type, attr));
    TRY(dnnl_primitive_create(&s->conv, pd));
    TRY(dnnl_memory_create(&s->user_src, user_src_md, s->engine, DNNL_MEMORY_NONE));
    TRY(dnnl_memory_create(&s->user_dst, user_dst_md, s->engine, DNNL_MEMORY_NONE));
    if ((st = make_reorder(s, user_src_md, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), s->user_src, 1,
                           &s->src_reorder, &s->src)))
        goto fail;
    if ((st = make_reorder(s, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), user_dst_md, s->user_dst, 0,
                           &s->dst_reorder, &s->dst)))
        goto fail;
    TRY(dnnl_memory_create(&s->weights, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), s->engine,
                           DNNL_MEMORY_ALLOCATE));
    TRY(dnnl_memory_create(&s->bias, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1), s->engine,
                           DNNL_MEMORY_ALLOCATE));
    s->batch = batch, s->c = d->c, s->h = d->h, s->w = d->w, s->filters = d->filters, s->size = d->size;
    s->stride = d->stride, s->pad = d->pad, s->groups = d->groups, s->out_h = d->out_h, s->out_w = d->out_w;
    s->activation = d->activation, s->bf16 = bf16;
    s->ready = 1;
fail:
    dnnl_primitive_desc_destroy(pd);
    dnnl_post_ops_destroy(post);
    dnnl_primitive_attr_destroy(attr);
    dnnl_memory_desc_destroy(user_src_md);
    dnnl_memory_desc_destroy(user_dst_md);
    dnnl_memory_desc_destroy(src_md);
    dnnl_memory_desc_destroy(dst_md);
    if (st) {
        destroy_primitives(s);
        s->unsupported = st == DN_E_NOTFOUND;
    }
    return st;
}

/* weights * mul per filter (float32, plain oihw) reordered into `weights` (a primitive's layout); add copied
 * into `bias` (float32, x). */
dn_status onednn_load_conv_weights(dnnl_engine_t engine, dnnl_stream_t stream, const conv_fast_desc *d,
                                   dnnl_memory_t weights, dnnl_memory_t bias)
{
    dn_status st = DN_OK;
    const size_t per_filter = (size_t)(d->c / d->groups) * d->size * d->size;
    float *folded = malloc(sizeof(float) * per_filter * d->filters);
    dnnl_memory_desc_t plain_md = NULL;
    dnnl_memory_t plain = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t reorder = NULL;
    const_dnnl_memory_desc_t wei_md;
    void *bias_data = NULL;
    if (!folded) return dn_fail(DN_E_NOMEM, "out of memory folding the weights of a convolution for oneDNN");
    for (int f = 0; f < d->filters; f++)
        for (size_t i = 0; i < per_filter; i++)
            folded[f * per_filter + i] = d->weights[f * per_filter + i] * d->mul[f];
    TRY(weights_md(&plain_md, d, dnnl_f32, 0));
    TRY(dnnl_memory_create(&plain, plain_md, engine, folded));
    TRY(dnnl_memory_get_memory_desc(weights, &wei_md));
    TRY(dnnl_reorder_primitive_desc_create(&pd, plain_md, engine, wei_md, engine, NULL));
    TRY(dnnl_primitive_create(&reorder, pd));
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, plain}, {DNNL_ARG_TO, weights}};
    TRY(dnnl_primitive_execute(reorder, stream, 2, args));
    TRY(dnnl_stream_wait(stream));
    TRY(dnnl_memory_get_data_handle(bias, &bias_data));
    memcpy(bias_data, d->add, sizeof(float) * d->filters);
fail:
    dnnl_primitive_destroy(reorder);
    dnnl_primitive_desc_destroy(pd);
    dnnl_memory_destroy(plain);
    dnnl_memory_desc_destroy(plain_md);
    free(folded);
    return st;
}

static dn_status load_weights(conv_onednn *s, const conv_fast_desc *d)
{
    dn_status st = onednn_load_conv_weights(s->engine, s->stream, d, s->weights, s->bias);
    if (st) return st;
    s->weights_from = d->weights;
    s->version = d->weights_version;
    s->weights_ready = 1;
    return DN_OK;
}

static int same_shape(const conv_onednn *s, const conv_fast_desc *d, int bf16, int batch)
{
    return s->batch == batch && s->c == d->c && s->h == d->h && s->w == d->w && s->filters == d->filters &&
           s->size == d->size && s->stride == d->stride && s->pad == d->pad && s->groups == d->groups &&
           s->out_h == d->out_h && s->out_w == d->out_w && s->activation == (int)d->activation && s->bf16 == bf16;
}

dn_status conv_onednn_forward(conv_onednn **state, const conv_fast_desc *d, int bf16, const float *in, float *out,
                              int batch)
{
    dn_status st = DN_OK;
    conv_onednn *s = *state;
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) return dn_fail(DN_E_NOMEM, "out of memory");
        *state = s;
    }
    if (!s->engine) TRY(dnnl_engine_create(&s->engine, dnnl_cpu, 0));
    if (!s->stream) TRY(dnnl_stream_create(&s->stream, s->engine, dnnl_stream_default_flags));
    if ((s->ready || s->unsupported) && !same_shape(s, d, bf16, batch)) destroy_primitives(s);
    if (s->unsupported) return dn_fail(DN_E_NOTFOUND, "oneDNN: no implementation for this convolution");
    if (!s->ready && (st = build(s, d, bf16, batch))) return st;
    if (!s->weights_ready || s->weights_from != d->weights || s->version != d->weights_version)
        if ((st = load_weights(s, d))) return st;

    TRY(dnnl_memory_set_data_handle(s->user_src, (void *)in));
    TRY(dnnl_memory_set_data_handle(s->user_dst, out));
    if (s->src_reorder) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, s->user_src}, {DNNL_ARG_TO, s->src}};
        TRY(dnnl_primitive_execute(s->src_reorder, s->stream, 2, args));
    }
    dnnl_exec_arg_t conv_args[4] = {{DNNL_ARG_SRC, s->src}, {DNNL_ARG_WEIGHTS, s->weights},
                                    {DNNL_ARG_BIAS, s->bias}, {DNNL_ARG_DST, s->dst}};
    TRY(dnnl_primitive_execute(s->conv, s->stream, 4, conv_args));
    if (s->dst_reorder) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, s->dst}, {DNNL_ARG_TO, s->user_dst}};
        TRY(dnnl_primitive_execute(s->dst_reorder, s->stream, 2, args));
    }
    TRY(dnnl_stream_wait(s->stream));
fail:
    return st;
}

#endif
