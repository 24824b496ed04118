"""Helpers of the admission benchmark: a lean HTTPS client, statistics, process figures.

Why a hand-rolled client: the benchmark client shares the two cores with the webhook it
measures. httpx costs the client ~0.5 ms of CPU per request, which on a loaded 2-core machine
would be billed to the webhook's latency and cap the throughput we can observe. The stdlib's
``http.client`` over one keep-alive TLS connection, with the request body serialised once,
costs a fraction of that; the response is still parsed and checked on every call, so a
webhook that answers "denied" or garbage cannot produce a good number.

Statistics: per-request wall times with ``time.perf_counter_ns``; we report p50, p90, p99
(nearest rank) and the minimum, never the mean. Process figures come from ``/proc/PID``:
VmRSS/VmHWM (resident, peak resident) and utime+stime (CPU seconds, to state the webhook's CPU
per review independent of the client's share of the cores).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import ssl
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class BenchFailure(RuntimeError):
    """The webhook answered something other than what the benchmark expected."""


@dataclass(frozen=True)
class Latency:
    """Wall-time distribution of one measured operation, in milliseconds."""

    name: str
    n: int
    p50: float
    p90: float
    p99: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, name: str, samples_ns: Sequence[int]) -> Latency:
        if not samples_ns:
            raise BenchFailure(f"{name}: no samples")
        s = sorted(samples_ns)
        return cls(name, len(s), percentile(s, 50) / 1e6, percentile(s, 90) / 1e6,
                   percentile(s, 99) / 1e6, s[0] / 1e6, s[-1] / 1e6)

    def row(self) -> str:
        return (f"| {self.name} | {self.n} | {self.p50:.2f} | {self.p90:.2f} | "
                f"{self.p99:.2f} | {self.minimum:.2f} | {self.maximum:.2f} |")


LATENCY_HEADER = ("| operation | n | p50 ms | p90 ms | p99 ms | min ms | max ms |\n"
                  "|---|---|---|---|---|---|---|")


def percentile(sorted_values: Sequence[int | float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of an already sorted sequence."""
    if not sorted_values:
        raise BenchFailure("percentile of nothing")
    rank = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 100))))
    return float(sorted_values[rank - 1])


class ReviewClient:
    """One keep-alive HTTPS connection to the webhook; posts pre-serialised reviews."""

    def __init__(self, port: int, ca_file: Path, host: str = "localhost") -> None:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        self.conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
        self.headers = {"Content-Type": "application/json"}

    def post(self, path: str, body: bytes) -> dict[str, Any]:
        """POST ``body``; the AdmissionReview ``response`` object (HTTP 200 required)."""
        self.conn.request("POST", path, body=body, headers=self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise BenchFailure(f"{path}: HTTP {resp.status}: {data[:300]!r}")
        answer: dict[str, Any] = json.loads(data)["response"]
        return answer

    def close(self) -> None:
        self.conn.close()


def expect_allowed(answer: dict[str, Any], what: str) -> dict[str, Any]:
    if answer.get("allowed") is not True:
        raise BenchFailure(f"{what}: denied: {answer.get('status')}")
    return answer


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / VmSize of a live process in KiB, from /proc/PID/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "VmSize"):
            out[key] = int(rest.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict[str, str]:
    """What the numbers were measured on; the yardstick is the one of bench/attest."""
    model = next((line.split(":", 1)[1].strip() for line in _run(["lscpu"]).splitlines()
                  if line.startswith("Model name")), platform.processor() or "unknown")
    mem = next((line.split()[1] for line in _run(["free", "-h"]).splitlines()
                if line.startswith("Mem:")), "?")
    ticks = []
    for _ in range(200):
        t0 = time.perf_counter_ns()
        sum(range(1000))
        ticks.append(time.perf_counter_ns() - t0)
    from importlib.metadata import PackageNotFoundError, version

    import cryptography
    import fastapi
    import uvicorn

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "loadavg (1/5/15 min) at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "yardstick sum(range(1000))": f"{statistics.median(ticks) / 1e3:.1f} µs median "
                                       "(about 10 µs on an idle modern x86 core)",
        "software": f"CPython {platform.python_version()}, cryptography "
                    f"{cryptography.__version__}, uvicorn {uvicorn.__version__}, "
                    f"FastAPI {fastapi.__version__}",
        # uvicorn's "auto" picks these when installed: they change the server's CPU per request
        "uvicorn http/loop": f"httptools {installed('httptools')}, uvloop {installed('uvloop')}",
    }


def print_machine() -> None:
    for key, value in machine().items():
        print(f"# {key}: {value}")
