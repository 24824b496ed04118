"""Attacks found reviewing ce5e4c6 (issue 9, points 1-5), over HTTP against a real server on
SQLite and PostgreSQL.

- A genuine quote over an *older* challenge, answered after the node's newer evidence was
  recorded (held back by someone on the path, or pre-computed on the node before it was
  tampered with), must not overturn that newer verdict, nor move the clock baseline back.
- A verdict is recorded against the node as it is when it is recorded, not as it was read
  before appraisal (a sweep or an operator in between).
- Pending enrolments are public-material rows: each is small.
- Per-source limits key an IPv6 client by its /64 (one subscriber holds a whole /64).
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select, update

from attest.core import appraisal
from attest.core.appraisal import Evidence
from attest.core.errors import AttestationError
from attest.service import api, verifier
from attest.service.context import AttestConfig
from attest.service.models import EnrollmentRow, NodeRow
from attest.service.policies import set_policy
from tests.support.attack_env import Env, checks, trusted
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode, b64


@pytest.fixture
def during_appraisal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Callable[[], None]],
                                                                           None]]:
    """Run an action once, between submit_evidence's read (step 1) and its write (step 3)."""
    pending: list[Callable[[], None]] = []
    real = appraisal.appraise_evidence

    def appraise(*args: Any, **kwargs: Any) -> Any:
        verdict = real(*args, **kwargs)
        if pending:
            pending.pop()()
        return verdict

    monkeypatch.setattr(verifier, "appraise_evidence", appraise)
    yield pending.append


def _clock(env: Env, name: str) -> int | None:
    with env.server.attest.sessions() as s:
        row = s.get(NodeRow, name)
        return None if row is None else row.clock


def test_older_challenge_answered_after_a_newer_verdict_is_refused(env: Env) -> None:
    """The node quotes challenge 1 while healthy; that evidence is held back. It is tampered
    with, and its evidence over challenge 2 is recorded: untrusted. Releasing the held-back
    quote (genuine, signed, over a nonce issued to the node and never spent) must not make it
    trusted again: once a newer challenge of a node is answered, older ones are void."""
    node = trusted(env)
    held_ch = node.challenge()
    held = node.quote(held_ch)
    node.tpm.extend(14, b"tampered after the first quote")
    ch = node.challenge()
    assert node.send(ch["nonce_bytes"], *node.quote(ch)).json()["state"] == "untrusted"
    before = env.snapshot("node-a")
    with env.anonymous() as on_path:
        resp = SimulatedNode("node-a", on_path).send(held_ch["nonce_bytes"], *held)
    assert resp.status_code == 403 and checks(resp) == ["nonce.replayed"]
    assert env.snapshot("node-a") == before


def test_concurrent_evidence_never_moves_the_clock_baseline_back(
        env: Env, during_appraisal: Callable[[Callable[[], None]], None]) -> None:
    """Two quotes of the node over two challenges: while the older one is being appraised, the
    newer one (a later TPM clock) is recorded. The older must not then overwrite the baseline
    with its earlier clock (it was appraised against the baseline before the newer one)."""
    node = trusted(env)
    ch1 = node.challenge()
    e1 = node.quote(ch1)
    ch2 = node.challenge()
    e2 = node.quote(ch2)
    ctx = env.server.attest

    def newer_lands_first() -> None:
        ev = Evidence(attest=e2[0], signature=e2[1], pcr_values=e2[2])
        assert verifier.submit_evidence(ctx, "node-a", ch2["nonce_bytes"], ev).verdict.trusted

    during_appraisal(newer_lands_first)
    resp = node.send(ch1["nonce_bytes"], *e1)
    newer_clock = _clock(env, "node-a")
    assert resp.status_code == 403 and checks(resp) == ["nonce.replayed"]
    assert newer_clock is not None and newer_clock == _clock(env, "node-a")
    assert node.attest()["state"] == "trusted"


def test_state_change_between_read_and_write_is_respected_by_require_ack(
        env: Env, during_appraisal: Callable[[Callable[[], None]], None]) -> None:
    """Under a require_ack policy a stale node needs an operator's ack before it is trusted
    again. If the deadline sweep marks the node stale while its (late) evidence is being
    appraised, that evidence must not make it trusted without the ack."""
    ctx = env.server.attest
    node = trusted(env)
    set_policy(ctx.sessions, k3s_policy("00" * 32, require_ack=True))
    ctx._policy_cache.clear()
    ch = node.challenge()

    def sweep_marks_it_stale() -> None:
        with ctx.sessions.begin() as s:
            s.execute(update(NodeRow).where(NodeRow.name == "node-a").values(
                state="stale", state_changed_at=ctx.now()))

    during_appraisal(sweep_marks_it_stale)
    evidence = node.quote(ch)
    resp = node.send(ch["nonce_bytes"], *evidence)
    assert resp.status_code == 409 and checks(resp) == ["evidence.concurrent"]
    assert env.client.get("/attest/v1/nodes/node-a").json()["state"] == "stale"
    # Nothing was recorded, the nonce is unspent: sent again, the evidence meets the rule.
    body = node.send(ch["nonce_bytes"], *evidence).json()
    assert body["state"] == "stale" and body["awaiting_ack"] is True
    assert env.client.get("/attest/v1/nodes/node-a").json()["state"] == "stale"


def test_enrolment_with_an_oversized_ek_certificate_is_refused(env: Env) -> None:
    """With an allowlisted (public) EK, the certificate is not verified but was stored with each
    pending enrolment: 700 KB of junk per request, 20 requests/s per source, for the
    activation TTL. An EK certificate is a few KiB; anything larger is refused unparsed."""
    victim = env.node("node-a")
    with env.anonymous() as attacker:
        resp = attacker.post("/attest/v1/nodes", json={
            "name": "node-a", "ek_public": b64(victim.tpm.ek_public.marshal_tpm2b()),
            "ak_public": b64(victim.tpm.ak_public.marshal_tpm2b()),
            "ek_certificate": b64(os.urandom(700_000))})
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("application/problem+json")
    with env.server.attest.sessions() as s:
        assert s.scalar(select(func.count()).select_from(EnrollmentRow)) == 0
    victim.enroll_and_activate()  # the real node is not affected


def test_realistic_ek_certificate_still_accepted(env: Env) -> None:
    victim = env.node("node-a")
    resp = env.client.post("/attest/v1/nodes", json={
        "name": "node-a", "ek_public": b64(victim.tpm.ek_public.marshal_tpm2b()),
        "ak_public": b64(victim.tpm.ak_public.marshal_tpm2b()),
        "ek_certificate": base64.b64encode(os.urandom(4096)).decode()})
    assert resp.status_code == 200  # allowlisted EK: the certificate is optional and unread


def test_ipv6_sources_share_a_bucket_per_64() -> None:
    """Every IPv6 subscriber gets at least a /64: keyed per address, one attacker is 2**64
    sources and no per-source limit holds (and the limiter's table fills and is forgiven)."""
    limits = api.Limits.__new__(api.Limits)
    api.Limits.__init__(limits, _ctx_with(AttestConfig(rate_per_source=0.001,
                                                       burst_per_source=3)))
    for i in range(3):
        limits.admit(f"2001:db8:1:2::{i + 1:x}")
    with pytest.raises(api.RateLimited):
        limits.admit("2001:db8:1:2:ffff:ffff:ffff:ffff")
    limits.admit("2001:db8:1:3::1")  # another /64 is another source
    limits.admit("192.0.2.1")  # IPv4 stays per address
    limits.admit("192.0.2.2")


def _ctx_with(config: AttestConfig) -> Any:
    class _Ctx:
        pass
    ctx = _Ctx()
    ctx.config = config  # type: ignore[attr-defined]
    return ctx


def test_concurrent_evidence_of_one_node_neither_deadlocks_nor_errs(env: Env) -> None:
    """Replicas on PostgreSQL appraise evidence of one node concurrently (here: threads, as
    each request would be on its own replica). Voiding older nonces locks several nonce rows:
    in any order but one global order, two rounds deadlock and one of them is a 500."""
    node = trusted(env)
    ctx = env.server.attest
    outcomes: list[str] = []

    def submit(nonce: bytes, quote: tuple[bytes, bytes, dict[str, dict[int, bytes]]],
               start: threading.Barrier) -> None:
        start.wait()
        try:
            verifier.submit_evidence(ctx, "node-a", nonce, Evidence(*quote))
            outcomes.append("recorded")
        except AttestationError as exc:
            outcomes.append(exc.check)
        except Exception as exc:  # what the server would answer 500
            outcomes.append(type(exc).__name__)

    for _ in range(25):
        challenges = [verifier.issue_challenge(ctx, "node-a") for _ in range(5)]
        quotes = [node.tpm.quote(c.nonce, {b: frozenset(v) for b, v in c.selection.items()})
                  for c in challenges]
        start = threading.Barrier(4)
        threads = [threading.Thread(target=submit, args=(challenges[i].nonce, quotes[i], start))
                   for i in range(1, 5)]  # challenge 0 stays outstanding (someone else's)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert set(outcomes) <= {"recorded", "nonce.replayed"}, outcomes
    assert node.attest()["state"] == "trusted"
