"""SQL tables of the sensor API: readings per Ruuvi tag, and one summary row per tag.

``sensor_readings`` is unique on (tag MAC, RAWv2 payload): the payload holds the measurement
sequence number, so a QoS-1 redelivery, the same advertisement heard by a second gateway, or a
repeated broadcast of one measurement is stored once. The sequence alone is not the key: it wraps
after 65535 measurements (about a day at the default interval), within the retention period.
``sensor_tags`` keeps the last-seen time per tag so that listing tags does not scan every reading.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kernel.sql_types import UtcDateTime


class SensorBase(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime}


class SensorReadingRow(SensorBase):
    __tablename__ = "sensor_readings"
    __table_args__ = (
        UniqueConstraint("tag_mac", "payload", name="uq_sensor_readings_tag_payload"),
        # Latest reading and time-range queries per tag; the id breaks ties for paging.
        Index("ix_sensor_readings_tag_time", "tag_mac", "measured_at", "id"),
        # Retention deletes across every tag by age.
        Index("ix_sensor_readings_measured_at", "measured_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tag_mac: Mapped[str] = mapped_column(String(17))
    gateway_mac: Mapped[str | None] = mapped_column(String(17))
    rssi: Mapped[int | None] = mapped_column(Integer)
    measured_at: Mapped[datetime]
    received_at: Mapped[datetime]
    payload: Mapped[str] = mapped_column(String(48))  # RAWv2 payload, upper-case hex
    measurement_sequence: Mapped[int | None] = mapped_column(Integer)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    humidity_pct: Mapped[float | None] = mapped_column(Float)
    pressure_pa: Mapped[int | None] = mapped_column(Integer)
    acceleration_x_g: Mapped[float | None] = mapped_column(Float)
    acceleration_y_g: Mapped[float | None] = mapped_column(Float)
    acceleration_z_g: Mapped[float | None] = mapped_column(Float)
    tx_power_dbm: Mapped[int | None] = mapped_column(Integer)
    battery_v: Mapped[float | None] = mapped_column(Float)
    movement_counter: Mapped[int | None] = mapped_column(Integer)


class SensorTagRow(SensorBase):
    __tablename__ = "sensor_tags"

    mac: Mapped[str] = mapped_column(String(17), primary_key=True)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime] = mapped_column(index=True)
    last_gateway_mac: Mapped[str | None] = mapped_column(String(17))
    last_rssi: Mapped[int | None] = mapped_column(Integer)
