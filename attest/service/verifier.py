"""Verifier: challenges, evidence appraisal, node states and deadlines (protocol steps 3–6).

State machine (``NodeState``)::

    enrolled ──pass──▶ trusted ◀──pass── untrusted / stale
        │                │  │                 ▲
        └──fail──▶ untrusted ◀┘fail           │
                         trusted ──no passing evidence within interval+grace──▶ stale

Leaving ``untrusted`` or ``stale`` takes a fresh passing quote; nothing is ever deleted and
re-added. Each transition is stored as an event row in the same transaction as the state, then
published to listeners (webhooks, Kubernetes labels, token revocation) after commit.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from attest.core.appraisal import Evidence, Verdict, appraise_evidence
from attest.core.errors import AttestationError
from attest.core.freshness import NonceRecord, NonceReplayed, check_nonce
from attest.core.policy import AppraisalPolicy
from attest.core.tpm_structs import ClockInfo, TpmPublic, parse_tpm2b_public
from attest.service.context import AttestContext, NodeState
from attest.service.models import LeaseRow, NodeRow, NonceRow
from attest.service.notify_event import NodeStateChanged
from attest.service.registrar import NodeNotFound

MAX_CLOCK = 2**63 - 1


@functools.lru_cache(maxsize=16384)
def _parsed_ak(ak_public: bytes) -> TpmPublic:
    """Activated AKs are immutable, so their parsed form (and loaded key) can be reused."""
    return parse_tpm2b_public(ak_public)


class NodeNotActivated(AttestationError):
    check = "node.not_activated"
    hint = "Complete credential activation (POST …/activate) before attesting."


class PolicyMissing(AttestationError):
    check = "policy.missing"
    hint = "The node's class has no appraisal policy any more; restore it with umec policy set."


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    selection: dict[str, list[int]]
    expires_at: datetime


@dataclass(frozen=True)
class EvidenceResult:
    node: str
    state: str
    verdict: Verdict
    result_token: str


def _node_policy(ctx: AttestContext, session: Any, node: NodeRow) -> AppraisalPolicy:
    try:
        return ctx.policy_for(session, node.node_class)
    except LookupError:
        raise PolicyMissing(f"no appraisal policy for node class {node.node_class!r}") from None


def issue_challenge(ctx: AttestContext, name: str) -> Challenge:
    now = ctx.now()
    nonce = os.urandom(32)
    with ctx.sessions.begin() as session:
        node = session.get(NodeRow, name)
        if node is None:
            raise NodeNotFound(f"no node named {name!r}")
        if node.ak_public is None:
            raise NodeNotActivated(f"node {name!r} has no activated AK")
        selection = _node_policy(ctx, session, node).selection_lists()
        expires = now + timedelta(seconds=ctx.config.nonce_ttl_seconds)
        session.add(NonceRow(nonce=nonce.hex(), node=name, selection=selection, issued_at=now,
                             expires_at=expires))
    return Challenge(nonce=nonce, selection=selection, expires_at=expires)


def _consume_nonce(ctx: AttestContext, session: Any, name: str, nonce: bytes,
                   now: datetime) -> dict[str, list[int]]:
    row = session.get(NonceRow, nonce.hex())
    record = None if row is None else NonceRecord(row.node, row.expires_at,
                                                  row.consumed_at is not None)
    check_nonce(record, node=name, now=now)
    # Exactly one request may consume a nonce, even across replicas: the UPDATE is the arbiter.
    consumed = session.execute(
        update(NonceRow)
        .where(NonceRow.nonce == nonce.hex(), NonceRow.consumed_at.is_(None))
        .values(consumed_at=now))
    if consumed.rowcount != 1:
        raise NonceReplayed("nonce was consumed by a concurrent request")
    assert row is not None
    return dict(row.selection)


def submit_evidence(ctx: AttestContext, name: str, nonce: bytes,
                    evidence: Evidence) -> EvidenceResult:
    now = ctx.now()
    # Step 1, committed on its own: the nonce is spent whatever the appraisal concludes.
    with ctx.sessions.begin() as session:
        node = session.get(NodeRow, name)
        if node is None:
            raise NodeNotFound(f"no node named {name!r}")
        if node.ak_public is None:
            raise NodeNotActivated(f"node {name!r} has no activated AK")
        selection = _consume_nonce(ctx, session, name, nonce, now)
        policy = _node_policy(ctx, session, node)
        ak_public = node.ak_public
        previous = None
        if None not in (node.reset_count, node.restart_count, node.clock):
            previous = ClockInfo(clock=node.clock or 0, reset_count=node.reset_count or 0,
                                 restart_count=node.restart_count or 0, safe=bool(node.safe))
    # Step 2: the pure appraisal, outside any transaction.
    verdict = appraise_evidence(
        _parsed_ak(ak_public), evidence, expected_nonce=nonce, policy=policy,
        requested={b: frozenset(v) for b, v in selection.items()}, previous_clock=previous)
    # Step 3: record the verdict and the state change atomically.
    events: list[NodeStateChanged] = []
    with ctx.sessions.begin() as session:
        node = session.get(NodeRow, name, with_for_update=True)
        assert node is not None  # nodes are never deleted while attesting
        node.last_evidence_at = now
        node.last_verdict = {**verdict.as_dict(), "at": now.isoformat()}
        if verdict.trusted and verdict.clock is not None and verdict.clock.clock <= MAX_CLOCK:
            # Only authenticated, passing quotes move the reboot/clock baseline forward.
            node.reset_count = verdict.clock.reset_count
            node.restart_count = verdict.clock.restart_count
            node.clock = verdict.clock.clock
            node.safe = int(verdict.clock.safe)
            node.last_pass_at = now
        new_state = NodeState.TRUSTED if verdict.trusted else NodeState.UNTRUSTED
        if new_state != node.state:
            events.append(ctx.record_change(session, name, node.state, new_state, verdict.reason,
                                            [f.check for f in verdict.failures], now))
            node.state = new_state
            node.state_changed_at = now
        state, ek_hash = node.state, node.ek_hash
    ctx.publish(events)
    token = ctx.sign_result({
        "iss": ctx.config.issuer, "sub": name, "aud": "umec", "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + ctx.config.result_ttl_seconds, "state": state,
        "trusted": verdict.trusted, "ek_hash": ek_hash,
        "failed_checks": [f.check for f in verdict.failures],
    })
    return EvidenceResult(node=name, state=state, verdict=verdict, result_token=token)


def _interval(ctx: AttestContext, session: Any, node: NodeRow) -> float:
    try:
        policy = ctx.policy_for(session, node.node_class)
    except LookupError:
        return ctx.config.interval_seconds
    return policy.interval_seconds or ctx.config.interval_seconds


def mark_stale_nodes(ctx: AttestContext) -> list[NodeStateChanged]:
    """Trusted nodes with no passing evidence within interval + grace become ``stale``."""
    now = ctx.now()
    events: list[NodeStateChanged] = []
    with ctx.sessions.begin() as session:
        trusted = session.scalars(
            select(NodeRow).where(NodeRow.state == NodeState.TRUSTED).with_for_update()).all()
        for node in trusted:
            deadline = (node.last_pass_at or node.state_changed_at) + timedelta(
                seconds=_interval(ctx, session, node) + ctx.config.stale_grace_seconds)
            if now > deadline:
                reason = f"no passing evidence since {(node.last_pass_at or now).isoformat()}"
                events.append(ctx.record_change(session, node.name, node.state, NodeState.STALE,
                                                reason, ["deadline.missed"], now))
                node.state = NodeState.STALE
                node.state_changed_at = now
    ctx.publish(events)
    return events


class Lease:
    """A database lease so that exactly one replica runs the periodic deadline checks."""

    def __init__(self, ctx: AttestContext, name: str = "deadlines", ttl: float = 5.0,
                 holder: str | None = None) -> None:
        self.ctx, self.name, self.ttl = ctx, name, ttl
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    def acquire(self) -> bool:
        now = self.ctx.now()
        expires = now + timedelta(seconds=self.ttl)
        with self.ctx.sessions.begin() as session:
            taken = session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == self.name,
                       (LeaseRow.holder == self.holder) | (LeaseRow.expires_at < now))
                .values(holder=self.holder, expires_at=expires))
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return True
            if session.get(LeaseRow, self.name) is not None:
                return False
        try:
            with self.ctx.sessions.begin() as session:
                session.add(LeaseRow(name=self.name, holder=self.holder, expires_at=expires))
            return True
        except IntegrityError:  # another replica inserted it first
            return False
