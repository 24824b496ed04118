"""Mirror node attestation state onto the Kubernetes Node: label ``umec.io/attested`` and taint.

Mapping (DESIGN.md, "Attestation protocol" step 6):

===========================  ======================  =========================================
state                        label umec.io/attested  taint umec.io/untrusted
===========================  ======================  =========================================
trusted                      ``"true"``              removed
untrusted / stale / enrolled ``"false"``             ``umec.io/untrusted=<state>:NoExecute``
===========================  ======================  =========================================

``NoExecute`` evicts running workloads that do not tolerate it, and keeps new ones off; the value
says why. An ``enrolled`` node has not produced a passing quote yet, so it is treated as untrusted.

One update is a read-modify-write of the Node, because taints are a list that a merge patch
replaces wholesale and other controllers (the node lifecycle controller, cordon, operators) write
it too:

1. GET the Node as raw JSON. Raw, not the generated model, so foreign taints round-trip byte for
   byte, including fields newer than this client version.
2. :func:`plan_node_patch` (pure) computes the RFC 7386 merge patch: our label, the taint list with
   every foreign taint kept in order and exactly one ``umec.io/untrusted`` taint (or none). If the
   Node already matches, nothing is written: repeats are idempotent and cost one GET.
3. PATCH (``application/merge-patch+json``) carrying the ``metadata.resourceVersion`` read in step
   1. The apiserver treats it as a precondition: if anyone wrote the Node in between, it answers
   409 and we go back to step 1 instead of clobbering their taint.

404 means the attested node name is not a Kubernetes node (e.g. a node attested before joining
k3s): logged, not an error. Transient failures (5xx, 429, connection errors) are retried with
backoff; what still fails is logged and counted in ``umec_notify_failures_total{sink="kubernetes"}``
and never raised. The client is synchronous: each update runs in a worker thread, and updates of the
same node are serialised by a per-node lock so they land in the order they were published.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, cast

import anyio.to_thread
import kubernetes.client
import kubernetes.config
import urllib3
import urllib3.exceptions
import yaml
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from attest.service.notify.event import (
    NOTIFY_FAILURES,
    NodeStateChanged,
    NotifyError,
    backoff_delay,
)

log = logging.getLogger(__name__)

LABEL_KEY: Final = "umec.io/attested"
TAINT_KEY: Final = "umec.io/untrusted"
TAINT_EFFECT: Final = "NoExecute"
MERGE_PATCH: Final = "application/merge-patch+json"


class KubeConfigUnavailable(NotifyError):
    check = "notify.kubernetes.config"
    hint = ("Configure a readable kubeconfig file, or run in-cluster with a service account "
            "allowed to get and patch nodes.")


class NodeUpdateConflicts(NotifyError):
    check = "notify.kubernetes.conflict"
    hint = "Another controller rewrites this Node continuously; find it (kubectl get events)."


class _Conflict(Exception):
    """Internal: the PATCH lost a resourceVersion race; re-read and try again."""


def desired_marking(state: str) -> tuple[str, dict[str, str] | None]:
    """The label value and taint (None: no taint) a node in ``state`` must carry."""
    if state == "trusted":
        return "true", None
    return "false", {"key": TAINT_KEY, "value": state, "effect": TAINT_EFFECT}


def plan_node_patch(node: dict[str, Any], state: str) -> dict[str, Any] | None:
    """The merge patch that brings ``node`` (raw Node JSON) to ``state``; None if it is there.

    Pure. Foreign taints are kept in place and unchanged; of our key exactly one taint is kept
    (the first, rewritten if its value/effect differ) or none on ``trusted``.
    """
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    spec = node.get("spec") or {}
    taints: list[Any] = spec.get("taints") or []
    label, wanted = desired_marking(state)

    new_taints: list[Any] = []
    placed = False
    for taint in taints:
        if not (isinstance(taint, dict) and taint.get("key") == TAINT_KEY):
            new_taints.append(taint)
            continue
        if wanted is None or placed:
            continue  # trusted, or a duplicate of ours: drop
        same = taint.get("value") == wanted["value"] and taint.get("effect") == TAINT_EFFECT
        new_taints.append(taint if same else dict(wanted))  # same: keep its timeAdded
        placed = True
    if wanted is not None and not placed:
        new_taints.append(dict(wanted))

    patch_meta: dict[str, Any] = {}
    patch: dict[str, Any] = {}
    if labels.get(LABEL_KEY) != label:
        patch_meta["labels"] = {LABEL_KEY: label}
    if new_taints != taints:
        # null deletes the field (RFC 7386); k8s omits an empty taint list anyway.
        patch["spec"] = {"taints": new_taints or None}
    if not patch_meta and not patch:
        return None
    patch_meta["resourceVersion"] = metadata.get("resourceVersion")
    patch["metadata"] = patch_meta
    return patch


def kubernetes_api_from_config(kubeconfig: Path | None,
                               in_cluster: bool) -> kubernetes.client.CoreV1Api:
    """A CoreV1Api from the pod's service account or a kubeconfig (None: $KUBECONFIG/default)."""
    configuration = kubernetes.client.Configuration()
    try:
        if in_cluster:
            if kubeconfig is not None:
                raise KubeConfigUnavailable(f"both in_cluster and kubeconfig={kubeconfig} given")
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]  # untyped lib
                client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]  # untyped lib
                config_file=str(kubeconfig) if kubeconfig is not None else None,
                client_configuration=configuration, persist_config=False)
    except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as err:
        source = "in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig}"
        raise KubeConfigUnavailable(f"{source}: {type(err).__name__}: {err}") from None
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))


def _transient(err: Exception) -> bool:
    if isinstance(err, ApiException):
        return err.status is not None and (err.status >= 500 or err.status == 429)
    return isinstance(err, urllib3.exceptions.HTTPError)


class KubernetesNodeSink:
    """Label and taint the Kubernetes Node named like the attested node; never raises."""

    name = "kubernetes"

    def __init__(self, api: kubernetes.client.CoreV1Api, *, timeout: float = 10.0,
                 conflict_retries: int = 5, retries: int = 3, backoff_base: float = 0.2,
                 backoff_max: float = 5.0, rng: Callable[[], float] = random.random,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._api = api
        self._timeout = timeout
        self._conflict_retries = conflict_retries
        self._retries = retries
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._rng = rng
        self._sleep = sleep
        # asyncio locks belong to one event loop; callers without a running loop publish through
        # asyncio.run (a new loop each time), so keep one lock table per loop.
        self._locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()

    async def publish(self, event: NodeStateChanged) -> None:
        locks = self._locks.setdefault(asyncio.get_running_loop(), {})
        lock = locks.setdefault(event.node, asyncio.Lock())
        async with lock:
            try:
                outcome = await anyio.to_thread.run_sync(self.apply, event)
            except Exception as err:
                NOTIFY_FAILURES.labels(sink=self.name).inc()
                log.warning("kubernetes node update failed", extra={
                    "notify_sink": self.name, "event_id": event.event_id, "node": event.node,
                    "state": event.state, "error": f"{type(err).__name__}: {err}"})
                return
        if outcome == "absent":
            log.warning("attested node is not a kubernetes node; nothing labelled", extra={
                "notify_sink": self.name, "event_id": event.event_id, "node": event.node,
                "state": event.state})
        else:
            log.info("kubernetes node %s", outcome, extra={
                "notify_sink": self.name, "event_id": event.event_id, "node": event.node,
                "state": event.state})

    def apply(self, event: NodeStateChanged) -> str:
        """Synchronous read-modify-write; returns "patched", "unchanged" or "absent".

        Raises the last ApiException/urllib3 error once retries are spent, or
        :class:`NodeUpdateConflicts` when every attempt lost a resourceVersion race.
        """
        conflicts = failures = 0
        while True:
            try:
                return self._attempt(event)
            except _Conflict:
                conflicts += 1
                if conflicts > self._conflict_retries:
                    raise NodeUpdateConflicts(
                        f"node {event.node}: {conflicts} resourceVersion conflicts") from None
                # Someone else just wrote; a short jittered pause avoids a tight duel.
                self._sleep(self._backoff_base * self._rng())
            except (ApiException, urllib3.exceptions.HTTPError) as err:
                failures += 1
                if not _transient(err) or failures > self._retries:
                    raise
                self._sleep(backoff_delay(failures, self._backoff_base, self._backoff_max,
                                          self._rng))

    def _attempt(self, event: NodeStateChanged) -> str:
        try:
            # With _preload_content=False the client returns the urllib3 response, not V1Node.
            response = cast(urllib3.BaseHTTPResponse, self._api.read_node(
                event.node, _preload_content=False, _request_timeout=self._timeout))
        except ApiException as err:
            if err.status == 404:
                return "absent"
            raise
        node = json.loads(response.data)
        patch = plan_node_patch(node, event.state)
        if patch is None:
            return "unchanged"
        try:
            self._api.patch_node(event.node, patch, _content_type=MERGE_PATCH,
                                 _preload_content=False, _request_timeout=self._timeout)
        except ApiException as err:
            if err.status == 409:
                raise _Conflict from None
            if err.status == 404:  # deleted between GET and PATCH
                return "absent"
            raise
        return "patched"
