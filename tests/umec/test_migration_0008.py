"""Migration 0008 (trust epochs) on a populated database (SQLite and PostgreSQL): nodes start
at epoch 1, node revocations written before the upgrade revoke epoch 0 (what tokens without a
``node_epoch`` claim count as: fail closed), nothing else changes, and it downgrades."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, text

from tests.support.migrations import BACKENDS, engine_at
from umec.db import alembic_config

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def engine_0007(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    engine = engine_at(request, tmp_path, "0007")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO attest_nodes (name, node_class, ek_public, ek_hash, ak_public, state, "
            "created_at, activated_at, state_changed_at) VALUES "
            "('node-a', 'default', :b, :h, :b, 'trusted', :t, :t, :t)"),
            {"b": b"x", "h": "a" * 64, "t": NOW})
        conn.execute(text(
            "INSERT INTO attest_nonces (nonce, node, selection, issued_at, expires_at) VALUES "
            "('n1', 'node-a', '{}', :t, :t)"), {"t": NOW})
        for kind, jti, node in (("node", None, "node-a"), ("token", "j1", None)):
            conn.execute(text(
                "INSERT INTO token_revocations (kind, jti, node, cutoff, reason, created_at, "
                "expires_at) VALUES (:k, :j, :n, 1.0, 'r', :t, :t)"),
                {"k": kind, "j": jti, "n": node, "t": NOW})
    return engine


def test_upgrade_sets_epochs_and_downgrades(engine_0007: Engine) -> None:
    command.upgrade(alembic_config(engine_0007), "0008")  # 0018 drops the nonce table
    with engine_0007.connect() as conn:
        assert conn.execute(text("SELECT name, trust_epoch FROM attest_nodes")).all() == [
            ("node-a", 1)]
        assert conn.execute(text(
            "SELECT kind, node_epoch FROM token_revocations ORDER BY seq")).all() == [
            ("node", 0), ("token", None)]
        assert conn.execute(text("SELECT nonce FROM attest_nonces")).scalars().all() == ["n1"]
    command.downgrade(alembic_config(engine_0007), "0007")
    with engine_0007.connect() as conn:
        assert conn.execute(text("SELECT name FROM attest_nodes")).scalars().all() == ["node-a"]
        assert conn.execute(text("SELECT nonce FROM attest_nonces")).scalars().all() == ["n1"]
    engine_0007.dispose()
