"""JWT signing with a :class:`KeyRing` and strict JWT verification against a JWKS.

:func:`sign_jwt` signs with the ring's active key: header ``alg`` = that key's alg, ``kid`` = its
thumbprint, ``typ`` = "JWT" unless the caller sets it (e.g. "at+jwt", RFC 9068).

:func:`verify_jwt` follows RFC 8725 (JWT best current practices). The steps, each with its own
typed error (all :class:`JwtInvalid`):

1. the *caller* pins ``algorithms`` (a subset of ES256, RS256, PS256, EdDSA; "none" and HS* are
   refused as a programming error). Nothing is derived from the token;
2. read the unverified header (:class:`JwtMalformed`): one compact JWS of at most
   ``MAX_TOKEN_BYTES``; refuse ``crit``/``b64`` (no extension is understood here) and, when
   ``typ`` is requested, a different ``typ`` (:class:`JwtWrongType`);
3. the header ``alg`` must be pinned (:class:`JwtAlgorithmNotAllowed`) -- this stops ``alg:none``
   and the HS256-with-the-public-key confusion before any key is touched;
4. select the key by ``kid`` only, among the JWKS entries for signatures (``use`` absent or
   "sig") whose ``alg`` equals the header ``alg`` -- or, for an entry without ``alg``, whose key
   type fits it. ``jwk``/``jku``/``x5u`` headers are never looked at. No such kid:
   :class:`JwtUnknownKid`; the kid exists but for another alg: :class:`JwtAlgorithmNotAllowed`;
5. verify the signature with exactly that key and alg (:class:`JwtBadSignature`), then the
   required claims (:class:`JwtMissingClaim`), ``iss`` (:class:`JwtWrongIssuer`) and ``aud``
   (:class:`JwtWrongAudience`) -- these with pyjwt, whose every exception is mapped;
6. the times, against the injected ``now`` with ``leeway``: ``exp`` (:class:`JwtExpired`), ``nbf``
   and ``iat`` in the future (:class:`JwtNotYetValid`). pyjwt's own time checks are off because
   they read the wall clock.

The result is a :class:`VerifiedJwt`: the header and the claims of that one verified parse, so a
caller never reads the token again (the ``kid`` that verified it is ``.kid``).

Steps 2 and 5 are shared with :mod:`keys.embedded` (tokens that carry their own key, e.g. DPoP
proofs): :func:`read_jose_header` and :func:`decode_verified`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import jwt
from jwt import exceptions as jwt_errors
from jwt.types import Options

from keys.errors import (
    JwtAlgorithmNotAllowed,
    JwtBadSignature,
    JwtExpired,
    JwtInvalid,
    JwtMalformed,
    JwtMissingClaim,
    JwtNotYetValid,
    JwtUnknownKid,
    JwtWrongAudience,
    JwtWrongIssuer,
    JwtWrongType,
)
from keys.jwk import JwkInvalid, public_key_from_jwk
from keys.kinds import SUPPORTED_ALGORITHMS, PublicKey, allowed_algorithms
from keys.ring import KeyRing

MAX_TOKEN_BYTES = 16 * 1024  # far above any token we issue; bounds the work on hostile input
DEFAULT_LEEWAY = 30.0  # seconds of tolerated clock skew between edge nodes
# Headers a caller may not set: they select keys or change how the token is processed.
_RESERVED_HEADERS = frozenset({"alg", "kid", "crit", "b64", "jwk", "jku", "x5u", "x5c"})
# kty/crv of a JWK without "alg" -> the algs it can verify.
_ALGS_FOR_KEY_TYPE: dict[tuple[Any, Any], frozenset[str]] = {
    ("EC", "P-256"): frozenset({"ES256"}),
    ("OKP", "Ed25519"): frozenset({"EdDSA"}),
}
_RSA_ALGS = frozenset({"RS256", "PS256"})


@dataclass(frozen=True)
class VerifiedJwt:
    """A JWT that passed :func:`verify_jwt`: its JOSE header and claims, both read-only."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]

    @property
    def kid(self) -> str:
        """The ``kid`` of the key that verified the signature (always present and a string)."""
        return str(self.header["kid"])


def sign_jwt(claims: Mapping[str, Any], ring: KeyRing, *,
             headers: Mapping[str, Any] | None = None) -> str:
    """Sign ``claims`` with the ring's active key (compact JWS)."""
    extra = dict(headers or {})
    reserved = _RESERVED_HEADERS.intersection(extra)
    if reserved:
        raise ValueError(f"headers {sorted(reserved)} are set by sign_jwt or not supported")
    active = ring.active
    header = {"typ": "JWT", **extra, "kid": active.kid}
    return jwt.encode(dict(claims), active.private_key, algorithm=active.alg, headers=header)


def pinned_algorithms(algorithms: Sequence[str]) -> frozenset[str]:
    """The caller's algorithm allowlist, checked: a non-empty subset of SUPPORTED_ALGORITHMS."""
    if isinstance(algorithms, str | bytes):
        raise ValueError("algorithms must be a sequence of names, e.g. ['ES256'], not a string")
    pinned = frozenset(algorithms)
    if not pinned:
        raise ValueError("algorithms must name at least one algorithm")
    unsupported = pinned - SUPPORTED_ALGORITHMS
    if unsupported:
        raise ValueError(f"algorithms {sorted(unsupported)} are not allowed; "
                         f"choose from {sorted(SUPPORTED_ALGORITHMS)}")
    return pinned


def _jwks_entries(jwks: Mapping[str, Any] | KeyRing, now: float) -> list[Any]:
    if isinstance(jwks, KeyRing):
        return list(jwks.jwks(datetime.fromtimestamp(now, tz=UTC))["keys"])
    entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(entries, list):
        # The verifier's own configuration is broken: not the token's fault, not a 401.
        raise JwkInvalid("JWKS must be an object with a 'keys' list")
    return entries


def _entry_fits(entry: Mapping[str, Any], alg: str) -> bool:
    if entry.get("use", "sig") != "sig":
        return False
    declared = entry.get("alg")
    if declared is not None:
        return bool(declared == alg)
    if entry.get("kty") == "RSA":
        return alg in _RSA_ALGS
    return alg in _ALGS_FOR_KEY_TYPE.get((entry.get("kty"), entry.get("crv")), frozenset())


def _select_key(entries: list[Any], kid: str, alg: str) -> PublicKey:
    same_kid = [e for e in entries if isinstance(e, Mapping) and e.get("kid") == kid]
    if not same_kid:
        raise JwtUnknownKid(f"kid {kid!r} is not in the JWKS (unknown or retired key)")
    fitting = [e for e in same_kid if _entry_fits(e, alg)]
    if not fitting:
        declared = sorted(str(e.get("alg", e.get("kty"))) for e in same_kid)
        raise JwtAlgorithmNotAllowed(f"token alg {alg} does not match key {kid!r} ({declared})")
    if len(fitting) > 1:
        raise JwtUnknownKid(f"kid {kid!r} is ambiguous: {len(fitting)} JWKS entries for {alg}")
    try:
        key = public_key_from_jwk(fitting[0])
    except JwkInvalid as e:
        raise JwtUnknownKid(f"the JWKS entry for kid {kid!r} is unusable: {e.detail}") from e
    if alg not in allowed_algorithms(key):
        raise JwtAlgorithmNotAllowed(f"token alg {alg} cannot be verified with the "
                                     f"{type(key).__name__} of kid {kid!r}")
    return key


def read_jose_header(token: str | bytes, pinned: frozenset[str], *,
                     max_bytes: int = MAX_TOKEN_BYTES) -> dict[str, Any]:
    """The unverified header of one compact JWS whose ``alg`` is ``pinned`` (no crit/b64).

    Only what decides *how* to verify is checked here; nothing in it is trusted yet.
    """
    if not isinstance(token, str | bytes):
        raise JwtMalformed(f"token must be a string, got {type(token).__name__}")
    if len(token) > max_bytes:
        raise JwtMalformed(f"token of {len(token)} bytes exceeds {max_bytes}")
    dots = token.count(".") if isinstance(token, str) else token.count(b".")
    if dots != 2:
        raise JwtMalformed(f"not one compact JWS: {dots + 1} segments, expected 3")
    try:
        header = jwt.get_unverified_header(token)
    except jwt_errors.PyJWTError as e:
        raise JwtMalformed(f"unreadable JOSE header: {e}") from e
    except (ValueError, TypeError, RecursionError) as e:  # defensive: hostile JSON
        raise JwtMalformed(f"unreadable JOSE header: {e}") from e
    if "crit" in header or "b64" in header:
        raise JwtMalformed("critical header extensions (crit/b64) are not supported")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in pinned:
        raise JwtAlgorithmNotAllowed(f"alg {alg!r} is not one of the pinned "
                                     f"{sorted(pinned)}")
    return header


def _read_header(token: str | bytes, pinned: frozenset[str], typ: str | None
                 ) -> tuple[str, str]:
    header = read_jose_header(token, pinned)
    if typ is not None and _media_type(header.get("typ")) != _media_type(typ):
        raise JwtWrongType(f"typ {header.get('typ')!r}, expected {typ!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise JwtMalformed("token header has no kid; keys are selected by kid only")
    return str(header["alg"]), kid


def _media_type(value: object) -> str | None:
    # RFC 7515 §4.1.9: "application/" may be omitted and the comparison is case-insensitive.
    if not isinstance(value, str):
        return None
    lowered = value.lower()
    return lowered.removeprefix("application/")


_PYJWT_ERRORS: tuple[tuple[type[Exception], type[JwtInvalid]], ...] = (
    # Subclasses before their bases (InvalidSignatureError is a DecodeError).
    (jwt_errors.InvalidSignatureError, JwtBadSignature),
    (jwt_errors.ExpiredSignatureError, JwtExpired),
    (jwt_errors.ImmatureSignatureError, JwtNotYetValid),
    (jwt_errors.InvalidAudienceError, JwtWrongAudience),
    (jwt_errors.InvalidIssuerError, JwtWrongIssuer),
    (jwt_errors.MissingRequiredClaimError, JwtMissingClaim),
    (jwt_errors.InvalidAlgorithmError, JwtAlgorithmNotAllowed),
    (jwt_errors.InvalidKeyError, JwtAlgorithmNotAllowed),  # key does not fit the alg
    (jwt_errors.PyJWTError, JwtMalformed),  # DecodeError, InvalidIssuedAt/Subject/JTI, ...
)


def map_pyjwt_error(error: Exception) -> JwtInvalid:
    """The typed error for a pyjwt exception (anything unknown is :class:`JwtMalformed`)."""
    for pyjwt_type, ours in _PYJWT_ERRORS:
        if isinstance(error, pyjwt_type):
            return ours(str(error))
    return JwtMalformed(f"{type(error).__name__}: {error}")


def decode_verified(token: str | bytes, key: PublicKey, alg: str, options: Options,
                    **expected: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of ``token`` once its signature verifies with ``key`` and ``alg``.

    One pyjwt parse; ``expected`` (issuer, audience) goes to pyjwt's claim checks. Every
    failure is a :class:`JwtInvalid` (pyjwt's exceptions never leave ``keys``).
    """
    try:
        decoded = jwt.decode_complete(token, key, algorithms=[alg], options=options, **expected)
    except jwt_errors.PyJWTError as e:
        raise map_pyjwt_error(e) from e
    except (ValueError, TypeError, RecursionError, OverflowError) as e:
        # pyjwt does not wrap every failure on hostile payloads; none may leak untyped.
        raise JwtMalformed(f"{type(e).__name__}: {e}") from e
    header, payload = decoded["header"], decoded["payload"]
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise JwtMalformed("the header and the payload must be JSON objects")
    return header, payload


def _numeric_date(payload: Mapping[str, Any], name: str) -> int | float | None:
    if name not in payload:
        return None
    value = payload[name]
    # RFC 7519 NumericDate: a JSON number. bool is an int in Python, strings are not numbers.
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise JwtMalformed(f"claim {name!r} must be a NumericDate, got {value!r}")
    return value


def check_jwt_times(payload: Mapping[str, Any], now: float, leeway: float) -> None:
    """Step 6 alone, for claims verified earlier (a cache of verified tokens re-checks time)."""
    exp = _numeric_date(payload, "exp")
    if exp is not None and exp <= now - leeway:
        raise JwtExpired(f"exp {exp} is past (now {now:.0f}, leeway {leeway:g}s)")
    nbf = _numeric_date(payload, "nbf")
    if nbf is not None and nbf > now + leeway:
        raise JwtNotYetValid(f"nbf {nbf} is in the future (now {now:.0f}, leeway {leeway:g}s)")
    iat = _numeric_date(payload, "iat")
    if iat is not None and iat > now + leeway:
        raise JwtNotYetValid(f"iat {iat} is in the future (now {now:.0f}, leeway {leeway:g}s)")


def verify_jwt(token: str | bytes, jwks: Mapping[str, Any] | KeyRing, *,
               algorithms: Sequence[str], issuer: str, audience: str | Sequence[str] | None,
               now: float | None = None, leeway: float | timedelta = DEFAULT_LEEWAY,
               required_claims: Sequence[str] = ("exp", "iat", "iss"),
               typ: str | None = None) -> VerifiedJwt:
    """Verify ``token`` against ``jwks``: its header and claims (see the module docstring).

    ``audience=None`` means the token must carry no ``aud``; a sequence accepts any of its
    members. ``now`` is a POSIX timestamp;
    only when it is None is the wall clock read. Raises a :class:`JwtInvalid` subclass for any
    bad token, :class:`ValueError` for a bad call, :class:`JwkInvalid` for a JWKS that is not
    a JWKS at all.
    """
    pinned = pinned_algorithms(algorithms)
    if not issuer:
        raise ValueError("issuer must be a non-empty string")
    when = time.time() if now is None else float(now)
    skew = leeway.total_seconds() if isinstance(leeway, timedelta) else float(leeway)
    alg, kid = _read_header(token, pinned, typ)
    key = _select_key(_jwks_entries(jwks, when), kid, alg)
    options: Options = {
        "require": list(required_claims), "verify_signature": True,
        # Time checks are ours (injected clock); pyjwt's read datetime.now().
        "verify_exp": False, "verify_nbf": False, "verify_iat": False,
        "verify_iss": True, "verify_aud": True, "verify_sub": True, "verify_jti": True,
        "enforce_minimum_key_length": True,
    }
    header, payload = decode_verified(token, key, alg, options, issuer=issuer,
                                      audience=audience)
    check_jwt_times(payload, when, skew)
    return VerifiedJwt(MappingProxyType(header), MappingProxyType(payload))
