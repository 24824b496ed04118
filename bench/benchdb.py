"""The database of a benchmark run: ``--database`` on every bench script that starts a server.

``--database sqlite`` (the default) is the server's own SQLite file in the run's work directory.
``--database postgresql://USER@HOST:PORT/DB`` names a PostgreSQL server and a database on it to
connect to for administration: the run creates a database of its own there
(``umec_bench_<pid>_<time>``), runs against it, and drops it at the end (``WITH (FORCE)``), so
it never reads or writes anyone else's. ``--postgres`` is short for
``--database postgresql://postgres@127.0.0.1:5432/test`` (the machine's shared server).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

SHARED_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def add_database_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--database", default="sqlite", metavar="sqlite|postgresql://…",
                    help="sqlite (default), or a PostgreSQL server to create and drop a "
                         "database of the run's own on")
    ap.add_argument("--postgres", dest="database", action="store_const",
                    const=SHARED_POSTGRES, help=f"--database {SHARED_POSTGRES}")


def is_postgres(spec: str) -> bool:
    return spec.startswith(("postgresql://", "postgresql+psycopg://", "postgres://"))


@contextmanager
def scratch_database(spec: str) -> Iterator[str]:
    """The URL the server is given: ``""`` for SQLite (its data directory's file), else a
    fresh database on the named PostgreSQL server, dropped afterwards."""
    if spec == "sqlite":
        yield ""
        return
    if not is_postgres(spec):
        raise SystemExit(f"--database {spec!r}: use sqlite or postgresql://USER@HOST:PORT/DB")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    admin_url = make_url(spec).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"umec_bench_{os.getpid()}_{time.time_ns() // 1000}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(drivername="postgresql", database=name).render_as_string(
            hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
