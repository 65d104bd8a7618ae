/* The [yolo] layer's arithmetic, shared by layer_yolo.c (inside a network) and dn_yolo_loss (alone). */
#ifndef DN_YOLO_LOSS_H
#define DN_YOLO_LOSS_H
#include "darknet.h"

/* Activation: logistic on x, y, objectness and classes; tw, th raw, except that for the `lin`
 * representation values <= 0 are replaced by e^value (the reference engine's behaviour).
 * in/out: float[batch * cfg->n * (5 + classes) * h * w] in Darknet's layout. */
void yolo_activate(const dn_yolo_config *cfg, int batch, int h, int w, const float *in, float *out);

/* Training loss on the activated output: fills delta (same size, Darknet's sign), the cost and stats.
 * truth: float[batch * cfg->max_boxes * 5]. Returns DN_OK or an error (dn_last_error set). */
dn_status yolo_compute_loss(const dn_yolo_config *cfg, int batch, int h, int w, const float *output,
                            const float *truth, float *delta, float *cost, dn_yolo_stats *stats);
#endif
