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

__all__ = ["ffi", "lib", "check", "library_path"]

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
    library = ffi.dlopen(str(path))
    abi = library.dn_abi_version()
    if abi != _EXPECTED_ABI:
        raise ImportError(f"pydarknet: {path} has ABI version {abi}, this package needs {_EXPECTED_ABI}; rebuild it")
    return library


lib = _load()

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

