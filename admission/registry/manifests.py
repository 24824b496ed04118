"""OCI/Docker manifest and descriptor objects, and the checks applied to bytes from a registry.

Parsing a manifest fetched from a registry goes through these steps (each a typed error):

1. Size: at most :data:`MAX_MANIFEST_SIZE` bytes (the limit the OCI distribution spec lets
   registries enforce; anything bigger is not an image manifest) → ``ManifestTooLarge``.
2. Digest: ``sha256(raw)`` must equal the digest asked for (by-digest fetch) and the digest the
   registry announced in ``Docker-Content-Digest`` → ``DigestMismatch``. The digest we report is
   always the one we computed, never the header.
3. Media type: the ``Content-Type`` (or, when that is generic, the ``mediaType`` field) must be one
   of the four manifest/index types; if both are present they must agree → ``UnsupportedMediaType``.
4. JSON: an object with ``schemaVersion`` 2; descriptors have a media type, a sha256 digest and a
   non-negative size → ``MalformedManifest``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from admission.core.reference import InvalidReference, validate_digest
from admission.registry.errors import (
    DigestMismatch,
    MalformedManifest,
    ManifestTooLarge,
    UnsupportedMediaType,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST)
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
OCI_EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
# Types a registry may send when it does not know better; then the JSON's mediaType decides.
_GENERIC_TYPES = frozenset({"", "application/json", "application/octet-stream", "text/plain"})

MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (a pointer to a blob or manifest, with optional metadata)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    artifact_type: str | None = None
    platform: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest (OCI key names, empty fields omitted)."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest,
                               "size": self.size}
        if self.artifact_type is not None:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = dict(self.platform)
        return out

    @property
    def platform_name(self) -> str | None:
        """``os/architecture[/variant]`` (e.g. ``linux/arm/v7``) when there is a platform."""
        if not self.platform:
            return None
        parts = [str(self.platform.get("os", "")), str(self.platform.get("architecture", ""))]
        if self.platform.get("variant"):
            parts.append(str(self.platform["variant"]))
        return "/".join(parts)


def descriptor_from_json(obj: object, where: str) -> Descriptor:
    """Validate one descriptor object from a manifest; ``where`` names it in errors."""
    if not isinstance(obj, dict):
        raise MalformedManifest(f"{where}: descriptor is not an object")
    media_type, digest, size = obj.get("mediaType"), obj.get("digest"), obj.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise MalformedManifest(f"{where}: descriptor has no mediaType")
    try:
        validate_digest(digest)  # type: ignore[arg-type]
    except InvalidReference as exc:
        raise MalformedManifest(f"{where}: {exc.detail}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedManifest(f"{where}: descriptor size {size!r} is not a non-negative integer")
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise MalformedManifest(f"{where}: annotations must map strings to strings")
    artifact_type = obj.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise MalformedManifest(f"{where}: artifactType must be a string")
    platform = obj.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise MalformedManifest(f"{where}: platform must be an object")
    return Descriptor(media_type=media_type, digest=str(digest), size=size,
                      annotations=dict(annotations), artifact_type=artifact_type,
                      platform=platform)


@dataclass(frozen=True)
class Manifest:
    """A manifest or index whose ``raw`` bytes were checked against ``digest`` (sha256)."""

    media_type: str
    digest: str
    raw: bytes
    json: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    def manifests(self) -> list[Descriptor]:
        """The child manifests of an index (empty for an image manifest)."""
        items = self.json.get("manifests", []) if self.is_index else []
        if not isinstance(items, list):
            raise MalformedManifest(f"{self.digest}: 'manifests' is not a list")
        return [descriptor_from_json(d, f"{self.digest} manifests[{i}]")
                for i, d in enumerate(items)]

    def layers(self) -> list[Descriptor]:
        items = [] if self.is_index else self.json.get("layers", [])
        if not isinstance(items, list):
            raise MalformedManifest(f"{self.digest}: 'layers' is not a list")
        return [descriptor_from_json(d, f"{self.digest} layers[{i}]") for i, d in enumerate(items)]

    def config(self) -> Descriptor | None:
        if self.is_index:
            return None
        return descriptor_from_json(self.json.get("config"), f"{self.digest} config")

    def subject(self) -> Descriptor | None:
        sub = self.json.get("subject")
        return None if sub is None else descriptor_from_json(sub, f"{self.digest} subject")

    @property
    def artifact_type(self) -> str | None:
        """OCI 1.1 rule: ``artifactType``, else the config media type of an image manifest."""
        at = self.json.get("artifactType")
        if isinstance(at, str):
            return at
        cfg = self.json.get("config")
        if not self.is_index and isinstance(cfg, dict) and isinstance(cfg.get("mediaType"), str):
            return str(cfg["mediaType"])
        return None


def parse_manifest(raw: bytes, *, content_type: str | None, expected_digest: str | None,
                   announced_digest: str | None, where: str) -> Manifest:
    """Apply steps 1-4 of the module docstring to bytes received for ``where``."""
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestTooLarge(f"{where}: manifest of {len(raw)} bytes exceeds {MAX_MANIFEST_SIZE}")
    digest = _checked_digest(raw, expected_digest, announced_digest, where)
    doc = _json_object(raw, where)
    media_type = _media_type(doc, content_type, where)
    if doc.get("schemaVersion") != 2:
        raise MalformedManifest(f"{where}: schemaVersion is {doc.get('schemaVersion')!r}, not 2")
    manifest = Manifest(media_type=media_type, digest=digest, raw=raw, json=doc)
    # Validate the descriptors now so consumers never meet a malformed one later.
    if manifest.is_index:
        manifest.manifests()
    else:
        manifest.config()
        manifest.layers()
    manifest.subject()
    return manifest


def _checked_digest(raw: bytes, expected: str | None, announced: str | None, where: str) -> str:
    """Step 2: the digest we computed, which must be the one asked for and the one announced."""
    digest = sha256_digest(raw)
    if expected is not None and digest != expected:
        raise DigestMismatch(f"{where}: asked for {expected}, content hashes to {digest}")
    if announced and announced != digest:
        raise DigestMismatch(f"{where}: registry announced {announced[:80]}, "
                             f"content hashes to {digest}")
    return digest


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedManifest(f"{where}: manifest is not valid JSON") from None
    if not isinstance(doc, dict):
        raise MalformedManifest(f"{where}: manifest is not a JSON object")
    return doc


def _media_type(doc: dict[str, Any], content_type: str | None, where: str) -> str:
    """Step 3: the Content-Type, or the body's ``mediaType`` when the header is generic; both
    present must agree, and the type must be a manifest or an index."""
    header_type = (content_type or "").split(";")[0].strip().lower()
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise MalformedManifest(f"{where}: mediaType is not a string")
    if header_type in _GENERIC_TYPES:
        media_type = body_type or ""
    else:
        media_type = header_type
        if body_type and body_type != header_type:
            raise UnsupportedMediaType(f"{where}: Content-Type {header_type!r} but the manifest "
                                       f"says {body_type!r}")
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise UnsupportedMediaType(f"{where}: media type {media_type[:100]!r} is not an OCI or "
                                   "Docker v2 manifest or index")
    return media_type


def empty_index() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def canonical_json(doc: dict[str, Any]) -> bytes:
    """Compact, key-order-preserving JSON: what we push (the digest is of these exact bytes)."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
