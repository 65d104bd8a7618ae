/* [convolutional]: convolution, batch norm (or bias), activation, each a kernel of the network's backend.
 * The convolution: at inference on the CPU backend, oneDNN (conv_onednn.c) or winograd.c's fused path (Winograd
 * or im2col + GEMM with batch norm and activation folded in); in training on the CPU backend, oneDNN's training
 * convolutions (conv_train_onednn.c) where the library has them; otherwise the backend's whole-convolution
 * kernels when it has them (cuDNN), else im2col (skipped for 1x1 stride 1) + GEMM per image and group.
 * Parameter block of the layer, in .weights order: biases[f], (scales[f], rolling_mean[f], rolling_var[f])
 * when batch_normalize, then weights[f * c/groups * size * size]. */
#include <math.h>
#include <string.h>

#include "conv_fast.h"
#include "conv_onednn.h"
#include "conv_few_channels.h"
#include "conv_train_onednn.h"
#include "elementwise.h"
#include "internal.h"
#include "layer_node.h"
#include "layout_pack.h"

typedef struct conv_priv {
    int pad;
    int batch_normalize;
    dn_activation activation;
    size_t n_weights;
    /* training caches, batch sized, in backend memory */
    float *x;         /* convolution output before batch norm */
    float *x_norm;    /* after normalisation, before scale and bias */
    float *raw;       /* before the activation (mish and swish need it) */
    float *mean, *variance;
    /* inference fast path of the CPU backend (winograd.c): its cache, and bias + batch norm folded to
     * y = x * mul + add (host memory) */
    conv_fast_cache *fast;
    conv_onednn *onednn;  /* the oneDNN engine's primitives (conv_onednn.c) */
    conv_train_onednn *train_onednn; /* training's oneDNN primitives (conv_train_onednn.c) */
    float *fold;      /* mul[filters], then add[filters] */
    dn_conv_engine engine;  /* what the last forward ran on */
} conv_priv;

typedef struct conv_views {
    float *biases, *scales, *rolling_mean, *rolling_variance, *weights;
    float *bias_updates, *scale_updates, *weight_updates;
} conv_views;

static conv_views views(const dn_layer *l, const dn_network *net)
{
    const conv_priv *p = l->priv;
    const int f = l->filters;
    conv_views v = {0};
    float *base = net->params + l->param_offset;
    v.biases = base;
    if (p->batch_normalize) {
        v.scales = base + f;
        v.rolling_mean = base + 2 * f;
        v.rolling_variance = base + 3 * f;
        v.weights = base + 4 * f;
    } else {
        v.weights = base + f;
    }
    if (net->updates) {
        float *u = net->updates + l->param_offset;
        v.bias_updates = u;
        v.scale_updates = p->batch_normalize ? u + f : NULL;
        v.weight_updates = u + (v.weights - base);
    }
    return v;
}

static void conv_info(const dn_layer *l, dn_layer_info *out)
{
    const conv_priv *p = l->priv;
    out->batch_normalize = p->batch_normalize;
    out->activation = p->activation;
    out->padding = p->pad;
    out->engine = p->engine;
}

static void conv_free(dn_layer *l, dn_network *net)
{
    conv_priv *p = l->priv;
    if (!p) return;
    layer_release(net, p->x);
    layer_release(net, p->x_norm);
    layer_release(net, p->raw);
    layer_release(net, p->mean);
    layer_release(net, p->variance);
    conv_fast_free(p->fast);
    conv_onednn_free(p->onednn);
    conv_train_onednn_free(p->train_onednn);
    free(p->fold);
    free(p);
    l->priv = NULL;
}

/* Whether training runs batch norm and the activation as the backend's fused pair (bn_act_forward/backward),
 * which keeps no x_norm: the activation's gradient must read only its output. */
static int fused_bn_act(const conv_priv *p, const dn_network *net)
{
    return p->batch_normalize && net->be->k->bn_act_forward && net->be->k->bn_act_backward &&
           !activation_needs_input(p->activation);
}

static dn_conv_shape conv_shape(const dn_layer *l, int batch)
{
    const conv_priv *p = l->priv;
    dn_conv_shape s = {.batch = batch, .c = l->c, .h = l->h, .w = l->w, .filters = l->filters, .size = l->size,
                       .stride = l->stride, .pad = p->pad, .groups = l->groups, .out_h = l->out_h,
                       .out_w = l->out_w};
    return s;
}

/* Whether training convolves through oneDNN (conv_train_onednn.h): on the CPU backend of a library with oneDNN,
 * every layer under conv_algo ONEDNN or precision bf16; under AUTO in float32 the layers with kernels larger
 * than 1x1, as at inference. Timed against im2col + OpenBLAS (forward, batch norm and both gradients, layer by
 * layer, interleaved, 2 threads): yolov3's 1x1 layers at batch 2 took 1.03-1.40x the GEMM path's time on oneDNN
 * (reorders in and out for little arithmetic; OpenBLAS multiplies them in place), its 3x3 ones 0.63-1.2x, and
 * yolov3-tiny's 3x3 ones at batch 8 0.64-0.94x. The other algorithms keep im2col + GEMM (DN_CONV_PLAIN: the
 * reference). */
static int trains_onednn(const dn_layer *l, const dn_network *net)
{
    if (!net->be->host_memory || !conv_onednn_built() || l->groups != 1) return 0;
    if (net->opt.conv_algo == DN_CONV_ONEDNN || net->opt.precision == DN_PRECISION_BF16) return 1;
    return net->opt.conv_algo == DN_CONV_AUTO && l->size > 1;
}

static dn_status conv_reshape(dn_layer *l, dn_network *net)
{
    conv_priv *p = l->priv;
    if (l->c % l->groups)
        return dn_fail(DN_E_CFG, "%s: layer %d [convolutional]: input channels %d not divisible by groups=%d",
                       net->cfg_path, l->index, l->c, l->groups);
    if ((size_t)l->c / l->groups * l->size * l->size * l->filters != p->n_weights)
        return dn_fail(DN_E_CFG, "%s: layer %d [convolutional]: input has %d channels, the layer was built for %zu",
                       net->cfg_path, l->index, l->c, p->n_weights / ((size_t)l->filters * l->size * l->size) *
                       l->groups);
    l->out_w = (l->w + 2 * p->pad - l->size) / l->stride + 1;
    l->out_h = (l->h + 2 * p->pad - l->size) / l->stride + 1;
    l->out_c = l->filters;
    l->outputs = (size_t)l->out_w * l->out_h * l->out_c;
    l->bflops = 2.0 * l->filters * l->size * l->size * (l->c / l->groups) * l->out_h * l->out_w / 1e9;
    int direct = l->size == 1 && l->stride == 1 && p->pad == 0;
    l->workspace_floats = direct ? 0 : (size_t)(l->c / l->groups) * l->size * l->size * l->out_w * l->out_h;
    if (net->training_buffers && trains_onednn(l, net)) {
        /* oneDNN's layouts of the layer's tensors for the whole batch, in the shared workspace */
        const dn_conv_shape s = conv_shape(l, net->batch);
        const size_t floats = conv_train_onednn_scratch_floats(&s);
        if (floats > l->workspace_floats) l->workspace_floats = floats;
    }
    if (net->planning || l->out_w < 1 || l->out_h < 1) return DN_OK; /* shapes only, or reported by the caller */
    dn_status st = layer_alloc_io(l, net);
    if (st) return st;
    if (net->training_buffers) {
        size_t n = (size_t)net->batch * l->outputs;
        if ((st = layer_alloc(net, &p->raw, activation_needs_input(p->activation) ? n : 1))) return st;
        if (p->batch_normalize) {
            const size_t x_norm_floats = fused_bn_act(p, net) ? 1 : n;
            if ((st = layer_alloc(net, &p->x, n)) || (st = layer_alloc(net, &p->x_norm, x_norm_floats)) ||
                (st = layer_alloc(net, &p->mean, l->filters)) || (st = layer_alloc(net, &p->variance, l->filters)))
                return st;
        }
    }
    return DN_OK;
}

static void conv_init_params(dn_layer *l, float *params, dn_rng *rng)
{
    conv_priv *p = l->priv;
    const int f = l->filters;
    float *biases = params, *weights = params + (p->batch_normalize ? 4 : 1) * (size_t)f;
    float scale = sqrtf(2.f / (float)(l->size * l->size * (l->c / l->groups)));
    for (size_t i = 0; i < p->n_weights; i++) weights[i] = scale * dn_rng_uniform(rng, -1, 1);
    memset(biases, 0, sizeof(float) * f);
    if (p->batch_normalize) {
        for (int i = 0; i < f; i++) {
            params[f + i] = 1;          /* scales */
            params[2 * f + i] = 0;      /* rolling mean */
            params[3 * f + i] = 1;      /* rolling variance */
        }
    }
}

/* out = W (x) in for `batch` images: the backend's whole-convolution kernel, else im2col (skipped for 1x1
 * stride 1) + GEMM per image and group. */
static dn_status convolve(const dn_layer *l, dn_network *net, const float *weights, const float *in, float *out,
                          int batch)
{
    const conv_priv *p = l->priv;
    const dn_kernels *k = net->be->k;
    if (k->conv_forward) {
        const dn_conv_shape s = conv_shape(l, batch);
        return k->conv_forward(net->be, &s, in, weights, out);
    }
    const int m = l->filters / l->groups;
    const int kk = l->size * l->size * (l->c / l->groups);
    const int n = l->out_w * l->out_h;
    dn_status st = DN_OK;
    for (int b = 0; b < batch && !st; b++) {
        for (int g = 0; g < l->groups && !st; g++) {
            const float *a = weights + (size_t)g * m * kk;
            const float *im = in + b * l->inputs + (size_t)g * (l->c / l->groups) * l->w * l->h;
            const float *cols = im;
            if (l->workspace_floats) {
                st = k->im2col(net->be, im, l->c / l->groups, l->h, l->w, l->size, l->stride, p->pad, net->workspace);
                cols = net->workspace;
            }
            if (!st)
                st = k->gemm(net->be, 0, 0, m, n, kk, 1.f, a, kk, cols, n, 0.f, out + b * l->outputs + (size_t)g * m * n,
                             n);
        }
    }
    return st;
}

/* Whether inference goes to oneDNN first: asked for (conv_algo onednn, precision bf16), or AUTO's rule when the
 * library has oneDNN: oneDNN for kernels larger than 1x1, the hand-written path for 1x1 ones. Timed layer by
 * layer over the 30 distinct convolution shapes of yolov3 and yolov3-tiny at 416 (one thread, medians of 7):
 * oneDNN took 0.32-0.99x the hand-written time on 13 of the 15 larger-kernel shapes (up to 1.48x on the
 * other two), and 0.9-1.74x on the 1x1 ones but one, whose inputs and outputs it must reorder to and from its
 * blocked layout for little arithmetic. A fixed rule, not a timing at load, so that a network gives the same
 * bits at every load and batch size. */
static int wants_onednn(const dn_network *net, const dn_layer *l)
{
    if (!conv_onednn_built()) return 0;
    if (net->opt.conv_algo == DN_CONV_ONEDNN || net->opt.precision == DN_PRECISION_BF16) return 1;
    return net->opt.conv_algo == DN_CONV_AUTO && l->size > 1;
}

/* The shape and options of the layer for winograd.c; the caller adds the weights and the folded batch norm. */
static conv_fast_desc fast_desc(const dn_layer *l, const dn_network *net)
{
    const conv_priv *p = l->priv;
    conv_fast_desc d = {
        .c = l->c, .h = l->h, .w = l->w, .filters = l->filters, .size = l->size, .stride = l->stride,
        .pad = p->pad, .groups = l->groups, .out_h = l->out_h, .out_w = l->out_w,
        .weights_version = net->params_version, .activation = p->activation, .algo = net->opt.conv_algo};
    return d;
}

/* fast_desc with the weights and the bias and batch norm folded into mul and add (p->fold, host memory).
 * Nonzero when out of memory. */
static int folded_desc(dn_layer *l, const dn_network *net, const conv_views *v, conv_fast_desc *d)
{
    conv_priv *p = l->priv;
    const int f = l->filters;
    if (!p->fold && !(p->fold = malloc(sizeof(float) * 2 * (size_t)f))) return 1;
    float *mul = p->fold, *add = p->fold + f;
    for (int c = 0; c < f; c++)
        dn_bn_fold(p->batch_normalize, v->biases[c], p->batch_normalize ? v->scales[c] : 0.f,
                   p->batch_normalize ? v->rolling_mean[c] : 0.f, p->batch_normalize ? v->rolling_variance[c] : 0.f,
                   &mul[c], &add[c]);
    *d = fast_desc(l, net);
    d->weights = v->weights;
    d->mul = mul;
    d->add = add;
    return 0;
}

/* Inference on the CPU: oneDNN (conv_onednn.c) or the hand-written fused path (winograd.c), both doing
 * convolution, folded batch norm and activation in one pass. DN_OK when done, DN_E_NOTFOUND when neither
 * took the layer (DN_CONV_PLAIN, or out of memory in winograd.c): the caller runs the plain path. */
static dn_status conv_forward_fast(dn_layer *l, dn_network *net, const conv_views *v, const float *in, int batch)
{
    conv_priv *p = l->priv;
    if (net->opt.conv_algo == DN_CONV_PLAIN) return DN_E_NOTFOUND;
    conv_fast_desc d;
    if (folded_desc(l, net, v, &d)) return DN_E_NOTFOUND;
    const int bf16 = net->opt.precision == DN_PRECISION_BF16;
    if (wants_onednn(net, l)) {
        dn_status st = conv_onednn_forward(&p->onednn, &d, bf16, in, l->output, batch);
        if (st == DN_OK) {
            p->engine = conv_onednn_runs_bf16(&d, bf16) ? DN_ENGINE_ONEDNN_BF16 : DN_ENGINE_ONEDNN;
            return DN_OK;
        }
        if (st != DN_E_NOTFOUND) return st;
    }
    if (conv_fast_forward(&p->fast, &d, net->workspace, net->workspace_floats, in, l->output, batch))
        return DN_E_NOTFOUND;
    p->engine = DN_ENGINE_FUSED;
    return DN_OK;
}

static double conv_private_bytes(const dn_layer *l, const dn_network *net, size_t workspace_floats)
{
    const conv_priv *p = l->priv;
    const conv_fast_desc d = fast_desc(l, net);
    double floats = (double)conv_fast_cache_floats(&d, workspace_floats) + 2.0 * l->filters;
    /* oneDNN's copy of the folded weights in its own layout (bfloat16 takes half), layer by layer or as one
     * network (net_onednn.c) */
    if (conv_onednn_built() && net->be->host_memory) floats += (double)l->n_params;
    if (net->training_buffers) {
        const double n = (double)net->batch * l->outputs;
        floats += activation_needs_input(p->activation) ? n : 1;
        if (p->batch_normalize) floats += (fused_bn_act(p, net) ? 1 : 2) * n + 2.0 * l->filters;
    }
    return floats * sizeof(float);
}

static dn_status conv_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    conv_priv *p = l->priv;
    dn_backend *be = net->be;
    const dn_kernels *k = be->k;
    conv_views v = views(l, net);
    const int f = l->filters;
    const size_t spatial = (size_t)l->out_w * l->out_h;
    if (!net->train && be->host_memory) {
        dn_status st = conv_forward_fast(l, net, &v, in, batch);
        if (st != DN_E_NOTFOUND) return st;
    }
    p->engine = be->host_memory ? DN_ENGINE_PLAIN : DN_ENGINE_DEVICE;
    const int bn_train = p->batch_normalize && net->train;
    /* With batch norm in training the convolution goes straight into x, which backward needs anyway. */
    float *conv_out = bn_train ? p->x : l->output;
    dn_status st = DN_E_NOTFOUND;
    if (net->train && trains_onednn(l, net)) {
        const dn_conv_shape s = conv_shape(l, batch);
        const int bf16 = net->opt.precision == DN_PRECISION_BF16;
        if (conv_few_channels_supported(&s)) {
            /* an image's few channels: the forward by hand, NCHW in and out; the gradients on oneDNN */
            st = conv_few_channels_forward(&s, in, v.weights, conv_out);
        } else {
            st = conv_train_onednn_forward(&p->train_onednn, &s, bf16, in, v.weights, conv_out, net->workspace,
                                           net->workspace_floats);
        }
        if (!st) p->engine = conv_train_onednn_runs_bf16(&s, bf16) ? DN_ENGINE_ONEDNN_BF16 : DN_ENGINE_ONEDNN;
    }
    if (st == DN_E_NOTFOUND) st = convolve(l, net, v.weights, in, conv_out, batch);
    if (st) return st;

    const size_t total = (size_t)batch * l->outputs;
    if (bn_train && fused_bn_act(p, net))
        return k->bn_act_forward(be, p->x, batch, f, spatial, v.scales, v.biases, p->mean, p->variance, v.rolling_mean,
                                 v.rolling_variance, net->update_rolling, p->activation, l->output);
    if (bn_train)
        st = k->batchnorm_forward(be, p->x, batch, f, spatial, v.scales, v.biases, p->mean, p->variance,
                                  v.rolling_mean, v.rolling_variance, net->update_rolling, p->x_norm, l->output);
    else
        st = k->affine_inference(be, l->output, batch, f, spatial, v.biases, v.scales, v.rolling_mean,
                                 v.rolling_variance);
    if (!st && net->train && activation_needs_input(p->activation))
        st = be->copy(be, p->raw, l->output, sizeof(float) * total);
    if (!st) st = k->activate(be, l->output, total, p->activation);
    return st;
}

static dn_status conv_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    conv_priv *p = l->priv;
    dn_backend *be = net->be;
    const dn_kernels *k = be->k;
    conv_views v = views(l, net);
    const int f = l->filters;
    const size_t spatial = (size_t)l->out_w * l->out_h;
    const size_t total = (size_t)batch * l->outputs;
    dn_status st;
    const int on_onednn = p->engine == DN_ENGINE_ONEDNN || p->engine == DN_ENGINE_ONEDNN_BF16;
    const float *delta = l->delta; /* d(out) for the convolution's gradients; NULL: packed for them already */
    if (fused_bn_act(p, net)) {
        /* d(x) straight into the oneDNN backward's channel-last buffer: one pass over it saved */
        pack_layout layout;
        float *packed = NULL;
        const dn_conv_shape s = conv_shape(l, batch);
        const int act = p->activation;
        if (on_onednn && (act == DN_ACT_LEAKY || act == DN_ACT_RELU || act == DN_ACT_LINEAR))
            packed = conv_train_onednn_packed_delta(p->train_onednn, &s, net->opt.precision == DN_PRECISION_BF16,
                                                    in_delta != NULL, net->workspace, &layout);
        st = k->bn_act_backward(be, l->delta, l->output, p->x, p->mean, p->variance, v.scales, v.biases,
                                p->activation, batch, f, spatial, v.bias_updates, v.scale_updates, packed,
                                packed ? &layout : NULL);
        if (packed) delta = NULL;
    } else {
        st = k->gradient(be, l->output, p->raw, total, p->activation, l->delta);
        if (!st) st = k->bias_gradient(be, l->delta, batch, f, spatial, v.bias_updates);
        if (!st && p->batch_normalize)
            st = k->batchnorm_backward(be, l->delta, p->x, p->x_norm, p->mean, p->variance, v.scales, batch, f,
                                       spatial, v.scale_updates);
    }
    if (st) return st;

    const int set_in_delta = in_delta && layer_sets_in_delta(net, l);
    if (on_onednn) {
        /* the forward ran on oneDNN's training primitives: so do the gradients */
        const dn_conv_shape s = conv_shape(l, batch);
        st = conv_train_onednn_backward(&p->train_onednn, &s, net->opt.precision == DN_PRECISION_BF16, in, delta,
                                        v.weights, v.weight_updates, in_delta, set_in_delta, net->workspace,
                                        net->workspace_floats);
        if (st != DN_E_NOTFOUND) return st;
    }
    /* the paths below add to in_delta */
    if (set_in_delta && (st = be->memset0(be, in_delta, sizeof(float) * (size_t)batch * l->inputs))) return st;
    if (k->conv_backward_filter && k->conv_backward_data) {
        const dn_conv_shape s = conv_shape(l, batch);
        st = k->conv_backward_filter(be, &s, in, l->delta, v.weight_updates);
        if (!st && in_delta) st = k->conv_backward_data(be, &s, l->delta, v.weights, in_delta);
        return st;
    }
    const int m = l->filters / l->groups;
    const int kk = l->size * l->size * (l->c / l->groups);
    const int n = (int)spatial;
    const int cg = l->c / l->groups;
    for (int b = 0; b < batch && !st; b++) {
        for (int g = 0; g < l->groups && !st; g++) {
            const float *d = l->delta + b * l->outputs + (size_t)g * m * n;
            const float *im = in + b * l->inputs + (size_t)g * cg * l->w * l->h;
            const float *col = im;
            if (l->workspace_floats) {
                if ((st = k->im2col(be, im, cg, l->h, l->w, l->size, l->stride, p->pad, net->workspace))) break;
                col = net->workspace;
            }
            /* dW += delta (m x n) * col^T (n x k) */
            if ((st = k->gemm(be, 0, 1, m, kk, n, 1.f, d, n, col, n, 1.f, v.weight_updates + (size_t)g * m * kk, kk)))
                break;
            if (in_delta) {
                float *imd = in_delta + b * l->inputs + (size_t)g * cg * l->w * l->h;
                const float *w = v.weights + (size_t)g * m * kk;
                if (l->workspace_floats) {
                    st = k->gemm(be, 1, 0, kk, n, m, 1.f, w, kk, d, n, 0.f, net->workspace, n);
                    if (!st) st = k->col2im_add(be, net->workspace, cg, l->h, l->w, l->size, l->stride, p->pad, imd);
                } else {
                    st = k->gemm(be, 1, 0, kk, n, m, 1.f, w, kk, d, n, 1.f, imd, n);
                }
            }
        }
    }
    return st;
}

static dn_status conv_update(dn_layer *l, dn_network *net, float lr_over_b, float momentum, float decay_b)
{
    conv_priv *p = l->priv;
    dn_backend *be = net->be;
    conv_views v = views(l, net);
    const int f = l->filters;
    /* SPEC §3: decay on weights only; p += (lr/B) u; u *= momentum. */
    dn_status st = be->k->sgd_update(be, v.biases, v.bias_updates, (size_t)f, lr_over_b, momentum, 0.f);
    if (!st && p->batch_normalize)
        st = be->k->sgd_update(be, v.scales, v.scale_updates, (size_t)f, lr_over_b, momentum, 0.f);
    if (!st) st = be->k->sgd_update(be, v.weights, v.weight_updates, p->n_weights, lr_over_b, momentum, decay_b);
    return st;
}

/* Host-memory backends only (the folded copy is made on the host). */
static dn_status conv_node(dn_layer *l, dn_network *net, layer_node *out)
{
    conv_priv *p = l->priv;
    const conv_views v = views(l, net);
    if (!net->be->host_memory) return dn_fail(DN_E_ARG, "layer %d: conv node on a device backend", l->index);
    if (folded_desc(l, net, &v, &out->conv)) return dn_fail(DN_E_NOMEM, "out of memory");
    out->kind = NODE_CONV;
    out->n_inputs = 1;
    out->inputs[0] = l->index - 1;
    out->engine = &p->engine;
    return DN_OK;
}

static dn_status make_convolutional(layer_build *b, dn_layer *l);

const layer_ops conv_ops = {
    .private_bytes = conv_private_bytes,
    .type = "conv",
    .can_set_in_delta = 1,
    .make = make_convolutional,
    .reshape = conv_reshape,
    .forward = conv_forward,
    .backward = conv_backward,
    .update = conv_update,
    .init_params = conv_init_params,
    .info = conv_info,
    .free_private = conv_free,
    .node = conv_node,
};

static dn_status make_convolutional(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    conv_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    int pad_flag = 0, padding = 0;
    if ((st = cfg_get_int(f, s, "filters", 1, 1, &l->filters))) return st;
    if ((st = cfg_get_int(f, s, "size", 1, 1, &l->size))) return st;
    if ((st = cfg_get_int(f, s, "stride", 1, 0, &l->stride))) return st;
    if ((st = cfg_get_int(f, s, "pad", 0, 0, &pad_flag))) return st;
    if ((st = cfg_get_int(f, s, "padding", 0, 0, &padding))) return st;
    if ((st = cfg_get_int(f, s, "groups", 1, 0, &l->groups))) return st;
    if ((st = cfg_get_int(f, s, "batch_normalize", 0, 0, &p->batch_normalize))) return st;
    const char *act = cfg_get_str(s, "activation", "logistic");
    if (!activation_from_name(act, &p->activation))
        return dn_fail(DN_E_CFG, "%s:%d: [convolutional] key 'activation': unknown activation '%s' (leaky, linear, "
                       "logistic, relu, mish, swish, tanh)", f->path, cfg_find(s, "activation")->line, act);
    if (l->filters < 1 || l->filters > 65536)
        return dn_fail(DN_E_CFG, "%s:%d: [convolutional] key 'filters': %d out of range", f->path, s->line, l->filters);
    if (l->size < 1 || l->size > 64)
        return dn_fail(DN_E_CFG, "%s:%d: [convolutional] key 'size': %d out of range", f->path, s->line, l->size);
    if (l->stride < 1 || l->stride > 64)
        return dn_fail(DN_E_CFG, "%s:%d: [convolutional] key 'stride': %d out of range", f->path, s->line, l->stride);
    if (l->groups < 1 || l->filters % l->groups || l->c % l->groups)
        return dn_fail(DN_E_CFG, "%s:%d: [convolutional] key 'groups': %d must divide filters (%d) and input "
                       "channels (%d)", f->path, s->line, l->groups, l->filters, l->c);
    if (padding < 0 || padding > 64)
        return dn_fail(DN_E_CFG, "%s:%d: [convolutional] key 'padding': %d out of range", f->path, s->line, padding);
    p->pad = pad_flag ? l->size / 2 : padding;
    p->n_weights = (size_t)l->filters * (l->c / l->groups) * l->size * l->size;
    l->n_params = (size_t)l->filters * (p->batch_normalize ? 4 : 1) + p->n_weights;
    return DN_OK;
}
