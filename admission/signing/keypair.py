"""``umec keys generate``: a signing key pair as ``cosign generate-key-pair`` writes it.

``PREFIX.key``: an ECDSA P-256 private key, PKCS#8 DER, encrypted as go-securesystemslib's
``encrypted.Encrypt`` does (scrypt, NaCl secretbox; :func:`admission.core.keys_cosign.
encrypt_cosign_key`), armoured ``ENCRYPTED SIGSTORE PRIVATE KEY`` in 64-column PEM, mode 0600.
``PREFIX.pub``: the SubjectPublicKeyInfo PEM (``PUBLIC KEY``), mode 0644.

The scrypt parameters are N=32768, r=8, p=1 (go-securesystemslib's ``Legacy`` level). Its
``Decrypt`` accepts exactly three parameter sets -- Legacy (2^15), Standard (2^16, what current
cosign writes) and OWASP (2^17) -- and releases before those levels existed accepted 2^15 only,
so 2^15 is the one set every cosign reads; any other N would be refused with "unsupported scrypt
parameters". Existing files are never replaced unless ``force`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from admission.core.errors import AdmissionError
from admission.core.keys_cosign import COSIGN_PEM_TYPES, encrypt_cosign_key
from keys import KeyKind, PrivateKey, atomic_write, generate_private_key, public_key_pem

# go-securesystemslib encrypted: the only (N, r, p) its Decrypt accepts.
COSIGN_SCRYPT_LEVELS: dict[str, tuple[int, int, int]] = {
    "legacy": (32768, 8, 1), "standard": (65536, 8, 1), "owasp": (131072, 8, 1)}
DEFAULT_SCRYPT_LEVEL = "legacy"


class KeyPairExists(AdmissionError):
    check = "key.exists"
    hint = "pass --force to overwrite it, or choose another --output-key-prefix"


@dataclass(frozen=True)
class KeyPairFiles:
    private: Path
    public: Path


def key_pair_paths(prefix: str | Path) -> KeyPairFiles:
    return KeyPairFiles(Path(f"{prefix}.key"), Path(f"{prefix}.pub"))


def cosign_private_key_pem(key: PrivateKey, password: bytes,
                           level: str = DEFAULT_SCRYPT_LEVEL) -> bytes:
    """``key`` in cosign's encrypted format with one of the accepted scrypt levels."""
    return encrypt_cosign_key(key, password, scrypt=COSIGN_SCRYPT_LEVELS[level],
                              pem_type=COSIGN_PEM_TYPES[0])


def generate_key_pair(prefix: str | Path, password: bytes, *, force: bool = False,
                      level: str = DEFAULT_SCRYPT_LEVEL) -> KeyPairFiles:
    """Write ``PREFIX.key`` (0600) and ``PREFIX.pub`` (0644); refuse to replace either file
    unless ``force``."""
    files = key_pair_paths(prefix)
    if not force:
        for path in (files.private, files.public):
            if path.exists() or path.is_symlink():
                raise KeyPairExists(f"{path} already exists")
    key = generate_private_key(KeyKind.EC_P256)
    try:
        atomic_write(files.private, cosign_private_key_pem(key, password, level), mode=0o600,
                     overwrite=force)
        atomic_write(files.public, public_key_pem(key), mode=0o644, overwrite=force)
    except FileExistsError as exc:  # created between the check and the write
        raise KeyPairExists(f"{exc.filename or files.private} already exists") from None
    return files
