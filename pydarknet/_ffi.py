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


def _preload_blas() -> None:
    """Load the scipy-openblas32 wheel's library globally so libdarknet's dependency resolves to it,
    whatever rpath the build had (an isolated pip build env is deleted after the build)."""
    try:
        import scipy_openblas32  # noqa: PLC0415
    except ImportError:
        return
    libdir = Path(scipy_openblas32.get_lib_dir())
    for candidate in sorted(libdir.glob("libscipy_openblas*.so*")):
        ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
        return


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
    ``blas``, ``openmp``, ``abi``, and ``library`` (its path). Later builds may add keys."""
    info = _parse_build_info(ffi.string(lib.dn_build_info()).decode("utf-8", "replace"))
    info["library"] = str(library_path())
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



# ---- thin wrappers: the modules above this one (network, loss, image) call these, never cffi ------------------

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
