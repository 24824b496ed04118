"""The app's side of the platform: its scoped token, the camera and the classifier.

The access token lives in this object only: it is sent to the platform's APIs and nowhere else.
Answers from the platform are parsed strictly (``parse_token_answer``,
``parse_classification``); anything else is an ``AppError`` naming what was wrong.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx

from umec_examples.classifier_app.config import SCOPES, AppConfig
from umec_examples.classifier_app.errors import AppError, clip

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
REFRESH_MARGIN = 30.0  # seconds before expiry when a new token is fetched
RETRY_SECONDS = 10.0   # how long a 503 with Retry-After (the guard not current) is retried


@dataclass(frozen=True)
class AccessToken:
    value: str
    expires_at: float  # time.monotonic()
    scope: str


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float


def _service_said(body: Any) -> str:
    """``check: description`` from a refusal (RFC 6749 JSON or problem+json), or ''."""
    if not isinstance(body, dict):
        return ""
    check = body.get("check")
    text = body.get("error_description") or body.get("detail") or body.get("error")
    parts = [str(p) for p in (check, text) if isinstance(p, str) and p]
    return clip(": ".join(parts))


def parse_token_answer(body: Any, now: float) -> AccessToken:
    """A successful RFC 8693 answer: a Bearer ``access_token`` with a positive ``expires_in``."""
    if not isinstance(body, dict):
        raise _bad_token_answer("not a JSON object")
    token, kind, expires = body.get("access_token"), body.get("token_type"), body.get("expires_in")
    if not isinstance(token, str) or not token or not token.isascii() or " " in token:
        raise _bad_token_answer("no access_token")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise _bad_token_answer("token_type is not Bearer")
    if isinstance(expires, bool) or not isinstance(expires, int) or expires <= 0:
        raise _bad_token_answer("expires_in is not a positive integer")
    scope = body.get("scope")
    return AccessToken(token, now + expires, scope if isinstance(scope, str) else "")


def _bad_token_answer(why: str) -> AppError:
    return AppError(503, "app.token_service", f"the token service's answer is unusable: {why}",
                    "check UMEC_TOKEN_ENDPOINT names the µMEC token service")


def parse_classification(body: Any) -> list[Prediction]:
    """The inference API's ``predictions``: at least one, each a label and a score in [0, 1]."""
    items = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise _bad_classification("no predictions")
    found = []
    for item in items:
        label = item.get("label") if isinstance(item, dict) else None
        score = item.get("score") if isinstance(item, dict) else None
        if not isinstance(label, str) or not label:
            raise _bad_classification("a prediction without a label")
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
            raise _bad_classification("a score outside [0, 1]")
        found.append(Prediction(clip(label, 100), float(score)))
    return found


def _bad_classification(why: str) -> AppError:
    return AppError(502, "app.inference", f"the inference API's answer is unusable: {why}",
                    "check UMEC_API_URL names the µMEC inference API")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


class Platform:
    """The token exchange and the two API calls, over one HTTP client."""

    def __init__(self, config: AppConfig, client: httpx.AsyncClient | None = None) -> None:
        self.config = config
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(config.ca_file))
        self.client = client or httpx.AsyncClient(verify=verify, timeout=30)
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self.client.aclose()

    @property
    def held_token(self) -> str | None:
        """The access token held now (tests check it never reaches the browser)."""
        return self._token.value if self._token else None

    def _subject_token(self) -> str:
        try:
            text = self.config.subject_token_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AppError(503, "app.subject_token",
                           f"cannot read the service-account token "
                           f"{self.config.subject_token_file}: {type(exc).__name__}",
                           "mount the projected token (audience umec) at "
                           "UMEC_SUBJECT_TOKEN_FILE") from None
        if not text:
            raise AppError(503, "app.subject_token", "the service-account token file is empty",
                           "mount the projected token (audience umec) at "
                           "UMEC_SUBJECT_TOKEN_FILE")
        return text

    async def token(self, *, fresh: bool = False) -> str:
        async with self._lock:
            now = time.monotonic()
            if fresh or self._token is None or self._token.expires_at - now < REFRESH_MARGIN:
                self._token = None
                self._token = await self._exchange(now)
            return self._token.value

    async def _exchange(self, now: float) -> AccessToken:
        form = {"grant_type": TOKEN_EXCHANGE, "subject_token": self._subject_token(),
                "subject_token_type": TOKEN_TYPE_JWT, "scope": SCOPES}
        try:
            answer = await self.client.post(self.config.token_endpoint, data=form)
        except httpx.HTTPError as exc:
            raise AppError(503, "app.token_service",
                           f"the token service is unreachable: {type(exc).__name__}",
                           "check UMEC_TOKEN_ENDPOINT and the network policy") from None
        if 400 <= answer.status_code < 500:
            said = _service_said(_json(answer)) or f"HTTP {answer.status_code}"
            raise AppError(503, "app.token_exchange",
                           f"the token service refused this app a token: {said}",
                           "the app runs only as a signed, admitted pod on a trusted node; "
                           "ask the site operator (umec nodes, umec admissions)")
        if answer.status_code != 200:
            raise AppError(503, "app.token_service",
                           f"the token service failed: HTTP {answer.status_code}",
                           "retry in a moment")
        return parse_token_answer(_json(answer), now)

    async def _call(self, method: str, path: str, check: str, media_type: str | None = None,
                    **kwargs: Any) -> httpx.Response:
        """One API call with the held token: a 401 gets one new token and one retry; a 503
        with ``Retry-After`` is retried for up to RETRY_SECONDS; any other failure names the
        API's own check."""
        deadline = time.monotonic() + RETRY_SECONDS
        fresh = False
        while True:
            headers = {"Authorization": f"Bearer {await self.token(fresh=fresh)}"}
            if media_type:
                headers["Content-Type"] = media_type
            try:
                answer = await self.client.request(method, f"{self.config.api_url}{path}",
                                                   headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                raise AppError(502, check, f"the API is unreachable: {type(exc).__name__}",
                               "check UMEC_API_URL and the network policy") from None
            wait = answer.headers.get("retry-after", "")
            if answer.status_code == 401 and not fresh:
                fresh = True
            elif answer.status_code == 503 and wait.isdigit() and time.monotonic() < deadline:
                await asyncio.sleep(min(float(wait), 2.0))
            elif answer.status_code != 200:
                raise _api_refused(check, answer)
            else:
                return answer

    async def picture(self) -> bytes:
        answer = await self._call("GET", f"/camera/v1/cameras/{self.config.camera}/snapshot",
                                  "app.camera")
        if not answer.content.startswith(b"\xff\xd8"):
            raise AppError(502, "app.camera", "the camera API's answer is not a JPEG",
                           "check UMEC_API_URL names the µMEC camera API")
        return answer.content

    async def classify(self, jpeg: bytes) -> list[Prediction]:
        answer = await self._call(
            "POST", f"/inference/v1/models/{self.config.model}/classify", "app.inference",
            params={"top_k": 3}, content=jpeg, media_type="image/jpeg")
        return parse_classification(_json(answer))


def _api_refused(check: str, answer: httpx.Response) -> AppError:
    said = _service_said(_json(answer)) or f"HTTP {answer.status_code}"
    api = "camera" if check == "app.camera" else "inference"
    return AppError(502, check, f"the {api} API answered {answer.status_code}: {said}",
                    "a 401 or 403 means the platform no longer trusts this app or its node; "
                    "ask the site operator")

