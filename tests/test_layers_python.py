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


def test_loss_and_image_do_not_touch_cffi():
    for name in ("loss.py", "image.py"):
        imported = _imported_names(PACKAGE / name)
        assert not any(n.endswith((".ffi", ".lib")) or n == "cffi" for n in imported), (name, imported)


def test_enums_come_from_the_header():
    header = (ROOT / "csrc" / "darknet.h").read_text() if (ROOT / "csrc").is_dir() else None
    assert _ffi.IOU_LOSS_NAMES == {0: "mse", 1: "iou", 2: "giou"}
    assert _ffi.REPRESENTATION_NAMES == {0: "exp", 1: "lin"}
    assert loss.IOU_LOSSES == {"mse": 0, "iou": 1, "giou": 2}
    if header is not None:
        assert "DN_LOSS_GIOU = 2" in header and "DN_REPR_LIN = 1" in header


def test_listeval_and_allmap_do_not_import_valid():
    for path in (PACKAGE / "eval" / "listeval.py", PACKAGE / "allmap.py"):
        imported = _imported_names(path)
        assert not any(".valid." in n or n.startswith("valid.") for n in imported), (path.name, imported)
