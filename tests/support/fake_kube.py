"""An HTTP-level fake of the slice of the Kubernetes API that node notifications use.

It is a real HTTP server on 127.0.0.1 (stdlib ``ThreadingHTTPServer`` in a daemon thread) so the
OFFICIAL ``kubernetes`` client talks to it over a socket exactly as it talks to an apiserver: its
urllib3 transport, its serialisation and its error mapping are all exercised. Implemented:

* ``GET /api/v1/nodes/{name}`` → the Node, or a 404 ``Status``.
* ``PATCH /api/v1/nodes/{name}`` with the content types the client can send:

  - ``application/json-patch+json`` (RFC 6902: add, remove, replace, test; JSON pointers with
    ``~0``/``~1`` escapes), a failed ``test`` answers 422;
  - ``application/merge-patch+json`` (RFC 7386: objects merge, ``null`` deletes, lists replace);
  - ``application/strategic-merge-patch+json``: for the fields used on a Node here (labels,
    annotations, ``spec.taints``, which has no patch merge key upstream) it behaves like a merge
    patch; ``$patch``/``$retainKeys``/``$setElementOrder`` directives are answered 415 rather than
    silently mis-applied.

* Optimistic concurrency as the apiserver does it: every successful write bumps
  ``metadata.resourceVersion``; a patch whose result carries a different ``resourceVersion`` than
  the stored object is rejected with 409 ``Conflict``.
* The apiserver's validation that taints are unique per ``(key, effect)`` and label values are
  strings (422 otherwise), so "no duplicate taints" is checked by the server, not by the test.

* ``GET /api/v1/pods?limit=N&continue=T`` (``list_pod_for_all_namespaces``): pods added with
  :meth:`FakeKube.add_pod`, ordered by namespace and name, paginated as the apiserver does it
  (``metadata.continue`` until the last page); after :meth:`FakeKube.expire_continue_tokens`
  every request with a continue token answers 410 ``Expired`` (the apiserver's compaction).

Test hooks: :meth:`FakeKube.concurrent_writer` simulates another controller writing the Node
between a client's GET and PATCH (the next PATCHes then see a newer ``resourceVersion``),
:meth:`FakeKube.fail_next` answers the next requests with an error status, and
:attr:`FakeKube.requests` records every request (method, path, content type, parsed body, status).
"""

from __future__ import annotations

import copy
import json
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kubernetes.client

NODE_PATH = re.compile(r"^/api/v1/nodes/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$")
NAMESPACED_PATH = re.compile(
    r"^/api/v1/namespaces/([a-z0-9][-a-z0-9]*)/(secrets|serviceaccounts)/([a-z0-9][-a-z0-9.]*)$")
PODS_PATH = "/api/v1/pods"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
SMP_DIRECTIVES = ("$patch", "$retainKeys", "$setElementOrder", "$deleteFromPrimitiveList")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    content_type: str | None
    body: Any
    status: int


class PatchError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


# --- RFC 6902 JSON patch ------------------------------------------------------------------------

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(422, "Invalid", f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> tuple[Any, str]:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise PatchError(422, "Invalid", f"path segment {part!r} does not exist")
    if not parts:
        raise PatchError(422, "Invalid", "operations on the document root are not supported")
    return cur, parts[-1]


def apply_json_patch(doc: dict[str, Any], ops: Any) -> dict[str, Any]:
    if not isinstance(ops, list):
        raise PatchError(400, "BadRequest", "a JSON patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(400, "BadRequest", f"malformed operation {op!r}")
        parent, key = _parent(doc, _pointer(op["path"]))
        kind = op["op"]
        if isinstance(parent, list):
            idx = len(parent) if key == "-" else (int(key) if key.isdigit() else -1)
            if not 0 <= idx <= len(parent) or (kind != "add" and idx == len(parent)):
                raise PatchError(422, "Invalid", f"index {key!r} out of range")
            if kind == "add":
                parent.insert(idx, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[idx]
            elif kind == "replace":
                parent[idx] = copy.deepcopy(op["value"])
            elif kind == "test":
                if parent[idx] != op["value"]:
                    raise PatchError(422, "Invalid", f"test failed at {op['path']}")
            else:
                raise PatchError(400, "BadRequest", f"unsupported op {kind!r}")
            continue
        if not isinstance(parent, dict):
            raise PatchError(422, "Invalid", f"{op['path']} does not address an object member")
        if kind == "add":
            parent[key] = copy.deepcopy(op["value"])
        elif kind in ("remove", "replace", "test") and key not in parent:
            raise PatchError(422, "Invalid", f"{op['path']} does not exist")
        elif kind == "remove":
            del parent[key]
        elif kind == "replace":
            parent[key] = copy.deepcopy(op["value"])
        elif kind == "test":
            if parent[key] != op["value"]:
                raise PatchError(422, "Invalid", f"test failed at {op['path']}")
        else:
            raise PatchError(400, "BadRequest", f"unsupported op {kind!r}")
    return doc


# --- RFC 7386 merge patch (and the strategic-merge subset used on Nodes) -----------------------

def apply_merge_patch(target: Any, patch: Any, *, strategic: bool = False) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if strategic and any(k in patch for k in SMP_DIRECTIVES):
        raise PatchError(415, "UnsupportedMediaType", "fake_kube does not implement SMP directives")
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value, strategic=strategic)
    return result


def _validate(node: dict[str, Any]) -> None:
    labels = node.get("metadata", {}).get("labels") or {}
    if not all(isinstance(v, str) for v in labels.values()):
        raise PatchError(422, "Invalid", "label values must be strings")
    seen: set[tuple[str, str]] = set()
    for taint in node.get("spec", {}).get("taints") or []:
        pair = (taint.get("key"), taint.get("effect"))
        if not pair[0] or pair[1] not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise PatchError(422, "Invalid", f"invalid taint {taint!r}")
        if pair in seen:
            raise PatchError(422, "Invalid", f"taints must be unique by key and effect: {pair}")
        seen.add(pair)


class QuietHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients dropping idle keep-alive connections at shutdown are not errors worth a trace.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeKube:
    """The fake apiserver; use as a context manager (starts and stops the server thread)."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        # Namespaced objects served read-only: (resource, namespace, name) → object.
        self.namespaced: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.delay = 0.0  # seconds every answer waits (an API server that hangs)
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) → Pod
        self.continue_expired = False  # every continue token answers 410 Expired
        self.requests: list[RecordedRequest] = []
        self._rv = 1000
        self._lock = threading.Lock()
        self._writers: list[Callable[[dict[str, Any]], None]] = []
        # (status, method or None for any, path suffix or "" for any), the next matching
        # requests answer the status.
        self._failures: list[tuple[int, str | None, str]] = []
        self._server = QuietHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- state ---------------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def add_node(self, name: str, labels: dict[str, str] | None = None,
                 taints: list[dict[str, Any]] | None = None, created: str | None = None
                 ) -> None:
        """A Node; ``created`` is its creationTimestamp (default: now, in whole seconds, as the
        apiserver stamps it)."""
        stamp = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._lock:
            self.nodes[name] = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "uid": f"uid-{name}", "labels": dict(labels or {}),
                             "resourceVersion": self._next_rv(),
                             "creationTimestamp": stamp},
                "spec": {"taints": copy.deepcopy(taints)} if taints else {},
                "status": {},
            }

    def add_secret(self, namespace: str, name: str, type_: str,
                   data: dict[str, str]) -> None:
        self.namespaced[("secrets", namespace, name)] = {
            "apiVersion": "v1", "kind": "Secret", "type": type_, "data": dict(data),
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"}}

    def add_service_account(self, namespace: str, name: str,
                            pull_secrets: list[str]) -> None:
        self.namespaced[("serviceaccounts", namespace, name)] = {
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
            "imagePullSecrets": [{"name": n} for n in pull_secrets]}

    def add_pod(self, namespace: str, name: str, uid: str, *, deleting: bool = False) -> None:
        """A Pod (``deleting``: with ``metadata.deletionTimestamp``, i.e. terminating)."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid,
                                "creationTimestamp": "2026-01-01T00:00:00Z"}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:05:00Z"
        with self._lock:
            meta["resourceVersion"] = self._next_rv()
            self.pods[(namespace, name)] = {
                "apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": {"containers": [{"name": "app", "image": "registry.local/app:1"}]},
                "status": {"phase": "Running"}}

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            del self.pods[(namespace, name)]

    def expire_continue_tokens(self) -> None:
        self.continue_expired = True

    def _list_pods(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        limit = int(query.get("limit", ["0"])[0] or 0)
        token = query.get("continue", [""])[0]
        start = 0
        if token:
            if self.continue_expired or not token.isdigit():
                return 410, _status(410, "Expired", "The provided continue parameter is too "
                                    "old to display a consistent list result.")
            start = int(token)
        with self._lock:
            pods = [copy.deepcopy(self.pods[k]) for k in sorted(self.pods)]
        end = start + limit if limit else len(pods)
        meta: dict[str, Any] = {"resourceVersion": str(self._rv)}
        if end < len(pods):
            meta["continue"] = str(end)
            meta["remainingItemCount"] = len(pods) - end
        return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": meta,
                     "items": pods[start:end]}

    def node(self, name: str) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self.nodes[name])

    def concurrent_writer(self, mutate: Callable[[dict[str, Any]], None], times: int = 1) -> None:
        """Before each of the next ``times`` PATCHes, another writer mutates the Node first."""
        self._writers.extend([mutate] * times)

    def fail_next(self, status: int, times: int = 1, *, method: str | None = None,
                  path: str = "") -> None:
        """The next ``times`` requests answer ``status``; only those with ``method`` and a
        path ending in ``path`` if given (others pass through)."""
        with self._lock:
            self._failures.extend([(status, method, path)] * times)

    def _injected_failure(self, method: str, path: str) -> tuple[int, Any] | None:
        bare = path.partition("?")[0]
        with self._lock:
            for i, (status, want, suffix) in enumerate(self._failures):
                if want in (None, method) and bare.endswith(suffix):
                    del self._failures[i]
                    return status, _status(status, "InternalError", "injected failure")
        return None

    def calls(self, method: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if method is None or r.method == method]

    def configuration(self) -> kubernetes.client.Configuration:
        return kubernetes.client.Configuration(host=self.url)

    def core_v1(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(self.configuration()))

    # --- request handling -----------------------------------------------------------------------

    def _handle(self, method: str, path: str, ctype: str | None, body: Any) -> tuple[int, Any]:
        if (failure := self._injected_failure(method, path)) is not None:
            return failure
        if self.delay:
            time.sleep(self.delay)
        bare, _, query = path.partition("?")
        if bare == PODS_PATH:
            if method != "GET":
                return 405, _status(405, "MethodNotAllowed", method)
            return self._list_pods(urllib.parse.parse_qs(query))
        namespaced = NAMESPACED_PATH.match(path.split("?", 1)[0])
        if namespaced is not None:
            key = (namespaced.group(2), namespaced.group(1), namespaced.group(3))
            if method != "GET":
                return 405, _status(405, "MethodNotAllowed", method)
            with self._lock:
                obj = self.namespaced.get(key)
            if obj is None:
                return 404, _status(404, "NotFound", f'{key[0]} "{key[2]}" not found')
            return 200, copy.deepcopy(obj)
        match = NODE_PATH.match(path.split("?", 1)[0])
        if match is None:
            return 404, _status(404, "NotFound", f"the server could not find {path}")
        name = match.group(1)
        with self._lock:
            if name not in self.nodes:
                return 404, _status(404, "NotFound", f'nodes "{name}" not found')
            if method == "GET":
                return 200, copy.deepcopy(self.nodes[name])
            if method != "PATCH":
                return 405, _status(405, "MethodNotAllowed", method)
            if self._writers:  # another controller got in between the client's GET and PATCH
                self._writers.pop(0)(self.nodes[name])
                self.nodes[name]["metadata"]["resourceVersion"] = self._next_rv()
            current = self.nodes[name]
            try:
                if ctype == JSON_PATCH:
                    new = apply_json_patch(current, body)
                elif ctype in (MERGE_PATCH, STRATEGIC_PATCH):
                    if not isinstance(body, dict):
                        raise PatchError(400, "BadRequest", "merge patch must be an object")
                    new = apply_merge_patch(current, body, strategic=ctype == STRATEGIC_PATCH)
                else:
                    raise PatchError(415, "UnsupportedMediaType", f"content type {ctype}")
                rv = new.get("metadata", {}).get("resourceVersion")
                if rv is not None and rv != current["metadata"]["resourceVersion"]:
                    raise PatchError(409, "Conflict", f'Operation cannot be fulfilled on nodes '
                                     f'"{name}": the object has been modified; please apply '
                                     f'your changes to the latest version and try again')
                if new.get("metadata", {}).get("name") != name:
                    raise PatchError(422, "Invalid", "metadata.name is immutable")
                _validate(new)
            except PatchError as err:
                return err.status, _status(err.status, err.reason, err.message)
            new["metadata"]["resourceVersion"] = self._next_rv()
            self.nodes[name] = new
            return 200, copy.deepcopy(new)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type")
                ctype = ctype.split(";")[0].strip() if ctype else None
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    status, payload = 400, _status(400, "BadRequest", "body is not JSON")
                else:
                    status, payload = fake._handle(method, self.path, ctype, body)
                fake.requests.append(RecordedRequest(method, self.path, ctype, body, status))
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

        return Handler


@contextmanager
def running_fake_kube() -> Iterator[FakeKube]:
    with FakeKube() as fake:
        yield fake
