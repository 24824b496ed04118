"""State changes reach the outside world: signed webhooks and Kubernetes node label/taint.

A real server, a real webhook receiver on loopback checking the HMAC, and the official
kubernetes client talking to an HTTP-level fake apiserver.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.service.notify.kube import KubernetesNodeSink
from attest.service.notify.webhook import verify_webhook_signature
from tests.support.fake_kube import FakeKube
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from umec.app import build_server
from umec.localserver import ServerThread
from umec.settings import Settings

SECRET = "webhook-secret-of-32-bytes-long!"


class Receiver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.rejected = 0
        received = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    verify_webhook_signature(SECRET.encode(), self.headers["X-Umec-Timestamp"],
                                             body, self.headers["X-Umec-Signature"],
                                             now=time.time())
                except Exception:
                    received.rejected += 1
                    self.send_response(401)
                else:
                    received.events.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_untrusted_node_is_tainted_and_announced(tmp_path: Path, receiver: Receiver) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi.yaml").write_text(k3s_policy("00" * 32))
    with FakeKube() as kube:
        kube.add_node("node-a", labels={"kubernetes.io/hostname": "node-a"})
        settings = Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                            default_node_class="pi-k3s", webhook_urls=[receiver.url],
                            webhook_secret=SECRET)
        server = build_server(settings, listeners=[KubernetesNodeSink(kube.core_v1())])
        with ServerThread(server.app) as http, httpx.Client(base_url=http.url) as client:
            node = SimulatedNode("node-a", client)
            server.attest.config.ek_allowlist = frozenset(
                {hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()})
            node.enroll_and_activate()
            assert node.attest()["state"] == "trusted"
            wait_for(lambda: kube.node("node-a")["metadata"]["labels"].get("umec.io/attested")
                     == "true")
            assert not kube.node("node-a")["spec"].get("taints")

            node.tpm.extend(14, b"tampered")
            assert node.attest()["state"] == "untrusted"
            wait_for(lambda: bool(kube.node("node-a")["spec"].get("taints")))
            node_obj = kube.node("node-a")
            assert node_obj["metadata"]["labels"]["umec.io/attested"] == "false"
            assert node_obj["metadata"]["labels"]["kubernetes.io/hostname"] == "node-a"
            assert {"key": "umec.io/untrusted", "value": "untrusted",
                    "effect": "NoExecute"} in node_obj["spec"]["taints"]
            wait_for(lambda: len(receiver.events) == 2)
    assert receiver.rejected == 0
    first, second = receiver.events
    assert (first["previous"], first["state"]) == ("enrolled", "trusted")
    assert (second["previous"], second["state"]) == ("trusted", "untrusted")
    assert second["failed_checks"] == ["policy.pcr_value"] and second["node"] == "node-a"


def test_server_restart_between_enrol_and_activate_loses_nothing(tmp_path: Path) -> None:
    import base64
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi.yaml").write_text(k3s_policy("00" * 32))
    settings = Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                        default_node_class="pi-k3s")
    node = SimulatedNode("node-a", httpx.Client())
    allow = frozenset({hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()})
    server = build_server(settings)
    server.attest.config.ek_allowlist = allow
    with ServerThread(server.app) as http, httpx.Client(base_url=http.url) as client:
        node.client = client
        challenge = node.enroll().json()
    restarted = build_server(settings)
    restarted.attest.config.ek_allowlist = allow
    with ServerThread(restarted.app) as http, httpx.Client(base_url=http.url) as client:
        node.client = client
        secret = node.tpm.activate_credential(base64.b64decode(challenge["credential_blob"]),
                                              base64.b64decode(challenge["encrypted_secret"]))
        resp = client.post("/attest/v1/nodes/node-a/activate", json={
            "enrollment_id": challenge["enrollment_id"],
            "secret": base64.b64encode(secret).decode()})
        assert resp.status_code == 200
        assert node.attest()["state"] == "trusted"


def test_missed_notification_is_repaired_by_the_periodic_resync(tmp_path: Path) -> None:
    from attest.service.resync import resync_node_labels

    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi.yaml").write_text(k3s_policy("00" * 32))
    with FakeKube() as kube:
        kube.add_node("node-a")
        kube.add_node("node-b")
        sink = KubernetesNodeSink(kube.core_v1(), retries=0, sleep=lambda _s: None)
        settings = Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                            default_node_class="pi-k3s")
        server = build_server(settings)  # no sink on changes: every notification is "missed"
        with ServerThread(server.app) as http, httpx.Client(base_url=http.url) as client:
            nodes = [SimulatedNode(n, client) for n in ("node-a", "node-b")]
            server.attest.config.ek_allowlist = frozenset(
                hashlib.sha256(n.tpm.ek_public.marshal_tpm2b()).hexdigest() for n in nodes)
            for n in nodes:
                n.enroll_and_activate()
                assert n.attest()["state"] == "trusted"
            nodes[1].tpm.extend(14, b"tampered")
            assert nodes[1].attest()["state"] == "untrusted"
        assert "umec.io/attested" not in kube.node("node-b")["metadata"]["labels"]

        outcome = resync_node_labels(server.attest, sink)
        assert outcome == {"patched": 2}
        assert kube.node("node-a")["metadata"]["labels"]["umec.io/attested"] == "true"
        b = kube.node("node-b")
        assert b["metadata"]["labels"]["umec.io/attested"] == "false"
        assert any(t["key"] == "umec.io/untrusted" for t in b["spec"]["taints"])
        assert resync_node_labels(server.attest, sink) == {"unchanged": 2}

        # Someone removes the taint by hand: the next round puts it back; an API failure is
        # counted and retried at the next round, never raised.
        with kube._lock:
            kube.nodes["node-b"]["spec"].pop("taints")
        kube.fail_next(500, times=1)
        assert resync_node_labels(server.attest, sink) == {"failed": 1, "patched": 1}
        assert any(t["key"] == "umec.io/untrusted"
                   for t in kube.node("node-b")["spec"]["taints"])
        assert resync_node_labels(server.attest, sink) == {"unchanged": 2}
