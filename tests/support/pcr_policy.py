"""Attestation policy documents for tests: the k3s node policy and the PCR value a series of
measurements leaves in a fresh SHA-256 PCR."""

from __future__ import annotations

import hashlib

import yaml


def k3s_policy(app_pcr_value: str | None = None, **extra: object) -> str:
    doc: dict[str, object] = {"name": "pi-k3s", "selection": {"sha256": [0, 1, 2, 3, 7, 14]},
                              **extra}
    if app_pcr_value is not None:
        doc["pcrs"] = {"sha256": {14: [app_pcr_value]}}
    return yaml.safe_dump(doc)


def pcr_after(*measurements: bytes) -> str:
    value = bytes(32)
    for m in measurements:
        value = hashlib.sha256(value + hashlib.sha256(m).digest()).digest()
    return value.hex()
