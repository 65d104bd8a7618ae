"""COCO bbox evaluation with pycocotools, with IoU or GIoU as the overlap.

The GIoU metric is pycocotools' own evaluation with only the overlap matrix replaced
(:class:`GIoUCOCOeval` overrides ``computeIoU``), so matching, interpolation and the 12 summary numbers
are exactly COCO's.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..runfiles import map_row
from .boxes import METRICS

__all__ = ["CocoResult", "GIoUCOCOeval", "coco_giou", "coco_map_txt_row", "evaluate_coco", "load_coco_gt"]


def coco_giou(detections: np.ndarray, truths: np.ndarray, iscrowd: Sequence[int]) -> np.ndarray:
    """GIoU between COCO boxes ``[x, y, w, h]``: a (D, G) matrix.

    For a crowd region COCO measures the overlap as intersection over the detection's area; that value is
    kept as is (crowd regions only decide which detections are ignored, and a GIoU "union" has no meaning
    there), so only non-crowd ground truth gets the enclosing-box penalty.
    """
    d = np.asarray(detections, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(truths, dtype=np.float64).reshape(-1, 4)
    dx1, dy1 = d[:, 0:1], d[:, 1:2]
    dx2, dy2 = dx1 + d[:, 2:3], dy1 + d[:, 3:4]
    gx1, gy1 = g[:, 0][None, :], g[:, 1][None, :]
    gx2, gy2 = gx1 + g[:, 2][None, :], gy1 + g[:, 3][None, :]
    intersection = (np.clip(np.minimum(dx2, gx2) - np.maximum(dx1, gx1), 0, None)
                    * np.clip(np.minimum(dy2, gy2) - np.maximum(dy1, gy1), 0, None))
    det_area = d[:, 2:3] * d[:, 3:4]
    union = det_area + (g[:, 2] * g[:, 3])[None, :] - intersection
    hull = (np.maximum(dx2, gx2) - np.minimum(dx1, gx1)) * (np.maximum(dy2, gy2) - np.minimum(dy1, gy1))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, 0.0)
        giou = iou - np.where(hull > 0, (hull - union) / hull, 0.0)
        crowd_overlap = np.where(det_area > 0, intersection / det_area, 0.0)
    crowd = np.asarray(iscrowd, dtype=bool)[None, :]
    return np.where(crowd, crowd_overlap, giou)


class GIoUCOCOeval(COCOeval):
    """``COCOeval`` for bounding boxes with GIoU in place of IoU (thresholds .50:.95 unchanged)."""

    def __init__(self, cocoGt=None, cocoDt=None, iouType="bbox"):
        if iouType != "bbox":
            raise ValueError("the GIoU metric is defined for bounding boxes only")
        super().__init__(cocoGt, cocoDt, iouType)

    def computeIoU(self, imgId, catId):  # noqa: N802 (pycocotools' name)
        # Same selection, order and truncation of detections as COCOeval.computeIoU, so the matrix lines up
        # with what evaluateImg expects.
        params = self.params
        if params.useCats:
            truths = self._gts[imgId, catId]
            detections = self._dts[imgId, catId]
        else:
            truths = [g for c in params.catIds for g in self._gts[imgId, c]]
            detections = [d for c in params.catIds for d in self._dts[imgId, c]]
        if len(truths) == 0 or len(detections) == 0:
            return []
        order = np.argsort([-d["score"] for d in detections], kind="mergesort")
        detections = [detections[i] for i in order][: params.maxDets[-1]]
        return coco_giou(
            np.array([d["bbox"] for d in detections]),
            np.array([g["bbox"] for g in truths]),
            [int(g["iscrowd"]) for g in truths],
        )


@dataclass(frozen=True)
class CocoResult:
    """The 12 COCO summary numbers (``stats``, as ``COCOeval.stats``) and their printed lines."""

    metric: str
    stats: np.ndarray
    summary: str

    @property
    def ap(self) -> float:
        return float(self.stats[0])

    @property
    def ap50(self) -> float:
        return float(self.stats[1])

    @property
    def ap75(self) -> float:
        return float(self.stats[2])


def load_coco_gt(annotations: str | os.PathLike | COCO) -> COCO:
    if isinstance(annotations, COCO):
        return annotations
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints "loading annotations..."
        return COCO(os.fspath(annotations))


def _load_results(coco_gt: COCO, results: str | os.PathLike | list) -> COCO:
    if not isinstance(results, list):
        with open(results) as f:
            results = json.load(f)
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(results)
    # loadRes cannot take an empty list; an empty result set is still a valid (all-zero) evaluation.
    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                     "categories": list(coco_gt.dataset.get("categories", [])), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def evaluate_coco(
    annotations: str | os.PathLike | COCO,
    results: str | os.PathLike | list,
    metric: str = "iou",
    *,
    image_ids: Sequence[int] | None = None,
) -> CocoResult:
    """Evaluate ``coco_results.json`` (a path or the loaded list) against COCO annotations.

    By default every image of the annotation file is evaluated, as a plain pycocotools run does;
    ``image_ids`` restricts the evaluation to those images (e.g. the images of a shorter valid list).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown overlap metric {metric!r}; expected one of {METRICS}")
    coco_gt = load_coco_gt(annotations)
    coco_dt = _load_results(coco_gt, results)
    evaluator = (GIoUCOCOeval if metric == "giou" else COCOeval)(coco_gt, coco_dt, "bbox")
    if image_ids is not None:
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    with contextlib.redirect_stdout(io.StringIO()):  # progress chatter of evaluate/accumulate
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    return CocoResult(metric, np.array(evaluator.stats, dtype=np.float64), summary.getvalue().rstrip("\n"))


def coco_map_txt_row(result: CocoResult, weights_id: str | int) -> str:
    """A ``map.txt`` line for COCO (SPEC §4): ``metric,id,AP,AP50,0,0,0,0,AP75,0,0,0,0``."""
    # Only .50 and .75 are known per threshold; the columns in between stay 0 as in the reference's files.
    return map_row(result.metric, weights_id, [result.ap, result.ap50, *"0000", result.ap75, *"0000"])
