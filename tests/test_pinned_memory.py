"""Page-locked (pinned) batch buffers for a device's input copies (issue 9 §4), checked on the CPU.

dn_host_pin / dn_host_unpin on the CPU are no-ops; on the staged test device (DN_DEVICE_CPU_STAGED) they keep a
registry with the driver's rules (a range is pinned once, unpinned by its start), so a loader that pins a
buffer twice, forgets to unpin one or unpins memory it never pinned fails here without a GPU. test_cuda.py
runs a pinned loader against cuda:0.
"""
from __future__ import annotations

import logging
from unittest import mock

import numpy as np
import pytest

import pydarknet
import pydarknet.network
from pydarknet import CudaError, _ffi
from pydarknet._ffi import lib
from pydarknet.data import Augment, DataLoader
from test_data import small_set  # noqa: F401 -- the fixture: 12 labelled images of 2 classes

STAGED = "cpu-staged"


def address(buffer) -> int:
    return int(_ffi.ffi.cast("uintptr_t", _ffi.ffi.from_buffer(buffer, require_writable=True)))


class PinLog:
    """The real dn_host_pin / dn_host_unpin, with the addresses pinned now and every call recorded."""

    def __init__(self):
        self.live: dict[int, int] = {}
        self.calls: list[tuple[str, int]] = []
        self.real_pin, self.real_unpin = _ffi.host_pin, _ffi.host_unpin

    def pin(self, device, buffer):
        pinned = self.real_pin(device, buffer)
        a = address(buffer)
        self.calls.append(("pin", a))
        self.live[a] = len(_ffi.ffi.from_buffer(buffer))
        return pinned

    def unpin(self, device, buffer):
        self.real_unpin(device, buffer)
        a = address(buffer)
        self.calls.append(("unpin", a))
        del self.live[a]


@pytest.fixture()
def pins():
    """Loaders built with pin_device=STAGED pin on the staged device; the pin calls are logged."""
    log = PinLog()
    parse = pydarknet.network.parse_device
    with mock.patch.object(pydarknet.network, "parse_device",
                           lambda d: lib.DN_DEVICE_CPU_STAGED if d == STAGED else parse(d)), \
            mock.patch.object(_ffi, "host_pin", log.pin), mock.patch.object(_ffi, "host_unpin", log.unpin):
        yield log


def test_pinning_on_the_cpu_does_nothing_and_the_staged_device_keeps_the_drivers_rules():
    buf = np.zeros(1000, np.float32)
    assert _ffi.host_pin(-1, buf) is False
    _ffi.host_unpin(-1, buf)
    staged = lib.DN_DEVICE_CPU_STAGED
    assert _ffi.host_pin(staged, buf) is True
    with pytest.raises(CudaError, match="already pinned"):
        _ffi.host_pin(staged, buf[500:])  # overlaps
    _ffi.host_unpin(staged, buf)
    with pytest.raises(CudaError, match="no pinned range starts there"):
        _ffi.host_unpin(staged, buf)
    with pytest.raises(pydarknet.DarknetError, match="NULL or empty"):
        _ffi.host_pin(staged, np.zeros(0, np.float32))
    if pydarknet.build_info()["cuda"] == 0:
        with pytest.raises(CudaError, match="cuda:0.*built without CUDA"):
            _ffi.host_pin(0, buf)


@pytest.mark.parametrize("workers", [0, 2])
def test_pinned_loader_makes_the_same_batches_and_unpins_every_buffer(small_set, pins, workers, caplog):
    def batches(pin_device):
        out = []
        with DataLoader(small_set[1], num_classes=2, batch=3, net_w=64, net_h=64, aug=Augment(jitter=0.2),
                        workers=workers, seed=4, pin_device=pin_device) as loader:
            for i in range(6):
                if i == 2:
                    loader.set_size(96, 96)  # new, larger buffers: the old ones are unpinned first
                x, truth = loader.next_batch()
                if pin_device is not None:
                    # the batch handed out lies in pinned memory
                    a = x.__array_interface__["data"][0]
                    assert any(start <= a < start + size for start, size in pins.live.items())
                    assert len(pins.live) == (1 if workers == 0 else loader._n_slots)
                out.append((x.copy(), truth.copy()))
        return out

    with caplog.at_level(logging.WARNING, logger="pydarknet.data"):
        plain, pinned = batches(None), batches(STAGED)
    for (x0, t0), (x1, t1) in zip(plain, pinned):
        assert np.array_equal(x0, x1) and np.array_equal(t0, t1)
    assert pins.live == {}  # every pinned buffer unpinned at close
    assert [c for c, _ in pins.calls].count("pin") == [c for c, _ in pins.calls].count("unpin") >= 2
    assert caplog.text == ""  # the staged registry accepted every call


def test_a_refused_pin_is_reported_once_and_loading_goes_on(small_set, caplog):
    def refuse(device, buffer):
        raise CudaError(f"CUDA on cuda:{device}: cudaHostRegister failed: operation not supported")

    with mock.patch.object(_ffi, "host_pin", refuse), caplog.at_level(logging.WARNING, logger="pydarknet.data"):
        with DataLoader(small_set[1], num_classes=2, batch=2, net_w=32, net_h=32, aug=Augment(), workers=2,
                        pin_device="cuda:0") as loader:
            for _ in range(3):
                x, _ = loader.next_batch()
                assert x.shape == (2, 3, 32, 32)
    warnings = [r for r in caplog.records if "left pageable" in r.getMessage()]
    assert len(warnings) == 1 and "cuda:0" in warnings[0].getMessage()


def test_staged_network_trains_the_same_from_pinned_input(tiny_cfg):
    """The staged device takes the CUDA network's input path (from_host_start, then from_host_finish)."""
    from test_backends import open_network
    rng = np.random.default_rng(2)
    with open_network(tiny_cfg, batch=2, device="cpu-staged") as staged, pydarknet.Network(tiny_cfg, batch=2) as cpu:
        x = rng.uniform(0, 1, (2, 3, cpu.height, cpu.width)).astype(np.float32)
        truth = np.zeros((2, cpu.max_boxes, 5), np.float32)
        truth[:, 0] = [0.5, 0.5, 0.3, 0.2, 1]
        assert _ffi.host_pin(lib.DN_DEVICE_CPU_STAGED, x)
        try:
            assert staged.train_chunk(x, truth) == pytest.approx(cpu.train_chunk(x, truth), rel=1e-6)
            np.testing.assert_allclose(staged.forward(x)[0], cpu.forward(x)[0], rtol=1e-6, atol=1e-6)
        finally:
            _ffi.host_unpin(lib.DN_DEVICE_CPU_STAGED, x)
