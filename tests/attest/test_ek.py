"""EK certificate validation (attest.core.ek): synthetic chains built with cryptography here, and
real swtpm-issued certificates (from a project-owned local CA) in the swtpm-marked tests."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.core.ek import (
    TCG_KP_EK_CERTIFICATE,
    EkCertificateExpired,
    EkCertificateMalformed,
    EkCertificateNotEk,
    EkCertificateSelfSigned,
    EkCertificateUntrusted,
    EkPublicMismatch,
    ek_certificate_matches,
    ek_public_hash,
    load_ek_certificate,
    verify_ek_certificate,
)
from attest.core.errors import AttestationError, MalformedStructure

NOW = datetime(2026, 6, 1, tzinfo=UTC)
T0 = datetime(2020, 1, 1, tzinfo=UTC)
T1 = datetime(2040, 1, 1, tzinfo=UTC)
TPM_SAN = x509.SubjectAlternativeName([x509.DirectoryName(x509.Name([
    x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.1"), "id:4E544300"),
    x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "NPCT75x"),
    x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.3"), "id:00070002"),
]))])
RSA_KEYS = [rsa.generate_private_key(65537, 2048) for _ in range(3)]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(subject: x509.Name, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
            issuer: x509.Name | None = None, issuer_key: object = None, *,
            key_cert_sign: bool = True, not_after: datetime = T1) -> x509.Certificate:
    signer = issuer_key or key
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(T0).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(False, False, False, False, False, key_cert_sign, True,
                                      False, False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False))
    if issuer_key is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)  # type: ignore[attr-defined]
    return b.sign(signer, hashes.SHA256())  # type: ignore[arg-type]


def make_ek(issuer: x509.Certificate, issuer_key: object, ek_key: object, *,
            subject: x509.Name | None = None, ca: bool = False,
            eku: Sequence[x509.ObjectIdentifier] | None = (TCG_KP_EK_CERTIFICATE,),
            not_before: datetime = T0, not_after: datetime = T1) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(subject or x509.Name([]))
         .issuer_name(issuer.subject).public_key(ek_key.public_key())  # type: ignore[attr-defined]
         .serial_number(x509.random_serial_number())
         .not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(TPM_SAN, critical=subject is None)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(False, False, True, False, False, False, False, False,
                                      False), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             issuer_key.public_key()), critical=False))  # type: ignore[attr-defined]
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class Pki:
    def __init__(self, root_key: rsa.RSAPrivateKey = RSA_KEYS[0]) -> None:
        self.root_key = root_key
        self.root = make_ca(_name("Vendor EK Root"), self.root_key)
        self.int_key = ec.generate_private_key(ec.SECP384R1())
        self.inter = make_ca(_name("Vendor EK Intermediate"), self.int_key, self.root.subject,
                             self.root_key)
        self.ek_key = ec.generate_private_key(ec.SECP256R1())
        self.ek = make_ek(self.inter, self.int_key, self.ek_key)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def test_valid_chain_with_empty_subject_and_directory_name_san(pki: Pki) -> None:
    cert = verify_ek_certificate(der(pki.ek), [pki.root], [pki.inter], now=NOW)
    assert cert.subject == x509.Name([])
    assert ek_certificate_matches(cert, pki.ek_key.public_key())
    # PEM is accepted too, and an EK cert without any EKU is allowed by the TCG profile.
    pem = pki.ek.public_bytes(serialization.Encoding.PEM)
    assert verify_ek_certificate(pem, [pki.root], [pki.inter], now=NOW) == pki.ek
    no_eku = make_ek(pki.inter, pki.int_key, pki.ek_key, eku=None)
    verify_ek_certificate(der(no_eku), [pki.root], [pki.inter], now=NOW)


def test_missing_intermediate_or_other_root_is_untrusted(pki: Pki) -> None:
    with pytest.raises(EkCertificateUntrusted, match="Vendor EK Intermediate"):
        verify_ek_certificate(der(pki.ek), [pki.root], [], now=NOW)
    other = Pki(RSA_KEYS[1])  # same names, another manufacturer's key
    with pytest.raises(EkCertificateUntrusted, match="no valid chain"):
        verify_ek_certificate(der(pki.ek), [other.root], [pki.inter], now=NOW)
    with pytest.raises(EkCertificateUntrusted, match="no EK CA configured"):
        verify_ek_certificate(der(pki.ek), [], [pki.inter], now=NOW)


def test_forged_intermediate_with_same_name_is_untrusted(pki: Pki) -> None:
    # Same subject names, different keys: only the signatures tell them apart.
    fake_int_key = ec.generate_private_key(ec.SECP384R1())
    fake_inter = make_ca(pki.inter.subject, fake_int_key, pki.root.subject, RSA_KEYS[1])
    fake_ek = make_ek(fake_inter, fake_int_key, pki.ek_key)
    with pytest.raises(EkCertificateUntrusted):
        verify_ek_certificate(der(fake_ek), [pki.root], [fake_inter, pki.inter], now=NOW)


def test_self_signed_ek_is_rejected(pki: Pki) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("self")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(T0)
            .not_valid_after(T1)
            .add_extension(x509.ExtendedKeyUsage([TCG_KP_EK_CERTIFICATE]), critical=False)
            .sign(key, hashes.SHA256()))
    with pytest.raises(EkCertificateSelfSigned, match="CN=self"):
        # Even when the operator (wrongly) put it among the anchors.
        verify_ek_certificate(der(cert), [cert, pki.root], [], now=NOW)


def test_expired_and_not_yet_valid(pki: Pki) -> None:
    with pytest.raises(EkCertificateExpired, match="2040"):
        verify_ek_certificate(der(pki.ek), [pki.root], [pki.inter], now=T1 + timedelta(days=1))
    with pytest.raises(EkCertificateExpired):
        verify_ek_certificate(der(pki.ek), [pki.root], [pki.inter], now=T0 - timedelta(days=1))
    with pytest.raises(ValueError, match="timezone"):
        verify_ek_certificate(der(pki.ek), [pki.root], [pki.inter], now=datetime(2026, 1, 1))


def test_expired_intermediate_is_untrusted(pki: Pki) -> None:
    inter = make_ca(pki.inter.subject, pki.int_key, pki.root.subject, pki.root_key,
                    not_after=datetime(2025, 1, 1, tzinfo=UTC))
    with pytest.raises(EkCertificateUntrusted):
        verify_ek_certificate(der(pki.ek), [pki.root], [inter], now=NOW)


def test_issuer_without_key_cert_sign_is_untrusted(pki: Pki) -> None:
    inter = make_ca(pki.inter.subject, pki.int_key, pki.root.subject, pki.root_key,
                    key_cert_sign=False)
    with pytest.raises(EkCertificateUntrusted):
        verify_ek_certificate(der(pki.ek), [pki.root], [inter], now=NOW)


def test_leaf_issued_by_non_ca_is_untrusted(pki: Pki) -> None:
    # An EK certificate used as an issuer: its key signs another "EK" certificate.
    other_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_ek(pki.ek, pki.ek_key, other_key)
    with pytest.raises(EkCertificateUntrusted):
        verify_ek_certificate(der(leaf), [pki.root], [pki.inter, pki.ek], now=NOW)


def test_ca_certificate_or_foreign_eku_is_not_an_ek(pki: Pki) -> None:
    as_ca = make_ek(pki.inter, pki.int_key, pki.ek_key, ca=True)
    with pytest.raises(EkCertificateNotEk, match="cA=TRUE"):
        verify_ek_certificate(der(as_ca), [pki.root], [pki.inter], now=NOW)
    tls = make_ek(pki.inter, pki.int_key, pki.ek_key, subject=_name("web"),
                  eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(EkCertificateNotEk, match=r"1\.3\.6\.1\.5\.5\.7\.3\.1"):
        verify_ek_certificate(der(tls), [pki.root], [pki.inter], now=NOW)
    with pytest.raises(EkCertificateNotEk):
        verify_ek_certificate(der(pki.inter), [pki.root], [], now=NOW)


def test_public_key_binding(pki: Pki) -> None:
    assert ek_certificate_matches(pki.ek, pki.ek_key.public_key()) is True
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    # Raises rather than returning False, so ignoring the result cannot let a mismatch through.
    with pytest.raises(EkPublicMismatch, match=r"2\.23\.133\.2\.2=NPCT75x"):
        ek_certificate_matches(pki.ek, other)
    from attest.core.tpm_public import ek_public_from_key

    own = ek_public_from_key(pki.ek_key.public_key())
    assert ek_certificate_matches(pki.ek, own.marshal_tpm2b())
    with pytest.raises(EkPublicMismatch):
        ek_certificate_matches(pki.ek, ek_public_from_key(other).marshal_tpm2b())
    with pytest.raises(MalformedStructure):
        ek_certificate_matches(pki.ek, b"\x00\x10garbage")


def test_ek_public_hash_rejects_garbage() -> None:
    with pytest.raises(MalformedStructure):
        ek_public_hash(b"\x00\x05abc")
    with pytest.raises(MalformedStructure):
        ek_public_hash(b"")


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x82\xff\xff" + b"\x00" * 10,
                                  b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
                                  b"\x00" * 20000])
def test_garbage_is_malformed(pki: Pki, data: bytes) -> None:
    with pytest.raises(EkCertificateMalformed):
        verify_ek_certificate(data, [pki.root], [], now=NOW)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_mutated_certificates_raise_only_typed_errors(pki: Pki, data: st.DataObject) -> None:
    raw = bytearray(der(pki.ek))
    choice = data.draw(st.sampled_from(["flip", "truncate", "random"]))
    if choice == "flip":
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
    elif choice == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw = bytearray(data.draw(st.binary(max_size=2000)))
    try:
        verify_ek_certificate(bytes(raw), [pki.root], [pki.inter], now=NOW)
    except AttestationError:
        return
    # Accepted only if the mutation did not change what was signed (e.g. the outer wrapping).
    assert load_ek_certificate(bytes(raw)).tbs_certificate_bytes == pki.ek.tbs_certificate_bytes


# --- non-DER vendor certificates (Nuvoton: issuer SET OF in non-canonical order) ---------------

def _nuvoton_like(pki_root_key: rsa.RSAPrivateKey) -> tuple[bytes, x509.Certificate]:
    """An EK cert whose issuer RDN is a multi-valued SET in non-DER order, correctly signed."""
    rdn = [x509.NameAttribute(NameOID.COMMON_NAME, "Nuvoton TPM Root CA 2111"),
           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Nuvoton Technology Corporation"),
           x509.NameAttribute(NameOID.COUNTRY_NAME, "TW")]
    issuer_name = x509.Name([x509.RelativeDistinguishedName(rdn)])
    root = make_ca(issuer_name, pki_root_key)
    ek_key = ec.generate_private_key(ec.SECP256R1())
    cert = make_ek(root, pki_root_key, ek_key)
    atvs = [x509.Name([x509.RelativeDistinguishedName([a])]).public_bytes()[4:] for a in rdn]
    canonical = b"".join(sorted(atvs))
    swapped = b"".join(sorted(atvs, reverse=True))
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(canonical) == 1
    bad_tbs = tbs.replace(canonical, swapped)
    sig = pki_root_key.sign(bad_tbs, padding.PKCS1v15(), hashes.SHA256())
    raw = der(cert)
    assert raw.endswith(cert.signature) and len(sig) == len(cert.signature)
    return raw.replace(tbs, bad_tbs)[: -len(sig)] + sig, root


def test_non_der_vendor_certificate() -> None:
    raw, root = _nuvoton_like(RSA_KEYS[2])
    with pytest.raises(ValueError):  # the strict parser really rejects it
        x509.load_der_x509_certificate(raw)
    try:
        import pyasn1_modules  # noqa: F401
    except ImportError:
        with pytest.raises(EkCertificateMalformed, match="pyasn1"):
            verify_ek_certificate(raw, [root], [], now=NOW)
        return
    cert = verify_ek_certificate(raw, [root], [], now=NOW)
    assert cert.issuer == root.subject
    # The signature is checked over the ORIGINAL bytes: tampering is still caught.
    tampered = bytearray(raw)
    tampered[raw.index(b"NPCT75x")] ^= 0x01
    with pytest.raises(EkCertificateUntrusted):
        verify_ek_certificate(bytes(tampered), [root], [], now=NOW)
    with pytest.raises(EkCertificateUntrusted):
        verify_ek_certificate(raw, [make_ca(root.subject, RSA_KEYS[1])], [], now=NOW)


def test_hash_is_sha256_of_tpm2b_public() -> None:
    from attest.core.tpm_public import ek_public_from_key

    pub = ek_public_from_key(ec.generate_private_key(ec.SECP256R1()).public_key())
    blob = pub.marshal_tpm2b()
    assert ek_public_hash(blob) == hashlib.sha256(blob).hexdigest()
