"""pydarknet: a Darknet-compatible YOLOv3 engine (C core, Python API) with the GIoU loss.

The names below load the C library on first use, so tools that only evaluate (``scripts/voc_reval.py``)
work without it.
"""
from __future__ import annotations

import importlib
import sys
import types

from .errors import CfgError, CudaError, DarknetError, ExportError, ImageError, LabelError, WeightsError

__version__ = "0.1.0"

_LAZY = {
    "Network": ".network", "set_threads": ".network", "get_threads": ".network",
    "Detector": ".detect", "Detection": ".detect",
    "yolo_loss": ".loss",
    "train": ".train",
    "valid": ".valid",
    "build_info": "._ffi", "cuda_device_count": "._ffi",
    "evaluate_list": ".eval", "MapResult": ".eval", "format_map_table": ".eval", "map_txt_row": ".eval",
}

__all__ = ["Network", "Detector", "Detection", "yolo_loss", "train", "valid", "evaluate_list", "MapResult",
           "format_map_table", "map_txt_row", "set_threads", "get_threads", "build_info", "cuda_device_count",
           "DarknetError", "CfgError", "WeightsError", "LabelError", "ImageError", "CudaError", "ExportError",
           "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pydarknet' has no attribute {name!r}")
    imported = importlib.import_module(module, __name__)
    # train and valid: the module itself, made callable as the function (see _callable_module), so that
    # `import pydarknet.valid as m` still gives the module whichever was touched first
    value = imported if name in ("train", "valid") else getattr(imported, name)
    globals()[name] = value
    return value


def _callable_module(module_name: str, function_name: str) -> None:
    """`pydarknet.train` names a module and its main function alike. Importing the module (as the CLI does)
    makes the package attribute the module, so the module is made callable as the function."""
    module = sys.modules[module_name]
    function = getattr(module, function_name)

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    module.__class__ = CallableModule


def __dir__():
    return sorted(set(globals()) | set(__all__))
