"""Runtime policies in Keylime's JSON format, and appraisal of IMA entries against them.

A policy made with ``keylime-policy create runtime`` loads unchanged::

    {"meta": {"version": 1, "generator": 1, "timestamp": "…"}, "release": 0,
     "digests": {"/usr/bin/bash": ["<hex>", …]}, "excludes": ["^/var/log/.*"],
     "keyrings": {".ima": ["<sha256 of the key>"]},
     "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": null},
     "ima-buf": {"<name>": ["<hex>"]}, "verification-keys": ""}

Appraisal of one authentic entry (the list already replayed to the quote), as Keylime does:

* ``ima``/``ima-ng``/``ima-sig``: a path matching an exclude pattern is skipped; otherwise the
  path must be in ``digests`` (``ima.path_not_allowed``) with the entry's digest among its values
  (``ima.digest_not_allowed``). A violation (content unknown) fails ``ima.violation`` unless the
  path is excluded. ``ima-sig`` signatures are not verified (``verification-keys`` is read but
  not used): a signed file still needs an allowed digest, which fails closed.
* ``ima-buf``: the entry's digest must be the hash of its buffer; a name in ``keyrings`` is a key
  measurement whose digest must be listed there (``ima.keyring``), unless the keyring is ignored
  (``ignored_keyrings``, ``"*"`` for all); any other name must be listed in ``ima-buf``
  (``ima.buf``). ``dm_policy`` is accepted but device-mapper measurements are never allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from attest.core.errors import AttestationError
from attest.core.ima.errors import (
    ImaBufNotAllowed,
    ImaDigestNotAllowed,
    ImaKeyNotAllowed,
    ImaPathNotAllowed,
    ImaViolation,
    RuntimePolicyInvalid,
)
from attest.core.ima.parse import DIGEST_SIZES, ZERO_SHA1, ImaEntry

POLICY_VERSION = 1
_KEYS = {"meta", "release", "digests", "excludes", "keyrings", "ima", "ima-buf",
         "verification-keys"}
_IMA_KEYS = {"ignored_keyrings", "log_hash_alg", "dm_policy"}
_HEX = re.compile(r"[0-9a-f]+")


def _digest_map(where: str, raw: Any) -> dict[str, frozenset[bytes]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RuntimePolicyInvalid(f"{where}: a mapping name -> [hex digests]")
    out: dict[str, frozenset[bytes]] = {}
    for name, values in raw.items():
        if not isinstance(name, str) or not isinstance(values, list):
            raise RuntimePolicyInvalid(f"{where}.{name}: a list of hex digests")
        out[name] = frozenset(_hex_digest(f"{where}.{name}", v) for v in values)
    return out


def _hex_digest(where: str, raw: Any) -> bytes:
    text = str(raw).lower()
    if not _HEX.fullmatch(text) or len(text) // 2 not in set(DIGEST_SIZES.values()) \
            or len(text) % 2:
        raise RuntimePolicyInvalid(f"{where}: {str(raw)[:80]!r} is not a hex digest")
    return bytes.fromhex(text)


def _excludes(raw: Any) -> re.Pattern[str] | None:
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise RuntimePolicyInvalid("excludes: a list of regular expressions")
    for pattern in raw:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RuntimePolicyInvalid(f"excludes: {pattern!r}: {exc}") from None
    # Keylime matches each pattern at the start of the path (re.match); so do we.
    return re.compile("|".join(f"(?:{p})" for p in raw))


def _ima_section(raw: Any) -> tuple[frozenset[str], str, Any]:
    raw = raw or {}
    if not isinstance(raw, Mapping) or set(raw) - _IMA_KEYS:
        raise RuntimePolicyInvalid(f"ima: a mapping with keys {sorted(_IMA_KEYS)}")
    ignored = raw.get("ignored_keyrings") or []
    if not isinstance(ignored, list) or not all(isinstance(k, str) for k in ignored):
        raise RuntimePolicyInvalid("ima.ignored_keyrings: a list of keyring names")
    alg = raw.get("log_hash_alg", "sha1")
    if alg not in ("sha1", "sha256", "sha384", "sha512"):
        raise RuntimePolicyInvalid(f"ima.log_hash_alg: {alg!r}")
    return frozenset(ignored), str(alg), raw.get("dm_policy")


def _meta(doc: Mapping[str, Any]) -> None:
    unknown = set(doc) - _KEYS
    if unknown:
        raise RuntimePolicyInvalid(f"unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
    meta = doc.get("meta")
    if not isinstance(meta, Mapping) or meta.get("version") != POLICY_VERSION:
        raise RuntimePolicyInvalid(f"meta.version: must be {POLICY_VERSION} (Keylime's current "
                                   "runtime-policy format)")
    if not isinstance(doc.get("verification-keys", ""), str):
        raise RuntimePolicyInvalid("verification-keys: a string")


@dataclass(frozen=True)
class RuntimePolicy:
    digests: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    excludes: re.Pattern[str] | None = None
    keyrings: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    ima_buf: Mapping[str, frozenset[bytes]] = field(default_factory=dict)
    ignored_keyrings: frozenset[str] = frozenset()
    log_hash_alg: str = "sha1"
    dm_policy: Any = None
    verification_keys: str = ""

    @classmethod
    def from_dict(cls, doc: Any) -> RuntimePolicy:
        if not isinstance(doc, Mapping):
            raise RuntimePolicyInvalid("runtime policy: a JSON object")
        _meta(doc)
        ignored, alg, dm = _ima_section(doc.get("ima"))
        return cls(digests=_digest_map("digests", doc.get("digests")),
                   excludes=_excludes(doc.get("excludes")),
                   keyrings=_digest_map("keyrings", doc.get("keyrings")),
                   ima_buf=_digest_map("ima-buf", doc.get("ima-buf")),
                   ignored_keyrings=ignored, log_hash_alg=alg, dm_policy=dm,
                   verification_keys=str(doc.get("verification-keys", "")))

    @classmethod
    def from_json(cls, text: str | bytes) -> RuntimePolicy:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise RuntimePolicyInvalid(f"not JSON: {exc}") from None
        return cls.from_dict(doc)

    def excluded(self, path: str) -> bool:
        return self.excludes is not None and self.excludes.match(path) is not None

    def appraise(self, entry: ImaEntry, index: int) -> AttestationError | None:
        """The failure for one authentic entry, or ``None`` when the policy allows it."""
        if entry.template == "ima-buf":
            return self._appraise_buf(entry, index)
        allowed = self.digests.get(entry.path)
        # Allowed first (the common case, one set lookup), then excluded: same outcome.
        if allowed is not None and entry.digest in allowed and not entry.violation:
            return None
        if self.excluded(entry.path):
            return None
        digest = f"{entry.digest_alg}:{entry.digest.hex()}"
        if entry.violation:
            return ImaViolation(index, entry.path, digest, "IMA recorded a violation")
        if allowed is None:
            return ImaPathNotAllowed(index, entry.path, digest,
                                     "path is not in the runtime policy")
        return ImaDigestNotAllowed(index, entry.path, digest,
                                   "digest is not allowed for this path")

    def _appraise_buf(self, entry: ImaEntry, index: int) -> AttestationError | None:
        digest = f"{entry.digest_alg}:{entry.digest.hex()}"
        if entry.violation or _hash_of(entry.digest_alg, entry.extra) != entry.digest:
            return ImaBufNotAllowed(index, entry.path, digest,
                                    "digest is not the hash of the measured buffer")
        if self._keyring_ignored(entry.path):
            return None
        if entry.path in self.keyrings:
            if entry.digest in self.keyrings[entry.path]:
                return None
            return ImaKeyNotAllowed(index, entry.path, digest,
                                    "key is not allowed on this keyring")
        if entry.digest in self.ima_buf.get(entry.path, ()):
            return None
        return ImaBufNotAllowed(index, entry.path, digest, "buffer is not allowed by ima-buf")

    def _keyring_ignored(self, name: str) -> bool:
        # "*" ignores every key measurement: any ima-buf name the ima-buf section does not list.
        return name in self.ignored_keyrings or ("*" in self.ignored_keyrings
                                                 and name not in self.ima_buf)


def _hash_of(alg: str, data: bytes) -> bytes | None:
    try:
        return hashlib.new(alg, data).digest()
    except ValueError:  # an algorithm this Python lacks: never equal to a digest
        return None


def appraise_entries(policy: RuntimePolicy, entries: Sequence[ImaEntry],
                     first_index: int = 0) -> list[AttestationError]:
    """Every entry's failure, in list order (``first_index`` numbers them in the full list)."""
    failures: list[AttestationError] = []
    digests = policy.digests
    for offset, entry in enumerate(entries):
        # The common case first, as RuntimePolicy.appraise decides it: an allowed digest of an
        # allowed path, not a violation, not an ima-buf entry.
        allowed = digests.get(entry.path)
        if allowed is not None and entry.digest in allowed and entry.template != "ima-buf" \
                and entry.template_hash != ZERO_SHA1:
            continue
        failure = policy.appraise(entry, first_index + offset)
        if failure is not None:
            failures.append(failure)
    return failures


def keylime_policy(digests: Mapping[str, Iterable[str]], *, excludes: Sequence[str] = (),
                   keyrings: Mapping[str, Iterable[str]] | None = None) -> dict[str, Any]:
    """A Keylime runtime-policy document (what ``keylime-policy create runtime`` writes)."""
    return {"meta": {"version": POLICY_VERSION, "generator": 1, "timestamp": ""},
            "release": 0, "digests": {p: sorted(v) for p, v in digests.items()},
            "excludes": list(excludes),
            "keyrings": {k: sorted(v) for k, v in (keyrings or {}).items()},
            "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
            "ima-buf": {}, "verification-keys": ""}
