"""Annotated images: boxes and readable labels, as ``detect --out``, ``detector test`` and ``detector demo`` draw them.

Each label sits on a filled rectangle of its box's colour, in black or white text by the fill's brightness; text
size and box thickness scale with the image; the label is kept inside the image (above the box when there is
room, else just under the box's top edge, shifted right or left at the side borders). Colours are Darknet's
class palette: a six-colour ramp indexed by ``class * 123457 % classes``, so a class keeps its colour across
images, runs and tools.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

__all__ = ["class_color", "draw_detections", "label_layout", "LabelLayout", "text_color"]

# Darknet's colour ramp, each entry (blue, green, red) in 0..1: magenta, red, yellow, green, cyan, blue.
_RAMP = ((1, 0, 1), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 0, 0))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(class_id: int, classes: int) -> tuple[int, int, int]:
    """The BGR colour (0..255) Darknet gives class ``class_id`` of ``classes``."""
    if classes < 1 or not 0 <= class_id < classes:
        raise ValueError(f"class {class_id} out of range for {classes} classes")
    offset = class_id * 123457 % classes
    ratio = offset / classes * 5
    i, j = int(np.floor(ratio)), int(np.ceil(ratio))
    frac = ratio - i
    # Darknet stores the 0..1 value and truncates 255*v when it writes the image.
    return tuple(int(255 * ((1 - frac) * _RAMP[i][k] + frac * _RAMP[j][k])) for k in range(3))


def text_color(fill: Sequence[int]) -> tuple[int, int, int]:
    """Black on a bright fill, white on a dark one (ITU-R 601 luma of the BGR fill)."""
    b, g, r = fill
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b >= 128 else (255, 255, 255)


def _style(width: int, height: int) -> tuple[float, int, int]:
    """(font scale, text thickness, box thickness) for an image of this size: readable from 300 to 4000+ px."""
    side = max(width, height)
    font_scale = max(0.5, side / 1400)
    return font_scale, max(1, round(font_scale * 1.6)), max(1, round(side / 320))


@dataclass(frozen=True)
class LabelLayout:
    """Where a label goes: the filled rectangle (x0, y0, x1, y1), exclusive of x1 and y1, and the text origin."""

    rect: tuple[int, int, int, int]
    origin: tuple[int, int]
    font_scale: float
    thickness: int


def label_layout(text: str, box: tuple[int, int, int, int], width: int, height: int) -> LabelLayout:
    """Place `text` for the box (left, top, right, bottom) in pixels of a width x height image."""
    font_scale, thickness, _ = _style(width, height)
    while True:
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
        pad = max(2, round(text_h * 0.25))
        label_w, label_h = text_w + 2 * pad, text_h + baseline + 2 * pad
        # A tiny image: shrink the text until the label fits rather than cut it.
        if (label_w <= width and label_h <= height) or font_scale <= 0.1:
            break
        font_scale *= 0.8
        thickness = max(1, thickness - 1)
    left, top, _, bottom = box
    x0 = min(max(0, left), max(0, width - label_w))
    y0 = top - label_h
    if y0 < 0:  # no room above the box: just under its top edge, inside it
        y0 = max(0, top)
    y0 = min(y0, max(0, height - label_h))
    return LabelLayout((x0, y0, x0 + label_w, y0 + label_h), (x0 + pad, y0 + pad + text_h), font_scale, thickness)


def draw_detections(image: np.ndarray, detections, classes: int) -> np.ndarray:
    """A copy of the BGR uint8 `image` with each detection's box and label ("name 0.86") drawn on it.

    ``classes`` is the number of classes of the model, which fixes the palette. Boxes are drawn first and the
    labels over them, so no box line crosses a label; where labels overlap, the more probable one is on top.
    """
    out = np.array(image, dtype=np.uint8, copy=True)
    height, width = out.shape[:2]
    _, _, box_thickness = _style(width, height)
    boxes = []
    for d in detections:
        color = class_color(d.class_id, classes)
        left, top, right, bottom = (int(round(v)) for v in d.corners)
        box = (min(max(left, 0), width - 1), min(max(top, 0), height - 1),
               min(max(right, 0), width - 1), min(max(bottom, 0), height - 1))
        cv2.rectangle(out, box[:2], box[2:], color, box_thickness)
        boxes.append((d, color, box))
    for d, color, box in sorted(boxes, key=lambda entry: entry[0].prob):
        text = f"{d.name} {d.prob:.2f}"
        layout = label_layout(text, box, width, height)
        x0, y0, x1, y1 = layout.rect
        out[y0:y1, x0:x1] = color
        cv2.putText(out, text, layout.origin, _FONT, layout.font_scale, text_color(color), layout.thickness,
                    cv2.LINE_AA)
    return out
