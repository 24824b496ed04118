"""``umec sign``: sign images in cosign's legacy format (and optionally a bundle) in a registry.

:func:`sign_image` for ``IMAGE[:TAG|@DIGEST]``:

1. Fetch the manifest (by digest if pinned; a tag is resolved once, here, and everything after
   uses the digest, so a tag moved mid-run cannot get the wrong image signed).
2. Targets: that digest; with ``recursive=True`` and an index, also every child manifest
   (arm64 and armv7 nodes pull the children, and policy checks the digest they pull).
3. Per target: the simple-signing payload (:func:`admission.core.cosign.simple_signing_payload`),
   signed with the key; the existing ``sha256-<hex>.sig`` manifest is read, its layers fetched
   (digest-checked), and the new layer appended unless a duplicate is there -- same payload and
   annotations, signature valid under *this* key (ECDSA signatures are randomised, so re-running
   CI would otherwise grow the manifest forever). Payload blob, config blob, then the manifest
   under the ``.sig`` tag.
4. ``bundle=True``: a bundle v0.3 over the target manifest pushed as an OCI 1.1 referrer
   (subject = target, artifactType = bundle media type; the client maintains the tag-schema
   fallback index for registries without the referrers API), unless a bundle by this key
   already exists for the target.

Key loading (:func:`load_signing_key_from`): a file path, or ``env://VAR`` for a CI secret
holding the PEM text; cosign's encrypted keys use ``COSIGN_PASSWORD``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from admission.core.cosign import (
    BUNDLE_V03_MEDIA_TYPE,
    OCI_EMPTY_BLOB,
    OCI_MANIFEST_MEDIA_TYPE,
    SIGNATURE_ANNOTATION,
    SignatureLayer,
    build_bundle,
    build_bundle_artifact_manifest,
    build_signature_image,
    docker_reference,
    new_signature_layer,
    signature_tag,
    simple_signing_payload,
)
from admission.core.errors import AdmissionError
from admission.core.keys_cosign import (
    SigningKeyInvalid,
    key_hint,
    load_signing_key,
    password_from_env,
)
from admission.core.reference import ImageReference
from admission.core.verify import parse_bundle, verify_bundle_with_key, verify_legacy
from admission.registry.client import RegistryClient
from admission.registry.manifests import Manifest
from admission.signing.stored import read_bundle, read_signature_layers
from keys import PrivateKey

ENV_PREFIX = "env://"


def load_signing_key_from(source: str, env: Mapping[str, str] | None = None) -> PrivateKey:
    """A private key from a file or ``env://VAR``; password from ``COSIGN_PASSWORD``."""
    environ = os.environ if env is None else env
    if source.startswith(ENV_PREFIX):
        name = source[len(ENV_PREFIX):]
        text = environ.get(name)
        if not text:
            raise SigningKeyInvalid(f"environment variable {name} is empty or unset")
        return load_signing_key(text.encode(), password_from_env(environ), where=f"${name}")
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise SigningKeyInvalid(f"{source}: {exc.strerror or exc}") from None
    return load_signing_key(data, password_from_env(environ), where=source)


def sign_bytes(key: PrivateKey, data: bytes, *, prehashed: bool = False) -> bytes:
    """cosign's algorithm per key type; ``prehashed``: ``data`` is already a SHA-256 digest."""
    algorithm: hashes.HashAlgorithm | Prehashed = (Prehashed(hashes.SHA256()) if prehashed
                                                   else hashes.SHA256())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(algorithm))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), algorithm)
    if prehashed:
        raise SigningKeyInvalid("Ed25519 cannot sign a pre-hashed digest")
    return key.sign(data)


def _is_duplicate(existing: SignatureLayer, new: SignatureLayer, key: PrivateKey,
                  digest: str) -> bool:
    def others(layer: SignatureLayer) -> dict[str, str]:
        return {k: v for k, v in layer.annotations.items() if k != SIGNATURE_ANNOTATION}

    if existing.payload != new.payload or others(existing) != others(new):
        return False
    try:
        verify_legacy(existing, key.public_key(), image_digest=digest, repository=None)
    except AdmissionError:
        return False
    return True


async def _sign_legacy(client: RegistryClient, ref: ImageReference, key: PrivateKey,
                       digest: str, annotations: Mapping[str, str] | None) -> bool:
    payload = simple_signing_payload(docker_reference(ref.registry, ref.repository), digest,
                                     annotations)
    layer = new_signature_layer(payload, sign_bytes(key, payload))
    existing = await read_signature_layers(client, ref, digest)
    if any(_is_duplicate(old, layer, key, digest) for old in existing):
        return False
    image = build_signature_image([*existing, layer])
    await client.put_blob(ref, layer.payload)
    await client.put_blob(ref, image.config)
    await client.put_manifest(ref, image.manifest, OCI_MANIFEST_MEDIA_TYPE,
                              tag=signature_tag(digest))
    return True


async def _has_bundle_by(client: RegistryClient, subject: ImageReference, key: PrivateKey,
                         manifest: Manifest) -> bool:
    assert subject.digest is not None
    for descriptor in await client.referrers(subject, artifact_type=BUNDLE_V03_MEDIA_TYPE):
        try:
            bundle = parse_bundle(await read_bundle(client, subject, descriptor.digest))
            verify_bundle_with_key(bundle, key.public_key(), image_digest=subject.digest,
                                   manifest=manifest.raw)
        except AdmissionError:
            continue
        return True
    return False


async def _sign_bundle(client: RegistryClient, ref: ImageReference, key: PrivateKey,
                       manifest: Manifest, created: str | None) -> bool:
    subject = ref.with_digest(manifest.digest)
    if await _has_bundle_by(client, subject, key, manifest):
        return False
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = sign_bytes(key, manifest.raw)
    else:
        signature = sign_bytes(key, bytes.fromhex(manifest.digest[7:]), prehashed=True)
    bundle = build_bundle(manifest.digest, signature, key_hint(key))
    artifact = build_bundle_artifact_manifest(bundle, manifest.media_type, manifest.digest,
                                              len(manifest.raw), created)
    await client.put_blob(ref, OCI_EMPTY_BLOB)
    await client.put_blob(ref, bundle)
    await client.push_referrer(subject, artifact.manifest, OCI_MANIFEST_MEDIA_TYPE)
    return True


async def sign_image(client: RegistryClient, ref: ImageReference, private_key: PrivateKey, *,
                     recursive: bool = False, bundle: bool = False,
                     annotations: Mapping[str, str] | None = None,
                     created: str | None = None) -> list[str]:
    """Sign ``ref`` (steps in the module doc); returns every digest signed, top first.

    ``annotations`` go to the payload's ``optional`` (None -> ``null``, as cosign without
    ``-a``); ``created`` (RFC 3339) is recorded on bundle referrers when given.
    """
    top = await client.get_manifest(ref)
    targets = [top]
    if recursive and top.is_index:
        for child in top.manifests():
            targets.append(await client.get_manifest(ref.with_digest(child.digest)))
    for manifest in targets:
        await _sign_legacy(client, ref, private_key, manifest.digest, annotations)
        if bundle:
            await _sign_bundle(client, ref, private_key, manifest, created)
    return [m.digest for m in targets]
