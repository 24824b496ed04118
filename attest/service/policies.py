"""Appraisal policies stored in SQL, one per node class (``umec policy set|show|list|remove``,
``history`` and ``rollback``).

With signers configured (:class:`PolicyTrust`, from ``UMEC_POLICY_SIGNERS`` and
``UMEC_POLICY_THRESHOLD``) only DSSE envelopes that meet the threshold are applied
(attest/core/policy_envelope.py), and only above the applied version. Whatever is refused
changes nothing: the class keeps its previous policy, and the refusal is one row of
``attest_policy_events`` written in a transaction of its own. An applied policy updates its
class's row and appends its event in one transaction, under the row's lock, so two replicas
applying versions concurrently cannot both pass the version check.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from attest.core.policy import AppraisalPolicy
from attest.core.policy_envelope import (
    PolicyEnvelopeError,
    PolicyVersionInvalid,
    VerifiedPolicy,
    check_version,
    is_envelope,
    parse_envelope,
    payload_digest,
    verify_policy_envelope,
)
from attest.service.context import utcnow
from attest.service.models import NodeRow, PolicyEventRow, PolicyRow
from keys import PublicKey


class PolicyInUse(ValueError):
    """A policy cannot be removed while nodes of its class exist."""


class PolicyUnsigned(PolicyEnvelopeError):
    check = "policy.unsigned"
    status = 403
    hint = ("UMEC_POLICY_SIGNERS is set, so only signed policies are applied: sign it "
            "(umec policy sign --key KEY POLICY.yaml -o POLICY.dsse.json) and set the envelope.")


class PolicyVersionUnknown(PolicyEnvelopeError):
    check = "policy.history"
    status = 404
    hint = "`umec policy history CLASS` lists the versions that were applied."


@dataclass(frozen=True)
class PolicyTrust:
    """Who may sign policies (key id -> public key) and how many must; no signers: unsigned
    policies are accepted, as before signing existed."""

    signers: Mapping[str, PublicKey] = field(default_factory=dict)
    threshold: int = 1

    @property
    def enforced(self) -> bool:
        return bool(self.signers)


NO_TRUST = PolicyTrust()


@dataclass(frozen=True)
class AppliedPolicy:
    policy: AppraisalPolicy
    generation: int
    version: int | None
    signers: tuple[str, ...]
    digest: str
    changed: bool


def _claimed_name(raw: bytes) -> str:
    """The class an unverified document claims (only to file a refusal under it)."""
    try:
        payload = parse_envelope(raw).payload if is_envelope(raw) else raw
        doc = yaml.safe_load(payload.decode("utf-8"))
    except (PolicyEnvelopeError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return ""
    name = doc.get("name") if isinstance(doc, dict) else None
    return name[:128] if isinstance(name, str) else ""


def _verified(raw: bytes, trust: PolicyTrust) -> VerifiedPolicy:
    """The policy in ``raw`` (YAML or envelope), signature-checked when signers are set."""
    if trust.enforced:
        if not is_envelope(raw):
            raise PolicyUnsigned("an unsigned policy was given")
        return verify_policy_envelope(raw, trust.signers, trust.threshold)
    payload = parse_envelope(raw).payload if is_envelope(raw) else raw
    try:
        document = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyVersionInvalid("the policy is not UTF-8 text") from None
    policy = AppraisalPolicy.from_yaml(document)  # raises PolicyInvalid naming the bad key
    return VerifiedPolicy(policy, document, policy.version or 0, (), payload_digest(payload))


def apply_policy(sessions: sessionmaker[Session], raw: bytes,
                 trust: PolicyTrust = NO_TRUST) -> AppliedPolicy:
    """Verify and store a policy (YAML, or a DSSE envelope); every security refusal is
    recorded as a policy event and re-raised, and the class keeps its previous policy."""
    try:
        verified = _verified(raw, trust)
        try:
            return _store(sessions, verified, raw, trust)
        except IntegrityError:  # another replica inserted the same class first: now it exists
            return _store(sessions, verified, raw, trust)
    except PolicyEnvelopeError as refusal:
        record_refusal(sessions, _claimed_name(raw), refusal)
        raise


def set_policy(sessions: sessionmaker[Session], document: str,
               trust: PolicyTrust = NO_TRUST) -> tuple[AppraisalPolicy, int]:
    """Validate and store a policy document; returns it with its new generation."""
    applied = apply_policy(sessions, document.encode("utf-8"), trust)
    return applied.policy, applied.generation


def _event(name: str, outcome: str, detail: str, *, version: int | None = None,
           check: str | None = None, verified: VerifiedPolicy | None = None,
           envelope: str | None = None) -> PolicyEventRow:
    return PolicyEventRow(
        id=str(uuid.uuid4()), policy=name, at=utcnow(), outcome=outcome, version=version,
        check=check, detail=detail, signers=list(verified.signers) if verified else [],
        digest=verified.digest if verified else None,
        document=verified.document if verified else None, envelope=envelope)


def record_refusal(sessions: sessionmaker[Session], name: str,
                   refusal: PolicyEnvelopeError) -> None:
    with sessions.begin() as session:
        session.add(_event(name, "refused", refusal.detail, check=refusal.check))


def _store(sessions: sessionmaker[Session], verified: VerifiedPolicy, raw: bytes,
           trust: PolicyTrust) -> AppliedPolicy:
    policy, version = verified.policy, verified.policy.version
    envelope = raw.decode("utf-8") if is_envelope(raw) else None
    with sessions.begin() as session:
        row = session.get(PolicyRow, policy.name, with_for_update=True)
        if row is not None and row.digest == verified.digest and row.version == version:
            return AppliedPolicy(policy, row.generation, version, verified.signers,
                                 verified.digest, changed=False)  # the same policy again
        if version is not None:
            check_version(policy.name, version, row.version if row is not None else None)
        elif row is not None and row.version is not None:
            check_version(policy.name, 0, row.version)  # an unversioned document after one
        if row is None:
            row = PolicyRow(name=policy.name, generation=1)
            session.add(row)
        else:
            row.generation += 1
        row.document, row.updated_at, row.version = verified.document, utcnow(), version
        row.envelope, row.signers, row.digest = envelope, list(verified.signers), verified.digest
        how = f"signed by {len(verified.signers)} of {len(trust.signers)}" if envelope \
            and trust.enforced else "unsigned"
        session.add(_event(policy.name, "applied", f"applied ({how})", version=version,
                           verified=verified, envelope=envelope))
        session.flush()
        return AppliedPolicy(policy, row.generation, version, verified.signers,
                             verified.digest, changed=True)


def policy_history(sessions: sessionmaker[Session], name: str) -> list[PolicyEventRow]:
    """Every applied and refused policy of a class, oldest first."""
    with sessions() as session:
        return list(session.scalars(select(PolicyEventRow)
                                    .where(PolicyEventRow.policy == name)
                                    .order_by(PolicyEventRow.at, PolicyEventRow.id)))


def applied_version(sessions: sessionmaker[Session], name: str) -> int | None:
    with sessions() as session:
        row = session.get(PolicyRow, name)
        return row.version if row is not None else None


def rollback_document(sessions: sessionmaker[Session], name: str, to_version: int) -> str:
    """The content of ``name``'s applied ``to_version`` as a NEW version above the applied one
    (never an edit of an old row): to be signed, or applied as is when no signers are set."""
    with sessions() as session:
        old = session.scalars(select(PolicyEventRow).where(
            PolicyEventRow.policy == name, PolicyEventRow.outcome == "applied",
            PolicyEventRow.version == to_version).order_by(PolicyEventRow.at.desc())).first()
        row = session.get(PolicyRow, name)
    if old is None or old.document is None or row is None:
        raise PolicyVersionUnknown(f"policy {name!r} never had version {to_version} applied")
    new_version = max(row.version or 0, to_version) + 1
    return with_version(old.document, new_version)


def with_version(document: str, version: int) -> str:
    """``document`` with its top-level ``version:`` set (added when absent); the rest kept."""
    pattern = re.compile(r"^version:[^\n]*$", re.MULTILINE)
    if pattern.search(document):
        return pattern.sub(f"version: {version}", document, count=1)
    return document.rstrip("\n") + f"\nversion: {version}\n"


def load_policy_dir(sessions: sessionmaker[Session], directory: Path,
                    trust: PolicyTrust = NO_TRUST) -> list[str]:
    """Declarative policies: every ``*.yaml`` and ``*.dsse.json`` in the directory is applied
    at start. A refused one is recorded as a policy event and skipped: its class keeps the
    policy it had (or has none, and its nodes fail closed with ``policy.missing``)."""
    names = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.dsse.json")]):
        try:
            names.append(apply_policy(sessions, path.read_bytes(), trust).policy.name)
        except PolicyEnvelopeError:
            continue
    return names


def list_policies(sessions: sessionmaker[Session]) -> list[PolicyRow]:
    with sessions() as session:
        return list(session.scalars(select(PolicyRow).order_by(PolicyRow.name)))


def remove_policy(sessions: sessionmaker[Session], name: str) -> bool:
    with sessions.begin() as session:
        if session.scalars(select(NodeRow.name).where(NodeRow.node_class == name)).first():
            raise PolicyInUse(f"nodes of class {name!r} exist; move or remove them first")
        row = session.get(PolicyRow, name)
        if row is None:
            return False
        session.delete(row)
        return True


class NodeNotKnownGood(PolicyEnvelopeError):
    check = "policy.from_node"
    status = 409
    hint = ("Make a policy from a node that is trusted now and has attested since the "
            "upgrade (its trusted verdicts keep the quoted PCRs): `umec nodes` shows states.")


class ReferenceLogNotAuthentic(PolicyEnvelopeError):
    check = "policy.from_node_log"
    status = 422
    hint = ("Copy the log from the same node and the same boot as its last trusted quote "
            "(/sys/kernel/security/tpm0/binary_bios_measurements, "
            "/sys/kernel/security/ima/binary_runtime_measurements) and run the command again "
            "after its next trusted attestation.")


def node_policy(sessions: sessionmaker[Session], node: str, node_class: str | None, *,
                event_log: bytes | None = None, ima_list: bytes | None = None) -> str:
    """A draft policy (YAML, to review and sign) from ``node``'s last trusted evidence, for
    ``node_class`` (default: the node's class), one version above that class's applied one;
    with the node's boot ``event_log`` and/or ``ima_list``, which must replay to that
    evidence's quoted PCRs (:mod:`attest.core.policy_create`)."""
    from attest.core import policy_create
    with sessions() as session:
        row = session.get(NodeRow, node)
        if row is None:
            raise NodeNotKnownGood(f"no node named {node!r}")
        if row.state != "trusted":
            raise NodeNotKnownGood(f"node {node!r} is {row.state}, not trusted")
        stored = (row.last_verdict or {}).get("pcrs")
        if not stored:
            raise NodeNotKnownGood(f"node {node!r} has no quoted PCR values stored")
        name = node_class or row.node_class
        policy = session.get(PolicyRow, name)
        at = row.last_pass_at.isoformat()[:19] if row.last_pass_at else "?"
    version = (policy.version or 0) + 1 if policy is not None else 1
    try:
        eventlog = (policy_create.eventlog_section(event_log, stored)
                    if event_log is not None else None)
        runtime = (policy_create.runtime_policy_section(ima_list, stored)
                   if ima_list is not None else None)
    except policy_create.ReferenceLogRejected as exc:
        raise ReferenceLogNotAuthentic(f"node {node!r}: {exc}") from None
    return policy_create.policy_from_pcrs(
        name, stored, version=version, eventlog=eventlog, runtime_policy=runtime,
        description=f"made from node {node} (trusted evidence of {at}Z); "
                    "review, then sign with umec policy sign")
