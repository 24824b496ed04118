"""Each attack on the evidence path, over HTTP against a real server (SQLite and PostgreSQL),
blocked with a named check.

Only evidence the node's own activated AK signed over a nonce issued to that node may change the
node: everything else is refused (4xx), counted and changes nothing — not the state, the clock
baseline, the events, nor the nonce (the node can still use it).
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from attest.service.models import NodeRow
from tests.support.attack_env import Env, checks, shifted_clock, trusted
from tests.support.simagent import SimulatedNode, b64
from tests.support.simtpm import SimulatedTpm


def _unchanged_and_nonce_still_usable(env: Env, node: SimulatedNode, before: dict[str, object],
                                      ch: dict[str, object]) -> None:
    assert env.snapshot(node.name) == before
    resp = node.send(ch["nonce_bytes"], *node.quote(ch))  # type: ignore[arg-type]
    assert resp.status_code == 200 and resp.json()["state"] == "trusted"


def test_forged_quote_signature(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    attest, sig, pcrs = node.quote(ch)
    forged = sig[:-3] + bytes([sig[-3] ^ 1]) + sig[-2:]
    before = env.snapshot("node-a")
    with env.anonymous() as attacker:
        resp = SimulatedNode("node-a", attacker).send(ch["nonce_bytes"], attest, forged, pcrs)
    assert resp.status_code == 403 and checks(resp) == ["quote.signature"]
    assert resp.headers["content-type"].startswith("application/problem+json")
    _unchanged_and_nonce_still_usable(env, node, before, ch)


def test_quote_by_a_software_key_over_the_real_challenge(env: Env) -> None:
    """An anonymous client asks for node-a's challenge and answers it with its own AK."""
    node = trusted(env)
    before = env.snapshot("node-a")
    with env.anonymous() as attacker:
        fake = SimulatedNode("node-a", attacker, SimulatedTpm())
        ch = fake.challenge()
        resp = fake.send(ch["nonce_bytes"], *fake.quote(ch))
    assert resp.status_code == 403 and checks(resp) == ["quote.signature"]
    _unchanged_and_nonce_still_usable(env, node, before, ch)


def test_quote_by_another_tpms_ak(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    other = SimulatedTpm()
    before = env.snapshot("node-a")
    resp = node.send(ch["nonce_bytes"], *other.quote(ch["nonce_bytes"],
                     {b: frozenset(v) for b, v in ch["selection"].items()}))
    assert resp.status_code == 403 and checks(resp) == ["quote.signature"]
    _unchanged_and_nonce_still_usable(env, node, before, ch)


def test_another_trusted_nodes_genuine_quote(env: Env) -> None:
    """node-b's real quote over a nonce issued to node-a is not node-a's evidence."""
    a, b = trusted(env, "node-a"), trusted(env, "node-b")
    ch = a.challenge()
    sel = {k: frozenset(v) for k, v in ch["selection"].items()}
    b.tpm.extend(14, b"whatever node-b runs")
    before = env.snapshot("node-a")
    resp = a.send(ch["nonce_bytes"], *b.tpm.quote(ch["nonce_bytes"], sel))
    assert resp.status_code == 403 and checks(resp) == ["quote.signature"]
    _unchanged_and_nonce_still_usable(env, a, before, ch)


def test_old_genuine_quote_replayed_on_a_fresh_nonce(env: Env) -> None:
    """A genuine quote of the node, captured earlier (a failing one), proves nothing now."""
    node = trusted(env)
    node.tpm.extend(14, b"tampered, once")
    old_ch = node.challenge()
    old = node.quote(old_ch)  # never sent: the attacker captured it
    node.tpm.reboot()
    assert node.attest()["state"] == "trusted"
    ch = node.challenge()
    before = env.snapshot("node-a")
    resp = node.send(ch["nonce_bytes"], *old)
    assert resp.status_code == 403 and checks(resp) == ["quote.nonce"]
    _unchanged_and_nonce_still_usable(env, node, before, ch)


def test_forgery_flood_keeps_node_in_service_and_is_counted(env: Env) -> None:
    node = trusted(env)
    before = env.snapshot("node-a")
    counted = env.refusals("evidence", "quote.signature")
    with env.anonymous() as attacker:
        fake = SimulatedNode("node-a", attacker, SimulatedTpm())
        ch = fake.challenge()  # refused evidence spends nothing: one nonce serves the flood
        for _ in range(30):
            resp = fake.send(ch["nonce_bytes"], *fake.quote(ch))
            assert resp.status_code == 403 and checks(resp) == ["quote.signature"]
    assert env.refusals("evidence", "quote.signature") == counted + 30
    assert env.snapshot("node-a") == before
    assert node.attest()["state"] == "trusted"


def test_refusal_is_logged_with_the_source_address(env: Env,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    node = trusted(env)
    ch = node.challenge()
    attest, sig, pcrs = SimulatedTpm().quote(ch["nonce_bytes"], {"sha256": frozenset({0})})
    with caplog.at_level("WARNING"):
        node.send(ch["nonce_bytes"], attest, sig, pcrs)
    # Logged once, by the shared handler (kernel.problems.log_refusal).
    [refused] = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert refused.name == "umec.http" and refused.__dict__["peer"] == "127.0.0.1"
    assert refused.__dict__["check"] == "quote.signature"
    assert refused.__dict__["route"] == "/attest/v1/nodes/{node}/evidence"
    assert refused.__dict__["path"] == "/attest/v1/nodes/node-a/evidence"


def test_replayed_nonce(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    evidence = node.quote(ch)
    assert node.send(ch["nonce_bytes"], *evidence).json()["state"] == "trusted"
    resp = node.send(ch["nonce_bytes"], *evidence)
    assert resp.status_code == 403 and checks(resp) == ["nonce.replayed"]


def test_expired_nonce(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    evidence = node.quote(ch)
    with shifted_clock(env, timedelta(seconds=31)):
        resp = node.send(ch["nonce_bytes"], *evidence)
    assert resp.status_code == 403 and checks(resp) == ["nonce.expired"]


def test_another_nodes_nonce(env: Env) -> None:
    a, b = trusted(env, "node-a"), trusted(env, "node-b")
    ch_b = b.challenge()
    sel = {k: frozenset(v) for k, v in ch_b["selection"].items()}
    resp = a.send(ch_b["nonce_bytes"], *a.tpm.quote(ch_b["nonce_bytes"], sel))
    # The nonce's MAC binds node-b's identity: to node-a it was never issued.
    assert resp.status_code == 403 and checks(resp) == ["nonce.unknown"]
    assert "never issued to node 'node-a'" in resp.json()["detail"]
    # node-b's nonce is still usable by node-b: the failed attempt did not burn it.
    assert b.send(ch_b["nonce_bytes"], *b.quote(ch_b)).json()["state"] == "trusted"


def test_unknown_nonce(env: Env) -> None:
    node = trusted(env)
    attest, sig, pcrs = node.tpm.quote(b"\x01" * 32, {"sha256": frozenset({0, 1, 2, 3, 7, 14})})
    resp = node.send(b"\x01" * 32, attest, sig, pcrs)
    assert resp.status_code == 403 and checks(resp) == ["nonce.unknown"]


def test_quote_over_other_nonce(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    sel = {k: frozenset(v) for k, v in ch["selection"].items()}
    before = env.snapshot("node-a")
    resp = node.send(ch["nonce_bytes"], *node.tpm.quote(b"\x02" * 32, sel))
    assert resp.status_code == 403 and checks(resp) == ["quote.nonce"]
    _unchanged_and_nonce_still_usable(env, node, before, ch)


def test_pcr_values_not_matching_quoted_digest(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    attest, sig, pcrs = node.quote(ch)
    pcrs["sha256"][14] = bytes(32) if pcrs["sha256"][14] != bytes(32) else b"\x01" * 32
    resp = node.send(ch["nonce_bytes"], attest, sig, pcrs)
    assert "quote.pcr_digest" in checks(resp)
    assert resp.json()["state"] == "untrusted"


def test_selection_smaller_than_requested(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    resp = node.send(ch["nonce_bytes"], *node.tpm.quote(ch["nonce_bytes"],
                                                        {"sha256": frozenset({0, 1})}))
    assert "quote.pcr_selection" in checks(resp)
    assert resp.json()["trusted"] is False


def test_tampered_application_pcr(env: Env) -> None:
    node = trusted(env)
    node.tpm.extend(14, b"unexpected binary")
    resp = node.send(*(lambda ch: (ch["nonce_bytes"], *node.quote(ch)))(node.challenge()))
    assert checks(resp) == ["policy.pcr_value"]


def test_reboot_hidden_by_replaying_old_state(env: Env) -> None:
    node = trusted(env)
    node.tpm.reboot()
    assert node.attest()["rebooted"] is True
    node.tpm.reset_count -= 1  # an old TPM state (or an old quote) presented after the reboot
    ch = node.challenge()
    resp = node.send(ch["nonce_bytes"], *node.quote(ch))
    assert "quote.reset_count" in checks(resp)


def test_clock_rollback(env: Env) -> None:
    node = trusted(env)
    node.tpm.clock -= 10_000
    ch = node.challenge()
    resp = node.send(ch["nonce_bytes"], *node.quote(ch))
    assert checks(resp) == ["quote.clock"]


def test_restart_count_rollback(env: Env) -> None:
    node = trusted(env)
    node.tpm.resume()
    assert node.attest()["state"] == "trusted"
    node.tpm.restart_count = 0
    ch = node.challenge()
    resp = node.send(ch["nonce_bytes"], *node.quote(ch))
    assert "quote.restart_count" in checks(resp)


@pytest.mark.parametrize("weak", [{"ak_restricted": False}, {"ak_fixed_tpm": False}])
def test_ak_without_restricted_or_fixedtpm_is_refused(env: Env, weak: dict[str, bool]) -> None:
    node = env.node("node-w", SimulatedTpm(**weak))
    resp = node.enroll()
    assert resp.status_code == 403 and resp.json()["check"] == "enroll.ak_attributes"


def test_ek_neither_certified_nor_allowlisted_is_refused(env: Env) -> None:
    resp = env.node("node-x", allow=False).enroll()
    assert resp.status_code == 403 and resp.json()["check"] == "ek.certificate.untrusted"
    assert env.client.get("/attest/v1/nodes/node-x").status_code == 404


def test_untrusted_node_recovers_only_with_passing_quote(env: Env) -> None:
    node = trusted(env)
    node.tpm.extend(14, b"bad")
    assert node.attest()["state"] == "untrusted"
    assert node.attest()["state"] == "untrusted"
    node.tpm.reboot()  # the clean boot measures nothing into PCR 14 again
    assert node.attest()["state"] == "trusted"


def test_state_changes_recorded_as_events(env: Env) -> None:
    from sqlalchemy import select

    from attest.service.models import StateEventRow
    node = trusted(env)
    node.tpm.extend(14, b"bad")
    node.attest()
    with env.server.attest.sessions() as s:
        events = [(e.previous, e.state) for e in
                  s.scalars(select(StateEventRow).order_by(StateEventRow.at))]
    assert events == [("enrolled", "trusted"), ("trusted", "untrusted")]


@pytest.mark.parametrize("body", [
    {"nonce": "!!!", "quote": "", "signature": "", "pcrs": {}},
    {"nonce": b64(b"n" * 32), "quote": b64(b"\xff" * 10), "signature": b64(b"x"), "pcrs": {}},
    {"nonce": b64(b"n" * 32), "quote": "A" * (2 << 20), "signature": "", "pcrs": {}},
    {"nonce": b64(b"n" * 32), "quote": b64(b""), "signature": b64(b""),
     "pcrs": {"sha256": {"0": "zz"}}},
])
def test_malformed_evidence_gets_typed_4xx_never_500(env: Env, body: dict[str, object]) -> None:
    trusted(env)
    resp = env.client.post("/attest/v1/nodes/node-a/evidence", json=body)
    assert 400 <= resp.status_code < 500
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert "Traceback" not in resp.text


def test_truncated_quote_structure(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    attest, sig, pcrs = node.quote(ch)
    before = env.snapshot("node-a")
    resp = node.send(ch["nonce_bytes"], attest[:-5], sig, pcrs)
    assert resp.status_code == 400 and checks(resp)[0].startswith("structure.")
    _unchanged_and_nonce_still_usable(env, node, before, ch)


def test_attestation_result_is_a_verifiable_jwt(env: Env) -> None:
    from keys import verify_jwt
    node = trusted(env)
    verdict = node.attest()
    verified = verify_jwt(verdict["attestation_result"], env.server.keys, algorithms=["ES256"],
                          issuer=env.server.attest.config.issuer, audience="umec")
    assert verified.kid == env.server.keys.active.kid and verified.header["alg"] == "ES256"
    claims = verified.claims
    assert claims["sub"] == "node-a" and claims["state"] == "trusted"
    assert claims["trusted"] is True and claims["failed_checks"] == []
    node.tpm.extend(14, b"tampered")
    claims = verify_jwt(node.attest()["attestation_result"], env.server.keys,
                        algorithms=["ES256"], issuer=env.server.attest.config.issuer,
                        audience="umec").claims
    assert claims["state"] == "untrusted" and claims["trusted"] is False
    assert claims["failed_checks"] == ["policy.pcr_value"]


# Every operator route (attest.service.api, attest.service.operator_api), with a body that
# would be accepted with the token.
OPERATOR_ROUTES: list[tuple[str, str, dict[str, object] | None]] = [
    ("GET", "/attest/v1/nodes", None), ("GET", "/attest/v1/nodes/node-a", None),
    ("POST", "/attest/v1/nodes/node-a/ack", None), ("DELETE", "/attest/v1/nodes/node-a", None),
    ("POST", "/attest/v1/nodes/node-a/rename", {"name": "node-b"}),
    ("GET", "/attest/v1/policies", None), ("GET", "/attest/v1/policies/pi-k3s", None),
    ("POST", "/attest/v1/policies", {"document": "name: pi-k3s\nselection: {sha256: [0]}\n"}),
    ("DELETE", "/attest/v1/policies/pi-k3s", None),
    ("GET", "/attest/v1/policies/pi-k3s/history", None),
    ("GET", "/attest/v1/policies/pi-k3s/versions/1", None),
    ("GET", "/attest/v1/policies/pi-k3s/rollback?to=1", None),
    ("POST", "/attest/v1/policies/from-node", {"node": "node-a"}),
]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic abc", "Bearer"])
def test_fleet_view_needs_the_operator_token(env: Env, authorization: str | None) -> None:
    trusted(env)
    headers = {"Authorization": authorization} if authorization is not None else {}
    with httpx.Client(base_url=str(env.client.base_url)) as anonymous:
        for method, path, body in OPERATOR_ROUTES:
            resp = anonymous.request(method, path, headers=headers, json=body)
            assert resp.status_code == 401, (method, path)
            assert resp.headers["www-authenticate"].startswith("Bearer")
            assert resp.headers["content-type"] == "application/problem+json"
            assert resp.json()["check"] == "operator.token", (method, path)
    # nothing an operator route does happened
    assert [n["name"] for n in env.client.get("/attest/v1/nodes").json()] == ["node-a"]
    assert env.client.get("/attest/v1/policies/pi-k3s").json()["generation"] == 1
    # the token file is private to the server's user
    import stat
    token_file = env.tmp / "srv" / "operator-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == env.server.operator_token


def test_rounds_and_challenges_add_no_rows_and_enrolments_are_pruned(env: Env) -> None:
    """Point 8: nothing grows by a row per round for ever. Challenges are stateless and a
    verdict that keeps the state updates the node's row: no table gains a row from rounds or
    outstanding challenges. Pending enrolments expire and are pruned."""
    from sqlalchemy import func, select

    from attest.service.models import AttestBase, EnrollmentRow
    from attest.service.registrar import prune_enrollments
    node = trusted(env)
    ctx = env.server.attest

    def rows() -> dict[str, int]:
        with ctx.sessions() as s:
            return {t.name: s.scalar(select(func.count()).select_from(t)) or 0
                    for t in AttestBase.metadata.sorted_tables}

    before = rows()
    for _ in range(5):
        assert node.attest()["state"] == "trusted"
    for _ in range(3):
        node.challenge()  # outstanding, never answered
    assert rows() == before
    env.node("node-p").enroll()  # one pending enrolment
    assert rows()[EnrollmentRow.__tablename__] == before[EnrollmentRow.__tablename__] + 1
    assert prune_enrollments(ctx) == 0  # nothing expired yet
    real_now = ctx.now
    ctx.now = lambda: real_now() + timedelta(seconds=ctx.config.activation_ttl_seconds + 1)
    try:
        assert prune_enrollments(ctx) == 1
    finally:
        ctx.now = real_now
    assert rows() == before
    assert node.attest()["state"] == "trusted"


def test_the_deadline_loop_prunes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from sqlalchemy import func, select

    from attest.service import background
    from attest.service.models import EnrollmentRow
    env.node("node-p").enroll()
    ctx = env.server.attest
    real_now = ctx.now
    monkeypatch.setattr(background, "PRUNE_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(ctx, "now", lambda: real_now() + timedelta(minutes=10))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with ctx.sessions() as s:
            if not s.scalar(select(func.count()).select_from(EnrollmentRow)):
                return
        time.sleep(0.2)
    raise AssertionError("expired enrolments were not pruned by the deadline loop")


def test_evidence_for_an_unknown_node_is_a_typed_404(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    resp = SimulatedNode("node-nobody", env.client, node.tpm).send(ch["nonce_bytes"],
                                                                   *node.quote(ch))
    assert resp.status_code == 404 and resp.json()["check"] == "node.unknown"
    assert node.send(ch["nonce_bytes"], *node.quote(ch)).json()["state"] == "trusted"


def test_a_node_whose_policy_was_removed_gets_a_typed_refusal(env: Env) -> None:
    """Never "accept all": a node class without a policy is refused (422), not appraised."""
    from sqlalchemy import delete

    from attest.service.models import PolicyRow
    node = trusted(env)
    ch = node.challenge()
    ctx = env.server.attest
    with ctx.sessions.begin() as s:
        s.execute(delete(PolicyRow).where(PolicyRow.name == "pi-k3s"))
    ctx._policy_cache.clear()
    resp = node.send(ch["nonce_bytes"], *node.quote(ch))
    assert resp.status_code == 422 and resp.json()["check"] == "policy.missing"
    resp = env.client.post(f"{node.base}/challenge")
    assert resp.status_code == 422 and resp.json()["check"] == "policy.missing"


def test_evidence_racing_a_remove_is_a_typed_404(env: Env,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from attest.service import registrar, verifier
    node = trusted(env)
    node.tpm.extend(14, b"tampered")  # a verdict that would change the state
    original = verifier.appraise_evidence

    def removed_during_appraisal(*args: object, **kwargs: object) -> object:
        verdict = original(*args, **kwargs)  # type: ignore[arg-type]
        registrar.remove(env.server.attest, "node-a")
        return verdict

    monkeypatch.setattr(verifier, "appraise_evidence", removed_during_appraisal)
    ch = node.challenge()
    resp = node.send(ch["nonce_bytes"], *node.quote(ch))
    assert resp.status_code == 404 and resp.json()["check"] == "node.unknown"


@pytest.mark.parametrize("state_changes", [True, False], ids=["state-changes", "state-stays"])
def test_evidence_racing_a_remove_and_reenrolment_never_lands_on_the_new_node(
        env: Env, monkeypatch: pytest.MonkeyPatch, state_changes: bool) -> None:
    """The operator removes node-a while its evidence is appraised, and another TPM enrols and
    activates under the same name (a new row, whose nonce counter starts again where the old
    one may have been). The old TPM's quote must not record a verdict on the new node: 404,
    and the new node keeps its own state (found by an attacker's review in session 12)."""
    from attest.service import registrar, verifier
    old = env.node("node-a")
    old.enroll_and_activate()  # never attested: counter 0, like the new row's
    if not state_changes:  # trusted, and a passing quote: the common-case UPDATE's race
        old.attest()
    original = verifier.appraise_evidence
    new = env.node("node-a", SimulatedTpm())

    def removed_and_enrolled_again(*args: object, **kwargs: object) -> object:
        verdict = original(*args, **kwargs)  # type: ignore[arg-type]
        registrar.remove(env.server.attest, "node-a")
        new.enroll_and_activate()
        if not state_changes:
            monkeypatch.setattr(verifier, "appraise_evidence", original)
            new.attest()  # trusted too, and its counter is the old one's again
        return verdict

    monkeypatch.setattr(verifier, "appraise_evidence", removed_and_enrolled_again)
    ch = old.challenge()
    resp = old.send(ch["nonce_bytes"], *old.quote(ch))
    assert resp.status_code == 404 and resp.json()["check"] == "node.unknown", resp.text
    with env.server.attest.engine.connect() as conn:
        row = conn.execute(select(NodeRow.state, NodeRow.ak_public, NodeRow.last_pass_nonce)
                           .where(NodeRow.name == "node-a")).one()
    assert row.ak_public == new.tpm.ak_public.marshal_tpm2b()
    assert row.state == ("trusted" if not state_changes else "enrolled"), row.state
    assert row.last_pass_nonce != ch["nonce_bytes"].hex()
