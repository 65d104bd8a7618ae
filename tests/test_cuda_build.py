"""What the library says about its build and the CUDA devices it sees; runs on every build, GPU or not.

On a CPU-only build (or a GPU build on a machine without a driver or a device, as in CI) asking for a CUDA
device is a CudaError naming the device, and the CPU path keeps working in the same process.
"""
from __future__ import annotations

import numpy as np
import pytest

import pydarknet
from pydarknet import CudaError, Network
from pydarknet._ffi import ffi, lib


def test_build_info_keys_and_types():
    info = pydarknet.build_info()
    for key in ("abi", "blas", "openmp", "cuda", "cudnn", "cublas", "cuda_archs", "library"):
        assert key in info, f"build_info() lacks {key!r}: {info}"
    assert info["abi"] == lib.dn_abi_version()
    assert info["blas"] == ffi.string(lib.dn_blas_name()).decode()
    assert isinstance(info["cuda"], int) and isinstance(info["cudnn"], int)
    if info["cuda"] == 0:
        assert info["cudnn"] == 0 and info["cuda_archs"] == "", "a CPU build claims CUDA parts"
    else:
        # e.g. 13000 = CUDA 13.0; the archs list the machine code the library carries
        assert info["cuda"] >= 12000, info
        assert "sm_" in info["cuda_archs"], info


def test_cuda_device_count_is_consistent_with_the_build():
    count = pydarknet.cuda_device_count()
    assert isinstance(count, int) and count >= 0
    if pydarknet.build_info()["cuda"] == 0:
        assert count == 0, "a CPU-only build cannot see CUDA devices"
    assert pydarknet.cuda_device_count() == count  # stable, and asking twice is harmless


def test_cuda_device_without_one_is_a_clear_error(tiny_cfg):
    """Where no CUDA device can be used, asking for one names it; the process and its CPU networks carry on."""
    if pydarknet.cuda_device_count() > 0:
        pytest.skip("a CUDA device is present (tests/test_cuda.py covers this case)")
    with pytest.raises(CudaError, match=r"cuda:0"):
        Network(tiny_cfg, device="cuda:0")
    with pytest.raises(CudaError, match=r"cuda:3"):
        Network(tiny_cfg, device=3)
    net = Network(tiny_cfg, batch=1)
    out = net.forward(np.random.default_rng(0).uniform(0, 1, (1, 3, net.height, net.width)).astype(np.float32))
    assert all(np.isfinite(o).all() for o in out)
