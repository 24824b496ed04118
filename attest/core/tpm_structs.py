"""TPMS_ATTEST and TPMT_SIGNATURE (TPM 2.0 Part 2 §10.12, §11.3), and the public-area re-exports.

TPMS_ATTEST, what a TPM signs for TPM2_Quote, parsed by :func:`parse_tpms_attest` in order:

1. ``magic`` (TPM_GENERATED, UINT32): 0xFF544347 for anything the TPM itself produced. It is
   *parsed* here and *checked* by ``attest.core.quote`` so the failure is named there.
2. ``type`` (TPMI_ST_ATTEST): TPM_ST_ATTEST_QUOTE (0x8018) for quotes; other types keep their
   ``attested`` bytes unparsed.
3. ``qualifiedSigner`` (TPM2B_NAME), ``extraData`` (TPM2B_DATA: the verifier's nonce).
4. ``clockInfo`` (TPMS_CLOCK_INFO: clock UINT64 ms, resetCount UINT32, restartCount UINT32,
   safe TPMI_YES_NO) and ``firmwareVersion`` (UINT64).
5. ``attested.quote`` (TPMS_QUOTE_INFO): ``pcrSelect`` (TPML_PCR_SELECTION: count, then per bank
   hash, sizeofSelect, bitmap where bit j of byte i selects PCR 8i+j) and ``pcrDigest``.

TPMT_SIGNATURE (:func:`parse_tpmt_signature`): ``sigAlg`` then, for RSASSA/RSAPSS, ``hash`` and
the signature (TPM2B_PUBLIC_KEY_RSA); for ECDSA, ``hash``, ``signatureR`` and ``signatureS``.
:func:`verify_signature` checks it over a message with a :class:`TpmPublic` key.

Note on clockInfo: for keys outside the endorsement/platform hierarchies a TPM obfuscates
resetCount, restartCount and firmwareVersion; AKs created under the EK (tpm2_createak, our
agent) are in the endorsement hierarchy, so these fields are real.
"""

from __future__ import annotations

import struct
from typing import NamedTuple, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attest.core.errors import AttestationError
from attest.core.tpm_marshal import (
    HASH_ALGS,
    HASH_BY_NAME,
    MAX_DATA,
    MAX_DIGEST,
    MAX_ECC_KEY_BYTES,
    MAX_NAME,
    MAX_PCR_BANKS,
    MAX_PCR_SELECT,
    MAX_RSA_KEY_BYTES,
    MAX_STRUCTURE,
    AlgorithmUnsupported,
    EccCurve,
    FieldValueInvalid,
    StructureOversized,
    StructureTruncated,
    TpmAlg,
    TrailingBytes,
    check_size,
    hash_info,
    tpm2b,
    u16,
    u32,
    u64,
)
from attest.core.tpm_public import (
    AK_ATTRIBUTES,
    EK_ATTRIBUTES,
    EK_AUTH_POLICY_SHA256,
    EccPoint,
    ObjectAttributes,
    PublicKeyInvalid,
    Scheme,
    SymDef,
    TpmPublic,
    ek_public_from_key,
    parse_tpm2b_public,
    parse_tpmt_public,
    public_from_key,
)

__all__ = [
    "AK_ATTRIBUTES", "EK_ATTRIBUTES", "EK_AUTH_POLICY_SHA256", "HASH_ALGS", "HASH_BY_NAME",
    "TPM_GENERATED_VALUE", "TPM_ST_ATTEST_QUOTE", "AlgorithmUnsupported", "ClockInfo", "EccCurve",
    "EccPoint", "FieldValueInvalid", "ObjectAttributes", "PublicKeyInvalid", "QuoteInfo",
    "Scheme", "SignatureInvalid", "StructureTruncated", "SymDef", "TpmAlg", "TpmPublic",
    "TpmSignature", "TpmsAttest", "TrailingBytes", "ek_public_from_key", "parse_tpm2b_public",
    "parse_tpms_attest", "parse_tpmt_public", "parse_tpmt_signature", "public_from_key",
    "verify_signature",
]

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
_HEAD = struct.Struct(">IHH")  # magic, type, qualifiedSigner.size
_CLOCK = struct.Struct(">QIIBQ")  # clockInfo, firmwareVersion
_SEL = struct.Struct(">HB")  # TPMS_PCR_SELECTION hash, sizeofSelect
# clockInfo, firmwareVersion, a one-bank TPML_PCR_SELECTION with a 3-byte bitmap, digest size
_ONE_BANK = struct.Struct(">QIIBQIHB3sH")
_HEAD_SIG = struct.Struct(">HHH")  # sigAlg, hash, first TPM2B size
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_SIGN = int(ObjectAttributes.SIGN_ENCRYPT)
# Stateless algorithm descriptors, built once (constants, not a cache of results).
_SIG_ALGORITHMS: dict[int, tuple[hashes.HashAlgorithm, ec.ECDSA, padding.PSS]] = {
    alg: (cls(), ec.ECDSA(cls()), padding.PSS(padding.MGF1(cls()), padding.PSS.AUTO))
    for alg, (_, _, cls) in HASH_ALGS.items() if alg != TpmAlg.SHA1}
_PKCS1V15 = padding.PKCS1v15()
_SIG_ALGS = frozenset((TpmAlg.ECDSA, TpmAlg.RSASSA, TpmAlg.RSAPSS))


class SignatureInvalid(AttestationError):
    check = "signature.invalid"
    hint = "The signature does not verify under the enrolled key; the evidence is not trustworthy."


def _u8(v: int) -> bytes:
    return bytes((v,))


class ClockInfo(NamedTuple):
    """TPMS_CLOCK_INFO: ``clock`` in ms since TPM manufacture/clear; counts of resets/restarts."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool


class QuoteInfo(NamedTuple):
    """TPMS_QUOTE_INFO; ``pcr_select`` maps bank name to PCR indices, in TPML order."""

    pcr_select: dict[str, frozenset[int]]
    pcr_digest: bytes


class TpmsAttest(NamedTuple):
    """TPMS_ATTEST. The parsed structures are immutable NamedTuples rather than frozen
    dataclasses because they are built on every quote and a frozen dataclass costs ~3x more
    to construct; use ``_replace`` to derive a modified copy."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    quote: QuoteInfo | None  # set when type is TPM_ST_ATTEST_QUOTE
    attested: bytes = b""  # the unparsed TPMU_ATTEST of any other type

    def marshal(self) -> bytes:
        """Canonical TPMS_ATTEST bytes (sizeofSelect = max(3, bytes needed))."""
        ci = self.clock_info
        head = (u32(self.magic) + u16(self.type) + tpm2b(self.qualified_signer)
                + tpm2b(self.extra_data) + u64(ci.clock) + u32(ci.reset_count)
                + u32(ci.restart_count) + _u8(int(ci.safe)) + u64(self.firmware_version))
        if self.quote is None:
            return head + self.attested
        parts = [u32(len(self.quote.pcr_select))]
        for bank, pcrs in self.quote.pcr_select.items():
            size = max(3, (max(pcrs, default=0) // 8) + 1)
            bitmap = bytearray(size)
            for i in pcrs:
                bitmap[i // 8] |= 1 << (i % 8)
            parts.append(u16(HASH_BY_NAME[bank]) + _u8(size) + bytes(bitmap))
        return head + b"".join(parts) + tpm2b(self.quote.pcr_digest)


# PCR indices selected by byte value v at bitmap position i: a constant table, so decoding a
# selection is a union of a few precomputed sets (the per-bit loop costs several µs per quote).
_BYTE_PCRS: tuple[tuple[frozenset[int], ...], ...] = tuple(
    tuple(frozenset(i * 8 + j for j in range(8) if v >> j & 1) for v in range(256))
    for i in range(MAX_PCR_SELECT))


_B0, _B1, _B2 = _BYTE_PCRS[0], _BYTE_PCRS[1], _BYTE_PCRS[2]
_HASH_NAMES = {alg: name for alg, (name, _, _) in HASH_ALGS.items()}


def _bitmap_pcrs(bitmap: bytes) -> frozenset[int]:
    if len(bitmap) == 3:  # what every PC-client TPM sends (24 PCRs)
        return _B0[bitmap[0]] | _B1[bitmap[1]] | _B2[bitmap[2]]
    return frozenset().union(*(_BYTE_PCRS[i][v] for i, v in enumerate(bitmap)))


def _check_consumed(p: int, n: int, what: str) -> None:
    """Every byte of the structure was read: no more (cut off), no less (trailing bytes)."""
    if p != n:
        if p > n:  # the last TPM2B's bytes were cut off
            raise StructureTruncated(f"{what}: needs {p} bytes, got {n}")
        raise TrailingBytes(f"{what}: {n - p} unexpected bytes after offset {p}")


def _attest_head(data: bytes) -> tuple[int, int, bytes, bytes, int]:
    """magic, type, qualifiedSigner, extraData and the offset after them."""
    magic, st, size = _HEAD.unpack_from(data, 0)
    if size > MAX_NAME:
        raise StructureOversized(f"TPMS_ATTEST.qualifiedSigner: size {size} > {MAX_NAME}")
    p = 8 + size
    signer = data[8:p]
    (size,) = _U16.unpack_from(data, p)
    if size > MAX_DATA:
        raise StructureOversized(f"TPMS_ATTEST.extraData: size {size} > {MAX_DATA}")
    p += 2
    return magic, st, signer, data[p:p + size], p + size


def _one_bank_quote(data: bytes, p: int, head: tuple[int, int, bytes, bytes]) -> TpmsAttest | None:
    """Fast path for the usual quote: one bank, sizeofSelect 3. Same checks as the general
    path; ``None`` when the quote is not of that shape (the general path then decides)."""
    (clock, resets, restarts, safe, fw, count, alg, sel_size, bitmap,
     size) = _ONE_BANK.unpack_from(data, p)
    if (count == 1 and sel_size == 3 and safe <= 1 and alg in _HASH_NAMES
            and size <= MAX_DIGEST and p + _ONE_BANK.size + size == len(data)):
        pcrs = _B0[bitmap[0]] | _B1[bitmap[1]] | _B2[bitmap[2]]
        return TpmsAttest(*head, ClockInfo(clock, resets, restarts, safe == 1), fw,
                          QuoteInfo({_HASH_NAMES[alg]: pcrs}, data[p + _ONE_BANK.size:]))
    return None


def _clock_info(data: bytes, p: int) -> tuple[ClockInfo, int]:
    """clockInfo and firmwareVersion."""
    clock, resets, restarts, safe, fw = _CLOCK.unpack_from(data, p)
    if safe > 1:
        raise FieldValueInvalid(f"TPMS_CLOCK_INFO.safe is {safe}, not YES/NO")
    return ClockInfo(clock, resets, restarts, safe == 1), fw


def _pcr_selection(data: bytes, p: int) -> tuple[dict[str, frozenset[int]], int]:
    """TPML_PCR_SELECTION at ``p``, and the offset after it."""
    (count,) = _U32.unpack_from(data, p)
    p += 4
    if count > MAX_PCR_BANKS:
        raise FieldValueInvalid(f"TPML_PCR_SELECTION.count {count} exceeds {MAX_PCR_BANKS}")
    select: dict[str, frozenset[int]] = {}
    for _ in range(count):
        alg, size = _SEL.unpack_from(data, p)
        name = _HASH_NAMES.get(alg) or hash_info(alg, "TPMS_PCR_SELECTION.hash")[0]
        if size > MAX_PCR_SELECT:
            raise FieldValueInvalid(
                f"TPMS_PCR_SELECTION.sizeofSelect {size} > {MAX_PCR_SELECT}")
        if name in select:
            # A TPM would hash the bank twice; a dict cannot say so and no honest agent asks.
            raise FieldValueInvalid(f"TPML_PCR_SELECTION lists bank {name} twice")
        p += 3
        select[name] = _bitmap_pcrs(data[p:p + size])
        p += size
    return select, p


def _pcr_digest(data: bytes, p: int) -> tuple[bytes, int]:
    (size,) = _U16.unpack_from(data, p)
    if size > MAX_DIGEST:
        raise StructureOversized(f"TPMS_ATTEST.pcrDigest: size {size} > {MAX_DIGEST}")
    p += 2
    return data[p:p + size], p + size


def parse_tpms_attest(data: bytes) -> TpmsAttest:
    """Parse TPMS_ATTEST (the ``-m`` message of tpm2_quote); every byte must be consumed.

    This is on the verifier's hot path, so it reads with precompiled ``struct`` formats
    instead of a generic cursor; every offset is still bounds-checked (``struct.error`` from
    ``unpack_from`` past the end becomes ``StructureTruncated``).
    """
    if type(data) is not bytes or len(data) > MAX_STRUCTURE:
        check_size(data, "TPMS_ATTEST")
        data = bytes(data)
    n = len(data)
    try:
        magic, st, signer, extra, p = _attest_head(data)
        if st == TPM_ST_ATTEST_QUOTE and n - p >= _ONE_BANK.size:
            fast = _one_bank_quote(data, p, (magic, st, signer, extra))
            if fast is not None:
                return fast
        ci, fw = _clock_info(data, p)
        p += _CLOCK.size
        if st != TPM_ST_ATTEST_QUOTE:
            return TpmsAttest(magic, st, signer, extra, ci, fw, None, data[p:])
        select, p = _pcr_selection(data, p)
        pcr_digest, p = _pcr_digest(data, p)
    except struct.error:
        raise StructureTruncated(f"TPMS_ATTEST: {n} bytes end inside a field") from None
    _check_consumed(p, n, "TPMS_ATTEST")
    return TpmsAttest(magic, st, signer, extra, ci, fw, QuoteInfo(select, pcr_digest))


class TpmSignature(NamedTuple):
    """TPMT_SIGNATURE: RSASSA/RSAPSS carry ``sig``; ECDSA carries ``r`` and ``s`` (big-endian)."""

    sig_alg: int
    hash_alg: int
    sig: bytes = b""
    r: bytes = b""
    s: bytes = b""

    def marshal(self) -> bytes:
        head = u16(self.sig_alg) + u16(self.hash_alg)
        if self.sig_alg == TpmAlg.ECDSA:
            return head + tpm2b(self.r) + tpm2b(self.s)
        return head + tpm2b(self.sig)


def _signature_head(data: bytes) -> tuple[int, int, int, int]:
    """sigAlg, hash, the first TPM2B's size, and the size limit of the algorithm's fields."""
    alg, hash_alg, size = _HEAD_SIG.unpack_from(data, 0)
    if alg not in _SIG_ALGS:
        raise AlgorithmUnsupported(
            f"TPMT_SIGNATURE.sigAlg 0x{alg:04x} (ECDSA, RSASSA, RSAPSS)")
    if hash_alg not in HASH_ALGS:
        hash_info(hash_alg, "TPMT_SIGNATURE.hash")
    limit = MAX_ECC_KEY_BYTES if alg == TpmAlg.ECDSA else MAX_RSA_KEY_BYTES
    if size > limit:
        raise StructureOversized(f"TPMT_SIGNATURE: field size {size} > {limit}")
    return alg, hash_alg, size, limit


def _signature_s(data: bytes, p: int, limit: int) -> tuple[bytes, int]:
    """ECDSA's signatureS at ``p``, and the offset after it."""
    (size,) = _U16.unpack_from(data, p)
    if size > limit:
        raise StructureOversized(f"TPMT_SIGNATURE.signatureS: size {size} > {limit}")
    p += 2
    return data[p:p + size], p + size


def parse_tpmt_signature(data: bytes) -> TpmSignature:
    """Parse a TPMT_SIGNATURE (tpm2_quote ``-s`` in the default "tss" format)."""
    if type(data) is not bytes or len(data) > MAX_STRUCTURE:
        check_size(data, "TPMT_SIGNATURE")
        data = bytes(data)
    n = len(data)
    try:
        alg, hash_alg, size, limit = _signature_head(data)
        p = 6 + size
        first = data[6:p]
        if alg == TpmAlg.ECDSA:
            second, p = _signature_s(data, p, limit)
    except struct.error:
        raise StructureTruncated(f"TPMT_SIGNATURE: {n} bytes end inside a field") from None
    _check_consumed(p, n, "TPMT_SIGNATURE")
    if alg == TpmAlg.ECDSA:
        return TpmSignature(alg, hash_alg, r=first, s=second)
    return TpmSignature(alg, hash_alg, sig=first)


def verify_signature(key: TpmPublic, sig: TpmSignature, message: bytes) -> None:
    """Verify ``sig`` over ``message`` (hashed with ``sig.hash_alg``) or raise SignatureInvalid.

    Rules beyond the maths: the key must be a signing key; a key with a fixed scheme only
    signs with that scheme and hash; SHA-1 signatures are refused (collisions are practical).
    """
    if not int(key.object_attributes) & _SIGN:  # plain int: IntFlag operators are slow
        raise SignatureInvalid("the key is not a signing key (objectAttributes.sign is clear)")
    scheme = key.scheme
    if scheme is not None and (scheme.scheme != sig.sig_alg or scheme.hash_alg != sig.hash_alg):
        raise SignatureInvalid(
            f"signature scheme 0x{sig.sig_alg:04x}/0x{sig.hash_alg:04x} differs from the key's "
            f"0x{scheme.scheme:04x}/0x{scheme.hash_alg:04x}")
    if sig.hash_alg == TpmAlg.SHA1:
        raise SignatureInvalid("SHA-1 signatures are not accepted")
    algs = _SIG_ALGORITHMS.get(sig.hash_alg)
    if algs is None:
        raise SignatureInvalid(f"unsupported signature hash 0x{sig.hash_alg:04x}")
    hash_obj, ecdsa, pss = algs
    pub = key.public_key()
    try:
        if sig.sig_alg == TpmAlg.ECDSA:
            # key.type, not isinstance(): ABC instance checks are slow and this is the hot path.
            if key.type != TpmAlg.ECC:
                raise SignatureInvalid("an ECDSA signature cannot come from an RSA key")
            der = encode_dss_signature(int.from_bytes(sig.r, "big"), int.from_bytes(sig.s, "big"))
            cast(ec.EllipticCurvePublicKey, pub).verify(der, message, ecdsa)
            return
        if key.type != TpmAlg.RSA:
            raise SignatureInvalid("an RSA signature cannot come from an ECC key")
        pad = _PKCS1V15 if sig.sig_alg == TpmAlg.RSASSA else pss
        cast(rsa.RSAPublicKey, pub).verify(sig.sig, message, pad, hash_obj)
    except InvalidSignature:
        raise SignatureInvalid(
            f"{TpmAlg(sig.sig_alg).name} signature does not verify under the key "
            f"{key.name().hex()}") from None
