"""Charts as PNG images, drawn with OpenCV (no plotting dependency).

:func:`write_chart_png` is the ``chart.png`` that AlexeyAB's Darknet keeps refreshing in the run folder during
training (loss, average loss and mAP); :func:`render_chart` is the general line chart behind it and behind
``pydarknet board --png DIR``.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .runs import Run

__all__ = ["Series", "render_chart", "write_chart_png", "save_png", "PALETTE"]

#: Line colours as RGB hex (shared with the web page's palette).
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_INK = (40, 40, 40)
_GRID = (225, 225, 225)


def _bgr(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    r, g, b = (int(color[i: i + 2], 16) for i in (0, 2, 4))
    return b, g, r


@dataclass
class Series:
    label: str
    x: np.ndarray
    y: np.ndarray
    color: str = PALETTE[0]
    thickness: int = 2
    points: bool = False  # markers instead of a line (mAP per checkpoint)
    right_axis: bool = False  # plotted against the secondary y axis


def _nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10000:
        return f"{v / 1000:g}k"
    return f"{v:.4g}"


def _range(arrays, lo=None, hi=None, pad=0.05) -> tuple[float, float]:
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a for a in finite if a.size]
    dlo = min(float(a.min()) for a in finite) if finite else 0.0
    dhi = max(float(a.max()) for a in finite) if finite else 1.0
    if dhi <= dlo:
        dlo, dhi = dlo - 0.5, dhi + 0.5
    span = dhi - dlo
    lo = dlo - pad * span if lo is None else lo
    hi = dhi + pad * span if hi is None else hi
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def render_chart(series: list[Series], title: str = "", xlabel: str = "iteration", ylabel: str = "",
                 right_label: str = "", size: tuple[int, int] = (1000, 600), xlim=(None, None),
                 ylim=(None, None), right_lim=(0.0, 100.0)) -> np.ndarray:
    """Draw ``series`` into a BGR image of ``size`` (width, height): axes with ticks and grid, a title, a legend,
    lines broken at NaNs, optional point markers and a secondary y axis on the right."""
    width, height = size
    img = np.full((height, width, 3), 255, np.uint8)
    has_right = any(s.right_axis for s in series)
    left, right, top, bottom = 80, 80 if has_right else 30, 50, 60
    pw, ph = width - left - right, height - top - bottom
    xs = [np.asarray(s.x, float) for s in series]
    x0, x1 = _range(xs, *xlim, pad=0.03 if series and all(s.points for s in series) else 0.0)
    y0, y1 = _range([np.asarray(s.y, float) for s in series if not s.right_axis], *ylim)
    r0, r1 = right_lim

    def px(x, lo, hi, span, origin, flip=False):
        t = (np.asarray(x, float) - lo) / (hi - lo)
        return origin + (span * (1 - t) if flip else span * t)

    # grid, ticks, labels
    for tx in _nice_ticks(x0, x1):
        X = int(round(px(tx, x0, x1, pw, left)))
        cv2.line(img, (X, top), (X, top + ph), _GRID, 1)
        label = _fmt(tx)
        (tw, _), _ = cv2.getTextSize(label, _FONT, 0.45, 1)
        cv2.putText(img, label, (X - tw // 2, top + ph + 20), _FONT, 0.45, _INK, 1, cv2.LINE_AA)
    for ty in _nice_ticks(y0, y1):
        Y = int(round(px(ty, y0, y1, ph, top, flip=True)))
        cv2.line(img, (left, Y), (left + pw, Y), _GRID, 1)
        label = _fmt(ty)
        (tw, _), _ = cv2.getTextSize(label, _FONT, 0.45, 1)
        cv2.putText(img, label, (left - tw - 8, Y + 5), _FONT, 0.45, _INK, 1, cv2.LINE_AA)
    if has_right:
        for ty in _nice_ticks(r0, r1, 5):
            Y = int(round(px(ty, r0, r1, ph, top, flip=True)))
            cv2.putText(img, _fmt(ty), (left + pw + 8, Y + 5), _FONT, 0.45, _bgr(PALETTE[1]), 1, cv2.LINE_AA)
        (tw, _), _ = cv2.getTextSize(right_label, _FONT, 0.45, 1)
        cv2.putText(img, right_label, (width - tw - 8, top + ph + 45), _FONT, 0.45, _bgr(PALETTE[1]), 1,
                    cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (left + pw, top + ph), _INK, 1)
    cv2.putText(img, title, (left, 32), _FONT, 0.6, _INK, 1, cv2.LINE_AA)
    (tw, _), _ = cv2.getTextSize(xlabel, _FONT, 0.5, 1)
    cv2.putText(img, xlabel, (left + pw // 2 - tw // 2, height - 15), _FONT, 0.5, _INK, 1, cv2.LINE_AA)
    if ylabel:
        cv2.putText(img, ylabel, (8, top - 10), _FONT, 0.45, _INK, 1, cv2.LINE_AA)

    # data, clipped to the plot area
    plot = img[top: top + ph + 1, left: left + pw + 1]
    drawn = []  # pixel positions of the data (plot coordinates), to keep the legend off it
    for s, x in zip(series, xs):
        y = np.asarray(s.y, float)
        lo, hi = (r0, r1) if s.right_axis else (y0, y1)
        X = px(x, x0, x1, pw, 0)
        Y = px(y, lo, hi, ph, 0, flip=True)
        ok = np.isfinite(X) & np.isfinite(Y)
        drawn.append(np.stack([X[ok], Y[ok]], axis=1))
        color = _bgr(s.color)
        if s.points:
            for a, b in zip(X[ok], Y[ok]):
                if 0 <= a <= pw and 0 <= b <= ph:
                    cv2.circle(plot, (int(round(a)), int(round(b))), 5, color, -1, cv2.LINE_AA)
            continue
        # split into runs of finite points; cv2 clips polylines to the image itself
        breaks = np.flatnonzero(~ok)
        for chunk in np.split(np.arange(len(X)), breaks):
            chunk = chunk[ok[chunk]]
            if len(chunk) >= 2:
                pts = np.stack([X[chunk], np.clip(Y[chunk], -1e4, 1e4)], axis=1)
                cv2.polylines(plot, [np.round(pts * 16).astype(np.int32)], False, color, s.thickness,
                              cv2.LINE_AA, shift=4)
            elif len(chunk) == 1:
                cv2.circle(plot, (int(round(X[chunk[0]])), int(round(Y[chunk[0]]))), 2, color, -1)

    # legend: inside the plot, in the corner that hides the fewest data points (top right on a tie)
    labels = [s for s in series if s.label]
    if labels:
        lw = max(cv2.getTextSize(s.label, _FONT, 0.45, 1)[0][0] for s in labels) + 40
        lh = 20 * len(labels) + 6
        points = np.concatenate(drawn) if drawn else np.zeros((0, 2))
        corners = [(pw - lw - 10, 10), (10, 10), (pw - lw - 10, ph - lh - 10), (10, ph - lh - 10)]

        def hidden(corner):
            cx, cy = corner
            return int(np.count_nonzero((points[:, 0] >= cx - 6) & (points[:, 0] <= cx + lw + 6)
                                        & (points[:, 1] >= cy - 6) & (points[:, 1] <= cy + lh + 6)))

        cx, cy = min(corners, key=hidden)
        lx, ly = left + max(cx, 0), top + max(cy, 0)
        box = img[ly: ly + lh, lx: lx + lw]
        box[:] = (0.15 * box + 0.85 * 255).astype(np.uint8)
        for i, s in enumerate(labels):
            yy = ly + 16 + 20 * i
            if s.points:
                cv2.circle(img, (lx + 16, yy - 4), 5, _bgr(s.color), -1, cv2.LINE_AA)
            else:
                cv2.line(img, (lx + 6, yy - 4), (lx + 26, yy - 4), _bgr(s.color), max(s.thickness, 2), cv2.LINE_AA)
            cv2.putText(img, s.label, (lx + 34, yy), _FONT, 0.45, _INK, 1, cv2.LINE_AA)
    return img


def save_png(img: np.ndarray, path) -> Path:
    """Write a PNG atomically (a reader never sees half a file)."""
    path = Path(path)
    ok, data = cv2.imencode(".png", img)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)
    return path


_RUN_CACHE: dict[str, Run] = {}


def _cached_run(run_dir: Path) -> Run:
    """A :class:`Run` per folder kept for the process, so each call only parses lines appended since the last."""
    key = str(run_dir.resolve())
    run = _RUN_CACHE.get(key)
    if run is None:
        run = _RUN_CACHE[key] = Run(run_dir.name, run_dir, preview_bytes=1 << 62)
    while run.refresh():
        pass
    return run


def write_chart_png(run_dir, out_path=None, size: tuple[int, int] = (1000, 600)) -> Path:
    """Draw loss, average loss and mAP (per checkpoint, right axis in %) of the run in ``run_dir`` into
    ``out_path`` (default ``<run_dir>/chart.png``) and return the path. Cheap to call repeatedly from the
    training loop: the logs are read incrementally and the curves downsampled."""
    run_dir = Path(run_dir)
    out_path = Path(out_path) if out_path is not None else run_dir / "chart.png"
    run = _cached_run(run_dir)
    s = run.display_series(points=size[0])
    x = np.array(s["x"], dtype=float)
    as_array = lambda v: np.array([np.nan if a is None else a for a in v], dtype=float)  # noqa: E731
    series = []
    if np.isfinite(as_array(s["loss"])).any():
        series.append(Series("loss", x, as_array(s["loss"]), "#9ecae1", 1))
    series.append(Series("avg loss", x, as_array(s["avg_loss"]), PALETTE[0], 2))
    for i, (metric, m) in enumerate(sorted(s["map"].items())):
        values = 100 * as_array(m["m50"] if any(v is not None for v in m["m50"]) else m["mean"])
        best = f", best {np.nanmax(values):.1f}%" if np.isfinite(values).any() else ""
        series.append(Series(f"mAP50 ({metric}){best}", np.array(m["x"], float), values,
                             PALETTE[1 + 2 * i], points=True, right_axis=True))
    last = run.summary()["iterations"]
    avg = as_array(s["avg_loss"])
    current = f"   avg loss {avg[np.isfinite(avg)][-1]:.3f}" if np.isfinite(avg).any() else ""
    title = f"{run_dir.name}   iteration {last if last is not None else '-'}{current}"
    xmax = max(float(run.max_batches or 0), float(np.nanmax(x)) if len(x) else 1.0)
    img = render_chart(series, title=title, ylabel="loss", right_label="mAP %", size=size,
                       xlim=(0.0, xmax), ylim=(0.0, None))
    return save_png(img, out_path)
