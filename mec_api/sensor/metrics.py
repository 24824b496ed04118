"""Prometheus counters of sensor ingestion, shared by the MQTT and the HTTP adapters.

The process shares one set on the default registry (``default_metrics()``: the registry refuses
a second set of the same names); tests pass their own ``CollectorRegistry``.
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter


class SensorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.received = Counter(
            "umec_sensor_messages_received", "Gateway messages (MQTT) or tag entries (HTTP) "
            "received", ["source"], registry=registry)
        self.stored = Counter(
            "umec_sensor_readings_stored", "Readings stored for the first time", ["source"],
            registry=registry)
        self.duplicates = Counter(
            "umec_sensor_readings_duplicate", "Readings already stored (redelivery, several "
            "gateways, repeated broadcast)", ["source"], registry=registry)
        self.dropped = Counter(
            "umec_sensor_messages_dropped", "Messages dropped, by reason", ["source", "reason"],
            registry=registry)

    def drop(self, source: str, reason: str, count: int = 1) -> None:
        self.dropped.labels(source=source, reason=reason).inc(count)


_default: SensorMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> SensorMetrics:
    """The process-wide counters on the default registry (what ``/metrics`` exports)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SensorMetrics()
        return _default
