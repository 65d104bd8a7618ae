"""The CUDA kernels' per-index bodies (csrc/cuda/kernel_bodies.h), run on the host, against the CPU engine.

csrc/cuda/kernel_host.c is compiled here with the C compiler into a small library of its own (not part of
libdarknet.so): each of its functions runs what one CUDA kernel launch of csrc/cuda/kernels.cu runs, index after
index (the per-filter reductions add their 256 threads' partial sums in order). So without a GPU these tests
check the kernels' indexing, formulas and argmax/tie rules against the CPU engine through the public API
(forward outputs, backward_probe's input and parameter deltas, inference) and against numpy. The kernels' launch
geometry, block reductions and cuBLAS/cuDNN calls are checked on a GPU by tests/test_cuda.py.
"""
from __future__ import annotations

import ctypes
import zlib
from pathlib import Path

import numpy as np
import pytest

from pydarknet import Network
from pydarknet.network import get_threads, set_threads
from conftest import build_c_library
from test_gradients import CONV_CASES, conv, make_net, param_layout, randomize, write_cfg, yolo

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "kernel_host.c"
ACT_CODES = {"logistic": 0, "relu": 1, "linear": 2, "leaky": 3, "mish": 4, "swish": 5, "tanh": 6}

F = ctypes.POINTER(ctypes.c_float)
I = ctypes.POINTER(ctypes.c_int)
c_int, c_size, c_float = ctypes.c_int, ctypes.c_size_t, ctypes.c_float

SIGNATURES = {
    "hk_im2col": [F, c_int, c_int, c_int, c_int, c_int, c_int, F],
    "hk_col2im_add": [F, c_int, c_int, c_int, c_int, c_int, c_int, F],
    "hk_activate": [F, c_size, c_int],
    "hk_gradient": [F, F, c_size, c_int, F],
    "hk_copy_rows": [c_size, c_size, F, c_size, F, c_size, c_int],
    "hk_affine_inference": [F, c_int, c_int, c_size, F, F, F, F],
    "hk_batchnorm_forward": [F, c_int, c_int, c_size, F, F, F, F, F, F, c_int, F, F],
    "hk_bias_gradient": [F, c_int, c_int, c_size, F],
    "hk_batchnorm_backward": [F, F, F, F, F, F, c_int, c_int, c_size, F],
    "hk_sgd_update": [F, F, c_size, c_float, c_float, c_float],
    "hk_maxpool_forward": [F, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int, c_int, F, I],
    "hk_maxpool_backward": [F, I, c_int, c_size, c_size, F],
    "hk_upsample_forward": [F, c_int, c_int, c_int, c_int, c_int, c_float, F],
    "hk_upsample_backward": [F, c_int, c_int, c_int, c_int, c_int, c_float, F],
    "hk_yolo_activate": [F, c_int, c_int, c_int, c_int, c_int, c_int, F],
}


RETURNS_STATUS = {"hk_batchnorm_forward", "hk_bias_gradient", "hk_batchnorm_backward"}  # 0, or -1: out of memory


@pytest.fixture(scope="module")
def hk(tmp_path_factory):
    lib = build_c_library(tmp_path_factory, SOURCE, "the host version of the CUDA kernels",
                          ["-Wno-unused-parameter", "-fno-fast-math", "-ffp-contract=off"], libs=("-lm",))
    for name, args in SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = ctypes.c_int if name in RETURNS_STATUS else None
    return lib


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = get_threads()
    set_threads(1)
    yield
    set_threads(before)


def fp(a: np.ndarray | None):
    if a is None:
        return None
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data_as(F)


def ip(a: np.ndarray):
    assert a.dtype == np.int32 and a.flags.c_contiguous
    return a.ctypes.data_as(I)


def assert_close(host, cpu, rtol=1e-4, what=""):
    """Relative to the array's scale: |host - cpu| <= rtol * max(|cpu|) everywhere (GEMM sums differ in order)."""
    host, cpu = np.asarray(host, np.float64), np.asarray(cpu, np.float64)
    assert host.shape == cpu.shape, what
    scale = max(np.abs(cpu).max(), 1e-12)
    err = np.abs(host - cpu).max() / scale
    assert err <= rtol, f"{what}: host kernels differ from the CPU engine by {err:.3g} relative (> {rtol})"


def out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


# ---------------------------------------------------------------------------------------------------------
# im2col / col2im
GEOMETRIES = [  # channels, h, w, ksize, stride, pad
    (3, 8, 8, 3, 1, 1), (2, 7, 5, 3, 2, 1), (2, 9, 9, 5, 1, 1), (1, 6, 7, 1, 2, 0), (4, 5, 5, 3, 3, 2),
    (2, 4, 4, 2, 1, 0), (1, 3, 3, 5, 1, 2),
]


def np_im2col(im, k, s, p):
    c, h, w = im.shape
    oh, ow = out_size(h, k, s, p), out_size(w, k, s, p)
    xp = np.pad(im, ((0, 0), (p, p), (p, p)))
    col = np.empty((c, k, k, oh, ow), np.float32)
    for ky in range(k):
        for kx in range(k):
            col[:, ky, kx] = xp[:, ky:ky + s * (oh - 1) + 1:s, kx:kx + s * (ow - 1) + 1:s]
    return col.reshape(c * k * k, oh * ow)


@pytest.mark.parametrize("geom", GEOMETRIES, ids=[f"c{g[0]}-{g[1]}x{g[2]}-k{g[3]}s{g[4]}p{g[5]}" for g in GEOMETRIES])
def test_im2col_col2im(hk, geom):
    c, h, w, k, s, p = geom
    rng = np.random.default_rng(zlib.crc32(repr(geom).encode()))
    im = rng.uniform(-1, 1, (c, h, w)).astype(np.float32)
    oh, ow = out_size(h, k, s, p), out_size(w, k, s, p)
    col = np.full((c * k * k, oh * ow), np.nan, np.float32)
    hk.hk_im2col(fp(im), c, h, w, k, s, p, fp(col))
    np.testing.assert_array_equal(col, np_im2col(im, k, s, p))

    # col2im_add: the CPU loop adds, per image cell, the column entries in (c, ky, kx, y, x) order; np.add.at
    # adds in the order of its index list, so the same order gives the CPU's float32 result to the bit.
    cols = rng.uniform(-1, 1, col.shape).astype(np.float32)
    base = rng.uniform(-1, 1, im.shape).astype(np.float32)
    idx = np.full((c, k, k, oh, ow), -1, np.int64)
    for ch in range(c):
        for ky in range(k):
            for kx in range(k):
                for y in range(oh):
                    iy = y * s - p + ky
                    for x in range(ow):
                        ix = x * s - p + kx
                        if 0 <= iy < h and 0 <= ix < w:
                            idx[ch, ky, kx, y, x] = (ch * h + iy) * w + ix
    idx = idx.ravel()
    ref = base.ravel().copy()
    np.add.at(ref, idx[idx >= 0], cols.ravel()[idx >= 0])
    got = base.copy()
    hk.hk_col2im_add(fp(cols), c, h, w, k, s, p, fp(got))
    np.testing.assert_array_equal(got.ravel(), ref)


# ---------------------------------------------------------------------------------------------------------
# activations
def np_activate(x, act):
    x = x.astype(np.float64)
    sp = np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log1p(np.exp(np.minimum(x, 20)))))
    sig = 1 / (1 + np.exp(-x))
    return {"logistic": sig, "relu": np.where(x > 0, x, 0), "linear": x, "leaky": np.where(x > 0, x, .1 * x),
            "mish": x * np.tanh(sp), "swish": x * sig, "tanh": np.tanh(x)}[act]


def np_gradient(y, x, act):
    y, x = y.astype(np.float64), x.astype(np.float64)
    sig = 1 / (1 + np.exp(-x))
    sp = np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log1p(np.exp(np.minimum(x, 20)))))
    t = np.tanh(sp)
    return {"logistic": y * (1 - y), "relu": (y > 0) * 1.0, "linear": np.ones_like(y),
            "leaky": np.where(y > 0, 1, .1), "mish": t + x * (1 - t * t) * sig, "swish": sig + x * sig * (1 - sig),
            "tanh": 1 - y * y}[act]


@pytest.mark.parametrize("act", list(ACT_CODES))
def test_activate_and_gradient(hk, act):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(-6, 6, 1000), [-30, -20.5, -1e-3, 0, 1e-3, 20.5, 30]]).astype(np.float32)
    y = x.copy()
    hk.hk_activate(fp(y), y.size, ACT_CODES[act])
    np.testing.assert_allclose(y, np_activate(x, act), rtol=2e-6, atol=1e-6)
    d = rng.uniform(-1, 1, x.size).astype(np.float32)
    got = d.copy()
    hk.hk_gradient(fp(y), fp(x), y.size, ACT_CODES[act], fp(got))
    np.testing.assert_allclose(got, d * np_gradient(y, x, act), rtol=2e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# a whole convolutional layer (training forward, backward, inference) from the kernels, against the CPU engine
def conv_geometry(net):
    layer = net.layers[0]
    w, h, c = layer.input_shape
    ow, oh, f = layer.output_shape
    k, s = layer.size, layer.stride
    pad = next(p for p in range(k + 1) if out_size(h, k, s, p) == oh and out_size(w, k, s, p) == ow)
    return c, h, w, f, oh, ow, k, s, pad, layer.groups


def views(net, p):
    lay = dict(param_layout(net))
    get = lambda name: np.ascontiguousarray(p[lay[name]]) if name in lay else None  # noqa: E731
    return lay, {n: get(f"L0.{n}") for n in ("biases", "scales", "rolling_mean", "rolling_variance", "weights")}


class HostConv:
    """One convolutional layer made of the host-built kernels, in the order the backend's conv layer calls them:
    im2col + GEMM (numpy, float64) per image and group, bias/batch norm, activation; backward: gradient,
    bias_gradient, batchnorm_backward, weight GEMM and GEMM + col2im_add."""

    def __init__(self, hk, net, params):
        self.hk = hk
        (self.c, self.h, self.w, self.f, self.oh, self.ow, self.k, self.s, self.pad, self.g) = conv_geometry(net)
        self.bn = net.layers[0].batch_normalize
        self.act = ACT_CODES[net.layers[0].activation]
        self.lay, self.v = views(net, params)
        self.direct = self.k == 1 and self.s == 1 and self.pad == 0
        self.cg, self.m = self.c // self.g, self.f // self.g
        self.kk = self.cg * self.k * self.k
        self.wg = self.v["weights"].reshape(self.g, self.m, self.kk).astype(np.float64)

    def cols(self, x, b, g):
        im = np.ascontiguousarray(x[b, g * self.cg:(g + 1) * self.cg])
        if self.direct:
            return im.reshape(self.cg, -1)
        col = np.empty((self.kk, self.oh * self.ow), np.float32)
        self.hk.hk_im2col(fp(im), self.cg, self.h, self.w, self.k, self.s, self.pad, fp(col))
        return col

    def convolve(self, x):
        n = x.shape[0]
        z = np.empty((n, self.f, self.oh * self.ow), np.float32)
        for b in range(n):
            for g in range(self.g):
                z[b, g * self.m:(g + 1) * self.m] = self.wg[g] @ self.cols(x, b, g)
        return z

    def forward_train(self, x):
        n, spatial = x.shape[0], self.oh * self.ow
        self.x_in = x
        z = self.convolve(x)
        self.z = z
        if self.bn:
            self.mean, self.var = np.zeros(self.f, np.float32), np.zeros(self.f, np.float32)
            self.x_norm, pre = np.empty_like(z), np.empty_like(z)
            assert self.hk.hk_batchnorm_forward(fp(z), n, self.f, spatial, fp(self.v["scales"]),
                                                fp(self.v["biases"]), fp(self.mean), fp(self.var), None, None, 0,
                                                fp(self.x_norm), fp(pre)) == 0
        else:
            pre = z.copy()
            self.hk.hk_affine_inference(fp(pre), n, self.f, spatial, fp(self.v["biases"]), None, None, None)
        self.raw = pre.copy()
        out = pre
        self.hk.hk_activate(fp(out), out.size, self.act)
        self.out = out
        return out.reshape(n, self.f, self.oh, self.ow)

    def forward_inference(self, x):
        n = x.shape[0]
        z = self.convolve(x)
        self.hk.hk_affine_inference(fp(z), n, self.f, self.oh * self.ow, fp(self.v["biases"]), fp(self.v["scales"]),
                                    fp(self.v["rolling_mean"]), fp(self.v["rolling_variance"]))
        self.hk.hk_activate(fp(z), z.size, self.act)
        return z.reshape(n, self.f, self.oh, self.ow)

    def backward(self, D):
        """(input delta, parameter updates laid out as params()) for last delta D after forward_train."""
        x = self.x_in
        n, spatial = x.shape[0], self.oh * self.ow
        delta = np.ascontiguousarray(D, np.float32).reshape(n, self.f, spatial).copy()
        self.hk.hk_gradient(fp(self.out), fp(self.raw), delta.size, self.act, fp(delta))
        updates = np.zeros(sum(sl.stop - sl.start for sl in self.lay.values()), np.float32)
        bias_up = np.zeros(self.f, np.float32)
        assert self.hk.hk_bias_gradient(fp(delta), n, self.f, spatial, fp(bias_up)) == 0
        updates[self.lay["L0.biases"]] = bias_up
        if self.bn:
            scale_up = np.zeros(self.f, np.float32)
            assert self.hk.hk_batchnorm_backward(fp(delta), fp(self.z), fp(self.x_norm), fp(self.mean), fp(self.var),
                                                 fp(self.v["scales"]), n, self.f, spatial, fp(scale_up)) == 0
            updates[self.lay["L0.scales"]] = scale_up
        dw = np.zeros((self.g, self.m, self.kk))
        dx = np.zeros_like(x)
        for b in range(n):
            for g in range(self.g):
                d = delta[b, g * self.m:(g + 1) * self.m].astype(np.float64)
                dw[g] += d @ self.cols(x, b, g).T.astype(np.float64)
                back = (self.wg[g].T @ d).astype(np.float32)
                target = np.ascontiguousarray(dx[b, g * self.cg:(g + 1) * self.cg])
                if self.direct:
                    target += back.reshape(target.shape)
                else:
                    self.hk.hk_col2im_add(fp(back), self.cg, self.h, self.w, self.k, self.s, self.pad, fp(target))
                dx[b, g * self.cg:(g + 1) * self.cg] = target
        updates[self.lay["L0.weights"]] = dw.ravel()
        return dx, updates


# test_gradients' cases, and one whose 64x64 maps split the per-filter reductions over two blocks (chunks)
HOST_CONV_CASES = CONV_CASES + [("3x3-bn-mish-64x64-two-chunks", (64, 64, 3), 2, dict(filters=4, size=3, bn=1,
                                                                                      act="mish"))]


@pytest.mark.parametrize("shape,batch,opts", [c[1:] for c in HOST_CONV_CASES], ids=[c[0] for c in HOST_CONV_CASES])
def test_conv_layer_from_kernels_matches_cpu(hk, tmp_path, shape, batch, opts):
    """Every layer configuration of test_gradients.py: outputs, batch statistics, input deltas and parameter
    updates of the kernel composition equal the CPU engine's within 1e-4 (relative to each array's scale)."""
    rng = np.random.default_rng(zlib.crc32(repr(sorted(opts.items())).encode()))
    w, h, c = shape
    net = make_net(tmp_path, "conv", w, h, c, [conv(**opts)], batch)
    p = randomize(net, rng)
    x = rng.uniform(-1, 1, (batch, c, h, w)).astype(np.float32)
    host = HostConv(hk, net, p)
    cpu_out = net.forward_last(x, train=True)
    assert_close(host.forward_train(x), cpu_out, what="training forward")
    D = rng.uniform(-1, 1, cpu_out.shape).astype(np.float32)
    cpu_dx, cpu_dp = net.backward_probe(x, D)
    dx, dp = host.backward(D)
    assert_close(dx, cpu_dx, what="input delta")
    for label, sl in param_layout(net):
        if "rolling" not in label:
            assert_close(dp[sl], cpu_dp[sl], what=f"{label} updates")
    # inference (bias and batch norm folded, rolling statistics) against the CPU's plain path
    plain = Network(write_cfg(tmp_path, "plain", w, h, c, [conv(**opts)]), batch=batch, conv_algo="plain")
    plain.set_params(p)
    assert_close(host.forward_inference(x), plain.forward_last(x), what="inference forward")


@pytest.mark.parametrize("spatial", [700, 5000, 200_000], ids=["one-chunk", "three-chunks", "max-chunks"])
def test_batchnorm_statistics_and_rolling_update(hk, spatial):
    """Batch mean, unbiased variance and the .99/.01 rolling update against numpy (float64), including a
    filter whose values all but cancel (large mean, tiny spread) where a float sum would lose digits; with
    reductions on one block per filter, on three, and on the most (64)."""
    rng = np.random.default_rng(3)
    n, f = 3, 5
    x = rng.normal(0, 1, (n, f, spatial)).astype(np.float32)
    x[:, 2] = 1000 + rng.normal(0, 1e-2, (n, spatial))
    scales, biases = rng.uniform(.5, 1.5, f).astype(np.float32), rng.uniform(-1, 1, f).astype(np.float32)
    rm0, rv0 = rng.uniform(-1, 1, f).astype(np.float32), rng.uniform(.5, 2, f).astype(np.float32)
    rm, rv = rm0.copy(), rv0.copy()
    mean, var = np.zeros(f, np.float32), np.zeros(f, np.float32)
    xn, out = np.empty_like(x), np.empty_like(x)
    assert hk.hk_batchnorm_forward(fp(x), n, f, spatial, fp(scales), fp(biases), fp(mean), fp(var), fp(rm), fp(rv),
                                   1, fp(xn), fp(out)) == 0
    x64 = x.astype(np.float64)
    ref_mean = x64.mean(axis=(0, 2))
    ref_var = ((x64 - ref_mean[None, :, None]) ** 2).sum(axis=(0, 2)) / (n * spatial - 1)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6)
    np.testing.assert_allclose(var, ref_var, rtol=1e-4)
    np.testing.assert_allclose(rm, .99 * rm0.astype(np.float64) + .01 * ref_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, .99 * rv0.astype(np.float64) + .01 * ref_var, rtol=1e-5, atol=1e-6)
    ref_xn = (x64 - mean[None, :, None]) / (np.sqrt(var.astype(np.float64)) + 1e-6)[None, :, None]
    np.testing.assert_allclose(xn, ref_xn, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out, ref_xn * scales[None, :, None] + biases[None, :, None], rtol=1e-4, atol=1e-4)

    # backward: bias gradient, then batch norm's backward (the CPU's formula, in float64 here)
    d = rng.uniform(-1, 1, x.shape).astype(np.float32)
    bias_up = np.full(f, 0.5, np.float32)
    assert hk.hk_bias_gradient(fp(d), n, f, spatial, fp(bias_up)) == 0
    np.testing.assert_allclose(bias_up, 0.5 + d.astype(np.float64).sum(axis=(0, 2)), rtol=1e-5, atol=1e-3)
    scale_up = np.zeros(f, np.float32)
    got = d.copy()
    assert hk.hk_batchnorm_backward(fp(got), fp(x), fp(xn), fp(mean), fp(var), fp(scales), n, f, spatial,
                                    fp(scale_up)) == 0
    d64, m64, v64 = d.astype(np.float64), mean.astype(np.float64)[None, :, None], var.astype(np.float64)
    count = n * spatial
    np.testing.assert_allclose(scale_up, (d64 * xn).sum(axis=(0, 2)), rtol=1e-5, atol=1e-3)
    g = d64 * scales[None, :, None]
    sigma = np.sqrt(v64)
    s = sigma + 1e-6
    k = -(g * (x64 - m64)).sum(axis=(0, 2)) / s ** 2 / (sigma * (count - 1))
    ref = (g - g.mean(axis=(0, 2))[None, :, None]) / s[None, :, None] + k[None, :, None] * (x64 - m64)
    assert_close(got, ref, rtol=1e-4, what="batch-norm backward")


# ---------------------------------------------------------------------------------------------------------
# maxpool, upsample, [yolo], SGD, copy_rows
MAXPOOL = [  # (w, h, c), size, stride, padding (None: the cfg default size - 1)
    ((8, 8, 2), 2, 2, None), ((6, 6, 2), 2, 1, None), ((7, 7, 2), 3, 2, None), ((7, 7, 2), 2, 2, None),
    ((5, 6, 3), 3, 1, 0), ((6, 6, 1), 2, 2, 4),  # the last has windows wholly outside the image
]


@pytest.mark.parametrize("shape,size,stride,padding", MAXPOOL,
                         ids=[f"{m[1]}s{m[2]}p{m[3]}-{m[0][0]}x{m[0][1]}" for m in MAXPOOL])
def test_maxpool_matches_cpu(hk, tmp_path, shape, size, stride, padding):
    """Output, the argmax rule (first maximum in scan order, strict >; -1 for an empty window) and the backward
    (overlapping windows add) equal the CPU engine's to the bit, on inputs full of ties."""
    w, h, c = shape
    opts = {"size": size, "stride": stride} | ({} if padding is None else {"padding": padding})
    pad = size - 1 if padding is None else padding
    n = 2
    net = make_net(tmp_path, "max", w, h, c, [("maxpool", opts)], n)
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    rng = np.random.default_rng(9)
    x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float32)  # 5 values: ties everywhere
    cpu_out = net.forward_last(x, train=True)
    out = np.empty((n, c, oh, ow), np.float32)
    arg = np.empty((n, c, oh, ow), np.int32)
    hk.hk_maxpool_forward(fp(x), n, c, h, w, size, stride, pad, oh, ow, fp(out), ip(arg))
    np.testing.assert_array_equal(out, cpu_out)
    D = rng.uniform(-1, 1, out.shape).astype(np.float32)
    cpu_dx, _ = net.backward_probe(x, D)
    dx = np.zeros_like(x)
    hk.hk_maxpool_backward(fp(D), ip(arg), n, c * oh * ow, c * h * w, fp(dx))
    np.testing.assert_array_equal(dx, cpu_dx)
    if padding == 4:
        assert (arg == -1).any() and (out[arg == -1] == np.finfo(np.float32).min).all()


@pytest.mark.parametrize("stride,scale", [(2, 1.0), (3, 0.5)])
def test_upsample_matches_cpu(hk, tmp_path, stride, scale):
    n, c, h, w = 2, 3, 4, 5
    net = make_net(tmp_path, "up", w, h, c, [("upsample", {"stride": stride, "scale": scale})], n)
    rng = np.random.default_rng(12)
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    out = np.empty((n, c, h * stride, w * stride), np.float32)
    hk.hk_upsample_forward(fp(x), n, c, h, w, stride, scale, fp(out))
    np.testing.assert_array_equal(out, net.forward_last(x, train=True))
    D = rng.uniform(-1, 1, out.shape).astype(np.float32)
    cpu_dx, _ = net.backward_probe(x, D)
    dx = np.zeros_like(x)
    hk.hk_upsample_backward(fp(D), n, c, h, w, stride, scale, fp(dx))
    np.testing.assert_array_equal(dx, cpu_dx)


@pytest.mark.parametrize("representation", ["exp", "lin"])
def test_yolo_activate_matches_cpu(hk, tmp_path, representation):
    n, classes, anchors, h, w = 2, 3, 2, 4, 5
    ch = anchors * (5 + classes)
    layer = yolo(classes=classes)
    layer[1]["representation"] = representation
    net = make_net(tmp_path, "yolo", w, h, ch, [layer], n)
    x = np.random.default_rng(13).uniform(-4, 4, (n, ch, h, w)).astype(np.float32)
    out = np.empty_like(x)
    hk.hk_yolo_activate(fp(x), n, anchors, classes, h, w, 1 if representation == "lin" else 0, fp(out))
    # the CPU's logistic uses a vectorised e^x (within 2 ulp of the exact logistic, test_yolo_loss.py), the
    # kernel body expf: the two agree to a few ulp, and exactly where no logistic is taken (w, h)
    np.testing.assert_array_max_ulp(out, net.forward(x)[0], maxulp=4)
    wh = np.zeros((anchors, 5 + classes), bool)
    wh[:, 2:4] = True
    wh = wh.ravel()
    np.testing.assert_array_equal(out[:, wh], net.forward(x)[0][:, wh])


def test_sgd_update(hk):
    """SPEC §3 on one array: u -= decay_b*w; w += lr_over_b*u; u *= momentum (float32 arithmetic)."""
    rng = np.random.default_rng(4)
    w0, u0 = rng.uniform(-1, 1, 999).astype(np.float32), rng.uniform(-1, 1, 999).astype(np.float32)
    lr, mom, dec = np.float32(0.01 / 8), np.float32(0.9), np.float32(0.0005 * 8)
    w, u = w0.copy(), u0.copy()
    hk.hk_sgd_update(fp(w), fp(u), w.size, lr, mom, dec)
    uu = u0 - dec * w0
    np.testing.assert_array_equal(w, w0 + lr * uu)
    np.testing.assert_array_equal(u, uu * mom)


@pytest.mark.parametrize("accumulate", [0, 1])
def test_copy_rows(hk, accumulate):
    rng = np.random.default_rng(6)
    src = rng.uniform(-1, 1, (3, 10)).astype(np.float32)
    dst = rng.uniform(-1, 1, (3, 16)).astype(np.float32)
    ref = dst.copy()
    ref[:, 4:11] = (ref[:, 4:11] if accumulate else 0) + src[:, 2:9]
    at = lambda a, offset: ctypes.cast(a.ctypes.data + 4 * offset, F)  # noqa: E731  (a float offset into a)
    hk.hk_copy_rows(3, 7, at(src, 2), 10, at(dst, 4), 16, accumulate)
    np.testing.assert_array_equal(dst, ref)
