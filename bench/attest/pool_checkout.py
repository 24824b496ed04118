"""What a pooled PostgreSQL checkout costs: ``pool_pre_ping`` against ``umec.db.watch_liveness``
(run by hand; issue 15).

    .venv/bin/python bench/attest/pool_checkout.py [--checkouts 2000] [--trials 5]

One thread, one pooled connection, each checkout runs ``SELECT 1`` in autocommit (what the
challenge's statements do). The two engines run alternately, ``--checkouts`` each per trial, in a
database of their own on the shared PostgreSQL (created and dropped here). Reported per checkout:
wall time and this process's CPU time (medians over trials), and the server's round trips
(statements + pings).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sqlalchemy import Engine, create_engine, text  # noqa: E402

from umec.db import POSTGRES_CONNECT_ARGS, watch_liveness  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from benchdb import SHARED_POSTGRES, scratch_database  # noqa: E402


def engines(url: str) -> dict[str, Engine]:
    pre_ping = create_engine(url, pool_pre_ping=True, connect_args=POSTGRES_CONNECT_ARGS)
    watched = create_engine(url, connect_args=POSTGRES_CONNECT_ARGS)
    watch_liveness(watched)
    return {"pool_pre_ping": pre_ping, "watch_liveness": watched}


def counted_pings(engine: Engine) -> list[int]:
    box = [0]
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        box[0] += 1
        return bool(ping(dbapi_connection))

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    return box


def run(engine: Engine, checkouts: int) -> tuple[float, float]:
    select_one = text("SELECT 1")
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(checkouts):
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(select_one).scalar()
    return ((time.perf_counter() - wall) / checkouts * 1e6,
            (time.process_time() - cpu) / checkouts * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkouts", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--database", default=SHARED_POSTGRES, metavar="postgresql://…",
                        help="the PostgreSQL server (a database of the run's own is created "
                             "and dropped there)")
    args = parser.parse_args()
    with scratch_database(args.database) as url:
        measure(url.replace("postgresql://", "postgresql+psycopg://", 1), args.checkouts,
                args.trials)


def measure(url: str, checkouts: int, trials: int) -> None:
    engs = engines(url)
    pings = {label: counted_pings(eng) for label, eng in engs.items()}
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in engs}
    for eng in engs.values():
        run(eng, 100)  # connect and warm up
    for label in engs:
        pings[label][0] = 0
    for trial in range(trials):
        order = list(engs) if trial % 2 == 0 else list(reversed(engs))
        for label in order:
            results[label].append(run(engs[label], checkouts))
    print("| engine | wall µs / checkout | CPU µs / checkout | pings / checkout |")
    print("|---|---:|---:|---:|")
    for label, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"| {label} | {wall:.0f} | {cpu:.0f} | "
              f"{pings[label][0] / (checkouts * trials):.2f} |")
    for eng in engs.values():
        eng.dispose()


if __name__ == "__main__":
    main()
