"""Darkboard's HTTP server: the page, a JSON API over :mod:`.runs`, and metrics ingestion.

Endpoints
---------
``GET /``                       the dashboard (``static/index.html``); ``GET /static/<file>`` its assets.
``GET /api/state``              ``{"runs": [summary...], "series": {id: display series}}``. ``points=N`` caps the
                                points per series; ``known={"id": version, ...}`` (JSON) leaves out runs the
                                page already has in that version, so an idle poll costs a few hundred bytes.
``POST /api/hide``              ``{"run": id, "hidden": bool}``: create or delete the run's ``_HIDE`` file (with the
                                ``X-Board`` header, and the token when the board has one).
``POST /api/ingest``            a batch from :class:`pydarknet.board.client.MetricsSender`, see :meth:`Board.ingest`.
``GET /api/health``             ``{"ok": true}``.

Safety: ingestion needs ``Authorization: Bearer <token>`` and is off (403) without a configured token; run names
are ``/``-separated segments of ``[A-Za-z0-9._-]`` (no ``.``/``..``) and must resolve inside the folder; bodies
over ``max_body`` bytes get 413 unread; anything malformed gets a 4xx and the batch is stored all or nothing.
State-changing requests from the page carry an ``X-Board`` header, which a foreign web page cannot add to a
cross-origin request without a CORS pre-flight this server never grants; on a board started with a token they
need the token too. A connection idle for ``idle_timeout`` seconds is closed, so idle clients cannot hold the
server's threads forever.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .runs import (DISPLAY_POINTS, NAME_SEGMENT, LOG_FILE, MAP_FILE, METRICS_FILE, RunSet, check_run_name,
                   parse_log_csv_line, parse_map_line)

__all__ = ["Board", "BoardError", "BoardHTTPServer", "make_server", "validate_run_name", "MAX_BODY", "STATIC_DIR", "TOKEN_ENV"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
TOKEN_ENV = "PYDARKNET_BOARD_TOKEN"
MAX_BODY = 8 << 20
IDLE_TIMEOUT = 30.0
INGEST_STATE = ".board-ingest.json"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".png": "image/png", ".txt": "text/plain; charset=utf-8"}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


class BoardError(Exception):
    """A request the board refuses; carries the HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def validate_run_name(name) -> str:
    """:func:`.runs.check_run_name` with an HTTP 400."""
    try:
        return check_run_name(name)
    except ValueError as e:
        raise BoardError(400, f"run: {e}") from None


_NUMERIC_FIELDS = {"loss", "avg_loss", "lr", "images", "seconds", "data_seconds", "time"}


def _check_metrics_object(obj) -> None:
    if not isinstance(obj, dict):
        raise ValueError("a metrics line must be a JSON object")
    if "event" in obj:
        if not isinstance(obj["event"], str):
            raise ValueError("'event' must be a string")
        return
    it = obj.get("iteration")
    if isinstance(it, bool) or not isinstance(it, int) or it < 0:
        raise ValueError("'iteration' must be a non-negative integer")
    for key in _NUMERIC_FIELDS & obj.keys():
        if not _is_number_or_null(obj[key]):
            raise ValueError(f"field {key!r} must be a number")
    layers = obj.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise ValueError("'layers' must be a list of objects")
    for layer in layers:
        for key, value in layer.items():
            if not _is_number_or_null(value):
                raise ValueError(f"layer field {key!r} must be a number")


def _is_number_or_null(value) -> bool:
    return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_lines(lines, name: str, parse) -> list[str]:
    if not isinstance(lines, list):
        raise ValueError(f"'{name}' must be a list of strings")
    for line in lines:
        if not isinstance(line, str) or "\n" in line or "\r" in line:
            raise ValueError(f"'{name}' entries must be single-line strings")
        parse(line)
    return lines


class Board:
    """The state behind the server: the runs under ``root``, a reader thread that keeps them current, and
    ingestion into ``root``. Usable without HTTP (tests, export)."""

    def __init__(self, root, token: str | None = None, poll_interval: float = 1.0,
                 preview_bytes: int | None = None):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.token = token or None
        self.poll_interval = poll_interval
        kwargs = {} if preview_bytes is None else {"preview_bytes": preview_bytes}
        self.runs = RunSet(self.root, **kwargs)
        self._ingest_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._rescan = threading.Event()  # set by ingestion, which may create a run folder
        self._thread: threading.Thread | None = None
        self.runs.scan()
        self.runs.refresh()  # small runs complete, large ones sampled, before the first request

    # ----- background reading ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._reader_loop, name="darkboard-reader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _reader_loop(self) -> None:
        last_scan = 0.0
        while not self._stop.is_set():
            try:
                if self._rescan.is_set() or time.monotonic() - last_scan > 2.0:
                    self._rescan.clear()
                    self.runs.scan()
                    last_scan = time.monotonic()
                backlog = self.runs.refresh()
            except Exception:  # keep the dashboard alive whatever a file contains
                log.exception("darkboard: reading runs failed")
                backlog = False
            if not backlog:
                self._wake.wait(self.poll_interval)
                self._wake.clear()

    # ----- API ---------------------------------------------------------------------------------------------
    def state(self, points: int = DISPLAY_POINTS, known: dict | None = None) -> dict:
        known = known or {}
        runs, series = [], {}
        for run in self.runs.all():
            summary = run.summary()
            runs.append(summary)
            if not summary["hidden"] and known.get(run.id) != summary["version"]:
                series[run.id] = run.display_series(points)
        return {"runs": runs, "series": series, "root": str(self.root), "time": time.time(),
                "ingest": self.token is not None}

    def set_hidden(self, run_id, hidden: bool) -> dict:
        run = self.runs.get(run_id) if isinstance(run_id, str) else None
        if run is None:
            raise BoardError(404, f"no run {run_id!r}")
        run.set_hidden(bool(hidden))
        self._wake.set()
        return run.summary()

    def check_token(self, header: str | None) -> None:
        if self.token is None:
            raise BoardError(403, f"ingestion is disabled: start the board with --token or ${TOKEN_ENV}")
        given = (header or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise BoardError(401, "missing or wrong token")

    def ingest(self, batch) -> dict:
        """Store one batch ``{"run", "sender", "seq", "metrics": [obj], "map": [str], "log": [str]}`` as if the
        training had written it locally. ``(sender, seq)`` identifies the batch: a batch whose seq is not above
        the last one stored for that sender is acknowledged but not stored again (a retry after a lost reply).
        """
        if not isinstance(batch, dict):
            raise BoardError(400, "the body must be a JSON object")
        run_name = validate_run_name(batch.get("run"))
        sender, seq = batch.get("sender"), batch.get("seq")
        if not isinstance(sender, str) or not NAME_SEGMENT.fullmatch(sender):
            raise BoardError(400, "sender: an id of [A-Za-z0-9._-] is required")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise BoardError(400, "seq: a non-negative integer is required")
        try:
            metrics = batch.get("metrics", [])
            if not isinstance(metrics, list):
                raise ValueError("'metrics' must be a list of objects")
            for obj in metrics:
                _check_metrics_object(obj)
            maps = _check_lines(batch.get("map", []), "map", parse_map_line)
            logs = _check_lines(batch.get("log", []), "log", parse_log_csv_line)
        except ValueError as e:
            raise BoardError(400, f"rejected batch {seq} for {run_name}: {e}") from None
        run_dir = self.root / run_name
        if not str(run_dir.resolve()).startswith(str(self.root) + os.sep):
            raise BoardError(400, f"run: {run_name!r} resolves outside the board folder")
        with self._ingest_lock:
            run_dir.mkdir(parents=True, exist_ok=True)
            state_path = run_dir / INGEST_STATE
            try:
                state = json.loads(state_path.read_text())
            except (OSError, ValueError):
                state = {}
            if not isinstance(state, dict):
                state = {}
            if seq <= state.get(sender, -1):
                return {"stored": 0, "duplicate": True}
            for name, lines in ((METRICS_FILE, [json.dumps(o, separators=(",", ":")) for o in metrics]),
                                (MAP_FILE, maps), (LOG_FILE, logs)):
                if lines:
                    with open(run_dir / name, "a", encoding="utf-8") as f:
                        f.write("".join(line + "\n" for line in lines))
            state[sender] = seq
            tmp = state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, state_path)
        self._rescan.set()
        self._wake.set()
        return {"stored": len(metrics) + len(maps) + len(logs), "duplicate": False}


class _Handler(BaseHTTPRequestHandler):
    server_version = "darkboard"
    protocol_version = "HTTP/1.1"
    board: Board  # set on the subclass BoardHTTPServer makes
    max_body: int

    def log_message(self, fmt, *args):  # route the access log to logging, quietly
        log.debug("%s " + fmt, self.address_string(), *args)

    # ----- plumbing ----------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise BoardError(411, "send a Content-Length, not a chunked body")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise BoardError(411, "Content-Length required")
        if int(length) > self.max_body:
            self.close_connection = True  # the body stays unread
            raise BoardError(413, f"body over {self.max_body} bytes")
        return self.rfile.read(int(length))

    def _json_body(self):
        try:
            return json.loads(self._body())
        except (ValueError, RecursionError):
            raise BoardError(400, "the body is not valid UTF-8 JSON") from None

    def _check_host(self) -> None:
        """On a loopback address, answer only requests addressed to a loopback name: a web page that rebinds
        its own domain name to 127.0.0.1 (DNS rebinding) must not read or change the board."""
        if not self.server.loopback:
            return
        try:
            host = urlsplit("//" + (self.headers.get("Host") or "")).hostname
        except ValueError:
            host = None
        if host not in _LOOPBACK_NAMES:
            raise BoardError(403, "unexpected Host header")

    def _guarded(self, fn) -> None:
        try:
            self._check_host()
            fn()
        except BoardError as e:
            self._error(e.status, str(e))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log.exception("darkboard: %s %s failed", self.command, self.path)
            try:
                self._error(500, "internal error (see the board's log)")
            except OSError:
                self.close_connection = True

    # ----- routes ------------------------------------------------------------------------------------------
    def do_GET(self):
        self._guarded(self._get)

    def do_HEAD(self):
        self._guarded(self._get)

    def do_POST(self):
        self._guarded(self._post)

    def _get(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            return self._static("index.html")
        if url.path.startswith("/static/"):
            return self._static(url.path[len("/static/"):])
        if url.path == "/api/health":
            return self._json(200, {"ok": True})
        if url.path == "/api/state":
            query = parse_qs(url.query)
            try:
                points = int(query.get("points", [DISPLAY_POINTS])[0])
                known = json.loads(query.get("known", ["{}"])[0])
            except (ValueError, RecursionError):  # RecursionError: brackets nested thousands deep
                raise BoardError(400, "points must be an integer and known a JSON object") from None
            if not isinstance(known, dict):
                raise BoardError(400, "known must be a JSON object")
            return self._json(200, self.board.state(min(max(points, 10), 20000), known))
        raise BoardError(404, "not found")

    def _static(self, name: str) -> None:
        allowed = {p.name for p in STATIC_DIR.iterdir() if p.is_file()}
        if name not in allowed:
            raise BoardError(404, "not found")
        path = STATIC_DIR / name
        self._send(200, path.read_bytes(), _CONTENT_TYPES.get(path.suffix, "application/octet-stream"))

    def _post(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/api/ingest":
            self.board.check_token(self.headers.get("Authorization"))
            return self._json(200, self.board.ingest(self._json_body()))
        if url.path == "/api/hide":
            if self.headers.get("X-Board") != "1":
                raise BoardError(403, "missing X-Board header")
            if self.board.token is not None:  # a board that takes a token changes nothing without it
                self.board.check_token(self.headers.get("Authorization"))
            body = self._json_body()
            if not isinstance(body, dict):
                raise BoardError(400, "expected {\"run\": ..., \"hidden\": ...}")
            return self._json(200, self.board.set_hidden(body.get("run"), body.get("hidden", True)))
        raise BoardError(404, "not found")


class BoardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, board: Board, host: str, port: int, max_body: int = MAX_BODY,
                 idle_timeout: float | None = IDLE_TIMEOUT):
        # `timeout` is the socket timeout of each connection: a read that waits longer ends the connection.
        handler = type("Handler", (_Handler,), {"board": board, "max_body": max_body, "timeout": idle_timeout})
        super().__init__((host, port), handler)
        self.board = board
        self.loopback = ipaddress.ip_address(self.server_address[0]).is_loopback
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def start_background(self) -> "BoardHTTPServer":
        """Serve from a daemon thread; stop with :meth:`close`."""
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), name="darkboard-http",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (if serving from :meth:`start_background`), free the port, stop the reader thread."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
        self.board.stop()


def make_server(root, host: str = "127.0.0.1", port: int = 6006, token: str | None = None, *,
                poll_interval: float = 1.0, max_body: int = MAX_BODY, preview_bytes: int | None = None,
                idle_timeout: float | None = IDLE_TIMEOUT) -> BoardHTTPServer:
    """A board over ``root`` listening on ``host:port`` (port 0 picks a free one), its reader thread started.
    Then ``serve_forever()`` (and ``close()`` after it), or ``start_background()`` ... ``close()``."""
    board = Board(root, token=token, poll_interval=poll_interval, preview_bytes=preview_bytes)
    httpd = BoardHTTPServer(board, host, port, max_body, idle_timeout)
    board.start()
    return httpd
