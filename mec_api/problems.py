"""Problems of the µMEC APIs (MEC 009/011 ``ProblemDetails``), rendered by :mod:`kernel.problems`.

:class:`ProblemError` is a plain HTTP problem a route or the guard raises (a status, a title and
a detail that says what to do); it is a :class:`~kernel.errors.CheckedError` like every other
error, so the one handler answers it with its own status. The routers use
:class:`ProblemRoute`, so a malformed request to any µMEC API is a 400 ``request.schema``
problem (MEC 011 specifies 400) in whichever app includes them. ``install_problem_handlers``
installs the whole contract, for an app of APIs alone.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute

from kernel.errors import CheckedError
from kernel.problems import (
    PROBLEM_JSON,
    install_checked_handler,
    install_error_handlers,
    schema_error,
)

__all__ = ["PROBLEM_JSON", "ProblemError", "ProblemRoute", "handle_problems",
           "install_problem_handlers"]

_URN = "urn:umec:"


class ProblemError(CheckedError):
    """An error a client should see: status, a short title and a detail that says what to do.

    ``check`` defaults to the ``type`` past ``urn:umec:`` (``urn:umec:token.missing`` →
    ``token.missing``), else ``http.<status>``; its detail says what to do."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        check: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.type = type_
        self.headers = headers or {}
        self.extra = extra or {}
        if check is None:
            check = type_.removeprefix(_URN) if type_.startswith(_URN) else f"http.{status}"
        super().__init__(detail, check=check, hint=hint)

    def message(self) -> str:
        return f"{self.status} {self.title}: {self.detail}"

    def problem_type(self) -> str:
        return self.type

    def problem_title(self) -> str:
        return self.title

    def problem_extra(self) -> dict[str, Any]:
        return self.extra

    def problem_headers(self) -> dict[str, str]:
        return self.headers


def handle_problems(app: FastAPI) -> None:
    """Checked errors (``ProblemError``, raised by the routes and the guard, and every domain
    error) leave ``app`` as problem+json with their own status."""
    install_checked_handler(app)


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
                raise schema_error(exc, 400) from None
        return problem_handler


def install_problem_handlers(app: FastAPI) -> None:
    """Every error leaves a µMEC API app as problem+json (requests that do not validate: 400)."""
    install_error_handlers(app, validation_status=400)
