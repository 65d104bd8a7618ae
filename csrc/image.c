/* Darknet's image arithmetic (SPEC §2): bilinear resize with aligned corners, done in float on 0..1
 * values as a horizontal then a vertical pass, and the letterbox that pads with 0.5. Matching this
 * arithmetic (not OpenCV's half-pixel resize) is what makes detections equal the reference engine's. */
#include <string.h>

#include "internal.h"

DN_EXPORT dn_status dn_resize_chw(const float *in, int c, int h, int w, float *out, int out_h, int out_w)
{
    if (!in || !out || c < 1 || h < 1 || w < 1 || out_h < 1 || out_w < 1)
        return dn_fail(DN_E_ARG, "resize: bad arguments (%d x %d x %d -> %d x %d)", c, h, w, out_h, out_w);
    float *part = dn_calloc((size_t)c * h * out_w, sizeof(float));
    if (!part) return dn_fail(DN_E_NOMEM, "out of memory");
    const float w_scale = out_w > 1 ? (float)(w - 1) / (out_w - 1) : 0.f;
    const float h_scale = out_h > 1 ? (float)(h - 1) / (out_h - 1) : 0.f;
    /* Horizontal pass into an out_w x h image; the last column takes the last source column. */
    for (int k = 0; k < c; k++)
        for (int r = 0; r < h; r++) {
            const float *src = in + ((size_t)k * h + r) * w;
            float *dst = part + ((size_t)k * h + r) * out_w;
            for (int col = 0; col < out_w; col++) {
                if (col == out_w - 1 || w == 1) {
                    dst[col] = src[w - 1];
                } else {
                    const float sx = col * w_scale;
                    const int ix = (int)sx;
                    const float dx = sx - ix;
                    dst[col] = (1 - dx) * src[ix] + dx * src[ix + 1];
                }
            }
        }
    /* Vertical pass: the (1 - dy) share first, then the dy share added, as two separate roundings. */
    for (int k = 0; k < c; k++)
        for (int r = 0; r < out_h; r++) {
            const float sy = r * h_scale;
            const int iy = (int)sy;
            const float dy = sy - iy;
            const float *row0 = part + ((size_t)k * h + iy) * out_w;
            float *dst = out + ((size_t)k * out_h + r) * out_w;
            for (int col = 0; col < out_w; col++) dst[col] = (1 - dy) * row0[col];
            if (r == out_h - 1 || h == 1) continue;
            const float *row1 = row0 + out_w;
            for (int col = 0; col < out_w; col++) dst[col] += dy * row1[col];
        }
    free(part);
    return DN_OK;
}

DN_EXPORT dn_status dn_letterbox_size(int w, int h, int net_w, int net_h, int *new_w, int *new_h)
{
    if (!new_w || !new_h || w < 1 || h < 1 || net_w < 1 || net_h < 1)
        return dn_fail(DN_E_ARG, "letterbox size: bad arguments (%d x %d -> %d x %d)", w, h, net_w, net_h);
    /* Darknet compares the two scales in float: at near-equal ratios that picks the side an exact comparison
     * would not, and the boxes are mapped back with the same choice. */
    if ((float)net_w / w < (float)net_h / h) {
        *new_w = net_w;
        *new_h = (int)((long long)h * net_w / w);
    } else {
        *new_h = net_h;
        *new_w = (int)((long long)w * net_h / h);
    }
    if (*new_w < 1) *new_w = 1;
    if (*new_h < 1) *new_h = 1;
    return DN_OK;
}

DN_EXPORT dn_status dn_letterbox_bgr(const unsigned char *bgr, int w, int h, int channels, size_t stride, int net_w,
                                     int net_h, float *out)
{
    if (!bgr || !out || w < 1 || h < 1 || net_w < 1 || net_h < 1 || (channels != 3 && channels != 4) ||
        stride < (size_t)w * channels)
        return dn_fail(DN_E_ARG, "letterbox: bad arguments (%d x %d x %d, stride %zu -> %d x %d)", w, h, channels,
                       stride, net_w, net_h);
    int new_w, new_h;
    dn_status size_status = dn_letterbox_size(w, h, net_w, net_h, &new_w, &new_h);
    if (size_status != DN_OK) return size_status;
    float *rgb = dn_calloc((size_t)3 * w * h, sizeof(float));
    float *resized = dn_calloc((size_t)3 * new_w * new_h, sizeof(float));
    if (!rgb || !resized) {
        free(rgb);
        free(resized);
        return dn_fail(DN_E_NOMEM, "out of memory");
    }
    for (int y = 0; y < h; y++) {
        const unsigned char *row = bgr + (size_t)y * stride;
        for (int x = 0; x < w; x++)
            for (int k = 0; k < 3; k++)
                rgb[((size_t)k * h + y) * w + x] = row[(size_t)x * channels + (2 - k)] / 255.f;
    }
    dn_status st = dn_resize_chw(rgb, 3, h, w, resized, new_h, new_w);
    if (st == DN_OK) {
        const int dx = (net_w - new_w) / 2, dy = (net_h - new_h) / 2;
        for (size_t i = 0; i < (size_t)3 * net_w * net_h; i++) out[i] = .5f;
        for (int k = 0; k < 3; k++)
            for (int y = 0; y < new_h; y++)
                memcpy(out + ((size_t)k * net_h + y + dy) * net_w + dx, resized + ((size_t)k * new_h + y) * new_w,
                       sizeof(float) * new_w);
    }
    free(rgb);
    free(resized);
    return st;
}
