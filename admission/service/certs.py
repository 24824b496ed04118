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
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from admission.core.errors import AdmissionError
from keys import KeyKind, KeysError, atomic_write, load_or_create_private_key, save_private_key
from keys.storage import parse_private_key, private_key_pem

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


# --- rotation in the cluster: `umec webhook certs --rotate` (deploy/webhook-certs.yaml) --------
#
# A CronJob runs `umec webhook certs --rotate` every day with its own ServiceAccount (RBAC only
# on the objects named below). Each run converges, and does nothing when nothing is due:
#
# 1. the serving CA from Secret ``umec-webhook-ca`` (``tls.crt``/``tls.key``); it must be valid
#    for longer than the renewal window (a CA is replaced by hand: :class:`CertRotationFailed`);
# 2. the serving certificate in Secret ``umec-webhook-tls`` is re-issued (new key, ``days``
#    valid) when it is missing or unparsable, not issued by that CA, lacks a Service name, or
#    expires within ``renew_before_days``; the Secret is updated with its resourceVersion, so
#    two runs at once cannot both write (the loser re-reads and finds nothing due);
# 3. every webhook of the Mutating/ValidatingWebhookConfigurations that calls the Service gets
#    ``caBundle`` = the CA, by a JSON patch that first tests the webhook's name. While the CA is
#    being replaced the bundle is the new CA AND the old ones it held (still valid): the pods
#    serve the old leaf until the kubelet updates their Secret volume and the webhook reloads
#    it (umec/webhook_process.py, no restart, no right on the Deployment), and a bundle of the
#    new CA alone would fail every admission closed meanwhile. The old CAs are dropped only once
#    every ready address of the Service's Endpoints serves, in a real TLS handshake, a leaf the
#    new CA issued (:func:`served_leaf`); until then each run keeps them and says so.

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


class CertRotationFailed(AdmissionError):
    """The webhook's serving certificate could not be checked or rotated."""

    check = "certs.rotation"
    hint = ("Check the Secrets umec-webhook-ca and umec-webhook-tls in the webhook's namespace "
            "(deploy/README.md) and the job's RBAC (deploy/webhook-certs.yaml); the current "
            "certificate keeps serving until it expires.")
    status = 500
    public = False


@dataclass(frozen=True)
class RotationConfig:
    namespace: str = "umec-system"
    service: str = "umec-webhook"
    tls_secret: str = "umec-webhook-tls"
    ca_secret: str = "umec-webhook-ca"
    mutating: tuple[str, ...] = ("umec-image-pinning",)
    validating: tuple[str, ...] = ("umec-image-verification",)
    days: int = 90
    renew_before_days: int = 30


@dataclass(frozen=True)
class RotationResult:
    issued: bool
    reason: str                         # why a certificate was issued, or until when it is good
    serial: str
    not_after: datetime
    ca_bundle_patched: tuple[str, ...]  # "Kind/name/webhook" entries whose caBundle changed
    old_cas_kept: int = 0               # earlier CAs still in caBundle (a CA change under way)
    replicas: str = ""                  # what the served leaves showed, when they were checked

    def as_dict(self) -> dict[str, Any]:
        return {"issued": self.issued, "reason": self.reason, "serial": self.serial,
                "not_after": self.not_after.isoformat(),
                "ca_bundle_patched": list(self.ca_bundle_patched),
                "old_cas_kept": self.old_cas_kept, "replicas": self.replicas}


def renewal_reason(cert: x509.Certificate, ca_cert: x509.Certificate, names: list[str],
                   now: datetime, renew_before: timedelta) -> str | None:
    """Why ``cert`` must be replaced (None: it is good). Pure."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "not issued by the serving CA"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    missing = sorted(set(names) - set(sans.get_values_for_type(x509.DNSName)))
    if missing:
        return f"names missing: {', '.join(missing)}"
    if cert.not_valid_before_utc > now:
        return "not valid yet"
    if cert.not_valid_after_utc - now <= renew_before:
        return f"expires {cert.not_valid_after_utc.isoformat()}"
    return None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(where: str, data: Any) -> bytes:
    try:
        return base64.b64decode(str(data), validate=True)
    except (ValueError, TypeError):
        raise CertRotationFailed(f"{where}: not base64") from None


class KubeObjects:
    """The few Kubernetes reads and patches rotation needs, as JSON objects, over the official
    client (``CustomObjectsApi`` for API groups, ``CoreV1Api`` for Secrets). Content types are
    always given: newer clients default every PATCH to JSON patch."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes.client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    def secret(self, namespace: str, name: str) -> dict[str, Any]:
        secret = self.core.read_namespaced_secret(name, namespace)
        return cast(dict[str, Any], self.core.api_client.sanitize_for_serialization(secret))

    def update_secret(self, namespace: str, name: str, resource_version: str,
                      data: dict[str, str]) -> None:
        body = {"metadata": {"resourceVersion": resource_version}, "data": data}
        self.core.patch_namespaced_secret(name, namespace, body, _content_type=MERGE_PATCH,
                                          _preload_content=False)

    def webhook_configuration(self, plural: str, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.custom.get_cluster_custom_object(
            "admissionregistration.k8s.io", "v1", plural, name))

    def patch_webhook_configuration(self, plural: str, name: str,
                                    ops: list[dict[str, Any]]) -> None:
        self.custom.patch_cluster_custom_object("admissionregistration.k8s.io", "v1", plural,
                                                name, ops, _content_type=JSON_PATCH)

    def endpoints(self, namespace: str, name: str) -> dict[str, Any]:
        endpoints = self.core.read_namespaced_endpoints(name, namespace)
        return cast(dict[str, Any], self.core.api_client.sanitize_for_serialization(endpoints))


def _ca_from_secret(secret: dict[str, Any], where: str, now: datetime,
                    renew_before: timedelta) -> tuple[ec.EllipticCurvePrivateKey,
                                                      x509.Certificate]:
    data = secret.get("data") or {}
    try:
        ca_cert = x509.load_pem_x509_certificate(_unb64(f"{where} tls.crt", data.get("tls.crt")))
        ca_key = parse_private_key(_unb64(f"{where} tls.key", data.get("tls.key")),
                                   where=f"{where} tls.key")
    except (ValueError, KeysError) as exc:
        raise CertRotationFailed(f"{where}: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or \
            ca_key.public_key() != ca_cert.public_key():
        raise CertRotationFailed(f"{where}: tls.key is not the key of tls.crt")
    if ca_cert.not_valid_after_utc - now <= renew_before:
        raise CertRotationFailed(
            f"{where}: the CA expires {ca_cert.not_valid_after_utc.isoformat()}, within the "
            "renewal window", hint="Replace the CA by hand: `umec webhook certs --dir NEW` "
            "and update Secret umec-webhook-ca; the next run re-issues and patches caBundle.")
    return ca_key, ca_cert


def _current_leaf(secret: dict[str, Any], ca_cert: x509.Certificate, names: list[str],
                  now: datetime, renew_before: timedelta
                  ) -> tuple[x509.Certificate | None, str | None]:
    """The Secret's certificate and why it must be replaced (None: keep it)."""
    raw = (secret.get("data") or {}).get("tls.crt")
    try:
        cert = x509.load_pem_x509_certificate(base64.b64decode(str(raw), validate=True))
    except (ValueError, TypeError):
        return None, "no parsable tls.crt"
    return cert, renewal_reason(cert, ca_cert, names, now, renew_before)


def _api_failed(step: str, exc: Exception) -> CertRotationFailed:
    status = getattr(exc, "status", None)
    return CertRotationFailed(f"{step}: {type(exc).__name__}"
                              + (f" {status}" if status else "") + f": {str(exc)[:200]}")


def _ensure_leaf(api: KubeObjects, config: RotationConfig, ca_key: ec.EllipticCurvePrivateKey,
                 ca_cert: x509.Certificate, now: datetime
                 ) -> tuple[x509.Certificate, bool, str]:
    """Step 2: (the certificate in force, whether it was issued now, why)."""
    names = service_dns_names(config.service, config.namespace)
    renew_before = timedelta(days=config.renew_before_days)
    for attempt in range(2):
        secret = api.secret(config.namespace, config.tls_secret)
        cert, reason = _current_leaf(secret, ca_cert, names, now, renew_before)
        if reason is None and cert is not None:
            return cert, False, f"valid until {cert.not_valid_after_utc.isoformat()}"
        key, new = _leaf(names[2], ca_key, ca_cert, now, config.days,
                         ExtendedKeyUsageOID.SERVER_AUTH, _general_names(names))
        data = {"tls.crt": _b64(new.public_bytes(serialization.Encoding.PEM)),
                "tls.key": _b64(private_key_pem(key)),
                "ca.crt": _b64(ca_cert.public_bytes(serialization.Encoding.PEM))}
        try:
            api.update_secret(config.namespace, config.tls_secret,
                              str(secret["metadata"]["resourceVersion"]), data)
        except Exception as exc:
            if getattr(exc, "status", None) == 409 and attempt == 0:
                continue  # another run wrote it meanwhile: look again
            raise
        return new, True, str(reason)
    raise CertRotationFailed(f"Secret {config.tls_secret}: changed under every attempt")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _bundle_certs(bundle: Any) -> list[x509.Certificate]:
    """The certificates of a caBundle (base64 PEM); none when it is absent or unparsable."""
    try:
        return x509.load_pem_x509_certificates(base64.b64decode(str(bundle), validate=True))
    except (ValueError, TypeError):
        return []


def _old_cas(bundle: Any, ca_cert: x509.Certificate, now: datetime) -> list[x509.Certificate]:
    """The still-valid CA certificates of ``bundle`` other than ``ca_cert``."""
    return [c for c in _bundle_certs(bundle) if c != ca_cert and c.not_valid_after_utc > now]


def bundle_for(current: Any, ca_cert: x509.Certificate, now: datetime, *,
               keep_old: bool) -> str:
    """The caBundle a webhook gets: the CA, followed by the old CAs of ``current`` while
    ``keep_old`` (a CA change whose new leaf not every replica serves yet). Pure."""
    old = _old_cas(current, ca_cert, now) if keep_old else []
    return _b64(_pem(ca_cert) + b"".join(_pem(c) for c in old))


def _hooks(config_obj: dict[str, Any], service: str,
           namespace: str) -> list[tuple[int, dict[str, Any]]]:
    return [(i, hook) for i, hook in enumerate(config_obj.get("webhooks") or [])
            if ((hook.get("clientConfig") or {}).get("service") or {}).get("name") == service
            and hook["clientConfig"]["service"].get("namespace") == namespace]


def _bundle_ops(config_obj: dict[str, Any], config: RotationConfig, ca_cert: x509.Certificate,
                now: datetime, keep_old: bool) -> tuple[list[dict[str, Any]], list[str]]:
    ops: list[dict[str, Any]] = []
    names: list[str] = []
    for i, hook in _hooks(config_obj, config.service, config.namespace):
        current = hook["clientConfig"].get("caBundle")
        bundle = bundle_for(current, ca_cert, now, keep_old=keep_old)
        if current != bundle:
            ops += [{"op": "test", "path": f"/webhooks/{i}/name", "value": hook.get("name")},
                    {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle",
                     "value": bundle}]
            names.append(str(hook.get("name")))
    return ops, names


def _targets(config: RotationConfig) -> list[tuple[str, str, str]]:
    return ([("mutatingwebhookconfigurations", "MutatingWebhookConfiguration", n)
             for n in config.mutating]
            + [("validatingwebhookconfigurations", "ValidatingWebhookConfiguration", n)
               for n in config.validating])


def served_leaf(host: str, port: int, server_name: str,
                timeout: float = 5.0) -> x509.Certificate:
    """The certificate a TLS server at ``host:port`` presents (TLS 1.3, nothing verified: the
    caller checks the issuer). The webhook requires a client certificate; in TLS 1.3 the server
    sends its own before it checks ours, so the handshake completes on our side."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError("no certificate presented")
    return x509.load_der_x509_certificate(der)


def _addresses(endpoints: dict[str, Any]) -> list[tuple[str, int]]:
    """(ip, port) of every ready address of the Service's Endpoints (its ``https`` port, or
    its only one)."""
    out = []
    for subset in endpoints.get("subsets") or []:
        ports = subset.get("ports") or []
        port = next((p for p in ports if p.get("name") == "https"),
                    ports[0] if len(ports) == 1 else None)
        if port is None:
            continue
        out += [(str(a["ip"]), int(port["port"])) for a in subset.get("addresses") or []]
    return out


def replicas_serve_ca(api: KubeObjects, config: RotationConfig,
                      ca_cert: x509.Certificate) -> tuple[bool, str]:
    """Whether every ready replica behind the Service serves a leaf issued by ``ca_cert`` (and
    there is at least one), with what was seen. Any doubt (no Endpoints, unreachable, another
    issuer) is False: the old CAs stay in caBundle."""
    try:
        addresses = _addresses(api.endpoints(config.namespace, config.service))
    except Exception as exc:
        return False, f"Endpoints {config.namespace}/{config.service}: {type(exc).__name__}"
    if not addresses:
        return False, "no ready replica to check"
    for host, port in addresses:
        try:
            leaf = served_leaf(host, port, webhook_host(config.service, config.namespace))
            leaf.verify_directly_issued_by(ca_cert)
        except (OSError, ValueError, TypeError, InvalidSignature) as exc:
            return False, f"{host}:{port} does not serve a leaf of the new CA yet ({exc})"
    return True, f"{len(addresses)} replica(s) serve a leaf of the new CA"


def _ensure_ca_bundles(api: KubeObjects, config: RotationConfig, ca_cert: x509.Certificate,
                       now: datetime) -> tuple[list[str], int, str]:
    """Step 3: (the webhooks whose caBundle was patched, old CAs kept, replicas checked)."""
    objects = [(plural, kind, name, api.webhook_configuration(plural, name))
               for plural, kind, name in _targets(config)]
    old = {_pem(c) for _, _, _, obj in objects
           for _, hook in _hooks(obj, config.service, config.namespace)
           for c in _old_cas(hook["clientConfig"].get("caBundle"), ca_cert, now)}
    keep_old, replicas = False, ""
    if old:   # a CA change under way: drop the old CAs only once no replica needs them
        done, replicas = replicas_serve_ca(api, config, ca_cert)
        keep_old = not done
    patched: list[str] = []
    for plural, kind, name, obj in objects:
        ops, hooks = _bundle_ops(obj, config, ca_cert, now, keep_old)
        if ops:
            api.patch_webhook_configuration(plural, name, ops)
            patched += [f"{kind}/{name}/{hook}" for hook in hooks]
    return patched, len(old) if keep_old else 0, replicas


def rotate_webhook_certs(api: KubeObjects, config: RotationConfig,
                         now: datetime | None = None) -> RotationResult:
    """Steps 1-3 above; :class:`CertRotationFailed` names the step that failed."""
    now = now or datetime.now(UTC)
    where = f"Secret {config.namespace}/{config.ca_secret}"
    try:
        ca_secret = api.secret(config.namespace, config.ca_secret)
    except Exception as exc:
        raise _api_failed(f"reading {where}", exc) from None
    ca_key, ca_cert = _ca_from_secret(ca_secret, where, now,
                                      timedelta(days=config.renew_before_days))
    try:
        cert, issued, reason = _ensure_leaf(api, config, ca_key, ca_cert, now)
    except CertRotationFailed:
        raise
    except Exception as exc:
        raise _api_failed(f"Secret {config.namespace}/{config.tls_secret}", exc) from None
    try:
        patched, kept, replicas = _ensure_ca_bundles(api, config, ca_cert, now)
    except Exception as exc:
        raise _api_failed("caBundle", exc) from None
    return RotationResult(issued, reason, format(cert.serial_number, "x"),
                          cert.not_valid_after_utc, tuple(patched), kept, replicas)
