"""PyTorch as the training peer of ``python -m pydarknet bench --train``.

The same network as a Darknet cfg, built as a ``torch.nn.Module`` from the layer table (the ONNX exporter's
walk, in PyTorch modules): ``[convolutional]`` as ``Conv2d`` (+ ``BatchNorm2d``) + activation, ``[maxpool]`` with
Darknet's padding (windows start at ``-padding/2`` over ``-FLT_MAX``), ``[route]``, ``[shortcut]``,
``[upsample]`` (nearest); a ``[yolo]`` layer returns its raw input. Darknet's weights load into it, so its
inference forward gives pydarknet's raw heads (tests/test_bench.py).

Timed as PyTorch users train on a CPU: eager mode, SGD with momentum, ``torch.set_num_threads(threads)``;
inference under ``torch.inference_mode()`` in ``eval()`` mode (batch norm from the running statistics, not
folded into the convolutions). The loss is half the sum of squares of the raw heads: the YOLO loss itself is
under 1% of a pydarknet training iteration (perf), and this keeps the peer to PyTorch's own operators.

PyTorch is optional (``pip install torch``, the CPU build): without it the bench says so and goes on.
"""
from __future__ import annotations

import time

import numpy as np

from .onnx_export import BN_EPS, FLT_LOWEST, maxpool_padding


def import_torch():
    """torch, or None when it is not installed."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    return torch


def _require_torch():
    torch = import_torch()
    if torch is None:
        raise ImportError("PyTorch is not installed (pip install torch, its CPU build)")
    return torch


class UnsupportedLayer(ValueError):
    """A layer the PyTorch peer does not build."""


def _activation(torch, name: str, layer):
    nn = torch.nn
    table = {"linear": nn.Identity, "leaky": lambda: nn.LeakyReLU(0.1), "relu": nn.ReLU, "logistic": nn.Sigmoid,
             "tanh": nn.Tanh, "swish": nn.SiLU, "mish": nn.Mish}
    if name not in table:
        raise UnsupportedLayer(f"layer {layer.index}: activation '{name}' has no PyTorch peer here")
    return table[name]()


def build_module(network, bn_eps: float = float(BN_EPS)):
    """A ``torch.nn.Module`` computing ``network`` (a pydarknet.Network) with its current parameters. Its
    forward takes NCHW float32 and returns the raw input of every [yolo] layer. Darknet normalises by
    sqrt(var) + eps, PyTorch by sqrt(var + eps): with eps 1e-6 the two differ by under 1e-6 relative where the
    variance exceeds 1e-6."""
    torch = _require_torch()
    nn = torch.nn
    layers = network.layers
    params = network.params()
    offsets = np.concatenate([[0], np.cumsum([layer.n_params for layer in layers])])

    class Maxpool(nn.Module):
        def __init__(self, layer):
            super().__init__()
            begin, end_h, end_w = maxpool_padding(layer)
            self.pads = (begin, end_w, begin, end_h)  # F.pad's order: left, right, top, bottom
            self.k, self.s = layer.size, layer.stride

        def forward(self, x):
            if any(self.pads):
                x = nn.functional.pad(x, self.pads, value=FLT_LOWEST)
            return nn.functional.max_pool2d(x, self.k, self.s)

    class Upsample(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.stride, self.scale = layer.stride, layer.scale

        def forward(self, x):
            y = nn.functional.interpolate(x, scale_factor=self.stride, mode="nearest")
            return y * self.scale if self.scale != 1 else y

    class DarknetModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList()
            self.kinds: list[str] = []
            self.sources: list[tuple[int, ...]] = []
            self.acts = nn.ModuleList()
            for layer in layers:
                p = params[offsets[layer.index]:offsets[layer.index + 1]]
                self.kinds.append(layer.type)
                self.sources.append(tuple(layer.sources))
                act = nn.Identity()
                if layer.type == "conv":
                    block = self._conv(layer, p)
                    act = _activation(torch, layer.activation, layer)
                elif layer.type == "max":
                    block = Maxpool(layer)
                elif layer.type == "upsample":
                    block = Upsample(layer)
                elif layer.type == "shortcut":
                    block = nn.Identity()
                    act = _activation(torch, layer.activation, layer)
                elif layer.type in ("route", "yolo"):
                    block = nn.Identity()
                else:
                    raise UnsupportedLayer(f"layer {layer.index} ({layer.type}) has no PyTorch peer here")
                self.blocks.append(block)
                self.acts.append(act)

        @staticmethod
        def _conv(layer, p):
            f, k, groups = layer.filters, layer.size, layer.groups
            in_c = layer.input_shape[2]
            conv = nn.Conv2d(in_c, f, k, layer.stride, layer.padding, groups=groups, bias=not layer.batch_normalize)
            tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
            with torch.no_grad():
                if layer.batch_normalize:
                    bn = nn.BatchNorm2d(f, eps=bn_eps, momentum=0.01)
                    bn.bias.copy_(tensor(p[:f]))
                    bn.weight.copy_(tensor(p[f:2 * f]))
                    bn.running_mean.copy_(tensor(p[2 * f:3 * f]))
                    bn.running_var.copy_(tensor(p[3 * f:4 * f]))
                    conv.weight.copy_(tensor(p[4 * f:].reshape(conv.weight.shape)))
                    return nn.Sequential(conv, bn)
                conv.bias.copy_(tensor(p[:f]))
                conv.weight.copy_(tensor(p[f:].reshape(conv.weight.shape)))
            return conv

        def forward(self, x):
            outputs, heads = [], []
            for kind, sources, block, act in zip(self.kinds, self.sources, self.blocks, self.acts):
                if kind == "route":
                    x = torch.cat([outputs[i] for i in sources], 1) if len(sources) > 1 else outputs[sources[0]]
                elif kind == "shortcut":
                    x = act(x + outputs[sources[0]])
                elif kind == "yolo":
                    heads.append(x)
                else:
                    x = act(block(x))
                outputs.append(x)
            return heads

    return DarknetModule()


class TorchPeer:
    """The network in PyTorch, stepped by the caller so that its iterations interleave with pydarknet's: a
    training step (forward, loss, backward, SGD step with momentum and weight decay) and an inference forward.
    channels_last: the model and inputs in torch.channels_last (PyTorch's advice for convolutions on CPUs)."""

    def __init__(self, network, threads: int, channels_last: bool = False, learning_rate: float = 1e-4,
                 momentum: float = 0.9, decay: float = 5e-4):
        torch = _require_torch()
        torch.set_num_threads(threads)
        self.torch = torch
        self.version = torch.__version__
        self.channels_last = channels_last
        self.model = build_module(network)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=learning_rate, momentum=momentum,
                                         weight_decay=decay)

    def _tensor(self, x: np.ndarray):
        t = self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return t.contiguous(memory_format=self.torch.channels_last) if self.channels_last else t

    def train_step(self, x: np.ndarray) -> float:
        """Seconds of one training step on x (the conversion to a tensor not counted); returns them."""
        t = self._tensor(x)
        self.model.train()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = sum(0.5 * (head * head).sum() for head in self.model(t))
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start

    def inference(self, x: np.ndarray) -> float:
        """Seconds of one inference forward on x (eval mode, inference_mode)."""
        t = self._tensor(x)
        self.model.eval()
        start = time.perf_counter()
        with self.torch.inference_mode():
            self.model(t)
        return time.perf_counter() - start
