"""Fixtures more than one test folder uses: a fresh PostgreSQL database per test, and (as
plugins) every swtpm (tests/support/swtpm.py) and the local OCI registries
(tests/support/registry.py). A fixture only one folder uses lives in that folder's conftest.py;
importable helpers live in tests/support/."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

# CI runs the fuzz tests derandomized (same examples every run: a red CI is reproducible and
# never a coin toss); local runs keep exploring new examples.
# HealthCheck.too_slow is off: it measures how long generating examples took, which on two
# xdist workers sharing a loaded 2-core machine is the load, not the test (seen failing a
# 300-byte strategy while benchmarks ran).
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

hypothesis_settings.register_profile("local", suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True,
                                     suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "local")

pytest_plugins = ["tests.support.swtpm", "tests.support.registry"]

PG_ADMIN_URL = os.environ.get("UMEC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    admin_url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://")
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc} (scripts/services.sh)")
    name = f"umec_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn, contextlib.suppress(Exception):
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
