"""Data-parallel training (pydarknet.distributed over the C communicator): N ranks of batch B against one
process of batch N*B, the coordinated stop, dead and hung ranks, the launchers' environments, sharding and
the control channel. The multi-process tests need mpirun and a libdarknet.so built with MPI; they skip
saying so otherwise. tests/dist_driver.py is the training loop they run."""
from __future__ import annotations

import json
import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, TINY_CFG
from pydarknet import distributed
from pydarknet._ffi import ffi, lib
from pydarknet.distributed import LaunchInfo, Replica, _Control, launch_info, parse_gpus
from pydarknet.errors import DarknetValueError, DistributedError
from pydarknet.network import Network

DRIVER = str(ROOT / "tests" / "dist_driver.py")
# Small enough that 20 steps stay in the smooth regime: float rounding differences (a gradient added onto
# the momentum vs onto zero) then stay at rounding size instead of being amplified by the dynamics.
CFG = TINY_CFG.replace("learning_rate=0.001", "learning_rate=0.0001")


def _mpirun() -> list[str]:
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None:
        pytest.skip("mpirun not found (install openmpi-bin or mpich)")
    if not lib.dn_comm_mpi_built():
        pytest.skip("libdarknet.so was built without MPI (install libopenmpi-dev and rebuild with `make MPI=1`)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        return [exe, "--oversubscribe", "-np"]
    return [exe, "-n"]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYDARKNET_THREADS="1",
               # Root in CI containers; ptrace-restricted containers break OpenMPI's single-copy shared memory.
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", OMPI_MCA_rmaps_base_oversubscribe="1")
    env.update(extra)
    return env


def _driver(mode: str, cfg, out, *extra) -> list[str]:
    return [sys.executable, DRIVER, mode, str(cfg), str(out), *map(str, extra)]


def _run(cmd, timeout=300, **kw):
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def cfg(tmp_path) -> Path:
    path = tmp_path / "tiny.cfg"
    path.write_text(CFG)
    return path


def _trainable_mask(cfg) -> np.ndarray:
    """True for entries the SGD step changes; False for batch-norm rolling statistics."""
    with Network(cfg) as net:
        mask = np.ones(net.n_params, bool)
        offset = 0
        for layer in net.layers:
            if layer.type == "conv" and layer.batch_normalize:
                f = layer.filters
                mask[offset + 2 * f:offset + 4 * f] = False
            offset += layer.n_params
    return mask


def _arrays(cfg, params):
    """The trainable arrays of every layer (biases, scales, weights) as separate views."""
    with Network(cfg) as net:
        offset, out = 0, []
        for layer in net.layers:
            if layer.type == "conv":
                f = layer.filters
                bn = layer.batch_normalize
                out.append(params[offset:offset + f])
                if bn:
                    out.append(params[offset + f:offset + 2 * f])
                out.append(params[offset + (4 if bn else 1) * f:offset + layer.n_params])
            offset += layer.n_params
    return out


def _max_relative_difference(cfg, a, b) -> float:
    """max over parameter arrays of max|a - b| / max(|a|, |b|) (per-array scale: entries near zero make a
    per-entry ratio meaningless); two all-zero arrays differ by 0."""
    worst = 0.0
    for x, y in zip(_arrays(cfg, a), _arrays(cfg, b)):
        scale = max(np.abs(x).max(), np.abs(y).max())
        if scale > 0:
            worst = max(worst, float(np.abs(x - y).max() / scale))
    return worst


# ---- N replicas of batch B == one process of batch N*B ---------------------------------------------------
def test_two_ranks_of_batch_4_train_as_one_process_of_batch_8(cfg, tmp_path):
    mpirun = _mpirun()
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = _run(_driver("train", cfg, one, "--iterations", 20, "--batch", 8, "--chunk", 4))
    assert r1.returncode == 0, r1.stderr
    r2 = _run(mpirun + ["2"] + _driver("train", cfg, two, "--iterations", 20, "--batch", 8, "--chunk", 4))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    single = np.load(one / "params_rank0.npy")
    rank0, rank1 = np.load(two / "params_rank0.npy"), np.load(two / "params_rank1.npy")
    mask = _trainable_mask(cfg)
    with Network(cfg) as net:
        start = net.params()
    # Training moved the weights far more than the tolerance.
    assert _max_relative_difference(cfg, start, single) > 1e-3
    assert _max_relative_difference(cfg, single, rank0) < 1e-5
    # Every rank holds the same trainable weights; batch-norm rolling statistics stay per replica (each saw
    # its own images), so they differ.
    np.testing.assert_array_equal(rank0[mask], rank1[mask])
    assert np.abs(rank0[~mask] - rank1[~mask]).max() > 1e-4
    # `seen` counts the images of all ranks: 20 iterations of 8.
    assert {(two / f"seen_rank{r}").read_text() for r in (0, 1)} == {"160"} == {(one / "seen_rank0").read_text()}
    assert (two / "final.weights").is_file() and (one / "final.weights").is_file()


def test_all_reduce_overlapped_with_the_backward_pass_gives_the_same_weights(cfg, tmp_path):
    """Buckets of 1000 floats: the tiny network's 6250-float update block goes in several all-reduces started
    during the last chunk's backward pass; the sum of 2 ranks is the same per element in any grouping."""
    mpirun = _mpirun()
    runs = {}
    for name, extra in (("whole", ()), ("overlap", ("--overlap-bucket", 1000))):
        out = tmp_path / name
        r = _run(mpirun + ["2"] + _driver("train", cfg, out, "--iterations", 10, "--batch", 8, "--chunk", 4, *extra))
        assert r.returncode == 0, r.stdout + r.stderr
        runs[name] = [np.load(out / f"params_rank{k}.npy") for k in (0, 1)]
    mask = _trainable_mask(cfg)
    np.testing.assert_array_equal(runs["overlap"][0][mask], runs["whole"][0][mask])
    np.testing.assert_array_equal(runs["overlap"][1][mask], runs["overlap"][0][mask])


def test_resume_with_another_number_of_ranks(cfg, tmp_path):
    """2 ranks for 10 iterations, then 1 process from that checkpoint to 20, ends as 1 process throughout
    (saved and resumed at 10 the same way: momentum is not in a .weights file); and 1 -> 2 ranks likewise."""
    mpirun = _mpirun()
    common = ("--batch", 8, "--chunk", 4)
    paths = {}
    for name, first, second in (("2to1", mpirun + ["2"], []), ("1to1", [], []), ("1to2", [], mpirun + ["2"])):
        half, full = tmp_path / f"{name}_10", tmp_path / f"{name}_20"
        r = _run(first + _driver("train", cfg, half, "--iterations", 10, *common))
        assert r.returncode == 0, r.stdout + r.stderr
        r = _run(second + _driver("train", cfg, full, "--iterations", 20, "--weights", half / "final.weights", *common))
        assert r.returncode == 0, r.stdout + r.stderr
        assert (full / "seen_rank0").read_text() == "160"
        paths[name] = np.load(full / "params_rank0.npy")
    assert _max_relative_difference(cfg, paths["1to1"], paths["2to1"]) < 1e-5
    assert _max_relative_difference(cfg, paths["1to1"], paths["1to2"]) < 1e-5


# ---- stopping --------------------------------------------------------------------------------------------
def _start_loop(cmd, out: Path, timeout: float):
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if int((out / "at_rank1").read_text() or 0) >= 3 and int((out / "at_rank0").read_text() or 0) >= 3:
                return proc, {r: int((out / f"pid_rank{r}").read_text()) for r in (0, 1)}
        except (FileNotFoundError, ValueError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the ranks did not get going: {proc.communicate()[0]}")


def test_sigterm_to_rank_1_stops_both_cleanly(cfg, tmp_path):
    mpirun = _mpirun()
    out = tmp_path / "run"
    proc, pids = _start_loop(mpirun + ["2"] + _driver("loop", cfg, out, "--timeout", 30), out, 120)
    os.kill(pids[1], signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    # (mpirun forwards each rank's output in chunks: one rank's line may run into the other's)
    stopped = {f"rank {r}": it for r, it in re.findall(r"rank (\d+): stopped at iteration (\d+)", output)}
    assert set(stopped) == {"rank 0", "rank 1"} and len(set(stopped.values())) == 1, output
    # Rank 0 alone wrote the backup, once, at the iteration both stopped at.
    assert (out / "backup_writes").read_text().split() == [stopped["rank 0"]]
    mask = _trainable_mask(cfg)
    np.testing.assert_array_equal(np.load(out / "params_rank0.npy")[mask], np.load(out / "params_rank1.npy")[mask])


def test_sigkill_of_rank_1_stops_rank_0_with_a_message(cfg, tmp_path):
    mpirun = _mpirun()
    out = tmp_path / "run"
    bound = 10
    proc, pids = _start_loop(mpirun + ["2"] + _driver("loop", cfg, out, "--timeout", bound), out, 120)
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    output, _ = proc.communicate(timeout=bound + 50)
    assert time.monotonic() - killed < bound + 20
    assert proc.returncode != 0
    assert "rank 1" in output or "rank(s) 1" in output, output
    assert not (out / "backup_writes").exists()


def test_hung_rank_1_stops_rank_0_within_the_bound_naming_it(cfg, tmp_path):
    mpirun = _mpirun()
    out = tmp_path / "run"
    bound = 8
    proc, pids = _start_loop(mpirun + ["2"] + _driver("loop", cfg, out, "--timeout", bound), out, 120)
    stopped = time.monotonic()
    os.kill(pids[1], signal.SIGSTOP)
    try:
        output, _ = proc.communicate(timeout=bound + 50)
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pids[1], sig)
            except ProcessLookupError:
                pass
    assert time.monotonic() - stopped < bound + 30
    assert proc.returncode != 0
    # Wherever rank 1 stopped (computing: rank 0 waits at the check-in; inside the all-reduce: the watchdog
    # fires), its silent heartbeat names it.
    assert "rank 1 silent for" in output and "(stopped or hung)" in output, output


# ---- pydarknet's local launcher (-gpus): control channel only, no MPI needed --------------------------
def _launch(out: Path, dist_url: str | None = None):
    code = ("import sys; from pydarknet.distributed import launch_local; "
            f"sys.exit(launch_local([0, 1], {_driver('control', '-', out)!r}, dist_url={dist_url!r}))")
    return subprocess.Popen([sys.executable, "-c", code], env=_env(PYDARKNET_DIST_TIMEOUT="10"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_ranks(proc, out: Path) -> dict[int, int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if all((out / f"at_rank{r}").exists() for r in (0, 1)):
            return {r: int((out / f"pid_rank{r}").read_text()) for r in (0, 1)}
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"launched ranks did not start: {proc.communicate()[0]}")


@pytest.mark.parametrize("rendezvous", ["tcp", "file"])
def test_local_launcher_stops_every_rank_on_sigterm_and_averages(tmp_path, rendezvous):
    out = tmp_path / "run"
    url = f"file://{tmp_path / 'rendezvous'}" if rendezvous == "file" else None
    proc = _launch(out, url)
    pids = _wait_for_ranks(proc, out)
    os.kill(pids[1], signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert output.count("stopped at check-in") == 2, output
    averages = [json.loads(line) for line in (out / "averages.jsonl").read_text().splitlines()]
    assert averages[-1] == {"rank": 0.5, "nested": [1.0, {"v": 0.5}]}
    assert not (tmp_path / "rendezvous").exists()  # rank 0 removes its address once everyone joined


def test_local_launcher_reports_a_killed_rank(tmp_path):
    out = tmp_path / "run"
    proc = _launch(out)
    pids = _wait_for_ranks(proc, out)
    killed = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert time.monotonic() - killed < 15  # a closed connection is seen at once, well inside the 10 s bound
    assert "rank(s) 1 closed the connection (the process died)" in output, output


# ---- the control channel in one process (two threads) ----------------------------------------------------
def _pair(timeout=5.0):
    root, other = _Control(0, 2, timeout), _Control(1, 2, timeout)
    port = root.listen()
    joined = threading.Thread(target=root.accept_all, args=({"hello": 1},))
    joined.start()
    assert other.connect("127.0.0.1", port)["hello"] == 1
    joined.join()
    return root, other


def test_control_exchange_gathers_every_value_on_every_rank():
    root, other = _pair()
    got = {}
    t = threading.Thread(target=lambda: got.setdefault(1, other.exchange({"x": 2}, "test")))
    t.start()
    got[0] = root.exchange({"x": 1}, "test")
    t.join()
    assert got[0] == got[1] == [{"x": 1}, {"x": 2}]
    root.close(), other.close()


def test_control_names_a_late_rank_and_a_dead_one():
    root, other = _pair(timeout=0.5)
    started = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank\(s\) 1 sent nothing for 0.5 s \(hung or dead\); rank 1 is in"):
        root.exchange(1, "the check-in")
    assert time.monotonic() - started < 3
    # The other rank then hears why rank 0 stopped.
    with pytest.raises(DistributedError, match="rank 0 stops"):
        other.exchange(1, "the check-in")
    root.close(), other.close()
    root, other = _pair(timeout=30)
    other.close()
    started = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank\(s\) 1 closed the connection \(the process died\)"):
        root.exchange(1, "the check-in")
    assert time.monotonic() - started < 5
    root.close()


def test_a_rank_of_another_world_is_refused():
    root = _Control(0, 2, 5.0)
    port = root.listen()
    stranger = _Control(1, 3, 5.0)
    t = threading.Thread(target=lambda: pytest.raises(DistributedError, stranger.connect, "127.0.0.1", port))
    t.start()
    with pytest.raises(DistributedError, match="joined as rank 1 of 3 but this world has 2 ranks"):
        root.accept_all({})
    t.join()
    root.close(), stranger.close()


# ---- environments, sharding, errors -------------------------------------------------------------------------
@pytest.mark.parametrize("env, expected", [
    ({}, LaunchInfo(0, 1, 0, 1, "none")),
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
      "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, LaunchInfo(3, 8, 1, 2, "openmpi")),
    ({"PMI_RANK": "5", "PMI_SIZE": "6", "MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "3"}, LaunchInfo(5, 6, 2, 3, "pmi")),
    ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "9", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1",
      "SLURM_NTASKS": "16"}, LaunchInfo(9, 16, 1, 16, "slurm")),
    # The batch script itself (no step): not rank 0 of 16, a single process.
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0"}, LaunchInfo(0, 1, 0, 1, "none")),
    ({"PYDARKNET_RANK": "1", "PYDARKNET_WORLD_SIZE": "4", "PYDARKNET_LOCAL_RANK": "1", "OMPI_COMM_WORLD_RANK": "0",
      "OMPI_COMM_WORLD_SIZE": "1"}, LaunchInfo(1, 4, 1, 4, "pydarknet")),
])
def test_launch_info_reads_each_launcher(env, expected):
    assert launch_info(env) == expected


def test_launch_info_rejects_nonsense():
    with pytest.raises(DistributedError, match="OMPI_COMM_WORLD_RANK='x' is not an integer"):
        launch_info({"OMPI_COMM_WORLD_RANK": "x", "OMPI_COMM_WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="rank 2 of 2"):
        launch_info({"PMI_RANK": "2", "PMI_SIZE": "2"})


def _replica(rank, size):
    return Replica(LaunchInfo(rank, size, rank, size, "test"))


def test_shard_splits_each_iteration_into_disjoint_reproducible_shares():
    items = [f"img{i}.jpg" for i in range(50)]
    for it in (0, 5, 6, 17):
        whole = _replica(0, 1).shard(items, it, 8, seed=3)
        assert len(set(whole)) == 8
        for size in (2, 4, 8):
            parts = [_replica(r, size).shard(items, it, 8, seed=3) for r in range(size)]
            assert sum(parts, []) == whole  # independent of the number of ranks, disjoint
        assert _replica(1, 2).shard(items, it, 8, seed=3) == _replica(1, 2).shard(items, it, 8, seed=3)
    # An epoch (6 iterations of 8 out of 50) covers 48 distinct images; the next one reshuffles.
    epoch = sum((_replica(0, 1).shard(items, it, 8, seed=3) for it in range(6)), [])
    assert len(set(epoch)) == 48
    assert _replica(0, 1).shard(items, 6, 8, seed=3) != _replica(0, 1).shard(items, 0, 8, seed=3)
    with pytest.raises(DarknetValueError, match="multiple of the number of ranks"):
        _replica(0, 3).shard(items, 0, 8)


def test_chunk_numbers_cover_one_process_chunks():
    assert [_replica(r, 2).chunk_numbers(3, 4) for r in (0, 1)] == [[12, 13], [14, 15]]
    assert _replica(0, 1).chunk_numbers(3, 4) == [12, 13, 14, 15]
    with pytest.raises(DarknetValueError):
        _replica(0, 3).chunk_numbers(0, 4)


def test_single_process_replica_is_a_plain_run(cfg):
    rep = distributed.init(environ={})
    assert (rep.size, rep.rank, rep.is_writer, rep.transport) == (1, 0, True, "single")
    assert rep.average({"loss": 2.0}) == {"loss": 2.0}
    assert rep.check_in(True, {"a": 1}) == (True, {"a": 1})
    rep.close()


def test_parse_gpus():
    assert parse_gpus("0,1, 3") == [0, 1, 3]
    for bad in ("", "a,b", "0,0", "-1"):
        with pytest.raises(DarknetValueError, match="-gpus"):
            parse_gpus(bad)


def test_transports_missing_from_the_build_are_clear_errors():
    out = ffi.new("dn_comm **")
    ident = ffi.new("unsigned char[]", lib.DN_NCCL_UNIQUE_ID_BYTES)
    if not lib.dn_comm_nccl_built():
        with pytest.raises(DistributedError, match=r"built without NCCL \(rebuild with `make GPU=1 NCCL=1`\)"):
            from pydarknet._ffi import check
            check(lib.dn_comm_init_nccl(2, 0, ident, 0, out))
    env = {"PYDARKNET_RANK": "0", "PYDARKNET_WORLD_SIZE": "2"}
    with pytest.raises(DistributedError, match="training on the CPU across processes uses MPI"):
        distributed.init(environ=env)


def test_nccl_transport_compiles(tmp_path):
    """The NCCL transport builds against the nvidia-nccl-cu13 wheel's nccl.h (compile only: no GPU needed)."""
    try:
        import nvidia.nccl as nccl  # noqa: PLC0415
    except ImportError:
        pytest.skip("nvidia-nccl-cu13 is not installed (pip install nvidia-nccl-cu13)")
    include = Path(list(nccl.__path__)[0]) / "include"
    cuda_inc = [p for p in (Path("/usr/local/cuda/include"),) if (p / "cuda_runtime.h").is_file()]
    try:
        import nvidia.cu13 as cu13  # noqa: PLC0415
        cuda_inc.append(Path(list(cu13.__path__)[0]) / "include")
    except ImportError:
        pass
    if not any((p / "cuda_runtime.h").is_file() for p in cuda_inc):
        pytest.skip("cuda_runtime.h not found (CUDA toolkit or the nvidia-cuda-runtime wheel)")
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    cmd = [cxx, "-x", "c++", "-std=c++17", "-DDN_NCCL", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
           f"-I{include}", *[f"-I{p}" for p in cuda_inc], str(ROOT / "csrc" / "cuda" / "comm_nccl.cu")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.gpu
def test_nccl_collectives_on_every_gpu_of_the_machine(tmp_path):
    """NCCL on device buffers with one rank per GPU of this machine (pydarknet's launcher, TCP rendezvous);
    a world of one on a one-GPU machine. Needs a library built with `make GPU=1 NCCL=1`."""
    if not lib.dn_comm_nccl_built():
        pytest.skip("libdarknet.so was built without NCCL (make GPU=1 NCCL=1)")
    sys.path.insert(0, str(ROOT / "tests"))
    from dist_driver import cudart  # noqa: PLC0415

    try:
        rt = cudart()
    except OSError:
        pytest.skip("no CUDA runtime library")
    import ctypes  # noqa: PLC0415

    n = ctypes.c_int(0)
    if rt.cudaGetDeviceCount(ctypes.byref(n)) != 0 or n.value < 1:
        pytest.skip("no CUDA device")
    gpus = list(range(min(n.value, 8)))
    out = tmp_path / "run"
    if len(gpus) == 1:
        r = _run(_driver("nccl", "-", out), timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        code = ("import sys; from pydarknet.distributed import launch_local; "
                f"sys.exit(launch_local({gpus!r}, {_driver('nccl', '-', out)!r}))")
        r = _run([sys.executable, "-c", code], timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in out.glob("nccl_ok_rank*")) == [f"nccl_ok_rank{k}" for k in gpus]
