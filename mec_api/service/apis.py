"""The resource APIs (MEC 011, sensor, camera, inference) behind the guard, as parts of the
mec_api service: each adds its module-level router(s), what they read on ``app.state``
(``mec011``, ``sensor``, ``camera``, ``inference``), its background work (the MEC 011 liveness
sweep, the sensor retention purge, MQTT ingestion) and what must be closed.

OpenCV and onnxruntime are imported only where cameras or inference are configured.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from kernel.periodic import PeriodicTask
from kernel.service import Service
from mec_api import mec011
from mec_api.camera.config import CameraConfig
from mec_api.mec011 import (
    CallbackNotifier,
    Mec011Options,
    Mec011Store,
    NotifierConfig,
    mec011_state,
    sweep_liveness,
)
from mec_api.sensor import api as sensor_api
from mec_api.sensor.deps import SensorContext
from mec_api.sensor.mqtt_ingest import BrokerAddress, MqttIngester
from mec_api.sensor.store import SqlSensorStore

API_NAMES = ("sensor", "mec011", "camera", "inference")


class UnknownApi(ValueError):
    pass


@dataclass
class SensorConfig:
    retention_days: float = 30.0
    purge_interval_seconds: float = 3600.0
    max_body_bytes: int = 262144
    mqtt_url: str = ""                     # MQTT ingestion when set
    mqtt_topic: str = "ruuvi/+/+"
    mqtt_client_id: str = ""               # default umec-sensor-<hostname>
    mqtt_ca_file: str | None = None


@dataclass
class Mec011Config:
    callback_attempts: int = 3
    callback_timeout_seconds: float = 2.0
    liveness_sweep_seconds: float = 5.0


@dataclass
class InferenceConfig:
    enabled: bool = False
    model_cache_dir: Path = Path(".umec/models")   # the ONNX export
    threads: int = 2
    max_concurrency: int = 2
    max_waiting: int = 8


@dataclass
class ApisConfig:
    which: Sequence[str] = API_NAMES
    public_url: str = ""                   # MEC 011's transport URI
    token_endpoint: str = ""               # MEC 011's OAuth 2.0 token endpoint
    sensor: SensorConfig = field(default_factory=SensorConfig)
    mec011: Mec011Config = field(default_factory=Mec011Config)
    cameras: Sequence[CameraConfig] = ()
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def add_resource_apis(service: Service[Any], config: ApisConfig, engine: Engine) -> None:
    """Add the APIs ``config.which`` names to ``service``."""
    unknown = set(config.which) - set(API_NAMES)
    if unknown:
        raise UnknownApi(f"unknown APIs {sorted(unknown)}; choose from {API_NAMES}")
    if "sensor" in config.which:
        _sensor(service, config.sensor, engine)
    if "mec011" in config.which:
        _mec011(service, config, engine)
    cameras = None
    if config.cameras and ("camera" in config.which or "inference" in config.which):
        from mec_api.camera.sources import Cameras
        cameras = Cameras(list(config.cameras))
        service.on_close.append(functools.partial(asyncio.to_thread, cameras.close))
        if "camera" in config.which:
            from mec_api.camera import api as camera_api
            service.state["camera"] = cameras
            service.routers.append(camera_api.router)
    if "inference" in config.which and config.inference.enabled:
        _inference(service, config.inference, cameras)


def _inference(service: Service[Any], config: InferenceConfig, cameras: Any) -> None:
    from mec_api.inference import api as inference_api
    from mec_api.inference.deps import InferenceContext
    from mec_api.inference.model import OnnxImageClassifier
    # Inference was asked for: a missing model fails the start, with instructions.
    classifier = OnnxImageClassifier.from_cache(config.model_cache_dir, threads=config.threads)
    service.state["inference"] = InferenceContext.create(
        classifier, cameras, max_concurrency=config.max_concurrency,
        max_waiting=config.max_waiting)
    service.routers.append(inference_api.router)


def _mec011(service: Service[Any], config: ApisConfig, engine: Engine) -> None:
    options = config.mec011
    store = Mec011Store.on(sessionmaker(engine, expire_on_commit=False))
    notifier = CallbackNotifier(NotifierConfig(attempts=options.callback_attempts,
                                               timeout_s=options.callback_timeout_seconds))
    state = mec011_state(store, config.token_endpoint, notifier,
                         Mec011Options(transport_uris=[config.public_url]))
    service.state["mec011"] = state
    service.routers.extend(mec011.ROUTERS)
    service.on_close.append(notifier.aclose)
    sweep = PeriodicTask("MEC 011 liveness sweep", options.liveness_sweep_seconds,
                         functools.partial(sweep_liveness, state, config.public_url),
                         delay_first=True)
    service.background.append(sweep.run)


def _sensor(service: Service[Any], config: SensorConfig, engine: Engine) -> None:
    store = SqlSensorStore(engine, retention=timedelta(days=config.retention_days))
    service.state["sensor"] = SensorContext(store, max_body_bytes=config.max_body_bytes)
    service.routers.append(sensor_api.router)
    purge = PeriodicTask("sensor purge", config.purge_interval_seconds,
                         lambda: store.purge(datetime.now(UTC)), delay_first=True)
    service.background.append(purge.run)
    if config.mqtt_url:
        ingester = MqttIngester(
            store, BrokerAddress.from_url(config.mqtt_url),
            client_id=config.mqtt_client_id or f"umec-sensor-{socket.gethostname()}",
            topic=config.mqtt_topic, ca_file=config.mqtt_ca_file)

        async def start() -> None:
            ingester.start()
        service.on_start.append(start)
        service.on_close.insert(0, functools.partial(asyncio.to_thread, ingester.stop))
