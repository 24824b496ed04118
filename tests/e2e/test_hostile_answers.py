"""What an unauthenticated caller can make the server answer (an attacker's review of issue 11):
a token header the response headers cannot carry, the server's own paths in an OAuth error, a
validation answer many times the size of the request, and a background job whose failure kept
the services from closing."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from kernel.problems import problem_response
from kernel.service import Service, running
from mec_api.guard import _challenge
from umec.app import build_server
from umec.settings import Settings


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def server_client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, operator_token="op" * 16,
                        token_sa_jwks_file=tmp_path / "secret-dir" / "jwks.json")
    with TestClient(build_server(settings).app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("kid", ["\u20ac", "a\r\nSet-Cookie: x=1", "\x00" * 3])
def test_a_kid_no_header_can_carry_is_a_401_not_a_500(
        server_client: TestClient, caplog: pytest.LogCaptureFixture, kid: str) -> None:
    header = {"alg": "ES256", "typ": "at+jwt", "kid": kid}
    token = f"{_b64(json.dumps(header).encode())}.{_b64(b'{}')}.{_b64(b'x' * 64)}"
    with caplog.at_level(logging.ERROR):
        r = server_client.get("/sensor/v1/tags", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert all(" " <= c <= "~" for c in challenge)
    assert "set-cookie" not in r.headers
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


@given(st.text(max_size=300))
def test_a_bearer_challenge_is_always_a_sendable_header(description: str) -> None:
    challenge = _challenge("Bearer", "invalid_token", description)
    assert all(" " <= c <= "~" for c in challenge)
    if description:
        quoted = challenge.split('error_description="', 1)[1]
        assert quoted.endswith('"') and '"' not in quoted[:-1] and "\\" not in quoted


def test_the_token_endpoint_does_not_show_the_servers_files(
        server_client: TestClient, tmp_path: Path) -> None:
    r = server_client.post(
        "/oauth2/token", headers={"content-type": "application/x-www-form-urlencoded"},
        content="grant_type=urn:ietf:params:oauth:grant-type:token-exchange&subject_token=a.b.c"
                "&subject_token_type=urn:ietf:params:oauth:token-type:jwt")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "temporarily_unavailable"
    assert body["check"] == "subject.cluster_keys"
    assert str(tmp_path) not in r.text and "secret-dir" not in r.text
    assert "FileNotFoundError" not in r.text


def test_a_validation_answer_stays_small_whatever_the_request_sent(
        server_client: TestClient) -> None:
    pcrs = {"sha256": {f"k{i}" + "x" * 2000: "" for i in range(300)}}
    body = json.dumps({"nonce": "AAAA", "quote": "AAAA", "signature": "AAAA", "pcrs": pcrs})
    r = server_client.post("/attest/v1/nodes/n/evidence", content=body,
                           headers={"content-type": "application/json"})
    assert r.status_code == 422
    problem = r.json()
    assert problem["check"] == "request.schema"
    assert len(problem["errors"]) == 20
    assert "more)" in problem["detail"]
    assert len(r.content) < 16 * 1024


def test_a_failed_background_job_does_not_keep_services_from_closing() -> None:
    closed: list[str] = []

    async def dies() -> None:
        raise RuntimeError("boom")

    async def close() -> None:
        closed.append("closed")

    async def main() -> None:
        service: Service[None] = Service("x", None, background=[dies], on_close=[close])
        async with running([service]):
            await asyncio.sleep(0.05)

    asyncio.run(main())
    assert closed == ["closed"]


def test_every_problem_header_is_sendable() -> None:
    response = problem_response("/x", 401, "c", "d", "h",
                                headers={"www-authenticate": 'Bearer kid="€\r\nX-Evil: 1"'})
    value = response.headers["www-authenticate"]
    assert value == 'Bearer kid="???X-Evil: 1"'
    assert "x-evil" not in response.headers
