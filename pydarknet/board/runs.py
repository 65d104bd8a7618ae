"""Reading training runs for the dashboard: incremental file readers, per-run columns, downsampling.

A *run* is a folder holding ``metrics.jsonl`` (pydarknet's own log, one JSON object per iteration) or, when
that is absent, the reference engine's ``log.csv`` (SPEC §5), plus an optional ``map.txt`` (SPEC §4).

Files only ever grow while a run trains, so each file is read from the byte offset where the previous read
stopped and only complete lines are parsed; a file that shrank (rewritten) is read again from the start.
Values are kept in growable numpy columns, and what the page receives is reduced to a few thousand bucket
means, so a 500k-iteration run costs the same on the wire as a short one.

A very large file is not parsed before the first answer: a :class:`Run` first takes an evenly spaced sample
of its lines (a few thousand seeks), serves that, and replaces it by the real data as the background reader
catches up (``loading`` in the run's summary says how far it got).
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
from pathlib import Path

import numpy as np

from ..runfiles import LOG_FILE, MAP_FILE, METRICS_FILE, parse_log_csv_line, parse_map_line

__all__ = ["Run", "RunSet", "TailReader", "parse_map_line", "parse_log_csv_line", "downsample", "check_run_name",
           "HIDE_FILE"]

HIDE_FILE = "_HIDE"

#: Columns every run has; per-layer columns are ``iou.<l>`` and ``giou.<l>``.
BASE_COLUMNS = ("it", "loss", "avg_loss", "lr", "ips", "iou_loss", "cls_loss", "cost")
#: A file with more unread bytes than this is sampled first and parsed in the background.
PREVIEW_BYTES = 16 << 20
#: How much one :meth:`Run.refresh` call parses at most (keeps the reader thread responsive).
CHUNK_BYTES = 4 << 20
#: A "line" longer than this without a newline is skipped as garbage.
MAX_LINE_BYTES = 16 << 20
DISPLAY_POINTS = 2000
NAME_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")


def check_run_name(name) -> str:
    """Return ``name`` if it is a safe relative run path: 1-4 ``/``-separated segments of ``[A-Za-z0-9._-]``,
    none of them ``.`` or ``..``. Raises ``ValueError`` otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError("a run name must be a non-empty string")
    segments = name.split("/")
    if len(segments) > 4 or any(s in (".", "..") or not NAME_SEGMENT.fullmatch(s) for s in segments):
        raise ValueError(f"{name!r} is not a safe run name (segments of [A-Za-z0-9._-], no '..')")
    return name


class TailReader:
    """Reads the complete lines appended to a file since the last call."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def read(self, max_bytes: int = CHUNK_BYTES) -> tuple[list[bytes], bool]:
        """Return ``(lines, reset)``: new complete lines (without ``\\n``) and whether the file shrank, in
        which case reading restarted at offset 0 and the caller must drop what it had."""
        size = self.size()
        reset = size < self.offset
        if reset:
            self.offset = 0
        if size == self.offset:
            return [], reset
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(min(max_bytes, size - self.offset))
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) >= MAX_LINE_BYTES:  # a runaway line: skip it rather than stall forever
                self.offset += len(chunk)
            elif len(chunk) == max_bytes:  # one line longer than the chunk: read it in one go next time
                return self.read(min(MAX_LINE_BYTES, max_bytes * 4))
            return [], reset
        self.offset += end + 1
        return chunk[:end].split(b"\n"), reset


class _Column:
    """A float64 array that grows by doubling; ``view()`` is safe to use after later appends."""

    __slots__ = ("data", "n")

    def __init__(self, n: int = 0):
        self.data = np.full(max(16, n), np.nan)
        self.n = n

    def extend(self, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        need = self.n + len(values)
        if need > len(self.data):
            grown = np.full(max(need, 2 * len(self.data)), np.nan)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n: need] = values
        self.n = need

    def truncate(self, n: int) -> None:
        # copy-on-truncate: a reader may still hold a view of the old rows
        if n < self.n:
            fresh = np.full(len(self.data), np.nan)
            fresh[:n] = self.data[:n]
            self.data, self.n = fresh, n

    def view(self) -> np.ndarray:
        return self.data[: self.n]


def _num(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


class _MetricsParser:
    """``metrics.jsonl`` objects -> rows of column values."""

    def __init__(self):
        self.prev_it = None
        self.prev_images = None

    def row(self, obj) -> dict | None:
        if not isinstance(obj, dict) or "event" in obj:
            return None
        it = obj.get("iteration")
        if isinstance(it, bool) or not isinstance(it, int) or it < 0:
            return None
        images, seconds = _num(obj.get("images")), _num(obj.get("seconds"))
        batch = math.nan
        if self.prev_it is not None and it > self.prev_it:
            batch = (images - self.prev_images) / (it - self.prev_it)
        elif it > 0:
            batch = images / it
        ips = batch / seconds if seconds > 0 and batch > 0 else math.nan
        self.prev_it, self.prev_images = it, images
        row = {"it": float(it), "loss": _num(obj.get("loss")), "avg_loss": _num(obj.get("avg_loss")),
               "lr": _num(obj.get("lr")), "ips": ips}
        layers = obj.get("layers")
        if isinstance(layers, list):
            sums = {"iou_loss": 0.0, "cls_loss": 0.0, "cost": 0.0}
            for l, layer in enumerate(layers):
                if not isinstance(layer, dict):
                    continue
                row[f"iou.{l}"] = _num(layer.get("iou"))
                row[f"giou.{l}"] = _num(layer.get("giou"))
                for key in sums:
                    sums[key] += _num(layer.get(key))
            row.update(sums)
        return row


def _yolo_layers_in_log(n_groups: int, run_dir: Path) -> int:
    """How many ``[yolo]`` layers the groups of one log.csv line cover.

    The reference writes one group per layer *per subdivision forward*, so a line of 48 groups is 16 forwards of
    YOLOv3's three layers. A single ``.cfg`` in the run folder settles it; otherwise up to three groups are one
    forward (pydarknet writes one group per layer), and longer lines are taken as 3 layers (YOLOv3), else 2
    (tiny), else 1.
    """
    cfgs = list(run_dir.glob("*.cfg"))
    if len(cfgs) == 1:
        try:
            n = cfgs[0].read_text(errors="replace").count("[yolo]")
            if n and n_groups % n == 0:
                return n
        except OSError:
            pass
    if n_groups <= 3:
        return max(n_groups, 1)
    return next(n for n in (3, 2, 1) if n_groups % n == 0)


class _LogCsvParser:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.layers = None
        self.max_batches = None

    def row(self, line: str) -> dict | None:
        groups, it, max_batches, avg = parse_log_csv_line(line)
        self.max_batches = max_batches
        row = {"it": float(it), "avg_loss": avg}
        if not groups:
            return row
        if self.layers is None:
            self.layers = _yolo_layers_in_log(len(groups), self.run_dir)
        n = self.layers
        forwards = len(groups) // n if len(groups) % n == 0 else 1
        arr = np.array(groups, dtype=np.float64)
        for l in range(n):
            row[f"iou.{l}"] = float(np.mean(arr[l::n, 0]))
            row[f"giou.{l}"] = float(np.mean(arr[l::n, 1]))
        row["iou_loss"] = float(arr[:, 2].sum() / forwards)
        row["cls_loss"] = float(arr[:, 3].sum() / forwards)
        row["cost"] = float(arr[:, 4].sum() / forwards)
        return row


class Run:
    """One run folder, read incrementally. Thread-safe: :meth:`refresh` from one reader thread, the other
    methods from anywhere."""

    def __init__(self, run_id: str, path: Path, preview_bytes: int = PREVIEW_BYTES):
        self.id = run_id
        self.path = Path(path)
        self.preview_bytes = preview_bytes
        self.lock = threading.Lock()
        self.version = 0
        self.bad_lines = 0
        self.updated = 0.0  # mtime of the newest data seen
        self._source = None
        self._reset_series()
        self._map_reader = TailReader(self.path / MAP_FILE)
        self._map: dict[str, dict] = {}

    # ----- state -------------------------------------------------------------------------------------------
    def _reset_series(self) -> None:
        self._cols: dict[str, _Column] = {name: _Column() for name in BASE_COLUMNS}
        self._reader = None
        self._parser = None
        self._preview = None  # (byte positions, rows) sampled from a large file not parsed yet
        self._size_at_open = 0
        self.max_batches = None

    @property
    def hidden(self) -> bool:
        return (self.path / HIDE_FILE).exists()

    def set_hidden(self, hidden: bool) -> None:
        marker = self.path / HIDE_FILE
        if hidden:
            marker.write_text("hidden from the dashboard; delete this file to show the run again\n")
        else:
            marker.unlink(missing_ok=True)
        with self.lock:
            self.version += 1

    def _pick_source(self) -> None:
        metrics, log = self.path / METRICS_FILE, self.path / LOG_FILE
        source = METRICS_FILE if metrics.exists() else LOG_FILE if log.exists() else None
        if source == self._source:
            return
        with self.lock:
            self._source = source
            self._reset_series()
            self.version += 1
        if source is None:
            return
        self._reader = TailReader(self.path / source)
        self._parser = self._new_parser()
        self._size_at_open = self._reader.size()
        if self._size_at_open > self.preview_bytes:
            self._preview = self._sample(self._size_at_open)

    # ----- reading -----------------------------------------------------------------------------------------
    def _new_parser(self):
        return _MetricsParser() if self._source == METRICS_FILE else _LogCsvParser(self.path)

    def _parse(self, raw: bytes, parser=None) -> dict | None:
        """One line -> row; ``None`` for blank or non-iteration lines. Raises ``ValueError`` if malformed."""
        text = raw.decode("utf-8").strip()
        if not text:
            return None
        parser = parser or self._parser
        try:
            return parser.row(json.loads(text) if self._source == METRICS_FILE else text)
        except IndexError as e:
            raise ValueError(str(e)) from e

    def _parse_counted(self, raw: bytes) -> dict | None:
        try:
            return self._parse(raw)
        except (ValueError, RecursionError):  # includes JSON and UTF-8 errors
            self.bad_lines += 1
            return None

    def _sample(self, size: int, n: int = DISPLAY_POINTS) -> tuple[np.ndarray, list[dict]]:
        """Parse ``n`` lines at evenly spaced byte positions (and the last line) of a file not yet read."""
        positions, rows = [], []
        parser = self._new_parser()
        with open(self._reader.path, "rb") as f:
            samples = []  # (line position, line bytes)
            for start in np.linspace(0, size, n, endpoint=False).astype(np.int64).tolist():
                f.seek(start)
                block = f.read(64 << 10)
                line_start = 0 if start == 0 else block.find(b"\n") + 1
                line_end = block.find(b"\n", line_start)
                if (line_start or not start) and line_end >= 0:
                    samples.append((start + line_start, block[line_start:line_end]))
            tail_start = max(0, size - (64 << 10))
            f.seek(tail_start)
            tail = f.read(size - tail_start)
            end = tail.rfind(b"\n")
            begin = tail.rfind(b"\n", 0, max(end, 0)) + 1
            if end >= 0 and (begin or not tail_start):
                samples.append((tail_start + begin, tail[begin:end]))  # the last complete line
        for position, line in samples:
            try:
                row = self._parse(line, parser)
            except (ValueError, RecursionError):
                continue
            if row is not None and (not rows or row["it"] > rows[-1]["it"]):
                positions.append(position)
                rows.append(row)
        return np.array(positions, dtype=np.int64), rows

    def refresh(self, max_bytes: int = CHUNK_BYTES) -> bool:
        """Read what was appended since the last call (at most ``max_bytes`` of the main log). Returns whether
        a backlog remains, i.e. the caller should call again soon."""
        self._pick_source()
        changed = False
        backlog = False
        if self._reader is not None:
            lines, reset = self._reader.read(max_bytes)
            if reset:  # the file was rewritten: start over
                with self.lock:
                    self._cols = {name: _Column() for name in BASE_COLUMNS}
                    self._preview = None
                    self._parser = self._new_parser()
                    self.bad_lines = 0
                changed = True
            rows = [r for r in map(self._parse_counted, lines) if r is not None]
            if rows:
                self._append(rows)
                changed = True
            backlog = bool(lines) and self._reader.offset < self._reader.size()
            if self._preview is not None and not backlog:
                with self.lock:
                    self._preview = None
                changed = True
            if isinstance(self._parser, _LogCsvParser):
                self.max_batches = self._parser.max_batches
        changed |= self._refresh_map()
        if changed:
            try:
                mtime = max((self.path / f).stat().st_mtime for f in (METRICS_FILE, LOG_FILE, MAP_FILE)
                            if (self.path / f).exists())
            except (OSError, ValueError):
                mtime = 0.0
            with self.lock:
                self.version += 1
                self.updated = mtime
        return backlog

    def _append(self, rows: list[dict]) -> None:
        with self.lock:
            cols = self._cols
            it_col = cols["it"]
            # a resumed run logs iterations again: the newer lines replace the older ones from that point on
            first = rows[0]["it"]
            if it_col.n and first <= it_col.data[it_col.n - 1]:
                cut = int(np.searchsorted(it_col.view(), first, side="left"))
                for col in cols.values():
                    col.truncate(cut)
            keep = [rows[0]]
            for r in rows[1:]:
                if r["it"] > keep[-1]["it"]:
                    keep.append(r)
                else:  # restart inside this chunk
                    while keep and keep[-1]["it"] >= r["it"]:
                        keep.pop()
                    keep.append(r)
            n0 = it_col.n
            for name in {k for r in keep for k in r} - cols.keys():
                cols[name] = _Column(n0)
            for name, col in cols.items():
                col.extend([r.get(name, math.nan) for r in keep])

    def _refresh_map(self) -> bool:
        lines, reset = self._map_reader.read()
        if reset:
            self._map = {}
        if not lines and not reset:
            return False
        with self.lock:
            for raw in lines:
                try:
                    metric, ident, values = parse_map_line(raw.decode("utf-8"))
                except (ValueError, UnicodeDecodeError):
                    continue
                self._map.setdefault(metric, {})[ident] = values
        return True

    # ----- output ------------------------------------------------------------------------------------------
    def summary(self) -> dict:
        with self.lock:
            n = self._cols["it"].n
            last = self._cols["it"].data[n - 1] if n else None
            if self._preview is not None and self._preview[1]:
                last = max(last or 0, self._preview[1][-1]["it"])
            loading = None
            if self._preview is not None and self._size_at_open:
                loading = round(min(self._reader.offset / self._size_at_open, 1.0), 3)
            return {"id": self.id, "hidden": self.hidden, "source": self._source, "version": self.version,
                    "iterations": None if last is None else int(last), "points": n, "loading": loading,
                    "max_batches": self.max_batches, "bad_lines": self.bad_lines, "updated": self.updated}

    def columns(self) -> dict[str, np.ndarray]:
        """All parsed values (a snapshot; later appends do not change it)."""
        with self.lock:
            return {name: col.view() for name, col in self._cols.items()}

    def map_points(self) -> dict[str, dict]:
        """``{metric: {"x": [...], "ids": [...], "mean": [...], "m50": [...], "m75": [...]}}`` sorted by
        checkpoint; ``final`` is placed at the run's last iteration (or after the last checkpoint)."""
        with self.lock:
            table = {m: dict(v) for m, v in self._map.items()}
        last_it = float(self.summary()["iterations"] or 0)
        out = {}
        for metric, rows in sorted(table.items()):
            numeric = sorted(k for k in rows if k != "final")
            ids = numeric + (["final"] if "final" in rows else [])
            xs = [float(k) for k in numeric]
            if "final" in rows:
                end = max(last_it, float(self.max_batches or 0))
                xs.append(max(end, xs[-1] + 1 if xs else 1.0))
            pick = lambda i: [rows[k][i] if len(rows[k]) > i and math.isfinite(rows[k][i]) else None  # noqa: E731
                              for k in ids]
            out[metric] = {"x": xs, "ids": ids, "mean": pick(0), "m50": pick(1), "m75": pick(6)}
        return out

    def display_series(self, points: int = DISPLAY_POINTS) -> dict:
        """The run reduced to at most ``points`` points per series (bucket means), JSON-ready (NaN -> None)."""
        with self.lock:
            cols = {name: col.view() for name, col in self._cols.items()}
            preview = self._preview
            offset = self._reader.offset if self._reader else 0
            version = self.version
        n = len(cols["it"])
        tail = []
        if preview is not None:
            positions, rows = preview
            tail = [r for pos, r in zip(positions, rows) if pos >= offset
                    and (not n or r["it"] > cols["it"][-1])]
        if len(tail) > points // 2:  # thin the sample out, keeping the last line
            keep = np.unique(np.linspace(0, len(tail) - 1, points // 2).round().astype(int))
            tail = [tail[i] for i in keep]
        budget = points - len(tail)
        reduced = {name: downsample(v, budget) for name, v in cols.items()}
        if tail:
            for name in reduced:
                reduced[name] = np.concatenate([reduced[name], [r.get(name, math.nan) for r in tail]])
        for extra in {k for r in tail for k in r} - reduced.keys():
            reduced[extra] = np.concatenate([np.full(len(reduced["it"]) - len(tail), np.nan),
                                             [r.get(extra, math.nan) for r in tail]])
        n_layers = 1 + max([int(k.split(".")[1]) for k in reduced if k.startswith("iou.")], default=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            share_iou = 100.0 * reduced["iou_loss"] / reduced["cost"]
            share_cls = 100.0 * reduced["cls_loss"] / reduced["cost"]
        nan_layer = np.full(len(reduced["it"]), np.nan)
        return {
            "version": version,
            "x": _json_floats(reduced["it"], 1),
            **{name: _json_floats(reduced[name]) for name in BASE_COLUMNS if name != "it"},
            "iou_share": _json_floats(share_iou), "cls_share": _json_floats(share_cls),
            "layers": {key: [_json_floats(reduced.get(f"{key}.{l}", nan_layer)) for l in range(n_layers)]
                       for key in ("iou", "giou")},
            "map": self.map_points(),
            "points": n,
        }


def downsample(values: np.ndarray, points: int) -> np.ndarray:
    """Reduce ``values`` to at most ``points`` bucket means of consecutive elements (NaNs ignored)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n <= points:
        return values.copy()
    k = math.ceil(n / points)
    starts = np.arange(0, n, k)
    finite = np.isfinite(values)
    sums = np.add.reduceat(np.where(finite, values, 0.0), starts)
    counts = np.add.reduceat(finite.astype(np.int64), starts)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _json_floats(values, digits: int = 6) -> list:
    out = []
    for v in np.asarray(values, dtype=np.float64).tolist():
        if not math.isfinite(v):
            out.append(None)
        elif digits == 1:
            out.append(round(v, 1))
        else:
            out.append(float(f"{v:.{digits}g}"))
    return out


class RunSet:
    """All runs under a backup folder: ``<root>/<prefix>/`` (nested up to ``max_depth`` folders), and the root
    itself when it holds a log."""

    def __init__(self, root: Path, max_depth: int = 4, preview_bytes: int = PREVIEW_BYTES):
        self.root = Path(root)
        self.max_depth = max_depth
        self.preview_bytes = preview_bytes
        self.lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self.runs: dict[str, Run] = {}

    @staticmethod
    def is_run_dir(path: Path) -> bool:
        return any((path / f).is_file() for f in (METRICS_FILE, LOG_FILE))

    def scan(self) -> None:
        # One scan at a time: a scan that listed the folders before a run appeared must not apply its stale
        # view (and drop the run) after a later scan has added it.
        with self._scan_lock:
            self._scan()

    def _scan(self) -> None:
        found = {}
        if self.is_run_dir(self.root):
            found["."] = self.root
        stack = [(self.root, 0)]
        while stack:
            folder, depth = stack.pop()
            if depth >= self.max_depth:
                continue
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                    continue
                sub = Path(entry.path)
                if self.is_run_dir(sub):
                    found[sub.relative_to(self.root).as_posix()] = sub
                stack.append((sub, depth + 1))
        with self.lock:
            for run_id in self.runs.keys() - found.keys():  # folder deleted or emptied
                del self.runs[run_id]
            for run_id, path in found.items():
                if run_id not in self.runs:
                    self.runs[run_id] = Run(run_id, path, self.preview_bytes)

    def get(self, run_id: str) -> Run | None:
        with self.lock:
            return self.runs.get(run_id)

    def all(self) -> list[Run]:
        with self.lock:
            return [self.runs[k] for k in sorted(self.runs)]

    def refresh(self, include_hidden: bool = False) -> bool:
        """One pass over every (visible) run; returns whether any still has a backlog."""
        backlog = False
        for run in self.all():
            if include_hidden or not run.hidden:
                try:
                    backlog |= run.refresh()
                except OSError:
                    continue
        return backlog

    def load_all(self, include_hidden: bool = False) -> None:
        """Scan and read everything to the end (for export and one-shot use)."""
        self.scan()
        while self.refresh(include_hidden):
            pass
