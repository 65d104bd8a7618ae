"""Training: ``pydarknet.train(data, cfg, weights=None, ...)`` and ``python -m pydarknet train``.

The loop follows Darknet's ``train_detector`` (SPEC §3): an iteration is ``batch`` images processed as
``subdivisions`` chunks whose gradients add up before one SGD step; the learning rate follows the cfg's
policy; checkpoints go to ``<backup>/<prefix>/``; logs are ``log.csv`` (the reference's format) and
``metrics.jsonl``. SIGINT/SIGTERM save ``<base>.backup`` and stop cleanly; every weights write is atomic.
"""
from __future__ import annotations

import logging
import math
import os
import random as _random
import re
import shutil
import signal
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Augment, DataLoader, read_list
from . import _callable_module
from .datafile import read_data_file, read_names
from .errors import DarknetArithmeticError, DarknetError, DarknetValueError
from .network import Network, gpu_ids, set_threads
from .runfiles import (BAD_LIST, FINAL_ID, LOG_FILE, MAP_FILE, METRICS_FILE, append_map_rows, log_csv_iteration,
                       log_csv_line, metrics_iteration, metrics_line, parse_map_line, read_map_rows,
                       strict_json_value)

__all__ = ["train", "Trainer", "train_default", "learning_rate", "TrainResult", "checkpoint_due", "evaluate_map",
           "TrainingDiverged", "default_cfg_path"]

log = logging.getLogger("pydarknet.train")


class TrainingDiverged(DarknetError, ArithmeticError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def learning_rate(opts: dict, iteration: int, rng: _random.Random | None = None) -> float:
    """Darknet's get_current_rate for the [net] options `opts` at `iteration`."""
    lr = opts["learning_rate"]
    burn_in = opts.get("burn_in", 0)
    if iteration < burn_in:
        return lr * (iteration / burn_in) ** opts.get("power", 4)
    policy = opts.get("policy", "constant")
    if policy == "constant":
        return lr
    if policy == "steps":
        rate = lr
        for step, scale in zip(opts.get("steps", []), opts.get("scales", [])):
            if step > iteration:
                break
            rate *= scale
        return rate
    if policy == "step":
        return lr * opts.get("scale", 1.0) ** (iteration // max(1, opts.get("step", 1)))
    if policy == "exp":
        return lr * opts.get("gamma", 1.0) ** iteration
    if policy == "poly":
        max_batches = max(1, opts.get("max_batches", 1))
        return lr * max(0.0, 1 - iteration / max_batches) ** opts.get("power", 4)
    if policy == "sig":
        return lr / (1 + math.exp(opts.get("gamma", 1.0) * (iteration - opts.get("step", 1))))
    if policy == "random":
        return lr * (rng or _random).random() ** opts.get("power", 4)
    raise ValueError(f"unknown learning-rate policy {policy!r}")


def checkpoint_due(iteration: int) -> bool:
    """`<base>_<it>.weights` every 100 iterations below 1000 and every 1000 after (SPEC §3)."""
    return iteration > 0 and ((iteration < 1000 and iteration % 100 == 0) or iteration % 1000 == 0)


def multiscale_sizes(width: int) -> list[int]:
    """Square sizes for random=1: Darknet's 320..608 step 32 for a 416 net, scaled for other sizes."""
    lo = max(32, int(round(width * 320 / 416 / 32)) * 32)
    hi = max(lo, int(round(width * 608 / 416 / 32)) * 32)
    return list(range(lo, hi + 1, 32))


@dataclass
class TrainResult:
    iterations: int
    final_weights: Path | None
    run_dir: Path
    avg_loss: float
    stopped_by_signal: str | None = None
    checkpoints: list[Path] = field(default_factory=list)
    map_results: dict = field(default_factory=dict)


class _StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to save and stop after the current
    iteration; a second SIGINT interrupts at once (weights writes are atomic either way)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = name
        log.warning("%s received: saving a backup after this iteration and stopping (Ctrl-C again to abort)", name)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Progress:
    """One updating line on a terminal; periodic plain lines otherwise (cron, Slurm)."""

    def __init__(self, max_batches: int, stream=None, every: int = 100):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.max_batches = max_batches
        self.every = every
        self.start = time.perf_counter()
        self.start_it: int | None = None
        self.closed = False

    def update(self, it: int, loss: float, avg: float, lr: float, images_per_s: float) -> None:
        if self.start_it is None:
            self.start_it = it - 1
        done = it - self.start_it
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(1, done) * max(0, self.max_batches - it)
        text = (f"{it}/{self.max_batches}: loss {loss:.3f}, avg {avg:.3f}, rate {lr:.6f}, "
                f"{images_per_s:.1f} img/s, ETA {_hms(eta)}")
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif it % self.every == 0 or it == self.max_batches:
            self.stream.write(text + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the updating line (once: both the end of the loop and shutdown call it)."""
        if self.tty and not self.closed:
            self.stream.write("\n")
            self.stream.flush()
        self.closed = True


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class _NullStream:
    """Where the progress of ranks other than 0 goes."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _resolve(path_text: str, data_file: Path) -> Path:
    """Darknet resolves .data paths against the working directory; fall back to the .data file's folder."""
    p = Path(path_text).expanduser()
    if p.is_absolute() or p.exists():
        return p
    alt = data_file.parent / p
    return alt if alt.exists() else p


def _yolo_jitter(net: Network) -> float:
    layers = net.yolo_layers
    return layers[-1].jitter if layers else 0.2


class _RunFolderLog:
    """The run folder's logs: log.csv (the reference's format), metrics.jsonl (strict JSON) and map.txt."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.csv = open(run_dir / LOG_FILE, "a", buffering=1)
        self.jsonl = open(run_dir / METRICS_FILE, "a", buffering=1)

    def iteration(self, record: dict, max_batches: int) -> None:
        self.csv.write(log_csv_line(record["layers"], record["iteration"], max_batches, record["avg_loss"]) + "\n")
        self.jsonl.write(metrics_line(record) + "\n")

    def map_row(self, row: str) -> None:
        append_map_rows(self.run_dir / MAP_FILE, [row])

    def close(self) -> None:
        self.csv.close()
        self.jsonl.close()


class _BoardLog:
    """The same lines sent to a remote board (--log-url)."""

    def __init__(self, url: str, token: str | None, run_name: str):
        from .board.client import MetricsSender  # noqa: PLC0415

        self.sender = MetricsSender(url, token, run_name)

    def iteration(self, record: dict, max_batches: int) -> None:
        self.sender.send_log(log_csv_line(record["layers"], record["iteration"], max_batches, record["avg_loss"]))
        self.sender.send_metrics(strict_json_value(record))

    def map_row(self, row: str) -> None:
        self.sender.send_map(row)

    def close(self) -> None:
        self.sender.close()


class _TensorBoardSink:
    """Every iteration's record and the mAP rows as TensorBoard event files (pydarknet.tensorboard_log)."""

    def __init__(self, logdir: Path, yolo_layers: list[int]):
        from .tensorboard_log import TensorBoardLogger  # noqa: PLC0415

        self.logger = TensorBoardLogger(logdir, yolo_layers=yolo_layers)

    def iteration(self, record: dict, max_batches: int) -> None:
        self.logger.log_iteration(record["iteration"], record)

    def map_row(self, row: str) -> None:
        metric, ident, values = parse_map_line(row)   # mean, then .50, .55, ..., .95
        points = {f"{metric}_50_95": values[0]}
        if len(values) == 11:
            points.update({f"{metric}_50": values[1], f"{metric}_75": values[6]})
        self.logger.log_map(ident, points)

    def close(self) -> None:
        self.logger.close()


def _average_stats(stats_per_chunk: list[list[dict]]) -> list[dict]:
    """Average each [yolo] layer's statistics over the chunks of an iteration (counts are summed)."""
    out = []
    for per_layer in zip(*stats_per_chunk):
        merged = {}
        for key in per_layer[0]:
            values = [s[key] for s in per_layer]
            merged[key] = int(sum(values)) if key == "count" else float(np.mean(values))
        out.append(merged)
    return out


def _weights_iteration(path: Path, images_per_iteration: int) -> int | None:
    """The training iteration stored in a weights file's header (SPEC §1.4), None if it cannot be read."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return None
    if len(header) < 16:
        return None
    major, minor, _ = struct.unpack("<3i", header[:12])
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        if len(header) < 20:
            return None
        seen = struct.unpack("<Q", header[12:20])[0]
    else:
        seen = struct.unpack("<I", header[12:16])[0]
    return seen // images_per_iteration


class Trainer:
    """One training run, phase by phase: :meth:`setup` (data, network, the run folder, resume), :meth:`iteration`
    (``subdivisions`` chunks, then one SGD step), :meth:`emit` (an iteration's metrics to every sink),
    :meth:`checkpoint`, :meth:`finish` and :meth:`shutdown` (always, from a ``finally``: logs flushed and closed,
    the metrics sender stopped, the loader's workers and the network freed). :meth:`run` strings them together.

    Data-parallel training (issue 10): the process is one replica of :func:`pydarknet.distributed.init` (a
    plain single-process run when the launcher started one). An iteration's ``batch`` images are those of all
    ranks together: rank r makes its ``subdivisions / ranks`` share of the iteration's chunks, the ranks check
    in (stop flag, averaged metrics), all-reduce the update block and take the same SGD step. Rank 0 alone
    (:attr:`is_writer`) writes checkpoints and logs, with the averaged metrics. Another metrics destination is
    one more object in :attr:`sinks` with ``iteration(record, max_batches)``, ``map_row(row)`` and ``close()``.
    """

    rank = 0
    world_size = 1
    replica = None

    def __init__(self, data: str | os.PathLike, cfg: str | os.PathLike, weights: str | os.PathLike | None = None,
                 *, clear: bool = False, gpus=None, map_eval: bool = False, map_every: int | None = None,
                 max_batches: int | None = None, threads: int | None = None, workers: int | None = None,
                 log_url: str | None = None, log_token: str | None = None, seed: int | None = None,
                 time_limit: float | None = None, progress_stream=None, chart_every: int = 200,
                 device=None, dist_url: str | None = None, tensorboard: str | os.PathLike | bool | None = None,
                 precision: str = "f32"):
        self.gpu_ids = gpu_ids(gpus)
        self.precision = precision
        if device is not None and self.gpu_ids:
            raise DarknetValueError("give either gpus or device, not both")
        self.device, self.dist_url, self.tensorboard = device, dist_url, tensorboard
        self.seed = seed
        self.agreed_stop = False          # the ranks agreed to stop (a signal or the time limit on any rank)
        self.next_check_in_timeout = None  # longer while rank 0 evaluates mAP
        self.data_path, self.cfg = Path(data), cfg
        self.weights = Path(weights) if weights is not None else None
        self.clear, self.map_eval, self.map_every = clear, map_eval, map_every
        self.max_batches_override, self.threads, self.workers = max_batches, threads, workers
        self.log_url, self.log_token = log_url, log_token
        self.rng = _random.Random(seed)
        self.time_limit, self.progress_stream, self.chart_every = time_limit, progress_stream, chart_every
        self.base = Path(cfg).stem
        self.net: Network | None = None
        self.loader: DataLoader | None = None
        self.progress: _Progress | None = None
        self.sinks: list = []
        self.stop: _StopRequest | None = None
        self.avg_loss = -1.0
        self.count = 0
        self.valid_paths = self.map_names = self.map_rules = None

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run's files (checkpoints, logs): rank 0 of the replicas."""
        return self.rank == 0

    # ---- set-up --------------------------------------------------------------------------------------------
    def join(self) -> None:
        """Become a replica (a run of one when the launcher started one process): its device and rank."""
        from . import distributed  # noqa: PLC0415

        info = distributed.launch_info()
        if len(self.gpu_ids) > 1 and info.size == 1:
            raise DarknetValueError(f"gpus {','.join(map(str, self.gpu_ids))}: several GPUs train as one process "
                                    "per GPU: run `python -m pydarknet train ... --gpus LIST` (it starts them), "
                                    "or start the processes with mpirun/srun")
        device = self.device
        if device is None and self.gpu_ids and not os.environ.get("PYDARKNET_DEVICE"):
            device = f"cuda:{self.gpu_ids[info.local_rank % len(self.gpu_ids)]}"
        self.replica = rep = distributed.init(device=device, dist_url=self.dist_url)
        self.rank, self.world_size = rep.rank, rep.size
        if rep.size > 1:
            # Every rank draws the same chunks' contents and multi-scale sizes: one seed, rank 0's.
            mine = self.seed if self.seed is not None else _random.SystemRandom().randrange(2**31)
            self.seed = rep.gather(mine if rep.is_writer else None, "the sharing of the seed")[0]
            self.rng = _random.Random(self.seed)

    def setup(self) -> None:
        """Everything before the first iteration; what it opens, shutdown() closes."""
        if self.replica is None:
            self.join()
        train_paths = self._read_data()
        self._open_network()
        if self.is_writer:
            _finish_temporaries(self.run_dir, self.net.n_params)
        self.resume()
        self.replica.broadcast_params(self.net)
        self._open_loader(train_paths)
        if self.is_writer:
            self.sinks.append(_RunFolderLog(self.run_dir))
            if self.log_url:
                self.sinks.append(_BoardLog(self.log_url, self.log_token, self.prefix or self.base))
            if self.tensorboard:
                from .tensorboard_log import DEFAULT_SUBDIR  # noqa: PLC0415

                logdir = self.run_dir / DEFAULT_SUBDIR if self.tensorboard is True else Path(self.tensorboard)
                self.sinks.append(_TensorBoardSink(logdir, [layer.index for layer in self.net.yolo_layers]))
        self.progress = _Progress(self.opts["max_batches"],
                                  self.progress_stream if self.is_writer else _NullStream())
        self.result = TrainResult(iterations=self.current_iteration, final_weights=None, run_dir=self.run_dir,
                                  avg_loss=-1.0)
        if self.map_eval or self.map_every:
            self._prepare_map()
        log.info("training %s: %d images, %d per iteration (%d x %d%s), up to iteration %d, %s", self.base,
                 len(train_paths), self.images_per_iteration, self.subdivisions, self.chunk,
                 f" over {self.world_size} ranks" if self.world_size > 1 else "", self.opts["max_batches"],
                 self.run_dir)

    def _read_data(self) -> list[str]:
        """The .data file: the train list (its image paths are returned), classes, the run folder."""
        self.options = options = read_data_file(self.data_path)
        if "train" not in options:
            raise DarknetError(f"{self.data_path}: no 'train' list given (train = path/to/train.txt)")
        self.data_classes = options.integer("classes", 0)
        self.train_list = _resolve(options["train"], self.data_path)
        train_paths = read_list(self.train_list)
        if not train_paths:
            raise DarknetError(f"{options['train']}: the train list is empty")
        backup = _resolve(options["backup"], self.data_path) if "backup" in options else Path("backup")
        self.prefix = options.get("prefix", "")
        self.run_dir = backup / self.prefix if self.prefix else backup
        if self.is_writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        return train_paths

    def _open_network(self) -> None:
        if self.threads is not None:
            set_threads(self.threads)
        self.net = net = Network(self.cfg, batch=1, device=self.replica.device, precision=self.precision)
        self.opts = opts = net.options
        self.chunk = max(1, opts["batch"] // opts["subdivisions"])
        self.subdivisions = opts["subdivisions"]
        self.images_per_iteration = self.chunk * self.subdivisions  # of all ranks together
        if self.subdivisions % self.world_size:
            raise DarknetError(f"{self.cfg}: subdivisions={self.subdivisions} must be a multiple of the number of "
                               f"ranks ({self.world_size}): each rank makes an equal share of an iteration's chunks")
        self.local_chunks = self.subdivisions // self.world_size
        net.set_batch(self.chunk)
        if self.max_batches_override is not None:
            opts["max_batches"] = self.max_batches_override
        yolo = net.yolo_layers
        if not yolo:
            raise DarknetError(f"{self.cfg}: no [yolo] layer: nothing to train against")
        if self.data_classes and yolo[0].classes != self.data_classes:
            raise DarknetError(f"{self.options.where('classes')}: classes={self.data_classes} but {self.cfg} has "
                               f"classes={yolo[0].classes}")
        self.num_classes = yolo[0].classes

    def _open_loader(self, train_paths: list[str]) -> None:
        net = self.net
        self.sizes = multiscale_sizes(net.width) if net.yolo_layers[-1].random else []
        aug = Augment.from_net_options(self.opts, jitter=_yolo_jitter(net))
        batch_numbers = None  # one process: the k-th chunk since the start of this process
        if self.world_size > 1:
            # A chunk's content is a function of its global number: the ranks make disjoint shares of every
            # iteration, and a run resumed with another number of ranks continues the same sequence.
            rep, first, share, chunks = self.replica, self.current_iteration, self.local_chunks, self.subdivisions
            batch_numbers = lambda k: rep.chunk_numbers(first + k // share, chunks)[k % share]  # noqa: E731
        self.loader = DataLoader(train_paths, num_classes=self.num_classes, batch=self.chunk,
                                 net_w=net.width, net_h=net.height, aug=aug, max_boxes=net.max_boxes,
                                 workers=2 if self.workers is None else self.workers,
                                 seed=self.rng.randrange(2**31),
                                 bad_list=self.run_dir / BAD_LIST if self.is_writer else None,
                                 source=self.train_list, batch_numbers=batch_numbers,
                                 # page-locked batch buffers: the input copies overlap the device's work
                                 pin_device=None if net.device == "cpu" else net.device)

    def _prepare_map(self) -> None:
        """--map / --map-every: the valid list, class names and evaluation rules, decided once per run."""
        if "valid" not in self.options:
            raise DarknetError(f"{self.data_path}: --map needs a 'valid' list")
        self.valid_paths = read_list(_resolve(self.options["valid"], self.data_path))
        self.map_names = _class_names(self.options, self.data_path)
        from .eval.listeval import voc_rules  # noqa: PLC0415

        self.map_rules = voc_rules(self.valid_paths)  # once: it looks for VOC XML beside every image

    @property
    def backup_path(self) -> Path:
        return self.run_dir / f"{self.base}.backup"

    @property
    def current_iteration(self) -> int:
        return self.net.seen // self.images_per_iteration

    # ---- resume --------------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Pick the starting point and make the run folder agree with it.

        Without WEIGHTS and without ``clear``, the run folder's own backup is where a run resumes (the same
        command run again after a crash). Whatever the start, a checkpoint of a later iteration than the start
        would be overwritten: such files go aside, into ``<run>/replaced-<time>/`` with a copy of the logs, and
        the logs lose the iterations after the start, so they never hold an iteration twice.
        """
        net, weights = self.net, self.weights
        if weights is None and not self.clear and self.backup_path.is_file():
            weights = self.backup_path
            log.info("resuming from %s (iteration %d); pass --clear or another prefix to start over", weights,
                     _weights_iteration(weights, self.images_per_iteration) or 0)
        if weights is not None:
            net.load_weights(weights)
            log.info("loaded %s (%d layers, seen %d)", weights, net.layers_loaded, net.seen)
        if self.clear:
            net.seen = 0
        if self.is_writer:
            _reconcile_run_folder(self.run_dir, self.base, self.current_iteration, self.images_per_iteration)

    # ---- one iteration -------------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        if self.current_iteration >= self.opts["max_batches"]:
            return True
        if self.world_size > 1:
            return self.agreed_stop  # decided together at the last check-in
        return self.stop_requested()

    def stop_requested(self) -> bool:
        """This process was asked to stop: a signal, or the time limit has passed."""
        if self.stop is not None and self.stop.signal_name:
            return True
        return bool(self.time_limit and time.perf_counter() - self.started > self.time_limit)

    def _multiscale(self, iteration: int) -> None:
        """random=1: a new square size every 10 iterations, the largest for the last 200 (SPEC §3)."""
        if not self.sizes or self.count % 10:
            return
        dim = self.rng.choice(self.sizes)
        if iteration + 200 > self.opts["max_batches"]:
            dim = self.sizes[-1]
        if dim != self.net.width:
            self.net.resize(dim, dim)
            self.loader.set_size(dim, dim)

    def iteration(self) -> dict:
        """Train one iteration: ``subdivisions`` chunks whose gradients add up, then one SGD step. Returns the
        iteration's metrics record (what metrics.jsonl holds)."""
        net, opts, ipi = self.net, self.opts, self.images_per_iteration
        iteration = self.current_iteration
        self._multiscale(iteration)
        self.count += 1
        t0 = time.perf_counter()
        data_seconds = 0.0
        loss_sum = 0.0
        chunk_stats = []
        rep, last = self.replica, self.local_chunks - 1
        for k in range(self.local_chunks):
            d0 = time.perf_counter()
            x, truth = self.loader.next_batch()
            data_seconds += time.perf_counter() - d0
            try:
                loss_sum += rep.train_chunk(net, x, truth, last=k == last)
            except DarknetArithmeticError as exc:
                kept = (f"the last good checkpoint is {self.backup_path}" if self.backup_path.exists()
                        else "no checkpoint had been written yet")
                raise TrainingDiverged(f"training diverged at iteration {iteration}: {exc}; {kept} "
                                       f"(lower learning_rate or raise burn_in)") from exc
            chunk_stats.append([s.as_dict() for s in net.yolo_stats()])
        loss = loss_sum / (self.chunk * self.local_chunks)
        layers = _average_stats(chunk_stats)
        if self.world_size > 1:
            stop, mean = rep.check_in(self.stop_requested(), {"loss": loss, "layers": layers},
                                      self.next_check_in_timeout)
            self.next_check_in_timeout = None
            self.agreed_stop = self.agreed_stop or stop
            loss, layers = mean["loss"], mean["layers"]
            for stats in layers:  # boxes are counted over all ranks
                if "count" in stats:
                    stats["count"] = int(round(stats["count"] * self.world_size))
        # Darknet's get_current_rate at update time: the step that completes iteration it uses the rate of
        # it + 1 (steps[k] <= it + 1), as net.seen // batch after the chunks of one process.
        lr = learning_rate(opts, iteration + 1, self.rng)
        rep.update(net, lr, opts["momentum"], opts["decay"], ipi)
        self.avg_loss = loss if self.avg_loss < 0 else self.avg_loss * 0.9 + loss * 0.1
        seconds = time.perf_counter() - t0
        return {"iteration": self.current_iteration, "loss": loss, "avg_loss": self.avg_loss, "lr": lr,
                "images": net.seen, "seconds": seconds, "data_seconds": data_seconds, "time": time.time(),
                "width": net.width, "layers": layers}

    def emit(self, record: dict) -> None:
        """The one place an iteration's metrics leave the trainer: every sink, then the progress line."""
        for sink in self.sinks:
            sink.iteration(record, self.opts["max_batches"])
        self.progress.update(record["iteration"], record["loss"], record["avg_loss"], record["lr"],
                             self.images_per_iteration / max(record["seconds"], 1e-9))

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        if self.is_writer:
            self.net.save(path)

    def map_due(self, iteration: int) -> bool:
        """Whether rank 0 evaluates mAP after `iteration` (every rank knows, to wait for it)."""
        if not self.valid_paths:
            return False
        if self.map_every:
            return iteration % self.map_every == 0
        return bool(self.map_eval and checkpoint_due(iteration))

    def map_timeout(self) -> float:
        """How long the other ranks wait for rank 0's mAP evaluation: the usual bound plus 5 s an image."""
        return self.replica.timeout + 5.0 * len(self.valid_paths or ())

    def checkpoint(self, iteration: int) -> None:
        """The checkpoints due after `iteration` (SPEC §3), mAP evaluations and the chart."""
        if self.map_due(iteration):
            self.next_check_in_timeout = self.map_timeout()
        if iteration % 100 == 0:
            self.save(self.backup_path)
        if checkpoint_due(iteration):
            path = self.run_dir / f"{self.base}_{iteration}.weights"
            self.save(path)
            self.result.checkpoints.append(path)
            if self.map_eval and not self.map_every and self.valid_paths:
                self.evaluate(path, iteration)
        if self.map_every and self.valid_paths and iteration % self.map_every == 0:
            self.save(self.backup_path)
            self.evaluate(self.backup_path, iteration)
        if self.is_writer and self.chart_every and iteration % self.chart_every == 0:
            _refresh_chart(self.run_dir)

    def evaluate(self, weights_path: Path, iteration) -> None:
        """mAP of the valid list with the checkpoint just written: logged, and rows added to map.txt."""
        if not self.is_writer:
            return
        from .detect import Detector  # noqa: PLC0415
        from .eval import map_txt_row  # noqa: PLC0415

        with Detector(self.cfg, weights_path, device=self.net.device) as detector:  # where training runs
            res = _evaluate(detector, self.valid_paths, self.num_classes, self.map_names, self.map_rules)
        for metric in ("iou", "giou"):
            row = map_txt_row(res, metric, iteration)
            for sink in self.sinks:
                sink.map_row(row)
        self.result.map_results[iteration] = res
        self.progress.message(f"iteration {iteration}: mAP@.50 {res['iou'].map_at(0.5):.4f} (IoU), "
                              f"{res['giou'].map_at(0.5):.4f} (GIoU); mAP@.50:.95 {res['iou'].mean:.4f}")

    def finish(self) -> TrainResult:
        """After the loop: a backup when stopped early (signal, time limit), else the final weights."""
        result = self.result
        result.iterations = self.current_iteration
        result.avg_loss = self.avg_loss
        self.progress.close()
        early = result.iterations < self.opts["max_batches"]
        reason = ((self.stop and self.stop.signal_name) or (self.time_limit and early and "time limit")
                  or (self.agreed_stop and early and "another rank's stop request"))
        if reason:
            self.save(self.backup_path)
            result.stopped_by_signal = reason
            if self.is_writer:  # the one who saved says so
                log.warning("stopped at iteration %d (%s); resume with %s", result.iterations,
                            result.stopped_by_signal, self.backup_path)
        else:
            final = self.run_dir / f"{self.base}_final.weights"
            self.save(final)
            self.save(self.backup_path)
            result.final_weights = final
            self.progress.message(f"saved {final} after {result.iterations} iterations "
                                  f"({time.perf_counter() - self.started:.0f} s, avg loss {self.avg_loss:.3f})")
            if self.map_eval and self.valid_paths:
                self.evaluate(final, FINAL_ID)
        if self.is_writer:
            _refresh_chart(self.run_dir)
        if self.world_size > 1:  # the others wait for rank 0's last files and mAP evaluations
            final_map = bool(result.final_weights is not None and self.map_eval and self.valid_paths)
            evaluating = final_map or self.next_check_in_timeout is not None  # the last checkpoint's too
            self.replica.barrier(2 * self.map_timeout() if evaluating else None)
        return result

    def shutdown(self) -> None:
        """Release everything, whatever state set-up or the loop reached: the progress line ends, every log is
        flushed and closed and the metrics sender stopped, the loader's workers end, the network is freed."""
        if self.progress is not None:
            self.progress.close()
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - one failing sink must not keep the others open
                log.warning("closing %s failed: %s", type(sink).__name__, exc)
        if self.loader is not None:
            self.loader.close()
        if self.net is not None:
            self.net.close()
        if self.replica is not None:
            self.replica.close()

    def run(self) -> TrainResult:
        try:
            self.setup()
            self.started = time.perf_counter()
            with _StopRequest() as self.stop:
                while not self.should_stop():
                    record = self.iteration()
                    self.emit(record)
                    self.checkpoint(record["iteration"])
            return self.finish()
        finally:
            self.shutdown()


def train(data: str | os.PathLike, cfg: str | os.PathLike, weights: str | os.PathLike | None = None, *,
          clear: bool = False, gpus=None, map_eval: bool = False, map_every: int | None = None,
          max_batches: int | None = None, threads: int | None = None, workers: int | None = None,
          log_url: str | None = None, log_token: str | None = None, seed: int | None = None,
          time_limit: float | None = None, progress_stream=None, chart_every: int = 200, device=None,
          dist_url: str | None = None, tensorboard: str | os.PathLike | bool | None = None,
          precision: str = "f32") -> TrainResult:
    """Train `cfg` on the `train` list of `data`, optionally starting from `weights` (resumes at the
    iteration stored in its `seen` unless `clear`). Without `weights` a run resumes from its folder's
    ``<base>.backup`` when there is one (``clear`` starts over; checkpoints that starting over would overwrite
    are kept aside). Returns where the results went.

    `time_limit` (seconds) stops early like a signal would (saving a backup); `max_batches` overrides the cfg.
    `gpus` ([0] or "0"): train on cuda:0 (a CudaError on a build or machine without it); several GPUs train
    as one process per GPU (the CLI's ``--gpus 0,1`` starts them). `device` ("cpu", "cuda:K") instead of
    `gpus`. Started by mpirun/srun/the CLI's launcher, the process is one rank of a data-parallel run
    (`dist_url`: the rendezvous when there is no MPI, else PYDARKNET_DIST_URL). `tensorboard`: a folder (True:
    ``<run folder>/tensorboard``) for TensorBoard event files of every iteration and the mAP rows.
    `precision` "bf16" (CPU with AMX or AVX512_BF16): the convolutions' matrix products multiply in bfloat16
    with float32 sums (mixed precision: weights, gradients, batch norm and the loss stay float32), about 1.5x
    (yolov3-tiny) to 1.8x (yolov3) the float32 speed on an AMX CPU; "f32" (default) is Darknet's arithmetic.
    """
    return Trainer(data, cfg, weights, clear=clear, gpus=gpus, map_eval=map_eval, map_every=map_every,
                   max_batches=max_batches, threads=threads, workers=workers, log_url=log_url,
                   log_token=log_token, seed=seed, time_limit=time_limit, progress_stream=progress_stream,
                   chart_every=chart_every, device=device, dist_url=dist_url, tensorboard=tensorboard,
                   precision=precision).run()


# ---- the run folder at start: interrupted writes, checkpoints that would be overwritten ---------------------

_WEIGHTS_HEADER_BYTES = 20  # 0.2.0 and a 64-bit seen: what Network.save writes


def _finish_temporaries(run_dir: Path, n_params: int) -> None:
    """A process killed while writing ``X.weights`` leaves ``X.weights.tmp``. A complete one (the exact size
    of this network's weights) is renamed into place, as the write would have done; any other is removed."""
    for tmp in sorted(run_dir.glob("*.tmp")):
        target = tmp.with_suffix("")
        if target.suffix not in (".weights", ".backup") or not tmp.is_file():
            continue
        complete = tmp.stat().st_size == _WEIGHTS_HEADER_BYTES + 4 * n_params
        if complete:
            with open(tmp, "rb") as f:
                complete = struct.unpack("<3i", f.read(12))[:2] == (0, 2)
        if complete:
            os.replace(tmp, target)
            log.warning("finished the interrupted write of %s", target)
        else:
            tmp.unlink()
            log.warning("removed %s, the remains of an interrupted weights write", tmp)


_CHECKPOINT_NAME = r"{base}(?:\.backup|_(\d+|final)\.weights)"


def _reconcile_run_folder(run_dir: Path, base: str, start: int, images_per_iteration: int) -> None:
    """Before training from iteration `start`: checkpoints of later iterations go aside (with a copy of the
    logs), and the logs keep only iterations <= `start`."""
    pattern = re.compile(_CHECKPOINT_NAME.format(base=re.escape(base)))
    later = []
    for path in sorted(run_dir.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match or not path.is_file():
            continue
        number = match.group(1)
        iteration = int(number) if number and number.isdigit() else _weights_iteration(path, images_per_iteration)
        if iteration is None or iteration > start:
            later.append(path)
    logs = [run_dir / name for name in (LOG_FILE, METRICS_FILE, MAP_FILE)]
    if later:
        aside = _new_folder(run_dir, time.strftime("replaced-%Y%m%d-%H%M%S"))
        for path in logs:
            if path.is_file():
                shutil.copy2(path, aside / path.name)
        for path in later:
            os.replace(path, aside / path.name)
        log.warning("starting at iteration %d: %s held later checkpoints (%s); they are kept in %s with a copy of "
                    "the logs", start, run_dir, ", ".join(p.name for p in later), aside)
    replaced_final = any(p.name == f"{base}_final.weights" for p in later)
    _cut_tail(logs[0], lambda line: (log_csv_iteration(line) or 0) <= start)
    _cut_tail(logs[1], lambda line: (metrics_iteration(line) or 0) <= start)
    _keep_lines(logs[2], lambda line: not _map_row_after(line, start, replaced_final))


def _new_folder(parent: Path, name: str) -> Path:
    """Create ``parent/name`` (``name-2``, ``name-3``, ... when taken) and return it."""
    for k in range(1, 1000):
        folder = parent / (name if k == 1 else f"{name}-{k}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: cannot find a free folder name for {name}")


def _map_row_after(line: str, start: int, replaced_final: bool) -> bool:
    try:
        _, ident, _ = parse_map_line(line)
    except ValueError:
        return False
    return replaced_final if ident == FINAL_ID else ident > start


def _lines_backwards(f, end: int, block_size: int = 1 << 20):
    """(offset, text) of the lines of binary file `f` in [0, end), last first; `end` is just after a newline."""
    pos, carry, first = end, b"", True
    while pos > 0:
        step = min(block_size, pos)
        pos -= step
        f.seek(pos)
        parts = (f.read(step) + carry).split(b"\n")
        if first:  # the block ends with the newline of the last line
            parts.pop()
            first = False
        offsets = [pos]
        for part in parts[:-1]:
            offsets.append(offsets[-1] + len(part) + 1)
        for k in range(len(parts) - 1, 0, -1):
            yield offsets[k], parts[k].decode("utf-8", "replace")
        carry = parts[0]  # may start before this block
    if end > 0:
        yield 0, carry.decode("utf-8", "replace")


def _cut_tail(path: Path, keep) -> None:
    """Truncate the log `path` after its last line for which `keep` is true, dropping a torn last line too. A
    log is appended in iteration order, so the lines to drop are at its end: only they are read."""
    try:
        f = open(path, "rb+")
    except FileNotFoundError:
        return
    with f:
        size = f.seek(0, os.SEEK_END)
        end = size
        while end > 0:  # the torn tail: after the last newline
            f.seek(max(0, end - 4096))
            chunk = f.read(end - max(0, end - 4096))
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = end - len(chunk) + newline + 1
                break
            end -= len(chunk)
        cut = end
        for offset, line in _lines_backwards(f, end):
            if keep(line):
                break
            cut = offset
        if cut < size:
            f.truncate(cut)


def _keep_lines(path: Path, keep) -> None:
    """Rewrite `path` (atomically) without the complete lines for which `keep` is false."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not line.endswith("\n") or keep(line.rstrip("\n"))]
    kept = [line for line in kept if line.endswith("\n")]  # a torn last line (killed mid-write) goes too
    if len(kept) == len(lines):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def _class_names(options: dict, data_path: Path) -> list[str] | None:
    names = options.get("names")
    return read_names(_resolve(names, data_path)) if names else None


def _evaluate(detector, paths, num_classes: int, class_names, rules):
    """mAP of the valid list by the rules voc_all_map.py uses (`rules` = voc_rules(paths): VOC XML with
    difficult flags when present, the 11-point rule for VOC2007), so rows that training and cron write to one
    map.txt are comparable."""
    from .eval import evaluate_list  # noqa: PLC0415

    truth, use_07 = rules
    return evaluate_list(detector, paths, num_classes, truth=truth, use_07_metric=use_07,
                         class_names=class_names[:num_classes] if class_names else None)


def _refresh_chart(run_dir: Path) -> None:
    try:
        from .board.chart import write_chart_png  # noqa: PLC0415

        write_chart_png(run_dir)
    except Exception as exc:  # a chart must never stop training
        log.debug("chart.png not refreshed: %s", exc)


def evaluate_map(data, cfg, weights, prefix=None):
    """`detector map`: mAP of WEIGHTS on the valid list of DATA with both metrics, printed as a table."""
    from .detect import Detector  # noqa: PLC0415
    from .eval import format_map_table  # noqa: PLC0415
    from .eval.listeval import voc_rules  # noqa: PLC0415

    data_path = Path(data)
    options = read_data_file(data_path)
    paths = read_list(_resolve(options["valid"], data_path))
    names = _class_names(options, data_path)
    with Detector(cfg, weights, names=names) as detector:
        res = _evaluate(detector, paths, detector.num_classes, names, voc_rules(paths))
    print(format_map_table(res))
    return res


def default_cfg_path() -> Path:
    """The built-in default cfg: cfg/ in a source checkout, or the copy shipped in the package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "cfg" / "pydarknet-default.cfg", here / "cfg" / "pydarknet-default.cfg"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("pydarknet-default.cfg not found (neither cfg/ nor the package's copy)")


def train_default(threads: int | None = None, workers: int | None = None, cache_dir=None,
                  progress_stream=None) -> dict:
    """The main job: generate the synthetic data set once, train the default cfg with the GIoU loss,
    evaluate the held-out split and print mAP at .50, .75 and .50:.95 with the IoU and GIoU metrics. The mAP
    also goes to the run's map.txt (as the final checkpoint's rows), where the board's mAP chart finds it."""
    from .detect import Detector  # noqa: PLC0415
    from .eval import evaluate_list, format_map_table, map_txt_row  # noqa: PLC0415
    from .synth import ensure_dataset  # noqa: PLC0415

    started = time.perf_counter()
    data_file = ensure_dataset(cache_dir)
    options = read_data_file(data_file)
    cfg = default_cfg_path()
    print(f"data set: {data_file} ({len(read_list(options['train']))} train / "
          f"{len(read_list(options['valid']))} held-out images)")
    print(f"network:  {cfg}")
    run_dir = Path(options["backup"]) / options.get("prefix", "")
    backup = run_dir / (cfg.stem + ".backup")
    final = run_dir / (cfg.stem + "_final.weights")
    if final.exists():
        print(f"already trained: {final} (delete {run_dir} to train again)")
        weights = final
    else:
        result = train(data_file, cfg, backup if backup.exists() else None, threads=threads, workers=workers,
                       seed=1, progress_stream=progress_stream)
        if result.final_weights is None:
            print(f"stopped early ({result.stopped_by_signal}); run again to resume from {backup}")
            return {}
        weights = result.final_weights
    names = read_names(options["names"])
    valid_paths = read_list(options["valid"])
    with Detector(cfg, weights, names=names) as detector:
        res = evaluate_list(detector, valid_paths, detector.num_classes)
    written = read_map_rows(run_dir / MAP_FILE)
    append_map_rows(run_dir / MAP_FILE, [map_txt_row(res, metric, FINAL_ID) for metric in ("iou", "giou")
                                         if (metric, FINAL_ID) not in written])
    print(f"\nheld-out mAP ({len(valid_paths)} images, {time.perf_counter() - started:.0f} s in all):")
    print(format_map_table(res))
    return {"weights": str(weights), "map": res}


_callable_module(__name__, "train")  # pydarknet.train(...) works even once this module is imported
