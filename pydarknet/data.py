"""Training data: image lists, Darknet label files, augmentation and the batch loader (SPEC §1.3, §3)."""
from __future__ import annotations

import contextlib
import ctypes
import heapq
import logging
import mmap
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import DataError, ImageError, LabelError

__all__ = ["read_list", "label_path", "read_labels", "Augment", "load_sample", "DataLoader", "remove_stale_buffers"]

_log = logging.getLogger(__name__)

# Padding outside the source image: Darknet's 0.5 grey, as a byte.
_GREY = (128, 128, 128)

# Folder names Darknet swaps for "labels" when it looks for an image's label file.
_IMAGE_FOLDERS = ("images", "JPEGImages")


def read_list(path: str | os.PathLike) -> list[str]:
    """Image paths of a Darknet list file (``train=``/``valid=``): one per line, blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image list not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]


def label_path(image_path: str | os.PathLike) -> str:
    """The label file Darknet reads for ``image_path``.

    Like Darknet, the first path component ``images`` and the first ``JPEGImages`` become ``labels``
    (COCO's ``coco/images/train2014/x.jpg`` → ``coco/labels/train2014/x.txt``, VOC's
    ``VOC2007/JPEGImages/x.jpg`` → ``VOC2007/labels/x.txt``), and the extension becomes ``.txt``.
    Without such a folder the label file sits next to the image.
    """
    path = os.fspath(image_path)
    folder, name = os.path.split(path)
    parts = folder.replace("\\", "/").split("/") if folder else []
    for image_folder in _IMAGE_FOLDERS:
        if image_folder in parts:
            parts[parts.index(image_folder)] = "labels"
    stem, ext = os.path.splitext(name)
    label_name = (stem if ext else name) + ".txt"
    return "/".join(parts + [label_name]) if parts else label_name


def read_labels(label_file: str | os.PathLike, num_classes: int) -> np.ndarray:
    """Boxes of a Darknet label file as float32 ``(n, 5)`` rows ``[class, cx, cy, w, h]``.

    A missing file is an image without objects. A malformed line, a class outside ``[0, num_classes)``,
    a centre outside [0, 1] or a size outside (0, 1] raises :class:`LabelError` ``"<file>:<line>: ..."``.
    """
    label_file = os.fspath(label_file)
    try:
        with open(label_file, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return np.zeros((0, 5), np.float32)
    rows = []
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file}:{lineno}"
        if len(fields) != 5:
            raise LabelError(f"{where}: expected 'class cx cy w h' (5 fields), got {len(fields)}: {line.strip()!r}")
        try:
            cls = int(fields[0])
        except ValueError:
            raise LabelError(f"{where}: class {fields[0]!r} is not an integer") from None
        try:
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            raise LabelError(f"{where}: coordinates are not numbers: {line.strip()!r}") from None
        if not 0 <= cls < num_classes:
            raise LabelError(f"{where}: class {cls} out of range [0, {num_classes})")
        # Written as "not (in range)" so NaN is rejected too.
        for value, name in ((cx, "cx"), (cy, "cy")):
            if not 0.0 <= value <= 1.0:
                raise LabelError(f"{where}: {name}={value:g} outside [0, 1]")
        for value, name in ((w, "w"), (h, "h")):
            if not 0.0 < value <= 1.0:
                raise LabelError(f"{where}: {name}={value:g} outside (0, 1]")
        rows.append((cls, cx, cy, w, h))
    return np.array(rows, np.float32).reshape(-1, 5)


# ---------------------------------------------------------------------------------------------------------
# Augmentation (SPEC §3)
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Augment:
    """Training augmentation, Darknet's meaning of each knob.

    ``jitter``: each side of the crop moves by uniform(-jitter, +jitter) x that dimension (outward = grey
    padding); ``hue``: shift uniform(-hue, hue) of a full turn; ``saturation``/``exposure``: scaled by a
    factor in [1/s, s]; ``flip``: mirror half of the images.
    """

    jitter: float = 0.2
    hue: float = 0.1
    saturation: float = 1.5
    exposure: float = 1.5
    flip: bool = True

    def __post_init__(self):
        if not 0.0 <= self.jitter < 0.5:
            raise ValueError(f"jitter={self.jitter} must be in [0, 0.5): larger values can crop to nothing")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue={self.hue} must be in [0, 0.5]")
        if self.saturation < 1.0 or self.exposure < 1.0:
            raise ValueError(f"saturation={self.saturation} and exposure={self.exposure} must be >= 1 "
                             "(the factor is drawn from [1/s, s])")

    @classmethod
    def none(cls) -> "Augment":
        """No augmentation: the image is only stretched to the network size (evaluation, tests)."""
        return cls(jitter=0.0, hue=0.0, saturation=1.0, exposure=1.0, flip=False)

    @classmethod
    def from_net_options(cls, net_opts: Mapping[str, object], jitter: float = 0.2) -> "Augment":
        """From a ``[net]`` section (SPEC §1.1 defaults: hue 0, saturation 1, exposure 1, flip 1) and the
        ``jitter`` of the last ``[yolo]`` layer."""
        def number(key: str, default: float) -> float:
            return float(net_opts.get(key, default))
        return cls(jitter=float(jitter), hue=number("hue", 0.0), saturation=number("saturation", 1.0),
                   exposure=number("exposure", 1.0), flip=bool(int(number("flip", 1))))

    @property
    def changes_colour(self) -> bool:
        return self.hue > 0 or self.saturation > 1 or self.exposure > 1


def _random_scale(rng: np.random.Generator, s: float) -> float:
    """Darknet's rand_scale: a factor in [1, s], inverted half of the time."""
    scale = rng.uniform(1.0, s)
    return scale if rng.random() < 0.5 else 1.0 / scale


def _decode_bgr(path: str) -> np.ndarray:
    """HxWx3 uint8 BGR (OpenCV's order). Missing file → FileNotFoundError; undecodable → ImageError."""
    try:
        encoded = np.fromfile(path, np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image not found") from None
    bgr = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size else None
    if bgr is None:
        raise ImageError(f"{path}: cannot decode image")
    return bgr


def _jitter_hsv(image: np.ndarray, hue: float, saturation: float, exposure: float, bgr: bool = False) -> np.ndarray:
    """HSV jitter of a float32 HxWx3 RGB image (BGR when `bgr`) in 0..1 (hue in turns); result clipped to 0..1,
    in the same channel order."""
    # float input: H in degrees [0, 360), S and V in 0..1
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV if bgr else cv2.COLOR_RGB2HSV)
    shift = np.float32(hue * 360.0)
    # h + shift, s * saturation, v * exposure in one pass; each output is one rounded product or sum (the other
    # terms are exact zeros), so the same bits as three separate passes over the strided channels
    hsv = cv2.transform(hsv, np.array([[1, 0, 0, shift], [0, saturation, 0, 0], [0, 0, exposure, 0]], np.float32))
    h, s = hsv[..., 0], hsv[..., 1]
    if shift > 0:  # |shift| <= 180: one wrap at most, on the side the shift went
        np.subtract(h, np.float32(360), out=h, where=h >= 360)
    elif shift < 0:
        np.add(h, np.float32(360), out=h, where=h < 0)
    if saturation > 1:  # S came out of RGB2HSV within 0..1
        np.minimum(s, np.float32(1), out=s)
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR if bgr else cv2.COLOR_HSV2RGB)
    return np.clip(out, 0.0, 1.0, out=out)


def _place_boxes(labels: np.ndarray, left: float, top: float, crop_w: float, crop_h: float, flip: bool,
                 truth_out: np.ndarray) -> int:
    """Map ``[class, cx, cy, w, h]`` labels into the crop (all relative), clip to it, drop the boxes that
    leave it or become thinner than .001, and write Darknet truth rows ``(x, y, w, h, class)`` into
    ``truth_out`` (zeroed first). Returns the number of boxes written."""
    truth_out[:] = 0
    if not len(labels):
        return 0
    cls, cx, cy, w, h = labels.T.astype(np.float64)
    x0 = np.clip((cx - w / 2 - left) / crop_w, 0.0, 1.0)
    x1 = np.clip((cx + w / 2 - left) / crop_w, 0.0, 1.0)
    y0 = np.clip((cy - h / 2 - top) / crop_h, 0.0, 1.0)
    y1 = np.clip((cy + h / 2 - top) / crop_h, 0.0, 1.0)
    if flip:
        x0, x1 = 1.0 - x1, 1.0 - x0
    keep = ((x1 - x0) >= 0.001) & ((y1 - y0) >= 0.001)
    n = min(int(keep.sum()), len(truth_out))
    rows = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, cls], axis=1)[keep][:n]
    truth_out[:n] = rows
    return n


def _load_into(image_out: np.ndarray, truth_out: np.ndarray, path: str, num_classes: int, aug: Augment,
               rng: np.random.Generator | None) -> None:
    """Decode, augment and write one sample into ``image_out`` (3xHxW float32) and ``truth_out``."""
    labels = read_labels(label_path(path), num_classes)
    bgr = _decode_bgr(path)  # kept in OpenCV's order: the warp and HSV do not care, the last copy swaps
    _, net_h, net_w = image_out.shape
    if rng is None:
        if aug != Augment.none():
            raise ValueError("augmentation needs a random generator (rng)")
        left = right = top = bottom = 0.0
        flip = False
        hue, saturation, exposure = 0.0, 1.0, 1.0
    else:
        rng.shuffle(labels)  # Darknet shuffles before truncating to max_boxes
        left, right, top, bottom = rng.uniform(-aug.jitter, aug.jitter, 4) if aug.jitter else (0.0,) * 4
        flip = bool(aug.flip and rng.random() < 0.5)
        hue = rng.uniform(-aug.hue, aug.hue) if aug.hue else 0.0
        saturation = _random_scale(rng, aug.saturation)
        exposure = _random_scale(rng, aug.exposure)
    # The crop window in relative coordinates of the source image; it may reach outside it (padding).
    crop_w, crop_h = 1.0 - left - right, 1.0 - top - bottom
    _place_boxes(labels, left, top, crop_w, crop_h, flip, truth_out)

    src_h, src_w = bgr.shape[:2]
    scale_x, scale_y = net_w / (crop_w * src_w), net_h / (crop_h * src_h)
    if scale_x < 0.5 or scale_y < 0.5:
        # A bilinear warp that shrinks a lot aliases: shrink by area first so the warp is ~1:1.
        src_w, src_h = max(2, round(src_w * min(1.0, scale_x))), max(2, round(src_h * min(1.0, scale_y)))
        bgr = cv2.resize(bgr, (src_w, src_h), interpolation=cv2.INTER_AREA)
        scale_x, scale_y = net_w / (crop_w * src_w), net_h / (crop_h * src_h)
    # One affine warp does crop, pad, stretch and flip. Pixel centres sit at i + 0.5 in edge coordinates.
    offset_x = 0.5 * scale_x - left * net_w / crop_w - 0.5
    offset_y = 0.5 * scale_y - top * net_h / crop_h - 0.5
    if flip:
        scale_x, offset_x = -scale_x, net_w - 1 - offset_x
    matrix = np.array([[scale_x, 0.0, offset_x], [0.0, scale_y, offset_y]])
    warped = cv2.warpAffine(bgr, matrix, (net_w, net_h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=_GREY)
    if hue or saturation != 1.0 or exposure != 1.0:
        bgr01 = _jitter_hsv(np.multiply(warped, np.float32(1 / 255), dtype=np.float32), hue, saturation, exposure,
                            bgr=True)
        image_out[:] = bgr01.transpose(2, 0, 1)[::-1]
    else:
        np.multiply(warped.transpose(2, 0, 1)[::-1], np.float32(1 / 255), out=image_out, casting="unsafe")


def load_sample(path: str, num_classes: int, net_w: int, net_h: int, aug: Augment,
                rng: np.random.Generator | None, max_boxes: int = 90) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: float32 CHW RGB image (0..1) of ``net_h x net_w`` and float32 truth
    ``(max_boxes, 5)`` rows ``(x, y, w, h, class)`` relative to the network input, zero-padded.

    Raises FileNotFoundError, :class:`ImageError` or :class:`LabelError` (message ``file:line: ...``).
    """
    image = np.empty((3, net_h, net_w), np.float32)
    truth = np.zeros((max_boxes, 5), np.float32)
    _load_into(image, truth, os.fspath(path), num_classes, aug, rng)
    return image, truth


# ---------------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------------

# What a bad image or label raises; the loader skips such a file instead of stopping the run.
_SKIPPABLE = (OSError, ImageError, LabelError)
# Give up on one batch after this many consecutive unusable draws (the list is mostly broken).
_MAX_DRAWS_PER_IMAGE = 1000


class _AllImagesBad(Exception):
    """No usable image in many draws; carries the files found unusable on the way."""

    def __init__(self, message: str, found_bad: list[tuple[str, str]]):
        super().__init__(message)
        self.found_bad = found_bad


def _fill_batch(images: np.ndarray, truth: np.ndarray, paths: Sequence[str], num_classes: int, aug: Augment,
                seed: int, batch_index: int, known_bad: set[str],
                cancelled: Callable[[], bool] | None = None) -> tuple[list[tuple[str, str]], bool]:
    """Fill ``images`` (B,3,H,W) and ``truth`` (B,max_boxes,5) with random draws (with replacement).

    Everything random comes from (seed, batch_index), so a batch's content does not depend on which
    process makes it or when. Returns the (path, reason) of files found unusable and whether the batch
    was abandoned because ``cancelled()`` turned true.
    """
    rng = np.random.default_rng([seed, batch_index])
    found_bad: list[tuple[str, str]] = []
    for i in range(len(images)):
        if cancelled is not None and cancelled():
            return found_bad, True
        for _ in range(_MAX_DRAWS_PER_IMAGE):
            path = paths[int(rng.integers(len(paths)))]
            if path in known_bad:
                continue
            try:
                _load_into(images[i], truth[i], path, num_classes, aug, rng)
                break
            except _SKIPPABLE as e:
                known_bad.add(path)
                found_bad.append((path, str(e)))
        else:
            raise _AllImagesBad(f"{_MAX_DRAWS_PER_IMAGE} draws in a row found no usable image "
                                f"({len(known_bad)} of {len(paths)} list entries are unusable)", found_bad)
    return found_bad, False


class _Pinner:
    """Page-locks batch buffers for a CUDA device's copies (``dn_host_pin``) and undoes it before they are
    freed. A refusal (memory the driver cannot pin, a build without CUDA) is logged once and loading goes on
    with pageable buffers: slower copies, same batches."""

    def __init__(self, device: int):
        self.device = device
        self.enabled = True

    def pin(self, buffer) -> bool:
        if not self.enabled:
            return False
        from . import _ffi  # noqa: PLC0415 -- not in the workers: they never pin
        try:
            return _ffi.host_pin(self.device, buffer)
        except Exception as e:  # noqa: BLE001 -- any refusal: go on unpinned, say so once
            self.enabled = False
            _log.warning("data loader: batch buffers left pageable (copies to the device will be slower): %s", e)
            return False

    def unpin(self, buffer) -> None:
        from . import _ffi  # noqa: PLC0415
        try:
            _ffi.host_unpin(self.device, buffer)
        except Exception as e:  # noqa: BLE001 -- runs from finalizers: report, never raise
            _log.warning("data loader: unpinning a batch buffer failed: %s", e)


class _SlotFile:
    """One batch buffer (images then truth) in a file mapped by the loader and by every worker.

    A plain file in /dev/shm (or the temp folder when /dev/shm lacks room) rather than
    multiprocessing.shared_memory: same speed, and no resource-tracker noise when workers attach."""

    def __init__(self, path: str, image_floats: int, truth_floats: int, pinner: _Pinner | None = None):
        self.path, self.image_floats, self.truth_floats = path, image_floats, truth_floats
        size = 4 * (image_floats + truth_floats)
        with open(path, "wb") as f:
            f.truncate(size)
        self._map = _map_file(path, size)
        self._pinner = pinner if pinner is not None and pinner.pin(self._map) else None

    def views(self, batch: int, w: int, h: int, max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
        return _views(self._map, self.image_floats, batch, w, h, max_boxes)

    def close(self) -> None:
        if self._pinner is not None:  # before the memory can go
            self._pinner.unpin(self._map)
            self._pinner = None
        try:
            self._map.close()
        except BufferError:  # a returned batch still references it; it is freed with that array
            pass
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _map_file(path: str, size: int) -> mmap.mmap:
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), size)


def _views(buffer: mmap.mmap, image_floats: int, batch: int, w: int, h: int,
           max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.frombuffer(buffer, np.float32, batch * 3 * h * w).reshape(batch, 3, h, w)
    truth = np.frombuffer(buffer, np.float32, batch * max_boxes * 5, offset=4 * image_floats)
    return images, truth.reshape(batch, max_boxes, 5)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this worker when its parent dies (SIGKILL leaves no chance to close us). Elsewhere, or
    if prctl is unavailable, the idle loop's parent check below still ends the worker."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _keep_freed_memory() -> bool:
    """Make glibc keep the memory this process frees instead of handing it back to the kernel; True when set.

    By default glibc maps each block above a threshold (128 KB, raised up to 32 MB as such blocks are freed)
    on its own and unmaps it when freed, and trims the heap's free top above twice that. A sample's arrays
    (2 MB each at 416 x 416, the decoded photo about 1 MB) then come back as fresh pages, faulted in and zeroed
    by the kernel for every image: on 50 COCO photos at 416 with colour jitter that took about a quarter of a
    loader worker's time (one worker: 70 images per second, 99 with this; about 1,900 page faults per sample,
    under one with this). Only for the loader's own processes, which keep at most their peak."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # 32 MB is glibc's largest mmap threshold on 64-bit; larger blocks (huge photos) are still mapped alone.
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def _worker_main(paths, num_classes, max_boxes, aug, seed, generation, tasks, results, parent_pid, die_with_parent):
    """Worker process: fill the batch buffers named by the tasks until told to stop (None)."""
    if die_with_parent:
        _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle; it closes us
    cv2.setNumThreads(1)  # parallelism comes from the worker processes
    _keep_freed_memory()
    mapped: dict[str, mmap.mmap] = {}
    mapped_capacity = 0
    known_bad: set[str] = set()
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the loader's process died without closing us
                return
            continue
        if task is None:
            return
        slot, file, image_floats, task_generation, batch_index, batch, w, h = task
        if image_floats != mapped_capacity:  # the loader reallocated bigger buffers; the old files are gone
            for old in mapped.values():
                old.close()
            mapped, mapped_capacity = {}, image_floats
        if file not in mapped:
            mapped[file] = _map_file(file, os.path.getsize(file))
        images, truth = _views(mapped[file], image_floats, batch, w, h, max_boxes)
        try:
            found_bad, was_cancelled = _fill_batch(images, truth, paths, num_classes, aug, seed, batch_index,
                                                   known_bad, lambda: generation.value != task_generation)
            del images, truth
            results.put((slot, "cancelled" if was_cancelled else "ok", found_bad))
        except _AllImagesBad as e:
            del images, truth
            results.put((slot, "unusable", (str(e), e.found_bad)))
        except Exception as e:  # reported to the loader, which raises it in the training process
            del images, truth
            results.put((slot, "error", f"{type(e).__name__}: {e}"))


_BUFFER_PREFIX = "pydarknet-loader-"


def _buffer_folders() -> list[str]:
    return [folder for folder in ("/dev/shm", tempfile.gettempdir()) if os.path.isdir(folder)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_buffers() -> list[str]:
    """Delete the batch buffers (``/dev/shm/pydarknet-loader-<pid>-...``) of loaders whose process is gone, e.g.
    a training run killed with SIGKILL; returns the paths removed. Buffers of live processes are kept."""
    removed = []
    for folder in _buffer_folders():
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            if not name.startswith(_BUFFER_PREFIX):
                continue
            pid_text = name[len(_BUFFER_PREFIX):].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
                continue
            path = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError, PermissionError, IsADirectoryError):
                os.unlink(path)
                removed.append(path)
    if removed:
        _log.info("removed %d batch buffer(s) left by dead processes", len(removed))
    return removed


def _shutdown(processes: list, tasks, slot_files: list[_SlotFile]) -> None:
    """Stop workers and delete the buffers; runs at close(), garbage collection or interpreter exit."""
    for _ in processes:
        with contextlib.suppress(Exception):
            tasks.put_nowait(None)
    for p in processes:
        p.join(timeout=2.0)
        if p.is_alive():
            p.terminate()
            p.join(timeout=2.0)
    for slot_file in slot_files:
        slot_file.close()
    slot_files.clear()


class DataLoader:
    """Endless random training batches ``(x, truth)`` like Darknet's loader.

    ``x`` is float32 ``(batch, 3, H, W)`` RGB in 0..1, ``truth`` float32 ``(batch, max_boxes, 5)`` rows
    ``(x, y, w, h, class)``. Images are drawn at random with replacement; an unreadable image or a bad label
    file is logged (with file:line for labels), appended to ``bad_list`` and replaced by another draw.

    With ``workers > 0`` worker processes fill shared batch buffers a few batches ahead. The arrays returned
    are views of such a buffer and stay valid until the next call to :meth:`next_batch`: copy them to keep
    them longer. Batch contents depend only on ``seed`` and the batch number, not on ``workers``.

    Workers die with the process that made the loader (even under SIGKILL, on Linux), and a new loader removes
    the batch buffers that loaders of dead processes left behind. When no image of the list is usable,
    :meth:`next_batch` raises :class:`~pydarknet.errors.DataError` naming ``source`` (the list file).

    ``pin_device`` (``"cuda:K"`` or K; default none): the CUDA device the batches are copied to. The batch
    buffers are then page-locked for it, so that the network's input copies run by DMA and asynchronously,
    behind the work already queued on the device. Where the driver refuses, the loader says so once and goes on
    with ordinary memory.

    ``batch_numbers`` maps the k-th batch handed out to the batch number whose content it gets (default: k).
    A replica of a data-parallel run makes its share of every iteration's chunks this way
    (``distributed.Replica.chunk_numbers``), so N replicas see exactly the chunks one process would.
    """

    def __init__(self, paths: Sequence[str], *, num_classes: int, batch: int, net_w: int, net_h: int,
                 aug: Augment, max_boxes: int = 90, workers: int = 2, seed: int = 0,
                 bad_list: str | os.PathLike | None = None, prefetch: int = 2, mp_context: str | None = None,
                 source: str | os.PathLike | None = None, batch_numbers: Callable[[int], int] | None = None,
                 pin_device: str | int | None = None):
        if not paths:
            raise ValueError("DataLoader needs at least one image path")
        if batch < 1 or net_w < 1 or net_h < 1 or max_boxes < 1:
            raise ValueError(f"batch={batch}, net size {net_w}x{net_h} and max_boxes={max_boxes} must be >= 1")
        self.paths = list(paths)
        self.num_classes, self.batch, self.max_boxes = num_classes, batch, max_boxes
        self.net_w, self.net_h = net_w, net_h
        self.aug, self.seed, self.workers = aug, seed, workers
        self.bad_list = os.fspath(bad_list) if bad_list is not None else None
        self.bad_paths: set[str] = set()
        self.source = os.fspath(source) if source is not None else "the image list"
        self._next_index = 0  # number of the next batch to hand out or dispatch
        self._content = batch_numbers or (lambda k: k)  # its content's batch number
        self._closed = False
        if pin_device is None:
            device = -1
        else:
            from .network import parse_device  # noqa: PLC0415 -- the workers import this module, not the library
            device = parse_device(pin_device)
        self._pinner = _Pinner(device) if device != -1 else None
        if workers <= 0:
            self._known_bad: set[str] = set()
            self._local: tuple[np.ndarray, np.ndarray] | None = None
            self._local_pinned = False
            return
        # "spawn": a forked child inherits OpenCV's (and BLAS's) thread pools in an unusable state and can
        # hang in its first parallel call. Scripts that make a loader need the usual __main__ guard.
        remove_stale_buffers()
        ctx = multiprocessing.get_context(mp_context or "spawn")
        self._generation = ctx.Value("i", 0, lock=False)  # bumped by set_size: workers abandon stale batches
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        self._n_slots = max(prefetch, workers) + 1  # + the one the caller is reading
        self._slot_files: list[_SlotFile] = []
        self._capacity = 0  # image floats per slot
        self._free: list[int] = []
        self._in_flight: dict[int, tuple[int, int, int, int]] = {}  # batch number -> slot, generation, w, h
        self._next_out = 0  # number of the batch to hand out next
        self._held: int | None = None
        self._redo: list[int] = []  # heap of batch numbers to make again at the current size
        self._finished: dict[int, tuple] = {}
        self._processes = [
            ctx.Process(target=_worker_main, name=f"pydarknet-loader-{i}", daemon=True,
                        args=(self.paths, num_classes, max_boxes, aug, seed, self._generation, self._tasks,
                              self._results, os.getpid(),
                              # prctl's parent is the thread that starts the worker: only the main thread
                              # lives as long as the process
                              threading.current_thread() is threading.main_thread()))
            for i in range(workers)]
        for p in self._processes:
            p.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._tasks, self._slot_files)

    # -- public ---------------------------------------------------------------------------------------
    def set_size(self, net_w: int, net_h: int) -> None:
        """Batches handed out from now on are ``net_h x net_w`` (multi-scale training)."""
        if net_w < 1 or net_h < 1:
            raise ValueError(f"network size {net_w}x{net_h} must be positive")
        if (net_w, net_h) == (self.net_w, self.net_h):
            return
        self.net_w, self.net_h = net_w, net_h
        if self.workers > 0:
            self._generation.value += 1

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        if self._closed:
            raise RuntimeError("DataLoader is closed")
        if self.workers <= 0:
            return self._next_batch_in_process()
        return self._next_batch_from_workers()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.next_batch()

    def close(self) -> None:
        """Stop the workers and free the buffers; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.workers > 0:
            self._finalizer()
        else:
            self._unpin_local()

    def __enter__(self) -> "DataLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- in-process ------------------------------------------------------------------------------------
    def _next_batch_in_process(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.batch, 3, self.net_h, self.net_w)
        if self._local is None or self._local[0].shape != shape:
            self._unpin_local()
            self._local = (np.empty(shape, np.float32),
                           np.zeros((self.batch, self.max_boxes, 5), np.float32))
            self._local_pinned = self._pinner is not None and self._pinner.pin(self._local[0])
        images, truth = self._local
        try:
            found_bad, _ = _fill_batch(images, truth, self.paths, self.num_classes, self.aug, self.seed,
                                       self._content(self._next_index), self._known_bad)
        except _AllImagesBad as e:
            self._record_bad(e.found_bad)
            raise self._no_usable_image(str(e)) from None
        self._next_index += 1
        self._record_bad(found_bad)
        return images, truth

    def _unpin_local(self) -> None:
        if self._local_pinned:
            self._pinner.unpin(self._local[0])
            self._local_pinned = False

    # -- workers ---------------------------------------------------------------------------------------
    def _next_batch_from_workers(self) -> tuple[np.ndarray, np.ndarray]:
        if self._held is not None:  # the caller is done with the previous batch
            self._free.append(self._held)
            self._held = None
        while True:
            self._dispatch()
            # Batches are handed out in number order whatever order the workers finish them in.
            slot, generation, w, h = self._in_flight.pop(self._next_out)
            status, detail = self._wait_for(slot)
            self._check_status(status, detail)
            self._record_bad(detail)
            if status == "ok" and generation == self._generation.value:
                self._held = slot
                self._next_out += 1
                return self._slot_files[slot].views(self.batch, w, h, self.max_boxes)
            # Made for an older size (or abandoned): make the same batch again at the new size.
            self._free.append(slot)
            heapq.heappush(self._redo, self._next_out)

    def _dispatch(self) -> None:
        """Queue batches on the free slots, (re)allocating the buffers when the size outgrew them."""
        needed = self.batch * 3 * self.net_w * self.net_h
        if needed > self._capacity:
            self._drain()
            self._allocate(needed)
        while self._free:
            slot = self._free.pop()
            if self._redo:
                batch_index = heapq.heappop(self._redo)
            else:
                batch_index, self._next_index = self._next_index, self._next_index + 1
            generation = self._generation.value
            self._in_flight[batch_index] = (slot, generation, self.net_w, self.net_h)
            self._tasks.put((slot, self._slot_files[slot].path, self._capacity, generation, self._content(batch_index),
                             self.batch, self.net_w, self.net_h))

    def _wait_for(self, slot: int) -> tuple[str, object]:
        while slot not in self._finished:
            try:
                got_slot, status, detail = self._results.get(timeout=5.0)
            except queue.Empty:
                dead = [p.name for p in self._processes if not p.is_alive()]
                if dead:
                    self.close()
                    raise RuntimeError(f"DataLoader worker(s) {', '.join(dead)} died") from None
                continue
            self._finished[got_slot] = (status, detail)
        return self._finished.pop(slot)

    def _drain(self) -> None:
        """Wait for every queued batch (they are stale: only called when the size changed)."""
        while self._in_flight:
            batch_index, (slot, _, _, _) = self._in_flight.popitem()
            status, detail = self._wait_for(slot)
            self._check_status(status, detail)
            self._record_bad(detail)
            self._free.append(slot)
            heapq.heappush(self._redo, batch_index)

    def _allocate(self, image_floats: int) -> None:
        for slot_file in self._slot_files:
            slot_file.close()
        self._slot_files.clear()
        truth_floats = self.batch * self.max_boxes * 5
        total = self._n_slots * 4 * (image_floats + truth_floats)
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        if folder == "/dev/shm" and shutil.disk_usage(folder).free < 2 * total:
            folder = tempfile.gettempdir()
        stem = f"pydarknet-loader-{os.getpid()}-{id(self):x}-{image_floats}"
        self._slot_files.extend(_SlotFile(os.path.join(folder, f"{stem}-{i}"), image_floats, truth_floats,
                                          self._pinner)
                                for i in range(self._n_slots))
        self._capacity = image_floats
        self._free = list(range(self._n_slots))[::-1]
        self._held = None

    def _check_status(self, status: str, detail) -> None:
        """Raise what a worker reported: no usable image (a DataError), or an unexpected failure."""
        if status == "unusable":
            message, found_bad = detail
            self._record_bad(found_bad)
            self.close()
            raise self._no_usable_image(message)
        if status == "error":
            self.close()
            raise RuntimeError(f"DataLoader worker failed: {detail}")

    # -- bad files -------------------------------------------------------------------------------------
    def _no_usable_image(self, detail: str) -> DataError:
        where = f"; they are listed in {self.bad_list}" if self.bad_list else ""
        return DataError(f"{self.source}: no usable image: {detail}{where}")

    def _record_bad(self, found_bad: list[tuple[str, str]]) -> None:
        new = [(path, reason) for path, reason in found_bad if path not in self.bad_paths]
        for path, reason in new:
            self.bad_paths.add(path)
            _log.warning("skipping %s: %s", path, reason)
        if new and self.bad_list:
            Path(self.bad_list).parent.mkdir(parents=True, exist_ok=True)
            with open(self.bad_list, "a", encoding="utf-8") as f:
                f.writelines(f"{path}\n" for path, _ in new)
