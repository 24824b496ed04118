"""Keyless legacy ``.sig`` signatures: a Fulcio certificate and a Rekor SET in layer annotations,
verified offline against an operator-supplied Sigstore trust root.

What ``cosign sign IMAGE`` (no ``--key``) writes on the signature layer (cosign
``pkg/oci/static``, ``pkg/cosign/bundle``), and what :func:`parse_keyless_material` reads:

- ``dev.cosignproject.cosign/signature``: base64 ECDSA signature over the simple-signing payload;
- ``dev.sigstore.cosign/certificate``: the Fulcio leaf, one PEM certificate;
- ``dev.sigstore.cosign/chain``: Fulcio's intermediate(s) then root, PEM (untrusted: only the
  trust root's CAs are anchors, the chain merely offers intermediates, as containers/image does);
- ``dev.sigstore.cosign/bundle``: the Rekor "SET" bundle, Go's ``cbundle.RekorBundle``:
  ``{"SignedEntryTimestamp": base64, "Payload": {"body": base64 of the Rekor entry JSON,
  "integratedTime": unix seconds, "logIndex": n, "logID": hex SHA-256 of the log's DER key}}``.
  Parsed strictly (exactly these fields, no duplicates, integers below 2**53), as
  containers/image's ``UntrustedRekorSET`` does.

:func:`verify_legacy_keyless` for one layer and one keyless authority, fatal at the first failure,
every step with its own check id (``signature.keyless.*``):

1. ``malformed``: the annotations above are present and parse.
2. ``set``: the Rekor key named by ``logID`` is in the trust root, valid at ``integratedTime``,
   and its ECDSA signature (the SET) verifies over the RFC 8785 JSON of the four payload fields
   (cosign's ``VerifySET``). From here on ``integratedTime`` is a time Rekor vouches for.
3. ``tlog_entry``: the logged entry is this signature: ``hashedrekord`` (or the older ``rekord``)
   0.0.1, whose SHA-256 is the payload's, whose signature is the annotation's (bytes compared,
   not base64 text) and whose certificate is the leaf (DER compared): cosign's ``compareSigs``,
   ``comparePublicKey`` and ``bundleHash``.
4. ``validity``: the leaf was valid at ``integratedTime`` (cosign's ``CheckExpiry``).
5. ``chain``: the leaf chains, at ``integratedTime``, to a certificate of a Fulcio CA of the trust
   root whose ``validFor`` contains that time (cryptography's path builder, the profile
   sigstore-python uses), and its extended key usage includes code signing.
6. ``signature.invalid``: the signature verifies over the payload under the leaf's key.
7. The payload claims (:func:`admission.core.verify.check_payload`): simple-signing, type,
   ``docker-manifest-digest`` equal to the image digest.
8. ``identity``: a configured (issuer, subject) pair matches: the issuer from the Fulcio
   extension ``1.3.6.1.4.1.57264.1.8`` (DER UTF8String) or its predecessor ``.1.1`` (raw UTF-8;
   both present must agree), the subject among the SAN email, URI and Fulcio ``otherName``
   (``.1.7``) values. Exact, like containers/image and cosign's ``--certificate-identity``, or
   (``umec verify --certificate-identity-regexp``) a pattern, as cosign's ``-regexp`` flags.

Not checked: the certificate's embedded SCT. cosign checks it; containers/image does not, because
the SET already proves Rekor logged the certificate (see docs/decisions.md). Whether the signed
docker-reference names the image is the policy's ``signedIdentity``
(:mod:`admission.core.identity`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from hmac import compare_digest
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from admission.core.cosign import (
    CERTIFICATE_ANNOTATION,
    CHAIN_ANNOTATION,
    MAX_BUNDLE_BYTES,
    REKOR_BUNDLE_ANNOTATION,
    SignatureLayer,
    SignatureMalformed,
    go_b64decode,
)
from admission.core.errors import AdmissionError
from admission.core.verify import (
    KeylessIdentity,
    KeylessVerificationFailed,
    SignatureInvalid,
    VerifiedSignature,
    check_payload,
    verify_raw,
)

__all__ = [
    "CertificateUntrusted", "CertificateValidity", "KeylessAuthority", "KeylessIdentityMismatch",
    "KeylessMaterial", "KeylessMaterialMalformed", "KeylessTrustRoot", "RekorBundle",
    "RekorEntry", "RekorEntryMismatch", "RekorSetInvalid", "TrustRootInvalid",
    "certificate_identity", "der_utf8string", "parse_keyless_material", "parse_rekor_body",
    "parse_rekor_bundle", "parse_trusted_root", "verify_legacy_keyless", "verify_set",
]

OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OID_OTHERNAME_USERNAME = ObjectIdentifier("1.3.6.1.4.1.57264.1.7")
TRUSTED_ROOT_MEDIA_PREFIX = "application/vnd.dev.sigstore.trustedroot"
MAX_CHAIN_CERTIFICATES = 8
# JSON numbers the RFC 8785 canonicaliser (IEEE doubles) renders like json.dumps does.
_MAX_JSON_INT = 2**53
_HEX64 = re.compile(r"[0-9a-f]{64}")


class KeylessMaterialMalformed(KeylessVerificationFailed):
    check = "signature.keyless.malformed"
    hint = ("The keyless signature's certificate, chain or Rekor bundle annotation is missing "
            "or not in cosign's format; re-sign with cosign (keyless) or `umec sign`.")


class RekorSetInvalid(KeylessVerificationFailed):
    check = "signature.keyless.set"
    hint = ("The Rekor signed entry timestamp does not verify with a transparency-log key of the "
            "trust root: check the policy's trustedRoot (it must list the Rekor that logged it).")


class RekorEntryMismatch(KeylessVerificationFailed):
    check = "signature.keyless.tlog_entry"
    hint = ("The transparency-log entry in the bundle is for another signature, certificate or "
            "payload: the annotations were mixed from different signatures; re-sign the image.")


class CertificateValidity(KeylessVerificationFailed):
    check = "signature.keyless.validity"
    hint = ("The signing certificate was not valid when Rekor logged the signature: the "
            "signature was made with an expired or not-yet-valid certificate; re-sign.")


class CertificateUntrusted(KeylessVerificationFailed):
    check = "signature.keyless.chain"
    hint = ("The signing certificate does not chain to a Fulcio CA of the policy's trustedRoot "
            "(or is not for code signing): check that the root lists the CA that issued it.")


class KeylessIdentityMismatch(KeylessVerificationFailed):
    check = "signature.keyless.identity"
    hint = ("The certificate names another signer (subject or OIDC issuer) than the policy's "
            "keyless identities: add the signer's identity, or sign from the expected workflow.")


class TrustRootInvalid(AdmissionError):
    check = "keyless.trust_root"
    hint = ("The trusted_root.json is not a Sigstore TrustedRoot with Fulcio CAs and Rekor "
            "ECDSA keys: fetch it again (e.g. `sigstore trust-root`/TUF) and reference it.")


# --- the trust root -------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """``validFor``: a member of the trust root is trusted for times in [start, end]."""

    start: datetime | None = None
    end: datetime | None = None

    def contains(self, at: datetime) -> bool:
        return (self.start is None or self.start <= at) and (self.end is None or at <= self.end)


@dataclass(frozen=True)
class FulcioCA:
    certificates: tuple[x509.Certificate, ...]   # every one a trust anchor, as sigstore does
    valid: Window


@dataclass(frozen=True)
class RekorKey:
    log_id: str                                   # hex SHA-256 of the DER public key
    key: ec.EllipticCurvePublicKey
    valid: Window


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class KeylessTrustRoot:
    cas: tuple[FulcioCA, ...]
    logs: Mapping[str, RekorKey]                  # by hex log id
    raw: bytes                                    # the document, for sigstore-python (bundles)
    digest: str                                   # sha256 of ``raw``, for policy generations


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class KeylessAuthority:
    """What a policy's keyless authority hands the verifier: a root and the accepted signers."""

    root: KeylessTrustRoot
    identities: tuple[KeylessIdentity, ...]


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate JSON keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _json(raw: bytes | str, what: str, error: type[AdmissionError]) -> Any:
    try:
        return json.loads(raw, object_pairs_hook=_unique_object)
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} is not JSON: {exc}") from None


def _rfc3339(text: object, where: str) -> datetime:
    if not isinstance(text, str):
        raise TrustRootInvalid(f"{where} is not an RFC 3339 string")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TrustRootInvalid(f"{where} {text[:40]!r} is not an RFC 3339 time") from None
    if when.tzinfo is None:
        raise TrustRootInvalid(f"{where} {text[:40]!r} has no time zone")
    return when


def _window(member: Mapping[str, Any], where: str) -> Window:
    valid = member.get("validFor")
    if valid is None:
        return Window()
    if not isinstance(valid, dict):
        raise TrustRootInvalid(f"{where}.validFor is not an object")
    start, end = valid.get("start"), valid.get("end")
    return Window(None if start is None else _rfc3339(start, f"{where}.validFor.start"),
                  None if end is None else _rfc3339(end, f"{where}.validFor.end"))


def _raw_bytes(value: object, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise TrustRootInvalid(f"{where} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise TrustRootInvalid(f"{where} is not base64") from None


def _fulcio_ca(index: int, entry: object) -> FulcioCA:
    where = f"certificateAuthorities[{index}]"
    chain = entry.get("certChain") if isinstance(entry, dict) else None
    certs = chain.get("certificates") if isinstance(chain, dict) else None
    if not isinstance(entry, dict) or not isinstance(certs, list) or not certs \
            or len(certs) > MAX_CHAIN_CERTIFICATES:
        raise TrustRootInvalid(f"{where}.certChain.certificates is not a list of 1.."
                               f"{MAX_CHAIN_CERTIFICATES} certificates")
    parsed = []
    for n, cert in enumerate(certs):
        der = _raw_bytes(cert.get("rawBytes") if isinstance(cert, dict) else None,
                         f"{where}.certChain.certificates[{n}].rawBytes")
        try:
            parsed.append(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            raise TrustRootInvalid(f"{where}.certChain.certificates[{n}]: {exc}") from None
    return FulcioCA(tuple(parsed), _window(entry, where))


def _rekor_key(index: int, entry: object) -> RekorKey:
    where = f"tlogs[{index}]"
    public = entry.get("publicKey") if isinstance(entry, dict) else None
    if not isinstance(public, dict):
        raise TrustRootInvalid(f"{where}.publicKey is missing")
    der = _raw_bytes(public.get("rawBytes"), f"{where}.publicKey.rawBytes")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise TrustRootInvalid(f"{where}.publicKey: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TrustRootInvalid(f"{where}.publicKey is not an ECDSA key (cosign's SETs are "
                               f"ECDSA)")
    # cosign keys its Rekor keys by the SHA-256 of the DER key, whatever the file says.
    return RekorKey(hashlib.sha256(der).hexdigest(), key, _window(public, f"{where}.publicKey"))


def parse_trusted_root(raw: bytes) -> KeylessTrustRoot:
    """A Sigstore ``trusted_root.json``: its Fulcio CAs and Rekor (tlog) keys, with validity."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise TrustRootInvalid(f"trusted root of {len(raw)} bytes is too large")
    doc = _json(raw, "trusted root", TrustRootInvalid)
    media = doc.get("mediaType") if isinstance(doc, dict) else None
    if not isinstance(media, str) or not media.startswith(TRUSTED_ROOT_MEDIA_PREFIX):
        raise TrustRootInvalid(f"mediaType {str(media)[:80]!r} is not a Sigstore trusted root")
    cas, logs = doc.get("certificateAuthorities"), doc.get("tlogs")
    if not isinstance(cas, list) or not cas or not isinstance(logs, list) or not logs:
        raise TrustRootInvalid("the trusted root lists no certificateAuthorities or no tlogs")
    keys = [_rekor_key(i, entry) for i, entry in enumerate(logs)]
    return KeylessTrustRoot(tuple(_fulcio_ca(i, entry) for i, entry in enumerate(cas)),
                            {k.log_id: k for k in keys}, bytes(raw),
                            "sha256:" + hashlib.sha256(raw).hexdigest())


# --- the annotations ------------------------------------------------------------------------

@dataclass(frozen=True)
class RekorBundle:
    """The ``dev.sigstore.cosign/bundle`` annotation."""

    signed_entry_timestamp: bytes
    body: str                  # base64, exactly as logged and as the SET signs it
    integrated_time: int
    log_index: int
    log_id: str

    def canonical_payload(self) -> bytes:
        """RFC 8785 JSON of the payload (keys sorted; every value is ASCII or a safe integer,
        so this is also what Go's jsoncanonicalizer makes of cosign's ``json.Marshal``)."""
        return json.dumps({"body": self.body, "integratedTime": self.integrated_time,
                           "logID": self.log_id, "logIndex": self.log_index},
                          sort_keys=True, separators=(",", ":")).encode()

    @property
    def integrated_at(self) -> datetime:
        return datetime.fromtimestamp(self.integrated_time, UTC)


def _exact_fields(doc: object, fields: set[str], where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or set(doc) != fields:
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise KeylessMaterialMalformed(f"{where} must have exactly the fields "
                                       f"{sorted(fields)}, got {got}")
    return doc


def _safe_int(value: object, where: str) -> int:
    if type(value) is not int or not 0 <= value < _MAX_JSON_INT:
        raise KeylessMaterialMalformed(f"{where} is not an integer in 0..2^53")
    return value


def _b64_field(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise KeylessMaterialMalformed(f"{where} is not a base64 string")
    try:
        return go_b64decode(value)
    except ValueError:
        raise KeylessMaterialMalformed(f"{where} is not base64") from None


def parse_rekor_bundle(text: str) -> RekorBundle:
    """The Rekor SET bundle annotation, strictly (see the module doc)."""
    doc = _exact_fields(_json(text, "Rekor bundle", KeylessMaterialMalformed),
                        {"SignedEntryTimestamp", "Payload"}, "Rekor bundle")
    payload = _exact_fields(doc["Payload"], {"body", "integratedTime", "logIndex", "logID"},
                            "Rekor bundle Payload")
    body, log_id = payload["body"], payload["logID"]
    _b64_field(body, "Rekor bundle Payload.body")
    if not isinstance(log_id, str) or _HEX64.fullmatch(log_id) is None:
        raise KeylessMaterialMalformed("Rekor bundle Payload.logID is not 64 lowercase hex")
    assert isinstance(body, str)
    return RekorBundle(_b64_field(doc["SignedEntryTimestamp"], "Rekor bundle "
                                  "SignedEntryTimestamp"), body,
                       _safe_int(payload["integratedTime"], "Payload.integratedTime"),
                       _safe_int(payload["logIndex"], "Payload.logIndex"), log_id)


@dataclass(frozen=True)
class RekorEntry:
    """What verification needs from a logged ``hashedrekord``/``rekord`` 0.0.1 entry."""

    kind: str
    sha256: str                # hex digest of the signed data
    signature: bytes
    public_key: bytes          # the logged verification material (PEM bytes)


def _path(doc: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def parse_rekor_body(body: str) -> RekorEntry:
    """The Rekor entry the SET covers (base64 of its JSON)."""
    doc = _json(_b64_field(body, "Rekor entry body"), "Rekor entry body",
                KeylessMaterialMalformed)
    kind = _path(doc, "kind")
    if kind not in ("hashedrekord", "rekord") or _path(doc, "apiVersion") != "0.0.1":
        raise KeylessMaterialMalformed(f"Rekor entry is {str(kind)[:40]!r} "
                                       f"{str(_path(doc, 'apiVersion'))[:20]!r}, not a "
                                       f"hashedrekord or rekord 0.0.1")
    algorithm = _path(doc, "spec", "data", "hash", "algorithm")
    value = _path(doc, "spec", "data", "hash", "value")
    if algorithm != "sha256" or not isinstance(value, str) or _HEX64.fullmatch(value) is None:
        raise KeylessMaterialMalformed("Rekor entry data.hash is not a sha256 hex digest")
    assert isinstance(kind, str)
    return RekorEntry(kind, value,
                      _b64_field(_path(doc, "spec", "signature", "content"),
                                 "Rekor entry signature.content"),
                      _b64_field(_path(doc, "spec", "signature", "publicKey", "content"),
                                 "Rekor entry signature.publicKey.content"))


@dataclass(frozen=True)
class KeylessMaterial:
    """A keyless layer's parsed annotations."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    bundle: RekorBundle
    signature: bytes


def _pem_certificates(text: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(text.encode())
    except ValueError as exc:
        raise KeylessMaterialMalformed(f"{what} is not PEM certificates: {exc}") from None
    if len(certs) > MAX_CHAIN_CERTIFICATES:
        raise KeylessMaterialMalformed(f"{what} has {len(certs)} certificates "
                                       f"(limit {MAX_CHAIN_CERTIFICATES})")
    return certs


def parse_keyless_material(layer: SignatureLayer) -> KeylessMaterial:
    """Step 1: certificate (exactly one), chain (optional), Rekor bundle, signature."""
    notes = layer.annotations
    cert_text, bundle_text = notes.get(CERTIFICATE_ANNOTATION), notes.get(REKOR_BUNDLE_ANNOTATION)
    if not cert_text:
        raise KeylessMaterialMalformed(f"layer {layer.digest} has no {CERTIFICATE_ANNOTATION}")
    if not bundle_text:
        raise KeylessMaterialMalformed(f"layer {layer.digest} has no {REKOR_BUNDLE_ANNOTATION} "
                                       f"(an offline keyless check needs Rekor's SET)")
    leaf = _pem_certificates(cert_text, CERTIFICATE_ANNOTATION)
    if len(leaf) != 1:
        raise KeylessMaterialMalformed(f"{CERTIFICATE_ANNOTATION} holds {len(leaf)} "
                                       f"certificates, not one")
    chain_text = notes.get(CHAIN_ANNOTATION)
    chain = _pem_certificates(chain_text, CHAIN_ANNOTATION) if chain_text else []
    try:
        signature = layer.signature
    except SignatureMalformed as exc:
        raise KeylessMaterialMalformed(exc.detail) from None
    return KeylessMaterial(leaf[0], tuple(chain), parse_rekor_bundle(bundle_text), signature)


# --- the certificate ------------------------------------------------------------------------

def der_utf8string(data: bytes) -> str:
    """A DER UTF8String (tag 12, minimal definite length) -> text; ``ValueError`` otherwise."""
    if len(data) < 2 or data[0] != 0x0C:
        raise ValueError("not a DER UTF8String")
    length, offset = data[1], 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 3 or len(data) < 2 + size:
            raise ValueError("bad DER length")
        length, offset = int.from_bytes(data[2:2 + size], "big"), 2 + size
        if length < 0x80 or data[2] == 0:
            raise ValueError("non-minimal DER length")
    if len(data) != offset + length:
        raise ValueError("DER length does not match the data")
    return data[offset:].decode("utf-8")


def _extension_value(cert: x509.Certificate, oid: ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    return value.value if isinstance(value, x509.UnrecognizedExtension) else None


def _issuer(cert: x509.Certificate) -> str:
    v1, v2 = _extension_value(cert, OID_ISSUER_V1), _extension_value(cert, OID_ISSUER_V2)
    try:
        issuers = {der_utf8string(v2)} if v2 is not None else set()
        if v1 is not None:
            issuers.add(v1.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise KeylessMaterialMalformed(f"certificate OIDC issuer extension: {exc}") from None
    if len(issuers) != 1:
        raise KeylessMaterialMalformed("certificate has no Fulcio OIDC issuer extension"
                                       if not issuers else
                                       f"certificate's two issuer extensions disagree "
                                       f"({sorted(issuers)})")
    return issuers.pop()


def _subjects(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [*san.get_values_for_type(x509.RFC822Name),
             *san.get_values_for_type(x509.UniformResourceIdentifier)]
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id == OID_OTHERNAME_USERNAME:
            try:
                names.append(der_utf8string(other.value))
            except ValueError:
                raise KeylessMaterialMalformed("certificate otherName SAN is not a "
                                               "UTF8String") from None
    return names


def certificate_identity(cert: x509.Certificate) -> tuple[list[str], str]:
    """The certificate's subjects (SAN email, URI, Fulcio username) and its OIDC issuer."""
    return _subjects(cert), _issuer(cert)


# --- the steps ------------------------------------------------------------------------------

def verify_set(bundle: RekorBundle, root: KeylessTrustRoot) -> None:
    """Step 2: Rekor's signed entry timestamp, under the key ``logID`` names."""
    log = root.logs.get(bundle.log_id)
    if log is None:
        raise RekorSetInvalid(f"no transparency log of the trust root has log id "
                              f"{bundle.log_id[:16]}…")
    if not log.valid.contains(bundle.integrated_at):
        raise RekorSetInvalid(f"Rekor key {bundle.log_id[:16]}… was not valid at "
                              f"{bundle.integrated_at.isoformat()}")
    try:
        log.key.verify(bundle.signed_entry_timestamp, bundle.canonical_payload(),
                       ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise RekorSetInvalid(f"the signed entry timestamp does not verify under Rekor key "
                              f"{bundle.log_id[:16]}…") from None


def _check_entry(material: KeylessMaterial, payload: bytes) -> None:
    """Step 3."""
    entry = parse_rekor_body(material.bundle.body)
    if not compare_digest(entry.sha256, hashlib.sha256(payload).hexdigest()):
        raise RekorEntryMismatch(f"the {entry.kind} entry logs sha256:{entry.sha256[:16]}…, "
                                 f"not this payload")
    if not compare_digest(entry.signature, material.signature):
        raise RekorEntryMismatch(f"the {entry.kind} entry logs another signature")
    try:
        logged = x509.load_pem_x509_certificate(entry.public_key)
    except ValueError:
        raise RekorEntryMismatch(f"the {entry.kind} entry logs a key, not a certificate") \
            from None
    leaf = material.leaf.public_bytes(serialization.Encoding.DER)
    if not compare_digest(logged.public_bytes(serialization.Encoding.DER), leaf):
        raise RekorEntryMismatch(f"the {entry.kind} entry logs another certificate")


def _check_validity(leaf: x509.Certificate, at: datetime) -> None:
    """Step 4."""
    if not leaf.not_valid_before_utc <= at <= leaf.not_valid_after_utc:
        raise CertificateValidity(f"Rekor logged the signature at {at.isoformat()}, outside the "
                                  f"certificate's validity {leaf.not_valid_before_utc.isoformat()}"
                                  f" .. {leaf.not_valid_after_utc.isoformat()}")


_CA_POLICY = ExtensionPolicy.webpki_defaults_ca().may_be_present(
    x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None)
_EE_POLICY = ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None)


def _check_chain(material: KeylessMaterial, root: KeylessTrustRoot, at: datetime) -> None:
    """Step 5."""
    anchors = [c for ca in root.cas if ca.valid.contains(at) for c in ca.certificates]
    if not anchors:
        raise CertificateUntrusted(f"no Fulcio CA of the trust root was valid at "
                                   f"{at.isoformat()}")
    verifier = (PolicyBuilder().store(Store(anchors)).time(at)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_client_verifier())
    try:
        verifier.verify(material.leaf, list(material.chain))
    except VerificationError as exc:
        raise CertificateUntrusted(f"certificate does not chain to the trust root's Fulcio "
                                   f"CAs at {at.isoformat()}: {exc}") from None
    try:
        usages = list(material.leaf.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    if ExtendedKeyUsageOID.CODE_SIGNING not in usages:
        raise CertificateUntrusted("certificate is not for code signing (extended key usage)")


def _check_identity(leaf: x509.Certificate, identities: Sequence[KeylessIdentity]
                    ) -> tuple[KeylessIdentity, str]:
    """Step 8: the first identity that accepts the certificate, and the subject it matched."""
    subjects, issuer = certificate_identity(leaf)
    for wanted in identities:
        subject = wanted.matches(subjects, issuer)
        if subject is not None:
            return wanted, subject
    raise KeylessIdentityMismatch(f"certificate of {', '.join(subjects) or 'no subject'} "
                                  f"issued by {issuer} matches none of "
                                  f"{', '.join(i.key_id for i in identities) or 'no identities'}")


def verify_legacy_keyless(layer: SignatureLayer, authority: KeylessAuthority, *,
                          image_digest: str) -> VerifiedSignature:
    """Steps 1-8 of the module doc for one layer against one keyless authority."""
    material = parse_keyless_material(layer)
    verify_set(material.bundle, authority.root)
    _check_entry(material, layer.payload)
    at = material.bundle.integrated_at
    _check_validity(material.leaf, at)
    _check_chain(material, authority.root, at)
    if not verify_raw(material.leaf.public_key(), material.signature, layer.payload):
        raise SignatureInvalid(f"signature layer {layer.digest} does not verify under its "
                               f"certificate's key")
    payload = check_payload(layer.payload, image_digest)
    wanted, subject = _check_identity(material.leaf, authority.identities)
    return VerifiedSignature(image_digest, wanted.key_id, "legacy", subject,
                             payload.docker_reference)
