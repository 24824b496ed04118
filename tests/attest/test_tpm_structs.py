"""TPM 2.0 structure parsing/encoding: round trips, every parse error, and fuzzing.

Real TPM-produced bytes are checked against swtpm in test_quote.py / test_credential.py; here
structures are built with ``cryptography`` keys so every field can be controlled.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.core.errors import MalformedStructure
from attest.core.tpm_marshal import (
    AlgorithmUnsupported,
    FieldValueInvalid,
    StructureOversized,
    StructureTruncated,
    TpmAlg,
    TrailingBytes,
    digest,
)
from attest.core.tpm_structs import (
    AK_ATTRIBUTES,
    EK_ATTRIBUTES,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    ClockInfo,
    EccPoint,
    ObjectAttributes,
    PublicKeyInvalid,
    QuoteInfo,
    Scheme,
    SignatureInvalid,
    SymDef,
    TpmPublic,
    TpmsAttest,
    TpmSignature,
    ek_public_from_key,
    parse_tpm2b_public,
    parse_tpms_attest,
    parse_tpmt_public,
    parse_tpmt_signature,
    public_from_key,
    verify_signature,
)

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_AK = public_from_key(RSA_KEY.public_key(), attributes=AK_ATTRIBUTES,
                         scheme=Scheme(TpmAlg.RSASSA, TpmAlg.SHA256))
EC_AK = public_from_key(EC_KEY.public_key(), attributes=AK_ATTRIBUTES,
                        scheme=Scheme(TpmAlg.ECDSA, TpmAlg.SHA256))
RSA_EK = ek_public_from_key(RSA_KEY.public_key())
EC_EK = ek_public_from_key(EC_KEY.public_key())
ATTEST = TpmsAttest(TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, b"\x00\x0b" + bytes(32),
                    bytes(range(20)), ClockInfo(123456, 3, 1, True), 0x2023,
                    QuoteInfo({"sha256": frozenset({0, 7, 16}), "sha1": frozenset({10})},
                              bytes(32)))
# One bank with a 3-byte bitmap: the parser's fixed-layout fast path.
ATTEST1 = ATTEST._replace(quote=QuoteInfo({"sha256": frozenset({0, 1, 2, 3, 7, 14})}, bytes(32)))
VALID = {
    "attest1": ATTEST1.marshal(),
    "public": RSA_AK.marshal_tpm2b(),
    "public_ecc": EC_EK.marshal_tpm2b(),
    "tpmt_public": EC_AK.marshal(),
    "attest": ATTEST.marshal(),
    "signature": TpmSignature(TpmAlg.ECDSA, TpmAlg.SHA256, r=bytes(32), s=bytes(32)).marshal(),
}
PARSERS = {"public": parse_tpm2b_public, "public_ecc": parse_tpm2b_public,
           "tpmt_public": parse_tpmt_public,
           "attest": parse_tpms_attest, "attest1": parse_tpms_attest,
           "signature": parse_tpmt_signature}


# -- TPMT_PUBLIC ------------------------------------------------------------------------------

@pytest.mark.parametrize("pub", [RSA_AK, EC_AK, RSA_EK, EC_EK], ids=["rsa-ak", "ecc-ak",
                                                                   "rsa-ek", "ecc-ek"])
def test_public_round_trip_name_and_key(pub: TpmPublic) -> None:
    wire = pub.marshal_tpm2b()
    assert struct.unpack(">H", wire[:2])[0] == len(wire) - 2
    back = parse_tpm2b_public(wire)
    assert back == pub and back.marshal() == pub.marshal()
    assert back.name() == b"\x00\x0b" + digest(TpmAlg.SHA256, pub.marshal())
    assert parse_tpmt_public(wire[2:]) == pub
    key = back.public_key()
    own = RSA_KEY.public_key() if pub.type == TpmAlg.RSA else EC_KEY.public_key()
    assert key.public_numbers() == own.public_numbers()


def test_ek_template_fields() -> None:
    # TCG EK Credential Profile L-1: attributes 0x000300B2, AES-128-CFB, RSA-2048, exponent 0.
    assert int(EK_ATTRIBUTES) == 0x000300B2
    assert RSA_EK.symmetric == SymDef(TpmAlg.AES, 128, TpmAlg.CFB)
    assert RSA_EK.key_bits == 2048 and RSA_EK.exponent == 0 and RSA_EK.scheme is None
    assert int(AK_ATTRIBUTES) == 0x00050072
    assert EC_EK.curve == 0x0003 and isinstance(EC_EK.unique, EccPoint)


def test_every_scheme_kind_round_trips() -> None:
    for scheme in (Scheme(TpmAlg.RSAES), Scheme(TpmAlg.OAEP, TpmAlg.SHA384),
                   Scheme(TpmAlg.RSAPSS, TpmAlg.SHA512)):
        pub = replace(RSA_AK, scheme=scheme, exponent=3)
        assert parse_tpm2b_public(pub.marshal_tpm2b()) == pub
    for scheme in (Scheme(TpmAlg.ECDAA, TpmAlg.SHA256, 7), Scheme(TpmAlg.ECDH, TpmAlg.SHA1)):
        pub = replace(EC_AK, scheme=scheme, kdf=Scheme(TpmAlg.KDF1_SP800_56A, TpmAlg.SHA256))
        assert parse_tpm2b_public(pub.marshal_tpm2b()) == pub


def _public_bytes(pub_bytes: bytes, offset: int, value: bytes) -> bytes:
    b = bytearray(pub_bytes)
    b[offset:offset + len(value)] = value
    return bytes(b)


def test_public_parse_errors() -> None:
    wire = RSA_AK.marshal_tpm2b()
    cases: list[tuple[bytes, type[MalformedStructure]]] = [
        (_public_bytes(wire, 2, b"\x00\x08"), AlgorithmUnsupported),  # KEYEDHASH object
        (_public_bytes(wire, 4, b"\x00\x12"), AlgorithmUnsupported),  # SM3 nameAlg
        (_public_bytes(wire, 6, b"\x80\x00\x00\x00"), FieldValueInvalid),  # reserved attr bit
        (_public_bytes(wire, 10, b"\x00\x41"), StructureOversized),  # authPolicy 65 bytes
        (_public_bytes(wire, 12, b"\x00\x25"), AlgorithmUnsupported),  # symmetric SYMCIPHER
        (_public_bytes(wire, 14, b"\x00\x1a"), AlgorithmUnsupported),  # RSA with ECDAA scheme
        (_public_bytes(wire, 18, b"\x01\x00"), AlgorithmUnsupported),  # keyBits 256
        (wire + b"\x00", TrailingBytes),
        (wire[:-1], StructureTruncated),
        (b"\x02\x00" + wire[2:], StructureTruncated),  # TPM2B size beyond the data
        (b"\x00" * 4096, StructureOversized),
        (b"", StructureTruncated),
    ]
    for data, error in cases:
        with pytest.raises(error):
            parse_tpm2b_public(data)


def test_public_rejects_trailing_inside_the_tpm2b() -> None:
    inner = RSA_AK.marshal() + b"\x00"
    with pytest.raises(TrailingBytes):
        parse_tpm2b_public(struct.pack(">H", len(inner)) + inner)


def test_bad_key_material_is_typed() -> None:
    off_curve = replace(EC_AK, unique=EccPoint(EC_AK.unique.x, bytes(32)))  # type: ignore[union-attr]
    with pytest.raises(PublicKeyInvalid):
        parse_tpm2b_public(off_curve.marshal_tpm2b()).public_key()
    assert isinstance(RSA_AK.unique, bytes)
    short = replace(RSA_AK, unique=RSA_AK.unique[:128])
    with pytest.raises(PublicKeyInvalid):
        short.public_key()
    p224 = replace(EC_AK, curve=0x0002)
    with pytest.raises(AlgorithmUnsupported):
        p224.public_key()
    with pytest.raises(FieldValueInvalid):
        replace(RSA_AK, exponent=1)
    with pytest.raises(AlgorithmUnsupported):
        public_from_key(ec.generate_private_key(ec.SECP256K1()).public_key(),
                        attributes=AK_ATTRIBUTES)


# -- TPMS_ATTEST ------------------------------------------------------------------------------

def test_attest_round_trip_and_fields() -> None:
    wire = ATTEST.marshal()
    back = parse_tpms_attest(wire)
    assert back == ATTEST
    assert list(back.quote.pcr_select) == ["sha256", "sha1"]  # type: ignore[union-attr]
    assert back.clock_info == ClockInfo(123456, 3, 1, True)
    # sha256 bitmap: PCR 0 and 7 in byte 0, PCR 16 in byte 2 (TPML_PCR_SELECTION layout).
    sel = wire.index(b"\x00\x0b\x03")
    assert wire[sel + 3:sel + 6] == bytes([0x81, 0x00, 0x01])


def test_fast_and_general_paths_agree() -> None:
    wire = ATTEST1.marshal()
    assert parse_tpms_attest(wire) == ATTEST1
    # The same selection with a 4-byte bitmap takes the general path.
    sel = wire.index(b"\x00\x0b\x03", 80)
    wide = wire[:sel + 2] + b"\x04" + wire[sel + 3:sel + 6] + b"\x00" + wire[sel + 6:]
    assert parse_tpms_attest(wide) == ATTEST1
    # Fast-path candidates that break a rule fall through to the general path's error.
    safe = 4 + 2 + 2 + 34 + 2 + 20 + 16
    bad: list[tuple[bytes, type[MalformedStructure]]] = [
        (wire[:safe] + b"\x02" + wire[safe + 1:], FieldValueInvalid),
        (wire[:sel] + b"\x00\x12" + wire[sel + 2:], AlgorithmUnsupported),
        (wire[:-34] + b"\x00\x41" + wire[-32:] + bytes(33), StructureOversized),
        (wire + b"\x00", TrailingBytes),
        (wire[:-1], StructureTruncated),
    ]
    for data, error in bad:
        with pytest.raises(error):
            parse_tpms_attest(data)


def test_attest_other_type_keeps_attested_bytes() -> None:
    other = ATTEST._replace(type=0x8017, quote=None, attested=b"\x00\x01x")
    back = parse_tpms_attest(other.marshal())
    assert back.quote is None and back.attested == b"\x00\x01x" and back.type == 0x8017


def test_attest_parse_errors() -> None:
    wire = ATTEST.marshal()
    sel = 4 + 2 + 2 + 34 + 2 + 20 + 17 + 8  # offset of TPML_PCR_SELECTION.count
    cases: list[tuple[bytes, type[MalformedStructure]]] = [
        (_public_bytes(wire, 6, b"\x00\x43"), StructureOversized),  # qualifiedSigner 67
        (_public_bytes(wire, 42, b"\x00\x43"), StructureOversized),  # extraData 67
        (_public_bytes(wire, sel - 9, b"\x02"), FieldValueInvalid),  # safe = 2
        (_public_bytes(wire, sel, b"\x00\x00\x00\x11"), FieldValueInvalid),  # 17 banks
        (_public_bytes(wire, sel + 4, b"\x00\x12"), AlgorithmUnsupported),  # SM3 bank
        (_public_bytes(wire, sel + 6, b"\x09"), FieldValueInvalid),  # sizeofSelect 9
        (_public_bytes(wire, sel + 10, b"\x00\x0b"), FieldValueInvalid),  # sha256 twice
        (_public_bytes(wire, len(wire) - 34, b"\x00\x41"), StructureOversized),  # digest 65
        (wire + b"\x00", TrailingBytes),
        (wire[:-1], StructureTruncated),
        (b"\x00" * 3000, StructureOversized),
    ]
    for data, error in cases:
        with pytest.raises(error):
            parse_tpms_attest(data)


@st.composite
def attests(draw: st.DrawFn) -> TpmsAttest:
    banks = draw(st.lists(st.sampled_from(["sha1", "sha256", "sha384", "sha512"]),
                          unique=True, max_size=4))
    select = {b: frozenset(draw(st.sets(st.integers(0, 23)))) for b in banks}
    return TpmsAttest(
        draw(st.integers(0, 2**32 - 1)), TPM_ST_ATTEST_QUOTE, draw(st.binary(max_size=66)),
        draw(st.binary(max_size=66)),
        ClockInfo(draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**32 - 1)),
                  draw(st.integers(0, 2**32 - 1)), draw(st.booleans())),
        draw(st.integers(0, 2**64 - 1)), QuoteInfo(select, draw(st.binary(max_size=64))))


@FUZZ
@given(attests())
def test_attest_round_trip_fuzz(attest: TpmsAttest) -> None:
    assert parse_tpms_attest(attest.marshal()) == attest


# -- TPMT_SIGNATURE ---------------------------------------------------------------------------

def _ecdsa_sig(message: bytes, hash_alg: int = TpmAlg.SHA256) -> TpmSignature:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    h: hashes.HashAlgorithm = {int(TpmAlg.SHA256): hashes.SHA256(),
                               int(TpmAlg.SHA384): hashes.SHA384(),
                               int(TpmAlg.SHA1): hashes.SHA1()}[hash_alg]
    r, s = decode_dss_signature(EC_KEY.sign(message, ec.ECDSA(h)))
    return TpmSignature(TpmAlg.ECDSA, hash_alg, r=r.to_bytes(32, "big"), s=s.to_bytes(32, "big"))


def test_signature_verify_each_scheme() -> None:
    msg = b"tpm generated"
    ecdsa = _ecdsa_sig(msg)
    assert parse_tpmt_signature(ecdsa.marshal()) == ecdsa
    verify_signature(EC_AK, ecdsa, msg)
    ssa = TpmSignature(TpmAlg.RSASSA, TpmAlg.SHA256,
                       sig=RSA_KEY.sign(msg, padding.PKCS1v15(), hashes.SHA256()))
    verify_signature(RSA_AK, parse_tpmt_signature(ssa.marshal()), msg)
    # TPMs use salt length = digest length; PSS.AUTO accepts what any TPM produces.
    pss = TpmSignature(TpmAlg.RSAPSS, TpmAlg.SHA256, sig=RSA_KEY.sign(
        msg, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()))
    verify_signature(replace(RSA_AK, scheme=None), parse_tpmt_signature(pss.marshal()), msg)
    for key, sig in ((EC_AK, ecdsa), (RSA_AK, ssa)):
        with pytest.raises(SignatureInvalid):
            verify_signature(key, sig, msg + b"!")


def test_signature_policy_rules() -> None:
    msg = b"m"
    ecdsa = _ecdsa_sig(msg)
    ssa = TpmSignature(TpmAlg.RSASSA, TpmAlg.SHA256,
                       sig=RSA_KEY.sign(msg, padding.PKCS1v15(), hashes.SHA256()))
    bad = [
        (replace(EC_AK, object_attributes=ObjectAttributes.DECRYPT), ecdsa),  # not a signer
        (EC_AK, _ecdsa_sig(msg, TpmAlg.SHA384)),  # scheme hash differs from the key's
        (replace(EC_AK, scheme=None), _ecdsa_sig(msg, TpmAlg.SHA1)),  # SHA-1 refused
        (replace(EC_AK, scheme=None), ssa),  # RSA signature, ECC key
        (replace(RSA_AK, scheme=None), ecdsa),  # ECDSA signature, RSA key
    ]
    for key, sig in bad:
        with pytest.raises(SignatureInvalid):
            verify_signature(key, sig, msg)
    verify_signature(replace(EC_AK, scheme=None), _ecdsa_sig(msg, TpmAlg.SHA384), msg)


def test_signature_parse_errors() -> None:
    ecdsa = _ecdsa_sig(b"x").marshal()
    cases: list[tuple[bytes, type[MalformedStructure]]] = [
        (b"\x00\x05\x00\x0b" + bytes(32), AlgorithmUnsupported),  # HMAC signature
        (b"\x00\x18\x00\x12" + ecdsa[4:], AlgorithmUnsupported),  # SM3
        (b"\x00\x18\x00\x0b\x00\x51" + bytes(81), StructureOversized),
        (ecdsa + b"\x00", TrailingBytes),
        (ecdsa[:-1], StructureTruncated),
        (ecdsa[:38], StructureTruncated),
        (b"\x00\x14\x00\x0b\x02\x01" + bytes(513), StructureOversized),
    ]
    for data, error in cases:
        with pytest.raises(error):
            parse_tpmt_signature(data)


# -- fuzzing: arbitrary, truncated, mutated and oversized input ------------------------------

def _only_typed(name: str, data: bytes) -> None:
    try:
        parsed = PARSERS[name](data)
    except MalformedStructure:
        return
    if hasattr(parsed, "public_key"):
        with contextlib.suppress(MalformedStructure):
            parsed.public_key()


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), st.binary(max_size=600))
def test_fuzz_random_bytes(name: str, data: bytes) -> None:
    _only_typed(name, data)


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), st.data())
def test_fuzz_truncations_fail(name: str, data: st.DataObject) -> None:
    wire = VALID[name]
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(MalformedStructure):
        PARSERS[name](wire[:cut])


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), st.data())
def test_fuzz_mutations(name: str, data: st.DataObject) -> None:
    wire = bytearray(VALID[name])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    _only_typed(name, bytes(wire))


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), st.binary(min_size=1, max_size=64),
       st.integers(2049, 70000))
def test_fuzz_oversized_and_trailing(name: str, tail: bytes, size: int) -> None:
    with pytest.raises(TrailingBytes):
        PARSERS[name](VALID[name] + tail)
    with pytest.raises(StructureOversized):
        PARSERS[name](VALID[name] + bytes(size))
