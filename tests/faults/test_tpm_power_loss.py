"""Power loss on a node (issue 9 point 6): swtpm SIGKILLed in and around quotes, real server.

A Raspberry Pi loses power without TPM2_Shutdown. If the key the agent had just used is
DA-protected, the TPM counts that at the next TPM2_Startup as an authorisation failure; swtpm
locks out after 3 and refuses to quote for 1000 s. The agent's AK carries noDA, so:

* killed mid-quote five times in a row, the node recovers each time with TPM_PT_LOCKOUT_COUNTER 0;
* the counter does rise under the same power cuts with the same template minus noDA (the control
  that shows these cuts do count, and that fails if noDA leaves the agent's template);
* a TPM that is locked out anyway (an AK from before noDA) is named as such: one error per round,
  the next round only after the TPM's own recovery time, ``umec agent --once`` exits 3 with one
  line on stderr, and the documented ``tpm2_dictionarylockout --clear-lockout`` brings it back.

Run alone with ``pytest -m faults``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from attest.agent import Agent, AgentConfig
from attest.tpm.device import Tpm, TpmCommandFailed, TpmLockedOut
from attest.tpm.swtpm import Swtpm, SwtpmCa
from tests.support.dictionary_attack import da_state, power_cut, power_cycle, write_legacy_ak
from tests.support.pcr_policy import k3s_policy, pcr_after
from umec.app import build_server
from umec.localserver import ServerThread
from umec.settings import Settings

pytestmark = [pytest.mark.swtpm, pytest.mark.faults]
K3S = b"k3s binary on a Pi that loses power"
NODE = "pi-pole-7"


@dataclass
class Site:
    """One server and one node's swtpm; ``client`` carries the operator token."""

    url: str
    client: httpx.Client
    tpm: Swtpm
    k3s: Path


@pytest.fixture
def site(tmp_path: Path, manufacturer_ca: SwtpmCa,
         swtpm_factory: Callable[[str], Swtpm]) -> Iterator[Site]:
    tpm = swtpm_factory("power-loss")  # a private copy: these tests lock TPMs out
    bundle = tmp_path / "ek-ca.pem"
    bundle.write_bytes(manufacturer_ca.certificate_chain_pem())
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "pi-k3s.yaml").write_text(k3s_policy(pcr_after(K3S)))
    k3s = tmp_path / "k3s"
    k3s.write_bytes(K3S)
    server = build_server(Settings(data_dir=tmp_path / "server", ek_ca_bundle=bundle,
                                   policy_dir=policies, default_node_class="pi-k3s"))
    http = ServerThread(server.app).start()
    client = httpx.Client(base_url=http.url, timeout=30,
                          headers={"Authorization": f"Bearer {server.operator_token}"})
    try:
        yield Site(http.url, client, tpm, k3s)
    finally:
        client.close()
        http.stop()


class PowerCut:
    """Arms one power cut at the agent's next TPM2_Quote: ``during`` it (swtpm is killed from
    another thread while the command runs) or ``after`` it (the TPM signed, so the AK's
    authorisation was checked, and the agent is about to read the PCRs)."""

    def __init__(self, sw: Swtpm) -> None:
        self.sw = sw
        self.when: str | None = None

    def quote(self, call: Callable[[], Any]) -> Any:
        when, self.when = self.when, None
        if when == "during":
            killer = threading.Thread(target=power_cut, args=(self.sw,))
            killer.start()
            try:
                return call()
            finally:
                killer.join()
        result = call()
        if when == "after":
            power_cut(self.sw)
        return result


class PowerCutTpm(Tpm):
    def __init__(self, tcti: str, cut: PowerCut, **kwargs: Any) -> None:
        super().__init__(tcti, **kwargs)
        self.cut = cut

    def _call(self, command: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if command != "Quote" or self.cut.when is None:
            return super()._call(command, fn, *args, **kwargs)
        return self.cut.quote(lambda: super(PowerCutTpm, self)._call(command, fn, *args,
                                                                     **kwargs))


def make_agent(site: Site, state_dir: Path, cut: PowerCut | None = None) -> Agent:
    """The real agent (RSA EK, ECC AK: the defaults), following swtpm to its new port."""
    config = AgentConfig(node_name=NODE, tcti=site.tpm.tcti, state_dir=state_dir,
                         measure_files=[site.k3s])

    def open_tpm() -> Tpm:
        if cut is None:
            return Tpm(site.tpm.tcti, ek_kind=config.ek_kind)
        return PowerCutTpm(site.tpm.tcti, cut, ek_kind=config.ek_kind)
    return Agent(config, site.client, open_tpm=open_tpm)


def assert_trusted(site: Site, verdict: dict[str, Any]) -> None:
    assert verdict["state"] == "trusted" and verdict["trusted"] is True, verdict
    assert verdict["failed_checks"] == []
    assert site.client.get(f"/attest/v1/nodes/{NODE}").json()["state"] == "trusted"


def test_swtpm_killed_mid_quote_five_times_node_recovers_without_lockout(
        site: Site, tmp_path: Path) -> None:
    cut = PowerCut(site.tpm)
    agent = make_agent(site, tmp_path / "agent", cut)
    assert_trusted(site, agent.attest_once())
    assert da_state(site.tpm).counter == 0
    for when in ("after", "during", "after-round", "after", "during"):
        if when == "after-round":  # a whole round, then the power goes before any shutdown
            assert_trusted(site, agent.attest_once())
            power_cut(site.tpm)
        else:
            cut.when = when
            # The TPM goes away inside the round: the round is lost, nothing else.
            with contextlib.suppress(TpmCommandFailed):
                agent.attest_once()
            assert cut.when is None and not site.tpm.running, "the power cut did not happen"
        power_cycle(site.tpm)  # the power comes back: TPM2_Startup(CLEAR) on the same state
        da = da_state(site.tpm)
        assert da.counter == 0 and not da.locked_out, (when, da)
        verdict = agent.attest_once()  # the next round: a fresh, valid quote after the reboot
        assert_trusted(site, verdict)
        assert verdict["rebooted"] is True
    assert da_state(site.tpm).counter == 0


def _quote_then_power_cycle(sw: Swtpm, state_dir: Path) -> int:
    with Tpm(sw.tcti, ek_kind="rsa") as t:
        t.load_or_create_ak(state_dir, "ecc")
        t.quote(os.urandom(16), {"sha256": [0, 14]})
    power_cycle(sw)
    return da_state(sw).counter


def test_power_cuts_count_only_for_an_ak_without_noda(swtpm_factory: Callable[[str], Swtpm],
                                                      tmp_path: Path) -> None:
    sw = swtpm_factory("power-loss")
    # The agent's own AK (attest.tpm.templates.ak_template via load_or_create_ak): never counts.
    assert [_quote_then_power_cycle(sw, tmp_path / "agent") for _ in range(4)] == [0, 0, 0, 0]
    # The same template without noDA, same cuts: each one counts, and the third locks out.
    write_legacy_ak(sw, tmp_path / "legacy", ek_kind="rsa")
    assert [_quote_then_power_cycle(sw, tmp_path / "legacy") for _ in range(3)] == [1, 2, 3]
    with Tpm(sw.tcti, ek_kind="rsa") as t, pytest.raises(TpmLockedOut):
        t.load_or_create_ak(tmp_path / "legacy", "ecc")
        t.quote(os.urandom(16), {"sha256": [0]})
    assert _quote_then_power_cycle(sw, tmp_path / "agent") == 3  # ours still quotes


class RecordingStop(threading.Event):
    """The run loop's stop event, recording how long each round asked to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return False


def _agent_once(site: Site, state_dir: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    env.update({"UMEC_DATA_DIR": str(tmp_path / "cli"), "UMEC_LOG_LEVEL": "WARNING",
                "UMEC_SERVER_URL": site.url, "UMEC_NODE_NAME": NODE,
                "UMEC_TCTI": site.tpm.tcti, "UMEC_AGENT_STATE_DIR": str(state_dir),
                "UMEC_MEASURE_FILES": json.dumps([str(site.k3s)]),
                "UMEC_EVENT_LOG_PATH": str(tmp_path / "no-event-log")})
    return subprocess.run([sys.executable, "-m", "umec", "agent", "--once"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_locked_out_tpm_is_named_waited_out_and_exits_3(
        site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "agent"
    write_legacy_ak(site.tpm, state, ek_kind="rsa")  # enrolled by an agent from before noDA
    agent = make_agent(site, state)
    for expected in (1, 2, 3):  # three power losses after a good round: swtpm's limit
        assert_trusted(site, agent.attest_once())
        power_cycle(site.tpm)
        assert da_state(site.tpm).counter == expected
    warnings = [r for r in caplog.records if getattr(r, "check", "") == "tpm.ak_no_da"]
    assert len(warnings) == 1, "the old AK is named once per process, not every round"
    for words in ("without noDA", f"umec nodes remove {NODE}", "ak-ecc.priv", "enrolled.json"):
        assert words in warnings[0].getMessage(), words
    assert da_state(site.tpm).locked_out

    # The long-running agent: one error per round naming the lockout, then it waits the TPM out.
    caplog.clear()
    stop = RecordingStop()
    agent.run(stop, rounds=2)
    assert stop.waits == [1000.0, 1000.0]  # TPM_PT_LOCKOUT_INTERVAL, not the 30 s cadence
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.levelno for r in errors] == [logging.ERROR, logging.ERROR]
    for record in errors:
        assert getattr(record, "check", "") == "tpm.lockout"
        assert getattr(record, "recovers_in", None) == 1000
        assert "tpm2_dictionarylockout --clear-lockout" in getattr(record, "error", "")

    # `umec agent --once`: exit code 3 and one plain line on stderr (the rest are our JSON logs
    # and the TSS library's own "LEVEL:esys:…" lines).
    once = _agent_once(site, state, tmp_path)
    assert once.returncode == 3, once.stdout + once.stderr
    plain = [line for line in once.stderr.splitlines()
             if not line.startswith("{") and ":esys:" not in line]
    assert len(plain) == 1, once.stderr
    for words in ("TPM_RC_LOCKOUT", "dictionary-attack", "in lockout", "1000 s",
                  "tpm2_dictionarylockout --clear-lockout", NODE):
        assert words in plain[0], words
    assert "Traceback" not in once.stderr
    assert any(json.loads(line).get("check") == "tpm.ak_no_da"
               for line in once.stderr.splitlines() if line.startswith("{"))

    # The documented way out: clear the lockout; the same agent attests at once.
    subprocess.run(["tpm2_dictionarylockout", "--tcti", site.tpm.tcti, "--clear-lockout"],
                   check=True, capture_output=True)
    assert da_state(site.tpm).counter == 0
    assert_trusted(site, agent.attest_once())
    assert _agent_once(site, state, tmp_path).returncode == 0
