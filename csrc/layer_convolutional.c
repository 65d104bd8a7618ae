/* [convolutional]: im2col (skipped for 1x1 stride 1) + SGEMM, batch norm, activation.
 * Parameter block of the layer, in .weights order: biases[f], (scales[f], rolling_mean[f], rolling_var[f])
 * when batch_normalize, then weights[f * c/groups * size * size]. */
#include <math.h>
#include <string.h>

#include "conv_fast.h"
#include "internal.h"

/* Darknet normalises with sqrt(var) + 1e-6 (not sqrt(var + eps)); kept so pretrained weights give its numbers. */
#define BN_EPS .000001f

typedef struct conv_priv {
    int pad;
    int batch_normalize;
    dn_activation activation;
    size_t n_weights;
    /* training caches, batch sized */
    float *x;         /* convolution output before batch norm */
    float *x_norm;    /* after normalisation, before scale and bias */
    float *raw;       /* before the activation (mish and swish need it) */
    float *mean, *variance;
    /* inference fast path (winograd.c): its cache, and bias + batch norm folded to y = x * mul + add */
    conv_fast_cache *fast;
    float *fold;      /* mul[filters], then add[filters] */
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

void conv_layer_info(const dn_layer *l, dn_layer_info *out)
{
    const conv_priv *p = l->priv;
    out->batch_normalize = p->batch_normalize;
    out->activation = p->activation;
}

static void conv_free(dn_layer *l)
{
    conv_priv *p = l->priv;
    if (!p) return;
    free(p->x); free(p->x_norm); free(p->raw); free(p->mean); free(p->variance);
    conv_fast_free(p->fast); free(p->fold);
    free(p);
    l->priv = NULL;
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
    if (net->planning || l->out_w < 1 || l->out_h < 1) return DN_OK; /* shapes only, or reported by the caller */
    dn_status st = layer_alloc_io(l, net);
    if (st) return st;
    if (net->training_buffers) {
        size_t n = (size_t)net->batch * l->outputs;
        if ((st = layer_alloc(&p->raw, activation_needs_input(p->activation) ? n : 1))) return st;
        if (p->batch_normalize) {
            if ((st = layer_alloc(&p->x, n)) || (st = layer_alloc(&p->x_norm, n)) ||
                (st = layer_alloc(&p->mean, l->filters)) || (st = layer_alloc(&p->variance, l->filters)))
                return st;
        }
    }
    return DN_OK;
}

void conv_init_params(dn_layer *l, dn_network *net, dn_rng *rng)
{
    conv_priv *p = l->priv;
    conv_views v = views(l, net);
    const int f = l->filters;
    float scale = sqrtf(2.f / (float)(l->size * l->size * (l->c / l->groups)));
    for (size_t i = 0; i < p->n_weights; i++) v.weights[i] = scale * dn_rng_uniform(rng, -1, 1);
    memset(v.biases, 0, sizeof(float) * f);
    if (p->batch_normalize) {
        for (int i = 0; i < f; i++) {
            v.scales[i] = 1;
            v.rolling_mean[i] = 0;
            v.rolling_variance[i] = 1;
        }
    }
}

/* out[b][f][:] = W[f] (x) in[b] for one image, all groups, written to `out`. */
static void convolve(const dn_layer *l, const dn_network *net, const float *weights, const float *in, float *out)
{
    const conv_priv *p = l->priv;
    const int m = l->filters / l->groups;
    const int k = l->size * l->size * (l->c / l->groups);
    const int n = l->out_w * l->out_h;
    for (int g = 0; g < l->groups; g++) {
        const float *a = weights + (size_t)g * m * k;
        const float *im = in + (size_t)g * (l->c / l->groups) * l->w * l->h;
        const float *b = im;
        if (l->workspace_floats) {
            im2col(im, l->c / l->groups, l->h, l->w, l->size, l->stride, p->pad, net->workspace);
            b = net->workspace;
        }
        dn_gemm(0, 0, m, n, k, 1.f, a, k, b, n, 0.f, out + (size_t)g * m * n, n);
    }
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

/* Inference through winograd.c: convolution, folded batch norm and activation in one pass. 0 when done. */
static int conv_forward_fast(dn_layer *l, dn_network *net, const conv_views *v, const float *in, int batch)
{
    conv_priv *p = l->priv;
    const int f = l->filters;
    if (!p->fold && !(p->fold = malloc(sizeof(float) * 2 * (size_t)f))) return 1;
    float *mul = p->fold, *add = p->fold + f;
    for (int c = 0; c < f; c++) {
        mul[c] = 1.f;
        add[c] = v->biases[c];
        if (p->batch_normalize) {
            mul[c] = v->scales[c] / (sqrtf(v->rolling_variance[c]) + BN_EPS);
            add[c] = v->biases[c] - v->rolling_mean[c] * mul[c];
        }
    }
    conv_fast_desc d = fast_desc(l, net);
    d.weights = v->weights;
    d.mul = mul;
    d.add = add;
    return conv_fast_forward(&p->fast, &d, net->workspace, net->workspace_floats, in, l->output, batch);
}

double conv_private_bytes(const dn_layer *l, const dn_network *net, size_t workspace_floats)
{
    const conv_priv *p = l->priv;
    const conv_fast_desc d = fast_desc(l, net);
    double floats = (double)conv_fast_cache_floats(&d, workspace_floats) + 2.0 * l->filters;
    if (net->training_buffers) {
        const double n = (double)net->batch * l->outputs;
        floats += activation_needs_input(p->activation) ? n : 1;
        if (p->batch_normalize) floats += 2 * n + 2.0 * l->filters;
    }
    return floats * sizeof(float);
}

static void conv_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    conv_priv *p = l->priv;
    conv_views v = views(l, net);
    const int f = l->filters;
    const size_t spatial = (size_t)l->out_w * l->out_h;
    if (!net->train && conv_forward_fast(l, net, &v, in, batch) == 0) return;
    const int bn_train = p->batch_normalize && net->train;
    /* With batch norm in training the convolution goes straight into x, which backward needs anyway. */
    float *conv_out = bn_train ? p->x : l->output;
    for (int b = 0; b < batch; b++) convolve(l, net, v.weights, in + (size_t)b * l->inputs, conv_out + b * l->outputs);

    const size_t total = (size_t)batch * l->outputs;
    if (bn_train) {
        /* Batch statistics (Darknet: unbiased variance), rolling averages .99/.01. Each image's row is summed
         * in float (vectorised), the rows in double. */
        const double count = (double)batch * spatial;
#pragma omp parallel for schedule(static)
        for (int c = 0; c < f; c++) {
            double sum = 0, sq = 0;
            for (int b = 0; b < batch; b++) {
                const float *x = p->x + b * l->outputs + c * spatial;
                float row = 0;
#pragma omp simd reduction(+:row)
                for (size_t i = 0; i < spatial; i++) row += x[i];
                sum += row;
            }
            const double mean = sum / count;
            const float mean_f = (float)mean;
            for (int b = 0; b < batch; b++) {
                const float *x = p->x + b * l->outputs + c * spatial;
                float row = 0;
#pragma omp simd reduction(+:row)
                for (size_t i = 0; i < spatial; i++) row += (x[i] - mean_f) * (x[i] - mean_f);
                sq += row;
            }
            p->mean[c] = mean_f;
            p->variance[c] = count > 1 ? (float)(sq / (count - 1)) : 0.f;
        }
        if (net->update_rolling) {
            for (int c = 0; c < f; c++) {
                v.rolling_mean[c] = .99f * v.rolling_mean[c] + .01f * p->mean[c];
                v.rolling_variance[c] = .99f * v.rolling_variance[c] + .01f * p->variance[c];
            }
        }
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < batch; b++) {
            for (int c = 0; c < f; c++) {
                const float *x = p->x + b * l->outputs + c * spatial;
                float *out = l->output + b * l->outputs + c * spatial;
                float *xn = p->x_norm + b * l->outputs + c * spatial;
                const float inv = 1.f / (sqrtf(p->variance[c]) + BN_EPS);
                const float mean = p->mean[c], scale = v.scales[c], bias = v.biases[c];
                for (size_t i = 0; i < spatial; i++) {
                    xn[i] = (x[i] - mean) * inv;
                    out[i] = xn[i] * scale + bias;
                }
            }
        }
    } else {
        /* Inference: normalisation, scale and bias fused into one multiply-add per value. */
#pragma omp parallel for collapse(2) schedule(static)
        for (int b = 0; b < batch; b++) {
            for (int c = 0; c < f; c++) {
                float *x = l->output + b * l->outputs + c * spatial;
                float mul = 1.f, add = v.biases[c];
                if (p->batch_normalize) {
                    mul = v.scales[c] / (sqrtf(v.rolling_variance[c]) + BN_EPS);
                    add = v.biases[c] - v.rolling_mean[c] * mul;
                }
                for (size_t i = 0; i < spatial; i++) x[i] = x[i] * mul + add;
            }
        }
    }
    if (net->train && activation_needs_input(p->activation)) memcpy(p->raw, l->output, sizeof(float) * total);
    activate_array(l->output, total, p->activation);
}

static void conv_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    conv_priv *p = l->priv;
    conv_views v = views(l, net);
    const int f = l->filters;
    const size_t spatial = (size_t)l->out_w * l->out_h;
    const size_t total = (size_t)batch * l->outputs;
    gradient_array(l->output, p->raw, total, p->activation, l->delta);

#pragma omp parallel for schedule(static)
    for (int c = 0; c < f; c++) {
        double sum = 0;
        for (int b = 0; b < batch; b++) {
            const float *d = l->delta + b * l->outputs + c * spatial;
            float row = 0;
#pragma omp simd reduction(+:row)
            for (size_t i = 0; i < spatial; i++) row += d[i];
            sum += row;
        }
        v.bias_updates[c] += (float)sum;
    }
    if (p->batch_normalize) {
        const double count = (double)batch * spatial;
#pragma omp parallel for schedule(static)
        for (int c = 0; c < f; c++) {
            /* d(out)/d(x_norm) = scale; then through x_norm = (x - mean) / (sqrt(var) + eps). Rows are summed
             * in float (vectorised), the rows in double. */
            double dscale = 0, sum_g = 0, sum_gx = 0;
            const float sigma = sqrtf(p->variance[c]);
            const float s = sigma + BN_EPS;
            const float scale = v.scales[c], mean = p->mean[c];
            for (int b = 0; b < batch; b++) {
                float *d = l->delta + b * l->outputs + c * spatial;
                const float *xn = p->x_norm + b * l->outputs + c * spatial;
                const float *x = p->x + b * l->outputs + c * spatial;
                float r_scale = 0, r_g = 0, r_gx = 0;
#pragma omp simd reduction(+:r_scale, r_g, r_gx)
                for (size_t i = 0; i < spatial; i++) {
                    r_scale += d[i] * xn[i];
                    const float g = d[i] * scale;
                    d[i] = g;
                    r_g += g;
                    r_gx += g * (x[i] - mean);
                }
                dscale += r_scale;
                sum_g += r_g;
                sum_gx += r_gx;
            }
            v.scale_updates[c] += (float)dscale;
            const double dsigma = -sum_gx / ((double)s * s);
            const float mean_g = (float)(sum_g / count), inv_s = 1.f / s;
            const float k = (float)((sigma > 0 && count > 1) ? dsigma / (sigma * (count - 1)) : 0.0);
            for (int b = 0; b < batch; b++) {
                float *d = l->delta + b * l->outputs + c * spatial;
                const float *x = p->x + b * l->outputs + c * spatial;
                for (size_t i = 0; i < spatial; i++) d[i] = (d[i] - mean_g) * inv_s + k * (x[i] - mean);
            }
        }
    }

    const int m = l->filters / l->groups;
    const int k = l->size * l->size * (l->c / l->groups);
    const int n = (int)spatial;
    const int cg = l->c / l->groups;
    for (int b = 0; b < batch; b++) {
        for (int g = 0; g < l->groups; g++) {
            const float *d = l->delta + b * l->outputs + (size_t)g * m * n;
            const float *im = in + b * l->inputs + (size_t)g * cg * l->w * l->h;
            const float *col = im;
            if (l->workspace_floats) {
                im2col(im, cg, l->h, l->w, l->size, l->stride, p->pad, net->workspace);
                col = net->workspace;
            }
            /* dW += delta (m x n) * col^T (n x k) */
            dn_gemm(0, 1, m, k, n, 1.f, d, n, col, n, 1.f, v.weight_updates + (size_t)g * m * k, k);
            if (in_delta) {
                float *imd = in_delta + b * l->inputs + (size_t)g * cg * l->w * l->h;
                const float *w = v.weights + (size_t)g * m * k;
                if (l->workspace_floats) {
                    dn_gemm(1, 0, k, n, m, 1.f, w, k, d, n, 0.f, net->workspace, n);
                    col2im_add(net->workspace, cg, l->h, l->w, l->size, l->stride, p->pad, imd);
                } else {
                    dn_gemm(1, 0, k, n, m, 1.f, w, k, d, n, 1.f, imd, n);
                }
            }
        }
    }
}

void conv_update(dn_layer *l, dn_network *net, float lr_over_b, float momentum, float decay_times_b)
{
    conv_priv *p = l->priv;
    conv_views v = views(l, net);
    const int f = l->filters;
    /* SPEC §3: decay on weights only; p += (lr/B) u; u *= momentum. */
    for (int i = 0; i < f; i++) {
        v.biases[i] += lr_over_b * v.bias_updates[i];
        v.bias_updates[i] *= momentum;
    }
    if (p->batch_normalize) {
        for (int i = 0; i < f; i++) {
            v.scales[i] += lr_over_b * v.scale_updates[i];
            v.scale_updates[i] *= momentum;
        }
    }
    float *w = v.weights, *u = v.weight_updates;
    const size_t n = p->n_weights;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        u[i] -= decay_times_b * w[i];
        w[i] += lr_over_b * u[i];
        u[i] *= momentum;
    }
}

const layer_ops conv_ops = {"conv", conv_reshape, conv_forward, conv_backward, conv_free};

dn_status make_convolutional(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    conv_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    l->ops = &conv_ops;
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
