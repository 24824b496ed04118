"""Several control-plane replicas on one PostgreSQL database (real server, real HTTP)."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from attest.service.models import StateEventRow
from kernel.lease import SqlLease
from keys import load_or_create_secret
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from umec.app import Server, build_server
from umec.localserver import ServerThread
from umec.settings import Settings

pytestmark = pytest.mark.postgres


@pytest.fixture
def replicas(tmp_path: Path, pg_database: str) -> Iterator[Callable[[int], list[Server]]]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy(interval_seconds=1))
    threads: list[ServerThread] = []
    # Replicas share the challenge key as they share a Secret in deploy/server.yaml.
    shared_key = tmp_path / "challenge-key"
    load_or_create_secret(shared_key)

    def start(n: int, share_key: bool = True, **overrides: object) -> list[Server]:
        def one(i: int) -> Server:
            if share_key:
                (tmp_path / f"replica-{i}" / "keys").mkdir(parents=True, exist_ok=True)
                shutil.copy2(shared_key, tmp_path / f"replica-{i}" / "keys" / "challenge-key")
            return build_server(Settings(
                data_dir=tmp_path / f"replica-{i}", database_url=pg_database,
                policy_dir=policies, default_node_class="pi-k3s", **overrides))  # type: ignore[arg-type]
        # Start concurrently: migrations must serialize themselves.
        with ThreadPoolExecutor(n) as pool:
            servers = list(pool.map(one, range(n)))
        for s in servers:
            threads.append(ServerThread(s.app).start())
            s.url = threads[-1].url  # type: ignore[attr-defined]
        return servers
    yield start
    for t in threads:
        t.stop()


def allow(servers: list[Server], node: SimulatedNode) -> None:
    digest = hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()
    for s in servers:
        s.attest.config.ek_allowlist = frozenset({digest}) | s.attest.config.ek_allowlist


def test_nonce_consumed_exactly_once_across_replicas(replicas) -> None:  # type: ignore[no-untyped-def]
    servers = replicas(2)
    clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
    node = SimulatedNode("node-a", clients[0])
    allow(servers, node)
    node.enroll_and_activate()
    accepted = 0
    for _round in range(5):
        ch = node.challenge()
        evidence = node.quote(ch)
        barrier = threading.Barrier(8)

        def submit(i: int, ch: dict = ch, evidence: tuple = evidence,  # type: ignore[type-arg]
                   barrier: threading.Barrier = barrier) -> tuple[int, str]:
            racer = SimulatedNode("node-a", clients[i % 2], node.tpm)
            barrier.wait()
            resp = racer.send(ch["nonce_bytes"], *evidence)
            return resp.status_code, resp.json().get("check", "")

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(submit, range(8)))
        # Both replicas know the nonce (one key): every loser is a replay, none "unknown".
        assert sorted(answers) == [(200, "")] + [(403, "nonce.replayed")] * 7, answers
        accepted += answers.count((200, ""))
    assert accepted == 5
    for c in clients:
        c.close()


def test_replicas_with_different_challenge_keys_say_so(replicas) -> None:  # type: ignore[no-untyped-def]
    """A replica whose keys/challenge-key differs refuses the other's nonces as unknown, and
    its refusal names the key (a deployment error, not an attack); the nonce is not burned."""
    a, b = replicas(2, share_key=False)
    with httpx.Client(base_url=a.url, timeout=30) as ca, \
            httpx.Client(base_url=b.url, timeout=30) as cb:
        node = SimulatedNode("node-a", ca)
        allow([a, b], node)
        node.enroll_and_activate()
        ch = node.challenge()
        evidence = (ch["nonce_bytes"], *node.quote(ch))
        refused = SimulatedNode("node-a", cb, node.tpm).send(*evidence)
        assert refused.status_code == 403 and refused.json()["check"] == "nonce.unknown"
        assert "challenge key" in refused.json()["detail"]
        assert node.send(*evidence).json()["state"] == "trusted"


def test_one_leader_for_deadline_checks(replicas) -> None:  # type: ignore[no-untyped-def]
    a, b = replicas(2)
    # The servers' own loops hold the "deadlines" lease; race for a fresh one here.
    lease_a = SqlLease(a.attest.sessions, "test", ttl=2.0, now=lambda: a.attest.now(),
                       holder="replica-a")
    lease_b = SqlLease(b.attest.sessions, "test", ttl=2.0, now=lambda: b.attest.now(),
                       holder="replica-b")
    assert lease_a.acquire() is True
    assert lease_b.acquire() is False
    assert lease_a.acquire() is True  # renewal by the holder
    real_now = b.attest.now
    b.attest.now = lambda: real_now() + timedelta(seconds=3)  # a's lease has lapsed
    assert lease_b.acquire() is True
    assert lease_a.acquire() is False


def test_stale_detected_once_with_two_replicas(replicas) -> None:  # type: ignore[no-untyped-def]
    servers = replicas(2, stale_grace_seconds=0.5, deadline_check_seconds=0.2)
    with httpx.Client(base_url=servers[1].url, timeout=30,
                      headers={"Authorization": f"Bearer {servers[1].operator_token}"}) as client:
        node = SimulatedNode("node-a", client)
        allow(servers, node)
        node.enroll_and_activate()
        assert node.attest()["state"] == "trusted"
        deadline = time.monotonic() + 10
        while client.get("/attest/v1/nodes/node-a").json()["state"] != "stale":
            assert time.monotonic() < deadline, "node never went stale"
            time.sleep(0.2)
        time.sleep(1.0)  # give a second leader the chance to (wrongly) record it again
    with servers[0].attest.sessions() as s:
        stale = s.scalars(select(StateEventRow).where(StateEventRow.state == "stale")).all()
    assert len(stale) == 1
