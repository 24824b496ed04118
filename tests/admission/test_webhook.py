"""The webhook over real TLS (uvicorn + admission.service.certs, httpx with the CA): every kind at
/mutate and /validate, the attacks, deadline, single flight, cache and metrics. Registry and
signatures are in-process fakes of the webhook's Protocols (G's/H's parts are tested with a real
registry in their own tests; the lead re-runs these attacks with them)."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from admission.core.policy import load_policies
from admission.service.admit import Admitter
from admission.service.cache import SingleFlightCache
from admission.service.rego import RegoEvaluator
from admission.service.webhook import WebhookDeps, create_webhook_app, router
from tests.support.metrics import METRICS_TOKEN, metrics_auth
from tests.support.webhook import (
    D1,
    D2,
    D3,
    FakeRecords,
    FakeResolver,
    FakeVerifier,
    authority,
    key,
    kid,
    pod_spec,
    review,
    serve_tls,
    workload,
)

REG = "127.0.0.1:5000"
A_KEY, B_KEY, EVIL = key(), key(), key()
APP, OTHER = f"{REG}/tenant/app", f"{REG}/tenant/other"
KINDS = ["Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob"]
REGO = RegoEvaluator()


def tls(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def make_deps(**kw: Any) -> tuple[WebhookDeps, FakeResolver, FakeVerifier, FakeRecords]:
    from tests.support.webhook import policy_doc
    policies = load_policies([
        policy_doc("a", [f"{REG}/**"], [authority("a", {"a": A_KEY})], namespace="tenant-a"),
        policy_doc("b", [f"{REG}/**"], [authority("b", {"b": B_KEY})], namespace="tenant-b"),
        policy_doc("w", [f"{REG}/**"], [authority("a", {"a": A_KEY})], namespace="tenant-w",
                   mode="warn")])
    resolver = FakeResolver({f"{APP}:1": D1, f"{OTHER}:1": D2})
    verifier = FakeVerifier()
    verifier.sign(f"{APP}@{D1}", A_KEY)
    records = FakeRecords()
    deps = WebhookDeps(policies=lambda: policies, resolver=resolver, verifier=verifier,
                       rego=REGO, records=records, **kw)
    return deps, resolver, verifier, records


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Any]]:
    deps, resolver, verifier, records = make_deps(timeout_seconds=2.0,
                                                  metrics_token=METRICS_TOKEN)
    with serve_tls(create_webhook_app(deps), tmp_path_factory.mktemp("certs")) as (url, ca), \
            httpx.Client(base_url=url, verify=tls(ca), timeout=10) as client:
        yield client, (deps, resolver, verifier, records)


def post(client: httpx.Client, path: str, doc: Any) -> dict[str, Any]:
    r = client.post(path, content=json.dumps(doc).encode(),
                    headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    return dict(body["response"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_mutate_pins_then_validate_admits(server: Any, kind: str) -> None:
    client, (_, _, _, records) = server
    obj = workload(kind, pod_spec([f"{APP}:1"], init=[f"{APP}:1"]), uid=f"uid-{kind}")
    m = post(client, "/mutate", review(obj, uid=f"m-{kind}"))
    assert m["uid"] == f"m-{kind}" and m["allowed"] and m["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(m["patch"]))
    replaced = [op for op in patch if op["op"] == "replace"]
    assert len(replaced) == 2 and all(op["value"] == f"{APP}:1@{D1}" for op in replaced)
    tag_only = post(client, "/validate", review(obj, uid=f"t-{kind}"))
    assert not tag_only["allowed"] and "digest.required" in tag_only["status"]["message"]
    pinned = workload(kind, pod_spec([f"{APP}:1@{D1}"], init=[f"{APP}@{D1}"]),
                      uid=f"uid-{kind}")
    v = post(client, "/validate", review(pinned, uid=f"v-{kind}"))
    assert v == {"uid": f"v-{kind}", "allowed": True}
    if kind == "Pod":
        row = next(r for r in records.rows if r["uid"] == "uid-Pod")
        assert row["namespace"] == "tenant-a" and row["verified"]
        assert [(i.digest, i.signers) for i in row["images"]] == [(D1, (kid(A_KEY),))] * 2


def test_unsigned_init_and_ephemeral_container_denied(server: Any) -> None:
    client, _ = server
    pod = workload("Pod", pod_spec([f"{APP}@{D1}"], init=[f"{OTHER}@{D2}"]))
    r = post(client, "/validate", review(pod))
    assert not r["allowed"]
    msg = r["status"]["message"]
    assert f"spec.initContainers[0]: image {OTHER}@{D2}: policy.unsatisfied" in msg
    assert "spec.containers[0]" not in msg
    eph = workload("Pod", pod_spec([f"{APP}@{D1}"], ephemeral=[f"{OTHER}@{D2}"]))
    r = post(client, "/validate", review(eph, operation="UPDATE",
                                         sub_resource="ephemeralcontainers"))
    assert not r["allowed"] and "spec.ephemeralContainers[0]" in r["status"]["message"]


def test_tenant_b_cannot_run_image_signed_only_by_tenant_a(server: Any) -> None:
    client, _ = server
    pod = workload("Pod", pod_spec([f"{APP}@{D1}"]), namespace="tenant-b")
    r = post(client, "/validate", review(pod))
    assert not r["allowed"]
    assert "ImagePolicy/tenant-b/b" in r["status"]["message"]
    assert "0 of the required 1" in r["status"]["message"]


def test_untrusted_key_copied_signature_and_moved_tag(server: Any) -> None:
    client, (_, resolver, verifier, _) = server
    verifier.sign(f"{OTHER}@{D3}", EVIL)                  # signed, but by an untrusted key
    verifier.sign(f"{OTHER}@{D2}", A_KEY, digest=D1)      # A's signature copied from APP
    for image in (f"{OTHER}@{D3}", f"{OTHER}@{D2}"):
        r = post(client, "/validate", review(workload("Pod", pod_spec([image]))))
        assert not r["allowed"] and "policy.unsatisfied" in r["status"]["message"], image
    # The tag moves to an unsigned digest after signing: /mutate pins the new digest (after the
    # resolve TTL) and /validate denies it.
    resolver.tags[f"{APP}:2"] = D3
    m = post(client, "/mutate", review(workload("Pod", pod_spec([f"{APP}:2"]))))
    pinned = json.loads(base64.b64decode(m["patch"]))[1]["value"]
    assert pinned == f"{APP}:2@{D3}"
    r = post(client, "/validate", review(workload("Pod", pod_spec([pinned]))))
    assert not r["allowed"]


def test_unmatched_image_denied_and_warn_mode_admits_with_warning(server: Any) -> None:
    client, (_, _, _, records) = server
    r = post(client, "/validate", review(workload("Pod", pod_spec([f"other.example/x@{D1}"]))))
    assert not r["allowed"] and "policy.no_match" in r["status"]["message"]
    w = post(client, "/validate", review(workload("Pod", pod_spec([f"{OTHER}@{D2}"]),
                                                  namespace="tenant-w", uid="uid-w")))
    assert w["allowed"] and "warn mode" in w["warnings"][0]
    assert next(r for r in records.rows if r["uid"] == "uid-w")["verified"] is False


def test_own_namespace_and_non_create_untouched(server: Any) -> None:
    client, _ = server
    pod = workload("Pod", pod_spec(["unsigned:latest"]), namespace="umec-system")
    assert post(client, "/validate", review(pod)) == {"uid": "req-1", "allowed": True}
    assert post(client, "/mutate", review(pod)) == {"uid": "req-1", "allowed": True}
    other = review(workload("Pod", pod_spec(["unsigned:latest"])), operation="DELETE")
    assert post(client, "/validate", other)["allowed"]


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"apiVersion": "admission.k8s.io/v1"}',
                                  json.dumps({"apiVersion": "admission.k8s.io/v1",
                                              "kind": "AdmissionReview",
                                              "request": {"uid": "u"}}).encode()])
def test_malformed_reviews_rejected_cleanly(server: Any, body: bytes) -> None:
    client, _ = server
    for path in ("/mutate", "/validate"):
        r = client.post(path, content=body)
        assert r.status_code == 400
        assert r.json()["check"] == "review.malformed" and "Traceback" not in r.text


def test_oversized_review_rejected(server: Any) -> None:
    client, _ = server
    doc = review(workload("Pod", pod_spec([f"{APP}@{D1}"])))
    doc["request"]["object"]["metadata"]["annotations"] = {"x": "a" * (3 * 1024 * 1024)}
    r = client.post("/validate", content=json.dumps(doc).encode())
    assert r.status_code == 413 and r.json()["check"] == "review.too_large"

    def chunks() -> Iterator[bytes]:     # no Content-Length: the streamed limit applies
        yield b'{"a": "'
        for _ in range(64):
            yield b"a" * 65536
    r = client.post("/validate", content=chunks())
    assert r.status_code == 413


def test_health_and_metrics(server: Any) -> None:
    client, (deps, *_rest) = server
    assert client.get("/healthz").json()["policy_generation"] == deps.policies().generation
    refused = client.get("/metrics")   # the metrics token (tests/umec/test_metrics_access.py)
    assert refused.status_code == 401 and refused.json()["check"] == "metrics.unauthorized"
    text = client.get("/metrics", headers=metrics_auth()).text
    for name in ("umec_admission_admitted_total", "umec_admission_denied_total",
                 "umec_admission_cache_hits_total", "umec_admission_registry_seconds_bucket"):
        assert name in text


def test_registry_hanging_denied_within_deadline(tmp_path: Path) -> None:
    deps, resolver, verifier, records = make_deps(timeout_seconds=1.5)   # deadline 0.5 s
    resolver.hang = verifier.hang = True
    with serve_tls(create_webhook_app(deps), tmp_path) as (url, ca), \
            httpx.Client(base_url=url, verify=tls(ca), timeout=10) as client:
        for path, image in (("/mutate", f"{APP}:1"), ("/validate", f"{APP}@{D1}")):
            t = time.monotonic()
            r = post(client, path, review(workload("Pod", pod_spec([image]))))
            elapsed = time.monotonic() - t
            assert not r["allowed"] and elapsed < 1.5, elapsed
            msg = r["status"]["message"]
            assert "deadline.exceeded" in msg and "spec.containers[0]" in msg and image in msg
            assert ("'resolve'" if path == "/mutate" else "'verify'") in msg
    assert records.rows == []


def test_registry_down_denied(tmp_path: Path) -> None:
    deps, resolver, _, _ = make_deps()
    resolver.tags.clear()
    with serve_tls(create_webhook_app(deps), tmp_path) as (url, ca), \
            httpx.Client(base_url=url, verify=tls(ca), timeout=10) as client:
        r = post(client, "/mutate", review(workload("Pod", pod_spec([f"{APP}:1"]))))
        assert not r["allowed"] and "registry unreachable" in r["status"]["message"]
        assert "step.failed" in r["status"]["message"]


def test_single_flight_and_cache() -> None:
    deps, resolver, verifier, _ = make_deps()
    resolver.delay = verifier.delay = 0.05
    admitter = Admitter(deps)
    from admission.core.review import parse_review

    def req(image: str, uid: str) -> Any:
        return parse_review(json.dumps(review(workload("Pod", pod_spec([image])),
                                              uid=uid)).encode())

    async def burst() -> list[dict[str, Any]]:
        out = await asyncio.gather(*(admitter.validate(req(f"{APP}@{D1}", f"u{i}"))
                                     for i in range(20)))
        out += await asyncio.gather(*(admitter.mutate(req(f"{APP}:1", f"m{i}"))
                                      for i in range(20)))
        out.append(await admitter.validate(req(f"{APP}@{D1}", "again")))
        return out

    results = asyncio.run(burst())
    assert all(r["response"]["allowed"] for r in results)
    assert verifier.calls == 1 and resolver.calls == 1
    assert admitter.verified.joined == 19 and admitter.verified.hits == 1
    # A new policy generation is a new cache key: verified again.
    from tests.support.webhook import policy_doc
    gen2 = load_policies([policy_doc("c", ["**"], [authority("a", {"a": A_KEY})])])
    deps.policies = lambda: gen2
    assert asyncio.run(admitter.validate(req(f"{APP}@{D1}", "gen2")))["response"]["allowed"]
    assert verifier.calls == 2


def test_cache_ttl_and_failures_not_cached() -> None:
    now = [0.0]
    cache: SingleFlightCache[str, int] = SingleFlightCache(10, clock=lambda: now[0])
    calls = []

    async def ok() -> int:
        calls.append(1)
        return len(calls)

    async def boom() -> int:
        raise ConnectionError("down")

    async def run() -> None:
        with pytest.raises(ConnectionError):
            await cache.get("k", boom)
        assert await cache.get("k", ok) == (1, False)
        assert await cache.get("k", ok) == (1, True)
        now[0] = 11
        assert await cache.get("k", ok) == (2, False)

    asyncio.run(run())


@pytest.mark.parametrize("path", ["/mutate", "/validate"])
def test_unsupported_kind_is_denied_not_skipped(server: Any, path: str) -> None:
    """Images of a kind we cannot read are images we did not verify: fail closed."""
    client, _ = server
    obj = {"apiVersion": "batch.example.com/v1", "kind": "PodFactory",
           "metadata": {"name": "x", "namespace": "tenant-a"},
           "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "evil:1"}]}}}}
    answer = post(client, path, review(obj))
    assert answer["allowed"] is False
    assert "PodFactory" in answer["status"]["message"]


def test_router_without_deps_is_a_wiring_error() -> None:
    """The routes find their collaborators on ``app.state.webhook``: an app that includes the
    router without them fails loudly (a 500 without a stack trace), never answers a review."""
    app = FastAPI()
    app.include_router(router)

    async def call(raise_app_exceptions: bool) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://hook") as client:
            return await client.post("/validate", json=review(workload("Pod", pod_spec([APP]))))

    with pytest.raises(RuntimeError, match=r"app\.state\.webhook"):
        asyncio.run(call(True))
    r = asyncio.run(call(False))
    assert r.status_code == 500 and "Traceback" not in r.text
