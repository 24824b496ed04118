"""A real `umec server` on loopback for the HTTP-level attack suites, on SQLite and PostgreSQL
(the ``env`` fixture of tests/attest/conftest.py).

Nodes are simulated TPMs (byte-exact formats, software keys) so that attacks needing a key the
attacker controls — forging, another TPM's AK, a replayed old state — can be built precisely.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from attest.service.models import NodeRow, StateEventRow
from tests.support.metrics import METRICS_TOKEN, metrics_auth
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from tests.support.simtpm import SimulatedTpm
from umec.app import Server, build_server
from umec.localserver import ServerThread
from umec.settings import Settings


@dataclass
class Env:
    server: Server
    client: httpx.Client
    tmp: Path

    def node(self, name: str, tpm: SimulatedTpm | None = None, *,
             allow: bool = True) -> SimulatedNode:
        node = SimulatedNode(name, self.client, tpm)
        if allow:
            self.allow(node.tpm)
        return node

    def allow(self, tpm: SimulatedTpm) -> None:
        cfg = self.server.attest.config
        cfg.ek_allowlist = cfg.ek_allowlist | {
            hashlib.sha256(tpm.ek_public.marshal_tpm2b()).hexdigest()}

    def anonymous(self) -> httpx.Client:
        """A client without the operator token: what an attacker on the network has."""
        return httpx.Client(base_url=str(self.client.base_url), timeout=30)

    def snapshot(self, name: str) -> dict[str, Any]:
        """Everything evidence or enrolment could move for ``name``: row (with its challenge
        counter, which every recorded verdict moves: the spent nonces), events."""
        with self.server.attest.sessions() as s:
            row = s.get(NodeRow, name)
            columns = {} if row is None else {
                c: getattr(row, c) for c in ("state", "state_changed_at", "last_pass_at",
                                             "last_evidence_at", "last_verdict", "reset_count",
                                             "restart_count", "clock", "ek_hash", "ak_public",
                                             "challenge_seq", "last_pass_nonce")}
            events = s.scalar(select(func.count()).select_from(StateEventRow)
                              .where(StateEventRow.node == name))
        return {"row": columns, "events": events}

    def refusals(self, route: str, check: str) -> float:
        """The server's refusal counter for (route, check), read from /metrics."""
        text = self.client.get("/metrics", headers=metrics_auth()).text
        needle = f'umec_attest_refusals_total{{check="{check}",route="{route}"}} '
        return next((float(line[len(needle):]) for line in text.splitlines()
                     if line.startswith(needle)), 0.0)


def _settings(tmp_path: Path, database_url: str) -> Settings:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy("00" * 32))
    return Settings(data_dir=tmp_path / "srv", policy_dir=policies, database_url=database_url,
                    default_node_class="pi-k3s", nonce_ttl_seconds=30,
                    metrics_token=METRICS_TOKEN)


@contextmanager
def running_env(tmp_path: Path, database_url: str) -> Iterator[Env]:
    """The server on ``database_url`` ("" for SQLite in ``tmp_path``) and an operator client
    (the ``env`` fixture of tests/attest/conftest.py)."""
    server = build_server(_settings(tmp_path, database_url))
    with ServerThread(server.app) as http, httpx.Client(
            base_url=http.url, timeout=30,
            headers={"Authorization": f"Bearer {server.operator_token}"}) as c:
        yield Env(server, c, tmp_path)


@contextmanager
def shifted_clock(env: Env, by: timedelta) -> Iterator[None]:
    """The server's attestation clock runs ``by`` ahead (behind, if negative) inside."""
    ctx = env.server.attest
    real_now = ctx.now
    ctx.now = lambda: real_now() + by
    try:
        yield
    finally:
        ctx.now = real_now


def trusted(env: Env, name: str = "node-a", tpm: SimulatedTpm | None = None) -> SimulatedNode:
    node = env.node(name, tpm)
    node.enroll_and_activate()
    assert node.attest()["state"] == "trusted"
    return node


def checks(resp: httpx.Response) -> list[str]:
    body = resp.json()
    return [f["check"] for f in body["failed_checks"]] if "failed_checks" in body \
        else [body["check"]]
