"""HTTP routes of the sensor API ``/sensor/v1``: tags, latest reading, history, gateway POST.

Sensors are site-wide, not per tenant: reading needs only the ``sensor.read`` scope. The Ruuvi
Gateway posts with a token holding ``sensor.ingest``. Errors are problem+json.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from kernel.offload import in_thread
from mec_api.problems import ProblemError, ProblemRoute
from mec_api.sensor.deps import Ingester, Reader, Sensor
from mec_api.sensor.gateway import GatewayMessageError, normalize_mac, parse_gateway_post
from mec_api.sensor.store import MAX_LIMIT, PageKey, StoredReading, TagSummary

SOURCE = "http"
DEFAULT_LIMIT = 100
DEFAULT_WINDOW = timedelta(days=1)
router = APIRouter(prefix="/sensor/v1", tags=["sensor"], route_class=ProblemRoute)
_UNIX_TIME: dict[str, Any] = {"type": ["string", "integer", "number"],
                              "description": "the gateway's Unix time of reception"}
_TAG: dict[str, Any] = {"type": "object", "required": ["data"], "properties": {
    "rssi": {"type": "integer"}, "timestamp": _UNIX_TIME,
    "data": {"type": "string",
             "description": "the BLE advertisement in hex (Ruuvi data format 5)"}}}
_GATEWAY_DATA: dict[str, Any] = {"type": "object", "required": ["tags"], "properties": {
    "coordinates": {"type": "string"}, "timestamp": _UNIX_TIME,
    "gw_mac": {"type": "string", "examples": ["C8:25:2D:8E:9C:2C"]},
    "tags": {"type": "object", "description": "by tag MAC, e.g. CB:B8:33:4C:88:4F",
             "additionalProperties": _TAG}}}
# The Ruuvi Gateway's HTTP POST format, for the OpenAPI document only: the route parses the body
# itself, so that one undecodable tag is counted in ``dropped`` instead of refusing the others.
GATEWAY_POST_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["data"],
                                    "properties": {"data": _GATEWAY_DATA}}}}}}


class ReadingOut(BaseModel):
    tag_mac: str
    gateway_mac: str | None
    rssi: int | None
    measured_at: datetime
    received_at: datetime
    data_format: int
    temperature_c: float | None
    humidity_pct: float | None
    pressure_pa: int | None
    acceleration_x_g: float | None
    acceleration_y_g: float | None
    acceleration_z_g: float | None
    tx_power_dbm: int | None
    battery_v: float | None
    movement_counter: int | None
    measurement_sequence: int | None

    @classmethod
    def of(cls, stored: StoredReading) -> ReadingOut:
        r = stored.reading
        return cls(
            tag_mac=stored.tag_mac, gateway_mac=stored.gateway_mac, rssi=stored.rssi,
            measured_at=stored.measured_at, received_at=stored.received_at,
            data_format=r.data_format, temperature_c=r.temperature_c,
            humidity_pct=r.humidity_pct, pressure_pa=r.pressure_pa,
            acceleration_x_g=r.acceleration_x_g, acceleration_y_g=r.acceleration_y_g,
            acceleration_z_g=r.acceleration_z_g, tx_power_dbm=r.tx_power_dbm,
            battery_v=r.battery_v, movement_counter=r.movement_counter,
            measurement_sequence=r.measurement_sequence)


class TagOut(BaseModel):
    mac: str
    first_seen: datetime
    last_seen: datetime
    last_gateway_mac: str | None
    last_rssi: int | None

    @classmethod
    def of(cls, tag: TagSummary) -> TagOut:
        return cls(mac=tag.mac, first_seen=tag.first_seen, last_seen=tag.last_seen,
                   last_gateway_mac=tag.last_gateway_mac, last_rssi=tag.last_rssi)


class TagsOut(BaseModel):
    tags: list[TagOut]


class ReadingsOut(BaseModel):
    mac: str
    since: datetime
    until: datetime
    readings: list[ReadingOut]
    # Pass as ``cursor`` with the same since/until for the next page; null on the last page.
    next_cursor: str | None


class IngestOut(BaseModel):
    received: int
    stored: int
    duplicates: int
    dropped: dict[str, int]


def _bad_request(detail: str) -> ProblemError:
    return ProblemError(400, "Bad Request", detail)


def _mac(value: str) -> str:
    try:
        return normalize_mac(value)
    except GatewayMessageError as exc:
        raise _bad_request(str(exc)) from exc


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise _bad_request(f"{name} has no time zone: give it as ISO 8601 with Z or +hh:mm")
    return value


def encode_cursor(key: PageKey) -> str:
    text = f"{key.measured_at.isoformat()}|{key.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> PageKey:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, row_id = text.partition("|")
        measured_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise _bad_request("cursor is not one this API issued: pass next_cursor unchanged, "
                           "or leave it out to start from 'since'") from exc
    if measured_at.tzinfo is None or not row_id:
        raise _bad_request("cursor is not one this API issued: pass next_cursor unchanged")
    return PageKey(measured_at, row_id)


async def _read_bounded(request: Request, limit: int) -> bytes:
    too_large = ProblemError(413, "Payload Too Large",
                             f"the gateway body exceeds {limit} bytes: post fewer tags at once")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _unavailable(exc: SQLAlchemyError) -> ProblemError:
    return ProblemError(503, "Service Unavailable",
                        "the sensor database is unavailable; retry later",
                        headers={"Retry-After": "5"})


@router.get("/tags", response_model=TagsOut)
async def list_tags(_caller: Reader, ctx: Sensor) -> TagsOut:
    try:
        tags = await in_thread(ctx.store.tags)
    except SQLAlchemyError as exc:
        raise _unavailable(exc) from exc
    return TagsOut(tags=[TagOut.of(t) for t in tags])


@router.get("/tags/{mac}/latest", response_model=ReadingOut)
async def latest_reading(mac: str, _caller: Reader, ctx: Sensor) -> ReadingOut:
    tag = _mac(mac)
    try:
        stored = await in_thread(ctx.store.latest, tag)
    except SQLAlchemyError as exc:
        raise _unavailable(exc) from exc
    if stored is None:
        raise ProblemError(404, "Not Found", f"no reading of tag {tag} is stored; "
                                             "GET /sensor/v1/tags lists the tags seen")
    return ReadingOut.of(stored)


@router.get("/tags/{mac}/readings", response_model=ReadingsOut)
async def readings(
    mac: str,
    _caller: Reader,
    ctx: Sensor,
    since: datetime | None = Query(None, description="inclusive; default until - 1 day"),
    until: datetime | None = Query(None, description="exclusive; default now"),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
    cursor: str | None = Query(None, max_length=256),
) -> ReadingsOut:
    tag = _mac(mac)
    end = _aware(until, "until") or ctx.clock()
    start = _aware(since, "since") or end - DEFAULT_WINDOW
    if start >= end:
        raise _bad_request(f"since ({start.isoformat()}) must be before until "
                           f"({end.isoformat()})")
    after = decode_cursor(cursor) if cursor is not None else None
    try:
        page = await in_thread(ctx.store.readings, tag, start, end, limit, after)
    except SQLAlchemyError as exc:
        raise _unavailable(exc) from exc
    return ReadingsOut(
        mac=tag, since=start, until=end, readings=[ReadingOut.of(r) for r in page.readings],
        next_cursor=None if page.next_key is None else encode_cursor(page.next_key))


@router.post("/gateway", response_model=IngestOut, openapi_extra=GATEWAY_POST_BODY)
async def gateway_post(request: Request, _caller: Ingester, ctx: Sensor) -> IngestOut:
    counters = ctx.metrics
    raw = await _read_bounded(request, ctx.max_body_bytes)
    try:
        post = parse_gateway_post(json.loads(raw), ctx.clock())
    except (ValueError, RecursionError) as exc:  # JSON, UTF-8, nesting, shape or MAC
        reason = exc.reason if isinstance(exc, GatewayMessageError) else "not_json"
        counters.drop(SOURCE, reason)
        raise _bad_request(f"not a Ruuvi Gateway HTTP POST body: {exc}") from exc
    received = len(post.observations) + sum(post.dropped.values())
    counters.received.labels(source=SOURCE).inc(received)
    for reason, count in post.dropped.items():
        counters.drop(SOURCE, reason, count)
    try:
        stored = await in_thread(ctx.store.add, post.observations)
    except SQLAlchemyError as exc:
        counters.drop(SOURCE, "store_error", len(post.observations))
        raise _unavailable(exc) from exc
    duplicates = len(post.observations) - stored
    counters.stored.labels(source=SOURCE).inc(stored)
    counters.duplicates.labels(source=SOURCE).inc(duplicates)
    return IngestOut(received=received, stored=stored, duplicates=duplicates,
                     dropped=post.dropped)
