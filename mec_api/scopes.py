"""The scopes the µMEC APIs know. ``policies/tokens.rego`` grants a subset of these per workload."""

from __future__ import annotations

# ETSI MEC 011 service management (mec_service_mgmt/v1): discovery and the app's own services.
MEC011_SERVICES_READ = "mec011.services.read"
MEC011_SERVICES_WRITE = "mec011.services.write"
# ETSI MEC 011 application support (mec_app_support/v1): rules, readiness, timing.
MEC011_APP_SUPPORT = "mec011.app-support"
# Sensor API: readings (apps) and ingestion over HTTP (Ruuvi Gateway HTTP POST).
SENSOR_READ = "sensor.read"
SENSOR_INGEST = "sensor.ingest"
# Camera API: JPEG snapshots.
CAMERA_SNAPSHOT = "camera.snapshot"
# Inference API: classify uploaded images or a camera snapshot server-side.
INFERENCE_CLASSIFY = "inference.classify"

ALL_SCOPES: frozenset[str] = frozenset(
    {
        MEC011_SERVICES_READ,
        MEC011_SERVICES_WRITE,
        MEC011_APP_SUPPORT,
        SENSOR_READ,
        SENSOR_INGEST,
        CAMERA_SNAPSHOT,
        INFERENCE_CLASSIFY,
    }
)
