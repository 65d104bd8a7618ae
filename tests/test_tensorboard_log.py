"""TensorBoard logging: the series a training run writes, read back with TensorBoard's own reader."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (pip install 'pydarknet[tensorboard]')")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tensorboard package (its event reader) is not installed (pip install tensorboard)")

from pydarknet import Network  # noqa: E402
from pydarknet.eval.result import THRESHOLDS, MapResult, MetricMap  # noqa: E402
from pydarknet.tensorboard_log import TensorBoardLogger  # noqa: E402

YOLO_STATS = ("iou", "giou", "iou_loss", "cls_loss", "cost", "obj", "noobj", "class", "recall50", "recall75", "count")


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def real_layer_stats(tiny_cfg) -> list[dict]:
    """One training forward of the tiny network: the per-[yolo] statistics train.py puts in its records."""
    with Network(tiny_cfg, batch=2) as net:
        x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
        truths = np.array([[[0.5, 0.5, 0.3, 0.4, 1]], [[0.3, 0.6, 0.2, 0.2, 0]]], np.float32)
        return [layer["stats"] for layer in net.loss(x, truths)]


def test_training_series_read_back(tiny_cfg, tmp_path):
    stats = real_layer_stats(tiny_cfg)
    assert [sorted(s) for s in stats] == [sorted(YOLO_STATS)] * 2
    # Records as train.py writes them: 8 images per iteration, `images` = images seen so far.
    records = [{"iteration": it, "loss": 10.0 / it, "avg_loss": 12.0 - it, "lr": 0.001 * it, "images": 8 * it,
                "seconds": 0.5 * it, "data_seconds": 0.1, "time": 1.7e9 + it, "width": 64, "layers": stats}
               for it in (1, 2, 3)]
    logdir = tmp_path / "run" / "tensorboard"
    with TensorBoardLogger(logdir, yolo_layers=[8, 14]) as tb:
        for record in records:
            tb.log_iteration(record["iteration"], record)
    scalars = read_scalars(logdir)

    expected_tags = {"train/loss", "train/avg_loss", "train/learning_rate", "train/images_per_s"}
    expected_tags |= {f"yolo{layer}/{name}" for layer in (8, 14) for name in YOLO_STATS}
    assert set(scalars) == expected_tags
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [10.0, 5.0, 10.0 / 3], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["train/avg_loss"]], [11.0, 10.0, 9.0], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["train/learning_rate"]], [0.001, 0.002, 0.003], rtol=1e-6)
    # 8 images per iteration in 0.5, 1.0, 1.5 s
    np.testing.assert_allclose([v for _, v in scalars["train/images_per_s"]], [16.0, 8.0, 16 / 3], rtol=1e-6)
    for tag, points in scalars.items():
        assert [step for step, _ in points] == [1, 2, 3], tag
    for layer, layer_stats in zip((8, 14), stats):
        for name in ("iou", "giou", "recall50", "recall75", "count"):
            assert scalars[f"yolo{layer}/{name}"][0][1] == pytest.approx(layer_stats[name], rel=1e-6, abs=1e-7)
    assert scalars["yolo8/count"][0][1] + scalars["yolo14/count"][0][1] == 2   # the two truth boxes


def test_map_per_checkpoint(tmp_path):
    # AP of two classes at each threshold t = .50, .55, ...: .80 - .05 k and .60 - .05 k (k = 0..9), so the mAP
    # is .70 at .50, .45 at .75 and .475 over .50:.95.
    k = np.arange(len(THRESHOLDS))[:, None]
    class_ap = np.hstack([0.80 - 0.05 * k, 0.60 - 0.05 * k])
    result = MapResult({"iou": MetricMap("iou", THRESHOLDS, ("a", "b"), class_ap),
                        "giou": MetricMap("giou", THRESHOLDS, ("a", "b"), class_ap - 0.1)})
    with TensorBoardLogger(tmp_path) as tb:
        tb.log_iteration(1000, {"loss": 1.0})
        tb.log_map(1000, result)
        tb.log_iteration(1100, {"loss": 0.9})
        tb.log_map("final", {"iou_50": 0.75, "giou_50": float("nan")})   # final: at the last iteration
    scalars = read_scalars(tmp_path)
    assert set(scalars) == {"train/loss", "map/iou_50", "map/iou_75", "map/iou_50_95", "map/giou_50",
                            "map/giou_75", "map/giou_50_95"}
    assert scalars["map/iou_50"] == [(1000, pytest.approx(0.70)), (1100, pytest.approx(0.75))]
    assert scalars["map/iou_75"] == [(1000, pytest.approx(0.45))]
    assert scalars["map/iou_50_95"] == [(1000, pytest.approx(0.475))]
    assert scalars["map/giou_50"] == [(1000, pytest.approx(0.60))]   # the NaN of "final" is not written


def test_close_twice_and_write_after_close(tmp_path):
    tb = TensorBoardLogger(tmp_path / "tb")
    tb.log_iteration(1, {"loss": 2.0})
    tb.close()
    tb.close()
    with pytest.raises(ValueError, match="closed"):
        tb.log_iteration(2, {"loss": 1.0})
    assert read_scalars(tmp_path / "tb") == {"train/loss": [(1, 2.0)]}


def test_missing_writer_library_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"pydarknet\[tensorboard\]"):
        TensorBoardLogger(tmp_path)


# ---- the Trainer's sink: `train --tensorboard [DIR]`, pydarknet.train(..., tensorboard=DIR) -----------------
def _jsonl(path):
    import json  # noqa: PLC0415

    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_run_series(logdir, run_dir, iterations):
    from pydarknet.runfiles import parse_map_line  # noqa: PLC0415

    scalars = read_scalars(logdir)
    records = _jsonl(run_dir / "metrics.jsonl")
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, iterations + 1))
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [r["loss"] for r in records], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["train/learning_rate"]], [r["lr"] for r in records],
                               rtol=1e-6)
    assert {"yolo8/iou", "yolo14/iou"} <= set(scalars)
    # Every map.txt row of the run (metric, iteration, mean, .50, ..., .95) as map/<metric>_50, _75, _50_95.
    rows = [parse_map_line(line) for line in (run_dir / "map.txt").read_text().splitlines()]
    assert rows
    for metric, ident, values in rows:
        step = iterations if ident == "final" else ident  # the final weights' point: the last iteration
        for tag, value in ((f"map/{metric}_50_95", values[0]), (f"map/{metric}_50", values[1]),
                           (f"map/{metric}_75", values[6])):
            if not np.isnan(value):
                assert (step, pytest.approx(value, rel=1e-6)) in scalars[tag], tag


def test_train_cli_tensorboard_default_folder(tmp_path):
    import subprocess  # noqa: PLC0415
    import os  # noqa: PLC0415

    from conftest import ROOT, TINY_CFG, make_dataset  # noqa: PLC0415

    data = make_dataset(tmp_path / "ds")
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    proc = subprocess.run([sys.executable, "-m", "pydarknet", "train", str(data), str(cfg), "--max-batches", "4",
                           "--map-every", "2", "--workers", "0", "--tensorboard"], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "ds" / "backup" / "run"
    _check_run_series(run_dir / "tensorboard", run_dir, 4)


def test_train_api_tensorboard_folder(tmp_path):
    import pydarknet  # noqa: PLC0415
    from conftest import TINY_CFG, make_dataset  # noqa: PLC0415

    data = make_dataset(tmp_path / "ds")
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    logdir = tmp_path / "tb"
    result = pydarknet.train(data, cfg, max_batches=2, map_eval=True, map_every=2, workers=0, tensorboard=logdir)
    assert result.iterations == 2
    _check_run_series(logdir, result.run_dir, 2)
    assert not (result.run_dir / "tensorboard").exists()
