"""One settings object for every process.

Values come from ``UMEC_*`` environment variables and, optionally, a YAML file named by
``UMEC_CONFIG`` (environment wins over the file). Defaults are chosen so that ``umec demo`` and a
single-node install work with no configuration at all: SQLite in the data directory, keys generated
on first start.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mec_api.camera.config import CameraConfig


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the optional YAML file named by UMEC_CONFIG (flat keys matching the field names)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("UMEC_CONFIG")
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"UMEC_CONFIG={path}: cannot read settings file: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"UMEC_CONFIG={path}: expected a mapping of setting names to values")
        return data


class Settings(BaseSettings):
    """Every knob of µMEC Trust. Environment: ``UMEC_<NAME>`` (e.g. ``UMEC_DATABASE_URL``)."""

    model_config = SettingsConfigDict(env_prefix="UMEC_", extra="forbid")

    data_dir: Path = Field(default=Path(".umec"), description="State: SQLite file, keys.")
    database_url: str = Field(default="", description="SQLAlchemy URL; default sqlite in data_dir.")
    database_max_connections: int = Field(
        default=20, ge=2, le=1000,
        description="PostgreSQL connections one process may hold (half kept open, the rest "
                    "opened under load and closed again). Every replica, worker and webhook "
                    "holds its own: keep their sum below the server's max_connections (100 by "
                    "default, 3 of them reserved).")
    log_level: str = "INFO"

    # control plane
    listen_host: str = "127.0.0.1"
    listen_port: int = 8443
    public_url: str = Field(default="", description="Issuer URL of attestation results.")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    operator_token: str = Field(default="", description="Bearer token for the fleet view; "
                                "generated into data_dir/operator-token when empty; at least "
                                "32 characters when set (umec server refuses a shorter one).")
    metrics_token: str = Field(
        default="", description="Bearer token `GET /metrics` requires on every HTTP process "
        "(umec server, umec api, umec webhook); Prometheus sends it with "
        "authorization.credentials_file. Empty: /metrics answers loopback clients only. "
        "Surrounding whitespace (a Secret file's newline) is ignored.")
    request_body_timeout_seconds: float = Field(default=10.0, gt=0, description="Every HTTP "
                                                "process: a request body not received within "
                                                "this time is refused (408).")

    # attestation
    ek_ca_bundle: Path | None = Field(default=None, description="PEM: manufacturer EK CAs.")
    ek_allowlist: list[str] = Field(default_factory=list, description="Approved EK sha256 hashes.")
    policy_dir: Path | None = Field(default=None, description="Appraisal policies (*.yaml).")
    policy_signers: list[Path] = Field(
        default_factory=list, description="Public key files (PEM/DER, e.g. cosign.pub) of "
        "who may sign appraisal policies (a JSON list in the environment). Set: only signed "
        "policies (DSSE, `umec policy sign`) are applied, only above the applied version.")
    policy_threshold: int = Field(default=1, ge=1, description="How many distinct "
                                  "UMEC_POLICY_SIGNERS must sign a policy (N of M).")
    default_node_class: str = "default"
    nonce_ttl_seconds: float = 60.0
    attestation_interval_seconds: float = 30.0
    stale_grace_seconds: float = 15.0
    result_ttl_seconds: int = 120
    deadline_check_seconds: float = 1.0
    attest_rate_per_source: float = Field(default=20.0, description="Protocol requests (enrol, "
                                          "activate, challenge, evidence) per second and source "
                                          "address; a NAT'd site of many nodes is one source.")
    attest_burst_per_source: float = 200.0
    webhook_urls: list[str] = Field(default_factory=list)
    webhook_secret: str = ""
    kubernetes_labels: bool = False
    kubernetes_resync_seconds: float = 300.0
    kubeconfig: Path | None = None
    k3s_server_ca: Path | None = Field(
        default=None, description="The k3s server's CA certificate (PEM, "
        "/var/lib/rancher/k3s/server/tls/server-ca.crt). Set: umec server hands trusted nodes "
        "a sealed k3s bootstrap token (POST /attest/v1/nodes/NODE/join) in the secure format "
        "K10<sha256 of this file>::<id>.<secret>, created as a Secret in kube-system through "
        "UMEC_KUBECONFIG or the pod's service account.")
    join_token_ttl_seconds: float = Field(default=600.0, gt=0, le=86400, description="How "
                                          "long a node's k3s bootstrap token is valid.")
    join_sweep_seconds: float = Field(default=10.0, gt=0, description="How often umec server "
                                      "deletes join tokens whose node has joined (its Node "
                                      "object exists).")

    # admission webhook and registry access
    admission_policy_dir: Path | None = Field(default=None, description="ImagePolicy YAMLs.")
    admission_policy_crds: bool = Field(
        default=False, description="`umec webhook` follows the cluster's ImagePolicy and "
        "ClusterImagePolicy objects live (list + watch through the Kubernetes API: in-cluster, "
        "or UMEC_KUBECONFIG), on top of UMEC_ADMISSION_POLICY_DIR; deploy/webhook.yaml turns "
        "this on.")
    webhook_port: int = 8444
    webhook_tls_cert: Path | None = None
    webhook_tls_key: Path | None = None
    webhook_tls_reload_seconds: float = Field(
        default=10.0, gt=0, description="How often `umec webhook` re-reads its serving "
        "certificate and key files; a changed, matching pair is served to new connections "
        "without a restart (the kubelet updates a mounted Secret within about a minute).")
    webhook_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle: the webhook requires, in every TLS handshake, "
        "a client certificate issued by it (the kube-apiserver's, from `umec webhook certs`: "
        "client-ca.crt). Use a DEDICATED CA, never k3s's cluster client CA, which signs every "
        "kubelet's and user's certificate. `umec webhook` refuses to start without it unless "
        "UMEC_WEBHOOK_ALLOW_UNAUTHENTICATED is true.")
    webhook_allow_unauthenticated: bool = Field(
        default=False, description="Development only: serve the webhook without "
        "UMEC_WEBHOOK_CLIENT_CA. Anyone who reaches its port can then post AdmissionReviews: "
        "forge a Pod DELETE (revoking a live pod's tokens) or a CREATE (recording a pod as "
        "verified). Ignored when UMEC_WEBHOOK_CLIENT_CA is set.")
    webhook_timeout_seconds: float = 10.0
    webhook_namespace: str = "umec-system"
    docker_config: Path | None = Field(default=None, description="docker config.json (auths).")
    webhook_pull_secrets: bool = Field(
        default=False, description="Read each pod's imagePullSecrets through the Kubernetes "
        "API (in-cluster, or UMEC_KUBECONFIG); deploy/webhook.yaml turns this on.")
    registry_ca: Path | None = None
    registry_timeout_seconds: float = 5.0

    # token service (mounted in umec server under /oauth2)
    token_sa_issuer: str = Field(default="https://kubernetes.default.svc.cluster.local",
                                 description="The cluster's service-account token issuer.")
    token_sa_audiences: list[str] = Field(default_factory=lambda: ["umec"])
    token_sa_jwks_url: str = Field(default="", description="Cluster JWKS URL; empty: OIDC "
                                   "discovery from token_sa_issuer.")
    token_sa_jwks_file: Path | None = Field(default=None, description="Cluster JWKS from a "
                                            "file (kubectl get --raw /openid/v1/jwks).")
    token_sa_ca: Path | None = None
    token_sa_bearer_file: Path | None = None
    token_audience: str = "umec-apis"
    token_lifetime_seconds: int = 300
    token_grants: Path | None = Field(default=None, description="Scope grants (YAML); none: "
                                      "nothing is granted.")
    token_service_url: str = Field(default="", description="Base URL of umec server, for "
                                   "`umec api …` processes (JWKS and revocation feed).")
    token_service_ca: Path | None = None
    api_port: int = 8445
    api_rate_per_second: float = 50.0
    api_rate_burst: float = 100.0

    # sensor API (Ruuvi): MQTT ingestion when sensor_mqtt_url is set
    sensor_mqtt_url: str = ""
    sensor_mqtt_topic: str = "ruuvi/+/+"
    sensor_mqtt_client_id: str = ""
    sensor_mqtt_ca_file: str | None = None
    sensor_retention_days: float = 30.0
    sensor_purge_interval_seconds: float = 3600.0
    sensor_max_body_bytes: int = 262144

    # MEC 011 service registry and app support
    mec011_callback_attempts: int = 3
    mec011_callback_timeout_seconds: float = 2.0
    mec011_liveness_sweep_seconds: float = 5.0

    # camera and inference APIs (on the node with the camera, or in umec server)
    cameras: list[CameraConfig] = Field(default_factory=list, description="JSON list: "
                                        "id, kind (v4l2|rtsp|http|file), location, ...")
    inference_enabled: bool = False
    model_cache_dir: Path | None = Field(default=None, description="ONNX export cache; "
                                         "default data_dir/models.")
    inference_threads: int = 2
    inference_max_concurrency: int = 2
    inference_max_waiting: int = 8

    # agent
    server_url: str = "http://127.0.0.1:8443"
    server_ca: Path | None = None
    node_name: str = ""
    tcti: str = "device:/dev/tpmrm0"
    ak_kind: str = "ecc"
    ek_kind: str = "rsa"
    node_class: str = ""
    agent_state_dir: Path = Path(".umec/agent")
    agent_join_token_path: Path | None = Field(
        default=None, description="umec agent (host mode): after a trusted verdict, write the "
        "node's k3s join token here, mode 0600: /etc/systemd/system/k3s-agent.service.d/"
        "umec-token.conf (Environment=K3S_TOKEN) or /etc/rancher/k3s/config.yaml (token:). "
        "Unset: no join token is fetched. `umec agent --join PATH` overrides it.")
    event_log_path: Path = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
    measure_files: list[Path] = Field(default_factory=list)
    application_pcr: int = 14
    agent_role: Literal["", "host", "daemonset"] = Field(
        default="", description="host: the systemd host agent (writes UMEC_HOST_AGENT_MARKER "
        "before it enrols); daemonset: refuses to start where that marker exists (issue 13).")
    host_agent_marker: Path = Field(default=Path("/var/lib/umec/host-agent.json"),
                                    description="The host agent's marker file, as this agent "
                                    "sees it (the DaemonSet mounts the host's /var/lib/umec).")

    @field_validator("metrics_token")
    @classmethod
    def _strip_token(cls, value: str) -> str:
        return value.strip()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'umec.db').resolve()}"
