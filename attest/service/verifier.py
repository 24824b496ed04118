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
steps: read (node, policy) and check the nonce → pure appraisal, which raises for a quote the
AK did not sign over this nonce (refused: nothing is written) → a write that records the
verdict and spends the nonce together (on the common path, where the state stays, one
statement that commits itself; a state change is one transaction), so a nonce is spent
exactly when a verdict is recorded. A fourth step writes nothing: it mints the next challenge.

Challenges are stateless (issue 15; :mod:`attest.core.freshness`): a nonce is a MAC under the
challenge key over the node's identity, its PCR selection, the time and the node's challenge
counter ``challenge_seq``, so issuing one is a read. The spend is step 3's conditional UPDATE
``… SET challenge_seq = seq + 1 WHERE name = :n AND challenge_seq = :seq``: replayed or
concurrent evidence, on any replica, finds the counter moved and updates nothing
(``nonce.replayed``), and every other nonce of the node issued before is void with it.

One request a round: a recorded verdict comes with the node's next challenge (step 4 below),
minted for the counter the write just set, so the node's next round is its evidence alone.
It is an ordinary nonce: single use, void when anything else moves the counter (another
round, the deadline sweep, a clock step), fresh for the same lifetime from when it was issued.
A node therefore holds a quote for no longer than it could before: with a challenge it asked
for, it could quote at once and present the quote until that nonce expired. When the held one
is void or too close to its end, the agent asks for a fresh challenge (attest.agent).

Round trips (PostgreSQL, ``bench/attest/count_statements.py --postgres``): the challenge's node
read and the evidence's step-1 read are single statements without ``BEGIN``/``ROLLBACK``
(:func:`kernel.sql_connect.single_reads`); step 3's common case is one ``UPDATE`` in
autocommit (:func:`kernel.sql_connect.single_writes`). Per round: 2 round trips and one
durable commit over a held next challenge, 3 with a challenge request; before issue 15, 14
and two. When that ``UPDATE`` matches no row, nothing was
written, and :func:`_record_state_change` decides in a transaction with the row locked.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.orm import Session

from attest.core.appraisal import Evidence, Verdict, appraise_evidence
from attest.core.errors import AttestationError
from attest.core.freshness import (
    FUTURE_TOLERANCE,
    NodeIdentity,
    NonceReplayed,
    check_nonce,
    mint_nonce,
)
from attest.core.ima.appraise import ImaState
from attest.core.policy import AppraisalPolicy, PolicyInvalid
from attest.core.policy_create import quoted_pcrs
from attest.core.tpm_structs import ClockInfo, TpmPublic, parse_tpm2b_public
from attest.service import faultpoints
from attest.service.context import AttestContext, NodeState
from attest.service.metrics import count_round
from attest.service.models import NodeRow
from attest.service.notify.event import NodeStateChanged
from attest.service.registrar import NodeNotFound
from kernel.sql_connect import single_reads, single_writes

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
    expires_in: float  # seconds left when it is answered: what a node with a skewed clock uses


@dataclass(frozen=True)
class EvidenceResult:
    node: str
    state: str
    verdict: Verdict
    result_token: str
    awaiting_ack: bool = False
    # The IMA offset the agent sends from next round (None: the class has no runtime policy).
    ima_offset: int | None = None
    # The node's next challenge, issued with the verdict (the module doc: one request a round).
    next_challenge: Challenge | None = None


# The hot paths below are prebuilt Core statements on a plain connection: a round is a handful
# of single-row statements, and ORM bookkeeping plus statement construction were most of a
# round's server CPU.
_SELECT_CHALLENGE_NODE = select(NodeRow.node_class, NodeRow.ek_hash, NodeRow.activated_at,
                                NodeRow.challenge_seq).where(NodeRow.name == bindparam("b_name"))
# Step 1 reads everything the appraisal and the nonce check need in one statement.
_SELECT_EVIDENCE_NODE = select(
    NodeRow.ak_public, NodeRow.node_class, NodeRow.reset_count, NodeRow.restart_count,
    NodeRow.clock, NodeRow.safe, NodeRow.state, NodeRow.state_changed_at, NodeRow.acked_at,
    NodeRow.ima_state, NodeRow.ek_hash, NodeRow.activated_at, NodeRow.challenge_seq,
).where(NodeRow.name == bindparam("b_name"))
# SET columns come from the parameters given at execution. The common case of step 3: the
# verdict keeps the state, and the nonce's counter is still the node's (the spend, see above).
# Every write of step 3 also names the binding step 1 read (EK hash, activation time): a node
# removed and enrolled again under the same name while the evidence was appraised is another
# TPM (or AK), and its new row starts its counter from 0 again, so the counter alone could
# match it.
_SAME_BINDING = (NodeRow.ek_hash == bindparam("b_ek_hash"),
                 NodeRow.activated_at == bindparam("b_activated_at"))
_UPDATE_NODE_SAME_STATE = (update(NodeRow)
                           .where(NodeRow.name == bindparam("b_name"),
                                  NodeRow.state == bindparam("b_state"),
                                  NodeRow.challenge_seq == bindparam("b_seq"), *_SAME_BINDING)
                           .returning(NodeRow.ek_hash))
# A state change's first statement: changes nothing, but takes the node's row lock
# (PostgreSQL) or the database's write lock (SQLite) while the nonce's counter is still the
# node's, and reads what the change needs under it.
_LOCK_NODE_AT_SEQ = (update(NodeRow)
                     .where(NodeRow.name == bindparam("b_name"),
                            NodeRow.challenge_seq == bindparam("b_seq"), *_SAME_BINDING)
                     .values(challenge_seq=NodeRow.challenge_seq)
                     .returning(NodeRow.state, NodeRow.ek_hash, NodeRow.trust_epoch,
                                NodeRow.state_changed_at, NodeRow.acked_at))
_SELECT_SAME_BINDING = select(NodeRow.name).where(NodeRow.name == bindparam("b_name"),
                                                   *_SAME_BINDING)
_UPDATE_NODE = update(NodeRow).where(NodeRow.name == bindparam("b_name"))
def _policy(ctx: AttestContext, db: Connection, node_class: str) -> AppraisalPolicy:
    try:
        return ctx.policy_for(db, node_class)
    except LookupError:
        raise PolicyMissing(f"no appraisal policy for node class {node_class!r}") from None


def _identity(name: str, node: Any) -> NodeIdentity:
    return NodeIdentity(name=name, ek_hash=node.ek_hash, activated_at=node.activated_at)


def issue_challenge(ctx: AttestContext, name: str) -> Challenge:
    """A fresh nonce for ``name``: one read, nothing written (the module doc says why)."""
    now = ctx.now()
    with single_reads(ctx.engine) as db:
        node = db.execute(_SELECT_CHALLENGE_NODE, {"b_name": name}).first()
        if node is None:  # a row exists only once its EK-AK binding was proven
            raise NodeNotFound(f"no node named {name!r}")
        selection = _policy(ctx, db, node.node_class).selection_lists()
    return _mint_challenge(ctx, _identity(name, node), selection, node.challenge_seq, now)


def _mint_challenge(ctx: AttestContext, identity: NodeIdentity,
                    selection: dict[str, list[int]], seq: int, now: datetime,
                    elapsed: float = 0.0) -> Challenge:
    """The challenge ``seq`` of the node ``identity``, issued at ``now``, answered ``elapsed``
    seconds later (``expires_in`` counts from the answer)."""
    nonce = mint_nonce(ctx.challenge_key, identity, selection, seq=seq, issued_at=now,
                       random=os.urandom(7))
    # The nonce carries whole seconds: its lifetime counts from the second it names.
    expires = now.replace(microsecond=0) + timedelta(seconds=ctx.config.nonce_ttl_seconds)
    return Challenge(nonce=nonce, selection=selection, expires_at=expires,
                     expires_in=(expires - now).total_seconds() - elapsed)


def _node_and_selection(ctx: AttestContext, db: Connection, name: str, nonce: bytes,
                        now: datetime) -> tuple[Any, AppraisalPolicy, dict[str, list[int]]]:
    """The node, its policy and the PCR selection ``nonce`` was issued for, if it was issued
    to ``name``, is unspent and fresh (else the nonce rule it breaks is raised)."""
    node = db.execute(_SELECT_EVIDENCE_NODE, {"b_name": name}).first()
    if node is None:
        raise NodeNotFound(f"no node named {name!r}")
    policy = _policy(ctx, db, node.node_class)
    selection = policy.selection_lists()
    check_nonce(nonce, key=ctx.challenge_key, node=_identity(name, node), selection=selection,
                node_seq=node.challenge_seq, now=now,
                ttl=timedelta(seconds=ctx.config.nonce_ttl_seconds))
    return node, policy, selection


def _record_values(verdict: Verdict, nonce: bytes, seq: int, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {"challenge_seq": seq + 1, "last_evidence_at": now,
                              "last_verdict": {**verdict.as_dict(), "at": now.isoformat()}}
    if verdict.trusted and verdict.clock is not None and verdict.clock.clock <= MAX_CLOCK:
        # Only authenticated, passing quotes move the reboot/clock baseline forward.
        values.update(reset_count=verdict.clock.reset_count,
                      restart_count=verdict.clock.restart_count, clock=verdict.clock.clock,
                      safe=int(verdict.clock.safe), last_pass_at=now,
                      last_pass_nonce=nonce.hex())
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
    now, started = ctx.now(), time.monotonic()
    # Step 1: read the node and its policy, and check the nonce; nothing is written yet. One
    # statement (the policy is cached), so autocommit gives it one snapshot all the same.
    with single_reads(ctx.engine) as db:
        node, policy, selection = _node_and_selection(ctx, db, name, nonce, now)
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
    values = _record_values(verdict, nonce, node.challenge_seq, now)
    if verdict.trusted:  # the known-good values `umec policy create --from-node` starts from
        values["last_verdict"]["pcrs"] = quoted_pcrs(evidence.pcr_values, verdict.quoted)
    events: list[NodeStateChanged] = []
    # Step 3: record the verdict and any state change, spending the nonce (the counter moves
    # on only if it is still the nonce's); if it was spent meanwhile, nothing is written.
    # Common case first: the state does not change. One statement, which commits itself.
    binding = {"b_name": name, "b_seq": node.challenge_seq, "b_ek_hash": node.ek_hash,
               "b_activated_at": node.activated_at}
    with single_writes(ctx.engine) as db:
        ek_hash = db.execute(_UPDATE_NODE_SAME_STATE,
                             {**values, **binding, "b_state": new_state}).scalar()
    if ek_hash is None:  # nothing was written: a state change, or the nonce was spent
        with ctx.engine.begin() as db:
            ek_hash = _record_state_change(ctx, db, binding, policy, verdict, new_state,
                                           values, now, events)
    faultpoints.reached("evidence.recorded")
    count_round([f.check for f in verdict.failures])
    ctx.publish(events)
    token = ctx.sign_result({
        "iss": ctx.config.issuer, "sub": name, "aud": "umec", "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + ctx.config.result_ttl_seconds, "state": new_state,
        "trusted": new_state == NodeState.TRUSTED, "ek_hash": ek_hash,
        "failed_checks": [f.check for f in verdict.failures],
    })
    # Step 4: the node's next challenge. The write above moved its counter to seq + 1, so
    # this nonce is the one its next evidence may spend, under the same lifetime as any other.
    # Issued at ``now`` (the void after a clock step compares it with last_evidence_at), its
    # expires_in counts from here, less the time this evidence took.
    next_challenge = _mint_challenge(ctx, _identity(name, node), selection,
                                     node.challenge_seq + 1, now,
                                     elapsed=time.monotonic() - started)
    return EvidenceResult(node=name, state=new_state, verdict=verdict, result_token=token,
                          awaiting_ack=awaiting_ack,
                          ima_offset=_next_ima_offset(policy, verdict, previous_ima),
                          next_challenge=next_challenge)


def _record_state_change(ctx: AttestContext, db: Connection, binding: dict[str, Any],
                         policy: AppraisalPolicy, verdict: Verdict, new_state: str,
                         values: dict[str, Any], now: datetime,
                         events: list[NodeStateChanged]) -> str:
    """Step 3 when the common-case UPDATE matched no row (it wrote nothing), in one
    transaction that first locks the node's row while the nonce is still unspent and the row
    is still the binding step 1 read (else ``nonce.replayed``, or ``node.unknown`` when the
    node was removed, or removed and enrolled again; a concurrent round that spent the nonce
    first has committed before the lock is granted, and then nothing matches): the state
    changes, with its event and, when a trust period ends, the epoch that revokes its tokens.
    Returns the node's EK hash; the event is appended to ``events``."""
    name = binding["b_name"]
    current = db.execute(_LOCK_NODE_AT_SEQ, binding).first()
    if current is None:
        if db.execute(_SELECT_SAME_BINDING, binding).first() is None:
            raise NodeNotFound(f"no node named {name!r} with the binding this evidence was "
                               "appraised for: it was removed (and perhaps enrolled again) "
                               "meanwhile")
        raise NonceReplayed("nonce was spent by a concurrent request")
    if verdict.trusted and needs_ack(policy, current.state, current.state_changed_at,
                                     current.acked_at):
        # It left `trusted` after step 1 (the sweep): a pass alone does not end that.
        raise EvidenceRaced(f"node {name!r} became {current.state} during appraisal")
    # Leaving `trusted` ends a trust period: its tokens are revoked by epoch.
    ended = current.state == NodeState.TRUSTED and new_state != NodeState.TRUSTED
    epoch = current.trust_epoch + int(ended)
    events.append(ctx.record_change(db, name, current.state, new_state, verdict.reason,
                                    [f.check for f in verdict.failures], now, epoch))
    db.execute(_UPDATE_NODE, {**values, "b_name": name, "state": new_state,
                              "state_changed_at": now, "trust_epoch": epoch})
    return str(current.ek_hash)


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


_proof_at = func.coalesce(NodeRow.last_pass_at, NodeRow.state_changed_at)
# One-shot: the node's latest evidence is re-dated to now with it, so the next sweep finds
# nothing (a void every second would refuse every round that straddles a sweep until the
# clock caught up: hours after a large step).
_VOID_NONCES_BEFORE_A_CLOCK_STEP = (update(NodeRow)
                                    .where(NodeRow.last_evidence_at > bindparam("b_future"))
                                    .values(challenge_seq=NodeRow.challenge_seq + 1,
                                            last_evidence_at=bindparam("b_now")))


# Nodes marked per transaction, and how long one sweep may go on: a sweep after a mass outage
# (thousands overdue, each with its event and token revocation) commits in batches and leaves
# the rest to the next run instead of holding one transaction and outliving its lease.
STALE_BATCH = 200
SWEEP_BUDGET_SECONDS = 1.0


def _overdue(session: Session, node_class: str, condition: Any, values: dict[str, Any],
             limit: int) -> Sequence[Any]:
    """Up to ``limit`` trusted nodes of ``node_class`` meeting ``condition`` become stale,
    their trust epoch incremented in the same statement (their tokens are revoked by epoch),
    and their challenge counter too: a quote held back over a challenge issued before the
    node went silent can never end ``stale``, whatever the clock does later.
    On PostgreSQL a node whose row is locked (its evidence is being recorded) is skipped:
    that evidence decides, and the next sweep looks again."""
    where = (NodeRow.state == NodeState.TRUSTED, NodeRow.node_class == node_class, condition)
    # A CTE, evaluated once: PostgreSQL may re-run a LIMIT subquery of ``IN`` with FOR UPDATE
    # and update more rows than the limit (seen: 7 of a batch of 3).
    batch = (select(NodeRow.name).where(*where).limit(limit)
             .with_for_update(skip_locked=True).cte("batch"))
    return session.execute(
        update(NodeRow).where(*where, NodeRow.name.in_(select(batch.c.name)))
        .values(state=NodeState.STALE, trust_epoch=NodeRow.trust_epoch + 1,
                challenge_seq=NodeRow.challenge_seq + 1, **values)
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
    nothing per healthy node. They run in transactions of at most :data:`STALE_BATCH` nodes
    for at most :data:`SWEEP_BUDGET_SECONDS`, and "now" is read again for each: evidence
    recorded while a long sweep runs is never dated "in the future" by the sweep's own start.

    First, one statement voids the outstanding challenges of every node, in any state, whose
    latest evidence is dated in the future: its nonces issued before our clock was stepped
    back carry an ``issued_at`` the clock will reach again, and a quote over one, held back
    until then, would pass as fresh. Moving the counter on voids them (the node's next
    challenge is good); the evidence's date is set to now with it, so this happens once per
    step. Marking a node stale moves its counter on too, so a node that went silent (no
    evidence to date) cannot be revived by a held quote after a later step. What is left: a
    node that never attested (``enrolled``) and a step back to within a nonce's lifetime of
    a challenge it was issued (docs/decisions.md).
    """
    started = time.monotonic()
    with ctx.sessions.begin() as session:
        now = ctx.now()
        session.execute(_VOID_NONCES_BEFORE_A_CLOCK_STEP,
                        {"b_future": now + FUTURE_TOLERANCE, "b_now": now})
    events: list[NodeStateChanged] = []
    while True:
        batch = _mark_stale_batch(ctx)
        faultpoints.reached("deadline.marked")
        ctx.publish(batch)
        events += batch
        if len(batch) < STALE_BATCH or time.monotonic() - started > SWEEP_BUDGET_SECONDS:
            return events


def _mark_stale_batch(ctx: AttestContext) -> list[NodeStateChanged]:
    """One transaction of :func:`mark_stale_nodes`: up to :data:`STALE_BATCH` nodes."""
    events: list[NodeStateChanged] = []
    with ctx.sessions.begin() as session:
        classes = session.execute(select(NodeRow.node_class).distinct()
                                  .where(NodeRow.state == NodeState.TRUSTED)).scalars().all()
        for node_class in classes:
            now = ctx.now()
            cutoff = now - timedelta(seconds=_stale_interval(ctx, session, node_class))
            for row in _overdue(session, node_class, _proof_at < cutoff,
                                {"state_changed_at": now}, STALE_BATCH - len(events)):
                since = row.last_pass_at.isoformat() if row.last_pass_at else "enrolment"
                events.append(ctx.record_change(
                    session, row.name, NodeState.TRUSTED, NodeState.STALE,
                    f"no passing evidence since {since}", ["deadline.missed"], now,
                    row.trust_epoch))
            events += _mark_clock_future(ctx, session, node_class, STALE_BATCH - len(events))
    return events


def _mark_clock_future(ctx: AttestContext, session: Session, node_class: str,
                       limit: int) -> list[NodeStateChanged]:
    """Trusted nodes whose last pass is dated after now: our clock was stepped back. Our
    clock's step is no incident of the node's: the acknowledgement a policy may require is
    given with the change (acked_at = state_changed_at)."""
    if limit <= 0:
        return []
    now = ctx.now()  # read just before: evidence recorded meanwhile is not "in the future"
    return [ctx.record_change(
        session, row.name, NodeState.TRUSTED, NodeState.STALE,
        f"last passing evidence dated {_stamp(row.last_pass_at)}, after now "
        f"({now.isoformat()}): the server's clock was probably stepped back; the next "
        f"passing quote trusts the node again", ["deadline.clock_future"], now,
        row.trust_epoch)
        for row in _overdue(session, node_class, _proof_at > now + FUTURE_TOLERANCE,
                            {"state_changed_at": now, "acked_at": now}, limit)]


def _stamp(at: datetime | None) -> str:
    return at.isoformat() if at else "its enrolment"
