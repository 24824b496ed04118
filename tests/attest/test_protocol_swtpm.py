"""The attestation protocol end to end over HTTP, with real swtpm TPMs and the real agent."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from attest.agent import (
    HELD_CHALLENGE_MARGIN_SECONDS,
    Agent,
    AgentConfig,
    AgentError,
    NodeChallenge,
)
from attest.tpm.device import Tpm
from attest.tpm.swtpm import Swtpm, SwtpmCa
from tests.support.pcr_policy import k3s_policy, pcr_after
from umec.app import Server, build_server
from umec.localserver import ServerThread
from umec.settings import Settings

pytestmark = pytest.mark.swtpm
K3S = b"k3s v1.31 binary"


@dataclass
class Plane:
    server: Server
    http: ServerThread
    client: httpx.Client
    settings: Settings


@pytest.fixture
def plane_factory(tmp_path: Path, manufacturer_ca: SwtpmCa,
                  swtpm_factory: Callable[[str], Swtpm]) -> Iterator[Callable[..., Plane]]:
    swtpm_factory("node-a")  # makes sure the CA exists before we read its chain
    bundle = tmp_path / "ek-ca.pem"
    bundle.write_bytes(manufacturer_ca.certificate_chain_pem())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy(pcr_after(K3S)))
    planes: list[Plane] = []

    def make(database_url: str = "", **overrides: object) -> Plane:
        settings = Settings(data_dir=tmp_path / "server", ek_ca_bundle=bundle,
                            policy_dir=policies, default_node_class="pi-k3s",
                            database_url=database_url, **overrides)  # type: ignore[arg-type]
        server = build_server(settings)
        http = ServerThread(server.app).start()
        plane = Plane(server, http, httpx.Client(
            base_url=http.url, timeout=30,
            headers={"Authorization": f"Bearer {server.operator_token}"}), settings)
        planes.append(plane)
        return plane
    yield make
    for p in planes:
        p.client.close()
        p.http.stop()


def make_agent(tmp_path: Path, name: str, tpm: Swtpm, client: httpx.Client,
               measure: bytes = K3S) -> Agent:
    tmp_path.mkdir(parents=True, exist_ok=True)
    k3s = tmp_path / f"{name}-k3s"
    k3s.write_bytes(measure)
    return Agent(AgentConfig(node_name=name, tcti=tpm.tcti, state_dir=tmp_path / name,
                             measure_files=[k3s]), client)


def test_two_nodes_trusted_then_tampered_node_untrusted(tmp_path: Path, plane_factory,
                                                        swtpm_factory) -> None:
    plane = plane_factory()
    tpm_a, tpm_b = swtpm_factory("node-a"), swtpm_factory("node-b")
    a = make_agent(tmp_path, "node-a", tpm_a, plane.client)
    b = make_agent(tmp_path, "node-b", tpm_b, plane.client)
    assert a.attest_once()["state"] == "trusted"
    verdict = b.attest_once()
    assert verdict["trusted"] is True and verdict["failed_checks"] == []

    with Tpm(tpm_b.tcti) as tpm:
        tpm.pcr_extend(14, {"sha256": hashlib.sha256(b"evil").digest()})
    verdict = b.attest_once()
    assert verdict["state"] == "untrusted"
    assert [f["check"] for f in verdict["failed_checks"]] == ["policy.pcr_value"]
    assert a.attest_once()["state"] == "trusted"
    nodes = {n["name"]: n for n in plane.client.get("/attest/v1/nodes").json()}
    assert nodes["node-b"]["state"] == "untrusted" and nodes["node-a"]["state"] == "trusted"


def test_untrusted_node_measured_wrongly_fails_with_named_check(tmp_path: Path, plane_factory,
                                                                swtpm_factory) -> None:
    plane = plane_factory()
    agent = make_agent(tmp_path, "node-a", swtpm_factory("node-a"), plane.client,
                       measure=b"some other k3s")
    verdict = agent.attest_once()
    assert verdict["state"] == "untrusted"
    assert verdict["failed_checks"][0]["check"] == "policy.pcr_value"
    assert verdict["failed_checks"][0]["hint"]


def test_agent_and_server_restarts_lose_nothing(tmp_path: Path, plane_factory,
                                                swtpm_factory) -> None:
    plane = plane_factory()
    tpm = swtpm_factory("node-a")
    assert make_agent(tmp_path, "node-a", tpm, plane.client).attest_once()["state"] == "trusted"
    ak_files = sorted(p.read_bytes() for p in (tmp_path / "node-a").glob("ak-*"))
    # Agent restart: a new process with the same state directory keeps its AK, no re-enrolment,
    # and does not measure k3s a second time into the same boot.
    again = make_agent(tmp_path, "node-a", tpm, plane.client)
    assert again.attest_once()["state"] == "trusted"
    assert sorted(p.read_bytes() for p in (tmp_path / "node-a").glob("ak-*")) == ak_files
    # Server restart on the same database: the node and its binding are still there.
    plane.http.stop()
    plane2 = plane_factory()
    agent = make_agent(tmp_path, "node-a", tpm, plane2.client)
    assert agent.attest_once()["state"] == "trusted"
    events = plane2.client.get("/attest/v1/nodes/node-a").json()
    assert events["activated"] is True


def test_reboot_is_seen_and_node_recovers(tmp_path: Path, plane_factory, swtpm_factory) -> None:
    plane = plane_factory()
    tpm = swtpm_factory("node-a")
    agent = make_agent(tmp_path, "node-a", tpm, plane.client)
    assert agent.attest_once()["rebooted"] is False
    tpm.stop()
    tpm.start()  # power cycle: PCRs reset, resetCount increments (on a new port)
    agent.config.tcti = tpm.tcti
    verdict = agent.attest_once()
    assert verdict["state"] == "trusted" and verdict["rebooted"] is True


def test_ek_from_untrusted_manufacturer_is_refused(tmp_path: Path, plane_factory) -> None:
    plane = plane_factory()
    rogue = Swtpm(tmp_path / "rogue", SwtpmCa(tmp_path / "rogue-ca", manufacturer="rogue"))
    with rogue:
        agent = make_agent(tmp_path, "node-r", rogue, plane.client)
        with pytest.raises(AgentError) as err:
            agent.attest_once()
    assert err.value.check == "ek.certificate.untrusted"
    assert plane.client.get("/attest/v1/nodes/node-r").status_code == 404


def test_reenrolment_with_another_ek_is_refused(tmp_path: Path, plane_factory,
                                               swtpm_factory) -> None:
    plane = plane_factory()
    assert make_agent(tmp_path, "node-a", swtpm_factory("node-a"),
                      plane.client).attest_once()["state"] == "trusted"
    impostor = make_agent(tmp_path / "impostor", "node-a", swtpm_factory("node-b"),
                          plane.client)
    with pytest.raises(AgentError) as err:
        impostor.attest_once()
    assert err.value.check == "enroll.ek_mismatch"
    assert plane.client.get("/attest/v1/nodes/node-a").json()["state"] == "trusted"


def test_wrong_activation_proof_keeps_node_state(tmp_path: Path, plane_factory,
                                                 swtpm_factory) -> None:
    plane = plane_factory()
    tpm = swtpm_factory("node-a")
    agent = make_agent(tmp_path, "node-a", tpm, plane.client)
    assert agent.attest_once()["state"] == "trusted"
    before = plane.client.get("/attest/v1/nodes/node-a").json()
    with Tpm(tpm.tcti, ek_kind="rsa") as t:
        ak = t.load_or_create_ak(tmp_path / "node-a")
        body = {"name": "node-a", "ek_public": base64.b64encode(t.ek_public("rsa")).decode(),
                "ak_public": base64.b64encode(ak.public).decode(),
                "ek_certificate": base64.b64encode(t.ek_certificate("rsa") or b"").decode()}
    pending = plane.client.post("/attest/v1/nodes", json=body)
    assert pending.status_code == 200
    resp = plane.client.post("/attest/v1/nodes/node-a/activate", json={
        "enrollment_id": pending.json()["enrollment_id"],
        "secret": base64.b64encode(b"\0" * 32).decode()})
    assert resp.status_code == 403
    assert resp.json()["check"] == "activate.proof"
    after = plane.client.get("/attest/v1/nodes/node-a").json()
    assert after["state"] == before["state"] == "trusted" and after["activated"]
    assert agent.attest_once()["state"] == "trusted"


def test_stale_when_node_goes_quiet(tmp_path: Path, plane_factory, swtpm_factory) -> None:
    plane = plane_factory(attestation_interval_seconds=0.5, stale_grace_seconds=0.5,
                          deadline_check_seconds=0.2)
    tpm = swtpm_factory("node-a")
    agent = make_agent(tmp_path, "node-a", tpm, plane.client)
    (tmp_path / "policies").mkdir(exist_ok=True)
    assert agent.attest_once()["state"] == "trusted"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if plane.client.get("/attest/v1/nodes/node-a").json()["state"] == "stale":
            break
        time.sleep(0.2)
    assert plane.client.get("/attest/v1/nodes/node-a").json()["state"] == "stale"
    assert agent.attest_once()["state"] == "trusted"  # a fresh passing quote brings it back


def _request_paths(client: httpx.Client) -> list[str]:
    """The paths ``client`` requests from now on, in order."""
    paths: list[str] = []
    client.event_hooks["request"].append(lambda request: paths.append(request.url.path))
    return paths


def test_the_agent_attests_with_one_request_a_round(tmp_path: Path, plane_factory,
                                                     swtpm_factory) -> None:
    plane = plane_factory()
    agent = make_agent(tmp_path, "node-a", swtpm_factory("node-a"), plane.client)
    assert agent.attest_once()["state"] == "trusted"  # enrols; a fresh challenge
    paths = _request_paths(plane.client)
    for _ in range(3):
        verdict = agent.attest_once()
        assert verdict["state"] == "trusted" and "next_challenge" not in verdict
    assert paths == ["/attest/v1/nodes/node-a/evidence"] * 3


def test_a_void_held_challenge_costs_the_agent_no_round(tmp_path: Path, plane_factory,
                                                        swtpm_factory) -> None:
    plane = plane_factory()
    agent = make_agent(tmp_path, "node-a", swtpm_factory("node-a"), plane.client)
    assert agent.attest_once()["state"] == "trusted"
    void = agent.held_challenge
    agent.held_challenge = None
    assert agent.attest_once()["state"] == "trusted"  # another round spent the counter
    agent.held_challenge = void
    paths = _request_paths(plane.client)
    assert agent.attest_once()["state"] == "trusted"
    assert paths == ["/attest/v1/nodes/node-a/evidence", "/attest/v1/nodes/node-a/challenge",
                     "/attest/v1/nodes/node-a/evidence"]


def test_a_held_challenge_near_its_end_is_not_used(tmp_path: Path, plane_factory,
                                                   swtpm_factory) -> None:
    plane = plane_factory()
    agent = make_agent(tmp_path, "node-a", swtpm_factory("node-a"), plane.client)
    assert agent.attest_once()["state"] == "trusted"
    held = agent.held_challenge
    assert held is not None
    # Fresh for the lifetime less the margin, on the agent's monotonic clock.
    assert 0 < held.usable_until - time.monotonic() <= 60.0 - HELD_CHALLENGE_MARGIN_SECONDS
    agent.held_challenge = dataclasses.replace(held, usable_until=time.monotonic())
    paths = _request_paths(plane.client)
    assert agent.attest_once()["state"] == "trusted"
    assert paths == ["/attest/v1/nodes/node-a/challenge", "/attest/v1/nodes/node-a/evidence"]


def test_a_removed_node_enrols_again_in_the_round_its_held_challenge_failed(
        tmp_path: Path, plane_factory, swtpm_factory) -> None:
    from attest.service import registrar
    plane = plane_factory()
    agent = make_agent(tmp_path, "node-a", swtpm_factory("node-a"), plane.client)
    assert agent.attest_once()["state"] == "trusted"
    assert agent.held_challenge is not None
    registrar.remove(plane.server.attest, "node-a")  # or a restored database
    paths = _request_paths(plane.client)
    assert agent.attest_once()["state"] == "trusted"
    assert paths == ["/attest/v1/nodes/node-a/evidence", "/attest/v1/nodes/node-a/challenge",
                     "/attest/v1/nodes", "/attest/v1/nodes/node-a/activate",
                     "/attest/v1/nodes/node-a/challenge", "/attest/v1/nodes/node-a/evidence"]


def test_the_fallback_from_a_void_held_challenge_is_one_fresh_round(
        tmp_path: Path, plane_factory, swtpm_factory) -> None:
    # Every nonce of this server has expired by the time its evidence arrives.
    plane = plane_factory(nonce_ttl_seconds=0.001)
    agent = make_agent(tmp_path, "node-a", swtpm_factory("node-a"), plane.client)
    with pytest.raises(AgentError) as first:
        agent.attest_once()  # enrols; its fresh challenge expires
    assert first.value.check == "nonce.expired"
    agent.held_challenge = NodeChallenge(nonce=bytes(32), selection={"sha256": [0]},
                                         usable_until=time.monotonic() + 60)
    paths = _request_paths(plane.client)
    with pytest.raises(AgentError) as second:
        agent.attest_once()
    assert second.value.check == "nonce.expired"  # the held one was unknown, then this
    assert paths == ["/attest/v1/nodes/node-a/evidence", "/attest/v1/nodes/node-a/challenge",
                     "/attest/v1/nodes/node-a/evidence"]
    assert agent.held_challenge is None


def test_a_held_round_refused_for_another_reason_is_not_retried(
        tmp_path: Path, plane_factory, swtpm_factory) -> None:
    from sqlalchemy import text
    plane = plane_factory()
    agent = make_agent(tmp_path, "node-a", swtpm_factory("node-a"), plane.client)
    assert agent.attest_once()["state"] == "trusted"
    with plane.server.attest.engine.begin() as db:  # its class loses its policy
        db.execute(text("UPDATE attest_nodes SET node_class = 'gone' WHERE name = 'node-a'"))
    paths = _request_paths(plane.client)
    with pytest.raises(AgentError) as refused:
        agent.attest_once()
    assert refused.value.check == "policy.missing" and refused.value.status == 422
    assert paths == ["/attest/v1/nodes/node-a/evidence"]  # no fresh round: it would not help
