"""A fresh database (SQLite file or PostgreSQL) migrated to a given revision, for upgrade tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine

from umec.db import alembic_config, make_engine

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def engine_at(request: pytest.FixtureRequest, tmp_path: Path, revision: str) -> Engine:
    """``request.param`` names the backend (parametrize the fixture with ``BACKENDS``)."""
    url = (f"sqlite:///{tmp_path / 'umec.db'}" if request.param == "sqlite"
           else request.getfixturevalue("pg_database"))
    engine = make_engine(url)
    command.upgrade(alembic_config(engine), revision)
    return engine
