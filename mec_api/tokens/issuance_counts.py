"""Tokens issued per hour, workload and node, across every process (``token_issuance_counts``).

The issuer counts in memory (:meth:`mec_api.tokens.ledger.IssuanceLog.add`); every
``FLUSH_SECONDS`` the token service's background adds what it counted since in one upsert
transaction (:meth:`IssuanceCounts.flush`), so issuing a token never waits for a write. Counts
not yet flushed when a process dies are lost (at most ``FLUSH_SECONDS`` of one process's
issuances). A flush the database could not take (unreachable, connection lost) is put back and
retried with the next one; a flush it refused for its data is dropped and logged, so one bad
row cannot stop every later flush (values are made storable when counted:
:func:`mec_api.tokens.ledger.storable`). Counts put back older than ``KEEP_HOURS`` are dropped.
The flush and the page's read of the totals take one lock, so a flush landing between the
page's two reads (the table, this process's pending counts) is never counted twice
(:meth:`CountFlusher.totals`). Rows older than ``KEEP_HOURS`` are pruned.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from mec_api.tokens.ledger import CountKey, IssuanceLog
from mec_api.tokens.models import IssuanceCountRow

log = logging.getLogger("umec.tokens")
FLUSH_SECONDS = 10.0
KEEP_HOURS = 8 * 24
# The database could not take the flush (retry later), as opposed to refusing its data.
UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError)


def hour_of(timestamp: float) -> int:
    return int(timestamp // 3600)


class IssuanceCounts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    def flush(self, pending: Mapping[CountKey, int]) -> None:
        """Add ``pending`` to the stored counts, in one transaction (all or nothing)."""
        if not pending:
            return
        stmt = self._insert(IssuanceCountRow)
        stmt = stmt.on_conflict_do_update(
            index_elements=[IssuanceCountRow.hour, IssuanceCountRow.workload,
                            IssuanceCountRow.node],
            set_={"issued": IssuanceCountRow.issued + stmt.excluded.issued})
        # Sorted: two processes upserting the same keys lock them in the same order.
        rows = [{"hour": h, "workload": w, "node": n, "issued": c}
                for (h, w, n), c in sorted(pending.items())]
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    def totals(self, since_hour: int) -> Counter[tuple[str, str]]:
        """Tokens issued from ``since_hour`` on, per (workload, node)."""
        query = (select(IssuanceCountRow.workload, IssuanceCountRow.node,
                        func.sum(IssuanceCountRow.issued))
                 .where(IssuanceCountRow.hour >= since_hour)
                 .group_by(IssuanceCountRow.workload, IssuanceCountRow.node))
        with self.engine.connect() as conn:
            return Counter({(w, n): int(total) for w, n, total in conn.execute(query)})

    def totals_with(self, pending: Mapping[CountKey, int],
                    since_hour: int) -> Counter[tuple[str, str]]:
        """:meth:`totals` plus this process's counts not flushed yet (other processes' are
        at most ``FLUSH_SECONDS`` behind)."""
        totals = self.totals(since_hour)
        for (hour, workload, node), count in pending.items():
            if hour >= since_hour:
                totals[(workload, node)] += count
        return totals

    def prune(self, now: float) -> int:
        with self.engine.begin() as conn:
            result: Any = conn.execute(delete(IssuanceCountRow).where(
                IssuanceCountRow.hour < hour_of(now) - KEEP_HOURS))
            return int(result.rowcount or 0)


class CountFlusher:
    """The background's step: flush this process's counts (put back when the database was
    unavailable, dropped when it refused them), and prune once an hour. :meth:`totals` is the
    page's read, under the same lock."""

    def __init__(self, counts: IssuanceCounts, ledger: IssuanceLog,
                 clock: Callable[[], float]) -> None:
        self.counts, self.ledger, self.clock = counts, ledger, clock
        self._pruned_hour: int | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            pending = self.ledger.take_counts()
            try:
                self.counts.flush(pending)
            except UNAVAILABLE:
                self.ledger.put_back(pending, hour_of(self.clock()) - KEEP_HOURS)
                raise
            except Exception as exc:
                log.error("token issuance counts refused by the database, dropped: %s: %s",
                          type(exc).__name__, str(exc)[:300],
                          extra={"dropped": sum(pending.values())})
        hour = hour_of(self.clock())
        if hour != self._pruned_hour:
            self.counts.prune(self.clock())
            self._pruned_hour = hour

    def totals(self, since_hour: int) -> Counter[tuple[str, str]]:
        """Issued from ``since_hour`` on per (workload, node): every process's flushed counts
        plus this one's pending counts."""
        with self._lock:
            return self.counts.totals_with(self.ledger.pending_counts(), since_hour)
