/* [convolutional] training on the CPU backend through oneDNN (conv_train_onednn.c): the forward, the weight
 * gradient and the input gradient of one layer as oneDNN convolutions in their own blocked layouts, in place of
 * im2col + OpenBLAS per image. Batch norm, activation and the update stay the layer's kernels.
 *
 * Why: on this project's 2-vCPU AVX-512 machine, each layer of yolov3-tiny at 416, batch 8, alone (forward,
 * batch norm and both gradients, interleaved with the GEMM path in one process) took 0.64-1.03 of im2col +
 * OpenBLAS's time, 0.83 summed; the first layers gain most (3 and 16 input channels: a small K for the GEMM,
 * 20-80 GFLOP/s there); 1x1 layers gain nothing after the reorders, and AUTO leaves them to GEMM in float32
 * (trains_onednn in layer_convolutional.c). In bf16 mode the products take bfloat16 operands on AMX: yolov3-tiny
 * trains in 0.42-0.45 of the float32 GEMM path's time.
 *
 * The caller's buffers stay Darknet's: NCHW float32 activations and deltas, oihw float32 weights and weight
 * updates. Each call copies what it reads into the primitive's layout (and to bfloat16 in bf16 mode) inside
 * the caller's scratch, and the results back; the gradients are added to what the caller's buffers hold
 * (in_delta +=, weight_updates +=), as the GEMM path does. The activations' copies are layout_pack.c's where it
 * is faster than oneDNN's reorders (NHWC both ways, nChw16c back to NCHW), the weights' oneDNN reorders. */
#ifndef DN_CONV_TRAIN_ONEDNN_H
#define DN_CONV_TRAIN_ONEDNN_H

#include "backend.h"

typedef struct conv_train_onednn conv_train_onednn;

/* Scratch floats the calls below may need for shape s (its batch), in either precision: the upper bound the
 * network's workspace is sized by. 0 when this library was built without oneDNN or the shape is not one it takes
 * (groups). */
size_t conv_train_onednn_scratch_floats(const dn_conv_shape *s);

/* Whether a layer of this shape multiplies in bfloat16 when bf16 is asked: with at least 16 input channels per
 * group, as at inference (conv_onednn_runs_bf16). */
int conv_train_onednn_runs_bf16(const dn_conv_shape *s, int bf16);

/* out = W (x) in for s->batch images. DN_E_NOTFOUND when oneDNN has no convolution for the shape or its
 * layouts would not fit in scratch_floats (the caller then runs im2col + GEMM); *state is created on first use
 * and rebuilt when the shape changes. */
dn_status conv_train_onednn_forward(conv_train_onednn **state, const dn_conv_shape *s, int bf16, const float *in,
                                    const float *weights, float *out, float *scratch, size_t scratch_floats);

/* Where the backward of a float32 layer reads d(out) for both gradients when that is layout_pack.c's channel-last
 * (or nChw16c) float32 layout in the scratch, *layout set: a caller that makes d(out) may write it there and pass
 * delta = NULL to conv_train_onednn_backward. NULL otherwise, or before the forward has prepared the layer. */
struct pack_layout;
float *conv_train_onednn_packed_delta(conv_train_onednn *state, const dn_conv_shape *s, int bf16, int with_in_delta,
                                      float *scratch, struct pack_layout *layout);

/* weight_updates += delta (x) in; in_delta (may be NULL) += W^T (x) delta, or = when set_in_delta (its old
 * values are ignored). delta is d(out), after the batch norm and activation gradients; NULL: already written where
 * conv_train_onednn_packed_delta said. */
dn_status conv_train_onednn_backward(conv_train_onednn **state, const dn_conv_shape *s, int bf16, const float *in,
                                     const float *delta, const float *weights, float *weight_updates,
                                     float *in_delta, int set_in_delta, float *scratch, size_t scratch_floats);

void conv_train_onednn_free(conv_train_onednn *state);

#endif
