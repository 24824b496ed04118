"""The node's side of the k3s join (issue 13): ask for the token, open it with the TPM, write it
where k3s-agent reads it.

After a trusted verdict the agent posts the nonce of that verdict's quote to
``/attest/v1/nodes/{node}/join``. The answer is a MakeCredential blob bound to the node's EK and
AK plus the token sealed with AES-GCM under a key derived from the credential secret
(:mod:`attest.core.join_token`): TPM2_ActivateCredential recovers the secret only in this TPM
with this AK loaded. The opened token must be a k3s secure token (``K10<CA hash>::id.secret``).

Where it goes (``--join-token-path``): a systemd drop-in (a path ending ``.conf``, e.g.
``/etc/systemd/system/k3s-agent.service.d/umec-token.conf``: ``Environment="K3S_TOKEN=…"``) or
k3s's config file (``.yaml``/``.yml``, e.g. ``/etc/rancher/k3s/config.yaml``: its ``token:`` key
set, every other key kept). Written atomically with mode 0600 (``keys.atomic_write``).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Protocol

import yaml

from attest.core.join_token import open_token, parse_k3s_token
from keys.storage import atomic_write


class JoinTokenPathInvalid(ValueError):
    """The join token path is neither a systemd drop-in (.conf) nor a k3s config (.yaml)."""


class ActivatesCredentials(Protocol):
    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes: ...


def open_grant(tpm: ActivatesCredentials, node: str, grant: dict[str, Any]) -> str:
    """The k3s token in ``grant`` (the join route's answer), opened with ``tpm``."""
    secret = tpm.activate_credential(base64.b64decode(grant["credential_blob"]),
                                     base64.b64decode(grant["encrypted_secret"]))
    token = open_token(secret, node, base64.b64decode(grant["sealed_token"]))
    parse_k3s_token(token)  # refuse to write anything that is not a k3s secure token
    return token


def render(path: Path, token: str) -> bytes:
    """The file's new content: a drop-in, or the k3s config with ``token`` set."""
    if path.suffix == ".conf":
        return (b"# Written by umec agent --join: the k3s join token of this attested node.\n"
                b"[Service]\n" + f'Environment="K3S_TOKEN={token}"\n'.encode())
    if path.suffix in (".yaml", ".yml"):
        config: Any = {}
        if path.exists():
            config = yaml.safe_load(path.read_text()) or {}
            if not isinstance(config, dict):
                raise JoinTokenPathInvalid(f"{path} is not a YAML mapping; k3s cannot read it")
        config["token"] = token
        return yaml.safe_dump(config, sort_keys=False).encode()
    raise JoinTokenPathInvalid(
        f"{path}: use a systemd drop-in (*.conf) or k3s's config file (*.yaml)")


def write_token(path: Path, token: str) -> None:
    """Write ``token`` for k3s-agent: atomically, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render(path, token), mode=0o600)


__all__ = ["JoinTokenPathInvalid", "open_grant", "render", "write_token"]
