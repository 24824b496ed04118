"""An attacker's review of issue 14's operator surfaces (the operator routes of
attest/service/operator_api.py): each finding's attack over real HTTP, on SQLite and PostgreSQL.
The findings judged not worth fixing are in docs/decisions.md, "Review of issue 14's operator
surfaces"."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.core.policy import POLICY_NAME_PATTERN, AppraisalPolicy, PolicyInvalid
from tests.support.attack_env import Env

SELECTION = "selection:\n  sha256: [0]\n"


def _document(name: str) -> str:
    return f"name: {json.dumps(name)}\n{SELECTION}"


# --- finding 1: policy names were any string --------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=140), st.from_regex(POLICY_NAME_PATTERN, fullmatch=True)))
def test_a_policy_name_parses_only_within_the_class_grammar(name: str) -> None:
    try:
        policy = AppraisalPolicy.from_yaml(_document(name))
    except PolicyInvalid:
        assert re.fullmatch(POLICY_NAME_PATTERN, name) is None
    else:
        assert policy.name == name and re.fullmatch(POLICY_NAME_PATTERN, name)
        assert len(name) <= 128 and "/" not in name and not name.startswith(".")


HOSTILE_NAMES = ["x" * 129, "a/b", "..", "\x1b[31mred\x1b[0m", "line\r\nInjected: 1", "ünï",
                 " pi-k3s", "-x"]


def test_hostile_policy_names_are_refused_not_stored(env: Env) -> None:
    """Any string was a policy name: on PostgreSQL a name over the 128-character column was a
    500, on SQLite it was stored and could never be shown or removed (the path takes 128);
    '/' made a policy no route could address, and escape and CR/LF characters went to
    `umec policy list` on operators' terminals and to every history line."""
    for name in HOSTILE_NAMES:
        resp = env.client.post("/attest/v1/policies", json={"document": _document(name)})
        assert resp.status_code == 422, (name, resp.text)
        assert resp.json()["check"] == "policy.rejected", name
    listed = {p["class"] for p in env.client.get("/attest/v1/policies").json()}
    assert listed.isdisjoint(HOSTILE_NAMES)
    longest = "a" * 128
    assert env.client.post("/attest/v1/policies",
                           json={"document": _document(longest)}).status_code == 200
    assert env.client.get(f"/attest/v1/policies/{longest}").json()["class"] == longest
    assert env.client.delete(f"/attest/v1/policies/{longest}").status_code == 200


@pytest.mark.parametrize("path", ["%2e%2e", "a%0d%0ab", "x" * 129, "%C3%BCn"])
def test_policy_paths_outside_the_grammar_are_a_schema_refusal(env: Env, path: str) -> None:
    resp = env.client.get(f"/attest/v1/policies/{path}")
    assert resp.status_code == 422 and resp.json()["check"] == "request.schema"
