"""Training: ``pydarknet.train(data, cfg, weights=None, ...)`` and ``python -m pydarknet train``.

The loop follows Darknet's ``train_detector`` (SPEC §3): an iteration is ``batch`` images processed as
``subdivisions`` chunks whose gradients add up before one SGD step; the learning rate follows the cfg's
policy; checkpoints go to ``<backup>/<prefix>/``; logs are ``log.csv`` (the reference's format) and
``metrics.jsonl``. SIGINT/SIGTERM save ``<base>.backup`` and stop cleanly; every weights write is atomic.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random as _random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Augment, DataLoader, read_list
from . import _callable_module
from .datafile import read_data_file, read_names
from .errors import CudaError, DarknetArithmeticError, DarknetError
from .network import Network, set_threads

__all__ = ["train", "train_default", "learning_rate", "TrainResult", "checkpoint_due", "evaluate_map",
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
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _check_gpus(gpus) -> None:
    if gpus in (None, "", False):
        return
    raise CudaError(f"-gpus {gpus}: this pydarknet is a CPU build (no CUDA support compiled in); "
                    "train on the CPU by leaving out -gpus")


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


class _Logs:
    """log.csv (reference format), metrics.jsonl, and an optional remote board."""

    def __init__(self, run_dir: Path, log_url: str | None, log_token: str | None, run_name: str):
        self.run_dir = run_dir
        self.csv = open(run_dir / "log.csv", "a", buffering=1)
        self.jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self.sender = None
        if log_url:
            from .board.client import MetricsSender  # noqa: PLC0415

            self.sender = MetricsSender(log_url, log_token, run_name)

    def iteration(self, record: dict, max_batches: int) -> None:
        parts = [f"A{l['iou']:f},G{l['giou']:f},I{l['iou_loss']:f},C{l['cls_loss']:f},T{l['cost']:f},"
                 for l in record["layers"]]
        line = "".join(parts) + f"BATCH,{record['iteration']},{max_batches},{record['avg_loss']:f}"
        self.csv.write(line + "\n")
        self.jsonl.write(json.dumps(record) + "\n")
        if self.sender:
            self.sender.send_log(line)
            self.sender.send_metrics(record)

    def map_row(self, row: str) -> None:
        with open(self.run_dir / "map.txt", "a") as f:
            f.write(row + "\n")
        if self.sender:
            self.sender.send_map(row)

    def close(self) -> None:
        self.csv.close()
        self.jsonl.close()
        if self.sender:
            self.sender.close()


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


def train(data: str | os.PathLike, cfg: str | os.PathLike, weights: str | os.PathLike | None = None, *,
          clear: bool = False, gpus=None, map_eval: bool = False, map_every: int | None = None,
          max_batches: int | None = None, threads: int | None = None, workers: int | None = None,
          log_url: str | None = None, log_token: str | None = None, seed: int | None = None,
          time_limit: float | None = None, progress_stream=None, chart_every: int = 200) -> TrainResult:
    """Train `cfg` on the `train` list of `data`, optionally starting from `weights` (resumes at the
    iteration stored in its `seen` unless `clear`). Returns where the results went.

    `time_limit` (seconds) stops early like a signal would (saving a backup); `max_batches` overrides the cfg.
    """
    _check_gpus(gpus)
    data_path = Path(data)
    options = read_data_file(data_path)
    if "train" not in options:
        raise DarknetError(f"{data_path}: no 'train' list given (train = path/to/train.txt)")
    num_classes = int(options.get("classes", "0") or 0)
    train_paths = read_list(_resolve(options["train"], data_path))
    if not train_paths:
        raise DarknetError(f"{options['train']}: the train list is empty")
    backup = _resolve(options.get("backup", "backup"), data_path) if "backup" in options else Path("backup")
    prefix = options.get("prefix", "")
    run_dir = backup / prefix if prefix else backup
    run_dir.mkdir(parents=True, exist_ok=True)
    base = Path(cfg).stem
    if threads is not None:
        set_threads(threads)
    rng = _random.Random(seed)

    net = Network(cfg, batch=1)
    try:
        opts = net.options
        chunk = max(1, opts["batch"] // opts["subdivisions"])
        subdivisions = opts["subdivisions"]
        images_per_iteration = chunk * subdivisions
        net.set_batch(chunk)
        if weights is not None:
            net.load_weights(weights)
            log.info("loaded %s (%d layers, seen %d)", weights, net.layers_loaded, net.seen)
        if clear:
            net.seen = 0
        if max_batches is not None:
            opts["max_batches"] = max_batches
        yolo = net.yolo_layers
        if not yolo:
            raise DarknetError(f"{cfg}: no [yolo] layer: nothing to train against")
        if num_classes and yolo[0].classes != num_classes:
            raise DarknetError(f"{data_path}: classes={num_classes} but {cfg} has classes={yolo[0].classes}")
        num_classes = yolo[0].classes
        multiscale = yolo[-1].random
        sizes = multiscale_sizes(net.width) if multiscale else []
        aug = Augment.from_net_options(opts, jitter=_yolo_jitter(net))
        loader = DataLoader(train_paths, num_classes=num_classes, batch=chunk, net_w=net.width, net_h=net.height,
                            aug=aug, max_boxes=net.max_boxes, workers=2 if workers is None else workers,
                            seed=rng.randrange(2**31), bad_list=run_dir / "bad.list")
        logs = _Logs(run_dir, log_url, log_token, prefix or base)
        progress = _Progress(opts["max_batches"], progress_stream)
        result = TrainResult(iterations=net.seen // images_per_iteration, final_weights=None, run_dir=run_dir,
                             avg_loss=-1.0)
        valid_paths = map_names = map_rules = None
        if map_eval or map_every:
            if "valid" not in options:
                raise DarknetError(f"{data_path}: --map needs a 'valid' list")
            valid_paths = read_list(_resolve(options["valid"], data_path))
            map_names = _class_names(options, data_path)
            from .eval.listeval import voc_rules  # noqa: PLC0415

            map_rules = voc_rules(valid_paths)  # once: it looks for VOC XML beside every image
        log.info("training %s: %d images, %d per iteration (%d x %d), up to iteration %d, %s",
                 base, len(train_paths), images_per_iteration, subdivisions, chunk, opts["max_batches"], run_dir)
        started = time.perf_counter()
        avg_loss = -1.0
        count = 0
        with _StopRequest() as stop, loader:
            try:
                while True:
                    iteration = net.seen // images_per_iteration
                    if iteration >= opts["max_batches"]:
                        break
                    if stop.signal_name or (time_limit and time.perf_counter() - started > time_limit):
                        break
                    if sizes and count % 10 == 0:
                        dim = rng.choice(sizes)
                        if iteration + 200 > opts["max_batches"]:
                            dim = sizes[-1]
                        if dim != net.width:
                            net.resize(dim, dim)
                            loader.set_size(dim, dim)
                    count += 1
                    t0 = time.perf_counter()
                    data_seconds = 0.0
                    loss_sum = 0.0
                    chunk_stats = []
                    for _ in range(subdivisions):
                        d0 = time.perf_counter()
                        x, truth = loader.next_batch()
                        data_seconds += time.perf_counter() - d0
                        try:
                            loss_sum += net.train_chunk(x, truth)
                        except DarknetArithmeticError as exc:
                            backup_path = run_dir / (base + ".backup")
                            kept = (f"the last good checkpoint is {backup_path}" if backup_path.exists()
                                    else "no checkpoint had been written yet")
                            raise TrainingDiverged(
                                f"training diverged at iteration {iteration}: {exc}; {kept} "
                                f"(lower learning_rate or raise burn_in)"
                            ) from exc
                        chunk_stats.append([s.as_dict() for s in net.yolo_stats()])
                    # Darknet's get_current_rate at update time: the chunks have already advanced `seen`,
                    # so the step that completes iteration it uses the rate of it (steps[k] <= it).
                    lr = learning_rate(opts, net.seen // images_per_iteration, rng)
                    net.update(lr, opts["momentum"], opts["decay"], images_per_iteration)
                    iteration = net.seen // images_per_iteration
                    loss = loss_sum / images_per_iteration
                    avg_loss = loss if avg_loss < 0 else avg_loss * 0.9 + loss * 0.1
                    seconds = time.perf_counter() - t0
                    record = {"iteration": iteration, "loss": loss, "avg_loss": avg_loss, "lr": lr,
                              "images": net.seen, "seconds": seconds, "data_seconds": data_seconds,
                              "time": time.time(), "width": net.width, "layers": _average_stats(chunk_stats)}
                    logs.iteration(record, opts["max_batches"])
                    progress.update(iteration, loss, avg_loss, lr, images_per_iteration / max(seconds, 1e-9))
                    if iteration % 100 == 0:
                        net.save(run_dir / f"{base}.backup")
                    if checkpoint_due(iteration):
                        path = run_dir / f"{base}_{iteration}.weights"
                        net.save(path)
                        result.checkpoints.append(path)
                        if map_eval and not map_every and valid_paths:
                            _map_at(cfg, path, valid_paths, num_classes, map_names, map_rules, iteration, logs, progress, result)
                    if map_every and valid_paths and iteration % map_every == 0:
                        path = run_dir / f"{base}.backup"
                        net.save(path)
                        _map_at(cfg, path, valid_paths, num_classes, map_names, map_rules, iteration, logs, progress, result)
                    if chart_every and iteration % chart_every == 0:
                        _refresh_chart(run_dir)
            finally:
                progress.close()
        result.iterations = net.seen // images_per_iteration
        result.avg_loss = avg_loss
        if stop.signal_name or (time_limit and result.iterations < opts["max_batches"]):
            net.save(run_dir / f"{base}.backup")
            result.stopped_by_signal = stop.signal_name or "time limit"
            log.warning("stopped at iteration %d (%s); resume with %s", result.iterations, result.stopped_by_signal,
                        run_dir / f"{base}.backup")
        else:
            final = run_dir / f"{base}_final.weights"
            net.save(final)
            net.save(run_dir / f"{base}.backup")
            result.final_weights = final
            progress.message(f"saved {final} after {result.iterations} iterations "
                             f"({time.perf_counter() - started:.0f} s, avg loss {avg_loss:.3f})")
            if map_eval and valid_paths:
                _map_at(cfg, final, valid_paths, num_classes, map_names, map_rules, "final", logs, progress, result)
        _refresh_chart(run_dir)
        logs.close()
        return result
    finally:
        net.close()


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


def _map_at(cfg, weights_path, valid_paths, num_classes, class_names, rules, iteration, logs, progress,
            result) -> None:
    """Evaluate the valid list with the checkpoint just written; log it and add rows to map.txt."""
    from .detect import Detector  # noqa: PLC0415
    from .eval import map_txt_row  # noqa: PLC0415

    with Detector(cfg, weights_path) as detector:
        res = _evaluate(detector, valid_paths, num_classes, class_names, rules)
    for metric in ("iou", "giou"):
        logs.map_row(map_txt_row(res, metric, iteration))
    result.map_results[iteration] = res
    progress.message(f"iteration {iteration}: mAP@.50 {res['iou'].map_at(0.5):.4f} (IoU), "
                     f"{res['giou'].map_at(0.5):.4f} (GIoU); mAP@.50:.95 {res['iou'].mean:.4f}")


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
    evaluate the held-out split and print mAP at .50, .75 and .50:.95 with the IoU and GIoU metrics."""
    from .detect import Detector  # noqa: PLC0415
    from .eval import evaluate_list, format_map_table  # noqa: PLC0415
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
    print(f"\nheld-out mAP ({len(valid_paths)} images, {time.perf_counter() - started:.0f} s in all):")
    print(format_map_table(res))
    return {"weights": str(weights), "map": res}


_callable_module(__name__, "train")  # pydarknet.train(...) works even once this module is imported
