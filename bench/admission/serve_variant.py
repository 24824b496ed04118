"""What-if webhook: ``umec webhook`` as wired by ``build_webhook``, with ONE part swapped.

Not a product: a measuring stick for a fix proposed in docs/benchmarks.md, so the owners of
``admission/`` and ``umec/`` can see what it would buy before writing it. Same environment
variables as ``umec webhook`` (``UMEC_*``), same uvicorn settings, same TLS.

``--records batched`` replaces ``SqlAdmissionRecords`` (an ORM ``SELECT`` by uid, an ``INSERT``
or ``UPDATE`` and a ``COMMIT`` per admitted Pod) by a group commit with the same durability
promise: ``record()`` still returns only once its row is committed (``/validate`` still fails
closed when the write fails), but one writer thread commits every row queued meanwhile in one
transaction, as one ``INSERT … ON CONFLICT(uid) DO UPDATE`` executemany (SQLAlchemy Core, no
ORM unit of work). The row content is the one ``SqlAdmissionRecords.record`` writes.

``--records loop-batched`` is the same group commit without the thread hop per review: the
Admitter's ``asyncio.to_thread(self._record, …)`` (its only use of ``to_thread``) runs
``_record`` inline on the event loop -- it only builds the row and queues it -- and then awaits
the batch's commit as an asyncio future. Still fail closed: ``/validate`` answers only after
the row is committed, and denies if the commit fails. Done here by handing the Admitter's module
an ``asyncio`` whose ``to_thread`` does that; in the product it would be an ``async`` method of
the records adapter that the Admitter awaits.

Run by ``bench_webhook.py --variant "--records batched"`` (or ``loop-batched``; ``sql`` is the
control: the unchanged ``SqlAdmissionRecords`` served by this same script).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.orm import Session, sessionmaker

import admission.service.admit as webhook_admit
from admission.service.models import admission_pods
from admission.service.records import AdmittedImage
from umec.db import open_database
from umec.settings import Settings
from umec.webhook_process import build_webhook


@dataclass
class _Pending:
    row: dict[str, Any]
    done: concurrent.futures.Future[None] = field(default_factory=concurrent.futures.Future)


class BatchedRecords:
    """``AdmissionRecords`` with group commit (see the module doc)."""

    def __init__(self, sessions: sessionmaker[Session],
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.sessions, self.now = sessions, now
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self.batches = self.rows = 0
        self.blocking = True
        self.last: concurrent.futures.Future[None] | None = None
        threading.Thread(target=self._writer, daemon=True, name="records-writer").start()

    def record(self, *, namespace: str, name: str, uid: str, images: Sequence[AdmittedImage],
               verified: bool, policy_generation: str) -> None:
        pending = _Pending({"id": str(uuid.uuid4()), "uid": uid, "namespace": namespace,
                            "name": name, "images": [i.as_dict() for i in images],
                            "verified": verified, "policy_generation": policy_generation,
                            "admitted_at": self.now()})
        self._queue.put(pending)
        self.last = pending.done
        if not self.blocking:
            return  # the caller awaits self.last (loop-batched)
        pending.done.result(10.0)  # raises the commit's error, or TimeoutError

    def _writer(self) -> None:
        while True:
            batch = [self._queue.get()]
            while True:  # everything queued while the last commit ran goes into this one
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            error: Exception | None = None
            try:
                stmt = insert(admission_pods)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["uid"],
                    set_={c: stmt.excluded[c] for c in ("namespace", "name", "images",
                                                        "verified", "policy_generation",
                                                        "admitted_at")})
                with self.sessions.begin() as session:
                    session.execute(stmt, [p.row for p in batch])
                self.batches += 1
                self.rows += len(batch)
            except Exception as e:  # every waiter of the batch fails closed
                error = e
            for p in batch:
                if error is None:
                    p.done.set_result(None)
                else:
                    p.done.set_exception(error)


class _InlineRecordAsyncio:
    """The ``asyncio`` the Admitter's module sees in ``loop-batched``: everything is asyncio's,
    except ``to_thread`` (used only for ``_record``), which queues inline and awaits the commit.
    """

    def __init__(self, records: BatchedRecords) -> None:
        self.records = records

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def to_thread(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        self.records.last = None
        func(*args, **kwargs)  # Admitter._record: builds the row, BatchedRecords queues it
        if self.records.last is not None:
            await asyncio.wait_for(asyncio.wrap_future(self.records.last), 10.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--records", choices=["sql", "batched", "loop-batched"], default="sql")
    args = ap.parse_args()
    settings = Settings()
    if settings.webhook_tls_cert is None or settings.webhook_tls_key is None:
        raise SystemExit("UMEC_WEBHOOK_TLS_CERT and UMEC_WEBHOOK_TLS_KEY are required")
    app, deps = build_webhook(settings)
    if args.records != "sql":
        # The Admitter reads deps.records at call time: swapping it here is enough.
        records = BatchedRecords(open_database(settings.resolved_database_url())[1])
        deps.records = records
        if args.records == "loop-batched":
            records.blocking = False
            webhook_admit.asyncio = _InlineRecordAsyncio(records)
    uvicorn.run(app, host=args.host, port=settings.webhook_port, log_level="warning",
                access_log=False, ssl_certfile=str(settings.webhook_tls_cert),
                ssl_keyfile=str(settings.webhook_tls_key))


if __name__ == "__main__":
    main()
