"""Signing and verification keys in the forms cosign users have them (pure: bytes in).

Public keys: SubjectPublicKeyInfo PEM (ECDSA P-256, RSA >= 2048, Ed25519), parsed by the shared
``keys`` package, which also enforces the supported types.

Private keys, in order of the PEM armour found:

``ENCRYPTED SIGSTORE PRIVATE KEY`` / ``ENCRYPTED COSIGN PRIVATE KEY`` (``cosign generate-key-pair``)
    The PEM body is JSON from go-securesystemslib's ``encrypted`` package::

        {"kdf":{"name":"scrypt","params":{"N":..,"r":..,"p":..},"salt":B64},
         "cipher":{"name":"nacl/secretbox","nonce":B64},"ciphertext":B64}

    1. key = scrypt(password, salt, N, r, p, 32 bytes) -- parameters bounded by
       :data:`MAX_SCRYPT_N` etc. so a hostile file cannot make us allocate gigabytes;
    2. plaintext = NaCl secretbox (XSalsa20-Poly1305) open(ciphertext, nonce, key); a failed MAC
       means a wrong password (or a corrupted file: they are indistinguishable by design);
    3. plaintext is a PKCS#8 DER private key.

    ``cryptography`` has scrypt but not XSalsa20, so the secretbox step uses PyNaCl (libsodium).
``PRIVATE KEY``, ``EC PRIVATE KEY``, ``RSA PRIVATE KEY``, ``ENCRYPTED PRIVATE KEY``
    Ordinary PEM via ``cryptography`` (the password, if any, decrypts PKCS#8).

The password comes from ``COSIGN_PASSWORD`` the way cosign reads it; the caller passes the
environment mapping in (:func:`password_from_env`) so this module never reads the process state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from admission.core.errors import AdmissionError
from keys import KeysError, PrivateKey, PublicKey, load_public_key
from keys.kinds import check_supported

COSIGN_PEM_TYPES = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
PASSWORD_ENV = "COSIGN_PASSWORD"
MAX_SCRYPT_N = 1 << 17          # 128 MiB of scrypt memory at r=8; cosign writes 2^15 or 2^16
MAX_SCRYPT_R = 16
MAX_SCRYPT_P = 4
MAX_KEY_BYTES = 64 << 10
DEFAULT_SCRYPT = (65536, 8, 1)  # what current cosign writes


class SigningKeyInvalid(AdmissionError):
    check = "key.invalid"
    hint = ("The key is not a supported PEM or cosign key (ECDSA P-256, RSA >= 2048, Ed25519); "
            "check the file or the environment variable holding it.")


class SigningKeyPassword(AdmissionError):
    check = "key.password"
    hint = "The key is encrypted: set COSIGN_PASSWORD to its password (empty if it has none)."


def password_from_env(env: Mapping[str, str]) -> bytes | None:
    value = env.get(PASSWORD_ENV)
    return None if value is None else value.encode()


def load_verification_key(pem: bytes, where: str = "key") -> PublicKey:
    """A public key from PEM/DER; unsupported types and garbage are :class:`SigningKeyInvalid`."""
    try:
        return load_public_key(pem)
    except KeysError as exc:
        raise SigningKeyInvalid(f"{where}: {exc.detail}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyInvalid(f"{where}: {exc}") from None


def key_hint(key: PublicKey | PrivateKey) -> str:
    """base64(SHA-256(SPKI DER)): the ``publicKey.hint`` our bundles carry."""
    public = check_supported(key)
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def _pem_body(text: str, pem_type: str) -> bytes:
    begin, end = f"-----BEGIN {pem_type}-----", f"-----END {pem_type}-----"
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise SigningKeyInvalid(f"no complete {pem_type} block")
    body = "".join(text[start + len(begin):stop].split())
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyInvalid(f"{pem_type} body is not base64") from None


def _b64_field(doc: object, *path: str) -> bytes:
    value: object = doc
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    if not isinstance(value, str):
        raise SigningKeyInvalid(f"cosign key lacks {'.'.join(path)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyInvalid(f"cosign key {'.'.join(path)} is not base64") from None


def _scrypt_params(doc: dict[str, object]) -> tuple[int, int, int]:
    kdf = doc.get("kdf")
    params = kdf.get("params") if isinstance(kdf, dict) else None
    if not isinstance(kdf, dict) or kdf.get("name") != "scrypt" or not isinstance(params, dict):
        raise SigningKeyInvalid("cosign key KDF is not scrypt")
    n, r, p = params.get("N"), params.get("r"), params.get("p")
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (n, r, p)):
        raise SigningKeyInvalid("cosign key scrypt parameters are not integers")
    assert isinstance(n, int) and isinstance(r, int) and isinstance(p, int)
    if not (2 <= n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= MAX_SCRYPT_R
            and 1 <= p <= MAX_SCRYPT_P):
        raise SigningKeyInvalid(f"cosign key scrypt parameters N={n} r={r} p={p} out of bounds")
    return n, r, p


def decrypt_cosign_key(pem: bytes, password: bytes) -> PrivateKey:
    """Decrypt a cosign ``ENCRYPTED SIGSTORE/COSIGN PRIVATE KEY`` (steps in the module doc)."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox

    text = pem.decode("ascii", "replace")
    pem_type = next((t for t in COSIGN_PEM_TYPES if f"BEGIN {t}-" in text), None)
    if pem_type is None:
        raise SigningKeyInvalid("not a cosign encrypted private key")
    try:
        doc = json.loads(_pem_body(text, pem_type))
    except (ValueError, RecursionError):
        raise SigningKeyInvalid("cosign key body is not JSON") from None
    if not isinstance(doc, dict):
        raise SigningKeyInvalid("cosign key body is not a JSON object")
    cipher = doc.get("cipher")
    if not isinstance(cipher, dict) or cipher.get("name") != "nacl/secretbox":
        raise SigningKeyInvalid("cosign key cipher is not nacl/secretbox")
    n, r, p = _scrypt_params(doc)
    salt, nonce = _b64_field(doc, "kdf", "salt"), _b64_field(doc, "cipher", "nonce")
    ciphertext = _b64_field(doc, "ciphertext")
    if len(nonce) != SecretBox.NONCE_SIZE:
        raise SigningKeyInvalid(f"cosign key nonce is {len(nonce)} bytes, not 24")
    secret = Scrypt(salt=salt, length=SecretBox.KEY_SIZE, n=n, r=r, p=p).derive(password)
    try:
        plaintext = SecretBox(secret).decrypt(ciphertext, nonce)
    except CryptoError:
        raise SigningKeyPassword("cosign key did not decrypt: wrong COSIGN_PASSWORD") from None
    try:
        key = serialization.load_der_private_key(plaintext, password=None)
        check_supported(key)
    except (ValueError, TypeError, UnsupportedAlgorithm, KeysError) as exc:
        raise SigningKeyInvalid(f"decrypted cosign key is not a supported PKCS#8 key: "
                                f"{exc}") from None
    return key  # type: ignore[return-value]  # check_supported narrowed the type


def encrypt_cosign_key(key: PrivateKey, password: bytes,
                       scrypt: tuple[int, int, int] = DEFAULT_SCRYPT,
                       pem_type: str = COSIGN_PEM_TYPES[0]) -> bytes:
    """Write ``key`` as ``cosign generate-key-pair`` does (PEM lines of 64 characters)."""
    from nacl.secret import SecretBox

    n, r, p = scrypt
    salt, nonce = os.urandom(32), os.urandom(SecretBox.NONCE_SIZE)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    secret = Scrypt(salt=salt, length=SecretBox.KEY_SIZE, n=n, r=r, p=p).derive(password)
    ciphertext = SecretBox(secret).encrypt(der, nonce).ciphertext

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    body = json.dumps({"kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p},
                               "salt": b64(salt)},
                       "cipher": {"name": "nacl/secretbox", "nonce": b64(nonce)},
                       "ciphertext": b64(ciphertext)}, separators=(",", ":")).encode()
    encoded = base64.b64encode(body).decode()
    lines = [encoded[i:i + 64] for i in range(0, len(encoded), 64)]
    return (f"-----BEGIN {pem_type}-----\n" + "\n".join(lines) +
            f"\n-----END {pem_type}-----\n").encode()


def load_signing_key(pem: bytes, password: bytes | None, where: str = "key") -> PrivateKey:
    """A private key from cosign's encrypted format or ordinary PEM (see the module doc)."""
    if len(pem) > MAX_KEY_BYTES:
        raise SigningKeyInvalid(f"{where}: {len(pem)} bytes is too large for a key")
    if any(f"BEGIN {t}-".encode() in pem for t in COSIGN_PEM_TYPES):
        if password is None:
            raise SigningKeyPassword(f"{where}: cosign key needs COSIGN_PASSWORD")
        try:
            return decrypt_cosign_key(pem, password)
        except AdmissionError as exc:
            raise type(exc)(f"{where}: {exc.detail}") from None
    encrypted = b"ENCRYPTED PRIVATE KEY" in pem or b"Proc-Type: 4,ENCRYPTED" in pem
    try:
        key = serialization.load_pem_private_key(pem, password=password if encrypted else None)
        check_supported(key)
    except TypeError:
        raise SigningKeyPassword(f"{where}: encrypted PEM key needs COSIGN_PASSWORD") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        if encrypted:
            raise SigningKeyPassword(f"{where}: PEM key did not decrypt ({exc})") from None
        raise SigningKeyInvalid(f"{where}: {exc}") from None
    except KeysError as exc:
        raise SigningKeyInvalid(f"{where}: {exc.detail}") from None
    return key  # type: ignore[return-value]  # check_supported admitted only PrivateKey types
