"""Box arithmetic shared by ``valid`` and the evaluators.

Two conventions meet here:

* Darknet's detections: ``(x_center, y_center, width, height)`` in pixels of the original image, unclipped.
* VOC boxes: ``(xmin, ymin, xmax, ymax)`` in 1-based pixel coordinates, both ends inclusive, so a box's width
  is ``xmax - xmin + 1`` (the "+1 pixel" convention of the VOC devkit and its Python ports).
* COCO boxes: ``[x, y, width, height]`` in 0-based pixels.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

__all__ = [
    "COCO_CATEGORY_IDS",
    "METRICS",
    "coco_box",
    "coco_image_id",
    "overlaps",
    "voc_box",
]

METRICS = ("iou", "giou")

# Category id of each of the 80 Darknet COCO classes (coco.names order) in the 91-id COCO annotation files.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    22, 23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65,
    67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)


def voc_box(x: float, y: float, w: float, h: float, image_width: int, image_height: int
            ) -> tuple[float, float, float, float]:
    """Darknet's ``detector valid`` arithmetic: centre box -> 1-based corners, clipped to the image."""
    xmin = x - w / 2.0 + 1
    ymin = y - h / 2.0 + 1
    xmax = x + w / 2.0 + 1
    ymax = y + h / 2.0 + 1
    # Darknet clips the low ends at 1 and the high ends at the image size (not size + 1).
    return (max(xmin, 1.0), max(ymin, 1.0), min(xmax, float(image_width)), min(ymax, float(image_height)))


def coco_box(x: float, y: float, w: float, h: float, image_width: int, image_height: int
             ) -> tuple[float, float, float, float]:
    """Darknet's COCO output: clip the corners to ``[0, W] x [0, H]`` first, then convert to ``[x, y, w, h]``."""
    xmin = max(x - w / 2.0, 0.0)
    ymin = max(y - h / 2.0, 0.0)
    xmax = min(x + w / 2.0, float(image_width))
    ymax = min(y + h / 2.0, float(image_height))
    return (xmin, ymin, xmax - xmin, ymax - ymin)


_TRAILING_NUMBER = re.compile(r"(\d+)$")


def coco_image_id(image_path: str | os.PathLike) -> int:
    """The integer at the end of the file's base name (``000000397133.jpg`` -> 397133,
    ``COCO_val2014_000000000042.jpg`` -> 42)."""
    stem = Path(image_path).stem
    match = _TRAILING_NUMBER.search(stem)
    if match is None:
        raise ValueError(f"{image_path}: a COCO image name must end with its numeric image id")
    return int(match.group(1))


def overlaps(box: np.ndarray, boxes: np.ndarray, metric: str = "iou") -> np.ndarray:
    """Overlap of one VOC box ``(xmin, ymin, xmax, ymax)`` with each row of ``boxes`` (n, 4).

    Widths and heights follow the +1 pixel convention. ``metric="giou"`` returns
    ``IoU - (C - U) / C`` with C the area of the smallest enclosing box and U the union; it lies in (-1, 1]
    and is never above the IoU.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown overlap metric {metric!r}; expected one of {METRICS}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    box = np.asarray(box, dtype=np.float64)
    inter_w = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1.0, 0.0)
    inter_h = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1.0, 0.0)
    intersection = inter_w * inter_h
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    union = area + areas - intersection
    iou = intersection / union
    if metric == "iou":
        return iou
    hull_w = np.maximum(boxes[:, 2], box[2]) - np.minimum(boxes[:, 0], box[0]) + 1.0
    hull_h = np.maximum(boxes[:, 3], box[3]) - np.minimum(boxes[:, 1], box[1]) + 1.0
    hull = hull_w * hull_h
    return iou - (hull - union) / hull
