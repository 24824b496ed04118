"""IMA runtime integrity end to end (issue 13): a swtpm node whose PCR 10 is extended exactly as
the kernel does for each template (ima, ima-ng, ima-sig, ima-buf and a violation, in both the
sha1 and sha256 banks), the real agent sending the list incrementally, the real server
replaying it. A file changed after boot turns the node untrusted, its path in the event."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from attest.agent import Agent, AgentConfig
from attest.core.ima.encode import make_entry, to_binary
from attest.core.ima.parse import ImaEntry
from attest.core.ima.policy import keylime_policy
from attest.core.ima.replay import template_digest
from attest.tpm.device import Tpm
from attest.tpm.swtpm import Swtpm, SwtpmCa
from umec.app import build_server
from umec.localserver import ServerThread
from umec.settings import Settings

pytestmark = pytest.mark.swtpm
FILES = {f"/usr/bin/{n}": hashlib.sha256(n.encode()).digest() for n in ("k3s", "sh", "ls")}
CERT = b"0\x82 the .ima signing certificate"
BOOT_AGGREGATE = hashlib.sha256(b"pcrs 0-9").digest()


def _policy() -> str:
    digests = {p: [d.hex()] for p, d in FILES.items()}
    digests["boot_aggregate"] = [BOOT_AGGREGATE.hex()]
    digests["/usr/lib/old.so"] = [hashlib.sha1(b"old").hexdigest()]
    runtime = keylime_policy(digests, excludes=["/var/log/.*"],
                             keyrings={".ima": [hashlib.sha256(CERT).hexdigest()]})
    return yaml.safe_dump({"name": "pi-ima", "selection": {"sha1": [10], "sha256": [0, 10]},
                           "runtime_policy": json.dumps(runtime)})


def _boot_entries() -> list[ImaEntry]:
    return [
        make_entry("boot_aggregate", BOOT_AGGREGATE),
        make_entry(".ima", hashlib.sha256(CERT).digest(), template="ima-buf", extra=CERT),
        make_entry("/usr/bin/k3s", FILES["/usr/bin/k3s"]),
        make_entry("/usr/lib/old.so", hashlib.sha1(b"old").digest(), template="ima"),
        make_entry("/usr/bin/sh", FILES["/usr/bin/sh"], template="ima-sig", extra=b"\x03\x02s"),
        make_entry("/var/log/syslog", bytes(32), violation=True),  # ToMToU: all-ones in PCRs
    ]


class ImaNode:
    """The kernel's side: append to the measurement list and extend PCR 10 in every bank."""

    def __init__(self, tpm: Swtpm, log: Path) -> None:
        self.tpm, self.log = tpm, log
        log.write_bytes(b"")

    def measure(self, *entries: ImaEntry) -> None:
        with Tpm(self.tpm.tcti) as tpm:
            for entry in entries:
                tpm.pcr_extend(10, {b: template_digest(entry, b) for b in ("sha1", "sha256")})
        with self.log.open("ab") as out:
            out.write(b"".join(to_binary(e) for e in entries))


@pytest.fixture
def plane(tmp_path: Path, manufacturer_ca: SwtpmCa,
          swtpm_factory: Callable[[str], Swtpm]) -> Iterator[httpx.Client]:
    swtpm_factory("node-a")
    bundle = tmp_path / "ek-ca.pem"
    bundle.write_bytes(manufacturer_ca.certificate_chain_pem())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-ima.yaml").write_text(_policy())
    server = build_server(Settings(data_dir=tmp_path / "server", ek_ca_bundle=bundle,
                                   policy_dir=policies, default_node_class="pi-ima"))
    http = ServerThread(server.app).start()
    client = httpx.Client(base_url=http.url, timeout=30,
                          headers={"Authorization": f"Bearer {server.operator_token}"})
    yield client
    client.close()
    http.stop()


def test_ima_trusted_then_a_changed_file_turns_the_node_untrusted(
        tmp_path: Path, plane: httpx.Client, swtpm_factory: Callable[[str], Swtpm]) -> None:
    tpm = swtpm_factory("node-a")
    node = ImaNode(tpm, tmp_path / "binary_runtime_measurements")
    node.measure(*_boot_entries())
    agent = Agent(AgentConfig(node_name="node-a", tcti=tpm.tcti, state_dir=tmp_path / "a",
                              ima_log_path=node.log), plane)

    verdict = agent.attest_once()
    assert verdict["trusted"], verdict["reason"]
    assert agent.ima_offset == 6

    node.measure(make_entry("/usr/bin/ls", FILES["/usr/bin/ls"]))  # an allowed new entry
    verdict = agent.attest_once()
    assert verdict["trusted"] and agent.ima_offset == 7

    # The agent lost its place: the verifier names the offset, the agent re-sends from it.
    agent.ima_offset = 2
    assert agent.attest_once()["trusted"] and agent.ima_offset == 7

    # /usr/bin/k3s is replaced after boot: the kernel measures the new content.
    evil = hashlib.sha256(b"k3s with a backdoor").digest()
    node.measure(make_entry("/usr/bin/k3s", evil))
    verdict = agent.attest_once()
    assert not verdict["trusted"] and verdict["state"] == "untrusted"
    (failure,) = verdict["failed_checks"]
    assert failure["check"] == "ima.digest_not_allowed"
    assert "/usr/bin/k3s" in failure["detail"] and evil.hex() in failure["detail"]
    assert agent.ima_offset == 7  # not accepted past the failing entry: appraised again
    assert not agent.attest_once()["trusted"]

    events = plane.get("/attest/v1/nodes/node-a").json()
    assert "/usr/bin/k3s" in json.dumps(events)


def test_a_list_that_hides_an_entry_is_untrusted(
        tmp_path: Path, plane: httpx.Client, swtpm_factory: Callable[[str], Swtpm]) -> None:
    tpm = swtpm_factory("node-a")
    node = ImaNode(tpm, tmp_path / "binary_runtime_measurements")
    node.measure(*_boot_entries(), make_entry("/tmp/dropper", b"\x07" * 32))
    forged = tmp_path / "forged"  # what a compromised agent sends: the dropper left out
    forged.write_bytes(b"".join(to_binary(e) for e in _boot_entries()))
    agent = Agent(AgentConfig(node_name="node-a", tcti=tpm.tcti, state_dir=tmp_path / "a",
                              ima_log_path=forged), plane)
    verdict = agent.attest_once()
    assert not verdict["trusted"]
    assert [f["check"] for f in verdict["failed_checks"]] == ["ima.replay"]
