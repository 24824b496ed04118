"""Small real OCI (and Docker v2) images, built in memory and pushed with our registry client.

An image is a config blob, one or two deterministic ``tar.gz`` layers (fixed mtimes, so the same
content always gives the same digests unless ``salt`` changes it) and an image manifest; a
multi-arch image is an OCI index (or Docker manifest list) over one such image per platform —
linux/arm64 and linux/arm/v7 for the Raspberry Pi nodes, linux/amd64 for the rest.

``skopeo``/``umoci`` helpers show interop both ways: skopeo reads what we push, and an image
that umoci built and skopeo pushed is readable (and digest-verified) by our client.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admission.core.reference import ImageReference, parse_reference
from admission.registry import RegistryClient
from admission.registry_types import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    canonical_json,
)

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


async def push_image(client: RegistryClient, reference: str, *, platform: str = "linux/amd64",
                     salt: str = "", docker: bool = False) -> str:
    """Build and push a single-platform image to ``reference`` (its tag); returns the digest."""
    ref = parse_reference(reference)
    return await push_built(client, ref, build_image(platform, salt=salt, docker=docker), ref.tag)


async def push_index(client: RegistryClient, reference: str, *,
                     platforms: tuple[str, ...] = PLATFORMS, salt: str = "",
                     docker: bool = False) -> tuple[str, dict[str, str]]:
    """Push one image per platform by digest, then an index over them under the reference's tag.

    Returns (index digest, {platform: manifest digest}).
    """
    ref = parse_reference(reference)
    children: dict[str, str] = {}
    entries = []
    for platform in platforms:
        image = build_image(platform, salt=salt, docker=docker)
        digest = await push_built(client, ref, image, None)
        children[platform] = digest
        entries.append({"mediaType": image.media_type, "digest": digest,
                        "size": len(image.manifest), "platform": platform_dict(platform)})
    media_type = DOCKER_MANIFEST_LIST if docker else OCI_INDEX
    index = canonical_json({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    return await client.put_manifest(ref, index, media_type, tag=ref.tag), children


# -- skopeo / umoci interop -------------------------------------------------------------------

def tools_available() -> bool:
    return bool(shutil.which("skopeo") and shutil.which("umoci"))


def skopeo_inspect(reference: str, *, raw: bool = False) -> Any:
    """``skopeo inspect`` over plain HTTP; ``raw`` gives the manifest bytes as skopeo saw them."""
    args = ["skopeo", "inspect", "--tls-verify=false", "--no-creds"]
    if raw:
        args.append("--raw")
    out = subprocess.run([*args, f"docker://{reference}"], check=True, capture_output=True,
                         timeout=60).stdout
    return out if raw else json.loads(out)


def umoci_image_to_registry(workdir: Path, reference: str, content: bytes) -> None:
    """Build an OCI layout with umoci (one file of ``content``) and ``skopeo copy`` it to the
    registry under ``reference``."""
    layout = workdir / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True, timeout=30)
    subprocess.run(["umoci", "new", "--image", f"{layout}:app"], check=True, timeout=30)
    bundle = workdir / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:app", str(bundle)],
                   check=True, timeout=60, capture_output=True)
    (bundle / "rootfs" / "hello.txt").write_bytes(content)
    subprocess.run(["umoci", "repack", "--image", f"{layout}:app", str(bundle)], check=True,
                   timeout=60, capture_output=True)
    subprocess.run(["umoci", "config", "--image", f"{layout}:app", "--config.cmd", "/hello",
                    "--os", "linux", "--architecture", "arm64"], check=True, timeout=30)
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-no-creds",
                    f"oci:{layout}:app", f"docker://{reference}"], check=True, timeout=60,
                   capture_output=True)
