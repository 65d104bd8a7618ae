"""TensorBoard event files of a training run: ``TensorBoardLogger(logdir)``.

The writer is ``tensorboardX`` (numpy and protobuf only, no torch or tensorflow): ``pip install
'pydarknet[tensorboard]'``. Point TensorBoard at the folder (``tensorboard --logdir DIR``).

Series (TensorBoard tags), one point per training iteration unless said otherwise:

==========================  ===========================================================================
``train/loss``              the iteration's loss (summed [yolo] costs over the images of the batch)
``train/avg_loss``          Darknet's running average (0.9 * avg + 0.1 * loss)
``train/learning_rate``     the rate of the SGD step just taken
``train/images_per_s``      images of the iteration over its wall time
``yolo<k>/<stat>``          per [yolo] layer k (its layer index when given, else its position 0, 1, ...):
                            ``iou``, ``giou``, ``recall50``, ``recall75``, ``obj``, ``noobj``, ``class``,
                            ``iou_loss``, ``cls_loss``, ``cost``, ``count`` (``Network.yolo_stats`` names)
``map/<metric>_50``         per checkpoint evaluated: mAP at overlap .50 for ``iou`` and ``giou``;
``map/<metric>_75``         at .75;
``map/<metric>_50_95``      averaged over .50:.05:.95
==========================  ===========================================================================
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["TensorBoardLogger", "map_values"]

#: What `train --tensorboard` without a folder uses, under the run's folder (<backup>/<prefix>/).
DEFAULT_SUBDIR = "tensorboard"


def _summary_writer():
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("TensorBoard logging needs tensorboardX: pip install 'pydarknet[tensorboard]'") from exc
    return SummaryWriter


def _number(value) -> float | None:
    """The float of a metric value (numpy numbers included); None for what is not a number."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return None
    return float(value)


def map_values(result) -> dict[str, float]:
    """``{"iou_50": ..., "iou_75": ..., "iou_50_95": ..., "giou_50": ...}`` from an evaluation result
    (``pydarknet.eval.MapResult``); a threshold that was not evaluated is left out."""
    values = {}
    for metric, metric_map in result.metrics.items():
        for suffix, threshold in (("50", 0.5), ("75", 0.75)):
            try:
                values[f"{metric}_{suffix}"] = metric_map.map_at(threshold)
            except KeyError:
                pass
        values[f"{metric}_50_95"] = metric_map.mean
    return values


class TensorBoardLogger:
    """Writes a training run's series (see the module docstring) as TensorBoard event files in ``logdir``.

    ``yolo_layers``: the layer index of each [yolo] layer, used in the tag names (``yolo16/iou``); without
    it the layers are numbered by position. Use as a context manager or call ``close()`` (twice is fine).
    """

    def __init__(self, logdir: str | os.PathLike, *, yolo_layers: Sequence[int] | None = None,
                 flush_secs: int = 30):
        writer_class = _summary_writer()
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = writer_class(logdir=str(self.logdir), flush_secs=flush_secs)
        self._yolo_layers = list(yolo_layers) if yolo_layers is not None else None
        self._last_iteration = 0

    def _scalar(self, tag: str, value, step: int) -> None:
        if self._writer is None:
            raise ValueError(f"the TensorBoard logger of {self.logdir} is closed")
        number = _number(value)
        if number is not None:
            self._writer.add_scalar(tag, number, global_step=step)

    def log_iteration(self, iteration: int, metrics: Mapping) -> None:
        """One training iteration. ``metrics`` is the record train.py writes to metrics.jsonl: ``loss``,
        ``avg_loss``, ``lr``, ``seconds`` (the iteration's wall time), ``images`` (images seen so far) or
        ``images_per_s``, and ``layers`` (one dict of statistics per [yolo] layer). Missing keys are skipped."""
        step = int(iteration)
        self._last_iteration = step
        self._scalar("train/loss", metrics.get("loss"), step)
        self._scalar("train/avg_loss", metrics.get("avg_loss"), step)
        self._scalar("train/learning_rate", metrics.get("lr"), step)
        self._scalar("train/images_per_s", self._images_per_s(step, metrics), step)
        for position, stats in enumerate(metrics.get("layers") or []):
            layer = self._yolo_layers[position] if self._yolo_layers and position < len(self._yolo_layers) \
                else position
            for name, value in stats.items():
                self._scalar(f"yolo{layer}/{name}", value, step)

    @staticmethod
    def _images_per_s(iteration: int, metrics: Mapping) -> float | None:
        if "images_per_s" in metrics:
            return _number(metrics["images_per_s"])
        images, seconds = _number(metrics.get("images")), _number(metrics.get("seconds"))
        if images is None or seconds is None or iteration < 1 or seconds <= 0:
            return None
        # seen = iteration * images per iteration (train.py counts iterations from seen)
        return images / iteration / seconds

    def log_map(self, iteration: int | str, values) -> None:
        """The mAP of one checkpoint: a ``MapResult`` or ``{name: value}`` (tags ``map/<name>``).
        ``iteration`` "final" (or any non-number) puts the point at the last iteration logged."""
        step = int(iteration) if isinstance(iteration, int) or str(iteration).isdigit() else self._last_iteration
        if hasattr(values, "metrics"):
            values = map_values(values)
        for name, value in values.items():
            number = _number(value)
            if number is not None and not math.isnan(number):   # NaN: no ground truth at all
                self._scalar(f"map/{name}", number, step)
        self.flush()

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
