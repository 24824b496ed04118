"""TPM 2.0 marshalling primitives (TPM 2.0 Part 2, "Structures"; Part 1 §"Canonicalization").

Every TPM structure on the wire is big-endian with no padding. Variable-length fields are
``TPM2B_*``: a ``UINT16`` size followed by that many bytes, and each ``TPM2B`` type has a maximum
size fixed by the specification. The :class:`Reader` enforces, in this order:

1. never read past the end (``StructureTruncated``),
2. every ``TPM2B`` size within that field's maximum (``StructureOversized``),
3. at the end of a top-level structure, no bytes left over (``TrailingBytes``).

Values outside the set the spec allows for a field (unknown algorithm ids, reserved attribute
bits, a boolean that is neither 0 nor 1) raise ``FieldValueInvalid`` / ``AlgorithmUnsupported``.
All of these derive from :class:`MalformedStructure`, so a parser fed arbitrary bytes raises only
that family, never ``IndexError``/``struct.error``/``ValueError``.

Also here: the algorithm identifiers (TPM_ALG_ID, Part 2 §6.3 / TCG Algorithm Registry) and the
hash algorithms this project accepts, with their digest sizes and ``cryptography`` classes.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

from cryptography.hazmat.primitives import hashes

from attest.core.errors import MalformedStructure


class StructureTruncated(MalformedStructure):
    check = "structure.truncated"
    hint = "The TPM structure ends early; the agent sent a cut-off buffer. Re-run the agent."


class StructureOversized(MalformedStructure):
    check = "structure.oversized"
    hint = "A TPM structure or field exceeds its TPM 2.0 maximum size; inspect the agent."


class TrailingBytes(MalformedStructure):
    check = "structure.trailing"
    hint = "Extra bytes follow a complete TPM structure; send exactly one structure per field."


class FieldValueInvalid(MalformedStructure):
    check = "structure.value"
    hint = "A TPM structure field has a value the TPM 2.0 specification does not allow."


class AlgorithmUnsupported(MalformedStructure):
    check = "structure.algorithm"
    hint = ("The structure uses an algorithm this verifier does not support; configure the agent "
            "for SHA-256/384/512, RSA or ECC NIST P-256/P-384/P-521 keys.")


class TpmAlg(IntEnum):
    """TPM_ALG_ID values used by this project (TCG Algorithm Registry)."""

    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    KEYEDHASH = 0x0008
    XOR = 0x000A
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    SM3_256 = 0x0012
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    SM2 = 0x001B
    ECSCHNORR = 0x001C
    ECMQV = 0x001D
    KDF1_SP800_56A = 0x0020
    KDF2 = 0x0021
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    CTR = 0x0040
    OFB = 0x0041
    CBC = 0x0042
    CFB = 0x0043
    ECB = 0x0044


class EccCurve(IntEnum):
    """TPM_ECC_CURVE values (Part 2 §6.4)."""

    NIST_P192 = 0x0001
    NIST_P224 = 0x0002
    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005
    BN_P256 = 0x0010
    BN_P638 = 0x0011
    SM2_P256 = 0x0020


# Hash algorithms accepted anywhere a TPMI_ALG_HASH appears: id -> (name, digest size, class).
HASH_ALGS: Final[dict[int, tuple[str, int, type[hashes.HashAlgorithm]]]] = {
    TpmAlg.SHA1: ("sha1", 20, hashes.SHA1),
    TpmAlg.SHA256: ("sha256", 32, hashes.SHA256),
    TpmAlg.SHA384: ("sha384", 48, hashes.SHA384),
    TpmAlg.SHA512: ("sha512", 64, hashes.SHA512),
}
HASH_BY_NAME: Final[dict[str, int]] = {name: alg for alg, (name, _, _) in HASH_ALGS.items()}

# Maximum sizes (Part 2, with the reference implementation's TPM_ALL profile values).
MAX_DIGEST: Final = 64  # sizeof(TPMU_HA) with SHA-512
MAX_NAME: Final = 2 + MAX_DIGEST  # TPM2B_NAME: alg id + digest (or a 4-byte handle)
MAX_DATA: Final = 2 + MAX_DIGEST  # TPM2B_DATA: sizeof(TPMT_HA)
MAX_RSA_KEY_BYTES: Final = 512  # RSA-4096
MAX_ECC_KEY_BYTES: Final = 80  # BN_P638
MAX_PCR_SELECT: Final = 8  # sizeofSelect; PC-client TPMs use 3 (24 PCRs)
MAX_PCR_BANKS: Final = 16  # HASH_COUNT bound on TPML_PCR_SELECTION.count
MAX_STRUCTURE: Final = 2048  # no TPM2B_PUBLIC / TPMS_ATTEST / TPMT_SIGNATURE is larger

_BYTES_TYPES: Final = (bytes, bytearray, memoryview)
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def hash_info(alg: int, what: str) -> tuple[str, int, type[hashes.HashAlgorithm]]:
    """(name, digest size, class) of a TPMI_ALG_HASH, or ``AlgorithmUnsupported``."""
    try:
        return HASH_ALGS[alg]
    except KeyError:
        raise AlgorithmUnsupported(f"{what}: hash algorithm 0x{alg:04x} is not supported") from None


def digest(alg: int, *parts: bytes) -> bytes:
    """H_alg(parts[0] || parts[1] || ...) with the ``cryptography`` hash for TPM_ALG_ID ``alg``."""
    h = hashes.Hash(hash_info(alg, "digest")[2]())
    for part in parts:
        h.update(part)
    return h.finalize()


def check_size(data: bytes, what: str, limit: int = MAX_STRUCTURE) -> None:
    """Refuse oversized input before parsing starts (cheap denial-of-service guard)."""
    if not isinstance(data, _BYTES_TYPES):
        raise FieldValueInvalid(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise StructureOversized(f"{what}: {len(data)} bytes exceeds the {limit}-byte maximum")


class Reader:
    """Cursor over a byte string; every read is bounds-checked and raises typed errors."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    @property
    def pos(self) -> int:
        return self._pos

    def _take(self, n: int, field: str) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise StructureTruncated(
                f"{self._what}.{field}: needs {n} bytes at offset {self._pos}, "
                f"{len(self._data) - self._pos} left")
        out = self._data[self._pos:end]
        self._pos = end
        return out

    def u8(self, field: str) -> int:
        return self._take(1, field)[0]

    def u16(self, field: str) -> int:
        v: int = _U16.unpack(self._take(2, field))[0]
        return v

    def u32(self, field: str) -> int:
        v: int = _U32.unpack(self._take(4, field))[0]
        return v

    def u64(self, field: str) -> int:
        v: int = _U64.unpack(self._take(8, field))[0]
        return v

    def raw(self, n: int, field: str) -> bytes:
        return self._take(n, field)

    def tpm2b(self, field: str, limit: int) -> bytes:
        """A TPM2B: UINT16 size then bytes; ``limit`` is that TPM2B type's maximum buffer size."""
        size = self.u16(field + ".size")
        if size > limit:
            raise StructureOversized(
                f"{self._what}.{field}: size {size} exceeds the maximum of {limit}")
        return self._take(size, field)

    def rest(self) -> bytes:
        out = self._data[self._pos:]
        self._pos = len(self._data)
        return out

    def sub(self, n: int, field: str) -> Reader:
        return Reader(self._take(n, field), f"{self._what}.{field}")

    def done(self) -> None:
        """Assert that the structure consumed every byte."""
        left = len(self._data) - self._pos
        if left:
            raise TrailingBytes(f"{self._what}: {left} unexpected bytes after offset {self._pos}")


def u16(v: int) -> bytes:
    return _U16.pack(v)


def u32(v: int) -> bytes:
    return _U32.pack(v)


def u64(v: int) -> bytes:
    return _U64.pack(v)


def tpm2b(data: bytes) -> bytes:
    """Marshal a TPM2B (size-prefixed buffer)."""
    if len(data) > 0xFFFF:
        raise StructureOversized(f"TPM2B of {len(data)} bytes cannot be marshalled")
    return _U16.pack(len(data)) + data
