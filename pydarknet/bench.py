"""``python -m pydarknet bench``: inference time against OpenCV DNN in the same run, and training throughput.

Inference: batch-1 forward of each model at 416x416 with pydarknet (``Network.forward``) and with OpenCV's
DNN module (``cv2.dnn.readNetFromDarknet``, the same .cfg and .weights files), both on the same number of
threads. After warm-up runs the two engines are timed alternately (A B, B A, A B, ...) so that whatever else
the machine is doing slows both alike; the figures are medians. A sanity line gives the largest difference
between the two engines' [yolo] outputs on the same input.

Training (``--train``): images/s of the compute (``Network.train_chunk`` + ``Network.update`` on batches
prepared beforehand) and, measured apart, of data loading (``DataLoader`` with the cfg's augmentation over
generated images), for yolov3-tiny at 416 with batch 8 and for the built-in default cfg. yolov3-tiny trains in
each precision the CPU offers and, with oneDNN, also in float32 on im2col + GEMM (``conv_algo="gemm"``, the
training path before oneDNN's convolutions), their iterations interleaved; each row names the engines its
convolutions ran on. With the peers and PyTorch installed, PyTorch trains the same network (bench_torch.py:
eager, NCHW and channels-last) in the same iterations, and each engine's training is reported beside its own
inference forward.

Validation on real JPEGs (``--valid``): images/s of the whole ``valid`` path (JPEG decoding, letterbox,
forward, decoding the heads, NMS, writing coco_results.json) for yolov3-tiny over real photos (default: the
COCO slice in ../shared/realdata), against the same work done with OpenCV: ``cv2.imread``, letterbox with
``cv2.resize``, the DNN module's forward, box decoding and ``cv2.dnn.NMSBoxes`` per class. The two passes
alternate; each engine's figure is its best pass.

``run_benchmarks`` prints a table and returns the figures as a dict (also written as JSON with ``json_path``).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

import numpy as np

__all__ = ["run_benchmarks", "ISSUE_FIGURES"]

ROOT = Path(__file__).resolve().parents[1]

# Figures quoted by the issues, printed beside ours for comparison.
ISSUE_FIGURES = {
    "inference_opencv_s": {"yolov3-tiny": 0.027, "yolov3": 0.33},  # OpenCV DNN on the project machine
    "inference_ratio_minimum": 1.5,  # pydarknet yolov3 time / OpenCV DNN time, same run
    "inference_ratio_goal": 0.8,
    "train_s_per_image": {  # training yolov3-tiny at 416
        "reference engine (GIoU fork, batch 1)": 0.78,
        "original Darknet": 0.75,
        "AlexeyAB's fork (batch 2)": 0.49,
    },
    "train_s_per_image_minimum": 0.49,  # must be below
    "train_s_per_image_goal": 0.25,  # at most
    # pydarknet when the CPU-speed issue was filed (float32, 416, 2 threads): inference s per call, and
    # fine-tuning yolov3-tiny on the real images, s per image
    "pydarknet_before_inference_s": {"yolov3-tiny batch 1": [0.065, 0.074], "yolov3-tiny batch 4": [0.23, 0.23],
                                     "yolov3 batch 1": [0.38, 0.42]},
    "pydarknet_before_realdata_train_s_per_image": 0.17,
}

# Prefix of the "what ran" column when pydarknet ran the whole network as one oneDNN network (net_onednn.c).
ONEDNN_NETWORK = "one oneDNN network: "


# ---------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------

def reference_path() -> Path:
    """$PYDARKNET_REFERENCE, else ../shared/reference next to the project root (as tests/conftest.py)."""
    env = os.environ.get("PYDARKNET_REFERENCE")
    return Path(env) if env else ROOT.parent / "shared" / "reference"


def _cfg_dir() -> Path:
    from .train import default_cfg_path  # noqa: PLC0415

    return default_cfg_path().parent


@dataclass
class _Model:
    name: str
    cfg: Path
    weights: Path
    weights_kind: str  # "reference" or "random"
    image: Path | None  # a real image to feed, when real weights are used


def _sized_cfg(source: Path, size: int, folder: Path, name: str) -> Path:
    """A copy of `source` whose [net] width and height are `size` (OpenCV reads the size from the cfg)."""
    text = source.read_text()
    text = re.sub(r"(?im)^\s*width\s*=.*$", f"width={size}", text, count=1)
    text = re.sub(r"(?im)^\s*height\s*=.*$", f"height={size}", text, count=1)
    target = folder / f"{name}-{size}.cfg"
    target.write_text(text)
    return target


def _random_weights(cfg: Path, folder: Path, name: str) -> Path:
    """Darknet's initialisation (He-style uniform), saved as a .weights file both engines read."""
    from .network import Network  # noqa: PLC0415

    path = folder / f"{name}-random.weights"
    with Network(cfg) as net:
        net.save(path)
    return path


def _resolve_model(name: str, size: int, folder: Path) -> _Model:
    """yolov3-tiny: the reference weights when the reference folder exists, else random; yolov3 and any other
    cfg (a name in cfg/ or a path): random weights written to `folder`."""
    ref = reference_path()
    if not (ref / "yolov3-tiny.weights").is_file():  # where scripts/get_pretrained.sh puts the weights
        ref = ROOT / "tests" / "data"
    if name == "yolov3-tiny" and (ref / "yolov3-tiny.weights").is_file() and (ref / "yolov3-tiny.cfg").is_file():
        cfg = _sized_cfg(ref / "yolov3-tiny.cfg", size, folder, name)
        image = next((p for p in (ref / "images" / n for n in ("dog.jpg", "horses.jpg")) if p.is_file()), None)
        return _Model(name, cfg, ref / "yolov3-tiny.weights", "reference", image)
    source = Path(name)
    if not (source.suffix == ".cfg" and source.is_file()):
        source = _cfg_dir() / f"{name}.cfg"
    if not source.is_file():
        known = sorted(p.stem for p in _cfg_dir().glob("*.cfg"))
        raise ValueError(f"unknown model {name!r}: give a .cfg path or one of {', '.join(known)}")
    label = source.stem
    cfg = _sized_cfg(source, size, folder, label)
    return _Model(name, cfg, _random_weights(cfg, folder, label), "random", None)


# ---------------------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------------------

def _logistic_heads(raw: np.ndarray, n_anchors: int, classes: int) -> np.ndarray:
    """Darknet's [yolo] activation on a raw head: logistic on x, y, objectness and the class scores."""
    x = raw.astype(np.float64).reshape(raw.shape[0], n_anchors, 5 + classes, *raw.shape[2:]).copy()
    entries = [0, 1] + list(range(4, 5 + classes))
    x[:, :, entries] = 1.0 / (1.0 + np.exp(-x[:, :, entries]))
    return x.reshape(raw.shape)


def _output_difference(ocv, net, x: np.ndarray, ours: list[np.ndarray]) -> dict:
    """Largest |pydarknet - OpenCV| over the [yolo] outputs. OpenCV post-processes its [yolo] layers into
    detections, so its side is the raw conv feeding each [yolo] layer (named conv_<index>) with Darknet's
    activation applied here."""
    names = list(ocv.getLayerNames())
    wanted = [f"conv_{layer.index - 1}" for layer in net.yolo_layers]
    if any(w not in names for w in wanted):
        return {"max_abs_diff": None, "max_abs_output": None, "note": "OpenCV names its layers differently"}
    ocv.setInput(x)
    raws = [np.asarray(r, np.float64) for r in ocv.forward(wanted)]
    theirs = [_logistic_heads(r, l.n_anchors, l.classes) for r, l in zip(raws, net.yolo_layers)]
    diff = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in zip(ours, theirs))
    # The raw heads (before the [yolo] activation) too: random weights give small raw values, which the
    # logistic squashes towards 0.5; their spread says how much signal the comparison carries.
    our_raws = [net.layer_output(l.index - 1, x.shape[0]).astype(np.float64) for l in net.yolo_layers]
    raw_diff = max(float(np.abs(a - b).max()) for a, b in zip(our_raws, raws))
    return {"max_abs_diff": diff, "max_abs_output": max(float(np.abs(b).max()) for b in theirs),
            "raw_max_abs_diff": raw_diff, "raw_std": min(float(r.std()) for r in raws)}


def sgemm_peak(threads: int, n: int = 2048, runs: int = 5) -> float:
    """The machine's float32 GEMM rate (GFLOP/s): the best of `runs` n x n x n products by numpy's BLAS on
    `threads` threads, in a fresh process (the BLAS reads its thread count at start-up)."""
    import subprocess  # noqa: PLC0415

    code = ("import numpy as np, time\n"
            f"a = np.random.default_rng(0).random(({n}, {n}), dtype=np.float32); b = a.copy(); a @ b\n"
            "best = float('inf')\n"
            f"for _ in range({runs}):\n"
            "    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)\n"
            f"print(2 * {n}**3 / best / 1e9)\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"SGEMM peak measurement failed: {result.stderr.strip()[-300:]}")
    return float(result.stdout.strip().splitlines()[-1])


@dataclass
class _Engine:
    name: str
    run: object          # callable: one timed forward of the batch
    path: str = ""       # what ran (pydarknet: the convolution engines of its last forward)


def _onnx_file(net, batch: int, folder: Path) -> tuple[Path | None, str]:
    """The project's own ONNX export of `net` at `batch`, or None and why not."""
    try:
        from .onnx_export import export_onnx  # noqa: PLC0415
    except ImportError:
        return None, "this pydarknet has no ONNX exporter (pydarknet.onnx_export)"
    path = folder / f"{Path(str(net.cfg_path)).stem}-b{batch}.onnx"
    try:
        return export_onnx(net, path, batch=batch), ""
    except Exception as exc:  # the onnx package missing, or a layer the exporter does not take
        return None, f"ONNX export failed: {exc}"


def _peer_engines(onnx_path: Path | None, why: str, x: np.ndarray, threads: int) -> tuple[list, dict]:
    """ONNX Runtime (float32) and OpenVINO (float32, and its default precision: bf16 on AMX CPUs) on the
    exported file; engines that cannot run are returned with the reason."""
    engines, skipped = [], {}
    names = ("onnxruntime", "openvino-f32", "openvino-default")
    if onnx_path is None:
        return [], {n: why for n in names}
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        skipped["onnxruntime"] = "onnxruntime is not installed (pip install onnxruntime)"
    else:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # its pool would otherwise spin on the cores after each run, slowing whichever engine runs next
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        engines.append(_Engine("onnxruntime", lambda: session.run(None, feed), f"onnxruntime {ort.__version__}"))
    try:
        import openvino as ov  # noqa: PLC0415
    except ImportError:
        skipped["openvino-f32"] = skipped["openvino-default"] = "openvino is not installed (pip install openvino)"
    else:
        core = ov.Core()
        model = core.read_model(str(onnx_path))
        for name, config in (("openvino-f32", {"INFERENCE_PRECISION_HINT": "f32"}), ("openvino-default", {})):
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                         "PERFORMANCE_HINT": "LATENCY", **config})
            request = compiled.create_infer_request()
            precision = compiled.get_property("INFERENCE_PRECISION_HINT")
            engines.append(_Engine(name, lambda r=request: r.infer({0: x}),
                                   f"openvino {ov.__version__}, {str(precision).lower()}"))
    return engines, skipped


def _round_orders(n: int, rounds: int, seed: int = 0) -> list[list[int]]:
    """The engines' order in each timed round: shuffled (seeded), never the same engine twice in a row.

    An engine's time depends on what ran just before it (caches, the other engine's threads still spinning, the
    cores' clocks): measured here, pydarknet bf16 right after pydarknet float32 took 1.05x OpenVINO bf16's time
    when OpenVINO's followed OpenVINO float32, and 0.80-0.85x in the other pairing. A fixed order (or one reversed
    every other round, which runs the first and last engines twice in a row) gives each engine the same
    neighbours every time; shuffling spreads them."""
    rng = np.random.default_rng(seed)
    orders: list[list[int]] = []
    for _ in range(rounds):
        order = [int(k) for k in rng.permutation(n)]
        if orders and n > 1 and order[0] == orders[-1][-1]:
            order[0], order[1] = order[1], order[0]
        orders.append(order)
    return orders


# The goals compared with OpenVINO: (pydarknet engine, OpenVINO engine).
GOAL_PAIRS = (("pydarknet", "openvino-f32"), ("pydarknet-bf16", "openvino-default"))


def ratio_interval(ours: Sequence[float], theirs: Sequence[float], level: float = 0.95, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float]:
    """A bootstrap interval of median(ours) / median(theirs), the timed rounds resampled whole (both engines'
    times of a round stay together, as they were taken within a second of each other). On the project's shared
    machine the 95% interval of 12-20 rounds spanned +-5-15%. It covers the variation within one run only: the
    machine's state also drifts between runs (yolov3 bf16 at batch 1 gave 1.13, interval 1.02-1.42, in one run
    and 0.98, interval 0.89-1.05, in another two hours later)."""
    a, b = np.asarray(ours, float), np.asarray(theirs, float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need the same number (>= 1) of rounds for both engines, got {a.size} and {b.size}")
    picks = np.random.default_rng(seed).integers(0, a.size, (resamples, a.size))
    ratios = np.median(a[picks], axis=1) / np.median(b[picks], axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


def _goal_verdict(ratio: float, low: float, high: float) -> str:
    verdict = "met" if ratio <= 1 else "NOT met"
    if low <= 1 < high:
        verdict += "; the interval holds 1: this run cannot tell"
    return verdict


def _bench_inference(model: _Model, repeat: int, warmup: int, threads: int, batch: int = 1,
                     peers: bool = True) -> dict:
    import cv2  # noqa: PLC0415

    from .network import Network, bf16_supported  # noqa: PLC0415

    engines: list[_Engine] = []
    skipped: dict[str, str] = {}
    nets = []
    with tempfile.TemporaryDirectory(prefix="pydarknet-onnx-") as folder, contextlib.ExitStack() as stack:
        net = stack.enter_context(Network(model.cfg, model.weights, batch=batch))
        nets.append(("pydarknet", net))
        if model.image is not None:
            from .image import letterbox, read_image  # noqa: PLC0415

            x = letterbox(read_image(model.image), net.width, net.height)[None]
            x = np.repeat(x, batch, axis=0)
        else:
            x = np.random.default_rng(7).uniform(0, 1, (batch, net.channels, net.height, net.width))
        x = np.ascontiguousarray(x, np.float32)
        engines.append(_Engine("pydarknet", lambda: net.forward(x)))
        # the hand-written path that AUTO ran before oneDNN (the "before" of this run)
        fused = stack.enter_context(Network(model.cfg, model.weights, batch=batch, conv_algo="fused"))
        nets.append(("pydarknet-fused", fused))
        engines.append(_Engine("pydarknet-fused", lambda: fused.forward(x)))
        ok, isa = bf16_supported()
        if ok:
            bf16 = stack.enter_context(Network(model.cfg, model.weights, batch=batch, precision="bf16"))
            nets.append(("pydarknet-bf16", bf16))
            engines.append(_Engine("pydarknet-bf16", lambda: bf16.forward(x)))
        else:
            skipped["pydarknet-bf16"] = f"no bf16 here (oneDNN's instruction set: {isa})"

        ocv = cv2.dnn.readNetFromDarknet(str(model.cfg), str(model.weights))
        ocv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        ocv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        out_names = list(ocv.getUnconnectedOutLayersNames())

        def run_opencv():
            ocv.setInput(x)
            ocv.forward(out_names)

        engines.append(_Engine("opencv", run_opencv, f"OpenCV DNN {cv2.__version__}"))
        if peers:
            onnx_path, why = _onnx_file(net, batch, Path(folder))
            more, why_not = _peer_engines(onnx_path, why, x, threads)
            engines += more
            skipped.update(why_not)
        else:
            skipped.update({n: "not asked for (--no-peers)" for n in ("onnxruntime", "openvino-f32",
                                                                     "openvino-default")})

        def timed(engine: _Engine) -> float:
            start = time.perf_counter()
            engine.run()
            return time.perf_counter() - start

        for _ in range(warmup):
            for engine in engines:
                timed(engine)
        runs: dict[str, list[float]] = {e.name: [] for e in engines}
        for order in _round_orders(len(engines), repeat):
            for k in order:
                runs[engines[k].name].append(timed(engines[k]))
        for name, n in nets:
            counts = n.conv_engines()
            path = ", ".join(f"{k} x{v}" for k, v in counts.items())
            if n.inference_path() == "onednn-network":
                path = f"{ONEDNN_NETWORK}{path}"
            next(e for e in engines if e.name == name).path = path
        outputs = net.forward(x[:1]) if batch == 1 else None
        difference = (_output_difference(ocv, net, x[:1], outputs) if outputs is not None else
                      {"max_abs_diff": None, "max_abs_output": None, "note": "compared at batch 1 only"})
        bflops, shape = net.bflops, f"{net.width}x{net.height}"
    medians = {name: statistics.median(v) for name, v in runs.items()}
    ours = medians["pydarknet"]
    return {
        "model": model.name, "input": shape, "batch": batch, "weights": model.weights_kind,
        "threads": threads, "bflops": bflops,
        "pydarknet_s": ours, "opencv_s": medians["opencv"], "ratio": ours / medians["opencv"],
        "pydarknet_gflops_per_s": bflops * batch / ours, "opencv_gflops_per_s": bflops * batch / medians["opencv"],
        "pydarknet_runs_s": runs["pydarknet"], "opencv_runs_s": runs["opencv"],
        "engines": {e.name: {"s": medians[e.name], "runs_s": runs[e.name], "path": e.path,
                             "gflops_per_s": bflops * batch / medians[e.name],
                             "time_vs_pydarknet": medians[e.name] / ours} for e in engines},
        "goals": [{"ours": a, "theirs": b, "ratio": medians[a] / medians[b],
                   "interval_95": ratio_interval(runs[a], runs[b])}
                  for a, b in GOAL_PAIRS if a in runs and b in runs],
        "skipped": skipped, **difference,
    }


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------

def _loader_rate(paths: Sequence[str], net, batch: int, aug, workers: int, batches: int,
                 keep: int = 0) -> tuple[float, list]:
    """images/s of DataLoader after one warm-up batch (worker start-up not counted); also returns copies of
    the first `keep` timed batches."""
    from .data import DataLoader  # noqa: PLC0415

    kept = []
    with DataLoader(paths, num_classes=net.yolo_layers[0].classes, batch=batch, net_w=net.width,
                    net_h=net.height, aug=aug, max_boxes=net.max_boxes, workers=workers, seed=1) as loader:
        loader.next_batch()
        seconds = 0.0
        for i in range(batches):
            start = time.perf_counter()
            x, truth = loader.next_batch()
            seconds += time.perf_counter() - start
            if i < keep:
                kept.append((x.copy(), truth.copy()))
    return batch * batches / seconds, kept


def _training_variants(precisions: Sequence[str]) -> list[tuple[str, str, str]]:
    """(label, precision, conv_algo) of each training run: the default path in each precision and, where the
    library has oneDNN, float32 on im2col + OpenBLAS GEMM (conv_algo "gemm": the training path before oneDNN
    took the convolutions), so that one run shows both."""
    from .network import onednn_version  # noqa: PLC0415

    variants = [(p, p, "auto") for p in precisions]
    if onednn_version() and "f32" in precisions:
        variants.append(("f32 gemm", "f32", "gemm"))
    return variants


def _engines_text(engines: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(engines.items()))


def _bench_training(name: str, cfg: Path, weights: Path | None, weights_kind: str, batch: int | None,
                    paths: Sequence[str], iterations: int, loader_workers: Sequence[int],
                    variants: Sequence[tuple[str, str, str]] = (("f32", "f32", "auto"),),
                    torch_peers: Sequence[bool] = (), threads: int = 2) -> list[dict]:
    """One row per variant (label, precision, conv_algo); their iterations interleaved on the same prepared
    batches. Each default-path variant (conv_algo "auto") also times an inference forward of the same batch, on
    a second network of its precision, within each iteration: training beside inference in the same moments
    of this machine's drifting speed. torch_peers: PyTorch peers (bench_torch.TorchPeer; True = channels-last)
    stepped in the same iterations, a row each."""
    from .data import Augment  # noqa: PLC0415
    from .network import Network  # noqa: PLC0415
    from .train import learning_rate  # noqa: PLC0415

    nets = {label: Network(cfg, weights, precision=p, conv_algo=algo) for label, p, algo in variants}
    inference_nets = {}
    peers = {}
    try:
        inference_nets = {label: Network(cfg, weights, precision=p) for label, p, algo in variants if algo == "auto"}
        net = nets[variants[0][0]]
        opts = net.options
        if batch is None:  # the cfg's own batch and subdivisions
            chunk = max(1, opts["batch"] // opts["subdivisions"])
            subdivisions = opts["subdivisions"]
        else:
            chunk, subdivisions = batch, 1
        per_iteration = chunk * subdivisions
        for n in [*nets.values(), *inference_nets.values()]:
            n.set_batch(chunk)
        if torch_peers:
            from .bench_torch import TorchPeer  # noqa: PLC0415

            peers = {("pytorch-cl" if cl else "pytorch"): TorchPeer(net, threads, channels_last=cl)
                     for cl in torch_peers}
        jitter = net.yolo_layers[-1].jitter
        aug = Augment.from_net_options(opts, jitter=min(jitter, 0.49))
        # Data loading, measured apart; the in-process batches (workers=0) are kept to train on.
        need = subdivisions * (iterations + 1)
        rates = {}
        prepared: list = []
        for workers in loader_workers:
            batches = max(need, 4) if workers == 0 else max(need, 2 * max(workers, 1) + 2)
            rate, kept = _loader_rate(paths, net, chunk, aug, workers, batches, keep=need if not prepared else 0)
            rates[workers] = rate
            prepared = prepared or kept
        if not prepared:
            _, prepared = _loader_rate(paths, net, chunk, aug, 0, need, keep=need)
        # Compute: train_chunk + update on the prepared batches; one warm-up iteration.
        times: dict[str, list[float]] = {p: [] for p in nets}
        inference_times: dict[str, list[float]] = {p: [] for p in inference_nets}
        for it in range(iterations + 1):
            for p, n in nets.items():
                start = time.perf_counter()
                for k in range(subdivisions):
                    x, truth = prepared[it * subdivisions + k]
                    n.train_chunk(x, truth)
                lr = learning_rate(opts, n.seen // per_iteration)
                n.update(lr, opts["momentum"], opts["decay"], per_iteration)
                if it > 0:
                    times[p].append(time.perf_counter() - start)
                if p in inference_nets:
                    start = time.perf_counter()
                    for k in range(subdivisions):
                        inference_nets[p].forward(prepared[it * subdivisions + k][0])
                    if it > 0:
                        inference_times[p].append(time.perf_counter() - start)
            for label, peer in peers.items():
                seconds = sum(peer.train_step(prepared[it * subdivisions + k][0]) for k in range(subdivisions))
                inference = sum(peer.inference(prepared[it * subdivisions + k][0]) for k in range(subdivisions))
                if it > 0:
                    times.setdefault(label, []).append(seconds)
                    inference_times.setdefault(label, []).append(inference)
        bflops = net.bflops  # per image, forward at the training size
        shape = f"{net.width}x{net.height}"
        engines = {label: n.conv_engines() for label, n in nets.items()}
    finally:
        for n in [*nets.values(), *inference_nets.values()]:
            n.close()
    results = []
    for label, p, algo in variants:
        seconds = statistics.median(times[label])
        result = {
            "model": name, "variant": label, "precision": p, "conv_algo": algo, "engines": engines[label],
            "input": shape, "batch": per_iteration, "subdivisions": subdivisions,
            "weights": weights_kind, "bflops": bflops, "iterations": iterations,
            "compute_s_per_iteration": seconds, "compute_s_per_image": seconds / per_iteration,
            "compute_images_per_s": per_iteration / seconds, "compute_iteration_runs_s": times[label],
            "data_images_per_s": {str(w): r for w, r in rates.items()},
        }
        if label in inference_times:
            result["inference_s_per_image"] = statistics.median(inference_times[label]) / per_iteration
            result["inference_iteration_runs_s"] = inference_times[label]
        if 0 in rates:
            result["data_s_per_image_one_process"] = 1.0 / rates[0]
            # Loading in the training process itself (workers=0) adds its time to the compute.
            result["serial_s_per_image"] = result["compute_s_per_image"] + 1.0 / rates[0]
        results.append(result)
    for label, peer in peers.items():
        seconds = statistics.median(times[label])
        results.append({
            "model": name, "variant": label, "peer": True, "precision": "f32", "conv_algo": "", "input": shape,
            "batch": per_iteration, "subdivisions": subdivisions, "weights": weights_kind, "bflops": bflops,
            "iterations": iterations, "engines": {f"PyTorch {peer.version}" + (" channels-last" if peer.channels_last
                                                                               else ""): 1},
            "compute_s_per_iteration": seconds, "compute_s_per_image": seconds / per_iteration,
            "compute_images_per_s": per_iteration / seconds, "compute_iteration_runs_s": times[label],
            "inference_s_per_image": statistics.median(inference_times[label]) / per_iteration,
            "inference_iteration_runs_s": inference_times[label],
            "loss": "half the sum of squares of the raw heads (stands in for the YOLO loss)",
        })
    return results


def _training_precisions(say) -> tuple[str, ...]:
    from .network import bf16_supported  # noqa: PLC0415

    ok, isa = bf16_supported()
    if not ok:
        say(f"training in bf16 skipped: it needs oneDNN and AMX or AVX512_BF16 (this build/CPU: {isa})")
    return ("f32", "bf16") if ok else ("f32",)


def _torch_peers(say) -> tuple[bool, ...]:
    """The PyTorch training peers (False: its default NCHW tensors, True: channels-last), none when PyTorch is
    not installed."""
    from .bench_torch import import_torch  # noqa: PLC0415

    if import_torch() is None:
        say("training peer PyTorch skipped: not installed (pip install torch, its CPU build)")
        return ()
    return (False, True)


def _training_runs(iterations: int, loader_workers: Sequence[int], say, precisions: Sequence[str],
                   torch_peers: Sequence[bool] = (), threads: int = 2) -> list[dict]:
    from .data import read_list  # noqa: PLC0415
    from .datafile import read_data_file  # noqa: PLC0415
    from .synth import ensure_dataset  # noqa: PLC0415
    from .train import default_cfg_path  # noqa: PLC0415

    results = []
    with tempfile.TemporaryDirectory(prefix="pydarknet-bench-") as folder:
        folder = Path(folder)
        say("generating synthetic training images ...")
        data_file = ensure_dataset(folder, n_train=128, n_valid=1)
        paths = read_list(read_data_file(data_file)["train"])
        tiny = _resolve_model("yolov3-tiny", 416, folder)
        variants = _training_variants(precisions)
        labels = [v[0] for v in variants] + [("pytorch-cl" if cl else "pytorch") for cl in torch_peers]
        say(f"training yolov3-tiny 416, batch 8 ({tiny.weights_kind} weights; {', '.join(labels)}) ...")
        results += _bench_training("yolov3-tiny", tiny.cfg, tiny.weights, tiny.weights_kind, 8, paths,
                                   iterations, loader_workers, variants, torch_peers, threads)
        cfg = default_cfg_path()
        say(f"training {cfg.stem} (its cfg's batch and size) ...")
        results += _bench_training(cfg.stem, cfg, None, "random", None, paths, iterations, loader_workers)
    return results


def realdata_path() -> Path:
    """../shared/realdata/coco-tiny (50 COCO 2017 train and val images with their annotations)."""
    return reference_path().parent / "realdata" / "coco-tiny"


def _coco_train_set(folder: Path) -> list[str] | None:
    """The real train images linked under folder/images with Darknet labels under folder/labels (crowd
    regions left out, boxes clipped to the image); None when the data is absent."""
    from .eval.boxes import COCO_CATEGORY_IDS  # noqa: PLC0415

    root = realdata_path()
    annotations = root / "annotations" / "instances_train2017.json"
    if not annotations.is_file():
        return None
    dataset = json.loads(annotations.read_text())
    class_of = {cid: i for i, cid in enumerate(COCO_CATEGORY_IDS)}
    by_image: dict[int, list] = {}
    for ann in dataset["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    paths = []
    for image in dataset["images"]:
        link = folder / "images" / image["file_name"]
        link.symlink_to((root / "train2017" / image["file_name"]).resolve())
        w, h = image["width"], image["height"]
        rows = []
        for ann in by_image.get(image["id"], []):
            if ann["iscrowd"]:
                continue
            x, y, bw, bh = ann["bbox"]
            x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + bw), min(h, y + bh)
            rows.append(f"{class_of[ann['category_id']]} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                        f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n")
        (folder / "labels" / (Path(image["file_name"]).stem + ".txt")).write_text("".join(rows))
        paths.append(str(link))
    return paths


def _bench_realdata_training(iterations: int, workers: int, say, precision: str = "f32") -> dict | None:
    """Fine-tuning the pretrained yolov3-tiny at 416, batch 8, on the 50 real train images: DataLoader (JPEG
    decoding, the cfg's augmentation, `workers` processes) feeding train_chunk + update; images/s over
    `iterations` iterations after one warm-up, data waits included; then the loader alone on the same photos."""
    from .data import Augment, DataLoader  # noqa: PLC0415
    from .network import Network  # noqa: PLC0415
    from .train import learning_rate  # noqa: PLC0415

    ref = reference_path()
    if not (ref / "yolov3-tiny.weights").is_file():
        say(f"real-data training skipped: {ref / 'yolov3-tiny.weights'} not found")
        return None
    with tempfile.TemporaryDirectory(prefix="pydarknet-bench-") as folder:
        folder = Path(folder)
        paths = _coco_train_set(folder)
        if paths is None:
            say(f"real-data training skipped: {realdata_path()} not found")
            return None
        cfg = _sized_cfg(ref / "yolov3-tiny.cfg", 416, folder, "yolov3-tiny")
        batch = 8
        say(f"fine-tuning yolov3-tiny 416, batch {batch}, {precision}, on {len(paths)} real COCO images ({workers} "
            f"loader processes) ...")
        with Network(cfg, ref / "yolov3-tiny.weights", batch=batch, precision=precision) as net:
            opts = net.options
            aug = Augment.from_net_options(opts, jitter=min(net.yolo_layers[-1].jitter, 0.49))
            times, losses = [], []
            with DataLoader(paths, num_classes=net.yolo_layers[0].classes, batch=batch, net_w=net.width,
                            net_h=net.height, aug=aug, max_boxes=net.max_boxes, workers=workers, seed=1) as loader:
                for it in range(iterations + 1):
                    start = time.perf_counter()
                    x, truth = loader.next_batch()
                    losses.append(net.train_chunk(x, truth))
                    net.update(learning_rate(opts, net.seen // batch) * 0.1, opts["momentum"], opts["decay"],
                               batch)
                    if it > 0:
                        times.append(time.perf_counter() - start)
            # the loader alone on the same photos, same workers: how far it is from bounding the training
            loader_rate, _ = _loader_rate(paths, net, batch, aug, workers, max(iterations, 3))
            bflops = net.bflops
            engines = net.conv_engines()
    seconds = statistics.median(times)
    return {"model": "yolov3-tiny", "precision": precision, "input": "416x416", "batch": batch,
            "weights": "reference", "engines": engines,
            "data": f"{len(paths)} real COCO train2017 images", "loader_workers": workers,
            "iterations": iterations, "s_per_iteration": seconds, "s_per_image": seconds / batch,
            "images_per_s": batch / seconds, "iteration_runs_s": times, "losses": losses,
            "train_gflops_per_s": 3 * bflops * batch / seconds, "loader_images_per_s": loader_rate}


# ---------------------------------------------------------------------------------------------------------
# Validation on real JPEGs
# ---------------------------------------------------------------------------------------------------------

def default_valid_images() -> Path:
    return ROOT.parent / "shared" / "realdata" / "coco-tiny" / "val2017"


def _valid_paths(source: str | os.PathLike, limit: int | None) -> list[str]:
    """JPEGs of a folder (sorted) or the paths of a Darknet list file."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(str(p) for p in source.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    elif source.is_file():
        from .data import read_list  # noqa: PLC0415

        paths = read_list(source)
    else:
        raise FileNotFoundError(f"{source}: no such folder of images or image list")
    if not paths:
        raise ValueError(f"{source}: no JPEG images")
    return paths[:limit] if limit else paths


def _opencv_valid(ocv, out_names: Sequence[str], paths: Sequence[str], size: int, classes: int,
                  thresh: float = 0.005, nms: float = 0.45) -> list[dict]:
    """OpenCV doing valid's work: decode, letterbox, forward, boxes back to the image, NMS per class."""
    import cv2  # noqa: PLC0415

    from .eval.boxes import COCO_CATEGORY_IDS, coco_image_id  # noqa: PLC0415

    results = []
    canvas = np.empty((size, size, 3), np.uint8)
    for path in paths:
        image = cv2.imread(path)
        h, w = image.shape[:2]
        scale = min(size / w, size / h)
        new_w, new_h = max(1, int(w * scale)), max(1, int(h * scale))
        dx, dy = (size - new_w) // 2, (size - new_h) // 2
        canvas[:] = 127
        canvas[dy:dy + new_h, dx:dx + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        ocv.setInput(cv2.dnn.blobFromImage(canvas, 1 / 255.0, (size, size), swapRB=True, crop=False))
        rows = np.concatenate([np.asarray(o).reshape(-1, 5 + classes) for o in ocv.forward(out_names)])
        rows = rows[rows[:, 4] > thresh]
        # centre/size relative to the letterbox -> pixels of the image
        cx = (rows[:, 0] * size - dx) / scale
        cy = (rows[:, 1] * size - dy) / scale
        bw, bh = rows[:, 2] * size / scale, rows[:, 3] * size / scale
        boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1)
        image_id = coco_image_id(path)
        for c in np.nonzero((rows[:, 5:] > thresh).any(axis=0))[0]:
            picked = np.nonzero(rows[:, 5 + c] > thresh)[0]
            keep = cv2.dnn.NMSBoxes(boxes[picked].tolist(), rows[picked, 5 + c].tolist(), thresh, nms)
            for k in np.asarray(keep).reshape(-1):
                i = picked[k]
                results.append({"image_id": image_id, "category_id": COCO_CATEGORY_IDS[c],
                                "bbox": [round(float(v), 3) for v in boxes[i]], "score": float(rows[i, 5 + c])})
    return results


def _bench_valid(model: _Model, paths: Sequence[str], repeat: int) -> dict:
    import cv2  # noqa: PLC0415

    from .detect import Detector  # noqa: PLC0415
    from .valid import write_results  # noqa: PLC0415

    with Detector(model.cfg, model.weights) as detector, \
            tempfile.TemporaryDirectory(prefix="pydarknet-bench-valid-") as folder:
        names, size = list(detector.names), detector.net_width
        ocv = cv2.dnn.readNetFromDarknet(str(model.cfg), str(model.weights))
        ocv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        ocv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        out_names = list(ocv.getUnconnectedOutLayersNames())

        def run_ours():
            start = time.perf_counter()
            written = write_results(detector, paths, folder, "coco", names, progress=False)
            seconds = time.perf_counter() - start
            return seconds, json.loads(Path(written.outputs[0]).read_text())

        def run_opencv():
            start = time.perf_counter()
            found = _opencv_valid(ocv, out_names, paths, detector.net_width, detector.num_classes)
            return time.perf_counter() - start, found

        ours_s, opencv_s = [], []
        ours, theirs = [], []
        for i in range(repeat):
            for engine in ((run_ours, run_opencv) if i % 2 == 0 else (run_opencv, run_ours)):
                seconds, found = engine()
                (ours_s if engine is run_ours else opencv_s).append(seconds)
                if engine is run_ours:
                    ours = found
                else:
                    theirs = found
    best_ours, best_opencv = min(ours_s), min(opencv_s)
    return {
        "model": model.name, "weights": model.weights_kind, "images": len(paths), "input": f"{size}x{size}",
        "pydarknet_images_per_s": len(paths) / best_ours, "opencv_images_per_s": len(paths) / best_opencv,
        "ratio": best_ours / best_opencv, "pydarknet_runs_s": ours_s, "opencv_runs_s": opencv_s,
        # sanity: both engines find about as many confident boxes
        "pydarknet_detections_over_25": sum(r["score"] > 0.25 for r in ours),
        "opencv_detections_over_25": sum(r["score"] > 0.25 for r in theirs),
    }


def _valid_table(row: dict) -> list[str]:
    return [f"{'model':<14}{'images':>7}{'weights':>11}{'pydarknet img/s':>17}{'OpenCV img/s':>14}{'ratio':>7}"
            f"{'boxes > .25':>14}",
            f"{row['model']:<14}{row['images']:>7}{row['weights']:>11}{row['pydarknet_images_per_s']:>17.2f}"
            f"{row['opencv_images_per_s']:>14.2f}{row['ratio']:>7.2f}"
            f"{str(row['pydarknet_detections_over_25']) + '/' + str(row['opencv_detections_over_25']):>14}",
            "  (valid on real JPEGs, decoding included: time per pass = pydarknet / OpenCV, best of the passes; "
            "boxes > .25 = pydarknet/OpenCV)"]


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------

def _fmt_diff(value) -> str:
    return "n/a" if value is None else f"{value:.1e}"


ENGINE_ORDER = ("pydarknet", "pydarknet-bf16", "pydarknet-fused", "opencv", "onnxruntime", "openvino-f32",
                "openvino-default")


def _inference_table(rows: list[dict], peak: float | None = None) -> list[str]:
    lines = [f"{'model':<13}{'batch':>6}{'engine':>18}{'median s':>10}{'GFLOP/s':>9}{'of peak':>9}"
             f"{'time / pydarknet':>18}  what ran"]
    for r in rows:
        for name in ENGINE_ORDER:
            if name in r["engines"]:
                e = r["engines"][name]
                share = f"{e['gflops_per_s'] / peak:.2f}" if peak else "n/a"
                lines.append(f"{r['model']:<13}{r['batch']:>6}{name:>18}{e['s']:>10.4f}{e['gflops_per_s']:>9.1f}"
                             f"{share:>9}{e['time_vs_pydarknet']:>18.2f}  {e['path']}")
            elif name in r.get("skipped", {}):
                lines.append(f"{r['model']:<13}{r['batch']:>6}{name:>18}  skipped: {r['skipped'][name]}")
    return lines


def _blas_text(core: str | None, coretype_env: str | None) -> str:
    """Which OpenBLAS kernels pydarknet's GEMM path (and numpy's, for the SGEMM peak) runs on this machine: an
    OPENBLAS_CORETYPE in the environment picks them for every OpenBLAS in the run, whatever the CPU offers."""
    if core is None:
        return "  BLAS: not the scipy-openblas32 wheel's OpenBLAS (its kernels are not reported)"
    text = f"  BLAS: OpenBLAS with its {core} kernels"
    if coretype_env:
        text += (f", chosen by OPENBLAS_CORETYPE={coretype_env} in the environment (the GEMM path and the SGEMM "
                 "peak run on those kernels, not necessarily the CPU's best)")
    return text


def _inference_notes(rows: list[dict], peak: float | None = None) -> list[str]:
    fig = ISSUE_FIGURES
    lines = ["  (medians of interleaved calls in one run; GFLOP/s = Darknet's BFLOPs x batch / median s; "
             "of peak = that / the SGEMM peak; time / pydarknet < 1 = faster than pydarknet float32;",
             "   pydarknet = the default (AUTO) path, pydarknet-fused = the hand-written Winograd/GEMM path alone)"]
    if peak:
        lines.append(f"  SGEMM peak (numpy's BLAS, 2048^3, same threads): {peak:.1f} GFLOP/s")
    for r in rows:
        if r["max_abs_diff"] is not None:
            lines.append(f"  sanity {r['model']}: max |pydarknet - OpenCV| {r['max_abs_diff']:.2e} over the [yolo] "
                         f"outputs (up to {r['max_abs_output']:.3g}); {r['raw_max_abs_diff']:.2e} over the raw "
                         f"heads (std >= {r['raw_std']:.3g})")
        elif r["batch"] == 1:
            lines.append(f"  sanity {r['model']}: not compared ({r.get('note', '')})")
    quoted = ", ".join(f"{v} s {k}" for k, v in fig["inference_opencv_s"].items())
    lines.append(f"  issue figures: OpenCV DNN {quoted} on the project machine")
    for r in rows:
        for g in r.get("goals", []):
            low, high = g["interval_95"]
            lines.append(f"  {r['model']} batch {r['batch']}: {g['ours']} / {g['theirs']} time {g['ratio']:.2f} "
                         f"(95% interval {low:.2f}-{high:.2f} over the rounds; goal <= 1: "
                         f"{_goal_verdict(g['ratio'], low, high)})")
    return lines


def _training_table(rows: list[dict]) -> list[str]:
    workers = sorted({w for r in rows for w in r.get("data_images_per_s", {})}, key=int)
    head = (f"{'model':<22}{'variant':>10}{'input':>9}{'batch':>6}{'compute s/img':>15}{'compute img/s':>15}"
            + "".join(f"{'data img/s w=' + w:>16}" for w in workers) + f"{'serial s/img':>14}  convolutions")
    lines = [head]
    for r in rows:
        lines.append(f"{r['model']:<22}{r['variant']:>10}{r['input']:>9}{r['batch']:>6}"
                     f"{r['compute_s_per_image']:>15.4f}"
                     f"{r['compute_images_per_s']:>15.2f}"
                     + "".join(f"{r.get('data_images_per_s', {}).get(w, float('nan')):>16.1f}" for w in workers)
                     + f"{r.get('serial_s_per_image', float('nan')):>14.4f}  {_engines_text(r['engines'])}")
    return lines


def _training_notes(rows: list[dict]) -> list[str]:
    fig = ISSUE_FIGURES
    lines = ["  (compute = train_chunk + update on prepared batches, median of the timed iterations;",
             "   data = DataLoader over generated images with the cfg's augmentation, w = worker processes "
             "(0: in the calling process);",
             "   serial = compute + data loading in one process, i.e. training with workers=0)",
             "  issue figures, seconds per image training yolov3-tiny at 416: "
             + ", ".join(f"{k} {v}" for k, v in fig["train_s_per_image"].items())]
    tiny = {r["variant"]: r for r in rows if r["model"] == "yolov3-tiny"}
    for label, over in (("bf16", "f32"), ("f32", "f32 gemm"), ("bf16", "f32 gemm"), ("f32", "pytorch"),
                        ("f32", "pytorch-cl")):
        if label in tiny and over in tiny:
            ours, theirs = tiny[label]["compute_iteration_runs_s"], tiny[over]["compute_iteration_runs_s"]
            low, high = ratio_interval(ours, theirs)
            lines.append(f"  yolov3-tiny training {label} / {over} time: "
                         f"{tiny[label]['compute_s_per_image'] / tiny[over]['compute_s_per_image']:.2f} "
                         f"(95% interval {low:.2f}-{high:.2f} over {len(ours)} interleaved iterations on the same "
                         "batches)")
    for r in rows:
        if r["model"] == "yolov3-tiny" and r["variant"] == "f32":
            s, minimum, goal = r["compute_s_per_image"], fig["train_s_per_image_minimum"], fig["train_s_per_image_goal"]
            lines.append(f"  yolov3-tiny compute {s:.3f} s/image: minimum < {minimum} "
                         f"{'met' if s < minimum else 'NOT met'}; goal <= {goal} {'met' if s <= goal else 'not met'}")
    return lines


def _per_image_inference(inference: list[dict], model: str, engine: str, batch: int) -> float | None:
    """Seconds per image of the engine's inference at that batch in the inference table, or None."""
    for r in inference:
        e = r.get("engines", {}).get(engine)
        if r["model"] == model and r["batch"] == batch and e is not None:
            return e["s"] / batch
    return None


def _training_beside_inference(inference: list[dict], training: list[dict], reals: list[dict]) -> list[str]:
    """yolov3-tiny's training time per image over the inference time per image timed in the same iterations, in
    each precision (a forward + backward + update costs about 3 forwards in multiply-adds), and both against
    pydarknet when the CPU-speed issue was filed (its float32 inference at batch 4 and real-data training):
    whether training gained in proportion to inference."""
    fig = ISSUE_FIGURES
    lines = []
    real = {r["precision"]: r for r in reals}
    before_batch4 = fig["pydarknet_before_inference_s"]["yolov3-tiny batch 4"][0] / 4
    for row in training:
        if row["model"] != "yolov3-tiny" or "inference_s_per_image" not in row:
            continue
        precision = row["precision"]
        s_train, s_inf = row["compute_s_per_image"], row["inference_s_per_image"]
        low, high = ratio_interval(row["compute_iteration_runs_s"], row["inference_iteration_runs_s"])
        line = (f"  yolov3-tiny {row['variant']}: training {s_train:.4f} s/image = {s_train / s_inf:.1f}x (95% "
                f"interval {low:.1f}-{high:.1f}) the inference forward's {s_inf:.4f} s/image, batch {row['batch']}, "
                "timed in the same iterations")
        if row.get("peer"):  # PyTorch: its own ratio alone
            lines.append(line)
            continue
        since = []
        table = _per_image_inference(inference, "yolov3-tiny", "pydarknet" if precision == "f32" else
                                     "pydarknet-bf16", 4)
        if table is not None:
            since.append(f"inference at batch 4 {table / before_batch4:.2f}x")
        if precision in real:
            since.append(f"training on real data "
                         f"{real[precision]['s_per_image'] / fig['pydarknet_before_realdata_train_s_per_image']:.2f}x")
        if since:
            line += "; against pydarknet's float32 when the issue was filed: " + ", ".join(since)
        lines.append(line)
    return lines


def run_benchmarks(models: Sequence[str] = ("yolov3-tiny", "yolov3"), repeat: int = 10, threads: int = 2,
                   train: bool = False, *, batches: Sequence[int] = (1, 4), size: int = 416, warmup: int = 2,
                   train_iterations: int = 5, loader_workers: Sequence[int] = (0, 2), peers: bool = True,
                   valid: bool = False, valid_images: str | os.PathLike | None = None, valid_limit: int | None = 20,
                   json_path: str | os.PathLike | None = None, stream: IO[str] | None = None) -> dict:
    """Run the benchmarks, print a table to `stream` (stdout) and return the figures (see module doc).

    `models`: names of cfgs in cfg/ (``yolov3-tiny`` uses the reference weights when present) or .cfg paths;
    `batches`: images per forward; `repeat`: timed runs per engine after `warmup` runs; `threads`: for every
    engine; `peers`: also ONNX Runtime and OpenVINO on the project's ONNX export, and in training PyTorch (eager,
    NCHW and channels-last; bench_torch.py); `train`: also time training
    (`train_iterations` timed iterations after one warm-up, per cfg, and the real-data fine-tune);
    `valid`: also time `valid` on the first `valid_limit` real JPEGs of `valid_images` (a folder or a list
    file; default the COCO slice in ../shared/realdata), `repeat` passes per engine (at most 3).
    """
    import cv2  # noqa: PLC0415

    from ._ffi import blas_core  # noqa: PLC0415
    from .network import get_threads, onednn_version, set_threads  # noqa: PLC0415

    if repeat < 1 or threads < 1 or not batches or min(batches) < 1:
        raise ValueError(f"repeat={repeat}, threads={threads} and batches={list(batches)} must be >= 1")
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
        raise RuntimeError("this OpenCV has no DNN module with the Darknet reader (pip install opencv-python)")
    out = stream if stream is not None else sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    models = [m.strip() for m in models if m.strip()]
    previous = (get_threads(), cv2.getNumThreads())
    set_threads(threads)
    cv2.setNumThreads(threads)
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "threads": threads, "opencv": cv2.__version__,
                    "python": sys.version.split()[0], "onednn": onednn_version() or None},
        "settings": {"repeat": repeat, "warmup": warmup, "size": size, "models": models, "train": train,
                     "batches": list(batches), "train_iterations": train_iterations, "peers": peers},
        "issue_figures": ISSUE_FIGURES,
        "inference": [], "training": [], "training_realdata": None, "training_realdata_bf16": None, "valid": None,
    }
    try:
        say(f"pydarknet bench: {os.cpu_count()} CPUs, {threads} threads for every engine, OpenCV {cv2.__version__}, "
            + (f"oneDNN {onednn_version()}" if onednn_version() else
               "no oneDNN in this build (pydarknet runs its hand-written convolutions)"))
        report["machine"].update(blas_core=blas_core(), openblas_coretype=os.environ.get("OPENBLAS_CORETYPE"))
        say(_blas_text(report["machine"]["blas_core"], report["machine"]["openblas_coretype"]))
        report["machine"]["sgemm_peak_gflops"] = peak = sgemm_peak(threads)
        say(f"inference at {size}x{size}, batches {', '.join(map(str, batches))}: {warmup} warm-up runs, then "
            f"medians of {repeat} runs per engine, interleaved call by call (the order shuffled every round)")
        with tempfile.TemporaryDirectory(prefix="pydarknet-bench-") as folder:
            for name in models:
                model = _resolve_model(name, size, Path(folder))
                for batch in batches:
                    report["inference"].append(_bench_inference(model, repeat, warmup, threads, batch, peers))
        if report["inference"]:
            say()
            for line in _inference_table(report["inference"], peak) + _inference_notes(report["inference"], peak):
                say(line)
        if valid:
            paths = _valid_paths(valid_images or default_valid_images(), valid_limit)
            say()
            say(f"valid on {len(paths)} real JPEGs with yolov3-tiny, both engines, {min(repeat, 3)} passes each ...")
            with tempfile.TemporaryDirectory(prefix="pydarknet-bench-") as folder:
                model = _resolve_model("yolov3-tiny", size, Path(folder))
                report["valid"] = _bench_valid(model, paths, min(repeat, 3))
            for line in _valid_table(report["valid"]):
                say(line)
        if train:
            say()
            precisions = _training_precisions(say)
            torch_peers = _torch_peers(say) if peers else ()
            report["training"] = _training_runs(train_iterations, loader_workers, say, precisions, torch_peers,
                                                threads)
            reals = [_bench_realdata_training(max(train_iterations, 3), 1, say, p) for p in precisions]
            reals = [r for r in reals if r is not None]
            report["training_realdata"] = reals[0] if reals else None
            report["training_realdata_bf16"] = reals[1] if len(reals) > 1 else None
            say()
            say(f"training on {threads} threads")
            for line in _training_table(report["training"]) + _training_notes(report["training"]):
                say(line)
            for real in reals:
                say(f"  real data, {real['precision']}: yolov3-tiny 416 batch 8 fine-tuned from the pretrained "
                    f"weights on {real['data']}, JPEG decoding and augmentation in {real['loader_workers']} loader "
                    f"process: {real['s_per_iteration']:.2f} s/iteration, {real['s_per_image']:.3f} s/image, "
                    f"{real['images_per_s']:.2f} images/s ({real['train_gflops_per_s']:.1f} GFLOP/s counting "
                    f"backward as 2x forward); convolutions: {_engines_text(real['engines'])}; the loader alone on "
                    f"these photos: {real['loader_images_per_s']:.0f} images/s")
            if reals:
                say("  issue figures: AlexeyAB's CPU build ~1.0 s/image, pydarknet before "
                    f"{ISSUE_FIGURES['pydarknet_before_realdata_train_s_per_image']} s/image")
            for line in _training_beside_inference(report["inference"], report["training"], reals):
                say(line)
    finally:
        set_threads(previous[0])
        cv2.setNumThreads(previous[1])
    if json_path is not None:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        say(f"\nwrote {json_path}")
    return report
