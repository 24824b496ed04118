"""``GET /metrics`` of the three HTTP processes, as they are built and served: ``umec server``
(:func:`umec.app.build_server`), ``umec api sensor`` (:func:`umec.api_process.build_api_process`)
and ``umec webhook`` (:func:`umec.webhook_process.build_webhook` over mutual TLS, the options
``umec webhook`` starts with), each on a real uvicorn bound to every address.

With ``UMEC_METRICS_TOKEN`` only ``Authorization: Bearer <token>`` opens the metrics, from
loopback too; anything else is a 401 problem (``metrics.unauthorized``, ``WWW-Authenticate:
Bearer realm="umec-metrics"``). Without it only loopback peers are answered: requests through
the machine's own non-loopback address (a real peer address that is not loopback) are refused.
The webhook's port still requires the API server's client certificate first.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.metrics import METRICS_TOKEN, metrics_auth
from tests.support.webhook import HANDSHAKE_REFUSED, client_tls, webhook_test_certs
from umec.api_process import build_api_process
from umec.app import build_server
from umec.localserver import ServerThread, free_port
from umec.settings import Settings
from umec.webhook_process import build_webhook, check_client_auth, tls_options

PROCESSES = ["server", "api", "webhook"]
# A series only that process exports: the answer is that process's metrics.
SERIES = {"server": "umec_http_requests_total", "api": "umec_sensor_messages_received",
          "webhook": "umec_admission_admitted_total"}
WWW_AUTHENTICATE = 'Bearer realm="umec-metrics"'


def own_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.254", 9))
            host = str(s.getsockname()[0])
    except OSError:
        return None
    return None if host.startswith("127.") else host


@dataclass
class Served:
    port: int
    tls: ssl.SSLContext | None          # the webhook: the API server's client certificate
    anonymous_tls: ssl.SSLContext | None = None   # the webhook: no client certificate

    def get(self, host: str, headers: dict[str, str] | None = None, *,
            anonymous: bool = False) -> httpx.Response:
        scheme = "http" if self.tls is None else "https"
        verify: ssl.SSLContext | bool = (self.anonymous_tls if anonymous else self.tls) or True
        return httpx.get(f"{scheme}://{host}:{self.port}/metrics", headers=headers,
                         verify=verify, timeout=15)


def _webhook_tls(certs_dir: Path, settings: dict[str, Any]) -> tuple[
        dict[str, Any], ssl.SSLContext, ssl.SSLContext]:
    certs = webhook_test_certs(certs_dir)
    settings.update(webhook_tls_cert=certs.cert, webhook_tls_key=certs.key,
                    webhook_client_ca=certs.client_ca_cert)
    apiserver = client_tls(certs, (certs.client_cert, certs.client_key))
    anonymous = client_tls(certs)
    for ctx in (apiserver, anonymous):   # the serving certificate names loopback only
        ctx.check_hostname = False
    return settings, apiserver, anonymous


@contextlib.contextmanager
def serving(process: str, tmp_path: Path, token: str) -> Iterator[Served]:
    """``process`` built from its settings (``metrics_token=token``), served on 0.0.0.0."""
    base: dict[str, Any] = {"data_dir": tmp_path / process, "metrics_token": token}
    tls: dict[str, Any] = {}
    apiserver = anonymous = None
    if process == "server":
        app = build_server(Settings(**base)).app
    elif process == "api":
        # No token service answers there: the metrics do not depend on it.
        app = build_api_process(Settings(**base, token_service_url=f"http://127.0.0.1:"
                                         f"{free_port()}"), ["sensor"])
    else:
        base, apiserver, anonymous = _webhook_tls(tmp_path / "certs", base)
        settings = Settings(**base)
        check_client_auth(settings)
        app, _ = build_webhook(settings)
        tls = tls_options(settings)
    port = free_port("0.0.0.0")
    with ServerThread(app, host="0.0.0.0", port=port, **tls):
        yield Served(port, apiserver, anonymous)


def assert_refused(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == WWW_AUTHENTICATE
    problem = r.json()
    assert problem["check"] == "metrics.unauthorized" and problem["status"] == 401
    assert problem["type"] == "urn:umec:metrics.unauthorized"
    assert "UMEC_METRICS_TOKEN" in problem["hint"]
    assert "umec_" not in r.text       # not one series leaks


def assert_metrics(r: httpx.Response, process: str) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert SERIES[process] in r.text


@pytest.mark.parametrize("process", PROCESSES)
def test_with_a_token_only_the_token_reads_metrics(process: str, tmp_path: Path) -> None:
    peers = ["127.0.0.1", *filter(None, [own_address()])]
    with serving(process, tmp_path, METRICS_TOKEN) as served:
        for host in peers:   # loopback needs the token as well
            assert_refused(served.get(host))
            for wrong in ("wrong-token", METRICS_TOKEN[:-1], METRICS_TOKEN + "x"):
                assert_refused(served.get(host, metrics_auth(wrong)))
            # An empty bearer ("Bearer " arrives as "Bearer": a header's trailing space is
            # not part of its value, and httpx refuses to send one).
            assert_refused(served.get(host, {"Authorization": "Bearer"}))
            assert_refused(served.get(host, {"Authorization": f"Basic {METRICS_TOKEN}"}))
            assert_refused(served.get(host, {"Authorization": METRICS_TOKEN}))
            assert_metrics(served.get(host, metrics_auth()), process)
            assert_metrics(served.get(host, {"Authorization": f"bearer {METRICS_TOKEN}"}),
                           process)


@pytest.mark.parametrize("process", PROCESSES)
def test_without_a_token_only_loopback_reads_metrics(process: str, tmp_path: Path) -> None:
    outside = own_address()
    if outside is None:
        pytest.skip("no non-loopback address on this machine to connect from")
    with serving(process, tmp_path, "") as served:
        assert_metrics(served.get("127.0.0.1"), process)
        assert_refused(served.get(outside))
        # An empty bearer matches no configured token, and an unset token opens nothing.
        for header in ("Bearer", "Bearer anything", f"Bearer {METRICS_TOKEN}"):
            assert_refused(served.get(outside, {"Authorization": header}))


def test_the_webhooks_metrics_need_the_client_certificate_first(tmp_path: Path) -> None:
    """``umec webhook``'s port takes only the API server's certificate: a Prometheus (or
    anyone) without one does not reach /metrics, token or not."""
    with serving("webhook", tmp_path, METRICS_TOKEN) as served:
        with pytest.raises(HANDSHAKE_REFUSED):
            served.get("127.0.0.1", metrics_auth(), anonymous=True)
        assert_metrics(served.get("127.0.0.1", metrics_auth()), "webhook")


def test_an_unauthenticated_webhook_still_guards_its_metrics(tmp_path: Path) -> None:
    """``UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED`` (development) opens the port to anyone; the
    metrics still need the token."""
    certs = webhook_test_certs(tmp_path / "certs")
    settings = Settings(data_dir=tmp_path / "hook", webhook_tls_cert=certs.cert,
                        webhook_tls_key=certs.key, webhook_allow_unauthenticated=True,
                        metrics_token=METRICS_TOKEN)
    app, _ = build_webhook(settings)
    with ServerThread(app, **tls_options(settings)) as http:
        verify = client_tls(certs)
        assert_refused(httpx.get(f"{http.url}/metrics", verify=verify))
        assert_refused(httpx.get(f"{http.url}/metrics", verify=verify,
                                 headers=metrics_auth("guess")))
        r = httpx.get(f"{http.url}/metrics", verify=verify, headers=metrics_auth())
        assert_metrics(r, "webhook")


def test_the_token_comes_from_the_environment_without_a_secret_files_newline(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UMEC_METRICS_TOKEN", f"{METRICS_TOKEN}\n")
    assert Settings(data_dir=tmp_path).metrics_token == METRICS_TOKEN
    monkeypatch.setenv("UMEC_METRICS_TOKEN", " \n")
    assert Settings(data_dir=tmp_path).metrics_token == ""   # blank is unset: loopback only
    monkeypatch.delenv("UMEC_METRICS_TOKEN")
    assert Settings(data_dir=tmp_path).metrics_token == ""


# --- the deployment ----------------------------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _containers(file: str, name: str) -> list[dict[str, Any]]:
    doc = next(d for d in yaml.safe_load_all((DEPLOY / file).read_text())
               if d and d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    containers: list[dict[str, Any]] = doc["spec"]["template"]["spec"]["containers"]
    return containers


@pytest.mark.parametrize(("file", "name"), [("server.yaml", "umec-server"),
                                            ("webhook.yaml", "umec-webhook")])
def test_the_manifests_set_the_token_from_its_secret(file: str, name: str) -> None:
    for container in _containers(file, name):
        env = {e["name"]: e for e in container["env"]}
        assert env["UMEC_METRICS_TOKEN"]["valueFrom"] == {"secretKeyRef": {
            "name": "umec-metrics", "key": "token", "optional": False}}


def test_render_writes_the_metrics_secret_and_keeps_its_token(tmp_path: Path) -> None:
    from umec.deploy_render import RenderConfig, render
    config = RenderConfig(tmp_path / "out", "postgresql://u:p@db/umec")

    def token() -> bytes:
        docs = {d["metadata"]["name"]: d
                for d in yaml.safe_load_all(render(config).secrets_file.read_text())}
        secret = docs["umec-metrics"]
        assert secret["metadata"]["namespace"] == "umec-system" and secret["type"] == "Opaque"
        return base64.b64decode(secret["data"]["token"])
    first = token()
    assert len(first) >= 32 and first == (tmp_path / "out" / "metrics-token").read_bytes()
    assert (tmp_path / "out" / "metrics-token").stat().st_mode & 0o077 == 0
    assert token() == first                       # a second render keeps it
    assert first != (tmp_path / "out" / "operator-token").read_bytes()


def test_the_prometheus_example_sends_the_token_and_checks_the_servers_name() -> None:
    doc = yaml.safe_load((DEPLOY / "examples" / "prometheus-scrape.yaml").read_text())
    job, = yaml.safe_load(doc["data"]["umec-scrape.yaml"])["scrape_configs"]
    assert job["scheme"] == "https" and job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer",
                                    "credentials_file": "/etc/prometheus/umec/token"}
    assert job["tls_config"]["server_name"] == "umec-server.umec-system.svc"
