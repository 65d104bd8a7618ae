/* [yolo]: the detection head. Inference applies the activations (the backend's yolo_activate kernel);
 * training also computes the loss (yolo_loss.c) against net->truth, on the host as the reference engine does:
 * on a backend without host memory the output is copied to a host staging buffer and the delta back. Its
 * backward passes the delta through unchanged: the deltas are already taken with respect to the raw inputs
 * (the logistic + cross-entropy simplification). Also here: the public [yolo] accessors. */
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "yolo_loss.h"

#define YOLO_MAX_ANCHORS 64

typedef struct yolo_priv {
    dn_yolo_config cfg;
    int mask[YOLO_MAX_ANCHORS];
    float anchors[2 * YOLO_MAX_ANCHORS];
    float jitter;
    int random;
    float cost;
    dn_yolo_stats stats;
    /* host staging of output and delta (backends without host memory only), batch sized */
    float *host_output, *host_delta;
} yolo_priv;

extern const layer_ops yolo_ops;

static void yolo_free(dn_layer *l, dn_network *net)
{
    (void)net;
    yolo_priv *p = l->priv;
    if (p) {
        free(p->host_output);
        free(p->host_delta);
    }
    free(p);
    l->priv = NULL;
}

static dn_status yolo_reshape(dn_layer *l, dn_network *net)
{
    yolo_priv *p = l->priv;
    const int expected = p->cfg.n * (5 + p->cfg.classes);
    if (l->c != expected)
        return dn_fail(DN_E_CFG, "%s: layer %d [yolo]: the input has %d channels but mask (%d anchors) and "
                       "classes=%d need %d = %d*(5+%d); set filters=%d in the [convolutional] before it",
                       net->cfg_path, l->index, l->c, p->cfg.n, p->cfg.classes, expected, p->cfg.n, p->cfg.classes,
                       expected);
    l->out_w = l->w; l->out_h = l->h; l->out_c = l->c;
    l->outputs = l->inputs;
    l->filters = l->c;
    p->cfg.net_w = net->w;
    p->cfg.net_h = net->h;
    dn_status st = layer_alloc_io(l, net);
    if (st || net->be->host_memory || !net->training_buffers) return st;
    const size_t n = (size_t)net->batch * l->outputs;
    free(p->host_output);
    free(p->host_delta);
    p->host_output = dn_calloc(n, sizeof(float));
    p->host_delta = dn_calloc(n, sizeof(float));
    if (!p->host_output || !p->host_delta)
        return dn_fail(DN_E_NOMEM, "out of memory for the host staging of [yolo] layer %d (%zu floats)", l->index,
                       2 * n);
    return DN_OK;
}

static dn_status yolo_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    yolo_priv *p = l->priv;
    dn_backend *be = net->be;
    dn_status st = be->k->yolo_activate(be, in, batch, p->cfg.n, p->cfg.classes, l->h, l->w,
                                        p->cfg.representation, l->output);
    if (st || !net->train || !net->truth) return st; /* no truth: a probe forward, no loss */
    memset(&p->stats, 0, sizeof p->stats);
    p->cost = 0;
    /* Truths come from the caller with max_boxes per image; the layer reads at most its own `max`. */
    dn_yolo_config cfg = p->cfg;
    cfg.max_boxes = net->max_boxes;
    const size_t bytes = sizeof(float) * (size_t)batch * l->outputs;
    const float *output = be->host_memory ? l->output : p->host_output;
    float *delta = be->host_memory ? l->delta : p->host_delta;
    if (!be->host_memory && (st = be->to_host(be, p->host_output, l->output, bytes))) return st;
    st = yolo_compute_loss(&cfg, batch, l->h, l->w, output, net->truth, delta, &p->cost, &p->stats);
    if (st) {
        char why[768];
        snprintf(why, sizeof why, "%s", dn_last_error());
        return dn_fail(st, "layer %d [yolo]: %s", l->index, why);
    }
    if (!be->host_memory) st = be->from_host(be, l->delta, p->host_delta, bytes);
    return st;
}

static dn_status yolo_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    (void)in;
    if (!in_delta) return DN_OK;
    return net->be->k->axpy(net->be, (size_t)batch * l->outputs, 1.f, l->delta, in_delta);
}

static float yolo_cost(const dn_layer *l) { return ((const yolo_priv *)l->priv)->cost; }

static void yolo_info(const dn_layer *l, dn_layer_info *out);
static dn_status make_yolo(layer_build *b, dn_layer *l);

const layer_ops yolo_ops = {
    .type = "yolo",
    .make = make_yolo,
    .reshape = yolo_reshape,
    .forward = yolo_forward,
    .backward = yolo_backward,
    .info = yolo_info,
    .cost = yolo_cost,
    .free_private = yolo_free,
};

DN_EXPORT dn_status dn_network_yolo_stats(const dn_network *net, int yolo_index, dn_yolo_stats *out)
{
    if (!net || !out) return dn_fail(DN_E_ARG, "NULL argument");
    int k = 0;
    for (int i = 0; i < net->n; i++) {
        if (net->layers[i].ops != &yolo_ops) continue;
        if (k++ == yolo_index) {
            *out = ((const yolo_priv *)net->layers[i].priv)->stats;
            return DN_OK;
        }
    }
    return dn_fail(DN_E_ARG, "no [yolo] layer number %d (the network has %d)", yolo_index, k);
}

DN_EXPORT dn_status dn_network_yolo_anchors(const dn_network *net, int index, float *anchors, int *mask)
{
    if (!net || index < 0 || index >= net->n || net->layers[index].ops != &yolo_ops)
        return dn_fail(DN_E_ARG, "layer %d is not a [yolo] layer", index);
    const yolo_priv *p = net->layers[index].priv;
    if (anchors) memcpy(anchors, p->anchors, sizeof(float) * 2 * p->cfg.total);
    if (mask) memcpy(mask, p->mask, sizeof(int) * p->cfg.n);
    return DN_OK;
}

static void yolo_info(const dn_layer *l, dn_layer_info *out)
{
    const yolo_priv *p = l->priv;
    out->classes = p->cfg.classes;
    out->n = p->cfg.n;
    out->total = p->cfg.total;
    out->iou_loss = p->cfg.iou_loss;
    out->representation = p->cfg.representation;
    out->iou_normalizer = p->cfg.iou_normalizer;
    out->cls_normalizer = p->cfg.cls_normalizer;
    out->ignore_thresh = p->cfg.ignore_thresh;
    out->truth_thresh = p->cfg.truth_thresh;
    out->max_boxes = p->cfg.max_boxes;
    out->random = p->random;
    out->jitter = p->jitter;
}

static dn_status make_yolo(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    yolo_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    dn_yolo_config *c = &p->cfg;
    int n_anchor_values = 0;
    if ((st = cfg_get_int(f, s, "classes", 20, 0, &c->classes))) return st;
    if ((st = cfg_get_int(f, s, "num", 1, 0, &c->total))) return st;
    if ((st = cfg_get_int_list(f, s, "mask", p->mask, YOLO_MAX_ANCHORS, &c->n))) return st;
    if ((st = cfg_get_float_list(f, s, "anchors", p->anchors, 2 * YOLO_MAX_ANCHORS, &n_anchor_values))) return st;
    if ((st = cfg_get_float(f, s, "jitter", .2f, 0, &p->jitter))) return st;
    if ((st = cfg_get_float(f, s, "ignore_thresh", .5f, 0, &c->ignore_thresh))) return st;
    if ((st = cfg_get_float(f, s, "truth_thresh", 1, 0, &c->truth_thresh))) return st;
    if ((st = cfg_get_int(f, s, "random", 0, 0, &p->random))) return st;
    if ((st = cfg_get_int(f, s, "max", 90, 0, &c->max_boxes))) return st;
    if ((st = cfg_get_float(f, s, "iou_normalizer", 1, 0, &c->iou_normalizer))) return st;
    if ((st = cfg_get_float(f, s, "cls_normalizer", 1, 0, &c->cls_normalizer))) return st;
    if (c->classes < 1 || c->classes > 100000)
        return dn_fail(DN_E_CFG, "%s:%d: [yolo] key 'classes': %d out of range", f->path, s->line, c->classes);
    if (c->total < 1 || c->total > YOLO_MAX_ANCHORS)
        return dn_fail(DN_E_CFG, "%s:%d: [yolo] key 'num': %d out of range 1..%d", f->path, s->line, c->total,
                       YOLO_MAX_ANCHORS);
    if (c->max_boxes < 1 || c->max_boxes > 10000)
        return dn_fail(DN_E_CFG, "%s:%d: [yolo] key 'max': %d out of range", f->path, s->line, c->max_boxes);
    if (c->n == 0) {
        /* No mask: the layer predicts every anchor (Darknet's rule). */
        c->n = c->total;
        for (int i = 0; i < c->n; i++) p->mask[i] = i;
    }
    for (int i = 0; i < c->n; i++)
        if (p->mask[i] < 0 || p->mask[i] >= c->total)
            return dn_fail(DN_E_CFG, "%s:%d: [yolo] key 'mask': %d is not an anchor index (num=%d)", f->path,
                           s->line, p->mask[i], c->total);
    if (n_anchor_values == 0) {
        for (int i = 0; i < 2 * c->total; i++) p->anchors[i] = .5f;
    } else if (n_anchor_values < 2 * c->total) {
        return dn_fail(DN_E_CFG, "%s:%d: [yolo] key 'anchors': %d values but num=%d needs %d", f->path, s->line,
                       n_anchor_values, c->total, 2 * c->total);
    }
    const char *loss = cfg_get_str(s, "iou_loss", "mse");
    if (!strcmp(loss, "mse")) c->iou_loss = DN_LOSS_MSE;
    else if (!strcmp(loss, "iou")) c->iou_loss = DN_LOSS_IOU;
    else if (!strcmp(loss, "giou")) c->iou_loss = DN_LOSS_GIOU;
    else
        return dn_fail(DN_E_CFG, "%s:%d: [yolo] key 'iou_loss': '%s' is not mse, iou or giou", f->path,
                       cfg_find(s, "iou_loss")->line, loss);
    const char *repr = cfg_get_str(s, "representation", "exp");
    if (!strcmp(repr, "exp")) c->representation = DN_REPR_EXP;
    else if (!strcmp(repr, "lin")) c->representation = DN_REPR_LIN;
    else
        return dn_fail(DN_E_CFG, "%s:%d: [yolo] key 'representation': '%s' is not exp or lin", f->path,
                       cfg_find(s, "representation")->line, repr);
    c->mask = p->mask;
    c->anchors = p->anchors;
    c->net_w = b->net->w;
    c->net_h = b->net->h;
    return DN_OK;
}
