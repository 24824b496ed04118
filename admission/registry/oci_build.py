"""Build small real OCI (and Docker v2) images in memory and push them with our client.

Used by ``umec demo`` (an app image to sign and admit) and by the tests. An image is a config
blob, deterministic ``tar.gz`` layers (fixed mtimes: the same content always gives the same
digests unless ``salt`` changes it) and an image manifest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from typing import Any

from admission.core.reference import ImageReference
from admission.registry.client import RegistryClient
from admission.registry.manifests import DOCKER_MANIFEST, OCI_MANIFEST, canonical_json

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
PLATFORMS = ("linux/arm64", "linux/arm/v7", "linux/amd64")


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A reproducible gzip'd tar of ``files``; returns (blob, diff_id of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(content), 0, 0o644
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), _sha(tar_bytes)


def platform_dict(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    out = {"os": parts[0], "architecture": parts[1]}
    if len(parts) > 2:
        out["variant"] = parts[2]
    return out


@dataclass(frozen=True)
class BuiltImage:
    manifest: bytes
    media_type: str
    blobs: dict[str, bytes]  # digest → bytes (config and layers)

    @property
    def digest(self) -> str:
        return _sha(self.manifest)


def build_image(platform: str = "linux/amd64", *, salt: str = "", layers: int = 2,
                docker: bool = False) -> BuiltImage:
    """An image whose files name its platform and ``salt`` (different salt → different digest)."""
    blobs: dict[str, bytes] = {}
    layer_descs, diff_ids = [], []
    for n in range(layers):
        blob, diff_id = make_layer({f"etc/umec/layer{n}": f"{platform} {salt} {n}\n".encode()})
        blobs[_sha(blob)] = blob
        diff_ids.append(diff_id)
        layer_descs.append({"mediaType": DOCKER_LAYER if docker else OCI_LAYER,
                            "digest": _sha(blob), "size": len(blob)})
    config_doc: dict[str, Any] = {**platform_dict(platform),
                                  "config": {"Cmd": ["/bin/true"], "Labels": {"salt": salt}},
                                  "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config = canonical_json(config_doc)
    blobs[_sha(config)] = config
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "digest": _sha(config),
                   "size": len(config)},
        "layers": layer_descs})
    return BuiltImage(manifest, media_type, blobs)


async def push_built(client: RegistryClient, ref: ImageReference, image: BuiltImage,
                     tag: str | None) -> str:
    for blob in image.blobs.values():
        await client.put_blob(ref, blob)
    return await client.put_manifest(ref, image.manifest, image.media_type, tag=tag)


