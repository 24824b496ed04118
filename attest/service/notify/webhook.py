"""Signed webhooks for node state changes, and the check receivers run on them.

Wire format (GitHub/Stripe style), one ``POST`` per configured URL per event::

    Content-Type:     application/json
    X-Umec-Event:     node.state_changed
    X-Umec-Delivery:  <event_id>            same on every retry: receivers de-duplicate on it
    X-Umec-Timestamp: <unix seconds>        fresh on every attempt
    X-Umec-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

    body: compact JSON of NodeStateChanged.to_json(), keys sorted

Signing the timestamp together with the exact body bytes gives integrity and origin (only holders
of the shared secret can produce the MAC) and, with the receiver's freshness window, replay
protection: a captured delivery stops verifying ``tolerance`` seconds after it was sent, and the
delivery id lets receivers drop duplicates inside that window.

Receivers call :func:`verify_webhook_signature` on the raw body *before* parsing JSON. It runs, in
order: (1) shape of the timestamp and signature headers, (2) constant-time MAC comparison,
(3) freshness of the (now authenticated) timestamp; each step raises its own typed error.

Delivery (:class:`WebhookSink`): URLs are delivered concurrently and independently; each attempt
is re-signed with a fresh timestamp (so a late retry is not rejected as stale). Connection errors,
timeouts, 5xx and 429 are retried ``retries`` times with exponential backoff and full jitter
(``Retry-After`` is honoured up to ``backoff_max``); other statuses are final, since a receiver
that rejects the signature will reject it again. Redirects are not followed: a signed event must
not be forwarded to a host the operator did not configure.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import httpx

from attest.service.notify.event import (
    EVENT_TYPE,
    NOTIFY_FAILURES,
    NodeStateChanged,
    NotifyError,
    backoff_delay,
)

log = logging.getLogger(__name__)

SIGNATURE_PREFIX: Final = "sha256="
MIN_SECRET_BYTES: Final = 16
DEFAULT_TOLERANCE: Final = 300
_TIMESTAMP_RE: Final = re.compile(r"[0-9]{1,15}")
_SIGNATURE_RE: Final = re.compile(r"sha256=([0-9a-f]{64})")


class WebhookSecretTooShort(NotifyError):
    check = "notify.webhook.secret"
    hint = (f"Use a random webhook secret of at least {MIN_SECRET_BYTES} bytes "
            "(e.g. `openssl rand -hex 32`) on both the sender and the receiver.")


class WebhookUrlInvalid(NotifyError):
    check = "notify.webhook.url"
    hint = "Webhook URLs must be absolute http:// or https:// URLs with a host."


class WebhookSignatureMalformed(NotifyError):
    check = "notify.webhook.signature_format"
    hint = ("The request lacks a well-formed X-Umec-Timestamp (unix seconds) or X-Umec-Signature "
            "(sha256=<64 hex>) header; it was not sent by µMEC Trust.")


class WebhookSignatureMismatch(NotifyError):
    check = "notify.webhook.signature"
    hint = ("The HMAC does not match: the body was altered in transit or the receiver's secret "
            "differs from the sender's; compare the configured secrets.")


class WebhookTimestampStale(NotifyError):
    check = "notify.webhook.timestamp"
    hint = ("The delivery is outside the freshness window (a replay, or clocks out of sync): "
            "check NTP on sender and receiver; drop the request.")


def _require_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
        length = len(secret) if isinstance(secret, bytes) else type(secret).__name__
        raise WebhookSecretTooShort(f"secret length {length}")


def encode_body(event: NodeStateChanged) -> bytes:
    """The exact bytes that are sent and signed (compact, sorted keys, UTF-8)."""
    return json.dumps(event.to_json(), separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False).encode("utf-8")


def sign_webhook(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Umec-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    _require_secret(secret)
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify_webhook_signature(secret: bytes, timestamp: str | None, body: bytes,
                             header: str | None, now: float,
                             tolerance: int = DEFAULT_TOLERANCE) -> None:
    """Check a received webhook; returns None when authentic and fresh, raises otherwise.

    ``timestamp`` and ``header`` are the raw ``X-Umec-Timestamp`` and ``X-Umec-Signature`` values
    (None when absent), ``body`` the raw request body, ``now`` the receiver's unix time. Pure: no
    clock read, no I/O.
    """
    _require_secret(secret)
    # Step 1: shape. fullmatch (not match/$) so a trailing newline or sign cannot sneak through.
    if not isinstance(timestamp, str) or _TIMESTAMP_RE.fullmatch(timestamp) is None:
        raise WebhookSignatureMalformed(f"X-Umec-Timestamp={timestamp!r:.40}")
    sig = _SIGNATURE_RE.fullmatch(header) if isinstance(header, str) else None
    if sig is None:
        raise WebhookSignatureMalformed(f"X-Umec-Signature={header!r:.80}")
    # Step 2: authenticity, compared in constant time over bytes.
    expected = sign_webhook(secret, timestamp, body)[len(SIGNATURE_PREFIX):]
    if not hmac.compare_digest(expected.encode("ascii"), sig.group(1).encode("ascii")):
        raise WebhookSignatureMismatch(f"signature {sig.group(1)[:12]}… for timestamp {timestamp}")
    # Step 3: freshness, in both directions (a far-future stamp would otherwise replay for long).
    age = now - int(timestamp)
    if abs(age) > tolerance:
        raise WebhookTimestampStale(f"timestamp {timestamp} is {age:.0f}s from now "
                                    f"(tolerance {tolerance}s)")


def redact_url(url: str) -> str:
    """The URL without credentials, query or fragment: safe to log (tokens often live there)."""
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None, query=None,
                                            fragment=None))
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<invalid url>"


def _validate_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as err:
        raise WebhookUrlInvalid(f"{redact_url(url)}: {err}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise WebhookUrlInvalid(redact_url(url))
    return url


def _retry_after(response: httpx.Response) -> float | None:
    # Only the delta-seconds form; str.isdigit() would accept "²", which float() rejects.
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if re.fullmatch(r"[0-9]{1,6}", value) else None


class WebhookSink:
    """POST signed state-change events to every configured URL; never raises for delivery."""

    name = "webhook"

    def __init__(self, urls: Sequence[str], secret: bytes, client: httpx.AsyncClient,
                 timeout: float = 5.0, retries: int = 3, *, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        _require_secret(secret)
        if retries < 0 or timeout <= 0 or backoff_base < 0 or backoff_max < 0:
            raise NotifyError(f"retries={retries} timeout={timeout} backoff={backoff_base}/"
                              f"{backoff_max} must be non-negative (timeout positive)")
        self.urls = tuple(_validate_url(u) for u in urls)
        self._secret = secret
        self._client = client
        self._timeout = timeout
        self._retries = retries
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._clock = clock
        self._rng = rng
        self._sleep = sleep

    async def publish(self, event: NodeStateChanged) -> None:
        body = encode_body(event)
        await asyncio.gather(*(self._deliver_guarded(url, event, body) for url in self.urls))

    async def _deliver_guarded(self, url: str, event: NodeStateChanged, body: bytes) -> bool:
        try:
            return await self._deliver(url, event, body)
        except Exception as err:  # a bug must not reach the verifier either; it is still counted
            self._failed(url, event, attempts=0, error=f"{type(err).__name__}: {err}")
            return False

    async def _deliver(self, url: str, event: NodeStateChanged, body: bytes) -> bool:
        attempt = 0
        while True:
            attempt += 1
            timestamp = str(int(self._clock()))
            headers = {
                "Content-Type": "application/json",
                "X-Umec-Event": EVENT_TYPE,
                "X-Umec-Delivery": event.event_id,
                "X-Umec-Timestamp": timestamp,
                "X-Umec-Signature": sign_webhook(self._secret, timestamp, body),
            }
            hinted: float | None = None
            try:
                response = await self._client.post(url, content=body, headers=headers,
                                                   timeout=self._timeout, follow_redirects=False)
            except httpx.TransportError as err:  # refused, reset, DNS, timeouts: transient
                error, retryable = f"{type(err).__name__}: {err}", True
            except httpx.HTTPError as err:
                error, retryable = f"{type(err).__name__}: {err}", False
            else:
                if response.is_success:
                    log.debug("webhook delivered", extra={
                        "notify_sink": self.name, "event_id": event.event_id,
                        "url": redact_url(url), "attempts": attempt})
                    return True
                status = response.status_code
                error, retryable = f"HTTP {status}", status >= 500 or status == 429
                hinted = _retry_after(response)
            if not retryable or attempt > self._retries:
                self._failed(url, event, attempts=attempt, error=error)
                return False
            delay = backoff_delay(attempt, self._backoff_base, self._backoff_max, self._rng)
            if hinted is not None:
                delay = min(self._backoff_max, max(delay, hinted))
            await self._sleep(delay)

    def _failed(self, url: str, event: NodeStateChanged, *, attempts: int, error: str) -> None:
        NOTIFY_FAILURES.labels(sink=self.name).inc()
        log.warning("webhook delivery failed", extra={
            "notify_sink": self.name, "event_id": event.event_id, "node": event.node,
            "state": event.state, "url": redact_url(url), "attempts": attempts, "error": error})
