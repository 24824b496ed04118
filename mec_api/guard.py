"""The resource-server guard: one check in front of every µMEC API route.

:meth:`AccessTokenGuard.authenticate` takes a request's ``Authorization`` and ``DPoP`` headers
and either returns a :class:`~mec_api.principal.Principal` or raises :class:`GuardRefusal`
(status, RFC 6750 ``WWW-Authenticate``, problem+json detail). Steps:

1. a token is present: ``Authorization: Bearer <jwt>`` or ``DPoP <jwt>``; none → 401 without an
   error code (RFC 6750 §3.1);
2. the revocation list is current. With ``await_current`` (the follower of a guard that reads
   the token service's own database: every ``umec server`` worker and replica), a request
   whose token verifies first waits, up to ``current_wait`` (250 ms), for a read that started
   after it arrived (others are refused without making the follower read), so
   a token refused by one worker or replica is refused by all from then on. In every case the
   last read must have started within ``max_feed_age`` (1 s: the promise), else 503: a guard
   that cannot hear revocations must not keep honouring tokens;
3. the JWT verifies: ``alg`` pinned to ES256, key by ``kid`` from the token service's JWKS
   (fetched again, at most every ``jwks_refresh_seconds``, when the kid is unknown), ``typ``
   ``at+jwt``, ``iss``, ``aud``, ``exp``/``nbf``/``iat`` against the clock with a small leeway.
   A token string verified in the last minute is taken from :class:`VerifiedCache` when its
   ``kid`` is still published; the times are checked again on every request;
4. not revoked: by ``jti``, because its pod was deleted (claim ``pod.uid``), or because the
   node's trust epoch the token was minted in (claim ``node_epoch``, 0 when absent) has ended;
5. sender constraint: a token with ``cnf.jkt`` must come with scheme ``DPoP`` and a valid, fresh,
   unseen proof for this method and URL whose key thumbprint is ``jkt`` and whose ``ath`` hashes
   the token; a bound token presented as ``Bearer`` is refused;
6. the route's scope is in ``scope`` → else 403 ``insufficient_scope``;
7. the caller is within its request rate → else 429 with ``Retry-After``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request

from kernel.ratelimit import RateLimiter
from keys import JwtInvalid, JwtUnknownKid, VerifiedJwt, check_jwt_times, verify_jwt
from mec_api.principal import Principal
from mec_api.problems import ProblemError
from mec_api.tokens.dpop import DpopReplayCache, verify_dpop_proof
from mec_api.tokens.errors import DpopProofInvalid
from mec_api.tokens.revocations import (
    ACCEPTANCE_LEEWAY_SECONDS,
    RevocationList,
    token_epoch,
    token_pod_uid,
)
from mec_api.tokens.verified_cache import KidSet, VerifiedCache

ACCESS_TOKEN_ALGORITHMS = ("ES256",)


class JwksSource(Protocol):
    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]: ...


class GuardRefusal(ProblemError):
    """A refused request, already shaped for the client."""


def _quote(text: str) -> str:
    """Safe inside a quoted header parameter: printable ASCII without quotes or backslashes
    (a token's ``kid`` is attacker text, and a header that cannot be encoded would be a 500)."""
    return "".join(c if " " <= c <= "~" else "?" for c in
                   text.replace("\\", "/").replace('"', "'"))[:200]


def _challenge(scheme: str, error: str | None = None, description: str = "",
               scope: str | None = None) -> str:
    parts = ['realm="umec"']
    if error:
        parts.append(f'error="{error}"')
    if description:
        parts.append(f'error_description="{_quote(description)}"')
    if scope:
        parts.append(f'scope="{scope}"')
    if scheme == "DPoP":
        parts.append('algs="ES256 RS256 PS256 EdDSA"')
    return f"{scheme} " + ", ".join(parts)


def _unauthorized(description: str, *, scheme: str = "Bearer",
                  error: str = "invalid_token") -> GuardRefusal:
    return GuardRefusal(401, "Unauthorized", description, type_="urn:umec:token." + error,
                        headers={"WWW-Authenticate": _challenge(scheme, error, description)})


@dataclass
class AccessTokenGuard:
    issuer: str
    audience: str
    jwks_source: JwksSource
    revocations: RevocationList
    feed_applied_at: Callable[[], float]        # monotonic time the feed was last applied
    # (instant, timeout) → whether a read started after instant was applied in time
    await_current: Callable[[float, float], Awaitable[bool]] | None = None
    current_wait: float = 0.25
    max_feed_age: float = 1.0
    leeway: float = ACCEPTANCE_LEEWAY_SECONDS  # revocation entries outlive exp + this
    jwks_refresh_seconds: float = 10.0
    replay: DpopReplayCache | None = None
    limiter: RateLimiter | None = None
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        self.replay = self.replay or DpopReplayCache()
        self._last_refresh = float("-inf")
        self.verified: VerifiedCache[Mapping[str, Any]] = VerifiedCache()
        self._kids = KidSet()

    async def admit(self, request: Request, scope: str) -> Principal:
        """A request through the guard (what ``mec_api.deps.requires(scope)`` calls)."""
        arrived = time.monotonic()
        authorization = request.headers.get("authorization")
        # step 2: the fallback is the age check. Only a token that verifies is worth a fresh
        # read: anyone else is refused whatever the revocations say, without database work.
        if self.await_current is not None and self._verifies(authorization):
            await self.await_current(arrived, self.current_wait)
        return self.authenticate(
            authorization=authorization, dpop=request.headers.get("dpop"),
            method=request.method, url=str(request.url), scope=scope)

    def _verifies(self, authorization: str | None) -> bool:
        """Whether the call carries a token that verifies (it is then cached for step 3)."""
        try:
            scheme, token = self._credentials(authorization)
            self._verify(token, scheme, self.clock())
        except GuardRefusal:
            return False
        return True

    def authenticate(self, *, authorization: str | None, dpop: str | None, method: str,
                     url: str, scope: str) -> Principal:
        now = self.clock()
        scheme, token = self._credentials(authorization)
        if time.monotonic() - self.feed_applied_at() > self.max_feed_age:
            raise GuardRefusal(503, "Service Unavailable",
                               "the revocation feed is not current; refusing tokens until it is",
                               headers={"Retry-After": "1"})
        claims = self._verify(token, scheme, now)
        reason = self.revocations.revoked(jti=str(claims.get("jti", "")),
                                          node=claims.get("node"),
                                          node_epoch=token_epoch(claims), now=now,
                                          pod_uid=token_pod_uid(claims))
        if reason is not None:
            raise _unauthorized(f"token revoked: {reason}", scheme=scheme)
        self._sender_constraint(claims, scheme, token, dpop, method, url, now)
        principal = _principal(claims)
        if scope not in principal.scopes:
            desc = f"the token lacks scope {scope!r}"
            raise GuardRefusal(403, "Forbidden", desc, type_="urn:umec:token.insufficient_scope",
                               headers={"WWW-Authenticate": _challenge(
                                   scheme, "insufficient_scope", desc, scope)})
        if self.limiter is not None:
            wait = self.limiter.retry_after(principal.client_id, now)
            if wait > 0:
                raise GuardRefusal(429, "Too Many Requests",
                                   f"rate limit for {principal.client_id}; retry later",
                                   headers={"Retry-After": str(max(1, round(wait)))})
        return principal

    def _credentials(self, authorization: str | None) -> tuple[str, str]:
        if not authorization:
            raise GuardRefusal(401, "Unauthorized", "an access token is required",
                               type_="urn:umec:token.missing",
                               headers={"WWW-Authenticate": _challenge("Bearer")})
        scheme, _, token = authorization.partition(" ")
        canonical = {"bearer": "Bearer", "dpop": "DPoP"}.get(scheme.lower())
        token = token.strip()
        if canonical is None or not token:
            raise _unauthorized("use 'Authorization: Bearer <token>' or 'DPoP <token>'",
                                error="invalid_request")
        return canonical, token

    def _verify(self, token: str, scheme: str, now: float) -> Mapping[str, Any]:
        def verify(jwks: Mapping[str, Any]) -> VerifiedJwt:
            return verify_jwt(token, jwks, algorithms=ACCESS_TOKEN_ALGORITHMS,
                              issuer=self.issuer, audience=self.audience, now=now,
                              leeway=self.leeway, typ="at+jwt",
                              required_claims=("exp", "iat", "iss", "aud", "jti", "sub",
                                               "scope"))
        try:
            jwks = self.jwks_source.jwks()
            cached = self.verified.get(token, self._kids.of(jwks))
            if cached is not None:
                check_jwt_times(cached, now, self.leeway)
                return cached
            try:
                verified = verify(jwks)
            except JwtUnknownKid:
                if time.monotonic() - self._last_refresh < self.jwks_refresh_seconds:
                    raise
                self._last_refresh = time.monotonic()
                verified = verify(self.jwks_source.jwks(refresh=True))
        except JwtInvalid as e:
            raise _unauthorized(f"{e.check}: {e.detail}", scheme=scheme) from None
        self.verified.put(token, verified.kid, verified.claims)
        return verified.claims

    def _sender_constraint(self, claims: Mapping[str, Any], scheme: str, token: str,
                           dpop: str | None, method: str, url: str, now: float) -> None:
        cnf = claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
        if jkt is None:
            if scheme == "DPoP":
                raise _unauthorized("the token is not DPoP-bound; send it as Bearer",
                                    scheme="DPoP")
            return
        if scheme != "DPoP" or not dpop:
            raise _unauthorized("the token is DPoP-bound: send 'Authorization: DPoP' and a "
                                "DPoP proof", scheme="DPoP")
        try:
            proof = verify_dpop_proof(dpop, method=method, url=url, now=now,
                                      access_token=token)
            if proof.jkt != jkt:
                raise DpopProofInvalid("the proof key is not the key the token is bound to")
            assert self.replay is not None
            self.replay.check_and_remember(proof, now)
        except DpopProofInvalid as e:
            raise _unauthorized(e.detail, scheme="DPoP", error="invalid_dpop_proof") from None


def _principal(claims: Mapping[str, Any]) -> Principal:
    scope = claims.get("scope")
    fields = {n: claims.get(n) for n in ("sub", "client_id", "namespace", "app_instance_id",
                                         "node", "jti")}
    if not isinstance(scope, str) or not all(isinstance(v, str) and v
                                             for v in fields.values()):
        raise _unauthorized("the token lacks workload claims (client_id, namespace, "
                            "app_instance_id, node)")
    return Principal(subject=str(fields["sub"]), client_id=str(fields["client_id"]),
                     namespace=str(fields["namespace"]),
                     app_instance_id=str(fields["app_instance_id"]), node=str(fields["node"]),
                     scopes=frozenset(scope.split()), token_id=str(fields["jti"]))
