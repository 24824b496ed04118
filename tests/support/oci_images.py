"""Small real OCI (and Docker v2) images, built in memory and pushed with our registry client.

An image is a config blob, one or two deterministic ``tar.gz`` layers (fixed mtimes, so the same
content always gives the same digests unless ``salt`` changes it) and an image manifest; a
multi-arch image is an OCI index (or Docker manifest list) over one such image per platform —
linux/arm64 and linux/arm/v7 for the Raspberry Pi nodes, linux/amd64 for the rest.

``skopeo``/``umoci`` helpers show interop both ways: skopeo reads what we push, and an image
that umoci built and skopeo pushed is readable (and digest-verified) by our client.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from admission.core.reference import parse_reference
from admission.registry.client import RegistryClient
from admission.registry.manifests import (
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    canonical_json,
)
from admission.registry.oci_build import (
    PLATFORMS,
    build_image,
    platform_dict,
    push_built,
)


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
