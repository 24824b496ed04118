"""The webhook's serving certificate is kept current in the cluster: ``umec webhook certs
--rotate`` (admission.service.certs.rotate_webhook_certs) against the fake API server holding
deploy/webhook.yaml's own objects. Issued before expiry, caBundle patched on every webhook that
calls the Service (the shipped placeholder included), the pods rolled; idempotent; refusals
typed; and a real TLS handshake checks the result: a client trusting only the patched caBundle
accepts the rotated certificate under the Service's name."""

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
    CERT_ANNOTATION,
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
    VALIDATING_WEBHOOKS,
    FakeKubeApi,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# The real clock must fall inside what the handshakes check: T0 + 340 days is about now.
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=340)
NS = "umec-system"
HOST = "umec-webhook.umec-system.svc"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def manifests(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[FakeKubeApi, Path]]:
    """The fake API server with deploy/webhook.yaml applied and the two Secrets the install
    guide creates from `umec webhook certs --dir` (issued at T0, 365 days)."""
    certs = create_webhook_certs(tmp_path / "certs", "umec-webhook", NS, now=T0)
    with FakeKubeApi() as kube:
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
    assert result.restarted   # the template learns the certificate it serves
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
    assert not again.issued and not again.restarted and again.ca_bundle_patched == ()
    assert len(kube.calls("PATCH")) == writes


def test_a_certificate_near_expiry_is_reissued_and_the_pods_roll(
        cluster: tuple[FakeKubeApi, Path]) -> None:
    kube, tmp = cluster
    rotate_webhook_certs(api(kube), RotationConfig(), now=T0 + timedelta(days=1))
    old = served_cert(kube)
    annotation = kube.get(DEPLOYMENTS, "umec-webhook", NS)["spec"]["template"]["metadata"][
        "annotations"][CERT_ANNOTATION]
    when = T0 + timedelta(days=340)     # 25 days left of 365: inside the 30-day window
    result = rotate_webhook_certs(api(kube), RotationConfig(), now=when)
    new = served_cert(kube)
    assert result.issued and result.reason.startswith("expires") and new != old
    assert new.not_valid_after_utc == when + timedelta(days=90)
    assert new.public_key() != old.public_key()            # a new key, not only a new date
    assert result.restarted and result.ca_bundle_patched == ()   # same CA: bundles stay
    assert kube.get(DEPLOYMENTS, "umec-webhook", NS)["spec"]["template"]["metadata"][
        "annotations"][CERT_ANNOTATION] != annotation
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
