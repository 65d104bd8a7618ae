/* The registry of layer kinds: cfg section names (and their aliases) -> the kind's ops (layer_*.c).
 * Adding a layer type: its layer_<kind>.c (and cuda/ twin kernels when it needs new ones), one line here, a test. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

extern const layer_ops conv_ops, maxpool_ops, route_ops, shortcut_ops, upsample_ops, yolo_ops;

static const struct {
    const char *section;
    const layer_ops *ops;
} registry[] = {
    {"convolutional", &conv_ops}, {"conv", &conv_ops},
    {"maxpool", &maxpool_ops},    {"max", &maxpool_ops},
    {"route", &route_ops},
    {"shortcut", &shortcut_ops},
    {"upsample", &upsample_ops},
    {"yolo", &yolo_ops},
};

#define N_KINDS (sizeof registry / sizeof *registry)

const layer_ops *layer_kind(const char *section)
{
    for (size_t i = 0; i < N_KINDS; i++)
        if (strcmp(section, registry[i].section) == 0) return registry[i].ops;
    return NULL;
}

void layer_kind_names(char *buf, size_t size)
{
    size_t used = 0;
    if (size) buf[0] = 0;
    for (size_t i = 0; i < N_KINDS && used < size; i++) {
        if (i > 0 && registry[i].ops == registry[i - 1].ops) continue; /* an alias */
        int k = snprintf(buf + used, size - used, "%s%s", used ? ", " : "", registry[i].section);
        if (k < 0) break;
        used += (size_t)k;
    }
}
