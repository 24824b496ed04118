"""Interop with independent OCI tools: skopeo reads what we push; we read what umoci+skopeo push."""

from __future__ import annotations

import asyncio
import gzip
import uuid
from pathlib import Path

import pytest

from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient
from admission.registry.manifests import OCI_MANIFEST, sha256_digest
from tests.support.oci_images import (
    PLATFORMS,
    push_image,
    push_index,
    skopeo_inspect,
    tools_available,
    umoci_image_to_registry,
)
from tests.support.registry import RunningRegistry, requires_registry

pytestmark = [requires_registry,
              pytest.mark.skipif(not tools_available(), reason="skopeo/umoci not installed")]


def test_skopeo_reads_our_image_and_index(registry: RunningRegistry) -> None:
    base = f"{registry.host}/interop-{uuid.uuid4().hex[:8]}"

    async def main() -> tuple[str, str, dict[str, str]]:
        async with RegistryClient() as client:
            single = await push_image(client, f"{base}/single:1", platform="linux/arm/v7")
            index, children = await push_index(client, f"{base}/multi:1")
            return single, index, children
    single, index, children = asyncio.run(main())

    info = skopeo_inspect(f"{base}/single:1")
    assert info["Digest"] == single
    # skopeo 1.9 does not print the variant; os/arch/labels come from our config blob.
    assert (info["Os"], info["Architecture"], info["Labels"]) == ("linux", "arm", {"salt": ""})
    assert len(info["Layers"]) == 2
    # skopeo's raw bytes are ours, byte for byte.
    assert sha256_digest(skopeo_inspect(f"{base}/single:1", raw=True)) == single
    assert sha256_digest(skopeo_inspect(f"{base}/multi:1", raw=True)) == index
    # skopeo picks the amd64 child of the index for this (amd64) host.
    assert skopeo_inspect(f"{base}/multi:1")["Digest"] in (index, children["linux/amd64"])
    assert set(children) == set(PLATFORMS)


def test_we_read_what_umoci_and_skopeo_pushed(registry: RunningRegistry, tmp_path: Path) -> None:
    reference = f"{registry.host}/interop-{uuid.uuid4().hex[:8]}/umoci:1"
    content = f"hello from umoci {uuid.uuid4()}\n".encode()
    umoci_image_to_registry(tmp_path, reference, content)
    expected = skopeo_inspect(reference)["Digest"]

    async def main() -> None:
        async with RegistryClient() as client:
            ref = parse_reference(reference)
            desc = await client.resolve(ref)
            assert desc.digest == expected and desc.media_type == OCI_MANIFEST
            manifest = await client.get_manifest(ref.with_digest(desc.digest))
            config = manifest.config()
            assert config is not None
            assert b'"arm64"' in await client.get_blob(ref, config.digest)
            layers = [await client.get_blob(ref, d.digest) for d in manifest.layers()]
            assert any(content in gzip.decompress(layer) for layer in layers)
    asyncio.run(main())
