"""The one error contract of every µMEC HTTP process: RFC 9457 problem+json.

Every error answer is rendered here (:func:`problem_response`, :func:`checked_response`) and one
installer (:func:`install_error_handlers`) makes an app answer with it:

* a :class:`~kernel.errors.CheckedError` leaving a route: the status it carries, its ``check``,
  ``detail`` and ``hint``;
* a request that does not validate: ``request.schema`` with 422 or 400 (``validation_status``);
* Starlette's own HTTP errors (404, 405, malformed bodies): ``route.unknown``, ``route.method``,
  ``request.malformed``;
* anything else: a 500 ``internal`` without the exception's text; the trace goes to the log.

Every refusal of a checked error answered for a request (:func:`checked_response` with its
``request``: the handler, the metrics gate, the webhook, the dashboard) writes one WARNING line
to the ``umec.http`` logger, ``request refused``, with ``route`` (the route template),
``path``, ``method``, ``status``, ``check``, ``peer``, ``detail`` and, through the logging
setup, the ``request_id`` (:mod:`kernel.requestid`): every denial and every refused operator
call (401 ``operator.token``) is in the log once, named by its check.

A problem object has ``type``, ``title``, ``status``, ``check``, ``detail``, ``hint`` and, when
the request's path is known, ``instance``, plus what the error adds (``errors`` of a schema
error; ``error``, the class name, of attestation and admission errors). Media type
``application/problem+json``. Under ``/oauth2`` the answer is RFC 6749 §5.2 JSON instead
(``error``, ``error_description``, ``check``, ``hint``; ``application/json``, ``no-store``): an
OAuth client reads nothing else. See docs/decisions.md, "One error contract".
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from kernel.errors import CheckedError, reason_phrase

__all__ = ["OAUTH_PREFIX", "PROBLEM_JSON", "RequestSchemaInvalid", "checked_response",
           "error_body", "install_checked_handler", "install_error_handlers", "is_oauth",
           "log_refusal", "problem_response", "schema_error"]

log = logging.getLogger("umec.http")

PROBLEM_JSON = "application/problem+json"
OAUTH_PREFIX = "/oauth2"
_OAUTH_CODES = {401: "invalid_client", 500: "server_error", 503: "temporarily_unavailable"}
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def is_oauth(path: str) -> bool:
    return path == OAUTH_PREFIX or path.startswith(OAUTH_PREFIX + "/")


def error_body(path: str, status: int, check: str, detail: str, hint: str,
               extra: dict[str, Any] | None = None, *, type_: str | None = None,
               title: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The error object for a request to ``path`` and the headers its kind needs (the media
    type included). ``type_`` defaults to ``urn:umec:<check>``, ``title`` to the reason phrase;
    an empty ``path`` (an answer below HTTP routing) leaves ``instance`` out."""
    if is_oauth(path):
        body = {"error": _OAUTH_CODES.get(status, "invalid_request"),
                "error_description": detail, "check": check, "hint": hint}
        return body, {"content-type": "application/json", **_NO_STORE}
    problem: dict[str, Any] = {"type": type_ or f"urn:umec:{check}",
                               "title": title or reason_phrase(status), "status": status,
                               "check": check, "detail": detail, "hint": hint, **(extra or {})}
    if path:
        problem["instance"] = path
    return problem, {"content-type": PROBLEM_JSON}


def header_safe(value: str) -> str:
    """A header value that can always be sent: printable ASCII (anything else, including CR and
    LF, becomes ``?``), at most 1 KiB. Header values may carry a requester's text."""
    return "".join(c if " " <= c <= "~" else "?" for c in value[:1024])


def problem_response(path: str, status: int, check: str, detail: str, hint: str, *,
                     headers: dict[str, str] | None = None,
                     extra: dict[str, Any] | None = None, type_: str | None = None,
                     title: str | None = None) -> JSONResponse:
    """The answer to a request to ``path`` that failed ``check`` (see :func:`error_body`)."""
    body, typed = error_body(path, status, check, detail, hint, extra, type_=type_, title=title)
    media = typed.pop("content-type")
    headers = {k: header_safe(v) for k, v in (headers or {}).items()}
    return JSONResponse(body, status_code=status, media_type=media,
                        headers={**(headers or {}), **typed})


def _internal(path: str) -> JSONResponse:
    return problem_response(path, 500, "internal",
                            "the server could not complete the request; nothing was accepted",
                            "Retry later; operators: see the server log.")


MAX_LOGGED_DETAIL = 512


def log_refusal(err: CheckedError, request: Request) -> None:
    """The one log line of a refused request (see the module doc)."""
    client = request.client
    log.warning("request refused", extra={
        "route": getattr(request.scope.get("route"), "path", "unmatched"),
        "path": request.url.path, "method": request.method, "status": err.status,
        "check": err.check, "peer": client.host if client else "unknown",
        "detail": err.detail[:MAX_LOGGED_DETAIL]})


def checked_response(err: CheckedError, path: str,
                     request: Request | None = None) -> JSONResponse:
    """The answer for ``err``: its status, check, detail and hint (a non-public error, one about
    the server's own setup, is the generic 500; its detail goes to the log only). With the
    ``request`` it answers, the refusal is logged (:func:`log_refusal`)."""
    if not err.public:
        log.error("unhandled error", exc_info=err)
        return _internal(path)
    if request is not None:
        log_refusal(err, request)
    return problem_response(path, err.status, err.check, err.problem_detail(), err.hint,
                            headers=err.problem_headers(), extra=err.problem_extra(),
                            type_=err.problem_type(), title=err.problem_title())


class RequestSchemaInvalid(CheckedError):
    """A request's parameters or body do not match the API (its status is the app's choice:
    422, or 400 where an API such as MEC 011 specifies it)."""

    check = "request.schema"
    hint = "Fix the named fields; see /docs for the schema."
    status = 422

    def __init__(self, detail: str, errors: list[dict[str, Any]], status: int) -> None:
        self.status = status
        self.errors = errors
        super().__init__(detail)

    def problem_extra(self) -> dict[str, Any]:
        return {"errors": self.errors}


# A bad request's answer stays small whatever it sent: at most this many errors, each location
# part and message cut (locations include keys the requester chose).
MAX_SCHEMA_ERRORS = 20
MAX_SCHEMA_TEXT = 64


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= MAX_SCHEMA_TEXT else text[:MAX_SCHEMA_TEXT] + "…"


def schema_error(exc: RequestValidationError, status: int = 422) -> RequestSchemaInvalid:
    """The typed error for a request that did not validate, naming its first five fields and
    listing at most :data:`MAX_SCHEMA_ERRORS` (the detail says how many there were)."""
    found = exc.errors()
    errors = [{"loc": [_short(p) for p in e.get("loc", ())], "msg": _short(e.get("msg", ""))}
              for e in found[:MAX_SCHEMA_ERRORS]]
    named = "; ".join(f"{'.'.join(e['loc']) or 'body'}: {e['msg']}" for e in errors[:5])
    more = f" (and {len(found) - 5} more)" if len(found) > 5 else ""
    return RequestSchemaInvalid(f"the request does not match the API: {named}{more}", errors,
                                status)


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status, path = exc.status_code, request.url.path
    default = str(exc.detail) == reason_phrase(status)
    if status == 404 and default:
        check, detail = "route.unknown", f"no resource at {path}"
        hint = "Check the path against the API description (/docs)."
    elif status == 405:
        check, detail = "route.method", f"{request.method} is not allowed on {path}"
        hint = "Use one of the methods in the Allow header."
    elif status == 400:
        check, detail = "request.malformed", str(exc.detail)
        hint = "Send a well-formed body of the documented media type (see /docs)."
    else:
        check, detail, hint = f"http.{status}", str(exc.detail), "See /docs for the API."
    return problem_response(path, status, check, detail, hint, headers=dict(exc.headers or {}))


async def _on_checked(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CheckedError)
    return checked_response(exc, request.url.path, request)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return _http_error(request, exc)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ClientDisconnect):  # gone, or refused by a body limit: nobody reads it
        return problem_response(request.url.path, 400, "request.incomplete",
                                "the client went away before the request body was complete",
                                "Send the whole body.")
    # Fail closed and tell the client nothing internal; the trace goes to our log only.
    log.error("unhandled error", exc_info=exc)
    return _internal(request.url.path)


def install_checked_handler(app: FastAPI) -> None:
    """A :class:`CheckedError` leaving any route of ``app`` is answered with its own status."""
    app.add_exception_handler(CheckedError, _on_checked)


def install_error_handlers(app: FastAPI, *, validation_status: int = 422) -> None:
    """Every error leaves ``app`` typed: checked errors, requests that do not validate
    (``validation_status``: 422 for the attestation protocol, 400 where an API such as MEC 011
    specifies it), Starlette's HTTP errors and, as a 500 without internals, anything else."""

    async def on_invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return checked_response(schema_error(exc, validation_status), request.url.path, request)

    install_checked_handler(app)
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
