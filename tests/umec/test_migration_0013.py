"""Migration 0013 (signed policies, issue 13) on a populated database (SQLite and PostgreSQL):
existing policies keep their document with an empty version, the event table appears, the
columns match the models (attest.service.models), and it downgrades."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, text

from attest.service.models import PolicyEventRow, PolicyRow
from tests.support.migrations import BACKENDS, engine_at
from umec.db import alembic_config

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _touches(item: object, tables: set[str]) -> bool:
    """Whether one autogenerate difference (a tuple, or a list of them) concerns ``tables``."""
    if isinstance(item, list | tuple):
        return any(_touches(part, tables) for part in item)
    name = getattr(getattr(item, "table", None), "name", None) or getattr(item, "name", None)
    return item in tables or name in tables


@pytest.fixture(params=BACKENDS)
def engine_0012(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    engine = engine_at(request, tmp_path, "0012")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO attest_policies (name, document, generation, updated_at) "
                          "VALUES ('pi', 'name: pi', 3, :t)"), {"t": NOW})
    return engine


def test_upgrade_keeps_policies_and_downgrades(engine_0012: Engine) -> None:
    command.upgrade(alembic_config(engine_0012), "0013")
    with engine_0012.connect() as conn:
        assert conn.execute(text(
            "SELECT name, document, generation, version, envelope, signers, digest "
            "FROM attest_policies")).all() == [("pi", "name: pi", 3, None, None, None, None)]
        assert conn.execute(text("SELECT count(*) FROM attest_policy_events")).scalar() == 0
        ours = {PolicyRow.__tablename__, PolicyEventRow.__tablename__}
        diff = [d for d in compare_metadata(MigrationContext.configure(conn),
                                            PolicyRow.metadata) if _touches(d, ours)]
        assert diff == []
    command.downgrade(alembic_config(engine_0012), "0012")
    with engine_0012.connect() as conn:
        assert conn.execute(text("SELECT name, document, generation FROM attest_policies")
                            ).all() == [("pi", "name: pi", 3)]
        with pytest.raises(Exception, match="attest_policy_events"):
            conn.execute(text("SELECT 1 FROM attest_policy_events"))
    engine_0012.dispose()
