"""The built-in synthetic detection data set that ``python -m pydarknet train`` uses when given nothing.

Five shape classes (circle, square, triangle, cross, ring) of varied size, stretch, rotation and colour on
cluttered backgrounds (gradients, blotches, lines, small distractor blobs, noise), saved as JPEG with
Darknet labels. Generated once, deterministically, into a cache folder.
"""
from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

__all__ = ["CLASS_NAMES", "default_cache_dir", "ensure_dataset", "render_image"]

CLASS_NAMES = ("circle", "square", "triangle", "cross", "ring")
VERSION = "synth-v2"  # bump when the images change, so old caches are not reused
_SEED = 20240611
_SPLITS = {"train": 0, "valid": 1}
_COMPLETE_MARKER = ".complete"

# Object side (before stretch) as a fraction of the image's shorter side: >= 18% keeps an object's short side
# at >= ~11 px once the image is stretched to the default cfg's 128 px network input. (v1 went down to 9%:
# those smallest shapes were what a 10-minute CPU training could not learn to tell apart.)
_MIN_SIZE, _MAX_SIZE = 0.18, 0.5
_MIN_STRETCH, _MAX_STRETCH = 0.6, 1.6
_DISTRACTOR_SIZE = (0.015, 0.05)  # clutter stays well below the smallest object
_SUBPIXEL = 4  # cv2 drawing "shift": coordinates carry 4 fractional bits


def default_cache_dir() -> Path:
    """``$PYDARKNET_CACHE``, else ``$XDG_CACHE_HOME/pydarknet``, else ``~/.cache/pydarknet``."""
    if os.environ.get("PYDARKNET_CACHE"):
        return Path(os.environ["PYDARKNET_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pydarknet"


# ---------------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------------

def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates → cv2's fixed-point int32 (with _SUBPIXEL fractional bits)."""
    return np.round(points * (1 << _SUBPIXEL)).astype(np.int32)


def _polygon(unit_points, centre, size, angle) -> np.ndarray:
    """Points given in a unit box centred on 0, scaled to ``size`` (w, h), rotated by ``angle`` (radians)."""
    points = np.asarray(unit_points, np.float64) * size
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]]) + centre


_TRIANGLE = [(0.0, -0.5), (0.5, 0.5), (-0.5, 0.5)]
_SQUARE = [(-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)]


def _cross(arm: float) -> list[tuple[float, float]]:
    a = arm / 2
    return [(-a, -0.5), (a, -0.5), (a, -a), (0.5, -a), (0.5, a), (a, a), (a, 0.5), (-a, 0.5), (-a, a),
            (-0.5, a), (-0.5, -a), (-a, -a)]


def _draw_shape(mask: np.ndarray, cls: int, centre, size, angle: float, rng: np.random.Generator) -> None:
    """Draw class ``cls`` into the uint8 ``mask`` (255 = object, anti-aliased edges)."""
    aa = cv2.LINE_AA
    if cls in (0, 4):  # circle, ring: ellipses (stretch makes them oval)
        axes = _fixed(np.asarray(size) / 2)
        cv2.ellipse(mask, tuple(_fixed(np.asarray(centre))), tuple(axes), math.degrees(angle), 0, 360, 255, -1,
                    aa, _SUBPIXEL)
        if cls == 4:
            hole = _fixed(np.asarray(size) / 2 * rng.uniform(0.45, 0.6))
            cv2.ellipse(mask, tuple(_fixed(np.asarray(centre))), tuple(hole), math.degrees(angle), 0, 360, 0,
                        -1, aa, _SUBPIXEL)
        return
    unit = {1: _SQUARE, 2: _TRIANGLE, 3: _cross(rng.uniform(0.3, 0.4))}[cls]
    cv2.fillPoly(mask, [_fixed(_polygon(unit, centre, size, angle))], 255, aa, _SUBPIXEL)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Float32 HxWx3 clutter: gradient, soft blotches, lines and small blobs that are not objects."""
    angle = rng.uniform(0, 2 * math.pi)
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    t = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c0, c1 = rng.uniform(30, 225, (2, 3)).astype(np.float32)
    image = c0 + t[..., None] * (c1 - c0)
    if rng.random() < 0.6:  # low-frequency blotches
        coarse = rng.normal(0, 35, (rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
        image += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    side = min(w, h)
    for _ in range(rng.integers(2, 7)):  # random lines
        p0, p1 = rng.uniform(0, 1, (2, 2)) * (w, h)
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.line(image, tuple(_fixed(p0)), tuple(_fixed(p1)), colour, int(rng.integers(1, 3)), cv2.LINE_AA,
                 _SUBPIXEL)
    for _ in range(rng.integers(3, 11)):  # distractor blobs: irregular and small
        centre = rng.uniform(0, 1, 2) * (w, h)
        radius = rng.uniform(*_DISTRACTOR_SIZE) * side / 2
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = radius * rng.uniform(0.5, 1.3, n)
        points = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.fillPoly(image, [_fixed(points)], colour, cv2.LINE_AA, _SUBPIXEL)
    return image


def _object_colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A saturated colour that stands out from ``behind`` (the mean background colour under the object)."""
    best, best_distance = None, -1.0
    for _ in range(20):
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(140, 255), rng.uniform(110, 255)]]], np.uint8)
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        distance = float(np.abs(colour - behind).sum())
        if distance >= 150:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _overlaps_too_much(box, boxes) -> bool:
    x0, y0, x1, y1 = box
    for b in boxes:
        iw = min(x1, b[2]) - max(x0, b[0])
        ih = min(y1, b[3]) - max(y0, b[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        smaller = min((x1 - x0) * (y1 - y0), (b[2] - b[0]) * (b[3] - b[1]))
        if inter > 0.2 * smaller:  # also rules out one object hiding inside another
            return True
    return False


def render_image(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One BGR uint8 image and its labels ``(class, cx, cy, w, h)`` (relative, Darknet convention)."""
    w, h = (int(v) for v in rng.integers(160, 257, 2))
    image = _background(rng, w, h)
    side = min(w, h)
    labels: list[tuple[int, float, float, float, float]] = []
    placed: list[tuple[float, float, float, float]] = []
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 6)):
        cls = int(rng.integers(len(CLASS_NAMES)))
        extent = side * math.exp(rng.uniform(math.log(_MIN_SIZE), math.log(_MAX_SIZE)))
        stretch = math.exp(rng.uniform(math.log(_MIN_STRETCH), math.log(_MAX_STRETCH)))
        size = np.array([extent * math.sqrt(stretch), extent / math.sqrt(stretch)])
        # Squares and crosses turn only a little so they stay a square and a plus (not a diamond or an x).
        max_turn = math.pi / 8 if cls in (1, 3) else math.pi
        angle = rng.uniform(-max_turn, max_turn)
        half = (abs(size[0] * math.cos(angle)) + abs(size[1] * math.sin(angle))) / 2, \
               (abs(size[0] * math.sin(angle)) + abs(size[1] * math.cos(angle))) / 2
        for _attempt in range(30):
            centre = np.array([rng.uniform(half[0] + 1, w - half[0] - 1), rng.uniform(half[1] + 1, h - half[1] - 1)])
            if not _overlaps_too_much((*(centre - half), *(centre + half)), placed):
                break
        else:
            continue  # no room left for this one
        mask[:] = 0
        _draw_shape(mask, cls, centre, size, angle, rng)
        ys, xs = np.nonzero(mask > 127)
        if not len(xs):
            continue
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        region = image[y0:y1, x0:x1]  # a view: blending into it paints the image
        alpha = (mask[y0:y1, x0:x1].astype(np.float32) * np.float32(1 / 255))[..., None]
        colour = _object_colour(rng, region.reshape(-1, 3).mean(0))
        # Shading across the object so it is not one flat colour.
        shade = 1.0 + rng.uniform(-0.15, 0.15) * (np.arange(x0, x1, dtype=np.float32) - centre[0]) / side
        region += alpha * (colour * shade[None, :, None].astype(np.float32) - region)
        placed.append((x0, y0, x1, y1))
        labels.append((cls, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.0))
    image += rng.standard_normal(image.shape, np.float32) * np.float32(rng.uniform(3, 10))
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), labels


# ---------------------------------------------------------------------------------------------------------
# The cached data set
# ---------------------------------------------------------------------------------------------------------

def _write_images(folder: str, split: str, indices: range) -> None:
    """Render and save images ``indices`` of ``split`` (one chunk of the work of a process pool)."""
    folder = Path(folder)
    for index in indices:
        rng = np.random.default_rng([_SEED, _SPLITS[split], index])
        image, labels = render_image(rng)
        name = f"{split}_{index:05d}"
        quality = int(rng.integers(80, 96))
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {name}")
        (folder / "images" / f"{name}.jpg").write_bytes(encoded.tobytes())
        (folder / "labels" / f"{name}.txt").write_text(
            "".join(f"{c} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, x, y, bw, bh in labels))


def _generate(folder: Path, counts: dict[str, int]) -> None:
    """All images, on every core: each image has its own seed, so the split of the work changes nothing."""
    chunk = 100
    jobs = [(str(folder), split, range(start, min(start + chunk, count)))
            for split, count in counts.items() for start in range(0, count, chunk)]
    workers = min(os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        for job in jobs:
            _write_images(*job)
        return
    # "spawn": forking a process whose OpenCV thread pool is running can hang the children.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        for future in [pool.submit(_write_images, *job) for job in jobs]:
            future.result()


def _remove_stale_temporaries(root: Path, name: str) -> None:
    """Folders left by a generation that was killed (older than an hour, so not one still running)."""
    for leftover in root.glob(f"{name}.tmp-*"):
        try:
            if time.time() - leftover.stat().st_mtime > 3600:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def ensure_dataset(cache_dir: str | os.PathLike | None = None, *, n_train: int = 1500,
                   n_valid: int = 200) -> Path:
    """Path of the synthetic data set's ``.data`` file, generating the set first if needed.

    The set lives in ``<cache_dir>/synth-v2`` (``synth-v2-<n_train>-<n_valid>`` for other sizes), with
    ``images/``, ``labels/``, ``train.txt``, ``valid.txt`` (absolute paths), ``synth.names`` and
    ``synth.data`` (``backup=<cache_dir>/backup``, ``prefix=synth``). It is built in a temporary folder and
    renamed into place when complete, so an interrupted generation is never mistaken for a finished one.
    """
    if n_train < 1 or n_valid < 1:
        raise ValueError(f"n_train={n_train} and n_valid={n_valid} must be >= 1")
    root = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    if any(c.isspace() for c in str(root)):
        # A .data file cannot hold such a path: Darknet's parser removes all whitespace from a line.
        raise ValueError(f"cache folder {root} contains whitespace; set PYDARKNET_CACHE to another folder")
    name = VERSION if (n_train, n_valid) == (1500, 200) else f"{VERSION}-{n_train}-{n_valid}"
    final = root / name
    data_file = final / "synth.data"
    if (final / _COMPLETE_MARKER).is_file():
        return data_file
    root.mkdir(parents=True, exist_ok=True)
    if final.exists():  # not made by us (we only ever rename complete folders into place)
        shutil.rmtree(final)
    _remove_stale_temporaries(root, name)
    temporary = Path(tempfile.mkdtemp(prefix=f"{name}.tmp-", dir=root))
    try:
        (temporary / "images").mkdir()
        (temporary / "labels").mkdir()
        _generate(temporary, {"train": n_train, "valid": n_valid})
        for split, count in (("train", n_train), ("valid", n_valid)):
            (temporary / f"{split}.txt").write_text(
                "".join(f"{final / 'images'}/{split}_{index:05d}.jpg\n" for index in range(count)))
        (temporary / "synth.names").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
        (temporary / "synth.data").write_text(
            f"classes={len(CLASS_NAMES)}\n"
            f"train={final / 'train.txt'}\n"
            f"valid={final / 'valid.txt'}\n"
            f"names={final / 'synth.names'}\n"
            f"backup={root / 'backup'}\n"
            "eval=voc\n"
            "prefix=synth\n")
        (temporary / _COMPLETE_MARKER).write_text(f"{VERSION} train={n_train} valid={n_valid}\n")
        try:
            os.rename(temporary, final)
        except OSError:
            if not (final / _COMPLETE_MARKER).is_file():  # not a concurrent run that finished first
                raise
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return data_file
