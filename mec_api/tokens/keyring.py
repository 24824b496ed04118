"""The token service's keys at run time: the cluster's service-account keys read on first use,
and the access-token signing ring, rotated by an operator and picked up by every replica."""

from __future__ import annotations

import logging
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


def rotate_token_key(directory: Path, overlap_seconds: float, lifetime_seconds: float) -> str:
    """Make a fresh key active; the old one stays published for ``overlap_seconds``."""
    if overlap_seconds < lifetime_seconds:
        raise ValueError(f"overlap {overlap_seconds:g} s is shorter than the token lifetime "
                         f"{lifetime_seconds:g} s: tokens still in use would stop verifying")
    now = datetime.now(UTC)
    ring = KeyRing.load_or_create(directory)
    ring.prune(now)
    new = ring.rotate(generate_private_key(), now, timedelta(seconds=overlap_seconds))
    ring.save(directory)
    return new.kid
