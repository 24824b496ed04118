"""Periodic re-sync of the Kubernetes node labels and taints with the attestation state.

Notifications are sent once per state change; one that failed after its retries (API server
down, a network split) would leave a Node labelled ``attested=true`` although the database says
otherwise. Every ``kubernetes_resync_seconds`` the lease holder re-applies the stored state of
every node through the same idempotent read-modify-write (:meth:`KubernetesNodeSink.apply`):
nodes already right cost one GET each and are left alone.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter

from sqlalchemy import select

from attest.service.context import AttestContext
from attest.service.models import NodeRow
from attest.service.notify.event import NODE_STATES, NodeStateChanged
from attest.service.notify.kube import KubernetesNodeSink

log = logging.getLogger("umec.attest.resync")


def resync_node_labels(ctx: AttestContext, sink: KubernetesNodeSink) -> Counter[str]:
    """Re-apply every node's stored state; returns how many were patched/unchanged/absent
    (and ``failed``: those are tried again at the next round)."""
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(NodeRow.name, NodeRow.state)).all()
    outcomes: Counter[str] = Counter()
    now = ctx.now()
    for name, state in rows:
        if state not in NODE_STATES:
            continue
        event = NodeStateChanged(node=name, previous=state, state=state,
                                 reason="periodic re-sync", failed_checks=(), at=now,
                                 event_id=str(uuid.uuid4()))
        try:
            outcomes[sink.apply(event)] += 1
        except Exception as e:  # one node's failure must not stop the others
            outcomes["failed"] += 1
            log.warning("re-sync of node %s failed: %s", name, type(e).__name__)
    if outcomes["patched"] or outcomes["failed"]:
        log.warning("kubernetes node labels re-synced", extra=dict(outcomes))
    return outcomes
