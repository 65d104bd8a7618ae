/* Activations between the network's NCHW float32 and the channel-blocked layouts oneDNN's training
 * convolutions take (conv_train_onednn.c): NHWC, in float32 or bfloat16, and nChw16c in float32.
 *
 * Why by hand: oneDNN's reorders between NCHW and NHWC ran at 5-13 GB/s on this project's 2-vCPU AVX-512
 * machine, a third of what two threads stream (about 34 GB/s for a read-modify-write), and took about a
 * fifth of a bf16 training iteration of yolov3-tiny. Here a 16-channel x 16-pixel tile is transposed in
 * AVX-512 registers, and each thread writes whole rows of the channel-last side. */
#ifndef DN_LAYOUT_PACK_H
#define DN_LAYOUT_PACK_H

#include <stddef.h>

/* Where element (image i, channel ch, pixel p = y * w + x) of a blocked layout lies, in elements:
 * i * image + (ch / 16) * block + p * pixel + ch % 16. NHWC: pixel = channels, block = 16; nChw16c: pixel = 16,
 * block = 16 * pixels, image = the channels rounded up to 16 times pixels (the padding lanes hold zeros). */
typedef struct pack_layout {
    size_t image, block, pixel;
    int bf16; /* the elements are bfloat16 (packing only) */
} pack_layout;

/* The layout of `channels` x `pixels` images in NHWC (bf16: bfloat16 elements) or nChw16c float32. */
pack_layout pack_layout_nhwc(int channels, size_t pixels, int bf16);
pack_layout pack_layout_nchw16c(int channels, size_t pixels);

/* Whether this CPU runs the functions below (AVX-512; AVX512_BF16 for bfloat16 packing). */
int layout_pack_available(int bf16);

/* dst (layout L) = src (NCHW float32, n images of `channels` x `pixels`), rounded to bfloat16 (to nearest even)
 * when L->bf16; nChw16c's padding lanes are written as zeros. */
void layout_pack(const float *src, int n, int channels, size_t pixels, const pack_layout *L, void *dst);

/* dst (NCHW float32) = src (layout L, float32), or += when add. */
void layout_unpack(const void *src, const pack_layout *L, int n, int channels, size_t pixels, float *dst, int add);

/* One channel's numbers for layout_pack_bn_backward: the forward's batch statistics (mean, inv = 1 / (sigma +
 * eps)), its scale and bias, and the factors of d(x) made from the sums of the first backward pass. */
typedef struct bn_back_channel {
    float mean, inv, scale, bias;
    float mean_g, inv_s, k;
} bn_back_channel;

/* dst (layout L, float32) = d(x) of a training batch norm followed by a leaky, relu or linear activation (the
 * DN_ACT_ codes of elementwise.h), from delta = d(out) and x (both NCHW float32), channel c's numbers in f[c]:
 * z = (x - mean) * inv * scale + bias (as the forward rounds it), d0 = delta * act'(z), g = d0 * scale,
 * d(x) = (g - mean_g) * inv_s + k * (x - mean). The second pass of the CPU's bn_act_backward, writing straight into
 * a training convolution's channel-last d(out) instead of back into delta. */
void layout_pack_bn_backward(const float *delta, const float *x, const bn_back_channel *f, int activation, int n,
                             int channels, size_t pixels, const pack_layout *L, float *dst);

/* dst (OIHW float32, outputs x inputs x kernel_pixels) = src (oneDNN's ABcd16b16a float32: blocks of 16 outputs x 16
 * inputs, each kernel_pixels tiles of [input][output]; the padding of counts that are not multiples of 16 is
 * skipped), or += when add. Portable C: the weight gradients of oneDNN's AVX-512 training convolutions come in
 * this layout, and oneDNN's reorder with a sum to OIHW ran at about 4.4 GB/s on Xeon Ice Lake. */
void layout_unpack_weights_16b16a(const float *src, int outputs, int inputs, int kernel_pixels, float *dst, int add);

#endif
