"""Observability of ``umec server`` (issue 14), as it is built and served on loopback: request
ids and access lines, the log line of a refused operator call, and the attestation metrics
(nodes by state and the evidence-age histogram read from the database at scrape time, rounds
and failed checks counted as they happen), driven by simulated nodes over HTTP."""

from __future__ import annotations

import hashlib
import re
import ssl
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from admission.service.webhook import WebhookDeps, denied_check
from tests.support.jsonlog import json_lines
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from tests.support.webhook import (
    D1,
    HANDSHAKE_REFUSED,
    client_tls,
    pod_spec,
    review,
    webhook_test_certs,
    workload,
)
from umec.api_process import build_api_process
from umec.app import Server, build_server
from umec.localserver import ServerThread, free_port
from umec.settings import Settings
from umec.webhook_process import build_webhook, tls_options

GENERATED = re.compile(r"^[0-9a-f]{32}$")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@dataclass
class Site:
    server: Server
    client: httpx.Client
    url: str

    def operator(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.operator_token}"}

    def node(self, name: str) -> SimulatedNode:
        node = SimulatedNode(name, self.client)
        self.server.attest.config.ek_allowlist = frozenset(
            {*self.server.attest.config.ek_allowlist,
             hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()})
        node.enroll_and_activate()
        return node


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi.yaml").write_text(k3s_policy("00" * 32))
    server = build_server(Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                                   default_node_class="pi-k3s"))
    with ServerThread(server.app) as http, httpx.Client(base_url=http.url, timeout=10) as c:
        yield Site(server, c, http.url)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_server_answers_carry_request_ids_and_access_lines(site: Site) -> None:
    with json_lines() as lines:
        mine = site.client.get("/healthz", headers={"X-Request-ID": "probe-7"})
        made = site.client.get("/healthz")
        bad = site.client.get("/healthz", headers={"X-Request-ID": "x" * 129})
        gone = site.client.get("/no/such/thing", headers={"X-Request-ID": "nf-1"})
        lines.wait_for(4, logger="umec.access")
    assert mine.headers["x-request-id"] == "probe-7"
    assert GENERATED.match(made.headers["x-request-id"])
    assert GENERATED.match(bad.headers["x-request-id"])
    assert gone.status_code == 404 and gone.headers["x-request-id"] == "nf-1"
    [access] = lines.where(logger="umec.access", request_id="probe-7")
    assert access == {**access, "msg": "request", "method": "GET", "path": "/healthz",
                      "route": "/healthz", "status": 200, "peer": "127.0.0.1"}
    assert lines.where(logger="umec.access", request_id=bad.headers["x-request-id"])


def test_a_refused_operator_call_is_one_warning_line(site: Site) -> None:
    with json_lines() as lines:
        r = site.client.get("/attest/v1/nodes", headers={"X-Request-ID": "op-1",
                                                         "Authorization": "Bearer s3cr3t-guess"})
        ok = site.client.get("/attest/v1/nodes", headers=site.operator())
    assert r.status_code == 401 and r.json()["check"] == "operator.token"
    assert r.headers["x-request-id"] == "op-1" and ok.status_code == 200
    [refused] = lines.where(msg="request refused")
    assert refused == {**refused, "level": "warning", "route": "/attest/v1/nodes",
                       "check": "operator.token", "status": 401, "peer": "127.0.0.1",
                       "request_id": "op-1", "method": "GET"}
    assert "s3cr3t-guess" not in str(lines.lines)   # the bearer is never logged


def test_a_refused_protocol_request_is_logged_once(site: Site) -> None:
    with json_lines() as lines:
        r = site.client.post("/attest/v1/nodes/ghost/challenge",
                             headers={"X-Request-ID": "ghost-1"})
    assert r.status_code == 404, r.text
    [refused] = lines.where(msg="request refused")
    assert refused == {**refused, "route": "/attest/v1/nodes/{node}/challenge",
                       "path": "/attest/v1/nodes/ghost/challenge", "check": r.json()["check"],
                       "status": 404, "peer": "127.0.0.1", "request_id": "ghost-1"}


def _metrics(site: Site) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = site.client.get("/metrics")
    assert r.status_code == 200, r.text
    return samples(r.text)


def test_attestation_metrics(site: Site) -> None:
    # The counters are the process's (other tests count too): compare with their values now.
    # The fleet is scraped once, after the rounds (it is cached for 5 s).
    before = samples(generate_latest(REGISTRY).decode())
    good = [site.node("node-good-1"), site.node("node-good-2")]
    bad, fresh = site.node("node-bad"), site.node("node-new")
    assert [g.attest()["state"] for g in good] == ["trusted", "trusted"]
    bad.tpm.extend(14, b"tampered")
    verdict = bad.attest()
    assert verdict["state"] == "untrusted"
    failed = Counter(f["check"] for f in verdict["failed_checks"])
    assert failed
    del fresh
    found = _metrics(site)
    assert value(found, "umec_attest_nodes", state="trusted") == 2.0
    assert value(found, "umec_attest_nodes", state="untrusted") == 1.0
    assert value(found, "umec_attest_nodes", state="enrolled") == 1.0   # fresh: no round yet
    assert value(found, "umec_attest_nodes", state="stale") == 0.0
    assert value(found, "umec_attest_evidence_rounds_total") == value(
        before, "umec_attest_evidence_rounds_total") + 3
    for check, times in failed.items():   # counted when the verdict was recorded
        assert value(found, "umec_attest_failed_checks_total", check=check) == value(
            before, "umec_attest_failed_checks_total", check=check) + times
    # Three nodes sent evidence just now (the fresh one never did): all in the first bucket.
    assert value(found, "umec_attest_evidence_age_seconds_count") == 3.0
    assert value(found, "umec_attest_evidence_age_seconds_bucket", le="5.0") == 3.0
    assert value(found, "umec_attest_evidence_age_seconds_bucket", le="+Inf") == 3.0
    assert 0 <= value(found, "umec_attest_evidence_age_seconds_sum") < 10


def test_the_fleet_is_read_from_the_database_whoever_changed_it(site: Site,
                                                                tmp_path: Path) -> None:
    """Another replica's change is in this one's metrics: the gauge is the table, not a
    count kept in memory (a second server on the same database stands in for the replica)."""
    other = build_server(Settings(data_dir=tmp_path / "srv",
                                  policy_dir=tmp_path / "policies",
                                  default_node_class="pi-k3s"))
    with ServerThread(other.app) as http, httpx.Client(base_url=http.url, timeout=10) as c:
        node = SimulatedNode("node-elsewhere", c)
        other.attest.config.ek_allowlist = frozenset(
            {hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()})
        node.enroll_and_activate()
        assert node.attest()["state"] == "trusted"
    found = _metrics(site)
    assert value(found, "umec_attest_nodes", state="trusted") == 1.0
    assert value(found, "umec_attest_evidence_age_seconds_count") == 1.0


# --- umec webhook -------------------------------------------------------------------------------

@dataclass
class Hook:
    url: str
    tls: ssl.SSLContext
    deps: WebhookDeps
    database: Path


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[Hook]:
    """``umec webhook`` as it is built (SQLite in its data directory) and served (mTLS)."""
    certs = webhook_test_certs(tmp_path / "certs")
    settings = Settings(data_dir=tmp_path / "hook", webhook_tls_cert=certs.cert,
                        webhook_tls_key=certs.key, webhook_client_ca=certs.client_ca_cert)
    app, deps = build_webhook(settings)
    apiserver = client_tls(certs, (certs.client_cert, certs.client_key))
    apiserver.check_hostname = False
    database = Path(settings.resolved_database_url().removeprefix("sqlite:///"))
    with ServerThread(app, **tls_options(settings)) as http:
        yield Hook(http.url, apiserver, deps, database)


def test_webhook_readyz(hook: Hook) -> None:
    r = httpx.get(f"{hook.url}/readyz", verify=hook.tls, headers={"X-Request-ID": "rz-1"})
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    assert r.headers["x-request-id"] == "rz-1"
    # Policies not loaded yet (a PolicyWatch before its first lists): 503, named.
    loaded, hook.deps.policies_loaded = hook.deps.policies_loaded, lambda: False
    r = httpx.get(f"{hook.url}/readyz", verify=hook.tls)
    assert r.status_code == 503 and r.json()["check"] == "webhook.policies_loading"
    assert r.headers["content-type"] == "application/problem+json"
    hook.deps.policies_loaded = loaded
    # The database gone (its file replaced by a directory SQLite cannot open).
    assert hook.deps.records is not None
    hook.deps.records.engine.dispose()   # type: ignore[attr-defined]
    hook.database.rename(hook.database.with_suffix(".away"))
    hook.database.mkdir()
    with json_lines() as lines:
        r = httpx.get(f"{hook.url}/readyz", verify=hook.tls, headers={"X-Request-ID": "rz-2"})
    assert r.status_code == 503 and r.json()["check"] == "database.reachable", r.text
    assert "OperationalError" in r.json()["detail"]
    [refused] = lines.where(msg="request refused")
    assert refused == {**refused, "route": "/readyz", "check": "database.reachable",
                       "status": 503, "request_id": "rz-2", "peer": "127.0.0.1"}
    hook.database.rmdir()
    hook.database.with_suffix(".away").rename(hook.database)
    assert httpx.get(f"{hook.url}/readyz", verify=hook.tls).status_code == 200


def test_webhook_denials_are_logged_with_their_check(hook: Hook) -> None:
    pod = workload("Pod", pod_spec([f"registry.example/tenant/app@{D1}"]), namespace="tenant")
    with json_lines() as lines:
        r = httpx.post(f"{hook.url}/validate", verify=hook.tls, timeout=20,
                       json=review(pod, uid="deny-uid"), headers={"X-Request-ID": "adm-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "adm-1"
    answer = r.json()["response"]
    assert answer["allowed"] is False and "policy.no_match" in answer["status"]["message"]
    [denied] = lines.where(msg="admission denied")
    assert denied == {**denied, "level": "warning", "logger": "umec.admission",
                      "route": "/validate", "check": "policy.no_match", "peer": "127.0.0.1",
                      "uid": "deny-uid", "request_id": "adm-1"}
    assert denied["reason"] == answer["status"]["message"]
    [access] = lines.where(logger="umec.access", request_id="adm-1")
    assert access["route"] == "/validate" and access["status"] == 200


@pytest.mark.parametrize(("message", "check"), [
    ("spec.containers[0]: image r.example/a@sha256:11: signature.untrusted: no key",
     "signature.untrusted"),
    ("spec.containers[0]: image r.example:5000/a:1: digest.required: pin it", "digest.required"),
    ("record.failed: OperationalError", "record.failed"),
    ("internal: TypeError (denied)", "admission.denied"),
    ("", "admission.denied"),
])
def test_a_denials_check_is_the_first_one_its_message_names(message: str, check: str) -> None:
    assert denied_check(message) == check


def test_a_kubelet_probe_cannot_reach_readyz(hook: Hook) -> None:
    """Why deploy/webhook.yaml keeps TCP probes: the kubelet's HTTPS probe skips verification
    but presents no client certificate, and the handshake refuses it."""
    kubelet = ssl.create_default_context()
    kubelet.check_hostname, kubelet.verify_mode = False, ssl.CERT_NONE
    with pytest.raises(HANDSHAKE_REFUSED):
        httpx.get(f"{hook.url}/readyz", verify=kubelet)
    probes = [c for d in yaml.safe_load_all((DEPLOY / "webhook.yaml").read_text())
              if d and d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]]
    assert probes and all(c["readinessProbe"] == {"tcpSocket": {"port": "https"}}
                          for c in probes)


def test_umec_api_answers_carry_request_ids(tmp_path: Path) -> None:
    app = build_api_process(Settings(data_dir=tmp_path / "api", token_service_url=(
        f"http://127.0.0.1:{free_port()}")), ["sensor"])
    with ServerThread(app) as http, json_lines() as lines:
        r = httpx.get(f"{http.url}/healthz", headers={"X-Request-ID": "api-1"})
        refused = httpx.get(f"{http.url}/sensor/v1/tags", headers={"X-Request-ID": "api-2"})
        lines.wait_for(2, logger="umec.access")
    assert r.headers["x-request-id"] == "api-1"
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "api-2"
    [line] = lines.where(msg="request refused")
    assert line == {**line, "request_id": "api-2", "status": 401, "peer": "127.0.0.1",
                    "check": refused.json()["check"]}
    assert lines.where(logger="umec.access", request_id="api-1", route="/healthz")
