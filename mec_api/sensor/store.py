"""SQL storage of Ruuvi readings (SQLite and PostgreSQL): insert once, query, expire.

Writes are one ``INSERT … ON CONFLICT DO NOTHING`` per batch (both dialects have it), so a
redelivered advertisement costs no error and no second row; the per-tag summary is upserted in
the same transaction. Reads page by the key (measured_at, id), which is stable while new
readings arrive.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, and_, case, delete, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from mec_api.sensor.gateway import Observation
from mec_api.sensor.models import SensorReadingRow, SensorTagRow
from mec_api.sensor.ruuvi import RuuviReading, decode_rawv2

MAX_LIMIT = 1000


@dataclass(frozen=True)
class TagSummary:
    mac: str
    first_seen: datetime
    last_seen: datetime
    last_gateway_mac: str | None
    last_rssi: int | None


@dataclass(frozen=True)
class StoredReading:
    id: str
    tag_mac: str
    gateway_mac: str | None
    rssi: int | None
    measured_at: datetime
    received_at: datetime
    reading: RuuviReading


@dataclass(frozen=True)
class PageKey:
    """Position after the last reading of a page: readings strictly after it come next."""

    measured_at: datetime
    id: str


@dataclass(frozen=True)
class ReadingsPage:
    readings: list[StoredReading]
    next_key: PageKey | None  # None when the range holds no more readings


class SqlSensorStore:
    def __init__(self, engine: Engine, retention: timedelta = timedelta(days=30)) -> None:
        if retention <= timedelta(0):
            raise ValueError("sensor retention must be positive")
        self.engine, self.retention = engine, retention
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    def add(self, observations: Sequence[Observation]) -> int:
        """Store the observations; returns how many were new (the rest were duplicates)."""
        if not observations:
            return 0
        rows = [_row(o) for o in observations]
        readings = (self._insert(SensorReadingRow)
                    .on_conflict_do_nothing(index_elements=["tag_mac", "payload"])
                    .returning(SensorReadingRow.id))
        with self.engine.begin() as conn:
            stored = len(conn.execute(readings, rows).all())
            conn.execute(self._tag_upsert(), _tag_rows(observations))
        return stored

    def _tag_upsert(self) -> Any:
        stmt = self._insert(SensorTagRow)
        newer = stmt.excluded.last_seen > SensorTagRow.last_seen
        return stmt.on_conflict_do_update(index_elements=[SensorTagRow.mac], set_={
            # Redelivered backlogs arrive out of order: only a later reading moves last_seen.
            "first_seen": case((stmt.excluded.first_seen < SensorTagRow.first_seen,
                                stmt.excluded.first_seen), else_=SensorTagRow.first_seen),
            "last_seen": case((newer, stmt.excluded.last_seen), else_=SensorTagRow.last_seen),
            "last_gateway_mac": case((newer, stmt.excluded.last_gateway_mac),
                                     else_=SensorTagRow.last_gateway_mac),
            "last_rssi": case((newer, stmt.excluded.last_rssi), else_=SensorTagRow.last_rssi),
        })

    def tags(self) -> list[TagSummary]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(SensorTagRow.__table__).order_by(SensorTagRow.mac))
            return [TagSummary(r.mac, r.first_seen, r.last_seen, r.last_gateway_mac, r.last_rssi)
                    for r in rows]

    def latest(self, mac: str) -> StoredReading | None:
        query = (select(SensorReadingRow.__table__).where(SensorReadingRow.tag_mac == mac)
                 .order_by(SensorReadingRow.measured_at.desc(), SensorReadingRow.id.desc())
                 .limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _stored(row)

    def readings(self, mac: str, since: datetime, until: datetime, limit: int,
                 after: PageKey | None = None) -> ReadingsPage:
        """Readings of one tag with ``since <= measured_at < until``, oldest first."""
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        table = SensorReadingRow
        query = select(table.__table__).where(table.tag_mac == mac, table.measured_at >= since,
                                    table.measured_at < until)
        if after is not None:
            query = query.where(or_(
                table.measured_at > after.measured_at,
                and_(table.measured_at == after.measured_at, table.id > after.id)))
        query = query.order_by(table.measured_at, table.id).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        page = [_stored(r) for r in rows[:limit]]
        more = len(rows) > limit
        next_key = PageKey(page[-1].measured_at, page[-1].id) if more else None
        return ReadingsPage(page, next_key)

    def purge(self, now: datetime) -> int:
        """Delete readings measured before ``now - retention`` and tags not seen since then.
        The server calls it periodically; returns the number of readings deleted."""
        cutoff = now - self.retention
        with self.engine.begin() as conn:
            deleted = conn.execute(delete(SensorReadingRow)
                                   .where(SensorReadingRow.measured_at < cutoff)).rowcount
            conn.execute(delete(SensorTagRow).where(SensorTagRow.last_seen < cutoff))
        return int(deleted or 0)


def _row(o: Observation) -> dict[str, object]:
    r = o.reading
    return {
        "id": str(uuid.uuid4()), "tag_mac": o.tag_mac, "gateway_mac": o.gateway_mac,
        "rssi": o.rssi, "measured_at": o.measured_at, "received_at": o.received_at,
        "payload": o.payload.hex().upper(), "measurement_sequence": r.measurement_sequence,
        "temperature_c": r.temperature_c, "humidity_pct": r.humidity_pct,
        "pressure_pa": r.pressure_pa, "acceleration_x_g": r.acceleration_x_g,
        "acceleration_y_g": r.acceleration_y_g, "acceleration_z_g": r.acceleration_z_g,
        "tx_power_dbm": r.tx_power_dbm, "battery_v": r.battery_v,
        "movement_counter": r.movement_counter,
    }


def _tag_rows(observations: Sequence[Observation]) -> list[dict[str, object]]:
    # One row per tag: PostgreSQL refuses to update the same row twice in one statement.
    first: dict[str, datetime] = {}
    last: dict[str, Observation] = {}
    for o in observations:
        first[o.tag_mac] = min(first.get(o.tag_mac, o.measured_at), o.measured_at)
        if o.tag_mac not in last or o.measured_at > last[o.tag_mac].measured_at:
            last[o.tag_mac] = o
    return [{"mac": mac, "first_seen": first[mac], "last_seen": o.measured_at,
             "last_gateway_mac": o.gateway_mac, "last_rssi": o.rssi} for mac, o in last.items()]


def _stored(row: Row[Any]) -> StoredReading:
    # The decoded columns exist for querying; the reading itself comes from the stored payload,
    # so what an app reads is exactly what the tag sent.
    reading = decode_rawv2(bytes.fromhex(row.payload))
    return StoredReading(row.id, row.tag_mac, row.gateway_mac, row.rssi, row.measured_at,
                         row.received_at, reading)
