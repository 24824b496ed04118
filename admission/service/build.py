"""The admission service as ``umec`` serves it: :func:`build_service`.

Two roles, chosen by :class:`AdmissionConfig`:

- ``webhook`` (``umec webhook``): the AdmissionReview routes (:mod:`admission.service.webhook`,
  reading ``app.state.webhook``) over the registry client, the policy directory, the Rego
  decision and, with a Kubernetes API, the pods' pull secrets and (``watch_policies``) the
  ImagePolicy/ClusterImagePolicy objects followed live (:mod:`admission.service.policy_watch`,
  a background job);
- ``upkeep`` (``umec server``): tombstones of forgotten records pruned, and, with a Kubernetes
  API, the pod reconciler (:mod:`admission.service.pod_reconcile`) under a lease.

``bridges`` is what comes from outside admission: the database, the one clock of all replicas,
what else a forgotten record must take with it in its transaction (``umec`` wires the pod's
token revocation there) and the Kubernetes API client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from admission.core.policy import PolicySet
from admission.registry.client import RegistryClient
from admission.registry.credentials import Credentials
from admission.service.admit import WebhookDeps
from admission.service.attestations import RegistryAttestations
from admission.service.denials import SqlDenialLog
from admission.service.images import CosignVerifier, RegistryClients, RegistryResolver
from admission.service.pod_reconcile import (
    RECONCILE_EVERY_SECONDS,
    live_pod_uids,
    reconcile_task,
)
from admission.service.policy_dir import policy_documents
from admission.service.policy_watch import PolicySourceFailed, PolicyState, PolicyWatch
from admission.service.records import ForgetWriter, SqlAdmissionRecords
from admission.service.rego import RegoEvaluator
from admission.service.webhook import router
from kernel.periodic import PeriodicTask
from kernel.service import Service

TOMBSTONE_PRUNE_SECONDS = 2.0


@dataclass
class RegistryConfig:
    docker_config: Path | None = None      # docker config.json (auths); read when it exists
    ca: Path | None = None                 # the registries' CA bundle; None: system roots
    timeout_seconds: float = 5.0


@dataclass
class AdmissionConfig:
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    policy_dir: Path | None = None         # ImagePolicy YAMLs
    watch_policies: bool = False           # follow the policy CRs (needs a Kubernetes API)
    pull_secrets: bool = True              # with a Kubernetes API: the pods' pull secrets
    own_namespace: str = "umec-system"
    timeout_seconds: float = 10.0          # the webhook configuration's timeoutSeconds
    webhook: bool = True                   # serve the AdmissionReview routes
    upkeep: bool = False                   # prune tombstones; reconcile pods (with Kubernetes)
    reconcile_every_seconds: float = RECONCILE_EVERY_SECONDS
    metrics_token: str = ""                # GET /metrics needs it; "": loopback clients only


@dataclass
class AdmissionBridges:
    engine: Engine                          # the webhook uses Core only (no ORM: memory)
    now: Callable[[], datetime]             # the one clock of all replicas (kernel.clock)
    # In the transaction that forgets records (the pods' token revocations).
    forget_writers: Sequence[ForgetWriter] = ()
    # A kubernetes CoreV1Api: the pods' pull secrets (webhook), the pod listing (upkeep).
    kube_api: Any = None


@dataclass
class AdmissionParts:
    records: SqlAdmissionRecords
    denials: SqlDenialLog
    webhook: WebhookDeps | None = None
    policy_watch: PolicyWatch | None = None


def registry_client(config: RegistryConfig) -> RegistryClient:
    credentials = Credentials()
    if config.docker_config is not None and config.docker_config.exists():
        credentials = Credentials.from_docker_config(config.docker_config.read_bytes())
    return RegistryClient(credentials=credentials, timeout=config.timeout_seconds,
                          verify=str(config.ca) if config.ca else True)


def build_service(config: AdmissionConfig,
                  bridges: AdmissionBridges) -> Service[AdmissionParts]:
    """The admission service; ``parts`` holds its records and, serving, the webhook's deps."""
    records = SqlAdmissionRecords(bridges.engine, now=bridges.now,
                                  forget_writers=bridges.forget_writers)
    denials = SqlDenialLog(bridges.engine, now=bridges.now)
    service = Service("admission", AdmissionParts(records, denials))
    if config.webhook:
        watch = policy_watch(config, bridges)
        deps = webhook_deps(config, bridges, records, watch, denials)
        deps.admitter  # noqa: B018  (its caches exist from the start, not from the first review)
        service.parts.webhook = deps
        if watch is not None:
            service.parts.policy_watch = watch
            service.background.append(watch.run)
        service.state["webhook"] = deps
        service.routers.append(router)
    if config.upkeep:
        service.background.extend(task.run for task in upkeep_tasks(config, bridges, records))
    return service


def policy_watch(config: AdmissionConfig, bridges: AdmissionBridges) -> PolicyWatch | None:
    """With ``watch_policies``: the directory's documents plus the cluster's policy objects,
    followed live; fail closed when there is no Kubernetes API to follow them on."""
    if not config.watch_policies:
        return None
    if bridges.kube_api is None:
        raise PolicySourceFailed("watching ImagePolicy objects needs a Kubernetes API "
                                 "(in-cluster service account or UMEC_KUBECONFIG)")
    import kubernetes.client  # heavy: only when the policies come from the cluster
    docs, load_file = policy_documents(config.policy_dir)
    return PolicyWatch(kubernetes.client.CustomObjectsApi(bridges.kube_api.api_client),
                       PolicyState(docs, load_file))


def webhook_deps(config: AdmissionConfig, bridges: AdmissionBridges,
                 records: SqlAdmissionRecords, watch: PolicyWatch | None = None,
                 denials: SqlDenialLog | None = None) -> WebhookDeps:
    clients = RegistryClients(registry_client(config.registry))
    if watch is None:
        policy_set = PolicyState(*policy_documents(config.policy_dir)).current

        def fixed() -> PolicySet:
            return policy_set
        policies: Callable[[], PolicySet] = fixed
    else:
        policies = watch.current
    pull_secrets = None
    if bridges.kube_api is not None and config.pull_secrets:
        # Heavy (the kubernetes client): imported only when pull secrets are on.
        from admission.registry.pull_secrets import KubePullSecrets
        pull_secrets = KubePullSecrets(bridges.kube_api)
    return WebhookDeps(policies=policies, resolver=RegistryResolver(clients),
                       verifier=CosignVerifier(clients), rego=RegoEvaluator(),
                       attestations=RegistryAttestations(clients),
                       pull_secrets=pull_secrets, records=records, denials=denials,
                       own_namespace=config.own_namespace,
                       timeout_seconds=config.timeout_seconds,
                       metrics_token=config.metrics_token,
                       policies_loaded=watch.loaded if watch is not None else lambda: True,
                       database_ping=records.ping)


def upkeep_tasks(config: AdmissionConfig, bridges: AdmissionBridges,
                 records: SqlAdmissionRecords) -> list[PeriodicTask]:
    """Tombstones pruned every 2 s; with a Kubernetes API, the records of pods gone from the
    cluster forgotten (and their tokens revoked) by the lease holder."""
    tasks = [PeriodicTask("admission tombstone prune", TOMBSTONE_PRUNE_SECONDS,
                          lambda: records.prune_forgotten(bridges.now()), delay_first=True)]
    if bridges.kube_api is not None:
        from sqlalchemy.orm import sessionmaker  # the ORM: the server's, never the webhook's

        from kernel.lease import SqlLease
        every = config.reconcile_every_seconds
        lease = SqlLease(sessionmaker(bridges.engine), "pod-reconcile",
                         ttl=max(3 * every, 3.0), now=bridges.now)
        kube_api = bridges.kube_api
        tasks.append(reconcile_task(records, lambda: live_pod_uids(kube_api), now=bridges.now,
                                    lease=lease, every=every))
    return tasks
