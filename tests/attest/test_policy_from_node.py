"""``umec policy create --from-node`` (issue 13, part 4): a policy made from a trusted node's
last quote, reviewed, signed and applied through the CLI, pins that node's PCRs: the same node
stays trusted, one changed PCR turns it untrusted. A real `umec server` on SQLite and
PostgreSQL (the ``env`` fixture), nodes with simulated TPMs."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from attest.core.eventlog import parse_event_log
from attest.core.ima.encode import make_entry, to_binary
from attest.core.ima.parse import ImaEntry
from attest.core.ima.replay import template_digest
from attest.core.policy import PolicyInvalid
from attest.core.policy_create import (
    ReferenceLogRejected,
    eventlog_section,
    policy_from_pcrs,
    quoted_pcrs,
    runtime_policy_section,
)
from keys import generate_private_key, save_private_key
from keys.storage import save_public_key
from tests.support.attack_env import Env, trusted
from tests.support.cli import assert_error, clean_env, umec
from tests.support.simagent import SimulatedNode, b64, pcr_body
from tests.support.simtpm import SimulatedTpm


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


# --- with the node's own logs (--event-log, --ima-list), authenticated by its stored quote ---

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "eventlogs"
BOOT_LOG = FIXTURES / "tpm2-tools" / "event-bootorder.bin"
OTHER_LOG = FIXTURES / "tpm2-tools" / "event-postcode.bin"


def _booted(raw: bytes) -> SimulatedTpm:
    """A simulated TPM extended exactly as the firmware logged (EV_NO_ACTION never is)."""
    tpm = SimulatedTpm()
    for event in parse_event_log(raw).events:
        if event.event_type != 3:
            for bank, digest in event.digests.items():
                if bank in ("sha1", "sha256"):
                    tpm.extend_digest(event.pcr, bank, digest)
    return tpm


def _attest_with_log(node: SimulatedNode, log: bytes) -> dict[str, Any]:
    ch = node.challenge()
    resp = node.send(ch["nonce_bytes"], *node.quote(ch), event_log=log)
    assert resp.status_code == 200, resp.text
    verdict: dict[str, Any] = resp.json()
    return verdict


@pytest.mark.skipif(not BOOT_LOG.exists(), reason=f"fixtures absent: {FIXTURES}")
def test_policy_from_a_node_and_its_event_log(env: Env, tmp_path: Path) -> None:
    """The draft allows exactly the digests this boot extended into each quoted PCR and
    requires the log; applied, the node's genuine log keeps it trusted. A log of another boot,
    or a garbled one, is refused with policy.from_node_log and nothing is written."""
    env.server.attest.config.policy_ttl_seconds = 0.0
    raw = BOOT_LOG.read_bytes()
    node = trusted(env, tpm=_booted(raw))
    cli = _cli_env(env, tmp_path)
    boot_log = tmp_path / "binary_bios_measurements"
    boot_log.write_bytes(raw)
    draft = tmp_path / "draft.yaml"
    code, _out, err = umec(["policy", "create", "--from-node", "node-a", "--event-log",
                            str(boot_log), "-o", str(draft)], cli)
    assert code == 0, err
    doc = yaml.safe_load(draft.read_text())
    assert doc["require_event_log"] is True and doc["eventlog"]["bank"] == "sha256"
    extended = {e.pcr for e in parse_event_log(raw).events if e.event_type != 3}
    assert set(doc["eventlog"]["pcrs"]) == extended & {0, 1, 2, 3, 7}
    pcr4_like = min(doc["eventlog"]["pcrs"])
    assert doc["eventlog"]["pcrs"][pcr4_like]["allowed"] == sorted(
        {e.digests["sha256"].hex() for e in parse_event_log(raw).events
         if e.pcr == pcr4_like and e.event_type != 3})
    code, _out, err = umec(["policy", "set", str(draft)], cli)
    assert code == 0, err
    assert _attest_with_log(node, raw)["state"] == "trusted"
    for bad in (OTHER_LOG.read_bytes(), b"\x00" * 64, raw[:-7]):
        boot_log.write_bytes(bad)
        out = tmp_path / "refused.yaml"
        assert_error(umec(["policy", "create", "--from-node", "node-a", "--event-log",
                           str(boot_log), "-o", str(out)], cli), 1, "policy.from_node_log")
        assert not out.exists()
    assert_error(umec(["policy", "create", "--from-node", "node-a", "--event-log",
                       str(tmp_path / "absent")], cli), 1, "policy.from_node_log")
    assert "policy.event_log_required" in [f["check"] for f in node.attest()["failed_checks"]]


def _attest_ima(node: SimulatedNode, ima_list: bytes) -> dict[str, Any]:
    """One round sending the whole IMA list (offset 0), as an agent does after a reboot."""
    ch = node.challenge()
    attest, signature, pcrs = node.quote(ch)
    resp = node.client.post(f"{node.base}/evidence", json={
        "nonce": b64(ch["nonce_bytes"]), "quote": b64(attest), "signature": b64(signature),
        "pcrs": pcr_body(pcrs), "ima_log": b64(ima_list), "ima_offset": 0})
    assert resp.status_code == 200, resp.text
    verdict: dict[str, Any] = resp.json()
    return verdict


def _ima_list(paths: list[str]) -> tuple[list[ImaEntry], bytes]:
    entries = [make_entry("boot_aggregate", bytes(32))]
    entries += [make_entry(p, hashlib.sha256(p.encode()).digest()) for p in paths]
    return entries, b"".join(to_binary(e) for e in entries)


def test_policy_from_a_node_and_its_ima_list(env: Env, tmp_path: Path) -> None:
    """PCR 10 quoted: the IMA list's prefix that replays to it becomes a runtime policy (later
    entries are left out); PCR 10 is selected, not pinned. Applied, the node stays trusted with
    that list and turns untrusted with a changed file. A list of another machine is refused."""
    env.server.attest.config.policy_ttl_seconds = 0.0
    cli = _cli_env(env, tmp_path)
    with_ten = tmp_path / "ten.yaml"
    with_ten.write_text(yaml.safe_dump({"name": "pi-k3s", "selection": {
        "sha256": [0, 7, 10]}, "version": 1}))
    assert umec(["policy", "set", str(with_ten)], cli)[0] == 0
    entries, raw = _ima_list(["/usr/bin/k3s", "/usr/sbin/init"])
    tpm = SimulatedTpm()
    for entry in entries:
        tpm.extend_digest(10, "sha256", hashlib.sha256(entry.data).digest())
    node = trusted(env, tpm=tpm)
    later, _ = _ima_list(["/tmp/measured-after-the-quote"])
    ima = tmp_path / "binary_runtime_measurements"
    ima.write_bytes(raw + to_binary(later[1]))
    draft = tmp_path / "draft.yaml"
    code, _out, err = umec(["policy", "create", "--from-node", "node-a", "--ima-list",
                            str(ima), "-o", str(draft)], cli)
    assert code == 0, err
    doc = yaml.safe_load(draft.read_text())
    assert doc["version"] == 2 and 10 in doc["selection"]["sha256"]
    assert 10 not in doc["pcrs"]["sha256"]
    assert sorted(doc["runtime_policy"]["digests"]) == ["/usr/bin/k3s", "/usr/sbin/init",
                                                         "boot_aggregate"]
    _, foreign = _ima_list(["/usr/bin/k3s", "/usr/bin/evil"])
    ima.write_bytes(foreign)
    assert_error(umec(["policy", "create", "--from-node", "node-a", "--ima-list", str(ima)],
                      cli), 1, "policy.from_node_log")
    assert umec(["policy", "set", str(draft)], cli)[0] == 0
    assert _attest_ima(node, raw)["state"] == "trusted"
    changed = make_entry("/usr/bin/k3s", hashlib.sha256(b"a changed k3s").digest())
    node.tpm.extend_digest(10, "sha256", hashlib.sha256(changed.data).digest())
    verdict = _attest_ima(node, raw + to_binary(changed))
    assert verdict["state"] == "untrusted"
    assert any(f["check"] == "ima.digest_not_allowed" and "/usr/bin/k3s" in f["detail"]
               for f in verdict["failed_checks"])


def test_ima_list_refused_when_pcr_10_was_not_quoted() -> None:
    stored = {"sha256": {"0": "00" * 32}}
    with pytest.raises(ReferenceLogRejected, match="did not cover PCR 10"):
        runtime_policy_section(_ima_list(["/a"])[1], stored)


@given(st.binary(max_size=300))
def test_any_bytes_as_logs_give_a_section_or_a_named_refusal(raw: bytes) -> None:
    """Whatever file the operator passes: a section built only from authenticated entries, or
    ReferenceLogRejected (never another exception)."""
    stored = {"sha256": {"0": "00" * 32, "10": "00" * 32}}
    for make in (eventlog_section, runtime_policy_section):
        with contextlib.suppress(ReferenceLogRejected):
            make(raw, stored)


def test_a_violation_allows_nothing() -> None:
    """An entry whose content IMA could not measure (zero template hash) gives its path no
    digest in the draft: the reviewer decides."""
    entries = [make_entry("boot_aggregate", bytes(32)),
               make_entry("/etc/shadow", bytes(32), violation=True)]
    value = bytes(32)
    for entry in entries:
        value = hashlib.sha256(value + template_digest(entry, "sha256")).digest()
    doc = runtime_policy_section(b"".join(to_binary(e) for e in entries),
                                 {"sha256": {"10": value.hex()}})
    assert sorted(doc["digests"]) == ["boot_aggregate"]
