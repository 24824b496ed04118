"""Ruuvi Gateway MQTT and HTTP POST messages into observations (pure, clock passed in)."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mec_api.sensor.gateway import (
    GatewayMessageError,
    normalize_mac,
    parse_gateway_post,
    parse_mqtt_message,
    reception_time,
)
from mec_api.sensor.ruuvi import RuuviDecodeError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TAG = "CB:B8:33:4C:88:4F"
GW = "C8:25:2D:8E:9C:2C"
VALID = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"
ADV = "0201061BFF9904" + VALID
TOPIC = f"ruuvi/{GW}/{TAG}"


def mqtt_json(**fields: object) -> bytes:
    message: dict[str, object] = {"gw_mac": GW, "rssi": -62, "aoa": [],
                                  "gwts": str(int(NOW.timestamp()) - 1),
                                  "ts": str(int(NOW.timestamp()) - 2), "data": ADV,
                                  "coords": ""}
    message.update(fields)
    return json.dumps({k: v for k, v in message.items() if v is not None}).encode()


def test_mqtt_message_of_a_ruuvi_gateway() -> None:
    o = parse_mqtt_message(TOPIC, mqtt_json(), NOW)
    assert (o.tag_mac, o.gateway_mac, o.rssi) == (TAG, GW, -62)
    assert o.measured_at == NOW - timedelta(seconds=2)  # the gateway's reception time
    assert o.received_at == NOW
    assert o.payload == bytes.fromhex(VALID)
    assert (o.reading.temperature_c, o.reading.measurement_sequence) == (24.3, 205)


def test_mqtt_numeric_timestamps_and_lower_case_macs() -> None:
    o = parse_mqtt_message(f"ruuvi/{GW.lower()}/{TAG.lower()}",
                           mqtt_json(ts=int(NOW.timestamp()) - 5, gw_mac=None), NOW)
    assert (o.tag_mac, o.gateway_mac) == (TAG, GW)
    assert o.measured_at == NOW - timedelta(seconds=5)


@pytest.mark.parametrize("stamp", ["0", "abc", str(int((NOW + timedelta(hours=1)).timestamp())),
                                   True, None, "1e400", [1]])
def test_unbelievable_gateway_times_fall_back_to_now(stamp: object) -> None:
    assert reception_time(stamp, NOW) == NOW


def test_nonsense_rssi_is_kept_as_unknown() -> None:
    assert parse_mqtt_message(TOPIC, mqtt_json(rssi="loud"), NOW).rssi is None
    assert parse_mqtt_message(TOPIC, mqtt_json(rssi=500), NOW).rssi is None


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    (TOPIC, b"not json", "not_json"),
    (TOPIC, b"\xff\xfe", "not_json"),
    (TOPIC, b"[1, 2]", "not_json"),
    (TOPIC, mqtt_json(data=None), "missing_data"),
    (TOPIC, mqtt_json(data=7), "missing_data"),
    (TOPIC, mqtt_json(data="0201060303AAFE"), "not_ruuvi"),  # an Eddystone beacon
    (TOPIC, mqtt_json(data=ADV[:-4]), "malformed_advertisement"),  # truncated on the way
    (TOPIC, mqtt_json(data="0201061AFF9904" + VALID[:-2]), "truncated"),
    (TOPIC, mqtt_json(data="xyz"), "malformed_advertisement"),
    (TOPIC, b"{" + b" " * 5000 + b"}", "too_large"),
    (f"ruuvi/{GW}/gw_status", b"online", "not_a_tag"),
    ("ruuvi", mqtt_json(), "not_a_tag"),
    (f"ruuvi/{GW}/not-a-mac", mqtt_json(), "invalid_mac"),
    (f"ruuvi/{GW}/AA:BB:CC:DD:EE:FF", mqtt_json(), "mac_mismatch"),
    (TOPIC, mqtt_json(gw_mac="gateway"), "invalid_mac"),
])
def test_mqtt_garbage_has_a_drop_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises((GatewayMessageError, RuuviDecodeError)) as caught:
        parse_mqtt_message(topic, payload, NOW)
    assert getattr(caught.value, "reason", None) == reason


def test_http_post_of_a_ruuvi_gateway() -> None:
    other = "D2:A3:6E:C8:E0:25"
    other_payload = "0512FC5394C37C0004FFFC040CAC364200CED2A36EC8E025"
    body = {"data": {"coordinates": "", "timestamp": str(int(NOW.timestamp()) - 3),
                     "gw_mac": GW, "tags": {
                         TAG: {"rssi": -70, "timestamp": str(int(NOW.timestamp()) - 9),
                               "data": ADV},
                         other: {"rssi": -80, "data": "0201061BFF9904" + other_payload},
                         "bad": {"data": ADV},
                         "AA:AA:AA:AA:AA:AA": {"data": "0201060303AAFE"},
                         "BB:BB:BB:BB:BB:BB": "not an object"}}}
    post = parse_gateway_post(body, NOW)
    assert post.gateway_mac == GW
    by_tag = {o.tag_mac: o for o in post.observations}
    assert set(by_tag) == {TAG, other}
    assert by_tag[TAG].measured_at == NOW - timedelta(seconds=9)
    assert by_tag[other].measured_at == NOW - timedelta(seconds=3)  # the post's timestamp
    assert by_tag[other].reading.measurement_sequence == 206
    assert post.dropped == {"invalid_mac": 1, "not_ruuvi": 1, "bad_shape": 1}


@pytest.mark.parametrize("body", [None, [], {"data": []}, {"data": {"tags": []}}, {"tags": {}},
                                  {"data": {"gw_mac": "x", "tags": {}}}])
def test_http_post_of_the_wrong_shape_is_refused(body: object) -> None:
    with pytest.raises(GatewayMessageError):
        parse_gateway_post(body, NOW)


@pytest.mark.parametrize(("text", "mac"), [
    ("cb:b8:33:4c:88:4f", TAG), ("CB-B8-33-4C-88-4F", TAG), ("cbb8334c884f", TAG)])
def test_mac_spellings(text: str, mac: str) -> None:
    assert normalize_mac(text) == mac


@pytest.mark.parametrize("text", ["CB:B8:33:4C:88", "CB:B8-33:4C:88:4F", "GG:B8:33:4C:88:4F",
                                  "", 12, None, "CB:B8:33:4C:88:4F\n"])
def test_bad_macs(text: object) -> None:
    with pytest.raises(GatewayMessageError):
        normalize_mac(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60)
    | st.sampled_from([ADV, TAG, GW, VALID]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["data", "tags", "gw_mac", "rssi", "ts", "timestamp", TAG, "x"]),
        inner, max_size=5),
    max_leaves=20)


@given(st.text(max_size=60), json_values)
def test_fuzz_mqtt_messages(topic: str, message: object) -> None:
    with contextlib.suppress(GatewayMessageError, RuuviDecodeError):
        parse_mqtt_message(topic, json.dumps(message).encode(), NOW)


@given(json_values)
def test_fuzz_http_posts(body: object) -> None:
    try:
        post = parse_gateway_post({"data": body} if isinstance(body, dict) else body, NOW)
    except GatewayMessageError:
        return
    assert all(o.payload[:1] == b"\x05" for o in post.observations)
