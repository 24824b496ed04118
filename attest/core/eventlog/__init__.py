"""TCG2 boot event logs: parse, replay, appraise (pure: bytes and PCR values in, verdicts out).

A node sends the firmware's boot event log next to its quote. The verifier

1. parses it (:func:`parse_event_log`): the legacy SHA-1 format (``TCG_PCR_EVENT`` only) or the
   crypto-agile one (a ``"Spec ID Event03"`` header declaring the digest algorithms, then
   ``TCG_PCR_EVENT2`` entries), rejecting anything malformed with an
   :class:`EventLogMalformed` subclass (``eventlog.parse``);
2. replays it (:func:`replay_event_log`) into the PCR values the TPM should hold, honouring the
   StartupLocality event for PCR 0 (``eventlog.replay``);
3. appraises it (:func:`appraise_event_log`): the replay must match the quoted PCRs, and only
   then are the authenticated (PCR, digest) pairs compared with the policy's
   :class:`EventLogReference` (``eventlog.appraise``).

Event types and event data are never authenticated by the quote; nothing here decides on them.
This module is the public façade; the implementation lives in its submodules.
"""

from __future__ import annotations

from attest.core.eventlog.appraise import EventLogReference, PcrReference, appraise_event_log
from attest.core.eventlog.errors import (
    EventDigestNotAllowed,
    EventLogEmpty,
    EventLogMalformed,
    EventLogPcrIndexInvalid,
    EventLogPcrNotQuoted,
    EventLogReferenceInvalid,
    EventLogReplayMismatch,
    EventLogSizeInvalid,
    EventLogSpecIdInvalid,
    EventLogStartupLocalityInvalid,
    EventLogTooLarge,
    EventLogTruncated,
    EventLogUnknownAlgorithm,
    RequiredEventMissing,
)
from attest.core.eventlog.model import (
    DIGEST_SIZES,
    EV_NO_ACTION,
    EVENT_TYPES,
    HASH_ALGORITHMS,
    Event,
    EventLog,
    SpecIdEvent,
    event_type_name,
)
from attest.core.eventlog.parse import parse_event_log
from attest.core.eventlog.replay import (
    initial_pcr_value,
    replay_event_log,
    startup_locality,
)

__all__ = [
    "DIGEST_SIZES",
    "EVENT_TYPES",
    "EV_NO_ACTION",
    "HASH_ALGORITHMS",
    "Event",
    "EventDigestNotAllowed",
    "EventLog",
    "EventLogEmpty",
    "EventLogMalformed",
    "EventLogPcrIndexInvalid",
    "EventLogPcrNotQuoted",
    "EventLogReference",
    "EventLogReferenceInvalid",
    "EventLogReplayMismatch",
    "EventLogSizeInvalid",
    "EventLogSpecIdInvalid",
    "EventLogStartupLocalityInvalid",
    "EventLogTooLarge",
    "EventLogTruncated",
    "EventLogUnknownAlgorithm",
    "PcrReference",
    "RequiredEventMissing",
    "SpecIdEvent",
    "appraise_event_log",
    "event_type_name",
    "initial_pcr_value",
    "parse_event_log",
    "replay_event_log",
    "startup_locality",
]
