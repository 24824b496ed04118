"""Async OCI distribution v2 client: resolve, fetch and push manifests and blobs, and referrers.

What each operation guarantees (the request layer — auth, retries, caps, one connection pool — is
:mod:`admission.registry.transport`; the manifest checks are :mod:`admission.registry.manifests`):

``resolve(ref)``
    ``HEAD /v2/<name>/manifests/<tag|digest>`` with Accept for the four manifest/index types →
    a :class:`Descriptor` with the registry's digest. HEAD is cheap and not rate-limited on Docker
    Hub; when the registry omits ``Docker-Content-Digest`` we GET and hash instead. A by-digest
    reference whose answer names another digest → ``DigestMismatch``.
``get_manifest(ref)``
    GET, ≤ 4 MiB, ``sha256(raw)`` checked against the requested digest and the announced one.
``get_blob(ref, digest)``
    GET ``/blobs/<digest>``, read capped (default 64 MiB), hashed → ``DigestMismatch`` on mismatch.
``put_blob`` / ``put_manifest``
    Monolithic upload (POST then PUT ``?digest=``), skipped when the blob exists; the registry's
    ``Docker-Content-Digest`` must equal what we computed.
``referrers(ref, artifact_type)``
    OCI 1.1 ``GET /v2/<name>/referrers/<digest>``; if the registry does not have the API (404, as
    docker-registry 2.8) the index tagged ``sha256-<hex>`` (the tag schema fallback). Filtered by
    ``artifactType`` on our side too, since a registry may ignore the filter.
``push_referrer`` / ``add_referrer_fallback``
    Push a manifest with a ``subject`` and, unless the registry confirms with ``OCI-Subject`` that
    it indexes referrers itself, add its descriptor to the fallback index (read-modify-write; the
    OCI spec accepts the race between concurrent writers, and adding is idempotent by digest).
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import httpx

from admission.core.reference import ImageReference, InvalidReference, validate_digest
from admission.registry.errors import (
    BlobNotFound,
    BlobTooLarge,
    DigestMismatch,
    MalformedManifest,
    ManifestNotFound,
    ManifestTooLarge,
    RegistryRequestRejected,
    UnsupportedMediaType,
)
from admission.registry.manifests import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    Descriptor,
    Manifest,
    canonical_json,
    empty_index,
    parse_manifest,
    sha256_digest,
)
from admission.registry.transport import Answer, RegistryHttp

MANIFEST_ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
DEFAULT_MAX_BLOB_SIZE = 64 * 1024 * 1024
MAX_REFERRER_PAGES = 16


def fallback_tag(digest: str) -> str:
    """The OCI 1.1 referrers tag schema: ``sha256:<hex>`` → ``sha256-<hex>``."""
    return validate_digest(digest).replace(":", "-", 1)


def _rejected(answer: Answer, where: str) -> RegistryRequestRejected:
    text = answer.body[:200].decode("utf-8", "replace").strip()
    return RegistryRequestRejected(f"{where}: HTTP {answer.status} {text}")


class RegistryClient(RegistryHttp):
    """One client per process (or per request burst): connections are pooled and tokens cached."""

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    # -- manifests -------------------------------------------------------------------------------

    async def resolve(self, ref: ImageReference) -> Descriptor:
        where = f"resolve {ref}"
        async with self.deadline(where):
            answer = await self.send("HEAD", ref, self.url(ref, f"manifests/{ref.api_reference}"),
                                     where=where, headers={"Accept": MANIFEST_ACCEPT})
            if answer.status == 404:
                raise ManifestNotFound(f"{where}: no such manifest")
            if answer.status != 200:
                raise _rejected(answer, where)
            digest = answer.headers.get("Docker-Content-Digest", "")
            media_type = answer.headers.get("Content-Type", "").split(";")[0].strip()
            size = answer.headers.get("Content-Length", "")
            try:
                validate_digest(digest)
                trusted_head = media_type in MANIFEST_MEDIA_TYPES and size.isdigit()
            except InvalidReference:
                trusted_head = False
        if not trusted_head:
            manifest = await self.get_manifest(ref)
            return Descriptor(manifest.media_type, manifest.digest, len(manifest.raw))
        if ref.digest is not None and digest != ref.digest:
            raise DigestMismatch(f"{where}: registry answered digest {digest}")
        if int(size) > MAX_MANIFEST_SIZE:
            raise ManifestTooLarge(f"{where}: manifest of {size} bytes")
        return Descriptor(media_type=media_type, digest=digest, size=int(size))

    async def get_manifest(self, ref: ImageReference) -> Manifest:
        where = f"get_manifest {ref}"
        async with self.deadline(where):
            answer = await self.send("GET", ref, self.url(ref, f"manifests/{ref.api_reference}"),
                                     where=where, headers={"Accept": MANIFEST_ACCEPT},
                                     cap=MAX_MANIFEST_SIZE, too_large=ManifestTooLarge)
        if answer.status == 404:
            raise ManifestNotFound(f"{where}: no such manifest")
        if answer.status != 200:
            raise _rejected(answer, where)
        return parse_manifest(answer.body, content_type=answer.headers.get("Content-Type"),
                              expected_digest=ref.digest,
                              announced_digest=answer.headers.get("Docker-Content-Digest"),
                              where=where)

    async def put_manifest(self, ref: ImageReference, raw: bytes, media_type: str,
                           tag: str | None = None) -> str:
        """Push ``raw`` under ``tag``, or by its digest when ``tag`` is None; returns the digest.

        Only ``ref.registry``/``ref.repository`` are used: the target is explicit so a caller
        never retags by accident because the reference it holds happens to carry a tag.
        """
        digest, _ = await self._put_manifest(ref, raw, media_type, tag)
        return digest

    async def _put_manifest(self, ref: ImageReference, raw: bytes, media_type: str,
                            tag: str | None) -> tuple[str, httpx.Headers]:
        digest = sha256_digest(raw)
        target = ref.with_tag(tag) if tag is not None else ref.with_digest(digest)
        where = f"put_manifest {target}"
        if len(raw) > MAX_MANIFEST_SIZE:
            raise ManifestTooLarge(f"{where}: {len(raw)} bytes")
        if media_type not in MANIFEST_MEDIA_TYPES:
            raise UnsupportedMediaType(f"{where}: {media_type[:100]!r}")
        async with self.deadline(where):
            answer = await self.send("PUT", ref, self.url(ref, f"manifests/{tag or digest}"),
                                     where=where, push=True, content=raw,
                                     headers={"Content-Type": media_type})
        if answer.status not in (200, 201):
            raise _rejected(answer, where)
        announced = answer.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatch(f"{where}: registry stored {announced[:80]}, we sent {digest}")
        return digest, answer.headers

    async def list_tags(self, ref: ImageReference) -> list[str]:
        where = f"list_tags {ref.name}"
        async with self.deadline(where):
            answer = await self.send("GET", ref, self.url(ref, "tags/list"), where=where,
                                     cap=MAX_MANIFEST_SIZE)
        if answer.status == 404:
            raise ManifestNotFound(f"{where}: no such repository")
        if answer.status != 200:
            raise _rejected(answer, where)
        try:
            tags = json.loads(answer.body).get("tags") or []
        except (ValueError, AttributeError):
            raise MalformedManifest(f"{where}: tag list is not a JSON object") from None
        return [t for t in tags if isinstance(t, str)]

    # -- blobs -----------------------------------------------------------------------------------

    async def get_blob(self, ref: ImageReference, digest: str, *,
                       max_size: int = DEFAULT_MAX_BLOB_SIZE) -> bytes:
        where = f"get_blob {ref.name}@{digest[:80]}"
        try:
            validate_digest(digest)
        except InvalidReference as exc:
            raise DigestMismatch(f"{where}: {exc.detail}") from None
        async with self.deadline(where):
            answer = await self.send("GET", ref, self.url(ref, f"blobs/{digest}"), where=where,
                                     cap=max_size, too_large=BlobTooLarge)
        if answer.status == 404:
            raise BlobNotFound(f"{where}: no such blob")
        if answer.status != 200:
            raise _rejected(answer, where)
        actual = sha256_digest(answer.body)
        if actual != digest:
            raise DigestMismatch(f"{where}: content hashes to {actual}")
        return answer.body

    async def blob_exists(self, ref: ImageReference, digest: str, *, push: bool = False) -> bool:
        where = f"blob_exists {ref.name}@{digest}"
        async with self.deadline(where):
            answer = await self.send("HEAD", ref, self.url(ref, f"blobs/{validate_digest(digest)}"),
                                     where=where, push=push)
        if answer.status in (200, 404):
            return answer.status == 200
        raise _rejected(answer, where)

    async def put_blob(self, ref: ImageReference, data: bytes) -> str:
        digest = sha256_digest(data)
        if await self.blob_exists(ref, digest, push=True):
            return digest
        where = f"put_blob {ref.name}@{digest}"
        async with self.deadline(where):
            started = await self.send("POST", ref, self.url(ref, "blobs/uploads/"), where=where,
                                      push=True)
            location = started.headers.get("Location")
            if started.status != 202 or not location:
                raise _rejected(started, where)
            upload = started.url.join(location).copy_merge_params({"digest": digest})
            done = await self.send("PUT", ref, upload, where=where, push=True, content=data,
                                   headers={"Content-Type": "application/octet-stream"})
        if done.status not in (201, 204):
            raise _rejected(done, where)
        announced = done.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatch(f"{where}: registry stored {announced[:80]}")
        return digest

    # -- referrers -------------------------------------------------------------------------------

    async def _pinned(self, ref: ImageReference) -> ImageReference:
        return ref if ref.digest is not None else ref.with_digest((await self.resolve(ref)).digest)

    async def referrers(self, ref: ImageReference,
                        artifact_type: str | None = None) -> list[Descriptor]:
        subject = await self._pinned(ref)
        assert subject.digest is not None
        where = f"referrers {subject}"
        url: httpx.URL | None = self.url(subject, f"referrers/{subject.digest}")
        if artifact_type is not None and url is not None:
            url = url.copy_merge_params({"artifactType": artifact_type})
        found: list[Descriptor] = []
        pages = 0
        while url is not None and pages < MAX_REFERRER_PAGES:
            pages += 1
            async with self.deadline(where):
                answer = await self.send("GET", subject, url, where=where,
                                         headers={"Accept": OCI_INDEX}, cap=MAX_MANIFEST_SIZE,
                                         too_large=ManifestTooLarge)
            if answer.status in (404, 405, 501) and pages == 1:
                found = await self._fallback_referrers(subject)
                break
            if answer.status != 200:
                raise _rejected(answer, where)
            index = parse_manifest(answer.body, content_type=OCI_INDEX, expected_digest=None,
                                   announced_digest=None, where=where)
            found.extend(index.manifests())
            url = _next_link(answer)
        if artifact_type is not None:
            found = [d for d in found if d.artifact_type == artifact_type]
        return found

    async def _fallback_referrers(self, subject: ImageReference) -> list[Descriptor]:
        assert subject.digest is not None
        try:
            index = await self.get_manifest(subject.with_tag(fallback_tag(subject.digest)))
        except ManifestNotFound:
            return []
        if index.media_type not in INDEX_MEDIA_TYPES:
            raise MalformedManifest(f"referrers {subject}: fallback tag is not an index")
        return index.manifests()

    async def add_referrer_fallback(self, subject: ImageReference, descriptor: Descriptor) -> str:
        """Add ``descriptor`` to the ``sha256-<hex>`` index of ``subject``; returns its digest."""
        subject = await self._pinned(subject)
        assert subject.digest is not None
        tag = fallback_tag(subject.digest)
        try:
            current = await self.get_manifest(subject.with_tag(tag))
            if current.media_type not in INDEX_MEDIA_TYPES:
                raise MalformedManifest(f"referrers {subject}: fallback tag is not an index")
            doc: dict[str, Any] = dict(current.json)
            if any(d.digest == descriptor.digest for d in current.manifests()):
                return current.digest
        except ManifestNotFound:
            doc = empty_index()
        doc["manifests"] = [*doc.get("manifests", []), descriptor.to_json()]
        return await self.put_manifest(subject, canonical_json(doc), OCI_INDEX, tag=tag)

    async def push_referrer(self, subject: ImageReference, raw: bytes,
                            media_type: str) -> Descriptor:
        """Push a manifest whose ``subject`` is ``subject`` and make it listable as a referrer."""
        subject = await self._pinned(subject)
        manifest = parse_manifest(raw, content_type=media_type, expected_digest=None,
                                  announced_digest=None, where=f"push_referrer {subject}")
        sub = manifest.subject()
        if sub is None or sub.digest != subject.digest:
            raise MalformedManifest(f"push_referrer {subject}: manifest subject is "
                                    f"{sub.digest if sub else None}, not {subject.digest}")
        annotations = manifest.json.get("annotations") or {}
        descriptor = Descriptor(media_type=media_type, digest=manifest.digest, size=len(raw),
                                annotations=dict(annotations),
                                artifact_type=manifest.artifact_type)
        _, headers = await self._put_manifest(subject, raw, media_type, None)
        if headers.get("OCI-Subject") != subject.digest:
            await self.add_referrer_fallback(subject, descriptor)
        return descriptor


def _next_link(answer: Answer) -> httpx.URL | None:
    """The ``Link: <…>; rel="next"`` of a paginated referrers answer, resolved against the URL."""
    link = answer.headers.get("Link", "")
    if 'rel="next"' not in link or "<" not in link or ">" not in link:
        return None
    return answer.url.join(link[link.index("<") + 1:link.index(">")])
