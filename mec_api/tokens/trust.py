"""What the token service needs to know from attestation and admission, as small Protocols.

``mec_api`` never imports ``attest`` or ``admission``; ``umec`` wires adapters that read their
tables (node state and last passing evidence; the admitted pod's record) into these shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class NodeTrustView:
    name: str
    state: str                      # "trusted" is the only state that issues tokens
    last_pass_at: datetime | None   # time of the last passing evidence
    # The node's trust epoch, read in the same query as ``state`` (it grows whenever a trust
    # period ends); access tokens carry it and node revocations name the epochs they end.
    epoch: int = 0


@dataclass(frozen=True)
class AdmittedImageView:
    path: str                       # container path in the pod spec
    digest: str
    signers: tuple[str, ...]        # key ids whose signatures verified for this digest


@dataclass(frozen=True)
class AdmittedPodView:
    namespace: str
    name: str
    uid: str
    verified: bool
    images: tuple[AdmittedImageView, ...]


@dataclass(frozen=True)
class WorkloadView:
    """What the issuer reads about a workload: its pod's admission record (None: none live)
    and its node's trust (None: not enrolled), read together."""
    pod: AdmittedPodView | None
    node: NodeTrustView | None


class NodeTrust(Protocol):
    def node_trust(self, node: str) -> NodeTrustView | None: ...


class AdmissionLookup(Protocol):
    def admitted_pod(self, uid: str) -> AdmittedPodView | None: ...


class WorkloadLookup(Protocol):
    def workload(self, node: str, pod_uid: str) -> WorkloadView: ...


@dataclass(frozen=True)
class SeparateLookups:
    """A :class:`WorkloadLookup` made of a :class:`NodeTrust` and an :class:`AdmissionLookup`
    (two reads). ``umec server`` reads both in one statement instead
    (:class:`umec.bridges.JoinedWorkloadLookup`)."""
    nodes: NodeTrust
    admissions: AdmissionLookup

    def workload(self, node: str, pod_uid: str) -> WorkloadView:
        return WorkloadView(self.admissions.admitted_pod(pod_uid), self.nodes.node_trust(node))
