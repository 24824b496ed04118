"""What the sensor routes need, as ``app.state.sensor``, and their typed dependencies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request

from mec_api import scopes
from mec_api.deps import app_state, requires
from mec_api.principal import Principal
from mec_api.sensor.metrics import SensorMetrics, default_metrics
from mec_api.sensor.store import SqlSensorStore

DEFAULT_MAX_BODY = 256 * 1024  # a gateway with ~100 tags posts ~25 KiB


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class SensorContext:
    store: SqlSensorStore
    metrics: SensorMetrics = field(default_factory=default_metrics)
    max_body_bytes: int = DEFAULT_MAX_BODY
    clock: Callable[[], datetime] = utc_now


async def sensor_context(request: Request) -> SensorContext:
    return app_state(request, "sensor", SensorContext)


Sensor = Annotated[SensorContext, Depends(sensor_context)]
Reader = Annotated[Principal, Depends(requires(scopes.SENSOR_READ))]
Ingester = Annotated[Principal, Depends(requires(scopes.SENSOR_INGEST))]
