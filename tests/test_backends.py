"""The two-implementation harness: one network run under two implementations (two sets of Network keyword
arguments), compared on what training and inference depend on, over the layer configurations of
tests/test_gradients.py (plus wider 3x3 layers that the Winograd path takes).

Compared (each as max|a - b| / max|b|, the error relative to the array's scale):
  - inference: every layer's output;
  - training: every layer's training-mode output, the delta at the input and the parameter gradients of a
    backward from the same last delta (dn_network_backward_probe), the batch-norm rolling statistics after a
    train_chunk, and the parameters and momentum buffers after an SGD step from the same update buffers.

Pairs today, on the CPU: the Winograd tiles (winograd2, winograd4, fused's choice) and auto (oneDNN when built
in) against im2col + GEMM (gemm), oneDNN against the unfused plain path, and the fused inference path against
the plain one, for inference (test_bf16_inference_is_close_to_float32: bf16 against plain, looser); one thread against two for training (the
per-thread splits of GEMMs and batch-norm sums must not change the results); and the CPU behind the code paths
of a device backend (DN_DEVICE_CPU_STAGED: inputs staged, the [yolo] loss through host staging, no Winograd,
batch norm and activation as separate kernels where the CPU fuses them) against the CPU, for both. With a CUDA device (a GPU build, pydarknet.cuda_device_count() > 0) the same cases
run device="cuda:0" against the CPU (marked gpu).
"""
from __future__ import annotations

import zlib
from unittest import mock

import numpy as np
import pytest

import pydarknet
import pydarknet.network
from pydarknet import Network
from pydarknet._ffi import lib

import test_gradients as grad
from test_gradients import conv, write_cfg
from test_sgd import get_updates, set_updates

TOL = 1e-4  # max relative error (to the array's largest magnitude) between two implementations


def wide(name, shape, batch, **opts):
    """3x3 stride-1 layers with >= 8 channels and filters: the Winograd path's (F(4x4) from 24x24 up)."""
    return (name, shape, batch, [conv(**opts)])


CASES = (
    [(f"conv-{cid}", shape, batch, [conv(**opts)]) for cid, shape, batch, opts in grad.CONV_CASES]
    + [
        ("conv-chain-bn", (8, 8, 3), 2, [conv(4, 3, bn=1, act="mish"), conv(4, 3, stride=2, bn=1, act="swish"),
                                         conv(3, 1, bn=1, act="tanh")]),
        wide("wide-12-bn-leaky", (12, 12, 8), 2, filters=16, size=3, bn=1, act="leaky"),
        wide("wide-12-linear", (12, 12, 16), 2, filters=8, size=3, bn=0, act="linear"),
        wide("wide-13-bn-mish", (13, 13, 8), 2, filters=8, size=3, bn=1, act="mish"),
        wide("wide-26-bn-leaky", (26, 26, 8), 2, filters=16, size=3, bn=1, act="leaky"),
        wide("wide-26-logistic", (26, 26, 16), 1, filters=8, size=3, bn=0, act="logistic"),
        wide("wide-30-bn-swish", (30, 27, 8), 2, filters=12, size=3, bn=1, act="swish"),
        ("wide-chain", (24, 24, 3), 2, [conv(8, 3, bn=1, act="leaky"), conv(16, 3, bn=1, act="leaky"),
                                        ("maxpool", {"size": 2, "stride": 2}), conv(8, 3, bn=1, act="relu"),
                                        conv(8, 1, bn=0, act="linear")]),
    ]
    + [(f"maxpool-{mid}", shape, 2, [conv(3, 3, bn=0, act="swish"), ("maxpool", opts)])
       for mid, shape, opts in grad.MAXPOOL_CASES]
    + [
        ("route", (8, 8, 3), 2, [conv(4, 3, bn=1, act="swish"), conv(2, 3, bn=0, act="tanh"),
                                 ("route", {"layers": "-1,-2"}), conv(3, 1, bn=0, act="logistic")]),
        ("route-last-three", (6, 6, 2), 2, [conv(3, 3, bn=1, act="mish"), conv(2, 1, bn=0, act="logistic"),
                                            conv(4, 3, bn=1, act="tanh"), ("route", {"layers": "1,-3,-1"})]),
    ]
    + [(f"shortcut-{sid}", (6, 6, 3), 2, grad.shortcut_layers(frm)) for sid, frm in grad.SHORTCUT_CASES]
    + [
        ("shortcut-leaky-last", (6, 6, 3), 2, grad.shortcut_layers("-3", "leaky")[:4]),
        ("upsample", (8, 8, 2), 2, [conv(3, 3, stride=2, bn=1, act="swish"), ("upsample", {"stride": 2}),
                                    conv(2, 3, bn=0, act="logistic")]),
        ("upsample-last", (8, 8, 2), 2, [conv(3, 3, stride=2, bn=1, act="swish"), ("upsample", {"stride": 2})]),
        ("mini-yolo-leaky", (12, 12, 3), 2, grad.mini_yolo_layers("leaky")),
        ("mini-yolo-smooth", (12, 12, 3), 2,
         grad.mini_yolo_layers(["mish", "swish", "tanh", "logistic", "swish", "mish"])),
    ]
)


def takes_winograd(shape, layers) -> bool:
    """Whether some convolution of the case is one the Winograd path takes (3x3, stride 1, one group,
    >= 8 input channels and filters)."""
    w, h, c = shape
    for section, opts in layers:
        if section == "convolutional":
            if (opts["size"] == 3 and opts["stride"] == 1 and opts.get("groups", 1) == 1 and c >= 8
                    and opts["filters"] >= 8):
                return True
            c = opts["filters"]
        elif section == "maxpool":
            w, h = w // opts["stride"], h // opts["stride"]
    return False


def cuda_devices() -> int:
    count = getattr(pydarknet, "cuda_device_count", None)
    return int(count()) if count is not None else 0


STAGED = "cpu-staged"  # the C API's DN_DEVICE_CPU_STAGED, a test-only device the Python API does not name
GPU = pytest.mark.gpu
NEEDS_ONEDNN = pytest.mark.skipif(not pydarknet.network.onednn_version(),
                                  reason="the library was built without oneDNN (pip install onednn-cpu-gomp "
                                         "onednn-devel-cpu-gomp, then make)")
NEEDS_BF16 = pytest.mark.skipif(not pydarknet.network.bf16_supported()[0],
                                reason="no bf16 here (a build without oneDNN, or a CPU without AMX/AVX512_BF16)")
BF16_TOL = 3e-2  # bfloat16 keeps 8 significant bits of inputs and weights; sums stay float32
NEEDS_CUDA = pytest.mark.skipif(cuda_devices() == 0, reason="no CUDA device (or a build without CUDA)")

# (id, implementation A, implementation B, marks)
INFERENCE_PAIRS = [
    ("winograd2-vs-gemm", dict(conv_algo="winograd2"), dict(conv_algo="gemm"), ()),
    ("winograd4-vs-gemm", dict(conv_algo="winograd4"), dict(conv_algo="gemm"), ()),
    ("auto-vs-gemm", dict(conv_algo="auto"), dict(conv_algo="gemm"), ()),
    ("fused-vs-gemm", dict(conv_algo="fused"), dict(conv_algo="gemm"), ()),
    ("gemm-vs-plain", dict(conv_algo="gemm"), dict(conv_algo="plain"), ()),
    ("onednn-vs-plain", dict(conv_algo="onednn"), dict(conv_algo="plain"), (NEEDS_ONEDNN,)),
    ("staged-vs-cpu", dict(device=STAGED), dict(device="cpu"), ()),
    ("cuda-vs-cpu", dict(device="cuda:0"), dict(device="cpu"), (GPU, NEEDS_CUDA)),
]
TRAINING_PAIRS = [
    ("threads1-vs-threads2", dict(threads=1), dict(threads=2), ()),
    ("staged-vs-cpu", dict(device=STAGED), dict(device="cpu"), ()),
    ("cuda-vs-cpu", dict(device="cuda:0"), dict(device="cpu"), (GPU, NEEDS_CUDA)),
]


def params_for(pairs, winograd_only_for=("winograd", "fused")):
    out = []
    for pid, a, b, marks in pairs:
        for cid, shape, batch, layers in CASES:
            if pid.startswith(winograd_only_for) and not takes_winograd(shape, layers):
                continue  # both sides would run the same code
            out.append(pytest.param(a, b, shape, batch, layers, id=f"{pid}-{cid}", marks=marks))
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    if a.size == 0:
        return 0.0
    assert np.isfinite(a).all() and np.isfinite(b).all()
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def assert_close(a, b, what: str, tol: float = TOL) -> None:
    err = rel_err(a, b)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:g}"


def open_network(cfg, *args, **options) -> Network:
    """Network(cfg, ...), where device=STAGED means the C API's DN_DEVICE_CPU_STAGED."""
    if options.get("device") == STAGED:
        parse = pydarknet.network.parse_device
        with mock.patch.object(pydarknet.network, "parse_device",
                               lambda d: lib.DN_DEVICE_CPU_STAGED if d == STAGED else parse(d)):
            return Network(cfg, *args, **options)
    return Network(cfg, *args, **options)


def build(tmp_path, name, shape, batch, layers, options) -> Network:
    w, h, c = shape
    return open_network(write_cfg(tmp_path, name, w, h, c, layers), batch=batch, **options)


def twins(tmp_path, shape, batch, layers, impl_a, impl_b):
    """The two implementations of one network with the same random parameters, and a random input."""
    rng = np.random.default_rng(zlib.crc32(repr((shape, layers)).encode()))
    a = build(tmp_path, "a", shape, batch, layers, impl_a)
    b = build(tmp_path, "b", shape, batch, layers, impl_b)
    p = grad.randomize(b, rng)
    a.set_params(p)
    w, h, c = shape
    x = rng.uniform(-1, 1, (batch, c, h, w)).astype(np.float32)
    return a, b, x, rng


def all_outputs(net: Network, n: int) -> list[np.ndarray]:
    return [net.layer_output(i, n) for i in range(len(net.layers))]


@pytest.mark.parametrize("impl_a,impl_b,shape,batch,layers", params_for(INFERENCE_PAIRS))
def test_inference_outputs_agree(tmp_path, impl_a, impl_b, shape, batch, layers):
    a, b, x, _ = twins(tmp_path, shape, batch, layers, impl_a, impl_b)
    with a, b:
        a.forward_last(x)
        b.forward_last(x)
        engines_used(a, impl_a)
        engines_used(b, impl_b)
        for i, (oa, ob) in enumerate(zip(all_outputs(a, batch), all_outputs(b, batch))):
            assert np.abs(ob).max() > 0, f"layer {i}: an all-zero output proves nothing"
            assert_close(oa, ob, f"layer {i} ({a.layers[i].type}) output")


def engines_used(net: Network, options: dict) -> None:
    """The convolutions ran on the engine the options asked for (so a pair never compares a path with itself);
    with oneDNN, auto and onednn ran the network as one oneDNN network (net_onednn.c) on every case here."""
    engines = net.conv_engines()
    whole = (options.get("conv_algo", "auto") in ("auto", "onednn") and options.get("device", "cpu") == "cpu"
             and bool(pydarknet.network.onednn_version()))
    assert net.inference_path() == ("onednn-network" if whole else "layers")
    if options.get("conv_algo") == "onednn" and options.get("precision") == "bf16":
        # the whole network in bfloat16 (its NCHW float32 input converted on the way into the first layer)
        assert set(engines) == {"onednn-bf16"}, engines
    elif options.get("conv_algo") == "onednn":
        assert set(engines) == {"onednn"}, engines
    elif options.get("conv_algo") in ("plain", "fused"):
        assert set(engines) == {options["conv_algo"]}, engines


@NEEDS_BF16
@pytest.mark.parametrize("cid,shape,batch,layers", [c for c in CASES if c[0].startswith(("wide", "mini-yolo",
                                                                                         "conv-chain"))],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_bf16_inference_is_close_to_float32(tmp_path, cid, shape, batch, layers):
    """precision="bf16" (oneDNN, bfloat16 multiplies where a layer has >= 16 input channels) stays within
    BF16_TOL of the float32 plain path, layer by layer, and does round where it ran bfloat16 (it is not the
    float32 path under another name)."""
    bf16 = dict(conv_algo="onednn", precision="bf16")
    plain = dict(conv_algo="plain")
    a, b, x, _ = twins(tmp_path, shape, batch, layers, bf16, plain)
    with a, b:
        a.forward_last(x)
        b.forward_last(x)
        engines_used(a, bf16)
        worst = 0.0
        for i, (oa, ob) in enumerate(zip(all_outputs(a, batch), all_outputs(b, batch))):
            assert_close(oa, ob, f"layer {i} ({a.layers[i].type}) output", BF16_TOL)
            worst = max(worst, rel_err(oa, ob))
        if "onednn-bf16" in a.conv_engines():
            assert worst > 1e-6, "bf16 gave float32's results exactly: it did not run in bfloat16"
        else:
            assert worst <= TOL, "layers below 16 input channels run float32"


@pytest.mark.parametrize("impl_a,impl_b,shape,batch,layers", params_for(TRAINING_PAIRS))
def test_training_agrees(tmp_path, impl_a, impl_b, shape, batch, layers):
    a, b, x, rng = twins(tmp_path, shape, batch, layers, impl_a, impl_b)
    with a, b:
        # training-mode forward: batch statistics
        a.forward_last(x, train=True)
        b.forward_last(x, train=True)
        for i, (oa, ob) in enumerate(zip(all_outputs(a, batch), all_outputs(b, batch))):
            assert_close(oa, ob, f"layer {i} ({a.layers[i].type}) training output")
        # input deltas and parameter gradients from the same last delta
        w, h, c = b.layers[-1].output_shape
        D = rng.uniform(-1, 1, (batch, c, h, w)).astype(np.float32)
        dx_a, dp_a = a.backward_probe(x, D)
        dx_b, dp_b = b.backward_probe(x, D)
        assert np.abs(dx_b).max() > 0
        assert_close(dx_a, dx_b, "input delta")
        assert_close(dp_a, dp_b, "parameter gradients")
        # a training chunk: rolling statistics (and, with [yolo] layers, the loss and its gradients)
        truths = np.zeros((batch, b.max_boxes, 5), np.float32)
        truths[:, 0] = [0.4, 0.55, 0.3, 0.4, 0]
        truths[0, 1] = [0.7, 0.3, 0.2, 0.25, 0]
        cost_a, cost_b = a.train_chunk(x, truths), b.train_chunk(x, truths)
        assert_close(np.float32(cost_a), np.float32(cost_b), "cost")
        assert_close(a.params(), b.params(), "parameters after train_chunk (rolling statistics)")
        assert_close(get_updates(a), get_updates(b), "update buffers after train_chunk")
        # one SGD step from the same update buffers
        set_updates(a, dp_b)
        set_updates(b, dp_b)
        a.update(0.01, 0.9, 0.0005, batch)
        b.update(0.01, 0.9, 0.0005, batch)
        assert_close(a.params(), b.params(), "parameters after an SGD step")
        assert_close(get_updates(a), get_updates(b), "momentum after an SGD step")


def test_winograd_cases_exist():
    """The Winograd pairs above must have cases to run (takes_winograd must not filter them all away)."""
    assert sum(takes_winograd(shape, layers) for _, shape, _, layers in CASES) >= 7
