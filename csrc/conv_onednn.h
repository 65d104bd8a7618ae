/* The oneDNN engine for [convolutional] at inference (conv_onednn.c): convolution with the batch norm folded
 * into weights and bias and the activation as a post-op, in oneDNN's blocked layouts (the input and output are
 * reordered from and to the network's NCHW around each layer). float32, or bfloat16 multiplies with float32
 * accumulation (DN_PRECISION_BF16) on CPUs with AMX or AVX512_BF16.
 *
 * Built in when the Makefile finds oneDNN (the onednn-cpu-gomp wheel or libdnnl-dev): DN_ONEDNN is then
 * defined. Without it every function here reports "not available" and the caller keeps its own path. */
#ifndef DN_CONV_ONEDNN_H
#define DN_CONV_ONEDNN_H

#include "conv_fast.h"

typedef struct conv_onednn conv_onednn;

/* 1 when this library was built with oneDNN. */
int conv_onednn_built(void);
/* 1 when oneDNN runs bfloat16 convolutions with native instructions on this CPU (AMX or AVX512_BF16, as
 * oneDNN's effective ISA reports them, which honours ONEDNN_MAX_CPU_ISA); *isa_name gets that ISA's name. */
int conv_onednn_bf16_supported(const char **isa_name);
/* oneDNN's version as "major.minor.patch", or "" when not built in. */
const char *conv_onednn_version(void);

/* Whether a layer runs in bfloat16 when bf16 is asked: only with at least 16 input channels per group. With
 * fewer (the 3-channel first layer of YOLO) bf16 measured slower than float32 in oneDNN (6.8 vs 4.9 ms at
 * 416x416x3 -> 16, one thread): the conversion costs more than AMX saves on so short a dot product. */
int conv_onednn_runs_bf16(const conv_fast_desc *d, int bf16);

/* Runs the layer described by d (mul/add: the folded batch norm) for `batch` images. bf16: bfloat16
 * multiplies. Returns DN_OK when done; DN_E_NOTFOUND when oneDNN has no implementation for this layer (the
 * caller runs its own path; the answer is remembered per shape); another error (message set) when oneDNN
 * failed. *state is created on first use; free it with conv_onednn_free. */
dn_status conv_onednn_forward(conv_onednn **state, const conv_fast_desc *d, int bf16, const float *in, float *out,
                              int batch);
void conv_onednn_free(conv_onednn *state);

#ifdef DN_ONEDNN
/* Shared with net_onednn.c. */
#include <oneapi/dnnl/dnnl.h>

/* A dn_status (message set) for a failed oneDNN call: DN_E_NOTFOUND when oneDNN has no implementation. */
dn_status onednn_error(const char *what, dnnl_status_t s);
/* 1 when pd runs oneDNN's reference implementation (plain loops: far slower than the caller's own path). */
int onednn_is_reference(const_dnnl_primitive_desc_t pd);
/* In a function with `dn_status st` and a `fail:` label: a failed call sets st and jumps there. */
#define ONEDNN_TRY(call)                                                                                       \
    do {                                                                                                       \
        dnnl_status_t s_ = (call);                                                                             \
        if (s_ != dnnl_success) {                                                                              \
            st = onednn_error(#call, s_);                                                                      \
            goto fail;                                                                                         \
        }                                                                                                      \
    } while (0)
/* The eltwise post-op of an activation (alpha its parameter); dnnl_alg_kind_undef for linear. */
dnnl_alg_kind_t onednn_eltwise_of(dn_activation a, float *alpha);
/* The inference convolution of d from src to dst (any layouts), weights in mul_type and in the layout the
 * primitive picks, float32 bias, attr's post-ops. */
dnnl_status_t onednn_conv_pd(dnnl_primitive_desc_t *pd, dnnl_engine_t engine, const conv_fast_desc *d,
                             const_dnnl_memory_desc_t src, const_dnnl_memory_desc_t dst, dnnl_data_type_t mul_type,
                             const_dnnl_primitive_attr_t attr);
/* d's weights times d->mul per filter into `weights` (any of a primitive's layouts), d->add into `bias`. */
dn_status onednn_load_conv_weights(dnnl_engine_t engine, dnnl_stream_t stream, const conv_fast_desc *d,
                                   dnnl_memory_t weights, dnnl_memory_t bias);
#endif

#endif
