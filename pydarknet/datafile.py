"""Reading Darknet ``.data`` run descriptions and ``.names`` files (SPEC §1.2)."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CfgError

__all__ = ["DataFile", "read_data_file", "read_names"]


class DataFile(dict):
    """The options of a ``.data`` file (a dict of strings) that remembers where each key was written, so a bad
    value is reported as ``<file>:<line>: <key>=...``."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.lines: dict[str, int] = {}

    def where(self, key: str) -> str:
        """``<file>:<line>`` of ``key`` (just the file when the key is absent)."""
        return f"{self.path}:{self.lines[key]}" if key in self.lines else str(self.path)

    def integer(self, key: str, default: int) -> int:
        """``key`` as an integer; a value that is not one is a CfgError naming the file, line and key."""
        text = self.get(key, "")
        if text == "":
            return default
        try:
            return int(text)
        except ValueError:
            raise CfgError(f"{self.where(key)}: {key}={text!r} is not an integer") from None


def read_data_file(path: str | os.PathLike) -> DataFile:
    """Parse a ``.data`` file into a dict of strings.

    Whitespace inside a line is removed (Darknet's rule), ``#``/``;`` lines and blank lines are ignored, a
    key that repeats keeps its first value. Relative paths are left as written: Darknet resolves them
    against the working directory, and so do we.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: .data file not found")
    options = DataFile(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = "".join(raw.split())
            if not line or line[0] in "#;":
                continue
            if "=" not in line:
                raise CfgError(f"{path}:{lineno}: expected key=value, got {raw.strip()!r}")
            key, value = line.split("=", 1)
            if key not in options:
                options[key] = value
                options.lines[key] = lineno
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
