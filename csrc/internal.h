/* Internal declarations shared by the C files of the core. Not installed, not seen by cffi. */
#ifndef DN_INTERNAL_H
#define DN_INTERNAL_H

#include <stdint.h>
#include <stdlib.h>
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
void im2col(const float *im, int channels, int height, int width, int ksize, int stride, int pad, float *col);
void col2im_add(const float *col, int channels, int height, int width, int ksize, int stride, int pad, float *im);
void dn_threads_apply(int n);
int dn_threads_current(void);


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

/* ---- layers and networks (network.c, layer_*.c) ---- */
typedef struct dn_layer dn_layer;

typedef struct layer_ops {
    const char *type;
    /* From the input shape (w, h, c) compute the output shape and (re)allocate batch-sized buffers. */
    dn_status (*reshape)(dn_layer *l, dn_network *net);
    void (*forward)(dn_layer *l, dn_network *net, const float *in, int n);
    /* Adds to in_delta (may be NULL for the first layer) and to the parameter update buffers. */
    void (*backward)(dn_layer *l, dn_network *net, const float *in, float *in_delta, int n);
    void (*free_private)(dn_layer *l);
} layer_ops;

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
    void *priv;                  /* layer-specific fields */
};

struct dn_network {
    char *cfg_path;
    dn_options opt;              /* as given at load */
    int n;
    dn_layer *layers;
    int batch;
    int w, h, c;
    float *params, *updates;
    size_t n_params;
    uint64_t params_version;     /* bumped whenever the parameters may change: derived caches key on it */
    dn_net_info info;            /* [net] options and weights header */
    float *workspace;
    size_t workspace_floats;
    int train;                   /* 1 during a training forward/backward */
    int update_rolling;          /* batch norm updates its rolling statistics (not in dn_network_loss) */
    int training_buffers;        /* deltas and training caches allocated */
    int planning;                /* 1 while reshape computes shapes only: layers allocate nothing */
    const float *truth;          /* truths of the current training forward */
    int max_boxes;               /* truth boxes per image the caller passes */
};

/* Build-time context handed to every make_* function. */
typedef struct layer_build {
    const cfg_file *cfg;
    cfg_section *section;
    dn_network *net;
    int index;
} layer_build;

dn_status make_convolutional(layer_build *b, dn_layer *l);
dn_status make_maxpool(layer_build *b, dn_layer *l);
dn_status make_route(layer_build *b, dn_layer *l);
dn_status make_shortcut(layer_build *b, dn_layer *l);
dn_status make_upsample(layer_build *b, dn_layer *l);
dn_status make_yolo(layer_build *b, dn_layer *l);

/* (Re)allocate a batch-sized buffer; keeps nothing. */
dn_status layer_alloc(float **buf, size_t count);
/* Allocate output (and delta when training) for batch * outputs. */
dn_status layer_alloc_io(dn_layer *l, dn_network *net);
void conv_init_params(dn_layer *l, dn_network *net, dn_rng *rng);
void conv_update(dn_layer *l, dn_network *net, float lr_over_b, float momentum, float decay_times_b);
int layer_is(const dn_layer *l, const layer_ops *ops);
extern const layer_ops conv_ops, maxpool_ops, route_ops, shortcut_ops, upsample_ops, yolo_ops;
void yolo_layer_info(const dn_layer *l, dn_layer_info *out);
void route_layer_info(const dn_layer *l, dn_layer_info *out);
void conv_layer_info(const dn_layer *l, dn_layer_info *out);
dn_status yolo_layer_stats(const dn_layer *l, dn_yolo_stats *out);
float yolo_layer_cost(const dn_layer *l);
/* DN_OK, or the error of the last training forward's loss (e.g. a bad truth box), with its message set. */
dn_status yolo_layer_loss_status(const dn_layer *l);
dn_status yolo_layer_anchors(const dn_layer *l, float *anchors, int *mask);
dn_status dn_network_reshape(dn_network *net);
/* A layer reference in a cfg: negative = relative to this layer; it must name an earlier layer. */
dn_status resolve_layer_ref(const cfg_file *f, const cfg_section *s, const char *key, int index, int ref, int *out);
dn_status dn_network_alloc_training(dn_network *net);

/* ---- the memory budget (memory_budget.c) ---- */
/* From the shapes alone (run after a planning pass, before the allocations): what the network claims with
 * its current batch, size and buffers; over net->opt.memory_limit it is error `code` naming the total and
 * the layer that contributes most. */
dn_status dn_memory_check(const dn_network *net, dn_status code);
/* What a layer holds beyond its output and delta, for the budget (bytes). */
double conv_private_bytes(const dn_layer *l, const dn_network *net, size_t workspace_floats);
double maxpool_private_bytes(const dn_layer *l, const dn_network *net);

#endif
