"""Shared parts of the MEC 011 tests: the app behind the static-token guard, a real HTTP
callback receiver on loopback, and request bodies. (Holds no tests itself.)"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from mec_api import scopes
from mec_api.mec011 import (
    ROUTERS,
    CallbackNotifier,
    Mec011Context,
    Mec011Options,
    Mec011Store,
    NotifierConfig,
    mec011_state,
)
from tests.support.guard_double import StaticTokenGuard, api_app, principal

TOKEN_ENDPOINT = "https://umec.example/oauth2/token"
ALL_MEC011 = {scopes.MEC011_SERVICES_READ, scopes.MEC011_SERVICES_WRITE,
              scopes.MEC011_APP_SUPPORT}
TOKENS = {
    "a-all": principal("tenant-a", "app-a", ALL_MEC011),
    "a-read": principal("tenant-a", "app-a", {scopes.MEC011_SERVICES_READ}),
    "a-sensor": principal("tenant-a", "app-a", {scopes.SENSOR_READ}),
    "c-all": principal("tenant-a", "app-c", ALL_MEC011),  # same tenant, another app
    "b-all": principal("tenant-b", "app-b", ALL_MEC011),  # another tenant
}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Clock:
    """A settable clock: the routes read time only through it."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Harness:
    app: FastAPI
    store: Mec011Store
    notifier: CallbackNotifier
    clock: Clock
    context: Mec011Context


def build(db_path: Path, notifier_config: NotifierConfig | None = None,
          notifier: CallbackNotifier | None = None) -> Harness:
    engine = create_engine(f"sqlite:///{db_path}")
    Mec011Store.create_all(engine)
    store = Mec011Store.on(sessionmaker(engine, expire_on_commit=False))
    notifier = notifier or CallbackNotifier(
        notifier_config or NotifierConfig(attempts=3, timeout_s=2, backoff_s=0.05,
                                          blocked_networks=()))  # receivers on loopback
    clock = Clock()
    context = mec011_state(store, TOKEN_ENDPOINT, notifier,
                           Mec011Options(transport_uris=["https://umec.example"], now=clock))
    app = api_app(StaticTokenGuard(TOKENS), *ROUTERS, mec011=context)
    return Harness(app, store, notifier, clock, context)


def service_body(name: str = "ruuvi-sensor", *, category: str | None = "sensors",
                 state: str = "ACTIVE", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "serName": name,
        "version": "1.0",
        "state": state,
        "serializer": "JSON",
        "transportInfo": {
            "id": "t-1", "name": "REST", "type": "REST_HTTP", "protocol": "HTTP",
            "version": "1.1", "endpoint": {"uris": [f"https://apps.example/{name}"]},
            "security": {"oAuth2Info": {"grantTypes": ["OAUTH2_CLIENT_CREDENTIALS"],
                                        "tokenEndpoint": TOKEN_ENDPOINT}},
        },
    }
    if category is not None:
        body["serCategory"] = {"href": f"/catalogue/{category}", "id": category,
                               "name": category.title(), "version": "v1"}
    body.update(extra)
    return body


@dataclass
class CallbackReceiver:
    """A real HTTP server on loopback that records the notifications POSTed to it."""

    fail_first: int = 0
    delay_s: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                raw = self.rfile.read(length)
                receiver.attempts += 1
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                if receiver.attempts <= receiver.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.received.append({"path": self.path, "body": json.loads(raw)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/cb") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# A traffic rule and a DNS rule as MEC 011 writes them (app support tests seed them).
TRAFFIC_RULE = {
    "trafficRuleId": "tr-1", "filterType": "FLOW", "priority": 1,
    "trafficFilter": [{"srcAddress": ["192.168.2.0/24"], "dstPort": ["80"], "qCI": 5}],
    "action": "FORWARD_DECAPSULATED",
    "dstInterface": {"interfaceType": "IP", "dstIpAddress": "20.1.1.1"}, "state": "ACTIVE",
}
DNS_RULE = {"dnsRuleId": "dns-1", "domainName": "sensor.umec.local", "ipAddressType": "IP_V4",
            "ipAddress": "10.0.0.7", "ttl": 60, "state": "ACTIVE"}
