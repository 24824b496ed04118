"""Background work of the attestation service, as :class:`kernel.periodic.PeriodicTask`s that
the server's lifespan runs:

- :func:`deadline_task`: the lease holder marks overdue nodes stale and prunes expired
  enrolments (challenges are stateless: nothing to prune);
- :func:`resync_task`: the lease holder re-applies every node's stored state to its Kubernetes
  labels and taints (:mod:`attest.service.resync`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from attest.service.context import AttestContext
from attest.service.registrar import prune_enrollments
from attest.service.verifier import mark_stale_nodes
from kernel.lease import SqlLease
from kernel.periodic import PeriodicTask

if TYPE_CHECKING:  # the kubernetes client costs seconds of start-up: imported when enabled
    from attest.service.notify.kube import KubernetesNodeSink

PRUNE_EVERY_SECONDS = 30.0
DEADLINE_LEASE_SECONDS = 10.0


class DeadlineRound:
    """Mark overdue nodes stale; every :data:`PRUNE_EVERY_SECONDS` also prune expired
    enrolments."""

    def __init__(self, ctx: AttestContext) -> None:
        self.ctx = ctx
        self.pruned_at = float("-inf")

    def __call__(self) -> None:
        mark_stale_nodes(self.ctx)
        if time.monotonic() - self.pruned_at >= PRUNE_EVERY_SECONDS:
            prune_enrollments(self.ctx)
            self.pruned_at = time.monotonic()


def deadline_task(ctx: AttestContext, every: float) -> PeriodicTask:
    """The lease holder runs a :class:`DeadlineRound` every ``every`` seconds."""
    # The lease is renewed when a run starts; a run may take its budget (verifier.
    # SWEEP_BUDGET_SECONDS) plus one batch, which under overload took about 2.5 s (the scale
    # bench: a 3 s lease changed hands 19-35 times). A replica that dies hands over within the
    # TTL, a delay of stale marking the grace absorbs.
    lease = SqlLease(ctx.sessions, "deadlines", ttl=max(3 * every, DEADLINE_LEASE_SECONDS),
                     now=lambda: ctx.now())
    return PeriodicTask("deadline check", every, DeadlineRound(ctx), lease=lease)


def resync_task(ctx: AttestContext, sink: KubernetesNodeSink, every: float) -> PeriodicTask:
    """The lease holder re-syncs the Kubernetes node labels every ``every`` seconds."""
    from attest.service.resync import resync_node_labels
    lease = SqlLease(ctx.sessions, "kubernetes-resync", ttl=max(3 * every, 30.0),
                     now=lambda: ctx.now())
    return PeriodicTask("kubernetes label re-sync", every,
                        lambda: resync_node_labels(ctx, sink), lease=lease, delay_first=True)
