"""The paper's table: evaluate each downloaded published model (pydarknet.pretrained.RUNS) on its test set,
with the IoU and the GIoU metric, and set the reference's published figures beside the measured ones.

VOC runs are evaluated on their .data's valid list (VOC 2007 test) with the VOC rules (AP = the mean over
IoU thresholds .50:.95, as the reference's voc_all_map reports it); COCO runs on theirs (COCO val) with
pycocotools' COCOeval (AP@[.50:.95]). ``limit`` evaluates only the first N images, for a quick look.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .datafile import read_data_file, read_names
from .errors import CfgError
from .eval.boxes import METRICS, coco_image_id
from .pretrained import RUNS, Run

__all__ = ["Row", "evaluate_run", "paper_table", "format_table"]


@dataclass(frozen=True)
class Row:
    run: str
    dataset: str
    iou_loss: str
    metric: str = ""
    images: int = 0
    ap: float | None = None
    ap75: float | None = None
    published: tuple[float, float] | None = None
    note: str = ""


def _valid_images(data: Path, limit: int | None) -> tuple[dict, list[str]]:
    from .data import read_list  # noqa: PLC0415

    options = read_data_file(data)
    for key in ("valid", "names"):
        if key not in options:
            raise CfgError(f"{data}: missing key '{key}'")
    paths = read_list(options["valid"])
    return options, paths[:limit] if limit else paths


def evaluate_run(run: Run, weights: str | os.PathLike, *, cfg: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None, limit: int | None = None,
                 coco_gt: str | os.PathLike | None = None, threads: int = 0) -> list[Row]:
    """One row per metric (``iou``, ``giou``) for `run` with these weights (cfg and data default to the run's)."""
    from .detect import Detector  # noqa: PLC0415
    from .eval.coco import evaluate_coco, load_coco_gt  # noqa: PLC0415
    from .eval.listeval import evaluate_list, voc_rules  # noqa: PLC0415
    from .valid import write_results  # noqa: PLC0415

    cfg = Path(cfg or run.cfg)
    data = Path(data or run.data)
    options, paths = _valid_images(data, limit)
    names = read_names(options["names"])
    measured: dict[str, tuple[float, float]] = {}
    with Detector(cfg, weights, names=names, threads=threads) as detector:
        names = names[:detector.num_classes]
        if run.dataset == "voc":
            truth, use_07 = voc_rules(paths)
            result = evaluate_list(detector, paths, detector.num_classes, metrics=METRICS, use_07_metric=use_07,
                                   truth=truth, class_names=names, progress=None)
            measured = {m: (result[m].mean, result[m].map_at(0.75)) for m in METRICS}
        else:
            if coco_gt is None:
                raise ValueError(f"{run.name}: COCO evaluation needs the val annotations (coco_gt)")
            gt = load_coco_gt(coco_gt)
            ids = sorted({coco_image_id(p) for p in paths} & set(gt.getImgIds()))
            if not ids:
                raise ValueError(f"{coco_gt}: none of the images of {options['valid']} is in the annotations")
            with tempfile.TemporaryDirectory(prefix="paper_table_") as tmp:
                written = write_results(detector, paths, tmp, "coco", names, progress=None)
                for metric in METRICS:
                    stats = evaluate_coco(gt, str(written.outputs[0]), metric, image_ids=ids).stats
                    measured[metric] = (float(stats[0]), float(stats[2]))
    return [Row(run.name, run.dataset, run.iou_loss, metric, len(paths), *measured[metric],
                run.published.get(metric)) for metric in METRICS]


def paper_table(backup: str | os.PathLike = "backup", *, runs: Iterable[str] | None = None, limit: int | None = None,
                coco_gt: str | os.PathLike | None = None, cfgs: Mapping[str, str] | None = None,
                datas: Mapping[str, str] | None = None, threads: int = 0, echo=None) -> list[Row]:
    """Rows for every run (or those named): measured where ``<backup>/<run>/<published weights>`` exists,
    else a note saying what is missing. ``cfgs``/``datas`` replace a run's cfg or .data (by run name)."""
    known = {run.name: run for run in RUNS}
    selected: Sequence[Run] = RUNS if runs is None else [known[name] for name in runs]
    rows: list[Row] = []
    for run in selected:
        weights = Path(backup) / run.name / run.weights
        if not weights.is_file():
            new = [Row(run.name, run.dataset, run.iou_loss, note=f"no weights: {weights} (scripts/get_pretrained.sh)")]
        else:
            try:
                new = evaluate_run(run, weights, cfg=(cfgs or {}).get(run.name), data=(datas or {}).get(run.name),
                                   limit=limit, coco_gt=coco_gt, threads=threads)
            except (OSError, ValueError) as exc:
                new = [Row(run.name, run.dataset, run.iou_loss, note=f"error: {exc}")]
        rows.extend(new)
        if echo is not None:
            for row in new:
                echo(format_row(row))
    return rows


HEADER = (f"{'run':<18}{'data':<6}{'loss':<6}{'metric':<8}{'images':>7}{'AP':>8}{'AP75':>8}"
          f"   {'published AP':>12}{'AP75':>8}")


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_row(row: Row) -> str:
    if row.note:
        return f"{row.run:<18}{row.dataset:<6}{row.iou_loss:<6}{row.note}"
    published = row.published or (None, None)
    return (f"{row.run:<18}{row.dataset:<6}{row.iou_loss:<6}{row.metric:<8}{row.images:>7}{_figure(row.ap):>8}"
            f"{_figure(row.ap75):>8}   {_figure(published[0]):>12}{_figure(published[1]):>8}")


def format_table(rows: Sequence[Row]) -> str:
    return "\n".join([HEADER, *(format_row(row) for row in rows)])
