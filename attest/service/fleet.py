"""Read-only views of the node table, for operators and for other domains through ``umec``.

The fleet listing (``GET /attest/v1/nodes``, ``umec nodes``), one node's summary, and the trust
record the token service reads on every issuance. Nothing outside ``attest`` reads
:class:`NodeRow` itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from attest.service.models import NodeRow, StateEventRow


def node_summary(row: NodeRow) -> dict[str, Any]:
    return {"name": row.name, "node_class": row.node_class, "state": row.state,
            "ek_hash": row.ek_hash, "activated": row.ak_public is not None,
            "state_changed_at": row.state_changed_at.isoformat(),
            "last_pass_at": row.last_pass_at.isoformat() if row.last_pass_at else None,
            "last_evidence_at": (row.last_evidence_at.isoformat()
                                 if row.last_evidence_at else None),
            "last_verdict": row.last_verdict}


def fleet_summaries(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """Every node's summary, by name."""
    with sessions() as session:
        return [node_summary(n) for n in session.scalars(select(NodeRow).order_by(NodeRow.name))]


def find_summary(sessions: sessionmaker[Session], name: str) -> dict[str, Any] | None:
    """The node's summary, or None if no node has that name."""
    with sessions() as session:
        row = session.get(NodeRow, name)
        return None if row is None else node_summary(row)


def node_events(sessions: sessionmaker[Session], name: str,
                limit: int = 50) -> list[dict[str, Any]]:
    """The node's state changes, newest first (at most ``limit``): its history for operators."""
    query = (select(StateEventRow).where(StateEventRow.node == name)
             .order_by(StateEventRow.at.desc(), StateEventRow.id).limit(limit))
    with sessions() as session:
        return [{"at": e.at.isoformat(), "previous": e.previous, "state": e.state,
                 "reason": e.reason, "failed_checks": list(e.failed_checks)}
                for e in session.scalars(query)]
