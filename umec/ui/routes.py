"""The dashboard's routes (relative to its mount point, ``/ui``).

Pages need a session cookie (a GET without one is sent to the login page); every POST checks a
CSRF token before anything else: the login form's double-submit value, then the session's own.
The operator actions call attest's operator functions (``attest.service.operator``, the same
as ``umec nodes ack|remove`` and their routes) with the server's own context, so a removal
revokes the node's tokens in its transaction.
"""

from __future__ import annotations

import logging
import re
import time
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from attest.service import operator, registrar
from kernel.bearer import bearer_matches
from kernel.errors import CheckedError
from kernel.ratelimit import RateLimiter
from umec.ui import data, pages, render
from umec.ui.session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    LoginRateLimited,
    NotLoggedIn,
    UiNotFound,
    UiRefused,
    UiSession,
    WrongToken,
    check_csrf,
    csrf_token,
    issue,
    login_nonce,
    parse,
    session_key,
    valid_login_nonce,
)

log = logging.getLogger("umec.ui")

ASSETS = {"dashboard.css": "text/css; charset=utf-8",
          "dashboard.js": "text/javascript; charset=utf-8"}
NODE_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")   # a DNS-1123 label
TAG_MAC = re.compile(r"[0-9A-F]{2}(:[0-9A-F]{2}){5}")


class BadQuery(UiRefused):
    check = "ui.query"
    status = 400
    hint = ("Use a Kubernetes namespace name (lower-case letters, digits, '-'), a tag MAC "
            "like CB:B8:33:4C:88:4F and hours 1, 6, 24 or 168.")

router = APIRouter()
FormField = Annotated[str, Form()]


def _sources(request: Request) -> data.UiSources:
    sources = request.app.state.sources
    assert isinstance(sources, data.UiSources)
    return sources


def _key(request: Request) -> bytes:
    return session_key(_sources(request).attest.config.operator_token)


def _session(request: Request) -> UiSession:
    """The request's session; :class:`NotLoggedIn` without a valid one."""
    found = parse(request.cookies.get(SESSION_COOKIE), _key(request), time.time())
    if found is None:
        raise NotLoggedIn("no valid dashboard session (absent, expired, or signed with another "
                          "operator token)")
    return found


def _csrf(request: Request) -> str:
    """The session's CSRF token (and so: the request has a session)."""
    return csrf_token(_key(request), _session(request))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _node_name(node: str) -> str:
    if NODE_NAME.fullmatch(node) is None:
        raise registrar.NodeNotFound(f"no node named {node!r}")
    return node


def _source(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def log_refusal(request: Request, err: CheckedError) -> None:
    """One log line per refused dashboard request (never the token or the cookie)."""
    log.warning("dashboard request refused", extra={
        "path": request.url.path, "method": request.method, "check": err.check,
        "status": err.status, "source": _source(request)})


# --- login and logout ------------------------------------------------------------------------

def _login_form(request: Request, error: CheckedError | None = None) -> HTMLResponse:
    """The login form with a fresh double-submit value in its cookie and hidden field."""
    nonce = login_nonce()
    response = HTMLResponse(render.login_page(nonce, error),
                            status_code=200 if error is None else error.status)
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=900, path="/ui/login", httponly=True,
                        samesite="strict", secure=_secure(request))
    return response


def _check_login(request: Request, token: str) -> None:
    """The source's rate, then the operator token (compared in constant time)."""
    limits: RateLimiter = request.app.state.login_limits
    if limits.retry_after(_source(request), time.monotonic()) > 0:
        raise LoginRateLimited(f"too many login attempts from {_source(request)}")
    if not bearer_matches(f"Bearer {token}", _sources(request).attest.config.operator_token):
        raise WrongToken("that is not the operator token")


@router.get("/login")
def login_page(request: Request) -> Response:
    return _login_form(request)


@router.post("/login")
def login(request: Request, token: FormField = "", csrf: FormField = "") -> Response:
    check_csrf(valid_login_nonce(request.cookies.get(LOGIN_COOKIE)), csrf)
    try:
        _check_login(request, token)
    except UiRefused as err:
        log_refusal(request, err)
        return _login_form(request, err)
    _, cookie = issue(_key(request), time.time())
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_SECONDS, path="/ui",
                        httponly=True, samesite="strict", secure=_secure(request))
    response.delete_cookie(LOGIN_COOKIE, path="/ui/login", httponly=True, samesite="strict",
                           secure=_secure(request))
    return response


@router.post("/logout")
def logout(request: Request, csrf: FormField = "") -> Response:
    check_csrf(_csrf(request), csrf)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/ui", httponly=True, samesite="strict",
                           secure=_secure(request))
    return response


# --- pages -----------------------------------------------------------------------------------

@router.get("/")
def fleet_page(request: Request, removed: str | None = None) -> Response:
    csrf = _csrf(request)
    flash = None
    if removed is not None and NODE_NAME.fullmatch(removed):
        flash = f"removed {removed}; its tokens are revoked and it must enrol again"
    rows = data.fleet(_sources(request))
    charts = pages.fleet_charts(rows, data.rounds_per_minute(time.time()))
    return HTMLResponse(render.fleet_page(rows, csrf, flash, charts))


def _detail(request: Request, node: str) -> dict[str, Any]:
    found = data.node_detail(_sources(request), _node_name(node))
    if found is None:
        raise registrar.NodeNotFound(f"no node named {node!r}")
    return found


@router.get("/nodes/{node}")
def node_page(request: Request, node: str) -> Response:
    csrf = _csrf(request)
    return HTMLResponse(render.node_page(_detail(request, node), csrf))


def namespace_filter(value: str | None) -> str | None:
    """The ``namespace`` query parameter: absent or empty is every namespace."""
    if value is None or value == "":
        return None
    if NAMESPACE.fullmatch(value) is None:
        raise BadQuery(f"namespace {value[:80]!r} is not a Kubernetes namespace name")
    return value


def sensor_query(tag: str | None, hours: str | None) -> tuple[str | None, int]:
    if tag is not None and tag != "" and TAG_MAC.fullmatch(tag.upper()) is None:
        raise BadQuery(f"tag {tag[:40]!r} is not a MAC address")
    if hours is not None and hours not in {str(h) for h in pages.HOURS}:
        raise BadQuery(f"hours {hours[:20]!r} is not one of {pages.HOURS}")
    return (tag.upper() if tag else None), int(hours or 24)


@router.get("/admission")
def admission_page(request: Request, namespace: str | None = None) -> Response:
    csrf = _csrf(request)
    view = data.admission(_sources(request), namespace_filter(namespace))
    return HTMLResponse(pages.admission_page(view, csrf))


@router.get("/tokens")
def tokens_page(request: Request) -> Response:
    csrf = _csrf(request)
    return HTMLResponse(pages.tokens_page(data.tokens(_sources(request)), csrf))


@router.get("/sensors")
def sensors_page(request: Request, tag: str | None = None, hours: str | None = None) -> Response:
    csrf = _csrf(request)
    mac, span = sensor_query(tag, hours)
    src = _sources(request)
    return HTMLResponse(pages.sensors_page(data.sensors(src, mac, span), src.attest.now(), csrf))


# --- operator actions ------------------------------------------------------------------------

@router.post("/nodes/{node}/ack")
def ack_node(request: Request, node: str, csrf: FormField = "") -> Response:
    check_csrf(_csrf(request), csrf)
    operator.acknowledge(_sources(request).attest, _node_name(node))
    return RedirectResponse(f"/ui/nodes/{node}", status_code=303)


@router.post("/nodes/{node}/remove")
def remove_node(request: Request, node: str, csrf: FormField = "") -> Response:
    check_csrf(_csrf(request), csrf)
    operator.remove_node(_sources(request).attest, _node_name(node))
    return RedirectResponse(f"/ui/?removed={node}", status_code=303)


# --- what the page's script polls ------------------------------------------------------------

@router.get("/api/fleet")
def fleet_json(request: Request) -> Any:
    _session(request)
    rows = data.fleet(_sources(request))
    return JSONResponse({"nodes": rows, "charts": {
        "chart-rounds": data.rounds_per_minute(time.time()),
        "chart-denied": data.failed_checks_by_type(rows)}})


@router.get("/api/nodes/{node}")
def node_json(request: Request, node: str) -> Any:
    _session(request)
    found = _detail(request, node)
    return JSONResponse({k: found[k] for k in ("name", "node_class", "state",
                                               "state_changed_at", "evidence_age",
                                               "failed_checks")})


@router.get("/api/admission")
def admission_json(request: Request, namespace: str | None = None) -> Any:
    _session(request)
    view = data.admission(_sources(request), namespace_filter(namespace))
    return JSONResponse({"denials": view["denials"]})


# --- packaged assets (no CDN: the site may be offline) -----------------------------------------

@router.get("/static/{name}")
def static_asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise UiNotFound(f"no asset named {name!r}")
    body = resources.files("umec.ui").joinpath("static", name).read_bytes()
    return Response(body, media_type=media)


__all__ = ["router"]
