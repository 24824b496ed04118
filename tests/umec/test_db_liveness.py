"""umec.db's pool liveness check on PostgreSQL (issue 15): no round trip for a connection in use,
one ping for a connection that may be dead, and a connection killed while idle (what a
PostgreSQL restart or failover does to every pooled connection) never fails a request.

Runs against the shared PostgreSQL in a database of its own; only this test's own backends are
terminated (``pg_terminate_backend``, as a restart's fast shutdown does to each backend).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from umec.db import PING_AFTER_IDLE_SECONDS, make_engine, watch_liveness


class Pings:
    def __init__(self, engine: Engine) -> None:
        self.count = 0
        ping = engine.dialect.do_ping

        def counted(dbapi_connection: Any) -> bool:
            self.count += 1
            return bool(ping(dbapi_connection))

        engine.dialect.do_ping = counted  # type: ignore[method-assign]


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def terminate(url: str, pids: list[int]) -> None:
    """Kill the backends from another connection and wait until they are gone."""
    killer = create_engine(url.replace("postgresql://", "postgresql+psycopg://"),
                           isolation_level="AUTOCOMMIT")
    try:
        with killer.connect() as conn:
            for pid in pids:
                assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
            for _ in range(100):
                alive = conn.execute(text("SELECT count(*) FROM pg_stat_activity "
                                          "WHERE pid = ANY(:p)"), {"p": pids}).scalar_one()
                if not alive:
                    break
                time.sleep(0.05)
        time.sleep(0.1)  # the FATAL message and the FIN reach the client's socket
    finally:
        killer.dispose()


@pytest.fixture
def engine(pg_database: str) -> Iterator[Engine]:
    eng = make_engine(pg_database)
    yield eng
    eng.dispose()


def test_a_connection_in_use_is_not_pinged(engine: Engine) -> None:
    pings = Pings(engine)
    pids = {backend_pid(engine) for _ in range(20)}
    assert len(pids) == 1  # the same pooled connection, checked out 20 times
    assert pings.count == 0
    assert PING_AFTER_IDLE_SECONDS == 10.0  # the threshold docs/decisions.md states


def test_a_connection_killed_while_idle_does_not_fail_the_request(
        engine: Engine, pg_database: str) -> None:
    pings = Pings(engine)
    before = backend_pid(engine)
    terminate(pg_database, [before])
    after = backend_pid(engine)  # must not raise
    assert after != before
    assert pings.count == 1  # the dead socket was seen, one ping confirmed it


def test_every_pooled_connection_killed_by_a_restart_is_replaced(
        engine: Engine, pg_database: str) -> None:
    conns = [engine.connect() for _ in range(3)]
    pids = [int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in conns]
    for c in conns:
        c.close()
    terminate(pg_database, pids)
    conns = [engine.connect() for _ in range(3)]  # none of these may fail
    fresh = [int(c.execute(text("SELECT pg_backend_pid()")).scalar_one()) for c in conns]
    for c in conns:
        c.close()
    assert not set(fresh) & set(pids)


def test_a_connection_idle_longer_than_the_threshold_is_pinged(pg_database: str) -> None:
    eng = create_engine(pg_database.replace("postgresql://", "postgresql+psycopg://"))
    watch_liveness(eng, idle_seconds=0.05)
    pings = Pings(eng)
    try:
        first = backend_pid(eng)
        assert pings.count == 0  # just connected
        assert backend_pid(eng) == first and pings.count == 0  # idle < 0.05 s
        time.sleep(0.2)
        assert backend_pid(eng) == first
        assert pings.count == 1
    finally:
        eng.dispose()


def test_a_process_holds_at_most_its_configured_connections(pg_database: str) -> None:
    """Settings.database_max_connections bounds the pool (half kept, half overflow): the sum
    over replicas must fit the server's max_connections (tests/umec/test_deploy.py)."""
    engine = make_engine(pg_database, max_connections=4)
    try:
        held = [engine.connect() for _ in range(4)]
        assert engine.pool.size() == 2 and engine.pool.checkedout() == 4  # type: ignore[attr-defined]
        assert engine.pool._max_overflow == 2  # type: ignore[attr-defined]
        for conn in held:
            conn.close()
    finally:
        engine.dispose()
