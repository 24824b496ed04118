"""Reading cosign signatures as a registry stores them: what signing and verification both need.

:mod:`admission.signing.sign` (to skip duplicates) and :mod:`admission.signing.verify` (to
check) read the same objects, so the reading lives here, below both; neither imports the other.

- Legacy: the ``sha256-<hex>.sig`` manifest of a digest in the image's repository and its
  simple-signing layers, each blob fetched with its descriptor size as the cap and checked
  against its digest (:func:`read_signature_layers`).
- Bundles: one bundle v0.3 referrer's artifact manifest, then its one layer, fetched with the
  declared size as the cap (:func:`read_bundle`).
"""

from __future__ import annotations

from admission.core.cosign import (
    SignatureLayer,
    bundle_layer_digest,
    parse_signature_manifest,
    signature_tag,
)
from admission.core.reference import ImageReference
from admission.registry.client import RegistryClient
from admission.registry.errors import ManifestNotFound


async def read_signature_layers(client: RegistryClient, ref: ImageReference,
                                digest: str) -> list[SignatureLayer]:
    """The layers of the ``.sig`` manifest of ``digest`` (empty when there is none)."""
    try:
        sig = await client.get_manifest(ref.with_tag(signature_tag(digest)))
    except ManifestNotFound:
        return []
    layers = []
    for layer_ref in parse_signature_manifest(sig.raw):
        blob = await client.get_blob(ref, layer_ref.digest, max_size=layer_ref.size)
        layers.append(layer_ref.with_payload(blob))
    return layers


async def read_bundle(client: RegistryClient, subject: ImageReference, referrer: str) -> bytes:
    """The bundle bytes of the referrer ``referrer`` (a digest) of ``subject``."""
    artifact = await client.get_manifest(subject.with_digest(referrer))
    layer_digest, size = bundle_layer_digest(artifact.raw)
    return await client.get_blob(subject, layer_digest, max_size=size)
