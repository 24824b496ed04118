"""One round of IMA appraisal, incremental as Keylime does it (pure).

The verifier keeps per node an :class:`ImaState`: how many entries of the list it has accepted
and the running PCR 10 value after them (per quoted bank), stamped with the TPM's resetCount and
restartCount of the quote that accepted them. The agent sends the entries from an offset:

* offset 0 (a full list) is always accepted and replayed from the all-zero PCR;
* offset N > 0 must equal the accepted count, in the same boot (same resetCount and
  restartCount); the replay starts from the stored running value, so only new entries are
  parsed, hashed and appraised;
* anything else, and an incremental list that does not replay to the quote, is refused with
  :class:`ImaOffsetMismatch` naming the offset to send from (0 after a reboot or a mismatch):
  no verdict, the nonce stays unspent, the agent re-sends.

A full list that does not replay is a failure (``ima.replay``). The state to store is returned
with the failures; the caller stores it only when the whole verdict is trusted, so an entry that
failed is appraised again in every round until the node reboots.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from attest.core.errors import AttestationError
from attest.core.ima.errors import (
    ImaLogRequired,
    ImaMalformed,
    ImaOffsetMismatch,
    ImaReplayMismatch,
)
from attest.core.ima.parse import IMA_PCR, parse_list
from attest.core.ima.policy import RuntimePolicy, appraise_entries
from attest.core.ima.replay import BANK_SIZES, initial_pcr, replay_to_quote
from attest.core.tpm_structs import ClockInfo


@dataclass(frozen=True)
class ImaState:
    accepted: int
    pcr: Mapping[str, bytes]
    reset_count: int
    restart_count: int

    def as_json(self) -> dict[str, object]:
        return {"accepted": self.accepted, "pcr": {b: v.hex() for b, v in self.pcr.items()},
                "reset_count": self.reset_count, "restart_count": self.restart_count}

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> ImaState:
        pcr = doc["pcr"]
        if not isinstance(pcr, Mapping):
            raise ValueError("stored IMA state: pcr is not a mapping")
        return cls(accepted=int(str(doc["accepted"])),
                   pcr={str(b): bytes.fromhex(str(v)) for b, v in pcr.items()},
                   reset_count=int(str(doc["reset_count"])),
                   restart_count=int(str(doc["restart_count"])))


@dataclass(frozen=True)
class ImaOutcome:
    failures: list[AttestationError] = field(default_factory=list)
    state: ImaState | None = None


def quoted_pcr10(pcr_values: Mapping[str, Mapping[int, bytes]]) -> dict[str, bytes]:
    """PCR 10 of every quoted bank the replay supports."""
    return {bank: values[IMA_PCR] for bank, values in pcr_values.items()
            if bank in BANK_SIZES and IMA_PCR in values}


def _start(previous: ImaState | None, clock: ClockInfo, offset: int,
           banks: list[str]) -> Mapping[str, bytes]:
    if offset == 0:
        return initial_pcr(banks)
    same_boot = previous is not None and (previous.reset_count, previous.restart_count) == (
        clock.reset_count, clock.restart_count)
    expected = previous.accepted if previous is not None and same_boot else 0
    if previous is None or not same_boot or offset != expected \
            or not set(banks) <= set(previous.pcr):
        why = "the node rebooted or has no accepted list" if expected == 0 else \
            f"{expected} entries were accepted so far"
        raise ImaOffsetMismatch(f"IMA list sent from offset {offset}, but {why}; re-send "
                                f"from ima_offset={expected}", expected=expected)
    return previous.pcr


def appraise_ima(policy: RuntimePolicy, log: bytes | None, offset: int,
                 pcr_values: Mapping[str, Mapping[int, bytes]], clock: ClockInfo,
                 previous: ImaState | None) -> ImaOutcome:
    """Parse, replay and appraise the entries sent from ``offset`` (see the module doc)."""
    if log is None:
        return ImaOutcome([ImaLogRequired("no IMA list was sent with the quote")])
    quoted = quoted_pcr10(pcr_values)
    if not quoted:
        return ImaOutcome([ImaReplayMismatch("PCR 10 was not quoted in a sha1/sha256/sha384/"
                                             "sha512 bank")])
    start = _start(previous, clock, offset, sorted(quoted))
    try:
        entries = parse_list(log, first_index=offset)
        result = replay_to_quote(entries, start, quoted)
    except ImaMalformed as exc:
        return ImaOutcome([exc])
    except ImaReplayMismatch as exc:
        if offset:
            raise ImaOffsetMismatch(f"the {len(entries)} entries sent from offset {offset} do "
                                    f"not replay to the quoted PCR 10 ({exc.detail}); re-send "
                                    "the full list from ima_offset=0", expected=0) from None
        return ImaOutcome([exc])
    failures = appraise_entries(policy, entries[:result.accepted], offset)
    return ImaOutcome(failures, ImaState(offset + result.accepted, result.pcr,
                                         clock.reset_count, clock.restart_count))
