"""Each attack on the protocol, over HTTP against a real server, blocked with a named check.

Nodes are simulated TPMs (byte-exact formats, software keys) so that attacks needing a key the
attacker controls — forging, another TPM's AK, a replayed old state — can be built precisely.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from attest.simagent import SimulatedNode, b64
from attest.simtpm import SimulatedTpm
from tests.conftest import k3s_policy
from umec.app import Server, build_server
from umec.localserver import ServerThread
from umec.settings import Settings


@dataclass
class Env:
    server: Server
    client: httpx.Client
    tmp: Path

    def node(self, name: str, tpm: SimulatedTpm | None = None, *,
             allow: bool = True) -> SimulatedNode:
        node = SimulatedNode(name, self.client, tpm)
        if allow:
            cfg = self.server.attest.config
            cfg.ek_allowlist = cfg.ek_allowlist | {
                hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()}
        return node


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy("00" * 32))
    settings = Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                        default_node_class="pi-k3s", nonce_ttl_seconds=30)
    server = build_server(settings)
    with ServerThread(server.app) as http, httpx.Client(
            base_url=http.url, timeout=30,
            headers={"Authorization": f"Bearer {server.operator_token}"}) as c:
        yield Env(server, c, tmp_path)


def trusted(env: Env, name: str = "node-a", tpm: SimulatedTpm | None = None) -> SimulatedNode:
    node = env.node(name, tpm)
    node.enroll_and_activate()
    assert node.attest()["state"] == "trusted"
    return node


def checks(resp: httpx.Response) -> list[str]:
    body = resp.json()
    return [f["check"] for f in body["failed_checks"]] if "failed_checks" in body \
        else [body["check"]]


def test_forged_quote_signature(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    attest, sig, pcrs = node.quote(ch)
    forged = sig[:-3] + bytes([sig[-3] ^ 1]) + sig[-2:]
    resp = node.send(ch["nonce_bytes"], attest, forged, pcrs)
    assert resp.status_code == 200 and resp.json()["state"] == "untrusted"
    assert checks(resp) == ["quote.signature"]


def test_quote_by_another_tpms_ak(env: Env) -> None:
    node = trusted(env)
    ch = node.challenge()
    other = SimulatedTpm()
    resp = node.send(ch["nonce_bytes"], *other.quote(ch["nonce_bytes"],
                     {b: frozenset(v) for b, v in ch["selection"].items()}))
    assert checks(resp) == ["quote.signature"]
    assert resp.json()["trusted"] is False


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
    ctx = env.server.attest
    real_now = ctx.now
    ctx.now = lambda: real_now() + timedelta(seconds=31)
    try:
        resp = node.send(ch["nonce_bytes"], *evidence)
    finally:
        ctx.now = real_now
    assert resp.status_code == 403 and checks(resp) == ["nonce.expired"]


def test_another_nodes_nonce(env: Env) -> None:
    a, b = trusted(env, "node-a"), trusted(env, "node-b")
    ch_b = b.challenge()
    sel = {k: frozenset(v) for k, v in ch_b["selection"].items()}
    resp = a.send(ch_b["nonce_bytes"], *a.tpm.quote(ch_b["nonce_bytes"], sel))
    assert resp.status_code == 403 and checks(resp) == ["nonce.wrong_node"]
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
    resp = node.send(ch["nonce_bytes"], *node.tpm.quote(b"\x02" * 32, sel))
    assert checks(resp) == ["quote.nonce"]


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


def test_wrong_activation_proof_then_right_one(env: Env) -> None:
    node = env.node("node-p")
    ch = node.enroll().json()
    bad = env.client.post("/attest/v1/nodes/node-p/activate", json={"secret": b64(b"x" * 32)})
    assert bad.status_code == 403 and bad.json()["check"] == "activate.proof"
    secret = node.tpm.activate_credential(base64.b64decode(ch["credential_blob"]),
                                          base64.b64decode(ch["encrypted_secret"]))
    ok = env.client.post("/attest/v1/nodes/node-p/activate", json={"secret": b64(secret)})
    assert ok.status_code == 200


def test_challenge_before_activation_is_refused(env: Env) -> None:
    node = env.node("node-q")
    node.enroll()
    resp = env.client.post("/attest/v1/nodes/node-q/challenge")
    assert resp.status_code == 409 and resp.json()["check"] == "node.not_activated"


def test_activated_node_cannot_swap_its_ak(env: Env) -> None:
    node = trusted(env)
    swapped = SimulatedTpm(ek_key=node.tpm._ek_key)  # same EK, a fresh AK
    resp = SimulatedNode("node-a", env.client, swapped).enroll()
    assert resp.status_code == 409 and resp.json()["check"] == "enroll.ak_mismatch"


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
    resp = node.send(ch["nonce_bytes"], attest[:-5], sig, pcrs)
    assert resp.json()["trusted"] is False
    assert checks(resp)[0].startswith("structure.")


def test_attestation_result_is_a_verifiable_jwt(env: Env) -> None:
    from keys import verify_jwt
    node = trusted(env)
    verdict = node.attest()
    claims = verify_jwt(verdict["attestation_result"], env.server.keys, algorithms=["ES256"],
                        issuer=env.server.attest.config.issuer, audience="umec")
    assert claims["sub"] == "node-a" and claims["state"] == "trusted"


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic abc", "Bearer"])
def test_fleet_view_needs_the_operator_token(env: Env, authorization: str | None) -> None:
    trusted(env)
    headers = {"Authorization": authorization} if authorization is not None else {}
    for path in ("/attest/v1/nodes", "/attest/v1/nodes/node-a"):
        with httpx.Client(base_url=str(env.client.base_url)) as anonymous:
            resp = anonymous.get(path, headers=headers)
        assert resp.status_code == 401, path
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.json()["check"] == "operator.token"
    # the token file is private to the server's user
    import stat
    token_file = env.tmp / "srv" / "operator-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == env.server.operator_token
