"""Tokens issued per hour, workload and node, across processes (``token_issuance_counts``,
mec_api.tokens.issuance_counts), on SQLite and PostgreSQL: counts from several processes add
up exactly, a failed flush loses nothing, old hours are pruned, and the Tokens page shows the
sum of every process with crafted names escaped."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from mec_api.tokens.issuance_counts import KEEP_HOURS, CountFlusher, IssuanceCounts, hour_of
from mec_api.tokens.ledger import NODE_CHARS, WORKLOAD_CHARS, IssuanceLog, per_workload
from umec.db import open_engine

NOW = 1_800_000_000.0
HOUR = hour_of(NOW)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'umec.db'}"
    return str(request.getfixturevalue("pg_database"))


def claims(workload: str, node: str, iat: float) -> dict[str, object]:
    return {"jti": f"{workload}-{iat}", "client_id": workload, "node": node, "iat": int(iat),
            "exp": int(iat) + 300}


def test_counts_of_several_processes_add_up(url: str) -> None:
    """Four 'processes' (own ledger, own engine) issue and flush at once, 25 rounds each."""
    open_engine(url).dispose()  # migrated
    errors: list[BaseException] = []

    def process(i: int) -> None:
        ledger, counts = IssuanceLog(), IssuanceCounts(open_engine(url))
        flush = CountFlusher(counts, ledger, lambda: NOW)
        try:
            for r in range(25):
                for node in ("node-a", "node-b"):
                    ledger.add(claims("tenant/app", node, NOW + r))
                ledger.add(claims(f"tenant/only-{i}", "node-a", NOW - 3600))
                flush()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            counts.engine.dispose()
    threads = [threading.Thread(target=process, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counts = IssuanceCounts(open_engine(url))
    assert counts.totals(HOUR) == Counter({("tenant/app", "node-a"): 100,
                                           ("tenant/app", "node-b"): 100})
    last_two_hours = counts.totals(HOUR - 1)
    assert [last_two_hours[(f"tenant/only-{i}", "node-a")] for i in range(4)] == [25] * 4


def test_a_failed_flush_is_put_back(url: str, tmp_path: Path) -> None:
    ledger = IssuanceLog()
    for _ in range(3):
        ledger.add(claims("tenant/app", "node-a", NOW))
    ledger.add(claims("tenant/old", "node-a", NOW - (KEEP_HOURS + 2) * 3600))
    broken = IssuanceCounts(create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"))
    with pytest.raises(OperationalError, match="unable to open database file"):
        CountFlusher(broken, ledger, lambda: NOW)()
    # Put back, but not the hour older than the table keeps.
    assert ledger.pending_counts() == Counter({(HOUR, "tenant/app", "node-a"): 3})
    ledger.add(claims("tenant/app", "node-a", NOW))
    good = IssuanceCounts(open_engine(url))
    CountFlusher(good, ledger, lambda: NOW)()
    assert good.totals(HOUR)[("tenant/app", "node-a")] == 4
    assert ledger.pending_counts() == Counter()


def test_old_hours_are_pruned_and_pending_counts_join_the_totals(url: str) -> None:
    counts = IssuanceCounts(open_engine(url))
    counts.flush({(HOUR - KEEP_HOURS - 1, "w", "n"): 5, (HOUR - KEEP_HOURS, "w", "n"): 2,
                  (HOUR, "w", "n"): 1})
    assert counts.prune(NOW) == 1
    assert counts.totals(0)[("w", "n")] == 3
    assert counts.totals_with({(HOUR, "w", "n"): 4, (HOUR - 30, "w", "n"): 9},
                              HOUR - 23)[("w", "n")] == 5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a/x", "b/y", "<c>/z"]),
                          st.sampled_from(["n1", "n2"]), st.integers(0, 7200)), max_size=40))
def test_ledger_counts_match_its_rows(issued: list[tuple[str, str, int]]) -> None:
    """Whatever is issued, the counts taken equal the rows per (hour, workload, node), and
    per_workload shows every pair the store knows even without a row in memory."""
    ledger = IssuanceLog()
    for workload, node, offset in issued:
        ledger.add(claims(workload, node, NOW + offset))
    taken = ledger.take_counts()
    assert taken == Counter((hour_of(NOW + o), w, n) for w, n, o in issued)
    assert ledger.take_counts() == Counter()
    stored = {("elsewhere/app", "n9"): 4}
    rows = per_workload(ledger.rows(), NOW, lambda row: None, stored)
    assert {(r["workload"], r["node"]) for r in rows} == {(w, n) for w, n, _ in issued} | {
        ("elsewhere/app", "n9")}
    assert next(r for r in rows if r["workload"] == "elsewhere/app")["issued_all"] == 4


def test_values_the_database_would_refuse_do_not_stop_the_counts(url: str) -> None:
    """A workload or node name too long for its column, with a NUL or a lone surrogate, is
    made storable when counted; a row the database refuses anyway is dropped (logged), and the
    next flush goes through: one bad value never blocks the rest (PostgreSQL enforces the
    column lengths SQLite ignores)."""
    ledger = IssuanceLog()
    odd = ["w" * 600, "ns:a\x00b", "ns:\ud800x"]
    for workload in odd:
        ledger.add(claims(workload, "n" * 300, NOW))
    ledger.add(claims("tenant/app", "node-a", NOW))
    counts = IssuanceCounts(open_engine(url))
    flush = CountFlusher(counts, ledger, lambda: NOW)
    flush()
    stored = counts.totals(HOUR)
    assert stored[("tenant/app", "node-a")] == 1 and sum(stored.values()) == 4
    assert all(len(w) <= WORKLOAD_CHARS and len(n) <= NODE_CHARS and "\x00" not in w
               for w, n in stored)
    # Past the ledger's own cleaning (a future caller, a bug): refused, dropped, not retried.
    ledger._pending[(HOUR, "ns:\ud800", "node-a")] += 1
    flush()
    assert ledger.pending_counts() == Counter()
    ledger.add(claims("tenant/app", "node-a", NOW))
    flush()
    assert counts.totals(HOUR)[("tenant/app", "node-a")] == 2
