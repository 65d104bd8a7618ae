/* pydarknet's C core: the one public header.
 *
 * Conventions
 *  - Every function that can fail returns a dn_status (0 = DN_OK, negative = error) and leaves a message
 *    with file/line/key context in dn_last_error() (thread-local).
 *  - Tensors are float32, NCHW, contiguous. Inputs are read, never kept: the caller's buffers may be freed
 *    after a call returns. Outputs, deltas and parameters are copied out (and parameters in) by calls, so
 *    they may live in device memory.
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

#define DN_ABI_VERSION 3

typedef enum dn_status {
    DN_OK = 0,
    DN_E_IO = -1,        /* a file cannot be opened, read or written */
    DN_E_NOTFOUND = -2,  /* a file does not exist */
    DN_E_CFG = -3,       /* malformed .cfg: unknown section, bad number, missing key, bad reference */
    DN_E_WEIGHTS = -4,   /* malformed .weights: bad header, truncated, longer than the network */
    DN_E_NOMEM = -5,     /* allocation failed */
    DN_E_ARG = -6,       /* a bad argument (size, index, pointer) */
    DN_E_CUDA = -7,      /* CUDA unavailable or a CUDA call failed */
    DN_E_NUMERIC = -8,   /* a NaN or infinity appeared */
    DN_E_COMM = -9       /* a communicator is unavailable (no MPI/NCCL built in) or a collective failed */
} dn_status;

typedef enum dn_log_level { DN_LOG_DEBUG = 10, DN_LOG_INFO = 20, DN_LOG_WARNING = 30, DN_LOG_ERROR = 40 } dn_log_level;
typedef void (*dn_log_fn)(int level, const char *message, void *user);

typedef enum dn_iou_loss { DN_LOSS_MSE = 0, DN_LOSS_IOU = 1, DN_LOSS_GIOU = 2 } dn_iou_loss;
typedef enum dn_representation { DN_REPR_EXP = 0, DN_REPR_LIN = 1 } dn_representation;

typedef struct dn_network dn_network;

/* How a network's convolutions run at inference. AUTO and ONEDNN, with oneDNN on the CPU: the whole network as
 * one oneDNN network (net_onednn.h; every layer a primitive, outputs kept in oneDNN's channels-last layout), and
 * where it declines a network, layer by layer: oneDNN for kernels larger than 1x1 and DN_CONV_FUSED for 1x1
 * ones under AUTO (see layer_convolutional.c), oneDNN for all under ONEDNN. Without oneDNN, AUTO is
 * DN_CONV_FUSED: Winograd for 3x3 stride-1 layers with enough channels (tile chosen by map size), im2col + GEMM
 * elsewhere. Bias, batch norm and activation are fused in every engine.
 * Training on the CPU, with oneDNN: a convolution's forward and both gradients run as oneDNN convolutions
 * (conv_train_onednn.h; grouped ones excepted) under ONEDNN and in bf16 for every layer, under AUTO in float32
 * for kernels larger than 1x1 (1x1 ones on im2col-free GEMM, as at inference); the other values, and builds
 * without oneDNN, im2col + GEMM per image. */
typedef enum dn_conv_algo {
    DN_CONV_AUTO = 0,
    DN_CONV_GEMM = 1,         /* the fused path, but im2col + GEMM for every layer (no Winograd) */
    DN_CONV_WINOGRAD_F2 = 2,  /* Winograd F(2x2,3x3) wherever Winograd applies */
    DN_CONV_WINOGRAD_F4 = 3,  /* Winograd F(4x4,3x3) wherever Winograd applies */
    DN_CONV_PLAIN = 4,        /* the training path's convolution, unfused (a reference for tests) */
    DN_CONV_ONEDNN = 5,       /* oneDNN for every layer it implements (falls back, with a warning, when the
                                 library was built without it) */
    DN_CONV_FUSED = 6         /* the hand-written fused path alone: Winograd F(4x4) from 24x24 maps, F(2x2) below,
                                 im2col + GEMM elsewhere (AUTO's choice when the library has no oneDNN) */
} dn_conv_algo;

/* Arithmetic of the CPU inference path. BF16, through oneDNN: as one oneDNN network, every layer multiplies in
 * bfloat16 (inputs, weights and the outputs kept between layers rounded to 8 significant bits) and accumulates
 * in float32; the [yolo] layers' inputs and the last output are float32; a first convolution + max pool run by
 * the hand-written kernel (DN_ENGINE_STEM) multiplies in float32 and rounds its output. Layer by layer (a network that path
 * declines), convolutions with at least 16 input channels per group run so and narrower ones float32. Needs a
 * CPU with AMX or AVX512_BF16. Training: convolutions with at least 16 input channels per group take bfloat16
 * operands (their input, weights and output gradient rounded) in oneDNN's training convolutions and sum in
 * float32 (a layer on im2col + GEMM instead: its products with K >= 128, through oneDNN matmul); weights,
 * gradients, batch norm and the loss stay float32. */
typedef enum dn_precision { DN_PRECISION_F32 = 0, DN_PRECISION_BF16 = 1 } dn_precision;

/* The engine a [convolutional] layer's last forward ran on (dn_layer_info.engine). */
typedef enum dn_conv_engine {
    DN_ENGINE_NONE = 0,         /* no forward yet */
    DN_ENGINE_PLAIN = 1,        /* im2col + GEMM, then bias/batch norm and activation (DN_CONV_PLAIN, and
                                   training without oneDNN's convolutions) */
    DN_ENGINE_FUSED = 2,        /* the hand-written fused path (Winograd or im2col + GEMM) */
    DN_ENGINE_ONEDNN = 3,       /* oneDNN, float32 (at inference, or training's convolutions) */
    DN_ENGINE_ONEDNN_BF16 = 4,  /* oneDNN, bfloat16 multiplies */
    DN_ENGINE_DEVICE = 5,       /* the network's device backend (CUDA) */
    DN_ENGINE_STEM = 6          /* the first convolution fused with the max pool after it (AVX-512, by hand) */
} dn_conv_engine;

/* Per-network options, given at load. Fill with dn_options_init, then change what you need. */
/* dn_options.device for tests: the CPU's memory and kernels behind the code paths of a device backend. */
#define DN_DEVICE_CPU_STAGED -2

typedef struct dn_options {
    int device;              /* -1 = CPU (default); k >= 0 = CUDA device k; DN_DEVICE_CPU_STAGED (tests) */
    int conv_algo;           /* dn_conv_algo */
    int threads;             /* threads for this network's calls; 0 = the process setting (dn_set_threads) */
    int allow_tf32;          /* CUDA: let cuBLAS/cuDNN use TensorFloat-32 tensor cores (faster, ~1e-3 relative) */
    uint64_t memory_limit;   /* bytes this network may claim (parameters, layer outputs, workspace, caches and,
                                once it trains, the training buffers), counted from the shapes before allocating;
                                0 = DN_DEFAULT_MEMORY_LIMIT. Over it: DN_E_CFG at load, DN_E_ARG from set_batch,
                                resize and the first training call, with the bytes needed and the largest layer */
    int precision;           /* dn_precision: BF16 is refused (DN_E_ARG) on CPUs without AMX/AVX512_BF16 */
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
    /* [route]: up to 4 source layers (absolute indices), n_sources of them; [shortcut]: its `from` layer
     * (n_sources = 1), its activation in `activation` */
    int n_sources;
    int sources[4];
    /* [convolutional]: zero padding on each side; [maxpool]: Darknet's total `padding` (the window starts at
     * -padding/2) */
    int padding;
    float scale;         /* [upsample]: the factor applied after the nearest-neighbour copy */
    /* [convolutional] only: the dn_conv_engine its last forward ran on */
    int engine;
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
    int threads;         /* the thread team this network's last compute call ran with (0 before the first) */
} dn_net_info;

int dn_abi_version(void);
/* 1 when none of x[0..n) is NaN or infinite (a whole input checked in about the time of one read of it). */
int dn_all_finite(const float *x, size_t n);
const char *dn_last_error(void);
void dn_set_log_callback(dn_log_fn fn, void *user);
/* Threads for BLAS and for the element-wise loops of this process; 0 = all cores. Applies to every network
 * whose options say threads = 0, whichever thread drives it. */
void dn_set_threads(int n);
int dn_get_threads(void);
const char *dn_blas_name(void);
/* What this library was built with, as "key=value" lines: abi, blas, openmp (_OPENMP, 0 = none), cuda (the CUDA
 * runtime version built against, e.g. 13000; 0 = a CPU-only build), cudnn (version, 0 = without), cublas,
 * cuda_archs (the GPU code it carries). Other keys may be added; readers must ignore those they do not know. */
const char *dn_build_info(void);
/* CUDA devices the driver reports: 0 on a CPU-only build, without a driver or without a device. */
int dn_cuda_device_count(void);
/* Page-locks (pins) host memory that will be given as a network's input on `device`, a data loader's batch
 * buffers, so that its copies to the device run by DMA and asynchronously, overlapping the work already queued;
 * dn_host_unpin undoes it before the memory is freed. *pinned (may be NULL) is 1 when the memory was pinned, 0
 * when `device` works in host memory (-1, the CPU: nothing to do). DN_E_CUDA names the device and the range
 * when the driver refuses (already pinned, not pinnable memory, no such device, a build without CUDA). */
dn_status dn_host_pin(int device, void *host, size_t bytes, int *pinned);
dn_status dn_host_unpin(int device, void *host);
/* oneDNN's version ("3.2.0") when the library was built with it, else "". */
const char *dn_onednn_version(void);
/* 1 when precision BF16 can run here; isa (may be NULL) gets oneDNN's name for this CPU's instruction set. */
int dn_bf16_supported(const char **isa);
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

/* Inference forward of n images (n <= batch): input float[n * channels * height * width]. DN_E_ARG when it
 * holds a NaN or an infinity. */
dn_status dn_network_forward(dn_network *net, const float *input, int n);
/* 1 when the last inference forward ran the network as one oneDNN network (net_onednn.h: layers' outputs kept in
 * oneDNN's layouts, read back on demand), 0 when it ran layer by layer or there was none yet. */
int dn_network_ran_whole_onednn(const dn_network *net);
/* Copies the first `count` floats of a layer's output after the last forward into out: images one after the
 * other, outputs = out_c*out_h*out_w floats each; count <= batch * outputs. */
dn_status dn_network_layer_output(dn_network *net, int index, float *out, size_t count);
/* The same for a layer's delta after the last training forward/backward (DN_E_ARG before any training). */
dn_status dn_network_layer_delta(dn_network *net, int index, float *out, size_t count);

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
/* The parameter and update blocks (n_params floats each, .weights order), for tests and multi-device
 * reduction: copy `count` floats from offset out of them, or into them. */
dn_status dn_network_get_params(dn_network *net, size_t offset, size_t count, float *out);
dn_status dn_network_set_params(dn_network *net, size_t offset, size_t count, const float *values);
dn_status dn_network_get_updates(dn_network *net, size_t offset, size_t count, float *out);
dn_status dn_network_set_updates(dn_network *net, size_t offset, size_t count, const float *values);

/* ---- Data parallelism: a communicator between replicas, one process per replica ----
 * Transports: MPI for host buffers (a library built with MPI, processes started by mpirun or srun) and NCCL
 * for CUDA device buffers (`make GPU=1 NCCL=1`). Collectives are blocking and must be called by every rank
 * in the same order. A transport that this library was built without is DN_E_COMM naming the make option. */
typedef struct dn_comm dn_comm;
#define DN_NCCL_UNIQUE_ID_BYTES 128
/* 1 when the transport is compiled in. */
int dn_comm_mpi_built(void);
int dn_comm_nccl_built(void);
/* MPI_COMM_WORLD's ranks (a duplicate of it); initialises MPI when nobody has yet. MPI is finalised when the
 * last MPI communicator this library made is freed (MPI cannot be initialised again after that). */
dn_status dn_comm_init_mpi(dn_comm **out);
/* NCCL: rank 0 makes the id, every rank receives it (over MPI or a rendezvous) and joins on its device. */
dn_status dn_comm_nccl_unique_id(unsigned char *id);
dn_status dn_comm_init_nccl(int size, int rank, const unsigned char *id, int device, dn_comm **out);
int dn_comm_rank(const dn_comm *comm);
int dn_comm_size(const dn_comm *comm);
/* "mpi" or "nccl". */
const char *dn_comm_transport(const dn_comm *comm);
/* 1 when the buffers of the collectives below are device memory (NCCL), 0 for host memory (MPI). */
int dn_comm_device_memory(const dn_comm *comm);
/* In place: buf[i] = sum over ranks of buf[i]. stream: NCCL's cudaStream_t (NULL = the communicator's own
 * stream); the call returns when the result is in buf. MPI ignores it. */
dn_status dn_comm_allreduce_sum(dn_comm *comm, float *buf, size_t n, void *stream);
/* bytes of root's buf to every rank's buf. */
dn_status dn_comm_broadcast(dn_comm *comm, void *buf, size_t bytes, int root, void *stream);
dn_status dn_comm_barrier(dn_comm *comm);
void dn_comm_free(dn_comm *comm);

/* Synchronous data parallelism over a communicator: N replicas of batch B train exactly as one replica of
 * batch N*B. The update block holds momentum*previous + this iteration's gradients (dn_network_update keeps
 * the momentum there), so the momentum must be counted once in the sum: rank 0 carries it and the other
 * ranks start every iteration with cleared buffers.
 * dn_network_allreduce_updates: in place, the update block = its sum over the ranks (the raw collective;
 *   it assumes the rule above holds); after dn_network_train_chunk_reduce it waits for the all-reduce that
 *   one started.
 * dn_network_update_replicated: the whole step after an iteration's chunks: the all-reduce, the SGD step of
 *   dn_network_update for batch_images (the images of ALL replicas in this iteration), then ranks other than
 *   0 clear their update blocks. Every rank ends with the same parameters.
 * dn_network_broadcast_params: root's parameters (batch-norm rolling statistics included) to every rank;
 *   call once at the start (`seen` is the caller's to share). The rolling statistics then stay per replica: the update block has
 *   no entries for them. */
dn_status dn_network_allreduce_updates(dn_network *net, dn_comm *comm);
dn_status dn_network_update_replicated(dn_network *net, dn_comm *comm, float learning_rate, float momentum,
                                       float decay, int batch_images);
dn_status dn_network_broadcast_params(dn_network *net, dn_comm *comm, int root);
/* The iteration's last chunk, with the all-reduce overlapped with its backward pass: as
 * dn_network_train_chunk, and each time the layers finished so far (from the last one) hold bucket_floats
 * gradients (0 = DN_ALLREDUCE_BUCKET_FLOATS) their part of the update block is handed to the transport while
 * the backward pass goes on; dn_network_update_replicated (or dn_network_allreduce_updates) then waits for
 * those instead of reducing the block itself. Same result as dn_network_train_chunk followed by the whole all-reduce. Transports without
 * asynchronous collectives (NCCL for now) and networks off the host reduce the whole block in the update. */
#define DN_ALLREDUCE_BUCKET_FLOATS 6553600
dn_status dn_network_train_chunk_reduce(dn_network *net, dn_comm *comm, const float *input, const float *truth,
                                        int n, float *cost, size_t bucket_floats);

/* The [yolo] layer on its own: x raw input float[n * cfg->n*(5+classes) * h * w]; writes output
 * (the activated values, same size), delta (same size) and, if not NULL, *cost and *stats. */
dn_status dn_yolo_loss(const dn_yolo_config *cfg, const float *x, int n, int h, int w, const float *truth,
                       float *output, float *delta, float *cost, dn_yolo_stats *stats);

/* The size (*new_w x *new_h, each >= 1) of a w x h image inside Darknet's net_w x net_h letterbox: the side
 * with the smaller scale fills the network (scales compared in float, as Darknet does), the other is truncated.
 * dn_letterbox_bgr uses it; map boxes back with the same sizes. */
dn_status dn_letterbox_size(int w, int h, int net_w, int net_h, int *new_w, int *new_h);
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
