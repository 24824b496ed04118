"""EK template check (issue 9 point 5): only TCG EK Credential Profile templates are enrolled.

The EK hash covers the whole TPM2B_PUBLIC, an EK certificate only the key. Before this check 32 of
316 single-bit flips of a real EK public (all in authPolicy) still parsed, so one TPM could enrol
under many EK hashes. Here:

* every EK the project's TPMs really make (swtpm via ``attest.tpm``, tpm2-tools' tpm2_createek,
  the P-384 EK swtpm_setup certifies) passes, and equals the template rebuilt from its key;
* every single-bit flip of those EKs outside the key bytes is refused, counted exhaustively;
* each template field has its own negative test naming ``enroll.ek_template`` and the field;
* arbitrary bytes through parse + check only ever raise AttestationError subclasses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.core.ek_template import (
    EK_AUTH_POLICY_HIGH_SHA256,
    EK_AUTH_POLICY_HIGH_SHA384,
    EK_TEMPLATES,
    EkTemplate,
    EkTemplateInvalid,
    check_ek_template,
)
from attest.core.errors import AttestationError, MalformedStructure
from attest.core.tpm_marshal import EccCurve, TpmAlg
from attest.core.tpm_public import (
    EK_AUTH_POLICY_SHA256,
    EccPoint,
    ObjectAttributes,
    Scheme,
    SymDef,
    TpmPublic,
    ek_public_from_key,
    parse_tpm2b_public,
    public_from_key,
)
from attest.tpm.swtpm import Swtpm, SwtpmCa, swtpm_available

TEMPLATES = {t.id: t for t in EK_TEMPLATES}
FUZZ = settings(max_examples=300, deadline=None)
EK_CERT_P384 = 0x01C00016  # swtpm_setup's high-range ECC P-384 EK certificate (template H-3)


# --- EKs built from a template and a key (every field under control) ---------------------------

@cache
def _key(template_id: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    t = TEMPLATES[template_id]
    if t.type == TpmAlg.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=t.size).public_key()
    curve = ec.SECP256R1() if t.curve == EccCurve.NIST_P256 else ec.SECP384R1()
    return ec.generate_private_key(curve).public_key()


def ek_from_template(t: EkTemplate, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> TpmPublic:
    """What TPM2_CreatePrimary returns for template ``t`` when the key comes out as ``key``."""
    return public_from_key(key, attributes=t.attributes, name_alg=t.name_alg,
                           auth_policy=t.auth_policy, symmetric=t.symmetric)


def built(template_id: str) -> TpmPublic:
    return ek_from_template(TEMPLATES[template_id], _key(template_id))


def refused(ek: TpmPublic, field: str) -> EkTemplateInvalid:
    with pytest.raises(EkTemplateInvalid) as info:
        check_ek_template(ek)
    err = info.value
    assert err.check == "enroll.ek_template"
    assert err.as_dict()["check"] == "enroll.ek_template" and err.hint
    assert err.detail.startswith(f"EK {field} "), err.detail
    return err


# --- real EKs: swtpm through attest.tpm, swtpm_setup's P-384 EK, tpm2-tools --------------------

def _p384_ek(tcti: str) -> tuple[bytes, bytes]:
    """swtpm_setup's certified P-384 EK, recreated with the H-3 template, and its certificate."""
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.utils import create_ek_template

    from attest.tpm.device import Tpm

    with Tpm(tcti) as tpm:
        cert, template = create_ek_template("EK-HIGH-ECC384", tpm._nv_reader())
        handle, public, *_ = tpm._esys.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        tpm._esys.flush_context(handle)
        return bytes(public.marshal()), bytes(cert)


def _tools_eks(tcti: str, workdir: Path) -> dict[str, bytes]:
    if shutil.which("tpm2_createek") is None:
        return {}
    env = dict(os.environ, TPM2TOOLS_TCTI=tcti)
    out: dict[str, bytes] = {}
    for alg in ("rsa", "ecc", "ecc384", "rsa3072"):
        pub = workdir / f"{alg}-ek.pub"
        subprocess.run(["tpm2_createek", "-c", str(workdir / f"{alg}-ek.ctx"), "-G", alg,
                        "-u", str(pub)], env=env, check=True, capture_output=True, timeout=120)
        subprocess.run(["tpm2_flushcontext", "-t"], env=env, check=True, capture_output=True,
                       timeout=60)
        out[f"tpm2_createek -G {alg}"] = pub.read_bytes()
    return out


@pytest.fixture(scope="module")
def real_eks(provisioned_tpm_dirs: Callable[[str], Path], manufacturer_ca: SwtpmCa,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bytes]]:
    """TPM2B_PUBLIC bytes of every EK a provisioned swtpm gives, by source (and the certs)."""
    if not swtpm_available():
        pytest.skip("swtpm not installed (scripts/setup.sh)")
    from attest.tpm.device import Tpm

    tpm = Swtpm(provisioned_tpm_dirs("ek-template"), manufacturer_ca).start()
    try:
        eks: dict[str, bytes] = {}
        with Tpm(tpm.tcti) as dev:
            for kind in ("rsa", "ecc"):
                eks[f"agent {kind}"] = dev.ek_public(kind)
                cert = dev.ek_certificate(kind)
                assert cert is not None
                eks[f"agent {kind} cert"] = cert
        eks["swtpm_setup p384"], eks["swtpm_setup p384 cert"] = _p384_ek(tpm.tcti)
        eks.update(_tools_eks(tpm.tcti, tmp_path_factory.mktemp("ek-template-tools")))
        yield eks
    finally:
        tpm.stop()


REAL_SOURCES = {"agent rsa": "L-1", "agent ecc": "L-2", "swtpm_setup p384": "H-3",
                "tpm2_createek -G rsa": "L-1", "tpm2_createek -G ecc": "L-2",
                "tpm2_createek -G ecc384": "H-3", "tpm2_createek -G rsa3072": "H-6"}


@pytest.mark.swtpm
@pytest.mark.parametrize("source", sorted(REAL_SOURCES))
def test_real_ek_passes_and_is_exactly_its_template(real_eks: dict[str, bytes],
                                                    source: str) -> None:
    if source not in real_eks:
        pytest.skip("tpm2-tools not installed")
    ek = parse_tpm2b_public(real_eks[source])
    check_ek_template(ek)
    # The table's template, filled with the TPM's key, is byte for byte what the TPM returned.
    assert ek_from_template(TEMPLATES[REAL_SOURCES[source]], ek.public_key()) == ek
    if source.startswith("agent") or source.startswith("swtpm_setup"):
        cert = x509.load_der_x509_certificate(real_eks[f"{source} cert"])
        spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert cert.public_key().public_bytes(*spki) == ek.public_key().public_bytes(*spki)


def _key_byte_ranges(data: bytes, ek: TpmPublic) -> list[range]:
    """Offsets of the key material (the payloads of ``unique``) in TPM2B_PUBLIC ``data``."""
    end = len(data)
    if isinstance(ek.unique, EccPoint):
        n = len(ek.unique.y)
        return [range(end - 2 * n - 2, end - n - 2), range(end - n, end)]
    return [range(end - len(ek.unique), end)]


def _verdict(data: bytes) -> str:
    try:
        ek = parse_tpm2b_public(data)
    except MalformedStructure:
        return "parser"
    try:
        check_ek_template(ek)
    except EkTemplateInvalid:
        return "template"
    return "accepted"


@pytest.mark.swtpm
@pytest.mark.parametrize("source", ["agent rsa", "agent ecc", "swtpm_setup p384"])
def test_every_bit_flip_outside_the_key_is_refused(real_eks: dict[str, bytes],
                                                    source: str) -> None:
    data = real_eks[source]
    ek = parse_tpm2b_public(data)
    key_bytes = {i for r in _key_byte_ranges(data, ek) for i in r}
    assert len(key_bytes) == (len(ek.unique) if isinstance(ek.unique, bytes)
                              else 2 * len(ek.unique.x))
    outside = [i for i in range(len(data)) if i not in key_bytes]
    verdicts: dict[str, int] = {"parser": 0, "template": 0, "accepted": 0}
    template_refused_fields: set[str] = set()
    for i in outside:
        for bit in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << bit
            verdict = _verdict(bytes(flipped))
            verdicts[verdict] += 1
            if verdict == "template":
                try:
                    check_ek_template(parse_tpm2b_public(bytes(flipped)))
                except EkTemplateInvalid as exc:
                    template_refused_fields.add(exc.detail.split()[1])
    assert verdicts["accepted"] == 0, verdicts
    assert verdicts["parser"] + verdicts["template"] == 8 * len(outside)
    # The parser alone let these through (the finding); the template check refuses them.
    assert verdicts["template"] > 0
    assert "authPolicy" in template_refused_fields
    assert "objectAttributes" in template_refused_fields


# --- one negative test per template field --------------------------------------------------------

def test_every_accepted_template_passes_and_one_key_has_one_encoding() -> None:
    for t in EK_TEMPLATES:
        check_ek_template(built(t.id))
    # One template per (type, size): the TPM2B_PUBLIC, hence the EK hash, is a function of the key.
    assert len({(t.type, t.size) for t in EK_TEMPLATES}) == len(EK_TEMPLATES)
    assert ek_public_from_key(_key("L-1")) == built("L-1")
    assert ek_public_from_key(_key("L-2")) == built("L-2")


@pytest.mark.parametrize("template_id", ["L-1", "L-2"])
def test_high_range_form_of_a_low_range_key_is_refused(template_id: str) -> None:
    """H-1 / H-2 would give the same key (and the same MakeCredential blob) a second EK hash."""
    low = built(template_id)
    high = replace(low, object_attributes=low.object_attributes
                   | ObjectAttributes.USER_WITH_AUTH, auth_policy=EK_AUTH_POLICY_HIGH_SHA256)
    err = refused(high, "objectAttributes")
    assert "sets userWithAuth" in err.detail and "authPolicy" in err.detail


def test_type_and_key_size_must_select_a_template() -> None:
    assert "keyBits is 1024" in refused(
        replace(built("L-1"), unique=b"\xff" * 128, key_bits=1024), "keyBits").detail
    assert "keyBits is 4096" in refused(
        replace(built("L-1"), unique=b"\xff" * 512, key_bits=4096), "keyBits").detail
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    err = refused(ek_from_template(TEMPLATES["H-3"], p521), "curveID")
    assert "0x0005" in err.detail and "H-3 (ECC P-384)" in err.detail


@pytest.mark.parametrize("template_id", sorted(TEMPLATES))
def test_name_alg(template_id: str) -> None:
    ek = built(template_id)
    for alg in (TpmAlg.SHA1, TpmAlg.SHA256, TpmAlg.SHA384, TpmAlg.SHA512):
        if alg != ek.name_alg:
            err = refused(replace(ek, name_alg=alg), "nameAlg")
            assert TpmAlg(alg).name in err.detail


@pytest.mark.parametrize("template_id", sorted(TEMPLATES))
@pytest.mark.parametrize("bit", list(ObjectAttributes), ids=lambda b: b.name)
def test_object_attributes_each_bit(template_id: str, bit: ObjectAttributes) -> None:
    ek = built(template_id)
    err = refused(replace(ek, object_attributes=ek.object_attributes ^ bit), "objectAttributes")
    assert f"0x{int(ek.object_attributes):08x}" in err.detail  # the required value is named


def test_user_with_auth_is_clear_in_low_and_set_in_high_templates() -> None:
    for t in EK_TEMPLATES:
        has = bool(t.attributes & ObjectAttributes.USER_WITH_AUTH)
        assert has == t.id.startswith("H-"), t.id
    assert "lacks userWithAuth" in refused(
        replace(built("H-3"), object_attributes=TEMPLATES["L-2"].attributes),
        "objectAttributes").detail


@pytest.mark.parametrize("template_id", sorted(TEMPLATES))
def test_auth_policy(template_id: str) -> None:
    ek = built(template_id)
    policy = ek.auth_policy
    others = [b"", policy[:-1], policy + b"\x00", bytes([policy[0] ^ 1]) + policy[1:],
              policy[:-1] + bytes([policy[-1] ^ 0x80]), EK_AUTH_POLICY_HIGH_SHA256,
              EK_AUTH_POLICY_SHA256, EK_AUTH_POLICY_HIGH_SHA384]
    for other in others:
        if other != policy:
            err = refused(replace(ek, auth_policy=other), "authPolicy")
            assert policy.hex() in err.detail


@pytest.mark.parametrize("template_id", sorted(TEMPLATES))
def test_symmetric(template_id: str) -> None:
    ek = built(template_id)
    assert ek.symmetric is not None
    for sym in (None, SymDef(TpmAlg.AES, 192, TpmAlg.CFB),
                SymDef(TpmAlg.AES, 256 if ek.symmetric.key_bits == 128 else 128, TpmAlg.CFB),
                SymDef(TpmAlg.AES, ek.symmetric.key_bits, TpmAlg.CTR),
                SymDef(TpmAlg.AES, ek.symmetric.key_bits, TpmAlg.CBC)):
        refused(replace(ek, symmetric=sym), "symmetric")


@pytest.mark.parametrize("template_id", sorted(TEMPLATES))
def test_scheme(template_id: str) -> None:
    ek = built(template_id)
    if ek.type == TpmAlg.RSA:
        schemes = [Scheme(TpmAlg.RSAES), Scheme(TpmAlg.OAEP, TpmAlg.SHA256),
                   Scheme(TpmAlg.RSASSA, TpmAlg.SHA256)]
    else:
        schemes = [Scheme(TpmAlg.ECDH, TpmAlg.SHA256), Scheme(TpmAlg.ECDSA, TpmAlg.SHA384)]
    for scheme in schemes:
        assert "requires NULL" in refused(replace(ek, scheme=scheme), "scheme").detail


@pytest.mark.parametrize("template_id", ["L-1", "H-6"])
def test_rsa_exponent_is_zero(template_id: str) -> None:
    ek = built(template_id)
    # 65537 spelled out is the same key, so accepting it would give the key a second EK hash.
    for exponent in (65537, 3, 0x10001 | 0x100):
        assert str(exponent) in refused(replace(ek, exponent=exponent), "exponent").detail


@pytest.mark.parametrize("template_id", ["L-2", "H-3"])
def test_ecc_kdf_is_null(template_id: str) -> None:
    ek = built(template_id)
    for kdf in (Scheme(TpmAlg.KDF1_SP800_56A, TpmAlg.SHA256), Scheme(TpmAlg.KDF2, TpmAlg.SHA256),
                Scheme(0x0007, TpmAlg.SHA256)):
        refused(replace(ek, kdf=kdf), "kdf")


@pytest.mark.parametrize("template_id", sorted(TEMPLATES))
def test_unique_has_the_full_key_size(template_id: str) -> None:
    ek = built(template_id)
    if isinstance(ek.unique, EccPoint):
        x, y = ek.unique
        for point in (EccPoint(x[1:], y), EccPoint(x, y[1:]), EccPoint(b"\x00" + x, y),
                      EccPoint(b"", b"")):
            refused(replace(ek, unique=point), "unique")
    else:
        for modulus in (ek.unique[1:], b"\x00" + ek.unique, b""):
            refused(replace(ek, unique=modulus), "unique")


def test_several_mismatches_are_all_named() -> None:
    ek = replace(built("L-1"), auth_policy=b"", symmetric=None, exponent=3)
    err = refused(ek, "authPolicy")
    assert "symmetric" in err.detail and "exponent" in err.detail


# --- properties ----------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=700))
def test_arbitrary_bytes_only_raise_attestation_errors(data: bytes) -> None:
    with contextlib.suppress(AttestationError):  # anything else fails the test
        check_ek_template(parse_tpm2b_public(data))


@FUZZ
@given(st.sampled_from(sorted(TEMPLATES)), st.data())
def test_accepted_mutations_only_ever_change_the_key(template_id: str, data: st.DataObject) -> None:
    """Overwrite random bytes of a template EK: whatever passes differs only in key bytes."""
    ek = built(template_id)
    original = ek.marshal_tpm2b()
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    try:
        parsed = parse_tpm2b_public(bytes(mutated))
        check_ek_template(parsed)
    except AttestationError:
        return
    keys = {i for r in _key_byte_ranges(original, ek) for i in r}
    assert all(mutated[i] == original[i] for i in range(len(original)) if i not in keys)
