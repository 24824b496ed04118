"""Attestation metrics for ``umec server``'s ``/metrics`` (issue 14, "Observability").

Counted as they happen, per process (``rate()`` and ``sum`` over replicas give the site's):

* ``umec_attest_evidence_rounds_total``: evidence rounds answered with a verdict (trusted or
  not); ``rate()`` of it is rounds per second. Refused evidence is not a round: it is in
  ``umec_attest_refusals_total`` (:mod:`attest.service.api`).
* ``umec_attest_failed_checks_total{check}``: every failed check of every verdict, by check id
  (a bounded set: the ids are the code's constants, never a requester's text).

Read from the database at scrape time (:class:`FleetCollector`), so every replica reports the
same fleet whichever of them changed it, and nothing is maintained on the attestation round:

* ``umec_attest_nodes{state}``: nodes per state, every state present (0 when none);
* ``umec_attest_evidence_age_seconds``: a histogram of the time since each node's last
  evidence (nodes that never sent any are not in it; a time in the future counts as 0).

One query (``state``, ``last_evidence_at`` of every node) serves both, at most once per
``ttl`` seconds (5 by default): a scrape costs one indexed read of the node table whatever
scrapes it, however often. A failed read is logged and answers nothing for these two
families (the scrape still succeeds; ``absent()`` alerts on it) rather than stale numbers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Final

from prometheus_client import Counter
from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, select

from attest.service.context import NodeState
from attest.service.models import NodeRow

__all__ = ["AGE_BUCKETS", "FAILED_CHECKS", "ROUNDS", "ROUND_MINUTES", "STATES", "FleetCollector",
           "MinuteCounts", "count_round"]

log = logging.getLogger("umec.attest")

ROUNDS: Final = Counter("umec_attest_evidence_rounds",
                        "Evidence rounds answered with a verdict (rate() is rounds per second).")
FAILED_CHECKS: Final = Counter("umec_attest_failed_checks",
                               "Failed checks of attestation verdicts, by check id.", ["check"])

STATES: Final = (NodeState.ENROLLED, NodeState.TRUSTED, NodeState.UNTRUSTED, NodeState.STALE)
# Seconds: a round every 10-60 s is normal, minutes is a node going quiet, hours a dead one.
AGE_BUCKETS: Final = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0,
                      86400.0)

# Through the table's columns, so SQLite's stored text comes back as datetimes.
_SELECT_FLEET = select(NodeRow.state, NodeRow.last_evidence_at)


class MinuteCounts:
    """Events per wall-clock minute over the last ``minutes`` minutes, in this process: a ring
    of (minute, count) slots, so memory is fixed and a quiet minute costs nothing. What the
    dashboard's "rounds per minute" chart draws; Prometheus's ``rate()`` of
    :data:`ROUNDS` is the site-wide series. Thread-safe (rounds are answered in threads)."""

    def __init__(self, minutes: int = 60) -> None:
        self.minutes = minutes
        self._slots = [(-1, 0)] * minutes
        self._lock = threading.Lock()

    def add(self, at: float) -> None:
        minute = int(at // 60)
        i = minute % self.minutes
        with self._lock:
            held, count = self._slots[i]
            self._slots[i] = (minute, count + 1 if held == minute else 1)

    def series(self, now: float) -> list[tuple[int, int]]:
        """(minute start as Unix seconds, count) for each of the last ``minutes`` minutes,
        oldest first, the current minute last; minutes without events count 0."""
        current = int(now // 60)
        with self._lock:
            slots = list(self._slots)
        out = []
        for minute in range(current - self.minutes + 1, current + 1):
            held, count = slots[minute % self.minutes]
            out.append((minute * 60, count if held == minute else 0))
        return out


ROUND_MINUTES: Final = MinuteCounts()


def count_round(failed_checks: Sequence[str]) -> None:
    """One evidence round answered with a verdict, and its failed checks."""
    ROUNDS.inc()
    ROUND_MINUTES.add(time.time())
    for check in failed_checks:
        FAILED_CHECKS.labels(check).inc()


def _aware(at: datetime, now: datetime) -> datetime:
    """SQLite hands back naive UTC; compare like with like."""
    return at.replace(tzinfo=now.tzinfo) if at.tzinfo is None and now.tzinfo else at


def _families(rows: Sequence[tuple[str, datetime | None]], now: datetime) -> list[Metric]:
    states = dict.fromkeys(STATES, 0)
    counts = [0] * len(AGE_BUCKETS)
    ages: list[float] = []
    for state, last in rows:
        states[state] = states.get(state, 0) + 1
        if last is None:
            continue
        age = max(0.0, (now - _aware(last, now)).total_seconds())
        ages.append(age)
        for i, bound in enumerate(AGE_BUCKETS):
            if age <= bound:
                counts[i] += 1
    nodes = GaugeMetricFamily("umec_attest_nodes", "Nodes by attestation state "
                              "(read from the database at scrape time).", labels=["state"])
    for state, n in sorted(states.items()):
        nodes.add_metric([state], n)
    buckets = [(str(b), c) for b, c in zip(AGE_BUCKETS, counts, strict=True)]
    buckets.append(("+Inf", len(ages)))
    ages_family = HistogramMetricFamily("umec_attest_evidence_age_seconds",
                                "Time since each node's last evidence, at scrape time.",
                                buckets=buckets, sum_value=sum(ages))
    return [nodes, ages_family]


class FleetCollector(Collector):
    """``umec_attest_nodes`` and ``umec_attest_evidence_age_seconds`` from the node table
    (module doc). ``now`` is the attestation clock (the database's on PostgreSQL)."""

    def __init__(self, engine: Engine, now: Callable[[], datetime], ttl: float = 5.0) -> None:
        self.engine, self.now, self.ttl = engine, now, ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def _read(self) -> list[Metric]:
        with self.engine.connect() as conn:
            rows = [(r[0], r[1]) for r in conn.execute(_SELECT_FLEET)]
        return _families(rows, self.now())

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # concurrent scrapes share one read
            if self._cached is None or time.monotonic() - self._cached[0] >= self.ttl:
                try:
                    self._cached = (time.monotonic(), self._read())
                except Exception as exc:  # a scrape must not fail: the families are absent
                    log.warning("fleet metrics not read", extra={
                        "check": "metrics.fleet_read", "error": f"{type(exc).__name__}: {exc}"})
                    self._cached = None
                    return
            families = self._cached[1]
        yield from families
