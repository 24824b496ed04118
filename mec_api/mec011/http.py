"""Helpers shared by the MEC 011 routers: the app-ownership guard, responses, store calls.

Errors need no mapping here: the store's and the core's errors are checked errors carrying their
HTTP status (``StoreError``, ``Mec011RuleError``), answered by the app's one handler
(:mod:`kernel.problems`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from kernel.offload import in_thread
from mec_api.deps import requires
from mec_api.principal import Principal
from mec_api.problems import ProblemError

P = ParamSpec("P")
T = TypeVar("T")
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def own_app(scope: str) -> Callable[..., Awaitable[Principal]]:
    """The guard's scope check, then: an app acts only on its own ``{appInstanceId}``."""
    authenticated = requires(scope)

    async def dependency(appInstanceId: str,
                         principal: Principal = Depends(authenticated)) -> Principal:
        if appInstanceId != principal.app_instance_id:
            raise ProblemError(
                403, "Forbidden",
                f"the token was issued to application instance {principal.app_instance_id!r}, "
                f"not {appInstanceId!r}: an app may act only on its own appInstanceId")
        return principal
    return dependency


async def call(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking store call off the event loop (its ``StoreError`` leaves with its
    status)."""
    return await in_thread(func, *args, **kwargs)


def check(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a pure core check (its ``Mec011RuleError`` leaves with its status): a plain call,
    which marks in a route where a MEC 011 rule is checked."""
    return func(*args, **kwargs)


def json_response(body: Any, status: int = 200, *, etag: str | None = None,
                  location: str | None = None) -> JSONResponse:
    headers: dict[str, str] = {}
    if etag is not None:
        headers["ETag"] = etag
    if location is not None:
        headers["Location"] = location
    return JSONResponse(body, status_code=status, headers=headers)


M = TypeVar("M", bound=BaseModel)


async def optional_body(request: Request, model: type[M]) -> M | None:
    """An optional JSON body (``required: false``): absent is fine; ``null`` or garbage is not
    (FastAPI would read ``null`` as "absent")."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ProblemError(400, "Bad Request",
                           f"the body is not a {model.__name__}: {where}: {first['msg']}") from None


def optional_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` describing the optional JSON body a route reads with
    :func:`optional_body` (FastAPI cannot see it: the route parses the body itself)."""
    return {"requestBody": {"required": False, "content": {
        "application/json": {"schema": inline_schema(model)}}}}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its ``$defs`` substituted (an operation's schema cannot
    carry its own ``$defs``: ``#/...`` refers to the whole OpenAPI document). Models with
    recursive references are not supported."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return resolve(defs[ref.removeprefix("#/$defs/")])
        return {key: resolve(value) for key, value in node.items()}
    resolved: dict[str, Any] = resolve(schema)
    return resolved


def no_content() -> Response:
    return Response(status_code=204)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def answer_other_methods(router: APIRouter) -> None:
    """405 with an ``Allow`` listing every method of the path (RFC 9110).

    Starlette answers 405 from the first route whose path matches, so a path served by two
    routes (GET and POST) would advertise only one of them."""
    allowed: dict[str, set[str]] = {}
    for route in router.routes:
        if isinstance(route, APIRoute):
            allowed.setdefault(route.path, set()).update(route.methods or ())
    for path, methods in allowed.items():
        router.add_api_route(path.removeprefix(router.prefix),
                             _method_not_allowed(", ".join(m for m in _METHODS if m in methods)),
                             methods=[m for m in _METHODS if m not in methods],
                             include_in_schema=False)


def _method_not_allowed(allow: str) -> Callable[[], Awaitable[Response]]:
    async def endpoint() -> Response:
        raise ProblemError(405, "Method Not Allowed", f"this resource supports {allow} only",
                           headers={"Allow": allow})
    return endpoint
