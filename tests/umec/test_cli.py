"""The ``umec`` command line as an operator uses it: real processes, real swtpm, real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from attest.tpm.device import Tpm
from attest.tpm.swtpm import Swtpm, SwtpmCa
from tests.support.pcr_policy import k3s_policy, pcr_after
from umec.localserver import free_port

UMEC = [sys.executable, "-m", "umec"]
K3S = b"k3s binary for the CLI test"


def run(args: list[str], env: dict[str, str],
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UMEC, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    env.update({"UMEC_DATA_DIR": str(tmp_path / "server"), "UMEC_LOG_LEVEL": "WARNING",
                "COLUMNS": "200"})
    return env


def test_policy_commands(tmp_path: Path, cli_env: dict[str, str]) -> None:
    good = tmp_path / "pi.yaml"
    good.write_text(k3s_policy("ab" * 32))
    assert run(["policy", "set", str(good)], cli_env).returncode == 0
    shown = run(["policy", "show", "pi-k3s"], cli_env)
    assert shown.returncode == 0 and "ab" * 32 in shown.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nselection: {sha256: [0]}\npcrs: {sha256: {0: [nothex]}}\n")
    rejected = run(["policy", "set", str(bad)], cli_env)
    assert rejected.returncode == 1 and "pcrs.sha256.0" in rejected.stderr
    assert "pi-k3s" in run(["policy", "list"], cli_env).stdout
    assert run(["policy", "remove", "pi-k3s"], cli_env).returncode == 0
    assert run(["policy", "show", "pi-k3s"], cli_env).returncode == 1


def test_every_verb_has_help(cli_env: dict[str, str]) -> None:
    for verb in (["server"], ["agent"], ["nodes"], ["policy"], ["policy", "set"], ["demo"]):
        result = run([*verb, "--help"], cli_env)
        assert result.returncode == 0 and "Usage" in result.stdout, verb


@pytest.fixture
def server_proc(tmp_path: Path, cli_env: dict[str, str],
                swtpm_factory: Callable[[str], Swtpm],
                manufacturer_ca: SwtpmCa) -> Iterator[Callable[[], str]]:
    swtpm_factory("node-a")  # the CA exists once a TPM was made
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(manufacturer_ca.certificate_chain_pem())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi.yaml").write_text(k3s_policy(pcr_after(K3S)))
    port = free_port()
    cli_env.update({"UMEC_EK_CA_BUNDLE": str(bundle), "UMEC_POLICY_DIR": str(policies),
                    "UMEC_DEFAULT_NODE_CLASS": "pi-k3s", "UMEC_LISTEN_PORT": str(port)})
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        proc = subprocess.Popen([*UMEC, "server"], env=cli_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"server did not start: {proc.stderr.read() if proc.stderr else ''}")
    yield start
    for p in procs:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=15)


def test_agent_once_exit_codes_and_nodes_listing(tmp_path: Path, cli_env: dict[str, str],
                                                 server_proc: Callable[[], str],
                                                 swtpm_factory: Callable[[str], Swtpm]) -> None:
    url = server_proc()
    tpm = swtpm_factory("node-a")
    k3s = tmp_path / "k3s"
    k3s.write_bytes(K3S)
    agent_env = {**cli_env, "UMEC_SERVER_URL": url, "UMEC_NODE_NAME": "node-a",
                 "UMEC_TCTI": tpm.tcti, "UMEC_AGENT_STATE_DIR": str(tmp_path / "agent"),
                 "UMEC_MEASURE_FILES": json.dumps([str(k3s)]),
                 "UMEC_EVENT_LOG_PATH": str(tmp_path / "no-event-log")}
    ok = run(["agent", "--once"], agent_env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "node-a: trusted" in ok.stdout

    with Tpm(tpm.tcti) as device:
        device.pcr_extend(14, {"sha256": hashlib.sha256(b"other").digest()})
    bad = run(["agent", "--once"], agent_env)
    assert bad.returncode == 1
    assert "policy.pcr_value" in bad.stdout and "untrusted" in bad.stdout

    listing = run(["nodes", "--json"], cli_env)
    nodes = {n["name"]: n for n in json.loads(listing.stdout)}
    assert nodes["node-a"]["state"] == "untrusted"
    table = run(["nodes"], cli_env).stdout
    assert "node-a" in table and "policy.pcr_value" in table


def test_agent_once_fails_cleanly_when_server_is_down(tmp_path: Path,
                                                      cli_env: dict[str, str]) -> None:
    env = {**cli_env, "UMEC_SERVER_URL": f"http://127.0.0.1:{free_port()}",
           "UMEC_NODE_NAME": "node-z", "UMEC_TCTI": "swtpm:host=127.0.0.1,port=1",
           "UMEC_AGENT_STATE_DIR": str(tmp_path / "agent")}
    result = run(["agent", "--once"], env)
    assert result.returncode == 1
    assert "attestation failed" in result.stdout and "Traceback" not in result.stdout


def test_agent_process_refuses_to_start_without_handover(cli_env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "umec.agent_process"], env=cli_env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "umec agent" in result.stderr


def test_agent_requires_node_name(cli_env: dict[str, str]) -> None:
    result = run(["agent", "--once"], cli_env)
    assert result.returncode == 2 and "UMEC_NODE_NAME" in result.stderr
