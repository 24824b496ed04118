"""Migration 0014 (IMA state, issue 13) on a populated database (SQLite and PostgreSQL): nodes
keep everything and start with no IMA state (their agents send the full list once); the column
round-trips JSON; it downgrades."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, text

from tests.support.migrations import BACKENDS, engine_at
from umec.db import alembic_config

NOW = datetime(2026, 12, 7, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def engine_0013(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    engine = engine_at(request, tmp_path, "0013")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO attest_nodes (name, node_class, ek_public, ek_hash, ak_public, state, "
            "created_at, activated_at, state_changed_at) VALUES "
            "('node-a', 'default', :b, :h, :b, 'trusted', :t, :t, :t)"),
            {"b": b"x", "h": "a" * 64, "t": NOW})
    return engine


def test_upgrade_adds_an_empty_ima_state_and_downgrades(engine_0013: Engine) -> None:
    command.upgrade(alembic_config(engine_0013), "0014")
    with engine_0013.begin() as conn:
        assert conn.execute(text("SELECT name, ima_state FROM attest_nodes")).all() == [
            ("node-a", None)]
        conn.execute(text("UPDATE attest_nodes SET ima_state = :s"),
                     {"s": '{"accepted": 3, "pcr": {"sha256": "00"}}'})
        raw = conn.execute(text("SELECT ima_state FROM attest_nodes")).scalar()
        assert "accepted" in str(raw)
    command.downgrade(alembic_config(engine_0013), "0013")
    with engine_0013.connect() as conn:
        assert conn.execute(text("SELECT name FROM attest_nodes")).scalars().all() == ["node-a"]
    engine_0013.dispose()
