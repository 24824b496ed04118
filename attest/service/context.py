"""What the registrar and verifier share: configuration, database, clock, events, signing keys."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import Connection, Engine, bindparam, insert, select
from sqlalchemy.orm import Session, sessionmaker

from attest.core.policy import DEFAULT_POLICY, AppraisalPolicy
from attest.service.limits import Limits
from attest.service.models import PolicyRow, StateEventRow
from attest.service.notify.event import NodeStateChanged, StateChangeSink

log = logging.getLogger("umec.attest")


_SELECT_POLICY = select(PolicyRow.document).where(PolicyRow.name == bindparam("name"))


class NodeState:
    ENROLLED = "enrolled"
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    STALE = "stale"
    # Not a state a node is in: the event of a node an operator removed or renamed.
    REMOVED = "removed"


@dataclass
class AttestConfig:
    ek_trust_anchors: Sequence[x509.Certificate] = ()
    ek_intermediates: Sequence[x509.Certificate] = ()
    ek_allowlist: frozenset[str] = frozenset()
    default_node_class: str = "default"
    nonce_ttl_seconds: float = 60.0
    activation_ttl_seconds: float = 300.0
    interval_seconds: float = 30.0
    stale_grace_seconds: float = 15.0
    result_ttl_seconds: int = 120
    issuer: str = "umec-attest"
    # Wrong proofs after which one pending enrolment is void (it locks nothing else).
    max_failed_activations: int = 10
    # Protocol requests per source address (token bucket), and challenges per node name.
    rate_per_source: float = 20.0
    burst_per_source: float = 200.0
    challenge_rate_per_node: float = 1.0
    challenge_burst_per_node: float = 10.0
    policy_ttl_seconds: float = 2.0
    # Bearer token for the operator's read routes (fleet listing); nodes never need it.
    operator_token: str = ""
    # The service's background work and notifications (attest.service.build): how often the
    # lease holder checks deadlines and re-syncs Kubernetes labels, where signed webhooks go,
    # and the appraisal policies loaded into the database at start.
    deadline_check_seconds: float = 1.0
    kubernetes_resync_seconds: float = 300.0
    webhook_urls: Sequence[str] = ()
    webhook_secret: bytes = b""
    policy_dir: Path | None = None
    # Who signs appraisal policies (key id -> public key) and how many must; empty: unsigned
    # policies are applied (attest.service.policies.PolicyTrust).
    policy_signers: Mapping[str, Any] = field(default_factory=dict)
    policy_threshold: int = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


# Called inside the transaction that records a state change (``record_change``): what it writes
# commits with the change or not at all, and if it raises, the change does not happen.
StateChangeWriter = Callable[[Session | Connection, NodeStateChanged], None]


@dataclass
class AttestContext:
    config: AttestConfig
    sessions: sessionmaker[Session]
    sign_result: Callable[[dict[str, Any]], str]
    listeners: list[StateChangeSink] = field(default_factory=list)
    # In-transaction writers (umec wires token revocation here); listeners run after commit.
    change_writers: list[StateChangeWriter] = field(default_factory=list)
    # The one clock of all replicas (kernel.clock: the database's on PostgreSQL); every time
    # written or compared by the registrar and verifier comes from here.
    now: Callable[[], datetime] = utcnow
    # The server's event loop, set at startup: sync request handlers run in worker threads and
    # hand events over to it so that slow listeners never hold up an attestation round.
    loop: asyncio.AbstractEventLoop | None = None
    # The JWKS of the keys ``sign_result`` signs with, at a given time (served at
    # /attest/v1/jwks.json); None where nothing serves it (the CLI's contexts).
    result_jwks: Callable[[datetime], dict[str, Any]] | None = None
    # The secret challenge nonces are MACed with (attest.core.freshness); the same on every
    # replica (keys/challenge-key). Empty where no challenge is issued (the CLI's contexts):
    # then issuing or checking one fails.
    challenge_key: bytes = b""
    # node class -> (monotonic time loaded, document, parsed policy); see policy_for.
    _policy_cache: dict[str, tuple[float, str, AppraisalPolicy]] = field(default_factory=dict)
    # The protocol routes' rate limits, built from ``config``: one set per context.
    limits: Limits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.limits = Limits(self)

    def policy_for(self, db: Session | Connection, node_class: str) -> AppraisalPolicy:
        """The node class's policy. A stored change takes effect within ``policy_ttl_seconds``
        on every replica: re-reading and re-parsing per round would dominate a round's cost."""
        cached = self._policy_cache.get(node_class)
        if cached is not None and time.monotonic() - cached[0] < self.config.policy_ttl_seconds:
            return cached[2]
        document = db.execute(_SELECT_POLICY, {"name": node_class}).scalar()
        if document is None:
            self._policy_cache.pop(node_class, None)
            if node_class == DEFAULT_POLICY.name:
                return DEFAULT_POLICY
            # A node class without a policy is a configuration error, never "accept all".
            raise LookupError(node_class)
        policy = cached[2] if cached is not None and cached[1] == document \
            else AppraisalPolicy.from_yaml(document)
        self._policy_cache[node_class] = (time.monotonic(), document, policy)
        return policy

    @property
    def engine(self) -> Engine:
        bind = self.sessions.kw["bind"]
        assert isinstance(bind, Engine)
        return bind

    def record_change(self, db: Session | Connection, node: str, previous: str | None,
                      state: str, reason: str, failed_checks: Sequence[str],
                      at: datetime, epoch: int = 0) -> NodeStateChanged:
        """Store the event row and run every change writer, all in ``db``'s transaction."""
        event = NodeStateChanged(node=node, previous=previous, state=state, reason=reason,
                                 failed_checks=tuple(failed_checks), at=at,
                                 event_id=str(uuid.uuid4()), epoch=epoch)
        db.execute(insert(StateEventRow).values(
            id=event.event_id, node=node, previous=previous, state=state, reason=reason[:4000],
            failed_checks=list(failed_checks), at=at))
        for write in self.change_writers:
            write(db, event)
        return event

    def publish(self, events: Sequence[NodeStateChanged]) -> None:
        """Hand committed events to listeners without blocking the request that caused them."""
        for event in events:
            log.info("node state changed", extra={"node": event.node, "previous": event.previous,
                                                  "state": event.state, "reason": event.reason})
            for listener in self.listeners:
                if self.loop is not None and self.loop.is_running():
                    asyncio.run_coroutine_threadsafe(listener.publish(event), self.loop)
                else:
                    asyncio.run(listener.publish(event))
