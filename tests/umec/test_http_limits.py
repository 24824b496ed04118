"""Request limits of ``umec server`` over real sockets (issue 9, point 8).

A body past its route's limit is refused with 413 before the server reads it, a body not sent
in time is refused with 408 and its connection closed, a request head sent slowly or too big
is refused at the protocol level, and the server's memory does not follow what clients send.
Every refusal is typed: problem+json, or RFC 6749 JSON under /oauth2.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from umec.app import Server, build_server
from umec.http_limits import BodyLimits, BodyPolicy, BoundedHttpTools, install_error_handlers
from umec.localserver import ServerThread
from umec.settings import Settings

BODY_SECONDS = 1.5
CHUNK = b"A" * 65536
# What a client can hand to the kernel before it sees the answer: its send buffer and the
# server's receive buffer on loopback (a few MiB each, autotuned), not what the server read.
UNREAD_MAX = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, ServerThread]]:
    srv = build_server(Settings(data_dir=tmp_path_factory.mktemp("limits"),
                                request_body_timeout_seconds=BODY_SECONDS))
    with ServerThread(srv.app) as http:
        yield srv, http


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def head(path: str, *, length: int | None = None, ctype: str = "application/json",
         extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {ctype}\r\n{framing}\r\n"
            f"{extra}\r\n").encode()


def read_answer(sock: socket.socket, within: float = 5.0) -> tuple[int, dict[str, str], bytes,
                                                                    bool]:
    """(status, headers, body, closed): reads until the server closes or ``within`` passes."""
    sock.settimeout(within)
    data, closed, deadline = b"", False, time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            part = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            closed = True
            break
        if not part:
            closed = True
            break
        data += part
    raw_head, _, body = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return int(lines[0].split()[1]), headers, body, closed


def stream_until_answer(port: int, start: bytes, total: int, *, chunked: bool = False
                        ) -> tuple[int, int, dict[str, str], bytes, bool]:
    """Send ``start`` and then up to ``total`` body bytes (64 KiB at a time) until the server
    answers. Returns (body bytes sent, status, headers, body, closed)."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(start)
        sent, deadline = 0, time.monotonic() + 30
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                break
            if writable:
                piece = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n" if chunked else CHUNK
                try:
                    sock.sendall(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += len(CHUNK)
        return (sent, *read_answer(sock))
    finally:
        sock.close()


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected: int,
                   check: str) -> dict[str, Any]:
    assert status == expected, body[:300]
    assert headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = json.loads(body)
    assert doc["status"] == expected and doc["check"] == check
    assert {"type", "title", "detail", "hint"} <= doc.keys()
    return doc


def test_20_mb_evidence_is_refused_unread(server: tuple[Server, ServerThread]) -> None:
    _, http = server
    before = rss_kib()
    total = 20 * 1024 * 1024
    sent, status, headers, body, closed = stream_until_answer(
        http.port, head("/attest/v1/nodes/node-a/evidence", length=total), total)
    assert_problem(status, headers, body, 413, "request.body_size")
    assert sent < total, "the server answered only after the whole body"
    assert closed and headers["connection"] == "close"
    assert rss_kib() - before < 4 * 1024, "the server's memory followed the body"


def test_declared_20_mb_with_64_kib_sent_is_refused_at_once(
        server: tuple[Server, ServerThread]) -> None:
    _, http = server
    with socket.create_connection(("127.0.0.1", http.port)) as sock:
        started = time.monotonic()
        sock.sendall(head("/attest/v1/nodes", length=20_000_000) + CHUNK)
        status, headers, body, closed = read_answer(sock)
    assert_problem(status, headers, body, 413, "request.body_size")
    assert closed and time.monotonic() - started < 1.0


def test_chunked_body_over_the_limit_is_refused_while_it_streams(
        server: tuple[Server, ServerThread]) -> None:
    _, http = server
    total = 64 * 1024 * 1024
    sent, status, headers, body, closed = stream_until_answer(
        http.port, head("/attest/v1/nodes/node-a/evidence"), total, chunked=True)
    assert_problem(status, headers, body, 413, "request.body_size")
    assert sent < UNREAD_MAX and closed


def test_four_concurrent_100_mb_bodies_leave_memory_flat(
        server: tuple[Server, ServerThread]) -> None:
    """The issue's measurement: four 100 MB bodies took the server from 130 to 919 MiB."""
    _, http = server
    before = rss_kib()
    results: list[tuple[int, int]] = []

    def one(chunked: bool) -> None:
        total = 100 * 1024 * 1024
        sent, status, *_ = stream_until_answer(
            http.port, head("/attest/v1/nodes", length=None if chunked else total), total,
            chunked=chunked)
        results.append((status, sent))
    threads = [threading.Thread(target=one, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [s for s, _ in results] == [413] * 4
    assert all(sent < UNREAD_MAX for _, sent in results)
    assert rss_kib() - before < 8 * 1024


def test_token_endpoint_refuses_50_mb_in_rfc6749_shape(
        server: tuple[Server, ServerThread]) -> None:
    _, http = server
    form = "application/x-www-form-urlencoded"
    for length in (50_000_000, None):  # declared, then chunked
        total = 50_000_000
        sent, status, headers, body, closed = stream_until_answer(
            http.port, head("/oauth2/token", length=length, ctype=form), total,
            chunked=length is None)
        assert status == 413 and closed
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        doc = json.loads(body)
        assert doc["error"] == "invalid_request" and doc["check"] == "request.body_size"
        assert "65536" in doc["error_description"]
        assert sent < UNREAD_MAX, "the token endpoint read the body before refusing"


def test_slow_body_is_timed_out_with_408_and_closed(server: tuple[Server, ServerThread]) -> None:
    _, http = server
    with socket.create_connection(("127.0.0.1", http.port)) as sock:
        started = time.monotonic()
        sock.sendall(head("/attest/v1/nodes", length=100) + b'{"na')
        status, headers, body, closed = read_answer(sock, within=BODY_SECONDS + 5)
        waited = time.monotonic() - started
    assert_problem(status, headers, body, 408, "request.body_timeout")
    assert closed and headers["connection"] == "close"
    assert BODY_SECONDS - 0.2 < waited < BODY_SECONDS + 2


def test_a_hundred_slow_bodies_are_all_closed_after_the_deadline(
        server: tuple[Server, ServerThread]) -> None:
    _, http = server
    socks = [socket.create_connection(("127.0.0.1", http.port)) for _ in range(100)]
    try:
        for i, sock in enumerate(socks):
            path, ctype = (("/attest/v1/nodes", "application/json"),
                           ("/attest/v1/nodes/n/activate", "application/json"),
                           ("/oauth2/token", "application/x-www-form-urlencoded"))[i % 3]
            sock.sendall(head(path, length=50, ctype=ctype) + b"ab")
            sock.setblocking(False)
        open_ = {s.fileno(): s for s in socks}
        answers: dict[int, bytes] = {}
        deadline = time.monotonic() + BODY_SECONDS + 10
        while open_ and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_.values()), [], [], 0.5)
            for sock in readable:
                try:
                    part = sock.recv(65536)
                except ConnectionResetError:
                    part = b""
                answers[sock.fileno()] = answers.get(sock.fileno(), b"") + part
                if not part:
                    del open_[sock.fileno()]
        assert not open_, f"{len(open_)} slow connections still open"
        assert time.monotonic() < deadline
        statuses = {a.split(b" ", 2)[1] for a in answers.values()}
        assert statuses == {b"408"}, statuses
    finally:
        for sock in socks:
            sock.close()


def test_unread_body_closes_the_connection(server: tuple[Server, ServerThread]) -> None:
    """An answer given before the body arrived (an unknown route) must not leave the
    connection to a client trickling the rest of that body."""
    _, http = server
    with socket.create_connection(("127.0.0.1", http.port)) as sock:
        sock.sendall(head("/no/such/route", length=1000) + b"x")
        status, headers, body, closed = read_answer(sock)
    assert_problem(status, headers, body, 404, "route.unknown")
    assert closed and headers["connection"] == "close"


class QuickHeadTimeout(BoundedHttpTools):
    header_timeout = 1.0


@pytest.fixture(scope="module")
def quick_head(server: tuple[Server, ServerThread]) -> Iterator[ServerThread]:
    srv, _ = server
    with ServerThread(srv.app, http=QuickHeadTimeout) as http:
        yield http


def test_slow_request_head_is_timed_out(quick_head: ServerThread) -> None:
    """uvicorn only times out idle keep-alive connections; a head trickling in (slowloris) or
    a connection that never sends anything is closed after the head deadline."""
    silent = socket.create_connection(("127.0.0.1", quick_head.port))
    slow = socket.create_connection(("127.0.0.1", quick_head.port))
    try:
        slow.sendall(b"POST /attest/v1/nodes HTTP/1.1\r\nHost: test\r\n")
        started = time.monotonic()
        for sock in (silent, slow):
            status, headers, body, closed = read_answer(sock, within=5)
            assert_problem(status, headers, body, 408, "request.header_timeout")
            assert closed
        assert time.monotonic() - started < 3
    finally:
        silent.close()
        slow.close()


def test_oversized_request_head_is_refused(quick_head: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", quick_head.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        try:
            for _ in range(32):  # 2 MiB of headers, bounded
                sock.sendall(b"X-Pad: " + b"p" * 65536 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body, closed = read_answer(sock)
    assert_problem(status, headers, body, 431, "request.header_size")
    assert closed


def test_malformed_http_is_answered_as_problem(quick_head: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", quick_head.port)) as sock:
        sock.sendall(b"POST /attest/v1/nodes HTTP/1.1\r\nHost: t\r\nContent-Length: zz\r\n\r\n")
        status, headers, body, closed = read_answer(sock)
    assert_problem(status, headers, body, 400, "request.http")
    assert closed


def test_keep_alive_still_works_for_honest_clients(server: tuple[Server, ServerThread]) -> None:
    _, http = server
    with httpx.Client(base_url=http.url) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            bad = client.post("/attest/v1/nodes", json={"name": "UPPER"})
            assert bad.status_code == 422 and bad.headers.get("connection") != "close"


def test_bodies_in_flight_are_bounded_per_process() -> None:
    """Many bodies under their limit still cannot add up: past the process's budget of body
    bytes held, a new body is refused with 503 while the first one is still streaming."""
    app = FastAPI()

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}
    app.add_middleware(BodyLimits, policy=BodyPolicy(default_bytes=1 << 20,
                                                     budget_bytes=(1 << 20) + 65536, seconds=5))
    install_error_handlers(app)
    with ServerThread(app) as http, socket.create_connection(("127.0.0.1", http.port)) as held:
        held.sendall(head("/upload", length=1 << 20) + CHUNK * 15)  # 960 KiB, then a pause
        time.sleep(0.5)
        _, status, headers, body, closed = stream_until_answer(
            http.port, head("/upload", length=256 * 1024), 256 * 1024)
        assert_problem(status, headers, body, 503, "server.body_budget")
        assert headers["retry-after"] == "1" and closed
        held.sendall(CHUNK)  # the held body completes and is answered normally
        status, _, body, _ = read_answer(held, within=2)
        assert status == 200 and json.loads(body) == {"bytes": 1 << 20}
