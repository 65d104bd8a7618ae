"""A tiny data set and network to train for a few iterations (the board's end-to-end tests).

Images with one filled square per class on a dark background, Darknet's layout (images/ and labels/, list
files, .names, .data); the network is conftest's TINY_CFG (64x64, two [yolo] heads, 2 classes).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_training_set(root: Path, prefix: str, images: int = 6, size: int = 64, seed: int = 0
                       ) -> tuple[Path, Path]:
    """Write the data set under ``root``; returns ``(data file, cfg file)``. Training writes to
    ``<root>/backup/<prefix>/``."""
    from conftest import TINY_CFG  # noqa: PLC0415  (tests/ is on sys.path under pytest)

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(images):
        image = np.full((size, size, 3), 20, np.uint8)
        rows = []
        for cls, colour in enumerate(((240, 240, 240), (0, 0, 230))):
            side = int(rng.integers(size // 4, size // 2))
            x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
            cv2.rectangle(image, (x0, y0), (x0 + side - 1, y0 + side - 1), colour, -1)
            rows.append(f"{cls} {(x0 + side / 2) / size:.6f} {(y0 + side / 2) / size:.6f} "
                        f"{side / size:.6f} {side / size:.6f}\n")
        path = root / "images" / f"sq{i:03d}.png"
        cv2.imwrite(str(path), image)
        (root / "labels" / f"sq{i:03d}.txt").write_text("".join(rows))
        paths.append(f"{path}\n")
    (root / "list.txt").write_text("".join(paths))
    (root / "sq.names").write_text("white\nred\n")
    data = root / "sq.data"
    data.write_text(f"classes=2\ntrain={root / 'list.txt'}\nvalid={root / 'list.txt'}\nnames={root / 'sq.names'}\n"
                    f"backup={root / 'backup'}\nprefix={prefix}\n")
    cfg = root / "sq.cfg"
    cfg.write_text(TINY_CFG)
    return data, cfg
