"""The dashboard as an ASGI app of its own, mounted by ``umec.app`` at ``/ui``.

Its own app so that every answer under ``/ui`` — pages, assets, JSON, refusals, 404s — carries
the security headers (:class:`SecurityHeaders`) and refusals of pages render as HTML while
those of ``/ui/api`` stay problem+json. Routes are sync ``def``: they read the database, so
FastAPI runs them in the thread pool, never on the event loop.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel.errors import CheckedError
from kernel.problems import checked_response
from kernel.ratelimit import RateLimiter
from umec.ui import data, render
from umec.ui.policy_routes import router as policy_router
from umec.ui.routes import log_refusal, router
from umec.ui.session import NotLoggedIn, UiNotFound, UiRefused

log = logging.getLogger("umec.ui")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response of the wrapped app (plain ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in SECURITY_HEADERS if h[0] not in names)]
            await send(message)
        await self.app(scope, receive, with_headers)


def build_ui(sources: data.UiSources) -> FastAPI:
    """The dashboard app (mount it at ``/ui``)."""
    ui = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    ui.state.sources = sources
    ui.state.login_limits = RateLimiter(rate=1.0, burst=20.0)
    ui.include_router(router)
    ui.include_router(policy_router)
    ui.add_exception_handler(CheckedError, _on_checked)
    ui.add_exception_handler(StarletteHTTPException, _on_http)
    ui.add_exception_handler(Exception, _on_unexpected)
    ui.add_middleware(SecurityHeaders)
    return ui


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/ui/api/")


async def _on_checked(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CheckedError)
    log_refusal(request, exc)
    if _is_api(request):
        return checked_response(exc, request.url.path)
    if isinstance(exc, NotLoggedIn) and request.method == "GET":
        return RedirectResponse("/ui/login", status_code=303)
    return HTMLResponse(render.error_page(exc), status_code=exc.status)


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return await _on_checked(request, UiNotFound(f"no page at {request.url.path}"))
    err = UiRefused(f"{request.method} {request.url.path}: {exc.detail}",
                    check=f"http.{exc.status_code}", hint="Start from the fleet page (/ui/).")
    err.status = exc.status_code
    return await _on_checked(request, err)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.error("dashboard error", exc_info=exc)
    err = UiRefused("the server could not answer this page", check="ui.internal",
                    hint="Operators: see the server log.")
    err.status = 500
    return await _on_checked(request, err)
