"""Time checks that survive clock steps (issue 9.7), in process with an injected clock.

The rules: one clock for every replica (``kernel.clock``), a stored time in the future is
invalid rather than fresh, and node revocations compare trust epochs, not times. The same
cases against a real ``umec server`` under libfaketime are in tests/faults/test_clock_steps.py.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from attest.service.models import NodeRow
from attest.service.notify.event import NodeStateChanged
from attest.service.registrar import remove, rename
from attest.service.verifier import mark_stale_nodes
from kernel.clock import DatabaseClock, SystemClock, clock_for
from kernel.lease import SqlLease
from kernel.ratelimit import RateLimiter
from mec_api.tokens.revocations import (
    ENTRY_LOCAL_LIFE_SECONDS,
    Revocation,
    RevocationList,
    token_epoch,
)
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from umec.app import Server, build_server
from umec.localserver import ServerThread
from umec.settings import Settings


class SteppedClock:
    """The real clock plus an offset a test can step."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Env:
    server: Server
    clock: SteppedClock
    client: httpx.Client

    def node(self, name: str) -> SimulatedNode:
        node = SimulatedNode(name, self.client)
        self.server.attest.config.ek_allowlist |= {
            hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()}
        node.enroll_and_activate()
        assert node.attest()["state"] == "trusted"
        return node

    def row(self, name: str) -> NodeRow:
        with self.server.attest.sessions() as s:
            row = s.get(NodeRow, name)
            assert row is not None
            return row


@pytest.fixture(params=[False, True], ids=["plain", "require_ack"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy("00" * 32, require_ack=request.param))
    server = build_server(Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                                   default_node_class="pi-k3s", deadline_check_seconds=3600))
    clock = SteppedClock()
    server.attest.now = clock.now
    with ServerThread(server.app) as http, httpx.Client(base_url=http.url, timeout=30) as c:
        yield Env(server, clock, c)


@pytest.mark.parametrize("step", [timedelta(minutes=-10), timedelta(hours=-2)])
def test_backward_step_a_silent_node_goes_stale_and_a_good_one_comes_back(
        env: Env, step: timedelta) -> None:
    silent, good = env.node("silent"), env.node("good")
    epochs = {n: env.row(n).trust_epoch for n in ("silent", "good")}
    env.clock.offset = step
    events = mark_stale_nodes(env.server.attest)
    assert {e.node for e in events} == {"silent", "good"}
    for e in events:
        assert e.state == "stale" and e.failed_checks == ("deadline.clock_future",)
        assert "stepped back" in e.reason and e.epoch == epochs[e.node] + 1
    assert env.row("silent").state == "stale"
    # The good node's next round trusts it again, even under require_ack: our clock's step
    # was no incident of the node's.
    assert good.attest()["state"] == "trusted"
    assert mark_stale_nodes(env.server.attest) == []
    assert env.row("good").trust_epoch == epochs["good"] + 1
    del silent


def test_within_the_tolerance_nothing_happens(env: Env) -> None:
    env.node("node-a")
    env.clock.offset = timedelta(seconds=-1)
    assert mark_stale_nodes(env.server.attest) == []


def test_forward_step_then_corrected(env: Env) -> None:
    """+2 h: the node's evidence looks 2 h old (stale, as it must without a proof since:
    a forward step cannot be told from silence; under require_ack an operator acks, see
    docs/decisions.md "Time"); corrected: its evidence is 2 h ahead (stale again, no ack
    needed); its next round trusts it."""
    node = env.node("node-a")
    env.clock.offset = timedelta(hours=2)
    assert [e.failed_checks for e in mark_stale_nodes(env.server.attest)] == [
        ("deadline.missed",)]
    verdict = node.attest()
    if verdict.get("awaiting_ack"):
        env.client.post("/attest/v1/nodes/node-a/ack", headers={
            "Authorization": f"Bearer {env.server.operator_token}"}).raise_for_status()
        verdict = node.attest()
    assert verdict["state"] == "trusted"
    env.clock.offset = timedelta()
    assert [e.failed_checks for e in mark_stale_nodes(env.server.attest)] == [
        ("deadline.clock_future",)]
    assert node.attest()["state"] == "trusted"


@pytest.mark.parametrize("step", [timedelta(minutes=-10), timedelta(hours=-2)])
def test_a_challenge_from_before_a_backward_step_is_refused(env: Env,
                                                            step: timedelta) -> None:
    node = env.node("node-a")
    ch = node.challenge()
    env.clock.offset = step
    evidence = (ch["nonce_bytes"], *node.quote(ch))
    r = node.send(*evidence)
    assert r.status_code == 403 and r.json()["check"] == "nonce.clock_future", r.text
    # Challenges are stateless: the sweep voids the node's nonces from before the step (its
    # latest evidence is dated after now), else the held-back quote would pass as fresh once
    # the clock caught up with the nonce's issued_at.
    mark_stale_nodes(env.server.attest)
    env.clock.offset = timedelta()  # time caught up
    r = node.send(*evidence)
    assert r.status_code == 403 and r.json()["check"] == "nonce.replayed", r.text
    env.clock.offset = step
    assert node.attest()["state"] in ("trusted", "stale")


def test_a_held_quote_of_a_node_that_went_silent_stays_void_after_any_step(env: Env) -> None:
    """The review's replay: a good quote over a challenge is held back, the node goes silent
    and stale, and later our clock is stepped back to the challenge's time. The nonce then
    looks fresh and its counter was never moved by a verdict: going stale moved it."""
    node = env.node("node-a")
    ch = node.challenge()
    held = (ch["nonce_bytes"], *node.quote(ch))
    env.clock.offset = timedelta(days=3)  # days later: silent, so stale
    assert [e.failed_checks for e in mark_stale_nodes(env.server.attest)] == [
        ("deadline.missed",)]
    env.clock.offset = timedelta()  # stepped back to the time of the challenge
    r = node.send(*held)
    assert r.status_code == 403 and r.json()["check"] == "nonce.replayed", r.text
    assert env.row("node-a").state == "stale"


def test_the_sweep_voids_a_steps_nonces_once(env: Env) -> None:
    """After a step back the sweep moves the counter of a node whose evidence is dated ahead
    once, not on every run until the clock catches up (that refused every round straddling
    a sweep, for as long as the step)."""
    env.node("node-a")
    seq = env.row("node-a").challenge_seq
    env.clock.offset = timedelta(minutes=-10)
    for _ in range(3):
        mark_stale_nodes(env.server.attest)
    row = env.row("node-a")
    # One move for the voided challenges and one for going stale (clock_future), not one per run.
    assert row.challenge_seq == seq + 2
    assert row.last_evidence_at is not None and row.last_evidence_at <= env.clock.now()


def test_an_enrolment_from_before_a_backward_step_is_void(env: Env) -> None:
    node = SimulatedNode("late", env.client)
    env.server.attest.config.ek_allowlist |= {
        hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()}
    ch = node.enroll().json()
    env.clock.offset = timedelta(hours=-2)
    secret = node.tpm.activate_credential(base64.b64decode(ch["credential_blob"]),
                                          base64.b64decode(ch["encrypted_secret"]))
    r = env.client.post("/attest/v1/nodes/late/activate", json={
        "enrollment_id": ch["enrollment_id"], "secret": base64.b64encode(secret).decode()})
    assert r.json()["check"] == "activate.no_challenge" and "stepped" in r.json()["detail"]


def test_a_lease_from_before_a_backward_step_is_void(env: Env) -> None:
    ctx = env.server.attest
    first = SqlLease(ctx.sessions, "t", ttl=5, now=ctx.now, holder="a")
    assert first.acquire()
    env.clock.offset = timedelta(minutes=-10)
    assert SqlLease(ctx.sessions, "t", ttl=5, now=ctx.now, holder="b").acquire()


class Recorder:
    """A state-change sink noting the epoch of each node's end-of-trust events."""

    def __init__(self) -> None:
        self.epochs: dict[str, list[int]] = {}

    async def publish(self, event: NodeStateChanged) -> None:
        if event.previous == "trusted" or event.state == "removed":
            self.epochs.setdefault(event.node, []).append(event.epoch)

    def wait(self, node: str, count: int) -> int:
        """The epoch the ``count``-th end of trust of ``node`` started (events are handed to
        sinks on the server's loop, a moment after the request returned)."""
        deadline = time.monotonic() + 5
        while len(self.epochs.get(node, [])) < count:
            assert time.monotonic() < deadline, self.epochs
            time.sleep(0.01)
        return self.epochs[node][count - 1]


def test_trust_epochs_grow_with_every_end_of_trust(env: Env) -> None:
    seen = Recorder()
    env.server.attest.listeners.append(seen)
    node = env.node("node-a")
    start = env.row("node-a").trust_epoch
    assert node.attest()["state"] == "trusted" and env.row("node-a").trust_epoch == start
    node.tpm.extend(14, b"tampered")
    assert node.attest()["state"] == "untrusted"
    assert env.row("node-a").trust_epoch == seen.wait("node-a", 1) == start + 1
    # Epochs count per name (tokens and revocations name the node): a renamed node, and a
    # new node of a removed name, start above every epoch their name ever ended.
    rename(env.server.attest, "node-a", "node-b")
    assert seen.wait("node-a", 2) == start + 2
    for i in range(1, 4):
        epoch = env.row("node-b").trust_epoch
        remove(env.server.attest, "node-b")
        assert seen.wait("node-b", i) == epoch + 1   # revokes node-b's epochs <= epoch
        env.node("node-b")
        assert env.row("node-b").trust_epoch > epoch


def test_revocation_by_epoch() -> None:
    rl = RevocationList()
    far = 2e9
    rl.apply([Revocation(1, "node", None, "n", 3, far)])
    assert rl.revoked(jti="j", node="n", node_epoch=3, now=0) is not None
    assert rl.revoked(jti="j", node="n", node_epoch=0, now=0) is not None
    assert rl.revoked(jti="j", node="n", node_epoch=4, now=0) is None
    assert rl.revoked(jti="j", node="m", node_epoch=0, now=0) is None
    rl.apply([Revocation(2, "node", None, "n", 2, far)])  # an older entry lowers nothing
    assert rl.revoked_epoch("n", 0) == 3
    assert token_epoch({}) == 0 and token_epoch({"node_epoch": True}) == 0
    assert token_epoch({"node_epoch": "5"}) == 0 and token_epoch({"node_epoch": 5}) == 5
    # A feed from before epochs (no node_epoch) revokes what tokens without one count as.
    legacy = Revocation.from_dict({"seq": 3, "kind": "node", "node": "x", "cutoff": 1.0,
                                   "expires_at": far})
    assert legacy.node_epoch == 0


class Monotonic:
    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


@pytest.mark.parametrize("step", [600.0, 7200.0, 86400.0 * 30])
def test_a_forward_step_then_its_correction_drops_no_revocation(step: float) -> None:
    """A resource server's clock jumps ahead by more than a token's lifetime, its follower
    expires the list, then the clock is corrected: every entry applied before the step still
    refuses (the tokens it matches have their ``exp`` ahead again). Only the wall clock and
    the monotonic clock together drop an entry."""
    mono, t = Monotonic(), 2e9
    rl = RevocationList(monotonic=mono)
    life = t + ENTRY_LOCAL_LIFE_SECONDS
    rl.apply([Revocation(1, "node", None, "n", 3, life), Revocation(2, "token", "j", None, None,
              life), Revocation(3, "pod", None, None, None, life, pod_uid="p")])
    rl.expire(t + step)              # the step: every entry looks expired on the wall clock
    mono.at += 1.0
    rl.expire(t + step + 1.0)
    assert rl.revoked(jti="x", node="n", node_epoch=3, now=t + 2) is not None  # corrected
    assert rl.revoked(jti="j", node=None, node_epoch=0, now=t + 2) == "the token was revoked"
    assert rl.pod_revoked("p", t + 2) and rl.revoked_epoch("n", t + 2) == 3
    # The monotonic clock alone drops nothing either: the wall clock says it is live.
    mono.at += ENTRY_LOCAL_LIFE_SECONDS
    rl.expire(t + 2)
    assert len(rl) == 3
    rl.expire(life)                  # both: dropped
    assert len(rl) == 0 and rl.revoked(jti="j", node="n", node_epoch=3, now=life) is None


def test_an_entry_refuses_while_it_is_held_whatever_the_time() -> None:
    """Held entries refuse even when ``now`` is past their expiry (fail closed: the tokens they
    match have expired on that clock anyway); re-applying one holds it longer."""
    mono = Monotonic()
    rl = RevocationList(monotonic=mono)
    rl.apply([Revocation(1, "token", "j", None, None, 100.0)])
    assert rl.revoked(jti="j", node=None, node_epoch=0, now=5000.0) == "the token was revoked"
    mono.at += ENTRY_LOCAL_LIFE_SECONDS - 1
    rl.apply([Revocation(1, "token", "j", None, None, 100.0)])
    mono.at += 2
    rl.expire(5000.0)
    assert len(rl) == 1
    mono.at += ENTRY_LOCAL_LIFE_SECONDS
    rl.expire(5000.0)
    assert len(rl) == 0


def test_database_clock_advances_by_monotonic_and_ignores_the_wall_clock(
        caplog: pytest.LogCaptureFixture) -> None:
    db_time = datetime(2030, 1, 1, tzinfo=UTC)
    mono = [100.0]
    reads: list[datetime] = []
    failing = [False]

    def read() -> datetime:
        if failing[0]:
            raise OSError("database down")
        reads.append(db_time + timedelta(seconds=mono[0] - 100.0))
        return reads[-1]
    clock = DatabaseClock(read, resync_seconds=5, monotonic=lambda: mono[0])
    assert clock.now() == db_time and len(reads) == 1
    mono[0] += 3
    assert clock.now() == db_time + timedelta(seconds=3) and len(reads) == 1
    mono[0] += 3
    assert clock.now() == db_time + timedelta(seconds=6) and len(reads) == 2
    failing[0] = True
    with caplog.at_level(logging.WARNING, logger="umec.clock"):
        for _ in range(3):
            mono[0] += 6
            assert clock.now() == db_time + timedelta(seconds=mono[0] - 100.0)
    assert sum("unreadable" in r.message for r in caplog.records) == 1
    failing[0] = False
    mono[0] += 6
    assert clock.now() == db_time + timedelta(seconds=mono[0] - 100.0)


def test_clock_for_sqlite_is_the_system_clock() -> None:
    engine = create_engine("sqlite://")
    clock = clock_for(engine)
    assert isinstance(clock, SystemClock)
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 1


def test_clock_for_postgresql_reads_the_database(pg_database: str) -> None:
    engine = create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://"))
    clock = clock_for(engine)
    assert isinstance(clock, DatabaseClock)
    assert abs((clock.now() - datetime.now(UTC)).total_seconds()) < 2
    engine.dispose()


def test_a_backward_step_does_not_drain_a_rate_limiter() -> None:
    limiter = RateLimiter(rate=1.0, burst=2.0)
    assert limiter.retry_after("c", 1000.0) == 0
    assert limiter.retry_after("c", 1000.0 - 7200) == 0  # clock stepped back 2 h
    assert limiter.retry_after("c", 1000.0 - 7199) == 0
