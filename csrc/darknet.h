/* pydarknet's C core: the one public header.
 *
 * Conventions
 *  - Every function that can fail returns a dn_status (0 = DN_OK, negative = error) and leaves a message
 *    with file/line/key context in dn_last_error() (thread-local).
 *  - Tensors are float32, NCHW, contiguous. Inputs are read, never kept: the caller's buffers may be freed
 *    after a call returns. Pointers returned by getters stay valid until the next call on the same network.
 *  - Sign convention of "delta": delta = -dLoss/d(output) (Darknet's), and the update buffers accumulate
 *    -dLoss/d(parameter); the SGD step adds (lr/B) * update.
 *  - No globals except the process-wide log callback. Two networks may be used from two threads at once.
 *  - This file must stay parseable by cffi: no CUDA types, no computed macros.
 */
#ifndef DARKNET_H
#define DARKNET_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DN_ABI_VERSION 1

typedef enum dn_status {
    DN_OK = 0,
    DN_E_IO = -1,        /* a file cannot be opened, read or written */
    DN_E_NOTFOUND = -2,  /* a file does not exist */
    DN_E_CFG = -3,       /* malformed .cfg: unknown section, bad number, missing key, bad reference */
    DN_E_WEIGHTS = -4,   /* malformed .weights: bad header, truncated, longer than the network */
    DN_E_NOMEM = -5,     /* allocation failed */
    DN_E_ARG = -6,       /* a bad argument (size, index, pointer) */
    DN_E_CUDA = -7,      /* CUDA unavailable or a CUDA call failed */
    DN_E_NUMERIC = -8    /* a NaN or infinity appeared */
} dn_status;

typedef enum dn_log_level { DN_LOG_DEBUG = 10, DN_LOG_INFO = 20, DN_LOG_WARNING = 30, DN_LOG_ERROR = 40 } dn_log_level;
typedef void (*dn_log_fn)(int level, const char *message, void *user);

typedef enum dn_iou_loss { DN_LOSS_MSE = 0, DN_LOSS_IOU = 1, DN_LOSS_GIOU = 2 } dn_iou_loss;
typedef enum dn_representation { DN_REPR_EXP = 0, DN_REPR_LIN = 1 } dn_representation;

typedef struct dn_network dn_network;

/* How a network's convolutions run at inference. AUTO: Winograd for 3x3 stride-1 layers with enough
 * channels (tile chosen by map size), im2col + GEMM elsewhere, bias/batch norm/activation fused. */
typedef enum dn_conv_algo {
    DN_CONV_AUTO = 0,
    DN_CONV_GEMM = 1,         /* the fused path, but im2col + GEMM for every layer (no Winograd) */
    DN_CONV_WINOGRAD_F2 = 2,  /* Winograd F(2x2,3x3) wherever Winograd applies */
    DN_CONV_WINOGRAD_F4 = 3,  /* Winograd F(4x4,3x3) wherever Winograd applies */
    DN_CONV_PLAIN = 4         /* the training path's convolution, unfused (a reference for tests) */
} dn_conv_algo;

/* Per-network options, given at load. Fill with dn_options_init, then change what you need. */
typedef struct dn_options {
    int device;              /* -1 = CPU (default); k >= 0 = CUDA device k */
    int conv_algo;           /* dn_conv_algo */
    int threads;             /* threads for this network's calls; 0 = the process setting (dn_set_threads) */
    int reserved;
    uint64_t memory_limit;   /* bytes this network may claim (parameters, layer outputs, workspace, caches and,
                                once it trains, the training buffers), counted from the shapes before allocating;
                                0 = DN_DEFAULT_MEMORY_LIMIT. Over it: DN_E_CFG at load, DN_E_ARG from set_batch,
                                resize and the first training call, with the bytes needed and the largest layer */
} dn_options;

#define DN_DEFAULT_MEMORY_LIMIT 17179869184

/* Statistics of one [yolo] layer's training forward, as the reference engine logs them. */
typedef struct dn_yolo_stats {
    float avg_iou;     /* mean IoU of the matched predictions with their truths */
    float avg_giou;    /* mean GIoU of the same */
    float iou_loss;    /* the localisation part of the cost */
    float cls_loss;    /* the objectness + class part of the cost */
    float cost;        /* the layer's total cost */
    float avg_obj;     /* mean objectness of the matched predictions */
    float avg_noobj;   /* mean objectness over all predictions */
    float avg_cls;     /* mean score of the true class on the matched predictions */
    float recall50;    /* share of truths matched with IoU > .5 */
    float recall75;    /* share of truths matched with IoU > .75 */
    int count;         /* matched truths */
} dn_yolo_stats;

/* The hyper-parameters of a [yolo] layer, for dn_yolo_loss. mask has n entries, anchors 2*total. */
typedef struct dn_yolo_config {
    int classes;
    int n;               /* anchors predicted by this layer = len(mask) */
    int total;           /* anchors in the cfg = num */
    const int *mask;
    const float *anchors;
    int net_w, net_h;
    int iou_loss;        /* dn_iou_loss */
    float iou_normalizer;
    float cls_normalizer;
    int representation;  /* dn_representation */
    float ignore_thresh;
    float truth_thresh;
    int max_boxes;
} dn_yolo_config;

/* What dn_network_layer_info tells about one layer (for the layer table and for Python decoding). */
typedef struct dn_layer_info {
    char type[16];       /* "conv", "max", "route", "shortcut", "upsample", "yolo" */
    int filters, size, stride, groups;
    int in_w, in_h, in_c;
    int out_w, out_h, out_c;
    double bflops;       /* billions of floating-point operations per image, Darknet's count */
    size_t n_params;     /* floats stored in .weights for this layer */
    int batch_normalize;
    int activation;      /* internal activation code; see dn_activation_name */
    /* [yolo] only */
    int classes, n, total;
    int iou_loss, representation;
    float iou_normalizer, cls_normalizer, ignore_thresh, truth_thresh;
    int max_boxes;
    int random;
    float jitter;
    /* [route] only: up to 4 source layers (absolute indices), n_sources of them */
    int n_sources;
    int sources[4];
} dn_layer_info;

/* The [net] section and the header of the last weights file loaded. */
typedef struct dn_net_info {
    int batch;           /* images held in memory at once (the batch given at load or set_batch) */
    int cfg_batch;       /* batch= in the cfg */
    int subdivisions;
    int width, height, channels;
    int n_layers;
    int n_yolo;
    uint64_t seen;
    int major, minor, revision;
    size_t n_params;
    float learning_rate, momentum, decay;
    int burn_in;
    float power;
    int max_batches;
    char policy[16];
    int n_steps;
    int steps[32];
    float scales[32];
    int step;
    float scale;         /* policy=step: lr * scale^(it/step) */
    float gamma;
    float angle, saturation, exposure, hue;
    int flip;
} dn_net_info;

int dn_abi_version(void);
const char *dn_last_error(void);
void dn_set_log_callback(dn_log_fn fn, void *user);
/* Threads for BLAS and for the element-wise loops of this process; 0 = all cores. */
void dn_set_threads(int n);
int dn_get_threads(void);
const char *dn_blas_name(void);
const char *dn_activation_name(int code);

void dn_options_init(dn_options *options);
/* Build a network from a cfg with options (NULL = defaults); batch <= 0 takes the cfg's batch/subdivisions. */
dn_status dn_network_load(const char *cfg_path, int batch, const dn_options *options, dn_network **out);
/* The same with default options. Build a network from a cfg; batch <= 0 takes the cfg's batch/subdivisions. Weights are initialised
 * (He-style uniform, biases 0, BN scales 1, rolling mean 0, rolling variance 1) from a fixed seed. */
dn_status dn_network_load_cfg(const char *cfg_path, int batch, dn_network **out);
void dn_network_free(dn_network *net);
/* Loads a .weights file; a file shorter than the net stops on a layer boundary (the rest keep their values). */
dn_status dn_network_load_weights(dn_network *net, const char *path, int *layers_loaded);
/* Writes header 0.2.0 and every parameter, atomically (path.tmp then rename). */
dn_status dn_network_save_weights(dn_network *net, const char *path);
dn_status dn_network_info(const dn_network *net, dn_net_info *out);
dn_status dn_network_layer_info(const dn_network *net, int index, dn_layer_info *out);
dn_status dn_network_set_seen(dn_network *net, uint64_t seen);
dn_status dn_network_set_batch(dn_network *net, int batch);
dn_status dn_network_resize(dn_network *net, int width, int height);
/* Re-initialise every parameter from seed (as at load). */
dn_status dn_network_init_params(dn_network *net, uint64_t seed);

/* Inference forward of n images (n <= batch): input float[n * channels * height * width]. */
dn_status dn_network_forward(dn_network *net, const float *input, int n);
/* Output of a layer after the last forward: float[n * outputs] where outputs = out_c*out_h*out_w. */
const float *dn_network_layer_output(dn_network *net, int index);
/* Delta of a layer after the last training forward/backward, same size as its output. */
const float *dn_network_layer_delta(dn_network *net, int index);

/* Training. truth: float[n * max_boxes * 5] of (x, y, w, h, class), relative, zero-terminated per image.
 * dn_network_train_chunk runs a training forward and a backward and adds the gradients to the update
 * buffers; *cost receives the summed cost of the [yolo] layers. dn_network_update takes one SGD step
 * for a batch of batch_images images (SPEC §3) and leaves momentum in the buffers. */
dn_status dn_network_train_chunk(dn_network *net, const float *input, const float *truth, int n, float *cost);
dn_status dn_network_update(dn_network *net, float learning_rate, float momentum, float decay, int batch_images);
/* A training-mode forward (batch statistics, loss and deltas) that changes nothing in the network. */
dn_status dn_network_loss(dn_network *net, const float *input, const float *truth, int n, float *cost);
/* Gradient probe (tests, research): a training-mode forward of n images (batch statistics, rolling averages
 * untouched, [yolo] layers compute no loss), then a backward started from last_delta (the last layer's delta,
 * float[n * outputs]) instead of a loss. input_delta (float[n * inputs], may be NULL) receives the delta at
 * the network input; parameter gradients are added to the update buffers (see dn_network_zero_updates). */
dn_status dn_network_backward_probe(dn_network *net, const float *input, int n, const float *last_delta,
                                    float *input_delta);
/* Forward with train = 1 (batch statistics, rolling averages untouched, no loss) or 0 (inference). */
dn_status dn_network_forward_mode(dn_network *net, const float *input, int n, int train);
dn_status dn_network_zero_updates(dn_network *net);
/* Statistics of the yolo_index-th [yolo] layer (0-based among [yolo] layers) from the last training forward. */
dn_status dn_network_yolo_stats(const dn_network *net, int yolo_index, dn_yolo_stats *out);
/* Anchors (2*total floats) and mask (n ints) of a [yolo] layer given by absolute layer index. */
dn_status dn_network_yolo_anchors(const dn_network *net, int index, float *anchors, int *mask);
/* Parameter and update blocks, for tests and multi-device reduction: n_params floats each. */
float *dn_network_params(dn_network *net);
float *dn_network_updates(dn_network *net);

/* The [yolo] layer on its own: x raw input float[n * cfg->n*(5+classes) * h * w]; writes output
 * (the activated values, same size), delta (same size) and, if not NULL, *cost and *stats. */
dn_status dn_yolo_loss(const dn_yolo_config *cfg, const float *x, int n, int h, int w, const float *truth,
                       float *output, float *delta, float *cost, dn_yolo_stats *stats);

/* Darknet's letterbox: an 8-bit BGR(A) image (row stride in bytes) -> float RGB CHW net_w x net_h in 0..1,
 * resized keeping the aspect ratio with Darknet's bilinear arithmetic and padded with 0.5. */
dn_status dn_letterbox_bgr(const unsigned char *bgr, int w, int h, int channels, size_t stride, int net_w,
                           int net_h, float *out);
/* Darknet's bilinear resize of a float CHW image (corners aligned). */
dn_status dn_resize_chw(const float *in, int c, int h, int w, float *out, int out_h, int out_w);

#ifdef __cplusplus
}
#endif
#endif
