"""``valid``: run a detector over the ``valid`` list of a ``.data`` file and write SPEC §4's result files.

``eval=voc`` (default) writes ``<results>/comp4_det_test_<class>.txt``; ``eval=coco`` writes
``<results>/coco_results.json``. Detection uses thresh .005 and NMS .45, as Darknet's ``detector valid``.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

import click
import cv2
import numpy as np

from . import _callable_module
from .datafile import read_data_file, read_names
from .errors import CfgError
from .eval.boxes import COCO_CATEGORY_IDS, coco_box, coco_image_id, voc_box

__all__ = ["VALID_THRESH", "ValidResult", "detect_images", "valid", "valid_command", "write_results"]

log = logging.getLogger(__name__)

VALID_THRESH = 0.005
VALID_NMS = 0.45
VOC_FILE = "comp4_det_test_{}.txt"
COCO_FILE = "coco_results.json"


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


def _read_category_map(path: str) -> list[int]:
    """The ``.data`` ``map=`` file: one output category id per class, one integer a line."""
    try:
        return [int(line) for line in Path(path).read_text().split()]
    except ValueError:
        raise CfgError(f"{path}: the class map must hold one integer per line") from None


def _option(options: dict[str, str], key: str, data_path) -> str:
    if key not in options:
        raise CfgError(f"{data_path}: missing key '{key}'")
    return options[key]


def valid(
    data: str | os.PathLike,
    cfg: str | os.PathLike,
    weights: str | os.PathLike,
    prefix: str | os.PathLike | None = None,
    *,
    batch: int = 1,
    gpu: int | None = None,
    progress: bool | None = None,
    detector=None,
    precision: str = "f32",
) -> ValidResult:
    """Detect every image of the ``valid`` list of ``data`` and write the VOC or COCO result files.

    ``prefix`` overrides the ``results`` folder of the ``.data`` file (default ``results``); the folder is
    created. ``progress=None`` shows progress only when stderr is a terminal. ``detector`` lets a caller
    that already holds a :class:`~pydarknet.detect.Detector` for ``cfg``/``weights`` reuse it.
    ``precision``: ``"f32"`` or ``"bf16"`` (see :class:`~pydarknet.network.Network`).
    """
    gpu = None if gpu is None else int(gpu)  # Darknet's -i arrives as text from the command line
    options = read_data_file(data)
    image_paths = _read_valid_list(_option(options, "valid", data))
    names = read_names(_option(options, "names", data))
    output_dir = Path(prefix if prefix is not None else options.get("results", "results"))
    style = options.get("eval", "voc").lower()
    if style not in ("voc", "coco"):
        raise CfgError(f"{data}: eval={style} is not supported (voc or coco)")
    category_ids = list(COCO_CATEGORY_IDS)
    if "map" in options:
        category_ids = _read_category_map(options["map"])
    if style == "coco":
        if len(category_ids) < len(names):
            raise CfgError(f"{data}: {len(names)} classes but only {len(category_ids)} COCO category ids")
        for path in image_paths:  # fail before detecting anything, not halfway through
            try:
                coco_image_id(path)
            except ValueError as exc:  # a user's data error: CfgError prints without a traceback
                raise CfgError(f"{data}: eval=coco: {exc}") from None

    own_detector = detector is None
    if own_detector:
        detector = _open_detector(cfg, weights, names, batch, gpu, precision)
    try:
        names = _names_for(detector, names, data)
        result = write_results(detector, image_paths, output_dir, style, names, category_ids,
                               batch=batch, progress=progress)
    finally:
        if own_detector:
            detector.close()
    # Logged, not printed, so that both `valid` and Darknet's `detector valid` show it (and a library caller
    # decides with logging whether to see it).
    log.info("valid: %d images, results in %s%s", result.images, output_dir,
             f" ({len(result.skipped)} unreadable images skipped)" if result.skipped else "")
    return result


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


def _names_for(detector, names: Sequence[str], where) -> list[str]:
    """The class names for the network's classes; like Darknet, extra names are ignored."""
    if len(names) < detector.num_classes:
        raise CfgError(f"{where}: the names file has {len(names)} classes, the network {detector.num_classes}")
    return list(names[:detector.num_classes])


def _read_valid_list(path: str) -> list[str]:
    from .data import read_list
    return read_list(path)


def _open_detector(cfg, weights, names, batch: int, gpu: int | None, precision: str = "f32"):
    from .detect import Detector  # imported here: loading the engine is not needed to read options
    kwargs = {"names": names, "batch": batch}
    if precision != "f32":
        kwargs["precision"] = precision
    if gpu is not None:
        if "gpu" in inspect.signature(Detector).parameters:
            kwargs["gpu"] = gpu
        else:
            log.debug("GPU %d requested, but this Detector has no GPU choice; running on its default device", gpu)
    return Detector(cfg, weights, **kwargs)


def _write_voc(output_dir: Path, stream, names: Sequence[str]) -> list[Path]:
    # Darknet opens one file per class up front, so every class has a (possibly empty) file.
    paths = [output_dir / VOC_FILE.format(name) for name in names]
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
    path = output_dir / COCO_FILE
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


@click.command("valid")
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.argument("cfg", type=click.Path(exists=True, dir_okay=False))
@click.argument("weights", type=click.Path(exists=True, dir_okay=False))
@click.option("--prefix", "-prefix", "prefix", type=click.Path(file_okay=False),
              help="Output folder (overrides `results` of the .data file).")
@click.option("--gpu", "-i", "gpu", type=int, default=None, help="GPU index (Darknet's -i).")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per forward pass.")
@click.option("--precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="bf16: bfloat16 convolutions (CPUs with AMX or AVX512_BF16).")
def valid_command(data, cfg, weights, prefix, gpu, batch, precision):
    """Detect every image of the valid list of DATA (thresh .005) and write VOC or COCO result files."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    valid(data, cfg, weights, prefix, batch=batch, gpu=gpu, precision=precision)  # logs where the results went


_callable_module(__name__, "valid")  # pydarknet.valid(...) works even once this module is imported
