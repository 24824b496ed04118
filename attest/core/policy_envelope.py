"""Signed appraisal policies: a DSSE envelope around the policy YAML (pure: bytes in, verdict out).

The envelope (DSSE v1, https://github.com/secure-systems-lab/dsse)::

    {"payloadType": "application/vnd.umec.policy+yaml",
     "payload": base64(<the policy YAML, with its `name` (the node class) and `version`>),
     "signatures": [{"keyid": "<RFC 7638 JWK thumbprint of the signer>", "sig": base64(...)}]}

Each signature is over ``PAE = "DSSEv1" SP len(type) SP type SP len(body) SP body`` (ECDSA P-256
or RSA PKCS#1 v1.5 with SHA-256, or Ed25519), so the payload type is signed too. The node class
and the version live *inside* the signed payload: a policy signed for one class cannot be
applied to another, nor replayed at a version it was not signed for.

Verification (:func:`verify_policy_envelope`) follows python-tuf's rules for thresholds and
versions:

1. the envelope parses within bounds and names our payload type (``policy.envelope``);
2. signatures are counted per **distinct trusted key id**: a signature whose keyid is unknown is
   ignored, two signatures by one key count once, a signature with an empty keyid counts for
   whichever trusted key it verifies under. At least ``threshold`` distinct keys must verify.
   When fewer do, the refusal says why: a signature that claims a trusted key but does not
   verify means the envelope was altered (``policy.signature``); no trusted key at all means a
   wrong signer (``policy.signer``); some but too few is ``policy.threshold``;
3. the payload is a valid policy with a ``version`` (``policy.version``);
4. the version is strictly greater than the one already applied for that class
   (``policy.rollback``; equal is refused too: one version, one content).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from attest.core.errors import AttestationError
from attest.core.policy import AppraisalPolicy, PolicyInvalid
from keys import PrivateKey, PublicKey
from keys.jwk import key_thumbprint

PAYLOAD_TYPE = "application/vnd.umec.policy+yaml"
MAX_ENVELOPE_BYTES = 1 << 20
MAX_SIGNATURES = 16
_URL_TO_STD = str.maketrans("-_", "+/")


class PolicyEnvelopeError(AttestationError):
    """Base of the signed-policy checks."""

    check = "policy.envelope"
    status = 400
    hint = ("Pass the DSSE envelope `umec policy sign` wrote (payloadType "
            f"{PAYLOAD_TYPE}), unmodified.")


class PolicyEnvelopeMalformed(PolicyEnvelopeError):
    check = "policy.envelope"


class PolicySignatureInvalid(PolicyEnvelopeError):
    check = "policy.signature"
    status = 403
    hint = ("A signature by a configured signer does not verify: the envelope was altered "
            "after signing. Re-sign the reviewed policy (umec policy sign).")


class PolicySignerUnknown(PolicyEnvelopeError):
    check = "policy.signer"
    status = 403
    hint = ("Sign with a key whose public half is in UMEC_POLICY_SIGNERS "
            "(umec policy sign --key ...).")


class PolicyBelowThreshold(PolicyEnvelopeError):
    check = "policy.threshold"
    status = 403
    hint = ("More distinct signers must sign (umec policy sign --key OTHER ENVELOPE adds a "
            "signature); UMEC_POLICY_THRESHOLD says how many.")


class PolicyVersionInvalid(PolicyEnvelopeError):
    check = "policy.version"
    hint = "A signed policy needs `version: N` (a positive integer) and a valid document."


class PolicyRollback(PolicyEnvelopeError):
    check = "policy.rollback"
    status = 409
    hint = ("Versions only increase: raise `version` above the applied one (umec policy "
            "history CLASS), re-sign, and apply again; to go back, use umec policy rollback.")


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class PolicyEnvelope:
    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...]


@dataclass(frozen=True)
class VerifiedPolicy:
    """A policy whose envelope met the threshold; ``signers`` are the counted key ids."""

    policy: AppraisalPolicy
    document: str
    version: int
    signers: tuple[str, ...]
    digest: str


def key_id(key: PrivateKey | PublicKey) -> str:
    """A signer's key id: the RFC 7638 thumbprint of its public JWK (format-independent)."""
    return key_thumbprint(key)


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding (lengths in bytes, ASCII decimal)."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def payload_digest(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data)


def _verifies(key: PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def envelope_json(envelope: PolicyEnvelope) -> bytes:
    doc = {"payloadType": envelope.payload_type,
           "payload": base64.b64encode(envelope.payload).decode(),
           "signatures": [{"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()}
                          for s in envelope.signatures]}
    return (json.dumps(doc, indent=2) + "\n").encode()


def sign_policy(document: bytes, keys: Sequence[PrivateKey]) -> bytes:
    """A new envelope around ``document`` (checked to be a versioned policy), one signature
    per key."""
    _versioned(document)
    envelope = PolicyEnvelope(PAYLOAD_TYPE, document, ())
    return envelope_json(add_signatures(envelope, keys))


def add_signatures(envelope: PolicyEnvelope, keys: Sequence[PrivateKey]) -> PolicyEnvelope:
    """The envelope with one more signature per key (a key that already signed is replaced)."""
    message = pae(envelope.payload_type, envelope.payload)
    new = [Signature(key_id(k), _sign(k, message)) for k in keys]
    ids = {s.keyid for s in new}
    kept = tuple(s for s in envelope.signatures if s.keyid not in ids)
    return PolicyEnvelope(envelope.payload_type, envelope.payload, kept + tuple(new))


def _b64(value: object, what: str) -> bytes:
    """Standard or URL-safe base64 (DSSE allows either), padded, nothing else."""
    if not isinstance(value, str):
        raise PolicyEnvelopeMalformed(f"envelope {what} is not a string")
    text = value if ("+" in value or "/" in value) else value.translate(_URL_TO_STD)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PolicyEnvelopeMalformed(f"envelope {what} is not base64") from None


def _signature(index: int, item: object) -> Signature:
    if not isinstance(item, dict):
        raise PolicyEnvelopeMalformed(f"signature {index} is not an object")
    keyid = item.get("keyid", "")
    if not isinstance(keyid, str) or len(keyid) > 128:
        raise PolicyEnvelopeMalformed(f"signature {index}: keyid is not a short string")
    return Signature(keyid, _b64(item.get("sig"), f"signature {index}"))


def _json_object(raw: bytes) -> dict[str, object]:
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise PolicyEnvelopeMalformed(f"envelope of {len(raw)} bytes exceeds "
                                      f"{MAX_ENVELOPE_BYTES}")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise PolicyEnvelopeMalformed("the envelope is not JSON") from None
    if not isinstance(doc, dict):
        raise PolicyEnvelopeMalformed("the envelope is not a JSON object")
    return doc


def parse_envelope(raw: bytes) -> PolicyEnvelope:
    """A DSSE envelope of a policy, within bounds; signatures are not checked here."""
    doc = _json_object(raw)
    payload_type, signatures = doc.get("payloadType"), doc.get("signatures")
    if payload_type != PAYLOAD_TYPE:
        raise PolicyEnvelopeMalformed(f"payloadType {str(payload_type)[:80]!r} is not "
                                      f"{PAYLOAD_TYPE}")
    if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES:
        raise PolicyEnvelopeMalformed(f"the envelope needs a list of at most {MAX_SIGNATURES} "
                                      "signatures")
    sigs = tuple(_signature(i, s) for i, s in enumerate(signatures))
    return PolicyEnvelope(PAYLOAD_TYPE, _b64(doc.get("payload"), "payload"), sigs)


def is_envelope(raw: bytes) -> bool:
    """Whether ``raw`` looks like a DSSE envelope (a JSON object with payloadType) rather than
    a YAML policy: decides which path `umec policy set` takes, never whether it is trusted."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and "payloadType" in doc


def count_signers(envelope: PolicyEnvelope,
                  trusted: Mapping[str, PublicKey]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(distinct trusted key ids with a valid signature, trusted key ids whose claimed
    signature does not verify). Unknown key ids are ignored; duplicates count once."""
    message = pae(envelope.payload_type, envelope.payload)
    valid: set[str] = set()
    bad: list[str] = []
    for sig in envelope.signatures:
        if sig.keyid:
            key = trusted.get(sig.keyid)
            if key is None:
                continue  # an unknown signer neither counts nor refuses
            if _verifies(key, sig.sig, message):
                valid.add(sig.keyid)
            else:
                bad.append(sig.keyid)
        else:
            valid.update(kid for kid, key in trusted.items()
                         if _verifies(key, sig.sig, message))
    return frozenset(valid), tuple(bad)


def check_threshold(envelope: PolicyEnvelope, trusted: Mapping[str, PublicKey],
                    threshold: int) -> frozenset[str]:
    """The counted signers, or the refusal that names why there are too few."""
    valid, bad = count_signers(envelope, trusted)
    if len(valid) >= threshold:
        return valid
    if bad:
        raise PolicySignatureInvalid(f"the signature of key {bad[0]} does not verify over the "
                                     "envelope's payload")
    if not valid:
        claimed = sorted({s.keyid or "(no keyid)" for s in envelope.signatures})
        raise PolicySignerUnknown(f"signed by {claimed or 'nobody'}; none of the "
                                  f"{len(trusted)} configured policy signer(s)")
    raise PolicyBelowThreshold(f"{len(valid)} distinct configured signer(s) signed; "
                               f"{threshold} required")


def _versioned(payload: bytes) -> tuple[AppraisalPolicy, str, int]:
    try:
        document = payload.decode("utf-8")
        policy = AppraisalPolicy.from_yaml(document)
    except (UnicodeDecodeError, PolicyInvalid) as exc:
        raise PolicyVersionInvalid(f"the signed payload is not a valid policy: {exc}") from None
    if policy.version is None:
        raise PolicyVersionInvalid(f"policy {policy.name!r} has no version")
    return policy, document, policy.version


def check_version(name: str, version: int, applied: int | None) -> None:
    """python-tuf's rule: a new version must be greater than the applied one."""
    if applied is not None and version <= applied:
        raise PolicyRollback(f"policy {name!r} version {version} is not above the applied "
                             f"version {applied}")


def verify_policy_envelope(raw: bytes, trusted: Mapping[str, PublicKey], threshold: int,
                           applied_version: int | None = None) -> VerifiedPolicy:
    """Steps 1-4 of the module doc; raises the first failing check."""
    envelope = parse_envelope(raw)
    signers = check_threshold(envelope, trusted, threshold)
    policy, document, version = _versioned(envelope.payload)
    check_version(policy.name, version, applied_version)
    return VerifiedPolicy(policy, document, version, tuple(sorted(signers)),
                          payload_digest(envelope.payload))


def trusted_keys(keys: Sequence[PublicKey]) -> dict[str, PublicKey]:
    """Signer keys by key id: the same key given twice is one signer."""
    return {key_id(k): k for k in keys}
