"""The sample app over real HTTP against a real ``umec server``: it classifies the camera's
picture with a token it holds server-side (no answer to the browser carries it), refuses
cleanly when its token exchange is refused, refuses cross-site posts, and sends its security
headers; hypothesis over its three parsers (environment, token answer, classification)."""

from __future__ import annotations

import asyncio
import base64
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.umec_examples.conftest import COFFEE, RunningApp, Site
from umec_examples.classifier_app.config import AppConfig
from umec_examples.classifier_app.errors import AppError
from umec_examples.classifier_app.upstream import parse_classification, parse_token_answer
from umec_examples.classifier_app.web import CSP, create_app, render_page

POST = {"X-Classifier-App": "1"}


def browser_answers(url: str) -> list[httpx.Response]:
    """Everything a browser asks the app for: the page, its assets, one classification."""
    with httpx.Client(base_url=url, timeout=60) as browser:
        return [browser.get("/"), browser.get("/static/app.js"), browser.get("/static/app.css"),
                browser.post("/api/classify", headers=POST), browser.get("/healthz")]


def test_classifies_the_camera_picture_and_never_shows_the_token(
        admitted_app: RunningApp, site: Site) -> None:
    answers = browser_answers(admitted_app.url)
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200]
    body = answers[3].json()
    assert body["label"] in COFFEE and 0 < body["score"] <= 1, body
    assert body["camera"] == "site-cam" and len(body["others"]) == 2
    picture = base64.b64decode(body["picture"].removeprefix("data:image/jpeg;base64,"))
    assert picture[:2] == b"\xff\xd8"
    token = admitted_app.held_token
    assert token and len(token) > 40  # the app did exchange, and holds the token
    subject = (site.work / "admitted.token").read_text()
    for answer in answers:
        seen = answer.content + json.dumps(dict(answer.headers)).encode()
        assert token.encode() not in seen and subject.encode() not in seen, answer.url
        # nor any part of it a page could put back together
        assert token.split(".")[2].encode() not in seen, answer.url


def test_refused_token_exchange_is_a_clear_error(refused_app: RunningApp) -> None:
    with httpx.Client(base_url=refused_app.url, timeout=60) as browser:
        answer = browser.post("/api/classify", headers=POST)
        page = browser.get("/")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["check"] == "app.token_exchange", problem
    assert "admission.pod" in problem["detail"]  # the token service's own check, named
    assert "admitted pod on a trusted node" in problem["hint"]
    assert "Traceback" not in answer.text and "File \"" not in answer.text
    assert refused_app.held_token is None
    assert page.status_code == 200  # the page still opens, and shows the error when asked


def test_unreadable_subject_token_is_named(site: Site, tmp_path: Path) -> None:
    app = create_app(site.app_config(tmp_path / "absent"))
    answer = asyncio_post(app)
    assert answer.status_code == 503 and answer.json()["check"] == "app.subject_token"
    assert str(tmp_path / "absent") in answer.json()["detail"]


def asyncio_post(app: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    """One POST through the app in-process (httpx's ASGI transport is async only)."""
    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://app") as client:
            return await client.post("/api/classify", headers=POST if headers is None
                                     else headers)
    return asyncio.run(post())


def test_a_post_without_the_page_header_is_refused(admitted_app: RunningApp) -> None:
    for headers in ({}, {"X-Classifier-App": "0"}, {"Content-Type": "text/plain"}):
        answer = httpx.post(f"{admitted_app.url}/api/classify", headers=headers, timeout=30)
        assert answer.status_code == 403, headers
        assert answer.json()["check"] == "app.csrf"


def test_security_headers_on_every_answer(admitted_app: RunningApp) -> None:
    for answer in [*browser_answers(admitted_app.url),
                   httpx.get(f"{admitted_app.url}/static/nope.js", timeout=30),
                   httpx.post(f"{admitted_app.url}/api/classify", timeout=30)]:
        assert answer.headers["content-security-policy"] == CSP, answer.url
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
    assert "script-src 'self';" in CSP and "default-src 'none'" in CSP


def test_page_has_no_inline_script_and_escapes_its_values(site: Site) -> None:
    crafted = AppConfig(token_endpoint="http://x/oauth2/token", api_url="http://x",
                        subject_token_file=Path("/nonexistent"),
                        camera='<script>alert(1)</script>', model='"><img src=x onerror=1>')
    page = render_page(crafted)
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=1&gt;" in page
    tags = Tags()
    tags.feed(page)
    assert tags.scripts == [{"src": "/static/app.js", "defer": None}]  # no inline script
    assert not [a for a in tags.attributes if a.startswith("on")]  # no inline handlers
    assert tags.names.count("img") == 1  # the page's own picture; the crafted <img> is text


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.attributes: list[str] = []
        self.scripts: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.append(tag)
        self.attributes += [name for name, _ in attrs]
        if tag == "script":
            self.scripts.append(dict(attrs))


def test_an_unexpected_failure_is_500_without_a_trace(site: Site, tmp_path: Path) -> None:
    token = tmp_path / "t"
    token.write_text("x")
    app = create_app(site.app_config(token))

    async def broken(**kwargs: Any) -> str:
        raise RuntimeError("secret internal state")
    app.state.platform.token = broken
    answer = asyncio_post(app)
    assert answer.status_code == 500 and answer.json()["check"] == "app.internal"
    assert "secret internal state" not in answer.text and "Traceback" not in answer.text
    assert answer.headers["content-security-policy"] == CSP


# --- parsers ----------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=20)
TOKEN_KEYS = st.fixed_dictionaries({}, optional={
    "access_token": st.text(max_size=30) | st.integers(), "token_type": st.sampled_from(
        ["Bearer", "bearer", "DPoP", "", "N_A"]) | st.integers(),
    "expires_in": st.integers(-5, 10_000) | st.floats(allow_nan=False) | st.booleans()
    | st.text(max_size=4), "scope": st.text(max_size=20) | st.none()})


@settings(max_examples=300)
@given(st.one_of(JSON, TOKEN_KEYS))
def test_token_answer_parses_or_is_refused(body: Any) -> None:
    try:
        token = parse_token_answer(body, 100.0)
    except AppError as exc:
        assert (exc.status, exc.check) == (503, "app.token_service")
        return
    assert isinstance(body, dict) and token.value == body["access_token"]
    assert body["token_type"].lower() == "bearer" and token.value.isascii()
    assert token.expires_at == 100.0 + body["expires_in"] > 100.0


PREDICTION = st.fixed_dictionaries({}, optional={
    "label": st.text(max_size=120) | st.integers(), "score": st.floats(-1, 2) | st.integers(-1, 2)
    | st.booleans() | st.text(max_size=3)})


@settings(max_examples=300)
@given(st.one_of(JSON, st.fixed_dictionaries({"predictions": st.lists(PREDICTION, max_size=4)
                                               | JSON})))
def test_classification_parses_or_is_refused(body: Any) -> None:
    try:
        predictions = parse_classification(body)
    except AppError as exc:
        assert (exc.status, exc.check) == (502, "app.inference")
        return
    assert len(predictions) == len(body["predictions"]) >= 1
    for p in predictions:
        assert p.label and len(p.label) <= 101 and 0 <= p.score <= 1


ENV_KEYS = ["UMEC_TOKEN_ENDPOINT", "UMEC_API_URL", "UMEC_SUBJECT_TOKEN_FILE", "UMEC_CA_FILE",
            "APP_CAMERA", "APP_MODEL", "APP_LISTEN_HOST", "APP_LISTEN_PORT"]
ENV_VALUES = st.sampled_from(["https://umec.example/oauth2/token", "http://127.0.0.1:8",
                              "ftp://x", "http://", "http://[::1", "site-cam", "A", "8080",
                              "0", "65536", "٣", "", "cam\n", "x y"]) | st.text(max_size=20)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(ENV_KEYS), ENV_VALUES))
def test_environment_parses_or_names_the_variable(env: dict[str, str]) -> None:
    try:
        config = AppConfig.from_env(env)
    except AppError as exc:
        assert (exc.status, exc.check) == (500, "app.config")
        assert exc.detail.split(":")[0] in ENV_KEYS
        return
    assert config.token_endpoint == env["UMEC_TOKEN_ENDPOINT"]
    assert config.api_url.startswith(("http://", "https://"))
    assert 0 < config.port < 65536
    for name in (config.camera, config.model):
        assert name.isascii() and name == name.strip() and "\n" not in name


def test_environment_defaults() -> None:
    config = AppConfig.from_env({"UMEC_TOKEN_ENDPOINT": "https://s/oauth2/token",
                                 "UMEC_API_URL": "https://s/"})
    assert (config.api_url, config.camera, config.model, config.port) == (
        "https://s", "site-cam", "efficientnet-lite0", 8080)
    assert str(config.subject_token_file) == "/var/run/secrets/umec/token"
    with pytest.raises(AppError, match="UMEC_API_URL: missing"):
        AppConfig.from_env({"UMEC_TOKEN_ENDPOINT": "https://s/oauth2/token"})


GOOD_TOKEN = {"access_token": "eyJhbGciOiJFUzI1NiJ9.e30.c2ln", "token_type": "Bearer",
              "expires_in": 300, "scope": "camera.snapshot inference.classify"}


@pytest.mark.parametrize(("change", "why"), [
    ({"token_type": "DPoP"}, "token_type is not Bearer"),
    ({"token_type": None}, "token_type is not Bearer"),
    ({"expires_in": 0}, "expires_in"), ({"expires_in": True}, "expires_in"),
    ({"expires_in": 3.5}, "expires_in"), ({"access_token": "a b"}, "no access_token"),
    ({"access_token": ""}, "no access_token"), ({"access_token": "jwt\u00e9"}, "no access_token")])
def test_token_answer_refusals_named(change: dict[str, Any], why: str) -> None:
    assert parse_token_answer(GOOD_TOKEN, 0.0).expires_at == 300
    with pytest.raises(AppError, match=why) as refused:
        parse_token_answer({**GOOD_TOKEN, **change}, 0.0)
    assert refused.value.check == "app.token_service"


@pytest.mark.parametrize("prediction", [
    {"label": "cup", "score": 1.5}, {"label": "cup", "score": -0.1},
    {"label": "cup", "score": True}, {"label": "", "score": 0.5}, {"score": 0.5}, {"label": "cup"}])
def test_classification_refusals(prediction: dict[str, Any]) -> None:
    assert parse_classification({"predictions": [{"label": "cup", "score": 0.5}]})[0].label == "cup"
    with pytest.raises(AppError) as refused:
        parse_classification({"predictions": [{"label": "cup", "score": 0.5}, prediction]})
    assert refused.value.check == "app.inference"


@pytest.mark.parametrize("camera", ["cam\n", "Cam", "-cam", "cam/../x", "c" * 64, "çam"])
def test_camera_names_refused(camera: str) -> None:
    env = {"UMEC_TOKEN_ENDPOINT": "https://s/t", "UMEC_API_URL": "https://s", "APP_CAMERA": camera}
    with pytest.raises(AppError, match="APP_CAMERA"):
        AppConfig.from_env(env)
