"""An attacker's review of issue 14's operator surfaces (the operator routes of
attest/service/operator_api.py): each finding's attack over real HTTP, on SQLite and PostgreSQL.
The findings judged not worth fixing are in docs/decisions.md, "Review of issue 14's operator
surfaces"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attest.core.policy import POLICY_NAME_PATTERN, AppraisalPolicy, PolicyInvalid
from tests.support.attack_env import Env
from umec.app import build_server
from umec.cli_errors import SettingsInvalid
from umec.configs import MIN_OPERATOR_TOKEN
from umec.settings import Settings

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


# --- finding 2: a short operator token could be guessed online ---------------------------------

def test_wrong_bearers_are_answered_without_a_lockout(env: Env) -> None:
    """The attack's premise: the operator routes answer every wrong guess at once (200 in a
    row here), so nothing but the token's length stands between an attacker and them. A
    lock-out would be worse: anyone could lock the operator out of the CLI."""
    with env.anonymous() as attacker:
        for i in range(200):
            resp = attacker.get("/attest/v1/policies", headers={"Authorization": f"Bearer g{i}"})
            assert resp.status_code == 401 and resp.json()["check"] == "operator.token"
    assert env.client.get("/attest/v1/policies").status_code == 200


@pytest.mark.parametrize("token", ["op", "hunter2", "x" * 31, "  " + "x" * 30 + "\n"])
def test_a_short_configured_operator_token_is_refused_at_start(tmp_path: Path,
                                                                token: str) -> None:
    with pytest.raises(SettingsInvalid) as err:
        build_server(Settings(data_dir=tmp_path, operator_token=token))
    assert err.value.check == "settings.invalid" and "UMEC_OPERATOR_TOKEN" in str(err.value)
    assert token.strip() not in str(err.value)


def test_a_long_configured_operator_token_is_used(tmp_path: Path) -> None:
    token = "x" * MIN_OPERATOR_TOKEN
    assert build_server(Settings(data_dir=tmp_path, operator_token=token)).operator_token == token
