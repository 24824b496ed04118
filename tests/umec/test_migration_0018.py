"""Migration 0018 (stateless challenges) on a populated database (SQLite and PostgreSQL): nodes
keep everything and start at challenge counter 0 with no last passing nonce, the nonce table
goes (nonces in flight are refused as unknown afterwards), and it downgrades."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, inspect, text

from tests.support.migrations import BACKENDS, engine_at
from umec.db import alembic_config

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def engine_0017(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    engine = engine_at(request, tmp_path, "0017")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO attest_nodes (name, node_class, ek_public, ek_hash, ak_public, state, "
            "created_at, activated_at, state_changed_at, trust_epoch) VALUES "
            "('node-a', 'default', :b, :h, :b, 'trusted', :t, :t, :t, 3)"),
            {"b": b"x", "h": "a" * 64, "t": NOW})
        conn.execute(text(
            "INSERT INTO attest_nonces (nonce, node, selection, issued_at, expires_at) VALUES "
            "('n1', 'node-a', '{}', :t, :t)"), {"t": NOW})
    return engine


def test_upgrade_adds_the_counter_drops_the_nonces_and_downgrades(engine_0017: Engine) -> None:
    command.upgrade(alembic_config(engine_0017), "0018")
    assert "attest_nonces" not in inspect(engine_0017).get_table_names()
    with engine_0017.connect() as conn:
        assert conn.execute(text(
            "SELECT name, trust_epoch, challenge_seq, last_pass_nonce FROM attest_nodes"
        )).all() == [("node-a", 3, 0, None)]
    command.downgrade(alembic_config(engine_0017), "0017")
    columns = {c["name"] for c in inspect(engine_0017).get_columns("attest_nodes")}
    assert not {"challenge_seq", "last_pass_nonce"} & columns
    with engine_0017.connect() as conn:
        assert conn.execute(text("SELECT name, trust_epoch FROM attest_nodes")).all() == [
            ("node-a", 3)]
        assert conn.execute(text("SELECT count(*) FROM attest_nonces")).scalar() == 0
    engine_0017.dispose()
