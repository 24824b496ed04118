"""An OCI image layout written directly: canonical JSON, content-addressed blobs.

One layout per image: ``index.json`` names the multi-arch image index ``<version>`` (the one
that is pushed and signed) and, for tools that unpack a single manifest (umoci), each
platform's manifest as ``<version>-<arch>``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.imagebuild.reprotar import LayerFile

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
# Debian architecture -> OCI platform
PLATFORMS: dict[str, dict[str, str]] = {
    "amd64": {"architecture": "amd64", "os": "linux"},
    "arm64": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    "armhf": {"architecture": "arm", "os": "linux", "variant": "v7"},
}


def canonical(obj: Any) -> bytes:
    """Deterministic JSON: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, str] | None = None
    annotations: Mapping[str, str] | None = None

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                                "size": self.size}
        if self.platform:
            body["platform"] = dict(self.platform)
        if self.annotations:
            body["annotations"] = dict(self.annotations)
        return body


@dataclass(frozen=True)
class RunConfig:
    """What the image runs: entrypoint, user, environment, working directory, labels."""

    entrypoint: Sequence[str]
    user: str
    env: Sequence[str]
    workdir: str
    labels: Mapping[str, str]
    cmd: Sequence[str] = ("--help",)


class Layout:
    """An OCI image layout directory being written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))

    def put(self, data: bytes, media_type: str, **extra: Any) -> Descriptor:
        digest = hashlib.sha256(data).hexdigest()
        (self.blobs / digest).write_bytes(data)
        return Descriptor(media_type, f"sha256:{digest}", len(data), **extra)

    def put_layer(self, layer: LayerFile) -> Descriptor:
        target = self.blobs / layer.digest.removeprefix("sha256:")
        if layer.path != target:
            layer.path.replace(target)
        return Descriptor(MT_LAYER, layer.digest, layer.size)

    def image(self, arch: str, layers: Sequence[tuple[LayerFile, str]], run: RunConfig,
              *, epoch: int, annotations: Mapping[str, str]) -> Descriptor:
        """Write one platform's config and manifest; ``layers`` are (layer, created_by)."""
        created = rfc3339(epoch)
        config = {
            **PLATFORMS[arch], "created": created,
            "config": {"Entrypoint": list(run.entrypoint), "Cmd": list(run.cmd),
                       "User": run.user, "Env": list(run.env), "WorkingDir": run.workdir,
                       "Labels": dict(run.labels)},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer, _ in layers]},
            "history": [{"created": created, "created_by": why} for _, why in layers],
        }
        config_desc = self.put(canonical(config), MT_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc.json(),
                    "layers": [self.put_layer(layer).json() for layer, _ in layers],
                    "annotations": dict(annotations)}
        return self.put(canonical(manifest), MT_MANIFEST, platform=PLATFORMS[arch])

    def finish(self, version: str, images: Mapping[str, Descriptor],
               annotations: Mapping[str, str]) -> Descriptor:
        """Write the image index of ``images`` (arch -> manifest) and ``index.json``."""
        order = [arch for arch in PLATFORMS if arch in images]
        index = {"schemaVersion": 2, "mediaType": MT_INDEX,
                 "manifests": [images[arch].json() for arch in order],
                 "annotations": dict(annotations)}
        index_desc = self.put(canonical(index), MT_INDEX)
        entries = [Descriptor(MT_INDEX, index_desc.digest, index_desc.size,
                              annotations={REF_NAME: version}).json()]
        entries += [Descriptor(MT_MANIFEST, images[arch].digest, images[arch].size,
                               platform=PLATFORMS[arch],
                               annotations={REF_NAME: f"{version}-{arch}"}).json()
                    for arch in order]
        (self.root / "index.json").write_bytes(canonical({"schemaVersion": 2,
                                                          "mediaType": MT_INDEX,
                                                          "manifests": entries}))
        return index_desc
