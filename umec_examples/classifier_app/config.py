"""The app's configuration from its environment (the Deployment's ``env``), checked at start.

- ``UMEC_TOKEN_ENDPOINT`` (required): the token service's ``/oauth2/token`` URL;
- ``UMEC_API_URL`` (required): base URL of the camera and inference APIs;
- ``UMEC_SUBJECT_TOKEN_FILE``: the projected service-account token, re-read at every exchange
  (the kubelet rotates it); default ``/var/run/secrets/umec/token``;
- ``UMEC_CA_FILE``: CA bundle for the platform's HTTPS (default: the system's);
- ``APP_CAMERA`` (default ``site-cam``), ``APP_MODEL`` (default ``efficientnet-lite0``);
- ``APP_LISTEN_HOST`` / ``APP_LISTEN_PORT``: where the page is served (``0.0.0.0`` / ``8080``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from umec_examples.classifier_app.errors import AppError

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
SCOPES = "camera.snapshot inference.classify"


@dataclass(frozen=True)
class AppConfig:
    token_endpoint: str
    api_url: str
    subject_token_file: Path
    camera: str = "site-cam"
    model: str = "efficientnet-lite0"
    ca_file: Path | None = None
    host: str = "0.0.0.0"
    port: int = 8080

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AppConfig:
        """The configuration, or ``AppError(app.config)`` naming the variable at fault."""
        ca = env.get("UMEC_CA_FILE", "")
        return cls(
            token_endpoint=_url(env, "UMEC_TOKEN_ENDPOINT"),
            api_url=_url(env, "UMEC_API_URL").rstrip("/"),
            subject_token_file=Path(env.get("UMEC_SUBJECT_TOKEN_FILE")
                                    or "/var/run/secrets/umec/token"),
            camera=_name(env, "APP_CAMERA", "site-cam"),
            model=_name(env, "APP_MODEL", "efficientnet-lite0"),
            ca_file=Path(ca) if ca else None,
            host=env.get("APP_LISTEN_HOST") or "0.0.0.0",
            port=_port(env.get("APP_LISTEN_PORT") or "8080"))


def _invalid(variable: str, why: str) -> AppError:
    return AppError(500, "app.config", f"{variable}: {why}",
                    "set it in the app's environment (deploy/examples/classifier-app.yaml)")


def _url(env: Mapping[str, str], variable: str) -> str:
    value = env.get(variable, "")
    if not value:
        raise _invalid(variable, "missing")
    try:
        parts = urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid or any(c.isspace() for c in value):
        raise _invalid(variable, "not an http(s) URL")
    return value


def _name(env: Mapping[str, str], variable: str, default: str) -> str:
    value = env.get(variable) or default
    if not NAME.fullmatch(value):
        raise _invalid(variable, "lower-case letters, digits, '.', '_' and '-' only")
    return value


def _port(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 0 < int(value) < 65536:
        raise _invalid("APP_LISTEN_PORT", "not a port number")
    return int(value)
