"""One request a round: every recorded verdict carries the node's next challenge, over HTTP
against a real server (SQLite and PostgreSQL).

The next challenge is an ordinary nonce (attest.service.verifier, "One request a round"): it
is accepted once, by its own node, within the same lifetime as a challenge asked for, and any
other recorded verdict of the node voids it. Refused evidence hands none out.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest

from attest.service import registrar, verifier
from tests.support.attack_env import Env, checks, shifted_clock, trusted
from tests.support.simagent import SimulatedNode


def _no_challenge_requests(node: SimulatedNode) -> None:
    def refuse() -> dict[str, Any]:
        pytest.fail("the round asked for a challenge although it held one")
    node.challenge = refuse  # type: ignore[method-assign]


def test_a_round_over_the_next_challenge_needs_no_challenge_request(env: Env) -> None:
    node = trusted(env)
    held = node.next_challenge
    assert held is not None and len(held["nonce_bytes"]) == 32
    assert held["selection"] == {"sha256": [0, 1, 2, 3, 7, 14]}
    assert 29.0 < held["expires_in"] <= 30.0  # the env's nonce lifetime, from its issue
    _no_challenge_requests(node)
    for _ in range(3):
        verdict = node.attest(use_next=True)
        assert verdict["state"] == "trusted" and verdict["failed_checks"] == []
        assert node.next_challenge is not None
        assert node.next_challenge["nonce_bytes"] != held["nonce_bytes"]
        held = node.next_challenge


def test_the_next_challenge_is_spent_once(env: Env) -> None:
    node = trusted(env)
    held = node.next_challenge
    assert held is not None
    evidence = node.quote(held)
    assert node.send(held["nonce_bytes"], *evidence).json()["state"] == "trusted"
    again = node.send(held["nonce_bytes"], *node.quote(held))
    assert again.status_code == 403 and checks(again) == ["nonce.replayed"]
    assert "next_challenge" not in again.json()


def test_any_other_verdict_voids_the_held_challenge(env: Env) -> None:
    node = trusted(env)
    held = node.next_challenge
    assert held is not None
    assert node.attest()["state"] == "trusted"  # a round over a fresh challenge meanwhile
    resp = node.send(held["nonce_bytes"], *node.quote(held))
    assert resp.status_code == 403 and checks(resp) == ["nonce.replayed"]
    # The newest verdict's next challenge is the one that counts.
    _no_challenge_requests(node)
    assert node.attest(use_next=True)["state"] == "trusted"


def test_the_deadline_sweep_voids_the_held_challenge(env: Env) -> None:
    node = trusted(env)
    held = node.next_challenge
    assert held is not None
    with shifted_clock(env, timedelta(hours=1)):
        assert len(verifier.mark_stale_nodes(env.server.attest)) == 1
    assert env.snapshot(node.name)["row"]["state"] == "stale"
    resp = node.send(held["nonce_bytes"], *node.quote(held))
    assert resp.status_code == 403 and checks(resp) == ["nonce.replayed"]


def test_the_next_challenge_expires_like_any_other(env: Env) -> None:
    node = trusted(env)
    held = node.next_challenge
    assert held is not None
    evidence = node.quote(held)
    with shifted_clock(env, timedelta(seconds=31)):
        resp = node.send(held["nonce_bytes"], *evidence)
    assert resp.status_code == 403 and checks(resp) == ["nonce.expired"]


def test_the_next_challenge_is_bound_to_its_node(env: Env) -> None:
    a, b = trusted(env, "node-a"), trusted(env, "node-b")
    held_b = b.next_challenge
    assert held_b is not None
    sel = {k: frozenset(v) for k, v in held_b["selection"].items()}
    resp = a.send(held_b["nonce_bytes"], *a.tpm.quote(held_b["nonce_bytes"], sel))
    assert resp.status_code == 403 and checks(resp) == ["nonce.unknown"]
    assert "next_challenge" not in resp.json()
    _no_challenge_requests(b)
    assert b.attest(use_next=True)["state"] == "trusted"  # node-b's is still usable


def test_refused_evidence_hands_out_no_challenge(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    attest, signature, pcrs = node.quote(ch)
    forged = signature[:-1] + bytes([signature[-1] ^ 1])
    resp = node.send(ch["nonce_bytes"], attest, forged, pcrs)
    assert resp.status_code == 403 and checks(resp) == ["quote.signature"]
    assert "next_challenge" not in resp.json()


def test_an_untrusted_verdict_carries_the_next_challenge_too(env: Env) -> None:
    node = trusted(env)
    node.tpm.extend(14, b"tampered")  # PCR 14 must stay all zeros
    verdict = node.attest(use_next=True)
    assert verdict["state"] == "untrusted" and checks_of(verdict) == ["policy.pcr_value"]
    assert node.next_challenge is not None
    nonce = base64.b64decode(verdict["next_challenge"]["nonce"])
    assert nonce == node.next_challenge["nonce_bytes"]
    _no_challenge_requests(node)
    assert node.attest(use_next=True)["state"] == "untrusted"  # spent over the held one


def checks_of(verdict: dict[str, Any]) -> list[str]:
    return [f["check"] for f in verdict["failed_checks"]]


def test_a_held_challenge_dies_with_its_node(env: Env) -> None:
    node = trusted(env)
    held = node.next_challenge
    assert held is not None
    registrar.remove(env.server.attest, node.name)
    gone = node.send(held["nonce_bytes"], *node.quote(held))
    assert gone.status_code == 404 and checks(gone) == ["node.unknown"]
    node.enroll_and_activate()  # the same TPM under the same name: another activation
    resp = node.send(held["nonce_bytes"], *node.quote(held))
    assert resp.status_code == 403 and checks(resp) == ["nonce.unknown"]


def test_a_clock_step_back_voids_the_held_challenge(env: Env) -> None:
    node = trusted(env)
    held = node.next_challenge
    assert held is not None
    with shifted_clock(env, -timedelta(minutes=5)):
        resp = node.send(held["nonce_bytes"], *node.quote(held))
        assert resp.status_code == 403 and checks(resp) == ["nonce.clock_future"]
        verifier.mark_stale_nodes(env.server.attest)  # voids what was issued before the step
    resp = node.send(held["nonce_bytes"], *node.quote(held))
    assert resp.status_code == 403 and checks(resp) == ["nonce.replayed"]


def test_concurrent_evidence_over_one_held_challenge_gets_one_next_challenge(env: Env) -> None:
    node = trusted(env)
    held = node.next_challenge
    assert held is not None
    node.tpm.extend(14, b"tampered")  # a state change: the verdict takes the slow path
    bodies = [node.quote(held) for _ in range(4)]
    url = str(env.client.base_url)

    def post(evidence: tuple[bytes, bytes, dict[str, dict[int, bytes]]]) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as client:
            return SimulatedNode(node.name, client, node.tpm).send(held["nonce_bytes"],
                                                                   *evidence)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, bodies))
    ok = [a for a in answers if a.status_code == 200]
    assert len(ok) == 1 and ok[0].json()["state"] == "untrusted"
    assert "next_challenge" in ok[0].json()
    for refused in (a for a in answers if a.status_code != 200):
        assert refused.status_code == 403 and checks(refused) == ["nonce.replayed"]
        assert "next_challenge" not in refused.json()
