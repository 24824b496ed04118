"""A signing key ring: one active key, retiring keys, the JWKS, rotation with overlap.

Rotation (:meth:`KeyRing.rotate`):

1. the new key becomes *active*: every token signed from now on carries its ``kid``;
2. the previous active key becomes *retiring* with ``not_after = now + overlap``: it signs nothing
   more but stays in the JWKS so tokens it signed keep verifying until they expire. Choose
   ``overlap`` >= the longest token lifetime plus the verifiers' JWKS cache time;
3. :meth:`KeyRing.jwks` publishes the active key and every retiring key with ``retired_at -
   RETIRED_AT_TOLERANCE <= now < not_after``; :meth:`KeyRing.prune` forgets those past
   ``not_after`` (their tokens can no longer verify).

A retiring key dated ``retired_at`` in the future (more than the tolerance) is not published:
the clock that rotated it ran ahead, or the clock reading it was stepped back since. Either way
its overlap cannot be placed on this clock, and publishing it until ``not_after`` kept a key an
operator rotated away (say, because it leaked) verifying for the length of the step. Rings
written before ``retired_at`` existed keep the ``not_after`` rule alone.

``kid`` is always the RFC 7638 thumbprint of the public key, so it is stable, unique per key and
checkable: a reloaded ring recomputes every thumbprint and refuses a file that does not match its
``kid``.

On disk (:meth:`KeyRing.save` / :meth:`KeyRing.load`), a directory (mode 0700) with one private
key per member, ``<kid>.pem`` (PKCS#8, 0600, optionally encrypted), and ``index.json`` -- format
tag, active kid, and per key ``kid``, ``alg``, ``not_after`` and ``retired_at`` (ISO 8601 UTC or
null). Key files are
written first, then the index atomically, then key files no longer indexed are deleted: a crash at
any point leaves an index whose every file exists. Times are always passed in (timezone-aware
datetimes); nothing here reads the clock.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keys.errors import KeyFileMissing, KeyRingError, KeysError
from keys.jwk import key_thumbprint, public_jwk
from keys.kinds import (
    KeyKind,
    PrivateKey,
    PublicKey,
    allowed_algorithms,
    default_algorithm,
    generate_private_key,
)
from keys.storage import Passphrase, atomic_write, load_private_key, save_private_key

INDEX_NAME = "index.json"
INDEX_FORMAT = "umec-keyring/1"
_KID = re.compile(r"[A-Za-z0-9_-]{43}")  # a base64url SHA-256 thumbprint; also a safe file name
# How far a retiring key's ``retired_at`` may lie after a reader's now (replicas' clocks differ by
# this much at most) before the reader withholds it as dated by a clock that was off.
RETIRED_AT_TOLERANCE = timedelta(seconds=60)


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("key ring times must be timezone-aware datetimes")
    return now


@dataclass(frozen=True)
class RingKey:
    """One member of a :class:`KeyRing`. ``not_after`` is None for the active key."""

    kid: str
    alg: str
    private_key: PrivateKey
    not_after: datetime | None = None
    retired_at: datetime | None = None  # when it was rotated away (None: active, or an old ring)

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    def jwk(self) -> dict[str, str]:
        """The public JWK as published: key members plus ``kid``, ``alg`` and ``use="sig"``."""
        return {**public_jwk(self.private_key), "kid": self.kid, "alg": self.alg, "use": "sig"}

    def published_at(self, now: datetime) -> bool:
        _aware(now)  # also for the active key: a naive "now" is a bug wherever it is passed
        if self.not_after is None:
            return True
        if self.retired_at is not None and self.retired_at - RETIRED_AT_TOLERANCE > now:
            return False  # retired in this clock's future: the overlap cannot be placed
        return now < self.not_after


def ring_key(key: PrivateKey, alg: str | None = None,
             not_after: datetime | None = None) -> RingKey:
    """Wrap ``key`` with its thumbprint ``kid`` and a JWS ``alg`` valid for its type."""
    chosen = alg or default_algorithm(key)
    if chosen not in allowed_algorithms(key):
        raise ValueError(f"alg {chosen} cannot be used with this key "
                         f"(allowed: {sorted(allowed_algorithms(key))})")
    return RingKey(key_thumbprint(key), chosen, key,
                   None if not_after is None else _aware(not_after))


class KeyRing:
    """One active signing key plus retiring keys still published in the JWKS."""

    def __init__(self, active: PrivateKey, *, alg: str | None = None) -> None:
        self._state: tuple[RingKey, tuple[RingKey, ...]] = (ring_key(active, alg), ())

    @classmethod
    def _from_members(cls, active: RingKey, retiring: tuple[RingKey, ...]) -> KeyRing:
        ring = cls.__new__(cls)
        ring._state = (active, retiring)
        return ring

    # The state is one tuple replaced in a single assignment, so a concurrent signer always sees
    # a consistent (active, retiring) pair.

    @property
    def active(self) -> RingKey:
        return self._state[0]

    @property
    def retiring(self) -> tuple[RingKey, ...]:
        return self._state[1]

    def members(self) -> tuple[RingKey, ...]:
        active, retiring = self._state
        return (active, *retiring)

    def rotate(self, new_key: PrivateKey, now: datetime, overlap: timedelta, *,
               alg: str | None = None) -> RingKey:
        """Make ``new_key`` active; keep the old active key published until ``now + overlap``."""
        if overlap < timedelta(0):
            raise ValueError("overlap must not be negative")
        new = ring_key(new_key, alg)
        active, retiring = self._state
        if any(m.kid == new.kid for m in (active, *retiring)):
            raise ValueError(f"key {new.kid} is already in the ring; rotate to a fresh key")
        old = RingKey(active.kid, active.alg, active.private_key, _aware(now) + overlap, now)
        self._state = (new, (old, *retiring))
        return new

    def published(self, now: datetime) -> tuple[RingKey, ...]:
        """Members in the JWKS at ``now``: the active key, then retiring keys not yet expired."""
        return tuple(m for m in self.members() if m.published_at(now))

    def find(self, kid: str, now: datetime) -> RingKey | None:
        """The member published at ``now`` with this ``kid``, if any."""
        return next((m for m in self.published(now) if m.kid == kid), None)

    def jwks(self, now: datetime) -> dict[str, list[dict[str, str]]]:
        """The JWKS document (RFC 7517 §5) to serve at ``now``."""
        return {"keys": [m.jwk() for m in self.published(now)]}

    def prune(self, now: datetime) -> list[str]:
        """Drop retiring keys whose overlap has ended; return their kids. A key withheld for
        a ``retired_at`` in the future is kept (the clock may be the one that is off)."""
        active, retiring = self._state
        keep = tuple(m for m in retiring if m.not_after is None or now < m.not_after)
        self._state = (active, keep)
        return [m.kid for m in retiring if m not in keep]

    # --- persistence ------------------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "active": self.active.kid,
            "keys": [{"kid": m.kid, "alg": m.alg, "not_after": _iso(m.not_after),
                      "retired_at": _iso(m.retired_at)} for m in self.members()],
        }

    def save(self, directory: Path | str, passphrase: Passphrase | None = None, *,
             exclusive: bool = False) -> None:
        """Persist the ring under ``directory`` (see the module docstring for the layout).

        With ``exclusive=True`` the index must not exist yet (:class:`FileExistsError`).
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        members = self.members()
        for m in members:
            save_private_key(directory / f"{m.kid}.pem", m.private_key, passphrase)
        index = json.dumps(self._index(), indent=2, sort_keys=True).encode() + b"\n"
        atomic_write(directory / INDEX_NAME, index, mode=0o600, overwrite=not exclusive)
        kept = {f"{m.kid}.pem" for m in members}
        for stale in directory.glob("*.pem"):
            # Only files named like our keys: never delete something we did not write.
            if stale.name not in kept and _KID.fullmatch(stale.stem):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()

    @classmethod
    def load(cls, directory: Path | str, passphrase: Passphrase | None = None) -> KeyRing:
        """Reload a ring written by :meth:`save`, checking every kid against its key file."""
        directory = Path(directory)
        index_path = directory / INDEX_NAME
        try:
            raw = index_path.read_bytes()
        except FileNotFoundError as e:
            raise KeyFileMissing(f"{index_path}: no key ring index") from e
        except OSError as e:
            raise KeyRingError(f"{index_path}: cannot read ({e.strerror})") from e
        try:
            index = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise KeyRingError(f"{index_path}: not JSON ({e})") from e
        return cls._from_index(index, directory, passphrase)

    @classmethod
    def _from_index(cls, index: Any, directory: Path,
                    passphrase: Passphrase | None) -> KeyRing:
        where = directory / INDEX_NAME
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
            raise KeyRingError(f"{where}: not a {INDEX_FORMAT} index")
        entries, active_kid = index.get("keys"), index.get("active")
        if not isinstance(entries, list) or not entries:
            raise KeyRingError(f"{where}: 'keys' must be a non-empty list")
        active: RingKey | None = None
        retiring: list[RingKey] = []
        seen: set[str] = set()
        for entry in entries:
            member = _load_member(entry, directory, passphrase)
            if member.kid in seen:
                raise KeyRingError(f"{where}: kid {member.kid} listed twice")
            seen.add(member.kid)
            if member.kid == active_kid:
                if member.not_after is not None:
                    raise KeyRingError(f"{where}: active key {member.kid} has a not_after")
                active = member
            elif member.not_after is None:
                raise KeyRingError(f"{where}: retiring key {member.kid} has no not_after")
            else:
                retiring.append(member)
        if active is None:
            raise KeyRingError(f"{where}: active kid {active_kid!r} is not among the keys")
        return cls._from_members(active, tuple(retiring))

    @classmethod
    def load_or_create(cls, directory: Path | str, kind: KeyKind = KeyKind.EC_P256,
                       passphrase: Passphrase | None = None) -> KeyRing:
        """The ring persisted in ``directory``, or a new one with a fresh ``kind`` key."""
        if (Path(directory) / INDEX_NAME).exists():
            return cls.load(directory, passphrase)
        ring = cls(generate_private_key(kind))
        try:
            ring.save(directory, passphrase, exclusive=True)
        except FileExistsError:
            return cls.load(directory, passphrase)  # another process created it first
        return ring


def _load_member(entry: Any, directory: Path, passphrase: Passphrase | None) -> RingKey:
    where = directory / INDEX_NAME
    if not isinstance(entry, dict):
        raise KeyRingError(f"{where}: key entry is not an object")
    kid, alg = entry.get("kid"), entry.get("alg")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise KeyRingError(f"{where}: invalid kid {kid!r}")
    key = load_private_key(directory / f"{kid}.pem", passphrase)
    if key_thumbprint(key) != kid:
        raise KeyRingError(f"{directory / (kid + '.pem')}: key thumbprint does not match "
                           f"its kid {kid} (file replaced?)")
    if not isinstance(alg, str) or alg not in allowed_algorithms(key):
        raise KeyRingError(f"{where}: alg {alg!r} is not valid for key {kid}")
    return RingKey(kid, alg, key, _time(entry, "not_after", where, kid),
                   _time(entry, "retired_at", where, kid))


def _time(entry: dict[str, Any], name: str, where: Path, kid: str) -> datetime | None:
    value = entry.get(name)
    if value is None:
        return None
    try:
        return _aware(datetime.fromisoformat(value))
    except (TypeError, ValueError) as e:
        raise KeyRingError(f"{where}: bad {name} {value!r} for {kid}") from e


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat()


__all__ = ["KeyRing", "KeyRingError", "KeysError", "RingKey", "ring_key"]
