"""Key kinds the platform uses, key generation and the JWS algorithm of each kind.

Supported asymmetric keys (and nothing else -- every other type is an :class:`UnsupportedKeyType`):

=============  =======================  ================================
KeyKind        cryptography type        JWS ``alg``
=============  =======================  ================================
``EC_P256``    ``EllipticCurve`` P-256  ``ES256`` (default kind)
``RSA_2048``   ``RSA`` 2048 bits        ``RS256`` (``PS256`` also allowed)
``RSA_3072``   ``RSA`` 3072 bits        ``RS256`` (``PS256`` also allowed)
``ED25519``    ``Ed25519``              ``EdDSA``
=============  =======================  ================================

Keys read from elsewhere (an issuer's JWKS, a cosign public key) may be RSA of any size from
2048 bits up; :func:`check_supported` enforces that floor and the curve.
"""

from __future__ import annotations

import enum
from typing import TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keys.errors import UnsupportedKeyType

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

MIN_RSA_BITS = 2048

# Asymmetric algorithms only: "none" and HS* can never be produced or accepted by this package.
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset({"ES256", "RS256", "PS256", "EdDSA"})


class KeyKind(enum.Enum):
    EC_P256 = "ec-p256"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    ED25519 = "ed25519"


def generate_private_key(kind: KeyKind = KeyKind.EC_P256) -> PrivateKey:
    """A fresh private key of ``kind`` (RSA with public exponent 65537)."""
    if kind is KeyKind.EC_P256:
        return ec.generate_private_key(ec.SECP256R1())
    if kind is KeyKind.RSA_2048:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind is KeyKind.RSA_3072:
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ed25519.Ed25519PrivateKey.generate()


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey |
                  ed25519.Ed25519PrivateKey):
        return key.public_key()
    return key


def check_supported(key: object, where: str = "key") -> PublicKey:
    """Return the public half of ``key`` if it is of a supported type, else raise.

    ``where`` names the origin (a path, a kid) for the error detail.
    """
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey |
                      rsa.RSAPrivateKey | rsa.RSAPublicKey |
                      ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        raise UnsupportedKeyType(f"{where}: key type {type(key).__name__} is not supported")
    pub = _public(key)
    if isinstance(pub, ec.EllipticCurvePublicKey) and not isinstance(pub.curve, ec.SECP256R1):
        raise UnsupportedKeyType(f"{where}: EC curve {pub.curve.name} is not supported "
                                 "(only P-256)")
    if isinstance(pub, rsa.RSAPublicKey) and pub.key_size < MIN_RSA_BITS:
        raise UnsupportedKeyType(f"{where}: RSA key of {pub.key_size} bits is too small "
                                 f"(minimum {MIN_RSA_BITS})")
    return pub


def key_kind(key: PrivateKey | PublicKey) -> KeyKind:
    """The :class:`KeyKind` of ``key``; RSA sizes other than 2048/3072 are unsupported here."""
    pub = check_supported(key)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return KeyKind.EC_P256
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return KeyKind.ED25519
    if pub.key_size == 2048:
        return KeyKind.RSA_2048
    if pub.key_size == 3072:
        return KeyKind.RSA_3072
    raise UnsupportedKeyType(f"RSA key of {pub.key_size} bits has no KeyKind (2048 or 3072)")


def allowed_algorithms(key: PrivateKey | PublicKey) -> frozenset[str]:
    """Every JWS ``alg`` this key may be used with (RSA: RS256 and PS256)."""
    pub = check_supported(key)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return frozenset({"ES256"})
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return frozenset({"EdDSA"})
    return frozenset({"RS256", "PS256"})


def default_algorithm(key: PrivateKey | PublicKey) -> str:
    """The JWS ``alg`` used by default when signing with ``key``."""
    pub = check_supported(key)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return "ES256"
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return "EdDSA"
    return "RS256"
