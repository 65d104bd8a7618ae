/* Building a network from a cfg, shapes, forward/backward/update, and the public accessors. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

int layer_is(const dn_layer *l, const layer_ops *ops) { return l->ops == ops; }

dn_status layer_alloc(float **buf, size_t count)
{
    free(*buf);
    *buf = dn_calloc(count, sizeof(float));
    if (!*buf) return dn_fail(DN_E_NOMEM, "out of memory allocating %zu floats", count);
    return DN_OK;
}

dn_status layer_alloc_io(dn_layer *l, dn_network *net)
{
    if (net->planning) return DN_OK; /* shapes only: the memory budget is checked before anything is allocated */
    dn_status st = layer_alloc(&l->output, (size_t)net->batch * l->outputs);
    if (st) return st;
    if (net->training_buffers) return layer_alloc(&l->delta, (size_t)net->batch * l->outputs);
    free(l->delta);
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
    for (int i = 0; i < net->n; i++) {
        dn_layer *l = &net->layers[i];
        if (l->ops && l->ops->free_private) l->ops->free_private(l);
        free(l->output);
        free(l->delta);
    }
    free(net->layers);
    free(net->params);
    free(net->updates);
    free(net->workspace);
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
        if ((st = layer_alloc(&net->workspace, workspace))) goto done;
        net->workspace_floats = workspace;
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
    if (!st && !net->updates) {
        net->updates = dn_calloc(net->n_params, sizeof(float));
        if (!net->updates) st = dn_fail(DN_E_NOMEM, "out of memory for the update buffers");
    }
    if (st) net->training_buffers = 0;
    return st;
}

DN_EXPORT dn_status dn_network_init_params(dn_network *net, uint64_t seed)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    dn_rng rng;
    dn_rng_seed(&rng, seed);
    for (int i = 0; i < net->n; i++)
        if (layer_is(&net->layers[i], &conv_ops)) conv_init_params(&net->layers[i], net, &rng);
    net->params_version++;
    if (net->updates) memset(net->updates, 0, net->n_params * sizeof(float));
    return DN_OK;
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
    if (o->conv_algo < DN_CONV_AUTO || o->conv_algo > DN_CONV_PLAIN)
        return dn_fail(DN_E_ARG, "unknown convolution algorithm %d", o->conv_algo);
    if (o->threads < 0) return dn_fail(DN_E_ARG, "threads must be >= 0, got %d", o->threads);
    if (o->device < -1) return dn_fail(DN_E_ARG, "device must be -1 (CPU) or a CUDA device index, got %d", o->device);
    if (o->device >= 0)
        return dn_fail(DN_E_CUDA, "device cuda:%d asked for, but this libdarknet.so was built without CUDA "
                       "(rebuild with `make GPU=1`)", o->device);
    return DN_OK;
}

DN_EXPORT dn_status dn_network_load_cfg(const char *cfg_path, int batch, dn_network **out)
{
    return dn_network_load(cfg_path, batch, NULL, out);
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
        if (!strcmp(name, "convolutional") || !strcmp(name, "conv")) st = make_convolutional(&b, l);
        else if (!strcmp(name, "maxpool") || !strcmp(name, "max")) st = make_maxpool(&b, l);
        else if (!strcmp(name, "route")) st = make_route(&b, l);
        else if (!strcmp(name, "shortcut")) st = make_shortcut(&b, l);
        else if (!strcmp(name, "upsample")) st = make_upsample(&b, l);
        else if (!strcmp(name, "yolo")) st = make_yolo(&b, l);
        else if (!strcmp(name, "net") || !strcmp(name, "network"))
            st = dn_fail(DN_E_CFG, "%s:%d: [%s] may only be the first section", cfg_path, s->line, name);
        else
            st = dn_fail(DN_E_CFG, "%s:%d: unknown section [%s] (supported: net, convolutional, maxpool, route, "
                         "shortcut, upsample, yolo)", cfg_path, s->line, name);
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
    net->params = dn_calloc(offset, sizeof(float));
    if (!net->params) { st = dn_fail(DN_E_NOMEM, "out of memory for %zu parameters", offset); goto fail; }
    for (int i = 0; i < net->n; i++) {
        if (!layer_is(&net->layers[i], &yolo_ops)) continue;
        net->info.n_yolo++;
        dn_layer_info yi;
        dn_network_layer_info(net, i, &yi);
        if (yi.max_boxes > net->max_boxes) net->max_boxes = yi.max_boxes;
    }
    if (net->max_boxes == 0) net->max_boxes = 90;
    net->info.n_layers = net->n;
    if ((st = dn_network_reshape(net))) goto fail;
    dn_network_init_params(net, 0x5eedULL);
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

static void forward_layers(dn_network *net, const float *input, int n)
{
    const float *in = input;
    for (int i = 0; i < net->n; i++) {
        dn_layer *l = &net->layers[i];
        if (net->train && l->delta) memset(l->delta, 0, sizeof(float) * (size_t)n * l->outputs);
        l->ops->forward(l, net, in, n);
        in = l->output;
    }
}

DN_EXPORT dn_status dn_network_forward(dn_network *net, const float *input, int n)
{
    dn_status st = check_io(net, input, n);
    if (st) return st;
    net->train = 0;
    forward_layers(net, input, n);
    return DN_OK;
}

DN_EXPORT const float *dn_network_layer_output(dn_network *net, int index)
{
    if (!net || index < 0 || index >= net->n) return NULL;
    return net->layers[index].output;
}

DN_EXPORT const float *dn_network_layer_delta(dn_network *net, int index)
{
    if (!net || index < 0 || index >= net->n) return NULL;
    return net->layers[index].delta;
}

static float total_cost(const dn_network *net)
{
    float cost = 0;
    for (int i = 0; i < net->n; i++)
        if (layer_is(&net->layers[i], &yolo_ops)) cost += yolo_layer_cost(&net->layers[i]);
    return cost;
}

static dn_status training_forward(dn_network *net, const float *input, const float *truth, int n)
{
    dn_status st = check_io(net, input, n);
    if (st) return st;
    if (!truth) return dn_fail(DN_E_ARG, "truth is NULL");
    if ((st = dn_network_alloc_training(net))) return st;
    net->train = 1;
    net->truth = truth;
    forward_layers(net, input, n);
    for (int i = 0; i < net->n; i++) {
        const dn_layer *l = &net->layers[i];
        if (layer_is(l, &yolo_ops) && (st = yolo_layer_loss_status(l))) {
            net->train = 0;
            return st;
        }
        if (layer_is(l, &yolo_ops) && !isfinite(yolo_layer_cost(l))) {
            net->train = 0;
            return dn_fail(DN_E_NUMERIC, "the cost of [yolo] layer %d is not finite (diverged? lower the "
                           "learning rate)", i);
        }
    }
    return DN_OK;
}

DN_EXPORT dn_status dn_network_train_chunk(dn_network *net, const float *input, const float *truth, int n,
                                           float *cost)
{
    dn_status st = training_forward(net, input, truth, n);
    if (st) return st;
    for (int i = net->n - 1; i >= 0; i--) {
        dn_layer *l = &net->layers[i];
        const float *in = i ? net->layers[i - 1].output : input;
        float *in_delta = i ? net->layers[i - 1].delta : NULL;
        l->ops->backward(l, net, in, in_delta, n);
    }
    net->train = 0;
    net->info.seen += (uint64_t)n;
    if (cost) *cost = total_cost(net);
    return DN_OK;
}

DN_EXPORT dn_status dn_network_loss(dn_network *net, const float *input, const float *truth, int n, float *cost)
{
    net->update_rolling = 0;
    dn_status st = training_forward(net, input, truth, n);
    net->update_rolling = 1;
    net->train = 0;
    if (st) return st;
    if (cost) *cost = total_cost(net);
    return DN_OK;
}

DN_EXPORT dn_status dn_network_forward_mode(dn_network *net, const float *input, int n, int train)
{
    dn_status st = check_io(net, input, n);
    if (st) return st;
    if (train && (st = dn_network_alloc_training(net))) return st;
    net->train = train ? 1 : 0;
    net->update_rolling = 0;
    net->truth = NULL;
    forward_layers(net, input, n);
    net->update_rolling = 1;
    net->train = 0;
    return DN_OK;
}

DN_EXPORT dn_status dn_network_zero_updates(dn_network *net)
{
    if (!net) return dn_fail(DN_E_ARG, "network is NULL");
    dn_status st = dn_network_alloc_training(net);
    if (st) return st;
    memset(net->updates, 0, net->n_params * sizeof(float));
    return DN_OK;
}

DN_EXPORT dn_status dn_network_backward_probe(dn_network *net, const float *input, int n, const float *last_delta,
                                              float *input_delta)
{
    if (!last_delta) return dn_fail(DN_E_ARG, "last_delta is NULL");
    dn_status st = dn_network_forward_mode(net, input, n, 1);
    if (st) return st;
    net->train = 1;
    dn_layer *last = &net->layers[net->n - 1];
    memcpy(last->delta, last_delta, sizeof(float) * (size_t)n * last->outputs);
    const size_t in_size = (size_t)n * net->w * net->h * net->c;
    if (input_delta) memset(input_delta, 0, sizeof(float) * in_size);
    for (int i = net->n - 1; i >= 0; i--) {
        dn_layer *l = &net->layers[i];
        const float *in = i ? net->layers[i - 1].output : input;
        float *in_delta = i ? net->layers[i - 1].delta : input_delta;
        l->ops->backward(l, net, in, in_delta, n);
    }
    net->train = 0;
    return DN_OK;
}

DN_EXPORT dn_status dn_network_update(dn_network *net, float learning_rate, float momentum, float decay,
                                      int batch_images)
{
    if (!net || batch_images < 1) return dn_fail(DN_E_ARG, "update needs a network and batch_images >= 1");
    if (!net->updates) return DN_OK; /* never trained: nothing accumulated */
    net->params_version++;
    float lr_over_b = learning_rate / (float)batch_images;
    float decay_b = decay * (float)batch_images;
    for (int i = 0; i < net->n; i++)
        if (layer_is(&net->layers[i], &conv_ops)) conv_update(&net->layers[i], net, lr_over_b, momentum, decay_b);
    return DN_OK;
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
    if (layer_is(l, &conv_ops)) conv_layer_info(l, out);
    if (layer_is(l, &yolo_ops)) yolo_layer_info(l, out);
    if (layer_is(l, &route_ops)) route_layer_info(l, out);
    return DN_OK;
}

DN_EXPORT dn_status dn_network_yolo_stats(const dn_network *net, int yolo_index, dn_yolo_stats *out)
{
    if (!net || !out) return dn_fail(DN_E_ARG, "NULL argument");
    int k = 0;
    for (int i = 0; i < net->n; i++) {
        if (!layer_is(&net->layers[i], &yolo_ops)) continue;
        if (k++ == yolo_index) return yolo_layer_stats(&net->layers[i], out);
    }
    return dn_fail(DN_E_ARG, "no [yolo] layer number %d (the network has %d)", yolo_index, k);
}

DN_EXPORT dn_status dn_network_yolo_anchors(const dn_network *net, int index, float *anchors, int *mask)
{
    if (!net || index < 0 || index >= net->n || !layer_is(&net->layers[index], &yolo_ops))
        return dn_fail(DN_E_ARG, "layer %d is not a [yolo] layer", index);
    return yolo_layer_anchors(&net->layers[index], anchors, mask);
}

/* The caller may write through the pointer, so the parameters count as changed. */
DN_EXPORT float *dn_network_params(dn_network *net)
{
    if (!net) return NULL;
    net->params_version++;
    return net->params;
}

DN_EXPORT float *dn_network_updates(dn_network *net)
{
    if (!net) return NULL;
    if (!net->updates) dn_network_alloc_training(net);
    return net->updates;
}
