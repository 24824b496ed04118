"""``umec verify`` and the webhook's signature step: which keys signed exactly this digest.

:func:`verify_image_signatures` for a reference pinned to a digest:

1. Legacy: the ``sha256-<hex>.sig`` manifest of the digest in the image's repository, its
   simple-signing layers (at most :data:`admission.core.cosign.MAX_SIGNATURE_LAYERS`, each blob
   fetched with its descriptor size as the cap and checked against its digest), each verified
   against every trusted key (:func:`admission.core.verify.verify_legacy_with_keys`) and, when
   it carries a Fulcio certificate, against every keyless authority
   (:func:`admission.core.keyless.verify_legacy_keyless`: offline, the authority's trust root;
   with ``check_identity``, its docker-reference must name the repository, as for keys).
2. Bundles: the digest's referrers of artifact type bundle v0.3 (OCI 1.1 API or tag-schema
   fallback), each bundle verified key-based, and keyless against each keyless authority's
   trust root and identities.
3. Results are de-duplicated per (digest, key, kind, signed reference); failures explain the
   rest. No signature
   of either kind is :class:`admission.core.verify.NoSignatures`.

Registry failures (unreachable, auth, timeouts) are *raised*, not returned: they say nothing
about the signatures, and the caller must fail closed on them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import replace

from admission.core.cosign import (
    BUNDLE_V03_MEDIA_TYPE,
    CERTIFICATE_ANNOTATION,
    SignatureLayer,
    SignatureMalformed,
)
from admission.core.errors import AdmissionError
from admission.core.keyless import KeylessAuthority, parse_trusted_root, verify_legacy_keyless
from admission.core.reference import ImageReference
from admission.core.verify import (
    IdentityMismatch,
    KeylessIdentity,
    KeylessVerificationFailed,
    NoSignatures,
    VerifiedSignature,
    parse_bundle,
    repository_of,
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


def scoped(signature: VerifiedSignature, authority: KeylessAuthority) -> VerifiedSignature:
    """``signature`` (made keyless, verified under ``authority``) with the signer id a policy
    counts: the identity's id under the authority's trust root
    (:meth:`admission.core.verify.KeylessIdentity.signer_id`). Two policies naming one issuer
    and subject under different roots are two signers: a tenant's own CA cannot sign for the
    cluster's identity."""
    for wanted in authority.identities:
        if wanted.key_id == signature.key_id:
            return replace(signature, key_id=wanted.signer_id(authority.root.digest))
    raise KeylessVerificationFailed(f"{signature.key_id} is not an identity of the authority "
                                    f"that verified it")  # fail closed: never unscoped


def _keyless_layer(layer: SignatureLayer, authorities: Sequence[KeylessAuthority], digest: str,
                   repository: str | None = None
                   ) -> tuple[list[VerifiedSignature], list[AdmissionError]]:
    """A layer with a Fulcio certificate, against every keyless authority; with
    ``repository``, its docker-reference must name it too (as for keys: step 5 of
    :mod:`admission.core.verify`)."""
    results: list[VerifiedSignature] = []
    errors: list[AdmissionError] = []
    for authority in authorities:
        try:
            result = verify_legacy_keyless(layer, authority, image_digest=digest)
            if repository is not None and (result.reference is None or repository_of(
                    result.reference) != repository_of(repository)):
                raise IdentityMismatch(f"signature names {result.reference!r}, the image is "
                                       f"in {repository!r}")
            results.append(scoped(result, authority))
        except AdmissionError as exc:
            errors.append(exc)
    return results, ([] if results else errors)


async def _legacy(client: RegistryClient, ref: ImageReference, digest: str,
                  keys: Mapping[str, PublicKey], repository: str | None,
                  keyless: Sequence[KeylessAuthority] = ()
                  ) -> tuple[bool, list[VerifiedSignature], list[AdmissionError]]:
    try:
        layers = await read_signature_layers(client, ref, digest)
    except SignatureMalformed as exc:
        return True, [], [exc]
    results: list[VerifiedSignature] = []
    errors: list[AdmissionError] = []
    for layer in layers:
        ok: list[VerifiedSignature] = []
        bad: list[AdmissionError] = []
        if keyless and CERTIFICATE_ANNOTATION in layer.annotations:
            ok, bad = _keyless_layer(layer, keyless, digest, repository)
        if not ok and (keys or not bad):  # a key too (`cosign sign --key --certificate`)
            ok, more = verify_legacy_with_keys(layer, keys, image_digest=digest,
                                               repository=repository)
            bad = [] if ok else [*bad, *more]
        results += ok
        errors += bad
    return bool(layers), results, errors


def _bundle_keyless(raw: bytes, manifest: bytes, digest: str,
                    keyless: Sequence[KeylessAuthority]) -> VerifiedSignature:
    """A keyless bundle against each authority's root and identities: the first that accepts."""
    if not keyless:
        raise SignatureMalformed("keyless bundle but no trust root configured")
    failure: AdmissionError | None = None
    for authority in keyless:
        try:
            return scoped(verify_bundle_keyless(raw, manifest, image_digest=digest,
                                                trusted_root=authority.root.raw,
                                                identities=authority.identities), authority)
        except AdmissionError as exc:
            failure = exc
    assert failure is not None
    raise failure


def _named(exc: AdmissionError, bundle_digest: str) -> AdmissionError:
    """``exc`` naming the bundle (its referrer manifest's digest) it is about, so that a
    failure line says which signature failed."""
    if bundle_digest in exc.detail:
        return exc
    return type(exc)(f"bundle {bundle_digest}: {exc.detail}")


async def _bundles(client: RegistryClient, ref: ImageReference, digest: str,
                   keys: Mapping[str, PublicKey], keyless: Sequence[KeylessAuthority]
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
                results.append(_bundle_keyless(raw, manifest, digest, keyless))
                continue
        except AdmissionError as exc:
            if isinstance(exc, RegistryError):
                raise
            errors.append(_named(exc, descriptor.digest))
            continue
        ok, bad = verify_bundle_with_keys(bundle, keys, image_digest=digest, manifest=manifest)
        results += ok
        errors += [_named(e, descriptor.digest) for e in bad]
    return True, results, errors


async def verify_image_signatures(client: RegistryClient, ref: ImageReference,
                                  keys: Mapping[str, PublicKey], *,
                                  trusted_root: bytes | None = None,
                                  keyless: Sequence[KeylessIdentity] = (),
                                  authorities: Sequence[KeylessAuthority] = (),
                                  check_identity: bool = True, bundles: bool = True
                                  ) -> tuple[list[VerifiedSignature], list[AdmissionError]]:
    """Every key that produced a valid signature for exactly ``ref.digest``, and the failures.

    Keyless signers: each of ``authorities`` (a trust root and its identities), plus
    ``trusted_root`` with ``keyless`` when given. ``check_identity`` requires the legacy
    payload's docker-reference to name ``ref``'s repository (the webhook passes False: each
    policy's signedIdentity judges the references); ``bundles=False`` skips the referrers
    lookup (one request fewer).
    """
    if ref.digest is None:
        return [], [ReferenceNotPinned(f"{ref} has no digest")]
    digest = ref.digest
    repository = ref.name if check_identity else None
    if trusted_root is not None and keyless:
        authorities = [*authorities, KeylessAuthority(parse_trusted_root(trusted_root),
                                                      tuple(keyless))]
    tasks = [_legacy(client, ref, digest, keys, repository, authorities)]
    if bundles:
        tasks.append(_bundles(client, ref, digest, keys, authorities))
    outcomes = await asyncio.gather(*tasks)
    results: list[VerifiedSignature] = []
    errors: list[AdmissionError] = []
    seen: set[tuple[str, str, str, str | None]] = set()
    found_any = False
    for found, ok, bad in outcomes:
        found_any = found_any or found
        for item in ok:
            # The signed reference is part of it: one key may sign the upstream and the
            # mirror name, and a policy's signedIdentity may accept only one of them.
            if (item.digest, item.key_id, item.kind, item.reference) not in seen:
                seen.add((item.digest, item.key_id, item.kind, item.reference))
                results.append(item)
        errors += bad
    if not found_any:
        errors.append(NoSignatures(f"{ref}: no .sig signatures"
                                   f"{' and no bundle referrers' if bundles else ''}"))
    return results, errors
