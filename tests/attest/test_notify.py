"""Node state-change notifications: signed webhooks and Kubernetes Node label/taint.

Everything goes over real sockets: webhooks to a local HTTP receiver that checks signatures with
``verify_webhook_signature``, Kubernetes updates through the official client to ``fake_kube``
(which enforces resourceVersion preconditions and taint uniqueness like the apiserver).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from attest.core.errors import AttestationError
from attest.service.notify import (
    LABEL_KEY,
    TAINT_KEY,
    CompositeSink,
    InvalidNodeStateEvent,
    KubeConfigUnavailable,
    KubernetesNodeSink,
    NodeStateChanged,
    NotifyError,
    StateChangeSink,
    WebhookSecretTooShort,
    WebhookSignatureMalformed,
    WebhookSignatureMismatch,
    WebhookSink,
    WebhookTimestampStale,
    WebhookUrlInvalid,
    encode_body,
    kubernetes_api_from_config,
    plan_node_patch,
    sign_webhook,
    verify_webhook_signature,
)
from attest.service.notify.event import backoff_delay
from tests.support.fake_kube import FakeKube, QuietHTTPServer

SECRET = b"0123456789abcdef-webhook-secret"
FOREIGN = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule",
           "timeAdded": "2026-01-02T03:04:05Z"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def event(state: str, node: str = "edge-1", previous: str | None = None) -> NodeStateChanged:
    return NodeStateChanged(node=node, previous=previous, state=state, reason="quote checked",
                            failed_checks=("quote.pcr_digest",) if state != "trusted" else (),
                            at=datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
                            event_id=str(uuid.uuid4()))


def failures(sink: str) -> float:
    return REGISTRY.get_sample_value("umec_notify_failures_total", {"sink": sink}) or 0.0


# --- the event ----------------------------------------------------------------------------------

def test_event_json_payload() -> None:
    ev = NodeStateChanged("edge-1", "trusted", "untrusted", "pcr 7 changed", ("quote.pcr_digest",),
                          datetime(2026, 11, 27, 13, 0, tzinfo=timezone(timedelta(hours=1))),
                          "evt-1")
    assert ev.to_json() == {
        "type": "node.state_changed", "event_id": "evt-1", "node": "edge-1",
        "previous": "trusted", "state": "untrusted", "reason": "pcr 7 changed",
        "failed_checks": ["quote.pcr_digest"], "at": "2026-11-27T12:00:00Z"}
    assert json.loads(encode_body(ev)) == ev.to_json()


@pytest.mark.parametrize("kwargs", [
    {"state": "evil"}, {"previous": "compromised"}, {"node": ""}, {"event_id": ""},
    {"at": datetime(2026, 1, 1)}, {"failed_checks": ["a"]},
])
def test_event_rejects_bad_fields(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {"node": "n", "previous": None, "state": "stale", "reason": "",
                            "failed_checks": (), "at": datetime.now(UTC), "event_id": "e"}
    with pytest.raises(InvalidNodeStateEvent) as info:
        NodeStateChanged(**(base | kwargs))
    assert isinstance(info.value, AttestationError) and info.value.hint


# --- signatures (pure) --------------------------------------------------------------------------

def test_signature_round_trip_and_boundaries() -> None:
    body = encode_body(event("untrusted"))
    header = sign_webhook(SECRET, "1700000000", body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    verify_webhook_signature(SECRET, "1700000000", body, header, now=1700000000)
    verify_webhook_signature(SECRET, "1700000000", body, header, now=1700000300)  # edge: ok
    verify_webhook_signature(SECRET, "1700000000", body, header, now=1699999700)


def test_tampered_body_rejected() -> None:
    body = encode_body(event("untrusted"))
    header = sign_webhook(SECRET, "1700000000", body)
    forged = body.replace(b'"untrusted"', b'"trusted"')
    assert forged != body
    with pytest.raises(WebhookSignatureMismatch):
        verify_webhook_signature(SECRET, "1700000000", forged, header, now=1700000000)


def test_wrong_secret_rejected() -> None:
    body = encode_body(event("stale"))
    header = sign_webhook(b"another-secret-of-enough-length", "1700000000", body)
    with pytest.raises(WebhookSignatureMismatch):
        verify_webhook_signature(SECRET, "1700000000", body, header, now=1700000000)


def test_stale_and_future_timestamps_rejected() -> None:
    body = encode_body(event("trusted"))
    header = sign_webhook(SECRET, "1700000000", body)
    with pytest.raises(WebhookTimestampStale):
        verify_webhook_signature(SECRET, "1700000000", body, header, now=1700000301)
    with pytest.raises(WebhookTimestampStale):
        verify_webhook_signature(SECRET, "1700000000", body, header, now=1699999000)
    with pytest.raises(WebhookTimestampStale):
        verify_webhook_signature(SECRET, "1700000000", body, header, now=1700000061, tolerance=60)


def test_replay_with_fresh_timestamp_rejected() -> None:
    """Swapping in a new timestamp does not help a replay: the timestamp is under the MAC."""
    body = encode_body(event("trusted"))
    header = sign_webhook(SECRET, "1700000000", body)
    with pytest.raises(WebhookSignatureMismatch):
        verify_webhook_signature(SECRET, "1700009999", body, header, now=1700009999)


@pytest.mark.parametrize(("timestamp", "header"), [
    (None, "sha256=" + "0" * 64), ("", "sha256=" + "0" * 64), ("+1700000000", None),
    ("1700000000\n", "sha256=" + "0" * 64), (" 1700000000", "sha256=" + "0" * 64),
    ("1e9", "sha256=" + "0" * 64), ("1_700_000_000", "sha256=" + "0" * 64),
    ("1700000000", None), ("1700000000", ""), ("1700000000", "sha1=" + "0" * 40),
    ("1700000000", "sha256=" + "0" * 63), ("1700000000", "sha256=" + "A" * 64),
    ("1700000000", "sha256=" + "0" * 64 + "\n"), ("1700000000", "sha256=" + "é" * 64),
])
def test_malformed_headers_rejected(timestamp: str | None, header: str | None) -> None:
    with pytest.raises(WebhookSignatureMalformed):
        verify_webhook_signature(SECRET, timestamp, b"{}", header, now=1700000000)


def test_short_secret_rejected() -> None:
    with pytest.raises(WebhookSecretTooShort):
        verify_webhook_signature(b"short", "1", b"", "sha256=" + "0" * 64, now=1)
    with pytest.raises(WebhookSecretTooShort):
        WebhookSink(["http://127.0.0.1:1/"], b"", httpx.AsyncClient())


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "/relative", "http:///nohost", ""])
def test_invalid_urls_rejected(url: str) -> None:
    with pytest.raises(WebhookUrlInvalid):
        WebhookSink([url], SECRET, httpx.AsyncClient())


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=20)), st.one_of(st.none(), st.text(max_size=80)),
       st.binary(max_size=64), st.integers(min_value=0, max_value=2**40))
def test_fuzz_verifier_raises_only_typed_errors(timestamp: str | None, header: str | None,
                                                 body: bytes, now: int) -> None:
    try:
        verify_webhook_signature(SECRET, timestamp, body, header, now=now)
    except NotifyError:
        return
    pytest.fail("random headers verified")  # a random 256-bit MAC must never match


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=256), st.data())
def test_fuzz_any_bit_flip_is_detected(body: bytes, data: st.DataObject) -> None:
    header = sign_webhook(SECRET, "1700000000", body)
    verify_webhook_signature(SECRET, "1700000000", body, header, now=1700000000)
    pos = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(body)
    flipped[pos] ^= 1 << bit
    with pytest.raises(WebhookSignatureMismatch):
        verify_webhook_signature(SECRET, "1700000000", bytes(flipped), header, now=1700000000)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    assert [backoff_delay(n, 0.5, 3.0, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [
        0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff_delay(3, 0.5, 3.0, lambda: 0.25) == 0.5
    assert backoff_delay(3, 0.5, 3.0, lambda: 0.0) == 0.0


# --- webhook delivery over HTTP ------------------------------------------------------------------

class Receiver:
    """A real HTTP webhook receiver that verifies every request it gets."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0,
                 headers: dict[str, str] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.extra_headers = headers or {}
        self.received: list[dict[str, Any]] = []
        self.server = QuietHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                verdict = "ok"
                try:
                    verify_webhook_signature(SECRET, self.headers.get("X-Umec-Timestamp"), body,
                                             self.headers.get("X-Umec-Signature"),
                                             now=time.time())
                except NotifyError as err:
                    verdict = err.check
                receiver.received.append({"headers": dict(self.headers), "body": body,
                                          "verdict": verdict, "path": self.path})
                time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if verdict != "ok":
                    status = 401
                self.send_response(status)
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


class SleepRecorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.mark.anyio
async def test_webhook_delivered_and_verified_by_receiver(receiver: Receiver) -> None:
    ev = event("untrusted", previous="trusted")
    async with httpx.AsyncClient() as client:
        sink = WebhookSink([receiver.url("/a"), receiver.url("/b")], SECRET, client)
        assert isinstance(sink, StateChangeSink)
        await sink.publish(ev)
    assert sorted(r["path"] for r in receiver.received) == ["/a", "/b"]
    for got in receiver.received:
        assert got["verdict"] == "ok"
        assert got["headers"]["X-Umec-Event"] == "node.state_changed"
        assert got["headers"]["X-Umec-Delivery"] == ev.event_id
        assert got["headers"]["Content-Type"] == "application/json"
        assert abs(int(got["headers"]["X-Umec-Timestamp"]) - time.time()) < 5
        assert json.loads(got["body"]) == ev.to_json()


@pytest.mark.anyio
async def test_webhook_retries_500_then_succeeds() -> None:
    receiver, sleeps = Receiver(statuses=[500, 502]), SleepRecorder()
    before = failures("webhook")
    start = int(time.time())
    ticks = iter(range(start, start + 100, 7))
    try:
        async with httpx.AsyncClient() as client:
            sink = WebhookSink([receiver.url()], SECRET, client, retries=3, sleep=sleeps,
                               backoff_base=0.5, rng=lambda: 1.0, clock=lambda: next(ticks))
            await sink.publish(event("stale"))
    finally:
        receiver.close()
    assert len(receiver.received) == 3
    assert sleeps.delays == [0.5, 1.0]
    assert failures("webhook") == before
    ids = {r["headers"]["X-Umec-Delivery"] for r in receiver.received}
    stamps = [r["headers"]["X-Umec-Timestamp"] for r in receiver.received]
    assert len(ids) == 1 and stamps == [str(start), str(start + 7), str(start + 14)]
    for r in receiver.received:  # each attempt is signed for its own timestamp
        ts = r["headers"]["X-Umec-Timestamp"]
        verify_webhook_signature(SECRET, ts, r["body"], r["headers"]["X-Umec-Signature"],
                                 now=int(ts))


@pytest.mark.anyio
async def test_webhook_gives_up_after_retries_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    receiver, sleeps = Receiver(statuses=[503] * 10), SleepRecorder()
    before = failures("webhook")
    url = receiver.url("/hook?token=topsecret")
    try:
        async with httpx.AsyncClient() as client:
            with caplog.at_level(logging.WARNING):
                await WebhookSink([url], SECRET, client, retries=2, sleep=sleeps).publish(
                    event("untrusted"))
    finally:
        receiver.close()
    assert len(receiver.received) == 3 and len(sleeps.delays) == 2
    assert failures("webhook") == before + 1
    [record] = [r for r in caplog.records if r.getMessage() == "webhook delivery failed"]
    assert record.__dict__["attempts"] == 3 and record.__dict__["error"] == "HTTP 503"
    assert "topsecret" not in record.__dict__["url"] and "topsecret" not in caplog.text


@pytest.mark.anyio
async def test_webhook_4xx_is_final() -> None:
    receiver, sleeps = Receiver(statuses=[400, 200]), SleepRecorder()
    before = failures("webhook")
    try:
        async with httpx.AsyncClient() as client:
            await WebhookSink([receiver.url()], SECRET, client, sleep=sleeps).publish(
                event("trusted"))
    finally:
        receiver.close()
    assert len(receiver.received) == 1 and sleeps.delays == []
    assert failures("webhook") == before + 1


@pytest.mark.anyio
async def test_webhook_429_honours_retry_after_up_to_cap() -> None:
    receiver = Receiver(statuses=[429, 429], headers={"Retry-After": "7"})
    sleeps = SleepRecorder()
    try:
        async with httpx.AsyncClient() as client:
            await WebhookSink([receiver.url()], SECRET, client, sleep=sleeps, backoff_base=0.1,
                              backoff_max=5.0, rng=lambda: 0.5).publish(event("trusted"))
    finally:
        receiver.close()
    assert len(receiver.received) == 3 and sleeps.delays == [5.0, 5.0]


@pytest.mark.anyio
async def test_webhook_receiver_down_does_not_raise_and_is_counted(
        receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    before = failures("webhook")
    sleeps = SleepRecorder()
    async with httpx.AsyncClient() as client:
        sink = WebhookSink([closed_port_url(), receiver.url()], SECRET, client, retries=2,
                           sleep=sleeps)
        with caplog.at_level(logging.WARNING):
            await sink.publish(event("untrusted"))
    assert failures("webhook") == before + 1  # only the dead URL
    assert [r["verdict"] for r in receiver.received] == ["ok"]  # the live one still got it
    assert len(sleeps.delays) == 2
    [record] = [r for r in caplog.records if r.getMessage() == "webhook delivery failed"]
    assert record.__dict__["error"].startswith("ConnectError")


@pytest.mark.anyio
async def test_webhook_timeout_is_retried() -> None:
    receiver = Receiver(delay=0.5)
    before = failures("webhook")
    try:
        async with httpx.AsyncClient() as client:
            await WebhookSink([receiver.url()], SECRET, client, timeout=0.1, retries=1,
                              sleep=SleepRecorder()).publish(event("stale"))
    finally:
        receiver.close()
    assert len(receiver.received) == 2 and failures("webhook") == before + 1


# --- Kubernetes Node label and taint -------------------------------------------------------------

@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        fake.add_node("edge-1", labels={"kubernetes.io/hostname": "edge-1"}, taints=[FOREIGN])
        yield fake


def make_sink(kube: FakeKube, **kwargs: Any) -> KubernetesNodeSink:
    return KubernetesNodeSink(kube.core_v1(), sleep=lambda _: None, **kwargs)


def our_taints(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in node["spec"].get("taints") or [] if t["key"] == TAINT_KEY]


@pytest.mark.anyio
async def test_untrusted_labels_and_taints_keeping_others(kube: FakeKube) -> None:
    await make_sink(kube).publish(event("untrusted"))
    node = kube.node("edge-1")
    assert node["metadata"]["labels"] == {"kubernetes.io/hostname": "edge-1", LABEL_KEY: "false"}
    assert node["spec"]["taints"] == [
        FOREIGN, {"key": TAINT_KEY, "value": "untrusted", "effect": "NoExecute"}]
    [get, patch] = kube.requests
    assert (get.method, get.path, patch.method) == ("GET", "/api/v1/nodes/edge-1", "PATCH")
    assert patch.content_type == "application/merge-patch+json" and patch.status == 200
    assert patch.body["metadata"]["resourceVersion"] == "1001"  # the precondition is sent


@pytest.mark.anyio
async def test_trusted_removes_taint_and_sets_label(kube: FakeKube) -> None:
    sink = make_sink(kube)
    await sink.publish(event("untrusted"))
    await sink.publish(event("trusted", previous="untrusted"))
    node = kube.node("edge-1")
    assert node["metadata"]["labels"][LABEL_KEY] == "true"
    assert node["spec"]["taints"] == [FOREIGN]
    assert [r.status for r in kube.calls("PATCH")] == [200, 200]


@pytest.mark.anyio
async def test_trusted_on_untainted_node_drops_empty_taint_list(kube: FakeKube) -> None:
    kube.add_node("edge-2")
    await make_sink(kube).publish(event("untrusted", node="edge-2"))
    await make_sink(kube).publish(event("trusted", node="edge-2"))
    node = kube.node("edge-2")
    assert node["metadata"]["labels"] == {LABEL_KEY: "true"} and "taints" not in node["spec"]


@pytest.mark.anyio
@pytest.mark.parametrize("state", ["stale", "enrolled"])
async def test_stale_and_enrolled_replace_value_without_duplicates(kube: FakeKube,
                                                                   state: str) -> None:
    sink = make_sink(kube)
    await sink.publish(event("untrusted"))
    await sink.publish(event(state, previous="untrusted"))
    node = kube.node("edge-1")
    assert node["metadata"]["labels"][LABEL_KEY] == "false"
    assert node["spec"]["taints"] == [
        FOREIGN, {"key": TAINT_KEY, "value": state, "effect": "NoExecute"}]


@pytest.mark.anyio
async def test_repeat_is_idempotent_and_writes_nothing(kube: FakeKube) -> None:
    sink = make_sink(kube)
    await sink.publish(event("untrusted"))
    after_first = kube.node("edge-1")
    await sink.publish(event("untrusted"))
    await sink.publish(event("untrusted"))
    assert kube.node("edge-1") == after_first  # resourceVersion unchanged too
    assert len(kube.calls("PATCH")) == 1 and len(kube.calls("GET")) == 3


@pytest.mark.anyio
async def test_existing_duplicates_of_our_key_collapse_to_one(kube: FakeKube) -> None:
    ours = {"key": TAINT_KEY, "value": "untrusted", "effect": "NoExecute",
            "timeAdded": "2026-01-01T00:00:00Z"}
    kube.add_node("edge-3", taints=[{"key": TAINT_KEY, "value": "x", "effect": "NoSchedule"},
                                    FOREIGN, ours])
    await make_sink(kube).publish(event("untrusted", node="edge-3"))
    taints = kube.node("edge-3")["spec"]["taints"]
    assert taints == [{"key": TAINT_KEY, "value": "untrusted", "effect": "NoExecute"}, FOREIGN]


def test_plan_keeps_our_matching_taint_untouched() -> None:
    ours = {"key": TAINT_KEY, "value": "stale", "effect": "NoExecute",
            "timeAdded": "2026-01-01T00:00:00Z"}
    node: dict[str, Any] = {"metadata": {"resourceVersion": "5", "labels": {}},
                            "spec": {"taints": [ours]}}
    assert plan_node_patch(node, "stale") == {
        "metadata": {"labels": {LABEL_KEY: "false"}, "resourceVersion": "5"}}
    node["metadata"]["labels"] = {LABEL_KEY: "false"}
    assert plan_node_patch(node, "stale") is None
    assert plan_node_patch({"metadata": {"resourceVersion": "5"}}, "trusted") == {
        "metadata": {"labels": {LABEL_KEY: "true"}, "resourceVersion": "5"}}


@pytest.mark.anyio
async def test_conflict_is_retried_without_clobbering_the_other_writer(kube: FakeKube) -> None:
    cordon = {"key": "maintenance.example.com/drain", "effect": "NoSchedule"}
    kube.concurrent_writer(lambda node: node["spec"]["taints"].append(cordon))
    await make_sink(kube).publish(event("untrusted"))
    assert [(r.method, r.status) for r in kube.requests] == [
        ("GET", 200), ("PATCH", 409), ("GET", 200), ("PATCH", 200)]
    assert kube.node("edge-1")["spec"]["taints"] == [
        FOREIGN, cordon, {"key": TAINT_KEY, "value": "untrusted", "effect": "NoExecute"}]


@pytest.mark.anyio
async def test_endless_conflicts_give_up_counted(kube: FakeKube,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    kube.concurrent_writer(lambda node: None, times=50)
    before = failures("kubernetes")
    with caplog.at_level(logging.WARNING):
        await make_sink(kube, conflict_retries=2).publish(event("untrusted"))
    assert [r.status for r in kube.calls("PATCH")] == [409, 409, 409]
    assert failures("kubernetes") == before + 1
    [record] = [r for r in caplog.records if r.getMessage() == "kubernetes node update failed"]
    assert record.__dict__["error"].startswith("NodeUpdateConflicts")


@pytest.mark.anyio
async def test_unknown_node_is_tolerated(kube: FakeKube, caplog: pytest.LogCaptureFixture) -> None:
    before = failures("kubernetes")
    with caplog.at_level(logging.WARNING):
        await make_sink(kube).publish(event("untrusted", node="not-a-k8s-node"))
    assert [(r.method, r.status) for r in kube.requests] == [("GET", 404)]
    assert failures("kubernetes") == before
    assert "not a kubernetes node" in caplog.text


@pytest.mark.anyio
async def test_transient_apiserver_error_is_retried(kube: FakeKube) -> None:
    kube.fail_next(503)
    await make_sink(kube).publish(event("untrusted"))
    assert [r.status for r in kube.requests] == [503, 200, 200]
    assert our_taints(kube.node("edge-1"))


@pytest.mark.anyio
async def test_forbidden_is_final_and_counted(kube: FakeKube) -> None:
    kube.fail_next(403, times=5)
    before = failures("kubernetes")
    await make_sink(kube).publish(event("untrusted"))
    assert [r.status for r in kube.requests] == [403]
    assert failures("kubernetes") == before + 1 and not our_taints(kube.node("edge-1"))


@pytest.mark.anyio
async def test_apiserver_unreachable_does_not_raise() -> None:
    import kubernetes.client

    api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(
        kubernetes.client.Configuration(host=closed_port_url().removesuffix("/hook"))))
    before = failures("kubernetes")
    await KubernetesNodeSink(api, retries=1, sleep=lambda _: None).publish(event("stale"))
    assert failures("kubernetes") == before + 1


@pytest.mark.anyio
async def test_events_for_one_node_apply_in_publish_order(kube: FakeKube) -> None:
    sink = make_sink(kube)
    await asyncio.gather(sink.publish(event("untrusted")), sink.publish(event("stale")),
                         sink.publish(event("trusted")))
    node = kube.node("edge-1")
    assert node["metadata"]["labels"][LABEL_KEY] == "true" and node["spec"]["taints"] == [FOREIGN]


@pytest.mark.anyio
async def test_api_from_kubeconfig_file(kube: FakeKube, tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}]}))
    api = kubernetes_api_from_config(config, in_cluster=False)
    await KubernetesNodeSink(api).publish(event("untrusted"))
    assert our_taints(kube.node("edge-1"))


def test_api_config_errors_are_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KubeConfigUnavailable):
        kubernetes_api_from_config(tmp_path / "missing", in_cluster=False)
    (tmp_path / "broken").write_text("{{{ not yaml")
    with pytest.raises(KubeConfigUnavailable):
        kubernetes_api_from_config(tmp_path / "broken", in_cluster=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeConfigUnavailable):
        kubernetes_api_from_config(None, in_cluster=True)
    with pytest.raises(KubeConfigUnavailable):
        kubernetes_api_from_config(tmp_path / "broken", in_cluster=True)


# --- the fake apiserver behaves like one for other patch types ------------------------------------

def test_fake_kube_json_and_strategic_patches(kube: FakeKube) -> None:
    from kubernetes.client.exceptions import ApiException

    api = kube.core_v1()
    api.patch_node("edge-1", [{"op": "add", "path": "/metadata/labels/a~1b", "value": "1"}])
    assert kube.requests[-1].content_type == "application/json-patch+json"
    api.patch_node("edge-1", {"metadata": {"labels": {"c": "2"}}},
                   _content_type="application/strategic-merge-patch+json")
    metadata = api.read_node("edge-1").metadata  # the generated model parses our JSON
    assert metadata is not None and metadata.labels is not None
    assert metadata.labels["a/b"] == "1" and metadata.labels["c"] == "2"
    cases: list[tuple[Any, str | None, int]] = [
        ([{"op": "test", "path": "/metadata/name", "value": "x"}], None, 422),
        ({"spec": {"taints": [FOREIGN, FOREIGN]}}, "application/merge-patch+json", 422),
        ({"spec": {"$patch": "replace"}}, "application/strategic-merge-patch+json", 415),
        ({"metadata": {"resourceVersion": "1"}}, "application/merge-patch+json", 409),
    ]
    for body, ctype, status in cases:
        with pytest.raises(ApiException) as info:
            api.patch_node("edge-1", body, _content_type=ctype)
        assert info.value.status == status


# --- composite ------------------------------------------------------------------------------------

class Exploding:
    name = "exploding"

    async def publish(self, event: NodeStateChanged) -> None:
        raise RuntimeError("boom")


class Recording:
    def __init__(self) -> None:
        self.events: list[NodeStateChanged] = []

    async def publish(self, event: NodeStateChanged) -> None:
        await asyncio.sleep(0)
        self.events.append(event)


@pytest.mark.anyio
async def test_composite_isolates_a_raising_sink() -> None:
    first, last = Recording(), Recording()
    before = failures("exploding")
    ev = event("untrusted")
    await CompositeSink([first, Exploding(), last]).publish(ev)
    assert first.events == [ev] and last.events == [ev]
    assert failures("exploding") == before + 1


@pytest.mark.anyio
async def test_composite_end_to_end(kube: FakeKube, receiver: Receiver) -> None:
    async with httpx.AsyncClient() as client:
        sink = CompositeSink([WebhookSink([receiver.url()], SECRET, client),
                              make_sink(kube)])
        await sink.publish(event("stale", previous="trusted"))
    assert [r["verdict"] for r in receiver.received] == ["ok"]
    assert our_taints(kube.node("edge-1"))[0]["value"] == "stale"


def test_kube_sink_usable_from_successive_event_loops(kube: FakeKube) -> None:
    """Callers without a running loop publish via asyncio.run: per-node locks must not leak."""
    sink = make_sink(kube)

    async def twice(state: str) -> None:  # contended lock: the second publish waits on it
        await asyncio.gather(sink.publish(event(state)), sink.publish(event(state)))

    for state in ("untrusted", "trusted", "stale"):
        asyncio.run(asyncio.wait_for(twice(state), 10))
    assert our_taints(kube.node("edge-1"))[0]["value"] == "stale"
    assert len(kube.calls("PATCH")) == 3
