"""The real cross-domain bridges: where one domain's event reaches another's state.

``attest``, ``admission`` and ``mec_api`` never import each other; these adapters do, and
``umec`` hands them to the domains' ``build_service`` as bridges:

- the token service asks attestation whether a node is trusted (:class:`AttestNodeTrust`) and
  admission whether a pod's images were verified (:class:`AdmissionRecordLookup`);
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
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from admission.service.records import ForgetWriter, SqlAdmissionRecords
from mec_api.tokens.revocations import (
    MAX_TOKEN_LIFETIME_SECONDS,
    RevocationStore,
    write_node_revocation,
    write_pod_revocations,
)
from mec_api.tokens.trust import AdmittedImageView, AdmittedPodView, NodeTrustView

if TYPE_CHECKING:  # the webhook process (its memory budget) imports this module too
    import kubernetes.client
    from sqlalchemy.orm import Session, sessionmaker

    from attest.service.notify.event import NodeStateChanged

ALL_EPOCHS = 2**31 - 1
POD_GONE_REASON = "pod deleted: its admission record was forgotten"


class AttestNodeTrust:
    """``NodeTrust`` over the attestation node table (read fresh on every issuance)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def node_trust(self, node: str) -> NodeTrustView | None:
        from attest.service.fleet import node_trust_record  # not in the webhook process
        # State and epoch in one query: a trusted state read here is of this epoch.
        row = node_trust_record(self.sessions, node)
        return None if row is None else NodeTrustView(node, row.state, row.last_pass_at,
                                                      row.trust_epoch)


class AdmissionRecordLookup:
    """``AdmissionLookup`` over the webhook's admission records."""

    def __init__(self, records: SqlAdmissionRecords) -> None:
        self.records = records

    def admitted_pod(self, uid: str) -> AdmittedPodView | None:
        pod = self.records.lookup(uid)
        if pod is None:
            return None
        return AdmittedPodView(pod.namespace, pod.name, pod.uid, pod.verified, tuple(
            AdmittedImageView(i.path, i.digest, tuple(i.signers)) for i in pod.images))


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
