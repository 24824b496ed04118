"""Data model and constants of TCG PC Client boot event logs.

Names and numbers come from the TCG PC Client Platform Firmware Profile (PFP) specification
(event types, ``TCG_EfiSpecIDEvent``) and the TPM 2.0 library specification (``TPM_ALG_ID``).
Digests are keyed by hash *name* (``"sha256"``), the same names the quote code uses for banks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# TPM_ALG_ID -> (name, digest size). The digest size is also what the Spec ID event must declare.
HASH_ALGORITHMS: dict[int, tuple[str, int]] = {
    0x0004: ("sha1", 20),
    0x000B: ("sha256", 32),
    0x000C: ("sha384", 48),
    0x000D: ("sha512", 64),
    0x0012: ("sm3_256", 32),
}
DIGEST_SIZES: dict[str, int] = {name: size for name, size in HASH_ALGORITHMS.values()}
ALGORITHM_IDS: dict[str, int] = {name: alg for alg, (name, _) in HASH_ALGORITHMS.items()}

EV_NO_ACTION = 0x00000003

EVENT_TYPES: dict[int, str] = {
    0x00000000: "EV_PREBOOT_CERT",
    0x00000001: "EV_POST_CODE",
    0x00000002: "EV_UNUSED",
    0x00000003: "EV_NO_ACTION",
    0x00000004: "EV_SEPARATOR",
    0x00000005: "EV_ACTION",
    0x00000006: "EV_EVENT_TAG",
    0x00000007: "EV_S_CRTM_CONTENTS",
    0x00000008: "EV_S_CRTM_VERSION",
    0x00000009: "EV_CPU_MICROCODE",
    0x0000000A: "EV_PLATFORM_CONFIG_FLAGS",
    0x0000000B: "EV_TABLE_OF_DEVICES",
    0x0000000C: "EV_COMPACT_HASH",
    0x0000000D: "EV_IPL",
    0x0000000E: "EV_IPL_PARTITION_DATA",
    0x0000000F: "EV_NONHOST_CODE",
    0x00000010: "EV_NONHOST_CONFIG",
    0x00000011: "EV_NONHOST_INFO",
    0x00000012: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x00000013: "EV_POST_CODE2",
    0x80000000: "EV_EFI_EVENT_BASE",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
    0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
    0x800000E3: "EV_EFI_SPDM_DEVICE_POLICY",
    0x800000E4: "EV_EFI_SPDM_DEVICE_AUTHORITY",
}

# A PC Client TPM has 24 PCRs (PC Client Platform TPM Profile); anything else is not a real event.
PCR_COUNT = 24


def event_type_name(event_type: int) -> str:
    """The PFP name of an event type, or ``EV_UNKNOWN_0x…`` for values the spec does not define."""
    return EVENT_TYPES.get(event_type, f"EV_UNKNOWN_0x{event_type:08x}")


@dataclass(frozen=True, slots=True)
class SpecIdEvent:
    """``TCG_EfiSpecIDEvent`` ("Spec ID Event03"): the header of a crypto-agile log.

    ``algorithms`` keeps every declared (TPM_ALG_ID, digest size) pair in log order, including
    algorithms this verifier cannot name: their sizes are what lets the parser skip them.
    """

    platform_class: int
    spec_version_major: int
    spec_version_minor: int
    spec_errata: int
    uintn_size: int
    algorithms: tuple[tuple[int, int], ...]
    vendor_info: bytes

    @property
    def bank_names(self) -> tuple[str, ...]:
        """Names of the declared algorithms this verifier knows (unknown ones are skipped)."""
        return tuple(HASH_ALGORITHMS[a][0] for a, _ in self.algorithms if a in HASH_ALGORITHMS)


@dataclass(frozen=True, slots=True)
class Event:
    """One log entry (``TCG_PCR_EVENT`` or ``TCG_PCR_EVENT2``).

    ``index`` is the position in the log (the Spec ID header is event 0). Only ``pcr`` and
    ``digests`` are authenticated by a quote (through replay); ``event_type`` and ``data`` are
    whatever the log claims and must not drive a decision on their own.
    """

    index: int
    pcr: int
    event_type: int
    digests: dict[str, bytes]
    data: bytes

    @property
    def type_name(self) -> str:
        return event_type_name(self.event_type)


def _slot_setter(name: str) -> Callable[[Event, Any], None]:
    setter: Callable[[Event, Any], None] = vars(Event)[name].__set__
    return setter


_new_object = object.__new__
_set_index, _set_pcr, _set_event_type, _set_digests, _set_data = (
    _slot_setter(name) for name in ("index", "pcr", "event_type", "digests", "data"))


def new_event(index: int, pcr: int, event_type: int, digests: dict[str, bytes],
              data: bytes) -> Event:
    """``Event(index, pcr, event_type, digests, data)``, about twice as cheap to call.

    A frozen dataclass's ``__init__`` must go through ``object.__setattr__`` once per field
    (~1 µs per event on the benchmark VM, the single largest cost of parsing). Writing the
    slots through their member descriptors skips that dispatch; the result is an ordinary
    :class:`Event` (still frozen, equal to one built by ``Event(...)``, usable with
    ``dataclasses.replace``). Like the dataclass's own ``__init__``, it checks no types.
    """
    event: Event = _new_object(Event)
    _set_index(event, index)
    _set_pcr(event, pcr)
    _set_event_type(event, event_type)
    _set_digests(event, digests)
    _set_data(event, data)
    return event


@dataclass(frozen=True, slots=True)
class EventLog:
    """A parsed log. ``spec_id`` is ``None`` for a legacy SHA-1 (TCG 1.2 style) log."""

    spec_id: SpecIdEvent | None
    events: tuple[Event, ...]

    @property
    def crypto_agile(self) -> bool:
        return self.spec_id is not None
