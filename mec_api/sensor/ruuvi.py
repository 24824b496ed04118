"""Ruuvi RAWv2 (data format 5) decoder: advertisement bytes in, a typed reading out.

Pure: no I/O, no clock. Follows docs.ruuvi.com "Data format 5 (RAWv2)": every field is MSB
first, signed fields are two's complement, and "not available" is the largest value of an
unsigned field, the smallest of a signed one and all bits set for the MAC. Those sentinels
become ``None``; they are never reported as numbers.

A Ruuvi Gateway relays the whole BLE advertisement (AD structures, e.g. ``0201061BFF9904…``);
``decode_advertisement`` finds the manufacturer-specific data of Ruuvi Innovations (AD type
0xFF, company id 0x0499 sent little endian as ``99 04``) and decodes the payload after it.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

RUUVI_COMPANY_ID = 0x0499
DATA_FORMAT_RAWV2 = 5
RAWV2_LENGTH = 24  # format byte + 23 bytes of fields, excluding the company id
AD_TYPE_MANUFACTURER_SPECIFIC = 0xFF
# A legacy BLE advertisement is at most 31 bytes; extended ones up to 254 (+ scan response).
MAX_ADVERTISEMENT_LENGTH = 512

_INVALID_I16 = -0x8000
_INVALID_U16 = 0xFFFF
_INVALID_U8 = 0xFF
_INVALID_BATTERY = 0x7FF  # 11 bits all set
_INVALID_TX_POWER = 0x1F  # 5 bits all set
_INVALID_MAC = b"\xff" * 6


class RuuviDecodeError(ValueError):
    """Bytes that are not a decodable Ruuvi RAWv2 reading. ``reason`` is a short metric label."""

    reason = "malformed"


class MalformedAdvertisement(RuuviDecodeError):
    """The hex text or the AD structure list of the advertisement is broken."""

    reason = "malformed_advertisement"


class NotRuuviAdvertisement(RuuviDecodeError):
    """The advertisement carries no manufacturer data of Ruuvi Innovations (0x0499)."""

    reason = "not_ruuvi"


class UnsupportedDataFormat(RuuviDecodeError):
    """Ruuvi manufacturer data in another format than 5 (RAWv2)."""

    reason = "unsupported_format"

    def __init__(self, data_format: int) -> None:
        super().__init__(
            f"Ruuvi data format {data_format} is not supported: only format 5 (RAWv2) is "
            "decoded; configure the tag firmware to broadcast RAWv2")
        self.data_format = data_format


class TruncatedPayload(RuuviDecodeError):
    """A RAWv2 payload that is not exactly 24 bytes long."""

    reason = "truncated"

    def __init__(self, length: int) -> None:
        super().__init__(
            f"RAWv2 payload is {length} bytes, expected {RAWV2_LENGTH}: the advertisement was "
            "cut or corrupted on the way; it is dropped")
        self.length = length


@dataclass(frozen=True)
class RuuviReading:
    """One RAWv2 measurement. ``None`` means the tag reported the field as not available."""

    data_format: int
    temperature_c: float | None
    humidity_pct: float | None
    pressure_pa: int | None
    acceleration_x_g: float | None
    acceleration_y_g: float | None
    acceleration_z_g: float | None
    tx_power_dbm: int | None
    battery_v: float | None
    movement_counter: int | None
    measurement_sequence: int | None
    mac: str | None  # "CB:B8:33:4C:88:4F"


def _i16(payload: bytes, offset: int) -> int | None:
    value = int.from_bytes(payload[offset:offset + 2], "big", signed=True)
    return None if value == _INVALID_I16 else value


def _u16(payload: bytes, offset: int) -> int | None:
    value = int.from_bytes(payload[offset:offset + 2], "big")
    return None if value == _INVALID_U16 else value


def _scaled(raw: int | None, divisor: int) -> float | None:
    # Dividing the integer keeps the result the closest float to the spec's decimal value
    # (4860 / 200 == 24.3, whereas 4860 * 0.005 == 24.300000000000001).
    return None if raw is None else raw / divisor


def format_mac(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def decode_rawv2(payload: bytes) -> RuuviReading:
    """Decode the 24-byte RAWv2 payload (format byte first, company id already stripped)."""
    if len(payload) == 0:
        raise TruncatedPayload(0)
    if payload[0] != DATA_FORMAT_RAWV2:
        raise UnsupportedDataFormat(payload[0])
    if len(payload) != RAWV2_LENGTH:
        raise TruncatedPayload(len(payload))

    temperature = _i16(payload, 1)
    humidity = _u16(payload, 3)
    pressure = _u16(payload, 5)
    power_info = int.from_bytes(payload[13:15], "big")
    battery_mv_above_1600 = power_info >> 5
    tx_power_steps = power_info & 0x1F
    movement = payload[15]
    sequence = _u16(payload, 16)
    mac = payload[18:24]

    return RuuviReading(
        data_format=DATA_FORMAT_RAWV2,
        temperature_c=_scaled(temperature, 200),  # 0.005 °C per step
        humidity_pct=_scaled(humidity, 400),  # 0.0025 %RH per step
        pressure_pa=None if pressure is None else pressure + 50_000,
        acceleration_x_g=_scaled(_i16(payload, 7), 1000),  # mG
        acceleration_y_g=_scaled(_i16(payload, 9), 1000),
        acceleration_z_g=_scaled(_i16(payload, 11), 1000),
        tx_power_dbm=(None if tx_power_steps == _INVALID_TX_POWER
                      else -40 + 2 * tx_power_steps),
        battery_v=(None if battery_mv_above_1600 == _INVALID_BATTERY
                   else (1600 + battery_mv_above_1600) / 1000),
        movement_counter=None if movement == _INVALID_U8 else movement,
        measurement_sequence=sequence,
        mac=None if mac == _INVALID_MAC else format_mac(mac),
    )


def ruuvi_manufacturer_data(advertisement: bytes) -> bytes:
    """The manufacturer-specific data of Ruuvi Innovations in a BLE advertisement, without
    the company id. Walks the AD structures (length, type, data) to the end."""
    if len(advertisement) > MAX_ADVERTISEMENT_LENGTH:
        raise MalformedAdvertisement(
            f"advertisement of {len(advertisement)} bytes exceeds {MAX_ADVERTISEMENT_LENGTH}: "
            "not a BLE advertisement")
    offset = 0
    while offset < len(advertisement):
        length = advertisement[offset]
        if length == 0:  # zero padding ends the significant part of the advertisement
            break
        end = offset + 1 + length
        if end > len(advertisement):
            raise MalformedAdvertisement(
                f"AD structure at byte {offset} claims {length} bytes but only "
                f"{len(advertisement) - offset - 1} follow: the advertisement is truncated")
        ad_type = advertisement[offset + 1]
        data = advertisement[offset + 2:end]
        if (ad_type == AD_TYPE_MANUFACTURER_SPECIFIC and len(data) >= 2
                and int.from_bytes(data[:2], "little") == RUUVI_COMPANY_ID):
            return data[2:]
        offset = end
    raise NotRuuviAdvertisement(
        "no manufacturer-specific data with company id 0x0499 (Ruuvi Innovations) in the "
        "advertisement: it is not from a RuuviTag")


def decode_advertisement(advertisement: bytes) -> tuple[bytes, RuuviReading]:
    """Find the Ruuvi payload in a whole BLE advertisement and decode it.

    Returns the 24-byte payload too: it identifies the measurement (it holds the sequence
    number and the tag MAC) and is what the store de-duplicates on.
    """
    payload = ruuvi_manufacturer_data(advertisement)
    return payload, decode_rawv2(payload)


def advertisement_from_hex(text: str) -> bytes:
    """The Ruuvi Gateway's ``data`` field (hex, either case) as bytes."""
    if len(text) > 2 * MAX_ADVERTISEMENT_LENGTH:
        raise MalformedAdvertisement(
            f"advertisement hex of {len(text)} characters is too long to be a BLE advertisement")
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError) as exc:
        raise MalformedAdvertisement(
            f"advertisement is not an even-length hex string ({exc}); the gateway's 'data' "
            "field must be the raw advertisement in hex") from exc
