"""The admission webhook takes reviews only from the kube-apiserver: mutual TLS.

Over real HTTPS on loopback (uvicorn with :func:`umec.webhook_process.tls_options`, the options
``umec webhook`` starts with when ``UMEC_WEBHOOK_CLIENT_CA`` is set; certificates from
``umec webhook certs``): a peer without a client certificate, or with one from another CA, is
refused in the TLS handshake and its review never reaches the app; the API server's certificate
gets answers as before. ``umec webhook`` refuses to start without a client CA unless the
operator opts out, and refuses a client CA file that holds no CA certificate.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from admission.core.policy import load_policies
from admission.service.certs import WebhookCerts
from admission.service.rego import RegoEvaluator
from admission.service.webhook import WebhookDeps, create_webhook_app
from keys import load_private_key, save_private_key
from tests.support.cli import assert_error, clean_env, umec_process
from tests.support.webhook import (
    D1,
    HANDSHAKE_REFUSED,
    FakeRecords,
    FakeResolver,
    FakeVerifier,
    authority,
    client_tls,
    key,
    pod_spec,
    policy_doc,
    review,
    serve_mtls,
    webhook_test_certs,
    workload,
)
from umec.cli_errors import EXIT_USAGE
from umec.localserver import free_port
from umec.settings import Settings
from umec.webhook_process import (
    UNAUTHENTICATED_RISK,
    WebhookTlsInvalid,
    check_client_auth,
    check_client_ca,
    tls_options,
)

REG = "127.0.0.1:5000"
SIGNER = key()
SIGNED, UNSIGNED = f"{REG}/tenant/app@{D1}", f"{REG}/tenant/other@{D1}"


@dataclass
class Mtls:
    url: str
    certs: WebhookCerts
    records: FakeRecords
    seen: list[str] = field(default_factory=list)   # paths of requests that reached the app

    def post(self, doc: dict[str, Any], client: tuple[Path, Path] | None) -> httpx.Response:
        return httpx.post(f"{self.url}/validate", json=doc, timeout=10,
                          verify=client_tls(self.certs, client))

    @property
    def apiserver(self) -> tuple[Path, Path]:
        return self.certs.client_cert, self.certs.client_key


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[Mtls]:
    policies = load_policies([policy_doc("a", [f"{REG}/**"], [authority("a", {"a": SIGNER})],
                                         namespace="tenant-a")])
    verifier = FakeVerifier()
    verifier.sign(SIGNED, SIGNER)
    records = FakeRecords()
    app = create_webhook_app(WebhookDeps(policies=lambda: policies, resolver=FakeResolver(),
                                         verifier=verifier, rego=RegoEvaluator(),
                                         records=records))
    seen: list[str] = []

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(scope["path"])
        await app(scope, receive, send)
    with serve_mtls(counting, tmp_path / "certs") as (url, certs):
        yield Mtls(url, certs, records, seen)


def pod_review(image: str, uid: str = "pod-1") -> dict[str, Any]:
    return review(workload("Pod", pod_spec([image]), name=uid, uid=uid), uid=f"r-{uid}")


def issue(directory: Path, name: str, *, ca: tuple[Path, Path] | None,
          usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH) -> tuple[Path, Path]:
    """A client certificate and key: issued by ``ca`` (certificate, key files), or
    self-signed when ``ca`` is None."""
    now = datetime.now(UTC)
    k = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer, signer = subject, k
    if ca is not None:
        issuer = x509.load_pem_x509_certificate(ca[0].read_bytes()).subject
        loaded = load_private_key(ca[1])
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signer = loaded
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(k.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(signer, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    save_private_key(key_path, k)
    return cert_path, key_path


def raw_exchange(url: str, certs: WebhookCerts, client: tuple[Path, Path] | None) -> str:
    """One request from a raw TLS client: "answered" (an HTTP 200), or "refused" when the
    connection ends without one. (uvicorn's asyncio TLS closes a refused handshake without
    flushing its alert, so the client sees an EOF, not the alert's reason.)"""
    port = int(url.rsplit(":", 1)[1])
    ctx = client_tls(certs, client)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                data = tls.recv(4096)
        except (ssl.SSLError, ConnectionError):
            return "refused"
    if data.startswith(b"HTTP/1.1 200"):
        return "answered"
    assert data == b"", data[:80]
    return "refused"


# --- the handshake ------------------------------------------------------------------------------

def test_without_a_client_certificate_the_review_never_reaches_the_app(mtls: Mtls) -> None:
    with pytest.raises(HANDSHAKE_REFUSED):
        mtls.post(pod_review(SIGNED), client=None)
    assert mtls.seen == [] and mtls.records.rows == []
    assert raw_exchange(mtls.url, mtls.certs, None) == "refused"
    assert mtls.seen == []


@pytest.mark.parametrize("foreign", ["self-signed", "serving CA", "serving certificate",
                                     "client CA without clientAuth"])
def test_a_certificate_not_from_the_client_ca_is_refused(mtls: Mtls, tmp_path: Path,
                                                         foreign: str) -> None:
    """Only the dedicated client CA counts: not a self-signed certificate, not one from the
    webhook's serving CA (whose key sits beside the serving certificate), not the serving
    certificate the webhook pod itself holds, not a client-CA certificate for serverAuth."""
    c = mtls.certs
    client = {
        "self-signed": lambda: issue(tmp_path, "self", ca=None),
        "serving CA": lambda: issue(tmp_path, "by-serving-ca", ca=(c.ca_cert, c.ca_key)),
        "serving certificate": lambda: (c.cert, c.key),
        "client CA without clientAuth": lambda: issue(
            tmp_path, "server-usage", ca=(c.client_ca_cert, c.client_ca_key),
            usage=ExtendedKeyUsageOID.SERVER_AUTH),
    }[foreign]()
    with pytest.raises(HANDSHAKE_REFUSED):
        mtls.post(pod_review(SIGNED), client=client)
    assert raw_exchange(mtls.url, c, client) == "refused"
    assert mtls.seen == [] and mtls.records.rows == []


def test_the_api_servers_certificate_gets_answers_as_before(mtls: Mtls) -> None:
    allowed = mtls.post(pod_review(SIGNED, "pod-signed"), client=mtls.apiserver)
    assert allowed.status_code == 200 and allowed.json()["response"]["allowed"] is True
    denied = mtls.post(pod_review(UNSIGNED, "pod-unsigned"), client=mtls.apiserver)
    assert denied.status_code == 200 and denied.json()["response"]["allowed"] is False
    assert mtls.seen == ["/validate", "/validate"]
    assert [(r["uid"], r["verified"]) for r in mtls.records.rows] == [("pod-signed", True)]
    assert raw_exchange(mtls.url, mtls.certs, mtls.apiserver) == "answered"
    assert mtls.seen[-1] == "/healthz"


# --- the settings -------------------------------------------------------------------------------

def settings(certs: WebhookCerts, **extra: Any) -> Settings:
    return Settings(data_dir=certs.ca_cert.parent / "data", webhook_tls_cert=certs.cert,
                    webhook_tls_key=certs.key, **extra)


def test_tls_options_require_the_client_ca_or_an_explicit_opt_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    certs = webhook_test_certs(tmp_path)
    options = tls_options(settings(certs, webhook_client_ca=certs.client_ca_cert))
    assert options["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert options["ssl_ca_certs"] == str(certs.client_ca_cert)
    with pytest.raises(WebhookTlsInvalid) as refused:
        tls_options(settings(certs))
    assert "UMEC_WEBHOOK_CLIENT_CA is not set" in refused.value.detail
    assert "UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED" in refused.value.hint
    with pytest.raises(WebhookTlsInvalid):
        check_client_auth(settings(certs))
    with caplog.at_level(logging.WARNING, logger="umec.webhook"):
        options = tls_options(settings(certs, webhook_allow_unauthenticated=True))
    assert "ssl_cert_reqs" not in options and "ssl_ca_certs" not in options
    assert [r.getMessage() for r in caplog.records] == [UNAUTHENTICATED_RISK]
    assert "forged Pod DELETE" in UNAUTHENTICATED_RISK
    # The opt-out never weakens a configured client CA.
    both = tls_options(settings(certs, webhook_client_ca=certs.client_ca_cert,
                                webhook_allow_unauthenticated=True))
    assert both["ssl_cert_reqs"] == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "no PEM certificate"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
     "no PEM certificate"),
    (b"just text\n", "no PEM certificate"),
    ("client", "is not a CA certificate"),
])
def test_the_client_ca_file_must_hold_ca_certificates(tmp_path: Path, content: bytes | str,
                                                      reason: str) -> None:
    certs = webhook_test_certs(tmp_path / "certs")
    assert check_client_ca(certs.client_ca_cert) == 1
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content if isinstance(content, bytes) else certs.client_cert.read_bytes())
    with pytest.raises(WebhookTlsInvalid) as refused:
        check_client_ca(bad)
    assert reason in refused.value.detail and str(bad) in refused.value.detail


# --- umec webhook -------------------------------------------------------------------------------

@pytest.fixture
def env(tmp_path: Path) -> dict[str, str | None]:
    """No UMEC_* from the caller's environment; state in tmp_path (as in test_cli_errors.py)."""
    return clean_env(tmp_path)


def webhook_env(env: dict[str, str | None], certs: WebhookCerts,
                **extra: str) -> dict[str, str | None]:
    return {**env, "UMEC_WEBHOOK_TLS_CERT": str(certs.cert),
            "UMEC_WEBHOOK_TLS_KEY": str(certs.key), "UMEC_WEBHOOK_PORT": str(free_port()),
            **extra}


def test_umec_webhook_refuses_to_start_without_client_authentication(
        tmp_path: Path, env: dict[str, str | None]) -> None:
    """A process each: were a check gone, `umec webhook` would start serving (and the test
    would fail on its timeout)."""
    certs = webhook_test_certs(tmp_path / "certs")
    line = assert_error(umec_process(["webhook"], webhook_env(env, certs)), EXIT_USAGE,
                        "error: settings.invalid: UMEC_WEBHOOK_CLIENT_CA is not set",
                        "UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED=true", "umec webhook certs")
    assert "development only" in line
    for name, content in (("empty.pem", b""), ("garbage.pem", b"-----BEGIN CERTIFICATE-----\n"),
                          ("leaf.pem", certs.client_cert.read_bytes())):
        (tmp_path / name).write_bytes(content)
        assert_error(umec_process(["webhook"], webhook_env(
            env, certs, UMEC_WEBHOOK_CLIENT_CA=str(tmp_path / name))), EXIT_USAGE,
            "error: settings.invalid: UMEC_WEBHOOK_CLIENT_CA", name,
            "client-ca.crt from `umec webhook certs`")
    assert_error(umec_process(["webhook"], webhook_env(
        env, certs, UMEC_WEBHOOK_CLIENT_CA=str(tmp_path / "missing.pem"))), EXIT_USAGE,
        "error: file: UMEC_WEBHOOK_CLIENT_CA", "missing.pem", "No such file")


def test_the_cli_refuses_before_the_handover(tmp_path: Path, env: dict[str, str | None],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI itself checks, before it replaces itself with the webhook process (replaced
    here by a recorder, so a missing check cannot exec over the test run)."""
    from tests.support.cli import umec as run_umec
    from umec import webhook_process
    handed: list[tuple[str, int]] = []
    monkeypatch.setattr(webhook_process, "handover",
                        lambda host, port: handed.append((host, port)))
    certs = webhook_test_certs(tmp_path / "certs")
    (tmp_path / "empty.pem").write_bytes(b"")
    assert_error(run_umec(["webhook"], webhook_env(env, certs)), EXIT_USAGE,
                 "UMEC_WEBHOOK_CLIENT_CA is not set")
    assert_error(run_umec(["webhook"], webhook_env(
        env, certs, UMEC_WEBHOOK_CLIENT_CA=str(tmp_path / "empty.pem"))), EXIT_USAGE,
        "no PEM certificate")
    assert handed == []
    for extra in ({"UMEC_WEBHOOK_CLIENT_CA": str(certs.client_ca_cert)},
                  {"UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED": "true"}):
        code, _, stderr = run_umec(["webhook", "--port", "9"], webhook_env(env, certs, **extra))
        assert code == 0 and stderr == ""
    assert handed == [("0.0.0.0", 9), ("0.0.0.0", 9)]


def test_the_webhook_process_refuses_too_when_started_directly(
        tmp_path: Path, env: dict[str, str | None]) -> None:
    certs = webhook_test_certs(tmp_path / "certs")
    full = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    full.update({k: v for k, v in webhook_env(env, certs).items() if v is not None})
    done = subprocess.run([sys.executable, "-m", "umec.webhook_process"], env=full,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        "error: settings.invalid: UMEC_WEBHOOK_CLIENT_CA is not set")


def test_the_opt_out_starts_the_webhook_with_a_warning_naming_the_risk(
        tmp_path: Path, env: dict[str, str | None]) -> None:
    certs = webhook_test_certs(tmp_path / "certs")
    run_env = webhook_env(env, certs, UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED="true")
    full = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    full.update({k: v for k, v in run_env.items() if v is not None})
    port = int(full["UMEC_WEBHOOK_PORT"])
    proc = subprocess.Popen([sys.executable, "-m", "umec", "webhook", "--host", "127.0.0.1"],
                            env=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"https://localhost:{port}/healthz",
                              verify=client_tls(certs, None))
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert r.status_code == 200  # no client certificate needed: that is the risk
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    warnings = [json.loads(line) for line in stderr.splitlines()
                if line.startswith("{") and '"webhook.unauthenticated"' in line]
    assert [(w["level"], w["msg"]) for w in warnings] == [("warning", UNAUTHENTICATED_RISK)]
