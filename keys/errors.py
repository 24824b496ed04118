"""Typed failures of key handling and JWT checks.

Each is a :class:`kernel.errors.CheckedError` (``check`` is a stable dotted id, ``detail`` names
the offending value, ``hint`` says what to do next) rooted in :class:`KeysError`: ``keys`` is
shared by ``attest``, ``admission`` and ``mec_api`` and must not import any of them. Key file and
key ring errors are about the server's own files (``public = False``: a route that lets one
escape answers the generic 500); a rejected JWT is a 401.

Three families:

* :class:`KeyFileError` -- a key file on disk could not be used (missing, encrypted, insecure, ...).
  The detail always names the path.
* :class:`KeyRingError` -- a persisted key ring directory is inconsistent.
* :class:`JwtInvalid` -- a JWT was rejected. Every pyjwt exception is mapped onto exactly one of
  these, so callers never see ``jwt.exceptions`` and can turn any rejection into a 401 with a hint.
"""

from __future__ import annotations

from kernel.errors import CheckedError


class KeysError(CheckedError):
    """Base of every error raised by the ``keys`` package."""

    check = "keys"
    hint = "Check the key configuration of this service."
    public = False


# --- key files -------------------------------------------------------------------------------


class KeyFileError(KeysError):
    """A key file could not be read, parsed or trusted."""

    check = "keys.file"
    hint = "Check the key file path and its contents."


class KeyFileMissing(KeyFileError):
    check = "keys.file.missing"
    hint = ("Create the key (e.g. let the service generate it on first start) or fix the "
            "configured path.")


class KeyFileInaccessible(KeyFileError):
    check = "keys.file.inaccessible"
    hint = ("Make the key file and its directory readable and writable by the service user "
            "(and only by it).")


class KeyFileMalformed(KeyFileError):
    check = "keys.file.malformed"
    hint = ("The file is not a PEM/DER key; restore it from backup or generate a new key "
            "and publish its public part.")


class KeyPassphraseRequired(KeyFileError):
    check = "keys.file.passphrase_required"
    hint = "The private key is encrypted: configure its passphrase for this service."


class KeyPassphraseWrong(KeyFileError):
    check = "keys.file.passphrase_wrong"
    hint = "The configured passphrase does not decrypt this key; fix the passphrase setting."


class KeyFileNotEncrypted(KeyFileError):
    check = "keys.file.not_encrypted"
    hint = ("A passphrase is configured but the key file is unencrypted: it may have been "
            "replaced. Verify the file, then re-encrypt it or drop the passphrase setting.")


class KeyFileInsecure(KeyFileError):
    check = "keys.file.insecure"
    hint = ("A private key must be accessible by its owner only: run `chmod 600` on it and "
            "consider the key compromised if others could read it.")


class UnsupportedKeyType(KeyFileError):
    check = "keys.type.unsupported"
    hint = "Use an ECDSA P-256, RSA (2048 bits or more) or Ed25519 key."


# --- key rings -------------------------------------------------------------------------------


class KeyRingError(KeysError):
    check = "keys.ring"
    hint = ("The key ring directory is inconsistent; restore it from backup or remove it to "
            "start a new ring (tokens signed by the old keys will stop verifying).")


# --- JWTs ------------------------------------------------------------------------------------


class JwtInvalid(KeysError):
    """A JWT was rejected."""

    check = "jwt"
    status = 401
    public = True
    hint = "Obtain a new token from the issuer."


class JwtMalformed(JwtInvalid):
    check = "jwt.malformed"
    hint = "The token is not a well-formed signed JWT; send the token exactly as issued."


class JwtAlgorithmNotAllowed(JwtInvalid):
    check = "jwt.alg"
    hint = ("The token's algorithm is not accepted here (or does not match its key); use a "
            "token from the configured issuer.")


class JwtUnknownKid(JwtInvalid):
    check = "jwt.kid"
    hint = ("No published key has this kid: the signing key is unknown or was retired. "
            "Obtain a new token; if it persists, refresh the issuer's JWKS.")


class JwtBadSignature(JwtInvalid):
    check = "jwt.signature"
    hint = "The signature does not verify: the token was altered or not issued by this issuer."


class JwtExpired(JwtInvalid):
    check = "jwt.exp"
    hint = "The token has expired; obtain a new one (and check the clocks if this is frequent)."


class JwtNotYetValid(JwtInvalid):
    check = "jwt.nbf"
    hint = "The token is not valid yet (nbf/iat in the future); check clock synchronisation."


class JwtWrongAudience(JwtInvalid):
    check = "jwt.aud"
    hint = "The token was issued for another audience; request a token for this API."


class JwtWrongIssuer(JwtInvalid):
    check = "jwt.iss"
    hint = "The token comes from an issuer this service does not trust."


class JwtWrongType(JwtInvalid):
    check = "jwt.typ"
    hint = "The token is of another kind (typ header); use the token type this API expects."


class JwtMissingClaim(JwtInvalid):
    check = "jwt.claim_missing"
    hint = "The token lacks a required claim; obtain a token from the configured issuer."


class JwtEmbeddedKeyInvalid(JwtInvalid):
    """The ``jwk`` header of a token that carries its own key (e.g. a DPoP proof) is unusable."""

    check = "jwt.jwk"
    hint = ("Put the signing key's public JWK in the jwk header: an ECDSA P-256, RSA "
            "(>= 2048 bits) or Ed25519 key, with only its public members.")


class JwtEmbeddedKeyPrivate(JwtEmbeddedKeyInvalid):
    check = "jwt.jwk.private"
    hint = ("The jwk header carries private or symmetric key material (d, p, q, ..., k), so "
            "that key is exposed: generate a new key pair and send only its public members.")
