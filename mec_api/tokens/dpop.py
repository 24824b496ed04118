"""DPoP proofs (RFC 9449): binding an access token to a key the client holds.

:func:`verify_dpop_proof` follows RFC 9449 §4.3, each failure a :class:`DpopProofInvalid`
naming the step:

1. one compact JWT, header ``typ`` = ``dpop+jwt``, ``alg`` an asymmetric algorithm we pin
   (never ``none``, never HMAC), ``jwk`` a public key (no private members);
2. the signature verifies with that ``jwk``;
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
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt import exceptions as jwt_errors

from keys import JwkInvalid, jwk_thumbprint, public_key_from_jwk
from keys.jwk import b64url_encode
from mec_api.tokens.errors import DpopProofInvalid

DPOP_ALGORITHMS = frozenset({"ES256", "RS256", "PS256", "EdDSA"})
MAX_PROOF_BYTES = 8 * 1024
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


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


def _header(proof: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(proof, str) or len(proof) > MAX_PROOF_BYTES or proof.count(".") != 2:
        raise DpopProofInvalid("the DPoP header is not one compact JWT")
    try:
        header = jwt.get_unverified_header(proof)
    except (jwt_errors.PyJWTError, ValueError, TypeError, RecursionError):
        raise DpopProofInvalid("unreadable JOSE header") from None
    if str(header.get("typ", "")).lower() != "dpop+jwt":
        raise DpopProofInvalid(f"typ {header.get('typ')!r}, expected 'dpop+jwt'")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in DPOP_ALGORITHMS:  # a list is unhashable
        raise DpopProofInvalid(f"alg {alg!r} is not one of {sorted(DPOP_ALGORITHMS)}")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise DpopProofInvalid("no jwk header: the proof must carry its public key")
    if _PRIVATE_JWK_MEMBERS.intersection(jwk):
        raise DpopProofInvalid("the jwk header holds private or symmetric key material")
    return str(alg), jwk


def verify_dpop_proof(proof: str, *, method: str, url: str, now: float,
                      max_age: float = 60.0, leeway: float = 5.0,
                      access_token: str | None = None) -> DpopProof:
    """Check one DPoP proof for this request (steps in the module doc, except replay)."""
    alg, jwk = _header(proof)
    try:
        key = public_key_from_jwk(jwk)
        jkt = jwk_thumbprint(jwk)
    except JwkInvalid as e:
        raise DpopProofInvalid(f"jwk: {e.detail}") from None
    try:
        claims: dict[str, Any] = jwt.decode(
            proof, key, algorithms=[alg],
            options={"verify_signature": True, "verify_exp": False, "verify_nbf": False,
                     "verify_iat": False, "verify_aud": False, "verify_iss": False})
    except (jwt_errors.PyJWTError, ValueError, TypeError, RecursionError) as e:
        raise DpopProofInvalid(f"signature or payload: {type(e).__name__}") from None
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
    return DpopProof(jkt=jkt, jti=claims["jti"], iat=iat)


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
    """

    def __init__(self, lifetime: float = 65.0, max_entries: int = 200_000) -> None:
        self.lifetime = lifetime
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_remember(self, proof: DpopProof, now: float) -> None:
        key = f"{proof.jkt}:{proof.jti}"
        with self._lock:
            while self._seen:
                oldest, expires = next(iter(self._seen.items()))
                if expires > now:
                    break
                del self._seen[oldest]
            if key in self._seen:
                raise DpopProofInvalid(f"jti {proof.jti[:64]!r} was already used (replay)")
            if len(self._seen) >= self.max_entries:
                raise DpopProofInvalid("too many proofs in flight; retry shortly")
            self._seen[key] = now + self.lifetime
