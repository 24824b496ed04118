"""Registry authentication: the ``WWW-Authenticate`` challenge and bearer tokens cached per scope.

The Docker/OCI token flow (distribution ``docs/spec/auth/token.md``):

1. A request without (valid) credentials gets ``401`` and ``WWW-Authenticate: Basic realm=…`` or
   ``Bearer realm="…",service="…",scope="repository:<name>:pull[,push]"``.
2. Basic: resend with the registry's username/password. No credentials → ``RegistryAuthFailed``.
3. Bearer: GET ``realm?service=…&scope=…`` (with basic credentials when we have them; anonymous
   otherwise), or, with an identity token, POST the OAuth2 ``refresh_token`` grant. The answer's
   ``token`` (or ``access_token``) is cached per (registry, scope) until ``expires_in`` (default
   60 s, per the spec) minus a safety margin, and the request is resent with it.
4. A second 401 with a fresh token/credentials means they are refused → ``RegistryAuthFailed``.

The realm must be http(s); a realm on another host is allowed (Docker Hub uses auth.docker.io),
but our basic credentials are only sent to it over HTTPS or to a loopback host.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import httpx

from admission.registry.credentials import RegistryCredential
from admission.registry.errors import RegistryAuthFailed

_PARAM_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')
DEFAULT_TOKEN_LIFETIME = 60.0
# Refresh a little early so a token never expires between cache lookup and use.
TOKEN_MARGIN = 10.0
MAX_TOKEN_RESPONSE = 1024 * 1024


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" | "bearer" (lowercased)
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """Parse the first challenge of a ``WWW-Authenticate`` header; None if there is none."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              .replace('\\"', '"') for m in _PARAM_RE.finditer(rest)}
    return Challenge(scheme=scheme.lower(), params=params)


def _is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


class TokenCache:
    """Bearer tokens by (registry, scope) with their monotonic expiry."""

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, registry: str, scope: str) -> str | None:
        item = self._tokens.get((registry, scope))
        if item is None:
            return None
        token, expires = item
        if time.monotonic() >= expires:
            del self._tokens[(registry, scope)]
            return None
        return token

    def put(self, registry: str, scope: str, token: str, lifetime: float) -> None:
        self._tokens[(registry, scope)] = (token, time.monotonic() + max(lifetime - TOKEN_MARGIN,
                                                                          1.0))

    def drop(self, registry: str, scope: str) -> None:
        self._tokens.pop((registry, scope), None)


async def fetch_token(http: httpx.AsyncClient, challenge: Challenge, scopes: list[str],
                      credential: RegistryCredential | None, where: str) -> tuple[str, float]:
    """Step 3: obtain a bearer token for ``scopes``; returns (token, lifetime in seconds)."""
    realm = challenge.params.get("realm", "")
    url = httpx.URL(realm) if realm else None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise RegistryAuthFailed(
            f"{where}: bearer challenge without a usable realm ({realm[:100]!r})")
    # Secrets go to the token server only over TLS (or on loopback).
    secret = credential if url.scheme == "https" or _is_loopback(url.host) else None
    response = await _ask_token(http, url, challenge.params.get("service"), scopes, secret)
    if response.status_code in (401, 403):
        raise RegistryAuthFailed(f"{where}: token server {url.host} refused "
                                 f"{'our credentials' if credential else 'anonymous access'} "
                                 f"for scope {' '.join(scopes)!r} (HTTP {response.status_code})")
    if response.status_code != 200 or len(response.content) > MAX_TOKEN_RESPONSE:
        raise RegistryAuthFailed(f"{where}: token server {url.host} answered HTTP "
                                 f"{response.status_code}")
    return _token_answer(response, where)


async def _ask_token(http: httpx.AsyncClient, url: httpx.URL, service: str | None,
                     scopes: list[str], secret: RegistryCredential | None) -> httpx.Response:
    """An identity token is exchanged (OAuth2 refresh grant, POST); otherwise a GET, with the
    username and password as Basic auth when there are some, else anonymous."""
    if secret is not None and secret.identity_token:
        form = {"grant_type": "refresh_token", "refresh_token": secret.identity_token,
                "client_id": "umec", "scope": " ".join(scopes)}
        if service:
            form["service"] = service
        return await http.post(url, data=form)
    params: dict[str, str | list[str]] = {"scope": scopes}
    if service:
        params["service"] = service
    auth = None
    if secret is not None and secret.username:
        auth = httpx.BasicAuth(secret.username, secret.password or "")
    return await http.get(url, params=params, auth=auth)


def _token_answer(response: httpx.Response, where: str) -> tuple[str, float]:
    """The token and its lifetime from the token server's JSON (default lifetime if absent)."""
    try:
        body = response.json()
    except ValueError:
        raise RegistryAuthFailed(f"{where}: token server answer is not JSON") from None
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise RegistryAuthFailed(f"{where}: token server answer has no token")
    lifetime = body.get("expires_in", DEFAULT_TOKEN_LIFETIME)
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return token, float(lifetime)
