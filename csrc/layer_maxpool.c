/* [maxpool]: output (in + padding - size)/stride + 1; the window starts at -padding/2; padded cells are -inf. */
#include "internal.h"
#include "layer_node.h"

typedef struct maxpool_priv {
    int padding;
    int *argmax; /* batch * outputs: input index of each output's maximum, for the backward pass */
} maxpool_priv;

static void maxpool_free(dn_layer *l, dn_network *net)
{
    maxpool_priv *p = l->priv;
    if (p) layer_release(net, p->argmax);
    free(p);
    l->priv = NULL;
}

static void maxpool_info(const dn_layer *l, dn_layer_info *out)
{
    out->padding = ((const maxpool_priv *)l->priv)->padding;
}

static dn_status maxpool_reshape(dn_layer *l, dn_network *net)
{
    maxpool_priv *p = l->priv;
    l->out_w = (l->w + p->padding - l->size) / l->stride + 1;
    l->out_h = (l->h + p->padding - l->size) / l->stride + 1;
    l->out_c = l->c;
    l->outputs = (size_t)l->out_w * l->out_h * l->out_c;
    l->bflops = 0;
    if (net->planning || l->out_w < 1 || l->out_h < 1) return DN_OK; /* shapes only, or reported by the caller */
    dn_status st = layer_alloc_io(l, net);
    if (st) return st;
    layer_release(net, p->argmax);
    p->argmax = NULL;
    if (net->training_buffers) return layer_alloc_int(net, &p->argmax, (size_t)net->batch * l->outputs);
    return DN_OK;
}

static dn_status maxpool_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    maxpool_priv *p = l->priv;
    return net->be->k->maxpool_forward(net->be, in, batch, l->c, l->h, l->w, l->size, l->stride, p->padding,
                                       l->out_h, l->out_w, l->output, net->train ? p->argmax : NULL);
}

static dn_status maxpool_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    (void)in;
    maxpool_priv *p = l->priv;
    if (!in_delta) return DN_OK;
    const dn_kernels *k = net->be->k;
    if (layer_sets_in_delta(net, l)) {
        if (k->maxpool_backward_set)
            return k->maxpool_backward_set(net->be, l->delta, p->argmax, batch, l->c, l->outputs, l->inputs, in_delta);
        dn_status st = net->be->memset0(net->be, in_delta, sizeof(float) * (size_t)batch * l->inputs);
        if (st) return st;
    }
    return k->maxpool_backward(net->be, l->delta, p->argmax, batch, l->outputs, l->inputs, in_delta);
}

static double maxpool_private_bytes(const dn_layer *l, const dn_network *net, size_t workspace_floats)
{
    (void)workspace_floats;
    return net->training_buffers ? (double)net->batch * l->outputs * sizeof(int) : 0; /* argmax */
}

static dn_status make_maxpool(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    maxpool_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    if ((st = cfg_get_int(f, s, "size", 1, 0, &l->size))) return st;
    if ((st = cfg_get_int(f, s, "stride", 1, 0, &l->stride))) return st;
    if ((st = cfg_get_int(f, s, "padding", l->size - 1, 0, &p->padding))) return st;
    if (l->size < 1 || l->size > 64 || l->stride < 1 || l->stride > 64 || p->padding < 0 || p->padding > 128)
        return dn_fail(DN_E_CFG, "%s:%d: [maxpool] size=%d stride=%d padding=%d out of range", f->path, s->line,
                       l->size, l->stride, p->padding);
    l->filters = l->c;
    return DN_OK;
}

static dn_status maxpool_node(dn_layer *l, dn_network *net, layer_node *out)
{
    out->kind = NODE_MAXPOOL;
    out->n_inputs = 1;
    out->inputs[0] = l->index - 1;
    out->size = l->size;
    out->stride = l->stride;
    out->pad_top_left = ((const maxpool_priv *)l->priv)->padding / 2;
    return DN_OK;
}

const layer_ops maxpool_ops = {
    .info = maxpool_info,
    .private_bytes = maxpool_private_bytes,
    .type = "max",
    .can_set_in_delta = 1,
    .make = make_maxpool,
    .reshape = maxpool_reshape,
    .forward = maxpool_forward,
    .backward = maxpool_backward,
    .free_private = maxpool_free,
    .node = maxpool_node,
};
