"""Migration 0015 (k3s join tokens in umec's database, issue 13 part 2) on a populated database
(SQLite and PostgreSQL): the table starts empty, matches the model, refuses a second row for one
(node, verdict) even from another connection (what makes a replayed join request fail on any
replica), and downgrades."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from attest.service.models import AttestBase
from tests.support.migrations import BACKENDS, engine_at
from umec.db import alembic_config

NOW = datetime(2026, 12, 7, tzinfo=UTC)
INSERT = text("INSERT INTO attest_join_tokens (id, node, token_id, verdict, issued_at, "
              "expires_at) VALUES (:id, :node, :token_id, :verdict, :t, :e)")


def row(node: str = "pi-1", verdict: str = "a" * 64) -> dict[str, object]:
    return {"id": str(uuid.uuid4()), "node": node, "token_id": "abc123", "verdict": verdict,
            "t": NOW, "e": NOW + timedelta(minutes=10)}


@pytest.fixture(params=BACKENDS)
def engine_0014(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    engine = engine_at(request, tmp_path, "0014")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO attest_nodes (name, node_class, ek_public, ek_hash, ak_public, state, "
            "created_at, activated_at, state_changed_at) VALUES "
            "('pi-1', 'default', :b, :h, :b, 'trusted', :t, :t, :t)"),
            {"b": b"x", "h": "a" * 64, "t": NOW})
    return engine


def test_upgrade_adds_the_join_token_table_matching_the_model(engine_0014: Engine) -> None:
    engine = engine_0014
    command.upgrade(alembic_config(engine), "0015")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM attest_join_tokens")).scalar() == 0
        diff = compare_metadata(MigrationContext.configure(conn), AttestBase.metadata)
    assert [d for d in diff if "attest_join_tokens" in repr(d)] == []
    uniques = inspect(engine).get_unique_constraints("attest_join_tokens")
    assert [sorted(u["column_names"]) for u in uniques] == [["node", "verdict"]]
    command.downgrade(alembic_config(engine), "0014")
    assert "attest_join_tokens" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM attest_nodes")).scalars().all() == ["pi-1"]
    engine.dispose()


def test_one_verdict_one_row_across_connections(engine_0014: Engine) -> None:
    """Two transactions (two replicas) insert the same (node, verdict) at once: one commits,
    the other fails. Another verdict, or another node's, is a row of its own."""
    engine = engine_0014
    command.upgrade(alembic_config(engine), "head")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def insert() -> None:
        try:
            with engine.begin() as conn:
                barrier.wait()
                conn.execute(INSERT, row())
            outcomes.append("committed")
        except IntegrityError:
            outcomes.append("refused")

    threads = [threading.Thread(target=insert) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["committed", "refused"]
    with engine.begin() as conn:
        conn.execute(INSERT, row(verdict="b" * 64))
        conn.execute(INSERT, row(node="pi-2"))
        assert conn.execute(text("SELECT count(*) FROM attest_join_tokens")).scalar() == 3
    engine.dispose()
