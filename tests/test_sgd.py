"""The SGD step (SPEC §3), checked against the formula worked in float64 here:

    for conv weights only:  u -= decay * B * w
    every trainable array:  p += (lr / B) * u;  u *= momentum

Biases and batch-norm scales get no decay; rolling mean and variance are not trained. The update buffers are
reached through the C API (dn_network_get_updates / dn_network_set_updates), as a multi-device reduction would.
"""
from __future__ import annotations

import numpy as np
import pytest

from pydarknet import Network
from pydarknet._ffi import check, ffi, lib

from conftest import TINY_CFG


def layout(net: Network) -> dict[str, np.ndarray]:
    """Boolean masks over the parameter block: 'bias', 'scale', 'rolling', 'weight' (the .weights order)."""
    kinds = np.empty(net.n_params, dtype=object)
    offset = 0
    for layer in net.layers:
        if layer.type != "conv":
            continue
        f = layer.filters
        parts = [("bias", f)]
        if layer.batch_normalize:
            parts += [("scale", f), ("rolling", 2 * f)]
        parts.append(("weight", layer.n_params - sum(n for _, n in parts)))
        for kind, n in parts:
            kinds[offset:offset + n] = kind
            offset += n
    assert offset == net.n_params
    return {kind: kinds == kind for kind in ("bias", "scale", "rolling", "weight")}


def get_updates(net: Network) -> np.ndarray:
    """A copy of the network's update buffers."""
    out = np.empty(net.n_params, np.float32)
    check(lib.dn_network_get_updates(net._handle(), 0, out.size, ffi.from_buffer("float[]", out)))
    return out


def set_updates(net: Network, values: np.ndarray) -> None:
    values = np.ascontiguousarray(values, np.float32)
    check(lib.dn_network_set_updates(net._handle(), 0, values.size, ffi.from_buffer("float[]", values)))


@pytest.fixture
def net(tmp_path):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    with Network(cfg) as n:
        yield n


def test_one_step_follows_the_formula(net):
    rng = np.random.default_rng(3)
    masks = layout(net)
    assert masks["weight"].sum() > 1000 and masks["scale"].sum() > 0
    p0 = rng.uniform(-1, 1, net.n_params).astype(np.float32)
    net.set_params(p0)
    u0 = rng.uniform(-5, 5, net.n_params).astype(np.float32)
    set_updates(net, u0)
    lr, momentum, decay, batch = 0.01, 0.9, 0.0005, 16
    net.update(lr, momentum, decay, batch)
    u = get_updates(net)

    p0d, u0d = p0.astype(np.float64), u0.astype(np.float64)
    decayed = np.where(masks["weight"], u0d - decay * batch * p0d, u0d)
    trained = masks["weight"] | masks["bias"] | masks["scale"]
    expected_p = np.where(trained, p0d + lr / batch * decayed, p0d)
    np.testing.assert_allclose(net.params(), expected_p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(u[trained], momentum * decayed[trained], rtol=1e-6, atol=1e-7)
    # rolling statistics are neither stepped nor decayed
    np.testing.assert_array_equal(net.params()[masks["rolling"]], p0[masks["rolling"]])


def test_momentum_carries_the_step_on(net):
    """With no new gradient, the second step is momentum times the first (plus the decay of the new weights)."""
    rng = np.random.default_rng(4)
    masks = layout(net)
    p0 = rng.uniform(-1, 1, net.n_params).astype(np.float32)
    net.set_params(p0)
    set_updates(net, rng.uniform(-5, 5, net.n_params).astype(np.float32))
    lr, momentum, batch = 0.02, 0.5, 4
    net.update(lr, momentum, 0.0, batch)
    p1 = net.params().astype(np.float64)
    net.update(lr, momentum, 0.0, batch)
    p2 = net.params().astype(np.float64)
    trained = ~masks["rolling"]
    np.testing.assert_allclose((p2 - p1)[trained], momentum * (p1 - p0)[trained], rtol=1e-4, atol=1e-7)


def test_decay_pulls_weights_only(net):
    """A zero gradient and decay alone: conv weights shrink by lr*decay, biases and scales stay."""
    rng = np.random.default_rng(5)
    masks = layout(net)
    p0 = rng.uniform(0.5, 1, net.n_params).astype(np.float32)
    net.set_params(p0)
    set_updates(net, np.zeros(net.n_params, np.float32))
    lr, decay = 0.1, 0.01
    net.update(lr, 0.9, decay, 8)
    p1 = net.params()
    np.testing.assert_allclose(p1[masks["weight"]], p0[masks["weight"]] * (1 - lr * decay), rtol=1e-6)
    np.testing.assert_array_equal(p1[~masks["weight"]], p0[~masks["weight"]])


@pytest.mark.parametrize("iou_loss", ["mse", "giou"])
def test_network_loss_equals_the_yolo_layer_on_its_own(tmp_path, iou_loss):
    """Network.loss (a training-mode forward of the whole net) gives, per [yolo] layer, the cost, delta and
    statistics that pydarknet.yolo_loss computes from that layer's raw input; and changes no weight."""
    import pydarknet

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG.replace("random=0", f"random=0\niou_loss={iou_loss}\niou_normalizer=0.5"))
    rng = np.random.default_rng(6)
    with Network(cfg, batch=2) as net:
        x = rng.uniform(0, 1, (2, 3, net.height, net.width)).astype(np.float32)
        truths = np.zeros((2, net.max_boxes, 5), np.float32)
        truths[0, :2] = [[0.3, 0.4, 0.25, 0.3, 0], [0.7, 0.6, 0.5, 0.4, 1]]
        truths[1, 0] = [0.5, 0.5, 0.12, 0.2, 1]
        p0 = net.params()
        per_layer = net.loss(x, truths)
        assert np.array_equal(net.params(), p0)
        assert len(per_layer) == len(net.yolo_layers) == 2
        for result, layer in zip(per_layer, net.yolo_layers):
            raw = net.layer_output(layer.index - 1, 2)
            anchors, mask = net.yolo_anchors(layer.index)
            cost, delta, stats = pydarknet.yolo_loss(
                raw, truths, anchors=anchors, mask=mask, classes=layer.classes, net_w=net.width,
                net_h=net.height, iou_loss=layer.iou_loss, iou_normalizer=layer.iou_normalizer,
                cls_normalizer=layer.cls_normalizer, representation=layer.representation,
                ignore_thresh=layer.ignore_thresh, truth_thresh=layer.truth_thresh, max_boxes=layer.max_boxes)
            assert layer.iou_loss == iou_loss
            np.testing.assert_allclose(result["cost"], cost, rtol=1e-6)
            np.testing.assert_array_equal(result["delta"], delta)
            assert result["stats"]["count"] == stats["count"]
            assert result["stats"]["iou"] == pytest.approx(stats["iou"], rel=1e-6)
        assert sum(r["stats"]["count"] for r in per_layer) > 0  # some truth was matched
