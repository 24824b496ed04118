"""MakeCredential: software round trips, input checks, and activation on a real swtpm.

The swtpm tests are the proof: a blob made by ``make_credential`` for tpm2_createek's EK (RSA and
ECC) and tpm2_createak's AK is opened by TPM2_ActivateCredential (tpm2_activatecredential), and a
blob made for another Name is refused by the TPM.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import replace

import pytest

from attest.core.credential import (
    CredentialInputInvalid,
    EkUnsupported,
    kdfa,
    kdfe,
    make_credential,
)
from attest.core.tpm_marshal import TpmAlg
from attest.core.tpm_structs import ObjectAttributes, SymDef, ek_public_from_key, parse_tpm2b_public
from tests.support.simtpm import CredentialActivationFailed, SimulatedTpm
from tests.support.swtpm import OracleSwtpm, running_oracle_swtpm

SECRET = b"0123456789abcdef0123456789abcdef"
# tpm2-tools credential file: magic, version, then TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.
CRED_HEADER = struct.pack(">II", 0xBADCC0DE, 1)


def det_rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.fixture(scope="module", params=["rsa", "ecc"])
def sim(request: pytest.FixtureRequest) -> SimulatedTpm:
    return SimulatedTpm(ecc_ek=request.param == "ecc")


def test_round_trip_with_simulated_tpm(sim: SimulatedTpm) -> None:
    blob, enc = make_credential(sim.ek_public, sim.ak_public.name(), SECRET)
    assert sim.activate_credential(blob, enc) == SECRET
    assert sim.activate_credential(*make_credential(sim.ek_public, sim.ak_public.name(),
                                                    b"x")) == b"x"


def test_blob_for_another_name_or_ek_fails(sim: SimulatedTpm) -> None:
    other = SimulatedTpm(ak_key=None, ek_key=sim.ek_key)  # same EK, different AK
    blob, enc = make_credential(sim.ek_public, other.ak_public.name(), SECRET)
    assert other.activate_credential(blob, enc) == SECRET
    with pytest.raises(CredentialActivationFailed, match="integrity"):
        sim.activate_credential(blob, enc)
    stranger = SimulatedTpm(ecc_ek=sim.ek_public.type == TpmAlg.ECC)
    with pytest.raises(CredentialActivationFailed):
        stranger.activate_credential(*make_credential(sim.ek_public, stranger.ak_public.name(),
                                                      SECRET))


def test_tampered_blob_fails(sim: SimulatedTpm) -> None:
    blob, enc = make_credential(sim.ek_public, sim.ak_public.name(), SECRET)
    for i in (2, 5, len(blob) - 1):  # in the HMAC and in the encrypted identity
        bad = bytearray(blob)
        bad[i] ^= 0x40
        with pytest.raises(CredentialActivationFailed):
            sim.activate_credential(bytes(bad), enc)
    with pytest.raises(CredentialActivationFailed):
        sim.activate_credential(blob[:-1], enc)
    with pytest.raises(CredentialActivationFailed):
        sim.activate_credential(blob, enc[:-1])


def test_deterministic_with_given_rng(sim: SimulatedTpm) -> None:
    name = sim.ak_public.name()
    a = make_credential(sim.ek_public, name, SECRET, rng=det_rng(7).randbytes)
    b = make_credential(sim.ek_public, name, SECRET, rng=det_rng(7).randbytes)
    c = make_credential(sim.ek_public, name, SECRET, rng=det_rng(8).randbytes)
    assert a[0] == b[0] and a[0] != c[0]
    if sim.ek_public.type == TpmAlg.ECC:  # no OAEP randomness: fully determined by rng
        assert a[1] == b[1] and a[1] != c[1]
    assert sim.activate_credential(*a) == SECRET


def test_input_checks(sim: SimulatedTpm) -> None:
    ek, name = sim.ek_public, sim.ak_public.name()
    for secret in (b"", bytes(33)):
        with pytest.raises(CredentialInputInvalid):
            make_credential(ek, name, secret)
    for bad_name in (b"", b"\x00\x0b" + bytes(31), b"\x00\x12" + bytes(32)):
        with pytest.raises(CredentialInputInvalid):
            make_credential(ek, bad_name, SECRET)
    not_storage = replace(ek, object_attributes=ek.object_attributes & ~ObjectAttributes.DECRYPT)
    with pytest.raises(EkUnsupported):
        make_credential(not_storage, name, SECRET)
    for sym in (None, SymDef(TpmAlg.AES, 128, TpmAlg.CBC)):
        with pytest.raises(EkUnsupported):
            make_credential(replace(ek, symmetric=sym), name, SECRET)


def test_kdf_properties() -> None:
    key = bytes(range(32))
    full = kdfa(TpmAlg.SHA256, key, b"STORAGE", b"u", b"v", 512)
    assert len(full) == 64
    # KDFa binds the requested length, so a shorter output is not a prefix of a longer one.
    assert kdfa(TpmAlg.SHA256, key, b"STORAGE", b"u", b"v", 256) != full[:32]
    assert kdfa(TpmAlg.SHA256, key, b"STORAGE\x00", b"u", b"v", 512) == full
    odd = kdfa(TpmAlg.SHA256, key, b"X", b"", b"", 12)
    assert len(odd) == 2 and odd[0] < 16  # top 4 bits masked
    assert len(kdfe(TpmAlg.SHA384, key, b"IDENTITY", b"a", b"b", 8 * 80)) == 80


# -- swtpm oracle --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OracleSwtpm]:
    with running_oracle_swtpm(tmp_path_factory.mktemp("swtpm-cred")) as tpm:
        yield tpm


def _activate(tpm: OracleSwtpm, kind: str, blob: bytes, enc: bytes) -> tuple[int, bytes, str]:
    tpm.write(f"{kind}.cred", CRED_HEADER + blob + enc)
    out = tpm.workdir / f"{kind}.out"
    out.unlink(missing_ok=True)
    tpm.run("tpm2_startauthsession", "--policy-session", "-S", "session.ctx")
    try:
        tpm.run("tpm2_policysecret", "-S", "session.ctx", "-c", "e")
        proc = tpm.run("tpm2_activatecredential", "-c", f"{kind}-ak.ctx", "-C",
                       f"{kind}-ek.ctx", "-i", f"{kind}.cred", "-o", f"{kind}.out",
                       "-P", "session:session.ctx", check=False)
    finally:
        tpm.run("tpm2_flushcontext", "session.ctx", check=False)
        tpm.run("tpm2_flushcontext", "-t", check=False)
    return proc.returncode, out.read_bytes() if out.exists() else b"", proc.stderr


@pytest.mark.swtpm
@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_swtpm_activates_our_credential(swtpm: OracleSwtpm, kind: str) -> None:
    swtpm.run("tpm2_createek", "-c", f"{kind}-ek.ctx", "-G", kind, "-u", f"{kind}-ek.pub")
    swtpm.run("tpm2_flushcontext", "-t")
    swtpm.run("tpm2_createak", "-C", f"{kind}-ek.ctx", "-c", f"{kind}-ak.ctx", "-G", "ecc",
              "-u", f"{kind}-ak.pub", "-n", f"{kind}-ak.name")
    swtpm.run("tpm2_flushcontext", "-t")
    ek = parse_tpm2b_public(swtpm.read(f"{kind}-ek.pub"))
    ak = parse_tpm2b_public(swtpm.read(f"{kind}-ak.pub"))
    assert ak.name() == swtpm.read(f"{kind}-ak.name")
    # The TCG default template rebuilt from the bare public key gives the TPM's exact EK.
    assert ek_public_from_key(ek.public_key()) == ek
    assert ek.type == (TpmAlg.ECC if kind == "ecc" else TpmAlg.RSA)

    rc, out, err = _activate(swtpm, kind, *make_credential(ek, ak.name(), SECRET))
    assert rc == 0, err
    assert out == SECRET

    # Made for another Name (the EK's): the TPM's integrity check refuses it.
    rc, out, err = _activate(swtpm, kind, *make_credential(ek, ek.name(), SECRET))
    assert rc != 0 and out == b""
    assert "integrity check failed" in err  # TPM_RC_INTEGRITY (0x1DF), not some setup error
