"""What a Ruuvi Gateway posts to the sensor API (its HTTP POST body), for the sensor and OpenAPI
tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TAG = "CB:B8:33:4C:88:4F"
GW = "C8:25:2D:8E:9C:2C"


def adv(sequence: int, mac: str = "CBB8334C884F") -> str:
    return f"0201061BFF99040512FC5394C37C0004FFFC040CAC3642{sequence:04X}{mac}"


def gateway_body(*tags: tuple[str, int, datetime]) -> dict[str, Any]:
    return {"data": {"coordinates": "", "timestamp": str(int(NOW.timestamp())), "gw_mac": GW,
                     "tags": {mac: {"rssi": -65, "timestamp": str(int(at.timestamp())),
                                    "data": adv(seq, mac.replace(":", ""))}
                              for mac, seq, at in tags}}}
