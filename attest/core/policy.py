"""Appraisal policies: what a node class must measure to be trusted.

A policy is a small YAML document, one per node class, managed with ``umec policy …``::

    name: pi-k3s
    selection: {sha256: [0, 1, 2, 3, 4, 7, 10, 14]}   # PCRs every quote must cover
    pcrs:                                              # allowed values per PCR (any of the list)
      sha256:
        14: ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    eventlog:                                          # optional reference digests (see eventlog)
      bank: sha256
      pcrs: {4: {allowed: ["…"], required: ["…"]}}
    require_event_log: false
    interval_seconds: 30
    require_ack: false          # true: leaving untrusted/stale also needs `umec nodes ack`
    version: 3                  # optional; required in a signed policy, only ever increases
    runtime_policy: {…}         # optional IMA runtime policy: Keylime's runtime-policy JSON
                                # (inline mapping or JSON string); needs PCR 10 in selection

Parsing is strict: unknown keys, bad hex and wrong digest lengths are rejected with
:class:`PolicyInvalid` naming the key, so a typo can never silently widen what is accepted.
An empty ``pcrs`` is allowed (quote freshness and the event log may be all a class checks), but
``selection`` must name at least one PCR. A policy's ``name`` (its node class) matches
:data:`POLICY_NAME_PATTERN`: it is a path segment of the operator API, a column of 128
characters, and a word printed on operators' terminals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from attest.core.errors import AttestationError
from attest.core.eventlog import EventLogReference
from attest.core.ima.policy import RuntimePolicy

DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}
_KEYS = {"name", "description", "selection", "pcrs", "eventlog", "require_event_log",
         "interval_seconds", "require_ack", "version", "runtime_policy"}
# Letters, digits, '-', '_' and '.', starting and ending with a letter or digit, at most 128:
# no '/', '..', whitespace, control or escape characters, nothing past the database column.
POLICY_NAME_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,126}[A-Za-z0-9])?$"
_POLICY_NAME = re.compile(POLICY_NAME_PATTERN)


class PolicyInvalid(ValueError):
    """An appraisal policy document is malformed; the message names the offending key."""


class PcrValueNotAllowed(AttestationError):
    check = "policy.pcr_value"
    hint = ("The measured boot chain or application changed. If the change is intended, add "
            "the new value to the node class policy (umec policy set); otherwise investigate "
            "the node.")


class EventLogRequired(AttestationError):
    check = "policy.event_log_required"
    hint = "The policy requires a boot event log; make the agent send one (event_log_path)."


def _pcr_index(bank: str, raw: Any) -> int:
    try:
        index = int(raw)
    except (TypeError, ValueError):
        raise PolicyInvalid(f"pcrs.{bank}: PCR index {raw!r} is not an integer") from None
    if not 0 <= index <= 23:
        raise PolicyInvalid(f"pcrs.{bank}: PCR index {index} outside 0..23")
    return index


def _bank(where: str, raw: Any) -> str:
    if raw not in DIGEST_SIZES:
        raise PolicyInvalid(f"{where}: unknown PCR bank {raw!r} "
                            f"(use one of {sorted(DIGEST_SIZES)})")
    return str(raw)


def _digest(where: str, bank: str, raw: Any) -> bytes:
    try:
        value = bytes.fromhex(str(raw))
    except ValueError:
        raise PolicyInvalid(f"{where}: {raw!r} is not hex") from None
    if len(value) != DIGEST_SIZES[bank]:
        raise PolicyInvalid(f"{where}: {raw!r} is not a {bank} digest")
    return value


def _flag(doc: Mapping[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if not isinstance(value, bool):
        raise PolicyInvalid(f"{key}: true or false")
    return value


def _name(doc: Any) -> str:
    if not isinstance(doc, Mapping):
        raise PolicyInvalid("policy must be a mapping")
    unknown = set(doc) - _KEYS
    if unknown:
        raise PolicyInvalid(f"unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise PolicyInvalid("name: required, a non-empty string")
    if _POLICY_NAME.fullmatch(name) is None:
        raise PolicyInvalid(f"name: {name[:64]!r} is not a node class name (letters, digits, "
                            "'-', '_' and '.', starting and ending with a letter or digit, at "
                            "most 128 characters)")
    return name


def _selection(doc: Mapping[str, Any]) -> dict[str, frozenset[int]]:
    raw_sel = doc.get("selection")
    if not isinstance(raw_sel, Mapping) or not raw_sel:
        raise PolicyInvalid("selection: required, e.g. {sha256: [0, 7, 14]}")
    selection: dict[str, frozenset[int]] = {}
    for bank, indices in raw_sel.items():
        b = _bank("selection", bank)
        if not isinstance(indices, list) or not indices:
            raise PolicyInvalid(f"selection.{b}: a non-empty list of PCR indices")
        selection[b] = frozenset(_pcr_index(b, i) for i in indices)
    return selection


def _bank_values(b: str, values: Any, selected: frozenset[int]) -> dict[int, frozenset[bytes]]:
    """``pcrs.<bank>``: each pinned PCR must be selected and list its allowed values."""
    if not isinstance(values, Mapping):
        raise PolicyInvalid(f"pcrs.{b}: a mapping pcr -> [allowed hex values]")
    pinned: dict[int, frozenset[bytes]] = {}
    for raw_index, allowed in values.items():
        index = _pcr_index(b, raw_index)
        if index not in selected:
            raise PolicyInvalid(f"pcrs.{b}.{index}: not in selection.{b}; it would "
                                "never be quoted")
        if not isinstance(allowed, list) or not allowed:
            raise PolicyInvalid(f"pcrs.{b}.{index}: a non-empty list of hex values")
        pinned[index] = frozenset(_digest(f"pcrs.{b}.{index}", b, v) for v in allowed)
    return pinned


def _pcrs(doc: Mapping[str, Any],
          selection: Mapping[str, frozenset[int]]) -> dict[str, dict[int, frozenset[bytes]]]:
    raw_pcrs = doc.get("pcrs") or {}
    if not isinstance(raw_pcrs, Mapping):
        raise PolicyInvalid("pcrs: a mapping bank -> {pcr: [allowed hex values]}")
    pcrs: dict[str, dict[int, frozenset[bytes]]] = {}
    for bank, values in raw_pcrs.items():
        b = _bank("pcrs", bank)
        pcrs[b] = _bank_values(b, values, selection.get(b, frozenset()))
    return pcrs


def _eventlog(doc: Mapping[str, Any]) -> EventLogReference | None:
    if doc.get("eventlog") is None:
        return None
    try:
        return EventLogReference.from_dict(doc["eventlog"])
    except (ValueError, TypeError, KeyError) as exc:
        # The reference's own message already starts with the offending key.
        raise PolicyInvalid(str(getattr(exc, "detail", exc))) from None


def _runtime_policy(doc: Mapping[str, Any],
                    selection: Mapping[str, frozenset[int]]) -> RuntimePolicy | None:
    raw = doc.get("runtime_policy")
    if raw is None:
        return None
    if not any(10 in pcrs for pcrs in selection.values()):
        raise PolicyInvalid("runtime_policy: needs PCR 10 in selection (IMA extends PCR 10)")
    try:
        if isinstance(raw, str):
            return RuntimePolicy.from_json(raw)
        return RuntimePolicy.from_dict(raw)
    except ValueError as exc:
        raise PolicyInvalid(f"runtime_policy.{getattr(exc, 'detail', exc)}") from None


def _version(doc: Mapping[str, Any]) -> int | None:
    """``version``: a positive integer (a signed policy's rollback counter), or absent."""
    version = doc.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or version < 1):
        raise PolicyInvalid("version: a positive integer")
    return version


def _interval(doc: Mapping[str, Any]) -> float | None:
    interval = doc.get("interval_seconds")
    if interval is not None and (not isinstance(interval, int | float) or interval <= 0):
        raise PolicyInvalid("interval_seconds: a positive number")
    return float(interval) if interval is not None else None


@dataclass(frozen=True)
class AppraisalPolicy:
    name: str
    selection: Mapping[str, frozenset[int]]
    pcrs: Mapping[str, Mapping[int, frozenset[bytes]]] = field(default_factory=dict)
    eventlog: EventLogReference | None = None
    require_event_log: bool = False
    interval_seconds: float | None = None
    # Leaving untrusted/stale needs an operator's `umec nodes ack` as well as a passing quote.
    require_ack: bool = False
    # Signed policies (attest/core/policy_envelope.py): applied only above the stored version.
    version: int | None = None
    # IMA runtime policy (Keylime's format): the node must send its IMA list with each quote.
    runtime_policy: RuntimePolicy | None = None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> AppraisalPolicy:
        """Checked in this order: the document's shape and name, selection, pcrs, eventlog,
        interval_seconds, require_ack; the first failure is raised."""
        name = _name(doc)
        selection = _selection(doc)
        pcrs = _pcrs(doc, selection)
        eventlog = _eventlog(doc)
        interval = _interval(doc)
        return cls(name=name, selection=selection, pcrs=pcrs, eventlog=eventlog,
                   require_event_log=bool(doc.get("require_event_log", False)),
                   interval_seconds=interval, require_ack=_flag(doc, "require_ack"),
                   version=_version(doc), runtime_policy=_runtime_policy(doc, selection))

    @classmethod
    def from_yaml(cls, text: str) -> AppraisalPolicy:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyInvalid(f"not YAML: {exc}") from None
        return cls.from_dict(doc)

    def selection_lists(self) -> dict[str, list[int]]:
        return {bank: sorted(pcrs) for bank, pcrs in self.selection.items()}


def check_pcr_values(policy: AppraisalPolicy,
                     pcr_values: Mapping[str, Mapping[int, bytes]]) -> list[AttestationError]:
    """Every PCR the policy pins must have been quoted with one of its allowed values."""
    failures: list[AttestationError] = []
    for bank, expected in policy.pcrs.items():
        for index, allowed in sorted(expected.items()):
            got = pcr_values.get(bank, {}).get(index)
            if got is None:
                failures.append(PcrValueNotAllowed(f"{bank}:{index} was not quoted"))
            elif got not in allowed:
                failures.append(PcrValueNotAllowed(
                    f"{bank}:{index} = {got.hex()} is not one of "
                    f"{sorted(a.hex() for a in allowed)}"))
    return failures


DEFAULT_POLICY = AppraisalPolicy(
    name="default", selection={"sha256": frozenset({0, 1, 2, 3, 4, 5, 6, 7, 10, 14})})
