"""Wiring of the token service and the resource-server guard into ``umec server``.

``mec_api`` knows attestation and admission only through its Protocols; the adapters here read
the attestation node table and the admission records, and write a node revocation (every token
of workloads on a node that stops being trusted) inside the transaction of the state change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection
from sqlalchemy.orm import Session, sessionmaker

from admission.service.records import SqlAdmissionRecords
from attest.service.fleet import node_trust_record
from attest.service.notify.event import NodeStateChanged
from kernel.clock import Clock, SystemClock
from kernel.ratelimit import RateLimiter
from keys import KeyRing
from mec_api.guard import AccessTokenGuard
from mec_api.tokens.deps import TokenRoutes
from mec_api.tokens.feed import (
    HttpJwks,
    RevocationFollower,
    RingJwks,
    StaticJwks,
    discover_jwks_url,
    store_source,
)
from mec_api.tokens.issuer import ClusterKeys, IssuerConfig, TokenIssuer
from mec_api.tokens.keyring import LazyClusterKeys, RingReloader
from mec_api.tokens.revocations import (
    RevocationList,
    RevocationStore,
    write_node_revocation,
)
from mec_api.tokens.scope_policy import ScopePolicy, load_grants
from mec_api.tokens.trust import AdmittedImageView, AdmittedPodView, NodeTrustView
from umec.settings import Settings

log = logging.getLogger("umec.tokens")
ALL_EPOCHS = 2**31 - 1


class AttestNodeTrust:
    """``NodeTrust`` over the attestation node table (read fresh on every issuance)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def node_trust(self, node: str) -> NodeTrustView | None:
        # State and epoch in one query: a trusted state read here is of this epoch.
        row = node_trust_record(self.sessions, node)
        return None if row is None else NodeTrustView(node, row.state, row.last_pass_at,
                                                      row.trust_epoch)


class AdmissionRecordLookup:
    """``AdmissionLookup`` over the webhook's admission records."""

    def __init__(self, records: SqlAdmissionRecords) -> None:
        self.records = records

    def admitted_pod(self, uid: str) -> AdmittedPodView | None:
        pod = self.records.lookup(uid)
        if pod is None:
            return None
        return AdmittedPodView(pod.namespace, pod.name, pod.uid, pod.verified, tuple(
            AdmittedImageView(i.path, i.digest, tuple(i.signers)) for i in pod.images))


def ends_trust_period(event: NodeStateChanged) -> bool:
    """The change ends the node's trust period: it left ``trusted``, or it was removed or
    renamed (its tokens then name a node that no longer exists)."""
    return event.state == "removed" or (event.previous == "trusted"
                                        and event.state != "trusted")


class RevokeInTransaction:
    """``StateChangeWriter``: a change that ends a node's trust period writes its node
    revocation in the same transaction (tokens of every epoch below the one the change started,
    ``event.epoch``; an event without an epoch, 0, revokes every epoch: fail closed). If the
    write fails, the change rolls back with it: nothing to retry, nothing to lose."""

    def __init__(self, max_token_lifetime: float) -> None:
        self.max_token_lifetime = max_token_lifetime

    def __call__(self, db: Session | Connection, event: NodeStateChanged) -> None:
        if not ends_trust_period(event):
            return
        write_node_revocation(
            db, node=event.node, through_epoch=event.epoch - 1 if event.epoch > 0 else ALL_EPOCHS,
            reason=f"node {event.state}: {event.reason}", now=event.at,
            max_token_lifetime=self.max_token_lifetime)


class WakeFollowers:
    """``StateChangeSink``: after a committed change that revoked tokens, this process's
    followers read the set at once instead of at their next poll (others within theirs)."""

    name = "token-followers"

    def __init__(self, store: RevocationStore) -> None:
        self.store = store

    async def publish(self, event: NodeStateChanged) -> None:
        if ends_trust_period(event):
            self.store.poke()


def cluster_keys(settings: Settings) -> ClusterKeys:
    if settings.token_sa_jwks_file is not None:
        return StaticJwks(settings.token_sa_jwks_file)
    verify: bool | str = str(settings.token_sa_ca) if settings.token_sa_ca else True
    url = settings.token_sa_jwks_url
    if not url:
        url = discover_jwks_url(settings.token_sa_issuer, verify=verify)
    return HttpJwks(url, verify=verify, bearer_token_file=settings.token_sa_bearer_file)


@dataclass
class TokenService:
    issuer: TokenIssuer
    store: RevocationStore
    admissions: SqlAdmissionRecords      # read on issuance; its tombstones pruned by the server
    guard: AccessTokenGuard
    follower: RevocationFollower
    routes: TokenRoutes                  # app.state.tokens of the token routes
    sink: WakeFollowers
    change_writer: RevokeInTransaction
    reloader: RingReloader
    clock: Clock


def public_base(settings: Settings) -> str:
    scheme = "https" if settings.tls_cert else "http"
    return (settings.public_url or
            f"{scheme}://{settings.listen_host}:{settings.listen_port}").rstrip("/")


def build_token_service(settings: Settings, sessions: sessionmaker[Session],
                        operator_token: str, keys_dir: Path,
                        clock: Clock | None = None) -> TokenService:
    """``clock``: the one clock of all replicas (kernel.clock); tokens' ``iat``/``exp``, the
    evidence age and feed expiry are all read from it."""
    clock = clock or SystemClock()
    base = public_base(settings)
    grants = load_grants(settings.token_grants.read_text(encoding="utf-8"),
                         str(settings.token_grants)) if settings.token_grants else []
    ring = KeyRing.load_or_create(keys_dir)
    store = RevocationStore(sessions, max_token_lifetime=settings.token_lifetime_seconds)
    config = IssuerConfig(
        issuer=f"{base}/oauth2", token_endpoint=f"{base}/oauth2/token",
        audiences=[settings.token_audience], sa_issuer=settings.token_sa_issuer,
        sa_audiences=settings.token_sa_audiences,
        lifetime_seconds=settings.token_lifetime_seconds,
        attestation_max_age_seconds=settings.attestation_interval_seconds
        + settings.stale_grace_seconds)
    revocations = RevocationList()
    admissions = SqlAdmissionRecords(sessions, now=clock.now)
    issuer = TokenIssuer(config=config,
                         cluster_keys=LazyClusterKeys(lambda: cluster_keys(settings)),
                         nodes=AttestNodeTrust(sessions),
                         admissions=AdmissionRecordLookup(admissions),
                         scopes=ScopePolicy(grants), ring=ring,
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
    jwks = RingJwks(ring)
    guard = AccessTokenGuard(
        issuer=config.issuer, audience=settings.token_audience, jwks_source=jwks,
        revocations=revocations, feed_applied_at=lambda: follower.applied_at,
        await_current=follower.current_since,
        limiter=RateLimiter(settings.api_rate_per_second, settings.api_rate_burst),
        clock=lambda: clock.now().timestamp())
    routes = TokenRoutes(issuer, store, operator_token=operator_token, clock=clock.now)
    return TokenService(issuer, store, admissions, guard, follower, routes, WakeFollowers(store),
                        RevokeInTransaction(settings.token_lifetime_seconds),
                        RingReloader(keys_dir, issuer, jwks), clock)
