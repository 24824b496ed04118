"""RFC 7807 problem+json responses shared by every µMEC API (MEC 009/011 ``ProblemDetails``).

Clients get ``type``, ``title``, ``status``, ``detail`` and, where useful, ``instance``; never a
stack trace. ``ProblemError`` can be raised from any route or dependency; ``handle_problems``
makes an app render it. The routers use :class:`ProblemRoute`, so a malformed request to any
µMEC API is a 400 ``request.schema`` problem (MEC 011 specifies 400) in whichever app includes
them. ``install_problem_handlers`` also types FastAPI's own errors, for an app of APIs alone.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """An error a client should see: status, a short title and a detail that says what to do."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = headers or {}
        self.extra = extra or {}


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, exc.title, exc.detail, type_=exc.type,
                            instance=request.url.path, headers=exc.headers, extra=exc.extra)


def handle_problems(app: FastAPI) -> None:
    """``ProblemError`` (raised by the routes and the guard) leaves ``app`` as problem+json."""
    app.add_exception_handler(ProblemError, _on_problem)


def validation_problem(exc: RequestValidationError) -> ProblemError:
    """A request that does not match the API: 400 ``request.schema``, naming the fields."""
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
              for e in exc.errors()]
    named = "; ".join(f"{'.'.join(e['loc']) or 'body'}: {e['msg']}" for e in errors[:5])
    return ProblemError(400, "Bad Request", f"the request does not match the API: {named}",
                        type_="urn:umec:request.schema",
                        extra={"check": "request.schema",
                               "hint": "Fix the named fields; see /docs for the schema.",
                               "errors": errors})


class ProblemRoute(APIRoute):
    """The route class of every µMEC API router: a request whose parameters or body do not
    validate is answered 400 ``request.schema`` (MEC 011's status for malformed requests),
    whatever the including app answers for its other routes (``umec server``: 422)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def problem_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise validation_problem(exc) from None
        return problem_handler


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves a µMEC API app as problem+json."""

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return await _on_problem(request, validation_problem(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(
            exc.status_code,
            _TITLES.get(exc.status_code, "Error"),
            str(exc.detail),
            instance=request.url.path,
            headers=dict(exc.headers or {}),
        )

    handle_problems(app)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    412: "Precondition Failed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
}
