"""TCG2 event-log parsing, replay and appraisal against real firmware logs and crafted ones.

Reference data: tpm2-tools' ``event-pretty/*.yaml`` (made by a fixed tpm2-tools, which the
fixtures README says to trust over Debian's buggy binary) and Keylime's logs. The test computes
expected PCR values with ``hashlib``, independently of the code under test (which uses
``cryptography``), so one implementation checks the other.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from cryptography.hazmat.primitives import hashes

from attest.core.errors import AttestationError, MalformedStructure
from attest.core.eventlog import (
    EV_NO_ACTION,
    HASH_ALGORITHMS,
    Event,
    EventDigestNotAllowed,
    EventLog,
    EventLogEmpty,
    EventLogMalformed,
    EventLogPcrIndexInvalid,
    EventLogPcrNotQuoted,
    EventLogReference,
    EventLogReferenceInvalid,
    EventLogReplayMismatch,
    EventLogSizeInvalid,
    EventLogSpecIdInvalid,
    EventLogStartupLocalityInvalid,
    EventLogTooLarge,
    EventLogTruncated,
    EventLogUnknownAlgorithm,
    PcrReference,
    RequiredEventMissing,
    appraise_event_log,
    event_type_name,
    initial_pcr_value,
    parse_event_log,
    replay_event_log,
    startup_locality,
)
from attest.core.eventlog import parse as eventlog_parse
from attest.core.eventlog.model import new_event
from tests.support.swtpm import OracleSwtpm, running_oracle_swtpm

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "eventlogs"
TPM2_TOOLS = FIXTURES / "tpm2-tools"
KEYLIME = FIXTURES / "keylime"
needs_fixtures = pytest.mark.skipif(
    not TPM2_TOOLS.is_dir() or not KEYLIME.is_dir(),
    reason=f"event-log fixtures not found at {FIXTURES} (../shared/fixtures seen from the repo)")

YAML_LOADER: Any = getattr(yaml, "CBaseLoader", yaml.BaseLoader)  # every scalar stays a string
HASHLIB = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha384": hashlib.sha384,
           "sha512": hashlib.sha512}


def _yaml_cases() -> list[Path]:
    if not TPM2_TOOLS.is_dir():
        return []
    return sorted(p for p in TPM2_TOOLS.glob("*.bin")
                  if (TPM2_TOOLS / "event-pretty" / f"{p.name}.yaml").is_file()
                  and "\npcrs:" in (TPM2_TOOLS / "event-pretty" / f"{p.name}.yaml").read_text())


def _yaml_pcrs(binary: Path) -> dict[str, dict[int, bytes]]:
    text = (TPM2_TOOLS / "event-pretty" / f"{binary.name}.yaml").read_text()
    # Only the `pcrs:` tail: some files (the SHA-1 one) have a malformed `events` mapping.
    doc = yaml.load(text[text.index("\npcrs:"):], Loader=YAML_LOADER)
    return {bank: {int(pcr): bytes.fromhex(value.removeprefix("0x"))
                   for pcr, value in values.items()}
            for bank, values in doc["pcrs"].items()}


def _oracle_replay(log: EventLog, pcr0_start: int = 0) -> dict[str, dict[int, bytes]]:
    """A deliberately naive hashlib replay, starting PCR 0 at 00…0<pcr0_start>."""
    out: dict[str, dict[int, bytes]] = {}
    for event in log.events:
        if event.event_type == EV_NO_ACTION:
            continue
        for bank, digest in event.digests.items():
            size = HASHLIB[bank]().digest_size
            start = bytes(size - 1) + bytes([pcr0_start]) if event.pcr == 0 else bytes(size)
            old = out.setdefault(bank, {}).get(event.pcr, start)
            out[bank][event.pcr] = HASHLIB[bank](old + digest).digest()
    return out


# ---------------------------------------------------------------- crafted-log builders
SPEC_SIG = b"Spec ID Event03\x00"
SHA1, SHA256 = 0x0004, 0x000B


def legacy(pcr: int, etype: int, digest: bytes, data: bytes) -> bytes:
    return struct.pack("<II20sI", pcr, etype, digest, len(data)) + data


def spec_id(algs: list[tuple[int, int]], vendor: bytes = b"", *, count: int | None = None,
            digest: bytes = bytes(20), tail: bytes = b"") -> bytes:
    body = (SPEC_SIG + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs) if count is None else count)
            + b"".join(struct.pack("<HH", a, s) for a, s in algs)
            + bytes([len(vendor)]) + vendor + tail)
    return legacy(0, EV_NO_ACTION, digest, body)


def event2(pcr: int, etype: int, digests: list[tuple[int, bytes]], data: bytes = b"x",
           *, count: int | None = None, size: int | None = None) -> bytes:
    n = len(digests) if count is None else count
    return (struct.pack("<III", pcr, etype, n)
            + b"".join(struct.pack("<H", a) + d for a, d in digests)
            + struct.pack("<I", len(data) if size is None else size) + data)


AGILE_HEADER = spec_id([(SHA1, 20), (SHA256, 32)])


def dual(pcr: int, seed: bytes, etype: int = 0x0D, data: bytes = b"x") -> bytes:
    return event2(pcr, etype, [(SHA1, hashlib.sha1(seed).digest()),
                               (SHA256, hashlib.sha256(seed).digest())], data)


def locality_event(locality: int, pcr: int = 0, extra: bytes = b"") -> bytes:
    return event2(pcr, EV_NO_ACTION, [(SHA1, bytes(20)), (SHA256, bytes(32))],
                  b"StartupLocality\x00" + bytes([locality]) + extra)


# ---------------------------------------------------------------- real fixtures
@needs_fixtures
def test_every_tpm2_tools_log_with_pcrs_is_covered() -> None:
    # Guards against the parametrised test silently running on nothing.
    assert len(_yaml_cases()) == 10


@needs_fixtures
@pytest.mark.parametrize("binary", _yaml_cases(), ids=lambda p: p.name)
def test_replay_matches_tpm2_tools_reference(binary: Path) -> None:
    log = parse_event_log(binary.read_bytes())
    expected = _yaml_pcrs(binary)
    assert expected and all(expected.values())
    assert replay_event_log(log) == expected  # every bank, every PCR, nothing extra
    assert _oracle_replay(log) == expected  # and the oracle agrees: the reference is sane


@needs_fixtures
@pytest.mark.parametrize("binary", _yaml_cases(), ids=lambda p: p.name)
def test_events_match_tpm2_tools_parse(binary: Path) -> None:
    doc = yaml.load((TPM2_TOOLS / "event-pretty" / f"{binary.name}.yaml").read_text(),
                    Loader=YAML_LOADER)
    log = parse_event_log(binary.read_bytes())
    if not isinstance(doc["events"], list):  # the SHA-1 YAML's events are a broken mapping
        assert log.spec_id is None and len(log.events) == 17
        assert [e.type_name for e in log.events[:2]] == ["EV_S_CRTM_VERSION",
                                                          "EV_EFI_VARIABLE_DRIVER_CONFIG"]
        assert log.events[-1].digests == {
            "sha1": bytes.fromhex("5b135351ac81e93f17c43ec65ec0e4755ec29e45")}
        return
    assert len(doc["events"]) == len(log.events)
    for theirs, ours in zip(doc["events"], log.events, strict=True):
        assert int(theirs["EventNum"]) == ours.index
        assert int(theirs["PCRIndex"]) == ours.pcr
        assert theirs["EventType"] == ours.type_name
        assert int(theirs["EventSize"]) == len(ours.data)
        if ours.index == 0:
            assert log.spec_id is not None
            assert ours.digests == {"sha1": bytes(20)}
            # Each item is {"Algorithm[i]": None, "algorithmId": name, "digestSize": n}.
            algs = theirs["SpecID"][0]["Algorithms"]
            assert [(a["algorithmId"], int(a["digestSize"])) for a in algs] == [
                (HASH_ALGORITHMS[alg][0], size) for alg, size in log.spec_id.algorithms]
        else:
            assert {d["AlgorithmId"]: bytes.fromhex(d["Digest"]) for d in theirs["Digests"]} \
                == ours.digests


@needs_fixtures
def test_keylime_startup_locality_3_sets_pcr0_initial_value() -> None:
    log = parse_event_log((KEYLIME / "binary_bios_measurements").read_bytes())
    assert log.spec_id is not None and log.spec_id.bank_names == ("sha1", "sha256")
    assert startup_locality(log) == 3
    replayed = replay_event_log(log)
    per_spec = _oracle_replay(log, pcr0_start=3)
    naive = _oracle_replay(log, pcr0_start=0)
    for bank in ("sha1", "sha256"):
        # Recompute PCR 0 by hand from 00…03 over the extended PCR 0 digests.
        value = bytes(HASHLIB[bank]().digest_size - 1) + b"\x03"
        pcr0 = [e for e in log.events if e.pcr == 0 and e.event_type != EV_NO_ACTION]
        assert len(pcr0) >= 3
        for event in pcr0:
            value = HASHLIB[bank](value + event.digests[bank]).digest()
        assert replayed[bank][0] == value == per_spec[bank][0]
        assert naive[bank][0] != value  # a replay from zeros would be wrong
        assert {p: v for p, v in replayed[bank].items() if p} == \
            {p: v for p, v in naive[bank].items() if p}  # only PCR 0 depends on the locality
    assert replayed == per_spec


@needs_fixtures
def test_keylime_secureboot_log_replays() -> None:
    log = parse_event_log((KEYLIME / "binary_bios_measurements-secureboot").read_bytes())
    assert startup_locality(log) is None and len(log.events) == 99
    replayed = replay_event_log(log)
    assert set(replayed) == {"sha256"} and {0, 1, 2, 3, 4, 5, 6, 7} <= set(replayed["sha256"])
    assert replayed == _oracle_replay(log)
    assert appraise_event_log(log, replayed, None) == []


# ---------------------------------------------------------------- edited logs
def _gce() -> tuple[bytes, EventLog, dict[str, dict[int, bytes]]]:
    raw = (TPM2_TOOLS / "event-gce-ubuntu-2104-log.bin").read_bytes()
    log = parse_event_log(raw)
    return raw, log, replay_event_log(log)


@needs_fixtures
def test_log_replays_to_its_own_pcrs() -> None:
    _, log, quoted = _gce()
    assert appraise_event_log(log, quoted, None) == []
    # A quote that also covers PCRs the log never touches (IMA, application PCRs) is fine.
    extra = {b: {**v, 10: b"\x42" * len(v[0]), 23: b"\x17" * len(v[0])} for b, v in quoted.items()}
    assert appraise_event_log(log, extra, None) == []


@needs_fixtures
def test_edited_digest_is_detected() -> None:
    raw, log, quoted = _gce()
    victim = next(e for e in log.events if e.pcr == 4 and e.type_name.endswith("APPLICATION"))
    old = victim.digests["sha256"]
    assert raw.count(old) == 1
    pos = raw.index(old)
    edited = raw[:pos] + bytes([old[0] ^ 1]) + raw[pos + 1:]
    failures = appraise_event_log(parse_event_log(edited), quoted, None)
    assert len(failures) == 1
    (failure,) = failures
    assert isinstance(failure, EventLogReplayMismatch)
    assert (failure.bank, failure.pcr, failure.expected) == ("sha256", 4, quoted["sha256"][4])
    assert failure.got != quoted["sha256"][4]
    assert "sha256 PCR 4" in failure.detail and quoted["sha256"][4].hex() in failure.detail


@needs_fixtures
def test_dropped_reordered_and_relabelled_events_are_detected() -> None:
    _, log, quoted = _gce()
    pcr4 = [i for i, e in enumerate(log.events) if e.pcr == 4]
    assert len(pcr4) >= 2
    events = list(log.events)
    dropped = replace(log, events=tuple(e for i, e in enumerate(events) if i != pcr4[-1]))
    swapped = list(events)
    swapped[pcr4[0]], swapped[pcr4[1]] = swapped[pcr4[1]], swapped[pcr4[0]]
    # Relabel a measurement EV_NO_ACTION to hide it from the reference checks: replay skips it,
    # so the quote no longer matches.
    relabelled = list(events)
    relabelled[pcr4[-1]] = replace(events[pcr4[-1]], event_type=EV_NO_ACTION)
    for bad in (dropped, replace(log, events=tuple(swapped)),
                replace(log, events=tuple(relabelled))):
        failures = appraise_event_log(bad, quoted, None)
        assert {(f.bank, f.pcr) for f in failures if isinstance(f, EventLogReplayMismatch)} == \
            {("sha1", 4), ("sha256", 4), ("sha384", 4)}


@needs_fixtures
def test_event_data_is_not_authenticated_so_editing_it_changes_nothing() -> None:
    _, log, quoted = _gce()
    events = tuple(replace(e, data=b"forged") if e.index else e for e in log.events)
    assert replay_event_log(replace(log, events=events)) == quoted


@needs_fixtures
def test_log_of_another_boot_is_detected() -> None:
    _, _, quoted = _gce()
    other = parse_event_log((TPM2_TOOLS / "event-arch-linux.bin").read_bytes())
    failures = appraise_event_log(other, quoted, None)
    assert failures and all(isinstance(f, EventLogReplayMismatch) for f in failures)
    assert {f.pcr for f in failures if isinstance(f, EventLogReplayMismatch)} >= {0, 4, 7}


# ---------------------------------------------------------------- reference values
def _pcr4_digests(log: EventLog, bank: str = "sha256") -> list[bytes]:
    return [e.digests[bank] for e in log.events if e.pcr == 4 and e.event_type != EV_NO_ACTION]


@needs_fixtures
def test_reference_passes_when_every_digest_is_allowed_and_required_present() -> None:
    _, log, quoted = _gce()
    digests = _pcr4_digests(log)
    ref = EventLogReference.from_dict({"bank": "sha256", "pcrs": {4: {
        "allowed": [d.hex() for d in digests[1:]], "required": [digests[0].hex()]}}})
    assert appraise_event_log(log, quoted, ref) == []


@needs_fixtures
def test_reference_rejects_a_digest_that_is_not_allowed() -> None:
    _, log, quoted = _gce()
    digests = _pcr4_digests(log)
    banned = digests[-1]
    ref = EventLogReference("sha256", {4: PcrReference(
        allowed=frozenset(d for d in digests if d != banned))})
    failures = appraise_event_log(log, quoted, ref)
    bad = [e.index for e in log.events if e.pcr == 4 and e.digests.get("sha256") == banned]
    assert [type(f) for f in failures] == [EventDigestNotAllowed] * len(bad)
    assert [f.index for f in failures if isinstance(f, EventDigestNotAllowed)] == bad
    assert banned.hex() in failures[0].detail and "PCR 4" in failures[0].detail


@needs_fixtures
def test_reference_reports_a_required_digest_that_was_not_measured() -> None:
    _, log, quoted = _gce()
    missing = hashlib.sha256(b"the kernel we expected").digest()
    ref = EventLogReference("sha256", {4: PcrReference(required=frozenset({missing}))})
    failures = appraise_event_log(log, quoted, ref)
    assert [type(f) for f in failures] == [RequiredEventMissing]
    assert missing.hex() in failures[0].detail
    # A required digest measured in another PCR does not count for PCR 4.
    in_pcr7 = next(e.digests["sha256"] for e in log.events if e.pcr == 7)
    ref7 = EventLogReference("sha256", {4: PcrReference(required=frozenset({in_pcr7}))})
    assert [type(f) for f in appraise_event_log(log, quoted, ref7)] == [RequiredEventMissing]


@needs_fixtures
def test_empty_allow_list_forbids_every_measurement() -> None:
    _, log, quoted = _gce()
    ref = EventLogReference("sha256", {4: PcrReference(allowed=frozenset())})
    failures = appraise_event_log(log, quoted, ref)
    assert len(failures) == len(_pcr4_digests(log)) > 0


@needs_fixtures
def test_reference_needs_the_pcr_to_be_quoted() -> None:
    _, log, quoted = _gce()
    ref = EventLogReference("sha256", {4: PcrReference(allowed=frozenset(_pcr4_digests(log)))})
    partial = {b: {p: v for p, v in pcrs.items() if p != 4} for b, pcrs in quoted.items()}
    assert [type(f) for f in appraise_event_log(log, partial, ref)] == [EventLogPcrNotQuoted]
    only_sha1 = {"sha1": quoted["sha1"]}
    assert [type(f) for f in appraise_event_log(log, only_sha1, ref)] == [EventLogPcrNotQuoted]


@needs_fixtures
def test_reference_digests_are_not_checked_on_an_unauthenticated_pcr() -> None:
    _, log, quoted = _gce()
    forged = {b: dict(v) for b, v in quoted.items()}
    forged["sha256"][4] = bytes(32)
    ref = EventLogReference("sha256", {4: PcrReference(allowed=frozenset())})
    # Only the mismatch: digests of a log that does not match the quote mean nothing.
    assert [type(f) for f in appraise_event_log(log, forged, ref)] == [EventLogReplayMismatch]


@needs_fixtures
def test_referenced_pcr_the_log_never_touches_must_hold_its_reset_value() -> None:
    _, log, quoted = _gce()
    assert 12 not in quoted["sha256"]
    ref = EventLogReference("sha256", {12: PcrReference(allowed=frozenset())})
    clean = {**quoted, "sha256": {**quoted["sha256"], 12: bytes(32)}}
    assert appraise_event_log(log, clean, ref) == []
    dirty = {**quoted, "sha256": {**quoted["sha256"], 12: b"\x01" * 32}}
    failures = appraise_event_log(log, dirty, ref)
    assert [type(f) for f in failures] == [EventLogReplayMismatch]
    assert failures[0].got == bytes(32)  # type: ignore[attr-defined]


@needs_fixtures
def test_no_action_events_are_ignored_by_reference_checks() -> None:
    log = parse_event_log((KEYLIME / "binary_bios_measurements").read_bytes())
    quoted = replay_event_log(log)
    extended = {e.digests["sha256"] for e in log.events
                if e.pcr == 0 and e.event_type != EV_NO_ACTION}
    assert any(e.pcr == 0 and e.event_type == EV_NO_ACTION for e in log.events[1:])
    ref = EventLogReference("sha256", {0: PcrReference(allowed=frozenset(extended))})
    assert appraise_event_log(log, quoted, ref) == []


# ---------------------------------------------------------------- EventLogReference.from_dict
def test_reference_from_yaml_policy_section() -> None:
    a, b = "ab" * 32, "CD" * 32
    doc = yaml.safe_load(f"eventlog: {{bank: sha256, pcrs: {{4: {{allowed: ['{a}'], "
                         f"required: ['0x{b}']}}, '7': {{required: []}}}}}}")
    ref = EventLogReference.from_dict(doc["eventlog"])
    assert ref.bank == "sha256" and set(ref.pcrs) == {4, 7}
    assert ref.pcrs[4] == PcrReference(allowed=frozenset({bytes.fromhex(a)}),
                                       required=frozenset({bytes.fromhex(b)}))
    assert ref.pcrs[7].allowed is None
    with pytest.raises(FrozenInstanceError):
        ref.bank = "sha1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ref.pcrs[5] = PcrReference()  # type: ignore[index]


@pytest.mark.parametrize(("doc", "key"), [
    ([], "eventlog"),
    ({"bank": "sha256", "pcrs": {4: {"required": []}}, "extra": 1}, "eventlog.extra"),
    ({"bank": "md5", "pcrs": {4: {"required": []}}}, "eventlog.bank"),
    ({"pcrs": {4: {"required": []}}}, "eventlog.bank"),
    ({"bank": "sha256"}, "eventlog.pcrs"),
    ({"bank": "sha256", "pcrs": {}}, "eventlog.pcrs"),
    ({"bank": "sha256", "pcrs": {"four": {"required": []}}}, "eventlog.pcrs.four"),
    ({"bank": "sha256", "pcrs": {True: {"required": []}}}, "eventlog.pcrs.True"),
    ({"bank": "sha256", "pcrs": {24: {"required": []}}}, "eventlog.pcrs.24"),
    ({"bank": "sha256", "pcrs": {-1: {"required": []}}}, "eventlog.pcrs.-1"),
    ({"bank": "sha256", "pcrs": {4: {"required": []}, "4": {"required": []}}}, "eventlog.pcrs.4"),
    ({"bank": "sha256", "pcrs": {4: ["ab" * 32]}}, "eventlog.pcrs.4"),
    ({"bank": "sha256", "pcrs": {4: {}}}, "eventlog.pcrs.4"),
    ({"bank": "sha256", "pcrs": {4: {"allow": []}}}, "eventlog.pcrs.4.allow"),
    ({"bank": "sha256", "pcrs": {4: {"allowed": "ab" * 32}}}, "eventlog.pcrs.4.allowed"),
    ({"bank": "sha256", "pcrs": {4: {"allowed": ["ab" * 32, 0x1234]}}},
     "eventlog.pcrs.4.allowed[1]"),
    ({"bank": "sha256", "pcrs": {4: {"required": ["zz" * 32]}}}, "eventlog.pcrs.4.required[0]"),
    ({"bank": "sha1", "pcrs": {4: {"required": ["ab" * 32]}}}, "eventlog.pcrs.4.required[0]"),
])
def test_reference_validation_names_the_bad_key(doc: Any, key: str) -> None:
    with pytest.raises(EventLogReferenceInvalid) as info:
        EventLogReference.from_dict(doc)
    assert info.value.detail.startswith(key + ":")
    assert isinstance(info.value, ValueError) and isinstance(info.value, AttestationError)
    assert info.value.check == "policy.eventlog" and info.value.hint


def test_unquoted_yaml_hex_is_rejected_with_a_hint() -> None:
    doc = yaml.safe_load("bank: sha1\npcrs: {4: {allowed: [0x" + "ab" * 20 + "]}}")
    with pytest.raises(EventLogReferenceInvalid, match=r"allowed\[0\].*quote"):
        EventLogReference.from_dict(doc)


# ---------------------------------------------------------------- crafted logs: parser
def test_crafted_agile_log_parses_and_replays() -> None:
    log = parse_event_log(AGILE_HEADER + dual(4, b"a") + dual(4, b"b"))
    assert log.spec_id is not None and log.spec_id.bank_names == ("sha1", "sha256")
    assert [e.index for e in log.events] == [0, 1, 2]
    value = bytes(32)
    for seed in (b"a", b"b"):
        value = hashlib.sha256(value + hashlib.sha256(seed).digest()).digest()
    assert replay_event_log(log)["sha256"] == {4: value}


def test_unknown_algorithms_declared_in_spec_id_are_skipped() -> None:
    header = spec_id([(0x0027, 32), (SHA256, 32), (0x7F01, 7)], vendor=b"vendor")
    sha = hashlib.sha256(b"m").digest()
    body = event2(9, 0x0D, [(0x7F01, b"\x01" * 7), (SHA256, sha), (0x0027, b"\x02" * 32)], b"d")
    log = parse_event_log(header + body)
    assert log.spec_id is not None and log.spec_id.vendor_info == b"vendor"
    assert log.spec_id.algorithms == ((0x0027, 32), (SHA256, 32), (0x7F01, 7))
    assert log.events[1].digests == {"sha256": sha} and log.events[1].data == b"d"
    assert replay_event_log(log) == {"sha256": {9: hashlib.sha256(bytes(32) + sha).digest()}}


def test_legacy_log_without_spec_id() -> None:
    d = hashlib.sha1(b"x").digest()
    log = parse_event_log(legacy(0, 8, d, b"crtm") + legacy(7, 0x80000001, d, b""))
    assert log.spec_id is None and not log.crypto_agile
    assert [e.type_name for e in log.events] == ["EV_S_CRTM_VERSION",
                                                 "EV_EFI_VARIABLE_DRIVER_CONFIG"]
    assert replay_event_log(log) == {"sha1": {p: hashlib.sha1(bytes(20) + d).digest()
                                              for p in (0, 7)}}


def test_zero_padding_after_the_last_event_is_accepted() -> None:
    raw = AGILE_HEADER + dual(4, b"a")
    assert parse_event_log(raw + bytes(4096)) == parse_event_log(raw)


@pytest.mark.parametrize(("raw", "error"), [
    (b"", EventLogEmpty),
    (bytes(100), EventLogEmpty),
    (bytes(16 * 1024 * 1024 + 1), EventLogTooLarge),
    (AGILE_HEADER + dual(4, b"a") + b"\x00\x00\x01", EventLogTruncated),
    (AGILE_HEADER + dual(4, b"a")[:-1], EventLogTruncated),
    (AGILE_HEADER[:40], EventLogTruncated),
    (AGILE_HEADER + event2(4, 13, [(SHA256, bytes(32))], size=0xFFFFFFFF), EventLogSizeInvalid),
    (AGILE_HEADER + event2(4, 13, [], count=0), EventLogSizeInvalid),
    (AGILE_HEADER + event2(4, 13, [(SHA1, bytes(20))], count=3), EventLogSizeInvalid),
    (AGILE_HEADER + event2(4, 13, [(SHA1, bytes(20))], count=0xFFFFFFFF), EventLogSizeInvalid),
    (AGILE_HEADER + event2(4, 13, [(0x000C, bytes(48))]), EventLogUnknownAlgorithm),
    (AGILE_HEADER + event2(4, 13, [(SHA1, bytes(20)), (SHA1, bytes(20))]),
     EventLogUnknownAlgorithm),
    (AGILE_HEADER + event2(24, 13, [(SHA1, bytes(20))]), EventLogPcrIndexInvalid),
    (legacy(0xFFFFFFFF, 13, bytes(20), b""), EventLogPcrIndexInvalid),
    (spec_id([(SHA1, 20)], digest=b"\x01" * 20), EventLogSpecIdInvalid),
    (spec_id([(SHA256, 20)]), EventLogSpecIdInvalid),
    (spec_id([(0x0027, 0)]), EventLogSpecIdInvalid),
    (spec_id([(0x0027, 4096)]), EventLogSpecIdInvalid),
    (spec_id([]), EventLogSpecIdInvalid),
    (spec_id([(SHA1, 20)], count=0xFFFFFFFF), EventLogSpecIdInvalid),
    (spec_id([(SHA1, 20), (SHA1, 20)]), EventLogSpecIdInvalid),
    (spec_id([(SHA1, 20)], tail=b"\x00"), EventLogSpecIdInvalid),
    (legacy(0, EV_NO_ACTION, bytes(20), SPEC_SIG + b"\x00" * 4), EventLogSpecIdInvalid),
])
def test_malformed_logs_raise_typed_errors(raw: bytes, error: type[EventLogMalformed]) -> None:
    with pytest.raises(error) as info:
        parse_event_log(raw)
    assert isinstance(info.value, MalformedStructure) and info.value.check.startswith("eventlog.")


@pytest.mark.parametrize("raw", ["\x00\x00", 5, None])
def test_non_bytes_input_is_a_typed_error(raw: Any) -> None:
    with pytest.raises(EventLogMalformed, match="expected the log as bytes"):
        parse_event_log(raw)


def test_bytearray_and_memoryview_are_accepted() -> None:
    raw = AGILE_HEADER + dual(4, b"a")
    assert parse_event_log(bytearray(raw)) == parse_event_log(memoryview(raw)) == \
        parse_event_log(raw)


def test_event_type_names() -> None:
    assert event_type_name(3) == "EV_NO_ACTION"
    assert event_type_name(0x80000003) == "EV_EFI_BOOT_SERVICES_APPLICATION"
    assert event_type_name(0x800000E0) == "EV_EFI_VARIABLE_AUTHORITY"
    assert event_type_name(0x1234) == "EV_UNKNOWN_0x00001234"


# ---------------------------------------------------------------- StartupLocality
@pytest.mark.parametrize("locality", [0, 3, 4])
def test_startup_locality_sets_pcr0_start(locality: int) -> None:
    log = parse_event_log(AGILE_HEADER + locality_event(locality) + dual(0, b"crtm"))
    start = bytes(31) + bytes([locality])
    assert startup_locality(log) == locality
    assert replay_event_log(log)["sha256"][0] == \
        hashlib.sha256(start + hashlib.sha256(b"crtm").digest()).digest()


@pytest.mark.parametrize("body", [
    locality_event(2) + dual(0, b"c"),
    locality_event(3, pcr=1) + dual(0, b"c"),
    locality_event(3, extra=b"\x00") + dual(0, b"c"),
    locality_event(3) + locality_event(3) + dual(0, b"c"),
    dual(0, b"c") + locality_event(3),
])
def test_bad_startup_locality_is_a_typed_failure(body: bytes) -> None:
    log = parse_event_log(AGILE_HEADER + body)
    with pytest.raises(EventLogStartupLocalityInvalid):
        replay_event_log(log)
    failures = appraise_event_log(log, {"sha256": {0: bytes(32)}}, None)
    assert [type(f) for f in failures] == [EventLogStartupLocalityInvalid]


def test_locality_event_after_other_pcr_measurements_is_fine() -> None:
    log = parse_event_log(AGILE_HEADER + dual(4, b"a") + locality_event(3) + dual(0, b"c"))
    assert startup_locality(log) == 3


def test_hand_built_event_with_wrong_digest_size_is_rejected_by_replay() -> None:
    log = EventLog(None, (Event(0, 4, 13, {"sha256": b"short"}, b""),))
    with pytest.raises(EventLogUnknownAlgorithm):
        replay_event_log(log)
    with pytest.raises(EventLogUnknownAlgorithm):
        replay_event_log(EventLog(None, (Event(0, 4, 13, {"md5": bytes(16)}, b""),)))


def test_digests_in_any_order_or_subset_parse_like_the_usual_layout() -> None:
    # Most events take the parser's fixed-layout fast path; these must take the general one.
    d1, d256 = hashlib.sha1(b"a").digest(), hashlib.sha256(b"a").digest()
    usual = parse_event_log(AGILE_HEADER + dual(4, b"a")).events[1]
    swapped = parse_event_log(AGILE_HEADER + event2(4, 0x0D, [(SHA256, d256), (SHA1, d1)]))
    assert swapped.events[1] == usual
    subset = parse_event_log(AGILE_HEADER + event2(4, 0x0D, [(SHA256, d256)]))
    assert subset.events[1].digests == {"sha256": d256}
    # A bank missing from an event is simply not extended, as TPM2_PCR_Extend would do.
    assert replay_event_log(subset) == {"sha256": {4: hashlib.sha256(bytes(32) + d256).digest()}}


# ---------------------------------------------------------------- a real TPM as the oracle
@pytest.fixture
def fresh_swtpm(tmp_path: Path) -> Iterator[OracleSwtpm]:
    with running_oracle_swtpm(tmp_path) as tpm:
        yield tpm


def _pcrread(tpm: OracleSwtpm, selection: dict[str, list[int]]) -> dict[str, dict[int, bytes]]:
    arg = "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in selection.items())
    doc = yaml.load(tpm.run("tpm2_pcrread", arg).stdout, Loader=YAML_LOADER)
    return {bank: {int(p): bytes.fromhex(v.removeprefix("0x")) for p, v in pcrs.items()}
            for bank, pcrs in doc.items()}


@needs_fixtures
@pytest.mark.swtpm
@pytest.mark.parametrize("name", ["event-gce-ubuntu-2104-log.bin", "event-uefi-sha1-log.bin"])
def test_replay_equals_a_real_tpm_extended_with_the_log(fresh_swtpm: OracleSwtpm,
                                                        name: str) -> None:
    """Extend swtpm (started at locality 0) with every measured event, read the PCRs back."""
    log = parse_event_log((TPM2_TOOLS / name).read_bytes())
    extends = [f"{e.pcr}:" + ",".join(f"{bank}={d.hex()}" for bank, d in e.digests.items())
               for e in log.events if e.event_type != EV_NO_ACTION]
    for start in range(0, len(extends), 32):  # tpm2_pcrextend extends in argument order
        fresh_swtpm.run("tpm2_pcrextend", *extends[start:start + 32])
    replayed = replay_event_log(log)
    from_tpm = _pcrread(fresh_swtpm, {b: sorted(p) for b, p in replayed.items()})
    assert from_tpm == replayed
    assert appraise_event_log(log, from_tpm, None) == []
    # Reset values of PCRs the log never touches, as the appraisal assumes them.
    untouched = _pcrread(fresh_swtpm, {"sha256": [12, 16, 17, 22, 23]})["sha256"]
    assert untouched == {p: initial_pcr_value(p, 32, None) for p in (12, 16, 17, 22, 23)}
    assert untouched[17] == b"\xff" * 32


# ---------------------------------------------------------------- the parser's fast path
def test_new_event_builds_an_ordinary_frozen_event() -> None:
    built = new_event(3, 7, 0x0D, {"sha256": b"\x01" * 32}, b"data")
    reference = Event(3, 7, 0x0D, {"sha256": b"\x01" * 32}, b"data")
    assert type(built) is Event and built == reference and repr(built) == repr(reference)
    assert (built.index, built.pcr, built.event_type, built.data) == (3, 7, 0x0D, b"data")
    assert built != replace(reference, pcr=8)
    assert replace(built, data=b"other") == replace(reference, data=b"other")
    with pytest.raises(FrozenInstanceError):
        built.pcr = 0  # type: ignore[misc]


@pytest.mark.parametrize("algs", [[SHA256], [SHA1, SHA256], [SHA1, SHA256, 0x000C],
                                  [0x7F01, SHA256], [SHA256, 0x7F01, SHA1], [0x7F01]],
                         ids=["sha256", "sha1+sha256", "three", "unknown+sha256",
                              "sha256+unknown+sha1", "only-unknown"])
def test_events_in_declaration_order_take_the_fast_path(algs: list[int]) -> None:
    """If the fast path silently fell back, the differential fuzz test would compare the
    general path with itself; here the general reader is made to fail instead."""
    sizes = {SHA1: 20, SHA256: 32, 0x000C: 48, 0x7F01: 7}
    digests = [(a, bytes([n]) * sizes[a]) for n, a in enumerate(algs, 1)]
    raw = (spec_id([(a, sizes[a]) for a in algs])
           + event2(4, 0x0D, digests, b"one") + event2(23, 0x80000003, digests, b""))
    with mock.patch.object(eventlog_parse, "_agile_event", side_effect=AssertionError):
        log = parse_event_log(raw)
    expected = {HASH_ALGORITHMS[a][0]: d for a, d in digests if a in HASH_ALGORITHMS}
    assert [(e.index, e.pcr, e.event_type, e.digests, e.data) for e in log.events[1:]] == \
        [(1, 4, 0x0D, expected, b"one"), (2, 23, 0x80000003, expected, b"")]
    assert list(log.events[1].digests) == [HASH_ALGORITHMS[a][0] for a in algs
                                           if a in HASH_ALGORITHMS]  # log order kept


@needs_fixtures
@pytest.mark.parametrize("path", [KEYLIME / "binary_bios_measurements",
                                  KEYLIME / "binary_bios_measurements-secureboot",
                                  TPM2_TOOLS / "event-gce-ubuntu-2104-log.bin",
                                  TPM2_TOOLS / "event-moklisttrusted.bin"],
                         ids=lambda p: p.name)
def test_real_logs_take_the_fast_path_for_every_event(path: Path) -> None:
    raw = path.read_bytes()
    with mock.patch.object(eventlog_parse, "_agile_event", side_effect=AssertionError):
        fast = parse_event_log(raw)
    assert fast == parse_event_log(raw)  # and the general path is the fuzz tests' business


def test_sm3_bank_replays() -> None:
    digest = bytes(range(32))
    log = EventLog(None, (Event(1, 4, 0x0D, {"sm3_256": digest}, b""),
                          Event(2, 4, 0x0D, {"sm3_256": digest}, b"")))
    value = bytes(32)
    for _ in range(2):
        ctx = hashes.Hash(hashes.SM3())
        ctx.update(value + digest)
        value = ctx.finalize()
    assert replay_event_log(log) == {"sm3_256": {4: value}}
