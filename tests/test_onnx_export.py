"""ONNX export: the exported graph, run by onnxruntime, gives the engine's numbers.

Raw outputs are compared with the input of each [yolo] layer after the engine's forward; decoded outputs with
Detector's decode (pydarknet.detect.decode_yolo) before its NMS. Needs the `onnx` extra (onnx, onnxruntime).
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'pydarknet[onnx]')")
ort = pytest.importorskip("onnxruntime",
                          reason="the onnxruntime package is not installed (pip install 'pydarknet[onnx]')")

from click.testing import CliRunner  # noqa: E402

from pydarknet import Detector, ExportError, Network  # noqa: E402
from pydarknet.cli import main  # noqa: E402
from pydarknet.detect import correct_boxes, decode_yolo, nms_per_class  # noqa: E402
from pydarknet.image import letterbox, read_image  # noqa: E402
from pydarknet.onnx_export import export_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4

# Every option the exporter translates, on a 32x32 input: all seven activations, grouped and strided
# convolutions, maxpool 2/1 (Darknet's right/bottom padding), 3/2, and one with more padding than its window
# (an explicit Pad: its outermost windows hold only padding, -FLT_MAX as in Darknet), shortcut with an
# activation, a one-source route, a route that reads a [yolo] layer's activated output, upsample with a scale,
# representation=lin.
OPTIONS_CFG = """\
[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
groups=2
activation=swish

[maxpool]
size=2
stride=1

[convolutional]
filters=8
size=1
stride=1
activation=tanh

[shortcut]
from=-2
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=relu

[maxpool]
size=3
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=logistic

[convolutional]
filters=14
size=1
stride=1
activation=linear

[yolo]
mask=0,1
anchors=4,6, 8,10, 12,16, 20,20, 30,40
classes=2
num=5
representation=lin

[route]
layers=-1,-3

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
activation=leaky

[upsample]
stride=2
scale=0.5

[route]
layers=-1,4

[convolutional]
filters=14
size=1
stride=1
activation=linear

[yolo]
mask=2,3
anchors=4,6, 8,10, 12,16, 20,20, 30,40
classes=2
num=5

[route]
layers=5

[convolutional]
filters=7
size=3
stride=1
pad=1
activation=linear

[maxpool]
size=2
stride=1
padding=4

[yolo]
mask=4
anchors=4,6, 8,10, 12,16, 20,20, 30,40
classes=2
num=5
"""


def randomize(net: Network, seed: int) -> None:
    """Random weights with batch-norm statistics far from the identity, so that folding them is tested."""
    rng = np.random.default_rng(seed)
    net.init_params(seed)
    params = net.params()
    offset = 0
    for layer in net.layers:
        f = layer.filters
        if layer.type == "conv":
            params[offset:offset + f] = rng.normal(0, 0.2, f)                      # biases
            if layer.batch_normalize:
                params[offset + f:offset + 2 * f] = rng.uniform(0.5, 1.5, f)       # scales
                params[offset + 2 * f:offset + 3 * f] = rng.normal(0, 0.2, f)      # rolling mean
                params[offset + 3 * f:offset + 4 * f] = rng.uniform(0.5, 2.0, f)   # rolling variance
        offset += layer.n_params
    net.set_params(params)


def session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def raw_yolo_inputs(net: Network, x: np.ndarray) -> list[np.ndarray]:
    """The engine's input of each [yolo] layer (the output of the layer before it) for images x."""
    net.forward(x)
    return [net.layer_output(layer.index - 1, x.shape[0]) for layer in net.yolo_layers]


def max_difference(expected: list[np.ndarray], got: list[np.ndarray]) -> float:
    assert [e.shape for e in expected] == [g.shape for g in got]
    return max(float(np.abs(e - g).max()) for e, g in zip(expected, got))


def engine_decoded(net: Network, outputs: list[np.ndarray], image: int, thresh: float):
    """Detector's decode of one image: boxes in network pixels, objectness, class scores zeroed at thresh."""
    parts = []
    for layer, out in zip(net.yolo_layers, outputs):
        anchors, mask = net.yolo_anchors(layer.index)
        parts.append(decode_yolo(out[image], anchors, mask, layer.classes, net.width, net.height, thresh,
                                 layer.representation))
    boxes = np.concatenate([p[0] for p in parts]) * np.array([net.width, net.height] * 2, np.float32)
    return boxes, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def onnx_decoded(rows: np.ndarray, thresh: float):
    """The exported decode's rows, filtered as Detector filters them (objectness > thresh, scores <= thresh
    zeroed)."""
    kept = rows[rows[:, 4] > thresh]
    scores = kept[:, 5:].copy()
    scores[scores <= thresh] = 0
    return kept[:, :4], kept[:, 4], scores


@pytest.fixture
def options_cfg(tmp_path) -> Path:
    path = tmp_path / "options.cfg"
    path.write_text(OPTIONS_CFG)
    return path


@pytest.fixture(scope="module")
def tiny_reference(reference_dir):
    cfg, weights = reference_dir / "yolov3-tiny.cfg", reference_dir / "yolov3-tiny.weights"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent")
    return cfg, weights


def letterboxed(paths: list[Path], net_w: int, net_h: int) -> np.ndarray:
    return np.stack([letterbox(read_image(p), net_w, net_h) for p in paths])


def test_yolov3_tiny_real_weights_match_the_engine(tiny_reference, reference_dir, tmp_path):
    cfg, weights = tiny_reference
    out = tmp_path / "tiny.onnx"
    with Network(cfg, weights) as net:
        net.export_onnx(out)
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
        x = letterboxed([reference_dir / "images" / "dog.jpg"], net.width, net.height)
        expected = raw_yolo_inputs(net, x)
        got = session(out).run(None, {"input": x})
        names = [o.name for o in session(out).get_outputs()]
        assert names == [f"yolo_{layer.index}" for layer in net.yolo_layers]
    diff = max_difference(expected, got)
    print(f"yolov3-tiny real weights: max |onnx - engine| = {diff:.3g}")
    assert diff <= TOL


def test_decoded_tensor_matches_detector_before_nms(tiny_reference, reference_dir, tmp_path):
    cfg, weights = tiny_reference
    out = tmp_path / "tiny-decoded.onnx"
    images = [reference_dir / "images" / name for name in ("dog.jpg", "person.jpg")]
    thresh = 0.005
    with Detector(cfg, weights) as detector:
        net = detector.network
        net.export_onnx(out, batch=2, decode=True)
        x = letterboxed(images, net.width, net.height)
        outputs = net.forward(x)
        (rows,) = session(out).run(None, {"input": x})
        n_boxes = sum(l.n_anchors * l.output_shape[0] * l.output_shape[1] for l in net.yolo_layers)
        assert rows.shape == (2, n_boxes, 4 + 1 + 80)
        for i, path in enumerate(images):
            boxes, objectness, scores = engine_decoded(net, outputs, i, thresh)
            got_boxes, got_objectness, got_scores = onnx_decoded(rows[i], thresh)
            assert len(boxes) > 10 and got_boxes.shape == boxes.shape
            print(f"{path.name}: {len(boxes)} boxes; max |box diff| {np.abs(got_boxes - boxes).max():.3g} px, "
                  f"|score diff| {np.abs(got_scores - scores).max():.3g}")
            np.testing.assert_allclose(got_boxes, boxes, rtol=0, atol=1e-3)   # pixels of a 416 input
            np.testing.assert_allclose(got_objectness, objectness, rtol=0, atol=TOL)
            np.testing.assert_allclose(got_scores, scores, rtol=0, atol=TOL)
            # Ready for an NMS: Darknet's NMS on the exported rows gives Detector's detections.
            image = read_image(path)
            height, width = image.shape[:2]
            mapped = correct_boxes(got_boxes / np.array([net.width, net.height] * 2, np.float32), width, height,
                                   net.width, net.height)
            final = nms_per_class(mapped, got_objectness, got_scores, 0.45)
            det, cls = np.nonzero(final > 0.25)
            ours = sorted((int(c), round(float(final[d, c]), 3)) for d, c in zip(det, cls))
            theirs = sorted((d.class_id, round(d.prob, 3)) for d in detector.detect(image, thresh=0.25))
            assert ours == theirs and theirs


def test_yolov3_random_weights_batch_4(tmp_path):
    out = tmp_path / "yolov3.onnx"
    with Network(ROOT / "cfg" / "yolov3.cfg") as net:
        net.resize(160, 160)
        randomize(net, seed=3)
        net.export_onnx(out, batch=4)
        x = np.random.default_rng(0).random((4, 3, 160, 160), dtype=np.float32)
        expected = raw_yolo_inputs(net, x)
    sess = session(out)
    assert [tuple(i.shape) for i in sess.get_inputs()] == [(4, 3, 160, 160)]
    got = sess.run(None, {"input": x})
    diff = max_difference(expected, got)
    scale = max(float(np.abs(e).max()) for e in expected)
    print(f"yolov3 random weights 160x160 batch 4: max |onnx - engine| = {diff:.3g} (outputs up to {scale:.3g})")
    assert scale > 1    # the comparison is not between near-zero tensors
    assert diff <= TOL


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_every_layer_option(options_cfg, tmp_path, opset):
    out = tmp_path / "options.onnx"
    with Network(options_cfg) as net:
        types = [layer.type for layer in net.layers]
        assert types.count("max") == 3 and types.count("yolo") == 3
        randomize(net, seed=opset)
        net.export_onnx(out, opset=opset, batch=3)
        x = np.random.default_rng(opset).random((3, 3, 32, 32), dtype=np.float32)
        expected = raw_yolo_inputs(net, x)
    assert onnx.load(str(out)).opset_import[0].version == opset
    got = session(out).run(None, {"input": x})
    padded_only = expected[2] == np.finfo(np.float32).min    # the windows of the padding=4 maxpool
    assert padded_only.any() and np.array_equal(got[2] == np.finfo(np.float32).min, padded_only)
    finite = [e[e > -1e30] for e in expected], [g[g > -1e30] for g in got]
    diff = max_difference(*finite)
    print(f"options cfg, opset {opset}: max |onnx - engine| = {diff:.3g}")
    assert diff <= TOL


def test_every_layer_option_decoded(options_cfg, tmp_path):
    out = tmp_path / "options-decoded.onnx"
    thresh = 0.0
    with Network(options_cfg) as net:
        randomize(net, seed=7)
        net.export_onnx(out, decode=True)
        x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
        outputs = net.forward(x)
        boxes, objectness, scores = engine_decoded(net, outputs, 0, thresh)
    (rows,) = session(out).run(None, {"input": x})
    got_boxes, got_objectness, got_scores = onnx_decoded(rows[0], thresh)
    assert got_boxes.shape == boxes.shape and len(boxes) > 100
    np.testing.assert_allclose(got_boxes, boxes, rtol=1e-5, atol=TOL)
    np.testing.assert_allclose(got_objectness, objectness, rtol=0, atol=TOL)
    np.testing.assert_allclose(got_scores, scores, rtol=0, atol=TOL)


def test_dynamic_batch(tiny_cfg, tmp_path):
    out = tmp_path / "dynamic.onnx"
    with Network(tiny_cfg, batch=4) as net:
        randomize(net, seed=5)
        net.export_onnx(out, dynamic_batch=True, decode=True)
        sess = session(out)
        assert sess.get_inputs()[0].shape[0] == "batch"
        for n in (1, 4):
            x = np.random.default_rng(n).random((n, 3, 64, 64), dtype=np.float32)
            outputs = net.forward(x)
            (rows,) = sess.run(None, {"input": x})
            assert rows.shape[0] == n
            for i in range(n):
                expected = engine_decoded(net, outputs, i, 0.0)
                for e, g in zip(expected, onnx_decoded(rows[i], 0.0)):
                    np.testing.assert_allclose(g, e, rtol=1e-5, atol=TOL)


def test_cli_export(tiny_cfg, tmp_path):
    weights = tmp_path / "tiny.weights"
    with Network(tiny_cfg) as net:
        randomize(net, seed=11)
        net.save(weights)
        x = np.random.default_rng(2).random((2, 3, 64, 64), dtype=np.float32)
        expected = raw_yolo_inputs(net, x)
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(main, ["export", str(tiny_cfg), str(weights), str(out), "--batch", "2",
                                       "--opset", "12"])
    assert result.exit_code == 0, result.output
    assert onnx.load(str(out)).opset_import[0].version == 12
    assert max_difference(expected, session(out).run(None, {"input": x})) <= TOL

    both = CliRunner().invoke(main, ["export", str(tiny_cfg), str(weights), str(tmp_path / "x.onnx"), "--batch", "2",
                                     "--dynamic-batch"])
    assert both.exit_code != 0 and "exclude each other" in both.output
    old = CliRunner().invoke(main, ["export", str(tiny_cfg), str(weights), str(tmp_path / "x.onnx"), "--opset", "9"])
    assert old.exit_code == 1 and "Error: opset 9 is too old" in old.output
    assert not (tmp_path / "x.onnx").exists()


class _WithLayers:
    """A Network seen through a different layer table (for layer kinds the engine itself cannot build)."""

    def __init__(self, net: Network, layers):
        self._net, self.layers = net, layers

    def __getattr__(self, name):
        return getattr(self._net, name)


def test_a_layer_kind_the_exporter_does_not_know_is_an_error_naming_it(tiny_cfg, tmp_path):
    out = tmp_path / "unknown.onnx"
    with Network(tiny_cfg) as net:
        layers = net.layers
        layers[3] = dataclasses.replace(layers[3], type="reorg")
        with pytest.raises(ExportError, match=r"layer 3 \[reorg\] cannot be exported"):
            export_onnx(_WithLayers(net, layers), out)
        layers = net.layers
        layers[0] = dataclasses.replace(layers[0], activation="selu")
        with pytest.raises(ExportError, match=r"layer 0 \[convolutional\]: activation 'selu'"):
            export_onnx(_WithLayers(net, layers), out)
    assert not out.exists()


def test_decode_of_heads_with_different_classes_is_an_error_naming_the_layer(tiny_cfg, tmp_path):
    # The second head predicts 3 classes: its filters grow to 3*(5+3) = 24.
    text = tiny_cfg.read_text()
    head = text.rindex("filters=21")
    text = text[:head] + "filters=24" + text[head + len("filters=21"):]
    tail = text.rindex("classes=2")
    cfg = tmp_path / "mixed.cfg"
    cfg.write_text(text[:tail] + "classes=3" + text[tail + len("classes=2"):])
    out = tmp_path / "mixed.onnx"
    with Network(cfg) as net:
        with pytest.raises(ExportError, match=r"layer 14 \[yolo\] has classes=3 but layer 8 \[yolo\] has 2"):
            net.export_onnx(out, decode=True)
        assert not out.exists()
        net.export_onnx(out)    # the raw outputs are fine
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["yolo_8", "yolo_14"]


def test_bad_arguments(tiny_cfg, tmp_path, monkeypatch):
    out = tmp_path / "bad.onnx"
    with Network(tiny_cfg) as net:
        with pytest.raises(ExportError, match="opset 10 is too old"):
            net.export_onnx(out, opset=10)
        with pytest.raises(ExportError, match="newer than the installed onnx package knows"):
            net.export_onnx(out, opset=onnx.defs.onnx_opset_version() + 1)
        with pytest.raises(ExportError, match="batch must be at least 1"):
            net.export_onnx(out, batch=0)
        monkeypatch.setitem(sys.modules, "onnx", None)
        with pytest.raises(ImportError, match=r"pydarknet\[onnx\]"):
            net.export_onnx(out)
    assert not out.exists()
