"""The token service and the resource-server guard, assembled.

- :func:`local_tokens` (``umec server``): the issuer, the revocation store and its follower,
  the guard over this process's own key ring, the token routes' collaborators, the key-ring
  reloader; background: the follower, key reload and revocation prune, and on PostgreSQL the
  wake-ups of every worker and replica.
- :func:`remote_tokens` (``umec api``): only the guard, learning keys and revocations over
  HTTP from the token service.

What attestation and admission know comes in through ``mec_api.tokens.trust``'s Protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from kernel.clock import Clock
from kernel.periodic import PeriodicTask
from kernel.ratelimit import RateLimiter
from kernel.service import BackgroundJob, Hook
from keys import KeyRing
from mec_api.guard import AccessTokenGuard
from mec_api.tokens.deps import TokenRoutes
from mec_api.tokens.feed import (
    HttpJwks,
    PostgresWakeups,
    RevocationFollower,
    RingJwks,
    StaticJwks,
    discover_jwks_url,
    http_source,
    store_source,
)
from mec_api.tokens.issuance_counts import FLUSH_SECONDS, CountFlusher, IssuanceCounts
from mec_api.tokens.issuer import ClusterKeys, IssuerConfig, TokenIssuer
from mec_api.tokens.keyring import KeyRotator, LazyClusterKeys, RingReloader
from mec_api.tokens.revocations import RevocationList, RevocationStore
from mec_api.tokens.scope_policy import ScopePolicy, load_grants
from mec_api.tokens.trust import WorkloadLookup

log = logging.getLogger("umec.tokens")

KEY_RELOAD_SECONDS = 2.0


@dataclass
class ClusterKeysConfig:
    """Where the cluster's service-account keys come from: a JWKS file, a JWKS URL, or OIDC
    discovery from the service-account issuer."""

    jwks_file: Path | None = None
    jwks_url: str = ""
    ca: Path | None = None
    bearer_file: Path | None = None


@dataclass
class TokenConfig:
    """The token service in this process (``umec server``)."""

    public_base: str                        # this server's base URL: iss and token endpoint
    keys_dir: Path                          # the access-token signing ring
    operator_token: str                     # introspection's resource-server credential
    audience: str = "umec-apis"
    sa_issuer: str = "https://kubernetes.default.svc.cluster.local"
    sa_audiences: Sequence[str] = ("umec",)
    lifetime_seconds: int = 300
    attestation_max_age_seconds: float = 45.0
    grants_file: Path | None = None         # scope grants (YAML); none: nothing is granted
    cluster_keys: ClusterKeysConfig = field(default_factory=ClusterKeysConfig)


@dataclass
class RemoteTokenConfig:
    """A token service elsewhere (``umec api``): its JWKS and revocation feed over HTTP."""

    base_url: str
    ca: Path | None = None
    audience: str = "umec-apis"


@dataclass
class TokenService:
    issuer: TokenIssuer
    store: RevocationStore
    guard: AccessTokenGuard
    follower: RevocationFollower
    routes: TokenRoutes                  # app.state.tokens of the token routes
    reloader: RingReloader
    clock: Clock
    counts: IssuanceCounts               # token_issuance_counts: issued per hour, all processes
    flush_counts: CountFlusher           # this process's counts into it (background, close)


@dataclass
class Tokens:
    """What the service builder takes from here: the guard, and the background and hooks of
    whatever keeps it current."""

    guard: AccessTokenGuard
    service: TokenService | None = None
    background: list[BackgroundJob] = field(default_factory=list)
    on_start: list[Hook] = field(default_factory=list)
    on_close: list[Hook] = field(default_factory=list)


def cluster_keys(config: ClusterKeysConfig, sa_issuer: str) -> ClusterKeys:
    if config.jwks_file is not None:
        return StaticJwks(config.jwks_file)
    verify: bool | str = str(config.ca) if config.ca else True
    url = config.jwks_url or discover_jwks_url(sa_issuer, verify=verify)
    return HttpJwks(url, verify=verify, bearer_token_file=config.bearer_file)


def token_service(config: TokenConfig, sessions: sessionmaker[Session], clock: Clock,
                  limiter: RateLimiter, *, workloads: WorkloadLookup) -> TokenService:
    """``clock``: the one clock of all replicas (kernel.clock); tokens' ``iat``/``exp``, the
    evidence age and feed expiry are all read from it."""
    grants = load_grants(config.grants_file.read_text(encoding="utf-8"),
                         str(config.grants_file)) if config.grants_file else []
    ring = KeyRing.load_or_create(config.keys_dir)
    store = RevocationStore(sessions, max_token_lifetime=config.lifetime_seconds)
    base = config.public_base
    issuer_config = IssuerConfig(
        issuer=f"{base}/oauth2", token_endpoint=f"{base}/oauth2/token",
        audiences=[config.audience], sa_issuer=config.sa_issuer,
        sa_audiences=config.sa_audiences, lifetime_seconds=config.lifetime_seconds,
        attestation_max_age_seconds=config.attestation_max_age_seconds)
    revocations = RevocationList()
    issuer = TokenIssuer(config=issuer_config,
                         cluster_keys=LazyClusterKeys(
                             lambda: cluster_keys(config.cluster_keys, config.sa_issuer)),
                         workloads=workloads, scopes=ScopePolicy(grants),
                         ring=ring,
                         # The follower's list, not a query: this replica's revocations arrive
                         # at once (poke), other replicas' within the poll interval; the node's
                         # state itself is read fresh on every issuance.
                         revoked_epoch=lambda node, now: revocations.revoked_epoch(
                             node, now.timestamp()),
                         revoked_pod=lambda uid, now: revocations.pod_revoked(
                             uid, now.timestamp()))
    follower = RevocationFollower(store_source(store, clock.now), revocations,
                                  clock=lambda: clock.now().timestamp())
    store.listeners.append(follower.poke)
    jwks = RingJwks(ring, clock=clock.now)
    guard = AccessTokenGuard(
        issuer=issuer_config.issuer, audience=config.audience, jwks_source=jwks,
        revocations=revocations, feed_applied_at=lambda: follower.applied_at,
        await_current=follower.current_since, limiter=limiter,
        clock=lambda: clock.now().timestamp())
    reloader = RingReloader(config.keys_dir, issuer, jwks)
    routes = TokenRoutes(issuer, store, operator_token=config.operator_token, clock=clock.now,
                         rotate_key=KeyRotator(config.keys_dir, config.lifetime_seconds,
                                               reloader, clock.now), revocations=revocations)
    counts = IssuanceCounts(sessions.kw["bind"])
    flush = CountFlusher(counts, issuer.issued, lambda: clock.now().timestamp())
    return TokenService(issuer, store, guard, follower, routes, reloader, clock, counts, flush)


def local_tokens(service: TokenService, engine: Engine) -> Tokens:
    """The token service's background: its follower (first read before the first request),
    the key-ring reload and revocation prune every 2 s, the issuance counts' flush every
    10 s (and at close), and on PostgreSQL the wake-ups."""
    reload = PeriodicTask("token key reload / revocation prune", KEY_RELOAD_SECONDS,
                          lambda: _reload_and_prune(service), delay_first=True)
    counting = PeriodicTask("token issuance counts", FLUSH_SECONDS, service.flush_counts,
                            delay_first=True)
    wakeups = Wakeups(engine, service.follower.poke)
    return Tokens(service.guard, service,
                  background=[service.follower.run, reload.run, counting.run],
                  on_start=[_first_read(service.follower), wakeups.start],
                  on_close=[wakeups.stop, _final_flush(service.flush_counts)])


def _final_flush(flush: CountFlusher) -> Hook:
    async def final_flush() -> None:
        try:
            await asyncio.to_thread(flush)
        except Exception as exc:  # the database is gone at close: the counts are lost, say so
            log.warning("token issuance counts not flushed at close: %s: %s",
                        type(exc).__name__, exc)
    return final_flush


def _reload_and_prune(service: TokenService) -> None:
    service.reloader.check()
    service.store.prune(service.clock.now())


class Wakeups:
    """On PostgreSQL, every worker and replica is woken by each committed revocation
    (:class:`PostgresWakeups`); elsewhere nothing (the followers' polls do the work)."""

    def __init__(self, engine: Engine, poke: Callable[[], None]) -> None:
        self.engine, self.poke = engine, poke
        self.running: PostgresWakeups | None = None

    async def start(self) -> None:
        self.running = revocation_wakeups(self.engine, self.poke)

    async def stop(self) -> None:
        if self.running is not None:
            await asyncio.to_thread(self.running.stop)


def revocation_wakeups(engine: Engine, poke: Callable[[], None]) -> PostgresWakeups | None:
    if engine.dialect.name != "postgresql":
        return None
    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    wakeups = PostgresWakeups(dsn, poke)
    wakeups.start()
    return wakeups


def remote_tokens(config: RemoteTokenConfig, clock: Clock, limiter: RateLimiter) -> Tokens:
    """The guard of a ``umec api`` process: keys from the token service's JWKS (refetched when
    a kid is unknown), revocations from its feed every 250 ms; when no read has succeeded for
    1 s it refuses every token (503) rather than miss a revocation."""
    base = config.base_url.rstrip("/")
    verify: bool | str = str(config.ca) if config.ca else True
    tls: bool | ssl.SSLContext = ssl.create_default_context(cafile=verify) \
        if isinstance(verify, str) else verify
    client = httpx.AsyncClient(verify=tls, timeout=3.0)
    # Every 250 ms over HTTP (the SQL followers in ``umec server`` poll every 100 ms): each
    # node runs a few of these processes, and each poll is a request to the token service.
    revocations = RevocationList()
    follower = RevocationFollower(http_source(f"{base}/oauth2/revocations", client),
                                  revocations, interval=0.25,
                                  clock=lambda: clock.now().timestamp())
    guard = AccessTokenGuard(
        issuer=f"{base}/oauth2", audience=config.audience,
        jwks_source=HttpJwks(f"{base}/.well-known/jwks.json", verify=verify),
        revocations=revocations, feed_applied_at=lambda: follower.applied_at,
        limiter=limiter, clock=lambda: clock.now().timestamp())
    return Tokens(guard, background=[follower.run], on_start=[_first_read(follower)],
                  on_close=[client.aclose])


def _first_read(follower: RevocationFollower) -> Hook:
    async def first_read() -> None:
        # Revocations before the first request; on failure the guard answers 503 until the
        # follower's next read works.
        with contextlib.suppress(Exception):
            await follower.step()
    return first_read
