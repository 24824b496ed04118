"""Wiring of the admission webhook: real registry client and cosign verifier behind the
webhook's protocols, policies from files, records in SQL. Forgetting a record (the pod was
deleted or is gone) writes the pod's token revocation in the same transaction
(:func:`admission_records`): ``admission`` and ``mec_api`` never import each other, so the
writer is injected here."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fastapi import FastAPI
from sqlalchemy import Connection, Engine

from admission.core.keys_cosign import load_verification_key
from admission.core.policy import PolicySet, load_policies_yaml
from admission.core.reference import parse_reference
from admission.core.verify import VerifiedSignature
from admission.registry.client import RegistryClient
from admission.registry.credentials import Credentials
from admission.service.admit import PullCredentialSource, WebhookDeps
from admission.service.records import ForgetWriter, SqlAdmissionRecords
from admission.service.rego import RegoEvaluator
from admission.service.webhook import create_webhook_app
from admission.signing.verify import verify_image_signatures
from kernel.clock import clock_for
from keys import PublicKey
from mec_api.tokens.revocations import MAX_TOKEN_LIFETIME_SECONDS, write_pod_revocations
from umec.db import open_engine
from umec.http_limits import BodyLimits, BodyPolicy, install_error_handlers
from umec.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker


class RegistryClients:
    """One registry client per set of pod credentials, sharing one connection pool.

    A pod's imagePullSecrets come first, then the webhook's own docker config (the kubelet's
    order). Clients are kept for the last ``size`` credential sets so bearer tokens are reused.
    """

    def __init__(self, base: RegistryClient, size: int = 128) -> None:
        self.base = base
        self.size = size
        self._clients: OrderedDict[str, RegistryClient] = OrderedDict()

    def for_pod(self, credentials: Credentials | None) -> RegistryClient:
        if credentials is None or not len(credentials):
            return self.base
        merged = credentials.merged(self.base.credentials)
        key = merged.fingerprint()
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self.base.with_credentials(merged)
            while len(self._clients) > self.size:
                self._clients.popitem(last=False)
        self._clients.move_to_end(key)
        return client


class RegistryResolver:
    """``ImageResolver``: the digest a tag points to now, from the image's registry."""

    def __init__(self, clients: RegistryClients) -> None:
        self.clients = clients

    async def resolve(self, image: str, credentials: Credentials | None = None) -> str:
        client = self.clients.for_pod(credentials)
        return (await client.resolve(parse_reference(image))).digest


class CosignVerifier:
    """``SignatureVerifier``: cosign legacy signatures and bundles valid for exactly the digest.

    Registry failures propagate (the webhook denies: fail closed); signature failures just mean
    fewer signers, and the policy decides whether that is enough.
    """

    def __init__(self, clients: RegistryClients) -> None:
        self.clients = clients

    async def verify(self, image: str, keys: Mapping[str, PublicKey],
                     credentials: Credentials | None = None) -> Sequence[VerifiedSignature]:
        client = self.clients.for_pod(credentials)
        ref = parse_reference(image)
        # Legacy `.sig` first: when every policy key already signed there, the bundle lookup
        # (two more registry requests on registries without the referrers API) can only
        # repeat what we know. Otherwise look at both formats.
        signers, _ = await verify_image_signatures(client, ref, keys, bundles=False)
        if {s.key_id for s in signers} >= set(keys):
            return signers
        signers, _ = await verify_image_signatures(client, ref, keys)
        return signers


def load_policy_set(directory: Path | None,
                    default_no_match: Literal["deny", "allow", "warn"] = "deny") -> PolicySet:
    """Every ``*.yaml`` in ``directory`` (keys may reference files relative to it)."""
    docs = ""
    if directory is not None:
        docs = "\n---\n".join(p.read_text(encoding="utf-8")
                              for p in sorted(directory.glob("*.yaml")))

    def load_file(name: str) -> bytes:
        assert directory is not None
        path = (directory / name).resolve()
        if directory.resolve() not in path.parents:
            raise ValueError(f"key file {name!r} is outside the policy directory")
        return path.read_bytes()
    return load_policies_yaml(docs, default_no_match=default_no_match, load_file=load_file)


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
    from attest.service.notify_kube import kubernetes_api_from_config

    return KubePullSecrets(kubernetes_api_from_config(
        settings.kubeconfig, in_cluster=settings.kubeconfig is None))


def load_public_keys(paths: Sequence[Path]) -> dict[str, PublicKey]:
    return {str(p): load_verification_key(p.read_bytes(), where=str(p)) for p in paths}
