"""One agent per node: the host agent under systemd, or the DaemonSet, never both (issue 13).

The host agent (``UMEC_AGENT_ROLE=host``, deploy/host/umec-agent.service) writes a marker,
``/var/lib/umec/host-agent.json``, when it starts and before it enrols. The DaemonSet's agent
(``UMEC_AGENT_ROLE=daemonset``) sees the host's ``/var/lib/umec`` read-only and refuses to start
while a marker is there, whatever it holds (an unreadable or garbled marker still means a host
agent was installed): it never enrols a second AK for the same TPM. If it cannot look (the
directory is not mounted), it refuses too: fail closed. An agent started by hand (no role)
neither writes nor checks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from attest.core.errors import HostAgentOwnsNode
from keys.storage import atomic_write

ROLES = ("", "host", "daemonset")
MARKER_MAX_BYTES = 4096


def parse_marker(data: bytes) -> dict[str, Any]:
    """A marker's fields (``node``, ``since``, ``pid``); raise HostAgentOwnsNode if malformed."""
    if len(data) > MARKER_MAX_BYTES:
        raise HostAgentOwnsNode(f"the host agent's marker is {len(data)} bytes, more than "
                                f"{MARKER_MAX_BYTES}")
    try:
        marker = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HostAgentOwnsNode(f"the host agent's marker is not JSON ({exc})") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("node"), str) \
            or not isinstance(marker.get("since"), int | float) \
            or isinstance(marker.get("since"), bool):
        raise HostAgentOwnsNode("the host agent's marker lacks node or since")
    return marker


def claim(marker: Path, node: str) -> None:
    """Host role: say that this node's agent is the host agent (before it enrols)."""
    body = {"owner": "umec-agent.service", "node": node, "since": int(time.time()),
            "pid": os.getpid()}
    marker.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(marker, json.dumps(body).encode() + b"\n", mode=0o644)


def refuse_if_host_owned(marker: Path) -> None:
    """DaemonSet role: raise HostAgentOwnsNode if the host agent owns this node, or if the
    host's directory where its marker would be is not there to look at."""
    if not marker.parent.is_dir():
        raise HostAgentOwnsNode(
            f"{marker.parent} is not mounted: cannot tell whether a host agent owns this node",
            check="agent.host_marker_unmounted",
            hint="mount the host's /var/lib/umec read-only at that path (hostPath, "
                 "type DirectoryOrCreate), as deploy/agent-daemonset.yaml does")
    try:
        data = marker.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HostAgentOwnsNode(f"{marker} exists but cannot be read ({exc.strerror})") from None
    found = parse_marker(data)
    raise HostAgentOwnsNode(f"the host agent (umec-agent.service) owns node {found['node']!r} "
                            f"since {_when(found['since'])} ({marker}); this DaemonSet agent "
                            "does not enrol")


def _when(since: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    except (OverflowError, ValueError, OSError):
        return repr(since)


def check_ownership(role: str, marker: Path, node: str) -> None:
    """At agent startup, before anything touches the TPM or the server."""
    if role == "host":
        claim(marker, node)
    elif role == "daemonset":
        refuse_if_host_owned(marker)
    elif role != "":
        raise HostAgentOwnsNode(f"unknown agent role {role!r}", check="agent.role",
                                hint="set UMEC_AGENT_ROLE to host, daemonset or leave it unset")


__all__ = ["ROLES", "check_ownership", "claim", "parse_marker", "refuse_if_host_owned"]
