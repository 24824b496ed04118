"""Registrar: enrolment and credential activation (protocol steps 1 and 2 of DESIGN).

Who may change what (DESIGN's invariant "a name is bound by proof"):

    enrol(name, EK, AK) ──▶ a new pending enrolment (own id, own wrong-proof counter, expires)
        binds nothing, replaces nothing, locks nothing but itself
    activate(name, id, secret) ──right secret──▶ the name is bound to that EK and AK for ever
                               ──wrong secret──▶ that enrolment's counter +1 (dead after N)

Enrol: the node proves nothing yet. We check that its EK is one we trust (certificate chain to a
manufacturer CA, or an operator-approved EK hash) and has a TCG EK template, that its AK has the
attributes of a real attestation key, and that neither the name nor the EK is bound to something
else; then answer with MakeCredential(EK, name(AK), secret). Only the TPM holding that EK can
recover the secret, and only if the AK with that name is loaded in it. EK, EK certificate and AK
public are public material: anyone can enrol with them, so an enrolment is only a pending row.

Activate: the node returns the secret of *its* enrolment. Only then is the EK↔AK binding stored,
in one transaction that re-checks the name and the EK (a unique EK column settles races). A wrong
proof is counted on that enrolment alone: an attacker who enrolled with a victim's public EK can
lock out nothing but his own enrolment, never the node that can prove (Keylime's registrar let
a wrong proof delete the node).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from sqlalchemy import Connection, bindparam, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from attest.core.credential import make_credential
from attest.core.ek import (
    EkCertificateUntrusted,
    ek_certificate_matches,
    ek_public_hash,
    verify_ek_certificate,
)
from attest.core.ek_template import check_ek_template
from attest.core.errors import AttestationError
from attest.core.freshness import FUTURE_TOLERANCE
from attest.core.identity import (
    ActivationFailed,
    AkMismatch,
    EkMismatch,
    check_ak_attributes,
)
from attest.core.tpm_structs import parse_tpm2b_public
from attest.service import faultpoints
from attest.service.context import AttestContext, NodeState
from attest.service.models import EnrollmentRow, NodeRow, StateEventRow
from attest.service.notify.event import NodeStateChanged


class UnknownNodeClass(AttestationError):
    check = "enroll.node_class"
    status = 422
    hint = "Create the appraisal policy first: umec policy set CLASS FILE.yaml"


class NodeNotFound(AttestationError):
    check = "node.unknown"
    status = 404
    hint = "Enrol the node first (POST /attest/v1/nodes); `umec agent` does this on start."


class NoPendingActivation(AttestationError):
    check = "activate.no_challenge"
    status = 409
    hint = "Enrol again to get a fresh credential challenge, then activate it promptly."


class TooManyActivationFailures(AttestationError):
    check = "activate.locked"
    status = 423
    hint = ("Too many wrong proofs for this enrolment; it is void. Enrol again from the node "
            "itself (umec agent does this); other enrolments of the name are not affected.")


class EkAlreadyBound(AttestationError):
    check = "enroll.ek_in_use"
    status = 409
    hint = ("One TPM is one machine with one name. To give it a new name run "
            "`umec nodes rename OLD NEW`; if the old node is gone, `umec nodes remove OLD`.")


class NodeNameTaken(AttestationError):
    check = "node.name_taken"
    status = 409
    hint = "Choose another name, or remove the node that has it first (umec nodes remove NAME)."


@dataclass(frozen=True)
class EnrollRequest:
    name: str
    ek_public: bytes
    ak_public: bytes
    ek_certificate: bytes | None = None
    node_class: str | None = None


@dataclass(frozen=True)
class CredentialChallenge:
    enrollment_id: str
    credential_blob: bytes
    encrypted_secret: bytes
    expires_in: float


def _check_ek_trust(ctx: AttestContext, req: EnrollRequest, ek_hash: str) -> None:
    if ek_hash in ctx.config.ek_allowlist:
        return  # operator-approved EK: a certificate is not required
    if req.ek_certificate is None:
        raise EkCertificateUntrusted(
            f"no EK certificate sent and EK sha256:{ek_hash} is not in the allowlist")
    cert = verify_ek_certificate(req.ek_certificate, ctx.config.ek_trust_anchors,
                                 ctx.config.ek_intermediates, now=ctx.now())
    ek_certificate_matches(cert, parse_tpm2b_public(req.ek_public).public_key())


_NODE_BINDING = select(NodeRow.ek_hash, NodeRow.ak_public).where(NodeRow.name == bindparam("n"))
_NAME_OF_EK = select(NodeRow.name).where(NodeRow.ek_hash == bindparam("h"))


def check_binding(db: Session | Connection, name: str, ek_hash: str, ak_public: bytes) -> None:
    """Refuse (EK, AK) for ``name`` if the name or the EK is already bound otherwise."""
    bound = db.execute(_NODE_BINDING, {"n": name}).first()
    if bound is not None:
        # The name is bound to its EK for ever, and to its AK.
        if bound.ek_hash != ek_hash:
            raise EkMismatch(f"node {name!r} is bound to EK sha256:{bound.ek_hash}, "
                             f"not sha256:{ek_hash}")
        if bound.ak_public != ak_public:
            raise AkMismatch(f"node {name!r} already activated a different AK")
        return
    other = db.execute(_NAME_OF_EK, {"h": ek_hash}).scalar()
    if other is not None:
        raise EkAlreadyBound(f"this TPM (EK sha256:{ek_hash}) is already node {other!r}; "
                             f"it cannot also be {name!r}")


def enroll(ctx: AttestContext, req: EnrollRequest) -> CredentialChallenge:
    ek = parse_tpm2b_public(req.ek_public)
    check_ek_template(ek)  # one key, one TPM2B_PUBLIC: every non-key field is the TCG template's
    ak = parse_tpm2b_public(req.ak_public)
    check_ak_attributes(ak)
    ek_hash = ek_public_hash(req.ek_public)
    _check_ek_trust(ctx, req, ek_hash)
    node_class = req.node_class or ctx.config.default_node_class
    now = ctx.now()
    secret = os.urandom(32)
    blob, enc_secret = make_credential(ek, ak.name(), secret)
    faultpoints.reached("enroll.challenge_made")
    enrollment_id = os.urandom(16).hex()
    with ctx.sessions.begin() as session:
        try:
            ctx.policy_for(session, node_class)
        except LookupError:
            raise UnknownNodeClass(f"no appraisal policy for node class {node_class!r}") from None
        check_binding(session, req.name, ek_hash, req.ak_public)
        session.add(EnrollmentRow(
            id=enrollment_id, name=req.name, node_class=node_class, ek_public=req.ek_public,
            ek_hash=ek_hash, ek_certificate=req.ek_certificate, ak_public=req.ak_public,
            secret_hash=hashlib.sha256(secret).digest(), failed_proofs=0, created_at=now,
            expires_at=now + timedelta(seconds=ctx.config.activation_ttl_seconds)))
    return CredentialChallenge(enrollment_id, blob, enc_secret, ctx.config.activation_ttl_seconds)


def _pending(ctx: AttestContext, session: Session, name: str,
             enrollment_id: str) -> EnrollmentRow:
    pending = session.get(EnrollmentRow, enrollment_id, with_for_update=True)
    if pending is None or pending.name != name:
        raise NoPendingActivation(f"node {name!r} has no credential challenge {enrollment_id!r}")
    if pending.failed_proofs >= ctx.config.max_failed_activations:
        raise TooManyActivationFailures(f"{pending.failed_proofs} wrong proofs for enrolment "
                                        f"{enrollment_id}")
    now = ctx.now()
    if pending.expires_at <= now:
        raise NoPendingActivation(f"credential challenge {enrollment_id} of node {name!r} "
                                  f"expired at {pending.expires_at.isoformat()}")
    if pending.expires_at > _latest_expiry(ctx, now):
        raise NoPendingActivation(f"credential challenge {enrollment_id} of node {name!r} "
                                  f"expires at {pending.expires_at.isoformat()}, further ahead "
                                  f"than its lifetime allows (the server's clock was stepped "
                                  f"back since)")
    return pending


def _latest_expiry(ctx: AttestContext, now: datetime) -> datetime:
    """The latest expiry an enrolment made up to ``now`` can have; later ones are a clock step
    (a time in the future is invalid, never extra fresh)."""
    return now + timedelta(seconds=ctx.config.activation_ttl_seconds) + FUTURE_TOLERANCE


def _first_epoch(session: Session, name: str) -> int:
    """A new row's trust epoch: above every epoch the name ever had, so that revocations of
    an earlier node of that name never cover the new one's tokens. Each increment of an epoch
    comes with an event and events are kept, so one more than the name's event count is."""
    count = session.scalar(select(func.count()).select_from(StateEventRow)
                           .where(StateEventRow.node == name))
    return int(count or 0) + 1


def _bind(ctx: AttestContext, session: Session, pending: EnrollmentRow) -> str:
    """Store the proven binding (or find it already stored) and spend the enrolment."""
    check_binding(session, pending.name, pending.ek_hash, pending.ak_public)
    node = session.get(NodeRow, pending.name, with_for_update=True)
    if node is None:
        now = ctx.now()
        node = NodeRow(name=pending.name, node_class=pending.node_class,
                       ek_public=pending.ek_public, ek_hash=pending.ek_hash,
                       ek_certificate=pending.ek_certificate, ak_public=pending.ak_public,
                       state=NodeState.ENROLLED, created_at=now, activated_at=now,
                       state_changed_at=now, trust_epoch=_first_epoch(session, pending.name))
        session.add(node)
    session.delete(pending)
    return node.state


def activate(ctx: AttestContext, name: str, enrollment_id: str, proof: bytes) -> str:
    """Bind ``name`` to the enrolment's EK and AK if ``proof`` is that enrolment's secret."""
    try:
        with ctx.sessions.begin() as session:
            pending = _pending(ctx, session, name, enrollment_id)
            if hmac.compare_digest(hashlib.sha256(proof).digest(), pending.secret_hash):
                faultpoints.reached("activate.proof_checked")
                return _bind(ctx, session, pending)
            # Only this enrolment's counter is committed; no node, binding or state is touched.
            pending.failed_proofs += 1
            attempts = pending.failed_proofs
    except IntegrityError:
        # Another activation bound the name or the EK first: name what it bound.
        with ctx.sessions() as session:
            row = session.get(EnrollmentRow, enrollment_id)
            if row is not None:
                check_binding(session, name, row.ek_hash, row.ak_public)
        raise NodeNameTaken(f"node {name!r} or its EK was bound by a concurrent activation") \
            from None
    raise ActivationFailed(f"wrong proof for node {name!r} (attempt {attempts} on enrolment "
                           f"{enrollment_id})")


def _retire(ctx: AttestContext, session: Session, name: str,
            reason: str) -> tuple[NodeRow, NodeStateChanged]:
    """Take ``name`` out of service: its challenges are void (counter + 1), its pending
    enrolments go, its trust period ends (epoch + 1) and
    an event says why (a node that was trusted loses its tokens through the listeners, and its
    k8s node is tainted)."""
    node = session.get(NodeRow, name, with_for_update=True)
    if node is None:
        raise NodeNotFound(f"no node named {name!r}")
    node.challenge_seq += 1  # a rename back within a nonce's lifetime finds it void
    session.execute(delete(EnrollmentRow).where(EnrollmentRow.name == name))
    node.trust_epoch += 1
    event = ctx.record_change(session, name, node.state, NodeState.REMOVED, reason,
                              ["operator.removed"], ctx.now(), node.trust_epoch)
    return node, event


def remove(ctx: AttestContext, name: str) -> None:
    """An operator forgets a node (e.g. its TPM was replaced); it must enrol again."""
    with ctx.sessions.begin() as session:
        node, event = _retire(ctx, session, name, "removed by an operator")
        session.delete(node)
    ctx.publish([event])


def rename(ctx: AttestContext, old: str, new: str) -> None:
    """An operator gives a bound node (its TPM and clock baseline) a new name. The new name
    starts ``enrolled``: it is trusted after its first passing quote under that name."""
    with ctx.sessions.begin() as session:
        if session.get(NodeRow, new) is not None:
            raise NodeNameTaken(f"a node named {new!r} already exists")
        _, event = _retire(ctx, session, old, f"renamed to {new!r} by an operator")
        session.execute(delete(EnrollmentRow).where(EnrollmentRow.name == new))
        now = ctx.now()
        # Tokens and revocations name the node, so epochs count per name: the new name starts
        # above every epoch it ever had, like a new node (the old name's period just ended).
        epoch = _first_epoch(session, new)
        session.flush()
        session.execute(update(NodeRow).where(NodeRow.name == old).values(
            name=new, state=NodeState.ENROLLED, state_changed_at=now, last_pass_at=None,
            acked_at=None, trust_epoch=epoch))
    ctx.publish([event])


def prune_enrollments(ctx: AttestContext) -> int:
    """Expired credential challenges are deleted (they can no longer be activated)."""
    now = ctx.now()
    with ctx.engine.begin() as db:
        done = db.execute(delete(EnrollmentRow).where(
            (EnrollmentRow.expires_at <= now)
            | (EnrollmentRow.expires_at > _latest_expiry(ctx, now))))
    return int(done.rowcount)


def load_pem_bundle(data: bytes) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Split a PEM bundle into trust anchors (self-signed roots) and intermediates."""
    anchors: list[x509.Certificate] = []
    intermediates: list[x509.Certificate] = []
    for cert in x509.load_pem_x509_certificates(data):
        (anchors if cert.issuer == cert.subject else intermediates).append(cert)
    return anchors, intermediates
