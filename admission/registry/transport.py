"""The request layer of the registry client: one connection pool, auth, retries, capped reads.

For every request :meth:`RegistryHttp.send` runs these steps:

1. Attach what we already know works for this registry: Basic credentials once the registry has
   asked for Basic, or the bearer token cached for ``repository:<name>:pull[,push]``.
2. Send on the shared ``httpx.AsyncClient`` (keep-alive: one TCP/TLS connection reused across
   manifests, blobs and repositories of a host).
3. Connection errors, 5xx and 429 are retried ``retries`` times with exponential backoff
   (``backoff * 2**attempt``, or ``Retry-After`` when the registry sends one, capped); other 4xx are
   answers, never retried. Exhausted → ``RegistryUnavailable``.
4. ``401``: answer the challenge once (see :mod:`admission.registry.auth`) and resend; a second
   ``401`` or a ``403`` → ``RegistryAuthFailed``.
5. Read the body to its end (so the connection goes back to the pool) with a cap
   (``Content-Length`` checked first, then while streaming), so a hostile
   registry cannot make us buffer an unbounded answer.

The public operations wrap all attempts in one ``asyncio.timeout(timeout)``: the client's
``timeout`` bounds a whole operation, retries included, which is what a webhook with a deadline
needs (a hanging registry ends in ``RegistryTimeout``, never in a hung admission).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal, Self

import httpx

from admission.core.reference import DOCKER_HUB, ImageReference
from admission.registry.auth import TokenCache, fetch_token, parse_challenge
from admission.registry.credentials import Credentials, RegistryCredential
from admission.registry.errors import (
    RegistryAuthFailed,
    RegistryError,
    RegistryTimeout,
    RegistryUnavailable,
)

DOCKER_HUB_API = "registry-1.docker.io"
MAX_RETRY_AFTER = 5.0
# Bodies of answers we only need the status of (uploads, errors, challenges) are small.
SMALL_BODY = 64 * 1024
ErrorFactory = Callable[[str], RegistryError]


def is_loopback_registry(registry: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``[::1]`` (with or without a port)."""
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Answer:
    """A finished response: status, headers and the (capped) body."""

    status: int
    headers: httpx.Headers
    body: bytes
    url: httpx.URL


class RegistryHttp:
    """Shared request machinery; :class:`admission.registry.client.RegistryClient` builds on it."""

    def __init__(self, *, credentials: Credentials | None = None, timeout: float = 10.0,
                 retries: int = 2, verify: bool | str = True,
                 plain_http: Callable[[str], bool] | None = None, backoff: float = 0.05,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        self.credentials = credentials or Credentials()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        # Docker's own default: loopback registries speak plain HTTP, everything else HTTPS.
        self._plain_http = plain_http or is_loopback_registry
        # A CA file path becomes an SSLContext (httpx deprecates verify=<str>).
        tls: bool | ssl.SSLContext = ssl.create_default_context(cafile=verify) \
            if isinstance(verify, str) else verify
        self._http = httpx.AsyncClient(
            verify=tls, timeout=timeout, follow_redirects=True, transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
            headers={"User-Agent": "umec-admission/0.1"})
        self._tokens = TokenCache()
        self._basic_registries: set[str] = set()
        self.requests_sent = 0  # observable by tests and metrics

    async def aclose(self) -> None:
        await self._http.aclose()

    def with_credentials(self, credentials: Credentials) -> Self:
        """A client for other credentials (a pod's imagePullSecrets) over the same connection
        pool. Tokens and the Basic-auth memory are per credentials, never shared; closing the
        original closes the pool for both."""
        other = copy.copy(self)
        other.credentials = credentials
        other._tokens = TokenCache()
        other._basic_registries = set()
        return other

    def base_url(self, registry: str) -> str:
        host = DOCKER_HUB_API if registry == DOCKER_HUB else registry
        return f"{'http' if self._plain_http(registry) else 'https'}://{host}/v2/"

    def url(self, ref: ImageReference, tail: str) -> httpx.URL:
        return httpx.URL(f"{self.base_url(ref.registry)}{ref.repository}/{tail}")

    def _credential(self, registry: str) -> RegistryCredential | None:
        return self.credentials.lookup(registry)

    def _auth_header(self, registry: str, scope: str) -> str | None:
        if registry in self._basic_registries:
            cred = self._credential(registry)
            if cred is not None and cred.username:
                pair = f"{cred.username}:{cred.password or ''}".encode()
                return "Basic " + base64.b64encode(pair).decode()
        token = self._tokens.get(registry, scope)
        return f"Bearer {token}" if token else None

    async def _authenticate(self, response: httpx.Response, ref: ImageReference, scope: str,
                            where: str) -> None:
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        cred = self._credential(ref.registry)
        if challenge is None:
            raise RegistryAuthFailed(f"{where}: HTTP 401 without a WWW-Authenticate challenge")
        if challenge.scheme == "basic":
            if cred is None or not cred.username:
                raise RegistryAuthFailed(f"{where}: {ref.registry} requires basic auth and we "
                                         "have no credentials for it")
            self._basic_registries.add(ref.registry)
            return
        if challenge.scheme != "bearer":
            raise RegistryAuthFailed(f"{where}: unsupported auth scheme {challenge.scheme!r}")
        scopes = [scope]
        asked = challenge.params.get("scope")
        if asked and asked != scope:
            scopes.append(asked)
        token, lifetime = await fetch_token(self._http, challenge, scopes, cred, where)
        self._tokens.put(ref.registry, scope, token, lifetime)

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and (ra := response.headers.get("Retry-After", "")).isdigit():
            return min(float(ra), MAX_RETRY_AFTER)
        return float(self.backoff * (2 ** attempt))

    async def send(self, method: str, ref: ImageReference, url: httpx.URL, *, where: str,
                   push: bool = False, headers: dict[str, str] | None = None,
                   content: bytes | None = None, cap: int = SMALL_BODY,
                   too_large: ErrorFactory | None = None) -> Answer:
        """Steps 1-5 of the module docstring; returns any status other than 401/403/5xx/429."""
        scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        attempt, authenticated = 0, False
        while True:
            request = self._request(method, ref, url, scope, headers, content)
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt >= self.retries:
                    raise _transport_error(exc, f"{where}: {type(exc).__name__} talking to "
                                                f"{ref.registry} after {attempt + 1} "
                                                f"attempt(s): {exc}") from None
                await asyncio.sleep(self._delay(attempt, None))
                attempt += 1
                continue
            try:
                again = await self._again(response, ref, scope, where, attempt, authenticated)
                if again == "authenticated":
                    authenticated = True
                elif again == "backed-off":
                    attempt += 1
                else:
                    return await _answer(method, response, cap, too_large, where)
            except httpx.TransportError as exc:  # the body broke off mid-stream
                raise _transport_error(exc, f"{where}: {type(exc).__name__} reading from "
                                            f"{ref.registry}") from None
            finally:
                await response.aclose()

    def _request(self, method: str, ref: ImageReference, url: httpx.URL, scope: str,
                 headers: dict[str, str] | None, content: bytes | None) -> httpx.Request:
        """One attempt's request, with the credentials known for the registry so far."""
        request_headers = dict(headers or {})
        auth = self._auth_header(ref.registry, scope)
        if auth:
            request_headers["Authorization"] = auth
        request = self._http.build_request(method, url, headers=request_headers,
                                           content=content)
        self.requests_sent += 1
        return request

    async def _again(self, response: httpx.Response, ref: ImageReference, scope: str,
                     where: str, attempt: int, authenticated: bool
                     ) -> Literal["authenticated", "backed-off"] | None:
        """Whether to send again: after answering the first 401's challenge, or after the
        backoff for a 5xx/429 with retries left; None: this is the answer. Raises for a
        refusal (401 again, 403) and for a 5xx/429 when retries are spent."""
        status = response.status_code
        if status == 401 and not authenticated:
            await _drain(response)
            await self._authenticate(response, ref, scope, where)
            return "authenticated"
        if status in (401, 403):
            raise RegistryAuthFailed(f"{where}: {ref.registry} answered HTTP {status} "
                                     f"{await _error_text(response)}")
        if status >= 500 or status == 429:
            if attempt < self.retries:
                await _drain(response)
                await asyncio.sleep(self._delay(attempt, response))
                return "backed-off"
            raise RegistryUnavailable(f"{where}: {ref.registry} answered HTTP {status} "
                                      f"after {attempt + 1} attempt(s)")
        return None

    @contextlib.asynccontextmanager
    async def deadline(self, where: str) -> AsyncIterator[None]:
        """Bound one public operation, retries included, by ``timeout`` seconds."""
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError:
            raise RegistryTimeout(f"{where}: no complete answer within {self.timeout:g} s") \
                from None


def _transport_error(exc: httpx.TransportError, message: str) -> RegistryError:
    """A timeout is :class:`RegistryTimeout`; any other transport failure is unavailability."""
    kind = RegistryTimeout if isinstance(exc, httpx.TimeoutException) else RegistryUnavailable
    return kind(message)


async def _answer(method: str, response: httpx.Response, cap: int,
                  too_large: ErrorFactory | None, where: str) -> Answer:
    if method == "HEAD":
        await response.aread()  # no body; reaching its end frees the connection
        body = b""
    else:
        body = await _read_capped(response, cap, too_large, where)
    return Answer(response.status_code, response.headers, body, response.url)


async def _drain(response: httpx.Response) -> None:
    """Read a small unwanted body to its end so the keep-alive connection can be reused;
    a large one is abandoned (``aclose`` then drops the connection instead)."""
    total = 0
    with contextlib.suppress(httpx.HTTPError):
        async for part in response.aiter_bytes():
            total += len(part)
            if total > SMALL_BODY:
                return


async def _error_text(response: httpx.Response) -> str:
    """The registry's error message (first 200 bytes) for a detail string."""
    try:
        chunk = b""
        async for part in response.aiter_bytes():
            chunk += part
            if len(chunk) >= 200:
                break
        return chunk[:200].decode("utf-8", "replace").strip()
    except httpx.HTTPError:
        return ""


async def _read_capped(response: httpx.Response, cap: int, too_large: ErrorFactory | None,
                       where: str) -> bytes:
    def fail(size: str) -> RegistryError:
        message = f"{where}: body of {size} bytes exceeds the limit of {cap}"
        return too_large(message) if too_large else RegistryError(message)

    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        raise fail(declared)
    chunks, total = [], 0
    # Decoded bytes, capped as they arrive: a compressed answer cannot inflate past the cap.
    async for part in response.aiter_bytes():
        total += len(part)
        if total > cap:
            raise fail(f"more than {cap}")
        chunks.append(part)
    return b"".join(chunks)
