"""Fixtures of the attestation tests: ``env``, a real ``umec server`` on loopback for the attack
suites (tests/support/attack_env.py), on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.attack_env import Env, running_env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("pg_database")
    with running_env(tmp_path, url) as running:
        yield running
