"""Darkboard's run readers: formats, incremental reading, downsampling, large files."""
import json
import math
import time
import urllib.request

import numpy as np
import pytest

from board_fixtures.runs import (log_csv_line, metrics_line, write_big_metrics_run, write_log_csv_run, write_map,
                                 write_metrics_run)
from pydarknet.board.runs import (Run, RunSet, TailReader, check_run_name, downsample, parse_log_csv_line,
                                  parse_map_line)
from pydarknet.board.server import make_server


def read_all(run: Run) -> Run:
    while run.refresh():
        pass
    return run


def test_metrics_jsonl_columns(tmp_path):
    write_metrics_run(tmp_path / "r", range(1, 11), layers=3)
    run = read_all(Run("r", tmp_path / "r"))
    cols = run.columns()
    assert cols["it"].tolist() == list(range(1, 11))
    first = json.loads(metrics_line(1, 3))
    assert cols["loss"][0] == pytest.approx(first["loss"])
    assert cols["giou.2"][0] == pytest.approx(first["layers"][2]["giou"])
    assert cols["iou_loss"][0] == pytest.approx(sum(l["iou_loss"] for l in first["layers"]))
    second = json.loads(metrics_line(2, 3))
    assert cols["ips"][1] == pytest.approx(64 / second["seconds"])  # batch from the images delta
    s = run.summary()
    assert s["iterations"] == 10 and s["points"] == 10 and s["source"] == "metrics.jsonl" and s["bad_lines"] == 0


def test_reads_only_appended_complete_lines(tmp_path):
    path = write_metrics_run(tmp_path / "r", range(1, 6))
    run = read_all(Run("r", tmp_path / "r"))
    version = run.version
    assert run._reader.offset == path.stat().st_size
    run.refresh()
    assert run.version == version  # nothing new: nothing parsed, nothing changed

    partial = metrics_line(6)
    with open(path, "a") as f:
        f.write(partial[:40])  # a writer in the middle of a line
    run.refresh()
    assert run.summary()["iterations"] == 5 and run.bad_lines == 0
    with open(path, "a") as f:
        f.write(partial[40:] + "\n" + metrics_line(7) + "\n")
    run.refresh()
    assert run.columns()["it"].tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert run._reader.offset == path.stat().st_size


def test_tail_reader_parses_nothing_twice(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("a\nb\n")
    reader = TailReader(path)
    assert reader.read() == ([b"a", b"b"], False)
    assert reader.read() == ([], False)
    with open(path, "a") as f:
        f.write("c\nd")
    assert reader.read() == ([b"c"], False)
    path.write_text("x\n")  # rewritten, shorter
    assert reader.read() == ([b"x"], True)


def test_rewritten_file_is_read_again(tmp_path):
    path = write_metrics_run(tmp_path / "r", range(1, 50))
    run = read_all(Run("r", tmp_path / "r"))
    path.write_text(metrics_line(1) + "\n" + metrics_line(2) + "\n")
    read_all(run)
    assert run.columns()["it"].tolist() == [1, 2]


def test_resumed_run_replaces_the_iterations_logged_again(tmp_path):
    path = write_metrics_run(tmp_path / "r", range(1, 21))
    run = read_all(Run("r", tmp_path / "r"))
    write_metrics_run(tmp_path / "r", range(11, 16), append=True)  # restarted from the iteration-10 backup
    read_all(run)
    assert run.columns()["it"].tolist() == list(range(1, 16))
    assert path.exists()


def test_bad_lines_are_counted_not_fatal(tmp_path):
    path = write_metrics_run(tmp_path / "r", range(1, 4))
    with open(path, "a") as f:
        f.write('{"iteration": "x"}\nnot json\n[1, 2]\n\xff\n{"event": "map", "mAP": 0.5}\n' + "[" * 100000 + "\n")
        f.write(metrics_line(4) + "\n")
    run = read_all(Run("r", tmp_path / "r"))
    assert run.columns()["it"].tolist() == [1, 2, 3, 4]
    assert run.bad_lines == 3  # "not json", "\xff" and the deep nesting; the others are ignored objects


def test_log_csv_reference_format(tmp_path):
    write_log_csv_run(tmp_path / "r", range(1, 11), max_batches=500200, layers=2)
    run = read_all(Run("r", tmp_path / "r"))
    cols = run.columns()
    groups, it, max_batches, avg = parse_log_csv_line(log_csv_line(3, 500200, layers=2))
    assert (it, max_batches) == (3, 500200) and len(groups) == 2
    assert cols["it"].tolist() == list(range(1, 11))
    assert cols["avg_loss"][2] == pytest.approx(avg)
    assert cols["iou.1"][2] == pytest.approx(groups[1][0])
    assert cols["cost"][2] == pytest.approx(groups[0][4] + groups[1][4])
    assert np.isnan(cols["loss"]).all() and np.isnan(cols["lr"]).all()
    assert run.summary()["max_batches"] == 500200 and run.summary()["source"] == "log.csv"


def test_log_csv_with_subdivisions_averages_forwards(tmp_path):
    # 3 [yolo] layers x 4 subdivision forwards = 12 groups a line
    write_log_csv_run(tmp_path / "r", range(1, 4), layers=3, forwards=4)
    run = read_all(Run("r", tmp_path / "r"))
    cols = run.columns()
    groups, *_ = parse_log_csv_line(log_csv_line(1, 2000, layers=3, forwards=4))
    assert {k for k in cols if k.startswith("iou.")} == {"iou.0", "iou.1", "iou.2"}
    assert cols["iou.2"][0] == pytest.approx(groups[2][0])
    assert cols["iou_loss"][0] == pytest.approx(sum(g[2] for g in groups) / 4)


def test_metrics_jsonl_wins_over_log_csv(tmp_path):
    write_log_csv_run(tmp_path / "r", range(1, 100))
    write_metrics_run(tmp_path / "r", range(1, 6))
    assert read_all(Run("r", tmp_path / "r")).summary()["source"] == "metrics.jsonl"


@pytest.mark.parametrize("line", ["BATCH,1,2", "A0.1,G0.2,BATCH,1,2,3.0", "X0.1,G0.2,I1,C1,T1,BATCH,1,2,3",
                                  "A0.1,G0.2,I1,C1,T1,BATCH,x,2,3"])
def test_log_csv_malformed(line):
    with pytest.raises(ValueError):
        parse_log_csv_line(line)


def test_map_txt_voc_and_coco(tmp_path):
    write_metrics_run(tmp_path / "r", range(1, 1201))
    write_map(tmp_path / "r", [200, 100, "final"])
    with open(tmp_path / "r" / "map.txt", "a") as f:
        f.write("iou,300,0.3,0.5,0,0,0,0,0.32,0,0,0,0\n")  # the COCO variant
    run = read_all(Run("r", tmp_path / "r"))
    m = run.map_points()
    assert sorted(m) == ["giou", "iou"]
    assert m["iou"]["ids"] == [100, 200, 300, "final"]
    assert m["iou"]["x"] == [100.0, 200.0, 300.0, 1200.0]  # final at the last iteration
    assert (m["iou"]["mean"][2], m["iou"]["m50"][2], m["iou"]["m75"][2]) == (0.3, 0.5, 0.32)
    assert parse_map_line("giou,final,0.1,0.2") == ("giou", "final", [0.1, 0.2])
    with pytest.raises(ValueError):
        parse_map_line("iou,abc,0.5")
    with pytest.raises(ValueError):
        parse_map_line("iou,5,inf,0.5")


def test_map_txt_nan_row_is_charted_as_a_gap(tmp_path):
    # An evaluation of a valid list without any ground truth writes "nan" (mAP undefined): kept as a gap
    # (null in the JSON), never as an invalid NaN token.
    write_metrics_run(tmp_path / "r", range(1, 301))
    (tmp_path / "r" / "map.txt").write_text("iou,100,nan," + ",".join(["nan"] * 10) + "\n"
                                            "iou,200,0.3,0.5,0.45,0.4,0.35,0.3,0.25,0.2,0.15,0.1,0.05\n")
    run = read_all(Run("r", tmp_path / "r"))
    m = run.map_points()["iou"]
    assert m["ids"] == [100, 200] and m["mean"] == [None, 0.3] and m["m50"] == [None, 0.5]
    json.dumps(run.display_series(), allow_nan=False)


def test_downsample_bucket_means():
    v = np.arange(10_000, dtype=float)
    d = downsample(v, 1000)
    assert len(d) <= 1000
    assert d[0] == pytest.approx(np.mean(v[:10]))
    v[5:15] = np.nan
    assert np.isfinite(downsample(v, 1000)).all()
    assert downsample(v[:50], 1000).tolist()[:5] == v[:5].tolist()


def test_display_series_is_downsampled(tmp_path):
    write_metrics_run(tmp_path / "r", range(1, 20_001), layers=2)
    s = read_all(Run("r", tmp_path / "r")).display_series(points=1000)
    assert len(s["x"]) <= 1000 and s["points"] == 20_000
    assert all(len(s[k]) == len(s["x"]) for k in ("loss", "avg_loss", "lr", "ips", "iou_share"))
    assert len(s["layers"]["iou"]) == 2
    json.dumps(s, allow_nan=False)  # NaN travels as null


def test_large_file_is_sampled_first_then_read_fully(tmp_path):
    write_metrics_run(tmp_path / "r", range(1, 5001), layers=1)
    run = Run("r", tmp_path / "r", preview_bytes=100_000)
    run.refresh(max_bytes=50_000)
    first = run.summary()
    assert 0 < first["loading"] < 1 and first["iterations"] == 5000  # the sample reaches the last line
    s = run.display_series(points=500)
    assert s["x"][-1] == 5000 and len(s["x"]) <= 500 + 500 // 4
    assert all(b > a for a, b in zip(s["x"], s["x"][1:]))
    while run.refresh(max_bytes=50_000):
        pass
    assert run.summary()["loading"] is None
    full = Run("r", tmp_path / "r")
    read_all(full)
    assert run.display_series(points=500)["avg_loss"] == full.display_series(points=500)["avg_loss"]


def test_runset_finds_nested_runs_and_hidden(tmp_path):
    write_metrics_run(tmp_path / "a", range(1, 3))
    write_log_csv_run(tmp_path / "group" / "b", range(1, 3))
    (tmp_path / "empty").mkdir()
    runs = RunSet(tmp_path)
    runs.scan()
    assert [r.id for r in runs.all()] == ["a", "group/b"]
    runs.get("a").set_hidden(True)
    assert (tmp_path / "a" / "_HIDE").exists() and runs.get("a").hidden
    runs.get("a").set_hidden(False)
    assert not (tmp_path / "a" / "_HIDE").exists()
    (tmp_path / "a" / "metrics.jsonl").unlink()
    runs.scan()
    assert [r.id for r in runs.all()] == ["group/b"]


@pytest.mark.parametrize("name", ["", "..", "a/..", "../x", "/abs", "a//b", ".", "a/./b", "a b", "a\\b", "é",
                                  "a/b/c/d/e", "x" * 129, None, 3])
def test_unsafe_run_names(name):
    with pytest.raises(ValueError):
        check_run_name(name)


@pytest.mark.parametrize("name", ["yolov3", "exp-1/yolov3_giou.v2", "a/b/c/d"])
def test_safe_run_names(name):
    assert check_run_name(name) == name


@pytest.mark.slow
def test_500k_iterations_open_quickly(tmp_path):
    """The board answers for a 500k-iteration run at once (sampled), with a few thousand points a series."""
    write_big_metrics_run(tmp_path / "big", 500_000)
    write_metrics_run(tmp_path / "small", range(1, 101))
    start = time.monotonic()  # board start-up included
    httpd = make_server(tmp_path, port=0).start_background()
    try:
        with urllib.request.urlopen(httpd.url + "/api/state", timeout=30) as response:
            state = json.loads(response.read())
        elapsed = time.monotonic() - start
    finally:
        httpd.close()
    big = state["series"]["big"]
    assert elapsed < 5.0, f"first answer took {elapsed:.2f} s"
    assert len(big["x"]) <= 4000
    assert big["x"][-1] >= 499_000 and big["x"][0] <= 1000
    assert math.isclose(big["avg_loss"][-1], 2 + 8 / (1 + big["x"][-1] / 1000), rel_tol=0.01)
    assert len(big["layers"]["iou"]) == 3
    assert state["series"]["small"]["points"] == 100
