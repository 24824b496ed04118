"""Appraise one round of evidence: the verifier's decision, as a pure function.

Steps, in order (each named by the error class it raises):

1. Quote (``attest.core.quote.appraise_quote``): structure, magic and type, the signature under
   the node's activated AK over the issued nonce. If any of these fail, appraisal *raises*:
   evidence the node's AK did not sign for this challenge is not the node's evidence, so it
   gets no verdict at all and the caller refuses it without touching the node (anyone can send
   a forgery or replay another node's quote). Otherwise every further quote failure is
   collected: PCR digest against the supplied PCR values, selection at least the requested
   one, resetCount / restartCount / clock progress against what the node showed last time.
2. Policy PCR values: each PCR the node-class policy pins has one of its allowed values.
3. Boot event log, when sent (or required by policy): it must parse, replay to the quoted PCRs
   and satisfy the policy's reference digests. Only (PCR, digest) pairs are authenticated by the
   quote, so nothing else in the log is used for a decision.
4. IMA list, when the policy has a runtime policy (:mod:`attest.core.ima.appraise`): the
   entries from ``ima_offset`` replay to the quoted PCR 10 from the node's stored running value,
   and each accepted entry satisfies the runtime policy. An offset the verifier cannot continue
   from raises ``ImaOffsetMismatch`` (the agent re-sends from the offset it names).

The verdict lists every failed check; ``trusted`` is true only when that list is empty. Only
step 1 raises (``AttestationError``); steps 2 and 3 are collected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attest.core.errors import AttestationError
from attest.core.eventlog import appraise_event_log, parse_event_log
from attest.core.ima.appraise import ImaState, appraise_ima
from attest.core.policy import AppraisalPolicy, EventLogRequired, check_pcr_values
from attest.core.quote import appraise_quote
from attest.core.tpm_structs import ClockInfo, TpmPublic


@dataclass(frozen=True)
class Evidence:
    attest: bytes
    signature: bytes
    pcr_values: Mapping[str, Mapping[int, bytes]]
    event_log: bytes | None = None
    ima_log: bytes | None = None
    ima_offset: int = 0


@dataclass(frozen=True)
class Verdict:
    trusted: bool
    failures: tuple[AttestationError, ...] = ()
    clock: ClockInfo | None = None
    rebooted: bool = False
    quoted: Mapping[str, frozenset[int]] = field(default_factory=dict)
    # The IMA state to keep if this verdict is trusted (None: no runtime policy or no replay).
    ima: ImaState | None = None

    @property
    def reason(self) -> str:
        if self.trusted:
            return "all checks passed"
        return "; ".join(f"{f.check}: {f.detail}" for f in self.failures)

    def as_dict(self) -> dict[str, Any]:
        return {
            "trusted": self.trusted,
            "failed_checks": [f.as_dict() for f in self.failures],
            "rebooted": self.rebooted,
            "reset_count": self.clock.reset_count if self.clock else None,
            "restart_count": self.clock.restart_count if self.clock else None,
        }


def appraise_evidence(
    ak: TpmPublic,
    evidence: Evidence,
    *,
    expected_nonce: bytes,
    policy: AppraisalPolicy,
    requested: Mapping[str, frozenset[int]],
    previous_clock: ClockInfo | None,
    previous_ima: ImaState | None = None,
) -> Verdict:
    # Step 1: raises for evidence that is not authenticated by the AK over this nonce.
    quote = appraise_quote(ak, evidence.attest, evidence.signature,
                           expected_nonce=expected_nonce,
                           pcr_values={b: dict(v) for b, v in evidence.pcr_values.items()},
                           requested=dict(requested), previous_clock=previous_clock)
    failures: list[AttestationError] = list(quote.failures)

    failures.extend(check_pcr_values(policy, evidence.pcr_values))

    if evidence.event_log is not None:
        try:
            log = parse_event_log(evidence.event_log)
        except AttestationError as exc:
            failures.append(exc)
        else:
            failures.extend(appraise_event_log(log, evidence.pcr_values, policy.eventlog))
    elif policy.require_event_log:
        failures.append(EventLogRequired("no event log was sent with the quote"))

    clock = quote.attest.clock_info
    ima = None
    if policy.runtime_policy is not None:
        outcome = appraise_ima(policy.runtime_policy, evidence.ima_log, evidence.ima_offset,
                               evidence.pcr_values, clock, previous_ima)
        failures.extend(outcome.failures)
        ima = outcome.state
    return Verdict(trusted=not failures, failures=tuple(failures), clock=clock,
                   rebooted=quote.rebooted,
                   quoted=quote.attest.quote.pcr_select if quote.attest.quote else {}, ima=ima)
