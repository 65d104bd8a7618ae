/* [upsample]: nearest neighbour by an integer stride, times `scale`. */
#include "internal.h"

typedef struct upsample_priv { float scale; } upsample_priv;

static void upsample_free(dn_layer *l) { free(l->priv); l->priv = NULL; }

void upsample_layer_info(const dn_layer *l, dn_layer_info *out)
{
    out->scale = ((const upsample_priv *)l->priv)->scale;
}

static dn_status upsample_reshape(dn_layer *l, dn_network *net)
{
    l->out_w = l->w * l->stride;
    l->out_h = l->h * l->stride;
    l->out_c = l->c;
    l->outputs = (size_t)l->out_w * l->out_h * l->out_c;
    return layer_alloc_io(l, net);
}

static void upsample_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    (void)net;
    const float scale = ((upsample_priv *)l->priv)->scale;
    const int s = l->stride;
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < l->c; c++) {
            const float *src = in + b * l->inputs + (size_t)c * l->w * l->h;
            float *dst = l->output + b * l->outputs + (size_t)c * l->out_w * l->out_h;
            for (int y = 0; y < l->out_h; y++)
                for (int x = 0; x < l->out_w; x++) dst[y * l->out_w + x] = scale * src[(y / s) * l->w + x / s];
        }
}

static void upsample_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    (void)net; (void)in;
    if (!in_delta) return;
    const float scale = ((upsample_priv *)l->priv)->scale;
    const int s = l->stride;
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < l->c; c++) {
            float *dst = in_delta + b * l->inputs + (size_t)c * l->w * l->h;
            const float *src = l->delta + b * l->outputs + (size_t)c * l->out_w * l->out_h;
            for (int y = 0; y < l->out_h; y++)
                for (int x = 0; x < l->out_w; x++) dst[(y / s) * l->w + x / s] += scale * src[y * l->out_w + x];
        }
}

const layer_ops upsample_ops = {"upsample", upsample_reshape, upsample_forward, upsample_backward, upsample_free};

dn_status make_upsample(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    upsample_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    l->ops = &upsample_ops;
    if ((st = cfg_get_int(f, s, "stride", 2, 0, &l->stride))) return st;
    if ((st = cfg_get_float(f, s, "scale", 1, 0, &p->scale))) return st;
    if (l->stride < 1 || l->stride > 64)
        return dn_fail(DN_E_CFG, "%s:%d: [upsample] key 'stride': %d is not supported (1..64)", f->path, s->line,
                       l->stride);
    l->filters = l->c;
    return DN_OK;
}
