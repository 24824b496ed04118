"""Statements, transactions and database round trips of one attestation round (run by hand).

    .venv/bin/python bench/attest/count_statements.py [--database sqlite|postgresql://…]
        [--postgres] [--rounds 20]

Runs ``umec server``'s app in-process (``tests/support/attack_env.running_env``: a real HTTP
server on loopback, SQLite in a temporary directory or a fresh PostgreSQL database that is
dropped afterwards), enrols one simulated node, warms up (the policy cache), then for each
round counts separately what the challenge and the evidence requests sent to the database:

- ``statements``: SQL statements SQLAlchemy executed (``before_cursor_execute``);
- ``ping``: the pool's pre-ping of a checked-out connection (``pool_pre_ping``), one round trip;
- ``BEGIN`` / ``COMMIT`` / ``ROLLBACK``: what psycopg really sent (PostgreSQL only): psycopg 3
  sends ``BEGIN`` as its own round trip before the first statement of a transaction, and a
  ``COMMIT``/``ROLLBACK`` only when a transaction is open (read from libpq's transaction status
  when SQLAlchemy asks for one);
- ``round trips`` = statements + ping + BEGIN + COMMIT + ROLLBACK (PostgreSQL), and the
  ``durable commits`` among them (commits of a transaction that wrote: what waits for a flush).

Requests are sent one at a time, and only what runs on the request threads (the routes hand
their work to kernel.offload's ``umec-request`` threads) is counted: the server's background
tasks (deadline sweep, pruning, leases, followers) run on their own threads and are left out.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_rounds import postgres_database  # noqa: E402
from benchdb import add_database_option, is_postgres  # noqa: E402
from sqlalchemy import Engine, event  # noqa: E402

from tests.support.attack_env import running_env  # noqa: E402

IDLE = 0  # libpq PQTRANS_IDLE


class Counts:
    def __init__(self) -> None:
        self._now: Counter[str] = Counter()
        self.wrote = False

    @staticmethod
    def on_request() -> bool:
        # kernel.offload's request threads (since session 11), or anyio's (a sync route, or a
        # server from before that).
        return threading.current_thread().name.startswith(("umec-request", "AnyIO worker thread"))

    @property
    def now(self) -> Counter[str]:
        """The counter of the current thread: a request's, or a throwaway for background."""
        return self._now if self.on_request() else Counter()

    def take(self) -> Counter[str]:
        out, self._now, self.wrote = self._now, Counter(), False
        return out


def _pg_status(dbapi_connection: Any) -> int | None:
    info = getattr(dbapi_connection, "info", None)
    return getattr(info, "transaction_status", None)


def instrument(engine: Engine, counts: Counts) -> None:
    postgres = engine.dialect.name == "postgresql"

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if postgres and not dbapi.autocommit and _pg_status(dbapi) == IDLE:
            counts.now["BEGIN"] += 1
        counts.now["statements"] += 1
        verb = statement.lstrip().split(None, 1)[0].upper()
        counts.now[f"  {verb}"] += 1
        if verb in ("INSERT", "UPDATE", "DELETE") and counts.on_request():
            counts.wrote = True
            if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
                counts.now["durable commits"] += 1  # the statement commits itself

    def _end(kind: str, dbapi: Any) -> None:
        if not postgres or _pg_status(dbapi) != IDLE:
            counts.now[kind] += 1
            if kind == "COMMIT" and counts.wrote:
                counts.now["durable commits"] += 1
        counts.wrote = False

    @event.listens_for(engine, "commit")
    def _commit(conn: Any) -> None:
        _end("COMMIT", conn.connection.dbapi_connection)

    @event.listens_for(engine, "rollback")
    def _rollback(conn: Any) -> None:
        _end("ROLLBACK", conn.connection.dbapi_connection)

    ping = engine.dialect.do_ping

    def counted_ping(dbapi_connection: Any) -> bool:
        counts.now["ping"] += 1
        return bool(ping(dbapi_connection))

    engine.dialect.do_ping = counted_ping  # type: ignore[method-assign]


def round_trips(c: Counter[str], postgres: bool) -> int:
    if not postgres:
        return c["statements"]
    return sum(c[k] for k in ("statements", "ping", "BEGIN", "COMMIT", "ROLLBACK"))


@contextlib.contextmanager
def database(spec: str) -> Iterator[str]:
    with postgres_database(spec) as url:
        yield url


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_database_option(ap)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    counts = Counts()
    per: dict[str, list[Counter[str]]] = {"challenge": [], "evidence": []}
    with tempfile.TemporaryDirectory() as tmp, database(args.database) as url, \
            running_env(Path(tmp), url) as env:
        node = env.node("node-count")
        node.enroll_and_activate()
        for _ in range(3):
            assert node.attest()["state"] == "trusted"
        instrument(env.server.attest.engine, counts)
        for _ in range(args.rounds):
            counts.take()
            ch = node.challenge()
            per["challenge"].append(counts.take())
            resp = node.send(ch["nonce_bytes"], *node.quote(ch))
            resp.raise_for_status()
            per["evidence"].append(counts.take())
            assert resp.json()["state"] == "trusted"
    report(per, is_postgres(args.database), args.rounds)


def report(per: dict[str, list[Counter[str]]], postgres: bool, rounds: int) -> None:
    db = "PostgreSQL" if postgres else "SQLite"
    print(f"## Database work per request ({db}, {rounds} rounds of one node; median [min–max])\n")
    keys = sorted({k for cs in per.values() for c in cs for k in c},
                  key=lambda k: (k.startswith("  "), k))
    print("| | " + " | ".join(per) + " | round |\n|---|" + "---:|" * (len(per) + 1))
    for key in (*keys, "round trips"):
        cells = []
        totals = [0.0] * rounds
        for cs in per.values():
            values = [round_trips(c, postgres) if key == "round trips" else c[key] for c in cs]
            totals = [t + v for t, v in zip(totals, values, strict=True)]
            cells.append(f"{statistics.median(values):g} [{min(values)}–{max(values)}]")
        print(f"| {key} | " + " | ".join(cells) + f" | {statistics.median(totals):g} |")


if __name__ == "__main__":
    main()
