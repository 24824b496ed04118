"""Fuzzing the event-log parser: whatever the bytes, only typed errors come out.

Truncation is checked exhaustively (every offset of two real logs, one per format) with an exact
oracle: a cut on an event boundary (or inside an all-zero tail, which reads as padding) yields
that prefix of events, any other cut must be reported as :class:`EventLogTruncated`.
"""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest.core.eventlog import (
    Event,
    EventLog,
    EventLogMalformed,
    EventLogSizeInvalid,
    EventLogTruncated,
    SpecIdEvent,
    appraise_event_log,
    parse_event_log,
    replay_event_log,
)
from attest.core.eventlog import parse as eventlog_parse

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "eventlogs"
AGILE = FIXTURES / "tpm2-tools" / "event-sd-boot-fedora37.bin"
LEGACY = FIXTURES / "tpm2-tools" / "event-uefi-sha1-log.bin"
MULTI = FIXTURES / "tpm2-tools" / "event-arch-linux.bin"
needs_fixtures = pytest.mark.skipif(
    not (AGILE.is_file() and LEGACY.is_file() and MULTI.is_file()),
    reason=f"event-log fixtures not found under {FIXTURES} (../shared/fixtures from the repo)")
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.is_file() else b""


def _boundaries(log: EventLog) -> list[int]:
    """Start offset of every event, plus the end offset (all fixture algorithms are known)."""
    offsets = [0]
    for event in log.events:
        if log.spec_id is None or event.index == 0:
            size = 32 + len(event.data)
        else:
            size = 12 + sum(2 + len(d) for d in event.digests.values()) + 4 + len(event.data)
        offsets.append(offsets[-1] + size)
    return offsets


def _parse_or_typed(raw: bytes) -> EventLog | None:
    """Parse and replay; anything but success or an EventLogMalformed fails the test."""
    try:
        log = parse_event_log(raw)
    except EventLogMalformed:
        return None
    with contextlib.suppress(EventLogMalformed):
        replay_event_log(log)
    # Appraisal returns failures instead of raising, even on a nonsense log.
    assert isinstance(appraise_event_log(log, {"sha256": {0: bytes(32)}}, None), list)
    return log


@needs_fixtures
@pytest.mark.parametrize("path", [AGILE, LEGACY], ids=["crypto-agile", "legacy-sha1"])
def test_truncation_at_every_offset(path: Path) -> None:
    raw = path.read_bytes()
    full = parse_event_log(raw)
    bounds = _boundaries(full)
    assert bounds[-1] == len(raw)
    failures = 0
    for cut in range(1, len(raw)):
        k = max(i for i, b in enumerate(bounds) if b <= cut)  # events wholly before the cut
        partial = raw[bounds[k]:cut]
        if partial.strip(b"\x00") == b"":  # boundary, or zero bytes that read as padding
            if k == 0:
                continue  # nothing but zeros: EventLogEmpty, checked elsewhere
            log = parse_event_log(raw[:cut])
            assert log.events == full.events[:k]
        else:
            with pytest.raises(EventLogTruncated):
                parse_event_log(raw[:cut])
            failures += 1
    assert failures > len(raw) * 0.9  # the oracle really exercised the error path


@needs_fixtures
@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(raw: bytes) -> None:
    _parse_or_typed(raw)


def _general_path_only(data: bytes, offset: int, end: int, spec_id: SpecIdEvent,
                       events: list[Event]) -> None:
    """``_agile_events`` without its fixed-layout fast path: the reference for the fast path."""
    sizes = dict(spec_id.algorithms)
    while offset < end:
        event, offset = eventlog_parse._agile_event(data, offset, len(events), sizes)
        events.append(event)


def _outcome(raw: bytes) -> EventLog | tuple[type[EventLogMalformed], str]:
    try:
        return parse_event_log(raw)
    except EventLogMalformed as exc:
        return type(exc), exc.detail


def _check_fast_path(raw: bytes) -> None:
    """Same log or same error with and without the parser's fast path, and only typed errors."""
    fast = _outcome(raw)
    with mock.patch.object(eventlog_parse, "_agile_events", _general_path_only):
        general = _outcome(raw)
    assert fast == general
    _parse_or_typed(raw)


@needs_fixtures
@FUZZ
@given(st.binary(max_size=1024))
def test_random_events_after_a_real_spec_id_header(tail: bytes) -> None:
    header = _read(MULTI)[:_boundaries(parse_event_log(_read(MULTI)))[1]]
    _check_fast_path(header + tail)


@needs_fixtures
@FUZZ
@given(st.data())
def test_byte_flips_in_a_real_log(data: st.DataObject) -> None:
    raw = bytearray(_read(MULTI))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _check_fast_path(bytes(raw))


@needs_fixtures
@FUZZ
@given(st.data())
def test_mutated_counts_and_sizes(data: st.DataObject) -> None:
    """Overwrite a digest count, an EventSize or a Spec ID count field with any u32/u8."""
    raw = bytearray(_read(MULTI))
    log = parse_event_log(bytes(raw))
    bounds = _boundaries(log)
    field = data.draw(st.sampled_from(["count", "size", "spec_algorithms", "spec_vendor"]))
    value = data.draw(st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1)))
    if field == "count":
        i = data.draw(st.integers(1, len(log.events) - 1))
        struct.pack_into("<I", raw, bounds[i] + 8, value)
    elif field == "size":
        i = data.draw(st.integers(1, len(log.events) - 1))
        struct.pack_into("<I", raw, bounds[i + 1] - len(log.events[i].data) - 4, value)
    elif field == "spec_algorithms":
        struct.pack_into("<I", raw, 32 + 24, value)  # after signature and four version bytes
    else:
        n = len(log.spec_id.algorithms) if log.spec_id else 0
        raw[32 + 28 + 4 * n] = value & 0xFF
    if field == "count" and (value == 0 or value > 2):
        # Zero digests, or more than the two algorithms the Spec ID event declares.
        with pytest.raises(EventLogSizeInvalid):
            parse_event_log(bytes(raw))
    elif field == "count" and value == 1:
        # The sha256 TPMT_HA is then read as EventSize: verified exhaustively to never parse.
        with pytest.raises(EventLogMalformed):
            parse_event_log(bytes(raw))
    else:
        _check_fast_path(bytes(raw))


# Declarable algorithms for the layout fuzz: the fast path has one branch for one known bank,
# one for two and a generic one for the rest (three or more, or unknown algorithms dropped).
_ALGS = {0x0004: 20, 0x000B: 32, 0x000C: 48, 0x0012: 32, 0x7F01: 7, 0x0027: 32}


def _layout_log(algs: list[int], events: list[tuple[int, bytes, bytes]]) -> bytes:
    body = (b"Spec ID Event03\x00" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algs))
            + b"".join(struct.pack("<HH", a, _ALGS[a]) for a in algs) + b"\x00")
    raw = struct.pack("<II20sI", 0, 3, bytes(20), len(body)) + body
    for pcr, seed, data in events:
        raw += struct.pack("<III", pcr, 0x0D, len(algs))
        raw += b"".join(struct.pack("<H", a) + (seed * _ALGS[a])[:_ALGS[a]] for a in algs)
        raw += struct.pack("<I", len(data)) + data
    return raw


@FUZZ
@given(st.data())
def test_fast_path_agrees_with_general_path_for_any_declared_algorithms(
        data: st.DataObject) -> None:
    """Any Spec ID algorithm set, events in declaration order (the fast path), then mutations."""
    algs = data.draw(st.lists(st.sampled_from(sorted(_ALGS)), min_size=1, max_size=5,
                              unique=True))
    events = data.draw(st.lists(st.tuples(st.integers(0, 30), st.binary(min_size=1, max_size=4),
                                          st.binary(max_size=24)), min_size=1, max_size=6))
    raw = bytearray(_layout_log(algs, events))
    for _ in range(data.draw(st.integers(0, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _check_fast_path(bytes(raw))
