"""The token service's keys at run time: the cluster's service-account keys read on first use,
and the access-token signing ring, rotated by an operator and picked up by every replica."""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from keys import KeyRing, generate_private_key
from mec_api.tokens.feed import RingJwks
from mec_api.tokens.issuer import ClusterKeys, TokenIssuer

log = logging.getLogger("umec.tokens")


class LazyClusterKeys:
    """Discovery at the first token request, not at start: the server must come up even when
    the cluster's issuer is briefly unreachable (token requests fail until it answers).
    ``open_keys`` makes the real source (``umec`` maps its settings to one)."""

    def __init__(self, open_keys: Callable[[], ClusterKeys]) -> None:
        self.open_keys = open_keys
        self._keys: ClusterKeys | None = None

    def jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        if self._keys is None:
            self._keys = self.open_keys()
        return self._keys.jwks(refresh=refresh)


class RingReloader:
    """Picks up a key rotation written to the shared key directory (``umec tokens rotate-key``,
    from any replica): the issuer signs with the new key and the JWKS lists both until the old
    one's overlap ends."""

    def __init__(self, directory: Path, issuer: TokenIssuer, jwks: RingJwks) -> None:
        self.directory, self.issuer, self.jwks = directory, issuer, jwks
        self._seen = self._stamp()

    def _stamp(self) -> int:
        try:
            return (self.directory / "index.json").stat().st_mtime_ns
        except OSError:
            return 0

    def check(self) -> bool:
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        ring = KeyRing.load(self.directory)  # a broken index raises: keep the current ring
        self.issuer.ring = self.jwks.ring = ring
        self._seen = stamp
        log.info("access-token key ring reloaded", extra={"active": ring.active.kid})
        return True


# One rotation at a time in this process; the directory's lock file orders processes (the
# CLI on the host, the server's workers, other replicas on the shared key directory).
_ROTATING = threading.Lock()
LOCK_NAME = ".rotate.lock"
# Every process picks a rotation up within its reload interval (2 s, mec_api.service.tokens);
# until then it still signs with the old key, so the old key must stay published that much
# longer than a token lives.
RELOAD_GRACE_SECONDS = 5.0
# Keys published at once (the active one and those still within their overlap): rotating in a
# loop must not grow the JWKS every client downloads and the files every rotation rewrites.
MAX_PUBLISHED_KEYS = 8


class TooManyKeys(ValueError):
    """A rotation would publish more than :data:`MAX_PUBLISHED_KEYS` keys."""


def rotate_token_key(directory: Path, overlap_seconds: float, lifetime_seconds: float,
                     now: datetime | None = None) -> str:
    """Make a fresh key active; the old one stays published for ``overlap_seconds``.

    ``now``: the clock tokens are dated with (the server passes its service clock, the
    database's on PostgreSQL; the CLI on a host, its wall clock). A rotation dated ahead of the
    readers' clocks is withheld by them until it is due (:data:`keys.ring.RETIRED_AT_TOLERANCE`).

    Rotations are serialised (a thread lock and ``flock`` on the directory's lock file), so two
    operators rotating at once both land: the second rotates the first one's key away, within
    its overlap, rather than overwriting the index the first one wrote."""
    if not overlap_seconds >= lifetime_seconds + RELOAD_GRACE_SECONDS:  # NaN too
        raise ValueError(f"overlap {overlap_seconds:g} s is shorter than the token lifetime "
                         f"{lifetime_seconds:g} s plus the {RELOAD_GRACE_SECONDS:g} s every "
                         f"server takes to pick the new key up: tokens still in use would "
                         f"stop verifying")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _ROTATING, open(directory / LOCK_NAME, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = now or datetime.now(UTC)
        ring = KeyRing.load_or_create(directory)
        ring.prune(now)
        if len(ring.members()) >= MAX_PUBLISHED_KEYS:
            ends = min(m.not_after for m in ring.retiring if m.not_after is not None)
            raise TooManyKeys(f"{len(ring.members())} keys are published already (at most "
                              f"{MAX_PUBLISHED_KEYS}); the next overlap ends at "
                              f"{ends.isoformat(timespec='seconds')}")
        new = ring.rotate(generate_private_key(), now, timedelta(seconds=overlap_seconds))
        ring.save(directory)
        return new.kid


class KeyRotator:
    """What the operator route calls: rotate in the shared directory, then reload this
    process's ring at once (other processes pick it up within their reload interval)."""

    def __init__(self, directory: Path, lifetime_seconds: float, reloader: RingReloader,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.directory, self.lifetime_seconds = directory, lifetime_seconds
        self.reloader, self.clock = reloader, clock

    def __call__(self, overlap_seconds: float) -> str:
        kid = rotate_token_key(self.directory, overlap_seconds, self.lifetime_seconds,
                               self.clock())
        self.reloader.check()
        return kid
