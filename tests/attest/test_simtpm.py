"""SimulatedTpm: its formats are checked against independent implementations.

- tpm2_checkquote (OpenSSL-based) verifies SimulatedTpm quotes: byte-exact TPMS_ATTEST and
  TPMT_SIGNATURE and a valid TPM2B_PUBLIC.
- tpm2_makecredential (tpm2-tools' offline MakeCredential) produces blobs that
  SimulatedTpm.activate_credential opens, for RSA and ECC EKs.
- A real swtpm's quote carries the qualifiedSigner that ``qualified_name`` computes.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.core.quote import appraise_quote
from attest.core.tpm_marshal import TpmAlg
from attest.core.tpm_public import AK_ATTRIBUTES, EK_ATTRIBUTES, EK_AUTH_POLICY_SHA256
from attest.core.tpm_structs import (
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    ObjectAttributes,
    parse_tpm2b_public,
    parse_tpms_attest,
    parse_tpmt_signature,
)
from tests.support.simtpm import (
    TPM_RH_ENDORSEMENT,
    CredentialActivationFailed,
    SimulatedTpm,
    qualified_name,
)
from tests.support.swtpm import OracleSwtpm, running_oracle_swtpm

needs_tools = pytest.mark.skipif(shutil.which("tpm2_checkquote") is None,
                                 reason="tpm2-tools not installed")


def sha(alg: hashes.HashAlgorithm, *parts: bytes) -> bytes:
    h = hashes.Hash(alg)
    for p in parts:
        h.update(p)
    return h.finalize()


@pytest.fixture(scope="module")
def tpm() -> SimulatedTpm:
    return SimulatedTpm()


def test_keys_and_templates(tpm: SimulatedTpm) -> None:
    ek, ak = tpm.ek_public, tpm.ak_public
    assert ek.type == TpmAlg.RSA and ek.key_bits == 2048
    assert ek.object_attributes == EK_ATTRIBUTES and ek.auth_policy == EK_AUTH_POLICY_SHA256
    assert ak.type == TpmAlg.ECC and ak.object_attributes == AK_ATTRIBUTES
    assert ak.scheme is not None and (ak.scheme.scheme, ak.scheme.hash_alg) == (
        TpmAlg.ECDSA, TpmAlg.SHA256)
    assert parse_tpm2b_public(ak.marshal_tpm2b()) == ak
    assert parse_tpm2b_public(ek.marshal_tpm2b()) == ek


def test_weak_ak_options(tpm: SimulatedTpm) -> None:
    loose = SimulatedTpm(ak_restricted=False, ak_fixed_tpm=False, ek_key=tpm.ek_key)
    attrs = loose.ak_public.object_attributes
    assert not attrs & ObjectAttributes.RESTRICTED and not attrs & ObjectAttributes.FIXED_TPM
    assert attrs & ObjectAttributes.SIGN_ENCRYPT and attrs & ObjectAttributes.FIXED_PARENT


def test_extend_is_pcr_event_and_reboot_clears(tpm: SimulatedTpm) -> None:
    sim = SimulatedTpm(ek_key=tpm.ek_key)
    sim.extend(10, b"measurement")
    assert sim.pcrs["sha256"][10] == sha(hashes.SHA256(), bytes(32),
                                         sha(hashes.SHA256(), b"measurement"))
    assert sim.pcrs["sha1"][10] == sha(hashes.SHA1(), bytes(20), sha(hashes.SHA1(), b"measurement"))
    value = bytes(range(32))
    before = sim.pcrs["sha256"][10]
    sim.extend_digest(10, "sha256", value)
    assert sim.pcrs["sha256"][10] == sha(hashes.SHA256(), before, value)
    with pytest.raises(ValueError):
        sim.extend_digest(10, "sha256", bytes(20))
    with pytest.raises(ValueError):
        sim.extend_digest(24, "sha1", bytes(20))
    sim.resume()
    assert sim.pcrs["sha256"][10] != bytes(32) and sim.restart_count == 1
    sim.reboot()
    assert sim.pcrs["sha256"][10] == bytes(32)
    assert (sim.reset_count, sim.restart_count) == (1, 0)
    with pytest.raises(ValueError):
        sim.advance_clock(-1)


def test_quote_contents(tpm: SimulatedTpm) -> None:
    nonce = os.urandom(32)
    sel = {"sha256": frozenset({0, 10}), "sha1": frozenset({10})}
    t0 = tpm.clock
    attest, sig, values = tpm.quote(nonce, sel)
    parsed = parse_tpms_attest(attest)
    assert (parsed.magic, parsed.type) == (TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE)
    assert parsed.extra_data == nonce and parsed.clock_info.clock > t0
    assert parsed.qualified_signer == tpm.ak_qualified_name
    assert parsed.quote is not None
    assert parsed.quote.pcr_digest == sha(hashes.SHA256(), values["sha256"][0],
                                          values["sha256"][10], values["sha1"][10])
    assert parse_tpmt_signature(sig).sig_alg == TpmAlg.ECDSA
    assert appraise_quote(tpm.ak_public, attest, sig, expected_nonce=nonce, pcr_values=values,
                          requested=sel, previous_clock=None).ok


@pytest.fixture(scope="module")
def ecc_tpm() -> SimulatedTpm:
    return SimulatedTpm(ecc_ek=True)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=120), st.binary(max_size=300), st.booleans())
def test_activate_rejects_garbage(tpm: SimulatedTpm, ecc_tpm: SimulatedTpm, blob: bytes,
                                  enc: bytes, ecc: bool) -> None:
    # Hypothesis + module fixtures: the fixtures are read-only here, so sharing is safe.
    with pytest.raises(CredentialActivationFailed):
        (ecc_tpm if ecc else tpm).activate_credential(blob, enc)


# -- independent implementations as oracles ------------------------------------------------

def _tool(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, TPM2TOOLS_TCTI="none"))


@needs_tools
def test_tpm2_checkquote_accepts_simulated_quotes(tpm: SimulatedTpm, tmp_path: Path) -> None:
    nonce = os.urandom(16)
    attest, sig, _ = tpm.quote(nonce, {"sha256": frozenset({0, 1, 2})})
    (tmp_path / "ak.pub").write_bytes(tpm.ak_public.marshal_tpm2b())
    (tmp_path / "q.msg").write_bytes(attest)
    (tmp_path / "q.sig").write_bytes(sig)
    ok = _tool(tmp_path, "tpm2_checkquote", "-u", "ak.pub", "-m", "q.msg", "-s", "q.sig",
               "-g", "sha256", "-q", nonce.hex())
    assert ok.returncode == 0, ok.stderr
    bad = _tool(tmp_path, "tpm2_checkquote", "-u", "ak.pub", "-m", "q.msg", "-s", "q.sig",
                "-g", "sha256", "-q", os.urandom(16).hex())
    assert bad.returncode != 0  # the oracle does discriminate


@needs_tools
@pytest.mark.parametrize("ecc", [False, True], ids=["rsa-ek", "ecc-ek"])
def test_tpm2_makecredential_blobs_activate(tpm: SimulatedTpm, tmp_path: Path,
                                            ecc: bool) -> None:
    sim = SimulatedTpm(ecc_ek=ecc) if ecc else SimulatedTpm(ek_key=tpm.ek_key)
    (tmp_path / "ek.pub").write_bytes(sim.ek_public.marshal_tpm2b())
    (tmp_path / "secret").write_bytes(b"tpm2-tools secret")
    for name, expect_ok in ((sim.ak_public.name(), True), (sim.ek_public.name(), False)):
        proc = _tool(tmp_path, "tpm2_makecredential", "-T", "none", "-u", "ek.pub", "-s",
                     "secret", "-n", name.hex(), "-o", "cred")
        assert proc.returncode == 0, proc.stderr
        data = (tmp_path / "cred").read_bytes()
        assert struct.unpack(">II", data[:8]) == (0xBADCC0DE, 1)
        size = struct.unpack(">H", data[8:10])[0]
        blob, enc = data[8:10 + size], data[10 + size:]
        if expect_ok:
            assert sim.activate_credential(blob, enc) == b"tpm2-tools secret"
        else:
            with pytest.raises(CredentialActivationFailed):
                sim.activate_credential(blob, enc)


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OracleSwtpm]:
    with running_oracle_swtpm(tmp_path_factory.mktemp("swtpm-sim")) as t:
        yield t


@pytest.mark.swtpm
def test_qualified_signer_matches_real_tpm(swtpm: OracleSwtpm) -> None:
    swtpm.run("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    swtpm.run("tpm2_flushcontext", "-t")
    swtpm.run("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-u", "ak.pub")
    swtpm.run("tpm2_flushcontext", "-t")
    swtpm.run("tpm2_quote", "-c", "ak.ctx", "-l", "sha256:0", "-q", "abcd", "-m", "q.msg",
              "-s", "q.sig", "-g", "sha256")
    ek = parse_tpm2b_public(swtpm.read("ek.pub"))
    ak = parse_tpm2b_public(swtpm.read("ak.pub"))
    expected = qualified_name(qualified_name(struct.pack(">I", TPM_RH_ENDORSEMENT), ek.name()),
                              ak.name())
    assert parse_tpms_attest(swtpm.read("q.msg")).qualified_signer == expected
