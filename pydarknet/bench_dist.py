"""``python -m pydarknet bench --dist``: data-parallel training on this machine, and a scaling model.

Measured (needs mpirun and a library built with MPI): training images/s of 2 ranks of 1 thread each (mpirun,
the MPI transport, one all-reduce of the update block per iteration; then again with that all-reduce
overlapped with the last chunk's backward pass) against 1 process of 2 threads, for the
built-in default cfg and yolov3-tiny at 416, batch 8 per iteration in both cases (2 x 4 against 2 chunks of
4), on inputs prepared beforehand (data loading apart, as the training benchmark); and the share of an
iteration the all-reduce takes (an all-reduce of a buffer of the update block's size, timed alone after the
training iterations).

Modelled: yolov3 at 608 on 8 GPUs (one node, NVLink) and 64 GPUs (8 nodes, InfiniBand). The per-layer
backward time is the layer's share of the model's FLOPs (Darknet's count, backward = 2 x forward) at a stated
effective GPU throughput; the all-reduce of the update block (n_params floats) is NCCL's ring at a stated bus
bandwidth (time = 2 (N-1)/N x bytes / bus bandwidth), within a node over NVLink and across nodes over
InfiniBand. Without overlap an iteration is forward + backward + all-reduce; with overlap the update block is
reduced in buckets (in backward order) as soon as each bucket's gradients are complete, one bucket at a time,
so an iteration is forward + max(backward, end of the last bucket). Efficiency = one GPU's iteration time /
N GPUs' iteration time at the same per-GPU batch.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Sequence

import numpy as np

__all__ = ["scaling_model", "run_dist_bench", "MODEL_CONSTANTS"]

ROOT = Path(__file__).resolve().parents[1]

# Stated constants of the scaling model (sources: vendor figures and typical nccl-tests results).
MODEL_CONSTANTS = {
    # Effective training throughput of one GPU on yolov3's convolutions (cuDNN): an A100 in FP32 (19.5 TFLOP/s
    # peak) at ~75%, and an H100 with TF32 tensor cores (~490 TFLOP/s dense peak) at ~20% (the small-channel
    # layers at 608 do not fill it). The faster GPU is the harder case for scaling.
    "gpu_tflops": {"A100 FP32": 15.0, "H100 TF32": 100.0},
    # NCCL all-reduce bus bandwidth inside one 8-GPU node over NVLink/NVSwitch (nccl-tests: ~230 GB/s on
    # DGX A100, ~450 GB/s on DGX H100; the lower figure is used).
    "nvlink_bus_gb_s": 230.0,
    # Across nodes: InfiniBand HDR 200 Gb/s = 25 GB/s per NIC, ~90% reached; 8 NICs per node (DGX-class) or 1.
    "ib_gb_s_per_nic": 22.5,
    "nics_per_node": (8, 1),
    "gpus_per_node": 8,
    "bucket_mb": None,  # the library's bucket (DN_ALLREDUCE_BUCKET_FLOATS floats), filled in by scaling_model
}


# ---------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------
def _layer_table(cfg: Path, size: int) -> tuple[list[tuple[float, int]], int]:
    """[(forward GFLOPs per image, update-block floats)] per layer in order, and the block size."""
    from .network import Network  # noqa: PLC0415

    with Network(cfg) as net:
        if (net.width, net.height) != (size, size):
            net.resize(size, size)
        layers = [(float(l.bflops), int(l.n_params)) for l in net.layers]
        return layers, net.n_params


def _allreduce_seconds(nbytes: float, gpus: int, nics_per_node: int, c: dict) -> float:
    per_node = c["gpus_per_node"]
    local = min(gpus, per_node)
    t = 2 * (local - 1) / local * nbytes / (c["nvlink_bus_gb_s"] * 1e9) if local > 1 else 0.0
    nodes = gpus // per_node
    if nodes > 1:
        # Hierarchical: after the reduce-scatter inside the node, the nodes all-reduce over their NICs.
        t += 2 * (nodes - 1) / nodes * nbytes / (nics_per_node * c["ib_gb_s_per_nic"] * 1e9)
    return t


def _iteration(layers, per_gpu_batch: int, tflops: float, gpus: int, nics: int, overlap: bool, c: dict) -> dict:
    flops = [g * 1e9 * per_gpu_batch for g, _ in layers]
    forward = sum(flops) / (tflops * 1e12)
    backward_each = [2 * f / (tflops * 1e12) for f in flops]
    backward = sum(backward_each)
    block_bytes = 4 * sum(n for _, n in layers)
    total_comm = _allreduce_seconds(block_bytes, gpus, nics, c) if gpus > 1 else 0.0
    if gpus == 1:
        return {"forward_s": forward, "backward_s": backward, "allreduce_s": 0.0, "iteration_s": forward + backward}
    if not overlap:
        return {"forward_s": forward, "backward_s": backward, "allreduce_s": total_comm,
                "iteration_s": forward + backward + total_comm}
    # Buckets in backward order (last layer first); a bucket is sent when its last layer's backward is done.
    bucket_bytes = c["bucket_mb"] * 1e6
    clock, comm_free, pending = 0.0, 0.0, 0.0
    for (g, n), t in zip(reversed(layers), reversed(backward_each)):
        clock += t
        pending += 4 * n
        if pending >= bucket_bytes:
            comm_free = max(comm_free, clock) + _allreduce_seconds(pending, gpus, nics, c)
            pending = 0.0
    if pending:
        comm_free = max(comm_free, clock) + _allreduce_seconds(pending, gpus, nics, c)
    return {"forward_s": forward, "backward_s": backward, "allreduce_s": total_comm,
            "iteration_s": forward + max(backward, comm_free)}


def scaling_model(cfg: Path | None = None, size: int = 608, gpus: Sequence[int] = (8, 64),
                  per_gpu_batches: Sequence[int] = (4, 8, 16), constants: dict | None = None) -> dict:
    """Scaling efficiency of yolov3 (or `cfg`) by the model in the module doc, for every GPU speed, NIC
    count, per-GPU batch and GPU count, with and without overlapping the all-reduce with the backward pass."""
    from . import _ffi  # noqa: PLC0415

    c = dict(MODEL_CONSTANTS, **(constants or {}))
    if c["bucket_mb"] is None:
        c["bucket_mb"] = 4 * _ffi.ALLREDUCE_BUCKET_FLOATS / 1e6
    cfg = Path(cfg) if cfg is not None else ROOT / "cfg" / "yolov3.cfg"
    if not cfg.is_file():
        from .train import default_cfg_path  # noqa: PLC0415

        cfg = default_cfg_path().parent / "yolov3.cfg"
    layers, n_params = _layer_table(cfg, size)
    rows = []
    for gpu_name, tflops in c["gpu_tflops"].items():
        for batch in per_gpu_batches:
            single = _iteration(layers, batch, tflops, 1, 1, False, c)["iteration_s"]
            for n in gpus:
                for nics in (c["nics_per_node"] if n > c["gpus_per_node"] else (None,)):
                    for overlap in (False, True):
                        it = _iteration(layers, batch, tflops, n, nics or 1, overlap, c)
                        rows.append({"gpu": gpu_name, "per_gpu_batch": batch, "gpus": n, "nics_per_node": nics,
                                     "overlap": overlap, **it, "efficiency": single / it["iteration_s"]})
    return {"cfg": cfg.name, "size": size, "update_block_floats": n_params,
            "update_block_mb": 4 * n_params / 1e6, "gflops_per_image": sum(g for g, _ in layers),
            "constants": c, "rows": rows}


def _model_lines(model: dict) -> list[str]:
    c = model["constants"]
    lines = [f"scaling model: {model['cfg']} at {model['size']}, update block {model['update_block_floats']:,} floats "
             f"({model['update_block_mb']:.0f} MB), {model['gflops_per_image']:.0f} GFLOPs forward per image;",
             f"  NVLink all-reduce bus bandwidth {c['nvlink_bus_gb_s']:g} GB/s, InfiniBand {c['ib_gb_s_per_nic']:g} "
             f"GB/s per NIC, buckets of {c['bucket_mb']:g} MB when overlapping",
             f"  {'GPU':10} {'batch/GPU':>9} {'GPUs':>5} {'NICs':>5} {'iteration':>10} {'all-reduce':>10} "
             f"{'eff. no overlap':>16} {'eff. overlap':>13}"]
    rows = model["rows"]
    for r in rows:
        if r["overlap"]:
            continue
        o = next(x for x in rows if x["overlap"] and all(x[k] == r[k] for k in ("gpu", "per_gpu_batch", "gpus",
                                                                                   "nics_per_node")))
        nics = "-" if r["nics_per_node"] is None else str(r["nics_per_node"])
        lines.append(f"  {r['gpu']:10} {r['per_gpu_batch']:>9} {r['gpus']:>5} {nics:>5} "
                     f"{1e3 * r['iteration_s']:>8.1f}ms {1e3 * r['allreduce_s']:>8.1f}ms "
                     f"{100 * r['efficiency']:>15.1f}% {100 * o['efficiency']:>12.1f}%")
    return lines


# ---------------------------------------------------------------------------------------------------------
# Measurement: a worker run under mpirun (2 ranks) or alone (1 process)
# ---------------------------------------------------------------------------------------------------------
def _worker(cfg: str, size: int, batch: int, chunk: int, iterations: int) -> dict:
    from . import distributed  # noqa: PLC0415
    from . import _ffi  # noqa: PLC0415
    from .network import Network  # noqa: PLC0415

    rep = distributed.init()
    try:
        net = Network(cfg, batch=chunk)
        if (net.width, net.height) != (size, size):
            net.resize(size, size)
        opts = net.options
        rng = np.random.default_rng(rep.rank)
        share = batch // rep.size
        x = rng.random((chunk, 3, size, size), dtype=np.float32)
        truth = np.zeros((chunk, net.max_boxes, 5), np.float32)
        truth[:, 0] = (0.5, 0.5, 0.3, 0.4, 0)
        rep.broadcast_params(net)
        times, computes, overlapped = [], [], []
        chunks = share // chunk
        for it in range(2 * iterations + 1):
            overlap = it > iterations  # the second half: the all-reduce during the last chunk's backward pass
            rep.barrier()
            t0 = time.perf_counter()
            for k in range(chunks):
                rep.train_chunk(net, x, truth, last=overlap and k == chunks - 1)
            t1 = time.perf_counter()
            rep.check_in(False, {})
            rep.update(net, opts["learning_rate"] * 0.01, opts["momentum"], opts["decay"], batch)
            if overlap:
                overlapped.append(time.perf_counter() - t0)
            elif it:
                times.append(time.perf_counter() - t0)
                computes.append(t1 - t0)
        allreduce = []
        if rep.size > 1:
            buf = np.zeros(net.n_params, np.float32)
            for _ in range(3):
                rep.barrier()
                t0 = time.perf_counter()
                _ffi.comm_allreduce_sum(rep.comm, buf)
                allreduce.append(time.perf_counter() - t0)
        n_params = net.n_params
        net.close()
        return {"rank": rep.rank, "size": rep.size, "iteration_s": statistics.median(times),
                "overlapped_iteration_s": statistics.median(overlapped),
                "compute_s": statistics.median(computes), "images_per_s": batch / statistics.median(times),
                "allreduce_s": statistics.median(allreduce) if allreduce else 0.0, "n_params": n_params}
    finally:
        rep.close()


def _mpirun_prefix() -> list[str] | None:
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None:
        return None
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return [exe, "--oversubscribe", "-np"] if "Open MPI" in version else [exe, "-n"]


def _run_worker(prefix: list[str], threads: int, cfg: Path, size: int, iterations: int, folder: Path) -> dict:
    out = folder / f"result-{len(prefix)}-{cfg.stem}.json"
    cmd = prefix + [sys.executable, "-m", "pydarknet.bench_dist", str(cfg), str(size), "8", "4", str(iterations),
                    str(out)]
    env = dict(os.environ, PYDARKNET_THREADS=str(threads), OMPI_MCA_btl_vader_single_copy_mechanism="none")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({' '.join(cmd)}):\n{r.stdout}\n{r.stderr}")
    return json.loads(out.read_text())


def run_dist_bench(iterations: int = 3, stream: IO[str] | None = None, json_path=None) -> dict:
    """Measure (when mpirun and an MPI build are there) and model; print a table; return the figures."""
    from . import _ffi  # noqa: PLC0415
    from .train import default_cfg_path  # noqa: PLC0415

    out = stream if stream is not None else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    report: dict = {"measured": [], "model": None}
    prefix = _mpirun_prefix()
    if prefix is None or not _ffi.comm_mpi_built():
        say("data-parallel measurement skipped: " + ("mpirun not found" if prefix is None
                                                     else "libdarknet.so was built without MPI"))
    else:
        say(f"data-parallel training on this machine ({os.cpu_count()} CPUs), batch 8 per iteration, "
            f"{iterations} timed iterations after one warm-up (a shared machine: indicative figures)")
        cfg_dir = default_cfg_path().parent
        with tempfile.TemporaryDirectory(prefix="pydarknet-bench-dist-") as folder:
            for cfg, size in ((default_cfg_path(), 128), (cfg_dir / "yolov3-tiny.cfg", 416)):
                one = _run_worker([], 2, cfg, size, iterations, Path(folder))
                two = _run_worker(prefix + ["2"], 1, cfg, size, iterations, Path(folder))
                row = {"model": cfg.stem, "size": size, "one_process_2_threads_images_per_s": one["images_per_s"],
                       "two_ranks_1_thread_images_per_s": two["images_per_s"],
                       "speedup": two["images_per_s"] / one["images_per_s"],
                       "allreduce_s": two["allreduce_s"], "iteration_s": two["iteration_s"],
                       "allreduce_share": two["allreduce_s"] / two["iteration_s"], "n_params": two["n_params"],
                       "two_ranks_overlapped_images_per_s": 8 / two["overlapped_iteration_s"]}
                report["measured"].append(row)
                say(f"  {row['model']:22} {size}: 1 process x 2 threads {row['one_process_2_threads_images_per_s']:6.2f} "
                    f"img/s, 2 ranks x 1 thread {row['two_ranks_1_thread_images_per_s']:6.2f} img/s "
                    f"(x{row['speedup']:.2f}); all-reduce of {row['n_params']:,} floats {1e3 * row['allreduce_s']:.1f} ms"
                    f" = {100 * row['allreduce_share']:.1f}% of an iteration; with the all-reduce overlapped "
                    f"{row['two_ranks_overlapped_images_per_s']:.2f} img/s")
    model = scaling_model()
    report["model"] = model
    say()
    for line in _model_lines(model):
        say(line)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":  # the worker: CFG SIZE BATCH CHUNK ITERATIONS OUT
    cfg_arg, size_arg, batch_arg, chunk_arg, iterations_arg, out_arg = sys.argv[1:7]
    result = _worker(cfg_arg, int(size_arg), int(batch_arg), int(chunk_arg), int(iterations_arg))
    if result["rank"] == 0:
        Path(out_arg).write_text(json.dumps(result))
