""".weights files (SPEC §1.4): round trips, partial files, the `seen` header field, and broken files."""
from __future__ import annotations

import logging
import struct

import numpy as np
import pytest

from pydarknet import DarknetError, Network, WeightsError

from conftest import TINY_CFG

# Parameters per layer of TINY_CFG in file order, computed from the cfg by hand:
# conv: biases f, BN scales/mean/var 3f when batch_normalize, weights f * c * size * size.
TINY_CONVS = [  # (layer index, filters, input channels, size, batch_normalize)
    (0, 8, 3, 3, 1), (2, 16, 8, 3, 1), (3, 8, 16, 1, 1), (4, 16, 8, 3, 1), (5, 16, 16, 3, 1),
    (7, 21, 16, 1, 0), (10, 8, 16, 1, 1), (13, 21, 24, 1, 0),
]


def conv_floats(f, c, size, bn):
    return f * (4 if bn else 1) + f * c * size * size


TINY_SIZES = [conv_floats(f, c, s, bn) for _, f, c, s, bn in TINY_CONVS]
TINY_TOTAL = sum(TINY_SIZES)


def header(major=0, minor=2, revision=0, seen=0, seen_bits=64) -> bytes:
    return struct.pack("<iii", major, minor, revision) + struct.pack("<Q" if seen_bits == 64 else "<I", seen)


def random_params(n, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, n).astype("<f4")


def write(path, *parts) -> None:
    with open(path, "wb") as f:
        for p in parts:
            f.write(p if isinstance(p, bytes) else np.asarray(p, "<f4").tobytes())


def test_tiny_cfg_size_matches_hand_count(tiny_cfg):
    with Network(tiny_cfg) as net:
        assert net.n_params == TINY_TOTAL == 6250
        assert [l.n_params for l in net.layers if l.n_params] == TINY_SIZES


def test_load_exact_values_and_header(tiny_cfg, tmp_path):
    params = random_params(TINY_TOTAL, 1)
    path = tmp_path / "a.weights"
    write(path, header(0, 2, 5, seen=123456789012), params)
    with Network(tiny_cfg, path) as net:
        # Counted up to the last layer whose parameters were read (conv 13; the [yolo] after it has none).
        assert net.layers_loaded == 14
        assert net.seen == 123456789012
        assert net.version == (0, 2, 5)
        np.testing.assert_array_equal(net.params(), params)
        # The first conv's biases are the file's first floats; its weights follow biases and BN arrays.
        f = 8
        np.testing.assert_array_equal(net.params()[:f], params[:f])


def test_save_load_save_byte_identical(tiny_cfg, tmp_path):
    with Network(tiny_cfg) as net:
        net.set_params(random_params(TINY_TOTAL, 2))
        net.seen = 2**40 + 3
        first = tmp_path / "first.weights"
        net.save(first)
    data = first.read_bytes()
    assert data[:20] == header(0, 2, 0, seen=2**40 + 3)
    assert len(data) == 20 + 4 * TINY_TOTAL
    np.testing.assert_array_equal(np.frombuffer(data[20:], "<f4"), random_params(TINY_TOTAL, 2))
    with Network(tiny_cfg, first) as net:
        second = tmp_path / "second.weights"
        net.save(second)
    assert second.read_bytes() == data
    assert not (tmp_path / "second.weights.tmp").exists()


def test_real_weights_round_trip_byte_identical(reference_dir, tmp_path):
    original = reference_dir / "yolov3-tiny.weights"
    if not original.is_file():
        pytest.skip(f"{original} is absent")
    with Network(reference_dir / "yolov3-tiny.cfg", original) as net:
        assert net.layers_loaded == 23  # up to the last conv (22); the final [yolo] has no parameters
        assert net.version == (0, 2, 0)
        copy = tmp_path / "copy.weights"
        net.save(copy)
    # Header 0.2.0 with a 64-bit seen, the same parameters: the very same bytes.
    assert copy.read_bytes() == original.read_bytes()


def test_partial_file_loads_first_layers_rest_keep_init(tiny_cfg, tmp_path):
    with Network(tiny_cfg) as fresh:
        init = fresh.params()
    for k in (1, 3, 5):  # the first k conv layers, like darknet53.conv.74
        n = sum(TINY_SIZES[:k])
        params = random_params(n, 3)
        path = tmp_path / f"conv.{k}.weights"
        write(path, header(seen=640), params)
        with Network(tiny_cfg, path) as net:
            assert net.layers_loaded == TINY_CONVS[k - 1][0] + 1
            assert net.seen == 640
            got = net.params()
            np.testing.assert_array_equal(got[:n], params)
            np.testing.assert_array_equal(got[n:], init[n:])


def test_partial_file_logs_how_many_layers_it_filled(tiny_cfg, tmp_path, caplog):
    path = tmp_path / "conv.3.weights"
    write(path, header(), random_params(sum(TINY_SIZES[:3]), 3))
    with caplog.at_level(logging.INFO, logger="pydarknet"), Network(tiny_cfg, path):
        pass
    messages = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert any(f"filled 3 of the {len(TINY_SIZES)} layers with parameters" in m for m in messages), messages


@pytest.mark.parametrize("seen_bits", [64, 32])
def test_header_only_file_fills_no_layer_and_is_an_error(tiny_cfg, tmp_path, seen_bits):
    """A 20-byte file (16 with a 32-bit seen) used to load as 'layers 0..-1' and leave random weights."""
    path = tmp_path / "empty.weights"
    path.write_bytes(header(0, 2 if seen_bits == 64 else 1, 0, seen=5, seen_bits=seen_bits))
    assert path.stat().st_size == (20 if seen_bits == 64 else 16)
    with pytest.raises(WeightsError) as info:
        Network(tiny_cfg, path)
    message = str(info.value)
    assert str(path) in message and "fills no layer" in message


@pytest.mark.parametrize("version", [(7, 3, 0), (1, 0, 0), (0, 9, 0)])
def test_version_beyond_any_format_says_so(tiny_cfg, tmp_path, version):
    """Such a header whose rest does not fit the cfg is named as the likely cause (the message used to say
    only 'the file is longer than the network')."""
    path = tmp_path / "future.weights"
    write(path, header(*version), random_params(100, 9))
    with pytest.raises(WeightsError) as info:
        Network(tiny_cfg, path)
    message = str(info.value)
    assert str(path) in message and "version %d.%d.%d is beyond any weights format" % version in message


def test_version_beyond_any_format_loads_when_it_fits(tiny_cfg, tmp_path, caplog):
    """Darknet reads any version; a file whose size fits the cfg exactly still loads, with a warning."""
    path = tmp_path / "future.weights"
    params = random_params(TINY_TOTAL, 10)
    write(path, header(7, 3, 0), params)
    with caplog.at_level(logging.WARNING, logger="pydarknet"), Network(tiny_cfg, path) as net:
        np.testing.assert_array_equal(net.params(), params)
    assert any("beyond any weights format" in r.getMessage() for r in caplog.records)


def test_partial_real_weights(reference_dir, tmp_path, caplog):
    """yolov3-tiny.conv.15-style: the real file cut after layer 14 (its first nine convolutions)."""
    original = reference_dir / "yolov3-tiny.weights"
    if not original.is_file():
        pytest.skip(f"{original} is absent")
    # yolov3-tiny's first 15 layers: conv 16,32,64,128,256,512 (each 3x3 BN, before a maxpool), then
    # conv 1024 3x3, conv 256 1x1, conv 512 3x3 (all BN). Channel counts by hand.
    convs = [(16, 3, 3), (32, 16, 3), (64, 32, 3), (128, 64, 3), (256, 128, 3), (512, 256, 3),
             (1024, 512, 3), (256, 1024, 1), (512, 256, 3)]
    n = sum(conv_floats(f, c, s, 1) for f, c, s in convs)
    partial = tmp_path / "yolov3-tiny.conv.15"
    partial.write_bytes(original.read_bytes()[:20 + 4 * n])
    cfg = reference_dir / "yolov3-tiny.cfg"
    with caplog.at_level(logging.INFO, logger="pydarknet"), Network(cfg) as fresh, \
            Network(cfg, original) as full, Network(cfg, partial) as net:
        assert net.layers_loaded == 15  # the ninth conv is layer 14
        # yolov3-tiny has 13 convolutions, the only layers with parameters
        assert any(f"{partial}: partial weights: filled 9 of the 13 layers" in r.getMessage() for r in caplog.records)
        np.testing.assert_array_equal(net.params()[:n], full.params()[:n])
        np.testing.assert_array_equal(net.params()[n:], fresh.params()[n:])


def test_seen_32_bit_header_version_0_1_0(tiny_cfg, tmp_path):
    params = random_params(TINY_TOTAL, 4)
    path = tmp_path / "old.weights"
    write(path, header(0, 1, 0, seen=4_000_000_000, seen_bits=32), params)
    assert path.stat().st_size == 16 + 4 * TINY_TOTAL
    with Network(tiny_cfg, path) as net:
        assert net.seen == 4_000_000_000
        assert net.version == (0, 1, 0)
        np.testing.assert_array_equal(net.params(), params)
        out = tmp_path / "new.weights"
        net.save(out)
    # Saved in the current format: 0.2.0 with the same seen as 64 bits.
    assert out.read_bytes() == header(0, 2, 0, seen=4_000_000_000) + params.tobytes()


def test_seen_64_bit_round_trip(tiny_cfg, tmp_path):
    with Network(tiny_cfg) as net:
        for seen in (0, 1, 2**32 + 1, 2**63 + 12345):
            net.seen = seen
            net.save(tmp_path / "s.weights")
            with Network(tiny_cfg, tmp_path / "s.weights") as other:
                assert other.seen == seen


def test_major_above_1000_reads_32_bit_seen(tiny_cfg, tmp_path):
    # SPEC: 64-bit seen only when major*10+minor >= 2 and major, minor < 1000.
    params = random_params(TINY_TOTAL, 5)
    path = tmp_path / "t.weights"
    write(path, header(1001, 2, 0, seen=77, seen_bits=32), params)
    with Network(tiny_cfg, path) as net:
        assert net.seen == 77
        np.testing.assert_array_equal(net.params(), params)


def broken_files(tmp_path):
    """(name, bytes, words the message must contain)."""
    params = random_params(TINY_TOTAL, 6).tobytes()
    first_layer = TINY_SIZES[0] * 4
    return [
        ("truncated", header() + params[:-40], ["truncated", "inside layer"]),
        ("inside_first_layer", header() + params[: first_layer - 4], ["inside layer 0"]),
        ("odd_bytes", header() + params[:first_layer] + b"\x01\x02\x03", ["inside layer"]),
        ("oversized", header() + params + b"\0" * 16, ["longer than the network"]),
        ("header_only_garbage", b"\x89PNG\r\n\x1a\n", ["header"]),
        ("negative_version", struct.pack("<iii", -5, 2, 0) + b"\0" * 8 + params, ["header"]),
        ("empty", b"", ["header"]),
        ("ends_in_seen", header()[:16], ["seen"]),
    ]


@pytest.mark.parametrize("case", range(8))
def test_broken_file_raises_weights_error_and_changes_nothing(tiny_cfg, tmp_path, case):
    name, data, words = broken_files(tmp_path)[case]
    path = tmp_path / f"{name}.weights"
    path.write_bytes(data)
    with Network(tiny_cfg) as net:
        before = random_params(TINY_TOTAL, 7)
        net.set_params(before)
        net.seen = 99
        with pytest.raises(WeightsError) as info:
            net.load_weights(path)
        err = info.value
        assert isinstance(err, OSError) and isinstance(err, DarknetError)
        message = str(err)
        assert str(path) in message, message
        for word in words:
            assert word in message, message
        # A failed load leaves the network as it was.
        np.testing.assert_array_equal(net.params(), before)
        assert net.seen == 99
        assert net.version == (0, 2, 0)
        assert net.layers_loaded == 0


def test_truncated_message_says_how_much(tiny_cfg, tmp_path):
    params = random_params(TINY_TOTAL, 8).tobytes()
    path = tmp_path / "cut.weights"
    # Cut 40 bytes before the end: inside the last conv (layer 13).
    path.write_bytes(header() + params[:-40])
    with pytest.raises(WeightsError, match=r"layer 13"):
        Network(tiny_cfg, path)


def test_missing_file(tiny_cfg, tmp_path):
    missing = tmp_path / "nope.weights"
    with pytest.raises(FileNotFoundError, match="nope.weights"):
        Network(tiny_cfg, missing)
    with Network(tiny_cfg) as net:
        with pytest.raises(FileNotFoundError, match="nope.weights"):
            net.load_weights(missing)


def test_wrong_cfg_for_weights(reference_dir, tiny_cfg):
    original = reference_dir / "yolov3-tiny.weights"
    if not original.is_file():
        pytest.skip(f"{original} is absent")
    with pytest.raises(WeightsError, match="longer than the network"):
        Network(tiny_cfg, original)


def test_save_into_missing_folder_fails_cleanly(tiny_cfg, tmp_path):
    with Network(tiny_cfg) as net:
        with pytest.raises(OSError):
            net.save(tmp_path / "no" / "such" / "dir" / "x.weights")


def test_save_is_atomic_over_existing_file(tiny_cfg, tmp_path):
    target = tmp_path / "w.weights"
    target.write_bytes(b"old contents")
    with Network(tiny_cfg) as net:
        net.save(target)
        assert target.stat().st_size == 20 + 4 * TINY_TOTAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.cfg", "w.weights"]


def test_tiny_cfg_constant_is_what_the_fixture_writes(tiny_cfg):
    assert tiny_cfg.read_text() == TINY_CFG
