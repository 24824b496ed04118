"""`umec webhook certs`: CA + serving certificate with the Service DNS names; the webhook
manifests fail closed and cover every kind."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import yaml
from cryptography import x509

from admission.certs import create_webhook_certs

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_certs_names_chain_and_permissions(tmp_path: Path) -> None:
    c = create_webhook_certs(tmp_path, "umec-webhook", "umec-system", extra_names=["127.0.0.1"])
    ca = x509.load_pem_x509_certificate(c.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(c.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "umec-webhook", "umec-webhook.umec-system", "umec-webhook.umec-system.svc",
        "umec-webhook.umec-system.svc.cluster.local"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert base64.b64decode(c.ca_bundle) == c.ca_cert.read_bytes()
    for key in (c.key, c.ca_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # Re-issuing the serving cert keeps the CA, so the caBundle in the cluster stays valid.
    again = create_webhook_certs(tmp_path, "umec-webhook", "umec-system")
    assert again.ca_bundle == c.ca_bundle
    x509.load_pem_x509_certificate(again.cert.read_bytes()).verify_directly_issued_by(ca)


def test_webhook_manifests_fail_closed_and_cover_every_kind() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "webhook.yaml").read_text())}
    assert docs["Deployment"]["spec"]["replicas"] == 2
    for kind, path in (("MutatingWebhookConfiguration", "/mutate"),
                       ("ValidatingWebhookConfiguration", "/validate")):
        hook = docs[kind]["webhooks"][0]
        assert hook["failurePolicy"] == "Fail" and hook["timeoutSeconds"] == 10
        assert hook["clientConfig"]["service"]["path"] == path
        exprs = hook["namespaceSelector"]["matchExpressions"]
        assert {"key": "umec.io/verify", "operator": "In", "values": ["enabled"]} in exprs
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["umec-system"]} in exprs
        resources = {r for rule in hook["rules"] for r in rule["resources"]}
        assert resources == {"pods", "pods/ephemeralcontainers", "deployments", "replicasets",
                             "statefulsets", "daemonsets", "jobs", "cronjobs"}
    crds = [d for d in yaml.safe_load_all((DEPLOY / "crd-imagepolicy.yaml").read_text())]
    assert {(d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in crds} == {
        ("ImagePolicy", "Namespaced"), ("ClusterImagePolicy", "Cluster")}
