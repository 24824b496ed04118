"""Endorsement-key certificates: parse, validate against manufacturer CAs, bind to the EK public.

Pure: ``cryptography`` only, no tpm2-pytss, no clock (``now`` is passed in), no I/O.

:func:`verify_ek_certificate` runs these steps in order; each raises its own typed error:

1. **Parse** (:func:`load_ek_certificate`): DER or PEM. Some vendors' EK certificates are not
   strict DER (Nuvoton's issuer Name has a SET OF in non-canonical order; ``cryptography``'s Rust
   parser rejects it with ``InvalidSetOrdering``, Keylime issue #944). Keylime's answer
   (``cert_utils.x509_der_cert``) is to decode such bytes with pyasn1's lenient decoder and
   re-encode them as DER. We do the same when pyasn1 + pyasn1-modules are installed, but keep the
   original bytes: the issuer signed *those*, so step 4 verifies the leaf's signature over the
   original TBSCertificate bytes (re-encoding changes them). Without pyasn1 such a certificate is
   :class:`EkCertificateMalformed` and the operator can approve the EK by its hash instead
   (:func:`ek_public_hash`). No ASN.1 is hand-parsed here.
2. **Is it an EK certificate** (:class:`EkCertificateNotEk`): not a CA (basicConstraints cA must be
   false or absent per the TCG EK Credential Profile), an RSA or EC key, and if an extended key
   usage is present it must contain tcg-kp-EKCertificate (2.23.133.8.1). TCG EK certificates
   often have an empty subject and a critical subjectAltName in directoryName form (TPM
   manufacturer, model, version), which the policy below accepts.
3. **Not self-signed** (:class:`EkCertificateSelfSigned`): an EK certificate signed by its own key
   proves nothing about who made the TPM.
4. **Validity at ``now``** (:class:`EkCertificateExpired`) for the leaf, then the **chain**
   (:class:`EkCertificateUntrusted`): ``cryptography.x509.verification`` builds and checks the path
   to one of ``trust_anchors`` through ``intermediates``: signatures, validity of every
   certificate at ``now``, CA basicConstraints, keyCertSign and path length on issuers (its
   RFC 5280 / CA/B "webpki" CA profile). It can express TCG EK certificates with a custom
   end-entity :class:`~cryptography.x509.verification.ExtensionPolicy` (no serverAuth/clientAuth
   EKU required, directoryName SAN and empty subject allowed, cA=false enforced), so no check is
   switched off. Its algorithm policy limits signatures to RSA-PKCS#1/PSS with SHA-2 (RSA >= 2048
   bits) and ECDSA P-256/384/521: an EK CA still signing with SHA-1 is rejected as untrusted.
5. **Binding** (:func:`ek_certificate_matches`): the certificate's key must be the EK the TPM
   presents (:class:`EkPublicMismatch`); the registrar calls it with the enrolled TPM2B_PUBLIC.

An operator-approved allowlist identifies EKs by :func:`ek_public_hash` (SHA-256 hex of the
TPM2B_PUBLIC bytes) for TPMs without a usable certificate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import verification as xv

from attest.core.errors import AttestationError, MalformedStructure
from attest.core.tpm_public import TpmPublic, parse_tpm2b_public

TCG_KP_EK_CERTIFICATE = x509.ObjectIdentifier("2.23.133.8.1")
MAX_CERT_BYTES = 16 * 1024  # EK certs are ~1-2 KiB; NV indices are far smaller than this


class EkCertificateMalformed(MalformedStructure):
    check = "ek.certificate.parse"
    hint = ("The EK certificate is not a parsable X.509 certificate; re-read it from NV "
            "(0x01C00002 RSA / 0x01C0000A ECC), or approve the node's EK hash instead.")


class EkCertificateNotEk(AttestationError):
    check = "ek.certificate.not_ek"
    hint = ("The certificate is not a TPM EK certificate; send the one stored in the TPM's EK "
            "NV index.")


class EkCertificateSelfSigned(AttestationError):
    check = "ek.certificate.self_signed"
    hint = ("A self-signed EK certificate proves nothing; use a TPM with a manufacturer-issued EK "
            "certificate or approve this EK's hash explicitly.")


class EkCertificateExpired(AttestationError):
    check = "ek.certificate.validity"
    hint = ("The EK certificate is not valid at this time; check the verifier's clock, or approve "
            "this EK's hash if the manufacturer's certificate has lapsed.")


class EkCertificateUntrusted(AttestationError):
    check = "ek.certificate.untrusted"
    hint = ("No configured manufacturer CA issued this EK certificate: add the TPM vendor's root "
            "(and intermediate) CA to the verifier's EK trust store, or approve the EK hash.")


class EkPublicMismatch(AttestationError):
    check = "ek.public.mismatch"
    hint = ("The EK certificate belongs to another key than the EK the node presented; the agent "
            "must send the certificate of its own TPM.")


# --- step 1: parsing ---------------------------------------------------------------------------

def load_ek_certificate(data: bytes) -> x509.Certificate:
    """Parse an EK certificate (DER or PEM; non-strict DER re-encoded if pyasn1 is available)."""
    return _load(data)[0]


def _load(data: bytes) -> tuple[x509.Certificate, bytes | None]:
    """The certificate and, when it had to be re-encoded, the original TBSCertificate bytes."""
    cert, original_tbs = _load_lazy(data)
    # cryptography decodes names, extensions and keys lazily: decode everything now so that a
    # malformed field is reported here as malformed, not as a ValueError from a later step.
    try:
        _ = (cert.issuer, cert.subject, cert.not_valid_before_utc, cert.not_valid_after_utc,
             cert.signature_hash_algorithm, cert.signature_algorithm_parameters)
        for _ext in cert.extensions:
            pass
        cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise EkCertificateMalformed(f"undecodable field: {exc}") from exc
    return cert, original_tbs


def _load_lazy(data: bytes) -> tuple[x509.Certificate, bytes | None]:
    if not isinstance(data, bytes | bytearray) or not data:
        raise EkCertificateMalformed("empty or not bytes")
    if len(data) > MAX_CERT_BYTES:
        raise EkCertificateMalformed(f"{len(data)} bytes, more than {MAX_CERT_BYTES}")
    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data), None
        return x509.load_der_x509_certificate(data), None
    except (ValueError, x509.InvalidVersion) as exc:
        strict_error = exc
    reencoded = _reencode_lenient(data)
    if reencoded is None:
        raise EkCertificateMalformed(
            f"not a DER X.509 certificate ({strict_error}); non-DER vendor certificates need "
            "pyasn1 and pyasn1-modules installed")
    der, original_tbs = reencoded
    try:
        return x509.load_der_x509_certificate(der), original_tbs
    except (ValueError, x509.InvalidVersion) as exc:
        raise EkCertificateMalformed(f"not an X.509 certificate even leniently: {exc}") from exc


def _reencode_lenient(data: bytes) -> tuple[bytes, bytes] | None:
    """BER-decode with pyasn1 and re-encode as DER (Keylime's approach); None if impossible."""
    try:
        from pyasn1.codec.ber import decoder as ber_decoder
        from pyasn1.codec.der import encoder as der_encoder
        from pyasn1.type import univ
        from pyasn1_modules import rfc5280
    except ImportError:
        return None
    try:
        cert, rest = ber_decoder.decode(data, asn1Spec=rfc5280.Certificate())
        if rest:
            return None
        # The signed bytes: the first element of the outer SEQUENCE, exactly as received.
        outer, _ = ber_decoder.decode(data, asn1Spec=univ.SequenceOf(componentType=univ.Any()))
        original_tbs = bytes(outer[0])
        return bytes(der_encoder.encode(cert)), original_tbs
    except Exception:  # pyasn1 raises many error types on garbage; all mean "not a certificate"
        return None


# --- steps 2-4: validation ---------------------------------------------------------------------

def _ee_basic_constraints(_policy: Any, _cert: x509.Certificate,
                          ext: x509.BasicConstraints | None) -> None:
    if ext is not None and ext.ca:
        raise ValueError("EK certificate must not be a CA (basicConstraints cA=TRUE)")


def _ee_eku(_policy: Any, _cert: x509.Certificate, ext: x509.ExtendedKeyUsage | None) -> None:
    if ext is not None and TCG_KP_EK_CERTIFICATE not in list(ext):
        raise ValueError("extendedKeyUsage present without tcg-kp-EKCertificate")


def _ek_policies() -> tuple[xv.ExtensionPolicy, xv.ExtensionPolicy]:
    agnostic = xv.Criticality.AGNOSTIC
    ee = (xv.ExtensionPolicy.webpki_defaults_ee()
          .may_be_present(x509.BasicConstraints, agnostic, _ee_basic_constraints)
          .may_be_present(x509.ExtendedKeyUsage, agnostic, _ee_eku)
          # directoryName SAN, critical when the subject is empty (TCG EK profile §3.2)
          .may_be_present(x509.SubjectAlternativeName, agnostic, None)
          .may_be_present(x509.KeyUsage, agnostic, None)
          .may_be_present(x509.CertificatePolicies, agnostic, None))
    return xv.ExtensionPolicy.webpki_defaults_ca(), ee


def _extension(cert: x509.Certificate, cls: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or undecodable extensions
        raise EkCertificateMalformed(f"bad extensions in serial {cert.serial_number:#x}: "
                                     f"{exc}") from exc


def _check_is_ek(cert: x509.Certificate) -> None:
    bc = _extension(cert, x509.BasicConstraints)
    if bc is not None and bc.ca:
        raise EkCertificateNotEk(f"{_subject(cert)} is a CA certificate (cA=TRUE)")
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if eku is not None and TCG_KP_EK_CERTIFICATE not in list(eku):
        names = ", ".join(o.dotted_string for o in eku)
        raise EkCertificateNotEk(f"{_subject(cert)} has extendedKeyUsage [{names}] without "
                                 f"tcg-kp-EKCertificate ({TCG_KP_EK_CERTIFICATE.dotted_string})")
    key = _public_key(cert)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise EkCertificateNotEk(f"{_subject(cert)} has a {type(key).__name__}, not RSA or ECC")


def _public_key(cert: x509.Certificate) -> PublicKeyTypes:
    try:
        return cert.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # e.g. a mangled curve OID
        raise EkCertificateMalformed(f"unusable public key in {_subject(cert)}: {exc}") from exc


def _subject(cert: x509.Certificate) -> str:
    s = cert.subject.rfc4514_string()
    if s:
        return f"subject '{s}'"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.value.rfc4514_string() for n in san if isinstance(n, x509.DirectoryName)]
        return f"subject (empty) SAN '{'; '.join(names) or san}'"
    except (x509.ExtensionNotFound, ValueError):
        return f"subject (empty) serial {cert.serial_number:#x}"


def _issuer(cert: x509.Certificate) -> str:
    return f"issuer '{cert.issuer.rfc4514_string()}'"


def _signed_by(cert: x509.Certificate, tbs: bytes, issuer_key: PublicKeyTypes) -> bool:
    """Does ``issuer_key`` verify ``cert``'s signature over ``tbs`` (original bytes)?"""
    try:
        algo = cert.signature_hash_algorithm
        if isinstance(issuer_key, rsa.RSAPublicKey) and algo is not None:
            pad = cert.signature_algorithm_parameters
            issuer_key.verify(cert.signature, tbs,
                              pad if isinstance(pad, padding.PSS) else padding.PKCS1v15(), algo)
        elif isinstance(issuer_key, ec.EllipticCurvePublicKey) and algo is not None:
            issuer_key.verify(cert.signature, tbs, ec.ECDSA(algo))
        else:
            return False
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return t.astimezone(UTC)


def verify_ek_certificate(cert: bytes, trust_anchors: Sequence[x509.Certificate],
                          intermediates: Sequence[x509.Certificate] = (), *,
                          now: datetime) -> x509.Certificate:
    """Validate an EK certificate against manufacturer CAs at ``now``; return it parsed."""
    now = _utc(now)
    leaf, original_tbs = _load(cert)
    _check_is_ek(leaf)
    key = _public_key(leaf)
    if leaf.issuer == leaf.subject and _signed_by(leaf, leaf.tbs_certificate_bytes, key):
        raise EkCertificateSelfSigned(f"{_subject(leaf)} is signed by its own key")
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise EkCertificateExpired(
            f"{_subject(leaf)} is valid {leaf.not_valid_before_utc.isoformat()} .. "
            f"{leaf.not_valid_after_utc.isoformat()}, not at {now.isoformat()}")
    if not trust_anchors:
        raise EkCertificateUntrusted(f"{_subject(leaf)}, {_issuer(leaf)}: no EK CA configured")
    if original_tbs is not None:
        _verify_reencoded(leaf, original_tbs, trust_anchors, intermediates, now)
    else:
        _verify_chain(leaf, trust_anchors, intermediates, now)
    return leaf


def _verify_chain(leaf: x509.Certificate, trust_anchors: Sequence[x509.Certificate],
                  intermediates: Sequence[x509.Certificate], now: datetime) -> None:
    ca_policy, ee_policy = _ek_policies()
    verifier = (xv.PolicyBuilder().store(xv.Store(list(trust_anchors))).time(now)
                .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
                .build_client_verifier())
    try:
        verifier.verify(leaf, list(intermediates))
    except xv.VerificationError as exc:
        raise EkCertificateUntrusted(
            f"{_subject(leaf)}, {_issuer(leaf)}: no valid chain to a configured EK CA ({exc})"
        ) from exc


def _verify_reencoded(leaf: x509.Certificate, original_tbs: bytes,
                      trust_anchors: Sequence[x509.Certificate],
                      intermediates: Sequence[x509.Certificate], now: datetime) -> None:
    """Chain check for a re-encoded (non-DER) leaf: its signature is over the original TBS
    bytes, so verify that link directly, then validate the issuer's own chain with the library
    verifier (the issuer is then a CA certificate validated like any other path)."""
    for issuer in [*intermediates, *trust_anchors]:
        if issuer.subject != leaf.issuer or not _signed_by(leaf, original_tbs,
                                                           issuer.public_key()):
            continue
        if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
            continue
        try:
            bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
            ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if not (bc.ca and ku.key_cert_sign):
            continue
        if issuer in trust_anchors:
            return
        ca_policy, _ = _ek_policies()
        # Validate the issuing CA as the "leaf" of its own path with the CA profile.
        verifier = (xv.PolicyBuilder().store(xv.Store(list(trust_anchors))).time(now)
                    .extension_policies(ca_policy=ca_policy, ee_policy=ca_policy)
                    .build_client_verifier())
        try:
            verifier.verify(issuer, [c for c in intermediates if c != issuer])
            return
        except xv.VerificationError:
            continue
    raise EkCertificateUntrusted(
        f"{_subject(leaf)}, {_issuer(leaf)}: no configured EK CA signed this (re-encoded) "
        "certificate")


# --- step 5: binding to the TPM's EK, and the EK hash ------------------------------------------

def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def ek_certificate_matches(cert: x509.Certificate,
                           ek_public_key: PublicKeyTypes | TpmPublic | bytes) -> bool:
    """Check that ``cert`` certifies exactly ``ek_public_key`` (a key, TpmPublic or TPM2B_PUBLIC).

    Returns True, and raises :class:`EkPublicMismatch` otherwise: it never returns False, so a
    caller that ignores the result (``ek_certificate_matches(cert, key)`` as a statement) is as
    safe as one that tests it.
    """
    if isinstance(ek_public_key, bytes | bytearray):
        ek_public_key = parse_tpm2b_public(bytes(ek_public_key))
    if isinstance(ek_public_key, TpmPublic):
        ek_public_key = ek_public_key.public_key()
    if _spki(_public_key(cert)) != _spki(ek_public_key):
        raise EkPublicMismatch(f"{_subject(cert)} certifies another key than the node's EK")
    return True


def ek_public_hash(tpm2b_public: bytes) -> str:
    """SHA-256 hex of the EK's TPM2B_PUBLIC bytes: the operator allowlist's identifier.

    The bytes are parsed first so that only a well-formed TPM2B_PUBLIC gets a hash.
    """
    parse_tpm2b_public(bytes(tpm2b_public))
    return hashlib.sha256(bytes(tpm2b_public)).hexdigest()


__all__ = [
    "TCG_KP_EK_CERTIFICATE", "EkCertificateExpired", "EkCertificateMalformed",
    "EkCertificateNotEk", "EkCertificateSelfSigned", "EkCertificateUntrusted", "EkPublicMismatch",
    "ek_certificate_matches", "ek_public_hash",
    "load_ek_certificate", "verify_ek_certificate",
]
