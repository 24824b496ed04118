"""Migration 0007 on a populated database (SQLite and PostgreSQL): activated nodes keep their
binding and their challenges, names that never activated go, and an EK already activated under
two names stops the upgrade with the names to remove."""

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
def engine_0006(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    engine = engine_at(request, tmp_path, "0006")
    return engine


def _node(conn: object, name: str, ek_hash: str, ak: bytes | None) -> None:
    conn.execute(text(  # type: ignore[attr-defined]
        "INSERT INTO attest_nodes (name, node_class, ek_public, ek_hash, ak_public, state, "
        "created_at, activated_at, state_changed_at, failed_activations) VALUES "
        "(:n, 'default', :ek, :h, :ak, :s, :t, :a, :t, 0)"),
        {"n": name, "ek": b"ek", "h": ek_hash, "ak": ak, "s": "trusted" if ak else "enrolled",
         "t": NOW, "a": NOW if ak else None})


def _nonce(conn: object, nonce: str, node: str) -> None:
    conn.execute(text(  # type: ignore[attr-defined]
        "INSERT INTO attest_nonces (nonce, node, selection, issued_at, expires_at) VALUES "
        "(:x, :n, '{}', :t, :t)"), {"x": nonce, "n": node, "t": NOW})


def test_upgrade_keeps_activated_nodes_and_their_nonces(engine_0006: Engine) -> None:
    with engine_0006.begin() as conn:
        _node(conn, "node-a", "a" * 64, b"ak-a")
        _node(conn, "node-p", "b" * 64, None)  # enrolled, never activated: bound nothing
        _nonce(conn, "n1", "node-a")
        _nonce(conn, "n2", "node-p")
    command.upgrade(alembic_config(engine_0006), "0007")  # 0018 drops the nonce table
    with engine_0006.connect() as conn:
        names = conn.execute(text("SELECT name FROM attest_nodes")).scalars().all()
        nonces = conn.execute(text("SELECT nonce FROM attest_nonces")).scalars().all()
    assert names == ["node-a"]
    assert nonces == ["n1"]  # SQLite's table rebuild must not cascade into the nonces


def test_upgrade_refuses_one_ek_under_two_activated_names(engine_0006: Engine) -> None:
    with engine_0006.begin() as conn:
        _node(conn, "node-a", "c" * 64, b"ak")
        _node(conn, "node-z", "c" * 64, b"ak")
    with pytest.raises(RuntimeError, match=r"node-a, node-z.*umec nodes remove"):
        command.upgrade(alembic_config(engine_0006), "head")
