"""Typed failures of the OCI registry client.

Every error names the image and the step (``resolve``, ``get_manifest``, ``get_blob``, ``put_blob``,
``put_manifest``, ``referrers``) in ``detail`` so an admission message can say exactly what failed.
The webhook fails closed on all of them; :class:`RegistryUnavailable` (and its timeout subclass)
is the only family that may succeed on a later attempt.
"""

from __future__ import annotations

from admission.core.errors import AdmissionError


class RegistryError(AdmissionError):
    check = "registry"
    hint = "Check the registry address, the image name and the credentials."


class RegistryUnavailable(RegistryError):
    """Connection refused/reset, DNS failure, or 5xx/429 after every retry."""

    check = "registry.unavailable"
    hint = ("The registry could not be reached or kept failing; check that it is up and reachable "
            "from here (address, port, TLS vs plain HTTP), then retry.")


class RegistryTimeout(RegistryUnavailable):
    """The operation did not finish within the client's timeout (a hanging registry)."""

    check = "registry.timeout"
    hint = ("The registry did not answer in time; check its health and network latency, or raise "
            "the client timeout if the registry is known to be slow.")


class RegistryAuthFailed(RegistryError):
    check = "registry.auth"
    hint = ("The registry refused our credentials or we have none for it; add them to the docker "
            "config.json or the pod's imagePullSecrets, and check the account may pull/push.")


class ManifestNotFound(RegistryError):
    check = "registry.manifest_not_found"
    hint = "The repository, tag or digest does not exist in the registry; check the image name."


class BlobNotFound(RegistryError):
    check = "registry.blob_not_found"
    hint = "The registry does not have this blob; the image may be incomplete — push it again."


class DigestMismatch(RegistryError):
    """Bytes served for a digest do not hash to it, or the registry claimed another digest."""

    check = "registry.digest_mismatch"
    hint = ("The registry served content that does not match its digest: storage corruption or "
            "tampering. Do not use this image; investigate the registry.")


class ManifestTooLarge(RegistryError):
    check = "registry.manifest_too_large"
    hint = "Manifests are limited to 4 MiB (as in the OCI distribution spec); this is not an image."


class BlobTooLarge(RegistryError):
    check = "registry.blob_too_large"
    hint = "The blob exceeds the client's read limit; raise max_size only if it is expected."


class UnsupportedMediaType(RegistryError):
    check = "registry.media_type"
    hint = ("Only OCI and Docker v2 image manifests and indexes are supported; re-push the image "
            "with a current tool (Docker schema 1 is obsolete).")


class RegistryRequestRejected(RegistryError):
    """Any other 4xx: the request was wrong (bad name, invalid manifest, method not allowed)."""

    check = "registry.rejected"
    hint = "The registry rejected the request; its error message in the detail says why."


class MalformedManifest(RegistryError):
    check = "registry.manifest_malformed"
    hint = "The manifest is not valid JSON of the declared media type; re-push the image."
