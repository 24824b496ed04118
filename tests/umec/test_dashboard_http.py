"""The dashboard's security at the HTTP level (umec/ui): session cookie, CSRF, headers, escaping
and the operator actions, against a real ``umec server`` on loopback (HTTP and HTTPS). The
browser tests are tests/umec/test_dashboard_browser.py."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from admission.service.certs import create_webhook_certs
from attest.service.models import NodeRow
from attest.service.policies import set_policy
from mec_api.tokens.models import RevocationRow
from tests.support.attack_env import Env, running_env, trusted
from umec.app import build_server
from umec.localserver import ServerThread
from umec.settings import Settings
from umec.ui import render
from umec.ui.app import CSP
from umec.ui.session import (
    CsrfRefused,
    UiSession,
    check_csrf,
    csrf_token,
    issue,
    parse,
    session_key,
    valid_login_nonce,
)

KEY = session_key("operator-secret")
NOW = 1_800_000_000.0
CRAFTED = '<img src=x onerror="window.__pwned=1"></script><script>window.__pwned=2</script>'


# --- the cookie and CSRF parsers --------------------------------------------------------------

def test_issued_session_parses_and_expires() -> None:
    session, cookie = issue(KEY, NOW, seconds=60)
    assert parse(cookie, KEY, NOW + 59) == session
    assert parse(cookie, KEY, NOW + 60) is None                 # expired
    assert parse(cookie, session_key("another-token"), NOW) is None
    assert parse(cookie, session_key(""), NOW) is None          # no operator token: no sessions
    assert "operator-secret" not in cookie
    assert parse(cookie, KEY, NOW - 50, lifetime=60) == session  # a replica 50 s behind
    # Issued on a clock an hour ahead: refused once the clock is corrected (it would have
    # lived the step longer than a session may).
    _, ahead = issue(KEY, NOW + 3600)
    assert parse(ahead, KEY, NOW) is None
    assert parse(ahead, KEY, NOW + 3600) is not None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_cookie_values_are_refused(value: str) -> None:
    assert parse(value, KEY, NOW) is None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_change_to_a_cookie_is_refused(data: st.DataObject) -> None:
    _, cookie = issue(KEY, NOW)
    i = data.draw(st.integers(0, len(cookie) - 1))
    c = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_."))
    changed = cookie[:i] + c + cookie[i + 1:]
    if changed != cookie:
        assert parse(changed, KEY, NOW) is None
    assert parse(cookie + c, KEY, NOW) is None


def test_a_forged_expiry_is_refused() -> None:
    _, cookie = issue(KEY, NOW, seconds=60)
    sid, _, mac = cookie.split(".")
    assert parse(f"{sid}.{int(NOW) + 10**6}.{mac}", KEY, NOW + 120) is None


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=80), st.integers(), st.binary(max_size=10)))
def test_csrf_accepts_only_the_sessions_token(sent: object) -> None:
    expected = csrf_token(KEY, UiSession("a" * 32, int(NOW)))
    if sent == expected:
        check_csrf(expected, sent)
    else:
        with pytest.raises(CsrfRefused) as err:
            check_csrf(expected, sent)
        assert err.value.check == "ui.csrf" and err.value.status == 403
    with pytest.raises(CsrfRefused):
        check_csrf(None, expected)  # nothing to compare with: refused, never accepted
    assert csrf_token(KEY, UiSession("b" * 32, int(NOW))) != expected


@given(st.text(max_size=80))
def test_login_nonce_shape(value: str) -> None:
    assert valid_login_nonce(value) in (None, value)
    if valid_login_nonce(value) is not None:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,64}", value)


# --- rendering --------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60), st.text(max_size=60))
def test_rendered_values_never_open_a_tag(node_class: str, detail: str, state: str) -> None:
    row = {"name": "node-a", "node_class": node_class + CRAFTED, "state": state,
           "state_changed_at": "", "evidence_age": None,
           "failed_checks": [{"check": CRAFTED, "detail": detail + CRAFTED, "hint": CRAFTED}]}
    out = render.fleet_page([row], csrf=CRAFTED)
    assert "<img" not in out and "<script>" not in out and "</script><script" not in out
    assert out.count("<script") == 1  # the page's own script element, nothing else
    assert 'class="state state-' + state + '"' not in out or state in render.STATES


# --- a real server ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("dash"), "") as e:
        yield e


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def login(base: str, token: str, **kwargs: object) -> tuple[httpx.Client, httpx.Response]:
    client = httpx.Client(base_url=base, timeout=30, **kwargs)  # type: ignore[arg-type]
    form = client.get("/ui/login")
    assert form.status_code == 200
    return client, client.post("/ui/login", data={"token": token, "csrf": csrf_of(form.text)})


def problem(resp: httpx.Response) -> str:
    found = re.search(r'id="(?:problem|login-error)"><?(?:code>)?([a-z_.]+)', resp.text)
    assert found is not None, resp.text[:500]
    return found.group(1)


def test_login_sets_a_strict_session_cookie(env: Env) -> None:
    client, resp = login(str(env.client.base_url), env.server.operator_token)
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/"
    cookie = next(c for c in resp.headers.get_list("set-cookie")
                  if c.startswith("umec_ui_session="))
    attrs = {a.strip().lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attrs
    assert "secure" not in attrs  # plain HTTP on loopback; see the HTTPS test
    assert env.server.operator_token not in cookie
    page = client.get("/ui/")
    assert page.status_code == 200 and 'id="fleet"' in page.text


def test_a_wrong_token_is_refused(env: Env) -> None:
    client, resp = login(str(env.client.base_url), "not-the-token")
    assert resp.status_code == 401 and problem(resp) == "ui.login"
    assert not any(c.startswith("umec_ui_session=") for c in resp.headers.get_list("set-cookie"))
    assert client.get("/ui/").status_code == 303          # still sent to the login page
    assert client.get("/ui/api/fleet").json()["check"] == "ui.session"


def test_login_without_its_csrf_value_is_refused(env: Env) -> None:
    with httpx.Client(base_url=str(env.client.base_url)) as client:
        resp = client.post("/ui/login", data={"token": env.server.operator_token})
        assert resp.status_code == 403 and problem(resp) == "ui.csrf"
        assert "set-cookie" not in resp.headers


def test_posts_without_the_sessions_csrf_token_are_refused(env: Env) -> None:
    set_policy(env.server.attest.sessions, yaml.safe_dump({
        "name": "acked", "selection": {"sha256": [14]}, "pcrs": {"sha256": {14: ["00" * 32]}},
        "require_ack": True}))
    node = env.node("csrf-node")
    node.node_class = "acked"
    node.enroll_and_activate()
    assert node.attest()["state"] == "trusted"
    node.tpm.extend(14, b"tampered")
    assert node.attest()["state"] == "untrusted"
    client, _ = login(str(env.client.base_url), env.server.operator_token)
    other, _ = login(str(env.client.base_url), env.server.operator_token)
    foreign = csrf_of(other.get("/ui/").text)  # another session's token
    for data in ({}, {"csrf": ""}, {"csrf": foreign}):
        for action in ("ack", "remove"):
            resp = client.post(f"/ui/nodes/csrf-node/{action}", data=data)
            assert resp.status_code == 403 and problem(resp) == "ui.csrf", (action, data)
    assert client.post("/ui/logout").status_code == 403
    with env.server.attest.sessions() as s:
        row = s.get(NodeRow, "csrf-node")
        assert row is not None and row.acked_at is None
    resp = client.post("/ui/nodes/csrf-node/ack", data={"csrf": csrf_of(client.get("/ui/").text)})
    assert resp.status_code == 303
    with env.server.attest.sessions() as s:
        row = s.get(NodeRow, "csrf-node")
        assert row is not None and row.acked_at is not None


def test_remove_from_the_dashboard_revokes_the_nodes_tokens(env: Env) -> None:
    trusted(env, "doomed-node")
    client, _ = login(str(env.client.base_url), env.server.operator_token)
    csrf = csrf_of(client.get("/ui/nodes/doomed-node").text)
    resp = client.post("/ui/nodes/doomed-node/remove", data={"csrf": csrf})
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/?removed=doomed-node"
    assert env.client.get("/attest/v1/nodes/doomed-node").status_code == 404
    with env.server.attest.sessions() as s:
        revoked = s.scalar(select(func.count()).select_from(RevocationRow).where(
            RevocationRow.kind == "node", RevocationRow.node == "doomed-node"))
    assert revoked == 1
    again = client.post("/ui/nodes/doomed-node/remove", data={"csrf": csrf})
    assert again.status_code == 404 and problem(again) == "node.unknown"


def test_logout_clears_the_cookie(env: Env) -> None:
    client, _ = login(str(env.client.base_url), env.server.operator_token)
    resp = client.post("/ui/logout", data={"csrf": csrf_of(client.get("/ui/").text)})
    assert resp.status_code == 303 and resp.headers["location"] == "/ui/login"
    assert client.get("/ui/").status_code == 303


def test_every_ui_answer_carries_the_security_headers(env: Env) -> None:
    client, _ = login(str(env.client.base_url), env.server.operator_token)
    for path in ("/ui/", "/ui/login", "/ui/static/dashboard.js", "/ui/static/dashboard.css",
                 "/ui/api/fleet", "/ui/nodes/nobody", "/ui/static/../app.py", "/ui/nope"):
        resp = client.get(path)
        assert resp.headers["content-security-policy"] == CSP, path
        assert resp.headers["x-content-type-options"] == "nosniff", path
        assert resp.headers["referrer-policy"] == "no-referrer", path
    assert client.get("/ui/static/other.js").status_code == 404
    assert "<script>" not in client.get("/ui/").text and "style=" not in client.get("/ui/").text


def test_crafted_values_are_escaped_in_html_and_json(env: Env) -> None:
    trusted(env, "crafted-node")
    with env.server.attest.sessions.begin() as s:
        s.execute(update(NodeRow).where(NodeRow.name == "crafted-node").values(
            node_class=CRAFTED[:128], last_verdict={"trusted": False, "failed_checks": [
                {"check": "pcr.value", "detail": CRAFTED, "hint": CRAFTED}]}))
    client, _ = login(str(env.client.base_url), env.server.operator_token)
    for path in ("/ui/", "/ui/nodes/crafted-node"):
        text = client.get(path).text
        assert "<img" not in text and "<script>window" not in text, path
        assert "&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;" in text, path
    body = client.get("/ui/api/fleet").json()
    assert any(n["node_class"] == CRAFTED[:128] for n in body["nodes"])  # data, as it is


def test_https_sets_the_secure_flag(tmp_path: Path) -> None:
    certs = create_webhook_certs(tmp_path / "certs", "umec", "test", extra_names=["localhost"])
    server = build_server(Settings(data_dir=tmp_path / "srv"))
    with ServerThread(server.app, ssl_certfile=str(certs.cert),
                      ssl_keyfile=str(certs.key)) as tls:
        base = tls.url.replace("127.0.0.1", "localhost")
        _, resp = login(base, server.operator_token, verify=str(certs.ca_cert))
        assert resp.status_code == 303
        cookies = resp.headers.get_list("set-cookie")
        session = next(c for c in cookies if c.startswith("umec_ui_session="))
        assert "secure" in {a.strip().lower() for a in session.split(";")[1:]}
