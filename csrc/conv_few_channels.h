/* The training forward of a convolution with few input channels (a network's first layer reads an image's 3),
 * NCHW float32 in and out, by hand (AVX-512).
 *
 * Why: oneDNN 3.2 has no brgemm kernel for 3 input channels. Its jit kernel ran yolov3-tiny's first layer at
 * 80-110 GFLOP/s on Xeon Ice Lake (the other layers' forward at 230-300), and its channels-last output (the
 * largest tensor of the network: 16 x 416 x 416 per image) had to be copied back to NCHW for batch norm. This
 * kernel writes NCHW itself. The gradients stay on oneDNN (conv_train_onednn.h). */
#ifndef DN_CONV_FEW_CHANNELS_H
#define DN_CONV_FEW_CHANNELS_H

#include "backend.h"

#define CONV_FEW_CHANNELS_MAX 4

/* Whether this CPU and s fit: AVX-512, groups 1, at most CONV_FEW_CHANNELS_MAX input channels, filters a
 * multiple of 16, stride 1, padding below the kernel size. */
int conv_few_channels_supported(const dn_conv_shape *s);

/* out (s->batch x filters x out_h x out_w) = the convolution of in (batch x c x h x w) by weights
 * (filters x c x size x size, Darknet's order), zero padding, no bias. DN_E_NOMEM when its copy of the weights
 * cannot be made. */
dn_status conv_few_channels_forward(const dn_conv_shape *s, const float *in, const float *weights, float *out);

#endif
