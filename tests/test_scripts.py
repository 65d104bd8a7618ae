"""The scripts/ wrappers: --help, build_run.sh, the label converters, the evaluators' printouts, Slurm."""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
PY_SCRIPTS = ["voc_reval.py", "coco_eval.py", "voc_all_map.py", "coco_all_map.py", "voc_label.py", "coco_label.py",
              "paper_table.py"]
SH_SCRIPTS = ["build_run.sh", "package_libs.sh", "get_2017_coco_dataset.sh", "get_pretrained.sh"]


def run(args, **kwargs):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("name", PY_SCRIPTS)
def test_python_script_help(name):
    result = run([sys.executable, SCRIPTS / name, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


@pytest.mark.parametrize("name", SH_SCRIPTS)
def test_shell_script_help(name):
    result = run(["bash", SCRIPTS / name, "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:")


def test_reference_option_names():
    for name in ("voc_all_map.py", "coco_all_map.py"):
        text = run([sys.executable, SCRIPTS / name, "--help"]).stdout
        for option in ("--data_file", "--cfg_file", "--weights_folder", "--gpu_id", "--min_weight_id",
                       "--lib_folder", "--max_runs"):
            assert option in text, (name, option)
    assert "--gt" in run([sys.executable, SCRIPTS / "coco_all_map.py", "--help"]).stdout
    text = run([sys.executable, SCRIPTS / "voc_reval.py", "--help"]).stdout
    for option in ("--voc_dir", "--year", "--image_set", "--classes", "--giou_metric"):
        assert option in text


def test_shell_scripts_avoid_gnu_only_sed_in_place():
    for path in list(SCRIPTS.glob("*.sh")) + list((SCRIPTS / "slurm").glob("*.sbatch")):
        assert not re.search(r"sed\s+(-[a-zA-Z]*\s+)*-i(\s|$)", path.read_text()), path


# --- build_run.sh -----------------------------------------------------------------------------------------

def test_build_run_copies_and_renames(tmp_path):
    runs = tmp_path / "runs"
    src = runs / "voc.giou"
    (src / "extra").mkdir(parents=True)
    (src / "voc.giou.data").write_text("classes=20\nprefix=voc.giou\nbackup=backup\nnames=data/vocXgiou.names\n")
    (src / "voc.giou.cfg").write_text("[net]\n# run voc.giou\nwidth=416\n")
    (src / "extra" / "notes_voc.giou.txt").write_text("voc.giou voc.giou\n")
    env = {**os.environ, "RUNS_DIR": str(runs)}
    result = run(["bash", SCRIPTS / "build_run.sh", "voc.giou", "voc_mse&2"], env=env)
    assert result.returncode == 0, result.stderr
    dst = runs / "voc_mse&2"
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == [
        "extra/notes_voc_mse&2.txt", "voc_mse&2.cfg", "voc_mse&2.data"]
    # The '.' of the name is literal (vocXgiou stays) and '&' in the new name is not sed's "whole match".
    assert (dst / "voc_mse&2.data").read_text() == \
        "classes=20\nprefix=voc_mse&2\nbackup=backup\nnames=data/vocXgiou.names\n"
    assert (dst / "extra" / "notes_voc_mse&2.txt").read_text() == "voc_mse&2 voc_mse&2\n"
    assert (src / "voc.giou.data").is_file()  # the source run is untouched
    again = run(["bash", SCRIPTS / "build_run.sh", "voc.giou", "voc_mse&2"], env=env)
    assert again.returncode != 0 and "already exists" in again.stderr
    missing = run(["bash", SCRIPTS / "build_run.sh", "nope", "x"], env=env)
    assert missing.returncode != 0 and "no such run" in missing.stderr
    assert not list(runs.glob(".build_run.*"))


# --- package_libs.sh --------------------------------------------------------------------------------------

SYSTEM_DIRS = ("/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/")


def test_package_libs_copies_the_library_and_its_non_system_dependencies(tmp_path):
    lib = ROOT / "pydarknet" / "libdarknet.so"
    if not lib.is_file() or shutil.which("ldd") is None:
        pytest.skip("needs a built pydarknet/libdarknet.so (make) and ldd")
    dest = tmp_path / "shared" / "lib"
    env = {k: v for k, v in os.environ.items() if k != "PYDARKNET_LIBRARY"}
    result = run(["bash", SCRIPTS / "package_libs.sh", dest], env=env)
    assert result.returncode == 0, result.stderr
    # What ldd resolves outside the system folders travels along; the system's libraries (libc, libm, ...) do not.
    needed = {}
    # Built by pip in a temporary environment, the library's rpaths to its wheels are gone: what ldd cannot find is
    # where the package preloads it from, as a process that imports it shows.
    loaded = run([sys.executable, "-c", "import pydarknet._ffi, sys; sys.stdout.write(open('/proc/self/maps').read())"],
                 env=env).stdout.split()
    for line in run(["ldd", lib]).stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "=>" and fields[2].startswith("/"):
            needed[fields[0]] = fields[2]
        elif len(fields) >= 3 and fields[1] == "=>" and fields[2] == "not":
            preloaded = [p for p in loaded if p.startswith("/") and Path(p).name == fields[0]]
            assert preloaded, f"{fields[0]}: neither found by ldd nor preloaded by the package"
            needed[fields[0]] = preloaded[0]
    expected = {name for name, path in needed.items() if not path.startswith(SYSTEM_DIRS)}
    assert {p.name for p in dest.iterdir()} == {"libdarknet.so", *expected}
    for name in expected:
        assert (dest / name).stat().st_size == Path(needed[name]).resolve().stat().st_size
    # The copy is the one loaded when pointed at (what --lib_folder does).
    probe = run([sys.executable, "-c", "import pydarknet._ffi, sys; sys.stdout.write(open('/proc/self/maps').read())"],
                env={**env, "PYDARKNET_LIBRARY": str(dest / "libdarknet.so")}, cwd=ROOT)
    assert probe.returncode == 0, probe.stderr
    assert str(dest / "libdarknet.so") in probe.stdout
    again = run(["bash", SCRIPTS / "package_libs.sh", dest], env=env)  # refreshing a packaged folder works
    assert again.returncode == 0, again.stderr


# --- get_2017_coco_dataset.sh ------------------------------------------------------------------------------

FAKE_CURL = """#!/bin/bash
# Stands in for curl: serves files from $FAKE_SITE by the URL's base name and records each call.
while [ $# -gt 1 ]; do
    case $1 in -o) out=$2; shift 2 ;; *) shift ;; esac
done
echo "$1" >> "$FAKE_SITE/calls"
cp "$FAKE_SITE/$(basename "$1")" "$out"
"""


def test_get_2017_coco_dataset_unpacks_and_writes_lists(tmp_path):
    import zipfile

    if shutil.which("unzip") is None:
        pytest.skip("needs unzip")
    site, bin_dir = tmp_path / "site", tmp_path / "bin"
    site.mkdir()
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(FAKE_CURL)
    (bin_dir / "curl").chmod(0o755)
    for part, image_id in (("train2017", 9), ("val2017", 42)):
        with zipfile.ZipFile(site / f"{part}.zip", "w") as z:
            z.writestr(f"{part}/{image_id:012d}.jpg", b"jpeg bytes")
    with zipfile.ZipFile(site / "annotations_trainval2017.zip", "w") as z:
        for part, image_id in (("train2017", 9), ("val2017", 42)):
            z.writestr(f"annotations/instances_{part}.json", json.dumps({
                "images": [{"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 100, "height": 50}],
                "annotations": [{"id": 1, "image_id": image_id, "category_id": 18, "bbox": [10, 5, 20, 10],
                                 "iscrowd": 0}],
                "categories": []}))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SITE": str(site),
           "PYTHON": sys.executable}
    dest = tmp_path / "data" / "coco"
    result = run(["bash", SCRIPTS / "get_2017_coco_dataset.sh", dest], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "calls").read_text().splitlines() == [
        "http://images.cocodataset.org/zips/train2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
        "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"]
    image = dest.resolve() / "images" / "val2017" / "000000000042.jpg"
    assert image.read_bytes() == b"jpeg bytes"
    assert (dest / "val2017.txt").read_text().splitlines() == [str(image)]
    # Darknet finds the label by replacing images/ with labels/: dog (class 16), centre (20, 10) of 100x50.
    label = (dest / "labels" / "val2017" / "000000000042.txt").read_text().split()
    assert label[0] == "16"
    np.testing.assert_allclose([float(v) for v in label[1:]], [0.2, 0.2, 0.2, 0.2])
    assert (dest / "train2017.txt").read_text().strip().endswith("000000000009.jpg")
    again = run(["bash", SCRIPTS / "get_2017_coco_dataset.sh", dest], env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len((site / "calls").read_text().splitlines()) == 3  # finished downloads are not fetched again


# --- label converters -------------------------------------------------------------------------------------

def test_voc_label(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000001\n")
    (voc / "Annotations" / "000001.xml").write_text(
        "<annotation><size><width>200</width><height>100</height></size>"
        "<object><name>dog</name><difficult>0</difficult>"
        "<bndbox><xmin>21</xmin><ymin>11</ymin><xmax>61</xmax><ymax>51</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "<object><name>unicorn</name><difficult>0</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "</annotation>")
    result = run([sys.executable, SCRIPTS / "voc_label.py", "--voc_dir", tmp_path / "VOCdevkit",
                  "--out_dir", tmp_path], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2012_train" in result.stderr  # missing sets are reported and skipped
    listing = (tmp_path / "2007_test.txt").read_text().splitlines()
    assert listing == [str((voc / "JPEGImages" / "000001.jpg").resolve())]
    # dog (class 11): centre ((21+61)/2 - 1, (11+51)/2 - 1) = (40, 30), size 40x40, over 200x100.
    # The difficult cat and the unknown class are left out.
    fields = (voc / "labels" / "000001.txt").read_text().split()
    assert fields[0] == "11"
    np.testing.assert_allclose([float(v) for v in fields[1:]], [0.2, 0.3, 0.2, 0.4])


def test_coco_label(tmp_path):
    annotations = {
        "images": [{"id": 42, "file_name": "000000000042.jpg", "width": 100, "height": 50},
                   {"id": 7, "file_name": "000000000007.jpg", "width": 10, "height": 10}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 18, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 90, "bbox": [90, 40, 20, 20], "iscrowd": 0},
            {"id": 3, "image_id": 42, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},
        ],
        "categories": []}
    (tmp_path / "instances.json").write_text(json.dumps(annotations))
    images = tmp_path / "coco" / "images" / "val2017"
    images.mkdir(parents=True)
    result = run([sys.executable, SCRIPTS / "coco_label.py", "--annotations", tmp_path / "instances.json",
                  "--images_dir", images, "--list", tmp_path / "val.txt"])
    assert result.returncode == 0, result.stderr
    labels = tmp_path / "coco" / "labels" / "val2017"
    # category 18 (dog) is Darknet class 16: centre (20, 10) of 100x50, size 20x10.
    # category 90 (toothbrush) is class 79, clipped to x 90..100, y 40..50: centre (95, 45), size 10x10.
    # The crowd region is skipped.
    rows = [line.split() for line in (labels / "000000000042.txt").read_text().splitlines()]
    assert [r[0] for r in rows] == ["16", "79"]
    np.testing.assert_allclose([[float(v) for v in r[1:]] for r in rows],
                               [[0.2, 0.2, 0.2, 0.2], [0.95, 0.9, 0.1, 0.2]])
    assert (labels / "000000000007.txt").read_text() == ""
    assert (tmp_path / "val.txt").read_text().splitlines() == [
        str(images.resolve() / "000000000007.jpg"), str(images.resolve() / "000000000042.jpg")]


# --- evaluator printouts ----------------------------------------------------------------------------------

def test_coco_eval_prints_the_pycocotools_summary(tmp_path):
    gt = {"images": [{"id": i, "width": 100, "height": 100} for i in (1, 2)],
          "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500,
                           "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 30, 40], "area": 1200,
                           "iscrowd": 0}]}
    results = [{"image_id": 1, "category_id": 1, "bbox": [12, 10, 50, 50], "score": 0.9},
               {"image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30], "score": 0.8},
               {"image_id": 2, "category_id": 1, "bbox": [2, 0, 30, 38], "score": 0.4}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "coco_results.json").write_text(json.dumps(results))
    result = run([sys.executable, SCRIPTS / "coco_eval.py", "--gt", tmp_path / "gt.json",
                  "--results", tmp_path / "coco_results.json"])
    assert result.returncode == 0, result.stderr
    direct = io.StringIO()
    with contextlib.redirect_stdout(direct):
        coco = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(coco, coco.loadRes(str(tmp_path / "coco_results.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            evaluator.summarize()
    assert result.stdout.splitlines() == summary.getvalue().splitlines()
    assert len(result.stdout.splitlines()) == 12
    giou = run([sys.executable, SCRIPTS / "coco_eval.py", "--gt", tmp_path / "gt.json",
                "--results", tmp_path / "coco_results.json", "--giou_metric"])
    assert giou.returncode == 0 and len(giou.stdout.splitlines()) == 12


def test_voc_reval_prints_thresholds_and_writes_curves(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n")
    box = "<bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox>"
    (voc / "Annotations" / "a.xml").write_text(
        f"<annotation><object><name>cat</name><difficult>0</difficult>{box.format(1, 1, 10, 10)}</object>"
        "</annotation>")
    (voc / "Annotations" / "b.xml").write_text(
        f"<annotation><object><name>cat</name><difficult>0</difficult>{box.format(1, 1, 100, 100)}</object>"
        "</annotation>")
    (tmp_path / "names").write_text("cat\n")
    out = tmp_path / "out"
    out.mkdir()
    # a: exact. b: [1,1,100,80] covers 8000 of 10000 px: IoU .8, and GIoU .8 too (hull = union).
    (out / "comp4_det_test_cat.txt").write_text("a 0.9 1 1 10 10\nb 0.8 1 1 100 80\n")
    result = run([sys.executable, SCRIPTS / "voc_reval.py", out, "--voc_dir", tmp_path / "VOCdevkit",
                  "--year", "2007", "--classes", tmp_path / "names"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # AP 1 up to .75 (6 thresholds); above .80 only "a" matches: recall .5 at precision 1 -> 11-point 6/11.
    expected = [f"Threshold: {t:.2f} | mAP: {1.0 if t < 0.79 else 6 / 11:.3f}"
                for t in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)]
    assert lines[:10] == expected
    assert lines[10] == f"mAP: {(6 + 4 * 6 / 11) / 10:.4f}"
    with open(out / "cat_pr.pkl", "rb") as f:
        curve = pickle.load(f)
    assert curve["ap"] == pytest.approx(1.0) and len(curve["aps"]) == 10
    bad = run([sys.executable, SCRIPTS / "voc_reval.py", out, "--voc_dir", tmp_path / "nowhere"])
    assert bad.returncode == 1 and "not found" in bad.stderr


# --- Slurm and cron templates -----------------------------------------------------------------------------

FAKE_PYTHON = """#!/bin/bash
# Stands in for python3: runs real Python for scripts, records `-m pydarknet ...` calls and then waits
# for SIGTERM, writing "saved" like a trainer that saves its backup on the way out.
if [ "$1" = "-m" ]; then
    trap 'echo saved >> "$FAKE_LOG"; exit 0' TERM
    echo "$@" > "$FAKE_LOG"
    for _ in $(seq 100); do sleep 0.1; done
    exit 3
fi
exec {python} "$@"
"""


FAKE_SRUN = """#!/bin/bash
# Stands in for srun: records its options and the rendezvous it was given, then runs the task once.
echo "srun $* url=$PYDARKNET_DIST_URL device=$PYDARKNET_DEVICE" > "$FAKE_SRUN_LOG"
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""


@pytest.mark.parametrize("name, tasks_per_node, nodes", [("train_1gpu", 1, 1), ("train_2gpu", 2, 1),
                                                         ("train_4gpu", 4, 1), ("train_2x4gpu", 4, 2)])
def test_slurm_template_runs_one_task_per_gpu_and_forwards_sigterm(tmp_path, name, tasks_per_node, nodes):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    srun = tmp_path / "srun"
    srun.write_text(FAKE_SRUN)
    srun.chmod(0o755)
    cfg = tmp_path / "yolo.cfg"
    cfg.write_text("[net]\nbatch=64\nlearning_rate = 0.001\nburn_in=1000\n\n[convolutional]\nfilters=8\n")
    data = tmp_path / "run.data"
    data.write_text(f"backup={tmp_path / 'backup'}\nprefix=run\n")
    (tmp_path / "backup" / "run").mkdir(parents=True)
    (tmp_path / "backup" / "run" / "yolo.backup").write_bytes(b"x")
    log, srun_log = tmp_path / "log", tmp_path / "srun_log"
    env = {**os.environ, "PYTHON": str(fake), "SRUN": str(srun), "FAKE_LOG": str(log), "FAKE_SRUN_LOG": str(srun_log),
           "SLURM_SUBMIT_DIR": str(SCRIPTS.parent), "SLURM_JOB_ID": "77"}
    job = subprocess.Popen(["bash", SCRIPTS / "slurm" / f"{name}.sbatch", data, cfg], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not log.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let the job script install its trap after starting the step
    job.send_signal(signal.SIGTERM)  # what Slurm does 300 s before the limit (--signal=B:TERM@300)
    out, err = job.communicate(timeout=30)
    assert job.returncode == 0, out + err
    calls = log.read_text().splitlines()
    # The user's cfg itself, unchanged (its batch is split among the GPUs; no learning-rate rewriting).
    assert calls[0] == f"-m pydarknet train {data} {cfg} {tmp_path / 'backup/run/yolo.backup'}"
    assert calls[1] == "saved"
    assert "learning_rate = 0.001" in cfg.read_text()
    # One srun step that ends when a rank fails; the ranks meet at the job's first node, each on its GPU.
    assert re.fullmatch(r"srun --kill-on-bad-exit=1 \S+ -m pydarknet train .* url=tcp://\S+:20077 device=cuda",
                        srun_log.read_text().strip()), srun_log.read_text()
    text = (SCRIPTS / "slurm" / f"{name}.sbatch").read_text()
    for line in ("#SBATCH --signal=B:TERM@300", f"#SBATCH --nodes={nodes}",
                 f"#SBATCH --ntasks-per-node={tasks_per_node}", f"#SBATCH --gres=gpu:{tasks_per_node}"):
        assert line in text, line


def test_crontab_template_uses_flock():
    lines = [line for line in (SCRIPTS / "crontab.tmpl").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all("flock -n" in line for line in lines)
    assert any("voc_all_map.py" in line for line in lines) and any("coco_all_map.py" in line for line in lines)
