"""A self-consistent Sigstore "mini-instance" for offline keyless tests.

sigstore-python's ``Verifier.verify_artifact`` (4.x) checks, for a bundle v0.3 carrying a
``messageSignature`` and a Rekor v1 ``hashedrekord`` 0.0.1 entry, in this order:

0. A verified time: the log entry's ``integratedTime``, trusted because an inclusion promise
   (signed entry timestamp, SET) binds it -- checked in step 4. No TSA is used here.
1. The leaf certificate chains, at that time, to a certificate of a ``certificateAuthorities``
   entry of the trusted root (every certificate listed there is a trust anchor), under
   cryptography's WebPKI profile with the EKU check relaxed: v3, ECDSA P-256/SHA-256, a critical
   ``basicConstraints`` CA with ``keyCertSign`` on the issuers, a SAN on the leaf (critical, as
   Fulcio's leaves have an empty subject), AKI/SKI.
2. Exactly one embedded SCT (``1.3.6.1.4.1.11129.2.4.2``) that verifies under a ``ctlogs`` key
   over the RFC 6962 ``precert_entry`` signed data: SHA-256 of the issuer's SPKI, then the
   leaf's TBS without the SCT extension (cryptography's ``tbs_precertificate_bytes``).
3. ``keyUsage`` digitalSignature, EKU codeSigning, then the policy: the OIDC issuer extension
   ``1.3.6.1.4.1.57264.1.1`` (raw UTF-8 bytes; ``.1.8`` is the DER UTF8String successor, also
   emitted) and the identity among the SAN email/URI values.
4. The entry: RFC 6962 Merkle inclusion proof of ``canonicalizedBody`` up to ``rootHash``; a
   checkpoint (signed note) over that root, whose signature line carries the first 4 bytes of
   the log ID; the SET over the RFC 8785 JSON of body, integratedTime, logID (hex), logIndex.
   The log ID is SHA-256 of the log key's DER SPKI, and keys are looked up by it.
5. ``integratedTime`` inside the leaf's validity window.
6. The ECDSA signature over the SHA-256 digest of the input; ``messageDigest`` equal to it.
7. The entry body equal to the hashedrekord built from leaf (PEM, base64), signature, digest.

:class:`MiniSigstore` produces each of these from keys it owns, and every part can be swapped
for a foreign one (another CA, CT log or Rekor, a shifted validity window) to build the
negative cases. cryptography builds all X.509; the two things it cannot build are written here
and kept small: the TLS encoding of the SCT list (RFC 6962 section 3.3, ``struct``), and the
DER wrappers (OCTET STRING around it, UTF8String for ``.1.8``), encoded with pyasn1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import char, univ

__all__ = ["BUNDLE_MEDIA_TYPE", "TRUSTED_ROOT_MEDIA_TYPE", "CTLog", "CertificateAuthority",
           "MiniSigstore", "TransparencyLog", "key_id"]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
OID_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
OID_SCT_LIST = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
# A fixed epoch keeps the tests independent of the clock: sigstore-python checks the chain at
# the log's integrated time, and only needs trusted-root validity periods to have started.
EPOCH = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """RFC 6962 key ID (SHA-256 of the DER SPKI): the CT log ID and the Rekor log ID."""
    return hashlib.sha256(_spki(key)).digest()


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ca_cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
             issuer_key: ec.EllipticCurvePrivateKey, not_before: datetime,
             not_after: datetime) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "minitrust.test"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.subject if issuer else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None
                                                    else 0), critical=True)
               .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                            False, False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if issuer is not None:
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class CertificateAuthority:
    """A Fulcio-like CA: a root and the intermediate that issues the leaves."""

    name: str
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    key: ec.EllipticCurvePrivateKey          # the intermediate's, signs the leaves
    intermediate: x509.Certificate

    @classmethod
    def create(cls, name: str, not_before: datetime = EPOCH - timedelta(days=365),
               not_after: datetime = EPOCH + timedelta(days=3650)) -> CertificateAuthority:
        root_key, key = _new_key(), _new_key()
        root = _ca_cert(f"{name} root", root_key, None, root_key, not_before, not_after)
        inter = _ca_cert(f"{name} intermediate", key, root, root_key, not_before, not_after)
        return cls(name, root_key, root, key, inter)

    def trusted_root_entry(self) -> dict[str, object]:
        """``certificateAuthorities`` element: the chain leaf-to-root, as Sigstore lists it."""
        return {"subject": {"organization": "minitrust.test", "commonName": self.name},
                "uri": f"https://{self.name}.fulcio.test",
                "certChain": {"certificates": [
                    {"rawBytes": _b64(c.public_bytes(serialization.Encoding.DER))}
                    for c in (self.intermediate, self.root)]},
                "validFor": {"start": _rfc3339(self.root.not_valid_before_utc)}}


def _log_instance(url: str, key: ec.EllipticCurvePrivateKey,
                  start: datetime) -> dict[str, object]:
    """``tlogs``/``ctlogs`` element (TransparencyLogInstance)."""
    public = key.public_key()
    return {"baseUrl": url, "hashAlgorithm": "SHA2_256",
            "publicKey": {"rawBytes": _b64(_spki(public)),
                          "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                          "validFor": {"start": _rfc3339(start)}},
            "logId": {"keyId": _b64(key_id(public))}}


@dataclass(frozen=True)
class CTLog:
    """A certificate-transparency log reduced to its key: it signs SCTs."""

    name: str
    key: ec.EllipticCurvePrivateKey = field(default_factory=_new_key)

    def sct_extension(self, precert_tbs: bytes, issuer: ec.EllipticCurvePublicKey,
                      at: datetime) -> x509.UnrecognizedExtension:
        """The SignedCertificateTimestampList extension holding one v1 SCT for a precert.

        RFC 6962 3.2 signed data: version(0) u8, signature_type certificate_timestamp(0) u8,
        timestamp u64 ms, entry_type precert_entry(1) u16, issuer_key_hash[32],
        TBSCertificate opaque<1..2^24-1>, extensions opaque<0..2^16-1> (empty).
        3.3 SCT: version, log_id[32], timestamp, extensions, then digitally-signed:
        hash sha256(4), signature ecdsa(3), opaque<0..2^16-1>. The list: opaque SCTs, each
        opaque<1..2^16-1>, in an opaque<1..2^16-1>; the extension value is that as a DER
        OCTET STRING. Whole seconds, because sigstore-python rebuilds the ms via a float.
        """
        millis = int(at.timestamp()) * 1000
        signed = (struct.pack("!BBQH", 0, 0, millis, 1) + key_id(issuer)
                  + struct.pack("!I", len(precert_tbs))[1:] + precert_tbs + struct.pack("!H", 0))
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (struct.pack("!B32sQH", 0, key_id(self.key.public_key()), millis, 0)
               + struct.pack("!BBH", 4, 3, len(signature)) + signature)
        listed = struct.pack("!H", len(sct)) + sct
        tls = struct.pack("!H", len(listed)) + listed
        return x509.UnrecognizedExtension(OID_SCT_LIST,
                                          der_encoder.encode(univ.OctetString(tls)))


def _leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """RFC 6962 2.1: the largest power of two smaller than ``n``."""
    return 1 << ((n - 1).bit_length() - 1)


def _root(hashes_: Sequence[bytes]) -> bytes:
    if len(hashes_) == 1:
        return hashes_[0]
    k = _split(len(hashes_))
    return _node_hash(_root(hashes_[:k]), _root(hashes_[k:]))


def _path(index: int, hashes_: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 2.1.1 PATH(m, D[n]), leaf-side first: the order sigstore-python chains."""
    if len(hashes_) == 1:
        return []
    k = _split(len(hashes_))
    if index < k:
        return [*_path(index, hashes_[:k]), _root(hashes_[k:])]
    return [*_path(index - k, hashes_[k:]), _root(hashes_[:k])]


@dataclass
class TransparencyLog:
    """A Rekor v1-like log: an RFC 6962 tree of entry bodies, checkpoints, SETs."""

    name: str
    key: ec.EllipticCurvePrivateKey = field(default_factory=_new_key)
    leaves: list[bytes] = field(default_factory=list)

    @property
    def log_id(self) -> bytes:
        return key_id(self.key.public_key())

    def append(self, body: bytes) -> int:
        self.leaves.append(_leaf_hash(body))
        return len(self.leaves) - 1

    def checkpoint(self, size: int) -> str:
        """A signed note: origin, size, base64 root; then ``— name base64(keyhint4 || sig)``."""
        note = f"{self.name} - 42\n{size}\n{_b64(_root(self.leaves[:size]))}\n"
        signature = self.key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        return f"{note}\n\u2014 {self.name} {_b64(self.log_id[:4] + signature)}\n"

    def entry(self, body: bytes, integrated_time: int, *, trailing: int = 2) -> dict[str, object]:
        """Log ``body`` (then ``trailing`` other entries) and return the bundle's tlog entry."""
        index = self.append(body)
        for n in range(trailing):
            self.append(f"{self.name} filler after {index}+{n}".encode())
        size = len(self.leaves)
        promise = rfc8785.dumps({"body": _b64(body), "integratedTime": integrated_time,
                                 "logID": self.log_id.hex(), "logIndex": index})
        return {
            "logIndex": str(index),
            "logId": {"keyId": _b64(self.log_id)},
            "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
            "integratedTime": str(integrated_time),
            "inclusionPromise": {"signedEntryTimestamp": _b64(
                self.key.sign(promise, ec.ECDSA(hashes.SHA256())))},
            "inclusionProof": {"logIndex": str(index), "rootHash": _b64(
                _root(self.leaves[:size])), "treeSize": str(size),
                "hashes": [_b64(h) for h in _path(index, self.leaves[:size])],
                "checkpoint": {"envelope": self.checkpoint(size)}},
            "canonicalizedBody": _b64(body),
        }


def hashedrekord_body(leaf: x509.Certificate, signature: bytes, digest: bytes) -> bytes:
    """Rekor's canonical hashedrekord 0.0.1 body (RFC 8785 JSON)."""
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    return rfc8785.dumps({"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
        "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
        "signature": {"content": _b64(signature), "publicKey": {"content": _b64(pem)}}}})


@dataclass
class MiniSigstore:
    """One CA, one CT log, one Rekor; :meth:`trusted_root` lists exactly these."""

    ca: CertificateAuthority = field(default_factory=lambda: CertificateAuthority.create("mini"))
    ctlog: CTLog = field(default_factory=lambda: CTLog("ctfe.mini.test"))
    tlog: TransparencyLog = field(default_factory=lambda: TransparencyLog("rekor.mini.test"))

    def __post_init__(self) -> None:
        for n in range(5):  # earlier entries, so the inclusion proof has a real path
            self.tlog.append(f"earlier entry {n}".encode())

    def trusted_root(self) -> bytes:
        """``trusted_root.json`` (TrustedRoot v0.1 protobuf-JSON) for this instance."""
        start = self.ca.root.not_valid_before_utc
        return json.dumps({
            "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
            "tlogs": [_log_instance(f"https://{self.tlog.name}", self.tlog.key, start)],
            "certificateAuthorities": [self.ca.trusted_root_entry()],
            "ctlogs": [_log_instance(f"https://{self.ctlog.name}", self.ctlog.key, start)],
            "timestampAuthorities": [],
        }, indent=1).encode()

    def issue(self, key: ec.EllipticCurvePublicKey, *, identity: str, issuer: str,
              not_before: datetime, not_after: datetime, ca: CertificateAuthority | None = None,
              ctlog: CTLog | None = None,
              eku: Sequence[ObjectIdentifier] | None = (ExtendedKeyUsageOID.CODE_SIGNING,)
              ) -> x509.Certificate:
        """A Fulcio-shaped leaf: empty subject, critical SAN (email, or URI if it has ``://``),
        EKU ``eku`` (code signing; None leaves the extension out), both OIDC-issuer extensions,
        one embedded SCT."""
        ca, ctlog = ca or self.ca, ctlog or self.ctlog
        san: x509.GeneralName = (x509.UniformResourceIdentifier(identity) if "://" in identity
                                 else x509.RFC822Name(identity))
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
                   .add_extension(x509.SubjectAlternativeName([san]), critical=True)
                   .add_extension(x509.UnrecognizedExtension(OID_ISSUER_V1, issuer.encode()),
                                  critical=False)
                   .add_extension(x509.UnrecognizedExtension(
                       OID_ISSUER_V2, der_encoder.encode(char.UTF8String(issuer))),
                       critical=False))
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        # The precertificate is the same TBS without the SCT list; signing it once gives us
        # those exact bytes to log, and the final certificate appends the SCT extension.
        precert = builder.sign(ca.key, hashes.SHA256())
        sct = ctlog.sct_extension(precert.tbs_certificate_bytes, ca.key.public_key(), not_before)
        leaf = builder.add_extension(sct, critical=False).sign(ca.key, hashes.SHA256())
        assert leaf.tbs_precertificate_bytes == precert.tbs_certificate_bytes
        return leaf

    def sign(self, manifest: bytes, *, identity: str, issuer: str,
             signed_at: datetime = EPOCH, not_before: datetime | None = None,
             lifetime: timedelta = timedelta(minutes=10), ca: CertificateAuthority | None = None,
             ctlog: CTLog | None = None, tlog: TransparencyLog | None = None,
             eku: Sequence[ObjectIdentifier] | None = (ExtendedKeyUsageOID.CODE_SIGNING,)
             ) -> bytes:
        """Keyless-sign ``manifest`` as cosign does: an ephemeral key, a leaf for it, the
        signature over SHA-256(manifest), a hashedrekord entry logged at ``signed_at``; the
        result is a bundle v0.3 JSON. Pass ``ca``/``ctlog``/``tlog`` to use foreign ones, and
        ``not_before``/``lifetime`` to move the leaf's validity window, ``eku`` to change
        its extended key usage."""
        key = _new_key()
        start = not_before or signed_at - timedelta(minutes=1)
        leaf = self.issue(key.public_key(), identity=identity, issuer=issuer,
                          not_before=start, not_after=start + lifetime, ca=ca, ctlog=ctlog, eku=eku)
        digest = hashlib.sha256(manifest).digest()
        signature = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        entry = (tlog or self.tlog).entry(hashedrekord_body(leaf, signature, digest),
                                          int(signed_at.timestamp()))
        return json.dumps({
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(leaf.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [entry],
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": _b64(digest)},
                "signature": _b64(signature),
            },
        }, indent=1).encode()
