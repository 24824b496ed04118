"""Token issuance over HTTP on SQLite and on PostgreSQL, side by side in one run (issue 15).

Run from the repo root::

    .venv/bin/python bench/tokens/compare_issuance.py [--trials 3 --workers 1 2]
        [--database postgresql://postgres@127.0.0.1:5432/test]

Per trial and per ``--workers`` value, the two databases run one after the other, in an order
that alternates between trials so that a drift of the machine's load hits both alike. Each run
is the issuance part of ``bench_tokens.py``: a fresh ``umec server`` (``--workers N``) on a
fresh database (SQLite in its work directory, or a database of its own on the PostgreSQL
server ``--database`` names, dropped afterwards), ``--nodes`` attested simulated nodes,
``--pods`` admitted pods, then ``--threads`` clients exchanging their projected service-account
tokens at ``/oauth2/token`` in a closed loop (every trust check runs on each); with ``--wrk
SECONDS`` the load comes from wrk instead (``apt-get install wrk``), which leaves the server
nearly both cores. Reported per run:
issuances/s, p50/p99, the server's CPU per issuance (all its processes) and, on PostgreSQL, the
CPU of the backends serving the run's database; then medians per database and the ratio
PostgreSQL ÷ SQLite of each trial.

Goals (issue 15): ≥ 1,000 issuances/s with ``--workers 2`` on PostgreSQL, ≥ 600/s in one
process, server CPU ≤ 1 ms per issuance.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "tokens"))
sys.path.insert(0, str(REPO / "bench" / "attest"))
sys.path.insert(0, str(REPO / "bench"))

from bench_rounds import backend_cpu  # noqa: E402
from bench_tokens import (  # noqa: E402
    Site,
    issuance_http,
    issuance_wrk,
    percentile,
    print_machine,
    server_process,
    token_bench_setup,
)
from benchdb import SHARED_POSTGRES, scratch_database  # noqa: E402


def one_run(spec: str, workers: int, args: argparse.Namespace,
            repo: Path | None = None) -> dict[str, Any]:
    """One run; ``repo``: the server runs from that checkout (``python -m umec``)."""
    work, cluster, tpms, hashes, port, base = token_bench_setup("bench-issuance-", args.nodes)
    python = str(REPO / ".venv" / "bin" / "python")
    extra = {"PYTHONPATH": str(repo)} if repo is not None else {}
    try:
        with scratch_database(spec) as url, server_process(
                work, hashes, port, [python, "-m", "umec", "server", "--workers", str(workers)],
                {"UMEC_DATABASE_URL": url, **extra}) as server:
            site = Site(base, url or f"sqlite:///{work / 'data' / 'umec.db'}", cluster)
            nodes = [site.trusted_node(f"node-{i:03d}", tpm) for i, tpm in enumerate(tpms)]
            subjects = [site.pod_token(nodes[i % len(nodes)].name, f"pod-{i}")
                        for i in range(args.pods)]
            pg0 = backend_cpu(url) if url else {}
            children0 = child_ticks(server.pid)
            if args.wrk:
                run = issuance_wrk(work, base, subjects, args.threads * 2, args.wrk, server.pid)
                if run is None:
                    raise SystemExit("--wrk: wrk is not installed (apt-get install wrk)")
                result = {"n": run["n"], "per_s": run["per_s"], "p50": run["p50_ms"],
                          "p99": run["p99_ms"], "cpu_ms": run["cpu_ms"]}
            else:
                http = issuance_http(site, subjects, args.threads, args.issuances, server.pid)
                lat = sorted(http["lat"])
                result = {"n": http["n"], "per_s": http["per_s"],
                          "p50": percentile(lat, 50) * 1e3, "p99": percentile(lat, 99) * 1e3,
                          "cpu_ms": http["cpu_ms"]}
            pg1 = backend_cpu(url) if url else {}
            result["split"] = "/".join(str(t - children0.get(pid, 0)) for pid, t in
                                       sorted(child_ticks(server.pid).items())
                                       if t > children0.get(pid, 0)) or "-"
            site.client.close()
        result["backend_ms"] = (sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
                                / result["n"] * 1e3 if url else None)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def child_ticks(pid: int) -> dict[int, int]:
    """CPU ticks (utime + stime) of each child of ``pid``: the workers of ``--workers N``
    (and uvicorn's resource tracker, which uses none). A worker with a small share while the
    other is busy means the connections were not spread (umec/workers.py)."""
    ticks: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks[int(child)] = int(fields[11]) + int(fields[12])
    return ticks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--issuances", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--wrk", type=int, default=0, metavar="SECONDS",
                    help="load from wrk (C, one thread, 2×threads connections) for SECONDS "
                         "instead of Python client threads: the server gets nearly both cores")
    ap.add_argument("--database", default=SHARED_POSTGRES, metavar="postgresql://…",
                    help="the PostgreSQL server (each run creates and drops its own database)")
    ap.add_argument("--before", default=None, metavar="COMMIT",
                    help="compare this commit's server (a git worktree) with the checkout's, "
                         "side by side on each database, instead of SQLite with PostgreSQL")
    args = ap.parse_args()
    if args.before:
        compare_commits(args)
        return
    print_machine()
    load = (f"wrk for {args.wrk} s, {args.threads * 2} connections" if args.wrk else
            f"{args.issuances} issuances per run, {args.threads} client threads")
    print(f"# {load}; {args.pods} pods on {args.nodes} nodes\n")
    print("| workers | trial | database | issuances/s | p50 ms | p99 ms | server CPU ms/iss. "
          "| PG backend CPU ms/iss. | CPU ticks per worker |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---|")
    results: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for workers in args.workers:
        for trial in range(args.trials):
            order = ["sqlite", args.database]
            for spec in order if trial % 2 == 0 else order[::-1]:
                name = "SQLite" if spec == "sqlite" else "PostgreSQL"
                r = one_run(spec, workers, args)
                results.setdefault((workers, name), []).append(r)
                backend = "" if r["backend_ms"] is None else f"{r['backend_ms']:.2f}"
                print(f"| {workers} | {trial + 1} | {name} | {r['per_s']:.0f} | {r['p50']:.1f} "
                      f"| {r['p99']:.1f} | {r['cpu_ms']:.2f} | {backend} | {r['split']} |",
                      flush=True)
    print("\n| workers | database | median issuances/s | median p99 ms | median server CPU "
          "ms/iss. | PostgreSQL ÷ SQLite, per trial |\n|---|---|---:|---:|---:|---|")
    for workers in args.workers:
        lite, pg = results[(workers, "SQLite")], results[(workers, "PostgreSQL")]
        ratios = ", ".join(f"{p['per_s'] / s['per_s']:.2f}" for s, p in zip(lite, pg,
                                                                            strict=True))
        for name, runs in (("SQLite", lite), ("PostgreSQL", pg)):
            print(f"| {workers} | {name} | {statistics.median(r['per_s'] for r in runs):.0f} "
                  f"| {statistics.median(r['p99'] for r in runs):.1f} "
                  f"| {statistics.median(r['cpu_ms'] for r in runs):.2f} "
                  f"| {ratios if name == 'PostgreSQL' else ''} |")


def compare_commits(args: argparse.Namespace) -> None:
    """``--before``: per workers value, trial and database, the two commits one after the
    other (the order alternates by trial); medians and after ÷ before per database."""
    print_machine()
    print(f"# before: {args.before}; after: the checkout; wrk {args.wrk} s" if args.wrk else
          f"# before: {args.before}; after: the checkout; {args.issuances} issuances per run")
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before],
                       cwd=REPO, check=True, capture_output=True)
        try:
            results: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
            print("\n| workers | trial | database | side | issuances/s | p99 ms | server CPU "
                  "ms/iss. | PG backend CPU ms/iss. | CPU ticks per worker |\n"
                  "|---|---|---|---|---:|---:|---:|---:|---|")
            for workers in args.workers:
                for trial in range(args.trials):
                    for spec in ("sqlite", args.database):
                        name = "SQLite" if spec == "sqlite" else "PostgreSQL"
                        sides: list[tuple[str, Path | None]] = [("before", before),
                                                                ("after", None)]
                        for side, repo in sides if trial % 2 == 0 else sides[::-1]:
                            r = one_run(spec, workers, args, repo)
                            results.setdefault((workers, name, side), []).append(r)
                            backend = "" if r["backend_ms"] is None else f"{r['backend_ms']:.2f}"
                            print(f"| {workers} | {trial + 1} | {name} | {side} "
                                  f"| {r['per_s']:.0f} | {r['p99']:.1f} | {r['cpu_ms']:.2f} "
                                  f"| {backend} | {r['split']} |", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO,
                           check=False, capture_output=True)
    print("\n| workers | database | issuances/s before → after | p99 ms before → after "
          "| server CPU ms/iss. before → after | after ÷ before (rate, CPU) |\n"
          "|---|---|---|---|---|---|")
    for workers in args.workers:
        for name in ("SQLite", "PostgreSQL"):
            b, a = results[(workers, name, "before")], results[(workers, name, "after")]

            def med(runs: list[dict[str, Any]], key: str) -> float:
                return float(statistics.median(r[key] for r in runs))
            print(f"| {workers} | {name} | {med(b, 'per_s'):.0f} → {med(a, 'per_s'):.0f} "
                  f"| {med(b, 'p99'):.1f} → {med(a, 'p99'):.1f} "
                  f"| {med(b, 'cpu_ms'):.2f} → {med(a, 'cpu_ms'):.2f} "
                  f"| {med(a, 'per_s') / med(b, 'per_s'):.2f}, "
                  f"{med(a, 'cpu_ms') / med(b, 'cpu_ms'):.2f} |")


if __name__ == "__main__":
    main()
