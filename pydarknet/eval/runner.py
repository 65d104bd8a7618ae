"""Running a detector over an image list and writing the result files ``valid`` writes (SPEC §4): shared by
``valid``, by the mAP of a list (``listeval``, used by ``train --map``) and by the all-weights evaluators.

The engine is imported only when :func:`open_detector` makes a detector.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

import cv2
import numpy as np

from ..errors import CfgError
from ..runfiles import COCO_RESULT_FILE, voc_result_name
from .boxes import COCO_CATEGORY_IDS, coco_box, coco_image_id, voc_box

__all__ = ["VALID_THRESH", "VALID_NMS", "ValidResult", "Progress", "detect_images", "write_results", "names_for",
           "open_detector"]

log = logging.getLogger(__name__)

VALID_THRESH = 0.005
VALID_NMS = 0.45


@dataclass
class ValidResult:
    """What ``valid`` wrote: the result files, how many images were detected, and the unreadable ones."""

    outputs: list[Path]
    images: int
    skipped: list[str] = field(default_factory=list)


class Progress:
    """``done/total images, rate, ETA`` on one stderr line; silent when stderr is not a terminal (cron, logs)."""

    def __init__(self, total: int, label: str, enabled: bool | None = None, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.label, self.done = total, label, 0
        self.start = self.last_draw = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self.last_draw > 0.25 or self.done == self.total):
            self.last_draw = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            self.stream.write(f"\r{self.label}: {self.done}/{self.total} images, {rate:.1f} img/s, "
                              f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s ")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()


def _read_image(path: str) -> np.ndarray | None:
    try:
        return cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error:
        return None


def detect_images(
    detector,
    image_paths: Sequence[str],
    *,
    thresh: float = VALID_THRESH,
    nms: float = VALID_NMS,
    batch: int = 1,
    progress: Progress | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> Iterator[tuple[str, tuple[int, int], list]]:
    """Yield ``(path, (height, width), detections)`` per readable image, in list order.

    Images are decoded by a small thread pool ahead of the detector (OpenCV releases the GIL while
    decoding), ``batch`` at a time. An unreadable image is logged as a warning naming the file, passed to
    ``on_skip`` and left out.
    """
    batch = max(1, int(batch))
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        # Up to two batches in flight: one being detected, the next one decoding.
        pending = [pool.submit(_read_image, p) for p in image_paths[: 2 * batch]]
        next_index = len(pending)
        for start in range(0, len(image_paths), batch):
            paths = image_paths[start:start + batch]
            images = [future.result() for future in pending[:len(paths)]]
            pending = pending[len(paths):]
            for path in image_paths[next_index:next_index + batch]:
                pending.append(pool.submit(_read_image, path))
            next_index += batch
            readable = []
            for path, image in zip(paths, images):
                if image is None or image.size == 0:
                    log.warning("%s: cannot read image, skipped", path)
                    if on_skip:
                        on_skip(path)
                else:
                    readable.append((path, image))
            if readable:
                if len(readable) == 1:
                    results = [detector.detect(readable[0][1], thresh=thresh, nms=nms)]
                else:
                    results = detector.detect_batch([image for _, image in readable], thresh=thresh, nms=nms)
                for (path, image), detections in zip(readable, results):
                    yield path, image.shape[:2], detections
            if progress:
                progress.advance(len(paths))



def write_results(
    detector,
    image_paths: Sequence[str],
    output_dir: str | os.PathLike,
    style: str,
    names: Sequence[str],
    category_ids: Sequence[int] = COCO_CATEGORY_IDS,
    *,
    batch: int = 1,
    progress: bool | None = None,
) -> ValidResult:
    """Detect ``image_paths`` at thresh .005 and write ``style`` (``voc`` or ``coco``) result files."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    bar = Progress(len(image_paths), "valid", progress)
    skipped: list[str] = []
    try:
        stream = detect_images(detector, image_paths, batch=batch, progress=bar, on_skip=skipped.append)
        if style == "coco":
            outputs = [_write_coco(output_dir, stream, category_ids)]
        else:
            outputs = _write_voc(output_dir, stream, names)
    finally:
        bar.close()
    return ValidResult(outputs, len(image_paths) - len(skipped), skipped)


def names_for(detector, names: Sequence[str], where) -> list[str]:
    """The class names for the network's classes; like Darknet, extra names are ignored."""
    if len(names) < detector.num_classes:
        raise CfgError(f"{where}: the names file has {len(names)} classes, the network {detector.num_classes}")
    return list(names[:detector.num_classes])


def open_detector(cfg, weights, names, batch: int, gpu: int | None, precision: str = "f32"):
    from ..detect import Detector  # imported here: loading the engine is not needed to read options
    from ..network import gpu_ids  # noqa: PLC0415

    device = f"cuda:{gpu_ids(gpu, '-i')[0]}" if gpu is not None else None  # a CudaError without that GPU
    kwargs = {"names": names, "batch": batch, "device": device}
    if precision != "f32":
        kwargs["precision"] = precision
    return Detector(cfg, weights, **kwargs)


def _write_voc(output_dir: Path, stream, names: Sequence[str]) -> list[Path]:
    # Darknet opens one file per class up front, so every class has a (possibly empty) file.
    paths = [output_dir / voc_result_name(name) for name in names]
    files = [open(path, "w") for path in paths]
    try:
        for image_path, (height, width), detections in stream:
            image_id = Path(image_path).stem
            for det in detections:
                xmin, ymin, xmax, ymax = voc_box(*det.box, width, height)
                files[det.class_id].write(f"{image_id} {det.prob:f} {xmin:f} {ymin:f} {xmax:f} {ymax:f}\n")
    finally:
        for f in files:
            f.close()
    return paths


def _printf_f(value: float) -> float:
    """The value as C's ``%f`` prints it (6 decimals), which is what Darknet's JSON holds."""
    return float(f"{value:f}")


def _write_coco(output_dir: Path, stream, category_ids: Sequence[int]) -> Path:
    # Streamed one entry a line (a full COCO run at thresh .005 is millions of entries), into a temporary
    # file renamed at the end so a reader never sees half a JSON list.
    path = output_dir / COCO_RESULT_FILE
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "w") as f:
            f.write("[")
            separator = "\n"
            for image_path, (height, width), detections in stream:
                image_id = coco_image_id(image_path)
                for det in detections:
                    entry = {
                        "image_id": image_id,
                        "category_id": int(category_ids[det.class_id]),
                        "bbox": [_printf_f(v) for v in coco_box(*det.box, width, height)],
                        "score": _printf_f(det.prob),
                    }
                    f.write(separator + json.dumps(entry))
                    separator = ",\n"
            f.write("\n]\n")
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
    return path
