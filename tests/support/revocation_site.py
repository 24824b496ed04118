"""A real ``umec server`` on loopback with ``node-a`` trusted (:class:`Site`), and the admission
webhook on the same database (:class:`Hook`): the cross-domain revocation tests (tests/e2e/) drive
a change of trust or a pod's deletion through both and watch the tokens. The ``site`` and ``hook``
fixtures are in tests/e2e/conftest.py."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import Engine, func, select

from admission.service.admit import WebhookDeps
from admission.service.records import AdmittedImage, SqlAdmissionRecords
from attest.service.models import NodeRow, StateEventRow
from mec_api.tokens.issuer import TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from mec_api.tokens.models import RevocationRow
from tests.support.metrics import METRICS_TOKEN, metrics_auth
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from tests.support.tokens import D1, ClusterIssuer
from umec.app import Server, build_server
from umec.db import open_database
from umec.localserver import ServerThread, free_port
from umec.settings import Settings

DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

GRANTS = "grants: [{namespaces: [tenant-*], scopes: [sensor.read]}]\n"


@dataclass
class Site:
    server: Server
    url: str
    engine: Engine
    cluster: ClusterIssuer
    node: SimulatedNode

    def token_response(self, uid: str = "uid-app-1", name: str = "app-1",
                       sa_lifetime: int = 3600) -> dict[str, Any]:
        """Record the pod's admission and exchange its SA token: the token response."""
        SqlAdmissionRecords(self.engine).record(
            namespace="tenant-a", name=name, uid=uid,
            images=[AdmittedImage("spec.containers[0]", f"reg/app@{D1}", D1, ("ci",))],
            verified=True, policy_generation="g1")
        r = httpx.post(f"{self.url}/oauth2/token", data={
            "grant_type": TOKEN_EXCHANGE, "subject_token_type": TOKEN_TYPE_JWT,
            "subject_token": self.cluster.token(pod=name, pod_uid=uid, lifetime=sa_lifetime),
            "scope": "sensor.read"})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def token(self, uid: str = "uid-app-1", name: str = "app-1") -> str:
        return str(self.token_response(uid, name)["access_token"])

    def call(self, token: str) -> httpx.Response:
        return httpx.get(f"{self.url}/sensor/v1/tags",
                         headers={"Authorization": f"Bearer {token}"})

    def refused_within(self, token: str, seconds: float) -> httpx.Response:
        deadline = time.monotonic() + seconds
        while (r := self.call(token)).status_code == 200:
            assert time.monotonic() < deadline, f"token still accepted after {seconds} s"
            time.sleep(0.02)
        return r

    def state(self, name: str = "node-a") -> tuple[str, int, int]:
        with self.engine.connect() as conn:
            row = conn.execute(select(NodeRow.state, NodeRow.trust_epoch)
                               .where(NodeRow.name == name)).one()
            events = conn.scalar(select(func.count()).select_from(StateEventRow)
                                 .where(StateEventRow.node == name))
        return row.state, row.trust_epoch, int(events or 0)


def site_settings(tmp_path: Path, url: str, port: int, cluster: ClusterIssuer,
                  **extra: Any) -> Settings:
    """A server's settings with the cluster's JWKS, a k3s policy and tenant grants on disk."""
    jwks = tmp_path / "cluster-jwks.json"
    jwks.write_text(json.dumps(cluster.jwks()))
    policies = tmp_path / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "pi-k3s.yaml").write_text(k3s_policy("00" * 32))
    (tmp_path / "grants.yaml").write_text(GRANTS)
    extra.setdefault("metrics_token", METRICS_TOKEN)
    return Settings(data_dir=tmp_path / "srv", policy_dir=policies, database_url=url,
                    default_node_class="pi-k3s", listen_port=port,
                    public_url=f"http://127.0.0.1:{port}", token_sa_jwks_file=jwks,
                    token_grants=tmp_path / "grants.yaml", **extra)


def trusted_node(servers: list[Server], client: httpx.Client) -> SimulatedNode:
    node = SimulatedNode("node-a", client)
    for server in servers:
        server.attest.config.ek_allowlist = frozenset(
            {hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()})
    node.enroll_and_activate()
    assert node.attest()["state"] == "trusted"
    return node


@contextlib.contextmanager
def running_site(tmp_path: Path, url: str, **extra: Any) -> Iterator[Site]:
    """A real ``umec server`` on loopback with ``node-a`` trusted."""
    cluster, port = ClusterIssuer(), free_port()
    settings = site_settings(tmp_path, url, port, cluster, **extra)
    server = build_server(settings)
    engine, _ = open_database(settings.resolved_database_url())
    with ServerThread(server.app, port=port) as http, httpx.Client(
            base_url=http.url, timeout=30,
            headers={"Authorization": f"Bearer {server.operator_token}"}) as client:
        yield Site(server, http.url, engine, cluster, trusted_node([server], client))
    engine.dispose()


# -- the admission webhook on the site's database -----------------------------------------------

IMAGE = "reg.local/app@sha256:" + "1" * 64  # the pod the webhook admits
REVOCATIONS = RevocationRow.__table__


@dataclass
class Hook:
    """The webhook of ``site``, served on loopback, and what the tests look at."""

    url: str
    deps: WebhookDeps
    site: Site
    settings: Settings

    @property
    def records(self) -> SqlAdmissionRecords:
        return cast(SqlAdmissionRecords, self.deps.records)

    def review(self, operation: str, uid: str, name: str = "app-1", *,
               deleting: bool = False, dry_run: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": "tenant-a", "uid": uid}
        if deleting:
            meta["deletionTimestamp"] = "2026-12-07T10:00:00Z"
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
               "spec": {"containers": [{"name": "app", "image": IMAGE}]}}
        request: dict[str, Any] = {
            "uid": f"req-{operation}-{uid}-{time.monotonic_ns()}",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "tenant-a", "name": name, "operation": operation,
            "userInfo": {"username": "tester"}, "dryRun": dry_run,
            "object": None if operation == "DELETE" else pod,
            "oldObject": pod if operation != "CREATE" else None}
        r = httpx.post(f"{self.url}/validate", timeout=30, json={
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": request})
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()["response"]
        return answer

    def admit(self, uid: str, name: str = "app-1") -> str:
        """Admit the pod through /validate and exchange its SA token: its access token."""
        assert self.review("CREATE", uid, name)["allowed"] is True
        assert self.records.lookup(uid) is not None
        return self.exchange(uid, name).json()["access_token"]  # type: ignore[no-any-return]

    def exchange(self, uid: str, name: str = "app-1") -> httpx.Response:
        return httpx.post(f"{self.site.url}/oauth2/token", data={
            "grant_type": TOKEN_EXCHANGE, "subject_token_type": TOKEN_TYPE_JWT,
            "subject_token": self.site.cluster.token(pod=name, pod_uid=uid),
            "scope": "sensor.read"})

    def pod_revocations(self) -> list[str]:
        with self.site.engine.connect() as conn:
            return list(conn.scalars(select(REVOCATIONS.c.pod_uid)
                                     .where(REVOCATIONS.c.kind == "pod")))

    def forget_failures(self) -> float:
        text = httpx.get(f"{self.url}/metrics", headers=metrics_auth()).text
        line = next((line for line in text.splitlines() if line.startswith(
            'umec_admission_forget_failures_total{operation="DELETE"}')), None)
        return float(line.split()[-1]) if line else 0.0
