"""The attestation service as ``umec`` serves it: :func:`build_service`.

``config`` is attest's own (:class:`AttestConfig`); ``bridges`` is what comes from outside
attest: the database, the one clock of all replicas, the key ring that signs attestation
results, the secret challenge nonces are MACed with, and what other domains hook into a state
change (``umec`` wires token revocation into ``change_writers`` and the token followers'
wake-up into ``listeners``).

The service: the protocol and fleet routes (:data:`attest.service.api.router`, reading
``app.state.attest``); background work: the deadline check and, with a Kubernetes API, the
periodic label re-sync; notifications: signed webhooks and Kubernetes node labels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from attest.service.api import router
from attest.service.background import deadline_task, resync_task
from attest.service.context import AttestConfig, AttestContext, StateChangeWriter
from attest.service.join import JoinBridge, JoinRevocationSink, JoinService, join_sweep_task
from attest.service.notify import CompositeSink
from attest.service.notify.event import StateChangeSink
from attest.service.notify.webhook import WebhookSink
from attest.service.operator_api import router as operator_router
from attest.service.policies import PolicyTrust, load_policy_dir
from kernel.service import Hook, Service
from keys import KeyRing, sign_jwt

if TYPE_CHECKING:  # the kubernetes client costs seconds of start-up: imported when enabled
    from attest.service.notify.kube import KubernetesNodeSink


@dataclass
class AttestBridges:
    sessions: sessionmaker[Session]
    result_ring: KeyRing                    # signs attestation results; its JWKS is served
    now: Callable[[], datetime]             # the one clock of all replicas (kernel.clock)
    challenge_key: bytes                    # MACs challenge nonces; shared by the replicas
    # After commit (other domains' wake-ups, tests' recorders).
    listeners: Sequence[StateChangeSink] = ()
    # In the state change's transaction: what they write commits with it or not at all.
    change_writers: Sequence[StateChangeWriter] = ()
    # A kubernetes CoreV1Api when node labels are on: the label sink and its periodic re-sync.
    kube_api: Any = None
    # The k3s join (POST /nodes/{node}/join, attest.service.join): its kubernetes API, the
    # cluster CA and the token lifetime; None: no join tokens.
    join: JoinBridge | None = None


def build_service(config: AttestConfig, bridges: AttestBridges) -> Service[AttestContext]:
    """The attestation service; ``parts`` is its :class:`AttestContext`."""
    sinks = _Sinks.of(config, bridges)
    ring = bridges.result_ring
    ctx = AttestContext(config=config, sessions=bridges.sessions,
                        sign_result=lambda claims: sign_jwt(claims, ring),
                        result_jwks=ring.jwks,
                        listeners=[CompositeSink(sinks.all)] if sinks.all else [],
                        now=bridges.now, change_writers=list(bridges.change_writers),
                        challenge_key=bridges.challenge_key)
    if config.policy_dir is not None:
        load_policy_dir(bridges.sessions, config.policy_dir,
                        PolicyTrust(config.policy_signers, config.policy_threshold))
    state: dict[str, object] = {"attest": ctx}
    background = [deadline_task(ctx, config.deadline_check_seconds).run]
    if bridges.join is not None:
        join = JoinService(ctx, bridges.join)
        state["attest_join"] = join
        ctx.listeners.append(JoinRevocationSink(join))  # never raises (it logs and counts)
        background.append(join_sweep_task(ctx, join).run)
    service = Service("attest", ctx, routers=[router, operator_router], state=state,
                      background=background,
                      on_start=[_remember_loop(ctx)], on_close=sinks.closers)
    if sinks.kube is not None:
        service.background.append(
            resync_task(ctx, sinks.kube, config.kubernetes_resync_seconds).run)
    return service


@dataclass
class _Sinks:
    """Where state changes go besides the database: the bridges' listeners, signed webhooks,
    Kubernetes node labels (whose sink the re-sync re-applies)."""

    all: list[StateChangeSink]
    kube: KubernetesNodeSink | None = None
    closers: list[Hook] = field(default_factory=list)

    @classmethod
    def of(cls, config: AttestConfig, bridges: AttestBridges) -> _Sinks:
        out = cls(list(bridges.listeners))
        if config.webhook_urls:
            client = httpx.AsyncClient()
            out.all.append(WebhookSink(list(config.webhook_urls), config.webhook_secret, client))
            out.closers.append(client.aclose)
        if bridges.kube_api is not None:
            # Imported only when enabled: the kubernetes client costs seconds of start-up.
            from attest.service.notify.kube import KubernetesNodeSink
            out.kube = KubernetesNodeSink(bridges.kube_api)
            out.all.append(out.kube)
        return out


def _remember_loop(ctx: AttestContext) -> Hook:
    async def remember() -> None:
        # Sync routes run in worker threads and hand events to this loop (AttestContext.publish).
        ctx.loop = asyncio.get_running_loop()
    return remember
