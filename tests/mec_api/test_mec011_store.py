"""The MEC 011 store on the real schema: migration 0004 matches the ORM, and on PostgreSQL two
replicas racing with the same If-Match cannot both win."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from mec_api.mec011 import Mec011Store
from mec_api.mec011.core import if_match_satisfied
from mec_api.mec011.models import Mec011Base
from mec_api.mec011.schemas.app_support import OperationAction
from mec_api.mec011.schemas.service_mgmt import ServiceInfo, ServiceState
from mec_api.mec011.store.service_mgmt import Conflict, PreconditionFailed
from tests.support.mec011_harness import service_body
from umec.db import open_database

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Mec011Base.metadata)
    # compare_metadata also reports every other package's tables and indexes (as removed).
    return [d for d in diffs if "mec011_" in repr(d)]


def test_migration_matches_the_models_sqlite(tmp_path: Path) -> None:
    engine, _ = open_database(f"sqlite:///{tmp_path / 'u.db'}")
    assert _schema_diff(engine) == []
    engine.dispose()


@pytest.mark.postgres
def test_replicas_racing_on_one_service(pg_database: str) -> None:
    engine, sessions = open_database(pg_database)
    assert _schema_diff(engine) == []
    replicas = [Mec011Store.on(sessions)]
    other_engine, other_sessions = open_database(pg_database)  # a second process' pool
    replicas.append(Mec011Store.on(other_sessions))
    info = ServiceInfo.model_validate({**service_body("raced"), "serInstanceId": "svc-1"})
    added = replicas[0].registry.add_service("app-a", "tenant-a", info, NOW)
    assert added.new is not None
    etag = added.new.etag

    results: list[str] = []
    barrier = threading.Barrier(2)

    def put(store: Mec011Store, version: str) -> None:
        barrier.wait()
        try:
            store.registry.replace_service(
                "app-a", "svc-1", info.model_copy(update={"version": version}),
                lambda current: if_match_satisfied(etag, current), NOW)
            results.append(version)
        except PreconditionFailed:
            results.append("412")

    threads = [threading.Thread(target=put, args=(store, f"v{i}"))
               for i, store in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results)[0] == "412" and len(results) == 2
    winner = next(r for r in results if r != "412")
    stored = replicas[1].registry.service("svc-1")
    assert stored is not None and stored.info.version == winner

    # Lifecycle on the same database: the second replica sees what the first decided.
    replicas[0].support.begin_termination("app-a", OperationAction.TERMINATING, NOW)
    with pytest.raises(Conflict):
        replicas[1].support.confirm_ready("app-a", NOW)
    assert replicas[1].support.confirm_termination("app-a", None, NOW) == \
        OperationAction.TERMINATING
    assert stored.info.state == ServiceState.ACTIVE
    engine.dispose()
    other_engine.dispose()
