"""``umec verify`` and the webhook's signature step: which keys signed exactly this digest.

:func:`verify_image_signatures` for a reference pinned to a digest:

1. Legacy: the ``sha256-<hex>.sig`` manifest of the digest in the image's repository, its
   simple-signing layers (at most :data:`admission.core.cosign.MAX_SIGNATURE_LAYERS`, each blob
   fetched with its descriptor size as the cap and checked against its digest), each verified
   against every trusted key (:func:`admission.core.verify.verify_legacy_with_keys`).
2. Bundles: the digest's referrers of artifact type bundle v0.3 (OCI 1.1 API or tag-schema
   fallback), each bundle verified key-based, and keyless when a trust root and identities
   are configured.
3. Results are de-duplicated per (digest, key, kind); failures explain the rest. No signature
   of either kind is :class:`admission.core.verify.NoSignatures`.

Registry failures (unreachable, auth, timeouts) are *raised*, not returned: they say nothing
about the signatures, and the caller must fail closed on them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from admission.core.cosign import BUNDLE_V03_MEDIA_TYPE, SignatureMalformed
from admission.core.errors import AdmissionError
from admission.core.reference import ImageReference
from admission.core.verify import (
    KeylessIdentity,
    NoSignatures,
    VerifiedSignature,
    parse_bundle,
    verify_bundle_keyless,
    verify_bundle_with_keys,
    verify_legacy_with_keys,
)
from admission.registry.client import RegistryClient
from admission.registry.errors import RegistryError
from admission.signing.stored import read_bundle, read_signature_layers
from keys import PublicKey


class ReferenceNotPinned(AdmissionError):
    check = "signature.unpinned"
    hint = "Verify by digest (IMAGE@sha256:...): a tag can move between check and use."


async def _legacy(client: RegistryClient, ref: ImageReference, digest: str,
                  keys: Mapping[str, PublicKey], repository: str | None
                  ) -> tuple[bool, list[VerifiedSignature], list[AdmissionError]]:
    try:
        layers = await read_signature_layers(client, ref, digest)
    except SignatureMalformed as exc:
        return True, [], [exc]
    results: list[VerifiedSignature] = []
    errors: list[AdmissionError] = []
    for layer in layers:
        ok, bad = verify_legacy_with_keys(layer, keys, image_digest=digest,
                                          repository=repository)
        results += ok
        errors += bad
    return bool(layers), results, errors


async def _bundles(client: RegistryClient, ref: ImageReference, digest: str,
                   keys: Mapping[str, PublicKey], trusted_root: bytes | None,
                   keyless: Sequence[KeylessIdentity]
                   ) -> tuple[bool, list[VerifiedSignature], list[AdmissionError]]:
    subject = ref.with_digest(digest)
    referrers = await client.referrers(subject, artifact_type=BUNDLE_V03_MEDIA_TYPE)
    if not referrers:
        return False, [], []
    manifest = (await client.get_manifest(subject)).raw  # Ed25519 and keyless need the bytes
    results: list[VerifiedSignature] = []
    errors: list[AdmissionError] = []
    for descriptor in referrers:
        try:
            raw = await read_bundle(client, subject, descriptor.digest)
            bundle = parse_bundle(raw)
            if bundle.certificate is not None:
                if trusted_root is None or not keyless:
                    errors.append(SignatureMalformed(
                        f"keyless bundle {descriptor.digest} but no trust root configured"))
                    continue
                results.append(verify_bundle_keyless(raw, manifest, image_digest=digest,
                                                     trusted_root=trusted_root,
                                                     identities=keyless))
                continue
        except AdmissionError as exc:
            if isinstance(exc, RegistryError):
                raise
            errors.append(exc)
            continue
        ok, bad = verify_bundle_with_keys(bundle, keys, image_digest=digest, manifest=manifest)
        results += ok
        errors += bad
    return True, results, errors


async def verify_image_signatures(client: RegistryClient, ref: ImageReference,
                                  keys: Mapping[str, PublicKey], *,
                                  trusted_root: bytes | None = None,
                                  keyless: Sequence[KeylessIdentity] = (),
                                  check_identity: bool = True, bundles: bool = True
                                  ) -> tuple[list[VerifiedSignature], list[AdmissionError]]:
    """Every key that produced a valid signature for exactly ``ref.digest``, and the failures.

    ``check_identity`` requires the legacy payload's docker-reference to name ``ref``'s
    repository; ``bundles=False`` skips the referrers lookup (one request fewer).
    """
    if ref.digest is None:
        return [], [ReferenceNotPinned(f"{ref} has no digest")]
    digest = ref.digest
    repository = ref.name if check_identity else None
    tasks = [_legacy(client, ref, digest, keys, repository)]
    if bundles:
        tasks.append(_bundles(client, ref, digest, keys, trusted_root, keyless))
    outcomes = await asyncio.gather(*tasks)
    results: list[VerifiedSignature] = []
    errors: list[AdmissionError] = []
    seen: set[tuple[str, str, str]] = set()
    found_any = False
    for found, ok, bad in outcomes:
        found_any = found_any or found
        for item in ok:
            if (item.digest, item.key_id, item.kind) not in seen:
                seen.add((item.digest, item.key_id, item.kind))
                results.append(item)
        errors += bad
    if not found_any:
        errors.append(NoSignatures(f"{ref}: no .sig signatures"
                                   f"{' and no bundle referrers' if bundles else ''}"))
    return results, errors
