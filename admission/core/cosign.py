"""cosign's legacy signature format, byte for byte, and the Sigstore bundle v0.3 we attach.

Everything here is pure (bytes in, bytes out): no registry, no clock (times are passed in).

What cosign writes for ``cosign sign --key K IMAGE@DIGEST`` (sigstore/cosign ``pkg/oci/static``,
``pkg/oci/mutate``; sigstore/sigstore ``pkg/signature/payload``), and what we write identically:

1. The *simple-signing payload* -- Go's ``encoding/json`` of the struct
   ``{"critical":{"identity":{"docker-reference":REPO},"image":{"docker-manifest-digest":DIGEST},
   "type":"cosign container image signature"},"optional":OPT}``: struct fields in declaration
   order, no whitespace, Go's string escaping (``<``, ``>``, ``&``, U+2028/9 as ``\\u00xx``), and
   ``optional`` a Go map (keys sorted) or ``null`` when no annotations were given.
   ``REPO`` is go-containerregistry's ``Repository.Name()``: Docker Hub is ``index.docker.io``.
2. The signature: over the payload bytes (ECDSA P-256/SHA-256, RSA PKCS#1 v1.5/SHA-256 or
   Ed25519), base64 in the layer annotation ``dev.cosignproject.cosign/signature``.
3. One layer per signature, media type ``application/vnd.dev.cosign.simplesigning.v1+json``,
   the payload as the (uncompressed) blob, so diff_id == digest.
4. The config blob of go-containerregistry's empty image with those diff_ids and one empty
   history entry per layer (``created`` is Go's zero time unless a creation time is recorded).
5. An OCI image manifest ``{schemaVersion, mediaType, config, layers}`` under the tag
   ``sha256-<hex>.sig`` of the signed digest, in the image's repository. New signatures are
   *appended* as layers; an identical layer is never added twice.

Reading goes the other way with limits (:data:`MAX_SIGNATURE_LAYERS`, :data:`MAX_PAYLOAD_BYTES`):
a registry is untrusted input until a signature verifies. Every parse failure is a
:class:`SignatureMalformed`.

The bundle (:func:`build_bundle`) is a Sigstore bundle v0.3 with a ``messageSignature`` over the
image manifest (its digest is the ``messageDigest``), key-based (``publicKey.hint``), attached as
an OCI 1.1 referrer (:func:`build_bundle_artifact_manifest`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from admission.core.errors import AdmissionError

SIMPLESIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
REKOR_BUNDLE_ANNOTATION = "dev.sigstore.cosign/bundle"
PAYLOAD_TYPE = "cosign container image signature"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_BLOB = b"{}"
BUNDLE_V03_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
CONTAINERS_IMAGE_MAGIC = b"\x00sigstore-json\n"

# A .sig manifest holds one layer per signer and re-signing run; hundreds means abuse.
MAX_SIGNATURE_LAYERS = 256
MAX_SIGNATURE_MANIFEST_BYTES = 4 << 20
MAX_PAYLOAD_BYTES = 64 << 10       # a simple-signing payload is ~250 bytes plus annotations
MAX_ANNOTATION_BYTES = 64 << 10    # certificates and Rekor bundles ride in annotations
MAX_BUNDLE_BYTES = 1 << 20


class SignatureMalformed(AdmissionError):
    check = "signature.malformed"
    hint = ("The signature, its payload or the signature manifest is not in cosign's format; "
            "re-sign the image with `umec sign` or cosign.")


# Go's base64.StdEncoding after '\r' and '\n' are dropped: whole quanta of the standard
# alphabet, the last one padded with '=' (padding required, nothing after it).
_GO_STD_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def go_b64decode(text: str) -> bytes:
    """Decode ``text`` exactly as Go's ``base64.StdEncoding.DecodeString`` does (cosign reads
    the signature annotation, the Rekor bundle's ``[]byte`` fields and hashedrekord contents
    with it): carriage returns and line feeds anywhere are ignored, padding is required, any
    other character (space and tab included) is an error, and the unused bits of the last
    quantum are not checked (StdEncoding is not ``Strict()``). Raises ``ValueError``."""
    stripped = text.replace("\r", "").replace("\n", "")
    if not stripped.isascii() or _GO_STD_B64.fullmatch(stripped) is None:
        raise ValueError("not standard padded base64")
    return base64.b64decode(stripped)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _is_sha256_digest(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 71 and value.startswith("sha256:")
            and all(c in "0123456789abcdef" for c in value[7:]))


# --- Go encoding/json -------------------------------------------------------------------------

_GO_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                     # Go >= 1.22 writes \b and \f short (cosign is built with a current Go).
                     "\b": "\\b", "\f": "\\f"}


def go_json_string(text: str) -> str:
    """``text`` as Go's ``json.Marshal`` writes a string (HTML-safe escaping on)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _GO_SHORT_ESCAPES:
            out.append(_GO_SHORT_ESCAPES[ch])
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            # A lone surrogate cannot be UTF-8; Go replaces invalid UTF-8 with U+FFFD.
            out.append("\\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_json(value: Any) -> str:
    """Go's compact ``json.Marshal`` of ``value``.

    ``dict`` keeps insertion order (a Go *struct*: pass fields in declaration order); pass Go
    *maps* through :func:`go_map` first so their keys are sorted as Go sorts them.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return go_json_string(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{go_json_string(str(k))}:{go_json(v)}"
                              for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"go_json cannot encode {type(value).__name__}")


def go_map(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A Go map's key order: bytewise on UTF-8, which equals code point order."""
    return {k: mapping[k] for k in sorted(mapping)}


# --- payload ----------------------------------------------------------------------------------

def docker_reference(registry: str, repository: str) -> str:
    """The ``docker-reference`` cosign writes: go-containerregistry's ``Repository.Name()``."""
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        registry = "index.docker.io"
        if "/" not in repository:
            repository = "library/" + repository
    return f"{registry}/{repository}"


def simple_signing_payload(reference: str, manifest_digest: str,
                           optional: Mapping[str, str] | None = None) -> bytes:
    """The payload bytes exactly as cosign writes them (``optional=None`` is JSON ``null``)."""
    if not _is_sha256_digest(manifest_digest):
        raise SignatureMalformed(f"not a sha256 digest: {manifest_digest!r}")
    doc = {
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": None if optional is None else go_map(optional),
    }
    return go_json(doc).encode()


@dataclass(frozen=True)
class SimpleSigning:
    """The fields of a parsed simple-signing payload that verification looks at."""

    docker_reference: str
    manifest_digest: str
    type: str
    optional: Mapping[str, Any] | None


def parse_simple_signing(payload: bytes) -> SimpleSigning:
    """Parse a payload; missing or mistyped fields are :class:`SignatureMalformed`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SignatureMalformed(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise SignatureMalformed(f"payload is not JSON: {exc}") from None
    critical = doc.get("critical") if isinstance(doc, dict) else None
    if not isinstance(critical, dict):
        raise SignatureMalformed("payload has no 'critical' object")
    identity, image = critical.get("identity"), critical.get("image")
    ref = identity.get("docker-reference") if isinstance(identity, dict) else None
    digest = image.get("docker-manifest-digest") if isinstance(image, dict) else None
    kind = critical.get("type")
    optional = doc.get("optional")
    if not isinstance(ref, str) or not isinstance(digest, str) or not isinstance(kind, str):
        raise SignatureMalformed("payload lacks critical.identity.docker-reference, "
                                 "critical.image.docker-manifest-digest or critical.type")
    if optional is not None and not isinstance(optional, dict):
        raise SignatureMalformed("payload 'optional' is neither an object nor null")
    return SimpleSigning(ref, digest, kind, optional)


# --- layers and the .sig manifest -------------------------------------------------------------

def signature_tag(digest: str) -> str:
    """``sha256:<hex>`` -> ``sha256-<hex>.sig`` (cosign's tag for the signatures of a digest)."""
    if not _is_sha256_digest(digest):
        raise SignatureMalformed(f"not a sha256 digest: {digest!r}")
    return digest.replace(":", "-", 1) + ".sig"


@dataclass(frozen=True)
class SignatureLayer:
    """One cosign signature: the payload blob and its layer annotations."""

    payload: bytes
    annotations: Mapping[str, str]
    media_type: str = SIMPLESIGNING_MEDIA_TYPE
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _sha256(self.payload))

    @property
    def signature_b64(self) -> str:
        value = self.annotations.get(SIGNATURE_ANNOTATION)
        if not isinstance(value, str) or not value:
            raise SignatureMalformed(f"layer {self.digest} has no {SIGNATURE_ANNOTATION}")
        return value

    @property
    def signature(self) -> bytes:
        """The annotation decoded as cosign decodes it (:func:`go_b64decode`: line breaks
        inside are fine, other whitespace is not)."""
        try:
            return go_b64decode(self.signature_b64)
        except ValueError:
            raise SignatureMalformed(f"layer {self.digest}: signature is not base64") from None

    def descriptor(self) -> dict[str, Any]:
        # go-containerregistry v1.Descriptor field order: mediaType, size, digest, annotations.
        return {"mediaType": self.media_type, "size": len(self.payload), "digest": self.digest,
                "annotations": go_map(self.annotations)}

    def same_as(self, other: SignatureLayer) -> bool:
        return self.payload == other.payload and dict(self.annotations) == dict(other.annotations)


def new_signature_layer(payload: bytes, signature: bytes,
                        extra_annotations: Mapping[str, str] | None = None) -> SignatureLayer:
    annotations = dict(extra_annotations or {})
    annotations[SIGNATURE_ANNOTATION] = base64.b64encode(signature).decode()
    return SignatureLayer(payload, annotations)


def signature_config(diff_ids: Sequence[str], created: str = GO_ZERO_TIME) -> bytes:
    """The config blob go-containerregistry writes for cosign's signature image."""
    doc = {"architecture": "", "created": created,
           "history": [{"created": GO_ZERO_TIME} for _ in diff_ids],
           "os": "", "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}, "config": {}}
    return go_json(doc).encode()


@dataclass(frozen=True)
class SignatureImage:
    """A ``.sig`` manifest ready to push: manifest bytes, config blob and layers (in order)."""

    manifest: bytes
    config: bytes
    layers: tuple[SignatureLayer, ...]

    @property
    def digest(self) -> str:
        return _sha256(self.manifest)


def build_signature_image(layers: Sequence[SignatureLayer],
                          created: str = GO_ZERO_TIME) -> SignatureImage:
    """The ``.sig`` image for ``layers`` (already de-duplicated, see :func:`append_layer`)."""
    if not layers:
        raise SignatureMalformed("a signature image needs at least one signature layer")
    config = signature_config([layer.digest for layer in layers], created)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": OCI_CONFIG_MEDIA_TYPE, "size": len(config),
                           "digest": _sha256(config)},
                "layers": [layer.descriptor() for layer in layers]}
    return SignatureImage(go_json(manifest).encode(), config, tuple(layers))


def append_layer(existing: Sequence[SignatureLayer],
                 new: SignatureLayer) -> tuple[list[SignatureLayer], bool]:
    """``existing + [new]`` unless an identical layer is there; returns (layers, appended)."""
    if any(layer.same_as(new) for layer in existing):
        return list(existing), False
    return [*existing, new], True


@dataclass(frozen=True)
class LayerRef:
    """A layer descriptor from a ``.sig`` manifest, before its blob is fetched."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str]

    def with_payload(self, payload: bytes) -> SignatureLayer:
        """Bind the fetched blob; its digest and size must be the descriptor's."""
        if len(payload) != self.size or _sha256(payload) != self.digest:
            raise SignatureMalformed(f"signature layer blob does not match {self.digest}")
        return SignatureLayer(payload, self.annotations, self.media_type)


def parse_signature_manifest(raw: bytes) -> list[LayerRef]:
    """The simple-signing layers of a ``.sig`` manifest (other media types are skipped)."""
    refs: list[LayerRef] = []
    for index, layer in enumerate(_signature_manifest_layers(raw)):
        ref = _layer_ref(index, layer)
        if ref.media_type == SIMPLESIGNING_MEDIA_TYPE:
            refs.append(ref)
    return refs


def _signature_manifest_layers(raw: bytes) -> list[Any]:
    """The ``layers`` list of a ``.sig`` manifest: bounded size, JSON, a list, bounded count."""
    if len(raw) > MAX_SIGNATURE_MANIFEST_BYTES:
        raise SignatureMalformed(f"signature manifest of {len(raw)} bytes is too large")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SignatureMalformed(f"signature manifest is not JSON: {exc}") from None
    layers = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(layers, list):
        raise SignatureMalformed("signature manifest has no 'layers' list")
    if len(layers) > MAX_SIGNATURE_LAYERS:
        raise SignatureMalformed(f"signature manifest has {len(layers)} layers "
                                 f"(limit {MAX_SIGNATURE_LAYERS})")
    return layers


def _layer_ref(index: int, layer: Any) -> LayerRef:
    """One layer descriptor, checked whatever its media type (a bad one fails the manifest)."""
    if not isinstance(layer, dict):
        raise SignatureMalformed(f"layer {index} is not an object")
    media_type, digest, size = layer.get("mediaType"), layer.get("digest"), layer.get("size")
    annotations = layer.get("annotations") or {}
    if not isinstance(media_type, str) or not _is_sha256_digest(digest):
        raise SignatureMalformed(f"layer {index} lacks a mediaType or a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= \
            MAX_PAYLOAD_BYTES:
        raise SignatureMalformed(f"layer {index} size {size!r} is not in "
                                 f"0..{MAX_PAYLOAD_BYTES}")
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_ANNOTATION_BYTES
            for k, v in annotations.items()):
        raise SignatureMalformed(f"layer {index} annotations are not short strings")
    assert isinstance(digest, str)
    return LayerRef(media_type, digest, size, dict(annotations))


def parse_containers_image_signature(data: bytes) -> SignatureLayer:
    """containers/image's on-disk signature (``\\x00sigstore-json\\n`` + JSON) as a layer."""
    if not data.startswith(CONTAINERS_IMAGE_MAGIC):
        raise SignatureMalformed("not a containers/image sigstore signature (magic missing)")
    try:
        doc = json.loads(data[len(CONTAINERS_IMAGE_MAGIC):])
        payload = base64.b64decode(doc["payload"], validate=True)
        media_type, annotations = doc["mimeType"], doc.get("annotations") or {}
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError) as exc:
        raise SignatureMalformed(f"containers/image signature unreadable: {exc!r}") from None
    if not isinstance(media_type, str) or not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise SignatureMalformed("containers/image signature has mistyped fields")
    return SignatureLayer(payload, annotations, media_type)


# --- Sigstore bundle v0.3 ---------------------------------------------------------------------

def build_bundle(manifest_digest: str, signature: bytes, key_hint: str) -> bytes:
    """A key-based bundle v0.3 whose messageSignature covers the manifest with this digest."""
    if not _is_sha256_digest(manifest_digest):
        raise SignatureMalformed(f"not a sha256 digest: {manifest_digest!r}")
    digest_b64 = base64.b64encode(bytes.fromhex(manifest_digest[7:])).decode()
    doc = {"mediaType": BUNDLE_V03_MEDIA_TYPE,
           "verificationMaterial": {"publicKey": {"hint": key_hint}, "tlogEntries": []},
           "messageSignature": {"messageDigest": {"algorithm": "SHA2_256", "digest": digest_b64},
                                "signature": base64.b64encode(signature).decode()}}
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass(frozen=True)
class BundleArtifact:
    manifest: bytes
    bundle: bytes

    @property
    def digest(self) -> str:
        return _sha256(self.manifest)


def build_bundle_artifact_manifest(bundle: bytes, subject_media_type: str, subject_digest: str,
                                   subject_size: int, created: str | None = None
                                   ) -> BundleArtifact:
    """An OCI 1.1 artifact manifest carrying ``bundle`` whose subject is the signed image."""
    annotations = {"dev.sigstore.bundle.content": "message-signature"}
    if created is not None:
        annotations["org.opencontainers.image.created"] = created
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST_MEDIA_TYPE,
                "artifactType": BUNDLE_V03_MEDIA_TYPE,
                "config": {"mediaType": OCI_EMPTY_MEDIA_TYPE, "size": len(OCI_EMPTY_BLOB),
                           "digest": _sha256(OCI_EMPTY_BLOB)},
                "layers": [{"mediaType": BUNDLE_V03_MEDIA_TYPE, "size": len(bundle),
                            "digest": _sha256(bundle)}],
                "subject": {"mediaType": subject_media_type, "size": subject_size,
                            "digest": subject_digest},
                "annotations": go_map(annotations)}
    return BundleArtifact(go_json(manifest).encode(), bundle)


def bundle_layer_digest(raw: bytes) -> tuple[str, int]:
    """The (digest, size) of the bundle layer of a referrer manifest."""
    try:
        doc = json.loads(raw)
        layers = doc["layers"]
        matching = [x for x in layers if isinstance(x, dict)
                    and x.get("mediaType") == BUNDLE_V03_MEDIA_TYPE]
        digest, size = matching[0]["digest"], matching[0]["size"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise SignatureMalformed(f"bundle referrer manifest unreadable: {exc!r}") from None
    if not _is_sha256_digest(digest) or not isinstance(size, int) or not \
            0 <= size <= MAX_BUNDLE_BYTES:
        raise SignatureMalformed("bundle referrer layer has a bad digest or size")
    assert isinstance(digest, str)
    return digest, size
