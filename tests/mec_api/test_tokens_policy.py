"""policies/tokens.rego: its own Rego tests, and the Python side's refusal of bad grants."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import regopy

from mec_api.tokens.errors import PolicyFailed
from mec_api.tokens.scope_policy import POLICY_DIR, GrantsMalformed, ScopePolicy, load_grants


def test_rego_unit_tests_pass() -> None:
    interp = regopy.Interpreter()
    for name in ("tokens.rego", "tokens_test.rego"):
        interp.add_module(name, (POLICY_DIR / name).read_text())
    names = re.findall(r"^(test_\w+)", (POLICY_DIR / "tokens_test.rego").read_text(), re.M)
    assert len(names) >= 8
    results = {n: str(interp.query(f"data.umec.tokens_test.{n}")) for n in names}
    assert all('"expressions":[true]' in r for r in results.values()), results


def test_decisions_are_memoised_and_narrow_only() -> None:
    policy = ScopePolicy(load_grants("grants: [{namespaces: [t-*], scopes: [sensor.read]}]"))
    d = policy.decide(namespace="t-1", service_account="a", node="n",
                      requested=["sensor.read", "camera.snapshot"])
    assert d.granted == ("sensor.read",) and d.denied == ("camera.snapshot",)
    before = policy.queries
    policy.decide(namespace="t-1", service_account="a", node="n",
                  requested=["camera.snapshot", "sensor.read"])
    assert policy.queries == before


def test_a_policy_that_widens_fails_closed(tmp_path: Path) -> None:
    wide = tmp_path / "wide.rego"
    wide.write_text('package umec.tokens\ndecision := {"granted": ["sensor.read"], '
                    '"denied": []}\n')
    policy = ScopePolicy([], modules=[wide])
    with pytest.raises(PolicyFailed, match="unrequested"):
        policy.decide(namespace="x", service_account="y", node="n", requested=["camera.snapshot"])


def test_broken_policy_fails_at_start(tmp_path: Path) -> None:
    broken = tmp_path / "broken.rego"
    broken.write_text("package umec.tokens\ndecision := {{{\n")
    with pytest.raises(PolicyFailed):
        ScopePolicy([], modules=[broken])


@pytest.mark.parametrize("text", ["grants: 5", "grants: [{namespaces: [a]}]",
                                  "grants: [{namespaces: [a], scopes: [root]}]",
                                  "grants: [{namespaces: [a], scopes: [sensor.read], x: 1}]",
                                  ": : :"])
def test_malformed_grants(text: str) -> None:
    with pytest.raises(GrantsMalformed):
        load_grants(text)
