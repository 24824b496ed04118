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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from mec_api.mec011 import (
    CallbackNotifier,
    Mec011Options,
    Mec011Store,
    NotifierConfig,
    announce_change,
    build_mec011_routers,
)
from mec_api.principal import RouteGuard
from mec_api.problems import install_problem_handlers
from mec_api.sensor.api import build_sensor_router
from mec_api.sensor.mqtt_ingest import BrokerAddress, MqttIngester
from mec_api.sensor.store import SqlSensorStore
from umec.http_limits import BodyRule, install_error_handlers
from umec.settings import Settings

log = logging.getLogger("umec.apis")


@dataclass
class ResourceApis:
    app: FastAPI
    sensor_store: SqlSensorStore | None = None
    ingester: MqttIngester | None = None
    background: list[Callable[[], Any]] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)
    async_closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

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
            for close in self.closers:
                await asyncio.to_thread(close)
            for aclose in self.async_closers:
                await aclose()


def _every(seconds: float, work: Callable[[], Any], what: str) -> Callable[[], Any]:
    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await asyncio.to_thread(work)
            except Exception as e:  # keep the loop alive; the next round retries
                log.warning("%s failed: %s", what, type(e).__name__)
    return loop


API_NAMES = ("sensor", "mec011", "camera", "inference")


INFERENCE_MAX_IMAGE_BYTES = 20 * 1024 * 1024  # mec_api.inference.image.ImageLimits.max_bytes
INFERENCE_BODY_SECONDS = 60.0  # a 20 MiB image over a slow edge uplink


def resource_body_rules(settings: Settings) -> tuple[BodyRule, ...]:
    """Request-body limits of the resource APIs (other routes take the 1 MiB default).

    The inference limit is the classifier's own image limit (not imported: that module loads
    OpenCV), which the route checks again while it streams."""
    return (BodyRule("/sensor/v1/", settings.sensor_max_body_bytes),
            BodyRule("/inference/v1/", INFERENCE_MAX_IMAGE_BYTES, INFERENCE_BODY_SECONDS))


def build_resource_apis(settings: Settings, engine: Engine, guard: RouteGuard, *,
                        public_url: str, token_endpoint: str,
                        which: Sequence[str] = API_NAMES) -> ResourceApis:
    unknown = set(which) - set(API_NAMES)
    if unknown:
        raise ValueError(f"unknown APIs {sorted(unknown)}; choose from {API_NAMES}")
    app = FastAPI(title="µMEC APIs", version="0.1.0")
    install_problem_handlers(app)  # ProblemError; the framework's own errors are typed below
    install_error_handlers(app, validation_status=400)  # MEC 011: malformed requests are 400
    apis = ResourceApis(app)
    if "sensor" in which:
        _sensor(apis, settings, engine, guard)
    if "mec011" in which:
        _mec011(apis, settings, engine, guard, public_url, token_endpoint)
    # OpenCV and onnxruntime load only where cameras or inference are configured.
    cameras = None
    if settings.cameras and ("camera" in which or "inference" in which):
        from mec_api.camera.api import build_camera_router
        from mec_api.camera.sources import Cameras
        cameras = Cameras(settings.cameras)
        apis.closers.append(cameras.close)
        if "camera" in which:
            app.include_router(build_camera_router(cameras, guard))
    if "inference" in which and settings.inference_enabled:
        from mec_api.inference.api import build_inference_router
        from mec_api.inference.model import OnnxImageClassifier
        # Inference was asked for: a missing model fails the start, with instructions.
        classifier = OnnxImageClassifier.from_cache(
            settings.model_cache_dir or settings.data_dir / "models",
            threads=settings.inference_threads)
        app.include_router(build_inference_router(
            classifier, cameras, guard, max_concurrency=settings.inference_max_concurrency,
            max_waiting=settings.inference_max_waiting))
    return apis


def _mec011(apis: ResourceApis, settings: Settings, engine: Engine, guard: RouteGuard,
            public_url: str, token_endpoint: str) -> None:
    store = Mec011Store.on(sessionmaker(engine, expire_on_commit=False))
    notifier = CallbackNotifier(NotifierConfig(
        attempts=settings.mec011_callback_attempts,
        timeout_s=settings.mec011_callback_timeout_seconds))
    for router in build_mec011_routers(store, guard, token_endpoint, notifier,
                                       Mec011Options(transport_uris=[public_url])):
        apis.app.include_router(router)
    apis.async_closers.append(notifier.aclose)
    # Heartbeats: services that miss two intervals go INACTIVE and their subscribers hear of
    # it (the UPDATE is conditional, so only the replica that made a change announces it).
    async def sweep() -> None:
        while True:
            await asyncio.sleep(settings.mec011_liveness_sweep_seconds)
            try:
                changes = await asyncio.to_thread(store.registry.expire_liveness,
                                                  datetime.now(UTC))
                for change in changes:
                    await announce_change(store.registry, notifier, public_url, change)
            except Exception as e:  # the next sweep retries
                log.warning("MEC 011 liveness sweep failed: %s", type(e).__name__)
    apis.background.append(sweep)


def _sensor(apis: ResourceApis, settings: Settings, engine: Engine, guard: RouteGuard) -> None:
    store = SqlSensorStore(engine, retention=timedelta(days=settings.sensor_retention_days))
    apis.app.include_router(build_sensor_router(store, guard,
                                                max_body_bytes=settings.sensor_max_body_bytes))
    apis.sensor_store = store
    apis.background.append(_every(settings.sensor_purge_interval_seconds,
                                  lambda: store.purge(datetime.now(UTC)), "sensor purge"))
    if settings.sensor_mqtt_url:
        apis.ingester = MqttIngester(
            store, BrokerAddress.from_url(settings.sensor_mqtt_url),
            client_id=settings.sensor_mqtt_client_id or f"umec-sensor-{socket.gethostname()}",
            topic=settings.sensor_mqtt_topic, ca_file=settings.sensor_mqtt_ca_file)
