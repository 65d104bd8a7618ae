"""The C API around backends: the thread count every compute call runs with (whichever thread makes it),
and the copy-out / copy-in calls that replace raw pointers into a network's buffers."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from pydarknet import Network
from pydarknet._ffi import check, ffi, lib
from pydarknet.errors import DarknetValueError
from pydarknet.network import get_threads, set_threads


def team_of_last_call(net: Network) -> int:
    """The OpenMP team size the network's last compute call ran with (dn_net_info.threads)."""
    return int(net._info().threads)


def forward_in_new_thread(net: Network, x: np.ndarray) -> None:
    errors = []

    def work():
        try:
            net.forward(x)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join(120)
    assert not errors, errors


@pytest.fixture
def restore_threads():
    before = get_threads()
    yield
    set_threads(before)


def test_process_thread_count_applies_to_other_threads(tiny_cfg, restore_threads):
    """OpenMP's thread count is a per-thread setting: set_threads in the main thread must still govern a
    network driven from another Python thread (a data loader's, a server's), for either count."""
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    with Network(tiny_cfg) as net:
        assert team_of_last_call(net) == 0  # no compute call yet
        for n in (1, 2, 3):
            set_threads(n)
            forward_in_new_thread(net, x)
            assert team_of_last_call(net) == n, f"set_threads({n}) in the main thread"
            net.forward(x)
            assert team_of_last_call(net) == n


def test_network_thread_option_overrides_the_process_setting(tiny_cfg, restore_threads):
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    set_threads(2)
    with Network(tiny_cfg, threads=1) as one, Network(tiny_cfg, threads=3) as three, Network(tiny_cfg) as default:
        three.set_params(one.params())
        default.set_params(one.params())
        outs = []
        for net, expected in ((one, 1), (three, 3), (default, 2)):
            forward_in_new_thread(net, x)
            assert team_of_last_call(net) == expected
            outs.append([net.layer_output(l.index, 1) for l in net.yolo_layers])
        truths = np.zeros((1, one.max_boxes, 5), np.float32)
        truths[0, 0] = [0.5, 0.5, 0.3, 0.3, 1]
        one.train_chunk(x, truths)
        assert team_of_last_call(one) == 1
        one.update(0.01, 0.9, 0.0005, 1)
        assert team_of_last_call(one) == 1
    # the thread count changes the speed, not the results
    for a, b in zip(outs[0], outs[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(DarknetValueError, match="threads"):
        Network(tiny_cfg, threads=-1)


def test_params_copy_in_and_out_by_range(tiny_cfg):
    rng = np.random.default_rng(2)
    with Network(tiny_cfg) as net:
        n = net.n_params
        values = rng.uniform(-1, 1, n).astype(np.float32)
        net.set_params(values)
        np.testing.assert_array_equal(net.params(), values)
        # a slice in the middle, written and read back alone
        part = rng.uniform(-1, 1, 100).astype(np.float32)
        check(lib.dn_network_set_params(net._handle(), 1000, 100, ffi.from_buffer("float[]", part)))
        got = np.empty(100, np.float32)
        check(lib.dn_network_get_params(net._handle(), 1000, 100, ffi.from_buffer("float[]", got)))
        np.testing.assert_array_equal(got, part)
        expected = values.copy()
        expected[1000:1100] = part
        np.testing.assert_array_equal(net.params(), expected)
        # out of range: an error naming the size, nothing written
        buf = np.zeros(10, np.float32)
        for offset, count in ((n - 5, 10), (n + 1, 0), (2**63, 2**63)):
            assert lib.dn_network_set_params(net._handle(), offset, count, ffi.from_buffer("float[]", buf)) \
                == lib.DN_E_ARG
            assert f"{n} parameters" in ffi.string(lib.dn_last_error()).decode()
            assert lib.dn_network_get_updates(net._handle(), offset, count, ffi.from_buffer("float[]", buf)) \
                == lib.DN_E_ARG
        np.testing.assert_array_equal(net.params(), expected)
        # updates: zero on a fresh network, then what was written
        updates = np.empty(n, np.float32)
        check(lib.dn_network_get_updates(net._handle(), 0, n, ffi.from_buffer("float[]", updates)))
        assert not updates.any()
        check(lib.dn_network_set_updates(net._handle(), 0, n, ffi.from_buffer("float[]", values)))
        check(lib.dn_network_get_updates(net._handle(), 0, n, ffi.from_buffer("float[]", updates)))
        np.testing.assert_array_equal(updates, values)


def test_layer_output_and_delta_copies(tiny_cfg):
    rng = np.random.default_rng(3)
    with Network(tiny_cfg, batch=2) as net:
        x = rng.random((2, 3, 64, 64), dtype=np.float32)
        outs = net.forward(x)
        last = net.yolo_layers[-1]
        per_image = int(np.prod(last.output_shape))
        # the first image alone: the first per_image floats
        one = np.empty(per_image, np.float32)
        check(lib.dn_network_layer_output(net._handle(), last.index, ffi.from_buffer("float[]", one), one.size))
        np.testing.assert_array_equal(one, outs[-1][0].ravel())
        # more than the batch holds, a bad index: errors
        big = np.empty(2 * per_image + 1, np.float32)
        assert lib.dn_network_layer_output(net._handle(), last.index, ffi.from_buffer("float[]", big), big.size) \
            == lib.DN_E_ARG
        assert "holds" in ffi.string(lib.dn_last_error()).decode()
        assert lib.dn_network_layer_output(net._handle(), len(net.layers), ffi.from_buffer("float[]", big), 1) \
            == lib.DN_E_ARG
        # no delta before training
        assert lib.dn_network_layer_delta(net._handle(), last.index, ffi.from_buffer("float[]", one), 1) \
            == lib.DN_E_ARG
        assert "not been trained" in ffi.string(lib.dn_last_error()).decode()
        truths = np.zeros((2, net.max_boxes, 5), np.float32)
        truths[:, 0] = [0.5, 0.5, 0.3, 0.3, 1]
        result = net.loss(x, truths)
        assert np.abs(result[-1]["delta"]).max() > 0


def test_yolo_loss_error_is_returned_by_the_call(tiny_cfg):
    """A bad truth box fails the training call itself with the [yolo] layer's message."""
    x = np.random.default_rng(4).random((1, 3, 64, 64), dtype=np.float32)
    with Network(tiny_cfg) as net:
        truths = np.zeros((1, net.max_boxes, 5), np.float32)
        truths[0, 0] = [0.5, 0.5, 0.3, 0.3, 7]  # class 7 of 2
        yolo = net.yolo_layers[0].index
        with pytest.raises(DarknetValueError, match=rf"layer {yolo} \[yolo\]: yolo truth: image 0 box 0: class 7"):
            net.train_chunk(x, truths)
        truths[0, 0, 4] = 1
        assert np.isfinite(net.train_chunk(x, truths))


def test_a_device_backend_loads_saves_and_initialises_through_host_copies(tiny_cfg, tmp_path):
    """On a backend whose memory is not the host's (the CPU behind the device paths), weights files, the
    initialisation and the parameter copies go through host staging: a round trip gives the same bytes."""
    from test_backends import STAGED, open_network

    with Network(tiny_cfg) as cpu, open_network(tiny_cfg, device=STAGED) as staged:
        np.testing.assert_array_equal(staged.params(), cpu.params())  # the same initialisation
        cpu.init_params(seed=11)
        staged.init_params(seed=11)
        np.testing.assert_array_equal(staged.params(), cpu.params())
        cpu.save(tmp_path / "cpu.weights")
        staged.init_params(seed=12)
        assert not np.array_equal(staged.params(), cpu.params())
        staged.load_weights(tmp_path / "cpu.weights")
        np.testing.assert_array_equal(staged.params(), cpu.params())
        staged.save(tmp_path / "staged.weights")
    assert (tmp_path / "staged.weights").read_bytes() == (tmp_path / "cpu.weights").read_bytes()


def test_registry_names_aliases_and_unknown_sections(tmp_path):
    """Section names come from the registry of layer kinds: aliases build the same kind, and an unknown section
    is an error naming its line and listing the kinds there are."""
    from pydarknet.errors import CfgError

    head = "[net]\nwidth=8\nheight=8\nchannels=3\n\n"
    cfg = tmp_path / "aliases.cfg"
    cfg.write_text(head + "[conv]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n\n[max]\nsize=2\nstride=2\n\n"
                   "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n\n[maxpool]\nsize=2\nstride=2\n")
    with Network(cfg) as net:
        assert [l.type for l in net.layers] == ["conv", "max", "conv", "max"]
    bad = tmp_path / "bad.cfg"
    bad.write_text(head + "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n\n[deconvolutional]\nfilters=2\n")
    with pytest.raises(CfgError) as err:
        Network(bad)
    message = str(err.value)
    assert f"{bad}:11: unknown section [deconvolutional]" in message
    assert "(supported: net, convolutional, maxpool, route, shortcut, upsample, yolo)" in message
