"""Migration 0010 (the revocation generation) on SQLite and PostgreSQL: it creates the one row at
generation 0, writers move it from there, it downgrades, and after ``head`` the schema is the
models' (no difference autogenerate would find in any table)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import sessionmaker

from attest.service.models import AttestBase
from mec_api.tokens.models import TokensBase
from mec_api.tokens.revocations import RevocationStore
from tests.support.migrations import BACKENDS, engine_at
from umec.db import alembic_config


@pytest.fixture(params=BACKENDS)
def engine_0009(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    return engine_at(request, tmp_path, "0009")


def test_upgrade_creates_the_generation_row_and_downgrades(engine_0009: Engine) -> None:
    command.upgrade(alembic_config(engine_0009), "head")
    store = RevocationStore(sessionmaker(bind=engine_0009), max_token_lifetime=60)
    assert store.generation() == 0
    store.revoke_node("node-a", "r", datetime.now(UTC), through_epoch=1)
    store.revoke_token("j1", datetime.now(UTC).timestamp() + 60, "r", datetime.now(UTC))
    assert store.generation() == 2
    command.downgrade(alembic_config(engine_0009), "0009")
    assert "token_revocation_generation" not in inspect(engine_0009).get_table_names()
    with engine_0009.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM token_revocations")).scalar() == 2
    engine_0009.dispose()


def test_the_migrated_tables_are_the_models(engine_0009: Engine) -> None:
    command.upgrade(alembic_config(engine_0009), "head")
    with engine_0009.connect() as conn:
        context = MigrationContext.configure(conn)
        for base in (TokensBase, AttestBase):
            diff = compare_metadata(context, base.metadata)
            # Index names and server defaults differ by design between create_all and the
            # migrations; tables and columns must not.
            tables = [d for d in diff if isinstance(d, tuple)
                      and d[0] in ("add_table", "remove_column", "add_column")
                      and _table_of(d) in base.metadata.tables]
            assert tables == [], tables
    engine_0009.dispose()


def _table_of(diff: tuple[object, ...]) -> str:
    item = diff[-1] if diff[0] != "add_table" else diff[1]
    name = getattr(item, "name", None) if diff[0] == "add_table" else diff[2]
    return str(name)
