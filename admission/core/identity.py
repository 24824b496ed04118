"""Which image a signature vouches for: the policy's ``signedIdentity`` against the
``docker-reference`` a legacy signature's payload names.

A cosign signature signs ``critical.image.docker-manifest-digest`` *and*
``critical.identity.docker-reference``. cosign and policy-controller check only the digest
(cosign's ``SimpleClaimVerifier``); containers/image also checks the reference, with the rules
of its ``signedIdentity`` (policy.json), whose names are used here:

``matchRepository`` (the default, what µMEC always did)
    the signed reference names the image's repository; tag and digest are ignored (cosign
    writes ``Repository.Name()``, repository only). Bundles v0.3 sign the manifest digest and
    name no image: they are accepted, as before.
``matchExact``
    the signed reference carries a tag or a digest, and each one it carries equals the image's
    as written in the pod (``registry/app:1.0@sha256:…`` after the webhook pins it keeps its
    tag): ``app:1.0`` signed does not admit ``app:1.1`` even at the same digest. A bundle, or a
    repository-only reference (cosign's default), never matches.
``exactRepository`` (``dockerRepository: upstream/name``)
    for mirrors: the signed reference names *that* repository (tag and digest ignored), whatever
    the image's own name, e.g. ``mirror.local/library/nginx`` signed as
    ``docker.io/library/nginx``.
``ignore``
    the explicit opt-out: any reference is accepted, only the digest binds. The webhook logs a
    WARNING and returns an admission warning each time such a policy admits an image.

References are compared normalised (:func:`admission.core.reference.parse_reference`: Docker Hub
spellings unified, ``library/`` added); an unparsable signed reference matches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from admission.core.reference import ImageReference, InvalidReference, parse_reference

IdentityType = Literal["matchRepository", "matchExact", "exactRepository", "ignore"]
IDENTITY_TYPES: tuple[IdentityType, ...] = ("matchRepository", "matchExact",
                                            "exactRepository", "ignore")


def _parse(text: str) -> tuple[ImageReference, bool] | None:
    """The reference and whether it names a tag or digest (parse_reference adds ``latest``)."""
    try:
        ref = parse_reference(text)
    except InvalidReference:
        return None
    return ref, "@" in text or text.rfind(":") > text.rfind("/")


def _exact(signed: ImageReference, specific: bool, image: ImageReference) -> bool:
    """matchExact: a tag or digest is signed, and each one signed is the image's."""
    if not specific:
        return False
    if signed.digest is not None and signed.digest != image.digest:
        return False
    return signed.tag is None or signed.tag == image.tag


@dataclass(frozen=True)
class SignedIdentity:
    type: IdentityType = "matchRepository"
    docker_repository: str | None = None          # exactRepository only, normalised

    def accepts(self, image: str, signed: str | None) -> bool:
        """Whether a signature naming ``signed`` (None: a bundle) vouches for ``image``."""
        if self.type == "ignore":
            return True
        if signed is None:
            return self.type == "matchRepository"
        parsed, wanted = _parse(signed), _parse(image)
        if parsed is None or wanted is None:
            return False
        (ref, specific), (img, _) = parsed, wanted
        if self.type == "exactRepository":
            return ref.name == self.docker_repository
        if ref.name != img.name:
            return False
        return self.type == "matchRepository" or _exact(ref, specific, img)

    def describe(self) -> str:
        return f"exactRepository {self.docker_repository}" if self.docker_repository \
            else self.type


def parse_signed_identity(doc: Any, where: str) -> SignedIdentity:
    """``{type: …, dockerRepository: …}``; ``ValueError`` names what is wrong."""
    if doc is None:
        return SignedIdentity()
    if not isinstance(doc, dict) or set(doc) - {"type", "dockerRepository"}:
        raise ValueError(f"{where}: expected {{type, dockerRepository}}, got {doc!r}"[:200])
    kind, repository = doc.get("type"), doc.get("dockerRepository")
    if kind not in IDENTITY_TYPES:
        raise ValueError(f"{where}.type: one of {list(IDENTITY_TYPES)}, got {kind!r}")
    if (kind == "exactRepository") != (repository is not None):
        raise ValueError(f"{where}: dockerRepository is required with exactRepository, and "
                         f"only there")
    if repository is None:
        return SignedIdentity(kind)
    parsed = _parse(repository) if isinstance(repository, str) else None
    if parsed is None or parsed[1]:
        raise ValueError(f"{where}.dockerRepository: a repository without tag or digest, "
                         f"got {repository!r}")
    return SignedIdentity(kind, parsed[0].name)
