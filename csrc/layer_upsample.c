/* [upsample]: nearest neighbour by an integer stride, times `scale`. */
#include "internal.h"
#include "layer_node.h"

typedef struct upsample_priv { float scale; } upsample_priv;

static void upsample_free(dn_layer *l, dn_network *net) { (void)net; free(l->priv); l->priv = NULL; }

static void upsample_info(const dn_layer *l, dn_layer_info *out)
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

static dn_status upsample_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    const float scale = ((upsample_priv *)l->priv)->scale;
    return net->be->k->upsample_forward(net->be, in, batch, l->c, l->h, l->w, l->stride, scale, l->output);
}

static dn_status upsample_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    (void)in;
    if (!in_delta) return DN_OK;
    const float scale = ((upsample_priv *)l->priv)->scale;
    return net->be->k->upsample_backward(net->be, l->delta, batch, l->c, l->h, l->w, l->stride, scale, in_delta);
}

static dn_status make_upsample(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    upsample_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    if ((st = cfg_get_int(f, s, "stride", 2, 0, &l->stride))) return st;
    if ((st = cfg_get_float(f, s, "scale", 1, 0, &p->scale))) return st;
    if (l->stride < 1 || l->stride > 64)
        return dn_fail(DN_E_CFG, "%s:%d: [upsample] key 'stride': %d is not supported (1..64)", f->path, s->line,
                       l->stride);
    l->filters = l->c;
    return DN_OK;
}

static dn_status upsample_node(dn_layer *l, dn_network *net, layer_node *out)
{
    out->kind = NODE_UPSAMPLE;
    out->n_inputs = 1;
    out->inputs[0] = l->index - 1;
    out->stride = l->stride;
    out->scale = ((const upsample_priv *)l->priv)->scale;
    return DN_OK;
}

const layer_ops upsample_ops = {
    .info = upsample_info,
    .type = "upsample",
    .make = make_upsample,
    .reshape = upsample_reshape,
    .forward = upsample_forward,
    .backward = upsample_backward,
    .free_private = upsample_free,
    .node = upsample_node,
};
