"""Evaluate every checkpoint of a weights folder that is not yet in its ``map.txt`` (``voc_all_map.py``,
``coco_all_map.py``), for the IoU and the GIoU metric.

Meant for cron: idempotent (what ``map.txt`` holds is skipped), newest checkpoints first, bounded by
``max_runs``, and guarded by an ``fcntl`` lock on ``<folder>/.map.lock`` so two overlapping runs never
evaluate the same folder (the second one exits 0 at once).

Per checkpoint ``<base>_<id>.weights`` it appends to ``<folder>/map.txt`` one line per metric (SPEC §4; rows
are only ever appended, as training with ``--map`` does, so the board can tail the file) and
writes the evaluation's printout to ``<folder>/<id>-<metric>.txt``. A failed evaluation is reported on one line
(set ``PYDARKNET_DEBUG=1`` for its traceback); the other checkpoints are still evaluated.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .datafile import read_data_file, read_names
from .errors import CfgError
from .eval.boxes import METRICS, coco_image_id
from .eval.coco import coco_map_txt_row, evaluate_coco, load_coco_gt
from .eval.listeval import evaluate_list, voc_rules
from .eval.result import format_voc_report, map_txt_row
from .runfiles import FINAL_ID, MAP_FILE, append_map_rows, read_map_rows

__all__ = ["Checkpoint", "MAP_FILE", "LOCK_FILE", "find_checkpoints", "folder_lock", "read_map_file", "run_all_map"]

LOCK_FILE = ".map.lock"
_WEIGHTS_NAME = re.compile(r"_(\d+|final)\.weights$")


def id_order(weights_id: str) -> tuple[int, int]:
    """Sort key of a checkpoint id: numeric ids in order, ``final`` after all of them."""
    return (1, 0) if weights_id == FINAL_ID else (0, int(weights_id))


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    id: str

    @property
    def order(self) -> tuple[int, int]:
        return id_order(self.id)


def find_checkpoints(folder: str | os.PathLike, min_weight_id: int = 0) -> list[Checkpoint]:
    """``<base>_<id>.weights`` files of ``folder`` with id >= ``min_weight_id`` (``final`` always), newest first."""
    found = []
    for path in Path(folder).glob("*.weights"):
        match = _WEIGHTS_NAME.search(path.name)
        if match is None:
            continue  # not a training checkpoint (e.g. a copied pretrained file)
        checkpoint = Checkpoint(path, match.group(1))
        if checkpoint.id == FINAL_ID or int(checkpoint.id) >= min_weight_id:
            found.append(checkpoint)
    return sorted(found, key=lambda c: c.order, reverse=True)


def read_map_file(path: str | os.PathLike) -> dict[tuple[str, str], str]:
    """``map.txt`` rows keyed by ``(metric, id)``; a missing file is empty."""
    return read_map_rows(path)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[bool]:
    """Hold ``<folder>/.map.lock`` exclusively; yields False (at once) when another process holds it."""
    handle = open(Path(folder) / LOCK_FILE, "a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


class _Evaluator:
    """Per-style evaluation of one checkpoint: returns ``{metric: (map.txt row, report text)}``."""

    def __init__(self, style: str, data_file: str, cfg_file: str, gt: str | None, gpu_id: int | None):
        options = read_data_file(data_file)
        for key in ("valid", "names"):
            if key not in options:
                raise CfgError(f"{data_file}: missing key '{key}'")
        from .data import read_list
        self.style, self.cfg_file, self.gpu_id = style, cfg_file, gpu_id
        self.image_paths = read_list(options["valid"])
        self.names = read_names(options["names"])
        if style == "voc":
            # VOC XML beside the images keeps difficult flags (the reference evaluated with the devkit XML);
            # otherwise the Darknet labels are the ground truth. The VOC year picks the AP rule.
            self.truth, self.use_07_metric = voc_rules(self.image_paths)
        else:
            if gt is None:
                raise ValueError("COCO evaluation needs the ground-truth annotations (--gt)")
            self.coco_gt = load_coco_gt(gt)
            self.image_ids = sorted({coco_image_id(p) for p in self.image_paths} & set(self.coco_gt.getImgIds()))
            if not self.image_ids:
                raise ValueError(f"{gt}: none of the valid list's images is in the annotations")

    def describe(self) -> str:
        if self.style == "voc":
            rule = "11-point (VOC2007)" if self.use_07_metric else "area"
            return f"{len(self.image_paths)} images, ground truth from {self.truth}, AP rule: {rule}"
        return f"{len(self.image_paths)} images, {len(self.image_ids)} of them in the COCO annotations"

    def evaluate(self, checkpoint: Checkpoint) -> dict[str, tuple[str, str]]:
        from .eval.runner import names_for, open_detector, write_results
        with open_detector(self.cfg_file, checkpoint.path, self.names, 1, self.gpu_id) as detector:
            names = names_for(detector, self.names, self.cfg_file)
            if self.style == "voc":
                result = evaluate_list(detector, self.image_paths, len(names), metrics=METRICS,
                                       use_07_metric=self.use_07_metric, truth=self.truth,
                                       class_names=names, progress=None)
                return {metric: (map_txt_row(result, metric, checkpoint.id),
                                 format_voc_report(result[metric], per_class=True)) for metric in METRICS}
            with tempfile.TemporaryDirectory(prefix="coco_all_map_") as tmp:
                written = write_results(detector, self.image_paths, tmp, "coco", names)
                outcome = {}
                for metric in METRICS:
                    result = evaluate_coco(self.coco_gt, str(written.outputs[0]), metric, image_ids=self.image_ids)
                    outcome[metric] = (coco_map_txt_row(result, checkpoint.id), result.summary)
                return outcome


def run_all_map(
    style: str,
    data_file: str | os.PathLike,
    cfg_file: str | os.PathLike,
    weights_folder: str | os.PathLike,
    *,
    gt: str | os.PathLike | None = None,
    gpu_id: int | None = None,
    min_weight_id: int = 0,
    max_runs: int | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Evaluate the folder's new checkpoints (``style`` ``voc`` or ``coco``); returns the exit status:
    0 when everything went well or another run holds the folder, 1 when an evaluation failed."""
    if style not in ("voc", "coco"):
        raise ValueError(f"style must be 'voc' or 'coco', not {style!r}")
    folder = Path(weights_folder)
    if not folder.is_dir():
        echo(f"error: {folder}: no such weights folder")
        return 1
    try:
        with folder_lock(folder) as acquired:
            if not acquired:
                echo(f"{folder}: another evaluation is running (lock {folder / LOCK_FILE}); nothing to do")
                return 0
            return _evaluate_new_checkpoints(style, data_file, cfg_file, folder, gt, gpu_id, min_weight_id,
                                             max_runs, echo)
    except PermissionError as exc:  # a read-only folder: cannot lock, cannot write map.txt either
        echo(f"error: {folder}: {exc}")
        return 1


def _evaluate_new_checkpoints(style, data_file, cfg_file, folder: Path, gt, gpu_id, min_weight_id, max_runs,
                              echo) -> int:
    map_path = folder / MAP_FILE
    rows = read_map_file(map_path)
    todo = [c for c in find_checkpoints(folder, min_weight_id)
            if any((metric, c.id) not in rows for metric in METRICS)]
    if max_runs is not None:
        todo = todo[:max(0, max_runs)]
    if not todo:
        echo(f"{folder}: every checkpoint is already in {MAP_FILE}")
        return 0
    try:
        evaluator = _Evaluator(style, os.fspath(data_file), os.fspath(cfg_file),
                               None if gt is None else os.fspath(gt), gpu_id)
    except Exception as exc:  # noqa: BLE001 - a setup error is reported like an evaluation failure
        echo(f"error: cannot set up the evaluation: {type(exc).__name__}: {exc}")
        return 1
    echo(f"{folder}: {len(todo)} checkpoint(s) to evaluate; {evaluator.describe()}")
    failures = 0
    for checkpoint in todo:
        echo(f"evaluating {checkpoint.path.name}")
        try:
            outcome = evaluator.evaluate(checkpoint)
        except Exception as exc:  # noqa: BLE001 - one bad checkpoint must not stop the others
            failures += 1
            echo(f"error: {checkpoint.path}: evaluation failed: {type(exc).__name__}: {exc}")
            if os.environ.get("PYDARKNET_DEBUG"):
                echo(traceback.format_exc())
            continue
        new_rows = []
        for metric, (row, report) in outcome.items():
            (folder / f"{checkpoint.id}-{metric}.txt").write_text(report + "\n")
            if (metric, checkpoint.id) not in rows:
                rows[(metric, checkpoint.id)] = row
                new_rows.append(row)
                echo(row)
        append_map_rows(map_path, new_rows)  # after each checkpoint, so an interrupted run keeps its work
    if failures:
        echo(f"error: {failures} of {len(todo)} evaluation(s) failed")
        return 1
    return 0
