"""Fixtures several mec_api test modules use: ``svc``, the token service in process
(tests/support/token_service.py); ``g``, an app behind the real guard following it
(tests/support/guarded_app.py); ``harness``, the MEC 011 APIs on a fresh SQLite database
(tests/support/mec011_harness.py). A module that needs them set up differently defines its own
(test_tokens_load's uncached scope policy, test_mec011_support's seeded rules)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.guarded_app import Guarded, build
from tests.support.mec011_harness import Harness
from tests.support.mec011_harness import build as build_mec011
from tests.support.token_service import Service, build_service


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    service = build_service(tmp_path)
    with service.client:
        yield service


@pytest.fixture
def g(tmp_path: Path) -> Iterator[Guarded]:
    guarded = build(tmp_path)
    with guarded.client:
        yield guarded


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return build_mec011(tmp_path / "mec011.db")
