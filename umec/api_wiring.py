"""The resource APIs (MEC 011, sensor, camera, inference) behind the guard, as one ASGI app.

They share the mec_api error model (problem+json, 400 for malformed requests as MEC 011
specifies), so they live in their own FastAPI app with those handlers, mounted by ``umec server``
after its own routes. Background work (MQTT ingestion, retention purges, MEC 011 callbacks)
starts and stops with the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine

from mec_api.principal import RouteGuard
from mec_api.problems import install_problem_handlers
from mec_api.sensor.api import build_sensor_router
from mec_api.sensor.mqtt_ingest import BrokerAddress, MqttIngester
from mec_api.sensor.store import SqlSensorStore
from umec.settings import Settings

log = logging.getLogger("umec.apis")


@dataclass
class ResourceApis:
    app: FastAPI
    sensor_store: SqlSensorStore
    ingester: MqttIngester | None = None
    background: list[Callable[[], Any]] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(start()) for start in self.background]
        if self.ingester is not None:
            self.ingester.start()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.ingester is not None:
                await asyncio.to_thread(self.ingester.stop)


def _every(seconds: float, work: Callable[[], Any], what: str) -> Callable[[], Any]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(work)
            except Exception as e:  # keep the loop alive; the next round retries
                log.warning("%s failed: %s", what, type(e).__name__)
    return loop


def build_resource_apis(settings: Settings, engine: Engine, guard: RouteGuard) -> ResourceApis:
    app = FastAPI(title="µMEC APIs", version="0.1.0")
    install_problem_handlers(app)
    store = SqlSensorStore(engine, retention=timedelta(days=settings.sensor_retention_days))
    app.include_router(build_sensor_router(store, guard,
                                           max_body_bytes=settings.sensor_max_body_bytes))
    apis = ResourceApis(app, store)
    apis.background.append(_every(settings.sensor_purge_interval_seconds,
                                  lambda: store.purge(datetime.now(UTC)), "sensor purge"))
    if settings.sensor_mqtt_url:
        apis.ingester = MqttIngester(
            store, BrokerAddress.from_url(settings.sensor_mqtt_url),
            client_id=settings.sensor_mqtt_client_id or f"umec-sensor-{socket.gethostname()}",
            topic=settings.sensor_mqtt_topic, ca_file=settings.sensor_mqtt_ca_file)
    return apis
