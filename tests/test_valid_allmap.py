"""``valid`` output files, ``evaluate_list`` and the all-checkpoints evaluator on a tiny network.

Fixtures: a 64x64 network with one [yolo] layer (2 classes) and random weights, a handful of synthetic
images with Darknet labels. Random weights give random boxes, which is all these tests need: they check the
file formats, Darknet's box arithmetic (recomputed here by hand), and that two evaluation paths agree.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

detect = pytest.importorskip("pydarknet.detect", reason="the engine (pydarknet.detect) is not importable")

from click.testing import CliRunner  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402

from pydarknet.allmap import LOCK_FILE, folder_lock, run_all_map  # noqa: E402
from pydarknet.eval.listeval import evaluate_list, voc_rules  # noqa: E402
from pydarknet.eval.voc import voc_eval  # noqa: E402
from pydarknet.network import Network  # noqa: E402
from pydarknet.valid import valid, valid_command  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

TINY_CFG = """\
[net]
batch=1
subdivisions=1
width=64
height=64
channels=3

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[maxpool]
size=2
stride=2

[convolutional]
filters=21
size=1
stride=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""

# (COCO-style numeric name, width, height, label rows [class, cx, cy, w, h])
IMAGES = [
    ("000000000101", 120, 90, [[0, 0.5, 0.5, 0.4, 0.5], [1, 0.2, 0.3, 0.3, 0.3]]),
    ("000000000102", 200, 150, [[1, 0.6, 0.4, 0.5, 0.6]]),
    ("000000000103", 64, 64, [[0, 0.25, 0.25, 0.4, 0.4], [0, 0.75, 0.7, 0.4, 0.5]]),
    ("000000000104", 100, 160, []),
]
NAMES = ["cat", "dog"]


def write_dataset(root: Path, checkpoints=(100, 200, "final")) -> dict:
    """Images + labels + list + names + cfg + weights under root; returns the paths."""
    images_dir, labels_dir = root / "data" / "images", root / "data" / "labels"
    images_dir.mkdir(parents=True)
    labels_dir.mkdir(parents=True)
    rng = np.random.default_rng(3)
    paths = []
    for name, width, height, labels in IMAGES:
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        for _, cx, cy, w, h in labels:  # draw the objects so images are not pure noise
            x0, y0 = int((cx - w / 2) * width), int((cy - h / 2) * height)
            cv2.rectangle(image, (x0, y0), (int(x0 + w * width), int(y0 + h * height)), (0, 0, 255), -1)
        path = images_dir / f"{name}.png"
        cv2.imwrite(str(path), image)
        (labels_dir / f"{name}.txt").write_text("".join(" ".join(str(v) for v in row) + "\n" for row in labels))
        paths.append(str(path))
    (root / "valid.txt").write_text("\n".join(paths) + "\n")
    (root / "tiny.names").write_text("\n".join(NAMES) + "\n")
    cfg = root / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    weights_dir = root / "backup"
    weights_dir.mkdir()
    weights = {}
    with Network(cfg) as net:
        for seed, checkpoint in enumerate(checkpoints, 1):
            net.init_params(seed)
            weights[checkpoint] = weights_dir / f"tiny_{checkpoint}.weights"
            net.save(weights[checkpoint])
    for style in ("voc", "coco"):
        (root / f"{style}.data").write_text(
            f"classes=2\nvalid={root / 'valid.txt'}\nnames={root / 'tiny.names'}\nresults={root / 'results'}\n"
            f"backup={weights_dir}\neval={style}\n")
    return {"root": root, "cfg": cfg, "weights": weights, "images": paths, "backup": weights_dir,
            "voc_data": root / "voc.data", "coco_data": root / "coco.data"}


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path)


def reference_detections(dataset, checkpoint=100):
    """What the detector itself returns for each image at valid's thresh/NMS, by image path."""
    with detect.Detector(dataset["cfg"], dataset["weights"][checkpoint], names=NAMES) as detector:
        return {p: (cv2.imread(p).shape[:2], detector.detect(cv2.imread(p), thresh=0.005, nms=0.45))
                for p in dataset["images"]}


LINE = re.compile(r"^(\S+) (\d+\.\d{6}) (-?\d+\.\d{6}) (-?\d+\.\d{6}) (-?\d+\.\d{6}) (-?\d+\.\d{6})$")


def test_valid_writes_voc_files_with_darknet_arithmetic(dataset, tmp_path):
    out = tmp_path / "new" / "folder"  # created by valid
    result = valid(dataset["voc_data"], dataset["cfg"], dataset["weights"][100], prefix=out)
    assert sorted(p.name for p in result.outputs) == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    assert result.images == len(IMAGES) and result.skipped == []

    expected = {name: [] for name in NAMES}
    for path, ((height, width), detections) in reference_detections(dataset).items():
        for d in detections:
            x, y, w, h = d.box
            # Darknet: +1 pixel, then clip the low ends at 1 and the high ends at the image size.
            box = (max(x - w / 2 + 1, 1), max(y - h / 2 + 1, 1), min(x + w / 2 + 1, width),
                   min(y + h / 2 + 1, height))
            expected[d.name].append((Path(path).stem, d.prob, box))
    assert sum(len(v) for v in expected.values()) > 0
    for name in NAMES:
        lines = (out / f"comp4_det_test_{name}.txt").read_text().splitlines()
        assert len(lines) == len(expected[name])
        for line, (image_id, prob, box) in zip(lines, expected[name]):
            fields = LINE.match(line)
            assert fields, line
            assert fields.group(1) == image_id
            assert float(fields.group(2)) == pytest.approx(prob, abs=1e-6)
            np.testing.assert_allclose([float(v) for v in fields.groups()[2:]], box, atol=2e-6)


def test_valid_uses_results_folder_and_skips_unreadable_images(dataset, caplog):
    broken = dataset["root"] / "data" / "images" / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    with open(dataset["root"] / "valid.txt", "a") as f:
        f.write(f"{broken}\n")
    with caplog.at_level(logging.WARNING, logger="pydarknet.valid"):
        result = valid(dataset["voc_data"], dataset["cfg"], dataset["weights"][100])
    assert result.skipped == [str(broken)]
    assert result.images == len(IMAGES)
    assert any("broken.jpg" in record.getMessage() for record in caplog.records)
    assert (dataset["root"] / "results" / "comp4_det_test_cat.txt").is_file()


def coco_gt_from_labels(dataset) -> dict:
    images, annotations = [], []
    for name, width, height, labels in IMAGES:
        images.append({"id": int(name), "width": width, "height": height, "file_name": f"{name}.png"})
        for c, cx, cy, w, h in labels:
            annotations.append({"id": len(annotations) + 1, "image_id": int(name), "category_id": int(c) + 1,
                                "bbox": [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height],
                                "area": w * width * h * height, "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}


def test_valid_coco_json_loads_with_pycocotools(dataset, tmp_path):
    result = valid(dataset["coco_data"], dataset["cfg"], dataset["weights"][100], prefix=tmp_path / "coco")
    assert [p.name for p in result.outputs] == ["coco_results.json"]
    entries = json.loads(result.outputs[0].read_text())
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(coco_gt_from_labels(dataset)))
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = COCO(str(gt)).loadRes(str(result.outputs[0]))
    assert len(loaded.getAnnIds()) == len(entries) > 0

    expected = []
    for path, ((height, width), detections) in reference_detections(dataset).items():
        for d in detections:
            x, y, w, h = d.box
            # Darknet: clip the corners to [0, W] x [0, H], then x, y, w, h; category through the 80->91
            # table, whose first two entries are 1 and 2.
            x0, y0 = max(x - w / 2, 0), max(y - h / 2, 0)
            x1, y1 = min(x + w / 2, width), min(y + h / 2, height)
            expected.append((int(Path(path).stem), [1, 2][d.class_id], d.prob, [x0, y0, x1 - x0, y1 - y0]))
    assert len(entries) == len(expected)
    for entry, (image_id, category, prob, bbox) in zip(entries, expected):
        assert entry["image_id"] == image_id and entry["category_id"] == category
        assert entry["score"] == pytest.approx(prob, abs=1e-6)
        np.testing.assert_allclose(entry["bbox"], bbox, atol=2e-6)


def test_valid_command(dataset, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(valid_command, [str(dataset["voc_data"]), str(dataset["cfg"]),
                                                str(dataset["weights"][200]), "--prefix", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "comp4_det_test_dog.txt").is_file()
    missing = CliRunner().invoke(valid_command, [str(dataset["voc_data"]), str(dataset["cfg"]),
                                                 str(tmp_path / "none.weights")])
    assert missing.exit_code != 0


# --- evaluate_list ----------------------------------------------------------------------------------------

class ScriptedDetector:
    """Returns given detections per image size (each test image has its own size)."""

    num_classes = 2

    def __init__(self, by_size):
        self.by_size = by_size

    def detect(self, image, thresh=0.25, nms=0.45):
        return self.by_size.get(image.shape[:2], [])

    def detect_batch(self, images, thresh=0.25, nms=0.45):
        return [self.detect(image) for image in images]


def label_detections(drop=()):
    """Perfect detections made from the labels (pixel centre boxes), leaving out (image index, row) pairs."""
    by_size = {}
    for i, (_, width, height, labels) in enumerate(IMAGES):
        by_size[(height, width)] = [
            detect.Detection(int(c), NAMES[int(c)], 0.9 - 0.1 * j, (cx * width, cy * height, w * width, h * height))
            for j, (c, cx, cy, w, h) in enumerate(labels) if (i, j) not in drop]
    return by_size


def test_evaluate_list_perfect_detections(dataset):
    result = evaluate_list(ScriptedDetector(label_detections()), dataset["images"], 2, class_names=NAMES)
    for metric in ("iou", "giou"):
        np.testing.assert_allclose(result[metric].class_ap, 1.0)
        assert result[metric].mean == pytest.approx(1.0)
    assert result.num_images == len(IMAGES)


def test_evaluate_list_missed_object(dataset):
    # "cat" has 3 objects; dropping image 2's second cat leaves recall 2/3 at precision 1.
    # Area rule: 2/3. 11-point: t = 0 .. 0.6 (7 of 11 points) reach 2/3 -> 7/11. "dog" stays 1.
    result = evaluate_list(ScriptedDetector(label_detections(drop={(2, 1)})), dataset["images"], 2,
                           class_names=NAMES, metrics=("iou",))
    assert result["iou"].ap_of("cat") == pytest.approx(2 / 3)
    assert result["iou"].ap_of("dog") == pytest.approx(1.0)
    assert result["iou"].map_at(0.5) == pytest.approx((2 / 3 + 1) / 2)
    result_07 = evaluate_list(ScriptedDetector(label_detections(drop={(2, 1)})), dataset["images"], 2,
                              class_names=NAMES, metrics=("iou",), use_07_metric=True)
    assert result_07["iou"].ap_of("cat") == pytest.approx(7 / 11)


def write_devkit_from_labels(dataset, voc_dir: Path) -> None:
    """VOC XML for the test images, boxes from the labels with voc_label.py's convention reversed."""
    root = voc_dir / "VOC2012"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, width, height, labels in IMAGES:
        objects = "".join(
            f"<object><name>{NAMES[int(c)]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{(cx - w / 2) * width + 1}</xmin><ymin>{(cy - h / 2) * height + 1}</ymin>"
            f"<xmax>{(cx + w / 2) * width + 1}</xmax><ymax>{(cy + h / 2) * height + 1}</ymax></bndbox></object>"
            for c, cx, cy, w, h in labels)
        (root / "Annotations" / f"{name}.xml").write_text(f"<annotation>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(name for name, *_ in IMAGES) + "\n")


def test_evaluate_list_agrees_with_valid_plus_voc_eval(dataset, tmp_path):
    # Two paths to the same numbers: in memory, and through valid's files + the devkit evaluator.
    write_devkit_from_labels(dataset, tmp_path / "VOCdevkit")
    valid(dataset["voc_data"], dataset["cfg"], dataset["weights"][200], prefix=tmp_path / "out")
    from_files = voc_eval(tmp_path / "out", tmp_path / "VOCdevkit", 2012, "test", NAMES, metrics=("iou", "giou"))
    with detect.Detector(dataset["cfg"], dataset["weights"][200], names=NAMES) as detector:
        in_memory = evaluate_list(detector, dataset["images"], 2, class_names=NAMES)
    for metric in ("iou", "giou"):
        # valid's %f rounding of the boxes is the only difference.
        np.testing.assert_allclose(in_memory[metric].class_ap, from_files[metric].class_ap, atol=1e-9)


# --- all checkpoints --------------------------------------------------------------------------------------

def run_voc(dataset, **kwargs):
    lines = []
    status = run_all_map("voc", dataset["voc_data"], dataset["cfg"], dataset["backup"], echo=lines.append,
                         **kwargs)
    return status, lines


def test_voc_all_map_evaluates_each_checkpoint_once(dataset):
    status, lines = run_voc(dataset)
    assert status == 0, lines
    rows = (dataset["backup"] / "map.txt").read_text().splitlines()
    # Appended in evaluation order: newest first, "final" being the newest.
    assert [row.split(",")[:2] for row in rows] == [
        ["iou", "final"], ["giou", "final"], ["iou", "200"], ["giou", "200"], ["iou", "100"], ["giou", "100"]]
    for row in rows:
        values = [float(v) for v in row.split(",")[2:]]
        assert len(values) == 11  # mean, then .50 .55 ... .95
        assert values[0] == pytest.approx(np.mean(values[1:]), abs=1e-4)
    report = (dataset["backup"] / "final-giou.txt").read_text()
    assert "Threshold: 0.50 | mAP: " in report and "mAP: " in report.splitlines()[-1]

    before = (dataset["backup"] / "map.txt").read_text()
    status, lines = run_voc(dataset)
    assert status == 0
    assert not any(line.startswith("evaluating") for line in lines)
    assert (dataset["backup"] / "map.txt").read_text() == before


def test_voc_all_map_only_appends_and_respects_existing_rows(dataset):
    # Rows written by training with --map (same folder, same format) count as done and stay untouched.
    trained = "iou,200,0.1000,0.2,0.2,0.1,0.1,0.1,0.1,0.1,0.05,0.05,0.05\ngiou,200,0.0900,0.2,0.2,0.1,0.1,0.1,0.1"
    (dataset["backup"] / "map.txt").write_text(trained)  # and no final newline
    status, lines = run_voc(dataset)
    assert status == 0
    assert "evaluating tiny_200.weights" not in lines
    text = (dataset["backup"] / "map.txt").read_text()
    assert text.startswith(trained + "\n")
    assert [row.split(",")[1] for row in text.splitlines()[2:]] == ["final", "final", "100", "100"]
    assert not (dataset["backup"] / "200-iou.txt").exists()


def test_voc_all_map_min_id_and_max_runs(dataset):
    status, _ = run_voc(dataset, min_weight_id=150, max_runs=1)
    assert status == 0
    ids = {row.split(",")[1] for row in (dataset["backup"] / "map.txt").read_text().splitlines()}
    assert ids == {"final"}  # newest first, one run; 100 is below the minimum
    run_voc(dataset, min_weight_id=150)
    ids = {row.split(",")[1] for row in (dataset["backup"] / "map.txt").read_text().splitlines()}
    assert ids == {"final", "200"}


def test_corrupt_weights_fail_loudly(dataset):
    good = dataset["weights"][200].read_bytes()
    (dataset["backup"] / "tiny_300.weights").write_bytes(good[: len(good) - 10])  # ends inside a layer
    status, lines = run_voc(dataset)
    assert status == 1
    assert any(line.startswith("error:") and "tiny_300.weights" in line for line in lines)
    ids = {row.split(",")[1] for row in (dataset["backup"] / "map.txt").read_text().splitlines()}
    assert ids == {"100", "200", "final"}  # the others were still evaluated


def test_overlapping_run_exits_zero(dataset):
    with folder_lock(dataset["backup"]) as acquired:
        assert acquired
        status, lines = run_voc(dataset)
    assert status == 0
    assert "another evaluation is running" in lines[0]
    assert not (dataset["backup"] / "map.txt").exists()
    assert (dataset["backup"] / LOCK_FILE).exists()


def run_script(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_voc_all_map_script_with_lib_folder(dataset):
    weights = dataset["weights"]
    for checkpoint in (100, 200):
        weights[checkpoint].unlink()
    result = run_script("voc_all_map.py", "--data_file", dataset["voc_data"], "--cfg_file", dataset["cfg"],
                        "--weights_folder", dataset["backup"], "--lib_folder", ROOT / "pydarknet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "iou,final," in result.stdout
    (dataset["backup"] / "tiny_400.weights").write_bytes(b"\x00" * 7)  # not even a header
    result = run_script("voc_all_map.py", "--data_file", dataset["voc_data"], "--cfg_file", dataset["cfg"],
                        "--weights_folder", dataset["backup"])
    assert result.returncode == 1
    assert "tiny_400.weights" in result.stdout
    missing_lib = run_script("voc_all_map.py", "--data_file", dataset["voc_data"], "--cfg_file", dataset["cfg"],
                             "--weights_folder", dataset["backup"], "--lib_folder", dataset["root"])
    assert missing_lib.returncode != 0  # no libdarknet.so there: the override is really used


def test_coco_all_map_script(dataset, tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(coco_gt_from_labels(dataset)))
    result = run_script("coco_all_map.py", "--data_file", dataset["coco_data"], "--cfg_file", dataset["cfg"],
                        "--weights_folder", dataset["backup"], "--gt", gt, "--max_runs", 2)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = (dataset["backup"] / "map.txt").read_text().splitlines()
    assert [row.split(",")[:2] for row in rows] == [["iou", "final"], ["giou", "final"],
                                                    ["iou", "200"], ["giou", "200"]]
    for row in rows:
        fields = row.split(",")
        assert len(fields) == 13
        assert fields[4:8] == ["0"] * 4 and fields[9:] == ["0"] * 4
    summary = (dataset["backup"] / "200-iou.txt").read_text().splitlines()
    assert len(summary) == 12 and summary[0].startswith(" Average Precision")

    # The next cron tick picks up what --max_runs left; the one after that has nothing to do.
    args = ["--data_file", dataset["coco_data"], "--cfg_file", dataset["cfg"], "--weights_folder", dataset["backup"],
            "--gt", gt]
    second = run_script("coco_all_map.py", *args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "evaluating tiny_100.weights" in second.stdout and "tiny_200" not in second.stdout
    done = (dataset["backup"] / "map.txt").read_text()
    assert [row.split(",")[1] for row in done.splitlines()] == ["final", "final", "200", "200", "100", "100"]
    third = run_script("coco_all_map.py", *args)
    assert third.returncode == 0 and "evaluating" not in third.stdout
    assert (dataset["backup"] / "map.txt").read_text() == done
    # A corrupt checkpoint fails the run loudly (exit 1, the file named), as in the VOC evaluator.
    (dataset["backup"] / "tiny_300.weights").write_bytes(b"\x00" * 7)
    broken = run_script("coco_all_map.py", *args)
    assert broken.returncode == 1 and "error:" in broken.stdout and "tiny_300.weights" in broken.stdout


def test_command_lines(dataset, tmp_path):
    """Both spellings on the real command line: the modern `valid` and Darknet's `detector valid`."""
    common = [str(dataset["voc_data"]), str(dataset["cfg"]), str(dataset["weights"][100])]
    modern = subprocess.run([sys.executable, "-m", "pydarknet", "valid", *common, "--prefix", str(tmp_path / "a")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert modern.returncode == 0, modern.stderr
    darknet = subprocess.run([sys.executable, "-m", "pydarknet", "detector", "valid", *common,
                              "-prefix", str(tmp_path / "b")],
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert darknet.returncode == 0, darknet.stderr
    for name in NAMES:
        first = (tmp_path / "a" / f"comp4_det_test_{name}.txt").read_text()
        assert first and first == (tmp_path / "b" / f"comp4_det_test_{name}.txt").read_text()


def test_valid_cli_reports_a_bad_coco_image_name_without_traceback(dataset, tmp_path):
    with open(dataset["root"] / "valid.txt", "a") as f:
        f.write(f"{dataset['root'] / 'data' / 'images' / 'no_number.png'}\n")
    result = subprocess.run([sys.executable, "-m", "pydarknet", "detector", "valid", str(dataset["coco_data"]),
                             str(dataset["cfg"]), str(dataset["weights"][100]), "-prefix", str(tmp_path / "c")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 1
    assert "Error:" in result.stderr and "no_number.png" in result.stderr and "Traceback" not in result.stderr


def test_valid_logs_where_the_results_went(dataset, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pydarknet.valid"):
        valid(dataset["voc_data"], dataset["cfg"], dataset["weights"][100], prefix=tmp_path / "out")
    assert any(f"valid: {len(IMAGES)} images, results in {tmp_path / 'out'}" in r.getMessage()
               for r in caplog.records)


def test_voc_rules(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    images = [str(voc / "JPEGImages" / f"00000{i}.jpg") for i in (1, 2)]
    (voc / "Annotations" / "000001.xml").write_text("<annotation/>")
    assert voc_rules(images) == ("labels", True)  # one image without XML: the labels are the ground truth
    (voc / "Annotations" / "000002.xml").write_text("<annotation/>")
    assert voc_rules(images) == ("voc", True)  # VOC2007: the 11-point rule
    assert voc_rules([p.replace("VOC2007", "VOC2012") for p in images]) == ("labels", False)
    assert voc_rules([]) == ("labels", False)


def test_valid_rejects_bad_setups_before_detecting(dataset, tmp_path):
    odd = dataset["root"] / "data" / "images" / "no_number.png"
    cv2.imwrite(str(odd), np.zeros((10, 10, 3), np.uint8))
    with open(dataset["root"] / "valid.txt", "a") as f:
        f.write(f"{odd}\n")
    with pytest.raises(ValueError, match="no_number.png"):
        valid(dataset["coco_data"], dataset["cfg"], dataset["weights"][100], prefix=tmp_path / "coco")
    assert not (tmp_path / "coco" / "coco_results.json").exists()

    (dataset["root"] / "tiny.names").write_text("cat\n")  # one name for a two-class network
    with pytest.raises(ValueError, match="class"):
        valid(dataset["voc_data"], dataset["cfg"], dataset["weights"][100], prefix=tmp_path / "voc")
    (dataset["root"] / "voc_bad.data").write_text("classes=2\nnames=x.names\n")
    with pytest.raises(ValueError, match="valid"):
        valid(dataset["root"] / "voc_bad.data", dataset["cfg"], dataset["weights"][100])


def test_batched_valid_matches_single_images(dataset, tmp_path):
    valid(dataset["voc_data"], dataset["cfg"], dataset["weights"][100], prefix=tmp_path / "one")
    valid(dataset["voc_data"], dataset["cfg"], dataset["weights"][100], prefix=tmp_path / "three", batch=3)
    for name in NAMES:
        single = (tmp_path / "one" / f"comp4_det_test_{name}.txt").read_text().splitlines()
        batched = (tmp_path / "three" / f"comp4_det_test_{name}.txt").read_text().splitlines()
        assert len(single) == len(batched) > 0
        for a, b in zip(single, batched):  # same detections; a batched forward may differ in the last bits
            assert a.split()[0] == b.split()[0]
            np.testing.assert_allclose([float(v) for v in a.split()[1:]], [float(v) for v in b.split()[1:]],
                                       atol=1e-4)
