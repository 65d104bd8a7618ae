"""Containers for mAP results and their text forms (the training table and ``map.txt`` rows)."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..runfiles import map_row

__all__ = [
    "THRESHOLDS", "ClassCurve", "MapResult", "MetricMap", "format_map_table", "format_voc_report", "map_txt_row",
]

# .50, .55, ..., .95 written out, so that 0.55 is the float literal 0.55 and not 0.5 + 0.05.
THRESHOLDS = (0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95)


@dataclass(frozen=True)
class ClassCurve:
    """Cumulative recall and precision of one class at one threshold, detections in score order."""

    recall: np.ndarray
    precision: np.ndarray
    ap: float


@dataclass(frozen=True)
class MetricMap:
    """Average precision of every class at every threshold, for one overlap metric (``iou`` or ``giou``).

    ``class_ap[t, c]`` is the AP of class ``c`` at ``thresholds[t]``; it is NaN for a class without ground
    truth, and such classes are left out of the means (as COCO does), rather than making them NaN.
    """

    metric: str
    thresholds: tuple[float, ...]
    class_names: tuple[str, ...]
    class_ap: np.ndarray
    # curves[class_name][t]: only filled by evaluations that keep them (voc_reval writes them to <class>_pr.pkl).
    curves: dict[str, list[ClassCurve]] | None = field(default=None, repr=False, compare=False)

    @property
    def map_per_threshold(self) -> np.ndarray:
        """mAP at each threshold: the mean AP over the classes that have ground truth."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no ground truth at all
            return np.nanmean(self.class_ap, axis=1)

    @property
    def mean(self) -> float:
        """The mAP averaged over the thresholds (COCO's AP@[.50:.95] for the default thresholds)."""
        return float(np.mean(self.map_per_threshold))

    def map_at(self, threshold: float) -> float:
        index = _threshold_index(self.thresholds, threshold)
        return float(self.map_per_threshold[index])

    def ap_of(self, class_name: str, threshold: float = 0.5) -> float:
        return float(self.class_ap[_threshold_index(self.thresholds, threshold), self.class_names.index(class_name)])


@dataclass(frozen=True)
class MapResult:
    """mAP per overlap metric; ``result["iou"]`` is a :class:`MetricMap`."""

    metrics: dict[str, MetricMap]
    num_images: int = 0

    def __getitem__(self, metric: str) -> MetricMap:
        return self.metrics[metric]

    def __contains__(self, metric: str) -> bool:
        return metric in self.metrics


def _threshold_index(thresholds: tuple[float, ...], threshold: float) -> int:
    for index, value in enumerate(thresholds):
        if abs(value - threshold) < 1e-9:
            return index
    raise KeyError(f"threshold {threshold} was not evaluated (thresholds: {thresholds})")


def format_map_table(result: MapResult) -> str:
    """One row per metric with mAP@.50, mAP@.75 and mAP@.50:.95, e.g. for the training log."""
    lines = [f"{'metric':<8}{'mAP@.50':>10}{'mAP@.75':>10}{'mAP@.50:.95':>13}"]
    for name, metric_map in result.metrics.items():
        at50 = _value_or_nan(metric_map, 0.50)
        at75 = _value_or_nan(metric_map, 0.75)
        lines.append(f"{name:<8}{at50:>10.4f}{at75:>10.4f}{metric_map.mean:>13.4f}")
    return "\n".join(lines)


def _value_or_nan(metric_map: MetricMap, threshold: float) -> float:
    try:
        return metric_map.map_at(threshold)
    except KeyError:
        return float("nan")


def map_txt_row(result: MapResult, metric: str, weights_id: str | int | os.PathLike) -> str:
    """A ``map.txt`` line (SPEC §4): ``metric,id,mean,m50,m55,...,m95``."""
    metric_map = result[metric]
    return map_row(metric, weights_id, [metric_map.mean, *metric_map.map_per_threshold])


def format_voc_report(metric_map: MetricMap, per_class: bool = False) -> str:
    """``voc_reval.py``'s output: ``Threshold: 0.50 | mAP: 0.759`` per threshold, then ``mAP: 0.4611``
    (the mean over thresholds); with ``per_class``, first ``AP for <class> = 0.8123`` at each class's
    first threshold (.50)."""
    lines = []
    if per_class:
        first = metric_map.thresholds[0]
        lines += [f"AP for {name} = {metric_map.ap_of(name, first):.4f}" for name in metric_map.class_names]
    lines += [f"Threshold: {t:.2f} | mAP: {m:.3f}" for t, m in zip(metric_map.thresholds, metric_map.map_per_threshold)]
    lines.append(f"mAP: {metric_map.mean:.4f}")
    return "\n".join(lines)
