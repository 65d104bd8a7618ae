"""Reading Darknet ``.data`` run descriptions and ``.names`` files (SPEC §1.2)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CfgError

__all__ = ["read_data_file", "read_names"]


def read_data_file(path: str | os.PathLike) -> dict[str, str]:
    """Parse a ``.data`` file into a dict of strings.

    Whitespace inside a line is removed (Darknet's rule), ``#``/``;`` lines and blank lines are ignored, a
    key that repeats keeps its first value. Relative paths are left as written: Darknet resolves them
    against the working directory, and so do we.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: .data file not found")
    options: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = "".join(raw.split())
            if not line or line[0] in "#;":
                continue
            if "=" not in line:
                raise CfgError(f"{path}:{lineno}: expected key=value, got {raw.strip()!r}")
            key, value = line.split("=", 1)
            options.setdefault(key, value)
    return options


def read_names(path: str | os.PathLike) -> list[str]:
    """One class name per line; trailing whitespace stripped, empty trailing lines dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: names file not found")
    names = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    while names and not names[-1]:
        names.pop()
    return names
