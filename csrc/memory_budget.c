/* The memory budget: what a network would claim, checked before its big buffers are allocated (at load,
 * set_batch, resize and when the training buffers come), so that a small untrusted cfg cannot make a process
 * reserve or touch gigabytes. The caller raises the limit through dn_options.memory_limit.
 *
 * Bytes are counted from the shapes, not from where the buffers live, so a GPU backend is held to the same
 * budget. They are doubles: the shapes of a hostile cfg multiply past 2^64 and must not wrap. */
#include <stdio.h>

#include "internal.h"

#define GIB (1024.0 * 1024.0 * 1024.0)

typedef struct budget {
    double params;      /* parameters (and their update buffers when training) */
    double outputs;     /* layer outputs (and deltas when training) for the batch */
    double workspace;   /* the shared scratch: the largest any layer needs */
    double layer_own;   /* per-layer caches: training caches, Winograd weights and scratch */
    double total;
    int largest;        /* the layer contributing most */
    double largest_bytes;
} budget;

static double layer_bytes(const dn_layer *l, const dn_network *net, size_t workspace_floats, double *params,
                          double *outputs, double *own)
{
    const double copies = net->training_buffers ? 2 : 1; /* value and delta, parameter and update */
    *params = copies * (double)l->n_params * sizeof(float);
    *outputs = copies * (double)net->batch * (double)l->outputs * sizeof(float);
    *own = 0;
    if (l->ops->private_bytes) *own = l->ops->private_bytes(l, net, workspace_floats);
    return *params + *outputs + *own;
}

static budget estimate(const dn_network *net)
{
    budget b = {0};
    b.largest = -1;
    /* The workspace only grows (dn_network_reshape keeps a larger one), and it is shared by all layers. */
    size_t workspace = net->workspace_floats;
    int workspace_layer = -1;
    for (int i = 0; i < net->n; i++) {
        if (net->layers[i].workspace_floats > workspace) {
            workspace = net->layers[i].workspace_floats;
            workspace_layer = i;
        }
    }
    b.workspace = (double)workspace * sizeof(float);
    for (int i = 0; i < net->n; i++) {
        double params, outputs, own;
        double bytes = layer_bytes(&net->layers[i], net, workspace, &params, &outputs, &own);
        b.params += params;
        b.outputs += outputs;
        b.layer_own += own;
        if (i == workspace_layer) bytes += b.workspace;
        if (bytes > b.largest_bytes) {
            b.largest_bytes = bytes;
            b.largest = i;
        }
    }
    b.total = b.params + b.outputs + b.workspace + b.layer_own;
    return b;
}

dn_status dn_memory_check(const dn_network *net, dn_status code)
{
    const uint64_t limit = net->opt.memory_limit ? net->opt.memory_limit : (uint64_t)DN_DEFAULT_MEMORY_LIMIT;
    const budget b = estimate(net);
    if (b.total <= (double)limit) return DN_OK;
    char largest[160] = "";
    if (b.largest >= 0) {
        const dn_layer *l = &net->layers[b.largest];
        snprintf(largest, sizeof largest, "; the largest part is layer %d (%s, %d x %d x %d -> %d x %d x %d): %.2f GiB",
                 b.largest, l->ops->type, l->w, l->h, l->c, l->out_w, l->out_h, l->out_c, b.largest_bytes / GIB);
    }
    return dn_fail(code, "%s: the network needs %.0f bytes (%.2f GiB) for batch %d at %d x %d%s: parameters %.2f "
                   "GiB, layer outputs %.2f GiB, workspace %.2f GiB, layer caches %.2f GiB; that is over its memory "
                   "limit of %llu bytes (%.2f GiB)%s. Raise the limit (dn_options.memory_limit, memory_limit= in "
                   "Python) if this network is meant to be this large", net->cfg_path, b.total, b.total / GIB,
                   net->batch, net->w, net->h, net->training_buffers ? " with training buffers" : "",
                   b.params / GIB, b.outputs / GIB, b.workspace / GIB, b.layer_own / GIB,
                   (unsigned long long)limit, (double)limit / GIB, largest);
}
