"""Registry client against a real docker-registry 2.8: round trips, digests, referrers fallback."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient, fallback_tag
from admission.registry.errors import (
    BlobNotFound,
    BlobTooLarge,
    DigestMismatch,
    MalformedManifest,
    ManifestNotFound,
)
from admission.registry.manifests import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    canonical_json,
    sha256_digest,
)
from tests.support.oci_images import PLATFORMS, build_image, push_image, push_index
from tests.support.registry import RunningRegistry, requires_registry

pytestmark = requires_registry
T = TypeVar("T")


def run(registry: RunningRegistry, body: Callable[[RegistryClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with RegistryClient(timeout=10) as client:
            return await body(client)
    return asyncio.run(main())


def repo(registry: RunningRegistry, name: str = "app") -> str:
    return f"{registry.host}/test-{uuid.uuid4().hex[:8]}/{name}"


def test_push_resolve_get_round_trip(registry: RunningRegistry) -> None:
    name = repo(registry)

    async def body(client: RegistryClient) -> None:
        image = build_image("linux/arm64", salt="round-trip")
        digest = await push_image(client, f"{name}:1.0", platform="linux/arm64",
                                  salt="round-trip")
        assert digest == image.digest == sha256_digest(image.manifest)
        ref = parse_reference(f"{name}:1.0")
        desc = await client.resolve(ref)
        assert (desc.digest, desc.media_type, desc.size) == (digest, OCI_MANIFEST,
                                                             len(image.manifest))
        by_tag = await client.get_manifest(ref)
        by_digest = await client.get_manifest(ref.with_digest(digest))
        assert by_tag.raw == by_digest.raw == image.manifest
        assert by_tag.digest == digest and not by_tag.is_index
        config = by_tag.config()
        assert config is not None
        assert await client.get_blob(ref, config.digest) == image.blobs[config.digest]
        for layer in by_tag.layers():
            assert await client.get_blob(ref, layer.digest) == image.blobs[layer.digest]
        # Pushing the same blobs again is a HEAD per blob, no upload; the digest is unchanged.
        sent = client.requests_sent
        assert await client.put_blob(ref, image.blobs[config.digest]) == config.digest
        assert client.requests_sent == sent + 1
        assert "1.0" in await client.list_tags(ref)
    run(registry, body)


@pytest.mark.parametrize("docker", [False, True], ids=["oci-index", "docker-manifest-list"])
def test_multi_arch_index(registry: RunningRegistry, docker: bool) -> None:
    name = repo(registry)

    async def body(client: RegistryClient) -> None:
        index_digest, children = await push_index(client, f"{name}:multi", docker=docker)
        ref = parse_reference(f"{name}:multi")
        index = await client.get_manifest(ref)
        assert index.digest == index_digest and index.is_index
        assert index.media_type == (DOCKER_MANIFEST_LIST if docker else OCI_INDEX)
        listed = {d.platform_name: d.digest for d in index.manifests()}
        assert listed == children and set(listed) == set(PLATFORMS)
        assert len(set(children.values())) == 3  # three distinct images
        for platform, digest in children.items():
            child = await client.get_manifest(ref.with_digest(digest))
            assert child.media_type == (DOCKER_MANIFEST if docker else OCI_MANIFEST)
            cfg = child.config()
            assert cfg is not None
            doc = json.loads(await client.get_blob(ref, cfg.digest))
            assert "/".join(filter(None, (doc["os"], doc["architecture"],
                                          doc.get("variant")))) == platform
    run(registry, body)


def test_missing_manifest_and_blob(registry: RunningRegistry) -> None:
    name = repo(registry)

    async def body(client: RegistryClient) -> None:
        await push_image(client, f"{name}:present")
        ref = parse_reference(f"{name}:absent")
        with pytest.raises(ManifestNotFound, match="absent"):
            await client.resolve(ref)
        with pytest.raises(ManifestNotFound):
            await client.get_manifest(ref.with_digest(sha256_digest(b"nothing")))
        with pytest.raises(BlobNotFound):
            await client.get_blob(ref, sha256_digest(b"nothing"))
        with pytest.raises(DigestMismatch, match="sha256"):
            await client.get_blob(ref, "sha512:" + "0" * 128)
    run(registry, body)


def test_corrupted_storage_is_detected(registry: RunningRegistry) -> None:
    """Flip bytes in the registry's own files: every read path must notice."""
    name = repo(registry)

    async def body(client: RegistryClient) -> None:
        image = build_image(salt="to-corrupt")
        digest = await push_image(client, f"{name}:v1", salt="to-corrupt")
        ref = parse_reference(f"{name}:v1")
        manifest = await client.get_manifest(ref)
        layer = manifest.layers()[0]
        assert await client.get_blob(ref, layer.digest)  # fine before the corruption

        path = registry.blob_path(layer.digest)
        data = bytearray(path.read_bytes())
        data[-5] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(DigestMismatch, match=layer.digest[:20]):
            await client.get_blob(ref, layer.digest)

        mpath = registry.blob_path(digest)
        tampered = image.manifest.replace(b'"size":', b'"size" :', 1)
        mpath.write_bytes(tampered)
        with pytest.raises(DigestMismatch):
            await client.get_manifest(ref.with_digest(digest))
        with pytest.raises(DigestMismatch):  # by tag: the registry still announces the old digest
            await client.get_manifest(ref)
    run(registry, body)


def test_blob_read_is_capped(registry: RunningRegistry) -> None:
    name = repo(registry)

    async def body(client: RegistryClient) -> None:
        ref = parse_reference(f"{name}:x")
        digest = await client.put_blob(ref, b"x" * 10_000)
        assert len(await client.get_blob(ref, digest, max_size=10_000)) == 10_000
        with pytest.raises(BlobTooLarge):
            await client.get_blob(ref, digest, max_size=9_999)
    run(registry, body)


def _referrer(subject_digest: str, subject_size: int, artifact_type: str, note: str) -> bytes:
    empty = b"{}"
    return canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": sha256_digest(empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": sha256_digest(empty), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject_size},
        "annotations": {"note": note}})


def test_referrers_tag_schema_fallback(registry: RunningRegistry) -> None:
    """docker-registry 2.8 has no referrers API: push two referrers, list them via the fallback."""
    name = repo(registry)
    bundle_type = "application/vnd.dev.sigstore.bundle.v0.3+json"

    async def body(client: RegistryClient) -> None:
        digest = await push_image(client, f"{name}:v1", salt="referred")
        subject = parse_reference(f"{name}:v1")
        size = (await client.resolve(subject)).size
        assert await client.referrers(subject) == []
        await client.put_blob(subject, b"{}")
        first = _referrer(digest, size, bundle_type, "one")
        second = _referrer(digest, size, "application/example.sbom", "two")
        d1 = await client.push_referrer(subject, first, OCI_MANIFEST)
        d2 = await client.push_referrer(subject.with_digest(digest), second, OCI_MANIFEST)
        # Pushing the same referrer again does not duplicate it in the index.
        await client.push_referrer(subject, first, OCI_MANIFEST)
        found = await client.referrers(subject)
        assert [d.digest for d in found] == [d1.digest, d2.digest]
        assert found[0].artifact_type == bundle_type and found[0].annotations == {"note": "one"}
        only = await client.referrers(subject, artifact_type=bundle_type)
        assert [d.digest for d in only] == [sha256_digest(first)]
        # The fallback is a real OCI index under the tag schema, readable by any client.
        index = await client.get_manifest(subject.with_tag(fallback_tag(digest)))
        assert index.media_type == OCI_INDEX and len(index.manifests()) == 2
        # A referrer whose subject is another image is refused before anything is pushed.
        with pytest.raises(MalformedManifest, match="subject"):
            await client.push_referrer(subject.with_digest(sha256_digest(b"other")), first,
                                       OCI_MANIFEST)
        # add_referrer_fallback on its own is idempotent by digest.
        desc = Descriptor(OCI_MANIFEST, d1.digest, d1.size)
        before = index.digest
        assert await client.add_referrer_fallback(subject, desc) == before
    run(registry, body)
