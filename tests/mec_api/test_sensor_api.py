"""The sensor HTTP API through FastAPI: authorization, the gateway POST, queries, problems."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from mec_api import scopes
from mec_api.problems import PROBLEM_JSON
from mec_api.sensor.api import router
from mec_api.sensor.deps import SensorContext
from mec_api.sensor.metrics import SensorMetrics
from mec_api.sensor.store import SqlSensorStore
from tests.support.guard_double import StaticTokenGuard, api_app, principal
from tests.support.ruuvi_gateway import GW, NOW, TAG, adv, gateway_body
from umec.db import make_engine, open_database

READ = {"Authorization": "Bearer reader"}
INGEST = {"Authorization": "Bearer gateway"}
NO_SCOPE = {"Authorization": "Bearer camera-app"}


class Api:
    def __init__(self, client: TestClient, registry: CollectorRegistry) -> None:
        self.client, self.registry = client, registry

    def counter(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"umec_sensor_{name}_total",
                                              {"source": "http", **labels}) or 0.0


def make_api(store: SqlSensorStore, max_body_bytes: int = 256 * 1024) -> Api:
    guard = StaticTokenGuard({
        "reader": principal(scopes={scopes.SENSOR_READ}),
        "gateway": principal(namespace="site", app_instance_id="ruuvi-gw",
                             scopes={scopes.SENSOR_INGEST}),
        "camera-app": principal(scopes={scopes.CAMERA_SNAPSHOT}),
    })
    registry = CollectorRegistry()
    app = api_app(guard, router, sensor=SensorContext(
        store, metrics=SensorMetrics(registry), max_body_bytes=max_body_bytes,
        clock=lambda: NOW))
    return Api(TestClient(app), registry)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    engine, _ = open_database(f"sqlite:///{tmp_path / 'umec.db'}")
    yield make_api(SqlSensorStore(engine))
    engine.dispose()


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    assert "Traceback" not in response.text
    return body


ROUTES = [("GET", "/sensor/v1/tags"), ("GET", f"/sensor/v1/tags/{TAG}/latest"),
          ("GET", f"/sensor/v1/tags/{TAG}/readings"), ("POST", "/sensor/v1/gateway")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_token(api: Api, method: str, path: str) -> None:
    response = api.client.request(method, path, json={})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_its_scope(api: Api, method: str, path: str) -> None:
    wrong = READ if method == "POST" else INGEST  # a reader cannot post, a gateway cannot read
    for headers in (wrong, NO_SCOPE):
        response = api.client.request(method, path, json={}, headers=headers)
        assert_problem(response, 403)
        assert "insufficient_scope" in response.headers["www-authenticate"]


def test_gateway_post_then_tags_latest_and_history(api: Api) -> None:
    other = "D2:A3:6E:C8:E0:25"
    body = gateway_body((TAG, 205, NOW - timedelta(minutes=2)),
                        (TAG.lower(), 206, NOW - timedelta(minutes=1)),  # same tag, other case
                        (other, 7, NOW - timedelta(minutes=3)))
    # The gateway puts one entry per MAC; two spellings of one tag are still two entries.
    response = api.client.post("/sensor/v1/gateway", json=body, headers=INGEST)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 3, "stored": 3, "duplicates": 0, "dropped": {}}

    again = api.client.post("/sensor/v1/gateway", json=body, headers=INGEST)
    assert again.json() == {"received": 3, "stored": 0, "duplicates": 3, "dropped": {}}
    assert api.counter("readings_stored") == 3 and api.counter("readings_duplicate") == 3

    tags = api.client.get("/sensor/v1/tags", headers=READ).json()["tags"]
    assert [t["mac"] for t in tags] == [TAG, other]
    assert tags[0]["last_seen"] == "2025-06-01T11:59:00Z"
    assert tags[0]["last_gateway_mac"] == GW and tags[0]["last_rssi"] == -65

    latest = api.client.get(f"/sensor/v1/tags/{TAG.lower().replace(':', '-')}/latest",
                            headers=READ).json()
    assert latest["measurement_sequence"] == 206
    assert (latest["temperature_c"], latest["humidity_pct"], latest["pressure_pa"]) == (
        24.3, 53.49, 100044)
    assert (latest["acceleration_x_g"], latest["acceleration_y_g"],
            latest["acceleration_z_g"]) == (0.004, -0.004, 1.036)
    assert (latest["tx_power_dbm"], latest["battery_v"], latest["movement_counter"]) == (
        4, 2.977, 66)
    assert latest["measured_at"] == "2025-06-01T11:59:00Z"

    history = api.client.get(f"/sensor/v1/tags/{TAG}/readings", headers=READ).json()
    assert [r["measurement_sequence"] for r in history["readings"]] == [205, 206]
    assert history["since"] == "2025-05-31T12:00:00Z" and history["until"] == "2025-06-01T12:00:00Z"
    assert history["next_cursor"] is None


def test_not_available_fields_are_null(api: Api) -> None:
    invalid = "0201061BFF9904058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"
    body = {"data": {"gw_mac": GW, "tags": {TAG: {"rssi": -70, "data": invalid}}}}
    assert api.client.post("/sensor/v1/gateway", json=body, headers=INGEST).json()["stored"] == 1
    latest = api.client.get(f"/sensor/v1/tags/{TAG}/latest", headers=READ).json()
    for field in ("temperature_c", "humidity_pct", "pressure_pa", "acceleration_x_g",
                  "tx_power_dbm", "battery_v", "movement_counter", "measurement_sequence"):
        assert latest[field] is None, field
    assert latest["measured_at"] == "2025-06-01T12:00:00Z"  # no tag timestamp: the post's


def test_paging_with_the_cursor(api: Api) -> None:
    tags = tuple((TAG, s, NOW - timedelta(seconds=30 - s)) for s in range(7))
    for tag in tags:  # one tag per post: the tags object has one entry per MAC
        api.client.post("/sensor/v1/gateway", json=gateway_body(tag), headers=INGEST)
    seen: list[int] = []
    params: dict[str, str | int] = {"limit": 3, "since": "2025-06-01T11:00:00+00:00"}
    while True:
        page = api.client.get(f"/sensor/v1/tags/{TAG}/readings", params=params,
                              headers=READ).json()
        seen += [r["measurement_sequence"] for r in page["readings"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == list(range(7))


def test_gateway_garbage(api: Api) -> None:
    post = api.client.post
    assert_problem(post("/sensor/v1/gateway", content=b"{not json", headers=INGEST), 400)
    assert_problem(post("/sensor/v1/gateway", content=b"\xff\xfe\x00", headers=INGEST), 400)
    assert_problem(post("/sensor/v1/gateway", content=b"[" * 100_000, headers=INGEST), 400)
    assert_problem(post("/sensor/v1/gateway", json={"tags": {}}, headers=INGEST), 400)
    assert api.counter("messages_dropped", reason="not_json") == 3
    assert api.counter("messages_dropped", reason="bad_shape") == 1
    body = {"data": {"gw_mac": GW, "tags": {
        TAG: {"data": adv(1)[:-6]},  # truncated on the way
        "D2:A3:6E:C8:E0:25": {"data": "0201060303AAFE"},  # not a Ruuvi tag
        "nonsense": {"data": adv(2)},
        "AA:BB:CC:DD:EE:FF": {"data": adv(3)},  # the payload says CB:B8:33:4C:88:4F
    }}}
    response = post("/sensor/v1/gateway", json=body, headers=INGEST)
    assert response.json() == {"received": 4, "stored": 0, "duplicates": 0, "dropped": {
        "malformed_advertisement": 1, "not_ruuvi": 1, "invalid_mac": 1, "mac_mismatch": 1}}
    assert api.counter("messages_received") == 4
    assert api.client.get("/sensor/v1/tags", headers=READ).json() == {"tags": []}


def test_gateway_body_is_bounded(tmp_path: Path) -> None:
    engine, _ = open_database(f"sqlite:///{tmp_path / 'umec.db'}")
    api = make_api(SqlSensorStore(engine), max_body_bytes=1024)
    big = json.dumps(gateway_body(*((f"CB:B8:33:4C:88:{i:02X}", i, NOW) for i in range(20))))
    assert len(big) > 1024
    assert_problem(api.client.post("/sensor/v1/gateway", content=big, headers=INGEST), 413)

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for i in range(0, len(big), 100):
            yield big[i:i + 100].encode()
    assert_problem(api.client.post("/sensor/v1/gateway", content=chunks(), headers=INGEST), 413)
    small = gateway_body((TAG, 1, NOW))
    assert api.client.post("/sensor/v1/gateway", json=small, headers=INGEST).status_code == 200
    engine.dispose()


@pytest.mark.parametrize("params", [
    {"since": "2025-06-01T12:00:00Z", "until": "2025-06-01T11:00:00Z"},
    {"since": "2025-06-01T12:00:00Z", "until": "2025-06-01T12:00:00Z"},
    {"since": "2025-06-01T11:00:00"},  # no time zone
    {"until": "yesterday"},
    {"limit": 0}, {"limit": 1001}, {"limit": "many"},
    {"cursor": "not-a-cursor"}, {"cursor": "MjAyNS0wNi0wMQ"},  # base64 of a date without id
])
def test_bad_queries_are_problems(api: Api, params: dict[str, str | int]) -> None:
    response = api.client.get(f"/sensor/v1/tags/{TAG}/readings", params=params, headers=READ)
    assert_problem(response, 400)


@pytest.mark.parametrize("mac", ["CB:B8:33:4C:88", "not-a-mac", "CB:B8:33:4C:88:4G"])
def test_bad_macs_are_problems(api: Api, mac: str) -> None:
    for path in (f"/sensor/v1/tags/{mac}/latest", f"/sensor/v1/tags/{mac}/readings"):
        body = assert_problem(api.client.get(path, headers=READ), 400)
        assert "MAC" in body["detail"]


def test_unknown_tag(api: Api) -> None:
    body = assert_problem(api.client.get(f"/sensor/v1/tags/{TAG}/latest", headers=READ), 404)
    assert "/sensor/v1/tags" in body["detail"]
    history = api.client.get(f"/sensor/v1/tags/{TAG}/readings", headers=READ)
    assert history.status_code == 200 and history.json()["readings"] == []


def test_database_failure_is_a_503_without_internals(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")  # no tables
    api = make_api(SqlSensorStore(engine))
    for path in ("/sensor/v1/tags", f"/sensor/v1/tags/{TAG}/latest",
                 f"/sensor/v1/tags/{TAG}/readings"):
        body = assert_problem(api.client.get(path, headers=READ), 503)
        assert "sensor_" not in body["detail"]  # no SQL or table names leak
    response = api.client.post("/sensor/v1/gateway", json=gateway_body((TAG, 1, NOW)),
                               headers=INGEST)
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
    assert api.counter("messages_dropped", reason="store_error") == 1
    engine.dispose()
