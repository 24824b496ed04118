"""Replay a parsed event log into the PCR values a TPM would hold.

The TPM computes ``PCR_new = H(PCR_old || digest)`` per bank for every ``TPM2_PCR_Extend``.
Replay does the same, in log order:

1. Find the StartupLocality event (PFP spec, ``TCG_EfiStartupLocalityEvent``): an EV_NO_ACTION
   event in PCR 0 whose data is ``"StartupLocality\\0"`` followed by one locality byte L. It
   records that ``TPM2_Startup`` ran at locality L (3 on some Intel platforms, 4 after an
   H-CRTM sequence), which makes PCR 0 start at ``00…0L`` instead of all zeros. It must precede
   every measurement into PCR 0, appear at most once and be exactly 17 bytes.
2. Start every other PCR at its reset value: all zeros, except PCRs 17–22 which a static boot
   leaves at all ones (PC Client TPM profile; D-RTM logs are out of scope).
3. Skip EV_NO_ACTION events: by definition they are logged but never extended.
4. For every other event, extend each bank for which the event carries a digest. An event
   without a digest for some bank leaves that bank alone, as ``TPM2_PCR_Extend`` with a
   ``TPML_DIGEST_VALUES`` that omits a bank does. Unknown algorithms were already dropped by
   the parser, so they are never replayed.

The locality byte is log data and so not authenticated by itself, but it only ever feeds the
replayed PCR 0 value, which the quote then authenticates: a forged locality cannot match.

Hashing uses the standard library's ``hashlib`` (OpenSSL underneath, ~4x cheaper per call than
building a ``cryptography`` hash context, and an extend is one short hash); SM3, which hashlib
builds may lack, goes through ``cryptography``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

from cryptography.hazmat.primitives import hashes

from attest.core.eventlog.errors import (
    EventLogStartupLocalityInvalid,
    EventLogUnknownAlgorithm,
)
from attest.core.eventlog.model import DIGEST_SIZES, EV_NO_ACTION, EventLog

STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
VALID_LOCALITIES = frozenset({0, 3, 4})
"""TPM2_Startup runs at locality 0 or 3; 4 marks an H-CRTM sequence (PFP spec)."""


class _Digest(Protocol):
    def digest(self) -> bytes: ...


class _Sm3:
    """``hashlib``-style one-shot SM3 (``_Sm3(data).digest()``) on ``cryptography``."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def digest(self) -> bytes:
        ctx = hashes.Hash(hashes.SM3())
        ctx.update(self._data)
        return ctx.finalize()


# Bank name -> one-shot hash constructor, called as ``constructor(data).digest()``. Binding the
# hashlib constructors directly (no wrapper function) saves a Python call per extend.
_CONSTRUCTORS: dict[str, Callable[[bytes], _Digest]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
    "sm3_256": _Sm3,
}


def startup_locality(log: EventLog) -> int | None:
    """The locality recorded by the log's StartupLocality event, or ``None`` if there is none."""
    locality: int | None = None
    pcr0_extended = False
    for event in log.events:
        if event.event_type != EV_NO_ACTION:
            if event.pcr == 0:
                pcr0_extended = True
            continue
        if not event.data.startswith(STARTUP_LOCALITY_SIGNATURE):
            continue
        where = f"event #{event.index}"
        if event.pcr != 0:
            raise EventLogStartupLocalityInvalid(f"{where} is logged for PCR {event.pcr}, not 0")
        if len(event.data) != len(STARTUP_LOCALITY_SIGNATURE) + 1:
            raise EventLogStartupLocalityInvalid(f"{where} has {len(event.data)} data bytes, "
                                                 "must be 17")
        if locality is not None:
            raise EventLogStartupLocalityInvalid(f"{where} repeats the StartupLocality event")
        if pcr0_extended:
            raise EventLogStartupLocalityInvalid(f"{where} follows a PCR 0 measurement")
        locality = event.data[-1]
        if locality not in VALID_LOCALITIES:
            raise EventLogStartupLocalityInvalid(f"{where} records locality {locality}")
    return locality


def initial_pcr_value(pcr: int, size: int, locality: int | None) -> bytes:
    """The value of ``pcr`` in a bank of digest ``size`` right after TPM2_Startup."""
    if pcr == 0 and locality:
        return bytes(size - 1) + bytes([locality])
    if 17 <= pcr <= 22:
        return b"\xff" * size
    return bytes(size)


def extend(bank: str, value: bytes, digest: bytes) -> bytes:
    """``H(value || digest)`` in ``bank``: one TPM2_PCR_Extend."""
    return _CONSTRUCTORS[bank](value + digest).digest()


def replay_event_log(log: EventLog) -> dict[str, dict[int, bytes]]:
    """Replay ``log``: bank name → PCR index → value, for every (bank, PCR) the log extends."""
    banks, _ = replay_with_locality(log)
    return banks


def replay_with_locality(log: EventLog) -> tuple[dict[str, dict[int, bytes]], int | None]:
    """Like :func:`replay_event_log`, also returning the StartupLocality (for appraisal)."""
    locality = startup_locality(log)
    banks: dict[str, dict[int, bytes]] = {}
    # Bank name -> (hash constructor, digest size, that bank's PCR values in ``banks``), so an
    # extend costs one lookup here, one for the current value and one hash call. The misses
    # (first extend of a bank or a PCR) are rare, so they are handled as exceptions: a ``try``
    # costs nothing in CPython 3.11 until it catches, unlike a ``.get()`` and a ``None`` test.
    state: dict[str, tuple[Callable[[bytes], _Digest], int, dict[int, bytes]]] = {}
    for event in log.events:
        if event.event_type == EV_NO_ACTION:
            continue
        pcr = event.pcr
        for bank, digest in event.digests.items():
            try:
                constructor, size, pcrs = state[bank]
            except KeyError:
                constructor, size, pcrs = state[bank] = _bank_state(bank, digest, event.index)
                banks[bank] = pcrs
            # The parser guarantees the size; an Event built by hand may not, and a wrong-sized
            # digest would silently replay to a value no TPM can produce.
            if len(digest) != size:
                raise _bad_digest(bank, digest, event.index)
            try:
                current = pcrs[pcr]
            except KeyError:
                current = initial_pcr_value(pcr, size, locality)
            pcrs[pcr] = constructor(current + digest).digest()
    return banks, locality


def _bad_digest(bank: str, digest: bytes, index: int) -> EventLogUnknownAlgorithm:
    return EventLogUnknownAlgorithm(f"event #{index}: {len(digest)}-byte digest for bank "
                                    f"{bank!r}")


def _bank_state(bank: str, digest: bytes,
                index: int) -> tuple[Callable[[bytes], _Digest], int, dict[int, bytes]]:
    """Replay state for the first extend of ``bank``; an unknown bank is an error."""
    constructor = _CONSTRUCTORS.get(bank)
    size = DIGEST_SIZES.get(bank)
    if constructor is None or size is None:
        raise _bad_digest(bank, digest, index)
    return constructor, size, {}
