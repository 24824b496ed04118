"""``umec attest`` and ``umec verify-attestation``: in-toto attestations in a registry, as cosign
stores them (formats in :mod:`admission.core.attestations`).

:func:`attest_image` for ``IMAGE[:TAG|@DIGEST]``:

1. Resolve the reference once to a digest (a tag moved mid-run cannot get the wrong image
   attested); the statement's subject is that digest, its name the image's repository.
2. The statement for ``--type`` and ``--predicate`` (:func:`build_statement`), signed as a DSSE
   envelope with the key (the same algorithms as ``umec sign``).
3. The existing ``sha256-<hex>.att`` manifest is read (each layer blob digest-checked, sizes
   capped); with ``replace=True`` the layers whose *statement* has the same predicate type are
   dropped (cosign's ``--replace``, which also reads the statement, not the annotation); an
   identical statement already signed by this key is not added twice; the new layer is appended.
4. Envelope blob(s), config blob, then the manifest under the ``.att`` tag.

:func:`read_attestations` fetches the envelopes of a digest (at most
:data:`MAX_ATTESTATION_BYTES` declared in all) for ``umec attest``, which rewrites the ``.att``
image. :func:`verify_image_attestations` (the webhook, ``umec verify-attestation``) fetches,
verifies and drops one envelope at a time (:func:`admission.core.attestations.verify_envelope`),
so at most one envelope (:data:`~admission.core.attestations.MAX_ENVELOPE_BYTES`) is in memory
per image; a layer declared larger is a malformed verdict and is not fetched. Registry failures
are raised, not returned: they say nothing about the attestations, and a caller must fail
closed on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from admission.core.attestations import (
    DSSE_MEDIA_TYPE,
    MAX_ENVELOPE_BYTES,
    AttestationLayerRef,
    AttestationMalformed,
    EnvelopeVerdict,
    attestation_layer,
    attestation_layer_refs,
    attestation_tag,
    build_attestation_image,
    build_statement,
    envelope_signers,
    parse_envelope,
    parse_statement,
    predicate_type_uri,
    sign_envelope,
    verify_envelope,
)
from admission.core.cosign import OCI_MANIFEST_MEDIA_TYPE, SignatureLayer, docker_reference
from admission.core.errors import AdmissionError
from admission.core.reference import ImageReference
from admission.registry.client import RegistryClient
from admission.registry.errors import ManifestNotFound
from admission.signing.sign import sign_bytes
from keys import PrivateKey, PublicKey

MAX_ATTESTATION_BYTES = 16 << 20     # every envelope of one digest together (declared)


def rfc3339(moment: datetime) -> str:
    """Go's ``time.RFC3339`` of a UTC time (what cosign's custom predicate records)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def attestation_refs(client: RegistryClient, ref: ImageReference,
                           digest: str) -> list[AttestationLayerRef]:
    """The DSSE layers of the ``.att`` manifest of ``digest`` (empty when there is none);
    at most :data:`MAX_ATTESTATION_BYTES` declared in all."""
    try:
        manifest = await client.get_manifest(ref.with_tag(attestation_tag(digest)))
    except ManifestNotFound:
        return []
    refs = attestation_layer_refs(manifest.json)
    total = sum(r.size for r in refs)
    if total > MAX_ATTESTATION_BYTES:
        raise AttestationMalformed(f"the .att manifest of {digest} declares {total} bytes of "
                                   f"envelopes (limit {MAX_ATTESTATION_BYTES})")
    return refs


async def read_attestations(client: RegistryClient, ref: ImageReference,
                            digest: str) -> list[tuple[AttestationLayerRef, bytes]]:
    """:func:`attestation_refs` with their blobs, each fetched at its declared size."""
    return [(r, await client.get_blob(ref, r.digest, max_size=r.size))
            for r in await attestation_refs(client, ref, digest)]


async def _verify_layer(client: RegistryClient, ref: ImageReference, digest: str,
                        layer: AttestationLayerRef,
                        keys: Mapping[str, PublicKey]) -> EnvelopeVerdict:
    if layer.size > MAX_ENVELOPE_BYTES:
        return EnvelopeVerdict(layer.digest, (), None, AttestationMalformed(
            f"attestation {layer.digest} declares {layer.size} bytes (limit "
            f"{MAX_ENVELOPE_BYTES}); not fetched"), layer.predicate_type)
    blob = await client.get_blob(ref, layer.digest, max_size=layer.size)
    return verify_envelope(blob, keys, image_digest=digest, layer=layer.digest,
                           claimed_type=layer.predicate_type)


async def verify_image_attestations(client: RegistryClient, ref: ImageReference,
                                    keys: Mapping[str, PublicKey]) -> list[EnvelopeVerdict]:
    """Every stored envelope of ``ref.digest`` checked against ``keys`` (one verdict each; a
    malformed ``.att`` manifest is one malformed verdict)."""
    if ref.digest is None:
        raise AttestationMalformed(f"{ref} has no digest: attestations are verified by digest")
    try:
        layers = await attestation_refs(client, ref, ref.digest)
    except AttestationMalformed as exc:
        return [EnvelopeVerdict(attestation_tag(ref.digest), (), None, exc)]
    # One at a time: only the verdict (never the blob) outlives its iteration.
    return [await _verify_layer(client, ref, ref.digest, layer, keys) for layer in layers]


def _statement_type(envelope: bytes) -> str | None:
    try:
        return parse_statement(parse_envelope(envelope).payload).predicate_type
    except AdmissionError:
        return None


def _is_duplicate(blob: bytes, statement: bytes, key: PrivateKey) -> bool:
    try:
        envelope = parse_envelope(blob)
    except AdmissionError:
        return False
    return envelope.payload == statement and bool(
        envelope_signers(envelope, {"self": key.public_key()}))


async def attest_image(client: RegistryClient, ref: ImageReference, key: PrivateKey, *,
                       type_name: str, predicate: bytes, replace: bool = False,
                       now: datetime | None = None) -> tuple[str, bytes, bool]:
    """Attest ``ref`` (steps in the module doc); returns (digest, envelope, appended)."""
    uri = predicate_type_uri(type_name)
    digest = (await client.resolve(ref)).digest if ref.digest is None else ref.digest
    statement = build_statement(type_name, predicate,
                                repository=docker_reference(ref.registry, ref.repository),
                                digest=digest, timestamp=rfc3339(now or datetime.now(UTC)))
    envelope = sign_envelope(statement, lambda message: sign_bytes(key, message))
    stored = await read_attestations(client, ref, digest)
    layers = [SignatureLayer(blob, layer.annotations, DSSE_MEDIA_TYPE) for layer, blob in stored]
    if replace:
        layers = [x for x in layers if _statement_type(x.payload) != uri]
    elif any(_is_duplicate(x.payload, statement, key) for x in layers):
        return digest, envelope, False
    new = attestation_layer(envelope, uri)
    image = build_attestation_image([*layers, new])
    await client.put_blob(ref, new.payload)
    await client.put_blob(ref, image.config)
    await client.put_manifest(ref, image.manifest, OCI_MANIFEST_MEDIA_TYPE,
                              tag=attestation_tag(digest))
    return digest, envelope, True
