"""The training driver (pydarknet/train.py, SPEC §1.2, §1.3, §3, §5): learning-rate policies, checkpoint names and
cadence, resuming, -clear, SIGINT/SIGTERM, atomic weights writes, divergence, -gpus on a CPU build, the two logs,
the progress display, a loss that goes down, a fine-tune of the real yolov3-tiny weights and the built-in default.

Every data set here is generated on the fly (Darknet layout: images/ and labels/, list files, a .data file).
Expected numbers are worked out by hand from Darknet's formulas, never by the code under test.
"""
from __future__ import annotations

import importlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pydarknet import CudaError, DarknetError, Network
from pydarknet.data import Augment, load_sample

from conftest import ROOT, TINY_CFG, make_dataset, require_reference, write_data

# The module (`pydarknet.train` may name the function the package exports under the same name).
tm = importlib.import_module("pydarknet.train")

BATCH = 4  # TINY_CFG: batch=4, subdivisions=2


# ---------------------------------------------------------------------------------------------------------
# Fixtures: an easy data set and small cfgs
# ---------------------------------------------------------------------------------------------------------

def write_cfg(path: Path, text: str = TINY_CFG, **net) -> Path:
    """`text` with [net] keys replaced (or added) and, for `jitter`, every [yolo] jitter replaced."""
    lines = text.splitlines()
    jitter = net.pop("jitter", None)
    if jitter is not None:
        lines = [f"jitter={jitter}" if l.strip().startswith("jitter") else l for l in lines]
    start = next(i for i, l in enumerate(lines) if l.strip() == "[net]")
    end = next(i for i, l in enumerate(lines) if i > start and l.strip().startswith("["))
    for key, value in net.items():
        for i in range(start + 1, end):
            if lines[i].split("=")[0].strip() == key:
                lines[i] = f"{key}={value}"
                break
        else:
            lines.insert(start + 1, f"{key}={value}")
            end += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def seen_of(cfg: Path, weights: Path) -> int:
    with Network(cfg, weights) as net:
        return net.seen


def no_temporaries(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if ".tmp" in p.name]
    assert not left, f"temporary files left behind: {left}"


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds")


# ---------------------------------------------------------------------------------------------------------
# Learning rate (SPEC §3, Darknet's get_current_rate)
# ---------------------------------------------------------------------------------------------------------

LR_CASES = [
    # (opts, iteration, expected) — expected values worked out by hand
    ({"learning_rate": 0.01, "policy": "constant"}, 0, 0.01),
    ({"learning_rate": 0.01, "policy": "constant"}, 123456, 0.01),
    # burn_in: lr * (it / burn_in) ^ power, whatever the policy
    ({"learning_rate": 0.01, "policy": "constant", "burn_in": 100, "power": 4}, 0, 0.0),
    ({"learning_rate": 0.01, "policy": "constant", "burn_in": 100, "power": 4}, 50, 0.000625),   # .01 * .5^4
    ({"learning_rate": 0.01, "policy": "constant", "burn_in": 100, "power": 4}, 10, 1e-6),       # .01 * .1^4
    ({"learning_rate": 0.01, "policy": "constant", "burn_in": 100, "power": 2}, 25, 0.000625),   # .01 * .25^2
    ({"learning_rate": 0.01, "policy": "constant", "burn_in": 100, "power": 4}, 100, 0.01),
    ({"learning_rate": 0.1, "policy": "steps", "steps": [5], "scales": [0.1], "burn_in": 10, "power": 4},
     5, 0.00625),  # still burning in: the steps do not apply yet
    # steps: multiply by each scale whose step <= it
    ({"learning_rate": 0.1, "policy": "steps", "steps": [10, 20, 30], "scales": [0.5, 0.1, 10]}, 9, 0.1),
    ({"learning_rate": 0.1, "policy": "steps", "steps": [10, 20, 30], "scales": [0.5, 0.1, 10]}, 10, 0.05),
    ({"learning_rate": 0.1, "policy": "steps", "steps": [10, 20, 30], "scales": [0.5, 0.1, 10]}, 19, 0.05),
    ({"learning_rate": 0.1, "policy": "steps", "steps": [10, 20, 30], "scales": [0.5, 0.1, 10]}, 20, 0.005),
    ({"learning_rate": 0.1, "policy": "steps", "steps": [10, 20, 30], "scales": [0.5, 0.1, 10]}, 30, 0.05),
    ({"learning_rate": 0.1, "policy": "steps", "steps": [10, 20, 30], "scales": [0.5, 0.1, 10]}, 10**6, 0.05),
    # step: lr * scale ^ (it // step)
    ({"learning_rate": 0.1, "policy": "step", "step": 10, "scale": 0.5}, 9, 0.1),
    ({"learning_rate": 0.1, "policy": "step", "step": 10, "scale": 0.5}, 10, 0.05),
    ({"learning_rate": 0.1, "policy": "step", "step": 10, "scale": 0.5}, 25, 0.025),
    # exp: lr * gamma ^ it
    ({"learning_rate": 0.1, "policy": "exp", "gamma": 0.9}, 0, 0.1),
    ({"learning_rate": 0.1, "policy": "exp", "gamma": 0.9}, 3, 0.0729),
    # poly: lr * (1 - it / max_batches) ^ power
    ({"learning_rate": 0.1, "policy": "poly", "power": 2, "max_batches": 100}, 50, 0.025),
    ({"learning_rate": 0.1, "policy": "poly", "power": 4, "max_batches": 100}, 90, 1e-5),
    ({"learning_rate": 0.1, "policy": "poly", "power": 2, "max_batches": 100}, 100, 0.0),
    ({"learning_rate": 0.1, "policy": "poly", "power": 2, "max_batches": 100, "burn_in": 10}, 5, 0.025),
    # sig: lr / (1 + e^(gamma * (it - step)))
    ({"learning_rate": 0.1, "policy": "sig", "gamma": 0.5, "step": 10}, 10, 0.05),
    ({"learning_rate": 0.1, "policy": "sig", "gamma": 0.5, "step": 10}, 12, 0.1 / (1 + math.e)),
    ({"learning_rate": 0.1, "policy": "sig", "gamma": 0.5, "step": 10}, 8, 0.1 / (1 + 1 / math.e)),
]


@pytest.mark.parametrize("opts, iteration, expected", LR_CASES)
def test_learning_rate_policies(opts, iteration, expected):
    assert tm.learning_rate(opts, iteration) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_learning_rate_random_policy():
    """random: lr * uniform(0, 1) ^ power, a fresh draw each call (after burn-in)."""
    opts = {"learning_rate": 0.1, "policy": "random", "power": 3, "burn_in": 10}
    draws = random.Random(7)
    rng = random.Random(7)
    got = [tm.learning_rate(opts, it, rng) for it in (10, 11, 12, 500)]
    assert got == pytest.approx([0.1 * draws.random() ** 3 for _ in range(4)], rel=1e-12)
    assert len(set(got)) == 4 and all(0 <= v <= 0.1 for v in got)
    assert tm.learning_rate(opts, 5, rng) == pytest.approx(0.1 * 0.5 ** 3)  # burn-in comes first


def test_learning_rate_unknown_policy():
    with pytest.raises(ValueError, match="policy"):
        tm.learning_rate({"learning_rate": 0.1, "policy": "cosine"}, 5)


def test_learning_rate_from_cfg_options(tmp_path):
    """The [net] keys (policy, power shared by burn_in and poly, max_batches, steps, scales) reach the formula."""
    cfg = write_cfg(tmp_path / "poly.cfg", policy="poly", power=2, burn_in=10, max_batches=40, learning_rate=0.01)
    with Network(cfg) as net:
        opts = net.options
    assert tm.learning_rate(opts, 5) == pytest.approx(0.0025, rel=1e-6)     # burn-in: .01 * (5/10)^2
    assert tm.learning_rate(opts, 20) == pytest.approx(0.0025, rel=1e-6)    # poly: .01 * (1 - 20/40)^2
    assert tm.learning_rate(opts, 30) == pytest.approx(0.000625, rel=1e-6)  # .01 * .25^2
    cfg = write_cfg(tmp_path / "steps.cfg", learning_rate=0.002, steps="3,6", scales="0.5,0.25")
    with Network(cfg) as net:
        opts = net.options
    assert [tm.learning_rate(opts, it) for it in (2, 3, 5, 6, 100)] == pytest.approx(
        [0.002, 0.001, 0.001, 0.00025, 0.00025], rel=1e-6)


def test_training_uses_darknet_rate_for_each_iteration(dataset, tmp_path):
    """The update that completes iteration `it` uses rate(it), as Darknet's update_network does (seen has
    already grown by the batch): with burn_in=4 the first step is not wasted at rate 0, and the step at
    iteration 6 applies from iteration 6 on."""
    cfg = write_cfg(tmp_path / "sched.cfg", learning_rate=0.01, burn_in=4, power=2, steps="6,8", scales=".5,.1")
    result = tm.train(dataset, cfg, max_batches=10, workers=0, seed=1, progress_stream=io.StringIO())
    rows = metrics(result.run_dir)
    assert [r["iteration"] for r in rows] == list(range(1, 11))
    expected = [0.01 * (1 / 4) ** 2, 0.01 * (2 / 4) ** 2, 0.01 * (3 / 4) ** 2, 0.01, 0.01,
                0.005, 0.005, 0.0005, 0.0005, 0.0005]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Checkpoints (SPEC §3)
# ---------------------------------------------------------------------------------------------------------

def test_checkpoint_due():
    due = [100, 200, 500, 900, 1000, 2000, 3000, 10000, 50000]
    not_due = [0, 1, 50, 99, 101, 150, 999, 1001, 1100, 1500, 1900, 2100, 2500, 9900, 10100]
    assert [it for it in due + not_due if tm.checkpoint_due(it)] == due


@pytest.fixture
def record_saves(monkeypatch):
    """Every Network.save as (file name, iteration of the weights written)."""
    saves = []
    original = Network.save

    def save(self, path):
        original(self, path)
        saves.append((Path(path).name, self.seen // BATCH))

    monkeypatch.setattr(Network, "save", save)
    return saves


def test_checkpoints_below_1000(dataset, tmp_path, record_saves):
    cfg = write_cfg(tmp_path / "tiny.cfg", policy="constant", width=32, height=32)  # 32x32: quick iterations
    result = tm.train(dataset, cfg, max_batches=205, workers=0, seed=1, progress_stream=io.StringIO())
    run = tmp_path / "ds" / "backup" / "run"
    assert result.run_dir == run and result.iterations == 205
    assert sorted(record_saves, key=lambda s: (s[1], s[0])) == [
        ("tiny.backup", 100), ("tiny_100.weights", 100),
        ("tiny.backup", 200), ("tiny_200.weights", 200),
        ("tiny.backup", 205), ("tiny_final.weights", 205)]
    assert sorted(p.name for p in run.glob("*.weights")) == ["tiny_100.weights", "tiny_200.weights",
                                                            "tiny_final.weights"]
    assert result.final_weights == run / "tiny_final.weights"
    assert result.checkpoints == [run / "tiny_100.weights", run / "tiny_200.weights"]
    # the files on disk hold what was written and load: seen = iteration * batch
    assert seen_of(cfg, run / "tiny_100.weights") == 100 * BATCH
    assert seen_of(cfg, run / "tiny_200.weights") == 200 * BATCH
    assert seen_of(cfg, run / "tiny_final.weights") == 205 * BATCH
    assert seen_of(cfg, run / "tiny.backup") == 205 * BATCH
    no_temporaries(tmp_path)


def test_checkpoints_above_1000_every_1000(dataset, tmp_path, record_saves):
    cfg = write_cfg(tmp_path / "tiny.cfg", policy="constant", learning_rate=0.0001, width=32, height=32)
    start = tmp_path / "start.weights"
    with Network(cfg) as net:
        net.seen = 1890 * BATCH
        net.save(start)
    record_saves.clear()
    result = tm.train(dataset, cfg, start, max_batches=2010, workers=0, seed=1, progress_stream=io.StringIO())
    assert result.iterations == 2010
    assert sorted(record_saves, key=lambda s: (s[1], s[0])) == [
        ("tiny.backup", 1900),  # .backup every 100, but no tiny_1900.weights above 1000
        ("tiny.backup", 2000), ("tiny_2000.weights", 2000),
        ("tiny.backup", 2010), ("tiny_final.weights", 2010)]
    run = tmp_path / "ds" / "backup" / "run"
    assert sorted(p.name for p in run.iterdir() if p.suffix in (".weights", ".backup")) == [
        "tiny.backup", "tiny_2000.weights", "tiny_final.weights"]
    assert metrics(run)[0]["iteration"] == 1891


def test_prefix_selects_the_run_folder(tmp_path):
    """Two runs sharing one backup folder keep their files apart under <backup>/<prefix>/."""
    root = tmp_path / "ds"
    first = make_dataset(root, prefix="alpha")
    second = write_data(root, "beta", "beta.data")
    cfg = write_cfg(tmp_path / "net.cfg")
    tm.train(first, cfg, max_batches=2, workers=0, seed=1, progress_stream=io.StringIO())
    tm.train(second, cfg, max_batches=3, workers=0, seed=1, progress_stream=io.StringIO())
    for prefix, its in (("alpha", 2), ("beta", 3)):
        run = root / "backup" / prefix
        assert {"net.backup", "net_final.weights", "log.csv", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
        assert seen_of(cfg, run / "net_final.weights") == its * BATCH
        assert [r["iteration"] for r in metrics(run)] == list(range(1, its + 1))
    assert not (root / "backup" / "net_final.weights").exists()


# ---------------------------------------------------------------------------------------------------------
# Resume, -clear, atomic writes
# ---------------------------------------------------------------------------------------------------------

def test_resume_from_backup_continues_the_schedule(dataset, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.cfg", learning_rate=0.01, burn_in=4, power=2, steps="6,10", scales=".5,.1")
    run = tmp_path / "ds" / "backup" / "run"
    out = io.StringIO()
    first = tm.train(dataset, cfg, max_batches=7, workers=0, seed=1, progress_stream=out)
    backup = run / "tiny.backup"
    assert first.iterations == 7 and seen_of(cfg, backup) == 7 * BATCH
    old_bytes = backup.read_bytes()
    os.link(backup, tmp_path / "old.backup")  # a second name for the file the resumed run replaces

    second = tm.train(dataset, cfg, backup, max_batches=12, workers=0, seed=1, progress_stream=out)
    assert second.iterations == 12
    rows = metrics(run)
    assert [r["iteration"] for r in rows] == list(range(1, 13))  # 8..12 appended after 1..7
    assert [r["images"] for r in rows] == [BATCH * i for i in range(1, 13)]
    # iterations 8..12 on the same schedule as an uninterrupted run: .01*.5 until 10, then .01*.5*.1
    assert [r["lr"] for r in rows[7:]] == pytest.approx([0.005, 0.005, 0.0005, 0.0005, 0.0005], rel=1e-6)
    assert seen_of(cfg, run / "tiny_final.weights") == 12 * BATCH
    assert seen_of(cfg, backup) == 12 * BATCH
    csv_its = [int(line.split(",")[-3]) for line in (run / "log.csv").read_text().splitlines()]
    assert csv_its == list(range(1, 13))
    # the backup was replaced by a new file, not rewritten in place: the old name still holds the old bytes
    assert (tmp_path / "old.backup").read_bytes() == old_bytes
    assert backup.read_bytes() != old_bytes
    no_temporaries(tmp_path)


def test_resume_past_max_batches_trains_nothing(dataset, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.cfg")
    first = tm.train(dataset, cfg, max_batches=3, workers=0, seed=1, progress_stream=io.StringIO())
    again = tm.train(dataset, cfg, first.final_weights, max_batches=3, workers=0, seed=1,
                     progress_stream=io.StringIO())
    assert again.iterations == 3
    assert len(metrics(first.run_dir)) == 3


def test_clear_resets_seen(dataset, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.cfg", learning_rate=0.002, burn_in=4, power=2, policy="constant")
    trained = tm.train(dataset, cfg, max_batches=40, workers=0, seed=1, progress_stream=io.StringIO())
    fresh_first_loss = metrics(trained.run_dir)[0]["loss"]
    assert seen_of(cfg, trained.final_weights) == 40 * BATCH

    cleared_data = write_data(tmp_path / "ds", "cleared", "cleared.data")
    result = tm.train(cleared_data, cfg, trained.final_weights, clear=True, max_batches=3, workers=0, seed=1,
                      progress_stream=io.StringIO())
    rows = metrics(result.run_dir)
    assert result.run_dir.name == "cleared" and result.iterations == 3
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([0.002 / 16, 0.002 / 4, 0.002 * 9 / 16], rel=1e-6)  # burn-in again
    assert seen_of(cfg, result.final_weights) == 3 * BATCH
    # ...but with the trained weights, not a fresh initialisation
    assert rows[0]["loss"] < 0.5 * fresh_first_loss

    # without clear the same weights resume at iteration 40 >= max_batches: nothing to do
    kept = tm.train(write_data(tmp_path / "ds", "kept", "kept.data"), cfg, trained.final_weights, max_batches=3,
                    workers=0, seed=1, progress_stream=io.StringIO())
    assert kept.iterations == 40 and seen_of(cfg, kept.final_weights) == 40 * BATCH


def test_weights_write_goes_through_a_temporary(tmp_path, tiny_cfg):
    """A weights file is written next to the target and renamed: when that cannot happen, the existing file is
    left exactly as it was (never half written)."""
    target = tmp_path / "w.weights"
    with Network(tiny_cfg) as net:
        net.seen = 40
        net.save(target)
        before = target.read_bytes()
        (tmp_path / "w.weights.tmp").mkdir()  # the temporary's name is taken: the write must fail
        net.seen = 80
        with pytest.raises(DarknetError):
            net.save(target)
    assert target.read_bytes() == before


# ---------------------------------------------------------------------------------------------------------
# Signals (subprocess: python -m pydarknet train)
# ---------------------------------------------------------------------------------------------------------

def _cli(*args: str, cwd: Path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "pydarknet", *args], cwd=cwd, env=env, stdout=stdout,
                            stderr=stderr, text=True, **kw)


@pytest.mark.parametrize("signum, group", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGINT", "SIGTERM", "Ctrl-C-to-process-group"])
def test_signal_saves_backup_and_exits_cleanly(dataset, tmp_path, signum, group):
    """The signal goes to the training process, or (Ctrl-C in a terminal) to its whole process group, data
    loading workers included."""
    cfg = write_cfg(tmp_path / "tiny.cfg", policy="constant")
    run = tmp_path / "ds" / "backup" / "run"
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err, open(tmp_path / "stdout.txt", "w") as out:
        proc = _cli("train", str(dataset), str(cfg), "--max-batches", "1000000", "--workers", "1", "--threads", "1",
                    "--seed", "1", cwd=tmp_path, stdout=out, stderr=err, start_new_session=group)
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and proc.poll() is None:
                jsonl = run / "metrics.jsonl"
                if jsonl.exists() and jsonl.read_text().count("\n") >= 3:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"training did not start iterating: {err_path.read_text()[-2000:]}")
            if group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err_path.read_text()
    assert rc == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    assert signal.Signals(signum).name in stderr
    backup = run / "tiny.backup"
    assert backup.is_file(), stderr[-3000:]
    assert not (run / "tiny_final.weights").exists()
    last = metrics(run)[-1]["iteration"]
    seen = seen_of(cfg, backup)
    assert seen > 0 and seen == last * BATCH  # saved after the last completed iteration
    no_temporaries(tmp_path)
    assert "\r" not in stderr  # not a terminal: no updating progress line


# ---------------------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------------------

def test_nan_loss_stops_with_training_diverged_and_keeps_the_backup(dataset, tmp_path):
    good_cfg = write_cfg(tmp_path / "good" / "tiny.cfg")
    good = tm.train(dataset, good_cfg, max_batches=3, workers=0, seed=1, progress_stream=io.StringIO())
    backup = good.run_dir / "tiny.backup"
    final = good.run_dir / "tiny_final.weights"
    saved = backup.read_bytes()
    final.unlink()
    # same base name, absurd learning rate: the weights explode and the loss becomes infinite / NaN
    hot_cfg = write_cfg(tmp_path / "hot" / "tiny.cfg", learning_rate=1e6, policy="constant")
    with pytest.raises(tm.TrainingDiverged) as info:
        tm.train(dataset, hot_cfg, backup, max_batches=90, workers=0, seed=1, progress_stream=io.StringIO())
    assert isinstance(info.value, ArithmeticError) and isinstance(info.value, DarknetError)
    message = str(info.value)
    assert "diverged" in message and "learning_rate" in message and str(backup) in message
    assert backup.read_bytes() == saved  # the last good checkpoint is kept untouched
    assert not final.exists()
    rows = metrics(good.run_dir)
    assert 3 < len(rows) < 90  # it stopped early, after some logged iterations
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["avg_loss"]) for r in rows)
    no_temporaries(tmp_path)


def test_divergence_from_the_cli_is_a_clear_error(dataset, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.cfg", learning_rate=1e6, policy="constant")
    proc = _cli("train", str(dataset), str(cfg), "--max-batches", "90", "--workers", "0", "--threads", "1",
                cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "training diverged" in err and "Traceback" not in err
    run = tmp_path / "ds" / "backup" / "run"
    assert not (run / "tiny_final.weights").exists()
    no_temporaries(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# -gpus on a CPU build
# ---------------------------------------------------------------------------------------------------------

def _no_gpu_reason() -> str:
    """What the CudaError says when no GPU can be used here: a CPU build, or a GPU build without a device."""
    import pydarknet  # noqa: PLC0415

    if pydarknet.build_info().get("cuda") and pydarknet.cuda_device_count() > 0:
        pytest.skip("a CUDA device is present: -gpus 0 would train on it")
    return "no CUDA device" if pydarknet.build_info().get("cuda") else "CPU build"


def test_gpus_on_cpu_build_raises_cuda_error(dataset, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.cfg")
    with pytest.raises(CudaError, match=_no_gpu_reason()):
        tm.train(dataset, cfg, gpus="0", max_batches=1, workers=0)
    assert not (tmp_path / "ds" / "backup").exists()  # refused before anything was written


@pytest.mark.parametrize("form", ["train", "detector"])
def test_gpus_on_cpu_build_cli(dataset, tmp_path, form):
    cfg = write_cfg(tmp_path / "tiny.cfg")
    args = (["train", str(dataset), str(cfg), "--gpus", "0"] if form == "train"
            else ["detector", "train", str(dataset), str(cfg), "-gpus", "0"])
    reason = _no_gpu_reason()
    proc = _cli(*args, cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "CUDA" in err and reason in err
    assert "Traceback" not in err  # a user error, not a crash
    assert not (tmp_path / "ds" / "backup").exists()


# ---------------------------------------------------------------------------------------------------------
# Logs (SPEC §5) and the progress display
# ---------------------------------------------------------------------------------------------------------

_NUM = r"-?\d+\.\d{6}"  # C's %f
_GROUP = f"A({_NUM}),G({_NUM}),I({_NUM}),C({_NUM}),T({_NUM}),"
_LINE = re.compile(f"^((?:A{_NUM},G{_NUM},I{_NUM},C{_NUM},T{_NUM},)+)BATCH,(\\d+),(\\d+),({_NUM})$")

LAYER_KEYS = {"iou", "giou", "iou_loss", "cls_loss", "cost", "obj", "noobj", "class", "recall50", "recall75", "count"}
RECORD_KEYS = {"iteration", "loss", "avg_loss", "lr", "images", "seconds", "data_seconds", "layers"}


def test_log_csv_and_metrics_jsonl(dataset, tmp_path):
    # jitter=0: no box is cropped away, so every iteration matches exactly 4 images x 2 boxes
    cfg = write_cfg(tmp_path / "tiny.cfg", jitter=0)
    result = tm.train(dataset, cfg, max_batches=30, workers=0, seed=1, progress_stream=io.StringIO())
    lines = (result.run_dir / "log.csv").read_text().split("\n")
    assert lines[-1] == ""  # every line ends with a newline
    lines = lines[:-1]
    rows = metrics(result.run_dir)
    assert len(lines) == len(rows) == 30

    avg = None
    for line, row in zip(lines, rows):
        m = _LINE.match(line)
        assert m, f"not in the reference format: {line!r}"
        groups = re.findall(_GROUP, m.group(1))
        assert len(groups) == 2  # one A,G,I,C,T group per [yolo] layer
        assert RECORD_KEYS <= set(row)
        assert int(m.group(2)) == row["iteration"] and int(m.group(3)) == 30
        assert float(m.group(4)) == pytest.approx(row["avg_loss"], abs=1e-6, rel=1e-7)
        assert len(row["layers"]) == 2
        for group, layer in zip(groups, row["layers"]):
            assert set(layer) == LAYER_KEYS
            for text, key in zip(group, ("iou", "giou", "iou_loss", "cls_loss", "cost")):
                assert float(text) == pytest.approx(layer[key], abs=1e-6, rel=1e-7), key
            assert 0 <= layer["recall75"] <= layer["recall50"] <= 1
            assert 0 <= layer["noobj"] <= 1 and 0 <= layer["obj"] <= 1
            assert isinstance(layer["count"], int)
        assert sum(layer["count"] for layer in row["layers"]) == 8
        # loss is per image: the layers' costs (averaged over the 2 chunks of 2 images) x 2 chunks / 4 images
        assert row["loss"] == pytest.approx(sum(layer["cost"] for layer in row["layers"]) * 2 / 4, rel=1e-5)
        # Darknet's running average: the first loss, then .9 * avg + .1 * loss
        avg = row["loss"] if avg is None else 0.9 * avg + 0.1 * row["loss"]
        assert row["avg_loss"] == pytest.approx(avg, rel=1e-9)
        assert row["lr"] == pytest.approx(0.001, rel=1e-6)
        assert row["images"] == BATCH * row["iteration"]
        assert 0 <= row["data_seconds"] <= row["seconds"]
    assert [r["iteration"] for r in rows] == list(range(1, 31))
    assert result.avg_loss == pytest.approx(rows[-1]["avg_loss"])


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_quiet_when_not_a_terminal(dataset, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.cfg", width=32, height=32)
    plain = io.StringIO()
    tm.train(dataset, cfg, max_batches=120, workers=0, seed=1, progress_stream=plain)
    text = plain.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # one line every 100 iterations and at the end, then the final message: not one per iteration
    assert len(lines) == 3, lines
    assert lines[0].startswith("100/120:") and lines[1].startswith("120/120:") and "loss" in lines[0]
    assert lines[2].startswith("saved ") and "tiny_final.weights" in lines[2]


def test_progress_updates_one_line_on_a_terminal(dataset, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.cfg")
    tty = _Terminal()
    tm.train(write_data(tmp_path / "ds", "tty"), cfg, max_batches=5, workers=0, seed=1, progress_stream=tty)
    text = tty.getvalue()
    assert text.count("\r\x1b[K") >= 5
    assert all(f"{i}/5:" in text for i in range(1, 6))
    assert "ETA" in text and "img/s" in text


def test_map_eval_writes_map_txt(dataset, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.cfg")
    result = tm.train(dataset, cfg, map_eval=True, max_batches=3, workers=0, seed=1, progress_stream=io.StringIO())
    rows = (result.run_dir / "map.txt").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows] == [["iou", "final"], ["giou", "final"]]
    assert all(len(r.split(",")) == 13 and all(0 <= float(v) <= 1 for v in r.split(",")[2:]) for r in rows)
    assert set(result.map_results) == {"final"}


# ---------------------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------------------

def _weighted_iou(row: dict) -> float:
    n = sum(l["count"] for l in row["layers"])
    return sum(l["iou"] * l["count"] for l in row["layers"]) / max(n, 1)


def test_tiny_training_loss_decreases(dataset, tmp_path):
    cfg = write_cfg(tmp_path / "tiny.cfg", policy="constant", learning_rate=0.002, burn_in=10, jitter=0.1)
    result = tm.train(dataset, cfg, max_batches=150, workers=0, seed=3, progress_stream=io.StringIO())
    rows = metrics(result.run_dir)
    losses = [r["loss"] for r in rows]
    first, last = np.mean(losses[:5]), np.mean(losses[-20:])
    assert last < 0.05 * first, (first, last)
    assert np.mean([_weighted_iou(r) for r in rows[-20:]]) > np.mean([_weighted_iou(r) for r in rows[:5]]) + 0.2


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning the real yolov3-tiny weights
# ---------------------------------------------------------------------------------------------------------

FINETUNE_IMAGES = ["dog.jpg", "eagle.jpg", "horses.jpg", "person.jpg"]


def _iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.slow
def test_finetune_reference_yolov3_tiny(reference_dir, tmp_path):
    from pydarknet.detect import Detector

    require_reference(reference_dir, "yolov3-tiny.weights", "images")
    names = (reference_dir / "coco.names").read_text().splitlines()
    detections = json.loads((reference_dir / "yolov3_tiny_detections.json").read_text())
    root = tmp_path / "ft"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    paths = []
    for name in FINETUNE_IMAGES:
        image = root / "images" / name
        shutil.copy(reference_dir / "images" / name, image)
        h, w = cv2.imread(str(image)).shape[:2]
        (root / "labels" / (image.stem + ".txt")).write_text("".join(
            f"{names.index(d['class'])} {d['x'] / w:.6f} {d['y'] / h:.6f} {d['w'] / w:.6f} {d['h'] / h:.6f}\n"
            for d in detections[name]))
        paths.append(str(image))
    (root / "train.txt").write_text("".join(p + "\n" for p in paths))
    data = root / "ft.data"
    data.write_text(f"classes=80\ntrain={root / 'train.txt'}\nnames={reference_dir / 'coco.names'}\n"
                    f"backup={root / 'backup'}\nprefix=ft\n")
    # batch 2 at 416, small rate, no burn-in, no multi-scale and no augmentation
    cfg = root / "yolov3-tiny.cfg"
    text = (reference_dir / "yolov3-tiny.cfg").read_text()
    text = re.sub(r"(?m)^random\s*=.*$", "random=0", text)
    text = re.sub(r"(?m)^jitter\s*=.*$", "jitter=0", text)
    write_cfg(cfg, text, batch=2, subdivisions=1, learning_rate=0.0002, burn_in=0, hue=0, saturation=1,
              exposure=1, flip=0)

    def mean_loss(weights) -> float:
        with Network(cfg, weights) as net:
            total = 0.0
            for p in paths:
                x, t = load_sample(p, 80, net.width, net.height, Augment.none(), None, max_boxes=net.max_boxes)
                total += sum(r["cost"] for r in net.loss(x[None], t[None]))
            return total / len(paths)

    reference_weights = reference_dir / "yolov3-tiny.weights"
    before = mean_loss(reference_weights)
    # the public weights have seen ~32M images: without clear they would resume past max_batches
    result = tm.train(data, cfg, reference_weights, clear=True, max_batches=6, workers=0, seed=1,
                      progress_stream=io.StringIO())
    assert result.iterations == 6 and seen_of(cfg, result.final_weights) == 12
    after = mean_loss(result.final_weights)
    assert after < 0.8 * before, (before, after)

    with Detector(reference_dir / "yolov3-tiny.cfg", result.final_weights, names=names) as detector:
        found = detector.detect(str(reference_dir / "images" / "dog.jpg"))
    reference = detections["dog.jpg"]
    assert {d.name for d in found} == {r["class"] for r in reference}
    # every reference box is still found, with one of its classes, close by; the confident ones keep their class
    boxes: dict[tuple, set] = {}
    for r in reference:
        boxes.setdefault((r["x"], r["y"], r["w"], r["h"]), set()).add(r["class"])
    for box, classes in boxes.items():
        assert max((_iou(box, d.box) for d in found if d.name in classes), default=0.0) > 0.6, (box, found)
    for r in reference:
        if r["prob"] > 0.5:
            box = (r["x"], r["y"], r["w"], r["h"])
            assert max((_iou(box, d.box) for d in found if d.name == r["class"]), default=0.0) > 0.6, (r, found)


# ---------------------------------------------------------------------------------------------------------
# The built-in default: python -m pydarknet train
# ---------------------------------------------------------------------------------------------------------

def test_cli_without_arguments_runs_the_default(monkeypatch):
    from pydarknet.cli import main

    calls = []
    monkeypatch.setattr(tm, "train_default", lambda **kw: calls.append(kw))
    monkeypatch.setattr(tm, "train", lambda *a, **kw: pytest.fail("train() called instead of train_default()"))
    runner = CliRunner()
    result = runner.invoke(main, ["train"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["train", "--threads", "1", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert calls == [{"threads": None, "workers": None}, {"threads": 1, "workers": 0}]
    result = runner.invoke(main, ["train", "only.data"])  # DATA without CFG is a usage error
    assert result.exit_code == 2 and "train DATA CFG" in result.output


def test_cli_train_options_reach_the_driver(dataset, tmp_path):
    from pydarknet.cli import main

    cfg = write_cfg(tmp_path / "tiny.cfg", max_batches=3)
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(dataset), str(cfg), "--max-batches", "2", "--workers", "0",
                                  "--seed", "1"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "ds" / "backup" / "run"
    assert seen_of(cfg, run / "tiny_final.weights") == 2 * BATCH

    # Darknet's form: detector train DATA CFG WEIGHTS [-clear]; the cfg's max_batches=3 applies
    start = tmp_path / "start.weights"
    with Network(cfg) as net:
        net.seen = 1000 * BATCH
        net.save(start)
    kept = write_data(tmp_path / "ds", "kept", "kept.data")
    result = runner.invoke(main, ["detector", "train", str(kept), str(cfg), str(start)])
    assert result.exit_code == 0, result.output
    assert seen_of(cfg, tmp_path / "ds" / "backup" / "kept" / "tiny_final.weights") == 1000 * BATCH
    cleared = write_data(tmp_path / "ds", "cleared", "cleared.data")
    result = runner.invoke(main, ["detector", "train", str(cleared), str(cfg), str(start), "-clear"])
    assert result.exit_code == 0, result.output
    assert seen_of(cfg, tmp_path / "ds" / "backup" / "cleared" / "tiny_final.weights") == 3 * BATCH


def test_cli_train_precision_bf16(dataset, tmp_path):
    """--precision bf16 trains with bfloat16 products where the CPU has them; elsewhere it is refused, clearly,
    before anything is written."""
    from pydarknet.cli import main
    from pydarknet.network import bf16_supported

    cfg = write_cfg(tmp_path / "tiny.cfg", max_batches=3)
    result = CliRunner().invoke(main, ["train", str(dataset), str(cfg), "--max-batches", "2", "--workers", "0",
                                       "--precision", "bf16"])
    run = tmp_path / "ds" / "backup" / "run"
    if bf16_supported()[0]:
        assert result.exit_code == 0, result.output
        assert seen_of(cfg, run / "tiny_final.weights") == 2 * BATCH
    else:
        # the CLI's error: said on the output, exit status 1, no traceback
        assert result.exit_code == 1 and "precision bf16 needs a CPU with AMX or AVX512_BF16" in result.output, (
            result.output)
        assert "Traceback" not in result.output
        assert not (run / "tiny_final.weights").exists()


def test_train_default_small_scale(tmp_path, monkeypatch, capsys):
    """train_default end to end on a small scale: a 10 + 4 image synthetic set, the default cfg at batch 4 for
    3 iterations, then the held-out mAP table; a second call finds the final weights and does not retrain."""
    from pydarknet import synth

    original = synth.ensure_dataset
    monkeypatch.setattr(synth, "ensure_dataset", lambda cache_dir=None: original(cache_dir, n_train=10, n_valid=4))
    cfg = tmp_path / "cfg" / "pydarknet-default.cfg"
    write_cfg(cfg, tm.default_cfg_path().read_text(), batch=4, subdivisions=1, max_batches=3)
    monkeypatch.setattr(tm, "default_cfg_path", lambda: cfg)

    cache = tmp_path / "cache"
    out = tm.train_default(threads=2, workers=0, cache_dir=cache, progress_stream=io.StringIO())
    final = cache / "backup" / "synth" / "pydarknet-default_final.weights"
    assert Path(out["weights"]) == final and seen_of(cfg, final) == 3 * 4
    assert (cache / "backup" / "synth" / "metrics.jsonl").read_text().count("\n") == 3
    printed = capsys.readouterr().out
    assert "10 train / 4 held-out images" in printed
    assert "held-out mAP (4 images" in printed
    assert set(out["map"].metrics) == {"iou", "giou"} and out["map"].num_images == 4
    # the held-out mAP is in the run's map.txt, where the board's "mAP per checkpoint" chart reads it
    map_rows = (cache / "backup" / "synth" / "map.txt").read_text().splitlines()
    assert [row.split(",")[:2] for row in map_rows] == [["iou", "final"], ["giou", "final"]]
    assert float(map_rows[0].split(",")[3]) == pytest.approx(out["map"]["iou"].map_at(0.5), abs=1e-4)
    from pydarknet.board.runs import Run

    board_run = Run("synth", cache / "backup" / "synth")
    board_run.refresh()
    assert set(board_run.map_points()) == {"iou", "giou"}

    monkeypatch.setattr(tm, "train", lambda *a, **kw: pytest.fail("trained again"))
    again = tm.train_default(threads=2, workers=0, cache_dir=cache, progress_stream=io.StringIO())
    assert Path(again["weights"]) == final
    assert "already trained" in capsys.readouterr().out
    assert (cache / "backup" / "synth" / "map.txt").read_text().splitlines() == map_rows  # not written twice


@pytest.mark.parametrize("name", ["train", "valid"])
def test_package_function_is_callable_whatever_was_imported_first(name):
    """`pydarknet.train(...)` / `pydarknet.valid(...)` must work after `import pydarknet.train` (the CLI imports
    the module), which makes the package attribute the module: a fresh interpreter checks both orders."""
    code = (f"import pydarknet.{name}, pydarknet, inspect\n"
            f"f = pydarknet.{name}\n"
            f"from pydarknet.{name} import {name} as fn\n"
            f"assert callable(f), type(f)\n"
            f"try:\n    f()\nexcept TypeError as e:\n    assert 'data' in str(e), e\n"
            f"import pydarknet.{name} as m\n"
            f"assert m.{name} is fn\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_multiscale_every_ten_iterations_and_largest_at_the_end(dataset, tmp_path):
    """random=1 on the last [yolo]: a new square size every 10 iterations from multiscale_sizes (Darknet's
    320..608 for 416, scaled: 64 -> 64 and 96 here), the largest for the last 200 iterations (SPEC §3)."""
    text = TINY_CFG[::-1].replace("random=0"[::-1], "random=1"[::-1], 1)[::-1]  # the last [yolo] only
    cfg = write_cfg(tmp_path / "ms.cfg", text, max_batches=260)
    assert tm.multiscale_sizes(64) == [64, 96]
    assert tm.multiscale_sizes(416) == list(range(320, 609, 32))
    result = tm.train(dataset, cfg, workers=0, seed=3, progress_stream=io.StringIO())
    widths = [row["width"] for row in metrics(result.run_dir)]
    assert len(widths) == 260
    for block in range(0, 260, 10):  # the size changes only at the start of a block of 10
        assert len(set(widths[block:block + 10])) == 1, widths[block:block + 10]
    assert set(widths[:60]) == {64, 96}  # both sizes drawn in the first 60 iterations (seeded)
    # Darknet's test at a block start: iteration + 200 > max_batches, with iteration counted from 0
    assert set(widths[70:]) == {96}
    with Network(cfg, result.final_weights) as net:  # the saved net keeps the cfg's size
        assert (net.width, net.height) == (64, 64)
