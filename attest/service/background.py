"""Background work of the attestation service, started by ``umec server``'s lifespan.

- :func:`deadline_loop`: the lease holder marks overdue nodes stale and prunes expired
  challenges and enrolments.
- :func:`resync_loop`: the lease holder re-applies every node's stored state to its Kubernetes
  labels and taints (:mod:`attest.service.resync`).

Each round runs in a worker thread (database work must not block the event loop), and a failed
round is logged and the loop carries on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from attest.service.context import AttestContext
from attest.service.registrar import prune_enrollments
from attest.service.verifier import Lease, mark_stale_nodes, prune_nonces

if TYPE_CHECKING:  # the kubernetes client costs seconds of start-up: imported when enabled
    from attest.service.notify.kube import KubernetesNodeSink

log = logging.getLogger("umec.server")

PRUNE_EVERY_SECONDS = 30.0


async def deadline_loop(ctx: AttestContext, every: float) -> None:
    """The lease holder marks overdue nodes stale and prunes expired challenges."""
    lease = Lease(ctx, ttl=max(3 * every, 3.0))
    pruned_at = 0.0
    while True:
        try:
            if await asyncio.to_thread(lease.acquire):
                await asyncio.to_thread(mark_stale_nodes, ctx)
                if time.monotonic() - pruned_at >= PRUNE_EVERY_SECONDS:
                    await asyncio.to_thread(prune_nonces, ctx)
                    await asyncio.to_thread(prune_enrollments, ctx)
                    pruned_at = time.monotonic()
        except Exception:  # keep checking deadlines whatever one round hit
            log.exception("deadline check failed")
        await asyncio.sleep(every)


async def resync_loop(ctx: AttestContext, sink: KubernetesNodeSink, every: float) -> None:
    """The lease holder re-syncs the Kubernetes node labels every ``every`` seconds."""
    from attest.service.resync import resync_node_labels
    lease = Lease(ctx, name="kubernetes-resync", ttl=max(3 * every, 30.0))
    while True:
        await asyncio.sleep(every)
        try:
            if await asyncio.to_thread(lease.acquire):
                await asyncio.to_thread(resync_node_labels, ctx, sink)
        except Exception:  # keep re-syncing whatever one round hit
            log.exception("kubernetes label re-sync failed")
