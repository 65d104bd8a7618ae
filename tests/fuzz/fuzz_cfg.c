/* libFuzzer harness: a cfg file from the fuzzer is loaded; a network that loads runs a forward pass, a resize
 * and another forward, a training step (forward, backward, update) at batch 2, and a weights save + reload.
 *
 * Invariants (beyond the sanitizers' memory and UB checks): a cfg that does not load is DN_E_CFG with a message
 * that starts with the file's path; under the harness's memory limit no allocation fails (the budget refuses
 * first); a refused resize leaves the network at its old size and usable; saved weights load back equal. */
#include <math.h>

#include "fuzz_common.h"

#define MAX_INPUT 32768                    /* bytes of cfg text */
#define MEMORY_LIMIT (16ull << 20)         /* small: inputs stay fast, and the budget itself is fuzzed */
#define MAX_RUN_BFLOPS 0.0005              /* run passes on networks of at most this much work per image */
#define MAX_SIDE 48                        /* of the resize */

static double network_bflops(const dn_network *net)
{
    double total = 0;
    for (int i = 0; i < net->n; i++) total += net->layers[i].bflops;
    return total;
}

/* Copies out every float of the last layer's output, so ASan checks its size; returns their sum. */
static double touch_output(dn_network *net, int n)
{
    const dn_layer *last = &net->layers[net->n - 1];
    const size_t count = (size_t)n * last->outputs;
    float *out = malloc(sizeof(float) * (count ? count : 1));
    FUZZ_CHECK(out != NULL, "output copy of %zu floats", count);
    FUZZ_CHECK(dn_network_layer_output(net, net->n - 1, out, count) == DN_OK, "no output: %s", dn_last_error());
    double sum = 0;
    for (size_t i = 0; i < count; i++) sum += out[i];
    free(out);
    return sum;
}

static int forward(dn_network *net, int n, uint32_t seed)
{
    const size_t count = (size_t)n * net->c * net->h * net->w;
    float *x = malloc(sizeof(float) * count);
    FUZZ_CHECK(x != NULL, "input of %zu floats", count);
    fuzz_fill(x, count, seed);
    dn_status st = dn_network_forward(net, x, n);
    FUZZ_CHECK(st == DN_OK, "forward failed: %s", dn_last_error());
    touch_output(net, n);
    free(x);
    return 0;
}

/* Batch 2, one box per image, a forward/backward and an SGD step. */
static void train_step(dn_network *net, uint32_t seed)
{
    if (dn_network_set_batch(net, 2) != DN_OK) return; /* over the memory limit: refused, fine */
    const int n = 2;
    const size_t count = (size_t)n * net->c * net->h * net->w;
    const size_t truth_floats = (size_t)n * net->max_boxes * 5;
    float *x = malloc(sizeof(float) * count);
    float *truth = calloc(truth_floats, sizeof(float));
    FUZZ_CHECK(x && truth, "buffers");
    fuzz_fill(x, count, seed);
    for (int b = 0; b < n; b++) {
        float *t = truth + (size_t)b * net->max_boxes * 5;
        t[0] = .3f + .2f * b; t[1] = .5f; t[2] = .2f; t[3] = .3f; t[4] = 0;
    }
    float cost = 0;
    dn_status st = dn_network_train_chunk(net, x, truth, n, &cost);
    /* The training buffers may be over the limit (DN_E_ARG); random weights may diverge (DN_E_NUMERIC). */
    FUZZ_CHECK(st == DN_OK || st == DN_E_ARG || st == DN_E_NUMERIC, "train_chunk: %d %s", st, dn_last_error());
    if (st == DN_OK) {
        FUZZ_CHECK(dn_network_update(net, .001f, .9f, .0005f, n) == DN_OK, "update: %s", dn_last_error());
        touch_output(net, n);
    }
    free(x);
    free(truth);
}

static void weights_round_trip(dn_network *net)
{
    static const char *path;
    if (!path) path = fuzz_path("roundtrip.weights");
    FUZZ_CHECK(dn_network_save_weights(net, path) == DN_OK, "save: %s", dn_last_error());
    float *saved = malloc(sizeof(float) * (net->n_params ? net->n_params : 1));
    FUZZ_CHECK(saved != NULL, "copy");
    memcpy(saved, net->params, sizeof(float) * net->n_params);
    int loaded = -1;
    FUZZ_CHECK(dn_network_load_weights(net, path, &loaded) == DN_OK, "reload: %s", dn_last_error());
    FUZZ_CHECK(memcmp(saved, net->params, sizeof(float) * net->n_params) == 0, "parameters changed");
    free(saved);
    unlink(path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    dn_set_log_callback(fuzz_quiet_log, NULL);
    dn_set_threads(1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_INPUT) return -1; /* not added to the corpus */
    static const char *path;
    if (!path) path = fuzz_path("input.cfg");
    fuzz_write(path, data, size);
    const uint32_t seed = fuzz_hash(data, size);
    dn_options opt;
    dn_options_init(&opt);
    opt.memory_limit = MEMORY_LIMIT;
    dn_network *net = NULL;
    dn_status st = dn_network_load(path, 1, &opt, &net);
    if (st != DN_OK) {
        const char *message = dn_last_error();
        FUZZ_CHECK(net == NULL, "a failed load returned a network");
        FUZZ_CHECK(st == DN_E_CFG, "load status %d (only DN_E_CFG expected under the memory limit): %s", st,
                   message);
        FUZZ_CHECK(strncmp(message, path, strlen(path)) == 0, "the message does not name the file: %s", message);
        return 0;
    }
    if (network_bflops(net) <= MAX_RUN_BFLOPS) {
        forward(net, 1, seed);
        /* Another size, from the input: 1 .. 2x the cfg's, at most MAX_SIDE. */
        const int old_w = net->w, old_h = net->h;
        int w = 1 + (int)(seed % (uint32_t)(2 * old_w)), h = 1 + (int)((seed >> 16) % (uint32_t)(2 * old_h));
        if (w > MAX_SIDE) w = MAX_SIDE;
        if (h > MAX_SIDE) h = MAX_SIDE;
        st = dn_network_resize(net, w, h);
        if (st != DN_OK) {
            FUZZ_CHECK(st == DN_E_CFG || st == DN_E_ARG, "resize status %d: %s", st, dn_last_error());
            FUZZ_CHECK(net->w == old_w && net->h == old_h, "a refused resize changed the size");
        }
        if (network_bflops(net) <= MAX_RUN_BFLOPS) {
            forward(net, 1, seed + 1);
            train_step(net, seed + 2);
        }
    }
    weights_round_trip(net);
    dn_network_free(net);
    return 0;
}
