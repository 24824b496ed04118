"""Quote checks that mutation testing showed were not pinned (docs/mutation.md, issue 9.9).

Each test names the mutant of ``attest/core/quote.py`` it kills. The main gaps were:

- the slow path of the PCR checks (``check_pcr_values`` then ``check_pcr_digest``), taken when
  the values sent do not line up with the quoted selection key for key: with an extra *empty*
  bank (which is allowed) the digest was checked only by code no test reached, so removing
  that check let tampered PCR values through;
- the digest-size check of the fast path on a single-bank quote (the usual one): values
  re-split between PCRs hash to the same digest, and only the size check tells them apart;
- the details of the refusals (which bank, which PCRs), which operators act on.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from attest.core.quote import (
    PcrDigestMismatch,
    PcrSelectionInsufficient,
    PcrValuesSelectionMismatch,
    QuoteTypeInvalid,
    appraise_quote,
    check_clock,
    check_pcr_digest,
    check_pcr_values,
    check_selection,
    check_type,
)
from attest.core.tpm_structs import ClockInfo, QuoteInfo, TpmAlg, parse_tpms_attest
from tests.support.simtpm import SimulatedTpm

SEL = {"sha256": frozenset({0, 7, 10}), "sha1": frozenset({10})}
ONE_BANK = {"sha256": frozenset({0, 7, 10})}
NONCE = bytes(range(32))
Values = dict[str, dict[int, bytes]]


@pytest.fixture(scope="module")
def sim() -> SimulatedTpm:
    tpm = SimulatedTpm()
    tpm.extend(10, b"k3s config")
    tpm.extend(7, b"secure boot state")
    return tpm


def failures(sim: SimulatedTpm, attest: bytes, sig: bytes, values: Values,
             requested: dict[str, frozenset[int]]) -> list[type[Exception]]:
    result = appraise_quote(sim.ak_public, attest, sig, expected_nonce=NONCE, pcr_values=values,
                            requested=requested, previous_clock=None)
    return [type(f) for f in result.failures]


def quote_info(attest: bytes) -> QuoteInfo:
    quote = parse_tpms_attest(attest).quote
    assert quote is not None
    return quote


# -- check_type ----------------------------------------------------------------------------------

def test_check_type_needs_both_the_quote_type_and_a_quote_body(sim: SimulatedTpm) -> None:
    # Kills `type != QUOTE or quote is None` -> `and`: the parser never builds these two
    # structures, so only a hand-built TpmsAttest shows that check_type holds on its own.
    parsed = parse_tpms_attest(sim.quote(NONCE, SEL)[0])
    assert check_type(parsed) == parsed.quote
    with pytest.raises(QuoteTypeInvalid):
        check_type(parsed._replace(type=0x8017))  # TPM_ST_ATTEST_CERTIFY with a quote body
    with pytest.raises(QuoteTypeInvalid):
        check_type(parsed._replace(quote=None))


# -- the slow path: check_pcr_values, then check_pcr_digest --------------------------------------

def test_extra_empty_bank_is_allowed_but_the_digest_is_still_checked(sim: SimulatedTpm) -> None:
    # Kills check_pcr_digest's mutants (return early, `if not compare_digest` -> False / -> not
    # negated): an empty extra bank takes the slow path, where only check_pcr_digest compares.
    attest, sig, values = sim.quote(NONCE, SEL)
    padded = {**values, "sha384": {}}
    assert failures(sim, attest, sig, padded, SEL) == []
    tampered = {**padded, "sha256": {**values["sha256"], 7: b"\x01" * 32}}
    assert failures(sim, attest, sig, tampered, SEL) == [PcrDigestMismatch]


def test_check_pcr_digest_on_its_own(sim: SimulatedTpm) -> None:
    attest, _, values = sim.quote(NONCE, SEL)
    quote = quote_info(attest)
    check_pcr_digest(quote, values, TpmAlg.SHA256)
    with pytest.raises(PcrDigestMismatch):
        check_pcr_digest(quote, {**values, "sha1": {10: bytes(20)}}, TpmAlg.SHA256)
    with pytest.raises(PcrDigestMismatch):  # the digest is over the signature's hash
        check_pcr_digest(quote, values, TpmAlg.SHA1)


def test_check_pcr_values_accepts_exactly_the_quoted_values(sim: SimulatedTpm) -> None:
    # Kills `sent.keys() != pcrs` -> `==`, `sent and …` -> `sent or …` and the size check
    # inverted: each of them flags a bank that is fine.
    attest, _, values = sim.quote(NONCE, SEL)
    check_pcr_values(quote_info(attest), values)


@pytest.mark.parametrize(("mangle", "detail"), [
    (lambda v: {"sha256": v["sha256"]}, "sha1: missing [10] extra []"),
    (lambda v: {**v, "sha256": {k: x for k, x in v["sha256"].items() if k != 0}},
     "sha256: missing [0] extra []"),
    (lambda v: {**v, "sha256": {**v["sha256"], 3: bytes(32)}}, "sha256: missing [] extra [3]"),
    (lambda v: {**v, "sha384": {0: bytes(48)}}, "bank sha384 sent but not quoted"),
    (lambda v: {**v, "sha1": {10: v["sha1"][10] + b"\x00"}}, "sha1: PCRs [10] are not 20-byte "
     "values"),
    (lambda v: {**v, "sha256": {**v["sha256"], 0: b"", 7: bytes(33)}},
     "sha256: PCRs [0, 7] are not 32-byte values"),
], ids=["bank-missing", "pcr-missing", "pcr-extra", "bank-extra", "bad-size", "two-bad-sizes"])
def test_check_pcr_values_names_only_what_is_wrong(
        sim: SimulatedTpm, mangle: Callable[[Values], Values], detail: str) -> None:
    # Kills the mutants that add or drop a problem (`len(v) != size` -> `==`, and those above).
    attest, sig, values = sim.quote(NONCE, SEL)
    with pytest.raises(PcrValuesSelectionMismatch) as info:
        check_pcr_values(quote_info(attest), mangle(values))
    assert info.value.detail == detail
    assert failures(sim, attest, sig, mangle(values), SEL) == [PcrValuesSelectionMismatch]


# -- the fast path on a single-bank quote --------------------------------------------------------

def test_single_bank_values_split_differently_do_not_pass(sim: SimulatedTpm) -> None:
    # Kills the fast path's size check inverted (`!= _SIZE_SETS[bank]` -> `==`): the shifted
    # values hash to the quoted digest, so with one bank nothing else would notice.
    attest, sig, values = sim.quote(NONCE, ONE_BANK)
    v = values["sha256"]
    joined = v[0] + v[7]
    shifted = {"sha256": {0: joined[:31], 7: joined[31:], 10: v[10]}}
    assert failures(sim, attest, sig, values, ONE_BANK) == []
    assert failures(sim, attest, sig, shifted, ONE_BANK) == [PcrValuesSelectionMismatch]


# -- check_selection -----------------------------------------------------------------------------

def test_selection_refusal_names_only_the_missing_pcrs(sim: SimulatedTpm) -> None:
    # Kills the mutants of the report's filter (`not pcrs <= …` -> `pcrs <= …`, `<=` -> `<`).
    quote = quote_info(sim.quote(NONCE, SEL)[0])
    check_selection(quote, SEL)
    check_selection(quote, {"sha256": frozenset({7})})  # a subset is enough
    with pytest.raises(PcrSelectionInsufficient) as info:
        check_selection(quote, {"sha256": frozenset({0, 7, 10, 14}), "sha1": frozenset({10})})
    assert info.value.detail == "requested PCRs not quoted: {'sha256': [14]}"
    with pytest.raises(PcrSelectionInsufficient) as info:
        check_selection(quote, {"sha384": frozenset({0})})
    assert info.value.detail == "requested PCRs not quoted: {'sha384': [0]}"


# -- check_clock ---------------------------------------------------------------------------------

def test_same_boot_is_not_a_reboot_and_an_unchanged_clock_is_no_rollback() -> None:
    # Kills the final `return False` -> `return True` (every quote would report a reboot) and
    # `current.clock < previous.clock` -> `<=` (the documented rule: only a *lower* clock is a
    # rollback).
    prev = ClockInfo(clock=50_000, reset_count=3, restart_count=1, safe=True)
    assert check_clock(prev._replace(clock=50_001), prev) is False
    assert check_clock(prev, prev) is False
    assert check_clock(prev._replace(restart_count=2, clock=10), prev) is False  # a resume
    assert check_clock(prev._replace(reset_count=4, clock=10, restart_count=0), prev) is True
    assert check_clock(prev, None) is False


def test_rebooted_flag_through_appraise_quote() -> None:
    tpm = SimulatedTpm()
    first = parse_tpms_attest(tpm.quote(NONCE, ONE_BANK)[0]).clock_info
    attest, sig, values = tpm.quote(NONCE, ONE_BANK)
    same_boot = appraise_quote(tpm.ak_public, attest, sig, expected_nonce=NONCE,
                               pcr_values=values, requested=ONE_BANK, previous_clock=first)
    assert same_boot.ok and same_boot.rebooted is False
