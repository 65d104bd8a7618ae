"""Darkboard's PNG charts (OpenCV) and exports (self-contained HTML, PNG files, the CLI)."""
import json
import re

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from board_fixtures.runs import write_demo, write_log_csv_run, write_map, write_metrics_run
from pydarknet.board import chart, write_chart_png
from pydarknet.board.chart import PALETTE, Series, render_chart
from pydarknet.board.cli import board as board_cli
from pydarknet.board.export import export_html, export_pngs


def bgr(hex_color):
    return np.array([int(hex_color[i: i + 2], 16) for i in (5, 3, 1)])


def pixels_of(img, hex_color, tol=40):
    return int((np.abs(img.astype(int) - bgr(hex_color)).sum(axis=2) < tol).sum())


def test_render_chart_draws_series_axes_and_legend():
    x = np.arange(100.0)
    img = render_chart([Series("a", x, np.sin(x / 10), "#1f77b4"),
                        Series("b", x[::10], 50 + x[::10] / 4, "#d62728", points=True, right_axis=True)],
                       title="t", size=(800, 400))
    assert img.shape == (400, 800, 3) and img.dtype == np.uint8
    assert pixels_of(img, "#1f77b4") > 300 and pixels_of(img, "#d62728") > 100
    assert (img < 100).all(axis=2).sum() > 500  # axes, ticks and text in dark ink
    blank = render_chart([], size=(300, 200))
    assert blank.shape == (200, 300, 3)


def test_render_chart_breaks_lines_at_nan():
    x = np.arange(10.0)
    y = np.array([0, 1, 2, np.nan, np.nan, np.nan, np.nan, 7, 8, 9], float)
    img = render_chart([Series("", x, y, "#2ca02c", thickness=1)], size=(600, 400))
    whole = render_chart([Series("", x, x, "#2ca02c", thickness=1)], size=(600, 400))
    assert 0 < pixels_of(img, "#2ca02c") < 0.8 * pixels_of(whole, "#2ca02c")


def test_write_chart_png(tmp_path):
    run = tmp_path / "backup" / "yolov3"
    write_metrics_run(run, range(1, 801))
    write_map(run, [100, 200, 300, 400, 500, 600, 700, 800])
    path = write_chart_png(run)
    assert path == run / "chart.png"
    img = cv2.imread(str(path))
    assert img.shape == (600, 1000, 3)
    assert pixels_of(img, PALETTE[0]) > 500  # avg loss line
    assert pixels_of(img, PALETTE[1]) > 200  # mAP points and the mAP axis
    assert not list(run.glob("*.tmp"))


def test_write_chart_png_reads_incrementally(tmp_path):
    run = tmp_path / "r"
    write_metrics_run(run, range(1, 301))
    out = tmp_path / "elsewhere" / "c.png"
    out.parent.mkdir()
    write_chart_png(run, out)
    first = cv2.imread(str(out))
    write_metrics_run(run, range(301, 601), append=True)
    write_chart_png(run, out)
    reader = chart._RUN_CACHE[str(run.resolve())]
    assert reader.summary()["iterations"] == 600
    assert reader._reader.offset == (run / "metrics.jsonl").stat().st_size
    assert not np.array_equal(first, cv2.imread(str(out)))


def test_write_chart_png_from_log_csv(tmp_path):
    run = tmp_path / "ref"
    write_log_csv_run(run, range(1, 501), max_batches=1000)
    img = cv2.imread(str(write_chart_png(run)))
    assert pixels_of(img, PALETTE[0]) > 300


@pytest.fixture
def backup(tmp_path):
    root = tmp_path / "backup"
    write_demo(root)
    (root / "yolov3-mse" / "_HIDE").touch()
    return root


def test_export_html_is_self_contained(backup, tmp_path):
    path = export_html(backup, tmp_path / "out" / "report.html")
    html = path.read_text()
    assert not re.search(r'<(script|link)[^>]+(src|href)=', html)  # nothing loaded from elsewhere
    assert "uPlot" in html and "Darkboard report: backup" in html
    assert "Copyright (c) 2022 Leon Sorokin" in html  # the MIT notice travels with the inlined copy
    data = json.loads(re.search(r"window\.DARKBOARD_DATA = (\{.*?\});</script>", html, re.S).group(1))
    assert sorted(data["series"]) == ["reference-tiny", "yolov3-giou"]  # the hidden run is left out
    assert [r["id"] for r in data["runs"] if r["hidden"]] == ["yolov3-mse"]
    assert data["series"]["yolov3-giou"]["points"] == 1200


def test_export_html_escapes_script_breaking_text(tmp_path):
    name = "x<!--<script>"  # would switch an inline script into its "escaped" state
    write_metrics_run(tmp_path / "backup" / name, range(1, 3))
    html = export_html(tmp_path / "backup", tmp_path / "report.html").read_text()
    assert name not in html
    data = json.loads(re.search(r"window\.DARKBOARD_DATA = (\{.*?\});</script>", html, re.S).group(1))
    assert list(data["series"]) == [name]


def test_export_pngs(backup, tmp_path):
    written = export_pngs(backup, tmp_path / "pngs", size=(900, 500))
    names = sorted(p.name for p in written)
    assert names == sorted(f"{c}.png" for c in ("loss", "iou", "giou", "losses", "share", "lr", "ips", "map"))
    img = cv2.imread(str(tmp_path / "pngs" / "loss.png"))
    assert img.shape == (500, 900, 3) and pixels_of(img, PALETTE[1]) > 200


def test_cli_export_and_png(backup, tmp_path):
    runner = CliRunner()
    result = runner.invoke(board_cli, [str(backup), "--export", str(tmp_path / "r.html"),
                                       "--png", str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").stat().st_size > 50_000 and (tmp_path / "png" / "map.png").exists()
    result = runner.invoke(board_cli, [str(tmp_path / "missing"), "--export", str(tmp_path / "x.html")])
    assert result.exit_code != 0 and "not a folder" in result.output
