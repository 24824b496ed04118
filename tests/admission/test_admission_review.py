"""AdmissionReview v1 parsing, image extraction for every kind, image names, JSONPatch."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.core.errors import AdmissionError
from admission.core.review import (
    InvalidImage,
    ReviewMalformed,
    ReviewTooLarge,
    UnsupportedKind,
    container_images,
    normalize_name,
    parse_review,
    pin_patch,
    review_response,
    split_image,
)
from tests.support.webhook import D1, pod_spec, review, workload

KINDS = {"Pod": "spec", "Deployment": "spec.template.spec", "ReplicaSet": "spec.template.spec",
         "StatefulSet": "spec.template.spec", "DaemonSet": "spec.template.spec",
         "Job": "spec.template.spec", "CronJob": "spec.jobTemplate.spec.template.spec"}


@pytest.mark.parametrize(("kind", "base"), KINDS.items())
def test_every_kind_every_container_list(kind: str, base: str) -> None:
    obj = workload(kind, pod_spec(["app:1"], init=["init:1"], ephemeral=["dbg@" + D1]))
    req = parse_review(json.dumps(review(obj)).encode())
    assert (req.kind, req.namespace, req.name, req.operation) == (kind, "tenant-a", "app",
                                                                   "CREATE")
    found = container_images(req.kind, req.object or {})
    assert [(c.path, c.image) for c in found] == [
        (f"{base}.initContainers[0]", "init:1"), (f"{base}.containers[0]", "app:1"),
        (f"{base}.ephemeralContainers[0]", "dbg@" + D1)]
    assert found[1].pointer == "/" + base.replace(".", "/") + "/containers/0/image"


def test_ephemeral_subresource_and_generate_name() -> None:
    obj = workload("Pod", pod_spec(["a@" + D1], ephemeral=["busybox"]))
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "app-"
    doc = review(obj, operation="UPDATE", sub_resource="ephemeralcontainers")
    doc["request"]["name"] = ""
    req = parse_review(json.dumps(doc).encode())
    assert req.sub_resource == "ephemeralcontainers" and req.name == "app-"
    assert container_images("Pod", req.object or {})[-1].path == "spec.ephemeralContainers[0]"


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[]",
    b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u",'
    b' "kind": {"kind": "Pod"}, "operation": "CREATE"}}',
    b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u",'
    b' "kind": {"kind": "Pod"}, "operation": "CREATE", "object": []}}',
    b"\xff\xfe", b"[" * 100000])
def test_malformed_reviews(body: bytes) -> None:
    with pytest.raises(ReviewMalformed):
        parse_review(body)


def test_size_limit_checked_before_parsing() -> None:
    with pytest.raises(ReviewTooLarge):
        parse_review(b" " * (3 * 1024 * 1024 + 1))
    with pytest.raises(ReviewTooLarge):
        parse_review(b"{}", max_bytes=1)


def test_bad_containers() -> None:
    with pytest.raises(ReviewMalformed, match="image"):
        container_images("Pod", {"spec": {"containers": [{"name": "x"}]}})
    with pytest.raises(ReviewMalformed, match="containers"):
        container_images("Deployment", {"spec": {"template": {"spec": {}}}})
    with pytest.raises(ReviewMalformed):
        container_images("Job", {"spec": {"template": []}})
    with pytest.raises(UnsupportedKind):
        container_images("Service", {"spec": {}})


@pytest.mark.parametrize(("image", "name", "tag", "digest", "normalized"), [
    ("nginx", "nginx", None, None, "docker.io/library/nginx"),
    ("nginx:1.25", "nginx", "1.25", None, "docker.io/library/nginx"),
    ("team/app@" + D1, "team/app", None, D1, "docker.io/team/app"),
    ("127.0.0.1:5000/a/b:v1@" + D1, "127.0.0.1:5000/a/b", "v1", D1, "127.0.0.1:5000/a/b"),
    ("localhost/x", "localhost/x", None, None, "localhost/x"),
    ("index.docker.io/nginx", "index.docker.io/nginx", None, None, "docker.io/library/nginx"),
])
def test_split_and_normalize(image: str, name: str, tag: str | None, digest: str | None,
                             normalized: str) -> None:
    parts = split_image(image)
    assert (parts.name, parts.tag, parts.digest, parts.normalized) == (name, tag, digest,
                                                                      normalized)
    assert normalize_name(name) == normalized


@pytest.mark.parametrize("image", ["", " nginx", "nginx@sha256:abc", "Nginx", "a//b",
                                   "nginx:bad tag", "reg:5000/UPPER/x", "x@md5:" + "0" * 32])
def test_invalid_images(image: str) -> None:
    with pytest.raises(InvalidImage):
        split_image(image)


def test_pin_patch_and_response() -> None:
    obj = workload("Deployment", pod_spec(["app:1", "b@" + D1]))
    cs = container_images("Deployment", obj)
    ops = pin_patch([(cs[0], D1), (cs[1], D1)])
    assert ops == [{"op": "test", "path": "/spec/template/spec/containers/0/image",
                    "value": "app:1"},
                   {"op": "replace", "path": "/spec/template/spec/containers/0/image",
                    "value": "app:1@" + D1}]
    resp = review_response("u1", allowed=True, patch=ops, warnings=["w"])["response"]
    assert resp["uid"] == "u1" and resp["allowed"] and resp["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(resp["patch"])) == ops and resp["warnings"] == ["w"]
    denied = review_response("u2", allowed=False, message="nope")["response"]
    assert denied["status"] == {"code": 403, "message": "nope", "reason": "Forbidden"}
    assert "patch" not in denied


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(
                        st.sampled_from(["apiVersion", "kind", "request", "uid", "object",
                                         "operation", "spec", "containers", "image", "x"]),
                        c, max_size=5), max_leaves=30))
def test_fuzz_parse_only_typed_errors(doc: object) -> None:
    envelope = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "u", "kind": {"kind": "Pod"}, "operation": "CREATE",
                            "object": doc}}
    for body in (json.dumps(doc).encode(), json.dumps(envelope).encode()):
        try:
            req = parse_review(body)
            if req.object is not None:
                for c in container_images(req.kind, req.object):
                    split_image(c.image)
        except AdmissionError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_split_image(text: str) -> None:
    try:
        parts = split_image(text)
    except InvalidImage:
        return
    assert parts.normalized.count("/") >= 1
