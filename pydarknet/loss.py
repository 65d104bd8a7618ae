"""The [yolo] layer's training loss on its own: ``yolo_loss`` runs the C core's ``dn_yolo_loss``.

The semantics are the reference engine's (the GIoU fork of Darknet), see SPEC §3.1: ``delta`` is the
negative gradient of the cost with respect to the layer's output (Darknet's sign), and the box gradient of
``iou``/``giou`` is folded into (x, y, w, h) the way the reference does it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ._ffi import check, ffi, lib

__all__ = ["yolo_loss", "IOU_LOSSES", "REPRESENTATIONS"]

IOU_LOSSES = {"mse": 0, "iou": 1, "giou": 2}
REPRESENTATIONS = {"exp": 0, "lin": 1}

_STAT_FIELDS = (
    ("iou", "avg_iou"),
    ("giou", "avg_giou"),
    ("iou_loss", "iou_loss"),
    ("cls_loss", "cls_loss"),
    ("cost", "cost"),
    ("obj", "avg_obj"),
    ("noobj", "avg_noobj"),
    ("class", "avg_cls"),
    ("recall50", "recall50"),
    ("recall75", "recall75"),
)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"yolo_loss: {name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"yolo_loss: {name} must be >= 1, got {value}")
    return int(value)


def _finite_float(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"yolo_loss: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"yolo_loss: {name} must be finite, got {value!r}")
    return v


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
    if not isinstance(iou_loss, str) or iou_loss.lower() not in IOU_LOSSES:
        raise ValueError(f"yolo_loss: iou_loss must be one of {sorted(IOU_LOSSES)}, got {iou_loss!r}")
    if not isinstance(representation, str) or representation.lower() not in REPRESENTATIONS:
        raise ValueError(
            f"yolo_loss: representation must be one of {sorted(REPRESENTATIONS)}, got {representation!r}"
        )
    classes = _positive_int("classes", classes)
    net_w = _positive_int("net_w", net_w)
    net_h = _positive_int("net_h", net_h)
    max_boxes = _positive_int("max_boxes", max_boxes)
    iou_normalizer = _finite_float("iou_normalizer", iou_normalizer)
    cls_normalizer = _finite_float("cls_normalizer", cls_normalizer)
    ignore_thresh = _finite_float("ignore_thresh", ignore_thresh)
    truth_thresh = _finite_float("truth_thresh", truth_thresh)

    anchors_a = np.ascontiguousarray(np.asarray(anchors, dtype=np.float32).reshape(-1))
    if anchors_a.size == 0 or anchors_a.size % 2:
        raise ValueError(f"yolo_loss: anchors must hold w, h pairs (an even count > 0), got {anchors_a.size} values")
    if not np.all(np.isfinite(anchors_a)) or np.any(anchors_a <= 0):
        raise ValueError(f"yolo_loss: anchors must be finite and > 0, got {anchors_a.tolist()}")
    total = anchors_a.size // 2
    mask_a = np.asarray(mask).reshape(-1)
    if mask_a.size == 0 or not np.issubdtype(mask_a.dtype, np.integer):
        raise ValueError(f"yolo_loss: mask must be a non-empty sequence of integers, got {mask!r}")
    mask_a = np.ascontiguousarray(mask_a, dtype=np.int32)
    bad = [int(m) for m in mask_a if m < 0 or m >= total]
    if bad:
        raise ValueError(f"yolo_loss: mask entries {bad} outside [0, {total}) (anchors hold {total} pairs)")
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

    c_mask = ffi.new("int[]", mask_a.tolist())
    c_anchors = ffi.new("float[]", anchors_a.tolist())
    cfg = ffi.new("dn_yolo_config *")
    cfg.classes = classes
    cfg.n = n_anchors
    cfg.total = total
    cfg.mask = c_mask
    cfg.anchors = c_anchors
    cfg.net_w = net_w
    cfg.net_h = net_h
    cfg.iou_loss = IOU_LOSSES[iou_loss.lower()]
    cfg.iou_normalizer = iou_normalizer
    cfg.cls_normalizer = cls_normalizer
    cfg.representation = REPRESENTATIONS[representation.lower()]
    cfg.ignore_thresh = ignore_thresh
    cfg.truth_thresh = truth_thresh
    cfg.max_boxes = max_boxes
    cost = ffi.new("float *")
    stats = ffi.new("dn_yolo_stats *")

    check(
        lib.dn_yolo_loss(
            cfg,
            ffi.from_buffer("float[]", x),
            n_images,
            h,
            w,
            ffi.from_buffer("float[]", t),
            ffi.from_buffer("float[]", output),
            ffi.from_buffer("float[]", delta),
            cost,
            stats,
        )
    )
    st = {key: float(getattr(stats, field)) for key, field in _STAT_FIELDS}
    st["count"] = int(stats.count)
    return float(cost[0]), delta, st
