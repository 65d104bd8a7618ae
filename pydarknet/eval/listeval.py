"""mAP of a detector on a Darknet image list, with ground truth from its label files (used by ``train --map``
and by the all-weights evaluator).

Detections go through exactly the box arithmetic ``valid`` writes into ``comp4_det_test_*.txt``, and labels
are turned back into VOC pixel boxes the way ``voc_label.py`` made them, so the numbers are those of
``valid`` + ``voc_reval.py`` on the same images (except that a label file has no difficult flag; pass
``truth="voc"`` to read VOC XML annotations next to the images instead).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from .boxes import METRICS, voc_box
from .result import THRESHOLDS, MapResult
from .voc import Detections, ImageTruth, evaluate_detections, parse_voc_xml

__all__ = ["evaluate_list", "labels_to_voc_boxes", "voc_annotation_path", "voc_rules", "voc_year_of"]


def labels_to_voc_boxes(labels: np.ndarray, image_width: int, image_height: int) -> np.ndarray:
    """Darknet label rows ``[class, cx, cy, w, h]`` (relative) -> VOC boxes (n, 4), 1-based.

    The inverse of ``voc_label.py``'s conversion (centre ``(xmin + xmax)/2 - 1``, width ``xmax - xmin``),
    and the same arithmetic as a detection written by ``valid``.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    cx, cy = labels[:, 1] * image_width, labels[:, 2] * image_height
    half_w, half_h = labels[:, 3] * image_width / 2.0, labels[:, 4] * image_height / 2.0
    return np.stack([cx - half_w + 1, cy - half_h + 1, cx + half_w + 1, cy + half_h + 1], axis=1)


def voc_annotation_path(image_path: str | os.PathLike) -> Path:
    """``.../VOC2007/JPEGImages/000001.jpg`` -> ``.../VOC2007/Annotations/000001.xml``."""
    path = Path(image_path)
    parts = list(path.parent.parts)
    if "JPEGImages" in parts:
        parts[len(parts) - 1 - parts[::-1].index("JPEGImages")] = "Annotations"
    return Path(*parts, path.stem + ".xml") if parts else Path(path.stem + ".xml")


_VOC_YEAR = re.compile(r"VOC(\d{4})")


def voc_year_of(image_path: str | os.PathLike) -> int | None:
    """The year of the ``VOC<year>`` folder an image lives in, if any."""
    match = _VOC_YEAR.search(os.fspath(image_path))
    return int(match.group(1)) if match else None


def voc_rules(image_paths: Sequence[str]) -> tuple[str, bool]:
    """``(truth, use_07_metric)`` for a VOC-rule evaluation of ``image_paths``, the choice the all-checkpoints
    evaluator makes (pass both to :func:`evaluate_list`, with ``class_names``, so that ``train --map`` and
    ``voc_all_map.py`` write comparable ``map.txt`` rows): VOC XML beside the images when every image has one
    (difficult flags kept, as the devkit evaluates), else the Darknet labels; the 11-point rule when the
    images live in a ``VOC<year>`` folder with year < 2010, the area rule otherwise."""
    has_xml = bool(image_paths) and all(voc_annotation_path(p).is_file() for p in image_paths)
    year = voc_year_of(image_paths[0]) if image_paths else None
    return ("voc" if has_xml else "labels"), (year is not None and year < 2010)


def evaluate_list(
    detector,
    image_paths: Sequence[str],
    num_classes: int,
    *,
    thresh: float = 0.005,
    nms: float = 0.45,
    metrics: Sequence[str] = ("iou", "giou"),
    use_07_metric: bool = False,
    batch: int = 1,
    truth: str = "labels",
    class_names: Sequence[str] | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    progress: bool | None = False,
) -> MapResult:
    """Detect each image of ``image_paths`` and compute the VOC-rule mAP per metric at .50:.95.

    ``truth="labels"``: Darknet label files (``pydarknet.data.label_path``), boxes scaled by the image size.
    ``truth="voc"``: VOC XML annotations beside the images (``JPEGImages`` -> ``Annotations``), whose
    difficult objects are ignored as in the VOC rules; XML class names are matched with ``class_names``.
    Unreadable images are skipped with a warning. Classes without ground truth are left out of the means.
    """
    from ..data import label_path, read_labels
    from .runner import Progress, detect_images

    for metric in metrics:
        if metric not in METRICS:
            raise ValueError(f"unknown overlap metric {metric!r}; expected one of {METRICS}")
    if truth not in ("labels", "voc"):
        raise ValueError(f"truth must be 'labels' or 'voc', not {truth!r}")
    if class_names is None:
        class_names = [str(c) for c in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    class_index = {name: c for c, name in enumerate(class_names)}

    # Keyed by list position, not by base name: two folders may hold images with the same name.
    truth_rows: list[list[tuple[int, np.ndarray, bool]]] = []
    detection_rows: list[list[tuple]] = [[] for _ in range(num_classes)]
    bar = Progress(len(image_paths), "map", progress)
    try:
        for path, (height, width), detections in detect_images(
                detector, list(image_paths), thresh=thresh, nms=nms, batch=batch, progress=bar):
            key = str(len(truth_rows))
            if truth == "labels":
                labels = read_labels(label_path(path), num_classes)
                boxes = labels_to_voc_boxes(labels, width, height)
                truth_rows.append([(int(c), box, False) for c, box in zip(labels[:, 0], boxes)])
            else:
                objects = parse_voc_xml(voc_annotation_path(path))
                truth_rows.append([(class_index[o["name"]], np.array(o["bbox"]), o["difficult"])
                                   for o in objects if o["name"] in class_index])
            for det in detections:
                detection_rows[det.class_id].append((key, float(det.prob), *voc_box(*det.box, width, height)))
    finally:
        bar.close()

    truth_by_class = {}
    for c, name in enumerate(class_names):
        per_image = {}
        for key, objects in enumerate(truth_rows):
            selected = [(box, difficult) for cls, box, difficult in objects if cls == c]
            per_image[str(key)] = ImageTruth(
                np.array([box for box, _ in selected], dtype=np.float64).reshape(-1, 4),
                np.array([difficult for _, difficult in selected], dtype=bool),
            )
        truth_by_class[name] = per_image
    detections_by_class = {name: Detections.from_rows(detection_rows[c]) for c, name in enumerate(class_names)}
    return evaluate_detections(detections_by_class, truth_by_class, class_names, metrics=metrics,
                               thresholds=thresholds, use_07_metric=use_07_metric, num_images=len(truth_rows))
