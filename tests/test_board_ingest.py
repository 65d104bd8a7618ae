"""Darkboard over HTTP on 127.0.0.1: ingestion safety, hiding, and MetricsSender delivery through outages."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from board_fixtures.runs import metrics_line, write_metrics_run
from pydarknet.board.client import MetricsSender
from pydarknet.board.server import make_server

TOKEN = "s3cret-token"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def board(tmp_path):
    httpd = make_server(tmp_path / "backup", port=0, token=TOKEN, poll_interval=0.1).start_background()
    yield httpd
    httpd.close()


def request(url, body=None, token=TOKEN, headers=None, method=None):
    """(status, decoded JSON) of a request; 4xx/5xx do not raise."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=h, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def batch(run="exp/r1", seq=0, sender="abc", metrics=(), maps=(), logs=()):
    return {"run": run, "sender": sender, "seq": seq, "metrics": list(metrics), "map": list(maps), "log": list(logs)}


def lines(path):
    return path.read_text().splitlines() if path.exists() else []


def alive(httpd):
    return request(httpd.url + "/api/health")[0] == 200


def test_ingestion_disabled_without_token(tmp_path):
    httpd = make_server(tmp_path, port=0).start_background()
    try:
        status, body = request(httpd.url + "/api/ingest", batch(metrics=[{"iteration": 1}]))
        assert status == 403 and "disabled" in body["error"]
        assert not (tmp_path / "exp").exists()
    finally:
        httpd.close()


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x"])
def test_wrong_or_missing_token_refused(board, token):
    status, _ = request(board.url + "/api/ingest", batch(metrics=[{"iteration": 1}]), token=token)
    assert status == 401
    assert not (board.board.root / "exp").exists()


def test_accepted_batch_is_stored_like_local_files(board):
    log_line = "A0.5,G0.4,I1.0,C2.0,T3.0,BATCH,1,500200,3.5"
    status, body = request(board.url + "/api/ingest", batch(
        metrics=[json.loads(metrics_line(1)), json.loads(metrics_line(2))],
        maps=["iou,100,0.3,0.5,0.45,0.4,0.35,0.3,0.25,0.2,0.15,0.1,0.05"], logs=[log_line]))
    assert status == 200 and body == {"stored": 4, "duplicate": False}
    run_dir = board.board.root / "exp" / "r1"
    assert [json.loads(l)["iteration"] for l in lines(run_dir / "metrics.jsonl")] == [1, 2]
    assert lines(run_dir / "log.csv") == [log_line]
    assert len(lines(run_dir / "map.txt")) == 1
    # and the board shows it
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        runs = {r["id"]: r for r in request(board.url + "/api/state")[1]["runs"]}
        if runs.get("exp/r1", {}).get("iterations") == 2:
            break
        time.sleep(0.1)
    assert runs["exp/r1"]["iterations"] == 2


def test_env_token(tmp_path, monkeypatch):
    from click.testing import CliRunner  # noqa: PLC0415

    from pydarknet.board import cli  # noqa: PLC0415

    seen = {}

    class FakeServer:
        url = "http://127.0.0.1:1"

        class board:  # noqa: N801
            root = tmp_path

        def serve_forever(self):
            raise KeyboardInterrupt

        def close(self):
            seen["closed"] = True

    def fake_make_server(root, host, port, token):
        seen.update(host=host, port=port, token=token)
        return FakeServer()

    monkeypatch.setattr("pydarknet.board.server.make_server", fake_make_server)
    monkeypatch.setenv("PYDARKNET_BOARD_TOKEN", "from-env")
    result = CliRunner().invoke(cli.board, [str(tmp_path), "--port", "0"])
    assert result.exit_code == 0, result.output
    assert seen == {"host": "127.0.0.1", "port": 0, "token": "from-env", "closed": True}
    result = CliRunner().invoke(cli.board, [str(tmp_path), "--token", "flag"])
    assert seen["token"] == "flag"


@pytest.mark.parametrize("run", ["../evil", "a/../../evil", "/tmp/evil", "a//b", "..", ".", "a\\..\\b", "ok/../..",
                                 "x" * 200, "", None, 5, ["a"]])
def test_path_traversal_refused(board, run):
    status, body = request(board.url + "/api/ingest", batch(run=run, metrics=[{"iteration": 1}]))
    assert status == 400 and "run" in body["error"]
    root = board.board.root
    assert list(root.iterdir()) == [] and not (root.parent / "evil").exists()


def test_symlink_escape_refused(board, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (board.board.root / "link").symlink_to(outside)
    status, _ = request(board.url + "/api/ingest", batch(run="link/r", metrics=[{"iteration": 1}]))
    assert status == 400
    assert list(outside.iterdir()) == []


def test_oversized_body_refused_unread(board):
    host, port = board.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"POST /api/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode()
                  + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(9 << 20).encode() + b"\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    assert alive(board)


def test_oversized_body_sent_refused(tmp_path):
    httpd = make_server(tmp_path, port=0, token=TOKEN, max_body=1024).start_background()
    try:
        status, body = request(httpd.url + "/api/ingest", batch(metrics=[{"iteration": i} for i in range(200)]))
        assert status == 413 and "body over" in body["error"]
        assert alive(httpd) and not (tmp_path / "exp").exists()
    finally:
        httpd.close()


@pytest.mark.parametrize("body", [
    b"{not json", b"\xff\xfe", b"[" * 100000, b"[]", b"null",
    json.dumps(batch(metrics=[{"iteration": "7"}])).encode(),
    json.dumps(batch(metrics=[{"iteration": -1}])).encode(),
    json.dumps(batch(metrics=[{"iteration": True}])).encode(),
    json.dumps(batch(metrics=[{"iteration": 1, "loss": "high"}])).encode(),
    json.dumps(batch(metrics=[{"iteration": 1, "layers": [{"iou": [1]}]}])).encode(),
    json.dumps(batch(metrics=[{"iteration": 1}, "text"])).encode(),
    json.dumps(batch(metrics={"iteration": 1})).encode(),
    json.dumps(batch(maps=["iou,100,zero"])).encode(),
    json.dumps(batch(maps=["iou,100,inf,0.5"])).encode(),
    json.dumps(batch(maps=["iou,100,0.5\niou,200,0.6"])).encode(),
    json.dumps(batch(logs=["A0.5,BATCH,1,2"])).encode(),
    json.dumps(batch(logs=[42])).encode(),
    json.dumps({**batch(metrics=[{"iteration": 1}]), "seq": "1"}).encode(),
    json.dumps({**batch(metrics=[{"iteration": 1}]), "sender": "../x"}).encode(),
])
def test_bad_batches_get_4xx_and_store_nothing(board, body):
    # a valid line first in the same batch: batches are all or nothing
    status, reply = request(board.url + "/api/ingest", body)
    assert 400 <= status < 500 and reply.get("error")
    assert list(board.board.root.iterdir()) == []
    assert alive(board)


def test_undefined_map_row_is_accepted(board):
    # "nan" is what an evaluation without any ground truth writes; refusing it would drop the whole batch
    # (and the metrics in it) although the trainer's own map.txt has the same row.
    row = "iou,100," + ",".join(["nan"] * 11)
    status, _ = request(board.url + "/api/ingest", batch(metrics=[{"iteration": 1}], maps=[row]))
    assert status == 200 and lines(board.board.root / "exp" / "r1" / "map.txt") == [row]


def test_mixed_batch_is_all_or_nothing(board):
    status, _ = request(board.url + "/api/ingest", batch(metrics=[{"iteration": 1}, {"iteration": "2"}]))
    assert status == 400 and list(board.board.root.iterdir()) == []


def test_retried_batch_is_stored_once(board):
    b = batch(metrics=[{"iteration": 1}], seq=7)
    assert request(board.url + "/api/ingest", b) == (200, {"stored": 1, "duplicate": False})
    assert request(board.url + "/api/ingest", b) == (200, {"stored": 0, "duplicate": True})
    assert request(board.url + "/api/ingest", {**b, "seq": 3}) == (200, {"stored": 0, "duplicate": True})
    assert request(board.url + "/api/ingest", {**b, "sender": "other"})[1]["stored"] == 1
    assert len(lines(board.board.root / "exp" / "r1" / "metrics.jsonl")) == 2


def raw_get(httpd, host_header):
    with socket.create_connection(httpd.server_address[:2], timeout=10) as s:
        s.sendall(b"GET /api/state HTTP/1.1\r\nHost: " + host_header + b"\r\nConnection: close\r\n\r\n")
        return s.recv(100)


def test_dns_rebinding_refused_on_loopback(board):
    port = str(board.server_address[1]).encode()
    assert raw_get(board, b"evil.example:" + port).startswith(b"HTTP/1.1 403")
    assert raw_get(board, b"").startswith(b"HTTP/1.1 403")
    for ok in (b"127.0.0.1:" + port, b"localhost:" + port, b"LocalHost", b"[::1]:" + port):
        assert raw_get(board, ok).startswith(b"HTTP/1.1 200")


def test_unknown_routes_and_methods(board):
    assert request(board.url + "/nope")[0] == 404
    assert request(board.url + "/static/../server.py")[0] == 404
    assert request(board.url + "/api/state?points=x")[0] == 400
    assert request(board.url + "/api/nope", {"a": 1})[0] == 404
    with urllib.request.urlopen(board.url + "/") as r:
        assert b"Darkboard" in r.read() and r.headers["Content-Security-Policy"]
    assert alive(board)


def test_hide_and_unhide_over_http(board):
    write_metrics_run(board.board.root / "r", range(1, 5))
    board.board.runs.scan()
    url = board.url + "/api/hide"
    assert request(url, {"run": "r", "hidden": True})[0] == 403  # no X-Board header: not from the page
    assert request(url, {"run": "nope", "hidden": True}, headers={"X-Board": "1"})[0] == 404
    status, summary = request(url, {"run": "r", "hidden": True}, headers={"X-Board": "1"})
    assert status == 200 and summary["hidden"] and (board.board.root / "r" / "_HIDE").exists()
    state = request(board.url + "/api/state")[1]
    assert "r" not in state["series"] and [r["hidden"] for r in state["runs"]] == [True]
    request(url, {"run": "r", "hidden": False}, headers={"X-Board": "1"})
    assert not (board.board.root / "r" / "_HIDE").exists()
    assert "r" in request(board.url + "/api/state")[1]["series"]


def test_state_leaves_out_runs_the_page_already_has(board):
    write_metrics_run(board.board.root / "r", range(1, 5))
    board.board.runs.scan()
    board.board.runs.refresh()
    state = request(board.url + "/api/state")[1]
    known = json.dumps({"r": state["series"]["r"]["version"]})
    again = request(board.url + "/api/state?known=" + urllib.request.quote(known))[1]
    assert again["series"] == {} and again["runs"][0]["id"] == "r"


# ----- MetricsSender -------------------------------------------------------------------------------------------
def iterations(path):
    return [json.loads(l)["iteration"] for l in lines(path)]


def test_sender_delivers_everything(board, tmp_path):
    sender = MetricsSender(board.url, TOKEN, "exp/r1", spool_dir=tmp_path / "spool", interval=0.05)
    start = time.monotonic()
    for it in range(1, 301):
        sender.send_metrics(json.loads(metrics_line(it)))
    sender.send_map("iou,100,0.3,0.5,0.45,0.4,0.35,0.3,0.25,0.2,0.15,0.1,0.05")
    sender.send_log("A0.5,G0.4,I1.0,C2.0,T3.0,BATCH,1,500200,3.5\n")
    assert time.monotonic() - start < 1.0  # queued, not sent, on the caller's thread
    assert sender.close(timeout=10)
    run_dir = board.board.root / "exp" / "r1"
    assert iterations(run_dir / "metrics.jsonl") == list(range(1, 301))
    assert lines(run_dir / "log.csv") == ["A0.5,G0.4,I1.0,C2.0,T3.0,BATCH,1,500200,3.5"]
    assert len(lines(run_dir / "map.txt")) == 1
    assert (tmp_path / "spool" / "exp__r1.spool.jsonl").read_bytes() == b""
    assert sender.close() is True  # twice is fine
    with pytest.raises(RuntimeError):
        sender.send_metrics({"iteration": 1})


def test_sender_survives_a_board_restart(tmp_path, caplog):
    root = tmp_path / "backup"
    httpd = make_server(root, port=0, token=TOKEN).start_background()
    port = httpd.server_address[1]
    sender = MetricsSender(httpd.url, TOKEN, "r", spool_dir=tmp_path / "spool", interval=0.05,
                           timeout=2, max_retry_delay=0.3)
    caplog.set_level(logging.INFO, logger="pydarknet.board.client")
    try:
        for it in range(0, 100):
            sender.send_metrics({"iteration": it, "loss": 1.0})
        deadline = time.monotonic() + 10
        while len(lines(root / "r" / "metrics.jsonl")) < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        httpd.close()  # the board goes down
        for it in range(100, 200):
            sender.send_metrics({"iteration": it, "loss": 1.0})
            time.sleep(0.005)
        time.sleep(1.0)  # several failed attempts
        spool = (tmp_path / "spool" / "r.spool.jsonl").read_text()
        assert '"iteration":199' in spool  # kept on disk while the board is down
        httpd = make_server(root, port=port, token=TOKEN).start_background()  # back, same folder and port
        for it in range(200, 250):
            sender.send_metrics({"iteration": it, "loss": 1.0})
        assert sender.close(timeout=15)
    finally:
        httpd.close()
    assert iterations(root / "r" / "metrics.jsonl") == list(range(250))  # nothing lost, nothing twice
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not reachable" in warnings[0].getMessage()


CRASHING_TRAINER = textwrap.dedent("""
    import os, signal, sys, time
    sys.path.insert(0, {repo!r})
    from pydarknet.board.client import MetricsSender
    sender = MetricsSender({url!r}, "t", "r", spool_dir={spool!r}, interval=0.05)
    for it in range(500):
        sender.send_metrics({{"iteration": it}})
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: a crash
""")


def test_spool_survives_a_crash_and_is_delivered_later(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}"
    script = CRASHING_TRAINER.format(repo=str(REPO), url=dead_url, spool=str(tmp_path / "spool"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert b"not reachable" in proc.stderr  # the one warning
    httpd = make_server(tmp_path / "backup", port=0, token=TOKEN).start_background()
    try:
        sender = MetricsSender(httpd.url, TOKEN, "r", spool_dir=tmp_path / "spool", interval=0.05)
        sender.send_metrics({"iteration": 500})
        assert sender.close(timeout=15)
    finally:
        httpd.close()
    assert iterations(tmp_path / "backup" / "r" / "metrics.jsonl") == list(range(501))


def test_spooled_batch_already_stored_is_not_stored_twice(board, tmp_path):
    """A crash after the board stored a batch but before the spool was emptied: the re-send is a duplicate."""
    b = batch(run="r", sender="oldproc", seq=0, metrics=[{"iteration": 1}, {"iteration": 2}])
    assert request(board.url + "/api/ingest", b)[0] == 200
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "r.spool.jsonl").write_text(json.dumps(b) + "\n" + json.dumps({**b, "seq": 1, "metrics": [
        {"iteration": 3}]}) + "\n" + '{"run": "r", "sen')  # the last line torn by the crash
    sender = MetricsSender(board.url, TOKEN, "r", spool_dir=spool, interval=0.05)
    assert sender.close(timeout=10)
    assert iterations(board.board.root / "r" / "metrics.jsonl") == [1, 2, 3]


def test_sender_drops_a_batch_the_board_rejects(board, tmp_path, caplog):
    sender = MetricsSender(board.url, TOKEN, "r", spool_dir=tmp_path / "spool", interval=0.05)
    sender.send_map("not,a,map,line")
    time.sleep(0.5)
    sender.send_metrics({"iteration": 1})
    assert sender.close(timeout=10)
    assert sender.dropped_lines == 1 and any("rejected" in r.getMessage() for r in caplog.records)
    assert iterations(board.board.root / "r" / "metrics.jsonl") == [1]


def test_sender_rejects_unsafe_run_names(tmp_path):
    with pytest.raises(ValueError):
        MetricsSender("http://127.0.0.1:1", TOKEN, "../x", spool_dir=tmp_path)


def test_sender_default_spool_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PYDARKNET_SPOOL_DIR", str(tmp_path / "s"))
    sender = MetricsSender("http://127.0.0.1:1", TOKEN, "a/b", interval=0.05)
    assert sender.spool_path == tmp_path / "s" / "a__b.spool.jsonl"
    sender.send_metrics({"iteration": 1})
    assert sender.close(timeout=0.3) is False  # nobody listens: kept for the next sender
    assert '"iteration":1' in sender.spool_path.read_text()


# ----- training -> board, end to end ---------------------------------------------------------------------------
def test_training_sends_its_logs_and_map_to_a_board(board, tmp_path):
    """`train --log-url --log-token` (the CLI, hence the Python API under it): the board ends up with the same
    metrics, log.csv and map.txt rows as the run folder, and training still writes its own chart.png."""
    from conftest import TINY_CFG, make_dataset

    data = make_dataset(tmp_path / "ds", n=6, prefix="remote-run")
    cfg = tmp_path / "ds" / "sq.cfg"
    cfg.write_text(TINY_CFG)
    env = {**os.environ, "PYDARKNET_SPOOL_DIR": str(tmp_path / "spool")}
    result = subprocess.run(
        [sys.executable, "-m", "pydarknet", "train", str(data), str(cfg), "--max-batches", "3", "--map",
         "--map-every", "2", "--workers", "0", "--threads", "1", "--seed", "1",
         "--log-url", board.url, "--log-token", TOKEN],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    local = tmp_path / "ds" / "backup" / "remote-run"
    remote = board.board.root / "remote-run"
    as_objects = lambda path: [json.loads(line) for line in lines(path)]  # noqa: E731
    assert [o["iteration"] for o in as_objects(remote / "metrics.jsonl")] == [1, 2, 3]
    assert as_objects(remote / "metrics.jsonl") == as_objects(local / "metrics.jsonl")
    assert lines(remote / "log.csv") == lines(local / "log.csv") and len(lines(local / "log.csv")) == 3
    # mAP at iteration 2 (--map-every 2) and of the final weights (--map), both metrics, printed too.
    assert [row.split(",")[:2] for row in lines(local / "map.txt")] == [
        ["iou", "2"], ["giou", "2"], ["iou", "final"], ["giou", "final"]]
    assert lines(remote / "map.txt") == lines(local / "map.txt")
    assert "mAP@.50" in result.stderr + result.stdout
    assert (local / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "spool" / "remote-run.spool.jsonl").read_bytes() == b""  # all delivered
    # ... and the dashboard shows it like a local run.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = request(board.url + "/api/state")[1]
        series = state["series"].get("remote-run")
        if series and series["points"] == 3 and sorted(series["map"]) == ["giou", "iou"]:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the board did not pick up the run: {state['runs']}")

