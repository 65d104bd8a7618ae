/* .weights files (SPEC §1.4): header, then every layer's parameters in cfg order, nothing else.
 * The parameter block is laid out in exactly that order, so loading and saving are contiguous copies. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* Reads `floats` parameters into the block: straight into host memory, through a host staging copy for a
 * device backend. */
static dn_status read_params(dn_network *net, FILE *fp, size_t floats, const char *path)
{
    dn_backend *be = net->be;
    float *host = be->host_memory ? net->params : dn_calloc(floats, sizeof(float));
    if (!host) return dn_fail(DN_E_NOMEM, "%s: out of memory for a host copy of %zu parameters", path, floats);
    dn_status st = DN_OK;
    if (fread(host, sizeof(float), floats, fp) != floats)
        st = dn_fail(DN_E_IO, "%s: read error: %s", path, strerror(errno));
    if (!be->host_memory) {
        if (!st) st = be->from_host(be, net->params, host, floats * sizeof(float));
        free(host);
    }
    return st;
}

/* The parameter block in host memory: the block itself, or a copy (free it when *copy is set). */
static dn_status params_on_host(dn_network *net, const float **host, float **copy)
{
    *copy = NULL;
    if (net->be->host_memory) {
        *host = net->params;
        return DN_OK;
    }
    *copy = dn_calloc(net->n_params, sizeof(float));
    if (!*copy) return dn_fail(DN_E_NOMEM, "out of memory for a host copy of %zu parameters", net->n_params);
    dn_status st = net->be->to_host(net->be, *copy, net->params, net->n_params * sizeof(float));
    *host = *copy;
    return st;
}

/* The formats Darknet has written: 0.1.x (32-bit seen), 0.2.x (64-bit seen); a major or minor above 1000 is
 * its flag for transposed fully-connected matrices (and a 32-bit seen). */
static int known_version(int major, int minor)
{
    return major > 1000 || minor > 1000 || (major == 0 && minor <= 2);
}

DN_EXPORT dn_status dn_network_load_weights(dn_network *net, const char *path, int *layers_loaded)
{
    if (!net || !path) return dn_fail(DN_E_ARG, "NULL argument");
    if (layers_loaded) *layers_loaded = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        if (errno == ENOENT) return dn_fail(DN_E_NOTFOUND, "%s: weights file not found", path);
        return dn_fail(DN_E_IO, "%s: cannot open weights file: %s", path, strerror(errno));
    }
    dn_status st = DN_OK;
    int32_t version[3];
    uint64_t seen = 0;
    long size = -1;
    if (fseek(fp, 0, SEEK_END) == 0) size = ftell(fp);
    if (size < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        st = dn_fail(DN_E_IO, "%s: cannot determine the file size (not a regular file?)", path);
        goto done;
    }
    if (fread(version, sizeof(int32_t), 3, fp) != 3) {
        st = dn_fail(DN_E_WEIGHTS, "%s: bad header: the file has %ld bytes, fewer than a weights header", path, size);
        goto done;
    }
    const int major = version[0], minor = version[1];
    size_t header = 12;
    if (major < 0 || minor < 0 || version[2] < 0) {
        st = dn_fail(DN_E_WEIGHTS, "%s: bad header: negative version %d.%d.%d (not a Darknet weights file?)", path,
                     major, minor, version[2]);
        goto done;
    }
    /* Bounds first: major * 10 overflows an int for major > 214748364 (a corrupt header). */
    if (major < 1000 && minor < 1000 && major * 10 + minor >= 2) {
        if (fread(&seen, sizeof(uint64_t), 1, fp) != 1) {
            st = dn_fail(DN_E_WEIGHTS, "%s: bad header: the file ends inside the 64-bit 'seen' field", path);
            goto done;
        }
        header += 8;
    } else {
        uint32_t seen32;
        if (fread(&seen32, sizeof(uint32_t), 1, fp) != 1) {
            st = dn_fail(DN_E_WEIGHTS, "%s: bad header: the file ends inside the 32-bit 'seen' field", path);
            goto done;
        }
        seen = seen32;
        header += 4;
    }
    /* Only fully-connected layers are stored transposed in such files, and this engine has none. */

    /* Decide how many layers the file holds before touching the network, so a bad file changes nothing. */
    const size_t remaining = (size_t)size - header;
    size_t floats = 0;
    int n_loaded = 0, filled = 0, with_params = 0, cut_layer = -1;
    for (int i = 0; i < net->n; i++) {
        const dn_layer *l = &net->layers[i];
        if (!l->n_params) continue;
        with_params++;
        if (cut_layer >= 0 || remaining == floats * sizeof(float)) continue;
        if (remaining < (floats + l->n_params) * sizeof(float)) {
            cut_layer = i;
            continue;
        }
        floats += l->n_params;
        filled++;
        n_loaded = i + 1;
    }
    const int fits = cut_layer < 0 && remaining == floats * sizeof(float);
    if (!known_version(major, minor) && (!fits || floats == 0)) {
        st = dn_fail(DN_E_WEIGHTS, "%s: bad header: version %d.%d.%d is beyond any weights format that exists (Darknet "
                     "writes 0.1.x and 0.2.x; a major or minor above 1000 marks transposed layers), and the %zu bytes "
                     "after it do not fit the cfg (%s, %zu bytes of parameters): not a Darknet weights file?", path,
                     major, minor, version[2], remaining, net->cfg_path, net->n_params * sizeof(float));
        goto done;
    }
    if (cut_layer >= 0) {
        const dn_layer *l = &net->layers[cut_layer];
        st = dn_fail(DN_E_WEIGHTS, "%s: truncated: the file ends inside layer %d (%s, %zu parameters): %zu bytes "
                     "of it present, %zu needed", path, cut_layer, l->ops->type, l->n_params,
                     remaining - floats * sizeof(float), l->n_params * sizeof(float));
        goto done;
    }
    if (remaining > floats * sizeof(float)) {
        st = dn_fail(DN_E_WEIGHTS, "%s: the file is longer than the network: %zu bytes of parameters, the cfg "
                     "(%s) has %zu (wrong cfg for these weights?)", path, remaining, net->cfg_path,
                     net->n_params * sizeof(float));
        goto done;
    }
    if (floats == 0 && net->n_params > 0) {
        st = dn_fail(DN_E_WEIGHTS, "%s: the file holds no parameters (%ld bytes: a header only), so it fills no layer "
                     "of %s", path, size, net->cfg_path);
        goto done;
    }
    if (!known_version(major, minor))
        dn_log(DN_LOG_WARNING, "%s: version %d.%d.%d is beyond any weights format that exists; loaded as Darknet "
               "would, since its size fits the cfg", path, major, minor, version[2]);
    net->params_version++;
    if (floats && (st = read_params(net, fp, floats, path))) goto done;
    net->info.seen = seen;
    net->info.major = major;
    net->info.minor = minor;
    net->info.revision = version[2];
    if (layers_loaded) *layers_loaded = n_loaded;
    if (filled < with_params)
        dn_log(DN_LOG_INFO, "%s: partial weights: filled %d of the %d layers with parameters (layers 0..%d); the "
               "rest keep their initial values", path, filled, with_params, n_loaded - 1);
done:
    fclose(fp);
    return st;
}

DN_EXPORT dn_status dn_network_save_weights(dn_network *net, const char *path)
{
    if (!net || !path) return dn_fail(DN_E_ARG, "NULL argument");
    /* Write next to the target and rename, so a crash never leaves a half-written weights file. */
    size_t n = strlen(path);
    char *tmp = malloc(n + 5);
    if (!tmp) return dn_fail(DN_E_NOMEM, "out of memory");
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    const float *params = NULL;
    float *copy;
    dn_status st = params_on_host(net, &params, &copy);
    if (st) {
        free(copy);
        free(tmp);
        return st;
    }
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        st = dn_fail(errno == ENOENT ? DN_E_NOTFOUND : DN_E_IO, "%s: cannot write: %s", tmp, strerror(errno));
        free(copy);
        free(tmp);
        return st;
    }
    const int32_t version[3] = {0, 2, 0};
    const uint64_t seen = net->info.seen;
    int ok = fwrite(version, sizeof(int32_t), 3, fp) == 3 && fwrite(&seen, sizeof seen, 1, fp) == 1 &&
             fwrite(params, sizeof(float), net->n_params, fp) == net->n_params;
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    if (fclose(fp) != 0) ok = 0;
    if (!ok) {
        st = dn_fail(DN_E_IO, "%s: write failed: %s", tmp, strerror(errno));
        unlink(tmp);
    } else if (rename(tmp, path) != 0) {
        st = dn_fail(DN_E_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(errno));
        unlink(tmp);
    }
    free(copy);
    free(tmp);
    return st;
}
