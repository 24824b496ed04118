"""Attestation rounds before and after a change, side by side in one run (run by hand).

    .venv/bin/python bench/attest/compare_rounds.py --before ec8843f [--trials 3] \\
        [--nodes 1000 --rounds 3000 --threads 2]

For each trial and each database (SQLite, then PostgreSQL at 127.0.0.1:5432) it runs
``bench_rounds.py`` once against the server of the ``--before`` commit (a ``git worktree`` in a
temporary directory) and once against the working tree, alternating (and swapping which goes
first every other trial) so that the machine's noise falls on both sides alike. Reported: the
median of rounds/s, p99 and server CPU per round on each side, and the after/before ratios of
those medians. The load generator (simulated nodes) is the
working tree's for both sides, so its CPU per round measures how fast the machine was during
each run: "server ÷ load generator CPU" is the server's cost with that drift divided out.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = Path(__file__).with_name("bench_rounds.py")
METRICS = {"rounds/s": r"\| rounds/s \| \*\*(\d+)\*\* \|",
           "p99 ms": r"\| round latency p99 \| \*\*([\d.]+) ms\*\* \|",
           "server CPU ms/round": r"\| server CPU per round \| ([\d.]+) ms",
           "PostgreSQL backend CPU ms/round":
               r"\| PostgreSQL backend CPU per round \| ([\d.]+) ms",
           "load generator CPU ms/round":
               r"\| load generator \(client process\) CPU per round \| ([\d.]+) ms"}


def run_once(args: argparse.Namespace, postgres: bool, repo: Path | None) -> dict[str, float]:
    cmd = [sys.executable, str(BENCH), "--nodes", str(args.nodes), "--rounds", str(args.rounds),
           "--threads", str(args.threads), "--warmup", str(args.warmup)]
    if postgres:
        cmd += ["--database", args.database]
    if repo is not None:
        cmd += ["--server-repo", str(repo)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    values = {}
    for name, pattern in METRICS.items():
        match = re.search(pattern, out.stdout)
        if match is None and name.startswith("PostgreSQL"):
            continue  # only PostgreSQL runs (of a bench_rounds.py that measures it) have it
        if match is None:
            raise SystemExit(f"no {name} in the output of {' '.join(cmd)}:\n{out.stdout}")
        values[name] = float(match.group(1))
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="commit to compare against")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--databases", nargs="+", default=["SQLite", "PostgreSQL"],
                    choices=["SQLite", "PostgreSQL"])
    ap.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/test",
                    metavar="postgresql://…", help="the PostgreSQL server of the PostgreSQL "
                    "runs (each creates and drops a database of its own there)")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-c", "import benchlib; benchlib.print_machine()"],
                   cwd=BENCH.parent, check=True)
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before],
                       cwd=REPO, check=True, capture_output=True)
        try:
            results = compare(args, before)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO,
                           check=False, capture_output=True)
    report(args, results)


def compare(args: argparse.Namespace, before: Path
            ) -> dict[tuple[str, str], list[dict[str, float]]]:
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for trial in range(args.trials):
        for db in args.databases:
            # Alternate which side goes first: PostgreSQL's background work after a run (the
            # checkpointer, dropping the last database) would otherwise always fall on "after".
            sides = [("before", before), ("after", None)]
            for side, repo in sides if trial % 2 == 0 else sides[::-1]:
                values = run_once(args, db == "PostgreSQL", repo)
                results.setdefault((db, side), []).append(values)
                print(f"# trial {trial + 1} {db} {side}: {values}", flush=True)
    return results


def report(args: argparse.Namespace,
           results: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    print(f"\n## Rounds before ({args.before}) and after, {args.trials} alternating trials, "
          f"{args.nodes} nodes, {args.threads} client threads, {args.rounds} rounds each\n")
    print("| database | metric | before (median) | after (median) | after / before |")
    print("|---|---|---:|---:|---:|")
    for db in args.databases:
        for r in results[(db, "before")] + results[(db, "after")]:
            r["server ÷ load generator CPU"] = (r["server CPU ms/round"]
                                                / r["load generator CPU ms/round"])
        runs = results[(db, "before")] + results[(db, "after")]
        for metric in (*METRICS, "server ÷ load generator CPU"):
            if not all(metric in r for r in runs):
                continue
            b = statistics.median(r[metric] for r in results[(db, "before")])
            a = statistics.median(r[metric] for r in results[(db, "after")])
            print(f"| {db} | {metric} | {b:.3g} | {a:.3g} | {a / b:.2f} |")
    if {"SQLite", "PostgreSQL"} <= set(args.databases):
        print("\n| side | PostgreSQL ÷ SQLite rounds/s | PostgreSQL ÷ SQLite p99 |")
        print("|---|---:|---:|")
        for side in ("before", "after"):
            rate, p99 = (statistics.median(r[m] for r in results[("PostgreSQL", side)])
                         / statistics.median(r[m] for r in results[("SQLite", side)])
                         for m in ("rounds/s", "p99 ms"))
            print(f"| {side} | {rate:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
