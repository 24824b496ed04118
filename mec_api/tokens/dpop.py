"""DPoP proofs (RFC 9449): binding an access token to a key the client holds.

:func:`verify_dpop_proof` follows RFC 9449 §4.3, each failure a :class:`DpopProofInvalid`
naming the step:

1. one compact JWT, header ``typ`` = ``dpop+jwt``, ``alg`` an asymmetric algorithm we pin
   (never ``none``, never HMAC), ``jwk`` a public key (no private members);
2. the signature verifies with that ``jwk``.

   Steps 1 and 2 are the generic check of a JWT carrying its own key,
   :func:`keys.verify_embedded_key_jwt`; its typed refusal becomes a :class:`DpopProofInvalid`
   whose detail starts with the keys check id (``jwt.typ``, ``jwt.alg``, ``jwt.jwk.private``,
   ``jwt.signature``, ...). The steps below are DPoP's own:

3. ``jti``, ``htm``, ``htu`` and ``iat`` are present; ``htm`` is this request's method and ``htu``
   its URL without query and fragment (scheme and host compared case-insensitively, default
   ports dropped);
4. ``iat`` is a finite number within ``max_age`` seconds in the past (and at most ``leeway``
   in the future);
5. at a resource server, ``ath`` is the base64url SHA-256 of the access token and the
   proof's key thumbprint equals the token's ``cnf.jkt``;
6. the ``jti`` was not seen before within the proof's lifetime (:class:`DpopReplayCache`).

The result is the RFC 7638 thumbprint of the proof key (``jkt``).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from keys import EmbeddedKeyJwt, JwtInvalid, verify_embedded_key_jwt
from keys.jwk import b64url_encode
from mec_api.tokens.errors import DpopProofInvalid

DPOP_ALGORITHMS = frozenset({"ES256", "RS256", "PS256", "EdDSA"})
DPOP_TYP = "dpop+jwt"
MAX_PROOF_BYTES = 8 * 1024


@dataclass(frozen=True)
class DpopProof:
    jkt: str
    jti: str
    iat: float


def normalise_htu(url: str) -> str:
    """Scheme and host lowercased, default port dropped, no query or fragment."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port
    netloc = host if port is None or (scheme, port) in (("https", 443), ("http", 80)) \
        else f"{host}:{port}"
    if ":" in host and not host.startswith("["):
        netloc = f"[{host}]" + netloc[len(host):]
    return f"{scheme}://{netloc}{parts.path or '/'}"


def access_token_hash(access_token: str) -> str:
    return b64url_encode(hashlib.sha256(access_token.encode("ascii")).digest())


def _signed(proof: str) -> EmbeddedKeyJwt:
    """Steps 1 and 2: a ``dpop+jwt`` signed by the key in its own ``jwk`` header."""
    if not isinstance(proof, str):
        raise DpopProofInvalid("the DPoP header is not one compact JWT")
    try:
        return verify_embedded_key_jwt(proof, algorithms=sorted(DPOP_ALGORITHMS), typ=DPOP_TYP,
                                       max_bytes=MAX_PROOF_BYTES)
    except JwtInvalid as e:
        raise DpopProofInvalid(f"{e.check}: {e.detail}") from None


def verify_dpop_proof(proof: str, *, method: str, url: str, now: float,
                      max_age: float = 60.0, leeway: float = 5.0,
                      access_token: str | None = None) -> DpopProof:
    """Check one DPoP proof for this request (steps in the module doc, except replay)."""
    signed = _signed(proof)
    claims: Mapping[str, Any] = signed.claims
    for name in ("jti", "htm", "htu"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise DpopProofInvalid(f"claim {name!r} is missing")
    if claims["htm"] != method.upper():
        raise DpopProofInvalid(f"htm {claims['htm']!r} is not this request's method {method}")
    try:
        same_url = normalise_htu(claims["htu"]) == normalise_htu(url)
    except ValueError:
        same_url = False
    if not same_url:
        raise DpopProofInvalid(f"htu {claims['htu'][:200]!r} is not this request's URL")
    iat = _recent_iat(claims.get("iat"), now, max_age, leeway)
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):
        raise DpopProofInvalid("ath does not match the access token")
    return DpopProof(jkt=signed.thumbprint, jti=claims["jti"], iat=iat)


def _recent_iat(iat: object, now: float, max_age: float, leeway: float) -> float:
    """``iat`` as a number no older than ``max_age`` and at most ``leeway`` ahead of ``now``."""
    if isinstance(iat, bool) or not isinstance(iat, int | float) or \
            (isinstance(iat, float) and not math.isfinite(iat)):  # NaN passes any window check
        raise DpopProofInvalid("claim 'iat' is missing or not a finite number")
    if iat < now - max_age or iat > now + leeway:
        raise DpopProofInvalid(f"iat {iat} is outside [{now - max_age:.0f}, "
                               f"{now + leeway:.0f}]: make a fresh proof per request")
    return float(iat)


class DpopReplayCache:
    """``jti`` values seen within the proof lifetime; thread-safe and bounded.

    A full cache refuses new proofs rather than forgetting unexpired ones (fail closed).

    A proof is forgotten only when its ``iat`` window has passed on the wall clock (``now``)
    **and** ``lifetime`` seconds have passed on the monotonic clock since it was seen: on the
    wall clock alone, a forward step evicted every proof and, once the clock was corrected, a
    recorded request (token and proof) was accepted again within the proof's minute.
    """

    def __init__(self, lifetime: float = 65.0, max_entries: int = 200_000,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        self.monotonic = monotonic
        # key → (wall-clock end of the proof's iat window, monotonic end of its hold)
        self._seen: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_remember(self, proof: DpopProof, now: float) -> None:
        key = f"{proof.jkt}:{proof.jti}"
        mono = self.monotonic()
        with self._lock:
            while self._seen:  # oldest first: the monotonic ends are in insertion order
                oldest, (window_ends, held_until) = next(iter(self._seen.items()))
                if window_ends > now or held_until > mono:
                    break
                del self._seen[oldest]
            if key in self._seen:
                raise DpopProofInvalid(f"jti {proof.jti[:64]!r} was already used (replay)")
            if len(self._seen) >= self.max_entries:
                raise DpopProofInvalid("too many proofs in flight; retry shortly")
            self._seen[key] = (max(now, proof.iat) + self.lifetime, mono + self.lifetime)
