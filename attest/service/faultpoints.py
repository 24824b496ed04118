"""Named crash points for fault tests (``UMEC_FAULT_KILL_AT=<point>``).

A test starts ``umec server`` with the variable naming one point; when the process reaches it,
it SIGKILLs itself: no ``finally``, no flush, no answer, exactly as power loss or the OOM
killer would. The variable is read once, at import; unset (production), :func:`reached` is one
comparison and :func:`install` adds nothing.

Two kinds of point:

- **code points**, where the protocol code calls ``reached("<point>")`` (:data:`CODE_POINTS`
  lists the names and where each call belongs);
- **commit points** (:data:`COMMIT_POINTS`), hooked on the engine by :func:`install`: the
  transaction that wrote a given table is cut at its COMMIT, either before it (the database
  rolls it back) or right after it (the database has it, the client never hears). A marked
  statement that changed no row (the evidence's common-case ``UPDATE`` when the state
  changes, which the state change's transaction follows) is no commit point after it. They
  need no code in the protocol modules.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

from sqlalchemy import Engine, event

ENV = "UMEC_FAULT_KILL_AT"
_TARGET = os.environ.get(ENV, "").strip() or None
_MARK = "umec_fault_transaction"
_UNMARKED = object()

_SETS_LAST_VERDICT = r"UPDATE attest_nodes SET (?:(?!\sWHERE\s).)*\blast_verdict="
# The state change's own UPDATE (verifier._record_state_change) sets the verdict and the state
# change's time; the common-case UPDATE and the sweep never set both.
_SETS_VERDICT_AND_STATE = (r"UPDATE attest_nodes SET "
                           r"(?=(?:(?!\sWHERE\s).)*\blast_verdict=)"
                           r"(?=(?:(?!\sWHERE\s).)*\bstate_changed_at=)")

# point -> (pattern the statement that marks the transaction starts with, "before" | "after"
# commit); the pattern is a regular expression, matched case-insensitively from the start.
COMMIT_POINTS: dict[str, tuple[str, str]] = {
    "enroll.before_commit": ("INSERT INTO attest_enrollments", "before"),
    "enroll.after_commit": ("INSERT INTO attest_enrollments", "after"),
    "activate.before_commit": ("INSERT INTO attest_nodes", "before"),
    "activate.after_commit": ("INSERT INTO attest_nodes", "after"),
    # Only step 3 of evidence sets last_verdict (with the challenge counter: the spend); the
    # sweep's void also sets last_evidence_at, so that cannot mark it.
    "evidence.before_commit": (_SETS_LAST_VERDICT, "before"),
    "evidence.after_commit": (_SETS_LAST_VERDICT, "after"),
    # The state-change transaction alone: on PostgreSQL the common-case UPDATE commits itself,
    # so evidence.before_commit dies there, before this transaction ever starts.
    "evidence.state_change.before_commit": (_SETS_VERDICT_AND_STATE, "before"),
    "evidence.state_change.after_commit": (_SETS_VERDICT_AND_STATE, "after"),
}

# point -> where its ``reached(point)`` call belongs (placed by the owners of those modules).
CODE_POINTS: dict[str, str] = {
    "enroll.challenge_made": "registrar.enroll: MakeCredential done, before the enrolment "
                             "transaction",
    "activate.proof_checked": "registrar.activate: the proof matched, before _bind writes the "
                              "node row",
    "evidence.appraised": "verifier.submit_evidence: the verdict is computed, before the "
                          "transaction that spends the nonce and records it",
    "evidence.recorded": "verifier.submit_evidence: committed, before ctx.publish (events "
                         "and token revocation reach their listeners)",
    "deadline.marked": "verifier.mark_stale_nodes: nodes marked stale and committed, before "
                       "ctx.publish",
}


def target() -> str | None:
    """The point this process dies at, if any."""
    return _TARGET


def _die(point: str) -> None:
    os.write(2, f"fault point {point} reached: SIGKILL\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


def reached(point: str) -> None:
    """Die here if ``UMEC_FAULT_KILL_AT`` names ``point``; otherwise do nothing."""
    if _TARGET is not None and point == _TARGET:
        _die(point)


def _autocommit(conn: Any) -> bool:
    return bool(conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT")


def _changes(conn: Any) -> int | None:
    """Rows this SQLite connection has changed since it opened (None on PostgreSQL)."""
    return getattr(conn.connection.dbapi_connection, "total_changes", None)


def _marked(conn: Any, point: str, when: str) -> None:
    if _autocommit(conn) and when == "before":
        _die(point)  # the statement would commit itself: before it is before its commit
    conn.info[_MARK] = _changes(conn)


def install(engine: Engine) -> None:
    """Hook the commit point named by ``UMEC_FAULT_KILL_AT`` (if it is one) on ``engine``."""
    if _TARGET is None or _TARGET not in COMMIT_POINTS:
        return
    point = _TARGET
    pattern, when = COMMIT_POINTS[point]
    marker = re.compile(pattern, re.IGNORECASE | re.DOTALL)

    def seen(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if marker.match(statement.lstrip()):
            _marked(conn, point, when)

    def executed(conn: Any, cursor: Any, *_args: Any) -> None:
        # An autocommit statement is committed when it returns; one that matched no row (the
        # evidence's common-case UPDATE when the state changes) committed nothing.
        if _autocommit(conn) and conn.info.pop(_MARK, _UNMARKED) is not _UNMARKED \
                and cursor.rowcount != 0:
            _die(point)

    def commit(conn: Any) -> None:
        before = conn.info.pop(_MARK, _UNMARKED)
        if before is _UNMARKED or (before is not None and _changes(conn) == before):
            return  # not marked, or (SQLite) the transaction changed no row from the mark on
        if when == "after":
            conn.connection.dbapi_connection.commit()
        _die(point)

    def rollback(conn: Any) -> None:
        conn.info.pop(_MARK, None)

    event.listen(engine, "before_cursor_execute", seen)
    event.listen(engine, "after_cursor_execute", executed)
    event.listen(engine, "commit", commit)
    event.listen(engine, "rollback", rollback)
