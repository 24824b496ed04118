"""JWTs that carry their own verification key in the ``jwk`` header, e.g. DPoP proofs (RFC 9449).

:func:`verify_embedded_key_jwt` is the generic part of such a check. It proves that the sender
holds the private key of the embedded public key, nothing more: what that key is bound to (a
token's ``cnf.jkt``, an account) and which claims must hold (``htm``, ``htu``, ``iat``, ``jti``,
...) are the caller's business. The steps, each with its own typed error (all
:class:`JwtInvalid`, never a pyjwt exception):

1. one compact JWS of at most ``max_bytes``, readable header without ``crit``/``b64``
   (:class:`JwtMalformed`);
2. the header ``alg`` is one the caller pinned -- a subset of ES256, RS256, PS256, EdDSA, so
   ``none`` and HS* can never be pinned (:class:`JwtAlgorithmNotAllowed`);
3. the header ``typ`` equals ``typ``, case-insensitively and exactly: no ``application/``
   prefix, as RFC 9449 §4.2 names ``dpop+jwt`` (:class:`JwtWrongType`);
4. the header ``jwk`` is a JSON object (:class:`JwtEmbeddedKeyInvalid`) with no private or
   symmetric members (:class:`JwtEmbeddedKeyPrivate`), a supported public key
   (:class:`JwtEmbeddedKeyInvalid`) whose type fits ``alg`` (:class:`JwtAlgorithmNotAllowed`);
5. the signature verifies with exactly that key and ``alg`` (:class:`JwtBadSignature`), and the
   payload is a JSON object (:class:`JwtMalformed`). No claim is checked here, not even times.

The result holds the verified header and claims and the RFC 7638 thumbprint of the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from jwt.types import Options

from keys.errors import (
    JwtAlgorithmNotAllowed,
    JwtEmbeddedKeyInvalid,
    JwtEmbeddedKeyPrivate,
    JwtWrongType,
)
from keys.jwk import PRIVATE_MEMBERS, JwkInvalid, jwk_thumbprint, public_key_from_jwk
from keys.kinds import PublicKey, allowed_algorithms
from keys.tokens import MAX_TOKEN_BYTES, decode_verified, pinned_algorithms, read_jose_header

# Claims are the caller's: only the signature is checked (pyjwt's sub/jti type checks stay on).
_SIGNATURE_ONLY: Options = {
    "verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
    "verify_aud": False, "verify_iss": False, "verify_sub": True, "verify_jti": True,
    "require": [], "enforce_minimum_key_length": True,
}


@dataclass(frozen=True)
class EmbeddedKeyJwt:
    """A JWT whose signature verified with the public key in its own ``jwk`` header."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    thumbprint: str  # RFC 7638 SHA-256 thumbprint of that key (DPoP's ``jkt``)


def _embedded_key(jwk: object) -> tuple[PublicKey, str]:
    if not isinstance(jwk, Mapping):
        raise JwtEmbeddedKeyInvalid("no jwk header (a JSON object): the token must carry its "
                                    "public key")
    leaked = PRIVATE_MEMBERS.intersection(jwk)
    if leaked:
        raise JwtEmbeddedKeyPrivate(f"the jwk header holds private or symmetric key material "
                                    f"{sorted(leaked)}")
    try:
        return public_key_from_jwk(jwk), jwk_thumbprint(jwk)
    except JwkInvalid as e:
        raise JwtEmbeddedKeyInvalid(f"jwk: {e.detail}") from e


def verify_embedded_key_jwt(token: str | bytes, *, algorithms: Sequence[str], typ: str,
                            max_bytes: int = MAX_TOKEN_BYTES) -> EmbeddedKeyJwt:
    """Verify ``token`` with the key in its ``jwk`` header (steps in the module docstring).

    Raises a :class:`JwtInvalid` subclass for any bad token and :class:`ValueError` for a bad
    call (an algorithm outside SUPPORTED_ALGORITHMS, an empty ``typ``).
    """
    pinned = pinned_algorithms(algorithms)
    if not typ:
        raise ValueError("typ must name the expected token type, e.g. 'dpop+jwt'")
    header = read_jose_header(token, pinned, max_bytes=max_bytes)
    found = header.get("typ")
    if not isinstance(found, str) or found.lower() != typ.lower():
        raise JwtWrongType(f"typ {found!r}, expected {typ!r}")
    key, thumbprint = _embedded_key(header.get("jwk"))
    alg = str(header["alg"])
    if alg not in allowed_algorithms(key):
        raise JwtAlgorithmNotAllowed(f"alg {alg} cannot be verified with the "
                                     f"{type(key).__name__} of the jwk header")
    verified_header, claims = decode_verified(token, key, alg, _SIGNATURE_ONLY)
    return EmbeddedKeyJwt(MappingProxyType(verified_header), MappingProxyType(claims),
                          thumbprint)
