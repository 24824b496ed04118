"""schemathesis against the official ETSI MEC 011 v2.1.1 OpenAPI files, in-process (ASGI).

Every operation of both files is exercised with generated requests (valid and invalid), as the
app whose appInstanceId the token names; responses must never be 5xx and must conform to the
spec (status codes, content types, headers, schemas). CI runs it derandomized (tests/conftest.py).

The spec's defects, and its prose rules its schemas do not state, handled in ``_repair`` and
``_prepare`` (without them "schema-valid" requests would include ones the spec text forbids):
- AppServices_POST's body is ``oneOf: [{type: object}, {type: object}]``: two identical
  alternatives, so no body is valid (an object matches both). It is the transportId-vs-
  transportInfo rule lost in conversion; we test with ServiceInfo minus serInstanceId
  ("assigned by the MEC platform", so absent in POST).
- ``_links`` is required in subscription *requests*, though the server assigns it: we accept
  requests without it and ignore a client's, so it is optional here.
- ``subscriptionType`` "Shall be set to ..." and ``callbackReference`` (a URI) are plain
  strings: a const and our callback URI pattern are added.
- ``TransportInfo.protocol`` "Shall be set to HTTP for a REST API": const HTTP.
- ``scope_of_locality`` is typed as any string; it is a LocalityType.
- confirm_ready/confirm_termination take a body but document no 400: added.
- "Either ser_instance_id or ser_name or ser_category_id or none of them shall be present";
  path and body must name the same resource (appInstanceId, rule ids, serInstanceId in PUT):
  ``_prepare`` makes generated requests respect these relations.
- ``location`` headers are described with ``content`` instead of ``schema`` (left as is).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings

from mec_api.mec011 import CallbackNotifier
from mec_api.mec011.core import CALLBACK_URI_PATTERN
from mec_api.mec011.schemas.app_support import DnsRule, TrafficRule
from mec_api.mec011.schemas.service_mgmt import ServiceInfo
from tests.support.mec011_harness import DNS_RULE, TRAFFIC_RULE, build, service_body

SPEC_DIR = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "etsi-mec011"
if not SPEC_DIR.is_dir():
    SPEC_DIR = Path("/work/shared/fixtures/etsi-mec011")
# Deeper runs: UMEC_SCHEMATHESIS_EXAMPLES=200 pytest tests/test_mec011_schemathesis.py
MAX_EXAMPLES = int(os.environ.get("UMEC_SCHEMATHESIS_EXAMPLES", "12"))
SEEDED_SERVICE = "0f1e2d3c-seeded-service"


class RecordingNotifier(CallbackNotifier):
    """Generated subscriptions name arbitrary callback URIs: a fuzzer must not make the server
    POST to random hosts. The real delivery is tested in test_mec011_subscriptions.py."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def submit(self, url: str, body: dict[str, Any]) -> None:
        self.sent.append((url, body))


def _repair(raw: dict[str, Any]) -> dict[str, Any]:
    """Fix the spec's defects and add the rules its prose states but its schemas do not, so
    that "schema-valid" means what the specification means (see the module docstring)."""
    schemas = raw["components"]["schemas"]
    for name, kind in (("SerAvailabilityNotificationSubscription",
                        "SerAvailabilityNotificationSubscription"),
                       ("AppTerminationNotificationSubscription",
                        "AppTerminationNotificationSubscription")):
        if name in schemas:
            props = schemas[name]["properties"]
            props["subscriptionType"]["const"] = kind  # "Shall be set to ..."
            props["callbackReference"]["pattern"] = CALLBACK_URI_PATTERN  # "URI selected by ..."
            # ``_links`` is required in requests too, though the server assigns it: we accept
            # requests without it (and ignore a client's), so it is optional here.
            schemas[name]["required"].remove("_links")
    for path in ("/services", "/applications/{appInstanceId}/services"):
        for param in raw["paths"].get(path, {}).get("get", {}).get("parameters", []):
            if param["name"] == "scope_of_locality":  # a LocalityType, typed as any string
                param["schema"] = {"$ref": "#/components/schemas/LocalityType"}
    for path in ("/applications/{appInstanceId}/confirm_ready",
                 "/applications/{appInstanceId}/confirm_termination"):
        if path in raw["paths"]:  # the only operations with a body and no 400 documented
            raw["paths"][path]["post"]["responses"]["400"] = {
                "description": "Bad Request", "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/ProblemDetails"}}}}
    if "ServiceInfo" in schemas:
        # serInstanceId is "assigned by the MEC platform": absent in POST, the resource's own
        # id in PUT (which ``_prepare`` fills in, a relation a schema cannot state).
        request = {**schemas["ServiceInfo"], "properties": {
            k: v for k, v in schemas["ServiceInfo"]["properties"].items()
            if k != "serInstanceId"}}
        schemas["ServiceInfoRequest"] = request
        # TransportInfo.protocol "Shall be set to HTTP for a REST API".
        schemas["TransportInfo"]["properties"]["protocol"]["const"] = "HTTP"
        services = raw["paths"]["/applications/{appInstanceId}/services"]
        services["post"]["requestBody"]["content"]["application/json"]["schema"] = {
            "$ref": "#/components/schemas/ServiceInfoRequest"}
    return raw


def _load(name: str) -> Any:
    raw = yaml.safe_load((SPEC_DIR / name).read_text())
    return schemathesis.openapi.from_dict(_repair(raw))


notifier = RecordingNotifier()
harness = build(Path(tempfile.mkdtemp(prefix="mec011-schemathesis-")) / "m.db",
                notifier=notifier)
mgmt_schema = _load("MecServiceMgmtApi.yaml")
support_schema = _load("MecAppSupportApi.yaml")
mgmt_schema.app = harness.app
support_schema.app = harness.app


def _seed() -> None:
    """Known resources, so that GET/PUT/DELETE also meet existing ones (not only 404s)."""
    registry, support = harness.store.registry, harness.store.support
    if registry.service(SEEDED_SERVICE) is None:
        registry.add_service("app-a", "tenant-a", ServiceInfo.model_validate(
            {**service_body("seeded"), "serInstanceId": SEEDED_SERVICE}), harness.clock())
    support.seed_traffic_rule("app-a", TrafficRule.model_validate(TRAFFIC_RULE), harness.clock())
    support.seed_dns_rule("app-a", DnsRule.model_validate(DNS_RULE), harness.clock())


_KNOWN_IDS = {"serviceId": SEEDED_SERVICE, "trafficRuleId": TRAFFIC_RULE["trafficRuleId"],
              "dnsRuleId": DNS_RULE["dnsRuleId"]}


def _prepare(case: Any) -> dict[str, str]:
    _seed()
    params = case.path_parameters or {}
    if "appInstanceId" in params:
        params["appInstanceId"] = "app-a"  # the token's own app (others: test_mec011_*)
    for name, known in _KNOWN_IDS.items():
        # Half the generated ids point at the seeded resource (decided by the case itself).
        if name in params and len(str(params[name])) % 2 == 0:
            params[name] = known
    # "Either ser_instance_id or ser_name or ser_category_id or none of them shall be present."
    query = case.query if isinstance(case.query, dict) else {}
    exclusive = [k for k in ("ser_instance_id", "ser_name", "ser_category_id") if k in query]
    for extra in exclusive[1:]:
        del query[extra]
    # Relations between path and body the spec states in prose: the body names the resource
    # of the path (a string field only: a deliberately invalid value stays invalid).
    body = case.body if isinstance(case.body, dict) else {}
    for path_name, body_name in (("appInstanceId", "appInstanceId"),
                                 ("trafficRuleId", "trafficRuleId"),
                                 ("dnsRuleId", "dnsRuleId"), ("serviceId", "serInstanceId")):
        if path_name in params and isinstance(body.get(body_name), str):
            body[body_name] = unquote(str(params[path_name]))  # params are sent encoded
    return {"Authorization": "Bearer a-all"}


SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None,
                    suppress_health_check=list(HealthCheck))


@mgmt_schema.parametrize()
@SETTINGS
def test_service_mgmt_conforms(case: Any) -> None:
    case.call_and_validate(headers=_prepare(case))


@support_schema.parametrize()
@SETTINGS
def test_app_support_conforms(case: Any) -> None:
    case.call_and_validate(headers=_prepare(case))


@pytest.mark.parametrize("name", ["MecServiceMgmtApi.yaml", "MecAppSupportApi.yaml"])
def test_every_spec_operation_is_served(name: str) -> None:
    """No path of the official files is left out (405/404 from routing would say so)."""
    from fastapi.testclient import TestClient
    raw = yaml.safe_load((SPEC_DIR / name).read_text())
    prefix = raw["servers"][0]["url"].split("8081", 1)[1]
    with TestClient(harness.app) as client:
        for path, item in raw["paths"].items():
            for method in ("get", "post", "put", "patch", "delete"):
                if method in item:
                    url = prefix + path.replace("{appInstanceId}", "app-a").replace(
                        "{", "").replace("}", "")
                    r = client.request(method.upper(), url, headers={"Authorization": "Bearer x"})
                    assert r.status_code == 401, (method, url, r.status_code)
