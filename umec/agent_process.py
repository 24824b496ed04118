"""The long-running node agent process: only what an attestation round needs.

``umec agent`` validates its settings (pydantic-settings, typer) and then replaces itself with
this module (``exec``, same PID), handing over the validated configuration in one environment
variable. The process that keeps running on every Raspberry Pi therefore carries neither the CLI
framework nor the settings library: about 15 MiB of its 60 MB budget.

Exit codes of ``umec agent --once``: 0 the node is trusted; 1 it is not, or the round failed (the
failed checks or the error are printed); 2 the agent is misconfigured (settings, no handover)
or must not run here (a DaemonSet agent on a node the host agent owns: one line on stderr,
``agent.host_owned``; also without ``--once``, so it never enrols);
3 the TPM is in dictionary-attack lockout (TPM_RC_LOCKOUT): one line on stderr says so, when it
recovers and how to clear it; attesting again before then cannot succeed.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

HANDOVER = "_UMEC_AGENT_CONFIG"  # not UMEC_*: it is not a setting anyone should set
EXIT_TPM_LOCKED_OUT = 3


def handover(config: dict[str, Any], *, once: bool) -> None:
    """Replace the current process with the agent process (does not return)."""
    env = dict(os.environ)
    env[HANDOVER] = json.dumps({**config, "once": once})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "umec.agent_process"], env)


def _agent_config(raw: dict[str, Any]) -> Any:
    from attest.agent import AgentConfig
    return AgentConfig(
        node_name=raw["node_name"], tcti=raw["tcti"], state_dir=Path(raw["state_dir"]),
        ak_kind=raw["ak_kind"], ek_kind=raw["ek_kind"], node_class=raw["node_class"],
        interval_seconds=raw["interval_seconds"],
        event_log_path=Path(raw["event_log_path"]) if raw["event_log_path"] else None,
        measure_files=[Path(p) for p in raw["measure_files"]],
        application_pcr=raw["application_pcr"],
        join_token_path=Path(raw["join_token_path"]) if raw.get("join_token_path") else None)


def _attest_and_join(agent: Any) -> dict[str, Any]:
    """One round; with a join token path, a trusted node's k3s token is written before the
    verdict is reported (a failed join raises like a failed round)."""
    verdict: dict[str, Any] = agent.attest_once()
    if agent.config.join_token_path is not None and verdict.get("trusted"):
        agent.join_once(verdict)
    return verdict


def main() -> int:
    # httpx would import its CLI (rich, pygments, click: ~4 MiB) that the agent never runs.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    import httpx

    from attest.agent import Agent, AgentError
    from attest.core.errors import HostAgentOwnsNode
    from attest.host_owner import check_ownership
    from attest.tpm.device import TpmLockedOut
    from umec.logs import configure_logging

    try:
        raw = json.loads(os.environ.pop(HANDOVER))
    except (KeyError, ValueError):
        print("umec.agent_process is started by `umec agent`, not directly", file=sys.stderr)
        return 2
    configure_logging(raw["log_level"])
    cfg = _agent_config(raw)
    try:  # one agent per node (attest.host_owner): before the TPM or the server is touched
        check_ownership(raw.get("agent_role", ""), Path(raw.get("host_agent_marker", "")),
                        cfg.node_name)
    except HostAgentOwnsNode as exc:
        print(f"umec agent: {exc}; what to do: {exc.hint}", file=sys.stderr)
        return 2
    verify: bool | str = raw["server_ca"] or True
    with httpx.Client(base_url=raw["server_url"], timeout=15.0, verify=verify) as client:
        agent = Agent(cfg, client)
        if not raw["once"]:
            agent.run(threading.Event())
            return 0
        try:
            verdict = _attest_and_join(agent)
        except TpmLockedOut as exc:
            print(f"{cfg.node_name}: {exc}", file=sys.stderr)
            return EXIT_TPM_LOCKED_OUT
        except AgentError as exc:
            print(f"attestation failed ({exc.check}): {exc}")
            if exc.hint:
                print(f"  what to do: {exc.hint}")
            return 1
        except Exception as exc:  # a TPM or network error: say what, never a traceback
            print(f"attestation failed: {type(exc).__name__}: {exc}")
            return 1
    if verdict.get("trusted"):
        print(f"{cfg.node_name}: trusted")
        return 0
    print(f"{cfg.node_name}: {verdict.get('state')}")
    for failure in verdict.get("failed_checks", []):
        print(f"  ✗ {failure['check']}: {failure['detail']}\n    → {failure['hint']}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
