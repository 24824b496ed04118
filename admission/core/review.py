"""AdmissionReview v1: parse the request, find every image, build the response.

Steps (bytes in, typed result out; nothing here does I/O):

1. :func:`parse_review` rejects bodies over the size limit *before* decoding JSON (the API
   server's own limit is 3 MiB), then checks the envelope: ``apiVersion admission.k8s.io/v1``,
   ``kind AdmissionReview``, a string ``request.uid``, ``request.kind.kind``, an ``operation`` and
   (except for DELETE/CONNECT) an ``object`` mapping. Any deviation is :class:`ReviewMalformed`;
   JSON, type or shape errors never escape as ValueError/KeyError/TypeError.
2. :func:`pod_spec_path` finds the pod template of the object: ``spec`` for a Pod (also for the
   ``pods/ephemeralcontainers`` subresource, whose object is the whole Pod), ``spec.template.spec``
   for Deployment, ReplicaSet, StatefulSet, DaemonSet and Job, and
   ``spec.jobTemplate.spec.template.spec`` for a CronJob.
3. :func:`container_images` lists every container, init container and ephemeral container with
   its path (``spec.initContainers[0]``), JSON pointer for patches and image string.
4. :func:`review_response` echoes the uid and carries allowed, status (code, message), warnings
   and, for ``/mutate``, a base64 JSONPatch (``patchType: JSONPatch``) built by
   :func:`pin_patch`, which appends ``@digest`` to images that have only a tag.

Image strings are split with :func:`split_image`; :func:`normalize_name` gives the name policy
globs match against (``nginx`` → ``docker.io/library/nginx``), the same normalisation docker and
containerd apply, so a short name cannot dodge a policy written for its full name.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from admission.core.errors import AdmissionError, MalformedInput

MAX_REVIEW_BYTES = 3 * 1024 * 1024
API_VERSION = "admission.k8s.io/v1"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
SUPPORTED_KINDS = tuple(_TEMPLATE_PATHS)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9]+(?:[._-]+[a-z0-9]+|__)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]+)?|\[[0-9a-fA-F:]+\](?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
# A DNS-1123 subdomain: what Kubernetes accepts as a Secret or ServiceAccount name.
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


class ReviewMalformed(MalformedInput):
    check = "review.malformed"
    hint = "The request is not an admission.k8s.io/v1 AdmissionReview; check the webhook config."


class ReviewTooLarge(ReviewMalformed):
    check = "review.too_large"
    status = 413
    hint = "AdmissionReviews are limited to 3 MiB; a pod spec this large is refused."


class UnsupportedKind(AdmissionError):
    check = "review.kind"
    hint = ("The webhook handles Pods and pod controllers only; restrict the webhook rules to "
            f"{', '.join(SUPPORTED_KINDS)}.")


class InvalidImage(AdmissionError):
    check = "image.invalid"
    hint = "Use a valid image reference: [registry/]repository[:tag][@sha256:<64 hex>]."


@dataclass(frozen=True)
class ReviewRequest:
    uid: str
    kind: str
    namespace: str
    name: str
    operation: str
    sub_resource: str
    object: dict[str, Any] | None
    dry_run: bool
    old_object: dict[str, Any] | None = None  # the stored object (UPDATE, DELETE)


@dataclass(frozen=True)
class ContainerImage:
    path: str            # "spec.template.spec.initContainers[0]" (for messages)
    pointer: str         # "/spec/template/spec/initContainers/0/image" (for JSONPatch)
    name: str            # container name
    image: str


@dataclass(frozen=True)
class ImageName:
    name: str            # as written, without tag/digest: "nginx", "127.0.0.1:5000/a/b"
    tag: str | None
    digest: str | None

    @property
    def normalized(self) -> str:
        return normalize_name(self.name)


def _field(obj: Any, key: str, typ: type, where: str, required: bool = True) -> Any:
    if not isinstance(obj, dict):
        raise ReviewMalformed(f"{where}: expected an object")
    if key not in obj or obj[key] is None:
        if required:
            raise ReviewMalformed(f"{where}.{key} is missing")
        return None
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ReviewMalformed(f"{where}.{key}: expected {typ.__name__}, "
                              f"got {type(value).__name__}")
    return value


def parse_review(body: bytes, max_bytes: int = MAX_REVIEW_BYTES) -> ReviewRequest:
    if len(body) > max_bytes:
        raise ReviewTooLarge(f"{len(body)} bytes > limit {max_bytes}")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ReviewMalformed(f"not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise ReviewMalformed("top level is not an object")
    if doc.get("apiVersion") != API_VERSION or doc.get("kind") != "AdmissionReview":
        raise ReviewMalformed(f"apiVersion/kind {doc.get('apiVersion')!r}/{doc.get('kind')!r}, "
                              f"expected {API_VERSION}/AdmissionReview")
    req = _field(doc, "request", dict, "review")
    uid = _field(req, "uid", str, "request")
    if not uid or len(uid) > 128:
        raise ReviewMalformed("request.uid is empty or too long")
    kind = _field(_field(req, "kind", dict, "request"), "kind", str, "request.kind")
    operation = _field(req, "operation", str, "request")
    obj = _field(req, "object", dict, "request", required=operation in ("CREATE", "UPDATE"))
    namespace = _field(req, "namespace", str, "request", required=False) or ""
    name = _field(req, "name", str, "request", required=False) or ""
    if obj is not None:
        meta = _field(obj, "metadata", dict, "object", required=False) or {}
        namespace = namespace or _field(meta, "namespace", str, "metadata", False) or ""
        name = name or _field(meta, "name", str, "metadata", False) or \
            _field(meta, "generateName", str, "metadata", False) or ""
    return ReviewRequest(uid, kind, namespace, name, operation,
                         _field(req, "subResource", str, "request", required=False) or "",
                         obj, bool(_field(req, "dryRun", bool, "request", required=False)),
                         _field(req, "oldObject", dict, "request", required=False))


def pod_spec_path(kind: str) -> tuple[str, ...]:
    try:
        return _TEMPLATE_PATHS[kind]
    except KeyError:
        raise UnsupportedKind(f"kind {kind!r}") from None


def container_images(kind: str, obj: dict[str, Any]) -> list[ContainerImage]:
    """Every container of every list in the pod template, in a stable order."""
    path = pod_spec_path(kind)
    spec: Any = obj
    for i, part in enumerate(path):
        spec = _field(spec, part, dict, ".".join(("object", *path[:i])))
    out = []
    base = ".".join(path)
    for lst in CONTAINER_LISTS:
        containers = _field(spec, lst, list, base, required=False) or []
        for i, c in enumerate(containers):
            where = f"{base}.{lst}[{i}]"
            image = _field(c, "image", str, where)
            cname = _field(c, "name", str, where, required=False) or ""
            out.append(ContainerImage(where, "/" + "/".join((*path, lst, str(i), "image")),
                                      cname, image))
    if not any(c.path.split(".")[-1].startswith("containers[") for c in out) \
            and kind != "Pod":
        raise ReviewMalformed(f"{base}.containers is missing or empty")
    return out


@dataclass(frozen=True)
class PullSecretRefs:
    """Where a pod gets its registry credentials: ``imagePullSecrets`` names in its own
    namespace, or, when it lists none, its ServiceAccount's (the kubelet's order)."""

    names: tuple[str, ...]
    service_account: str


def pull_secret_refs(kind: str, obj: dict[str, Any]) -> PullSecretRefs:
    path = pod_spec_path(kind)
    spec: Any = obj
    for i, part in enumerate(path):
        spec = _field(spec, part, dict, ".".join(("object", *path[:i])))
    base = ".".join(path)
    refs = _field(spec, "imagePullSecrets", list, base, required=False) or []
    names = []
    for i, ref in enumerate(refs):
        name = _field(ref, "name", str, f"{base}.imagePullSecrets[{i}]")
        if not _SECRET_NAME.fullmatch(name):
            raise ReviewMalformed(f"{base}.imagePullSecrets[{i}].name {name[:80]!r} is not a "
                                  f"valid Secret name")
        names.append(name)
    account = _field(spec, "serviceAccountName", str, base, required=False) or "default"
    if not _SECRET_NAME.fullmatch(account):
        raise ReviewMalformed(f"{base}.serviceAccountName {account[:80]!r} is not a valid name")
    return PullSecretRefs(tuple(dict.fromkeys(names)), account)


def split_image(image: str) -> ImageName:
    """``[host[:port]/]path[:tag][@sha256:hex]`` → parts; anything else is InvalidImage."""
    if not image or len(image) > 1024 or image != image.strip():
        raise InvalidImage(f"image {image[:80]!r}")
    rest, digest = image, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise InvalidImage(f"image {image!r}: digest {digest!r} is not sha256:<64 hex>")
    tag = None
    last = rest.rsplit("/", 1)[-1]
    if ":" in last:
        rest, tag = rest.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise InvalidImage(f"image {image!r}: bad tag {tag!r}")
    first, _, remainder = rest.partition("/")
    if remainder and _is_host(first):
        if not _HOST.fullmatch(first) or not _NAME.fullmatch(remainder):
            raise InvalidImage(f"image {image!r}")
    elif not _NAME.fullmatch(rest):
        raise InvalidImage(f"image {image!r}")
    return ImageName(rest, tag, digest)


def _is_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" \
        or component.startswith("[") or component != component.lower()


def normalize_name(name: str) -> str:
    first, _, remainder = name.partition("/")
    if remainder and _is_host(first):
        host = "docker.io" if first in ("index.docker.io", "registry-1.docker.io") else first
        if host == "docker.io" and "/" not in remainder:
            remainder = "library/" + remainder
        return f"{host}/{remainder}"
    return f"docker.io/{name}" if remainder else f"docker.io/library/{name}"


def pin_patch(pins: Sequence[tuple[ContainerImage, str]]) -> list[dict[str, Any]]:
    """JSONPatch ops that replace each image by ``image@digest`` (the tag is kept for humans;
    the runtime pulls by digest). A ``test`` op first guards against a concurrent change."""
    ops: list[dict[str, Any]] = []
    for c, digest in pins:
        pinned = c.image.split("@", 1)[0] + "@" + digest
        if pinned != c.image:
            ops.append({"op": "test", "path": c.pointer, "value": c.image})
            ops.append({"op": "replace", "path": c.pointer, "value": pinned})
    return ops


def review_response(uid: str, *, allowed: bool, message: str = "", code: int | None = None,
                    warnings: Sequence[str] = (),
                    patch: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if not allowed or message:
        response["status"] = {"code": code or (200 if allowed else 403), "message": message}
        if not allowed:
            response["status"]["reason"] = "Forbidden" if (code or 403) == 403 else "BadRequest"
    if warnings:
        # The API server truncates long warnings; keep each readable and the list bounded.
        response["warnings"] = [w[:480] for w in warnings][:32]
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
