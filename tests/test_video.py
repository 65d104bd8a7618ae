"""Video and streams: Detector.stream over a video file, a camera index or frames, and `detector demo`."""
from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import require_reference
from pydarknet import Detector
from pydarknet.cli import main
from pydarknet.draw import class_color, label_layout
from pydarknet.errors import DarknetIOError, ImageError

PHOTOS = ["dog.jpg", "horses.jpg", "person.jpg"]
SIZE = (320, 240)   # not square, not the network's size
FPS = 12.0


@pytest.fixture(scope="module")
def model(reference_dir):
    require_reference(reference_dir, "yolov3-tiny.weights", "images")
    weights = reference_dir / "yolov3-tiny.weights"
    return {"cfg": reference_dir / "yolov3-tiny.cfg", "weights": weights, "names": reference_dir / "coco.names",
            "images": reference_dir / "images"}


@pytest.fixture(scope="module")
def detector(model):
    with Detector(model["cfg"], model["weights"], names=model["names"]) as det:
        yield det


@pytest.fixture(scope="module")
def video(model, tmp_path_factory) -> Path:
    """Six frames (each photo twice) at 12 fps, 320x240, written with cv2.VideoWriter."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    for name in PHOTOS:
        frame = cv2.resize(cv2.imread(str(model["images"] / name)), SIZE, interpolation=cv2.INTER_AREA)
        writer.write(frame)
        writer.write(frame)
    writer.release()
    return path


def decoded_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


@pytest.fixture
def tiny_detector(tiny_cfg):
    with Detector(tiny_cfg, None) as det:
        yield det


def test_video_file_gives_one_result_per_frame_equal_to_detect(detector, video):
    expected = decoded_frames(video)
    assert len(expected) == 6
    with detector.stream(video) as stream:
        assert stream.fps == pytest.approx(FPS)
        results = list(stream)
    assert len(results) == len(expected)
    for (frame, detections), want in zip(results, expected):
        assert np.array_equal(frame, want)
        assert detections == detector.detect(want)
    assert {d.name for _, dets in results for d in dets} >= {"dog", "horse", "person"}


def test_stream_thresholds_like_detect(detector, video):
    with detector.stream(str(video), thresh=0.6, nms=0.3) as stream:
        for frame, detections in stream:
            assert detections == detector.detect(frame, thresh=0.6, nms=0.3)
            assert all(d.prob > 0.6 for d in detections)


def test_frames_are_decoded_on_a_background_thread_ahead_of_the_network(tiny_detector):
    produced = []

    def frames():
        for i in range(6):
            produced.append(threading.current_thread())
            yield np.full((48, 80, 3), 40 * i, np.uint8)

    stream = tiny_detector.stream(frames(), prefetch=3)
    iterator = iter(stream)
    first, detections = next(iterator)
    assert first.shape == (48, 80, 3) and isinstance(detections, list)
    deadline = time.monotonic() + 5
    while len(produced) < 4 and time.monotonic() < deadline:  # the reader fills the queue meanwhile
        time.sleep(0.01)
    assert len(produced) >= 4
    assert all(t is not threading.main_thread() for t in produced)
    rest = list(iterator)
    assert len(rest) == 5
    assert [int(f[0, 0, 0]) for f, _ in rest] == [40, 80, 120, 160, 200]


def test_any_iterable_of_frames_with_grey_and_bgra(tiny_detector):
    grey = np.zeros((30, 30), np.uint8)
    bgra = np.zeros((30, 40, 4), np.uint8)
    results = list(tiny_detector.stream([grey, bgra]))
    assert [f.shape for f, _ in results] == [(30, 30, 3), (30, 40, 3)]


def test_closing_early_stops_the_reader(tiny_detector):
    def endless():
        while True:
            yield np.zeros((32, 32, 3), np.uint8)

    stream = tiny_detector.stream(endless(), prefetch=2)
    for _ in stream:
        break
    stream.close()
    assert not stream._thread.is_alive()


def test_missing_video_is_a_clear_error(tiny_detector, tmp_path):
    missing = tmp_path / "nowhere.mp4"
    with pytest.raises(FileNotFoundError, match="nowhere.mp4: video not found"):
        tiny_detector.stream(missing)


def test_unreadable_video_is_a_clear_error(tiny_detector, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video\n" * 100)
    with pytest.raises(ImageError, match="broken.mp4: cannot read video"):
        tiny_detector.stream(broken)


def test_unavailable_camera_is_a_clear_error(tiny_detector):
    with pytest.raises(DarknetIOError, match="camera 97"):
        tiny_detector.stream(97)


def test_bad_frame_in_an_iterable_is_raised_to_the_consumer(tiny_detector):
    frames = [np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.float32)]
    with pytest.raises(ValueError, match="uint8"):
        list(tiny_detector.stream(frames))
    with pytest.raises(TypeError, match="iterable of frames"):
        tiny_detector.stream(3.5)


# --- detector demo ----------------------------------------------------------------------------------------

def demo(model, tmp_path, *args):
    data = tmp_path / "coco.data"
    data.write_text(f"classes=80\nnames={model['names']}\n")
    return CliRunner().invoke(main, ["detector", "demo", str(data), str(model["cfg"]), str(model["weights"]),
                                     *map(str, args)])


def test_demo_writes_an_annotated_video_of_the_source_size_and_rate(model, detector, video, tmp_path):
    out = tmp_path / "out" / "annotated.mp4"
    result = demo(model, tmp_path, video, "-dont_show", "-out_filename", out, "-thresh", "0.25")
    assert result.exit_code == 0, result.output
    assert "6 frames" in result.output
    capture = cv2.VideoCapture(str(out))
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == SIZE
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    capture.release()
    written = decoded_frames(out)
    assert len(written) == 6
    assert [p.name for p in out.parent.iterdir()] == ["annotated.mp4"]  # no partial file left
    # The first frame carries the most probable detection's label on its class colour.
    source = decoded_frames(video)[0]
    top = detector.detect(source)[0]
    box = tuple(int(min(max(round(v), 0), lim - 1)) for v, lim in zip(top.corners, SIZE * 2))
    x0, y0, x1, y1 = label_layout(f"{top.name} {top.prob:.2f}", box, *SIZE).rect
    patch = written[0][y0:y1, x0:x1].astype(int)
    close = np.abs(patch - class_color(top.class_id, 80)).max(axis=2) < 50
    assert close.mean() > 0.5, close.mean()


def test_demo_without_a_display_still_runs(model, video, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "shown.avi"
    result = demo(model, tmp_path, video, "-out_filename", out)
    assert result.exit_code == 0, result.output
    assert len(decoded_frames(out)) == 6


def test_demo_missing_video_is_an_error_and_writes_nothing(model, tmp_path):
    out = tmp_path / "never.mp4"
    result = demo(model, tmp_path, tmp_path / "missing.mp4", "-dont_show", "-out_filename", out)
    assert result.exit_code == 1
    assert "missing.mp4: video not found" in result.output
    assert not any(tmp_path.glob("*never*"))


def test_demo_missing_camera_names_it(model, tmp_path):
    result = demo(model, tmp_path, "-c", "97", "-dont_show")
    assert result.exit_code == 1
    assert "camera 97" in result.output


def test_demo_with_a_display_variable_but_a_headless_opencv(model, video, tmp_path, monkeypatch, caplog):
    if not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()):
        pytest.skip("this OpenCV has a GUI backend; the headless fallback is not reachable")
    monkeypatch.setenv("DISPLAY", ":97")
    out = tmp_path / "shown.mp4"
    with caplog.at_level("WARNING", logger="pydarknet"):
        result = demo(model, tmp_path, video, "-out_filename", out)
    assert result.exit_code == 0, result.output
    assert "running as with -dont_show" in caplog.text
    assert len(decoded_frames(out)) == 6


def test_demo_prints_frames_per_second_on_a_terminal(tiny_cfg, capsys, monkeypatch):
    from pydarknet.video import run_demo

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    frames = [np.full((40, 60, 3), v, np.uint8) for v in (10, 120, 240)]
    assert run_demo(tiny_cfg, None, frames, show=False) == 3
    out = capsys.readouterr().out
    assert out.count("\rFPS:") == 3 and "frames: 3 frames in" in out


def test_demo_prints_no_live_line_into_a_file(tiny_cfg, capsys):
    from pydarknet.video import run_demo

    run_demo(tiny_cfg, None, [np.zeros((40, 60, 3), np.uint8)] * 2, show=False)
    out = capsys.readouterr().out
    assert "FPS" not in out and "2 frames in" in out
