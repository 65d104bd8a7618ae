"""Raw [yolo] outputs against OpenCV's DNN module (an independent Darknet reader), fed the same input tensor.

OpenCV post-processes its [yolo] layers, so the comparison is on the input of each [yolo] layer: OpenCV's
`conv_<i>` output, with the logistic applied here in numpy to x, y, objectness and the class scores exactly as
Darknet's [yolo] forward does (tw, th stay raw), against `Network.forward`.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):  # pragma: no cover
    pytest.skip("this OpenCV has no DNN module with the Darknet reader", allow_module_level=True)

from conftest import require_reference
from pydarknet import Network
from pydarknet.image import letterbox, read_image

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4


def yolo_activation(raw: np.ndarray, n_anchors: int, classes: int) -> np.ndarray:
    """Darknet's [yolo] forward on a raw (N, n*(5+classes), H, W) tensor: logistic on entries 0, 1, 4, 5.."""
    x = raw.astype(np.float64).reshape(raw.shape[0], n_anchors, 5 + classes, *raw.shape[2:]).copy()
    entries = [0, 1] + list(range(4, 5 + classes))
    x[:, :, entries] = 1.0 / (1.0 + np.exp(-x[:, :, entries]))
    return x.reshape(raw.shape)


def opencv_heads(cfg: Path, weights: Path, net: Network, x: np.ndarray) -> list[np.ndarray]:
    cv2.setNumThreads(2)
    ocv = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    ocv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    ocv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = list(ocv.getLayerNames())
    # In OpenCV's importer layer i of the cfg is named <type>_<i>; each [yolo] follows its conv.
    wanted = [f"conv_{layer.index - 1}" for layer in net.yolo_layers]
    missing = [w for w in wanted if w not in names]
    assert not missing, f"OpenCV has no layers {missing}; it names them {names[:5]}..."
    ocv.setInput(np.ascontiguousarray(x, np.float32))
    raws = ocv.forward(wanted)
    return [yolo_activation(r, l.n_anchors, l.classes) for r, l in zip(raws, net.yolo_layers)]


def compare(ours: list[np.ndarray], theirs: list[np.ndarray]) -> list[float]:
    assert len(ours) == len(theirs)
    diffs = []
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert np.isfinite(a).all()
        diffs.append(float(np.abs(a.astype(np.float64) - b).max()))
    return diffs


@pytest.fixture(scope="module")
def tiny(reference_dir):
    require_reference(reference_dir, "yolov3-tiny.weights", "images")
    weights = reference_dir / "yolov3-tiny.weights"
    return reference_dir / "yolov3-tiny.cfg", weights


@pytest.mark.parametrize("image", ["dog.jpg", "horses.jpg"])
def test_yolov3_tiny_real_weights_match_opencv(tiny, reference_dir, image):
    cfg, weights = tiny
    with Network(cfg, weights) as net:
        x = letterbox(read_image(reference_dir / "images" / image), net.width, net.height)[None]
        ours = net.forward(x)
        theirs = opencv_heads(cfg, weights, net, x)
    diffs = compare(ours, theirs)
    assert max(diffs) <= TOL, diffs
    # The comparison is not vacuous: the heads hold confident objects, and the outputs vary.
    assert max(float(o[:, 4::85].max()) for o in ours) > 0.5
    assert min(float(o.std()) for o in ours) > 0.01


def test_yolov3_tiny_batch_of_two_matches_opencv(tiny, reference_dir):
    cfg, weights = tiny
    with Network(cfg, weights, batch=2) as net:
        x = np.stack([letterbox(read_image(reference_dir / "images" / name), net.width, net.height)
                      for name in ("eagle.jpg", "person.jpg")])
        ours = net.forward(x)
        theirs = opencv_heads(cfg, weights, net, x)
    assert max(compare(ours, theirs)) <= TOL


# ---- full yolov3 with random weights written here -------------------------------------------------------

def conv_layers_of(cfg_text: str, channels: int) -> list[dict]:
    """The [convolutional] layers of a YOLOv3-style cfg with their input channels, by reading the cfg here
    (route/shortcut/upsample/maxpool/yolo are followed for the channel count)."""
    sections = []
    for raw in cfg_text.splitlines():
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            sections.append({"type": line[1:-1]})
        else:
            key, value = line.split("=", 1)
            sections[-1].setdefault(key, value)
    layers = sections[1:]
    out_c: list[int] = []
    convs = []
    c = channels
    for i, s in enumerate(layers):
        kind = s["type"]
        if kind in ("convolutional", "conv"):
            convs.append({"index": i, "filters": int(s["filters"]), "size": int(s["size"]), "c": c,
                          "bn": int(s.get("batch_normalize", 0)),
                          "before_shortcut": i + 1 < len(layers) and layers[i + 1]["type"] == "shortcut"})
            c = int(s["filters"])
        elif kind == "route":
            refs = [int(v) for v in s["layers"].split(",")]
            c = sum(out_c[r if r >= 0 else i + r] for r in refs)
        out_c.append(c)
    return convs


def write_random_weights(path: Path, convs: list[dict], seed: int) -> None:
    """A valid .weights file (header 0.2.0, 64-bit seen) with realistic random parameters.

    Conv weights ~ N(0, 1/fan_in); the conv that ends a residual branch gets half that standard deviation, so
    the 23 residual additions of darknet53 keep the activations bounded (largest raw head value ~3, largest
    activation inside ~20). BN: scales ~U(.5, 1.5), rolling mean ~N(0, .1), rolling variance ~U(.5, 1.5);
    biases ~N(0, .1)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<iiiQ", 0, 2, 0, 0))
        for conv in convs:
            n = conv["filters"]
            fan_in = conv["c"] * conv["size"] * conv["size"]
            std = np.sqrt(1.0 / fan_in) * (0.5 if conv["before_shortcut"] else 1.0)
            f.write(rng.normal(0, 0.1, n).astype("<f4").tobytes())
            if conv["bn"]:
                f.write(rng.uniform(0.5, 1.5, n).astype("<f4").tobytes())
                f.write(rng.normal(0, 0.1, n).astype("<f4").tobytes())
                f.write(rng.uniform(0.5, 1.5, n).astype("<f4").tobytes())
            weights = rng.standard_normal(n * fan_in, dtype=np.float32) * np.float32(std)
            f.write(weights.astype("<f4").tobytes())


@pytest.mark.slow
def test_yolov3_416_random_weights_match_opencv(tmp_path):
    text = (ROOT / "cfg" / "yolov3.cfg").read_text()
    text = text.replace("width=608", "width=416").replace("height=608", "height=416")
    assert "width=416" in text and "height=416" in text
    cfg = tmp_path / "yolov3-416.cfg"
    cfg.write_text(text)
    convs = conv_layers_of(text, channels=3)
    assert len(convs) == 75
    weights = tmp_path / "random.weights"
    write_random_weights(weights, convs, seed=2024)
    expected_floats = sum(c["filters"] * (4 if c["bn"] else 1) + c["filters"] * c["c"] * c["size"] ** 2
                          for c in convs)
    assert weights.stat().st_size == 20 + 4 * expected_floats

    x = np.random.default_rng(7).uniform(0, 1, (1, 3, 416, 416)).astype(np.float32)
    with Network(cfg, weights) as net:
        assert net.n_params == expected_floats
        assert [l.output_shape[:2] for l in net.yolo_layers] == [(13, 13), (26, 26), (52, 52)]
        ours = net.forward(x)
        theirs = opencv_heads(cfg, weights, net, x)
    diffs = compare(ours, theirs)
    assert max(diffs) <= TOL, diffs
    # Bounded but not degenerate: the raw heads spread over a few units, not collapsed to the biases.
    spread = [float(np.std(t)) for t in theirs]
    assert all(s > 0.05 for s in spread), spread
