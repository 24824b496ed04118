"""``umec policy create --from-node`` (issue 13, part 4): a policy made from a trusted node's
last quote, reviewed, signed and applied through the CLI, pins that node's PCRs: the same node
stays trusted, one changed PCR turns it untrusted. A real `umec server` on SQLite and
PostgreSQL (the ``env`` fixture), nodes with simulated TPMs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from attest.core.policy import PolicyInvalid
from attest.core.policy_create import policy_from_pcrs, quoted_pcrs
from keys import generate_private_key, save_private_key
from keys.storage import save_public_key
from tests.support.attack_env import Env, trusted
from tests.support.cli import assert_error, clean_env, umec


def _cli_env(env: Env, tmp_path: Path) -> dict[str, str | None]:
    cli = clean_env(tmp_path)
    engine = env.server.attest.sessions.kw["bind"]
    cli["UMEC_DATABASE_URL"] = engine.url.render_as_string(hide_password=False)
    return cli


def test_policy_from_a_trusted_node_pins_its_pcrs(env: Env, tmp_path: Path) -> None:
    env.server.attest.config.policy_ttl_seconds = 0.0  # see each stored policy at once
    node = trusted(env)
    cli = _cli_env(env, tmp_path)
    draft = tmp_path / "draft.yaml"
    code, _out, err = umec(["policy", "create", "--from-node", "node-a", "-o", str(draft)], cli)
    assert code == 0, err
    doc = yaml.safe_load(draft.read_text())
    assert (doc["name"], doc["version"]) == ("pi-k3s", 1)
    assert doc["selection"] == {"sha256": [0, 1, 2, 3, 7, 14]}
    assert doc["pcrs"]["sha256"][7] == [node.tpm.pcrs["sha256"][7].hex()]
    # Reviewed: signed and applied with signers configured.
    key = generate_private_key()
    save_private_key(tmp_path / "k.key", key)
    save_public_key(tmp_path / "k.pub", key)
    cli["UMEC_POLICY_SIGNERS"] = json.dumps([str(tmp_path / "k.pub")])
    signed = tmp_path / "p.dsse.json"
    assert umec(["policy", "sign", str(draft), "--key", str(tmp_path / "k.key"), "-o",
                 str(signed)], cli)[0] == 0
    code, _out, err = umec(["policy", "set", str(signed)], cli)
    assert code == 0, err
    assert node.attest()["state"] == "trusted"
    node.tpm.extend(7, b"a different secure-boot configuration")
    verdict = node.attest()
    assert verdict["state"] == "untrusted" and "policy.pcr_value" in [
        f["check"] for f in verdict["failed_checks"]]
    # An untrusted node is no reference.
    assert_error(umec(["policy", "create", "--from-node", "node-a"], cli), 1,
                 "policy.from_node", "untrusted")
    assert_error(umec(["policy", "create", "--from-node", "nobody"], cli), 1,
                 "policy.from_node")


@given(st.dictionaries(st.sampled_from(["sha1", "sha256", "md5", "x"]),
                       st.dictionaries(st.integers(-2, 30).map(str) | st.text(max_size=3),
                                       st.text("0123456789abcdefg", max_size=70), max_size=4),
                       max_size=3)
       | st.none() | st.integers() | st.text(max_size=5))
def test_stored_values_make_a_valid_policy_or_a_named_refusal(stored: object) -> None:
    """Whatever the row holds: a policy the parser accepts, or PolicyInvalid."""
    try:
        text = policy_from_pcrs("c", stored, version=2, description="d")
    except PolicyInvalid:
        return
    assert yaml.safe_load(text)["version"] == 2


def test_only_quoted_pcrs_are_kept() -> None:
    values = {"sha256": {0: b"\x01" * 32, 9: b"\x02" * 32}, "sha1": {0: b"\x03" * 20}}
    assert quoted_pcrs(values, {"sha256": frozenset({0})}) == {"sha256": {"0": "01" * 32}}
