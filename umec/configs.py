"""Settings mapped to each domain's config: the one place a ``UMEC_*`` setting becomes a
domain's knob (:func:`attest_config`, :func:`admission_config`, :func:`server_mec_api_config`,
:func:`api_process_mec_api_config`), and the request-body limits of the resource APIs.

Each function imports its domain when called: a process loads only the domains it runs (the
webhook's memory budget is 120 MB).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from keys import atomic_write
from umec.http_limits import BodyRule
from umec.settings import Settings

if TYPE_CHECKING:
    from admission.service.build import AdmissionConfig, RegistryConfig
    from attest.service.context import AttestConfig
    from keys import PublicKey
    from mec_api.service.build import ApisConfig, MecApiConfig

INFERENCE_MAX_IMAGE_BYTES = 20 * 1024 * 1024  # mec_api.inference.image.ImageLimits.max_bytes
INFERENCE_BODY_SECONDS = 60.0  # a 20 MiB image over a slow edge uplink


# The operator routes answer every wrong bearer at once (no lock-out to abuse): the token's
# length is what makes guessing it hopeless. Generated tokens are 43 characters (256 bits).
MIN_OPERATOR_TOKEN = 32


def operator_token(settings: Settings) -> str:
    """The configured token (at least :data:`MIN_OPERATOR_TOKEN` characters, else
    ``settings.invalid``), else one generated once and kept (0600) in the data directory."""
    if settings.operator_token:
        if len(settings.operator_token.strip()) < MIN_OPERATOR_TOKEN:
            from umec.cli_errors import SettingsInvalid
            raise SettingsInvalid(
                f"UMEC_OPERATOR_TOKEN has {len(settings.operator_token.strip())} characters; "
                f"at least {MIN_OPERATOR_TOKEN} are required (it can be guessed online)",
                hint="unset it to have one generated, or use `openssl rand -base64 32`")
        return settings.operator_token
    path = settings.data_dir / "operator-token"
    with contextlib.suppress(FileExistsError):  # another process made it first: use that one
        atomic_write(path, secrets.token_urlsafe(32).encode(), overwrite=False)
    return path.read_text().strip()


def public_base(settings: Settings) -> str:
    scheme = "https" if settings.tls_cert else "http"
    return (settings.public_url or
            f"{scheme}://{settings.listen_host}:{settings.listen_port}").rstrip("/")


def attest_config(settings: Settings) -> AttestConfig:
    from cryptography import x509

    from attest.service.context import AttestConfig
    from attest.service.registrar import load_pem_bundle
    anchors: list[x509.Certificate] = []
    intermediates: list[x509.Certificate] = []
    if settings.ek_ca_bundle is not None:
        anchors, intermediates = load_pem_bundle(settings.ek_ca_bundle.read_bytes())
    return AttestConfig(
        ek_trust_anchors=anchors, ek_intermediates=intermediates,
        ek_allowlist=frozenset(h.lower() for h in settings.ek_allowlist),
        default_node_class=settings.default_node_class,
        nonce_ttl_seconds=settings.nonce_ttl_seconds,
        interval_seconds=settings.attestation_interval_seconds,
        stale_grace_seconds=settings.stale_grace_seconds,
        result_ttl_seconds=settings.result_ttl_seconds,
        rate_per_source=settings.attest_rate_per_source,
        burst_per_source=settings.attest_burst_per_source,
        operator_token=operator_token(settings),
        issuer=settings.public_url or f"http://{settings.listen_host}:{settings.listen_port}",
        deadline_check_seconds=settings.deadline_check_seconds,
        kubernetes_resync_seconds=settings.kubernetes_resync_seconds,
        webhook_urls=tuple(settings.webhook_urls),
        webhook_secret=settings.webhook_secret.encode(),
        policy_dir=settings.policy_dir, policy_signers=policy_signers(settings),
        policy_threshold=settings.policy_threshold)


def policy_signers(settings: Settings) -> dict[str, PublicKey]:
    """UMEC_POLICY_SIGNERS loaded (one key given twice is one signer); a threshold no set of
    distinct signers could meet is a settings error, not a policy that is never applied."""
    from attest.core.policy_envelope import trusted_keys
    from keys import load_public_key_file
    from umec.cli_errors import SettingsInvalid
    signers = trusted_keys([load_public_key_file(p) for p in settings.policy_signers])
    if signers and settings.policy_threshold > len(signers):
        raise SettingsInvalid(
            f"UMEC_POLICY_THRESHOLD={settings.policy_threshold} but UMEC_POLICY_SIGNERS names "
            f"{len(signers)} distinct key(s)",
            hint="list more distinct signer keys or lower UMEC_POLICY_THRESHOLD")
    return signers


def registry_config(settings: Settings) -> RegistryConfig:
    from admission.service.build import RegistryConfig
    return RegistryConfig(docker_config=settings.docker_config, ca=settings.registry_ca,
                          timeout_seconds=settings.registry_timeout_seconds)


def admission_config(settings: Settings, *, webhook: bool) -> AdmissionConfig:
    """``webhook``: ``umec webhook`` (the review routes); else ``umec server`` (the records'
    upkeep: tombstones, and the pod reconciler every minute or every Kubernetes re-sync,
    whichever is more often)."""
    from admission.service.build import AdmissionConfig
    from admission.service.pod_reconcile import RECONCILE_EVERY_SECONDS
    return AdmissionConfig(
        registry=registry_config(settings), policy_dir=settings.admission_policy_dir,
        watch_policies=webhook and settings.admission_policy_crds,
        pull_secrets=settings.webhook_pull_secrets,
        own_namespace=settings.webhook_namespace,
        timeout_seconds=settings.webhook_timeout_seconds, webhook=webhook, upkeep=not webhook,
        reconcile_every_seconds=min(RECONCILE_EVERY_SECONDS,
                                    settings.kubernetes_resync_seconds),
        metrics_token=settings.metrics_token)


def apis_config(settings: Settings, which: Sequence[str], *, public_url: str,
                token_endpoint: str) -> ApisConfig:
    from mec_api.service.build import ApisConfig, InferenceConfig, Mec011Config, SensorConfig
    return ApisConfig(
        which=tuple(which), public_url=public_url, token_endpoint=token_endpoint,
        sensor=SensorConfig(
            retention_days=settings.sensor_retention_days,
            purge_interval_seconds=settings.sensor_purge_interval_seconds,
            max_body_bytes=settings.sensor_max_body_bytes, mqtt_url=settings.sensor_mqtt_url,
            mqtt_topic=settings.sensor_mqtt_topic,
            mqtt_client_id=settings.sensor_mqtt_client_id,
            mqtt_ca_file=settings.sensor_mqtt_ca_file),
        mec011=Mec011Config(
            callback_attempts=settings.mec011_callback_attempts,
            callback_timeout_seconds=settings.mec011_callback_timeout_seconds,
            liveness_sweep_seconds=settings.mec011_liveness_sweep_seconds),
        cameras=tuple(settings.cameras),
        inference=InferenceConfig(
            enabled=settings.inference_enabled,
            model_cache_dir=settings.model_cache_dir or settings.data_dir / "models",
            threads=settings.inference_threads,
            max_concurrency=settings.inference_max_concurrency,
            max_waiting=settings.inference_max_waiting))


def server_mec_api_config(settings: Settings, operator: str) -> MecApiConfig:
    """``umec server``: the token service under ``public_base``, and every resource API."""
    from mec_api.service.build import API_NAMES, ClusterKeysConfig, MecApiConfig, TokenConfig
    base = public_base(settings)
    tokens = TokenConfig(
        public_base=base, keys_dir=settings.data_dir / "keys" / "access-tokens",
        operator_token=operator, audience=settings.token_audience,
        sa_issuer=settings.token_sa_issuer, sa_audiences=tuple(settings.token_sa_audiences),
        lifetime_seconds=settings.token_lifetime_seconds,
        attestation_max_age_seconds=settings.attestation_interval_seconds
        + settings.stale_grace_seconds,
        grants_file=settings.token_grants,
        cluster_keys=ClusterKeysConfig(
            jwks_file=settings.token_sa_jwks_file, jwks_url=settings.token_sa_jwks_url,
            ca=settings.token_sa_ca, bearer_file=settings.token_sa_bearer_file))
    return MecApiConfig(tokens, apis_config(settings, API_NAMES, public_url=base,
                                            token_endpoint=f"{base}/oauth2/token"),
                        rate_per_second=settings.api_rate_per_second,
                        rate_burst=settings.api_rate_burst)


def api_process_mec_api_config(settings: Settings, which: Sequence[str],
                               token_service_url: str) -> MecApiConfig:
    """``umec api``: the resource APIs ``which``, following the token service at
    ``token_service_url`` over HTTP."""
    from mec_api.service.build import MecApiConfig, RemoteTokenConfig
    base = token_service_url.rstrip("/")
    tokens = RemoteTokenConfig(base_url=base, ca=settings.token_service_ca,
                               audience=settings.token_audience)
    return MecApiConfig(tokens, apis_config(settings, which,
                                            public_url=settings.public_url or base,
                                            token_endpoint=f"{base}/oauth2/token"),
                        rate_per_second=settings.api_rate_per_second,
                        rate_burst=settings.api_rate_burst)


def resource_body_rules(settings: Settings) -> tuple[BodyRule, ...]:
    """Request-body limits of the resource APIs (other routes take the 1 MiB default).

    The inference limit is the classifier's own image limit (not imported: that module loads
    OpenCV), which the route checks again while it streams."""
    return (BodyRule("/sensor/v1/", settings.sensor_max_body_bytes),
            BodyRule("/inference/v1/", INFERENCE_MAX_IMAGE_BYTES, INFERENCE_BODY_SECONDS))
