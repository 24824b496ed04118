"""The webhook follows ImagePolicy/ClusterImagePolicy objects live (admission.service.policy_watch).

Three levels: the policy state alone (refusals keep the last good version, fail closed, a
hypothesis model of any sequence of events); the watch against the fake API server over HTTP
with real chunked watch streams (a change applies at once, 410 Gone → re-list, a dropped
connection → resume, API errors → back-off); and ``umec webhook``'s app as ``build_webhook``
wires it (UMEC_ADMISSION_POLICY_CRDS, UMEC_KUBECONFIG) answering real AdmissionReviews over
TLS for a signed image in a real registry while its policy objects change."""

from __future__ import annotations

import copy
import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admission.core.policy import PolicySet
from admission.service.policy_watch import (
    RESOURCES,
    PolicyState,
    PolicyWatch,
    WatchTiming,
    _event_lines,
)
from keys import PrivateKey, key_thumbprint
from tests.support.fake_kube_api import CLUSTER_IMAGE_POLICIES, IMAGE_POLICIES, FakeKubeApi
from tests.support.live_webhook import push_signed, serve_live
from tests.support.registry import RunningRegistry, requires_registry
from tests.support.webhook import authority, key, pod_spec, policy_doc, review, workload

CIP, IP = RESOURCES  # clusterimagepolicies, imagepolicies
A, B, C = key(), key(), key()
IMG = "registry.example/tenant/app"
FAST = WatchTiming(timeout_seconds=30, backoff_first=0.05, backoff_max=0.2)


def cluster_policy(name: str, signer: PrivateKey, **kw: Any) -> dict[str, Any]:
    return policy_doc(name, ["registry.example/**"], [authority("ci", {"ci": signer})], **kw)


def tenant_policy(name: str, namespace: str, signer: PrivateKey) -> dict[str, Any]:
    return policy_doc(name, ["registry.example/**"], [authority("ci", {"ci": signer})],
                      namespace=namespace)


def invalid(doc: dict[str, Any]) -> dict[str, Any]:
    """The same policy with a threshold above its number of keys (PolicyInvalid)."""
    bad = copy.deepcopy(doc)
    bad["spec"]["authorities"][0]["threshold"] = 5
    return bad


def trusted(policies: PolicySet, ref: str) -> set[str]:
    return {kid for p in policies.policies if p.ref == ref for kid in p.key_names()}


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``cond()`` held."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)
    return time.monotonic() - start


# --- the state: refusals, fail closed -----------------------------------------------------------

def test_an_invalid_update_is_refused_and_the_last_good_version_stays(
        caplog: pytest.LogCaptureFixture) -> None:
    state = PolicyState()
    good = cluster_policy("base", A)
    state.apply_event(CIP, "ADDED", good)
    caplog.set_level(logging.WARNING, "umec.admission.policies")
    state.apply_event(CIP, "MODIFIED", invalid(cluster_policy("base", B)))
    assert trusted(state.current, "ClusterImagePolicy/base") == {key_thumbprint(A)}
    assert ("ClusterImagePolicy", "", "base") in state.refused
    record = next(r for r in caplog.records if "refused" in r.getMessage())
    assert record.check == "policy.invalid" and "threshold" in record.detail  # type: ignore[attr-defined]
    assert "last good version stays" in record.getMessage()
    # Fixed: the new version applies and the refusal is cleared.
    state.apply_event(CIP, "MODIFIED", cluster_policy("base", B))
    assert trusted(state.current, "ClusterImagePolicy/base") == {key_thumbprint(B)}
    assert not state.refused


def test_a_new_invalid_policy_never_opens_the_door() -> None:
    """An unparsable ClusterImagePolicy saying noMatch: allow is not in force: images no
    policy matches stay denied, as with no policy object at all."""
    state = PolicyState()
    assert state.current.no_match == "deny" and state.current.policies == ()
    state.apply_event(CIP, "ADDED", invalid(cluster_policy("open", A, no_match="allow")))
    assert state.current.no_match == "deny" and state.current.policies == ()
    decision = state.current.evaluate("tenant-a", "elsewhere.example/x", [], "sha256:" + "0" * 64)
    assert decision.matched == () and decision.no_match == "deny"


@pytest.mark.parametrize("attack", ["file-reference", "directory-name", "wrong-kind",
                                    "cluster-policy-with-namespace"])
def test_objects_from_the_api_cannot_do_what_files_can(tmp_path: Path, attack: str) -> None:
    """A policy object may not read the webhook's files (a key ``file:``), replace a policy of
    the operator's directory, or pass itself off as the other kind."""
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(cluster_policy("base", A)))
    from admission.service.policy_dir import policy_documents
    state = PolicyState(*policy_documents(tmp_path))
    before = state.current.generation
    resource, doc = CIP, cluster_policy("x", B)
    if attack == "file-reference":
        doc["spec"]["authorities"][0]["keys"] = [{"name": "k", "file": "/etc/umec/tls/tls.key"}]
    elif attack == "directory-name":
        doc = cluster_policy("base", B)
    elif attack == "wrong-kind":   # a ClusterImagePolicy (in a namespace) from imagepolicies
        resource, doc = IP, cluster_policy("x", B)
        doc["metadata"]["namespace"] = "tenant-a"
    else:
        doc["metadata"]["namespace"] = "tenant-a"
    state.apply_event(resource, "ADDED", doc)
    assert state.current.generation == before
    assert trusted(state.current, "ClusterImagePolicy/base") == {key_thumbprint(A)}
    assert state.refused


def test_a_list_replaces_what_was_known_and_deleted_objects_go() -> None:
    state = PolicyState()
    state.replace_all(CIP, [cluster_policy("one", A), cluster_policy("two", B)])
    state.replace_all(IP, [tenant_policy("t", "tenant-a", C)])
    assert {p.ref for p in state.current.policies} == {
        "ClusterImagePolicy/one", "ClusterImagePolicy/two", "ImagePolicy/tenant-a/t"}
    # A re-list without "two" and with a broken "one": two goes, one keeps its last good
    # version, the ImagePolicies are untouched.
    state.replace_all(CIP, [invalid(cluster_policy("one", C))])
    assert {p.ref for p in state.current.policies} == {"ClusterImagePolicy/one",
                                                        "ImagePolicy/tenant-a/t"}
    assert trusted(state.current, "ClusterImagePolicy/one") == {key_thumbprint(A)}
    state.apply_event(IP, "DELETED", tenant_policy("t", "tenant-a", C))
    assert {p.ref for p in state.current.policies} == {"ClusterImagePolicy/one"}


def test_a_tenants_broken_policy_does_not_freeze_the_others() -> None:
    state = PolicyState()
    state.apply_event(IP, "ADDED", invalid(tenant_policy("bad", "tenant-b", B)))
    state.apply_event(CIP, "ADDED", cluster_policy("base", A))
    state.apply_event(IP, "ADDED", tenant_policy("good", "tenant-a", C))
    assert {p.ref for p in state.current.policies} == {"ClusterImagePolicy/base",
                                                        "ImagePolicy/tenant-a/good"}


NAMES = st.sampled_from(["p1", "p2", "p3"])
SIGNERS = st.sampled_from([0, 1, 2])
OPS = st.lists(st.one_of(
    st.tuples(st.just("apply"), NAMES, SIGNERS, st.booleans(), st.booleans()),
    st.tuples(st.just("delete"), NAMES, SIGNERS, st.booleans(), st.booleans()),
    st.tuples(st.just("relist"), NAMES, SIGNERS, st.booleans(), st.booleans())), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_the_policies_in_force_are_the_last_good_version_of_each_live_object(
        ops: list[tuple[str, str, int, bool, bool]]) -> None:
    """Any sequence of events, valid or not, against a model: what is in force is exactly the
    last valid version of every object that exists; noMatch never leaves deny (no object says
    allow); nothing raises."""
    keys = (A, B, C)
    state = PolicyState()
    live: dict[str, dict[str, Any]] = {}   # what the API server holds (valid or not)
    model: dict[str, int] = {}             # name → signer index of its last good version
    for op, name, signer, valid, cluster in ops:
        resource = CIP if cluster else IP
        doc = (cluster_policy(name, keys[signer]) if cluster
               else tenant_policy(name, "tenant-a", keys[signer]))
        ref = f"{resource.kind}/{name}" if cluster else f"ImagePolicy/tenant-a/{name}"
        if op == "apply":
            live[ref] = doc if valid else invalid(doc)
            state.apply_event(resource, "ADDED", live[ref])
            if valid:
                model[ref] = signer
        elif op == "delete" and ref in live:
            state.apply_event(resource, "DELETED", live.pop(ref))
            model.pop(ref, None)
        elif op == "relist":
            items = [d for r, d in live.items() if r.startswith(resource.kind + "/")]
            state.replace_all(resource, items)
            model = {r: s for r, s in model.items()
                     if r in live or not r.startswith(resource.kind + "/")}
        assert {p.ref: set(p.keys()) for p in state.current.policies} == {
            r: {key_thumbprint(keys[s])} for r, s in model.items()}
        assert state.current.no_match == "deny"


class _Chunked:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        yield from self.chunks


@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), max_size=6),
       st.lists(st.integers(min_value=1, max_value=40), max_size=20))
def test_watch_lines_survive_any_chunking(events: list[dict[str, int]], cuts: list[int]) -> None:
    """The watch stream's parser: however the chunks fall, the same events come out."""
    raw = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    chunks, i = [], 0
    for cut in cuts:
        chunks.append(raw[i:i + cut])
        i += cut
    chunks.append(raw[i:])
    assert [json.loads(line) for line in _event_lines(_Chunked(chunks))] == events


# --- the watch over HTTP ----------------------------------------------------------------------

@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as fake:
        yield fake


@pytest.fixture
def watch(kube: FakeKubeApi) -> Iterator[PolicyWatch]:
    kube.apply(CLUSTER_IMAGE_POLICIES, cluster_policy("base", A))
    w = PolicyWatch(kube.custom_objects(), PolicyState(), FAST)
    w.start()
    try:
        assert all(e.wait(10) for e in w.synced.values())
        kube.wait_for_watches(2)
        yield w
    finally:
        w.stop()


def test_a_changed_policy_applies_within_a_second(kube: FakeKubeApi, watch: PolicyWatch) -> None:
    assert trusted(watch.current(), "ClusterImagePolicy/base") == {key_thumbprint(A)}
    kube.apply(CLUSTER_IMAGE_POLICIES, cluster_policy("base", B))
    took = wait_for(lambda: trusted(watch.current(), "ClusterImagePolicy/base")
                    == {key_thumbprint(B)})
    assert took < 1.0
    kube.apply(IMAGE_POLICIES, tenant_policy("t", "tenant-a", C))
    wait_for(lambda: any(p.ref == "ImagePolicy/tenant-a/t" for p in watch.current().policies))
    kube.delete(CLUSTER_IMAGE_POLICIES, "base")
    wait_for(lambda: trusted(watch.current(), "ClusterImagePolicy/base") == set())
    assert watch.lists == {"clusterimagepolicies": 1, "imagepolicies": 1}  # no re-list needed


def test_410_gone_relists_and_catches_what_changed_meanwhile(kube: FakeKubeApi,
                                                            watch: PolicyWatch) -> None:
    """The watch's resourceVersion is compacted away while changes happen: the watcher gets
    410 (an ERROR event), lists again and ends with the API server's state."""
    kube.drop_watches()            # the watcher misses the next changes...
    kube.apply(CLUSTER_IMAGE_POLICIES, cluster_policy("base", B))
    kube.apply(CLUSTER_IMAGE_POLICIES, cluster_policy("extra", C))
    kube.compact()                 # ...and its resourceVersion is gone when it comes back
    wait_for(lambda: trusted(watch.current(), "ClusterImagePolicy/base") == {key_thumbprint(B)}
             and trusted(watch.current(), "ClusterImagePolicy/extra") == {key_thumbprint(C)})
    assert watch.lists["clusterimagepolicies"] >= 2
    # An open watch ended by the server with 410 also re-lists.
    kube.wait_for_watches(2)
    lists = dict(watch.lists)
    kube.expire_watches()
    wait_for(lambda: all(watch.lists[p] > lists[p] for p in lists))


def test_a_dropped_connection_resumes_from_the_last_resource_version(
        kube: FakeKubeApi, watch: PolicyWatch) -> None:
    watches = dict(kube.watch_requests)
    kube.drop_watches()
    kube.apply(CLUSTER_IMAGE_POLICIES, cluster_policy("base", C))
    took = wait_for(lambda: trusted(watch.current(), "ClusterImagePolicy/base")
                    == {key_thumbprint(C)})
    assert took < 2.0
    assert kube.watch_requests["clusterimagepolicies"] > watches["clusterimagepolicies"]
    assert watch.lists == {"clusterimagepolicies": 1, "imagepolicies": 1}  # resumed, no list
    resumed = [r.path for r in kube.requests if "watch=true" in r.path
               and "clusterimagepolicies" in r.path][-1]
    assert "resourceVersion=" in resumed and "allowWatchBookmarks=true" in resumed


def test_bookmarks_move_the_resource_version(kube: FakeKubeApi, watch: PolicyWatch) -> None:
    kube.apply(IMAGE_POLICIES, tenant_policy("t", "tenant-a", A))  # rv moves past imagepolicies
    wait_for(lambda: len(watch.current().policies) == 2)
    kube.bookmark()
    time.sleep(0.2)
    watches = dict(kube.watch_requests)
    kube.drop_watches()
    wait_for(lambda: all(kube.watch_requests[p] > n for p, n in watches.items()))
    last = [r.path for r in kube.requests if "watch=true" in r.path][-2:]
    assert all(f"resourceVersion={kube.current_rv()}&" in p for p in last), last


def test_api_errors_back_off_and_keep_the_policies(kube: FakeKubeApi, watch: PolicyWatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "umec.admission.policies")
    kube.fail_next(500, times=4)
    kube.expire_watches()          # both re-list, and the lists fail four times
    time.sleep(0.3)
    assert trusted(watch.current(), "ClusterImagePolicy/base") == {key_thumbprint(A)}
    kube.apply(CLUSTER_IMAGE_POLICIES, cluster_policy("base", B))
    wait_for(lambda: trusted(watch.current(), "ClusterImagePolicy/base") == {key_thumbprint(B)})
    failures = [r for r in caplog.records if getattr(r, "check", "") == "policy.source"]
    assert failures and "500" in failures[0].detail  # type: ignore[attr-defined]


def test_without_rbac_nothing_is_admitted_by_default(kube: FakeKubeApi) -> None:
    """403 on every list (no RBAC for the CRDs): the set stays empty, noMatch deny."""
    kube.fail_next(403, times=1000)
    w = PolicyWatch(kube.custom_objects(), PolicyState(), FAST)
    w.start()
    try:
        time.sleep(0.3)
        assert not any(e.is_set() for e in w.synced.values())
        assert not w.loaded()   # the webhook's /readyz answers 503 webhook.policies_loading
        assert w.current().policies == () and w.current().no_match == "deny"
    finally:
        w.stop()


def test_loaded_once_every_resource_was_listed(watch: PolicyWatch) -> None:
    assert watch.loaded()
    next(iter(watch.synced.values())).clear()   # one resource not listed yet
    assert not watch.loaded()


def test_stop_does_not_wait_for_the_watch_timeout(kube: FakeKubeApi) -> None:
    w = PolicyWatch(kube.custom_objects(), PolicyState(), WatchTiming(timeout_seconds=600))
    w.start()
    kube.wait_for_watches(2)
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 2.0
    assert not any(t.is_alive() for t in w._threads)


# --- umec webhook, end to end -------------------------------------------------------------------

def answer(client: httpx.Client, obj: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/validate", json=review(obj, uid=str(uuid.uuid4())))
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()["response"]
    return result


@requires_registry
def test_umec_webhook_admits_by_the_live_policy_objects(tmp_path: Path, registry: RunningRegistry,
                                                      kube: FakeKubeApi) -> None:
    """``umec webhook`` with UMEC_ADMISSION_POLICY_CRDS: the same signed pod is denied with no
    policy, admitted once a ClusterImagePolicy trusting its signer is created through the API,
    denied again seconds after the policy is changed to another key, still denied when a
    broken update is refused (the last good version stays), and denied after deletion."""
    from umec.settings import Settings
    from umec.webhook_process import build_webhook
    base = f"{registry.host}/live-{uuid.uuid4().hex[:8]}"
    digest = push_signed(f"{base}/app:1.0", A)
    pod = workload("Pod", pod_spec([f"{base}/app@{digest}"]), uid="pod-1")
    settings = Settings(data_dir=tmp_path / "srv", admission_policy_crds=True,
                        kubeconfig=kube.kubeconfig(tmp_path / "kubeconfig"))
    app, _deps = build_webhook(settings)
    api = kube.custom_objects()
    policy = policy_doc("ci", [f"{base}/**"], [authority("ci", {"ci": A})])
    with serve_live(app, tmp_path / "certs") as (url, ca), \
            httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(ca)),
                         timeout=30) as client:
        kube.wait_for_watches(2)
        denied = answer(client, pod)
        assert denied["allowed"] is False and "policy.no_match" in json.dumps(denied)

        api.create_cluster_custom_object("umec.io", "v1alpha1", "clusterimagepolicies", policy)
        wait_for(lambda: answer(client, pod)["allowed"] is True, timeout=5)

        changed = copy.deepcopy(policy)
        changed["spec"]["authorities"] = [authority("ci", {"ci": B})]
        api.patch_cluster_custom_object("umec.io", "v1alpha1", "clusterimagepolicies", "ci",
                                        {"spec": changed["spec"]})
        took = wait_for(lambda: answer(client, pod)["allowed"] is False, timeout=5)
        assert took < 5

        broken = invalid(policy)   # would trust A again, but does not parse
        api.patch_cluster_custom_object("umec.io", "v1alpha1", "clusterimagepolicies", "ci",
                                        {"spec": broken["spec"]})
        time.sleep(0.5)
        assert answer(client, pod)["allowed"] is False

        api.patch_cluster_custom_object("umec.io", "v1alpha1", "clusterimagepolicies", "ci",
                                        {"spec": policy["spec"]})
        wait_for(lambda: answer(client, pod)["allowed"] is True, timeout=5)
        api.delete_cluster_custom_object("umec.io", "v1alpha1", "clusterimagepolicies", "ci")
        wait_for(lambda: answer(client, pod)["allowed"] is False, timeout=5)
        assert kube.open_watches() == 2
    # The app's shutdown stopped the watch threads.
    assert not [t for t in threading.enumerate() if t.name.startswith("policy-watch-")]


def test_watching_without_a_kubernetes_api_refuses_to_build(tmp_path: Path) -> None:
    from admission.service.build import AdmissionBridges, AdmissionConfig, build_service
    from admission.service.policy_watch import PolicySourceFailed
    from umec.db import open_engine
    engine = open_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with pytest.raises(PolicySourceFailed, match="needs a Kubernetes API"):
        build_service(AdmissionConfig(watch_policies=True),
                      AdmissionBridges(engine, lambda: __import__("datetime").datetime.now()))
