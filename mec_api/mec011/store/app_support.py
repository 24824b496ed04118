"""SQL adapter of MEC 011 application support: traffic/DNS rules and the app's lifecycle state.

Where the rules come from: in ETSI MEC the MEO/MEPM configures them from the application
descriptor. µMEC has no MEO, so the platform side (operator configuration, ``umec`` admin code)
seeds them with ``seed_traffic_rule``/``seed_dns_rule``; the app reads its own and may PUT only
their ``state`` (``core.check_rule_update``): an app that could rewrite its own traffic filters
could steer other tenants' traffic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from mec_api.mec011.core import compute_etag
from mec_api.mec011.models import AppStateRow, RuleRow
from mec_api.mec011.schemas.app_support import DnsRule, OperationAction, TrafficRule
from mec_api.mec011.store.service_mgmt import Conflict, NotFound, PreconditionFailed

TRAFFIC, DNS = "traffic", "dns"


@dataclass(frozen=True)
class StoredRule:
    body: dict[str, Any]
    etag: str


class SqlAppSupport:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # -- rules ------------------------------------------------------------------------------
    def seed_traffic_rule(self, app_instance_id: str, rule: TrafficRule, now: datetime) -> None:
        self._seed(TRAFFIC, app_instance_id, rule.traffic_rule_id, rule.to_json(), now)

    def seed_dns_rule(self, app_instance_id: str, rule: DnsRule, now: datetime) -> None:
        self._seed(DNS, app_instance_id, rule.dns_rule_id, rule.to_json(), now)

    def _seed(self, kind: str, app_instance_id: str, rule_id: str, body: dict[str, Any],
              now: datetime) -> None:
        """Insert or replace (the platform's configuration is the source of truth)."""
        with self.sessions.begin() as s:
            s.merge(RuleRow(kind=kind, app_instance_id=app_instance_id, rule_id=rule_id,
                            body=body, etag=compute_etag(body), updated_at=now))

    def rules(self, kind: str, app_instance_id: str) -> list[StoredRule]:
        with self.sessions() as s:
            rows = s.scalars(select(RuleRow).where(
                RuleRow.kind == kind, RuleRow.app_instance_id == app_instance_id)
                .order_by(RuleRow.rule_id))
            return [StoredRule(dict(r.body), r.etag) for r in rows]

    def rule(self, kind: str, app_instance_id: str, rule_id: str) -> StoredRule:
        with self.sessions() as s:
            row = s.get(RuleRow, (kind, app_instance_id, rule_id))
            if row is None:
                raise NotFound(f"application {app_instance_id!r} has no {kind} rule {rule_id!r}")
            return StoredRule(dict(row.body), row.etag)

    def update_rule(self, kind: str, app_instance_id: str, rule_id: str,
                    change: Callable[[dict[str, Any]], dict[str, Any]],
                    if_match: Callable[[str], bool], now: datetime) -> StoredRule:
        old = self.rule(kind, app_instance_id, rule_id)
        if not if_match(old.etag):
            raise PreconditionFailed(f"If-Match does not match the current ETag {old.etag} of "
                                     f"{kind} rule {rule_id!r}: GET it again and retry")
        body = change(old.body)
        etag = compute_etag(body)
        with self.sessions.begin() as s:
            done = s.execute(update(RuleRow).where(
                RuleRow.kind == kind, RuleRow.app_instance_id == app_instance_id,
                RuleRow.rule_id == rule_id, RuleRow.etag == old.etag)
                .values(body=body, etag=etag, updated_at=now)).rowcount  # type: ignore[attr-defined]
        if done != 1:
            raise PreconditionFailed(f"{kind} rule {rule_id!r} changed meanwhile: GET it again")
        return StoredRule(body, etag)

    # -- lifecycle ----------------------------------------------------------------------------
    def _state(self, s: Session, app_instance_id: str) -> AppStateRow:
        """The app's row, created if need be and locked (replicas may race on a new app)."""
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        s.execute(insert(AppStateRow).values(app_instance_id=app_instance_id)
                  .on_conflict_do_nothing(index_elements=[AppStateRow.app_instance_id]))
        row = s.get(AppStateRow, app_instance_id, with_for_update=True)
        assert row is not None
        return row

    def confirm_ready(self, app_instance_id: str, now: datetime) -> None:
        with self.sessions.begin() as s:
            row = self._state(s, app_instance_id)
            if row.pending_action or row.terminated_at:
                raise Conflict(f"application {app_instance_id!r} is being or was "
                               f"{(row.pending_action or row.terminated_action or '').lower()}: "
                               "it cannot become ready; the platform must instantiate it again")
            row.ready_at = row.ready_at or now

    def begin_termination(self, app_instance_id: str, action: OperationAction,
                          deadline: datetime) -> None:
        """Platform side: the app is told to stop/terminate and may confirm before ``deadline``."""
        with self.sessions.begin() as s:
            row = self._state(s, app_instance_id)
            row.pending_action, row.termination_deadline = action.value, deadline

    def confirm_termination(self, app_instance_id: str, action: OperationAction | None,
                            now: datetime) -> OperationAction:
        with self.sessions.begin() as s:
            row = self._state(s, app_instance_id)
            if row.pending_action is None:
                raise Conflict(f"no termination or stop of application {app_instance_id!r} is in "
                               "progress: confirm only after an AppTerminationNotification")
            if action is not None and action.value != row.pending_action:
                raise Conflict(f"the platform is {row.pending_action.lower()} application "
                               f"{app_instance_id!r}; confirm operationAction "
                               f"{row.pending_action}, not {action.value}")
            confirmed = OperationAction(row.pending_action)
            row.terminated_action, row.terminated_at = row.pending_action, now
            row.pending_action, row.termination_deadline = None, None
            return confirmed

    def lifecycle(self, app_instance_id: str) -> AppStateRow | None:
        with self.sessions() as s:
            return s.get(AppStateRow, app_instance_id)
