"""Appraisal policies stored in SQL, one per node class (``umec policy set|show|list|remove``)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from attest.core.policy import AppraisalPolicy
from attest.service.context import utcnow
from attest.service.models import NodeRow, PolicyRow


class PolicyInUse(ValueError):
    """A policy cannot be removed while nodes of its class exist."""


def set_policy(sessions: sessionmaker[Session], document: str) -> tuple[AppraisalPolicy, int]:
    """Validate and store a policy document; returns it with its new generation."""
    policy = AppraisalPolicy.from_yaml(document)  # raises PolicyInvalid naming the bad key
    try:
        return policy, _store(sessions, policy, document)
    except IntegrityError:  # another replica inserted the same class first: now it exists
        return policy, _store(sessions, policy, document)


def _store(sessions: sessionmaker[Session], policy: AppraisalPolicy, document: str) -> int:
    with sessions.begin() as session:
        row = session.get(PolicyRow, policy.name, with_for_update=True)
        if row is None:
            row = PolicyRow(name=policy.name, document=document, generation=1,
                            updated_at=utcnow())
            session.add(row)
        elif row.document != document:
            row.document, row.generation, row.updated_at = document, row.generation + 1, utcnow()
        return row.generation


def load_policy_dir(sessions: sessionmaker[Session], directory: Path) -> list[str]:
    """Declarative policies: every ``*.yaml`` in the directory is applied at start."""
    return [set_policy(sessions, p.read_text(encoding="utf-8"))[0].name
            for p in sorted(directory.glob("*.yaml"))]


def list_policies(sessions: sessionmaker[Session]) -> list[PolicyRow]:
    with sessions() as session:
        return list(session.scalars(select(PolicyRow).order_by(PolicyRow.name)))


def remove_policy(sessions: sessionmaker[Session], name: str) -> bool:
    with sessions.begin() as session:
        if session.scalars(select(NodeRow.name).where(NodeRow.node_class == name)).first():
            raise PolicyInUse(f"nodes of class {name!r} exist; move or remove them first")
        row = session.get(PolicyRow, name)
        if row is None:
            return False
        session.delete(row)
        return True
