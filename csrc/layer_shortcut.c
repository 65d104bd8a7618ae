/* [shortcut]: output = activation(input + output of layer `from`); the two must have the same shape. */
#include <string.h>

#include "internal.h"

typedef struct shortcut_priv {
    int from;
    dn_activation activation;
} shortcut_priv;

static void shortcut_free(dn_layer *l) { free(l->priv); l->priv = NULL; }

void shortcut_layer_info(const dn_layer *l, dn_layer_info *out)
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

static void shortcut_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    shortcut_priv *p = l->priv;
    const float *other = net->layers[p->from].output;
    const size_t n = (size_t)batch * l->outputs;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) l->output[i] = in[i] + other[i];
    activate_array(l->output, n, p->activation);
}

static void shortcut_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    (void)in;
    shortcut_priv *p = l->priv;
    const size_t n = (size_t)batch * l->outputs;
    /* Only linear/leaky/relu/logistic are expected here, which need no raw input. */
    gradient_array(l->output, NULL, n, p->activation, l->delta);
    float *other = net->layers[p->from].delta;
    for (size_t i = 0; i < n; i++) {
        if (in_delta) in_delta[i] += l->delta[i];
        other[i] += l->delta[i];
    }
}

const layer_ops shortcut_ops = {"shortcut", shortcut_reshape, shortcut_forward, shortcut_backward, shortcut_free};

dn_status make_shortcut(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    shortcut_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    l->ops = &shortcut_ops;
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
