"""Ruuvi Gateway messages (MQTT and HTTP POST) into observations: pure, ``now`` passed in.

MQTT: topic ``ruuvi/<gw_mac>/<tag_mac>``, JSON ``{"gw_mac", "rssi", "aoa", "gwts", "ts",
"data", "coords"}`` where ``data`` is the whole BLE advertisement in hex and ``ts`` the gateway's
Unix time of reception (a string or a number, depending on the firmware).
HTTP POST: ``{"data": {"coordinates", "timestamp", "gw_mac", "tags": {"<MAC>": {"rssi",
"timestamp", "data"}}}}``.

Anything that does not fit raises ``GatewayMessageError`` (or a ``RuuviDecodeError``) whose
``reason`` is the label under which the adapters count and drop it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from mec_api.sensor.ruuvi import (
    RuuviDecodeError,
    RuuviReading,
    advertisement_from_hex,
    decode_advertisement,
)

MAX_MQTT_PAYLOAD = 4096  # a gateway message is ~250 bytes
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-]?)[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}")
# Gateway clocks come from NTP; before the first sync they may report 1970. A reception time
# in the future (beyond the skew) or older than the backlog is not believed: ``now`` is used.
DEFAULT_CLOCK_SKEW = timedelta(minutes=5)
DEFAULT_MAX_BACKLOG = timedelta(days=7)


class GatewayMessageError(ValueError):
    """A gateway message that cannot become a reading; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class InvalidMac(GatewayMessageError):
    def __init__(self, value: object) -> None:
        super().__init__("invalid_mac", f"{value!r} is not a MAC address such as "
                                        "'CB:B8:33:4C:88:4F'")


@dataclass(frozen=True)
class Observation:
    """One decoded advertisement as one gateway heard it."""

    tag_mac: str
    gateway_mac: str | None
    rssi: int | None
    measured_at: datetime  # the gateway's reception time when believable, else received_at
    received_at: datetime  # when µMEC got it
    payload: bytes  # the 24-byte RAWv2 payload: identifies the measurement
    reading: RuuviReading


def normalize_mac(value: object) -> str:
    """``cb:b8:33:4c:88:4f``, ``CB-B8-…`` or ``cbb8334c884f`` → ``CB:B8:33:4C:88:4F``."""
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise InvalidMac(value)
    digits = re.sub(r"[:-]", "", value).upper()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def reception_time(value: object, now: datetime, *, clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
                   max_backlog: timedelta = DEFAULT_MAX_BACKLOG) -> datetime:
    """The gateway's Unix timestamp (int, float or numeric string) if believable, else ``now``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return now
    try:
        seconds = float(value)
        stamp = datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return now
    if stamp > now + clock_skew or stamp < now - max_backlog:
        return now
    return stamp


def _rssi(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not -127 <= value <= 20:
        return None  # absent or nonsense signal strength is not worth dropping the reading
    return value


def observe(*, tag_mac: object, gateway_mac: object, rssi: object, timestamp: object,
            data: object, now: datetime) -> Observation:
    """Decode one relayed advertisement into an ``Observation`` (or raise a typed error)."""
    tag = normalize_mac(tag_mac)
    gateway = None if gateway_mac in (None, "") else normalize_mac(gateway_mac)
    if not isinstance(data, str) or not data:
        raise GatewayMessageError("missing_data", "no 'data' (hex advertisement) in the message")
    payload, reading = decode_advertisement(advertisement_from_hex(data))
    if reading.mac is not None and reading.mac != tag:
        # The payload carries the tag's own MAC: a gateway that reports another one relays
        # something inconsistent, and the reading would be filed under the wrong tag.
        raise GatewayMessageError(
            "mac_mismatch", f"advertisement of tag {reading.mac} reported as {tag}")
    return Observation(tag_mac=tag, gateway_mac=gateway, rssi=_rssi(rssi),
                       measured_at=reception_time(timestamp, now), received_at=now,
                       payload=payload, reading=reading)


def parse_mqtt_message(topic: str, payload: bytes, now: datetime) -> Observation:
    """One MQTT message of a Ruuvi Gateway: topic ``<prefix>/<gw_mac>/<tag_mac>``."""
    levels = topic.split("/")
    if len(levels) < 2 or levels[-1] == "gw_status":
        raise GatewayMessageError("not_a_tag", f"topic {topic!r} carries no tag reading")
    if len(payload) > MAX_MQTT_PAYLOAD:
        raise GatewayMessageError("too_large", f"MQTT payload of {len(payload)} bytes")
    try:
        message = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GatewayMessageError("not_json", f"MQTT payload is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise GatewayMessageError("not_json", "MQTT payload is not a JSON object")
    gateway = message.get("gw_mac") or levels[-2]
    return observe(tag_mac=levels[-1], gateway_mac=gateway, rssi=message.get("rssi"),
                   timestamp=message.get("ts", message.get("gwts")), data=message.get("data"),
                   now=now)


@dataclass(frozen=True)
class GatewayPost:
    gateway_mac: str | None
    observations: list[Observation]
    dropped: dict[str, int]  # reason → count of tags that could not be used


def parse_gateway_post(body: object, now: datetime) -> GatewayPost:
    """The Ruuvi Gateway HTTP POST body (already JSON-decoded).

    A body of the wrong shape raises ``GatewayMessageError``; a tag entry that does not decode
    is only counted in ``dropped``: one bad tag must not cost the readings of the others.
    """
    data = body.get("data") if isinstance(body, dict) else None
    tags = data.get("tags") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(tags, dict):
        raise GatewayMessageError(
            "bad_shape", "expected the Ruuvi Gateway format {\"data\": {\"gw_mac\": …, "
                         "\"tags\": {\"<MAC>\": {\"rssi\": …, \"timestamp\": …, \"data\": …}}}}")
    gateway_raw = data.get("gw_mac")
    gateway = None if gateway_raw in (None, "") else normalize_mac(gateway_raw)
    observations: list[Observation] = []
    dropped: dict[str, int] = {}
    for mac, tag in tags.items():
        try:
            if not isinstance(tag, Mapping):
                raise GatewayMessageError("bad_shape", f"tag {mac!r} is not an object")
            observations.append(observe(
                tag_mac=mac, gateway_mac=gateway, rssi=tag.get("rssi"),
                timestamp=tag.get("timestamp", data.get("timestamp")), data=tag.get("data"),
                now=now))
        except (GatewayMessageError, RuuviDecodeError) as exc:
            reason: str = exc.reason
            dropped[reason] = dropped.get(reason, 0) + 1
    return GatewayPost(gateway_mac=gateway, observations=observations, dropped=dropped)


def drop_reason(exc: Exception) -> str:
    reason: Any = getattr(exc, "reason", "malformed")
    return str(reason)
