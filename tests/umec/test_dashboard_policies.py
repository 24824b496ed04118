"""Setting and rolling back a node class's reference values from the dashboard (issue 14):
``/ui/policies`` against a real ``umec server`` on loopback, unsigned and with
UMEC_POLICY_SIGNERS. CSRF first, the document bounded, refusals shown with their check and
hint and recorded in the class's history."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import UploadFile
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.core.policy_envelope import sign_policy
from keys import generate_private_key, save_private_key
from keys.storage import save_public_key
from tests.umec.test_dashboard_http import csrf_of, login, problem
from umec.app import build_server
from umec.localserver import ServerThread
from umec.settings import Settings
from umec.ui.policy_routes import PolicyDocumentRefused, _document

POLICY = """name: {name}
selection: {{sha256: [0, 14]}}
pcrs:
  sha256:
    14: ["{pcr}"]
version: {version}
"""


def doc(version: int, pcr: str = "ab", name: str = "edge") -> bytes:
    return POLICY.format(name=name, pcr=pcr * 32, version=version).encode()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("signers")
    for n in ("a", "b"):
        key = generate_private_key()
        save_private_key(d / f"{n}.key", key)
        save_public_key(d / f"{n}.pub", key)
    return d


def _server(tmp: Path, signers: list[Path]) -> Iterator[httpx.Client]:
    server = build_server(Settings(data_dir=tmp / "srv", policy_signers=signers))
    with ServerThread(server.app) as http:
        client, resp = login(http.url, server.operator_token)
        assert resp.status_code == 303
        yield client


@pytest.fixture(scope="module")
def open_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    yield from _server(tmp_path_factory.mktemp("open"), [])


@pytest.fixture(scope="module")
def signed_ui(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> Iterator[httpx.Client]:
    yield from _server(tmp_path_factory.mktemp("signed"), [keys_dir / "a.pub"])


def post_policy(client: httpx.Client, document: bytes, csrf: str | None = "",
                upload: bool = False) -> httpx.Response:
    token = csrf_of(client.get("/ui/policies").text) if csrf == "" else csrf
    data = {} if token is None else {"csrf": token}
    if upload:
        return client.post("/ui/policies", data=data, files={"file": ("p.yaml", document)})
    return client.post("/ui/policies", data={**data, "document": document.decode()},
                       files={"file": ("", b"")})


def history(client: httpx.Client, name: str = "edge") -> list[list[str]]:
    page = client.get(f"/ui/policies/{name}").text
    table = re.search(r'<table id="policy-history">.*?</table>', page, re.S)
    assert table is not None, page[:800]
    return [re.findall(r"<td>(.*?)</td>", row, re.S)
            for row in re.findall(r"<tr class=[^>]*>(.*?)</tr>", table.group(0), re.S)]


def test_set_and_roll_back_unsigned(open_ui: httpx.Client) -> None:
    resp = post_policy(open_ui, doc(1, "ab"))
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/policies/edge"
    assert post_policy(open_ui, doc(2, "cd"), upload=True).status_code == 303
    page = open_ui.get("/ui/policies/edge").text
    assert "cd" * 32 in page and 'id="policy-trust"' in page and "accepts unsigned" in page
    rows = history(open_ui)
    assert [(r[1], r[2]) for r in rows[:2]] == [("applied", "2"), ("applied", "1")]
    csrf = csrf_of(page)
    back = open_ui.post("/ui/policies/edge/rollback", data={"csrf": csrf, "to": "1"})
    assert back.status_code == 303
    page = open_ui.get("/ui/policies/edge").text
    shown = re.search(r'<pre id="policy-document">(.*?)</pre>', page, re.S)
    assert shown is not None and "ab" * 32 in shown.group(1) and "version: 3" in shown.group(1)
    assert (history(open_ui)[0][1], history(open_ui)[0][2]) == ("applied", "3")
    unknown = open_ui.post("/ui/policies/edge/rollback", data={"csrf": csrf, "to": "9"})
    assert unknown.status_code == 404 and problem(unknown) == "policy.history"
    assert "what to do:" in unknown.text


def test_csrf_is_checked_before_anything(open_ui: httpx.Client) -> None:
    foreign, _ = login(str(open_ui.base_url), "x" * 40)  # not logged in: no session token
    other_csrf = "A" * 43
    for token in (None, other_csrf):
        resp = post_policy(open_ui, doc(7, "ef", name="csrf-class"), csrf=token)
        assert resp.status_code == 403 and problem(resp) == "ui.csrf"
        rb = open_ui.post("/ui/policies/edge/rollback",
                          data={"to": "1"} if token is None else {"to": "1", "csrf": token})
        assert rb.status_code == 403 and problem(rb) == "ui.csrf"
    assert open_ui.get("/ui/policies/csrf-class").status_code == 404
    assert foreign.post("/ui/policies", data={"csrf": other_csrf}).status_code == 401


def test_document_is_bounded_and_required(open_ui: httpx.Client) -> None:
    big = b"name: big\n# " + b"x" * (768 << 10) + b"\n"
    resp = post_policy(open_ui, big, upload=True)
    assert resp.status_code == 413 and problem(resp) == "ui.policy_document"
    empty = post_policy(open_ui, b"  ")
    assert empty.status_code == 400 and problem(empty) == "ui.policy_document"
    huge = open_ui.post("/ui/policies", content=b"x" * (2 << 20),
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413


def test_signed_server_refuses_unsigned_and_wrong_signer(signed_ui: httpx.Client,
                                                         keys_dir: Path) -> None:
    from keys import load_private_key
    a, b = (load_private_key(keys_dir / f"{n}.key") for n in "ab")
    page = signed_ui.get("/ui/policies").text
    assert "enforces signed policies" in page and "policy.unsigned" in page
    unsigned = post_policy(signed_ui, doc(1))
    assert unsigned.status_code == 403 and problem(unsigned) == "policy.unsigned"
    assert "what to do:" in unsigned.text
    wrong = post_policy(signed_ui, sign_policy(doc(1), [b]), upload=True)
    assert wrong.status_code == 403 and problem(wrong) == "policy.signer"
    good = post_policy(signed_ui, sign_policy(doc(1), [a]), upload=True)
    assert good.status_code == 303
    assert post_policy(signed_ui, sign_policy(doc(2, "cd"), [a]), upload=True).status_code == 303
    rows = history(signed_ui)
    assert [(r[1], r[2]) for r in rows[:2]] == [("applied", "2"), ("applied", "1")]
    assert any(r[1] == "refused" and "policy.signer" in r[4] for r in rows)
    # Rollback on a signed server: the document to sign, nothing applied.
    csrf = csrf_of(signed_ui.get("/ui/policies/edge").text)
    back = signed_ui.post("/ui/policies/edge/rollback", data={"csrf": csrf, "to": "1"})
    assert back.status_code == 200 and 'id="rollback-document"' in back.text
    assert "version: 3" in back.text and "umec policy sign" in back.text
    assert history(signed_ui)[0][2] == "2"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.text(max_size=64))
def test_document_reader_returns_bounded_text_or_refuses(upload: bytes, pasted: str) -> None:
    file = UploadFile(io.BytesIO(upload), filename="p.yaml")
    try:
        raw = _document(file, pasted)
    except PolicyDocumentRefused as err:
        assert err.check == "ui.policy_document" and err.status in (400, 413)
        assert not (upload or pasted.encode()).strip()
        return
    assert raw == (upload or pasted.encode()) and raw.strip()
