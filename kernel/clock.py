"""The one clock every freshness decision reads (DESIGN: "Time is one clock").

Times written by one replica (``last_pass_at``, nonce and enrolment expiry, token ``iat``/``exp``,
revocation entry expiry) are compared by another, so all replicas must read the same clock, and a
step of one machine's wall clock must not move it:

* :class:`SystemClock`: the machine's wall clock. For SQLite, where there is one server and so
  only one clock to agree with.
* :class:`DatabaseClock`: PostgreSQL's ``clock_timestamp()``, read at start and then at most every
  ``resync_seconds``, advanced in between by ``time.monotonic()``. Every replica shares the
  database's time, and a step of a replica's own wall clock changes nothing. When the database
  cannot be read the last anchor keeps advancing by monotonic time (logged once): never a silent
  fall-back to the wall clock, which is exactly what may have been stepped.

Pure cores take ``now`` as a parameter; only the composition root picks a clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

log = logging.getLogger("umec.clock")

# How far in the future a stored time may lie before it is a clock step, not a rounding error
# (replicas on one database clock agree to well under this).
FUTURE_TOLERANCE_SECONDS = 2.0


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""


class SystemClock:
    """The wall clock of this machine (one server on SQLite: the only clock there is)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class DatabaseClock:
    """PostgreSQL's clock, re-anchored every ``resync_seconds`` and advanced by monotonic time.

    ``read`` returns the database's ``clock_timestamp()``; it is given an engine-bound reader by
    :func:`clock_for`. ``monotonic`` is injectable for tests.
    """

    def __init__(self, read: Callable[[], datetime], *, resync_seconds: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._read, self._monotonic = read, monotonic
        self.resync_seconds = resync_seconds
        self._lock = threading.Lock()
        self._failing = False
        # At start: a server that cannot read its database's clock does not start.
        self._anchor: tuple[float, datetime] = self._read_anchor()

    def _read_anchor(self) -> tuple[float, datetime]:
        before = self._monotonic()
        db_now = self._read()
        after = self._monotonic()
        if db_now.tzinfo is None:
            raise ValueError("the database clock returned a naive time")
        # The database read its clock somewhere within the round trip: take the middle.
        return (before + after) / 2, db_now.astimezone(UTC)

    def _maybe_resync(self) -> None:
        """Re-anchor when due. One thread reads the database; the others meanwhile go on with
        the current anchor instead of queueing behind a slow or unreachable database."""
        if self._monotonic() - self._anchor[0] < self.resync_seconds:
            return
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._anchor = self._read_anchor()
            if self._failing:
                log.warning("database clock readable again; re-anchored")
            self._failing = False
        except Exception as e:  # keep advancing the last anchor by monotonic time
            if not self._failing:
                log.warning("database clock unreadable (%s); advancing the last anchor by "
                            "monotonic time", type(e).__name__)
            self._failing = True
            # Try again at the next resync interval, not on every call.
            mono, at = self._anchor
            elapsed = self._monotonic() - mono
            self._anchor = (mono + elapsed, at + timedelta(seconds=elapsed))
        finally:
            self._lock.release()

    def now(self) -> datetime:
        self._maybe_resync()
        mono, at = self._anchor  # one tuple, replaced whole: a consistent pair
        return at + timedelta(seconds=self._monotonic() - mono)


def _database_reader(engine: Any) -> Callable[[], datetime]:
    from sqlalchemy import text
    query = text("SELECT clock_timestamp()")

    def read() -> datetime:
        with engine.connect() as conn:
            value = conn.execute(query).scalar_one()
        assert isinstance(value, datetime)
        return value
    return read


def clock_for(engine: Any, *, resync_seconds: float = 5.0) -> Clock:
    """The clock all replicas on ``engine`` share: the database's on PostgreSQL, else the
    machine's (SQLite has one server)."""
    if engine.dialect.name == "postgresql":
        return DatabaseClock(_database_reader(engine), resync_seconds=resync_seconds)
    return SystemClock()
