"""`umec webhook certs`: CA + serving certificate with the Service DNS names, and the API
server's client certificate from a dedicated client CA with the kube-apiserver's admission
configuration; the webhook manifests fail closed, cover every kind and require the client
certificate."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from admission.service.certs import create_webhook_certs
from umec.cli import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


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


def test_the_api_servers_client_certificate_and_admission_configuration(
        tmp_path: Path) -> None:
    c = create_webhook_certs(tmp_path, "umec-webhook", "umec-system")
    client_ca = x509.load_pem_x509_certificate(c.client_ca_cert.read_bytes())
    serving_ca = x509.load_pem_x509_certificate(c.ca_cert.read_bytes())
    client = x509.load_pem_x509_certificate(c.client_cert.read_bytes())
    client.verify_directly_issued_by(client_ca)
    assert client_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert client_ca.public_key() != serving_ca.public_key()  # a dedicated CA
    with pytest.raises(ValueError):  # not by the serving CA
        client.verify_directly_issued_by(serving_ca)
    assert client.subject.rfc4514_string() == "CN=umec-webhook-client"
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not client.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in (c.client_key, c.client_ca_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    admission = yaml.safe_load(c.admission_config.read_text())
    assert (admission["apiVersion"], admission["kind"]) == (
        "apiserver.config.k8s.io/v1", "AdmissionConfiguration")
    plugins = {p["name"]: p["configuration"] for p in admission["plugins"]}
    assert set(plugins) == {"ValidatingAdmissionWebhook", "MutatingAdmissionWebhook"}
    for config in plugins.values():
        assert (config["apiVersion"], config["kind"]) == (
            "apiserver.config.k8s.io/v1", "WebhookAdmissionConfiguration")
        assert Path(config["kubeConfigFile"]) == c.kubeconfig.resolve()
    kubeconfig = yaml.safe_load(c.kubeconfig.read_text())
    assert (kubeconfig["apiVersion"], kubeconfig["kind"]) == ("v1", "Config")
    [user] = kubeconfig["users"]
    assert user["name"] == "umec-webhook.umec-system.svc"
    assert Path(user["user"]["client-certificate"]) == c.client_cert.resolve()
    assert Path(user["user"]["client-key"]) == c.client_key.resolve()
    # Re-issuing keeps the client CA the webhook trusts; the new client cert still verifies.
    again = create_webhook_certs(tmp_path, "umec-webhook", "umec-system",
                                 apiserver_dir="/var/lib/rancher/k3s/server/umec")
    assert again.client_ca_cert.read_bytes() == c.client_ca_cert.read_bytes()
    x509.load_pem_x509_certificate(again.client_cert.read_bytes()).verify_directly_issued_by(
        client_ca)
    assert yaml.safe_load(again.kubeconfig.read_text())["users"][0]["user"][
        "client-key"] == "/var/lib/rancher/k3s/server/umec/apiserver-client.key"
    with pytest.raises(ValueError, match="not an absolute path"):
        create_webhook_certs(tmp_path / "other", "umec-webhook", "umec-system",
                             apiserver_dir="relative/dir")
    assert not (tmp_path / "other").exists()


def test_umec_webhook_certs_says_where_the_files_are(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["webhook", "certs", "--dir", str(tmp_path), "--apiserver-dir",
                                      "/var/lib/rancher/k3s/server/umec"],
                                env={"COLUMNS": "80"}, prog_name="umec")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for name in ("tls.crt", "client-ca.crt", "apiserver-client.crt", "apiserver-client.key",
                 "webhook-kubeconfig.yaml", "admission-config.yaml"):
        assert str(tmp_path / name) in out, name
    assert ("--kube-apiserver-arg=admission-control-config-file="
            "/var/lib/rancher/k3s/server/umec/admission-config.yaml") in out
    assert "UMEC_WEBHOOK_CLIENT_CA" in out
    assert base64.b64decode(out.strip().splitlines()[-1]) == (tmp_path / "ca.crt").read_bytes()
    relative = CliRunner().invoke(app, ["webhook", "certs", "--dir", str(tmp_path / "x"),
                                        "--apiserver-dir", "here"], prog_name="umec")
    assert relative.exit_code == 2
    assert relative.stderr.startswith("error: usage: --apiserver-dir here: not an absolute")


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


def test_the_webhook_deployment_requires_the_api_servers_certificate() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "webhook.yaml").read_text())}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED" not in env
    ca = Path(env["UMEC_WEBHOOK_CLIENT_CA"])
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(ca.parent))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == "umec-webhook-client-ca" and ca.name == "ca.crt"
    # The kubelet has no client certificate: an HTTPS probe would fail every handshake.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe] == {"tcpSocket": {"port": "https"}}
