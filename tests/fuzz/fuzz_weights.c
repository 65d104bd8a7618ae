/* libFuzzer harness: a .weights file from the fuzzer is loaded into a fixed small network (every layer kind).
 *
 * Invariants (beyond the sanitizers'): a rejected file is DN_E_WEIGHTS with a message that starts with its
 * path and leaves parameters and `seen` as they were; an accepted one matches SPEC §1.4 read independently
 * here (header size, `seen`, the payload copied into the parameter block on a layer boundary), fills at least
 * one layer, and the network then runs a forward pass. */
#include "fuzz_common.h"

#define MAX_INPUT (1 << 20)

/* Every layer kind, 54k parameters: conv (batch norm, leaky), maxpool, conv, route, upsample, shortcut, yolo. */
static const char NETWORK_CFG[] =
    "[net]\nbatch=1\nwidth=16\nheight=16\nchannels=3\n"
    "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
    "[maxpool]\nsize=2\nstride=2\n"
    "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
    "[convolutional]\nfilters=8\nsize=1\nstride=1\npad=1\nactivation=linear\n"
    "[upsample]\nstride=2\n"
    "[shortcut]\nfrom=-5\nactivation=linear\n"
    "[route]\nlayers=-1,0\n"
    "[convolutional]\nfilters=21\nsize=1\nstride=1\npad=1\nactivation=linear\n"
    "[yolo]\nmask=0,1,2\nanchors=2,3,4,5,6,7\nclasses=2\nnum=3\n";

static dn_network *net;
static float *initial;       /* the parameters after load, restored after every input */
static float *input;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc; (void)argv;
    dn_set_log_callback(fuzz_quiet_log, NULL);
    dn_set_threads(1);
    static const char *cfg;
    if (!cfg) cfg = fuzz_path("network.cfg");
    fuzz_write(cfg, (const uint8_t *)NETWORK_CFG, sizeof NETWORK_CFG - 1);
    FUZZ_CHECK(dn_network_load(cfg, 1, NULL, &net) == DN_OK, "the fixed network: %s", dn_last_error());
    initial = malloc(sizeof(float) * net->n_params);
    input = malloc(sizeof(float) * 3 * 16 * 16);
    FUZZ_CHECK(initial && input, "buffers");
    memcpy(initial, net->params, sizeof(float) * net->n_params);
    fuzz_fill(input, 3 * 16 * 16, 1);
    return 0;
}

/* SPEC §1.4: a 64-bit seen when major*10 + minor >= 2 and both are below 1000, else 32 bits. */
static size_t header_size(const uint8_t *data)
{
    int32_t v[2];
    memcpy(v, data, sizeof v);
    return (v[0] >= 0 && v[1] >= 0 && v[0] < 1000 && v[1] < 1000 && v[0] * 10 + v[1] >= 2) ? 20 : 16;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > MAX_INPUT) return -1;
    static const char *path;
    if (!path) path = fuzz_path("input.weights");
    fuzz_write(path, data, size);
    net->info.seen = 12345;
    int loaded = -1;
    dn_status st = dn_network_load_weights(net, path, &loaded);
    if (st != DN_OK) {
        const char *message = dn_last_error();
        FUZZ_CHECK(st == DN_E_WEIGHTS, "status %d: %s", st, message);
        FUZZ_CHECK(strncmp(message, path, strlen(path)) == 0, "the message does not name the file: %s", message);
        FUZZ_CHECK(net->info.seen == 12345, "a rejected file changed seen");
        FUZZ_CHECK(memcmp(initial, net->params, sizeof(float) * net->n_params) == 0,
                   "a rejected file changed the parameters");
        return 0;
    }
    FUZZ_CHECK(size >= 16, "a file of %zu bytes was accepted", size);
    const size_t header = header_size(data);
    const size_t floats = (size - header) / sizeof(float);
    FUZZ_CHECK((size - header) % sizeof(float) == 0 && floats > 0 && floats <= net->n_params,
               "accepted %zu bytes after a %zu-byte header", size - header, header);
    FUZZ_CHECK(loaded >= 1 && loaded <= net->n, "layers loaded: %d", loaded);
    const dn_layer *last = &net->layers[loaded - 1];
    FUZZ_CHECK(last->n_params && last->param_offset + last->n_params == floats, "not on a layer boundary");
    FUZZ_CHECK(memcmp(data + header, net->params, floats * sizeof(float)) == 0, "payload not copied");
    FUZZ_CHECK(memcmp(initial + floats, net->params + floats, (net->n_params - floats) * sizeof(float)) == 0,
               "layers past the file's end changed");
    if (header == 20) {
        uint64_t seen;
        memcpy(&seen, data + 12, 8);
        FUZZ_CHECK(net->info.seen == seen, "seen (64-bit)");
    } else {
        uint32_t seen;
        memcpy(&seen, data + 12, 4);
        FUZZ_CHECK(net->info.seen == seen, "seen (32-bit)");
    }
    FUZZ_CHECK(dn_network_forward(net, input, 1) == DN_OK, "forward: %s", dn_last_error());
    memcpy(net->params, initial, sizeof(float) * net->n_params);
    net->params_version++;
    return 0;
}
