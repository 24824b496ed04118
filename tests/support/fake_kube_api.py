"""The fake Kubernetes API (:mod:`tests.support.fake_kube`) with generic resources and real
watch streams, for the webhook's live policies, its certificate rotation and the install guide.

:class:`FakeKubeApi` adds to :class:`~tests.support.fake_kube.FakeKube` any resource a test
registers (:class:`Resource`: group, version, plural, kind, namespaced or not), served at the
apiserver's paths::

    /apis/{group}/{version}[/namespaces/{ns}]/{plural}[/{name}]     (a group)
    /api/v1[/namespaces/{ns}]/{plural}[/{name}]                       (the core group)

with GET (one object, or a ``…List`` with ``metadata.resourceVersion``), POST (create: 409 if
it exists), PUT (replace: 409 on a stale ``resourceVersion``), PATCH (JSON patch, merge patch;
strategic merge as merge) and DELETE. Every write bumps the one resourceVersion counter the
base class's Nodes and Pods use, and is appended to an event log. A created object gets its
``metadata.creationTimestamp`` from :attr:`FakeKubeApi.clock` (the current time unless a test
sets it), in whole seconds, as the apiserver stamps it.

``GET …?watch=true&resourceVersion=N`` is a watch as the apiserver serves it: HTTP 200 with
``Transfer-Encoding: chunked``, one JSON event per line (``ADDED``, ``MODIFIED``, ``DELETED``,
``BOOKMARK`` when ``allowWatchBookmarks``), every event after ``N`` first, then new ones as they
happen, until ``timeoutSeconds`` (a clean end of the stream). ``N`` older than the compaction
horizon (:meth:`FakeKubeApi.compact`) answers an ``ERROR`` event with a 410 ``Expired`` Status,
as the apiserver does after etcd compaction; ``N`` unset or ``"0"`` starts with a synthetic
``ADDED`` per existing object.

Test hooks: :meth:`~FakeKubeApi.drop_watches` cuts every open watch mid-stream (the socket is
shut down without the final chunk: the client sees a broken connection),
:meth:`~FakeKubeApi.expire_watches` ends them with the 410 ``ERROR`` event,
:meth:`~FakeKubeApi.bookmark` sends a BOOKMARK, and :attr:`~FakeKubeApi.watch_requests` counts
watches per resource.

RBAC, as far as a test needs it: :meth:`~FakeKubeApi.deny` makes the apiserver answer 403
``Forbidden`` (recorded like any request) to a verb (``get``, ``list``, ``watch``, ``create``,
``update``, ``patch``, ``delete``) on a resource in a namespace for one bearer token, the
identity a kubeconfig from :meth:`~FakeKubeApi.kubeconfig` sends.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import kubernetes.client

from tests.support.fake_kube import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_PATCH,
    FakeKube,
    PatchError,
    RecordedRequest,
    _status,
    apply_json_patch,
    apply_merge_patch,
)

GROUP_PATH = re.compile(r"^/apis/(?P<group>[a-z0-9.-]+)/(?P<version>v[a-z0-9]+)"
                        r"(?:/namespaces/(?P<ns>[a-z0-9-]+))?/(?P<plural>[a-z0-9]+)"
                        r"(?:/(?P<name>[a-z0-9][-a-z0-9.]*))?$")
CORE_PATH = re.compile(r"^/api/(?P<version>v1)(?:/namespaces/(?P<ns>[a-z0-9-]+))?"
                       r"/(?P<plural>[a-z0-9]+)(?:/(?P<name>[a-z0-9][-a-z0-9.]*))?$")


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


IMAGE_POLICIES = Resource("umec.io", "v1alpha1", "imagepolicies", "ImagePolicy", True)
CLUSTER_IMAGE_POLICIES = Resource("umec.io", "v1alpha1", "clusterimagepolicies",
                                  "ClusterImagePolicy", False)
MUTATING_WEBHOOKS = Resource("admissionregistration.k8s.io", "v1",
                             "mutatingwebhookconfigurations", "MutatingWebhookConfiguration",
                             False)
VALIDATING_WEBHOOKS = Resource("admissionregistration.k8s.io", "v1",
                               "validatingwebhookconfigurations",
                               "ValidatingWebhookConfiguration", False)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment", True)
SECRETS = Resource("", "v1", "secrets", "Secret", True)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", True)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                "CustomResourceDefinition", False)
STANDARD = (IMAGE_POLICIES, CLUSTER_IMAGE_POLICIES, MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS,
            DEPLOYMENTS, SECRETS, CONFIGMAPS, NAMESPACES, CRDS)


@dataclass(frozen=True)
class Event:
    rv: int
    resource: Resource
    type: str
    object: dict[str, Any]


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class _Watch:
    """One open watch stream (its handler thread writes; hooks only set flags)."""

    def __init__(self, resource: Resource, namespace: str | None, cursor: int,
                 bookmarks: bool, handler: BaseHTTPRequestHandler) -> None:
        self.resource, self.namespace, self.cursor = resource, namespace, cursor
        self.bookmarks, self.handler = bookmarks, handler
        self.dropped = self.expired = False
        self.bookmark_due = False


class FakeKubeApi(FakeKube):
    """:class:`FakeKube` plus registered resources with watches (see the module doc)."""

    def __init__(self, resources: tuple[Resource, ...] = STANDARD) -> None:
        super().__init__()
        self.resources = list(resources)
        self.objects: dict[Resource, dict[tuple[str, str], dict[str, Any]]] = {
            r: {} for r in resources}
        self.events: list[Event] = []
        self.compacted = 0              # a watch from a resourceVersion below this gets 410
        self.watch_requests: dict[str, int] = {}
        self._cond = threading.Condition(self._lock)
        self._watches: list[_Watch] = []
        self._closed = False
        # (bearer token, resource, namespace, verb) the apiserver answers 403 to.
        self.denied: set[tuple[str, Resource, str | None, str]] = set()
        # The apiserver's clock (Unix seconds): a created object's creationTimestamp, in whole
        # seconds as the apiserver stamps it. A test may set it to run the apiserver's clock
        # apart from the code under test's.
        self.clock: Callable[[], float] = time.time

    def __enter__(self) -> FakeKubeApi:
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        super().__exit__(*exc)

    def add_secret(self, namespace: str, name: str, type_: str,
                   data: dict[str, str]) -> None:
        """A Secret (served from the generic store: GET, and the writes too)."""
        self.apply(SECRETS, {"apiVersion": "v1", "kind": "Secret", "type": type_,
                             "data": dict(data),
                             "metadata": {"name": name, "namespace": namespace}})

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig file naming this server (what ``UMEC_KUBECONFIG`` points at)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        return path

    def deny(self, token: str, resource: Resource, namespace: str | None,
             verbs: tuple[str, ...]) -> None:
        """RBAC that does not grant ``verbs`` on ``resource`` in ``namespace`` to ``token``."""
        with self._cond:
            self.denied |= {(token, resource, namespace, verb) for verb in verbs}

    def _forbidden(self, method: str, path: str, authorization: str | None) -> str | None:
        """The verb refused to this request's identity, or None."""
        bare, _, query = path.partition("?")
        route = self._route(bare)
        if route is None or not authorization or not authorization.startswith("Bearer "):
            return None
        resource, namespace, name = route
        watch = urllib.parse.parse_qs(query).get("watch", [""])[0] in ("true", "1", "True")
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, "get" if name is not None else "watch" if watch else "list")
        key = (authorization.removeprefix("Bearer "), resource, namespace, verb)
        with self._cond:
            return verb if key in self.denied else None

    def custom_objects(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(
            kubernetes.client.ApiClient(self.configuration()))

    # --- state (the test's side: what kubectl apply/delete would do) ----------------------------

    def _resource(self, group: str, version: str, plural: str) -> Resource | None:
        return next((r for r in self.resources if (r.group, r.version, r.plural)
                     == (group, version, plural)), None)

    def _store(self, resource: Resource, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        """Under the lock: stamp, store, log the event and wake the watches."""
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", resource.api_version)
        obj.setdefault("kind", resource.kind)
        meta = obj.setdefault("metadata", {})
        rv = self._next_rv()
        meta["resourceVersion"] = rv
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp",
                        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock())))
        meta["generation"] = int(meta.get("generation") or 0) + 1
        self.objects[resource][_key(obj)] = obj
        self.events.append(Event(int(rv), resource, kind, copy.deepcopy(obj)))
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def apply(self, resource: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace (ADDED or MODIFIED)."""
        with self._cond:
            kind = "MODIFIED" if _key(obj) in self.objects[resource] else "ADDED"
            if kind == "MODIFIED":
                old = self.objects[resource][_key(obj)]["metadata"]
                obj = copy.deepcopy(obj)
                obj.setdefault("metadata", {}).update(
                    uid=old["uid"], generation=old["generation"],
                    creationTimestamp=old["creationTimestamp"])
            return self._store(resource, obj, kind)

    def delete(self, resource: Resource, name: str, namespace: str | None = None) -> None:
        with self._cond:
            obj = self.objects[resource].pop((namespace or "", name))
            obj["metadata"]["resourceVersion"] = rv = self._next_rv()
            self.events.append(Event(int(rv), resource, "DELETED", obj))
            self._cond.notify_all()

    def get(self, resource: Resource, name: str, namespace: str | None = None
            ) -> dict[str, Any]:
        with self._cond:
            return copy.deepcopy(self.objects[resource][(namespace or "", name)])

    def current_rv(self) -> int:
        with self._cond:
            return self._rv

    def compact(self) -> None:
        """etcd compaction: every resourceVersion up to now is too old to watch from."""
        with self._cond:
            self.compacted = self._rv + 1
            self.events = [e for e in self.events if e.rv >= self.compacted]

    def drop_watches(self) -> None:
        """Cut every open watch mid-stream (no final chunk)."""
        self._flag_watches("dropped")

    def expire_watches(self) -> None:
        """End every open watch with an ERROR event: 410 Expired."""
        self._flag_watches("expired")

    def bookmark(self) -> None:
        self._flag_watches("bookmark_due")

    def _flag_watches(self, flag: str) -> None:
        with self._cond:
            for w in self._watches:
                setattr(w, flag, True)
            self._cond.notify_all()

    def open_watches(self) -> int:
        with self._cond:
            return len(self._watches)

    def wait_for_watches(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.open_watches() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.open_watches()} watches open, wanted {count}")
            time.sleep(0.01)

    # --- request handling -----------------------------------------------------------------------

    def _route(self, path: str) -> tuple[Resource, str | None, str | None] | None:
        match = GROUP_PATH.match(path) or CORE_PATH.match(path)
        if match is None:
            return None
        parts = match.groupdict()
        resource = self._resource(parts.get("group") or "", parts["version"], parts["plural"])
        if resource is None:
            return None
        return resource, parts["ns"], parts["name"]

    def _handle(self, method: str, path: str, ctype: str | None, body: Any) -> tuple[int, Any]:
        bare, _, _query = path.partition("?")
        route = self._route(bare)
        if route is None:
            return super()._handle(method, path, ctype, body)
        if (failure := self._injected_failure(method, path)) is not None:
            return failure
        resource, namespace, name = route
        if resource.namespaced is False and namespace is not None:
            return 404, _status(404, "NotFound", f"{resource.plural} is cluster-scoped")
        with self._cond:
            try:
                if name is None:
                    return self._collection(method, resource, namespace, body)
                return self._item(method, resource, (namespace or "", name), ctype, body)
            except PatchError as err:
                return err.status, _status(err.status, err.reason, err.message)

    def _collection(self, method: str, resource: Resource, namespace: str | None,
                    body: Any) -> tuple[int, Any]:
        if method == "GET":
            items = [copy.deepcopy(o) for k, o in sorted(self.objects[resource].items())
                     if namespace is None or k[0] == namespace]
            return 200, {"apiVersion": resource.api_version, "kind": f"{resource.kind}List",
                         "metadata": {"resourceVersion": str(self._rv)}, "items": items}
        if method != "POST":
            return 405, _status(405, "MethodNotAllowed", method)
        if not isinstance(body, dict):
            raise PatchError(400, "BadRequest", "the body must be an object")
        if resource.namespaced:
            body.setdefault("metadata", {})["namespace"] = namespace or "default"
        if _key(body) in self.objects[resource]:
            raise PatchError(409, "AlreadyExists",
                             f'{resource.plural} "{_key(body)[1]}" already exists')
        return 201, self._store(resource, body, "ADDED")

    def _item(self, method: str, resource: Resource, key: tuple[str, str], ctype: str | None,
              body: Any) -> tuple[int, Any]:
        current = self.objects[resource].get(key)
        if current is None:
            return 404, _status(404, "NotFound", f'{resource.plural} "{key[1]}" not found')
        if method == "GET":
            return 200, copy.deepcopy(current)
        if method == "DELETE":
            del self.objects[resource][key]
            current["metadata"]["resourceVersion"] = rv = self._next_rv()
            self.events.append(Event(int(rv), resource, "DELETED", copy.deepcopy(current)))
            self._cond.notify_all()
            return 200, copy.deepcopy(current)
        if method == "PUT":
            new = body
        elif method == "PATCH":
            new = self._patched(current, ctype, body)
        else:
            return 405, _status(405, "MethodNotAllowed", method)
        if not isinstance(new, dict) or not isinstance(new.get("metadata"), dict):
            raise PatchError(400, "BadRequest", "the object must have metadata")
        if resource.namespaced:
            new["metadata"].setdefault("namespace", key[0])
        if _key(new) != key:
            raise PatchError(422, "Invalid", "metadata.name and namespace are immutable")
        sent_rv = new["metadata"].get("resourceVersion")
        if sent_rv is not None and sent_rv != current["metadata"]["resourceVersion"]:
            raise PatchError(409, "Conflict", f'Operation cannot be fulfilled on '
                             f'{resource.plural} "{key[1]}": the object has been modified')
        new = copy.deepcopy(new)
        new["metadata"].update(uid=current["metadata"]["uid"],
                               generation=current["metadata"]["generation"],
                               creationTimestamp=current["metadata"]["creationTimestamp"])
        return 200, self._store(resource, new, "MODIFIED")

    @staticmethod
    def _patched(current: dict[str, Any], ctype: str | None, body: Any) -> Any:
        if ctype == JSON_PATCH:
            return apply_json_patch(current, body)
        if ctype in (MERGE_PATCH, STRATEGIC_PATCH):
            if not isinstance(body, dict):
                raise PatchError(400, "BadRequest", "merge patch must be an object")
            return apply_merge_patch(current, body, strategic=ctype == STRATEGIC_PATCH)
        raise PatchError(415, "UnsupportedMediaType", f"content type {ctype}")

    # --- watches ----------------------------------------------------------------------------------

    def _watch_route(self, path: str) -> tuple[Resource, str | None, dict[str, str]] | None:
        bare, _, query = path.partition("?")
        params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        if params.get("watch") not in ("true", "1", "True"):
            return None
        route = self._route(bare)
        if route is None or route[2] is not None:
            return None
        return route[0], route[1], params

    def _serve_watch(self, handler: BaseHTTPRequestHandler, resource: Resource,
                     namespace: str | None, params: dict[str, str]) -> None:
        with self._cond:
            self.watch_requests[resource.plural] = self.watch_requests.get(resource.plural,
                                                                           0) + 1
            self.requests.append(RecordedRequest("GET", handler.path, None, None, 200))
            start = params.get("resourceVersion", "")
            initial: list[dict[str, Any]] = []
            if start in ("", "0"):
                cursor = self._rv
                initial = [{"type": "ADDED", "object": copy.deepcopy(o)}
                           for k, o in sorted(self.objects[resource].items())
                           if namespace is None or k[0] == namespace]
            else:
                cursor = int(start) if start.isdigit() else -1
            watch = _Watch(resource, namespace, cursor,
                           params.get("allowWatchBookmarks") in ("true", "1", "True"), handler)
            too_old = cursor < self.compacted - 1
            if not too_old:
                self._watches.append(watch)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            if too_old:
                self._send(handler, self._gone(start))
                self._end(handler)
                return
            for event in initial:
                self._send(handler, event)
            self._pump(watch, float(params.get("timeoutSeconds") or 1800))
        except (ConnectionError, OSError):
            handler.close_connection = True
        finally:
            with self._cond:
                if watch in self._watches:
                    self._watches.remove(watch)

    def _pump(self, watch: _Watch, timeout: float) -> None:
        handler = watch.handler
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                pending = self._pending(watch)
                while not (pending or watch.dropped or watch.expired or watch.bookmark_due
                           or self._closed or time.monotonic() >= deadline):
                    self._cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
                    pending = self._pending(watch)
                dropped, expired, closed = watch.dropped, watch.expired, self._closed
                bookmark, watch.bookmark_due = watch.bookmark_due, False
                rv = self._rv
            if dropped or closed:
                handler.close_connection = True
                with suppress(OSError):
                    handler.connection.shutdown(socket.SHUT_RDWR)
                return
            for event in pending:
                self._send(handler, {"type": event.type, "object": event.object})
                watch.cursor = event.rv
            if bookmark and watch.bookmarks:
                self._send(handler, {"type": "BOOKMARK", "object": {
                    "apiVersion": watch.resource.api_version, "kind": watch.resource.kind,
                    "metadata": {"resourceVersion": str(rv)}}})
            if expired:
                self._send(handler, self._gone(str(watch.cursor)))
                self._end(handler)
                return
            if time.monotonic() >= deadline:
                self._end(handler)
                return

    def _pending(self, watch: _Watch) -> list[Event]:
        return [e for e in self.events if e.rv > watch.cursor and e.resource == watch.resource
                and (watch.namespace is None or _key(e.object)[0] == watch.namespace)]

    def _gone(self, rv: str) -> dict[str, Any]:
        return {"type": "ERROR", "object": _status(
            410, "Expired", f"too old resource version: {rv} ({self.compacted})")}

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        handler.wfile.flush()

    @staticmethod
    def _end(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler_class()
        fake = self

        class Handler(base):  # type: ignore[misc]  # built at run time
            def _serve(self, method: str) -> None:
                verb = fake._forbidden(method, self.path, self.headers.get("Authorization"))
                if verb is not None:
                    self._refuse(method, verb)
                    return
                route = fake._watch_route(self.path) if method == "GET" else None
                if route is not None:
                    fake._serve_watch(self, *route)
                    return
                super()._serve(method)

            def _refuse(self, method: str, verb: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                message = (f"forbidden: the token cannot {verb} {self.path.partition('?')[0]}")
                fake.requests.append(RecordedRequest(method, self.path, None, None, 403))
                out = json.dumps(_status(403, "Forbidden", message)).encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        return Handler


@contextmanager
def running_fake_kube_api() -> Iterator[FakeKubeApi]:
    with FakeKubeApi() as fake:
        yield fake
