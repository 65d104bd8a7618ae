"""Data-parallel training through the Trainer (`mpirun -np 2 python -m pydarknet train ...`): rank 0 alone writes
the run's files, with the loss averaged over the ranks; a run resumes with another number of ranks; SIGTERM to
one rank stops both with one backup. Also the GPU options of the CLI on a build without CUDA (the clear
errors). The MPI tests skip (as in test_distributed.py) without mpirun or without MPI in libdarknet.so."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pydarknet
from conftest import ROOT, TINY_CFG, make_dataset
from pydarknet.errors import CudaError, DarknetError
from pydarknet.runfiles import log_csv_iteration
from test_distributed import _env, _mpirun

needs_cpu_build = pytest.mark.skipif(pydarknet.cuda_device_count() > 0,
                                     reason="checks the errors of a build or machine without CUDA devices")


@pytest.fixture
def run(tmp_path):
    """The tiny data set (8 images) and the tiny cfg (batch 4 = 2 chunks of 2: one chunk per rank of 2)."""
    data = make_dataset(tmp_path / "ds")
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    return data, cfg, tmp_path / "ds" / "backup" / "run"


def _train_cmd(data, cfg, *extra) -> list[str]:
    return [sys.executable, "-m", "pydarknet", "train", str(data), str(cfg), "--workers", "0", "--seed", "7",
            *map(str, extra)]


def _mpi_train(ranks: int, data, cfg, *extra, cwd: Path, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(_mpirun() + [str(ranks)] + _train_cmd(data, cfg, *extra), cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _one_process(data, cfg, *extra, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_train_cmd(data, cfg, *extra), cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _log_iterations(run_dir: Path) -> list[int]:
    return [log_csv_iteration(line) for line in (run_dir / "log.csv").read_text().splitlines()]


def _seen(weights: Path) -> int:
    return int(np.frombuffer(weights.read_bytes()[12:20], np.uint64)[0])


def test_two_ranks_only_rank_0_writes_and_logs_the_average_loss(run, tmp_path):
    data, cfg, run_dir = run
    work = tmp_path / "work"
    work.mkdir()
    two = _mpi_train(2, data, cfg, "--max-batches", 3, cwd=work)
    assert two.returncode == 0, two.stderr
    # Every iteration logged once (not once per rank), the weights once, nothing written elsewhere.
    assert _log_iterations(run_dir) == [1, 2, 3]
    assert [m["iteration"] for m in _metrics(run_dir)] == [1, 2, 3]
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        ["log.csv", "metrics.jsonl", "tiny.backup", "tiny_final.weights"] +
        (["chart.png"] if (run_dir / "chart.png").exists() else []))
    assert list(work.iterdir()) == []
    assert _seen(run_dir / "tiny_final.weights") == 3 * 4   # both ranks' images counted
    assert two.stderr.count("saved ") == 1                   # one progress output: rank 0's

    # One process with the whole batch on the same images (same seed, same chunk numbers): the loss rank 0
    # logs is the mean over the batch of both ranks, not its own half's.
    single = tmp_path / "single"
    single.mkdir()
    (single / "tiny.cfg").write_text(TINY_CFG)
    data_one = make_dataset(single / "ds")
    one = _one_process(data_one, single / "tiny.cfg", "--max-batches", 3, cwd=single)
    assert one.returncode == 0, one.stderr
    ref = _metrics(single / "ds" / "backup" / "run")
    got = _metrics(run_dir)
    np.testing.assert_allclose([m["loss"] for m in got], [m["loss"] for m in ref], rtol=1e-4)
    np.testing.assert_allclose([m["layers"][0]["iou"] for m in got], [m["layers"][0]["iou"] for m in ref],
                               rtol=1e-3, atol=1e-6)
    assert [m["layers"][0]["count"] for m in got] == [m["layers"][0]["count"] for m in ref]


def test_resume_two_ranks_on_one_and_back(run, tmp_path):
    data, cfg, run_dir = run
    first = _mpi_train(2, data, cfg, "--max-batches", 2, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    middle = _one_process(data, cfg, "--max-batches", 4, cwd=tmp_path)   # resumes from the backup
    assert middle.returncode == 0, middle.stderr
    assert "resuming from" in middle.stderr
    last = _mpi_train(2, data, cfg, "--max-batches", 6, cwd=tmp_path)
    assert last.returncode == 0, last.stderr
    assert _log_iterations(run_dir) == [1, 2, 3, 4, 5, 6]
    assert _seen(run_dir / "tiny_final.weights") == 6 * 4
    assert _seen(run_dir / "tiny.backup") == 6 * 4


def _rank_pid(launcher: subprocess.Popen, rank: int, deadline: float) -> int:
    """The pid of MPI rank `rank` among the launcher's descendants (OMPI_COMM_WORLD_RANK / PMI_RANK)."""
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"pydarknet" not in cmdline or int(proc.name) == launcher.pid:
                continue
            if any(entry in (f"OMPI_COMM_WORLD_RANK={rank}".encode(), f"PMI_RANK={rank}".encode())
                   for entry in environ):
                return int(proc.name)
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} not found")


def test_sigterm_to_rank_1_stops_both_with_one_backup(run, tmp_path):
    data, cfg, run_dir = run
    launcher = subprocess.Popen(_mpirun() + ["2"] + _train_cmd(data, cfg, "--max-batches", 100000), cwd=tmp_path,
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "log.csv").is_file() or len(_log_iterations(run_dir)) < 2:
            assert launcher.poll() is None, launcher.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.kill(_rank_pid(launcher, 1, deadline), signal.SIGTERM)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    assert launcher.returncode == 0, err
    assert "Traceback" not in err
    iterations = _log_iterations(run_dir)
    assert iterations == list(range(1, len(iterations) + 1))
    assert sorted(p.name for p in run_dir.glob("*.backup")) == ["tiny.backup"]
    assert not (run_dir / "tiny_final.weights").exists()
    assert _seen(run_dir / "tiny.backup") == iterations[-1] * 4   # the backup is of the last logged iteration
    assert err.count("stopped at iteration") == 1                 # rank 0 alone saves and says so


def test_subdivisions_must_be_a_multiple_of_the_ranks(run, tmp_path):
    data, _, run_dir = run
    cfg = tmp_path / "odd.cfg"
    cfg.write_text(TINY_CFG.replace("subdivisions=2", "subdivisions=1"))
    proc = _mpi_train(2, data, cfg, "--max-batches", 1, cwd=tmp_path)
    assert proc.returncode != 0
    assert "subdivisions=1 must be a multiple of the number of ranks (2)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "tiny_final.weights").exists()


# ---- GPUs asked for on a build or machine without them ----------------------------------------------------
@needs_cpu_build
@pytest.mark.parametrize("gpus", ["0", [0], 0, "0,1"])
def test_train_gpus_without_cuda_is_a_cuda_error(run, gpus):
    data, cfg, run_dir = run
    with pytest.raises(CudaError, match="CPU build|no CUDA device"):
        pydarknet.train(data, cfg, gpus=gpus, max_batches=1, workers=0)
    assert not run_dir.exists()


@needs_cpu_build
def test_valid_gpu_without_cuda_is_a_cuda_error(run, tmp_path):
    data, cfg, _ = run
    with pytest.raises(CudaError, match="-i 0"):
        pydarknet.valid(data, cfg, tmp_path / "none.weights", prefix=tmp_path / "results", gpu=0)


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pydarknet", *map(str, args)], cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)


@needs_cpu_build
@pytest.mark.parametrize("args", [
    ["train", "{data}", "{cfg}", "--gpus", "0,1"],          # several: refused before any process is started
    ["detector", "train", "{data}", "{cfg}", "-gpus", "0,1"],
    ["detector", "train", "{data}", "{cfg}", "-i", "0"],
    ["detector", "valid", "{data}", "{cfg}", "{weights}", "-i", "0"],
    ["detector", "test", "{data}", "{cfg}", "{weights}", "{image}", "-i", "0"],
    ["detect", "{cfg}", "{weights}", "{image}", "--gpu", "0"],
], ids=["train--gpus", "detector-train-gpus", "detector-train-i", "detector-valid-i", "detector-test-i", "detect"])
def test_cli_gpu_options_without_cuda(run, tmp_path, args):
    data, cfg, run_dir = run
    weights = tmp_path / "w.weights"
    with pydarknet.Network(cfg) as net:
        net.save(weights)
    image = tmp_path / "ds" / "images" / "img000.png"
    proc = _cli(*[a.format(data=data, cfg=cfg, weights=weights, image=image) for a in args], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "CUDA" in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists()


def test_nogpu_trains_on_the_cpu_and_excludes_gpus(run, tmp_path):
    data, cfg, run_dir = run
    both = _cli("detector", "train", data, cfg, "-gpus", "0", "-nogpu", cwd=tmp_path)
    assert both.returncode != 0 and "exclude each other" in both.stderr
    ok = _cli("train", data, cfg, "--nogpu", "--max-batches", 1, "--workers", 0, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (run_dir / "tiny_final.weights").is_file()


def test_several_gpus_in_process_is_refused(run, monkeypatch):
    data, cfg, run_dir = run
    import pydarknet.train as train_module  # noqa: PLC0415

    monkeypatch.setattr(train_module, "gpu_ids", lambda gpus, option="-gpus": [0, 1])
    with pytest.raises(DarknetError, match="one process per GPU"):
        train_module.train(data, cfg, gpus="0,1", max_batches=1, workers=0)


def test_two_ranks_map_and_tensorboard_written_once_by_rank_0(run, tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (pip install 'pydarknet[tensorboard]')")
    data, cfg, run_dir = run
    proc = _mpi_train(2, data, cfg, "--max-batches", 4, "--map-every", 2, "--map", "--tensorboard", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(",")[:2] for line in (run_dir / "map.txt").read_text().splitlines()]
    assert rows == [["iou", "2"], ["giou", "2"], ["iou", "4"], ["giou", "4"], ["iou", "final"], ["giou", "final"]]
    events = list((run_dir / "tensorboard").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents")
    assert proc.stderr.count("mAP@.50 ") == 3   # rank 0 alone evaluates
