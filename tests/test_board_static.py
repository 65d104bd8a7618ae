"""The page's chart helpers (static/series.js), run with node: the lines one run draws in one chart have distinct
colours (issue 8: "layer 0" and "layer 1" were the same colour), and the loss chart's log axis drops values it
cannot show. Skipped without node."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pydarknet.board.chart import PALETTE
from pydarknet.board.server import STATIC_DIR

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def _node(expression: str):
    script = f"const s = require({json.dumps(str(STATIC_DIR / 'series.js'))}); console.log(JSON.stringify({expression}));"
    return json.loads(subprocess.run([NODE, "-e", script], capture_output=True, text=True, check=True).stdout)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_lines_of_one_run_in_one_chart_have_distinct_colours(n):
    for run_colour in PALETTE:
        colours = _node(f"[...Array({n}).keys()].map((k) => s.lineColor({json.dumps(run_colour)}, k, {n}))")
        assert colours[0] == run_colour  # the first line keeps the run's colour (its swatch in the run list)
        rgb = [_rgb(c) for c in colours]
        for a in range(n):
            for b in range(a + 1, n):  # far apart, not just different
                assert sum(abs(x - y) for x, y in zip(rgb[a], rgb[b])) > 60, (run_colour, colours)


def test_one_line_keeps_the_run_colour():
    assert _node('s.lineColor("#1f77b4", 0, 1)') == "#1f77b4"


def test_hsl_round_trip():
    for colour in PALETTE:
        assert _node(f"s.hslToHex(...s.hexToHsl({json.dumps(colour)}))") == colour


def test_log_axis_values():
    assert _node("s.forLogAxis([2, 0, -1, null, 0.5])") == [2, None, None, None, 0.5]


def test_the_page_loads_the_helpers_and_offers_a_log_axis():
    page = (STATIC_DIR / "index.html").read_text()
    assert page.index("static/series.js") < page.index("static/app.js")
    app = (STATIC_DIR / "app.js").read_text()
    assert 'id: "loss", title: "Loss and average loss", sameColor: true, logOption: true' in app
    assert "distr: 3" in app  # uPlot's logarithmic scale
