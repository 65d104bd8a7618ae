"""Object detection with a YOLO network: ``Detector(cfg, weights).detect(image)``.

Decoding, box correction and NMS follow Darknet's ``detector test`` (SPEC §2): objectness and class
scores through the logistic, class score = objectness * class probability, boxes mapped back out of the
letterbox, then per-class NMS that sorts by that class's score.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .datafile import read_names
from .image import as_bgr, letterbox, letterbox_sizes
from .network import Network

__all__ = ["Detection", "Detector", "decode_yolo", "nms_per_class"]


@dataclass(frozen=True)
class Detection:
    """One (box, class) above the threshold. ``box`` = (x_center, y_center, width, height) in pixels of the
    original image (not clipped)."""

    class_id: int
    name: str
    prob: float
    box: tuple[float, float, float, float]

    @property
    def corners(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in pixels."""
        x, y, w, h = self.box
        return (x - w / 2, y - h / 2, x + w / 2, y + h / 2)


def decode_yolo(output: np.ndarray, anchors: np.ndarray, mask: Sequence[int], classes: int, net_w: int, net_h: int,
                thresh: float, representation: str = "exp") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's [yolo] output (anchors*(5+classes), h, w) -> boxes (k, 4) relative (x, y, w, h) to the
    network input, objectness (k,), class scores (k, classes) with scores <= thresh zeroed.
    Only predictions with objectness > thresh are kept (Darknet's get_yolo_detections)."""
    n = len(mask)
    _, h, w = output.shape
    out = output.reshape(n, 5 + classes, h, w)
    obj = out[:, 4]
    a_idx, rows, cols = np.nonzero(obj > thresh)
    if a_idx.size == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, classes), np.float32)
    entries = out[a_idx, :, rows, cols]               # (k, 5+classes)
    aw = anchors[np.asarray(mask)[a_idx], 0]
    ah = anchors[np.asarray(mask)[a_idx], 1]
    tw, th = entries[:, 2], entries[:, 3]
    if representation == "lin":
        bw, bh = tw * aw / net_w, th * ah / net_h
    else:
        bw, bh = np.exp(tw) * aw / net_w, np.exp(th) * ah / net_h
    boxes = np.stack([(cols + entries[:, 0]) / w, (rows + entries[:, 1]) / h, bw, bh], axis=1).astype(np.float32)
    objectness = entries[:, 4].astype(np.float32)
    scores = (objectness[:, None] * entries[:, 5:]).astype(np.float32)
    scores[scores <= thresh] = 0
    return boxes, objectness, scores


def correct_boxes(boxes: np.ndarray, width: int, height: int, net_w: int, net_h: int) -> np.ndarray:
    """Map relative boxes out of the letterbox into relative coordinates of the original image."""
    new_w, new_h = letterbox_sizes(width, height, net_w, net_h)
    out = boxes.astype(np.float32, copy=True)
    # Darknet divides the offset by 2. (in floating point) here, unlike the integer paste offset.
    out[:, 0] = (out[:, 0] - (net_w - new_w) / 2.0 / net_w) / (new_w / net_w)
    out[:, 1] = (out[:, 1] - (net_h - new_h) / 2.0 / net_h) / (new_h / net_h)
    out[:, 2] *= net_w / new_w
    out[:, 3] *= net_h / new_h
    return out


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ax0, ay0, ax1, ay1 = box[0] - box[2] / 2, box[1] - box[3] / 2, box[0] + box[2] / 2, box[1] + box[3] / 2
    bx0, by0 = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2
    bx1, by1 = boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2
    iw = np.minimum(ax1, bx1) - np.maximum(ax0, bx0)
    ih = np.minimum(ay1, by1) - np.maximum(ay0, by0)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms_per_class(boxes: np.ndarray, objectness: np.ndarray, scores: np.ndarray, nms: float) -> np.ndarray:
    """Darknet's do_nms_sort: per class, sort by that class's score and zero the score of any later box
    whose IoU with a kept (non-zero) box exceeds `nms`. Returns the new scores."""
    scores = scores.copy()
    if nms <= 0 or len(boxes) == 0:
        return scores
    live = objectness != 0
    for c in np.nonzero(scores.max(axis=0) > 0)[0]:
        candidates = np.nonzero(live & (scores[:, c] > 0))[0]
        order = candidates[np.argsort(-scores[candidates, c], kind="stable")]
        while order.size:
            best, rest = order[0], order[1:]
            if rest.size == 0:
                break
            suppressed = _iou_one_to_many(boxes[best], boxes[rest]) > nms
            scores[rest[suppressed], c] = 0
            order = rest[~suppressed]
    return scores


class Detector:
    """A YOLO detector: ``Detector(cfg, weights, names=None)``.

    ``names`` is a list of class names, a path to a ``.names`` file, or None (class ids as names).
    Images are file paths or HxWx3 uint8 **BGR** arrays as ``cv2.imread`` returns.
    """

    def __init__(self, cfg: str | os.PathLike, weights: str | os.PathLike | None, names=None, batch: int = 1,
                 **network_options):
        """``network_options``: ``device``, ``conv_algo``, ``threads``, ``memory_limit``, ``precision``
        (``"f32"`` or ``"bf16"``), as for ``Network``."""
        self.network = Network(cfg, weights, batch=batch, **network_options)
        yolo = self.network.yolo_layers
        if not yolo:
            self.network.close()
            raise ValueError(f"{cfg}: the network has no [yolo] layer to detect with")
        self.num_classes = yolo[0].classes
        if isinstance(names, (str, os.PathLike)):
            names = read_names(names)
        self.names = list(names) if names is not None else [str(i) for i in range(self.num_classes)]
        if len(self.names) < self.num_classes:
            raise ValueError(f"{len(self.names)} class names given but the network has {self.num_classes} classes")
        self._heads = []
        for layer in yolo:
            anchors, mask = self.network.yolo_anchors(layer.index)
            self._heads.append((layer, anchors, mask))

    @property
    def net_width(self) -> int:
        return self.network.width

    @property
    def net_height(self) -> int:
        return self.network.height

    def close(self) -> None:
        self.network.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def detect(self, image, thresh: float = 0.25, nms: float = 0.45) -> list[Detection]:
        """Detections of one image, one per (box, class) with prob > thresh, highest prob first."""
        return self.detect_batch([image], thresh=thresh, nms=nms)[0]

    def stream(self, source, thresh: float = 0.25, nms: float = 0.45, prefetch: int = 4):
        """Detections of every frame of a video file, a camera index (int) or an iterable of BGR frames:
        iterate the returned ``DetectionStream`` for ``(frame, detections)``. Frames are decoded on a
        background thread (up to `prefetch` ahead) while the network runs. A missing or unreadable source
        raises here (FileNotFoundError, ImageError, or DarknetIOError for a camera)."""
        from .video import DetectionStream  # noqa: PLC0415

        return DetectionStream(self, source, thresh=thresh, nms=nms, prefetch=prefetch)

    def detect_batch(self, images: Iterable, thresh: float = 0.25, nms: float = 0.45) -> list[list[Detection]]:
        """Detect in several images with one forward pass over all of them."""
        bgrs = [as_bgr(im) for im in images]
        if not bgrs:
            return []
        net_w, net_h = self.net_width, self.net_height
        x = np.empty((len(bgrs), 3, net_h, net_w), np.float32)
        for i, bgr in enumerate(bgrs):
            letterbox(bgr, net_w, net_h, out=x[i])
        outputs = self.network.forward(x)
        return [self._detections(outputs, i, bgr.shape[1], bgr.shape[0], thresh, nms) for i, bgr in enumerate(bgrs)]

    def _detections(self, outputs, i, width, height, thresh, nms) -> list[Detection]:
        net_w, net_h = self.net_width, self.net_height
        parts = [decode_yolo(out[i], anchors, mask, layer.classes, net_w, net_h, thresh, layer.representation)
                 for (layer, anchors, mask), out in zip(self._heads, outputs)]
        boxes = np.concatenate([p[0] for p in parts])
        objectness = np.concatenate([p[1] for p in parts])
        scores = np.concatenate([p[2] for p in parts])
        boxes = correct_boxes(boxes, width, height, net_w, net_h)
        scores = nms_per_class(boxes, objectness, scores, nms)
        det_idx, cls_idx = np.nonzero(scores > thresh)
        probs = scores[det_idx, cls_idx]
        order = np.argsort(-probs, kind="stable")
        scale = np.array([width, height, width, height], np.float32)
        result = []
        for k in order:
            b = boxes[det_idx[k]] * scale
            c = int(cls_idx[k])
            result.append(Detection(c, self.names[c], float(probs[k]), (float(b[0]), float(b[1]), float(b[2]),
                                                                     float(b[3]))))
        return result
