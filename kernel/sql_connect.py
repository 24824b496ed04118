"""One pooled connection for single statements: :func:`single_statements`.

A read that is one statement needs no transaction around it. On PostgreSQL, psycopg otherwise
sends ``BEGIN`` before it and the pool a ``ROLLBACK`` when the connection goes back: three round
trips where one does. In autocommit each statement is its own transaction, so the read sees
what was committed before it began, as inside a transaction of its own. Used on the hot paths
that read one row per request: the evidence's first read and the challenge (attest), a node's
trust and a pod's admission record on every token issuance (mec_api, through umec's bridges).
On SQLite the driver's autocommit has the same meaning.

Never for a read followed by a write that depends on it: that needs a transaction (and on
PostgreSQL a row lock or a conditional UPDATE).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

__all__ = ["single_statements"]


@contextmanager
def single_statements(engine: Engine) -> Iterator[Connection]:
    """A pooled connection whose every statement is its own transaction."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")
