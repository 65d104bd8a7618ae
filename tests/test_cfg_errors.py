"""Malformed .cfg files give a CfgError naming file, line and key; harmless variations load as the clean file."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from pydarknet import CfgError, DarknetError, Network

from conftest import TINY_CFG

LINES = TINY_CFG.splitlines()


def line_of(text: str, needle: str, start: int = 1) -> int:
    """1-based number of the first line at or after `start` that equals `needle`."""
    for i, line in enumerate(text.splitlines()[start - 1:], start):
        if line == needle:
            return i
    raise AssertionError(f"{needle!r} not in the cfg")


def write(tmp_path, text: str, name: str = "bad.cfg"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def load_error(path) -> str:
    with pytest.raises(CfgError) as info:
        Network(path)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, DarknetError)
    message = str(err)
    assert str(path) in message, message
    return message


def replace_line(text: str, lineno: int, new: str | None) -> str:
    lines = text.splitlines()
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    return "\n".join(lines) + "\n"


# The second [convolutional] section (layer 2) and its lines.
CONV2 = line_of(TINY_CFG, "[convolutional]", line_of(TINY_CFG, "[maxpool]"))
CONV2_FILTERS = line_of(TINY_CFG, "filters=16", CONV2)
CONV2_SIZE = line_of(TINY_CFG, "size=3", CONV2)


def test_unknown_section(tmp_path):
    text = replace_line(TINY_CFG, CONV2, "[convolution]")
    message = load_error(write(tmp_path, text))
    assert f":{CONV2}:" in message and "convolution" in message and "unknown section" in message


def test_bad_number(tmp_path):
    text = replace_line(TINY_CFG, CONV2_FILTERS, "filters=abc")
    message = load_error(write(tmp_path, text))
    assert f":{CONV2_FILTERS}:" in message and "'filters'" in message and "abc" in message


@pytest.mark.parametrize("value", ["3.5", "1e", "--2", "12abc", "nan", "1,2"])
def test_bad_integer_forms(tmp_path, value):
    text = replace_line(TINY_CFG, CONV2_SIZE, f"size={value}")
    message = load_error(write(tmp_path, text))
    assert f":{CONV2_SIZE}:" in message and "'size'" in message


def test_bad_float(tmp_path):
    lineno = line_of(TINY_CFG, "momentum=0.9")
    message = load_error(write(tmp_path, replace_line(TINY_CFG, lineno, "momentum=0.9.1")))
    assert f":{lineno}:" in message and "'momentum'" in message


def test_bad_list_value(tmp_path):
    lineno = line_of(TINY_CFG, "mask=3,4,5")
    message = load_error(write(tmp_path, replace_line(TINY_CFG, lineno, "mask=3,x,5")))
    assert f":{lineno}:" in message and "'mask'" in message


@pytest.mark.parametrize("key", ["filters", "size"])
def test_missing_required_conv_key(tmp_path, key):
    lineno = CONV2_FILTERS if key == "filters" else CONV2_SIZE
    text = replace_line(TINY_CFG, lineno, None)
    message = load_error(write(tmp_path, text))
    # A missing key has no line of its own: the message gives the section's line.
    assert f":{CONV2}:" in message and f"'{key}'" in message and "missing" in message


@pytest.mark.parametrize("net_key", ["width", "height", "channels"])
def test_missing_required_net_key(tmp_path, net_key):
    lineno = line_of(TINY_CFG, f"{net_key}=" + ("3" if net_key == "channels" else "64"))
    message = load_error(write(tmp_path, replace_line(TINY_CFG, lineno, None)))
    assert ":1:" in message and f"'{net_key}'" in message


@pytest.mark.parametrize("key, value", [
    ("batch", "2000000000"), ("batch", "0"), ("subdivisions", "0"), ("subdivisions", "70000"), ("width", "0"),
    ("width", "16385"), ("height", "0"), ("height", "-64"), ("channels", "0"), ("channels", "5000")])
def test_net_key_out_of_range_names_its_own_line(tmp_path, key, value):
    """Rejected at load (batch=2000000000 used to load and fail only when training started), at the line of
    the key itself rather than the [net] line."""
    original = {"batch": "4", "subdivisions": "2", "width": "64", "height": "64", "channels": "3"}[key]
    lineno = line_of(TINY_CFG, f"{key}={original}")
    assert lineno > 1
    message = load_error(write(tmp_path, replace_line(TINY_CFG, lineno, f"{key}={value}")))
    assert f":{lineno}:" in message and f"'{key}'" in message and value in message and "out of range" in message


@pytest.mark.parametrize("ref", ["-20", "99", "9", "-1,50"])
def test_route_to_missing_layer(tmp_path, ref):
    lineno = line_of(TINY_CFG, "layers=-3")  # the route at layer 9
    message = load_error(write(tmp_path, replace_line(TINY_CFG, lineno, f"layers={ref}")))
    assert "'layers'" in message and "does not exist" in message
    route_section = lineno - 1
    assert f":{route_section}:" in message


def test_route_without_layers(tmp_path):
    lineno = line_of(TINY_CFG, "layers=-3")
    message = load_error(write(tmp_path, replace_line(TINY_CFG, lineno, None)))
    assert "'layers'" in message and f":{lineno - 1}:" in message


def test_shortcut_to_missing_layer(tmp_path):
    lineno = line_of(TINY_CFG, "from=-2")
    message = load_error(write(tmp_path, replace_line(TINY_CFG, lineno, "from=-40")))
    assert "'from'" in message and f":{lineno - 1}:" in message


def test_first_section_not_net(tmp_path):
    text = "\n".join(LINES[line_of(TINY_CFG, "[convolutional]") - 1:]) + "\n"
    message = load_error(write(tmp_path, text))
    assert ":1:" in message and "[net]" in message


def test_net_twice(tmp_path):
    text = TINY_CFG + "\n[net]\nwidth=64\nheight=64\nchannels=3\n"
    message = load_error(write(tmp_path, text))
    assert "[net]" in message


@pytest.mark.parametrize("garbage", ["this is not a key value", "[unclosed", "=5"])
def test_line_that_is_neither_section_nor_key_value(tmp_path, garbage):
    lineno = CONV2_SIZE + 1
    lines = TINY_CFG.splitlines()
    lines.insert(lineno - 1, garbage)
    message = load_error(write(tmp_path, "\n".join(lines) + "\n"))
    assert f":{lineno}:" in message


def test_key_before_first_section(tmp_path):
    message = load_error(write(tmp_path, "width=5\n" + TINY_CFG))
    assert ":1:" in message and "width" in message


def test_empty_and_comment_only_files(tmp_path):
    for text in ("", "\n\n", "# nothing\n; here\n"):
        load_error(write(tmp_path, text))


def test_yolo_filters_mismatch_names_the_fix(tmp_path):
    lineno = line_of(TINY_CFG, "classes=2")
    message = load_error(write(tmp_path, replace_line(TINY_CFG, lineno, "classes=3")))
    assert "filters=24" in message


def test_unknown_activation_and_loss(tmp_path):
    lineno = line_of(TINY_CFG, "activation=leaky")
    message = load_error(write(tmp_path, replace_line(TINY_CFG, lineno, "activation=leakyy")))
    assert f":{lineno}:" in message and "'activation'" in message
    lines = TINY_CFG.splitlines()
    yolo = line_of(TINY_CFG, "[yolo]")
    lines.insert(yolo, "iou_loss=ciou")
    message = load_error(write(tmp_path, "\n".join(lines) + "\n"))
    assert f":{yolo + 1}:" in message and "'iou_loss'" in message


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.cfg"):
        Network(tmp_path / "absent.cfg")


def test_binary_file_is_a_cfg_error(tmp_path):
    path = tmp_path / "binary.cfg"
    path.write_bytes(b"[net]\nwidth=64\x00\x01\x02\n")
    message = load_error(path)
    assert ":2:" in message


# ---- variations that must load as the clean file ---------------------------------------------------------

def messy(text: str) -> str:
    """CRLF endings, `#` and `;` comments, blank lines, and spaces around `=` and inside values."""
    out = ["# a comment before [net]", "; and another", ""]
    for i, line in enumerate(text.splitlines()):
        if "=" in line:
            key, value = line.split("=", 1)
            line = f"  {key} =  {value.replace(',', ' , ')}\t"
            if i % 3 == 0:
                out.append("#" + line)  # a commented-out duplicate must be ignored
        elif line.startswith("["):
            out.append(";;; section " + line)
            line = " " + line + " "
        out.append(line)
        if i % 5 == 0:
            out.append("   ")
    return "\r\n".join(out) + "\r\n"


def same_network(a: Network, b: Network) -> None:
    assert a.layers == b.layers
    assert a.options == b.options
    assert a.n_params == b.n_params
    np.testing.assert_array_equal(a.params(), b.params())
    x = np.random.default_rng(0).uniform(0, 1, (1, a.channels, a.height, a.width)).astype(np.float32)
    for ya, yb in zip(a.forward(x), b.forward(x)):
        np.testing.assert_array_equal(ya, yb)


def test_crlf_comments_and_spacing_load_like_the_clean_file(tmp_path):
    clean = write(tmp_path, TINY_CFG, "clean.cfg")
    dirty_text = messy(TINY_CFG)
    assert "\r\n" in dirty_text and " = " in dirty_text
    dirty = write(tmp_path, dirty_text, "dirty.cfg")
    with Network(clean) as a, Network(dirty) as b:
        same_network(a, b)
        assert [l.output_shape for l in b.yolo_layers] == [(8, 8, 21), (16, 16, 21)]


def test_real_cfgs_with_crlf_load_alike(tmp_path, reference_dir):
    text = (reference_dir / "yolov3-tiny.cfg").read_text()
    clean = write(tmp_path, text, "clean.cfg")
    dirty = write(tmp_path, messy(text), "dirty.cfg")
    with Network(clean) as a, Network(dirty) as b:
        assert a.layers == b.layers and a.options == b.options
        assert a.options["steps"] == [400000, 450000] and a.options["saturation"] == pytest.approx(1.5)


def test_aliases(tmp_path):
    text = TINY_CFG.replace("[net]", "[network]").replace("[convolutional]", "[conv]").replace("[maxpool]", "[max]")
    with Network(write(tmp_path, TINY_CFG, "clean.cfg")) as a, Network(write(tmp_path, text, "alias.cfg")) as b:
        same_network(a, b)


def test_first_value_of_a_repeated_key_wins(tmp_path):
    lines = TINY_CFG.splitlines()
    lines.insert(CONV2_FILTERS, "filters=32")  # after filters=16
    with Network(write(tmp_path, "\n".join(lines) + "\n")) as net:
        assert net.layers[2].filters == 16


def test_unused_key_is_a_warning(tmp_path, caplog):
    lines = TINY_CFG.splitlines()
    lines.insert(CONV2_FILTERS, "filterz=32")
    path = write(tmp_path, "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="pydarknet"):
        with Network(path) as net:
            assert net.layers[2].filters == 16
    warnings = [r for r in caplog.records if r.name == "pydarknet" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    message = warnings[0].getMessage()
    assert "filterz" in message and f":{CONV2_FILTERS + 1}:" in message and str(path) in message


def test_clean_cfg_logs_no_warning(tiny_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="pydarknet"):
        Network(tiny_cfg).close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_shipped_cfgs_load_without_warnings(caplog):
    from conftest import ROOT

    with caplog.at_level(logging.WARNING, logger="pydarknet"):
        for name in ("yolov3-tiny.cfg", "yolov3-tiny-giou.cfg"):
            with Network(ROOT / "cfg" / name) as net:
                assert len(net.layers) == 24
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
