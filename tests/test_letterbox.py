"""The letterbox size comes from the C core (dn_letterbox_size), the same arithmetic dn_letterbox_bgr uses.

The reference is Darknet's letterbox_image, written out here: the scales net_w/w and net_h/h compared as
float32, the other side truncated by integer division, each side at least 1.
"""
from __future__ import annotations

import numpy as np
import pytest

from pydarknet.image import letterbox, letterbox_sizes

NET_SIZES = [(416, 416), (608, 608), (320, 416), (416, 320), (512, 288), (1, 1), (13, 7)]


def darknet_letterbox_size(w: int, h: int, net_w: int, net_h: int) -> tuple[int, int]:
    if np.float32(net_w) / np.float32(w) < np.float32(net_h) / np.float32(h):
        return net_w, max(1, h * net_w // w)
    return max(1, w * net_h // h), net_h


@pytest.mark.parametrize("net_w, net_h", NET_SIZES)
def test_every_small_image_size_matches_darknet(net_w, net_h):
    mismatches = [(w, h) for w in range(1, 241) for h in range(1, 241)
                  if letterbox_sizes(w, h, net_w, net_h) != darknet_letterbox_size(w, h, net_w, net_h)]
    assert mismatches == []


@pytest.mark.parametrize("net_w, net_h", NET_SIZES)
def test_sizes_at_and_beside_the_network_aspect_ratio_match_darknet(net_w, net_h):
    """Images whose aspect ratio equals the network's or misses it by one pixel, up to 100000 wide: the
    comparison of the scales decides which side fills the network."""
    cases = [(w, max(1, w * net_h // net_w) + dh) for w in range(1, 100001, 37) for dh in (-1, 0, 1)]
    mismatches = [(w, h) for w, h in cases if h >= 1
                  and letterbox_sizes(w, h, net_w, net_h) != darknet_letterbox_size(w, h, net_w, net_h)]
    assert mismatches == []


@pytest.mark.parametrize("w, h", [(417, 416), (416, 417), (640, 480), (480, 640), (1, 999), (999, 1), (832, 833)])
def test_letterbox_pastes_the_image_at_that_size(w, h):
    """dn_letterbox_bgr fills exactly the centred new_w x new_h box: black image, 0.5 around it."""
    net_w, net_h = 416, 320
    out = letterbox(np.zeros((h, w, 3), np.uint8), net_w, net_h)
    new_w, new_h = letterbox_sizes(w, h, net_w, net_h)
    filled = out[0] != 0.5
    rows, cols = np.flatnonzero(filled.any(axis=1)), np.flatnonzero(filled.any(axis=0))
    assert (len(cols), len(rows)) == (new_w, new_h)
    assert (cols[0], rows[0]) == ((net_w - new_w) // 2, (net_h - new_h) // 2)
    assert filled.sum() == new_w * new_h


@pytest.mark.parametrize("args", [(0, 10, 416, 416), (10, 0, 416, 416), (10, 10, 0, 416), (10, 10, 416, -1)])
def test_bad_sizes_are_refused_by_the_c_core(args):
    with pytest.raises(ValueError, match="letterbox size: bad arguments"):
        letterbox_sizes(*args)
