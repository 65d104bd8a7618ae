/* [route]: channel-wise concatenation of earlier layers' outputs, in the order given. */
#include "internal.h"
#include "layer_node.h"

#define ROUTE_MAX 4

typedef struct route_priv {
    int n;
    int sources[ROUTE_MAX];
} route_priv;

static void route_free(dn_layer *l, dn_network *net) { (void)net; free(l->priv); l->priv = NULL; }

static void route_info(const dn_layer *l, dn_layer_info *out)
{
    const route_priv *p = l->priv;
    out->n_sources = p->n;
    for (int i = 0; i < p->n; i++) out->sources[i] = p->sources[i];
}

static dn_status route_reshape(dn_layer *l, dn_network *net)
{
    route_priv *p = l->priv;
    const dn_layer *first = &net->layers[p->sources[0]];
    l->out_w = first->out_w;
    l->out_h = first->out_h;
    l->out_c = 0;
    for (int i = 0; i < p->n; i++) {
        const dn_layer *src = &net->layers[p->sources[i]];
        if (src->out_w != first->out_w || src->out_h != first->out_h)
            return dn_fail(DN_E_CFG, "%s: layer %d [route]: layer %d is %d x %d but layer %d is %d x %d; routed layers "
                           "must have the same width and height", net->cfg_path, l->index, p->sources[0], first->out_w,
                           first->out_h, p->sources[i], src->out_w, src->out_h);
        l->out_c += src->out_c;
    }
    /* The route's "input" is its concatenation; the layer table shows it so. */
    l->w = l->out_w; l->h = l->out_h; l->c = l->out_c;
    l->inputs = (size_t)l->w * l->h * l->c;
    l->outputs = (size_t)l->out_w * l->out_h * l->out_c;
    l->filters = l->out_c;
    return layer_alloc_io(l, net);
}

/* One row per image: a source's outputs go to their offset in the route's; backward adds them back. */
static dn_status route_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    (void)in;
    route_priv *p = l->priv;
    size_t offset = 0;
    dn_status st = DN_OK;
    for (int i = 0; i < p->n && !st; i++) {
        const dn_layer *src = &net->layers[p->sources[i]];
        st = net->be->k->copy_rows(net->be, (size_t)batch, src->outputs, src->output, src->outputs,
                                   l->output + offset, l->outputs, 0);
        offset += src->outputs;
    }
    return st;
}

static dn_status route_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    (void)in; (void)in_delta;
    route_priv *p = l->priv;
    size_t offset = 0;
    dn_status st = DN_OK;
    for (int i = 0; i < p->n && !st; i++) {
        dn_layer *src = &net->layers[p->sources[i]];
        st = net->be->k->copy_rows(net->be, (size_t)batch, src->outputs, l->delta + offset, l->outputs, src->delta,
                                   src->outputs, 1);
        offset += src->outputs;
    }
    return st;
}

static dn_status make_route(layer_build *b, dn_layer *l);

static dn_status route_node(dn_layer *l, dn_network *net, layer_node *out)
{
    const route_priv *p = l->priv;
    out->kind = NODE_CONCAT;
    out->n_inputs = p->n;
    for (int i = 0; i < p->n; i++) out->inputs[i] = p->sources[i];
    return DN_OK;
}

const layer_ops route_ops = {
    .type = "route",
    .sources_only = 1,
    .make = make_route,
    .reshape = route_reshape,
    .forward = route_forward,
    .backward = route_backward,
    .info = route_info,
    .free_private = route_free,
    .node = route_node,
};

dn_status resolve_layer_ref(const cfg_file *f, const cfg_section *s, const char *key, int index, int ref, int *out)
{
    const int abs_ref = ref < 0 ? index + ref : ref;
    if (abs_ref < 0 || abs_ref >= index)
        return dn_fail(DN_E_CFG, "%s:%d: [%s] key '%s': %d refers to layer %d, which does not exist before layer %d",
                       f->path, s->line, s->name, key, ref, abs_ref, index);
    *out = abs_ref;
    return DN_OK;
}

static dn_status make_route(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    route_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    int refs[ROUTE_MAX];
    if ((st = cfg_get_int_list(f, s, "layers", refs, ROUTE_MAX, &p->n))) return st;
    if (p->n == 0) return dn_fail(DN_E_CFG, "%s:%d: [route] is missing the required key 'layers'", f->path, s->line);
    for (int i = 0; i < p->n; i++)
        if ((st = resolve_layer_ref(f, s, "layers", b->index, refs[i], &p->sources[i]))) return st;
    return DN_OK;
}
