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
    WeightsError,
)

__all__ = ["ffi", "lib", "check", "library_path", "build_info", "cuda_device_count"]

_HERE = Path(__file__).resolve().parent
_EXPECTED_ABI = 2
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
    raise DarknetError(f"error {status}: {message}")

