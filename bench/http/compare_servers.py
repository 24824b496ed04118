"""HTTP server stacks side by side under wrk, on the same FastAPI app (issue 15).

Run from the repo root (``apt-get install wrk``; ``.venv/bin/pip install granian hypercorn``
for those two stacks, into the venv only)::

    .venv/bin/python bench/http/compare_servers.py [--trials 3 --seconds 5 --connections 16]
        [--stacks umec granian ...] [--routes bare-ping ping token]

Every server runs at once, each its own process (``serve_stack.py --stack S``, all on one
SQLite database) on its own port, idle until its turn: after a 1 s wrk warm-up each, a trial
is one ``wrk -t1 -c{connections} -d{seconds}s`` burst (keep-alive) per stack and route, the
stacks in an order reversed on every other trial, so that the load of a shared machine, which
drifts over seconds, hits all alike. The routes:

- ``bare-ping``: ``GET /bench/ping`` on a FastAPI app with nothing else (the server alone);
- ``ping``: the same route inside ``umec server``'s app, behind its middleware stack;
- ``token``: ``POST /oauth2/token``, a real token exchange (every trust check, an ES256
  signature, SQLite) for the pods of ``--nodes`` attested simulated nodes, the load of
  ``bench/tokens/bench_tokens.py``'s wrk run.

Reported per run: requests/s and the server's CPU per request in µs (utime + stime of the
server's process tree, /proc/PID/stat, over the measured wrk run); then per route and stack
the medians and the median over trials of each trial's ratio to ``--baseline`` (by default
``umec``, the stack every µMEC process runs).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "tokens"))
sys.path.insert(0, str(REPO / "bench" / "attest"))
sys.path.insert(0, str(REPO / "bench" / "http"))

from bench_rounds import POLICY, server_env, wait_healthy  # noqa: E402
from bench_tokens import (  # noqa: E402
    Site,
    issuance_wrk,
    print_machine,
    token_bench_setup,
    tree_cpu,
)
from serve_stack import STACKS  # noqa: E402

from umec.localserver import free_port  # noqa: E402

GET_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format("WRK %d %d %d %.3f %.3f %.3f\\n", summary.requests,
    summary.errors.status, summary.errors.timeout, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.duration / 1e6))
end
"""
ROUTES = ("bare-ping", "ping", "token")
EXTRA_ENV = {"UMEC_STALE_GRACE_SECONDS": "7200"}  # nodes stay trusted all run (600 s + this)


def get_wrk(work: Path, url: str, connections: int, seconds: int, pid: int) -> dict[str, float]:
    script = work / "get.lua"
    script.write_text(GET_SCRIPT)
    cpu0 = tree_cpu(pid)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
                          url], capture_output=True, text=True).stdout
    cpu = tree_cpu(pid) - cpu0
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK "))
    n, bad, timeouts, p50, p99, wall = (float(x) for x in line.split()[1:])
    if bad or timeouts or not n:
        raise SystemExit(f"wrk {url}: {bad:.0f} non-2xx answers, {timeouts:.0f} timeouts")
    return {"per_s": n / wall, "p50_ms": p50, "p99_ms": p99, "n": n, "cpu_ms": cpu / n * 1e3}


@contextlib.contextmanager
def serve(stack: str, app: str, work: Path, hashes: list[str],
          port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``serve_stack.py`` as its own process on ``port`` (log: ``work/STACK-APP.log``)."""
    env = server_env(work, port, POLICY, extra=EXTRA_ENV, ek_hashes=hashes)
    with (work / f"{stack}-{app}.log").open("wb") as log:
        proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "python"),
                                 str(REPO / "bench" / "http" / "serve_stack.py"),
                                 "--stack", stack, "--app", app], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(proc, f"http://127.0.0.1:{port}", work)
            yield proc
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def burst(route: str, server: subprocess.Popen[bytes], base: str, seconds: int,
          ctx: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    if route == "token":
        run: dict[str, float] | None = issuance_wrk(ctx["work"], base, ctx["subjects"],
                                                    args.connections, seconds, server.pid)
        assert run is not None
        return run
    return get_wrk(ctx["work"], f"{base}/bench/ping", args.connections, seconds, server.pid)


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Attested nodes and admitted pods in the shared database, and their SA tokens."""
    work, cluster, tpms, hashes, port, base = token_bench_setup("bench-http-", args.nodes)
    ctx: dict[str, Any] = {"work": work, "hashes": hashes, "subjects": []}
    if "token" in args.routes:
        with serve("umec", "real", work, hashes, port):
            site = Site(base, f"sqlite:///{work / 'data' / 'umec.db'}", cluster)
            nodes = [site.trusted_node(f"node-{i:03d}", tpm) for i, tpm in enumerate(tpms)]
            ctx["subjects"] = [site.pod_token(nodes[i % len(nodes)].name, f"pod-{i}")
                               for i in range(args.pods)]
            site.client.close()
    return ctx


def measure(ctx: dict[str, Any], args: argparse.Namespace
            ) -> dict[tuple[str, str], list[dict[str, float]]]:
    """All servers up, then the trials' bursts, alternating (see the module doc)."""
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with contextlib.ExitStack() as running:
        servers: dict[tuple[str, str], tuple[subprocess.Popen[bytes], str]] = {}
        for stack in args.stacks:
            for route in args.routes:
                app = "bare" if route == "bare-ping" else "real"
                if (stack, app) not in servers:
                    port = free_port()
                    servers[(stack, app)] = (running.enter_context(
                        serve(stack, app, ctx["work"], ctx["hashes"], port)),
                        f"http://127.0.0.1:{port}")
                server, base = servers[(stack, app)]
                burst(route, server, base, 1, ctx, args)  # warm-up
        for trial in range(args.trials):
            for stack in args.stacks if trial % 2 == 0 else args.stacks[::-1]:
                for route in args.routes:
                    server, base = servers[(stack, "bare" if route == "bare-ping" else "real")]
                    r = burst(route, server, base, args.seconds, ctx, args)
                    results.setdefault((route, stack), []).append(r)
                    print(f"| {trial + 1} | {stack} | {route} | {r['per_s']:.0f} "
                          f"| {r['cpu_ms'] * 1e3:.0f} | {r['p50_ms']:.2f} "
                          f"| {r['p99_ms']:.2f} |", flush=True)
    return results


def report(results: dict[tuple[str, str], list[dict[str, float]]],
           args: argparse.Namespace) -> None:
    base = args.baseline if args.baseline in args.stacks else args.stacks[0]
    print(f"\n| route | stack | median req/s | median server CPU µs/req | req/s ÷ {base} "
          f"(median of trials) | CPU/req ÷ {base} | p99 ms |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for route in args.routes:
        for stack in args.stacks:
            runs, ref = results[(route, stack)], results[(route, base)]
            speed = statistics.median(r["per_s"] / b["per_s"] for r, b in zip(runs, ref,
                                                                              strict=True))
            cpu = statistics.median(r["cpu_ms"] / b["cpu_ms"] for r, b in zip(runs, ref,
                                                                             strict=True))
            print(f"| {route} | {stack} | {statistics.median(r['per_s'] for r in runs):.0f} "
                  f"| {statistics.median(r['cpu_ms'] for r in runs) * 1e3:.0f} "
                  f"| {speed:.3f} | {cpu:.3f} "
                  f"| {statistics.median(r['p99_ms'] for r in runs):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--stacks", nargs="+", choices=STACKS, default=list(STACKS))
    ap.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    ap.add_argument("--baseline", choices=STACKS, default="umec")
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--pods", type=int, default=100)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    print_machine()
    print(f"# load average at start: {Path('/proc/loadavg').read_text().strip()}")
    print(f"# wrk -t1 -c{args.connections} -d{args.seconds}s (keep-alive) bursts after a 1 s "
          f"warm-up; all servers up at once; {args.trials} trials, stack order reversed every "
          f"other trial\n")
    print("| trial | stack | route | req/s | server CPU µs/req | p50 ms | p99 ms |\n"
          "|---|---|---|---:|---:|---:|---:|")
    ctx = prepare(args)
    try:
        results = measure(ctx, args)
    finally:
        shutil.rmtree(ctx["work"], ignore_errors=True)
    print(f"\n# load average at end: {Path('/proc/loadavg').read_text().strip()}")
    report(results, args)


if __name__ == "__main__":
    main()
