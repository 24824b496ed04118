"""Attacks on enrolment and activation over HTTP (SQLite and PostgreSQL): a name binds to an EK
only by a completed ActivateCredential, one EK is one name, and wrong proofs lock out nobody but
the enrolment they were sent for.

EK, EK certificate and AK public are public material: the attacker here has all of them.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.support.attack_env import Env, checks, trusted
from tests.support.simagent import SimulatedNode, b64
from tests.support.simtpm import SimulatedTpm


def _impersonate(victim: SimulatedTpm) -> SimulatedTpm:
    """A TPM-less attacker presenting the victim's public EK and AK (its 'TPM' can't activate)."""
    return SimulatedTpm(ek_key=victim._ek_key, ak_key=victim._ak_key)


def _enroll(client: httpx.Client, name: str, tpm: SimulatedTpm) -> httpx.Response:
    return SimulatedNode(name, client, tpm).enroll()


def _wrong_proofs(client: httpx.Client, name: str, enrollment_id: str,
                  count: int) -> list[httpx.Response]:
    return [client.post(f"/attest/v1/nodes/{name}/activate",
                        json={"enrollment_id": enrollment_id, "secret": b64(b"x" * 32)})
            for _ in range(count)]


def _activate(client: httpx.Client, node: SimulatedNode, challenge: dict[str, Any]
              ) -> httpx.Response:
    secret = node.tpm.activate_credential(base64.b64decode(challenge["credential_blob"]),
                                          base64.b64decode(challenge["encrypted_secret"]))
    return client.post(f"{node.base}/activate", json={
        "enrollment_id": challenge["enrollment_id"], "secret": b64(secret)})


def test_wrong_proofs_lock_only_their_own_enrolment(env: Env) -> None:
    """Point 2: the attacker re-enrols the victim's name with its public EK and AK and sends ten
    wrong proofs; the real node, which can prove, enrols, activates and is trusted."""
    victim = env.node("node-a")
    with env.anonymous() as attacker:
        pending = _enroll(attacker, "node-a", victim.tpm)
        assert pending.status_code == 200
        answers = _wrong_proofs(attacker, "node-a", pending.json()["enrollment_id"], 11)
    assert [r.status_code for r in answers] == [403] * 10 + [423]
    assert answers[0].json()["check"] == "activate.proof"
    assert answers[-1].json()["check"] == "activate.locked"
    victim.enroll_and_activate()
    assert victim.attest()["state"] == "trusted"


def test_locked_enrolment_refuses_even_the_right_proof(env: Env) -> None:
    """The lock-out is real: after the limit, even the right secret for that enrolment is
    refused (so a guesser gets at most N tries per enrolment), and a new enrolment works."""
    node = env.node("node-a")
    challenge = node.enroll().json()
    _wrong_proofs(env.client, "node-a", challenge["enrollment_id"], 10)
    locked = _activate(env.client, node, challenge)
    assert locked.status_code == 423 and locked.json()["check"] == "activate.locked"
    assert env.client.get("/attest/v1/nodes/node-a").status_code == 404
    assert _activate(env.client, node, node.enroll().json()).status_code == 200


def test_wrong_proofs_against_an_activated_node_change_nothing(env: Env) -> None:
    node = trusted(env)
    before = env.snapshot("node-a")
    with env.anonymous() as attacker:
        pending = _enroll(attacker, "node-a", _impersonate(node.tpm))
        assert pending.status_code == 200  # a pending challenge only: it binds nothing
        _wrong_proofs(attacker, "node-a", pending.json()["enrollment_id"], 12)
    assert env.snapshot("node-a") == before
    assert node.attest()["state"] == "trusted"
    node.enroll_and_activate()  # the real node can still re-enrol: nothing is locked
    assert node.attest()["state"] == "trusted"


def test_proof_for_an_unknown_or_other_names_enrolment(env: Env) -> None:
    a = env.node("node-a")
    challenge = a.enroll().json()
    other = env.client.post("/attest/v1/nodes/node-b/activate", json={
        "enrollment_id": challenge["enrollment_id"], "secret": b64(b"x" * 32)})
    assert other.status_code == 409 and other.json()["check"] == "activate.no_challenge"
    unknown = env.client.post("/attest/v1/nodes/node-a/activate", json={
        "enrollment_id": "0" * 32, "secret": b64(b"x" * 32)})
    assert unknown.status_code == 409 and unknown.json()["check"] == "activate.no_challenge"
    assert _activate(env.client, a, challenge).status_code == 200


def test_expired_credential_challenge_is_refused(env: Env) -> None:
    node = env.node("node-a")
    challenge = node.enroll().json()
    ctx = env.server.attest
    real_now = ctx.now
    ctx.now = lambda: real_now() + timedelta(seconds=ctx.config.activation_ttl_seconds + 1)
    try:
        late = _activate(env.client, node, challenge)
    finally:
        ctx.now = real_now
    assert late.status_code == 409 and late.json()["check"] == "activate.no_challenge"
    assert "expired" in late.json()["detail"]
    assert env.client.get("/attest/v1/nodes/node-a").status_code == 404


def test_name_squatting_with_a_public_ek_binds_nothing(env: Env) -> None:
    """Point 3: a new name enrolled with a not-yet-enrolled node's public EK plus any restricted
    signing key is only pending; the real node with that name enrols and activates later."""
    victim = env.node("node-b")
    with env.anonymous() as attacker:
        squat = _enroll(attacker, "node-b", SimulatedTpm(ek_key=victim.tpm._ek_key))
        assert squat.status_code == 200
    assert env.client.get("/attest/v1/nodes/node-b").status_code == 404
    assert env.client.post("/attest/v1/nodes/node-b/challenge").status_code == 404
    victim.enroll_and_activate()
    assert victim.attest()["state"] == "trusted"


def test_squatting_another_name_with_an_activated_nodes_ek(env: Env) -> None:
    node = trusted(env, "node-c")
    with env.anonymous() as attacker:
        squat = _enroll(attacker, "node-new", SimulatedTpm(ek_key=node.tpm._ek_key))
    assert squat.status_code == 409 and squat.json()["check"] == "enroll.ek_in_use"
    assert "'node-c'" in squat.json()["detail"]


def test_one_tpm_cannot_be_two_names(env: Env) -> None:
    """Point 4: the same TPM enrolling as node-z while it is node-a is refused, naming node-a
    and how to rename."""
    a = trusted(env, "node-a")
    z = SimulatedNode("node-z", env.client, a.tpm)
    resp = z.enroll()
    assert resp.status_code == 409 and resp.json()["check"] == "enroll.ek_in_use"
    assert "'node-a'" in resp.json()["detail"]
    assert "umec nodes rename" in resp.json()["hint"]
    assert env.client.get("/attest/v1/nodes/node-z").status_code == 404


def test_one_tpm_two_pending_names_only_the_first_activation_binds(env: Env) -> None:
    tpm = SimulatedTpm()
    env.allow(tpm)
    a, z = SimulatedNode("node-a", env.client, tpm), SimulatedNode("node-z", env.client, tpm)
    ch_a, ch_z = a.enroll().json(), z.enroll().json()
    assert _activate(env.client, a, ch_a).status_code == 200
    late = _activate(env.client, z, ch_z)
    assert late.status_code == 409 and late.json()["check"] == "enroll.ek_in_use"
    assert env.client.get("/attest/v1/nodes/node-z").status_code == 404


def test_activated_node_cannot_swap_its_ak(env: Env) -> None:
    node = trusted(env)
    swapped = SimulatedTpm(ek_key=node.tpm._ek_key)  # same EK, a fresh AK
    resp = SimulatedNode("node-a", env.client, swapped).enroll()
    assert resp.status_code == 409 and resp.json()["check"] == "enroll.ak_mismatch"


def test_activated_name_cannot_take_another_ek(env: Env) -> None:
    trusted(env)
    resp = env.node("node-a").enroll()  # a new TPM under the bound name
    assert resp.status_code == 409 and resp.json()["check"] == "enroll.ek_mismatch"


def test_challenge_before_activation_is_refused(env: Env) -> None:
    node = env.node("node-q")
    node.enroll()
    resp = env.client.post("/attest/v1/nodes/node-q/challenge")
    assert resp.status_code == 404 and resp.json()["check"] == "node.unknown"


def test_wrong_activation_proof_then_right_one(env: Env) -> None:
    node = env.node("node-p")
    challenge = node.enroll().json()
    bad = _wrong_proofs(env.client, "node-p", challenge["enrollment_id"], 1)[0]
    assert bad.status_code == 403 and bad.json()["check"] == "activate.proof"
    assert _activate(env.client, node, challenge).status_code == 200


def test_enrolment_and_challenges_are_rate_limited(env: Env) -> None:
    node = trusted(env)
    limits = [env.client.post(f"{node.base}/challenge") for _ in range(12)]
    codes = [r.status_code for r in limits]
    assert 429 in codes and codes.index(429) >= 8  # the burst (10, minus trusted()'s) first
    refused = limits[codes.index(429)]
    assert refused.json()["check"] == "rate.limited" and int(refused.headers["retry-after"]) >= 1
    assert refused.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("command", ["rename", "remove"])
def test_operator_rename_or_remove_frees_the_ek(env: Env, command: str) -> None:
    from attest.service import registrar
    a = trusted(env, "node-a")
    if command == "rename":
        registrar.rename(env.server.attest, "node-a", "node-z")
    else:
        registrar.remove(env.server.attest, "node-a")
    assert env.client.get("/attest/v1/nodes/node-a").status_code == 404
    z = SimulatedNode("node-z", env.client, a.tpm)
    if command == "remove":
        z.enroll_and_activate()
    state = z.attest()
    assert state["state"] == "trusted"


def test_a_rename_there_and_back_voids_the_held_challenge(env: Env) -> None:
    """A quote over a challenge issued before an operator renamed the node and renamed it back
    (same name, machine and activation: the MAC still fits) is refused: the rename voided the
    node's outstanding nonces, as removal does."""
    from attest.service import registrar
    node = trusted(env)
    ch = node.challenge()
    held = (ch["nonce_bytes"], *node.quote(ch))
    registrar.rename(env.server.attest, "node-a", "node-z")
    registrar.rename(env.server.attest, "node-z", "node-a")
    resp = node.send(*held)
    assert resp.status_code == 403 and checks(resp) == ["nonce.replayed"]
    assert node.attest()["state"] == "trusted"


def test_ek_public_with_a_foreign_auth_policy_is_refused(env: Env) -> None:
    """Point 5 over HTTP: the same EK key under another authPolicy would be another EK hash
    (one TPM, many names); refused even if an operator approved that hash."""
    tpm = SimulatedTpm()
    ek = bytearray(tpm.ek_public.marshal_tpm2b())
    policy_at = ek.index(bytes.fromhex("837197674484b3f81a90cc8d46a5d724"))
    ek[policy_at] ^= 0x01
    env.server.attest.config.ek_allowlist = frozenset({hashlib.sha256(bytes(ek)).hexdigest()})
    resp = env.client.post("/attest/v1/nodes", json={
        "name": "node-f", "ek_public": b64(bytes(ek)),
        "ak_public": b64(tpm.ak_public.marshal_tpm2b())})
    assert resp.status_code == 403 and resp.json()["check"] == "enroll.ek_template"
    assert "authPolicy" in resp.json()["detail"]


def test_challenge_racing_a_remove_cannot_be_answered(env: Env,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Challenges are stateless: one issued while an operator removes the node is answered,
    but nothing can be done with it. Its evidence is a typed 404 while the node is gone, and
    once the same machine is enrolled again under the same name (a new row), the nonce is
    bound to the old row and refused as unknown."""
    from attest.service import registrar, verifier
    node = trusted(env)
    original = verifier.mint_nonce

    def removed_meanwhile(*args: Any, **kwargs: Any) -> bytes:
        registrar.remove(env.server.attest, "node-a")  # another session commits the removal
        return original(*args, **kwargs)

    monkeypatch.setattr(verifier, "mint_nonce", removed_meanwhile)
    resp = env.client.post("/attest/v1/nodes/node-a/challenge")
    monkeypatch.undo()
    assert resp.status_code == 200, resp.text
    stale = {**resp.json(), "nonce_bytes": base64.b64decode(resp.json()["nonce"])}
    evidence = (stale["nonce_bytes"], *node.quote(stale))
    gone = node.send(*evidence)
    assert gone.status_code == 404 and gone.json()["check"] == "node.unknown"
    node.enroll_and_activate()
    again = node.send(*evidence)
    assert again.status_code == 403 and checks(again) == ["nonce.unknown"]
    assert "never issued to node 'node-a'" in again.json()["detail"]
    assert node.attest()["state"] == "trusted"


def test_enrolment_into_an_unknown_node_class_is_refused(env: Env) -> None:
    node = env.node("node-a")
    node.node_class = "no-such-class"
    resp = node.enroll()
    assert resp.status_code == 422 and resp.json()["check"] == "enroll.node_class"
    assert "no-such-class" in resp.json()["detail"]


def test_credential_challenge_expires_exactly_at_its_expiry(env: Env) -> None:
    from datetime import datetime

    from attest.service.models import EnrollmentRow
    node = env.node("node-a")
    challenge = node.enroll().json()
    ctx = env.server.attest
    with ctx.sessions() as s:
        row = s.get(EnrollmentRow, challenge["enrollment_id"])
        assert row is not None
        expires: datetime = row.expires_at
    real_now = ctx.now
    ctx.now = lambda: expires
    try:
        at_expiry = _activate(env.client, node, challenge)
        ctx.now = lambda: expires - timedelta(microseconds=1)
        just_before = _activate(env.client, node, challenge)
    finally:
        ctx.now = real_now
    assert at_expiry.status_code == 409 and at_expiry.json()["check"] == "activate.no_challenge"
    assert just_before.status_code == 200


def test_operator_steps_on_unknown_or_taken_names_are_refused(env: Env) -> None:
    from attest.service import registrar
    from attest.service.registrar import NodeNameTaken, NodeNotFound
    trusted(env, "node-a")
    trusted(env, "node-b")
    with pytest.raises(NodeNotFound, match="no-such-node"):
        registrar.remove(env.server.attest, "no-such-node")
    with pytest.raises(NodeNotFound, match="no-such-node"):
        registrar.rename(env.server.attest, "no-such-node", "node-c")
    with pytest.raises(NodeNameTaken, match="node-b"):
        registrar.rename(env.server.attest, "node-a", "node-b")
    assert env.client.get("/attest/v1/nodes/node-a").json()["state"] == "trusted"


def test_a_node_attesting_back_to_back_is_not_limited(env: Env) -> None:
    """Answered challenges are refunded: only challenges nobody answers count per node."""
    node = trusted(env)
    for _ in range(25):
        assert node.attest()["state"] == "trusted"
    unanswered = [env.client.post(f"{node.base}/challenge").status_code for _ in range(12)]
    assert 429 in unanswered
