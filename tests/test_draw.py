"""Annotated images (pydarknet/draw.py): labels on a fill of the box's colour, inside the image at every border,
scaled with the image, one colour per class. Checked on the pixels drawn, not against a stored picture."""
from __future__ import annotations

import numpy as np
import pytest

from pydarknet.detect import Detection
from pydarknet.draw import class_color, draw_detections, label_layout, text_color

CLASSES = 80


def noise(height, width, seed=0):
    """A busy photo stand-in: uniform noise hardly ever equals a fill colour exactly."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def det(class_id, left, top, right, bottom, prob=0.86, name=None):
    return Detection(class_id, name or f"class{class_id}", prob,
                     ((left + right) / 2, (top + bottom) / 2, right - left, bottom - top))


def label_rect(d, image):
    height, width = image.shape[:2]
    clipped = tuple(int(min(max(round(v), 0), limit - 1))
                    for v, limit in zip(d.corners, (width, height, width, height)))
    return label_layout(f"{d.name} {d.prob:.2f}", clipped, width, height).rect


def assert_filled_label(drawn, rect, fill):
    """The label rectangle lies inside the image, its frame is the fill colour, and inside it only the fill,
    the contrasting text colour and their anti-aliased blends appear (with text present)."""
    height, width = drawn.shape[:2]
    x0, y0, x1, y1 = rect
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (rect, drawn.shape)
    patch = drawn[y0:y1, x0:x1].astype(int)
    fill_arr, ink = np.array(fill), np.array(text_color(fill))
    is_fill = (patch == fill_arr).all(axis=2)
    frame = np.concatenate([is_fill[0], is_fill[-1], is_fill[:, 0], is_fill[:, -1]])
    assert frame.all(), "the fill does not reach the label's edges"
    assert is_fill.mean() > 0.5
    # every pixel is on the segment fill -> ink (anti-aliasing blends the two), never the photo underneath
    direction = ink - fill_arr
    t = ((patch - fill_arr) @ direction) / max(1, direction @ direction)
    off_segment = np.abs(patch - (fill_arr + t[..., None] * direction)).max(axis=2)
    assert off_segment.max() <= 2, "photo pixels show through the label"
    assert (t > 0.8).sum() > 10, "no text drawn in the label"


def test_palette_is_darknets_ramp():
    # offset = class*123457 % 80 = 17*class % 80; ratio = offset/80*5 along magenta, red, yellow, green, cyan, blue
    assert class_color(0, 80) == (255, 0, 255)            # offset 0: magenta (BGR)
    assert class_color(16, 80) == (0, 255, 255)           # dog: offset 272 % 80 = 32, ratio 2: yellow
    assert class_color(1, 80) == (0, 15, 255)             # offset 17, ratio 1.0625: red moving to yellow
    assert class_color(0, 1) == (255, 0, 255)
    assert len({class_color(c, 80) for c in range(80)}) == 80


def test_text_contrasts_with_the_fill():
    assert text_color((0, 255, 255)) == (0, 0, 0)          # yellow fill: black text
    assert text_color((255, 0, 0)) == (255, 255, 255)      # blue fill: white text
    assert text_color((255, 0, 255)) == (255, 255, 255)    # magenta: white


@pytest.mark.parametrize("where", ["top-left", "top", "top-right", "left", "right", "bottom-left", "bottom",
                                   "bottom-right", "whole-image", "outside"])
def test_label_inside_the_image_at_every_border(where):
    height, width = 300, 400
    boxes = {"top-left": (-20, -10, 80, 60), "top": (150, 0, 250, 90), "top-right": (330, -5, 420, 70),
             "left": (-30, 120, 60, 200), "right": (340, 120, 430, 200), "bottom-left": (-10, 250, 70, 320),
             "bottom": (150, 280, 260, 300), "bottom-right": (350, 260, 410, 310), "whole-image": (0, 0, 400, 300),
             "outside": (-50, -50, 450, 350)}
    image = noise(height, width)
    d = det(16, *boxes[where], name="diningtable")
    drawn = draw_detections(image, [d], CLASSES)
    assert_filled_label(drawn, label_rect(d, image), class_color(16, CLASSES))


def test_label_above_the_box_when_there_is_room_else_under_its_top_edge():
    image = noise(300, 400)
    above = label_rect(det(3, 100, 150, 200, 250), image)
    assert above[3] == 150 and above[0] == 100
    below = label_rect(det(3, 100, 5, 200, 250), image)
    assert below[1] == 5                                    # moved under the top edge, inside the box
    left = label_rect(det(3, -40, 150, 100, 250), image)
    assert left[0] == 0                                     # shifted right to start at the border


def test_label_and_box_scale_with_the_image():
    heights = {}
    for side in (300, 4000):
        image = np.zeros((side * 3 // 4, side, 3), np.uint8)
        d = det(0, side * 0.3, side * 0.3, side * 0.6, side * 0.6, name="person")
        x0, y0, x1, y1 = label_rect(d, image)
        heights[side] = y1 - y0
        assert_filled_label(draw_detections(image, [d], CLASSES), (x0, y0, x1, y1), class_color(0, CLASSES))
        # box thickness: count the box colour's rows across the left edge below the label
        drawn = draw_detections(image, [d], CLASSES)
        row = drawn[int(side * 0.45)]
        thick = int((row == np.array(class_color(0, CLASSES))).all(axis=1).sum())
        heights[f"box{side}"] = thick
    assert heights[300] >= 14                              # readable on a small photo
    assert heights[4000] >= 8 * heights[300] // 2          # and grows with the image
    assert heights["box4000"] > 4 * heights["box300"]


def test_tiny_image_still_gets_a_whole_label():
    image = noise(40, 60)
    d = det(2, 0, 0, 60, 40, name="motorbike", prob=0.5)
    assert_filled_label(draw_detections(image, [d], CLASSES), label_rect(d, image), class_color(2, CLASSES))


def test_same_class_same_colour_across_images():
    fills = []
    for seed, (h, w) in enumerate([(300, 400), (480, 640), (1000, 700)]):
        image = noise(h, w, seed)
        d = det(57, w * 0.2, h * 0.4, w * 0.7, h * 0.9, name="sofa")
        x0, y0, x1, y1 = label_rect(d, image)
        drawn = draw_detections(image, [d], CLASSES)
        fills.append(tuple(int(v) for v in drawn[y0, x0]))
    assert fills == [class_color(57, CLASSES)] * 3
    assert class_color(57, CLASSES) != class_color(58, CLASSES)


def test_input_is_left_untouched():
    image = noise(100, 100)
    before = image.copy()
    draw_detections(image, [det(1, 10, 10, 50, 50)], CLASSES)
    assert np.array_equal(image, before)


def test_bad_class_is_an_error():
    with pytest.raises(ValueError, match="class 80"):
        class_color(80, 80)
