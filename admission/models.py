"""SQL record of what the webhook admitted (the token service relies on it).

One row per admitted pod UID: every container path with the image reference it was admitted
under, the pinned digest and the keys that signed it. ``verified`` is false for images allowed in
``warn`` mode or by a ``noMatch: allow`` rule, so that a consumer can insist on verified images.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, DateTime, Dialect, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class _UtcDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime stored: use datetime.now(UTC)")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class AdmissionBase(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        list[Any]: JSON, datetime: _UtcDateTime}


class AdmittedPodRow(AdmissionBase):
    __tablename__ = "admission_pods"
    __table_args__ = (UniqueConstraint("uid", name="uq_admission_pods_uid"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(253), index=True)
    name: Mapped[str] = mapped_column(String(253))
    uid: Mapped[str] = mapped_column(String(64))
    # [{"path": "spec.containers[0]", "image": "...", "digest": "sha256:…", "signers": [kid…]}]
    images: Mapped[list[Any]]
    verified: Mapped[bool] = mapped_column(Boolean)
    policy_generation: Mapped[str] = mapped_column(String(64))
    admitted_at: Mapped[datetime]
