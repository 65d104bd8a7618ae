"""csrc/layout_pack.c: the NCHW <-> NHWC / nChw16c copies the oneDNN training convolutions use in place of
oneDNN's reorders, against numpy's transposes.

The file is compiled here into a small library of its own (as tests/test_kernel_host.py does), so that every
shape below runs whole tiles, partial pixel tiles and partial channel blocks. The training tests
(tests/test_train_onednn.py) check the same copies inside the network, against the plain path.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
from conftest import build_c_library

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "layout_pack.c"


class Layout(ctypes.Structure):
    _fields_ = [("image", ctypes.c_size_t), ("block", ctypes.c_size_t), ("pixel", ctypes.c_size_t),
                ("bf16", ctypes.c_int)]


@pytest.fixture(scope="module")
def lp(tmp_path_factory):
    lib = build_c_library(tmp_path_factory, SOURCE, "csrc/layout_pack.c", ["-fopenmp"])
    lib.layout_pack_available.argtypes = [ctypes.c_int]
    lib.pack_layout_nhwc.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    lib.pack_layout_nhwc.restype = Layout
    lib.pack_layout_nchw16c.argtypes = [ctypes.c_int, ctypes.c_size_t]
    lib.pack_layout_nchw16c.restype = Layout
    lib.layout_pack.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_size_t,
                                ctypes.POINTER(Layout), ctypes.c_void_p]
    lib.layout_unpack.argtypes = [ctypes.c_void_p, ctypes.POINTER(Layout), ctypes.c_int, ctypes.c_int,
                                  ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int]
    lib.layout_pack_bn_backward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                            ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.POINTER(Layout),
                                            ctypes.c_void_p]
    lib.layout_unpack_weights_16b16a.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                                 ctypes.c_void_p, ctypes.c_int]
    if not lib.layout_pack_available(0):
        pytest.skip("this CPU lacks AVX-512: the training convolutions keep oneDNN's reorders")
    return lib


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounded to nearest even (finite inputs)."""
    u = x.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


# the last: runs of 1024 pixels per task (16 channels), the image's last one partial
SHAPES = [(2, 16, 13, 13), (3, 20, 5, 7), (1, 3, 17, 1), (2, 255, 4, 4), (2, 64, 1, 1), (1, 32, 33, 31),
          (2, 16, 50, 61)]


def as_blocked(x: np.ndarray, kind: str) -> np.ndarray:
    """numpy's version of the layout: NHWC, or nChw16c with zero padding lanes."""
    n, c, h, w = x.shape
    if kind == "nhwc":
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    blocks = (c + 15) // 16
    padded = np.zeros((n, blocks * 16, h, w), np.float32)
    padded[:, :c] = x
    return np.ascontiguousarray(padded.reshape(n, blocks, 16, h, w).transpose(0, 1, 3, 4, 2))


def layout_of(lp, kind: str, c: int, pixels: int, bf16: int = 0) -> Layout:
    return lp.pack_layout_nhwc(c, pixels, bf16) if kind == "nhwc" else lp.pack_layout_nchw16c(c, pixels)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["nhwc", "nchw16c"])
def test_pack_float32_equals_numpy_transpose(lp, shape, kind):
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    want = as_blocked(x, kind)
    n, c, h, w = shape
    L = layout_of(lp, kind, c, h * w)
    got = np.full(want.size + 64, np.nan, np.float32)  # NaN where nothing may be left unwritten or overrun
    lp.layout_pack(x.ctypes.data, n, c, h * w, ctypes.byref(L), got.ctypes.data)
    np.testing.assert_array_equal(got[:want.size], want.ravel())
    assert np.isnan(got[want.size:]).all(), "wrote past the layout's end"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["nhwc", "nchw16c"])
@pytest.mark.parametrize("add", [0, 1])
def test_unpack_writes_or_adds_the_nchw_tensor(lp, shape, kind, add):
    rng = np.random.default_rng(sum(shape) + add)
    x = rng.standard_normal(shape).astype(np.float32)
    blocked = as_blocked(x, kind)
    n, c, h, w = shape
    L = layout_of(lp, kind, c, h * w)
    before = rng.standard_normal(shape).astype(np.float32)
    out = np.concatenate([before.ravel(), np.full(64, 7.0, np.float32)])
    lp.layout_unpack(blocked.ctypes.data, ctypes.byref(L), n, c, h * w, out.ctypes.data, add)
    np.testing.assert_array_equal(out[:x.size].reshape(shape), before + x if add else x)
    assert (out[x.size:] == 7.0).all(), "wrote past the tensor's end"


@pytest.mark.parametrize("shape", SHAPES)
def test_pack_bfloat16_rounds_to_nearest_even(lp, shape):
    if not lp.layout_pack_available(1):
        pytest.skip("this CPU lacks AVX512_BF16: bf16 training keeps oneDNN's reorder")
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    x.ravel()[::7] = np.float32(1.0) + np.float32(2.0 ** -8)  # exactly halfway between two bfloat16s: rounds to even
    n, c, h, w = shape
    want = bf16_bits(as_blocked(x, "nhwc"))
    L = layout_of(lp, "nhwc", c, h * w, bf16=1)
    got = np.full(want.size + 32, 0xFFFF, np.uint16)
    lp.layout_pack(x.ctypes.data, n, c, h * w, ctypes.byref(L), got.ctypes.data)
    np.testing.assert_array_equal(got[:want.size], want.ravel())
    assert (got[want.size:] == 0xFFFF).all(), "wrote past the layout's end"
    halfway = as_blocked(x, "nhwc").ravel() == np.float32(1.0) + np.float32(2.0 ** -8)
    assert halfway.any() and (got[:want.size][halfway] == 0x3F80).all()  # 1.0, the even neighbour


@pytest.mark.parametrize("outputs,inputs,kernel_pixels", [(32, 16, 9), (48, 80, 9), (255, 40, 1), (20, 3, 9),
                                                          (1, 1, 25)])
def test_weight_gradients_unpack_from_abcd16b16a(lp, outputs, inputs, kernel_pixels):
    """A weight gradient in oneDNN's ABcd16b16a (blocks of 16 outputs x 16 inputs, each kernel pixel a 16 x 16
    tile of [input][output], counts padded to 16) copied, or added, to OIHW: numpy's transpose of the same
    blocks. The padding lanes hold garbage that must not leak in."""
    rng = np.random.default_rng(outputs * 7 + inputs)
    w = rng.standard_normal((outputs, inputs, kernel_pixels)).astype(np.float32)
    ob, ib = -(-outputs // 16), -(-inputs // 16)
    padded = rng.standard_normal((ob * 16, ib * 16, kernel_pixels)).astype(np.float32) * 1e6
    padded[:outputs, :inputs] = w
    # [ob][ib][k][input lane][output lane]
    blocked = np.ascontiguousarray(padded.reshape(ob, 16, ib, 16, kernel_pixels).transpose(0, 2, 4, 3, 1))
    dst = np.full((outputs, inputs, kernel_pixels), np.nan, np.float32)
    lp.layout_unpack_weights_16b16a(blocked.ctypes.data, outputs, inputs, kernel_pixels, dst.ctypes.data, 0)
    np.testing.assert_array_equal(dst, w)
    base = rng.standard_normal(dst.shape).astype(np.float32)
    acc = base.copy()
    lp.layout_unpack_weights_16b16a(blocked.ctypes.data, outputs, inputs, kernel_pixels, acc.ctypes.data, 1)
    np.testing.assert_array_equal(acc, base + w)


ACTIVATIONS = {"leaky": (3, 0.1), "relu": (1, 0.0), "linear": (2, 1.0)}  # elementwise.h's DN_ACT_ codes, slope below 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["nhwc", "nchw16c"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_batch_norm_backward_is_written_packed(lp, shape, kind, activation):
    """The second pass of batch norm's backward written straight into the convolution's layout: d(x) =
    (d * act'(z) * scale - mean_g) * inv_s + k * (x - mean), z = (x - mean) * inv * scale + bias, act' taken from
    z's sign (z exactly 0 takes the slope below 0, as the forward's output does), against numpy's float32."""
    code, slope = ACTIVATIONS[activation]
    n, c, h, w = shape
    rng = np.random.default_rng(sum(shape) + code)
    delta = rng.standard_normal(shape).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    f = rng.standard_normal((c, 7)).astype(np.float32)  # mean, inv, scale, bias, mean_g, inv_s, k
    f[:, 1] = np.abs(f[:, 1]) + 0.5
    f[0, 3] = 0.0
    at_zero = np.zeros(shape, bool)
    at_zero[:, 0] = (np.arange(h * w) % 3 == 0).reshape(h, w)
    x[at_zero] = f[0, 0]  # channel 0: z exactly 0 there
    mean, inv, scale, bias, mean_g, inv_s, k = (f[:, i].reshape(1, c, 1, 1) for i in range(7))
    vm = x - mean
    z = vm * inv * scale + bias
    assert (z[at_zero] == 0).all()
    d0 = np.where(z > 0, delta, delta * np.float32(slope))
    want = as_blocked(((d0 * scale - mean_g) * inv_s + k * vm).astype(np.float32), kind).ravel()
    L = layout_of(lp, kind, c, h * w)
    got = np.full(want.size + 64, np.nan, np.float32)
    lp.layout_pack_bn_backward(delta.ctypes.data, x.ctypes.data, np.ascontiguousarray(f).ctypes.data, code, n, c,
                               h * w, ctypes.byref(L), got.ctypes.data)
    np.testing.assert_allclose(got[:want.size], want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    assert np.isnan(got[want.size:]).all(), "wrote past the layout's end"
