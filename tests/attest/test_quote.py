"""Quote appraisal: every check against SimulatedTpm quotes, then real swtpm quotes (tpm2_quote).

The swtpm part is the oracle: quotes from a real TPM 2.0 implementation (ECC and RSA AKs made by
tpm2_createak) must be accepted, and every single-bit change to them must be rejected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.core.errors import AttestationError, MalformedStructure
from attest.core.quote import (
    ClockRollback,
    PcrDigestMismatch,
    PcrSelectionInsufficient,
    PcrValuesSelectionMismatch,
    QuoteMagicInvalid,
    QuoteNonceMismatch,
    QuoteSignatureInvalid,
    QuoteTypeInvalid,
    ResetCountRollback,
    RestartCountRollback,
    appraise_quote,
)
from attest.core.tpm_structs import (
    ClockInfo,
    TpmAlg,
    TpmPublic,
    parse_tpm2b_public,
    parse_tpms_attest,
)
from tests.support.simtpm import SimulatedTpm
from tests.support.swtpm import OracleSwtpm, running_oracle_swtpm

SEL = {"sha256": frozenset({0, 7, 10}), "sha1": frozenset({10})}
NONCE = bytes(range(32))
Values = dict[str, dict[int, bytes]]


@pytest.fixture(scope="module")
def sim() -> SimulatedTpm:
    tpm = SimulatedTpm()
    tpm.extend(10, b"k3s config")
    return tpm


def appraise(ak: TpmPublic, attest: bytes, sig: bytes, values: dict[str, dict[int, bytes]], *,
             nonce: bytes = NONCE, requested: dict[str, frozenset[int]] | None = None,
             previous: ClockInfo | None = None) -> list[type[AttestationError]]:
    """The collected failures of an authenticated quote (fatal ones raise)."""
    result = appraise_quote(ak, attest, sig, expected_nonce=nonce, pcr_values=values,
                            requested=SEL if requested is None else requested,
                            previous_clock=previous)
    assert result.ok == (not result.failures)
    return [type(f) for f in result.failures]


def test_genuine_quote_passes(sim: SimulatedTpm) -> None:
    attest, sig, values = sim.quote(NONCE, SEL)
    result = appraise_quote(sim.ak_public, attest, sig, expected_nonce=NONCE, pcr_values=values,
                            requested=SEL, previous_clock=None)
    assert result.ok and not result.rebooted
    assert result.attest.quote is not None and result.attest.quote.pcr_select == SEL
    assert values["sha256"][10] != bytes(32)  # the extend really happened


def test_pcr_selection_and_clock_failures_are_all_collected(sim: SimulatedTpm) -> None:
    attest, sig, values = sim.quote(NONCE, SEL)
    wrong = {"sha256": {**values["sha256"], 7: b"\x01" * 32}, "sha1": values["sha1"]}
    failures = appraise(sim.ak_public, attest, sig, wrong,
                        requested={"sha256": frozenset({0, 7, 10, 14})},
                        previous=sim.clock_info._replace(reset_count=sim.reset_count + 1))
    assert failures == [PcrDigestMismatch, PcrSelectionInsufficient, ResetCountRollback]


def test_a_quote_over_another_nonce_is_not_authenticated_evidence(sim: SimulatedTpm) -> None:
    """Genuinely signed, but not over this challenge (an old quote replayed): fatal, so the
    caller refuses it instead of recording a verdict for the node."""
    attest, sig, values = sim.quote(NONCE, SEL)
    with pytest.raises(QuoteNonceMismatch):
        appraise_quote(sim.ak_public, attest, sig, expected_nonce=b"other nonce 16 b",
                       pcr_values=values, requested=SEL, previous_clock=None)


@pytest.mark.parametrize("mangle", [
    lambda v: {"sha256": v["sha256"]},  # a quoted bank missing
    lambda v: {**v, "sha256": {k: x for k, x in v["sha256"].items() if k != 0}},  # PCR missing
    lambda v: {**v, "sha256": {**v["sha256"], 3: bytes(32)}},  # PCR not quoted
    lambda v: {**v, "sha384": {0: bytes(48)}},  # bank not quoted
    lambda v: {**v, "sha1": {10: v["sha1"][10] + b"\x00"}},  # wrong digest size
], ids=["bank-missing", "pcr-missing", "pcr-extra", "bank-extra", "bad-size"])
def test_pcr_values_must_match_selection(sim: SimulatedTpm, mangle: Callable[[Values], Values]
                                         ) -> None:
    attest, sig, values = sim.quote(NONCE, SEL)
    assert appraise(sim.ak_public, attest, sig, mangle(values)) == [PcrValuesSelectionMismatch]


def test_values_split_differently_do_not_pass(sim: SimulatedTpm) -> None:
    # Same concatenation (so the same digest) but shifted between two PCRs: the size check
    # catches what the digest alone cannot.
    attest, sig, values = sim.quote(NONCE, SEL)
    v = values["sha256"]
    joined = v[0] + v[7]
    shifted = {**values, "sha256": {0: joined[:31], 7: joined[31:], 10: v[10]}}
    assert appraise(sim.ak_public, attest, sig, shifted) == [PcrValuesSelectionMismatch]


def test_pcr_digest_follows_tpml_order(sim: SimulatedTpm) -> None:
    # sha1 listed first: the digest covers sha1 values before sha256 ones.
    order = {"sha1": frozenset({10}), "sha256": frozenset({0, 10})}
    attest, sig, values = sim.quote(NONCE, order)
    assert appraise(sim.ak_public, attest, sig, values, requested=order) == []
    quote = parse_tpms_attest(attest).quote
    assert quote is not None and list(quote.pcr_select) == ["sha1", "sha256"]


def test_clock_rules() -> None:
    tpm = SimulatedTpm()
    a1, s1, v1 = tpm.quote(NONCE, SEL)
    first = parse_tpms_attest(a1).clock_info
    tpm.advance_clock(5000)
    a2, s2, v2 = tpm.quote(NONCE, SEL)
    assert appraise(tpm.ak_public, a2, s2, v2, previous=first) == []
    # The old quote replayed after the newer one was seen: clock went backwards.
    second = parse_tpms_attest(a2).clock_info
    assert appraise(tpm.ak_public, a1, s1, v1, previous=second) == [ClockRollback]
    tpm.resume()
    a3, s3, v3 = tpm.quote(NONCE, SEL)
    third = parse_tpms_attest(a3).clock_info
    assert third.restart_count == 1
    assert appraise(tpm.ak_public, a2, s2, v2, previous=third) == [RestartCountRollback]
    tpm.reboot()
    a4, s4, v4 = tpm.quote(NONCE, SEL)
    result = appraise_quote(tpm.ak_public, a4, s4, expected_nonce=NONCE, pcr_values=v4,
                            requested=SEL, previous_clock=third)
    assert result.ok and result.rebooted
    fourth = result.attest.clock_info
    assert (fourth.reset_count, fourth.restart_count) == (1, 0)
    assert appraise(tpm.ak_public, a3, s3, v3, previous=fourth) == [ResetCountRollback]
    # A reboot may restart the clock anywhere: lower clock with higher resetCount passes.
    assert appraise(tpm.ak_public, a4, s4, v4, previous=third._replace(clock=2**40)) == []


def test_fatal_checks_raise_and_stop(sim: SimulatedTpm) -> None:
    attest, sig, values = sim.quote(NONCE, SEL)
    raw = bytearray(attest)
    raw[0] ^= 0x01  # magic, re-signed: only an unrestricted key would sign this
    with pytest.raises(QuoteMagicInvalid):
        appraise(sim.ak_public, bytes(raw), sim.sign(bytes(raw)), values)
    raw = bytearray(attest)
    raw[4:6] = (0x8017).to_bytes(2, "big")  # TPM_ST_ATTEST_CERTIFY
    with pytest.raises(QuoteTypeInvalid):
        appraise(sim.ak_public, bytes(raw), sim.sign(bytes(raw)), values)
    other = SimulatedTpm(ek_key=sim.ek_key)
    with pytest.raises(QuoteSignatureInvalid):  # signed by another AK, with wrong nonce too
        appraise(other.ak_public, attest, sig, values, nonce=b"x" * 16)
    with pytest.raises(MalformedStructure):
        appraise(sim.ak_public, attest[:-1], sig, values)
    with pytest.raises(MalformedStructure):
        appraise(sim.ak_public, attest, sig + b"\x00", values)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_appraise_raises_only_typed_errors(sim: SimulatedTpm, data: st.DataObject) -> None:
    attest, sig, values = sim.quote(NONCE, SEL)
    attest = data.draw(st.one_of(st.binary(max_size=300), st.just(attest),
                                 st.binary(max_size=8).map(lambda b: attest[:len(b) * 9])))
    sig = data.draw(st.one_of(st.binary(max_size=120), st.just(sig)))
    try:
        result = appraise_quote(sim.ak_public, attest, sig, expected_nonce=NONCE,
                                pcr_values=values, requested=SEL, previous_clock=None)
    except AttestationError:
        return
    assert result.ok  # only the untouched quote can get through, and then it passes


# -- swtpm oracle --------------------------------------------------------------------------

@dataclass
class RealQuote:
    ak: TpmPublic
    attest: bytes
    signature: bytes
    values: dict[str, dict[int, bytes]]
    selection: dict[str, frozenset[int]]
    nonce: bytes


def _pcrread(tpm: OracleSwtpm, spec: str) -> dict[str, dict[int, bytes]]:
    out: dict[str, dict[int, bytes]] = {}
    bank = ""
    for line in tpm.run("tpm2_pcrread", spec).stdout.splitlines():
        if m := re.fullmatch(r"\s*(sha\d+):\s*", line):
            bank = m.group(1)
            out[bank] = {}
        elif m := re.fullmatch(r"\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*", line):
            out[bank][int(m.group(1))] = bytes.fromhex(m.group(2))
    return out


AK_KINDS = {"ecc-ecdsa": ("ecc", "ecdsa"), "rsa-rsassa": ("rsa", "rsassa"),
            "rsa-rsapss": ("rsa", "rsapss")}


@pytest.fixture(scope="module")
def swtpm_quotes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RealQuote]]:
    with running_oracle_swtpm(tmp_path_factory.mktemp("swtpm-quote")) as tpm:
        tpm.run("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
        tpm.run("tpm2_flushcontext", "-t")
        tpm.run("tpm2_pcrextend", "16:sha256=" + "ab" * 32 + ",sha1=" + "cd" * 20)
        spec = "sha256:0,1,16+sha1:16"
        selection = {"sha256": frozenset({0, 1, 16}), "sha1": frozenset({16})}
        quotes: dict[str, RealQuote] = {}
        for kind, (alg, scheme) in AK_KINDS.items():
            tpm.run("tpm2_createak", "-C", "ek.ctx", "-c", f"{kind}.ctx", "-G", alg, "-g",
                    "sha256", "-s", scheme, "-u", f"{kind}.pub", "-n", f"{kind}.name")
            tpm.run("tpm2_flushcontext", "-t")
            ak = parse_tpm2b_public(tpm.read(f"{kind}.pub"))
            assert ak.name() == tpm.read(f"{kind}.name")  # our Name == the TPM's Name
            nonce = os.urandom(20)
            tpm.run("tpm2_quote", "-c", f"{kind}.ctx", "-l", spec, "-q", nonce.hex(),
                    "-m", f"{kind}.msg", "-s", f"{kind}.sig", "-o", f"{kind}.pcrs",
                    "-g", "sha256", "--scheme", scheme)
            tpm.run("tpm2_flushcontext", "-t")
            # tpm2-tools' own checker agrees the quote is valid (oracle sanity). Not for
            # RSAPSS: tpm2_checkquote 5.4 rejects swtpm's PSS signature (salt = digest length),
            # which is standard PSS and verifies with cryptography.
            if scheme != "rsapss":
                tpm.run("tpm2_checkquote", "-u", f"{kind}.pub", "-m", f"{kind}.msg", "-s",
                        f"{kind}.sig", "-f", f"{kind}.pcrs", "-g", "sha256", "-q",
                        nonce.hex())
            quotes[kind] = RealQuote(ak, tpm.read(f"{kind}.msg"), tpm.read(f"{kind}.sig"),
                                     _pcrread(tpm, spec), selection, nonce)
        yield quotes


@pytest.mark.swtpm
@pytest.mark.parametrize("kind", sorted(AK_KINDS))
def test_swtpm_quote_accepted(swtpm_quotes: dict[str, RealQuote], kind: str) -> None:
    q = swtpm_quotes[kind]
    assert q.ak.type == (TpmAlg.ECC if kind.startswith("ecc") else TpmAlg.RSA)
    result = appraise_quote(q.ak, q.attest, q.signature, expected_nonce=q.nonce,
                            pcr_values=q.values, requested=q.selection, previous_clock=None)
    assert result.failures == [] and result.ok
    assert result.attest.quote is not None
    assert result.attest.quote.pcr_select == q.selection
    assert q.values["sha256"][16] != bytes(32)


@pytest.mark.swtpm
@pytest.mark.parametrize("kind", sorted(AK_KINDS))
def test_swtpm_quote_tampering_rejected(swtpm_quotes: dict[str, RealQuote], kind: str) -> None:
    q = swtpm_quotes[kind]

    def run(attest: bytes = q.attest, sig: bytes = q.signature,
            values: dict[str, dict[int, bytes]] = q.values,
            nonce: bytes = q.nonce) -> list[type[AttestationError]]:
        return appraise(q.ak, attest, sig, values, nonce=nonce, requested=q.selection)

    # Every single-bit flip of the attest or the signature is fatal (never a pass).
    for blob in ("attest", "signature"):
        data = q.attest if blob == "attest" else q.signature
        for bit in range(len(data) * 8):
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            with pytest.raises((MalformedStructure, QuoteMagicInvalid, QuoteTypeInvalid,
                                QuoteSignatureInvalid)):
                if blob == "attest":
                    run(attest=bytes(flipped))
                else:
                    run(sig=bytes(flipped))
    with pytest.raises(QuoteNonceMismatch):
        run(nonce=q.nonce[:-1] + bytes([q.nonce[-1] ^ 1]))
    wrong = {**q.values, "sha256": {**q.values["sha256"], 16: bytes(32)}}
    assert run(values=wrong) == [PcrDigestMismatch]
    assert run() == []


def _other_ak(swtpm_quotes: dict[str, RealQuote], kind: str) -> TpmPublic:
    return next(q.ak for k, q in swtpm_quotes.items() if k != kind)


@pytest.mark.swtpm
def test_swtpm_quote_under_another_ak_rejected(swtpm_quotes: dict[str, RealQuote]) -> None:
    for kind, q in swtpm_quotes.items():
        with pytest.raises(QuoteSignatureInvalid):
            appraise(_other_ak(swtpm_quotes, kind), q.attest, q.signature, q.values,
                     nonce=q.nonce, requested=q.selection)

