"""Every route of ``umec server`` (its own and the included resource APIs) refuses a request
without a token, except the ones that must be open: health, metrics, JWKS and discovery, the
OAuth 2.0 endpoints themselves, and the attestation protocol (nodes prove themselves with
their TPM). A route added later without a guard fails this test."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from umec.app import build_server
from umec.settings import Settings

OPEN = (
    re.compile(r"^/(healthz|readyz|metrics)$"),
    re.compile(r"^/\.well-known/"),
    re.compile(r"^/attest/v1/jwks\.json$"),
    re.compile(r"^/oauth2/(token|revoke|revocations)$"),
    re.compile(r"^/(docs|redoc|openapi\.json)"),
)
# The attestation protocol authenticates nodes by TPM (enrol/activate/challenge/evidence); its
# fleet view needs the operator token; introspection needs the resource-server credential.
OWN_AUTH = (
    re.compile(r"^/attest/v1/"),
    re.compile(r"^/oauth2/introspect$"),
)


def routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every operation, from the app's OpenAPI document (FastAPI's
    included routers are not plain APIRoutes any more)."""
    return [(method.upper(), path) for path, operations in app.openapi()["paths"].items()
            for method in operations if method in ("get", "post", "put", "patch", "delete")]


def test_every_api_route_needs_a_token(tmp_path: Path) -> None:
    server = build_server(Settings(data_dir=tmp_path))
    found = routes(server.app)
    guarded = [(m, p) for m, p in found
               if not any(r.search(p) for r in (*OPEN, *OWN_AUTH))]
    # The resource APIs are all there: MEC 011 (both), sensor; camera/inference when enabled.
    assert any(p.startswith("/mec_service_mgmt/v1/") for _, p in guarded)
    assert any(p.startswith("/mec_app_support/v1/") for _, p in guarded)
    assert any(p.startswith("/sensor/v1/") for _, p in guarded)
    with TestClient(server.app) as client:
        for method, path in guarded:
            url = re.sub(r"\{[^}]+\}", "x", path)
            r = client.request(method, url)
            assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
            assert r.headers["www-authenticate"].startswith("Bearer"), (method, path)
            assert r.headers["content-type"].startswith("application/problem+json")
        own = [(m, p) for m, p in found if any(r.search(p) for r in OWN_AUTH)
               and m == "GET" and "{" not in p and "jwks" not in p]
        for method, path in own:  # e.g. the fleet view: operator token, not open
            assert client.request(method, path).status_code == 401, path
