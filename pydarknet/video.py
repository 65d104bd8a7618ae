"""Video and streams: ``Detector.stream(source)`` and Darknet's ``detector demo``.

A source is a video file, a camera index, or any iterable of BGR frames. Frames are decoded on a background
thread into a small queue while the network works on the previous one. The demo writes the annotated frames
to a video of the source's size and frame rate (to a temporary name, renamed when complete).
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .errors import DarknetIOError, ImageError
from .image import as_bgr

__all__ = ["DetectionStream", "VideoOutput", "run_demo"]

log = logging.getLogger("pydarknet")

_END = object()
# Container -> codec that OpenCV's FFmpeg backend writes without extra libraries.
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class _Failure:
    """An exception raised on the reader thread, handed to the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _describe(source) -> str:
    return f"camera {source}" if isinstance(source, int) else str(source)


def _open_capture(source) -> tuple[cv2.VideoCapture, np.ndarray | None, float | None]:
    """Open a video file or camera and read its first frame; clear errors for what cannot be read."""
    if isinstance(source, int):
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            capture.release()
            raise DarknetIOError(f"camera {source}: cannot open it (no such device, or it is busy)")
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: video not found")
        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            capture.release()
            raise ImageError(f"{path}: cannot read video (corrupt or unsupported format)")
    ok, first = capture.read()
    if not ok or first is None:
        capture.release()
        if isinstance(source, int):
            raise DarknetIOError(f"camera {source}: opened but gives no frames")
        raise ImageError(f"{source}: cannot read video (no decodable frame)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    return capture, first, (fps if fps and fps > 0 and np.isfinite(fps) else None)


class DetectionStream:
    """Iterate to get ``(frame, detections)`` for every frame of `source`, in order.

    ``source``: a video file path, a camera index (int), or an iterable of HxWx3 uint8 BGR frames.
    ``fps`` is the source's frame rate when it has one (video files, most cameras), else None.
    Use it as a context manager, or call ``close()``, to stop the reader early.
    """

    def __init__(self, detector, source, thresh: float = 0.25, nms: float = 0.45, prefetch: int = 4):
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        self.detector, self.thresh, self.nms = detector, thresh, nms
        self.name = _describe(source) if isinstance(source, (int, str, os.PathLike)) else "frames"
        self._capture = None
        if isinstance(source, (int, str, os.PathLike)) and not isinstance(source, bool):
            self._capture, first, self.fps = _open_capture(source if isinstance(source, int) else os.fspath(source))
            frames = self._capture_frames(first)
        elif isinstance(source, np.ndarray) and source.ndim == 3:
            raise ValueError("stream() takes a video, a camera index or an iterable of frames; "
                             "use detect() for one image")
        else:
            try:
                frames = iter(source)
            except TypeError:
                raise TypeError(f"stream source must be a video path, a camera index or an iterable of frames, "
                                f"not {type(source).__name__}") from None
            self.fps = None
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(frames,), name="pydarknet-frames", daemon=True)
        self._thread.start()
        self._started = False

    def _capture_frames(self, first: np.ndarray) -> Iterator[np.ndarray]:
        yield first
        while True:
            ok, frame = self._capture.read()
            if not ok:
                return
            yield frame

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, frames: Iterator) -> None:
        try:
            for frame in frames:
                if not self._put(as_bgr(frame)):
                    return
            self._put(_END)
        except BaseException as exc:  # handed over to the consumer, which raises it
            self._put(_Failure(exc))

    def __iter__(self) -> Iterator[tuple[np.ndarray, list]]:
        if self._started:
            raise RuntimeError("a DetectionStream can be iterated once")
        self._started = True
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                yield item, self.detector.detect(item, thresh=self.thresh, nms=self.nms)
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader thread and release the camera or file; may be called more than once."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> "DetectionStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoOutput:
    """Writes frames of one size to a video file; the file appears under its name only when ``close()`` is
    called after success (``discard()`` removes the partial file)."""

    def __init__(self, path: str | os.PathLike, fps: float, width: int, height: int):
        self.path = Path(path)
        fourcc = _FOURCC.get(self.path.suffix.lower())
        if fourcc is None:
            raise ValueError(f"{self.path}: unsupported video extension; use one of {', '.join(sorted(_FOURCC))}")
        self.size = (width, height)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temp = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        self._writer = cv2.VideoWriter(str(self._temp), cv2.VideoWriter_fourcc(*fourcc), fps, self.size)
        if not self._writer.isOpened():
            self._writer.release()
            self._temp.unlink(missing_ok=True)
            raise DarknetIOError(f"{self.path}: cannot open a video writer ({fourcc})")

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            raise ValueError(f"{self.path}: frame of {frame.shape[1]}x{frame.shape[0]} in a "
                             f"{self.size[0]}x{self.size[1]} video")
        self._writer.write(frame)

    def close(self) -> None:
        self._writer.release()
        os.replace(self._temp, self.path)

    def discard(self) -> None:
        self._writer.release()
        self._temp.unlink(missing_ok=True)


class _NoDisplay(Exception):
    """OpenCV cannot open a window here."""


def _show(frame: np.ndarray) -> bool:
    """Show a frame in a window; False when there is no display (a headless OpenCV or no X server)."""
    try:
        cv2.imshow("pydarknet demo", frame)
        return cv2.waitKey(1) & 0xFF not in (27, ord("q"))
    except cv2.error as exc:
        raise _NoDisplay(str(exc).strip().splitlines()[-1]) from None


def run_demo(cfg, weights, source, names=None, thresh: float = 0.25, nms: float = 0.45,
             out_filename: str | os.PathLike | None = None, show: bool = True, default_fps: float = 25.0,
             **network_options) -> int:
    """Darknet's ``detector demo``: detect on every frame of `source`, optionally show and save the annotated
    frames (same size and frame rate as the source). Prints frames per second on a terminal. Returns the
    number of frames processed."""
    from .detect import Detector  # noqa: PLC0415
    from .draw import draw_detections  # noqa: PLC0415

    if show and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and sys.platform.startswith("linux"):
        log.warning("no display: running as with -dont_show")
        show = False
    live = sys.stdout.isatty()
    output = None
    count = 0
    start = time.perf_counter()
    with Detector(cfg, weights, names=names, **network_options) as detector, \
            detector.stream(source, thresh=thresh, nms=nms) as stream:
        try:
            last = time.perf_counter()
            for frame, detections in stream:
                count += 1
                annotated = draw_detections(frame, detections, detector.num_classes) \
                    if (show or out_filename is not None) else frame
                if out_filename is not None:
                    if output is None:
                        output = VideoOutput(out_filename, stream.fps or default_fps, frame.shape[1], frame.shape[0])
                    output.write(annotated)
                now = time.perf_counter()
                if live:
                    sys.stdout.write(f"\rFPS: {1.0 / max(now - last, 1e-9):5.1f}   objects: {len(detections):3d}")
                    sys.stdout.flush()
                last = now
                if show:
                    try:
                        if not _show(annotated):
                            break
                    except _NoDisplay as exc:
                        log.warning("cannot show frames (%s): running as with -dont_show", exc)
                        show = False
        except BaseException:
            if output is not None:
                output.discard()
            raise
        if show:
            cv2.destroyAllWindows()
    if output is not None:
        output.close()
    elapsed = time.perf_counter() - start
    if live:
        sys.stdout.write("\n")
    print(f"{stream.name}: {count} frames in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.1f} fps)"
          + (f", saved {out_filename}" if output is not None else ""))
    return count
