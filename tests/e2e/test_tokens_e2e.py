"""The whole chain in one real ``umec server`` on loopback: a node attests (simulated TPM over
HTTP), the webhook's admission record is in the database, the pod exchanges its
service-account token, calls the sensor API with the access token, and loses access within a
second of its node failing attestation. The SQL adapters (node table, admission records,
revocations with migrations) are the real ones."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from admission.service.records import AdmittedImage, SqlAdmissionRecords
from mec_api.tokens.issuer import TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from tests.support.tokens import D1, ClusterIssuer, DpopKey
from umec.app import Server, build_server
from umec.db import open_database
from umec.localserver import ServerThread, free_port
from umec.settings import Settings

GRANTS = "grants: [{namespaces: [tenant-*], scopes: [sensor.read, inference.classify]}]\n"


@dataclass
class Site:
    server: Server
    url: str
    client: httpx.Client
    cluster: ClusterIssuer
    records: SqlAdmissionRecords
    node: SimulatedNode


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    cluster = ClusterIssuer()
    jwks = tmp_path / "cluster-jwks.json"
    jwks.write_text(json.dumps(cluster.jwks()))
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy("00" * 32))
    (tmp_path / "grants.yaml").write_text(GRANTS)
    port = free_port()
    settings = Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                        default_node_class="pi-k3s", listen_port=port,
                        public_url=f"http://127.0.0.1:{port}", token_sa_jwks_file=jwks,
                        token_grants=tmp_path / "grants.yaml")
    server = build_server(settings)
    _, sessions = open_database(settings.resolved_database_url())
    with ServerThread(server.app, port=port) as http, httpx.Client(
            base_url=http.url, timeout=30,
            headers={"Authorization": f"Bearer {server.operator_token}"}) as client:
        node = SimulatedNode("node-a", client)
        server.attest.config.ek_allowlist = frozenset(
            {hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()})
        node.enroll_and_activate()
        assert node.attest()["state"] == "trusted"
        yield Site(server, http.url, client, cluster, SqlAdmissionRecords(sessions), node)


def admit(site: Site, uid: str = "uid-app-1", name: str = "app-1",
          signers: tuple[str, ...] = ("ci",)) -> None:
    site.records.record(namespace="tenant-a", name=name, uid=uid,
                        images=[AdmittedImage("spec.containers[0]", f"reg/app@{D1}", D1,
                                              signers)],
                        verified=bool(signers), policy_generation="g1")


def exchange(site: Site, subject: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{site.url}/oauth2/token", headers=headers, data={
        "grant_type": TOKEN_EXCHANGE, "subject_token": subject,
        "subject_token_type": TOKEN_TYPE_JWT, "scope": "sensor.read"})


def sensor_tags(site: Site, token: str) -> httpx.Response:
    return httpx.get(f"{site.url}/sensor/v1/tags", headers={"Authorization": f"Bearer {token}"})


def test_attested_signed_app_gets_a_token_and_loses_it_within_a_second(site: Site) -> None:
    admit(site)
    r = exchange(site, site.cluster.token())
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert sensor_tags(site, token).status_code == 200
    assert sensor_tags(site, "not-a-token").status_code == 401

    site.node.tpm.extend(14, b"tampered k3s binary")
    verdict = site.node.attest()
    failed_at = time.monotonic()
    assert verdict["state"] == "untrusted"
    while (r := sensor_tags(site, token)).status_code == 200:
        assert time.monotonic() - failed_at < 1.0, "still answered a second after the failure"
        time.sleep(0.02)
    assert r.status_code == 401 and "no longer trusted" in r.json()["detail"]
    refused = exchange(site, site.cluster.token())
    assert refused.status_code == 400 and refused.json()["check"] == "node.trust"
    feed = httpx.get(f"{site.url}/oauth2/revocations").json()
    assert [e["node"] for e in feed["entries"] if e["kind"] == "node"] == ["node-a"]


def test_issued_tokens_are_counted_for_every_replica(site: Site) -> None:
    """What the server issued reaches token_issuance_counts with its background flush (here
    called directly), per workload and node; nothing is counted twice."""
    from mec_api.tokens.issuance_counts import hour_of
    admit(site)
    for _ in range(3):
        assert exchange(site, site.cluster.token()).status_code == 200
    tokens = site.server.tokens
    assert tokens is not None
    tokens.flush_counts()
    tokens.flush_counts()
    hour = hour_of(time.time()) - 1
    assert dict(tokens.counts.totals(hour)) == {("tenant-a:app", "node-a"): 3}


def test_unsigned_app_gets_no_token(site: Site) -> None:
    admit(site, uid="uid-unsigned", name="unsigned-1", signers=())
    r = exchange(site, site.cluster.token(pod="unsigned-1", pod_uid="uid-unsigned"))
    assert r.status_code == 400 and r.json()["check"] == "admission.pod"
    never = exchange(site, site.cluster.token(pod="ghost", pod_uid="uid-ghost"))
    assert never.status_code == 400 and never.json()["check"] == "admission.pod"


def test_dpop_bound_token_through_the_server(site: Site) -> None:
    admit(site)
    key = DpopKey()
    r = exchange(site, site.cluster.token(),
                 DPoP=key.proof("POST", f"{site.url}/oauth2/token"))
    assert r.status_code == 200 and r.json()["token_type"] == "DPoP", r.text
    token = r.json()["access_token"]
    url = f"{site.url}/sensor/v1/tags"
    ok = httpx.get(url, headers={"Authorization": f"DPoP {token}",
                                 "DPoP": key.proof("GET", url, access_token=token)})
    assert ok.status_code == 200, ok.text
    assert sensor_tags(site, token).status_code == 401


def test_discovery_documents(site: Site) -> None:
    meta = httpx.get(f"{site.url}/.well-known/oauth-authorization-server").json()
    assert meta["token_endpoint"] == f"{site.url}/oauth2/token"
    assert meta["issuer"] == f"{site.url}/oauth2"
    keys = httpx.get(meta["jwks_uri"]).json()["keys"]
    assert keys and all(k["kty"] == "EC" for k in keys)
    assert httpx.get(f"{site.url}/healthz").status_code == 200
    assert httpx.get(f"{site.url}/sensor/v1/tags").status_code == 401


def test_key_rotation_with_overlap(site: Site, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from umec.cli import app
    admit(site)
    old = exchange(site, site.cluster.token()).json()["access_token"]
    env = {"UMEC_DATA_DIR": str(tmp_path / "srv")}
    refused = CliRunner().invoke(app, ["tokens", "rotate-key", "--overlap-seconds", "60"],
                                 env=env)
    assert refused.exit_code == 2 and "shorter than the token lifetime" in refused.output
    done = CliRunner().invoke(app, ["tokens", "rotate-key"], env=env)
    assert done.exit_code == 0, done.output
    assert site.server.tokens.reloader.check()            # what the 2 s loop does
    new = exchange(site, site.cluster.token()).json()["access_token"]
    kids = {k["kid"] for k in httpx.get(f"{site.url}/.well-known/jwks.json").json()["keys"]}
    import jwt
    assert {jwt.get_unverified_header(t)["kid"] for t in (old, new)} == kids
    assert len(kids) == 2
    time.sleep(1.1)                                         # the guard's JWKS cache
    assert sensor_tags(site, old).status_code == 200       # within the overlap
    assert sensor_tags(site, new).status_code == 200
