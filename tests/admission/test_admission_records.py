"""The admission record survives in SQL and is replaced, not duplicated, on re-review."""

from __future__ import annotations

from pathlib import Path

from admission.service.records import AdmittedImage, SqlAdmissionRecords
from umec.db import open_database


def test_record_and_lookup(tmp_path: Path) -> None:
    _, sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    records = SqlAdmissionRecords(sessions)
    image = AdmittedImage("spec.containers[0]", "reg/app:1", "sha256:" + "a" * 64, ("kid1",))
    records.record(namespace="tenant-a", name="app", uid="u-1", images=[image], verified=True,
                   policy_generation="g1")
    got = records.lookup("u-1")
    assert got is not None and got.images == (image,) and got.verified
    records.record(namespace="tenant-a", name="app", uid="u-1", images=[], verified=False,
                   policy_generation="g2")
    again = records.lookup("u-1")
    assert again is not None and again.images == () and not again.verified
    assert records.lookup("u-2") is None


def test_record_async_batches_and_waits_for_commit(tmp_path: Path) -> None:
    import asyncio
    _, sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    records = SqlAdmissionRecords(sessions)

    async def many() -> None:
        await asyncio.gather(*(records.record_async(
            namespace="t", name=f"p{i}", uid=f"u{i}", images=[], verified=True,
            policy_generation="g") for i in range(100)))
    asyncio.run(many())
    # Every awaited record is committed by the time its await returns.
    assert all(records.lookup(f"u{i}") is not None for i in range(100))


def test_record_async_failure_reaches_the_caller(tmp_path: Path) -> None:
    import asyncio

    import pytest
    from sqlalchemy import text
    engine, sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE admission_pods"))
    records = SqlAdmissionRecords(sessions)
    with pytest.raises(Exception, match="admission_pods"):
        asyncio.run(records.record_async(namespace="t", name="p", uid="u", images=[],
                                         verified=True, policy_generation="g"))


def _upsert_twice(url: str) -> None:
    import asyncio
    _, sessions = open_database(url)
    records = SqlAdmissionRecords(sessions)
    first = AdmittedImage("spec.containers[0]", "r/a:1", "sha256:" + "a" * 64, ("k1",))
    second = AdmittedImage("spec.containers[0]", "r/a:2", "sha256:" + "b" * 64, ("k2",))

    async def go() -> None:
        await records.record_async(namespace="t", name="p", uid="same", images=[first],
                                   verified=True, policy_generation="g1")
        await asyncio.gather(*(records.record_async(
            namespace="t", name="p", uid="same", images=[second], verified=False,
            policy_generation="g2") for _ in range(5)))
    asyncio.run(go())
    got = records.lookup("same")
    assert got is not None and got.images == (second,) and not got.verified
    assert got.policy_generation == "g2"


def test_record_async_upserts_on_sqlite(tmp_path: Path) -> None:
    _upsert_twice(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_record_async_upserts_on_postgres(pg_database: str) -> None:
    _upsert_twice(pg_database)


def test_on_postgres_one_review_is_one_statement_and_a_batch_one_transaction(
        pg_database: str) -> None:
    """A review alone commits its record as one autocommit statement; concurrent reviews
    share one transaction; a failing write reaches every waiting review (nothing half-done)."""
    import asyncio

    import pytest
    from sqlalchemy import event, text
    engine, sessions = open_database(pg_database)
    records = SqlAdmissionRecords(sessions)
    statements: list[str] = []

    commits: list[object] = []

    def count(conn: object, cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)
    event.listen(engine, "before_cursor_execute", count)
    def committed(conn: object) -> None:  # a COMMIT sent (not in autocommit)
        commits.append(conn)
    event.listen(engine, "commit", committed)

    async def many(n: int, prefix: str) -> None:
        await asyncio.gather(*(records.record_async(
            namespace="t", name=f"p{i}", uid=f"{prefix}{i}", images=[], verified=True,
            policy_generation="g") for i in range(n)))
    asyncio.run(many(1, "single"))
    assert [s.split()[0] for s in statements] == ["INSERT"], statements
    assert commits == []
    asyncio.run(many(100, "u"))
    event.remove(engine, "before_cursor_execute", count)
    event.remove(engine, "commit", committed)
    assert 1 <= len(commits) < 100  # the queued records shared transactions
    assert records.lookup("single0") is not None
    assert all(records.lookup(f"u{i}") is not None for i in range(100))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE admission_pods"))
    with pytest.raises(Exception, match="admission_pods"):
        asyncio.run(many(1, "gone"))
    with pytest.raises(Exception, match="admission_pods"):
        asyncio.run(many(5, "gone-batch"))
    engine.dispose()
