"""The paper's runs and weights: cfg/runs/<run>/ against the reference's table, the download list,
scripts/get_pretrained.sh with a fake curl (checks, resume, placement), and scripts/paper_table.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY_CFG, require_reference
from pydarknet import Network
from pydarknet.pretrained import RUNS, manifest, weights_size

SCRIPTS = ROOT / "scripts"

# The reference README's table (issue 11): run -> (data, iou_loss, iou_normalizer, cls_normalizer,
# learning_rate, burn_in, max_batches, published weights, short link), in the table's order.
TABLE = {
    "coco-baseline4": ("coco", "mse", 1.0, None, 0.00025, 4000, 500200, "yolov3_492000.weights", "2Hb6hpz"),
    "coco-iou-14": ("coco", "iou", 0.5, None, 0.00025, 4000, 500200, "yolov3_470000.weights", "307a4LO"),
    "coco-giou-12": ("coco", "giou", 0.5, None, 0.001, 1000, 550400, "yolov3_final.weights", "2PWP8Cz"),
    "yolov3-baseline2": ("voc", "mse", 1.0, None, 0.001, 1000, 100400, "yolov3-voc_50000.weights", "2vNjsGC"),
    "yolov3-giou-30": ("voc", "iou", 1.25, None, 0.00025, 4000, 50200, "yolov3-voc_48000.weights", "2WyedWT"),
    "yolov3-giou-40": ("voc", "giou", 0.25, 1.0, 0.001, 1000, 100400, "yolov3-voc_50000.weights", "2Hb70Hj"),
}


def sections(path: Path) -> list[tuple[str, dict[str, str]]]:
    """The cfg as (section, {key: value}) with Darknet's line rules (first key wins)."""
    out = []
    for raw in path.read_text().splitlines():
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            out.append((line.strip("[]"), {}))
        else:
            key, value = line.split("=", 1)
            out[-1][1].setdefault(key, value)
    return out


@pytest.mark.parametrize("run", list(TABLE))
def test_run_cfg_has_the_tables_hyper_parameters(run):
    data, loss, iou_n, cls_n, lr, burn_in, max_batches, _, _ = TABLE[run]
    folder = ROOT / "cfg" / "runs" / run
    parsed = sections(folder / f"{run}.cfg")
    net = parsed[0][1]
    assert parsed[0][0] == "net"
    size = 608 if data == "coco" else 416
    assert (int(net["batch"]), int(net["subdivisions"]), int(net["width"]), int(net["height"])) == (64, 16, size, size)
    assert net["policy"] == "steps"
    assert [float(s) for s in net["scales"].split(",")] == [0.1, 0.1]
    assert net["steps"] == ("400000,450000" if data == "coco" else "40000,45000")
    assert float(net["learning_rate"]) == lr and int(net["burn_in"]) == burn_in
    assert int(net["max_batches"]) == max_batches
    yolos = [keys for name, keys in parsed if name == "yolo"]
    assert len(yolos) == 3
    for keys in yolos:
        assert keys["iou_loss"] == loss and float(keys["iou_normalizer"]) == iou_n
        assert float(keys.get("cls_normalizer", "1")) == (cls_n or 1.0)
        assert ("cls_normalizer" in keys) == (cls_n is not None)  # '-' in the table: left at its default
        assert float(keys["jitter"]) == 0.3 and keys["random"] == "1"
        assert float(keys["ignore_thresh"]) == (0.7 if data == "coco" else 0.5)
        assert int(keys["classes"]) == (80 if data == "coco" else 20)
    options = dict(line.replace(" ", "").split("=", 1) for line in (folder / f"{run}.data").read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    assert options["prefix"] == run
    assert options["eval"] == data and int(options["classes"]) == (80 if data == "coco" else 20)


def test_runs_load_and_their_weights_have_the_published_sizes():
    # yolov3.weights is 248,007,048 bytes and darknet53.conv.74 162,482,580 (Darknet's published files).
    assert weights_size(ROOT / "cfg" / "yolov3.cfg") == 248_007_048
    assert weights_size(ROOT / "cfg" / "yolov3.cfg", 74) == 162_482_580
    assert weights_size(ROOT / "cfg" / "yolov3-tiny.cfg") == 35_434_956
    for run in RUNS:
        if run.dataset == "coco":
            assert weights_size(run.cfg) == 248_007_048, run.name


def test_manifest_lists_the_runs_in_the_tables_order_and_the_starting_points():
    items = manifest()
    runs = items[:6]
    assert [i.url for i in runs] == [f"https://stanford.io/{row[8]}" for row in TABLE.values()]
    assert [i.dest for i in runs] == [f"backup/{run}/{row[7]}" for run, row in TABLE.items()]
    assert [i.check for i in runs] == [f"cfg={ROOT}/cfg/runs/{run}/{run}.cfg" for run in TABLE]
    by_dest = {i.dest: i for i in items}
    assert by_dest["backup/darknet53.conv.74"].check.endswith("cfg/yolov3.cfg:74")
    assert by_dest["backup/yolov3.weights"].url == "https://pjreddie.com/media/files/yolov3.weights"
    tiny = by_dest["backup/yolov3-tiny.weights"]
    assert tiny.copies == ("tests/data/yolov3-tiny.weights",)
    photos = sorted(i.dest for i in items if i.check.startswith("sha256="))
    assert photos == [f"tests/data/images/{n}.jpg" for n in
                      ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")]


def test_photo_checksums_match_the_reference_photos(reference_dir):
    require_reference(reference_dir, "images")
    import hashlib

    for item in manifest():
        if item.check.startswith("sha256="):
            name = Path(item.dest).name
            assert hashlib.sha256((reference_dir / "images" / name).read_bytes()).hexdigest() == item.check[7:]


# --- get_pretrained.sh with a fake curl -------------------------------------------------------------------

FAKE_CURL = """#!/bin/bash
# Stands in for curl: serves $FAKE_SITE/<base name of the URL>; with -C - continues after the bytes already in
# the -o file; FAKE_CUT=N stops after N bytes with curl's exit status for a partial transfer (18).
resume=0
while [ $# -gt 1 ]; do
    case $1 in -o) out=$2; shift 2 ;; -C) resume=1; shift 2 ;; --retry) shift 2 ;; *) shift ;; esac
done
src="$FAKE_SITE/$(basename "$1")"
[ -f "$src" ] || exit 22
offset=0
if [ $resume = 1 ] && [ -f "$out" ]; then offset=$(wc -c < "$out"); else : > "$out"; fi
echo "$(basename "$1") $offset" >> "$FAKE_SITE/calls"
if [ -n "${FAKE_CUT:-}" ]; then tail -c +$((offset + 1)) "$src" | head -c "$FAKE_CUT" >> "$out"; exit 18; fi
tail -c +$((offset + 1)) "$src" >> "$out"
"""

# TINY_CFG's first three layers: conv 3->8 3x3 with batch norm (8*3*9 + 4*8 = 248 floats), maxpool (none),
# conv 8->16 3x3 with batch norm (16*8*9 + 4*16 = 1216): 1464 floats after the 20-byte header.
TINY_FIRST3_BYTES = 20 + 4 * 1464


@pytest.fixture
def site(tmp_path):
    """A fake download site (weights for TINY_CFG, a 3-layer prefix of them, a photo), a fake curl on PATH and
    a manifest of those files."""
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    served = tmp_path / "site"
    served.mkdir()
    with Network(cfg) as net:
        net.init_params(seed=3)
        net.save(served / "tiny.weights")
    (served / "tiny.conv.3").write_bytes((served / "tiny.weights").read_bytes()[:TINY_FIRST3_BYTES])
    photo = bytes(range(256)) * 40
    (served / "photo.jpg").write_bytes(photo)
    import hashlib

    lines = [f"https://example.org/w/tiny.weights\tbackup/run-a/tiny_final.weights\tcfg={cfg}\ttests/data/t.weights",
             f"https://example.org/w/tiny.conv.3\tbackup/tiny.conv.3\tcfg={cfg}:3\t-",
             f"https://example.org/p/photo.jpg\ttests/data/images/photo.jpg\tsha256={hashlib.sha256(photo).hexdigest()}\t-"]
    (tmp_path / "manifest.tsv").write_text("\n".join(lines) + "\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(FAKE_CURL)
    (bin_dir / "curl").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SITE": str(served),
           "PRETRAINED_MANIFEST": str(tmp_path / "manifest.tsv"), "PYTHON": sys.executable}
    env.pop("FAKE_CUT", None)
    return {"served": served, "env": env, "dest": tmp_path / "dest", "cfg": cfg}


def get(site, **extra):
    return subprocess.run(["bash", str(SCRIPTS / "get_pretrained.sh"), str(site["dest"])], capture_output=True,
                          text=True, timeout=300, env={**site["env"], **extra})


def calls(site) -> list[str]:
    path = site["served"] / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_get_pretrained_downloads_checks_and_places(site):
    result = get(site)
    assert result.returncode == 0, result.stdout + result.stderr
    dest, served = site["dest"], site["served"]
    assert (dest / "backup" / "run-a" / "tiny_final.weights").read_bytes() == (served / "tiny.weights").read_bytes()
    assert (dest / "tests" / "data" / "t.weights").read_bytes() == (served / "tiny.weights").read_bytes()
    assert (dest / "backup" / "tiny.conv.3").stat().st_size == TINY_FIRST3_BYTES
    assert (dest / "tests" / "data" / "images" / "photo.jpg").read_bytes() == (served / "photo.jpg").read_bytes()
    assert calls(site) == ["tiny.weights 0", "tiny.conv.3 0", "photo.jpg 0"]
    assert not list(dest.rglob("*.part")) and not list(dest.rglob("*.tmp"))
    again = get(site)
    assert again.returncode == 0, again.stderr
    assert len(calls(site)) == 3  # checked files are not fetched again
    assert again.stdout.count("have ") == 3


def test_get_pretrained_resumes_a_partial_download(site):
    cut = get(site, FAKE_CUT="1000")
    assert cut.returncode != 0
    target = site["dest"] / "backup" / "run-a" / "tiny_final.weights"
    assert not target.exists()
    assert Path(f"{target}.part").stat().st_size == 1000
    assert "run again to resume" in cut.stderr
    done = get(site)
    assert done.returncode == 0, done.stderr
    assert "tiny.weights 1000" in calls(site)  # continued after the 1000 bytes it had
    assert target.read_bytes() == (site["served"] / "tiny.weights").read_bytes()


@pytest.mark.parametrize("damage", ["longer", "header", "photo"])
def test_get_pretrained_rejects_a_wrong_file(site, damage):
    served = site["served"]
    if damage == "longer":  # e.g. the weights of another cfg
        (served / "tiny.conv.3").write_bytes((served / "tiny.weights").read_bytes()[:TINY_FIRST3_BYTES + 4])
        name, rel = "tiny.conv.3", "backup/tiny.conv.3"
    elif damage == "header":  # e.g. an HTML error page
        (served / "tiny.weights").write_bytes(b"<html>" + b"x" * 6000)
        name, rel = "tiny.weights", "backup/run-a/tiny_final.weights"
    else:
        (served / "photo.jpg").write_bytes(b"another photo")
        name, rel = "photo.jpg", "tests/data/images/photo.jpg"
    result = get(site)
    assert result.returncode == 1
    assert name in result.stderr and rel in result.stderr
    assert not (site["dest"] / rel).exists() and not (site["dest"] / f"{rel}.part").exists()
    assert ("longer than" in result.stderr or "not a Darknet .weights" in result.stderr
            or "SHA-256" in result.stderr)


def test_get_pretrained_replaces_a_damaged_file(site):
    assert get(site).returncode == 0
    target = site["dest"] / "backup" / "tiny.conv.3"
    target.write_bytes(target.read_bytes()[:-8])
    result = get(site)
    assert result.returncode == 0, result.stderr
    assert target.stat().st_size == TINY_FIRST3_BYTES
    assert "fails its check" in result.stderr


# --- paper_table.py on a tiny fake setup: yolov3-tiny stands in for two runs --------------------------------

PHOTOS = ["dog.jpg", "horses.jpg", "person.jpg", "eagle.jpg"]


def fake_sets(root: Path, reference_dir: Path) -> dict[str, Path]:
    """A COCO-style and a Darknet-label set of Darknet's photos whose ground truth is the reference engine's
    detections; returns the two .data files."""
    import json
    import shutil

    import cv2

    sys.path.insert(0, str(SCRIPTS))
    from coco_label import COCO_IDS  # noqa: PLC0415

    names = (reference_dir / "coco.names").read_text().splitlines()
    reference = json.loads((reference_dir / "yolov3_tiny_detections.json").read_text())
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": names[k]}
                                                             for k, i in enumerate(COCO_IDS)]}
    coco_list, label_list = [], []
    for image_id, photo in enumerate(PHOTOS, start=1):
        h, w = cv2.imread(str(reference_dir / "images" / photo)).shape[:2]
        coco_path = root / "coco" / "images" / f"{image_id:012d}.jpg"
        voc_path = root / "voc" / "images" / photo
        for path in (coco_path, voc_path):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(reference_dir / "images" / photo, path)
        coco["images"].append({"id": image_id, "file_name": coco_path.name, "width": w, "height": h})
        lines = []
        for d in reference[photo]:
            k = names.index(d["class"])
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": COCO_IDS[k], "iscrowd": 0, "area": d["w"] * d["h"],
                                        "bbox": [d["x"] - d["w"] / 2, d["y"] - d["h"] / 2, d["w"], d["h"]]})
            lines.append(f"{k} {d['x'] / w:.6f} {d['y'] / h:.6f} {d['w'] / w:.6f} {d['h'] / h:.6f}\n")
        (root / "voc" / "labels").mkdir(exist_ok=True)
        (root / "voc" / "labels" / f"{Path(photo).stem}.txt").write_text("".join(lines))
        coco_list.append(str(coco_path))
        label_list.append(str(voc_path))
    (root / "gt.json").write_text(json.dumps(coco))
    datas = {}
    for style, paths in (("coco", coco_list), ("voc", label_list)):
        (root / f"{style}.txt").write_text("".join(p + "\n" for p in paths))
        datas[style] = root / f"{style}.data"
        datas[style].write_text(f"classes=80\nvalid={root / f'{style}.txt'}\nnames={reference_dir / 'coco.names'}\n"
                                f"eval={style}\n")
    return datas


def test_paper_table_measures_downloaded_runs_beside_the_published_figures(reference_dir, tmp_path):
    require_reference(reference_dir, "yolov3-tiny.weights", "images")
    datas = fake_sets(tmp_path, reference_dir)
    backup = tmp_path / "backup"
    for run, weights in (("coco-giou-12", "yolov3_final.weights"), ("yolov3-baseline2", "yolov3-voc_50000.weights")):
        (backup / run).mkdir(parents=True)
        (backup / run / weights).symlink_to(reference_dir / "yolov3-tiny.weights")
    cfg = reference_dir / "yolov3-tiny.cfg"
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "paper_table.py"), "--backup", str(backup), "--limit", "3",
         "--coco_gt", str(tmp_path / "gt.json"), "--cfg", f"coco-giou-12={cfg}", "--cfg", f"yolov3-baseline2={cfg}",
         "--data", f"coco-giou-12={datas['coco']}", "--data", f"yolov3-baseline2={datas['voc']}", "--threads", "2"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)  # the table, for `pytest -s`
    rows = {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.split()
        rows[(fields[0], fields[3] if fields[3] in ("iou", "giou") else "")] = fields
    # the four runs without weights say so
    for run in ("coco-baseline4", "coco-iou-14", "yolov3-giou-30", "yolov3-giou-40"):
        assert "no weights" in " ".join(rows[(run, "")]), rows
    # measured: 3 images (--limit), AP and AP75 of detections against the reference's own detections: high;
    # published: the reference's figures where it reported them, '-' elsewhere
    expected_published = {("coco-giou-12", "iou"): ["0.335", "0.359"], ("coco-giou-12", "giou"): ["-", "-"],
                          ("yolov3-baseline2", "iou"): ["0.461", "0.486"],
                          ("yolov3-baseline2", "giou"): ["0.451", "0.467"]}
    for key, published in expected_published.items():
        fields = rows[key]
        assert fields[4] == "3", fields
        ap, ap75 = float(fields[5]), float(fields[6])
        assert 0.9 < ap <= 1.0 and 0.9 < ap75 <= 1.0, fields
        assert fields[7:9] == published, fields
