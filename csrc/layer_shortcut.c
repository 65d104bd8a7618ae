/* [shortcut]: output = activation(input + output of layer `from`); the two must have the same shape. */
#include "internal.h"
#include "layer_node.h"

typedef struct shortcut_priv {
    int from;
    dn_activation activation;
} shortcut_priv;

static void shortcut_free(dn_layer *l, dn_network *net) { (void)net; free(l->priv); l->priv = NULL; }

static void shortcut_info(const dn_layer *l, dn_layer_info *out)
{
    const shortcut_priv *p = l->priv;
    out->n_sources = 1;
    out->sources[0] = p->from;
    out->activation = p->activation;
}

static dn_status shortcut_reshape(dn_layer *l, dn_network *net)
{
    shortcut_priv *p = l->priv;
    const dn_layer *from = &net->layers[p->from];
    if (from->out_w != l->w || from->out_h != l->h || from->out_c != l->c)
        return dn_fail(DN_E_CFG, "%s: layer %d [shortcut]: from=%d is %d x %d x %d but the input is %d x %d x %d",
                       net->cfg_path, l->index, p->from, from->out_w, from->out_h, from->out_c, l->w, l->h, l->c);
    l->out_w = l->w; l->out_h = l->h; l->out_c = l->c;
    l->outputs = l->inputs;
    l->filters = l->c;
    return layer_alloc_io(l, net);
}

static dn_status shortcut_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    shortcut_priv *p = l->priv;
    const size_t n = (size_t)batch * l->outputs;
    dn_status st = net->be->k->add(net->be, n, in, net->layers[p->from].output, l->output);
    return st ? st : net->be->k->activate(net->be, l->output, n, p->activation);
}

static dn_status shortcut_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    (void)in;
    shortcut_priv *p = l->priv;
    const dn_kernels *k = net->be->k;
    const size_t n = (size_t)batch * l->outputs;
    /* Only linear/leaky/relu/logistic/tanh are allowed here, which need no raw input. */
    dn_status st = k->gradient(net->be, l->output, NULL, n, p->activation, l->delta);
    if (!st && in_delta) st = k->axpy(net->be, n, 1.f, l->delta, in_delta);
    if (!st) st = k->axpy(net->be, n, 1.f, l->delta, net->layers[p->from].delta);
    return st;
}

static dn_status make_shortcut(layer_build *b, dn_layer *l);

static dn_status shortcut_node(dn_layer *l, dn_network *net, layer_node *out)
{
    const shortcut_priv *p = l->priv;
    out->kind = NODE_ADD;
    out->n_inputs = 2;
    out->inputs[0] = l->index - 1;
    out->inputs[1] = p->from;
    out->activation = p->activation;
    return DN_OK;
}

const layer_ops shortcut_ops = {
    .info = shortcut_info,
    .type = "shortcut",
    .make = make_shortcut,
    .reshape = shortcut_reshape,
    .forward = shortcut_forward,
    .backward = shortcut_backward,
    .free_private = shortcut_free,
    .node = shortcut_node,
};

static dn_status make_shortcut(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    shortcut_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    int from = 0;
    if ((st = cfg_get_int(f, s, "from", 0, 1, &from))) return st;
    if ((st = resolve_layer_ref(f, s, "from", b->index, from, &p->from))) return st;
    const char *act = cfg_get_str(s, "activation", "linear");
    if (!activation_from_name(act, &p->activation) || activation_needs_input(p->activation))
        return dn_fail(DN_E_CFG, "%s:%d: [shortcut] key 'activation': '%s' is not supported here (linear, leaky, "
                       "relu, logistic, tanh)", f->path, s->line, act);
    cfg_find(s, "alpha");
    cfg_find(s, "beta");
    return DN_OK;
}
