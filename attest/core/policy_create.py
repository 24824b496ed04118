"""A node-class policy made from a known-good node (``umec policy create --from-node``), as
``keylime-policy create`` makes one from a machine (pure: values in, YAML out).

The verifier keeps, with each *trusted* verdict, the PCR values that quote authenticated
(:func:`quoted_pcrs`, in ``attest_nodes.last_verdict["pcrs"]``): only PCRs the quote covered,
never values the agent sent beyond it. :func:`policy_from_pcrs` turns them into a policy that
pins every one of them to exactly that value. The result is a draft for a human to review
(drop PCRs that change on every boot, add allowed alternatives) and then sign
(``umec policy sign``): it is never applied by itself.

Two optional inputs, files the operator copies from the same node (as ``keylime-policy create``
takes them), are *authenticated by the stored quote* before anything is taken from them, so a
log from another machine or another boot is refused (:class:`ReferenceLogRejected`):

* the boot event log (``binary_bios_measurements``) must replay to the stored value of every
  quoted PCR it extends (:func:`eventlog_section`); the draft's ``eventlog`` section then allows,
  per such PCR, exactly the digests this boot extended, and ``require_event_log`` is set;
* the IMA list (``binary_runtime_measurements`` or the ASCII one, which may have grown since the
  quote) must have a prefix that replays to the stored PCR 10 (:func:`runtime_policy_section`);
  the draft's ``runtime_policy`` allows each measured path with the digests that prefix shows,
  key measurements on their keyring and other ``ima-buf`` entries by name. Violations are
  listed nowhere (the content is unknown), so a path that had one is not allowed until the
  reviewer adds it. PCR 10 stays selected but is not pinned to a value: it grows with every
  file measured, and the runtime policy appraises what extended it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from attest.core.errors import AttestationError
from attest.core.eventlog import EV_NO_ACTION, appraise_event_log, parse_event_log
from attest.core.eventlog.replay import replay_event_log
from attest.core.ima.parse import parse_list
from attest.core.ima.policy import keylime_policy
from attest.core.ima.replay import initial_pcr, replay_to_quote
from attest.core.policy import DIGEST_SIZES, AppraisalPolicy, PolicyInvalid

# Keylime's names for key measurements (ima-buf entries whose name is a keyring).
_KEYRINGS = frozenset({".ima", ".evm", ".builtin_trusted_keys", ".platform", ".machine",
                       ".secondary_trusted_keys", ".blacklist"})


class ReferenceLogRejected(PolicyInvalid):
    """A log given to ``--from-node`` is not authenticated by the node's stored quote."""


def quoted_pcrs(pcr_values: Mapping[str, Mapping[int, bytes]],
                quoted: Mapping[str, frozenset[int]]) -> dict[str, dict[str, str]]:
    """bank -> {index: hex} for the PCRs the quote covered (JSON-ready: string keys)."""
    return {bank: {str(i): pcr_values[bank][i].hex() for i in sorted(indices)
                   if i in pcr_values.get(bank, {})}
            for bank, indices in sorted(quoted.items()) if bank in pcr_values}


def _checked(stored: object) -> dict[str, dict[int, str]]:
    """The stored values, re-validated (they come from a database row)."""
    if not isinstance(stored, Mapping) or not stored:
        raise PolicyInvalid("no quoted PCR values are stored for this node")
    pcrs: dict[str, dict[int, str]] = {}
    for bank, values in stored.items():
        if bank not in DIGEST_SIZES or not isinstance(values, Mapping) or not values:
            raise PolicyInvalid(f"stored PCR bank {bank!r} is unusable")
        try:
            pcrs[bank] = {int(i): str(v) for i, v in values.items()}
        except (TypeError, ValueError):
            raise PolicyInvalid(f"stored PCR bank {bank!r} has a non-integer index") from None
    return pcrs


def _quoted_bytes(pcrs: Mapping[str, Mapping[int, str]]) -> dict[str, dict[int, bytes]]:
    try:
        return {bank: {i: bytes.fromhex(v) for i, v in values.items()}
                for bank, values in pcrs.items()}
    except ValueError:
        raise PolicyInvalid("a stored PCR value is not hex") from None


def eventlog_section(raw_log: bytes, stored: object) -> dict[str, Any]:
    """The ``eventlog`` section from the node's boot event log, which must replay to every
    stored quoted PCR it extends (in the stored bank it covers best, sha256 first)."""
    quoted = _quoted_bytes(_checked(stored))
    try:
        log = parse_event_log(raw_log)
        replayed = replay_event_log(log)
    except AttestationError as exc:
        raise ReferenceLogRejected(f"event log: {exc.check}: {exc.detail}") from None
    mismatches = appraise_event_log(log, quoted)
    if mismatches:
        raise ReferenceLogRejected(
            f"event log: {mismatches[0].detail}: it is not the log of the boot the node's "
            "last trusted quote measured")
    banks = [b for b in sorted(quoted, key=lambda b: (b != "sha256", b))
             if set(quoted[b]) & set(replayed.get(b, {}))]
    if not banks:
        raise ReferenceLogRejected("event log: it extends none of the quoted PCRs")
    bank = banks[0]
    covered = sorted(set(quoted[bank]) & set(replayed[bank]))
    allowed: dict[int, set[str]] = {i: set() for i in covered}
    for event in log.events:
        digest = event.digests.get(bank)
        if event.pcr in allowed and event.event_type != EV_NO_ACTION and digest is not None:
            allowed[event.pcr].add(digest.hex())
    return {"bank": bank, "pcrs": {i: {"allowed": sorted(allowed[i])} for i in covered}}


def runtime_policy_section(raw_list: bytes, stored: object) -> dict[str, Any]:
    """A Keylime runtime policy from the node's IMA list, whose first entries must replay to
    the stored quoted PCR 10 (the rest, measured after the quote, is left out)."""
    quoted = _quoted_bytes(_checked(stored))
    pcr10 = {bank: values[10] for bank, values in quoted.items() if 10 in values}
    if not pcr10:
        raise ReferenceLogRejected("IMA list: the node's quote did not cover PCR 10; add 10 "
                                   "to the class's selection first")
    try:
        entries = parse_list(raw_list)
        accepted = replay_to_quote(entries, initial_pcr(sorted(pcr10)), pcr10).accepted
    except AttestationError as exc:
        raise ReferenceLogRejected(f"IMA list: {exc.check}: {exc.detail}") from None
    digests: dict[str, set[str]] = {}
    keyrings: dict[str, set[str]] = {}
    buffers: dict[str, set[str]] = {}
    for entry in entries[:accepted]:
        if entry.violation:
            continue
        table = digests if entry.template != "ima-buf" else (
            keyrings if entry.path in _KEYRINGS else buffers)
        table.setdefault(entry.path, set()).add(entry.digest.hex())
    doc = keylime_policy(digests, keyrings=keyrings)
    doc["ima-buf"] = {name: sorted(values) for name, values in buffers.items()}
    return doc


def policy_from_pcrs(node_class: str, stored: object, *, version: int, description: str,
                     eventlog: Mapping[str, Any] | None = None,
                     runtime_policy: Mapping[str, Any] | None = None) -> str:
    """A policy YAML pinning every stored PCR to its value, with the optional sections made by
    :func:`eventlog_section` and :func:`runtime_policy_section`; checked by the policy
    parser."""
    pcrs = _checked(stored)
    doc: dict[str, Any] = {
        "name": node_class, "description": description,
        "selection": {bank: sorted(values) for bank, values in pcrs.items()},
        "pcrs": {bank: {i: [values[i]] for i in sorted(values)} for bank, values in pcrs.items()},
        "version": version}
    if eventlog is not None:
        doc["eventlog"] = dict(eventlog)
        doc["require_event_log"] = True
    if runtime_policy is not None:
        doc["runtime_policy"] = dict(runtime_policy)
        for values in doc["pcrs"].values():  # PCR 10 grows with every file measured: the
            values.pop(10, None)              # runtime policy appraises it, no value can
    text = yaml.safe_dump(doc, sort_keys=False, width=120)
    AppraisalPolicy.from_yaml(text)  # raises PolicyInvalid naming the bad key
    return text
