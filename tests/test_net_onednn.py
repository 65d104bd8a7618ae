"""Inference as one oneDNN network (csrc/net_onednn.c): the layers' outputs stay in oneDNN's channels-last
layouts from one primitive to the next and are turned back into NCHW only when read.

test_backends.py compares every layer's output of its cases against im2col + GEMM and checks that this path ran;
here: what a network's life does to the path's cached primitives and layouts (parameters that change, batch
sizes, sizes, training forwards in between) and a network it declines."""
from __future__ import annotations

import numpy as np
import pytest

import pydarknet.network
from pydarknet import Network

import test_gradients as grad
from test_gradients import conv, write_cfg

pytestmark = pytest.mark.skipif(not pydarknet.network.onednn_version(),
                                reason="the library was built without oneDNN (pip install onednn-cpu-gomp "
                                       "onednn-devel-cpu-gomp, then make)")
TOL = 1e-4

# yolov3's layer kinds at widths oneDNN's blocked kernels take: residual add, route of two, upsample, maxpool
# stride 1 (yolov3-tiny's), two [yolo] heads.
LAYERS = [
    conv(16, 3, bn=1, act="leaky"),                       # 0: 16x16x16
    ("maxpool", {"size": 2, "stride": 2}),                # 1: 8x8
    conv(32, 3, bn=1, act="leaky"),                       # 2
    conv(16, 1, bn=1, act="leaky"),                       # 3
    conv(32, 3, bn=1, act="leaky"),                       # 4
    ("shortcut", {"from": "-3", "activation": "linear"}),  # 5
    ("maxpool", {"size": 2, "stride": 1}),                # 6
    conv(12, 1, bn=0, act="linear"),                      # 7
    grad.yolo(classes=1, mask="1,2"),                     # 8
    ("route", {"layers": "-4"}),                          # 9
    conv(16, 1, bn=1, act="leaky"),                       # 10
    ("upsample", {"stride": 2}),                          # 11: 16x16
    ("route", {"layers": "-1,0"}),                        # 12: 32 channels
    conv(12, 1, bn=0, act="linear"),                      # 13
    grad.yolo(classes=1, mask="0,1"),                     # 14
]


def pair(tmp_path, batch, layers=LAYERS, shape=(16, 16, 3), seed=3, **options):
    w, h, c = shape
    cfg = write_cfg(tmp_path, "net", w, h, c, layers)
    ours = Network(cfg, batch=batch, threads=2, **options)
    ref = Network(cfg, batch=batch, threads=2, conv_algo="gemm")
    params = grad.randomize(ref, np.random.default_rng(seed))
    ours.set_params(params)
    return ours, ref


def assert_same_outputs(ours: Network, ref: Network, n: int, what: str) -> None:
    for i in range(len(ref.layers)):
        a, b = ours.layer_output(i, n), ref.layer_output(i, n)
        assert np.abs(b).max() > 0, f"{what}: layer {i} is all zero"
        err = np.abs(a - b).max() / np.abs(b).max()
        assert err < TOL, f"{what}: layer {i} ({ref.layers[i].type}) differs by {err:.2e} of its scale"


def images(n, w=16, h=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, h, w)).astype(np.float32)


def test_parameters_changed_after_a_forward_are_used(tmp_path):
    ours, ref = pair(tmp_path, 2)
    with ours, ref:
        x = images(2)
        ours.forward(x)
        assert ours.inference_path() == "onednn-network"
        new = grad.randomize(ref, np.random.default_rng(11))  # also sets ref's
        ours.set_params(new)
        ours.forward(x)
        ref.forward(x)
        assert_same_outputs(ours, ref, 2, "after set_params")


def test_batch_sizes_partial_batches_and_resizes(tmp_path):
    ours, ref = pair(tmp_path, 3)
    with ours, ref:
        for n in (1, 3, 2):  # a partial batch, the whole one, then another partial one
            x = images(n, seed=n)
            ours.forward(x)
            ref.forward(x)
            assert ours.inference_path() == "onednn-network"
            assert_same_outputs(ours, ref, n, f"{n} of 3 images")
        for net in (ours, ref):
            net.set_batch(2)
            net.resize(32, 24)
        x = images(2, w=32, h=24, seed=9)
        ours.forward(x)
        ref.forward(x)
        assert ours.inference_path() == "onednn-network"
        assert_same_outputs(ours, ref, 2, "after set_batch(2) and resize(32, 24)")


def test_a_training_forward_in_between_leaves_nchw_outputs(tmp_path):
    """A training-mode forward runs layer by layer over the buffers the oneDNN path had left in its layouts:
    what the layers hold then, and what the next inference forward gives, are NCHW and right."""
    ours, ref = pair(tmp_path, 2)
    with ours, ref:
        x, y = images(2, seed=1), images(2, seed=2)
        ours.forward_last(y, train=True)  # the training buffers exist from here on: nothing is rebuilt below
        ours.forward(x)
        ours.forward_last(y, train=True)
        ref.forward_last(y, train=True)
        assert ours.inference_path() == "layers"
        assert_same_outputs(ours, ref, 2, "training-mode forward after an inference one")
        ours.forward(x)
        ref.forward(x)
        assert ours.inference_path() == "onednn-network"
        assert_same_outputs(ours, ref, 2, "inference forward after a training-mode one")


def test_detections_of_the_pretrained_tiny_model_match_layer_by_layer(reference_dir):
    cfg, weights = reference_dir / "yolov3-tiny.cfg", reference_dir / "yolov3-tiny.weights"
    x = images(2, w=416, h=416, seed=4)
    with Network(cfg, weights, batch=2, threads=2) as ours, \
            Network(cfg, weights, batch=2, threads=2, conv_algo="gemm") as ref:
        heads = ours.forward(x)
        assert ours.inference_path() == "onednn-network"
        for a, b in zip(heads, ref.forward(x)):
            assert np.abs(a - b).max() < 1e-4 * np.abs(b).max()


def test_a_network_it_cannot_run_goes_layer_by_layer(tmp_path, caplog):
    """Its first layer is not a convolution: declined once, said at info level, and run layer by layer."""
    layers = [("maxpool", {"size": 2, "stride": 2}), conv(16, 3, bn=1, act="leaky"), conv(8, 1, bn=0, act="linear")]
    ours, ref = pair(tmp_path, 1, layers=layers)
    with ours, ref, caplog.at_level("INFO", logger="pydarknet"):
        x = images(1)
        ours.forward(x)
        ref.forward(x)
        assert ours.inference_path() == "layers"
        assert ours.conv_engines() == {"onednn": 1, "fused": 1}  # layer by layer: 1x1 on the hand-written path
        assert_same_outputs(ours, ref, 1, "declined network")
    assert any("layer by layer" in r.getMessage() and "not a convolution" in r.getMessage() for r in caplog.records)
