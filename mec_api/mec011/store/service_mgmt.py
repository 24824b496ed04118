"""SQL adapter of the MEC 011 service registry: services, liveness and subscriptions.

Writes that depend on what was read (PUT with If-Match, heartbeats) are conditional UPDATEs on
the stored ETag, so two replicas racing on one service cannot both win: the loser gets
``PreconditionFailed`` exactly as a stale If-Match would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from kernel.errors import CheckedError
from mec_api.mec011.core import compute_etag, liveness_expired
from mec_api.mec011.models import PLATFORM_NAMESPACE, ServiceRow, SubscriptionRow
from mec_api.mec011.schemas.service_mgmt import ServiceInfo, ServiceState


class StoreError(CheckedError):
    """A store call refused; ``status`` is what a route answers (the app's one handler)."""

    status = 500
    check = "store"

    def message(self) -> str:
        return self.detail


class NotFound(StoreError):
    status = 404
    check = "not-found"


class PreconditionFailed(StoreError):
    status = 412
    check = "if-match"


class Conflict(StoreError):
    status = 409
    check = "state-conflict"


@dataclass(frozen=True)
class StoredService:
    info: ServiceInfo
    etag: str
    app_instance_id: str
    namespace: str
    liveness_interval: int | None
    last_heartbeat: datetime | None


@dataclass(frozen=True)
class ServiceChange:
    """One add/change/remove, for the notifier: ``old`` None = added, ``new`` None = removed."""

    old: StoredService | None
    new: StoredService | None


@dataclass(frozen=True)
class StoredSubscription:
    subscription_id: str
    app_instance_id: str
    namespace: str
    body: dict[str, Any]


def _service(row: ServiceRow) -> StoredService:
    return StoredService(ServiceInfo.model_validate(row.body), row.etag, row.app_instance_id,
                         row.namespace, row.liveness_interval, row.last_heartbeat)


def _subscription(row: SubscriptionRow) -> StoredSubscription:
    return StoredSubscription(row.subscription_id, row.app_instance_id, row.namespace,
                              dict(row.body))


class SqlServiceRegistry:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    # -- services -------------------------------------------------------------------------
    def visible_services(self, namespace: str) -> list[StoredService]:
        """Services a tenant may discover: its own namespace's and the platform's."""
        with self.sessions() as s:
            rows = s.scalars(select(ServiceRow).where(
                or_(ServiceRow.namespace == namespace, ServiceRow.namespace == PLATFORM_NAMESPACE))
                .order_by(ServiceRow.updated_at, ServiceRow.ser_instance_id))
            return [_service(r) for r in rows]

    def app_services(self, app_instance_id: str) -> list[StoredService]:
        with self.sessions() as s:
            rows = s.scalars(select(ServiceRow).where(
                ServiceRow.app_instance_id == app_instance_id)
                .order_by(ServiceRow.updated_at, ServiceRow.ser_instance_id))
            return [_service(r) for r in rows]

    def service(self, service_id: str) -> StoredService | None:
        with self.sessions() as s:
            row = s.get(ServiceRow, service_id)
            return None if row is None else _service(row)

    def app_service(self, app_instance_id: str, service_id: str) -> StoredService:
        found = self.service(service_id)
        # Another app's service is "not found" under this app: its existence is not disclosed.
        if found is None or found.app_instance_id != app_instance_id:
            raise NotFound(f"application {app_instance_id!r} has no service {service_id!r}")
        return found

    @staticmethod
    def new_service_id() -> str:
        return str(uuid.uuid4())

    def add_service(self, app_instance_id: str, namespace: str, info: ServiceInfo,
                    now: datetime) -> ServiceChange:
        assert info.ser_instance_id is not None
        body = info.to_json()
        row = ServiceRow(ser_instance_id=info.ser_instance_id, app_instance_id=app_instance_id,
                         namespace=namespace, body=body, etag=compute_etag(body),
                         liveness_interval=info.liveness_interval,
                         last_heartbeat=now if info.liveness_interval else None, updated_at=now)
        with self.sessions.begin() as s:
            s.add(row)
        return ServiceChange(None, _service(row))

    def register_platform_service(self, info: ServiceInfo, now: datetime) -> ServiceChange:
        """The platform's own APIs (sensor, camera, inference), discoverable by every tenant."""
        info = info.model_copy(update={"ser_instance_id": info.ser_instance_id
                                       or self.new_service_id()})
        return self.add_service("platform", PLATFORM_NAMESPACE, info, now)

    def replace_service(self, app_instance_id: str, service_id: str, info: ServiceInfo,
                        if_match: Callable[[str], bool], now: datetime) -> ServiceChange:
        old = self.app_service(app_instance_id, service_id)
        if not if_match(old.etag):
            raise PreconditionFailed(f"If-Match does not match the current ETag {old.etag} of "
                                     f"service {service_id!r}: GET it again and retry")
        body = info.to_json()
        interval = info.liveness_interval
        beat = (old.last_heartbeat or now) if interval else None
        values = dict(body=body, etag=compute_etag(body), liveness_interval=interval,
                      last_heartbeat=beat, updated_at=now)
        self._conditional_update(service_id, old.etag, values)
        return ServiceChange(old, self.app_service(app_instance_id, service_id))

    def _conditional_update(self, service_id: str, expected_etag: str,
                            values: dict[str, Any]) -> None:
        with self.sessions.begin() as s:
            done = s.execute(update(ServiceRow).where(
                ServiceRow.ser_instance_id == service_id, ServiceRow.etag == expected_etag)
                .values(**values)).rowcount  # type: ignore[attr-defined]
        if done != 1:
            raise PreconditionFailed(f"service {service_id!r} changed meanwhile: GET it again "
                                     "and retry")

    def delete_service(self, app_instance_id: str, service_id: str) -> ServiceChange:
        old = self.app_service(app_instance_id, service_id)
        with self.sessions.begin() as s:
            s.execute(delete(ServiceRow).where(ServiceRow.ser_instance_id == service_id))
        return ServiceChange(old, None)

    # -- liveness (MEC 011 v3 heartbeat) ---------------------------------------------------
    def heartbeat(self, app_instance_id: str, service_id: str, now: datetime) -> ServiceChange:
        old = self.app_service(app_instance_id, service_id)
        if not old.liveness_interval:
            raise NotFound(f"service {service_id!r} was registered without livenessInterval: "
                           "it has no liveness resource")
        info = old.info.model_copy(update={"state": ServiceState.ACTIVE})
        body = info.to_json()
        self._conditional_update(service_id, old.etag, dict(
            body=body, etag=compute_etag(body), last_heartbeat=now, updated_at=now))
        return ServiceChange(old, self.app_service(app_instance_id, service_id))

    def expire_liveness(self, now: datetime) -> list[ServiceChange]:
        """Services whose heartbeat stopped go INACTIVE (the periodic task of one replica)."""
        with self.sessions() as s:
            rows = s.scalars(select(ServiceRow).where(ServiceRow.liveness_interval.is_not(None)))
            candidates = [_service(r) for r in rows]
        changes: list[ServiceChange] = []
        for old in candidates:
            assert old.liveness_interval is not None and old.last_heartbeat is not None
            if (old.info.state == ServiceState.ACTIVE
                    and liveness_expired(old.last_heartbeat, old.liveness_interval, now)):
                info = old.info.model_copy(update={"state": ServiceState.INACTIVE})
                body = info.to_json()
                try:
                    self._conditional_update(old.info.ser_instance_id or "", old.etag, dict(
                        body=body, etag=compute_etag(body), updated_at=now))
                except PreconditionFailed:
                    continue  # a heartbeat or PUT won the race: the service is alive
                changes.append(ServiceChange(old, self.service(old.info.ser_instance_id or "")))
        return changes

    # -- subscriptions (both APIs; ``api`` says which) ------------------------------------
    def add_subscription(self, api: str, app_instance_id: str, namespace: str,
                         make_body: Callable[[str], dict[str, Any]],
                         now: datetime) -> StoredSubscription:
        subscription_id = str(uuid.uuid4())
        row = SubscriptionRow(subscription_id=subscription_id, api=api,
                              app_instance_id=app_instance_id, namespace=namespace,
                              body=make_body(subscription_id), created_at=now)
        with self.sessions.begin() as s:
            s.add(row)
        return _subscription(row)

    def subscriptions(self, api: str, app_instance_id: str) -> list[StoredSubscription]:
        with self.sessions() as s:
            rows = s.scalars(select(SubscriptionRow).where(
                SubscriptionRow.api == api, SubscriptionRow.app_instance_id == app_instance_id)
                .order_by(SubscriptionRow.created_at, SubscriptionRow.subscription_id))
            return [_subscription(r) for r in rows]

    def subscription(self, api: str, app_instance_id: str,
                     subscription_id: str) -> StoredSubscription:
        with self.sessions() as s:
            row = s.get(SubscriptionRow, subscription_id)
            if row is None or row.api != api or row.app_instance_id != app_instance_id:
                raise NotFound(f"application {app_instance_id!r} has no subscription "
                               f"{subscription_id!r}")
            return _subscription(row)

    def delete_subscription(self, api: str, app_instance_id: str, subscription_id: str) -> None:
        self.subscription(api, app_instance_id, subscription_id)
        with self.sessions.begin() as s:
            s.execute(delete(SubscriptionRow).where(
                SubscriptionRow.subscription_id == subscription_id))

    def subscribers(self, api: str, namespace: str) -> list[StoredSubscription]:
        """Subscriptions entitled to hear about a resource of ``namespace``: the same tenant's,
        or everybody's for platform services."""
        query = select(SubscriptionRow).where(SubscriptionRow.api == api)
        if namespace != PLATFORM_NAMESPACE:
            query = query.where(SubscriptionRow.namespace == namespace)
        with self.sessions() as s:
            return [_subscription(r) for r in s.scalars(query)]
