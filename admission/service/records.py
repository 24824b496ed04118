"""SQL adapter for the admission record: what was admitted, with which digests and signers."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Insert, bindparam, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

from admission.service.models import admission_pods
from kernel.sql_connect import single_reads, single_statements

log = logging.getLogger("umec.admission.records")


ForgetWriter = Callable[[Connection, Sequence[str], datetime], None]
"""Called inside the transaction that deletes admission records, with the UIDs it deleted and
the time (the token service's pod revocation writer, injected by ``umec``)."""

FORGET_CHUNK = 500  # UIDs per UPDATE statement (SQLite's bound-parameter limit is far above)
# How long a forgotten UID's tombstone is kept: longer than any projected service-account token
# lives (kubelet asks for 1 h; --service-account-max-token-expiration is usually 24 h or less).
TOMBSTONE_SECONDS = 48 * 3600


@dataclass(frozen=True)
class AdmittedImage:
    path: str
    image: str
    digest: str
    signers: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "image": self.image, "digest": self.digest,
                "signers": list(self.signers)}


@dataclass(frozen=True)
class _Pending:
    record: dict[str, Any]
    done: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.cancelled():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


@dataclass(frozen=True)
class AdmittedPod:
    namespace: str
    name: str
    uid: str
    images: tuple[AdmittedImage, ...]
    verified: bool
    policy_generation: str
    admitted_at: datetime


_SELECT_LIVE_POD = select(admission_pods).where(admission_pods.c.uid == bindparam("uid"),
                                                admission_pods.c.forgotten_at.is_(None))


class SqlAdmissionRecords:
    """Admission records in SQL.

    ``record`` writes one record in its own transaction. ``record_async`` (what the webhook
    uses) hands the record to a single writer thread that commits everything queued meanwhile
    in one transaction and then wakes each waiting review: under load one commit serves many
    reviews, and no review is answered before its record is durable.

    ``forget`` turns records into tombstones (the pod was deleted, or is gone from the cluster)
    and runs every ``forget_writers`` callable in the same transaction with the UIDs it forgot:
    the pods' token revocations commit with it or not at all, and a forgotten UID is never
    recorded again (``prune_forgotten`` drops tombstones once no token of theirs can live).
    """

    MAX_BATCH = 256

    def __init__(self, database: Engine | sessionmaker[Session],
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 forget_writers: Sequence[ForgetWriter] = ()) -> None:
        # An Engine (the webhook: Core only) or a sessionmaker bound to one (the server).
        self.engine: Engine = database if isinstance(database, Engine) \
            else database.kw["bind"]
        self.now = now
        self.forget_writers = tuple(forget_writers)
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._upsert_statement: Insert | None = None

    def ping(self) -> None:
        """One ``SELECT 1`` (the webhook's ``/readyz``); raises when the database does not
        answer."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def record(self, *, namespace: str, name: str, uid: str, images: Sequence[AdmittedImage],
               verified: bool, policy_generation: str) -> None:
        """Insert or replace the record of one pod UID (a re-review replaces the old one)."""
        self._upsert_many([dict(namespace=namespace, name=name, uid=uid, images=images,
                                verified=verified, policy_generation=policy_generation)])

    async def record_async(self, **record: Any) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._ensure_writer()
        self._queue.put(_Pending(record, done, loop))
        await done

    def _upsert_many(self, records: Sequence[dict[str, Any]]) -> None:
        """One ``INSERT … ON CONFLICT (uid) DO UPDATE … WHERE not forgotten`` over the whole batch
        (SQLite and PostgreSQL both have it): the per-row ORM select-then-write cost more than
        the review. A forgotten UID's tombstone is left as it is. On PostgreSQL one record (a
        review alone) is one statement in autocommit: it commits itself, durable when it
        returns, in one round trip instead of three (``BEGIN``, the insert, ``COMMIT``); a
        batch of several stays one transaction, all or nothing (and on SQLite, where those
        are no round trips, everything does: switching pysqlite's isolation level costs
        more)."""
        now = self.now()
        rows = [{"id": str(uuid.uuid4()), "uid": r["uid"], "namespace": r["namespace"],
                 "name": r["name"], "images": [i.as_dict() for i in r["images"]],
                 "verified": r["verified"], "policy_generation": r["policy_generation"],
                 "admitted_at": now} for r in records]
        if len(rows) == 1 and self.engine.dialect.name == "postgresql":
            with single_statements(self.engine) as conn:
                conn.execute(self._upsert(), rows[0])
            return
        with self.engine.begin() as conn:
            conn.execute(self._upsert(), rows)

    def _upsert(self) -> Insert:
        """The upsert, built once (building it cost more than running it)."""
        if self._upsert_statement is None:
            insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
            stmt = insert(admission_pods)
            self._upsert_statement = stmt.on_conflict_do_update(
                index_elements=[admission_pods.c.uid],
                set_={c: stmt.excluded[c] for c in ("namespace", "name", "images", "verified",
                                                   "policy_generation", "admitted_at")},
                # A forgotten UID stays forgotten: a review racing the pod's deletion (an UPDATE
                # still verifying when the DELETE was recorded) must not bring the record back.
                where=admission_pods.c.forgotten_at.is_(None))
        return self._upsert_statement

    def _ensure_writer(self) -> None:
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_forever, daemon=True,
                                                name="admission-records")
                self._writer.start()

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            error: BaseException | None = None
            try:
                self._upsert_many([pending.record for pending in batch])
            except Exception as exc:  # every waiting review is denied (fail closed)
                error = exc
            for pending in batch:
                pending.loop.call_soon_threadsafe(_settle, pending.done, error)

    def lookup(self, uid: str) -> AdmittedPod | None:
        # Core, not the ORM, and a statement built once: the token service asks on every
        # issuance, and building the SELECT cost more than running it.
        with single_reads(self.engine) as conn:  # one statement: no BEGIN/ROLLBACK
            row = conn.execute(_SELECT_LIVE_POD, {"uid": uid}).first()
        if row is None:
            return None
        return AdmittedPod(
            namespace=row.namespace, name=row.name, uid=row.uid,
            images=tuple(AdmittedImage(i["path"], i["image"], i["digest"],
                                       tuple(i["signers"])) for i in row.images),
            verified=row.verified, policy_generation=row.policy_generation,
            admitted_at=row.admitted_at)

    def forget(self, uids: Sequence[str], reason: str) -> list[str]:
        """Turn the records of ``uids`` into tombstones (``forgotten_at``: never looked up nor
        recorded again) and, in the same transaction, run every forget writer with the UIDs
        actually forgotten; return those. A writer that raises rolls it all back (the exception
        propagates): a record is never gone without its revocation. ``reason`` is for the log;
        writers date their entries with ``now``."""
        wanted = sorted({u for u in uids if isinstance(u, str) and u})
        if not wanted:
            return []
        table = admission_pods
        deleted: list[str] = []
        now = self.now()
        with self.engine.begin() as conn:
            for i in range(0, len(wanted), FORGET_CHUNK):
                chunk = wanted[i:i + FORGET_CHUNK]
                # UPDATE … RETURNING into a tombstone: under concurrent forgets of one UID only
                # the one that marked the row sees it (the other waits for the row lock, then
                # finds it forgotten).
                rows = conn.execute(
                    table.update().where(table.c.uid.in_(chunk), table.c.forgotten_at.is_(None))
                    .values(forgotten_at=now, images=[], verified=False)
                    .returning(table.c.uid)).all()
                deleted.extend(r.uid for r in rows)
            if deleted:
                for write in self.forget_writers:
                    write(conn, deleted, now)
        if deleted:
            log.info("admission records forgotten", extra={
                "reason": reason[:200], "count": len(deleted), "uids": deleted[:20]})
        return deleted

    def admitted_before(self, cutoff: datetime) -> dict[str, datetime]:
        """UID → admitted_at of every record admitted before ``cutoff``."""
        table = admission_pods
        with self.engine.connect() as conn:
            rows = conn.execute(select(table.c.uid, table.c.admitted_at)
                                .where(table.c.admitted_at < cutoff,
                                       table.c.forgotten_at.is_(None))).all()
        return {r.uid: r.admitted_at for r in rows}

    def redate_future(self, now: datetime, tolerance_seconds: float) -> int:
        """Date ``now`` every live record admitted more than ``tolerance_seconds`` after
        ``now`` (the clock was stepped back since), so that its age restarts and the
        reconciler checks it after the grace like any other; return how many. Left as they
        were, such records were skipped until real time caught up with them."""
        table = admission_pods
        with self.engine.begin() as conn:
            done = conn.execute(table.update().where(
                table.c.admitted_at > now + timedelta(seconds=tolerance_seconds),
                table.c.forgotten_at.is_(None)).values(admitted_at=now))
        return int(done.rowcount or 0)

    def prune_forgotten(self, now: datetime) -> int:
        """Drop tombstones older than ``TOMBSTONE_SECONDS``: by then every service-account token
        the pod had has expired, so its UID can mint nothing even if recorded again."""
        table = admission_pods
        cutoff = now - timedelta(seconds=TOMBSTONE_SECONDS)
        with self.engine.begin() as conn:
            done = conn.execute(table.delete().where(table.c.forgotten_at < cutoff))
        return int(done.rowcount or 0)

    def recent(self, namespace: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest admission records still live (of ``namespace``, when given), newest
        first: the operator's view (the dashboard's Admission page)."""
        table = admission_pods
        query = (select(table).where(table.c.forgotten_at.is_(None))
                 .order_by(table.c.admitted_at.desc()).limit(limit))
        if namespace is not None:
            query = query.where(table.c.namespace == namespace)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{"namespace": r.namespace, "name": r.name, "uid": r.uid, "images": r.images,
                 "verified": r.verified, "policy_generation": r.policy_generation,
                 "at": r.admitted_at.isoformat()} for r in rows]

    def admitted_since(self, since: datetime, namespace: str | None = None) -> list[datetime]:
        """When each record still kept was admitted, from ``since`` on (admissions per hour)."""
        table = admission_pods
        query = select(table.c.admitted_at).where(table.c.admitted_at >= since)
        if namespace is not None:
            query = query.where(table.c.namespace == namespace)
        with self.engine.connect() as conn:
            return [r.admitted_at for r in conn.execute(query.limit(100_000))]
