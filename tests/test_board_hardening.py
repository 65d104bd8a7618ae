"""Darkboard against a hostile or careless client (issue 8): hiding a run needs the token on a board that has
one, absurdly nested query JSON is a 400 and not a 500, idle connections are closed."""
from __future__ import annotations

import socket
import time
import urllib.parse

import pytest

from board_fixtures.runs import write_metrics_run
from pydarknet.board.server import make_server

from test_board_ingest import TOKEN, request


@pytest.fixture
def token_board(tmp_path):
    httpd = make_server(tmp_path / "backup", port=0, token=TOKEN, poll_interval=0.1).start_background()
    write_metrics_run(httpd.board.root / "r", range(1, 5))
    httpd.board.runs.scan()
    yield httpd
    httpd.close()


def test_hide_needs_the_token_on_a_board_that_has_one(token_board):
    url = token_board.url + "/api/hide"
    page = {"X-Board": "1"}
    assert request(url, {"run": "r", "hidden": True}, token=None, headers=page)[0] == 401
    assert request(url, {"run": "r", "hidden": True}, token="wrong", headers=page)[0] == 401
    assert not (token_board.board.root / "r" / "_HIDE").exists()
    status, summary = request(url, {"run": "r", "hidden": True}, headers=page)
    assert status == 200 and summary["hidden"]


def test_hide_without_a_token_on_a_board_without_one(tmp_path):
    httpd = make_server(tmp_path, port=0).start_background()
    try:
        write_metrics_run(tmp_path / "r", range(1, 3))
        httpd.board.runs.scan()
        status, _ = request(httpd.url + "/api/hide", {"run": "r", "hidden": True}, token=None,
                            headers={"X-Board": "1"})
        assert status == 200 and (tmp_path / "r" / "_HIDE").exists()
    finally:
        httpd.close()


@pytest.mark.parametrize("depth", [100, 5000])  # 5000 deep: RecursionError in json
def test_deeply_nested_known_is_a_bad_request(token_board, depth):
    known = urllib.parse.quote("[" * depth + "]" * depth)
    status, body = request(token_board.url + "/api/state?known=" + known)
    assert status == 400 and "known" in body["error"]
    assert request(token_board.url + "/api/health")[0] == 200


def test_idle_connections_are_closed(tmp_path):
    httpd = make_server(tmp_path, port=0, idle_timeout=0.5).start_background()
    try:
        for opening in (b"", b"GET /api/health HTTP/1.1\r\nHost: localhost\r\n"):  # silent, or stalled mid-request
            with socket.create_connection(httpd.server_address[:2], timeout=10) as s:
                s.sendall(opening)
                started = time.monotonic()
                assert s.recv(100) == b""  # the server closed the connection
                assert time.monotonic() - started < 5
        with socket.create_connection(httpd.server_address[:2], timeout=10) as s:  # a live client is served
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        httpd.close()
