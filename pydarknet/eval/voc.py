"""PASCAL VOC average precision, by the rules of the VOC devkit's Python port that the reference scripts use.

Per class: detections are sorted by score (highest first); each one is compared with the ground truth of its
image and takes the box with the highest overlap. If that overlap is strictly above the threshold the detection
is a true positive when the box is not difficult and not yet matched, a false positive when it was already
matched, and ignored (neither) when the box is difficult. Anything else is a false positive. Difficult boxes
do not count in the number of positives. AP is the 11-point interpolated AP (VOC2007 rule, years < 2010) or
the area under the interpolated precision/recall curve (VOC2010 onwards).

The overlap is the IoU or, with ``metric="giou"``, the GIoU, both with the +1 pixel convention.
"""
from __future__ import annotations

import logging
import os
import pickle
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from .boxes import METRICS, overlaps
from ..runfiles import voc_result_name
from .result import THRESHOLDS, ClassCurve, MapResult, MetricMap

__all__ = [
    "VOC_CLASSES",
    "Detections",
    "ImageTruth",
    "evaluate_class",
    "evaluate_detections",
    "load_voc_annotations",
    "parse_voc_xml",
    "read_detections_file",
    "truth_by_class",
    "use_07_metric_for_year",
    "voc_ap",
    "voc_eval",
    "write_pr_curves",
]

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)



@dataclass(frozen=True)
class ImageTruth:
    """Ground truth of one class in one image: VOC boxes (n, 4) and their difficult flags (n,)."""

    boxes: np.ndarray
    difficult: np.ndarray


@dataclass(frozen=True)
class Detections:
    """Detections of one class: image ids (D,), scores (D,), VOC boxes (D, 4)."""

    image_ids: Sequence[str]
    scores: np.ndarray
    boxes: np.ndarray

    @staticmethod
    def from_rows(rows: Iterable[tuple[str, float, float, float, float, float]]) -> "Detections":
        rows = list(rows)
        return Detections(
            [row[0] for row in rows],
            np.array([row[1] for row in rows], dtype=np.float64),
            np.array([row[2:6] for row in rows], dtype=np.float64).reshape(-1, 4),
        )


def use_07_metric_for_year(year: str | int) -> bool:
    """The VOC2007 11-point rule applies to the challenges before 2010."""
    return int(year) < 2010


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from cumulative recall/precision arrays (detections in score order)."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        # The reference iterates np.arange(0., 1.1, 0.1), whose 0.3, 0.6 and 0.7 are a hair above the decimal
        # value (0.30000000000000004, ...); keep that grid so a recall of exactly 3/10 behaves as there.
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            reached = recall >= t
            ap += (np.max(precision[reached]) if reached.any() else 0.0) / 11.0
        return float(ap)
    # Area under the precision envelope (precision made monotonically decreasing), summed where recall moves.
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def evaluate_class(
    detections: Detections,
    truth: Mapping[str, ImageTruth],
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    metric: str = "iou",
    use_07_metric: bool = False,
) -> list[ClassCurve]:
    """Match one class's detections against its ground truth at every threshold at once.

    ``truth`` must hold an entry (possibly empty) for every evaluated image; a detection on any other image is
    an error, since it means the detections and the image set disagree. Returns one curve per threshold;
    AP is NaN when the class has no non-difficult ground truth.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown overlap metric {metric!r}; expected one of {METRICS}")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    num_positives = int(sum(np.count_nonzero(~t.difficult) for t in truth.values()))
    order = np.argsort(-detections.scores, kind="mergesort")
    num_thresholds, num_detections = len(thresholds), len(order)
    true_positive = np.zeros((num_thresholds, num_detections))
    false_positive = np.zeros((num_thresholds, num_detections))
    matched = {image_id: np.zeros((num_thresholds, len(t.boxes)), dtype=bool) for image_id, t in truth.items()}

    for rank, index in enumerate(order):
        image_id = detections.image_ids[index]
        try:
            image_truth = truth[image_id]
        except KeyError:
            raise ValueError(f"detection on image {image_id!r}, which is not in the evaluated image set") from None
        if len(image_truth.boxes) == 0:
            false_positive[:, rank] = 1
            continue
        overlap = overlaps(detections.boxes[index], image_truth.boxes, metric)
        best = int(np.argmax(overlap))  # the VOC rule: only the best-overlapping box is considered
        above = overlap[best] > thresholds
        if image_truth.difficult[best]:
            false_positive[~above, rank] = 1  # above the threshold on a difficult box: ignored
            continue
        is_new_match = above & ~matched[image_id][:, best]
        true_positive[is_new_match, rank] = 1
        false_positive[~is_new_match, rank] = 1  # below the threshold, or a duplicate of a matched box
        matched[image_id][is_new_match, best] = True

    true_positive = np.cumsum(true_positive, axis=1)
    false_positive = np.cumsum(false_positive, axis=1)
    curves = []
    for t in range(num_thresholds):
        precision = true_positive[t] / np.maximum(true_positive[t] + false_positive[t], np.finfo(np.float64).eps)
        if num_positives == 0:
            curves.append(ClassCurve(np.full(num_detections, np.nan), precision, float("nan")))
            continue
        recall = true_positive[t] / num_positives
        curves.append(ClassCurve(recall, precision, voc_ap(recall, precision, use_07_metric)))
    return curves


def evaluate_detections(
    detections: Mapping[str, Detections],
    truth: Mapping[str, Mapping[str, ImageTruth]],
    class_names: Sequence[str],
    *,
    metrics: Sequence[str] = ("iou",),
    thresholds: Sequence[float] = THRESHOLDS,
    use_07_metric: bool = False,
    num_images: int = 0,
    keep_curves: bool = False,
) -> MapResult:
    """Evaluate every class (``detections[name]``, ``truth[name][image_id]``) for each metric."""
    by_metric = {}
    for metric in metrics:
        class_ap = np.full((len(thresholds), len(class_names)), np.nan)
        curves = {}
        for c, name in enumerate(class_names):
            class_curves = evaluate_class(
                detections.get(name, Detections.from_rows([])),
                truth[name],
                thresholds=thresholds,
                metric=metric,
                use_07_metric=use_07_metric,
            )
            class_ap[:, c] = [curve.ap for curve in class_curves]
            if keep_curves:
                curves[name] = class_curves
        by_metric[metric] = MetricMap(metric, tuple(thresholds), tuple(class_names), class_ap,
                                      curves if keep_curves else None)
    return MapResult(by_metric, num_images)


# --- VOC files --------------------------------------------------------------------------------------------

def parse_voc_xml(path: str | os.PathLike) -> list[dict]:
    """Objects of a VOC annotation file: ``{"name", "difficult", "bbox": [xmin, ymin, xmax, ymax]}``."""
    objects = []
    for node in ElementTree.parse(path).findall("object"):
        box = node.find("bndbox")
        difficult = node.find("difficult")
        objects.append({
            "name": node.find("name").text.strip(),
            "difficult": difficult is not None and int(float(difficult.text)) == 1,
            # float, not int: a few VOC2012 files hold fractional coordinates.
            "bbox": [float(box.find(key).text) for key in ("xmin", "ymin", "xmax", "ymax")],
        })
    return objects


def _read_image_set(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image set not found")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def load_voc_annotations(
    voc_dir: str | os.PathLike,
    year: str | int,
    image_set: str,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, list[dict]]:
    """Annotations of ``<voc_dir>/VOC<year>/ImageSets/Main/<image_set>.txt``, keyed by image id.

    Parsed XML is cached in ``<cache_dir>/annots_<year>_<image_set>.pkl`` (default cache_dir:
    ``<voc_dir>/annotations_cache``). The cache is keyed by year and image set and is rebuilt when its image
    list differs from the image set file, so evaluating another set never reads a stale cache.
    """
    root = Path(voc_dir) / f"VOC{year}"
    image_ids = _read_image_set(root / "ImageSets" / "Main" / f"{image_set}.txt")
    cache_file = Path(cache_dir or Path(voc_dir) / "annotations_cache") / f"annots_{year}_{image_set}.pkl"
    cached = _load_cache(cache_file)
    if cached is not None and cached.get("image_ids") == image_ids:
        return cached["annotations"]
    annotations = {}
    for image_id in image_ids:
        xml_path = root / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise FileNotFoundError(f"{xml_path}: annotation not found (image {image_id} of {image_set})")
        annotations[image_id] = parse_voc_xml(xml_path)
    _save_cache(cache_file, {"image_ids": image_ids, "annotations": annotations})
    return annotations


def _load_cache(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            cached = pickle.load(f)
        return cached if isinstance(cached, dict) else None
    except FileNotFoundError:
        return None
    except Exception as exc:  # a corrupt or foreign cache is rebuilt, not fatal
        log.warning("%s: ignoring unreadable annotation cache (%s)", path, exc)
        return None


def _save_cache(path: Path, content: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as f:
            pickle.dump(content, f)
        os.replace(temporary, path)  # atomic: a concurrent reader sees the old or the new cache
    except OSError as exc:
        log.warning("%s: cannot write annotation cache (%s)", path, exc)


def truth_by_class(annotations: Mapping[str, list[dict]], class_names: Sequence[str]
                   ) -> dict[str, dict[str, ImageTruth]]:
    """Regroup per-image annotations into ``truth[class][image_id]``, with empty entries for every image."""
    truth: dict[str, dict[str, ImageTruth]] = {}
    for name in class_names:
        per_image = {}
        for image_id, objects in annotations.items():
            selected = [obj for obj in objects if obj["name"] == name]
            per_image[image_id] = ImageTruth(
                np.array([obj["bbox"] for obj in selected], dtype=np.float64).reshape(-1, 4),
                np.array([obj["difficult"] for obj in selected], dtype=bool),
            )
        truth[name] = per_image
    return truth


def read_detections_file(path: str | os.PathLike) -> Detections:
    """A ``comp4_det_test_<class>.txt`` file: ``<image id> <score> <xmin> <ymin> <xmax> <ymax>`` per line."""
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise ValueError(f"{path}:{lineno}: expected 'image score xmin ymin xmax ymax', got {line.strip()!r}")
            try:
                rows.append((fields[0], *map(float, fields[1:])))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: malformed number in {line.strip()!r}") from None
    return Detections.from_rows(rows)


def voc_eval(
    output_dir: str | os.PathLike,
    voc_dir: str | os.PathLike,
    year: str | int = 2007,
    image_set: str = "test",
    class_names: Sequence[str] = VOC_CLASSES,
    *,
    metrics: Sequence[str] = ("iou",),
    thresholds: Sequence[float] = THRESHOLDS,
    cache_dir: str | os.PathLike | None = None,
    keep_curves: bool = False,
) -> MapResult:
    """Evaluate ``<output_dir>/comp4_det_test_<class>.txt`` against a VOC devkit image set.

    A class without a detections file counts as a class with no detections (AP 0), with a warning.
    """
    annotations = load_voc_annotations(voc_dir, year, image_set, cache_dir)
    detections = {}
    for name in class_names:
        path = Path(output_dir) / voc_result_name(name)
        if path.is_file():
            detections[name] = read_detections_file(path)
        else:
            log.warning("%s: no detections file for class %s", path, name)
    return evaluate_detections(
        detections,
        truth_by_class(annotations, class_names),
        class_names,
        metrics=metrics,
        thresholds=thresholds,
        use_07_metric=use_07_metric_for_year(year),
        num_images=len(annotations),
        keep_curves=keep_curves,
    )


def write_pr_curves(output_dir: str | os.PathLike, metric_map: MetricMap) -> list[Path]:
    """Write ``<output_dir>/<class>_pr.pkl`` per class: ``rec``, ``prec``, ``ap`` at the first threshold (.50),
    the reference's keys, plus ``thresholds`` and the ``recs``/``precs``/``aps`` at every threshold."""
    if metric_map.curves is None:
        raise ValueError("this result kept no precision/recall curves (evaluate with keep_curves=True)")
    written = []
    first = 0
    for name, curves in metric_map.curves.items():
        path = Path(output_dir) / f"{name}_pr.pkl"
        content = {
            "rec": curves[first].recall,
            "prec": curves[first].precision,
            "ap": curves[first].ap,
            "metric": metric_map.metric,
            "thresholds": list(metric_map.thresholds),
            "recs": [c.recall for c in curves],
            "precs": [c.precision for c in curves],
            "aps": [c.ap for c in curves],
        }
        with open(path, "wb") as f:
            pickle.dump(content, f)
        written.append(path)
    return written
