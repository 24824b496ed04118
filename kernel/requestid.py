"""Request ids and the access log of every µMEC HTTP process (``umec server``, ``umec api``,
``umec webhook``), once, below the domains.

:class:`RequestIds` is a pure ASGI middleware, the outermost of each app:

* the request's id is its ``X-Request-ID`` when that is a sane token (:func:`sane_request_id`:
  1 to :data:`MAX_REQUEST_ID` visible ASCII characters, ``!`` to ``~``), else a new one
  (32 hex digits); a requester's value that is not sane is replaced, never cut or escaped;
* the id is set in :data:`REQUEST_ID` (a context variable) for the whole request, so every log
  line written while it runs carries it (``umec.logs`` adds ``request_id`` to each line), in
  the route's thread-pool thread too (Starlette copies the context into it);
* the answer carries it in ``X-Request-ID`` (refusals of the body limits and error answers
  included: they pass through here);
* when the answer is complete, one JSON line goes to the ``umec.access`` logger (INFO):
  ``method``, ``path``, ``route`` (the route template, ``unmatched`` when none matched),
  ``status``, ``duration_ms``, ``peer`` and the id.

The id is the requester's text: it is logged and echoed, never trusted for anything else.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: umec.logs imports this module in the slim agent (no starlette)
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HEADER", "MAX_REQUEST_ID", "REQUEST_ID", "RequestIds", "current_request_id",
           "new_request_id", "request_id_of", "sane_request_id"]

HEADER = "x-request-id"
MAX_REQUEST_ID = 128
REQUEST_ID: ContextVar[str | None] = ContextVar("umec_request_id", default=None)

access_log = logging.getLogger("umec.access")


def sane_request_id(value: str) -> bool:
    """Whether a requester's ``X-Request-ID`` may be used as it is: 1 to
    :data:`MAX_REQUEST_ID` characters, each visible ASCII (``!`` to ``~``: no space, no
    control character, nothing outside ASCII)."""
    return 0 < len(value) <= MAX_REQUEST_ID and all("!" <= c <= "~" for c in value)


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_of(raw: bytes | None) -> str:
    """The id of a request whose ``X-Request-ID`` header is ``raw`` (``None``: absent)."""
    if raw is not None and len(raw) <= MAX_REQUEST_ID:
        value = raw.decode("latin-1")
        if sane_request_id(value):
            return value
    return new_request_id()


def current_request_id() -> str | None:
    """The id of the request being answered, ``None`` outside a request."""
    return REQUEST_ID.get()


def _header(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return bytes(value)
    return None


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class RequestIds:
    """Request ids and the access log line (see the module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(_header(scope))
        token = REQUEST_ID.set(rid)
        start = time.perf_counter()
        status = 500
        echoed = (HEADER.encode(), rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, echoed]}
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._log(scope, status, start)
            REQUEST_ID.reset(token)

    @staticmethod
    def _log(scope: Scope, status: int, start: float) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        access_log.info("request", extra={
            "method": scope.get("method"), "path": scope.get("path"),
            "route": getattr(scope.get("route"), "path", "unmatched"), "status": status,
            "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            "peer": _peer(scope)})
