"""The memory budget (issue 14): a cfg whose network would claim more than the load's memory_limit (16 GiB by
default) is a CfgError before anything big is allocated, saying how much it needs and which layer makes it so;
resize, set_batch and the training buffers are held to the same limit; the caller can raise it."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pydarknet import CfgError, DarknetError, Network

from conftest import ROOT, TINY_CFG

GIB = 1 << 30

# Issue 14's 80-byte cfg: 4096 x 16384 x 3 x 3 weights = 604M parameters (2.25 GiB) for a 1 x 1 input.
WIDE_CFG = "[net]\nwidth=1\nheight=1\nchannels=4096\n[convolutional]\nfilters=16384\nsize=3\npad=1\n"
# Issue 14's 4 KB cfg: an 8192 x 8192 x 3 input through 400 [maxpool] layers, 805 MB of output each.
DEEP_CFG = "[net]\nwidth=8192\nheight=8192\nchannels=3\n" + "[maxpool]\nsize=1\nstride=1\n" * 400


def write(tmp_path, text: str, name: str = "net.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return path


def needed_bytes(message: str) -> int:
    match = re.search(r"needs (\d+) bytes", message)
    assert match, message
    return int(match.group(1))


def test_tiny_cfg_claiming_gigabytes_is_refused_before_allocating(tmp_path):
    """Over a 1 GiB limit; loaded in a fresh process, so its peak resident size shows that nothing big was
    allocated (the load used to take 2.36 GB and 4.5 s)."""
    path = write(tmp_path, WIDE_CFG)
    # The peak is VmHWM of this process's own memory (reset by exec); getrusage's ru_maxrss is not: Linux keeps
    # it across exec, so it would report the size of the (large) pytest process that forked this one.
    script = textwrap.dedent(f"""
        from pydarknet import CfgError, Network
        try:
            Network({str(path)!r}, memory_limit=1 << 30)
        except CfgError as exc:
            print("ERROR", exc)
        hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
        print("PEAK_KB", int(hwm.split()[1]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         check=True).stdout
    assert "ERROR" in out, out
    message = out.split("ERROR", 1)[1].split("\nPEAK_KB")[0]
    assert str(path) in message and "memory limit of 1073741824 bytes" in message and "memory_limit" in message
    assert "layer 0 (conv" in message  # the layer that makes it so
    # parameters alone: 16384 * (4096 * 9 + 1) floats
    assert needed_bytes(message) >= 4 * 16384 * (4096 * 9 + 1)
    peak_mb = int(out.split("PEAK_KB")[1]) / 1024
    assert peak_mb < 1024, f"peak resident {peak_mb:.0f} MB"


def test_many_large_layers_are_refused_naming_the_largest(tmp_path):
    """About 300 GB of layer outputs: over the default limit (16 GiB)."""
    path = write(tmp_path, DEEP_CFG)
    with pytest.raises(CfgError) as info:
        Network(path)
    message = str(info.value)
    assert str(path) in message
    # 400 outputs of 8192 * 8192 * 3 floats; each layer's share is the same, the first is named
    assert needed_bytes(message) >= 400 * 8192 * 8192 * 3 * 4
    assert "layer 0 (max" in message and "8192 x 8192 x 3" in message


def test_limit_is_the_callers_to_raise(tmp_path):
    """The message says the exact need; a limit of that many bytes loads the network, one byte less does not."""
    path = write(tmp_path, TINY_CFG, "tiny.cfg")
    with pytest.raises(CfgError) as info:
        Network(path, memory_limit=100_000)
    need = needed_bytes(str(info.value))
    with pytest.raises(CfgError):
        Network(path, memory_limit=need - 1)
    with Network(path, memory_limit=need) as net:
        out = net.forward(np.zeros((1, 3, 64, 64), np.float32))
        assert [o.shape for o in out] == [(1, 21, 8, 8), (1, 21, 16, 16)]
        # At least what the layer table shows: every parameter and every layer output, as float32.
        floor = 4 * (net.n_params + sum(int(np.prod(l.output_shape)) for l in net.layers))
        assert need >= floor


def test_default_limit_loads_real_networks():
    for name in ("yolov3.cfg", "yolov3-tiny.cfg", "pydarknet-default.cfg"):
        with Network(ROOT / "cfg" / name) as net:
            assert net.n_params > 0


def test_resize_over_the_limit_keeps_the_old_size(tmp_path):
    path = write(tmp_path, TINY_CFG, "tiny.cfg")
    with pytest.raises(CfgError) as info:
        Network(path, memory_limit=100_000)
    need = needed_bytes(str(info.value))
    with Network(path, memory_limit=2 * need) as net:
        with pytest.raises(ValueError, match="memory limit") as err:
            net.resize(640, 640)
        assert isinstance(err.value, DarknetError) and "640 x 640" in str(err.value)
        assert (net.width, net.height) == (64, 64)
        out = net.forward(np.zeros((1, 3, 64, 64), np.float32))
        assert out[0].shape == (1, 21, 8, 8)


def test_set_batch_over_the_limit_keeps_the_old_batch(tmp_path):
    path = write(tmp_path, TINY_CFG, "tiny.cfg")
    with Network(path, memory_limit=8 << 20) as net:
        with pytest.raises(ValueError, match="memory limit") as err:
            net.set_batch(4096)
        assert "batch 4096" in str(err.value)
        assert net.batch == 1
        net.forward(np.zeros((1, 3, 64, 64), np.float32))
        net.set_batch(8)  # within the limit
        assert net.batch == 8


def test_training_buffers_count_against_the_limit(tmp_path):
    """A limit that inference fits in but training (deltas, batch-norm caches, the update block) does not."""
    path = write(tmp_path, TINY_CFG, "tiny.cfg")
    with pytest.raises(CfgError) as info:
        Network(path, memory_limit=100_000)
    need = needed_bytes(str(info.value))
    images = np.zeros((1, 3, 64, 64), np.float32)
    truths = np.zeros((1, 90, 5), np.float32)
    truths[0, 0] = (.5, .5, .2, .2, 0)
    with Network(path, memory_limit=need) as net:
        with pytest.raises(ValueError, match="with training buffers"):
            net.train_chunk(images, truths)
        net.forward(images)  # still fine for inference
    with Network(path, memory_limit=4 * need) as net:
        assert np.isfinite(net.train_chunk(images, truths))


def test_sizes_for_the_memory_limit_option():
    from pydarknet.network import parse_size
    assert parse_size("17179869184") == 16 * GIB
    assert parse_size("16G") == parse_size("16GiB") == parse_size("16gb") == 16 * GIB
    assert parse_size("512M") == 512 << 20 and parse_size("1.5K") == 1536
    for bad in ("", "G", "-1G", "0", "lots", "20E"):
        with pytest.raises(ValueError, match="PYDARKNET_MEMORY_LIMIT"):
            parse_size(bad, "PYDARKNET_MEMORY_LIMIT")


def test_the_limit_is_raised_for_every_network_of_a_command(tmp_path, monkeypatch):
    """--memory-limit (before the command) or PYDARKNET_MEMORY_LIMIT sets the limit of every network made without
    one, train's and valid's included; an explicit memory_limit= still wins."""
    from click.testing import CliRunner

    from pydarknet.cli import main
    path = write(tmp_path, WIDE_CFG)  # 2.25 GiB of parameters
    monkeypatch.setenv("PYDARKNET_MEMORY_LIMIT", "2G")
    with pytest.raises(CfgError, match="memory limit"):
        Network(path)
    monkeypatch.setenv("PYDARKNET_MEMORY_LIMIT", "1M")
    with Network(write(tmp_path, TINY_CFG, "tiny.cfg"), memory_limit=GIB) as net:
        assert net.n_params > 0
    monkeypatch.delenv("PYDARKNET_MEMORY_LIMIT")
    result = CliRunner().invoke(main, ["--memory-limit", "1K", "layers", str(write(tmp_path, TINY_CFG, "t.cfg"))])
    assert result.exit_code != 0 and "memory limit" in result.output, result.output
    result = CliRunner().invoke(main, ["--memory-limit", "lots", "layers", str(path)])
    assert result.exit_code == 2 and "--memory-limit" in result.output and "'lots'" in result.output, result.output
