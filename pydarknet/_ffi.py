"""The only module that touches cffi: declarations, library lookup, ABI check and error mapping.

The library is found at ``$PYDARKNET_LIBRARY`` if set, else next to this file (``make`` and ``pip install``
put it there). Declarations are read from ``darknet.h`` so the header stays the single source of truth.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

from cffi import FFI

from .errors import (
    CfgError,
    CudaError,
    DarknetArithmeticError,
    DarknetError,
    DarknetIOError,
    DarknetValueError,
    DistributedError,
    WeightsError,
)

__all__ = ["ffi", "lib", "check", "library_path", "build_info", "cuda_device_count"]

_HERE = Path(__file__).resolve().parent
_EXPECTED_ABI = 3
log = logging.getLogger("pydarknet")


def _header_text() -> str:
    for candidate in (_HERE / "darknet.h", _HERE.parent / "csrc" / "darknet.h"):
        if candidate.is_file():
            return candidate.read_text()
    raise ImportError("pydarknet: darknet.h not found next to the package (reinstall with `pip install .`)")


def _cdef_from_header(text: str) -> str:
    """Strip what cffi's parser does not take: include guards, includes, the C++ wrapper."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"#ifdef __cplusplus.*?#endif", "", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            # Keep plain integer constants (cffi understands `#define NAME 1`).
            if re.match(r"#define\s+\w+\s+-?\d+\s*$", stripped):
                lines.append(stripped)
            continue
        lines.append(line)
    return "\n".join(lines)


ffi = FFI()
ffi.cdef(_cdef_from_header(_header_text()))


_blas_handle: ctypes.CDLL | None = None


def _preload_blas() -> None:
    """Load the scipy-openblas32 wheel's library globally so libdarknet's dependency resolves to it,
    whatever rpath the build had (an isolated pip build env is deleted after the build)."""
    global _blas_handle
    try:
        import scipy_openblas32  # noqa: PLC0415
    except ImportError:
        return
    libdir = Path(scipy_openblas32.get_lib_dir())
    for candidate in sorted(libdir.glob("libscipy_openblas*.so*")):
        _blas_handle = ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
        return


def blas_core() -> str | None:
    """The kernels OpenBLAS chose for this CPU (e.g. "SkylakeX", "Haswell"), when the scipy-openblas32 wheel's
    library is the one loaded; None otherwise."""
    get = getattr(_blas_handle, "scipy_openblas_get_corename", None)
    if get is None:
        return None
    get.restype = ctypes.c_char_p
    return get().decode("ascii", "replace")


# NVIDIA's wheels (pip install ".[cuda]"): the CUDA runtime and cuBLAS in nvidia/cu13/lib, cuDNN in nvidia/cudnn/lib.
_CUDA_LIBS = ("cu13/lib/libcudart.so.13", "cu13/lib/libcublasLt.so.13", "cu13/lib/libcublas.so.13")
_CUDA_SONAMES = ("libcudart.so", "libcublas", "libcudnn")


def _nvidia_dirs() -> list[Path]:
    try:
        import nvidia  # noqa: PLC0415  (a namespace package of the NVIDIA wheels)
    except ImportError:
        return []
    return [Path(p) for p in getattr(nvidia, "__path__", [])]


def _load_global(paths: list[Path]) -> None:
    """dlopen every path with RTLD_GLOBAL, retrying those whose dependencies were not loaded yet."""
    pending = [p for p in paths if p.is_file()]
    while pending:
        failed = []
        for path in pending:
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                failed.append(path)
        if len(failed) == len(pending):
            return  # the library's own dlopen will name what is missing
        pending = failed


def _preload_cuda(cudnn: bool) -> None:
    """Load the CUDA runtime and cuBLAS (and cuDNN, whose parts cuDNN itself dlopens by name later) from the
    wheels, so a GPU build finds them whatever its rpath says and without LD_LIBRARY_PATH."""
    for base in _nvidia_dirs():
        paths = [base / rel for rel in _CUDA_LIBS]
        if cudnn:
            cudnn_dir = base / "cudnn" / "lib"
            paths += [cudnn_dir / "libcudnn.so.9"] + sorted(cudnn_dir.glob("libcudnn_*.so.9"))
        _load_global(paths)


def _preload_onednn() -> None:
    """Load the onednn-cpu-gomp wheel's libdnnl.so.3 globally, for the same reason as the BLAS (a library built
    in an isolated pip environment keeps an rpath to a folder that is gone)."""
    try:
        from importlib import metadata  # noqa: PLC0415

        dist = metadata.distribution("onednn-cpu-gomp")
    except Exception:  # not installed: a library built with oneDNN finds it by its rpath, or fails to load
        return
    for file in dist.files or ():
        if file.name == "libdnnl.so.3":
            path = Path(dist.locate_file(file))
            if path.is_file():
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            return


def library_path() -> Path:
    env = os.environ.get("PYDARKNET_LIBRARY")
    if env:
        return Path(env)
    return _HERE / "libdarknet.so"


def _load():
    path = library_path()
    if not path.is_file():
        raise ImportError(
            f"pydarknet: the C library {path} is missing; build it with `make` (or `pip install .`), "
            "or point $PYDARKNET_LIBRARY at a libdarknet.so"
        )
    _preload_blas()
    _preload_onednn()
    # OpenMP threads that spin long between parallel regions steal the cores from the data-loading workers
    # and from each other on a busy machine (measured 2x slower training under load); keep the spin short.
    # libgomp reads this when it is loaded, i.e. by the dlopen below; a user's own setting wins.
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    try:
        library = ffi.dlopen(str(path))
    except OSError as exc:
        if not any(name in str(exc) for name in _CUDA_SONAMES):
            raise
        # A GPU build (make GPU=1) whose rpath does not reach the CUDA libraries: take them from the wheels.
        _preload_cuda(cudnn=True)
        try:
            library = ffi.dlopen(str(path))
        except OSError as again:
            raise ImportError(
                f"pydarknet: {path} was built with CUDA and cannot load its CUDA libraries ({again}); install "
                "them with `pip install \"pydarknet[cuda]\"` (NVIDIA's wheels) or put a CUDA toolkit's lib64 on "
                "LD_LIBRARY_PATH") from again
    if _parse_build_info(ffi.string(library.dn_build_info()).decode()).get("cudnn") and library.dn_cuda_device_count():
        # cuDNN dlopens its engine libraries by name when the first handle is made (not needed without a device)
        _preload_cuda(cudnn=True)
    abi = library.dn_abi_version()
    if abi != _EXPECTED_ABI:
        raise ImportError(f"pydarknet: {path} has ABI version {abi}, this package needs {_EXPECTED_ABI}; rebuild it")
    return library


def _parse_build_info(text: str) -> dict:
    info: dict = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = int(value) if re.fullmatch(r"-?\d+", value.strip()) else value.strip()
    return info


lib = _load()


def build_info() -> dict:
    """What the loaded libdarknet.so was built with: ``cuda`` (the CUDA runtime version it was compiled
    against, e.g. 13000, or 0 for a CPU-only build), ``cudnn`` (version or 0), ``cublas``, ``cuda_archs``,
    ``blas`` (and ``blas_core``: the kernels OpenBLAS chose, where the wheel's library is loaded), ``openmp``,
    ``abi``, and ``library`` (its path). Later builds may add keys."""
    info = _parse_build_info(ffi.string(lib.dn_build_info()).decode("utf-8", "replace"))
    info["library"] = str(library_path())
    core = blas_core()
    if core:
        info["blas_core"] = core
    return info


def cuda_device_count() -> int:
    """CUDA devices the driver reports: 0 on a CPU-only build, without a driver or without a device."""
    return int(lib.dn_cuda_device_count())

_LEVELS = {10: logging.DEBUG, 20: logging.INFO, 30: logging.WARNING, 40: logging.ERROR}


@ffi.callback("void(int, const char *, void *)")
def _log_callback(level, message, _user):  # pragma: no cover - exercised through warnings in tests
    try:
        log.log(_LEVELS.get(level, logging.INFO), ffi.string(message).decode("utf-8", "replace"))
    except Exception:  # a logging failure must never propagate into C
        pass


lib.dn_set_log_callback(_log_callback, ffi.NULL)
# One thread pool for the C core (OpenMP; OpenBLAS single-threaded inside it): $PYDARKNET_THREADS or every core.
lib.dn_set_threads(int(os.environ.get("PYDARKNET_THREADS", "0") or 0))


def last_error() -> str:
    return ffi.string(lib.dn_last_error()).decode("utf-8", "replace")


def check(status: int) -> None:
    """Raise the exception that matches a dn_status, with the C side's message."""
    if status == 0:
        return
    message = last_error()
    if status == lib.DN_E_NOTFOUND:
        raise FileNotFoundError(message)
    if status == lib.DN_E_CFG:
        raise CfgError(message)
    if status == lib.DN_E_WEIGHTS:
        raise WeightsError(message)
    if status == lib.DN_E_IO:
        raise DarknetIOError(message)
    if status == lib.DN_E_NOMEM:
        raise MemoryError(message)
    if status == lib.DN_E_ARG:
        raise DarknetValueError(message)
    if status == lib.DN_E_CUDA:
        raise CudaError(message)
    if status == lib.DN_E_NUMERIC:
        raise DarknetArithmeticError(message)
    if status == lib.DN_E_COMM:
        raise DistributedError(message)
    raise DarknetError(f"error {status}: {message}")



# ---- thin wrappers: the modules above this one (network, distributed, loss, image) call these, never cffi ----

def _enum_names(type_name: str, prefix: str) -> dict[int, str]:
    """A C enum of the header as {value: lower-case name without the prefix}: DN_LOSS_GIOU -> 'giou'."""
    return {value: name[len(prefix):].lower() for value, name in ffi.typeof(type_name).elements.items()}


#: The [yolo] layer's iou_loss and representation codes, read from darknet.h (value -> cfg name).
IOU_LOSS_NAMES = _enum_names("dn_iou_loss", "DN_LOSS_")
REPRESENTATION_NAMES = _enum_names("dn_representation", "DN_REPR_")

# dn_yolo_stats' member for each statistic (runfiles.YOLO_STAT_FIELDS) whose C name differs.
_YOLO_STATS_MEMBERS = {"iou": "avg_iou", "giou": "avg_giou", "obj": "avg_obj", "noobj": "avg_noobj",
                       "class": "avg_cls"}


def yolo_stats_dict(c_stats) -> dict:
    """A dn_yolo_stats as a dict keyed by runfiles.YOLO_STAT_FIELDS."""
    from .runfiles import YOLO_STAT_FIELDS  # noqa: PLC0415 - pure Python, no cycle

    return {key: (int if key == "count" else float)(getattr(c_stats, _YOLO_STATS_MEMBERS.get(key, key)))
            for key in YOLO_STAT_FIELDS}


def _floats(array):
    return ffi.from_buffer("float[]", array)


def yolo_loss(x, truth, output, delta, *, classes: int, mask, anchors, net_w: int, net_h: int, iou_loss: int,
              iou_normalizer: float, cls_normalizer: float, representation: int, ignore_thresh: float,
              truth_thresh: float, max_boxes: int) -> tuple[float, dict]:
    """dn_yolo_loss on float32 C-contiguous arrays x (n, c, h, w), truth (n, max_boxes, 5), output and delta
    (x's shape); mask and anchors are int32 / float32 arrays. The C core checks the configuration."""
    n, _, h, w = x.shape
    c_mask = ffi.new("int[]", [int(m) for m in mask])
    c_anchors = ffi.new("float[]", [float(a) for a in anchors])
    cfg = ffi.new("dn_yolo_config *")
    cfg.classes, cfg.n, cfg.total = classes, len(mask), len(anchors) // 2
    cfg.mask, cfg.anchors = c_mask, c_anchors
    cfg.net_w, cfg.net_h = net_w, net_h
    cfg.iou_loss, cfg.representation = iou_loss, representation
    cfg.iou_normalizer, cfg.cls_normalizer = iou_normalizer, cls_normalizer
    cfg.ignore_thresh, cfg.truth_thresh = ignore_thresh, truth_thresh
    cfg.max_boxes = max_boxes
    cost = ffi.new("float *")
    stats = ffi.new("dn_yolo_stats *")
    check(lib.dn_yolo_loss(cfg, _floats(x), n, h, w, _floats(truth), _floats(output), _floats(delta), cost, stats))
    return float(cost[0]), yolo_stats_dict(stats)


def letterbox_bgr(bgr, net_w: int, net_h: int, out) -> None:
    """dn_letterbox_bgr: uint8 HxWx3 BGR (rows may be padded) -> float32 (3, net_h, net_w) RGB in out."""
    h, w, channels = bgr.shape
    check(lib.dn_letterbox_bgr(ffi.from_buffer("unsigned char[]", bgr), w, h, channels, bgr.strides[0], net_w,
                               net_h, _floats(out)))


def resize_chw(image, out) -> None:
    """dn_resize_chw: Darknet's bilinear resize of float32 CHW `image` into float32 CHW `out`."""
    c, h, w = image.shape
    _, out_h, out_w = out.shape
    check(lib.dn_resize_chw(_floats(image), c, h, w, _floats(out), out_h, out_w))


def letterbox_size(width: int, height: int, net_w: int, net_h: int) -> tuple[int, int]:
    """dn_letterbox_size: (new_w, new_h) of a width x height image inside the net_w x net_h letterbox."""
    new_w, new_h = ffi.new("int *"), ffi.new("int *")
    check(lib.dn_letterbox_size(int(width), int(height), int(net_w), int(net_h), new_w, new_h))
    return new_w[0], new_h[0]


# ---- the process's settings and what the library was built with -------------------------------------------

def set_threads(n: int) -> None:
    lib.dn_set_threads(int(n))


def get_threads() -> int:
    return int(lib.dn_get_threads())


def bf16_supported() -> tuple[bool, str]:
    """dn_bf16_supported: (whether bf16 convolutions run here, oneDNN's name of this CPU's instruction set)."""
    isa = ffi.new("const char **")
    ok = bool(lib.dn_bf16_supported(isa))
    return ok, ffi.string(isa[0]).decode()


def onednn_version() -> str:
    return ffi.string(lib.dn_onednn_version()).decode()


def activation_name(code: int) -> str:
    return ffi.string(lib.dn_activation_name(code)).decode()


#: The dn_conv_engine codes, read from darknet.h (value -> name: DN_ENGINE_ONEDNN_BF16 -> 'onednn-bf16').
CONV_ENGINE_NAMES = {code: name.replace("_", "-") for code, name in _enum_names("dn_conv_engine", "DN_ENGINE_").items()}


# ---- one network: `handle` is what network_load returns (a dn_network * freed when collected or by
# network_free). The callers (pydarknet.network) serialise the calls on one handle. ---------------------------

def _struct_values(cdata) -> SimpleNamespace:
    """A dn_*_info struct as plain Python values: char arrays as str, other arrays as lists."""
    values = {}
    for name, field in ffi.typeof(cdata).item.fields:
        value = getattr(cdata, name)
        if field.type.kind == "array":
            value = ffi.string(value).decode() if field.type.item.cname == "char" else list(value)
        values[name] = value
    return SimpleNamespace(**values)


def network_load(cfg_path: bytes, batch: int, options: dict):
    """dn_network_load with dn_options_init's defaults changed by `options` (dn_options field -> value)."""
    c_options = ffi.new("dn_options *")
    lib.dn_options_init(c_options)
    for name, value in options.items():
        setattr(c_options, name, value)
    out = ffi.new("dn_network **")
    check(lib.dn_network_load(cfg_path, int(batch), c_options, out))
    return ffi.gc(out[0], lib.dn_network_free)


def network_free(handle) -> None:
    """Free the network now (its garbage-collection hook then does nothing)."""
    ffi.release(handle)


def network_info(handle) -> SimpleNamespace:
    """dn_network_info's fields (dn_net_info) by name; steps/scales hold all 32 slots, n_steps of them used."""
    info = ffi.new("dn_net_info *")
    check(lib.dn_network_info(handle, info))
    return _struct_values(info)


def network_layer_info(handle, index: int) -> SimpleNamespace:
    """dn_network_layer_info's fields (dn_layer_info) by name, `sources` as a list of all 4 slots."""
    info = ffi.new("dn_layer_info *")
    check(lib.dn_network_layer_info(handle, int(index), info))
    return _struct_values(info)


def network_load_weights(handle, path: bytes) -> int:
    """dn_network_load_weights; returns the layers the file filled."""
    loaded = ffi.new("int *")
    check(lib.dn_network_load_weights(handle, path, loaded))
    return int(loaded[0])


def network_save_weights(handle, path: bytes) -> None:
    check(lib.dn_network_save_weights(handle, path))


def network_init_params(handle, seed: int) -> None:
    check(lib.dn_network_init_params(handle, int(seed)))


def network_ran_whole_onednn(handle) -> bool:
    return bool(lib.dn_network_ran_whole_onednn(handle))


def network_set_seen(handle, seen: int) -> None:
    check(lib.dn_network_set_seen(handle, int(seen)))


def network_set_batch(handle, batch: int) -> None:
    check(lib.dn_network_set_batch(handle, int(batch)))


def network_resize(handle, width: int, height: int) -> None:
    check(lib.dn_network_resize(handle, int(width), int(height)))


def network_get_params(handle, out, offset: int = 0) -> None:
    """Copy out.size parameters from `offset` (in .weights order) into the float32 contiguous array out."""
    check(lib.dn_network_get_params(handle, int(offset), out.size, _floats(out)))


def network_set_params(handle, values, offset: int = 0) -> None:
    check(lib.dn_network_set_params(handle, int(offset), values.size, _floats(values)))


def network_get_updates(handle, out, offset: int = 0) -> None:
    check(lib.dn_network_get_updates(handle, int(offset), out.size, _floats(out)))


def network_zero_updates(handle) -> None:
    check(lib.dn_network_zero_updates(handle))


def network_layer_output(handle, index: int, out) -> None:
    check(lib.dn_network_layer_output(handle, int(index), _floats(out), out.size))


def network_layer_delta(handle, index: int, out) -> None:
    check(lib.dn_network_layer_delta(handle, int(index), _floats(out), out.size))


def network_forward(handle, x) -> None:
    """Inference forward of the float32 NCHW contiguous batch x."""
    check(lib.dn_network_forward(handle, _floats(x), x.shape[0]))


def network_forward_mode(handle, x, train: bool) -> None:
    check(lib.dn_network_forward_mode(handle, _floats(x), x.shape[0], int(train)))


def network_loss(handle, x, truth) -> float:
    cost = ffi.new("float *")
    check(lib.dn_network_loss(handle, _floats(x), _floats(truth), x.shape[0], cost))
    return float(cost[0])


def network_train_chunk(handle, x, truth) -> float:
    cost = ffi.new("float *")
    check(lib.dn_network_train_chunk(handle, _floats(x), _floats(truth), x.shape[0], cost))
    return float(cost[0])


def host_pin(device: int, buffer) -> bool:
    """dn_host_pin on all of a writable buffer (numpy array, mmap): True when pinned, False on the CPU."""
    memory = ffi.from_buffer(buffer, require_writable=True)
    pinned = ffi.new("int *")
    check(lib.dn_host_pin(int(device), memory, len(memory), pinned))
    return bool(pinned[0])


def host_unpin(device: int, buffer) -> None:
    check(lib.dn_host_unpin(int(device), ffi.from_buffer(buffer, require_writable=True)))


def network_update(handle, learning_rate: float, momentum: float, decay: float, batch_images: int) -> None:
    check(lib.dn_network_update(handle, float(learning_rate), float(momentum), float(decay), int(batch_images)))


def network_backward_probe(handle, x, last_delta, input_delta) -> None:
    check(lib.dn_network_backward_probe(handle, _floats(x), x.shape[0], _floats(last_delta), _floats(input_delta)))


def network_yolo_stats(handle, yolo_index: int) -> dict:
    """The statistics of the network's `yolo_index`-th [yolo] layer, keyed by runfiles.YOLO_STAT_FIELDS."""
    stats = ffi.new("dn_yolo_stats *")
    check(lib.dn_network_yolo_stats(handle, int(yolo_index), stats))
    return yolo_stats_dict(stats)


def network_yolo_anchors(handle, index: int, total: int, n: int) -> tuple[list[float], list[int]]:
    """(the 2*total anchor numbers, the n mask entries) of the [yolo] layer with absolute index `index`."""
    anchors = ffi.new("float[]", 2 * total)
    mask = ffi.new("int[]", n)
    check(lib.dn_network_yolo_anchors(handle, int(index), anchors, mask))
    return list(anchors), list(mask)


# ---- data-parallel training: `comm` is what comm_init_mpi / comm_init_nccl return (a dn_comm *) -------------

NCCL_UNIQUE_ID_BYTES = lib.DN_NCCL_UNIQUE_ID_BYTES
ALLREDUCE_BUCKET_FLOATS = lib.DN_ALLREDUCE_BUCKET_FLOATS


def comm_mpi_built() -> bool:
    return bool(lib.dn_comm_mpi_built())


def comm_nccl_built() -> bool:
    return bool(lib.dn_comm_nccl_built())


def comm_init_mpi():
    out = ffi.new("dn_comm **")
    check(lib.dn_comm_init_mpi(out))
    return out[0]


def comm_nccl_unique_id() -> bytes:
    nccl_id = ffi.new("unsigned char[]", NCCL_UNIQUE_ID_BYTES)
    check(lib.dn_comm_nccl_unique_id(nccl_id))
    return bytes(ffi.buffer(nccl_id))


def comm_init_nccl(size: int, rank: int, nccl_id: bytes, device: int):
    if len(nccl_id) != NCCL_UNIQUE_ID_BYTES:
        raise DistributedError(f"NCCL's unique id must be {NCCL_UNIQUE_ID_BYTES} bytes, got {len(nccl_id)}")
    out = ffi.new("dn_comm **")
    check(lib.dn_comm_init_nccl(int(size), int(rank), nccl_id, int(device), out))
    return out[0]


def comm_transport(comm) -> str:
    return ffi.string(lib.dn_comm_transport(comm)).decode()


def comm_broadcast_bytes(comm, data: bytes, root: int) -> bytes:
    """dn_comm_broadcast of a byte string: every rank passes one of the same length and gets root's."""
    buf = ffi.new("unsigned char[]", data)
    check(lib.dn_comm_broadcast(comm, buf, len(data), int(root), ffi.NULL))
    return bytes(ffi.buffer(buf))


def comm_allreduce_sum(comm, values) -> None:
    """In place, the float32 contiguous array `values` = its sum over the ranks."""
    check(lib.dn_comm_allreduce_sum(comm, _floats(values), values.size, ffi.NULL))


def comm_free(comm) -> None:
    lib.dn_comm_free(comm)


def network_broadcast_params(handle, comm, root: int) -> None:
    check(lib.dn_network_broadcast_params(handle, comm, int(root)))


def network_allreduce_updates(handle, comm) -> None:
    check(lib.dn_network_allreduce_updates(handle, comm))


def network_train_chunk_reduce(handle, comm, x, truth, bucket_floats: int) -> float:
    cost = ffi.new("float *")
    check(lib.dn_network_train_chunk_reduce(handle, comm, _floats(x), _floats(truth), x.shape[0], cost,
                                            int(bucket_floats)))
    return float(cost[0])


def network_update_replicated(handle, comm, learning_rate: float, momentum: float, decay: float,
                              batch_images: int) -> None:
    check(lib.dn_network_update_replicated(handle, comm, float(learning_rate), float(momentum), float(decay),
                                           int(batch_images)))
