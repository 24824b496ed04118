"""The token service over HTTP in process (a FastAPI TestClient): the issuer with its cluster,
nodes, admissions, revocation store and key ring, and the calls the token tests make."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from keys import KeyRing, generate_private_key
from mec_api.problems import install_problem_handlers
from mec_api.tokens.api import router
from mec_api.tokens.deps import TokenRoutes
from mec_api.tokens.issuer import (
    TOKEN_EXCHANGE,
    TOKEN_TYPE_JWT,
    IssuerConfig,
    TokenIssuer,
)
from mec_api.tokens.models import TokensBase
from mec_api.tokens.revocations import RevocationList, RevocationStore
from mec_api.tokens.scope_policy import ScopePolicy, load_grants
from mec_api.tokens.trust import SeparateLookups
from tests.support.tokens import Admissions, ClusterIssuer, Nodes

BASE = "http://testserver"
TOKEN_URL = f"{BASE}/oauth2/token"
ISSUER = f"{BASE}/oauth2"
OPERATOR = "operator-secret"
GRANTS = """
grants:
  - namespaces: ["tenant-*"]
    scopes: [sensor.read, inference.classify, camera.snapshot]
  - namespaces: [umec-gateways]
    service_accounts: [gateway]
    scopes: [sensor.ingest]
"""


@dataclass
class Service:
    client: TestClient
    cluster: ClusterIssuer
    nodes: Nodes
    admissions: Admissions
    store: RevocationStore
    ring: KeyRing
    issuer: TokenIssuer


def build_service(tmp_path: Path) -> Service:
    engine = create_engine(f"sqlite:///{tmp_path / 'tokens.db'}")
    TokensBase.metadata.create_all(engine)
    store = RevocationStore(sessionmaker(engine), max_token_lifetime=300)
    cluster, nodes, admissions = ClusterIssuer(), Nodes(), Admissions()
    nodes.set("node-a")
    admissions.admit()
    ring = KeyRing(generate_private_key())
    revocations = RevocationList()  # what umec server's follower keeps current
    issuer = TokenIssuer(
        config=IssuerConfig(issuer=ISSUER, token_endpoint=TOKEN_URL, audiences=["umec-apis"],
                            sa_issuer=cluster_issuer(), sa_audiences=["umec"]),
        cluster_keys=cluster, workloads=SeparateLookups(nodes, admissions),
        scopes=ScopePolicy(load_grants(GRANTS)), ring=ring,
        revoked_epoch=lambda node, now: followed(store, revocations, now).revoked_epoch(
            node, now.timestamp()),
        revoked_pod=lambda uid, now: followed(store, revocations, now).pod_revoked(
            uid, now.timestamp()))
    app = FastAPI()
    install_problem_handlers(app)
    app.state.tokens = TokenRoutes(issuer, store, operator_token=OPERATOR)
    app.include_router(router)
    return Service(TestClient(app), cluster, nodes, admissions, store, ring, issuer)


def followed(store: RevocationStore, revocations: RevocationList,
             now: datetime) -> RevocationList:
    """The follower's step, synchronously: merge the store's whole live set."""
    revocations.apply(store.current(now))
    return revocations


def cluster_issuer() -> str:
    from tests.support.tokens import SA_ISSUER
    return SA_ISSUER


def exchange(svc: Service, subject: str, **extra: Any) -> Any:
    headers = extra.pop("headers", {})
    data = {"grant_type": TOKEN_EXCHANGE, "subject_token": subject,
            "subject_token_type": TOKEN_TYPE_JWT, **extra}
    return svc.client.post("/oauth2/token", data=data, headers=headers)


def refused(r: Any, error: str, check: str) -> None:
    assert r.status_code in (400, 401, 500, 503), r.text
    body = r.json()
    assert (body["error"], body["check"]) == (error, check), body
    assert body["hint"] and r.headers["cache-control"] == "no-store"
    assert "Traceback" not in r.text
