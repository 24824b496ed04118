"""Keyless legacy ``.sig`` layers exactly as ``cosign sign`` (no ``--key``) writes them, made
with a :class:`tests.support.mini_sigstore.MiniSigstore`'s CA and Rekor.

cosign (``pkg/cosign/bundle``, ``pkg/oci/static``) puts on the simple-signing layer:

- ``dev.cosignproject.cosign/signature``: base64 of the ECDSA P-256/SHA-256 (ASN.1) signature
  over the payload bytes, made with an ephemeral key;
- ``dev.sigstore.cosign/certificate``: the Fulcio leaf for that key, PEM;
- ``dev.sigstore.cosign/chain``: the intermediate then the root, PEM, concatenated;
- ``dev.sigstore.cosign/bundle``: Go's ``json.Marshal`` of ``RekorBundle{SignedEntryTimestamp
  []byte; Payload{Body any "body"; IntegratedTime int64 "integratedTime"; LogIndex int64
  "logIndex"; LogID string "logID"}}``: compact, fields in declaration order; ``body`` is the
  base64 of Rekor's canonical hashedrekord entry, the SET Rekor's ECDSA signature over the
  RFC 8785 JSON of the four payload fields.

Every part can be swapped for the negative tests: another CA, a Rekor key that is not the one
named by ``logID``, a moved validity window, other issuer extensions, no EKU.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import char

from admission.core.cosign import (
    CERTIFICATE_ANNOTATION,
    CHAIN_ANNOTATION,
    REKOR_BUNDLE_ANNOTATION,
    SIGNATURE_ANNOTATION,
    SignatureLayer,
    go_json,
    simple_signing_payload,
)
from tests.support.mini_sigstore import (
    EPOCH,
    OID_ISSUER_V1,
    OID_ISSUER_V2,
    CertificateAuthority,
    MiniSigstore,
    TransparencyLog,
    hashedrekord_body,
)

__all__ = ["KeylessSignature", "issue_leaf", "pem", "sign_keyless"]

OID_USERNAME = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def issue_leaf(ca: CertificateAuthority, key: ec.EllipticCurvePublicKey, *, identity: str,
               issuer_v1: str | None, issuer_v2: str | None, not_before: datetime,
               not_after: datetime,
               eku: Sequence[ObjectIdentifier] | None = (ExtendedKeyUsageOID.CODE_SIGNING,)
               ) -> x509.Certificate:
    """A Fulcio-shaped leaf: empty subject, critical SAN (email; URI when it has ``://``;
    the Fulcio ``otherName`` username when it starts with ``user:``), the issuer extensions
    asked for (None leaves one out), EKU ``eku``."""
    general: x509.GeneralName
    if identity.startswith("user:"):
        general = x509.OtherName(OID_USERNAME,
                                 der_encoder.encode(char.UTF8String(identity[5:])))
    elif "://" in identity:
        general = x509.UniformResourceIdentifier(identity)
    else:
        general = x509.RFC822Name(identity)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([]))
               .issuer_name(ca.intermediate.subject)
               .public_key(key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                            False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False)
               .add_extension(x509.SubjectAlternativeName([general]), critical=True))
    if issuer_v1 is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(OID_ISSUER_V1, issuer_v1.encode()), critical=False)
    if issuer_v2 is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(
            OID_ISSUER_V2, der_encoder.encode(char.UTF8String(issuer_v2))), critical=False)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


@dataclass
class KeylessSignature:
    """One keyless signature's parts; :meth:`layer` assembles them as cosign does."""

    payload: bytes
    signature: bytes
    leaf: x509.Certificate
    chain: list[x509.Certificate]
    body: bytes                     # the logged hashedrekord entry (canonical JSON)
    integrated_time: int
    log_index: int
    log_id: str
    set_signature: bytes
    extra: dict[str, str] = field(default_factory=dict)

    def bundle_annotation(self) -> str:
        return go_json({"SignedEntryTimestamp": _b64(self.set_signature),
                        "Payload": {"body": _b64(self.body),
                                    "integratedTime": self.integrated_time,
                                    "logIndex": self.log_index, "logID": self.log_id}})

    def annotations(self) -> dict[str, str]:
        notes = {SIGNATURE_ANNOTATION: _b64(self.signature),
                 CERTIFICATE_ANNOTATION: pem(self.leaf),
                 CHAIN_ANNOTATION: pem(*self.chain),
                 REKOR_BUNDLE_ANNOTATION: self.bundle_annotation()}
        notes.update(self.extra)
        return notes

    def layer(self, **replace: str | None) -> SignatureLayer:
        """The layer; ``replace`` maps annotation names to new values (None drops one)."""
        notes = self.annotations()
        for name, value in replace.items():
            if value is None:
                notes.pop(name, None)
            else:
                notes[name] = value
        return SignatureLayer(self.payload, notes)


def sign_set(key: ec.EllipticCurvePrivateKey, body: bytes, integrated_time: int,
             log_id: str, log_index: int) -> bytes:
    """Rekor's signed entry timestamp over the RFC 8785 JSON of the bundle payload."""
    promise = rfc8785.dumps({"body": _b64(body), "integratedTime": integrated_time,
                             "logID": log_id, "logIndex": log_index})
    return key.sign(promise, ec.ECDSA(hashes.SHA256()))


def sign_keyless(mini: MiniSigstore, reference: str, digest: str, *, identity: str,
                 issuer: str, signed_at: datetime = EPOCH, not_before: datetime | None = None,
                 lifetime: timedelta = timedelta(minutes=10),
                 ca: CertificateAuthority | None = None, tlog: TransparencyLog | None = None,
                 set_key: ec.EllipticCurvePrivateKey | None = None,
                 issuer_v1: str | bool | None = True, issuer_v2: str | bool | None = True,
                 eku: Sequence[ObjectIdentifier] | None = (ExtendedKeyUsageOID.CODE_SIGNING,),
                 payload: bytes | None = None) -> KeylessSignature:
    """``cosign sign`` keyless of ``reference`` (a docker-reference) at ``digest``: an
    ephemeral key, a leaf from ``ca`` (default the mini CA), the payload signature, the
    hashedrekord entry appended to ``tlog`` at ``signed_at`` and its SET (by ``set_key``,
    default the log's own key). ``issuer_v1``/``issuer_v2``: True writes ``issuer``, a
    string writes that, None leaves the extension out."""
    ca, tlog = ca or mini.ca, tlog or mini.tlog
    payload = payload if payload is not None else simple_signing_payload(reference, digest)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or signed_at - timedelta(minutes=1)
    v1 = issuer if issuer_v1 is True else (issuer_v1 or None)
    v2 = issuer if issuer_v2 is True else (issuer_v2 or None)
    leaf = issue_leaf(ca, key.public_key(), identity=identity, issuer_v1=v1, issuer_v2=v2,
                      not_before=start, not_after=start + lifetime, eku=eku)
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    body = hashedrekord_body(leaf, signature, hashlib.sha256(payload).digest())
    index = tlog.append(body)
    log_id = tlog.log_id.hex()
    when = int(signed_at.timestamp())
    return KeylessSignature(payload, signature, leaf, [ca.intermediate, ca.root], body, when,
                            index, log_id, sign_set(set_key or tlog.key, body, when, log_id,
                                                    index))
