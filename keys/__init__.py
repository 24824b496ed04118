"""Every key the platform uses: generation, storage, rotation, JWK/JWKS, JWT signing and checking.

Shared by ``attest`` (attestation-result JWTs), ``admission`` (image signing keys) and ``mec_api``
(access tokens, JWKS). Everything public is re-exported here; import from ``keys`` only.

Keys (:mod:`keys.kinds`)
    ``KeyKind`` (EC_P256 default, RSA_2048, RSA_3072, ED25519), ``generate_private_key(kind)``,
    ``key_kind(key)``, ``default_algorithm(key)`` (ES256 / RS256 / EdDSA),
    ``allowed_algorithms(key)`` (RSA also PS256), ``PrivateKey``/``PublicKey`` type aliases.

Files (:mod:`keys.storage`)
    ``save_private_key(path, key, passphrase=None)`` -- PKCS#8 PEM, 0600 from creation, atomic;
    ``load_private_key(path, passphrase=None)``; ``load_or_create_private_key(path, kind,
    passphrase=None)``; ``load_public_key(data)`` (PEM or DER) and ``load_public_key_file(path)``;
    ``public_key_pem(key)``; ``atomic_write(path, data, mode=0o600)``;
    ``load_or_create_secret(path, size=32)`` (a symmetric secret, same file rules).

JWK (:mod:`keys.jwk`)
    ``public_jwk(key)``, ``jwk_thumbprint(jwk)`` (RFC 7638, the ``kid``), ``key_thumbprint(key)``,
    ``public_key_from_jwk(jwk)``.

Key ring (:mod:`keys.ring`)
    ``KeyRing(active_key)`` with ``.active``, ``.rotate(new_key, now, overlap)``, ``.jwks(now)``,
    ``.prune(now)``, ``.save(dir)``, ``KeyRing.load(dir)``, ``KeyRing.load_or_create(dir, kind)``.

JWT (:mod:`keys.tokens`)
    ``sign_jwt(claims, ring, headers=None)`` and ``verify_jwt(token, jwks_or_ring, algorithms=,
    issuer=, audience=, now=None, leeway=30, required_claims=("exp", "iat", "iss"), typ=None)``
    -> ``VerifiedJwt`` (``.header``, ``.claims``, ``.kid``); ``check_jwt_times(claims, now,
    leeway)``.

JWT carrying its own key (:mod:`keys.embedded`, e.g. DPoP proofs)
    ``verify_embedded_key_jwt(token, algorithms=, typ=, max_bytes=)`` -> ``EmbeddedKeyJwt``
    (``.header``, ``.claims``, ``.thumbprint`` of the ``jwk`` header's key, RFC 7638).

Errors (:mod:`keys.errors`), all :class:`KeysError` with ``check``/``detail``/``hint``:
    ``KeyFileError`` (``KeyFileMissing``, ``KeyFileInaccessible``, ``KeyFileMalformed``,
    ``KeyPassphraseRequired``, ``KeyPassphraseWrong``, ``KeyFileNotEncrypted``,
    ``KeyFileInsecure``, ``UnsupportedKeyType``), ``KeyRingError``, ``JwkInvalid`` and
    ``JwtInvalid`` (``JwtMalformed``, ``JwtAlgorithmNotAllowed``, ``JwtUnknownKid``,
    ``JwtBadSignature``, ``JwtExpired``, ``JwtNotYetValid``, ``JwtWrongAudience``,
    ``JwtWrongIssuer``, ``JwtWrongType``, ``JwtMissingClaim``, ``JwtEmbeddedKeyInvalid`` and
    its ``JwtEmbeddedKeyPrivate``).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from keys.errors import (
    JwtAlgorithmNotAllowed,
    JwtBadSignature,
    JwtEmbeddedKeyInvalid,
    JwtEmbeddedKeyPrivate,
    JwtExpired,
    JwtInvalid,
    JwtMalformed,
    JwtMissingClaim,
    JwtNotYetValid,
    JwtUnknownKid,
    JwtWrongAudience,
    JwtWrongIssuer,
    JwtWrongType,
    KeyFileError,
    KeyFileInaccessible,
    KeyFileInsecure,
    KeyFileMalformed,
    KeyFileMissing,
    KeyFileNotEncrypted,
    KeyPassphraseRequired,
    KeyPassphraseWrong,
    KeyRingError,
    KeysError,
    UnsupportedKeyType,
)
from keys.jwk import JwkInvalid, jwk_thumbprint, key_thumbprint, public_jwk, public_key_from_jwk
from keys.kinds import (
    SUPPORTED_ALGORITHMS,
    KeyKind,
    PrivateKey,
    PublicKey,
    allowed_algorithms,
    default_algorithm,
    generate_private_key,
    key_kind,
)
from keys.ring import KeyRing, RingKey
from keys.storage import (
    atomic_write,
    load_or_create_private_key,
    load_or_create_secret,
    load_private_key,
    load_public_key,
    load_public_key_file,
    public_key_pem,
    save_private_key,
)

if TYPE_CHECKING:
    from keys.embedded import EmbeddedKeyJwt, verify_embedded_key_jwt
    from keys.tokens import VerifiedJwt, check_jwt_times, sign_jwt, verify_jwt

# The JWT modules need pyjwt, which the slim agent does not install (the agent extra in
# pyproject.toml): they load on first use, so `from keys import atomic_write` works there.
_JWT_NAMES = {
    "EmbeddedKeyJwt": "keys.embedded",
    "verify_embedded_key_jwt": "keys.embedded",
    "VerifiedJwt": "keys.tokens",
    "check_jwt_times": "keys.tokens",
    "sign_jwt": "keys.tokens",
    "verify_jwt": "keys.tokens",
}


def __getattr__(name: str) -> Any:
    module = _JWT_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'keys' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "SUPPORTED_ALGORITHMS",
    "EmbeddedKeyJwt",
    "JwkInvalid",
    "JwtAlgorithmNotAllowed",
    "JwtBadSignature",
    "JwtEmbeddedKeyInvalid",
    "JwtEmbeddedKeyPrivate",
    "JwtExpired",
    "JwtInvalid",
    "JwtMalformed",
    "JwtMissingClaim",
    "JwtNotYetValid",
    "JwtUnknownKid",
    "JwtWrongAudience",
    "JwtWrongIssuer",
    "JwtWrongType",
    "KeyFileError",
    "KeyFileInaccessible",
    "KeyFileInsecure",
    "KeyFileMalformed",
    "KeyFileMissing",
    "KeyFileNotEncrypted",
    "KeyKind",
    "KeyPassphraseRequired",
    "KeyPassphraseWrong",
    "KeyRing",
    "KeyRingError",
    "KeysError",
    "PrivateKey",
    "PublicKey",
    "RingKey",
    "UnsupportedKeyType",
    "VerifiedJwt",
    "allowed_algorithms",
    "atomic_write",
    "check_jwt_times",
    "default_algorithm",
    "generate_private_key",
    "jwk_thumbprint",
    "key_kind",
    "key_thumbprint",
    "load_or_create_private_key",
    "load_or_create_secret",
    "load_private_key",
    "load_public_key",
    "load_public_key_file",
    "public_jwk",
    "public_key_from_jwk",
    "public_key_pem",
    "save_private_key",
    "sign_jwt",
    "verify_embedded_key_jwt",
    "verify_jwt",
]
