"""Sending training metrics to a Darkboard over HTTP (``train ... --log-url URL --log-token T``).

:class:`MetricsSender` never blocks the training loop: ``send_*`` only serialises the line and puts it on a
queue. A background thread groups the queue into batches every ``interval`` seconds, appends each batch to a
spool file (``<spool_dir>/<run>.spool.jsonl``, flushed and fsynced) and then posts the batches in order. The
spool is emptied once everything is delivered; while the board is unreachable batches accumulate there and in
memory and go out when it is back, with one warning for the outage. A sender that finds a spool left by a
crashed or closed predecessor delivers it first.

Each batch carries ``(sender, seq)``: the sender id is random per process, seq counts its batches. The board
stores a batch only if seq is above the last one it stored for that sender, so a batch retried after a lost
reply, or re-sent from the spool after a crash, is never stored twice.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from .runs import check_run_name

__all__ = ["MetricsSender", "SPOOL_ENV", "default_spool_dir"]

log = logging.getLogger(__name__)

SPOOL_ENV = "PYDARKNET_SPOOL_DIR"
#: HTTP statuses that mean "this batch will never be accepted": it is dropped with an error, not retried.
_PERMANENT = {400, 413, 422}


def default_spool_dir() -> Path:
    """``$PYDARKNET_SPOOL_DIR``, else ``$XDG_CACHE_HOME/pydarknet/spool`` (``~/.cache/pydarknet/spool``)."""
    if os.environ.get(SPOOL_ENV):
        return Path(os.environ[SPOOL_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pydarknet" / "spool"


class _Batch:
    __slots__ = ("seq", "sender", "body", "lines")

    def __init__(self, sender: str, seq: int, body: bytes, lines: int):
        self.sender, self.seq, self.body, self.lines = sender, seq, body, lines


class MetricsSender:
    """Ship one run's ``metrics.jsonl`` objects, ``map.txt`` lines and ``log.csv`` lines to a board.

    ``url`` is the board's base address (``http://host:6006``); ``run`` the run name on the board (segments of
    ``[A-Za-z0-9._-]`` separated by ``/``). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, url: str, token: str, run: str, *, spool_dir=None, interval: float = 0.5,
                 timeout: float = 5.0, max_batch_bytes: int = 2 << 20, max_retry_delay: float = 30.0):
        self.run = check_run_name(run)
        base = url.rstrip("/")
        self.url = base if base.endswith("/api/ingest") else base + "/api/ingest"
        self.token = token
        self.interval = interval
        self.timeout = timeout
        self.max_batch_bytes = max_batch_bytes
        self.max_retry_delay = max_retry_delay
        self.spool_path = Path(spool_dir or default_spool_dir()) / (self.run.replace("/", "__") + ".spool.jsonl")
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        self.sender_id = uuid.uuid4().hex
        self.delivered_lines = 0
        self.dropped_lines = 0
        self._seq = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: list[_Batch] = self._load_spool()
        self._spool_dirty = bool(self._pending)
        self._closing = threading.Event()
        self._deadline = None
        self._outage_since = None
        self._thread = threading.Thread(target=self._loop, name=f"metrics-sender:{run}", daemon=True)
        self._thread.start()

    # ----- the training side -------------------------------------------------------------------------------
    def send_metrics(self, obj: dict) -> None:
        """Queue one ``metrics.jsonl`` object (serialised now, so the caller may reuse the dict)."""
        self._put("metrics", json.dumps(obj, separators=(",", ":")))

    def send_map(self, row: str) -> None:
        """Queue one ``map.txt`` line (without newline)."""
        self._put("map", json.dumps(str(row).rstrip("\r\n")))

    def send_log(self, line: str) -> None:
        """Queue one ``log.csv`` line (without newline)."""
        self._put("log", json.dumps(str(line).rstrip("\r\n")))

    def _put(self, kind: str, text: str) -> None:
        if self._closing.is_set():
            raise RuntimeError("MetricsSender is closed")
        self._queue.put((kind, text))

    def close(self, timeout: float = 5) -> bool:
        """Deliver what is queued, waiting at most ``timeout`` seconds. Returns whether everything was delivered;
        what was not stays in the spool file for the next sender of this run. Calling it twice is harmless."""
        if not self._closing.is_set():
            self._deadline = time.monotonic() + timeout
            self._closing.set()
        self._thread.join(timeout + 1.0)
        left = sum(b.lines for b in self._pending)
        if left:
            log.warning("metrics for run %s: %d lines not delivered to %s; they are kept in %s and will be sent "
                        "by the next MetricsSender for this run", self.run, left, self.url, self.spool_path)
        return left == 0 and self._queue.empty()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----- the background thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        delay = 0.0
        while True:
            closing = self._closing.wait(max(self.interval, delay))
            try:
                self._form_batches()
                delay = 0.0 if self._deliver() else min(max(2 * delay, 0.5), self.max_retry_delay)
            except Exception:  # never let the sender die silently: log and keep the data
                log.exception("metrics sender for run %s failed; retrying", self.run)
                delay = self.max_retry_delay
            if closing:
                left = self._deadline - time.monotonic()
                if not self._pending or left <= 0:
                    return
                time.sleep(min(0.2, left))

    def _form_batches(self) -> None:
        items = {"metrics": [], "map": [], "log": []}
        size = 0
        batches = []
        while True:
            try:
                kind, text = self._queue.get_nowait()
            except queue.Empty:
                break
            items[kind].append(text)
            size += len(text) + 1
            if size >= self.max_batch_bytes:
                batches.append(self._make_batch(items))
                items = {"metrics": [], "map": [], "log": []}
                size = 0
        if size:
            batches.append(self._make_batch(items))
        if batches:
            with open(self.spool_path, "ab") as f:
                f.write(b"".join(b.body + b"\n" for b in batches))
                f.flush()
                os.fsync(f.fileno())
            self._pending.extend(batches)
            self._spool_dirty = True

    def _make_batch(self, items: dict) -> _Batch:
        seq, self._seq = self._seq, self._seq + 1
        head = json.dumps({"run": self.run, "sender": self.sender_id, "seq": seq})[:-1]
        body = head + "".join(f',"{kind}":[{",".join(texts)}]' for kind, texts in items.items()) + "}"
        return _Batch(self.sender_id, seq, body.encode(), sum(len(t) for t in items.values()))

    def _load_spool(self) -> list[_Batch]:
        """Batches a previous sender of this run left undelivered (a torn last line is ignored)."""
        batches = []
        try:
            raw = self.spool_path.read_bytes()
        except FileNotFoundError:
            return batches
        for line in raw.splitlines():
            try:
                obj = json.loads(line)
                lines = sum(len(obj.get(k, [])) for k in ("metrics", "map", "log"))
                batches.append(_Batch(obj["sender"], obj["seq"], line, lines))
            except (ValueError, KeyError, TypeError):
                log.warning("metrics spool %s: skipping a damaged batch", self.spool_path)
        if batches:
            log.info("metrics for run %s: %d batches left in %s will be sent first", self.run, len(batches),
                     self.spool_path)
        return batches

    def _deliver(self) -> bool:
        """Post pending batches in order; returns False if the board could not be reached."""
        while self._pending:
            batch = self._pending[0]
            timeout = self.timeout
            if self._deadline is not None:
                timeout = max(0.1, min(timeout, self._deadline - time.monotonic()))
            status, reason = self._post(batch.body, timeout)
            if status == 200:
                self.delivered_lines += batch.lines
            elif status in _PERMANENT:
                self.dropped_lines += batch.lines
                log.error("metrics for run %s: the board rejected a batch of %d lines (%s); dropped",
                          self.run, batch.lines, reason)
            else:
                if self._outage_since is None:
                    self._outage_since = time.monotonic()
                    log.warning("metrics for run %s: board %s not reachable (%s); keeping lines in %s and "
                                "retrying", self.run, self.url, reason, self.spool_path)
                return False
            self._pending.pop(0)
        if self._outage_since is not None:
            log.info("metrics for run %s: board reachable again after %.0f s, backlog delivered", self.run,
                     time.monotonic() - self._outage_since)
            self._outage_since = None
        if self._spool_dirty:  # everything delivered: empty the spool
            with open(self.spool_path, "wb"):
                pass
            self._spool_dirty = False
        return True

    def _post(self, body: bytes, timeout: float) -> tuple[int, str]:
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
                return response.status, "ok"
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("error", "")
            except (ValueError, AttributeError, OSError):
                detail = ""
            return e.code, f"HTTP {e.code} {detail}".strip()
        except (urllib.error.URLError, OSError, ValueError) as e:
            return 0, str(getattr(e, "reason", e))
