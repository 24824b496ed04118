"""HTTP adapter of the token service (included in ``umec server``; reads ``app.state.tokens``).

- ``POST /oauth2/token``: RFC 8693 token exchange / client credentials with an RFC 7523
  assertion; errors as RFC 6749 §5.2 JSON (plus ``check`` and ``hint``), ``Cache-Control:
  no-store`` on every answer.
- ``POST /oauth2/introspect`` (RFC 7662): for resource servers holding the operator token.
- ``POST /oauth2/revoke`` (RFC 7009): possession of a valid token is enough to revoke it;
  200 whether or not the token was valid, as the RFC asks, so the endpoint tells nothing about
  tokens. A workload revoking more than ``revoke_limiter`` allows gets 429 (each revocation is
  an entry every resource server reads until the token would have expired).
- ``GET /oauth2/revocations[?since=<generation>]``: the revocation feed resource servers
  follow: the whole live set, or the entries numbered after the revocation generation the
  follower holds (:mod:`mec_api.tokens.feed_mirror`). Like a CRL it is public: it lists token
  ids, node names and pod UIDs, nothing that grants access. Concurrent callers share one
  database read that started after they asked (:class:`kernel.coalesce.CoalescedRead`), and a
  read costs a primary-key read plus the new entries: calling it in a loop costs little.
- ``GET /.well-known/oauth-authorization-server`` (RFC 8414) and ``/.well-known/jwks.json``.
- ``POST /tokens/v1/signing-key/rotate``: the operator (``Authorization: Bearer`` with the
  operator token) makes a fresh signing key active; the previous one stays in the JWKS for the
  overlap asked (at least the token lifetime plus 5 s), at most 8 keys at once. What ``umec
  tokens rotate-key`` calls in remote mode; problem+json refusals (``operator.token`` 401,
  ``tokens.rotate`` 400, ``tokens.rotate_too_many`` 409, ``tokens.key_directory`` 503).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, Form, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from pydantic import BaseModel, Field

from kernel.bearer import bearer_matches, require_operator_token
from kernel.fastroute import fast_path_route
from kernel.offload import in_thread
from keys import JwtInvalid, verify_jwt
from mec_api.scopes import ALL_SCOPES
from mec_api.tokens.deps import TokenRoutes, Tokens, token_routes
from mec_api.tokens.dpop import DPOP_ALGORITHMS
from mec_api.tokens.errors import (
    InvalidRequest,
    KeyDirectoryUnusable,
    KeyRingFull,
    KeyRotationRefused,
    TokenRefused,
)
from mec_api.tokens.feed_mirror import answer
from mec_api.tokens.issuer import CLIENT_CREDENTIALS, TOKEN_EXCHANGE, IssuedToken, TokenRequest
from mec_api.tokens.keyring import TooManyKeys
from mec_api.tokens.revocations import ACCEPTANCE_LEEWAY_SECONDS, token_epoch, token_pod_uid
from mec_api.tokens.scope_policy import parse_scope

log = logging.getLogger("umec.tokens")
ISSUED = Counter("umec_tokens_issued", "Access tokens issued.", ["grant"])
REFUSED = Counter("umec_tokens_refused", "Token requests refused, by failed check.", ["check"])
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
Text = Annotated[str | None, Form()]
router = APIRouter(tags=["tokens"])
_FORM_TEXT: dict[str, Any] = {"type": "string"}
# RFC 6749 §4.1.3 / RFC 8693 §2.1 / RFC 7523 §2.2, for the OpenAPI document only: the route
# parses the form itself (each parameter at most once, bounded), see ``_form``.
TOKEN_REQUEST_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/x-www-form-urlencoded": {"schema": {
        "type": "object", "required": ["grant_type"],
        "properties": {"grant_type": {"type": "string",
                                      "enum": [TOKEN_EXCHANGE, CLIENT_CREDENTIALS]},
                       **{name: _FORM_TEXT for name in (
                           "subject_token", "subject_token_type", "requested_token_type",
                           "actor_token", "client_assertion", "client_assertion_type",
                           "client_id", "scope", "audience", "resource")}}}}}}}


def _oauth_error(e: TokenRefused) -> JSONResponse:
    headers = dict(NO_STORE)
    if e.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="umec", error="invalid_client"'
    return JSONResponse(e.as_dict(), status_code=e.status, headers=headers)


MAX_FORM_BYTES = 64 * 1024


async def _form(request: Request) -> dict[str, str]:
    """RFC 6749 §3.2: ``application/x-www-form-urlencoded``, each parameter at most once.

    Parsed with the standard library rather than FastAPI's per-field form machinery, which
    cost more than the whole token decision."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise InvalidRequest(f"content type {ctype!r}: use application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InvalidRequest(f"request body of {len(body)} bytes exceeds {MAX_FORM_BYTES}")
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=False, strict_parsing=False,
                          max_num_fields=32)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidRequest(f"malformed form body ({type(e).__name__})") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise InvalidRequest(f"parameter {name!r} is repeated")
        form[name] = value
    return form


def _slow_down(wait: float) -> JSONResponse:
    return JSONResponse({"error": "slow_down", "check": "revoke.rate",
                         "error_description": "too many revocations by this workload",
                         "hint": "Revoke tokens you hold no more than a few times a second; "
                                 "retry after the Retry-After delay."},
                        status_code=429,
                        headers={**NO_STORE, "Retry-After": str(max(1, round(wait)))})


def _issue(ctx: TokenRoutes, req: TokenRequest) -> IssuedToken:
    """In a thread: on PostgreSQL the clock re-reads the database's time every few seconds,
    which must not block the event loop."""
    return ctx.issuer.issue(req, ctx.clock())


async def token(request: Request, ctx: Tokens) -> JSONResponse:
    """RFC 8693 token exchange and RFC 7523 client credentials (the body is documented by
    ``TOKEN_REQUEST_BODY`` and parsed by :func:`_form`)."""
    return await _exchange(request, ctx)


async def _token_fast(request: Request) -> JSONResponse:
    """:func:`token` without FastAPI's per-request handler (kernel.fastroute): the route
    parses its own form and answers every error itself, so it takes every request."""
    return await _exchange(request, await token_routes(request))


router.add_api_route("/oauth2/token", token, methods=["POST"], openapi_extra=TOKEN_REQUEST_BODY,
                     route_class_override=fast_path_route(_token_fast))


async def _exchange(request: Request, ctx: TokenRoutes) -> JSONResponse:
    try:
        form = await _form(request)
        parse_scope(form.get("scope"))  # the caps, before any signature or policy work
    except TokenRefused as e:
        REFUSED.labels(e.check).inc()
        return _oauth_error(e)
    grant_type = form.get("grant_type") or ""
    req = TokenRequest(
        grant_type=grant_type, subject_token=form.get("subject_token"),
        subject_token_type=form.get("subject_token_type"),
        requested_token_type=form.get("requested_token_type"),
        actor_token=form.get("actor_token"), client_assertion=form.get("client_assertion"),
        client_assertion_type=form.get("client_assertion_type"),
        client_id=form.get("client_id"), scope=form.get("scope"),
        audience=form.get("audience") or form.get("resource"),
        dpop_proof=request.headers.get("dpop"), method="POST",
        url=ctx.issuer.config.token_endpoint)
    try:
        issued = await in_thread(_issue, ctx, req)
    except TokenRefused as e:
        REFUSED.labels(e.check).inc()
        log.log(logging.INFO if e.public else logging.WARNING, "token refused",
                extra={"check": e.check, "detail": e.detail})
        return _oauth_error(e)
    ISSUED.labels("exchange" if grant_type == TOKEN_EXCHANGE else "client").inc()
    return JSONResponse(issued.response(grant_type == TOKEN_EXCHANGE), headers=NO_STORE)


def _verified_claims(ctx: TokenRoutes, token: str | None) -> Mapping[str, Any] | None:
    """The claims of a token this service issued and that is still accepted (no I/O)."""
    if not token:
        return None
    config = ctx.issuer.config
    try:
        return verify_jwt(token, ctx.issuer.ring, algorithms=["ES256"], issuer=config.issuer,
                          audience=list(config.audiences), now=ctx.clock().timestamp(),
                          leeway=ACCEPTANCE_LEEWAY_SECONDS, typ="at+jwt",
                          required_claims=("exp", "iat", "iss", "jti")).claims
    except JwtInvalid:
        return None


def _revoked(ctx: TokenRoutes, claims: Mapping[str, Any]) -> bool:
    """This process's followed list (no I/O), then one indexed query for the entries that
    could match this token."""
    if ctx.revocations is not None and ctx.revocations.revoked(
            jti=str(claims["jti"]), node=claims.get("node"), node_epoch=token_epoch(claims),
            now=ctx.clock().timestamp(), pod_uid=token_pod_uid(claims)) is not None:
        return True
    return ctx.store.matches(jti=str(claims["jti"]), node=claims.get("node"),
                             node_epoch=token_epoch(claims), pod_uid=token_pod_uid(claims),
                             now=ctx.clock())


@router.post("/oauth2/introspect")
def introspect(ctx: Tokens, token: Text = None,
               authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
    if not bearer_matches(authorization, ctx.operator_token):
        return JSONResponse(
            {"error": "invalid_client",
             "error_description": "introspection needs the resource-server credential"},
            status_code=401, headers={**NO_STORE, "WWW-Authenticate": 'Bearer realm="umec"'})
    claims = _verified_claims(ctx, token)
    if claims is None or _revoked(ctx, claims):
        return JSONResponse({"active": False}, headers=NO_STORE)
    body = {"active": True, "token_type": "DPoP" if "cnf" in claims else "Bearer",
            **{k: v for k, v in claims.items() if k != "pod"}}
    return JSONResponse(body, headers=NO_STORE)


@router.post("/oauth2/revoke")
def revoke(ctx: Tokens, token: Text = None, token_type_hint: Text = None) -> JSONResponse:
    claims = _verified_claims(ctx, token)
    if claims is None:  # not ours or no longer accepted: nothing to revoke (RFC 7009: 200)
        return JSONResponse({}, headers=NO_STORE)
    # Limited before any database work: revoking a revoked token in a loop costs a bucket.
    wait = ctx.revoke_limiter.retry_after(str(claims.get("client_id", "")),
                                          ctx.clock().timestamp())
    if wait > 0:
        return _slow_down(wait)
    if not _revoked(ctx, claims):
        ctx.store.revoke_token(str(claims["jti"]), float(claims["exp"]),
                               "revoked by its holder (RFC 7009)", ctx.clock())
    return JSONResponse({}, headers=NO_STORE)


@router.get("/oauth2/revocations")
async def revocations(ctx: Tokens,
                      since: Annotated[int | None, Query(ge=0, le=2**62)] = None,
                      base: Annotated[str | None, Query(max_length=64)] = None,
                      after: Annotated[int, Query(ge=0)] = 0) -> Response:
    # ``since``: the revocation generation the follower holds (only newer entries are sent).
    # ``base`` and ``after`` are accepted and ignored: older followers send them and get the
    # whole set.
    view = await ctx.feed.get()
    return Response(answer(view, since), media_type="application/json",
                    headers={"Cache-Control": "no-store"})


@router.get("/.well-known/oauth-authorization-server")
def metadata(ctx: Tokens) -> dict[str, Any]:
    config = ctx.issuer.config
    base = config.token_endpoint.rsplit("/oauth2/", 1)[0]
    return {
        "issuer": config.issuer,
        "token_endpoint": config.token_endpoint,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "introspection_endpoint": f"{base}/oauth2/introspect",
        "revocation_endpoint": f"{base}/oauth2/revoke",
        "revocation_feed_endpoint": f"{base}/oauth2/revocations",
        "grant_types_supported": [TOKEN_EXCHANGE, CLIENT_CREDENTIALS],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "dpop_signing_alg_values_supported": sorted(DPOP_ALGORITHMS),
        "scopes_supported": sorted(ALL_SCOPES),
        "response_types_supported": ["token"],
    }


@router.get("/.well-known/jwks.json")
def jwks(ctx: Tokens) -> dict[str, Any]:
    return ctx.issuer.ring.jwks(ctx.clock())


class RotateBody(BaseModel):
    # At most 30 days: a key kept published longer is a key nobody meant to keep.
    overlap_seconds: float = Field(default=600.0, ge=0, le=30 * 86400,
                                   description="how long the previous key stays in the JWKS")


def operator_only(ctx: Tokens,
                  authorization: Annotated[str | None, Header()] = None) -> None:
    """A dependency: the operator's token is checked before the body is read or validated."""
    require_operator_token(authorization, ctx.operator_token)


@router.post("/tokens/v1/signing-key/rotate", dependencies=[Depends(operator_only)])
def rotate_signing_key(ctx: Tokens, body: RotateBody) -> JSONResponse:
    """Make a fresh ES256 key active (operators only); other processes sharing the key
    directory pick it up within their reload interval."""
    if ctx.rotate_key is None:
        raise KeyRotationRefused("this process does not hold the access-token key directory",
                                 check="tokens.rotate_unavailable")
    try:
        kid = ctx.rotate_key(body.overlap_seconds)
    except TooManyKeys as exc:
        raise KeyRingFull(str(exc)) from None
    except ValueError as exc:
        raise KeyRotationRefused(str(exc)) from None
    except OSError as exc:
        log.error("access-token key rotation failed", extra={"error": str(exc)})
        raise KeyDirectoryUnusable(f"the key directory could not be written "
                                   f"({exc.strerror or type(exc).__name__})") from None
    log.warning("access-token signing key rotated",
                extra={"active": kid, "overlap_seconds": body.overlap_seconds})
    return JSONResponse({"active": kid, "overlap_seconds": body.overlap_seconds},
                        headers=NO_STORE)
