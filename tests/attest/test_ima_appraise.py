"""One round of IMA appraisal (issue 13): full and incremental lists, reboots and mismatches
ask for a re-send from a named offset, failing entries are never accepted past."""

from __future__ import annotations

import hashlib

import pytest

from attest.core.ima import ImaOffsetMismatch
from attest.core.ima.appraise import ImaState, appraise_ima
from attest.core.ima.encode import make_entry, to_binary
from attest.core.ima.policy import RuntimePolicy, keylime_policy
from attest.core.ima.replay import initial_pcr, template_digest
from attest.core.policy import AppraisalPolicy, PolicyInvalid
from attest.core.tpm_structs import ClockInfo

GOOD = {f"/usr/bin/p{i}": hashlib.sha256(b"p%d" % i).digest() for i in range(6)}
POLICY = RuntimePolicy.from_dict(keylime_policy(
    {p: [d.hex()] for p, d in GOOD.items()}, excludes=["/var/log/.*"]))
BOOT = ClockInfo(clock=1000, reset_count=3, restart_count=0, safe=True)


def _entries(paths=tuple(GOOD)) -> list:
    return [make_entry(p, GOOD.get(p, b"\x66" * 32)) for p in paths]


def _pcr(entries: list) -> dict[str, dict[int, bytes]]:
    values = dict(initial_pcr(["sha1", "sha256"]))
    for e in entries:
        for bank in values:
            values[bank] = hashlib.new(bank, values[bank] + template_digest(e, bank)).digest()
    return {bank: {10: v, 0: bytes(len(v))} for bank, v in values.items()}


def _raw(entries: list) -> bytes:
    return b"".join(to_binary(e) for e in entries)


def test_full_then_incremental() -> None:
    entries = _entries()
    first = appraise_ima(POLICY, _raw(entries[:3]), 0, _pcr(entries[:3]), BOOT, None)
    assert first.failures == [] and first.state is not None and first.state.accepted == 3
    second = appraise_ima(POLICY, _raw(entries[3:]), 3, _pcr(entries), BOOT, first.state)
    assert second.failures == [] and second.state is not None and second.state.accepted == 6


def test_entries_read_after_the_quote_wait_for_the_next_round() -> None:
    entries = _entries()
    outcome = appraise_ima(POLICY, _raw(entries), 0, _pcr(entries[:4]), BOOT, None)
    assert outcome.failures == [] and outcome.state is not None
    assert outcome.state.accepted == 4


def test_changed_file_fails_naming_its_path() -> None:
    entries = [*_entries(), make_entry("/usr/bin/p2", b"\x01" * 32)]
    outcome = appraise_ima(POLICY, _raw(entries), 0, _pcr(entries), BOOT, None)
    (failure,) = outcome.failures
    assert failure.check == "ima.digest_not_allowed" and "/usr/bin/p2" in failure.detail
    assert "#6" in failure.detail and ("01" * 32) in failure.detail


def _after(count: int, reset: int, restart: int) -> ImaState:
    """A genuine state: the running PCR 10 after ``count`` entries, in a given boot."""
    values = _pcr(_entries()[:count])
    return ImaState(count, {b: v[10] for b, v in values.items()}, reset, restart)


@pytest.mark.parametrize(("offset", "previous", "expected"), [
    (3, None, 0),                                    # nothing accepted yet
    (2, _after(3, 3, 0), 3),                         # wrong offset
    (3, _after(3, 2, 0), 0),                         # rebooted (resetCount changed)
    (3, _after(3, 3, 1), 0),                         # restartCount changed
], ids=["nothing-accepted", "wrong-offset", "reset", "restart"])
def test_offsets_the_verifier_cannot_continue_from_are_refused(offset, previous,
                                                               expected) -> None:
    entries = _entries()
    with pytest.raises(ImaOffsetMismatch) as err:
        appraise_ima(POLICY, _raw(entries[offset:]), offset, _pcr(entries), BOOT, previous)
    assert err.value.expected == expected
    assert err.value.problem_extra()["ima_offset"] == expected and err.value.status == 409


def test_the_same_boot_continues() -> None:
    entries = _entries()
    outcome = appraise_ima(POLICY, _raw(entries[3:]), 3, _pcr(entries), BOOT, _after(3, 3, 0))
    assert outcome.failures == [] and outcome.state is not None
    assert outcome.state.accepted == 6


def test_incremental_mismatch_asks_for_a_full_resend() -> None:
    entries = _entries()
    state = appraise_ima(POLICY, _raw(entries[:3]), 0, _pcr(entries[:3]), BOOT, None).state
    forged = _entries(["/usr/bin/p4", "/usr/bin/p5"])  # p3 left out of the increment
    with pytest.raises(ImaOffsetMismatch) as err:
        appraise_ima(POLICY, _raw(forged), 3, _pcr(entries[:5]), BOOT, state)
    assert err.value.expected == 0


def test_full_list_that_does_not_replay_is_a_failure() -> None:
    entries = _entries()
    outcome = appraise_ima(POLICY, _raw(entries[1:]), 0, _pcr(entries), BOOT, None)
    assert [f.check for f in outcome.failures] == ["ima.replay"] and outcome.state is None


def test_missing_and_malformed_lists_fail() -> None:
    entries = _entries()
    assert [f.check for f in appraise_ima(POLICY, None, 0, _pcr(entries), BOOT, None)
            .failures] == ["ima.required"]
    assert [f.check for f in appraise_ima(POLICY, _raw(entries)[:-1], 0, _pcr(entries),
                                          BOOT, None).failures] == ["ima.truncated"]
    no_pcr10 = {"sha256": {0: bytes(32)}}
    assert [f.check for f in appraise_ima(POLICY, _raw(entries), 0, no_pcr10, BOOT, None)
            .failures] == ["ima.replay"]


def test_state_round_trips_through_json() -> None:
    state = ImaState(4, {"sha256": b"\x01" * 32}, 3, 1)
    assert ImaState.from_json(state.as_json()) == state


def test_appraisal_policy_takes_an_inline_keylime_runtime_policy() -> None:
    doc = {"name": "pi", "selection": {"sha256": [0, 10]},
           "runtime_policy": keylime_policy({"/x": ["aa" * 32]})}
    assert AppraisalPolicy.from_dict(doc).runtime_policy is not None
    with pytest.raises(PolicyInvalid, match="PCR 10"):
        AppraisalPolicy.from_dict({**doc, "selection": {"sha256": [0]}})
    with pytest.raises(PolicyInvalid, match=r"^runtime_policy\.meta\.version"):
        AppraisalPolicy.from_dict({**doc, "runtime_policy": {"meta": {"version": 9}}})
