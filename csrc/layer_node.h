/* What a layer computes, described for a whole-network engine (net_onednn.c) that runs the network as a chain
 * of library primitives instead of the layers' own forwards. A kind without a `node` op (the [yolo] layer) is
 * NODE_OTHER: such an engine runs its own forward on its input in the network's NCHW float32. */
#ifndef DN_LAYER_NODE_H
#define DN_LAYER_NODE_H

#include "conv_fast.h"

typedef enum {
    NODE_OTHER = 0,
    NODE_CONV,      /* conv: activation(convolution * mul + add), weights and folded batch norm included */
    NODE_MAXPOOL,   /* size, stride, pad_top_left (the window's offset); windows past the input end skip it */
    NODE_CONCAT,    /* the inputs' channels in order */
    NODE_ADD,       /* activation(inputs[0] + inputs[1]) */
    NODE_UPSAMPLE   /* nearest neighbour by the integer `stride`, times `scale` */
} node_kind;

#define NODE_MAX_INPUTS 4

typedef struct layer_node {
    node_kind kind;
    int n_inputs;
    int inputs[NODE_MAX_INPUTS];  /* layer indices; -1 = the network's input */
    conv_fast_desc conv;          /* NODE_CONV (weights, mul and add valid until the parameters change) */
    dn_conv_engine *engine;       /* NODE_CONV: where the engine says what ran the layer */
    int size, stride, pad_top_left;
    float scale;
    dn_activation activation;     /* NODE_ADD */
} layer_node;

#endif
