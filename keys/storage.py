"""Private and public keys on disk.

Writing a private key (:func:`save_private_key`):

1. serialise as PKCS#8 PEM, encrypted with ``BestAvailableEncryption`` when a passphrase is given;
2. create a temporary file *in the target directory* with ``mkstemp`` -- mode 0600 from the first
   instant, so the key is never briefly world-readable whatever the umask;
3. write, ``fsync`` the file, then ``rename`` it over the target (atomic within one filesystem; a
   crash leaves either the old or the new key, never half a key) and ``fsync`` the directory so the
   rename itself is durable. With ``overwrite=False`` the rename is a ``link``, which fails if the
   target appeared meanwhile: two processes racing in :func:`load_or_create_private_key` end up
   using the same key.

Reading a private key (:func:`load_private_key`): open, ``fstat`` the *open* file (no
check-then-open race), refuse it when its mode lets others in (:func:`private_mode_problem`,
:class:`KeyFileInsecure`), decide from the PEM armour whether it is encrypted, then decrypt. Every
failure is a :class:`KeyFileError` subclass naming the path.

Which modes a private key file may have (PostgreSQL's rule for its server key, and the one a
Kubernetes Secret volume can meet):

* **owned by this process's user** (the file it wrote itself): nothing for group or others, so
  ``0600`` or ``0400``;
* **owned by root while this process is not root**: the group may also *read* it (``0640``,
  ``0440``); no group write or execute and nothing for others. Only root can make a file
  root-owned and give it a group, so the group is root's choice. This is what the kubelet
  writes for a Secret volume when the pod sets ``fsGroup``: a ``root:<fsGroup>`` file with
  ``defaultMode | 0440`` (the kubelet adds group read to a read-only volume), reached through a
  ``..data`` symlink. Without ``fsGroup`` the file is ``root:root`` with ``defaultMode`` and a
  non-root container can read it only if others may (refused);
* **owned by any other user**: refused whatever the mode (PostgreSQL's rule: the owner is this
  process's user or root). That user could replace or rewrite the key under us; a root process
  would otherwise sign with a key a non-root user chose.

The file is opened with ``O_NONBLOCK``: a FIFO (or a device) in the key's place is refused as
"not a regular file" at once instead of blocking the open until some writer appears.

Public keys (:func:`load_public_key`) are accepted as SubjectPublicKeyInfo PEM/DER or PKCS#1
``RSA PUBLIC KEY`` PEM.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from keys.errors import (
    KeyFileInaccessible,
    KeyFileInsecure,
    KeyFileMalformed,
    KeyFileMissing,
    KeyFileNotEncrypted,
    KeyPassphraseRequired,
    KeyPassphraseWrong,
    UnsupportedKeyType,
)
from keys.kinds import (
    KeyKind,
    PrivateKey,
    PublicKey,
    check_supported,
    generate_private_key,
    key_kind,
)

MAX_KEY_FILE_BYTES = 1 << 20  # a key file is a few KiB; refuse to slurp anything huge

Passphrase = bytes | str


def _passphrase_bytes(passphrase: Passphrase | None) -> bytes | None:
    if passphrase is None:
        return None
    raw = passphrase.encode() if isinstance(passphrase, str) else passphrase
    if not raw:
        # An empty passphrase would "encrypt" with nothing; treat it as a configuration bug.
        raise ValueError("empty passphrase; pass None for an unencrypted key")
    return raw


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes, *, mode: int = 0o600,
                 overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename in the same directory).

    The file has ``mode`` (default 0600) once visible under ``path``; the temporary file is 0600
    from creation. With ``overwrite=False``, raise :class:`FileExistsError` if ``path`` exists.
    """
    path = Path(path)
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails with FileExistsError instead of clobbering
            tmp.unlink()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(directory)


def private_key_pem(key: PrivateKey, passphrase: Passphrase | None = None) -> bytes:
    """PKCS#8 PEM of ``key``, encrypted with the best available scheme if ``passphrase``."""
    raw = _passphrase_bytes(passphrase)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(raw) if raw else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


def public_key_pem(key: PrivateKey | PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half of ``key``."""
    pub = check_supported(key)
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def save_private_key(path: Path | str, key: PrivateKey, passphrase: Passphrase | None = None,
                     *, overwrite: bool = True) -> None:
    """Store ``key`` at ``path`` as (optionally encrypted) PKCS#8 PEM, mode 0600, atomically."""
    check_supported(key, str(path))
    try:
        atomic_write(path, private_key_pem(key, passphrase), mode=0o600, overwrite=overwrite)
    except FileExistsError:
        raise
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        raise KeyFileInaccessible(f"{path}: cannot write key file ({e.strerror})") from e


def save_public_key(path: Path | str, key: PrivateKey | PublicKey) -> None:
    """Store the public half of ``key`` at ``path`` as PEM (mode 0644), atomically."""
    try:
        atomic_write(path, public_key_pem(key), mode=0o644)
    except (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        raise KeyFileInaccessible(f"{path}: cannot write key file ({e.strerror})") from e


def private_mode_problem(mode: int, owner: int, euid: int) -> str | None:
    """Why a private key file of this mode and owner is unsafe for user ``euid`` to trust, or
    None (the rule is in the module doc)."""
    perms = stat.S_IMODE(mode)
    if owner not in (euid, 0):
        return (f"private key is owned by uid {owner}, neither this process's user ({euid}) "
                "nor root: that user could replace it")
    if owner == 0 and euid != 0:
        if perms & 0o037:
            return (f"private key has mode {perms:04o} and is owned by root: group write or "
                    "others' access (expected 0640/0440 at most, e.g. a Secret volume with "
                    "fsGroup and defaultMode 0400)")
        return None
    if perms & 0o077:
        return (f"private key has mode {perms:04o}, group/others have access (expected 0600; "
                "a Kubernetes Secret: defaultMode 0400 with the pod's fsGroup)")
    return None


def _insecure_hint(owner: int) -> str | None:
    if owner in (os.geteuid(), 0):
        return None  # the mode: KeyFileInsecure's own hint (chmod)
    return (f"`chown {os.geteuid()}` the key file (or `chown root`) after checking it is the "
            "key you expect, and consider it compromised if that user could write it.")


def _read_key_file(path: Path, *, private: bool) -> bytes:
    try:
        # Symlinks are followed on purpose: Kubernetes mounts Secrets as links into ..data/.
        # O_NONBLOCK: a FIFO would otherwise block the open until a writer appears.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError as e:
        raise KeyFileMissing(f"{path}: no such key file") from e
    except OSError as e:
        # EACCES, ELOOP, ENOTDIR, ...
        raise KeyFileInaccessible(f"{path}: cannot open key file ({e.strerror})") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileMalformed(f"{path}: not a regular file")
        problem = private_mode_problem(st.st_mode, st.st_uid, os.geteuid()) if private else None
        if problem:
            raise KeyFileInsecure(f"{path}: {problem}", hint=_insecure_hint(st.st_uid))
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileMalformed(f"{path}: {st.st_size} bytes is too large for a key file")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileInaccessible(f"{path}: cannot read key file ({e.strerror})") from e
    finally:
        os.close(fd)


def _is_encrypted_pem(data: bytes) -> bool:
    # PKCS#8 encrypted armour, or the legacy OpenSSL "traditional" encrypted header.
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def parse_private_key(data: bytes, passphrase: Passphrase | None = None,
                      where: str = "private key") -> PrivateKey:
    """Parse a PEM private key (PKCS#8 or traditional), decrypting it with ``passphrase``."""
    raw = _passphrase_bytes(passphrase)
    if b"-----BEGIN" not in data:
        raise KeyFileMalformed(f"{where}: not a PEM private key")
    encrypted = _is_encrypted_pem(data)
    if encrypted and raw is None:
        raise KeyPassphraseRequired(f"{where}: key is encrypted and no passphrase was given")
    if not encrypted and raw is not None:
        raise KeyFileNotEncrypted(f"{where}: a passphrase was given but the key is not "
                                  "encrypted")
    try:
        key = serialization.load_pem_private_key(data, password=raw)
    except TypeError as e:
        # cryptography disagrees with our armour sniffing (e.g. a decoy header in a comment).
        if raw is None:
            raise KeyPassphraseRequired(f"{where}: key is encrypted and no passphrase was "
                                        "given") from e
        raise KeyFileNotEncrypted(f"{where}: a passphrase was given but the key is not "
                                  "encrypted") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        if encrypted:
            raise KeyPassphraseWrong(f"{where}: cannot decrypt the key (wrong passphrase or "
                                     "corrupt file)") from e
        raise KeyFileMalformed(f"{where}: not a valid private key ({e})") from e
    check_supported(key, where)
    return key  # type: ignore[return-value]  # narrowed by check_supported


def load_private_key(path: Path | str, passphrase: Passphrase | None = None) -> PrivateKey:
    """Load a private key file written by :func:`save_private_key` (or any PEM private key).

    Raises :class:`KeyFileMissing`, :class:`KeyFileInaccessible`, :class:`KeyFileInsecure`,
    :class:`KeyPassphraseRequired`, :class:`KeyPassphraseWrong`, :class:`KeyFileNotEncrypted`,
    :class:`KeyFileMalformed` or :class:`UnsupportedKeyType`.
    """
    path = Path(path)
    return parse_private_key(_read_key_file(path, private=True), passphrase, str(path))


def load_public_key(data: bytes, where: str = "public key") -> PublicKey:
    """Parse a public key from SubjectPublicKeyInfo PEM or DER, or PKCS#1 RSA PEM."""
    try:
        if b"-----BEGIN" in data:
            key: object = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileMalformed(f"{where}: not a PEM/DER public key ({e})") from e
    return check_supported(key, where)


def load_public_key_file(path: Path | str) -> PublicKey:
    """Load a public key file (PEM or DER)."""
    path = Path(path)
    return load_public_key(_read_key_file(path, private=False), str(path))


def _make_key_directory(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise KeyFileInaccessible(f"{path.parent}: cannot create key directory "
                                  f"({e.strerror})") from e


def load_or_create_private_key(path: Path | str, kind: KeyKind = KeyKind.EC_P256,
                               passphrase: Passphrase | None = None) -> PrivateKey:
    """The service key at ``path``, generated (kind ``kind``) and stored on first use.

    Concurrent first starts are safe: the key is published with a no-clobber link, and the loser
    of the race loads the winner's key. An existing key of another kind is refused
    (:class:`UnsupportedKeyType`) rather than silently used.
    """
    path = Path(path)
    try:
        key = load_private_key(path, passphrase)
    except KeyFileMissing:
        _make_key_directory(path)
        key = generate_private_key(kind)
        try:
            save_private_key(path, key, passphrase, overwrite=False)
        except FileExistsError:
            key = load_private_key(path, passphrase)
    try:
        actual = key_kind(key)
    except UnsupportedKeyType as e:
        raise UnsupportedKeyType(f"{path}: {e.detail}") from e
    if actual is not kind:
        raise UnsupportedKeyType(f"{path}: holds a {actual.value} key, configured kind is "
                                 f"{kind.value}; fix the setting or move the file away")
    return key


__all__ = [
    "Passphrase",
    "atomic_write",
    "load_or_create_private_key",
    "load_or_create_secret",
    "load_private_key",
    "load_public_key",
    "load_public_key_file",
    "parse_private_key",
    "private_key_pem",
    "private_mode_problem",
    "public_key_pem",
    "save_private_key",
    "save_public_key",
]


SECRET_BYTES = 32


def load_or_create_secret(path: Path | str, size: int = SECRET_BYTES) -> bytes:
    """The symmetric service secret at ``path`` (``size`` random bytes), created on first use.

    The same rules as private keys: the file's owner and mode are checked (a Secret volume with
    defaultMode 0400 and the pod's fsGroup passes), concurrent first starts agree on one value
    (no-clobber link, the loser reads the winner's), and a file of another length is refused
    (:class:`KeyFileMalformed`) rather than used.
    """
    path = Path(path)
    try:
        secret = _read_key_file(path, private=True)
    except KeyFileMissing:
        _make_key_directory(path)
        with contextlib.suppress(FileExistsError):  # a concurrent start won: read its secret
            atomic_write(path, os.urandom(size), overwrite=False)
        secret = _read_key_file(path, private=True)
    if len(secret) != size:
        raise KeyFileMalformed(f"{path}: holds {len(secret)} bytes, a secret here has {size}; "
                               "move the file away to have a new one created")
    return secret
