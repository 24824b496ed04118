"""kernel.lease and kernel.periodic: one replica holds a lease, a periodic task survives a failed
round, runs only while it holds the lease, and stops only when cancelled. The lease runs on
SQLite and PostgreSQL (migrated schema, as the server uses it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from kernel.lease import SqlLease, kernel_metadata
from kernel.periodic import PeriodicTask
from tests.support.migrations import BACKENDS, engine_at
from umec.db import alembic_config, open_database


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lease.db'}"
    else:
        url = request.getfixturevalue("pg_database")
    engine, made = open_database(url)  # migrated to head, as the server opens it
    yield made
    engine.dispose()


def test_one_holder_renews_and_another_takes_over_after_expiry(
        sessions: sessionmaker[Session]) -> None:
    clock = Clock()
    a = SqlLease(sessions, "job", ttl=5, now=clock, holder="a")
    b = SqlLease(sessions, "job", ttl=5, now=clock, holder="b")
    assert a.acquire() is True    # first ever: inserted
    assert b.acquire() is False   # held by another
    clock.at += timedelta(seconds=4)
    assert a.acquire() is True    # renewal by the holder
    clock.at += timedelta(seconds=4)
    assert b.acquire() is False   # renewed: still a's
    clock.at += timedelta(seconds=2)
    assert b.acquire() is True    # a's lease lapsed
    assert a.acquire() is False


def test_leases_of_different_jobs_are_independent(sessions: sessionmaker[Session]) -> None:
    clock = Clock()
    assert SqlLease(sessions, "one", ttl=5, now=clock, holder="a").acquire()
    assert SqlLease(sessions, "two", ttl=5, now=clock, holder="b").acquire()


def test_a_lease_taken_before_a_clock_step_back_is_void(sessions: sessionmaker[Session]) -> None:
    clock = Clock()
    assert SqlLease(sessions, "job", ttl=5, now=clock, holder="a").acquire()
    clock.at -= timedelta(minutes=10)  # the database clock stepped back; "a" then died
    assert SqlLease(sessions, "job", ttl=5, now=clock, holder="b").acquire() is True


def test_a_renewal_within_the_slack_is_not_void(sessions: sessionmaker[Session]) -> None:
    clock = Clock()
    assert SqlLease(sessions, "job", ttl=5, now=clock, holder="a").acquire()
    clock.at -= timedelta(seconds=6)  # a TTL plus a second behind: within TTL + slack
    assert SqlLease(sessions, "job", ttl=5, now=clock, holder="b").acquire() is False


def test_default_holders_differ_per_lease_object(sessions: sessionmaker[Session]) -> None:
    clock = Clock()
    assert SqlLease(sessions, "job", ttl=5, now=clock).acquire() is True
    assert SqlLease(sessions, "job", ttl=5, now=clock).acquire() is False


@pytest.fixture(params=BACKENDS)
def engine_0011(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    return engine_at(request, tmp_path, "0011")


def test_migration_0012_renames_the_table_and_matches_the_model(engine_0011: Engine) -> None:
    engine = engine_0011
    assert "attest_leases" in inspect(engine).get_table_names()
    command.upgrade(alembic_config(engine), "head")
    names = inspect(engine).get_table_names()
    assert "leases" in names and "attest_leases" not in names
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), kernel_metadata)
    assert [d for d in diff if isinstance(d, tuple) and d[0] != "remove_table"
            and "leases" in repr(d)] == []
    command.downgrade(alembic_config(engine), "0011")
    assert "attest_leases" in inspect(engine).get_table_names()
    engine.dispose()


class NeverHeld:
    def acquire(self) -> bool:
        return False


def test_a_failed_round_is_logged_and_the_next_one_runs(caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []

    def work() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("database away")

    async def main() -> None:
        task = asyncio.create_task(PeriodicTask("demo job", 0.01, work).run())
        while len(rounds) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="umec.background"):
        asyncio.run(asyncio.wait_for(main(), 10))
    assert len(rounds) >= 3
    assert "demo job failed: RuntimeError: database away" in caplog.text


def test_work_runs_only_while_the_lease_is_held() -> None:
    ran: list[str] = []
    task = PeriodicTask("leased", 0.01, lambda: ran.append("x"), lease=NeverHeld())
    assert asyncio.run(task.run_once()) is False
    assert ran == []


def test_sync_work_runs_off_the_event_loop_and_async_work_is_awaited() -> None:
    seen: list[str] = []

    def sync_work() -> None:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()  # a worker thread has no running loop
        seen.append("sync")

    async def async_work() -> None:
        seen.append("async")

    async def main() -> None:
        assert await PeriodicTask("s", 1, sync_work).run_once()
        assert await PeriodicTask("a", 1, async_work).run_once()

    asyncio.run(main())
    assert seen == ["sync", "async"]


def test_delay_first_waits_before_the_first_round() -> None:
    ran: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        task = asyncio.create_task(
            PeriodicTask("later", 0.3, lambda: ran.append(loop.time() - start),
                         delay_first=True).run())
        await asyncio.sleep(0.1)
        assert ran == []
        while not ran:
            await asyncio.sleep(0.02)
        task.cancel()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert ran[0] >= 0.25
