"""TPM2B_PUBLIC / TPMT_PUBLIC for RSA and ECC keys (TPM 2.0 Part 2 §12.2), parse and encode.

Layout of TPMT_PUBLIC, each step checked by :func:`parse_tpmt_public`:

1. ``type`` (TPMI_ALG_PUBLIC): RSA or ECC; KEYEDHASH/SYMCIPHER objects are refused.
2. ``nameAlg`` (TPMI_ALG_HASH): the hash of the object's Name; SHA-1/256/384/512.
3. ``objectAttributes`` (TPMA_OBJECT): reserved bits must be clear.
4. ``authPolicy`` (TPM2B_DIGEST, at most 64 bytes).
5. ``parameters``: TPMS_RSA_PARMS (symmetric, scheme, keyBits, exponent) or TPMS_ECC_PARMS
   (symmetric, scheme, curveID, kdf). A scheme's ``details`` is present only when the scheme is
   not TPM_ALG_NULL (and is empty for RSAES; ECDAA also carries a ``count``).
6. ``unique``: the RSA modulus (TPM2B_PUBLIC_KEY_RSA) or the ECC point (two TPM2B_ECC_PARAMETER).

The object's Name (Part 1 §16) is ``nameAlg || H_nameAlg(marshalled TPMT_PUBLIC)``; it is what
MakeCredential binds a credential to and what a TPM reports as a key's identity. Because the
parser is strict and the encoder canonical, ``parse(x).marshal() == x`` for every accepted x, so
the Name is computed over exactly the bytes the TPM produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag
from functools import cached_property
from typing import Final, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attest.core.errors import MalformedStructure
from attest.core.tpm_marshal import (
    MAX_DIGEST,
    MAX_ECC_KEY_BYTES,
    MAX_RSA_KEY_BYTES,
    MAX_STRUCTURE,
    AlgorithmUnsupported,
    EccCurve,
    FieldValueInvalid,
    Reader,
    TpmAlg,
    check_size,
    digest,
    hash_info,
    tpm2b,
    u16,
    u32,
)


class PublicKeyInvalid(MalformedStructure):
    check = "structure.public_key"
    hint = "The TPM2B_PUBLIC does not hold a usable RSA or ECC public key; re-create the key."


class ObjectAttributes(IntFlag):
    """TPMA_OBJECT bits (Part 2 §8.3)."""

    NONE = 0
    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18
    X509_SIGN = 1 << 19


_ALL_ATTRIBUTES: Final = sum(ObjectAttributes)
SIGN: Final = ObjectAttributes.SIGN_ENCRYPT

# TCG EK Credential Profile 2.x, templates L-1 (RSA-2048) and L-2 (ECC P-256).
EK_ATTRIBUTES: Final = (ObjectAttributes.FIXED_TPM | ObjectAttributes.FIXED_PARENT
                        | ObjectAttributes.SENSITIVE_DATA_ORIGIN
                        | ObjectAttributes.ADMIN_WITH_POLICY | ObjectAttributes.RESTRICTED
                        | ObjectAttributes.DECRYPT)
# PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256.
EK_AUTH_POLICY_SHA256: Final = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
AK_ATTRIBUTES: Final = (ObjectAttributes.FIXED_TPM | ObjectAttributes.FIXED_PARENT
                        | ObjectAttributes.SENSITIVE_DATA_ORIGIN
                        | ObjectAttributes.USER_WITH_AUTH | ObjectAttributes.RESTRICTED | SIGN)

_RSA_SCHEMES: Final = frozenset({TpmAlg.RSASSA, TpmAlg.RSAPSS, TpmAlg.RSAES, TpmAlg.OAEP})
_ECC_SCHEMES: Final = frozenset({TpmAlg.ECDSA, TpmAlg.ECDH, TpmAlg.ECDAA, TpmAlg.ECSCHNORR,
                                 TpmAlg.SM2, TpmAlg.ECMQV})
# 0x0007 is TPM_ALG_MGF1 (not in TpmAlg because nothing else here uses it).
_KDF_SCHEMES: Final = frozenset({0x0007, TpmAlg.KDF1_SP800_56A, TpmAlg.KDF2,
                                 TpmAlg.KDF1_SP800_108})
_SYM_MODES: Final = {TpmAlg.CTR, TpmAlg.OFB, TpmAlg.CBC, TpmAlg.CFB, TpmAlg.ECB, TpmAlg.NULL}
_RSA_BITS: Final = {1024, 2048, 3072, 4096}
_CURVE_IDS: Final = frozenset(int(c) for c in EccCurve)
_CURVES: Final[dict[int, ec.EllipticCurve]] = {
    EccCurve.NIST_P256: ec.SECP256R1(), EccCurve.NIST_P384: ec.SECP384R1(),
    EccCurve.NIST_P521: ec.SECP521R1()}


@dataclass(frozen=True)
class SymDef:
    """TPMT_SYM_DEF_OBJECT when not NULL: the storage key's symmetric cipher (AES only)."""

    algorithm: int
    key_bits: int
    mode: int


@dataclass(frozen=True)
class Scheme:
    """A non-NULL TPMT_*_SCHEME / TPMT_KDF_SCHEME. ``hash_alg`` is NULL for RSAES."""

    scheme: int
    hash_alg: int = TpmAlg.NULL
    count: int = 0  # ECDAA only


class EccPoint(NamedTuple):
    x: bytes
    y: bytes


@dataclass(frozen=True)
class TpmPublic:
    """A parsed TPMT_PUBLIC of an RSA or ECC key. ``unique`` is the modulus or an EccPoint."""

    type: int
    name_alg: int
    object_attributes: ObjectAttributes
    auth_policy: bytes
    symmetric: SymDef | None
    scheme: Scheme | None
    unique: bytes | EccPoint
    key_bits: int = 0  # RSA
    exponent: int = 0  # RSA; 0 means 65537
    curve: int = 0  # ECC: TPM_ECC_CURVE
    kdf: Scheme | None = None  # ECC
    _marshalled: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Encoding validates every field, so a hand-built TpmPublic is as strict as a parsed one.
        object.__setattr__(self, "_marshalled", _encode_tpmt_public(self))

    def marshal(self) -> bytes:
        """TPMT_PUBLIC bytes (what the Name hashes)."""
        return self._marshalled

    def marshal_tpm2b(self) -> bytes:
        """TPM2B_PUBLIC bytes (size-prefixed TPMT_PUBLIC), as tpm2-tools writes ``.pub`` files."""
        return tpm2b(self._marshalled)

    def name(self) -> bytes:
        """The TPM Name: nameAlg (2 bytes) || H_nameAlg(TPMT_PUBLIC)."""
        return self._name

    @cached_property
    def _name(self) -> bytes:
        return u16(self.name_alg) + digest(self.name_alg, self._marshalled)

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` object (loaded once per TpmPublic, then reused)."""
        return self._key

    @cached_property
    def _key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        if isinstance(self.unique, EccPoint):
            curve = _CURVES.get(self.curve)
            if curve is None:
                raise AlgorithmUnsupported(f"TPMT_PUBLIC: ECC curve 0x{self.curve:04x}")
            x, y = (int.from_bytes(c, "big") for c in self.unique)
            try:
                return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
            except ValueError as exc:
                raise PublicKeyInvalid(f"ECC point is not on {curve.name}: {exc}") from None
        if len(self.unique) * 8 != self.key_bits:
            raise PublicKeyInvalid(
                f"RSA modulus is {len(self.unique)} bytes but keyBits is {self.key_bits}")
        n = int.from_bytes(self.unique, "big")
        try:
            return rsa.RSAPublicNumbers(self.exponent or 65537, n).public_key()
        except ValueError as exc:
            raise PublicKeyInvalid(f"RSA public numbers rejected: {exc}") from None


def _sym_encode(sym: SymDef | None) -> bytes:
    if sym is None:
        return u16(TpmAlg.NULL)
    return u16(sym.algorithm) + u16(sym.key_bits) + u16(sym.mode)


def _scheme_encode(s: Scheme | None) -> bytes:
    if s is None:
        return u16(TpmAlg.NULL)
    if s.scheme == TpmAlg.RSAES:  # TPMS_ENC_SCHEME_RSAES is empty
        return u16(s.scheme)
    out = u16(s.scheme) + u16(s.hash_alg)
    return out + u16(s.count) if s.scheme == TpmAlg.ECDAA else out


def _encode_tpmt_public(p: TpmPublic) -> bytes:
    _validate(p)
    head = (u16(p.type) + u16(p.name_alg) + u32(int(p.object_attributes)) + tpm2b(p.auth_policy)
            + _sym_encode(p.symmetric) + _scheme_encode(p.scheme))
    if p.type == TpmAlg.RSA:
        assert isinstance(p.unique, bytes)
        return head + u16(p.key_bits) + u32(p.exponent) + tpm2b(p.unique)
    assert isinstance(p.unique, EccPoint)
    return (head + u16(p.curve) + _scheme_encode(p.kdf) + tpm2b(p.unique.x)
            + tpm2b(p.unique.y))


def _validate_symmetric(s: SymDef) -> None:
    if s.algorithm != TpmAlg.AES or s.key_bits not in (128, 192, 256) \
            or s.mode not in _SYM_MODES:
        raise AlgorithmUnsupported(
            f"TPMT_PUBLIC.symmetric alg 0x{s.algorithm:04x}/{s.key_bits}/0x{s.mode:04x}")


def _validate_scheme(what: str, sch: Scheme, ok: frozenset[int]) -> None:
    if sch.scheme not in ok:
        raise AlgorithmUnsupported(f"TPMT_PUBLIC.{what} 0x{sch.scheme:04x}")
    if sch.scheme != TpmAlg.RSAES:
        hash_info(sch.hash_alg, f"TPMT_PUBLIC.{what}.hashAlg")
    if not 0 <= sch.count <= 0xFFFF:
        raise FieldValueInvalid(f"TPMT_PUBLIC.{what}.count {sch.count}")


def _validate_rsa(p: TpmPublic) -> None:
    if not isinstance(p.unique, bytes) or len(p.unique) > MAX_RSA_KEY_BYTES:
        raise FieldValueInvalid("TPMT_PUBLIC.unique: RSA keys need a modulus of <= 512 bytes")
    if p.key_bits not in _RSA_BITS:
        raise AlgorithmUnsupported(f"TPMT_PUBLIC.keyBits {p.key_bits}")
    if not 0 <= p.exponent <= 0xFFFFFFFF or p.exponent == 1:
        raise FieldValueInvalid(f"TPMT_PUBLIC.exponent {p.exponent}")
    if p.kdf is not None or p.curve:
        raise FieldValueInvalid("TPMT_PUBLIC: RSA key with ECC parameters")


def _validate_ecc(p: TpmPublic) -> None:
    if not isinstance(p.unique, EccPoint) or any(
            len(c) > MAX_ECC_KEY_BYTES for c in p.unique):
        raise FieldValueInvalid("TPMT_PUBLIC.unique: ECC point coordinates over 80 bytes")
    if p.curve not in _CURVE_IDS:
        raise AlgorithmUnsupported(f"TPMT_PUBLIC.curveID 0x{p.curve:04x}")
    if p.key_bits or p.exponent:
        raise FieldValueInvalid("TPMT_PUBLIC: ECC key with RSA parameters")


def _validate(p: TpmPublic) -> None:
    """Field rules shared by the parser and the builders (Part 2 §12.2), in this order: the
    name algorithm, attributes, authPolicy, symmetric, scheme and kdf, then the key type's own."""
    hash_info(p.name_alg, "TPMT_PUBLIC.nameAlg")
    if int(p.object_attributes) & ~_ALL_ATTRIBUTES:
        raise FieldValueInvalid(
            f"TPMT_PUBLIC.objectAttributes 0x{int(p.object_attributes):08x} sets reserved bits")
    if len(p.auth_policy) > MAX_DIGEST:
        raise FieldValueInvalid(f"TPMT_PUBLIC.authPolicy is {len(p.auth_policy)} bytes")
    if p.symmetric is not None:
        _validate_symmetric(p.symmetric)
    allowed = _RSA_SCHEMES if p.type == TpmAlg.RSA else _ECC_SCHEMES
    for what, sch, ok in (("scheme", p.scheme, allowed), ("kdf", p.kdf, _KDF_SCHEMES)):
        if sch is not None:
            _validate_scheme(what, sch, ok)
    if p.type == TpmAlg.RSA:
        _validate_rsa(p)
    elif p.type == TpmAlg.ECC:
        _validate_ecc(p)
    else:
        raise AlgorithmUnsupported(f"TPMT_PUBLIC.type 0x{p.type:04x} (only RSA and ECC keys)")


def _sym_parse(r: Reader) -> SymDef | None:
    alg = r.u16("symmetric.algorithm")
    if alg == TpmAlg.NULL:
        return None
    if alg != TpmAlg.AES:
        raise AlgorithmUnsupported(f"TPMT_PUBLIC.symmetric.algorithm 0x{alg:04x}")
    return SymDef(alg, r.u16("symmetric.keyBits"), r.u16("symmetric.mode"))


def _scheme_parse(r: Reader, what: str, allowed: frozenset[int]) -> Scheme | None:
    alg = r.u16(what)
    if alg == TpmAlg.NULL:
        return None
    if alg not in allowed:  # checked now: an unknown scheme's details have an unknown length
        raise AlgorithmUnsupported(f"TPMT_PUBLIC.{what} 0x{alg:04x}")
    if alg == TpmAlg.RSAES:
        return Scheme(alg)
    hash_alg = r.u16(what + ".hashAlg")
    count = r.u16(what + ".count") if alg == TpmAlg.ECDAA else 0
    return Scheme(alg, hash_alg, count)


def parse_tpmt_public(data: bytes) -> TpmPublic:
    """Parse a TPMT_PUBLIC (no size prefix); the whole input must be consumed."""
    check_size(data, "TPMT_PUBLIC")
    r = Reader(data, "TPMT_PUBLIC")
    key_type = r.u16("type")
    if key_type not in (TpmAlg.RSA, TpmAlg.ECC):
        raise AlgorithmUnsupported(f"TPMT_PUBLIC.type 0x{key_type:04x} (only RSA and ECC keys)")
    name_alg = r.u16("nameAlg")
    attrs = r.u32("objectAttributes")
    if attrs & ~_ALL_ATTRIBUTES:
        raise FieldValueInvalid(f"TPMT_PUBLIC.objectAttributes 0x{attrs:08x} sets reserved bits")
    policy = r.tpm2b("authPolicy", MAX_DIGEST)
    sym = _sym_parse(r)
    schemes = _RSA_SCHEMES if key_type == TpmAlg.RSA else _ECC_SCHEMES
    scheme = _scheme_parse(r, "scheme", schemes)
    pub: TpmPublic
    if key_type == TpmAlg.RSA:
        key_bits = r.u16("keyBits")
        exponent = r.u32("exponent")
        modulus = r.tpm2b("unique", MAX_RSA_KEY_BYTES)
        r.done()
        pub = TpmPublic(key_type, name_alg, ObjectAttributes(attrs), policy, sym, scheme,
                        modulus, key_bits=key_bits, exponent=exponent)
    else:
        curve = r.u16("curveID")
        kdf = _scheme_parse(r, "kdf", _KDF_SCHEMES)
        x = r.tpm2b("unique.x", MAX_ECC_KEY_BYTES)
        y = r.tpm2b("unique.y", MAX_ECC_KEY_BYTES)
        r.done()
        pub = TpmPublic(key_type, name_alg, ObjectAttributes(attrs), policy, sym, scheme,
                        EccPoint(x, y), curve=curve, kdf=kdf)
    if pub.marshal() != bytes(data):  # belt and braces: the Name must hash the TPM's bytes
        raise FieldValueInvalid("TPMT_PUBLIC is not in canonical form")
    return pub


def parse_tpm2b_public(data: bytes) -> TpmPublic:
    """Parse a TPM2B_PUBLIC (UINT16 size || TPMT_PUBLIC), e.g. tpm2_createak's ``-u`` file."""
    check_size(data, "TPM2B_PUBLIC")
    r = Reader(data, "TPM2B_PUBLIC")
    inner = r.tpm2b("publicArea", MAX_STRUCTURE)
    r.done()
    return parse_tpmt_public(inner)


def public_from_key(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    attributes: ObjectAttributes,
    name_alg: int = TpmAlg.SHA256,
    auth_policy: bytes = b"",
    symmetric: SymDef | None = None,
    scheme: Scheme | None = None,
) -> TpmPublic:
    """Build the TPMT_PUBLIC a TPM would report for ``key`` with these template values."""
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        exponent = 0 if nums.e == 65537 else nums.e  # TPMs report the default exponent as 0
        modulus = nums.n.to_bytes(key.key_size // 8, "big")
        return TpmPublic(TpmAlg.RSA, name_alg, attributes, auth_policy, symmetric, scheme,
                         modulus, key_bits=key.key_size, exponent=exponent)
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve_id = next((cid for cid, c in _CURVES.items() if c.name == key.curve.name), None)
        if curve_id is None:
            raise AlgorithmUnsupported(f"curve {key.curve.name} has no supported TPM curve id")
        size = (key.curve.key_size + 7) // 8
        en = key.public_numbers()
        point = EccPoint(en.x.to_bytes(size, "big"), en.y.to_bytes(size, "big"))
        return TpmPublic(TpmAlg.ECC, name_alg, attributes, auth_policy, symmetric, scheme,
                         point, curve=curve_id)
    raise AlgorithmUnsupported(f"{type(key).__name__} is neither an RSA nor an ECC public key")


def ek_public_from_key(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> TpmPublic:
    """The EK TpmPublic under the TCG default template (L-1 / L-2), e.g. from an EK certificate."""
    return public_from_key(key, attributes=EK_ATTRIBUTES, auth_policy=EK_AUTH_POLICY_SHA256,
                           symmetric=SymDef(TpmAlg.AES, 128, TpmAlg.CFB))
