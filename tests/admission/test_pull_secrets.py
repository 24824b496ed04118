"""A pod's imagePullSecrets: read through the Kubernetes API (official client against the
HTTP-level fake apiserver), used for tag resolution and signature fetches, never borrowed across
namespaces, and failing closed when the API cannot be read. The last test runs the real webhook
against a real docker-registry with Basic auth."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from admission.core.policy import load_policies
from admission.core.reference import parse_reference
from admission.core.review import PullSecretRefs, ReviewMalformed, parse_review, pull_secret_refs
from admission.registry.client import RegistryClient
from admission.registry.credentials import Credentials
from admission.registry.pull_secrets import KubePullSecrets, PullSecretsUnavailable
from admission.service.admit import Admitter
from admission.service.rego import RegoEvaluator
from admission.service.webhook import WebhookDeps, create_webhook_app
from admission.signing.sign import sign_image
from keys import generate_private_key, public_key_pem
from tests.support.fake_kube import FakeKube
from tests.support.oci_images import push_image
from tests.support.registry import USERS, RunningRegistry, requires_registry
from tests.support.webhook import (
    D1,
    FakeRecords,
    FakeResolver,
    FakeVerifier,
    authority,
    key,
    pod_spec,
    policy_doc,
    review,
    serve_tls,
    workload,
)

DOCKERCONFIG = "kubernetes.io/dockerconfigjson"
REG = "registry.example.com:5000"


def dockerconfig(host: str, user: str, password: str) -> dict[str, str]:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    doc = json.dumps({"auths": {host: {"auth": auth}}}).encode()
    return {".dockerconfigjson": base64.b64encode(doc).decode()}


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        fake.add_secret("tenant-a", "regcred", DOCKERCONFIG, dockerconfig(REG, "alice", "pw-a"))
        fake.add_secret("tenant-a", "other", DOCKERCONFIG,
                        dockerconfig("other.example.com", "x", "y"))
        fake.add_secret("tenant-a", "opaque", "Opaque", {"password": "c2VjcmV0"})
        fake.add_secret("tenant-b", "b-cred", DOCKERCONFIG, dockerconfig(REG, "bob", "pw-b"))
        fake.add_service_account("tenant-a", "builder", ["regcred"])
        yield fake


def source(kube: FakeKube, **kw: Any) -> KubePullSecrets:
    return KubePullSecrets(kube.core_v1(), **kw)


def tls(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def user_for(creds: Credentials | None, host: str = REG) -> str | None:
    found = creds.lookup(host) if creds is not None else None
    return found.username if found is not None else None


# --- the pure part: where the pod names its secrets ------------------------------------------

def test_refs_from_every_kind_and_defaults() -> None:
    spec = pod_spec(["a"]) | {"imagePullSecrets": [{"name": "one"}, {"name": "two"},
                                                   {"name": "one"}],
                              "serviceAccountName": "builder"}
    for kind in ("Pod", "Deployment", "CronJob"):
        refs = pull_secret_refs(kind, workload(kind, spec))
        assert refs == PullSecretRefs(("one", "two"), "builder")
    assert pull_secret_refs("Pod", workload("Pod", pod_spec(["a"]))) == \
        PullSecretRefs((), "default")


@pytest.mark.parametrize("bad", [[{"name": "../kube-system/x"}], [{"name": 5}], [{}], "x",
                                 [{"name": "UPPER"}]])
def test_malformed_refs_are_refused(bad: Any) -> None:
    with pytest.raises(ReviewMalformed):
        pull_secret_refs("Pod", workload("Pod", pod_spec(["a"]) | {"imagePullSecrets": bad}))


# --- the adapter over the Kubernetes API -------------------------------------------------------

def test_named_secrets_in_the_pods_namespace(kube: FakeKube) -> None:
    creds = asyncio.run(source(kube).credentials(
        "tenant-a", PullSecretRefs(("opaque", "missing", "regcred", "other"), "default")))
    # Opaque and missing Secrets are skipped, as the kubelet skips them.
    assert user_for(creds) == "alice" and user_for(creds, "other.example.com") == "x"


def test_a_secret_of_another_namespace_is_never_borrowed(kube: FakeKube) -> None:
    # tenant-b names tenant-a's Secret: it is looked up in tenant-b only, and not found there.
    creds = asyncio.run(source(kube).credentials("tenant-b", PullSecretRefs(("regcred",), "x")))
    assert user_for(creds) is None
    paths = [r.path for r in kube.calls("GET")]
    assert paths == ["/api/v1/namespaces/tenant-b/secrets/regcred"]


def test_service_account_secrets_when_the_pod_names_none(kube: FakeKube) -> None:
    creds = asyncio.run(source(kube).credentials("tenant-a", PullSecretRefs((), "builder")))
    assert user_for(creds) == "alice"
    nothing = asyncio.run(source(kube).credentials("tenant-a", PullSecretRefs((), "default")))
    assert len(nothing) == 0


def test_reads_are_cached_per_secret(kube: FakeKube) -> None:
    src = source(kube, ttl=60)
    refs = PullSecretRefs(("regcred",), "default")

    async def twice() -> None:
        await src.credentials("tenant-a", refs)
        await src.credentials("tenant-a", refs)
    asyncio.run(twice())
    assert len(kube.calls("GET")) == 1


@pytest.mark.parametrize("status", [403, 500])
def test_api_errors_fail_closed(kube: FakeKube, status: int) -> None:
    kube.fail_next(status)
    with pytest.raises(PullSecretsUnavailable, match=f"HTTP {status}") as err:
        asyncio.run(source(kube).credentials("tenant-a", PullSecretRefs(("regcred",), "d")))
    assert "umec-webhook-pull-secrets" in err.value.hint


def test_hanging_api_fails_closed(kube: FakeKube) -> None:
    kube.delay = 1.0
    with pytest.raises(PullSecretsUnavailable, match="secret tenant-a/regcred"):
        asyncio.run(source(kube, request_timeout=0.2).credentials(
            "tenant-a", PullSecretRefs(("regcred",), "d")))


def test_malformed_secret_is_a_typed_error(kube: FakeKube) -> None:
    kube.add_secret("tenant-a", "broken", DOCKERCONFIG, {".dockerconfigjson": "!!notbase64"})
    with pytest.raises(Exception, match="tenant-a") as err:
        asyncio.run(source(kube).credentials("tenant-a", PullSecretRefs(("broken",), "d")))
    assert getattr(err.value, "check", "") == "credentials.malformed"


# --- the admission flow uses them ---------------------------------------------------------------

def admitter(kube: FakeKube, **kw: Any) -> tuple[Admitter, FakeResolver]:
    image = f"{REG}/tenant/app:1"
    policies = load_policies([policy_doc("a", [f"{REG}/**"], [authority("a", {"a": key()})],
                                         namespace="tenant-a")])
    resolver = FakeResolver({image: D1})
    deps = WebhookDeps(policies=lambda: policies, resolver=resolver, verifier=FakeVerifier(),
                       rego=RegoEvaluator(), records=FakeRecords(),
                       pull_secrets=source(kube, **kw), timeout_seconds=2.0)
    return Admitter(deps), resolver


def mutate(adm: Admitter, namespace: str, secrets: list[str]) -> dict[str, Any]:
    spec = pod_spec([f"{REG}/tenant/app:1"]) | {
        "imagePullSecrets": [{"name": n} for n in secrets]}
    body = json.dumps(review(workload("Pod", spec, namespace=namespace))).encode()
    return dict(asyncio.run(adm.mutate(parse_review(body)))["response"])


def test_resolution_uses_the_pods_credentials_and_caches_per_credentials(
        kube: FakeKube) -> None:
    adm, resolver = admitter(kube)
    assert mutate(adm, "tenant-a", ["regcred"])["allowed"]
    assert user_for(resolver.credentials_seen[-1]) == "alice"
    # Same tag from a pod without credentials: not answered from the first pod's cache entry.
    assert mutate(adm, "tenant-a", [])["allowed"]
    assert len(resolver.credentials_seen) == 2 and user_for(resolver.credentials_seen[-1]) \
        is None
    # The first pod again: a cache hit, no registry call.
    assert mutate(adm, "tenant-a", ["regcred"])["allowed"]
    assert resolver.calls == 2


def test_unreadable_pull_secrets_deny_the_pod(kube: FakeKube) -> None:
    adm, resolver = admitter(kube)
    kube.fail_next(403)
    answer = mutate(adm, "tenant-a", ["regcred"])
    assert not answer["allowed"]
    assert "credentials.pull_secrets" in answer["status"]["message"]
    assert "containers[0]" in answer["status"]["message"]
    assert resolver.calls == 0


# --- end to end: a private registry, the real client, verifier and webhook ----------------------

@requires_registry
def test_private_registry_admits_only_with_the_pods_pull_secret(
        basic_registry: RunningRegistry, tmp_path: Path) -> None:
    from umec.settings import Settings
    from umec.webhook_process import build_webhook

    host = basic_registry.host
    image = f"{host}/private-{uuid.uuid4().hex[:8]}/app:1"
    signing_key = generate_private_key()
    owner = Credentials.from_pull_secrets([{"data": dockerconfig(host, "alice",
                                                                 USERS["alice"])}])

    async def publish() -> None:
        async with RegistryClient(credentials=owner) as client:
            await push_image(client, image, salt="private")
            await sign_image(client, parse_reference(image), signing_key)
    asyncio.run(publish())

    policies = tmp_path / "policies"
    policies.mkdir()
    doc = policy_doc("ci", [f"{host}/**"], [{"name": "ci", "threshold": 1, "keys": [
        {"name": "ci", "pem": public_key_pem(signing_key).decode()}]}], namespace="tenant-a")
    (policies / "ci.yaml").write_text(yaml.safe_dump(doc))

    with FakeKube() as kube:
        kube.add_secret("tenant-a", "regcred", DOCKERCONFIG,
                        dockerconfig(host, "alice", USERS["alice"]))
        kube.add_secret("tenant-b", "regcred", DOCKERCONFIG,
                        dockerconfig(host, "alice", "wrong-password"))
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}]}))
        settings = Settings(data_dir=tmp_path / "srv", admission_policy_dir=policies,
                            webhook_pull_secrets=True, kubeconfig=kubeconfig)
        app, _ = build_webhook(settings)

        with serve_tls(app, tmp_path / "certs") as (url, ca), \
                httpx.Client(base_url=url, verify=tls(ca), timeout=15) as client:
            def call(path: str, namespace: str, images: list[str],
                     secrets: list[str]) -> dict[str, Any]:
                spec = pod_spec(images) | {"imagePullSecrets": [{"name": s} for s in secrets]}
                obj = workload("Pod", spec, namespace=namespace, uid=uuid.uuid4().hex)
                r = client.post(path, json=review(obj))
                assert r.status_code == 200
                return dict(r.json()["response"])

            no_secret = call("/mutate", "tenant-a", [image], [])
            assert not no_secret["allowed"]
            assert "registry" in no_secret["status"]["message"]
            pinned_answer = call("/mutate", "tenant-a", [image], ["regcred"])
            assert pinned_answer["allowed"], pinned_answer
            patch = json.loads(base64.b64decode(pinned_answer["patch"]))
            pinned = next(op["value"] for op in patch if op["op"] == "replace")
            admitted = call("/validate", "tenant-a", [pinned], ["regcred"])
            assert admitted["allowed"], admitted
            # tenant-b's Secret of the same name holds other credentials: no resolution.
            other = call("/mutate", "tenant-b", [image], ["regcred"])
            assert not other["allowed"]
        assert any(r.path == "/api/v1/namespaces/tenant-a/secrets/regcred"
                   for r in kube.calls("GET"))


def test_webhook_app_builds_without_pull_secrets() -> None:
    # Off by default (no cluster here): nothing reads the Kubernetes API.
    deps = WebhookDeps(policies=lambda: load_policies([]), resolver=FakeResolver(),
                       verifier=FakeVerifier(), rego=RegoEvaluator())
    assert deps.pull_secrets is None and create_webhook_app(deps) is not None
