"""The dashboard's Admission, Tokens and Sensors pages (issue 14) over real HTTP against a real
``umec server``: a session is required, the namespace filter and the other query parameters are
validated, crafted pod names and image references are escaped, the small SVG charts carry no
script and no style attribute. The browser tests are tests/umec/test_dashboard_browser.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.service.denials import DeniedContainer
from admission.service.records import AdmittedImage
from mec_api.sensor.gateway import Observation
from mec_api.sensor.ruuvi import decode_rawv2
from mec_api.sensor.store import SqlSensorStore
from tests.support.attack_env import Env, running_env
from tests.umec.test_dashboard_http import login, problem
from umec.ui import charts, data, pages
from umec.ui.routes import BadQuery, namespace_filter

CRAFTED_POD = 'web-<img src=x onerror="window.__pwned=1">'
CRAFTED_IMAGE = "registry.local/x:<img src=x onerror=window.__pwned=2>"
RAW = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
TAG = "CB:B8:33:4C:88:4F"
D1 = "sha256:" + "1" * 64


def admission_parts(env: Env) -> Any:
    return next(s for s in env.server.services if s.name == "admission").parts


def deny(env: Env, namespace: str, name: str, image: str, check: str = "policy.unsatisfied"
         ) -> None:
    log = admission_parts(env).denials
    log.note(namespace=namespace, name=name, kind="Pod", operation="CREATE",
             endpoint="validate", uid=f"uid-{name}"[:64], message=f"{check}: crafted",
             containers=[DeniedContainer("spec.containers[0]", image, D1, ("kid-a",),
                                         ((check, "0 of the required 1 signatures"),))])
    log.flush()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("dash-pages"), "") as e:
        deny(e, "tenant-a", "denied-a", "registry.local/a@" + D1)
        deny(e, "tenant-b", "denied-b", "registry.local/b@" + D1, check="digest.required")
        deny(e, "tenant-a", CRAFTED_POD, CRAFTED_IMAGE)
        admission_parts(e).records.record(
            namespace="tenant-a", name="admitted-a", uid="uid-admitted-a", verified=True,
            policy_generation="g1",
            images=[AdmittedImage("spec.containers[0]", "registry.local/a@" + D1, D1,
                                  ("kid-a",))])
        now = e.server.attest.now()
        reading = decode_rawv2(RAW)
        SqlSensorStore(e.server.attest.sessions.kw["bind"]).add([
            Observation(TAG, None, -60, now - timedelta(minutes=10 * i), now,
                        RAW[:-2] + bytes([i, 0]), reading) for i in range(5)])
        yield e


@pytest.fixture(scope="module")
def client(env: Env) -> httpx.Client:
    c, resp = login(str(env.client.base_url), env.server.operator_token)
    assert resp.status_code == 303
    return c


@pytest.mark.parametrize("path", ["/ui/admission", "/ui/tokens", "/ui/sensors",
                                  "/ui/admission?namespace=tenant-a"])
def test_pages_need_a_session(env: Env, path: str) -> None:
    with httpx.Client(base_url=str(env.client.base_url)) as anonymous:
        resp = anonymous.get(path)
        assert resp.status_code == 303 and resp.headers["location"] == "/ui/login"
        api = anonymous.get("/ui/api/admission")
        assert api.status_code == 401 and api.json()["check"] == "ui.session"


def test_admission_page_lists_denials_and_admissions(client: httpx.Client) -> None:
    resp = client.get("/ui/admission")
    assert resp.status_code == 200
    denials = resp.text.split('id="denials"')[1].split("</table>")[0]
    assert "denied-a" in denials and "denied-b" in denials
    assert "policy.unsatisfied" in denials and "digest.required" in denials
    assert D1 in denials and "kid-a" in denials
    assert "admitted-a" in resp.text.split('id="admissions"')[1]
    assert resp.text.count('<svg class="chart-svg"') == 2
    assert "style=" not in resp.text and "<script>" not in resp.text


def test_the_namespace_filter(client: httpx.Client) -> None:
    text = client.get("/ui/admission", params={"namespace": "tenant-b"}).text
    assert "denied-b" in text and "denied-a" not in text and "admitted-a" not in text
    body = client.get("/ui/api/admission", params={"namespace": "tenant-a"}).json()
    assert {d["name"] for d in body["denials"]} == {"denied-a", CRAFTED_POD}
    assert len(client.get("/ui/api/admission").json()["denials"]) == 3
    for bad in ("Tenant", "a_b", "x" * 64, "-a", "<script>", "a/../b"):
        resp = client.get("/ui/admission", params={"namespace": bad})
        assert resp.status_code == 400 and problem(resp) == "ui.query", bad
        api = client.get("/ui/api/admission", params={"namespace": bad})
        assert api.status_code == 400 and api.json()["check"] == "ui.query"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70))
def test_namespace_filter_accepts_only_namespace_names(value: str) -> None:
    try:
        got = namespace_filter(value)
    except BadQuery as err:
        assert err.check == "ui.query" and err.status == 400
        return
    assert got is None if value == "" else got == value
    assert got is None or re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", got)


def test_crafted_pod_and_image_are_escaped(client: httpx.Client) -> None:
    for text in (client.get("/ui/admission").text,
                 client.get("/ui/admission", params={"namespace": "tenant-a"}).text):
        assert "<img" not in text
        assert "web-&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;" in text
        assert "registry.local/x:&lt;img src=x onerror=window.__pwned=2&gt;" in text
    body = client.get("/ui/api/admission").json()  # JSON carries the data as it is
    assert any(d["containers"][0]["image"] == CRAFTED_IMAGE for d in body["denials"])


def test_tokens_page_shows_the_feed_health(client: httpx.Client) -> None:
    resp = client.get("/ui/tokens")
    assert resp.status_code == 200
    assert 'id="feed-health">current' in resp.text
    assert 'id="workloads"' in resp.text and 'id="token-revocations"' in resp.text


def test_tokens_page_counts_what_other_processes_issued(env: Env, client: httpx.Client) -> None:
    """Counts another replica flushed to token_issuance_counts are on this server's page (it
    issued none of them), escaped; an hour older than 24 h is not counted."""
    from mec_api.tokens.issuance_counts import IssuanceCounts, hour_of
    hour = hour_of(env.server.attest.now().timestamp())
    IssuanceCounts(env.server.attest.sessions.kw["bind"]).flush({
        (hour, "tenant-a/<b>app</b>", "edge-pi-9"): 7, (hour - 1, "tenant-a/<b>app</b>",
                                                        "edge-pi-9"): 5,
        (hour - 24, "tenant-a/<b>app</b>", "edge-pi-9"): 1000})
    resp = client.get("/ui/tokens")
    assert resp.status_code == 200 and "<b>app" not in resp.text
    row = resp.text.split("tenant-a/&lt;b&gt;app&lt;/b&gt;")[1].split("</tr>")[0]
    assert '<td>edge-pi-9</td><td class="issued-all">12</td><td>0</td>' in row


def test_sensors_page_latest_and_chart(client: httpx.Client) -> None:
    resp = client.get("/ui/sensors")
    assert resp.status_code == 200
    latest = resp.text.split('id="latest"')[1].split("</table>")[0]
    assert TAG in latest and "24.3 °C" in latest and "53.49 %RH" in latest
    assert 'class="chart-line"' in resp.text
    one_hour = client.get("/ui/sensors", params={"tag": TAG.lower(), "hours": "1"})
    assert one_hour.status_code == 200 and 'class="chart-line"' in one_hour.text
    for params in ({"tag": "not-a-mac"}, {"hours": "5"}, {"tag": "<svg>"}):
        bad = client.get("/ui/sensors", params=params)
        assert bad.status_code == 400 and problem(bad) == "ui.query", params


def test_charts_escape_labels_and_draw_bars() -> None:
    out = charts.bars("checks", [("<script>x</script>", 3.0), ("b", 1.0)])
    assert "<script>" not in out and out.count('class="chart-bar"') == 2
    assert "style=" not in out
    assert "nothing yet" in charts.bars("empty", [("a", 0.0)])
    assert "not enough readings" in charts.line("one", [(0.0, 1.0)], "", "", "°C")


def test_per_hour_buckets() -> None:
    from datetime import UTC, datetime
    now = datetime(2030, 1, 1, 12, 30, tzinfo=UTC)
    got = data.per_hour([now, now - timedelta(hours=1), now - timedelta(hours=30)], now)
    assert len(got) == 24 and got[-1] == ("12:00", 1) and got[-2] == ("11:00", 1)
    assert sum(n for _, n in got) == 2
    assert pages.HOURS == (1, 6, 24, 168)
