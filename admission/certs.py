"""``umec webhook certs``: a private CA and the webhook's serving certificate.

The API server reaches the webhook through its Service, so the serving certificate carries the
Service DNS names ``svc``, ``svc.ns``, ``svc.ns.svc`` and ``svc.ns.svc.cluster.local`` (plus any
extra names, e.g. ``localhost``/``127.0.0.1`` for tests). The CA certificate, base64 encoded,
is the ``caBundle`` of the webhook configurations. Keys are written by :mod:`keys` (PKCS#8,
0600, atomic); certificates are 0644. An existing CA is reused, so rotating the serving
certificate does not change the ``caBundle``. Times come from the caller for testability.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys import KeyKind, atomic_write, load_or_create_private_key, save_private_key


@dataclass(frozen=True)
class WebhookCerts:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    ca_bundle: str          # base64 PEM of the CA: the webhook configurations' caBundle


def service_dns_names(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(key: ec.EllipticCurvePrivateKey, now: datetime, days: int) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder().subject_name(_name("umec admission webhook CA"))
            .issuer_name(_name("umec admission webhook CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))


def create_webhook_certs(directory: Path | str, service: str, namespace: str, *,
                         extra_names: list[str] | None = None, now: datetime | None = None,
                         days: int = 365, ca_days: int = 3650) -> WebhookCerts:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now(UTC)
    ca_key_path, ca_cert_path = d / "ca.key", d / "ca.crt"
    ca_key = load_or_create_private_key(ca_key_path, KeyKind.EC_P256)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    if ca_cert_path.exists():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    else:
        ca_cert = _ca(ca_key, now, ca_days)
        atomic_write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)

    key = ec.generate_private_key(ec.SECP256R1())
    names = service_dns_names(service, namespace) + list(extra_names or [])
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (x509.CertificateBuilder().subject_name(_name(names[2]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_path, cert_path = d / "tls.key", d / "tls.crt"
    save_private_key(key_path, key)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    bundle = base64.b64encode(ca_cert.public_bytes(serialization.Encoding.PEM)).decode()
    return WebhookCerts(ca_cert_path, ca_key_path, cert_path, key_path, bundle)
