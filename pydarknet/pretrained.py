"""The published models: the reference's six runs (cfg/runs/<run>/) with their weights and figures, and the
Darknet files a user starts from. ``scripts/get_pretrained.sh`` downloads what :func:`manifest` lists and
checks each file with :func:`check_file`; ``scripts/paper_table.py`` evaluates the runs (pydarknet.paper).

``python -m pydarknet.pretrained list`` prints the manifest; ``python -m pydarknet.pretrained check FILE CHECK``
checks one file (exit 0 good, 3 shorter than expected (a partial download to resume), 1 bad).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import WeightsError

__all__ = ["RUNS", "Run", "Download", "manifest", "check_file", "weights_size", "PartialFile"]

ROOT = Path(__file__).resolve().parent.parent
DARKNET_FILES = "https://pjreddie.com/media/files"
DARKNET_PHOTOS = "https://raw.githubusercontent.com/pjreddie/darknet/master/data"


@dataclass(frozen=True)
class Run:
    """One published run of the reference. ``published`` maps the evaluation metric (``iou`` or ``giou``) to
    the (AP, AP75) the reference reported for it; metrics it did not report are absent."""

    name: str
    dataset: str            # "coco" (val) or "voc" (VOC2007 test)
    iou_loss: str
    weights: str            # the published file's name, kept under backup/<run>/
    url: str
    published: dict

    @property
    def cfg(self) -> Path:
        return ROOT / "cfg" / "runs" / self.name / f"{self.name}.cfg"

    @property
    def data(self) -> Path:
        return ROOT / "cfg" / "runs" / self.name / f"{self.name}.data"


# The reference README's table, in its order, with the figures it published (AP = AP@[.50:.95]).
RUNS = (
    Run("coco-baseline4", "coco", "mse", "yolov3_492000.weights", "https://stanford.io/2Hb6hpz",
        {"iou": (0.314, 0.329)}),
    Run("coco-iou-14", "coco", "iou", "yolov3_470000.weights", "https://stanford.io/307a4LO", {}),
    Run("coco-giou-12", "coco", "giou", "yolov3_final.weights", "https://stanford.io/2PWP8Cz",
        {"iou": (0.335, 0.359)}),
    Run("yolov3-baseline2", "voc", "mse", "yolov3-voc_50000.weights", "https://stanford.io/2vNjsGC",
        {"iou": (0.461, 0.486), "giou": (0.451, 0.467)}),
    Run("yolov3-giou-30", "voc", "iou", "yolov3-voc_48000.weights", "https://stanford.io/2WyedWT", {}),
    Run("yolov3-giou-40", "voc", "giou", "yolov3-voc_50000.weights", "https://stanford.io/2Hb70Hj", {}),
)

# Darknet's sample photos, as the reference detections were made on them.
PHOTOS = {
    "dog.jpg": "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866",
    "eagle.jpg": "f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0",
    "giraffe.jpg": "00dc48a9b2af8a1fe4c4b79319726591f1033c7e1150f21e7577a79f3b6659f1",
    "horses.jpg": "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4",
    "kite.jpg": "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e",
    "person.jpg": "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1",
    "scream.jpg": "dcab7bae866fbb396e01ab27a9c8d2d40b3e80911dafb05a5fa18d1bac6b8d17",
}


@dataclass(frozen=True)
class Download:
    """One file to fetch: ``dest`` (relative to the destination root), how to check it, and where else to put
    a copy. ``check`` is ``cfg=PATH`` (a .weights file for that cfg), ``cfg=PATH:N`` (its first N layers,
    as darknet53.conv.74), or ``sha256=HEX``."""

    url: str
    dest: str
    check: str
    copies: tuple[str, ...] = ()

    def line(self) -> str:
        return "\t".join([self.url, self.dest, self.check, ",".join(self.copies) or "-"])


def manifest() -> list[Download]:
    """Everything get_pretrained.sh fetches: the six runs' weights into backup/<run>/, Darknet's starting
    points into backup/, and what the reference tests need into tests/data."""
    items = [Download(run.url, f"backup/{run.name}/{run.weights}", f"cfg={run.cfg}") for run in RUNS]
    yolov3 = ROOT / "cfg" / "yolov3.cfg"
    items += [
        Download(f"{DARKNET_FILES}/darknet53.conv.74", "backup/darknet53.conv.74", f"cfg={yolov3}:74"),
        Download(f"{DARKNET_FILES}/yolov3.weights", "backup/yolov3.weights", f"cfg={yolov3}"),
        Download(f"{DARKNET_FILES}/yolov3-tiny.weights", "backup/yolov3-tiny.weights",
                 f"cfg={ROOT / 'cfg' / 'yolov3-tiny.cfg'}", ("tests/data/yolov3-tiny.weights",)),
    ]
    items += [Download(f"{DARKNET_PHOTOS}/{name}", f"tests/data/images/{name}", f"sha256={digest}")
              for name, digest in PHOTOS.items()]
    return items


class PartialFile(WeightsError):
    """The file is a correct beginning but shorter than expected: a download to resume."""


def _header_size(path: Path, data: bytes) -> int:
    if len(data) < 12:
        raise PartialFile(f"{path}: {len(data)} bytes, shorter than a .weights header")
    major, minor, revision = struct.unpack("<3i", data[:12])
    if not (0 <= major < 1000 and 0 <= minor < 1000 and 0 <= revision < 1000000):
        raise WeightsError(f"{path}: not a Darknet .weights file (header {major}.{minor}.{revision})")
    return 20 if major * 10 + minor >= 2 else 16


def weights_size(cfg: str | os.PathLike, layers: int | None = None, header: int = 20) -> int:
    """Bytes of a .weights file holding the parameters of the first `layers` layers of `cfg` (all if None)."""
    from .network import Network  # noqa: PLC0415  (the C library; listing the manifest does not need it)

    with Network(cfg) as net:
        if layers is not None and not 0 < layers <= len(net.layers):
            raise ValueError(f"{cfg}: has {len(net.layers)} layers, not {layers}")
        return header + 4 * sum(layer.n_params for layer in net.layers[:layers])


def check_file(path: str | os.PathLike, check: str) -> None:
    """Raise WeightsError naming the file (PartialFile when it is only too short) unless it passes `check`."""
    path = Path(path)
    kind, _, spec = check.partition("=")
    if kind == "sha256":
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != spec:
            raise WeightsError(f"{path}: SHA-256 {digest}, expected {spec}")
        return
    if kind != "cfg":
        raise ValueError(f"unknown check {check!r} (cfg=PATH[:LAYERS] or sha256=HEX)")
    cfg, layers = spec, None
    before, colon, after = spec.rpartition(":")
    if colon and after.isdigit():
        cfg, layers = before, int(after)
    with open(path, "rb") as f:
        head = f.read(20)
    size = path.stat().st_size
    expected = weights_size(cfg, layers, _header_size(path, head))
    if size < expected:
        raise PartialFile(f"{path}: {size} bytes, {cfg} needs {expected}: incomplete")
    if size > expected:
        raise WeightsError(f"{path}: {size} bytes, longer than the {expected} that {cfg}"
                           + (f" (first {layers} layers)" if layers else "") + " needs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pydarknet.pretrained", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print URL, destination, check and copies, tab separated, one file a line")
    checker = commands.add_parser("check", help="check one downloaded file")
    checker.add_argument("file")
    checker.add_argument("check", help="cfg=PATH[:LAYERS] or sha256=HEX")
    args = parser.parse_args(argv)
    if args.command == "list":
        for item in manifest():
            print(item.line())
        return 0
    try:
        check_file(args.file, args.check)
    except PartialFile as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
