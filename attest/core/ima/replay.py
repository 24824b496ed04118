"""Replay IMA entries into PCR 10, incrementally, and find the prefix the quote covers.

The kernel extends every allocated PCR bank with the template hash computed *with that bank's
algorithm* over the same template data; a violation (all-zero SHA-1 template hash in the list)
is extended as all-ones of the bank's size. The list is read after the quote, so it may be
longer than what the quote covers: the accepted prefix is the shortest one whose replay equals
the quoted PCR 10 in every quoted bank; the rest waits for the next round. No matching prefix
is :class:`ImaReplayMismatch`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attest.core.ima.errors import ImaReplayMismatch
from attest.core.ima.parse import ZERO_SHA1, ImaEntry

BANK_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}


def initial_pcr(banks: Sequence[str]) -> dict[str, bytes]:
    """PCR 10 after a reset: all zero in every bank."""
    return {bank: bytes(BANK_SIZES[bank]) for bank in banks}


def template_digest(entry: ImaEntry, bank: str) -> bytes:
    """What the kernel extends into ``bank`` for ``entry``."""
    if entry.violation:
        return b"\xff" * BANK_SIZES[bank]
    if bank == "sha1":
        return entry.template_hash  # checked against the data while parsing
    return hashlib.new(bank, entry.data).digest()


@dataclass(frozen=True)
class ReplayResult:
    """``accepted`` new entries replay to the quote; ``pcr`` is the running value after them."""

    accepted: int
    pcr: dict[str, bytes]


def _extend_all(entries: Sequence[ImaEntry], bank: str, start: bytes) -> list[bytes]:
    """The running value before any entry and after each one."""
    ones = b"\xff" * BANK_SIZES[bank]
    if bank == "sha1":  # the listed template hash, checked against the data while parsing
        digests = [ones if e.template_hash == ZERO_SHA1 else e.template_hash for e in entries]
    else:
        digests = [ones if e.violation else hashlib.new(bank, e.data).digest() for e in entries]
    new = getattr(hashlib, bank)
    values = [start]
    append = values.append
    value = start
    for digest in digests:
        value = new(value + digest).digest()
        append(value)
    return values


def replay_to_quote(entries: Sequence[ImaEntry], start: Mapping[str, bytes],
                    quoted: Mapping[str, bytes]) -> ReplayResult:
    """The shortest prefix of ``entries``, replayed from ``start``, that gives ``quoted``
    (PCR 10 per bank) in every bank; else :class:`ImaReplayMismatch`."""
    if not quoted:
        raise ImaReplayMismatch("PCR 10 was not quoted, so no IMA entry can be authenticated")
    banks = sorted(quoted)
    missing = [b for b in banks if b not in start or b not in BANK_SIZES]
    if missing:
        raise ImaReplayMismatch(f"no running PCR 10 value for bank(s) {missing}")
    primary = banks[0]
    runs = _extend_all(entries, primary, start[primary])
    target = quoted[primary]
    for count, value in enumerate(runs):
        if value == target:
            return _confirm(entries[:count], start, quoted, banks, count)
    raise ImaReplayMismatch(
        f"{len(entries)} entries from {primary} PCR 10 {start[primary].hex()[:16]}… never "
        f"reach the quoted {target.hex()}; final replay {runs[-1].hex()}")


def _confirm(prefix: Sequence[ImaEntry], start: Mapping[str, bytes],
             quoted: Mapping[str, bytes], banks: Sequence[str], count: int) -> ReplayResult:
    pcr = {banks[0]: quoted[banks[0]]}
    for bank in banks[1:]:
        value = _extend_all(prefix, bank, start[bank])[-1]
        if value != quoted[bank]:
            raise ImaReplayMismatch(f"the first {count} entries replay to the quoted "
                                    f"{banks[0]} PCR 10 but {bank} gives {value.hex()}, "
                                    f"quoted {quoted[bank].hex()}")
        pcr[bank] = value
    return ReplayResult(accepted=count, pcr=pcr)
