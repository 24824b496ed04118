"""Live image policies: the webhook follows its ImagePolicy and ClusterImagePolicy objects.

:class:`PolicyWatch` keeps the webhook's current :class:`~admission.core.policy.PolicySet`
(``WebhookDeps.policies``) equal to the policy directory's documents (read once, at start) plus
every valid policy object in the cluster, the way a Kubernetes informer does it, one thread per
resource (``clusterimagepolicies``, ``imagepolicies`` in every namespace, group ``umec.io``):

1. **List** (``CustomObjectsApi.list_cluster_custom_object``): every object of the resource
   replaces what was known of it; the list's ``metadata.resourceVersion`` is where the watch
   starts.
2. **Watch** from that resourceVersion (``watch=true``, ``allowWatchBookmarks``, a server-side
   ``timeoutSeconds`` of 5 to 7.5 minutes and a socket read timeout just above it, so a
   connection that died silently is noticed). ``ADDED``/``MODIFIED``/``DELETED`` change one
   object; ``BOOKMARK`` only moves the resourceVersion. A stream the server ends is resumed
   from the last resourceVersion seen, at once.
3. **410 Gone** (an ``ERROR`` event with code 410, or a 410 answer): the resourceVersion was
   compacted away; list again (step 1), which also catches whatever changed meanwhile.
4. **Errors** (refused connection, a dropped stream, 5xx, 403 without RBAC, a line that is not
   JSON): logged as :class:`PolicySourceFailed`, then retried after a back-off that doubles
   from 0.5 s to 30 s (with jitter) and resets once a list or watch succeeds. The policies
   already known stay in force meanwhile.

Every change rebuilds the set (a new ``generation``, so no verdict cached under the old
policies is reused) within one event: a changed policy applies as soon as the API server sends
the event, in well under a second here.

Fail closed:

* An object that does not parse (:class:`~admission.core.policy.PolicyInvalid`: an unknown key,
  a bad key, a threshold above the number of keys, a ``file:`` key reference — objects from
  the API may not read the webhook's files —, the name of a policy the directory defines, or a
  kind other than the resource's) is **refused** and logged with its check id; the **last good
  version of that object stays** (none if it never parsed). The refusal is per object, so a
  tenant's broken ImagePolicy in its own namespace cannot freeze everyone else's updates.
* Until the first list of a resource succeeds the set holds only the directory's documents;
  with neither, no policy matches and the ``noMatch`` rule applies, ``deny`` unless a policy
  said otherwise. Nothing here ever produces "no policy, so allow".
* A deleted object is gone from the set at once (its images then fall under ``noMatch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from admission.core.errors import AdmissionError
from admission.core.policy import (
    FileLoader,
    NoMatch,
    PolicyInvalid,
    PolicySet,
    load_policies,
    parse_policy,
)

log = logging.getLogger("umec.admission.policies")

GROUP, VERSION = "umec.io", "v1alpha1"
MAX_EVENT_BYTES = 4 << 20        # one watch event (one policy object); more is refused
ObjectKey = tuple[str, str, str]   # (kind, namespace or "", name)


@dataclass(frozen=True)
class PolicyResource:
    plural: str
    kind: str


RESOURCES = (PolicyResource("clusterimagepolicies", "ClusterImagePolicy"),
             PolicyResource("imagepolicies", "ImagePolicy"))


class PolicySourceFailed(AdmissionError):
    """Listing or watching the policy objects failed (the last policies read stay)."""

    check = "policy.source"
    hint = ("The webhook keeps the policies it last read and retries with back-off. Check that "
            "the CRDs of deploy/crd-imagepolicy.yaml are installed, that the webhook's "
            "ServiceAccount may get/list/watch them (deploy/rbac.yaml) and that the API server "
            "is reachable.")
    status = 503
    public = False


class WatchExpired(Exception):
    """410 Gone: the resourceVersion is older than the API server keeps; list again."""


@dataclass(frozen=True)
class WatchTiming:
    timeout_seconds: int = 300        # server-side watch timeout (plus up to 50 % jitter)
    connect_seconds: float = 5.0
    read_grace_seconds: float = 30.0  # socket read timeout = watch timeout + this
    backoff_first: float = 0.5
    backoff_max: float = 30.0


@dataclass
class _Backoff:
    first: float
    most: float
    current: float = 0.0

    def next(self) -> float:
        self.current = min(self.most, self.current * 2 if self.current else self.first)
        return self.current * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self.current = 0.0


def _key_of(resource: PolicyResource, obj: Any) -> ObjectKey | None:
    """The key of whatever names itself in ``metadata`` (None: it names nothing)."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        return None
    namespace = meta.get("namespace")
    return resource.kind, namespace if isinstance(namespace, str) else "", meta["name"]


def _document(resource: PolicyResource, obj: Any) -> tuple[ObjectKey, dict[str, Any]]:
    """The policy document of an API object (status and server-set metadata dropped) and its
    key; :class:`PolicyInvalid` when it is no object of this resource."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        raise PolicyInvalid(f"{resource.kind}: an object without metadata")
    meta = obj["metadata"]
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str | None):
        raise PolicyInvalid(f"{resource.kind}: metadata.name/namespace are not strings")
    if obj.get("kind") != resource.kind:
        raise PolicyInvalid(f"{resource.kind}/{name}: kind {obj.get('kind')!r} from the "
                            f"{resource.plural} resource")
    doc_meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        doc_meta["namespace"] = namespace
    doc = {"apiVersion": obj.get("apiVersion"), "kind": resource.kind, "metadata": doc_meta,
           "spec": obj.get("spec")}
    return (resource.kind, namespace or "", name), doc


@dataclass
class PolicyState:
    """The directory's documents plus the last good version of every policy object; the set
    built from them. Thread-safe; pure apart from logging (no I/O)."""

    static_docs: Sequence[Any] = ()
    load_file: FileLoader | None = None
    default_no_match: NoMatch = "deny"
    good: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    refused: dict[ObjectKey, str] = field(default_factory=dict)   # key → why (current)
    on_change: Callable[[PolicySet], None] | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        # The directory's documents are the operator's own files: invalid ones stop the start.
        self.current = load_policies(list(self.static_docs), default_no_match=self.default_no_match,
                                     load_file=self.load_file)
        self._static_refs = {p.ref for p in self.current.policies}

    def _check(self, resource: PolicyResource, obj: Any) -> tuple[ObjectKey, dict[str, Any]]:
        key, doc = _document(resource, obj)
        policy = parse_policy(doc, load_file=None)   # no file: references from the API
        if policy.ref in self._static_refs:
            raise PolicyInvalid(f"{policy.ref}: the policy directory defines it already")
        return key, doc

    def replace_all(self, resource: PolicyResource, items: Sequence[Any]) -> None:
        """A list's items: every object of ``resource`` is one of these (refused ones keep
        their last good version)."""
        with self._lock:
            seen: set[ObjectKey] = set()
            for obj in items:
                key = self._apply_locked(resource, obj)
                if key is not None:
                    seen.add(key)
            for key in [k for k in self.good if k[0] == resource.kind and k not in seen]:
                del self.good[key]
                self.refused.pop(key, None)
            self._rebuild_locked()

    def apply_event(self, resource: PolicyResource, kind: str, obj: Any) -> None:
        with self._lock:
            if kind == "DELETED":
                try:
                    key, _doc = _document(resource, obj)
                except PolicyInvalid as err:
                    self._refuse(resource, None, err)
                    return
                self.good.pop(key, None)
                self.refused.pop(key, None)
            else:
                self._apply_locked(resource, obj)
            self._rebuild_locked()

    def _apply_locked(self, resource: PolicyResource, obj: Any) -> ObjectKey | None:
        try:
            key, doc = self._check(resource, obj)
        except PolicyInvalid as err:
            named = _key_of(resource, obj)
            self._refuse(resource, named, err)
            return named
        self.good[key] = doc
        self.refused.pop(key, None)
        return key

    def _refuse(self, resource: PolicyResource, key: ObjectKey | None,
                err: PolicyInvalid) -> None:
        kept = key is not None and key in self.good
        if key is not None:
            self.refused[key] = err.detail
        log.warning("%s refused; %s", "/".join(k for k in (key or (resource.kind,)) if k),
                    "its last good version stays in force" if kept else
                    "it is not in force (no valid version of it was seen)",
                    extra={"check": err.check, "error": type(err).__name__,
                           "detail": err.detail, "hint": err.hint})

    def _rebuild_locked(self) -> None:
        docs = [*self.static_docs, *(self.good[k] for k in sorted(self.good))]
        try:
            new = load_policies(docs, default_no_match=self.default_no_match,
                                load_file=self.load_file)
        except PolicyInvalid as err:  # not expected: each object parsed on its own
            log.error("policy set not rebuilt; the previous one stays",
                      extra={"check": err.check, "detail": err.detail, "hint": err.hint})
            return
        if new.generation != self.current.generation:
            self.current = new
            log.info("image policies changed", extra={
                "policy_generation": new.generation, "policies": len(new.policies),
                "refused": len(self.refused)})
            if self.on_change is not None:
                self.on_change(new)


def _event_lines(response: Any) -> Iterator[bytes]:
    """The watch stream's lines (one JSON event each), however the chunks fall."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
        if len(pending) > MAX_EVENT_BYTES:
            raise ValueError(f"a watch event longer than {MAX_EVENT_BYTES} bytes")
    if pending.strip():
        yield pending


class PolicyWatch:
    """List and watch both policy resources (module doc); :meth:`current` is the set."""

    def __init__(self, api: Any, state: PolicyState, timing: WatchTiming | None = None) -> None:
        self.api = api                     # a kubernetes.client.CustomObjectsApi
        self.state = state
        self.timing = timing or WatchTiming()
        self.synced = {r.plural: threading.Event() for r in RESOURCES}
        self.lists = {r.plural: 0 for r in RESOURCES}   # lists done (re-lists after 410 count)
        # Where each watch resumes (None: list first).
        self.resource_versions: dict[str, str | None] = {r.plural: None for r in RESOURCES}
        self._stop = threading.Event()
        self._responses: set[Any] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def current(self) -> PolicySet:
        return self.state.current

    def loaded(self) -> bool:
        """Whether every resource was listed once (the webhook's ``/readyz``): until then the
        set holds only the directory's documents."""
        return all(event.is_set() for event in self.synced.values())

    # --- one resource -------------------------------------------------------------------------

    def _list(self, resource: PolicyResource) -> str:
        listing = self.api.list_cluster_custom_object(
            GROUP, VERSION, resource.plural,
            _request_timeout=(self.timing.connect_seconds, 60.0))
        if not isinstance(listing, dict) or not isinstance(listing.get("items"), list):
            raise ValueError(f"{resource.plural}: the list is not a list")
        self.state.replace_all(resource, listing["items"])
        self.lists[resource.plural] += 1
        self.synced[resource.plural].set()
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, resource: PolicyResource, rv: str, backoff: _Backoff) -> None:
        """Follow one watch stream until it ends; ``resource_versions`` holds the last
        resourceVersion seen, also when the stream breaks."""
        timeout = int(self.timing.timeout_seconds * random.uniform(1.0, 1.5))
        response = self.api.list_cluster_custom_object(
            GROUP, VERSION, resource.plural, watch=True, resource_version=rv,
            allow_watch_bookmarks=True, timeout_seconds=timeout, _preload_content=False,
            _request_timeout=(self.timing.connect_seconds,
                              timeout + self.timing.read_grace_seconds))
        with self._lock:
            self._responses.add(response)   # stop() shuts it down from now on...
        try:
            if self._stop.is_set():         # ...or had already taken its list: nothing to read
                return
            backoff.reset()
            for line in _event_lines(response):
                if self._stop.is_set():
                    break
                rv = self._event(resource, json.loads(line), rv)
                self.resource_versions[resource.plural] = rv
        finally:
            with self._lock:
                self._responses.discard(response)
            response.release_conn()

    def _event(self, resource: PolicyResource, event: Any, rv: str) -> str:
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ValueError("a watch event that is not an object")
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpired(str(obj.get("message", "")))
            raise ValueError(f"watch ERROR {obj.get('code')}: {obj.get('message')}")
        new_rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.state.apply_event(resource, str(kind), obj)
        elif kind != "BOOKMARK":
            raise ValueError(f"unknown watch event type {kind!r}")
        return str(new_rv) if new_rv else rv

    def follow(self, resource: PolicyResource) -> None:
        """List, watch, re-list on 410, back off on errors: until :meth:`stop`."""
        versions = self.resource_versions
        versions[resource.plural] = None
        backoff = _Backoff(self.timing.backoff_first, self.timing.backoff_max)
        while not self._stop.is_set():
            try:
                rv = versions[resource.plural]
                if rv is None:
                    versions[resource.plural] = rv = self._list(resource)
                    backoff.reset()
                self._watch(resource, rv, backoff)
            except WatchExpired:
                versions[resource.plural] = None  # list again: it has whatever changed since
            except Exception as exc:  # the API, the network or a bad line: retry, keep policies
                if self._stop.is_set():
                    return
                if _status(exc) == 410:
                    versions[resource.plural] = None
                    continue
                err = PolicySourceFailed(f"{resource.plural}: {type(exc).__name__}: "
                                         f"{str(exc)[:300]}")
                delay = backoff.next()
                log.warning("watching image policies failed; retrying in %.1f s", delay,
                            extra={"check": err.check, "detail": err.detail, "hint": err.hint})
                self._stop.wait(delay)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        for resource in RESOURCES:
            thread = threading.Thread(target=self.follow, args=(resource,), daemon=True,
                                      name=f"policy-watch-{resource.plural}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads: open streams are shut down so no read waits for its timeout."""
        self._stop.set()
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            with contextlib.suppress(Exception):
                getattr(response, "shutdown", response.close)()  # shutdown: urllib3 >= 2.3
        for thread in self._threads:
            thread.join(timeout=5)

    async def run(self) -> None:
        """The background job (kernel.service): start, then stop when cancelled."""
        self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.to_thread(self.stop)


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None
