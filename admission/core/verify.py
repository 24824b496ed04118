"""Pure verification of image signatures: cosign legacy layers and Sigstore bundles -> results.

Nothing here fetches anything; the flows in :mod:`admission.signing.verify` hand in the bytes.
Thresholds and required signers are the policy's job: this module reports, per key, which
signatures are valid for *exactly* the image digest asked about, and why the others are not.

Legacy ``.sig`` layer against one key (:func:`verify_legacy`), fatal at the first failure:

1. The signature over the payload bytes under the key (:class:`SignatureInvalid`). Until it
   verifies, nothing in the payload is evidence of anything, so it is checked first.
   Algorithms as cosign: ECDSA P-256 SHA-256 (DER), RSA PKCS#1 v1.5 SHA-256, Ed25519.
2. The payload parses as simple-signing (:class:`SignatureMalformed`).
3. ``critical.type`` is ``cosign container image signature`` (:class:`PayloadTypeInvalid`).
4. ``critical.image.docker-manifest-digest`` equals the image digest
   (:class:`PayloadDigestMismatch`): this is what stops a valid signature copied to another
   image's ``.sig`` tag, and a tag moved to another digest after signing.
5. ``critical.identity.docker-reference`` names the image's repository, tag and digest ignored,
   Docker Hub spellings unified (:class:`IdentityMismatch`): a signature for ``team-a/app``
   does not vouch for the same bytes pushed as ``team-b/app``.

Rekor material in layer annotations (``dev.sigstore.cosign/bundle``) is not required for
key-based verification and is ignored, as ``cosign verify --insecure-ignore-tlog`` does.
Keyless legacy layers (a Fulcio certificate and a Rekor SET in the annotations) are verified by
:mod:`admission.core.keyless`. Step 5 is what ``repository`` asks for; the webhook passes None
and lets each policy's ``signedIdentity`` judge :attr:`VerifiedSignature.reference` instead
(:mod:`admission.core.identity`).

Bundle v0.3 (:func:`parse_bundle`, :func:`verify_bundle_with_key`):

1. Media type is bundle v0.3 (either spelling), content is a ``messageSignature``.
2. ``messageDigest`` is SHA2_256 and equals the image digest (:class:`PayloadDigestMismatch`).
3. Key-based: the signature under the key over the manifest, i.e. over its SHA-256 for ECDSA and
   RSA (pre-hashed) and over the manifest bytes for Ed25519 (which cannot pre-hash).
4. Keyless (:func:`verify_bundle_keyless`): sigstore-python's ``Verifier`` with a ``TrustedRoot``
   supplied by the operator (offline: no TUF, no Rekor queries): certificate chain to a Fulcio
   CA of the root, SCT, transparency-log inclusion and the signature, then the certificate's
   identity and issuer against the configured ones (:class:`KeylessVerificationFailed`).
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
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from admission.core.cosign import (
    BUNDLE_V03_MEDIA_TYPE,
    MAX_BUNDLE_BYTES,
    PAYLOAD_TYPE,
    SignatureLayer,
    SignatureMalformed,
    SimpleSigning,
    parse_simple_signing,
)
from admission.core.errors import AdmissionError
from keys import PublicKey

__all__ = [
    "IdentityMismatch", "KeylessIdentity", "KeylessVerificationFailed", "NoSignatures",
    "ParsedBundle", "PayloadDigestMismatch", "PayloadTypeInvalid", "SignatureInvalid",
    "SignatureMalformed", "VerifiedSignature", "check_payload", "parse_bundle", "repository_of",
    "verify_bundle_keyless", "verify_bundle_with_key", "verify_bundle_with_keys",
    "verify_legacy", "verify_legacy_with_keys", "verify_raw",
]

BUNDLE_MEDIA_TYPES = frozenset({BUNDLE_V03_MEDIA_TYPE,
                                "application/vnd.dev.sigstore.bundle+json;version=0.3"})
_DOCKER_HUB = ("index.docker.io", "registry-1.docker.io", "docker.io")


class SignatureInvalid(AdmissionError):
    check = "signature.invalid"
    hint = ("No trusted key produced this signature: sign the image with a key the policy "
            "trusts (`umec sign --key`), or add the signer's public key to the policy.")


class PayloadDigestMismatch(AdmissionError):
    check = "signature.digest"
    hint = ("The signature is for another image digest (copied signature, or the tag moved "
            "after signing): sign this exact digest.")


class PayloadTypeInvalid(AdmissionError):
    check = "signature.type"
    hint = "The signed payload is not a cosign container image signature (an attestation?)."


class IdentityMismatch(AdmissionError):
    check = "signature.identity"
    hint = ("The signature names another repository: sign the image under the repository it "
            "is pulled from.")


class NoSignatures(AdmissionError):
    check = "signature.missing"
    hint = "The image has no signatures: sign it with `umec sign IMAGE --key KEY` in CI."


class KeylessVerificationFailed(AdmissionError):
    check = "signature.keyless"
    hint = ("The keyless bundle did not verify against the configured trust root and "
            "identities: check the trusted_root.json, the signer identity and the issuer.")


@dataclass(frozen=True)
class VerifiedSignature:
    """A valid signature by ``key_id`` for exactly ``digest``."""

    digest: str
    key_id: str
    kind: Literal["legacy", "bundle"]
    identity: str | None = None  # docker-reference (legacy) or certificate SAN (keyless)
    # The docker-reference a legacy payload names (the policy's signedIdentity judges it);
    # None for bundles, which sign the manifest digest and name no image.
    reference: str | None = None


def repository_of(reference: str) -> str:
    """``registry/repo[:tag][@digest]`` -> ``registry/repo`` with Docker Hub spellings unified."""
    name = reference.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name = name[:colon]
    head, _, rest = name.partition("/")
    if head in _DOCKER_HUB and rest:
        return "docker.io/" + (rest if "/" in rest else "library/" + rest)
    return name.lower() if "/" not in name else head.lower() + "/" + rest


def verify_raw(key: object, signature: bytes, data: bytes, prehashed: bool = False) -> bool:
    """cosign's algorithm for the key type; ``prehashed`` means ``data`` is a SHA-256 digest."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data,
                       ec.ECDSA(Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(),
                       Prehashed(hashes.SHA256()) if prehashed else hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey) and not prehashed:
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def check_payload(raw: bytes, image_digest: str) -> SimpleSigning:
    """Steps 2-4 for a payload whose signature verified: simple-signing, type, digest."""
    payload = parse_simple_signing(raw)
    if payload.type != PAYLOAD_TYPE:
        raise PayloadTypeInvalid(f"payload type is {payload.type!r}")
    if not compare_digest(payload.manifest_digest.encode(), image_digest.encode()):
        raise PayloadDigestMismatch(f"signature is for {payload.manifest_digest}, "
                                    f"the image is {image_digest}")
    return payload


def verify_legacy(layer: SignatureLayer, key: PublicKey, *, image_digest: str,
                  repository: str | None) -> SimpleSigning:
    """Steps 1-5 of the module doc for one layer and one key; returns the payload."""
    if not verify_raw(key, layer.signature, layer.payload):
        raise SignatureInvalid(f"signature layer {layer.digest} does not verify")
    payload = check_payload(layer.payload, image_digest)
    if repository is not None and repository_of(payload.docker_reference) != \
            repository_of(repository):
        raise IdentityMismatch(f"signature names {payload.docker_reference!r}, "
                               f"the image is in {repository!r}")
    return payload


def verify_legacy_with_keys(layer: SignatureLayer, keys: Mapping[str, PublicKey], *,
                            image_digest: str, repository: str | None
                            ) -> tuple[list[VerifiedSignature], list[AdmissionError]]:
    """Every key for which ``layer`` is a valid signature of ``image_digest``, and the failures.

    A layer no key signed yields one :class:`SignatureInvalid`, not one error per key.
    """
    results: list[VerifiedSignature] = []
    errors: list[AdmissionError] = []
    try:
        layer.signature  # noqa: B018 -- malformed base64 is one error, not one per key
    except SignatureMalformed as exc:
        return [], [exc]
    for key_id, key in keys.items():
        try:
            payload = verify_legacy(layer, key, image_digest=image_digest, repository=repository)
        except SignatureInvalid:
            continue
        except AdmissionError as exc:
            errors.append(type(exc)(f"key {key_id}: {exc.detail}"))
            continue
        results.append(VerifiedSignature(image_digest, key_id, "legacy",
                                         payload.docker_reference, payload.docker_reference))
    if not results and not errors:
        errors.append(SignatureInvalid(f"signature layer {layer.digest} verifies with none of "
                                       f"the trusted keys ({', '.join(sorted(keys)) or 'none'})"))
    return results, errors


# --- bundles ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ParsedBundle:
    media_type: str
    key_hint: str | None
    certificate: bytes | None       # DER leaf for keyless bundles
    message_digest: bytes
    signature: bytes
    raw: bytes


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureMalformed(f"bundle {what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureMalformed(f"bundle {what} is not base64") from None


def parse_bundle(raw: bytes) -> ParsedBundle:
    """Step 1 (and the structure of step 2) of the bundle checks."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise SignatureMalformed(f"bundle of {len(raw)} bytes is too large")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SignatureMalformed(f"bundle is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("mediaType") not in BUNDLE_MEDIA_TYPES:
        media = doc.get("mediaType") if isinstance(doc, dict) else None
        raise SignatureMalformed(f"not a Sigstore bundle v0.3 (mediaType {media!r})")
    material, message = doc.get("verificationMaterial"), doc.get("messageSignature")
    if not isinstance(material, dict) or not isinstance(message, dict):
        raise SignatureMalformed("bundle lacks verificationMaterial or messageSignature")
    digest = message.get("messageDigest")
    if not isinstance(digest, dict) or digest.get("algorithm") != "SHA2_256":
        raise SignatureMalformed("bundle messageDigest is not SHA2_256")
    hint = material.get("publicKey", {}).get("hint") if isinstance(
        material.get("publicKey"), dict) else None
    certificate = None
    if isinstance(material.get("certificate"), dict):
        certificate = _b64(material["certificate"].get("rawBytes"), "certificate")
    if hint is None and certificate is None:
        raise SignatureMalformed("bundle has neither publicKey nor certificate")
    if hint is not None and not isinstance(hint, str):
        raise SignatureMalformed("bundle publicKey.hint is not a string")
    return ParsedBundle(str(doc["mediaType"]), hint, certificate,
                        _b64(digest.get("digest"), "messageDigest"),
                        _b64(message.get("signature"), "signature"), raw)


def _check_bundle_digest(bundle: ParsedBundle, image_digest: str) -> None:
    if not compare_digest(b"sha256:" + bundle.message_digest.hex().encode(),
                          image_digest.encode()):
        raise PayloadDigestMismatch(f"bundle signs sha256:{bundle.message_digest.hex()}, "
                                    f"the image is {image_digest}")


def verify_bundle_with_key(bundle: ParsedBundle, key: PublicKey, *, image_digest: str,
                           manifest: bytes | None = None) -> None:
    """Steps 2-3 for one key; ``manifest`` (the image manifest bytes) is needed for Ed25519."""
    _check_bundle_digest(bundle, image_digest)
    if isinstance(key, ed25519.Ed25519PublicKey):
        if manifest is None or hashlib.sha256(manifest).digest() != bundle.message_digest:
            raise SignatureInvalid("Ed25519 bundle check needs the manifest bytes of the digest")
        ok = verify_raw(key, bundle.signature, manifest)
    else:
        ok = verify_raw(key, bundle.signature, bundle.message_digest, prehashed=True)
    if not ok:
        raise SignatureInvalid(f"bundle signature does not verify (hint {bundle.key_hint})")


def verify_bundle_with_keys(bundle: ParsedBundle, keys: Mapping[str, PublicKey], *,
                            image_digest: str, manifest: bytes | None = None
                            ) -> tuple[list[VerifiedSignature], list[AdmissionError]]:
    try:
        _check_bundle_digest(bundle, image_digest)
    except PayloadDigestMismatch as exc:
        return [], [exc]
    results: list[VerifiedSignature] = []
    for key_id, key in keys.items():
        try:
            verify_bundle_with_key(bundle, key, image_digest=image_digest, manifest=manifest)
        except AdmissionError:
            continue
        results.append(VerifiedSignature(image_digest, key_id, "bundle"))
    if results:
        return results, []
    return [], [SignatureInvalid(f"bundle (hint {bundle.key_hint}) verifies with none of the "
                                 f"trusted keys ({', '.join(sorted(keys)) or 'none'})")]


@dataclass(frozen=True)
class KeylessIdentity:
    """A keyless signer: certificate SAN and OIDC issuer, each exact (policies) or a regular
    expression searched for as cosign's ``--certificate-identity-regexp`` and
    ``--certificate-oidc-issuer-regexp`` do (Go's ``regexp.MatchString``: unanchored, so a
    pattern that must match the whole value says ``^...$``)."""

    identity: str
    issuer: str
    identity_regexp: bool = False
    issuer_regexp: bool = False

    def __post_init__(self) -> None:
        # The issuer is a URL (or a pattern of one): no whitespace, so the key id below splits
        # back unambiguously.
        if not self.identity or not self.issuer or any(
                c.isspace() or not c.isprintable() for c in self.issuer):
            raise ValueError(f"keyless identity needs a subject and an issuer URL without "
                             f"whitespace, got {self.identity!r} / {self.issuer!r}")
        for flag, pattern in ((self.identity_regexp, self.identity),
                              (self.issuer_regexp, self.issuer)):
            if flag:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"{pattern!r} is not a regular expression: {exc}") \
                        from None

    def matches(self, subjects: Sequence[str], issuer: str) -> str | None:
        """The first of a certificate's ``subjects`` this identity accepts when its OIDC issuer
        is ``issuer``; None when the issuer or every subject is refused."""
        if self.issuer_regexp:
            if re.search(self.issuer, issuer) is None:
                return None
        elif self.issuer != issuer:
            return None
        for subject in subjects:
            if (re.search(self.identity, subject) is not None if self.identity_regexp
                    else subject == self.identity):
                return subject
        return None

    @property
    def key_id(self) -> str:
        """Subject and issuer (the issuer is part of it, so one subject name from two issuers
        is two signers): what a message names. Not what a policy counts: see
        :meth:`signer_id`. A pattern is marked ``~``, which no issuer URL starts with."""
        issuer = "~" + self.issuer if self.issuer_regexp else self.issuer
        identity = "~" + self.identity if self.identity_regexp else self.identity
        return f"keyless:{issuer} {identity}"

    def signer_id(self, root_digest: str) -> str:
        """The signer id a policy counts: ``keyless:<root digest> <issuer> <subject>``.

        Scoped to the trust root that verified the certificate: a tenant's policy with its own
        root (its own CA) and another policy's issuer and subject mints another id, which that
        other policy never counts. The digest and the issuer hold no whitespace, so the id
        splits back unambiguously."""
        return "keyless:" + root_digest + " " + self.key_id.removeprefix("keyless:")


def _integrated_time(bundle_raw: bytes) -> datetime:
    """When the log says the signature existed (bound by the entry's signed timestamp, which the
    Verifier checks); the time every trust-root member must have been valid at."""
    entries = json.loads(bundle_raw)["verificationMaterial"]["tlogEntries"]
    if not entries:
        raise ValueError("bundle has no transparency-log entry")
    return datetime.fromtimestamp(int(entries[0]["integratedTime"]), UTC)


def _root_valid_at(root: dict[str, Any], at: datetime) -> dict[str, Any]:
    """The trusted root without the CAs and log keys whose ``validFor`` excludes ``at``.

    sigstore-python compares ``validFor.start`` with the wall clock only and never reads
    ``end``: a CA or log key retired (``end`` set) after a compromise would still be trusted
    for signatures made after its retirement. sigstore-go skips such members; so do we.
    """
    def valid(member: dict[str, Any]) -> bool:
        window = member.get("validFor") or member.get("publicKey", {}).get("validFor") or {}
        start, end = window.get("start"), window.get("end")
        if start is not None and at < _rfc3339(start):
            return False
        return not (end is not None and at > _rfc3339(end))
    filtered = dict(root)
    for key in ("certificateAuthorities", "tlogs", "ctlogs", "timestampAuthorities"):
        if key in root:
            filtered[key] = [m for m in root[key] if valid(m)]
    return filtered


def _rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class _PatternPolicy:
    """sigstore-python's ``VerificationPolicy`` for an identity with a regular expression:
    the issuer and subjects read as for legacy signatures
    (:func:`admission.core.keyless.certificate_identity`), matched by
    :meth:`KeylessIdentity.matches`; ``subject`` is the one it accepted."""

    def __init__(self, wanted: KeylessIdentity) -> None:
        self.wanted = wanted
        self.subject: str | None = None

    def verify(self, cert: x509.Certificate) -> None:
        from sigstore.errors import VerificationError

        from admission.core.keyless import certificate_identity
        try:
            subjects, issuer = certificate_identity(cert)
        except AdmissionError as exc:
            raise VerificationError(exc.detail) from None
        self.subject = self.wanted.matches(subjects, issuer)
        if self.subject is None:
            raise VerificationError(f"certificate of {', '.join(subjects) or 'no subject'} "
                                    f"issued by {issuer} does not match")


def verify_bundle_keyless(bundle_raw: bytes, manifest: bytes, *, image_digest: str,
                          trusted_root: bytes, identities: Sequence[KeylessIdentity]
                          ) -> VerifiedSignature:
    """Step 4: a Fulcio/Rekor bundle over ``manifest`` against an operator-supplied root.

    sigstore-python is imported here, not at module import, so the core stays cheap to import.
    """
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle, TrustedRoot
    from sigstore.verify import Verifier
    from sigstore.verify.policy import Identity
    from sigstore_models.trustroot.v1 import TrustedRoot as TrustedRootDocument

    if "sha256:" + hashlib.sha256(manifest).hexdigest() != image_digest:
        raise PayloadDigestMismatch(f"manifest bytes are not {image_digest}")
    try:
        bundle = Bundle.from_json(bundle_raw)
        root_doc = _root_valid_at(json.loads(trusted_root), _integrated_time(bundle_raw))
        root = TrustedRoot(TrustedRootDocument.from_json(json.dumps(root_doc)))
        verifier = Verifier(trusted_root=root)
    except (SigstoreError, ValueError, TypeError, KeyError) as exc:
        raise KeylessVerificationFailed(f"bundle or trust root unreadable: {exc}") from None
    failures: list[str] = []
    for wanted in identities:
        policy = _PatternPolicy(wanted) if wanted.identity_regexp or wanted.issuer_regexp \
            else Identity(identity=wanted.identity, issuer=wanted.issuer)
        try:
            verifier.verify_artifact(manifest, bundle, policy)
        except (SigstoreError, ValueError, x509.ExtensionNotFound) as exc:
            # ExtensionNotFound: sigstore-python reads EKU/keyUsage unguarded; a leaf without
            # them is simply not a code-signing certificate.
            failures.append(f"{wanted.identity} ({wanted.issuer}): {exc}")
            continue
        subject = policy.subject if isinstance(policy, _PatternPolicy) else wanted.identity
        return VerifiedSignature(image_digest, wanted.key_id, "bundle", subject)
    raise KeylessVerificationFailed("; ".join(failures) or "no keyless identities configured")
