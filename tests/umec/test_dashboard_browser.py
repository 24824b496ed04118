"""The dashboard in a real browser: Debian's Chromium (/usr/bin/chromium, installed by
scripts/setup.sh) driven by Playwright, against a real ``umec server`` with simulated TPM nodes.

Screenshots go to a temporary directory, or to ``UMEC_DASHBOARD_SCREENSHOTS`` when set (the
README's come from ``UMEC_DASHBOARD_SCREENSHOTS=docs/screenshots``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from attest.service.models import NodeRow
from tests.support.attack_env import Env, running_env, trusted
from umec.ui.app import CSP

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (scripts/setup.sh "
                                       "installs it; CI runs these tests)")
sync_api = pytest.importorskip("playwright.sync_api")

RED, GREEN = "rgb(207, 34, 46)", "rgb(26, 127, 55)"
# What a page would run if a value were inserted as HTML: each sets a flag the test reads.
PAYLOADS = ('<img src=x onerror="window.__pwned=1">', "</script><script>window.__pwned=2</script>",
            '<svg onload="window.__pwned=3"></svg>')
# Recorded in every page before its own scripts (an init script is not subject to the CSP).
WATCH = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
         "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("dash-browser"), "") as e:
        yield e


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, env: Env) -> Iterator[Any]:
    context = browser.new_context(base_url=str(env.client.base_url),
                                  viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.add_init_script(WATCH)
    pg.set_default_timeout(8000)
    yield pg
    context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("UMEC_DASHBOARD_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_in(page: Any, token: str) -> None:
    page.goto("/ui/")
    assert page.url.endswith("/ui/login")  # no session: sent to the login page
    page.fill("#token", token)
    page.click("button[type=submit]")


def badge(page: Any, node: str) -> Any:
    return page.locator(f'tr[data-node="{node}"] .state')


def test_log_in_and_a_wrong_token_refused(page: Any, env: Env) -> None:
    log_in(page, "not-the-operator-token")
    assert page.locator("#login-error").inner_text().startswith("ui.login")
    assert not [c for c in page.context.cookies() if c["name"] == "umec_ui_session"]
    page.fill("#token", env.server.operator_token)
    page.click("button[type=submit]")
    page.wait_for_url("**/ui/")
    assert page.locator("h1").inner_text() == "Fleet"
    session = next(c for c in page.context.cookies() if c["name"] == "umec_ui_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/ui"
    assert session["value"] != env.server.operator_token
    assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's script cannot read it
    page.click("text=Log out")
    page.wait_for_url("**/ui/login")
    page.goto("/ui/")
    assert page.url.endswith("/ui/login")


def test_node_goes_untrusted_live(page: Any, env: Env, shots: Path) -> None:
    trusted(env, "edge-pi-1")
    node = trusted(env, "edge-pi-2")
    log_in(page, env.server.operator_token)
    page.wait_for_url("**/ui/")
    assert badge(page, "edge-pi-2").inner_text() == "trusted"
    assert badge(page, "edge-pi-2").evaluate("e => getComputedStyle(e).backgroundColor") == GREEN
    assert page.locator("#fleet-attention").inner_text().startswith("No node failing")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    node.tpm.extend(14, b"a changed application")  # the test tampers with the node
    assert node.attest()["state"] == "untrusted"
    # No wait_for_function: evaluating a string is eval, which the page's CSP refuses.
    sync_api.expect(badge(page, "edge-pi-2")).to_have_text("untrusted", timeout=6000)
    assert page.evaluate("window.__sameDocument") is True
    assert badge(page, "edge-pi-2").evaluate("e => getComputedStyle(e).backgroundColor") == RED
    row = page.locator('tr[data-node="edge-pi-2"]')
    assert "policy.pcr_value" in row.inner_text() and "what to do:" in row.inner_text()
    assert badge(page, "edge-pi-1").inner_text() == "trusted"
    # The first line says which node fails and why, rebuilt live; the failing row comes first.
    first = page.locator("#fleet-attention")
    sync_api.expect(first).to_contain_text("1 of 2 nodes failing")
    assert "edge-pi-2 is untrusted" in first.inner_text()
    assert "policy.pcr_value" in first.inner_text() and "what to do:" in first.inner_text()
    assert page.locator("#fleet tbody tr").first.get_attribute("data-node") == "edge-pi-2"
    # The failed-checks chart is redrawn from the poll too (one bar: policy.pcr_value).
    failed_bars = page.locator("#fleet-charts .chart-denied rect.chart-bar")
    sync_api.expect(failed_bars).to_have_count(1)
    assert failed_bars.locator("title").text_content() == "policy.pcr_value: 1"
    assert page.locator("#fleet-charts .chart-rounds rect.chart-bar").count() == 60
    page.screenshot(path=str(shots / "fleet.png"), full_page=True)
    page.click("text=edge-pi-2")
    page.wait_for_url("**/ui/nodes/edge-pi-2")
    assert page.locator("#node-state .state").inner_text() == "untrusted"
    assert "policy.pcr_value" in page.locator("#node-checks").inner_text()
    assert page.locator("#events tbody tr").count() == 2  # enrolled → trusted → untrusted
    assert "node untrusted" in page.locator("#revocations").inner_text()
    page.screenshot(path=str(shots / "node.png"), full_page=True)
    assert page.evaluate("window.__csp") == []
    page.click("#policy-link")  # the class's reference values, with their set/rollback forms
    page.wait_for_url("**/ui/policies/pi-k3s")
    assert "sha256" in page.locator("#policy-document").inner_text()
    assert page.locator("#policy-set textarea").count() == 1
    page.screenshot(path=str(shots / "policies.png"), full_page=True)
    assert page.evaluate("window.__csp") == []


@pytest.fixture(scope="module")
def crafted(env: Env) -> str:
    trusted(env, "crafted-node")
    with env.server.attest.sessions.begin() as s:
        s.execute(update(NodeRow).where(NodeRow.name == "crafted-node").values(
            node_class=PAYLOADS[0], last_verdict={"trusted": False, "failed_checks": [
                {"check": PAYLOADS[2], "detail": PAYLOADS[1], "hint": PAYLOADS[0]}]}))
    return "crafted-node"


# With the CSP (nothing is blocked because nothing is injected) and with the CSP bypassed,
# where only the escaping stands between a payload and its execution.
@pytest.mark.parametrize("bypass", [False, True], ids=["csp", "csp-bypassed"])
def test_injected_strings_do_not_execute(browser: Any, env: Env, crafted: str,
                                         bypass: bool) -> None:
    context = browser.new_context(base_url=str(env.client.base_url), bypass_csp=bypass)
    page = context.new_page()
    page.add_init_script(WATCH)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, env.server.operator_token)
    page.wait_for_url("**/ui/")
    for path in ("/ui/", f"/ui/nodes/{crafted}"):
        answer = page.goto(path)
        assert answer.headers["content-security-policy"] == CSP, path
        if bypass:  # and once a poll has re-rendered the live parts from the JSON
            sync_api.expect(page.locator("#live")).to_contain_text("updated", timeout=6000)
        assert page.evaluate("window.__pwned") is None, path
        # No element a payload would make; the fleet page's own charts are svg.chart-svg.
        assert page.locator("img, svg:not(.chart-svg)").count() == 0, path
        assert page.locator("svg[onload]").count() == 0, path
        assert PAYLOADS[1] in page.locator("body").inner_text(), path
        assert page.evaluate("window.__csp") == [], path
    assert errors == [], errors
    context.close()


def test_a_post_without_csrf_is_refused(page: Any, env: Env) -> None:
    trusted(env, "kept-node")
    log_in(page, env.server.operator_token)
    page.wait_for_url("**/ui/")
    resp = page.request.post("/ui/nodes/kept-node/remove", form={})  # the session cookie only
    assert resp.status == 403 and "ui.csrf" in resp.text()
    resp = page.request.post("/ui/nodes/kept-node/remove", form={"csrf": "forged"})
    assert resp.status == 403 and "ui.csrf" in resp.text()
    assert env.client.get("/attest/v1/nodes/kept-node").status_code == 200
    page.goto("/ui/nodes/kept-node")
    page.click("#remove")  # the page's own form carries the token
    page.wait_for_url("**/ui/?removed=kept-node")
    assert "removed kept-node" in page.locator(".flash").inner_text()
    assert env.client.get("/attest/v1/nodes/kept-node").status_code == 404


# --- the Admission, Tokens and Sensors pages ------------------------------------------------

CRAFTED_POD = 'web-<img src=x onerror="window.__pwned=4">'
CRAFTED_IMAGE = ('registry.local/x:<img src=x onerror="window.__pwned=5">'
                 '<svg onload="window.__pwned=6">')


def _deny(env: Env, namespace: str, name: str, image: str) -> None:
    from admission.service.denials import DeniedContainer
    log = next(s for s in env.server.services if s.name == "admission").parts.denials
    log.note(namespace=namespace, name=name, kind="Pod", operation="CREATE",
             endpoint="validate", uid=f"uid-{len(name)}-{namespace}", message="denied",
             containers=[DeniedContainer("spec.containers[0]", image, "sha256:" + "2" * 64,
                                         (), (("policy.unsatisfied",
                                               "0 of the required 1 signatures"),))])
    log.flush()


@pytest.mark.parametrize("bypass", [False, True], ids=["csp", "csp-bypassed"])
def test_crafted_pod_and_image_do_not_execute_on_the_admission_page(
        browser: Any, env: Env, bypass: bool) -> None:
    _deny(env, "tenant-x", CRAFTED_POD, CRAFTED_IMAGE)
    context = browser.new_context(base_url=str(env.client.base_url), bypass_csp=bypass)
    page = context.new_page()
    page.add_init_script(WATCH)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, env.server.operator_token)
    page.wait_for_url("**/ui/")
    page.goto("/ui/admission?namespace=tenant-x")
    # and once a poll has rebuilt the denial rows from the JSON
    sync_api.expect(page.locator("#live")).to_contain_text("updated", timeout=6000)
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img").count() == 0
    assert page.locator("svg:not(.chart-svg)").count() == 0  # only the charts' own
    row = page.locator("#denials tbody tr").first
    assert CRAFTED_POD in row.inner_text() and CRAFTED_IMAGE in row.inner_text()
    assert page.evaluate("window.__csp") == []
    assert errors == []
    context.close()


def test_a_denial_appears_live(page: Any, env: Env, shots: Path) -> None:
    _deny(env, "shop", "checkout-7f9c", "registry.local/shop/checkout@sha256:" + "3" * 64)
    log_in(page, env.server.operator_token)
    page.wait_for_url("**/ui/")
    page.goto("/ui/admission")
    page.evaluate("window.__sameDocument = true")
    _deny(env, "shop", "payments-5d2a", "registry.local/shop/payments:latest")
    row = page.locator('#denials tr[data-pod="payments-5d2a"]')
    sync_api.expect(row).to_have_count(1, timeout=6000)
    assert page.evaluate("window.__sameDocument") is True
    assert "policy.unsatisfied" in row.inner_text()
    page.goto("/ui/admission")  # the charts are drawn on load
    page.screenshot(path=str(shots / "admission.png"), full_page=True)
    # What two other replicas flushed to token_issuance_counts: the page sums every server.
    from mec_api.tokens.issuance_counts import IssuanceCounts, hour_of
    hour = hour_of(env.server.attest.now().timestamp())
    IssuanceCounts(env.server.attest.sessions.kw["bind"]).flush({
        (hour, "shop:checkout", "edge-pi-1"): 41, (hour - 2, "shop:checkout", "edge-pi-1"): 12,
        (hour, "vision:classifier", "edge-pi-2"): 9})
    page.goto("/ui/tokens")
    assert page.locator("#feed-health").inner_text() == "current"
    assert page.locator("#workloads .issued-all").all_inner_texts() == ["53", "9"]
    page.screenshot(path=str(shots / "tokens.png"), full_page=True)
    page.goto("/ui/sensors")
    page.screenshot(path=str(shots / "sensors.png"), full_page=True)
    assert page.evaluate("window.__csp") == []
