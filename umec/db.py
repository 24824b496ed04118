"""Database engine and migrations.

SQLite (one file, WAL) by default; PostgreSQL by URL for several replicas. Alembic migrations are
applied at start by every process that opens the database, so an upgrade is "install and restart".
"""

from __future__ import annotations

import select
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import InvalidatePoolError, SQLAlchemyError

MIGRATIONS = Path(__file__).with_name("migrations")
# Alembic's environment is module-global: migrations in one process must not overlap. Separate
# replicas (processes) are serialized by the PostgreSQL advisory lock in migrations/env.py.
_MIGRATE_LOCK = threading.Lock()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during a write; busy_timeout turns lock contention into waiting.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    # 1 MiB of page cache per connection (SQLite's default is 2 MiB): the working set is a
    # few index pages, and on a Raspberry Pi every pooled connection's cache is resident.
    cursor.execute("PRAGMA cache_size=-1024")
    cursor.close()


# A PostgreSQL peer that vanishes (failover, partition) must fail a query in seconds, not after
# minutes of TCP retransmission: the revocation follower would sit in that read while every guard
# answered 503 long after the database was back. libpq's keepalives and TCP_USER_TIMEOUT bound
# how long a dead connection can hold a query; connect_timeout bounds a new connection.
POSTGRES_CONNECT_ARGS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5,
                         "keepalives_interval": 2, "keepalives_count": 3,
                         "tcp_user_timeout": 10_000}


# A pooled PostgreSQL connection is pinged (one round trip) on checkout only when it may be dead
# (docs/decisions.md, "Issue 15, second step"): its socket has something to read (an idle
# connection's server has nothing to say, so it is the server's FATAL goodbye on a restart or
# shutdown, an EOF, an RST, or an error the kernel's keepalives found), psycopg already knows it
# broken, or it sat idle longer than this. A connection in use every few milliseconds under load
# costs a poll(2), not a round trip; SQLAlchemy's pool_pre_ping cost one round trip per checkout.
PING_AFTER_IDLE_SECONDS = 10.0
_LAST_USED = "umec.last_used"


def _may_be_dead(dbapi_connection: Any) -> bool:
    if dbapi_connection.closed or dbapi_connection.broken:
        return True
    poller = select.poll()  # POLLERR and POLLHUP are reported whatever is asked
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def watch_liveness(engine: Engine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Ping a checked-out connection only when it may be dead; a dead one invalidates the pool.

    A failed ping that is a disconnect raises ``InvalidatePoolError``: the pool drops every
    connection older than now (a restart killed them all) and checks out a new one, so the
    request does not fail. Any other error of the ping propagates (typed by the caller)."""
    dialect = engine.dialect

    def checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            record.info[_LAST_USED] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_LAST_USED)
        if last is None:  # new since its last checkout: just connected, nothing to check
            return
        if time.monotonic() - last <= idle_seconds and not _may_be_dead(dbapi_connection):
            return
        try:
            dialect.do_ping(dbapi_connection)  # looked up per call: benches count it
        except dialect.loaded_dbapi.Error as err:
            if dialect.is_disconnect(err, dbapi_connection, None):
                raise InvalidatePoolError(f"pooled connection found dead: {err}") from err
            raise

    event.listen(engine, "checkin", checkin)
    event.listen(engine, "checkout", checkout)


# The default of Settings.database_max_connections: the deployment's 2 server and 2 webhook
# replicas hold at most 80 of PostgreSQL's default 100 (3 reserved); 30 each exceeded it.
MAX_CONNECTIONS = 20


def make_engine(url: str, max_connections: int = MAX_CONNECTIONS) -> Engine:
    """The engine of ``url``. On PostgreSQL at most ``max_connections`` at once, half of them
    pooled; SQLite (a file, no server to exhaust) keeps 10 + 20."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # The same pool size as on PostgreSQL: SQLAlchemy's default (5) is below the request
        # threads that read at once under load, and every overflow connection is opened (with
        # its pragmas) and closed again per checkout: 4.5 % of a token issuance's CPU.
        engine = create_engine(url, pool_size=10, max_overflow=20,
                               connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    pooled = max(1, max_connections // 2)
    engine = create_engine(url, pool_size=pooled, max_overflow=max_connections - pooled,
                           connect_args=POSTGRES_CONNECT_ARGS)
    watch_liveness(engine)
    return engine


if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.orm import sessionmaker


def alembic_config(engine: Engine) -> Config:
    # Imported here: Alembic costs ~10 MiB of resident memory in every long-running process,
    # and is needed only for the moment of migrating.
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def _newest_revision() -> str:
    # House convention: revision ids are the zero-padded prefix of the file name (0001_…).
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def _at_newest_revision(engine: Engine) -> bool:
    """Cheap check without Alembic: already-migrated processes never import it (~10 MiB)."""
    try:
        with engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:  # no version table yet: a fresh database
        return False
    return current == _newest_revision()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; safe for concurrent replicas on PG)."""
    if _at_newest_revision(engine):
        return
    from alembic import command
    with _MIGRATE_LOCK:
        command.upgrade(alembic_config(engine), "head")


def open_engine(url: str, max_connections: int = MAX_CONNECTIONS) -> Engine:
    """The migrated database as a Core engine (the webhook never loads the ORM)."""
    engine = make_engine(url, max_connections)
    migrate(engine)
    return engine


def open_database(url: str, max_connections: int = MAX_CONNECTIONS
                  ) -> tuple[Engine, sessionmaker[Any]]:
    from sqlalchemy.orm import sessionmaker
    engine = open_engine(url, max_connections)
    return engine, sessionmaker(engine, expire_on_commit=False)
