"""The pod reconciler: admission records whose pod is gone from the cluster are forgotten, and
with them (same transaction, the records' forget writers) every token of that pod is revoked.

The webhook forgets a record when it sees the pod's DELETE review, but that webhook is
``failurePolicy: Ignore`` (a webhook that is down must never block a deletion), evictions and
garbage collection may reach it late or not at all, and its database write may fail. This is
the net under it: one pass lists every live pod UID through the Kubernetes API and forgets the
records of the others.

* A record younger than ``grace_seconds`` is kept: a pod is admitted *before* the API server
  stores it, so a brand-new record has no live pod yet.
* A pod with ``metadata.deletionTimestamp`` is not live: it is being deleted, which is what the
  webhook's DELETE review revokes on too.
* The records are read before the pods are listed, so a record counted as gone was admitted
  more than ``grace_seconds`` before a listing that did not contain its pod.
* The listing is all or nothing: every page of ``list_pod_for_all_namespaces`` (``limit`` /
  ``_continue``) or an exception. A partial list would revoke live pods; a failed pass forgets
  nothing and the next one retries.

The server runs :func:`reconcile_task` under a lease (one replica lists the pods); it needs
``list`` on ``pods`` cluster-wide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from kernel.periodic import Lease, PeriodicTask

if TYPE_CHECKING:
    import kubernetes.client

log = logging.getLogger("umec.pod_reconcile")

PAGE_SIZE = 500
LIST_TIMEOUT_SECONDS = 30.0
RECONCILE_EVERY_SECONDS = 60.0
GRACE_SECONDS = 120.0   # admission → stored by the API server takes well under a second
FUTURE_TOLERANCE_SECONDS = 2.0  # a record dated further ahead is from before a backward step
GONE_REASON = "pod reconciler: the pod no longer exists in the cluster"


class ForgettableRecords(Protocol):
    """What the reconciler needs of :class:`admission.service.records.SqlAdmissionRecords`."""

    def admitted_before(self, cutoff: datetime) -> dict[str, datetime]: ...

    def redate_future(self, now: datetime, tolerance_seconds: float) -> int: ...

    def forget(self, uids: Sequence[str], reason: str) -> list[str]: ...


def forget_gone_pods(records: ForgettableRecords, list_live_pod_uids: Callable[[], set[str]],
                     *, grace_seconds: float, now: datetime) -> list[str]:
    """Forget (and so revoke) every record admitted more than ``grace_seconds`` before ``now``
    whose pod UID is not live; return the UIDs forgotten. Raises when the pods cannot be
    listed (nothing is forgotten then). A record dated more than ``FUTURE_TOLERANCE_SECONDS``
    after ``now`` (a backward clock step) is dated ``now`` first: its age restarts."""
    records.redate_future(now, FUTURE_TOLERANCE_SECONDS)
    candidates = records.admitted_before(now - timedelta(seconds=grace_seconds))
    if not candidates:
        return []          # nothing old enough: no call to the API server
    live = list_live_pod_uids()
    gone = sorted(uid for uid in candidates if uid not in live)
    return records.forget(gone, GONE_REASON) if gone else []


def live_pod_uids(core_v1_api: kubernetes.client.CoreV1Api, *, page_size: int = PAGE_SIZE,
                  timeout: float = LIST_TIMEOUT_SECONDS) -> set[str]:
    """The UID of every pod in the cluster that is not being deleted, over every page of
    ``list_pod_for_all_namespaces``. Any failure (an expired continue token: 410) raises."""
    uids: set[str] = set()
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"limit": page_size, "_request_timeout": timeout}
        if token:
            kwargs["_continue"] = token
        page = core_v1_api.list_pod_for_all_namespaces(**kwargs)
        for pod in page.items or []:
            meta = pod.metadata
            if meta is not None and meta.uid and meta.deletion_timestamp is None:
                uids.add(meta.uid)
        token = page.metadata._continue if page.metadata is not None else None
        if not token:
            return uids


class ReconcileRound:
    """One :func:`forget_gone_pods` pass, logging what it forgot (the net caught a missed
    DELETE review)."""

    def __init__(self, records: ForgettableRecords, list_live_pod_uids: Callable[[], set[str]],
                 *, now: Callable[[], datetime], grace_seconds: float = GRACE_SECONDS) -> None:
        self.records, self.list_live_pod_uids = records, list_live_pod_uids
        self.now, self.grace_seconds = now, grace_seconds

    def __call__(self) -> list[str]:
        gone = forget_gone_pods(self.records, self.list_live_pod_uids,
                                grace_seconds=self.grace_seconds, now=self.now())
        if gone:
            log.warning("forgot the admission records of pods gone from the cluster "
                        "(their DELETE review was missed)",
                        extra={"count": len(gone), "uids": gone[:20]})
        return gone


def reconcile_task(records: ForgettableRecords, list_live_pod_uids: Callable[[], set[str]], *,
                   now: Callable[[], datetime], lease: Lease | None,
                   every: float = RECONCILE_EVERY_SECONDS) -> PeriodicTask:
    """Every ``every`` seconds, when ``lease`` says this replica runs it, one
    :class:`ReconcileRound` in a worker thread. A failed pass forgets nothing and is logged;
    the next one retries."""
    return PeriodicTask("pod reconcile", every,
                        ReconcileRound(records, list_live_pod_uids, now=now),
                        lease=lease, delay_first=True)
