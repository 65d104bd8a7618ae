"""How the Python package is layered (DESIGN.md): cffi only in _ffi.py, C enums read from the header, one
definition of the run-folder formats, evaluation modules below valid.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pydarknet
from pydarknet import _ffi, loss
from pydarknet.network import LayerInfo  # noqa: F401 - the module loads with the enums

PACKAGE = Path(pydarknet.__file__).resolve().parent
ROOT = PACKAGE.parent


def _imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.update(f"{node.module or ''}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _cffi_uses(path: Path) -> list[str]:
    """What a module takes of cffi: the cffi package, _ffi's ffi/lib/check, or `_ffi.ffi` / `_ffi.lib`."""
    uses = [n for n in _imported_names(path)
            if n == "cffi" or n.startswith("cffi.") or n.endswith(("_ffi.ffi", "_ffi.lib", "_ffi.check"))]
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "_ffi"
                and node.attr in ("ffi", "lib", "check")):
            uses.append(f"_ffi.{node.attr} (line {node.lineno})")
    return uses


def test_only_ffi_module_touches_cffi():
    """network.py, distributed.py, loss.py, image.py and every other module call _ffi's typed wrappers."""
    modules = [p for p in PACKAGE.rglob("*.py") if p.name != "_ffi.py"]
    assert PACKAGE / "network.py" in modules and PACKAGE / "distributed.py" in modules
    offenders = {str(p.relative_to(PACKAGE)): uses for p in modules if (uses := _cffi_uses(p))}
    assert offenders == {}


def test_enums_come_from_the_header():
    header = (ROOT / "csrc" / "darknet.h").read_text() if (ROOT / "csrc").is_dir() else None
    assert _ffi.IOU_LOSS_NAMES == {0: "mse", 1: "iou", 2: "giou"}
    assert _ffi.REPRESENTATION_NAMES == {0: "exp", 1: "lin"}
    assert loss.IOU_LOSSES == {"mse": 0, "iou": 1, "giou": 2}
    # the names Network.conv_engines() reports, from dn_conv_engine
    assert pydarknet.network.CONV_ENGINES == {0: "none", 1: "plain", 2: "fused", 3: "onednn", 4: "onednn-bf16",
                                              5: "device", 6: "stem"}
    if header is not None:
        assert "DN_LOSS_GIOU = 2" in header and "DN_REPR_LIN = 1" in header


def test_listeval_and_allmap_do_not_import_valid():
    for path in (PACKAGE / "eval" / "listeval.py", PACKAGE / "allmap.py"):
        imported = _imported_names(path)
        assert not any(".valid." in n or n.startswith("valid.") for n in imported), (path.name, imported)
