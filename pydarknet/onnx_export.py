"""ONNX export of a ``Network``: ``export_onnx(network, "model.onnx")`` or ``python -m pydarknet export``.

The graph reproduces this engine's inference arithmetic layer by layer:

- ``[convolutional]``: one ``Conv`` whose weights and bias have batch norm folded in with Darknet's formula,
  ``scale * (x - mean) / (sqrt(var) + 1e-6) + bias`` (not ``sqrt(var + eps)``), then the activation;
- ``[maxpool]``: ``MaxPool`` with the window starting at ``-padding/2`` and as much right/bottom padding as
  Darknet's output size ``(in + padding - size)/stride + 1`` needs (padded cells never win, as Darknet's
  -inf); when ONNX's "pad smaller than the kernel" rule does not hold, an explicit ``Pad`` with -FLT_MAX;
- ``[route]``: ``Concat`` on channels (``Identity`` for one source); ``[shortcut]``: ``Add`` + activation;
- ``[upsample]``: ``Resize`` nearest with floor indices (the integer stride), times ``scale`` when not 1;
- ``[yolo]``: nothing by default: the graph's outputs are the raw inputs of the ``[yolo]`` layers
  (``yolo_<layer index>``, shape (N, anchors*(5+classes), H, W)). With ``decode=True`` the single output
  ``detections`` holds every prediction as (N, boxes, 4 + 1 + classes): centre x, centre y, width, height in
  network-input pixels, objectness, and class scores ``objectness * sigmoid(class)`` (Detector's decode
  before its threshold and NMS), boxes ordered by [yolo] layer, anchor, row, column.

The model's metadata (``metadata_props``) records the input size and, per [yolo] layer, its anchors, so the
raw outputs can be decoded elsewhere. The ``onnx`` package is needed (``pip install 'pydarknet[onnx]'``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ExportError

__all__ = ["export_onnx", "build_onnx_model", "DEFAULT_OPSET", "MIN_OPSET", "INPUT_NAME", "DECODED_NAME"]

DEFAULT_OPSET = 13
MIN_OPSET = 11          # Resize with nearest_mode, Pad and Slice with their parameters as inputs
INPUT_NAME = "input"
DECODED_NAME = "detections"
BN_EPS = np.float32(1e-6)   # Darknet's: scale * (x - mean) / (sqrt(var) + 1e-6) + bias
FLT_LOWEST = float(np.finfo(np.float32).min)   # Darknet's maxpool starts every window from -FLT_MAX


def _import_onnx():
    try:
        import onnx  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("ONNX export needs the onnx package: pip install 'pydarknet[onnx]'") from exc
    return onnx


def _describe(layer) -> str:
    names = {"conv": "convolutional", "max": "maxpool"}
    return f"layer {layer.index} [{names.get(layer.type, layer.type)}]"


class _Graph:
    """The nodes and initializers of the graph being built, with unique tensor names."""

    def __init__(self, onnx, opset: int):
        self.onnx = onnx
        self.helper = onnx.helper
        self.opset = opset
        self.nodes = []
        self.initializers = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value, dtype=np.float32) -> str:
        name = self._name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, hint: str, values) -> str:
        return self.const(hint, values, np.int64)

    def op(self, op_type: str, inputs: list[str], hint: str, output: str | None = None, **attrs) -> str:
        out = output or self._name(hint)
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def slice(self, x: str, axis: int, start: int, end: int, hint: str) -> str:
        return self.op("Slice", [x, self.ints("starts", [start]), self.ints("ends", [end]), self.ints("axes", [axis])],
                       hint)

    def reshape(self, x: str, shape, hint: str) -> str:
        """Reshape with 0 meaning "keep this dimension" (the batch, fixed or not)."""
        return self.op("Reshape", [x, self.ints("shape", shape)], hint)


def _activation(g: _Graph, x: str, activation: str, layer) -> str:
    hint = f"l{layer.index}_{activation}"
    if activation == "linear":
        return x
    if activation == "leaky":
        return g.op("LeakyRelu", [x], hint, alpha=0.1)
    simple = {"relu": "Relu", "logistic": "Sigmoid", "tanh": "Tanh"}
    if activation in simple:
        return g.op(simple[activation], [x], hint)
    if activation == "swish":   # no Swish operator in the opsets this writes
        return g.op("Mul", [x, g.op("Sigmoid", [x], hint)], hint)
    if activation == "mish":
        if g.opset >= 18:
            return g.op("Mish", [x], hint)
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x], hint)], hint)], hint)
    raise ExportError(f"{_describe(layer)}: activation '{activation}' cannot be exported to ONNX")


# ---- one builder per layer kind: (graph, layer, its input tensor, every earlier output, parameters) -> output

def _conv(g: _Graph, layer, x: str, outputs: list, params: np.ndarray) -> str:
    f, k = layer.filters, layer.size
    in_c = layer.input_shape[2]
    biases = params[:f]
    if layer.batch_normalize:
        scales, mean, var = params[f:2 * f], params[2 * f:3 * f], params[3 * f:4 * f]
        mul = scales / (np.sqrt(var) + BN_EPS)
        weights = params[4 * f:].reshape(f, in_c // layer.groups, k, k) * mul[:, None, None, None]
        add = biases - mean * mul
    else:
        weights, add = params[f:].reshape(f, in_c // layer.groups, k, k), biases
    p = layer.padding
    y = g.op("Conv", [x, g.const(f"l{layer.index}_weights", weights), g.const(f"l{layer.index}_bias", add)],
             f"l{layer.index}_conv", kernel_shape=[k, k], strides=[layer.stride, layer.stride], pads=[p, p, p, p],
             group=layer.groups)
    return _activation(g, y, layer.activation, layer)


def maxpool_padding(layer) -> tuple[int, int, int]:
    """A [maxpool] layer's padding as (top and left, bottom, right): windows start at -padding/2, and the
    bottom/right padding is the least that gives Darknet's output size (the last window must fit). The bench's
    PyTorch peer pads the same way."""
    k, s = layer.size, layer.stride
    begin = layer.padding // 2
    in_w, in_h, _ = layer.input_shape
    out_w, out_h, _ = layer.output_shape
    return begin, max(0, (out_h - 1) * s + k - in_h - begin), max(0, (out_w - 1) * s + k - in_w - begin)


def _maxpool(g: _Graph, layer, x: str, outputs: list, params) -> str:
    k, s = layer.size, layer.stride
    begin, end_h, end_w = maxpool_padding(layer)
    hint = f"l{layer.index}_maxpool"
    if begin < k and end_h < k and end_w < k:
        return g.op("MaxPool", [x], hint, kernel_shape=[k, k], strides=[s, s], pads=[begin, begin, end_h, end_w])
    # ONNX wants pads smaller than the kernel; a window wholly in the padding gives -FLT_MAX, as in Darknet.
    padded = g.op("Pad", [x, g.ints("pads", [0, 0, begin, begin, 0, 0, end_h, end_w]),
                          g.const("lowest", FLT_LOWEST)], hint, mode="constant")
    return g.op("MaxPool", [padded], hint, kernel_shape=[k, k], strides=[s, s])


def _route(g: _Graph, layer, x: str, outputs: list, params) -> str:
    sources = [outputs[i] for i in layer.sources]
    if len(sources) == 1:
        return g.op("Identity", sources, f"l{layer.index}_route")
    return g.op("Concat", sources, f"l{layer.index}_route", axis=1)


def _shortcut(g: _Graph, layer, x: str, outputs: list, params) -> str:
    y = g.op("Add", [x, outputs[layer.sources[0]]], f"l{layer.index}_shortcut")
    return _activation(g, y, layer.activation, layer)


def _upsample(g: _Graph, layer, x: str, outputs: list, params) -> str:
    s = float(layer.stride)
    # asymmetric + floor: output pixel (y, x) copies input (y // stride, x // stride), as Darknet's loop.
    y = g.op("Resize", [x, g.const("roi", np.zeros(0, np.float32)), g.const("scales", [1, 1, s, s])],
             f"l{layer.index}_upsample", mode="nearest", coordinate_transformation_mode="asymmetric",
             nearest_mode="floor")
    if layer.scale != 1:
        y = g.op("Mul", [y, g.const("scale", layer.scale)], f"l{layer.index}_scale")
    return y


class _Yolo:
    """A [yolo] layer: its raw input, and its activations built only when something needs them."""

    def __init__(self, g: _Graph, layer, raw: str, anchors: np.ndarray, mask: list[int]):
        self.g, self.layer, self.raw = g, layer, raw
        self.anchors = np.asarray(anchors, np.float32)[np.asarray(mask, int)]   # (A, 2) in network pixels
        self._grouped = None

    @property
    def grid(self) -> tuple[int, int]:
        w, h, _ = self.layer.input_shape
        return w, h

    def grouped(self) -> str:
        """Activated values as (N, A, 5+classes, H, W): logistic on x, y, objectness and classes; w and h raw
        (``representation=lin``: values <= 0 become e^value, the engine's rule)."""
        if self._grouped is None:
            g, layer = self.g, self.layer
            w, h = self.grid
            hint = f"l{layer.index}_yolo"
            entries = 5 + layer.classes
            x = g.reshape(self.raw, [0, layer.n_anchors, entries, h, w], hint)
            xy = g.op("Sigmoid", [g.slice(x, 2, 0, 2, hint)], hint)
            wh = g.slice(x, 2, 2, 4, hint)
            if layer.representation == "lin":
                positive = g.op("Greater", [wh, g.const("zero", 0.0)], hint)
                wh = g.op("Where", [positive, wh, g.op("Exp", [wh], hint)], hint)
            scores = g.op("Sigmoid", [g.slice(x, 2, 4, entries, hint)], hint)
            self._grouped = g.op("Concat", [xy, wh, scores], hint, axis=2)
        return self._grouped

    def activated(self) -> str:
        """The [yolo] layer's own output (N, A*(5+classes), H, W), for a later layer that reads it."""
        w, h = self.grid
        return self.g.reshape(self.grouped(), [0, self.layer.n_anchors * (5 + self.layer.classes), h, w],
                              f"l{self.layer.index}_yolo_out")

    def decoded(self, net_w: int, net_h: int) -> str:
        """(N, A*H*W, 4+1+classes): box centre and size in network pixels, objectness, objectness * class."""
        g, layer = self.g, self.layer
        w, h = self.grid
        hint = f"l{layer.index}_decode"
        entries = 5 + layer.classes
        cells = g.op("Transpose", [self.grouped()], hint, perm=[0, 1, 3, 4, 2])   # (N, A, H, W, entries)
        rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
        offsets = np.stack([cols, rows], axis=-1)[None, None]                     # (1, 1, H, W, 2)
        cell_size = np.array([net_w / w, net_h / h], np.float32)
        xy = g.op("Mul", [g.op("Add", [g.slice(cells, 4, 0, 2, hint), g.const("offsets", offsets)], hint),
                          g.const("cell_size", cell_size)], hint)
        wh = g.slice(cells, 4, 2, 4, hint)
        if layer.representation == "exp":
            wh = g.op("Exp", [wh], hint)
        wh = g.op("Mul", [wh, g.const("anchors", self.anchors.reshape(1, -1, 1, 1, 2))], hint)
        objectness = g.slice(cells, 4, 4, 5, hint)
        classes = g.op("Mul", [objectness, g.slice(cells, 4, 5, entries, hint)], hint)
        boxes = g.op("Concat", [xy, wh, objectness, classes], hint, axis=4)
        return g.reshape(boxes, [0, -1, entries], hint)


_BUILDERS: dict[str, Callable] = {"conv": _conv, "max": _maxpool, "route": _route, "shortcut": _shortcut,
                                  "upsample": _upsample}


def _consumed(layers) -> set[int]:
    """Indices of layers whose output a later layer reads (a [route] ignores the layer before it)."""
    used = set()
    for layer in layers[1:]:
        if layer.type != "route":
            used.add(layer.index - 1)
        used.update(layer.sources)
    return used


def build_onnx_model(network, *, batch: int = 1, dynamic_batch: bool = False, opset: int = DEFAULT_OPSET,
                     decode: bool = False):
    """The ``onnx.ModelProto`` of ``network`` at its current input size (see the module's docstring)."""
    onnx = _import_onnx()
    opset = int(opset)
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the exporter writes opset {MIN_OPSET} or newer")
    if opset > onnx.defs.onnx_opset_version():
        raise ExportError(f"opset {opset} is newer than the installed onnx package knows "
                          f"({onnx.defs.onnx_opset_version()})")
    if not dynamic_batch and int(batch) < 1:
        raise ExportError(f"batch must be at least 1, got {batch}")
    layers = network.layers
    if not layers:
        raise ExportError(f"{network.cfg_path}: the network has no layers")
    for layer in layers:
        if layer.type not in _BUILDERS and layer.type != "yolo":
            raise ExportError(f"{network.cfg_path}: {_describe(layer)} cannot be exported to ONNX: the exporter "
                              f"knows {', '.join(sorted([*_BUILDERS, 'yolo']))}")
    net_w, net_h, channels = network.width, network.height, network.channels
    batch_dim = "batch" if dynamic_batch else int(batch)
    g = _Graph(onnx, opset)

    params = network.params()
    offsets = np.concatenate([[0], np.cumsum([layer.n_params for layer in layers])])
    if offsets[-1] != params.size:
        raise ExportError(f"{network.cfg_path}: the layers hold {offsets[-1]} parameters but the network {params.size}")

    consumed = _consumed(layers)
    outputs: list[str] = []
    heads: list[_Yolo] = []
    x = INPUT_NAME
    for layer in layers:
        if layer.type == "yolo":
            anchors, mask = network.yolo_anchors(layer.index)
            head = _Yolo(g, layer, x, anchors, mask)
            heads.append(head)
            y = head.activated() if layer.index in consumed else x
        else:
            y = _BUILDERS[layer.type](g, layer, x, outputs, params[offsets[layer.index]:offsets[layer.index + 1]])
        outputs.append(y)
        x = y

    helper = onnx.helper
    float_type = onnx.TensorProto.FLOAT
    graph_outputs = []
    if decode:
        if not heads:
            raise ExportError(f"{network.cfg_path}: decode needs a [yolo] layer and the network has none")
        classes = heads[0].layer.classes
        for head in heads[1:]:
            if head.layer.classes != classes:
                raise ExportError(f"{network.cfg_path}: {_describe(head.layer)} has classes={head.layer.classes} but "
                                  f"{_describe(heads[0].layer)} has {classes}: decoded boxes of both cannot share "
                                  f"one tensor (export without decode)")
        parts = [head.decoded(net_w, net_h) for head in heads]
        n_boxes = sum(head.layer.n_anchors * head.grid[0] * head.grid[1] for head in heads)
        g.op("Concat" if len(parts) > 1 else "Identity", parts, "decoded", output=DECODED_NAME,
             **({"axis": 1} if len(parts) > 1 else {}))
        graph_outputs.append(helper.make_tensor_value_info(DECODED_NAME, float_type, [batch_dim, n_boxes, 5 + classes]))
    else:
        # Raw [yolo] inputs (or the last layer's output for a network without [yolo]), each under its own name.
        finals = [(h.raw, h.layer.index, h.layer.input_shape) for h in heads] or \
                 [(outputs[-1], layers[-1].index, layers[-1].output_shape)]
        for tensor, index, (w, h, c) in finals:
            name = f"yolo_{index}" if heads else f"layer_{index}"
            g.op("Identity", [tensor], name, output=name)
            graph_outputs.append(helper.make_tensor_value_info(name, float_type, [batch_dim, c, h, w]))

    graph = helper.make_graph(
        g.nodes, Path(str(network.cfg_path)).stem or "darknet",
        [helper.make_tensor_value_info(INPUT_NAME, float_type, [batch_dim, channels, net_h, net_w])],
        graph_outputs, initializer=g.initializers)
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(graph, opset_imports=[opset_id], producer_name="pydarknet",
                              ir_version=helper.find_min_ir_version_for([opset_id]))
    model.doc_string = ("Darknet network exported by pydarknet. Input: RGB float 0..1, NCHW, letterboxed. " +
                        ("Output 'detections': (N, boxes, x, y, w, h in input pixels, objectness, "
                         "objectness*class scores)." if decode else
                         "Outputs: the raw input of each [yolo] layer (anchors in metadata 'yolo')."))
    yolo_meta = [{"output": f"yolo_{h.layer.index}", "layer": h.layer.index, "classes": h.layer.classes,
                  "anchors": h.anchors.tolist(), "representation": h.layer.representation} for h in heads]
    helper.set_model_props(model, {"net_width": str(net_w), "net_height": str(net_h),
                                   "decoded": str(bool(decode)).lower(), "yolo": json.dumps(yolo_meta)})
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(network, path: str | os.PathLike, *, batch: int = 1, dynamic_batch: bool = False,
                opset: int = DEFAULT_OPSET, decode: bool = False) -> Path:
    """Write ``network`` as an ONNX model at ``path`` (atomically: a temporary file renamed into place)."""
    onnx = _import_onnx()
    model = build_onnx_model(network, batch=batch, dynamic_batch=dynamic_batch, opset=opset, decode=decode)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
