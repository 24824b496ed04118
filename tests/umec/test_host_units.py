"""The host agent's systemd units (deploy/host, issue 13): hardening, ordering and the join gate.

The units are parsed here and their keys checked; ``systemd-analyze verify`` (systemd 252, as on
Debian bookworm and Raspberry Pi OS) loads them in a throw-away root next to a k3s-agent unit as
k3s's installer writes it (skipped, with the reason, where systemd-analyze is absent); and the
join gate's command is run for real against a token file under tmp_path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

HOST = Path(__file__).resolve().parents[2] / "deploy" / "host"
AGENT = HOST / "umec-agent.service"
JOIN = HOST / "umec-agent-join.service"
DROPIN = HOST / "k3s-agent.service.d" / "10-umec.conf"
TOKEN_FILE = "/etc/rancher/k3s/config.yaml.d/90-umec-token.yaml"
# Keys systemd 252 (bookworm) does not know: it warns and ignores them, so they must not be
# relied on in the shipped unit (RestartSteps/RestartMaxDelaySec came in 254).
NEWER_THAN_252 = {"RestartSteps", "RestartMaxDelaySec"}
K3S_AGENT_UNIT = """[Unit]
Description=Lightweight Kubernetes
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-/etc/systemd/system/k3s-agent.service.env
KillMode=process
Delegate=yes
ExecStart=/usr/local/bin/k3s agent
Restart=always
RestartSec=5s

[Install]
WantedBy=multi-user.target
"""

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """A systemd unit file as sections of (key, value) in order (keys may repeat)."""
    unit: Unit = {}
    section: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.setdefault(section, [])
            continue
        key, sep, value = line.partition("=")
        if section is None or not sep or not key.strip():
            raise ValueError(f"not a unit line: {raw!r}")
        unit[section].append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: {found}"
    return found[0]


def env(unit: Unit) -> dict[str, str]:
    return dict(v.split("=", 1) for v in values(unit, "Service", "Environment"))


@pytest.fixture(scope="module")
def agent() -> Unit:
    return parse_unit(AGENT.read_text())


@pytest.fixture(scope="module")
def join() -> Unit:
    return parse_unit(JOIN.read_text())


@pytest.fixture(scope="module")
def dropin() -> Unit:
    return parse_unit(DROPIN.read_text())


def test_agent_unit_is_hardened(agent: Unit) -> None:
    expected = {"DevicePolicy": "closed", "DeviceAllow": "/dev/tpmrm0 rw",
                "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
                "PrivateTmp": "yes", "StateDirectory": "umec", "StateDirectoryMode": "0700",
                "CapabilityBoundingSet": "", "UMask": "0077", "Restart": "on-failure",
                "ExecStart": "/opt/umec-agent/bin/umec agent"}
    for key, value in expected.items():
        assert one(agent, "Service", key) == value, key
    # The TPM must stay visible: PrivateDevices=yes would hide /dev/tpmrm0.
    assert values(agent, "Service", "PrivateDevices") in ([], ["no"])
    # No writable path besides the state directory and where the join token goes.
    assert values(agent, "Service", "ReadWritePaths") == [str(Path(TOKEN_FILE).parent)]


def test_agent_unit_restarts_with_backoff_systemd_252_understands(agent: Unit) -> None:
    assert re.fullmatch(r"\d+s?", one(agent, "Service", "RestartSec"))
    assert int(one(agent, "Unit", "StartLimitIntervalSec")) >= 60
    assert int(one(agent, "Unit", "StartLimitBurst")) >= 3
    assert one(agent, "Service", "RestartPreventExitStatus") == "2"  # misconfigured
    used = {k for entries in agent.values() for k, _ in entries}
    assert not used & NEWER_THAN_252


def test_agent_runs_as_the_host_agent_before_k3s(agent: Unit) -> None:
    assert "k3s-agent.service" in one(agent, "Unit", "Before").split()
    variables = env(agent)
    assert variables["UMEC_AGENT_ROLE"] == "host"
    assert variables["UMEC_AGENT_STATE_DIR"] == "/var/lib/umec"
    assert variables["UMEC_HOST_AGENT_MARKER"].startswith("/var/lib/umec/")
    assert variables["UMEC_AGENT_JOIN_TOKEN_PATH"] == TOKEN_FILE
    # An earlier boot's token is gone before the agent (and the gate after it) starts.
    assert one(agent, "Service", "ExecStartPre") == f"/bin/rm -f {TOKEN_FILE}"
    assert one(agent, "Service", "EnvironmentFile") == "/etc/umec/agent.env"
    assert one(agent, "Install", "WantedBy") == "multi-user.target"


def _setting_variables() -> set[str]:
    from umec.settings import Settings
    return {f"UMEC_{name.upper()}" for name in Settings.model_fields} | {"UMEC_CONFIG"}


def test_every_umec_variable_the_package_sets_is_a_setting(agent: Unit) -> None:
    """A misspelt UMEC_* is ignored by the settings loader, silently: the unit's join token
    path once was (UMEC_JOIN_TOKEN_PATH), and the host agent fetched no token at all."""
    from scripts.imagebuild.agentdeb import AGENT_ENV
    example = re.findall(r"^#?(UMEC_[A-Z0-9_]+)=", AGENT_ENV, re.M)
    named = {k for k in env(agent) if k.startswith("UMEC_")} | set(example)
    assert named - _setting_variables() == set()
    assert {"UMEC_SERVER_URL", "UMEC_SERVER_CA", "UMEC_TCTI", "UMEC_NODE_NAME"} <= set(example)


def test_the_units_environment_reaches_the_agents_settings(
        agent: Unit, monkeypatch: pytest.MonkeyPatch) -> None:
    from umec.settings import Settings
    monkeypatch.delenv("UMEC_CONFIG", raising=False)
    for key, value in env(agent).items():
        if key.startswith("UMEC_"):
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.agent_join_token_path == Path(TOKEN_FILE)
    assert settings.agent_role == "host"
    assert settings.agent_state_dir == Path("/var/lib/umec")
    assert settings.tcti == "device:/dev/tpmrm0"


def test_k3s_agent_starts_only_after_the_join_gate(dropin: Unit, join: Unit) -> None:
    assert "umec-agent-join.service" in one(dropin, "Unit", "Requires").split()
    assert "umec-agent-join.service" in one(dropin, "Unit", "After").split()
    # k3s reads the token from config.yaml.d itself: the drop-in only orders and requires.
    assert "Service" not in dropin
    assert one(join, "Service", "Type") == "oneshot"
    assert one(join, "Service", "RemainAfterExit") == "yes"
    assert one(join, "Service", "TimeoutStartSec") == "infinity"
    assert TOKEN_FILE in one(join, "Service", "ExecStart")
    assert "k3s-agent.service" in one(join, "Unit", "Before").split()
    assert "umec-agent.service" in one(join, "Unit", "After").split()


def _gate_command(join: Unit, token: Path) -> list[str]:
    command = one(join, "Service", "ExecStart").replace(TOKEN_FILE, str(token))
    assert command.startswith("/bin/sh -c '") and command.endswith("'")
    return ["/bin/sh", "-c", command[len("/bin/sh -c '"):-1]]


def test_join_gate_waits_for_a_non_empty_token_file(join: Unit, tmp_path: Path) -> None:
    token = tmp_path / "90-umec-token.yaml"
    gate = subprocess.Popen(_gate_command(join, token))
    try:
        time.sleep(1.5)
        assert gate.poll() is None, "the gate finished without a token"
        token.touch()  # an empty file is not a token
        time.sleep(1.5)
        assert gate.poll() is None, "the gate finished on an empty token file"
        token.write_text("token: K10abc::abcdef.0123456789abcdef\n")
        assert gate.wait(timeout=5) == 0
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait()


def _root(tmp_path: Path) -> Path:
    """A file-system root with the host's stock units, ours as the .deb installs them, k3s's."""
    root = tmp_path / "root"
    for rel in ("opt/umec-agent/bin", "etc/systemd/system/k3s-agent.service.d", "usr/lib/systemd",
                "usr/local/bin", "usr/bin"):
        (root / rel).mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "bin").symlink_to("usr/bin")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for unit in (AGENT, JOIN):
        shutil.copy(unit, root / "usr/lib/systemd/system" / unit.name)
    shutil.copy(DROPIN, root / "etc/systemd/system/k3s-agent.service.d" / DROPIN.name)
    (root / "etc/systemd/system/k3s-agent.service").write_text(K3S_AGENT_UNIT)
    for exe in ("opt/umec-agent/bin/umec", "usr/local/bin/k3s", "usr/bin/sh", "usr/bin/rm"):
        (root / exe).write_text("#!/bin/sh\n")
        (root / exe).chmod(0o755)
    return root


def _verify(root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def verify_root(tmp_path: Path) -> Path:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    if not Path("/usr/lib/systemd/system/sysinit.target").exists():
        pytest.skip("no stock systemd units in /usr/lib/systemd/system to verify against")
    return _root(tmp_path)


def test_systemd_analyze_verify_accepts_the_units(verify_root: Path) -> None:
    proc = _verify(verify_root, "umec-agent.service", "umec-agent-join.service",
                   "k3s-agent.service")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # not even a warning (unknown keys warn)


def test_systemd_analyze_warns_on_keys_newer_than_this_systemd(verify_root: Path) -> None:
    """The check above would see a key this systemd does not know (here: 252 and RestartSteps)."""
    version = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True,
                             check=True).stdout.split()[1]
    if int(version) >= 254:
        pytest.skip(f"systemd {version} knows RestartSteps")
    unit = verify_root / "usr/lib/systemd/system/umec-agent.service"
    unit.write_text(unit.read_text().replace("[Install]", "RestartSteps=5\n[Install]"))
    proc = _verify(verify_root, "umec-agent.service")
    assert "Unknown key 'RestartSteps'" in proc.stderr


_KEY = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,15}", fullmatch=True)
_VALUE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85"
                                                               "\u2028\u2029"),
                 max_size=30).map(str.strip)


@given(st.dictionaries(_KEY, st.lists(st.tuples(_KEY, _VALUE), max_size=5), max_size=4))
def test_parse_unit_round_trips(unit: Unit) -> None:
    text = "".join(f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in entries)
                   for name, entries in unit.items())
    assert parse_unit(text) == unit


@given(st.text(max_size=200))
def test_parse_unit_takes_any_text_or_refuses_it(text: str) -> None:
    try:
        parsed = parse_unit(text)
    except ValueError:
        return
    assert all(isinstance(k, str) and k for entries in parsed.values() for k, _ in entries)


def test_parse_unit_refuses_a_key_outside_a_section() -> None:
    with pytest.raises(ValueError):
        parse_unit("Restart=always\n[Service]\n")
