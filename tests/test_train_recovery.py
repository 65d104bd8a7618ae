"""Nothing lost, nothing left behind (issue 8): re-running a training command resumes instead of overwriting its
checkpoint, starting over keeps the old checkpoints aside, interrupted weights writes are finished or removed,
the logs are strict JSON and never repeat an iteration, logs and the metrics sender are closed whatever ends the
run, clean errors for a list without a usable image and for a bad .data value, loader workers die with their
parent, /dev/shm keeps nothing of dead runs; and (slow) a soak test that SIGKILLs a training run at random moments.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pydarknet.train as tm
from pydarknet import CfgError, DarknetError, Network
from pydarknet.board.runs import Run
from pydarknet.data import Augment, DataLoader, remove_stale_buffers
from pydarknet.errors import DataError

from conftest import ROOT, make_dataset, write_data
from test_train import BATCH, metrics, no_temporaries, seen_of, write_cfg

QUIET = dict(workers=0, seed=1, progress_stream=io.StringIO())


def _strict_json(line: str):
    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(line, parse_constant=reject)


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _cli(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pydarknet", *args], cwd=cwd, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "ds")


# ---- resume and starting over ---------------------------------------------------------------------------------

def test_rerun_without_weights_resumes_from_the_backup(dataset, tmp_path, caplog):
    cfg = write_cfg(tmp_path / "tiny.cfg", policy="constant")
    first = tm.train(dataset, cfg, max_batches=3, **QUIET)
    run = first.run_dir
    backup_bytes = (run / "tiny.backup").read_bytes()
    # a crash after the backup leaves log lines of iterations whose weights were never saved
    for name, line in (("metrics.jsonl", json.dumps({"iteration": 4, "loss": 1.0, "avg_loss": 1.0, "layers": []})),
                       ("log.csv", "BATCH,4,3,1.000000")):
        with open(run / name, "a") as f:
            f.write(line + "\n" + line[:7])  # and a torn last line
    with caplog.at_level(logging.INFO, logger="pydarknet.train"):
        again = tm.train(dataset, cfg, max_batches=5, **QUIET)
    assert "resuming from" in caplog.text and "tiny.backup" in caplog.text
    assert again.iterations == 5 and seen_of(cfg, again.final_weights) == 5 * BATCH
    # the same command continued the run: iterations 4 and 5 only, every iteration logged once
    assert [r["iteration"] for r in metrics(run)] == [1, 2, 3, 4, 5]
    csv_its = [int(line.split(",")[-3]) for line in (run / "log.csv").read_text().splitlines()]
    assert csv_its == [1, 2, 3, 4, 5]
    assert not list(run.glob("replaced-*"))  # nothing was at risk
    assert (run / "tiny.backup").read_bytes() != backup_bytes
    no_temporaries(tmp_path)


@pytest.mark.parametrize("how", ["clear", "pretrained"])
def test_starting_over_keeps_the_old_checkpoints_aside(dataset, tmp_path, how):
    cfg = write_cfg(tmp_path / "tiny.cfg", policy="constant")
    first = tm.train(dataset, cfg, max_batches=3, **QUIET)
    run = first.run_dir
    old = {name: (run / name).read_bytes() for name in ("tiny.backup", "tiny_final.weights")}
    if how == "clear":
        again = tm.train(dataset, cfg, clear=True, max_batches=2, **QUIET)
    else:  # weights from elsewhere that start earlier than the run folder's backup
        pretrained = tmp_path / "pretrained.weights"
        with Network(cfg) as net:
            net.seen = 1 * BATCH
            net.save(pretrained)
        again = tm.train(dataset, cfg, pretrained, max_batches=2, **QUIET)
    assert again.iterations == 2
    aside = list(run.glob("replaced-*"))
    assert len(aside) == 1, list(run.iterdir())
    for name, content in old.items():  # the old checkpoints are kept, byte for byte
        assert (aside[0] / name).read_bytes() == content
    assert [r["iteration"] for r in metrics(aside[0])] == [1, 2, 3]  # with the logs that go with them
    start = 0 if how == "clear" else 1
    assert [r["iteration"] for r in metrics(run)] == list(range(1, start + 1)) + list(range(start + 1, 3))
    assert seen_of(cfg, run / "tiny.backup") == 2 * BATCH


@pytest.mark.parametrize("block_size", [1, 5, 64, 1 << 20])
def test_log_tail_cut_after_the_start_iteration(tmp_path, monkeypatch, block_size):
    """Resuming at iteration s cuts the log after its line for s, reading the file from its end in blocks (a long
    run's log is not read whole); a torn last line goes too."""
    reader = tm._lines_backwards
    monkeypatch.setattr(tm, "_lines_backwards", lambda f, end: reader(f, end, block_size))
    rng = random.Random(block_size)
    for _ in range(60):
        n = rng.randint(0, 12)
        lines = [f"{'A0.5,' * rng.randint(0, 4)}BATCH,{i + 1},99,1.000000" for i in range(n)]
        start = rng.randint(0, n + 1)
        path = tmp_path / "log.csv"
        path.write_text("".join(line + "\n" for line in lines) + rng.choice(["", "A0.", "BATCH,9"]))
        tm._cut_tail(path, lambda line: int(line.split(",")[-3]) <= start)
        assert path.read_text() == "".join(line + "\n" for line in lines[:start])


def test_interrupted_weights_writes_are_finished_or_removed(dataset, tmp_path):
    """A kill between writing `X.tmp` and renaming it leaves a complete temporary: it is renamed into place. A kill
    during the write leaves a short one: it is removed and never loaded."""
    cfg = write_cfg(tmp_path / "tiny.cfg", policy="constant")
    first = tm.train(dataset, cfg, max_batches=3, **QUIET)
    run = first.run_dir
    complete = (run / "tiny.backup").read_bytes()
    (run / "tiny_3.weights.tmp").write_bytes(complete)
    (run / "tiny.backup.tmp").write_bytes(complete[: len(complete) // 2])
    (run / "tiny_final.weights").unlink()
    again = tm.train(dataset, cfg, max_batches=3, **QUIET)
    assert again.iterations == 3
    assert (run / "tiny_3.weights").read_bytes() == complete
    assert seen_of(cfg, run / "tiny.backup") == 3 * BATCH
    no_temporaries(tmp_path)


# ---- logs ------------------------------------------------------------------------------------------------------

def test_metrics_jsonl_is_strict_json_and_the_board_reads_it(dataset, tmp_path, monkeypatch):
    """A NaN statistic (a diverging layer) is written as null, not as a bare NaN that JSON.parse rejects."""
    original = Network.yolo_stats

    def with_nan(self):
        stats = original(self)
        return [type(s)(**{**s.__dict__, "iou": float("nan"), "giou": float("inf")}) for s in stats]

    monkeypatch.setattr(Network, "yolo_stats", with_nan)
    cfg = write_cfg(tmp_path / "tiny.cfg", policy="constant")
    result = tm.train(dataset, cfg, max_batches=2, **QUIET)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [_strict_json(line) for line in lines]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert all(layer["iou"] is None and layer["giou"] is None for r in rows for layer in r["layers"])
    board_run = Run("run", result.run_dir)
    board_run.refresh()
    assert board_run.bad_lines == 0
    columns = board_run.columns()
    assert list(columns["it"]) == [1.0, 2.0] and np.isnan(columns["iou.0"]).all()


def test_logs_closed_and_sender_stopped_when_training_fails(dataset, tmp_path, monkeypatch):
    """An exception (here a divergence) still flushes the logs and stops the metrics sender's thread."""
    monkeypatch.setenv("PYDARKNET_SPOOL_DIR", str(tmp_path / "spool"))
    cfg = write_cfg(tmp_path / "tiny.cfg", learning_rate=1e6, policy="constant")
    with pytest.raises(tm.TrainingDiverged):
        tm.train(dataset, cfg, max_batches=90, log_url="http://127.0.0.1:9", log_token="t", **QUIET)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("metrics-sender")]
    run = tmp_path / "ds" / "backup" / "run"
    rows = metrics(run)
    assert rows and len((run / "log.csv").read_text().splitlines()) == len(rows)
    # what could not be delivered waits in the spool for the next sender, complete
    spooled = (tmp_path / "spool" / "run.spool.jsonl").read_text().splitlines()
    assert spooled and all(_strict_json(line) for line in spooled)


# ---- clean errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_a_list_without_a_usable_image_is_one_clean_error(tmp_path, workers):
    (tmp_path / "train.txt").write_text("missing/a.jpg\nmissing/b.jpg\n")
    (tmp_path / "bad.data").write_text(f"classes=2\ntrain={tmp_path / 'train.txt'}\nbackup={tmp_path / 'backup'}\n"
                                       "prefix=r\n")
    cfg = write_cfg(tmp_path / "tiny.cfg")
    proc = _cli("train", str(tmp_path / "bad.data"), str(cfg), "--max-batches", "2", "--workers", str(workers),
                "--threads", "1", cwd=tmp_path)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    assert f"Error: {tmp_path / 'train.txt'}: no usable image" in err
    assert sorted((tmp_path / "backup" / "r" / "bad.list").read_text().split()) == ["missing/a.jpg", "missing/b.jpg"]


def test_a_list_without_a_usable_image_from_the_loader(tmp_path):
    loader = DataLoader(["nothing/here.png"], num_classes=1, batch=1, net_w=32, net_h=32, aug=Augment.none(),
                        workers=0, bad_list=tmp_path / "bad.list", source="my/train.txt")
    with loader, pytest.raises(DataError, match=r"my/train\.txt: no usable image"):
        loader.next_batch()
    assert (tmp_path / "bad.list").read_text() == "nothing/here.png\n"


def test_a_data_value_that_is_not_a_number_names_file_line_and_key(dataset, tmp_path):
    bad = tmp_path / "ds" / "bad.data"
    text = dataset.read_text().replace("classes=2", "classes=abc")
    bad.write_text("# a comment\n" + text)
    cfg = write_cfg(tmp_path / "tiny.cfg")
    with pytest.raises(CfgError, match=rf"{bad}:2: classes='abc' is not an integer"):
        tm.train(bad, cfg, max_batches=1, **QUIET)


# ---- what a killed process leaves -----------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_stale_loader_buffers_of_dead_processes_are_removed():
    dead = Path(f"/dev/shm/pydarknet-loader-{_dead_pid()}-7f00-1024-0")
    live = Path(f"/dev/shm/pydarknet-loader-{os.getppid()}-7f00-1024-0")
    other = Path(f"/dev/shm/not-pydarknet-{_dead_pid()}")
    for path in (dead, live, other):
        path.write_bytes(b"x")
    try:
        removed = remove_stale_buffers()
        assert str(dead) in removed
        assert not dead.exists() and live.exists() and other.exists()
    finally:
        for path in (dead, live, other):
            path.unlink(missing_ok=True)


_LOADER_CHILD = """
import os, sys, time
from pydarknet.data import Augment, DataLoader
loader = DataLoader([sys.argv[1]], num_classes=2, batch=1, net_w=64, net_h=64, aug=Augment.none(), workers=2)
loader.next_batch()
print(" ".join(str(p.pid) for p in loader._processes), flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_loader_workers_die_with_their_parent(dataset, tmp_path):
    image = (tmp_path / "ds" / "train.txt").read_text().split()[0]
    proc = subprocess.Popen([sys.executable, "-c", _LOADER_CHILD, image], env=_env(), stdout=subprocess.PIPE,
                            text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2
        buffers = [p for p in Path("/dev/shm").glob(f"pydarknet-loader-{proc.pid}-*")] if Path("/dev/shm").is_dir() else []
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 0.5  # the workers' own idle check would take a second or more
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_alive(pid) for pid in workers)
        # the next loader removes what the killed one left in /dev/shm
        assert all(p.exists() for p in buffers)
        remove_stale_buffers()
        assert not any(p.exists() for p in buffers)
    finally:
        if proc.poll() is None:
            proc.kill()


# ---- soak: SIGKILL at random moments ---------------------------------------------------------------------------

def _logged_iterations(run: Path) -> list[int]:
    """Iterations in metrics.jsonl; a torn last line (the process was killed while writing it) is left out."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    return [json.loads(line)["iteration"] for line in lines[:-1]]


@pytest.mark.slow
def test_sigkill_soak(tmp_path):
    """Kill a small training run with SIGKILL at >= 10 random moments. After each kill every weights file loads;
    running the same command again resumes with at most 100 iterations lost and logs each iteration once; and
    /dev/shm holds nothing of the dead runs."""
    data = make_dataset(tmp_path / "ds", n=8, size=32)
    cfg = write_cfg(tmp_path / "tiny.cfg", width=32, height=32, policy="constant", learning_rate=0.0005)
    run = tmp_path / "ds" / "backup" / "run"
    rng = random.Random(8)
    command = ["train", str(data), str(cfg), "--max-batches", "100000", "--workers", "2", "--threads", "1",
               "--seed", "1"]
    killed, reached, measured = [], [], 0
    resumed_at = re.compile(r"resuming from \S+ \(iteration (\d+)\)")
    for kill in range(12):
        err_path = tmp_path / f"stderr-{kill}.txt"
        with open(err_path, "w") as err_file:
            proc = subprocess.Popen([sys.executable, "-m", "pydarknet", *command], cwd=tmp_path, env=_env(),
                                    stdout=subprocess.DEVNULL, stderr=err_file)
        if kill % 3 == 0:  # any moment, start-up included
            time.sleep(rng.uniform(0.2, 6.0))
        else:  # a moment of the training proper
            deadline = time.monotonic() + 120
            while "training tiny" not in err_path.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 5.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        killed.append(proc.pid)
        resumed = resumed_at.search(err_path.read_text())
        if resumed and reached:  # this run resumed where the last run that trained had its last backup
            assert reached[-1] - int(resumed.group(1)) <= 100, (kill, reached, resumed.group(0))
            measured += 1
        # every weights file loads (a kill during a write leaves at most a .tmp, which the next start handles)
        for path in [*run.glob("*.weights"), *run.glob("*.backup")]:
            with Network(cfg, path) as net:
                assert net.seen % BATCH == 0, path
        its = _logged_iterations(run)
        assert its == list(range(1, len(its) + 1)), (kill, its[-20:])  # each iteration once, none missing
        reached.append(its[-1] if its else 0)
    assert measured >= 8, measured
    assert max(reached) > 100, reached  # the kills fell on both sides of backups
    # the next start resumes and cleans up; then nothing of the dead runs is left in /dev/shm
    command[4] = str(reached[-1] + 2)
    final = _cli(*command, cwd=tmp_path)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    resumed = resumed_at.search(err)
    assert resumed and reached[-1] - int(resumed.group(1)) <= 100, err
    assert _logged_iterations(run) == list(range(1, reached[-1] + 3))
    shm = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    assert not [name for name in shm for pid in killed if name.startswith(f"pydarknet-loader-{pid}-")]
    assert not list(run.glob("*.tmp"))
