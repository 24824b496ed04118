"""Image references: parse, validate and normalise ``[registry/]repository[:tag][@digest]``.

The grammar is Docker Distribution's (``distribution/reference``), normalised the way
``docker pull`` and the kubelet do, so that the webhook, the signer and the registry client all
agree on *which* image a string names. Parsing runs these steps, each failing with
:class:`InvalidReference`:

1. Split off ``@digest``; the digest must be ``sha256:`` and 64 lowercase hex characters. Other
   algorithms are rejected rather than passed through: every consumer here verifies sha256 only,
   and an unverifiable digest must not look pinned.
2. Split off ``:tag`` after the last ``/`` (a colon before it belongs to a registry port);
   tags are ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``.
3. Decide whether the first path component is a registry: it is when it contains ``.`` or ``:``,
   is ``localhost``, or has uppercase letters (Docker's rule). Otherwise the registry is
   ``docker.io``. ``index.docker.io`` and ``registry-1.docker.io`` are aliases of ``docker.io``.
4. Validate the repository: lowercase components joined by ``/``, separators ``.``, ``_``, ``__``
   or runs of ``-``; the full name at most 255 characters.
5. Normalise: registry hosts are lowercased (except a dotless, portless host that only its
   uppercase letters mark as one); single-component Docker Hub names gain ``library/``;
   a reference with neither tag nor digest gets the tag ``latest`` (what the kubelet pulls).

Pure: no I/O. ``str(ref)`` is the canonical form and parses back to an equal reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from admission.core.errors import AdmissionError

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255
# Refuse absurd inputs before running any regular expression over them.
MAX_REFERENCE_LENGTH = 4096

_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_ANY_DIGEST_RE = re.compile(
    r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Za-z=_-]{32,}")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOST_RE = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{{1,5}})?")


class InvalidReference(AdmissionError):
    """An image reference does not follow the reference grammar or uses an unsupported digest."""

    check = "reference.invalid"
    hint = ("Use registry/repository[:tag][@sha256:<64 lowercase hex>], lowercase repository "
            "names, e.g. registry.example.com/team/app:1.0.")


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:`` + 64 lowercase hex, else raise InvalidReference."""
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        shown = digest[:80] if isinstance(digest, str) else type(digest).__name__
        if isinstance(digest, str) and _ANY_DIGEST_RE.fullmatch(digest) and \
                not digest.startswith("sha256:"):
            raise InvalidReference(f"digest {shown!r}: only sha256 digests are supported")
        raise InvalidReference(f"digest {shown!r} is not sha256:<64 lowercase hex>")
    return digest


def validate_tag(tag: str) -> str:
    if not isinstance(tag, str) or _TAG_RE.fullmatch(tag) is None:
        raise InvalidReference(f"tag {str(tag)[:140]!r} is not a valid tag")
    return tag


def _validate_repository(repository: str, whole: str) -> None:
    for component in repository.split("/"):
        if _PATH_COMPONENT_RE.fullmatch(component) is None:
            lower = component.lower()
            if lower != component and _PATH_COMPONENT_RE.fullmatch(lower):
                raise InvalidReference(f"{whole!r}: repository name must be lowercase")
            raise InvalidReference(f"{whole!r}: invalid repository component {component[:80]!r}")


@dataclass(frozen=True)
class ImageReference:
    """A normalised reference; build it with :func:`parse_reference` (which validates)."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def is_pinned(self) -> bool:
        return self.digest is not None

    def with_digest(self, digest: str) -> ImageReference:
        """The same image pinned to ``digest`` (the tag is kept for display and identity)."""
        return replace(self, digest=validate_digest(digest))

    def with_tag(self, tag: str | None) -> ImageReference:
        """Same repository, another tag and no digest (a tag names another manifest)."""
        return replace(self, tag=validate_tag(tag) if tag is not None else None, digest=None)

    def by_digest_only(self) -> ImageReference:
        """``registry/repository@digest``: the form pinned into pods and signed payloads."""
        if self.digest is None:
            raise InvalidReference(f"{self}: no digest to pin to")
        return replace(self, tag=None)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def normalise_registry(host: str) -> str:
    """Lowercase a registry host and fold Docker Hub aliases into ``docker.io``.

    A single-label host recognised only by its uppercase letters (``Upper/app``) keeps its case:
    lowercased it would read as a Docker Hub namespace and the canonical form would not round-trip.
    """
    lowered = host.lower()
    if lowered in DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    if not any(c in lowered for c in ".:") and lowered != "localhost":
        return host
    return lowered


def parse_reference(text: str) -> ImageReference:
    """Parse and normalise an image reference (see the module docstring for the steps)."""
    _check_text(text)
    remainder, digest = _split_digest(text)                    # step 1
    remainder, tag = _split_tag(remainder, text)               # step 2
    registry, repository = _split_registry(remainder, text)    # step 3
    _validate_repository(repository, text[:80])                # step 4
    if registry == DOCKER_HUB and "/" not in repository:       # step 5
        repository = f"library/{repository}"
    if len(f"{registry}/{repository}") > MAX_NAME_LENGTH:
        raise InvalidReference(f"{text[:80]!r}: name longer than {MAX_NAME_LENGTH} characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageReference(registry=registry, repository=repository, tag=tag, digest=digest)


def _check_text(text: str) -> None:
    """A bounded, printable ASCII string without whitespace."""
    if not isinstance(text, str):
        raise InvalidReference(f"reference must be a string, got {type(text).__name__}")
    if not text or len(text) > MAX_REFERENCE_LENGTH:
        raise InvalidReference(f"reference {text[:80]!r} is empty or longer than "
                               f"{MAX_REFERENCE_LENGTH} characters")
    if text != text.strip() or any(c.isspace() or ord(c) < 0x20 for c in text):
        raise InvalidReference(f"reference {text[:80]!r} contains whitespace or control characters")
    if not text.isascii():
        raise InvalidReference(f"reference {text[:80]!r} contains non-ASCII characters")


def _split_digest(text: str) -> tuple[str, str | None]:
    """Step 1: ``name[:tag]`` and the digest after the one ``@``, if any."""
    remainder, at, digest_text = text.partition("@")
    if not at:
        return remainder, None
    if "@" in digest_text:
        raise InvalidReference(f"{text[:80]!r}: more than one '@'")
    return remainder, validate_digest(digest_text)


def _split_tag(remainder: str, text: str) -> tuple[str, str | None]:
    """Step 2: the tag, only after the last "/" so "host:5000/app" keeps its port."""
    tag: str | None = None
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], validate_tag(remainder[colon + 1:])
    if not remainder:
        raise InvalidReference(f"{text[:80]!r}: no repository name")
    return remainder, tag


def _split_registry(remainder: str, text: str) -> tuple[str, str]:
    """Step 3: the registry host (normalised) and the repository, or Docker Hub."""
    first, sep, rest = remainder.partition("/")
    is_host = bool(sep) and (any(c in first for c in ".:") or first == "localhost"
                             or first.lower() != first)
    if not is_host:
        return DOCKER_HUB, remainder
    if _HOST_RE.fullmatch(first) is None:
        raise InvalidReference(f"{text[:80]!r}: invalid registry host {first[:80]!r}")
    return normalise_registry(first), rest
