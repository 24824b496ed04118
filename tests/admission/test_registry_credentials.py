"""Credentials from docker config.json and Kubernetes imagePullSecrets."""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.registry.credentials import Credentials, CredentialsMalformed, registry_key


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


CONFIG = {
    "auths": {
        "https://index.docker.io/v1/": {"auth": b64("hubuser:hub:pass:with:colons")},
        "registry.example.com": {"username": "ci", "password": "s3cret"},
        "ghcr.io": {"identitytoken": "refresh-token-1"},
        "http://127.0.0.1:5000/some/path": {"auth": b64("local:pw")},
        "*.corp.example": {"auth": b64("corp:pw")},
        "creds-store-only.example": {},
    },
    "credsStore": "desktop",
}


def test_docker_config_entries_and_lookup() -> None:
    creds = Credentials.from_docker_config(json.dumps(CONFIG).encode())
    hub = creds.lookup("docker.io")
    assert hub is not None and (hub.username, hub.password) == ("hubuser", "hub:pass:with:colons")
    for alias in ("index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/",
                  "DOCKER.IO"):
        assert creds.lookup(alias) == hub
    ci = creds.lookup("registry.example.com")
    assert ci is not None and (ci.username, ci.password) == ("ci", "s3cret")
    gh = creds.lookup("ghcr.io")
    assert gh is not None and gh.identity_token == "refresh-token-1" and gh.username is None
    local = creds.lookup("127.0.0.1:5000")
    assert local is not None and local.username == "local"
    assert creds.lookup("127.0.0.1:5001") is None
    wildcard = creds.lookup("build.corp.example")
    assert wildcard is not None and wildcard.username == "corp"
    assert creds.lookup("a.b.corp.example") is None  # one label only, like the kubelet
    assert creds.lookup("corp.example") is None
    assert creds.lookup("creds-store-only.example") is None
    assert "s3cret" not in repr(ci) and "s3cret" not in repr(creds)


def secret(config: dict[str, Any], *, legacy: bool = False, name: str = "pull") -> dict[str, Any]:
    key = ".dockercfg" if legacy else ".dockerconfigjson"
    body = config["auths"] if legacy else config
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": "kubernetes.io/dockercfg" if legacy else "kubernetes.io/dockerconfigjson",
            "data": {key: b64(json.dumps(body))}}


def test_pull_secrets_first_wins_and_legacy_format() -> None:
    first = {"auths": {"registry.example.com": {"auth": b64("tenant-a:pw-a")}}}
    second = {"auths": {"registry.example.com": {"auth": b64("tenant-b:pw-b")},
                        "other.example": {"username": "o", "password": "p"}}}
    creds = Credentials.from_pull_secrets([secret(first), secret(second, legacy=True)])
    hit = creds.lookup("registry.example.com")
    assert hit is not None and hit.username == "tenant-a"
    other = creds.lookup("other.example")
    assert other is not None and other.password == "p"
    # stringData (not yet base64) and raw .dockerconfigjson bytes are accepted as well.
    raw = Credentials.from_pull_secrets([json.dumps(first).encode(),
                                         {"stringData": {".dockerconfigjson": json.dumps(second)}}])
    assert len(raw) == 2
    merged = Credentials.from_docker_config(json.dumps(second)).merged(raw)
    hit = merged.lookup("registry.example.com")
    assert hit is not None and hit.username == "tenant-b"


@pytest.mark.parametrize("data,match", [
    (b"not json", "not valid JSON"),
    (b"[]", "not a JSON object"),
    (b'{"auths": []}', "'auths' is not an object"),
    (b'{"auths": {"r.example": "x"}}', "not an object"),
    (b'{"auths": {"r.example": {"auth": "%%%"}}}', "base64"),
    (json.dumps({"auths": {"r.example": {"auth": b64("no-colon")}}}).encode(), "user:password"),
    (b'{"auths": {"r.example": {"username": 5}}}', "not a string"),
])
def test_malformed_docker_config(data: bytes, match: str) -> None:
    with pytest.raises(CredentialsMalformed, match=match):
        Credentials.from_docker_config(data)


@pytest.mark.parametrize("bad", [
    {"data": {}},
    {"data": {".dockerconfigjson": "!!not base64!!"}},
    {"data": {".dockerconfigjson": b64("not json")}},
    {"data": "string"},
])
def test_malformed_pull_secrets(bad: dict[str, Any]) -> None:
    with pytest.raises(CredentialsMalformed, match="imagePullSecrets"):
        Credentials.from_pull_secrets([bad])


def test_registry_key_normalisation() -> None:
    assert registry_key("https://index.docker.io/v1/") == "docker.io"
    assert registry_key("HTTP://Registry.Example.com:443/v2/") == "registry.example.com:443"
    assert registry_key("127.0.0.1:5000") == "127.0.0.1:5000"


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=10))
def test_fuzz_config_raises_only_typed_errors(doc: object) -> None:
    for wrapped in (doc, {"auths": doc}, {"auths": {"r.example": doc}}):
        with contextlib.suppress(CredentialsMalformed):
            Credentials.from_docker_config(json.dumps(wrapped))
        with contextlib.suppress(CredentialsMalformed):
            Credentials.from_pull_secrets([{"stringData": {".dockerconfigjson":
                                                           json.dumps(wrapped)}}])
