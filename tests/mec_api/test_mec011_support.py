"""MEC 011 application support: platform-seeded traffic/DNS rules the app reads and may switch
on/off (and nothing else), confirm_ready, timing; with 401/403 and tenant isolation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mec_api.mec011.schemas.app_support import DnsRule, TrafficRule
from tests.support.mec011_harness import DNS_RULE, TRAFFIC_RULE, Harness, auth, build

SUPPORT = "/mec_app_support/v1"
APP_A = f"{SUPPORT}/applications/app-a"


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    h = build(tmp_path / "mec011.db")
    support = h.store.support
    support.seed_traffic_rule("app-a", TrafficRule.model_validate(TRAFFIC_RULE), h.clock())
    support.seed_dns_rule("app-a", DnsRule.model_validate(DNS_RULE), h.clock())
    support.seed_dns_rule("app-b", DnsRule.model_validate({**DNS_RULE, "dnsRuleId": "dns-b"}),
                          h.clock())
    return h


@pytest.fixture
def client(harness: Harness) -> Iterator[TestClient]:
    with TestClient(harness.app) as c:
        yield c


@pytest.mark.parametrize(("path", "rule", "id_field"), [
    ("traffic_rules", TRAFFIC_RULE, "trafficRuleId"), ("dns_rules", DNS_RULE, "dnsRuleId")])
def test_rules_read_and_state_update(client: TestClient, path: str, rule: dict[str, Any],
                                     id_field: str) -> None:
    listing = client.get(f"{APP_A}/{path}", headers=auth("a-all"))
    assert listing.status_code == 200 and listing.json() == [rule]
    url = f"{APP_A}/{path}/{rule[id_field]}"
    one = client.get(url, headers=auth("a-all"))
    assert one.json() == rule
    etag = one.headers["etag"]

    stale = client.put(url, json={**rule, "state": "INACTIVE"},
                       headers={**auth("a-all"), "If-Match": '"old"'})
    assert stale.status_code == 412
    ok = client.put(url, json={**rule, "state": "INACTIVE"},
                    headers={**auth("a-all"), "If-Match": etag})
    assert ok.status_code == 200 and ok.json() == {**rule, "state": "INACTIVE"}
    assert ok.headers["etag"] != etag
    assert client.get(url, headers=auth("a-all")).json()["state"] == "INACTIVE"

    renamed = client.put(url, json={**rule, id_field: "other"}, headers=auth("a-all"))
    assert renamed.status_code == 400
    assert client.put(f"{APP_A}/{path}/missing", json={**rule, id_field: "missing"},
                      headers=auth("a-all")).status_code == 404


def test_app_cannot_rewrite_platform_attributes(client: TestClient) -> None:
    url = f"{APP_A}/traffic_rules/tr-1"
    for change in ({"action": "DROP"}, {"priority": 0},
                   {"trafficFilter": [{"srcAddress": ["0.0.0.0/0"]}]},
                   {"dstInterface": {"interfaceType": "IP", "dstIpAddress": "6.6.6.6"}}):
        r = client.put(url, json={**TRAFFIC_RULE, **change}, headers=auth("a-all"))
        assert r.status_code == 403, change
        assert r.json()["check"] == "rule-read-only"
        assert next(iter(change)) in r.json()["detail"]
    dns = client.put(f"{APP_A}/dns_rules/dns-1", json={**DNS_RULE, "ipAddress": "6.6.6.6"},
                     headers=auth("a-all"))
    assert dns.status_code == 403
    assert client.get(url, headers=auth("a-all")).json() == TRAFFIC_RULE
    # Not a TrafficRule at all: the spec's required fields and enums are checked.
    bad = client.put(url, json={**TRAFFIC_RULE, "action": "STEAL"}, headers=auth("a-all"))
    assert bad.status_code == 400


def test_isolation_and_scopes(client: TestClient) -> None:
    assert client.get(f"{APP_A}/dns_rules").status_code == 401
    assert client.get(f"{APP_A}/dns_rules", headers=auth("a-read")).status_code == 403
    r = client.get(f"{APP_A}/dns_rules", headers=auth("b-all"))
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    assert client.get(f"{SUPPORT}/applications/app-b/dns_rules/dns-b",
                      headers=auth("a-all")).status_code == 403
    assert client.put(f"{SUPPORT}/applications/app-b/dns_rules/dns-b",
                      json={**DNS_RULE, "dnsRuleId": "dns-b", "state": "INACTIVE"},
                      headers=auth("a-all")).status_code == 403
    # app-c (same tenant) has no rules of app-a.
    assert client.get(f"{SUPPORT}/applications/app-c/dns_rules",
                      headers=auth("c-all")).json() == []
    assert client.post(f"{APP_A}/confirm_ready", headers=auth("c-all")).status_code == 403
    assert client.get(f"{SUPPORT}/timing/current_time").status_code == 401
    assert client.get(f"{SUPPORT}/timing/timing_caps",
                      headers=auth("a-read")).status_code == 403


def test_confirm_ready(harness: Harness, client: TestClient) -> None:
    url = f"{APP_A}/confirm_ready"
    assert client.post(url, json={"indication": "NOT-READY"},
                       headers=auth("a-all")).status_code == 400
    assert harness.store.support.lifecycle("app-a") is None
    assert client.post(url, json={"indication": "READY"},
                       headers=auth("a-all")).status_code == 204
    state = harness.store.support.lifecycle("app-a")
    assert state is not None and state.ready_at == harness.clock()
    harness.clock.advance(5)
    assert client.post(url, headers=auth("a-all")).status_code == 204  # body is optional
    again = harness.store.support.lifecycle("app-a")
    assert again is not None and again.ready_at == state.ready_at  # first readiness kept


def test_timing(harness: Harness, client: TestClient) -> None:
    harness.clock.advance(0.25)
    now = client.get(f"{SUPPORT}/timing/current_time", headers=auth("a-all")).json()
    assert now == {"seconds": int(harness.clock().timestamp()), "nanoSeconds": 250_000_000,
                   "timeSourceStatus": "NONTRACEABLE"}
    caps = client.get(f"{SUPPORT}/timing/timing_caps", headers=auth("a-all")).json()
    assert caps == {"timeStamp": {"seconds": now["seconds"], "nanoSeconds": 250_000_000}}
