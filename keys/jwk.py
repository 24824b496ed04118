"""Public JWKs (RFC 7517/7518/8037) and JWK thumbprints (RFC 7638).

* :func:`public_jwk` -- the public members of a key, nothing else: ``EC`` (``crv`` P-256, ``x``,
  ``y`` as 32-byte big-endian coordinates), ``RSA`` (``n``, ``e`` as minimal big-endian
  integers), ``OKP`` (``crv`` Ed25519, ``x`` the raw 32-byte public key). All base64url without
  padding.
* :func:`jwk_thumbprint` -- RFC 7638 §3: take only the *required* members of the key type, encode
  them as JSON with lexicographically sorted member names and no whitespace, SHA-256, base64url.
  Optional members (``kid``, ``alg``, ``use``) do not change it, so it is a stable ``kid``.
* :func:`public_key_from_jwk` -- the reverse of :func:`public_jwk`, strict: unknown ``kty``/``crv``,
  bad base64url, wrong coordinate length, a point off the curve, an RSA modulus below 2048 bits, or
  any *private* member (``d``, ``p``, ...: a published JWKS must never carry them) raise
  :class:`JwkInvalid`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keys.errors import KeysError, UnsupportedKeyType
from keys.kinds import PrivateKey, PublicKey, check_supported


class JwkInvalid(KeysError):
    """A JWK (or JWKS) is not a usable public key of a supported kind."""

    check = "keys.jwk"
    hint = "Publish a public JWK of an ECDSA P-256, RSA (>= 2048 bits) or Ed25519 key."


# Members that the RFC 7638 thumbprint covers, per kty.
_REQUIRED_MEMBERS: dict[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}
# Private (RSA, EC, OKP) and symmetric (oct "k") members: never in a public JWK.
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(value: object, member: str = "value") -> bytes:
    """Strict unpadded base64url (RFC 7515 §2): anything else is :class:`JwkInvalid`."""
    if not isinstance(value, str) or not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise JwkInvalid(f"member {member!r} is not unpadded base64url")
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _uint(value: int) -> str:
    return b64url_encode(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def public_jwk(key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public JWK of ``key`` (required members only; add kid/alg/use yourself)."""
    pub = check_supported(key)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        nums = pub.public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": b64url_encode(nums.x.to_bytes(32, "big")),
                "y": b64url_encode(nums.y.to_bytes(32, "big"))}
    if isinstance(pub, rsa.RSAPublicKey):
        rnums = pub.public_numbers()
        return {"kty": "RSA", "n": _uint(rnums.n), "e": _uint(rnums.e)}
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of ``jwk``, base64url (43 characters)."""
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _REQUIRED_MEMBERS:
        raise JwkInvalid(f"unsupported kty {kty!r} for a thumbprint")
    members: dict[str, str] = {}
    for name in _REQUIRED_MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str) or not value:
            raise JwkInvalid(f"{kty} JWK lacks required member {name!r}")
        members[name] = value
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def key_thumbprint(key: PrivateKey | PublicKey) -> str:
    """RFC 7638 thumbprint of a key: the platform's ``kid`` for it."""
    return jwk_thumbprint(public_jwk(key))


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """Strictly parse a public JWK into a ``cryptography`` public key."""
    if not isinstance(jwk, Mapping):
        raise JwkInvalid(f"a JWK must be a JSON object, got {type(jwk).__name__}")
    leaked = PRIVATE_MEMBERS.intersection(jwk)
    if leaked:
        raise JwkInvalid(f"JWK kid={jwk.get('kid')!r} carries private members "
                         f"{sorted(leaked)}: it must never be published")
    kty, crv = jwk.get("kty"), jwk.get("crv")
    try:
        if kty == "EC" and crv == "P-256":
            x, y = b64url_decode(jwk.get("x"), "x"), b64url_decode(jwk.get("y"), "y")
            if len(x) != 32 or len(y) != 32:
                raise JwkInvalid("P-256 coordinates must be 32 bytes each")
            key: object = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()).public_key()
        elif kty == "RSA":
            n, e = b64url_decode(jwk.get("n"), "n"), b64url_decode(jwk.get("e"), "e")
            key = rsa.RSAPublicNumbers(int.from_bytes(e, "big"),
                                       int.from_bytes(n, "big")).public_key()
        elif kty == "OKP" and crv == "Ed25519":
            x = b64url_decode(jwk.get("x"), "x")
            key = ed25519.Ed25519PublicKey.from_public_bytes(x)
        else:
            raise JwkInvalid(f"unsupported JWK kty={kty!r} crv={crv!r}")
    except ValueError as e:
        # cryptography: point not on the curve, bad RSA numbers, wrong Ed25519 length.
        raise JwkInvalid(f"JWK kid={jwk.get('kid')!r} is not a valid {kty} key: {e}") from e
    try:
        return check_supported(key, f"JWK kid={jwk.get('kid')!r}")
    except UnsupportedKeyType as e:
        raise JwkInvalid(e.detail) from e
