"""Training convolutions through oneDNN (csrc/conv_train_onednn.c): with conv_algo "auto" (the default) a library
built with oneDNN trains its convolutions larger than 1x1 on oneDNN's primitives (all of them under "onednn" or
in bf16); conv_algo "plain" keeps im2col + GEMM, the reference these tests hold them to. What a user relies on: the same forward outputs, input gradients and
parameter gradients (added to what the update buffers hold, over chunks) as the GEMM path, on the layer kinds
YOLO uses, across resizes and thread counts; bf16 mode close to float32. Skipped without oneDNN."""
from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CFG
from pydarknet import Network, _ffi
from pydarknet.network import bf16_supported, onednn_version, set_threads

pytestmark = pytest.mark.skipif(not onednn_version(), reason="this libdarknet.so was built without oneDNN")

F32_RTOL = 2e-4  # of the largest magnitude: sums in another order


def conv_cfg(c: int, size: int, layer: str) -> str:
    return f"[net]\nwidth={size}\nheight={size}\nchannels={c}\n\n[convolutional]\n{layer}\n"


LAYERS = {
    "first layer, 3 channels": (3, 20, "batch_normalize=1\nfilters=16\nsize=3\nstride=1\npad=1\nactivation=leaky"),
    "3x3 stride 2, odd map": (16, 21, "batch_normalize=1\nfilters=32\nsize=3\nstride=2\npad=1\nactivation=leaky"),
    "1x1 with bias, linear": (24, 13, "filters=18\nsize=1\nstride=1\npad=1\nactivation=linear"),
    "3x3 mish, channels not of 16": (40, 9, "batch_normalize=1\nfilters=20\nsize=3\nstride=1\npad=1\n"
                                          "activation=mish"),
    "5x5 no padding": (8, 12, "batch_normalize=1\nfilters=8\nsize=5\nstride=1\npad=0\nactivation=logistic"),
}


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str) -> None:
    scale = float(np.abs(expected).max())
    assert scale > 0, what
    err = float(np.abs(actual - expected).max())
    assert err <= rtol * scale, f"{what}: max error {err:.3g} against the largest {scale:.3g}"


def probe(net: Network, x: np.ndarray, delta: np.ndarray):
    out = net.forward_last(x, train=True).copy()
    input_delta, updates = net.backward_probe(x, delta)
    return out, input_delta, updates


def pair(cfg, batch: int, **options) -> tuple[Network, Network]:
    nets = Network(cfg, batch=batch, **options), Network(cfg, batch=batch, conv_algo="plain")
    for net in nets:
        net.init_params(7)
    return nets


def require_bf16() -> None:
    ok, isa = bf16_supported()
    if not ok:
        pytest.skip(f"bf16 needs AMX or AVX512_BF16; this CPU offers {isa}")


def probe_layer(tmp_path, name: str, seed: int, layer: str | None = None, **options):
    """LAYERS[name] (its cfg text replaced by `layer` if given) with `options` and under conv_algo "plain", on
    the same random input and last delta: the two networks and probe()'s results of each."""
    c, size, text = LAYERS[name]
    cfg = tmp_path / "layer.cfg"
    cfg.write_text(conv_cfg(c, size, layer or text))
    batch = 3
    net, gemm = pair(cfg, batch, **options)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, size, size)).astype(np.float32)
    w, h, f = net.layers[0].output_shape
    delta = rng.standard_normal(batch * w * h * f).astype(np.float32)
    return net, gemm, probe(net, x, delta), probe(gemm, x, delta)


@pytest.mark.parametrize("name", LAYERS)
def test_a_layer_trains_on_onednn_as_on_gemm(tmp_path, name):
    # every layer, 1x1 too (AUTO leaves those to GEMM)
    onednn, gemm, got, want = probe_layer(tmp_path, name, 1, conv_algo="onednn")
    assert onednn.conv_engines() == {"onednn": 1}
    assert gemm.conv_engines() == {"plain": 1}
    for what, a, b in zip(("output", "input gradient", "parameter gradients"), got, want):
        assert_close(a, b, F32_RTOL, f"{name}: {what}")


def test_grouped_convolutions_keep_the_gemm_path(tmp_path):
    cfg = tmp_path / "groups.cfg"
    cfg.write_text(conv_cfg(8, 10, "batch_normalize=1\nfilters=8\ngroups=2\nsize=3\nstride=1\npad=1\n"
                                   "activation=leaky"))
    net = Network(cfg, batch=2)
    net.init_params(3)
    x = np.random.default_rng(0).standard_normal((2, 8, 10, 10)).astype(np.float32)
    net.backward_probe(x, np.ones(2 * 8 * 10 * 10, np.float32))
    assert net.conv_engines() == {"plain": 1}


def smooth_net(tmp_path) -> Path:
    """conftest's TINY_CFG (routes that send a layer's output to two consumers, whose input gradients add up; a
    shortcut, upsampling, two [yolo]) with mish for leaky and a strided convolution for the max pool: no kink
    (leaky's at 0, a max pool's between near-equal inputs) where summing in another order could flip a gradient,
    so every element is held to float32's tolerance."""
    text = TINY_CFG.replace("activation=leaky", "activation=mish")
    text = text.replace("[maxpool]\nsize=2\nstride=2\n", "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\n"
                                                         "stride=2\npad=1\nactivation=mish\n", 1)
    assert "[maxpool]" not in text and "leaky" not in text
    path = tmp_path / "smooth.cfg"
    path.write_text(text)
    return path


def train_two_chunks(net: Network, x: np.ndarray, truths: np.ndarray) -> tuple[list[float], np.ndarray]:
    """Two train_chunk calls without an update: the gradients of both add up in the update buffers."""
    _ffi.network_zero_updates(net._handle())
    half = len(x) // 2
    losses = [net.train_chunk(x[:half], truths[:half]), net.train_chunk(x[half:], truths[half:])]
    updates = np.empty(net.n_params, np.float32)
    _ffi.network_get_updates(net._handle(), updates)
    return losses, updates


def random_truths(rng, batch: int, classes: int) -> np.ndarray:
    truths = np.zeros((batch, 4, 5), np.float32)
    truths[:, :, :2] = rng.uniform(0.2, 0.8, (batch, 4, 2))
    truths[:, :, 2:4] = rng.uniform(0.1, 0.5, (batch, 4, 2))
    truths[:, :, 4] = rng.integers(0, classes, (batch, 4))
    return truths


def test_a_network_trains_on_onednn_as_on_gemm(tmp_path):
    """The whole network: input gradients added up where one output feeds two layers, gradients summed over two
    chunks; then again after a resize (new primitives) and with one thread instead of two."""
    onednn, gemm = pair(smooth_net(tmp_path), 2, conv_algo="onednn")
    rng = np.random.default_rng(5)
    x = rng.random((4, 3, 64, 64), dtype=np.float32)
    truths = random_truths(rng, 4, 2)
    delta = rng.standard_normal(4 * int(np.prod(onednn.layers[-1].output_shape))).astype(np.float32)
    for net in (onednn, gemm):
        net.set_batch(4)
    got, want = probe(onednn, x, delta), probe(gemm, x, delta)
    assert onednn.conv_engines() == {"onednn": 9}
    for what, a, b in zip(("output", "input gradient", "parameter gradients"), got, want):
        assert_close(a, b, F32_RTOL, what)
    for net in (onednn, gemm):
        net.set_batch(2)
    (loss_a, updates_a), (loss_b, updates_b) = train_two_chunks(onednn, x, truths), train_two_chunks(gemm, x, truths)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    assert_close(updates_a, updates_b, F32_RTOL, "parameter gradients over two chunks")

    for net in (onednn, gemm):
        net.resize(96, 96)
    x = rng.random((4, 3, 96, 96), dtype=np.float32)
    set_threads(1)
    try:
        (loss_a, updates_a), (loss_b, updates_b) = (train_two_chunks(onednn, x, truths),
                                                    train_two_chunks(gemm, x, truths))
    finally:
        set_threads(0)
    assert onednn.conv_engines() == {"onednn": 9}
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    assert_close(updates_a, updates_b, F32_RTOL, "after a resize, one thread")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_yolov3_tiny_trains_on_onednn_and_gemm_by_kernel_size(reference_dir):
    """yolov3-tiny (leaky, max pools) under AUTO: its nine 3x3 convolutions train on oneDNN, its four 1x1 ones on
    im2col + GEMM; the loss is float32's, and the gradients point where the GEMM path's do. Element by element they may not match: an output within ~1e-6 of
    leaky's kink or of a max pool tie can land on the other side (measured with oneDNN capped at SSE4.1: one
    output of 5.8e-6 changed its leaky slope and moved 2.6% of the gradients by up to 19% of the largest)."""
    cfg = reference_dir / "yolov3-tiny.cfg"
    if not cfg.is_file():
        pytest.skip(f"{cfg} not found")
    onednn, gemm = pair(cfg, 2)
    rng = np.random.default_rng(5)
    for net in (onednn, gemm):
        net.resize(96, 96)
    x = rng.random((2, 3, 96, 96), dtype=np.float32)
    truths = random_truths(rng, 2, 80)
    (loss_a, updates_a), (loss_b, updates_b) = train_two_chunks(onednn, x, truths), train_two_chunks(gemm, x, truths)
    assert onednn.conv_engines() == {"onednn": 9, "plain": 4}
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    assert cosine(updates_a, updates_b) >= 0.999, cosine(updates_a, updates_b)


@pytest.mark.parametrize("name", [name for name, (c, _, _) in LAYERS.items() if c >= 16])
def test_bf16_training_of_a_layer_is_float32_within_bfloat16_rounding(tmp_path, name):
    """precision bf16: a layer with >= 16 input channels trains on bfloat16 operands (8 significant bits) and
    float32 sums: its output and gradients within 1% of float32's largest, and not equal to them."""
    require_bf16()
    # leaky's kink would turn the rounding of outputs near 0 into 10x gradient differences: linear here
    linear = LAYERS[name][2].replace("activation=leaky", "activation=linear")
    bf16, _, got, want = probe_layer(tmp_path, name, 2, linear, precision="bf16")
    assert bf16.conv_engines() == {"onednn-bf16": 1}
    for what, a, b in zip(("output", "input gradient", "parameter gradients"), got, want):
        assert not np.array_equal(a, b), what
        assert_close(a, b, 0.01, f"bf16 {name}: {what}")


def test_bf16_training_of_yolov3_tiny_runs_every_wide_layer_in_bfloat16(reference_dir):
    """The pretrained yolov3-tiny in bf16: the 3-channel first layer trains in float32, the other twelve on
    bfloat16 operands. Through 13 layers of batch norm the rounding adds up (the GEMM path's bf16 products
    measured the same: gradients 21-28% off float32's in L2), so the check is the direction: cosine >= 0.9;
    test_bf16.py holds the training itself to float32's losses and weights, and its AP."""
    require_bf16()
    weights = reference_dir / "yolov3-tiny.weights"
    if not weights.is_file():
        pytest.skip(f"{weights} not found")
    nets = [Network(reference_dir / "yolov3-tiny.cfg", weights, batch=2, **o)
            for o in (dict(precision="bf16"), dict(conv_algo="plain"))]
    for net in nets:
        net.resize(96, 96)
    rng = np.random.default_rng(9)
    x = rng.random((2, 3, 96, 96), dtype=np.float32)
    delta = rng.standard_normal(2 * int(np.prod(nets[0].layers[-1].output_shape))).astype(np.float32)
    got, want = probe(nets[0], x, delta), probe(nets[1], x, delta)
    assert nets[0].conv_engines() == {"onednn": 1, "onednn-bf16": 12}
    assert_close(got[0], want[0], 0.05, "bf16 output")
    for what, a, b in zip(("input gradient", "parameter gradients"), got[1:], want[1:]):
        assert cosine(a, b) >= 0.9, f"bf16 {what}: cosine {cosine(a, b):.3f} with float32's"


@pytest.mark.parametrize("isa", ["AVX2", "SSE41"])
def test_training_on_cpus_without_avx512_matches_gemm(isa):
    """oneDNN picks other layouts and kernels on older CPUs (8-channel blocks on AVX2; its own GEMM-based
    gradients on SSE4.1): the layer and whole-network comparisons above, rerun in a process whose oneDNN is capped
    at that instruction set (ONEDNN_MAX_CPU_ISA)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA"):
        pytest.skip("already running under a capped instruction set")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA=isa)
    tests = "a_layer_trains_on_onednn_as_on_gemm or a_network_trains_on_onednn_as_on_gemm or by_kernel_size"
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", tests],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout, result.stdout[-500:]
    capped = subprocess.run([sys.executable, "-c", "from pydarknet.network import bf16_supported; "
                             "print(bf16_supported()[1])"], env=env, capture_output=True, text=True, timeout=60)
    assert capped.stdout.strip() == isa.lower(), capped.stdout + capped.stderr  # the cap did apply
