"""Wiring of the admission webhook: settings mapped to admission's parts (the registry client,
the policy directory, pull secrets, records in SQL) and the one bridge to another domain.
Forgetting a record (the pod was deleted or is gone) writes the pod's token revocation in the
same transaction (:func:`admission_records`): ``admission`` and ``mec_api`` never import each
other, so the writer is injected here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from fastapi import FastAPI
from sqlalchemy import Connection, Engine

from admission.registry.client import RegistryClient
from admission.registry.credentials import Credentials
from admission.service.admit import PullCredentialSource, WebhookDeps
from admission.service.images import CosignVerifier, RegistryClients, RegistryResolver
from admission.service.policy_dir import load_policy_set
from admission.service.records import ForgetWriter, SqlAdmissionRecords
from admission.service.rego import RegoEvaluator
from admission.service.webhook import create_webhook_app
from kernel.clock import clock_for
from mec_api.tokens.revocations import MAX_TOKEN_LIFETIME_SECONDS, write_pod_revocations
from umec.db import open_engine
from umec.http_limits import BodyLimits, BodyPolicy, install_error_handlers
from umec.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


def registry_client(settings: Settings) -> RegistryClient:
    credentials = Credentials()
    if settings.docker_config is not None and settings.docker_config.exists():
        credentials = Credentials.from_docker_config(settings.docker_config.read_bytes())
    return RegistryClient(credentials=credentials, timeout=settings.registry_timeout_seconds,
                          verify=str(settings.registry_ca) if settings.registry_ca else True)


POD_GONE_REASON = "pod deleted: its admission record was forgotten"


def pod_revocation_writer(settings: Settings) -> ForgetWriter:
    """The forget writer: every token of each forgotten pod is revoked, in the transaction
    that deletes its record, for as long as any access token can live (the longest lifetime,
    not this process's setting: the webhook's and the server's settings may differ)."""
    lifetime = float(max(settings.token_lifetime_seconds, MAX_TOKEN_LIFETIME_SECONDS))

    def write(conn: Connection, uids: Sequence[str], now: datetime) -> None:
        write_pod_revocations(conn, pod_uids=uids, reason=POD_GONE_REASON, now=now,
                              max_token_lifetime=lifetime)
    return write


def admission_records(settings: Settings,
                      database: Engine | sessionmaker[Session]) -> SqlAdmissionRecords:
    """The admission records with the pod revocation writer, dated by the clock every replica
    shares (the database's on PostgreSQL: entry expiry is compared with tokens' ``exp``)."""
    engine = database if isinstance(database, Engine) else database.kw["bind"]
    return SqlAdmissionRecords(database, now=clock_for(engine).now,
                               forget_writers=[pod_revocation_writer(settings)])


def build_webhook(settings: Settings) -> tuple[FastAPI, WebhookDeps]:
    engine = open_engine(settings.resolved_database_url())
    clients = RegistryClients(registry_client(settings))
    policies = load_policy_set(settings.admission_policy_dir)
    deps = WebhookDeps(policies=lambda: policies, resolver=RegistryResolver(clients),
                       verifier=CosignVerifier(clients), rego=RegoEvaluator(),
                       pull_secrets=kube_pull_secrets(settings),
                       records=admission_records(settings, engine),
                       own_namespace=settings.webhook_namespace,
                       timeout_seconds=settings.webhook_timeout_seconds)
    app = create_webhook_app(deps)
    # The webhook's own review limit answers first (its check names the review); this bounds
    # every route and the time to send a body. 16 MiB of bodies in flight fits its memory budget.
    app.add_middleware(BodyLimits, policy=BodyPolicy(
        default_bytes=deps.max_review_bytes + 64 * 1024, budget_bytes=16 << 20,
        seconds=settings.request_body_timeout_seconds))
    install_error_handlers(app)
    return app, deps


def kube_pull_secrets(settings: Settings) -> PullCredentialSource | None:
    """Pods' imagePullSecrets through the Kubernetes API, when the webhook runs in a cluster
    (in-cluster service account) or ``kubeconfig`` is set; otherwise only the docker config."""
    if not settings.webhook_pull_secrets:
        return None
    # Heavy (the kubernetes client): imported only when pull secrets are on.
    from admission.registry.pull_secrets import KubePullSecrets
    from attest.service.notify.kube import kubernetes_api_from_config

    return KubePullSecrets(kubernetes_api_from_config(
        settings.kubeconfig, in_cluster=settings.kubeconfig is None))

