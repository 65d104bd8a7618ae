"""Synchronous data parallelism: one process per replica (per GPU), one all-reduce of the update block per
iteration, the same SGD step everywhere. N replicas of batch B train exactly as one replica of batch N*B.

Pieces (the training loop wires them in):

- :func:`launch_info` reads rank, world size and local rank from the launcher's environment: pydarknet's own
  ``-gpus`` launcher, OpenMPI's ``mpirun``, MPICH/Hydra (PMI), Slurm's ``srun``.
- :func:`init` makes a :class:`Replica`: the data transport (MPI for networks on the CPU, NCCL for networks
  on CUDA devices) plus a small control channel between the ranks (TCP, rank 0 serving) that carries stop
  flags, metrics and heartbeats, so a dead or hung rank is named and the others stop within ``timeout``
  seconds instead of hanging. NCCL's unique id reaches the ranks over MPI when the job was started by an
  MPI launcher, else through the rendezvous ``dist_url``: ``tcp://HOST:PORT`` (rank 0's host; it listens on
  PORT) or ``file:///shared/path`` (rank 0 writes its address there; the folder must be shared by all ranks).
- :func:`launch_local` starts one process per GPU on this machine (``-gpus 0,1,2,3``).

Learning rate. The reference's rule for N GPUs (divide learning_rate by N, multiply burn_in by N) belongs to
its scheme of N independent copies whose weights are averaged every few iterations. Here every iteration
takes one SGD step with the gradient of all replicas' images; see the README's "Many GPUs and machines".
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DarknetValueError, DistributedError

__all__ = ["LaunchInfo", "launch_info", "Replica", "init", "launch_local", "parse_gpus", "DEFAULT_TIMEOUT",
           "WATCHDOG_EXIT_CODE"]

log = logging.getLogger("pydarknet.distributed")

DEFAULT_TIMEOUT = 120.0
# Exit status of a process stopped by the watchdog (a collective that did not finish in time).
WATCHDOG_EXIT_CODE = 3
_MAGIC = "pydarknet-dist-1"
_MAX_MESSAGE = 64 << 20
_HEARTBEAT = 1.0  # seconds between heartbeats


# ---- who am I: the launcher's environment --------------------------------------------------------------
@dataclass(frozen=True)
class LaunchInfo:
    rank: int
    size: int
    local_rank: int
    local_size: int
    launcher: str          # "pydarknet", "openmpi", "pmi", "slurm", "slurm-pmi" or "none"

    @property
    def mpi(self) -> bool:
        """Started by an MPI launcher, or by srun with a PMI plugin (--mpi=pmix/pmi2): MPI_Init finds the
        other ranks."""
        return self.launcher in ("openmpi", "pmi", "slurm-pmi")


def _int(environ: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise DistributedError(f"environment variable {name}={value!r} is not an integer") from None
    return None


def launch_info(environ: Mapping[str, str] | None = None) -> LaunchInfo:
    """Rank, size and local rank from the environment, first match wins: pydarknet's launcher
    (PYDARKNET_RANK, PYDARKNET_WORLD_SIZE, PYDARKNET_LOCAL_RANK, PYDARKNET_LOCAL_SIZE), OpenMPI
    (OMPI_COMM_WORLD_*), MPICH/Hydra and other PMI launchers (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID,
    MPI_LOCALNRANKS), a Slurm job step started by srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS or SLURM_NTASKS,
    SLURM_LOCALID; only inside a step, so that the batch script itself is not taken for rank 0 of N).
    Nothing found: one process."""
    env = os.environ if environ is None else environ
    sources = (
        ("pydarknet", ("PYDARKNET_RANK",), ("PYDARKNET_WORLD_SIZE",), ("PYDARKNET_LOCAL_RANK",),
         ("PYDARKNET_LOCAL_SIZE",)),
        ("openmpi", ("OMPI_COMM_WORLD_RANK",), ("OMPI_COMM_WORLD_SIZE",), ("OMPI_COMM_WORLD_LOCAL_RANK",),
         ("OMPI_COMM_WORLD_LOCAL_SIZE",)),
        ("pmi", ("PMI_RANK", "PMIX_RANK"), ("PMI_SIZE",), ("MPI_LOCALRANKID", "PMI_LOCAL_RANK"),
         ("MPI_LOCALNRANKS", "PMI_LOCAL_SIZE")),
    )
    for launcher, rank_names, size_names, local_names, local_size_names in sources:
        rank = _int(env, *rank_names)
        size = _int(env, *size_names)
        if rank is None or size is None:
            continue
        local = _int(env, *local_names)
        local_size = _int(env, *local_size_names)
        return _checked(LaunchInfo(rank, size, rank if local is None else local,
                                   size if local_size is None else local_size, launcher))
    if "SLURM_STEP_ID" in env or "SLURM_STEPID" in env:
        rank = _int(env, "SLURM_PROCID")
        size = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
        if rank is not None and size is not None:
            local = _int(env, "SLURM_LOCALID")
            local_size = _int(env, "SLURM_STEP_TASKS_PER_NODE") if env.get(
                "SLURM_STEP_TASKS_PER_NODE", "").isdigit() else None
            launcher = "slurm-pmi" if any(k in env for k in ("PMIX_RANK", "PMI_RANK", "PMI_FD")) else "slurm"
            return _checked(LaunchInfo(rank, size, 0 if local is None else local,
                                       size if local_size is None else local_size, launcher))
    return LaunchInfo(0, 1, 0, 1, "none")


def _checked(info: LaunchInfo) -> LaunchInfo:
    if info.size < 1 or not 0 <= info.rank < info.size or info.local_rank < 0:
        raise DistributedError(f"{info.launcher} environment gives rank {info.rank} of {info.size} (local rank "
                               f"{info.local_rank}): not a valid rank")
    return info


# ---- the control channel: small messages between the ranks, with deadlines -----------------------------
def _send(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


class _Closed(Exception):
    pass


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - got)
        except socket.timeout:
            raise TimeoutError from None
        except (ConnectionResetError, BrokenPipeError):
            raise _Closed from None
        if not chunk:
            raise _Closed
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket, deadline: float) -> Any:
    (length,) = struct.unpack("!I", _recv_exact(sock, 4, deadline))
    if length > _MAX_MESSAGE:
        raise _Closed
    return json.loads(_recv_exact(sock, length, deadline))


class _Control:
    """Rank 0 serves, every other rank keeps one connection to it. exchange() is an all-gather of a small
    JSON value with a deadline: rank 0 collects every rank's value, then sends the list back."""

    def __init__(self, rank: int, size: int, timeout: float):
        self.rank, self.size, self.timeout = rank, size, timeout
        self.server: socket.socket | None = None
        self.peers: dict[int, socket.socket] = {}   # rank 0: rank -> connection
        self.root: socket.socket | None = None       # other ranks: the connection to rank 0
        self.beats: dict[int, socket.socket] = {}   # rank 0: rank -> heartbeat connection
        self.beat: socket.socket | None = None       # other ranks: the heartbeat connection to rank 0
        self.closed: set[int] = set()                # ranks whose heartbeat connection closed
        self.stage = "setup"                         # where this rank is, as its heartbeats tell
        self.welcome: dict = {}

    # -- setup --
    def listen(self, port: int = 0) -> int:
        self.server = socket.create_server(("", port), family=socket.AF_INET, reuse_port=False)
        return self.server.getsockname()[1]

    def accept_all(self, welcome: dict) -> None:
        """Rank 0: wait for the size-1 other ranks (each opens a control and a heartbeat connection and says
        who it is), then welcome them."""
        deadline = time.monotonic() + self.timeout
        assert self.server is not None
        while len(self.peers) < self.size - 1 or len(self.beats) < self.size - 1:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, self.size)) - (set(self.peers) & set(self.beats)))
                raise DistributedError(f"rank(s) {_ranks(missing)} did not join within {self.timeout:g} s "
                                       f"(not started, wrong address, or a firewall)")
            self.server.settimeout(left)
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                hello = _recv(conn, time.monotonic() + 10)
            except (TimeoutError, _Closed, ValueError):
                conn.close()
                continue
            if not isinstance(hello, dict) or hello.get("magic") != _MAGIC:
                conn.close()  # not one of ours (a port scanner, another job)
                continue
            r = hello.get("rank")
            table = self.beats if hello.get("channel") == "heartbeat" else self.peers
            if hello.get("size") != self.size or not isinstance(r, int) or not 0 < r < self.size or r in table:
                _send(conn, {"error": f"rank 0 expects ranks 1..{self.size - 1} of a world of {self.size}; got rank "
                                      f"{r} of {hello.get('size')}"})
                conn.close()
                raise DistributedError(f"a process joined as rank {r} of {hello.get('size')} but this world has "
                                       f"{self.size} ranks (two runs on one address?)")
            table[r] = conn
        for conn in self.peers.values():
            _send(conn, dict(welcome, magic=_MAGIC))
        self._start_heartbeat()

    def connect(self, host: str, port: int) -> dict:
        """Other ranks: connect to rank 0 (retrying until the deadline: it may start later) and say hello."""
        deadline = time.monotonic() + self.timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            socks = []
            try:
                for channel in ("control", "heartbeat"):
                    sock = socket.create_connection((host, port),
                                                    timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                    socks.append(sock)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    _send(sock, {"magic": _MAGIC, "rank": self.rank, "size": self.size, "channel": channel})
                welcome = _recv(socks[0], deadline)
            except (TimeoutError, _Closed, OSError, ValueError) as e:
                for sock in socks:
                    sock.close()
                last_error = e
                time.sleep(0.2)
                continue
            if "error" in welcome:
                for sock in socks:
                    sock.close()
                raise DistributedError(f"rank {self.rank}: rank 0 at {host}:{port} refused it: {welcome['error']}")
            self.root, self.beat = socks
            self.welcome = welcome
            self._start_heartbeat()
            return welcome
        raise DistributedError(f"rank {self.rank} could not join rank 0 at {host}:{port} within {self.timeout:g} s "
                               f"({last_error or 'no answer'})")

    # -- heartbeats: a thread per rank, so a rank stuck inside a C collective can still be named --
    def _start_heartbeat(self) -> None:
        now = time.monotonic()
        self.heard = {r: (now, "joining") for r in (self.beats if self.rank == 0 else [0])}
        self._beat_stop = threading.Event()
        self._beat_thread = threading.Thread(target=self._beat_root if self.rank == 0 else self._beat_other,
                                             name="pydarknet-heartbeat", daemon=True)
        self._beat_thread.start()

    def _beat_other(self) -> None:
        """Every HEARTBEAT s: tell rank 0 where this rank is; hear where rank 0 is."""
        sock = self.beat
        while not self._beat_stop.wait(_HEARTBEAT):
            try:
                _send(sock, {"stage": self.stage})
                # Waiting long for the answer: a stopped rank 0 shows as silent in report(), and a reply is never
                # cut in the middle (which would lose the message framing).
                self.heard[0] = (time.monotonic(), _recv(sock, time.monotonic() + self.timeout)["stage"])
            except TimeoutError:
                return
            except (_Closed, OSError, ValueError, KeyError):
                self.closed.add(0)
                return

    def _beat_root(self) -> None:
        beats = dict(self.beats)  # close() empties self.beats under this thread's feet
        with selectors.DefaultSelector() as sel:
            for r, conn in beats.items():
                try:
                    sel.register(conn, selectors.EVENT_READ, r)
                except (OSError, ValueError):  # closed already: by close() (stopping), or the rank's end is gone
                    if self._beat_stop.is_set():
                        return
                    self.closed.add(r)
            while not self._beat_stop.is_set() and sel.get_map():
                try:
                    ready = sel.select(0.5)
                except (OSError, ValueError):  # closed by close()
                    return
                for key, _ in ready:
                    r = key.data
                    try:
                        self.heard[r] = (time.monotonic(), _recv(beats[r], time.monotonic() + 5)["stage"])
                        _send(beats[r], {"stage": self.stage})
                    except (TimeoutError, _Closed, OSError, ValueError, KeyError):
                        if self._beat_stop.is_set():
                            return
                        self.closed.add(r)
                        with contextlib.suppress(KeyError, ValueError):
                            sel.unregister(key.fileobj)

    def report(self) -> str:
        """What this rank knows of the others: dead (connection closed), silent (stopped or hung: no
        heartbeat), or the stage each last reported."""
        now = time.monotonic()
        parts = []
        for r, (when, stage) in sorted(getattr(self, "heard", {}).items()):
            if r in self.closed:
                parts.append(f"rank {r} died (connection closed)")
            elif now - when > 3 * _HEARTBEAT + 1:
                parts.append(f"rank {r} silent for {now - when:.0f} s (stopped or hung)")
            else:
                parts.append(f"rank {r} is in {stage}")
        return "; ".join(parts) or "no other rank known"

    # -- the one collective --
    def exchange(self, value: Any, what: str, timeout: float | None = None) -> list:
        timeout = self.timeout if timeout is None else timeout
        previous, self.stage = self.stage, what
        try:
            return self._exchange(value, what, timeout)
        finally:
            self.stage = previous

    def _exchange(self, value: Any, what: str, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        if self.size == 1:
            return [value]
        if self.rank != 0:
            assert self.root is not None
            try:
                _send(self.root, {"value": value})
                reply = _recv(self.root, deadline)
            except _Closed:
                raise DistributedError(f"rank {self.rank}: rank 0 closed the connection during {what} "
                                       f"(it died or stopped)") from None
            except (BrokenPipeError, ConnectionResetError):
                raise DistributedError(f"rank {self.rank}: rank 0 closed the connection during {what} "
                                       f"(it died or stopped)") from None
            except TimeoutError:
                raise DistributedError(f"rank {self.rank}: no answer from rank 0 within {timeout:g} s during "
                                       f"{what} (rank 0 or another rank is hung; {self.report()})") from None
            if "error" in reply:
                raise DistributedError(f"rank {self.rank}: {reply['error']}")
            return reply["values"]
        values: list = [None] * self.size
        values[0] = value
        dead, late = self._gather(values, deadline)
        if dead or late:
            parts = []
            if dead:
                parts.append(f"rank(s) {_ranks(dead)} closed the connection (the process died)")
            if late:
                parts.append(f"rank(s) {_ranks(late)} sent nothing for {timeout:g} s (hung or dead); {self.report()}")
            message = f"{what}: " + "; ".join(parts)
            self._broadcast({"error": f"rank 0 stops: {message}"}, skip=set(dead))
            raise DistributedError(f"rank 0: {message}")
        self._broadcast({"values": values})
        return values

    def _gather(self, values: list, deadline: float) -> tuple[list[int], list[int]]:
        dead: list[int] = []
        with selectors.DefaultSelector() as sel:
            for r, conn in self.peers.items():
                sel.register(conn, selectors.EVENT_READ, r)
            waiting = set(self.peers)
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for key, _ in sel.select(left):
                    r = key.data
                    try:
                        message = _recv(self.peers[r], deadline)
                        values[r] = message["value"]
                    except (_Closed, ValueError, KeyError, OSError):
                        dead.append(r)
                    except TimeoutError:
                        continue
                    sel.unregister(self.peers[r])
                    waiting.discard(r)
        return sorted(dead), sorted(waiting)

    def _broadcast(self, message: dict, skip: set[int] = frozenset()) -> None:
        for r, conn in self.peers.items():
            if r in skip:
                continue
            with contextlib.suppress(OSError):
                _send(conn, message)

    def close(self) -> None:
        if getattr(self, "_beat_stop", None) is not None:
            self._beat_stop.set()
        for conn in list(self.peers.values()) + list(self.beats.values()) + [self.root, self.beat, self.server]:
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        self.peers.clear()
        self.beats.clear()
        self.root = self.beat = self.server = None


def _ranks(ranks: Sequence[int]) -> str:
    return ", ".join(str(r) for r in ranks)


# ---- the watchdog: bounds the blocking C collectives ---------------------------------------------------
class _Watchdog:
    """A thread that ends the process (status WATCHDOG_EXIT_CODE, a message naming what it knows) when a
    guarded blocking call (an all-reduce, a broadcast, NCCL's setup) runs past its deadline: a C collective
    cannot be interrupted, and a peer that died inside it would otherwise leave this rank waiting forever."""

    def __init__(self, rank: int, timeout: float, control: "_Control"):
        self.rank, self.timeout, self._control = rank, timeout, control
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._what = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pydarknet-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, what: str, timeout: float | None = None):
        with self._lock:
            self._deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            self._what = what
        previous, self._control.stage = self._control.stage, what
        try:
            yield
        finally:
            self._control.stage = previous
            with self._lock:
                self._deadline = None

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                expired = self._deadline is not None and time.monotonic() > self._deadline
                what = self._what
            if not expired:
                continue
            message = (f"pydarknet: rank {self.rank}: {what} did not finish within {self.timeout:g} s: "
                       f"{self._control.report()}; "
                       f"stopping (exit status {WATCHDOG_EXIT_CODE})")
            log.error(message)
            with contextlib.suppress(Exception):
                sys.stderr.write(message + "\n")
                sys.stderr.flush()
            os._exit(WATCHDOG_EXIT_CODE)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)


# ---- the replica ---------------------------------------------------------------------------------------
def _mean_tree(values: list) -> Any:
    """Mean over ranks of every number in a nested dict/list; other leaves are rank 0's."""
    first = values[0]
    if isinstance(first, bool) or first is None or isinstance(first, str):
        return first
    if isinstance(first, (int, float)):
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return float(np.mean(numbers)) if len(numbers) == len(values) else first
    if isinstance(first, dict):
        return {k: _mean_tree([v.get(k) if isinstance(v, dict) else None for v in values]) for k in first}
    if isinstance(first, (list, tuple)):
        if all(isinstance(v, (list, tuple)) and len(v) == len(first) for v in values):
            return [_mean_tree([v[i] for v in values]) for i in range(len(first))]
    return first


class Replica:
    """One replica of a data-parallel run (this process). Made by :func:`init`; ``size == 1`` is a plain
    single-process run, for which every method is the trivial one, so a loop can use a Replica always.

    The loop's shape, every rank the same calls in the same order::

        rep.broadcast_params(net)                  # once: every rank starts from rank 0's weights
        for iteration ...:
            for k, (x, t) in enumerate(my chunks):   # rep.shard(...) / rep.chunk_numbers(...)
                rep.train_chunk(net, x, t, last=k == len(chunks) - 1)   # the last overlaps the all-reduce
            stop, metrics = rep.check_in(stop_requested, {"loss": ...})   # heartbeat + stop flag + averages
            rep.update(net, lr, momentum, decay, images_of_all_ranks)     # all-reduce + the same SGD step
            if rep.is_writer: write logs / checkpoints
            if stop: break
    """

    def __init__(self, info: LaunchInfo, timeout: float = DEFAULT_TIMEOUT, control: _Control | None = None,
                 comm=None, device: int = -1):
        self.info = info
        self.timeout = timeout
        self.device = device
        self._control = control
        self._comm = comm
        self._bootstrap_comm = None   # the MPI communicator that carried NCCL's id (keeps MPI up until close)
        self._broken = False          # a rank failed: freeing the transport could wait for it forever
        self.bucket_floats = 0        # all-reduce bucket of train_chunk(last=True); 0 = the library's (25 MiB)
        if control is not None:
            control.stage = "its own work (between collectives)"
        self._watchdog = (_Watchdog(info.rank, timeout, control) if control is not None and info.size > 1
                          else None)

    # -- identity --
    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def size(self) -> int:
        return self.info.size

    @property
    def local_rank(self) -> int:
        return self.info.local_rank

    @property
    def is_writer(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and the dashboard stream."""
        return self.info.rank == 0

    @property
    def transport(self) -> str:
        """"mpi", "nccl", "none" (control channel only) or "single"."""
        if self.size == 1:
            return "single"
        if self._comm is None:
            return "none"
        from . import _ffi  # noqa: PLC0415

        return _ffi.comm_transport(self._comm)

    @property
    def comm(self):
        """The C communicator (a cffi ``dn_comm *``) for direct dn_comm_* calls, or None (one process, or
        transport 'none')."""
        return self._comm

    def __repr__(self) -> str:
        return f"<Replica rank {self.rank} of {self.size} ({self.info.launcher}, {self.transport})>"

    # -- data --
    def shard(self, items: Sequence, iteration: int, batch: int, seed: int = 0) -> list:
        """This rank's share of iteration `iteration`'s `batch` items (the batch of all ranks together).

        The iteration's items come from a fixed order that does not depend on the number of ranks: epoch e is
        a permutation of `items` seeded by (seed, e), cut into len(items)//batch iterations (the remainder of a
        permutation is skipped; the next epoch reshuffles). Rank r takes the r-th of `size` equal contiguous
        parts, so ranks never share an item within an iteration (unless `items` holds fewer than `batch`
        entries: then they repeat) and a run resumed with another number of ranks sees the same images.
        """
        if batch < 1 or batch % self.size:
            raise DarknetValueError(f"the batch of all ranks ({batch}) must be a positive multiple of the number "
                                    f"of ranks ({self.size})")
        if not items:
            raise DarknetValueError("shard: no items")
        if iteration < 0:
            raise DarknetValueError(f"shard: iteration {iteration} < 0")
        n = len(items)
        if n >= batch:
            per_epoch = n // batch
            epoch, position = divmod(iteration, per_epoch)
            order = np.random.default_rng([seed, epoch]).permutation(n)[position * batch:(position + 1) * batch]
        else:
            order = np.random.default_rng([seed, iteration]).permutation(np.resize(np.arange(n), batch))
        share = batch // self.size
        return [items[int(i)] for i in order[self.rank * share:(self.rank + 1) * share]]

    def chunk_numbers(self, iteration: int, chunks: int) -> list[int]:
        """With a loader whose batch k is a pure function of k (pydarknet's DataLoader is: seed and batch
        number), the global numbers of the chunks this rank makes in `iteration` when an iteration has
        `chunks` chunks in all: chunk c of iteration i is number i*chunks + c, rank r makes its contiguous
        share. One process with `chunks` chunks per iteration makes exactly the union."""
        if chunks < 1 or chunks % self.size:
            raise DarknetValueError(f"the chunks of an iteration ({chunks}) must be a positive multiple of the "
                                    f"number of ranks ({self.size})")
        share = chunks // self.size
        first = iteration * chunks + self.rank * share
        return list(range(first, first + share))

    # -- collectives --
    def _need_comm(self, what: str):
        if self._comm is None:
            raise DistributedError(f"{what}: this replica has no data transport (made with transport='none')")
        return self._comm

    def broadcast_params(self, net, root: int = 0) -> None:
        """Every rank takes root's parameters (batch-norm rolling statistics included) and its `seen`."""
        if self.size == 1:
            return
        from . import _ffi  # noqa: PLC0415

        comm = self._need_comm("broadcast_params")
        with self._watchdog.guard("the broadcast of the parameters"), net._lock:
            _ffi.network_broadcast_params(net._handle(), comm, root)
        seen = self._control.exchange(net.seen, "the broadcast of the iteration count")[root]
        net.seen = int(seen)

    def allreduce_updates(self, net) -> None:
        """The raw all-reduce (sum) of the update block. For the exact equivalence with one replica of the
        whole batch rank 0 alone may carry momentum in its buffers: use :meth:`update`, which keeps that rule."""
        if self.size == 1:
            return
        from . import _ffi  # noqa: PLC0415

        comm = self._need_comm("allreduce_updates")
        with self._watchdog.guard("the all-reduce of the update block"), net._lock:
            _ffi.network_allreduce_updates(net._handle(), comm)

    def train_chunk(self, net, images: np.ndarray, truths: np.ndarray, last: bool = False) -> float:
        """Network.train_chunk; for the iteration's last chunk (`last`), the all-reduce of the update block
        runs during its backward pass, bucket by bucket (``bucket_floats``), and :meth:`update` waits for it
        (MPI; other transports reduce the whole block in update). Same result either way."""
        if self.size == 1 or not last:
            return net.train_chunk(images, truths)
        from . import _ffi  # noqa: PLC0415

        comm = self._need_comm("train_chunk")
        # Network's own input checks and conversions (this module is part of the package).
        with net._lock:
            x = net._input(images)
            t = net._truth(truths, x.shape[0])
            return _ffi.network_train_chunk_reduce(net._handle(), comm, x, t, self.bucket_floats)

    def update(self, net, learning_rate: float, momentum: float, decay: float, batch_images: int) -> None:
        """The SGD step after an iteration's chunks: all-reduce of the update block, the step of
        Network.update for `batch_images` (the images of ALL ranks in this iteration), and `seen` advanced
        by the other ranks' images too. Every rank ends with the same weights."""
        if self.size == 1:
            net.update(learning_rate, momentum, decay, batch_images)
            return
        if batch_images % self.size:
            raise DarknetValueError(f"batch_images {batch_images} is not a multiple of the {self.size} ranks")
        from . import _ffi  # noqa: PLC0415

        comm = self._need_comm("update")
        with self._watchdog.guard("the all-reduce of the update block"), net._lock:
            _ffi.network_update_replicated(net._handle(), comm, learning_rate, momentum, decay, batch_images)
        net.seen = net.seen + batch_images - batch_images // self.size

    def gather(self, value: Any, what: str = "a gather", timeout: float | None = None) -> list:
        """Every rank's `value` (JSON-able), on every rank, indexed by rank."""
        if self.size == 1:
            return [value]
        try:
            return self._control.exchange(value, what, timeout)
        except DistributedError:
            self._broken = True
            raise

    def average(self, metrics: dict) -> dict:
        """The mean over ranks of every number in `metrics` (nested dicts and lists too)."""
        return _mean_tree(self.gather(metrics, "the averaging of metrics"))

    def check_in(self, stop: bool, metrics: dict | None = None,
                 timeout: float | None = None) -> tuple[bool, dict]:
        """Once per iteration on every rank: the heartbeat (a rank that does not arrive within `timeout` is
        named in a DistributedError on rank 0; the others then see rank 0 go), the stop decision (True on
        every rank when any rank asked: SIGTERM/SIGINT) and the metrics averaged over ranks."""
        values = self.gather({"stop": bool(stop), "metrics": metrics or {}}, "the per-iteration check-in", timeout)
        return any(v["stop"] for v in values), _mean_tree([v["metrics"] for v in values])

    def barrier(self, timeout: float | None = None) -> None:
        """Wait for every rank (longer phases on one rank, e.g. rank 0's mAP evaluation, pass a timeout)."""
        self.gather(None, "a barrier", timeout)

    # -- lifetime --
    def close(self) -> None:
        """Free the transport (finalising MPI after its last communicator) and the control channel. After a
        rank failed the transport is left as it is: MPI_Finalize and NCCL's teardown would wait for the failed
        rank; the process is about to exit non-zero and the launcher ends the job."""
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        for name in ("_comm", "_bootstrap_comm"):
            comm = getattr(self, name)
            setattr(self, name, None)
            if comm is not None and not self._broken:
                from . import _ffi  # noqa: PLC0415

                _ffi.comm_free(comm)
        if self._control is not None:
            self._control.close()

    def __enter__(self) -> "Replica":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _parse_dist_url(url: str) -> tuple[str, Any]:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "tcp":
        if not parsed.hostname or not parsed.port:
            raise DistributedError(f"--dist-url {url}: expected tcp://HOST:PORT")
        return "tcp", (parsed.hostname, parsed.port)
    if parsed.scheme == "file":
        if not parsed.path:
            raise DistributedError(f"--dist-url {url}: expected file:///shared/path")
        return "file", Path(urllib.parse.unquote(parsed.path))
    raise DistributedError(f"--dist-url {url}: use tcp://HOST:PORT or file:///shared/path")


def _address_file_read(path: Path, size: int, deadline: float) -> tuple[str, int]:
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, OSError):
            info = json.loads(path.read_text())
            if info["magic"] == _MAGIC and info["size"] == size:
                return info["host"], int(info["port"])
        time.sleep(0.2)
    raise DistributedError(f"rendezvous file {path}: rank 0 did not publish its address in time")


def _address_file_write(path: Path, host: str, port: int, size: int) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"magic": _MAGIC, "host": host, "port": port, "size": size}))
    os.replace(tmp, path)


def _this_host() -> str:
    """The name the other ranks use to reach rank 0 (PYDARKNET_DIST_HOST overrides)."""
    return os.environ.get("PYDARKNET_DIST_HOST") or socket.getfqdn()


def init(device=None, dist_url: str | None = None, timeout: float | None = None, transport: str = "auto",
         environ: Mapping[str, str] | None = None) -> Replica:
    """This process's Replica, from the launcher's environment.

    device: None/"cpu" (MPI transport) or "cuda:K" (NCCL); "cuda" means cuda:<local rank>; None takes
    PYDARKNET_DEVICE when set (pydarknet's launcher and the Slurm templates set it). The chosen device index is
    Replica.device (-1 = CPU): load the network there. dist_url: rendezvous for runs not started by an MPI launcher (also PYDARKNET_DIST_URL).
    timeout: seconds a rank may be late before the others stop with an error naming it (PYDARKNET_DIST_TIMEOUT,
    default 120). transport: "auto", or "none" for the control channel alone (tools and tests).
    """
    env = os.environ if environ is None else environ
    info = launch_info(env)
    timeout = float(timeout if timeout is not None else env.get("PYDARKNET_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    if timeout <= 0:
        raise DarknetValueError(f"timeout must be > 0 seconds, got {timeout}")
    from .network import parse_device  # noqa: PLC0415

    if device is None:
        device = env.get("PYDARKNET_DEVICE") or None
    dev = info.local_rank if device == "cuda" else parse_device(device)
    if info.size == 1:
        return Replica(info, timeout, device=dev)
    from . import _ffi  # noqa: PLC0415

    if transport not in ("auto", "none"):
        raise DarknetValueError(f"transport must be 'auto' or 'none', got {transport!r}")
    want = "none" if transport == "none" else ("nccl" if dev >= 0 else "mpi")
    dist_url = dist_url or env.get("PYDARKNET_DIST_URL")
    if want == "mpi" and not info.mpi:
        raise DistributedError(f"rank {info.rank} of {info.size} ({info.launcher}): training on the CPU across "
                               f"processes uses MPI; start the ranks with mpirun (or srun with an MPI that "
                               f"supports it), or train on CUDA devices (NCCL)")
    if want == "mpi" and not _ffi.comm_mpi_built():
        raise DistributedError("this libdarknet.so was built without MPI (install libopenmpi-dev or "
                               "libmpich-dev and rebuild with `make MPI=1`)")
    if want == "nccl" and not _ffi.comm_nccl_built():
        raise DistributedError("this libdarknet.so was built without NCCL (rebuild with `make GPU=1 NCCL=1`)")

    control = _Control(info.rank, info.size, timeout)
    mpi_comm = None
    try:
        id_bytes = _ffi.NCCL_UNIQUE_ID_BYTES
        nccl_id = bytes(id_bytes)
        if info.rank == 0 and want == "nccl":
            nccl_id = _ffi.comm_nccl_unique_id()
        use_mpi = info.mpi and _ffi.comm_mpi_built() and (want == "mpi" or not dist_url)
        if use_mpi:
            # Rank 0's control address (and NCCL's id) travel over MPI in one 512-byte blob: the address
            # zero-padded, then the id.
            mpi_comm = _ffi.comm_init_mpi()
            blob = bytes(512)
            if info.rank == 0:
                port = control.listen()
                address = json.dumps([_this_host(), port]).encode()
                if len(address) > 512 - id_bytes:
                    raise DistributedError(f"host name {_this_host()!r} too long")
                blob = address.ljust(512 - id_bytes, b"\0") + nccl_id
            blob = _ffi.comm_broadcast_bytes(mpi_comm, blob, 0)
            nccl_id = blob[512 - id_bytes:]
            if info.rank == 0:
                control.accept_all({})
            else:
                raw = blob[:512 - id_bytes].rstrip(b"\0")
                host, port = json.loads(raw)
                control.connect(host, port)
        else:
            if not dist_url:
                raise DistributedError(f"rank {info.rank} of {info.size}: no way to find rank 0: give --dist-url "
                                       f"tcp://HOST:PORT or file:///shared/path (or start the ranks with mpirun)")
            kind, where = _parse_dist_url(dist_url)
            if info.rank == 0:
                port = control.listen(where[1] if kind == "tcp" else 0)
                if kind == "file":
                    _address_file_write(where, _this_host(), port, info.size)
                control.accept_all({"nccl_id": nccl_id.hex()})
                if kind == "file":
                    with contextlib.suppress(OSError):
                        where.unlink()  # a later run must not find this address
            else:
                host, port = (where if kind == "tcp"
                              else _address_file_read(where, info.size, time.monotonic() + timeout))
                welcome = control.connect(host, port)
                nccl_id = bytes.fromhex(welcome.get("nccl_id", ""))
        replica = Replica(info, timeout, control, None, dev)
        if want == "mpi":
            replica._comm, mpi_comm = mpi_comm, None
        elif want == "nccl":
            with replica._watchdog.guard(f"NCCL's setup on cuda:{dev}"):
                replica._comm = _ffi.comm_init_nccl(info.size, info.rank, nccl_id, dev)
        if mpi_comm is not None:
            replica._bootstrap_comm = mpi_comm  # keeps MPI up (finalised with the replica)
            mpi_comm = None
        log.info("rank %d of %d (%s, local rank %d): %s transport", info.rank, info.size, info.launcher,
                 info.local_rank, want)
        return replica
    except BaseException:
        control.close()
        if mpi_comm is not None:
            _ffi.comm_free(mpi_comm)
        raise


# ---- one process per GPU on this machine ---------------------------------------------------------------
def parse_gpus(gpus) -> list[int]:
    """'0,1,2,3' (or a list) -> [0, 1, 2, 3]; each id once."""
    if isinstance(gpus, str):
        parts = [p.strip() for p in gpus.split(",") if p.strip()]
    else:
        parts = list(gpus)
    try:
        ids = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise DarknetValueError(f"-gpus {gpus!r}: expected comma-separated GPU numbers such as 0,1,2,3") from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise DarknetValueError(f"-gpus {gpus!r}: expected distinct GPU numbers >= 0")
    return ids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(gpus, command: Sequence[str], *, dist_url: str | None = None, grace: float | None = None,
                 environ: Mapping[str, str] | None = None) -> int:
    """Start one process per GPU on this machine running `command` (e.g. [sys.executable, "-m", "pydarknet",
    "train", ...]) with PYDARKNET_RANK, PYDARKNET_WORLD_SIZE, PYDARKNET_LOCAL_RANK, PYDARKNET_LOCAL_SIZE,
    PYDARKNET_DEVICE=cuda:GPU and PYDARKNET_DIST_URL (a free local port unless given) set, and wait.

    SIGINT/SIGTERM are passed on to every rank (they stop together and rank 0 saves). When a rank fails, the
    others get `grace` seconds (default: the timeout + 30 s) to stop by themselves before they are killed.
    Returns 0 when every rank succeeded, else the first failing rank's status."""
    ids = parse_gpus(gpus)
    base = dict(os.environ if environ is None else environ)
    timeout = float(base.get("PYDARKNET_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    grace = timeout + 30 if grace is None else grace
    url = dist_url or f"tcp://127.0.0.1:{_free_port()}"
    procs: list[subprocess.Popen] = []
    for local, gpu in enumerate(ids):
        env = dict(base, PYDARKNET_RANK=str(local), PYDARKNET_WORLD_SIZE=str(len(ids)),
                   PYDARKNET_LOCAL_RANK=str(local), PYDARKNET_LOCAL_SIZE=str(len(ids)),
                   PYDARKNET_DEVICE=f"cuda:{gpu}", PYDARKNET_DIST_URL=url)
        procs.append(subprocess.Popen(list(command), env=env))

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.send_signal(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            previous[sig] = signal.signal(sig, forward)
    try:
        failed_at: float | None = None
        status = 0
        while any(p.poll() is None for p in procs):
            for rank, p in enumerate(procs):
                code = p.poll()
                if code not in (None, 0) and status == 0:
                    status = code
                    failed_at = time.monotonic()
                    log.error("rank %d (pid %d) exited with status %d", rank, p.pid, code)
            if failed_at is not None and time.monotonic() - failed_at > grace:
                for rank, p in enumerate(procs):
                    if p.poll() is None:
                        log.error("rank %d did not stop %g s after another rank failed: killing it", rank, grace)
                        p.kill()
            time.sleep(0.2)
        if status == 0:
            status = next((p.returncode for p in procs if p.returncode), 0)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
