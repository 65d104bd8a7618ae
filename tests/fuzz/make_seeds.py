"""Writes the seed corpus of the libFuzzer harnesses (tests/fuzz/seeds/): small cfgs of every shape the
project ships, and weights files for the fixed network of fuzz_weights.c. Run from the repository root:
`python tests/fuzz/make_seeds.py`; the output is committed, so this only needs running when the seeds change."""
from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from conftest import TINY_CFG  # noqa: E402


def shrunk(text: str, side: int = 32, divide: int = 16) -> str:
    """The same topology, cheap: a side x side input and 1/divide of the filters, except before a [yolo] (whose
    filters must stay anchors * (5 + classes)). Fast enough for the fuzzer to run forward and backward."""
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if line.strip().startswith("[")]
    out = list(lines)
    for k, start in enumerate(heads):
        end = heads[k + 1] if k + 1 < len(heads) else len(lines)
        name = lines[start].strip()
        next_name = lines[end].strip() if end < len(lines) else ""
        for i in range(start + 1, end):
            key, _, value = lines[i].replace(" ", "").partition("=")
            if name == "[net]" and key in ("width", "height"):
                out[i] = f"{key}={side}"
            elif name == "[net]" and key in ("batch", "subdivisions"):
                out[i] = f"{key}=1"
            elif name == "[convolutional]" and key == "filters" and next_name != "[yolo]":
                out[i] = f"filters={max(1, int(value) // divide)}"
    return "\n".join(out) + "\n"


def network_params() -> tuple[int, list[int]]:
    """Parameters of fuzz_weights.c's fixed network, counted by the library from the cfg in that file."""
    source = (HERE / "fuzz_weights.c").read_text()
    block = source[source.index("NETWORK_CFG[] ="):]
    block = block[:block.index(";")]
    cfg = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', block)).encode().decode("unicode_escape")
    from pydarknet import Network
    path = HERE / "seeds" / ".network.cfg"
    path.write_text(cfg)
    try:
        with Network(path) as net:
            return sum(layer.n_params for layer in net.layers), [l.n_params for l in net.layers if l.n_params]
    finally:
        path.unlink()


def main() -> None:
    cfg_dir, weights_dir = HERE / "seeds" / "cfg", HERE / "seeds" / "weights"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    weights_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "tiny.cfg").write_text(shrunk(TINY_CFG, side=16, divide=1))
    for path in sorted((ROOT / "cfg").glob("*.cfg")):
        (cfg_dir / f"{path.stem}-shrunk.cfg").write_text(shrunk(path.read_text()))

    total, sizes = network_params()
    rng = np.random.default_rng(0)
    params = rng.normal(0, 0.5, total).astype("<f4").tobytes()
    first = sizes[0] * 4
    seeds = {
        "full-0.2.0.weights": struct.pack("<iiiQ", 0, 2, 0, 64_000) + params,
        "full-0.1.0.weights": struct.pack("<iiiI", 0, 1, 0, 640) + params,
        "full-0.2.5.weights": struct.pack("<iiiQ", 0, 2, 5, 2**40) + params,
        "transposed-1001.weights": struct.pack("<iiiI", 1001, 2, 0, 7) + params,
        "first-layer.weights": struct.pack("<iiiQ", 0, 2, 0, 1) + params[:first],
        "two-layers.weights": struct.pack("<iiiQ", 0, 2, 0, 1) + params[:(sizes[0] + sizes[1]) * 4],
    }
    for name, data in seeds.items():
        (weights_dir / name).write_bytes(data)
    print(f"{len(list(cfg_dir.iterdir()))} cfg seeds, {len(seeds)} weights seeds ({total} parameters)")


if __name__ == "__main__":
    main()
