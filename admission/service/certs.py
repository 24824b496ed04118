"""``umec webhook certs``: the webhook's serving certificate, and the API server's client
certificate the webhook requires (mutual TLS).

The API server reaches the webhook through its Service, so the serving certificate carries the
Service DNS names ``svc``, ``svc.ns``, ``svc.ns.svc`` and ``svc.ns.svc.cluster.local`` (plus any
extra names, e.g. ``localhost``/``127.0.0.1`` for tests). The CA certificate, base64 encoded,
is the ``caBundle`` of the webhook configurations.

The webhook accepts a review only over a connection whose client presented a certificate from
a DEDICATED client CA (``client-ca.crt``, the webhook's ``UMEC_WEBHOOK_CLIENT_CA``): never the
cluster's client CA, which signs every kubelet's and user's certificate. The API server's
certificate (``apiserver-client.crt``, CN ``umec-webhook-client``, clientAuth only) is handed to
it by ``admission-config.yaml`` (an ``AdmissionConfiguration`` for the kube-apiserver's
``--admission-control-config-file``), whose ``WebhookAdmissionConfiguration`` names
``webhook-kubeconfig.yaml``: a kubeconfig user keyed by the webhook's Service host. Both files
name the others by absolute path under ``apiserver_dir`` (where they will lie on the k3s server;
the output directory by default), since the API server requires an absolute kubeConfigFile.

Keys are written by :mod:`keys` (PKCS#8, 0600, atomic); certificates and configuration files are
0644. Existing CAs are reused, so re-issuing the certificates changes neither the ``caBundle``
nor the client CA the webhook trusts. Times come from the caller for testability.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys import KeyKind, atomic_write, load_or_create_private_key, save_private_key

SERVING_CA_NAME = "umec admission webhook CA"
CLIENT_CA_NAME = "umec admission webhook client CA"
CLIENT_CN = "umec-webhook-client"


@dataclass(frozen=True)
class WebhookCerts:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    ca_bundle: str          # base64 PEM of the CA: the webhook configurations' caBundle
    client_ca_cert: Path    # the webhook's UMEC_WEBHOOK_CLIENT_CA
    client_ca_key: Path
    client_cert: Path       # the API server's client certificate and key
    client_key: Path
    admission_config: Path  # kube-apiserver --admission-control-config-file
    kubeconfig: Path        # named by admission_config: the client certificate per webhook host
    apiserver_dir: Path     # where the two files above expect the API server's files to lie


def service_dns_names(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def webhook_host(service: str, namespace: str) -> str:
    """The name the API server looks up in the webhook kubeconfig's users for a Service
    webhook on port 443."""
    return f"{service}.{namespace}.svc"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(key: ec.EllipticCurvePrivateKey, now: datetime, days: int,
        name: str = SERVING_CA_NAME) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder().subject_name(_name(name))
            .issuer_name(_name(name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))


def _load_or_create_ca(key_path: Path, cert_path: Path, name: str, now: datetime,
                       days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = load_or_create_private_key(key_path, KeyKind.EC_P256)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    if cert_path.exists():
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert = _ca(key, now, days, name)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return key, cert


def _leaf(subject: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
          now: datetime, days: int, usage: x509.ObjectIdentifier,
          sans: list[x509.GeneralName] | None = None
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh key and an end-entity certificate for one usage (serverAuth or clientAuth)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(subject))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5))
               .not_valid_after(now + timedelta(days=days)))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = (builder
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                         False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write_pair(d: Path, stem: str, key: ec.EllipticCurvePrivateKey,
                cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = d / f"{stem}.key", d / f"{stem}.crt"
    save_private_key(key_path, key)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def _general_names(names: list[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    return sans


def admission_configuration(kubeconfig: Path) -> dict[str, Any]:
    """The kube-apiserver's AdmissionConfiguration: both webhook admission plugins (the
    mutating and the validating webhook are the same server) read ``kubeconfig``."""
    webhook = {"apiVersion": "apiserver.config.k8s.io/v1",
               "kind": "WebhookAdmissionConfiguration", "kubeConfigFile": str(kubeconfig)}
    return {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
            "plugins": [{"name": plugin, "configuration": dict(webhook)}
                        for plugin in ("ValidatingAdmissionWebhook",
                                       "MutatingAdmissionWebhook")]}


def webhook_kubeconfig(host: str, client_cert: Path, client_key: Path) -> dict[str, Any]:
    """The kubeconfig the API server reads credentials for webhook ``host`` from."""
    return {"apiVersion": "v1", "kind": "Config",
            "users": [{"name": host, "user": {"client-certificate": str(client_cert),
                                              "client-key": str(client_key)}}]}


def _write_yaml(path: Path, doc: dict[str, Any]) -> Path:
    atomic_write(path, yaml.safe_dump(doc, sort_keys=False).encode(), mode=0o644)
    return path


def create_webhook_certs(directory: Path | str, service: str, namespace: str, *,
                         extra_names: list[str] | None = None, now: datetime | None = None,
                         days: int = 365, ca_days: int = 3650,
                         apiserver_dir: Path | str | None = None) -> WebhookCerts:
    """Write (or reuse) both CAs, issue the serving and the API server's client certificate,
    and the API server's admission configuration naming files under ``apiserver_dir``."""
    d = Path(directory)
    there = Path(apiserver_dir) if apiserver_dir is not None else d.resolve()
    if not there.is_absolute():
        raise ValueError(f"{there}: not an absolute path (the API server requires one)")
    d.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now(UTC)
    ca_key, ca_cert = _load_or_create_ca(d / "ca.key", d / "ca.crt", SERVING_CA_NAME, now,
                                         ca_days)
    names = service_dns_names(service, namespace) + list(extra_names or [])
    cert_path, key_path = _write_pair(d, "tls", *_leaf(
        names[2], ca_key, ca_cert, now, days, ExtendedKeyUsageOID.SERVER_AUTH,
        _general_names(names)))
    client_ca_key, client_ca = _load_or_create_ca(d / "client-ca.key", d / "client-ca.crt",
                                                  CLIENT_CA_NAME, now, ca_days)
    client_cert, client_key = _write_pair(d, "apiserver-client", *_leaf(
        CLIENT_CN, client_ca_key, client_ca, now, days, ExtendedKeyUsageOID.CLIENT_AUTH))
    kubeconfig = _write_yaml(d / "webhook-kubeconfig.yaml", webhook_kubeconfig(
        webhook_host(service, namespace), there / client_cert.name, there / client_key.name))
    admission = _write_yaml(d / "admission-config.yaml",
                            admission_configuration(there / kubeconfig.name))
    bundle = base64.b64encode(ca_cert.public_bytes(serialization.Encoding.PEM)).decode()
    return WebhookCerts(d / "ca.crt", d / "ca.key", cert_path, key_path, bundle,
                        d / "client-ca.crt", d / "client-ca.key", client_cert, client_key,
                        admission, kubeconfig, there)
