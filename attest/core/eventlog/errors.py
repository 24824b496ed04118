"""Typed failures of TCG2 boot event-log parsing, replay and appraisal.

Two families:

* :class:`EventLogMalformed` (a :class:`~attest.core.errors.MalformedStructure`): the bytes the
  agent sent are not a well-formed TCG PC Client event log. One subclass per way of being wrong,
  so a verdict says *truncated* rather than a bare ``struct.error``.
* Appraisal failures (plain :class:`~attest.core.errors.AttestationError`): the log parsed, but
  it does not replay to the quoted PCRs or its authenticated digests break the reference values.

:class:`EventLogReferenceInvalid` is raised while *loading* a policy; it is also a ``ValueError``
so the policy loader (which wraps ``ValueError`` into its own ``PolicyInvalid``) handles it.
"""

from __future__ import annotations

from attest.core.errors import AttestationError, MalformedStructure

_FIX_AGENT = ("Have the agent send the raw TCG2 log exactly as read from "
              "/sys/kernel/security/tpm0/binary_bios_measurements; a log that does not parse is "
              "never trusted.")


class EventLogMalformed(MalformedStructure):
    """Base class: the event log bytes are not a valid TCG PC Client event log."""

    check = "eventlog.parse"
    hint = _FIX_AGENT


class EventLogEmpty(EventLogMalformed):
    check = "eventlog.empty"
    hint = "The agent sent an empty (or all-zero) event log; check that the node boots with a TPM."


class EventLogTooLarge(EventLogMalformed):
    check = "eventlog.too_large"
    hint = ("Boot event logs are tens of kilobytes; this one exceeds the verifier's limit. "
            "Check that the agent sends the boot log, not the IMA log or a file of garbage.")


class EventLogTruncated(EventLogMalformed):
    check = "eventlog.truncated"
    hint = "The log ends inside an event. " + _FIX_AGENT


class EventLogSizeInvalid(EventLogMalformed):
    check = "eventlog.size"
    hint = "An event declares an absurd data size or digest count. " + _FIX_AGENT


class EventLogSpecIdInvalid(EventLogMalformed):
    check = "eventlog.spec_id"
    hint = ("The 'Spec ID Event03' header that declares the digest algorithms is malformed; "
            "the firmware's log cannot be interpreted.")


class EventLogUnknownAlgorithm(EventLogMalformed):
    check = "eventlog.algorithm"
    hint = ("An event carries a digest algorithm that the Spec ID header does not declare (or "
            "declares with a wrong size), so the log cannot be walked safely.")


class EventLogPcrIndexInvalid(EventLogMalformed):
    check = "eventlog.pcr_index"
    hint = "An event names a PCR index a PC Client TPM does not have (0..23). " + _FIX_AGENT


class EventLogStartupLocalityInvalid(EventLogMalformed):
    check = "eventlog.startup_locality"
    hint = ("The StartupLocality event is malformed, repeated, outside PCR 0 or after the first "
            "PCR 0 measurement, so PCR 0's initial value is unknown.")


class EventLogReplayMismatch(AttestationError):
    """Replaying the log does not give the quoted PCR value."""

    check = "eventlog.replay"
    hint = ("The event log does not match the quoted PCRs: it was edited, truncated, or belongs to "
            "another boot. Make sure the agent sends the log of the current boot; if it does, "
            "treat the node as compromised.")

    def __init__(self, bank: str, pcr: int, expected: bytes, got: bytes) -> None:
        super().__init__(f"{bank} PCR {pcr}: quoted {expected.hex()}, log replays to {got.hex()}")
        self.bank, self.pcr, self.expected, self.got = bank, pcr, expected, got


class EventLogPcrNotQuoted(AttestationError):
    check = "eventlog.pcr_not_quoted"
    hint = ("The policy's event-log reference covers a PCR the quote did not include, so those "
            "events cannot be authenticated. Add the PCR to the policy's selection.")

    def __init__(self, bank: str, pcr: int) -> None:
        super().__init__(f"{bank} PCR {pcr} is referenced by the event-log policy but not quoted")
        self.bank, self.pcr = bank, pcr


class EventDigestNotAllowed(AttestationError):
    check = "eventlog.digest_not_allowed"
    hint = ("Something measured during boot is not in the policy's allowed list. If it is an "
            "intended update (firmware, bootloader, kernel), add its digest to the node class "
            "policy; otherwise investigate the node.")

    def __init__(self, bank: str, pcr: int, index: int, type_name: str, digest: bytes) -> None:
        # The event type comes from unauthenticated log data: it is shown only as a clue.
        super().__init__(f"event #{index} in {bank} PCR {pcr} (type {type_name} as claimed by "
                         f"the log) has digest {digest.hex()}, which is not allowed")
        self.bank, self.pcr, self.index, self.digest = bank, pcr, index, digest


class RequiredEventMissing(AttestationError):
    check = "eventlog.required_missing"
    hint = ("A measurement the policy requires did not happen during this boot (e.g. the expected "
            "bootloader or kernel was not loaded). Check the node's boot chain or the policy.")

    def __init__(self, bank: str, pcr: int, digest: bytes) -> None:
        super().__init__(f"required {bank} digest {digest.hex()} was not measured into PCR {pcr}")
        self.bank, self.pcr, self.digest = bank, pcr, digest


class EventLogReferenceInvalid(AttestationError, ValueError):
    """An ``eventlog:`` policy section is invalid; ``detail`` starts with the offending key."""

    check = "policy.eventlog"
    hint = ("Fix the eventlog section of the node class policy: "
            "{bank: sha256, pcrs: {4: {allowed: ['<hex>'], required: ['<hex>']}}}; "
            "quote hex digests so YAML keeps them as strings.")
