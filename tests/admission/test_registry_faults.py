"""A registry that lies, fails, hangs or floods: scripted HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from admission.core.reference import ImageReference, parse_reference
from admission.registry.client import RegistryClient
from admission.registry.errors import (
    DigestMismatch,
    MalformedManifest,
    ManifestNotFound,
    ManifestTooLarge,
    RegistryRequestRejected,
    RegistryTimeout,
    RegistryUnavailable,
    UnsupportedMediaType,
)
from admission.registry.manifests import MAX_MANIFEST_SIZE, OCI_MANIFEST, Manifest, sha256_digest
from tests.support.oci_images import build_image
from tests.support.registry import HANG, Reply, free_port, loopback_tls, scripted

IMAGE = build_image(salt="scripted")
DIGEST = IMAGE.digest


def manifest_reply(raw: bytes = IMAGE.manifest, media_type: str = OCI_MANIFEST,
                   digest: str | None = DIGEST) -> Reply:
    headers = {"Content-Type": media_type}
    if digest:
        headers["Docker-Content-Digest"] = digest
    return 200, headers, raw


def ref_for(host: str, suffix: str = ":1.0") -> ImageReference:
    return parse_reference(f"{host}/team/app{suffix}")


def get(host: str, suffix: str = ":1.0", **kw: Any) -> Manifest:
    async def main() -> Manifest:
        async with RegistryClient(**kw) as client:
            return await client.get_manifest(ref_for(host, suffix))
    return asyncio.run(main())


def test_retries_503_then_succeeds() -> None:
    calls: list[int] = []

    def script(method: str, path: str, headers: dict[str, str]) -> Reply:
        calls.append(1)
        if len(calls) <= 2:
            return 503, {}, b"busy"
        return manifest_reply()
    with scripted(script) as server:
        manifest = get(server.host, retries=2)
    assert len(calls) == 3
    assert manifest.digest == DIGEST


def test_retry_after_429_and_exhaustion() -> None:
    with scripted(lambda m, p, h: (429, {"Retry-After": "0"}, b"")) as server, \
            pytest.raises(RegistryUnavailable, match="429 after 3 attempt"):
        get(server.host, retries=2)
    assert len(server.requests) == 3


@pytest.mark.parametrize("status,error", [(404, ManifestNotFound), (400, RegistryRequestRejected),
                                          (405, RegistryRequestRejected)])
def test_4xx_is_not_retried(status: int, error: type[Exception]) -> None:
    with scripted(lambda m, p, h: (status, {}, b'{"errors":[{"code":"X"}]}')) as server, \
            pytest.raises(error):
        get(server.host, retries=3)
    assert len(server.requests) == 1


def test_connection_refused_is_fast() -> None:
    port = free_port()  # nothing listens there any more
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable) as err:
        get(f"127.0.0.1:{port}", retries=2, timeout=5)
    assert time.monotonic() - started < 2
    assert not isinstance(err.value, RegistryTimeout)
    assert "ConnectError" in err.value.detail and f"127.0.0.1:{port}/team/app:1.0" in \
        err.value.detail


def test_hanging_registry_times_out_within_timeout() -> None:
    with scripted(lambda m, p, h: HANG) as server:
        started = time.monotonic()
        with pytest.raises(RegistryTimeout) as err:
            get(server.host, retries=5, timeout=0.5)
        elapsed = time.monotonic() - started
    # The timeout bounds the whole operation, retries included (5 retries x 0.5 s would be 3 s).
    assert 0.4 < elapsed < 1.2, elapsed
    assert "get_manifest" in err.value.detail


def test_lying_registry_digest_by_digest() -> None:
    other = build_image(salt="something else")
    with scripted(lambda m, p, h: manifest_reply(other.manifest, digest=DIGEST)) as server:
        with pytest.raises(DigestMismatch, match="asked for"):
            get(server.host, f"@{DIGEST}")
        with pytest.raises(DigestMismatch, match="announced"):
            get(server.host)  # by tag, the announced digest does not match the bytes


def test_lying_registry_without_digest_header_reports_computed_digest() -> None:
    other = build_image(salt="unannounced")
    with scripted(lambda m, p, h: manifest_reply(other.manifest, digest=None)) as server:
        assert get(server.host).digest == other.digest


def test_resolve_head_mismatch_and_get_fallback() -> None:
    def lying(method: str, path: str, headers: dict[str, str]) -> Reply:
        return 200, {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest":
                     sha256_digest(b"x"), "Content-Length": "10"}, b""

    async def resolve(host: str, suffix: str) -> str:
        async with RegistryClient() as client:
            return (await client.resolve(ref_for(host, suffix))).digest
    with scripted(lying) as server, pytest.raises(DigestMismatch):
        asyncio.run(resolve(server.host, f"@{DIGEST}"))
    # A HEAD without Docker-Content-Digest: the client GETs and hashes itself.
    with scripted(lambda m, p, h: (200, {"Content-Type": OCI_MANIFEST}, IMAGE.manifest)
                  if m == "GET" else (200, {"Content-Type": OCI_MANIFEST}, b"")) as server:
        assert asyncio.run(resolve(server.host, ":1.0")) == DIGEST
        assert [m for m, _ in server.requests] == ["HEAD", "GET"]


def test_oversized_manifest_refused_before_reading() -> None:
    big = b" " * (MAX_MANIFEST_SIZE + 1)
    with scripted(lambda m, p, h: (200, {"Content-Type": OCI_MANIFEST}, big)) as server, \
            pytest.raises(ManifestTooLarge):
        get(server.host)


@pytest.mark.parametrize("media_type,body,error", [
    ("application/vnd.docker.distribution.manifest.v1+prettyjws", b'{"schemaVersion":1}',
     UnsupportedMediaType),
    ("application/json", b'{"schemaVersion":2}', UnsupportedMediaType),
    ("application/vnd.oci.image.index.v1+json", IMAGE.manifest, UnsupportedMediaType),
    (OCI_MANIFEST, b"not json", MalformedManifest),
    (OCI_MANIFEST, b"[]", MalformedManifest),
    (OCI_MANIFEST, json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:00"},
                               "layers": []}).encode(), MalformedManifest),
])
def test_bad_manifests_are_typed_errors(media_type: str, body: bytes,
                                        error: type[Exception]) -> None:
    with scripted(lambda m, p, h: manifest_reply(body, media_type, digest=None)) as server, \
            pytest.raises(error):
        get(server.host)


def test_https_with_ca_file(tmp_path: Path) -> None:
    """HTTPS registry with a private CA: trusted with the CA file, refused without it."""
    ca_path, context = loopback_tls(tmp_path)
    with scripted(lambda m, p, h: manifest_reply(), tls=context) as server:
        https_only: dict[str, Any] = {"plain_http": lambda host: False, "retries": 0}
        manifest = get(server.host, verify=str(ca_path), **https_only)
        assert manifest.digest == DIGEST
        with pytest.raises(RegistryUnavailable, match="ConnectError"):
            get(server.host, **https_only)  # system CAs only
        # Loopback defaults to plain HTTP (as Docker does): against a TLS port that fails too.
        with pytest.raises(RegistryUnavailable):
            get(server.host, retries=0)


def test_connection_is_reused() -> None:
    async def main(host: str) -> None:
        async with RegistryClient() as client:
            for n in range(6):
                await client.get_manifest(ref_for(host, f":{n}"))
                await client.resolve(ref_for(host, f"@{DIGEST}"))
    with scripted(lambda m, p, h: manifest_reply()) as server:
        asyncio.run(main(server.host))
    assert len(server.requests) == 12 and len(server.peers) == 1
