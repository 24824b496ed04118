"""The operator's actions on nodes and policies, as JSON documents.

One function per action, called by both ``umec`` front ends: the operator routes of the HTTP API
(:mod:`attest.service.operator_api`, with the server's :class:`AttestContext`) and the CLI's
local bootstrap mode (``umec.cli_backend``), so an answer is the same document whichever path
produced it. Every value is JSON-ready (times as ISO 8601 strings). Refusals are the service's
typed errors (:class:`~attest.core.errors.AttestationError`,
:class:`~attest.core.policy_envelope.PolicyEnvelopeError`), each with its check and hint.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from attest.core.errors import AttestationError
from attest.core.policy import DEFAULT_POLICY, PolicyInvalid
from attest.core.policy_envelope import PolicyEnvelopeError
from attest.service import policies, registrar, verifier
from attest.service.context import AttestContext
from attest.service.fleet import find_summary
from attest.service.models import PolicyEventRow, StateEventRow

RECENT_EVENTS = 20


class PolicyNotFound(AttestationError):
    check = "policy.not_found"
    status = 404
    hint = "`umec policy list` shows the stored policies."


class PolicyStillUsed(AttestationError):
    check = "policy.in_use"
    status = 409
    hint = "Remove or re-class the nodes of this class first (`umec nodes`)."


class PolicyRejected(AttestationError):
    check = "policy.rejected"
    status = 422
    hint = ("Fix the named key of the policy (attest/core/policy.py describes the format) and "
            "send it again.")


def builtin_default_document() -> str:
    """The built-in policy of class ``default`` (:data:`DEFAULT_POLICY`) as the YAML document
    ``umec policy set`` would take; in force while no policy of that class is stored."""
    lines = [f"name: {DEFAULT_POLICY.name}",
             "description: built-in default (quote freshness only; no PCR value pinned)",
             "selection:"]
    lines += [f"  {bank}: [{', '.join(str(i) for i in sorted(pcrs))}]"
              for bank, pcrs in sorted(DEFAULT_POLICY.selection.items())]
    return "\n".join(lines) + "\n"


# --- nodes ------------------------------------------------------------------------------------

def _event(row: StateEventRow) -> dict[str, Any]:
    return {"at": row.at.isoformat(), "previous": row.previous, "state": row.state,
            "reason": row.reason, "failed_checks": list(row.failed_checks or [])}


def node_detail(sessions: sessionmaker[Session], name: str,
                events: int = RECENT_EVENTS) -> dict[str, Any]:
    """The node's summary and its latest ``events`` state changes, newest first."""
    summary = find_summary(sessions, name)
    if summary is None:
        raise registrar.NodeNotFound(f"no node named {name!r}")
    with sessions() as session:
        rows = session.scalars(select(StateEventRow).where(StateEventRow.node == name)
                               .order_by(StateEventRow.at.desc(), StateEventRow.id.desc())
                               .limit(events))
        summary["events"] = [_event(r) for r in rows]
    return summary


def acknowledge(ctx: AttestContext, name: str) -> dict[str, Any]:
    """Record an acknowledgement (:func:`verifier.acknowledge`: refused as
    ``node.ack_not_needed`` when none is needed)."""
    return {"node": name, "acknowledged": True, "state": verifier.acknowledge(ctx, name)}


def remove_node(ctx: AttestContext, name: str) -> dict[str, Any]:
    """Forget the node; its tokens are revoked in the same transaction (the context's change
    writers)."""
    registrar.remove(ctx, name)
    return {"node": name, "removed": True}


def rename_node(ctx: AttestContext, old: str, new: str) -> dict[str, Any]:
    registrar.rename(ctx, old, new)
    return {"node": new, "renamed_from": old, "state": "enrolled"}


# --- policies ---------------------------------------------------------------------------------

def policy_list(sessions: sessionmaker[Session]) -> list[dict[str, Any]]:
    """The stored policies, and the built-in default while none of its class is stored."""
    rows: list[dict[str, Any]] = [
        {"class": r.name, "generation": r.generation, "version": r.version,
         "updated": r.updated_at.isoformat(), "source": "stored"}
        for r in policies.list_policies(sessions)]
    if all(r["class"] != DEFAULT_POLICY.name for r in rows):
        rows.append({"class": DEFAULT_POLICY.name, "generation": None, "version": None,
                     "updated": None, "source": "built-in"})
    return sorted(rows, key=lambda r: str(r["class"]))


def policy_show(sessions: sessionmaker[Session], name: str) -> dict[str, Any]:
    """The class's stored document, or the built-in default's."""
    for row in policies.list_policies(sessions):
        if row.name == name:
            return {"class": name, "document": row.document, "source": "stored",
                    "generation": row.generation, "version": row.version}
    if name == DEFAULT_POLICY.name:
        return {"class": name, "document": builtin_default_document(), "source": "built-in",
                "generation": None, "version": None}
    raise PolicyNotFound(f"no policy {name!r}")


def policy_version(sessions: sessionmaker[Session], name: str, version: int) -> dict[str, Any]:
    """The document applied as ``name``'s ``version`` (its history keeps every one)."""
    with sessions() as session:
        row = session.scalars(select(PolicyEventRow).where(
            PolicyEventRow.policy == name, PolicyEventRow.outcome == "applied",
            PolicyEventRow.version == version).order_by(PolicyEventRow.at.desc())).first()
    if row is None or row.document is None:
        raise policies.PolicyVersionUnknown(f"policy {name!r} never had version {version} "
                                            "applied")
    return {"class": name, "version": version, "document": row.document}


def policy_history(sessions: sessionmaker[Session], name: str) -> list[dict[str, Any]]:
    return [{"at": r.at.isoformat()[:19], "outcome": r.outcome, "version": r.version,
             "signers": list(r.signers), "digest": r.digest, "check": r.check,
             "detail": r.detail} for r in policies.policy_history(sessions, name)]


def apply_policy(sessions: sessionmaker[Session], raw: bytes,
                 trust: policies.PolicyTrust) -> dict[str, Any]:
    """Apply a YAML policy or a signed envelope (:func:`policies.apply_policy`)."""
    try:
        applied = policies.apply_policy(sessions, raw, trust)
    except PolicyInvalid as exc:
        raise PolicyRejected(str(exc)) from None
    return {"class": applied.policy.name, "changed": applied.changed,
            "generation": applied.generation, "version": applied.version,
            "signers": list(applied.signers)}


def rollback_document(sessions: sessionmaker[Session], name: str, to: int,
                      trust: policies.PolicyTrust) -> dict[str, Any]:
    """Version ``to``'s content as a new version, to sign (``must_sign``: policy signers are
    set) or to apply as it is; nothing is applied here."""
    return {"class": name, "document": policies.rollback_document(sessions, name, to),
            "must_sign": trust.enforced}


def draft_from_node(sessions: sessionmaker[Session], node: str, node_class: str | None,
                    event_log: bytes | None, ima_list: bytes | None) -> dict[str, Any]:
    """A draft policy from a known-good node (:func:`policies.node_policy`); nothing applied."""
    try:
        document = policies.node_policy(sessions, node, node_class, event_log=event_log,
                                        ima_list=ima_list)
    except PolicyInvalid as exc:
        raise PolicyRejected(f"{node}: {exc}") from None
    return {"node": node, "document": document}


def remove_policy(sessions: sessionmaker[Session], name: str) -> dict[str, Any]:
    try:
        removed = policies.remove_policy(sessions, name)
    except policies.PolicyInUse as exc:
        raise PolicyStillUsed(str(exc)) from None
    if not removed:
        raise PolicyNotFound(f"no policy {name!r}")
    return {"class": name, "removed": True}


__all__ = ["PolicyEnvelopeError", "PolicyNotFound", "PolicyRejected", "PolicyStillUsed",
           "acknowledge", "apply_policy", "builtin_default_document", "draft_from_node",
           "node_detail", "policy_history", "policy_list", "policy_show", "policy_version",
           "remove_node", "remove_policy", "rename_node", "rollback_document"]
