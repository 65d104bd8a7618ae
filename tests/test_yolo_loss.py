"""The [yolo] layer's loss (pydarknet.loss.yolo_loss over dn_yolo_loss).

- Golden: every case of tests/data/yolo_golden (the reference engine's forward_yolo_layer) must be
  reproduced: outputs, deltas (against CASE.delta_clamped.f32, see the reference README) within rtol 1e-5 /
  atol 1e-4, the cost within 1e-5 relative, and the statistics it printed.
- Finite differences: the iou/giou box deltas against central differences of IoU/GIoU computed here in
  float64, folded the reference's way (x, y: d/dx, d/dy of the relative box; w, h: d/dw, d/dh times e^tw,
  e^th for `exp`, times 1 for `lin`; times iou_normalizer); mse deltas against -d/dpred of
  1/2*(2 - w*h)*(target - pred)^2; the objectness of unmatched predictions.
- Truth handling, the ignore / truth_thresh rules, collisions, argument checking, threads.
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import DATA
from pydarknet._ffi import ffi, lib
from pydarknet.errors import DarknetError
from pydarknet.loss import yolo_loss


GOLDEN = DATA / "yolo_golden"  # the reference engine's files, committed (tests/data/README.md)
CASE_NAMES = ["mse_exp", "mse_lin", "iou_exp", "iou_lin", "giou_exp", "giou_lin", "giou_exp_in1_cn2"]
needs_golden = pytest.mark.skipif(
    not (GOLDEN / "cases.json").is_file(),
    reason=f"golden files not found: {GOLDEN}",
)


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-np.asarray(v, dtype=np.float64)))


def logit(p):
    return math.log(p / (1.0 - p))


# ---------------------------------------------------------------------------------------------------------
# golden data of the reference engine


def _golden_meta():
    return json.loads((GOLDEN / "cases.json").read_text())


def _golden_inputs(meta):
    layer = meta["layer"]
    shape = tuple(meta["shapes"]["input"])
    x = np.fromfile(GOLDEN / "input.f32", dtype="<f4").reshape(shape)
    truth = np.fromfile(GOLDEN / "truth.f32", dtype="<f4").reshape(layer["batch"], layer["max_boxes"], 5)
    return x, truth


def _parse_printed(case):
    line = next(s for s in case["stdout"] if s.startswith("v3 ("))
    num = r"(-?[0-9.]+(?:e[-+]?[0-9]+)?|-?nan|-?inf)"
    pattern = (
        rf"Avg \(IOU: {num}, GIOU: {num}\), Class: {num}, Obj: {num}, No Obj: {num}, "
        rf"\.5R: {num}, \.75R: {num}, count: (\d+)"
    )
    m = re.search(pattern, line)
    assert m, f"cannot parse the reference's printed line: {line!r}"
    keys = ["iou", "giou", "class", "obj", "noobj", "recall50", "recall75"]
    out = {k: float(v) for k, v in zip(keys, m.groups()[:7])}
    out["count"] = int(m.group(8))
    return out


@needs_golden
def test_golden_case_list_is_complete():
    assert sorted(c["name"] for c in _golden_meta()["cases"]) == sorted(CASE_NAMES)


@needs_golden
@pytest.mark.parametrize("name", CASE_NAMES)
def test_golden_case(name):
    meta = _golden_meta()
    layer = meta["layer"]
    case = next(c for c in meta["cases"] if c["name"] == name)
    x, truth = _golden_inputs(meta)
    out = np.empty_like(x)
    cost, delta, stats = yolo_loss(
        x,
        truth,
        anchors=layer["anchors"],
        mask=layer["mask"],
        classes=layer["classes"],
        net_w=layer["net_w"],
        net_h=layer["net_h"],
        iou_loss=case["iou_loss"],
        iou_normalizer=case["iou_normalizer"],
        cls_normalizer=case["cls_normalizer"],
        representation=case["representation"],
        ignore_thresh=layer["ignore_thresh"],
        truth_thresh=layer["truth_thresh"],
        max_boxes=layer["max_boxes"],
        out=out,
    )
    ref_out = np.fromfile(GOLDEN / f"{name}.output.f32", dtype="<f4").reshape(x.shape)
    ref_delta = np.fromfile(GOLDEN / f"{name}.delta_clamped.f32", dtype="<f4").reshape(x.shape)
    assert delta.shape == x.shape and delta.dtype == np.float32
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6, err_msg=f"{name}: output")
    np.testing.assert_allclose(delta, ref_delta, rtol=1e-5, atol=1e-4, err_msg=f"{name}: delta")
    assert np.count_nonzero(delta) == np.count_nonzero(ref_delta)
    assert cost == pytest.approx(case["cost"], rel=1e-5)

    printed = _parse_printed(case)
    assert stats["count"] == printed["count"]
    for key in ("iou", "giou", "class", "obj", "noobj", "recall50", "recall75"):
        assert stats[key] == pytest.approx(printed[key], abs=2e-6), key

    # the cost split: iou_loss + cls_loss == cost, each part as the README defines it
    n_slots = len(layer["mask"])
    d = ref_delta.astype(np.float64).reshape(x.shape[0], n_slots, -1, x.shape[2], x.shape[3])
    box_sq = float(np.sum(d[:, :, :4] ** 2))
    other_sq = float(np.sum(d[:, :, 4:] ** 2))
    assert stats["cost"] == pytest.approx(cost, rel=1e-7)
    assert stats["iou_loss"] + stats["cls_loss"] == pytest.approx(cost, rel=1e-6)
    if case["iou_loss"] == "mse":
        assert stats["iou_loss"] == pytest.approx(box_sq, rel=1e-5)
        assert stats["cls_loss"] == pytest.approx(other_sq, rel=1e-5)
    else:
        mean_quality = printed["giou"] if case["iou_loss"] == "giou" else printed["iou"]
        assert stats["iou_loss"] == pytest.approx(case["iou_normalizer"] * (1 - mean_quality), abs=1e-5)
        assert stats["cls_loss"] == pytest.approx(case["cls_normalizer"] * other_sq, rel=1e-5)


@needs_golden
def test_golden_clamped_indices_are_not_the_reference_defect():
    """Where the reference's unclamped intersection made a meaningless gradient, we follow the clamped file."""
    meta = _golden_meta()
    layer = meta["layer"]
    differs = json.loads((GOLDEN / "clamped_differs_at.json").read_text())
    x, truth = _golden_inputs(meta)
    for case in meta["cases"]:
        idx = differs[case["name"]]
        if not idx:
            continue
        _, delta, _ = yolo_loss(
            x, truth, anchors=layer["anchors"], mask=layer["mask"], classes=layer["classes"],
            net_w=layer["net_w"], net_h=layer["net_h"], iou_loss=case["iou_loss"],
            iou_normalizer=case["iou_normalizer"], cls_normalizer=case["cls_normalizer"],
            representation=case["representation"], ignore_thresh=layer["ignore_thresh"],
            truth_thresh=layer["truth_thresh"], max_boxes=layer["max_boxes"],
        )
        raw = np.fromfile(GOLDEN / f"{case['name']}.delta.f32", dtype="<f4")
        clamped = np.fromfile(GOLDEN / f"{case['name']}.delta_clamped.f32", dtype="<f4")
        flat = delta.reshape(-1)
        np.testing.assert_allclose(flat[idx], clamped[idx], rtol=1e-5, atol=1e-4)
        assert np.max(np.abs(flat[idx] - raw[idx])) > 1e-2, case["name"]


# ---------------------------------------------------------------------------------------------------------
# a small synthetic layer: W = H = 5, one anchor (so every truth is assigned), 2 classes, net 160x160

W = H = 5
NET = 160
ANCHOR = (40.0, 60.0)
CLASSES = 2
ENTRIES = 5 + CLASSES


def _iou64(a, b, giou=False):
    """IoU (or GIoU) of two (x, y, w, h) boxes, float64, intersection clamped at 0."""
    al, ar, at, ab = a[0] - a[2] / 2, a[0] + a[2] / 2, a[1] - a[3] / 2, a[1] + a[3] / 2
    bl, br, bt, bb = b[0] - b[2] / 2, b[0] + b[2] / 2, b[1] - b[3] / 2, b[1] + b[3] / 2
    iw = max(0.0, min(ar, br) - max(al, bl))
    ih = max(0.0, min(ab, bb) - max(at, bt))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    v = inter / union
    if giou:
        c = (max(ar, br) - min(al, bl)) * (max(ab, bb) - min(at, bt))
        v -= (c - union) / c
    return v


def _central_diff(f, p, eps=1e-7):
    g = np.zeros(4)
    for k in range(4):
        hi, lo = list(p), list(p)
        hi[k] += eps
        lo[k] -= eps
        g[k] = (f(hi) - f(lo)) / (2 * eps)
    return g


def _raw_for_box(box, i, j, representation, anchor=ANCHOR):
    """Raw (tx, ty, tw, th) whose activated box is `box` (relative x, y, w, h) at cell (i, j)."""
    bx, by, bw, bh = box
    tx, ty = logit(bx * W - i), logit(by * H - j)
    if representation == "exp":
        return tx, ty, math.log(bw * NET / anchor[0]), math.log(bh * NET / anchor[1])
    return tx, ty, bw * NET / anchor[0], bh * NET / anchor[1]


def _single_layer(pred_box, truth_box, representation="exp", seed=0):
    """x (1, 7, 5, 5) with random raw values and the prediction at the truth's cell set to pred_box."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, ENTRIES, H, W)).astype(np.float32)
    i, j = int(truth_box[0] * W), int(truth_box[1] * H)
    x[0, 0:4, j, i] = _raw_for_box(pred_box, i, j, representation)
    truths = np.zeros((1, 1, 5), np.float32)
    truths[0, 0] = truth_box
    return x, truths, i, j


def _exp_box(out, b, j, i, anchor=ANCHOR):
    """The (x, y, w, h) box of the `exp` prediction at cell (i, j), from the layer's float32 output."""
    o = out[b, :, j, i].astype(np.float64)
    return [(i + o[0]) / W, (j + o[1]) / H, math.exp(o[2]) * anchor[0] / NET, math.exp(o[3]) * anchor[1] / NET]


def _call(x, truths, **kw):
    args = dict(anchors=ANCHOR, mask=[0], classes=CLASSES, net_w=NET, net_h=NET)
    args.update(kw)
    return yolo_loss(x, truths, **args)


TRUTH = (0.5, 0.3, 0.2, 0.25, 1.0)  # cell i=2, j=1
BOX_CONFIGS = {
    "partial": ((0.45, 0.35, 0.15, 0.3), TRUTH),
    "pred_inside": ((0.52, 0.28, 0.1, 0.12), TRUTH),
    "truth_inside": ((0.48, 0.33, 0.4, 0.5), TRUTH),
    "cross": ((0.55, 0.27, 0.5, 0.05), TRUTH),
    "disjoint": ((0.58, 0.38, 0.02, 0.02), (0.41, 0.21, 0.01, 0.01, 0.0)),
}


@pytest.mark.parametrize("representation", ["exp", "lin"])
@pytest.mark.parametrize("loss", ["iou", "giou"])
@pytest.mark.parametrize("config", sorted(BOX_CONFIGS))
def test_iou_box_delta_matches_finite_differences(config, loss, representation):
    pred_box, truth_box = BOX_CONFIGS[config]
    x, truths, i, j = _single_layer(pred_box, truth_box, representation)
    out = np.empty_like(x)
    norm = 0.75
    _, delta, stats = _call(x, truths, iou_loss=loss, iou_normalizer=norm, representation=representation, out=out)
    assert stats["count"] == 1

    # the box exactly as the layer sees it (from its float32 output)
    o = out[0, :, j, i].astype(np.float64)
    if representation == "exp":
        fw, fh = math.exp(o[2]), math.exp(o[3])
        box = [(i + o[0]) / W, (j + o[1]) / H, fw * ANCHOR[0] / NET, fh * ANCHOR[1] / NET]
    else:
        fw = fh = 1.0
        box = [(i + o[0]) / W, (j + o[1]) / H, o[2] * ANCHOR[0] / NET, o[3] * ANCHOR[1] / NET]
    tb = [float(v) for v in truths[0, 0, :4]]
    g = _central_diff(lambda p: _iou64(p, tb, giou=(loss == "giou")), box)
    expected = norm * np.array([g[0], g[1], g[2] * fw, g[3] * fh])
    got = delta[0, 0:4, j, i].astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    if config == "disjoint":
        if loss == "iou":
            assert np.all(got == 0)
        else:
            assert np.all(np.abs(got) > 1e-3)  # GIoU keeps its enclosing-box term
    else:
        assert np.all(np.abs(got[2:]) > 1e-3)

    # no (2 - w*h) scale, no other delta on box entries elsewhere
    others = delta[0, 0:4].copy()
    others[:, j, i] = 0
    assert np.all(others == 0)
    quality = _iou64(box, tb, giou=(loss == "giou"))
    assert stats["iou"] == pytest.approx(_iou64(box, tb), abs=1e-5)
    assert stats["giou"] == pytest.approx(_iou64(box, tb, giou=True), abs=1e-5)
    non_box = float(np.sum(delta[0, 4:].astype(np.float64) ** 2))
    assert stats["iou_loss"] == pytest.approx(norm * (1 - quality), abs=1e-5)
    assert stats["cls_loss"] == pytest.approx(non_box, rel=1e-5)


def test_iou_delta_overlap_on_one_axis_only():
    """Boxes overlapping in x but not in y: I = 0 with the overlaps clamped each at 0, and the edge
    derivatives keep their one-sided form (dI/dtop = -Iw while the pred's top is below the truth's),
    which is what the reference's clamped golden file holds."""
    truth_box = (0.5, 0.25, 0.2, 0.1, 1.0)  # y in [0.2, 0.3], cell (2, 1)
    pred_box = (0.52, 0.36, 0.1, 0.04)  # y in [0.34, 0.38], x in [0.47, 0.57] (inside the truth's x)
    x, truths, i, j = _single_layer(pred_box, truth_box, "exp")
    out = np.empty_like(x)
    _, delta, stats = _call(x, truths, iou_loss="iou", iou_normalizer=1.0, out=out)
    o = out[0, :, j, i].astype(np.float64)
    px, py = (i + o[0]) / W, (j + o[1]) / H
    pw, ph = math.exp(o[2]) * ANCHOR[0] / NET, math.exp(o[3]) * ANCHOR[1] / NET
    iw = min(px + pw / 2, 0.6) - max(px - pw / 2, 0.4)
    assert iw > 0 and py - ph / 2 > 0.3  # overlapping in x only
    union = pw * ph + 0.2 * 0.1
    d_top, d_bottom = -iw / union, 0.0  # pred top below truth top; pred bottom not above truth bottom
    expected = [0.0, d_top + d_bottom, 0.0, (d_bottom - d_top) / 2 * math.exp(o[3])]
    np.testing.assert_allclose(delta[0, 0:4, j, i], expected, rtol=1e-5, atol=1e-6)
    assert stats["iou"] == 0.0


@pytest.mark.parametrize("representation", ["exp", "lin"])
def test_mse_box_delta(representation):
    pred_box = (0.45, 0.35, 0.15, 0.3)
    x, truths, i, j = _single_layer(pred_box, TRUTH, representation)
    if representation == "lin":
        x[0, 3, j, i] = -0.4  # <= 0: the layer uses e^-0.4 in its place
    out = np.empty_like(x)
    _, delta, stats = _call(x, truths, iou_loss="mse", iou_normalizer=0.3, representation=representation, out=out)
    tx, ty, tw, th = (float(v) for v in truths[0, 0, :4])
    scale = 2 - tw * th
    targets = [tx * W - i, ty * H - j, math.log(tw * NET / ANCHOR[0]), math.log(th * NET / ANCHOR[1])]
    preds = [float(sigmoid(x[0, 0, j, i])), float(sigmoid(x[0, 1, j, i])), float(x[0, 2, j, i]), float(x[0, 3, j, i])]
    if representation == "lin":
        preds[3] = math.exp(-0.4)
        assert out[0, 3, j, i] == pytest.approx(math.exp(-0.4), rel=1e-6)
    for k in range(4):
        # delta = -d/dpred of 1/2 * scale * (target - pred)^2, by central differences
        loss = lambda p: 0.5 * scale * (targets[k] - p) ** 2  # noqa: E731
        eps = 1e-6
        expected = -(loss(preds[k] + eps) - loss(preds[k] - eps)) / (2 * eps)
        assert delta[0, k, j, i] == pytest.approx(expected, rel=1e-5, abs=1e-5), k
    box_sq = float(np.sum(delta[0, :4].astype(np.float64) ** 2))
    assert stats["iou_loss"] == pytest.approx(box_sq, rel=1e-5)  # iou_normalizer unused by mse


def test_objectness_and_class_deltas():
    """Unmatched: obj delta = -cls_normalizer * sigma(raw) unless best IoU > ignore_thresh (then 0);
    matched: cls_normalizer * (1 - obj); class deltas (1 or 0) - sigma(raw), not scaled."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, ENTRIES, H, W)).astype(np.float32)
    truth = (0.5, 0.5, 0.3, 0.4, 1.0)  # cell (2, 2)
    truths = np.zeros((2, 3, 5), np.float32)
    truths[0, 0] = truth
    truths[1, 0] = (0.1, 0.9, 0.05, 0.05, 0.0)  # cell (0, 4)
    # a neighbour of the matched cell overlapping the truth well: must be ignored
    x[0, 0:4, 2, 1] = _raw_for_box((0.39, 0.5, 0.3, 0.4), 1, 2, "exp")  # IoU ~.46
    cn = 1.7
    out = np.empty_like(x)
    _, delta, stats = _call(x, truths, cls_normalizer=cn, ignore_thresh=0.4, out=out)

    obj = sigmoid(x[:, 4])
    matched = {(0, 2, 2): 1, (1, 4, 0): 0}
    n_ignored = n_plain = 0
    for b in range(2):
        tb = [float(v) for v in truths[b, 0, :4]]
        for j in range(H):
            for i in range(W):
                box = _exp_box(out, b, j, i)
                if (b, j, i) in matched:
                    cls = matched[(b, j, i)]
                    assert delta[b, 4, j, i] == pytest.approx(cn * (1 - obj[b, j, i]), rel=1e-5)
                    for c in range(CLASSES):
                        want = (1.0 if c == cls else 0.0) - sigmoid(x[b, 5 + c, j, i])
                        assert delta[b, 5 + c, j, i] == pytest.approx(want, rel=1e-5, abs=1e-7)
                    continue
                assert np.all(delta[b, 5:, j, i] == 0) and np.all(delta[b, :4, j, i] == 0)
                if _iou64(box, tb) > 0.4:
                    n_ignored += 1
                    assert delta[b, 4, j, i] == 0
                else:
                    n_plain += 1
                    assert delta[b, 4, j, i] == pytest.approx(-cn * obj[b, j, i], rel=1e-5)
    assert n_ignored >= 1 and n_plain > 40
    assert stats["count"] == 2
    assert stats["noobj"] == pytest.approx(float(np.mean(obj)), rel=1e-5)
    assert stats["obj"] == pytest.approx((obj[0, 2, 2] + obj[1, 4, 0]) / 2, rel=1e-5)
    want_cls = (sigmoid(x[0, 5 + 1, 2, 2]) + sigmoid(x[1, 5 + 0, 4, 0])) / 2
    assert stats["class"] == pytest.approx(float(want_cls), rel=1e-5)


def test_truth_thresh_treats_an_overlapping_prediction_as_matched():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, ENTRIES, H, W)).astype(np.float32)
    truth = (0.5, 0.5, 0.6, 0.6, 0.0)  # cell (2, 2)
    truths = np.array([[truth]], np.float32)
    box = (0.39, 0.5, 0.6, 0.6)  # centre in the neighbouring cell (i=1, j=2), IoU with the truth ~.69
    x[0, 0:4, 2, 1] = _raw_for_box(box, 1, 2, "exp")
    out = np.empty_like(x)
    # cls_normalizer = 1 here: whether the reference scales this objectness delta by it is not pinned down by
    # the golden data (truth_thresh = 1 there); the core scales it, like every other objectness delta.
    _, delta, stats = _call(x, truths, ignore_thresh=0.5, truth_thresh=0.6, out=out)
    o = out[0, :, 2, 1].astype(np.float64)
    pred = _exp_box(out, 0, 2, 1)
    assert _iou64(pred, list(truth[:4])) > 0.6
    assert delta[0, 4, 2, 1] == pytest.approx(1 - sigmoid(x[0, 4, 2, 1]), rel=1e-5)
    assert delta[0, 5, 2, 1] == pytest.approx(1 - sigmoid(x[0, 5, 2, 1]), rel=1e-5)
    assert delta[0, 6, 2, 1] == pytest.approx(-sigmoid(x[0, 6, 2, 1]), rel=1e-5)
    tx, ty, tw, th = (float(v) for v in truths[0, 0, :4])
    scale = 2 - tw * th
    targets = [tx * W - 1, ty * H - 2, math.log(tw * NET / ANCHOR[0]), math.log(th * NET / ANCHOR[1])]
    np.testing.assert_allclose(delta[0, :4, 2, 1], scale * (np.array(targets) - o[:4]), rtol=1e-5, atol=1e-6)
    assert stats["count"] == 1  # the truth_thresh match is not counted, as in the reference
    # with the default truth_thresh=1 it is merely ignored
    _, delta1, _ = _call(x, truths, ignore_thresh=0.5)
    assert delta1[0, 4, 2, 1] == 0 and np.all(delta1[0, :4, 2, 1] == 0) and np.all(delta1[0, 5:, 2, 1] == 0)


def test_second_truth_on_same_cell_and_anchor():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, ENTRIES, H, W)).astype(np.float32)
    first = (0.5, 0.5, 0.2, 0.25, 1.0)
    second = (0.52, 0.47, 0.22, 0.3, 0.0)
    out = np.empty_like(x)
    _, delta, stats = _call(x, np.array([[first, second]], np.float32), out=out)
    _, delta_second, _ = _call(x, np.array([[second]], np.float32))
    # the box delta is the second truth's
    np.testing.assert_array_equal(delta[0, :4, 2, 2], delta_second[0, :4, 2, 2])
    # both classes set to 1 - sigma, the first's class delta kept
    np.testing.assert_allclose(delta[0, 5:, 2, 2], 1 - sigmoid(x[0, 5:, 2, 2]), rtol=1e-5)
    assert stats["count"] == 2
    assert stats["class"] == pytest.approx(float(np.mean(sigmoid(x[0, 5:, 2, 2]))), rel=1e-5)


def test_best_anchor_outside_mask_is_not_assigned():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, ENTRIES, H, W)).astype(np.float32)
    anchors = [40, 60, 120, 100]
    truths = np.array([[(0.5, 0.5, 120 / NET, 100 / NET, 0)]], np.float32)  # the shape of anchor 1
    _, delta, stats = yolo_loss(x, truths, anchors=anchors, mask=[0], classes=CLASSES, net_w=NET, net_h=NET)
    assert stats["count"] == 0 and stats["iou"] == 0.0
    assert np.all(delta[0, :4] == 0) and np.all(delta[0, 5:] == 0)
    _, delta1, stats1 = yolo_loss(x, truths, anchors=anchors, mask=[1], classes=CLASSES, net_w=NET, net_h=NET)
    assert stats1["count"] == 1 and np.any(delta1[0, :4, 2, 2] != 0)


def test_truths_padding_termination_and_limits():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, ENTRIES, H, W)).astype(np.float32)
    boxes = np.array([[(0.5, 0.5, 0.2, 0.3, 1), (0.1, 0.1, 0.1, 0.1, 0)], [(0.7, 0.3, 0.2, 0.2, 0), (0, 0, 0, 0, 0)]],
                     np.float32)
    c1, d1, s1 = _call(x, boxes, max_boxes=10)
    padded = np.zeros((2, 10, 5), np.float32)
    padded[:, :2] = boxes
    c2, d2, s2 = _call(x, padded, max_boxes=10)
    c3, d3, _ = _call(x, padded.reshape(2, 50), max_boxes=10)  # Darknet's flat buffer
    assert c1 == c2 == c3 and np.array_equal(d1, d2) and np.array_equal(d1, d3) and s1 == s2
    assert s1["count"] == 3
    # a box after the zero terminator is ignored
    padded[1, 2] = (0.2, 0.8, 0.2, 0.2, 1)
    c4, d4, _ = _call(x, padded, max_boxes=10)
    assert c4 == c1 and np.array_equal(d4, d1)
    # more boxes than max_boxes
    with pytest.raises(ValueError, match="max_boxes"):
        _call(x, padded, max_boxes=9)
    # a list of lists works too (float64 is converted)
    c5, _, _ = _call(x.astype(np.float64), boxes.tolist(), max_boxes=10)
    assert c5 == c1


BAD_KWARGS = [
    (dict(iou_loss="ciou"), "iou_loss"),
    (dict(iou_loss=1), "iou_loss"),
    (dict(representation="log"), "representation"),
    (dict(mask=[1]), "mask"),
    (dict(mask=[-1]), "mask"),
    (dict(mask=[]), "mask"),
    (dict(classes=0), "classes"),
    (dict(classes=3), "channels"),
    (dict(net_w=0), "net_w"),
    (dict(net_h=-5), "net_h"),
    (dict(anchors=[40]), "anchors"),
    (dict(anchors=[40, -1]), "anchor value"),  # the C core's check
    (dict(max_boxes=0), "max_boxes"),
    (dict(iou_normalizer=float("nan")), "normalizer"),  # the C core's check
    (dict(cls_normalizer="x"), "cls_normalizer"),
]


@pytest.mark.parametrize("kwargs,word", BAD_KWARGS, ids=[w + str(i) for i, (_, w) in enumerate(BAD_KWARGS)])
def test_bad_arguments(kwargs, word):
    x = np.zeros((1, ENTRIES, H, W), np.float32)
    truths = np.array([[TRUTH]], np.float32)
    with pytest.raises(ValueError, match=word):
        _call(x, truths, **kwargs)


def test_bad_shapes():
    truths = np.array([[TRUTH]], np.float32)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        _call(np.zeros((ENTRIES, H, W), np.float32), truths)
    with pytest.raises(ValueError, match="images"):
        _call(np.zeros((2, ENTRIES, H, W), np.float32), truths)
    with pytest.raises(ValueError, match="truths"):
        _call(np.zeros((1, ENTRIES, H, W), np.float32), np.zeros((1, 3, 4), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        _call(np.zeros((1, ENTRIES, 0, W), np.float32), truths)
    x = np.zeros((1, ENTRIES, H, W), np.float32)
    with pytest.raises(ValueError, match="out"):
        _call(x, truths, out=np.zeros((1, ENTRIES, H, W), np.float64))


@pytest.mark.parametrize(
    "box,word",
    [
        ((0.5, 0.5, 0.2, 0.2, 2), "class"),
        ((0.5, 0.5, 0.2, 0.2, -1), "class"),
        ((0.5, 0.5, 0.0, 0.2, 0), "size"),
        ((1.5, 0.5, 0.2, 0.2, 0), "centre"),
        ((0.5, float("nan"), 0.2, 0.2, 0), "finite"),
        ((0.5, 0.5, 0.2, 0.2, 1e30), "class"),
    ],
)
def test_bad_truth_is_reported_by_the_core(box, word):
    x = np.zeros((1, ENTRIES, H, W), np.float32)
    with pytest.raises((ValueError, DarknetError), match=word) as info:
        _call(x, np.array([[TRUTH, box]], np.float32))
    assert isinstance(info.value, DarknetError)
    assert "image 0 box 1" in str(info.value)


def test_truth_on_the_far_edge_stays_in_the_grid():
    x = np.zeros((1, ENTRIES, H, W), np.float32)
    _, delta, stats = _call(x, np.array([[(1.0, 1.0, 0.2, 0.2, 0)]], np.float32))
    assert stats["count"] == 1 and delta[0, 4, H - 1, W - 1] > 0


def test_concurrent_calls_match_sequential():
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((2, 2 * ENTRIES, 13, 13)).astype(np.float32) for _ in range(8)]
    truths = np.array([[(0.3, 0.4, 0.2, 0.3, 1), (0.7, 0.6, 0.1, 0.1, 0)]] * 2, np.float32)

    def run(x):
        return yolo_loss(x, truths, anchors=[10, 13, 40, 60, 120, 100], mask=[1, 2], classes=CLASSES,
                         net_w=416, net_h=416, iou_loss="giou", iou_normalizer=0.5)

    sequential = [run(x) for x in xs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(run, xs * 4))
    for k, (c, d, s) in enumerate(parallel):
        c0, d0, s0 = sequential[k % len(xs)]
        assert c == c0 and s == s0 and np.array_equal(d, d0)


def test_core_rejects_bad_arguments():
    """dn_yolo_loss checks its arguments itself (the Python wrapper checks first, so call it directly)."""
    x = np.zeros((1, ENTRIES, H, W), np.float32)
    truth = np.zeros((1, 90, 5), np.float32)
    out = np.zeros_like(x)
    delta = np.zeros_like(x)
    mask = ffi.new("int[]", [0])
    anchors = ffi.new("float[]", list(ANCHOR))
    bad_mask = ffi.new("int[]", [1])  # cdata assigned to a struct field is not kept alive by it
    bad_anchors = ffi.new("float[]", [40.0, 0.0])

    def config(**kw):
        cfg = ffi.new("dn_yolo_config *")
        fields = dict(classes=CLASSES, n=1, total=1, mask=mask, anchors=anchors, net_w=NET, net_h=NET, iou_loss=0,
                      iou_normalizer=1.0, cls_normalizer=1.0, representation=0, ignore_thresh=0.5,
                      truth_thresh=1.0, max_boxes=90)
        fields.update(kw)
        for k, v in fields.items():
            setattr(cfg, k, v)
        return cfg

    buf = lambda a: ffi.from_buffer("float[]", a)  # noqa: E731

    def run(cfg, xb=None, n=1, h=H, w=W, tb=None, ob=None, db=None):
        xb = buf(x) if xb is None else xb
        tb = buf(truth) if tb is None else tb
        ob = buf(out) if ob is None else ob
        db = buf(delta) if db is None else db
        status = lib.dn_yolo_loss(cfg, xb, n, h, w, tb, ob, db, ffi.NULL, ffi.NULL)
        return status, ffi.string(lib.dn_last_error()).decode()

    assert run(config())[0] == 0
    cases = [
        (run(ffi.NULL), "cfg is NULL"),
        (run(config(), xb=ffi.NULL), "x is NULL"),
        (run(config(), tb=ffi.NULL), "truth is NULL"),
        (run(config(), ob=ffi.NULL), "output is NULL"),
        (run(config(), db=ffi.NULL), "delta is NULL"),
        (run(config(), n=0), "must be > 0"),
        (run(config(), h=-1), "must be > 0"),
        (run(config(mask=bad_mask)), "mask[0] = 1 outside [0, 1)"),
        (run(config(mask=ffi.NULL)), "mask is NULL"),
        (run(config(classes=0)), "classes"),
        (run(config(iou_loss=3)), "iou_loss"),
        (run(config(representation=2)), "representation"),
        (run(config(max_boxes=0)), "max_boxes"),
        (run(config(anchors=bad_anchors)), "anchor"),
        (run(config(), ob=buf(x)), "distinct"),
    ]
    for (status, message), word in cases:
        assert status == lib.DN_E_ARG, word
        assert word in message and message.startswith("dn_yolo_loss:"), (word, message)


def test_activation_is_the_logistic_to_float_precision():
    """The layer's logistic (a vectorised e^x, not expf) stays within 2 ulp of the float64 logistic (rounded to
    float32) from -100 to 100, is exactly 0 and 1 where the reference's float 1/(1+expf(-v)) saturates to them
    (the infinities too), NaN for NaN, and w, h pass through unchanged."""
    values = np.concatenate([np.linspace(-100, 100, 200_001),
                             [-1e30, -88.8, -88.72, 88.8, 1e30, 0.0, -0.0, -np.inf, np.inf, np.nan]])
    pad = (-len(values)) % (W * H)
    values = np.concatenate([values, np.zeros(pad)]).astype(np.float32)
    planes = values.reshape(-1, H, W)
    x = np.zeros((len(planes), ENTRIES, H, W), np.float32)
    x[:, :] = planes[:, None]
    out = np.empty_like(x)
    _call(x, np.zeros((len(planes), 1, 5), np.float32), out=out)
    with np.errstate(over="ignore"):
        expected = (1 / (1 + np.exp(-values.astype(np.float64)))).astype(np.float32)
        reference = np.float32(1) / (np.float32(1) + np.exp(-values))  # float32 throughout, as Darknet
    nan = np.isnan(values)  # NaN in, NaN out; the rest compared below
    expected, reference, kept = expected[~nan], reference[~nan], values[~nan]
    tiny = expected < np.finfo(np.float32).tiny  # subnormal and zero results: compared with the reference's
    for entry in (0, 1, 4, 5, 6):
        got = out[:, entry].ravel()
        assert np.isnan(got[nan]).all() and not np.isnan(got[~nan]).any()
        got = got[~nan]
        ulp = np.abs(got.view(np.int32).astype(np.int64) - expected.view(np.int32).astype(np.int64))
        assert ulp[~tiny].max() <= 2, (entry, kept[~tiny][ulp[~tiny].argmax()])
        assert np.abs(got[tiny] - reference[tiny]).max() < 1e-42  # a few of the subnormals' steps
        np.testing.assert_array_equal(got[reference == 0], 0)
        np.testing.assert_array_equal(got[reference == 1], 1)
    np.testing.assert_array_equal(out[:, 2], x[:, 2])
    np.testing.assert_array_equal(out[:, 3], x[:, 3])
