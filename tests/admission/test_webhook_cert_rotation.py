"""The webhook's serving certificate is kept current in the cluster: ``umec webhook certs
--rotate`` (admission.service.certs.rotate_webhook_certs) against the fake API server holding
deploy/webhook.yaml's own objects. Issued before expiry, caBundle patched on every webhook that
calls the Service (the shipped placeholder included); no pod restart (the webhook reloads its
certificate itself, test_webhook_cert_reload.py); idempotent; refusals typed; and a real TLS
handshake checks the result: a client trusting only the patched caBundle accepts the rotated
certificate under the Service's name.

A CA change (issue 12 review F7) never fails admissions closed: caBundle holds the old CA and
the new one until every ready replica behind the Service serves, in a real TLS handshake, a
leaf from the new CA; a later run then drops the old one."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from admission.service.certs import (
    CertRotationFailed,
    KubeObjects,
    RotationConfig,
    create_webhook_certs,
    renewal_reason,
    rotate_webhook_certs,
    service_dns_names,
)
from tests.support.fake_kube_api import (
    DEPLOYMENTS,
    MUTATING_WEBHOOKS,
    SECRETS,
    STANDARD,
    VALIDATING_WEBHOOKS,
    FakeKubeApi,
    Resource,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The real clock must fall inside what the handshakes check: T0 + 340 days is about now.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=340)
NS = "umec-system"
HOST = "umec-webhook.umec-system.svc"
NOW = T0 + timedelta(days=340)   # about the real time: the handshakes check validity
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints", True)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def manifests(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[FakeKubeApi, Path]]:
    """The fake API server with deploy/webhook.yaml applied and the two Secrets the install
    guide creates from `umec webhook certs --dir` (issued at T0, 365 days)."""
    certs = create_webhook_certs(tmp_path / "certs", "umec-webhook", NS, now=T0)
    with FakeKubeApi((*STANDARD, ENDPOINTS)) as kube:
        for doc in manifests("webhook.yaml"):
            resource = {"Deployment": DEPLOYMENTS, "MutatingWebhookConfiguration":
                        MUTATING_WEBHOOKS, "ValidatingWebhookConfiguration":
                        VALIDATING_WEBHOOKS}.get(doc["kind"])
            if resource is not None:
                kube.apply(resource, doc)
        kube.add_secret(NS, "umec-webhook-ca", "kubernetes.io/tls", {
            "tls.crt": b64(certs.ca_cert.read_bytes()), "tls.key": b64(certs.ca_key.read_bytes())})
        kube.add_secret(NS, "umec-webhook-tls", "kubernetes.io/tls", {
            "tls.crt": b64(certs.cert.read_bytes()), "tls.key": b64(certs.key.read_bytes())})
        yield kube, tmp_path


def api(kube: FakeKubeApi) -> KubeObjects:
    return KubeObjects(kube.core_v1().api_client)


def bundles(kube: FakeKubeApi) -> dict[str, Any]:
    out = {}
    for resource in (MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS):
        for obj in kube.objects[resource].values():
            for hook in obj["webhooks"]:
                out[hook["name"]] = hook["clientConfig"].get("caBundle")
    return out


def served_cert(kube: FakeKubeApi) -> x509.Certificate:
    data = kube.get(SECRETS, "umec-webhook-tls", NS)["data"]
    return x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))


def handshake(kube: FakeKubeApi, tmp_path: Path, bundle: str) -> str:
    """Serve the Secret's certificate over real TLS; a client trusting only ``bundle`` checks
    it under the Service's name. Returns the subject the client saw."""
    data = kube.get(SECRETS, "umec-webhook-tls", NS)["data"]
    (tmp_path / "s.crt").write_bytes(base64.b64decode(data["tls.crt"]))
    (tmp_path / "s.key").write_bytes(base64.b64decode(data["tls.key"]))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    client_ctx = ssl.create_default_context(cadata=base64.b64decode(bundle).decode())
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(listener.getsockname()) as raw, \
            client_ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        peer: Any = tls.getpeercert()
        subject = dict(x[0] for x in peer["subject"])["commonName"]
        tls.send(b"x")
    thread.join(5)
    listener.close()
    return str(subject)


def test_first_run_writes_every_ca_bundle_and_keeps_a_good_certificate(
        cluster: tuple[FakeKubeApi, Path]) -> None:
    kube, tmp = cluster
    assert set(bundles(kube).values()) == {None}   # deploy/webhook.yaml leaves it to the job
    before = served_cert(kube)
    result = rotate_webhook_certs(api(kube), RotationConfig(), now=T0 + timedelta(days=1))
    assert not result.issued and result.reason.startswith("valid until")
    assert served_cert(kube) == before
    ca_pem = base64.b64decode(kube.get(SECRETS, "umec-webhook-ca", NS)["data"]["tls.crt"])
    assert set(bundles(kube).values()) == {b64(ca_pem)}
    assert sorted(result.ca_bundle_patched) == [
        "MutatingWebhookConfiguration/umec-image-pinning/pin.images.umec.io",
        "ValidatingWebhookConfiguration/umec-image-verification/forget.pods.umec.io",
        "ValidatingWebhookConfiguration/umec-image-verification/verify.images.umec.io"]
    assert result.old_cas_kept == 0 and result.replicas == ""   # no CA change: no probe
    assert handshake(kube, tmp, bundles(kube)["verify.images.umec.io"]) == HOST
    # The patch tested each webhook's name before replacing its caBundle.
    patch = next(r for r in kube.requests if r.method == "PATCH"
                 and "mutatingwebhookconfigurations" in r.path)
    assert patch.content_type == "application/json-patch+json"
    assert patch.body[0] == {"op": "test", "path": "/webhooks/0/name",
                             "value": "pin.images.umec.io"}


def test_a_second_run_changes_nothing(cluster: tuple[FakeKubeApi, Path]) -> None:
    kube, _ = cluster
    rotate_webhook_certs(api(kube), RotationConfig(), now=T0 + timedelta(days=1))
    writes = len(kube.calls("PATCH"))
    again = rotate_webhook_certs(api(kube), RotationConfig(), now=T0 + timedelta(days=2))
    assert not again.issued and again.ca_bundle_patched == ()
    assert len(kube.calls("PATCH")) == writes


def test_a_certificate_near_expiry_is_reissued_without_touching_the_pods(
        cluster: tuple[FakeKubeApi, Path]) -> None:
    kube, tmp = cluster
    rotate_webhook_certs(api(kube), RotationConfig(), now=T0 + timedelta(days=1))
    old = served_cert(kube)
    when = T0 + timedelta(days=340)     # 25 days left of 365: inside the 30-day window
    result = rotate_webhook_certs(api(kube), RotationConfig(), now=when)
    new = served_cert(kube)
    assert result.issued and result.reason.startswith("expires") and new != old
    assert new.not_valid_after_utc == when + timedelta(days=90)
    assert new.public_key() != old.public_key()            # a new key, not only a new date
    assert result.ca_bundle_patched == ()   # same CA: bundles stay
    assert not [r for r in kube.requests if "deployments" in r.path]   # pods reload it
    assert handshake(kube, tmp, bundles(kube)["pin.images.umec.io"]) == HOST


@pytest.mark.parametrize("attack", ["other-ca", "wrong-names", "garbage"])
def test_a_replaced_or_broken_certificate_is_reissued(cluster: tuple[FakeKubeApi, Path],
                                                     attack: str) -> None:
    """Someone put a certificate from another CA (or for other names, or junk) in the Secret:
    the next run replaces it with one from the serving CA."""
    kube, tmp = cluster
    if attack == "garbage":
        crt = b64(b"not a certificate")
    else:
        service = "evil" if attack == "wrong-names" else "umec-webhook"
        other_dir = tmp / "other"
        other = create_webhook_certs(other_dir, service, NS, now=T0)
        if attack == "wrong-names":   # same CA, other names
            for name in ("ca.crt", "ca.key"):
                (other_dir / name).write_bytes((tmp / "certs" / name).read_bytes())
            other = create_webhook_certs(other_dir, service, NS, now=T0)
        crt = b64(other.cert.read_bytes())
    secret = kube.get(SECRETS, "umec-webhook-tls", NS)
    secret["data"]["tls.crt"] = crt
    kube.apply(SECRETS, secret)
    result = rotate_webhook_certs(api(kube), RotationConfig(), now=T0 + timedelta(days=1))
    assert result.issued
    ca = x509.load_pem_x509_certificate((tmp / "certs" / "ca.crt").read_bytes())
    assert renewal_reason(served_cert(kube), ca, service_dns_names("umec-webhook", NS),
                          T0 + timedelta(days=1), timedelta(days=30)) is None


@pytest.mark.parametrize("fault", ["no-ca-secret", "ca-expiring", "ca-key-mismatch"])
def test_refusals_are_typed_and_change_nothing(cluster: tuple[FakeKubeApi, Path],
                                              fault: str) -> None:
    kube, tmp = cluster
    when = T0 + timedelta(days=340)
    if fault == "no-ca-secret":
        kube.delete(SECRETS, "umec-webhook-ca", NS)
    elif fault == "ca-expiring":
        when = T0 + timedelta(days=3650 - 10)
    else:
        other = create_webhook_certs(tmp / "other", "umec-webhook", NS, now=T0)
        ca = kube.get(SECRETS, "umec-webhook-ca", NS)
        ca["data"]["tls.key"] = b64(other.ca_key.read_bytes())
        kube.apply(SECRETS, ca)
    before = served_cert(kube)
    with pytest.raises(CertRotationFailed) as err:
        rotate_webhook_certs(api(kube), RotationConfig(), now=when)
    assert err.value.check == "certs.rotation" and "umec-webhook-ca" in err.value.detail
    assert served_cert(kube) == before and not kube.calls("PATCH")


def test_a_concurrent_run_is_not_overwritten(cluster: tuple[FakeKubeApi, Path]) -> None:
    """Two jobs at once: the Secret write carries the resourceVersion read; the loser gets
    409, reads again, finds the winner's fresh certificate and keeps it."""
    kube, _ = cluster
    objects = api(kube)
    real = objects.update_secret
    calls: list[int] = []

    def racing(namespace: str, name: str, rv: str, data: dict[str, str]) -> None:
        if not calls:   # another job writes first, between our read and our write
            calls.append(1)
            rotate_webhook_certs(api(kube), RotationConfig(), now=T0 + timedelta(days=340))
        real(namespace, name, rv, data)
    objects.update_secret = racing  # type: ignore[method-assign, assignment]
    winner_result = rotate_webhook_certs(objects, RotationConfig(), now=T0 + timedelta(days=340))
    assert calls and not winner_result.issued   # our write lost (409); the re-read was fresh
    assert any(r.status == 409 for r in kube.requests)


def test_umec_webhook_certs_rotate_command(cluster: tuple[FakeKubeApi, Path]) -> None:
    """The CronJob's command against the fake API (UMEC_KUBECONFIG): JSON out, exit 0; without
    the CA Secret one stderr line and exit 1, no traceback."""
    kube, tmp = cluster
    env = {**os.environ, "UMEC_KUBECONFIG": str(kube.kubeconfig(tmp / "kubeconfig")),
           "UMEC_DATA_DIR": str(tmp / "data")}
    cmd = [sys.executable, "-m", "umec", "webhook", "certs", "--rotate", "--output", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ca_bundle_patched"]
    kube.delete(SECRETS, "umec-webhook-ca", NS)
    failed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                            check=False)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("error: certs.rotation: ") and failed.stderr.count("\n") == 1


# --- replacing the CA (review F7) ---------------------------------------------------------------

class Replica:
    """One webhook replica on loopback: real TLS 1.3 requiring a client certificate from the
    client CA, as ``umec webhook`` serves, with its certificate swapped in place the way the
    webhook reloads it."""

    def __init__(self, cert: bytes, key: bytes, certs: Path, scratch: Path) -> None:
        self.certs, self.scratch = certs, scratch
        scratch.mkdir()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(str(certs / "client-ca.crt"))
        self.serve(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._loop, daemon=True).start()

    def serve(self, cert: bytes, key: bytes) -> None:
        (self.scratch / "replica.pem").write_bytes(cert + key)
        self.ctx.load_cert_chain(self.scratch / "replica.pem")

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    def client_sees(self, bundle: str) -> bool:
        """A client trusting only ``bundle`` (as the API server does) accepts the replica."""
        ctx = ssl.create_default_context(cadata=base64.b64decode(bundle).decode())
        ctx.load_cert_chain(self.certs / "apiserver-client.crt",
                            self.certs / "apiserver-client.key")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=HOST) as tls:
                tls.send(b"x")
            return True
        except ssl.SSLError:
            return False


def endpoints(kube: FakeKubeApi, *ports: int) -> None:
    kube.apply(ENDPOINTS, {"metadata": {"name": "umec-webhook", "namespace": NS}, "subsets": [
        {"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": port}]}
        for port in ports]})


def secret_pair(kube: FakeKubeApi) -> tuple[bytes, bytes]:
    data = kube.get(SECRETS, "umec-webhook-tls", NS)["data"]
    return base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])


def replace_ca(kube: FakeKubeApi, tmp: Path) -> tuple[bytes, bytes]:
    """The operator puts a new CA in Secret umec-webhook-ca; returns (old, new) CA PEM."""
    old = base64.b64decode(kube.get(SECRETS, "umec-webhook-ca", NS)["data"]["tls.crt"])
    new = create_webhook_certs(tmp / "new-ca", "umec-webhook", NS, now=T0)
    ca = kube.get(SECRETS, "umec-webhook-ca", NS)
    ca["data"] = {"tls.crt": b64(new.ca_cert.read_bytes()), "tls.key": b64(new.ca_key.read_bytes())}
    kube.apply(SECRETS, ca)
    return old, new.ca_cert.read_bytes()


def test_a_new_ca_joins_the_bundle_and_the_old_leaves_only_once_every_replica_serves_it(
        cluster: tuple[FakeKubeApi, Path]) -> None:
    kube, tmp = cluster
    rotate_webhook_certs(api(kube), RotationConfig(), now=T0 + timedelta(days=1))
    replicas = [Replica(*secret_pair(kube), tmp / "certs", tmp / f"replica{i}") for i in (0, 1)]
    endpoints(kube, *(r.port for r in replicas))
    old_ca, new_ca = replace_ca(kube, tmp)
    old_leaf = secret_pair(kube)

    swapped = rotate_webhook_certs(api(kube), RotationConfig(), now=NOW)
    assert swapped.issued and swapped.reason == "not issued by the serving CA"
    assert set(bundles(kube).values()) == {b64(new_ca + old_ca)}   # both: nothing fails
    assert swapped.old_cas_kept == 1 and "does not serve a leaf of the new CA" in swapped.replicas
    for replica in replicas:     # still the old leaf: the API server keeps trusting it
        assert replica.client_sees(bundles(kube)["verify.images.umec.io"])

    replicas[0].serve(*secret_pair(kube))     # one replica reloaded the new leaf, one not yet
    assert replicas[0].client_sees(bundles(kube)["verify.images.umec.io"])
    pending = rotate_webhook_certs(api(kube), RotationConfig(), now=NOW + timedelta(minutes=1))
    assert pending.old_cas_kept == 1 and pending.ca_bundle_patched == ()
    assert f"127.0.0.1:{replicas[1].port}" in pending.replicas

    replicas[1].serve(*secret_pair(kube))
    done = rotate_webhook_certs(api(kube), RotationConfig(), now=NOW + timedelta(minutes=2))
    assert done.old_cas_kept == 0 and "2 replica(s)" in done.replicas
    assert set(bundles(kube).values()) == {b64(new_ca)} and len(done.ca_bundle_patched) == 3
    assert all(r.client_sees(bundles(kube)["pin.images.umec.io"]) for r in replicas)
    replicas[0].serve(*old_leaf)              # the old CA's leaf is no longer trusted
    assert not replicas[0].client_sees(bundles(kube)["pin.images.umec.io"])


@pytest.mark.parametrize("doubt", ["no-endpoints", "unreachable", "no-ready-address"])
def test_the_old_ca_stays_while_the_replicas_cannot_be_checked(
        cluster: tuple[FakeKubeApi, Path], doubt: str) -> None:
    kube, tmp = cluster
    rotate_webhook_certs(api(kube), RotationConfig(), now=T0 + timedelta(days=1))
    old_ca, new_ca = replace_ca(kube, tmp)
    rotate_webhook_certs(api(kube), RotationConfig(), now=NOW)
    if doubt == "unreachable":
        with socket.create_server(("127.0.0.1", 0)) as closed:
            port = int(closed.getsockname()[1])
        endpoints(kube, port)
    elif doubt == "no-ready-address":
        endpoints(kube)
    again = rotate_webhook_certs(api(kube), RotationConfig(), now=NOW + timedelta(minutes=1))
    assert again.old_cas_kept == 1 and again.ca_bundle_patched == ()
    assert set(bundles(kube).values()) == {b64(new_ca + old_ca)}
