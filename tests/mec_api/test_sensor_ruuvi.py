"""Ruuvi RAWv2 decoder against the official test vectors, the spec's field examples, an
independent encoder written from the spec, and fuzzing (nothing but a typed error comes out)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mec_api.sensor.ruuvi import (
    MalformedAdvertisement,
    NotRuuviAdvertisement,
    RuuviDecodeError,
    RuuviReading,
    TruncatedPayload,
    UnsupportedDataFormat,
    advertisement_from_hex,
    decode_advertisement,
    decode_rawv2,
)

MAC = "CB:B8:33:4C:88:4F"
# docs.ruuvi.com "Data format 5 (RAWv2)", section "Test vectors".
VALID = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"
MAXIMUM = "057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F"
MINIMUM = "058001000000008001800180010000000000CBB8334C884F"
INVALID = "058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"
FLAGS = "020106"  # AD structure: flags, LE General Discoverable, BR/EDR not supported


def reading(**fields: object) -> RuuviReading:
    return RuuviReading(data_format=5, **fields)  # type: ignore[arg-type]


OFFICIAL = {
    "valid": (VALID, reading(
        temperature_c=24.3, humidity_pct=53.49, pressure_pa=100044, acceleration_x_g=0.004,
        acceleration_y_g=-0.004, acceleration_z_g=1.036, tx_power_dbm=4, battery_v=2.977,
        movement_counter=66, measurement_sequence=205, mac=MAC)),
    "maximum": (MAXIMUM, reading(
        temperature_c=163.835, humidity_pct=163.835, pressure_pa=115534, acceleration_x_g=32.767,
        acceleration_y_g=32.767, acceleration_z_g=32.767, tx_power_dbm=20, battery_v=3.646,
        movement_counter=254, measurement_sequence=65534, mac=MAC)),
    "minimum": (MINIMUM, reading(
        temperature_c=-163.835, humidity_pct=0.0, pressure_pa=50000, acceleration_x_g=-32.767,
        acceleration_y_g=-32.767, acceleration_z_g=-32.767, tx_power_dbm=-40, battery_v=1.6,
        movement_counter=0, measurement_sequence=0, mac=MAC)),
    "invalid": (INVALID, reading(
        temperature_c=None, humidity_pct=None, pressure_pa=None, acceleration_x_g=None,
        acceleration_y_g=None, acceleration_z_g=None, tx_power_dbm=None, battery_v=None,
        movement_counter=None, measurement_sequence=None, mac=None)),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL))
def test_official_vectors(case: str) -> None:
    hex_payload, expected = OFFICIAL[case]
    assert decode_rawv2(bytes.fromhex(hex_payload)) == expected


@pytest.mark.parametrize("case", sorted(OFFICIAL))
def test_official_vectors_inside_a_gateway_advertisement(case: str) -> None:
    hex_payload, expected = OFFICIAL[case]
    advertisement = advertisement_from_hex(FLAGS + "1BFF9904" + hex_payload)
    payload, decoded = decode_advertisement(advertisement)
    assert payload == bytes.fromhex(hex_payload)
    assert decoded == expected


def test_design_vector() -> None:
    """DESIGN.md: 24.3 °C, 53.49 %RH, 100044 Pa, acc (0.004, −0.004, 1.036) g, TX +4 dBm,
    2.977 V, movement 66, sequence 205, MAC CB:B8:33:4C:88:4F."""
    _, r = decode_advertisement(bytes.fromhex("0201061BFF9904" + VALID.lower()))
    assert (r.temperature_c, r.humidity_pct, r.pressure_pa) == (24.3, 53.49, 100044)
    assert (r.acceleration_x_g, r.acceleration_y_g, r.acceleration_z_g) == (0.004, -0.004, 1.036)
    assert (r.tx_power_dbm, r.battery_v, r.movement_counter) == (4, 2.977, 66)
    assert (r.measurement_sequence, r.mac) == (205, MAC)


def encode(temperature: int = 0, humidity: int = 0, pressure: int = 0, ax: int = 0, ay: int = 0,
           az: int = 0, battery: int = 0, tx: int = 0, movement: int = 0, sequence: int = 0,
           mac: bytes = bytes.fromhex("CBB8334C884F")) -> bytes:
    """An encoder written from the spec's offset table, independent of the decoder."""
    return (struct.pack(">BhHHhhhHBH", 5, temperature, humidity, pressure, ax, ay, az,
                        (battery << 5) | tx, movement, sequence) + mac)


# Spec "Data field descriptions" examples: raw field value → measurement.
@pytest.mark.parametrize(("fields", "attribute", "value"), [
    ({"temperature": 0x01C3}, "temperature_c", 2.255),
    ({"temperature": -0x01C3}, "temperature_c", -2.255),  # 0xFE3D
    ({"humidity": 10010}, "humidity_pct", 25.025),
    ({"humidity": 40000}, "humidity_pct", 100.0),
    ({"pressure": 51325}, "pressure_pa", 101325),
    ({"ax": -1000}, "acceleration_x_g", -1.0),  # 0xFC18
    ({"ay": 1000}, "acceleration_y_g", 1.0),
    ({"battery": 1400}, "battery_v", 3.0),
    ({"tx": 22}, "tx_power_dbm", 4),
    ({"movement": 100}, "movement_counter", 100),
    ({"sequence": 1000}, "measurement_sequence", 1000),
])
def test_spec_field_examples(fields: dict[str, int], attribute: str, value: object) -> None:
    assert getattr(decode_rawv2(encode(**fields)), attribute) == value


# Each "not available" sentinel makes exactly its own field None; one step inside the range
# is still a number.
SENTINELS = [
    ("temperature", -0x8000, -0x7FFF, "temperature_c"),
    ("humidity", 0xFFFF, 0xFFFE, "humidity_pct"),
    ("pressure", 0xFFFF, 0xFFFE, "pressure_pa"),
    ("ax", -0x8000, -0x7FFF, "acceleration_x_g"),
    ("ay", -0x8000, -0x7FFF, "acceleration_y_g"),
    ("az", -0x8000, -0x7FFF, "acceleration_z_g"),
    ("battery", 0x7FF, 0x7FE, "battery_v"),
    ("tx", 0x1F, 0x1E, "tx_power_dbm"),
    ("movement", 0xFF, 0xFE, "movement_counter"),
    ("sequence", 0xFFFF, 0xFFFE, "measurement_sequence"),
]


@pytest.mark.parametrize(("field", "sentinel", "last_valid", "attribute"), SENTINELS)
def test_not_available_sentinels(field: str, sentinel: int, last_valid: int,
                                 attribute: str) -> None:
    unavailable = decode_rawv2(encode(**{field: sentinel}))
    assert getattr(unavailable, attribute) is None
    others = [a for _, _, _, a in SENTINELS if a != attribute]
    assert all(getattr(unavailable, a) is not None for a in others)
    assert getattr(decode_rawv2(encode(**{field: last_valid})), attribute) is not None


def test_mac_all_bits_set_is_not_available() -> None:
    assert decode_rawv2(encode(mac=b"\xff" * 6)).mac is None
    assert decode_rawv2(encode(mac=b"\xff" * 5 + b"\xfe")).mac == "FF:FF:FF:FF:FF:FE"


def test_ruuvi_data_found_among_other_ad_structures() -> None:
    apple = "07FF4C0012020000"  # manufacturer data of another company (0x004C) comes first
    name = "06095275757669"  # complete local name "Ruuvi"
    adv = bytes.fromhex(FLAGS + apple + name + "1BFF9904" + VALID + "000000")  # zero padding
    assert decode_advertisement(adv)[1] == OFFICIAL["valid"][1]


@pytest.mark.parametrize(("advertisement", "error"), [
    ("", NotRuuviAdvertisement),
    (FLAGS, NotRuuviAdvertisement),
    (FLAGS + "07FF4C0012020000", NotRuuviAdvertisement),  # Apple, not Ruuvi
    (FLAGS + "1BFF9904" + VALID[:-2], MalformedAdvertisement),  # AD claims more than follows
    (FLAGS + "1AFF9904" + VALID[:-2], TruncatedPayload),  # consistent AD, 23-byte payload
    (FLAGS + "1CFF9904" + VALID + "00", TruncatedPayload),  # 25 bytes: not RAWv2
    (FLAGS + "0FFF990403291A1ECE1EFC18F94202CA0B53", UnsupportedDataFormat),  # RAWv1
    (FLAGS + "03FF9904", TruncatedPayload),  # company id and nothing else
    (FLAGS + "02FF99", NotRuuviAdvertisement),  # manufacturer data too short for a company id
    ("FF", MalformedAdvertisement),
])
def test_garbage_advertisements_raise_typed_errors(advertisement: str,
                                                   error: type[RuuviDecodeError]) -> None:
    with pytest.raises(error) as caught:
        decode_advertisement(bytes.fromhex(advertisement))
    assert caught.value.reason != ""


@pytest.mark.parametrize("text", ["0", "zz", "0201 06", "0201é6", "02" * 600])
def test_bad_hex_is_a_typed_error(text: str) -> None:
    with pytest.raises(MalformedAdvertisement):
        advertisement_from_hex(text)


def test_error_messages_say_what_happened() -> None:
    with pytest.raises(UnsupportedDataFormat, match="format 3 is not supported") as caught:
        decode_rawv2(bytes.fromhex("03291A1ECE1EFC18F94202CA0B53"))
    assert caught.value.data_format == 3
    with pytest.raises(TruncatedPayload, match="23 bytes") as truncated:
        decode_rawv2(bytes.fromhex(VALID)[:23])
    assert truncated.value.length == 23


@given(st.binary(max_size=600))
def test_fuzz_advertisement_bytes(advertisement: bytes) -> None:
    try:
        payload, decoded = decode_advertisement(advertisement)
    except RuuviDecodeError:
        return
    assert len(payload) == 24 and decoded.data_format == 5


@given(st.binary(max_size=40), st.integers(0, 255), st.binary(max_size=4))
def test_fuzz_ruuvi_shaped_advertisements(body: bytes, claimed: int, tail: bytes) -> None:
    """Random payloads behind a real Ruuvi header, with a length byte that may lie."""
    advertisement = bytes.fromhex(FLAGS) + bytes([claimed, 0xFF, 0x99, 0x04]) + body + tail
    try:
        _, decoded = decode_advertisement(advertisement)
    except RuuviDecodeError:
        return
    assert claimed == 27 and len(body + tail) >= 24 and (body + tail)[:1] == b"\x05"
    assert decoded.data_format == 5


@given(st.one_of(st.text(max_size=200), st.binary(max_size=80).map(bytes.hex)))
def test_fuzz_hex_text(text: str) -> None:
    with contextlib.suppress(RuuviDecodeError):
        decode_advertisement(advertisement_from_hex(text))


@given(st.integers(-0x7FFF, 0x7FFF), st.integers(0, 0xFFFE), st.integers(0, 0xFFFE),
       st.integers(-0x7FFF, 0x7FFF), st.integers(0, 0x7FE), st.integers(0, 0x1E),
       st.integers(0, 0xFE), st.integers(0, 0xFFFE))
def test_every_in_range_value_round_trips(temperature: int, humidity: int, pressure: int,
                                          acc: int, battery: int, tx: int, movement: int,
                                          sequence: int) -> None:
    r = decode_rawv2(encode(temperature, humidity, pressure, acc, -acc, acc, battery, tx,
                            movement, sequence))
    assert r.temperature_c is not None and round(r.temperature_c * 200) == temperature
    assert r.humidity_pct is not None and round(r.humidity_pct * 400) == humidity
    assert r.pressure_pa == pressure + 50000
    assert r.acceleration_x_g is not None and round(r.acceleration_x_g * 1000) == acc
    assert r.acceleration_y_g is not None and round(r.acceleration_y_g * 1000) == -acc
    assert r.battery_v is not None and round(r.battery_v * 1000) == 1600 + battery
    assert r.tx_power_dbm == -40 + 2 * tx
    assert (r.movement_counter, r.measurement_sequence, r.mac) == (movement, sequence, MAC)
