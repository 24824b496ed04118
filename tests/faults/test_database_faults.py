"""PostgreSQL restarted and stopped under attesting nodes (private instance, not the shared one).

What must hold (docs/decisions.md, "Faults"): while the database is away every protocol and
token answer is a typed 503 (``database.unavailable``, with a hint and Retry-After; RFC 6749
``temporarily_unavailable`` on /oauth2), never a 500 or a hang; no node is ever recorded
``untrusted``; an outage shorter than interval + grace makes no node ``stale``; once the
database is back the same server process (its pool re-connects) records every node trusted
again within seconds, with no state event lost or duplicated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.tpm.swtpm import Swtpm, SwtpmCa, swtpm_available
from mec_api.tokens.issuer import TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from tests.support.fleet import Driver, admit, ek_allowlist, events, untyped, write_policy
from tests.support.private_postgres import PrivatePostgres, private_postgres_or_skip
from tests.support.simagent import SimulatedNode
from tests.support.tokens import ClusterIssuer
from tests.support.umec_server import UmecServer

pytestmark = pytest.mark.faults

INTERVAL, GRACE = 10.0, 20.0  # the outage (20 s) is shorter than interval + grace (30 s)
RECOVERY_SECONDS = 5.0
GRANTS = "grants: [{namespaces: [tenant-*], scopes: [sensor.read]}]\n"


@pytest.fixture
def pg() -> Iterator[PrivatePostgres]:
    yield from private_postgres_or_skip()


@pytest.fixture
def server_for(tmp_path: Path, pg: PrivatePostgres) -> Iterator[Callable[..., UmecServer]]:
    servers: list[UmecServer] = []

    def make(nodes: list[SimulatedNode], **settings: str) -> UmecServer:
        srv = UmecServer(tmp_path / "server", pg.url,
                         policy_dir=str(write_policy(tmp_path, INTERVAL)),
                         default_node_class="pi-k3s", ek_allowlist=ek_allowlist(nodes),
                         stale_grace_seconds=str(GRACE), deadline_check_seconds="0.5",
                         attest_rate_per_source="500", attest_burst_per_source="1000",
                         **settings)
        servers.append(srv)
        return srv.start()
    yield make
    for srv in servers:
        srv.stop()


def make_nodes(n: int) -> list[SimulatedNode]:
    """Nodes with their TPMs; each gets its own HTTP client once the server runs."""
    return [SimulatedNode(f"node-{chr(ord('a') + i)}", httpx.Client()) for i in range(n)]


def connect(nodes: list[SimulatedNode], srv: UmecServer) -> list[httpx.Client]:
    for node in nodes:
        node.client.close()
        node.client = httpx.Client(base_url=srv.url, timeout=10)
    return [node.client for node in nodes]


def start_agents(nodes: list[SimulatedNode]) -> list[Driver]:
    for node in nodes:
        node.enroll_and_activate()
    drivers = [Driver(node) for node in nodes]
    for d in drivers:
        d.start()
    return drivers


def real_agent(tmp_path: Path, srv: UmecServer, tpm: Swtpm) -> subprocess.Popen[bytes]:
    """``umec agent`` (the real process) on a swtpm, attesting every second."""
    k3s = tmp_path / "k3s"
    k3s.write_bytes(b"k3s v1.31 binary")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    env.update({"UMEC_SERVER_URL": srv.url, "UMEC_NODE_NAME": "node-tpm", "UMEC_TCTI": tpm.tcti,
                "UMEC_AGENT_STATE_DIR": str(tmp_path / "agent"),
                "UMEC_ATTESTATION_INTERVAL_SECONDS": "1",
                "UMEC_MEASURE_FILES": json.dumps([str(k3s)]),
                "UMEC_EVENT_LOG_PATH": str(tmp_path / "no-event-log"), "UMEC_LOG_LEVEL": "INFO"})
    log = (tmp_path / "agent.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "umec", "agent"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def node_view(srv: UmecServer, name: str) -> dict[str, Any]:
    with srv.client() as c:
        resp = c.get(f"/attest/v1/nodes/{name}")
    return resp.json() if resp.status_code == 200 else {}


def wait_for_pass_after(srv: UmecServer, name: str, after: datetime, timeout: float) -> float:
    """Seconds until ``name`` is trusted with a pass recorded after ``after``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        view = node_view(srv, name)
        last = view.get("last_pass_at")
        if view.get("state") == "trusted" and last and datetime.fromisoformat(last) > after:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{name} not trusted again within {timeout} s: {node_view(srv, name)}")


def wait_recovered(drivers: list[Driver], back_at: float) -> None:
    """Until every node was trusted again (at most RECOVERY_SECONDS), then long enough for
    the deadline sweep (every 0.5 s) to run twice on the returned database."""
    deadline = back_at + RECOVERY_SECONDS
    while time.monotonic() < deadline and not all(d.trusted_after(back_at) for d in drivers):
        time.sleep(0.1)
    time.sleep(1.5)


def check_fleet(drivers: list[Driver], back_at: float, database_url: str,
                names: list[str]) -> None:
    for d in drivers:
        assert not untyped(d.answers), [a for a in untyped(d.answers)][:3]
        states = {str(a.body.get("state")) for a in d.answers
                  if a.step == "evidence" and a.status == 200}
        assert states == {"trusted"}, (d.node.name, states)
        recovered = d.trusted_after(back_at)
        assert recovered is not None, f"{d.node.name} never trusted after the database returned"
        assert recovered - back_at < RECOVERY_SECONDS, (d.node.name, recovered - back_at)
    refused = sum(a.status == 503 for d in drivers for a in d.answers)
    total = sum(len(d.answers) for d in drivers)
    print(f"{total} answers, {refused} typed 503 database.unavailable")  # shown with -s
    recorded = events(database_url)
    for name in names:  # exactly one transition each: none lost, none doubled, nothing else
        assert recorded.get(name) == [("enrolled", "trusted")], (name, recorded.get(name))


def test_postgres_fast_restart_under_attesting_agents(
        tmp_path: Path, pg: PrivatePostgres, server_for: Callable[..., UmecServer],
        request: pytest.FixtureRequest) -> None:
    with_tpm = swtpm_available()
    settings = {}
    if with_tpm:
        ca: SwtpmCa = request.getfixturevalue("manufacturer_ca")
        tpm: Swtpm = request.getfixturevalue("swtpm_factory")("node-a")
        bundle = tmp_path / "ek-ca.pem"
        bundle.write_bytes(ca.certificate_chain_pem())
        settings["ek_ca_bundle"] = str(bundle)
    nodes = make_nodes(5)
    srv = server_for(nodes, **settings)
    clients = connect(nodes, srv)
    agent = real_agent(tmp_path, srv, tpm) if with_tpm else None
    drivers = start_agents(nodes)
    try:
        if agent is not None:
            wait_for_pass_after(srv, "node-tpm", datetime.fromtimestamp(0, UTC), 30)
        time.sleep(2)
        pid = srv.pid
        pg.stop("fast")  # a restart that takes a moment (an upgrade, a config change)
        time.sleep(2)
        pg.start()
        back_at, back_wall = time.monotonic(), datetime.now(UTC)
        wait_recovered(drivers, back_at)
        if agent is not None:  # the real agent backs off after a failed round: allow for it
            wait_for_pass_after(srv, "node-tpm", back_wall, 10)
    finally:
        for d in drivers:
            d.stop()
        if agent is not None:
            agent.terminate()
            agent.wait(10)
        for c in clients:
            c.close()
    assert srv.alive() and srv.pid == pid, "the server must survive the database restart"
    names = [n.name for n in nodes] + (["node-tpm"] if with_tpm else [])
    check_fleet(drivers, back_at, pg.url, names)


def token_site(tmp_path: Path) -> tuple[ClusterIssuer, dict[str, str]]:
    cluster = ClusterIssuer()
    jwks = tmp_path / "cluster-jwks.json"
    jwks.write_text(json.dumps(cluster.jwks()))
    grants = tmp_path / "grants.yaml"
    grants.write_text(GRANTS)
    return cluster, {"token_sa_jwks_file": str(jwks), "token_grants": str(grants)}


def exchange(srv: UmecServer, cluster: ClusterIssuer) -> httpx.Response:
    return httpx.post(f"{srv.url}/oauth2/token", timeout=10, data={
        "grant_type": TOKEN_EXCHANGE, "subject_token": cluster.token(node="node-a"),
        "subject_token_type": TOKEN_TYPE_JWT, "scope": "sensor.read"})


def test_postgres_stopped_20s_under_attesting_agents(
        tmp_path: Path, pg: PrivatePostgres, server_for: Callable[..., UmecServer]) -> None:
    cluster, token_settings = token_site(tmp_path)
    nodes = make_nodes(5)
    srv = server_for(nodes, **token_settings)
    clients = connect(nodes, srv)
    drivers = start_agents(nodes)
    admit(pg.url)
    try:
        time.sleep(1)
        before = exchange(srv, cluster)
        assert before.status_code == 200, before.text
        pid = srv.pid
        pg.stop("fast")
        time.sleep(1)
        during = exchange(srv, cluster)
        ready = httpx.get(f"{srv.url}/readyz", timeout=10)
        time.sleep(19)
        pg.start()
        back_at = time.monotonic()
        wait_recovered(drivers, back_at)
        after = exchange(srv, cluster)
    finally:
        for d in drivers:
            d.stop()
        for c in clients:
            c.close()
    assert srv.alive() and srv.pid == pid, "the pool must recover without a server restart"
    # Tokens: refused with RFC 6749's temporarily_unavailable while the database is away.
    assert during.status_code == 503, during.text
    assert during.json()["error"] == "temporarily_unavailable", during.text
    assert during.json()["check"] == "database.unavailable"
    assert "access_token" not in during.json()
    assert after.status_code == 200, after.text
    assert ready.status_code == 503 and ready.json()["check"] == "database.reachable"
    assert httpx.get(f"{srv.url}/readyz", timeout=10).status_code == 200
    for d in drivers:  # the outage was seen, as typed refusals, by every node
        assert any(a.status == 503 for a in d.answers), d.node.name
    check_fleet(drivers, back_at, pg.url, [n.name for n in nodes])
