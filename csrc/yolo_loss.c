/* The [yolo] layer's arithmetic: activation, training loss (deltas, cost, statistics) and dn_yolo_loss.
 *
 * Semantics: SPEC §3.1 and shared/reference/README.md ("yolo_golden"), i.e. the training forward of the
 * GIoU fork of Darknet, with one deliberate correction: the intersection used by the IoU/GIoU gradient is
 * clamped at 0 (the reference multiplies two negative overlaps for non-overlapping boxes).
 *
 * Layout of output/delta: index = b*outputs + n*(5+classes)*h*w + entry*h*w + j*w + i,
 * entry 0..3 = tx, ty, tw, th, 4 = objectness, 5.. = classes.
 *
 * Boxes are in coordinates relative to the network input; "top" is the smaller y. The gradient of IoU/GIoU
 * is taken with respect to (top, bottom, left, right) of the predicted box and folded into (x, y, w, h) by
 * x: l+r, y: t+b, w: (r-l)/2, h: (b-t)/2 (the chain rule through l = x - w/2, r = x + w/2, ...); for `exp`
 * w and h are further multiplied by e^tw, e^th and everything by iou_normalizer. No other chain-rule factor
 * (the logistic's derivative, 1/W, anchor/net_w) is applied: that is the reference's behaviour.
 *
 * Everything here works on caller-provided buffers: no allocation, no globals, no output; thread-safe.
 */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "elementwise.h"
#include "internal.h"
#include "yolo_loss.h"

typedef struct ybox {
    float x, y, w, h;
} ybox;

/* Gradient of IoU or GIoU with respect to the predicted box's edges. */
typedef struct yedges {
    float dt, db, dl, dr;
} yedges;

static inline size_t yl_index(int entries, int hw, size_t outputs, int b, int n, int entry, int loc)
{
    return (size_t)b * outputs + ((size_t)n * (size_t)entries + (size_t)entry) * (size_t)hw + (size_t)loc;
}

/* Overlap of two 1-D segments given by centre and size (negative when disjoint). */
static inline float yl_overlap(float c1, float s1, float c2, float s2)
{
    float l1 = c1 - s1 / 2, l2 = c2 - s2 / 2;
    float r1 = c1 + s1 / 2, r2 = c2 + s2 / 2;
    float left = l1 > l2 ? l1 : l2;
    float right = r1 < r2 ? r1 : r2;
    return right - left;
}

static float yl_intersection(ybox a, ybox b)
{
    float w = yl_overlap(a.x, a.w, b.x, b.w);
    float h = yl_overlap(a.y, a.h, b.y, b.h);
    if (w < 0 || h < 0) return 0;
    return w * h;
}

static float yl_iou(ybox a, ybox b)
{
    float i = yl_intersection(a, b);
    float u = a.w * a.h + b.w * b.h - i;
    if (!(u > 0)) return 0;
    return i / u;
}

/* GIoU = IoU - (C - U) / C, C the area of the smallest box enclosing both. */
static float yl_giou(ybox a, ybox b)
{
    float i = yl_intersection(a, b);
    float u = a.w * a.h + b.w * b.h - i;
    float cl = fminf(a.x - a.w / 2, b.x - b.w / 2), cr = fmaxf(a.x + a.w / 2, b.x + b.w / 2);
    float ct = fminf(a.y - a.h / 2, b.y - b.h / 2), cb = fmaxf(a.y + a.h / 2, b.y + b.h / 2);
    float c = (cr - cl) * (cb - ct);
    float iou = u > 0 ? i / u : 0;
    if (!(c > 0)) return iou;
    return iou - (c - u) / c;
}

/* d(IoU)/d(t, b, l, r) of pred (or of GIoU when giou != 0), intersection clamped at 0. */
static yedges yl_edge_grad(ybox pred, ybox truth, int giou)
{
    yedges g = {0, 0, 0, 0};
    float pt = pred.y - pred.h / 2, pb = pred.y + pred.h / 2;
    float pl = pred.x - pred.w / 2, pr = pred.x + pred.w / 2;
    float tt = truth.y - truth.h / 2, tb = truth.y + truth.h / 2;
    float tl = truth.x - truth.w / 2, tr = truth.x + truth.w / 2;

    float X = (pb - pt) * (pr - pl);
    float Xhat = (tb - tt) * (tr - tl);
    float Iw = fminf(pr, tr) - fmaxf(pl, tl);
    float Ih = fminf(pb, tb) - fmaxf(pt, tt);
    /* Each overlap is clamped at 0 on its own, so I = 0 for disjoint boxes (the reference multiplies two
     * negative overlaps instead). The edge derivatives keep their one-sided form with the clamped overlaps:
     * dI/dtop = -Iw whenever the predicted top is below the truth's, even while Ih is clamped at 0. So a
     * prediction that overlaps its truth on one axis only still gets a pull along the other axis (IoU is
     * flat there); this is what reference/yolo_golden/CASE.delta_clamped.f32 holds and what is tested. */
    if (Iw < 0) Iw = 0;
    if (Ih < 0) Ih = 0;
    float I = Iw * Ih;
    float dI_t = pt > tt ? -Iw : 0;
    float dI_b = pb < tb ? Iw : 0;
    float dI_l = pl > tl ? -Ih : 0;
    float dI_r = pr < tr ? Ih : 0;
    float dX_t = -(pr - pl), dX_b = pr - pl;
    float dX_l = -(pb - pt), dX_r = pb - pt;
    float U = X + Xhat - I;
    float dU_t = dX_t - dI_t, dU_b = dX_b - dI_b, dU_l = dX_l - dI_l, dU_r = dX_r - dI_r;
    if (U > 0) {
        float u2 = U * U;
        g.dt = (U * dI_t - I * dU_t) / u2;
        g.db = (U * dI_b - I * dU_b) / u2;
        g.dl = (U * dI_l - I * dU_l) / u2;
        g.dr = (U * dI_r - I * dU_r) / u2;
    }
    if (giou) {
        float Cw = fmaxf(pr, tr) - fminf(pl, tl);
        float Ch = fmaxf(pb, tb) - fminf(pt, tt);
        float C = Cw * Ch;
        float dC_t = pt < tt ? -Cw : 0;
        float dC_b = pb > tb ? Cw : 0;
        float dC_l = pl < tl ? -Ch : 0;
        float dC_r = pr > tr ? Ch : 0;
        if (C > 0) {
            /* GIoU = IoU - 1 + U/C */
            float c2 = C * C;
            g.dt += (C * dU_t - U * dC_t) / c2;
            g.db += (C * dU_b - U * dC_b) / c2;
            g.dl += (C * dU_l - U * dC_l) / c2;
            g.dr += (C * dU_r - U * dC_r) / c2;
        }
    }
    return g;
}

/* The predicted box of anchor `a` (absolute index) at cell (i, j); index points at its tx entry. */
static ybox yl_pred_box(const dn_yolo_config *cfg, const float *out, size_t index, int a, int i, int j, int w,
                        int h, int stride)
{
    ybox b;
    float tw = out[index + 2 * (size_t)stride], th = out[index + 3 * (size_t)stride];
    b.x = (i + out[index]) / w;
    b.y = (j + out[index + (size_t)stride]) / h;
    if (cfg->representation == DN_REPR_LIN) {
        b.w = tw * cfg->anchors[2 * a] / cfg->net_w;
        b.h = th * cfg->anchors[2 * a + 1] / cfg->net_h;
    } else {
        b.w = expf(tw) * cfg->anchors[2 * a] / cfg->net_w;
        b.h = expf(th) * cfg->anchors[2 * a + 1] / cfg->net_h;
    }
    return b;
}

typedef struct yl_ious {
    float iou, giou;
} yl_ious;

/* Box deltas of the prediction at `index` (tx entry) for `truth`; returns its IoU and GIoU. */
static yl_ious yl_delta_box(const dn_yolo_config *cfg, ybox truth, const float *out, int a, size_t index, int i,
                            int j, int w, int h, float *delta, float scale, int stride)
{
    yl_ious r;
    size_t s = (size_t)stride;
    ybox pred = yl_pred_box(cfg, out, index, a, i, j, w, h, stride);
    r.iou = yl_iou(pred, truth);
    r.giou = yl_giou(pred, truth);
    if (cfg->iou_loss == DN_LOSS_MSE) {
        float tx = truth.x * w - i;
        float ty = truth.y * h - j;
        float tw = logf(truth.w * cfg->net_w / cfg->anchors[2 * a]);
        float th = logf(truth.h * cfg->net_h / cfg->anchors[2 * a + 1]);
        delta[index] = scale * (tx - out[index]);
        delta[index + s] = scale * (ty - out[index + s]);
        delta[index + 2 * s] = scale * (tw - out[index + 2 * s]);
        delta[index + 3 * s] = scale * (th - out[index + 3 * s]);
    } else {
        yedges g = yl_edge_grad(pred, truth, cfg->iou_loss == DN_LOSS_GIOU);
        float dx = g.dl + g.dr;
        float dy = g.dt + g.db;
        float dw = (g.dr - g.dl) / 2;
        float dh = (g.db - g.dt) / 2;
        if (cfg->representation == DN_REPR_EXP) {
            dw *= expf(out[index + 2 * s]);
            dh *= expf(out[index + 3 * s]);
        }
        delta[index] = cfg->iou_normalizer * dx;
        delta[index + s] = cfg->iou_normalizer * dy;
        delta[index + 2 * s] = cfg->iou_normalizer * dw;
        delta[index + 3 * s] = cfg->iou_normalizer * dh;
    }
    return r;
}

/* Class deltas at `index` (entry of class 0). A prediction already given class deltas by an earlier truth
 * (class-0 delta non-zero) only gets its own class's delta set. Adds the true class's score to *avg_cat. */
static void yl_delta_class(const float *out, float *delta, size_t index, int cls, int classes, int stride,
                           double *avg_cat)
{
    size_t s = (size_t)stride;
    if (delta[index] != 0) {
        delta[index + s * (size_t)cls] = 1 - out[index + s * (size_t)cls];
        if (avg_cat) *avg_cat += out[index + s * (size_t)cls];
        return;
    }
    for (int c = 0; c < classes; ++c) {
        delta[index + s * (size_t)c] = (c == cls ? 1.0f : 0.0f) - out[index + s * (size_t)c];
        if (c == cls && avg_cat) *avg_cat += out[index + s * (size_t)c];
    }
}

static inline ybox yl_truth_box(const float *t) { return (ybox){t[0], t[1], t[2], t[3]}; }

/* Number of truth boxes of one image (zero-terminated on x) after checking each of them. */
static dn_status yl_count_truths(const dn_yolo_config *cfg, const float *t, int b, int *count)
{
    int k = 0;
    for (; k < cfg->max_boxes; ++k) {
        const float *r = t + (size_t)k * 5;
        if (r[0] == 0) break;
        for (int q = 0; q < 5; ++q)
            if (!isfinite(r[q]))
                return dn_fail(DN_E_ARG, "yolo truth: image %d box %d: value %d is not finite", b, k, q);
        if (r[0] < 0 || r[0] > 1 || r[1] < 0 || r[1] > 1)
            return dn_fail(DN_E_ARG, "yolo truth: image %d box %d: centre (%g, %g) outside [0, 1]", b, k,
                           (double)r[0], (double)r[1]);
        if (!(r[2] > 0) || !(r[3] > 0))
            return dn_fail(DN_E_ARG, "yolo truth: image %d box %d: size (%g, %g) must be > 0", b, k,
                           (double)r[2], (double)r[3]);
        if (!(r[4] >= 0) || r[4] >= (float)cfg->classes) /* compared as float: (int) of a huge value is UB */
            return dn_fail(DN_E_ARG, "yolo truth: image %d box %d: class %g outside [0, %d)", b, k, (double)r[4],
                           cfg->classes);
    }
    *count = k;
    return DN_OK;
}

/* e^x in a form the compiler vectorises (expf calls it does not): x = k ln2 + r with |r| <= ln2/2 (ln2 in two
 * parts), e^r by Cephes' degree-6 polynomial, times 2^(k-1) built in the exponent bits, times 2 (so that k = 128,
 * just below expf's overflow, stays finite). Like expf it is infinite above 88.72283 (the logistic is then 0, as
 * the reference's is); below -86.5 it stays at e^-86.5, where 1 + e^x is already 1 in float; NaN stays NaN.
 * Within 2 ulp of expf in between (checked over the range in test_yolo_loss.py). */
static inline float exp_poly(float x)
{
    const float big = x > 88.72283f ? INFINITY : 0.f;
    x = x < -86.5f ? -86.5f : (x > 88.72283f ? 88.72283f : x);
    /* floorf, not a truncation and fix-up: gcc vectorises only this form in the AVX clones */
    const float kf = floorf(x * 1.44269504088896341f + 0.5f);
    const int k = kf == kf ? (int)kf : 0; /* NaN: converting it is undefined; the result is NaN through r */
    const float r = (x - kf * 0.693359375f) - kf * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.f;
    union { uint32_t u; float f; } two_k1 = {.u = (uint32_t)(k + 126) << 23};
    return p * two_k1.f * 2.f + big;
}

/* The logistic of a plane: with expf this loop was most of a [yolo] layer's time in a bf16 yolov3-tiny. */
static DN_VEC_CLONES void logistic_plane(const float *src, float *dst, size_t n)
{
#pragma omp simd
    for (size_t k = 0; k < n; ++k) dst[k] = 1.f / (1.f + exp_poly(-src[k]));
}

void yolo_activate(const dn_yolo_config *cfg, int batch, int h, int w, const float *in, float *out)
{
    const int entries = 5 + cfg->classes;
    const size_t hw = (size_t)h * w;
    const int lin = cfg->representation == DN_REPR_LIN;
    /* One (image, anchor, entry) plane at a time: the entry, hence the formula, is fixed along the loop. */
    const size_t planes = (size_t)batch * cfg->n * entries;
    /* the network's threads: single-threaded this took about 2% of a yolov3-tiny inference */
#pragma omp parallel for schedule(static) if (planes * hw >= 65536)
    for (size_t p = 0; p < planes; ++p) {
        const int entry = (int)(p % (size_t)entries);
        const float *src = in + p * hw;
        float *dst = out + p * hw;
        if (entry == 2 || entry == 3)
            for (size_t k = 0; k < hw; ++k) dst[k] = dn_yolo_activate_one(src[k], entry, lin);
        else
            logistic_plane(src, dst, hw);
    }
}

dn_status yolo_compute_loss(const dn_yolo_config *cfg, int batch, int h, int w, const float *output,
                            const float *truth, float *delta, float *cost, dn_yolo_stats *stats)
{
    const int entries = 5 + cfg->classes;
    const int hw = h * w;
    const size_t outputs = (size_t)cfg->n * (size_t)entries * (size_t)hw;
    const size_t tstride = (size_t)cfg->max_boxes * 5;

    /* defined results even on error: no gradient, zero cost */
    memset(delta, 0, (size_t)batch * outputs * sizeof(float));
    if (cost) *cost = 0;
    if (stats) memset(stats, 0, sizeof(*stats));
    for (int b = 0; b < batch; ++b) {
        int nt;
        dn_status st = yl_count_truths(cfg, truth + (size_t)b * tstride, b, &nt);
        if (st != DN_OK) return st;
    }

    double tot_iou = 0, tot_giou = 0, tot_iou_loss = 0, tot_giou_loss = 0;
    double avg_cat = 0, avg_obj = 0, avg_anyobj = 0, recall = 0, recall75 = 0;
    int count = 0, class_count = 0;

    for (int b = 0; b < batch; ++b) {
        const float *tb = truth + (size_t)b * tstride;
        int nt = 0;
        (void)yl_count_truths(cfg, tb, b, &nt);

        /* every prediction: objectness towards 0 unless it overlaps some truth enough */
        for (int n = 0; n < cfg->n; ++n) {
            int a = cfg->mask[n];
            for (int j = 0; j < h; ++j) {
                for (int i = 0; i < w; ++i) {
                    int loc = j * w + i;
                    size_t box_index = yl_index(entries, hw, outputs, b, n, 0, loc);
                    ybox pred = yl_pred_box(cfg, output, box_index, a, i, j, w, h, hw);
                    float best_iou = 0;
                    int best_t = 0;
                    for (int t = 0; t < nt; ++t) {
                        float iou = yl_iou(pred, yl_truth_box(tb + (size_t)t * 5));
                        if (iou > best_iou) {
                            best_iou = iou;
                            best_t = t;
                        }
                    }
                    size_t obj_index = yl_index(entries, hw, outputs, b, n, 4, loc);
                    avg_anyobj += output[obj_index];
                    delta[obj_index] = cfg->cls_normalizer * (0 - output[obj_index]);
                    if (best_iou > cfg->ignore_thresh) delta[obj_index] = 0;
                    if (best_iou > cfg->truth_thresh) {
                        const float *tr = tb + (size_t)best_t * 5;
                        ybox tbox = yl_truth_box(tr);
                        delta[obj_index] = cfg->cls_normalizer * (1 - output[obj_index]);
                        yl_delta_class(output, delta, yl_index(entries, hw, outputs, b, n, 5, loc), (int)tr[4],
                                       cfg->classes, hw, NULL);
                        yl_delta_box(cfg, tbox, output, a, box_index, i, j, w, h, delta, 2 - tbox.w * tbox.h, hw);
                    }
                }
            }
        }

        /* every truth: the prediction of its cell and best-shaped anchor, if this layer predicts that anchor */
        for (int t = 0; t < nt; ++t) {
            const float *tr = tb + (size_t)t * 5;
            ybox tbox = yl_truth_box(tr);
            int i = (int)(tbox.x * w), j = (int)(tbox.y * h);
            if (i >= w) i = w - 1;
            if (j >= h) j = h - 1;
            ybox shape = {0, 0, tbox.w, tbox.h};
            float best_iou = 0;
            int best_a = 0;
            for (int a = 0; a < cfg->total; ++a) {
                ybox anchor = {0, 0, cfg->anchors[2 * a] / cfg->net_w, cfg->anchors[2 * a + 1] / cfg->net_h};
                float iou = yl_iou(anchor, shape);
                if (iou > best_iou) {
                    best_iou = iou;
                    best_a = a;
                }
            }
            int n = -1;
            for (int k = 0; k < cfg->n; ++k)
                if (cfg->mask[k] == best_a) {
                    n = k;
                    break;
                }
            if (n < 0) continue;

            int loc = j * w + i;
            size_t box_index = yl_index(entries, hw, outputs, b, n, 0, loc);
            yl_ious r = yl_delta_box(cfg, tbox, output, best_a, box_index, i, j, w, h, delta, 2 - tbox.w * tbox.h,
                                     hw);
            tot_iou += r.iou;
            tot_iou_loss += 1 - r.iou;
            tot_giou += r.giou;
            tot_giou_loss += 1 - r.giou;

            size_t obj_index = yl_index(entries, hw, outputs, b, n, 4, loc);
            avg_obj += output[obj_index];
            delta[obj_index] = cfg->cls_normalizer * (1 - output[obj_index]);
            yl_delta_class(output, delta, yl_index(entries, hw, outputs, b, n, 5, loc), (int)tr[4], cfg->classes, hw,
                           &avg_cat);
            ++count;
            ++class_count;
            if (r.iou > .5f) recall += 1;
            if (r.iou > .75f) recall75 += 1;
        }
    }

    /* cost: squared deltas split into the box entries and the rest */
    double box_sq = 0, other_sq = 0;
    for (int b = 0; b < batch; ++b) {
        for (int n = 0; n < cfg->n; ++n) {
            const float *d = delta + yl_index(entries, hw, outputs, b, n, 0, 0);
            for (int k = 0; k < 4 * hw; ++k) box_sq += (double)d[k] * d[k];
            for (int k = 4 * hw; k < entries * hw; ++k) other_sq += (double)d[k] * d[k];
        }
    }
    double iou_part, cls_part;
    if (cfg->iou_loss == DN_LOSS_MSE) {
        iou_part = box_sq;
        cls_part = other_sq;
    } else {
        double mean_loss = cfg->iou_loss == DN_LOSS_GIOU ? tot_giou_loss : tot_iou_loss;
        iou_part = count > 0 ? cfg->iou_normalizer * (mean_loss / count) : 0;
        cls_part = cfg->cls_normalizer * other_sq;
    }
    double total_cost = iou_part + cls_part;
    if (cost) *cost = (float)total_cost;
    if (stats) {
        memset(stats, 0, sizeof(*stats));
        stats->avg_iou = count ? (float)(tot_iou / count) : 0;
        stats->avg_giou = count ? (float)(tot_giou / count) : 0;
        stats->iou_loss = (float)iou_part;
        stats->cls_loss = (float)cls_part;
        stats->cost = (float)total_cost;
        stats->avg_obj = count ? (float)(avg_obj / count) : 0;
        size_t npred = (size_t)batch * (size_t)cfg->n * (size_t)hw;
        stats->avg_noobj = npred ? (float)(avg_anyobj / (double)npred) : 0;
        stats->avg_cls = class_count ? (float)(avg_cat / class_count) : 0;
        stats->recall50 = count ? (float)(recall / count) : 0;
        stats->recall75 = count ? (float)(recall75 / count) : 0;
        stats->count = count;
    }
    return DN_OK;
}

static const char *yl_check_config(const dn_yolo_config *cfg)
{
    if (cfg->classes < 1) return "classes must be >= 1";
    if (cfg->n < 1) return "n (mask entries) must be >= 1";
    if (cfg->total < 1) return "total (anchors) must be >= 1";
    if (!cfg->mask) return "mask is NULL";
    if (!cfg->anchors) return "anchors is NULL";
    if (cfg->net_w <= 0 || cfg->net_h <= 0) return "net_w and net_h must be > 0";
    if (cfg->iou_loss < DN_LOSS_MSE || cfg->iou_loss > DN_LOSS_GIOU)
        return "iou_loss must be 0 (mse), 1 (iou) or 2 (giou)";
    if (cfg->representation != DN_REPR_EXP && cfg->representation != DN_REPR_LIN)
        return "representation must be 0 (exp) or 1 (lin)";
    if (cfg->max_boxes < 1) return "max_boxes must be >= 1";
    if (!isfinite(cfg->iou_normalizer) || !isfinite(cfg->cls_normalizer)) return "normalizers must be finite";
    if (isnan(cfg->ignore_thresh) || isnan(cfg->truth_thresh))
        return "ignore_thresh and truth_thresh must not be NaN";
    return NULL;
}

DN_EXPORT dn_status dn_yolo_loss(const dn_yolo_config *cfg, const float *x, int n, int h, int w, const float *truth,
                                 float *output, float *delta, float *cost, dn_yolo_stats *stats)
{
    if (!cfg) return dn_fail(DN_E_ARG, "dn_yolo_loss: cfg is NULL");
    if (!x || !truth || !output || !delta)
        return dn_fail(DN_E_ARG, "dn_yolo_loss: %s is NULL",
                       !x ? "x" : !truth ? "truth" : !output ? "output" : "delta");
    if (n <= 0 || h <= 0 || w <= 0)
        return dn_fail(DN_E_ARG, "dn_yolo_loss: batch, height and width must be > 0 (got n=%d h=%d w=%d)", n, h, w);
    const char *why = yl_check_config(cfg);
    if (why) return dn_fail(DN_E_ARG, "dn_yolo_loss: %s", why);
    for (int k = 0; k < cfg->n; ++k)
        if (cfg->mask[k] < 0 || cfg->mask[k] >= cfg->total)
            return dn_fail(DN_E_ARG, "dn_yolo_loss: mask[%d] = %d outside [0, %d)", k, cfg->mask[k], cfg->total);
    for (int a = 0; a < 2 * cfg->total; ++a)
        if (!(cfg->anchors[a] > 0) || !isfinite(cfg->anchors[a]))
            return dn_fail(DN_E_ARG, "dn_yolo_loss: anchor value %d (%g) must be finite and > 0", a,
                           (double)cfg->anchors[a]);
    /* one image's outputs are indexed with int (as in Darknet); the whole batch with size_t */
    double per_image = (double)cfg->n * (5.0 + (double)cfg->classes) * (double)h * (double)w;
    if (per_image > (double)INT_MAX || per_image * n > (double)SIZE_MAX / sizeof(float) ||
        (double)cfg->max_boxes * 5.0 * n > (double)SIZE_MAX / sizeof(float))
        return dn_fail(DN_E_ARG, "dn_yolo_loss: tensor too large (n=%d, %d anchors, %d classes, %dx%d)", n, cfg->n,
                       cfg->classes, h, w);
    if (output == x || delta == x || delta == output)
        return dn_fail(DN_E_ARG, "dn_yolo_loss: output and delta must be two buffers distinct from x");

    yolo_activate(cfg, n, h, w, x, output);
    return yolo_compute_loss(cfg, n, h, w, output, truth, delta, cost, stats);
}
