/* Building a network from a cfg, shapes, forward/backward/update, and the public accessors. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "conv_onednn.h"
#include "net_onednn.h"
#include "internal.h"

void layer_release(dn_network *net, void *buf)
{
    if (buf) net->be->release(net->be, buf);
}

/* Releases *old, then allocates count elements of size bytes (zeroed) into *out: NULL on failure. */
static dn_status realloc_buffer(dn_network *net, void *old, size_t count, size_t size, void **out)
{
    layer_release(net, old);
    *out = NULL;
    if (count == 0) count = 1;
    if (count > SIZE_MAX / size) return dn_fail(DN_E_NOMEM, "buffer of %zu x %zu bytes is too large", count, size);
    return net->be->alloc(net->be, count * size, out);
}

dn_status layer_alloc(dn_network *net, float **buf, size_t count)
{
    void *p;
    dn_status st = realloc_buffer(net, *buf, count, sizeof(float), &p);
    *buf = p;
    return st;
}

dn_status layer_alloc_int(dn_network *net, int **buf, size_t count)
{
    void *p;
    dn_status st = realloc_buffer(net, *buf, count, sizeof(int), &p);
    *buf = p;
    return st;
}

dn_status layer_alloc_io(dn_layer *l, dn_network *net)
{
    if (net->planning) return DN_OK; /* shapes only: the memory budget is checked before anything is allocated */
    dn_status st = layer_alloc(net, &l->output, (size_t)net->batch * l->outputs);
    if (st) return st;
    if (net->training_buffers) return layer_alloc(net, &l->delta, (size_t)net->batch * l->outputs);
    layer_release(net, l->delta);
    l->delta = NULL;
    return DN_OK;
}

static const char *const policy_names[] = {"constant", "steps", "step", "exp", "poly", "sig", "random"};

static dn_status parse_net_section(const cfg_file *f, cfg_section *s, dn_net_info *o)
{
    dn_status st;
    memset(o, 0, sizeof *o);
    /* The batch limits are dn_network_set_batch's: a training chunk is batch/subdivisions images. */
    if ((st = cfg_get_int_range(f, s, "batch", 1, 0, 1, DN_MAX_BATCH, &o->cfg_batch))) return st;
    if ((st = cfg_get_int_range(f, s, "subdivisions", 1, 0, 1, DN_MAX_BATCH, &o->subdivisions))) return st;
    if ((st = cfg_get_int_range(f, s, "width", 0, 1, 1, DN_MAX_SIDE, &o->width))) return st;
    if ((st = cfg_get_int_range(f, s, "height", 0, 1, 1, DN_MAX_SIDE, &o->height))) return st;
    if ((st = cfg_get_int_range(f, s, "channels", 0, 1, 1, DN_MAX_CHANNELS, &o->channels))) return st;
    if ((st = cfg_get_float(f, s, "learning_rate", .001f, 0, &o->learning_rate))) return st;
    if ((st = cfg_get_float(f, s, "momentum", .9f, 0, &o->momentum))) return st;
    if ((st = cfg_get_float(f, s, "decay", .0001f, 0, &o->decay))) return st;
    if ((st = cfg_get_int(f, s, "burn_in", 0, 0, &o->burn_in))) return st;
    if ((st = cfg_get_float(f, s, "power", 4, 0, &o->power))) return st;
    if ((st = cfg_get_int(f, s, "max_batches", 0, 0, &o->max_batches))) return st;
    if ((st = cfg_get_int(f, s, "step", 1, 0, &o->step))) return st;
    if ((st = cfg_get_float(f, s, "gamma", 1, 0, &o->gamma))) return st;
    if ((st = cfg_get_float(f, s, "scale", 1, 0, &o->scale))) return st;
    if ((st = cfg_get_float(f, s, "angle", 0, 0, &o->angle))) return st;
    if ((st = cfg_get_float(f, s, "saturation", 1, 0, &o->saturation))) return st;
    if ((st = cfg_get_float(f, s, "exposure", 1, 0, &o->exposure))) return st;
    if ((st = cfg_get_float(f, s, "hue", 0, 0, &o->hue))) return st;
    if ((st = cfg_get_int(f, s, "flip", 1, 0, &o->flip))) return st;
    const char *policy = cfg_get_str(s, "policy", "constant");
    int known = 0;
    for (size_t i = 0; i < sizeof policy_names / sizeof *policy_names; i++)
        if (strcmp(policy, policy_names[i]) == 0) known = 1;
    if (!known)
        return dn_fail(DN_E_CFG, "%s:%d: [net] key 'policy': unknown policy '%s' (constant, steps, step, exp, poly, "
                       "sig, random)", f->path, cfg_find(s, "policy")->line, policy);
    snprintf(o->policy, sizeof o->policy, "%s", policy);
    int n_scales = 0;
    if ((st = cfg_get_int_list(f, s, "steps", o->steps, 32, &o->n_steps))) return st;
    if ((st = cfg_get_float_list(f, s, "scales", o->scales, 32, &n_scales))) return st;
    if (strcmp(policy, "steps") == 0 && n_scales != o->n_steps)
        return dn_fail(DN_E_CFG, "%s:%d: [net] 'steps' has %d values but 'scales' has %d", f->path, s->line,
                       o->n_steps, n_scales);
    /* Keys Darknet's [net] knows that this engine reads elsewhere or ignores on purpose. */
    static const char *const known_ignored[] = {"max_crop", "min_crop", "aspect", "time_steps", "notruth",
                                                "random", "letter_box", "mosaic", "adam", "B1", "B2", "eps",
                                                "inputs", "center", "clip", "max_chart_loss", "mixup"};
    for (size_t i = 0; i < sizeof known_ignored / sizeof *known_ignored; i++) cfg_find(s, known_ignored[i]);
    return DN_OK;
}

DN_EXPORT void dn_network_free(dn_network *net)
{
    if (!net) return;
    if (net->be) {
        for (int i = 0; i < net->n; i++) {
            dn_layer *l = &net->layers[i];
            if (l->ops && l->ops->free_private) l->ops->free_private(l, net);
            layer_release(net, l->output);
            layer_release(net, l->delta);
        }
        layer_release(net, net->params);
        layer_release(net, net->updates);
        layer_release(net, net->workspace);
        layer_release(net, net->input);
        layer_release(net, net->input_delta);
        net_onednn_free(net->onednn);
        dn_backend_destroy(net->be);
    }
    free(net->layers);
    free(net->cfg_path);
    free(net);
}

/* Past these a layer's int index arithmetic (a plane's y * w + x, a route's channel sum, an upsample's
 * w * stride one layer on) could overflow; the memory budget refuses far smaller networks anyway. */
#define MAX_LAYER_SIDE 65536
#define MAX_LAYER_PLANE (1 << 30)
#define MAX_LAYER_CHANNELS (1 << 20)

static int output_too_large(const dn_layer *l)
{
    return l->out_w > MAX_LAYER_SIDE || l->out_h > MAX_LAYER_SIDE || l->out_c > MAX_LAYER_CHANNELS ||
           (size_t)l->out_w * l->out_h > MAX_LAYER_PLANE;
}

/* Recompute every shape from the network input down; with allocate, also (re)allocate the batch-sized buffers
 * (without, the layers compute shapes only: net->planning). */
static dn_status reshape_layers(dn_network *net, int allocate)
{
    dn_status st = DN_OK;
    size_t workspace = 0;
    net->planning = !allocate;
    for (int i = 0; i < net->n; i++) {
        dn_layer *l = &net->layers[i];
        if (i == 0) {
            l->w = net->w; l->h = net->h; l->c = net->c;
        } else {
            l->w = net->layers[i - 1].out_w; l->h = net->layers[i - 1].out_h; l->c = net->layers[i - 1].out_c;
        }
        l->inputs = (size_t)l->w * l->h * l->c;
        if ((st = l->ops->reshape(l, net))) goto done;
        if (l->out_w < 1 || l->out_h < 1 || l->out_c < 1 || output_too_large(l)) {
            st = dn_fail(DN_E_CFG, "%s: layer %d (%s) has an %s output (%d x %d x %d) for a %d x %d input",
                         net->cfg_path, i, l->ops->type, output_too_large(l) ? "oversized" : "empty", l->out_w,
                         l->out_h, l->out_c, net->w, net->h);
            goto done;
        }
        if (l->workspace_floats > workspace) workspace = l->workspace_floats;
    }
    if (allocate && workspace > net->workspace_floats) {
        st = layer_alloc(net, &net->workspace, workspace);
        net->workspace_floats = st ? 0 : workspace; /* the old one is gone either way */
        if (st) goto done;
    }
    if (allocate && !net->be->host_memory) {
        /* The caller's input (host memory) is copied here before a forward. */
        const size_t in = (size_t)net->batch * net->w * net->h * net->c;
        st = layer_alloc(net, &net->input, in);
        if (!st && net->training_buffers) st = layer_alloc(net, &net->input_delta, in);
        if (st) goto done;
    }
    net->info.batch = net->batch;
    net->info.width = net->w;
    net->info.height = net->h;
done:
    net->planning = 0;
    return st;
}

/* Shapes first, then the memory budget, and only then the allocations. */
dn_status dn_network_reshape(dn_network *net)
{
    net_onednn_free(net->onednn); /* its primitives and layouts are for the old shapes */
    net->onednn = NULL;
    net->onednn_declined = 0;
    dn_status st = reshape_layers(net, 0);
    if (!st) st = dn_memory_check(net, DN_E_ARG);
    if (!st) st = reshape_layers(net, 1);
    return st;
}

dn_status dn_network_alloc_training(dn_network *net)
{
    if (net->training_buffers) return DN_OK;
    net->training_buffers = 1; /* the budget counts the training buffers, the update block among them */
    dn_status st = dn_network_reshape(net);
    if (!st && !net->updates) st = layer_alloc(net, &net->updates, net->n_params);
    if (st) net->training_buffers = 0;
    return st;
}

DN_EXPORT dn_status dn_network_init_params(dn_network *net, uint64_t seed)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    dn_backend *be = net->be;
    /* Filled on the host (through a staging copy when the parameters live on a device). */
    float *host = be->host_memory ? net->params : dn_calloc(net->n_params, sizeof(float));
    if (!host) return dn_fail(DN_E_NOMEM, "out of memory for a host copy of %zu parameters", net->n_params);
    dn_rng rng;
    dn_rng_seed(&rng, seed);
    for (int i = 0; i < net->n; i++) {
        dn_layer *l = &net->layers[i];
        if (l->ops->init_params) l->ops->init_params(l, host + l->param_offset, &rng);
    }
    net->params_version++;
    dn_status st = DN_OK;
    if (!be->host_memory) {
        st = be->from_host(be, net->params, host, net->n_params * sizeof(float));
        free(host);
    }
    if (!st && net->updates) st = be->memset0(be, net->updates, net->n_params * sizeof(float));
    return st;
}

DN_EXPORT const char *dn_onednn_version(void) { return conv_onednn_version(); }

DN_EXPORT int dn_bf16_supported(const char **isa)
{
    const char *name = NULL;
    int ok = conv_onednn_built() && conv_onednn_bf16_supported(&name);
    if (isa) *isa = name ? name : "none (built without oneDNN)";
    return ok;
}

DN_EXPORT void dn_options_init(dn_options *options)
{
    if (!options) return;
    memset(options, 0, sizeof *options);
    options->device = -1;
    options->conv_algo = DN_CONV_AUTO;
}

static dn_status check_options(const dn_options *o)
{
    if (o->conv_algo < DN_CONV_AUTO || o->conv_algo > DN_CONV_FUSED)
        return dn_fail(DN_E_ARG, "unknown convolution algorithm %d", o->conv_algo);
    if (o->precision != DN_PRECISION_F32 && o->precision != DN_PRECISION_BF16)
        return dn_fail(DN_E_ARG, "unknown precision %d (0 = float32, 1 = bfloat16)", o->precision);
    if (o->precision == DN_PRECISION_BF16) {
        const char *isa = NULL;
        /* the options' own consistency first, then what this build and machine offer */
        if (o->conv_algo != DN_CONV_AUTO && o->conv_algo != DN_CONV_ONEDNN)
            return dn_fail(DN_E_ARG, "precision bf16 runs its convolutions through oneDNN: use conv_algo auto or "
                           "onednn, not %d", o->conv_algo);
        if (o->device >= 0)
            return dn_fail(DN_E_ARG, "precision bf16 is a CPU mode; CUDA device %d runs float32", o->device);
        if (!conv_onednn_built())
            return dn_fail(DN_E_ARG, "precision bf16 needs oneDNN, and this library was built without it "
                           "(pip install onednn-cpu-gomp onednn-devel-cpu-gomp, then rebuild)");
        if (!conv_onednn_bf16_supported(&isa))
            return dn_fail(DN_E_ARG, "precision bf16 needs a CPU with AMX or AVX512_BF16; this one offers %s "
                           "(oneDNN's instruction set name)", isa);
    }
    if (o->conv_algo == DN_CONV_ONEDNN && !conv_onednn_built())
        dn_log(DN_LOG_WARNING, "conv_algo onednn: this library was built without oneDNN; using the hand-written "
               "convolutions");
    if (o->threads < 0) return dn_fail(DN_E_ARG, "threads must be >= 0, got %d", o->threads);
    if (o->device < DN_DEVICE_CPU_STAGED)
        return dn_fail(DN_E_ARG, "device must be -1 (CPU) or a CUDA device index, got %d", o->device);
    return DN_OK;
}

DN_EXPORT dn_status dn_network_load_cfg(const char *cfg_path, int batch, dn_network **out)
{
    return dn_network_load(cfg_path, batch, NULL, out);
}

/* Sets delta_set_by_next where the next layer's backward is the only one that writes a layer's delta and can set
 * it: the training forward then need not zero it (on the host, a pass over every such delta: 1.8% of a yolov3-tiny
 * iteration in perf), and the writer stores instead of adding. Host-memory backends only. */
static void mark_delta_writers(dn_network *net)
{
    int *writers = net->be->host_memory ? calloc((size_t)net->n, sizeof *writers) : NULL;
    if (!writers) return; /* every delta zeroed, as before */
    for (int j = 0; j < net->n; j++) {
        const dn_layer *l = &net->layers[j];
        dn_layer_info info;
        dn_network_layer_info(net, j, &info);
        if (j > 0 && !l->ops->sources_only) writers[j - 1]++;
        for (int k = 0; k < info.n_sources && k < 4; k++)
            if (info.sources[k] >= 0 && info.sources[k] < net->n) writers[info.sources[k]]++;
    }
    for (int i = 0; i + 1 < net->n; i++) {
        const layer_ops *next = net->layers[i + 1].ops;
        net->layers[i].delta_set_by_next = writers[i] == 1 && next->can_set_in_delta && !next->sources_only;
    }
    free(writers);
}

DN_EXPORT dn_status dn_network_load(const char *cfg_path, int batch, const dn_options *options, dn_network **out)
{
    if (!out) return dn_fail(DN_E_ARG, "out pointer is NULL");
    *out = NULL;
    dn_options opt;
    dn_options_init(&opt);
    if (options) opt = *options;
    dn_status st = check_options(&opt);
    if (st) return st;
    if (batch > DN_MAX_BATCH) return dn_fail(DN_E_ARG, "batch %d out of range (1..%d)", batch, DN_MAX_BATCH);
    cfg_file cfg;
    if ((st = cfg_read(cfg_path, &cfg))) return st;
    dn_network *net = dn_calloc(1, sizeof *net);
    if (!net) { st = dn_fail(DN_E_NOMEM, "out of memory"); goto fail; }
    net->opt = opt;
    if ((st = dn_backend_create(opt.device, opt.allow_tf32, &net->be))) goto fail;
    net->cfg_path = strdup(cfg_path);
    cfg_section *first = &cfg.sections[0];
    if (strcmp(first->name, "net") != 0 && strcmp(first->name, "network") != 0) {
        st = dn_fail(DN_E_CFG, "%s:%d: the first section must be [net], found [%s]", cfg_path, first->line,
                     first->name);
        goto fail;
    }
    if ((st = parse_net_section(&cfg, first, &net->info))) goto fail;
    cfg_warn_unused(&cfg, first);
    net->w = net->info.width;
    net->h = net->info.height;
    net->c = net->info.channels;
    net->batch = batch > 0 ? batch : net->info.cfg_batch / net->info.subdivisions;
    if (net->batch < 1) net->batch = 1;
    net->info.major = 0; net->info.minor = 2; net->info.revision = 0;
    net->n = cfg.n_sections - 1;
    if (net->n < 1) { st = dn_fail(DN_E_CFG, "%s: the cfg has no layers after [net]", cfg_path); goto fail; }
    net->layers = dn_calloc((size_t)net->n, sizeof(dn_layer));
    if (!net->layers) { st = dn_fail(DN_E_NOMEM, "out of memory"); goto fail; }

    size_t offset = 0;
    net->planning = 1; /* shapes only until the memory budget has been checked */
    for (int i = 0; i < net->n; i++) {
        cfg_section *s = &cfg.sections[i + 1];
        dn_layer *l = &net->layers[i];
        l->index = i;
        l->groups = 1;
        if (i == 0) {
            l->w = net->w; l->h = net->h; l->c = net->c;
        } else {
            l->w = net->layers[i - 1].out_w; l->h = net->layers[i - 1].out_h; l->c = net->layers[i - 1].out_c;
        }
        l->inputs = (size_t)l->w * l->h * l->c;
        layer_build b = {&cfg, s, net, i};
        const char *name = s->name;
        l->ops = layer_kind(name);
        if (l->ops) {
            st = l->ops->make(&b, l);
        } else if (!strcmp(name, "net") || !strcmp(name, "network")) {
            st = dn_fail(DN_E_CFG, "%s:%d: [%s] may only be the first section", cfg_path, s->line, name);
        } else {
            char kinds[256];
            layer_kind_names(kinds, sizeof kinds);
            st = dn_fail(DN_E_CFG, "%s:%d: unknown section [%s] (supported: net, %s)", cfg_path, s->line, name, kinds);
        }
        if (st) goto fail;
        l->param_offset = offset;
        offset += l->n_params;
        /* make_* read the keys they use; the rest are the user's typos or unsupported options. */
        cfg_warn_unused(&cfg, s);
        /* Compute this layer's shape now so the next layer (and route/shortcut checks) see it. */
        if ((st = l->ops->reshape(l, net))) goto fail;
        if (l->out_w < 1 || l->out_h < 1 || l->out_c < 1 || output_too_large(l)) {
            st = dn_fail(DN_E_CFG, "%s:%d: [%s] layer %d has an %s output (%d x %d x %d)", cfg_path, s->line, name,
                         i, output_too_large(l) ? "oversized" : "empty", l->out_w, l->out_h, l->out_c);
            goto fail;
        }
    }
    net->planning = 0;
    net->n_params = offset;
    net->info.n_params = offset;
    if ((st = dn_memory_check(net, DN_E_CFG))) goto fail;
    if ((st = layer_alloc(net, &net->params, offset))) goto fail;
    for (int i = 0; i < net->n; i++) {
        if (!net->layers[i].ops->cost) continue; /* the loss layers: [yolo] */
        net->info.n_yolo++;
        dn_layer_info yi;
        dn_network_layer_info(net, i, &yi);
        if (yi.max_boxes > net->max_boxes) net->max_boxes = yi.max_boxes;
    }
    if (net->max_boxes == 0) net->max_boxes = 90;
    net->info.n_layers = net->n;
    mark_delta_writers(net);
    if ((st = dn_network_reshape(net))) goto fail;
    if ((st = dn_network_init_params(net, 0x5eedULL))) goto fail;
    net->update_rolling = 1;
    cfg_free(&cfg);
    *out = net;
    return DN_OK;
fail:
    cfg_free(&cfg);
    dn_network_free(net);
    return st;
}

/* Reshape for a new batch or input size; on failure go back to the old ones, so the network stays usable, and
 * report the first error. */
static dn_status reshape_or_restore(dn_network *net, int old_w, int old_h, int old_batch)
{
    dn_status st = dn_network_reshape(net);
    if (!st) return DN_OK;
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", dn_last_error());
    net->w = old_w;
    net->h = old_h;
    net->batch = old_batch;
    dn_network_reshape(net);
    return dn_fail(st, "%s", saved);
}

DN_EXPORT dn_status dn_network_set_batch(dn_network *net, int batch)
{
    if (!net || batch < 1 || batch > DN_MAX_BATCH) return dn_fail(DN_E_ARG, "batch must be in 1..%d", DN_MAX_BATCH);
    if (batch == net->batch) return DN_OK;
    const int old = net->batch;
    net->batch = batch;
    return reshape_or_restore(net, net->w, net->h, old);
}

DN_EXPORT dn_status dn_network_resize(dn_network *net, int width, int height)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    if (width < 1 || height < 1 || width > DN_MAX_SIDE || height > DN_MAX_SIDE)
        return dn_fail(DN_E_ARG, "input size %d x %d out of range", width, height);
    const int old_w = net->w, old_h = net->h;
    net->w = width;
    net->h = height;
    return reshape_or_restore(net, old_w, old_h, net->batch);
}

static dn_status check_io(dn_network *net, const float *input, int n)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    if (!input) return dn_fail(DN_E_ARG, "input is NULL");
    if (n < 1 || n > net->batch)
        return dn_fail(DN_E_ARG, "%d images given but the network holds batch %d (use set_batch)", n, net->batch);
    return DN_OK;
}

/* The start of every compute call: this network's thread count and precision applied to the calling thread. */
static void enter(dn_network *net)
{
    net->info.threads = dn_threads_enter(net->opt.threads);
    dn_gemm_bf16_enter(net->opt.precision == DN_PRECISION_BF16);
}

/* The input in backend memory: the caller's buffer itself on the CPU, else a copy in net->input. */
static dn_status stage_input(dn_network *net, const float *input, int n, const float **in)
{
    if (net->be->host_memory) {
        *in = input;
        return DN_OK;
    }
    *in = net->input;
    return net->be->from_host_start(net->be, net->input, input, sizeof(float) * (size_t)n * net->w * net->h * net->c);
}

static dn_status forward_layers(dn_network *net, const float *in, int n);

/* The forward that follows stage_input: the input copy overlaps the work queued before it and the layers'
 * launches; the caller's buffer is free again when this returns. */
static dn_status forward_staged(dn_network *net, const float *in, int n)
{
    dn_status st = forward_layers(net, in, n);
    dn_status copied = net->be->from_host_finish(net->be);
    return st ? st : copied;
}

static dn_status forward_layers(dn_network *net, const float *in, int n)
{
    dn_status st = DN_OK;
    if (!net->train && net_onednn_wanted(net)) {
        st = net_onednn_forward(net, in, n);
        net->ran_whole_onednn = st == DN_OK;
        if (st != DN_E_NOTFOUND) return st;
        st = DN_OK;
    }
    net->ran_whole_onednn = 0;
    net_onednn_outputs_plain(net);
    for (int i = 0; i < net->n && !st; i++) {
        dn_layer *l = &net->layers[i];
        if (net->train && l->delta && !(net->backward_follows && l->delta_set_by_next))
            st = net->be->memset0(net->be, l->delta, sizeof(float) * (size_t)n * l->outputs);
        if (!st) st = l->ops->forward(l, net, in, n);
        in = l->output;
    }
    return st;
}

/* From the last layer's delta down; input_delta (backend memory, may be NULL) receives the input's. */
/* The backward pass from the last layer to the first; after_layer (may be NULL) runs after each layer's. */
static dn_status backward_layers_each(dn_network *net, const float *input, float *input_delta, int n,
                                      void (*after_layer)(dn_network *net, int layer, void *user), void *user)
{
    dn_status st = DN_OK;
    for (int i = net->n - 1; i >= 0 && !st; i--) {
        dn_layer *l = &net->layers[i];
        const float *in = i ? net->layers[i - 1].output : input;
        float *in_delta = i ? net->layers[i - 1].delta : input_delta;
        st = l->ops->backward(l, net, in, in_delta, n);
        if (!st && after_layer) after_layer(net, i, user);
    }
    return st;
}

static dn_status backward_layers(dn_network *net, const float *input, float *input_delta, int n)
{
    return backward_layers_each(net, input, input_delta, n, NULL, NULL);
}

/* A forward in inference (train = 0) or training mode without loss (train = 1, rolling averages untouched);
 * *in receives the input in backend memory. */
static dn_status forward_mode(dn_network *net, const float *input, int n, int train, const float **in)
{
    dn_status st = check_io(net, input, n);
    if (st) return st;
    if (train && (st = dn_network_alloc_training(net))) return st;
    enter(net);
    if ((st = stage_input(net, input, n, in))) return st;
    net->train = train ? 1 : 0;
    net->update_rolling = 0;
    net->truth = NULL;
    st = forward_staged(net, *in, n);
    net->update_rolling = 1;
    net->train = 0;
    return st;
}

DN_EXPORT dn_status dn_network_forward(dn_network *net, const float *input, int n)
{
    const float *in;
    dn_status st = check_io(net, input, n);
    if (st) return st;
    enter(net);
    net->train = 0;
    if (!net_onednn_checks_input(net, n) && !dn_all_finite(input, (size_t)n * net->c * net->h * net->w))
        return dn_fail(DN_E_ARG, "the input contains NaN or infinity");
    if ((st = stage_input(net, input, n, &in))) return st;
    return forward_staged(net, in, n);
}

/* Copies count floats from src (backend memory holding `avail`) to the host. */
static dn_status copy_out(dn_network *net, const float *src, size_t avail, size_t count, float *out, const char *what,
                          int index)
{
    if (count > avail)
        return dn_fail(DN_E_ARG, "layer %d %s: %zu floats asked, it holds %zu (batch %d)", index, what, count, avail,
                       net->batch);
    if (count && !out) return dn_fail(DN_E_ARG, "out is NULL");
    return count ? net->be->to_host(net->be, out, src, sizeof(float) * count) : DN_OK;
}

DN_EXPORT int dn_network_ran_whole_onednn(const dn_network *net) { return net && net->ran_whole_onednn; }

DN_EXPORT dn_status dn_network_layer_output(dn_network *net, int index, float *out, size_t count)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    if (index < 0 || index >= net->n) return dn_fail(DN_E_ARG, "layer index %d out of range 0..%d", index, net->n - 1);
    const dn_layer *l = &net->layers[index];
    dn_status st = net_onednn_export(net, index);
    return st ? st : copy_out(net, l->output, (size_t)net->batch * l->outputs, count, out, "output", index);
}

DN_EXPORT dn_status dn_network_layer_delta(dn_network *net, int index, float *out, size_t count)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    if (index < 0 || index >= net->n) return dn_fail(DN_E_ARG, "layer index %d out of range 0..%d", index, net->n - 1);
    const dn_layer *l = &net->layers[index];
    if (!l->delta) return dn_fail(DN_E_ARG, "layer %d has no delta: the network has not been trained", index);
    return copy_out(net, l->delta, (size_t)net->batch * l->outputs, count, out, "delta", index);
}

static float total_cost(const dn_network *net)
{
    float cost = 0;
    for (int i = 0; i < net->n; i++)
        if (net->layers[i].ops->cost) cost += net->layers[i].ops->cost(&net->layers[i]);
    return cost;
}

/* A training forward with the loss; *in receives the input in backend memory. */
static dn_status training_forward(dn_network *net, const float *input, const float *truth, int n, const float **in)
{
    dn_status st = check_io(net, input, n);
    if (st) return st;
    if (!truth) return dn_fail(DN_E_ARG, "truth is NULL");
    if ((st = dn_network_alloc_training(net))) return st;
    enter(net);
    if ((st = stage_input(net, input, n, in))) return st;
    net->train = 1;
    net->truth = truth;
    st = forward_staged(net, *in, n);
    net->truth = NULL;
    for (int i = 0; i < net->n && !st; i++) {
        const dn_layer *l = &net->layers[i];
        if (l->ops->cost && !isfinite(l->ops->cost(l)))
            st = dn_fail(DN_E_NUMERIC, "the cost of [%s] layer %d is not finite (diverged? lower the learning rate)",
                         l->ops->type, i);
    }
    if (st) net->train = 0;
    return st;
}

DN_EXPORT dn_status dn_network_train_chunk(dn_network *net, const float *input, const float *truth, int n,
                                           float *cost)
{
    return network_train_chunk_each_layer(net, input, truth, n, cost, NULL, NULL);
}

/* dn_network_train_chunk with a call after each layer's backward pass, from the last layer to the first: when
 * after_layer(net, i, user) runs, layer i's gradients for this chunk are complete in the update block (only
 * layer i's own backward writes its slice). comm.c starts the all-reduce of finished slices from there. */
dn_status network_train_chunk_each_layer(dn_network *net, const float *input, const float *truth, int n, float *cost,
                                         void (*after_layer)(dn_network *net, int layer, void *user), void *user)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    const float *in = NULL;
    net->backward_follows = 1;
    dn_status st = training_forward(net, input, truth, n, &in);
    if (!st) st = backward_layers_each(net, in, NULL, n, after_layer, user);
    net->backward_follows = 0;
    net->train = 0;
    if (st) return st;
    net->info.seen += (uint64_t)n;
    if (cost) *cost = total_cost(net);
    return DN_OK;
}

DN_EXPORT dn_status dn_network_loss(dn_network *net, const float *input, const float *truth, int n, float *cost)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    const float *in;
    net->update_rolling = 0;
    dn_status st = training_forward(net, input, truth, n, &in);
    net->update_rolling = 1;
    net->train = 0;
    if (st) return st;
    if (cost) *cost = total_cost(net);
    return DN_OK;
}

DN_EXPORT dn_status dn_network_forward_mode(dn_network *net, const float *input, int n, int train)
{
    const float *in;
    return forward_mode(net, input, n, train, &in);
}

DN_EXPORT dn_status dn_network_zero_updates(dn_network *net)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    dn_status st = dn_network_alloc_training(net);
    if (st) return st;
    return net->be->memset0(net->be, net->updates, net->n_params * sizeof(float));
}

DN_EXPORT dn_status dn_network_backward_probe(dn_network *net, const float *input, int n, const float *last_delta,
                                              float *input_delta)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    if (!last_delta) return dn_fail(DN_E_ARG, "last_delta is NULL");
    const float *in = NULL;
    net->backward_follows = 1;
    dn_status st = forward_mode(net, input, n, 1, &in);
    dn_backend *be = net->be;
    const size_t in_bytes = sizeof(float) * (size_t)n * net->w * net->h * net->c;
    float *d_input = NULL;
    if (input_delta) d_input = be->host_memory ? input_delta : net->input_delta;
    if (!st) {
        dn_layer *last = &net->layers[net->n - 1];
        st = be->from_host(be, last->delta, last_delta, sizeof(float) * (size_t)n * last->outputs);
    }
    if (!st && d_input) st = be->memset0(be, d_input, in_bytes);
    if (!st) {
        net->train = 1;
        st = backward_layers(net, in, d_input, n);
        net->train = 0;
    }
    net->backward_follows = 0;
    if (!st && d_input && !be->host_memory) st = be->to_host(be, input_delta, d_input, in_bytes);
    return st;
}

DN_EXPORT dn_status dn_network_update(dn_network *net, float learning_rate, float momentum, float decay,
                                      int batch_images)
{
    if (!net || batch_images < 1) return dn_fail(DN_E_ARG, "update needs a network and batch_images >= 1");
    if (!net->updates) return DN_OK; /* never trained: nothing accumulated */
    enter(net);
    net->params_version++;
    float lr_over_b = learning_rate / (float)batch_images;
    float decay_b = decay * (float)batch_images;
    dn_status st = DN_OK;
    for (int i = 0; i < net->n && !st; i++) {
        dn_layer *l = &net->layers[i];
        if (l->ops->update) st = l->ops->update(l, net, lr_over_b, momentum, decay_b);
    }
    return st;
}

DN_EXPORT dn_status dn_network_info(const dn_network *net, dn_net_info *out)
{
    if (!net || !out) return dn_fail(DN_E_ARG, "NULL argument");
    *out = net->info;
    return DN_OK;
}

DN_EXPORT dn_status dn_network_set_seen(dn_network *net, uint64_t seen)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    net->info.seen = seen;
    return DN_OK;
}

DN_EXPORT dn_status dn_network_layer_info(const dn_network *net, int index, dn_layer_info *out)
{
    if (!net || !out) return dn_fail(DN_E_ARG, "NULL argument");
    if (index < 0 || index >= net->n) return dn_fail(DN_E_ARG, "layer index %d out of range 0..%d", index, net->n - 1);
    const dn_layer *l = &net->layers[index];
    memset(out, 0, sizeof *out);
    snprintf(out->type, sizeof out->type, "%s", l->ops->type);
    out->filters = l->filters; out->size = l->size; out->stride = l->stride; out->groups = l->groups;
    out->in_w = l->w; out->in_h = l->h; out->in_c = l->c;
    out->out_w = l->out_w; out->out_h = l->out_h; out->out_c = l->out_c;
    out->bflops = l->bflops;
    out->n_params = l->n_params;
    if (l->ops->info) l->ops->info(l, out);
    return DN_OK;
}

/* A range of the parameter or update block, checked. */
static dn_status check_range(const dn_network *net, size_t offset, size_t count, const void *buf)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    if (offset > net->n_params || count > net->n_params - offset)
        return dn_fail(DN_E_ARG, "floats %zu..%zu asked, the network has %zu parameters", offset, offset + count,
                       net->n_params);
    if (count && !buf) return dn_fail(DN_E_ARG, "buffer is NULL");
    return DN_OK;
}

DN_EXPORT dn_status dn_network_get_params(dn_network *net, size_t offset, size_t count, float *out)
{
    dn_status st = check_range(net, offset, count, out);
    if (st || !count) return st;
    return net->be->to_host(net->be, out, net->params + offset, count * sizeof(float));
}

DN_EXPORT dn_status dn_network_set_params(dn_network *net, size_t offset, size_t count, const float *values)
{
    dn_status st = check_range(net, offset, count, values);
    if (st || !count) return st;
    net->params_version++;
    return net->be->from_host(net->be, net->params + offset, values, count * sizeof(float));
}

DN_EXPORT dn_status dn_network_get_updates(dn_network *net, size_t offset, size_t count, float *out)
{
    dn_status st = check_range(net, offset, count, out);
    if (!st) st = dn_network_alloc_training(net);
    if (st || !count) return st;
    return net->be->to_host(net->be, out, net->updates + offset, count * sizeof(float));
}

DN_EXPORT dn_status dn_network_set_updates(dn_network *net, size_t offset, size_t count, const float *values)
{
    dn_status st = check_range(net, offset, count, values);
    if (!st) st = dn_network_alloc_training(net);
    if (st || !count) return st;
    return net->be->from_host(net->be, net->updates + offset, values, count * sizeof(float));
}

