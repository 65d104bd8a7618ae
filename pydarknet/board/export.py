"""Self-contained reports: one HTML file with the charts, scripts, styles and data inlined, or PNG files.

The HTML report is the dashboard page itself running on embedded data (``window.DARKBOARD_DATA``): same charts,
legend, smoothing and zoom, no server, so it can be mailed or attached to a paper's supplement.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .chart import PALETTE, Series, render_chart, save_png
from .runs import DISPLAY_POINTS, RunSet
from .server import STATIC_DIR

__all__ = ["collect_state", "export_html", "export_pngs"]


def collect_state(root, points: int = DISPLAY_POINTS) -> dict:
    """Read every run under ``root`` to the end and return what ``/api/state`` would (hidden runs listed,
    without series)."""
    from .server import Board  # noqa: PLC0415  (a Board without its reader thread)

    board = Board(root, preview_bytes=1 << 62)
    board.runs.load_all()
    return board.state(points)


def _inline_script(text: str) -> str:
    return text.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def export_html(root, out_path, points: int = DISPLAY_POINTS) -> Path:
    """Write the dashboard of the runs under ``root`` as a single HTML file."""
    state = collect_state(root, points)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    def style(m):
        return "<style>\n" + (STATIC_DIR / m.group(1)).read_text(encoding="utf-8") + "\n</style>"

    def script(m):
        return "<script>\n" + _inline_script((STATIC_DIR / m.group(1)).read_text(encoding="utf-8")) + "\n</script>"

    page = re.sub(r'<link rel="stylesheet" href="static/([\w.-]+)">', style, page)
    data = json.dumps(state, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\u0021--")
    page = page.replace('<script src="static/app.js"></script>',
                        f"<script>window.DARKBOARD_DATA = {data};</script>\n" + '<script src="static/app.js"></script>')
    page = re.sub(r'<script src="static/([\w.-]+)"></script>', script, page)
    licence = (STATIC_DIR / "uPlot.LICENSE").read_text(encoding="utf-8").replace("--", "- -")
    page = page.replace("</body>", f"<!-- uPlot, inlined above:\n{licence}\n-->\n</body>")
    page = page.replace("<title>Darkboard</title>", f"<title>Darkboard report: {Path(root).resolve().name}</title>")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(page, encoding="utf-8")
    return out_path


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _lighter(hex_color: str, t: float) -> str:
    rgb = [int(hex_color[i: i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * t):02x}" for c in rgb)


#: (file stem, title, y label, series of one run) for the PNG export: the page's charts.
def _png_charts():
    def loss(run, s, c):
        return [Series(f"{run} loss", _arr(s["x"]), _arr(s["loss"]), _lighter(c, .6), 1),
                Series(f"{run} avg loss", _arr(s["x"]), _arr(s["avg_loss"]), c, 2)]

    def per_layer(key):
        return lambda run, s, c: [Series(f"{run} layer {l}", _arr(s["x"]), _arr(y), _lighter(c, .3 * l), 2)
                                  for l, y in enumerate(s["layers"][key])]

    def pair(a, b, names):
        return lambda run, s, c: [Series(f"{run} {names[0]}", _arr(s["x"]), _arr(s[a]), c, 2),
                                  Series(f"{run} {names[1]}", _arr(s["x"]), _arr(s[b]), _lighter(c, .5), 2)]

    def single(key):
        return lambda run, s, c: [Series(run, _arr(s["x"]), _arr(s[key]), c, 2)]

    def map_points(run, s, c):
        return [Series(f"{run} {metric} mAP50", _arr(m["x"]), 100 * _arr(m["m50"]), _lighter(c, .4 * i), points=True)
                for i, (metric, m) in enumerate(sorted(s["map"].items()))]

    return [("loss", "Loss and average loss", "loss", loss),
            ("iou", "Average IoU per [yolo] layer", "IoU", per_layer("iou")),
            ("giou", "Average GIoU per [yolo] layer", "GIoU", per_layer("giou")),
            ("losses", "IoU loss and class loss (sum over layers)", "loss", pair("iou_loss", "cls_loss", ("IoU loss", "class loss"))),
            ("share", "Share of the total cost (%)", "%", pair("iou_share", "cls_share", ("IoU loss %", "class loss %"))),
            ("lr", "Learning rate", "lr", single("lr")),
            ("ips", "Images / s", "images/s", single("ips")),
            ("map", "mAP@.50 per checkpoint (%)", "mAP %", map_points)]


def export_pngs(root, out_dir, points: int = DISPLAY_POINTS, size=(1200, 650)) -> list[Path]:
    """Write one PNG per chart (all visible runs overlaid) into ``out_dir``; returns the paths written."""
    state = collect_state(root, points)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [r["id"] for r in state["runs"]]
    written = []
    for stem, title, ylabel, make in _png_charts():
        series = []
        for run_id, s in state["series"].items():
            color = PALETTE[ids.index(run_id) % len(PALETTE)]
            series += [x for x in make(run_id, s, color) if np.isfinite(x.y).any()]
        if series:
            written.append(save_png(render_chart(series, title=title, ylabel=ylabel, size=size), out_dir / f"{stem}.png"))
    return written
