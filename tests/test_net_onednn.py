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


# The first convolution and the 2x2 max pool after it as one hand-written AVX-512 kernel (csrc/conv_stem.c),
# under conv_algo "auto" where the CPU has AVX-512 (and AVX512_BF16 for bfloat16).
def cpu_flags() -> set[str]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


CPU_FLAGS = cpu_flags()
STEM_F32 = "avx512f" in CPU_FLAGS
STEM_BF16 = STEM_F32 and "avx512_bf16" in CPU_FLAGS


def stem_layers(filters=16, size=3, act="leaky", bn=1, pool=(2, 2)):
    return [conv(filters, size, bn=bn, act=act), ("maxpool", {"size": pool[0], "stride": pool[1]}),
            conv(24, 3, bn=1, act="leaky"), conv(8, 1, bn=0, act="linear")]


@pytest.mark.parametrize("shape,batch,layers", [
    ((16, 16, 3), 1, stem_layers()),
    ((38, 22, 3), 3, stem_layers()),                         # pooled rows of 19: blocks of 6 and edge pixels
    ((30, 26, 3), 2, stem_layers(32, 5, act="relu")),       # two filter blocks, pad 2
    ((20, 12, 1), 2, stem_layers(16, 1, act="linear", bn=0)),  # one channel, 1x1, no batch norm
    ((64, 8, 4), 1, stem_layers(48, 3)),
], ids=["16x16", "38x22-batch3", "5x5-relu-32", "1x1-one-channel", "4-channels-48"])
def test_the_stem_gives_the_layers_outputs(tmp_path, shape, batch, layers):
    """Every layer's output, the convolution's too (made when read, from the input the kernel keeps), equals
    im2col + GEMM's; the stem ran where the CPU has AVX-512."""
    ours, ref = pair(tmp_path, batch, layers=layers, shape=shape)
    with ours, ref:
        w, h, c = shape
        x = np.random.default_rng(1).uniform(0, 1, (batch, c, h, w)).astype(np.float32)
        ours.forward(x)
        ref.forward(x)
        assert ours.inference_path() == "onednn-network"
        engines = ours.conv_engines()
        assert engines.get("stem", 0) == (1 if STEM_F32 else 0), engines
        assert_same_outputs(ours, ref, batch, f"stem {shape}")
        y = np.random.default_rng(2).uniform(0, 1, (batch, c, h, w)).astype(np.float32)
        ours.forward(y)  # a second forward, its outputs read from the last layer back
        ref.forward(y)
        for i in reversed(range(len(ref.layers))):
            a, b = ours.layer_output(i, batch), ref.layer_output(i, batch)
            assert np.abs(a - b).max() <= TOL * np.abs(b).max(), f"layer {i} after a second forward"


def test_the_stem_follows_new_parameters(tmp_path):
    ours, ref = pair(tmp_path, 2, layers=stem_layers(), shape=(24, 24, 3))
    with ours, ref:
        x = images(2, 24, 24)
        ours.forward(x)
        ours.set_params(grad.randomize(ref, np.random.default_rng(12)))
        ours.forward(x)
        ref.forward(x)
        assert_same_outputs(ours, ref, 2, "stem after set_params")


@pytest.mark.parametrize("layers,why", [
    (stem_layers(pool=(2, 1)), "a stride-1 pool"),
    (stem_layers(pool=(3, 2)), "a 3x3 pool"),
    (stem_layers(act="logistic"), "a logistic activation"),
    (stem_layers(filters=8), "8 filters"),
    (stem_layers() + [("route", {"layers": "0"}), conv(8, 1, bn=0, act="linear")], "a route reads the conv"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_the_stem_declines_what_it_does_not_fit(tmp_path, layers, why):
    ours, ref = pair(tmp_path, 2, layers=layers, shape=(16, 16, 3))
    with ours, ref:
        x = images(2)
        ours.forward(x)
        ref.forward(x)
        assert ours.inference_path() == "onednn-network"
        assert "stem" not in ours.conv_engines(), why
        assert_same_outputs(ours, ref, 2, why)


@pytest.mark.parametrize("where", [(0, 0, 0, 0), (1, 2, 21, 37), (1, 1, 11, 5)], ids=["first", "last", "middle"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_stem_rejects_non_finite_input(tmp_path, where, bad):
    """The stem checks the input as it copies it (the first forward, before the plan exists, by a scan): a NaN
    or infinity anywhere is a ValueError, and the next forward of good images is right."""
    ours, ref = pair(tmp_path, 2, layers=stem_layers(), shape=(38, 22, 3))
    with ours, ref:
        good = images(2, 38, 22, seed=3)
        bad_x = good.copy()
        bad_x[where] = bad
        for _ in range(2):  # without and with the plan built
            with pytest.raises(ValueError, match="NaN or infinity"):
                ours.forward(bad_x)
            ours.forward(good)
        ref.forward(good)
        assert ours.conv_engines().get("stem", 0) == (1 if STEM_F32 else 0)
        assert_same_outputs(ours, ref, 2, "after a rejected input")


def test_conv_algo_onednn_keeps_onednn_for_the_first_layer(tmp_path):
    ours, ref = pair(tmp_path, 1, layers=stem_layers(), conv_algo="onednn")
    with ours, ref:
        ours.forward(images(1))
        assert ours.conv_engines() == {"onednn": 3}


@pytest.mark.skipif(not STEM_BF16 or not pydarknet.network.bf16_supported()[0],
                    reason="needs AVX512_BF16 (and oneDNN's bf16)")
def test_the_bf16_stem_rounds_only_its_output(tmp_path):
    """In bf16 the stem multiplies in float32 and rounds its pooled output to bfloat16: the pool's output is the
    float32 one rounded (within 2^-8 relative), and the network stays as close to float32 as oneDNN's bf16."""
    layers = stem_layers()
    cfg = write_cfg(tmp_path, "net", 38, 22, 3, layers)
    params = None
    nets = {}
    for name, options in (("stem", dict(precision="bf16")), ("onednn", dict(precision="bf16", conv_algo="onednn")),
                          ("f32", dict(conv_algo="gemm"))):
        nets[name] = Network(cfg, batch=2, threads=2, **options)
        if params is None:
            params = grad.randomize(nets[name], np.random.default_rng(3))
        nets[name].set_params(params)
    x = images(2, 38, 22, seed=5)
    try:
        for net in nets.values():
            net.forward(x)
        assert nets["stem"].conv_engines() == {"stem": 1, "onednn-bf16": 2}
        pooled, exact = nets["stem"].layer_output(1, 2), nets["f32"].layer_output(1, 2)
        assert np.all(np.abs(pooled - exact) <= 2.0 ** -8 * np.abs(exact) + 1e-30)
        assert not np.array_equal(pooled, exact)  # it did round
        last = len(layers) - 1
        ref = nets["f32"].layer_output(last, 2)
        err_stem = np.abs(nets["stem"].layer_output(last, 2) - ref).max()
        err_onednn = np.abs(nets["onednn"].layer_output(last, 2) - ref).max()
        assert err_stem <= 1.5 * err_onednn + 1e-6 and err_stem < 2e-2 * np.abs(ref).max(), (err_stem, err_onednn)
    finally:
        for net in nets.values():
            net.close()
