"""Benchmark: parse + replay time per fixture event log.

Run from the repo root: ``.venv/bin/python bench/attest/bench_eventlog.py [--runs N]``.
For each log under ``../shared/fixtures/eventlogs`` it reports the median over N runs
(``time.perf_counter_ns``) of parse alone, replay alone and parse + replay, with the event and
extend counts, plus the minimum of parse + replay (the best estimate when the CPU is shared).
Goal: parse + replay under 1 ms for a ~120-event log.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from attest.core.eventlog import EV_NO_ACTION, parse_event_log, replay_event_log

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "eventlogs"


def timings_us(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """(median, minimum) in µs. On a shared machine the minimum approximates an idle one."""
    for _ in range(min(50, runs)):  # warm-up: caches, allocator
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000, min(samples) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    paths = sorted(p for p in FIXTURES.glob("*/*") if p.is_file() and p.name != "LICENSE")
    if not paths:
        raise SystemExit(f"no fixtures under {FIXTURES}")
    # A CPU-speed yardstick, so numbers from a shared or slow machine can be read in context.
    yard, _ = timings_us(lambda: sum(range(1000)), args.runs)
    print(f"yardstick: sum(range(1000)) = {yard:.1f} µs median "
          "(about 10 µs on an idle modern x86 core with CPython 3.11)")
    print(f"{'log':42} {'bytes':>6} {'events':>6} {'extends':>7} {'parse µs':>9} "
          f"{'replay µs':>9} {'total µs':>9} {'min µs':>7}")
    for path in paths:
        raw = path.read_bytes()
        log = parse_event_log(raw)
        extends = sum(len(e.digests) for e in log.events if e.event_type != EV_NO_ACTION)
        parse, _ = timings_us(lambda raw=raw: parse_event_log(raw), args.runs)  # type: ignore[misc]
        replay, _ = timings_us(lambda log=log: replay_event_log(log), args.runs)  # type: ignore[misc]
        total, best = timings_us(
            lambda raw=raw: replay_event_log(parse_event_log(raw)), args.runs)  # type: ignore[misc]
        print(f"{path.parent.name + '/' + path.name:42} {len(raw):>6} {len(log.events):>6} "
              f"{extends:>7} {parse:>9.1f} {replay:>9.1f} {total:>9.1f} {best:>7.1f}")

if __name__ == "__main__":
    main()
