"""One agent per node (issue 13): the DaemonSet's agent refuses a node the host agent owns.

Unit tests of attest.host_owner on files under tmp_path, a hypothesis test of the marker parser,
and `umec agent` run as a process (the CLI, the exec'd agent process) with the DaemonSet's role
against a real HTTP server on loopback: it exits 2 with one line on stderr and never sends a
request or creates an AK.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attest.core.errors import HostAgentOwnsNode
from attest.host_owner import check_ownership, claim, parse_marker, refuse_if_host_owned

REPO = Path(__file__).resolve().parents[2]


def test_host_agent_claims_the_node_before_it_enrols(tmp_path: Path) -> None:
    marker = tmp_path / "umec" / "host-agent.json"
    marker.parent.mkdir()
    check_ownership("host", marker, "pi-01")
    found = parse_marker(marker.read_bytes())
    assert found["node"] == "pi-01" and found["owner"] == "umec-agent.service"
    assert marker.stat().st_mode & 0o777 == 0o644


def test_daemonset_agent_refuses_a_node_the_host_agent_owns(tmp_path: Path) -> None:
    marker = tmp_path / "host" / "var-lib-umec" / "host-agent.json"
    marker.parent.mkdir(parents=True)
    claim(marker, "pi-01")
    with pytest.raises(HostAgentOwnsNode) as caught:
        check_ownership("daemonset", marker, "pi-01")
    assert caught.value.check == "agent.host_owned"
    assert "pi-01" in str(caught.value) and "kubectl label node" in caught.value.hint


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"node": "x"}', b"\xff\xfe",
                                  b'{"node": "x", "since": true}', b" " * 5000])
def test_a_garbled_marker_still_means_the_host_agent_owns_the_node(tmp_path: Path,
                                                                   body: bytes) -> None:
    marker = tmp_path / "host-agent.json"
    marker.write_bytes(body)
    with pytest.raises(HostAgentOwnsNode) as caught:
        refuse_if_host_owned(marker)
    assert caught.value.check == "agent.host_owned"


def test_an_unreadable_marker_still_means_the_host_agent_owns_the_node(tmp_path: Path) -> None:
    marker = tmp_path / "host-agent.json"
    marker.mkdir()  # exists, but reading it fails (EISDIR): as root, chmod would not stop it
    with pytest.raises(HostAgentOwnsNode):
        refuse_if_host_owned(marker)


def test_daemonset_agent_runs_where_there_is_no_host_agent(tmp_path: Path) -> None:
    check_ownership("daemonset", tmp_path / "host-agent.json", "pi-01")


def test_daemonset_agent_refuses_when_it_cannot_look(tmp_path: Path) -> None:
    with pytest.raises(HostAgentOwnsNode) as caught:
        check_ownership("daemonset", tmp_path / "not-mounted" / "host-agent.json", "pi-01")
    assert caught.value.check == "agent.host_marker_unmounted"


def test_no_role_neither_claims_nor_checks(tmp_path: Path) -> None:
    marker = tmp_path / "host-agent.json"
    marker.write_text("{}")
    check_ownership("", marker, "pi-01")
    assert marker.read_text() == "{}"
    with pytest.raises(HostAgentOwnsNode) as caught:
        check_ownership("sidecar", marker, "pi-01")
    assert caught.value.check == "agent.role"


@given(st.binary(max_size=300) | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(
    st.sampled_from(["node", "since", "pid", "owner"]),
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10))))
def test_parse_marker_returns_fields_or_a_typed_error(data: bytes) -> None:
    try:
        found = parse_marker(data)
    except HostAgentOwnsNode:
        return
    assert isinstance(found["node"], str)
    assert isinstance(found["since"], int | float) and not isinstance(found["since"], bool)


class _Counting(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def _any(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.send_response(503)
        self.end_headers()

    do_GET = do_POST = _any

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Counting,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def _umec_agent(tmp_path: Path, url: str, role: str, marker: Path,
                once: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UMEC_")}
    env.update({"UMEC_NODE_NAME": "pi-01", "UMEC_SERVER_URL": url, "UMEC_AGENT_ROLE": role,
                "UMEC_HOST_AGENT_MARKER": str(marker), "UMEC_TCTI": "swtpm:port=1",
                "UMEC_AGENT_STATE_DIR": str(tmp_path / "state"),
                "UMEC_EVENT_LOG_PATH": str(tmp_path / "no-event-log")})
    return subprocess.run([sys.executable, "-m", "umec", "agent", *(["--once"] if once else [])],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize("once", [True, False])
def test_umec_agent_as_daemonset_refuses_to_enrol_on_a_host_agent_node(
        tmp_path: Path, server: tuple[str, list[str]], once: bool) -> None:
    url, seen = server
    marker = tmp_path / "host" / "host-agent.json"
    marker.parent.mkdir()
    claim(marker, "pi-01")
    proc = _umec_agent(tmp_path, url, "daemonset", marker, once)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "agent.host_owned" in lines[0] and "what to do:" in lines[0]
    assert seen == []  # never enrolled: not one request reached the server
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_umec_agent_as_daemonset_goes_on_where_no_host_agent_runs(
        tmp_path: Path, server: tuple[str, list[str]]) -> None:
    """The same run without a marker gets past the check (and fails later, at the TPM)."""
    url, _ = server
    marker = tmp_path / "host" / "host-agent.json"
    marker.parent.mkdir()
    proc = _umec_agent(tmp_path, url, "daemonset", marker, once=True)
    assert "agent.host_owned" not in proc.stderr + proc.stdout
    assert proc.returncode == 1, proc.stderr  # no TPM at swtpm:port=1
