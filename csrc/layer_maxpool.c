/* [maxpool]: output (in + padding - size)/stride + 1; the window starts at -padding/2; padded cells are -inf. */
#include <float.h>

#include "internal.h"

typedef struct maxpool_priv {
    int padding;
    int *argmax; /* batch * outputs: input index of each output's maximum, for the backward pass */
} maxpool_priv;

static void maxpool_free(dn_layer *l)
{
    maxpool_priv *p = l->priv;
    if (p) free(p->argmax);
    free(p);
    l->priv = NULL;
}

static dn_status maxpool_reshape(dn_layer *l, dn_network *net)
{
    maxpool_priv *p = l->priv;
    l->out_w = (l->w + p->padding - l->size) / l->stride + 1;
    l->out_h = (l->h + p->padding - l->size) / l->stride + 1;
    l->out_c = l->c;
    l->outputs = (size_t)l->out_w * l->out_h * l->out_c;
    l->bflops = 0;
    if (net->planning || l->out_w < 1 || l->out_h < 1) return DN_OK; /* shapes only, or reported by the caller */
    dn_status st = layer_alloc_io(l, net);
    if (st) return st;
    free(p->argmax);
    p->argmax = NULL;
    if (net->training_buffers) {
        p->argmax = dn_calloc((size_t)net->batch * l->outputs, sizeof(int));
        if (!p->argmax) return dn_fail(DN_E_NOMEM, "out of memory");
    }
    return DN_OK;
}

/* First output index whose window starts at or after 0, and one past the last whose window ends inside n. */
static void inner_range(int offset, int stride, int size, int n, int out_n, int *lo, int *hi)
{
    int a = offset < 0 ? (-offset + stride - 1) / stride : 0;
    int b = n - size - offset >= 0 ? (n - size - offset) / stride + 1 : 0;
    if (b > out_n) b = out_n;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

static void maxpool_forward(dn_layer *l, dn_network *net, const float *in, int batch)
{
    maxpool_priv *p = l->priv;
    const int offset = -p->padding / 2;
    int *argmax = net->train ? p->argmax : NULL;
    int y_lo, y_hi, x_lo, x_hi;
    inner_range(offset, l->stride, l->size, l->h, l->out_h, &y_lo, &y_hi);
    inner_range(offset, l->stride, l->size, l->w, l->out_w, &x_lo, &x_hi);
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < batch; b++) {
        for (int c = 0; c < l->c; c++) {
            const float *src = in + b * l->inputs + (size_t)c * l->w * l->h;
            for (int y = 0; y < l->out_h; y++) {
                const int inner_y = y >= y_lo && y < y_hi;
                for (int x = 0; x < l->out_w; x++) {
                    float best = -FLT_MAX;
                    int best_i = -1;
                    if (inner_y && x >= x_lo && x < x_hi) {
                        /* The window lies inside: no bounds tests, and selects instead of branches (which
                         * mispredict on random data). Same scan order and strict > as below. */
                        const int base = (offset + y * l->stride) * l->w + offset + x * l->stride;
                        for (int ky = 0; ky < l->size; ky++) {
                            for (int kx = 0; kx < l->size; kx++) {
                                const int i = base + ky * l->w + kx;
                                const float v = src[i];
                                const int better = v > best;
                                best_i = better ? i : best_i;
                                best = better ? v : best;
                            }
                        }
                    } else {
                        for (int ky = 0; ky < l->size; ky++) {
                            const int iy = offset + y * l->stride + ky;
                            if (iy < 0 || iy >= l->h) continue;
                            for (int kx = 0; kx < l->size; kx++) {
                                const int ix = offset + x * l->stride + kx;
                                if (ix < 0 || ix >= l->w) continue;
                                const float v = src[iy * l->w + ix];
                                if (v > best) { best = v; best_i = iy * l->w + ix; }
                            }
                        }
                    }
                    const size_t o = b * l->outputs + ((size_t)c * l->out_h + y) * l->out_w + x;
                    l->output[o] = best;
                    if (argmax) argmax[o] = best_i < 0 ? -1 : (int)((size_t)c * l->w * l->h + best_i);
                }
            }
        }
    }
}

static void maxpool_backward(dn_layer *l, dn_network *net, const float *in, float *in_delta, int batch)
{
    (void)net; (void)in;
    maxpool_priv *p = l->priv;
    if (!in_delta) return;
    for (int b = 0; b < batch; b++)
        for (size_t i = 0; i < l->outputs; i++) {
            const int j = p->argmax[b * l->outputs + i];
            if (j >= 0) in_delta[b * l->inputs + j] += l->delta[b * l->outputs + i];
        }
}

double maxpool_private_bytes(const dn_layer *l, const dn_network *net)
{
    return net->training_buffers ? (double)net->batch * l->outputs * sizeof(int) : 0; /* argmax */
}

const layer_ops maxpool_ops = {"max", maxpool_reshape, maxpool_forward, maxpool_backward, maxpool_free};

dn_status make_maxpool(layer_build *b, dn_layer *l)
{
    const cfg_file *f = b->cfg;
    cfg_section *s = b->section;
    dn_status st;
    maxpool_priv *p = dn_calloc(1, sizeof *p);
    if (!p) return dn_fail(DN_E_NOMEM, "out of memory");
    l->priv = p;
    l->ops = &maxpool_ops;
    if ((st = cfg_get_int(f, s, "size", 1, 0, &l->size))) return st;
    if ((st = cfg_get_int(f, s, "stride", 1, 0, &l->stride))) return st;
    if ((st = cfg_get_int(f, s, "padding", l->size - 1, 0, &p->padding))) return st;
    if (l->size < 1 || l->size > 64 || l->stride < 1 || l->stride > 64 || p->padding < 0 || p->padding > 128)
        return dn_fail(DN_E_CFG, "%s:%d: [maxpool] size=%d stride=%d padding=%d out of range", f->path, s->line,
                       l->size, l->stride, p->padding);
    l->filters = l->c;
    return DN_OK;
}
