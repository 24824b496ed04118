"""The agent's wait after a failed round: a server that is down or busy is retried within one
attestation interval (its Retry-After if sooner), so an outage of the server or its database
does not make healthy nodes stale; a refusal backs off exponentially."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from attest.agent import Agent, AgentConfig, AgentError


@pytest.fixture
def agent(tmp_path: Path) -> Agent:
    config = AgentConfig(node_name="node-a", tcti="none", state_dir=tmp_path,
                         interval_seconds=30.0)
    return Agent(config, httpx.Client(), open_tpm=lambda: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_unavailable_server_is_retried_within_the_interval(agent: Agent, status: int) -> None:
    for failures in (1, 5, 10):
        error = AgentError("evidence: HTTP 503", status=status)
        assert all(0.5 <= agent._failure_delay(error, failures) <= 30.0 for _ in range(200))


def test_retry_after_is_honoured_but_never_beyond_the_interval(agent: Agent) -> None:
    assert agent._failure_delay(AgentError("x", status=503, retry_after=2.0), 9) == 2.0
    assert agent._failure_delay(AgentError("x", status=429, retry_after=900.0), 1) == 30.0
    assert agent._failure_delay(AgentError("x", status=503, retry_after=0.0), 1) == 0.5


def test_unreachable_server_is_retried_within_the_interval(agent: Agent) -> None:
    error = httpx.ConnectError("connection refused")
    assert all(agent._failure_delay(error, 8) <= 30.0 for _ in range(200))


def test_a_refusal_backs_off_exponentially(agent: Agent) -> None:
    error = AgentError("evidence: HTTP 403", check="quote.signature", status=403)
    assert max(agent._failure_delay(error, 5) for _ in range(200)) > 30.0


# Written out, not read from VOID_CHALLENGE_CHECKS: a check dropped from it must fail here.
@pytest.mark.parametrize("check", ["nonce.replayed", "nonce.expired", "nonce.clock_future",
                                   "nonce.unknown", "evidence.concurrent"])
def test_a_void_challenge_is_retried_within_the_interval(agent: Agent, check: str) -> None:
    # The refusal voided the challenge, not the node: a fresh one within the interval (a held
    # challenge refused so falls back to a fresh round at once: attest_once).
    error = AgentError(f"evidence: HTTP 403: {check}", check=check, status=403)
    assert error.transient
    assert all(0.5 <= agent._failure_delay(error, 9) <= 30.0 for _ in range(200))


def test_other_refusals_are_not_void(agent: Agent) -> None:
    assert not AgentError("x", check="policy.missing", status=422).transient
    assert not AgentError("x", check="quote.signature", status=403).transient
