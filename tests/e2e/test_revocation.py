"""Revocation that cannot be lost (issue 10), on SQLite and PostgreSQL.

Two levels:

* **Store and follower**, with the real SQL store and :class:`RevocationFollower`: one
  deterministic test for each way the old cursor feed skipped an entry (an entry committed
  between its two queries, a row numbered earlier but committed later, row numbers reused after
  cleanup), and the follower's own promises (an entry once applied stays; a follower that cannot
  read makes the guard refuse).
* **A real ``umec server`` on loopback**: a node's change of trust and its revocation commit
  together or not at all (a failing revocation write rolls the verdict back), and removal
  revokes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, func, insert, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from attest.service import registrar
from attest.service.models import NodeRow
from mec_api.tokens.feed import (
    FeedMalformed,
    RevocationFollower,
    StoreSource,
    parse_feed,
    store_source,
)
from mec_api.tokens.feed_mirror import FeedMirror, FeedView, answer
from mec_api.tokens.issuer import TOKEN_EXCHANGE, TOKEN_TYPE_JWT
from mec_api.tokens.models import RevocationGenerationRow, RevocationRow
from mec_api.tokens.revocations import (
    CLOCK_STEP_ALLOWANCE_SECONDS,
    ENTRY_LOCAL_LIFE_SECONDS,
    Revocation,
    RevocationGenerationMissing,
    RevocationList,
    RevocationStore,
    next_generation,
    write_pod_revocations,
)
from tests.support.revocation_site import DATABASES, Site, site_settings, trusted_node
from tests.support.tokens import ClusterIssuer
from umec.app import build_server
from umec.db import open_database
from umec.localserver import ServerThread, free_port
from umec.settings import Settings

LIFETIME = 300.0
TABLE = RevocationRow.__table__
GENERATION = RevocationGenerationRow.__table__


def _url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'umec.db'}"
    return str(request.getfixturevalue("pg_database"))


@dataclass
class Feed:
    engine: Engine
    sessions: sessionmaker[Session]
    store: RevocationStore
    revocations: RevocationList
    follower: RevocationFollower

    def step(self) -> None:
        asyncio.run(self.follower.step())

    def insert(self, **values: Any) -> None:
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(insert(TABLE).values(
                reason="test", created_at=now, generation=next_generation(conn),
                expires_at=now + timedelta(seconds=LIFETIME), **values))

    def insert_raw(self, **values: Any) -> None:
        """An entry written without moving the generation (only a broken writer does this)."""
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(insert(TABLE).values(
                reason="test", created_at=now,
                expires_at=now + timedelta(seconds=LIFETIME), **values))

    def node_revoked(self, node: str, epoch: int = 1) -> bool:
        return self.revocations.revoked(jti="-", node=node, node_epoch=epoch,
                                        now=time.time()) is not None


@pytest.fixture(params=DATABASES)
def feed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Feed]:
    engine, sessions = open_database(_url(request, tmp_path))
    store = RevocationStore(sessions, max_token_lifetime=LIFETIME)
    revocations = RevocationList()
    follower = RevocationFollower(store_source(store), revocations)
    yield Feed(engine, sessions, store, revocations, follower)
    engine.dispose()


# -- each way the cursor feed skipped an entry -------------------------------------------------

@pytest.mark.parametrize("behind", ["FROM token_revocation_generation",
                                    "FROM token_revocations "])
def test_an_entry_committed_during_a_read_is_applied_by_the_next(feed: Feed,
                                                                  behind: str) -> None:
    """The old feed's two-query window: its first query found nothing new, a revocation
    committed, and its second query moved the cursor past it. Here a revocation commits right
    after the follower's generation read, or right after its whole-set read; the next read
    must apply it."""
    feed.step()
    feed.insert(kind="node", node="node-b", node_epoch=1)  # the next step reads the whole set
    landed: list[bool] = []

    def commit_behind_the_read(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if behind in statement and "UPDATE" not in statement and not landed:
            landed.append(True)
            feed.store.revoke_node("node-a", "committed during the read", datetime.now(UTC),
                                   through_epoch=1)

    event.listen(feed.engine, "after_cursor_execute", commit_behind_the_read)
    try:
        feed.step()
    finally:
        event.remove(feed.engine, "after_cursor_execute", commit_behind_the_read)
    assert landed and feed.node_revoked("node-b")
    feed.step()
    assert feed.node_revoked("node-a")


def test_a_follower_reads_the_set_only_when_the_generation_moved(feed: Feed) -> None:
    """While nothing is revoked a poll is one primary-key read; each revocation, whichever
    writer wrote it, moves the generation and the next poll reads only the entries numbered
    since (the whole set only the first time)."""
    source = feed.follower.fetch
    assert isinstance(source, StoreSource)
    feed.step()
    feed.step()
    feed.step()
    assert source.whole_reads == 1
    now = datetime.now(UTC)
    feed.store.revoke_token("jti-1", now.timestamp() + 60, "holder", now)
    feed.step()
    assert (source.whole_reads, source.partial_reads) == (1, 1)
    assert feed.revocations.revoked(jti="jti-1", node=None, node_epoch=1,
                                    now=time.time()) is not None
    with feed.engine.begin() as conn:
        write_pod_revocations(conn, pod_uids=["uid-gone"], reason="deleted", now=now,
                              max_token_lifetime=LIFETIME)
    feed.step()
    feed.step()
    assert (source.whole_reads, source.partial_reads) == (1, 2)
    assert feed.revocations.pod_revoked("uid-gone", time.time())


def test_generations_commit_in_the_order_they_are_taken(feed: Feed) -> None:
    """The property the follower relies on. A writer that took number N holds the row until
    it commits: a second writer waits and takes N + 1, and a reader meanwhile sees N - 1 and
    nothing numbered N, so no entry numbered at or below what a reader saw appears later."""
    feed.step()
    first = feed.engine.connect()
    txn = first.begin()
    taken = next_generation(first)
    first.execute(insert(TABLE).values(
        kind="node", node="node-slow", node_epoch=1, generation=taken, reason="t",
        created_at=datetime.now(UTC),
        expires_at=datetime.now(UTC) + timedelta(seconds=LIFETIME)))
    second: list[int] = []
    other = threading.Thread(target=lambda: feed.store.revoke_node(
        "node-fast", "t", datetime.now(UTC), through_epoch=1) or second.append(
        int(feed.store.generation() or 0)))
    other.start()
    time.sleep(0.5)
    assert other.is_alive() and second == []  # waiting for the first writer's row lock
    assert feed.store.generation() == taken - 1
    feed.step()
    assert not feed.node_revoked("node-slow")
    txn.commit()
    first.close()
    other.join(30)
    assert second == [taken + 1]
    feed.step()
    assert feed.node_revoked("node-slow") and feed.node_revoked("node-fast")


def test_without_the_generation_row_writers_fail_and_followers_read_everything(
        feed: Feed) -> None:
    """Fail closed both ways: a revocation cannot commit without moving the generation, and a
    follower that cannot read one reads the whole set on every poll."""
    with feed.engine.begin() as conn:
        conn.execute(GENERATION.delete())
    with pytest.raises(RevocationGenerationMissing, match="umec db upgrade"):
        feed.store.revoke_node("node-a", "x", datetime.now(UTC), through_epoch=1)
    assert feed.store.current(datetime.now(UTC)) == []  # rolled back with the failure
    feed.insert_raw(kind="node", node="node-c", node_epoch=1)
    feed.step()
    feed.insert_raw(kind="node", node="node-d", node_epoch=1)
    feed.step()
    assert feed.node_revoked("node-c") and feed.node_revoked("node-d")


def test_an_entry_numbered_earlier_but_committed_later_is_applied(feed: Feed) -> None:
    """PostgreSQL takes a sequence number before commit, so a row can become visible after a
    row with a higher number was read. Such a row is applied like any other."""
    feed.insert(seq=1000, kind="node", node="node-late", node_epoch=1)
    feed.step()
    feed.insert(seq=10, kind="node", node="node-early", node_epoch=1)
    feed.step()
    assert feed.node_revoked("node-late") and feed.node_revoked("node-early")


def test_an_entry_reusing_a_pruned_row_number_is_applied(feed: Feed) -> None:
    """SQLite reuses the highest row number after it is deleted (no AUTOINCREMENT): a
    revocation written after cleanup carries a number a follower already read."""
    past = datetime.now(UTC) - timedelta(seconds=2 * LIFETIME + CLOCK_STEP_ALLOWANCE_SECONDS)
    feed.store.revoke_node("node-old", "old", past, through_epoch=1)
    feed.store.revoke_node("node-new-1", "new", datetime.now(UTC), through_epoch=1)
    with feed.sessions() as s:
        top = s.scalar(select(func.max(RevocationRow.seq)))
    feed.step()
    with feed.engine.begin() as conn:  # cleanup takes the newest row number away
        conn.execute(TABLE.delete().where(TABLE.c.seq == top))
    assert feed.store.prune(datetime.now(UTC)) == 1
    feed.store.revoke_node("node-new-2", "after cleanup", datetime.now(UTC), through_epoch=1)
    feed.step()
    assert feed.node_revoked("node-new-1") and feed.node_revoked("node-new-2")


def test_an_applied_entry_stays_until_it_expires(feed: Feed) -> None:
    """Once refused, a token stays refused in this process: a later read that lacks the entry
    (a restored backup, a lagging replica) removes nothing."""
    feed.store.revoke_node("node-a", "gone", datetime.now(UTC), through_epoch=2)
    feed.step()
    with feed.engine.begin() as conn:
        conn.execute(TABLE.delete())
    feed.step()
    assert feed.node_revoked("node-a", epoch=2)
    feed.revocations.monotonic = lambda: time.monotonic() + ENTRY_LOCAL_LIFE_SECONDS + 1
    feed.revocations.expire(time.time() + LIFETIME + 10)  # life + margin + leeway
    assert not feed.node_revoked("node-a", epoch=2)


def test_the_store_keeps_and_serves_an_entry_for_the_clock_step_allowance(feed: Feed) -> None:
    """A pruner or reader whose clock runs ahead (a forward step, corrected later) deletes and
    omits nothing that expired less than CLOCK_STEP_ALLOWANCE_SECONDS before its now: once the
    clock is corrected, the entry is there for the tokens it still matches."""
    now = datetime.now(UTC)
    feed.store.revoke_node("node-a", "gone", now, through_epoch=2)
    ahead = now + timedelta(seconds=LIFETIME + 60 + CLOCK_STEP_ALLOWANCE_SECONDS * 0.9)
    assert feed.store.prune(ahead) == 0
    assert [e.node for e in feed.store.current(ahead)] == ["node-a"]
    assert [e.node for e in feed.store.read_after(None, ahead).entries] == ["node-a"]
    beyond = now + timedelta(seconds=LIFETIME + 60 + CLOCK_STEP_ALLOWANCE_SECONDS * 1.1)
    assert feed.store.current(beyond) == []
    assert feed.store.prune(beyond) == 1


def test_a_follower_that_cannot_read_is_not_current(feed: Feed) -> None:
    """``applied_at`` is when the last successful read started; a failing read leaves it."""
    feed.step()
    before = feed.follower.applied_at

    async def broken() -> list[Revocation]:
        raise OperationalError("SELECT", {}, Exception("database down"))
    feed.follower.fetch = broken
    with pytest.raises(OperationalError):
        feed.step()
    assert feed.follower.applied_at == before


def test_applied_at_is_the_start_of_the_read(feed: Feed) -> None:
    """A slow read does not count as current from its end: the guard's age is measured from
    the instant whose commits the set is known to hold."""
    slow_source = store_source(feed.store)

    async def slow() -> list[Revocation]:
        await asyncio.sleep(0.3)
        return await slow_source()
    feed.follower.fetch = slow
    started = time.monotonic()
    feed.step()
    assert started <= feed.follower.applied_at < started + 0.1


def test_callers_waiting_for_a_current_list_share_reads_and_give_up_in_time(
        feed: Feed) -> None:
    """``current_since``: 50 concurrent callers are served by a few reads, each started after
    they called; when reads hang, a caller gets False after its timeout, not a hang."""
    inner, reads = feed.follower.fetch, []

    async def counted() -> list[Revocation]:
        reads.append(time.monotonic())
        return await inner()
    feed.follower.fetch = counted

    async def main() -> tuple[list[bool], bool, float]:
        task = asyncio.create_task(feed.follower.run())
        await asyncio.sleep(0.05)
        called = time.monotonic()
        answers = await asyncio.gather(*(feed.follower.current_since(called, 2.0)
                                         for _ in range(50)))
        assert min(r for r in reads if r >= called) >= called
        hung = asyncio.Event()

        async def hanging() -> list[Revocation]:
            await hung.wait()
            return []
        feed.follower.fetch = hanging
        await asyncio.sleep(0.15)  # the follower is now inside a hanging read
        started = time.monotonic()
        late = await feed.follower.current_since(started, 0.2)
        waited = time.monotonic() - started
        task.cancel()
        return answers, late, waited

    answers, late, waited = asyncio.run(main())
    assert answers == [True] * 50 and len(reads) <= 4
    assert late is False and 0.15 < waited < 1.0


def test_a_feed_answer_over_the_entry_cap_is_refused_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mec_api.tokens.feed as feed_module
    monkeypatch.setattr(feed_module, "MAX_FEED_ENTRIES", 2)
    good = {"seq": 1, "kind": "token", "jti": "j", "expires_at": 2e9}
    assert len(parse_feed({"complete": True, "entries": [good, good]})) == 2
    with pytest.raises(FeedMalformed, match="3 entries"):
        parse_feed({"complete": True, "entries": [good, good, good]})


def test_the_feed_answer_is_all_or_nothing() -> None:
    good = {"seq": 1, "kind": "node", "node": "n", "node_epoch": 1, "expires_at": 2e9}
    assert parse_feed({"complete": True, "entries": [good]})[0].node == "n"
    for body in ({"entries": [good]}, {"complete": True}, [good],
                 {"complete": True, "entries": [good, {"kind": "node"}]},
                 {"complete": True, "entries": [{**good, "kind": "pod"}]}):
        with pytest.raises(FeedMalformed):
            parse_feed(body)


# -- a real server: the change of trust and its revocation commit together ----------------------

def test_a_failed_revocation_write_rolls_the_verdict_back(site: Site) -> None:
    """The node's change of trust and its revocation commit together or not at all: with the
    revocation insert failing, the untrusted verdict is not recorded (503, the node's agent
    retries), the node stays trusted with its epoch, and its token keeps working because the
    node is still trusted. Once the database accepts the write, the retry records both."""
    token = site.token()
    server_engine = site.server.attest.engine

    def fail_revocation_insert(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO TOKEN_REVOCATIONS"):
            raise OperationalError(statement, {}, Exception("injected: disk full"))

    site.node.tpm.extend(14, b"tampered k3s binary")
    before = site.state()
    event.listen(server_engine, "before_cursor_execute", fail_revocation_insert)
    try:
        with pytest.raises(httpx.HTTPStatusError) as failed:
            site.node.attest()
    finally:
        event.remove(server_engine, "before_cursor_execute", fail_revocation_insert)
    assert failed.value.response.status_code == 503
    assert failed.value.response.json()["check"] == "database.unavailable"
    assert site.state() == before and before[0] == "trusted"
    assert site.call(token).status_code == 200

    assert site.node.attest()["state"] == "untrusted"
    state, epoch, events = site.state()
    assert (state, epoch, events) == ("untrusted", before[1] + 1, before[2] + 1)
    r = site.refused_within(token, 1.0)
    assert r.status_code == 401 and "no longer trusted" in r.json()["detail"]


def test_a_node_gone_stale_loses_its_tokens_with_the_sweep(site: Site) -> None:
    """The deadline sweep's UPDATE of overdue nodes and their revocations are one
    transaction too."""
    from sqlalchemy import update

    from attest.service.verifier import mark_stale_nodes
    token = site.token()
    with site.engine.begin() as conn:
        conn.execute(update(NodeRow).where(NodeRow.name == "node-a").values(
            last_pass_at=datetime.now(UTC) - timedelta(hours=1)))
    assert [e.state for e in mark_stale_nodes(site.server.attest)] == ["stale"]
    r = site.refused_within(token, 1.0)
    assert r.status_code == 401 and "no longer trusted" in r.json()["detail"]
    with site.engine.connect() as conn:
        reasons = conn.execute(select(TABLE.c.reason)).scalars().all()
    assert len(reasons) == 1 and reasons[0].startswith("node stale: no passing evidence")


def test_removing_a_node_revokes_its_tokens(site: Site) -> None:
    token = site.token()
    assert site.call(token).status_code == 200
    started = time.monotonic()
    registrar.remove(site.server.attest, "node-a")
    r = site.refused_within(token, 1.0)
    assert r.status_code == 401 and "no longer trusted" in r.json()["detail"], r.text
    assert time.monotonic() - started < 1.0
    with site.engine.connect() as conn:
        rows = conn.execute(select(TABLE.c.kind, TABLE.c.node)).all()
    assert [(k, n) for k, n in rows] == [("node", "node-a")]


def test_introspection_stays_inactive_after_the_store_lost_the_entry(site: Site) -> None:
    """Introspection and RFC 7009 consult this process's followed list as well as the store:
    a store pruned on a clock that ran ahead (or restored from a backup) does not make a
    revoked token active again while the list still holds its entry."""
    token = site.token()
    registrar.remove(site.server.attest, "node-a")
    site.refused_within(token, 1.0)
    with site.engine.begin() as conn:  # what a prune on a clock 2 h ahead deletes
        conn.execute(TABLE.delete())
    operator = {"Authorization": f"Bearer {site.server.operator_token}"}
    r = httpx.post(f"{site.url}/oauth2/introspect", data={"token": token}, headers=operator)
    assert r.status_code == 200 and r.json() == {"active": False}, r.text


def test_removing_a_node_that_is_not_trusted_still_writes_a_revocation(site: Site) -> None:
    """Defence in depth: removal ends a trust period whatever the state, so it always writes
    a node entry (the one written when the node left ``trusted`` may have expired)."""
    site.node.tpm.extend(14, b"tampered")
    assert site.node.attest()["state"] == "untrusted"
    registrar.remove(site.server.attest, "node-a")
    with site.engine.connect() as conn:
        rows = conn.execute(select(TABLE.c.node, TABLE.c.node_epoch, TABLE.c.reason)
                            .order_by(TABLE.c.seq)).all()
    assert [(n, e) for n, e, _ in rows] == [("node-a", 1), ("node-a", 2)]
    assert rows[1].reason.startswith("node removed: ")


def test_umec_nodes_remove_revokes_the_nodes_tokens(site: Site) -> None:
    """The operator's CLI writes the same revocation in the same transaction as the server:
    ``umec nodes remove`` used to leave every token of the node working."""
    token = site.token()
    url = site.engine.url.render_as_string(hide_password=False)
    done = subprocess.run([sys.executable, "-m", "umec", "nodes", "remove", "node-a"],
                          env={**os.environ, "UMEC_DATABASE_URL": url}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    r = site.refused_within(token, 1.0)
    assert r.status_code == 401 and "no longer trusted" in r.json()["detail"]


def test_renaming_a_node_revokes_the_old_names_tokens(site: Site) -> None:
    token = site.token()
    registrar.rename(site.server.attest, "node-a", "node-b")
    r = site.refused_within(token, 1.0)
    assert r.status_code == 401 and "no longer trusted" in r.json()["detail"]


def test_a_server_whose_follower_cannot_read_refuses_within_a_second(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard that cannot prove it holds every revocation committed a second ago refuses
    every token (503, Retry-After), and serves again once a read succeeds."""
    token = site.token()
    assert site.call(token).status_code == 200
    store = site.server.tokens.store

    def down(*_: Any) -> list[Revocation]:
        raise OperationalError("SELECT", {}, Exception("database down"))
    monkeypatch.setattr(store, "current", down)
    monkeypatch.setattr(store, "generation", down)
    broke = time.monotonic()
    while (r := site.call(token)).status_code == 200:
        assert time.monotonic() - broke < 1.5, "tokens still honoured without a current feed"
        time.sleep(0.05)
    assert time.monotonic() - broke >= 0.7  # the promise is 1 s, not less
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "revocation feed is not current" in r.json()["detail"]
    monkeypatch.undo()
    store.poke()
    deadline = time.monotonic() + 2
    while site.call(token).status_code != 200:
        assert time.monotonic() < deadline, "the guard did not recover after the feed did"
        time.sleep(0.05)


def test_the_public_feed_costs_one_read_at_a_time(site: Site) -> None:
    """Anyone may read the feed; 200 concurrent callers share a handful of database reads,
    and every answer is the complete set."""
    token = site.token()
    registrar.remove(site.server.attest, "node-a")
    site.refused_within(token, 1.0)
    url = f"{site.url}/oauth2/revocations"

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(
                max_connections=200)) as client:
            return await asyncio.gather(*(client.get(url) for _ in range(200)))
    reads: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "token_revocations" in statement:
            reads.append(statement)
    server_engine = site.server.attest.engine
    event.listen(server_engine, "before_cursor_execute", count)
    try:
        answers = asyncio.run(main())
    finally:
        event.remove(server_engine, "before_cursor_execute", count)
    # 200 uncoalesced calls would be 200 reads, plus the server's own follower (4 a second).
    # Coalesced, it is one per wave of arrivals: a few dozen on a loaded machine.
    assert len(reads) < 120, len(reads)
    assert {r.status_code for r in answers} == {200}
    assert all(r.json()["complete"] is True and [e["node"] for e in r.json()["entries"]]
               == ["node-a"] for r in answers)


def test_a_workload_revoking_in_a_loop_is_slowed_down(site: Site) -> None:
    """Each RFC 7009 revocation is an entry every resource server reads for the token's life:
    a workload gets its burst (20), then 429 with Retry-After, and nothing is written."""
    tokens = [site.token() for _ in range(30)]
    with httpx.Client() as client:
        codes = [client.post(f"{site.url}/oauth2/revoke", data={"token": t}) for t in tokens]
    assert [r.status_code for r in codes[:20]] == [200] * 20
    limited = codes[-1]
    assert limited.status_code == 429 and limited.json()["check"] == "revoke.rate"
    assert int(limited.headers["retry-after"]) >= 1
    with site.engine.connect() as conn:
        count = conn.scalar(select(func.count()).select_from(TABLE).where(TABLE.c.kind == "token"))
    assert count is not None and 20 <= count < 30


def test_the_issuer_mints_nothing_for_a_pod_with_a_live_pod_revocation(site: Site) -> None:
    """Defence in depth: should a record of a deleted pod exist (a restored backup), the pod
    revocation in the issuer's list still refuses it."""
    from mec_api.tokens.revocations import write_pod_revocations
    site.token(uid="uid-restored", name="app-r")
    with site.engine.begin() as conn:
        write_pod_revocations(conn, pod_uids=["uid-restored"], reason="test",
                              now=datetime.now(UTC), max_token_lifetime=LIFETIME)
    site.server.tokens.store.poke()
    deadline = time.monotonic() + 2
    while True:
        r = httpx.post(f"{site.url}/oauth2/token", data={
            "grant_type": TOKEN_EXCHANGE, "subject_token_type": TOKEN_TYPE_JWT,
            "subject_token": site.cluster.token(pod="app-r", pod_uid="uid-restored"),
            "scope": "sensor.read"})
        if r.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 400 and r.json()["check"] == "admission.pod", r.text
    assert "was deleted" in r.json()["error_description"]


# -- the feed over HTTP: whole set, then only what the follower lacks ---------------------------

def test_the_feed_answers_the_whole_set_or_what_is_numbered_after_since() -> None:
    a = Revocation(1, "node", None, "n1", 1, 2e9, generation=4)
    b = Revocation(1, "node", None, "n2", 1, 2e9, generation=6)  # row number 1 reused
    view = FeedView(6, (a, b))
    whole = json.loads(answer(view, None))
    assert whole["since"] is None and whole["generation"] == 6 and whole["complete"] is True
    assert [e["node"] for e in whole["entries"]] == ["n1", "n2"]
    delta = json.loads(answer(view, 4))
    assert delta["since"] == 4 and [e["node"] for e in delta["entries"]] == ["n2"]
    assert json.loads(answer(view, 6))["entries"] == []
    restored = json.loads(answer(view, 9))  # a generation this database never reached
    assert restored["since"] is None and len(restored["entries"]) == 2
    no_row = json.loads(answer(FeedView(None, (a,)), 4))
    assert no_row["since"] is None and no_row["generation"] is None


def test_the_feed_mirror_reads_only_what_was_numbered_since(feed: Feed) -> None:
    mirror = FeedMirror(feed.store, lambda: datetime.now(UTC))
    feed.store.revoke_node("node-a", "r", datetime.now(UTC), through_epoch=1)
    first = mirror.refresh()
    assert [e.node for e in first.entries] == ["node-a"] and mirror.whole_reads == 1
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)
    event.listen(feed.engine, "before_cursor_execute", count)
    try:
        assert mirror.refresh().generation == first.generation
        assert not [s for s in statements if "FROM token_revocations " in s]
        feed.store.revoke_node("node-b", "r", datetime.now(UTC), through_epoch=1)
        second = mirror.refresh()
    finally:
        event.remove(feed.engine, "before_cursor_execute", count)
    assert sorted(str(e.node) for e in second.entries) == ["node-a", "node-b"]
    assert mirror.whole_reads == 1
    reads = [s for s in statements if "FROM token_revocations " in s]
    assert len(reads) == 1 and "generation >" in reads[0]


def test_the_feed_mirror_serves_an_entry_through_a_forward_step(feed: Feed) -> None:
    """The public feed's mirror, on a clock stepped ahead of an entry's expiry by less than
    the allowance, still serves it (a follower starting then gets it, and holds it)."""
    now = datetime.now(UTC)
    ahead = now + timedelta(seconds=LIFETIME + CLOCK_STEP_ALLOWANCE_SECONDS / 2)
    mirror = FeedMirror(feed.store, lambda: ahead)
    feed.store.revoke_node("node-a", "r", now, through_epoch=1)
    assert [e.node for e in mirror.refresh().entries] == ["node-a"]
    mirror.clock = lambda: ahead + timedelta(seconds=CLOCK_STEP_ALLOWANCE_SECONDS)
    assert mirror.refresh().entries == ()


def test_the_feed_answers_a_current_follower_without_reading_the_set(site: Site) -> None:
    """A follower naming the generation it holds costs one primary-key read, and a revocation
    committed after that is in its next answer, alone."""
    first = httpx.get(f"{site.url}/oauth2/revocations", timeout=10).json()
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)
    event.listen(site.engine, "before_cursor_execute", count)
    try:
        same = httpx.get(f"{site.url}/oauth2/revocations",
                         params={"since": first["generation"]}, timeout=10).json()
        set_reads = [s for s in statements if "FROM token_revocations " in s]
        assert same["generation"] == first["generation"] and same["entries"] == []
        assert set_reads == []
        site.server.tokens.store.revoke_node("node-z", "test", datetime.now(UTC),
                                             through_epoch=3)
        moved = httpx.get(f"{site.url}/oauth2/revocations",
                          params={"since": first["generation"]}, timeout=10).json()
    finally:
        event.remove(site.engine, "before_cursor_execute", count)
    assert moved["since"] == first["generation"]
    assert moved["generation"] == first["generation"] + 1
    assert [(e["node"], e["node_epoch"]) for e in moved["entries"]] == [("node-z", 3)]


def test_an_http_follower_gets_the_whole_set_then_only_what_it_lacks(site: Site) -> None:
    from mec_api.tokens.feed import HttpFeed
    token = site.token()
    other = site.token(uid="uid-app-2", name="app-2")
    assert httpx.post(f"{site.url}/oauth2/revoke", data={"token": other}).status_code == 200

    async def main() -> tuple[list[Revocation], list[Revocation], list[Revocation], int | None]:
        async with httpx.AsyncClient(timeout=30) as client:
            source = HttpFeed(f"{site.url}/oauth2/revocations", client)
            first = await source()
            registrar.remove(site.server.attest, "node-a")
            second = await source()
            third = await source()
            return first, second, third, source.generation
    first, second, third, generation = asyncio.run(main())
    assert [e.kind for e in first] == ["token"]
    assert [(e.kind, e.node) for e in second] == [("node", "node-a")]   # only what it lacked
    assert third == [] and generation == 2
    followed = RevocationList()
    followed.apply(first + second)
    assert followed.revoked(jti="x", node="node-a", node_epoch=1, now=time.time())
    assert site.refused_within(token, 1.0).status_code == 401


def test_a_delta_since_a_generation_the_follower_does_not_hold_is_refused() -> None:
    from mec_api.tokens.feed import HttpFeed

    def lying(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"complete": True, "generation": 9, "since": 7,
                                         "entries": []})

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(lying)) as client:
            feed = HttpFeed("http://feed/oauth2/revocations", client)
            with pytest.raises(FeedMalformed, match="not since the generation this follower"):
                await feed()
            assert feed.generation is None  # the next read asks for the whole set
    asyncio.run(main())


def test_a_umec_api_process_refuses_within_a_second_through_the_http_feed(
        site: Site, tmp_path: Path) -> None:
    """``umec api sensor`` on its own (its own database for readings, the token service's
    JWKS and revocation feed over HTTP): a node's failure reaches it within the 1 s promise."""
    from umec.api_process import build_api_process
    api = build_api_process(Settings(data_dir=tmp_path / "api", token_service_url=site.url),
                            ["sensor"])
    token = site.token()
    with ServerThread(api) as http:
        def call() -> httpx.Response:
            return httpx.get(f"{http.url}/sensor/v1/tags",
                             headers={"Authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 5
        while (r := call()).status_code == 503:  # until its first read of the feed
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        site.node.tpm.extend(14, b"tampered k3s binary")
        assert site.node.attest()["state"] == "untrusted"
        failed = time.monotonic()
        while True:
            sent = time.monotonic() - failed
            r = call()
            if r.status_code != 200:
                break
            assert sent < 1.0, "the umec api process still accepts the token after 1 s"
            time.sleep(0.02)
        assert r.status_code == 401 and "no longer trusted" in r.json()["detail"], r.text


@pytest.mark.postgres
def test_every_replica_is_woken_by_a_committed_revocation(
        tmp_path: Path, pg_database: str) -> None:
    """On PostgreSQL a revocation's transaction NOTIFYs every process; a replica whose own poll
    would come only in 30 s refuses the token at once. (Workers of one server are processes
    like replicas.)"""
    cluster = ClusterIssuer()
    ports = [free_port(), free_port()]
    settings = site_settings(tmp_path, pg_database, ports[0], cluster)
    replicas = [build_server(settings.model_copy(update={"listen_port": port}))
                for port in ports]
    slow = replicas[1].tokens
    slow.follower.interval = 30.0      # its poll alone would notice in 30 s
    slow.guard.max_feed_age = 60.0
    engine, _ = open_database(pg_database)
    with ServerThread(replicas[0].app, port=ports[0]) as a, \
            ServerThread(replicas[1].app, port=ports[1]) as b, \
            httpx.Client(base_url=a.url, timeout=30, headers={
                "Authorization": f"Bearer {replicas[0].operator_token}"}) as client:
        node = trusted_node(replicas, client)
        site = Site(replicas[0], a.url, engine, cluster, node)
        token = site.token()
        on_b = Site(replicas[1], b.url, engine, cluster, node)
        assert on_b.call(token).status_code == 200
        node.tpm.extend(14, b"tampered k3s binary")
        assert node.attest()["state"] == "untrusted"
        r = on_b.refused_within(token, 1.0)
        assert r.status_code == 401 and "no longer trusted" in r.json()["detail"]
    engine.dispose()


@pytest.mark.parametrize("database", DATABASES)
def test_a_token_refused_on_one_replica_is_refused_on_every_replica_from_then_on(
        tmp_path: Path, database: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard on the token service's database waits for a read that started after the call
    arrived: a replica that was neither poked nor woken, and whose own poll would come in 30 s,
    refuses the token on the first call after the verdict, not within its poll."""
    import mec_api.service.tokens
    monkeypatch.setattr(mec_api.service.tokens, "revocation_wakeups",
                        lambda *_: None)  # no NOTIFY
    url = (f"sqlite:///{tmp_path / 'umec.db'}" if database == "sqlite"
           else str(request.getfixturevalue("pg_database")))
    cluster = ClusterIssuer()
    ports = [free_port(), free_port()]
    settings = site_settings(tmp_path, url, ports[0], cluster)
    replicas = [build_server(settings.model_copy(update={"listen_port": port}))
                for port in ports]
    slow = replicas[1].tokens
    slow.follower.interval = 30.0
    slow.guard.max_feed_age = 60.0
    engine, _ = open_database(url)
    with ServerThread(replicas[0].app, port=ports[0]) as a, \
            ServerThread(replicas[1].app, port=ports[1]) as b, \
            httpx.Client(base_url=a.url, timeout=30, headers={
                "Authorization": f"Bearer {replicas[0].operator_token}"}) as client:
        node = trusted_node(replicas, client)
        token = Site(replicas[0], a.url, engine, cluster, node).token()
        on_b = Site(replicas[1], b.url, engine, cluster, node)
        assert on_b.call(token).status_code == 200
        node.tpm.extend(14, b"tampered k3s binary")
        assert node.attest()["state"] == "untrusted"
        r = on_b.call(token)
        assert r.status_code == 401 and "no longer trusted" in r.json()["detail"], r.text
    engine.dispose()


# -- a restored database whose generation caught up again before a follower read it -----------

def _backup(feed: Feed) -> dict[str, Any]:
    with feed.engine.connect() as conn:
        return dict(conn.execute(GENERATION.select()).mappings().one())


def _restore(feed: Feed, row: dict[str, Any]) -> None:
    """The database as it was when ``row`` was read: later entries and numbers are gone."""
    with feed.engine.begin() as conn:
        conn.execute(TABLE.delete().where(TABLE.c.generation > row["generation"]))
        conn.execute(GENERATION.update().values(**row))


@pytest.mark.parametrize("new_writes", [2, 3])  # new numbers up to the held one, and past it
def test_a_restored_database_whose_generation_caught_up_is_read_whole(
        feed: Feed, new_writes: int) -> None:
    """A backup restored at number 1 while followers hold 3, and revocations written before
    the followers' next read (a deadline sweep after the outage takes one number per node):
    the new entries numbered 2 and 3 are not those the followers hold. Comparing numbers
    alone saw nothing new (reached) or only the entry numbered 4 (passed)."""
    feed.step()
    feed.store.revoke_node("node-old-1", "r", datetime.now(UTC), through_epoch=1)
    backup = _backup(feed)
    for name in ("node-old-2", "node-old-3"):
        feed.store.revoke_node(name, "r", datetime.now(UTC), through_epoch=1)
    feed.step()
    _restore(feed, backup)
    new = [f"node-new-{i}" for i in range(new_writes)]
    for name in new:
        feed.store.revoke_node(name, "stale after the outage", datetime.now(UTC),
                               through_epoch=1)
    feed.step()
    assert [n for n in new if not feed.node_revoked(n)] == []


def test_the_feed_mirror_reads_a_restored_database_whole(feed: Feed) -> None:
    """The same restore seen by the feed's mirror (the token service's answers to every
    ``umec api`` follower come from it)."""
    mirror = FeedMirror(feed.store, lambda: datetime.now(UTC))
    feed.store.revoke_node("node-old-1", "r", datetime.now(UTC), through_epoch=1)
    backup = _backup(feed)
    feed.store.revoke_node("node-old-2", "r", datetime.now(UTC), through_epoch=1)
    mirror.refresh()
    _restore(feed, backup)
    for name in ("node-new-0", "node-new-1"):
        feed.store.revoke_node(name, "r", datetime.now(UTC), through_epoch=1)
    view = mirror.refresh()
    assert {"node-new-0", "node-new-1"} <= {e.node for e in view.entries}


def test_an_http_follower_reads_a_restored_database_whole(feed: Feed) -> None:
    """An ``umec api`` follower holding number 3 asks a token service (restarted after the
    restore: a fresh mirror) for what came after 3; the answer's entries numbered 2 and 3
    belong to another history and it must read the whole set."""
    from mec_api.tokens.feed import HttpFeed
    mirrors = [FeedMirror(feed.store, lambda: datetime.now(UTC))]

    def serve(request: httpx.Request) -> httpx.Response:
        since = request.url.params.get("since")
        return httpx.Response(200, content=answer(mirrors[-1].refresh(),
                                                  int(since) if since else None))

    async def read(source: HttpFeed) -> None:
        feed.revocations.apply(await source())

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(serve)) as client:
            source = HttpFeed("http://feed/oauth2/revocations", client)
            await read(source)
            feed.store.revoke_node("node-old-1", "r", datetime.now(UTC), through_epoch=1)
            backup = _backup(feed)
            feed.store.revoke_node("node-old-2", "r", datetime.now(UTC), through_epoch=1)
            feed.store.revoke_node("node-old-3", "r", datetime.now(UTC), through_epoch=1)
            await read(source)
            _restore(feed, backup)
            mirrors.append(FeedMirror(feed.store, lambda: datetime.now(UTC)))
            for name in ("node-new-0", "node-new-1", "node-new-2"):
                feed.store.revoke_node(name, "r", datetime.now(UTC), through_epoch=1)
            await read(source)
    asyncio.run(main())
    assert feed.node_revoked("node-new-0") and feed.node_revoked("node-new-1")
