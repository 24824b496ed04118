"""policies/admission.rego evaluated with regopy: its own Rego tests, and decisions on inputs
shaped like the webhook's."""

from __future__ import annotations

from pathlib import Path

import pytest

from admission.service.rego import POLICY_DIR, RegoEvaluator, RegoFailed
from tests.support.webhook import D1


@pytest.fixture(scope="module")
def rego() -> RegoEvaluator:
    return RegoEvaluator()


def test_rego_unit_tests_pass() -> None:
    ev = RegoEvaluator([POLICY_DIR / "admission.rego", POLICY_DIR / "admission_test.rego"])
    results = ev.run_tests("umec.admission_test")
    assert len(results) >= 12
    assert [n for n, ok in results.items() if not ok] == []


def test_a_failing_rego_test_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad_test.rego"
    bad.write_text("package umec.bad_test\nimport data.umec.admission\n"
                   'test_wrong if { admission.decide({"containers": []}).allowed }\n'
                   "test_right if { true }\n")
    ev = RegoEvaluator([POLICY_DIR / "admission.rego", bad])
    assert ev.run_tests("umec.bad_test") == {"test_right": True, "test_wrong": False}


def entry(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"path": "spec.containers[0]", "image": "r/app@" + D1,
                               "digest": D1, "error": None, "policies": [], "no_match": None}
    return base | kw


def test_decision_messages_name_path_image_step(rego: RegoEvaluator) -> None:
    pol = {"policy": "ImagePolicy/a/p", "mode": "enforce", "satisfied": False,
           "reason": "authority 'ci': 0 of the required 1 keys signed", "signers": []}
    d = rego.decide({"namespace": "a", "containers": [
        entry(policies=[pol]), entry(path="spec.initContainers[0]", image="r/i:1", digest=None),
        entry(path="spec.ephemeralContainers[0]", error={"check": "deadline.exceeded",
                                                         "detail": 'step "verify"'})]})
    assert not d.allowed
    assert d.deny == (
        "spec.containers[0]: image r/app@" + D1 + ": policy.unsatisfied: ImagePolicy/a/p: "
        "authority 'ci': 0 of the required 1 keys signed",
        "spec.ephemeralContainers[0]: image r/app@" + D1 + ": deadline.exceeded: step 'verify'",
        "spec.initContainers[0]: image r/i:1: digest.required: images must be pinned by digest"
        " (@sha256:…)")


def test_allowed_and_warnings(rego: RegoEvaluator) -> None:
    ok = {"policy": "P", "mode": "enforce", "satisfied": True, "reason": "", "signers": ["k"]}
    warn = {"policy": "W", "mode": "warn", "satisfied": False, "reason": "unsigned",
            "signers": []}
    d = rego.decide({"namespace": "a", "containers": [entry(policies=[ok, warn])]})
    assert d.allowed and len(d.warnings) == 1 and "warn mode" in d.warnings[0]
    assert not rego.decide({"namespace": "a", "containers": []}).allowed
    assert not rego.decide({}).allowed


def test_decisions_are_memoised(rego: RegoEvaluator) -> None:
    inp = {"namespace": "memo", "containers": [entry(no_match="allow")]}
    before = rego.queries
    assert rego.decide(inp).allowed and rego.decide(inp).allowed
    assert rego.queries == before + 1


def test_broken_policy_fails_at_load(tmp_path: Path) -> None:
    broken = tmp_path / "admission.rego"
    broken.write_text("package umec.admission\ndecision := {")
    with pytest.raises(RegoFailed):
        RegoEvaluator([broken])
    wrong_shape = tmp_path / "shape.rego"
    wrong_shape.write_text('package umec.admission\ndecision := {"allowed": true}\n')
    with pytest.raises(RegoFailed, match="wrong shape"):
        RegoEvaluator([wrong_shape]).decide({"containers": []})


def test_contradictory_decision_fails_closed(tmp_path: Path) -> None:
    p = tmp_path / "c.rego"
    p.write_text('package umec.admission\n'
                 'decision := {"allowed": true, "deny": ["x"], "warnings": []}\n')
    assert not RegoEvaluator([p]).decide({}).allowed
