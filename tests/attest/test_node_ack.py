"""Policies with ``require_ack``: a node that failed stays untrusted after a passing quote until
an operator acknowledges it (``POST …/ack`` with the operator token, or ``umec nodes ack``);
an acknowledgement from an earlier incident does not count for the next one."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from attest.core.policy import AppraisalPolicy, PolicyInvalid
from tests.support.pcr_policy import k3s_policy
from tests.support.simagent import SimulatedNode
from umec.app import Server, build_server
from umec.cli import app as cli
from umec.localserver import ServerThread
from umec.settings import Settings


@dataclass
class Env:
    server: Server
    operator: httpx.Client
    anonymous: httpx.Client
    node: SimulatedNode
    data_dir: Path


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy("00" * 32, require_ack=True))
    settings = Settings(data_dir=tmp_path / "srv", policy_dir=policies,
                        default_node_class="pi-k3s")
    server = build_server(settings)
    with ServerThread(server.app) as http, \
            httpx.Client(base_url=http.url, timeout=30, headers={
                "Authorization": f"Bearer {server.operator_token}"}) as operator, \
            httpx.Client(base_url=http.url, timeout=30) as anonymous:
        node = SimulatedNode("node-a", anonymous)
        server.attest.config.ek_allowlist = frozenset(
            {hashlib.sha256(node.tpm.ek_public.marshal_tpm2b()).hexdigest()})
        node.enroll_and_activate()
        assert node.attest()["state"] == "trusted"  # enrolled → trusted needs no ack
        yield Env(server, operator, anonymous, node, tmp_path / "srv")


def fail_then_pass(node: SimulatedNode) -> dict[str, object]:
    node.tpm.extend(14, b"tampered")
    assert node.attest()["state"] == "untrusted"
    node.tpm.reboot()  # PCRs back to the reference values
    return node.attest()


def test_passing_quote_alone_does_not_end_untrusted(env: Env) -> None:
    verdict = fail_then_pass(env.node)
    assert verdict["state"] == "untrusted" and verdict["trusted"] is False
    assert verdict["awaiting_ack"] is True and "umec nodes ack node-a" in str(verdict["reason"])
    assert verdict["failed_checks"] == []


def test_ack_needs_the_operator_token(env: Env) -> None:
    fail_then_pass(env.node)
    refused = env.anonymous.post("/attest/v1/nodes/node-a/ack")
    assert refused.status_code == 401
    assert env.node.attest()["state"] == "untrusted"


def test_ack_then_passing_quote_trusts_again(env: Env) -> None:
    fail_then_pass(env.node)
    r = env.operator.post("/attest/v1/nodes/node-a/ack")
    assert r.status_code == 200 and r.json() == {"node": "node-a", "acknowledged": True,
                                                 "state": "untrusted"}
    verdict = env.node.attest()
    assert verdict["state"] == "trusted" and verdict["trusted"] is True
    assert env.operator.post("/attest/v1/nodes/node-a/ack").status_code == 409  # nothing to ack
    assert env.operator.post("/attest/v1/nodes/node-z/ack").status_code == 404


def test_an_old_ack_does_not_cover_the_next_incident(env: Env) -> None:
    fail_then_pass(env.node)
    env.operator.post("/attest/v1/nodes/node-a/ack").raise_for_status()
    assert env.node.attest()["state"] == "trusted"
    again = fail_then_pass(env.node)
    assert again["state"] == "untrusted" and again["awaiting_ack"] is True


def test_ack_from_the_command_line(env: Env) -> None:
    fail_then_pass(env.node)
    result = CliRunner().invoke(cli, ["nodes", "ack", "node-a"],
                                env={"UMEC_DATA_DIR": str(env.data_dir)})
    assert result.exit_code == 0, result.output
    assert env.node.attest()["state"] == "trusted"
    twice = CliRunner().invoke(cli, ["nodes", "ack", "node-a"],
                               env={"UMEC_DATA_DIR": str(env.data_dir)})
    assert twice.exit_code == 1 and "node.ack_not_needed" in twice.output


def test_require_ack_must_be_a_boolean() -> None:
    with pytest.raises(PolicyInvalid, match="require_ack"):
        AppraisalPolicy.from_dict({"name": "x", "selection": {"sha256": [0]},
                                   "require_ack": "yes"})
    assert AppraisalPolicy.from_dict({"name": "x", "selection": {"sha256": [0]}}) \
        .require_ack is False
