"""Write synthetic run folders in the formats pydarknet's training writes (metrics.jsonl, log.csv, map.txt).

``python tests/board_fixtures/runs.py DIR`` writes a small demo backup folder for trying the board by hand.
"""
from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path


def metrics_line(it: int, layers: int = 3, batch: int = 64, rng: random.Random | None = None,
                 compact: bool = False, speed: float = 400.0) -> str:
    """One metrics.jsonl object for iteration ``it`` of a run whose loss decays (time constant ``speed``
    iterations) with noise."""
    rng = rng or random.Random(it)
    decay = math.exp(-it / speed)
    loss = 2.0 + 8.0 * decay + rng.uniform(-0.5, 0.5)
    obj = {
        "iteration": it, "loss": round(loss, 4), "avg_loss": round(2.0 + 8.0 * decay, 4),
        "lr": 0.001 * min(1.0, (it / 100.0) ** 4) if it < 100 else 0.001,
        "images": it * batch, "seconds": round(0.8 + rng.uniform(0, 0.1), 4), "data_seconds": 0.05,
        "time": 1764090000.0 + it,
        "layers": [],
    }
    for l in range(layers):
        iou = round(0.75 - 0.5 * decay - 0.05 * l + rng.uniform(-0.03, 0.03), 4)
        layer = {"iou": iou, "giou": round(iou - 0.08, 4), "iou_loss": round(1.0 + 3 * decay, 4),
                 "cls_loss": round(0.8 + 2 * decay, 4), "cost": round(2.0 + 5 * decay, 4)}
        if not compact:
            layer.update({"obj": 0.5, "noobj": 0.01, "class": 0.6, "recall50": 0.3, "recall75": 0.1, "count": 12})
        obj["layers"].append(layer)
    return json.dumps(obj, separators=(",", ":"))


def write_metrics_run(run_dir: Path, iterations, layers: int = 3, append: bool = False,
                      speed: float = 400.0) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "metrics.jsonl"
    with open(path, "a" if append else "w") as f:
        f.writelines(metrics_line(it, layers, speed=speed) + "\n" for it in iterations)
    return path


def write_big_metrics_run(run_dir: Path, iterations: int) -> Path:
    """A long run written fast: every line formatted from one template (about 250 bytes a line)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    template = ('{{"iteration":{0},"loss":{1:.3f},"avg_loss":{2:.3f},"lr":0.001,"images":{3},"seconds":0.8,'
                '"layers":[{{"iou":{4:.3f},"giou":{5:.3f},"iou_loss":1.1,"cls_loss":0.9,"cost":2.5}},'
                '{{"iou":{4:.3f},"giou":{5:.3f},"iou_loss":1.2,"cls_loss":0.8,"cost":2.4}},'
                '{{"iou":{4:.3f},"giou":{5:.3f},"iou_loss":1.0,"cls_loss":0.7,"cost":2.2}}]}}\n')
    path = run_dir / "metrics.jsonl"
    with open(path, "w") as f:
        step = 50_000
        for start in range(1, iterations + 1, step):
            f.write("".join(template.format(it, 2 + 8 / (1 + it / 1000), 2 + 8 / (1 + it / 1000), it * 64,
                                            0.7 - 0.5 / (1 + it / 1000), 0.6 - 0.5 / (1 + it / 1000))
                            for it in range(start, min(start + step, iterations + 1))))
    return path


def log_csv_line(it: int, max_batches: int, layers: int = 2, forwards: int = 1) -> str:
    decay = math.exp(-it / 300.0)
    groups = "".join(f"A{0.7 - 0.4 * decay - 0.05 * l:.4f},G{0.6 - 0.4 * decay:.4f},I{1 + 2 * decay:.4f},"
                     f"C{0.5 + decay:.4f},T{2 + 4 * decay:.4f},"
                     for _ in range(forwards) for l in range(layers))
    return f"{groups}BATCH,{it},{max_batches},{2 + 6 * decay:.4f}"


def write_log_csv_run(run_dir: Path, iterations, max_batches: int = 2000, layers: int = 2,
                      forwards: int = 1) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "log.csv"
    with open(path, "w") as f:
        f.writelines(log_csv_line(it, max_batches, layers, forwards) + "\n" for it in iterations)
    return path


def write_map(run_dir: Path, checkpoints, metrics=("iou", "giou"), coco: bool = False) -> Path:
    path = Path(run_dir) / "map.txt"
    with open(path, "a") as f:
        for metric in metrics:
            for ident in checkpoints:
                step = 2000 if ident == "final" else ident
                m50 = round(0.8 * (1 - math.exp(-step / 500)) - (0.02 if metric == "giou" else 0), 4)
                if coco:
                    values = [round(m50 * 0.55, 4), m50, 0, 0, 0, 0, round(m50 * 0.6, 4), 0, 0, 0, 0]
                else:
                    per_t = [round(m50 * (1 - 0.09 * k), 4) for k in range(10)]
                    values = [round(sum(per_t) / 10, 4)] + per_t
                f.write(",".join([metric, str(ident)] + [str(v) for v in values]) + "\n")
    return path


def write_demo(root: Path) -> None:
    root = Path(root)
    write_metrics_run(root / "yolov3-giou", range(1, 1201))
    write_map(root / "yolov3-giou", [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000])
    write_metrics_run(root / "yolov3-mse", range(1, 901), speed=250.0)
    write_map(root / "yolov3-mse", [100, 200, 300, 400, 500, 600, 700, 800, 900], metrics=("iou",))
    write_log_csv_run(root / "reference-tiny", range(1, 1501), layers=2)
    write_map(root / "reference-tiny", [1000, "final"], coco=True)


if __name__ == "__main__":
    write_demo(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-backup"))
