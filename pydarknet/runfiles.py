"""The files of a training run's folder and of ``valid``'s results folder: one definition of each format,
used by the code that writes it and by every reader (training, the all-weights evaluators, the board).

Pure Python on purpose: the board and the evaluators import this without loading the C engine.

- ``log.csv`` (SPEC §5): per ``[yolo]`` layer ``A<avg iou>,G<avg giou>,I<iou loss>,C<class loss>,T<cost>,``
  then ``BATCH,<iteration>,<max_batches>,<avg loss>``, numbers as C's ``%f``.
- ``metrics.jsonl``: one strict-JSON object per iteration (``NaN``/``Infinity`` are written as ``null``),
  its ``layers`` entries keyed by :data:`YOLO_STAT_FIELDS`.
- ``map.txt`` (SPEC §4): ``metric,id,mean,m50,m55,...,m95``; ``id`` is the checkpoint number or ``final``.
- ``valid`` results: ``comp4_det_test_<class>.txt`` (VOC) and ``coco_results.json`` (COCO).
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "LOG_FILE", "METRICS_FILE", "MAP_FILE", "BAD_LIST", "VOC_RESULT_FILE", "COCO_RESULT_FILE", "FINAL_ID",
    "YOLO_STAT_FIELDS", "LOG_CSV_FIELDS", "log_csv_line", "parse_log_csv_line", "log_csv_iteration",
    "metrics_line", "metrics_iteration", "strict_json_value", "map_row", "parse_map_line", "read_map_rows",
    "append_map_rows", "voc_result_name",
]

LOG_FILE = "log.csv"
METRICS_FILE = "metrics.jsonl"
MAP_FILE = "map.txt"
BAD_LIST = "bad.list"
VOC_RESULT_FILE = "comp4_det_test_{}.txt"
COCO_RESULT_FILE = "coco_results.json"
FINAL_ID = "final"

#: The statistics of one ``[yolo]`` layer's training forward, as the reference logs them: mean IoU and GIoU of
#: the matched predictions, the localisation and objectness+class parts of the cost and the total, mean
#: objectness of the matched predictions and over all predictions, mean score of the true class, recall at
#: .5 and .75, and the number of matched truths. These are the keys of ``yolo_loss``'s statistics, of
#: ``Network.loss`` and of each ``layers`` entry in ``metrics.jsonl``.
YOLO_STAT_FIELDS = ("iou", "giou", "iou_loss", "cls_loss", "cost", "obj", "noobj", "class", "recall50",
                    "recall75", "count")

#: The statistics ``log.csv`` holds per layer, with their letters.
LOG_CSV_FIELDS = (("A", "iou"), ("G", "giou"), ("I", "iou_loss"), ("C", "cls_loss"), ("T", "cost"))


# ---- log.csv -------------------------------------------------------------------------------------------------

def log_csv_line(layers: Sequence[dict], iteration: int, max_batches: int, avg_loss: float) -> str:
    """One ``log.csv`` line (without newline) for one iteration; ``layers`` are per-layer statistics dicts."""
    groups = "".join("".join(f"{letter}{layer[key]:f}," for letter, key in LOG_CSV_FIELDS) for layer in layers)
    return f"{groups}BATCH,{int(iteration)},{int(max_batches)},{avg_loss:f}"


_LOG_TOKEN = re.compile(r"^([AGICT])(.*)$")


def parse_log_csv_line(line: str) -> tuple[list[tuple[float, float, float, float, float]], int, int, float]:
    """Split one ``log.csv`` line into ``(groups, iteration, max_batches, avg_loss)``; a group is the
    ``(A, G, I, C, T)`` of one ``[yolo]`` layer forward (the reference writes one per layer and subdivision).
    Raises ``ValueError`` on anything malformed."""
    tokens = line.strip().rstrip(",").split(",")
    if len(tokens) < 4 or tokens[-4] != "BATCH":
        raise ValueError("line does not end with BATCH,<iteration>,<max_batches>,<avg loss>")
    it, max_batches, avg = int(tokens[-3]), int(tokens[-2]), float(tokens[-1])
    body = tokens[:-4]
    if len(body) % len(LOG_CSV_FIELDS):
        raise ValueError("per-layer fields are not groups of A,G,I,C,T")
    groups = []
    for g in range(0, len(body), len(LOG_CSV_FIELDS)):
        values = []
        for token, (letter, _) in zip(body[g: g + len(LOG_CSV_FIELDS)], LOG_CSV_FIELDS):
            m = _LOG_TOKEN.match(token)
            if not m or m.group(1) != letter:
                raise ValueError(f"expected {letter}<number>, got {token!r}")
            values.append(float(m.group(2)))
        groups.append(tuple(values))
    return groups, it, max_batches, avg


def log_csv_iteration(line: str) -> int | None:
    """The iteration of a ``log.csv`` line, None when the line is not one."""
    try:
        return parse_log_csv_line(line)[1]
    except (ValueError, IndexError):
        return None


# ---- metrics.jsonl -------------------------------------------------------------------------------------------

def strict_json_value(value):
    """``value`` with every NaN or infinity (at any depth) replaced by None, numpy scalars made Python numbers:
    what strict JSON readers (a browser's ``JSON.parse``) accept."""
    if isinstance(value, dict):
        return {key: strict_json_value(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if hasattr(value, "item") and not isinstance(value, float):  # numpy scalar
        return strict_json_value(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def metrics_line(record: dict) -> str:
    """One ``metrics.jsonl`` line (without newline): strict JSON, never a bare NaN."""
    return json.dumps(strict_json_value(record), allow_nan=False)


def metrics_iteration(line: str) -> int | None:
    """The iteration of a ``metrics.jsonl`` line, None for event lines and anything else."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    it = obj.get("iteration") if isinstance(obj, dict) else None
    return it if isinstance(it, int) and not isinstance(it, bool) else None


# ---- map.txt -------------------------------------------------------------------------------------------------

def map_row(metric: str, weights_id, values: Iterable[float | str]) -> str:
    """A ``map.txt`` line (without newline): ``metric,id,v1,v2,...``, numbers with 4 decimals (``nan`` when
    undefined), text as given (COCO rows hold a literal ``0`` for the thresholds COCOeval does not report)."""
    return ",".join([metric, str(weights_id), *(v if isinstance(v, str) else f"{float(v):.4f}" for v in values)])


def parse_map_line(line: str) -> tuple[str, int | str, list[float]]:
    """``metric,id,mean,m50,...`` -> ``(metric, id, values)``; id is an int or ``"final"``. A value may be
    ``nan``: what the evaluators write when the valid list has no ground truth at all (mAP undefined)."""
    parts = line.strip().split(",")
    if len(parts) < 3 or not re.fullmatch(r"[A-Za-z0-9_]+", parts[0]):
        raise ValueError("expected metric,id,value,...")
    ident = parts[1]
    if ident != FINAL_ID:
        ident = int(ident)
    values = [float(v) for v in parts[2:]]
    if any(math.isinf(v) for v in values):
        raise ValueError("infinite mAP value")
    return parts[0], ident, values


def read_map_rows(path: str | os.PathLike) -> dict[tuple[str, str], str]:
    """``map.txt`` rows keyed by ``(metric, id)`` (id as written); a missing file is empty, and lines that are
    not rows are skipped."""
    rows: dict[tuple[str, str], str] = {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            metric, ident, _ = parse_map_line(line)
        except ValueError:
            continue
        rows[(metric, str(ident))] = line.strip()
    return rows


def append_map_rows(path: str | os.PathLike, rows: Sequence[str]) -> None:
    """Append rows to ``map.txt``. Append-only on purpose: the board tails the file, and training and the
    all-weights evaluators append to the same file, so it is never rewritten."""
    if not rows:
        return
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        prefix = b""
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":  # a hand-edited file without a final newline
                prefix = b"\n"
        f.write(prefix + "".join(row + "\n" for row in rows).encode())


# ---- valid results -------------------------------------------------------------------------------------------

def voc_result_name(class_name: str) -> str:
    """The VOC result file of one class: ``comp4_det_test_<class>.txt``."""
    return VOC_RESULT_FILE.format(class_name)
