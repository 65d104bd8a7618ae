/* [convolutional] training through oneDNN (see conv_train_onednn.h).
 *
 * Per layer and shape: three primitives (forward_training, backward_weights, backward_data) whose layouts are
 * left to oneDNN (format "any"; channels-last activations in bfloat16, see build), made once and again when the
 * shape, the precision or the thread count changes.
 * Every primitive argument is either the caller's buffer itself (when oneDNN wants the plain layout, as for a
 * 3-channel first layer's input) or a region of the caller's scratch filled and emptied by reorders. The
 * gradients always go through a scratch region and a reorder with a sum post-op, which adds them to the
 * caller's buffer. Scratch regions, reused from call to call:
 *   A  output-sized: the forward's result, then d(out) in the backward;
 *   B  input-sized:  the forward's input, then d(in), then the input again for the weight gradient;
 *   W  the weights in the primitives' layout;  V  the weight gradient before it is added. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "conv_train_onednn.h"
#include "internal.h"

int conv_train_onednn_runs_bf16(const dn_conv_shape *s, int bf16) { return bf16 && s->c / s->groups >= 16; }

#ifndef DN_ONEDNN

size_t conv_train_onednn_scratch_floats(const dn_conv_shape *s)
{
    (void)s;
    return 0;
}

dn_status conv_train_onednn_forward(conv_train_onednn **state, const dn_conv_shape *s, int bf16, const float *in,
                                    const float *weights, float *out, float *scratch, size_t scratch_floats)
{
    (void)state, (void)s, (void)bf16, (void)in, (void)weights, (void)out, (void)scratch, (void)scratch_floats;
    return dn_fail(DN_E_NOTFOUND, "this library was built without oneDNN");
}

float *conv_train_onednn_packed_delta(conv_train_onednn *state, const dn_conv_shape *s, int bf16, int with_in_delta,
                                      float *scratch, struct pack_layout *layout)
{
    (void)state, (void)s, (void)bf16, (void)with_in_delta, (void)scratch, (void)layout;
    return NULL;
}

dn_status conv_train_onednn_backward(conv_train_onednn **state, const dn_conv_shape *s, int bf16, const float *in,
                                     const float *delta, const float *weights, float *weight_updates,
                                     float *in_delta, int set_in_delta, float *scratch, size_t scratch_floats)
{
    (void)state, (void)s, (void)bf16, (void)in, (void)delta, (void)weights, (void)weight_updates, (void)in_delta;
    (void)set_in_delta, (void)scratch, (void)scratch_floats;
    return dn_fail(DN_E_NOTFOUND, "this library was built without oneDNN");
}

void conv_train_onednn_free(conv_train_onednn *state) { (void)state; }

#else
#include <omp.h>

#include "conv_onednn.h"
#include "layout_pack.h"

#define TRY ONEDNN_TRY
#define ALIGN_FLOATS 16 /* regions start on 64-byte boundaries */

static size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

enum { REGION_A, REGION_B, REGION_W, REGION_V, REGIONS };

/* One argument of a primitive. Neither reorder nor packed: mem reads or writes the caller's buffer; else mem
 * lives in the scratch at offset, and reorder, or layout_pack.c's kernels (packed: an activation in NHWC or
 * nChw16c, n images of channels x pixels; weights_16b16a: a weight gradient in ABcd16b16a, n outputs x
 * channels inputs x pixels kernel pixels), copy it from or to the caller's buffer. */
typedef struct conv_arg {
    dnnl_memory_t mem;
    dnnl_primitive_t reorder;
    int packed, weights_16b16a;
    pack_layout layout;
    int n, channels;
    size_t pixels;
    int region;
    size_t offset;
} conv_arg;

static int in_scratch(const conv_arg *a) { return a->reorder || a->packed || a->weights_16b16a; }

struct conv_train_onednn {
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    /* what the primitives were made for */
    dn_conv_shape shape;
    int bf16, threads;
    int ready, unsupported;
    size_t region_floats[REGIONS];
    size_t scratch_floats; /* the regions' sum */
    dnnl_primitive_t fwd, bwd_weights, bwd_data;
    dnnl_memory_t user_src, user_dst, user_wei; /* plain float32 views of the caller's buffers */
    conv_arg fwd_src, fwd_wei, fwd_dst;
    conv_arg bwd_ddst, bwd_wei, bwd_dsrc;
    conv_arg bww_src, bww_ddst, bww_dwei;
    int ddst_shared; /* the two gradients read d(out) in one layout: the backward reorders it once */
};

size_t conv_train_onednn_scratch_floats(const dn_conv_shape *s)
{
    if (s->groups != 1) return 0;
    /* Activations: blocked by at most 16 channels on this project's CPUs (nChw16c; plain and channels-last
     * layouts are smaller). Weights: AMX layouts pad both channel counts up to 64. */
    const size_t in = (size_t)s->batch * round_up((size_t)s->c, 16) * s->h * s->w;
    const size_t out = (size_t)s->batch * round_up((size_t)s->filters, 16) * s->out_h * s->out_w;
    const size_t wei = round_up((size_t)s->filters, 64) * round_up((size_t)s->c, 64) * s->size * s->size;
    return out + in + 2 * wei + (REGIONS + 1) * ALIGN_FLOATS; /* + aligning the start */
}

#define ARGS 9
/* The primitives' arguments, into out[ARGS]; returns ARGS. */
static int all_args(conv_train_onednn *s, conv_arg **out)
{
    conv_arg *args[ARGS] = {&s->fwd_src,  &s->fwd_wei, &s->fwd_dst,  &s->bwd_ddst, &s->bwd_wei,
                            &s->bwd_dsrc, &s->bww_src, &s->bww_ddst, &s->bww_dwei};
    memcpy(out, args, sizeof args);
    return ARGS;
}

static void arg_destroy(conv_arg *a)
{
    dnnl_primitive_destroy(a->reorder);
    dnnl_memory_destroy(a->mem);
    *a = (conv_arg){0};
}

static void destroy_primitives(conv_train_onednn *s)
{
    dnnl_primitive_destroy(s->fwd);
    dnnl_primitive_destroy(s->bwd_weights);
    dnnl_primitive_destroy(s->bwd_data);
    s->fwd = s->bwd_weights = s->bwd_data = NULL;
    conv_arg *args[ARGS];
    for (int i = 0; i < all_args(s, args); i++) arg_destroy(args[i]);
    dnnl_memory_destroy(s->user_src);
    dnnl_memory_destroy(s->user_dst);
    dnnl_memory_destroy(s->user_wei);
    s->user_src = s->user_dst = s->user_wei = NULL;
    memset(s->region_floats, 0, sizeof s->region_floats);
    s->scratch_floats = 0;
    s->ready = s->unsupported = s->ddst_shared = 0;
}

void conv_train_onednn_free(conv_train_onednn *s)
{
    if (!s) return;
    destroy_primitives(s);
    if (s->stream) dnnl_stream_destroy(s->stream);
    if (s->engine) dnnl_engine_destroy(s->engine);
    free(s);
}

/* How an argument meets the caller's buffer: READ from it, WRITE it, or ADD to it. */
typedef enum arg_use { ARG_READ, ARG_WRITE, ARG_ADD } arg_use;

/* An activation argument (dims: n images, channels, h, w) whose layout layout_pack.c copies faster than
 * oneDNN's reorder: NHWC (to the primitive in bfloat16 or float32, from it in float32) or float32 nChw16c.
 * (oneDNN's float32 NCHW -> NHWC reorders ran at about 13 GB/s on Xeon Ice Lake; its nChw16c packing was as
 * fast as layout_pack.c's.) Sets a->packed and a->layout. */
static dn_status match_packed(conv_arg *a, const_dnnl_memory_desc_t prim_md, const dnnl_dims_t dims, arg_use use,
                              int bf16)
{
    dn_status st = DN_OK;
    dnnl_memory_desc_t nhwc = NULL, blocked = NULL;
    const int channels = (int)dims[1];
    const size_t pixels = (size_t)dims[2] * dims[3];
    if ((bf16 && use != ARG_READ) || !layout_pack_available(bf16)) return DN_OK;
    TRY(dnnl_memory_desc_create_with_tag(&nhwc, 4, dims, bf16 ? dnnl_bf16 : dnnl_f32, dnnl_nhwc));
    TRY(dnnl_memory_desc_create_with_tag(&blocked, 4, dims, dnnl_f32, dnnl_nChw16c));
    a->n = (int)dims[0], a->channels = channels, a->pixels = pixels;
    if (dnnl_memory_desc_equal(prim_md, nhwc)) {
        a->packed = 1;
        a->layout = pack_layout_nhwc(channels, pixels, bf16);
    } else if (!bf16 && dnnl_memory_desc_equal(prim_md, blocked)) {
        a->packed = 1;
        a->layout = pack_layout_nchw16c(channels, pixels);
    }
fail:
    dnnl_memory_desc_destroy(nhwc);
    dnnl_memory_desc_destroy(blocked);
    return st;
}

/* A weight gradient (prim_md, float32) in ABcd16b16a, the layout of oneDNN's AVX-512 weight gradients:
 * layout_pack.c adds it to the caller's OIHW (user_md) in 4.1 ms for 1024 x 512 x 3 x 3 on Xeon Ice Lake, where
 * oneDNN's reorder with a sum took 13 ms a call (about 4.4 GB/s). Sets a->weights_16b16a. */
static dn_status match_weights_16b16a(conv_arg *a, const_dnnl_memory_desc_t prim_md, const_dnnl_memory_desc_t user_md)
{
    dn_status st = DN_OK;
    dnnl_memory_desc_t blocked = NULL;
    const dnnl_dims_t *dims = NULL;
    int ndims = 0;
    TRY(dnnl_memory_desc_query(user_md, dnnl_query_ndims_s32, &ndims));
    if (ndims != 4) return DN_OK;
    TRY(dnnl_memory_desc_query(user_md, dnnl_query_dims, &dims));
    TRY(dnnl_memory_desc_create_with_tag(&blocked, 4, *dims, dnnl_f32, dnnl_ABcd16b16a));
    if (dnnl_memory_desc_equal(prim_md, blocked)) {
        a->weights_16b16a = 1;
        a->n = (int)(*dims)[0], a->channels = (int)(*dims)[1], a->pixels = (size_t)(*dims)[2] * (*dims)[3];
    }
fail:
    dnnl_memory_desc_destroy(blocked);
    return st;
}

/* The argument of a primitive whose layout is prim_md, for the caller's plain user_md: a copy from the
 * caller's buffer (READ) or to it (WRITE; ADD adds to it), through the scratch region, by layout_pack.c for
 * the activations it takes (dims given) and float32 weight gradients in ABcd16b16a, else by a oneDNN reorder
 * (with a sum post-op to add); none, the primitive using the caller's buffer itself, when the layouts are equal
 * and nothing is added. */
static dn_status make_arg(conv_train_onednn *s, conv_arg *a, const_dnnl_memory_desc_t prim_md,
                          const_dnnl_memory_desc_t user_md, arg_use use, int region, const dnnl_dim_t *dims)
{
    dn_status st = DN_OK;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t post = NULL;
    a->region = region;
    TRY(dnnl_memory_create(&a->mem, prim_md, s->engine, DNNL_MEMORY_NONE));
    if (use != ARG_ADD && dnnl_memory_desc_equal(prim_md, user_md)) return DN_OK;
    const size_t floats = round_up((dnnl_memory_desc_get_size(prim_md) + sizeof(float) - 1) / sizeof(float),
                                   ALIGN_FLOATS);
    if (floats > s->region_floats[region]) s->region_floats[region] = floats;
    dnnl_data_type_t type = dnnl_data_type_undef;
    TRY(dnnl_memory_desc_query(prim_md, dnnl_query_data_type, &type));
    if (dims) {
        if ((st = match_packed(a, prim_md, dims, use, type == dnnl_bf16))) goto fail;
        if (a->packed) return DN_OK;
    } else if (use != ARG_READ && type == dnnl_f32) {
        if ((st = match_weights_16b16a(a, prim_md, user_md))) goto fail;
        if (a->weights_16b16a) return DN_OK;
    }
    if (use == ARG_READ) {
        TRY(dnnl_reorder_primitive_desc_create(&pd, user_md, s->engine, prim_md, s->engine, NULL));
    } else {
        if (use == ARG_ADD) {
            TRY(dnnl_primitive_attr_create(&attr));
            TRY(dnnl_post_ops_create(&post));
            TRY(dnnl_post_ops_append_sum(post, 1.f, 0, dnnl_data_type_undef));
            TRY(dnnl_primitive_attr_set_post_ops(attr, post));
        }
        TRY(dnnl_reorder_primitive_desc_create(&pd, prim_md, s->engine, user_md, s->engine, attr));
    }
    TRY(dnnl_primitive_create(&a->reorder, pd));
fail:
    dnnl_primitive_desc_destroy(pd);
    dnnl_post_ops_destroy(post);
    dnnl_primitive_attr_destroy(attr);
    return st;
}

#define QUERY(pd, what) dnnl_primitive_desc_query_md(pd, what, 0)

/* The three primitive descriptors of sh, the activations (and their gradients) in layout `act` (a format tag, or
 * "any" to let oneDNN choose), the weights in oneDNN's choice; the data gradient's operands in data_grad_operand,
 * its layouts oneDNN's choice when that differs from `operand`. On failure the caller destroys what was made. */
static dn_status make_descs(conv_train_onednn *s, const dn_conv_shape *sh, dnnl_data_type_t operand,
                            dnnl_data_type_t data_grad_operand, dnnl_format_tag_t act, dnnl_primitive_desc_t *fwd,
                            dnnl_primitive_desc_t *bww, dnnl_primitive_desc_t *bwd)
{
    dn_status st = DN_OK;
    dnnl_memory_desc_t src = NULL, wei = NULL, dst = NULL, ddst = NULL, dsrc = NULL, dwei = NULL;
    dnnl_memory_desc_t bwd_wei = NULL, bwd_ddst = NULL, weight_grad_src = NULL;
    const dnnl_dims_t src_dims = {sh->batch, sh->c, sh->h, sh->w};
    const dnnl_dims_t dst_dims = {sh->batch, sh->filters, sh->out_h, sh->out_w};
    const dnnl_dims_t wei_dims = {sh->filters, sh->c, sh->size, sh->size};
    const dnnl_dims_t strides = {sh->stride, sh->stride}, dilates = {0, 0}, pad = {sh->pad, sh->pad};
    const dnnl_format_tag_t any = dnnl_format_tag_any;
    /* a float32 data gradient of a bfloat16 layer: its layouts oneDNN's choice */
    const dnnl_format_tag_t data_grad_act = data_grad_operand == operand ? act : any;
    /* The float32 weight gradient of a strided layer in oneDNN's choice of layout (nChw16c without AMX): in
     * channels-last its jit kernel ran yolov3's five stride-2 layers at 83-96 GFLOP/s on Xeon Ice Lake (their
     * forward at 250), 362 ms per batch-4 iteration; in nChw16c 125-152 GFLOP/s, 233 ms. Its copies in and out
     * are then separate from the data gradient's; per yolov3 batch-4 iteration (in-process A/B, paired
     * medians) 0.988x and 0.923x the time of channels-last over two runs. */
    const dnnl_format_tag_t weight_grad_act = operand == dnnl_f32 && sh->stride > 1 ? any : act;
    /* operands in `operand`, results in float32: the forward's output and both gradients stay float32 */
    TRY(dnnl_memory_desc_create_with_tag(&src, 4, src_dims, operand, act));
    TRY(dnnl_memory_desc_create_with_tag(&wei, 4, wei_dims, operand, any));
    TRY(dnnl_memory_desc_create_with_tag(&dst, 4, dst_dims, dnnl_f32, act));
    TRY(dnnl_memory_desc_create_with_tag(&ddst, 4, dst_dims, operand, weight_grad_act));
    TRY(dnnl_memory_desc_create_with_tag(&weight_grad_src, 4, src_dims, operand, weight_grad_act));
    TRY(dnnl_memory_desc_create_with_tag(&dsrc, 4, src_dims, dnnl_f32, data_grad_act));
    TRY(dnnl_memory_desc_create_with_tag(&dwei, 4, wei_dims, dnnl_f32, any));
    TRY(dnnl_memory_desc_create_with_tag(&bwd_wei, 4, wei_dims, data_grad_operand, any));
    TRY(dnnl_memory_desc_create_with_tag(&bwd_ddst, 4, dst_dims, data_grad_operand, data_grad_act));
    TRY(dnnl_convolution_forward_primitive_desc_create(fwd, s->engine, dnnl_forward_training,
                                                       dnnl_convolution_direct, src, wei, NULL, dst, strides,
                                                       dilates, pad, pad, NULL));
    TRY(dnnl_convolution_backward_weights_primitive_desc_create(bww, s->engine, dnnl_convolution_direct,
                                                                weight_grad_src, dwei,
                                                                NULL, ddst, strides, dilates, pad, pad, *fwd, NULL));
    TRY(dnnl_convolution_backward_data_primitive_desc_create(bwd, s->engine, dnnl_convolution_direct, dsrc, bwd_wei,
                                                             bwd_ddst, strides, dilates, pad, pad, *fwd, NULL));
fail:;
    dnnl_memory_desc_t mds[] = {src, wei, dst, ddst, dsrc, dwei, bwd_wei, bwd_ddst, weight_grad_src};
    for (size_t i = 0; i < sizeof mds / sizeof *mds; i++) dnnl_memory_desc_destroy(mds[i]);
    return st;
}

static void destroy_descs(dnnl_primitive_desc_t *fwd, dnnl_primitive_desc_t *bww, dnnl_primitive_desc_t *bwd)
{
    dnnl_primitive_desc_destroy(*fwd);
    dnnl_primitive_desc_destroy(*bww);
    dnnl_primitive_desc_destroy(*bwd);
    *fwd = *bww = *bwd = NULL;
}

static dn_status build(conv_train_onednn *s, const dn_conv_shape *sh, int bf16)
{
    dn_status st = DN_OK;
    dnnl_memory_desc_t user_src = NULL, user_dst = NULL, user_wei = NULL;
    dnnl_primitive_desc_t fwd = NULL, bww = NULL, bwd = NULL;
    if (sh->groups != 1) {
        s->unsupported = 1;
        return dn_fail(DN_E_NOTFOUND, "oneDNN training convolutions: grouped convolutions are not taken");
    }
    const dnnl_data_type_t operand = conv_train_onednn_runs_bf16(sh, bf16) ? dnnl_bf16 : dnnl_f32;
    /* Without AMX, the data gradient of a layer whose input planes hold at least 64x64 pixels multiplies in
     * float32. Measured with tests/test_bf16.py's fine-tuning on AMD Zen 5 (AVX512_BF16, no AMX), COCO AP minus
     * float32's over three data orders (seeds 1, 2, 3): a backward wholly in bfloat16 -0.0052, +0.0010,
     * -0.0044; this rule -0.0007, +0.0005, -0.0032; two float32 paths (AUTO, GEMM) differ by 0.0003-0.0015
     * among themselves (on AMX the wholly-bf16 backward gave -0.0007 at seed 1). The outcome of so short a
     * fine-tuning moves with small arithmetic changes (seed 1's bf16 variants fell near either 0.1695 or 0.1742),
     * so the rule is a measured improvement, not an explained one; with the data gradient in float32 in every
     * layer, seed 1 gave -0.0008 or -0.0053 depending on its layouts. The rule takes 1.02x the time of a
     * yolov3-tiny batch-8 iteration wholly in bfloat16, 1.05x for yolov3 batch 2 (in-process A/B, paired
     * medians); the data gradient in float32 in every layer took 1.22x. */
    const int planes_wide = sh->h * sh->w >= 64 * 64;
    const dnnl_data_type_t data_grad_operand =
        operand == dnnl_bf16 && planes_wide && dnnl_get_effective_cpu_isa() < dnnl_cpu_isa_avx512_core_amx
            ? dnnl_f32
            : operand;
    const dnnl_dims_t src_dims = {sh->batch, sh->c, sh->h, sh->w};
    const dnnl_dims_t dst_dims = {sh->batch, sh->filters, sh->out_h, sh->out_w};
    const dnnl_dims_t wei_dims = {sh->filters, sh->c, sh->size, sh->size};
    TRY(dnnl_memory_desc_create_with_tag(&user_src, 4, src_dims, dnnl_f32, dnnl_nchw));
    TRY(dnnl_memory_desc_create_with_tag(&user_dst, 4, dst_dims, dnnl_f32, dnnl_nchw));
    TRY(dnnl_memory_desc_create_with_tag(&user_wei, 4, wei_dims, dnnl_f32, dnnl_oihw));
    /* Activations in channels-last (a float32 data gradient of a bfloat16 layer excepted, see make_descs), where
     * layout_pack.c copies them and oneDNN runs AVX-512 kernels; a layout without a fast kernel falls back to
     * oneDNN's own choice.
     * - bfloat16: on AMX CPUs oneDNN picks that layout itself; on CPUs with AVX512_BF16 alone "any" picks nChw16c
     *   and the older jit_bf16 kernels, while channels-last gets the brgemm forward and data gradient. Measured on
     *   AMD Zen 5 (in-process A/B, oneDNN's own choice against this): 1.044x the time per yolov3-tiny batch-8
     *   iteration, 1.008x for yolov3 batch 2; with float32 data gradients in channels-last too, yolov3 took
     *   0.97x, hence their exception.
     * - float32: without AMX "any" picks nChw16c and the older jit kernels (115-190 GFLOP/s on Xeon Ice Lake,
     *   2 threads), channels-last the brgemm forward and data gradient and a faster weight gradient (155-230).
     *   Per training iteration there (in-process A/B, paired medians): 0.85x the time of nChw16c for
     *   yolov3-tiny batch 8, both copied by layout_pack.c; 0.89x the previous library's (nChw16c, oneDNN's
     *   reorders into the primitives) for yolov3-tiny batch 8, 0.86x for yolov3 batch 4. */
    const int avx512 = layout_pack_available(0) && dnnl_get_effective_cpu_isa() >= dnnl_cpu_isa_avx512_core;
    if (operand == dnnl_bf16 || avx512) {
        st = make_descs(s, sh, operand, data_grad_operand, dnnl_nhwc, &fwd, &bww, &bwd);
        if (st || onednn_is_reference(fwd) || onednn_is_reference(bww) || onednn_is_reference(bwd)) {
            destroy_descs(&fwd, &bww, &bwd);
            st = DN_OK;
        }
    }
    if (!fwd && (st = make_descs(s, sh, operand, data_grad_operand, dnnl_format_tag_any, &fwd, &bww, &bwd)))
        goto fail;
    TRY(dnnl_primitive_create(&s->fwd, fwd));
    TRY(dnnl_primitive_create(&s->bwd_weights, bww));
    TRY(dnnl_primitive_create(&s->bwd_data, bwd));
    TRY(dnnl_memory_create(&s->user_src, user_src, s->engine, DNNL_MEMORY_NONE));
    TRY(dnnl_memory_create(&s->user_dst, user_dst, s->engine, DNNL_MEMORY_NONE));
    TRY(dnnl_memory_create(&s->user_wei, user_wei, s->engine, DNNL_MEMORY_NONE));
    if ((st = make_arg(s, &s->fwd_src, QUERY(fwd, dnnl_query_src_md), user_src, ARG_READ, REGION_B, src_dims)) ||
        (st = make_arg(s, &s->fwd_wei, QUERY(fwd, dnnl_query_weights_md), user_wei, ARG_READ, REGION_W, NULL)) ||
        (st = make_arg(s, &s->fwd_dst, QUERY(fwd, dnnl_query_dst_md), user_dst, ARG_WRITE, REGION_A, dst_dims)) ||
        (st = make_arg(s, &s->bwd_ddst, QUERY(bwd, dnnl_query_diff_dst_md), user_dst, ARG_READ, REGION_A, dst_dims)) ||
        (st = make_arg(s, &s->bwd_wei, QUERY(bwd, dnnl_query_weights_md), user_wei, ARG_READ, REGION_W, NULL)) ||
        (st = make_arg(s, &s->bwd_dsrc, QUERY(bwd, dnnl_query_diff_src_md), user_src, ARG_ADD, REGION_B, src_dims)) ||
        (st = make_arg(s, &s->bww_src, QUERY(bww, dnnl_query_src_md), user_src, ARG_READ, REGION_B, src_dims)) ||
        (st = make_arg(s, &s->bww_ddst, QUERY(bww, dnnl_query_diff_dst_md), user_dst, ARG_READ, REGION_A, dst_dims)) ||
        (st = make_arg(s, &s->bww_dwei, QUERY(bww, dnnl_query_diff_weights_md), user_wei, ARG_ADD, REGION_V, NULL)))
        goto fail;
    s->ddst_shared = in_scratch(&s->bwd_ddst) && in_scratch(&s->bww_ddst) &&
                     dnnl_memory_desc_equal(QUERY(bwd, dnnl_query_diff_dst_md), QUERY(bww, dnnl_query_diff_dst_md));
    size_t offset = 0, offsets[REGIONS];
    for (int r = 0; r < REGIONS; r++) offsets[r] = offset, offset += s->region_floats[r];
    s->scratch_floats = offset;
    conv_arg *args[ARGS];
    for (int i = 0; i < all_args(s, args); i++) args[i]->offset = offsets[args[i]->region];
    s->shape = *sh;
    s->bf16 = bf16;
    s->threads = omp_get_max_threads();
    s->ready = 1;
fail:
    destroy_descs(&fwd, &bww, &bwd);
    dnnl_memory_desc_t mds[] = {user_src, user_dst, user_wei};
    for (size_t i = 0; i < sizeof mds / sizeof *mds; i++) dnnl_memory_desc_destroy(mds[i]);
    if (st) {
        destroy_primitives(s);
        s->unsupported = st == DN_E_NOTFOUND;
    }
    return st;
}

static int same_shape(const dn_conv_shape *a, const dn_conv_shape *b)
{
    return a->batch == b->batch && a->c == b->c && a->h == b->h && a->w == b->w && a->filters == b->filters &&
           a->size == b->size && a->stride == b->stride && a->pad == b->pad && a->groups == b->groups &&
           a->out_h == b->out_h && a->out_w == b->out_w;
}

/* The state, built for this shape, precision and team size, with its layouts fitting the scratch. */
static dn_status prepare(conv_train_onednn **state, const dn_conv_shape *sh, int bf16, size_t scratch_floats)
{
    dn_status st = DN_OK;
    conv_train_onednn *s = *state;
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) return dn_fail(DN_E_NOMEM, "out of memory");
        *state = s;
    }
    if (!s->engine) TRY(dnnl_engine_create(&s->engine, dnnl_cpu, 0));
    if (!s->stream) TRY(dnnl_stream_create(&s->stream, s->engine, dnnl_stream_default_flags));
    if ((s->ready || s->unsupported) &&
        (!same_shape(&s->shape, sh) || s->bf16 != bf16 || s->threads != omp_get_max_threads()))
        destroy_primitives(s);
    if (s->unsupported) return dn_fail(DN_E_NOTFOUND, "oneDNN: no training convolution for this layer");
    if (!s->ready && (st = build(s, sh, bf16))) return st;
    if (s->scratch_floats + ALIGN_FLOATS - 1 > scratch_floats)
        return dn_fail(DN_E_NOTFOUND, "oneDNN's layouts for this convolution need %zu scratch floats, %zu are there",
                       s->scratch_floats, scratch_floats);
fail:
    return st;
}

/* The scratch from its first 64-byte boundary: oneDNN's AVX-512 kernels load whole cache lines (the caller's
 * workspace comes from calloc, 16-byte aligned). */
static float *aligned(float *scratch)
{
    const uintptr_t p = (uintptr_t)scratch, bytes = ALIGN_FLOATS * sizeof(float);
    return (float *)((p + bytes - 1) / bytes * bytes);
}

/* Points a at its data for this call: the caller's buffer, or its scratch region filled from the caller's
 * buffer through user (to_primitive). */
static dn_status arg_bind(conv_train_onednn *s, const conv_arg *a, dnnl_memory_t user, const float *data,
                          float *scratch, int to_primitive)
{
    dn_status st = DN_OK;
    if (!in_scratch(a)) {
        TRY(dnnl_memory_set_data_handle(a->mem, (void *)data));
        return DN_OK;
    }
    float *region = aligned(scratch) + a->offset;
    TRY(dnnl_memory_set_data_handle(a->mem, region));
    if (to_primitive && a->packed) {
        layout_pack(data, a->n, a->channels, a->pixels, &a->layout, region);
    } else if (to_primitive) {
        TRY(dnnl_memory_set_data_handle(user, (void *)data));
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, a->mem}};
        TRY(dnnl_primitive_execute(a->reorder, s->stream, 2, args));
    }
fail:
    return st;
}

/* After the primitive: a's scratch region copied (or added) into the caller's buffer. */
static dn_status arg_flush(conv_train_onednn *s, const conv_arg *a, dnnl_memory_t user, float *data, int add)
{
    dn_status st = DN_OK;
    if (a->packed || a->weights_16b16a) {
        void *region = NULL;
        TRY(dnnl_memory_get_data_handle(a->mem, &region));
        if (a->packed)
            layout_unpack(region, &a->layout, a->n, a->channels, a->pixels, data, add);
        else
            layout_unpack_weights_16b16a(region, a->n, a->channels, (int)a->pixels, data, add);
        return DN_OK;
    }
    if (!a->reorder) return DN_OK;
    TRY(dnnl_memory_set_data_handle(user, data));
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, a->mem}, {DNNL_ARG_TO, user}};
    TRY(dnnl_primitive_execute(a->reorder, s->stream, 2, args));
fail:
    return st;
}

dn_status conv_train_onednn_forward(conv_train_onednn **state, const dn_conv_shape *sh, int bf16, const float *in,
                                    const float *weights, float *out, float *scratch, size_t scratch_floats)
{
    dn_status st = prepare(state, sh, bf16, scratch_floats);
    if (st) return st;
    conv_train_onednn *s = *state;
    if ((st = arg_bind(s, &s->fwd_src, s->user_src, in, scratch, 1)) ||
        (st = arg_bind(s, &s->fwd_wei, s->user_wei, weights, scratch, 1)) ||
        (st = arg_bind(s, &s->fwd_dst, s->user_dst, out, scratch, 0)))
        return st;
    dnnl_exec_arg_t args[3] = {
        {DNNL_ARG_SRC, s->fwd_src.mem}, {DNNL_ARG_WEIGHTS, s->fwd_wei.mem}, {DNNL_ARG_DST, s->fwd_dst.mem}};
    TRY(dnnl_primitive_execute(s->fwd, s->stream, 3, args));
    if ((st = arg_flush(s, &s->fwd_dst, s->user_dst, out, 0))) return st;
    TRY(dnnl_stream_wait(s->stream));
fail:
    return st;
}

float *conv_train_onednn_packed_delta(conv_train_onednn *s, const dn_conv_shape *sh, int bf16, int with_in_delta,
                                      float *scratch, pack_layout *layout)
{
    if (!s || !s->ready || !same_shape(&s->shape, sh) || s->bf16 != bf16 || s->threads != omp_get_max_threads())
        return NULL;
    const conv_arg *a = &s->bww_ddst;
    if (!a->packed || a->layout.bf16 || (with_in_delta && !s->ddst_shared)) return NULL;
    *layout = a->layout;
    return aligned(scratch) + a->offset;
}

dn_status conv_train_onednn_backward(conv_train_onednn **state, const dn_conv_shape *sh, int bf16, const float *in,
                                     const float *delta, const float *weights, float *weight_updates,
                                     float *in_delta, int set_in_delta, float *scratch, size_t scratch_floats)
{
    dn_status st = prepare(state, sh, bf16, scratch_floats);
    if (st == DN_E_NOTFOUND && !delta) /* conv_train_onednn_packed_delta said yes: the state cannot have gone */
        return dn_fail(DN_E_ARG, "oneDNN training convolution: d(out) was packed for primitives that are gone");
    if (st) return st;
    conv_train_onednn *s = *state;
    /* The input gradient first: region B then takes the input again for the weight gradient. */
    if (in_delta) {
        if ((st = arg_bind(s, &s->bwd_ddst, s->user_dst, delta, scratch, delta != NULL)) ||
            (st = arg_bind(s, &s->bwd_wei, s->user_wei, weights, scratch, 1)) ||
            (st = arg_bind(s, &s->bwd_dsrc, s->user_src, in_delta, scratch, 0)))
            return st;
        dnnl_exec_arg_t args[3] = {{DNNL_ARG_DIFF_DST, s->bwd_ddst.mem},
                                   {DNNL_ARG_WEIGHTS, s->bwd_wei.mem},
                                   {DNNL_ARG_DIFF_SRC, s->bwd_dsrc.mem}};
        TRY(dnnl_primitive_execute(s->bwd_data, s->stream, 3, args));
        /* set: in_delta holds stale values; the packed copy overwrites it, a reorder (with its sum) adds to zeros */
        if (set_in_delta && !s->bwd_dsrc.packed) {
            TRY(dnnl_stream_wait(s->stream));
            memset(in_delta, 0, sizeof(float) * (size_t)sh->batch * sh->c * sh->h * sh->w);
        }
        if ((st = arg_flush(s, &s->bwd_dsrc, s->user_src, in_delta, !set_in_delta))) return st;
    }
    const int ddst_ready = !delta || (in_delta && s->ddst_shared);
    if ((st = arg_bind(s, &s->bww_ddst, s->user_dst, delta, scratch, !ddst_ready)) ||
        (st = arg_bind(s, &s->bww_src, s->user_src, in, scratch, 1)) ||
        (st = arg_bind(s, &s->bww_dwei, s->user_wei, weight_updates, scratch, 0)))
        return st;
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, s->bww_src.mem},
                               {DNNL_ARG_DIFF_DST, s->bww_ddst.mem},
                               {DNNL_ARG_DIFF_WEIGHTS, s->bww_dwei.mem}};
    TRY(dnnl_primitive_execute(s->bwd_weights, s->stream, 3, args));
    if ((st = arg_flush(s, &s->bww_dwei, s->user_wei, weight_updates, 1))) return st;
    TRY(dnnl_stream_wait(s->stream));
fail:
    return st;
}

#endif
