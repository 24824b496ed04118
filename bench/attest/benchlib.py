"""Shared helpers of the attestation benchmarks: timing statistics and a machine description.

Method (used by every micro-benchmark here): each measured call is timed on its own with
``time.perf_counter_ns``; implementations are *interleaved* in blocks (A×n, B×n, C×n, A×n, …)
so that a burst of load from another process on the shared machine hits all of them alike;
the garbage collector is collected once and then disabled while timing (as ``timeit`` does),
so that a collection triggered by one implementation's garbage is not billed to another.
We report the median (robust), the 10th percentile and the minimum (the best estimate of an
idle machine) and never the mean.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Stats:
    """Per-call timings of one implementation, in microseconds."""

    name: str
    n: int
    median_us: float
    p10_us: float
    p90_us: float
    min_us: float

    @classmethod
    def of(cls, name: str, samples_ns: Sequence[int]) -> Stats:
        s = sorted(samples_ns)
        q = statistics.quantiles(s, n=10)
        return cls(name, len(s), statistics.median(s) / 1e3, q[0] / 1e3, q[-1] / 1e3, s[0] / 1e3)


def interleaved(impls: dict[str, Callable[[T], object]], items: Sequence[T], *,
                blocks: int, per_block: int, warmup: int) -> dict[str, Stats]:
    """Time every implementation over ``items`` (cycled), interleaved in blocks."""
    for fn in impls.values():  # warm-up: imports, caches, allocator, branch predictors
        for i in range(warmup):
            fn(items[i % len(items)])
    samples: dict[str, list[int]] = {name: [] for name in impls}
    gc.collect()
    gc.disable()
    try:
        k = 0
        for _ in range(blocks):
            for name, fn in impls.items():
                out = samples[name]
                for j in range(per_block):
                    item = items[(k + j) % len(items)]
                    t0 = time.perf_counter_ns()
                    fn(item)
                    out.append(time.perf_counter_ns() - t0)
            k += per_block
    finally:
        gc.enable()
    return {name: Stats.of(name, s) for name, s in samples.items()}


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of an already sorted sequence."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, str]:
    """What the numbers were measured on (nproc, CPU model, memory, load, versions)."""
    model = next((line.split(":", 1)[1].strip() for line in _run(["lscpu"]).splitlines()
                  if line.startswith("Model name")), platform.processor() or "unknown")
    mem = next((line.split()[1] for line in _run(["free", "-h"]).splitlines()
                if line.startswith("Mem:")), "?")
    import cryptography
    ticks = []
    for _ in range(200):  # the same yardstick as bench_eventlog.py, to compare machines
        t0 = time.perf_counter_ns()
        sum(range(1000))
        ticks.append(time.perf_counter_ns() - t0)
    from cryptography.hazmat.backends.openssl.backend import backend
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "loadavg (1/5/15 min) at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "yardstick sum(range(1000))": f"{statistics.median(ticks) / 1e3:.1f} µs median "
                                       "(about 10 µs on an idle modern x86 core, CPython 3.11)",
        "python": platform.python_version(),
        "cryptography": f"{cryptography.__version__} ({backend.openssl_version_text()})",
    }


def print_machine() -> None:
    for key, value in machine().items():
        print(f"# {key}: {value}")


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / VmSize of a live process in KiB, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "VmSize"):
            out[key] = int(rest.split()[0])
    return out
