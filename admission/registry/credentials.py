"""Registry credentials from a docker ``config.json`` and Kubernetes ``imagePullSecrets``.

Sources and the rules applied:

1. Docker ``config.json``: ``{"auths": {"<key>": {"auth": base64("user:pass")} | {"username",
   "password"} | {"identitytoken"}}}``. ``auth`` wins over ``username``/``password`` when both are
   present (as in the docker CLI). ``credsStore``/``credHelpers`` run external programs and are
   deliberately not supported: the webhook must not execute helpers.
2. Kubernetes Secrets: type ``kubernetes.io/dockerconfigjson`` (``data[".dockerconfigjson"]``,
   base64 of a config.json) or the legacy ``kubernetes.io/dockercfg`` (``data[".dockercfg"]``,
   base64 of the bare ``auths`` map). ``stringData`` is accepted too (not yet base64). Like the
   kubelet, the first secret that has credentials for a registry wins.
3. Keys are normalised to a host: scheme and path are dropped (``https://index.docker.io/v1/``),
   the host lowercased and Docker Hub aliases folded to ``docker.io``. A key ``*.example.com``
   matches exactly one more DNS label, as the kubelet does.

No I/O here: callers read files or Secrets and pass their bytes or objects.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from admission.core.errors import AdmissionError
from admission.core.reference import normalise_registry


class CredentialsMalformed(AdmissionError):
    check = "credentials.malformed"
    hint = ("The docker config.json or imagePullSecret is not valid: it must be JSON with an "
            "'auths' map whose entries have 'auth' (base64 user:password), 'username'/'password' "
            "or 'identitytoken'.")


@dataclass(frozen=True)
class RegistryCredential:
    """Credentials for one registry host; ``identity_token`` is an OAuth2 refresh token."""

    registry: str
    username: str | None = None
    password: str | None = None
    identity_token: str | None = None

    def __repr__(self) -> str:  # never print secrets into logs
        return f"RegistryCredential(registry={self.registry!r}, username={self.username!r})"


def registry_key(key: str) -> str:
    """Normalise a config key (URL, host, host/path) to the registry host it names."""
    text = key.strip()
    for scheme in ("https://", "http://"):
        if text.lower().startswith(scheme):
            text = text[len(scheme):]
    host = text.split("/", 1)[0]
    return normalise_registry(host.lower())


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise CredentialsMalformed(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CredentialsMalformed(f"{what} is not valid base64") from None


def _entry(host: str, entry: object) -> RegistryCredential | None:
    if not isinstance(entry, dict):
        raise CredentialsMalformed(f"auths entry for {host!r} is not an object")
    username, password = entry.get("username"), entry.get("password")
    if entry.get("auth"):
        try:
            decoded = _b64(entry["auth"], f"auth of {host!r}").decode()
        except UnicodeDecodeError:
            raise CredentialsMalformed(f"auth of {host!r} is not UTF-8") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise CredentialsMalformed(f"auth of {host!r} is not base64 of 'user:password'")
    token = entry.get("identitytoken") or None
    for name, value in (("username", username), ("password", password), ("identitytoken", token)):
        if value is not None and not isinstance(value, str):
            raise CredentialsMalformed(f"{name} of {host!r} is not a string")
    if not username and not token:
        return None  # e.g. an entry only naming a credsStore; nothing usable
    return RegistryCredential(registry=host, username=username or None, password=password,
                              identity_token=token)


def _parse_auths(auths: object, source: str) -> dict[str, RegistryCredential]:
    if not isinstance(auths, dict):
        raise CredentialsMalformed(f"{source}: 'auths' is not an object")
    out: dict[str, RegistryCredential] = {}
    for key, entry in auths.items():
        host = registry_key(str(key))
        cred = _entry(host, entry)
        if cred is not None and host not in out:
            out[host] = cred
    return out


def _json_object(data: bytes | str | Mapping[str, Any], source: str) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return dict(data)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CredentialsMalformed(f"{source} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise CredentialsMalformed(f"{source} is not a JSON object")
    return doc


class Credentials:
    """Credentials by registry host; first source wins for each host."""

    def __init__(self, entries: Mapping[str, RegistryCredential] | None = None) -> None:
        self._entries: dict[str, RegistryCredential] = dict(entries or {})

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Credentials(registries={sorted(self._entries)!r})"

    @classmethod
    def from_docker_config(cls, data: bytes | str | Mapping[str, Any]) -> Credentials:
        doc = _json_object(data, "docker config")
        return cls(_parse_auths(doc.get("auths", {}), "docker config"))

    @classmethod
    def from_pull_secrets(cls, secrets: Iterable[Mapping[str, Any] | bytes | str]) -> Credentials:
        """Secrets as Kubernetes objects (dicts) or the decoded ``.dockerconfigjson`` bytes."""
        merged: dict[str, RegistryCredential] = {}
        for index, secret in enumerate(secrets):
            source = f"imagePullSecrets[{index}]"
            found = cls._secret_entries(secret, source)
            for host, cred in found.items():
                merged.setdefault(host, cred)
        return cls(merged)

    @staticmethod
    def _secret_entries(secret: Mapping[str, Any] | bytes | str,
                        source: str) -> dict[str, RegistryCredential]:
        if not isinstance(secret, Mapping):
            return _parse_auths(_json_object(secret, source).get("auths", {}), source)
        name = secret.get("metadata", {}).get("name") if isinstance(
            secret.get("metadata"), dict) else None
        source = f"{source} ({name})" if name else source
        data, string_data = secret.get("data") or {}, secret.get("stringData") or {}
        if not isinstance(data, dict) or not isinstance(string_data, dict):
            raise CredentialsMalformed(f"{source}: data/stringData must be objects")
        for key, legacy in ((".dockerconfigjson", False), (".dockercfg", True)):
            if key in string_data:
                raw: bytes | str = string_data[key]
            elif key in data:
                raw = _b64(data[key], f"{source} data[{key!r}]")
            else:
                continue
            doc = _json_object(raw, f"{source} {key}")
            return _parse_auths(doc if legacy else doc.get("auths", {}), source)
        raise CredentialsMalformed(f"{source}: no .dockerconfigjson or .dockercfg in the Secret")

    def fingerprint(self) -> str:
        """A digest naming exactly this set of credentials (cache keys; never the secrets)."""
        h = hashlib.sha256()
        for host in sorted(self._entries):
            c = self._entries[host]
            for part in (host, c.username, c.password, c.identity_token):
                h.update(b"\0" + (part or "").encode())
        return h.hexdigest()[:32]

    def merged(self, other: Credentials) -> Credentials:
        """Self first, then hosts only ``other`` knows."""
        entries = dict(other._entries)
        entries.update(self._entries)
        return Credentials(entries)

    def lookup(self, registry: str) -> RegistryCredential | None:
        host = registry_key(registry)
        if host in self._entries:
            return self._entries[host]
        # Kubelet-style wildcard: "*.example.com" matches "a.example.com" (one label, same port).
        name, _, port = host.partition(":")
        labels = name.split(".")
        if len(labels) > 1:
            wildcard = "*." + ".".join(labels[1:]) + (f":{port}" if port else "")
            return self._entries.get(wildcard)
        return None
