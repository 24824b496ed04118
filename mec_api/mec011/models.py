"""SQL tables of the MEC 011 registry, so that every ``umec server`` replica answers alike.

Bodies are stored as the JSON representation the API returns (ServiceInfo, TrafficRule, DnsRule,
subscriptions); the columns beside them are what the queries select on and who owns the row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.sql_types import UtcDateTime

# The tenant boundary of services every tenant may discover (the platform's own APIs).
PLATFORM_NAMESPACE = "*"


class Mec011Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON, datetime: UtcDateTime}


class ServiceRow(Mec011Base):
    __tablename__ = "mec011_services"

    ser_instance_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    app_instance_id: Mapped[str] = mapped_column(String(253), index=True)
    namespace: Mapped[str] = mapped_column(String(253), index=True)
    body: Mapped[dict[str, Any]]
    etag: Mapped[str] = mapped_column(String(80))
    liveness_interval: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_heartbeat: Mapped[datetime | None] = mapped_column(nullable=True)
    updated_at: Mapped[datetime]


class SubscriptionRow(Mec011Base):
    __tablename__ = "mec011_subscriptions"

    subscription_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # "mgmt" (SerAvailabilityNotificationSubscription) or "support" (AppTermination…).
    api: Mapped[str] = mapped_column(String(16), index=True)
    app_instance_id: Mapped[str] = mapped_column(String(253), index=True)
    namespace: Mapped[str] = mapped_column(String(253))
    body: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class RuleRow(Mec011Base):
    """Traffic and DNS rules, seeded by the platform (MEO role) per application instance."""

    __tablename__ = "mec011_rules"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "traffic" | "dns"
    app_instance_id: Mapped[str] = mapped_column(String(253), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(253), primary_key=True)
    body: Mapped[dict[str, Any]]
    etag: Mapped[str] = mapped_column(String(80))
    updated_at: Mapped[datetime]


class AppStateRow(Mec011Base):
    """Readiness and termination of one application instance (confirm_ready/termination)."""

    __tablename__ = "mec011_app_states"

    app_instance_id: Mapped[str] = mapped_column(String(253), primary_key=True)
    ready_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Set by the platform when it notifies a termination/stop; cleared by the confirmation.
    pending_action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    termination_deadline: Mapped[datetime | None] = mapped_column(nullable=True)
    terminated_action: Mapped[str | None] = mapped_column(String(16), nullable=True)
    terminated_at: Mapped[datetime | None] = mapped_column(nullable=True)
