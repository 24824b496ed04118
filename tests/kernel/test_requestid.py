"""kernel.requestid: request ids (taken when sane, else made), echoed in ``X-Request-ID``, in
the access log line and in every log line written while the request runs (the route's thread
pool included), and kernel.problems' one ``request refused`` line; over real HTTP (uvicorn on
loopback, raw sockets where httpx would not send the header)."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st

from kernel.errors import CheckedError
from kernel.problems import install_error_handlers
from kernel.requestid import MAX_REQUEST_ID, RequestIds, request_id_of, sane_request_id
from tests.support.jsonlog import JsonLines, json_lines
from umec.localserver import ServerThread

GENERATED = re.compile(r"^[0-9a-f]{32}$")
log = logging.getLogger("umec.test")


class Denied(CheckedError):
    check = "test.denied"
    status = 403
    hint = "Ask someone."


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/sync/{item}")
    def in_thread(item: str) -> dict[str, str]:  # FastAPI runs it in the thread pool
        log.info("working in a thread", extra={"item": item})
        return {"item": item}

    @app.get("/deny")
    async def deny() -> None:
        log.info("about to deny")
        raise Denied("not you")

    install_error_handlers(app)
    app.add_middleware(RequestIds)
    return app


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ServerThread(_app()) as http:
        yield http.url


def _raw_get(url: str, path: str, header_value: bytes) -> tuple[int, dict[str, str]]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nX-Request-ID: " +
                  header_value + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), {k.lower(): v for k, v in headers.items()}


def test_a_sane_id_is_echoed_and_in_every_line_of_its_request(url: str) -> None:
    with json_lines() as lines:
        r = httpx.get(f"{url}/sync/a", headers={"X-Request-ID": "req-42:abc/DEF"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-42:abc/DEF"
    [work] = lines.where(msg="working in a thread")
    assert work["request_id"] == "req-42:abc/DEF" and work["item"] == "a"
    [access] = lines.where(logger="umec.access")
    assert access == {**access, "level": "info", "msg": "request", "method": "GET",
                      "path": "/sync/a", "route": "/sync/{item}", "status": 200,
                      "peer": "127.0.0.1", "request_id": "req-42:abc/DEF"}
    assert isinstance(access["duration_ms"], float)


def test_without_an_id_each_request_gets_a_new_one(url: str) -> None:
    with json_lines() as lines:
        first, second = httpx.get(f"{url}/sync/b"), httpx.get(f"{url}/sync/b")
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(GENERATED.match(i) for i in ids) and ids[0] != ids[1]
    assert [w["request_id"] for w in lines.where(msg="working in a thread")] == ids
    assert [a["request_id"] for a in lines.wait_for(2, logger="umec.access")] == ids
    assert not [line for line in lines.lines if "request_id" not in line]


@pytest.mark.parametrize("bad", [b"has space", b"x" * (MAX_REQUEST_ID + 1), b"caf\xc3\xa9",
                                 b"tab\there", b""])
def test_an_insane_id_is_replaced_not_echoed(url: str, bad: bytes) -> None:
    with json_lines() as lines:
        status, headers = _raw_get(url, "/sync/c", bad)
    assert status == 200
    assert GENERATED.match(headers["x-request-id"]), headers
    [access] = lines.where(logger="umec.access")
    assert access["request_id"] == headers["x-request-id"]


def test_a_refusal_is_one_warning_line_with_its_check_and_the_id(url: str) -> None:
    with json_lines() as lines:
        r = httpx.get(f"{url}/deny", headers={"X-Request-ID": "deny-1"})
    assert r.status_code == 403 and r.headers["x-request-id"] == "deny-1"
    assert r.json()["check"] == "test.denied"
    [refused] = lines.where(msg="request refused")
    assert refused == {**refused, "level": "warning", "logger": "umec.http",
                       "route": "/deny", "path": "/deny", "method": "GET", "status": 403,
                       "check": "test.denied", "peer": "127.0.0.1", "detail": "not you",
                       "request_id": "deny-1"}
    assert {line["request_id"] for line in lines.lines} == {"deny-1"}
    assert lines.where(logger="umec.access", status=403, route="/deny")


def test_an_unknown_route_is_logged_as_unmatched(url: str) -> None:
    with json_lines() as lines:
        r = httpx.get(f"{url}/nowhere")
    assert r.status_code == 404
    [access] = lines.where(logger="umec.access")
    assert access["route"] == "unmatched" and access["status"] == 404


# --- the sanitiser ----------------------------------------------------------------------------

@given(st.binary(max_size=300))
def test_any_header_value_gives_a_sane_id(raw: bytes) -> None:
    rid = request_id_of(raw)
    assert sane_request_id(rid)
    text = raw.decode("latin-1")
    if 0 < len(raw) <= MAX_REQUEST_ID and all(0x21 <= b <= 0x7E for b in raw):
        assert rid == text            # a sane one is kept as it is
    else:
        assert GENERATED.match(rid)   # anything else is replaced, never cut or escaped


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E),
               min_size=1, max_size=MAX_REQUEST_ID))
def test_visible_ascii_tokens_are_kept(value: str) -> None:
    assert sane_request_id(value) and request_id_of(value.encode()) == value


def test_absent_and_empty_ids_are_made() -> None:
    assert GENERATED.match(request_id_of(None)) and GENERATED.match(request_id_of(b""))


def test_lines_outside_a_request_have_no_id() -> None:
    handler = JsonLines()
    log.addHandler(handler)
    try:
        log.warning("no request here")
    finally:
        log.removeHandler(handler)
    assert "request_id" not in handler.lines[0]
