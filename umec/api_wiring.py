"""The resource APIs (MEC 011, sensor, camera, inference) behind the guard, wired into an app.

Their routers are module-level in ``mec_api``; :meth:`ResourceApis.install` sets what they read
on ``app.state`` (``guard``, ``mec011``, ``sensor``, ``camera``, ``inference``) and includes
them, so ``umec server`` and ``umec api`` each publish one OpenAPI document with every route
they serve. Their error model (problem+json; 400 for malformed requests, as MEC 011 specifies)
travels with the routers (``mec_api.problems.ProblemRoute``). Background work (MQTT ingestion,
retention purges, the MEC 011 liveness sweep and callbacks) starts and stops with the server.
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

from fastapi import APIRouter, FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from mec_api import mec011
from mec_api.mec011 import (
    CallbackNotifier,
    Mec011Options,
    Mec011Store,
    NotifierConfig,
    liveness_loop,
    mec011_state,
)
from mec_api.principal import RouteGuard
from mec_api.problems import handle_problems
from mec_api.sensor import api as sensor_api
from mec_api.sensor.deps import SensorContext
from mec_api.sensor.mqtt_ingest import BrokerAddress, MqttIngester
from mec_api.sensor.store import SqlSensorStore
from umec.http_limits import BodyRule
from umec.settings import Settings

log = logging.getLogger("umec.apis")


@dataclass
class ResourceApis:
    guard: RouteGuard
    routers: list[APIRouter] = field(default_factory=list)
    state: dict[str, object] = field(default_factory=dict)  # app.state names → collaborators
    sensor_store: SqlSensorStore | None = None
    ingester: MqttIngester | None = None
    background: list[Callable[[], Any]] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)
    async_closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def install(self, app: FastAPI) -> None:
        """Set ``app.state`` for the routers and include them (after the app's own routes)."""
        app.state.guard = self.guard
        for name, value in self.state.items():
            setattr(app.state, name, value)
        handle_problems(app)
        for router in self.routers:
            app.include_router(router)

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
    apis = ResourceApis(guard)
    if "sensor" in which:
        _sensor(apis, settings, engine)
    if "mec011" in which:
        _mec011(apis, settings, engine, public_url, token_endpoint)
    # OpenCV and onnxruntime load only where cameras or inference are configured.
    cameras = None
    if settings.cameras and ("camera" in which or "inference" in which):
        from mec_api.camera.sources import Cameras
        cameras = Cameras(settings.cameras)
        apis.closers.append(cameras.close)
        if "camera" in which:
            from mec_api.camera import api as camera_api
            apis.state["camera"] = cameras
            apis.routers.append(camera_api.router)
    if "inference" in which and settings.inference_enabled:
        _inference(apis, settings, cameras)
    return apis


def _inference(apis: ResourceApis, settings: Settings, cameras: Any) -> None:
    from mec_api.inference import api as inference_api
    from mec_api.inference.deps import InferenceContext
    from mec_api.inference.model import OnnxImageClassifier
    # Inference was asked for: a missing model fails the start, with instructions.
    classifier = OnnxImageClassifier.from_cache(
        settings.model_cache_dir or settings.data_dir / "models",
        threads=settings.inference_threads)
    apis.state["inference"] = InferenceContext.create(
        classifier, cameras, max_concurrency=settings.inference_max_concurrency,
        max_waiting=settings.inference_max_waiting)
    apis.routers.append(inference_api.router)


def _mec011(apis: ResourceApis, settings: Settings, engine: Engine, public_url: str,
            token_endpoint: str) -> None:
    store = Mec011Store.on(sessionmaker(engine, expire_on_commit=False))
    notifier = CallbackNotifier(NotifierConfig(
        attempts=settings.mec011_callback_attempts,
        timeout_s=settings.mec011_callback_timeout_seconds))
    state = mec011_state(store, token_endpoint, notifier,
                         Mec011Options(transport_uris=[public_url]))
    apis.state["mec011"] = state
    apis.routers.extend(mec011.ROUTERS)
    apis.async_closers.append(notifier.aclose)
    apis.background.append(lambda: liveness_loop(
        state, public_url, settings.mec011_liveness_sweep_seconds))


def _sensor(apis: ResourceApis, settings: Settings, engine: Engine) -> None:
    store = SqlSensorStore(engine, retention=timedelta(days=settings.sensor_retention_days))
    apis.state["sensor"] = SensorContext(store, max_body_bytes=settings.sensor_max_body_bytes)
    apis.routers.append(sensor_api.router)
    apis.sensor_store = store
    apis.background.append(_every(settings.sensor_purge_interval_seconds,
                                  lambda: store.purge(datetime.now(UTC)), "sensor purge"))
    if settings.sensor_mqtt_url:
        apis.ingester = MqttIngester(
            store, BrokerAddress.from_url(settings.sensor_mqtt_url),
            client_id=settings.sensor_mqtt_client_id or f"umec-sensor-{socket.gethostname()}",
            topic=settings.sensor_mqtt_topic, ca_file=settings.sensor_mqtt_ca_file)
