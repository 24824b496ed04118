"""``umec server`` and ``umec api`` publish one OpenAPI document each that describes every route
they serve: the attestation protocol, the token service and the resource APIs (MEC 011, sensor,
camera, inference) included as routers, not mounted as apps of their own (whose routes a
client generator or a fuzzer reading ``/openapi.json`` would never see), and a request body
for every operation that reads one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from starlette.routing import Mount

from mec_api.camera.config import CameraConfig
from mec_api.inference.export import ensure_onnx_model
from tests.support.ruuvi_gateway import NOW, TAG, gateway_body
from umec.api_process import build_api_process
from umec.app import build_server
from umec.settings import Settings

WRITES = ("post", "put", "patch")
# Operations that take no body at all: the node names itself in the path (a challenge is
# issued to whoever asks, and evidence later proves the TPM); the operator's ack is a header;
# a camera frame is taken and classified by the server itself.
BODILESS = {("post", "/attest/v1/nodes/{node}/challenge"),
            ("post", "/attest/v1/nodes/{node}/ack"),
            ("post", "/inference/v1/models/{model}/classify-camera/{camera_id}")}
SERVER_PATHS = ("/mec_service_mgmt/v1/services", "/mec_app_support/v1/timing/current_time",
                "/sensor/v1/gateway", "/camera/v1/cameras", "/inference/v1/models",
                "/oauth2/token", "/oauth2/revocations", "/.well-known/jwks.json",
                "/attest/v1/nodes", "/attest/v1/nodes/{node}/evidence", "/attest/v1/jwks.json")


def served(app: Any, prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every documented-kind route the app answers, mounted apps included."""
    found: set[tuple[str, str]] = set()
    for route in getattr(app, "routes", ()):
        if isinstance(route, APIRoute) and route.include_in_schema:
            found |= {(m.lower(), prefix + route.path) for m in route.methods or ()
                      if m != "HEAD"}
        elif isinstance(route, Mount):
            found |= served(route.app, prefix + route.path)
    return found


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m, p) for p, ops in doc["paths"].items() for m in ops
            if m in ("get", "post", "put", "patch", "delete")}


def body_schema(doc: dict[str, Any], method: str, path: str, media: str) -> dict[str, Any]:
    schema: dict[str, Any] = doc["paths"][path][method]["requestBody"]["content"][media]["schema"]
    return schema


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = Path(os.environ.get("UMEC_TEST_MODEL_CACHE") or tmp_path_factory.mktemp("models"))
    ensure_onnx_model(cache)
    return cache


@dataclass
class Served:
    app: FastAPI
    doc: dict[str, Any]
    client: TestClient


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("openapi")
    camera = CameraConfig(id="lobby", kind="file", location=str(work / "none.avi"))
    built = build_server(Settings(data_dir=work, cameras=[camera], inference_enabled=True,
                                  model_cache_dir=model_cache))
    with TestClient(built.app) as client:  # what a client reads, over HTTP
        response = client.get("/openapi.json")
        assert response.status_code == 200
        yield Served(built.app, response.json(), client)


def test_the_server_document_lists_every_route_it_serves(server: Served) -> None:
    app, doc = server.app, server.doc
    missing = served(app) - documented(doc)
    assert not missing, f"served but not in /openapi.json (a mounted app?): {sorted(missing)}"
    for path in SERVER_PATHS:
        assert path in doc["paths"], path
    prefixes = {p.split("/")[1] for p in doc["paths"]}
    assert {"mec_service_mgmt", "mec_app_support", "sensor", "camera", "inference", "oauth2",
            ".well-known", "attest"} <= prefixes
    assert len(documented(doc)) >= 51  # 14 of its own + 37 of the resource APIs


def test_every_write_describes_its_body(server: Served) -> None:
    doc = server.doc
    writes = {(m, p) for m, p in documented(doc) if m in WRITES}
    undescribed = {(m, p) for m, p in writes if "requestBody" not in doc["paths"][p][m]}
    assert undescribed == BODILESS, sorted(undescribed ^ BODILESS)
    for method, path in writes - BODILESS:
        for media, content in doc["paths"][path][method]["requestBody"]["content"].items():
            assert "schema" in content, (method, path, media)


def test_the_hand_parsed_bodies_are_described_as_they_are_parsed(server: Served) -> None:
    """The routes that read their body themselves document a schema their real bodies meet."""
    doc = server.doc
    support = "/mec_app_support/v1/applications/{appInstanceId}"
    cases = [
        ("/sensor/v1/gateway", "application/json", gateway_body((TAG, 205, NOW)), True),
        (f"{support}/confirm_ready", "application/json", {"indication": "READY"}, False),
        (f"{support}/confirm_termination", "application/json",
         {"operationAction": "TERMINATING"}, False),
        ("/oauth2/token", "application/x-www-form-urlencoded",
         {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
          "subject_token": "x", "subject_token_type":
          "urn:ietf:params:oauth:token-type:jwt", "scope": "sensor.read"}, True),
    ]
    for path, media, example, required in cases:
        body = doc["paths"][path]["post"]["requestBody"]
        assert body["required"] is required, path
        schema = body_schema(doc, "post", path, media)
        Draft202012Validator.check_schema(schema)
        assert not list(Draft202012Validator(schema).iter_errors(example)), path
    bad = Draft202012Validator(body_schema(doc, "post", f"{support}/confirm_termination",
                                           "application/json"))
    assert list(bad.iter_errors({"operationAction": "REBOOTING"}))
    classify = doc["paths"]["/inference/v1/models/{model}/classify"]["post"]["requestBody"]
    assert set(classify["content"]) == {"image/jpeg", "image/png"}


def test_umec_api_documents_its_routes_too(tmp_path: Path, model_cache: Path) -> None:
    camera = CameraConfig(id="lobby", kind="file", location=str(tmp_path / "none.avi"))
    app = build_api_process(Settings(data_dir=tmp_path, token_service_url="http://127.0.0.1:9",
                                     cameras=[camera], inference_enabled=True,
                                     model_cache_dir=model_cache),
                            ["sensor", "mec011", "camera", "inference"])
    doc = app.openapi()
    assert not served(app) - documented(doc)
    assert len(documented(doc)) == 37
    undescribed = {(m, p) for m, p in documented(doc)
                   if m in WRITES and "requestBody" not in doc["paths"][p][m]}
    assert undescribed <= BODILESS, undescribed


def test_included_apis_keep_their_error_model(server: Served) -> None:
    """Included, the resource APIs still answer a malformed request 400 (MEC 011), while the
    server's own routes answer 422; both as problem+json naming request.schema."""
    for path, status in (("/mec_service_mgmt/v1/applications/app-1/services", 400),
                         ("/mec_app_support/v1/applications/app-1/subscriptions", 400),
                         ("/attest/v1/nodes", 422)):
        r = server.client.post(path, content=b'{"serName": ',
                               headers={"content-type": "application/json"})
        assert r.status_code == status, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json", path
        assert r.json()["check"] == "request.schema" and r.json()["status"] == status
