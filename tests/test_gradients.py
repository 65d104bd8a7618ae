"""Every layer's backward pass against central finite differences of its own forward (issue 3, item 1).

`Network.backward_probe(x, D)` runs a training-mode forward (batch-norm batch statistics, rolling averages
untouched) and a backward started from D, and returns (-dL/dx, -dL/dtheta) for L = -sum(out * D), i.e. the
gradient of f = sum(out * D). Here f is evaluated with `Network.forward_last(x, train=True)` (float32 core,
float64 accumulation of f) at x +- eps and theta +- eps for EVERY input entry and EVERY trainable parameter
(biases, batch-norm scales, weights), and compared entry by entry with

    err = |analytic - numeric| / max(|analytic|, |numeric|, FLOOR)

which must stay below TOL everywhere. The step actually taken is the float32 difference (x+eps) - (x-eps),
not 2*eps. Piecewise-linear parts (leaky/relu, maxpool's argmax) make a finite difference meaningless when the
step crosses a kink: for every perturbation the kink pattern of every layer (sign of each leaky/relu output,
the argmax of each maxpool window, computed here in numpy from the layer's input) is compared with the
unperturbed one, and entries whose step crossed a kink are left out; there must be few of them (MAX_SKIP).

Also here: rolling mean/variance get exactly zero gradient and are left unchanged by backward_probe; the
[yolo] layer passes the delta it is given straight to its input; route/shortcut/upsample/maxpool forwards
against numpy (the finite differences only prove backward = d(forward)); and the batch-norm training forward
against a numpy implementation of Darknet's batch norm, with the .99/.01 rolling update after train_chunk.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CFG
from pydarknet import Network, _ffi
from pydarknet.network import get_threads, set_threads

ACTIVATIONS = ["leaky", "linear", "logistic", "relu", "mish", "swish", "tanh"]
KINKED = {"leaky", "relu"}

TOL = 1e-2          # relative error allowed on every single gradient entry
FLOOR = 1e-2        # denominators below this are treated as absolute errors (gradients are O(0.1..10) here)
MAX_SKIP = 0.05     # at most this share of the entries may be left out because their step crossed a kink
EPS_P = 1e-2       # finite-difference step for parameters (weights are ~0.2..0.5)
EPS_X = 3e-2       # and for inputs (~1): larger, so float32 rounding of f weighs less


# ---------------------------------------------------------------------------------------------------------
# cfg building
def write_cfg(tmp_path: Path, name: str, w: int, h: int, c: int, layers: list[tuple[str, dict]]) -> Path:
    lines = ["[net]", "batch=1", "subdivisions=1", f"width={w}", f"height={h}", f"channels={c}", ""]
    for section, opts in layers:
        lines.append(f"[{section}]")
        lines += [f"{k}={v}" for k, v in opts.items()]
        lines.append("")
    path = tmp_path / f"{name}.cfg"
    path.write_text("\n".join(lines))
    return path


def conv(filters, size=3, stride=1, pad=None, bn=0, act="leaky", groups=1, padding=None):
    opts = {"filters": filters, "size": size, "stride": stride, "batch_normalize": bn, "activation": act,
            "groups": groups}
    if padding is not None:
        opts["padding"] = padding
    else:
        opts["pad"] = (1 if size > 1 else 0) if pad is None else pad
    return ("convolutional", opts)


def yolo(classes=1, mask="0,1", num=3):
    return ("yolo", {"mask": mask, "anchors": "2,3, 4,5, 6,4", "classes": classes, "num": num})


# ---------------------------------------------------------------------------------------------------------
# parameter bookkeeping
def param_layout(net: Network) -> list[tuple[str, slice]]:
    """(label, slice into params()) for every parameter array, in .weights order."""
    out, off = [], 0
    for layer in net.layers:
        if layer.n_params == 0:
            continue
        assert layer.type == "conv", layer
        f = layer.filters
        names = ["biases"] + (["scales", "rolling_mean", "rolling_variance"] if layer.batch_normalize else [])
        for name in names:
            out.append((f"L{layer.index}.{name}", slice(off, off + f)))
            off += f
        out.append((f"L{layer.index}.weights", slice(off, off + layer.n_params - f * len(names))))
        off += layer.n_params - f * len(names)
    assert off == net.n_params
    return out


def randomize(net: Network, rng: np.random.Generator, far_from_kinks=False) -> np.ndarray:
    """Moderate-scale random parameters (BN scales away from 0, variances > 0). far_from_kinks: batch-normalised
    leaky layers get biases of +-(2..3) and scales of +-(.3..5), so that their pre-activations (standardised
    values times the scale, plus the bias) stay well away from 0: every channel lies on one branch of leaky,
    half of them on the .1 one, and no finite-difference step crosses a kink."""
    p = net.params()
    far = {layer.index for layer in net.layers
           if far_from_kinks and layer.type == "conv" and layer.batch_normalize and layer.activation in KINKED}
    for label, sl in param_layout(net):
        n = sl.stop - sl.start
        kind = label.split(".")[1]
        if int(label[1:].split(".")[0]) in far and kind in ("biases", "scales"):
            sign = rng.permutation(np.resize([-1.0, 1.0], n))
            p[sl] = sign * (rng.uniform(2, 3, n) if kind == "biases" else rng.uniform(0.3, 0.5, n))
        elif kind == "biases":
            p[sl] = rng.uniform(-0.3, 0.3, n)
        elif kind == "scales":
            p[sl] = rng.uniform(0.5, 1.5, n) * rng.choice([-1, 1], n)
        elif kind == "rolling_mean":
            p[sl] = rng.uniform(-0.5, 0.5, n)
        elif kind == "rolling_variance":
            p[sl] = rng.uniform(0.5, 2.0, n)
        else:
            layer = net.layers[int(label[1:].split(".")[0])]
            fan_in = layer.size * layer.size * layer.input_shape[2] // layer.groups
            p[sl] = rng.uniform(-1, 1, n) * np.sqrt(3.0 / fan_in)
    net.set_params(p)
    return net.params()


# ---------------------------------------------------------------------------------------------------------
# numpy references
def np_maxpool(x: np.ndarray, size: int, stride: int, padding: int) -> tuple[np.ndarray, np.ndarray]:
    """Darknet's maxpool (window starts at -padding/2, padded cells -inf): (output, argmax as flat h*w index)."""
    n, c, h, w = x.shape
    off = -(padding // 2)
    oh, ow = (h + padding - size) // stride + 1, (w + padding - size) // stride + 1
    out = np.full((n, c, oh, ow), -np.inf)
    arg = np.full((n, c, oh, ow), -1, np.int64)
    for ky in range(size):
        for kx in range(size):
            for y in range(oh):
                iy = off + y * stride + ky
                if not 0 <= iy < h:
                    continue
                for xo in range(ow):
                    ix = off + xo * stride + kx
                    if not 0 <= ix < w:
                        continue
                    v = x[:, :, iy, ix]
                    better = v > out[:, :, y, xo]
                    out[:, :, y, xo] = np.where(better, v, out[:, :, y, xo])
                    arg[:, :, y, xo] = np.where(better, iy * w + ix, arg[:, :, y, xo])
    return out, arg


def np_conv(x: np.ndarray, weights: np.ndarray, filters: int, size: int, stride: int, pad: int,
            groups: int) -> np.ndarray:
    """Plain convolution (no bias) in float64, Darknet's weight layout (filter, channel/groups, ky, kx)."""
    x = x.astype(np.float64)
    n, c, h, w = x.shape
    cg, fg = c // groups, filters // groups
    wt = weights.astype(np.float64).reshape(filters, cg, size, size)
    oh, ow = (h + 2 * pad - size) // stride + 1, (w + 2 * pad - size) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((n, filters, oh, ow))
    for g in range(groups):
        for ky in range(size):
            for kx in range(size):
                patch = xp[:, g * cg:(g + 1) * cg, ky:ky + stride * oh:stride, kx:kx + stride * ow:stride]
                out[:, g * fg:(g + 1) * fg] += np.einsum("nchw,fc->nfhw", patch, wt[g * fg:(g + 1) * fg, :, ky, kx])
    return out


def np_batchnorm_train(z: np.ndarray, scales, biases, unbiased=True):
    """Darknet's training batch norm: batch statistics over (batch, space), variance / (M - 1),
    (z - mean) / (sqrt(var) + 1e-6), then scale and bias. Returns (output, mean, var)."""
    m = z.shape[0] * z.shape[2] * z.shape[3]
    mean = z.mean(axis=(0, 2, 3))
    var = ((z - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) / (m - 1 if unbiased else m)
    xn = (z - mean[None, :, None, None]) / (np.sqrt(var) + 1e-6)[None, :, None, None]
    return xn * np.asarray(scales, np.float64)[None, :, None, None] + np.asarray(biases, np.float64)[None, :, None, None], mean, var


# ---------------------------------------------------------------------------------------------------------
# the finite-difference machinery
class Probe:
    """Runs training-mode forwards of `net` and evaluates f = sum(output of layer `out_index` * D)."""

    def __init__(self, net: Network, x: np.ndarray, D: np.ndarray, out_index: int):
        self.net, self.x, self.D, self.out_index = net, x, D.astype(np.float64), out_index
        self.n = x.shape[0]

    def run(self, x=None):
        x = self.x if x is None else x
        self.net.forward_last(x, train=True)
        outs = [self.net.layer_output(i, self.n) for i in range(len(self.net.layers))]
        f = float(np.sum(outs[self.out_index].astype(np.float64) * self.D))
        return f, self.kinks(x, outs)

    def kinks(self, x, outs):
        """What the piecewise-linear layers saw: a leaky/relu conv's output, a maxpool's input."""
        state = []
        for layer in self.net.layers:
            if layer.type == "conv" and layer.activation in KINKED:
                state.append((layer.activation, outs[layer.index].astype(np.float64)))
            elif layer.type == "max":
                src = (x if layer.index == 0 else outs[layer.index - 1]).astype(np.float64)
                # (the tests use maxpool's default padding, size - 1)
                state.append(("max", (layer, src, np_maxpool(src, layer.size, layer.stride, layer.size - 1))))
        return state


def kink_defect(base, pert) -> float:
    """How far the perturbed forward is from the one with every kink choice frozen as at `base`: the sum over
    all leaky/relu outputs and maxpool windows of |actual - frozen|. A step whose defect is a tiny fraction of
    it changes f by (nearly) the linearised amount even if it crossed a kink (e.g. two near-tied maxpool
    candidates that batch-norm coupling makes swap by 1e-7); a large one makes the difference meaningless."""
    total = 0.0
    for (kind, b), (_, p) in zip(base, pert):
        if kind == "leaky":
            z = np.where(p > 0, p, 10 * p)
            total += float(np.abs(p - np.where(b > 0, z, 0.1 * z)).sum())
        elif kind == "relu":
            if np.any((b > 0) & (p <= 0)):
                return np.inf  # the pre-activation it went to is not observable
            total += float(np.abs(p[b <= 0]).sum())
        else:
            layer, _, (_, arg_b) = b
            _, src_p, (out_p, _) = p
            n, c = src_p.shape[:2]
            frozen = np.take_along_axis(src_p.reshape(n, c, -1), arg_b.reshape(n, c, -1), axis=2)
            total += float(np.abs(out_p.reshape(n, c, -1) - frozen).sum())
    return total


KINK_DEFECT = 1e-4  # largest defect / step accepted: its effect on a difference quotient is ~ defect / step


def fd_gradients(probe: Probe, eps: float, params=True, eps_x=None):
    """Finite differences of f w.r.t. every input entry and every parameter: Richardson's combination
    (4 d(h) - d(2h)) / 3 of two central differences d(h), d(2h) (fourth-order accurate: batch norm is curved
    enough in the weights for a plain central difference at h = 1e-2 to be off by 1e-2); the actual float32
    steps are used. NaN where a step crossed a kink."""
    net = probe.net
    _, base_sig = probe.run()

    def derivative(evaluate, value, eps):
        # evaluate(v) -> (f, kink state) at the coordinate set to float32 v
        ds = []
        for k in (1, 2):
            vp, vm = np.float32(value + k * eps), np.float32(value - k * eps)
            fp, sp = evaluate(vp)
            fm, sm = evaluate(vm)
            step = float(vp) - float(vm)
            if max(kink_defect(base_sig, sp), kink_defect(base_sig, sm)) > KINK_DEFECT * step:
                return np.nan
            ds.append((fp - fm) / step)
        return (4 * ds[0] - ds[1]) / 3

    x = probe.x
    flat = x.ravel()
    gx = np.full(x.shape, np.nan)

    def eval_x(j):
        def run(v):
            xv = flat.copy()
            xv[j] = v
            return probe.run(xv.reshape(x.shape))
        return run

    for j in range(flat.size):
        gx.flat[j] = derivative(eval_x(j), flat[j], eps if eps_x is None else eps_x)
    gp = None
    if params:
        p0 = net.params()
        gp = np.full(p0.shape, np.nan)

        def eval_p(j):
            def run(v):
                pv = p0.copy()
                pv[j] = v
                net.set_params(pv)
                return probe.run()
            return run

        for label, sl in param_layout(net):
            if "rolling" in label:
                continue
            for j in range(sl.start, sl.stop):
                gp[j] = derivative(eval_p(j), p0[j], eps)
        net.set_params(p0)
    return gx, gp


def rel_err(a: np.ndarray, b: np.ndarray, floor=FLOOR) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny forwards: thread start-up would dominate (and the results do not depend on it)."""
    before = get_threads()
    set_threads(1)
    yield
    set_threads(before)


WORST: dict[str, float] = {}  # layer kind -> worst relative error seen (printed by test_zz_report)


def record(kind: str, err: float) -> None:
    WORST[kind] = max(WORST.get(kind, 0.0), err)


def check_network(net: Network, x: np.ndarray, rng, out_index=None, eps=EPS_P, eps_x=EPS_X, kind="net",
                  params=True, D=None, fd_net=None, fd_D=None, floor=FLOOR, max_skip=MAX_SKIP) -> dict[str, float]:
    """backward_probe vs finite differences for the input and every trainable parameter of `net`; checks the
    rolling statistics too. Returns the worst error per group. With fd_net/fd_D the finite differences are
    taken of sum(fd_net's output * fd_D) instead (a twin with the same parameters, see frozen_kink_twin)."""
    n = x.shape[0]
    last = len(net.layers) - 1
    out_index = last if out_index is None else out_index
    w, h, c = net.layers[last].output_shape
    if D is None:
        D = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)

    p_before = net.params()
    dx, dp = net.backward_probe(x, D)
    p_after = net.params()
    assert np.array_equal(p_before, p_after), "backward_probe changed parameters (rolling statistics?)"
    dx2, dp2 = net.backward_probe(x, D)
    assert np.array_equal(dx, dx2) and np.array_equal(dp, dp2), "backward_probe is not repeatable"
    assert dx.shape == x.shape and dp.shape == (net.n_params,)

    if fd_net is None:
        fd_net, fd_D = net, D
    else:
        fd_net.set_params(p_before)
    probe = Probe(fd_net, x, fd_D, out_index)
    gx, gp = fd_gradients(probe, eps, params=params, eps_x=eps_x)

    worst, report = {}, []
    groups = [("input", dx.ravel(), gx.ravel())]
    if params:
        for label, sl in param_layout(net):
            if "rolling" in label:
                # Not used by the training forward: zero gradient, and perturbing them changes nothing.
                assert np.all(dp[sl] == 0), f"{label} got a gradient: {dp[sl]}"
                pr = p_before.copy()
                pr[sl] *= np.float32(1.7)
                fd_net.set_params(pr)
                f_r, _ = probe.run()
                fd_net.set_params(p_before)
                f_0, _ = probe.run()
                assert f_r == f_0, f"{label} changes the training-mode forward"
                continue
            groups.append((label, dp[sl], gp[sl]))
    total = skipped = 0
    for label, analytic, numeric in groups:
        ok = ~np.isnan(numeric)
        total += numeric.size
        skipped += int((~ok).sum())
        if not ok.any():
            continue
        e = rel_err(analytic[ok], numeric[ok], floor)
        i = int(np.argmax(e))
        worst[label] = float(e[i])
        report.append(f"{label}: worst {e[i]:.2e} (analytic {analytic[ok][i]:.6g}, numeric {numeric[ok][i]:.6g})")
    msg = f"[{kind}] " + "; ".join(report) + f"; {skipped}/{total} entries crossed a kink"
    assert skipped <= max_skip * total, "too many finite differences crossed a kink: " + msg
    for label, _, numeric in groups:
        # every array must have been checked on most of its entries (on a good share where crossings are many)
        assert np.mean(np.isnan(numeric)) <= max(min(2 * max_skip, 0.75), MAX_SKIP * 4, 2 / numeric.size), \
            f"{label}: " + msg
    bad = {k: v for k, v in worst.items() if v >= TOL}
    assert not bad, "gradient mismatch: " + msg
    # The analytic gradients must not be trivially zero (a test that cannot fail is no test).
    assert np.abs(dx).max() > 1e-3 or not params, msg
    record(kind, max(worst.values()))
    return worst


def make_net(tmp_path, name, w, h, c, layers, batch):
    return Network(write_cfg(tmp_path, name, w, h, c, layers), batch=batch)


def np_act(z: np.ndarray, act: str) -> np.ndarray:
    z = np.asarray(z, np.float32)
    if act == "leaky":
        return np.where(z > 0, z, np.float32(0.1) * z)
    if act == "relu":
        return np.where(z > 0, z, np.float32(0))
    assert act == "linear", act
    return z


def check_kinked_last_layer(net: Network, twin: Network, x: np.ndarray, rng, act: str, kind: str):
    """A leaky/relu last layer. A finite difference that crosses the kink of some output measures nothing, and
    with batch norm every output of a channel moves with every input. So the kink pattern is frozen instead:
    `twin` is the same network with the last activation linear (same parameters); the forward of `net` must
    be act(twin's output), and backward_probe(net, D) must equal the finite differences of
    sum(twin's output * D * slope), slope = act'(.) at the unperturbed point (1 or .1/0 from the sign)."""
    n = x.shape[0]
    twin.set_params(net.params())
    y = net.forward_last(x, train=True)
    z = twin.forward_last(x, train=True)
    np.testing.assert_array_equal(y, np_act(z, act), err_msg=f"{act} forward")
    slope = np.where(y > 0, np.float32(1), np.float32(0.1 if act == "leaky" else 0)).astype(np.float32)
    assert 0.2 < np.mean(slope == 1) < 0.8  # both branches exercised
    D = rng.uniform(-1, 1, y.shape).astype(np.float32)
    # the twin probed with D*slope does the very same arithmetic
    a, b = net.backward_probe(x, D), twin.backward_probe(x, D * slope)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    return check_network(net, x, rng, kind=kind, D=D, fd_net=twin, fd_D=D * slope)


def check_directional(net: Network, x: np.ndarray, rng, out_index: int, eps: float, kind: str, n_dirs=3,
                      floor=1e-12):
    """Directional derivatives: <probe gradient, v> against (f(. + eps v) - f(. - eps v)) / 2 eps, for random
    directions v over the input and over each parameter array separately. A step along a dense direction
    crosses a few kinks, but their effect is of order eps relative: usable where per-entry differences are
    not (a whole leaky network). `floor`: changes of f below it count as absolute errors (f's float32 rounding)."""
    n = x.shape[0]
    last = net.layers[-1]
    w, h, c = last.output_shape
    D = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    dx, dp = net.backward_probe(x, D)
    probe = Probe(net, x, D, out_index)
    p0 = net.params()
    errs, report = {}, []

    def compare(label, analytic, step, fp, fm):
        pred = float(np.sum(analytic.astype(np.float64) * step))
        num = fp - fm
        e = abs(pred - num) / max(abs(pred), abs(num), floor)
        errs[label] = max(errs.get(label, 0.0), e)
        report.append(f"{label}: {e:.2e} ({pred:.6g} vs {num:.6g})")

    def richardson(f_at):
        # (4 d(h) - d(2h)/2) / 3 with d(h) = f(+h v) - f(-h v): the change over the step 2 h v, fourth-order
        # accurate (batch norm is strongly curved in its own layer's weights)
        d1 = f_at(1) - f_at(-1)
        d2 = f_at(2) - f_at(-2)
        return (4 * d1 - d2 / 2) / 3, 0.0

    for _ in range(n_dirs):
        v = rng.uniform(-1, 1, x.shape)
        fx = lambda k: probe.run((x + k * eps * v).astype(np.float32))[0]  # noqa: E731
        compare("input", dx, 2 * eps * v, *richardson(fx))
    for label, sl in param_layout(net):
        if "rolling" in label:
            assert np.all(dp[sl] == 0), label
            continue
        for _ in range(n_dirs):
            v = rng.uniform(-1, 1, sl.stop - sl.start)

            def fp_at(k, sl=sl, v=v):
                pk = p0.copy()
                pk[sl] = (p0[sl] + k * eps * v).astype(np.float32)
                net.set_params(pk)
                return probe.run()[0]
            compare(label, dp[sl], 2 * eps * v, *richardson(fp_at))
    net.set_params(p0)
    worst = max(errs.values())
    assert worst < TOL, f"[{kind}] directional derivative mismatch: " + "; ".join(report)
    record(kind, worst)
    return errs


# ---------------------------------------------------------------------------------------------------------
# convolutional
CONV_CASES = (
    # (id, input (w, h, c), batch, conv options)
    [(f"3x3-bn-{a}", (8, 8, 3), 2, dict(filters=4, size=3, bn=1, act=a)) for a in ACTIVATIONS]
    + [(f"1x1-direct-{a}", (6, 6, 4), 2, dict(filters=3, size=1, bn=0, act=a)) for a in ACTIVATIONS]
    + [
        ("3x3-nobn-leaky", (8, 8, 3), 2, dict(filters=4, size=3, bn=0, act="leaky")),
        ("1x1-direct-bn-mish", (6, 6, 4), 3, dict(filters=4, size=1, bn=1, act="mish")),
        ("3x3-stride2-leaky", (8, 8, 3), 2, dict(filters=4, size=3, stride=2, bn=0, act="leaky")),
        ("3x3-stride2-odd-bn-swish", (7, 7, 2), 2, dict(filters=3, size=3, stride=2, bn=1, act="swish")),
        ("3x3-groups2-linear", (8, 8, 4), 2, dict(filters=6, size=3, groups=2, bn=0, act="linear")),
        ("3x3-groups2-bn-leaky", (8, 8, 4), 2, dict(filters=4, size=3, groups=2, bn=1, act="leaky")),
        ("1x1-groups2-bn-logistic", (6, 6, 4), 2, dict(filters=6, size=1, groups=2, bn=1, act="logistic")),
        ("3x3-groups2-stride2-bn-tanh", (8, 8, 6), 2, dict(filters=4, size=3, stride=2, groups=2, bn=1,
                                                            act="tanh")),
        ("1x1-stride2-linear", (8, 8, 3), 2, dict(filters=4, size=1, stride=2, bn=0, act="linear")),
        ("3x3-pad0-bn-swish", (8, 8, 3), 2, dict(filters=3, size=3, pad=0, bn=1, act="swish")),
        ("5x5-padding1-relu", (9, 9, 2), 2, dict(filters=3, size=5, padding=1, bn=0, act="relu")),
    ]
)


@pytest.mark.parametrize("shape,batch,opts", [c[1:] for c in CONV_CASES], ids=[c[0] for c in CONV_CASES])
def test_convolutional_gradients(tmp_path, shape, batch, opts):
    rng = np.random.default_rng(zlib.crc32(repr(sorted(opts.items())).encode()))
    w, h, c = shape
    net = make_net(tmp_path, "conv", w, h, c, [conv(**opts)], batch)
    randomize(net, rng)
    x = rng.uniform(-1, 1, (batch, c, h, w)).astype(np.float32)
    kind = "conv+bn" if opts["bn"] else "conv"
    if opts["act"] in KINKED:
        twin = make_net(tmp_path, "twin", w, h, c, [conv(**{**opts, "act": "linear"})], batch)
        check_kinked_last_layer(net, twin, x, rng, opts["act"], kind)
    else:
        check_network(net, x, rng, kind=kind)


def test_conv_two_layers_bn_chain(tmp_path):
    """Deltas flowing through a batch-normalised layer into an earlier one (in_delta of a BN layer)."""
    rng = np.random.default_rng(1)
    net = make_net(tmp_path, "chain", 8, 8, 3, [conv(4, 3, bn=1, act="mish"), conv(4, 3, stride=2, bn=1, act="swish"),
                                                conv(3, 1, bn=1, act="tanh")], 2)
    randomize(net, rng)
    x = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    check_network(net, x, rng, kind="conv+bn")


# ---------------------------------------------------------------------------------------------------------
# maxpool
MAXPOOL_CASES = [
    ("2s2", (8, 8, 2), dict(size=2, stride=2)),
    ("2s1-default-padding", (6, 6, 2), dict(size=2, stride=1)),
    ("3s2-default-padding", (7, 7, 2), dict(size=3, stride=2)),
    ("2s2-odd", (7, 7, 2), dict(size=2, stride=2)),
]


def distinct_values(rng, shape, spacing=0.02):
    """Random order of evenly spaced values: no ties, and a step below spacing/2 never changes an argmax."""
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(np.float64) * spacing - n * spacing / 2).astype(np.float32).reshape(shape)


@pytest.mark.parametrize("shape,opts", [c[1:] for c in MAXPOOL_CASES], ids=[c[0] for c in MAXPOOL_CASES])
def test_maxpool_forward_and_gradient(tmp_path, shape, opts):
    rng = np.random.default_rng(7)
    w, h, c = shape
    net = make_net(tmp_path, "max", w, h, c, [("maxpool", opts)], 2)
    x = distinct_values(rng, (2, c, h, w))
    padding = opts["size"] - 1
    ref, _ = np_maxpool(x.astype(np.float64), opts["size"], opts["stride"], padding)
    out = net.forward_last(x, train=True)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref.astype(np.float32))
    check_network(net, x, rng, eps_x=4e-3, kind="maxpool")
    # and inside a network, behind and in front of a convolution
    net2 = make_net(tmp_path, "max2", w, h, c, [conv(3, 3, bn=0, act="swish"), ("maxpool", opts),
                                                 conv(2, 1, bn=0, act="logistic")], 2)
    randomize(net2, rng)
    # A conv weight moves every window of its channel at once, so a step that float32 resolves crosses some
    # argmax for up to a third of the entries (overlapping 2s1 windows are the worst): those are left out
    # (detected exactly, see kink_defect) and the rest are checked one by one. No batch norm here: it would
    # amplify the moves (its couplings are checked in the conv tests).
    check_network(net2, rng.uniform(-1, 1, (2, c, h, w)).astype(np.float32), rng, kind="maxpool", eps=4e-3,
                  eps_x=8e-3, max_skip=0.35)


@pytest.mark.parametrize("shape,opts", [((70, 9, 3), dict(size=2, stride=2)), ((45, 7, 2), dict(size=2, stride=1)),
                                         ((45, 7, 2), dict(size=3, stride=2)), ((70, 10, 3), dict(size=2, stride=2)),
                                         ((48, 9, 2), dict(size=3, stride=3, padding=0))],
                         ids=["2s2", "2s1", "3s2", "2s2-even", "3s3-pad0"])
@pytest.mark.parametrize("behind_conv", [False, True], ids=["first", "behind-conv"])
def test_maxpool_ties_on_long_rows_go_to_the_first_maximum(tmp_path, shape, opts, behind_conv):
    """Rows long enough for the vectorised inner windows, with many equal maxima (small integers, as after a
    relu): each window's output and the cell its gradient goes to are those of Darknet's scan (the first
    maximum, row by row). First in the network the pool adds to its input's gradient (maxpool_backward);
    behind an identity 1x1 convolution it sets it (maxpool_backward_set), and the probe reads it back unchanged.
    Windows that cover the plane exactly and ones that leave cells out are both there."""
    rng = np.random.default_rng(17)
    w, h, c = shape
    front = [conv(c, 1, bn=0, act="linear")] if behind_conv else []
    net = make_net(tmp_path, "maxties", w, h, c, front + [("maxpool", opts)], 2)
    if behind_conv:
        params = np.zeros(net.n_params, np.float32)  # biases 0, then the weights: the identity
        params[c:] = np.eye(c, dtype=np.float32).ravel()
        net.set_params(params)
    x = rng.integers(-1, 2, (2, c, h, w)).astype(np.float32)
    x[0, 0, :4] = 0  # whole windows of equal values
    ref, arg = np_maxpool(x.astype(np.float64), opts["size"], opts["stride"], opts.get("padding", opts["size"] - 1))
    np.testing.assert_array_equal(net.forward_last(x, train=True), ref.astype(np.float32))
    for _ in range(2):  # twice: the second pass finds the buffers the first one wrote, not fresh zeros
        d = rng.uniform(-1, 1, ref.shape).astype(np.float32)
        expected = np.zeros((2, c, h * w), np.float64)
        for n in range(2):
            for ch in range(c):
                np.add.at(expected[n, ch], arg[n, ch].ravel(), d[n, ch].ravel())
        got, _ = net.backward_probe(x, d)
        np.testing.assert_allclose(got.reshape(2, c, h * w), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# route, shortcut, upsample
def test_route_order_and_gradient(tmp_path):
    rng = np.random.default_rng(11)
    layers = [conv(4, 3, bn=1, act="swish"),          # 0: 4 ch
              conv(2, 3, bn=0, act="tanh"),           # 1: 2 ch
              ("route", {"layers": "-1,-2"}),         # 2: [1, 0] -> 6 ch
              conv(3, 1, bn=0, act="logistic")]       # 3
    net = make_net(tmp_path, "route", 8, 8, 3, layers, 2)
    randomize(net, rng)
    x = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    net.forward_last(x, train=True)
    np.testing.assert_array_equal(net.layer_output(2, 2),
                                  np.concatenate([net.layer_output(1, 2), net.layer_output(0, 2)], axis=1))
    check_network(net, x, rng, kind="route")


def test_route_last_three_sources(tmp_path):
    """A route as the last layer (the probe's delta lands on it), three sources, absolute and relative."""
    rng = np.random.default_rng(12)
    layers = [conv(3, 3, bn=1, act="mish"),                # 0
              conv(2, 1, bn=0, act="logistic"),           # 1
              conv(4, 3, bn=1, act="tanh"),               # 2
              ("route", {"layers": "1,-3,-1"})]           # 3: [1, 0, 2] -> 9 ch
    net = make_net(tmp_path, "route3", 6, 6, 2, layers, 2)
    randomize(net, rng)
    x = rng.uniform(-1, 1, (2, 2, 6, 6)).astype(np.float32)
    out = net.forward_last(x, train=True)
    np.testing.assert_array_equal(out, np.concatenate([net.layer_output(i, 2) for i in (1, 0, 2)], axis=1))
    # Gradients here reach 8.2 and f's float32 rounding moves a difference quotient by ~5e-4 (measured over
    # steps 1e-3..1e-2 on L0.biases[2] = -0.0295), so small entries are judged against a floor of 5e-2.
    check_network(net, x, rng, kind="route", floor=5e-2)


SHORTCUT_CASES = [("from-2", "-2"), ("from-3", "-3"), ("from-1", "-1"), ("from-abs0", "0")]


def shortcut_layers(frm, act="linear"):
    return [conv(4, 3, bn=1, act="mish"),                     # 0
            conv(4, 1, bn=0, act="swish"),                    # 1
            conv(4, 3, bn=1, act="tanh"),                     # 2
            ("shortcut", {"from": frm, "activation": act}),   # 3
            conv(3, 3, bn=0, act="logistic")]                 # 4


@pytest.mark.parametrize("frm", [c[1] for c in SHORTCUT_CASES], ids=[c[0] for c in SHORTCUT_CASES])
def test_shortcut_gradient(tmp_path, frm):
    rng = np.random.default_rng(13)
    layers = shortcut_layers(frm)
    net = make_net(tmp_path, "shortcut", 6, 6, 3, layers, 2)
    randomize(net, rng)
    x = rng.uniform(-1, 1, (2, 3, 6, 6)).astype(np.float32)
    net.forward_last(x, train=True)
    src = int(frm) + 3 if int(frm) < 0 else int(frm)
    np.testing.assert_array_equal(net.layer_output(3, 2), net.layer_output(2, 2) + net.layer_output(src, 2))
    check_network(net, x, rng, kind="shortcut")
    # the shortcut as the last layer. Gradients near 0 are held to FLOOR's absolute 1e-4, about float32's noise
    # in f divided by the step here (the same analytic gradients measured 0.5e-4 or 1.6e-4 off with two summation
    # orders of the batch-norm statistics): steps twice as long halve that noise; every activation here is smooth,
    # so the longer steps cost no accuracy worth the name (Richardson's differences are fourth-order).
    net2 = make_net(tmp_path, "shortcut_last", 6, 6, 3, layers[:4], 2)
    randomize(net2, rng)
    check_network(net2, x, rng, kind="shortcut", eps=2 * EPS_P, eps_x=2 * EPS_X)


def test_shortcut_leaky_last(tmp_path):
    """A shortcut with its own (leaky) activation, kinks frozen as for the convolutions."""
    rng = np.random.default_rng(15)
    net = make_net(tmp_path, "sc_leaky", 6, 6, 3, shortcut_layers("-3", "leaky")[:4], 2)
    twin = make_net(tmp_path, "sc_linear", 6, 6, 3, shortcut_layers("-3", "linear")[:4], 2)
    randomize(net, rng)
    x = rng.uniform(-1, 1, (2, 3, 6, 6)).astype(np.float32)
    check_kinked_last_layer(net, twin, x, rng, "leaky", "shortcut")


@pytest.mark.parametrize("last", [False, True], ids=["inside", "last"])
def test_upsample_gradient(tmp_path, last):
    rng = np.random.default_rng(14)
    layers = [conv(3, 3, stride=2, bn=1, act="swish"),     # 8x8 -> 4x4
              ("upsample", {"stride": 2})]                # -> 8x8
    if not last:
        layers.append(conv(2, 3, bn=0, act="logistic"))
    net = make_net(tmp_path, "upsample", 8, 8, 2, layers, 2)
    randomize(net, rng)
    x = rng.uniform(-1, 1, (2, 2, 8, 8)).astype(np.float32)
    net.forward_last(x, train=True)
    np.testing.assert_array_equal(net.layer_output(1, 2),
                                  net.layer_output(0, 2).repeat(2, axis=2).repeat(2, axis=3))
    check_network(net, x, rng, kind="upsample")


# ---------------------------------------------------------------------------------------------------------
# [yolo]
def test_yolo_passes_delta_through(tmp_path):
    """The [yolo] backward adds its delta unchanged to its input's delta (deltas are w.r.t. raw inputs):
    conv+yolo probed with D gives exactly what the conv alone gives when probed with D."""
    rng = np.random.default_rng(21)
    for bn, act in ((0, "linear"), (1, "leaky")):
        body = [conv(4, 3, bn=1, act="mish"), conv(2 * (5 + 2), 1, bn=bn, act=act)]
        with_yolo = make_net(tmp_path, f"with_yolo{bn}", 8, 8, 3, body + [yolo(classes=2)], 2)
        alone = make_net(tmp_path, f"alone{bn}", 8, 8, 3, body, 2)
        p = randomize(with_yolo, rng)
        alone.set_params(p)
        x = rng.uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
        D = rng.uniform(-1, 1, (2, 14, 8, 8)).astype(np.float32)
        dx_y, dp_y = with_yolo.backward_probe(x, D)
        dx_a, dp_a = alone.backward_probe(x, D)
        np.testing.assert_array_equal(dx_y, dx_a)
        np.testing.assert_array_equal(dp_y, dp_a)
        assert np.abs(dx_y).max() > 1e-3
        if act == "linear" and not bn:
            # a linear, un-normalised conv leaves its delta as it received it: exactly D
            np.testing.assert_array_equal(with_yolo._layer_delta(1, 2), D)


def test_yolo_alone_input_delta_is_last_delta(tmp_path):
    rng = np.random.default_rng(22)
    net = make_net(tmp_path, "yolo_only", 4, 4, 2 * (5 + 1), [yolo(classes=1)], 3)
    x = rng.uniform(-2, 2, (3, 12, 4, 4)).astype(np.float32)
    D = rng.uniform(-1, 1, (3, 12, 4, 4)).astype(np.float32)
    dx, dp = net.backward_probe(x, D)
    np.testing.assert_array_equal(dx, D)
    assert dp.size == 0


def mini_yolo_layers(act):
    """A YOLOv3-style net: BN convs (stride 2 to downsample, as in YOLOv3), a residual shortcut, route,
    upsample, two [yolo] heads. (The maxpools of yolov3-tiny are checked in test_maxpool_*.)"""
    a = act if isinstance(act, list) else [act] * 6
    return [
        conv(4, 3, bn=1, act=a[0]),                       # 0: 12x12x4
        conv(6, 3, stride=2, bn=1, act=a[1]),             # 1: 6x6x6
        conv(3, 1, bn=1, act=a[2]),                       # 2
        conv(6, 3, bn=1, act=a[3]),                       # 3
        ("shortcut", {"from": "-3", "activation": "linear"}),  # 4: = 3 + 1
        conv(2 * 6, 1, bn=0, act="linear"),               # 5: head 1 input
        yolo(classes=1, mask="1,2"),                      # 6
        ("route", {"layers": "-3"}),                      # 7: = layer 4
        conv(3, 1, bn=1, act=a[4]),                       # 8
        ("upsample", {"stride": 2}),                      # 9: 12x12x3
        ("route", {"layers": "-1,0"}),                    # 10: 12x12x7
        conv(4, 3, bn=1, act=a[5]),                       # 11
        conv(2 * 6, 1, bn=0, act="linear"),               # 12: head 2 input
        yolo(classes=1, mask="0,1"),                      # 13
    ]


@pytest.mark.parametrize("act", ["leaky", "smooth"])
def test_mini_yolo_network(tmp_path, act):
    """The whole YOLOv3-style network, probed from D at the last [yolo] (which hands D to its input unchanged),
    against finite differences of sum(raw input of the last head * D) along dense random directions over the
    input and over each parameter array (Richardson-extrapolated). Per-entry differences do not work here: f
    sums 3456 float32 outputs that batch norm couples, and their rounding (~5e-4 on a difference quotient)
    is as large as the smaller gradients; the layers are checked entry by entry in the tests above.
    `leaky` as YOLOv3 has it, with batch-norm parameters that keep the pre-activations off the kink (see
    randomize); `smooth` with mish/swish/tanh/logistic and the usual parameters."""
    rng = np.random.default_rng(23)
    acts = "leaky" if act == "leaky" else ["mish", "swish", "tanh", "logistic", "swish", "mish"]
    net = make_net(tmp_path, "mini_yolo", 12, 12, 3, mini_yolo_layers(acts), 2)
    randomize(net, rng, far_from_kinks=True)
    x = rng.uniform(-1, 1, (2, 3, 12, 12)).astype(np.float32)
    check_directional(net, x, rng, out_index=12, eps=1e-2, kind="mini-yolo", n_dirs=4, floor=3e-3)


# ---------------------------------------------------------------------------------------------------------
# batch norm: training forward against numpy, rolling averages after train_chunk
@pytest.mark.parametrize("groups", [1, 2])
def test_batchnorm_training_forward_matches_numpy(tmp_path, groups):
    rng = np.random.default_rng(31 + groups)
    n, c, h, w, f = 3, 4, 8, 8, 4
    net = make_net(tmp_path, "bn", w, h, c, [conv(f, 3, bn=1, act="linear", groups=groups)], n)
    p = randomize(net, rng)
    lay = dict(param_layout(net))
    # A filter with a tiny output variance makes the exact form of the epsilon, sqrt(var) + 1e-6, matter.
    p[lay["L0.weights"]][: p[lay["L0.weights"]].size // f] *= np.float32(1e-4)
    net.set_params(p)
    x = rng.uniform(-1, 1, (n, c, h, w)).astype(np.float32)
    out = net.forward_last(x, train=True)
    z = np_conv(x, p[lay["L0.weights"]], f, 3, 1, 1, groups)
    ref, mean, var = np_batchnorm_train(z, p[lay["L0.scales"]], p[lay["L0.biases"]])
    err = np.abs(out - ref).max()
    assert err < 2e-5, f"training batch norm differs from numpy by {err:.3g}"
    # The check can tell the unbiased variance from the biased one (it would differ by ~1e-3).
    biased, _, _ = np_batchnorm_train(z, p[lay["L0.scales"]], p[lay["L0.biases"]], unbiased=False)
    assert np.abs(biased - ref).max() > 20 * 2e-5
    # ...and the eps in sqrt(var) + 1e-6 from sqrt(var + 1e-5), Darknet's other formula
    zc = z - mean[None, :, None, None]
    other = zc / np.sqrt(var + 1e-5)[None, :, None, None] * p[lay["L0.scales"]][None, :, None, None] \
        + p[lay["L0.biases"]][None, :, None, None]
    assert np.abs(other - ref).max() > 20 * 2e-5
    # forward_last(train=True) and backward_probe leave the rolling statistics alone
    assert np.array_equal(net.params(), p)


@pytest.mark.parametrize("c,w,h,f,size,pad", [(3, 45, 7, 16, 3, 1), (1, 16, 5, 32, 3, 1), (4, 17, 6, 16, 5, 2),
                                              (2, 5, 4, 16, 3, 0), (3, 33, 3, 16, 1, 0), (3, 40, 9, 16, 7, 3)])
def test_training_forward_of_few_input_channels_matches_numpy(tmp_path, c, w, h, f, size, pad):
    """A first layer's training forward (an image's few channels: conv_few_channels.c where the CPU has
    AVX-512): rows shorter and longer than 16 pixels, taps reaching past both edges, kernels of 1 to 7."""
    rng = np.random.default_rng(41 + c + size)
    net = make_net(tmp_path, "few", w, h, c, [conv(f, size, padding=pad, bn=0, act="linear")], 2)
    p = randomize(net, rng)
    lay = dict(param_layout(net))
    x = rng.uniform(-1, 1, (2, c, h, w)).astype(np.float32)
    ref = np_conv(x, p[lay["L0.weights"]], f, size, 1, pad, 1) + p[lay["L0.biases"]][None, :, None, None]
    out = net.forward_last(x, train=True)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("act", ["linear", "leaky"])
def test_batchnorm_statistics_of_large_planes_stay_within_float_rounding(tmp_path, act):
    """The batch statistics of a 416x416 layer whose outputs sit far from zero (means about 9 standard deviations
    from 0; in yolov3-tiny's first layer up to 5): within float32's rounding of numpy's float64. Summing each
    plane in float put this layer's outputs 7-9e-6 of their largest off (yolov3-tiny's first layer up to 9e-5);
    the sums go through double every 1024 values."""
    rng = np.random.default_rng(3)
    n, size = 2, 416
    net = make_net(tmp_path, "bn_large", size, size, 1, [conv(2, 1, bn=1, act=act)], n)
    p = randomize(net, rng)
    lay = dict(param_layout(net))
    p[lay["L0.weights"]] = [1.0, -0.7]
    net.set_params(p)
    x = (5 + rng.uniform(-1, 1, (n, 1, size, size))).astype(np.float32)
    out = net.forward_last(x, train=True)
    z = np_conv(x, p[lay["L0.weights"]], 2, 1, 1, 0, 1)
    ref, mean, var = np_batchnorm_train(z, p[lay["L0.scales"]], p[lay["L0.biases"]])
    assert np.abs(mean).min() > 4 * np.sqrt(var).max()
    if act == "leaky":
        ref = np.where(ref > 0, ref, 0.1 * ref)
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err < 2e-6, f"training batch norm of 416x416 planes differs from numpy by {err:.3g} of the largest"


def test_batchnorm_rolling_update_after_train_chunk(tmp_path):
    rng = np.random.default_rng(41)
    n, c, h, w = 2, 3, 8, 8
    layers = [conv(4, 3, bn=1, act="leaky"), conv(3, 3, stride=2, bn=1, act="leaky"), conv(2 * 6, 1, act="linear"),
              yolo(classes=1, mask="0,1")]
    net = make_net(tmp_path, "bn_roll", w, h, c, layers, n)
    p0 = randomize(net, rng)
    lay = dict(param_layout(net))
    x = rng.uniform(0, 1, (n, c, h, w)).astype(np.float32)
    truths = np.zeros((n, 2, 5), np.float32)
    truths[0, 0] = [0.4, 0.5, 0.3, 0.4, 0]
    truths[1, 0] = [0.6, 0.3, 0.5, 0.2, 0]
    # The loss-only forward (dn_network_loss) must not touch them either.
    net.loss(x, truths)
    assert np.array_equal(net.params(), p0), "Network.loss changed parameters"
    net.train_chunk(x, truths)
    p1 = net.params()
    # layer 0: statistics of the convolution of the input
    z0 = np_conv(x, p0[lay["L0.weights"]], 4, 3, 1, 1, 1)
    y0, mean0, var0 = np_batchnorm_train(z0, p0[lay["L0.scales"]], p0[lay["L0.biases"]])
    # layer 1: statistics of the convolution of layer 0's (leaky) output
    a0 = np.where(y0 > 0, y0, 0.1 * y0)
    z1 = np_conv(a0, p0[lay["L1.weights"]], 3, 3, 2, 1, 1)
    _, mean1, var1 = np_batchnorm_train(z1, p0[lay["L1.scales"]], p0[lay["L1.biases"]])
    for i, (mean, var) in enumerate(((mean0, var0), (mean1, var1))):
        rm, rv = lay[f"L{i}.rolling_mean"], lay[f"L{i}.rolling_variance"]
        np.testing.assert_allclose(p1[rm], 0.99 * p0[rm].astype(np.float64) + 0.01 * mean, rtol=1e-5, atol=1e-6,
                                   err_msg=f"layer {i} rolling mean")
        np.testing.assert_allclose(p1[rv], 0.99 * p0[rv].astype(np.float64) + 0.01 * var, rtol=1e-5, atol=1e-6,
                                   err_msg=f"layer {i} rolling variance")
        assert np.all(np.abs(p1[rm] - p0[rm]) > 1e-6), "rolling mean did not move"
    # train_chunk only accumulates gradients: every other parameter is unchanged until update()
    moved = np.zeros(net.n_params, bool)
    for label, sl in lay.items():
        if "rolling" in label:
            moved[sl] = True
    assert np.array_equal(p1[~moved], p0[~moved])


@pytest.mark.parametrize("conv_algo", ["auto", "plain"])
def test_a_chunk_trained_again_gives_the_same_gradients(tmp_path, conv_algo):
    """The training forward leaves a delta unzeroed when the next layer's backward is its only writer and sets it
    (a convolution or max pool after it; network.c mark_delta_writers). Deltas left by another chunk must then
    never leak in: the same chunk after a different one gives bit-identical gradients. TINY_CFG has every case:
    conv -> max pool -> conv, 1x1 and strided convolutions, a shortcut and routes (two writers: zeroed)."""
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    net = Network(cfg, batch=2, conv_algo=conv_algo)
    net.init_params(3)
    rng = np.random.default_rng(2)
    images = [rng.random((2, 3, 64, 64), dtype=np.float32) for _ in range(2)]
    truths = np.zeros((2, 2, 5), np.float32)
    truths[:, 0] = [0.4, 0.5, 0.3, 0.4, 0]
    truths[:, 1] = [0.7, 0.2, 0.2, 0.3, 1]

    def gradients(x):
        _ffi.network_zero_updates(net._handle())
        loss = net.train_chunk(x, truths)
        updates = np.empty(net.n_params, np.float32)
        _ffi.network_get_updates(net._handle(), updates)
        return loss, updates

    first = gradients(images[0])
    other = gradients(images[1])
    again = gradients(images[0])
    assert first[0] == again[0] and first[0] != other[0]
    assert np.abs(first[1]).max() > 0
    np.testing.assert_array_equal(again[1], first[1])


def test_zz_report():
    """Prints the worst relative error per layer kind seen by the tests above (pytest -s shows it)."""
    for kind, err in sorted(WORST.items()):
        print(f"worst relative gradient error  {kind:10s} {err:.2e}")
        assert err < TOL
