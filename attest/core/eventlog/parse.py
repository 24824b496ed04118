"""Parse a binary TCG PC Client boot event log (legacy SHA-1 and crypto-agile formats).

All integers are little-endian (PFP spec: the log is written by UEFI firmware). The steps:

1. Bound the input: an empty log, or one above :data:`MAX_LOG_BYTES`, is rejected before any
   walking, so the cost of parsing is linear in a bounded size.
2. Read the first event as a legacy ``TCG_PCR_EVENT``: PCRIndex u32, EventType u32, SHA-1
   digest [20], EventSize u32, Event [EventSize]. Every log starts this way.
3. If that event is EV_NO_ACTION in PCR 0 and its data starts with ``"Spec ID Event03\\0"``,
   the log is crypto-agile: decode ``TCG_EfiSpecIDEvent`` (platformClass u32, specVersionMinor
   u8, specVersionMajor u8, specErrata u8, uintnSize u8, numberOfAlgorithms u32, then
   {algorithmId u16, digestSize u16} per algorithm, vendorInfoSize u8, vendorInfo), which must
   fill the event data exactly. Known algorithms must declare their real digest size; unknown
   ones are accepted with any sane size, because that size is all that is needed to skip them.
4. Every further event is a ``TCG_PCR_EVENT2``: PCRIndex u32, EventType u32,
   ``TPML_DIGEST_VALUES`` (count u32, then {hashAlg u16, digest[size from step 3]} × count),
   EventSize u32, Event [EventSize]. Otherwise (no Spec ID header) the log is legacy SHA-1 and
   every event is a ``TCG_PCR_EVENT`` as in step 2.
5. Stop at the end of the buffer, or where only zero bytes remain: firmware exposes the whole
   pre-allocated log area and some kernels/tools pass on its zero fill. Any other leftover is
   either a truncated event (:class:`EventLogTruncated`) or garbage.

Every failure is an :class:`EventLogMalformed` subclass; no ``struct.error`` or ``IndexError``
escapes, because every read is bounds-checked before it is made.
"""

from __future__ import annotations

import struct

from attest.core.eventlog.errors import (
    EventLogEmpty,
    EventLogMalformed,
    EventLogPcrIndexInvalid,
    EventLogSizeInvalid,
    EventLogSpecIdInvalid,
    EventLogTooLarge,
    EventLogTruncated,
    EventLogUnknownAlgorithm,
)
from attest.core.eventlog.model import (
    EV_NO_ACTION,
    HASH_ALGORITHMS,
    PCR_COUNT,
    Event,
    EventLog,
    SpecIdEvent,
    new_event,
)

MAX_LOG_BYTES = 16 * 1024 * 1024
"""Real boot logs are 2–100 KiB; the TPM2 ACPI log area is at most a few MiB."""
MAX_EVENT_DATA = 4 * 1024 * 1024
"""One event's data (a dbx variable is the largest real one, tens of KiB)."""
MAX_ALGORITHMS = 16
"""numberOfAlgorithms above this is absurd: TPM 2.0 defines fewer hash algorithms."""
MAX_DIGEST_SIZE = 128
"""Largest digest size accepted for an unknown algorithm (SHA-512/SHA3-512 are 64)."""

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"

_LEGACY_HEADER = struct.Struct("<II20sI")  # PCRIndex, EventType, SHA-1 digest, EventSize
_EVENT2_HEADER = struct.Struct("<III")  # PCRIndex, EventType, TPML_DIGEST_VALUES.count
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_SPEC_ID_FIXED = struct.Struct("<16sIBBBBI")  # signature … numberOfAlgorithms
_ALG_SIZE = struct.Struct("<HH")


def parse_event_log(raw: bytes | bytearray | memoryview) -> EventLog:
    """Parse ``raw`` (the contents of ``binary_bios_measurements``) into an :class:`EventLog`."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        # bytes(int) would silently make zeros and bytes(str) raise TypeError: neither is a log.
        raise EventLogMalformed(f"expected the log as bytes, got {type(raw).__name__}")
    data = bytes(raw)
    if len(data) > MAX_LOG_BYTES:
        raise EventLogTooLarge(f"log is {len(data)} bytes, limit {MAX_LOG_BYTES}")
    # Offset after the last non-zero byte: from here on only zero fill remains (step 5).
    end = len(data.rstrip(b"\x00"))
    if end == 0:
        raise EventLogEmpty(f"log of {len(data)} bytes contains no event")

    first, offset = _legacy_event(data, 0, 0)
    events = [first]
    spec_id: SpecIdEvent | None = None
    if (first.event_type == EV_NO_ACTION and first.pcr == 0
            and first.data.startswith(SPEC_ID_SIGNATURE)):
        spec_id = _spec_id(first)
    if spec_id is None:
        while offset < end:
            event, offset = _legacy_event(data, offset, len(events))
            events.append(event)
    else:
        _agile_events(data, offset, end, spec_id, events)
    return EventLog(spec_id=spec_id, events=tuple(events))


def _agile_events(data: bytes, offset: int, end: int, spec_id: SpecIdEvent,
                  events: list[Event]) -> None:
    """Append the TCG_PCR_EVENT2 entries from ``offset`` to ``events``.

    Nearly every firmware writes each event with all declared algorithms in declaration order,
    so that layout is decoded with one precompiled struct instead of a loop of small reads.
    Anything else, or any event the fast path cannot fully validate, goes through
    :func:`_agile_event`, which also produces the precise error. The fuzz tests check that
    both paths agree.

    This loop is the parser's hot spot (one pass per event of a ~100-event log), so it binds
    everything it calls to locals, builds the digest dict without ``zip`` (``dict(zip(...,
    strict=True))`` alone cost 1.3 µs per event on the benchmark VM) and the Event through
    :func:`new_event` (0.5 µs instead of 1–1.6 µs).
    """
    sizes = dict(spec_id.algorithms)
    alg_ids = tuple(alg for alg, _ in spec_id.algorithms)
    # (name, position in the unpacked tuple) of each digest kept; unknown algorithms are
    # dropped, as the general path does.
    known = tuple((HASH_ALGORITHMS[alg][0], 4 + 2 * i) for i, alg in enumerate(alg_ids)
                  if alg in HASH_ALGORITHMS)
    # The usual layouts (sha256 alone, or sha1 + sha256) get a dict display: 2x cheaper than
    # the comprehension and 4x cheaper than dict(zip(...)).
    n_known = len(known)
    (name0, at0), (name1, at1) = (*known, ("", 0), ("", 0))[:2]  # unused slots: placeholders
    fast = struct.Struct("<III" + "".join(f"H{size}s" for _, size in spec_id.algorithms) + "I")
    unpack, head, n_algs = fast.unpack_from, fast.size, len(alg_ids)
    limit = len(data)
    last_head = limit - head  # a fixed-layout header fits only at offsets up to here
    append, make = events.append, new_event
    pcr_count, max_size = PCR_COUNT, MAX_EVENT_DATA
    index = len(events)
    while offset < end:
        if offset <= last_head:
            fields = unpack(data, offset)
            pos = offset + head
            size = fields[-1]
            # Same checks as the general path, which then has nothing left to reject: PCR
            # index, digest count, algorithm ids in declaration order, and the data bounds.
            if (fields[0] < pcr_count and fields[2] == n_algs and fields[3:-1:2] == alg_ids
                    and size <= max_size and pos + size <= limit):
                if n_known == 2:
                    digests = {name0: fields[at0], name1: fields[at1]}
                elif n_known == 1:
                    digests = {name0: fields[at0]}
                else:
                    digests = {name: fields[at] for name, at in known}
                offset = pos + size
                append(make(index, fields[0], fields[1], digests, data[pos:offset]))
                index += 1
                continue
        event, offset = _agile_event(data, offset, index, sizes)
        append(event)
        index += 1


def _truncated(what: str, index: int, offset: int, need: int, have: int) -> EventLogTruncated:
    return EventLogTruncated(f"event #{index} at offset {offset}: {what} needs {need} bytes, "
                             f"{have} left")


def _check_pcr(pcr: int, index: int, offset: int) -> None:
    if pcr >= PCR_COUNT:
        raise EventLogPcrIndexInvalid(f"event #{index} at offset {offset}: PCR index {pcr}")


def _event_data(data: bytes, pos: int, index: int, offset: int) -> tuple[bytes, int]:
    """Read EventSize u32 + Event at ``pos``; returns the data and the offset after it."""
    if pos + 4 > len(data):
        raise _truncated("EventSize", index, offset, 4, len(data) - pos)
    (size,) = _U32.unpack_from(data, pos)
    pos += 4
    if size > MAX_EVENT_DATA:
        raise EventLogSizeInvalid(f"event #{index} at offset {offset}: EventSize {size} exceeds "
                                  f"{MAX_EVENT_DATA}")
    if pos + size > len(data):
        raise _truncated("event data", index, offset, size, len(data) - pos)
    return data[pos:pos + size], pos + size


def _legacy_event(data: bytes, offset: int, index: int) -> tuple[Event, int]:
    if offset + _LEGACY_HEADER.size > len(data):
        raise _truncated("TCG_PCR_EVENT header", index, offset, _LEGACY_HEADER.size,
                         len(data) - offset)
    pcr, event_type, digest, _ = _LEGACY_HEADER.unpack_from(data, offset)
    _check_pcr(pcr, index, offset)
    payload, after = _event_data(data, offset + _LEGACY_HEADER.size - 4, index, offset)
    return new_event(index, pcr, event_type, {"sha1": digest}, payload), after


def _agile_event(data: bytes, offset: int, index: int,
                 sizes: dict[int, int]) -> tuple[Event, int]:
    if offset + _EVENT2_HEADER.size > len(data):
        raise _truncated("TCG_PCR_EVENT2 header", index, offset, _EVENT2_HEADER.size,
                         len(data) - offset)
    pcr, event_type, count = _EVENT2_HEADER.unpack_from(data, offset)
    _check_pcr(pcr, index, offset)
    # Firmware extends each active bank once per event, so more digests than declared algorithms
    # is impossible; zero digests would be an event that measures nothing.
    if not 1 <= count <= len(sizes):
        raise EventLogSizeInvalid(f"event #{index} at offset {offset}: digest count {count}, the "
                                  f"Spec ID event declares {len(sizes)} algorithms")
    pos = offset + _EVENT2_HEADER.size
    digests: dict[str, bytes] = {}
    seen: set[int] = set()
    for _ in range(count):
        if pos + 2 > len(data):
            raise _truncated("TPMT_HA.hashAlg", index, offset, 2, len(data) - pos)
        (alg,) = _U16.unpack_from(data, pos)
        size = sizes.get(alg)
        if size is None:
            raise EventLogUnknownAlgorithm(f"event #{index} at offset {offset}: algorithm "
                                           f"0x{alg:04x} is not declared in the Spec ID event")
        if alg in seen:
            raise EventLogUnknownAlgorithm(f"event #{index} at offset {offset}: algorithm "
                                           f"0x{alg:04x} appears twice")
        seen.add(alg)
        pos += 2
        if pos + size > len(data):
            raise _truncated(f"digest 0x{alg:04x}", index, offset, size, len(data) - pos)
        known = HASH_ALGORITHMS.get(alg)
        if known is not None:  # unknown algorithms are skipped: their size is all we need
            digests[known[0]] = data[pos:pos + size]
        pos += size
    payload, after = _event_data(data, pos, index, offset)
    # The dataclass constructor on purpose (not new_event): this path is the fast path's
    # reference in the differential fuzz test, so it shares as little with it as it can.
    return Event(index, pcr, event_type, digests, payload), after


def _spec_id(event: Event) -> SpecIdEvent:
    raw = event.data
    if event.digests["sha1"] != bytes(20):
        raise EventLogSpecIdInvalid("the Spec ID event must carry an all-zero digest")
    if len(raw) < _SPEC_ID_FIXED.size:
        raise EventLogSpecIdInvalid(f"Spec ID event data is {len(raw)} bytes, needs at least "
                                    f"{_SPEC_ID_FIXED.size}")
    _, platform, minor, major, errata, uintn, count = _SPEC_ID_FIXED.unpack_from(raw, 0)
    if not 1 <= count <= MAX_ALGORITHMS:
        raise EventLogSpecIdInvalid(f"numberOfAlgorithms {count} (must be 1..{MAX_ALGORITHMS})")
    pos = _SPEC_ID_FIXED.size
    if pos + 4 * count + 1 > len(raw):
        raise EventLogSpecIdInvalid(f"{count} algorithms do not fit in {len(raw)} bytes")
    algorithms: list[tuple[int, int]] = []
    for _ in range(count):
        alg, size = _ALG_SIZE.unpack_from(raw, pos)
        pos += 4
        known = HASH_ALGORITHMS.get(alg)
        if known is not None and size != known[1]:
            raise EventLogSpecIdInvalid(f"algorithm {known[0]} declared with digest size {size}, "
                                        f"must be {known[1]}")
        if not 1 <= size <= MAX_DIGEST_SIZE:
            raise EventLogSpecIdInvalid(f"algorithm 0x{alg:04x} declared with digest size {size}")
        if any(alg == a for a, _ in algorithms):
            raise EventLogSpecIdInvalid(f"algorithm 0x{alg:04x} declared twice")
        algorithms.append((alg, size))
    vendor_size = raw[pos]
    pos += 1
    if pos + vendor_size != len(raw):
        raise EventLogSpecIdInvalid(f"vendorInfoSize {vendor_size} leaves {len(raw) - pos} "
                                    "bytes of event data unaccounted for")
    return SpecIdEvent(platform_class=platform, spec_version_major=major,
                       spec_version_minor=minor, spec_errata=errata, uintn_size=uintn,
                       algorithms=tuple(algorithms), vendor_info=raw[pos:])
