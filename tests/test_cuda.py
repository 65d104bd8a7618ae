"""The CUDA backend against the CPU engine, through the public API (issue 9 §5). Needs a CUDA device.

Every layer configuration of test_gradients.py runs on device="cuda:0" and on the CPU from the same parameters:
training forward outputs, input deltas and parameter updates of backward_probe, inference outputs, and for the
networks with a [yolo] head a train_chunk + update (batch-norm rolling statistics, SGD step) must agree within
1e-4 relative (max |gpu - cpu| over max |cpu| per array) in FP32. Then yolov3-tiny: 10 training iterations from
the same weights and images, the reference images' detections, and COCO AP on ../shared/realdata/coco-tiny.
The worst errors seen (FP32, and TensorFloat-32 where the Network takes allow_tf32) are printed at the end.
Bad input: a device index out of range and an impossible allocation are CudaErrors the process survives.
"""
from __future__ import annotations

import inspect
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

import pydarknet
from pydarknet import CudaError, Detector, Network
from test_gradients import (
    CONV_CASES, MAXPOOL_CASES, conv, mini_yolo_layers, param_layout, randomize, shortcut_layers, write_cfg, yolo,
)

DEVICES = pydarknet.cuda_device_count()
NO_DEVICE = ("this libdarknet.so is a CPU-only build (make GPU=1)" if pydarknet.build_info()["cuda"] == 0 else
             "no CUDA device: pydarknet.cuda_device_count() is 0 (no driver or no GPU)")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICES == 0, reason=NO_DEVICE)]

FP32_TOL = 1e-4
TRAIN_TOL = 1e-3
TAKES_TF32 = "allow_tf32" in inspect.signature(Network).parameters
WORST: dict[str, float] = {}


def rel(gpu, cpu) -> float:
    gpu, cpu = np.asarray(gpu, np.float64), np.asarray(cpu, np.float64)
    assert gpu.shape == cpu.shape
    if cpu.size == 0:
        return 0.0
    return float(np.abs(gpu - cpu).max() / max(np.abs(cpu).max(), 1e-12))


def agree(label: str, gpu, cpu, tol=FP32_TOL, kind="fp32"):
    err = rel(gpu, cpu)
    key = f"{kind} " + re.sub(r"L\d+\.", "", label)  # reported per kind of array, the worst over the layers
    WORST[key] = max(WORST.get(key, 0.0), err)
    assert err <= tol, f"{label}: cuda:0 differs from the CPU by {err:.3g} relative (> {tol})"


def pair(cfg: Path, batch: int, **gpu_options) -> tuple[Network, Network]:
    return Network(cfg, batch=batch), Network(cfg, batch=batch, device="cuda:0", **gpu_options)


# ---------------------------------------------------------------------------------------------------------
# every layer configuration of test_gradients.py
def compare_probe(label, cpu: Network, gpu: Network, x, rng, kind="fp32", tol=FP32_TOL):
    out_c = cpu.forward_last(x, train=True)
    agree(f"{label} training forward", gpu.forward_last(x, train=True), out_c, tol, kind)
    D = rng.uniform(-1, 1, out_c.shape).astype(np.float32)
    dx_c, dp_c = cpu.backward_probe(x, D)
    dx_g, dp_g = gpu.backward_probe(x, D)
    agree(f"{label} input delta", dx_g, dx_c, tol, kind)
    for name, sl in param_layout(cpu):
        if "rolling" not in name:
            agree(f"{label} {name} updates", dp_g[sl], dp_c[sl], tol, kind)
    agree(f"{label} inference", gpu.forward_last(x), cpu.forward_last(x), tol, kind)


def conv_case_networks(tmp_path, shape, batch, opts, **gpu_options):
    w, h, c = shape
    cfg = write_cfg(tmp_path, "conv", w, h, c, [conv(**opts)])
    cpu, gpu = pair(cfg, batch, **gpu_options)
    rng = np.random.default_rng(zlib.crc32(repr(sorted(opts.items())).encode()))
    gpu.set_params(randomize(cpu, rng))
    return cpu, gpu, rng.uniform(-1, 1, (batch, c, h, w)).astype(np.float32), rng


@pytest.mark.parametrize("shape,batch,opts", [c[1:] for c in CONV_CASES], ids=[c[0] for c in CONV_CASES])
def test_convolution(tmp_path, shape, batch, opts):
    cpu, gpu, x, rng = conv_case_networks(tmp_path, shape, batch, opts)
    compare_probe("conv", cpu, gpu, x, rng)


@pytest.mark.skipif(not TAKES_TF32, reason="Network has no allow_tf32 option in this build")
@pytest.mark.parametrize("shape,batch,opts", [c[1:] for c in CONV_CASES], ids=[c[0] for c in CONV_CASES])
def test_convolution_tf32_figures(tmp_path, shape, batch, opts):
    """TensorFloat-32 (10-bit mantissa products): recorded for the report, held to a loose 1e-2."""
    cpu, gpu, x, rng = conv_case_networks(tmp_path, shape, batch, opts, allow_tf32=True)
    compare_probe("conv", cpu, gpu, x, rng, kind="tf32", tol=1e-2)


@pytest.mark.parametrize("shape,opts", [c[1:] for c in MAXPOOL_CASES], ids=[c[0] for c in MAXPOOL_CASES])
def test_maxpool(tmp_path, shape, opts):
    w, h, c = shape
    rng = np.random.default_rng(7)
    cpu, gpu = pair(write_cfg(tmp_path, "max", w, h, c, [("maxpool", opts)]), 2)
    # ties everywhere: the argmax rule (first maximum in scan order) must be the CPU's
    x = rng.integers(-2, 3, (2, c, h, w)).astype(np.float32)
    np.testing.assert_array_equal(gpu.forward_last(x, train=True), cpu.forward_last(x, train=True))
    D = rng.uniform(-1, 1, cpu.forward_last(x, train=True).shape).astype(np.float32)
    agree("maxpool input delta", gpu.backward_probe(x, D)[0], cpu.backward_probe(x, D)[0])
    layers = [conv(3, 3, bn=1, act="swish"), ("maxpool", opts), conv(2, 1, bn=0, act="logistic")]
    cpu, gpu = pair(write_cfg(tmp_path, "max2", w, h, c, layers), 2)
    gpu.set_params(randomize(cpu, rng))
    compare_probe("maxpool net", cpu, gpu, rng.uniform(-1, 1, (2, c, h, w)).astype(np.float32), rng)


ROUTE_SHORTCUT_UPSAMPLE = {
    "route": [conv(4, 3, bn=1, act="swish"), conv(2, 3, bn=0, act="tanh"), ("route", {"layers": "-1,-2"}),
              conv(3, 1, bn=0, act="logistic")],
    "shortcut": shortcut_layers("-2"),
    "upsample": [conv(3, 3, stride=2, bn=1, act="swish"), ("upsample", {"stride": 2}),
                 conv(2, 3, bn=0, act="logistic")],
}


@pytest.mark.parametrize("name", list(ROUTE_SHORTCUT_UPSAMPLE))
def test_route_shortcut_upsample(tmp_path, name):
    rng = np.random.default_rng(11)
    cpu, gpu = pair(write_cfg(tmp_path, name, 8, 8, 3, ROUTE_SHORTCUT_UPSAMPLE[name]), 2)
    gpu.set_params(randomize(cpu, rng))
    compare_probe(name, cpu, gpu, rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32), rng)


@pytest.mark.parametrize("act", ["leaky", "smooth"])
def test_mini_yolo_train_step(tmp_path, act):
    """The YOLOv3-style network of test_gradients: probe, loss and deltas, then train_chunk + update (batch-norm
    rolling statistics and the SGD step on the device)."""
    rng = np.random.default_rng(23)
    acts = "leaky" if act == "leaky" else ["mish", "swish", "tanh", "logistic", "swish", "mish"]
    cpu, gpu = pair(write_cfg(tmp_path, "mini", 12, 12, 3, mini_yolo_layers(acts)), 2)
    p0 = randomize(cpu, rng, far_from_kinks=True)
    gpu.set_params(p0)
    x = rng.uniform(0, 1, (2, 3, 12, 12)).astype(np.float32)
    compare_probe("mini-yolo", cpu, gpu, x, rng)
    truths = np.zeros((2, 2, 5), np.float32)
    truths[0, 0] = [0.4, 0.5, 0.3, 0.4, 0]
    truths[1, 0] = [0.6, 0.3, 0.5, 0.2, 0]
    for a, b in zip(gpu.loss(x, truths), cpu.loss(x, truths)):
        agree("mini-yolo loss delta", a["delta"], b["delta"])
        assert a["cost"] == pytest.approx(b["cost"], rel=FP32_TOL)
    cost_c, cost_g = cpu.train_chunk(x, truths), gpu.train_chunk(x, truths)
    assert cost_g == pytest.approx(cost_c, rel=FP32_TOL)
    cpu.update(0.01, 0.9, 0.0005, 2)
    gpu.update(0.01, 0.9, 0.0005, 2)
    p_c, p_g = cpu.params(), gpu.params()
    for name, sl in param_layout(cpu):
        agree(f"mini-yolo {name} after update", p_g[sl], p_c[sl])
    assert not np.array_equal(p_c, p0)


def test_yolo_head(tmp_path):
    rng = np.random.default_rng(21)
    layer = yolo(classes=2)
    layer[1]["representation"] = "lin"
    cpu, gpu = pair(write_cfg(tmp_path, "yolo", 8, 8, 14, [layer]), 3)
    x = rng.uniform(-3, 3, (3, 14, 8, 8)).astype(np.float32)
    agree("yolo activation", gpu.forward(x)[0], cpu.forward(x)[0])


# ---------------------------------------------------------------------------------------------------------
# yolov3-tiny with the real weights
@pytest.fixture(scope="module")
def tiny(reference_dir):
    weights = reference_dir / "yolov3-tiny.weights"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent")
    return reference_dir / "yolov3-tiny.cfg", weights


def test_yolov3_tiny_ten_training_iterations(tiny, reference_dir):
    cfg, weights = tiny
    batch = 4
    cpu, gpu = Network(cfg, weights, batch=batch), Network(cfg, weights, batch=batch, device="cuda:0")
    size = 416
    cpu.resize(size, size)
    gpu.resize(size, size)
    from pydarknet.image import letterbox, read_image  # noqa: PLC0415
    names = ["dog.jpg", "eagle.jpg", "giraffe.jpg", "horses.jpg", "kite.jpg", "person.jpg", "scream.jpg"]
    images = np.stack([letterbox(read_image(reference_dir / "images" / n), size, size) for n in names[:batch]])
    rng = np.random.default_rng(5)
    truths = np.zeros((batch, 3, 5), np.float32)
    truths[:, :, :2] = rng.uniform(0.2, 0.8, (batch, 3, 2))
    truths[:, :, 2:4] = rng.uniform(0.1, 0.4, (batch, 3, 2))
    truths[:, :, 4] = rng.integers(0, 80, (batch, 3))
    for _ in range(10):
        c, g = cpu.train_chunk(images, truths), gpu.train_chunk(images, truths)
        assert g == pytest.approx(c, rel=TRAIN_TOL)
        cpu.update(0.001, 0.9, 0.0005, batch)
        gpu.update(0.001, 0.9, 0.0005, batch)
    p_c, p_g = cpu.params(), gpu.params()
    for name, sl in param_layout(cpu):
        agree(f"yolov3-tiny {name} after 10 iterations", p_g[sl], p_c[sl], tol=TRAIN_TOL)


def test_reference_detections_equal_cpu(tiny, reference_dir):
    cfg, weights = tiny
    names = reference_dir / "coco.names"
    paths = sorted((reference_dir / "images").glob("*.jpg"))
    with Detector(cfg, weights, names=names) as cpu, Detector(cfg, weights, names=names, device="cuda:0") as gpu:
        for path in paths:
            a, b = cpu.detect(path), gpu.detect(path)
            assert [d.name for d in b] == [d.name for d in a], path.name
            for dc, dg in zip(a, b):
                assert abs(dg.prob - dc.prob) <= 0.01, (path.name, dc, dg)
                assert np.abs(np.array(dg.box) - np.array(dc.box)).max() <= 1.0, (path.name, dc, dg)


def test_coco_tiny_ap_equals_cpu(tiny, reference_dir, tmp_path):
    coco = reference_dir.parent / "realdata" / "coco-tiny"
    if not coco.is_dir():
        pytest.skip(f"{coco} is absent")
    from pydarknet.eval import evaluate_coco  # noqa: PLC0415
    from pydarknet.valid import valid  # noqa: PLC0415
    cfg, weights = tiny
    images = sorted((coco / "val2017").glob("*.jpg"))
    (tmp_path / "valid.txt").write_text("".join(f"{p}\n" for p in images))
    data = tmp_path / "coco.data"
    data.write_text(f"classes=80\nvalid={tmp_path / 'valid.txt'}\nnames={reference_dir / 'coco.names'}\neval=coco\n")
    ap = {}
    for device in ("cpu", "cuda:0"):
        with Detector(cfg, weights, names=reference_dir / "coco.names", device=device) as det:
            result = valid(data, cfg, weights, prefix=tmp_path / device, detector=det)
        coco_json = next(p for p in result.outputs if p.suffix == ".json")
        ap[device] = evaluate_coco(coco / "annotations" / "instances_val2017.json", coco_json).ap
    assert ap["cpu"] > 0.05, ap  # the detector found things
    assert abs(ap["cuda:0"] - ap["cpu"]) <= 0.002, ap


def test_pinned_loader_batches_train_like_pageable_ones(tiny, reference_dir, caplog):
    """Batches from a loader whose buffers are page-locked for cuda:0 (asynchronous input copies) train as the
    same batches copied from ordinary memory, and pinning the loader's /dev/shm buffers is accepted."""
    from pydarknet.data import Augment, DataLoader  # noqa: PLC0415
    cfg, weights = tiny
    paths = [str(p) for p in sorted((reference_dir / "images").glob("*.jpg"))]
    costs = {}
    for pinned in (False, True):
        with Network(cfg, weights, batch=2, device="cuda:0") as net, \
                DataLoader(paths, num_classes=80, batch=2, net_w=net.width, net_h=net.height, aug=Augment(),
                           workers=2, seed=3, pin_device="cuda:0" if pinned else None) as loader:
            costs[pinned] = []
            for _ in range(3):
                x, truth = loader.next_batch()
                costs[pinned].append(net.train_chunk(x, truth))
                net.update(0.001, 0.9, 0.0005, 2)
            if pinned:
                assert all(f._pinner is not None for f in loader._slot_files), caplog.text
    assert costs[True] == pytest.approx(costs[False], rel=1e-5)  # the same batches (up to atomics' order)
    assert "left pageable" not in caplog.text and "unpinning" not in caplog.text


# ---------------------------------------------------------------------------------------------------------
# bad input
def test_device_index_out_of_range_names_it(tiny_cfg):
    with pytest.raises(CudaError, match=rf"cuda:{DEVICES}.*out of range.*{DEVICES} CUDA device"):
        Network(tiny_cfg, device=f"cuda:{DEVICES}")
    Network(tiny_cfg, device="cuda:0").close()  # the process and the device are fine


def test_impossible_allocation_names_the_size_and_the_process_lives_on(tmp_path, tiny_cfg):
    # one 1x1 layer of 1024 filters at 416x416: 709 MB per image, 256 images: 182 GB, more than any GPU has
    cfg = write_cfg(tmp_path, "huge", 416, 416, 3, [conv(1024, 1, bn=0, act="linear")])
    with pytest.raises(CudaError, match=r"cannot allocate \d+ bytes"):
        Network(cfg, batch=256, device="cuda:0", memory_limit=1 << 40)
    net = Network(tiny_cfg, batch=1, device="cuda:0")
    out = net.forward(np.random.default_rng(0).uniform(0, 1, (1, 3, net.height, net.width)).astype(np.float32))
    assert all(np.isfinite(o).all() for o in out)


def test_zz_report(capsys):
    """The worst relative differences per check (FP32 and, when measured, TF32), for the issue's note."""
    with capsys.disabled():
        print("\nCUDA vs CPU, worst relative difference per check:")
        for key in sorted(WORST):
            print(f"  {key:70s} {WORST[key]:.3g}")
        print(json.dumps({"build": pydarknet.build_info(), "devices": DEVICES}))
