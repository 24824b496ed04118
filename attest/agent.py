"""Node agent: enrol once, activate, then attest every interval (``umec agent``).

Round: challenge → (first round after boot: extend the application PCR with the measured files)
→ quote over the nonce and the policy's PCR selection → evidence (+ boot event log) → verdict.
The verdict carries the node's next challenge (``next_challenge``), so a round is one request
while that is held: the agent keeps it in memory only, and uses it when at least
:data:`HELD_CHALLENGE_MARGIN_SECONDS` of its lifetime are left, counted on its own monotonic
clock from when it arrived (a node's wall clock may be off). A held challenge the server calls
void (another round, the deadline sweep or a clock step spent it) costs nothing: the same
round asks for a fresh challenge and quotes again.
Errors back off exponentially with full jitter so a fleet that lost the server does not return
in lockstep. The TPM is opened per round and closed (with every transient handle flushed) after
it, so an agent or swtpm restart never leaves slots behind.

A TPM in dictionary-attack lockout (:class:`TpmLockedOut`) is not retried at that cadence: the
round logs one error naming the lockout and how to clear it, and the next round waits at least
the time the TPM itself reports until it accepts an authorisation again. An AK created before
AKs carried ``noDA`` is kept (the server's EK↔AK binding cannot change under a node) and named
in one warning per process, with how to replace it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from attest import join_agent
from attest.core.ima.parse import entry_offsets
from attest.tpm.device import AkHandle, Tpm, TpmLockedOut

log = logging.getLogger("umec.agent")


# Answers that say "the server cannot serve you right now", not "you are wrong".
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})


# Refusals that void the challenge, not the node: a concurrent round or the server's clock
# step spent or voided it, it aged, or another replica's key did not know it. A new challenge
# is the remedy, within the interval (a back-off of up to two intervals would make it stale).
VOID_CHALLENGE_CHECKS = frozenset({"nonce.replayed", "nonce.expired", "nonce.clock_future",
                                   "nonce.unknown", "evidence.concurrent"})


class AgentError(Exception):
    """An attestation round could not be completed; ``check`` names the server's failed check."""

    def __init__(self, message: str, check: str = "agent", hint: str = "",
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.check, self.hint = check, hint
        self.status, self.retry_after = status, retry_after

    @property
    def transient(self) -> bool:
        return self.status in TRANSIENT_STATUSES or self.check in VOID_CHALLENGE_CHECKS


# A held challenge is used only while this much of its lifetime is left: a quote and the
# evidence's trip must fit in it (a Pi's TPM quotes in about a second).
HELD_CHALLENGE_MARGIN_SECONDS = 10.0
# A TPM takes 16 to 64 bytes of qualifying data for a quote (the server issues 32).
MIN_NONCE_BYTES, MAX_NONCE_BYTES = 16, 64


@dataclass(frozen=True)
class NodeChallenge:
    """A challenge to quote over: its nonce, the PCR selection, and until when (this process's
    ``time.monotonic()``) it may still be used."""

    nonce: bytes
    selection: dict[str, list[int]]
    usable_until: float


def _is_selection(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(bank, str) and isinstance(pcrs, list)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in pcrs)
        for bank, pcrs in value.items())


def parse_challenge(raw: object, received: float) -> NodeChallenge | None:
    """The challenge in a server's answer (``nonce``, ``selection``, ``expires_in``), received
    at ``received`` (monotonic); None when it is not one. Without a finite ``expires_in`` (a
    server from before it) it is for immediate use only: never held."""
    if not isinstance(raw, dict) or not isinstance(raw.get("nonce"), str) \
            or not _is_selection(raw.get("selection")):
        return None
    try:
        nonce = base64.b64decode(raw["nonce"], validate=True)
    except (binascii.Error, ValueError):
        return None
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_NONCE_BYTES:
        return None
    expires_in = raw.get("expires_in")
    lifetime = 0.0
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        with contextlib.suppress(OverflowError):  # an integer beyond any float
            lifetime = float(expires_in) if math.isfinite(expires_in) else 0.0
    return NodeChallenge(nonce=nonce, selection=raw["selection"],
                         usable_until=received + lifetime - HELD_CHALLENGE_MARGIN_SECONDS)


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return max(0.0, float(resp.headers["retry-after"]))
    except (KeyError, ValueError):
        return None


@dataclass
class AgentConfig:
    node_name: str
    tcti: str
    state_dir: Path
    ak_kind: str = "ecc"
    ek_kind: str = "rsa"
    node_class: str | None = None
    interval_seconds: float = 30.0
    max_backoff_seconds: float = 300.0
    event_log_path: Path | None = None
    # IMA (issue 13): /sys/kernel/security/ima/binary_runtime_measurements (or the ASCII list);
    # sent incrementally from the offset the verifier accepted.
    ima_log_path: Path | None = None
    measure_files: list[Path] = field(default_factory=list)
    application_pcr: int = 14
    # k3s join (issue 13, attest.join_agent): after a trusted verdict, fetch the join token and
    # write it here (*.conf: systemd drop-in with K3S_TOKEN; *.yaml: k3s config `token:`).
    join_token_path: Path | None = None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _problem(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _raise_for_problem(resp: httpx.Response, step: str) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code >= 400:
        raise AgentError(f"{step}: HTTP {resp.status_code}: {body.get('detail', resp.text[:200])}",
                         check=str(body.get("check", step)), hint=str(body.get("hint", "")),
                         status=resp.status_code, retry_after=_retry_after(resp))
    return body if isinstance(body, dict) else {}


class Agent:
    def __init__(self, config: AgentConfig, client: httpx.Client,
                 open_tpm: Callable[[], Tpm] | None = None) -> None:
        self.config = config
        self.client = client
        self.open_tpm = open_tpm or (lambda: Tpm(config.tcti, ek_kind=config.ek_kind))
        self.base = f"/attest/v1/nodes/{config.node_name}"
        self.marker = config.state_dir / "enrolled.json"
        self._warned_da = False
        self.last_nonce: bytes | None = None  # of the latest evidence sent (the join needs it)
        self.held_challenge: NodeChallenge | None = None  # the latest verdict's next challenge
        self.ima_offset = 0  # IMA entries the verifier accepted: sent from here next round
        self.joined = False

    # -- enrolment -------------------------------------------------------------------------

    def load_ak(self, tpm: Tpm) -> AkHandle:
        ak = tpm.load_or_create_ak(self.config.state_dir, self.config.ak_kind)
        if not ak.no_da and not self._warned_da:
            self._warned_da = True
            state = self.config.state_dir
            log.warning(
                "this node's AK was created without noDA: every power-off without TPM2_Shutdown "
                "after it was used counts toward the TPM's dictionary-attack lockout, and a "
                "locked-out TPM cannot quote. Replace it: stop the agent, run `umec nodes remove "
                f"{self.config.node_name}` on the server, delete {state}/ak-"
                f"{self.config.ak_kind}.priv, {state}/ak-{self.config.ak_kind}.pub and "
                f"{state}/enrolled.json, then start the agent (it enrols a new noDA AK)",
                extra={"node": self.config.node_name, "check": "tpm.ak_no_da"})
        return ak

    def enroll(self, tpm: Tpm) -> None:
        ak = self.load_ak(tpm)
        cert = tpm.ek_certificate(self.config.ek_kind)
        ek_public = tpm.ek_public(self.config.ek_kind)
        body = {"name": self.config.node_name, "ek_public": _b64(ek_public),
                "ak_public": _b64(ak.public), "ek_certificate": _b64(cert) if cert else None,
                "node_class": self.config.node_class}
        challenge = _raise_for_problem(self.client.post("/attest/v1/nodes", json=body), "enroll")
        secret = tpm.activate_credential(base64.b64decode(challenge["credential_blob"]),
                                         base64.b64decode(challenge["encrypted_secret"]))
        _raise_for_problem(self.client.post(f"{self.base}/activate",
                                            json={"enrollment_id": challenge["enrollment_id"],
                                                  "secret": _b64(secret)}), "activate")
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(json.dumps({"node": self.config.node_name,
                                           "ak_name": ak.name.hex()}))
        log.info("enrolled and activated", extra={"node": self.config.node_name})

    # -- measurement ----------------------------------------------------------------------

    def measure(self, tpm: Tpm) -> None:
        """Extend the application PCR with the configured files, once per TPM boot.

        After extending we remember the PCR value; if the PCR still holds it on the next start
        the measurements are already in (an agent restart, not a reboot) and are not repeated.
        """
        if not self.config.measure_files:
            return
        pcr = self.config.application_pcr
        done = self.config.state_dir / "measured.json"
        current = tpm.pcr_read({"sha256": [pcr]})["sha256"][pcr]
        if done.exists() and json.loads(done.read_text()).get("pcr_value") == current.hex():
            return
        for path in self.config.measure_files:
            tpm.pcr_extend(pcr, {"sha256": hashlib.sha256(path.read_bytes()).digest()})
        value = tpm.pcr_read({"sha256": [pcr]})["sha256"][pcr]
        done.write_text(json.dumps({"pcr_value": value.hex()}))

    # -- attestation ------------------------------------------------------------------------

    def attest_once(self) -> dict[str, Any]:
        """One round: over the held challenge if it is still usable (one request), else, or
        when the server calls it void, over a fresh one."""
        held, self.held_challenge = self.held_challenge, None
        if held is not None and time.monotonic() < held.usable_until:
            try:
                return self._round(held)
            except AgentError as exc:
                # Void, or the server no longer knows the node (removed, or a restored
                # database): the fresh round asks again, and enrols if it must.
                if exc.check not in VOID_CHALLENGE_CHECKS and exc.status != 404:
                    raise
                log.info("the held challenge was void; asking for a fresh one",
                         extra={"node": self.config.node_name, "check": exc.check})
        return self._round(None)

    def _round(self, held: NodeChallenge | None) -> dict[str, Any]:
        with self.open_tpm() as tpm:
            if not self.marker.exists():
                self.enroll(tpm)
            else:
                self.load_ak(tpm)
            self.measure(tpm)
            challenge = held or self._fresh_challenge(tpm)
            quote = tpm.quote(challenge.nonce, challenge.selection)
            event_log = None
            if self.config.event_log_path is not None:
                event_log = tpm.read_event_log(self.config.event_log_path)
        body = {"nonce": _b64(challenge.nonce), "quote": _b64(quote.attest),
                "signature": _b64(quote.signature),
                "pcrs": {b: {str(i): v.hex() for i, v in vals.items()}
                         for b, vals in quote.pcr_values.items()},
                "event_log": _b64(event_log) if event_log else None}
        self.last_nonce = challenge.nonce
        verdict = self._send_evidence(body)
        self.held_challenge = parse_challenge(verdict.pop("next_challenge", None),
                                              time.monotonic())
        return verdict

    def _fresh_challenge(self, tpm: Tpm) -> NodeChallenge:
        resp = self.client.post(f"{self.base}/challenge")
        if resp.status_code in (404, 409):  # server lost us or we never activated: enrol
            self.enroll(tpm)
            resp = self.client.post(f"{self.base}/challenge")
        challenge = parse_challenge(_raise_for_problem(resp, "challenge"), time.monotonic())
        if challenge is None:
            raise AgentError("challenge: the server's answer is not a challenge (a base64 "
                             "nonce of 16-64 bytes and a PCR selection)",
                             check="agent.challenge_malformed",
                             hint="Check that --server names a µMEC server of this version.")
        return challenge

    def _ima_chunk(self) -> dict[str, Any]:
        """The IMA entries from ``ima_offset`` (read after the quote, so never fewer than it
        covers); the full list when the offset is past what the file holds (a reboot)."""
        if self.config.ima_log_path is None:
            return {}
        raw = self.config.ima_log_path.read_bytes()
        offsets = entry_offsets(raw)
        if self.ima_offset >= len(offsets):
            self.ima_offset = 0
        return {"ima_log": _b64(raw[offsets[self.ima_offset]:offsets[-1]]),
                "ima_offset": self.ima_offset}

    def _send_evidence(self, body: dict[str, Any]) -> dict[str, Any]:
        """Post the evidence with the IMA increment; when the verifier asks for another offset
        (``ima.offset``: a reboot or a mismatch), send again from it once (the nonce is unspent
        after that refusal)."""
        for attempt in range(2):
            resp = self.client.post(f"{self.base}/evidence", json={**body, **self._ima_chunk()})
            if attempt == 0 and resp.status_code == 409 and _problem(resp).get("check") == \
                    "ima.offset":
                self.ima_offset = int(_problem(resp).get("ima_offset", 0))
                continue
            break
        verdict = _raise_for_problem(resp, "evidence")
        if isinstance(verdict.get("ima_offset"), int):
            self.ima_offset = verdict["ima_offset"]
        return verdict

    # -- k3s join ---------------------------------------------------------------------------

    def join_once(self, verdict: dict[str, Any]) -> bool:
        """After a verdict: if trusted, fetch the k3s token, open it with the TPM and write it
        (True); if not, log every failed check with its hint and write nothing (False)."""
        path, node = self.config.join_token_path, self.config.node_name
        if path is None or self.last_nonce is None:
            return False
        if not verdict.get("trusted"):
            for failure in verdict.get("failed_checks") or []:
                log.error("no k3s join token: a boot measurement check failed", extra={
                    "node": node, **({"check": failure} if isinstance(failure, str)
                                     else dict(failure))})
            return False
        grant = _raise_for_problem(self.client.post(
            f"{self.base}/join", json={"nonce": _b64(self.last_nonce)}), "join")
        with self.open_tpm() as tpm:
            self.load_ak(tpm)
            token = join_agent.open_grant(tpm, node, grant)
        join_agent.write_token(path, token)
        self.joined = True
        log.info("k3s join token written", extra={"node": node, "path": str(path),
                                                  "token_id": grant.get("token_id"),
                                                  "expires_at": grant.get("expires_at")})
        return True

    def run(self, stop: threading.Event, rounds: int | None = None) -> None:
        failures, done = 0, 0
        while not stop.is_set() and (rounds is None or done < rounds):
            try:
                verdict = self.attest_once()
                failures = 0
                if not self.joined:
                    self.join_once(verdict)
                log.info("attested", extra={"node": self.config.node_name,
                                            "state": verdict.get("state"),
                                            "reason": verdict.get("reason")})
                delay = self.config.interval_seconds
            except Exception as exc:  # e.g. a TPM error: back off, never die silently
                failures += 1
                delay = self._failure_delay(exc, failures)
            done += 1
            stop.wait(delay)

    def _failure_delay(self, exc: Exception, failures: int) -> float:
        """Log a failed round once and return how long to wait before the next one."""
        node = self.config.node_name
        if isinstance(exc, TpmLockedOut):
            # Quoting again before the TPM recovers cannot succeed: wait its own interval.
            wait = exc.retry_after
            delay = (max(self.config.interval_seconds, float(wait)) if wait
                     else self.config.max_backoff_seconds)
            log.error("the TPM is in dictionary-attack lockout; not retrying before it recovers",
                      extra={"node": node, "check": exc.check, "error": str(exc),
                             "hint": exc.hint, "recovers_in": wait, "retry_in": delay})
            return delay
        if isinstance(exc, httpx.TransportError) or (isinstance(exc, AgentError)
                                                     and exc.transient):
            # The server is restarting, overloaded or without its database: come back within
            # one interval (its Retry-After if sooner), or the node goes stale for an outage
            # that was not its own. Jitter keeps a site's nodes from returning in lock-step.
            hinted = exc.retry_after if isinstance(exc, AgentError) else None
            interval = self.config.interval_seconds
            delay = (max(0.5, min(interval, hinted)) if hinted is not None
                     else random.uniform(0.5, interval))
            log.warning("attestation round failed; the server is unavailable",
                        extra={"node": node, "error": str(exc), "retry_in": round(delay, 2)})
            return delay
        if isinstance(exc, AgentError | httpx.HTTPError | OSError):
            # Full jitter: uniform in [0.5, min(cap, interval * 2^failures)].
            cap = min(self.config.max_backoff_seconds,
                      self.config.interval_seconds * 2 ** min(failures, 10))
            delay = random.uniform(0.5, cap)
            log.warning("attestation round failed",
                        extra={"node": node, "error": str(exc), "retry_in": round(delay, 2)})
            return delay
        delay = min(self.config.max_backoff_seconds, 2.0 ** failures)
        log.warning("attestation round failed", extra={
            "node": node, "error": f"{type(exc).__name__}: {exc}", "retry_in": delay})
        return delay
