"""Fuzzing the C cfg parser and the weights loader with hypothesis.

Mutated cfg text (real cfgs of cfg/, the reference cfg and TINY_CFG, with line and byte mutations, random keys
and values, huge and negative numbers, missing sections) must load or raise a DarknetError, never crash, hang
or raise anything else; a network that loads must run a forward pass. Mutated weights files must load exactly
as SPEC §1.4 says (checked against an independent reading of the file here) or raise WeightsError, and a
rejected file must leave the network unchanged.

Duration: $PYDARKNET_FUZZ_SECONDS in total (default 16), split between the two targets. `make fuzz` runs this
file for 300 s against the library built with AddressSanitizer and UBSan (FUZZ_SECONDS=... to change it).
Run with `-s` to see how many examples were tried.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import struct
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st

from pydarknet import CfgError, DarknetError, Network, WeightsError

from conftest import DATA, ROOT, TINY_CFG

FUZZ_SECONDS = float(os.environ.get("PYDARKNET_FUZZ_SECONDS", "16") or 16)
CFG_SHARE = 0.6                 # of the budget for the cfg parser; the rest for the weights loader
EXAMPLE_TIMEOUT = 180           # seconds for one example before the process is stopped with a traceback
CHUNK = 40                      # examples per hypothesis run; runs repeat until the budget is spent
MAX_PARAMS = 80_000_000         # floats; bigger nets are skipped (yolov3.cfg has 62M): init writes all of them
FORWARD_MAX_FLOATS = 3_000_000  # run a forward pass when the activations are at most this many floats ...
FORWARD_MAX_BFLOPS = 0.2        # ... and the convolutions at most this much work

HYPOTHESIS = dict(deadline=None, database=None, max_examples=CHUNK, derandomize=False, print_blob=True,
                  phases=(Phase.explicit, Phase.generate, Phase.shrink),
                  suppress_health_check=list(HealthCheck))


def run_for(budget: float, target) -> int:
    """Call a @given function (CHUNK examples each) until `budget` seconds have passed; at least once."""
    deadline = time.monotonic() + budget
    runs = 0
    while True:
        target()
        runs += 1
        if time.monotonic() >= deadline:
            return runs


class Watchdog:
    """A hang (an endless loop in C) ends the process with every thread's traceback instead of hanging CI."""

    def __enter__(self):
        faulthandler.dump_traceback_later(EXAMPLE_TIMEOUT, exit=True)

    def __exit__(self, *exc):
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def quiet_log():
    """The C core warns about every unknown key through the log callback; keep the callback, drop the records."""
    logger = logging.getLogger("pydarknet")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


# ---- cfg corpus and mutations -------------------------------------------------------------------------

def _corpus() -> list[tuple[str, bytes]]:
    items = [("TINY_CFG", TINY_CFG.encode())]
    for path in sorted((ROOT / "cfg").glob("*.cfg")):
        items.append((path.name, path.read_bytes()))
    items.append(("reference/yolov3-tiny.cfg", (DATA / "yolov3-tiny.cfg").read_bytes()))
    return items


def _shrunk(text: bytes) -> bytes:
    """The same topology, cheap: 96x96 input and 1/16 of the filters, except the [yolo] heads' convolutions
    (their filters must stay anchors * (5 + classes)). Real cfgs initialise up to 62M parameters; these ~1%."""
    lines = text.decode().splitlines()
    heads = [i for i, line in enumerate(lines) if line.strip().startswith("[")]
    out = list(lines)
    for k, start in enumerate(heads):
        end = heads[k + 1] if k + 1 < len(heads) else len(lines)
        name = lines[start].strip()
        next_name = lines[end].strip() if end < len(lines) else ""
        for i in range(start + 1, end):
            key, _, value = lines[i].replace(" ", "").partition("=")
            if name == "[net]" and key in ("width", "height"):
                out[i] = f"{key}=96"
            elif name == "[convolutional]" and key == "filters" and next_name != "[yolo]":
                out[i] = f"filters={max(1, int(value) // 16)}"
    return "\n".join(out).encode()


def _corpus_all() -> list[tuple[str, bytes]]:
    items = _corpus()
    return items + [(f"{name} (shrunk)", _shrunk(text)) for name, text in items if name != "TINY_CFG"]


CORPUS = _corpus_all()
# Full-size cfgs are slow to load (yolov3: 62M parameters to initialise, a second; more under the sanitizers),
# so the shrunk copies stand in for them and the originals are drawn now and then (yolov3's only in long runs).
_SMALL = [i for i, (name, _) in enumerate(CORPUS) if name == "TINY_CFG" or name.endswith("(shrunk)")]
_MEDIUM = [i for i, (name, text) in enumerate(CORPUS) if i not in _SMALL and b"[shortcut]" not in text]
_LARGE = [i for i in range(len(CORPUS)) if i not in _SMALL and i not in _MEDIUM]
_WEIGHTED = _SMALL * 16 + _MEDIUM * 2 + (_LARGE if FUZZ_SECONDS >= 60 else [])
N_MUTATIONS = [1, 1, 1, 1, 1, 2, 2, 2, 3, 4, 6, 8]

SECTIONS = ["net", "network", "convolutional", "conv", "maxpool", "max", "route", "shortcut", "upsample", "yolo",
            "region", "dropout", "connected", "", "[", "]", "net ", "CONVOLUTIONAL", "yolo]", "a" * 300]
KEYS = ["batch", "subdivisions", "width", "height", "channels", "learning_rate", "momentum", "decay", "burn_in",
        "power", "max_batches", "policy", "steps", "scales", "step", "scale", "gamma", "angle", "saturation",
        "exposure", "hue", "flip", "filters", "size", "stride", "pad", "padding", "groups", "batch_normalize",
        "activation", "layers", "from", "mask", "anchors", "classes", "num", "jitter", "ignore_thresh",
        "truth_thresh", "random", "max", "iou_loss", "iou_normalizer", "cls_normalizer", "representation",
        "unknown_key", "k" * 200, "#key", "[key"]
NUMBERS = ["0", "-0", "-1", "1", "2", "3", "31", "32", "33", "63", "64", "65", "4095", "4096", "4097", "16383",
           "16384", "16385", "65535", "65536", "65537", "2147483647", "2147483648", "-2147483648", "-2147483649",
           "4294967296", "9223372036854775807", "-9223372036854775809", "18446744073709551616", "1" + "0" * 400,
           "1e38", "3.4e38", "3.5e38", "1e39", "-1e39", "1e-45", "1e-400", "nan", "-nan", "inf", "-inf",
           "infinity", "0x10", "0x1p3", "1.5", ".5", "5.", "1e", "1e1", "+3", "--2", "", ",", ",,", "1,,2", "1,",
           ",1", "0.0", "-0.5", "1_000"]
WORDS = ["leaky", "linear", "logistic", "relu", "mish", "swish", "tanh", "selu", "mse", "iou", "giou", "ciou",
         "exp", "lin", "steps", "step", "constant", "poly", "sig", "random", "exp", "", "=", "==", "[net]"]
WHITESPACE = [" ", "\t", "\r", "\v", "\f", "\r\n"]


def _values():
    ints = st.integers(-5, 80).map(str)
    lists = st.lists(st.integers(-30, 40), min_size=0, max_size=24).map(lambda v: ",".join(map(str, v)))
    floats = st.floats(allow_nan=True, allow_infinity=True).map(repr)
    return st.one_of(st.sampled_from(NUMBERS), st.sampled_from(WORDS), ints, lists, floats,
                     st.text(max_size=30), st.just("9" * 5000))


def _lines():
    return st.one_of(
        st.builds(lambda s: f"[{s}]", st.sampled_from(SECTIONS)),
        st.builds(lambda k, sp, v: f"{k}{sp}={sp}{v}", st.sampled_from(KEYS), st.sampled_from(["", " ", "\t"]),
                  _values()),
        st.sampled_from(["#comment", ";comment", "=", "=1", "key", "[net", "net]", "[]", "[ ]", "", "\r", "\x00",
                         "\xff\xfe", "\\", "[yolo]]", "a=b=c"]),
        st.text(max_size=60),
    ).map(lambda s: s.encode("utf-8", "surrogatepass"))


BYTES = st.one_of(st.binary(min_size=1, max_size=16),
                  st.sampled_from([b"\x00", b"\n", b"\r", b"\r\n", b"[", b"]", b"=", b",", b"#", b"-", b"9" * 12,
                                   b"\xff", b"\xc3", b"\t", b" "]))


@st.composite
def _mutation(draw, text: bytes) -> bytes:
    lines = text.split(b"\n")
    pick = lambda seq: draw(st.integers(0, max(len(seq) - 1, 0)))  # noqa: E731
    kind = draw(st.sampled_from(["delete_line", "dup_line", "swap_lines", "insert_line", "set_value",
                                 "set_value", "set_value", "set_key", "delete_section", "truncate", "flip_byte",
                                 "insert_bytes", "delete_bytes", "whitespace", "crlf"]))
    if kind == "delete_line" and lines:
        del lines[pick(lines)]
    elif kind == "dup_line" and lines:
        lines.insert(pick(lines), lines[pick(lines)])
    elif kind == "swap_lines" and len(lines) > 1:
        i, j = pick(lines), pick(lines)
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "insert_line":
        lines.insert(draw(st.integers(0, len(lines))), draw(_lines()))
    elif kind in ("set_value", "set_key"):
        kv = [i for i, line in enumerate(lines) if b"=" in line]
        if kv:
            i = kv[pick(kv)]
            key, value = lines[i].split(b"=", 1)
            if kind == "set_value":
                value = draw(_values()).encode("utf-8", "surrogatepass")
            else:
                key = draw(st.sampled_from(KEYS)).encode()
            lines[i] = key + b"=" + value
    elif kind == "delete_section":
        heads = [i for i, line in enumerate(lines) if line.strip().startswith(b"[")]
        if heads:
            k = pick(heads)
            end = heads[k + 1] if k + 1 < len(heads) else len(lines)
            keep_body = draw(st.booleans())  # drop the header only: its keys join the section above
            del lines[heads[k]: heads[k] + 1 if keep_body else end]
    else:
        data = b"\n".join(lines)
        pos = draw(st.integers(0, len(data)))
        if kind == "truncate":
            data = data[:max(pos, draw(st.integers(1, len(data) + 1)))]
        elif kind == "flip_byte" and data:
            pos = min(pos, len(data) - 1)
            data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1:]
        elif kind == "insert_bytes":
            data = data[:pos] + draw(BYTES) + data[pos:]
        elif kind == "delete_bytes":
            data = data[:pos] + data[pos + draw(st.integers(1, 64)):]
        elif kind == "whitespace":
            data = data[:pos] + draw(st.sampled_from(WHITESPACE)).encode() + data[pos:]
        elif kind == "crlf":
            data = data.replace(b"\n", b"\r\n")
        return data
    return b"\n".join(lines)


@st.composite
def mutated_cfg(draw) -> tuple[str, bytes]:
    name, text = CORPUS[draw(st.sampled_from(_WEIGHTED))]
    if draw(st.integers(0, 19)) == 0:  # now and then a cfg built from scratch
        name, text = "random", b"\n".join(draw(st.lists(_lines(), max_size=40)))
    for _ in range(draw(st.sampled_from(N_MUTATIONS))):
        text = draw(_mutation(text))
    return name, text


# ---- a memory guard for the cfg fuzzer ----------------------------------------------------------------
# Loading a cfg writes every parameter (Darknet's initialisation). A mutated cfg can describe a net of many GB
# (one `size=64` on yolov3-tiny's 1024-filter layer is 8 GB), which is a legitimate load on a big machine but
# not something to do by the thousand on a shared one. The bound below follows the channels through the layers
# the way the SPEC describes; it over-estimates rather than under-estimates.

def _num(value: bytes | None):
    if value is None:
        return None
    s = value.decode("latin-1")
    if "_" in s:
        return None
    for parse in (lambda t: int(t, 10), float, float.fromhex):
        try:
            x = parse(s)
        except (ValueError, OverflowError):
            continue
        if isinstance(x, float) and (x != x or abs(x) == float("inf") or x != int(x)):
            return None
        return int(x)
    return None


def _sections(text: bytes):
    sections = []
    for raw in text.split(b"\n"):
        line = raw.translate(None, b" \t\n\v\f\r")
        if not line or line[:1] in (b"#", b";"):
            continue
        if line[:1] == b"[":
            sections.append((line[1:-1].decode("latin-1"), {}))
        elif b"=" in line and sections:
            key, value = line.split(b"=", 1)
            sections[-1][1].setdefault(key.decode("latin-1"), value)
    return sections


def params_bound(text: bytes) -> int:
    sections = _sections(text)
    if not sections:
        return 0
    channels = _num(sections[0][1].get("channels"))
    if channels is None or not 1 <= channels <= 4096:
        return 0
    out_c: list[int] = []
    total = 0
    for index, (name, opts) in enumerate(sections[1:]):
        cin = out_c[-1] if out_c else channels
        if name in ("convolutional", "conv"):
            filters, size = _num(opts.get("filters")), _num(opts.get("size"))
            groups = _num(opts.get("groups", b"1")) or 1
            if filters is None or size is None or not (1 <= filters <= 65536 and 1 <= size <= 64):
                return total  # the load stops here with an error, before any parameter is written
            total += filters * 4 + filters * max(cin // max(groups, 1), 1) * size * size
            out_c.append(filters)
        elif name == "route":
            refs = [_num(v) for v in (opts.get("layers") or b"").split(b",") if v]
            if not refs or None in refs or len(refs) > 4:
                return total
            srcs = [index + r if r < 0 else r for r in refs]
            if any(not 0 <= s < index for s in srcs):
                return total
            out_c.append(sum(out_c[s] for s in srcs))
        elif name in ("maxpool", "max", "shortcut", "upsample", "yolo"):
            out_c.append(cin)
        else:
            return total
    return total


# ---- the cfg target -----------------------------------------------------------------------------------

def test_fuzz_cfg(tmp_path, quiet_log):
    path = tmp_path / "fuzz.cfg"
    stats: Counter = Counter()

    @settings(**HYPOTHESIS)
    @given(mutated_cfg())
    def target(case):
        name, text = case
        if params_bound(text) > MAX_PARAMS:
            stats["skipped (too big to initialise here)"] += 1
            reject()
        path.write_bytes(text)
        stats["examples"] += 1
        with Watchdog():
            try:
                net = Network(path)
            except CfgError as exc:
                stats["CfgError"] += 1
                assert isinstance(exc, ValueError)
                assert str(path) in str(exc), f"the message does not name the file: {exc}"
                return
            except MemoryError:
                stats["MemoryError (a valid but huge net)"] += 1
                return
            except DarknetError as exc:
                stats[type(exc).__name__] += 1
                return
            with net:
                stats["loaded"] += 1
                exercise(net, stats)

    run_for(FUZZ_SECONDS * CFG_SHARE, target)
    print(f"\ncfg fuzz ({FUZZ_SECONDS * CFG_SHARE:.0f} s): {dict(stats)}")
    assert stats["examples"] > 0


def exercise(net: Network, stats: Counter) -> None:
    """A network that loaded must describe itself consistently and run."""
    layers = net.layers
    assert len(layers) >= 1 and net.n_params == sum(l.n_params for l in layers)
    assert net.summary().splitlines()[-1].startswith("Total BFLOPS")
    floats = sum(int(np.prod(l.output_shape)) for l in layers) + net.width * net.height * net.channels
    if floats > FORWARD_MAX_FLOATS or net.bflops > FORWARD_MAX_BFLOPS:
        return
    x = np.random.default_rng(0).random((1, net.channels, net.height, net.width), dtype=np.float32)
    outs = net.forward(x)
    assert len(outs) == len(net.yolo_layers)
    for out, layer in zip(outs, net.yolo_layers):
        w, h, c = layer.output_shape
        assert out.shape == (1, c, h, w)
    stats["forward"] += 1
    # a second size: reshaping every layer is where shapes and buffers can disagree
    try:
        net.resize(net.width * 2, net.height * 2)
    except (DarknetError, ValueError):
        stats["resize rejected"] += 1
        return
    if sum(int(np.prod(l.output_shape)) for l in net.layers) <= FORWARD_MAX_FLOATS:
        x = np.random.default_rng(1).random((2, net.channels, net.height, net.width), dtype=np.float32)
        outs = net.forward(x)
        assert [o.shape[0] for o in outs] == [2] * len(net.yolo_layers)
        stats["forward after resize"] += 1


# ---- the weights target -------------------------------------------------------------------------------

# Parameters per layer of TINY_CFG in file order (conv: biases f, BN 3f, weights f*c*size*size), by hand as in
# test_weights.py; layer index -> count.
TINY_LAYER_PARAMS = {0: 8 * 4 + 8 * 3 * 9, 2: 16 * 4 + 16 * 8 * 9, 3: 8 * 4 + 8 * 16, 4: 16 * 4 + 16 * 8 * 9,
                     5: 16 * 4 + 16 * 16 * 9, 7: 21 + 21 * 16, 10: 8 * 4 + 8 * 16, 13: 21 + 21 * 24}
TINY_TOTAL = sum(TINY_LAYER_PARAMS.values())
# (floats in a file that stops after layer i, layers_loaded) for every layer boundary, 0 included
BOUNDARIES = {0: 0}
_n = 0
for _i, _count in TINY_LAYER_PARAMS.items():
    _n += _count
    BOUNDARIES[_n] = _i + 1
VERSIONS = [0, 1, 2, 3, 9, 10, 999, 1000, 1001, 65536, 2**31 - 1, -1, -2, -2**31, 214748364, 214748365]


def expected_load(data: bytes):
    """SPEC §1.4, read independently: (seen, params, layers_loaded) or None when the file must be rejected."""
    if len(data) < 12:
        return None
    major, minor, revision = struct.unpack_from("<iii", data)
    if major < 0 or minor < 0 or revision < 0:
        return "either"  # not a Darknet file; the SPEC is silent, rejecting and loading are both fine
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        header, fmt = 20, "<Q"
    else:
        header, fmt = 16, "<I"
    if len(data) < header:
        return None
    payload = len(data) - header
    if payload == 0 or payload % 4 or payload // 4 not in BOUNDARIES:
        return None  # a header only fills no layer: an error, like a file that ends inside a layer
    seen = struct.unpack_from(fmt, data, 12)[0]
    params = np.frombuffer(data, "<f4", offset=header).astype(np.float32)
    return seen, params, BOUNDARIES[payload // 4]


@st.composite
def mutated_weights(draw) -> bytes:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from(sorted(BOUNDARIES)))  # a valid file: full or partial
    params = rng.normal(0, 1, n).astype("<f4").tobytes()
    if draw(st.booleans()):
        data = struct.pack("<iiiQ", 0, 2, 0, draw(st.integers(0, 2**64 - 1))) + params
    else:
        data = struct.pack("<iiiI", 0, 1, 0, draw(st.integers(0, 2**32 - 1))) + params
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["truncate", "truncate_near_boundary", "append", "append_layer", "version",
                                     "flip", "insert", "delete", "empty"]))
        if kind == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
        elif kind == "truncate_near_boundary":
            header = 20 if data[4:8] == struct.pack("<i", 2) else 16
            cut = header + 4 * draw(st.sampled_from(sorted(BOUNDARIES))) + draw(st.integers(-5, 5))
            data = data[:max(cut, 0)]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == "append_layer":
            data += bytes(4 * draw(st.sampled_from(list(TINY_LAYER_PARAMS.values()) + [1, TINY_TOTAL])))
        elif kind == "version" and len(data) >= 12:
            field = draw(st.integers(0, 2))
            data = data[:4 * field] + struct.pack("<i", draw(st.sampled_from(VERSIONS))) + data[4 * field + 4:]
        elif kind == "flip" and data:
            pos = draw(st.integers(0, len(data) - 1))
            data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1:]
        elif kind == "insert":
            pos = draw(st.integers(0, len(data)))
            data = data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:]
        elif kind == "delete" and data:
            pos = draw(st.integers(0, len(data) - 1))
            data = data[:pos] + data[pos + draw(st.integers(1, 8)):]
        elif kind == "empty":
            data = b""
    return data


def test_tiny_param_counts_match(tiny_cfg):
    with Network(tiny_cfg) as net:
        assert {l.index: l.n_params for l in net.layers if l.n_params} == TINY_LAYER_PARAMS


def test_fuzz_weights(tiny_cfg, tmp_path, quiet_log):
    path = tmp_path / "fuzz.weights"
    stats: Counter = Counter()
    net = Network(tiny_cfg)
    x = np.random.default_rng(2).random((1, 3, 64, 64), dtype=np.float32)

    @settings(**HYPOTHESIS)
    @given(mutated_weights())
    def target(data):
        path.write_bytes(data)
        expected = expected_load(data)
        before, seen_before = net.params(), net.seen
        stats["examples"] += 1
        with Watchdog():
            try:
                loaded = net.load_weights(path)
            except WeightsError as exc:
                assert expected in (None, "either"), f"a valid file was rejected: {exc}"
                assert isinstance(exc, OSError) and str(path) in str(exc)
                # a rejected file changes nothing
                np.testing.assert_array_equal(net.params().view(np.uint32), before.view(np.uint32))
                assert net.seen == seen_before
                stats["WeightsError"] += 1
                return
            assert expected is not None, f"a malformed file of {len(data)} bytes was accepted"
            stats["loaded"] += 1
            if expected == "either":
                return
            seen, params, layers = expected
            assert net.seen == seen and loaded == layers
            after = net.params()
            np.testing.assert_array_equal(after[:params.size].view(np.uint32), params.view(np.uint32))
            np.testing.assert_array_equal(after[params.size:].view(np.uint32), before[params.size:].view(np.uint32))
            outs = net.forward(x)  # any float values, NaN included, are computed with, never crashed on
            assert [o.shape for o in outs] == [(1, 21, 8, 8), (1, 21, 16, 16)]

    try:
        run_for(FUZZ_SECONDS * (1 - CFG_SHARE), target)
    finally:
        net.close()
    print(f"\nweights fuzz ({FUZZ_SECONDS * (1 - CFG_SHARE):.0f} s): {dict(stats)}")
    assert stats["loaded"] > 0 and stats["WeightsError"] > 0


# ---- edges the fuzzers found or aim at, as fixed cases ------------------------------------------------

@pytest.mark.parametrize("major, minor, seen_bits", [
    (0, 2, 64), (0, 1, 32), (1, 0, 64), (999, 999, 64), (1000, 0, 32), (0, 1000, 32), (1001, 5, 32),
    (214748364, 7, 32), (214748365, 0, 32), (2**31 - 1, 2**31 - 1, 32)])  # major*10 overflowed an int here
def test_weights_header_versions(tiny_cfg, tmp_path, major, minor, seen_bits):
    """Darknet's rule: a 64-bit seen when major*10 + minor >= 2 and both are below 1000, else 32 bits."""
    params = np.random.default_rng(7).normal(0, 1, TINY_TOTAL).astype("<f4")
    seen = 3_000_000_000 if seen_bits == 32 else 2**40 + 5
    path = tmp_path / "v.weights"
    path.write_bytes(struct.pack("<iii", major, minor, 0) + struct.pack("<Q" if seen_bits == 64 else "<I", seen)
                     + params.tobytes())
    with Network(tiny_cfg, path) as net:
        assert net.seen == seen and net.version == (major, minor, 0)
        np.testing.assert_array_equal(net.params(), params)


@pytest.mark.parametrize("value, expected", [
    ("2", 2), ("2.0", 2), ("+3", 3), ("2147483647", 2147483647),
    ("2147483648", None), ("-2147483649", None), ("2147483648.0", None), ("1e38", None), ("-1e20", None),
    ("3.5e38", None), ("2.5", None), ("nan", None), ("inf", None), ("1_0", None)])
def test_integer_key_edges(tmp_path, value, expected):
    """An integer key takes integral numbers in float notation too; anything that is not an int32 is an error
    naming the key (converting an out-of-range float to int was undefined behaviour in C)."""
    path = tmp_path / "edge.cfg"
    # max_batches: an integer key without a range of its own (batch= is limited to 1..65536)
    path.write_text(TINY_CFG.replace("max_batches=100\n", f"max_batches={value}\n", 1))
    lineno = TINY_CFG.splitlines().index("max_batches=100") + 1
    if expected is None:
        with pytest.raises(CfgError, match="'max_batches'") as info:
            Network(path)
        assert f"{path}:{lineno}:" in str(info.value)
    else:
        with Network(path) as net:
            assert net.options["max_batches"] == expected


# ---- the libFuzzer harnesses' regression inputs (tests/fuzz/regressions/), through the Python API -----------

LIBFUZZER_CFG_REGRESSIONS = sorted((ROOT / "tests" / "fuzz" / "regressions" / "cfg").glob("*"))


@pytest.mark.parametrize("path", LIBFUZZER_CFG_REGRESSIONS, ids=lambda p: p.name)
def test_libfuzzer_cfg_regressions(path, quiet_log):
    """Each was a finding of `make fuzz-c` or of issue 14: with the harness's memory limit it loads and runs a
    forward pass, or is a CfgError naming the file. (`make fuzz-regress` runs them under clang's sanitizers,
    which also catch the undefined behaviour gcc's miss, as in winograd-top-padding-ub.cfg.)"""
    try:
        net = Network(path, memory_limit=16 << 20)
    except CfgError as exc:
        assert str(path) in str(exc)
        return
    with net:
        x = np.random.default_rng(0).random((1, net.channels, net.height, net.width), dtype=np.float32)
        net.forward(x)
        assert np.isfinite(net.layer_output(len(net.layers) - 1)).all()


@pytest.mark.parametrize("name, section_line", [("upsample-side-overflow.cfg", 5), ("route-channels-overflow.cfg", 12)])
def test_oversized_layer_output_is_a_cfg_error(name, section_line):
    """Three [upsample] stride=64 after a 16384-wide input, or routes that keep quadrupling 65536 channels, used to
    overflow int arithmetic in the layer's shape (clang's UBSan); now the first layer past the limits is named."""
    path = ROOT / "tests" / "fuzz" / "regressions" / "cfg" / name
    with pytest.raises(CfgError, match="oversized output") as info:
        Network(path)
    assert f"{path}:{section_line}:" in str(info.value)
