/* Inference of a whole network through oneDNN: see net_onednn.h. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "conv_onednn.h"
#include "conv_stem.h"
#include "layer_node.h"
#include "net_onednn.h"

#ifndef DN_ONEDNN

int net_onednn_wanted(const dn_network *net) { return 0; }
dn_status net_onednn_forward(dn_network *net, const float *in, int n)
{
    return dn_fail(DN_E_NOTFOUND, "this library was built without oneDNN");
}
int net_onednn_checks_input(const dn_network *net, int n) { return 0; }
dn_status net_onednn_export(dn_network *net, int index) { return DN_OK; }
void net_onednn_outputs_plain(dn_network *net) {}
void net_onednn_free(net_onednn *plan) {}

#else

#define TRY ONEDNN_TRY
#define MAX_ARGS 8

typedef struct step {
    layer_node node;
    int own_forward;             /* runs the layer's forward (no node, or its input must be NCHW) */
    /* a convolution whose only reader is the [shortcut] after it: that add (and its activation) runs as the
     * convolution's post-ops, which write the shortcut's output; the convolution's own is made only when read */
    int fuse_add;
    int done_by_previous;        /* this shortcut: its output is written by the convolution before it */
    dnnl_primitive_t prim;
    dnnl_exec_arg_t args[MAX_ARGS];
    int n_args;
    /* when the primitive could not write the output's layout itself: it writes `direct`, reordered after */
    dnnl_primitive_t out_reorder;
    dnnl_memory_t direct;
    /* convolutions: the folded weights in the primitive's layout, and what they were made from */
    dnnl_memory_t weights, bias;
    uint64_t version;
    int weights_ready;
} step;

struct net_onednn {
    int batch, bf16;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int n;
    step *steps;
    dnnl_memory_desc_t *md;      /* per layer: the layout its output is kept in */
    dnnl_memory_t *out;          /* per layer: md over the layer's output buffer */
    unsigned char *plain;        /* per layer: md is NCHW float32 */
    unsigned char *stale;        /* per layer: its buffer holds md's layout, not NCHW (after a forward here) */
    unsigned char *unwritten;    /* per layer: a fused convolution's output, not made by the last forward */
    dnnl_memory_t input;         /* the network's input, NCHW float32 */
    /* the first convolution's input in channels-last, when it runs faster from there (see first_conv) */
    dnnl_memory_t input_cl;
    dnnl_primitive_t input_reorder;
    dnnl_memory_t scratchpad;    /* one for every primitive (they run one at a time) */
    size_t scratchpad_bytes;
    /* the first convolution and the 2x2 max pool after it as one hand-written kernel (conv_stem.h), when they
     * fit it: it writes the pool's output; the convolution's is made only when read, from the input the kernel
     * leaves in the convolution's (otherwise unused) buffer */
    int use_stem;
    conv_stem *stem;
    uint64_t stem_version;
};

int net_onednn_wanted(const dn_network *net)
{
    if (!conv_onednn_built() || !net->be->host_memory || net->be->device != -1 || net->onednn_declined) return 0;
    return net->opt.precision == DN_PRECISION_BF16 || net->opt.conv_algo == DN_CONV_AUTO ||
           net->opt.conv_algo == DN_CONV_ONEDNN;
}

static void free_step(step *s)
{
    dnnl_primitive_destroy(s->prim);
    dnnl_primitive_destroy(s->out_reorder);
    dnnl_memory_destroy(s->direct);
    dnnl_memory_destroy(s->weights);
    dnnl_memory_destroy(s->bias);
}

void net_onednn_free(net_onednn *p)
{
    if (!p) return;
    for (int i = 0; i < p->n; i++) {
        if (p->steps) free_step(&p->steps[i]);
        if (p->md) dnnl_memory_desc_destroy(p->md[i]);
        if (p->out) dnnl_memory_destroy(p->out[i]);
    }
    dnnl_memory_destroy(p->input);
    dnnl_memory_destroy(p->input_cl);
    dnnl_primitive_destroy(p->input_reorder);
    dnnl_memory_destroy(p->scratchpad);
    conv_stem_free(p->stem);
    if (p->stream) dnnl_stream_destroy(p->stream);
    if (p->engine) dnnl_engine_destroy(p->engine);
    free(p->steps);
    free(p->md);
    free(p->out);
    free(p->plain);
    free(p->stale);
    free(p->unwritten);
    free(p);
}

/* Back to a step with its node and fusion flags but no primitive, for another try at building it. */
static void reset_step(step *s)
{
    free_step(s);
    memset(&s->prim, 0, sizeof(step) - offsetof(step, prim));
}

static dn_status tensor_md(dnnl_memory_desc_t *md, int n, int c, int h, int w, int plain, int bf16)
{
    const dnnl_dims_t dims = {n, c, h, w};
    dnnl_status_t s = dnnl_memory_desc_create_with_tag(md, 4, dims, plain || !bf16 ? dnnl_f32 : dnnl_bf16,
                                                       plain ? dnnl_nchw : dnnl_acdb);
    return s == dnnl_success ? DN_OK : onednn_error("a tensor's memory descriptor", s);
}

static const_dnnl_memory_desc_t input_md(net_onednn *p, int layer)
{
    const_dnnl_memory_desc_t md = NULL;
    if (layer >= 0) return p->md[layer];
    dnnl_memory_get_memory_desc(p->input_cl ? p->input_cl : p->input, &md);
    return md;
}

static dnnl_memory_t input_mem(net_onednn *p, int layer)
{
    return layer >= 0 ? p->out[layer] : p->input_cl ? p->input_cl : p->input;
}

static dnnl_data_type_t md_type(const_dnnl_memory_desc_t md)
{
    dnnl_data_type_t t = dnnl_data_type_undef;
    dnnl_memory_desc_query(md, dnnl_query_data_type, &t);
    return t;
}

/* Creates the primitive of pd and takes note of the scratchpad it needs (one buffer serves them all). */
static dn_status finish_primitive(net_onednn *p, dnnl_primitive_desc_t pd, dnnl_primitive_t *prim)
{
    dn_status st = DN_OK;
    const_dnnl_memory_desc_t scratch = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    const size_t bytes = scratch ? dnnl_memory_desc_get_size(scratch) : 0;
    if (bytes > p->scratchpad_bytes) p->scratchpad_bytes = bytes;
    TRY(dnnl_primitive_create(prim, pd));
fail:
    return st;
}

/* The attributes every primitive gets: a user scratchpad, and as post-ops the activation (linear: none), times
 * `scale` when it is not 1; with add_md, then + that tensor (the binary post-op's source) and act_after. */
static dn_status make_attr(dnnl_primitive_attr_t *attr, dn_activation activation, float scale,
                           const_dnnl_memory_desc_t add_md, dn_activation act_after)
{
    dn_status st = DN_OK;
    dnnl_post_ops_t post = NULL;
    float alpha, alpha_after;
    const dnnl_alg_kind_t act = onednn_eltwise_of(activation, &alpha);
    const dnnl_alg_kind_t after = add_md ? onednn_eltwise_of(act_after, &alpha_after) : dnnl_alg_kind_undef;
    TRY(dnnl_primitive_attr_create(attr));
    TRY(dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user));
    if (act != dnnl_alg_kind_undef || scale != 1.f || add_md) {
        TRY(dnnl_post_ops_create(&post));
        if (act != dnnl_alg_kind_undef) TRY(dnnl_post_ops_append_eltwise(post, act, alpha, 0.f));
        if (scale != 1.f) TRY(dnnl_post_ops_append_eltwise(post, dnnl_eltwise_linear, scale, 0.f));
        if (add_md) TRY(dnnl_post_ops_append_binary(post, dnnl_binary_add, add_md));
        if (after != dnnl_alg_kind_undef) TRY(dnnl_post_ops_append_eltwise(post, after, alpha_after, 0.f));
        TRY(dnnl_primitive_attr_set_post_ops(*attr, post));
    }
fail:
    dnnl_post_ops_destroy(post);
    return st;
}

/* The primitive descriptor of layer i's node writing `dst` (NULL with *pd NULL when oneDNN has none). */
static dn_status node_pd(net_onednn *p, int i, const_dnnl_memory_desc_t dst, const_dnnl_primitive_attr_t attr,
                         dnnl_primitive_desc_t *pd)
{
    const layer_node *nd = &p->steps[i].node;
    const_dnnl_memory_desc_t src = input_md(p, nd->inputs[0]);
    dnnl_status_t s = dnnl_unimplemented;
    *pd = NULL;
    switch (nd->kind) {
    case NODE_CONV:
        s = onednn_conv_pd(pd, p->engine, &nd->conv, src, dst, md_type(src), attr);
        break;
    case NODE_MAXPOOL: {
        dnnl_dims_t in_dims, out_dims;
        const dnnl_dims_t *qi = NULL, *qo = NULL;
        dnnl_memory_desc_query(src, dnnl_query_dims, &qi);
        dnnl_memory_desc_query(dst, dnnl_query_dims, &qo);
        memcpy(in_dims, *qi, sizeof in_dims);
        memcpy(out_dims, *qo, sizeof out_dims);
        const dnnl_dims_t strides = {nd->stride, nd->stride}, kernel = {nd->size, nd->size}, dil = {0, 0};
        const dnnl_dims_t pad_l = {nd->pad_top_left, nd->pad_top_left};
        const dnnl_dims_t pad_r = {(out_dims[2] - 1) * nd->stride + nd->size - in_dims[2] - nd->pad_top_left,
                                   (out_dims[3] - 1) * nd->stride + nd->size - in_dims[3] - nd->pad_top_left};
        /* Every window must hold an input cell (oneDNN's max skips padding as Darknet does) */
        if (pad_l[0] >= nd->size || pad_r[0] >= nd->size || pad_r[1] >= nd->size || pad_r[0] < 0 || pad_r[1] < 0)
            break;
        s = dnnl_pooling_forward_primitive_desc_create(pd, p->engine, dnnl_forward_inference, dnnl_pooling_max, src,
                                                       dst, strides, kernel, dil, pad_l, pad_r, attr);
        break;
    }
    case NODE_CONCAT:
        if (nd->n_inputs == 1) {
            s = dnnl_reorder_primitive_desc_create(pd, src, p->engine, dst, p->engine, attr);
        } else {
            const_dnnl_memory_desc_t srcs[NODE_MAX_INPUTS];
            for (int k = 0; k < nd->n_inputs; k++) srcs[k] = input_md(p, nd->inputs[k]);
            s = dnnl_concat_primitive_desc_create(pd, p->engine, dst, nd->n_inputs, 1, srcs, attr);
        }
        break;
    case NODE_ADD:
        s = dnnl_binary_primitive_desc_create(pd, p->engine, dnnl_binary_add, src, input_md(p, nd->inputs[1]), dst,
                                              attr);
        break;
    case NODE_UPSAMPLE:
        s = dnnl_resampling_forward_primitive_desc_create(pd, p->engine, dnnl_forward_inference,
                                                          dnnl_resampling_nearest, NULL, src, dst, attr);
        break;
    default:
        break;
    }
    if (s == dnnl_success && onednn_is_reference(*pd) && nd->kind == NODE_CONV) s = dnnl_unimplemented;
    if (s != dnnl_success) {
        dnnl_primitive_desc_destroy(*pd);
        *pd = NULL;
        if (s != dnnl_unimplemented && s != dnnl_invalid_arguments) return onednn_error("a primitive descriptor", s);
    }
    return DN_OK;
}

/* Layer i's primitive, writing its output layout directly when oneDNN can, else into a buffer of the primitive's
 * choice reordered after. DN_E_NOTFOUND (message set) when oneDNN has neither. */
static dn_status build_step(dn_network *net, net_onednn *p, int i)
{
    dn_status st = DN_OK;
    step *s = &p->steps[i];
    const layer_node *nd = &s->node;
    const dn_layer *l = &net->layers[i];
    dnnl_primitive_attr_t attr = NULL;
    dnnl_primitive_desc_t pd = NULL, reorder_pd = NULL;
    dnnl_memory_desc_t fallback = NULL;
    const float scale = nd->kind == NODE_UPSAMPLE ? nd->scale : 1.f;
    const dn_activation act = nd->kind == NODE_CONV ? nd->conv.activation
                              : nd->kind == NODE_ADD ? nd->activation : ACT_LINEAR;
    const layer_node *add = s->fuse_add ? &p->steps[i + 1].node : NULL;
    const int out_layer = add ? i + 1 : i;
    if ((st = make_attr(&attr, act, scale, add ? input_md(p, add->inputs[1]) : NULL,
                        add ? add->activation : ACT_LINEAR)))
        goto fail;
    if ((st = node_pd(p, i, p->md[out_layer], attr, &pd))) goto fail;
    if (!pd && add) {
        st = dn_fail(DN_E_NOTFOUND, "layer %d: no fused convolution and add", i);
        goto fail;
    }
    if (!pd) {
        /* conv: oneDNN's favourite layout; the others: the plan's channels-last; in the output's own type (an
         * NCHW float32 output is not rounded to bfloat16 on its way) */
        const dnnl_data_type_t type = md_type(p->md[i]);
        if (nd->kind == NODE_CONV) {
            const dnnl_dims_t dims = {p->batch, l->out_c, l->out_h, l->out_w};
            TRY(dnnl_memory_desc_create_with_tag(&fallback, 4, dims, type, dnnl_format_tag_any));
        } else {
            if ((st = tensor_md(&fallback, p->batch, l->out_c, l->out_h, l->out_w, 0, type == dnnl_bf16))) goto fail;
        }
        if ((st = node_pd(p, i, fallback, attr, &pd))) goto fail;
        if (!pd) {
            st = dn_fail(DN_E_NOTFOUND, "layer %d (%s): oneDNN has no implementation for it", i, l->ops->type);
            goto fail;
        }
        const_dnnl_memory_desc_t chosen = dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
        TRY(dnnl_memory_create(&s->direct, chosen, p->engine, DNNL_MEMORY_ALLOCATE));
        TRY(dnnl_reorder_primitive_desc_create(&reorder_pd, chosen, p->engine, p->md[i], p->engine, NULL));
        if ((st = finish_primitive(p, reorder_pd, &s->out_reorder))) goto fail;
    }
    if ((st = finish_primitive(p, pd, &s->prim))) goto fail;
    dnnl_memory_t dst = s->direct ? s->direct : p->out[out_layer];
    int a = 0;
    switch (nd->kind) {
    case NODE_CONV:
        TRY(dnnl_memory_create(&s->weights, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0), p->engine,
                               DNNL_MEMORY_ALLOCATE));
        TRY(dnnl_memory_create(&s->bias, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1), p->engine,
                               DNNL_MEMORY_ALLOCATE));
        s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, input_mem(p, nd->inputs[0])};
        s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_WEIGHTS, s->weights};
        s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_BIAS, s->bias};
        s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_DST, dst};
        if (add) {
            const int k = nd->conv.activation == ACT_LINEAR ? 0 : 1; /* the binary's place among the post-ops */
            s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_ATTR_MULTIPLE_POST_OP(k) | DNNL_ARG_SRC_1,
                                             input_mem(p, add->inputs[1])};
        }
        break;
    case NODE_CONCAT:
        if (nd->n_inputs == 1) {
            s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_FROM, input_mem(p, nd->inputs[0])};
            s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_TO, dst};
        } else {
            for (int k = 0; k < nd->n_inputs; k++)
                s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_MULTIPLE_SRC + k, input_mem(p, nd->inputs[k])};
            s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_DST, dst};
        }
        break;
    case NODE_ADD:
        s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_SRC_0, input_mem(p, nd->inputs[0])};
        s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_SRC_1, input_mem(p, nd->inputs[1])};
        s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_DST, dst};
        break;
    default: /* pooling, resampling */
        s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_SRC, input_mem(p, nd->inputs[0])};
        s->args[a++] = (dnnl_exec_arg_t){DNNL_ARG_DST, dst};
        break;
    }
    s->n_args = a; /* the scratchpad is added at the end of the build */
fail:
    dnnl_primitive_desc_destroy(pd);
    dnnl_primitive_desc_destroy(reorder_pd);
    dnnl_memory_desc_destroy(fallback);
    dnnl_primitive_attr_destroy(attr);
    return st;
}

/* The first convolution reads the network's NCHW float32 input: through a copy of it in the plan's layout and
 * type when oneDNN then writes the output's layout directly, else from the input itself. On yolov3-tiny's first
 * layer (3 -> 16 channels at 416x416, batch 4, two threads) the NCHW source left oneDNN writing its blocked
 * nChw16c and a reorder of the 16-channel output after it (5.3 + 4.3 ms in float32, 5.3 + 2.4 in bf16); from
 * the channels-last copy it wrote channels-last itself (5.3 ms, 6.2 in bf16), and the copy of 3 channels is
 * small. In bf16 the copy is always made, so that every layer multiplies in bfloat16 as asked. */
static dn_status first_conv(dn_network *net, net_onednn *p)
{
    dn_status st = DN_OK;
    dnnl_memory_desc_t md = NULL;
    dnnl_primitive_desc_t pd = NULL;
    const_dnnl_memory_desc_t in_md = NULL;
    if ((st = tensor_md(&md, p->batch, net->c, net->h, net->w, 0, p->bf16))) goto fail;
    TRY(dnnl_memory_create(&p->input_cl, md, p->engine, DNNL_MEMORY_ALLOCATE));
    TRY(dnnl_memory_get_memory_desc(p->input, &in_md));
    TRY(dnnl_reorder_primitive_desc_create(&pd, in_md, p->engine, md, p->engine, NULL));
    if ((st = finish_primitive(p, pd, &p->input_reorder))) goto fail;
    st = build_step(net, p, 0);
    if (st == DN_OK && (!p->steps[0].out_reorder || p->bf16)) goto fail; /* done (bf16: bf16 whatever it writes) */
    if (st && st != DN_E_NOTFOUND) goto fail;
    reset_step(&p->steps[0]);
    dnnl_memory_destroy(p->input_cl);
    dnnl_primitive_destroy(p->input_reorder);
    p->input_cl = NULL;
    p->input_reorder = NULL;
    st = build_step(net, p, 0);
fail:
    dnnl_primitive_desc_destroy(pd);
    dnnl_memory_desc_destroy(md);
    return st;
}

/* Whether layers 0 and 1 fit conv_stem: a convolution read only by a 2x2 stride-2 max pool right after it, both
 * outputs in the plan's layout, and the convolution's buffer large enough to keep the input in. */
static int stem_fits(const dn_network *net, const net_onednn *p)
{
    const step *conv = &p->steps[0], *pool = &p->steps[1];
    const dn_layer *l0 = &net->layers[0], *l1 = &net->layers[1];
    if (net->opt.conv_algo != DN_CONV_AUTO || p->n < 2 || p->plain[0] || p->plain[1] || pool->own_forward ||
        pool->node.kind != NODE_MAXPOOL || pool->node.inputs[0] != 0 || pool->node.size != 2 ||
        pool->node.stride != 2 || pool->node.pad_top_left != 0 || l1->out_h * 2 != l0->out_h ||
        l1->out_w * 2 != l0->out_w || l0->outputs < (size_t)net->c * net->h * net->w ||
        !conv_stem_supported(&conv->node.conv, p->bf16))
        return 0;
    for (int j = 2; j < p->n; j++)
        for (int k = 0; k < p->steps[j].node.n_inputs && !p->steps[j].own_forward; k++)
            if (p->steps[j].node.inputs[k] == 0) return 0;
    return 1;
}

/* The plan for n images. DN_E_NOTFOUND (message set) when a layer cannot run in it. */
static dn_status build(dn_network *net, int n, net_onednn **out)
{
    dn_status st = DN_OK;
    net_onednn *p = calloc(1, sizeof *p);
    const int L = net->n;
    *out = NULL;
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    p->batch = n;
    p->bf16 = net->opt.precision == DN_PRECISION_BF16;
    p->n = L;
    p->steps = calloc((size_t)L, sizeof *p->steps);
    p->md = calloc((size_t)L, sizeof *p->md);
    p->out = calloc((size_t)L, sizeof *p->out);
    p->plain = calloc((size_t)L, 1);
    p->stale = calloc((size_t)L, 1);
    p->unwritten = calloc((size_t)L, 1);
    if (!p->steps || !p->md || !p->out || !p->plain || !p->stale || !p->unwritten) {
        st = dn_fail(DN_E_NOMEM, "out of memory");
        goto fail;
    }
    TRY(dnnl_engine_create(&p->engine, dnnl_cpu, 0));
    TRY(dnnl_stream_create(&p->stream, p->engine, dnnl_stream_default_flags));

    /* The nodes, and which outputs must be NCHW float32: a layer's that runs its own forward reads (its
     * predecessor's), its own, and the last layer's. */
    for (int i = 0; i < L; i++) {
        dn_layer *l = &net->layers[i];
        step *s = &p->steps[i];
        if (l->ops->node) {
            if ((st = l->ops->node(l, net, &s->node))) goto fail;
        } else {
            s->own_forward = 1;
            p->plain[i] = 1;
            if (i > 0) p->plain[i - 1] = 1;
        }
    }
    if (p->steps[0].own_forward || p->steps[0].node.kind != NODE_CONV) {
        st = dn_fail(DN_E_NOTFOUND, "the first layer is not a convolution");
        goto fail;
    }
    p->plain[L - 1] = 1;
    for (int i = 0; i < L; i++) {
        const step *s = &p->steps[i];
        if (s->own_forward || s->node.kind == NODE_CONV) continue;
        for (int k = 0; k < s->node.n_inputs; k++)
            if (p->plain[s->node.inputs[k]]) {
                st = dn_fail(DN_E_NOTFOUND, "layer %d (%s) reads layer %d, whose output is needed in NCHW", i,
                             net->layers[i].ops->type, s->node.inputs[k]);
                goto fail;
            }
    }

    /* Fusions: a convolution read only by the [shortcut] right after it (as its first input) */
    for (int i = 0; i + 1 < L; i++) {
        step *s = &p->steps[i], *next = &p->steps[i + 1];
        if (s->own_forward || s->node.kind != NODE_CONV || p->plain[i] || next->own_forward ||
            next->node.kind != NODE_ADD || next->node.inputs[0] != i || next->node.inputs[1] == i)
            continue;
        int readers = 0;
        for (int j = 0; j < L; j++)
            for (int k = 0; k < p->steps[j].node.n_inputs && !p->steps[j].own_forward; k++)
                readers += p->steps[j].node.inputs[k] == i;
        if (readers == 1) s->fuse_add = next->done_by_previous = 1;
    }

    dnnl_memory_desc_t in_md = NULL;
    if ((st = tensor_md(&in_md, n, net->c, net->h, net->w, 1, 0))) goto fail;
    dnnl_status_t made = dnnl_memory_create(&p->input, in_md, p->engine, DNNL_MEMORY_NONE);
    dnnl_memory_desc_destroy(in_md);
    TRY(made);
    for (int i = 0; i < L; i++) {
        dn_layer *l = &net->layers[i];
        if ((st = tensor_md(&p->md[i], n, l->out_c, l->out_h, l->out_w, p->plain[i], p->bf16))) goto fail;
        TRY(dnnl_memory_create(&p->out[i], p->md[i], p->engine, l->output));
    }
    if (stem_fits(net, p))
        p->use_stem = p->steps[1].done_by_previous = 1;
    else if ((st = first_conv(net, p)))
        goto fail;
    for (int i = 1; i < L; i++) {
        step *s = &p->steps[i];
        if (s->own_forward || s->done_by_previous) continue;
        st = build_step(net, p, i);
        if (st == DN_E_NOTFOUND && s->fuse_add) { /* oneDNN could not fuse them: two primitives */
            reset_step(s);
            s->fuse_add = p->steps[i + 1].done_by_previous = 0;
            st = build_step(net, p, i);
        }
        if (st) goto fail;
    }
    if (p->scratchpad_bytes) {
        const dnnl_dims_t dims = {(dnnl_dim_t)p->scratchpad_bytes};
        dnnl_memory_desc_t md = NULL;
        TRY(dnnl_memory_desc_create_with_tag(&md, 1, dims, dnnl_u8, dnnl_x));
        made = dnnl_memory_create(&p->scratchpad, md, p->engine, DNNL_MEMORY_ALLOCATE);
        dnnl_memory_desc_destroy(md);
        TRY(made);
        for (int i = 0; i < L; i++)
            if (p->steps[i].prim)
                p->steps[i].args[p->steps[i].n_args++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, p->scratchpad};
    }
    *out = p;
    return DN_OK;
fail:
    net_onednn_free(p);
    return st;
}

static dn_status refresh_weights(dn_network *net, net_onednn *p, int i)
{
    step *s = &p->steps[i];
    dn_layer *l = &net->layers[i];
    dn_status st = l->ops->node(l, net, &s->node); /* the folded batch norm of the current parameters */
    if (!st) st = onednn_load_conv_weights(p->engine, p->stream, &s->node.conv, s->weights, s->bias);
    if (st) return st;
    s->version = net->params_version;
    s->weights_ready = 1;
    return DN_OK;
}

static dn_status refresh_stem(dn_network *net, net_onednn *p)
{
    step *s = &p->steps[0];
    dn_layer *l = &net->layers[0];
    dn_status st = l->ops->node(l, net, &s->node); /* the folded batch norm of the current parameters */
    conv_stem_free(p->stem);
    p->stem = NULL;
    if (!st) st = conv_stem_create(&p->stem, &s->node.conv);
    if (st) return st;
    p->stem_version = net->params_version;
    return DN_OK;
}

dn_status net_onednn_forward(dn_network *net, const float *in, int n)
{
    dn_status st = DN_OK;
    net_onednn *p = net->onednn;
    if (p && (p->batch != n || p->bf16 != (net->opt.precision == DN_PRECISION_BF16))) {
        net_onednn_free(p);
        net->onednn = p = NULL;
    }
    if (!p) {
        st = build(net, n, &p);
        if (st == DN_E_NOTFOUND) {
            net->onednn_declined = 1;
            dn_log(DN_LOG_INFO, "%s: inference runs layer by layer, not as one oneDNN network: %s", net->cfg_path,
                   dn_last_error());
        }
        if (st) return st;
        net->onednn = p;
    }
    TRY(dnnl_memory_set_data_handle(p->input, (void *)in));
    if (p->use_stem) {
        if ((!p->stem || p->stem_version != net->params_version) && (st = refresh_stem(net, p))) return st;
        if (!conv_stem_forward(p->stem, in, net->layers[1].output, p->bf16, net->layers[0].output, n))
            return dn_fail(DN_E_ARG, "the input contains NaN or infinity");
        *p->steps[0].node.engine = DN_ENGINE_STEM;
    }
    if (p->input_reorder) {
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_FROM, p->input}, {DNNL_ARG_TO, p->input_cl}};
        TRY(dnnl_primitive_execute(p->input_reorder, p->stream, 2, args));
    }
    memset(p->stale, 0, (size_t)p->n);
    memset(p->unwritten, 0, (size_t)p->n);
    for (int i = 0; i < p->n; i++) {
        step *s = &p->steps[i];
        dn_layer *l = &net->layers[i];
        if (s->done_by_previous) {
            p->stale[i] = !p->plain[i];
            continue;
        }
        if (i == 0 && p->use_stem) {
            p->unwritten[0] = 1;
            continue;
        }
        if (s->own_forward) {
            TRY(dnnl_stream_wait(p->stream));
            if ((st = l->ops->forward(l, net, i ? net->layers[i - 1].output : in, n))) return st;
            continue;
        }
        if (s->node.kind == NODE_CONV && (!s->weights_ready || s->version != net->params_version))
            if ((st = refresh_weights(net, p, i))) return st;
        TRY(dnnl_primitive_execute(s->prim, p->stream, s->n_args, s->args));
        if (s->out_reorder) {
            dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, s->direct}, {DNNL_ARG_TO, p->out[i]}};
            TRY(dnnl_primitive_execute(s->out_reorder, p->stream, 2, args));
        }
        if (s->node.kind == NODE_CONV)
            *s->node.engine = md_type(input_md(p, s->node.inputs[0])) == dnnl_bf16 ? DN_ENGINE_ONEDNN_BF16
                                                                                    : DN_ENGINE_ONEDNN;
        p->stale[i] = !p->plain[i];
        p->unwritten[i] = s->fuse_add;
    }
    TRY(dnnl_stream_wait(p->stream));
fail:
    return st;
}

int net_onednn_checks_input(const dn_network *net, int n)
{
    const net_onednn *p = net->onednn;
    return p && p->use_stem && p->batch == n && p->bf16 == (net->opt.precision == DN_PRECISION_BF16) &&
           !net->train && net_onednn_wanted(net);
}

dn_status net_onednn_export(dn_network *net, int index)
{
    dn_status st = DN_OK;
    net_onednn *p = net->onednn;
    if (p && p->unwritten[index]) {
        /* made now, by the layer's own forward from its input: a fused convolution's is its predecessor's
         * output, still there (nothing has run since); the stem's, the input it left in the layer's own buffer,
         * copied out first since the forward writes there */
        dn_layer *l = &net->layers[index];
        float *kept = NULL;
        if (index == 0) {
            const size_t count = (size_t)p->batch * net->c * net->h * net->w;
            if (!(kept = malloc(sizeof(float) * count)))
                return dn_fail(DN_E_NOMEM, "out of memory reading layer 0's output");
            memcpy(kept, l->output, sizeof(float) * count);
        } else if ((st = net_onednn_export(net, index - 1))) {
            return st;
        }
        st = l->ops->forward(l, net, kept ? kept : net->layers[index - 1].output, p->batch);
        free(kept);
        if (!st) p->unwritten[index] = p->stale[index] = 0;
        return st;
    }
    if (!p || !p->stale[index]) return DN_OK;
    dn_layer *l = &net->layers[index];
    const size_t count = (size_t)p->batch * l->outputs;
    float *tmp = malloc(sizeof(float) * count);
    dnnl_memory_desc_t plain_md = NULL;
    dnnl_memory_t plain = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t reorder = NULL;
    if (!tmp) return dn_fail(DN_E_NOMEM, "out of memory reading layer %d's output", index);
    if ((st = tensor_md(&plain_md, p->batch, l->out_c, l->out_h, l->out_w, 1, 0))) goto fail;
    TRY(dnnl_memory_create(&plain, plain_md, p->engine, tmp));
    TRY(dnnl_reorder_primitive_desc_create(&pd, p->md[index], p->engine, plain_md, p->engine, NULL));
    TRY(dnnl_primitive_create(&reorder, pd));
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, p->out[index]}, {DNNL_ARG_TO, plain}};
    TRY(dnnl_primitive_execute(reorder, p->stream, 2, args));
    TRY(dnnl_stream_wait(p->stream));
    memcpy(l->output, tmp, sizeof(float) * count);
    p->stale[index] = 0;
fail:
    dnnl_primitive_destroy(reorder);
    dnnl_primitive_desc_destroy(pd);
    dnnl_memory_destroy(plain);
    dnnl_memory_desc_destroy(plain_md);
    free(tmp);
    return st;
}

void net_onednn_outputs_plain(dn_network *net)
{
    if (!net->onednn) return;
    memset(net->onednn->stale, 0, (size_t)net->onednn->n);
    memset(net->onednn->unwritten, 0, (size_t)net->onednn->n);
}

#endif
