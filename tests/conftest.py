"""Shared fixtures and helpers: the reference data folder, a small generic cfg, an easy training set."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# `pytest` (not only `python -m pytest`) from a source checkout finds the package without installing it.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# The reference engine's outputs the tests compare with (its detections, the [yolo] loss golden files) and the
# reference cfg and names are committed in tests/data; the pretrained weights and Darknet's sample photos are
# downloaded there by scripts/get_pretrained.sh (git-ignored), or found in $PYDARKNET_REFERENCE or
# ../shared/reference.
DATA = ROOT / "tests" / "data"
DOWNLOADED = ("yolov3-tiny.weights", "images")


def reference_path() -> Path:
    """$PYDARKNET_REFERENCE, else ../shared/reference next to the project root: where the weights and photos
    are found when scripts/get_pretrained.sh has not put them in tests/data."""
    env = os.environ.get("PYDARKNET_REFERENCE")
    return Path(env) if env else ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory) -> Path:
    """A folder with the reference files: tests/data, plus the weights and photos from tests/data when
    downloaded there, else from reference_path(). A test that needs a downloaded file it lacks is skipped."""
    missing = [name for name in DOWNLOADED if not (DATA / name).exists()]
    if not missing:
        return DATA
    view = tmp_path_factory.mktemp("reference")
    for entry in DATA.iterdir():
        (view / entry.name).symlink_to(entry)
    for name in missing:
        if (reference_path() / name).exists():
            (view / name).symlink_to(reference_path() / name)
    return view


def require_reference(reference_dir: Path, *names: str) -> None:
    """Skip, saying how to get them, unless the reference files `names` are there."""
    for name in names:
        if not (reference_dir / name).exists():
            pytest.skip(f"{name} not found in {DATA} or {reference_path()}: run scripts/get_pretrained.sh "
                        f"(or set PYDARKNET_REFERENCE)")


# A small network with every layer type YOLOv3 uses: 64x64 input, two [yolo] heads (grids 8 and 16), 2 classes.
TINY_CFG = """\
[net]
batch=4
subdivisions=2
width=64
height=64
channels=3
learning_rate=0.001
momentum=0.9
decay=0.0005
max_batches=100
policy=steps
steps=50,80
scales=.1,.1

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=3,4,5
anchors=4,6, 8,10, 12,16, 20,20, 30,40, 50,50
classes=2
num=6
jitter=.3
ignore_thresh=.7
truth_thresh=1
random=0

[route]
layers=-3

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[upsample]
stride=2

[route]
layers=-1,2

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=4,6, 8,10, 12,16, 20,20, 30,40, 50,50
classes=2
num=6
jitter=.3
ignore_thresh=.7
truth_thresh=1
random=0
"""


@pytest.fixture
def tiny_cfg(tmp_path) -> Path:
    """TINY_CFG written to tmp_path/tiny.cfg (15 layers, 64x64x3 input, [yolo] at layers 8 and 14)."""
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY_CFG)
    return path


def build_c_library(tmp_path_factory, source: Path, what: str, flags: list[str], libs: tuple[str, ...] = ()) \
        -> ctypes.CDLL:
    """One C file of csrc compiled on its own into a shared library (for the tests that call its functions
    directly), with the common warnings as errors, `flags`, and `libs` linked; skipped without a C compiler.
    $PYDARKNET_KERNEL_HOST_CFLAGS adds flags, e.g. "-fsanitize=address,undefined" for a sanitizer run."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip(f"no C compiler (cc) to build {what}")
    out = tmp_path_factory.mktemp(source.stem) / f"lib{source.stem}.so"
    extra = os.environ.get("PYDARKNET_KERNEL_HOST_CFLAGS", "").split()
    subprocess.run([cc, "-std=c11", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror", *flags, *extra,
                    "-o", str(out), str(source), *libs], check=True)
    return ctypes.CDLL(str(out))


# An easy detection set for training tests: one white and one red square per image (tests/test_train.py, the
# board's end-to-end test).
def make_dataset(root: Path, *, n: int = 8, size: int = 64, prefix: str = "run", seed: int = 0) -> Path:
    """`n` images with one white (class 0) and one red (class 1) square each on a dark background, written in
    Darknet's layout; returns the .data file (backup=<root>/backup, prefix=<prefix>)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image = np.full((size, size, 3), 30, np.uint8)
        lines = []
        for cls, colour in ((0, (255, 255, 255)), (1, (0, 0, 255))):
            side = int(rng.integers(size // 4, size // 2))
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
            cv2.rectangle(image, (x0, y0), (x0 + side - 1, y0 + side - 1), colour, -1)
            lines.append(f"{cls} {(x0 + side / 2) / size:.6f} {(y0 + side / 2) / size:.6f} "
                         f"{side / size:.6f} {side / size:.6f}")
        path = root / "images" / f"img{i:03d}.png"
        cv2.imwrite(str(path), image)
        (root / "labels" / f"img{i:03d}.txt").write_text("\n".join(lines) + "\n")
        paths.append(str(path))
    (root / "train.txt").write_text("".join(p + "\n" for p in paths))
    (root / "valid.txt").write_text("".join(p + "\n" for p in paths))
    (root / "obj.names").write_text("white\nred\n")
    return write_data(root, prefix)


def write_data(root: Path, prefix: str, name: str = "obj.data") -> Path:
    data = root / name
    data.write_text(f"classes=2\ntrain={root / 'train.txt'}\nvalid={root / 'valid.txt'}\n"
                    f"names={root / 'obj.names'}\nbackup={root / 'backup'}\nprefix={prefix}\n")
    return data
