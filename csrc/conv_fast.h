/* The inference path of [convolutional] (winograd.c): convolution, folded batch norm and activation in one
 * OpenMP team, with Winograd F(2x2,3x3) / F(4x4,3x3) for 3x3 stride-1 layers and im2col + GEMM elsewhere.
 * Training never comes here (layer_convolutional.c keeps its own path for net->train).
 *
 * The network's options choose the algorithm (dn_conv_algo): DN_CONV_GEMM sends 3x3 layers through
 * im2col + GEMM too; DN_CONV_PLAIN makes conv_fast_forward decline so the caller runs its plain path. */
#ifndef DN_CONV_FAST_H
#define DN_CONV_FAST_H

#include "internal.h"

/* Per-layer state: the transformed weights (recomputed when the weights version changes) and the
 * scratch buffers. Opaque; NULL is a valid empty cache. */
typedef struct conv_fast_cache conv_fast_cache;

typedef struct conv_fast_desc {
    int c, h, w;                 /* input */
    int filters, size, stride, pad, groups;
    int out_h, out_w;
    const float *weights;        /* filters x (c/groups) x size x size */
    uint64_t weights_version;    /* changes whenever the weights may have (the network's params_version) */
    const float *mul, *add;      /* per filter: y = act(conv * mul + add) (bias and batch norm folded) */
    dn_activation activation;
    int algo;                    /* dn_conv_algo */
} conv_fast_desc;

/* Computes `batch` images of `in` into `out` (batch x filters x out_h x out_w), using `workspace` (the
 * network's) as scratch when it is large enough, else a buffer of its own in the cache. Returns 0 when done,
 * nonzero when it declined (DN_CONV_PLAIN, or out of memory): the caller then runs its plain
 * path. *cache is created on first use; free it with conv_fast_free. */
int conv_fast_forward(conv_fast_cache **cache, const conv_fast_desc *d, float *workspace, size_t workspace_floats,
                      const float *in, float *out, int batch);
void conv_fast_free(conv_fast_cache *cache);
/* Floats a layer's cache would hold after a forward: the transformed weights, and the scratch when the
 * network's workspace (workspace_floats) is too small. The memory budget counts them before any forward. */
size_t conv_fast_cache_floats(const conv_fast_desc *d, size_t workspace_floats);

#endif
