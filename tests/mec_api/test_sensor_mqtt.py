"""MQTT ingestion against real Mosquitto brokers.

The normal flow uses the system broker on 127.0.0.1:1883 (a unique topic prefix and client id
per test). The restart tests start their own ``mosquitto`` with persistence on a free port, so
they can stop it and start it again.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select

from mec_api.sensor import mqtt_ingest
from mec_api.sensor.metrics import SensorMetrics
from mec_api.sensor.models import SensorReadingRow
from mec_api.sensor.mqtt_ingest import BrokerAddress, MqttIngester
from mec_api.sensor.store import SqlSensorStore
from umec.db import make_engine, open_database

MOSQUITTO = "/usr/sbin/mosquitto"
SYSTEM_BROKER = BrokerAddress("127.0.0.1", 1883, tls=False, username=None, password=None)
TAG = "CB:B8:33:4C:88:4F"
GW = "C8:25:2D:8E:9C:2C"


def adv(sequence: int) -> str:
    return f"0201061BFF99040512FC5394C37C0004FFFC040CAC3642{sequence:04X}CBB8334C884F"


def gateway_message(sequence: int) -> bytes:
    return json.dumps({"gw_mac": GW, "rssi": -60, "aoa": [], "ts": str(int(time.time())),
                       "gwts": str(int(time.time())), "data": adv(sequence),
                       "coords": ""}).encode()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the timeout")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Publisher:
    """A Ruuvi Gateway stand-in: publishes QoS 1 and waits for the broker's PUBACK."""

    def __init__(self, broker: BrokerAddress) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"gw-{uuid.uuid4().hex}")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def forget_session(broker: BrokerAddress, client_id: str) -> None:
    """Connect once with a clean session: the broker drops the persistent one of the test."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    with contextlib.suppress(OSError):
        client.connect(broker.host, broker.port)
        client.loop_start()
        time.sleep(0.2)
        client.disconnect()
        client.loop_stop()


class Counters:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = SensorMetrics(self.registry)

    def value(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"umec_sensor_{name}_total",
                                              {"source": "mqtt", **labels}) or 0.0


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Engine]:
    engine, _ = open_database(f"sqlite:///{tmp_path / 'umec.db'}")
    yield engine
    engine.dispose()


def stored_sequences(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        rows = conn.execute(select(SensorReadingRow.measurement_sequence)
                            .order_by(SensorReadingRow.measurement_sequence))
        return [r[0] for r in rows]


@pytest.fixture
def system_broker() -> BrokerAddress:
    if not port_open(1883):
        pytest.skip("no MQTT broker on 127.0.0.1:1883 (scripts/services.sh)")
    return SYSTEM_BROKER


def test_readings_stored_and_garbage_counted_and_dropped(system_broker: BrokerAddress,
                                                         database: Engine) -> None:
    prefix, client_id = f"umec-test-{uuid.uuid4().hex}", f"umec-sensor-{uuid.uuid4().hex}"
    counters = Counters()
    ingester = MqttIngester(SqlSensorStore(database), system_broker, client_id=client_id,
                            metrics=counters.metrics, topic=f"{prefix}/ruuvi/+/+")
    publisher = Publisher(system_broker)
    try:
        ingester.start()
        assert ingester.wait_connected(10)
        topic = f"{prefix}/ruuvi/{GW}/{TAG}"
        for sequence in (1, 2, 3):
            publisher.publish(topic, gateway_message(sequence))
        publisher.publish(topic, gateway_message(2))  # the same advertisement again
        garbage = {
            "not_json": (topic, b"\x00\x01 garbage"),
            "missing_data": (topic, json.dumps({"gw_mac": GW, "rssi": -60}).encode()),
            "not_ruuvi": (topic, json.dumps({"data": "0201060303AAFE"}).encode()),
            "malformed_advertisement": (topic, json.dumps({"data": adv(4)[:-6]}).encode()),
            "not_a_tag": (f"{prefix}/ruuvi/{GW}/gw_status", b'{"state": "online"}'),
        }
        for t, payload in garbage.values():
            publisher.publish(t, payload)
        wait_for(lambda: counters.value("messages_received") == 4 + len(garbage))
        assert stored_sequences(database) == [1, 2, 3]
        assert counters.value("readings_stored") == 3
        assert counters.value("readings_duplicate") == 1
        for reason in garbage:
            assert counters.value("messages_dropped", reason=reason) == 1, reason
    finally:
        publisher.close()
        ingester.stop()
        forget_session(system_broker, client_id)


def test_message_left_unacknowledged_when_the_database_fails_comes_back(
        system_broker: BrokerAddress, database: Engine, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_ingest, "_STORE_RETRY_DELAYS", (0.01,))
    prefix, client_id = f"umec-test-{uuid.uuid4().hex}", f"umec-sensor-{uuid.uuid4().hex}"
    broken = make_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")  # no tables: every
    counters = Counters()                                                # insert fails
    failing = MqttIngester(SqlSensorStore(broken), system_broker, client_id=client_id,
                           metrics=counters.metrics, topic=f"{prefix}/ruuvi/+/+")
    publisher = Publisher(system_broker)
    try:
        failing.start()
        assert failing.wait_connected(10)
        publisher.publish(f"{prefix}/ruuvi/{GW}/{TAG}", gateway_message(77))
        wait_for(lambda: counters.value("messages_dropped", reason="store_error") == 1)
        failing.stop()

        healthy = MqttIngester(SqlSensorStore(database), system_broker, client_id=client_id,
                               metrics=counters.metrics, topic=f"{prefix}/ruuvi/+/+")
        healthy.start()
        try:
            wait_for(lambda: stored_sequences(database) == [77])
        finally:
            healthy.stop()
    finally:
        publisher.close()
        broken.dispose()
        forget_session(system_broker, client_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A private Mosquitto with persistence, which the test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        (directory / "data").mkdir()
        self.config = directory / "mosquitto.conf"
        # Started as root, Mosquitto would switch to user "mosquitto", which cannot write the
        # test's private directory: stay the user we are.
        self.config.write_text(
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {directory / 'data'}/\n"
            f"log_dest file {directory / 'mosquitto.log'}\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress("127.0.0.1", self.port, tls=False, username=None, password=None)

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: port_open(self.port), timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: Mosquitto writes its persistence file
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if not shutil.which(MOSQUITTO):
        pytest.skip(f"{MOSQUITTO} not installed (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def test_messages_kept_by_the_broker_across_its_restart_arrive(own_broker: Mosquitto,
                                                               database: Engine) -> None:
    topic = f"ruuvi/{GW}/{TAG}"
    counters = Counters()

    def ingester() -> MqttIngester:
        return MqttIngester(SqlSensorStore(database), own_broker.address,
                            client_id="umec-sensor-restart-test", metrics=counters.metrics,
                            reconnect_max_delay=2)

    first = ingester()
    first.start()
    assert first.wait_connected(10)
    publisher = Publisher(own_broker.address)
    publisher.publish(topic, gateway_message(1))
    wait_for(lambda: stored_sequences(database) == [1])
    first.stop()  # we are away: the persistent session keeps our QoS-1 messages

    for sequence in (2, 3, 4):
        publisher.publish(topic, gateway_message(sequence))
    publisher.close()
    own_broker.stop()  # the broker restarts while holding them
    own_broker.start()
    assert stored_sequences(database) == [1]

    second = ingester()
    second.start()
    try:
        wait_for(lambda: stored_sequences(database) == [1, 2, 3, 4])
    finally:
        second.stop()
    assert counters.value("readings_stored") == 4


def test_reconnects_by_itself_after_a_broker_restart(own_broker: Mosquitto,
                                                     database: Engine) -> None:
    topic = f"ruuvi/{GW}/{TAG}"
    ingester = MqttIngester(SqlSensorStore(database), own_broker.address,
                            client_id="umec-sensor-reconnect-test", metrics=Counters().metrics,
                            reconnect_max_delay=2)
    ingester.start()
    try:
        assert ingester.wait_connected(10)
        own_broker.stop()
        wait_for(lambda: not ingester.connected)
        own_broker.start()
        # Published at once, most likely before the ingester is back: the session queues it.
        publisher = Publisher(own_broker.address)
        publisher.publish(topic, gateway_message(10))
        publisher.close()
        wait_for(lambda: ingester.connected, timeout=15)
        wait_for(lambda: stored_sequences(database) == [10])
        assert ingester.connections == 2
        publisher = Publisher(own_broker.address)
        publisher.publish(topic, gateway_message(11))
        publisher.close()
        wait_for(lambda: stored_sequences(database) == [10, 11])
    finally:
        ingester.stop()


def test_starts_before_the_broker_is_up(tmp_path: Path, database: Engine) -> None:
    if not shutil.which(MOSQUITTO):
        pytest.skip(f"{MOSQUITTO} not installed (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path)  # not started yet
    ingester = MqttIngester(SqlSensorStore(database), broker.address,
                            client_id="umec-sensor-late-broker-test",
                            metrics=Counters().metrics, reconnect_max_delay=1)
    ingester.start()
    try:
        assert not ingester.wait_connected(0.5)
        broker.start()
        assert ingester.wait_connected(10)
        publisher = Publisher(broker.address)
        publisher.publish(f"ruuvi/{GW}/{TAG}", gateway_message(1))
        publisher.close()
        wait_for(lambda: stored_sequences(database) == [1])
    finally:
        ingester.stop()
        broker.stop()


def test_broker_url() -> None:
    assert BrokerAddress.from_url("mqtt://broker") == BrokerAddress(
        "broker", 1883, tls=False, username=None, password=None)
    assert BrokerAddress.from_url("mqtts://u%40x:p%3Aw@broker:9000") == BrokerAddress(
        "broker", 9000, tls=True, username="u@x", password="p:w")
    assert BrokerAddress.from_url("mqtts://broker").port == 8883
    for bad in ("http://broker", "mqtt://", "broker:1883"):
        with pytest.raises(ValueError, match="mqtt://host"):
            BrokerAddress.from_url(bad)
