"""Bounded, typed HTTP for every µMEC process (``umec server``, ``umec webhook``, ``umec api``).

Three pieces, each defined once and used by all three processes:

- :class:`BodyLimits`, a pure ASGI middleware that wraps ``receive``: a request body is refused
  with 413 before anything past its route's limit is read (a declared ``Content-Length`` is
  checked up front, a chunked body is counted as it streams), refused with 408 when it is not
  fully received within the deadline (total, and per chunk while idle), and refused with 503
  when the bodies held by the process would pass a memory budget. The refusal is sent by the
  middleware itself with ``Connection: close``; the application then sees a client disconnect
  and whatever it answers is dropped. Any answer sent before the body was fully read closes
  the connection too, so an unread body can never keep a connection open.
- :func:`install_error_handlers` (defined in :mod:`kernel.problems`, the one error contract, and
  importable from here with :func:`error_response`): checked errors, 404, 405, validation
  errors, malformed bodies and 500 become typed errors: RFC 9457 problem+json (``type``,
  ``title``, ``status``, ``check``, ``detail``, ``hint``), or RFC 6749 §5.2 JSON (``error``,
  ``error_description``) under ``/oauth2``. No default ``{"detail": …}`` body and no stack
  trace reaches a client. The refusals below are rendered by the same code.
- :class:`BoundedHttpTools` and :func:`uvicorn_options`: what uvicorn itself does not bound.
  uvicorn's keep-alive timeout only runs between requests; a connection that sends its request
  head slowly (or nothing at all) was never timed out, and httptools buffers a request head of
  any size. This protocol closes a head not complete within ``HEADER_TIMEOUT_SECONDS`` (408),
  refuses a head over ``MAX_HEADER_BYTES`` (431), answers connections past ``MAX_CONNECTIONS``
  with 503, and answers uvicorn's own parse errors as problem+json instead of plain text.

Nothing here reads application state; rules are passed in by each process's composition root.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from kernel.errors import CheckedError, reason_phrase
from kernel.problems import (
    OAUTH_PREFIX,
    PROBLEM_JSON,
    error_body,
    install_error_handlers,
    is_oauth,
)
from kernel.problems import problem_response as error_response

__all__ = ["OAUTH_PREFIX", "PROBLEM_JSON", "BodyLimits", "BodyPolicy", "BodyRule",
           "BoundedHttpTools", "Refused", "error_body", "error_response",
           "install_error_handlers", "is_oauth", "raw_error", "uvicorn_options"]

log = logging.getLogger("umec.http")

DEFAULT_MAX_BODY = 1 << 20
DEFAULT_BODY_SECONDS = 10.0
IDLE_SECONDS = 5.0
DEFAULT_BUDGET = 64 << 20
HEADER_TIMEOUT_SECONDS = 10.0
MAX_HEADER_BYTES = 64 * 1024
MAX_CONNECTIONS = 1000


# --------------------------------------------------------------------------- error bodies

def raw_error(path: str, status: int, check: str, detail: str, hint: str,
              headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 response with ``Connection: close`` (for the protocol level)."""
    body, typed = error_body(path, status, check, detail, hint)
    payload = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}", "connection: close",
             f"content-length: {len(payload)}",
             *(f"{k}: {v}" for k, v in {**(headers or {}), **typed}.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


# --------------------------------------------------------------------------- body limits

@dataclass(frozen=True)
class BodyRule:
    """Bodies under ``prefix`` may have up to ``max_bytes``; ``seconds`` overrides the deadline."""

    prefix: str
    max_bytes: int
    seconds: float | None = None


@dataclass(frozen=True)
class BodyPolicy:
    rules: Sequence[BodyRule] = ()
    default_bytes: int = DEFAULT_MAX_BODY
    seconds: float = DEFAULT_BODY_SECONDS
    idle_seconds: float = IDLE_SECONDS
    budget_bytes: int = DEFAULT_BUDGET

    def for_path(self, path: str) -> tuple[int, float]:
        """(byte limit, deadline) of the longest matching prefix, else the defaults."""
        best: BodyRule | None = None
        for rule in self.rules:
            if path.startswith(rule.prefix) and (best is None or
                                                 len(rule.prefix) > len(best.prefix)):
                best = rule
        if best is None:
            return self.default_bytes, self.seconds
        return best.max_bytes, best.seconds or self.seconds


class Refused(CheckedError):
    """A request refused before its route ran (its status is decided per refusal)."""

    def __init__(self, status: int, check: str, detail: str, hint: str,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        super().__init__(detail, check=check, hint=hint)

    def message(self) -> str:
        return f"{self.status} {self.check}: {self.detail}"

    def problem_headers(self) -> dict[str, str]:
        return self.headers


def too_large(limit: int, seen: int | str) -> Refused:
    return Refused(413, "request.body_size",
                   f"the request body ({seen} bytes) exceeds this route's limit of {limit} bytes",
                   f"Send at most {limit} bytes to this route.")


def _declared(scope: Scope) -> tuple[int | None, bool]:
    """(Content-Length or None, whether a body follows at all)."""
    length: int | None = None
    chunked = False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            if not value.strip().isdigit() or length is not None:
                raise Refused(400, "request.content_length",
                              f"invalid Content-Length {value[:40]!r}",
                              "Send one decimal Content-Length, or a chunked body.")
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return length, chunked or bool(length)


@dataclass
class _Exchange:
    """One request as the middleware sees it."""

    path: str
    limit: int
    seconds: float
    deadline: float
    body_done: bool
    received: int = 0
    started: bool = False
    taken_over: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class BodyLimits:
    """Pure ASGI middleware: body size, body time and body memory limits (see the module doc)."""

    def __init__(self, app: ASGIApp, policy: BodyPolicy | None = None) -> None:
        self.app = app
        self.policy = policy or BodyPolicy()
        self.in_flight = 0  # body bytes held by requests still running in this process

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit, seconds = self.policy.for_path(path)
        ex = _Exchange(path, limit, seconds, anyio.current_time() + seconds, body_done=True)
        try:
            length, has_body = _declared(scope)
            if length is not None and length > limit:
                raise too_large(limit, length)
        except Refused as r:
            await self._refuse(ex, send, r)
            return
        ex.body_done = not has_body
        try:
            await self.app(scope, self._receive(ex, receive, send), self._send(ex, send))
        except Exception:
            if not ex.taken_over:
                raise
            # We answered already; the application only noticed that its client is gone.
        finally:
            self.in_flight -= ex.received

    def _receive(self, ex: _Exchange, receive: Receive, send: Send) -> Receive:
        async def limited() -> Message:
            if ex.taken_over:
                return {"type": "http.disconnect"}
            if ex.body_done:
                return await receive()
            try:
                return self._count(ex, await self._next(ex, receive))
            except Refused as r:
                await self._refuse(ex, send, r)
                return {"type": "http.disconnect"}
        return limited

    async def _next(self, ex: _Exchange, receive: Receive) -> Message:
        wait = min(self.policy.idle_seconds, ex.deadline - anyio.current_time())
        if wait > 0:
            with anyio.move_on_after(wait):
                return await receive()
        raise Refused(408, "request.body_timeout",
                      f"the request body was not received in time ({ex.received} bytes "
                      f"arrived; this route allows {ex.seconds:g} s for the whole body and "
                      f"{self.policy.idle_seconds:g} s between chunks)",
                      "Send the whole body without pauses; retry on a faster link.")

    def _count(self, ex: _Exchange, message: Message) -> Message:
        if message["type"] != "http.request":
            return message
        size = len(message.get("body", b""))
        if ex.received + size > ex.limit:
            raise too_large(ex.limit, f"more than {ex.received + size}")
        if self.in_flight + size > self.policy.budget_bytes:
            raise Refused(503, "server.body_budget",
                          "the server holds as many request bodies as it may; nothing was read",
                          "Retry in a moment.", {"retry-after": "1"})
        ex.received += size
        self.in_flight += size
        if not message.get("more_body", False):
            ex.body_done = True
        return message

    def _send(self, ex: _Exchange, send: Send) -> Send:
        async def checked(message: Message) -> None:
            if ex.taken_over:
                return  # the application's late answer to a request we refused
            if message["type"] == "http.response.start":
                ex.started = True
                if not ex.body_done:  # an unread body must not hold the connection open
                    headers = [(k, v) for k, v in message.get("headers", ())
                               if k.lower() != b"connection"]
                    message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)
        return checked

    async def _refuse(self, ex: _Exchange, send: Send, r: Refused) -> None:
        log.info("request refused", extra={"check": r.check, "path": ex.path,
                                           "status": r.status})
        was_started, ex.taken_over = ex.started, True
        if was_started:
            return  # too late for a status; the connection closes when the app stops
        body, typed = error_body(ex.path, r.status, r.check, r.detail, r.hint)
        payload = json.dumps(body).encode()
        headers = {**r.headers, **typed, "content-length": str(len(payload)),
                   "connection": "close"}
        await send({"type": "http.response.start", "status": r.status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        await send({"type": "http.response.body", "body": payload})


# --------------------------------------------------------------------------- uvicorn

class BoundedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and a size limit on the request head, a
    connection cap, and typed answers for what it refuses."""

    header_timeout = HEADER_TIMEOUT_SECONDS
    max_header_bytes = MAX_HEADER_BYTES
    max_connections = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_head = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse(503, "server.connections", "the server has too many open connections",
                         "Retry in a moment.", {"retry-after": "1"})
            return
        self._head_started()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started()

    def on_headers_complete(self) -> None:
        self._head_done()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(431, "request.header_size",
                             f"the request head exceeds {self.max_header_bytes} bytes",
                             "Send fewer or shorter headers.")

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "request.http", msg, "Send a well-formed HTTP/1.1 request.")

    def _head_started(self) -> None:
        if not self._in_head:
            self._in_head, self._head_bytes = True, 0
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timeout)

    def _head_done(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self._refuse(408, "request.header_timeout",
                         f"the request head was not received within {self.header_timeout:g} s",
                         "Send the request without pauses.")
        else:
            self.transport.close()

    def _refuse(self, status: int, check: str, detail: str, hint: str,
                headers: dict[str, str] | None = None) -> None:
        self._head_done()
        if not self.transport.is_closing():
            self.transport.write(raw_error("", status, check, detail, hint, headers))
            self.transport.close()


def uvicorn_options() -> dict[str, Any]:
    """What every ``uvicorn.run`` of a µMEC process passes (see docs/decisions.md, "Request
    limits"): the bounded protocol and a short keep-alive."""
    return {"http": BoundedHttpTools, "timeout_keep_alive": 5}
