"""A minimal data-parallel training loop over pydarknet.distributed, run by tests/test_distributed.py under
mpirun (or pydarknet's local launcher, or alone for the one-process reference).

    python tests/dist_driver.py train CFG OUT --iterations 20 --batch 8 --chunk 4
    python tests/dist_driver.py loop CFG OUT            (until stopped: signal tests)
    python tests/dist_driver.py control - OUT           (control channel only: launcher tests)
    python tests/dist_driver.py nccl - OUT              (NCCL collectives on device buffers: GPU tests)

Every rank writes OUT/pid_rank<R> at start and OUT/params_rank<R>.npy at the end; rank 0 alone writes
OUT/final.weights (or OUT/backup.weights when stopped early, appending a line to OUT/backup_writes).
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np

from pydarknet import distributed
from pydarknet.network import Network

POOL = 32  # synthetic images to draw iterations from


def synthetic(index: int, size: int, max_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` of a fixed synthetic pool: noise with a bright box, and its truth."""
    rng = np.random.default_rng([1234, index])
    x = rng.random((3, size, size), dtype=np.float32) * 0.3
    w, h = rng.uniform(0.2, 0.5, 2)
    cx, cy = rng.uniform(0.3, 0.7, 2)
    x0, x1 = int((cx - w / 2) * size), int((cx + w / 2) * size)
    y0, y1 = int((cy - h / 2) * size), int((cy + h / 2) * size)
    x[:, y0:y1, x0:x1] += 0.6
    truth = np.zeros((max_boxes, 5), np.float32)
    truth[0] = (cx, cy, w, h, index % 2)
    return x, truth


class Stop:
    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def run(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stop = Stop()
    rep = distributed.init(device="cuda" if args.mode == "nccl" else None,
                           transport="none" if args.mode == "control" else "auto", timeout=args.timeout)
    (out / f"pid_rank{rep.rank}").write_text(str(__import__("os").getpid()))
    try:
        if args.mode == "control":
            return control(rep, stop, out)
        if args.mode == "nccl":
            return nccl(rep, out)
        return train(rep, stop, out, args)
    finally:
        rep.close()


def control(rep, stop, out: Path) -> int:
    iteration = 0
    while True:
        stopping, metrics = rep.check_in(stop.requested, {"rank": float(rep.rank), "nested": [1.0, {"v": rep.rank}]})
        iteration += 1
        if rep.is_writer:
            (out / "averages.jsonl").open("a").write(json.dumps(metrics) + "\n")
        if stopping:
            print(f"rank {rep.rank}: stopped at check-in {iteration}", flush=True)
            return 0
        (out / f"at_rank{rep.rank}").write_text(str(iteration))
        time.sleep(0.05)


def cudart():
    """The CUDA runtime through ctypes (NVIDIA's wheel, else the system's), for device buffers."""
    import ctypes  # noqa: PLC0415

    candidates = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"]
    try:
        import nvidia.cu13 as cu13  # noqa: PLC0415

        candidates.insert(0, str(Path(list(cu13.__path__)[0]) / "lib" / "libcudart.so.13"))
    except ImportError:
        pass
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise OSError("libcudart not found")


def nccl(rep, out: Path) -> int:
    """All-reduce, broadcast and barrier of the NCCL transport on device buffers, checked on the host. One
    rank alone makes a world of one (init() gives a single process no communicator)."""
    import ctypes  # noqa: PLC0415

    from pydarknet._ffi import check, ffi, lib  # noqa: PLC0415

    rt = cudart()
    comm = rep.comm
    if comm is None:
        ident = ffi.new("unsigned char[]", lib.DN_NCCL_UNIQUE_ID_BYTES)
        check(lib.dn_comm_nccl_unique_id(ident))
        made = ffi.new("dn_comm **")
        check(lib.dn_comm_init_nccl(1, 0, ident, max(rep.device, 0), made))
        comm = ffi.gc(made[0], lib.dn_comm_free)
    assert rt.cudaSetDevice(max(rep.device, 0)) == 0
    n = (1 << 20) + 3
    device = ctypes.c_void_p()
    assert rt.cudaMalloc(ctypes.byref(device), ctypes.c_size_t(4 * n)) == 0
    try:
        host = np.arange(n, dtype=np.float32) * (rep.rank + 1)
        assert rt.cudaMemcpy(device, host.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(4 * n), 1) == 0
        check(lib.dn_comm_allreduce_sum(comm, ffi.cast("float *", device.value), n, ffi.NULL))
        assert rt.cudaMemcpy(host.ctypes.data_as(ctypes.c_void_p), device, ctypes.c_size_t(4 * n), 2) == 0
        factor = rep.size * (rep.size + 1) / 2
        np.testing.assert_array_equal(host, np.arange(n, dtype=np.float32) * np.float32(factor))
        mine = np.full(n, rep.rank + 7, np.float32)
        assert rt.cudaMemcpy(device, mine.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(4 * n), 1) == 0
        check(lib.dn_comm_broadcast(comm, ffi.cast("void *", device.value), 4 * n, 0, ffi.NULL))
        assert rt.cudaMemcpy(mine.ctypes.data_as(ctypes.c_void_p), device, ctypes.c_size_t(4 * n), 2) == 0
        assert (mine == 7).all()
        check(lib.dn_comm_barrier(comm))
    finally:
        rt.cudaFree(device)
    (out / f"nccl_ok_rank{rep.rank}").write_text(f"{rep.size}")
    return 0


def train(rep, stop, out: Path, args) -> int:
    net = Network(args.cfg, batch=args.chunk)
    if args.weights:
        net.load_weights(args.weights)
    opts = net.options
    rep.broadcast_params(net)
    rep.bucket_floats = args.overlap_bucket
    pool = list(range(POOL))
    iteration = net.seen // args.batch  # --iterations counts from 0, so a resumed run ends where a fresh one does
    while args.mode == "loop" or iteration < args.iterations:
        mine = rep.shard(pool, iteration, args.batch, seed=7)
        loss = 0.0
        for start in range(0, len(mine), args.chunk):
            items = [synthetic(i, net.width, net.max_boxes) for i in mine[start:start + args.chunk]]
            x, t = np.stack([x for x, _ in items]), np.stack([t for _, t in items])
            if args.overlap_bucket:
                loss += rep.train_chunk(net, x, t, last=start + args.chunk >= len(mine))
            else:
                loss += net.train_chunk(x, t)
        stopping, metrics = rep.check_in(stop.requested, {"loss": loss / len(mine)})
        rep.update(net, opts["learning_rate"], opts["momentum"], opts["decay"], args.batch)
        iteration += 1
        if rep.is_writer and iteration % 5 == 0:
            print(f"iteration {iteration} loss {metrics['loss']:.4f}", flush=True)
        if args.mode == "loop":
            (out / f"at_rank{rep.rank}").write_text(str(iteration))
            time.sleep(0.02)
        if stopping:
            print(f"rank {rep.rank}: stopped at iteration {iteration}", flush=True)
            if rep.is_writer:
                net.save(out / "backup.weights")
                with open(out / "backup_writes", "a") as f:
                    f.write(f"{iteration}\n")
            break
    np.save(out / f"params_rank{rep.rank}.npy", net.params())
    (out / f"seen_rank{rep.rank}").write_text(str(net.seen))
    if rep.is_writer and not stop.requested and args.mode == "train":
        net.save(out / "final.weights")
    net.close()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("train", "loop", "control", "nccl"))
    p.add_argument("cfg")
    p.add_argument("out")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="images of all ranks per iteration")
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--overlap-bucket", type=int, default=0,
                   help="all-reduce during the last chunk's backward pass, in buckets of this many floats")
    p.add_argument("--weights", help="resume from these weights (iteration = seen / batch)")
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
