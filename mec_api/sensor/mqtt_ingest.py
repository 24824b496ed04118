"""MQTT adapter: Ruuvi Gateway messages from a broker (Mosquitto) into the sensor store.

Delivery guarantees come from MQTT itself, configured so that nothing the broker kept is lost:
- QoS 1 subscription in a persistent session (fixed client id, ``clean_session=False``): while
  we are away (restart, network, broker restart with ``persistence true``) the broker queues
  the messages and delivers them when we reconnect.
- paho's network thread reconnects by itself with exponential backoff (``reconnect_delay_set``).
- Acknowledgements are manual: a message is acknowledged only once it is stored or judged
  garbage. If the database refuses it after a few retries it stays unacknowledged, so the broker
  delivers it again on the next session instead of it being lost silently.
Garbage (not JSON, no ``data``, not a Ruuvi advertisement, truncated) is counted and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.exc import SQLAlchemyError

from mec_api.sensor.gateway import GatewayMessageError, parse_mqtt_message
from mec_api.sensor.metrics import SensorMetrics, default_metrics
from mec_api.sensor.ruuvi import RuuviDecodeError
from mec_api.sensor.store import SqlSensorStore

log = logging.getLogger("umec.sensor.mqtt")
SOURCE = "mqtt"
DEFAULT_TOPIC = "ruuvi/+/+"
_STORE_RETRY_DELAYS = (0.1, 0.5, 1.0)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """``mqtt://[user:password@]host[:1883]`` or ``mqtts://…[:8883]``."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker URL {url!r} must look like mqtt://host:1883 or "
                             "mqtts://host:8883")
        tls = parts.scheme == "mqtts"
        return cls(host=parts.hostname, port=parts.port or (8883 if tls else 1883), tls=tls,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None)


class MqttIngester:
    """Subscribes to the Ruuvi Gateway topic and stores every reading once.

    ``start`` returns at once (the first connection is retried in the background, so a broker
    that comes up later is fine); ``stop`` disconnects and joins the network thread.
    """

    def __init__(self, store: SqlSensorStore, broker: BrokerAddress, *, client_id: str,
                 metrics: SensorMetrics | None = None, topic: str = DEFAULT_TOPIC,
                 keepalive: int = 30,
                 reconnect_min_delay: int = 1, reconnect_max_delay: int = 30,
                 ca_file: str | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store, self.topic, self.clock = store, topic, clock
        self.metrics = metrics or default_metrics()
        self.broker, self.keepalive = broker, keepalive
        self._ready = threading.Event()  # connected and the broker acknowledged our subscription
        self.connections = 0  # successful CONNACKs: > 1 means we came back after a loss
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        self.client.reconnect_delay_set(reconnect_min_delay, reconnect_max_delay)
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self.client.tls_set(ca_certs=ca_file)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    @property
    def connected(self) -> bool:
        """Connected and subscribed: readings flow (a health check can report it)."""
        return self._ready.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def start(self) -> None:
        self.client.connect_async(self.broker.host, self.broker.port, self.keepalive)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._ready.clear()

    def handle(self, topic: str, payload: bytes) -> bool:
        """Process one message; True when it may be acknowledged (stored, duplicate or garbage),
        False when storing failed and the broker should keep it."""
        self.metrics.received.labels(source=SOURCE).inc()
        try:
            observation = parse_mqtt_message(topic, payload, self.clock())
        except (GatewayMessageError, RuuviDecodeError) as exc:
            self.metrics.drop(SOURCE, exc.reason)
            log.debug("MQTT message dropped", extra={"topic": topic, "reason": exc.reason})
            return True
        for delay in (*_STORE_RETRY_DELAYS, None):
            try:
                stored = self.store.add([observation])
            except SQLAlchemyError as exc:
                if delay is None:
                    self.metrics.drop(SOURCE, "store_error")
                    log.error("sensor reading not stored; left unacknowledged for redelivery",
                              extra={"topic": topic, "error": str(exc)})
                    return False
                time.sleep(delay)
                continue
            counter = self.metrics.stored if stored else self.metrics.duplicates
            counter.labels(source=SOURCE).inc()
            return True
        return False  # unreachable: the loop returns on its last pass

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: Any, _properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker refused the connection", extra={"reason": str(reason_code)})
            return
        self.connections += 1
        # The persistent session keeps the subscription; subscribing again is harmless and
        # covers a broker that lost its state.
        client.subscribe(self.topic, qos=1)
        log.info("MQTT connected", extra={"broker": self.broker.host,
                                          "session_present": flags.session_present})

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any,
                       reason_code: Any, _properties: Any) -> None:
        self._ready.clear()
        log.warning("MQTT disconnected; reconnecting with backoff",
                    extra={"reason": str(reason_code)})

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                      reason_codes: list[Any], _properties: Any) -> None:
        if any(code.is_failure for code in reason_codes):
            log.error("MQTT broker refused the subscription", extra={"topic": self.topic})
            return
        self._ready.set()

    def _on_message(self, client: mqtt.Client, _userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a topic that is not UTF-8 cannot be a gateway's
            topic = ""
        try:
            acknowledge = self.handle(topic, bytes(message.payload))
        except Exception:
            # Never kill the network thread. Not a database outage but a message this code
            # cannot handle: redelivering it would fail again forever, so it is dropped.
            log.exception("unexpected error handling an MQTT message")
            self.metrics.drop(SOURCE, "internal_error")
            acknowledge = True
        if acknowledge:
            client.ack(message.mid, message.qos)
