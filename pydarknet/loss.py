"""The [yolo] layer's training loss on its own: ``yolo_loss`` runs the C core's ``dn_yolo_loss``.

The semantics are the reference engine's (the GIoU fork of Darknet), see SPEC §3.1: ``delta`` is the
negative gradient of the cost with respect to the layer's output (Darknet's sign), and the box gradient of
``iou``/``giou`` is folded into (x, y, w, h) the way the reference does it. The C core checks the layer's
configuration (ranges of classes, mask, anchors, sizes, normalisers); this module only shapes the arrays.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from . import _ffi

__all__ = ["yolo_loss", "IOU_LOSSES", "REPRESENTATIONS"]

# cfg name -> C code, from the header's enums
IOU_LOSSES = {name: code for code, name in _ffi.IOU_LOSS_NAMES.items()}
REPRESENTATIONS = {name: code for code, name in _ffi.REPRESENTATION_NAMES.items()}


def _code(name: str, value, table: dict) -> int:
    if not isinstance(value, str) or value.lower() not in table:
        raise ValueError(f"yolo_loss: {name} must be one of {sorted(table)}, got {value!r}")
    return table[value.lower()]


def _convert(name: str, value, kind):
    """int() or float() of an argument, naming it when that fails (the C core checks the range)."""
    if isinstance(value, bool) or (kind is int and not isinstance(value, (int, np.integer))):
        raise ValueError(f"yolo_loss: {name} must be an integer, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"yolo_loss: {name} must be a number, got {value!r}") from None


def _truths_array(truths, n_images: int, max_boxes: int) -> np.ndarray:
    t = np.asarray(truths)
    if t.ndim == 2 and t.shape[1] % 5 == 0:  # Darknet's flat per-image buffer: (N, k*5)
        t = t.reshape(t.shape[0], -1, 5)
    if t.ndim != 3 or t.shape[2] != 5:
        raise ValueError(f"yolo_loss: truths must have shape (N, boxes, 5) of (x, y, w, h, class), got {t.shape}")
    if t.shape[0] != n_images:
        raise ValueError(f"yolo_loss: truths are for {t.shape[0]} images but x has {n_images}")
    if t.shape[1] > max_boxes:
        raise ValueError(f"yolo_loss: {t.shape[1]} truth boxes per image exceed max_boxes={max_boxes}")
    t = np.ascontiguousarray(t, dtype=np.float32)
    if t.shape[1] < max_boxes:
        padded = np.zeros((n_images, max_boxes, 5), dtype=np.float32)
        padded[:, : t.shape[1]] = t
        t = padded
    return t


def yolo_loss(
    x,
    truths,
    *,
    anchors: Sequence[float],
    mask: Sequence[int],
    classes: int,
    net_w: int,
    net_h: int,
    iou_loss: str = "mse",
    iou_normalizer: float = 1.0,
    cls_normalizer: float = 1.0,
    representation: str = "exp",
    ignore_thresh: float = 0.5,
    truth_thresh: float = 1.0,
    max_boxes: int = 90,
    out: Optional[np.ndarray] = None,
):
    """Training forward of one [yolo] layer: returns ``(cost, delta, stats)``.

    x: the layer's raw input, float32 (N, len(mask)*(5+classes), H, W) in Darknet's layout (per mask slot:
    tx, ty, tw, th, objectness, classes). truths: (N, k, 5) boxes (x, y, w, h, class) relative to the
    network input, zero-padded (a box with x == 0 ends an image's list), k <= max_boxes; shorter lists are
    padded. anchors: 2*total numbers (w, h pairs in network pixels, flat or as pairs); mask: the anchor indices
    this layer predicts.

    delta has x's shape and Darknet's sign (-dcost/doutput). stats holds what the reference logs: ``iou``,
    ``giou`` (mean over matched truths), ``obj``, ``class``, ``noobj`` (mean objectness over all predictions),
    ``recall50``, ``recall75``, ``count`` (matched truths) and the split ``iou_loss + cls_loss == cost``.
    If ``out`` is given (float32 C-contiguous array of x's shape) it receives the activated output.
    """
    iou_loss_code = _code("iou_loss", iou_loss, IOU_LOSSES)
    representation_code = _code("representation", representation, REPRESENTATIONS)
    classes = _convert("classes", classes, int)
    max_boxes = _convert("max_boxes", max_boxes, int)
    anchors_a = np.ascontiguousarray(np.asarray(anchors, dtype=np.float32).reshape(-1))
    if anchors_a.size % 2:
        raise ValueError(f"yolo_loss: anchors must hold w, h pairs (an even count), got {anchors_a.size} values")
    mask_a = np.asarray(mask).reshape(-1)
    if mask_a.size and not np.issubdtype(mask_a.dtype, np.integer):
        raise ValueError(f"yolo_loss: mask must be a sequence of integers, got {mask!r}")
    n_anchors = mask_a.size

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"yolo_loss: x must have shape (N, C, H, W), got {x.shape}")
    n_images, channels, h, w = x.shape
    if channels != n_anchors * (5 + classes):
        raise ValueError(
            f"yolo_loss: x has {channels} channels but len(mask)*(5+classes) = {n_anchors}*(5+{classes}) = "
            f"{n_anchors * (5 + classes)}"
        )
    if n_images < 1 or h < 1 or w < 1:
        raise ValueError(f"yolo_loss: x must be non-empty, got shape {x.shape}")
    t = _truths_array(truths, n_images, max_boxes)

    if out is None:
        output = np.empty_like(x)
    else:
        if (
            not isinstance(out, np.ndarray)
            or out.shape != x.shape
            or out.dtype != np.float32
            or not out.flags.c_contiguous
            or not out.flags.writeable
        ):
            raise ValueError(f"yolo_loss: out must be a writable C-contiguous float32 array of shape {x.shape}")
        if np.may_share_memory(out, x):
            raise ValueError("yolo_loss: out must not share memory with x")
        output = out
    delta = np.zeros_like(x)
    cost, stats = _ffi.yolo_loss(
        x, t, output, delta, classes=classes, mask=mask_a, anchors=anchors_a,
        net_w=_convert("net_w", net_w, int), net_h=_convert("net_h", net_h, int), iou_loss=iou_loss_code,
        iou_normalizer=_convert("iou_normalizer", iou_normalizer, float),
        cls_normalizer=_convert("cls_normalizer", cls_normalizer, float), representation=representation_code,
        ignore_thresh=_convert("ignore_thresh", ignore_thresh, float),
        truth_thresh=_convert("truth_thresh", truth_thresh, float), max_boxes=max_boxes)
    return cost, delta, stats
