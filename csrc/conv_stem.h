/* A network's first convolution ("stem") and the 2x2 max pool after it, as in the tiny YOLO models: few input
 * channels (an image's 3) read straight from the network's NCHW float32 input, the pooled output written
 * channels-last (NHWC) in float32 or bfloat16 for the layers after it. Multiplies in float32 (AVX-512).
 *
 * Why by hand: oneDNN 3.2 has no brgemm kernel for 3 input channels. It reorders the input to channels-last
 * (0.3 ms for yolov3-tiny at 416, batch 1, two threads), convolves (1.1-1.5 ms in bf16 on AMX), writes the
 * 16x416x416 output (11 MB in float32) and reads it back to pool it (0.3-0.5 ms). Here the convolution's output
 * never leaves the registers.
 *
 * The caller keeps oneDNN where conv_stem_supported says no (another CPU, another shape). */
#ifndef DN_CONV_STEM_H
#define DN_CONV_STEM_H

#include "conv_fast.h"

typedef struct conv_stem conv_stem;

/* Whether this CPU and d fit the kernel: AVX-512 (bf16 output: also AVX512_BF16), groups 1, at most
 * CONV_STEM_MAX_CHANNELS input channels, filters a multiple of 16, stride 1, pad < size, an even output, and a
 * linear, leaky or relu activation. The pool after it must be size 2, stride 2, without padding (the caller's
 * check). */
#define CONV_STEM_MAX_CHANNELS 4
int conv_stem_supported(const conv_fast_desc *d, int bf16);

/* The kernel's copy of d's folded weights (conv * mul, + add); made again when they change. */
dn_status conv_stem_create(conv_stem **out, const conv_fast_desc *d);
void conv_stem_free(conv_stem *s);

/* `batch` NCHW float32 images `in` -> maxpool2x2(activation(conv(in) * mul + add)) in `out`, NHWC
 * (batch x out_h/2 x out_w/2 x filters): float32, or bfloat16 (rounded to nearest even) when bf16. With `keep`
 * (not NULL), a copy of `in` is left there too, made while its rows are in the cache (the convolution's own
 * output is not made: a caller that may be asked for it later keeps the input to make it from). Returns, with
 * keep, whether every input value was finite (checked on the way, for free); without keep, 1. */
int conv_stem_forward(const conv_stem *s, const float *in, void *out, int bf16, float *keep, int batch);

#endif
