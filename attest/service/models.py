"""SQL tables of the registrar and verifier (SQLAlchemy 2, migrated by Alembic in ``umec``).

Why the columns look the way they do:
- A row in ``attest_nodes`` exists only for a name whose EK↔AK binding was proven by
  ActivateCredential: ``ek_public`` and ``ak_public`` never change after that (re-enrolment with
  another EK or AK is refused, not merged), and ``ek_hash`` is unique: one EK, one name.
- ``attest_enrollments`` hold outstanding MakeCredential challenges, any number per name, each
  with its own id and wrong-proof counter. Public material (EK, EK certificate, AK public) only
  ever creates one of these; it binds nothing, locks nothing but itself and expires.
- Nonces are stateless (attest.core.freshness): ``challenge_seq`` is the node's challenge
  counter, moved on by the conditional UPDATE that records a verdict, so that, with several
  replicas on PostgreSQL, exactly one request can use a nonce.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.sql_types import UtcDateTime


class AttestBase(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON, list[Any]: JSON, datetime: UtcDateTime}


class NodeRow(AttestBase):
    __tablename__ = "attest_nodes"
    # One EK is one machine and has one name (enforced here too, against racing activations).
    __table_args__ = (UniqueConstraint("ek_hash", name="uq_attest_nodes_ek_hash"),)

    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    node_class: Mapped[str] = mapped_column(String(128))
    ek_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_hash: Mapped[str] = mapped_column(String(64))
    ek_certificate: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime]
    activated_at: Mapped[datetime]
    state_changed_at: Mapped[datetime]
    # Appraisal bookkeeping.
    last_evidence_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_pass_at: Mapped[datetime | None] = mapped_column(nullable=True, index=True)
    last_verdict: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    reset_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    restart_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    clock: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    safe: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The operator's acknowledgement (policies with require_ack); counts only when given
    # after the node last left `trusted`.
    acked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Incremented in the same transaction as every change that ends a trust period (leaving
    # `trusted`, removal, rename): tokens carry the epoch they were minted in, and a node
    # revocation revokes every epoch below the node's new one, with no clock involved. A new
    # row starts above every epoch its name ever had: one more than the name's event count
    # (events are never deleted, and each increment comes with an event).
    trust_epoch: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # IMA (issue 13): entries accepted so far and the running PCR 10 per bank after them, with
    # the resetCount/restartCount of that boot (attest.core.ima.appraise.ImaState); written
    # only with a trusted verdict, so the next round replays only the entries after it.
    ima_state: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    # Stateless challenges (issue 15): the counter every nonce of the node carries; recording
    # a verdict moves it on, which spends the nonce and voids every other one issued before.
    challenge_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The nonce (hex) of the latest passing quote: the k3s join names it.
    last_pass_nonce: Mapped[str | None] = mapped_column(String(64), nullable=True)


class EnrollmentRow(AttestBase):
    """One outstanding credential challenge (enrol → activate), bound to nothing until proven."""

    __tablename__ = "attest_enrollments"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), index=True)
    node_class: Mapped[str] = mapped_column(String(128))
    ek_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_hash: Mapped[str] = mapped_column(String(64))
    ek_certificate: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    failed_proofs: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class StateEventRow(AttestBase):
    __tablename__ = "attest_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node: Mapped[str] = mapped_column(String(253), index=True)
    previous: Mapped[str | None] = mapped_column(String(16), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    failed_checks: Mapped[list[Any]]
    at: Mapped[datetime] = mapped_column(index=True)


class PolicyRow(AttestBase):
    __tablename__ = "attest_policies"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    document: Mapped[str] = mapped_column(Text)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime]
    # Signed policies (attest/core/policy_envelope.py): the applied version, the envelope it
    # came in, the key ids that signed it and the payload's digest; all empty when unsigned.
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    envelope: Mapped[str | None] = mapped_column(Text, nullable=True)
    signers: Mapped[list[Any] | None] = mapped_column(nullable=True)
    digest: Mapped[str | None] = mapped_column(String(71), nullable=True)


class PolicyEventRow(AttestBase):
    """Every policy applied or refused, never updated or deleted: `umec policy history`, and
    the source `umec policy rollback` copies an old version's content from."""

    __tablename__ = "attest_policy_events"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    policy: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[datetime] = mapped_column(index=True)
    outcome: Mapped[str] = mapped_column(String(16))       # applied | refused
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    check: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text)
    signers: Mapped[list[Any]]
    digest: Mapped[str | None] = mapped_column(String(71), nullable=True)
    document: Mapped[str | None] = mapped_column(Text, nullable=True)
    envelope: Mapped[str | None] = mapped_column(Text, nullable=True)


class JoinTokenRow(AttestBase):
    """One k3s bootstrap token the server created (attest/service/join.py): the server's own
    record of its Secrets in ``kube-system``, so it never needs to list or read Secrets there.

    ``(node, verdict)`` is unique: one passing verdict yields at most one token, decided by the
    insert in the transaction that grants it (a replayed or concurrent request, on any replica,
    fails that insert). ``revoked_at`` is set before the Secret is deleted (rotation, leaving
    ``trusted``, joined); ``deleted_at`` when the API confirmed it gone (or 404). A row stays
    until ``expires_at``, keeping its verdict refused, and the sweep deletes it then."""

    __tablename__ = "attest_join_tokens"
    __table_args__ = (UniqueConstraint("node", "verdict", name="uq_attest_join_tokens_verdict"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node: Mapped[str] = mapped_column(String(253), index=True)
    token_id: Mapped[str] = mapped_column(String(6))      # Secret bootstrap-token-<token_id>
    verdict: Mapped[str] = mapped_column(String(64))      # sha256 of the verdict's nonce, hex
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)
