"""Image input: decoding with OpenCV, and Darknet's letterbox/resize arithmetic from the C core."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from . import _ffi
from .errors import ImageError

__all__ = ["read_image", "as_bgr", "letterbox", "letterbox_sizes", "resize_chw"]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 BGR array; FileNotFoundError or ImageError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageError(f"{path}: cannot decode image (corrupt or unsupported format)")
    return image


def as_bgr(image) -> np.ndarray:
    """A path or an array (HxWx3 BGR, HxWx4 BGRA, HxW grey; uint8) -> contiguous HxWx3 uint8 BGR."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8 arrays as cv2.imread returns, got dtype {array.dtype}")
    if array.ndim == 2:
        array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    elif array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"images must be HxWx3 BGR uint8 arrays, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    return np.ascontiguousarray(array)


def letterbox_sizes(width: int, height: int, net_w: int, net_h: int) -> tuple[int, int]:
    """(new_w, new_h) of a width x height image inside the net_w x net_h letterbox: the C core's
    dn_letterbox_size, the arithmetic letterbox() itself uses (Darknet's). Sizes below 1 raise ValueError."""
    return _ffi.letterbox_size(width, height, net_w, net_h)


def letterbox(image: np.ndarray, net_w: int, net_h: int, out: np.ndarray | None = None) -> np.ndarray:
    """BGR uint8 image -> float32 RGB CHW (3, net_h, net_w) in 0..1, letterboxed as Darknet does."""
    bgr = as_bgr(image)
    if out is None:
        out = np.empty((3, net_h, net_w), np.float32)
    elif out.shape != (3, net_h, net_w) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("out must be a contiguous float32 array of shape (3, net_h, net_w)")
    _ffi.letterbox_bgr(bgr, net_w, net_h, out)
    return out


def resize_chw(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Darknet's bilinear resize (aligned corners) of a float32 CHW image."""
    image = np.ascontiguousarray(image, dtype=np.float32)
    out = np.empty((image.shape[0], out_h, out_w), np.float32)
    _ffi.resize_chw(image, out)
    return out
