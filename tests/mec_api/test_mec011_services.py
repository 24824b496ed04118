"""MEC 011 service management over HTTP: CRUD, ETag/If-Match, every query filter, transports,
liveness, and who may do what (401/403, another tenant's appInstanceId, another app's service)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mec_api.mec011.schemas.service_mgmt import ServiceInfo
from tests.support.mec011_harness import TOKEN_ENDPOINT, Harness, auth, service_body

MGMT = "/mec_service_mgmt/v1"
APP_A = f"{MGMT}/applications/app-a/services"


@pytest.fixture
def client(harness: Harness) -> Iterator[TestClient]:
    with TestClient(harness.app) as c:
        yield c


def register(client: TestClient, body: dict[str, Any], token: str = "a-all",
             app: str = "app-a") -> dict[str, Any]:
    r = client.post(f"{MGMT}/applications/{app}/services", json=body, headers=auth(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_register_get_and_location(client: TestClient) -> None:
    r = client.post(APP_A, json=service_body(), headers=auth("a-all"))
    assert r.status_code == 201
    created = r.json()
    service_id = created["serInstanceId"]
    assert r.headers["location"].endswith(f"{APP_A}/{service_id}")
    assert created["serName"] == "ruuvi-sensor" and created["state"] == "ACTIVE"
    fetched = client.get(r.headers["location"], headers=auth("a-all"))
    assert fetched.status_code == 200 and fetched.json() == created
    assert fetched.headers["etag"] == r.headers["etag"]
    # Discovery sees it too, with the same representation.
    one = client.get(f"{MGMT}/services/{service_id}", headers=auth("a-read"))
    assert one.json() == created and one.headers["etag"] == r.headers["etag"]


@pytest.mark.parametrize(("change", "check"), [
    ({"serInstanceId": "mine"}, "ser-instance-id-assigned"),
    ({"transportId": "umec-rest-http"}, "transport-one-of"),
    ({"transportInfo": None}, "transport-one-of"),
    ({"transportId": "nope", "transportInfo": None}, "transport-id"),
])
def test_post_rules_pydantic_cannot_say(client: TestClient, change: dict[str, Any],
                                        check: str) -> None:
    body = {k: v for k, v in {**service_body(), **change}.items() if v is not None}
    r = client.post(APP_A, json=body, headers=auth("a-all"))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["check"] == check


def test_endpoint_must_be_exactly_one_form(client: TestClient) -> None:
    body = service_body()
    body["transportInfo"]["endpoint"] = {"uris": ["https://x"],
                                         "addresses": [{"host": "10.0.0.1", "port": 80}]}
    r = client.post(APP_A, json=body, headers=auth("a-all"))
    assert r.status_code == 400 and r.json()["check"] == "endpoint-one-of"
    body["transportInfo"]["endpoint"] = {}
    assert client.post(APP_A, json=body, headers=auth("a-all")).json()["check"] == \
        "endpoint-one-of"


def test_spec_required_fields_and_enums(client: TestClient) -> None:
    for broken in ({"state": "RUNNING"}, {"serializer": "YAML"}, {"serName": None}):
        body = {k: v for k, v in {**service_body(), **broken}.items() if v is not None}
        r = client.post(APP_A, json=body, headers=auth("a-all"))
        assert r.status_code == 400 and "Traceback" not in r.text


def test_transport_id_resolves_the_platform_transport(client: TestClient) -> None:
    body = service_body()
    del body["transportInfo"]
    created = register(client, {**body, "transportId": "umec-rest-http"})
    assert created["transportInfo"]["id"] == "umec-rest-http"
    assert created["transportInfo"]["security"]["oAuth2Info"]["tokenEndpoint"] == TOKEN_ENDPOINT


def test_put_with_etags(client: TestClient) -> None:
    created = register(client, service_body())
    url = f"{APP_A}/{created['serInstanceId']}"
    etag = client.get(url, headers=auth("a-all")).headers["etag"]
    stale = client.put(url, json={**created, "state": "INACTIVE"},
                       headers={**auth("a-all"), "If-Match": '"not-the-etag"'})
    assert stale.status_code == 412 and stale.json()["status"] == 412
    assert client.get(url, headers=auth("a-all")).json()["state"] == "ACTIVE"

    ok = client.put(url, json={**created, "state": "INACTIVE"},
                    headers={**auth("a-all"), "If-Match": etag})
    assert ok.status_code == 200 and ok.json()["state"] == "INACTIVE"
    assert ok.headers["etag"] != etag
    # The ETag we used is now stale: a second writer holding it loses.
    again = client.put(url, json={**created, "version": "2.0"},
                       headers={**auth("a-all"), "If-Match": etag})
    assert again.status_code == 412
    # Without If-Match the write is unconditional (the spec does not require it).
    assert client.put(url, json={**created, "version": "2.0"},
                      headers=auth("a-all")).status_code == 200
    other = client.put(url, json={**created, "serInstanceId": "x"}, headers=auth("a-all"))
    assert other.status_code == 400 and other.json()["check"] == "ser-instance-id-immutable"


def test_delete(client: TestClient) -> None:
    created = register(client, service_body())
    url = f"{APP_A}/{created['serInstanceId']}"
    assert client.delete(url, headers=auth("a-all")).status_code == 204
    assert client.get(url, headers=auth("a-all")).status_code == 404
    assert client.delete(url, headers=auth("a-all")).status_code == 404
    assert client.get(f"{MGMT}/services", headers=auth("a-read")).json() == []


def test_every_query_filter(client: TestClient) -> None:
    rni = register(client, service_body("rni", category="rni", scopeOfLocality="MEC_SYSTEM",
                                        consumedLocalOnly=True, isLocal=True))
    loc = register(client, service_body("location", category="location", isLocal=False))
    cam = register(client, service_body("camera", category=None, consumedLocalOnly=False))

    def names(**params: Any) -> list[str]:
        r = client.get(f"{MGMT}/services", params=params, headers=auth("a-read"))
        assert r.status_code == 200, r.text
        mine = client.get(APP_A, params=params, headers=auth("a-read"))
        assert mine.json() == r.json()  # the app's own list filters alike
        return sorted(s["serName"] for s in r.json())

    assert names() == ["camera", "location", "rni"]
    assert names(ser_instance_id=[rni["serInstanceId"], cam["serInstanceId"]]) == \
        ["camera", "rni"]
    assert names(ser_name=["location", "nope"]) == ["location"]
    assert names(ser_category_id="rni") == ["rni"]
    assert names(ser_category_id="nope") == []
    assert names(consumed_local_only="true") == ["rni"]
    assert names(consumed_local_only="false") == ["camera", "location"]
    assert names(is_local="true") == ["rni"]
    assert names(is_local="false") == ["camera", "location"]
    assert names(scope_of_locality="MEC_SYSTEM") == ["rni"]
    assert names(scope_of_locality="MEC_HOST") == ["camera", "location"]  # the default
    assert names(ser_name=["rni", "location"], is_local="false") == ["location"]
    assert loc["serInstanceId"] not in {s["serInstanceId"] for s in client.get(
        f"{MGMT}/services", params={"is_local": "true"}, headers=auth("a-read")).json()}


@pytest.mark.parametrize("params", [
    {"ser_name": "a", "ser_category_id": "b"},
    {"ser_instance_id": "a", "ser_name": "b"},
    {"ser_instance_id": "a", "ser_category_id": "b"},
    {"scope_of_locality": "EVERYWHERE"},
    {"is_local": "maybe"},
])
def test_bad_queries_are_400(client: TestClient, params: dict[str, str]) -> None:
    for url in (f"{MGMT}/services", APP_A):
        r = client.get(url, params=params, headers=auth("a-all"))
        assert r.status_code == 400, (url, params, r.text)
        assert r.headers["content-type"] == "application/problem+json"


def test_transports_advertise_the_token_endpoint(client: TestClient) -> None:
    r = client.get(f"{MGMT}/transports", headers=auth("a-read"))
    assert r.status_code == 200
    [transport] = r.json()
    assert transport["type"] == "REST_HTTP" and transport["protocol"] == "HTTP"
    assert transport["security"]["oAuth2Info"] == {
        "grantTypes": ["OAUTH2_CLIENT_CREDENTIALS"], "tokenEndpoint": TOKEN_ENDPOINT}


def test_401_and_403(client: TestClient) -> None:
    assert client.get(f"{MGMT}/services").status_code == 401
    r = client.get(f"{MGMT}/transports", headers=auth("unknown"))
    assert r.status_code == 401 and "www-authenticate" in r.headers
    assert client.get(f"{MGMT}/services", headers=auth("a-sensor")).status_code == 403
    # Reading the app's own services needs read; changing them needs write.
    assert client.get(APP_A, headers=auth("a-read")).status_code == 200
    denied = client.post(APP_A, json=service_body(), headers=auth("a-read"))
    assert denied.status_code == 403 and "insufficient_scope" in denied.headers["www-authenticate"]
    assert client.get(f"{MGMT}/applications/app-a/subscriptions",
                      headers=auth("a-read")).status_code == 403


def test_tenant_and_app_isolation(harness: Harness, client: TestClient) -> None:
    created = register(client, service_body("private"))
    url = f"{APP_A}/{created['serInstanceId']}"
    # Another tenant's appInstanceId in the path: 403, whatever the method.
    for method, kwargs in (("GET", {}), ("POST", {"json": service_body()}),
                           ("PUT", {"json": created}), ("DELETE", {})):
        target = APP_A if method == "POST" else url
        r = client.request(method, target, headers=auth("b-all"), **kwargs)
        assert r.status_code == 403, (method, r.text)
        assert "app-b" in r.json()["detail"]
    # Another app of the same tenant cannot reach app-a's service through its own path.
    via_c = f"{MGMT}/applications/app-c/services/{created['serInstanceId']}"
    assert client.delete(via_c, headers=auth("c-all")).status_code == 404
    assert client.put(via_c, json=created, headers=auth("c-all")).status_code == 404
    # Discovery: same tenant sees it, another tenant does not; platform services everyone sees.
    harness.store.registry.register_platform_service(
        ServiceInfo.model_validate(service_body("umec-sensor")), harness.clock())
    seen_by_c = {s["serName"] for s in client.get(f"{MGMT}/services",
                                                  headers=auth("c-all")).json()}
    seen_by_b = {s["serName"] for s in client.get(f"{MGMT}/services",
                                                  headers=auth("b-all")).json()}
    assert seen_by_c == {"private", "umec-sensor"} and seen_by_b == {"umec-sensor"}
    assert client.get(f"{MGMT}/services/{created['serInstanceId']}",
                      headers=auth("b-all")).status_code == 404
    assert client.get(url, headers=auth("a-all")).json()["serName"] == "private"


def test_liveness(harness: Harness, client: TestClient) -> None:
    created = register(client, service_body("beating", livenessInterval=10))
    assert created["livenessInterval"] == 10
    url = f"{APP_A}/{created['serInstanceId']}/liveness"
    info = client.get(url, headers=auth("a-all")).json()
    assert info == {"state": "ACTIVE", "interval": 10,
                    "timeStamp": {"seconds": int(harness.clock().timestamp()), "nanoSeconds": 0}}
    harness.clock.advance(15)
    beat = client.patch(url, json={"state": "ACTIVE"}, headers=auth("a-all"))
    assert beat.status_code == 200
    assert beat.json()["timeStamp"]["seconds"] == int(harness.clock().timestamp())
    assert client.patch(url, json={"state": "INACTIVE"},
                        headers=auth("a-all")).json()["check"] == "heartbeat-state"
    # No heartbeat for two intervals: the service goes INACTIVE; a heartbeat revives it.
    harness.clock.advance(19)
    assert harness.store.registry.expire_liveness(harness.clock()) == []
    harness.clock.advance(2)
    [change] = harness.store.registry.expire_liveness(harness.clock())
    assert change.new is not None and change.new.info.state == "INACTIVE"
    service_url = f"{APP_A}/{created['serInstanceId']}"
    assert client.get(service_url, headers=auth("a-all")).json()["state"] == "INACTIVE"
    client.patch(url, json={"state": "ACTIVE"}, headers=auth("a-all"))
    assert client.get(service_url, headers=auth("a-all")).json()["state"] == "ACTIVE"
    # A service registered without a heartbeat has no liveness resource.
    plain = register(client, service_body("plain"))
    assert client.get(f"{APP_A}/{plain['serInstanceId']}/liveness",
                      headers=auth("a-all")).status_code == 404
    assert client.get(url, headers=auth("b-all")).status_code == 403
