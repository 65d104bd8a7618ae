"""``Network``: a Darknet network built from a .cfg, optionally with .weights, over the C core."""
from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _ffi
from ._ffi import CONV_ENGINE_NAMES, IOU_LOSS_NAMES, REPRESENTATION_NAMES, build_info, cuda_device_count
from .errors import CudaError, DarknetValueError
from .runfiles import YOLO_STAT_FIELDS

__all__ = ["Network", "LayerInfo", "YoloStats", "set_threads", "get_threads"]


def set_threads(n: int) -> None:
    """Threads the C core uses (BLAS and element-wise loops); 0 = every core. Process-wide: every network
    loaded with threads=0 runs with it, whichever thread drives it."""
    _ffi.set_threads(n)


def get_threads() -> int:
    return _ffi.get_threads()


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table."""

    index: int
    type: str
    filters: int
    size: int
    stride: int
    groups: int
    input_shape: tuple[int, int, int]   # (w, h, c) as Darknet prints it
    output_shape: tuple[int, int, int]
    bflops: float
    n_params: int
    batch_normalize: bool = False
    activation: str = ""               # [convolutional] and [shortcut]
    sources: tuple[int, ...] = ()       # [route]: the layers concatenated; [shortcut]: its `from` layer
    padding: int = 0                    # [convolutional]: zeros on each side; [maxpool]: Darknet's total padding
    scale: float = 1.0                  # [upsample]
    # [yolo] only
    classes: int = 0
    n_anchors: int = 0
    total_anchors: int = 0
    iou_loss: str = ""
    representation: str = ""
    iou_normalizer: float = 0.0
    cls_normalizer: float = 0.0
    ignore_thresh: float = 0.0
    truth_thresh: float = 0.0
    max_boxes: int = 0
    random: bool = False
    jitter: float = 0.0


@dataclass(frozen=True)
class YoloStats:
    """What the reference logs for one [yolo] layer's training forward."""

    iou: float
    giou: float
    iou_loss: float
    cls_loss: float
    cost: float
    obj: float
    noobj: float
    cls: float
    recall50: float
    recall75: float
    count: int

    def as_dict(self) -> dict:
        """Keyed by runfiles.YOLO_STAT_FIELDS (the attribute ``cls`` is the field ``class``)."""
        return {key: getattr(self, "cls" if key == "class" else key) for key in YOLO_STAT_FIELDS}


def _locked(method):
    """Run `method` holding the network's lock, so that close() cannot free the C object under it: close()
    takes the same lock, so it waits for the call in flight, and later calls find the network closed."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return wrapper


def _fspath(path) -> bytes:
    return os.fsencode(os.fspath(path))


CONV_ALGOS = {"auto": 0, "gemm": 1, "winograd2": 2, "winograd4": 3, "plain": 4, "onednn": 5, "fused": 6}
PRECISIONS = {"f32": 0, "float32": 0, "bf16": 1, "bfloat16": 1}
# dn_conv_engine codes -> the names Network.conv_engines reports ("none", "plain", "fused", "onednn", ...)
CONV_ENGINES = CONV_ENGINE_NAMES


def bf16_supported() -> tuple[bool, str]:
    """Whether ``precision="bf16"`` can run here, and oneDNN's name for this CPU's instruction set."""
    return _ffi.bf16_supported()


def onednn_version() -> str:
    """oneDNN's version when the library was built with it, else ``""``."""
    return _ffi.onednn_version()


def parse_device(device) -> int:
    """``None``/``"cpu"``/``-1`` -> -1; ``"cuda"`` -> 0; ``"cuda:K"`` or ``K`` -> K (a CUDA device index)."""
    if device is None or device == -1:
        return -1
    if isinstance(device, int) and not isinstance(device, bool):
        if device < 0:
            raise DarknetValueError(f"device index must be >= 0 (or -1 for the CPU), got {device}")
        return device
    text = str(device).strip().lower()
    if text == "cpu":
        return -1
    if text == "cuda":
        return 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return int(text[5:])
    raise DarknetValueError(f"unknown device {device!r} (use 'cpu', 'cuda' or 'cuda:K')")


def gpu_ids(gpus, option: str = "-gpus") -> list[int]:
    """The GPU ids asked for (`gpus`: None, "0,1", 0 or [0, 1]), checked against this build and machine: a
    CudaError when there is no CUDA support compiled in or no device (the CPU is never used silently)."""
    if gpus is None or gpus is False or gpus == "":
        return []
    from .distributed import parse_gpus  # noqa: PLC0415

    ids = parse_gpus([gpus] if isinstance(gpus, int) else gpus)
    shown = ",".join(map(str, ids))
    if not build_info().get("cuda"):
        raise CudaError(f"{option} {shown}: this pydarknet is a CPU build (no CUDA support compiled in); "
                        f"run on the CPU by leaving out {option}, or use a build made with `make GPU=1`")
    count = cuda_device_count()
    missing = [i for i in ids if i >= count]
    if missing:
        raise CudaError(f"{option} {shown}: no CUDA device {','.join(map(str, missing))} "
                        f"({count} device{'s' if count != 1 else ''} visible)")
    return ids


def load_options(device=None, conv_algo: str = "auto", threads: int = 0, memory_limit: int | None = None,
                 precision: str = "f32"):
    """The C load options for these Python arguments: {dn_options field: value}, the library's default for
    those left out."""
    options = {"device": parse_device(device)}
    if conv_algo not in CONV_ALGOS:
        raise DarknetValueError(f"unknown conv_algo {conv_algo!r} (one of {', '.join(CONV_ALGOS)})")
    options["conv_algo"] = CONV_ALGOS[conv_algo]
    options["threads"] = int(threads)
    if precision not in PRECISIONS:
        raise DarknetValueError(f"unknown precision {precision!r} (f32 or bf16)")
    options["precision"] = PRECISIONS[precision]
    if memory_limit is None and os.environ.get(MEMORY_LIMIT_VARIABLE):
        memory_limit = parse_size(os.environ[MEMORY_LIMIT_VARIABLE], MEMORY_LIMIT_VARIABLE)
    if memory_limit is not None:
        if int(memory_limit) < 1:
            raise DarknetValueError(f"memory_limit must be a positive number of bytes, got {memory_limit}")
        options["memory_limit"] = int(memory_limit)
    return options


#: The memory limit of every network made without an explicit ``memory_limit`` (``--memory-limit`` sets it, so
#: that the processes a command starts, such as one per GPU, inherit it).
MEMORY_LIMIT_VARIABLE = "PYDARKNET_MEMORY_LIMIT"
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, what: str = "size") -> int:
    """Bytes from "17179869184", "512M", "16G" or "1.5T" (powers of 1024; a trailing "B"/"iB" is accepted)."""
    value = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS and value[-1:] else ""
    try:
        number = float(value[: len(value) - len(unit)])
    except ValueError:
        raise DarknetValueError(f"{what}: {text!r} is not a size (bytes, or a number with K, M, G or T)") from None
    if not number > 0 or number * _SIZE_UNITS[unit] >= 2 ** 64:
        raise DarknetValueError(f"{what}: {text!r} must be above 0 and below 16 EiB")
    return int(number * _SIZE_UNITS[unit])


class Network:
    """A network built from a Darknet ``.cfg``.

    ``Network(cfg, weights=None, batch=1, device=None, conv_algo="auto", threads=0, memory_limit=None,
    precision="f32")``: without weights the parameters get Darknet's initialisation. ``device`` is ``"cpu"``
    (default), ``"cuda"`` or ``"cuda:K"``; ``conv_algo`` one of ``auto`` (with oneDNN: the whole network as
    one oneDNN network, see ``inference_path()``; without: ``fused``), ``onednn``, ``fused`` (the hand-written
    Winograd/GEMM paths), ``gemm``, ``winograd2``, ``winograd4``, ``plain``; ``threads``
    this network's threads (0 = the process setting); ``memory_limit`` the bytes the network may claim (None =
    the library's default); ``precision`` ``"f32"`` or ``"bf16"`` (inference convolutions multiply in
    bfloat16 through oneDNN: CPUs with AMX or AVX512_BF16 only, else a ``DarknetValueError``; training stays
    float32). ``conv_engines()`` says which engine each convolution's last forward ran on.
    ``forward(x)`` takes float32 NCHW (or CHW) and returns the output of every ``[yolo]`` layer, in Darknet's
    layout ``(n, anchors*(5+classes), h, w)`` after the layer's activations. Use it as a context manager or
    call ``close()`` to free the C memory at a known time (calling it twice is fine).
    """

    def __init__(self, cfg: str | os.PathLike, weights: str | os.PathLike | None = None, batch: int = 1, *,
                 device=None, conv_algo: str = "auto", threads: int = 0, memory_limit: int | None = None,
                 precision: str = "f32"):
        self.cfg_path = Path(cfg)
        self.weights_path = Path(weights) if weights is not None else None
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"{weights}: weights file not found")
        options = load_options(device, conv_algo, threads, memory_limit, precision)
        self.precision = "bf16" if options["precision"] == 1 else "f32"
        self.device = "cpu" if options["device"] < 0 else f"cuda:{options['device']}"
        # One call at a time per network: the C object keeps per-call buffers, and close() must not free it
        # while a call from another thread still uses it. Every method that reaches C memory holds this lock.
        self._lock = threading.RLock()
        self._ptr = _ffi.network_load(_fspath(cfg), int(batch), options)
        self.layers_loaded = 0
        if weights is not None:
            self.load_weights(weights)
        self._refresh_layers()

    # ---- lifetime -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the C memory now. A call running in another thread finishes first; calls made afterwards
        raise ValueError ("the network is closed"). Calling it twice is fine."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the network existed
            return
        with lock:
            ptr, self._ptr = getattr(self, "_ptr", None), None
            if ptr is not None:
                _ffi.network_free(ptr)

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def _handle(self):
        """The C handle; only valid while the caller holds self._lock (see _locked)."""
        if self._ptr is None:
            raise DarknetValueError("the network is closed")
        return self._ptr

    # ---- description ----------------------------------------------------------------------------------
    @_locked
    def _info(self):
        return _ffi.network_info(self._handle())

    @_locked
    def _refresh_layers(self) -> None:
        info = self._info()
        layers = []
        for i in range(info.n_layers):
            c_info = _ffi.network_layer_info(self._handle(), i)
            t = c_info.type
            extra = {}
            activation = _ffi.activation_name(c_info.activation)
            if t == "conv":
                extra = dict(batch_normalize=bool(c_info.batch_normalize), activation=activation,
                             padding=c_info.padding)
            elif t == "max":
                extra = dict(padding=c_info.padding)
            elif t == "upsample":
                extra = dict(scale=c_info.scale)
            elif t == "shortcut":
                extra = dict(sources=(c_info.sources[0],), activation=activation)
            elif t == "yolo":
                extra = dict(classes=c_info.classes, n_anchors=c_info.n, total_anchors=c_info.total,
                             iou_loss=IOU_LOSS_NAMES[c_info.iou_loss], representation=REPRESENTATION_NAMES[c_info.representation],
                             iou_normalizer=c_info.iou_normalizer, cls_normalizer=c_info.cls_normalizer,
                             ignore_thresh=c_info.ignore_thresh, truth_thresh=c_info.truth_thresh,
                             max_boxes=c_info.max_boxes, random=bool(c_info.random), jitter=c_info.jitter)
            elif t == "route":
                extra = dict(sources=tuple(c_info.sources[k] for k in range(c_info.n_sources)))
            layers.append(LayerInfo(
                index=i, type=t, filters=c_info.filters, size=c_info.size, stride=c_info.stride,
                groups=c_info.groups, input_shape=(c_info.in_w, c_info.in_h, c_info.in_c),
                output_shape=(c_info.out_w, c_info.out_h, c_info.out_c), bflops=c_info.bflops,
                n_params=int(c_info.n_params), **extra))
        self._layers = layers
        self._yolo_indices = [l.index for l in layers if l.type == "yolo"]

    @property
    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    @property
    def yolo_layers(self) -> list[LayerInfo]:
        return [self._layers[i] for i in self._yolo_indices]

    @property
    def width(self) -> int:
        return self._info().width

    @property
    def height(self) -> int:
        return self._info().height

    @property
    def channels(self) -> int:
        return self._info().channels

    @property
    def batch(self) -> int:
        return self._info().batch

    @property
    def options(self) -> dict:
        """The [net] section's training options."""
        i = self._info()
        return {"batch": i.cfg_batch, "subdivisions": i.subdivisions, "width": i.width, "height": i.height,
                "channels": i.channels, "learning_rate": i.learning_rate, "momentum": i.momentum,
                "decay": i.decay, "burn_in": i.burn_in, "power": i.power, "max_batches": i.max_batches,
                "policy": i.policy, "steps": [i.steps[k] for k in range(i.n_steps)],
                "scales": [i.scales[k] for k in range(i.n_steps)], "step": i.step, "scale": i.scale, "gamma": i.gamma,
                "angle": i.angle, "saturation": i.saturation, "exposure": i.exposure, "hue": i.hue,
                "flip": bool(i.flip)}

    @property
    def seen(self) -> int:
        return int(self._info().seen)

    @seen.setter
    @_locked
    def seen(self, value: int) -> None:
        _ffi.network_set_seen(self._handle(), value)

    @property
    def version(self) -> tuple[int, int, int]:
        i = self._info()
        return (i.major, i.minor, i.revision)

    @property
    def n_params(self) -> int:
        return int(self._info().n_params)

    @property
    def max_boxes(self) -> int:
        return max((l.max_boxes for l in self.yolo_layers), default=90)

    @property
    def bflops(self) -> float:
        return float(sum(l.bflops for l in self._layers))

    @_locked
    def conv_engines(self) -> dict[str, int]:
        """How many convolutional layers each engine ran in the last forward: keys ``onednn``, ``onednn-bf16``,
        ``fused`` (Winograd/GEMM), ``plain``, ``device``, ``none`` (not run yet)."""
        counts: dict[str, int] = {}
        for layer in self._layers:
            if layer.type == "conv":
                engine = _ffi.network_layer_info(self._handle(), layer.index).engine
                name = CONV_ENGINES.get(engine, "none")
                counts[name] = counts.get(name, 0) + 1
        return counts

    @_locked
    def inference_path(self) -> str:
        """How the last inference forward ran: ``"onednn-network"`` (the whole network as one oneDNN graph of
        primitives, layers' outputs kept in oneDNN's layouts and turned back into NCHW when read), or
        ``"layers"`` (layer by layer; also before any forward)."""
        return "onednn-network" if _ffi.network_ran_whole_onednn(self._handle()) else "layers"

    def summary(self) -> str:
        """Darknet's layer table: index, type, filters, size, input -> output, BFLOPs."""
        rows = ["layer     filters    size              input                output"]
        for l in self._layers:
            iw, ih, ic = l.input_shape
            ow, oh, oc = l.output_shape
            if l.type == "conv":
                rows.append(f"{l.index:5d} conv  {l.filters:5d} {l.size:2d} x{l.size:2d} /{l.stride:2d}  "
                            f"{iw:4d} x{ih:4d} x{ic:4d}   ->  {ow:4d} x{oh:4d} x{oc:4d}  {l.bflops:6.3f} BFLOPs")
            elif l.type == "max":
                rows.append(f"{l.index:5d} max        {l.size:2d} x{l.size:2d} /{l.stride:2d}  "
                            f"{iw:4d} x{ih:4d} x{ic:4d}   ->  {ow:4d} x{oh:4d} x{oc:4d}")
            elif l.type == "route":
                rows.append(f"{l.index:5d} route  " + " ".join(str(s) for s in l.sources))
            elif l.type == "shortcut":
                rows.append(f"{l.index:5d} res  ")
            elif l.type == "upsample":
                rows.append(f"{l.index:5d} upsample            {l.stride:2d}x  "
                            f"{iw:4d} x{ih:4d} x{ic:4d}   ->  {ow:4d} x{oh:4d} x{oc:4d}")
            else:
                rows.append(f"{l.index:5d} {l.type}")
        rows.append(f"Total BFLOPS {self.bflops:.3f}")
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.width}x{self.height}, {len(self._layers)} layers"
        return f"<Network {self.cfg_path.name} {state}>"

    # ---- weights --------------------------------------------------------------------------------------
    def load_weights(self, path: str | os.PathLike) -> int:
        """Load a .weights file; returns the number of layers it covered (a partial file covers fewer)."""
        with self._lock:
            loaded = _ffi.network_load_weights(self._handle(), _fspath(path))
        self.layers_loaded = loaded
        return loaded

    def save(self, path: str | os.PathLike) -> None:
        """Write a .weights file (header 0.2.0, 64-bit seen) atomically: a temp file renamed into place."""
        with self._lock:
            _ffi.network_save_weights(self._handle(), _fspath(path))

    def init_params(self, seed: int = 0x5EED) -> None:
        with self._lock:
            _ffi.network_init_params(self._handle(), seed)

    def params(self) -> np.ndarray:
        """A copy of every parameter, in .weights order."""
        out = np.empty(self.n_params, np.float32)
        with self._lock:
            _ffi.network_get_params(self._handle(), out)
        return out

    def set_params(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32).ravel()
        if values.size != self.n_params:
            raise ValueError(f"expected {self.n_params} parameters, got {values.size}")
        with self._lock:
            _ffi.network_set_params(self._handle(), values)

    # ---- shapes ---------------------------------------------------------------------------------------
    def _total_stride(self) -> int:
        """How much the network downsamples its input (32 for YOLOv3): the input size over the coarsest
        [yolo] grid (or coarsest layer output without [yolo]); 1 when that is not a whole number."""
        layers = self.yolo_layers or self._layers
        strides = []
        for size, k in ((self.width, 0), (self.height, 1)):
            coarsest = min(l.output_shape[k] for l in layers)
            strides.append(size // coarsest if coarsest and size % coarsest == 0 else 1)
        return min(strides)

    def resize(self, width: int, height: int) -> None:
        """Change the input size: a multiple of the network's total stride (32 for YOLOv3)."""
        stride = self._total_stride()
        if int(width) % stride or int(height) % stride:
            raise DarknetValueError(f"cannot resize to {int(width)} x {int(height)}: width and height must each be "
                                    f"a multiple of {stride}, the network's total stride")
        with self._lock:
            _ffi.network_resize(self._handle(), width, height)
        self._refresh_layers()

    def set_batch(self, batch: int) -> None:
        with self._lock:
            _ffi.network_set_batch(self._handle(), batch)

    def export_onnx(self, path: str | os.PathLike, *, batch: int = 1, dynamic_batch: bool = False,
                    opset: int | None = None, decode: bool = False) -> Path:
        """Write this network (at its current input size) as an ONNX model; see ``pydarknet.onnx_export``.
        Outputs: the raw input of each [yolo] layer, or with ``decode`` one (N, boxes, 4+1+classes) tensor."""
        from . import onnx_export  # noqa: PLC0415 - the onnx package is an optional extra

        with self._lock:
            return onnx_export.export_onnx(self, path, batch=batch, dynamic_batch=dynamic_batch,
                                           opset=onnx_export.DEFAULT_OPSET if opset is None else opset, decode=decode)

    # ---- compute --------------------------------------------------------------------------------------
    def _input(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        info = self._info()  # once: each read goes through C (about 50 us on a small network's forward)
        expected = (info.channels, info.height, info.width)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"input must be float32 (n, {expected[0]}, {expected[1]}, {expected[2]}) NCHW, "
                             f"got shape {x.shape}")
        if x.shape[0] < 1:
            raise ValueError("input holds no image")
        if x.shape[0] > info.batch:
            self.set_batch(x.shape[0])
        return x

    @_locked
    def layer_output(self, index: int, n: int | None = None) -> np.ndarray:
        """A copy of layer `index`'s output after the last forward, shaped (n, c, h, w)."""
        layer = self._layers[index]
        n = self.batch if n is None else n
        w, h, c = layer.output_shape
        out = np.empty((n, c, h, w), np.float32)
        _ffi.network_layer_output(self._handle(), index, out)
        return out

    @_locked
    def _layer_delta(self, index: int, n: int) -> np.ndarray:
        layer = self._layers[index]
        w, h, c = layer.output_shape
        out = np.empty((n, c, h, w), np.float32)
        _ffi.network_layer_delta(self._handle(), index, out)
        return out

    def forward(self, x: np.ndarray) -> list[np.ndarray]:
        """Inference forward; returns every [yolo] layer's output (n, anchors*(5+classes), h, w)."""
        with self._lock:
            x = self._input(x)
            _ffi.network_forward(self._handle(), x)  # a NaN or infinity in x: DarknetValueError
            return [self.layer_output(i, x.shape[0]) for i in self._yolo_indices]

    def _truth(self, truths: np.ndarray, n: int) -> np.ndarray:
        truths = np.asarray(truths, dtype=np.float32)
        mb = self.max_boxes
        if truths.ndim != 3 or truths.shape[0] != n or truths.shape[2] != 5:
            raise ValueError(f"truths must be float32 (n={n}, max_boxes, 5) of (x, y, w, h, class), got {truths.shape}")
        if truths.shape[1] > mb:
            raise ValueError(f"truths hold {truths.shape[1]} boxes per image, the network's max is {mb}")
        if truths.shape[1] < mb:
            truths = np.concatenate([truths, np.zeros((n, mb - truths.shape[1], 5), np.float32)], axis=1)
        return np.ascontiguousarray(truths)

    def loss(self, images: np.ndarray, truths: np.ndarray) -> list[dict]:
        """Training-mode forward (batch-norm batch statistics, the loss) that changes no weight.

        Returns, per [yolo] layer, ``{"layer", "cost", "delta", "stats"}`` with the layer's delta
        (Darknet's sign: the negative gradient) and the statistics the reference logs.
        """
        with self._lock:
            x = self._input(images)
            t = self._truth(truths, x.shape[0])
            _ffi.network_loss(self._handle(), x, t)
            return [{"layer": idx, "cost": s.cost, "delta": self._layer_delta(idx, x.shape[0]), "stats": s.as_dict()}
                    for idx, s in zip(self._yolo_indices, self.yolo_stats())]

    def train_chunk(self, images: np.ndarray, truths: np.ndarray) -> float:
        """Forward + backward of one chunk (batch/subdivisions images); gradients accumulate until update()."""
        with self._lock:
            x = self._input(images)
            t = self._truth(truths, x.shape[0])
            return _ffi.network_train_chunk(self._handle(), x, t)

    def update(self, learning_rate: float, momentum: float, decay: float, batch_images: int) -> None:
        """One SGD step for `batch_images` accumulated images (SPEC §3)."""
        with self._lock:
            _ffi.network_update(self._handle(), learning_rate, momentum, decay, batch_images)

    def forward_last(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """Forward and return the LAST layer's output; train=True uses batch-norm batch statistics (without
        touching the rolling averages) and computes no loss. For gradient checks and research."""
        with self._lock:
            x = self._input(x)
            _ffi.network_forward_mode(self._handle(), x, train)
            return self.layer_output(len(self._layers) - 1, x.shape[0])

    def backward_probe(self, x: np.ndarray, last_delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training-mode forward, then backward from `last_delta` (the last layer's delta, Darknet's sign:
        the negative gradient). Returns (delta at the input, parameter deltas in .weights order), both the
        negative gradient of sum(last_output * -last_delta)... i.e. for L = -sum(out * last_delta) they are -dL/d."""
        with self._lock:
            x = self._input(x)
            last = self._layers[-1]
            w, h, c = last.output_shape
            d = np.ascontiguousarray(last_delta, dtype=np.float32)
            if d.size != x.shape[0] * c * h * w:
                raise ValueError(f"last_delta must hold {x.shape[0] * c * h * w} values, got {d.size}")
            input_delta = np.zeros_like(x)
            _ffi.network_zero_updates(self._handle())
            _ffi.network_backward_probe(self._handle(), x, d, input_delta)
            updates = np.empty(self.n_params, np.float32)
            _ffi.network_get_updates(self._handle(), updates)
            _ffi.network_zero_updates(self._handle())
            return input_delta, updates

    @_locked
    def yolo_stats(self) -> list[YoloStats]:
        out = []
        for k in range(len(self._yolo_indices)):
            stats = _ffi.network_yolo_stats(self._handle(), k)
            stats["cls"] = stats.pop("class")
            out.append(YoloStats(**stats))
        return out

    @_locked
    def yolo_anchors(self, index: int) -> tuple[np.ndarray, list[int]]:
        """(anchors (total, 2) in network pixels, mask) of the [yolo] layer with absolute index `index`."""
        layer = self._layers[index]
        anchors, mask = _ffi.network_yolo_anchors(self._handle(), index, layer.total_anchors, layer.n_anchors)
        return np.array(anchors, np.float32).reshape(-1, 2), mask
