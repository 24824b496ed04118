"""What the dashboard shows, read through attest's service layer (and the token service's
revocation reader, wired in by ``umec.app``): plain JSON-ready dicts, the same for the HTML
pages and the JSON the page polls. Nothing here renders or escapes; :mod:`umec.ui.render` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from attest.service.context import AttestContext
from attest.service.fleet import find_summary, fleet_summaries, node_events

NodeRevocations = Callable[[str], list[dict[str, Any]]]


@dataclass
class UiSources:
    """Where the dashboard reads from: attest's context (the server's own, so the operator
    actions it takes revoke and notify as every other state change does) and the node
    revocations the token service keeps."""

    attest: AttestContext
    node_revocations: NodeRevocations


def _age(at: str | None, now: datetime) -> float | None:
    if at is None:
        return None
    return max(0.0, (now - datetime.fromisoformat(at)).total_seconds())


def _failed(verdict: dict[str, Any] | None) -> list[dict[str, str]]:
    checks = (verdict or {}).get("failed_checks") or []
    return [{"check": str(f.get("check", "")), "detail": str(f.get("detail", "")),
             "hint": str(f.get("hint", ""))} for f in checks if isinstance(f, dict)]


def node_row(summary: dict[str, Any], now: datetime) -> dict[str, Any]:
    """One node as the fleet table shows it."""
    return {"name": summary["name"], "node_class": summary["node_class"],
            "state": summary["state"], "state_changed_at": summary["state_changed_at"],
            "evidence_age": _age(summary.get("last_evidence_at"), now),
            "failed_checks": _failed(summary.get("last_verdict"))}


def fleet(src: UiSources) -> list[dict[str, Any]]:
    now = src.attest.now()
    return [node_row(s, now) for s in fleet_summaries(src.attest.sessions)]


def _reference_values(src: UiSources, node_class: str,
                      verdict: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per selected PCR: the policy's reference values and the value the last passing quote
    reported (stored with trusted verdicts only)."""
    with src.attest.sessions() as session:
        try:
            policy = src.attest.policy_for(session, node_class)
        except LookupError:
            return []
    reported = (verdict or {}).get("pcrs") or {}
    rows = []
    for bank, indices in sorted(policy.selection.items()):
        for index in sorted(indices):
            refs = sorted(v.hex() for v in policy.pcrs.get(bank, {}).get(index, ()))
            value = (reported.get(bank) or {}).get(str(index))
            rows.append({"bank": bank, "index": index, "reference": refs,
                         "reported": value if isinstance(value, str) else None,
                         "matches": None if value is None or not refs else value in refs})
    return rows


def node_detail(src: UiSources, name: str) -> dict[str, Any] | None:
    """Everything the node page shows, or None if no node has that name."""
    summary = find_summary(src.attest.sessions, name)
    if summary is None:
        return None
    verdict = summary.get("last_verdict")
    return {**node_row(summary, src.attest.now()),
            "last_pass_at": summary.get("last_pass_at"),
            "last_evidence_at": summary.get("last_evidence_at"),
            "verdict_at": (verdict or {}).get("at"),
            "trusted_verdict": bool((verdict or {}).get("trusted")),
            "has_verdict": verdict is not None,
            "events": node_events(src.attest.sessions, name),
            "pcrs": _reference_values(src, summary["node_class"], verdict),
            "revocations": src.node_revocations(name)}
