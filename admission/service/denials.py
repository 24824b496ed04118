"""The webhook's denials, kept for the operator (issue 14: the dashboard's Admission page).

A denial is written where the webhook decides (:class:`admission.service.admit.Admitter`),
but never on the answer's path: :meth:`SqlDenialLog.note` puts the record on a bounded queue
and returns at once; one writer thread commits what is queued in one transaction and prunes
the table to the newest :data:`KEEP` rows. A full queue drops the record (counted in
``dropped`` and logged): a burst of denials must not slow the webhook, and the log and the
``umec_admission_reviews`` counter still have every one. The allow path never touches it.

:func:`attribute` splits Rego's deny messages (``<path>: image <image>: <check>: <detail>``,
policies/admission.rego) back onto the containers they name.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from admission.service.models import admission_denials

log = logging.getLogger("umec.admission.denials")

KEEP = 2000            # rows kept (the newest); the writer prunes the rest
QUEUE_SIZE = 1024      # records waiting for the writer; more are dropped (and counted)
MAX_BATCH = 256
CHECK_CHARS = 128
DETAIL_CHARS = 500
MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class DeniedContainer:
    path: str
    image: str
    digest: str | None
    signers: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]   # (check, detail)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path[:253], "image": self.image[:1000],
                "digest": self.digest, "signers": list(self.signers),
                "failed": [{"check": c[:CHECK_CHARS], "detail": d[:DETAIL_CHARS]}
                           for c, d in self.failed]}


def split_check(rest: str) -> tuple[str, str]:
    """``check: detail`` (or ``check (warn mode…): detail``) → (check, detail); a text without
    that shape is all detail, under the check ``denied``."""
    head, sep, detail = rest.partition(": ")
    check = head.split(" (", 1)[0]
    if not sep or not check or any(c.isspace() for c in check):
        return "denied", rest
    return check, detail


def attribute(containers: Sequence[tuple[str, str]],
              messages: Sequence[str]) -> tuple[dict[str, list[tuple[str, str]]], list[str]]:
    """Per container path, the (check, detail) of every deny message that names it (``<path>:
    image <image>: …``); and the messages that name none."""
    failed: dict[str, list[tuple[str, str]]] = {path: [] for path, _ in containers}
    # Longest prefix first: "spec.containers[1]" must not take "spec.containers[10]"'s message.
    prefixes = sorted(((f"{path}: image {image}: ", path) for path, image in containers),
                      key=lambda p: len(p[0]), reverse=True)
    other: list[str] = []
    for message in messages:
        path = next((p for prefix, p in prefixes if message.startswith(prefix)), None)
        if path is None:
            other.append(message)
            continue
        prefix = next(pre for pre, p in prefixes if p == path and message.startswith(pre))
        failed[path].append(split_check(message[len(prefix):]))
    return failed, other


class SqlDenialLog:
    """Denials in SQL, written by one background thread (see the module's docstring)."""

    def __init__(self, engine: Engine, now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 keep: int = KEEP) -> None:
        self.engine, self.now, self.keep = engine, now, keep
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=QUEUE_SIZE)
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()

    def note(self, *, namespace: str, name: str, kind: str, operation: str, endpoint: str,
             uid: str, containers: Sequence[DeniedContainer], message: str) -> None:
        """Queue one denial; never blocks (a full queue drops it, counted)."""
        row = {"id": str(uuid.uuid4()), "namespace": namespace[:253], "name": name[:253],
               "kind": kind[:64], "operation": operation[:16], "endpoint": endpoint[:16],
               "uid": uid[:64], "containers": [c.as_dict() for c in containers],
               "message": message[:MESSAGE_CHARS], "denied_at": self.now()}
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1
            log.warning("denial not kept for the dashboard: the writer is behind",
                        extra={"namespace": namespace, "pod": name, "dropped": self.dropped})
            return
        self._ensure_writer()

    def _ensure_writer(self) -> None:
        with self._lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_forever, daemon=True,
                                                name="admission-denials")
                self._writer.start()

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.write(batch)
            except Exception as e:  # the denial was answered already; only its record is lost
                log.warning("denials not kept for the dashboard",
                            extra={"count": len(batch), "error": type(e).__name__})
            finally:
                for _ in batch:
                    self._queue.task_done()

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert ``rows`` and prune to the newest ``keep``, in one transaction."""
        table = admission_denials
        with self.engine.begin() as conn:
            conn.execute(insert(table), list(rows))
            cutoff = conn.execute(select(table.c.denied_at).order_by(table.c.denied_at.desc())
                                  .offset(self.keep).limit(1)).scalar()
            if cutoff is not None:
                conn.execute(delete(table).where(table.c.denied_at <= cutoff))

    def flush(self) -> None:
        """Wait until every queued denial is written (tests, shutdown)."""
        self._queue.join()

    def recent(self, namespace: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest denials (of ``namespace``, when given), newest first."""
        table = admission_denials
        query = select(table).order_by(table.c.denied_at.desc()).limit(limit)
        if namespace is not None:
            query = query.where(table.c.namespace == namespace)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{"namespace": r.namespace, "name": r.name, "kind": r.kind,
                 "operation": r.operation, "endpoint": r.endpoint, "uid": r.uid,
                 "containers": r.containers, "message": r.message,
                 "at": r.denied_at.isoformat()} for r in rows]
