"""The real cross-domain bridges: where one domain's event reaches another's state.

``attest``, ``admission`` and ``mec_api`` never import each other; these adapters do, and
``umec`` hands them to the domains' ``build_service`` as bridges:

- the token service asks admission whether a pod's images were verified and attestation whether
  its node is trusted, in one statement (:class:`JoinedWorkloadLookup`);
- a state change that ends a node's trust period writes its node revocation in the same
  transaction (:class:`RevokeInTransaction`) and then wakes this process's token followers
  (:class:`WakeFollowers`);
- forgetting an admission record (the pod was deleted or is gone) writes the pod's token
  revocation in the same transaction (:func:`pod_revocation_writer`);
- one Kubernetes API client serves attestation's node labels and admission's pull secrets and
  pod reconciler (:func:`kubernetes_api`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Select, String, bindparam, select

from admission.service.models import admission_pods
from admission.service.records import ForgetWriter
from mec_api.tokens.revocations import (
    MAX_TOKEN_LIFETIME_SECONDS,
    RevocationStore,
    write_node_revocation,
    write_pod_revocations,
)
from mec_api.tokens.trust import AdmittedImageView, AdmittedPodView, NodeTrustView, WorkloadView

if TYPE_CHECKING:  # the webhook process (its memory budget) imports this module too
    import kubernetes.client
    from sqlalchemy.orm import Session

    from attest.service.notify.event import NodeStateChanged

ALL_EPOCHS = 2**31 - 1
POD_GONE_REASON = "pod deleted: its admission record was forgotten"


class JoinedWorkloadLookup:
    """``WorkloadLookup`` in one statement: the pod's live admission record and its node's
    trust row, each left-joined to a one-row table of the two keys. One round trip and one
    snapshot per issuance instead of two reads (measured: half the server CPU of the two,
    ~195 against ~390 µs on PostgreSQL; docs/benchmarks.md, session 10)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._statement: Select[Any] | None = None

    def workload(self, node: str, pod_uid: str) -> WorkloadView:
        from kernel.sql_connect import single_reads
        with single_reads(self.engine) as conn:  # one statement: no BEGIN/ROLLBACK
            row = conn.execute(self._select(), {"node": node, "uid": pod_uid}).one()
        pod = None if row.pod_uid is None else AdmittedPodView(
            row.namespace, row.pod_name, row.pod_uid, row.verified, tuple(
                AdmittedImageView(i["path"], i["digest"], tuple(i["signers"]))
                for i in row.images))
        trust = None if row.node_name is None else NodeTrustView(
            row.node_name, row.state, row.last_pass_at, row.trust_epoch)
        return WorkloadView(pod, trust)

    def _select(self) -> Select[Any]:
        """Built once (building it costs more than running it)."""
        if self._statement is None:
            from attest.service.models import NodeRow  # not in the webhook process
            nodes, pods = NodeRow.__table__, admission_pods
            keys = select(bindparam("node", type_=String).label("node"),
                          bindparam("uid", type_=String).label("uid")).subquery("keys")
            statement: Select[Any] = select(
                nodes.c.name.label("node_name"), nodes.c.state, nodes.c.last_pass_at,
                nodes.c.trust_epoch, pods.c.uid.label("pod_uid"), pods.c.namespace,
                pods.c.name.label("pod_name"), pods.c.images, pods.c.verified,
            ).select_from(keys.outerjoin(nodes, nodes.c.name == keys.c.node).outerjoin(
                pods, (pods.c.uid == keys.c.uid) & pods.c.forgotten_at.is_(None)))
            self._statement = statement
        return self._statement


def ends_trust_period(event: NodeStateChanged) -> bool:
    """The change ends the node's trust period: it left ``trusted``, or it was removed or
    renamed (its tokens then name a node that no longer exists)."""
    return event.state == "removed" or (event.previous == "trusted"
                                        and event.state != "trusted")


class RevokeInTransaction:
    """``StateChangeWriter``: a change that ends a node's trust period writes its node
    revocation in the same transaction (tokens of every epoch below the one the change started,
    ``event.epoch``; an event without an epoch, 0, revokes every epoch: fail closed). If the
    write fails, the change rolls back with it: nothing to retry, nothing to lose."""

    def __init__(self, max_token_lifetime: float) -> None:
        self.max_token_lifetime = max_token_lifetime

    def __call__(self, db: Session | Connection, event: NodeStateChanged) -> None:
        if not ends_trust_period(event):
            return
        write_node_revocation(
            db, node=event.node, through_epoch=event.epoch - 1 if event.epoch > 0 else ALL_EPOCHS,
            reason=f"node {event.state}: {event.reason}", now=event.at,
            max_token_lifetime=self.max_token_lifetime)


class WakeFollowers:
    """``StateChangeSink``: after a committed change that revoked tokens, this process's
    followers read the set at once instead of at their next poll (others within theirs)."""

    name = "token-followers"

    def __init__(self, store: RevocationStore) -> None:
        self.store = store

    async def publish(self, event: NodeStateChanged) -> None:
        if ends_trust_period(event):
            self.store.poke()


def pod_revocation_writer(token_lifetime_seconds: float) -> ForgetWriter:
    """The forget writer: every token of each forgotten pod is revoked, in the transaction
    that deletes its record, for as long as any access token can live (the longest lifetime,
    not this process's setting: the webhook's and the server's settings may differ)."""
    lifetime = float(max(token_lifetime_seconds, MAX_TOKEN_LIFETIME_SECONDS))

    def write(conn: Connection, uids: Sequence[str], now: datetime) -> None:
        write_pod_revocations(conn, pod_uids=uids, reason=POD_GONE_REASON, now=now,
                              max_token_lifetime=lifetime)
    return write


def kubernetes_api(kubeconfig: Path | None) -> kubernetes.client.CoreV1Api:
    """The Kubernetes API from ``kubeconfig``, else the pod's service account. Imported only
    when used: the kubernetes client costs seconds of start-up."""
    from attest.service.notify.kube import kubernetes_api_from_config
    return kubernetes_api_from_config(kubeconfig, in_cluster=kubeconfig is None)
