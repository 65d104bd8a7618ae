"""`pydarknet bench` on the smallest settings: every engine timed or skipped with a reason, the ratios, and
pydarknet's outputs agree with OpenCV's."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):  # pragma: no cover
    pytest.skip("this OpenCV has no DNN module with the Darknet reader", allow_module_level=True)

from click.testing import CliRunner

from pydarknet.bench import ONEDNN_NETWORK, run_benchmarks
from pydarknet.cli import main
from pydarknet.network import get_threads, onednn_version

# The peer engines (OpenVINO, ONNX Runtime) abort inside their own code when `make asan` preloads the sanitizer
# runtimes into the process: there only pydarknet and OpenCV are timed (and PyTorch's peer is not built).
PEERS = "libasan" not in os.environ.get("LD_PRELOAD", "")


def check_row(row: dict) -> None:
    assert row["model"] == "yolov3-tiny" and row["input"] == "416x416" and row["batch"] == 1
    assert row["weights"] in ("reference", "random")
    assert row["pydarknet_s"] > 0 and row["opencv_s"] > 0
    assert row["ratio"] == pytest.approx(row["pydarknet_s"] / row["opencv_s"])
    assert row["bflops"] == pytest.approx(5.565, abs=0.01)
    assert row["pydarknet_gflops_per_s"] == pytest.approx(row["bflops"] / row["pydarknet_s"])
    # The two engines read the same .cfg and .weights and see the same input.
    assert row["max_abs_diff"] is not None and row["max_abs_diff"] < 1e-3, row["max_abs_diff"]
    assert row["raw_max_abs_diff"] < 1e-2 * max(1.0, row["raw_std"])
    engines = row["engines"]
    for name in ("pydarknet", "pydarknet-fused", "opencv"):
        assert engines[name]["s"] > 0 and len(engines[name]["runs_s"]) == len(row["pydarknet_runs_s"])
        assert engines[name]["time_vs_pydarknet"] == pytest.approx(engines[name]["s"] / row["pydarknet_s"])
    # which path ran is said: every convolution of yolov3-tiny (13) on a named engine
    assert engines["pydarknet-fused"]["path"] == "fused x13"
    path = engines["pydarknet"]["path"]
    if onednn_version():
        assert path.startswith(ONEDNN_NETWORK), path
        path = path[len(ONEDNN_NETWORK):]
    counts = dict(part.split(" x") for part in path.split(", "))
    # (the first convolution and its pool as one hand-written kernel where the CPU has AVX-512)
    assert sum(int(v) for v in counts.values()) == 13 and set(counts) <= {"onednn", "fused", "stem"}, counts
    # every peer ran, or says why not
    for name in ("pydarknet-bf16", "onnxruntime", "openvino-f32", "openvino-default"):
        assert (name in engines) != bool(row["skipped"].get(name)), (name, row["skipped"])
    # each goal against OpenVINO whose two engines ran: the ratio of medians inside its interval
    pairs = [(g["ours"], g["theirs"]) for g in row["goals"]]
    assert pairs == [p for p in (("pydarknet", "openvino-f32"), ("pydarknet-bf16", "openvino-default"))
                     if p[0] in engines and p[1] in engines]
    for g in row["goals"]:
        low, high = g["interval_95"]
        assert g["ratio"] == pytest.approx(engines[g["ours"]]["s"] / engines[g["theirs"]]["s"])
        assert low <= g["ratio"] <= high


def test_run_benchmarks_tiny(tmp_path):
    before = get_threads()
    out = io.StringIO()
    path = tmp_path / "bench.json"
    report = run_benchmarks(models=["yolov3-tiny"], repeat=1, threads=1, warmup=1, batches=(1,), json_path=path,
                            stream=out, peers=PEERS)
    assert get_threads() == before  # the thread count is restored
    assert len(report["inference"]) == 1 and report["training"] == []
    check_row(report["inference"][0])
    assert len(report["inference"][0]["pydarknet_runs_s"]) == len(report["inference"][0]["opencv_runs_s"]) == 1
    assert json.loads(path.read_text()) == json.loads(json.dumps(report))
    text = out.getvalue()
    assert report["machine"]["sgemm_peak_gflops"] > 0
    assert report["machine"]["openblas_coretype"] == os.environ.get("OPENBLAS_CORETYPE")
    for expected in ("median s", "time / pydarknet", "GFLOP/s", "of peak", "SGEMM peak", "yolov3-tiny",
                     "sanity yolov3-tiny", "0.027", "pydarknet-fused", "opencv"):
        assert expected in text, text


def test_bench_names_the_blas_kernels_and_who_chose_them():
    """The SGEMM peak and the GEMM path run on whichever OpenBLAS kernels an OPENBLAS_CORETYPE in the environment
    forces (some machines set one): the report says which, so a peak below oneDNN's rate is not misread."""
    from pydarknet._ffi import blas_core, build_info
    from pydarknet.bench import _blas_text

    core = blas_core()
    if build_info()["blas"].startswith("OpenBLAS (scipy"):
        assert core and build_info()["blas_core"] == core
    assert "Haswell kernels, chosen by OPENBLAS_CORETYPE=Haswell" in _blas_text("Haswell", "Haswell")
    assert _blas_text("SkylakeX", None) == "  BLAS: OpenBLAS with its SkylakeX kernels"
    assert "not reported" in _blas_text(None, None)


def test_bench_command_writes_json(tmp_path):
    path = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", "--models", "yolov3-tiny", "--repeat", "1", "--threads", "1",
                                       "--batches", "1", "--no-peers", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "time / pydarknet" in result.output and "opencv" in result.output
    report = json.loads(path.read_text())
    assert report["settings"]["repeat"] == 1 and report["machine"]["threads"] == 1
    check_row(report["inference"][0])


def test_valid_on_real_jpegs_against_opencv(tmp_path):
    from pydarknet.bench import default_valid_images

    images = default_valid_images()
    if not images.is_dir():
        pytest.skip(f"real COCO slice not found at {images}")
    path = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", "--models", "", "--repeat", "1", "--threads", "1", "--valid",
                                       "--valid-limit", "3", "--json", str(path)])
    assert result.exit_code == 0, result.output
    assert "pydarknet img/s" in result.output and "OpenCV img/s" in result.output
    row = json.loads(path.read_text())["valid"]
    assert row["images"] == 3 and row["model"] == "yolov3-tiny"
    assert row["pydarknet_images_per_s"] > 0 and row["opencv_images_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["opencv_images_per_s"] / row["pydarknet_images_per_s"])
    if row["weights"] == "reference":  # the same model on the same photos: about as many confident boxes
        ours, theirs = row["pydarknet_detections_over_25"], row["opencv_detections_over_25"]
        assert ours > 0 and abs(ours - theirs) <= max(2, 0.2 * theirs), (ours, theirs)


def test_valid_bench_missing_images_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_benchmarks(models=[], repeat=1, threads=1, valid=True, valid_images=tmp_path / "nowhere")


def test_round_orders_shuffle_without_back_to_back_runs():
    from pydarknet.bench import _round_orders

    orders = _round_orders(7, 40)
    assert all(sorted(o) == list(range(7)) for o in orders)  # every engine once a round
    flat = [k for o in orders for k in o]
    assert all(a != b for a, b in zip(flat, flat[1:]))  # never the same engine twice in a row
    predecessors = {(a, b) for a, b in zip(flat, flat[1:])}
    assert len({b for a, b in predecessors if a == 0}) >= 4  # an engine's neighbours vary
    assert orders == _round_orders(7, 40)  # seeded: a rerun times the same sequence
    assert _round_orders(1, 3) == [[0], [0], [0]]


def test_ratio_interval_resamples_rounds_together():
    import numpy as np

    from pydarknet.bench import _goal_verdict, ratio_interval

    # one engine always 1.2x the other within a round, the rounds themselves 2x apart (the machine's modes):
    # pairing the rounds gives 1.2 exactly, whatever the resample
    theirs = [0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1]
    low, high = ratio_interval([1.2 * t for t in theirs], theirs)
    assert low == pytest.approx(1.2, rel=1e-9) and high == pytest.approx(1.2, rel=1e-9)
    # noise as on the project machine: +-15% per call around a true ratio of 1.05
    rng = np.random.default_rng(3)
    base = rng.uniform(0.1, 0.12, 12)
    ours, theirs = 1.05 * base * rng.uniform(0.85, 1.15, 12), base * rng.uniform(0.85, 1.15, 12)
    low, high = ratio_interval(ours, theirs)
    ratio = np.median(ours) / np.median(theirs)
    assert low < ratio < high and low < 1 < high  # 12 rounds cannot tell 1.05 from 1 at this noise
    assert ratio_interval(ours, theirs) == (low, high)  # seeded
    # many quiet rounds: a narrow interval around the truth
    base = rng.uniform(0.1, 0.12, 400)
    low, high = ratio_interval(1.05 * base * rng.uniform(0.99, 1.01, 400), base * rng.uniform(0.99, 1.01, 400))
    assert 1.0 < low < 1.05 < high < 1.1
    with pytest.raises(ValueError, match="same number"):
        ratio_interval([1.0, 2.0], [1.0])
    assert _goal_verdict(0.97, 0.95, 0.99) == "met"
    assert _goal_verdict(1.1, 1.05, 1.2) == "NOT met"
    assert _goal_verdict(1.1, 0.9, 1.3) == "NOT met; the interval holds 1: this run cannot tell"
    assert _goal_verdict(0.95, 0.9, 1.05) == "met; the interval holds 1: this run cannot tell"


def test_training_rows_name_their_variant_and_the_convolutions_that_ran(tiny_cfg, tmp_path):
    """bench --train's rows, on the tiny cfg: one per variant, interleaved; with oneDNN the default float32 run
    trains its convolutions on oneDNN and "f32 gemm" (the path before it) on im2col + GEMM, both in the table and
    the notes' ratio."""
    from conftest import make_dataset
    from pydarknet.bench import _bench_training, _training_notes, _training_table, _training_variants
    from pydarknet.data import read_list
    from pydarknet.datafile import read_data_file

    paths = read_list(read_data_file(make_dataset(tmp_path, n=4))["train"])
    variants = _training_variants(("f32",))
    assert variants[0] == ("f32", "f32", "auto")
    assert (("f32 gemm", "f32", "gemm") in variants) == bool(onednn_version())
    rows = _bench_training("yolov3-tiny", tiny_cfg, None, "random", 2, paths, 1, (0,), variants)
    assert [r["variant"] for r in rows] == [v[0] for v in variants]
    layers = 8  # the tiny cfg's convolutional layers
    for row in rows:
        assert row["compute_s_per_image"] > 0 and len(row["compute_iteration_runs_s"]) == 1
        assert sum(row["engines"].values()) == layers
        # the default path's rows also time an inference forward of the same batch in the same iterations
        assert ("inference_s_per_image" in row) == (row["conv_algo"] == "auto")
        if row["conv_algo"] == "auto":
            assert 0 < row["inference_s_per_image"] < row["compute_s_per_image"]
    by = {r["variant"]: r["engines"] for r in rows}
    if onednn_version():
        wide = 4  # its convolutions larger than 1x1: on oneDNN under AUTO, the 1x1 ones on GEMM
        assert by == {"f32": {"onednn": wide, "plain": layers - wide}, "f32 gemm": {"plain": layers}}
        assert any(line.startswith("  yolov3-tiny training f32 / f32 gemm time: ") for line in _training_notes(rows))
    table = "\n".join(_training_table(rows))
    assert f"onednn {layers}" in table or f"plain {layers}" in table


def test_training_is_reported_beside_inference():
    """The training-beside-inference lines: yolov3-tiny's training time per image over the inference time per
    image timed in the same iterations, and both against pydarknet when the CPU-speed issue was filed (float32
    inference at batch 4 0.23 s, fine-tuning on the real images 0.17 s per image)."""
    from pydarknet.bench import _training_beside_inference

    def inference(batch, f32_s, bf16_s):
        return {"model": "yolov3-tiny", "batch": batch,
                "engines": {"pydarknet": {"s": f32_s}, "pydarknet-bf16": {"s": bf16_s}}}

    def row(variant, precision, train_s, infer_s=None):
        r = {"model": "yolov3-tiny", "variant": variant, "precision": precision, "batch": 8,
             "compute_s_per_image": train_s, "compute_iteration_runs_s": [8 * train_s] * 3}
        if infer_s is not None:
            r.update(inference_s_per_image=infer_s, inference_iteration_runs_s=[8 * infer_s] * 3)
        return r

    inf = [inference(1, 0.05, 0.02), inference(4, 0.1, 0.04), {"model": "yolov3", "batch": 4, "engines": {}}]
    training = [row("f32", "f32", 0.075, 0.025), row("bf16", "bf16", 0.04, 0.01), row("f32 gemm", "f32", 0.15)]
    reals = [{"precision": "f32", "s_per_image": 0.085}, {"precision": "bf16", "s_per_image": 0.034}]
    f32, bf16 = _training_beside_inference(inf, training, reals)
    # 0.075 / 0.025 = 3.0; (0.1 / 4) / (0.23 / 4) = 0.43; 0.085 / 0.17 = 0.50
    assert f32.startswith("  yolov3-tiny f32: training 0.0750 s/image = 3.0x (95% interval 3.0-3.0) the inference "
                          "forward's 0.0250 s/image, batch 8, timed in the same iterations")
    assert f32.endswith("when the issue was filed: inference at batch 4 0.43x, training on real data 0.50x")
    # 0.04 / 0.01 = 4.0; 0.01 / 0.0575 = 0.17; 0.034 / 0.17 = 0.20
    assert bf16.startswith("  yolov3-tiny bf16: training 0.0400 s/image = 4.0x")
    assert bf16.endswith("inference at batch 4 0.17x, training on real data 0.20x")
    # without the inference table nor real data: the ratio alone; rows without an inference timing: no line
    alone = _training_beside_inference([], training, [])
    assert len(alone) == 2 and alone[0].endswith("timed in the same iterations")
    assert _training_beside_inference(inf, training[2:], reals) == []


def test_bench_command_checks_its_training_iterations():
    result = CliRunner().invoke(main, ["bench", "--train", "--train-iterations", "0"])
    assert result.exit_code != 0 and "--train-iterations" in result.output


def test_a_pytorch_peer_row_is_reported_with_its_own_ratio_and_against_pydarknet():
    """A PyTorch row (bench_torch.py) gets its training over its own inference, without the since-filing figures
    (those are pydarknet's), and the notes give pydarknet's training time over PyTorch's in the same iterations."""
    from pydarknet.bench import _training_beside_inference, _training_notes, _training_table

    def row(variant, train_s, infer_s, peer=False):
        return {"model": "yolov3-tiny", "variant": variant, "precision": "f32", "batch": 8, "input": "416x416",
                "conv_algo": "" if peer else "auto", "peer": peer, "engines": {variant: 1},
                "compute_s_per_image": train_s, "compute_images_per_s": 1 / train_s,
                "compute_iteration_runs_s": [8 * train_s] * 3, "inference_s_per_image": infer_s,
                "inference_iteration_runs_s": [8 * infer_s] * 3}

    rows = [row("f32", 0.1, 0.025), row("pytorch", 0.4, 0.125, peer=True)]
    ours, theirs = _training_beside_inference([], rows, [{"precision": "f32", "s_per_image": 0.085}])
    assert ours.startswith("  yolov3-tiny f32: training 0.1000 s/image = 4.0x") and "real data 0.50x" in ours
    # 0.4 / 0.125 = 3.2, and nothing about pydarknet's past
    assert theirs == ("  yolov3-tiny pytorch: training 0.4000 s/image = 3.2x (95% interval 3.2-3.2) the inference "
                      "forward's 0.1250 s/image, batch 8, timed in the same iterations")
    notes = _training_notes(rows)
    assert any(line.startswith("  yolov3-tiny training f32 / pytorch time: 0.25 (95% interval 0.25-0.25")
               for line in notes)
    assert "pytorch" in "\n".join(_training_table(rows))  # a row without data-loading figures


def test_the_pytorch_peer_computes_the_same_network(reference_dir, tmp_path):
    """bench_torch builds the Darknet network in PyTorch with its weights: in eval mode its raw heads equal
    pydarknet's (yolov3-tiny with the pretrained weights: max pools with Darknet's padding, route, upsample;
    yolov3 with random weights: shortcuts), and a bench row times its training beside its inference."""
    if not PEERS:
        pytest.skip("PyTorch, like the other peers, is not run under the sanitizers' preloaded runtimes")
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the bench's training peer is optional")
    import numpy as np

    from conftest import make_dataset
    from pydarknet.bench import _bench_training
    from pydarknet.bench_torch import build_module
    from pydarknet.data import read_list
    from pydarknet.datafile import read_data_file
    from pydarknet.network import Network

    weights = reference_dir / "yolov3-tiny.weights"
    if not weights.is_file():
        pytest.skip(f"{weights} not found")
    cfgs = [(reference_dir / "yolov3-tiny.cfg", weights), (Path(__file__).parents[1] / "cfg" / "yolov3.cfg", None)]
    rng = np.random.default_rng(3)
    for cfg, w in cfgs:
        with Network(cfg, w, batch=2) as net:
            net.resize(160, 160)
            if w is None:
                net.init_params(seed=4)
            x = rng.random((2, 3, 160, 160), dtype=np.float32)
            net.forward(x)
            ours = [net.layer_output(layer.index - 1) for layer in net.yolo_layers]
            module = build_module(net).eval()
            with torch.inference_mode():
                theirs = [head.numpy() for head in module(torch.from_numpy(x))]
            assert len(theirs) == len(ours) == len(net.yolo_layers)
            for a, b in zip(ours, theirs):
                a = a.reshape(b.shape)
                assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(a).max()), (cfg.name, np.abs(a - b).max())
    paths = read_list(read_data_file(make_dataset(tmp_path, n=4))["train"])
    rows = _bench_training("yolov3-tiny", reference_dir / "yolov3-tiny.cfg", weights, "reference", 2, paths, 1, (0,),
                           torch_peers=(False, True))
    peers = {r["variant"]: r for r in rows if r.get("peer")}
    assert sorted(peers) == ["pytorch", "pytorch-cl"]
    for r in peers.values():
        assert 0 < r["inference_s_per_image"] < r["compute_s_per_image"]
        assert len(r["compute_iteration_runs_s"]) == 1


def test_real_data_training_reports_the_loader_alone_on_the_same_photos():
    """The real-data training row says how fast the loader alone goes on those photos with those workers, so a
    reader can tell whether the loader bounds the training; on a CPU it is far from it (2 threads train about
    12 images/s here, one loader worker serves over 100)."""
    from pydarknet import bench  # noqa: PLC0415

    if not (bench.realdata_path() / "annotations" / "instances_train2017.json").is_file() or \
            not (bench.reference_path() / "yolov3-tiny.weights").is_file():
        pytest.skip(f"needs {bench.realdata_path()} and {bench.reference_path() / 'yolov3-tiny.weights'}")
    lines = []
    real = bench._bench_realdata_training(1, 1, lines.append)
    assert real is not None and real["loader_workers"] == 1 and real["data"] == "50 real COCO train2017 images"
    assert real["images_per_s"] > 0
    assert real["loader_images_per_s"] > 2 * real["images_per_s"], real
