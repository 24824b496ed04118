"""Sensor store on SQLite and PostgreSQL, on a schema built by the Alembic migrations."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from mec_api.sensor.gateway import Observation
from mec_api.sensor.models import SensorBase, SensorReadingRow
from mec_api.sensor.ruuvi import decode_rawv2
from mec_api.sensor.store import PageKey, SqlSensorStore
from umec.db import open_database

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TAG_A = "CB:B8:33:4C:88:4F"
TAG_B = "D2:A3:6E:C8:E0:25"
OTHER_GW = "AA:00:00:00:00:01"


def payload(mac: str, sequence: int | None, temperature: int = 4860) -> bytes:
    return (struct.pack(">BhHHhhhHBH", 5, temperature, 21396, 50044, 4, -4, 1036,
                        (1377 << 5) | 22, 66, 0xFFFF if sequence is None else sequence)
            + bytes.fromhex(mac.replace(":", "")))


def observation(mac: str, sequence: int | None, at: datetime, *,
                gateway: str = "C8:25:2D:8E:9C:2C", rssi: int = -60,
                temperature: int = 4860) -> Observation:
    raw = payload(mac, sequence, temperature)
    return Observation(tag_mac=mac, gateway_mac=gateway, rssi=rssi, measured_at=at,
                       received_at=at + timedelta(seconds=1), payload=raw,
                       reading=decode_rawv2(raw))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'umec.db'}"
    else:
        url = request.getfixturevalue("pg_database")  # a fresh database, dropped afterwards
    engine, _ = open_database(url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> SqlSensorStore:
    return SqlSensorStore(engine, retention=timedelta(days=7))


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(SensorReadingRow)).scalar_one())


def test_redelivery_and_other_gateways_store_a_measurement_once(store: SqlSensorStore,
                                                                 engine: Engine) -> None:
    first = observation(TAG_A, 205, NOW)
    assert store.add([first]) == 1
    assert store.add([first]) == 0  # QoS-1 redelivery
    heard_elsewhere = observation(TAG_A, 205, NOW + timedelta(seconds=1), gateway=OTHER_GW)
    assert store.add([heard_elsewhere, first]) == 0
    assert count_rows(engine) == 1
    # Same sequence after the counter wrapped, with other values: a new measurement.
    assert store.add([observation(TAG_A, 205, NOW + timedelta(days=1), temperature=5000)]) == 1
    # No sequence available: an exact redelivery is still recognised.
    no_sequence = observation(TAG_B, None, NOW)
    assert store.add([no_sequence, no_sequence]) == 1
    assert count_rows(engine) == 3


def test_stored_reading_is_what_the_tag_sent(store: SqlSensorStore) -> None:
    o = observation(TAG_A, 205, NOW)
    store.add([o])
    latest = store.latest(TAG_A)
    assert latest is not None
    assert latest.reading == o.reading
    assert (latest.tag_mac, latest.gateway_mac, latest.rssi) == (TAG_A, o.gateway_mac, -60)
    assert latest.measured_at == NOW and latest.measured_at.tzinfo is not None
    assert latest.received_at == NOW + timedelta(seconds=1)


def test_tags_with_last_seen_even_when_readings_arrive_out_of_order(store: SqlSensorStore) -> None:
    assert store.tags() == []
    store.add([observation(TAG_A, 10, NOW, rssi=-50),
               observation(TAG_A, 11, NOW + timedelta(minutes=1), rssi=-51),
               observation(TAG_B, 1, NOW)])
    # A backlog the broker kept arrives later: older readings must not move last_seen back.
    store.add([observation(TAG_A, 5, NOW - timedelta(hours=1), gateway=OTHER_GW, rssi=-90)])
    tags = {t.mac: t for t in store.tags()}
    assert list(tags) == [TAG_A, TAG_B]
    a = tags[TAG_A]
    assert a.first_seen == NOW - timedelta(hours=1)
    assert a.last_seen == NOW + timedelta(minutes=1)
    assert (a.last_gateway_mac, a.last_rssi) == ("C8:25:2D:8E:9C:2C", -51)


def test_latest_reading_per_tag(store: SqlSensorStore) -> None:
    assert store.latest(TAG_A) is None
    store.add([observation(TAG_A, s, NOW + timedelta(seconds=s)) for s in (3, 1, 2)])
    store.add([observation(TAG_B, 9, NOW + timedelta(hours=1))])
    latest = store.latest(TAG_A)
    assert latest is not None and latest.reading.measurement_sequence == 3


def test_time_range_bounds_and_limit(store: SqlSensorStore) -> None:
    store.add([observation(TAG_A, s, NOW + timedelta(minutes=s)) for s in range(10)])
    store.add([observation(TAG_B, 1, NOW + timedelta(minutes=3))])
    page = store.readings(TAG_A, NOW + timedelta(minutes=2), NOW + timedelta(minutes=6), limit=10)
    assert [r.reading.measurement_sequence for r in page.readings] == [2, 3, 4, 5]  # until excluded
    assert page.next_key is None
    page = store.readings(TAG_A, NOW, NOW + timedelta(hours=1), limit=3)
    assert [r.reading.measurement_sequence for r in page.readings] == [0, 1, 2]
    assert page.next_key == PageKey(page.readings[-1].measured_at, page.readings[-1].id)
    # Query bounds in another time zone mean the same instants.
    cest = timezone(timedelta(hours=2))
    page = store.readings(TAG_A, (NOW + timedelta(minutes=8)).astimezone(cest),
                          (NOW + timedelta(hours=1)).astimezone(cest), limit=10)
    assert [r.reading.measurement_sequence for r in page.readings] == [8, 9]
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="limit"):
            store.readings(TAG_A, NOW, NOW + timedelta(hours=1), limit=bad)


def test_paging_visits_every_reading_once_even_with_equal_times(store: SqlSensorStore) -> None:
    # Gateway timestamps have one-second resolution: several readings share one instant.
    store.add([observation(TAG_A, s, NOW + timedelta(seconds=s // 4)) for s in range(23)])
    seen: list[int | None] = []
    after = None
    while True:
        page = store.readings(TAG_A, NOW, NOW + timedelta(hours=1), limit=5, after=after)
        seen += [r.reading.measurement_sequence for r in page.readings]
        if page.next_key is None:
            break
        after = page.next_key
    assert sorted(s for s in seen if s is not None) == list(range(23)) and len(seen) == 23


def test_retention_deletes_old_readings_and_forgotten_tags(store: SqlSensorStore,
                                                           engine: Engine) -> None:
    store.add([observation(TAG_A, 1, NOW - timedelta(days=8)),
               observation(TAG_A, 2, NOW - timedelta(days=6)),
               observation(TAG_B, 1, NOW - timedelta(days=9))])
    assert store.purge(NOW) == 2
    assert count_rows(engine) == 1
    assert [t.mac for t in store.tags()] == [TAG_A]
    assert store.purge(NOW) == 0
    assert store.purge(NOW + timedelta(days=2)) == 1
    assert store.tags() == []


def test_retention_must_be_positive(engine: Engine) -> None:
    with pytest.raises(ValueError):
        SqlSensorStore(engine, retention=timedelta(0))


def test_naive_times_are_refused(store: SqlSensorStore) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        store.add([observation(TAG_A, 1, NOW.replace(tzinfo=None))])


def test_migration_matches_the_models(engine: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SensorBase.metadata)
    ours = [d for d in diff if "sensor_" in repr(d)]
    assert ours == []
