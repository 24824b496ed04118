"""Run ``umec demo`` many times in a row with a busy core beside it (issue 10). Run by hand.

Run from the repo root::

    .venv/bin/python bench/demo/repeat_demo.py [--runs 20] [--busy 1] [--timeout 600]
        [--json out.json]

The issue's failure ("the app's next call is refused 5021 ms after the failed attestation")
was rare and timing-dependent: it showed on a loaded machine. So, while the demos run, ``--busy``
subprocesses each burn one core (``python -c 'while True: pass'``); they are killed at the end,
whatever happens. Each demo is ``python -m umec demo`` as a user runs it, one after the other.

Per run the script prints: pass or FAIL, its wall time, the timing line of the revocation step
("refused N ms after the failed attestation") and, for a failure, the log the demo kept (the
path it prints on stderr). At the end: passes/failures, the revocation times (min/median/max)
and the kept logs. Exit 0 only if every run passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

REFUSED = re.compile(r"refused (\d+) ms after the failed attestation[^\n]*")
KEPT = re.compile(r"its log is kept in (\S+)")
BURN = "while True: pass"


@dataclass
class Run:
    """One ``umec demo``: its verdict, duration, revocation timing line and kept log."""

    index: int
    passed: bool
    exit_code: int
    seconds: float
    refused_ms: int | None
    timing_line: str
    kept_log: str | None
    tail: str


@contextmanager
def busy_cores(count: int) -> Iterator[list[int]]:
    """``count`` CPU-burning subprocesses for the duration; killed (by PID) on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(count)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


def run_demo(index: int, timeout: float) -> Run:
    """One ``python -m umec demo`` in a fresh process; parses its output."""
    env = {**os.environ, "COLUMNS": "160"}
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "umec", "demo"], capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code = -1
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")) \
            + f"\n(timed out after {timeout:g} s)"
    seconds = time.monotonic() - started
    timing = REFUSED.search(out)
    kept = KEPT.search(err)
    return Run(index=index, passed=code == 0, exit_code=code, seconds=round(seconds, 1),
               refused_ms=int(timing.group(1)) if timing else None,
               timing_line=timing.group(0).strip() if timing else "(no timing line)",
               kept_log=kept.group(1) if kept else None,
               tail="" if code == 0 else (out[-1500:] + err[-1500:]))


def summary(runs: list[Run], busy: int) -> str:
    passed = sum(r.passed for r in runs)
    lines = [f"umec demo × {len(runs)} with {busy} busy core(s): {passed} passed, "
             f"{len(runs) - passed} failed"]
    times = [r.refused_ms for r in runs if r.refused_ms is not None]
    if times:
        lines.append(f"refused after the failed attestation: min {min(times)} ms, median "
                     f"{statistics.median(times):.0f} ms, max {max(times)} ms")
    walls = [r.seconds for r in runs]
    lines.append(f"wall time per run: min {min(walls):.1f} s, median "
                 f"{statistics.median(walls):.1f} s, max {max(walls):.1f} s")
    lines += [f"kept log of failed run {r.index}: {r.kept_log or '(none printed)'}"
              for r in runs if not r.passed]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--busy", type=int, default=1, help="CPU-burning processes beside it")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per demo")
    parser.add_argument("--json", type=Path, help="write every run's record here")
    args = parser.parse_args()
    runs: list[Run] = []
    with busy_cores(args.busy) as pids:
        print(f"busy core(s): PID {', '.join(map(str, pids))}", flush=True)
        for i in range(1, args.runs + 1):
            run = run_demo(i, args.timeout)
            runs.append(run)
            verdict = "pass" if run.passed else f"FAIL (exit {run.exit_code})"
            print(f"run {i}/{args.runs}: {verdict} in {run.seconds:.1f} s; {run.timing_line}"
                  + (f"; log kept in {run.kept_log}" if run.kept_log else ""), flush=True)
            if not run.passed:
                print("  " + run.tail.replace("\n", "\n  "), flush=True)
    print(summary(runs, args.busy))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0 if all(r.passed for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
