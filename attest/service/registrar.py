"""Registrar: enrolment and credential activation (protocol steps 1 and 2 of DESIGN).

Enrol: the node proves nothing yet; we check that its EK is one we trust (certificate chain to a
manufacturer CA, or an operator-approved EK hash) and that its AK has the attributes of a real
attestation key, then answer with MakeCredential(EK, name(AK), secret). Only the TPM holding that
EK can recover the secret, and only if the AK with that name is loaded in it.

Activate: the node returns the secret. Only then is the EK↔AK binding stored, and it is immutable
for the node name. A wrong proof is counted and refused; it never deletes, resets or downgrades
an existing node (Keylime's registrar had exactly that flaw).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509

from attest.core.credential import make_credential
from attest.core.ek import (
    EkCertificateUntrusted,
    ek_certificate_matches,
    ek_public_hash,
    verify_ek_certificate,
)
from attest.core.errors import AttestationError
from attest.core.identity import (
    ActivationFailed,
    AkMismatch,
    EkMismatch,
    check_ak_attributes,
)
from attest.core.tpm_structs import parse_tpm2b_public
from attest.service.context import AttestContext, NodeState
from attest.service.models import NodeRow


class UnknownNodeClass(AttestationError):
    check = "enroll.node_class"
    hint = "Create the appraisal policy first: umec policy set CLASS FILE.yaml"


class NodeNotFound(AttestationError):
    check = "node.unknown"
    hint = "Enrol the node first (POST /attest/v1/nodes); `umec agent` does this on start."


class NoPendingActivation(AttestationError):
    check = "activate.no_challenge"
    hint = "Enrol again to get a fresh credential challenge, then activate it promptly."


class TooManyActivationFailures(AttestationError):
    check = "activate.locked"
    hint = "Too many wrong activation proofs; an operator must inspect and remove the node."


@dataclass(frozen=True)
class EnrollRequest:
    name: str
    ek_public: bytes
    ak_public: bytes
    ek_certificate: bytes | None = None
    node_class: str | None = None


@dataclass(frozen=True)
class CredentialChallenge:
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


def enroll(ctx: AttestContext, req: EnrollRequest) -> CredentialChallenge:
    ek = parse_tpm2b_public(req.ek_public)
    ak = parse_tpm2b_public(req.ak_public)
    check_ak_attributes(ak)
    ek_hash = ek_public_hash(req.ek_public)
    _check_ek_trust(ctx, req, ek_hash)
    node_class = req.node_class or ctx.config.default_node_class
    now = ctx.now()
    secret = os.urandom(32)
    with ctx.sessions.begin() as session:
        try:
            ctx.policy_for(session, node_class)
        except LookupError:
            raise UnknownNodeClass(f"no appraisal policy for node class {node_class!r}") from None
        node = session.get(NodeRow, req.name, with_for_update=True)
        if node is not None:
            # The name is bound to its first EK for ever; an activated node also keeps its AK.
            if node.ek_hash != ek_hash:
                raise EkMismatch(f"node {req.name!r} is bound to EK sha256:{node.ek_hash}, "
                                 f"not sha256:{ek_hash}")
            if node.ak_public is not None and node.ak_public != req.ak_public:
                raise AkMismatch(f"node {req.name!r} already activated a different AK")
            if node.failed_activations >= ctx.config.max_failed_activations:
                raise TooManyActivationFailures(f"{node.failed_activations} wrong proofs")
        else:
            node = NodeRow(name=req.name, node_class=node_class, ek_public=req.ek_public,
                           ek_hash=ek_hash, ek_certificate=req.ek_certificate,
                           state=NodeState.ENROLLED, created_at=now, state_changed_at=now,
                           failed_activations=0)
            session.add(node)
        blob, enc_secret = make_credential(ek, ak.name(), secret)
        node.pending_ak_public = req.ak_public
        node.pending_secret_hash = hashlib.sha256(secret).digest()
        node.pending_expires_at = now + timedelta(seconds=ctx.config.activation_ttl_seconds)
    return CredentialChallenge(blob, enc_secret, ctx.config.activation_ttl_seconds)


def activate(ctx: AttestContext, name: str, proof: bytes) -> str:
    """Store the EK↔AK binding if ``proof`` is the secret of the outstanding challenge."""
    now = ctx.now()
    wrong_proof: ActivationFailed | None = None
    with ctx.sessions.begin() as session:
        node = session.get(NodeRow, name, with_for_update=True)
        if node is None:
            raise NodeNotFound(f"no node named {name!r}")
        if node.failed_activations >= ctx.config.max_failed_activations:
            raise TooManyActivationFailures(f"{node.failed_activations} wrong proofs")
        if (node.pending_secret_hash is None or node.pending_ak_public is None
                or node.pending_expires_at is None or node.pending_expires_at <= now):
            raise NoPendingActivation(f"node {name!r} has no unexpired credential challenge")
        if hmac.compare_digest(hashlib.sha256(proof).digest(), node.pending_secret_hash):
            if node.ak_public is None:
                node.ak_public = node.pending_ak_public
                node.activated_at = now
            node.pending_ak_public = node.pending_secret_hash = node.pending_expires_at = None
            node.failed_activations = 0
            return node.state
        # Only the counter is committed; the node's binding and state stay as they were.
        node.failed_activations += 1
        wrong_proof = ActivationFailed(f"wrong proof for node {name!r} "
                                       f"(attempt {node.failed_activations})")
    raise wrong_proof


def load_pem_bundle(data: bytes) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Split a PEM bundle into trust anchors (self-signed roots) and intermediates."""
    anchors: list[x509.Certificate] = []
    intermediates: list[x509.Certificate] = []
    for cert in x509.load_pem_x509_certificates(data):
        (anchors if cert.issuer == cert.subject else intermediates).append(cert)
    return anchors, intermediates
