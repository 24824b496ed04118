"""Benchmark: resident memory of the node agent doing one full attestation round on a real TPM.

Run from the repo root::

    .venv/bin/python bench/attest/bench_agent_memory.py

Steps:

1. Provision a swtpm with EK certificates from a project-local CA (``attest.tpm.swtpm``) and
   start ``umec server`` as a subprocess that trusts that CA (``UMEC_EK_CA_BUNDLE``) and has
   the ``pi-k3s`` policy with no required PCR values.
2. Agent, as deployed: ``umec agent --once`` (CLI, settings, logging, httpx, tpm2-pytss) with
   ``UMEC_TCTI`` pointing at the swtpm, first run (enrol + activate + quote + evidence) and
   second run (quote + evidence only). The CLI runs exactly as its console script does
   (``umec.cli.app()``) inside a wrapper whose ``atexit`` hook prints the process's own VmHWM
   and VmRSS from ``/proc/self/status`` as it exits. (``wait4``'s ``ru_maxrss`` is not used:
   Linux carries the pre-``exec`` high-water mark over, i.e. the size of the forking
   benchmark process.)
3. Agent, minimal: a child Python that imports only ``attest.agent``, opens ``Tpm`` and runs
   ``Agent.attest_once`` (one full round), then prints its own VmHWM / VmRSS from
   ``/proc/self/status``.
4. Every run must end ``trusted``. Goal: agent ≤ 60 MB.
5. Where the memory goes: a fresh interpreter imports, one after another, what the agent
   process imports, printing VmRSS after each (the increments depend on the order: a module
   already pulled in by an earlier line costs nothing later).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

from bench_rounds import POLICY, REPO, server_env, wait_healthy
from benchlib import print_machine, vm_status

from attest.tpm.swtpm import Swtpm, SwtpmCa
from umec.localserver import free_port

VENV_BIN = REPO / ".venv" / "bin"

MINIMAL = textwrap.dedent("""
    import sys, httpx
    from pathlib import Path
    from attest.agent import Agent, AgentConfig
    cfg = AgentConfig(node_name=sys.argv[1], tcti=sys.argv[2], state_dir=Path(sys.argv[3]),
                      event_log_path=Path(sys.argv[3]) / "no-event-log")
    with httpx.Client(base_url=sys.argv[4], timeout=30) as client:
        verdict = Agent(cfg, client).attest_once()
    status = dict(l.split(":", 1) for l in Path("/proc/self/status").read_text().splitlines())
    print(verdict["state"], status["VmHWM"].split()[0], status["VmRSS"].split()[0])
""")


IMPORT_STEPS = ("cryptography.hazmat.primitives.asymmetric.ec", "cryptography.x509", "ssl",
                "httpx", "tpm2_pytss", "attest.agent", "pydantic", "pydantic_settings",
                "umec.settings", "typer", "umec.cli")
IMPORTS = textwrap.dedent("""
    import importlib, sys
    from pathlib import Path
    def rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    print("(interpreter)", rss())
    for name in sys.argv[1:]:
        importlib.import_module(name)
        print(name, rss())
""")


def import_costs() -> None:
    out = subprocess.run([str(VENV_BIN / "python"), "-c", IMPORTS, *IMPORT_STEPS],
                         capture_output=True, text=True, check=True).stdout
    print("\n## Where the agent's memory goes (VmRSS after each import, in order)\n")
    print("| import | VmRSS MiB | + MiB |\n|---|---:|---:|")
    prev = None
    for line in out.splitlines():
        name, kib = line.rsplit(" ", 1)
        mib = int(kib) / 1024
        delta = "" if prev is None else f"{mib - prev:+.1f}"
        print(f"| `{name}` | {mib:.1f} | {delta} |")
        prev = mib


# `umec agent` validates its settings, then exec()s the lean agent process (same PID), so the
# peak is measured from outside: ru_maxrss of the waited-for child, which Linux keeps as the
# maximum over the images before and after exec (conservative: the larger of the two).
CLI = textwrap.dedent("""
    import resource, subprocess, sys
    proc = subprocess.run([sys.executable, "-m", "umec", "agent", "--once"])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print("VMHWM", peak, peak, flush=True)
    sys.exit(proc.returncode)
""")


def run_cli(env: dict[str, str]) -> tuple[int, str, int, int]:
    """``umec agent --once``; returns (exit code, output, VmHWM KiB, VmRSS KiB at exit)."""
    proc = subprocess.run([str(VENV_BIN / "python"), "-c", CLI], env=env, capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout + proc.stderr
    line = next((x for x in out.splitlines() if x.startswith("VMHWM ")), "VMHWM 0 0")
    _, hwm, rss = line.split()
    return proc.returncode, out, int(hwm), int(rss)


def main() -> None:
    print_machine()
    work = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    ca = SwtpmCa(work / "ca")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, str, str]] = []
    with Swtpm(work / "tpm", ca) as tpm:
        bundle = work / "ek-ca.pem"
        bundle.write_bytes(tpm.ca_certificate_pem())
        env = server_env(work, port, POLICY, {"UMEC_EK_CA_BUNDLE": str(bundle)})
        log = (work / "server.log").open("wb")
        server = subprocess.Popen([str(VENV_BIN / "umec"), "server"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(server, url, work)
            agent_env = dict(os.environ, UMEC_NODE_NAME="pi-1", UMEC_SERVER_URL=url,
                             UMEC_TCTI=tpm.tcti, UMEC_AGENT_STATE_DIR=str(work / "agent"),
                             UMEC_EVENT_LOG_PATH=str(work / "no-event-log"),
                             UMEC_LOG_LEVEL="WARNING")
            for label in ("first run: enrol + activate + round", "second run: round only"):
                t0 = time.perf_counter()
                code, out, hwm, _rss = run_cli(agent_env)
                dt = time.perf_counter() - t0
                if code != 0 or "pi-1: trusted" not in out or not hwm:
                    raise SystemExit(f"umec agent --once failed ({code}): {out}")
                rows.append((f"`umec agent --once`, {label}", f"{hwm / 1024:.1f}",
                             f"ru_maxrss over settings process + exec'd agent; {dt:.2f} s wall"))
            proc = subprocess.run([str(VENV_BIN / "python"), "-c", MINIMAL, "pi-2", tpm.tcti,
                                   str(work / "agent-min"), url], capture_output=True,
                                  text=True, timeout=120)
            fields = proc.stdout.split()
            if proc.returncode != 0 or len(fields) < 3 or fields[-3] != "trusted":
                raise SystemExit(f"minimal agent failed: {proc.stdout}{proc.stderr}")
            rows.append(("`attest.agent` only (no CLI, no settings), enrol + round",
                         f"{int(fields[-2]) / 1024:.1f}",
                         f"VmRSS at end {int(fields[-1]) / 1024:.1f} MiB"))
            srv = vm_status(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=15)
            log.close()
    shutil.rmtree(work, ignore_errors=True)
    print("\n## Agent resident memory (one full round against a real swtpm)\n")
    print("| process | peak RSS (VmHWM) MiB | note |\n|---|---:|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    peak = max(float(r[1]) for r in rows)
    print(f"\n- goal agent ≤ 60 MB: {'met' if peak * 1.048576 <= 60 else 'MISSED'} "
          f"(worst {peak:.1f} MiB = {peak * 1.048576:.1f} MB)")
    print(f"- (the server in this run, 2 nodes: VmRSS {srv['VmRSS'] / 1024:.1f} MiB, "
          f"VmHWM {srv['VmHWM'] / 1024:.1f} MiB)")
    import_costs()


if __name__ == "__main__":
    main()
