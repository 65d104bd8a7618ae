/* Inference of a whole network through oneDNN (net_onednn.c), on the CPU backend.
 *
 * Layer by layer (conv_onednn.c) every convolution reorders its input from the network's NCHW into oneDNN's
 * channels-last layout and its output back: about 5 of yolov3-tiny's 37 ms at 416, two threads, went to those
 * reorders. Here the layers' outputs stay in oneDNN's layout from one primitive to the next (NHWC, in float32,
 * or bfloat16 with DN_PRECISION_BF16), each layer a primitive built from its node (layer_node.h): convolution
 * with folded batch norm and activation, max pooling, concatenation, binary add, nearest resampling. A layer
 * without a node (the [yolo] layer), and the last layer, get their input in NCHW float32 and run their own
 * forward. The layouts alias the layers' own output buffers (NHWC float32 takes the bytes NCHW does, bfloat16
 * half), so nothing is allocated per layer but the convolutions' weights; a layer's output is turned back into
 * NCHW when it is read (dn_network_layer_output).
 *
 * Used for dn_network_forward at inference when the library has oneDNN, the backend is the CPU one, and the
 * options ask for oneDNN (conv_algo AUTO or ONEDNN, or precision BF16). A network it cannot run (a primitive
 * oneDNN does not implement) is declined once, with an info message, and runs layer by layer. */
#ifndef DN_NET_ONEDNN_H
#define DN_NET_ONEDNN_H

#include "internal.h"

typedef struct net_onednn net_onednn;

/* Whether inference of this network goes here (before any declined attempt). */
int net_onednn_wanted(const dn_network *net);
/* The inference forward of n images from `in` (host memory). DN_E_NOTFOUND when this network cannot run here
 * (remembered until its shapes change): the caller runs the layers. */
dn_status net_onednn_forward(dn_network *net, const float *in, int n);
/* Whether the next inference forward of n images here will check its input for NaN and infinity itself (the
 * first-layer kernel does, for free) and fail with DN_E_ARG: the caller need not scan it first. */
int net_onednn_checks_input(const dn_network *net, int n);
/* Puts layer `index`'s output back in NCHW float32 in its buffer when a forward here left it in oneDNN's layout. */
dn_status net_onednn_export(dn_network *net, int index);
/* After a layer-by-layer forward: every layer's buffer holds NCHW again. */
void net_onednn_outputs_plain(dn_network *net);
/* When the shapes change (the next forward builds anew). */
void net_onednn_free(net_onednn *plan);

#endif
