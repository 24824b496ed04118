"""``umec deploy render``: everything deploy/ needs that must be generated, in one directory.

Written under ``--dir`` (re-running keeps every CA, key and token already there, so a second
render changes no secret a running cluster uses, only re-issues the leaf certificates):

* ``webhook/``: ``umec webhook certs`` (serving CA and certificate, the dedicated client CA,
  the API server's client certificate, ``admission-config.yaml``, ``webhook-kubeconfig.yaml``);
* ``server/``: the server's serving certificate for ``umec-server.<ns>.svc`` and its CA;
* ``keys/attestation-results/``, ``keys/access-tokens/``: the two signing key rings;
  ``keys/challenge-key``: the challenge nonces' MAC key, shared by the replicas;
* ``operator-token``: the fleet view's bearer token;
* ``metrics-token``: the bearer token ``GET /metrics`` requires (Secret ``umec-metrics``; give
  Prometheus the same file as ``authorization.credentials_file``);
* ``secrets.yaml`` (0600): every Secret and ConfigMap of deploy/README.md's table, ready for
  ``kubectl apply -f`` — the agent's ``umec-server-ca`` in the agent's namespace, and with
  ``--k3s-server-ca`` the k3s server's CA (``umec-k3s-server-ca``) for the host agents' join.

Private keys are written 0600 by :mod:`keys`; ``secrets.yaml`` holds them too (base64), so it
is 0600 and belongs on the operator's machine only.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from admission.service.certs import create_webhook_certs
from keys import KeyRing, atomic_write, load_or_create_secret

K3S_APISERVER_DIR = "/var/lib/rancher/k3s/server/umec-webhook"


@dataclass(frozen=True)
class RenderConfig:
    directory: Path
    database_url: str
    ek_ca_bundle: Path | None = None
    namespace: str = "umec-system"
    agent_namespace: str = "umec-agent"
    apiserver_dir: str = K3S_APISERVER_DIR
    server_names: tuple[str, ...] = ()   # more names for the server's certificate (host agents)
    k3s_server_ca: Path | None = None    # k3s's server-ca.crt: ConfigMap umec-k3s-server-ca


@dataclass(frozen=True)
class Rendered:
    secrets_file: Path
    ca_bundle: str                   # the webhook's serving CA (the job writes it in the cluster)
    objects: tuple[str, ...]         # "Kind namespace/name" of every object in secrets_file
    apiserver_files: tuple[Path, ...]  # to copy to apiserver_dir on every k3s server


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _secret(name: str, namespace: str, files: dict[str, bytes],
            kind: str = "Opaque") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": kind,
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: _b64(v) for k, v in sorted(files.items())}}


def _config_map(name: str, namespace: str, files: dict[str, bytes]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: v.decode() for k, v in sorted(files.items())}}


def _ring(directory: Path) -> dict[str, bytes]:
    KeyRing.load_or_create(directory)
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.startswith(".")}


def _token(path: Path) -> bytes:
    """The token kept in ``path`` (one made there first, 0600, when there is none)."""
    if not path.exists():
        atomic_write(path, secrets.token_urlsafe(32).encode(), overwrite=False)
    return path.read_bytes().strip()


def render(config: RenderConfig) -> Rendered:
    """Write the directory (module doc); what was written."""
    d, ns = config.directory, config.namespace
    d.mkdir(parents=True, exist_ok=True)
    webhook = create_webhook_certs(d / "webhook", "umec-webhook", ns,
                                   apiserver_dir=config.apiserver_dir)
    server = create_webhook_certs(d / "server", "umec-server", ns,
                                  extra_names=list(config.server_names),
                                  apiserver_dir=config.apiserver_dir)
    tls = "kubernetes.io/tls"
    docs = [
        _secret("umec-operator", ns, {"token": _token(d / "operator-token")}),
        _secret("umec-metrics", ns, {"token": _token(d / "metrics-token")}),
        _secret("umec-db", ns, {"url": config.database_url.encode()}),
        _secret("umec-server-tls", ns, {"tls.crt": server.cert.read_bytes(),
                                        "tls.key": server.key.read_bytes()}, tls),
        _secret("umec-result-keys", ns, _ring(d / "keys" / "attestation-results")),
        _secret("umec-token-keys", ns, _ring(d / "keys" / "access-tokens")),
        # Shared by the replicas: a challenge one issued is checked by any of them.
        _secret("umec-challenge-key", ns,
                {"challenge-key": load_or_create_secret(d / "keys" / "challenge-key")}),
        _secret("umec-webhook-ca", ns, {"tls.crt": webhook.ca_cert.read_bytes(),
                                        "tls.key": webhook.ca_key.read_bytes()}, tls),
        _secret("umec-webhook-tls", ns, {"tls.crt": webhook.cert.read_bytes(),
                                         "tls.key": webhook.key.read_bytes()}, tls),
        _config_map("umec-webhook-client-ca", ns, {"ca.crt": webhook.client_ca_cert.read_bytes()}),
        _config_map("umec-server-ca", config.agent_namespace,
                    {"ca.crt": server.ca_cert.read_bytes()}),
    ]
    if config.ek_ca_bundle is not None:
        docs.append(_config_map("umec-ek-ca", ns,
                                {"bundle.pem": config.ek_ca_bundle.read_bytes()}))
    if config.k3s_server_ca is not None:   # the k3s join (deploy/host-join): bytes as on disk,
        docs.append(_config_map("umec-k3s-server-ca", ns,  # their sha256 is in every token
                                {"server-ca.crt": config.k3s_server_ca.read_bytes()}))
    out = d / "secrets.yaml"
    atomic_write(out, yaml.safe_dump_all(docs, sort_keys=False).encode(), mode=0o600)
    return Rendered(out, webhook.ca_bundle, tuple(
        f"{doc['kind']} {doc['metadata']['namespace']}/{doc['metadata']['name']}"
        for doc in docs), (webhook.client_cert, webhook.client_key, webhook.kubeconfig,
                           webhook.admission_config))
