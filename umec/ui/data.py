"""What the dashboard shows, read through attest's service layer (and the token service's
revocation reader, wired in by ``umec.app``): plain JSON-ready dicts, the same for the HTML
pages and the JSON the page polls. Nothing here renders or escapes; :mod:`umec.ui.render` does.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from admission.service.denials import SqlDenialLog
from admission.service.records import SqlAdmissionRecords
from attest.service.context import AttestContext
from attest.service.fleet import find_summary, fleet_summaries, node_events
from attest.service.metrics import ROUND_MINUTES
from mec_api.sensor.store import SqlSensorStore
from mec_api.service.tokens import TokenService
from mec_api.tokens.issuance_counts import hour_of
from mec_api.tokens.ledger import per_workload

NodeRevocations = Callable[[str], list[dict[str, Any]]]


@dataclass
class UiSources:
    """Where the dashboard reads from: attest's context (the server's own, so the operator
    actions it takes revoke and notify as every other state change does) and the node
    revocations the token service keeps."""

    attest: AttestContext
    node_revocations: NodeRevocations
    # The other pages' sources (issue 14): admission's records and denials, the token
    # service, the sensor API's store. None: that page says it is not served here.
    admissions: SqlAdmissionRecords | None = None
    denials: SqlDenialLog | None = None
    tokens: TokenService | None = None
    sensors: SqlSensorStore | None = None


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


# Failing nodes first (what an operator opens the page for), then the rest; by name within.
STATE_ORDER = {"untrusted": 0, "stale": 1, "enrolled": 2, "trusted": 4}


def fleet(src: UiSources) -> list[dict[str, Any]]:
    now = src.attest.now()
    rows = [node_row(s, now) for s in fleet_summaries(src.attest.sessions)]
    return sorted(rows, key=lambda r: (STATE_ORDER.get(r["state"], 3), r["name"]))


def failed_checks_by_type(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """How many nodes' last verdicts failed each check, most frequent first."""
    counts: Counter[str] = Counter()
    for r in rows:
        counts.update({f["check"] for f in r["failed_checks"]})
    return counts.most_common(12)


def rounds_per_minute(now: float) -> list[tuple[str, int]]:
    """This process's evidence rounds per minute over the last hour (``HH:MM`` UTC, count)."""
    return [(datetime.fromtimestamp(t, UTC).strftime("%H:%M"), n)
            for t, n in ROUND_MINUTES.series(now)]


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


# --- admission --------------------------------------------------------------------------------

def per_hour(times: list[datetime], now: datetime, hours: int = 24) -> list[tuple[str, int]]:
    """(``HH:00`` UTC, count) for each of the last ``hours`` hours, oldest first."""
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    counts = [0] * hours
    for t in times:
        i = int((t - start).total_seconds() // 3600)
        if 0 <= i < hours:
            counts[i] += 1
    return [((start + timedelta(hours=i)).strftime("%H:00"), n) for i, n in enumerate(counts)]


def failed_by_check(denials: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """How often each check failed in ``denials`` (each container's failed checks), most
    frequent first."""
    counts: Counter[str] = Counter()
    for d in denials:
        for c in d.get("containers") or []:
            counts.update(str(f.get("check", "")) for f in c.get("failed") or [])
    return counts.most_common(12)


def admission(src: UiSources, namespace: str | None) -> dict[str, Any]:
    now = src.attest.now()
    admitted = src.admissions.recent(namespace) if src.admissions else []
    denied = src.denials.recent(namespace) if src.denials else []
    times = (src.admissions.admitted_since(now - timedelta(hours=24), namespace)
             if src.admissions else [])
    return {"namespace": namespace, "admissions": admitted, "denials": denied,
            "per_hour": per_hour(times, now), "failed_by_check": failed_by_check(denied),
            "served": src.admissions is not None}


# --- tokens -----------------------------------------------------------------------------------

def tokens(src: UiSources) -> dict[str, Any]:
    service = src.tokens
    if service is None:
        return {"served": False, "workloads": [], "revocations": [], "feed_age": None,
                "generation": None}
    now = service.clock.now()
    revocations = service.guard.revocations

    def why(row: Mapping[str, Any]) -> str | None:
        return revocations.revoked(jti=row["jti"], node=row["node"] or None,
                                   node_epoch=row["node_epoch"] or 0, now=now.timestamp(),
                                   pod_uid=row["pod_uid"])
    applied = service.follower.applied_at
    entries = sorted((e for e in service.store.current(now) if e.expires_at > now.timestamp()),
                     key=lambda e: -e.seq)  # the store also serves an hour past expiry
    generation = service.store.generation()
    ledger = service.issuer.issued
    issued_all = service.flush_counts.totals(hour_of(now.timestamp()) - 23)
    return {"served": True,
            "workloads": per_workload(ledger.rows(), now.timestamp(), why, issued_all),
            "revocations": [{"kind": e.kind, "node": e.node, "node_epoch": e.node_epoch,
                             "pod_uid": e.pod_uid, "jti": e.jti,
                             "expires_at": datetime.fromtimestamp(e.expires_at).astimezone()
                             .isoformat(timespec="seconds")} for e in entries[:200]],
            "feed_age": None if applied == float("-inf") else time.monotonic() - applied,
            "max_feed_age": service.guard.max_feed_age,
            "generation": None if generation is None else int(generation)}


# --- sensors ----------------------------------------------------------------------------------

SENSOR_FIELDS = ("temperature_c", "humidity_pct", "pressure_pa", "battery_v")


def _reading(stored: Any) -> dict[str, Any]:
    r = stored.reading
    return {"mac": stored.tag_mac, "at": stored.measured_at.isoformat(timespec="seconds"),
            **{f: getattr(r, f) for f in SENSOR_FIELDS},
            "movement_counter": r.movement_counter, "rssi": stored.rssi}


def sensors(src: UiSources, tag: str | None, hours: int,
            field: str = "temperature_c") -> dict[str, Any]:
    store = src.sensors
    if store is None:
        return {"served": False, "latest": [], "series": [], "tag": tag, "hours": hours,
                "field": field}
    latest = [_reading(r) for r in (store.latest(t.mac) for t in store.tags()) if r]
    chosen = tag or (latest[0]["mac"] if latest else None)
    series: list[tuple[float, float]] = []
    if chosen is not None:
        until = src.attest.now()
        page = store.readings(chosen, until - timedelta(hours=hours), until, limit=1000)
        series = [(r.measured_at.timestamp(), float(v)) for r in page.readings
                  if (v := getattr(r.reading, field)) is not None]
    return {"served": True, "latest": latest, "series": series, "tag": chosen,
            "hours": hours, "field": field}
