"""A database lease: the one replica that holds it runs a periodic job (deadline checks, the
Kubernetes re-sync, the pod reconcile); the others wait until it expires.

The ``leases`` table has one row per job name. :meth:`SqlLease.acquire` takes or renews the row
with one conditional UPDATE, so on PostgreSQL two replicas can never both believe they hold it:

1. **Renew or take over**: update the row if this holder already has it, if it expired, or if
   its expiry lies impossibly far ahead (more than a TTL plus :data:`CLOCK_SLACK` beyond what a
   fresh lease would get — it was taken before a clock step back; without this a dead holder
   would keep it until time caught up).
2. **Held by another**: the row exists and was not updated → not ours.
3. **First ever**: insert the row; losing the insert race to another replica → not ours.

Times come from the injected ``now`` (the database's clock on PostgreSQL), so replicas with
skewed wall clocks agree on expiry.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Column, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kernel.sql_types import UtcDateTime

# A holder's renewal may be this far ahead of ours (rounding, replicas' clocks) and still count.
CLOCK_SLACK = timedelta(seconds=2)

kernel_metadata = MetaData()

leases = Table(
    "leases", kernel_metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)


def default_holder() -> str:
    """Host and process for the logs, and a random part: unique per lease object even where
    pods share a host network and a PID namespace hides that they are different processes."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class SqlLease:
    """Holds the lease ``name`` for ``ttl`` seconds at a time; see the module docstring."""

    def __init__(self, sessions: sessionmaker[Session], name: str, ttl: float,
                 now: Callable[[], datetime], holder: str | None = None) -> None:
        self.sessions, self.name, self.ttl, self.now = sessions, name, ttl, now
        self.holder = holder or default_holder()

    def acquire(self) -> bool:
        now = self.now()
        expires = now + timedelta(seconds=self.ttl)
        impossible = expires + timedelta(seconds=self.ttl) + CLOCK_SLACK
        with self.sessions.begin() as session:
            taken = session.execute(                                        # step 1
                update(leases)
                .where(leases.c.name == self.name,
                       (leases.c.holder == self.holder) | (leases.c.expires_at < now)
                       | (leases.c.expires_at > impossible))
                .values(holder=self.holder, expires_at=expires))
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return True
            exists = session.execute(select(leases.c.name).where(leases.c.name == self.name))
            if exists.first() is not None:                                  # step 2
                return False
        try:                                                                # step 3
            with self.sessions.begin() as session:
                session.execute(insert(leases).values(name=self.name, holder=self.holder,
                                                      expires_at=expires))
            return True
        except IntegrityError:  # another replica inserted it first
            return False
