"""Appraise a replayed boot event log against quoted PCRs and reference digests.

Trust model (DESIGN, "Attestation protocol"): the quote signs PCR values, and replay turns a
log into PCR values, so the quote authenticates exactly the sequence of (PCR, digest) pairs of
each quoted bank, nothing else. Event types and event data are unauthenticated claims. Hence:

1. Replay the log (:func:`replay_with_locality`). A malformed StartupLocality event is a
   failure of its own; nothing else is checked then.
2. For every quoted (bank, PCR) that the log extends, the replayed value must equal the quoted
   one, else :class:`EventLogReplayMismatch`. Quoted PCRs the log never touches (IMA's PCR 10,
   the agent's application PCR) are not the log's business and are skipped.
3. For every PCR of the reference (:class:`EventLogReference`): it must be quoted in the
   reference bank (:class:`EventLogPcrNotQuoted`), and the log must explain its value, even when
   the log never touches it (then the value must still be the reset value). Only when that holds
   are its event digests authenticated, and only then are they compared with the reference:
   every extended digest must be allowed (:class:`EventDigestNotAllowed`) and every required
   digest must have been extended at least once (:class:`RequiredEventMissing`). EV_NO_ACTION
   events are never extended and are ignored.

Reference semantics: ``allowed`` absent means "any digest" (only ``required`` is enforced);
``allowed: []`` means "nothing may be measured here". Required digests are implicitly allowed.
Order and multiplicity of events are not constrained: use PCR value policies for that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from attest.core.errors import AttestationError
from attest.core.eventlog.errors import (
    EventDigestNotAllowed,
    EventLogMalformed,
    EventLogPcrNotQuoted,
    EventLogReferenceInvalid,
    EventLogReplayMismatch,
    RequiredEventMissing,
)
from attest.core.eventlog.model import DIGEST_SIZES, EV_NO_ACTION, PCR_COUNT, EventLog
from attest.core.eventlog.replay import initial_pcr_value, replay_with_locality


@dataclass(frozen=True, slots=True)
class PcrReference:
    """Reference digests for the events of one PCR (see the module docstring for semantics)."""

    allowed: frozenset[bytes] | None = None
    required: frozenset[bytes] = frozenset()

    def permits(self, digest: bytes) -> bool:
        return self.allowed is None or digest in self.allowed or digest in self.required


@dataclass(frozen=True, slots=True)
class EventLogReference:
    """The ``eventlog:`` section of an appraisal policy: a bank and per-PCR reference digests."""

    bank: str
    pcrs: Mapping[int, PcrReference] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A read-only view, so a policy object shared between requests cannot be mutated.
        object.__setattr__(self, "pcrs", MappingProxyType(dict(self.pcrs)))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> EventLogReference:
        """Validate ``{bank: sha256, pcrs: {4: {allowed: [hex…], required: [hex…]}}}``.

        Raises :class:`EventLogReferenceInvalid` whose detail starts with the offending key
        (``eventlog.pcrs.4.allowed[2]: …``). Digests must be quoted hex strings: unquoted, YAML
        would read ``0x…`` or all-digit values as numbers.
        """
        if not isinstance(doc, Mapping):
            raise EventLogReferenceInvalid("eventlog: must be a mapping with keys bank and pcrs")
        unknown = sorted(str(k) for k in doc if k not in ("bank", "pcrs"))
        if unknown:
            raise EventLogReferenceInvalid(f"eventlog.{unknown[0]}: unknown key (allowed: bank, "
                                           "pcrs)")
        bank = doc.get("bank")
        if not isinstance(bank, str) or bank not in DIGEST_SIZES:
            raise EventLogReferenceInvalid(f"eventlog.bank: {bank!r} is not one of "
                                           f"{sorted(DIGEST_SIZES)}")
        raw_pcrs = doc.get("pcrs")
        if not isinstance(raw_pcrs, Mapping) or not raw_pcrs:
            raise EventLogReferenceInvalid("eventlog.pcrs: required, a non-empty mapping "
                                           "pcr -> {allowed: [...], required: [...]}")
        pcrs: dict[int, PcrReference] = {}
        for raw_index, spec in raw_pcrs.items():
            index = _pcr_index(raw_index)
            if index in pcrs:
                raise EventLogReferenceInvalid(f"eventlog.pcrs.{index}: listed twice")
            pcrs[index] = _pcr_reference(f"eventlog.pcrs.{index}", bank, spec)
        return cls(bank=bank, pcrs=pcrs)


def _pcr_index(raw: object) -> int:
    where = f"eventlog.pcrs.{raw}"
    # bool is an int subclass: `True: {...}` in YAML is a typo, not PCR 1.
    if isinstance(raw, bool):
        raise EventLogReferenceInvalid(f"{where}: not a PCR index")
    if isinstance(raw, int):
        index = raw
    elif isinstance(raw, str) and raw.isdecimal():
        index = int(raw)
    else:
        raise EventLogReferenceInvalid(f"{where}: not a PCR index")
    if not 0 <= index < PCR_COUNT:
        raise EventLogReferenceInvalid(f"{where}: PCR index outside 0..{PCR_COUNT - 1}")
    return index


def _pcr_reference(where: str, bank: str, spec: object) -> PcrReference:
    if not isinstance(spec, Mapping):
        raise EventLogReferenceInvalid(f"{where}: must be a mapping with allowed and/or required")
    unknown = sorted(str(k) for k in spec if k not in ("allowed", "required"))
    if unknown:
        raise EventLogReferenceInvalid(f"{where}.{unknown[0]}: unknown key (allowed: allowed, "
                                       "required)")
    if "allowed" not in spec and "required" not in spec:
        raise EventLogReferenceInvalid(f"{where}: needs allowed and/or required")
    allowed = (_digests(f"{where}.allowed", bank, spec["allowed"])
               if "allowed" in spec else None)
    required = (_digests(f"{where}.required", bank, spec["required"])
                if "required" in spec else frozenset())
    return PcrReference(allowed=allowed, required=required)


def _digests(where: str, bank: str, raw: object) -> frozenset[bytes]:
    if not isinstance(raw, list):
        raise EventLogReferenceInvalid(f"{where}: must be a list of hex digests")
    out: set[bytes] = set()
    for position, item in enumerate(raw):
        key = f"{where}[{position}]"
        if not isinstance(item, str):
            raise EventLogReferenceInvalid(f"{key}: {item!r} is not a string; quote hex digests")
        text = item[2:] if item[:2].lower() == "0x" else item
        try:
            value = bytes.fromhex(text)
        except ValueError:
            raise EventLogReferenceInvalid(f"{key}: {item!r} is not hex") from None
        if len(value) != DIGEST_SIZES[bank]:
            raise EventLogReferenceInvalid(f"{key}: {len(value)} bytes, a {bank} digest has "
                                           f"{DIGEST_SIZES[bank]}")
        out.add(value)
    return frozenset(out)


def appraise_event_log(log: EventLog, quoted: Mapping[str, Mapping[int, bytes]],
                       reference: EventLogReference | None = None) -> list[AttestationError]:
    """Every failed check of ``log`` against the ``quoted`` PCRs and ``reference``; empty = pass.

    ``quoted`` must hold PCR values that the caller has already verified against a signed
    quote; this function adds no trust of its own.
    """
    try:
        replayed, locality = replay_with_locality(log)
    except EventLogMalformed as exc:
        return [exc]
    failures, mismatched = _check_replay(replayed, quoted)
    if reference is None:
        return failures
    replay = _Replay(log, replayed, locality, quoted, mismatched)
    for pcr in sorted(reference.pcrs):
        failures.extend(_check_reference_pcr(replay, reference.bank, pcr, reference.pcrs[pcr]))
    return failures


def _check_replay(replayed: Mapping[str, Mapping[int, bytes]],
                  quoted: Mapping[str, Mapping[int, bytes]],
                  ) -> tuple[list[AttestationError], set[tuple[str, int]]]:
    """Step 2: every quoted PCR the log touches must replay to the quoted value. Returns the
    failures and the (bank, PCR) pairs that did not replay."""
    failures: list[AttestationError] = []
    mismatched: set[tuple[str, int]] = set()
    for bank in sorted(quoted):
        for pcr in sorted(quoted[bank]):
            got = replayed.get(bank, {}).get(pcr)
            if got is not None and got != quoted[bank][pcr]:
                failures.append(EventLogReplayMismatch(bank, pcr, quoted[bank][pcr], got))
                mismatched.add((bank, pcr))
    return failures, mismatched


class _Replay(NamedTuple):
    """What step 3 reads: the log, its replay, and step 2's quoted values and mismatches."""

    log: EventLog
    replayed: Mapping[str, Mapping[int, bytes]]
    locality: int | None
    quoted: Mapping[str, Mapping[int, bytes]]
    mismatched: set[tuple[str, int]]


def _check_reference_pcr(replay: _Replay, bank: str, pcr: int,
                         ref: PcrReference) -> list[AttestationError]:
    """Step 3: a reference PCR must be quoted and fully explained before its digests count."""
    expected = replay.quoted.get(bank, {}).get(pcr)
    if expected is None:
        return [EventLogPcrNotQuoted(bank, pcr)]
    if (bank, pcr) in replay.mismatched:
        return []  # already reported; its digests are not authenticated
    got = replay.replayed.get(bank, {}).get(pcr)
    if got is None:  # the log never extends it: the TPM must still hold the reset value
        got = initial_pcr_value(pcr, DIGEST_SIZES[bank], replay.locality)
        if got != expected:
            return [EventLogReplayMismatch(bank, pcr, expected, got)]
    return _check_digests(replay.log, bank, pcr, ref)


def _check_digests(log: EventLog, bank: str, pcr: int,
                   ref: PcrReference) -> list[AttestationError]:
    failures: list[AttestationError] = []
    measured: set[bytes] = set()
    for event in log.events:
        if event.pcr != pcr or event.event_type == EV_NO_ACTION:
            continue
        digest = event.digests.get(bank)
        if digest is None:  # not extended into this bank, so not part of the quoted value
            continue
        measured.add(digest)
        if not ref.permits(digest):
            failures.append(EventDigestNotAllowed(bank, pcr, event.index, event.type_name,
                                                  digest))
    for digest in sorted(ref.required - measured):
        failures.append(RequiredEventMissing(bank, pcr, digest))
    return failures
