"""The command line: `python -m pydarknet ...`, modern and Darknet forms, on the reference model and photo."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import require_reference
from pydarknet.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["detect", "detector", "train", "valid", "board", "bench", "layers"]
# `name: NN%` as Darknet prints it, optionally followed by the box: `(x=.. y=.. w=.. h=..)`
LINE = re.compile(r"^(?P<name>[^:\n]+): (?P<pct>\d+)%(?:\s+\(x=(?P<x>[-\d.]+) y=(?P<y>[-\d.]+) w=(?P<w>[-\d.]+) "
                  r"h=(?P<h>[-\d.]+)\))?\s*$", re.M)
# Probabilities: tests/test_detect_reference.py measured |dprob| <= 0.0107 against Darknet (JPEG decoder
# differences); a printed percentage also carries 0.5 of rounding.
PCT_TOL = 1.2 + 0.5
BOX_TOL = 1.0 + 0.05  # px, plus the printed rounding to 0.1


def run_module(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pydarknet", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def ref(reference_dir):
    require_reference(reference_dir, "yolov3-tiny.weights", "images")
    weights = reference_dir / "yolov3-tiny.weights"
    detections = json.loads((reference_dir / "yolov3_tiny_detections.json").read_text())
    return {"cfg": reference_dir / "yolov3-tiny.cfg", "weights": weights, "names": reference_dir / "coco.names",
            "dog": reference_dir / "images" / "dog.jpg", "detections": detections["dog.jpg"]}


def parse(output: str) -> list[dict]:
    return [m.groupdict() for m in LINE.finditer(output)]


def assert_matches_reference(lines: list[dict], expected: list[dict]) -> None:
    """Same classes, each as often as in the reference; paired within a class by probability, every printed
    percentage (and box, when printed) agrees with the reference's."""
    assert Counter(l["name"] for l in lines) == Counter(e["class"] for e in expected), (lines, expected)
    for name in {e["class"] for e in expected}:
        ours = sorted((l for l in lines if l["name"] == name), key=lambda l: -int(l["pct"]))
        theirs = sorted((e for e in expected if e["class"] == name), key=lambda e: -e["prob"])
        for o, e in zip(ours, theirs):
            assert abs(int(o["pct"]) - 100 * e["prob"]) <= PCT_TOL, (o, e)
            if o["x"] is not None:
                got = np.array([float(o[k]) for k in "xywh"])
                want = np.array([e[k] for k in "xywh"])
                assert np.abs(got - want).max() <= BOX_TOL, (o, e)


def test_help_lists_commands():
    result = run_module("--help")
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^\s{2}(\w+)\s", result.stdout.split("Commands:", 1)[1], re.M)
    assert set(COMMANDS) <= set(listed), result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_detect_dog(ref):
    result = invoke("detect", ref["cfg"], ref["weights"], ref["dog"], "--names", ref["names"])
    assert result.exit_code == 0, result.output
    lines = parse(result.stdout)
    # the reference lists every (box, class) with prob > .25, which is detect's default threshold
    assert_matches_reference(lines, ref["detections"])
    assert {"dog", "bicycle", "car", "truck"} == {l["name"] for l in lines}


def test_detect_out_saves_annotated_image(ref, tmp_path):
    out = tmp_path / "out"
    result = invoke("detect", ref["cfg"], ref["weights"], ref["dog"], "--names", ref["names"], "--out", out)
    assert result.exit_code == 0, result.output
    saved = list(out.glob("*.jpg"))
    assert len(saved) == 1 and "dog" in saved[0].name, saved
    image = cv2.imread(str(saved[0]))
    original = cv2.imread(str(ref["dog"]))
    assert image is not None and image.shape == original.shape
    # boxes are drawn: many pixels differ from the photo by far more than JPEG re-encoding would explain
    changed = np.abs(image.astype(int) - original.astype(int)).max(axis=2) > 100
    assert changed.sum() > 1000
    assert_dog_label_drawn(image, parse(result.stdout))


def assert_dog_label_drawn(image, lines):
    """The dog's label sits on a filled rectangle of the dog's palette colour (yellow) in the saved JPEG."""
    from pydarknet.draw import class_color, label_layout  # noqa: PLC0415

    dog = next(l for l in lines if l["name"] == "dog")
    x, y, w, h = (float(dog[k]) for k in "xywh")
    height, width = image.shape[:2]
    box = tuple(int(min(max(round(v), 0), lim - 1)) for v, lim in
                zip((x - w / 2, y - h / 2, x + w / 2, y + h / 2), (width, height, width, height)))
    x0, y0, x1, y1 = label_layout(f"dog 0.{dog['pct']}", box, width, height).rect
    # most of the rectangle is the fill (JPEG blurs the colour a little at the edges and around the text)
    close = np.abs(image[y0:y1, x0:x1].astype(int) - class_color(16, 80)).max(axis=2) < 40
    assert close.mean() > 0.6, close.mean()


@pytest.mark.parametrize("flags", [["-thresh", "0.5"], ["-thresh", "0.5", "-hier", "0.5", "-nms", "0.45"]])
def test_darknet_detector_test_form(ref, tmp_path, flags):
    """(`-thresh` and `-hier` once reached click as `-t -h ...` and printed the help instead.)"""
    data = tmp_path / "coco.data"
    data.write_text(f"classes = 80\nnames = {ref['names']}\n")
    result = invoke("detector", "test", data, ref["cfg"], ref["weights"], ref["dog"], *flags)
    assert result.exit_code == 0, result.output
    lines = parse(result.stdout)
    # At .5, exactly the reference's detections above .5 remain (NMS only lets a box suppress lower scores).
    assert_matches_reference(lines, [e for e in ref["detections"] if e["prob"] > 0.5])
    assert all(int(l["pct"]) >= 50 for l in lines) and len(lines) == 5


def test_darknet_detector_test_out_draws_labels(ref, tmp_path):
    data = tmp_path / "coco.data"
    data.write_text(f"names={ref['names']}\n")
    result = invoke("detector", "test", data, ref["cfg"], ref["weights"], ref["dog"], "-out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    assert_dog_label_drawn(cv2.imread(str(tmp_path / "pred" / "dog_pred.jpg")), parse(result.stdout))


def test_darknet_detector_test_default_threshold(ref, tmp_path):
    data = tmp_path / "coco.data"
    data.write_text(f"names={ref['names']}\n")
    result = invoke("detector", "test", data, ref["cfg"], ref["weights"], ref["dog"])
    assert result.exit_code == 0, result.output
    assert_matches_reference(parse(result.stdout), ref["detections"])  # .25 by default


def test_missing_weights_message_without_traceback(reference_dir, tmp_path):
    require_reference(reference_dir, "images")
    missing = tmp_path / "nowhere" / "missing.weights"
    image = reference_dir / "images" / "dog.jpg"
    result = run_module("detect", ROOT / "cfg" / "yolov3-tiny.cfg", missing, image, cwd=tmp_path)
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_weights_darknet_form(reference_dir, tmp_path):
    require_reference(reference_dir, "images")
    data = tmp_path / "coco.data"
    data.write_text(f"names={reference_dir / 'coco.names'}\n")
    missing = tmp_path / "missing.weights"
    result = CliRunner().invoke(main, ["detector", "test", str(data), str(ROOT / "cfg" / "yolov3-tiny.cfg"),
                                       str(missing), str(reference_dir / "images" / "dog.jpg")])
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert str(missing) in result.output


def test_missing_image_and_cfg(tmp_path):
    result = CliRunner().invoke(main, ["layers", str(tmp_path / "none.cfg")])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)
    assert str(tmp_path / "none.cfg") in result.output and "Traceback" not in result.output


def test_broken_cfg_message(tmp_path):
    cfg = tmp_path / "broken.cfg"
    cfg.write_text("[net]\nwidth=64\nheight=64\nchannels=3\n[convolutional]\nfilters=abc\nsize=3\n")
    result = run_module("layers", cfg, cwd=tmp_path)
    assert result.returncode != 0
    assert f"{cfg}:6" in result.stderr and "filters" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_layers_prints_table():
    """The repository's yolov3-tiny.cfg (no reference data needed)."""
    result = invoke("layers", ROOT / "cfg" / "yolov3-tiny.cfg")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^\s*0\s+conv\s+16\s+3\s*x\s*3\s*/\s*1\s+416\s*x\s*416\s*x\s*3\s*->\s*416\s*x\s*416\s*x\s*16\s+"
                     r"0\.150\s*BFLOPs\s*$", out, re.M), out
    assert re.search(r"^\s*11\s+max\s+2\s*x\s*2\s*/\s*1\s+13\s*x\s*13\s*x\s*512\s*->\s*13\s*x\s*13\s*x\s*512\s*$", out,
                     re.M), out
    assert re.search(r"^\s*23\s+yolo\s*$", out, re.M)
    # conv layers only, as pjreddie's Darknet counts (see test_network.py): 5.565
    assert re.search(r"^Total BFLOPS 5\.565\s*$", out, re.M), out


def test_detect_precision_bf16_finds_what_float32_finds(reference_dir):
    """`detect --precision bf16` runs the bfloat16 path and reports the same objects as float32 on a real
    photo (probabilities within a few points); on a CPU without bf16 it is refused, saying why; an unknown
    precision is a usage error."""
    from pydarknet.cli import main
    from pydarknet.network import bf16_supported

    image = reference_dir / "images" / "dog.jpg"
    if not image.is_file() or not (reference_dir / "yolov3-tiny.weights").is_file():
        pytest.skip("reference yolov3-tiny weights or dog.jpg not found")
    args = ["detect", str(reference_dir / "yolov3-tiny.cfg"), str(reference_dir / "yolov3-tiny.weights"),
            str(image), "--names", str(reference_dir / "coco.names")]
    bad = CliRunner().invoke(main, args + ["--precision", "fp8"])
    assert bad.exit_code == 2 and "fp8" in bad.output
    ok, isa = bf16_supported()
    if not ok:  # refused, saying why, with no detections printed
        refused = CliRunner().invoke(main, args + ["--precision", "bf16"])
        assert refused.exit_code == 1 and "precision bf16 needs" in refused.output, refused.output
        assert "Traceback" not in refused.output and "%" not in refused.output
        return
    found = {}
    for precision in ("f32", "bf16"):
        result = CliRunner().invoke(main, args + ["--precision", precision])
        assert result.exit_code == 0, result.output
        found[precision] = sorted(
            (name, round(float(x) / 10), round(float(y) / 10), int(prob)) for name, prob, x, y in
            re.findall(r"^(\w+): (\d+)%\s+\(x=([\d.]+) y=([\d.]+)", result.output, flags=re.M))
    # the same objects at the same places (centres within ~10 px; the order by probability may differ when two
    # are close), each probability within 5 points: bf16 rounds the inputs, weights and the outputs kept between
    # layers to 8 significant bits
    assert found["f32"] and [d[:3] for d in found["bf16"]] == [d[:3] for d in found["f32"]], found
    for a, b in zip(found["f32"], found["bf16"]):
        assert abs(a[3] - b[3]) <= 5, (a, b)
