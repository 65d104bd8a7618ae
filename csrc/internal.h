/* Internal declarations shared by the C files of the core. Not installed, not seen by cffi. */
#ifndef DN_INTERNAL_H
#define DN_INTERNAL_H

#include <stdint.h>
#include <stdlib.h>
#include "backend.h"

/* Functions whose inner loops should use AVX-512 / AVX2 get clones picked at load time (gcc's ifuncs; not under
 * the sanitizers or clang, whose builds keep the plain function). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define DN_VEC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DN_VEC_CLONES
#endif
#include "darknet.h"

#define DN_EXPORT __attribute__((visibility("default")))

/* Limits of the [net] keys, dn_network_set_batch and dn_network_resize. */
#define DN_MAX_BATCH 65536
#define DN_MAX_SIDE 16384
#define DN_MAX_CHANNELS 4096

/* ---- errors and logging (util.c) ---- */
/* Sets the thread-local error message (printf-style) and returns code, so `return dn_fail(...)` reads well. */
dn_status dn_fail(dn_status code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dn_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void *dn_calloc(size_t count, size_t size); /* zeroed; NULL on overflow or failure */
/* 1 when none of x[0..n) is NaN or infinite, on the calling thread (dn_all_finite splits a long array across the
 * threads). v - v is 0 for every finite v and NaN for NaN and the infinities; compares vectorise, isfinite() did
 * not. */
static inline int dn_span_finite(const float *x, size_t n)
{
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (size_t i = 0; i < n; i++) bad |= !(x[i] - x[i] == 0.f);
    return !bad;
}

/* ---- random numbers: a small per-network generator (no global state) ---- */
typedef struct dn_rng { uint64_t state; } dn_rng;
void dn_rng_seed(dn_rng *rng, uint64_t seed);
uint32_t dn_rng_next(dn_rng *rng);
float dn_rng_uniform(dn_rng *rng, float lo, float hi);

/* ---- activations (activations.c) ---- */
typedef enum {
    ACT_LOGISTIC = 0, ACT_RELU, ACT_LINEAR, ACT_LEAKY, ACT_MISH, ACT_SWISH, ACT_TANH, ACT_COUNT
} dn_activation;
int activation_from_name(const char *name, dn_activation *out);
void activate_array(float *x, size_t n, dn_activation a);
/* delta *= f'(.) evaluated from the activated output y (x_raw needed by mish/swish: pass NULL otherwise). */
void gradient_array(const float *y, const float *x_raw, size_t n, dn_activation a, float *delta);
int activation_needs_input(dn_activation a);

/* ---- matrix products and helpers (blas.c) ---- */
/* C[M x N] = alpha * op(A) * op(B) + beta * C, row-major. */
void dn_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);
/* Training with precision bf16: dn_gemm then multiplies in bfloat16 (float32 accumulation) where that pays.
 * Set per compute call on the calling thread, like the thread count (dn_threads_enter). */
void dn_gemm_bf16_enter(int bf16);
/* C = op(A) op(B) + beta C (beta 0 or 1) in bfloat16 through oneDNN (gemm_onednn.c); 0 when done, nonzero when
 * declined (no oneDNN, no bfloat16 kernel for it): the caller then multiplies in float32. */
int dn_gemm_bf16(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc);
void im2col(const float *im, int channels, int height, int width, int ksize, int stride, int pad, float *col);
void col2im_add(const float *col, int channels, int height, int width, int ksize, int stride, int pad, float *im);


/* ---- cfg files (cfg.c) ---- */
typedef struct cfg_option { char *key; char *value; int line; int used; } cfg_option;
typedef struct cfg_section {
    char *name;
    int line;
    cfg_option *options;
    int n_options, cap;
} cfg_section;
typedef struct cfg_file {
    char *path;
    cfg_section *sections;
    int n_sections, cap;
} cfg_file;

dn_status cfg_read(const char *path, cfg_file *out);
void cfg_free(cfg_file *cfg);
/* Getters: a missing key gives the default, or an error naming file/line/key when required;
 * a malformed value is an error naming the option's own line. */
dn_status cfg_get_int(const cfg_file *f, cfg_section *s, const char *key, int def, int required, int *out);
dn_status cfg_get_float(const cfg_file *f, cfg_section *s, const char *key, float def, int required, float *out);
/* cfg_get_int, then a value outside lo..hi is an error naming the key's own line. */
dn_status cfg_get_int_range(const cfg_file *f, cfg_section *s, const char *key, int def, int required, int lo,
                            int hi, int *out);
const char *cfg_get_str(cfg_section *s, const char *key, const char *def);
cfg_option *cfg_find(cfg_section *s, const char *key);
/* Comma-separated lists; *count receives the number parsed (at most cap). */
dn_status cfg_get_int_list(const cfg_file *f, cfg_section *s, const char *key, int *out, int cap, int *count);
dn_status cfg_get_float_list(const cfg_file *f, cfg_section *s, const char *key, float *out, int cap, int *count);
void cfg_warn_unused(const cfg_file *f, const cfg_section *s);

/* ---- threads (blas.c) ---- */
/* At the entry of every compute call: applies `threads` (0 = the process setting of dn_set_threads) to the
 * calling thread (OpenMP's thread count is a per-thread setting) and returns the team size the call's parallel
 * loops will ask for. */
int dn_threads_enter(int threads);

/* ---- layers and networks (network.c, layers.c, layer_*.c) ---- */
typedef struct dn_layer dn_layer;
struct layer_node; /* layer_node.h */

/* Build-time context handed to every kind's make. */
typedef struct layer_build {
    const cfg_file *cfg;
    cfg_section *section;
    dn_network *net;
    int index;
} layer_build;

/* A layer kind: every per-type behaviour. Buffers are the network backend's (net->be) and the arithmetic is
 * its kernels (net->be->k); `in`, `in_delta` and every buffer are in backend memory. Optional entries may be
 * NULL. */
typedef struct layer_ops {
    const char *type;            /* as dn_layer_info.type: "conv", "max", ... */
    int sources_only;            /* reads only its dn_layer_info.sources, not the previous layer ([route]) */
    int can_set_in_delta;        /* backward sets in_delta, not adds to it, when layer_sets_in_delta says so */
    /* Reads the section's keys into l (input shape already set) and sets n_params. */
    dn_status (*make)(layer_build *b, dn_layer *l);
    /* From the input shape (w, h, c) compute the output shape and (re)allocate batch-sized buffers. */
    dn_status (*reshape)(dn_layer *l, dn_network *net);
    dn_status (*forward)(dn_layer *l, dn_network *net, const float *in, int n);
    /* Adds to in_delta (may be NULL for the first layer) and to the parameter update buffers. */
    dn_status (*backward)(dn_layer *l, dn_network *net, const float *in, float *in_delta, int n);
    /* optional: layers with parameters */
    dn_status (*update)(dn_layer *l, dn_network *net, float lr_over_b, float momentum, float decay_b);
    /* Fills the layer's n_params values (host memory, .weights order) as at load. */
    void (*init_params)(dn_layer *l, float *params, dn_rng *rng);
    /* optional: the kind's own fields of the layer table */
    void (*info)(const dn_layer *l, dn_layer_info *out);
    /* optional, loss layers only: the cost of the last training forward with truths */
    float (*cost)(const dn_layer *l);
    /* optional, for the memory budget: bytes the layer holds beyond its output and delta (caches, scratch) */
    double (*private_bytes)(const dn_layer *l, const dn_network *net, size_t workspace_floats);
    void (*free_private)(dn_layer *l, dn_network *net);
    /* optional: the layer as a node for a whole-network engine (layer_node.h); the input shape is set. NULL: the
     * engine runs `forward` on the previous layer's output. */
    dn_status (*node)(dn_layer *l, dn_network *net, struct layer_node *out);
} layer_ops;

/* The registry (layers.c): the kind of a cfg section name (aliases included), NULL when unknown. */
const layer_ops *layer_kind(const char *section);
/* "convolutional, maxpool, ...": the section names the registry knows (aliases left out), for messages. */
void layer_kind_names(char *buf, size_t size);

struct dn_layer {
    const layer_ops *ops;
    int index;
    int w, h, c;                 /* input shape */
    int out_w, out_h, out_c;
    size_t inputs, outputs;      /* per image */
    float *output;               /* batch * outputs */
    float *delta;                /* batch * outputs, allocated for training only */
    size_t param_offset;         /* into net->params / net->updates */
    size_t n_params;
    double bflops;
    int filters, size, stride, groups; /* for the layer table */
    size_t workspace_floats;     /* scratch this layer needs from net->workspace */
    /* Training on the host: the next layer is this delta's only writer and sets it in its backward (a conv or a
     * max pool), so the training forward leaves it unzeroed (network.c mark_delta_writers). */
    int delta_set_by_next;
    void *priv;                  /* layer-specific fields */
};

struct dn_network {
    char *cfg_path;
    dn_options opt;              /* as given at load */
    dn_backend *be;              /* where every buffer lives and whose kernels run: chosen once, at load */
    int n;
    dn_layer *layers;
    int batch;
    int w, h, c;
    float *params, *updates;     /* backend memory, n_params each */
    size_t n_params;
    uint64_t params_version;     /* bumped whenever the parameters may change: derived caches key on it */
    dn_net_info info;            /* [net] options and weights header */
    float *workspace;
    size_t workspace_floats;
    /* Backends without host memory only: the input (batch images) and, for training, its delta. */
    float *input, *input_delta;
    int train;                   /* 1 during a training forward/backward */
    int backward_follows;        /* this training forward is followed by a backward pass (which sets deltas) */
    int update_rolling;          /* batch norm updates its rolling statistics (not in dn_network_loss) */
    int training_buffers;        /* deltas and training caches allocated */
    int planning;                /* 1 while reshape computes shapes only: layers allocate nothing */
    const float *truth;          /* truths of the current training forward (host memory) */
    int max_boxes;               /* truth boxes per image the caller passes */
    struct net_onednn *onednn;   /* inference as one oneDNN network (net_onednn.c); NULL until the first */
    int onednn_declined;         /* that declined this network's layers (until the shapes change) */
    int ran_whole_onednn;        /* the last forward went through it */
};

/* Whether layer l's backward sets (=) its in_delta rather than adding to it: the previous layer's delta was left
 * unzeroed by the training forward because l is its only writer. */
static inline int layer_sets_in_delta(const dn_network *net, const dn_layer *l)
{
    return net->backward_follows && l->index > 0 && net->layers[l->index - 1].delta_set_by_next;
}

/* (Re)allocate a zeroed batch-sized buffer through the network's backend; keeps nothing. */
dn_status layer_alloc(dn_network *net, float **buf, size_t count);
dn_status layer_alloc_int(dn_network *net, int **buf, size_t count);
/* Release a buffer of the network's backend (NULL is fine). */
void layer_release(dn_network *net, void *buf);
/* Allocate output (and delta when training) for batch * outputs. */
dn_status layer_alloc_io(dn_layer *l, dn_network *net);
dn_status dn_network_reshape(dn_network *net);
/* dn_network_train_chunk with after_layer(net, i, user) called after layer i's backward pass (comm.c). */
dn_status network_train_chunk_each_layer(dn_network *net, const float *input, const float *truth, int n, float *cost,
                                         void (*after_layer)(dn_network *net, int layer, void *user), void *user);
/* A layer reference in a cfg: negative = relative to this layer; it must name an earlier layer. */
dn_status resolve_layer_ref(const cfg_file *f, const cfg_section *s, const char *key, int index, int ref, int *out);
dn_status dn_network_alloc_training(dn_network *net);

/* The CPU kernel table (kernels_cpu.c). */
extern const dn_kernels dn_cpu_kernels;
/* ---- the memory budget (memory_budget.c) ---- */
/* From the shapes alone (run after a planning pass, before the allocations): what the network claims with
 * its current batch, size and buffers; over net->opt.memory_limit it is error `code` naming the total and
 * the layer that contributes most. */
dn_status dn_memory_check(const dn_network *net, dn_status code);

#endif
