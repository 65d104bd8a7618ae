"""``valid``: run a detector over the ``valid`` list of a ``.data`` file and write SPEC §4's result files.

``eval=voc`` (default) writes ``<results>/comp4_det_test_<class>.txt``; ``eval=coco`` writes
``<results>/coco_results.json``. Detection uses thresh .005 and NMS .45, as Darknet's ``detector valid``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from . import _callable_module
from .datafile import read_data_file, read_names
from .errors import CfgError
from .eval.boxes import COCO_CATEGORY_IDS, coco_image_id
from .eval.runner import VALID_THRESH, ValidResult, detect_images, names_for, open_detector, write_results

__all__ = ["VALID_THRESH", "ValidResult", "detect_images", "valid", "valid_command", "write_results"]

log = logging.getLogger(__name__)


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
        detector = open_detector(cfg, weights, names, batch, gpu, precision)
    try:
        names = names_for(detector, names, data)
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


def _read_valid_list(path: str) -> list[str]:
    from .data import read_list
    return read_list(path)


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
