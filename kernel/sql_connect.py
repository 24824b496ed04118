"""Pooled connections for single statements: :func:`single_statements`, :func:`single_reads`
and :func:`single_writes`.

A statement that stands alone needs no transaction around it. On PostgreSQL, psycopg otherwise
sends ``BEGIN`` before it and the pool a ``ROLLBACK`` (or the caller a ``COMMIT``) after it:
three round trips where one does. In autocommit each statement is its own transaction, so a
read sees what was committed before it began, and a write is durable when it returns.

* :func:`single_statements`: autocommit on every database, for a write that commits itself
  (the challenge's nonce insert) and reads beside it.
* :func:`single_reads`: for reads only, on the hot paths that read one row per request (the
  evidence's first read; a node's trust and a pod's admission record on every token issuance).
  On PostgreSQL autocommit; on SQLite a plain connection, because pysqlite begins no
  transaction before a ``SELECT`` anyway, and switching its isolation level there and back on
  every checkout cost 5 % of a token issuance's CPU.
* :func:`single_writes`: for one write that stands alone on a hot path (the evidence's
  common-case ``UPDATE``). On PostgreSQL autocommit: one round trip instead of ``BEGIN``, the
  statement and ``COMMIT``. On SQLite a transaction committed on exit, as
  ``engine.begin()``: there is no round trip to save, and no isolation level to switch.

Never for a read followed by a write that depends on it: that needs a transaction (and on
PostgreSQL a row lock or a conditional UPDATE).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import Connection, Engine

__all__ = ["single_reads", "single_statements", "single_writes"]


@contextmanager
def single_statements(engine: Engine) -> Iterator[Connection]:
    """A pooled connection whose every statement is its own transaction."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def single_reads(engine: Engine) -> AbstractContextManager[Connection]:
    """A pooled connection for statements that only read (see the module doc)."""
    return single_statements(engine) if _postgresql(engine) else engine.connect()


def single_writes(engine: Engine) -> AbstractContextManager[Connection]:
    """A pooled connection for one write that commits itself (see the module doc); on SQLite
    the write is committed when the block exits without an exception."""
    return single_statements(engine) if _postgresql(engine) else engine.begin()


def _postgresql(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
