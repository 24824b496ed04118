"""The sample app in a real browser: Debian's Chromium (/usr/bin/chromium, installed by
scripts/setup.sh) driven by Playwright, against the app and a real ``umec server`` whose camera
serves scikit-image's coffee cup. A person clicks the button and sees the label; nothing the
browser receives carries the platform token; a refused token exchange shows its check and
hint, not a trace; the page runs under its CSP without a violation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.umec_examples.conftest import COFFEE, RunningApp

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="Debian's chromium is not installed (scripts/setup.sh "
                                       "installs it; CI runs these tests)")
sync_api = pytest.importorskip("playwright.sync_api")
WATCH = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
         "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    pg = context.new_page()
    pg.add_init_script(WATCH)
    pg.set_default_timeout(30000)
    yield pg
    context.close()


def received(page: Any) -> list[Any]:
    """Every response the page gets, recorded from now on."""
    seen: list[Any] = []
    page.on("response", lambda response: seen.append(response))
    return seen


def test_click_takes_a_picture_and_shows_the_label(page: Any, admitted_app: RunningApp) -> None:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    responses = received(page)
    page.goto(admitted_app.url)
    assert page.locator("h1").inner_text() == "What does the site camera see?"
    assert page.locator("#result").is_hidden()
    page.click("#shoot")
    sync_api.expect(page.locator("#result")).to_be_visible(timeout=60000)
    label = page.locator("#label").inner_text()
    assert label in COFFEE, label
    assert page.locator("#score").inner_text().endswith(" %")
    assert page.locator("#others li").count() == 2
    assert page.locator("#picture").evaluate("img => img.naturalWidth") == 600  # the photo
    assert page.locator("#problem").is_hidden()
    token = admitted_app.held_token
    assert token  # held by the app's server ...
    for response in responses:  # ... and in nothing the browser received
        body = response.body() if response.request.method != "HEAD" else b""
        headers = "".join(f"{k}: {v}" for k, v in response.all_headers().items())
        assert token.encode() not in body and token not in headers, response.url
    assert token not in page.content()
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("window.__csp") == [] and errors == []


def test_refused_token_exchange_is_shown_clearly(page: Any, refused_app: RunningApp) -> None:
    page.goto(refused_app.url)
    page.click("#shoot")
    sync_api.expect(page.locator("#problem")).to_be_visible(timeout=30000)
    assert page.locator("#problem-check").inner_text() == "app.token_exchange"
    detail = page.locator("#problem-detail").inner_text()
    assert "refused this app a token" in detail and "admission.pod" in detail
    assert "trusted node" in page.locator("#problem-hint").inner_text()
    assert page.locator("#result").is_hidden()
    text = page.locator("body").inner_text()
    assert "Traceback" not in text and "File \"" not in text
    assert page.evaluate("window.__csp") == []
