"""MEC 011 subscriptions with real callbacks: a loopback HTTP receiver gets the
ServiceAvailabilityNotification / AppTerminationNotification bodies; retries are bounded and the
request that triggered them never waits for the subscriber."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mec_api.mec011 import NotifierConfig, notify_termination
from mec_api.mec011.schemas.app_support import OperationAction
from tests.support.mec011_harness import (
    CallbackReceiver,
    Harness,
    auth,
    build,
    service_body,
    wait_until,
)

MGMT = "/mec_service_mgmt/v1"
SUPPORT = "/mec_app_support/v1"


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    r = CallbackReceiver()
    yield r
    r.close()


@pytest.fixture
def client(harness: Harness) -> Iterator[TestClient]:
    with TestClient(harness.app) as c:
        yield c


def subscribe(client: TestClient, callback: str, token: str = "a-all", app: str = "app-a",
              **criteria: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"subscriptionType": "SerAvailabilityNotificationSubscription",
                            "callbackReference": callback,
                            "_links": {"self": {"href": "ignored-by-the-server"}}}
    if criteria:
        body["filteringCriteria"] = criteria
    r = client.post(f"{MGMT}/applications/{app}/subscriptions", json=body, headers=auth(token))
    assert r.status_code == 201, r.text
    assert r.headers["location"] == r.json()["_links"]["self"]["href"]
    return dict(r.json())


def test_subscription_crud(client: TestClient, receiver: CallbackReceiver) -> None:
    sub = subscribe(client, receiver.url(), serNames=["x"])
    href = sub["_links"]["self"]["href"]
    assert sub["filteringCriteria"] == {"serNames": ["x"]}
    assert client.get(href, headers=auth("a-all")).json() == sub
    listing = client.get(f"{MGMT}/applications/app-a/subscriptions", headers=auth("a-all")).json()
    assert listing["_links"]["subscriptions"] == [
        {"href": href, "rel": "SerAvailabilityNotificationSubscription"}]
    assert client.get(href, headers=auth("b-all")).status_code == 403
    other_app = href.replace("/app-a/", "/app-c/")
    assert client.get(other_app, headers=auth("c-all")).status_code == 404
    assert client.delete(href, headers=auth("a-all")).status_code == 204
    assert client.get(href, headers=auth("a-all")).status_code == 404
    # The app-support API keeps its own subscriptions: the ids do not cross over.
    assert client.get(href.replace(MGMT, SUPPORT), headers=auth("a-all")).status_code == 404


@pytest.mark.parametrize(("change", "check"), [
    ({"subscriptionType": "AppTerminationNotificationSubscription"}, "subscription-type"),
    ({"callbackReference": "file:///etc/passwd"}, "callback-reference"),
    ({"callbackReference": "/relative/cb"}, "callback-reference"),
])
def test_bad_subscriptions(client: TestClient, change: dict[str, str], check: str) -> None:
    body = {"subscriptionType": "SerAvailabilityNotificationSubscription",
            "callbackReference": "http://127.0.0.1:9/cb", **change}
    r = client.post(f"{MGMT}/applications/app-a/subscriptions", json=body,
                    headers=auth("a-all"))
    assert r.status_code == 400 and r.json()["check"] == check


def test_availability_notifications(client: TestClient, receiver: CallbackReceiver) -> None:
    watching_x = subscribe(client, receiver.url("/x"), serNames=["x"])
    subscribe(client, receiver.url("/inactive"), states=["INACTIVE"])
    subscribe(client, receiver.url("/tenant-b"), token="b-all", app="app-b")

    created = client.post(f"{MGMT}/applications/app-a/services", json=service_body("x"),
                          headers=auth("a-all")).json()
    client.post(f"{MGMT}/applications/app-a/services", json=service_body("y"),
                headers=auth("a-all"))
    [added] = receiver.wait_for(1)
    assert added["path"] == "/x"
    assert added["body"] == {
        "notificationType": "SerAvailabilityNotificationSubscription",
        "serviceReferences": [{
            "link": {"href": f"http://testserver{MGMT}/services/{created['serInstanceId']}"},
            "serName": "x", "serInstanceId": created["serInstanceId"], "state": "ACTIVE",
            "changeType": "ADDED"}],
        "_links": {"subscription": {"href": watching_x["_links"]["self"]["href"]}}}

    url = f"{MGMT}/applications/app-a/services/{created['serInstanceId']}"
    client.put(url, json={**created, "state": "INACTIVE"}, headers=auth("a-all"))
    got = receiver.wait_for(3)
    changes = sorted((n["path"], n["body"]["serviceReferences"][0]["changeType"])
                     for n in got[1:])
    assert changes == [("/inactive", "STATE_CHANGED"), ("/x", "STATE_CHANGED")]
    client.put(url, json={**created, "state": "INACTIVE", "version": "2"}, headers=auth("a-all"))
    client.delete(url, headers=auth("a-all"))
    got = receiver.wait_for(7)
    later = sorted((n["path"], n["body"]["serviceReferences"][0]["changeType"])
                   for n in got[3:])
    assert later == [("/inactive", "ATTRIBUTES_CHANGED"), ("/inactive", "REMOVED"),
                     ("/x", "ATTRIBUTES_CHANGED"), ("/x", "REMOVED")]
    # A PUT that changes nothing tells nobody; tenant-b never heard of tenant-a's services.
    time.sleep(0.2)
    assert len(receiver.received) == 7
    assert all(n["path"] != "/tenant-b" for n in receiver.received)


def test_slow_subscriber_does_not_block_the_request(client: TestClient) -> None:
    slow = CallbackReceiver(delay_s=1.0)
    try:
        subscribe(client, slow.url())
        started = time.monotonic()
        r = client.post(f"{MGMT}/applications/app-a/services", json=service_body(),
                        headers=auth("a-all"))
        assert r.status_code == 201
        assert time.monotonic() - started < 0.5
        assert len(slow.wait_for(1)) == 1
    finally:
        slow.close()


def test_bounded_retries(tmp_path: Path) -> None:
    harness = build(tmp_path / "m.db", NotifierConfig(attempts=3, timeout_s=1, backoff_s=0.01,
                                                           blocked_networks=()))
    flaky, dead = CallbackReceiver(fail_first=2), CallbackReceiver(fail_first=100)
    try:
        with TestClient(harness.app) as client:
            subscribe(client, flaky.url())
            subscribe(client, dead.url())
            client.post(f"{MGMT}/applications/app-a/services", json=service_body(),
                        headers=auth("a-all"))
            assert len(flaky.wait_for(1)) == 1 and flaky.attempts == 3
            # Both outcomes are recorded when the notifier has the answer, which can be after
            # the receiver saw the request: wait for both, not for one and then read the other.
            outcomes = harness.notifier.outcomes
            assert wait_until(lambda: outcomes["failed"] == 1 and outcomes["delivered"] == 1), \
                outcomes
            assert dead.attempts == 3
    finally:
        flaky.close()
        dead.close()


def test_termination_subscription_and_confirmation(harness: Harness, client: TestClient,
                                                   receiver: CallbackReceiver) -> None:
    subs = f"{SUPPORT}/applications/app-a/subscriptions"
    body = {"subscriptionType": "AppTerminationNotificationSubscription",
            "callbackReference": receiver.url("/term"), "appInstanceId": "app-a",
            "_links": {"self": {"href": "x"}}}
    foreign = client.post(subs, json={**body, "appInstanceId": "app-b"}, headers=auth("a-all"))
    assert foreign.status_code == 400 and foreign.json()["check"] == "subscription-app-instance"
    created = client.post(subs, json=body, headers=auth("a-all"))
    assert created.status_code == 201
    sub = created.json()
    assert client.get(subs, headers=auth("a-all")).json()["_links"]["subscriptions"] == [
        {"href": sub["_links"]["self"]["href"], "rel": "AppTerminationNotificationSubscription"}]

    confirm = f"{SUPPORT}/applications/app-a/confirm_termination"
    early = client.post(confirm, json={"operationAction": "TERMINATING"}, headers=auth("a-all"))
    assert early.status_code == 409

    async def terminate() -> int:
        return await notify_termination(harness.store.support, harness.store.registry,
                                        harness.notifier, "https://umec.example", "app-a",
                                        OperationAction.STOPPING, 30, harness.clock)
    assert client.portal is not None
    assert client.portal.call(terminate) == 1
    [note] = receiver.wait_for(1)
    assert note["path"] == "/term" and note["body"] == {
        "notificationType": "AppTerminationNotification", "operationAction": "STOPPING",
        "maxGracefulTimeout": 30,
        "_links": {"subscription": {"href": sub["_links"]["self"]["href"]},
                   "confirmTermination": {
                       "href": f"https://umec.example{confirm}"}}}
    wrong = client.post(confirm, json={"operationAction": "TERMINATING"}, headers=auth("a-all"))
    assert wrong.status_code == 409 and "STOPPING" in wrong.json()["detail"]
    assert client.post(confirm, json={"operationAction": "STOPPING"},
                       headers=auth("a-all")).status_code == 204
    assert client.post(confirm, headers=auth("a-all")).status_code == 409  # nothing pending
    # A stopped app cannot declare itself ready again.
    assert client.post(f"{SUPPORT}/applications/app-a/confirm_ready",
                       json={"indication": "READY"}, headers=auth("a-all")).status_code == 409


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/cb", "http://[::1]:9/cb",
                                 "http://169.254.169.254/latest/meta-data/",
                                 "http://localhost:9/cb", "http://no-such-host.invalid/cb"])
def test_callbacks_to_the_server_itself_or_metadata_are_refused(url: str) -> None:
    import asyncio

    from mec_api.mec011.notifier import CallbackNotifier

    async def main() -> CallbackNotifier:
        notifier = CallbackNotifier()
        notifier.submit(url, {"notificationType": "x"})
        await notifier.drain()
        await notifier.aclose()
        return notifier
    notifier = asyncio.run(main())
    assert notifier.outcomes == {"refused": 1}


def test_liveness_sweep_announces_the_inactive_service(harness: Harness, client: TestClient,
                                                       receiver: CallbackReceiver) -> None:
    import asyncio

    from mec_api.mec011 import sweep_liveness
    subscribe(client, receiver.url("/inactive"), states=["INACTIVE"])
    r = client.post(f"{MGMT}/applications/app-a/services",
                    json=service_body("beating", livenessInterval=10), headers=auth("a-all"))
    assert r.status_code == 201, r.text
    harness.clock.advance(21)  # two intervals without a heartbeat

    async def sweep() -> None:  # one round of umec server's periodic task
        assert await sweep_liveness(harness.context, "https://umec.example") == 1
        await harness.notifier.drain()
    asyncio.run(sweep())
    [note] = receiver.wait_for(1)
    assert note["path"] == "/inactive"
    body = note["body"]
    assert body["serviceReferences"][0]["state"] == "INACTIVE"
    assert body["serviceReferences"][0]["changeType"] == "STATE_CHANGED"
    assert body["_links"]["subscription"]["href"].startswith(
        "https://umec.example/mec_service_mgmt/v1/applications/app-a/subscriptions/")
