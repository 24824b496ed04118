"""Verifier: challenges, evidence appraisal, node states and deadlines (protocol steps 3–6).

State machine (``NodeState``)::

    enrolled ──pass──▶ trusted ◀──pass── untrusted / stale
        │                │  │                 ▲
        └──fail──▶ untrusted ◀┘fail           │
                         trusted ──no passing evidence within interval+grace──▶ stale

Leaving ``untrusted`` or ``stale`` takes a fresh passing quote; nothing is ever deleted and
re-added. Each transition is stored as an event row in the same transaction as the state, with
whatever the context's change writers add (token revocation, when a trust period ends), then
published to listeners (webhooks, Kubernetes labels, waking token followers) after commit.

Who moves a node (DESIGN's invariant "only the node's TPM changes its state"): evidence whose
quote the node's own activated AK signed over a nonce issued to that node and not yet spent,
the deadline sweep (``stale``), and operators (ack, remove, rename). Evidence does so in three
steps: read (node, nonce, policy) → pure appraisal, which raises for a quote the AK did not sign
over this nonce (refused: nothing is written, not even the nonce) → one transaction that records
the verdict and spends the nonce (three statements in all on the common path), so a nonce is
spent exactly when a verdict is recorded.

Round trips (PostgreSQL, ``bench/attest/count_statements.py --postgres``): statements that need
no transaction run in autocommit (:mod:`kernel.sql_connect`): the evidence's step-1 read is one
statement (``single_reads``), so it has one snapshot without ``BEGIN``/``ROLLBACK``; the
challenge's node read and nonce insert were never atomic (a removal in between fails the
insert's foreign key, answered as ``node.not_found``), so each is its own statement and the
insert commits itself (``single_statements``). Only step 3 is a multi-statement transaction.
Per round: 7 round trips and two durable commits, the nonce insert and step 3; before, 14.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from attest.core.appraisal import Evidence, Verdict, appraise_evidence
from attest.core.errors import AttestationError
from attest.core.freshness import FUTURE_TOLERANCE, NonceRecord, NonceReplayed, check_nonce
from attest.core.ima.appraise import ImaState
from attest.core.policy import AppraisalPolicy, PolicyInvalid
from attest.core.policy_create import quoted_pcrs
from attest.core.tpm_structs import ClockInfo, TpmPublic, parse_tpm2b_public
from attest.service import faultpoints
from attest.service.context import AttestContext, NodeState
from attest.service.metrics import count_round
from attest.service.models import NodeRow, NonceRow
from attest.service.notify.event import NodeStateChanged
from attest.service.registrar import NodeNotFound
from kernel.sql_connect import single_reads, single_statements

MAX_CLOCK = 2**63 - 1


@functools.lru_cache(maxsize=16384)
def _parsed_ak(ak_public: bytes) -> TpmPublic:
    """Activated AKs are immutable, so their parsed form (and loaded key) can be reused."""
    return parse_tpm2b_public(ak_public)


class NothingToAcknowledge(AttestationError):
    check = "node.ack_not_needed"
    status = 409
    hint = ("Nothing to do: only untrusted or stale nodes whose class policy has require_ack "
            "are acknowledged.")


class EvidenceRaced(AttestationError):
    check = "evidence.concurrent"
    status = 409
    hint = ("The node's state changed while this evidence was appraised (the deadline sweep or "
            "an operator); nothing was recorded and the nonce is unspent: send it again.")


class PolicyMissing(AttestationError):
    check = "policy.missing"
    status = 422
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
    awaiting_ack: bool = False
    # The IMA offset the agent sends from next round (None: the class has no runtime policy).
    ima_offset: int | None = None


# The hot paths below are prebuilt Core statements on a plain connection: a round is a handful
# of single-row statements, and ORM bookkeeping plus statement construction were most of a
# round's server CPU.
_SELECT_NODE = select(NodeRow.ak_public, NodeRow.node_class, NodeRow.reset_count,
                      NodeRow.restart_count, NodeRow.clock, NodeRow.safe, NodeRow.state,
                      NodeRow.state_changed_at, NodeRow.acked_at
                      ).where(NodeRow.name == bindparam("b_name"))
_INSERT_NONCE = insert(NonceRow)
# Step 1 reads the node and the nonce (whoever it was issued to) in one statement.
_SELECT_NODE_AND_NONCE = (
    select(NodeRow.ak_public, NodeRow.node_class, NodeRow.reset_count, NodeRow.restart_count,
           NodeRow.clock, NodeRow.safe, NodeRow.state, NodeRow.state_changed_at,
           NodeRow.acked_at, NodeRow.ima_state, NonceRow.node.label("nonce_node"),
           NonceRow.expires_at.label("nonce_expires_at"),
           NonceRow.consumed_at.label("nonce_consumed_at"), NonceRow.selection)
    .select_from(NodeRow)
    .outerjoin(NonceRow, NonceRow.nonce == bindparam("b_nonce"))
    .where(NodeRow.name == bindparam("b_name")))
# SET columns come from the parameters given at execution.
_UPDATE_NODE_SAME_STATE = (update(NodeRow)
                           .where(NodeRow.name == bindparam("b_name"),
                                  NodeRow.state == bindparam("b_state"))
                           .returning(NodeRow.ek_hash))
_SELECT_STATE = select(NodeRow.state, NodeRow.ek_hash, NodeRow.trust_epoch,
                       NodeRow.state_changed_at, NodeRow.acked_at).where(
    NodeRow.name == bindparam("b_name")).with_for_update()
_UPDATE_NODE = update(NodeRow).where(NodeRow.name == bindparam("b_name"))
# Spending a nonce voids the node's older unspent ones in the same statement: a genuine quote
# over an older challenge, held back on the path or made in advance on the node, must not
# overturn a newer verdict nor move the clock baseline back. Only a quote the AK signed spends,
# so nobody else voids anything. Step 3 locks the node row before any nonce row, and so does an
# operator's remove/rename: concurrent evidence of one node (replicas on PostgreSQL) serialises
# on the node row and cannot deadlock on nonces. A nonce expiring later than any issued up to
# now (``b_latest``) is a clock step, never spendable.
_ISSUED = NonceRow.__table__.alias("issued")
_SPEND_NONCE = (update(NonceRow)
                .where(NonceRow.node == bindparam("b_name"), NonceRow.consumed_at.is_(None),
                       NonceRow.expires_at > bindparam("b_now"),
                       NonceRow.expires_at <= bindparam("b_latest"),
                       NonceRow.issued_at <= select(_ISSUED.c.issued_at)
                       .where(_ISSUED.c.nonce == bindparam("b_nonce")).scalar_subquery())
                .values(consumed_at=bindparam("b_now"))
                .returning(NonceRow.nonce))


def _activated_node(db: Connection, name: str) -> Any:
    """A node row exists only once its EK↔AK binding was proven (see the registrar)."""
    node = db.execute(_SELECT_NODE, {"b_name": name}).first()
    if node is None:
        raise NodeNotFound(f"no node named {name!r}")
    return node


def _policy(ctx: AttestContext, db: Connection, node_class: str) -> AppraisalPolicy:
    try:
        return ctx.policy_for(db, node_class)
    except LookupError:
        raise PolicyMissing(f"no appraisal policy for node class {node_class!r}") from None


def issue_challenge(ctx: AttestContext, name: str) -> Challenge:
    now = ctx.now()
    nonce = os.urandom(32)
    try:
        # Two autocommit statements: the read and the insert were never one snapshot (the
        # insert's foreign key is what refuses a node removed in between).
        with single_statements(ctx.engine) as db:
            node = _activated_node(db, name)
            selection = _policy(ctx, db, node.node_class).selection_lists()
            expires = now + timedelta(seconds=ctx.config.nonce_ttl_seconds)
            db.execute(_INSERT_NONCE, {"nonce": nonce.hex(), "node": name,
                                       "selection": selection, "issued_at": now,
                                       "expires_at": expires})
    except IntegrityError:  # the node was removed or renamed between the read and the insert
        raise NodeNotFound(f"no node named {name!r}") from None
    return Challenge(nonce=nonce, selection=selection, expires_at=expires)


def _node_and_nonce(ctx: AttestContext, db: Connection, name: str, nonce: bytes,
                    now: datetime) -> tuple[Any, dict[str, list[int]]]:
    """The node, and the PCR selection of ``nonce`` if it was issued to ``name``, is unspent
    and unexpired (else the nonce rule it breaks is raised)."""
    row = db.execute(_SELECT_NODE_AND_NONCE, {"b_name": name, "b_nonce": nonce.hex()}).first()
    if row is None:
        raise NodeNotFound(f"no node named {name!r}")
    record = None if row.nonce_node is None else NonceRecord(
        row.nonce_node, row.nonce_expires_at, row.nonce_consumed_at is not None)
    check_nonce(record, node=name, now=now,
                ttl=timedelta(seconds=ctx.config.nonce_ttl_seconds))
    return row, dict(row.selection)


def _spend_nonce(ctx: AttestContext, db: Connection, name: str, nonce: bytes,
                 now: datetime) -> None:
    # Exactly one request may spend a nonce, even across replicas: this UPDATE is the arbiter.
    spent = db.execute(_SPEND_NONCE, {"b_nonce": nonce.hex(), "b_name": name, "b_now": now,
                                      "b_latest": _latest_expiry(ctx, now)}).scalars().all()
    if nonce.hex() not in spent:
        raise NonceReplayed("nonce was spent by a concurrent request")


def _record_values(verdict: Verdict, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {"last_evidence_at": now,
                              "last_verdict": {**verdict.as_dict(), "at": now.isoformat()}}
    if verdict.trusted and verdict.clock is not None and verdict.clock.clock <= MAX_CLOCK:
        # Only authenticated, passing quotes move the reboot/clock baseline forward.
        values.update(reset_count=verdict.clock.reset_count,
                      restart_count=verdict.clock.restart_count, clock=verdict.clock.clock,
                      safe=int(verdict.clock.safe), last_pass_at=now)
        if verdict.ima is not None:
            values["ima_state"] = verdict.ima.as_json()
    return values


def _stored_ima(raw: dict[str, Any] | None) -> ImaState | None:
    """The node's IMA state; unreadable counts as none (the agent re-sends the full list)."""
    try:
        return ImaState.from_json(raw) if raw else None
    except (KeyError, TypeError, ValueError):
        return None


def _next_ima_offset(policy: AppraisalPolicy, verdict: Verdict,
                     previous: ImaState | None) -> int | None:
    """Where the agent continues: after the newly accepted entries when the verdict is
    trusted, else from what was accepted before in this boot (failing entries are sent and
    appraised again), else from 0."""
    if policy.runtime_policy is None:
        return None
    if verdict.trusted and verdict.ima is not None:
        return verdict.ima.accepted
    clock = verdict.clock
    if previous is not None and clock is not None and (
            previous.reset_count, previous.restart_count) == (clock.reset_count,
                                                              clock.restart_count):
        return previous.accepted
    return 0


def submit_evidence(ctx: AttestContext, name: str, nonce: bytes,
                    evidence: Evidence) -> EvidenceResult:
    now = ctx.now()
    # Step 1: read the node, its challenge and its policy; nothing is written yet. One
    # statement (the policy is cached), so autocommit gives it one snapshot all the same.
    with single_reads(ctx.engine) as db:
        node, selection = _node_and_nonce(ctx, db, name, nonce, now)
        policy = _policy(ctx, db, node.node_class)
    previous = None
    if None not in (node.reset_count, node.restart_count, node.clock):
        previous = ClockInfo(clock=node.clock, reset_count=node.reset_count,
                             restart_count=node.restart_count, safe=bool(node.safe))
    # Step 2: the pure appraisal, outside any transaction. It raises for a quote that the
    # node's AK did not sign over this nonce: such a request is refused and changes nothing.
    previous_ima = _stored_ima(node.ima_state)
    verdict = appraise_evidence(
        _parsed_ak(node.ak_public), evidence, expected_nonce=nonce, policy=policy,
        requested={b: frozenset(v) for b, v in selection.items()}, previous_clock=previous,
        previous_ima=previous_ima)
    faultpoints.reached("evidence.appraised")
    new_state = NodeState.TRUSTED if verdict.trusted else NodeState.UNTRUSTED
    awaiting_ack = verdict.trusted and needs_ack(policy, node.state, node.state_changed_at,
                                                 node.acked_at)
    if awaiting_ack:  # the quote passed, but the policy wants an operator to say so too
        new_state = node.state
    values = _record_values(verdict, now)
    if verdict.trusted:  # the known-good values `umec policy create --from-node` starts from
        values["last_verdict"]["pcrs"] = quoted_pcrs(evidence.pcr_values, verdict.quoted)
    events: list[NodeStateChanged] = []
    # Step 3, one transaction: record the verdict and any state change (locking the node row
    # first), and spend the nonce; if it was spent meanwhile, all of it rolls back.
    with ctx.engine.begin() as db:
        # Common case first: the state does not change (one statement).
        ek_hash = db.execute(_UPDATE_NODE_SAME_STATE,
                             {**values, "b_name": name, "b_state": new_state}).scalar()
        if ek_hash is None:
            current = db.execute(_SELECT_STATE, {"b_name": name}).first()
            if current is None:  # removed by an operator meanwhile
                raise NodeNotFound(f"no node named {name!r}")
            if verdict.trusted and needs_ack(policy, current.state, current.state_changed_at,
                                             current.acked_at):
                # It left `trusted` after step 1 (the sweep): a pass alone does not end that.
                raise EvidenceRaced(f"node {name!r} became {current.state} during appraisal")
            ek_hash = current.ek_hash
            # Leaving `trusted` ends a trust period: its tokens are revoked by epoch.
            ended = current.state == NodeState.TRUSTED and new_state != NodeState.TRUSTED
            epoch = current.trust_epoch + int(ended)
            events.append(ctx.record_change(db, name, current.state, new_state, verdict.reason,
                                            [f.check for f in verdict.failures], now, epoch))
            db.execute(_UPDATE_NODE, {**values, "b_name": name, "state": new_state,
                                      "state_changed_at": now, "trust_epoch": epoch})
        _spend_nonce(ctx, db, name, nonce, now)
    faultpoints.reached("evidence.recorded")
    count_round([f.check for f in verdict.failures])
    ctx.publish(events)
    token = ctx.sign_result({
        "iss": ctx.config.issuer, "sub": name, "aud": "umec", "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + ctx.config.result_ttl_seconds, "state": new_state,
        "trusted": new_state == NodeState.TRUSTED, "ek_hash": ek_hash,
        "failed_checks": [f.check for f in verdict.failures],
    })
    return EvidenceResult(node=name, state=new_state, verdict=verdict, result_token=token,
                          awaiting_ack=awaiting_ack,
                          ima_offset=_next_ima_offset(policy, verdict, previous_ima))


def needs_ack(policy: AppraisalPolicy, state: str, state_changed_at: datetime,
              acked_at: datetime | None) -> bool:
    """A passing quote alone does not end ``untrusted``/``stale`` under ``require_ack``: an
    acknowledgement given after the node left ``trusted`` must exist."""
    if not policy.require_ack or state not in (NodeState.UNTRUSTED, NodeState.STALE):
        return False
    return acked_at is None or acked_at < state_changed_at


def _require_ack_policy(ctx: AttestContext, db: Connection, name: str, node_class: str) -> None:
    """An acknowledgement means something only under ``require_ack`` (a class without a policy
    yet may get one: the acknowledgement is kept)."""
    try:
        policy = ctx.policy_for(db, node_class)
    except (LookupError, PolicyInvalid):
        return
    if not policy.require_ack:
        raise NothingToAcknowledge(
            f"node {name!r} (class {node_class!r}) has no require_ack in its policy: its next "
            "passing quote makes it trusted without an acknowledgement; none was recorded")


def acknowledge(ctx: AttestContext, name: str) -> str:
    """Record an operator's acknowledgement; the next passing quote makes the node trusted."""
    now = ctx.now()
    with ctx.engine.begin() as db:
        row = db.execute(select(NodeRow.state, NodeRow.node_class)
                         .where(NodeRow.name == name)).first()
        if row is None:
            raise NodeNotFound(f"no node named {name!r}")
        if row.state not in (NodeState.UNTRUSTED, NodeState.STALE):
            raise NothingToAcknowledge(f"node {name!r} is {row.state}: no acknowledgement is "
                                       "needed, none was recorded")
        _require_ack_policy(ctx, db, name, row.node_class)
        db.execute(_UPDATE_NODE, {"b_name": name, "acked_at": now})
    return str(row.state)


def _latest_expiry(ctx: AttestContext, now: datetime) -> datetime:
    """The latest expiry a nonce issued up to ``now`` can have; later ones are a clock step."""
    return now + timedelta(seconds=ctx.config.nonce_ttl_seconds) + FUTURE_TOLERANCE


_proof_at = func.coalesce(NodeRow.last_pass_at, NodeRow.state_changed_at)


def _overdue(session: Session, node_class: str, condition: Any,
             values: dict[str, Any]) -> Sequence[Any]:
    """Trusted nodes of ``node_class`` meeting ``condition`` become stale, their trust epoch
    incremented in the same statement (their tokens are revoked by epoch)."""
    return session.execute(
        update(NodeRow)
        .where(NodeRow.state == NodeState.TRUSTED, NodeRow.node_class == node_class, condition)
        .values(state=NodeState.STALE, trust_epoch=NodeRow.trust_epoch + 1, **values)
        .returning(NodeRow.name, NodeRow.last_pass_at, NodeRow.trust_epoch)).all()


def _stale_interval(ctx: AttestContext, session: Session, node_class: str) -> float:
    try:
        interval = ctx.policy_for(session, node_class).interval_seconds
    except LookupError:
        interval = None
    return (interval or ctx.config.interval_seconds) + ctx.config.stale_grace_seconds


def mark_stale_nodes(ctx: AttestContext) -> list[NodeStateChanged]:
    """Trusted nodes with no valid proof of freshness become ``stale``: no passing evidence
    within interval + grace (``deadline.missed``), or evidence dated in the future
    (``deadline.clock_future``: the server's clock was stepped back since, so how old the
    evidence really is cannot be known; a good node is trusted again on its next round).

    Two UPDATEs per node class select exactly those nodes, so the periodic check costs
    nothing per healthy node.
    """
    now = ctx.now()
    future = now + FUTURE_TOLERANCE
    events: list[NodeStateChanged] = []
    with ctx.sessions.begin() as session:
        classes = session.execute(select(NodeRow.node_class).distinct()
                                  .where(NodeRow.state == NodeState.TRUSTED)).scalars().all()
        for node_class in classes:
            cutoff = now - timedelta(seconds=_stale_interval(ctx, session, node_class))
            for row in _overdue(session, node_class, _proof_at < cutoff,
                                {"state_changed_at": now}):
                since = row.last_pass_at.isoformat() if row.last_pass_at else "enrolment"
                events.append(ctx.record_change(
                    session, row.name, NodeState.TRUSTED, NodeState.STALE,
                    f"no passing evidence since {since}", ["deadline.missed"], now,
                    row.trust_epoch))
            # Our clock's step is no incident of the node's: the acknowledgement a policy may
            # require is given with the change (acked_at = state_changed_at).
            for row in _overdue(session, node_class, _proof_at > future,
                                {"state_changed_at": now, "acked_at": now}):
                stamp = row.last_pass_at.isoformat() if row.last_pass_at else "its enrolment"
                events.append(ctx.record_change(
                    session, row.name, NodeState.TRUSTED, NodeState.STALE,
                    f"last passing evidence dated {stamp}, after now ({now.isoformat()}): the "
                    f"server's clock was probably stepped back; the next passing quote trusts "
                    f"the node again", ["deadline.clock_future"], now, row.trust_epoch))
    faultpoints.reached("deadline.marked")
    ctx.publish(events)
    return events


def prune_nonces(ctx: AttestContext) -> int:
    """Expired challenges go, spent or not: past its expiry a nonce is refused as unknown,
    which is as final as "replayed". So do challenges dated further ahead than their lifetime
    (a clock step back): they are refused too and would otherwise stay until time caught up.
    Keeps the table at about (nodes × challenges per TTL)."""
    now = ctx.now()
    with ctx.engine.begin() as db:
        done = db.execute(delete(NonceRow).where(
            (NonceRow.expires_at <= now) | (NonceRow.expires_at > _latest_expiry(ctx, now))))
    return int(done.rowcount)

